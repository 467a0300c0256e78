//! The per-request pipeline: admit, forward, relay back.
//!
//! 1. **Admit**: admin paths (`/tollgate/…`) are answered here and never forwarded;
//!    a request that cannot be relayed (CONNECT, `*` target, protocol upgrade,
//!    header section or declared body over the limits) gets tollgate's own error.
//! 2. **Forward**: the request target is mapped onto the upstream origin,
//!    hop-by-hop headers are dropped, everything else (authorization included) is
//!    sent as is, and the body streams through [`RequestBody`].
//! 3. **Relay back**: status and end-to-end headers unchanged, the body streaming
//!    through [`ResponseBody`], plus `x-tollgate-request-id`.

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, Request, Response, Version, header};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::Shared;
use super::admin;
use super::body::{
    ProxyBody, RequestBody, RequestBodyFault, RequestBodyOutcome, ResponseBody, StreamErrorStyle,
};
use super::govern;
use super::headers::{is_encoded, is_event_stream, remove_hop_by_hop, section_size, wants_upgrade};
use super::upstream;
use crate::cli::Mode;
use crate::error::ProxyError;

/// The header carrying tollgate's id for a request, on every response.
pub const REQUEST_ID_HEADER: &str = "x-tollgate-request-id";

/// A new request id: `tgr_` and a time-ordered UUID.
pub fn new_request_id() -> Arc<str> {
    Arc::from(format!("tgr_{}", uuid::Uuid::now_v7().simple()))
}

/// Handles one request from start to end. Never fails: every error becomes a
/// response.
pub async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<ProxyBody> {
    let request_id = new_request_id();
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();

    let mut response = match route(&shared, req, &request_id).await {
        Ok(response) => response,
        Err(error) => {
            tracing::debug!(request_id = %request_id, %error, "answered by tollgate");
            error.into_response(&request_id)
        }
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    tracing::info!(
        target: "tollgate::access",
        request_id = %request_id,
        method = %method,
        path = %path,
        status = response.status().as_u16(),
        headers_ms = started.elapsed().as_millis() as u64,
    );
    response
}

async fn route(
    shared: &Arc<Shared>,
    mut req: Request<Incoming>,
    request_id: &Arc<str>,
) -> Result<Response<ProxyBody>, ProxyError> {
    if let Some(rest) = req.uri().path().strip_prefix(admin::PREFIX) {
        return admin::handle(shared, req.method(), req.headers(), rest, req.uri().query()).await;
    }
    admit(shared, &req)?;
    if shared.config.govern.mode == Mode::Govern
        && let Some(surface) = govern::surface(req.method(), req.uri())
    {
        let identity = shared.gateway.identify(req.headers())?;
        return govern::govern(shared, req, request_id, identity, surface).await;
    }
    if shared.config.govern.mode == Mode::Govern
        && let Some(id) = govern::fetched_response_id(req.method(), req.uri())
    {
        // One identification serves both: whose remembered response it is, and
        // the key the fetch goes upstream with otherwise.
        let identity = shared.gateway.identify(req.headers())?;
        if let Some(answer) = govern::remembered_response(shared, &identity.caller, id, req.uri()) {
            return answer;
        }
        let Some(names) = govern::fetch_rewrites(shared, req.uri()) else {
            return forward(shared, req, request_id, identity.upstream_authorization).await;
        };
        req.headers_mut().remove(header::ACCEPT_ENCODING);
        let response = forward(shared, req, request_id, identity.upstream_authorization).await?;
        return govern::without_governed_tools(shared, response, names).await;
    }
    let authorization = shared.gateway.relay_authorization(req.headers())?;
    forward(shared, req, request_id, authorization).await
}

/// Refuses what cannot be relayed, before anything is sent upstream.
fn admit(shared: &Shared, req: &Request<Incoming>) -> Result<(), ProxyError> {
    let limits = &shared.config.limits;
    if req.headers().len() > limits.max_headers {
        return Err(ProxyError::HeadersTooLarge {
            detail: format!(
                "{} headers, the limit is {}",
                req.headers().len(),
                limits.max_headers
            ),
        });
    }
    let size = section_size(req.headers());
    if size > limits.max_header_bytes {
        return Err(ProxyError::HeadersTooLarge {
            detail: format!(
                "{size} bytes of headers, the limit is {}",
                limits.max_header_bytes
            ),
        });
    }
    if req.method() == Method::CONNECT {
        return Err(ProxyError::BadRequest {
            message: "CONNECT is not supported: tollgate is a reverse proxy".into(),
            code: "method_not_supported",
        });
    }
    if !req.uri().path().starts_with('/') {
        return Err(ProxyError::BadRequest {
            message: format!("request target {:?} cannot be forwarded", req.uri().path()),
            code: "invalid_request_target",
        });
    }
    if wants_upgrade(req.headers()) {
        return Err(ProxyError::BadRequest {
            message: "protocol upgrades (WebSocket) are not relayed".into(),
            code: "upgrade_not_supported",
        });
    }
    if declared_length(req)?.is_some_and(|length| length > limits.max_body_bytes) {
        return Err(ProxyError::BodyTooLarge {
            limit: limits.max_body_bytes,
        });
    }
    Ok(())
}

fn declared_length(req: &Request<Incoming>) -> Result<Option<u64>, ProxyError> {
    match req.headers().get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| ProxyError::BadRequest {
                message: "content-length is not a number".into(),
                code: "invalid_content_length",
            }),
    }
}

