//! The governed endpoints `POST /v1/chat/completions` and `POST /v1/responses`:
//! the HTTP side of the turn loops in [`crate::turn::chat`] and
//! [`crate::turn::responses`]; and `GET /v1/responses/{id}` for a response
//! tollgate changed, answered from what the client was given, and for any
//! other response fetched upstream, with the governed tools tollgate added to
//! its request taken out of the object's `tools`.
//!
//! The request body is read whole (within the body limit and idle timeout),
//! read as JSON only as far as governing needs ([`ClientRequest`]), spliced and
//! given the governed tools when there are any, then sent upstream; each round's
//! answer is read whole (plain) or event by event (streaming) and handed to the
//! loop. An upstream error status in the first round reaches the client
//! unchanged, as it would without tollgate; a response without tool calls keeps
//! its bytes. Streams are written by a task of their own through a channel, so
//! decisions, receipts and governed tools run while the client's stream is open;
//! while it waits on the upstream the task also watches the client's end, and
//! stops (dropping the upstream connection) as soon as the client has gone.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use serde_json::Value;
use tokio::sync::OwnedSemaphorePermit;

use super::Shared;
use super::body::{
    ChannelBody, IdleTimer, MAX_HELD_EVENT_BYTES, ProxyBody, RequestBody, RequestBodyFault,
    RequestBodyOutcome, full, json_response,
};
use super::headers::{is_encoded, is_event_stream, remove_hop_by_hop};
use super::sse::{Framer, split_events};
use super::upstream;
use crate::adapter::responses::Echo;
use crate::error::ProxyError;
use crate::gateway::Identity;
use crate::turn::Surface;
use crate::turn::chat::{Caller, EventSource, GovernError, StreamEnd};
use crate::turn::request::ClientRequest;
use crate::turn::responses::Prepared;

/// The most bytes of one upstream JSON answer tollgate reads.
pub const MAX_UPSTREAM_JSON_BYTES: usize = 64 * 1024 * 1024;

/// The governed surface a request is for, if any.
pub fn surface(method: &http::Method, uri: &Uri) -> Option<Surface> {
    if method != http::Method::POST {
        return None;
    }
    match uri.path().trim_end_matches('/') {
        "/v1/chat/completions" => Some(Surface::Chat),
        "/v1/responses" => Some(Surface::Responses),
        _ => None,
    }
}

/// The id in `GET /v1/responses/{id}`, if that is what `uri` asks for (not its
/// `input_items`, nor any other path under it).
pub fn fetched_response_id<'a>(method: &http::Method, uri: &'a Uri) -> Option<&'a str> {
    if method != http::Method::GET {
        return None;
    }
    let id = uri
        .path()
        .strip_prefix("/v1/responses/")?
        .trim_end_matches('/');
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// Answers `GET /v1/responses/{id}` for a response tollgate changed, from what
/// the client was given: the upstream stores each round under its own id, and
/// the first round's, the id the client holds, still lists the calls tollgate
/// hid and the governed tools it added. Only the agent the response was made
/// for is answered so (in `passthrough` mode, the same API key). `None`: the
/// response `id` (from [`fetched_response_id`]) is not this caller's remembered
/// one, and the fetch goes upstream as it is, which answers it as it answers
/// that key. A fetch that resumes a stream (`stream=true`) cannot be answered
/// from memory and is refused rather than relayed.
pub fn remembered_response(
    shared: &Shared,
    caller: &Caller,
    id: &str,
    uri: &Uri,
) -> Option<Result<Response<ProxyBody>, ProxyError>> {
    let view = shared.gateway.governance().presented_response(caller, id)?;
    if resumes_stream(uri) {
        return Some(Err(ProxyError::BadRequest {
            message: "tollgate changed this response (it decided tool calls in it); it can be fetched whole, not resumed as a stream".into(),
            code: "unsupported_parameter",
        }));
    }
    Some(Ok(json_response(StatusCode::OK, view.to_string())))
}

