//! Lifecycle: the binary's commands (`serve` with no configuration, `check`,
//! `certs dev`), configuration from file and environment, the HTTPS listener with
//! the development certificates, the admin endpoints, graceful shutdown, and
//! policy reload while serving (on SIGHUP and on a change of the policy file).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::mock::{MockUpstream, Reply};
use crate::common::{Binary, TestProxy, WAIT, client, read_to_end, run_binary};
use crate::governance::{calls, text, tool_messages};
use tollgate::cli::ServeArgs;
use tollgate::config::{Config, RawConfig};
use tollgate::proxy::Server;
use tollgate::proxy::reload::Trigger;

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
    assert!(
        out.contains("remembers:     10000 turns, 67108864 bytes, for 1h"),
        "{out}"
    );
    assert!(
        out.contains("group wait:    1ms (receipts of calls in streams)"),
        "{out}"
    );
    let (status, out, _) = run_binary(
        &["check", "--remember-turns", "50"],
        dir.path(),
        &[
            ("TOLLGATE_REMEMBER_FOR", "2h"),
            ("TOLLGATE_REMEMBER_BYTES", "1048576"),
            ("TOLLGATE_RECEIPT_GROUP_WAIT", "0ms"),
        ],
    );
    assert!(status.success());
    assert!(
        out.contains("remembers:     50 turns, 1048576 bytes, for 2h"),
        "{out}"
    );
    assert!(out.contains("group wait:    0s"), "{out}");
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
    let mut tollgate = Binary::serve(&mock.url(), &[], dir.path(), &[]);
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

const ALLOW_LOOKUP: &str = r#"
hushspec: "0.1.0"
rules:
  tool_access:
    allow: [lookup]
    default: block
"#;

const BLOCK_LOOKUP: &str = r#"
hushspec: "0.1.0"
rules:
  tool_access:
    block: [lookup]
    default: allow
"#;

/// The binary serving the policy file `policy.yaml` of its own temporary working
/// directory, which also holds its receipt log and signing key (and, in `tokens`
/// mode, the revoked-token list `revoked.txt`, empty at first).
struct Reloading {
    binary: Binary,
    url: String,
    policy: PathBuf,
    dir: tempfile::TempDir,
    key: ed25519_dalek::SigningKey,
}

impl Reloading {
    fn start(upstream: &MockUpstream, policy: &str) -> Self {
        Self::start_with(upstream, policy, false)
    }

    /// With `tokens`, callers need a capability token signed with the signing key.
    fn start_with(upstream: &MockUpstream, policy: &str, tokens: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = tollgate::keys::generate().unwrap();
        let key_file = dir.path().join("signing-key.pem");
        tollgate::keys::write_signing(&key_file, &key, false).unwrap();
        let policy_file = dir.path().join("policy.yaml");
        std::fs::write(&policy_file, policy).unwrap();
        let receipts = dir.path().join("receipts.jsonl");
        let revoked = dir.path().join("revoked.txt");
        let upstream_url = upstream.url();
        let mut args = vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream_url,
            "--policy",
            policy_file.to_str().unwrap(),
            "--receipts",
            receipts.to_str().unwrap(),
            "--signing-key",
            key_file.to_str().unwrap(),
        ];
        let mut env = Vec::new();
        if tokens {
            std::fs::write(&revoked, "# revoked token ids\n").unwrap();
            args.extend([
                "--auth",
                "tokens",
                "--upstream-key-env",
                "TG_TEST_UPSTREAM_KEY",
                "--revoked-tokens",
                revoked.to_str().unwrap(),
            ]);
            env.push(("TG_TEST_UPSTREAM_KEY", "sk-upstream-secret"));
        }
        let mut binary = Binary::start(&args, dir.path(), &env);
        let url = binary.wait_listening();
        Self {
            binary,
            url,
            policy: policy_file,
            dir,
            key,
        }
    }

    /// Replaces the policy file as an editor that saves atomically does.
    fn replace_policy(&self, text: &str) {
        replace(&self.policy, text);
    }

    /// The policy hash the running server reports.
    async fn policy_hash(&self) -> String {
        let health: Value = client()
            .get(format!("{}/tollgate/healthz", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        health["policy_hash"].as_str().unwrap().to_owned()
    }

    /// The client's request, declaring its own tool `lookup`.
    async fn chat(&self) -> Value {
        let response = client()
            .post(format!("{}/v1/chat/completions", self.url))
            .bearer_auth("sk-test-key")
            .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "go"}],
                "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }
}

