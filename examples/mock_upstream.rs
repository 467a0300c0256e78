//! A stand-alone mock of the OpenAI API, for the real-SDK suite and the
//! benchmarks: the test suite's mock server with a responder that answers like the
//! API does, in its wire format, streaming included.
//!
//! `cargo run --example mock_upstream -- --listen 127.0.0.1:0` prints
//! `listening on http://ADDR` on standard output. Scenarios are chosen by the
//! request:
//!
//! - `GET /v1/models`: a model list.
//! - `POST /v1/chat/completions` and `POST /v1/responses`, plain or `stream: true`:
//!   a text answer ("Hello from the mock"), or, with `x-mock-tool-call: 1`, a tool
//!   call to `get_weather` at the end. The model `mock-429` gets a rate-limit error,
//!   `mock-500` a server error, `mock-hang` no answer at all.
//! - `x-mock-chunks: N` sets the number of content deltas of a stream,
//!   `x-mock-first-ms` when its first event is due after the reply starts and
//!   `x-mock-interval-ms` how far apart the events are due (each on the stream's
//!   own schedule, not counted from when the one before was written, and kept to
//!   a tenth of a millisecond, not rounded to tokio's millisecond tick). These
//!   answers depend only on the path, the model, `stream`,
//!   `stream_options.include_usage` and these headers, so each kind is built once
//!   and given again; the rest of the body is checked to be JSON and not read.
//! - `POST /v1/chat/completions` and `POST /v1/responses` with the model
//!   `mock-agent`, plain or streaming: a deterministic stand-in for a model that
//!   uses tools (see below).
//! - `GET /v1/responses/{id}`: a response of the `mock-agent` model that was
//!   stored, exactly as the mock returned it (the `response.completed` object of
//!   a stream); an id it did not store is 404 in OpenAI's error shape.
//! - Anything else: 404 in OpenAI's error shape.
//!
//! # The `mock-agent` model
//!
//! It reads the conversation and answers like a model that follows orders:
//!
//! - If the last message has role `tool`, it answers with text quoting the content
//!   of every message in that last run of tool messages, in order:
//!   `Tool results: <content 1> | <content 2>`, `finish_reason: "stop"`.
//! - Otherwise it reads the last user message. Every `call NAME {json}` in it (several
//!   are separated by `;`, e.g. `call a {"x":1}; call b {}`) becomes one tool call to
//!   `NAME` with that JSON object, compacted, as its arguments, and the turn ends with
//!   `finish_reason: "tool_calls"`. Call ids are `call_<index>_<counter>`, the counter
//!   counting every call this process has made, so they never repeat. Without such a
//!   directive the answer is the text `Hello from the mock`.
//! - Like the API, it checks the request first and answers 400
//!   (`invalid_request_error`) when a directive names a tool that is not in the
//!   request's `tools` (or legacy `functions`), when a directive's JSON does not
//!   parse, when `parallel_tool_calls` comes without `tools`, and when the tool
//!   messages do not pair with the assistant's `tool_calls` (every call answered
//!   before the next turn, every tool message answering a call of the assistant
//!   message before it), with the API's own wording.
//! - Plain answers always carry `usage` (10 prompt and 5 completion tokens per
//!   answer); streams follow the API's chunks: a first chunk with the role, text in
//!   several content deltas, each tool call opened by a fragment with its `id`, `type`
//!   and `name` and then its arguments in several fragments, one finish chunk, a usage
//!   chunk when `stream_options.include_usage` is true, and `data: [DONE]`. Each
//!   answer has its own `chatcmpl-mockagent<counter>` id.
//!
//! On the Responses API the same orders are followed with this surface's items:
//! `function_call` items answered by `function_call_output` items (the reply to
//! a trailing run of outputs quotes their `output`), responses stored (unless
//! `store: false`) so that `previous_response_id` continues them (an unknown id is
//! the API's 400), the API's pairing errors (`No tool output found for function
//! call …`, `No tool call found for function call output …`), and, when the
//! request sets `reasoning`, a `reasoning` item with `encrypted_content` before
//! the answer, which every call made after it needs replayed before it (the
//! API's "provided without its required 'reasoning' item"). A stored response
//! can be fetched back with `GET /v1/responses/{id}`, as the API allows. Ids are
//! `resp_mockagent<n>`, `msg_mockagent<n>`, `rs_mockagent<n>`, `fc_mockagent<c>`
//! and `call_<index>_<c>`; usage is 10 input and 5 output tokens per answer.
//!
//! Tools may be declared in any shape the API accepts (`strict`,
//! `additionalProperties`, descriptions and unknown fields are ignored).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