/// The governed tools' names, when a `GET /v1/responses/{id}` that goes
/// upstream must be read before it reaches the client: governed tools are
/// configured, and the fetch does not resume a stream (`stream=true`), which is
/// relayed as it is. The upstream's object lists in `tools` what the request it
/// answered carried, the governed tools tollgate added included, which the
/// client never sent; [`without_governed_tools`] takes them out. The fetch is
/// sent without `accept-encoding`, so that the answer can be read.
pub fn fetch_rewrites(shared: &Shared, uri: &Uri) -> Option<Vec<String>> {
    let names = shared.gateway.governance().tool_names();
    (!names.is_empty() && !resumes_stream(uri)).then_some(names)
}

/// Takes the governed tools (`names`) out of the `tools` of a response object
/// fetched upstream, as they are taken out of the response the client got when
/// it was made. No client tool can carry a governed tool's name (such a request
/// is refused), so a function of that name there is one tollgate added. Only a
/// 200 with an uncompressed JSON body whose text names a governed tool is read
/// and rebuilt (within the governed budget, the parsed tree's estimated size
/// included, and [`MAX_UPSTREAM_JSON_BYTES`]); everything else passes as the
/// upstream sent it, streamed.
pub async fn without_governed_tools(
    shared: &Shared,
    response: Response<ProxyBody>,
    names: Vec<String>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let readable = response.status() == StatusCode::OK
        && !is_encoded(response.headers())
        && response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
    if !readable {
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let (bytes, mut held) = read_answer(shared, body).await?;
    let named = names
        .iter()
        .any(|name| memchr::memmem::find(&bytes, name.as_bytes()).is_some());
    let text = std::str::from_utf8(&bytes).ok().filter(|_| named);
    let Some(tree) = text.and_then(|t| crate::turn::request::size_of_json(t).ok()) else {
        return Ok(respond(parts, bytes));
    };
    cover(shared, &mut held, bytes.len() + tree)?;
    let echo = Echo {
        previous_response_id: None,
        injected: names,
    };
    let rewritten = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|mut object| echo.apply(&mut object).then(|| object.to_string()));
    Ok(match rewritten {
        Some(text) => respond(parts, Bytes::from(text)),
        None => respond(parts, bytes),
    })
}

/// Whether a fetch by id asks to resume the response as a stream.
fn resumes_stream(uri: &Uri) -> bool {
    uri.query().is_some_and(|q| {
        url::form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "stream" && v == "true")
    })
}

/// Reads a client's body whole, within the limits, taking its share of the
/// governed budget (a permit per KiB, at least one) as it arrives. The permit is
/// held until the governed request ends; a body that does not fit in what is left
/// of the budget is refused at once, so memory held by governed requests stays
/// bounded however many arrive together.
async fn read_body(
    shared: &Shared,
    body: Incoming,
) -> Result<(Bytes, OwnedSemaphorePermit), ProxyError> {
    let limits = &shared.config.limits;
    let outcome = Arc::new(RequestBodyOutcome::default());
    let mut body = RequestBody::new(
        body,
        limits.max_body_bytes,
        shared.config.timeouts.idle,
        outcome.clone(),
    );
    let fault = || match outcome.fault() {
        Some(RequestBodyFault::TooLarge) => ProxyError::BodyTooLarge {
            limit: limits.max_body_bytes,
        },
        Some(RequestBodyFault::Stalled) => ProxyError::RequestTimeout {
            secs: shared.config.timeouts.idle.as_secs(),
        },
        _ => ProxyError::BadRequest {
            message: "the request body was malformed or cut short".into(),
            code: "invalid_request_body",
        },
    };
    let mut held = share(shared)?;
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|_| fault())?.into_data() else {
            continue;
        };
        bytes.extend_from_slice(&data);
        cover(shared, &mut held, bytes.len())?;
    }
    Ok((Bytes::from(bytes), held))
}

/// A first share of the governed budget: one permit (one KiB), or
/// [`ProxyError::Overloaded`] when the budget is spent.
fn share(shared: &Shared) -> Result<OwnedSemaphorePermit, ProxyError> {
    Arc::clone(&shared.governed_budget)
        .try_acquire_owned()
        .map_err(|_| overloaded(shared))
}

