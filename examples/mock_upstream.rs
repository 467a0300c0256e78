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
//!   `x-mock-first-ms` and `x-mock-interval-ms` the pause before the first event
//!   and between events.
//! - Anything else: 404 in OpenAI's error shape.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

#[path = "../tests/common/mock.rs"]
mod mock;

use std::io::Write;
use std::sync::Arc;
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
    if body["stream"] != json!(true) {
        return json_reply(200, response("completed", json!(output), usage));
    }
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
    push(
        "response.created",
        json!({"response": response("in_progress", json!([]), Value::Null)}),
    );
    push(
        "response.in_progress",
        json!({"response": response("in_progress", json!([]), Value::Null)}),
    );
    let mut added = message.clone();
    added["status"] = json!("in_progress");
    added["content"] = json!([]);
    push(
        "response.output_item.added",
        json!({"output_index": 0, "item": added}),
    );
    push(
        "response.content_part.added",
        json!({"item_id": "msg_mock1", "output_index": 0, "content_index": 0,
            "part": {"type": "output_text", "text": "", "annotations": []}}),
    );
    for word in words(n) {
        push(
            "response.output_text.delta",
            json!({"item_id": "msg_mock1", "output_index": 0, "content_index": 0, "delta": word, "logprobs": []}),
        );
    }
    push(
        "response.output_text.done",
        json!({"item_id": "msg_mock1", "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
    );
    push(
        "response.content_part.done",
        json!({"item_id": "msg_mock1", "output_index": 0, "content_index": 0,
            "part": {"type": "output_text", "text": text, "annotations": []}}),
    );
    push(
        "response.output_item.done",
        json!({"output_index": 0, "item": message}),
    );
    if tool_call {
        let mut added = call.clone();
        added["status"] = json!("in_progress");
        added["arguments"] = json!("");
        push(
            "response.output_item.added",
            json!({"output_index": 1, "item": added}),
        );
        for piece in ["{\"city\"", ":\"Par", "is\"}"] {
            push(
                "response.function_call_arguments.delta",
                json!({"item_id": "fc_mock1", "output_index": 1, "delta": piece}),
            );
        }
        push(
            "response.function_call_arguments.done",
            json!({"item_id": "fc_mock1", "output_index": 1, "arguments": "{\"city\":\"Paris\"}"}),
        );
        push(
            "response.output_item.done",
            json!({"output_index": 1, "item": call}),
        );
    }
    push(
        "response.completed",
        json!({"response": response("completed", json!(output), usage)}),
    );
    sse_reply(request, events)
}

fn respond(request: &Recorded) -> Reply {
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
        ("POST", "/v1/chat/completions") => chat(request, &body),
        ("POST", "/v1/responses") => responses(request, &body),
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
