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

use bytes::{Bytes, BytesMut};
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

/// A complete response of tollgate's own with a JSON body.
pub fn json_response(
    status: http::StatusCode,
    body: impl Into<Bytes>,
) -> http::Response<ProxyBody> {
    let mut response = http::Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
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

/// An idle timeout that costs one clock read per piece of body: the timer is only
/// re-armed when it fires early.
pub(crate) struct IdleTimer {
    sleep: Pin<Box<Sleep>>,
    timeout: Duration,
    last_activity: Instant,
}

impl IdleTimer {
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep(timeout)),
            timeout,
            last_activity: Instant::now(),
        }
    }

    /// Something happened: the timeout counts from now.
    pub(crate) fn touch(&mut self) {
        self.last_activity = Instant::now();
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Resolves once nothing has happened for the whole timeout.
    pub(crate) fn expired(&mut self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            if self.poll_expired(cx) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    /// Whether nothing has happened for the whole timeout; registers for a wake-up
    /// otherwise.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            let deadline = self.last_activity + self.timeout;
            if deadline <= Instant::now() {
                return true;
            }
            self.sleep.as_mut().reset(deadline);
        }
    }
}

pin_project! {
    /// A client's request body on its way upstream, with a size limit and an idle
    /// timeout.
    pub struct RequestBody<B> {
        #[pin]
        inner: B,
        idle: IdleTimer,
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
            idle: IdleTimer::new(idle_timeout),
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
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.idle.touch();
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
                if this.idle.poll_expired(cx) {
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

/// The most bytes of one unfinished event held back. An event larger than this is
/// forwarded as it comes rather than buffered without bound.
pub const MAX_HELD_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// Events already received are sent to the client together, up to this many bytes
/// or pieces.
const MAX_BATCH_BYTES: usize = 64 * 1024;
const MAX_BATCH_PIECES: usize = 64;

/// How many times in a row a stream with events gathered lets the runtime run the
/// upstream connection before it sends them (see [`ResponseBody`]). The connection
/// hands over one piece per turn and needs two scheduler rounds to do it. The first
/// event is never held back this way.
const BATCH_YIELDS: u8 = 2;

/// Framing state of an event stream.
struct SseState {
    framer: Framer,
    style: StreamErrorStyle,
    /// Part of an event has gone out: a failure now cannot end cleanly.
    mid_event: bool,
    /// Whole events received and not yet sent.
    batch: Vec<Bytes>,
    batch_len: usize,
    yields: u8,
    /// An event has gone to the client: later ones may wait to be sent together.
    started: bool,
}

impl SseState {
    fn add(&mut self, bytes: Bytes) {
        self.batch_len += bytes.len();
        self.batch.push(bytes);
    }

    /// Everything gathered, as one frame.
    fn take_batch(&mut self) -> Option<Bytes> {
        self.batch_len = 0;
        self.started |= !self.batch.is_empty();
        match self.batch.len() {
            0 => None,
            1 => self.batch.pop(),
            _ => {
                let mut out = BytesMut::with_capacity(self.batch.iter().map(Bytes::len).sum());
                for piece in self.batch.drain(..) {
                    out.extend_from_slice(&piece);
                }
                Some(out.freeze())
            }
        }
    }
}

/// How the upstream's body ended.
enum Ending {
    Clean,
    Failed(ResponseBodyError),
}

pin_project! {
    /// An upstream response body on its way to the client, with an idle timeout
    /// and, for event streams, whole-event framing.
    ///
    /// Events the upstream has already sent go out together: when nothing is
    /// ready but events are gathered, the body yields to the runtime (at most
    /// [`BATCH_YIELDS`] times in a row) so that the upstream connection can hand over
    /// what it has already received, then sends the batch. This costs no waiting,
    /// only trips through the scheduler, and saves a write to the client per event.
    /// The first event is sent at once: each yield puts the write behind everything
    /// the runtime has queued, and the time to the first byte is the one a client
    /// feels most.
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        idle: IdleTimer,
        sse: Option<SseState>,
        ending: Option<Ending>,
        request_id: Arc<str>,
        done: bool,
    }
}

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
            idle: IdleTimer::new(idle_timeout),
            sse: sse.map(|style| SseState {
                framer: Framer::new(),
                style,
                mid_event: false,
                batch: Vec::new(),
                batch_len: 0,
                yields: 0,
                started: false,
            }),
            ending: None,
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
            if let Some(ending) = this.ending.take() {
                // What was gathered goes first.
                if let Some(batch) = this.sse.as_mut().and_then(SseState::take_batch) {
                    *this.ending = Some(ending);
                    return Poll::Ready(Some(Ok(Frame::data(batch))));
                }
                *this.done = true;
                return match ending {
                    Ending::Clean => {
                        let tail = this
                            .sse
                            .as_mut()
                            .map(|s| s.framer.finish())
                            .unwrap_or_default();
                        if tail.is_empty() {
                            Poll::Ready(None)
                        } else {
                            Poll::Ready(Some(Ok(Frame::data(tail))))
                        }
                    }
                    Ending::Failed(failure) => {
                        tracing::warn!(request_id = %this.request_id, error = %failure, "upstream response ended early");
                        match this.sse {
                            Some(sse) if !sse.mid_event => {
                                sse.framer.discard();
                                let message =
                                    format!("{failure} (tollgate request {})", this.request_id);
                                Poll::Ready(Some(Ok(Frame::data(sse.style.event(&message)))))
                            }
                            _ => Poll::Ready(Some(Err(failure.into()))),
                        }
                    }
                };
            }
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    this.idle.touch();
                    let data = match frame.into_data() {
                        Ok(data) => data,
                        Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                    };
                    let Some(sse) = this.sse.as_mut() else {
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    };
                    if let Some(events) = sse.framer.push(data) {
                        // What goes out ends at an event boundary.
                        sse.mid_event = false;
                        sse.add(events);
                    } else if sse.framer.held() > MAX_HELD_EVENT_BYTES {
                        sse.mid_event = true;
                        let partial = sse.framer.release_partial();
                        sse.add(partial);
                    }
                    sse.yields = 0;
                    let full =
                        sse.batch_len >= MAX_BATCH_BYTES || sse.batch.len() >= MAX_BATCH_PIECES;
                    if let Some(batch) = full.then(|| sse.take_batch()).flatten() {
                        return Poll::Ready(Some(Ok(Frame::data(batch))));
                    }
                }
                Poll::Ready(None) => *this.ending = Some(Ending::Clean),
                Poll::Ready(Some(Err(e))) => {
                    *this.ending = Some(Ending::Failed(ResponseBodyError::Upstream(e.into())))
                }
                Poll::Pending => {
                    if let Some(sse) = this.sse.as_mut().filter(|s| !s.batch.is_empty()) {
                        if sse.started && sse.yields < BATCH_YIELDS {
                            // Let the upstream connection deliver what it already holds.
                            sse.yields += 1;
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                        if let Some(batch) = sse.take_batch() {
                            return Poll::Ready(Some(Ok(Frame::data(batch))));
                        }
                    }
                    if !this.idle.poll_expired(cx) {
                        return Poll::Pending;
                    }
                    *this.ending = Some(Ending::Failed(ResponseBodyError::Idle(this.idle.timeout)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || (self.sse.is_none() && self.ending.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match &self.sse {
            None => self.inner.size_hint(),
            Some(_) => SizeHint::default(),
        }
    }
}

/// A response body fed through a channel, for streams tollgate writes itself
/// (governed streams). What the stream's task has already sent is written
/// together, and written at once: the body never yields to wait for more. A
/// yield puts the client's write behind everything else the runtime has queued,
/// and the task writing the stream sends every event it already holds before it
/// waits on the upstream again, so waiting would gather nothing in a steady
/// stream and would hold each event (the first byte included) back by as many
/// trips through the run queue. It ends when the sender is dropped.
#[derive(Debug)]
pub struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    batch: Vec<Bytes>,
    batch_len: usize,
    closed: bool,
}

impl ChannelBody {
    /// A body reading from `rx`.
    pub fn new(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Self {
        Self {
            rx,
            batch: Vec::new(),
            batch_len: 0,
            closed: false,
        }
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        while !this.closed && this.batch_len < MAX_BATCH_BYTES {
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(bytes)) => {
                    this.batch_len += bytes.len();
                    this.batch.push(bytes);
                }
                Poll::Ready(None) => this.closed = true,
                Poll::Pending if this.batch.is_empty() => return Poll::Pending,
                Poll::Pending => break,
            }
        }
        this.batch_len = 0;
        // One piece goes as it is; several are joined into one write.
        let bytes = match this.batch.len() {
            0 => return Poll::Ready(None),
            1 => this.batch.pop().unwrap_or_default(),
            _ => Bytes::from(std::mem::take(&mut this.batch).concat()),
        };
        Poll::Ready(Some(Ok(Frame::data(bytes))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll<B: Body<Data = Bytes, Error = BoxError> + Unpin>(
        body: &mut B,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(body).poll_frame(&mut cx)
    }

    fn data(polled: Poll<Option<Result<Frame<Bytes>, BoxError>>>) -> Option<Bytes> {
        match polled {
            Poll::Ready(Some(Ok(frame))) => frame.into_data().ok(),
            _ => None,
        }
    }

    /// An upstream body that answers each poll with the next of its scripted
    /// answers: `Some(bytes)` a frame, `None` not ready yet; then it ends.
    struct Scripted(std::collections::VecDeque<Option<&'static [u8]>>);

    impl Body for Scripted {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            match self.0.pop_front() {
                Some(Some(bytes)) => Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(bytes))))),
                Some(None) => Poll::Pending,
                None => Poll::Ready(None),
            }
        }
    }

    #[tokio::test]
    async fn a_relayed_stream_sends_its_first_event_at_once_and_gathers_later_ones() {
        let script = [
            Some(&b"data: 1\n\n"[..]),
            None,
            Some(&b"data: 2\n\n"[..]),
            None,
            Some(&b"data: 3\n\n"[..]),
            None,
            None,
            None,
        ];
        let mut body = ResponseBody::new(
            Scripted(script.into_iter().collect()),
            Duration::from_secs(60),
            Some(StreamErrorStyle::OpenAi),
            Arc::from("req"),
        );
        // The first event goes out on the poll that received it.
        assert_eq!(data(poll(&mut body)).as_deref(), Some(&b"data: 1\n\n"[..]));
        // A later one waits turns of the runtime for more already received, and
        // what came meanwhile goes with it, in one write.
        let mut waited = 0;
        let next = loop {
            match poll(&mut body) {
                Poll::Pending if waited < 8 => waited += 1,
                other => break other,
            }
        };
        assert!(waited > 0, "a later event was not gathered");
        assert_eq!(data(next).as_deref(), Some(&b"data: 2\n\ndata: 3\n\n"[..]));
        assert!(matches!(poll(&mut body), Poll::Ready(None)));
    }

    #[test]
    fn a_channel_body_writes_what_was_sent_at_once_and_together() {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let mut body = ChannelBody::new(rx);
        assert!(poll(&mut body).is_pending(), "nothing sent yet");
        // One event: written on the first poll, not held back for more.
        tx.try_send(Bytes::from_static(b"data: 1\n\n")).unwrap();
        assert_eq!(data(poll(&mut body)).as_deref(), Some(&b"data: 1\n\n"[..]));
        // Several already sent: one write.
        tx.try_send(Bytes::from_static(b"data: 2\n\n")).unwrap();
        tx.try_send(Bytes::from_static(b"data: 3\n\n")).unwrap();
        assert_eq!(
            data(poll(&mut body)).as_deref(),
            Some(&b"data: 2\n\ndata: 3\n\n"[..])
        );
        assert!(poll(&mut body).is_pending());
        // The sender gone: what it sent last, then the end.
        tx.try_send(Bytes::from_static(b"data: [DONE]\n\n"))
            .unwrap();
        drop(tx);
        assert_eq!(
            data(poll(&mut body)).as_deref(),
            Some(&b"data: [DONE]\n\n"[..])
        );
        assert!(matches!(poll(&mut body), Poll::Ready(None)));
    }
}