/// Grows `held` to a permit per KiB of `bytes`, at once or not at all.
fn cover(shared: &Shared, held: &mut OwnedSemaphorePermit, bytes: usize) -> Result<(), ProxyError> {
    let more = bytes.div_ceil(1024).saturating_sub(held.num_permits());
    if more > 0 {
        let permit = u32::try_from(more)
            .ok()
            .and_then(|n| {
                Arc::clone(&shared.governed_budget)
                    .try_acquire_many_owned(n)
                    .ok()
            })
            .ok_or_else(|| overloaded(shared))?;
        held.merge(permit);
    }
    Ok(())
}

fn overloaded(shared: &Shared) -> ProxyError {
    ProxyError::Overloaded {
        limit: shared.config.limits.max_governed_bytes,
    }
}

/// The headers each round sends upstream: the client's end-to-end headers, less
/// framing and compression (tollgate reads the answer), with tollgate's own key in
/// `tokens` mode.
fn round_headers(mut headers: HeaderMap, identity: &Identity) -> HeaderMap {
    remove_hop_by_hop(&mut headers);
    for name in [
        header::HOST,
        header::EXPECT,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::ACCEPT_ENCODING,
    ] {
        headers.remove(name);
    }
    if let Some(auth) = &identity.upstream_authorization {
        headers.insert(header::AUTHORIZATION, auth.clone());
    }
    headers
}

/// Sends one round upstream; returns the response once its headers are in.
async fn send_round(
    shared: &Shared,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response<Incoming>, ProxyError> {
    let mut request = Request::new(full(body.clone()));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = uri.clone();
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers.clone();
    request
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    send(shared, request).await
}

/// Sends a request upstream; returns the response once its headers are in,
/// within the first-byte timeout.
async fn send(
    shared: &Shared,
    request: Request<ProxyBody>,
) -> Result<Response<Incoming>, ProxyError> {
    let timeouts = &shared.config.timeouts;
    match tokio::time::timeout(timeouts.first_byte, shared.client.request(request)).await {
        Err(_) => Err(ProxyError::UpstreamTimeout {
            detail: format!("no response headers within {:?}", timeouts.first_byte),
        }),
        Ok(Err(e)) => Err(upstream::classify(&e, timeouts.connect)),
        Ok(Ok(response)) => Ok(response),
    }
}

/// Reads an upstream answer whole, within the idle timeout between pieces, taking
/// a share of the governed budget for it as it arrives (as [`read_body`] does for
/// the request): the share is held as long as the answer is.
async fn read_answer<B>(
    shared: &Shared,
    mut body: B,
) -> Result<(Bytes, OwnedSemaphorePermit), ProxyError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let idle = shared.config.timeouts.idle;
    let mut held = share(shared)?;
    let mut bytes = Vec::new();
    loop {
        match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => {
                return Err(ProxyError::UpstreamTimeout {
                    detail: format!("the answer stalled for more than {idle:?}"),
                });
            }
            Ok(None) => return Ok((Bytes::from(bytes), held)),
            Ok(Some(Err(e))) => {
                return Err(ProxyError::UpstreamUnreachable {
                    detail: format!("the answer broke off: {e}"),
                });
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if bytes.len() + data.len() > MAX_UPSTREAM_JSON_BYTES {
                        return Err(ProxyError::UpstreamInvalid {
                            detail: format!("the answer is over {MAX_UPSTREAM_JSON_BYTES} bytes"),
                        });
                    }
                    bytes.extend_from_slice(&data);
                    cover(shared, &mut held, bytes.len())?;
                }
            }
        }
    }
}

/// A whole response tollgate answers with, from an upstream's parts.
fn respond(mut parts: http::response::Parts, body: Bytes) -> Response<ProxyBody> {
    parts.version = Version::default();
    remove_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    Response::from_parts(parts, full(body))
}

fn governance_error(error: GovernError) -> ProxyError {
    match error {
        GovernError::Request(e) => ProxyError::BadRequest {
            code: match e {
                crate::adapter::chat::AdapterError::NameClash(_) => "tool_name_conflict",
                _ => "invalid_request",
            },
            message: e.to_string(),
        },
        GovernError::Splice(e) => ProxyError::BadRequest {
            message: e.to_string(),
            code: "incomplete_tool_results",
        },
        GovernError::Receipts(e) => ProxyError::Unavailable {
            message: format!("tollgate could not record a decision, so nothing was done: {e}"),
        },
        GovernError::Upstream(status, _) => ProxyError::UpstreamInvalid {
            detail: format!("the upstream answered {status}"),
        },
        GovernError::Relay(e) => e,
    }
}

