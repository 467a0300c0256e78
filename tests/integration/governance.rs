//! Governed Chat Completions through the real server, plain responses: the mock
//! upstream answers round by round from a script, and each test checks what the
//! client receives, what the upstream was sent, and the receipt log (which must
//! verify afterwards).

use std::path::Path;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::mock::{MockUpstream, Reply, StreamFeed};
use crate::common::{Binary, TestProxy, WAIT, client, run_binary};
use tollgate::cli::ServeArgs;

pub const POLICY: &str = r#"
hushspec: "0.1.0"
rules:
  tool_access:
    block: [shell_exec]
    require_confirmation: [deploy]
    default: allow
  shell_commands:
    forbidden_patterns: ['rm\s+-rf']
"#;

pub const ADMIN_TOKEN: &str = "admin-token-0123456789";

/// A governed proxy in front of a scripted upstream.
pub struct Gov {
    pub upstream: MockUpstream,
    pub proxy: TestProxy,
    pub tool: Option<MockUpstream>,
    _dir: tempfile::TempDir,
}

/// The configuration lines of the governed weather tool served by `tool`.
pub fn weather_tool(tool: &MockUpstream, timeout_ms: u64) -> String {
    format!(
        "[[tools.http]]\nname = \"weather__current\"\nurl = \"{}/weather\"\ndescription = \"Current weather for a city\"\nparameters = {{ type = \"object\", properties = {{ city = {{ type = \"string\" }} }}, required = [\"city\"] }}\nhas_side_effects = false\ntimeout_ms = {timeout_ms}\n",
        tool.url()
    )
}

/// A governed budget of 64 KiB (with the body limit it must cover).
pub const TIGHT_BUDGET: &str = "max_body_bytes = 16384\nmax_governed_bytes = 65536";

/// Argument fragments of a call 96 KiB long, more than [`TIGHT_BUDGET`] holds:
/// twelve copies of `piece` (8 KiB) inside a JSON object.
pub fn oversized_arguments(piece: &str) -> Vec<&str> {
    let mut fragments = vec!["{\"q\":\""];
    fragments.extend(std::iter::repeat_n(piece, 12));
    fragments.push("\"}");
    fragments
}

/// Starts a proxy with `policy` and the weather tool, served by a tool server that
/// answers `{"temp_c":18}` once.
pub async fn start_with_weather(policy: &str) -> Gov {
    let tool = MockUpstream::start().await;
    tool.push(Reply::json(r#"{"temp_c":18}"#));
    start(policy, "", Some(tool)).await
}

/// A tool server that answers 500 (`boom`) once, then never answers.
pub async fn failing_then_hanging_tool() -> MockUpstream {
    let tool = MockUpstream::start().await;
    tool.push(Reply::Full {
        status: 500,
        headers: vec![],
        body: "boom".into(),
    });
    tool.push(Reply::Hang);
    tool
}

/// Starts a proxy with `policy`, top-level `settings` lines, and the weather tool
/// when a tool server is given.
pub async fn start(policy: &str, settings: &str, tool: Option<MockUpstream>) -> Gov {
    let dir = tempfile::tempdir().unwrap();
    let policy_file = dir.path().join("policy.yaml");
    std::fs::write(&policy_file, policy).unwrap();
    let mut toml = format!("policy = {:?}\n{settings}\n", policy_file.display());
    if let Some(tool) = &tool {
        toml.push_str(&weather_tool(tool, 1000));
    }
    let upstream = MockUpstream::start().await;
    let proxy = TestProxy::start_with(
        ServeArgs {
            listen: Some("127.0.0.1:0".into()),
            upstream: Some(upstream.url()),
            ..ServeArgs::default()
        },
        &toml,
    )
    .await;
    Gov {
        upstream,
        proxy,
        tool,
        _dir: dir,
    }
}

impl Gov {
    /// Sends a Chat Completions request as a client would.
    pub async fn chat(&self, body: &Value) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let response = client()
            .post(format!("{}/v1/chat/completions", self.proxy.url))
            .bearer_auth("sk-test-key")
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, headers, value)
    }

    /// What the upstream was sent, parsed.
    pub fn sent(&self) -> Vec<Value> {
        self.upstream
            .received()
            .iter()
            .map(|r| serde_json::from_slice(&r.body).unwrap())
            .collect()
    }

    /// Asserts that the upstream was sent one request, `body` byte for byte as
    /// the client sent it, with the client's key.
    pub fn assert_sent_as_written(&self, body: &Value) {
        let received = self.upstream.received();
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].method, "POST");
        assert_eq!(received[0].target, "/v1/chat/completions");
        assert_eq!(received[0].headers["authorization"], "Bearer sk-test-key");
        assert_eq!(received[0].headers["content-type"], "application/json");
        assert_eq!(
            received[0].body,
            serde_json::to_vec(body).unwrap(),
            "the client's body, unchanged"
        );
    }

    /// Makes the upstream's next answer an event stream that the test feeds.
    pub fn feed_stream(&self) -> StreamFeed {
        let (reply, feed) = Reply::stream(
            200,
            vec![("content-type".into(), "text/event-stream".into())],
        );
        self.upstream.push(reply);
        feed
    }

    /// Queues upstream answers.
    pub fn script(&self, answers: Vec<Value>) {
        for answer in answers {
            self.upstream.push(Reply::json(answer.to_string()));
        }
    }
}

/// A model turn with these calls: `(id, name, arguments)`.
pub fn calls(calls: &[(&str, &str, &str)]) -> Value {
    let list: Vec<Value> = calls
        .iter()
        .map(|(id, name, args)| json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}}))
        .collect();
    json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": list}, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})
}

/// A final text turn.
pub fn text(content: &str) -> Value {
    json!({"id": "chatcmpl-2", "object": "chat.completion", "created": 2, "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27}})
}

/// A client request declaring the client's own tools `lookup`, `shell_exec`
/// and `deploy`.
pub fn request() -> Value {
    let tool = |name: &str| json!({"type": "function", "function": {"name": name, "parameters": {"type": "object"}}});
    json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "go"}],
        "tools": [tool("lookup"), tool("shell_exec"), tool("deploy")]})
}

