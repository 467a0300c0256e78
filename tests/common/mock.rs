//! An in-process mock of the OpenAI API for tests: a real HTTP server on
//! 127.0.0.1:0 that records every request it receives (method, target, headers,
//! body bytes) and answers with replies the test queues: complete bodies with a
//! content length, chunked bodies, streams the test feeds piece by piece (so that
//! timing is controlled by the test, not by sleeps), aborted streams, and requests
//! that are never answered.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type MockBody = UnsyncBoxBody<Bytes, BoxError>;

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    /// Path and query.
    pub target: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// One step of a test-fed stream.
#[derive(Debug)]
pub enum Step {
    /// Send these bytes as one chunk.
    Data(Bytes),
    /// Break the connection mid-body.
    Abort,
}

/// A reply the mock gives to one request.
pub enum Reply {
    /// A complete body with `content-length`.
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Bytes,
    },
    /// A body sent in these chunks with chunked transfer encoding.
    Chunked {
        status: u16,
        headers: Vec<(String, String)>,
        chunks: Vec<Bytes>,
    },
    /// A body the test feeds through the returned [`StreamFeed`].
    Stream {
        status: u16,
        headers: Vec<(String, String)>,
        steps: mpsc::UnboundedReceiver<Step>,
    },
    /// Chunked: the first chunk `first` after the reply starts, each next one
    /// `interval` after the one before was due, to a tenth of a millisecond.
    Timed {
        status: u16,
        headers: Vec<(String, String)>,
        first: std::time::Duration,
        interval: std::time::Duration,
        chunks: Vec<Bytes>,
    },
    /// Never answer.
    Hang,
}

impl Reply {
    /// A copy of a reply that can be given more than once (`Full`, `Timed`).
    pub fn try_clone(&self) -> Option<Reply> {
        match self {
            Reply::Full {
                status,
                headers,
                body,
            } => Some(Reply::Full {
                status: *status,
                headers: headers.clone(),
                body: body.clone(),
            }),
            Reply::Timed {
                status,
                headers,
                first,
                interval,
                chunks,
            } => Some(Reply::Timed {
                status: *status,
                headers: headers.clone(),
                first: *first,
                interval: *interval,
                chunks: chunks.clone(),
            }),
            _ => None,
        }
    }

    /// 200 with a JSON body.
    pub fn json(body: impl Into<Bytes>) -> Self {
        Self::Full {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into(),
        }
    }

    /// 200 `text/event-stream` sent in the given chunks.
    pub fn sse(chunks: Vec<Bytes>) -> Self {
        Self::Chunked {
            status: 200,
            headers: vec![(
                "content-type".into(),
                "text/event-stream; charset=utf-8".into(),
            )],
            chunks,
        }
    }

    /// A stream fed by the test, and the handle that feeds it.
    pub fn stream(status: u16, headers: Vec<(String, String)>) -> (Self, StreamFeed) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Self::Stream {
                status,
                headers,
                steps: rx,
            },
            StreamFeed(tx),
        )
    }
}

/// Feeds a [`Reply::Stream`]. Dropping it ends the body cleanly.
pub struct StreamFeed(mpsc::UnboundedSender<Step>);

impl StreamFeed {
    pub fn send(&self, bytes: impl Into<Bytes>) {
        let _ = self.0.send(Step::Data(bytes.into()));
    }

    pub fn abort(&self) {
        let _ = self.0.send(Step::Abort);
    }
}

/// Chooses the reply to a request when none is queued.
pub type Responder = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

struct State {
    received: Mutex<Vec<Recorded>>,
    replies: Mutex<VecDeque<Reply>>,
    arrived: Notify,
    responder: Responder,
    record: bool,
}

/// The running mock.
pub struct MockUpstream {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockUpstream {
    /// Starts the mock. Requests with no queued reply get an echo: 200 with the
    /// request's own body and content type.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, Arc::new(echo), true)
    }

    /// Serves on `listener`, answering every request with `responder` (queued
    /// replies first). With `record` false nothing is kept, for long runs.
    pub fn serve(listener: TcpListener, responder: Responder, record: bool) -> Self {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            received: Mutex::default(),
            replies: Mutex::default(),
            arrived: Notify::new(),
            responder,
            record,
        });
        let accept_state = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = accept_state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(serve(state, req).await) }
                    });
                    let _ = stream.set_nodelay(true);
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues the reply for the next request.
    pub fn push(&self, reply: Reply) {
        self.state.replies.lock().unwrap().push_back(reply);
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Recorded> {
        self.state.received.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests have arrived (bounded by 10 s).
    pub async fn wait_for(&self, n: usize) -> Vec<Recorded> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let notified = self.state.arrived.notified();
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "mock upstream: expected {n} requests, got {}",
                    self.received().len()
                );
            }
        }
    }
}

