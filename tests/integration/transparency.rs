//! Transparency: requests and responses cross the proxy unchanged, bytes, status
//! and end-to-end headers, in both directions and in both body framings.

use bytes::Bytes;

use crate::common::mock::{MockUpstream, Reply};
use crate::common::{TestProxy, client, dechunk, pattern, raw_exchange, split_response};

/// A chat request as the OpenAI Python SDK sends it, odd spacing and all.
const CHAT_BODY: &str = "{\"model\": \"gpt-4o\",  \"messages\":[{\"role\":\"user\",\"content\":\"h\\u00e9llo \\ud83d\\ude00 \u{1F600}\"}],\n \"temperature\": 0.70}";

fn header_lines(head: &str) -> Vec<(String, String)> {
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect()
}

#[tokio::test]
async fn request_bytes_and_end_to_end_headers_reach_the_upstream_unchanged() {
    // A passthrough endpoint, and the governed one with nothing to add: the same
    // bytes and headers, except that the governed one asks for an uncompressed
    // answer (tollgate has to read it).
    for (path, governed) in [("/v1/embeddings", false), ("/v1/chat/completions", true)] {
        exchange_and_compare(path, governed).await;
    }
}

async fn exchange_and_compare(path: &str, governed: bool) {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::start(&mock.url(), "").await;
    let sent_headers = [
        ("Authorization", "Bearer sk-test-0123456789abcdef"),
        ("Content-Type", "application/json"),
        ("Accept", "application/json"),
        ("Accept-Encoding", "gzip, deflate"),
        ("User-Agent", "OpenAI/Python 3.54.0"),
        ("X-Stainless-Lang", "python"),
        ("X-Stainless-Retry-Count", "0"),
        ("OpenAI-Organization", "org-test"),
        ("OpenAI-Project", "proj_test"),
        ("X-Custom", "a"),
    ];
    let mut request = format!("POST {path}?x=1&y=%20 HTTP/1.1\r\nHost: {}\r\n", proxy.addr);
    for (k, v) in sent_headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    // Hop-by-hop headers, which must not cross.
    request.push_str(
        "Connection: close, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n",
    );
    request.push_str(&format!(
        "Content-Length: {}\r\n\r\n{}",
        CHAT_BODY.len(),
        CHAT_BODY
    ));
    mock.push(Reply::json("{}"));
    raw_exchange(proxy.addr, request.as_bytes()).await;

    let got = &mock.wait_for(1).await[0];
    assert_eq!(got.method, "POST");
    assert_eq!(got.target, format!("{path}?x=1&y=%20"));
    assert_eq!(got.body, CHAT_BODY.as_bytes());
    for (k, v) in sent_headers {
        if governed && k == "Accept-Encoding" {
            assert!(!got.headers.contains_key(k), "{path}: {k} was forwarded");
            continue;
        }
        let values: Vec<_> = got.headers.get_all(k).iter().collect();
        assert_eq!(values.len(), 1, "{k} arrived {} times", values.len());
        assert_eq!(values[0], v, "{k}");
    }
    assert_eq!(
        got.headers["content-length"],
        CHAT_BODY.len().to_string().as_str()
    );
    for hop in ["x-hop", "keep-alive", "te", "transfer-encoding"] {
        assert!(
            !got.headers.contains_key(hop),
            "hop-by-hop {hop} was forwarded"
        );
    }
    // Host names the upstream, not the proxy; nothing else was added.
    assert_eq!(got.headers["host"], mock.addr.to_string().as_str());
    let expected = sent_headers.len() + 2 - usize::from(governed); // + host, content-length
    let names: Vec<_> = got.headers.keys().map(|k| k.as_str()).collect();
    assert_eq!(
        got.headers.len(),
        expected,
        "unexpected headers upstream: {names:?}"
    );
}