#[path = "../tests/common/mock.rs"]
mod mock;

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use mock::{MockUpstream, Recorded, Reply};
use serde_json::{Value, json};

const REQUEST_ID: &str = "req_mock_0123456789";

fn header_num(request: &Recorded, name: &str, default: u64) -> u64 {
    request
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn json_reply(status: u16, body: Value) -> Reply {
    Reply::Full {
        status,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("x-request-id".into(), REQUEST_ID.into()),
            ("openai-processing-ms".into(), "7".into()),
            ("openai-version".into(), "2020-10-01".into()),
            ("x-ratelimit-remaining-requests".into(), "9999".into()),
        ],
        body: Bytes::from(body.to_string()),
    }
}

fn error_reply(status: u16, message: &str, kind: &str, code: Value) -> Reply {
    let mut reply = json_reply(
        status,
        json!({"error": {"message": message, "type": kind, "param": null, "code": code}}),
    );
    if let Reply::Full { headers, .. } = &mut reply {
        headers.push(("retry-after".into(), "0".into()));
        headers.push(("x-should-retry".into(), "false".into()));
    }
    reply
}

fn sse_reply(request: &Recorded, events: Vec<String>) -> Reply {
    Reply::Timed {
        status: 200,
        headers: vec![
            (
                "content-type".into(),
                "text/event-stream; charset=utf-8".into(),
            ),
            ("cache-control".into(), "no-cache".into()),
            ("x-request-id".into(), REQUEST_ID.into()),
        ],
        first: Duration::from_millis(header_num(request, "x-mock-first-ms", 0)),
        interval: Duration::from_millis(header_num(request, "x-mock-interval-ms", 0)),
        chunks: events.into_iter().map(Bytes::from).collect(),
    }
}

/// The words of the text answer, `n` of them.
fn words(n: u64) -> Vec<String> {
    let base = ["Hello", " from", " the", " mock"];
    (0..n as usize)
        .map(|i| base[i % base.len()].to_owned())
        .collect()
}

fn chat(request: &Recorded, body: &Value) -> Reply {
    let model = body["model"].as_str().unwrap_or("gpt-4o-mock").to_owned();
    let tool_call = header_num(request, "x-mock-tool-call", 0) == 1;
    let n = header_num(request, "x-mock-chunks", 4);
    let id = "chatcmpl-mock123";
    let created = 1_727_346_182u64;
    let call = json!({"id": "call_mock_weather", "type": "function",
        "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}});
    let usage = json!({"prompt_tokens": 12, "completion_tokens": n, "total_tokens": 12 + n});
    if body["stream"] != json!(true) {
        let mut message =
            json!({"role": "assistant", "content": words(n).concat(), "refusal": null});
        if tool_call {
            message["tool_calls"] = json!([call]);
        }
        return json_reply(
            200,
            json!({"id": id, "object": "chat.completion", "created": created, "model": model,
                "system_fingerprint": "fp_mock",
                "choices": [{"index": 0, "message": message, "logprobs": null,
                    "finish_reason": if tool_call { "tool_calls" } else { "stop" }}],
                "usage": usage}),
        );
    }
    let chunk = |delta: Value, finish: Value| {
        let c = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        format!("data: {c}\n\n")
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": "", "refusal": null}),
        Value::Null,
    )];
    for word in words(n) {
        events.push(chunk(json!({"content": word}), Value::Null));
    }
    if tool_call {
        events.push(chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_mock_weather", "type": "function",
                "function": {"name": "get_weather", "arguments": ""}}]}),
            Value::Null,
        ));
        for piece in ["{\"city\"", ":\"Par", "is\"}"] {
            events.push(chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                Value::Null,
            ));
        }
    }
    events.push(chunk(
        json!({}),
        json!(if tool_call { "tool_calls" } else { "stop" }),
    ));
    if body["stream_options"]["include_usage"] == json!(true) {
        let c = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": "fp_mock", "choices": [], "usage": usage});
        events.push(format!("data: {c}\n\n"));
    }
    events.push("data: [DONE]\n\n".to_owned());
    sse_reply(request, events)
}

/// Counts the answers and the tool calls of the `mock-agent` model, so that ids never
/// repeat within one process.
static AGENT_ANSWERS: AtomicU64 = AtomicU64::new(0);
static AGENT_CALLS: AtomicU64 = AtomicU64::new(0);

/// Tokens reported for each `mock-agent` answer.
const AGENT_PROMPT_TOKENS: u64 = 10;
const AGENT_COMPLETION_TOKENS: u64 = 5;