async fn forward(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    request_id: &Arc<str>,
    authorization: Option<HeaderValue>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let config = &shared.config;
    let sse_style = if req.uri().path().starts_with("/v1/messages") {
        StreamErrorStyle::Anthropic
    } else {
        StreamErrorStyle::OpenAi
    };
    let (mut parts, body) = req.into_parts();
    parts.uri = upstream::target(&config.upstream, &parts.uri)?;
    parts.version = Version::HTTP_11;
    remove_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::HOST);
    parts.headers.remove(header::EXPECT);
    if let Some(authorization) = authorization {
        parts.headers.insert(header::AUTHORIZATION, authorization);
    }
    // A body of unknown length goes on chunked, whatever the method: left to
    // itself the client would drop the body of a GET.
    if !body.is_end_stream() && !parts.headers.contains_key(header::CONTENT_LENGTH) {
        parts.headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }

    let outcome = Arc::new(RequestBodyOutcome::default());
    let body = RequestBody::new(
        body,
        config.limits.max_body_bytes,
        config.timeouts.idle,
        outcome.clone(),
    )
    .boxed_unsync();
    let upstream_req = Request::from_parts(parts, body);

    let sent = tokio::time::timeout(
        config.timeouts.first_byte,
        shared.client.request(upstream_req),
    )
    .await;
    // A broken request body is the client's fault, whatever the upstream made of it.
    let body_fault = outcome.fault().map(|fault| match fault {
        RequestBodyFault::TooLarge => ProxyError::BodyTooLarge {
            limit: config.limits.max_body_bytes,
        },
        RequestBodyFault::Stalled => ProxyError::RequestTimeout {
            secs: config.timeouts.idle.as_secs(),
        },
        RequestBodyFault::Broken => ProxyError::BadRequest {
            message: "the request body was malformed or cut short".into(),
            code: "invalid_request_body",
        },
    });
    let response = match (sent, body_fault) {
        (_, Some(error)) => return Err(error),
        (Err(_), None) => {
            return Err(ProxyError::UpstreamTimeout {
                detail: format!(
                    "no response headers within {:?}",
                    config.timeouts.first_byte
                ),
            });
        }
        (Ok(Err(e)), None) => return Err(upstream::classify(&e, config.timeouts.connect)),
        (Ok(Ok(response)), None) => response,
    };

    let (mut parts, body) = response.into_parts();
    // The client's connection has its own version; hyper writes the right one.
    parts.version = Version::default();
    remove_hop_by_hop(&mut parts.headers);
    let framed = is_plain_event_stream(&parts.headers).then_some(sse_style);
    let body = ResponseBody::new(body, config.timeouts.idle, framed, request_id.clone());
    Ok(Response::from_parts(parts, body.boxed_unsync()))
}

/// An event stream that can be framed: `text/event-stream`, not compressed and not
/// length-delimited (a final error event could not be added to either).
fn is_plain_event_stream(headers: &http::HeaderMap) -> bool {
    is_event_stream(headers)
        && !is_encoded(headers)
        && !headers.contains_key(header::CONTENT_LENGTH)
}