/// Governs one request on a governed surface.
pub async fn govern(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    request_id: &Arc<str>,
    identity: Identity,
    surface: Surface,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (parts, body) = req.into_parts();
    if is_encoded(&parts.headers) {
        return Err(ProxyError::BadRequest {
            message: "compressed request bodies are not accepted on governed endpoints".into(),
            code: "unsupported_content_encoding",
        });
    }
    let (original, mut budget) = read_body(shared, body).await?;
    let original_len = original.len();
    let Some(mut request) = ClientRequest::read(original) else {
        return Err(ProxyError::BadRequest {
            message: "the request body must be a JSON object".into(),
            code: "invalid_json",
        });
    };
    // The parsed form takes its share too, whether or not it is ever built: a
    // body of many tiny values is many times its size once parsed.
    cover(
        shared,
        &mut budget,
        original_len + request.head().tree_bytes,
    )?;
    let governance = shared.gateway.governance();
    let (injected, echo) = match surface {
        Surface::Chat => governance
            .prepare(&identity.caller, &mut request)
            .map(|injected| (injected, Echo::default())),
        Surface::Responses => governance
            .prepare_responses(&identity.caller, &mut request)
            .map(|echo| (!echo.injected.is_empty(), echo)),
    }
    .map_err(governance_error)?;
    let head = request.head();
    let has_tools = head.has_tools || injected || head.functions;
    if surface == Surface::Chat && has_tools && head.n.is_some_and(|n| n > 1) {
        return Err(ProxyError::BadRequest {
            message: "tollgate governs tool calls for one choice per request; `n` above 1 is not supported with tools".into(),
            code: "unsupported_parameter",
        });
    }
    // A background response is answered later, to whoever fetches it: its calls
    // could not be decided before the client sees them.
    let calls_possible = head.callable_tools || injected;
    if surface == Surface::Responses && calls_possible && head.background {
        return Err(ProxyError::BadRequest {
            message: "tollgate decides each tool call before the client sees it; `background` responses with function tools are not supported".into(),
            code: "unsupported_parameter",
        });
    }
    let turn = Governed {
        surface,
        echo,
        uri: upstream::target(&shared.config.upstream, &parts.uri)?,
        headers: round_headers(parts.headers, &identity),
        identity,
        request,
        budget,
    };
    if turn.request.head().stream {
        stream(shared, request_id, turn).await
    } else {
        plain(shared, request_id, turn).await
    }
}

/// A governed request, ready for its first round.
struct Governed {
    surface: Surface,
    /// What a Responses answer must echo of the client's own request.
    echo: Echo,
    identity: Identity,
    request: ClientRequest,
    uri: Uri,
    headers: HeaderMap,
    /// This request's share of the governed budget, given back when it ends.
    budget: OwnedSemaphorePermit,
}

