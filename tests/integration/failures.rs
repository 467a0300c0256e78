//! Failures: malformed HTTP, oversized bodies and headers, slow clients, and an
//! unreachable, silent or broken upstream. Each gets a clean error (OpenAI-shaped
//! JSON where tollgate can write one), nothing is forwarded that should not be,
//! and the process keeps serving others.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::mock::{MockUpstream, Reply, StreamFeed};
use crate::common::{TestProxy, WAIT, client, raw_exchange, split_response, still_serving};

/// Asserts an OpenAI-shaped error from tollgate and returns its `code`.
async fn tollgate_error(response: reqwest::Response, status: u16) -> String {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(response.headers()["content-type"], "application/json");
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(request_id.starts_with("tgr_"), "{request_id}");
    assert_eq!(
        response.headers()["x-tollgate-request-id"],
        request_id.as_str()
    );
    let body: serde_json::Value = response.json().await.unwrap();
    let error = &body["error"];
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(error["type"].is_string());
    assert!(error.get("param").is_some_and(|p| p.is_null()));
    error["code"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn malformed_http_gets_400_and_the_server_keeps_serving() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::start(&mock.url(), "").await;
    for garbage in [
        &b"THIS IS NOT HTTP\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Name: 1\r\n\r\n",
        b"POST /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"GET /v1/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ] {
        let raw = raw_exchange(proxy.addr, garbage).await;
        let text = String::from_utf8_lossy(&raw);
        assert!(
            text.starts_with("HTTP/1.1 400"),
            "{:?} -> {text}",
            String::from_utf8_lossy(garbage)
        );
    }
    assert!(
        mock.received().is_empty(),
        "malformed requests were forwarded"
    );
    still_serving(&proxy, &mock).await;
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_before_or_while_streaming() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::start(&mock.url(), "max_body_bytes = 1048576").await;
    // Declared too large: refused without contacting the upstream.
    let response = client()
        .post(format!("{}/v1/files", proxy.url))
        .body(vec![b'x'; 1024 * 1024 + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(
        tollgate_error(response, 413).await,
        "request_body_too_large"
    );
    assert!(mock.received().is_empty());

    // Undeclared (chunked) and too large: cut off mid-stream, still a 413.
    let stream =
        futures_util::stream::iter((0..40).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 64 * 1024])));
    let response = client()
        .post(format!("{}/v1/files", proxy.url))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(
        tollgate_error(response, 413).await,
        "request_body_too_large"
    );

    // Exactly at the limit passes.
    let response = client()
        .post(format!("{}/v1/files", proxy.url))
        .body(vec![b'z'; 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap().len(), 1024 * 1024);
}

/// A Chat Completions answer with no tool call.
fn completion() -> Reply {
    answer_saying("ok")
}

/// A Chat Completions answer whose message says `content`.
fn answer_saying(content: &str) -> Reply {
    Reply::json(
        serde_json::json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
        .to_string(),
    )
}

/// A mock upstream, a proxy in front of it with these limits, and the proxy's Chat
/// Completions URL.
async fn with_limits(limits: &str) -> (MockUpstream, TestProxy, String) {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::start(&mock.url(), limits).await;
    let url = format!("{}/v1/chat/completions", proxy.url);
    (mock, proxy, url)
}

/// The retryable 503 of a spent memory budget.
async fn assert_overloaded(response: reqwest::Response) {
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(tollgate_error(response, 503).await, "server_overloaded");
}

/// A governed Chat request with 48 KiB of text: its body and its parsed form take
/// about 97 KiB of the budget.
fn big(stream: bool) -> serde_json::Value {
    serde_json::json!({"model": "gpt-4o", "stream": stream,
        "messages": [{"role": "user", "content": "x".repeat(48 * 1024)}]})
}

/// A proxy whose memory budget has room for one [`big`] request at a time, not
/// two, and a big stream on it that the upstream holds open (written through the
/// returned feed).
async fn one_big_stream_held() -> (
    MockUpstream,
    TestProxy,
    String,
    reqwest::Response,
    StreamFeed,
) {
    let (mock, proxy, url) =
        with_limits("max_body_bytes = 65536\nmax_governed_bytes = 163840").await;
    let (reply, feed) = Reply::stream(
        200,
        vec![("content-type".into(), "text/event-stream".into())],
    );
    mock.push(reply);
    let first = client().post(&url).json(&big(true)).send().await.unwrap();
    assert_eq!(first.status(), 200);
    (mock, proxy, url, first, feed)
}

/// Sends a plain [`big`] request until the budget admits it (at most 51 tries,
/// `before` run ahead of each): a stream's share comes back when its task ends,
/// a moment after its client has seen the end.
async fn big_until_admitted(url: &str, mut before: impl FnMut()) -> reqwest::Response {
    let mut refused = 0;
    loop {
        before();
        let response = client().post(url).json(&big(false)).send().await.unwrap();
        if response.status() != 503 || refused == 50 {
            assert_eq!(
                response.status(),
                200,
                "still refused after {refused} retries"
            );
            return response;
        }
        refused += 1;
    }
}

#[tokio::test]
async fn governed_requests_beyond_the_memory_budget_get_503_and_the_budget_comes_back() {
    // The first is held open by the upstream: its body's share stays taken.
    let (mock, proxy, url, mut first, feed) = one_big_stream_held().await;

    // A second of the same size does not fit: refused at once, never forwarded,
    // with a 503 the SDKs retry after the advertised pause.
    let second = client().post(&url).json(&big(false)).send().await.unwrap();
    assert_eq!(second.headers()["x-should-retry"], "true");
    assert_overloaded(second).await;
    assert_eq!(mock.received().len(), 1);

    // A small one still fits beside the first.
    mock.push(completion());
    let small = client()
        .post(&url)
        .json(&serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(small.status(), 200);
    assert_eq!(mock.received().len(), 2);

    // The first ends; its share comes back once its stream task is done, which a
    // client retrying on 503 sees within a few attempts.
    let chunk = serde_json::json!({"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 1,
        "model": "gpt-4o", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "done"},
        "finish_reason": "stop"}]});
    feed.send(format!("data: {chunk}\n\ndata: [DONE]\n\n"));
    drop(feed);
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, crate::common::read_to_end(&mut first, &mut got))
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&got).ends_with("data: [DONE]\n\n"));
    mock.push(completion());
    big_until_admitted(&url, || {}).await;
    assert_eq!(mock.received().len(), 3);
    still_serving(&proxy, &mock).await;
}

