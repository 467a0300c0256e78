//! tollgate's own endpoints under `/tollgate/`, answered locally and never
//! forwarded: `healthz` (the process is up) and `readyz` (it accepts traffic; 503
//! while draining for shutdown).

use std::sync::atomic::Ordering;

use http::{HeaderValue, Method, Response, StatusCode, header};
use serde_json::json;

use super::Shared;
use super::body::{ProxyBody, full};
use crate::error::ProxyError;

/// The path prefix of the admin endpoints.
pub const PREFIX: &str = "/tollgate/";

/// Answers an admin request; `rest` is the path after [`PREFIX`].
pub fn handle(
    shared: &Shared,
    method: &Method,
    rest: &str,
) -> Result<Response<ProxyBody>, ProxyError> {
    let path = format!("{PREFIX}{rest}");
    let known = matches!(rest, "healthz" | "readyz");
    if !known {
        return Err(ProxyError::NotFound { path });
    }
    if method != Method::GET && method != Method::HEAD {
        return Err(ProxyError::MethodNotAllowed {
            method: method.to_string(),
            path,
        });
    }
    let (status, body) = match rest {
        "healthz" => (StatusCode::OK, json!({"status": "ok"})),
        _ if shared.draining.load(Ordering::Acquire) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "draining"}),
        ),
        _ => (StatusCode::OK, json!({"status": "ready"})),
    };
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
