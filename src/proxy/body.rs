//! Body types of the relay: request and response bodies stream through without
//! being gathered, watched by limits and timeouts.
//!
//! [`RequestBody`] counts what the client sends (failing past the size limit) and
//! fails if the client stalls longer than the idle timeout, recording which of the
//! two happened so that the relay can answer 413 or 408. [`ResponseBody`] forwards
//! what the upstream sends; for an event stream it forwards whole events only, so
//! that when the upstream fails or goes silent mid-stream the client gets a final
//! error event in the surface's own format instead of half an event.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use pin_project_lite::pin_project;
use serde_json::json;
use tokio::time::{Instant, Sleep};

use super::sse::Framer;

/// A boxed error that can cross tasks.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every response tollgate sends and every request it forwards.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Why a request body stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBodyFault {
    /// The body grew past the limit.
    TooLarge,
    /// The client sent nothing for longer than the idle timeout.
    Stalled,
    /// The client's body was malformed or the client broke off mid-body.
    Broken,
}

/// Shared record of how a [`RequestBody`] ended, readable after the upstream call.
#[derive(Debug, Default)]
pub struct RequestBodyOutcome(AtomicU8);

impl RequestBodyOutcome {
    fn set(&self, fault: RequestBodyFault) {
        let v = match fault {
            RequestBodyFault::TooLarge => 1,
            RequestBodyFault::Stalled => 2,
            RequestBodyFault::Broken => 3,
        };
        self.0.store(v, Ordering::Release);
    }

    /// The fault, if the body ended with one.
    pub fn fault(&self) -> Option<RequestBodyFault> {
        match self.0.load(Ordering::Acquire) {
            1 => Some(RequestBodyFault::TooLarge),
            2 => Some(RequestBodyFault::Stalled),
            3 => Some(RequestBodyFault::Broken),
            _ => None,
        }
    }
}

/// The error a [`RequestBody`] fails with.
#[derive(Debug, thiserror::Error)]
#[error("request body {0:?}")]
pub struct RequestBodyError(pub RequestBodyFault);

pin_project! {
    /// A client's request body on its way upstream, with a size limit and an idle
    /// timeout.
    pub struct RequestBody<B> {
        #[pin]
        inner: B,
        #[pin]
        idle: Sleep,
        idle_timeout: Duration,
        limit: u64,
        seen: u64,
        outcome: Arc<RequestBodyOutcome>,
    }
}