/// Replaces a file the way an editor that saves atomically does: a new file
/// renamed over the old one.
fn replace(path: &Path, text: &str) {
    let next = path.with_extension("new");
    std::fs::write(&next, text).unwrap();
    std::fs::rename(&next, path).unwrap();
}

fn hash_of(policy: &str) -> String {
    tollgate::kernel::policy::Policy::from_text(policy, "test")
        .unwrap()
        .hash()
        .to_owned()
}

/// Queues the model's call to `lookup` and, when it is to be denied, the model's
/// answer to the denial.
fn queue_lookup_call(upstream: &MockUpstream, denied: bool) {
    upstream.push(Reply::json(
        calls(&[("call_1", "lookup", "{}")]).to_string(),
    ));
    if denied {
        upstream.push(Reply::json(text("I may not look that up.").to_string()));
    }
}

/// The name of the one tool call the client received.
fn called(out: &Value) -> &str {
    let calls = out["choices"][0]["message"]["tool_calls"]
        .as_array()
        .unwrap();
    assert_eq!(calls.len(), 1, "{out}");
    calls[0]["function"]["name"].as_str().unwrap()
}

#[tokio::test]
async fn sighup_reloads_the_policy_and_the_new_one_decides() {
    let upstream = MockUpstream::start().await;
    let mut tg = Reloading::start(&upstream, ALLOW_LOOKUP);
    assert_eq!(tg.policy_hash().await, hash_of(ALLOW_LOOKUP));

    queue_lookup_call(&upstream, false);
    let out = tg.chat().await;
    assert_eq!(called(&out), "lookup");
    assert_eq!(
        upstream.received().len(),
        1,
        "an allowed client call ends the turn"
    );

    tg.replace_policy(BLOCK_LOOKUP);
    tg.binary.signal("HUP");
    // The watcher may see the new file first; the SIGHUP reload is logged either
    // way, and one of the two replaced the old policy.
    let line = tg.binary.wait_line("trigger=SIGHUP");
    assert!(line.contains("policy reloaded"), "{line}");
    assert!(line.contains(&hash_of(BLOCK_LOOKUP)), "{line}");
    assert!(
        tg.binary.seen.iter().any(|l| l.contains("policy reloaded")
            && l.contains(&format!("old_hash={}", hash_of(ALLOW_LOOKUP)))
            && l.contains(&format!("new_hash={}", hash_of(BLOCK_LOOKUP)))),
        "{:?}",
        tg.binary.seen
    );
    assert_eq!(tg.policy_hash().await, hash_of(BLOCK_LOOKUP));

    // The same model answer is now denied and fed back to the model; the client
    // gets the model's second answer instead of the call.
    queue_lookup_call(&upstream, true);
    let out = tg.chat().await;
    assert!(
        out["choices"][0]["message"].get("tool_calls").is_none(),
        "{out}"
    );
    assert_eq!(
        out["choices"][0]["message"]["content"],
        "I may not look that up."
    );
    let sent = upstream.wait_for(3).await;
    let second: Value = serde_json::from_slice(&sent[2].body).unwrap();
    let answers = tool_messages(&second);
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].0, "call_1");
    assert!(
        answers[0].1.contains("tool_call_denied"),
        "{}",
        answers[0].1
    );

    // SIGHUP did not stop the server.
    assert_eq!(tg.policy_hash().await, hash_of(BLOCK_LOOKUP));
    tg.binary.signal("TERM");
    assert!(tg.binary.wait_exit().success());
}