#[tokio::test]
async fn response_status_headers_and_body_reach_the_client_unchanged() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::start(&mock.url(), "").await;
    let body = Bytes::from_static(
        b"{\"id\":\"chatcmpl-1\",\n  \"object\":\"chat.completion\",\"choices\":[]}",
    );
    let headers: Vec<(String, String)> = [
        ("content-type", "application/json"),
        ("x-request-id", "req_abc123"),
        ("openai-processing-ms", "412"),
        ("openai-version", "2020-10-01"),
        ("openai-organization", "org-test"),
        ("x-ratelimit-limit-requests", "10000"),
        ("x-ratelimit-remaining-tokens", "29999"),
        ("x-ratelimit-reset-requests", "6m0s"),
        ("set-cookie", "__cf_bm=abc; path=/; HttpOnly"),
        ("set-cookie", "_cfuvid=def; path=/"),
        ("strict-transport-security", "max-age=31536000"),
        ("cf-ray", "8c1-SJC"),
        ("x-upstream-hop", "1"),
        ("connection", "x-upstream-hop"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    mock.push(Reply::Full {
        status: 201,
        headers: headers.clone(),
        body: body.clone(),
    });
    let raw = raw_exchange(
        proxy.addr,
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (head, got_body) = split_response(&raw);
    assert!(head.starts_with("HTTP/1.1 201 "), "{head}");
    assert_eq!(got_body, body);
    let got = header_lines(&head);
    for (k, v) in headers
        .iter()
        .filter(|(k, _)| k != "connection" && k != "x-upstream-hop")
    {
        assert!(
            got.contains(&(k.clone(), v.clone())),
            "missing {k}: {v} in\n{head}"
        );
    }
    assert!(
        !got.iter().any(|(k, _)| k == "x-upstream-hop"),
        "hop-by-hop header relayed"
    );
    assert!(
        !got.iter().any(|(k, _)| k == "transfer-encoding"),
        "chunking added to a sized body"
    );
    assert!(got.contains(&("content-length".into(), body.len().to_string())));
    assert!(
        got.iter()
            .any(|(k, v)| k == "x-tollgate-request-id" && v.starts_with("tgr_"))
    );
}

#[tokio::test]
async fn statuses_pass_through_unchanged() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::start(&mock.url(), "").await;
    let http = client();
    for status in [
        200u16, 201, 202, 204, 301, 304, 400, 401, 403, 404, 409, 418, 422, 500, 502, 503,
    ] {
        let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        if status == 301 {
            headers.push((
                "location".into(),
                "https://example.invalid/elsewhere".into(),
            ));
        }
        let body = if status == 204 || status == 304 {
            Bytes::new()
        } else {
            Bytes::from(format!("{{\"status\":{status}}}"))
        };
        mock.push(Reply::Full {
            status,
            headers,
            body: body.clone(),
        });
        let response = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
            .get(format!("{}/v1/status", proxy.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status);
        if status == 301 {
            assert_eq!(
                response.headers()["location"],
                "https://example.invalid/elsewhere"
            );
        }
        assert_eq!(response.bytes().await.unwrap(), body, "status {status}");
    }
    // The shared client keeps working after all of those.
    mock.push(Reply::json("{\"ok\":true}"));
    let ok = http
        .get(format!("{}/v1/models", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.text().await.unwrap(), "{\"ok\":true}");
}

#[tokio::test]
async fn chunked_bodies_stay_chunked_and_sized_bodies_stay_sized() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::start(&mock.url(), "").await;

    // Chunked request: arrives upstream without a length, same bytes.
    mock.push(Reply::Chunked {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        chunks: vec![Bytes::from_static(b"{\"a\":"), Bytes::from_static(b"1}")],
    });
    let raw = raw_exchange(
        proxy.addr,
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"in\"\r\n7\r\n:\"put\"}\r\n0\r\n\r\n",
    )
    .await;
    let got = &mock.wait_for(1).await[0];
    assert_eq!(got.body.as_ref(), b"{\"in\":\"put\"}");
    assert!(!got.headers.contains_key("content-length"));
    assert_eq!(got.headers["transfer-encoding"], "chunked");
    // Chunked response: relayed chunked, same bytes.
    let (head, body) = split_response(&raw);
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("transfer-encoding: chunked"), "{head}");
    assert!(!lower.contains("content-length"), "{head}");
    assert_eq!(dechunk(&body), b"{\"a\":1}");

    // Sized request and response: lengths kept, no chunking added.
    mock.push(Reply::json("{\"b\":2}"));
    let raw = raw_exchange(
        proxy.addr,
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"c\":3}",
    )
    .await;
    let got = &mock.wait_for(2).await[1];
    assert_eq!(got.headers["content-length"], "7");
    assert!(!got.headers.contains_key("transfer-encoding"));
    let (head, body) = split_response(&raw);
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("content-length: 7"), "{head}");
    assert!(!lower.contains("transfer-encoding"), "{head}");
    assert_eq!(body, b"{\"b\":2}");
}

