//! The governed Chat Completions loop (plain responses), with a scripted
//! upstream: what the client receives and what the upstream is sent, round by
//! round, and a receipt log that verifies afterwards.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::mock::{MockUpstream, Reply};
use tollgate::kernel::Kernel;
use tollgate::kernel::policy::Policy;
use tollgate::receipt::{LogOptions, Receipt, ReceiptLog};
use tollgate::tools::http::HttpTool;
use tollgate::turn::chat::{Caller, GovernError, Governance, Settings};

const POLICY: &str = r#"
hushspec: "0.1.0"
rules:
  tool_access:
    block: [shell_exec]
    require_confirmation: [deploy]
    default: allow
  velocity:
    max_invocations: 50
    window_seconds: 60
"#;

struct Harness {
    gov: Governance,
    dir: tempfile::TempDir,
    key: ed25519_dalek::SigningKey,
    _tool_server: Option<MockUpstream>,
}

async fn harness(policy: &str, tool_server: Option<MockUpstream>, max_rounds: u32) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
    let receipts = ReceiptLog::open(
        &dir.path().join("receipts.jsonl"),
        key.clone(),
        LogOptions::default(),
    )
    .unwrap();
    let tools = match &tool_server {
        Some(server) => vec![
            HttpTool::new(
                toml::from_str(&format!(
                    "name = \"weather__current\"\nurl = \"{}/weather\"\ndescription = \"Weather\"\nparameters = {{ type = \"object\", properties = {{ city = {{ type = \"string\" }} }}, required = [\"city\"] }}\nhas_side_effects = false\ntimeout_ms = 2000\n",
                    server.url()
                ))
                .unwrap(),
            )
            .unwrap(),
        ],
        None => Vec::new(),
    };
    Harness {
        gov: Governance::new(
            Kernel::new(Policy::from_text(policy, "test").unwrap()),
            receipts,
            tools,
            Settings {
                max_rounds,
                server_id: "gw-test".into(),
                splice_turns: 64,
                splice_ttl: Duration::from_secs(600),
            },
        )
        .unwrap(),
        dir,
        key,
        _tool_server: tool_server,
    }
}

impl Harness {
    async fn run(&self, request_id: &str, mut request: Value, script: &Script) -> Value {
        self.gov.prepare(&caller(), &mut request).unwrap();
        self.gov
            .run(&caller(), request_id, request, script.upstream())
            .await
            .unwrap()
            .response
    }

    fn receipts(&self) -> Vec<Receipt> {
        std::fs::read_to_string(self.dir.path().join("receipts.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn verify(&self) {
        let report = tollgate::receipt::verify::verify(
            &[self.dir.path().join("receipts.jsonl")],
            &[self.key.verifying_key()],
        );
        assert!(report.ok(), "{:?}", report.failure);
    }
}

/// An upstream that answers from a script and records what it was sent.
#[derive(Clone, Default)]
struct Script {
    answers: Arc<Mutex<VecDeque<Value>>>,
    sent: Arc<Mutex<Vec<Value>>>,
}

impl Script {
    fn new(answers: Vec<Value>) -> Self {
        Self {
            answers: Arc::new(Mutex::new(answers.into())),
            sent: Arc::default(),
        }
    }

    fn upstream(&self) -> impl FnMut(Value) -> std::future::Ready<Result<Value, GovernError>> + '_ {
        move |request| {
            self.sent.lock().unwrap().push(request);
            std::future::ready(Ok(self
                .answers
                .lock()
                .unwrap()
                .pop_front()
                .expect("the upstream was called once too often")))
        }
    }

    fn sent(&self) -> Vec<Value> {
        self.sent.lock().unwrap().clone()
    }
}

fn calls(calls: &[(&str, &str, &str)]) -> Value {
    let list: Vec<Value> = calls
        .iter()
        .map(|(id, name, args)| json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}}))
        .collect();
    json!({"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": list}, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})
}