async fn serve(state: Arc<State>, req: Request<Incoming>) -> Response<MockBody> {
    let (parts, body) = req.into_parts();
    let Ok(collected) = body.collect().await else {
        // The sender broke off mid-body: nothing to record or answer.
        let mut response = Response::new(
            Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *response.status_mut() = StatusCode::BAD_REQUEST;
        return response;
    };
    let body = collected.to_bytes();
    let recorded = Recorded {
        method: parts.method.clone(),
        target: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        version: parts.version,
        headers: parts.headers.clone(),
        body,
    };
    let reply = state.replies.lock().unwrap().pop_front();
    let reply = reply.unwrap_or_else(|| (state.responder)(&recorded));
    if state.record {
        state.received.lock().unwrap().push(recorded);
        state.arrived.notify_waiters();
    }
    respond(reply).await
}

/// The default responder: 200 with the request's own body and content type.
pub fn echo(request: &Recorded) -> Reply {
    let content_type = request
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    Reply::Full {
        status: 200,
        headers: vec![("content-type".into(), content_type)],
        body: request.body.clone(),
    }
}

async fn respond(reply: Reply) -> Response<MockBody> {
    let (status, headers, body) = match reply {
        Reply::Full {
            status,
            headers,
            body,
        } => (
            status,
            headers,
            Full::new(body)
                .map_err(|never| match never {})
                .boxed_unsync(),
        ),
        Reply::Chunked {
            status,
            headers,
            chunks,
        } => {
            let stream = futures_util::stream::iter(
                chunks
                    .into_iter()
                    .map(|c| Ok::<_, BoxError>(Frame::data(c))),
            );
            (status, headers, StreamBody::new(stream).boxed_unsync())
        }
        Reply::Stream {
            status,
            headers,
            steps,
        } => {
            let stream = futures_util::stream::unfold(steps, |mut steps| async move {
                match steps.recv().await {
                    Some(Step::Data(bytes)) => Some((Ok::<_, BoxError>(Frame::data(bytes)), steps)),
                    Some(Step::Abort) => {
                        Some((Err::<Frame<Bytes>, BoxError>("mock abort".into()), steps))
                    }
                    None => None,
                }
            });
            (status, headers, StreamBody::new(stream).boxed_unsync())
        }
        Reply::Timed {
            status,
            headers,
            first,
            interval,
            chunks,
        } => {
            // Chunk k is due at `start + first + k * interval`, whenever the ones
            // before it left: a pause measured from the previous chunk would add
            // the timer's rounding and the write to every gap, and streams held
            // up together would stay in step from then on.
            let start = std::time::Instant::now();
            let alarm = Alarm::new().unwrap();
            let stream = futures_util::stream::unfold(
                (chunks.into_iter(), start + first, alarm),
                move |(mut rest, due, alarm)| async move {
                    let chunk = rest.next()?;
                    let frame = match alarm.sleep_until(due).await {
                        Ok(()) => Ok::<_, BoxError>(Frame::data(chunk)),
                        Err(e) => Err(e.into()),
                    };
                    Some((frame, (rest, due + interval, alarm)))
                },
            );
            (status, headers, StreamBody::new(stream).boxed_unsync())
        }
        Reply::Hang => {
            std::future::pending::<()>().await;
            unreachable!()
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    for (name, value) in headers {
        response.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(&value).unwrap(),
        );
    }
    response
}

/// The grid deadlines are rounded up to: streams whose chunks fall due within the
/// same tenth of a millisecond wake the runtime once, not once each.
const GRID: std::time::Duration = std::time::Duration::from_micros(100);

/// `due` rounded up to the next point of the process's grid.
fn on_grid(due: std::time::Instant) -> std::time::Instant {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let origin = *ORIGIN.get_or_init(std::time::Instant::now);
    let since = due.saturating_duration_since(origin).as_nanos();
    let grid = GRID.as_nanos();
    let slots = since.div_ceil(grid);
    origin + std::time::Duration::from_nanos((slots * grid) as u64)
}

/// A stream's deadlines kept to the kernel's timer, not to tokio's: tokio's
/// timer rounds every deadline up to its next millisecond tick, so a chunk due
/// 50 ms after a request arrived would leave anywhere from 50 to 51 ms after it,
/// and a proxy that held the request a tenth of a millisecond longer would push
/// up to all of its streams' first chunks a whole millisecond later, depending on
/// where the load's schedule falls between two ticks. A `timerfd` wakes the
/// runtime's own poll at the deadline, with no thread in between; deadlines are
/// rounded up to a tenth of a millisecond ([`GRID`]) instead.
struct Alarm(tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>);

impl Alarm {
    fn new() -> std::io::Result<Self> {
        use rustix::time::{TimerfdClockId, TimerfdFlags, timerfd_create};
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        // Deprecated because a raw descriptor may be closed under the registration;
        // an `OwnedFd` is closed only when the `AsyncFd` drops it, after deregistering.
        #[allow(deprecated)]
        Ok(Self(tokio::io::unix::AsyncFd::with_interest(
            fd,
            tokio::io::Interest::READABLE,
        )?))
    }

    /// Resolves at `due`, or at once if it has passed.
    async fn sleep_until(&self, due: std::time::Instant) -> std::io::Result<()> {
        use rustix::time::{Itimerspec, TimerfdTimerFlags, Timespec, timerfd_settime};
        let due = on_grid(due);
        let left = due.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        let spec = Itimerspec {
            // Once, not periodic.
            it_interval: Timespec::default(),
            it_value: Timespec::try_from(left).map_err(std::io::Error::other)?,
        };
        timerfd_settime(self.0.get_ref(), TimerfdTimerFlags::empty(), &spec)?;
        loop {
            let mut ready = self.0.readable().await?;
            let mut expirations = [0u8; 8];
            match ready.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut expirations)?)) {
                Ok(read) => return read.map(drop),
                // Readiness was stale: not expired yet.
                Err(_would_block) => continue,
            }
        }
    }
}