#[tokio::test]
async fn a_client_leaving_a_governed_stream_gives_its_share_back() {
    let (mock, proxy, url, first, feed) = one_big_stream_held().await;
    assert_overloaded(client().post(&url).json(&big(false)).send().await.unwrap()).await;

    // The client goes with the upstream's stream still open and silent: the
    // stream stops without waiting for the upstream's next event, and its share
    // comes back.
    drop(first);
    mock.push(completion());
    big_until_admitted(&url, || {}).await;
    drop(feed);
    assert_eq!(mock.received().len(), 2);
    still_serving(&proxy, &mock).await;
}

#[tokio::test]
async fn a_body_that_parses_into_more_than_the_budget_gets_503_before_it_is_forwarded() {
    let (mock, proxy, url) =
        with_limits("max_body_bytes = 16384\nmax_governed_bytes = 65536").await;
    // 12 KiB of body, within every byte limit, but 6,000 values once parsed: far
    // more than the 64 KiB budget.
    let request = serde_json::json!({"model": "gpt-4o",
        "messages": [{"role": "user", "content": "hi"}], "logit_bias_list": vec![0; 6000]});
    let body = serde_json::to_vec(&request).unwrap();
    assert!(body.len() < 16384);
    let refused = client()
        .post(&url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_overloaded(refused).await;
    assert!(mock.received().is_empty(), "nothing was forwarded");
    still_serving(&proxy, &mock).await;
}

#[tokio::test]
async fn a_governed_answer_beyond_the_memory_budget_gets_503_and_its_share_comes_back() {
    let (mock, proxy, url) =
        with_limits("max_body_bytes = 16384\nmax_governed_bytes = 65536").await;
    let request =
        serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]});
    // An answer bigger than the whole budget: the request was forwarded, but its
    // answer is not held; the client gets the retryable 503.
    mock.push(answer_saying(&"x".repeat(96 * 1024)));
    let refused = client().post(&url).json(&request).send().await.unwrap();
    assert_overloaded(refused).await;
    assert_eq!(mock.received().len(), 1);

    // Its share came back: an answer of most of the budget is served whole.
    let content = "y".repeat(48 * 1024);
    mock.push(answer_saying(&content));
    let served = client().post(&url).json(&request).send().await.unwrap();
    assert_eq!(served.status(), 200);
    let body: serde_json::Value = served.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], content.as_str());
    assert_eq!(mock.received().len(), 2);
    still_serving(&proxy, &mock).await;
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::start(&mock.url(), "max_header_bytes = 8192\nmax_headers = 20").await;
    // Just over tollgate's limit: tollgate's own JSON error.
    let response = client()
        .get(format!("{}/v1/models", proxy.url))
        .header("x-big", "a".repeat(9000))
        .send()
        .await
        .unwrap();
    assert_eq!(
        tollgate_error(response, 431).await,
        "request_headers_too_large"
    );
    // Too many headers.
    let mut request = client().get(format!("{}/v1/models", proxy.url));
    for i in 0..25 {
        request = request.header(format!("x-h{i}"), "v");
    }
    assert_eq!(
        tollgate_error(request.send().await.unwrap(), 431).await,
        "request_headers_too_large"
    );
    // Far over it: refused by the HTTP layer before a request exists.
    let huge = format!(
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Huge: {}\r\n\r\n",
        "b".repeat(200_000)
    );
    let raw = raw_exchange(proxy.addr, huge.as_bytes()).await;
    assert!(String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 431"));
    assert!(mock.received().is_empty());
    still_serving(&proxy, &mock).await;
}