async fn plain(
    shared: &Arc<Shared>,
    request_id: &Arc<str>,
    turn: Governed,
) -> Result<Response<ProxyBody>, ProxyError> {
    let Governed {
        surface,
        echo,
        identity,
        request,
        uri,
        headers,
        // Held until the answer is built.
        budget: _budget,
        ..
    } = turn;
    // The last round's answer, with its share of the budget (the previous one's
    // share goes back when a new answer replaces it).
    let last: Mutex<Option<(http::response::Parts, Bytes, OwnedSemaphorePermit)>> =
        Mutex::new(None);
    let (last_ref, uri_ref, headers_ref) = (&last, &uri, &headers);
    let upstream = move |body: Bytes| async move {
        let response = send_round(shared, uri_ref, headers_ref, body).await?;
        let (parts, body) = response.into_parts();
        let (bytes, held) = read_answer(shared, body).await?;
        let status = parts.status;
        let encoded = is_encoded(&parts.headers);
        *lock(last_ref) = Some((parts, bytes.clone(), held));
        if !status.is_success() {
            let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Err(GovernError::Upstream(status.as_u16(), value));
        }
        if encoded {
            return Err(GovernError::Relay(ProxyError::UpstreamInvalid {
                detail: "the answer is compressed".into(),
            }));
        }
        serde_json::from_slice::<Value>(&bytes).map_err(|_| {
            GovernError::Relay(ProxyError::UpstreamInvalid {
                detail: "the answer is not JSON".into(),
            })
        })
    };
    let governance = shared.gateway.governance();
    let result = match surface {
        Surface::Chat => {
            governance
                .run(&identity.caller, request_id, request, upstream)
                .await
        }
        Surface::Responses => {
            governance
                .run_responses(
                    &identity.caller,
                    request_id,
                    Prepared {
                        body: request,
                        echo,
                    },
                    upstream,
                )
                .await
        }
    };
    let last = lock(&last).take();
    match (result, last) {
        (Ok(finished), Some((parts, bytes, _held))) => {
            if finished.rewritten {
                Ok(respond(parts, Bytes::from(finished.response.to_string())))
            } else {
                Ok(respond(parts, bytes))
            }
        }
        // An upstream error status reaches the client as the upstream sent it.
        (Err(GovernError::Upstream(..)), Some((parts, bytes, _held))) => Ok(respond(parts, bytes)),
        (Err(error), _) => Err(governance_error(error)),
        (Ok(_), None) => Err(ProxyError::Internal {
            detail: "the loop ended without an upstream answer".into(),
        }),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// One upstream event stream, cut into whole events, with the share of the
/// governed budget that what the stream's rewriting holds takes.
pub struct UpstreamEvents {
    shared: Arc<Shared>,
    body: Incoming,
    framer: Framer,
    queue: VecDeque<Bytes>,
    /// Counts from when the stream last had to wait on the upstream or heard from
    /// it; one timer for the whole stream, re-armed only when it fires early.
    idle: IdleTimer,
    done: bool,
    held: Option<OwnedSemaphorePermit>,
    /// The client's side of the stream, watched while waiting on the upstream.
    client: Option<tokio::sync::mpsc::Sender<Bytes>>,
}

impl UpstreamEvents {
    fn new(shared: Arc<Shared>, body: Incoming) -> Self {
        let idle = IdleTimer::new(shared.config.timeouts.idle);
        Self {
            shared,
            body,
            framer: Framer::new(),
            queue: VecDeque::new(),
            idle,
            done: false,
            held: None,
            client: None,
        }
    }

    /// Stops waiting on the upstream once the client's stream is gone: the
    /// upstream connection is dropped then, not at its next event.
    fn watching(mut self, client: tokio::sync::mpsc::Sender<Bytes>) -> Self {
        self.client = Some(client);
        self
    }

    async fn next(&mut self) -> Option<Result<Bytes, String>> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            // The wait starts now: time spent deciding or running calls between
            // two events is not the upstream's silence.
            self.idle.touch();
            let client = self.client.as_ref();
            let next = tokio::select! {
                biased;
                next = self.body.frame() => Ok(next),
                () = self.idle.expired() => Err(()),
                () = async {
                    match client {
                        Some(client) => client.closed().await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.done = true;
                    return Some(Err("the client left the stream".into()));
                }
            };
            match next {
                Err(()) => {
                    self.done = true;
                    return Some(Err(format!(
                        "the upstream sent nothing for {:?}",
                        self.idle.timeout()
                    )));
                }
                Ok(None) => {
                    self.done = true;
                    let rest = self.framer.finish();
                    if !rest.is_empty() {
                        self.queue.push_back(rest);
                    }
                }
                Ok(Some(Err(e))) => {
                    self.done = true;
                    return Some(Err(format!("the upstream stream broke off: {e}")));
                }
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        if let Some(piece) = self.framer.push(data) {
                            split_events(&piece, |event| self.queue.push_back(event));
                        } else if self.framer.held() > MAX_HELD_EVENT_BYTES {
                            self.done = true;
                            return Some(Err(format!(
                                "the upstream sent an event over {MAX_HELD_EVENT_BYTES} bytes"
                            )));
                        }
                    }
                }
            }
        }
    }
}

impl EventSource for UpstreamEvents {
    fn next_event(
        &mut self,
    ) -> impl std::future::Future<Output = Option<Result<Bytes, String>>> + Send {
        self.next()
    }

