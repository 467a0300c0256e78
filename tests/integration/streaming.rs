//! Streaming: event streams reach the client event by event as the upstream
//! produces them; the recorded API streams cross byte for byte however the
//! upstream splits them; an upstream that fails mid-stream ends the client's
//! stream with an error event, never with half an event.

use std::path::PathBuf;

use bytes::Bytes;

use crate::common::mock::{MockUpstream, Reply, StreamFeed};
use crate::common::{
    TestProxy, WAIT, client, pattern, read_to_end, shared_fixtures, still_serving,
};

fn sse_headers() -> Vec<(String, String)> {
    vec![
        (
            "content-type".into(),
            "text/event-stream; charset=utf-8".into(),
        ),
        ("cache-control".into(), "no-cache".into()),
        ("x-request-id".into(), "req_stream".into()),
    ]
}

/// Starts a test-fed event stream on `path` and returns the client's response
/// and the feed.
async fn open_stream(
    mock: &MockUpstream,
    proxy: &TestProxy,
    path: &str,
) -> (reqwest::Response, StreamFeed) {
    let (reply, feed) = Reply::stream(200, sse_headers());
    mock.push(reply);
    let response = client()
        .post(format!("{}{path}", proxy.url))
        .body("{\"stream\":true}")
        .send()
        .await
        .unwrap();
    (response, feed)
}

/// Reads from the response until `want` bytes have arrived in total (bounded).
async fn read_until(response: &mut reqwest::Response, got: &mut Vec<u8>, want: usize) {
    while got.len() < want {
        let chunk = tokio::time::timeout(WAIT, response.chunk())
            .await
            .expect("the proxy held back bytes the upstream had already sent")
            .unwrap()
            .expect("stream ended early");
        got.extend_from_slice(&chunk);
    }
}

#[tokio::test]
async fn each_event_reaches_the_client_before_the_upstream_sends_the_next() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::start(&mock.url(), "").await;
    let (reply, feed) = Reply::stream(200, sse_headers());
    mock.push(reply);
    let mut response = client()
        .post(format!("{}/v1/completions", proxy.url))
        .header("content-type", "application/json")
        .body("{\"model\":\"gpt-4o\",\"stream\":true,\"messages\":[]}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    assert_eq!(response.headers()["x-request-id"], "req_stream");
    assert!(response.headers().get("content-length").is_none());

    let events: Vec<String> = (0..5)
        .map(|i| format!("data: {{\"id\":\"chatcmpl-1\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{i}\"}}}}]}}\n\n"))
        .chain(std::iter::once("data: [DONE]\n\n".to_owned()))
        .collect();
    let mut got = Vec::new();
    let mut expected = Vec::new();
    for event in &events {
        // The upstream sends one event only after the client holds the previous one.
        feed.send(event.clone());
        expected.extend_from_slice(event.as_bytes());
        read_until(&mut response, &mut got, expected.len()).await;
        assert_eq!(got, expected);
    }
    drop(feed);
    assert!(
        tokio::time::timeout(WAIT, response.chunk())
            .await
            .unwrap()
            .unwrap()
            .is_none()
    );
}

/// Every recorded stream and body in the shared fixtures.
fn recorded_files() -> Vec<PathBuf> {
    let root = shared_fixtures().join("recorded");
    let mut files = Vec::new();
    for dir in ["chat", "responses", "anthropic"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            files.push(entry.unwrap().path());
        }
    }
    files.sort();
    assert!(
        files.len() >= 11,
        "expected the recorded fixtures at {}",
        root.display()
    );
    files
}

/// Cuts `bytes` into pieces of 1 to 97 bytes, positions chosen by `seed`.
fn ragged(bytes: &[u8], seed: u64) -> Vec<Bytes> {
    let sizes = pattern(bytes.len(), seed);
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < bytes.len() {
        let size = (1 + sizes[i] as usize % 97).min(bytes.len() - at);
        out.push(Bytes::copy_from_slice(&bytes[at..at + size]));
        at += size;
        i += 1;
    }
    out
}

#[tokio::test]
async fn recorded_api_streams_and_bodies_cross_byte_for_byte() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::start(&mock.url(), "").await;
    let http = client();
    for (n, path) in recorded_files().iter().enumerate() {
        let bytes = std::fs::read(path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("chat-stream-tool-call") {
            // Tool calls on Chat Completions are governed, not relayed byte for
            // byte: `chat_stream::recorded_tool_call_streams_are_governed` covers them.
            continue;
        }
        let (route, content_type) = if name.starts_with("anthropic") {
            ("/v1/messages", "text/event-stream")
        } else if name.starts_with("responses") {
            (
                "/v1/responses",
                if name.ends_with(".json") {
                    "application/json"
                } else {
                    "text/event-stream"
                },
            )
        } else {
            ("/v1/chat/completions", "text/event-stream")
        };
        // Each file twice: in one piece, and cut at ragged places (mid-line, mid-CRLF).
        for chunks in [
            vec![Bytes::from(bytes.clone())],
            ragged(&bytes, n as u64 + 1),
        ] {
            mock.push(Reply::Chunked {
                status: 200,
                headers: vec![("content-type".into(), content_type.into())],
                chunks,
            });
            // Responses are governed: a plain body answers a plain request.
            let body = if content_type == "application/json" {
                "{}"
            } else {
                "{\"stream\":true}"
            };
            let response = http
                .post(format!("{}{route}", proxy.url))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{name}");
            assert_eq!(response.headers()["content-type"], content_type, "{name}");
            let got = response.bytes().await.unwrap();
            assert!(
                got == bytes,
                "{name}: relayed bytes differ from the recording"
            );
        }
    }
}