#[tokio::test]
async fn a_client_sending_headers_slowly_is_dropped_without_slowing_others() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::start(&mock.url(), "header_read_timeout = \"300ms\"").await;
    let mut slow = TcpStream::connect(proxy.addr).await.unwrap();
    slow.write_all(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    // Others are served while the slow client holds its connection.
    still_serving(&proxy, &mock).await;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(WAIT, slow.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the slow client was never dropped");
    assert!(
        mock.received().len() == 1,
        "the slow request reached the upstream"
    );
    still_serving(&proxy, &mock).await;
}

#[tokio::test]
async fn a_connection_that_never_sends_a_request_is_closed() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::start(&mock.url(), "header_read_timeout = \"300ms\"").await;
    // Silent from the start, and stalled inside the HTTP/2 preface (which the
    // protocol detection waits for).
    for opening in [&b""[..], b"PRI * HTTP/2.0\r\n"] {
        let mut idle = TcpStream::connect(proxy.addr).await.unwrap();
        idle.write_all(opening).await.unwrap();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(WAIT, idle.read_to_end(&mut rest)).await;
        assert!(
            closed.is_ok(),
            "a connection with no request stayed open ({opening:?})"
        );
    }
    still_serving(&proxy, &mock).await;
}

#[tokio::test]
async fn a_client_stalling_mid_body_gets_408() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::start(&mock.url(), "idle_timeout = \"300ms\"").await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"POST /v1/files HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten b")
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, async {
        // Read until the complete head and JSON body have arrived.
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            raw.extend_from_slice(&buf[..n]);
            if n == 0 || raw.ends_with(b"}}") {
                break;
            }
        }
    })
    .await
    .unwrap();
    let (head, body) = split_response(&raw);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"]["code"], "request_body_timeout");
    still_serving(&proxy, &mock).await;
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502() {
    // A port that was just free: nothing listens there.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let proxy = TestProxy::start(&format!("http://127.0.0.1:{port}"), "").await;
    let response = client()
        .post(format!("{}/v1/chat/completions", proxy.url))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-should-retry"], "true");
    assert_eq!(tollgate_error(response, 502).await, "upstream_unreachable");
}

#[tokio::test]
async fn an_upstream_that_never_answers_is_a_504() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::start(&mock.url(), "first_byte_timeout = \"300ms\"").await;
    mock.push(Reply::Hang);
    let response = client()
        .post(format!("{}/v1/chat/completions", proxy.url))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(tollgate_error(response, 504).await, "upstream_timeout");
    still_serving(&proxy, &mock).await;
}

#[tokio::test]
async fn upstream_errors_pass_through_untouched() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::start(&mock.url(), "").await;
    let rate_limited = "{\"error\":{\"message\":\"Rate limit reached for gpt-4o\",\"type\":\"requests\",\"param\":null,\"code\":\"rate_limit_exceeded\"}}";
    mock.push(Reply::Full {
        status: 429,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("retry-after".into(), "7".into()),
            ("retry-after-ms".into(), "7000".into()),
            ("x-request-id".into(), "req_429".into()),
            ("x-ratelimit-remaining-requests".into(), "0".into()),
        ],
        body: rate_limited.into(),
    });
    let response = client()
        .post(format!("{}/v1/chat/completions", proxy.url))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    assert_eq!(response.headers()["retry-after-ms"], "7000");
    assert_eq!(response.headers()["x-request-id"], "req_429");
    assert_eq!(response.headers()["x-ratelimit-remaining-requests"], "0");
    assert!(response.headers().get("x-tollgate-error-source").is_none());
    assert_eq!(response.text().await.unwrap(), rate_limited);

    let server_error = "{\"error\":{\"message\":\"The server had an error\",\"type\":\"server_error\",\"param\":null,\"code\":null}}";
    mock.push(Reply::Full {
        status: 500,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("x-request-id".into(), "req_500".into()),
        ],
        body: server_error.into(),
    });
    let response = client()
        .post(format!("{}/v1/chat/completions", proxy.url))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    assert_eq!(response.headers()["x-request-id"], "req_500");
    assert_eq!(response.text().await.unwrap(), server_error);
}

#[tokio::test]
async fn requests_a_reverse_proxy_cannot_relay_are_refused() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::start(&mock.url(), "").await;
    let upgrade = client()
        .get(format!("{}/v1/realtime", proxy.url))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .send()
        .await
        .unwrap();
    assert_eq!(tollgate_error(upgrade, 400).await, "upgrade_not_supported");
    let raw = raw_exchange(proxy.addr, b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\nConnection: close\r\n\r\n").await;
    assert!(String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 400"));
    let raw = raw_exchange(
        proxy.addr,
        b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 400"));
    assert!(mock.received().is_empty());
    // An absolute-form target is relayed to the configured upstream, never elsewhere.
    mock.push(Reply::json("{}"));
    let raw = raw_exchange(
        proxy.addr,
        b"GET http://elsewhere.invalid/v1/models HTTP/1.1\r\nHost: elsewhere.invalid\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 200"));
    let got = &mock.wait_for(1).await[0];
    assert_eq!(got.target, "/v1/models");
    assert_eq!(got.headers["host"], mock.addr.to_string().as_str());
}