fn text(content: &str) -> Value {
    json!({"id": "chatcmpl-2", "object": "chat.completion", "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27}})
}

fn request() -> Value {
    json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "go"}],
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]})
}

fn caller() -> Caller {
    Caller {
        agent_id: "key:0123456789abcdef".into(),
        scope: None,
    }
}

fn tool_messages(request: &Value) -> Vec<(String, String)> {
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

#[tokio::test]
async fn a_denied_call_is_answered_to_the_model_and_the_client_gets_the_final_answer() {
    let h = harness(POLICY, None, 8).await;
    let script = Script::new(vec![
        calls(&[("call_x", "shell_exec", r#"{"cmd":"ls"}"#)]),
        text("I cannot run that."),
    ]);
    let out = h.run("tgr_1", request(), &script).await;
    assert_eq!(
        out["choices"][0]["message"]["content"],
        "I cannot run that."
    );
    assert_eq!(
        out["usage"]["total_tokens"], 42,
        "usage is summed over rounds"
    );
    let sent = script.sent();
    assert_eq!(sent.len(), 2);
    let answers = tool_messages(&sent[1]);
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].0, "call_x");
    let denial: Value = serde_json::from_str(&answers[0].1).unwrap();
    assert_eq!(denial["error"]["type"], "tool_call_denied");
    assert_eq!(denial["error"]["code"], "tool_access.block");
    let receipts = h.receipts();
    assert_eq!(receipts.len(), 1);
    assert_eq!(
        denial["error"]["receipt_id"],
        receipts[0].receipt_id.as_str()
    );
    assert_eq!(receipts[0].decision, "deny");
    assert_eq!(receipts[0].request_id, "tgr_1");
    h.verify();
}

#[tokio::test]
async fn a_governed_tool_runs_and_only_the_final_answer_reaches_the_client() {
    let server = MockUpstream::start().await;
    server.push(Reply::json("{\"temp_c\":18}"));
    let h = harness(POLICY, Some(server), 8).await;
    let script = Script::new(vec![
        calls(&[("call_w", "weather__current", r#"{"city":"Paris"}"#)]),
        text("18 degrees."),
    ]);
    let out = h.run("tgr_2", request(), &script).await;
    assert_eq!(out["choices"][0]["message"]["content"], "18 degrees.");
    let sent = script.sent();
    // The governed tool was offered to the model, beside the client's own.
    let names: Vec<&str> = sent[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["lookup", "weather__current"]);
    assert_eq!(
        tool_messages(&sent[1]),
        [("call_w".to_owned(), "{\"temp_c\":18}".to_owned())]
    );
    assert_eq!(h.receipts()[0].metadata["route"], "governed");
    h.verify();
}

#[tokio::test]
async fn parallel_calls_with_one_denied_then_the_follow_up_is_spliced() {
    let h = harness(POLICY, None, 8).await;
    let script = Script::new(vec![
        calls(&[
            ("call_a", "lookup", r#"{"q":"x"}"#),
            ("call_b", "shell_exec", r#"{"cmd":"rm"}"#),
        ]),
        text("Found it."),
    ]);
    let out = h.run("tgr_3", request(), &script).await;
    // The client sees only its own call.
    let seen = out["choices"][0]["message"]["tool_calls"]
        .as_array()
        .unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["id"], "call_a");
    assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
    let receipts = h.receipts();
    assert_eq!(receipts.len(), 2, "one receipt per call");
    assert_eq!(
        (receipts[0].decision.as_str(), receipts[1].decision.as_str()),
        ("allow", "deny")
    );

    // The client answers its call; the upstream sees the whole turn, every call answered.
    let mut follow_up = request();
    let messages = follow_up["messages"].as_array_mut().unwrap();
    messages.push(out["choices"][0]["message"].clone());
    messages.push(json!({"role": "tool", "tool_call_id": "call_a", "content": "result a"}));
    let out = h.run("tgr_4", follow_up, &script).await;
    assert_eq!(out["choices"][0]["message"]["content"], "Found it.");
    let sent = script.sent();
    let last = &sent[1]["messages"];
    assert_eq!(
        last[1]["tool_calls"].as_array().unwrap().len(),
        2,
        "the full assistant turn is restored"
    );
    let answers = tool_messages(&sent[1]);
    assert_eq!(
        answers
            .iter()
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>(),
        ["call_a", "call_b"]
    );
    assert_eq!(answers[0].1, "result a");
    assert!(answers[1].1.contains("tool_call_denied"));
    h.verify();
}

#[tokio::test]
async fn the_loop_stops_after_max_rounds_and_says_so() {
    let h = harness(POLICY, None, 3).await;
    let script = Script::new(
        (0..3)
            .map(|i| calls(&[(&format!("call_{i}"), "shell_exec", "{}")]))
            .collect(),
    );
    let out = h.run("tgr_5", request(), &script).await;
    assert!(
        out["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("after 3 rounds")
    );
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    assert!(out["choices"][0]["message"].get("tool_calls").is_none());
    let receipts = h.receipts();
    assert_eq!(receipts.len(), 4);
    assert_eq!(receipts[3].reason.code, "max_rounds");
    h.verify();
}

#[tokio::test]
async fn a_failing_governed_tool_gives_the_model_an_error_output() {
    let server = MockUpstream::start().await;
    server.push(Reply::Hang);
    let h = harness(POLICY, Some(server), 8).await;
    let script = Script::new(vec![
        calls(&[("call_w", "weather__current", r#"{"city":"Paris"}"#)]),
        text("The tool failed."),
    ]);
    let out = tokio::time::timeout(crate::common::WAIT, h.run("tgr_6", request(), &script))
        .await
        .expect("a hung tool must not hang the request");
    assert_eq!(out["choices"][0]["message"]["content"], "The tool failed.");
    let answer = &tool_messages(&script.sent()[1])[0].1;
    assert!(answer.contains("tool_timeout"), "{answer}");
}

#[tokio::test]
async fn an_approval_goes_from_pending_to_approved_to_consumed() {
    let h = harness(POLICY, None, 8).await;
    let deploy = || calls(&[("call_d", "deploy", r#"{"env":"prod"}"#)]);
    let script = Script::new(vec![
        deploy(),
        text("Waiting for approval."),
        deploy(),
        text("Deployed."),
    ]);
    h.run("tgr_7", request(), &script).await;
    let pending: Value = serde_json::from_str(&tool_messages(&script.sent()[1])[0].1).unwrap();
    assert_eq!(pending["error"]["code"], "approval_pending");
    let id = h.gov.kernel().approvals().list()[0].id.clone();
    assert!(pending["error"]["message"].as_str().unwrap().contains(&id));
    assert!(h.gov.kernel().approvals().approve(&id));
    // The same call again is relayed to the client (deploy is the client's tool).
    let out = h.run("tgr_8", request(), &script).await;
    assert_eq!(
        out["choices"][0]["message"]["tool_calls"][0]["id"],
        "call_d"
    );
    let receipts = h.receipts();
    assert_eq!(receipts[0].decision, "pending");
    assert_eq!(receipts[1].decision, "allow");
    assert_eq!(receipts[1].reason.code, "approval_granted");
    assert_eq!(receipts[1].metadata["approval_id"], id.as_str());
    h.verify();
}

#[tokio::test]
async fn a_client_tool_named_like_a_governed_one_is_refused() {
    let server = MockUpstream::start().await;
    let h = harness(POLICY, Some(server), 8).await;
    let script = Script::new(vec![]);
    let mut clash = request();
    clash["tools"] = json!([{"type": "function", "function": {"name": "weather__current"}}]);
    let err = h.gov.prepare(&caller(), &mut clash).unwrap_err();
    assert!(err.to_string().contains("weather__current"), "{err}");
    assert!(script.sent().is_empty());
}