#[tokio::test]
async fn an_upstream_failing_mid_stream_ends_the_stream_with_an_error_event() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::start(&mock.url(), "").await;
    let first = "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n";
    let (mut response, feed) = open_stream(&mock, &proxy, "/v1/completions").await;
    feed.send(first);
    let mut got = Vec::new();
    read_until(&mut response, &mut got, first.len()).await;
    // Half an event, then the connection breaks.
    feed.send("data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"argum");
    feed.abort();
    read_to_end(&mut response, &mut got).await;
    let text = String::from_utf8(got).unwrap();
    assert!(text.starts_with(first));
    let rest = &text[first.len()..];
    assert!(
        !rest.contains("argum"),
        "half an event was released: {rest}"
    );
    let data = rest
        .strip_prefix("data: ")
        .and_then(|r| r.strip_suffix("\n\n"))
        .expect(rest);
    let error: serde_json::Value = serde_json::from_str(data).unwrap();
    assert_eq!(error["error"]["code"], "upstream_stream_interrupted");
    assert_eq!(error["error"]["type"], "upstream_error");

    // The process keeps serving.
    still_serving(&proxy, &mock).await;
}

#[tokio::test]
async fn anthropic_streams_fail_in_anthropic_format() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::start(&mock.url(), "").await;
    let first = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{}}\n\n";
    let (mut response, feed) = open_stream(&mock, &proxy, "/v1/messages").await;
    feed.send(first);
    let mut got = Vec::new();
    read_until(&mut response, &mut got, first.len()).await;
    feed.abort();
    read_to_end(&mut response, &mut got).await;
    let text = String::from_utf8(got).unwrap();
    let rest = &text[first.len()..];
    assert!(rest.starts_with("event: error\ndata: "), "{rest}");
    let data: serde_json::Value =
        serde_json::from_str(rest["event: error\ndata: ".len()..].trim_end()).unwrap();
    assert_eq!(data["type"], "error");
    assert_eq!(data["error"]["type"], "api_error");
}

#[tokio::test]
async fn a_silent_upstream_stream_is_ended_after_the_idle_timeout() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::start(&mock.url(), "idle_timeout = \"300ms\"").await;
    let first = "data: {\"a\":1}\n\n";
    let (mut response, feed) = open_stream(&mock, &proxy, "/v1/completions").await;
    feed.send(first);
    let mut got = Vec::new();
    read_to_end(&mut response, &mut got).await;
    let text = String::from_utf8(got).unwrap();
    assert!(text.starts_with(first));
    assert!(
        text[first.len()..].contains("upstream sent nothing"),
        "{text}"
    );
    drop(feed);
}

#[tokio::test]
async fn a_sized_body_cut_short_is_an_error_for_the_client() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::start(&mock.url(), "").await;
    let (reply, feed) = Reply::stream(
        200,
        vec![
            ("content-type".into(), "application/json".into()),
            ("content-length".into(), "100".into()),
        ],
    );
    mock.push(reply);
    let response = client()
        .post(format!("{}/v1/completions", proxy.url))
        .body("{}")
        .send()
        .await
        .unwrap();
    feed.send("{\"partial\":");
    feed.abort();
    assert!(
        response.bytes().await.is_err(),
        "a truncated body must not look complete"
    );
}

#[tokio::test]
async fn an_event_larger_than_the_hold_limit_is_forwarded_as_it_comes() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::start(&mock.url(), "").await;
    let (mut response, feed) = open_stream(&mock, &proxy, "/v1/completions").await;
    let big = format!("data: {{\"blob\":\"{}", "x".repeat(5 * 1024 * 1024));
    feed.send(big.clone());
    // Past the limit the partial event is released before its end arrives.
    let mut got = Vec::new();
    read_until(
        &mut response,
        &mut got,
        tollgate::proxy::body::MAX_HELD_EVENT_BYTES,
    )
    .await;
    feed.send("\"}\n\ndata: [DONE]\n\n");
    drop(feed);
    read_to_end(&mut response, &mut got).await;
    let expected = format!("{big}\"}}\n\ndata: [DONE]\n\n");
    assert!(got == expected.as_bytes(), "a large event was changed");
}

#[tokio::test]
async fn events_already_received_go_out_together() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::start(&mock.url(), "").await;
    // Ten events the upstream writes at once: the client should not get ten writes.
    let events: Vec<Bytes> = (0..10)
        .map(|i| Bytes::from(format!("data: {{\"n\":{i}}}\n\n")))
        .collect();
    let expected: Vec<u8> = events.iter().flat_map(|e| e.to_vec()).collect();
    mock.push(Reply::sse(events));
    let raw = crate::common::raw_exchange(
        proxy.addr,
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
    )
    .await;
    let (head, body) = crate::common::split_response(&raw);
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    assert_eq!(crate::common::dechunk(&body), expected);
    let chunks = crate::common::count_chunks(&body);
    assert!(
        chunks <= 5,
        "{chunks} writes for 10 events the upstream sent at once"
    );
}