/// One tool call the `mock-agent` model decided to make.
struct AgentCall {
    id: String,
    name: String,
    arguments: String,
}

/// What the `mock-agent` model answers.
enum AgentTurn {
    Text(String),
    Calls(Vec<AgentCall>),
}

/// The API's 400 for a request it refuses.
fn invalid_request(message: &str, param: Value) -> Reply {
    json_reply(
        400,
        json!({"error": {"message": message, "type": "invalid_request_error",
            "param": param, "code": null}}),
    )
}

/// The text of a message's `content`: a string, or the text of its parts.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(""),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The names of the tools the request declares.
fn declared_tools(body: &Value) -> Vec<String> {
    let mut names = Vec::new();
    for tool in body["tools"].as_array().into_iter().flatten() {
        for key in ["function", "custom"] {
            if let Some(name) = tool[key]["name"].as_str() {
                names.push(name.to_owned());
            }
        }
        // Tolerate the flat (Responses-style) shape too.
        if let Some(name) = tool["name"].as_str() {
            names.push(name.to_owned());
        }
    }
    for function in body["functions"].as_array().into_iter().flatten() {
        if let Some(name) = function["name"].as_str() {
            names.push(name.to_owned());
        }
    }
    names
}

/// Checks the pairing of `tool_calls` and tool messages the way the API does.
fn check_pairing(messages: &[Value]) -> Result<(), Reply> {
    // The call ids of the assistant message before the current run of tool messages,
    // and those of them not answered yet.
    let mut open: Option<Vec<String>> = None;
    let mut unanswered: Vec<String> = Vec::new();
    let missing = |index: usize, ids: &[String]| {
        invalid_request(
            &format!(
                "An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. The following tool_call_ids did not have response messages: {}",
                ids.join(", ")
            ),
            json!(format!("messages.[{index}].role")),
        )
    };
    for (index, message) in messages.iter().enumerate() {
        let role = message["role"].as_str().unwrap_or_default();
        if role == "tool" {
            let id = message["tool_call_id"].as_str().unwrap_or_default();
            let answers_open = open.as_ref().is_some_and(|ids| ids.iter().any(|i| i == id));
            if !answers_open {
                return Err(invalid_request(
                    "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'.",
                    json!(format!("messages.[{index}].role")),
                ));
            }
            unanswered.retain(|i| i != id);
            continue;
        }
        if !unanswered.is_empty() {
            return Err(missing(index, &unanswered));
        }
        open = None;
        if role == "assistant" {
            let ids: Vec<String> = message["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["id"].as_str().map(str::to_owned))
                .collect();
            if !ids.is_empty() {
                unanswered = ids.clone();
                open = Some(ids);
            }
        }
    }
    if !unanswered.is_empty() {
        return Err(missing(messages.len(), &unanswered));
    }
    Ok(())
}

/// The `call NAME {json}` directives of a user message, as `(name, arguments)`.
fn directives(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut found = Vec::new();
    let mut rest = text;
    let mut at_boundary = true;
    while !rest.is_empty() {
        if at_boundary && let Some(after) = rest.strip_prefix("call ") {
            let after = after.trim_start();
            let name_len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                .unwrap_or(after.len());
            let name = &after[..name_len];
            let args = after[name_len..].trim_start();
            if !name.is_empty() && args.starts_with('{') {
                let mut values = serde_json::Deserializer::from_str(args).into_iter::<Value>();
                match values.next() {
                    Some(Ok(value)) => {
                        found.push((name.to_owned(), value.to_string()));
                        rest = &args[values.byte_offset()..];
                        at_boundary = false;
                        continue;
                    }
                    _ => {
                        return Err(format!(
                            "mock-agent: the arguments of `call {name}` are not valid JSON"
                        ));
                    }
                }
            }
        }
        let c = rest.chars().next().unwrap_or(' ');
        at_boundary = c.is_whitespace() || c == ';';
        rest = &rest[c.len_utf8()..];
    }
    Ok(found)
}

/// What the `mock-agent` model does with this request, or the API's 400.
fn agent_turn(body: &Value) -> Result<AgentTurn, Reply> {
    let Some(messages) = body["messages"].as_array() else {
        return Err(invalid_request(
            "Missing required parameter: 'messages'.",
            json!("messages"),
        ));
    };
    if !body["parallel_tool_calls"].is_null() && body["tools"].as_array().is_none_or(Vec::is_empty)
    {
        return Err(invalid_request(
            "Invalid value for 'parallel_tool_calls': 'parallel_tool_calls' is only allowed when 'tools' are specified.",
            json!("parallel_tool_calls"),
        ));
    }
    check_pairing(messages)?;
    if messages.last().is_some_and(|m| m["role"] == "tool") {
        let mut results: Vec<String> = messages
            .iter()
            .rev()
            .take_while(|m| m["role"] == "tool")
            .map(|m| content_text(&m["content"]))
            .collect();
        results.reverse();
        return Ok(AgentTurn::Text(format!(
            "Tool results: {}",
            results.join(" | ")
        )));
    }
    let user = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(|m| content_text(&m["content"]))
        .unwrap_or_default();
    let wanted = directives(&user).map_err(|e| invalid_request(&e, json!("messages")))?;
    if wanted.is_empty() {
        return Ok(AgentTurn::Text("Hello from the mock".to_owned()));
    }
    let declared = declared_tools(body);
    let mut calls = Vec::new();
    for (index, (name, arguments)) in wanted.into_iter().enumerate() {
        if !declared.contains(&name) {
            return Err(invalid_request(
                &format!(
                    "mock-agent: the user asked for a call to {name:?}, which is not among the request's tools ({})",
                    declared.join(", ")
                ),
                json!("tools"),
            ));
        }
        let n = AGENT_CALLS.fetch_add(1, Ordering::Relaxed);
        calls.push(AgentCall {
            id: format!("call_{index}_{n}"),
            name,
            arguments,
        });
    }
    Ok(AgentTurn::Calls(calls))
}

/// Splits `text` into `parts` pieces of about the same length, on character
/// boundaries; empty pieces are left out.
fn split_pieces(text: &str, parts: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let size = chars.len().div_ceil(parts.max(1)).max(1);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

fn agent_chat(request: &Recorded, body: &Value) -> Reply {
    let turn = match agent_turn(body) {
        Ok(turn) => turn,
        Err(reply) => return reply,
    };
    let model = "mock-agent";
    let id = format!(
        "chatcmpl-mockagent{}",
        AGENT_ANSWERS.fetch_add(1, Ordering::Relaxed)
    );
    let created = 1_727_346_182u64;
    let usage = json!({"prompt_tokens": AGENT_PROMPT_TOKENS,
        "completion_tokens": AGENT_COMPLETION_TOKENS,
        "total_tokens": AGENT_PROMPT_TOKENS + AGENT_COMPLETION_TOKENS,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0}});
    let finish = match turn {
        AgentTurn::Text(_) => "stop",
        AgentTurn::Calls(_) => "tool_calls",
    };
    if body["stream"] != json!(true) {
        let message = match &turn {
            AgentTurn::Text(text) => {
                json!({"role": "assistant", "content": text, "refusal": null, "annotations": []})
            }
            AgentTurn::Calls(calls) => {
                let calls: Vec<Value> = calls
                    .iter()
                    .map(|c| {
                        json!({"id": c.id, "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments}})
                    })
                    .collect();
                json!({"role": "assistant", "content": null, "refusal": null,
                    "tool_calls": calls, "annotations": []})
            }
        };
        return json_reply(
            200,
            json!({"id": id, "object": "chat.completion", "created": created, "model": model,
                "system_fingerprint": "fp_mock",
                "choices": [{"index": 0, "message": message, "logprobs": null,
                    "finish_reason": finish}],
                "usage": usage, "service_tier": "default"}),
        );
    }
    let include_usage = body["stream_options"]["include_usage"] == json!(true);
    let chunk = |delta: Value, finish: Value| {
        let mut c = json!({"id": id, "object": "chat.completion.chunk", "created": created,
            "model": model, "service_tier": "default", "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        if include_usage {
            c["usage"] = Value::Null;
        }
        format!("data: {c}\n\n")
    };
    let mut events = Vec::new();
    match &turn {
        AgentTurn::Text(text) => {
            events.push(chunk(
                json!({"role": "assistant", "content": "", "refusal": null}),
                Value::Null,
            ));
            for piece in text.split_inclusive(' ') {
                events.push(chunk(json!({"content": piece}), Value::Null));
            }
        }
        AgentTurn::Calls(calls) => {
            for (index, call) in calls.iter().enumerate() {
                let opening = json!({"index": index, "id": call.id, "type": "function",
                    "function": {"name": call.name, "arguments": ""}});
                let delta = if index == 0 {
                    json!({"role": "assistant", "content": null, "tool_calls": [opening],
                        "refusal": null})
                } else {
                    json!({"tool_calls": [opening]})
                };
                events.push(chunk(delta, Value::Null));
                for piece in split_pieces(&call.arguments, 3) {
                    events.push(chunk(
                        json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}),
                        Value::Null,
                    ));
                }
            }
        }
    }
    events.push(chunk(json!({}), json!(finish)));
    if include_usage {
        let c = json!({"id": id, "object": "chat.completion.chunk", "created": created,
            "model": model, "service_tier": "default", "system_fingerprint": "fp_mock",
            "choices": [], "usage": usage});
        events.push(format!("data: {c}\n\n"));
    }
    events.push("data: [DONE]\n\n".to_owned());
    sse_reply(request, events)
}

/// A Responses answer: the `completed` response object, or with `stream: true`
/// its events. `response(status, output, usage)` builds the response object.
fn responses_reply(
    request: &Recorded,
    body: &Value,
    response: impl Fn(&str, Value, Value) -> Value,
    output: &[Value],
    usage: Value,
    text_pieces: impl Fn(&str) -> Vec<String>,
) -> Reply {
    if body["stream"] != json!(true) {
        return json_reply(200, response("completed", json!(output), usage));
    }
    let events = response_events(
        response("in_progress", json!([]), Value::Null),
        output,
        response("completed", json!(output), usage),
        text_pieces,
    );
    sse_reply(request, events)
}

/// The event stream of a Responses answer, in the API's order: `created`,
/// `in_progress`, each output item (a message's text in the pieces `text_pieces`
/// cuts it into, a function call's arguments in three pieces), `completed`;
/// `sequence_number` from 0.
fn response_events(
    in_progress: Value,
    output: &[Value],
    completed: Value,
    text_pieces: impl Fn(&str) -> Vec<String>,
) -> Vec<String> {
    let mut seq = 0u64;
    let mut events = Vec::new();
    let mut push = |kind: &str, fields: Value| {
        // `type` and `sequence_number` first, as the API writes them.
        let mut data = json!({"type": kind, "sequence_number": seq});
        if let (Some(map), Value::Object(extra)) = (data.as_object_mut(), fields) {
            map.extend(extra);
        }
        seq += 1;
        events.push(format!("event: {kind}\ndata: {data}\n\n"));
    };
    push("response.created", json!({"response": in_progress.clone()}));
    push("response.in_progress", json!({"response": in_progress}));
    for (index, item) in output.iter().enumerate() {
        let item_id = item["id"].clone();
        let mut added = item.clone();
        match item["type"].as_str() {
            Some("message") => {
                added["status"] = json!("in_progress");
                added["content"] = json!([]);
                push(
                    "response.output_item.added",
                    json!({"output_index": index, "item": added}),
                );
                let text = item["content"][0]["text"].as_str().unwrap_or_default();
                push(
                    "response.content_part.added",
                    json!({"item_id": item_id, "output_index": index,
                    "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}),
                );
                for piece in text_pieces(text) {
                    push(
                        "response.output_text.delta",
                        json!({"item_id": item_id, "output_index": index,
                        "content_index": 0, "delta": piece, "logprobs": []}),
                    );
                }
                push(
                    "response.output_text.done",
                    json!({"item_id": item_id, "output_index": index,
                    "content_index": 0, "text": text, "logprobs": []}),
                );
                push(
                    "response.content_part.done",
                    json!({"item_id": item_id, "output_index": index,
                    "content_index": 0, "part": {"type": "output_text", "text": text, "annotations": []}}),
                );
            }
            Some("function_call") => {
                added["status"] = json!("in_progress");
                added["arguments"] = json!("");
                push(
                    "response.output_item.added",
                    json!({"output_index": index, "item": added}),
                );
                let arguments = item["arguments"].as_str().unwrap_or_default();
                for piece in split_pieces(arguments, 3) {
                    push(
                        "response.function_call_arguments.delta",
                        json!({"item_id": item_id, "output_index": index, "delta": piece}),
                    );
                }
                push(
                    "response.function_call_arguments.done",
                    json!({"item_id": item_id, "output_index": index, "arguments": arguments}),
                );
            }
            _ => push(
                "response.output_item.added",
                json!({"output_index": index, "item": added}),
            ),
        }
        push(
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        );
    }
    push("response.completed", json!({"response": completed}));
    events
}

fn responses(request: &Recorded, body: &Value) -> Reply {
    let model = body["model"].as_str().unwrap_or("gpt-4o-mock").to_owned();
    let tool_call = header_num(request, "x-mock-tool-call", 0) == 1;
    let n = header_num(request, "x-mock-chunks", 4);
    let text = words(n).concat();
    let message = json!({"id": "msg_mock1", "type": "message", "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}]});
    let call = json!({"id": "fc_mock1", "type": "function_call", "status": "completed",
        "arguments": "{\"city\":\"Paris\"}", "call_id": "call_mock_weather", "name": "get_weather"});
    let mut output = vec![message.clone()];
    if tool_call {
        output.push(call.clone());
    }
    let response = |status: &str, output: Value, usage: Value| {
        json!({"id": "resp_mock1", "object": "response", "created_at": 1_741_294_021u64, "status": status,
            "error": null, "incomplete_details": null, "instructions": null, "max_output_tokens": null,
            "model": model, "output": output, "parallel_tool_calls": true, "previous_response_id": null,
            "store": true, "temperature": 1.0, "tool_choice": "auto", "tools": [], "top_p": 1.0,
            "truncation": "disabled", "usage": usage, "metadata": {}})
    };
    let usage = json!({"input_tokens": 12, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": n, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 12 + n});
    responses_reply(request, body, response, &output, usage, |_| words(n))
}

/// What the `mock-agent` model stored of each response (`store` not false): the
/// whole conversation up to and including its output, for `previous_response_id`.
static STORED: Mutex<Vec<(String, Vec<Value>)>> = Mutex::new(Vec::new());

/// The response objects of the `mock-agent` model that were stored, by id, as
/// they were returned, for `GET /v1/responses/{id}`.
static RESPONSE_OBJECTS: Mutex<Vec<(String, Value)>> = Mutex::new(Vec::new());

/// The reasoning item each `mock-agent` function call belongs to, by call item id.
static REASONING_OF: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// The input items of a Responses request: a string is one user message.
fn request_items(body: &Value) -> Vec<Value> {
    match &body["input"] {
        Value::String(text) => vec![json!({"type": "message", "role": "user", "content": text})],
        Value::Array(items) => items.clone(),
        _ => Vec::new(),
    }
}

fn item_type(item: &Value) -> &str {
    item["type"].as_str().unwrap_or("message")
}

/// Checks a Responses conversation the way the API does: every call has its
/// output, every output its call, and a call that was made after reasoning comes
/// with that reasoning item.
fn check_responses_pairing(items: &[Value]) -> Result<(), Reply> {
    let reasoning = REASONING_OF.lock().unwrap().clone();
    let mut calls: Vec<&str> = Vec::new();
    let mut seen_ids: Vec<&str> = Vec::new();
    for item in items {
        match item_type(item) {
            "function_call" | "custom_tool_call" => {
                if let Some(id) = item["id"].as_str()
                    && let Some((_, rs)) = reasoning.iter().find(|(fc, _)| fc == id)
                    && !seen_ids.contains(&rs.as_str())
                {
                    return Err(invalid_request(
                        &format!(
                            "Item '{id}' of type 'function_call' was provided without its required 'reasoning' item: '{rs}'."
                        ),
                        json!("input"),
                    ));
                }
                calls.push(item["call_id"].as_str().unwrap_or_default());
            }
            "function_call_output" | "custom_tool_call_output" => {
                let id = item["call_id"].as_str().unwrap_or_default();
                if !calls.contains(&id) {
                    return Err(invalid_request(
                        &format!("No tool call found for function call output with call_id {id}."),
                        json!("input"),
                    ));
                }
            }
            _ => {}
        }
        if let Some(id) = item["id"].as_str() {
            seen_ids.push(id);
        }
    }
    for call in calls {
        let answered = items.iter().any(|i| {
            matches!(
                item_type(i),
                "function_call_output" | "custom_tool_call_output"
            ) && i["call_id"] == call
        });
        if !answered {
            return Err(invalid_request(
                &format!("No tool output found for function call {call}."),
                json!("input"),
            ));
        }
    }
    Ok(())
}

/// The `mock-agent` model on the Responses API (see the module documentation).
fn agent_responses(request: &Recorded, body: &Value) -> Reply {
    let mut context = Vec::new();
    if let Some(previous) = body["previous_response_id"].as_str() {
        let stored = STORED.lock().unwrap();
        match stored.iter().find(|(id, _)| id == previous) {
            Some((_, items)) => context.extend(items.iter().cloned()),
            None => {
                return json_reply(
                    400,
                    json!({"error": {"message": format!("Previous response with id '{previous}' not found."),
                        "type": "invalid_request_error", "param": "previous_response_id", "code": "previous_response_not_found"}}),
                );
            }
        }
    }
    context.extend(request_items(body));
    if let Err(reply) = check_responses_pairing(&context) {
        return reply;
    }
    let n = AGENT_ANSWERS.fetch_add(1, Ordering::Relaxed);
    let trailing: Vec<String> = context
        .iter()
        .rev()
        .take_while(|i| {
            matches!(
                item_type(i),
                "function_call_output" | "custom_tool_call_output"
            )
        })
        .map(|i| content_text(&i["output"]))
        .collect();
    let mut output = Vec::new();
    let reasoning_id = format!("rs_mockagent{n}");
    if !body["reasoning"].is_null() {
        output.push(
            json!({"id": reasoning_id, "type": "reasoning", "summary": [],
            "encrypted_content": format!("gAAAAB-mock-opaque-{n}=")}),
        );
    }
    if !trailing.is_empty() {
        let results: Vec<String> = trailing.into_iter().rev().collect();
        let text = format!("Tool results: {}", results.join(" | "));
        output.push(json!({"id": format!("msg_mockagent{n}"), "type": "message", "status": "completed",
            "role": "assistant", "content": [{"type": "output_text", "text": text, "annotations": []}]}));
    } else {
        let user = context
            .iter()
            .rev()
            .find(|i| i["role"] == "user")
            .map(|i| content_text(&i["content"]))
            .unwrap_or_default();
        let wanted = match directives(&user) {
            Ok(w) => w,
            Err(e) => return invalid_request(&e, json!("input")),
        };
        if wanted.is_empty() {
            output.push(json!({"id": format!("msg_mockagent{n}"), "type": "message", "status": "completed",
                "role": "assistant", "content": [{"type": "output_text", "text": "Hello from the mock", "annotations": []}]}));
        }
        let declared = declared_tools(body);
        for (index, (name, arguments)) in wanted.into_iter().enumerate() {
            if !declared.contains(&name) {
                return invalid_request(
                    &format!(
                        "mock-agent: the user asked for a call to {name:?}, which is not among the request's tools ({})",
                        declared.join(", ")
                    ),
                    json!("tools"),
                );
            }
            let c = AGENT_CALLS.fetch_add(1, Ordering::Relaxed);
            let fc = format!("fc_mockagent{c}");
            if !body["reasoning"].is_null() {
                REASONING_OF
                    .lock()
                    .unwrap()
                    .push((fc.clone(), reasoning_id.clone()));
            }
            output.push(
                json!({"id": fc, "type": "function_call", "status": "completed",
                "arguments": arguments, "call_id": format!("call_{index}_{c}"), "name": name}),
            );
        }
    }
    let id = format!("resp_mockagent{n}");
    if body["store"] != json!(false) {
        let mut items = context;
        items.extend(output.iter().cloned());
        STORED.lock().unwrap().push((id.clone(), items));
    }
    let usage = json!({"input_tokens": AGENT_PROMPT_TOKENS, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": AGENT_COMPLETION_TOKENS, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": AGENT_PROMPT_TOKENS + AGENT_COMPLETION_TOKENS});
    let response = |status: &str, output: Value, usage: Value| {
        json!({"id": id, "object": "response", "created_at": 1_741_294_021u64 + n, "status": status,
            "background": false, "error": null, "incomplete_details": null, "instructions": body["instructions"],
            "max_output_tokens": null, "model": "mock-agent", "output": output, "parallel_tool_calls": true,
            "previous_response_id": body["previous_response_id"], "reasoning": {"effort": null, "summary": null},
            "store": body["store"] != json!(false), "temperature": 1.0, "text": {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice").cloned().unwrap_or(json!("auto")),
            "tools": body.get("tools").cloned().unwrap_or(json!([])), "top_p": 1.0,
            "truncation": "disabled", "usage": usage, "metadata": {}})
    };
    if body["store"] != json!(false) {
        let object = response("completed", json!(output), usage.clone());
        RESPONSE_OBJECTS.lock().unwrap().push((id.clone(), object));
    }
    responses_reply(request, body, response, &output, usage, |text| {
        text.split_inclusive(' ').map(str::to_owned).collect()
    })
}

/// `GET /v1/responses/{id}`: a stored `mock-agent` response as it was returned,
/// or the API's 404.
fn stored_response(id: &str) -> Reply {
    let stored = RESPONSE_OBJECTS.lock().unwrap();
    match stored.iter().find(|(stored_id, _)| stored_id == id) {
        Some((_, object)) => json_reply(200, object.clone()),
        None => error_reply(
            404,
            &format!("No response found with id '{id}'."),
            "invalid_request_error",
            Value::Null,
        ),
    }
}

/// What a request to one of the plain models is answered by: its path, model,
/// `stream`, `stream_options.include_usage` and the `x-mock-*` headers.
type PlainKey = (String, String, bool, bool, [u64; 4]);

/// The plain models' answers, by what they depend on: they are the same for every
/// request alike, so the benchmark's floor builds each once instead of per request
/// (a streamed Responses answer is about a million instructions to build, as much
/// as a governed proxy spends on it). At most `PLAIN_KEPT` kinds are kept.
static PLAIN: Mutex<Vec<(PlainKey, Reply)>> = Mutex::new(Vec::new());
const PLAIN_KEPT: usize = 64;

/// The top-level fields the plain models read; the rest of the body is checked to
/// be JSON and skipped, not built into a tree.
#[derive(serde::Deserialize)]
struct PlainRequest {
    model: Option<String>,
    #[serde(default)]
    stream: Value,
    #[serde(default)]
    stream_options: Value,
}

/// The answer to a plain model's completion, built once per kind; `None` for
/// anything else (the other models, other paths, a body that is not a JSON object
/// with a string `model`), which [`respond`] reads in full.
fn plain(request: &Recorded) -> Option<Reply> {
    let path = request.target.split('?').next().unwrap_or_default();
    if request.method != "POST" || !matches!(path, "/v1/chat/completions" | "/v1/responses") {
        return None;
    }
    let top: PlainRequest = serde_json::from_slice(&request.body).ok()?;
    let model = top.model?;
    if matches!(
        model.as_str(),
        "mock-agent" | "mock-429" | "mock-hang" | "mock-500"
    ) {
        return None;
    }
    let stream = top.stream == json!(true);
    let include_usage = top.stream_options["include_usage"] == json!(true);
    let headers = [
        "x-mock-tool-call",
        "x-mock-chunks",
        "x-mock-first-ms",
        "x-mock-interval-ms",
    ]
    .map(|name| header_num(request, name, u64::MAX));
    let key: PlainKey = (path.to_owned(), model, stream, include_usage, headers);
    let mut kept = PLAIN.lock().unwrap();
    if let Some((_, reply)) = kept.iter().find(|(k, _)| *k == key) {
        return reply.try_clone();
    }
    let body = json!({"model": key.1, "stream": stream, "stream_options": {"include_usage": include_usage}});
    let reply = if path == "/v1/responses" {
        responses(request, &body)
    } else {
        chat(request, &body)
    };
    if kept.len() < PLAIN_KEPT
        && let Some(again) = reply.try_clone()
    {
        kept.push((key, again));
    }
    Some(reply)
}

fn respond(request: &Recorded) -> Reply {
    if let Some(reply) = plain(request) {
        return reply;
    }
    let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
    let model = body["model"].as_str().unwrap_or_default();
    if model == "mock-429" {
        return error_reply(
            429,
            "Rate limit reached for mock-429",
            "requests",
            json!("rate_limit_exceeded"),
        );
    }
    if model == "mock-hang" {
        return Reply::Hang;
    }
    if model == "mock-500" {
        return error_reply(
            500,
            "The server had an error while processing your request.",
            "server_error",
            Value::Null,
        );
    }
    let path = request.target.split('?').next().unwrap_or_default();
    match (request.method.as_str(), path) {
        ("GET", "/v1/models") => json_reply(
            200,
            json!({"object": "list", "data": [
                {"id": "gpt-4o-mock", "object": "model", "created": 1_715_367_049u64, "owned_by": "system"},
                {"id": "gpt-4o-mini-mock", "object": "model", "created": 1_721_172_741u64, "owned_by": "system"}]}),
        ),
        ("POST", "/v1/chat/completions") if model == "mock-agent" => agent_chat(request, &body),
        ("POST", "/v1/chat/completions") => chat(request, &body),
        ("POST", "/v1/responses") if model == "mock-agent" => agent_responses(request, &body),
        ("POST", "/v1/responses") => responses(request, &body),
        ("GET", path)
            if path
                .strip_prefix("/v1/responses/")
                .is_some_and(|id| !id.is_empty() && !id.contains('/')) =>
        {
            stored_response(&path["/v1/responses/".len()..])
        }
        _ => error_reply(
            404,
            &format!("Invalid URL ({} {path})", request.method),
            "invalid_request_error",
            Value::Null,
        ),
    }
}

fn main() {
    let mut listen = "127.0.0.1:0".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().expect("--listen needs an address"),
            other => panic!("unknown argument {other}"),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen).await.unwrap();
        let mock = MockUpstream::serve(listener, Arc::new(respond), false);
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}", mock.url()).unwrap();
        out.flush().unwrap();
        drop(out);
        std::future::pending::<()>().await;
    });
}