#[tokio::test]
async fn multipart_file_upload_arrives_byte_for_byte() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::start(&mock.url(), "").await;
    let boundary = "----tollgate-test-boundary-7MA4YWxkTrZu0gW";
    let file = pattern(300_000, 7); // every byte value, including CR, LF and NUL
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"train.jsonl\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
    );
    body.extend_from_slice(&file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let content_type = format!("multipart/form-data; boundary={boundary}");
    mock.push(Reply::json("{\"id\":\"file-abc\",\"object\":\"file\"}"));

    let response = client()
        .post(format!("{}/v1/files", proxy.url))
        .header("authorization", "Bearer sk-test")
        .header("content-type", &content_type)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().await.unwrap(),
        "{\"id\":\"file-abc\",\"object\":\"file\"}"
    );
    let got = &mock.wait_for(1).await[0];
    assert_eq!(got.target, "/v1/files");
    assert_eq!(got.headers["content-type"], content_type.as_str());
    assert_eq!(got.body.len(), body.len());
    assert!(got.body == body, "multipart body changed in transit");
}

#[tokio::test]
async fn ten_mebibyte_bodies_cross_both_ways() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::start(&mock.url(), "").await;
    let body = pattern(10 * 1024 * 1024, 42);
    // No queued reply: the mock echoes the body back.
    let response = client()
        .post(format!("{}/v1/uploads/echo", proxy.url))
        .header("content-type", "application/octet-stream")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let back = response.bytes().await.unwrap();
    let got = &mock.wait_for(1).await[0];
    assert!(got.body == body, "request body changed on the way up");
    assert!(back == body, "response body changed on the way down");
}

#[tokio::test]
async fn http2_clients_are_relayed_too() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::start(&mock.url(), "").await;
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    mock.push(Reply::json("{\"object\":\"list\",\"data\":[]}"));
    let response = h2
        .get(format!("{}/v1/models", proxy.url))
        .header("authorization", "Bearer sk-h2")
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().await.unwrap(),
        "{\"object\":\"list\",\"data\":[]}"
    );
    let got = &mock.wait_for(1).await[0];
    assert_eq!(got.headers["authorization"], "Bearer sk-h2");
    assert_eq!(got.headers["host"], mock.addr.to_string().as_str());
}

#[tokio::test]
async fn compressed_responses_are_not_decoded() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::start(&mock.url(), "").await;
    // Not real gzip: the proxy must not look inside.
    let opaque = Bytes::from(pattern(4096, 3));
    mock.push(Reply::Full {
        status: 200,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("content-encoding".into(), "gzip".into()),
        ],
        body: opaque.clone(),
    });
    let response = client()
        .get(format!("{}/v1/models", proxy.url))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-encoding"], "gzip");
    assert_eq!(response.bytes().await.unwrap(), opaque);
    assert_eq!(mock.wait_for(1).await[0].headers["accept-encoding"], "gzip");
}
