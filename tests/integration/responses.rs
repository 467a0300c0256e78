//! Governed Responses API through the real server, plain and streaming: the mock
//! upstream answers round by round in the real wire format (output items,
//! `sequence_number`ed events), and each test checks what the client receives
//! (one response, one id, hidden calls nowhere, contiguous numbering, one
//! terminal event), what the upstream was sent in later rounds and follow-ups
//! (every call answered), and the receipt log (which must verify).

use bytes::Bytes;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::mock::{MockUpstream, Reply};
use crate::common::{WAIT, client, read_to_end, shared_fixtures};
use crate::governance::{
    ADMIN_TOKEN, Gov, POLICY, TIGHT_BUDGET, approvals, assert_log_verifies, decisions,
    decisions_and_reasons, failing_then_hanging_tool, logged_receipts, oversized_arguments, start,
    start_with_weather, token, tokens_gateway,
};

/// A function call item.
fn call(n: u32, name: &str, arguments: &str) -> Value {
    json!({"id": format!("fc_{n}"), "type": "function_call", "status": "completed",
        "arguments": arguments, "call_id": format!("call_{n}"), "name": name})
}

fn message(id: &str, text: &str) -> Value {
    json!({"id": id, "type": "message", "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}]})
}

fn reasoning(id: &str) -> Value {
    json!({"id": id, "type": "reasoning", "summary": [],
        "encrypted_content": "gAAAAB-opaque+/=\u{e9}"})
}

/// A response object with this id and output; 10 input and 5 output tokens.
fn response(id: &str, output: Vec<Value>) -> Value {
    json!({"id": id, "object": "response", "created_at": 1_741_294_021, "status": "completed",
        "error": null, "incomplete_details": null, "instructions": null, "model": "gpt-4o",
        "output": output, "parallel_tool_calls": true, "previous_response_id": null,
        "store": true, "tool_choice": "auto", "tools": [],
        "usage": {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 15},
        "metadata": {}})
}

/// A client request declaring the client's tools `lookup`, `shell_exec`, `deploy`.
fn request() -> Value {
    let tool = |name: &str| json!({"type": "function", "name": name, "parameters": {"type": "object"}, "strict": false});
    json!({"model": "gpt-4o", "input": [{"role": "user", "content": "go"}],
        "tools": [tool("lookup"), tool("shell_exec"), tool("deploy")]})
}

async fn post(g: &Gov, body: &Value) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let response = client()
        .post(format!("{}/v1/responses", g.proxy.url))
        .bearer_auth("sk-test-key")
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The `tools` the upstream was last sent (the client's and the injected ones).
fn sent_tools(g: &Gov) -> Value {
    g.sent().last().unwrap()["tools"].clone()
}

fn script(g: &Gov, answers: Vec<Value>) {
    for answer in answers {
        g.upstream.push(Reply::json(answer.to_string()));
    }
}

fn output_types(response: &Value) -> Vec<String> {
    response["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap().to_owned())
        .collect()
}

/// The `(call_id, output)` of every call output in a request's input.
fn outputs(request: &Value) -> Vec<(String, String)> {
    request["input"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "function_call_output")
        .map(|i| {
            (
                i["call_id"].as_str().unwrap().to_owned(),
                i["output"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Checks what a stateless request's input must satisfy upstream: every call
/// answered after it, every output answering an earlier call.
fn assert_paired(request: &Value) {
    let input = request["input"].as_array().unwrap();
    let mut calls: Vec<&str> = Vec::new();
    for item in input {
        match item["type"].as_str() {
            Some("function_call") => calls.push(item["call_id"].as_str().unwrap()),
            Some("function_call_output") => {
                let id = item["call_id"].as_str().unwrap();
                assert!(calls.contains(&id), "an output without its call: {id}");
            }
            _ => {}
        }
    }
    for id in calls {
        assert!(
            input
                .iter()
                .any(|i| i["type"] == "function_call_output" && i["call_id"] == id),
            "call {id} unanswered in {request}"
        );
    }
}

#[tokio::test]
async fn an_allowed_client_call_leaves_as_the_upstream_sent_it() {
    let g = start(POLICY, "", None).await;
    let answer = response("resp_1", vec![call(1, "lookup", r#"{"q":"x"}"#)]);
    script(&g, vec![answer.clone()]);
    let (status, headers, out) = post(&g, &request()).await;
    assert_eq!(status, 200);
    assert_eq!(out, answer);
    let receipts = g.proxy.receipt_lines();
    assert_eq!(receipts.len(), 1);
    assert_eq!(receipts[0]["decision"], "allow");
    assert_eq!(receipts[0]["surface"], "responses");
    assert_eq!(receipts[0]["action"]["tool_call_id"], "call_1");
    assert_eq!(
        receipts[0]["request_id"],
        headers["x-tollgate-request-id"].to_str().unwrap()
    );
    g.proxy.verify_receipts();
}

/// A response whose first round is a denied call (`resp_1`, `shell_exec`) and
/// whose second answers in text (`resp_2`), posted; the client's 200 answer.
async fn denied_then_answered(g: &Gov) -> Value {
    script(
        g,
        vec![
            response("resp_1", vec![call(1, "shell_exec", r#"{"cmd":"ls"}"#)]),
            response("resp_2", vec![message("msg_2", "I may not run that.")]),
        ],
    );
    let (status, _, out) = post(g, &request()).await;
    assert_eq!(status, 200);
    out
}

#[tokio::test]
async fn a_denied_call_is_answered_to_the_model_from_the_stored_response() {
    let g = start(POLICY, "", None).await;
    let out = denied_then_answered(&g).await;
    assert_eq!(
        out["id"], "resp_1",
        "the client knows the response by one id"
    );
    assert_eq!(output_types(&out), ["message"]);
    assert_eq!(
        out["output"][0]["content"][0]["text"],
        "I may not run that."
    );
    assert_eq!(out["usage"]["input_tokens"], 20);
    assert_eq!(out["usage"]["total_tokens"], 30);
    let sent = g.sent();
    assert_eq!(sent.len(), 2);
    // The second round continues from the first, with the denial as the output.
    assert_eq!(sent[1]["previous_response_id"], "resp_1");
    let answers = outputs(&sent[1]);
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].0, "call_1");
    let denial: Value = serde_json::from_str(&answers[0].1).unwrap();
    assert_eq!(denial["error"]["type"], "tool_call_denied");
    assert_eq!(denial["error"]["code"], "tool_access.block");
    let receipts = g.proxy.receipt_lines();
    assert_eq!(receipts[0]["decision"], "deny");
    assert_eq!(denial["error"]["receipt_id"], receipts[0]["receipt_id"]);
    g.proxy.verify_receipts();
}

/// `GET /v1/responses/{id}` through the proxy: status, `content-type` and body.
async fn fetch(g: &Gov, path: &str) -> (StatusCode, String, Value) {
    fetch_as(g, path, Some("sk-test-key")).await
}

/// [`fetch`] with another API key, or none.
async fn fetch_as(g: &Gov, path: &str, key: Option<&str>) -> (StatusCode, String, Value) {
    let (status, content_type, text) = fetch_text(g, path, key).await;
    (
        status,
        content_type,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// [`fetch_as`], the body as it came.
async fn fetch_text(g: &Gov, path: &str, key: Option<&str>) -> (StatusCode, String, String) {
    let mut request = client().get(format!("{}/v1/responses/{path}", g.proxy.url));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert!(response.headers().contains_key("x-tollgate-request-id"));
    (status, content_type, response.text().await.unwrap())
}

#[tokio::test]
async fn a_response_fetched_by_id_is_the_one_the_client_was_given() {
    let g = start(POLICY, "", None).await;
    let given = denied_then_answered(&g).await;
    assert_eq!(g.upstream.received().len(), 2);
    // The upstream holds `resp_1` as the first round, with the denied call in
    // it: the fetch is answered from what the client was given instead.
    let (status, content_type, fetched) = fetch(&g, "resp_1").await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "application/json");
    assert_eq!(fetched, given);
    assert!(!fetched.to_string().contains("shell_exec"));
    // Resuming it as a stream cannot be answered from memory: refused, never
    // relayed.
    let (status, _, refused) = fetch(&g, "resp_1?stream=true&starting_after=3").await;
    assert_eq!(status, 400);
    assert_eq!(refused["error"]["code"], "unsupported_parameter");
    assert_eq!(
        g.upstream.received().len(),
        2,
        "nothing was fetched upstream"
    );
    // A response tollgate did not change, every other path under the id, and
    // the response asked for with another key or none (the remembered one is
    // that key's alone) are the upstream's to answer.
    for (path, key) in [
        ("resp_other", Some("sk-test-key")),
        ("resp_1/input_items", Some("sk-test-key")),
        ("resp_1", Some("sk-someone-else")),
        ("resp_1", None),
    ] {
        g.upstream.push(Reply::json(
            r#"{"id":"upstream's own","object":"response"}"#,
        ));
        let (status, _, relayed) = fetch_as(&g, path, key).await;
        assert_eq!(status, 200);
        assert_eq!(relayed["id"], "upstream's own");
        let last = g.upstream.received().pop().unwrap();
        assert_eq!(last.method, http::Method::GET);
        assert_eq!(last.target, format!("/v1/responses/{path}"));
    }
    g.proxy.verify_receipts();
}

#[tokio::test]
async fn a_response_larger_than_remember_bytes_is_not_remembered() {
    // The denied call's arguments alone are over the 64 KiB bound.
    let g = start(POLICY, "remember_bytes = 65536", None).await;
    let big = json!({"cmd": "x".repeat(70 * 1024)}).to_string();
    script(
        &g,
        vec![
            response("resp_1", vec![call(1, "shell_exec", &big)]),
            response("resp_2", vec![message("msg_2", "I may not run that.")]),
        ],
    );
    let (status, _, out) = post(&g, &request()).await;
    assert_eq!(status, 200);
    assert_eq!(output_types(&out), ["message"]);
    // Not remembered: the fetch goes upstream, as for a forgotten response.
    g.upstream.push(Reply::json(
        r#"{"id":"resp_1","object":"response","output":[]}"#,
    ));
    let (status, _, fetched) = fetch(&g, "resp_1").await;
    assert_eq!(status, 200);
    assert_ne!(fetched, out);
    let last = g.upstream.received().pop().unwrap();
    assert_eq!(last.method, http::Method::GET);
    assert_eq!(last.target, "/v1/responses/resp_1");
    g.proxy.verify_receipts();
}

#[tokio::test]
async fn a_streamed_response_fetched_by_id_is_the_one_the_stream_ended_with() {
    let g = start_with_weather(POLICY).await;
    push_weather_round(&g);
    let mut r2 = Sse::start("resp_2");
    let m = r2.message(0, "msg_2", &["18 C in Paris."]);
    g.upstream.push(Reply::sse(r2.completed("resp_2", vec![m])));
    let got = stream(&g, request()).await;
    got.assert_valid();
    let given = got.terminal()["response"].clone();
    assert_eq!(given["id"], "resp_1");
    let (status, _, fetched) = fetch(&g, "resp_1").await;
    assert_eq!(status, 200);
    assert_eq!(fetched, given);
    assert!(!fetched.to_string().contains("weather__current"));
    assert_eq!(g.upstream.received().len(), 2);
}

#[tokio::test]
async fn a_response_fetched_upstream_lists_only_the_tools_the_client_sent() {
    let g = start_with_weather(POLICY).await;
    // A response tollgate did not need to change: its object upstream lists the
    // request's tools, the governed one tollgate added among them.
    let stored = json!({"id": "resp_9", "object": "response", "status": "completed",
        "tools": [
            {"type": "function", "name": "lookup", "parameters": {"type": "object"}, "strict": true},
            {"type": "function", "name": "weather__current", "parameters": {"type": "object"}, "strict": false},
            {"type": "web_search"},
        ],
        "output": [{"type": "message", "id": "msg_9", "role": "assistant",
            "content": [{"type": "output_text", "text": "Hello.", "annotations": []}]}]});
    g.upstream.push(Reply::json(stored.to_string()));
    let response = client()
        .get(format!(
            "{}/v1/responses/resp_9?include[]=reasoning.encrypted_content",
            g.proxy.url
        ))
        .bearer_auth("sk-test-key")
        .header("accept-encoding", "gzip, br")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let fetched: Value = response.json().await.unwrap();
    let mut expected = stored.clone();
    expected["tools"].as_array_mut().unwrap().remove(1);
    assert_eq!(fetched, expected);
    let last = g.upstream.received().pop().unwrap();
    assert_eq!(last.method, http::Method::GET);
    assert_eq!(
        last.target,
        "/v1/responses/resp_9?include[]=reasoning.encrypted_content"
    );
    assert_eq!(last.headers["authorization"], "Bearer sk-test-key");
    assert!(
        !last.headers.contains_key("accept-encoding"),
        "the answer is read, so it is asked for uncompressed"
    );
    // Without governed tools in it, and on an error, the upstream's bytes.
    let plain = r#"{"id":"resp_8","object":"response","tools":[{"type":"web_search"}]}"#;
    g.upstream.push(Reply::json(plain));
    let (_, _, text) = fetch_text(&g, "resp_8", Some("sk-test-key")).await;
    assert_eq!(text, plain);
    let missing = r#"{"error":{"message":"No response found with id 'resp_7'.","type":"invalid_request_error","param":null,"code":null}}"#;
    g.upstream.push(Reply::Full {
        status: 404,
        headers: vec![("content-type".into(), "application/json".into())],
        body: missing.into(),
    });
    let (status, _, text) = fetch_text(&g, "resp_7", Some("sk-test-key")).await;
    assert_eq!(status, 404);
    assert_eq!(text, missing);
    // Resuming a stream is relayed as it comes.
    g.upstream.push(Reply::json(stored.to_string()));
    let (status, _, resumed) = fetch(&g, "resp_9?stream=true").await;
    assert_eq!(status, 200);
    assert_eq!(resumed, stored);
}

#[tokio::test]
async fn a_governed_tool_is_injected_flat_and_run_and_the_client_sees_the_answer() {
    let g = start_with_weather(POLICY).await;
    script(
        &g,
        vec![
            response(
                "resp_1",
                vec![call(1, "weather__current", r#"{"city":"Paris"}"#)],
            ),
            response("resp_2", vec![message("msg_2", "18 C in Paris.")]),
        ],
    );
    let (status, _, out) = post(&g, &request()).await;
    assert_eq!(status, 200);
    assert_eq!(output_types(&out), ["message"]);
    let sent = g.sent();
    let injected = sent[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "weather__current")
        .unwrap();
    assert_eq!(injected["type"], "function");
    // The schema is not closed, so it must not be sent as strict.
    assert_eq!(injected["strict"], false);
    assert_eq!(injected["parameters"]["required"], json!(["city"]));
    assert_eq!(
        outputs(&sent[1]),
        [("call_1".into(), r#"{"temp_c":18}"#.into())]
    );
    let tool_request: Value =
        serde_json::from_slice(&g.tool.as_ref().unwrap().received()[0].body).unwrap();
    assert_eq!(tool_request, json!({"city": "Paris"}));
    g.proxy.verify_receipts();
}

#[tokio::test]
async fn a_client_tool_with_a_governed_name_is_refused() {
    let tool = MockUpstream::start().await;
    let g = start(POLICY, "", Some(tool)).await;
    let mut body = request();
    body["tools"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "function", "name": "weather__current", "parameters": {}}));
    let (status, _, out) = post(&g, &body).await;
    assert_eq!(status, 400);
    assert_eq!(out["error"]["code"], "tool_name_conflict");
    assert!(g.upstream.received().is_empty());
}

#[tokio::test]
async fn parallel_calls_with_one_denied_and_both_follow_up_styles() {
    let g = start(POLICY, "", None).await;
    let turn = vec![
        reasoning("rs_1"),
        call(1, "lookup", r#"{"q":"x"}"#),
        call(2, "shell_exec", r#"{"cmd":"ls"}"#),
    ];
    // The client gets only its own call.
    script(&g, vec![response("resp_1", turn.clone())]);
    let (_, _, out) = post(&g, &request()).await;
    assert_eq!(out["id"], "resp_1");
    assert_eq!(output_types(&out), ["reasoning", "function_call"]);
    assert_eq!(
        out["output"][0],
        reasoning("rs_1"),
        "reasoning kept as it was"
    );
    assert_eq!(out["output"][1]["call_id"], "call_1");
    assert_eq!(g.proxy.receipt_lines().len(), 2);

    // Follow-up continuing from the response: the denial joins the client's output.
    script(&g, vec![response("resp_2", vec![message("msg_2", "done")])]);
    let client_output =
        json!({"type": "function_call_output", "call_id": "call_1", "output": "found"});
    let mut follow = request();
    follow["previous_response_id"] = json!("resp_1");
    follow["input"] = json!([client_output]);
    let (status, _, out) = post(&g, &follow).await;
    assert_eq!(status, 200, "{out}");
    let sent = g.sent();
    assert_eq!(sent[1]["previous_response_id"], "resp_1");
    let answered: Vec<String> = outputs(&sent[1]).into_iter().map(|(id, _)| id).collect();
    assert_eq!(answered, ["call_2", "call_1"]);

    // The same turn again, continued by replaying what the client was shown.
    script(&g, vec![response("resp_3", turn.clone())]);
    let (_, _, shown) = post(&g, &request()).await;
    script(&g, vec![response("resp_4", vec![message("msg_4", "done")])]);
    let mut replay = request();
    let input = replay["input"].as_array_mut().unwrap();
    input.extend(shown["output"].as_array().unwrap().iter().cloned());
    input.push(client_output);
    input.push(json!({"role": "user", "content": "thanks"}));
    let (status, _, _) = post(&g, &replay).await;
    assert_eq!(status, 200);
    let sent = g.sent();
    let last = &sent[3];
    assert!(last.get("previous_response_id").is_none());
    assert_paired(last);
    let kinds: Vec<String> = last["input"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            format!(
                "{}:{}",
                i["type"].as_str().unwrap_or("message"),
                i["call_id"].as_str().or(i["id"].as_str()).unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "message:",
            "reasoning:rs_1",
            "function_call:call_1",
            "function_call:call_2",
            "function_call_output:call_2",
            "function_call_output:call_1",
            "message:",
        ]
    );
    // The reasoning item goes back byte for byte.
    assert_eq!(last["input"][1], reasoning("rs_1"));
    g.proxy.verify_receipts();
}

#[tokio::test]
async fn without_store_a_round_is_continued_by_replaying_its_items() {
    let g = start(POLICY, "", None).await;
    script(
        &g,
        vec![
            response(
                "resp_1",
                vec![reasoning("rs_1"), call(1, "shell_exec", "{}")],
            ),
            response("resp_2", vec![message("msg_2", "ok")]),
        ],
    );
    let mut body = request();
    body["store"] = json!(false);
    body["input"] = json!("go");
    let (status, _, out) = post(&g, &body).await;
    assert_eq!(status, 200);
    assert_eq!(output_types(&out), ["reasoning", "message"]);
    let sent = g.sent();
    assert!(sent[1].get("previous_response_id").is_none());
    let input = sent[1]["input"].as_array().unwrap();
    assert_eq!(input[0]["content"], "go");
    assert_eq!(input[1], reasoning("rs_1"));
    assert_eq!(input[2]["call_id"], "call_1");
    assert_eq!(input[3]["type"], "function_call_output");
    assert_paired(&sent[1]);
}

#[tokio::test]
async fn a_previous_response_id_conversation_over_several_turns() {
    let g = start_with_weather(POLICY).await;
    // Turn 1: the governed tool, two rounds; the client knows it as resp_1.
    script(
        &g,
        vec![
            response(
                "resp_1",
                vec![call(1, "weather__current", r#"{"city":"Oslo"}"#)],
            ),
            response("resp_2", vec![message("msg_2", "18 C")]),
        ],
    );
    let (_, _, first) = post(&g, &request()).await;
    assert_eq!(first["id"], "resp_1");
    // Turn 2 continues from resp_1: upstream, that is resp_2. The upstream's
    // answer echoes what it was sent; the client reads back what it sent.
    let mut echoing = response("resp_3", vec![message("msg_3", "sure")]);
    echoing["previous_response_id"] = json!("resp_2");
    echoing["tools"] = sent_tools(&g);
    assert_eq!(echoing["tools"].as_array().unwrap().len(), 4);
    script(&g, vec![echoing]);
    let mut second = request();
    second["previous_response_id"] = json!("resp_1");
    second["input"] = json!("and tomorrow?");
    let (status, _, out) = post(&g, &second).await;
    assert_eq!(status, 200);
    assert_eq!(out["id"], "resp_3", "nothing hidden: the upstream's id");
    assert_eq!(out["previous_response_id"], "resp_1");
    assert_eq!(
        out["tools"],
        request()["tools"],
        "the governed tool is not echoed"
    );
    // Turn 3 continues from resp_3, which tollgate did not change.
    script(&g, vec![response("resp_4", vec![message("msg_4", "bye")])]);
    let mut third = request();
    third["previous_response_id"] = json!("resp_3");
    third["input"] = json!("thanks");
    post(&g, &third).await;
    let sent = g.sent();
    assert_eq!(sent.len(), 4);
    assert_eq!(sent[2]["previous_response_id"], "resp_2");
    assert_eq!(
        sent[2]["input"],
        json!("and tomorrow?"),
        "nothing pending to add"
    );
    assert_eq!(sent[3]["previous_response_id"], "resp_3");
    g.proxy.verify_receipts();
}

#[tokio::test]
async fn unknown_item_types_pass_and_max_rounds_ends_with_a_message() {
    let g = start(POLICY, "max_rounds = 2", None).await;
    let odd = json!({"id": "zz_1", "type": "holographic_call", "payload": {"x": [1, 2]}});
    script(
        &g,
        vec![
            response("resp_1", vec![odd.clone(), call(1, "shell_exec", "{}")]),
            response("resp_2", vec![call(2, "shell_exec", "{}")]),
        ],
    );
    let (status, _, out) = post(&g, &request()).await;
    assert_eq!(status, 200);
    assert_eq!(out["id"], "resp_1");
    assert_eq!(out["output"][0], odd);
    assert_eq!(output_types(&out), ["holographic_call", "message"]);
    let text = out["output"][1]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("after 2 rounds"), "{text}");
    assert_eq!(out["status"], "completed");
    let receipts = g.proxy.receipt_lines();
    assert_eq!(receipts.len(), 3);
    assert_eq!(receipts[2]["reason"]["code"], "max_rounds");
    assert_eq!(receipts[2]["surface"], "responses");
    // Continuing from it gives the upstream the output it never had.
    script(&g, vec![response("resp_3", vec![message("msg_3", "ok")])]);
    let mut follow = request();
    follow["previous_response_id"] = json!("resp_1");
    follow["input"] = json!([{"role": "user", "content": "stop"}]);
    post(&g, &follow).await;
    let sent = g.sent();
    assert_eq!(sent[2]["previous_response_id"], "resp_2");
    assert_eq!(outputs(&sent[2])[0].0, "call_2");
    g.proxy.verify_receipts();
}

// ----- streaming -----

/// Builds one round's event stream, numbered from 0.
#[derive(Default)]
struct Sse {
    seq: u64,
    events: Vec<Bytes>,
}

impl Sse {
    fn push(&mut self, kind: &str, fields: Value) {
        let mut data = json!({"type": kind, "sequence_number": self.seq});
        data.as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        self.seq += 1;
        self.events
            .push(Bytes::from(format!("event: {kind}\ndata: {data}\n\n")));
    }

    fn start(id: &str) -> Self {
        let mut sse = Self::default();
        let mut r = response(id, vec![]);
        r["status"] = json!("in_progress");
        r["usage"] = Value::Null;
        sse.push("response.created", json!({"response": r.clone()}));
        sse.push("response.in_progress", json!({"response": r}));
        sse
    }

    fn message(&mut self, index: u64, id: &str, parts: &[&str]) -> Value {
        let text: String = parts.concat();
        self.push("response.output_item.added", json!({"output_index": index,
            "item": {"id": id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}}));
        self.push(
            "response.content_part.added",
            json!({"item_id": id, "output_index": index,
            "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}),
        );
        for p in parts {
            self.push(
                "response.output_text.delta",
                json!({"item_id": id, "output_index": index, "content_index": 0, "delta": p}),
            );
        }
        self.push(
            "response.output_text.done",
            json!({"item_id": id, "output_index": index, "content_index": 0, "text": text}),
        );
        let item = message(id, &text);
        self.push(
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        );
        item
    }

    fn call(&mut self, index: u64, n: u32, name: &str, fragments: &[&str]) -> Value {
        let item = call(n, name, &fragments.concat());
        let mut added = item.clone();
        added["status"] = json!("in_progress");
        added["arguments"] = json!("");
        self.push(
            "response.output_item.added",
            json!({"output_index": index, "item": added}),
        );
        for f in fragments {
            self.push(
                "response.function_call_arguments.delta",
                json!({"item_id": item["id"], "output_index": index, "delta": f}),
            );
        }
        self.push(
            "response.function_call_arguments.done",
            json!({"item_id": item["id"], "output_index": index, "arguments": fragments.concat()}),
        );
        self.push(
            "response.output_item.done",
            json!({"output_index": index, "item": item.clone()}),
        );
        item
    }

    fn reasoning(&mut self, index: u64, id: &str) -> Value {
        let item = reasoning(id);
        self.push(
            "response.output_item.added",
            json!({"output_index": index, "item": {"id": id, "type": "reasoning", "summary": []}}),
        );
        self.push(
            "response.output_item.done",
            json!({"output_index": index, "item": item.clone()}),
        );
        item
    }

    fn completed(mut self, id: &str, output: Vec<Value>) -> Vec<Bytes> {
        self.push(
            "response.completed",
            json!({"response": response(id, output)}),
        );
        self.events
    }
}

/// What a client read from a Responses stream: `(event name, data)`.
struct Events {
    raw: String,
    events: Vec<(String, Value)>,
}

impl Events {
    fn of(&self, kind: &str) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|(k, _)| k == kind)
            .map(|(_, d)| d)
            .collect()
    }

    fn terminal(&self) -> &Value {
        &self.events.last().unwrap().1
    }

    /// The checks every client stream must pass: `response.created` first,
    /// `sequence_number` 0, 1, 2, …, `event:` equal to `type`, output indices
    /// contiguous as items are added, exactly one terminal event, last.
    fn assert_valid(&self) {
        assert_eq!(self.events[0].0, "response.created", "{}", self.raw);
        let mut next_index = 0;
        for (n, (kind, data)) in self.events.iter().enumerate() {
            assert_eq!(data["type"], kind.as_str());
            assert_eq!(data["sequence_number"], n as u64, "{}", self.raw);
            if kind == "response.output_item.added" {
                assert_eq!(data["output_index"], next_index, "{}", self.raw);
                next_index += 1;
            }
            if let Some(i) = data["output_index"].as_u64() {
                assert!(i < next_index, "an event for an item never added: {data}");
            }
        }
        let terminals = self
            .events
            .iter()
            .filter(|(k, _)| {
                matches!(
                    k.as_str(),
                    "response.completed" | "response.failed" | "response.incomplete"
                )
            })
            .count();
        assert_eq!(terminals, 1, "{}", self.raw);
        let last = &self.events.last().unwrap().0;
        assert!(last.starts_with("response.") && last != "response.output_item.done");
        assert_eq!(self.of("response.created").len(), 1);
    }
}

fn read_stream(raw: String) -> Events {
    let mut events = Vec::new();
    for block in raw.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let mut name = None;
        let mut data = None;
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event: ") {
                name = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = Some(serde_json::from_str::<Value>(v).unwrap());
            }
        }
        if let (Some(name), Some(data)) = (name, data) {
            events.push((name, data));
        }
    }
    Events { raw, events }
}

async fn stream(g: &Gov, mut body: Value) -> Events {
    body["stream"] = json!(true);
    let response = client()
        .post(format!("{}/v1/responses", g.proxy.url))
        .bearer_auth("sk-test-key")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    read_stream(response.text().await.unwrap())
}

/// Queues a first round that is only the governed weather call `call_1` (Paris).
fn push_weather_round(g: &Gov) {
    let mut r1 = Sse::start("resp_1");
    let c = r1.call(0, 1, "weather__current", &["{\"city\":\"Paris\"}"]);
    g.upstream.push(Reply::sse(r1.completed("resp_1", vec![c])));
}

#[tokio::test]
async fn a_governed_call_is_hidden_and_the_stream_reads_as_one_response() {
    let g = start_with_weather(POLICY).await;
    let mut r1 = Sse::start("resp_1");
    let c = r1.call(0, 1, "weather__current", &["{\"city\"", ":\"Paris\"}"]);
    g.upstream.push(Reply::sse(r1.completed("resp_1", vec![c])));
    let mut r2 = Sse::start("resp_2");
    let m = r2.message(0, "msg_2", &["18 C ", "in Paris."]);
    g.upstream
        .push(Reply::sse(r2.completed("resp_2", vec![m.clone()])));
    let got = stream(&g, request()).await;
    got.assert_valid();
    assert!(!got.raw.contains("call_1") && !got.raw.contains("weather__current\","));
    let deltas: String = got
        .of("response.output_text.delta")
        .iter()
        .map(|d| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, "18 C in Paris.");
    let done = got.terminal();
    assert_eq!(done["type"], "response.completed");
    assert_eq!(done["response"]["id"], "resp_1");
    assert_eq!(got.of("response.created")[0]["response"]["id"], "resp_1");
    assert_eq!(done["response"]["output"], json!([m]));
    assert_eq!(done["response"]["usage"]["total_tokens"], 30);
    let sent = g.sent();
    assert_eq!(sent[1]["previous_response_id"], "resp_1");
    assert_eq!(sent[1]["stream"], true);
    assert_eq!(
        outputs(&sent[1]),
        [("call_1".into(), r#"{"temp_c":18}"#.into())]
    );
    g.proxy.verify_receipts();
}

#[tokio::test]
async fn a_forbidden_word_split_across_argument_deltas_never_reaches_the_client() {
    let g = start(POLICY, "", None).await;
    let mut r1 = Sse::start("resp_1");
    let c = r1.call(0, 1, "lookup", &["{\"q\":\"r", "m -", "rf /tmp\"}"]);
    g.upstream.push(Reply::sse(r1.completed("resp_1", vec![c])));
    let mut r2 = Sse::start("resp_2");
    let m = r2.message(0, "msg_2", &["Not ", "allowed."]);
    g.upstream.push(Reply::sse(r2.completed("resp_2", vec![m])));
    let got = stream(&g, request()).await;
    got.assert_valid();
    assert!(!got.raw.contains("rm -") && !got.raw.contains("call_1"));
    assert!(got.of("response.function_call_arguments.delta").is_empty());
    let sent = g.sent();
    let answers = outputs(&sent[1]);
    assert!(
        answers[0]
            .1
            .contains("shell_commands.forbidden_patterns[0]")
    );
    g.proxy.verify_receipts();
}

#[tokio::test]
async fn parallel_streamed_calls_with_one_denied_keep_output_indices_contiguous() {
    let g = start(POLICY, "", None).await;
    let mut r1 = Sse::start("resp_1");
    let m = r1.message(0, "msg_1", &["Let me check."]);
    let denied = r1.call(1, 1, "shell_exec", &["{}"]);
    let allowed = r1.call(2, 2, "lookup", &["{\"q\"", ":\"x\"}"]);
    g.upstream.push(Reply::sse(
        r1.completed("resp_1", vec![m.clone(), denied, allowed.clone()]),
    ));
    let got = stream(&g, request()).await;
    got.assert_valid();
    let added = got.of("response.output_item.added");
    assert_eq!(added.len(), 2);
    assert_eq!(added[1]["item"]["call_id"], "call_2");
    assert_eq!(added[1]["output_index"], 1);
    let args: String = got
        .of("response.function_call_arguments.delta")
        .iter()
        .map(|d| {
            assert_eq!(d["output_index"], 1);
            d["delta"].as_str().unwrap()
        })
        .collect();
    assert_eq!(args, "{\"q\":\"x\"}");
    assert!(!got.raw.contains("call_1"));
    let done = got.terminal();
    assert_eq!(done["response"]["output"], json!([m, allowed]));
    assert_eq!(g.proxy.receipt_lines().len(), 2);
    // The follow-up gets the denial spliced in.
    script(&g, vec![response("resp_2", vec![message("msg_2", "ok")])]);
    let mut follow = request();
    follow["previous_response_id"] = json!("resp_1");
    follow["input"] =
        json!([{"type": "function_call_output", "call_id": "call_2", "output": "found"}]);
    let (status, _, _) = post(&g, &follow).await;
    assert_eq!(status, 200);
    let sent = g.sent();
    let answered: Vec<String> = outputs(&sent[1]).into_iter().map(|(id, _)| id).collect();
    assert_eq!(answered, ["call_1", "call_2"]);
    g.proxy.verify_receipts();
}

#[tokio::test]
async fn an_upstream_dying_mid_call_ends_with_response_failed_and_releases_nothing() {
    let g = start(POLICY, "", None).await;
    let feed = g.feed_stream();
    let mut body = request();
    body["stream"] = json!(true);
    let mut r = Sse::start("resp_1");
    r.message(0, "msg_1", &["Working on it."]);
    let item = call(1, "lookup", "{\"q\":\"x\"}");
    let mut added = item.clone();
    added["arguments"] = json!("");
    r.push(
        "response.output_item.added",
        json!({"output_index": 1, "item": added}),
    );
    r.push(
        "response.function_call_arguments.delta",
        json!({"item_id": "fc_1", "output_index": 1, "delta": "{\"q\""}),
    );
    for e in r.events {
        feed.send(e);
    }
    let mut response = client()
        .post(format!("{}/v1/responses", g.proxy.url))
        .bearer_auth("sk-test-key")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The text reaches the client before the upstream breaks.
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("response.output_item.done") {
        let chunk = tokio::time::timeout(WAIT, response.chunk())
            .await
            .unwrap()
            .unwrap()
            .expect("the stream ended before the text was relayed");
        got.extend_from_slice(&chunk);
    }
    feed.abort();
    read_to_end(&mut response, &mut got).await;
    let raw = String::from_utf8(got).unwrap();
    let got = read_stream(raw);
    got.assert_valid();
    let done = got.terminal();
    assert_eq!(done["type"], "response.failed");
    assert_eq!(done["response"]["id"], "resp_1");
    assert_eq!(done["response"]["status"], "failed");
    assert!(
        !got.raw.contains("call_1"),
        "a half-received call is never released"
    );
    assert_eq!(got.of("response.output_text.delta").len(), 1);
    assert!(g.proxy.receipt_lines().is_empty());
}

#[tokio::test]
async fn an_upstream_error_in_a_later_round_ends_with_response_failed() {
    let g = start(POLICY, "", None).await;
    let mut r1 = Sse::start("resp_1");
    let c = r1.call(0, 1, "shell_exec", &["{}"]);
    g.upstream.push(Reply::sse(r1.completed("resp_1", vec![c])));
    g.upstream.push(Reply::Full {
        status: 500,
        headers: vec![("content-type".into(), "application/json".into())],
        body: Bytes::from_static(
            br#"{"error":{"message":"boom","type":"server_error","param":null,"code":null}}"#,
        ),
    });
    let got = stream(&g, request()).await;
    got.assert_valid();
    let done = got.terminal();
    assert_eq!(done["type"], "response.failed");
    let message = done["response"]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("500") && message.contains("boom"),
        "{message}"
    );
}

#[tokio::test]
async fn a_stream_stops_after_max_rounds_with_a_message_of_its_own() {
    let g = start(POLICY, "max_rounds = 2", None).await;
    for n in 1..=2 {
        let id = format!("resp_{n}");
        let mut r = Sse::start(&id);
        let c = r.call(0, n, "shell_exec", &["{}"]);
        g.upstream.push(Reply::sse(r.completed(&id, vec![c])));
    }
    let got = stream(&g, request()).await;
    got.assert_valid();
    let done = got.terminal();
    assert_eq!(done["type"], "response.completed");
    let output = done["response"]["output"].as_array().unwrap();
    assert_eq!(output.len(), 1);
    let text = output[0]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("after 2 rounds"));
    assert_eq!(got.of("response.output_text.delta")[0]["delta"], text);
    assert_eq!(g.proxy.receipt_lines()[2]["reason"]["code"], "max_rounds");
    g.proxy.verify_receipts();
}

#[tokio::test]
async fn reasoning_and_unknown_items_stream_through_around_a_hidden_call() {
    let g = start(POLICY, "", None).await;
    let mut r1 = Sse::start("resp_1");
    let rs = r1.reasoning(0, "rs_1");
    let c = r1.call(1, 1, "shell_exec", &["{}"]);
    g.upstream
        .push(Reply::sse(r1.completed("resp_1", vec![rs.clone(), c])));
    let mut r2 = Sse::start("resp_2");
    r2.push(
        "response.output_item.added",
        json!({"output_index": 0, "item": {"id": "zz_1", "type": "holographic_call"}}),
    );
    r2.push(
        "response.holographic_call.flickered",
        json!({"output_index": 0, "item_id": "zz_1", "intensity": 3}),
    );
    r2.push(
        "response.output_item.done",
        json!({"output_index": 0, "item": {"id": "zz_1", "type": "holographic_call"}}),
    );
    let m = r2.message(1, "msg_2", &["ok"]);
    g.upstream.push(Reply::sse(r2.completed(
        "resp_2",
        vec![json!({"id": "zz_1", "type": "holographic_call"}), m],
    )));
    let got = stream(&g, request()).await;
    got.assert_valid();
    assert_eq!(got.of("response.output_item.done")[0]["item"], rs);
    let flicker = got.of("response.holographic_call.flickered");
    assert_eq!(flicker[0]["output_index"], 1);
    assert_eq!(flicker[0]["intensity"], 3);
    let output = got.terminal()["response"]["output"].as_array().unwrap();
    let kinds: Vec<&str> = output.iter().map(|i| i["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["reasoning", "holographic_call", "message"]);
    assert_eq!(output[0], rs);
}

#[tokio::test]
async fn recorded_responses_streams_are_governed() {
    let root = shared_fixtures().join("recorded/responses");
    // Both calls allowed: the recording reaches the client byte for byte.
    let recorded =
        Bytes::from(std::fs::read(root.join("responses-stream-two-function-calls.sse")).unwrap());
    let g = start(POLICY, "", None).await;
    g.upstream.push(Reply::sse(vec![recorded.clone()]));
    let got = stream(&g, request()).await;
    assert_eq!(got.raw.as_bytes(), &recorded[..]);
    assert_eq!(g.proxy.receipt_lines().len(), 2);

    // `weather` blocked: only `search` reaches the client, renumbered, and the
    // model gets the denial in the next round.
    let blocked =
        "hushspec: \"0.1.0\"\nrules:\n  tool_access:\n    block: [weather]\n    default: allow\n";
    let g = start(blocked, "", None).await;
    g.upstream.push(Reply::sse(vec![recorded.clone()]));
    let got = stream(&g, request()).await;
    got.assert_valid();
    let added = got.of("response.output_item.added");
    let names: Vec<&str> = added
        .iter()
        .map(|a| a["item"]["name"].as_str().unwrap_or("message"))
        .collect();
    assert_eq!(names, ["search"]);
    assert!(!got.raw.contains("call_qfdHN9tTntv02109c9RNnGGe"));
    let output = got.terminal()["response"]["output"].as_array().unwrap();
    assert_eq!(output.len(), 1);
    assert_eq!(output[0]["call_id"], "call_GXd80NWdsX8ng3xdeNLeA42o");
    assert_eq!(
        g.sent().len(),
        1,
        "a turn with a client call goes to the client"
    );
    // The client's answer continues the recorded response; the denial joins it.
    let id = got.of("response.created")[0]["response"]["id"].clone();
    assert_eq!(got.terminal()["response"]["id"], id);
    script(&g, vec![response("resp_2", vec![message("msg_2", "ok")])]);
    let mut follow = request();
    follow["previous_response_id"] = id.clone();
    follow["input"] = json!([{"type": "function_call_output",
        "call_id": "call_GXd80NWdsX8ng3xdeNLeA42o", "output": "7:10 PM"}]);
    let (status, _, _) = post(&g, &follow).await;
    assert_eq!(status, 200);
    let sent = g.sent();
    assert_eq!(sent[1]["previous_response_id"], id);
    let answers = outputs(&sent[1]);
    assert_eq!(answers[0].0, "call_qfdHN9tTntv02109c9RNnGGe");
    assert!(answers[0].1.contains("tool_call_denied"));
    assert_eq!(answers[1].0, "call_GXd80NWdsX8ng3xdeNLeA42o");
    g.proxy.verify_receipts();

    // A reasoning model's stream: the reasoning item passes as it came.
    let recorded =
        std::fs::read_to_string(root.join("responses-stream-reasoning-then-function-call.sse"))
            .unwrap();
    let g = start(POLICY, "", None).await;
    g.upstream
        .push(Reply::sse(vec![Bytes::from(recorded.clone())]));
    let got = stream(&g, request()).await;
    got.assert_valid();
    assert_eq!(got.raw, recorded);
}

#[tokio::test]
async fn governed_tool_failures_and_timeouts_become_error_outputs() {
    let g = start(POLICY, "", Some(failing_then_hanging_tool().await)).await;
    for (n, args) in [
        (1, r#"{"city":"Paris"}"#),
        (2, r#"{"city":"Oslo"}"#),
        (3, r#"{"town":"Oslo"}"#),
    ] {
        script(
            &g,
            vec![
                response(
                    &format!("resp_{n}a"),
                    vec![call(n, "weather__current", args)],
                ),
                response(&format!("resp_{n}b"), vec![message("msg", "noted")]),
            ],
        );
    }
    for expected in ["tool_failed", "tool_timeout", "invalid_arguments"] {
        let (status, _, out) = tokio::time::timeout(WAIT, post(&g, &request()))
            .await
            .expect("a failing tool must not hang the request");
        assert_eq!(status, 200);
        assert_eq!(output_types(&out), ["message"]);
        let sent = g.sent();
        let answer = &outputs(sent.last().unwrap())[0].1;
        assert!(answer.contains(expected), "{expected}: {answer}");
    }
    assert_eq!(g.tool.as_ref().unwrap().received().len(), 2);
    g.proxy.verify_receipts();
}

#[tokio::test]
async fn an_approval_on_this_surface_goes_from_pending_to_consumed() {
    let g = start(
        POLICY,
        &format!("admin_token = {:?}", crate::governance::ADMIN_TOKEN),
        None,
    )
    .await;
    let deploy = |id: &str| response(id, vec![call(1, "deploy", r#"{"env":"prod"}"#)]);
    script(
        &g,
        vec![
            deploy("resp_1"),
            response("resp_2", vec![message("m", "Waiting.")]),
        ],
    );
    let (_, _, out) = post(&g, &request()).await;
    assert_eq!(output_types(&out), ["message"]);
    let pending: Value = serde_json::from_str(&outputs(&g.sent()[1])[0].1).unwrap();
    assert_eq!(pending["error"]["type"], "tool_call_pending_approval");
    let id = pending["error"]["approval_id"].as_str().unwrap().to_owned();
    let approved = client()
        .post(format!("{}/tollgate/approvals/{id}/approve", g.proxy.url))
        .bearer_auth(crate::governance::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(approved.status(), 200);
    // The same call again reaches the client, which owns `deploy`, once.
    script(&g, vec![deploy("resp_3")]);
    let (_, _, out) = post(&g, &request()).await;
    assert_eq!(out["output"][0]["call_id"], "call_1");
    script(
        &g,
        vec![
            deploy("resp_4"),
            response("resp_5", vec![message("m", "Waiting again.")]),
        ],
    );
    let (_, _, out) = post(&g, &request()).await;
    assert_eq!(output_types(&out), ["message"]);
    assert_eq!(
        decisions(&g.proxy.receipt_lines()),
        ["pending", "system", "allow", "pending"]
    );
    g.proxy.verify_receipts();
}

#[tokio::test]
async fn another_agents_follow_up_is_never_completed_with_a_response_it_did_not_get() {
    let g = start(POLICY, "", None).await;
    let turn = vec![
        call(1, "lookup", r#"{"q":"x"}"#),
        call(2, "shell_exec", r#"{"cmd":"cat /etc/passwd"}"#),
    ];
    script(&g, vec![response("resp_1", turn)]);
    post(&g, &request()).await;
    // Another key (another agent) replays the same ids and continues by id.
    script(
        &g,
        vec![
            response("resp_2", vec![message("m", "?")]),
            response("resp_3", vec![message("m", "?")]),
        ],
    );
    let mut replay = request();
    replay["input"].as_array_mut().unwrap().extend([
        call(1, "lookup", r#"{"q":"x"}"#),
        json!({"type": "function_call_output", "call_id": "call_1", "output": "found"}),
    ]);
    let mut by_id = request();
    by_id["previous_response_id"] = json!("resp_1");
    by_id["input"] =
        json!([{"type": "function_call_output", "call_id": "call_1", "output": "found"}]);
    for body in [&replay, &by_id] {
        let response = client()
            .post(format!("{}/v1/responses", g.proxy.url))
            .bearer_auth("sk-another-agent")
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let sent = g.sent();
    assert_eq!(
        sent[1]["input"], replay["input"],
        "nothing of the first agent's turn"
    );
    assert!(!sent[1].to_string().contains("passwd"));
    assert_eq!(sent[2]["previous_response_id"], "resp_1");
    assert_eq!(sent[2]["input"], by_id["input"]);
}

#[tokio::test]
async fn a_background_response_with_function_tools_is_refused() {
    let g = start(POLICY, "", None).await;
    let mut body = request();
    body["background"] = json!(true);
    let (status, _, out) = post(&g, &body).await;
    assert_eq!(status, 400);
    assert_eq!(out["error"]["code"], "unsupported_parameter");
    assert!(g.upstream.received().is_empty());
    // Without function tools nothing can be called: it goes upstream.
    script(&g, vec![response("resp_1", vec![])]);
    let (status, _, _) = post(
        &g,
        &json!({"model": "gpt-4o", "input": "hi", "background": true}),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_recorded_plain_response_is_governed() {
    let root = shared_fixtures().join("recorded/responses");
    let recorded = std::fs::read(root.join("responses-body-two-function-calls.json")).unwrap();
    let blocked =
        "hushspec: \"0.1.0\"\nrules:\n  tool_access:\n    block: [weather]\n    default: allow\n";
    let g = start(blocked, "", None).await;
    g.upstream.push(Reply::json(recorded.clone()));
    let (status, _, out) = post(&g, &request()).await;
    assert_eq!(status, 200);
    let original: Value = serde_json::from_slice(&recorded).unwrap();
    assert_eq!(out["id"], original["id"]);
    assert_eq!(out["output"], json!([original["output"][0]]));
    assert_eq!(out["usage"], original["usage"]);
    let receipts = g.proxy.receipt_lines();
    let decisions: Vec<(&str, &str)> = receipts
        .iter()
        .map(|r| {
            (
                r["action"]["tool_name"].as_str().unwrap(),
                r["decision"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(decisions, [("search", "allow"), ("weather", "deny")]);
    g.proxy.verify_receipts();
}

#[tokio::test]
async fn a_forced_call_is_not_forced_again_after_tollgate_answered_it() {
    let g = start_with_weather(POLICY).await;
    script(
        &g,
        vec![
            response(
                "resp_1",
                vec![call(1, "weather__current", r#"{"city":"Rome"}"#)],
            ),
            response("resp_2", vec![message("msg_2", "18 C")]),
        ],
    );
    let mut body = request();
    body["tool_choice"] = json!({"type": "function", "name": "weather__current"});
    let (status, _, out) = post(&g, &body).await;
    assert_eq!(status, 200);
    assert_eq!(output_types(&out), ["message"]);
    let sent = g.sent();
    assert_eq!(sent[0]["tool_choice"]["name"], "weather__current");
    assert_eq!(sent[1]["tool_choice"], "auto", "the model may answer now");
}

#[tokio::test]
async fn events_held_behind_a_call_beyond_the_memory_budget_fail_the_stream() {
    let g = start(POLICY, TIGHT_BUDGET, None).await;
    // 96 KiB of argument deltas queued behind a call that is not complete yet.
    let piece = "x".repeat(8 * 1024);
    let fragments = oversized_arguments(&piece);
    let mut r1 = Sse::start("resp_1");
    let m = r1.message(0, "msg_1", &["Looking."]);
    let c = r1.call(1, 1, "lookup", &fragments);
    g.upstream
        .push(Reply::sse(r1.completed("resp_1", vec![m, c])));
    let got = stream(&g, request()).await;
    got.assert_valid();
    let done = got.terminal();
    assert_eq!(done["type"], "response.failed");
    assert_eq!(done["response"]["error"]["code"], "server_overloaded");
    let message = done["response"]["error"]["message"].as_str().unwrap();
    assert!(message.contains("at capacity"), "{message}");
    assert!(!got.raw.contains("call_1") && !got.raw.contains(&piece));
    // What came before the call was not held back.
    assert_eq!(got.of("response.output_text.delta").len(), 1);
    assert!(g.proxy.receipt_lines().is_empty(), "nothing was decided");

    // Its share came back: a call whose held events take most of the budget
    // (its deltas, then its arguments twice more in the done events) is relayed.
    let arguments = format!("{{\"q\":\"{}\"}}", "y".repeat(16 * 1024));
    let mut r2 = Sse::start("resp_2");
    let c = r2.call(0, 2, "lookup", &[&arguments[..9_000], &arguments[9_000..]]);
    g.upstream
        .push(Reply::sse(r2.completed("resp_2", vec![c.clone()])));
    let got = stream(&g, request()).await;
    got.assert_valid();
    let done = got.terminal();
    assert_eq!(done["type"], "response.completed");
    assert_eq!(done["response"]["output"], json!([c]));
    assert_eq!(g.proxy.receipt_lines().len(), 1);
    g.proxy.verify_receipts();
}

// ----- how a round's stream may end: failed, error, incomplete -----

impl Sse {
    /// Ends the round with a terminal event of `kind` carrying `response`.
    fn end(mut self, kind: &str, response: Value) -> Vec<Bytes> {
        self.push(kind, json!({"response": response}));
        self.events
    }

    /// Starts message `id` at `index` and sends `parts` of its text, leaving it
    /// unfinished.
    fn unfinished_message(&mut self, index: u64, id: &str, parts: &[&str]) {
        self.push("response.output_item.added", json!({"output_index": index,
            "item": {"id": id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}}));
        for p in parts {
            self.push(
                "response.output_text.delta",
                json!({"item_id": id, "output_index": index, "content_index": 0, "delta": p}),
            );
        }
    }

    /// Ends the round with an `error` event (no response object).
    fn error(mut self, code: &str, message: &str) -> Vec<Bytes> {
        self.push(
            "error",
            json!({"code": code, "message": message, "param": null}),
        );
        self.events
    }
}

/// A `response.failed` object of the upstream's: this id and output, the
/// upstream's `server_error`.
fn failed(id: &str, output: Vec<Value>) -> Value {
    let mut r = response(id, output);
    r["status"] = json!("failed");
    r["error"] = json!({"code": "server_error", "message": "The model broke down."});
    r
}

/// A `response.incomplete` object: cut short by `max_output_tokens`.
fn incomplete(id: &str, output: Vec<Value>) -> Value {
    let mut r = response(id, output);
    r["status"] = json!("incomplete");
    r["incomplete_details"] = json!({"reason": "max_output_tokens"});
    r
}

/// Streams [`request`] and checks the stream is valid, hides the weather call
/// `call_1` and ends with one `kind` event under the client's id `resp_1`.
async fn stream_ending(g: &Gov, kind: &str) -> Events {
    let got = stream(g, request()).await;
    got.assert_valid();
    assert_hidden(&got, 1);
    let done = got.terminal();
    assert_eq!(done["type"], kind);
    assert_eq!(done["response"]["id"], "resp_1");
    got
}

/// Asserts that nothing of the weather call `call_{n}` reached the client.
fn assert_hidden(got: &Events, n: u32) {
    assert!(
        !got.raw.contains(&format!("call_{n}\"")) && !got.raw.contains(&format!("fc_{n}\"")),
        "a handled call leaked: {}",
        got.raw
    );
    assert!(!got.raw.contains("weather__current"), "{}", got.raw);
    assert!(
        !got.raw.contains("Paris"),
        "its arguments leaked: {}",
        got.raw
    );
}

#[tokio::test]
async fn a_round_that_fails_upstream_ends_the_client_stream_with_that_failure() {
    // Round 1 fails after its governed call was decided and run.
    let g = start_with_weather(POLICY).await;
    let mut r1 = Sse::start("resp_1");
    let m = r1.message(0, "msg_1", &["Checking."]);
    let c = r1.call(1, 1, "weather__current", &["{\"city\":\"Paris\"}"]);
    // The failed response lists the call tollgate ran: the client's must not.
    g.upstream.push(Reply::sse(
        r1.end("response.failed", failed("resp_1", vec![m.clone(), c])),
    ));
    // The upstream's own failure, renumbered, under the client's id, with what
    // the client was shown.
    let got = stream_ending(&g, "response.failed").await;
    let done = got.terminal();
    assert_eq!(done["response"]["status"], "failed");
    assert_eq!(done["response"]["output"], json!([m]));
    assert_eq!(done["response"]["usage"]["total_tokens"], 15);
    assert_eq!(
        done["response"]["error"],
        json!({"code": "server_error", "message": "The model broke down."})
    );
    assert_eq!(
        got.of("response.output_text.delta")[0]["delta"],
        "Checking."
    );
    assert_eq!(
        g.upstream.received().len(),
        1,
        "a failed round is not continued"
    );
    assert_eq!(g.tool.as_ref().unwrap().received().len(), 1);
    let receipts = g.proxy.receipt_lines();
    assert_eq!(receipts.len(), 1);
    assert_eq!(receipts[0]["decision"], "allow");
    g.proxy.verify_receipts();

    // Round 2 fails after round 1's only call was handled: the client's stream
    // goes on into round 2 and ends with round 2's failure, renumbered, under
    // the first round's id.
    let g = start_with_weather(POLICY).await;
    let mut r1 = Sse::start("resp_1");
    let m = r1.message(0, "msg_1", &["Checking."]);
    let c = r1.call(1, 1, "weather__current", &["{\"city\"", ":\"Paris\"}"]);
    g.upstream
        .push(Reply::sse(r1.completed("resp_1", vec![m, c])));
    let mut r2 = Sse::start("resp_2");
    r2.unfinished_message(0, "msg_2", &["18 C"]);
    g.upstream.push(Reply::sse(
        r2.end("response.failed", failed("resp_2", vec![])),
    ));
    let got = stream_ending(&g, "response.failed").await;
    let done = got.terminal();
    assert_eq!(done["response"]["error"]["code"], "server_error");
    assert_eq!(got.of("response.created").len(), 1);
    let deltas = got.of("response.output_text.delta");
    assert_eq!(deltas[1]["delta"], "18 C");
    assert_eq!(deltas[1]["output_index"], 1);
    let sent = g.sent();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1]["previous_response_id"], "resp_1");
    assert_eq!(
        outputs(&sent[1]),
        [("call_1".into(), r#"{"temp_c":18}"#.into())]
    );
    // What the client was shown of both rounds, and both rounds' usage; the
    // round it continued from is not named as its own previous response.
    assert_eq!(
        output_types(&done["response"]),
        ["message"],
        "round 1's message; round 2's failed before it was listed"
    );
    assert_eq!(done["response"]["usage"]["total_tokens"], 30);
    assert_eq!(done["response"]["previous_response_id"], Value::Null);
    g.proxy.verify_receipts();

    // Round 1 is only the handled call, so round 2's events already carry the
    // client's numbers: the failure still goes out under the client's id.
    let g = start_with_weather(POLICY).await;
    push_weather_round(&g);
    let mut r2 = Sse::start("resp_2");
    r2.unfinished_message(0, "msg_2", &[]);
    g.upstream.push(Reply::sse(
        r2.end("response.failed", failed("resp_2", vec![])),
    ));
    let got = stream_ending(&g, "response.failed").await;
    assert!(!got.raw.contains("resp_2"), "{}", got.raw);
    g.proxy.verify_receipts();
}

#[tokio::test]
async fn an_error_event_mid_stream_is_passed_on_then_the_stream_fails() {
    // Round 1 is handled; round 2 breaks off with `error` in the middle of its
    // message: the client gets the error, then one `response.failed` of
    // tollgate's own under its id, with what it was shown and the usage so far.
    let g = start_with_weather(POLICY).await;
    push_weather_round(&g);
    let mut r2 = Sse::start("resp_2");
    r2.unfinished_message(0, "msg_2", &["18 C"]);
    g.upstream.push(Reply::sse(
        r2.error("server_error", "The server had an error."),
    ));
    let got = stream(&g, request()).await;
    got.assert_valid();
    assert_hidden(&got, 1);
    let kinds: Vec<&str> = got.events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds[kinds.len() - 2..],
        ["error", "response.failed"],
        "{}",
        got.raw
    );
    let error = got.of("error")[0];
    assert_eq!(error["code"], "server_error");
    assert_eq!(error["message"], "The server had an error.");
    let done = got.terminal();
    assert_eq!(done["response"]["id"], "resp_1");
    assert_eq!(done["response"]["status"], "failed");
    assert_eq!(
        done["response"]["error"]["code"],
        "upstream_stream_interrupted"
    );
    assert_eq!(
        done["response"]["error"]["message"],
        "The server had an error."
    );
    assert_eq!(done["response"]["output"], json!([]));
    assert_eq!(done["response"]["usage"]["total_tokens"], 15);
    assert_eq!(g.upstream.received().len(), 2);
    g.proxy.verify_receipts();

    // `error` while a call's events are held: the call is never released.
    let g = start(POLICY, "", None).await;
    let mut r1 = Sse::start("resp_1");
    r1.message(0, "msg_1", &["Looking."]);
    let mut added = call(1, "lookup", "");
    added["status"] = json!("in_progress");
    r1.push(
        "response.output_item.added",
        json!({"output_index": 1, "item": added}),
    );
    r1.push(
        "response.function_call_arguments.delta",
        json!({"item_id": "fc_1", "output_index": 1, "delta": "{\"q\":\"secret"}),
    );
    g.upstream.push(Reply::sse(
        r1.error("server_error", "The server had an error."),
    ));
    let got = stream(&g, request()).await;
    got.assert_valid();
    assert!(!got.raw.contains("call_1") && !got.raw.contains("secret"));
    assert!(got.of("response.function_call_arguments.delta").is_empty());
    let done = got.terminal();
    assert_eq!(done["type"], "response.failed");
    assert_eq!(done["response"]["id"], "resp_1");
    assert_eq!(got.of("response.output_text.delta")[0]["delta"], "Looking.");
    assert!(g.proxy.receipt_lines().is_empty(), "nothing was decided");
}

#[tokio::test]
async fn a_round_that_ends_incomplete_ends_the_client_stream_incomplete() {
    // Round 1 is cut short after its governed call ran: tollgate does not go on
    // (the answer was cut short), the client gets `response.incomplete` with what
    // it may see, and the call's output is kept for the client's next request.
    let g = start_with_weather(POLICY).await;
    let mut r1 = Sse::start("resp_1");
    let m = r1.message(0, "msg_1", &["Checking."]);
    let c = r1.call(1, 1, "weather__current", &["{\"city\":\"Paris\"}"]);
    g.upstream.push(Reply::sse(r1.end(
        "response.incomplete",
        incomplete("resp_1", vec![m.clone(), c]),
    )));
    let got = stream_ending(&g, "response.incomplete").await;
    let done = got.terminal();
    assert_eq!(done["response"]["status"], "incomplete");
    assert_eq!(
        done["response"]["incomplete_details"],
        json!({"reason": "max_output_tokens"})
    );
    assert_eq!(done["response"]["output"], json!([m]));
    assert_eq!(done["response"]["usage"]["total_tokens"], 15);
    assert_eq!(g.upstream.received().len(), 1);
    // Continuing it gives the upstream the governed call's output.
    script(&g, vec![response("resp_2", vec![message("msg_2", "ok")])]);
    let mut follow = request();
    follow["previous_response_id"] = json!("resp_1");
    follow["input"] = json!("go on");
    let (status, _, _) = post(&g, &follow).await;
    assert_eq!(status, 200);
    let sent = g.sent();
    assert_eq!(sent[1]["previous_response_id"], "resp_1");
    assert_eq!(
        outputs(&sent[1]),
        [("call_1".into(), r#"{"temp_c":18}"#.into())]
    );
    g.proxy.verify_receipts();

    // Round 2, after a handled round 1, is cut short: one `response.incomplete`,
    // the first round's id, round 2's items, both rounds' usage.
    let g = start_with_weather(POLICY).await;
    push_weather_round(&g);
    let mut r2 = Sse::start("resp_2");
    let m = r2.message(0, "msg_2", &["18 C and"]);
    g.upstream.push(Reply::sse(
        r2.end("response.incomplete", incomplete("resp_2", vec![m.clone()])),
    ));
    let got = stream_ending(&g, "response.incomplete").await;
    let done = got.terminal();
    assert_eq!(
        done["response"]["incomplete_details"],
        json!({"reason": "max_output_tokens"})
    );
    assert_eq!(done["response"]["output"], json!([m]));
    assert_eq!(done["response"]["usage"]["total_tokens"], 30);
    assert_eq!(g.sent().len(), 2);
    g.proxy.verify_receipts();
}

/// The event blocks of an SSE body, each with its blank line.
fn blocks(raw: &str) -> Vec<&str> {
    raw.split_inclusive("\n\n").collect()
}

#[tokio::test]
async fn the_recorded_reasoning_stream_with_its_call_denied_continues_upstream() {
    let recorded = std::fs::read_to_string(
        shared_fixtures()
            .join("recorded/responses/responses-stream-reasoning-then-function-call.sse"),
    )
    .unwrap();
    let recorded_events = read_stream(recorded.clone());
    let recorded_done = recorded_events.terminal()["response"].clone();
    let reasoning = recorded_done["output"][0].clone();
    assert_eq!(reasoning["type"], "reasoning");
    let call_id = "call_GLsIMps0vfGJeDhu3zAjy3wd";
    assert_eq!(recorded_done["output"][1]["call_id"], call_id);
    // The recorded call is to `search`, which this policy blocks.
    let blocked =
        "hushspec: \"0.1.0\"\nrules:\n  tool_access:\n    block: [search]\n    default: allow\n";
    for store in [true, false] {
        let g = start(blocked, "", None).await;
        g.upstream
            .push(Reply::sse(vec![Bytes::from(recorded.clone())]));
        let mut r2 = Sse::start("resp_2");
        let m = r2.message(0, "msg_2", &["I may not ", "search that."]);
        g.upstream
            .push(Reply::sse(r2.completed("resp_2", vec![m.clone()])));
        let mut body = request();
        if !store {
            body["store"] = json!(false);
        }
        let got = stream(&g, body).await;
        got.assert_valid();
        // Everything up to the call, the reasoning item included, reaches the
        // client byte for byte: created, in_progress, the reasoning item's two
        // events.
        let sent_blocks = blocks(&got.raw);
        assert_eq!(sent_blocks[..4], blocks(&recorded)[..4]);
        assert_eq!(got.of("response.output_item.done")[0]["item"], reasoning);
        // The call never does.
        assert!(!got.raw.contains(call_id) && !got.raw.contains("fc_6859a4c0"));
        assert!(!got.raw.contains("Detroit"));
        assert!(got.of("response.function_call_arguments.delta").is_empty());
        let done = got.terminal();
        assert_eq!(done["type"], "response.completed");
        assert_eq!(done["response"]["id"], recorded_done["id"]);
        assert_eq!(done["response"]["output"], json!([reasoning, m]));
        assert_eq!(
            done["response"]["usage"]["output_tokens_details"]["reasoning_tokens"],
            512
        );
        assert_eq!(done["response"]["usage"]["input_tokens"], 78 + 10);
        // Round 2 continues the recorded response with the denial as the call's
        // output.
        let sent = g.sent();
        assert_eq!(sent.len(), 2);
        let answers = outputs(&sent[1]);
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].0, call_id);
        let denial: Value = serde_json::from_str(&answers[0].1).unwrap();
        assert_eq!(denial["error"]["type"], "tool_call_denied");
        assert_eq!(denial["error"]["code"], "tool_access.block");
        let receipts = g.proxy.receipt_lines();
        assert_eq!(receipts.len(), 1);
        assert_eq!(receipts[0]["action"]["tool_name"], "search");
        assert_eq!(receipts[0]["action"]["tool_call_id"], call_id);
        assert_eq!(denial["error"]["receipt_id"], receipts[0]["receipt_id"]);
        if store {
            assert_eq!(sent[1]["previous_response_id"], recorded_done["id"]);
            assert_eq!(sent[1]["input"].as_array().unwrap().len(), 1);
        } else {
            // Without storage the round is replayed: the reasoning item as it
            // came, then the call, then its denial.
            assert!(sent[1].get("previous_response_id").is_none());
            let input = sent[1]["input"].as_array().unwrap();
            assert_eq!(input.len(), 4);
            assert_eq!(input[0]["role"], "user");
            assert_eq!(input[1], reasoning);
            assert_eq!(input[2], recorded_done["output"][1]);
            assert_eq!(input[3]["call_id"], call_id);
            assert_paired(&sent[1]);
        }
        g.proxy.verify_receipts();
    }
}

// ----- approvals, governed tool failures and tokens mode, streamed -----

/// One streamed round that calls `deploy` for `prod` (call `call_1`).
fn deploy_round(id: &str) -> Vec<Bytes> {
    let mut r = Sse::start(id);
    let c = r.call(0, 1, "deploy", &["{\"env\"", ":\"prod\"}"]);
    r.completed(id, vec![c])
}

#[tokio::test]
async fn a_streamed_approval_goes_from_pending_to_approved_to_consumed() {
    let g = start(POLICY, &format!("admin_token = {ADMIN_TOKEN:?}"), None).await;
    // Pending: the model is told to wait, the client sees only its answer.
    g.upstream.push(Reply::sse(deploy_round("resp_1")));
    let mut r2 = Sse::start("resp_2");
    let m = r2.message(0, "msg_2", &["Waiting ", "for approval."]);
    g.upstream
        .push(Reply::sse(r2.completed("resp_2", vec![m.clone()])));
    let got = stream(&g, request()).await;
    got.assert_valid();
    assert!(!got.raw.contains("call_1") && !got.raw.contains("deploy"));
    assert_eq!(got.terminal()["response"]["output"], json!([m]));
    assert_eq!(got.terminal()["response"]["id"], "resp_1");
    let sent = g.sent();
    assert_eq!(sent[1]["previous_response_id"], "resp_1");
    let answers = outputs(&sent[1]);
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].0, "call_1");
    let pending: Value = serde_json::from_str(&answers[0].1).unwrap();
    assert_eq!(pending["error"]["type"], "tool_call_pending_approval");
    assert_eq!(pending["error"]["code"], "approval_pending");
    let id = pending["error"]["approval_id"].as_str().unwrap().to_owned();
    assert_eq!(approvals(&g).await, [(id.clone(), "pending".to_owned())]);

    let approved = client()
        .post(format!("{}/tollgate/approvals/{id}/approve", g.proxy.url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(approved.status(), 200);

    // Approved: the same call again reaches the client, which owns `deploy`,
    // in a stream nothing was changed in.
    let round = deploy_round("resp_3");
    let whole: Vec<u8> = round.iter().flat_map(|b| b.to_vec()).collect();
    g.upstream.push(Reply::sse(round));
    let got = stream(&g, request()).await;
    got.assert_valid();
    assert_eq!(got.raw.as_bytes(), &whole[..]);
    let output = &got.terminal()["response"]["output"];
    assert_eq!(output[0]["call_id"], "call_1");
    assert_eq!(output[0]["name"], "deploy");
    assert_eq!(g.sent().len(), 3, "a relayed call ends the turn");

    // Consumed: once only; the next such call waits for a new approval.
    g.upstream.push(Reply::sse(deploy_round("resp_4")));
    let mut r5 = Sse::start("resp_5");
    let m = r5.message(0, "msg_5", &["Waiting again."]);
    g.upstream
        .push(Reply::sse(r5.completed("resp_5", vec![m.clone()])));
    let got = stream(&g, request()).await;
    got.assert_valid();
    assert!(!got.raw.contains("call_1"));
    assert_eq!(got.terminal()["response"]["output"], json!([m]));
    let again: Value = serde_json::from_str(&outputs(g.sent().last().unwrap())[0].1).unwrap();
    assert_eq!(again["error"]["code"], "approval_pending");
    assert_ne!(again["error"]["approval_id"], id.as_str());

    let receipts = g.proxy.receipt_lines();
    assert_eq!(
        decisions_and_reasons(&receipts),
        [
            ("pending", "approval_pending"),
            ("system", "approval_approved"),
            ("allow", "approval_granted"),
            ("pending", "approval_pending"),
        ]
    );
    assert_eq!(receipts[2]["metadata"]["approval_id"], id.as_str());
    assert_eq!(receipts[2]["surface"], "responses");
    let states: Vec<String> = approvals(&g).await.into_iter().map(|(_, s)| s).collect();
    assert_eq!(states, ["pending", "consumed"]);
    g.proxy.verify_receipts();
}

#[tokio::test]
async fn a_governed_tool_failing_or_timing_out_mid_stream_gives_the_model_an_error_output() {
    let g = start(POLICY, "", Some(failing_then_hanging_tool().await)).await;
    // Two governed calls in one round: the first gets a 500, the second no
    // answer within the tool's timeout.
    let mut r1 = Sse::start("resp_1");
    let m1 = r1.message(0, "msg_1", &["Checking both."]);
    let c1 = r1.call(1, 1, "weather__current", &["{\"city\":\"Paris\"}"]);
    let c2 = r1.call(2, 2, "weather__current", &["{\"city\":\"Oslo\"}"]);
    g.upstream
        .push(Reply::sse(r1.completed("resp_1", vec![m1.clone(), c1, c2])));
    let mut r2 = Sse::start("resp_2");
    let m2 = r2.message(0, "msg_2", &["Neither answered."]);
    g.upstream
        .push(Reply::sse(r2.completed("resp_2", vec![m2.clone()])));
    let got = tokio::time::timeout(WAIT, stream(&g, request()))
        .await
        .expect("a failing tool must not hang the stream");
    got.assert_valid();
    assert!(!got.raw.contains("call_1") && !got.raw.contains("call_2"));
    assert!(!got.raw.contains("weather__current"));
    let done = got.terminal();
    assert_eq!(done["type"], "response.completed");
    assert_eq!(done["response"]["output"], json!([m1, m2]));
    let sent = g.sent();
    assert_eq!(sent.len(), 2);
    let answers = outputs(&sent[1]);
    let ids: Vec<&str> = answers.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["call_1", "call_2"]);
    let failed: Value = serde_json::from_str(&answers[0].1).unwrap();
    assert_eq!(failed["error"]["code"], "tool_failed");
    let message = failed["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("500") && message.contains("boom"),
        "{message}"
    );
    let timed_out: Value = serde_json::from_str(&answers[1].1).unwrap();
    assert_eq!(timed_out["error"]["code"], "tool_timeout");
    let tool_requests: Vec<Value> = g
        .tool
        .as_ref()
        .unwrap()
        .received()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(
        tool_requests,
        [json!({"city": "Paris"}), json!({"city": "Oslo"})]
    );
    assert_eq!(decisions(&g.proxy.receipt_lines()), ["allow", "allow"]);
    g.proxy.verify_receipts();
}

#[tokio::test]
async fn in_tokens_mode_a_call_outside_the_scope_is_denied_and_its_tool_not_offered() {
    let upstream = MockUpstream::start().await;
    let tool = MockUpstream::start().await;
    tool.push(Reply::json(r#"{"temp_c":18}"#));
    let mut gw = tokens_gateway(&upstream, &tool);
    let post = |token: String, body: Value| {
        client()
            .post(format!("{}/v1/responses", gw.url))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let sent =
        |n: usize| -> Value { serde_json::from_slice(&upstream.received()[n].body).unwrap() };

    // Scoped to `lookup`: the governed tool is not offered, and a call to it
    // anyway is denied for the capability; the client gets its own call only.
    upstream.push(Reply::json(
        response(
            "resp_1",
            vec![
                call(1, "weather__current", r#"{"city":"Paris"}"#),
                call(2, "lookup", r#"{"q":"x"}"#),
            ],
        )
        .to_string(),
    ));
    let response_1 = post(token(&gw.key, &["lookup"]), request()).await.unwrap();
    assert_eq!(response_1.status(), 200);
    let out: Value = response_1.json().await.unwrap();
    assert_eq!(out["id"], "resp_1");
    assert_eq!(output_types(&out), ["function_call"]);
    assert_eq!(out["output"][0]["call_id"], "call_2");
    assert!(!out.to_string().contains("weather__current"));
    let got = &upstream.received()[0];
    assert_eq!(got.headers["authorization"], "Bearer sk-upstream-secret");
    assert_eq!(
        sent(0)["tools"],
        request()["tools"],
        "a governed tool outside the scope is not injected"
    );
    assert!(tool.received().is_empty(), "the denied call did not run");
    let receipts = logged_receipts(gw.dir.path());
    assert_eq!(receipts.len(), 2);
    assert_eq!(receipts[0]["agent_id"], "agent-7");
    assert_eq!(receipts[0]["surface"], "responses");
    assert_eq!(receipts[0]["action"]["tool_name"], "weather__current");
    assert_eq!(receipts[0]["action"]["tool_call_id"], "call_1");
    assert_eq!(receipts[0]["decision"], "deny");
    assert_eq!(receipts[0]["reason"]["code"], "capability");
    assert_eq!(receipts[1]["decision"], "allow");
    assert_eq!(receipts[1]["action"]["tool_call_id"], "call_2");

    // The client's answer continues the response; the model gets the denial
    // for the call it made, beside the client's output.
    upstream.push(Reply::json(
        response("resp_2", vec![message("msg_2", "ok")]).to_string(),
    ));
    let mut follow = request();
    follow["previous_response_id"] = json!("resp_1");
    follow["input"] =
        json!([{"type": "function_call_output", "call_id": "call_2", "output": "found"}]);
    let response_2 = post(token(&gw.key, &["lookup"]), follow).await.unwrap();
    assert_eq!(response_2.status(), 200);
    let answers = outputs(&sent(1));
    assert_eq!(answers[0].0, "call_1");
    let denial: Value = serde_json::from_str(&answers[0].1).unwrap();
    assert_eq!(denial["error"]["type"], "tool_call_denied");
    assert_eq!(denial["error"]["code"], "capability");
    assert_eq!(denial["error"]["receipt_id"], receipts[0]["receipt_id"]);
    assert_eq!(answers[1], ("call_2".to_owned(), "found".to_owned()));

    // A scope that reaches the governed tool gets it offered and run.
    upstream.push(Reply::json(
        response(
            "resp_3",
            vec![call(3, "weather__current", r#"{"city":"Paris"}"#)],
        )
        .to_string(),
    ));
    upstream.push(Reply::json(
        response("resp_4", vec![message("msg_4", "18 C")]).to_string(),
    ));
    let response_3 = post(token(&gw.key, &["lookup", "weather__*"]), request())
        .await
        .unwrap();
    assert_eq!(response_3.status(), 200);
    let out: Value = response_3.json().await.unwrap();
    assert_eq!(output_types(&out), ["message"]);
    assert!(sent(2).to_string().contains("weather__current"));
    assert_eq!(
        outputs(&sent(3)),
        [("call_3".into(), r#"{"temp_c":18}"#.into())]
    );
    assert_eq!(tool.received().len(), 1);

    // A fetch by id of a response tollgate did not change goes upstream with
    // tollgate's key, and comes back without the governed tool it added.
    let mut stored = response("resp_5", vec![message("msg_5", "Hi.")]);
    stored["tools"] = json!([
        {"type": "function", "name": "lookup", "parameters": {"type": "object"}},
        {"type": "function", "name": "weather__current", "parameters": {"type": "object"}},
    ]);
    upstream.push(Reply::json(stored.to_string()));
    let fetched = client()
        .get(format!("{}/v1/responses/resp_5", gw.url))
        .bearer_auth(token(&gw.key, &["lookup", "weather__*"]))
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), 200);
    let fetched: Value = fetched.json().await.unwrap();
    assert_eq!(fetched["tools"], json!([stored["tools"][0]]));
    let got = upstream.received().pop().unwrap();
    assert_eq!(got.method, http::Method::GET);
    assert_eq!(got.headers["authorization"], "Bearer sk-upstream-secret");

    assert_log_verifies(gw.dir.path(), "issuer.pem");
    gw.binary.signal("TERM");
    assert!(gw.binary.wait_exit().success());
}
