//! The proxy's own errors and the one function that turns them into responses.
//!
//! Errors that tollgate itself produces (as opposed to the upstream's, which are
//! relayed untouched) leave as OpenAI-shaped JSON,
//! `{"error":{"message","type","param","code"}}`, with `x-request-id` set to
//! tollgate's request id so that the SDKs raise their usual exception types and
//! report the id. Each error knows where the fault lies (client, upstream, proxy),
//! which decides its status and whether a retry may help.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::json;

use crate::proxy::body::{ProxyBody, full};

/// Where a fault came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request was unacceptable (4xx).
    Client,
    /// The upstream could not be reached or did not answer in time (502, 504).
    Upstream,
    /// tollgate itself failed (500).
    Proxy,
}

impl Fault {
    /// The name used in the `x-tollgate-error-source` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Upstream => "upstream",
            Self::Proxy => "proxy",
        }
    }
}

/// An error that tollgate answers itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The request body exceeds the configured limit.
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The request headers exceed the configured size or count.
    #[error("request headers too large: {detail}")]
    HeadersTooLarge {
        /// Which limit was exceeded.
        detail: String,
    },
    /// The request cannot be relayed as sent.
    #[error("{message}")]
    BadRequest {
        /// What is wrong with it.
        message: String,
        /// A machine-readable code.
        code: &'static str,
    },
    /// The client stopped sending its body for longer than the idle timeout.
    #[error("the request body stalled for more than {secs} s")]
    RequestTimeout {
        /// The idle timeout in seconds.
        secs: u64,
    },
    /// No credentials, or credentials tollgate does not accept.
    #[error("{message}")]
    Unauthorized {
        /// Why.
        message: String,
        /// A machine-readable code.
        code: &'static str,
    },
    /// Credentials that are valid but not enough (the admin API).
    #[error("{message}")]
    Forbidden {
        /// Why.
        message: String,
    },
    /// The request conflicts with the state of the resource.
    #[error("{message}")]
    Conflict {
        /// Why.
        message: String,
    },
    /// A governed call could not be recorded; nothing took effect.
    #[error("{message}")]
    Unavailable {
        /// Why.
        message: String,
    },
    /// Governed requests in progress already hold the memory budget for request
    /// bodies and upstream answers (`max_governed_bytes`); the client should retry
    /// shortly.
    #[error(
        "tollgate is at capacity: governed requests in progress already hold {limit} bytes of request bodies and answers; retry shortly"
    )]
    Overloaded {
        /// The budget in bytes.
        limit: u64,
    },
    /// An admin path that does not exist.
    #[error("no such tollgate endpoint: {path}")]
    NotFound {
        /// The path asked for.
        path: String,
    },
    /// An admin path asked for with a method it does not serve.
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed {
        /// The method used.
        method: String,
        /// The path asked for.
        path: String,
    },
    /// The upstream could not be reached.
    #[error("upstream unreachable: {detail}")]
    UpstreamUnreachable {
        /// The connection error, without secrets.
        detail: String,
    },
    /// The upstream answered with something tollgate cannot govern.
    #[error("upstream answer unusable: {detail}")]
    UpstreamInvalid {
        /// What was wrong.
        detail: String,
    },
    /// The upstream did not answer in time.
    #[error("upstream timed out: {detail}")]
    UpstreamTimeout {
        /// Which timeout.
        detail: String,
    },
    /// tollgate failed to handle the request.
    #[error("internal error: {detail}")]
    Internal {
        /// What failed.
        detail: String,
    },
}

