//! tollgate's own endpoints under `/tollgate/`, answered locally and never
//! forwarded:
//!
//! - `healthz`: the process is up, and whether the receipt log can be written
//!   (503 while it cannot: governed calls are refused then);
//! - `readyz`: it accepts traffic (503 while draining for shutdown or while the
//!   receipt log fails);
//! - `approvals` (admin token): `GET /tollgate/approvals` lists approval
//!   requests, `POST /tollgate/approvals/{id}/approve` and `…/reject` settle one.
//!   Each settlement is recorded in the receipt log as a `system` record.

use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use serde_json::{Value, json};

use super::Shared;
use super::body::ProxyBody;
use crate::error::ProxyError;
use crate::kernel::approvals::{Request as Approval, State};
use crate::receipt::{ActionRecord, Draft, Reason};

/// The path prefix of the admin endpoints.
pub const PREFIX: &str = "/tollgate/";

fn json_response(status: StatusCode, body: &Value) -> Response<ProxyBody> {
    let mut response = super::body::json_response(status, body.to_string());
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Answers an admin request; `rest` is the path after [`PREFIX`].
pub async fn handle(
    shared: &Shared,
    method: &Method,
    headers: &HeaderMap,
    rest: &str,
    query: Option<&str>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let path = format!("{PREFIX}{rest}");
    let not_allowed = || ProxyError::MethodNotAllowed {
        method: method.to_string(),
        path: path.clone(),
    };
    match rest {
        "healthz" | "readyz" => {
            if method != Method::GET && method != Method::HEAD {
                return Err(not_allowed());
            }
            Ok(health(shared, rest == "readyz"))
        }
        "approvals" => {
            authorize(shared, headers)?;
            if method != Method::GET {
                return Err(not_allowed());
            }
            Ok(list(shared, query))
        }
        _ => {
            let settle = rest
                .strip_prefix("approvals/")
                .and_then(|r| r.split_once('/'))
                .filter(|(id, verb)| !id.is_empty() && matches!(*verb, "approve" | "reject"));
            let Some((id, verb)) = settle else {
                return Err(ProxyError::NotFound { path });
            };
            authorize(shared, headers)?;
            if method != Method::POST {
                return Err(not_allowed());
            }
            settle_request(shared, id, verb == "approve").await
        }
    }
}

fn health(shared: &Shared, ready: bool) -> Response<ProxyBody> {
    let receipts = shared.gateway.governance().receipts().failure();
    let draining = shared.draining.load(Ordering::Acquire);
    let status_text = match (&receipts, ready && draining) {
        (_, true) => "draining",
        (Some(_), _) => "degraded",
        (None, _) if ready => "ready",
        (None, _) => "ok",
    };
    let status = if receipts.is_some() || (ready && draining) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = json!({
        "status": status_text,
        "receipts": receipts.map_or_else(|| "ok".to_owned(), |e| format!("failing: {e}")),
        "policy_hash": shared.gateway.governance().kernel().policy().hash(),
    });
    json_response(status, &body)
}

fn authorize(shared: &Shared, headers: &HeaderMap) -> Result<(), ProxyError> {
    if !shared.gateway.admin_enabled() {
        return Err(ProxyError::Forbidden {
            message: "the approvals API is off: start tollgate with an admin token (`admin_token` or TOLLGATE_ADMIN_TOKEN)".into(),
        });
    }
    if !shared.gateway.admin_authorized(headers) {
        return Err(ProxyError::Unauthorized {
            message: "the approvals API needs the admin token (Authorization: Bearer …)".into(),
            code: "invalid_admin_token",
        });
    }
    Ok(())
}

fn seconds(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn state_name(state: State) -> &'static str {
    match state {
        State::Pending => "pending",
        State::Approved => "approved",
        State::Rejected => "rejected",
        State::Consumed => "consumed",
    }
}

fn describe(request: &Approval) -> Value {
    json!({
        "id": request.id,
        "object": "tollgate.approval",
        "state": state_name(request.state),
        "agent_id": request.binding.agent_id,
        "tool": request.binding.tool,
        "arguments_hash": request.binding.arguments_hash,
        "policy_hash": request.binding.policy_hash,
        "created_at": seconds(request.created),
        "expires_at": seconds(request.expires),
    })
}

fn list(shared: &Shared, query: Option<&str>) -> Response<ProxyBody> {
    let wanted = query.and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "state")
            .map(|(_, v)| v.into_owned())
    });
    let now = std::time::SystemTime::now();
    let mut requests = shared.gateway.governance().kernel().approvals().list();
    requests.retain(|r| r.expires > now || r.state == State::Consumed);
    requests.reverse();
    let data: Vec<Value> = requests
        .iter()
        .filter(|r| wanted.as_deref().is_none_or(|w| w == state_name(r.state)))
        .map(describe)
        .collect();
    json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

async fn settle_request(
    shared: &Shared,
    id: &str,
    approve: bool,
) -> Result<Response<ProxyBody>, ProxyError> {
    let governance = shared.gateway.governance();
    let kernel = governance.kernel();
    let approvals = kernel.approvals();
    let Some(request) = approvals.list().into_iter().find(|r| r.id == id) else {
        return Err(ProxyError::NotFound {
            path: format!("{PREFIX}approvals/{id}"),
        });
    };
    if request.state != State::Pending || request.expires <= std::time::SystemTime::now() {
        return Err(ProxyError::Conflict {
            message: format!(
                "approval request {id} is {}, not pending",
                if request.state == State::Pending {
                    "expired"
                } else {
                    state_name(request.state)
                }
            ),
        });
    }
    let verb = if approve { "approved" } else { "rejected" };
    // The operator's decision is on record before it counts.
    governance
        .receipts()
        .append(Draft {
            decision: "system".into(),
            reason: Reason {
                code: format!("approval_{verb}"),
                message: format!("an operator {verb} approval request {id}"),
                matched_rule: None,
            },
            server_id: governance.settings().server_id.clone(),
            agent_id: request.binding.agent_id.clone(),
            request_id: String::new(),
            surface: "admin".into(),
            action: ActionRecord {
                tool_name: request.binding.tool.clone(),
                tool_call_id: String::new(),
                parameters: json!({}),
                parameters_hash: request.binding.arguments_hash.clone(),
            },
            policy_hash: request.binding.policy_hash.clone(),
            metadata: json!({"approval_id": id}),
        })
        .await
        .map_err(|e| ProxyError::Unavailable {
            message: format!("the decision could not be recorded, so it was not taken: {e}"),
        })?;
    let settled = if approve {
        approvals.approve(id)
    } else {
        approvals.reject(id)
    };
    if !settled {
        return Err(ProxyError::Conflict {
            message: format!("approval request {id} was settled meanwhile"),
        });
    }
    let now = approvals
        .list()
        .into_iter()
        .find(|r| r.id == id)
        .map_or(Value::Null, |r| describe(&r));
    Ok(json_response(StatusCode::OK, &now))
}
