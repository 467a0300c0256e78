//! `tollgate approvals list|approve ID|reject ID`: the approvals admin API of a
//! running server, from the command line.

use std::io::Write;
use std::process::ExitCode;

use serde_json::Value;

use crate::cli::{AdminArgs, ApprovalsCommand};

use super::CommandError;

/// Runs one `approvals` subcommand.
pub fn run(command: ApprovalsCommand) -> Result<ExitCode, CommandError> {
    let runtime = super::runtime()?;
    runtime.block_on(async move {
        match command {
            ApprovalsCommand::List { state, json, admin } => {
                let path = match &state {
                    Some(s) => format!("/tollgate/approvals?state={s}"),
                    None => "/tollgate/approvals".to_owned(),
                };
                let body = call(&admin, reqwest::Method::GET, &path).await?;
                let mut out = std::io::stdout().lock();
                if json {
                    writeln!(out, "{body}")?;
                    return Ok(ExitCode::SUCCESS);
                }
                let data = body
                    .get("data")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                if data.is_empty() {
                    writeln!(out, "no approval requests")?;
                    return Ok(ExitCode::SUCCESS);
                }
                writeln!(
                    out,
                    "{:<40} {:<9} {:<24} {:<24} EXPIRES",
                    "ID", "STATE", "AGENT", "TOOL"
                )?;
                for r in data {
                    let text = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                    let expires = r
                        .get("expires_at")
                        .and_then(Value::as_u64)
                        .map(|s| {
                            humantime::format_rfc3339_seconds(
                                std::time::UNIX_EPOCH + std::time::Duration::from_secs(s),
                            )
                            .to_string()
                        })
                        .unwrap_or_default();
                    writeln!(
                        out,
                        "{:<40} {:<9} {:<24} {:<24} {expires}",
                        text("id"),
                        text("state"),
                        text("agent_id"),
                        text("tool")
                    )?;
                }
                Ok(ExitCode::SUCCESS)
            }
            ApprovalsCommand::Approve { id, admin } => settle(&admin, &id, "approve").await,
            ApprovalsCommand::Reject { id, admin } => settle(&admin, &id, "reject").await,
        }
    })
}

async fn settle(admin: &AdminArgs, id: &str, verb: &str) -> Result<ExitCode, CommandError> {
    let id_part: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();
    let body = call(
        admin,
        reqwest::Method::POST,
        &format!("/tollgate/approvals/{id_part}/{verb}"),
    )
    .await?;
    let state = body.get("state").and_then(Value::as_str).unwrap_or("?");
    writeln!(std::io::stdout().lock(), "{id}: {state}")?;
    Ok(ExitCode::SUCCESS)
}

async fn call(
    admin: &AdminArgs,
    method: reqwest::Method,
    path: &str,
) -> Result<Value, CommandError> {
    let failed = |message: String| CommandError::Message(message);
    let mut builder = reqwest::Client::builder().no_proxy();
    if let Some(ca) = &admin.ca_cert {
        let pem = std::fs::read(ca).map_err(|e| failed(format!("{}: {e}", ca.display())))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| failed(format!("{}: {e}", ca.display())))?;
        builder = builder.add_root_certificate(cert);
    }
    let client = builder
        .build()
        .map_err(|e| failed(format!("HTTP client: {e}")))?;
    let url = format!("{}{path}", admin.url.trim_end_matches('/'));
    let response = client
        .request(method, &url)
        .bearer_auth(&admin.admin_token)
        .send()
        .await
        .map_err(|e| failed(format!("{}: {e}", admin.url)))?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let message = body
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("no message");
        return Err(failed(format!("the server answered {status}: {message}")));
    }
    Ok(body)
}