#[tokio::test]
async fn a_broken_policy_on_sighup_is_refused_and_the_previous_one_still_decides() {
    let upstream = MockUpstream::start().await;
    let mut tg = Reloading::start(&upstream, ALLOW_LOOKUP);
    tg.replace_policy("hushspec: \"0.1.0\"\nrules:\n  tool_access:\n    blok: [lookup]\n");
    tg.binary.signal("HUP");
    let line = tg.binary.wait_line("trigger=SIGHUP");
    assert!(
        line.contains("policy reload failed; keeping the previous policy"),
        "{line}"
    );
    assert!(line.contains("blok"), "the error names the problem: {line}");
    assert!(
        !tg.binary.seen.iter().any(|l| l.contains("policy reloaded")),
        "{:?}",
        tg.binary.seen
    );

    assert_eq!(tg.policy_hash().await, hash_of(ALLOW_LOOKUP));
    queue_lookup_call(&upstream, false);
    let out = tg.chat().await;
    assert_eq!(called(&out), "lookup");
    assert_eq!(upstream.received().len(), 1);
    tg.binary.signal("TERM");
    assert!(tg.binary.wait_exit().success());
}

#[tokio::test]
async fn a_change_of_the_policy_file_is_picked_up_without_a_signal() {
    let upstream = MockUpstream::start().await;
    let mut tg = Reloading::start(&upstream, ALLOW_LOOKUP);
    tg.replace_policy(BLOCK_LOOKUP);
    // The file is looked at every 2 s; the wait is bounded by WAIT.
    let line = tg.binary.wait_line("policy reloaded");
    assert!(line.contains("trigger=file_change"), "{line}");
    assert!(line.contains(&hash_of(BLOCK_LOOKUP)), "{line}");
    assert_eq!(tg.policy_hash().await, hash_of(BLOCK_LOOKUP));

    queue_lookup_call(&upstream, true);
    let out = tg.chat().await;
    assert_eq!(
        out["choices"][0]["message"]["content"],
        "I may not look that up."
    );
    tg.binary.signal("TERM");
    assert!(tg.binary.wait_exit().success());
}

#[tokio::test]
async fn a_change_of_the_revoked_token_list_is_picked_up_without_a_signal() {
    let upstream = MockUpstream::start().await;
    let mut tg = Reloading::start_with(&upstream, ALLOW_LOOKUP, true);
    let token = tollgate::kernel::token::issue(
        &tg.key,
        "agent-7",
        &["lookup".to_owned()],
        "tollgate",
        Duration::from_secs(600),
        std::time::SystemTime::now(),
    )
    .unwrap();
    let models = || {
        client()
            .get(format!("{}/v1/models", tg.url))
            .bearer_auth(&token)
            .send()
    };
    upstream.push(Reply::json("{\"object\":\"list\"}"));
    assert_eq!(models().await.unwrap().status(), 200);

    let (claims, _, _) = tollgate::kernel::token::decode_unverified(&token).unwrap();
    replace(
        &tg.dir.path().join("revoked.txt"),
        &format!("# revoked token ids\n{}\n", claims.jti),
    );
    let line = tg.binary.wait_line("policy reloaded");
    assert!(line.contains("trigger=file_change"), "{line}");
    assert!(line.contains("revoked=1"), "{line}");
    let refused = models().await.unwrap();
    assert_eq!(refused.status(), 401);
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{body}"
    );
    assert_eq!(upstream.received().len(), 1);
    tg.binary.signal("TERM");
    assert!(tg.binary.wait_exit().success());
}