impl<B> RequestBody<B> {
    /// Wraps `inner`; `outcome` records why it failed, if it does.
    pub fn new(
        inner: B,
        limit: u64,
        idle_timeout: Duration,
        outcome: Arc<RequestBodyOutcome>,
    ) -> Self {
        Self {
            inner,
            idle: tokio::time::sleep(idle_timeout),
            idle_timeout,
            limit,
            seen: 0,
            outcome,
        }
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let deadline = Instant::now() + *this.idle_timeout;
                this.idle.as_mut().reset(deadline);
                if let Some(data) = frame.data_ref() {
                    *this.seen += data.len() as u64;
                    if *this.seen > *this.limit {
                        this.outcome.set(RequestBodyFault::TooLarge);
                        return Poll::Ready(Some(Err(RequestBodyError(
                            RequestBodyFault::TooLarge,
                        )
                        .into())));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.outcome.set(RequestBodyFault::Broken);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if this.idle.poll(cx).is_ready() {
                    this.outcome.set(RequestBodyFault::Stalled);
                    return Poll::Ready(Some(Err(
                        RequestBodyError(RequestBodyFault::Stalled).into()
                    )));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How a failed event stream is ended for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamErrorStyle {
    /// `data: {"error":{...}}`, which both OpenAI SDKs raise as an API error.
    OpenAi,
    /// `event: error` with Anthropic's error envelope.
    Anthropic,
}

impl StreamErrorStyle {
    /// The bytes of one final error event.
    pub fn event(self, message: &str) -> Bytes {
        match self {
            Self::OpenAi => {
                let v = json!({"error": {
                    "message": message,
                    "type": "upstream_error",
                    "param": null,
                    "code": "upstream_stream_interrupted",
                }});
                Bytes::from(format!("data: {v}\n\n"))
            }
            Self::Anthropic => {
                let v =
                    json!({"type": "error", "error": {"type": "api_error", "message": message}});
                Bytes::from(format!("event: error\ndata: {v}\n\n"))
            }
        }
    }
}

pin_project! {
    /// An upstream response body on its way to the client, with an idle timeout
    /// and, for event streams, whole-event framing.
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        #[pin]
        idle: Sleep,
        idle_timeout: Duration,
        sse: Option<(Framer, StreamErrorStyle)>,
        // Part of an event has gone out: a failure now cannot end cleanly.
        mid_event: bool,
        request_id: Arc<str>,
        done: bool,
    }
}

/// The most bytes of one unfinished event held back. An event larger than this is
/// forwarded as it comes rather than buffered without bound.
pub const MAX_HELD_EVENT_BYTES: usize = 4 * 1024 * 1024;

impl<B> ResponseBody<B> {
    /// Wraps `inner`. With `sse`, the body is framed into whole events and a failure
    /// ends it with an error event of that style; without, a failure aborts it.
    pub fn new(
        inner: B,
        idle_timeout: Duration,
        sse: Option<StreamErrorStyle>,
        request_id: Arc<str>,
    ) -> Self {
        Self {
            inner,
            idle: tokio::time::sleep(idle_timeout),
            idle_timeout,
            sse: sse.map(|style| (Framer::new(), style)),
            mid_event: false,
            request_id,
            done: false,
        }
    }
}

/// Why an upstream response body failed.
#[derive(Debug, thiserror::Error)]
pub enum ResponseBodyError {
    /// The upstream sent nothing for longer than the idle timeout.
    #[error("upstream sent nothing for {0:?}")]
    Idle(Duration),
    /// The upstream connection failed mid-body.
    #[error("upstream connection failed mid-body: {0}")]
    Upstream(BoxError),
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            if *this.done {
                return Poll::Ready(None);
            }
            let failure = match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let deadline = Instant::now() + *this.idle_timeout;
                    this.idle.as_mut().reset(deadline);
                    let data = match frame.into_data() {
                        Ok(data) => data,
                        Err(other) => return Poll::Ready(Some(Ok(other))),
                    };
                    match this.sse {
                        None => return Poll::Ready(Some(Ok(Frame::data(data)))),
                        Some((framer, _)) => match framer.push(data) {
                            Some(events) => {
                                // What goes out ends at an event boundary.
                                *this.mid_event = false;
                                return Poll::Ready(Some(Ok(Frame::data(events))));
                            }
                            None if framer.held() > MAX_HELD_EVENT_BYTES => {
                                *this.mid_event = true;
                                return Poll::Ready(Some(Ok(Frame::data(
                                    framer.release_partial(),
                                ))));
                            }
                            None => continue,
                        },
                    }
                }
                Poll::Ready(None) => {
                    *this.done = true;
                    if let Some((framer, _)) = this.sse {
                        let tail = framer.finish();
                        if !tail.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(tail))));
                        }
                    }
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => ResponseBodyError::Upstream(e.into()),
                Poll::Pending => {
                    if this.idle.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    ResponseBodyError::Idle(*this.idle_timeout)
                }
            };
            *this.done = true;
            tracing::warn!(request_id = %this.request_id, error = %failure, "upstream response ended early");
            return match this.sse {
                Some((framer, style)) if !*this.mid_event => {
                    framer.discard();
                    let message = format!("{failure} (tollgate request {})", this.request_id);
                    Poll::Ready(Some(Ok(Frame::data(style.event(&message)))))
                }
                _ => Poll::Ready(Some(Err(failure.into()))),
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
            || (self.sse.as_ref().is_none_or(|(f, _)| !f.has_partial())
                && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match &self.sse {
            None => self.inner.size_hint(),
            Some(_) => SizeHint::default(),
        }
    }
}
