//! Lifecycle: the binary's commands (`serve` with no configuration, `check`,
//! `certs dev`), configuration from file and environment, the HTTPS listener with
//! the development certificates, the admin endpoints, and graceful shutdown.

use std::path::Path;

use crate::common::mock::{MockUpstream, Reply};
use crate::common::{Binary, TestProxy, WAIT, client, read_to_end, run_binary};
use tollgate::cli::ServeArgs;

#[tokio::test]
async fn serve_starts_with_no_configuration_at_all() {
    let dir = tempfile::tempdir().unwrap();
    // Only the port differs from a bare `tollgate serve`, so that tests can run in
    // parallel; no request goes upstream.
    let mut tollgate = Binary::start(&["serve", "--listen", "127.0.0.1:0"], dir.path(), &[]);
    let url = tollgate.wait_listening();
    assert!(
        tollgate
            .seen
            .last()
            .unwrap()
            .contains("upstream=https://api.openai.com")
    );
    let health = client()
        .get(format!("{url}/tollgate/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let body: serde_json::Value = health.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    // The bundled default policy, and a receipt log made in the working directory.
    assert_eq!(body["policy_hash"].as_str().unwrap().len(), 64);
    assert!(dir.path().join("receipts.jsonl").exists());
    assert!(dir.path().join(".tollgate/signing-key.pem").exists());
    tollgate.signal("INT");
    assert!(tollgate.wait_exit().success());
}

#[tokio::test]
async fn admin_endpoints_answer_locally_and_are_never_forwarded() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::start(&mock.url(), "").await;
    let http = client();
    let ready = http
        .get(format!("{}/tollgate/readyz", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["receipts"], "ok");
    let missing = http
        .get(format!("{}/tollgate/nope", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let body: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    let post = http
        .post(format!("{}/tollgate/healthz", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    assert!(
        mock.received().is_empty(),
        "an admin request reached the upstream"
    );
}

#[test]
fn check_validates_file_flags_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tollgate.toml"),
        "listen = \"127.0.0.1:7171\"\nupstream = \"http://127.0.0.1:9\"\nidle_timeout = \"42s\"\n",
    )
    .unwrap();
    // ./tollgate.toml is read when present.
    let (status, out, err) = run_binary(&["check"], dir.path(), &[]);
    assert!(status.success(), "{err}");
    assert!(out.contains("configuration OK"));
    assert!(out.contains("127.0.0.1:7171"));
    assert!(out.contains("idle 42s"));
    // A variable beats the file, a flag beats the variable.
    let (status, out, _) = run_binary(
        &["check"],
        dir.path(),
        &[("TOLLGATE_LISTEN", "127.0.0.1:7272")],
    );
    assert!(status.success());
    assert!(out.contains("127.0.0.1:7272"));
    let (status, out, _) = run_binary(
        &["check", "--listen", "127.0.0.1:7373"],
        dir.path(),
        &[("TOLLGATE_LISTEN", "127.0.0.1:7272")],
    );
    assert!(status.success());
    assert!(out.contains("127.0.0.1:7373"));

    // Unknown keys and bad values fail, naming the problem.
    std::fs::write(
        dir.path().join("bad.toml"),
        "listen = \"127.0.0.1:1\"\nupstreem = \"x\"\n",
    )
    .unwrap();
    let (status, _, err) = run_binary(&["check", "--config", "bad.toml"], dir.path(), &[]);
    assert!(!status.success());
    assert!(err.contains("upstreem"), "{err}");
    let (status, _, err) = run_binary(&["check", "--upstream", "ftp://x"], dir.path(), &[]);
    assert!(!status.success());
    assert!(err.contains("upstream"), "{err}");
    // TLS files are loaded by check too.
    let (status, _, err) = run_binary(
        &[
            "check",
            "--tls-cert",
            "missing.pem",
            "--tls-key",
            "missing-key.pem",
        ],
        dir.path(),
        &[],
    );
    assert!(!status.success());
    assert!(err.contains("missing.pem"), "{err}");
}

fn https_client(ca: &Path, http2: bool) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    let builder = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([ca])
        .timeout(WAIT);
    let builder = if http2 { builder } else { builder.http1_only() };
    builder.build().unwrap()
}

#[tokio::test]
async fn https_listener_serves_http1_and_http2_with_the_dev_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (status, out, err) = run_binary(&["certs", "dev", "--dir", "certs"], dir.path(), &[]);
    assert!(status.success(), "{err}");
    assert!(out.contains("server.pem"));
    let certs = dir.path().join("certs");

    let mock = MockUpstream::start().await;
    let proxy = TestProxy::start_with(
        ServeArgs {
            listen: Some("127.0.0.1:0".into()),
            upstream: Some(mock.url()),
            tls_cert: Some(certs.join("server.pem")),
            tls_key: Some(certs.join("server-key.pem")),
            ..ServeArgs::default()
        },
        "",
    )
    .await;
    assert!(proxy.url.starts_with("https://"));
    for (host, http2) in [
        ("localhost", true),
        ("127.0.0.1", false),
        ("localhost", false),
    ] {
        mock.push(Reply::json("{\"object\":\"list\"}"));
        let response = https_client(&certs.join("ca.pem"), http2)
            .get(format!("https://{host}:{}/v1/models", proxy.addr.port()))
            .header("authorization", "Bearer sk-tls")
            .send()
            .await
            .unwrap();
        let want = if http2 {
            reqwest::Version::HTTP_2
        } else {
            reqwest::Version::HTTP_11
        };
        assert_eq!(response.version(), want);
        assert_eq!(response.text().await.unwrap(), "{\"object\":\"list\"}");
    }
    // A client that does not trust the dev CA is refused at the handshake.
    let other = tempfile::tempdir().unwrap();
    run_binary(&["certs", "dev", "--dir", "."], other.path(), &[]);
    let untrusted = https_client(&other.path().join("ca.pem"), false)
        .get(format!("https://localhost:{}/v1/models", proxy.addr.port()))
        .send()
        .await;
    assert!(untrusted.is_err());
    // Plain HTTP to the TLS port does not reach the upstream.
    let plain = client()
        .get(format!("http://127.0.0.1:{}/v1/models", proxy.addr.port()))
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
    assert_eq!(mock.received().len(), 3);
}

#[tokio::test]
async fn sigterm_stops_accepting_and_lets_streams_in_flight_finish() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut tollgate = Binary::start(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &mock.url(),
        ],
        dir.path(),
        &[],
    );
    let url = tollgate.wait_listening();
    let (reply, feed) = Reply::stream(
        200,
        vec![("content-type".into(), "text/event-stream".into())],
    );
    mock.push(reply);
    let mut response = client()
        .post(format!("{url}/v1/chat/completions"))
        .body("{\"stream\":true}")
        .send()
        .await
        .unwrap();
    feed.send("data: {\"n\":1}\n\n");
    let first = tokio::time::timeout(WAIT, response.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.as_ref(), b"data: {\"n\":1}\n\n");

    tollgate.signal("TERM");
    tollgate.wait_line("shutting down");
    // No new connections once draining has begun.
    let refused = client().get(format!("{url}/tollgate/healthz")).send().await;
    assert!(
        refused.is_err(),
        "a new connection was accepted during shutdown"
    );
    // The stream in flight runs to its end.
    feed.send("data: {\"n\":2}\n\n");
    feed.send("data: [DONE]\n\n");
    drop(feed);
    let mut rest = Vec::new();
    read_to_end(&mut response, &mut rest).await;
    assert_eq!(rest, b"data: {\"n\":2}\n\ndata: [DONE]\n\n");
    assert!(tollgate.wait_exit().success());
    tollgate.wait_line("all connections finished");
}