/// The `(tool_call_id, content)` of every tool message of a request.
pub fn tool_messages(request: &Value) -> Vec<(String, String)> {
    request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| {
            (
                m["tool_call_id"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Checks the pairing rules on a conversation the upstream was sent: every
/// assistant call answered by exactly one tool message right after it, and no
/// tool message without its call.
pub fn assert_paired(request: &Value) {
    let messages = request["messages"].as_array().unwrap();
    let mut i = 0;
    while i < messages.len() {
        let m = &messages[i];
        assert_ne!(m["role"], "tool", "a tool message without its call at {i}");
        i += 1;
        if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
            let mut ids: Vec<&str> = calls.iter().map(|c| c["id"].as_str().unwrap()).collect();
            while i < messages.len() && messages[i]["role"] == "tool" {
                let id = messages[i]["tool_call_id"].as_str().unwrap();
                let at = ids
                    .iter()
                    .position(|x| *x == id)
                    .unwrap_or_else(|| panic!("tool message {id} answers no open call"));
                ids.remove(at);
                i += 1;
            }
            assert!(ids.is_empty(), "calls left unanswered: {ids:?}");
        }
    }
}

#[tokio::test]
async fn an_allowed_client_call_reaches_the_client_with_its_receipt() {
    let g = start(POLICY, "", None).await;
    g.script(vec![calls(&[("call_a", "lookup", r#"{"q":"x"}"#)])]);
    let (status, headers, out) = g.chat(&request()).await;
    assert_eq!(status, 200);
    assert_eq!(
        out["choices"][0]["message"]["tool_calls"][0]["id"],
        "call_a"
    );
    assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
    let receipts = g.proxy.receipt_lines();
    assert_eq!(receipts.len(), 1);
    assert_eq!(receipts[0]["decision"], "allow");
    assert_eq!(receipts[0]["action"]["tool_call_id"], "call_a");
    assert_eq!(
        receipts[0]["request_id"],
        headers["x-tollgate-request-id"].to_str().unwrap()
    );
    // The agent id is derived from the key; the key itself is nowhere.
    let agent = receipts[0]["agent_id"].as_str().unwrap();
    assert!(agent.starts_with("key:") && agent.len() == 20, "{agent}");
    let log = std::fs::read_to_string(&g.proxy.receipts).unwrap();
    assert!(!log.contains("sk-test-key"));
    // The upstream was sent the request once, as the client wrote it: nothing to
    // splice and no governed tool to inject, so its bytes and its key go as they came.
    g.assert_sent_as_written(&request());
    g.proxy.verify_receipts();
}

#[tokio::test]
async fn a_denied_call_goes_back_to_the_model_and_the_client_gets_the_final_answer() {
    let g = start(POLICY, "", None).await;
    g.script(vec![
        calls(&[("call_x", "shell_exec", r#"{"cmd":"ls"}"#)]),
        text("I cannot run that."),
    ]);
    let (status, _, out) = g.chat(&request()).await;
    assert_eq!(status, 200);
    assert_eq!(
        out["choices"][0]["message"]["content"],
        "I cannot run that."
    );
    assert!(out["choices"][0]["message"].get("tool_calls").is_none());
    assert_eq!(out["usage"]["total_tokens"], 42, "usage summed over rounds");
    let sent = g.sent();
    assert_eq!(sent.len(), 2);
    assert_paired(&sent[1]);
    let answers = tool_messages(&sent[1]);
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].0, "call_x");
    let denial: Value = serde_json::from_str(&answers[0].1).unwrap();
    assert_eq!(denial["error"]["type"], "tool_call_denied");
    assert_eq!(denial["error"]["code"], "tool_access.block");
    assert!(denial["error"]["recovery"].as_array().unwrap().len() >= 2);
    let receipts = g.proxy.receipt_lines();
    assert_eq!(receipts.len(), 1);
    assert_eq!(receipts[0]["decision"], "deny");
    assert_eq!(denial["error"]["receipt_id"], receipts[0]["receipt_id"]);
    g.proxy.verify_receipts();
}

#[tokio::test]
async fn a_forbidden_argument_is_denied_with_the_rule_that_matched() {
    let g = start(POLICY, "", None).await;
    g.script(vec![
        calls(&[("call_l", "lookup", r#"{"q":"please rm -rf the build"}"#)]),
        text("Not allowed."),
    ]);
    let (_, _, out) = g.chat(&request()).await;
    assert_eq!(out["choices"][0]["message"]["content"], "Not allowed.");
    let denial: Value = serde_json::from_str(&tool_messages(&g.sent()[1])[0].1).unwrap();
    assert_eq!(
        denial["error"]["code"],
        "shell_commands.forbidden_patterns[0]"
    );
    g.proxy.verify_receipts();
}

#[tokio::test]
async fn a_governed_tool_runs_and_only_the_final_answer_reaches_the_client() {
    let tool = MockUpstream::start().await;
    tool.push(Reply::json("{\"temp_c\":18}"));
    let g = start(POLICY, "", Some(tool)).await;
    g.script(vec![
        calls(&[("call_w", "weather__current", r#"{"city":"Paris"}"#)]),
        text("18 degrees."),
    ]);
    let (_, _, out) = g.chat(&request()).await;
    assert_eq!(out["choices"][0]["message"]["content"], "18 degrees.");
    let sent = g.sent();
    let names: Vec<&str> = sent[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["lookup", "shell_exec", "deploy", "weather__current"]
    );
    assert_eq!(
        tool_messages(&sent[1]),
        [("call_w".to_owned(), "{\"temp_c\":18}".to_owned())]
    );
    assert_paired(&sent[1]);
    // The tool got the model's arguments as JSON.
    let tool_request = &g.tool.as_ref().unwrap().received()[0];
    assert_eq!(tool_request.target, "/weather");
    let args: Value = serde_json::from_slice(&tool_request.body).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));
    let receipts = g.proxy.receipt_lines();
    assert_eq!(receipts[0]["metadata"]["route"], "governed");
    g.proxy.verify_receipts();
}

#[tokio::test]
async fn governed_tool_failures_and_timeouts_become_error_outputs() {
    let g = start(POLICY, "", Some(failing_then_hanging_tool().await)).await;
    g.script(vec![
        calls(&[("call_1", "weather__current", r#"{"city":"Paris"}"#)]),
        text("It failed."),
        calls(&[("call_2", "weather__current", r#"{"city":"Oslo"}"#)]),
        text("It timed out."),
        calls(&[("call_3", "weather__current", r#"{"town":"Oslo"}"#)]),
        text("Bad arguments."),
    ]);
    for (expected, final_text) in [
        ("tool_failed", "It failed."),
        ("tool_timeout", "It timed out."),
        ("invalid_arguments", "Bad arguments."),
    ] {
        let (status, _, out) = tokio::time::timeout(WAIT, g.chat(&request()))
            .await
            .expect("a failing tool must not hang the request");
        assert_eq!(status, 200);
        // The client gets the model's final answer, and no call.
        assert_eq!(out["choices"][0]["message"]["content"], final_text, "{out}");
        assert!(out["choices"][0]["message"].get("tool_calls").is_none());
        assert_eq!(out["choices"][0]["finish_reason"], "stop");
        let sent = g.sent();
        let answer = &tool_messages(sent.last().unwrap())[0].1;
        assert!(answer.contains(expected), "{expected}: {answer}");
    }
    // Schema-invalid arguments never reached the tool.
    assert_eq!(g.tool.as_ref().unwrap().received().len(), 2);
    g.proxy.verify_receipts();
}

#[tokio::test]
async fn parallel_calls_with_one_denied_then_the_follow_up_is_spliced() {
    let g = start(POLICY, "", None).await;
    g.script(vec![
        calls(&[
            ("call_a", "lookup", r#"{"q":"x"}"#),
            ("call_b", "shell_exec", r#"{"cmd":"rm"}"#),
        ]),
        text("Found it."),
    ]);
    let (_, _, out) = g.chat(&request()).await;
    let seen = out["choices"][0]["message"]["tool_calls"]
        .as_array()
        .unwrap();
    assert_eq!(seen.len(), 1, "only the client's allowed call");
    assert_eq!(seen[0]["id"], "call_a");
    assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
    let receipts = g.proxy.receipt_lines();
    assert_eq!(receipts.len(), 2, "one receipt per call");
    assert_eq!(
        (
            receipts[0]["decision"].as_str(),
            receipts[1]["decision"].as_str()
        ),
        (Some("allow"), Some("deny"))
    );

    // The client answers its own call; the upstream sees the whole turn.
    let mut follow_up = request();
    let messages = follow_up["messages"].as_array_mut().unwrap();
    messages.push(out["choices"][0]["message"].clone());
    messages.push(json!({"role": "tool", "tool_call_id": "call_a", "content": "result a"}));
    let (_, _, out) = g.chat(&follow_up).await;
    assert_eq!(out["choices"][0]["message"]["content"], "Found it.");
    let sent = g.sent();
    assert_eq!(sent.len(), 2);
    assert_paired(&sent[1]);
    assert_eq!(
        sent[1]["messages"][1]["tool_calls"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let answers = tool_messages(&sent[1]);
    let ids: Vec<&str> = answers.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["call_a", "call_b"]);
    assert_eq!(answers[0].1, "result a");
    assert!(answers[1].1.contains("tool_call_denied"));
    g.proxy.verify_receipts();
}

/// The client's follow-up to `out`: its assistant message and a result for
/// call `id`.
fn follow_up(out: &Value, id: &str) -> Value {
    let mut body = request();
    let messages = body["messages"].as_array_mut().unwrap();
    messages.push(out["choices"][0]["message"].clone());
    messages.push(json!({"role": "tool", "tool_call_id": id, "content": "done"}));
    body
}

/// The call ids of a request's tool messages, in order.
fn ids(request: &Value) -> Vec<String> {
    tool_messages(request)
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

#[tokio::test]
async fn past_remember_turns_the_oldest_turn_is_forgotten() {
    let g = start(POLICY, "remember_turns = 1", None).await;
    g.script(vec![
        calls(&[("call_a", "lookup", "{}"), ("call_b", "shell_exec", "{}")]),
        calls(&[("call_c", "lookup", "{}"), ("call_d", "shell_exec", "{}")]),
        text("First."),
        text("Second."),
    ]);
    let (_, _, first) = g.chat(&request()).await;
    let (_, _, second) = g.chat(&request()).await;
    // The second turn took the only place: the first one's follow-up goes
    // upstream as the client sent it, the second one's is completed.
    let (status, _, _) = g.chat(&follow_up(&first, "call_a")).await;
    assert_eq!(status, 200);
    let (status, _, _) = g.chat(&follow_up(&second, "call_c")).await;
    assert_eq!(status, 200);
    let sent = g.sent();
    assert_eq!(sent.len(), 4);
    assert_eq!(ids(&sent[2]), ["call_a"]);
    assert_eq!(ids(&sent[3]), ["call_c", "call_d"]);
    assert_paired(&sent[3]);
    g.proxy.verify_receipts();
}

#[tokio::test]
async fn past_remember_bytes_the_oldest_turns_are_forgotten() {
    // Each turn below holds a little over 40 KiB: two do not fit in 64 KiB.
    let g = start(POLICY, "remember_bytes = 65536", None).await;
    let big = json!({"q": "a".repeat(40 * 1024)}).to_string();
    let huge = json!({"q": "a".repeat(70 * 1024)}).to_string();
    g.script(vec![
        calls(&[("call_a", "lookup", &big), ("call_b", "shell_exec", "{}")]),
        calls(&[("call_c", "lookup", &big), ("call_d", "shell_exec", "{}")]),
        calls(&[("call_e", "lookup", &huge), ("call_f", "shell_exec", "{}")]),
        text("First."),
        text("Second."),
        text("Third."),
    ]);
    let (_, _, first) = g.chat(&request()).await;
    let (_, _, second) = g.chat(&request()).await;
    let (_, _, third) = g.chat(&request()).await;
    for (out, id) in [(&first, "call_a"), (&second, "call_c"), (&third, "call_e")] {
        let (status, _, _) = g.chat(&follow_up(out, id)).await;
        assert_eq!(status, 200);
    }
    let sent = g.sent();
    assert_eq!(sent.len(), 6);
    // The second turn pushed the first out; the third, larger than the whole
    // bound, was never remembered and pushed nothing out.
    assert_eq!(ids(&sent[3]), ["call_a"]);
    assert_eq!(ids(&sent[4]), ["call_c", "call_d"]);
    assert_paired(&sent[4]);
    assert_eq!(ids(&sent[5]), ["call_e"]);
    g.proxy.verify_receipts();
}

#[tokio::test]
async fn a_follow_up_missing_a_result_of_a_remembered_turn_is_a_400() {
    let g = start(POLICY, "", None).await;
    g.script(vec![calls(&[
        ("call_a", "lookup", "{}"),
        ("call_c", "lookup", "{}"),
        ("call_b", "shell_exec", "{}"),
    ])]);
    let (_, _, out) = g.chat(&request()).await;
    let mut follow_up = request();
    let messages = follow_up["messages"].as_array_mut().unwrap();
    messages.push(out["choices"][0]["message"].clone());
    messages.push(json!({"role": "tool", "tool_call_id": "call_a", "content": "a"}));
    let (status, _, body) = g.chat(&follow_up).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "incomplete_tool_results");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("call_c")
    );
    assert_eq!(g.sent().len(), 1, "nothing went upstream");
}

#[tokio::test]
async fn the_loop_stops_after_max_rounds_and_says_so() {
    let g = start(POLICY, "max_rounds = 3", None).await;
    g.script(
        (0..3)
            .map(|i| calls(&[(&format!("call_{i}"), "shell_exec", "{}")]))
            .collect(),
    );
    let (status, _, out) = g.chat(&request()).await;
    assert_eq!(status, 200);
    let content = out["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.contains("after 3 rounds"), "{content}");
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    assert!(out["choices"][0]["message"].get("tool_calls").is_none());
    assert_eq!(g.sent().len(), 3);
    assert_eq!(out["usage"]["total_tokens"], 45);
    let receipts = g.proxy.receipt_lines();
    assert_eq!(receipts.len(), 4);
    assert_eq!(receipts[3]["reason"]["code"], "max_rounds");
    g.proxy.verify_receipts();
}

#[tokio::test]
async fn velocity_over_the_limit_is_denied() {
    let policy = format!("{POLICY}  velocity:\n    max_invocations: 2\n    window_seconds: 60\n");
    let g = start(&policy, "", None).await;
    for n in 0..3 {
        g.script(vec![calls(&[(&format!("call_{n}"), "lookup", "{}")])]);
    }
    g.script(vec![text("Slowing down.")]);
    for _ in 0..2 {
        let (_, _, out) = g.chat(&request()).await;
        assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
    }
    let (_, _, out) = g.chat(&request()).await;
    assert_eq!(out["choices"][0]["message"]["content"], "Slowing down.");
    let denial = &tool_messages(g.sent().last().unwrap())[0].1;
    assert!(denial.contains("\"code\":\"velocity\""), "{denial}");
    g.proxy.verify_receipts();
}

#[tokio::test]
async fn clashing_names_and_unreadable_bodies_are_400s_and_nothing_goes_upstream() {
    let tool = MockUpstream::start().await;
    let g = start(POLICY, "", Some(tool)).await;
    let mut clash = request();
    clash["tools"] = json!([{"type": "function", "function": {"name": "weather__current"}}]);
    let (status, _, body) = g.chat(&clash).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "tool_name_conflict");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("weather__current")
    );
    // Every other place a client names a tool: the legacy `functions` list, and
    // on the Responses API a flat function tool and a tool inside a namespace.
    let mut legacy = request();
    legacy.as_object_mut().unwrap().remove("tools");
    legacy["functions"] = json!([{"name": "weather__current", "parameters": {}}]);
    let (status, _, body) = g.chat(&legacy).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "tool_name_conflict");
    for tools in [
        json!([{"type": "function", "name": "weather__current", "parameters": {}}]),
        json!([{"type": "namespace", "name": "mine", "description": "d",
                "tools": [{"type": "function", "name": "weather__current", "parameters": {}}]}]),
    ] {
        let response = client()
            .post(format!("{}/v1/responses", g.proxy.url))
            .json(&json!({"model": "gpt-4o", "input": "hi", "tools": tools}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "tool_name_conflict", "{body}");
    }
    let response = client()
        .post(format!("{}/v1/chat/completions", g.proxy.url))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let mut several = request();
    several["n"] = json!(2);
    let (status, _, body) = g.chat(&several).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], Value::Null);
    assert!(g.upstream.received().is_empty());
}

#[tokio::test]
async fn an_upstream_error_in_the_first_round_reaches_the_client_unchanged() {
    let g = start(POLICY, "", None).await;
    let body = r#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
    g.upstream.push(Reply::Full {
        status: 429,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("retry-after".into(), "3".into()),
        ],
        body: body.into(),
    });
    let response = client()
        .post(format!("{}/v1/chat/completions", g.proxy.url))
        .json(&request())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "3");
    assert_eq!(response.text().await.unwrap(), body);
}

#[tokio::test]
async fn a_response_without_tool_calls_keeps_its_bytes() {
    let g = start(POLICY, "", None).await;
    let body = "{\"id\":\"chatcmpl-9\",\n \"object\":\"chat.completion\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"hi\"},\"finish_reason\":\"stop\"}]}";
    g.upstream.push(Reply::json(body));
    let response = client()
        .post(format!("{}/v1/chat/completions", g.proxy.url))
        .json(&request())
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), body);
    assert!(g.proxy.receipt_lines().is_empty());
}

// The command line is run synchronously while the server in this process answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_goes_from_pending_to_approved_to_consumed() {
    let g = start(POLICY, &format!("admin_token = {ADMIN_TOKEN:?}"), None).await;
    let deploy = || calls(&[("call_d", "deploy", r#"{"env":"prod"}"#)]);
    g.script(vec![deploy(), text("Waiting for approval.")]);
    let (_, _, out) = g.chat(&request()).await;
    assert_eq!(
        out["choices"][0]["message"]["content"],
        "Waiting for approval."
    );
    let pending: Value = serde_json::from_str(&tool_messages(&g.sent()[1])[0].1).unwrap();
    assert_eq!(pending["error"]["type"], "tool_call_pending_approval");
    assert_eq!(pending["error"]["code"], "approval_pending");
    let id = pending["error"]["approval_id"].as_str().unwrap().to_owned();

    // The admin API wants its token.
    let http = client();
    let list = |token: &str| {
        http.get(format!("{}/tollgate/approvals", g.proxy.url))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(list("wrong-token-0123456789").await.unwrap().status(), 401);
    let listed: Value = list(ADMIN_TOKEN).await.unwrap().json().await.unwrap();
    assert_eq!(listed["data"][0]["id"], id.as_str());
    assert_eq!(listed["data"][0]["state"], "pending");
    assert_eq!(listed["data"][0]["tool"], "deploy");

    // The command line, against the running server.
    let dir = tempfile::tempdir().unwrap();
    let env = [("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)];
    let (code, out, err) = run_binary(
        &["approvals", "list", "--url", &g.proxy.url],
        dir.path(),
        &env,
    );
    assert!(code.success(), "{err}");
    assert!(out.contains(&id) && out.contains("pending"), "{out}");
    let (code, out, err) = run_binary(
        &["approvals", "approve", &id, "--url", &g.proxy.url],
        dir.path(),
        &env,
    );
    assert!(code.success(), "{err}");
    assert!(out.contains("approved"), "{out}");
    let (code, _, err) = run_binary(
        &["approvals", "reject", &id, "--url", &g.proxy.url],
        dir.path(),
        &env,
    );
    assert!(!code.success(), "an approved request cannot be rejected");
    assert!(err.contains("not pending"), "{err}");

    // The same call again runs once: relayed to the client, which owns deploy.
    g.script(vec![deploy()]);
    let (_, _, out) = g.chat(&request()).await;
    assert_eq!(
        out["choices"][0]["message"]["tool_calls"][0]["id"],
        "call_d"
    );
    // And once only.
    g.script(vec![deploy(), text("Waiting again.")]);
    let (_, _, out) = g.chat(&request()).await;
    assert_eq!(out["choices"][0]["message"]["content"], "Waiting again.");

    let receipts = g.proxy.receipt_lines();
    assert_eq!(
        decisions(&receipts),
        ["pending", "system", "allow", "pending"]
    );
    assert_eq!(receipts[1]["reason"]["code"], "approval_approved");
    assert_eq!(receipts[2]["reason"]["code"], "approval_granted");
    assert_eq!(receipts[2]["metadata"]["approval_id"], id.as_str());
    let states: Vec<String> = approvals(&g).await.into_iter().map(|(_, s)| s).collect();
    assert_eq!(states, ["pending", "consumed"]);
    g.proxy.verify_receipts();
}

/// The approval requests the admin API lists, newest first: `(id, state)`.
pub async fn approvals(g: &Gov) -> Vec<(String, String)> {
    let listed: Value = client()
        .get(format!("{}/tollgate/approvals", g.proxy.url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_owned(),
                r["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The decision of each receipt.
pub fn decisions(receipts: &[Value]) -> Vec<&str> {
    receipts
        .iter()
        .map(|r| r["decision"].as_str().unwrap())
        .collect()
}

/// The `(decision, reason code)` of each receipt.
pub fn decisions_and_reasons(receipts: &[Value]) -> Vec<(&str, &str)> {
    receipts
        .iter()
        .map(|r| {
            (
                r["decision"].as_str().unwrap(),
                r["reason"]["code"].as_str().unwrap(),
            )
        })
        .collect()
}

/// A call to `deploy` with these arguments, which the policy makes wait for approval.
fn deploy_to(env: &str) -> Value {
    calls(&[("call_d", "deploy", &format!("{{\"env\":\"{env}\"}}"))])
}

/// Sends `deploy_to(env)` then `reply`; returns the refusal the model was sent.
async fn deploy_refused(g: &Gov, env: &str, reply: &str) -> Value {
    g.script(vec![deploy_to(env), text(reply)]);
    let (status, _, out) = g.chat(&request()).await;
    assert_eq!(status, 200);
    assert_eq!(out["choices"][0]["message"]["content"], reply);
    assert!(
        out["choices"][0]["message"].get("tool_calls").is_none(),
        "the call never reaches the client: {out}"
    );
    let sent = g.sent();
    let round2 = sent.last().unwrap();
    assert_paired(round2);
    let answers = tool_messages(round2);
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].0, "call_d");
    serde_json::from_str(&answers[0].1).unwrap()
}

// The command line is run synchronously while the server in this process answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_approval_denies_the_same_call_again_by_api_and_command_line() {
    let g = start(POLICY, &format!("admin_token = {ADMIN_TOKEN:?}"), None).await;
    let http = client();
    let settle = |id: &str, verb: &str, token: &str| {
        http.post(format!("{}/tollgate/approvals/{id}/{verb}", g.proxy.url))
            .bearer_auth(token)
            .send()
    };

    // Over the admin API.
    let pending = deploy_refused(&g, "prod", "Waiting for approval.").await;
    assert_eq!(pending["error"]["code"], "approval_pending");
    let first = pending["error"]["approval_id"].as_str().unwrap().to_owned();
    let response = settle(&first, "reject", "wrong-token-0123456789")
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = settle(&first, "reject", ADMIN_TOKEN).await.unwrap();
    assert_eq!(response.status(), 200);
    let settled: Value = response.json().await.unwrap();
    assert_eq!(settled["id"], first.as_str());
    assert_eq!(settled["state"], "rejected");
    // A rejected request cannot be approved afterwards.
    let response = settle(&first, "approve", ADMIN_TOKEN).await.unwrap();
    assert_eq!(response.status(), 409);
    // The same call again is denied, citing the rejection; it does not run.
    let denied = deploy_refused(&g, "prod", "The operator said no.").await;
    assert_eq!(denied["error"]["type"], "tool_call_denied");
    assert_eq!(denied["error"]["code"], "approval_rejected");
    assert!(
        denied["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&first)
    );

    // With the command line: another call (other arguments) is another request.
    let pending = deploy_refused(&g, "staging", "Waiting again.").await;
    assert_eq!(pending["error"]["code"], "approval_pending");
    let second = pending["error"]["approval_id"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run_binary(
        &["approvals", "reject", &second, "--url", &g.proxy.url],
        dir.path(),
        &[("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    assert!(code.success(), "{err}");
    assert_eq!(out.trim(), format!("{second}: rejected"));
    for _ in 0..2 {
        let denied = deploy_refused(&g, "staging", "Still refused.").await;
        assert_eq!(denied["error"]["code"], "approval_rejected");
        assert!(
            denied["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&second)
        );
    }

    // The receipts: each request pending, its rejection, then denials.
    let receipts = g.proxy.receipt_lines();
    assert_eq!(
        decisions_and_reasons(&receipts),
        [
            ("pending", "approval_pending"),
            ("system", "approval_rejected"),
            ("deny", "approval_rejected"),
            ("pending", "approval_pending"),
            ("system", "approval_rejected"),
            ("deny", "approval_rejected"),
            ("deny", "approval_rejected"),
        ]
    );
    for (at, id) in [
        (0, &first),
        (1, &first),
        (2, &first),
        (3, &second),
        (4, &second),
        (5, &second),
        (6, &second),
    ] {
        assert_eq!(receipts[at]["metadata"]["approval_id"], id.as_str(), "{at}");
    }
    assert_eq!(receipts[2]["action"]["tool_name"], "deploy");
    // Neither request was consumed.
    assert_eq!(
        approvals(&g).await,
        [
            (second.clone(), "rejected".to_owned()),
            (first.clone(), "rejected".to_owned())
        ]
    );
    g.proxy.verify_receipts();
}

#[tokio::test]
async fn the_approvals_api_is_off_without_an_admin_token() {
    let g = start(POLICY, "", None).await;
    let response = client()
        .get(format!("{}/tollgate/approvals", g.proxy.url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert!(g.upstream.received().is_empty());
}

/// The real binary in `tokens` mode, with its own upstream key.
pub struct TokensGateway {
    pub binary: Binary,
    pub url: String,
    /// Holds the policy, the issuer key and the receipts.
    pub dir: tempfile::TempDir,
    /// The key tokens are issued with.
    pub key: ed25519_dalek::SigningKey,
}

/// A directory for the real binary: a new issuer key in `issuer.pem` (returned),
/// [`POLICY`] in `policy.yaml` and `toml` in `tollgate.toml`.
fn binary_dir(toml: &str) -> (tempfile::TempDir, ed25519_dalek::SigningKey) {
    let dir = tempfile::tempdir().unwrap();
    let key = tollgate::keys::generate().unwrap();
    tollgate::keys::write_signing(&dir.path().join("issuer.pem"), &key, false).unwrap();
    std::fs::write(dir.path().join("policy.yaml"), POLICY).unwrap();
    std::fs::write(dir.path().join("tollgate.toml"), toml).unwrap();
    (dir, key)
}

/// Starts the real binary in `tokens` mode in front of `upstream`, with
/// tollgate's own upstream key and the weather tool served by `tool`.
pub fn tokens_gateway(upstream: &MockUpstream, tool: &MockUpstream) -> TokensGateway {
    let (dir, key) = binary_dir(&format!(
        "auth = \"tokens\"\nupstream_key_env = \"TG_TEST_UPSTREAM_KEY\"\npolicy = \"policy.yaml\"\nsigning_key = \"issuer.pem\"\nreceipts = \"receipts.jsonl\"\n{}",
        weather_tool(tool, 1000)
    ));
    let mut binary = Binary::serve(
        &upstream.url(),
        &[],
        dir.path(),
        &[("TG_TEST_UPSTREAM_KEY", "sk-upstream-secret")],
    );
    let url = binary.wait_listening();
    TokensGateway {
        binary,
        url,
        dir,
        key,
    }
}

/// The receipts the binary wrote to `receipts.jsonl` in `dir`.
pub fn logged_receipts(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("receipts.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Asserts that `tollgate receipts verify` accepts `receipts.jsonl` in `dir`
/// with the public half of the key in `key_file`.
pub fn assert_log_verifies(dir: &Path, key_file: &str) {
    let (code, out, err) = run_binary(
        &[
            "receipts",
            "verify",
            "receipts.jsonl",
            "--public-key",
            key_file,
        ],
        dir,
        &[],
    );
    assert!(code.success(), "{out}{err}");
}

/// A token for `agent-7` issued with `key`, scoped to `tools`, valid 10 minutes.
pub fn token(key: &ed25519_dalek::SigningKey, tools: &[&str]) -> String {
    let tools: Vec<String> = tools.iter().map(|t| (*t).to_owned()).collect();
    tollgate::kernel::token::issue(
        key,
        "agent-7",
        &tools,
        "tollgate",
        std::time::Duration::from_secs(600),
        std::time::SystemTime::now(),
    )
    .unwrap()
}

#[tokio::test]
async fn tokens_mode_refuses_without_a_valid_token_and_bounds_tools_by_scope() {
    let upstream = MockUpstream::start().await;
    let tool = MockUpstream::start().await;
    let mut gw = tokens_gateway(&upstream, &tool);
    let http = client();
    let post = |auth: Option<String>| {
        let mut r = http
            .post(format!("{}/v1/chat/completions", gw.url))
            .json(&request());
        if let Some(a) = auth {
            r = r.bearer_auth(a);
        }
        r.send()
    };
    // No token, a client's own OpenAI key, a forged token, a token of another issuer.
    let other = tollgate::keys::generate().unwrap();
    // A token whose claims were altered (one character of the claims part).
    let genuine = token(&gw.key, &["lookup"]);
    let at = "tg1_".len() + 10;
    let swapped = if genuine.as_bytes()[at] == b'A' {
        "B"
    } else {
        "A"
    };
    let forged = format!("{}{swapped}{}", &genuine[..at], &genuine[at + 1..]);
    for auth in [
        None,
        Some("sk-proj-client-key".to_owned()),
        Some(forged),
        Some(token(&other, &["lookup"])),
    ] {
        let response = post(auth).await.unwrap();
        assert_eq!(response.status(), 401);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(body["error"]["code"].as_str().unwrap().ends_with("api_key"));
    }
    let models = http
        .get(format!("{}/v1/models", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 401, "every endpoint needs a token");
    let responses = http
        .post(format!("{}/v1/responses", gw.url))
        .bearer_auth("sk-proj-client-key")
        .json(&json!({"model": "gpt-4o", "input": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(responses.status(), 401, "the Responses API too");
    assert!(
        upstream.received().is_empty(),
        "no upstream call without a token"
    );

    // A valid token scoped to lookup only: the governed tool is not offered, a
    // call outside the scope is denied, and upstream sees tollgate's own key.
    upstream.push(Reply::json(
        calls(&[("call_s", "shell_exec", "{}"), ("call_l", "lookup", "{}")]).to_string(),
    ));
    let response = post(Some(token(&gw.key, &["lookup"]))).await.unwrap();
    assert_eq!(response.status(), 200);
    let out: Value = response.json().await.unwrap();
    let seen = out["choices"][0]["message"]["tool_calls"]
        .as_array()
        .unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["function"]["name"], "lookup");
    let got = &upstream.received()[0];
    assert_eq!(got.headers["authorization"], "Bearer sk-upstream-secret");
    let sent: Value = serde_json::from_slice(&got.body).unwrap();
    assert!(
        !sent.to_string().contains("weather__current"),
        "a governed tool outside the scope is not injected"
    );
    let receipts = logged_receipts(gw.dir.path());
    assert_eq!(receipts[0]["agent_id"], "agent-7");
    assert_eq!(receipts[0]["decision"], "deny");
    assert_eq!(receipts[0]["reason"]["code"], "capability");
    assert_eq!(receipts[1]["decision"], "allow");

    // A client tool named like a governed tool is refused even when this
    // caller's scope does not reach the governed one: a call by that name would
    // be taken for it.
    let mut clash = request();
    clash["tools"] = json!([{"type": "function", "function": {"name": "weather__current"}}]);
    let response = http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(token(&gw.key, &["lookup"]))
        .json(&clash)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "tool_name_conflict");
    assert_eq!(upstream.received().len(), 1, "nothing more went upstream");

    // A wider scope sees the governed tool.
    upstream.push(Reply::json(text("ok").to_string()));
    let response = post(Some(token(&gw.key, &["lookup", "weather__*"])))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let sent: Value = serde_json::from_slice(&upstream.received()[1].body).unwrap();
    assert!(sent.to_string().contains("weather__current"));

    assert_log_verifies(gw.dir.path(), "issuer.pem");
    let log = std::fs::read_to_string(gw.dir.path().join("receipts.jsonl")).unwrap();
    assert!(!log.contains("sk-upstream-secret"));
    gw.binary.signal("TERM");
    assert!(gw.binary.wait_exit().success());
}

#[tokio::test]
async fn serve_flags_set_auth_upstream_key_and_max_rounds_over_the_file() {
    // The real binary, with `--auth tokens --upstream-key-env NAME --max-rounds 1`
    // on the command line and other values for the same keys in tollgate.toml:
    // the flags win (flag, then variable, then file).
    let upstream = MockUpstream::start().await;
    let (dir, key) = binary_dir(
        "auth = \"passthrough\"\nupstream_key_env = \"TG_TEST_FILE_KEY\"\nmax_rounds = 4\npolicy = \"policy.yaml\"\nsigning_key = \"issuer.pem\"\nreceipts = \"receipts.jsonl\"\n",
    );
    let mut binary = Binary::serve(
        &upstream.url(),
        &[
            "--auth",
            "tokens",
            "--upstream-key-env",
            "TG_TEST_FLAG_KEY",
            "--max-rounds",
            "1",
        ],
        dir.path(),
        &[
            ("TG_TEST_FLAG_KEY", "sk-upstream-from-flag"),
            ("TG_TEST_FILE_KEY", "sk-upstream-from-file"),
        ],
    );
    let url = binary.wait_listening();
    let http = client();
    let post = |auth: Option<&str>| {
        let mut r = http
            .post(format!("{url}/v1/chat/completions"))
            .json(&request());
        if let Some(a) = auth {
            r = r.bearer_auth(a);
        }
        r.send()
    };

    // `--auth tokens`: no token, or a client's own key (which passthrough would
    // forward), is a 401 and nothing goes upstream.
    for auth in [None, Some("sk-proj-client-key")] {
        let response = post(auth).await.unwrap();
        assert_eq!(response.status(), 401, "{auth:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(body["error"]["code"].as_str().unwrap().ends_with("api_key"));
    }
    assert!(
        upstream.received().is_empty(),
        "no upstream call without a token"
    );

    // `--max-rounds 1`: a model that keeps calling a denied tool is stopped after
    // one round (the file's 4 would have used every queued answer).
    for n in 0..4 {
        upstream.push(Reply::json(
            calls(&[(&format!("call_{n}"), "shell_exec", "{}")]).to_string(),
        ));
    }
    let valid = token(&key, &["lookup", "shell_exec"]);
    let response = post(Some(valid.as_str())).await.unwrap();
    assert_eq!(response.status(), 200);
    let out: Value = response.json().await.unwrap();
    let content = out["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.contains("after 1 rounds"), "{content}");
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    assert!(out["choices"][0]["message"].get("tool_calls").is_none());
    let received = upstream.received();
    assert_eq!(received.len(), 1, "one round only");
    // `--upstream-key-env`: tollgate's own key, from the variable the flag names.
    assert_eq!(
        received[0].headers["authorization"],
        "Bearer sk-upstream-from-flag"
    );

    let receipts = logged_receipts(dir.path());
    assert_eq!(receipts.len(), 2);
    assert_eq!(receipts[0]["agent_id"], "agent-7");
    assert_eq!(receipts[0]["decision"], "deny");
    assert_eq!(receipts[0]["action"]["tool_call_id"], "call_0");
    assert_eq!(receipts[1]["decision"], "deny");
    assert_eq!(receipts[1]["reason"]["code"], "max_rounds");
    assert_eq!(receipts[1]["metadata"]["rounds"], 1);
    assert_log_verifies(dir.path(), "issuer.pem");
    let log = std::fs::read_to_string(dir.path().join("receipts.jsonl")).unwrap();
    assert!(!log.contains("sk-upstream-from"));
    binary.signal("TERM");
    assert!(binary.wait_exit().success());
}

/// A turn on the legacy `functions` API: one `function_call`, no id.
pub fn legacy_call(name: &str, arguments: &str) -> Value {
    json!({"id": "chatcmpl-3", "object": "chat.completion", "created": 3, "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": null,
            "function_call": {"name": name, "arguments": arguments}}, "finish_reason": "function_call"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})
}

/// A request on the legacy `functions` API.
pub fn legacy_request() -> Value {
    json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "go"}],
        "functions": [{"name": "lookup", "parameters": {"type": "object"}},
                      {"name": "shell_exec", "parameters": {"type": "object"}}]})
}

#[tokio::test]
async fn legacy_function_calls_are_governed_too() {
    let tool = MockUpstream::start().await;
    let g = start(POLICY, "", Some(tool)).await;
    // Allowed: the client gets the call as the upstream wrote it.
    g.script(vec![legacy_call("lookup", "{\"q\":\"x\"}")]);
    let (_, _, out) = g.chat(&legacy_request()).await;
    assert_eq!(
        out["choices"][0]["message"]["function_call"]["name"],
        "lookup"
    );
    assert_eq!(out["choices"][0]["finish_reason"], "function_call");
    // No governed tools beside `functions`: the API takes one or the other.
    assert!(g.sent()[0].get("tools").is_none());
    // Denied: the model gets the refusal as the function's result.
    g.script(vec![legacy_call("shell_exec", "{}"), text("Refused.")]);
    let (_, _, out) = g.chat(&legacy_request()).await;
    assert_eq!(out["choices"][0]["message"]["content"], "Refused.");
    let round2 = &g.sent()[2];
    let messages = round2["messages"].as_array().unwrap();
    assert_eq!(messages[1]["function_call"]["name"], "shell_exec");
    assert_eq!(messages[2]["role"], "function");
    assert_eq!(messages[2]["name"], "shell_exec");
    assert!(
        messages[2]["content"]
            .as_str()
            .unwrap()
            .contains("tool_call_denied")
    );
    let receipts = g.proxy.receipt_lines();
    assert_eq!(receipts.len(), 2);
    assert_eq!(receipts[1]["decision"], "deny");
    g.proxy.verify_receipts();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_log_that_cannot_be_written_stops_every_effect() {
    // The binary runs with a file-size limit (and SIGXFSZ ignored, so a write past
    // it fails with EFBIG instead of killing the process): the log fills up after a
    // few receipts, as a full disk would.
    let upstream = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key.pem");
    tollgate::keys::write_signing(&key_file, &tollgate::keys::generate().unwrap(), false).unwrap();
    std::fs::write(dir.path().join("policy.yaml"), POLICY).unwrap();
    let mut binary = Binary::start_after(
        "trap '' XFSZ\nulimit -f 8",
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream.url(),
            "--policy",
            "policy.yaml",
            "--signing-key",
            "key.pem",
            "--receipts",
            "receipts.jsonl",
        ],
        dir.path(),
        &[],
    );
    let url = binary.wait_listening();
    let http = client();
    let mut refused = None;
    for n in 0..64 {
        upstream.push(Reply::json(
            calls(&[(&format!("call_{n}"), "lookup", "{\"q\":\"x\"}")]).to_string(),
        ));
        let response = http
            .post(format!("{url}/v1/chat/completions"))
            .json(&request())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        if status == 503 {
            refused = Some((n, body));
            break;
        }
        assert_eq!(status, 200);
        assert_eq!(
            body["choices"][0]["message"]["tool_calls"][0]["id"],
            format!("call_{n}")
        );
    }
    let (n, body) = refused.expect("the size limit is reached within 64 receipts");
    assert!(n > 0, "the first receipts fit");
    assert_eq!(body["error"]["code"], "receipts_unavailable");
    assert!(
        !body.to_string().contains(&format!("call_{n}")),
        "the call was not released"
    );
    let health = http
        .get(format!("{url}/tollgate/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 503);
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["status"], "degraded");
    // Still serving, and what was written still verifies: the failed batch was cut back.
    assert!(
        http.get(format!("{url}/tollgate/readyz"))
            .send()
            .await
            .is_ok()
    );
    assert_log_verifies(dir.path(), "key.pem");
    let lines = std::fs::read_to_string(dir.path().join("receipts.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(
        lines, n,
        "one receipt per released call, none for the refused one"
    );
    binary.signal("TERM");
    assert!(binary.wait_exit().success());
}
