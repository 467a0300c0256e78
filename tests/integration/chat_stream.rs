//! Governed Chat Completions streams through the real server: the mock upstream
//! streams each round in the real chunk format, and each test checks the one
//! stream the client receives (text as it comes, tool calls whole and only when
//! allowed, contiguous indices, one finish, one `[DONE]`), what the upstream was
//! sent in later rounds, and the receipt log.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::common::mock::{Reply, StreamFeed};
use crate::common::{WAIT, client, read_to_end, shared_fixtures};
use crate::governance::{
    Gov, POLICY, TIGHT_BUDGET, assert_paired, failing_then_hanging_tool, oversized_arguments,
    request, start, start_with_weather, tool_messages, weather_tool,
};

/// One `data:` event of a chunk with this delta and finish reason.
fn chunk(delta: Value, finish: Value) -> Bytes {
    let c = json!({"id": "chatcmpl-s1", "object": "chat.completion.chunk", "created": 1,
        "model": "gpt-4o", "system_fingerprint": "fp_test",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
    Bytes::from(format!("data: {c}\n\n"))
}

fn usage_chunk(prompt: u64, completion: u64) -> Bytes {
    let c = json!({"id": "chatcmpl-s1", "object": "chat.completion.chunk", "created": 1,
        "model": "gpt-4o", "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}});
    Bytes::from(format!("data: {c}\n\n"))
}

const DONE: &[u8] = b"data: [DONE]\n\n";

/// A text round: role, the parts, finish `stop`, usage, `[DONE]`.
fn sse_text(parts: &[&str]) -> Vec<Bytes> {
    let mut out = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for p in parts {
        out.push(chunk(json!({"content": p}), Value::Null));
    }
    out.push(chunk(json!({}), json!("stop")));
    out.push(usage_chunk(20, 7));
    out.push(Bytes::from_static(DONE));
    out
}

/// A round of tool calls `(id, name, argument fragments)`, streamed as the API
/// does: the first fragment of each call with its id and name.
fn sse_calls(calls: &[(&str, &str, &[&str])]) -> Vec<Bytes> {
    let mut out = vec![chunk(
        json!({"role": "assistant", "content": null}),
        Value::Null,
    )];
    for (index, (id, name, fragments)) in calls.iter().enumerate() {
        out.push(chunk(
            json!({"tool_calls": [{"index": index, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
            Value::Null,
        ));
        for f in *fragments {
            out.push(chunk(
                json!({"tool_calls": [{"index": index, "function": {"arguments": f}}]}),
                Value::Null,
            ));
        }
    }
    out.push(chunk(json!({}), json!("tool_calls")));
    out.push(usage_chunk(10, 5));
    out.push(Bytes::from_static(DONE));
    out
}

/// What a client read from a stream.
struct Received {
    raw: String,
    chunks: Vec<Value>,
    done: usize,
}

impl Received {
    fn text(&self) -> String {
        self.chunks
            .iter()
            .filter_map(|c| {
                c.pointer("/choices/0/delta/content")
                    .and_then(Value::as_str)
            })
            .collect()
    }

    fn finishes(&self) -> Vec<String> {
        self.chunks
            .iter()
            .filter_map(|c| {
                c.pointer("/choices/0/finish_reason")
                    .and_then(Value::as_str)
            })
            .map(str::to_owned)
            .collect()
    }

    /// The tool calls as an SDK assembles them: `(index, id, name, arguments)`.
    fn calls(&self) -> Vec<(u64, String, String, String)> {
        let mut calls: Vec<(u64, String, String, String)> = Vec::new();
        for c in &self.chunks {
            let Some(list) = c
                .pointer("/choices/0/delta/tool_calls")
                .and_then(Value::as_array)
            else {
                continue;
            };
            for f in list {
                let index = f["index"].as_u64().unwrap();
                let at = match calls.iter().position(|(i, ..)| *i == index) {
                    Some(at) => at,
                    None => {
                        calls.push((index, String::new(), String::new(), String::new()));
                        calls.len() - 1
                    }
                };
                if let Some(id) = f["id"].as_str() {
                    calls[at].1 = id.to_owned();
                }
                if let Some(name) = f.pointer("/function/name").and_then(Value::as_str) {
                    calls[at].2.push_str(name);
                }
                if let Some(args) = f.pointer("/function/arguments").and_then(Value::as_str) {
                    calls[at].3.push_str(args);
                }
            }
        }
        calls
    }

    fn errors(&self) -> Vec<&Value> {
        self.chunks
            .iter()
            .filter(|c| c.get("error").is_some())
            .collect()
    }

    fn usage(&self) -> Vec<&Value> {
        self.chunks
            .iter()
            .filter_map(|c| c.get("usage").filter(|u| u.is_object()))
            .collect()
    }
}

fn read_events(raw: String) -> Received {
    let mut chunks = Vec::new();
    let mut done = 0;
    for line in raw.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            done += 1;
        } else {
            chunks.push(serde_json::from_str(data).unwrap());
        }
    }
    Received { raw, chunks, done }
}

/// Sends `body` as a streamed Chat Completions request and checks for a 200; the
/// body is left to read.
async fn open_stream(url: &str, mut body: Value) -> reqwest::Response {
    body["stream"] = json!(true);
    let response = client()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth("sk-test-key")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response
}

async fn stream_chat(url: &str, body: Value) -> Received {
    let response = open_stream(url, body).await;
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    read_events(response.text().await.unwrap())
}

#[tokio::test]
async fn an_allowed_call_reaches_the_client_whole_with_one_finish() {
    let g = start(POLICY, "", None).await;
    g.upstream.push(Reply::sse(sse_calls(&[(
        "call_a",
        "lookup",
        &["{\"q\"", ":\"x\"}"],
    )])));
    let got = stream_chat(&g.proxy.url, request()).await;
    assert_eq!(
        got.calls(),
        [(0, "call_a".into(), "lookup".into(), "{\"q\":\"x\"}".into())]
    );
    assert_eq!(got.finishes(), ["tool_calls"]);
    assert_eq!(got.done, 1);
    assert!(got.raw.ends_with("data: [DONE]\n\n"));
    // One id for the whole stream.
    assert!(got.chunks.iter().all(|c| c["id"] == "chatcmpl-s1"));
    let receipts = g.proxy.receipt_lines();
    assert_eq!(receipts.len(), 1);
    assert_eq!(receipts[0]["decision"], "allow");
    // The upstream was sent the request once, as the client wrote it (nothing to
    // splice, no governed tool to inject): its bytes and its key as they came.
    let mut expected = request();
    expected["stream"] = json!(true);
    g.assert_sent_as_written(&expected);
    g.proxy.verify_receipts();
}

#[tokio::test]
async fn a_forbidden_word_split_across_deltas_is_held_and_denied() {
    let g = start(POLICY, "", None).await;
    g.upstream.push(Reply::sse(sse_calls(&[(
        "call_x",
        "lookup",
        &["{\"q\":\"r", "m -", "rf /tmp\"}"],
    )])));
    g.upstream.push(Reply::sse(sse_text(&["Not ", "allowed."])));
    let got = stream_chat(&g.proxy.url, request()).await;
    assert!(got.calls().is_empty(), "{}", got.raw);
    assert!(!got.raw.contains("rm -") && !got.raw.contains("call_x"));
    assert_eq!(got.text(), "Not allowed.");
    assert_eq!(got.finishes(), ["stop"]);
    assert_eq!(got.done, 1);
    let sent = g.sent();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1]["stream"], true);
    assert_paired(&sent[1]);
    let answers = tool_messages(&sent[1]);
    assert_eq!(answers[0].0, "call_x");
    assert!(
        answers[0]
            .1
            .contains("shell_commands.forbidden_patterns[0]")
    );
    // The assistant turn sent back holds the call exactly as the model wrote it.
    let assistant = &sent[1]["messages"][1];
    assert_eq!(
        assistant["tool_calls"][0]["function"]["arguments"],
        "{\"q\":\"rm -rf /tmp\"}"
    );
    g.proxy.verify_receipts();
}

#[tokio::test]
async fn a_governed_tool_runs_mid_stream_and_usage_is_summed() {
    let g = start_with_weather(POLICY).await;
    g.upstream.push(Reply::sse(sse_calls(&[(
        "call_w",
        "weather__current",
        &["{\"city\":", "\"Paris\"}"],
    )])));
    g.upstream.push(Reply::sse(sse_text(&["18 ", "degrees."])));
    let mut body = request();
    body["stream_options"] = json!({"include_usage": true});
    let got = stream_chat(&g.proxy.url, body).await;
    assert!(got.calls().is_empty());
    assert_eq!(got.text(), "18 degrees.");
    assert_eq!(got.finishes(), ["stop"]);
    let usage = got.usage();
    assert_eq!(usage.len(), 1, "one usage chunk");
    assert_eq!(usage[0]["total_tokens"], 42);
    // Finish, then usage, then [DONE].
    let last = got.chunks.len() - 1;
    assert!(got.chunks[last].get("usage").is_some());
    assert_eq!(got.chunks[last - 1]["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        tool_messages(&g.sent()[1]),
        [("call_w".to_owned(), "{\"temp_c\":18}".to_owned())]
    );
    g.proxy.verify_receipts();
}

#[tokio::test]
async fn parallel_calls_with_one_denied_keep_indices_contiguous_and_splice_later() {
    let g = start(POLICY, "", None).await;
    g.upstream.push(Reply::sse(sse_calls(&[
        ("call_b", "shell_exec", &["{\"cmd\":\"ls\"}"]),
        ("call_a", "lookup", &["{\"q\":", "\"x\"}"]),
    ])));
    let got = stream_chat(&g.proxy.url, request()).await;
    assert_eq!(
        got.calls(),
        [(0, "call_a".into(), "lookup".into(), "{\"q\":\"x\"}".into())],
        "only the allowed call, at index 0"
    );
    assert_eq!(got.finishes(), ["tool_calls"]);
    let receipts = g.proxy.receipt_lines();
    assert_eq!(receipts.len(), 2);

    // The follow-up (plain) brings the client's result; the upstream sees both.
    g.upstream
        .push(Reply::json(crate::governance::text("Done.").to_string()));
    let mut follow_up = request();
    let messages = follow_up["messages"].as_array_mut().unwrap();
    messages.push(json!({"role": "assistant", "content": null, "tool_calls": [
        {"id": "call_a", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"x\"}"}}]}));
    messages.push(json!({"role": "tool", "tool_call_id": "call_a", "content": "x found"}));
    let (status, _, out) = g.chat(&follow_up).await;
    assert_eq!(status, 200);
    assert_eq!(out["choices"][0]["message"]["content"], "Done.");
    let sent = g.sent();
    assert_paired(&sent[1]);
    let ids: Vec<String> = tool_messages(&sent[1])
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids, ["call_b", "call_a"], "the model's own order");
    g.proxy.verify_receipts();
}

#[tokio::test]
async fn recorded_tool_call_streams_are_governed() {
    let root = shared_fixtures().join("recorded/chat");
    for (file, id, name, arguments) in [
        (
            "chat-stream-tool-call-get-weather.sse",
            "call_4XzlGBLtUe9dy3GVNV4jhq7h",
            "get_weather",
            r#"{"city":"New York City"}"#,
        ),
        (
            "chat-stream-tool-call-strict-getweatherargs.sse",
            "call_c91SqDXlYFuETYv8mUHzz6pp",
            "GetWeatherArgs",
            r#"{"city":"Edinburgh","country":"UK","units":"c"}"#,
        ),
    ] {
        let recorded = Bytes::from(std::fs::read(root.join(file)).unwrap());
        // Allowed: the client assembles the recorded call exactly.
        let g = start(POLICY, "", None).await;
        g.upstream.push(Reply::sse(vec![recorded.clone()]));
        let got = stream_chat(&g.proxy.url, request()).await;
        assert_eq!(
            got.calls(),
            [(0, id.into(), name.into(), arguments.into())],
            "{file}"
        );
        assert_eq!(got.finishes(), ["tool_calls"], "{file}");
        assert_eq!(got.done, 1, "{file}");
        g.proxy.verify_receipts();

        // Blocked: the call never reaches the client; the model gets the denial.
        let blocked = format!(
            "hushspec: \"0.1.0\"\nrules:\n  tool_access:\n    block: [{name}]\n    default: allow\n"
        );
        let g = start(&blocked, "", None).await;
        g.upstream.push(Reply::sse(vec![recorded]));
        g.upstream.push(Reply::sse(sse_text(&["I may not."])));
        let got = stream_chat(&g.proxy.url, request()).await;
        assert!(got.calls().is_empty(), "{file}");
        assert!(!got.raw.contains(id), "{file}");
        assert_eq!(got.text(), "I may not.", "{file}");
        assert_eq!(got.finishes(), ["stop"], "{file}");
        let sent = g.sent();
        assert_paired(&sent[1]);
        assert_eq!(tool_messages(&sent[1])[0].0, id);
        g.proxy.verify_receipts();
    }
}

/// A governed streaming Chat request whose upstream answer the test feeds.
async fn open_fed_stream(g: &Gov) -> (reqwest::Response, StreamFeed) {
    let feed = g.feed_stream();
    let mut body = request();
    body["stream"] = json!(true);
    let response = client()
        .post(format!("{}/v1/chat/completions", g.proxy.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    (response, feed)
}

/// The first piece of a call to `lookup`: its arguments are not complete.
fn half_call(id: &str) -> Bytes {
    chunk(
        json!({"tool_calls": [{"index": 0, "id": id, "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":"}}]}),
        Value::Null,
    )
}

#[tokio::test]
async fn text_passes_at_once_and_an_upstream_dying_mid_call_releases_nothing() {
    let g = start(POLICY, "", None).await;
    let (mut response, feed) = open_fed_stream(&g).await;
    feed.send(chunk(
        json!({"role": "assistant", "content": "Let me look."}),
        Value::Null,
    ));
    // The text reaches the client before the upstream sends anything else.
    let first = tokio::time::timeout(WAIT, response.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("Let me look."));
    feed.send(half_call("call_cut"));
    feed.abort();
    let mut rest = Vec::new();
    while let Some(piece) = tokio::time::timeout(WAIT, response.chunk())
        .await
        .unwrap()
        .unwrap_or(None)
    {
        rest.extend_from_slice(&piece);
    }
    let got = read_events(String::from_utf8(rest).unwrap());
    assert!(got.calls().is_empty(), "{}", got.raw);
    assert!(!got.raw.contains("call_cut"));
    assert_eq!(got.errors().len(), 1, "{}", got.raw);
    assert_eq!(got.done, 0);
    assert!(g.proxy.receipt_lines().is_empty(), "nothing was decided");
}

#[tokio::test]
async fn an_upstream_falling_silent_mid_call_ends_the_stream_after_the_idle_timeout() {
    let g = start(POLICY, "idle_timeout = \"300ms\"", None).await;
    let (response, feed) = open_fed_stream(&g).await;
    // Text, then half a call; then the upstream keeps its connection open and
    // sends nothing more.
    feed.send(chunk(
        json!({"role": "assistant", "content": "Let me look."}),
        Value::Null,
    ));
    feed.send(half_call("call_quiet"));
    let text = tokio::time::timeout(WAIT, response.text())
        .await
        .expect("a silent upstream must not hold the stream open")
        .unwrap();
    let got = read_events(text);
    assert!(got.raw.contains("Let me look."), "{}", got.raw);
    assert!(!got.raw.contains("call_quiet"), "{}", got.raw);
    assert_eq!(got.errors().len(), 1, "{}", got.raw);
    assert!(got.raw.contains("sent nothing"), "{}", got.raw);
    assert_eq!(got.done, 0);
    assert!(g.proxy.receipt_lines().is_empty(), "nothing was decided");
    drop(feed);
}

#[tokio::test]
async fn an_upstream_error_in_a_later_round_ends_the_stream_with_an_error_event() {
    let g = start(POLICY, "", None).await;
    g.upstream
        .push(Reply::sse(sse_calls(&[("call_x", "shell_exec", &["{}"])])));
    g.upstream.push(Reply::Full {
        status: 500,
        headers: vec![("content-type".into(), "application/json".into())],
        body: r#"{"error":{"message":"The server had an error","type":"server_error","param":null,"code":null}}"#.into(),
    });
    let got = stream_chat(&g.proxy.url, request()).await;
    let errors = got.errors();
    assert_eq!(errors.len(), 1, "{}", got.raw);
    assert!(
        errors[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("The server had an error")
    );
    assert_eq!(got.done, 0);
    assert!(got.finishes().is_empty());
    g.proxy.verify_receipts();
}

#[tokio::test]
async fn a_stream_stops_after_max_rounds_and_says_so() {
    let g = start(POLICY, "max_rounds = 2", None).await;
    for n in 0..2 {
        g.upstream.push(Reply::sse(sse_calls(&[(
            &format!("call_{n}"),
            "shell_exec",
            &["{}"],
        )])));
    }
    let got = stream_chat(&g.proxy.url, request()).await;
    assert!(got.text().contains("after 2 rounds"), "{}", got.raw);
    assert_eq!(got.finishes(), ["stop"]);
    assert_eq!(got.done, 1);
    assert_eq!(g.sent().len(), 2);
    let receipts = g.proxy.receipt_lines();
    assert_eq!(receipts.last().unwrap()["reason"]["code"], "max_rounds");
    g.proxy.verify_receipts();
}

#[tokio::test]
async fn a_text_stream_without_calls_keeps_its_bytes() {
    let g = start(POLICY, "", None).await;
    let events = sse_text(&["Hello", " world"]);
    let expected: Vec<u8> = events.iter().flat_map(|b| b.to_vec()).collect();
    g.upstream.push(Reply::sse(events));
    let mut body = request();
    body["stream"] = json!(true);
    let response = client()
        .post(format!("{}/v1/chat/completions", g.proxy.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.bytes().await.unwrap().to_vec(), expected);
}

/// A streamed legacy `function_call` in these argument fragments.
fn sse_legacy(name: &str, fragments: &[&str]) -> Vec<Bytes> {
    let mut out = vec![chunk(
        json!({"role": "assistant", "content": null, "function_call": {"name": name, "arguments": ""}}),
        Value::Null,
    )];
    for f in fragments {
        out.push(chunk(
            json!({"function_call": {"arguments": f}}),
            Value::Null,
        ));
    }
    out.push(chunk(json!({}), json!("function_call")));
    out.push(Bytes::from_static(DONE));
    out
}

#[tokio::test]
async fn streamed_legacy_function_calls_are_held_decided_and_relayed_or_refused() {
    let g = start(POLICY, "", None).await;
    g.upstream
        .push(Reply::sse(sse_legacy("lookup", &["{\"q\":", "\"x\"}"])));
    let got = stream_chat(&g.proxy.url, crate::governance::legacy_request()).await;
    let (mut name, mut args) = (String::new(), String::new());
    for c in &got.chunks {
        if let Some(f) = c.pointer("/choices/0/delta/function_call") {
            name.push_str(f["name"].as_str().unwrap_or_default());
            args.push_str(f["arguments"].as_str().unwrap_or_default());
        }
    }
    assert_eq!((name.as_str(), args.as_str()), ("lookup", "{\"q\":\"x\"}"));
    assert_eq!(got.finishes(), ["function_call"]);
    assert_eq!(got.done, 1);

    g.upstream.push(Reply::sse(sse_legacy(
        "shell_exec",
        &["{\"cmd\":", "\"ls\"}"],
    )));
    g.upstream.push(Reply::sse(sse_text(&["Refused."])));
    let got = stream_chat(&g.proxy.url, crate::governance::legacy_request()).await;
    assert!(!got.raw.contains("function_call\":{"), "{}", got.raw);
    assert_eq!(got.text(), "Refused.");
    assert_eq!(got.finishes(), ["stop"]);
    let sent = g.sent();
    let messages = sent[2]["messages"].as_array().unwrap();
    assert_eq!(
        messages[1]["function_call"]["arguments"],
        "{\"cmd\":\"ls\"}"
    );
    assert_eq!(messages[2]["role"], "function");
    assert!(
        messages[2]["content"]
            .as_str()
            .unwrap()
            .contains("tool_call_denied")
    );
    g.proxy.verify_receipts();
}

#[tokio::test]
async fn text_before_a_call_passes_at_once_and_is_kept_for_the_next_round() {
    let g = start(POLICY, "", None).await;
    let mut round = vec![
        chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        chunk(json!({"content": "Let me "}), Value::Null),
        chunk(json!({"content": "check."}), Value::Null),
    ];
    // The same call chunks as sse_calls, after the text.
    round.extend(
        sse_calls(&[("call_x", "shell_exec", &["{}"])])
            .into_iter()
            .skip(1),
    );
    g.upstream.push(Reply::sse(round));
    g.upstream.push(Reply::sse(sse_text(&[" Not allowed."])));
    let got = stream_chat(&g.proxy.url, request()).await;
    assert_eq!(got.text(), "Let me check. Not allowed.");
    assert_eq!(got.finishes(), ["stop"]);
    let roles = got
        .chunks
        .iter()
        .filter(|c| c.pointer("/choices/0/delta/role").is_some())
        .count();
    assert_eq!(roles, 1, "one role for the whole stream");
    assert!(got.chunks.iter().all(|c| c["id"] == "chatcmpl-s1"));
    let sent = g.sent();
    assert_eq!(sent[1]["messages"][1]["content"], "Let me check.");
    assert_paired(&sent[1]);
    g.proxy.verify_receipts();
}

#[tokio::test]
async fn a_call_beyond_the_memory_budget_ends_the_stream_and_its_share_comes_back() {
    let g = start(POLICY, TIGHT_BUDGET, None).await;
    // 96 KiB of arguments in 8 KiB fragments: more than the whole budget holds.
    let piece = "x".repeat(8 * 1024);
    let fragments = oversized_arguments(&piece);
    g.upstream
        .push(Reply::sse(sse_calls(&[("call_big", "lookup", &fragments)])));
    let got = stream_chat(&g.proxy.url, request()).await;
    assert!(got.calls().is_empty(), "{}", &got.raw[..200]);
    assert!(!got.raw.contains("call_big") && !got.raw.contains(&piece));
    let errors = got.errors();
    assert_eq!(errors.len(), 1);
    let error = &errors[0]["error"];
    assert_eq!(error["code"], "server_overloaded");
    assert_eq!(error["type"], "server_error");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("at capacity"), "{message}");
    assert_eq!(got.done, 0);
    assert!(g.proxy.receipt_lines().is_empty(), "nothing was decided");

    // Its share came back: a call of most of the budget is held, decided and
    // relayed whole.
    let arguments = format!("{{\"q\":\"{}\"}}", "y".repeat(40 * 1024));
    g.upstream.push(Reply::sse(sse_calls(&[(
        "call_fits",
        "lookup",
        &[&arguments[..20_000], &arguments[20_000..]],
    )])));
    let got = stream_chat(&g.proxy.url, request()).await;
    assert_eq!(
        got.calls(),
        [(0, "call_fits".into(), "lookup".into(), arguments)]
    );
    assert_eq!(got.done, 1);
    assert_eq!(g.proxy.receipt_lines().len(), 1);
    g.proxy.verify_receipts();
}

#[tokio::test]
async fn a_refusal_in_a_governed_stream_reaches_the_client_as_it_arrives() {
    let g = start(POLICY, "", None).await;
    // Round 1 is a denied call, so round 2 is rewritten, not passed through.
    g.upstream
        .push(Reply::sse(sse_calls(&[("call_x", "shell_exec", &["{}"])])));
    let feed = g.feed_stream();
    let mut response = open_stream(&g.proxy.url, request()).await;
    let refusal = "I can't help with that.";
    feed.send(chunk(
        json!({"role": "assistant", "content": null, "refusal": null}),
        Value::Null,
    ));
    feed.send(chunk(json!({"refusal": refusal}), Value::Null));
    // The refusal reaches the client while the upstream's round is still open.
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains(refusal) {
        let piece = tokio::time::timeout(WAIT, response.chunk())
            .await
            .expect("the refusal must reach the client before the round ends")
            .unwrap()
            .expect("the stream ended before the refusal");
        seen.extend_from_slice(&piece);
    }
    feed.send(chunk(json!({}), json!("stop")));
    feed.send(Bytes::from_static(DONE));
    drop(feed);
    read_to_end(&mut response, &mut seen).await;
    let got = read_events(String::from_utf8(seen).unwrap());
    let refusals: Vec<&str> = got
        .chunks
        .iter()
        .filter_map(|c| {
            c.pointer("/choices/0/delta/refusal")
                .and_then(Value::as_str)
        })
        .collect();
    assert_eq!(refusals, [refusal], "{}", got.raw);
    assert!(got.calls().is_empty());
    assert!(!got.raw.contains("call_x"));
    assert_eq!(got.finishes(), ["stop"]);
    assert_eq!(got.done, 1);
    assert!(got.raw.ends_with("data: [DONE]\n\n"));
    assert!(got.chunks.iter().all(|c| c["id"] == "chatcmpl-s1"));
    let sent = g.sent();
    assert_eq!(sent.len(), 2);
    assert_paired(&sent[1]);
    assert_eq!(tool_messages(&sent[1])[0].0, "call_x");
    g.proxy.verify_receipts();
}

#[tokio::test]
async fn without_include_usage_a_governed_stream_carries_no_usage_chunk() {
    // Whether or not the upstream sends a usage chunk anyway, a client that did
    // not ask for usage gets none: over two rounds (a denied call, then the
    // answer) and in one round with a relayed call. (With include_usage, the sum
    // over rounds is a_governed_tool_runs_mid_stream_and_usage_is_summed.)
    for upstream_usage in [true, false] {
        let round = |events: Vec<Bytes>| -> Reply {
            Reply::sse(
                events
                    .into_iter()
                    .filter(|e| upstream_usage || !String::from_utf8_lossy(e).contains("\"usage\""))
                    .collect(),
            )
        };
        let g = start(POLICY, "", None).await;
        g.upstream
            .push(round(sse_calls(&[("call_x", "shell_exec", &["{}"])])));
        g.upstream.push(round(sse_text(&["Not ", "allowed."])));
        let got = stream_chat(&g.proxy.url, request()).await;
        assert_eq!(got.text(), "Not allowed.", "{}", got.raw);
        assert_eq!(got.finishes(), ["stop"]);
        assert_eq!(got.done, 1);
        assert!(got.usage().is_empty(), "{upstream_usage}: {}", got.raw);
        assert!(!got.raw.contains("usage"), "{upstream_usage}: {}", got.raw);
        assert_eq!(g.sent().len(), 2);

        g.upstream
            .push(round(sse_calls(&[("call_a", "lookup", &["{}"])])));
        let got = stream_chat(&g.proxy.url, request()).await;
        assert_eq!(got.calls().len(), 1, "{}", got.raw);
        assert_eq!(got.finishes(), ["tool_calls"]);
        assert_eq!(got.done, 1);
        assert!(got.usage().is_empty(), "{upstream_usage}: {}", got.raw);
        assert!(!got.raw.contains("usage"), "{upstream_usage}: {}", got.raw);
        g.proxy.verify_receipts();
    }
}

#[tokio::test]
async fn governed_tool_failures_and_timeouts_mid_stream_become_error_outputs() {
    let tool = failing_then_hanging_tool().await;
    let g = start(POLICY, &weather_tool(&tool, 300), None).await;
    for (id, city, code, answer) in [
        ("call_1", "Paris", "tool_failed", "It failed."),
        ("call_2", "Oslo", "tool_timeout", "It timed out."),
    ] {
        let arguments = format!("{{\"city\":\"{city}\"}}");
        g.upstream.push(Reply::sse(sse_calls(&[(
            id,
            "weather__current",
            &[&arguments[..8], &arguments[8..]],
        )])));
        g.upstream.push(Reply::sse(sse_text(&[answer])));
        let got = tokio::time::timeout(WAIT, stream_chat(&g.proxy.url, request()))
            .await
            .expect("a failing tool must not hang the stream");
        // The client's stream ends normally, with the model's final answer.
        assert!(got.errors().is_empty(), "{}", got.raw);
        assert!(got.calls().is_empty(), "{}", got.raw);
        assert!(!got.raw.contains(id));
        assert_eq!(got.text(), answer);
        assert_eq!(got.finishes(), ["stop"]);
        assert_eq!(got.done, 1);
        assert!(got.raw.ends_with("data: [DONE]\n\n"));
        // The model got the failure as the call's output.
        let sent = g.sent();
        let round2 = sent.last().unwrap();
        assert_eq!(round2["stream"], true);
        assert_paired(round2);
        let answers = tool_messages(round2);
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].0, id);
        let output: Value = serde_json::from_str(&answers[0].1)
            .unwrap_or_else(|_| panic!("not an error output: {}", answers[0].1));
        assert_eq!(output["error"]["type"], "tool_error", "{output}");
        assert_eq!(output["error"]["code"], code, "{output}");
        assert_eq!(
            round2["messages"][1]["tool_calls"][0]["function"]["arguments"],
            arguments.as_str()
        );
    }
    let failed = &tool_messages(&g.sent()[1])[0].1;
    assert!(failed.contains("500"), "{failed}");
    let timed_out = &tool_messages(&g.sent()[3])[0].1;
    assert!(timed_out.contains("300 ms"), "{timed_out}");
    assert_eq!(tool.received().len(), 2);
    let receipts = g.proxy.receipt_lines();
    assert_eq!(receipts.len(), 2);
    assert!(receipts.iter().all(|r| r["decision"] == "allow"));
    assert!(
        receipts
            .iter()
            .all(|r| r["metadata"]["route"] == "governed")
    );
    g.proxy.verify_receipts();
}

#[tokio::test]
async fn a_streamed_follow_up_is_spliced_into_a_complete_conversation() {
    let g = start_with_weather(POLICY).await;
    // One call for the client, one governed call tollgate runs.
    g.upstream.push(Reply::sse(sse_calls(&[
        ("call_a", "lookup", &["{\"q\":", "\"x\"}"]),
        ("call_w", "weather__current", &["{\"city\":", "\"Paris\"}"]),
    ])));
    let got = stream_chat(&g.proxy.url, request()).await;
    assert_eq!(
        got.calls(),
        [(0, "call_a".into(), "lookup".into(), "{\"q\":\"x\"}".into())]
    );
    assert!(!got.raw.contains("call_w") && !got.raw.contains("weather__current"));
    assert_eq!(got.finishes(), ["tool_calls"]);
    assert_eq!(got.done, 1);

    // The follow-up streams too, and carries only the client's own call and
    // result, as an SDK builds them from what it received.
    let answer = sse_text(&["x found; ", "18 degrees."]);
    let expected: Vec<u8> = answer.iter().flat_map(|b| b.to_vec()).collect();
    g.upstream.push(Reply::sse(answer));
    let tool_calls: Vec<Value> = got
        .calls()
        .into_iter()
        .map(|(_, id, name, arguments)| {
            json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}})
        })
        .collect();
    let mut follow_up = request();
    let messages = follow_up["messages"].as_array_mut().unwrap();
    messages.push(json!({"role": "assistant", "content": null, "tool_calls": tool_calls}));
    messages.push(json!({"role": "tool", "tool_call_id": "call_a", "content": "x found"}));
    let got = stream_chat(&g.proxy.url, follow_up).await;
    assert_eq!(
        got.raw.as_bytes(),
        expected,
        "an answer without calls keeps its bytes"
    );
    assert_eq!(got.text(), "x found; 18 degrees.");
    assert_eq!(got.finishes(), ["stop"]);
    assert_eq!(got.done, 1);

    // The upstream's second turn is the whole conversation: the governed call
    // back in the assistant turn, in the model's order, each call answered.
    let sent = g.sent();
    assert_eq!(sent.len(), 2);
    let turn2 = &sent[1];
    assert_eq!(turn2["stream"], true);
    assert_paired(turn2);
    let messages = turn2["messages"].as_array().unwrap();
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "tool", "tool"]);
    let calls: Vec<(&str, &str, &str)> = messages[1]["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap(),
                c["function"]["name"].as_str().unwrap(),
                c["function"]["arguments"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        calls,
        [
            ("call_a", "lookup", "{\"q\":\"x\"}"),
            ("call_w", "weather__current", "{\"city\":\"Paris\"}")
        ]
    );
    assert_eq!(
        tool_messages(turn2),
        [
            ("call_a".to_owned(), "x found".to_owned()),
            ("call_w".to_owned(), "{\"temp_c\":18}".to_owned())
        ]
    );
    // The governed tool ran once, in the first turn; nothing new was decided.
    assert_eq!(g.tool.as_ref().unwrap().received().len(), 1);
    assert_eq!(g.proxy.receipt_lines().len(), 2);
    g.proxy.verify_receipts();
}