#[tokio::test]
async fn only_a_real_change_of_a_watched_file_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("signing-key.pem");
    tollgate::keys::write_signing(&key_file, &tollgate::keys::generate().unwrap(), false).unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, ALLOW_LOOKUP).unwrap();
    let bind = |policy: String| {
        let args = ServeArgs {
            listen: Some("127.0.0.1:0".into()),
            upstream: Some("http://127.0.0.1:9".into()),
            policy: Some(policy),
            receipts: Some(dir.path().join("receipts.jsonl")),
            signing_key: Some(key_file.clone()),
            ..ServeArgs::default()
        };
        let raw = RawConfig::parse("", Path::new("test.toml")).unwrap();
        Server::bind(Config::resolve(&args, raw, dir.path()).unwrap())
    };
    let server = bind(policy.to_str().unwrap().to_owned()).await.unwrap();
    let reloader = server.reloader();
    assert_eq!(reloader.files(), std::slice::from_ref(&policy));
    assert!(reloader.reload_if_changed().is_none(), "nothing changed");
    replace(&policy, ALLOW_LOOKUP);
    assert!(
        reloader.reload_if_changed().is_none(),
        "a new file with the same contents is no change"
    );
    std::fs::remove_file(&policy).unwrap();
    assert!(
        reloader.reload_if_changed().is_none(),
        "a missing file keeps the policy"
    );
    std::fs::write(&policy, BLOCK_LOOKUP).unwrap();
    let reloaded = reloader.reload_if_changed().unwrap().unwrap();
    assert_eq!(reloaded.old_hash, hash_of(ALLOW_LOOKUP));
    assert_eq!(reloaded.new_hash, hash_of(BLOCK_LOOKUP));
    assert_eq!(reloaded.revoked, None);
    assert!(reloader.reload_if_changed().is_none(), "already seen");

    // A reload on request takes note of the files, for every clone: the watcher
    // does not reload the same change again.
    replace(&policy, ALLOW_LOOKUP);
    let reloaded = reloader.clone().reload(Trigger::Signal).unwrap();
    assert_eq!(reloaded.new_hash, hash_of(ALLOW_LOOKUP));
    assert!(reloader.reload_if_changed().is_none());

    // A broken file is refused once, and not retried until it changes again.
    replace(&policy, "hushspec: \"0.1.0\"\nrules: [\n");
    assert!(reloader.reload_if_changed().unwrap().is_err());
    assert!(reloader.reload_if_changed().is_none());
    replace(&policy, BLOCK_LOOKUP);
    let reloaded = reloader.reload_if_changed().unwrap().unwrap();
    assert_eq!(reloaded.old_hash, hash_of(ALLOW_LOOKUP));

    // A bundled policy has nothing to watch; the watcher returns at once.
    let bundled = bind("default".into()).await.unwrap();
    let reloader = bundled.reloader();
    assert!(reloader.files().is_empty());
    tokio::time::timeout(
        WAIT,
        reloader.watch(Duration::from_millis(10), std::future::pending()),
    )
    .await
    .unwrap();
}

#[test]
fn check_loads_the_policy_and_the_tools() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.yaml"),
        "hushspec: \"0.1.0\"\nrules:\n  tool_access:\n    blok: [x]\n",
    )
    .unwrap();
    let (status, _, err) = run_binary(&["check", "--policy", "p.yaml"], dir.path(), &[]);
    assert!(!status.success());
    assert!(err.contains("blok"), "{err}");
    std::fs::write(
        dir.path().join("tollgate.toml"),
        "[[tools.http]]\nname = \"bad name!\"\nurl = \"http://127.0.0.1:9/x\"\n",
    )
    .unwrap();
    let (status, _, err) = run_binary(&["check"], dir.path(), &[]);
    assert!(!status.success());
    assert!(err.contains("bad name!"), "{err}");
    std::fs::write(
        dir.path().join("tollgate.toml"),
        "policy = \"strict\"\n[[tools.http]]\nname = \"weather__current\"\nurl = \"http://127.0.0.1:9/x\"\n",
    )
    .unwrap();
    let (status, out, err) = run_binary(&["check"], dir.path(), &[]);
    assert!(status.success(), "{err}");
    assert!(out.contains("bundled strict"), "{out}");
    assert!(out.contains("weather__current"), "{out}");
    assert!(
        !dir.path().join("receipts.jsonl").exists() && !dir.path().join(".tollgate").exists(),
        "check writes nothing"
    );
}