impl ProxyError {
    /// Where the fault lies.
    pub fn fault(&self) -> Fault {
        match self {
            Self::BodyTooLarge { .. }
            | Self::HeadersTooLarge { .. }
            | Self::BadRequest { .. }
            | Self::RequestTimeout { .. }
            | Self::NotFound { .. }
            | Self::Unauthorized { .. }
            | Self::Forbidden { .. }
            | Self::Conflict { .. }
            | Self::MethodNotAllowed { .. } => Fault::Client,
            Self::UpstreamUnreachable { .. }
            | Self::UpstreamInvalid { .. }
            | Self::UpstreamTimeout { .. } => Fault::Upstream,
            Self::Internal { .. } | Self::Unavailable { .. } | Self::Overloaded { .. } => {
                Fault::Proxy
            }
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::Unavailable { .. } | Self::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::UpstreamUnreachable { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamInvalid { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `error.type` of the OpenAI envelope.
    pub fn error_type(&self) -> &'static str {
        match self.fault() {
            Fault::Client => "invalid_request_error",
            Fault::Upstream => "upstream_error",
            Fault::Proxy => "server_error",
        }
    }

    /// The `error.code` of the OpenAI envelope.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BodyTooLarge { .. } => "request_body_too_large",
            Self::HeadersTooLarge { .. } => "request_headers_too_large",
            Self::BadRequest { code, .. } => code,
            Self::RequestTimeout { .. } => "request_body_timeout",
            Self::NotFound { .. } => "not_found",
            Self::Unauthorized { code, .. } => code,
            Self::Forbidden { .. } => "forbidden",
            Self::Conflict { .. } => "conflict",
            Self::Unavailable { .. } => "receipts_unavailable",
            Self::Overloaded { .. } => "server_overloaded",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::UpstreamUnreachable { .. } => "upstream_unreachable",
            Self::UpstreamInvalid { .. } => "upstream_invalid_response",
            Self::UpstreamTimeout { .. } => "upstream_timeout",
            Self::Internal { .. } => "internal_error",
        }
    }

    /// Whether sending the same request again may succeed. Client errors will not;
    /// an unreachable upstream may come back.
    pub fn retryable(&self) -> bool {
        !matches!(self.fault(), Fault::Client) || matches!(self, Self::RequestTimeout { .. })
    }

    /// The JSON body: OpenAI's error envelope.
    pub fn body(&self) -> Bytes {
        let value = json!({
            "error": {
                "message": self.to_string(),
                "type": self.error_type(),
                "param": null,
                "code": self.code(),
            }
        });
        Bytes::from(value.to_string())
    }

    /// The complete response, tagged with tollgate's request id.
    pub fn into_response(self, request_id: &str) -> Response<ProxyBody> {
        let body = self.body();
        let mut response = Response::new(full(body));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Ok(id) = HeaderValue::from_str(request_id) {
            headers.insert("x-request-id", id);
        }
        headers.insert(
            "x-should-retry",
            HeaderValue::from_static(if self.retryable() { "true" } else { "false" }),
        );
        if matches!(self, Self::Overloaded { .. }) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        headers.insert(
            "x-tollgate-error-source",
            HeaderValue::from_static(self.fault().as_str()),
        );
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_has_the_four_openai_keys() {
        let e = ProxyError::BodyTooLarge { limit: 10 };
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        let err = &v["error"];
        assert_eq!(err["type"], "invalid_request_error");
        assert_eq!(err["code"], "request_body_too_large");
        assert!(err["param"].is_null());
        assert!(err["message"].as_str().unwrap().contains("10 bytes"));
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn statuses_follow_the_fault() {
        let unreachable = ProxyError::UpstreamUnreachable { detail: "x".into() };
        assert_eq!(unreachable.status(), StatusCode::BAD_GATEWAY);
        assert!(unreachable.retryable());
        let timeout = ProxyError::UpstreamTimeout { detail: "x".into() };
        assert_eq!(timeout.status(), StatusCode::GATEWAY_TIMEOUT);
        let headers = ProxyError::HeadersTooLarge { detail: "x".into() };
        assert_eq!(
            headers.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        assert!(!headers.retryable());
        let r = headers.into_response("tg_1");
        assert_eq!(r.headers()["x-request-id"], "tg_1");
        assert_eq!(r.headers()["x-should-retry"], "false");
    }
}