    /// Grows the stream's share of the budget to cover `bytes` held for its
    /// round: a stream holds no more than a plain answer may be, and no more
    /// than the budget has left.
    fn hold(&mut self, bytes: usize) -> Result<(), ProxyError> {
        if bytes > MAX_UPSTREAM_JSON_BYTES {
            return Err(ProxyError::UpstreamInvalid {
                detail: format!(
                    "the stream is over {MAX_UPSTREAM_JSON_BYTES} bytes of text and tool calls in one round"
                ),
            });
        }
        if bytes == 0 {
            return Ok(());
        }
        let held = match &mut self.held {
            Some(held) => held,
            None => self.held.insert(share(&self.shared)?),
        };
        cover(&self.shared, held, bytes)
    }
}

/// One round's answer to a streaming request.
enum Opened {
    /// An event stream, to be read event by event.
    Stream(http::response::Parts, UpstreamEvents),
    /// An error status, with its body read whole.
    Refused(http::response::Parts, Bytes),
}

/// Sends one streaming round upstream: an event stream, an error answer, or
/// why the answer cannot be governed.
async fn open_stream(
    shared: &Arc<Shared>,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Opened, ProxyError> {
    let response = send_round(shared, uri, headers, body).await?;
    let (parts, body) = response.into_parts();
    if !parts.status.is_success() {
        let (bytes, _held) = read_answer(shared, body).await?;
        return Ok(Opened::Refused(parts, bytes));
    }
    if !is_event_stream(&parts.headers) || is_encoded(&parts.headers) {
        return Err(ProxyError::UpstreamInvalid {
            detail: "a streaming request was not answered with a plain event stream".into(),
        });
    }
    Ok(Opened::Stream(
        parts,
        UpstreamEvents::new(Arc::clone(shared), body),
    ))
}

async fn stream(
    shared: &Arc<Shared>,
    request_id: &Arc<str>,
    turn: Governed,
) -> Result<Response<ProxyBody>, ProxyError> {
    let Governed {
        surface,
        echo,
        identity,
        request,
        uri,
        headers,
        budget,
        ..
    } = turn;
    // The first round decides the response's status and headers. An error
    // status goes back as the upstream sent it.
    let (mut parts, first) = match open_stream(shared, &uri, &headers, request.body()).await? {
        Opened::Stream(parts, events) => (parts, events),
        Opened::Refused(parts, bytes) => return Ok(respond(parts, bytes)),
    };
    parts.version = Version::default();
    remove_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.status = StatusCode::OK;

    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(32);
    let first = first.watching(tx.clone());
    let task_shared = shared.clone();
    let request_id = request_id.clone();
    let watch = tx.clone();
    tokio::spawn(async move {
        // Held until the stream's last round ends.
        let _budget = budget;
        let next_shared = task_shared.clone();
        let upstream = move |body: Bytes| {
            let shared = next_shared.clone();
            let uri = uri.clone();
            let headers = headers.clone();
            let watch = watch.clone();
            async move {
                match open_stream(&shared, &uri, &headers, body).await? {
                    Opened::Stream(_, events) => Ok(events.watching(watch)),
                    Opened::Refused(parts, bytes) => Err(GovernError::Upstream(
                        parts.status.as_u16(),
                        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                    )),
                }
            }
        };
        let governance = task_shared.gateway.governance();
        let caller = &identity.caller;
        let end = match surface {
            Surface::Chat => {
                governance
                    .run_stream(caller, &request_id, request, first, upstream, &tx)
                    .await
            }
            Surface::Responses => {
                governance
                    .run_responses_stream(
                        caller,
                        &request_id,
                        Prepared {
                            body: request,
                            echo,
                        },
                        first,
                        upstream,
                        &tx,
                    )
                    .await
            }
        };
        match end {
            StreamEnd::Completed => {}
            StreamEnd::Failed(message) => {
                tracing::warn!(request_id = %request_id, %message, "governed stream ended with an error");
            }
            StreamEnd::ClientGone => {
                tracing::debug!(request_id = %request_id, "client left a governed stream");
            }
        }
    });
    Ok(Response::from_parts(
        parts,
        ChannelBody::new(rx).boxed_unsync(),
    ))
}
