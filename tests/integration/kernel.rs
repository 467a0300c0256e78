//! The decision kernel end to end: the adversarial suite (tests/fixtures/
//! adversarial.json: evasion payloads, each with its exact outcome and reason
//! code), capability scopes, approvals, velocity under concurrency, redaction.

use std::sync::Arc;
use std::time::Duration;

use tollgate::kernel::capability::Scope;
use tollgate::kernel::policy::Policy;
use tollgate::kernel::{Call, Kernel, Now, Outcome};

const POLICY: &str = r#"
hushspec: "0.1.0"
name: adversarial
rules:
  tool_access:
    allow: [run, fetch, read_file, write_file, deploy]
    require_confirmation: [deploy]
    default: block
    max_args_size: 65536
  shell_commands:
    forbidden_patterns:
      - '(?i)\brm\s+-[a-z]*r[a-z]*\s+/'
      - '(?i)\b(DROP|TRUNCATE)\s+TABLE\b'
      - '(?i)\bcurl\b[^|]*\|\s*(ba)?sh\b'
  egress:
    allow: ["api.example.com", "*.cdn.example.com"]
    default: block
  secret_patterns:
    enabled: true
    patterns:
      - {name: internal_token, pattern: 'itk_[a-z0-9]{16}', severity: critical}
  forbidden_paths:
    patterns: ["**/.ssh/**", "/etc/shadow"]
"#;

fn kernel() -> Kernel {
    Kernel::new(Policy::from_text(POLICY, "adversarial").unwrap())
}

fn call<'a>(tool: &'a str, arguments: &'a str) -> Call<'a> {
    Call {
        agent_id: "key:0123456789abcdef",
        scope: None,
        tool,
        arguments,
        has_side_effects: false,
    }
}

#[derive(serde::Deserialize)]
struct Case {
    note: String,
    tool: String,
    arguments: String,
    outcome: String,
    code: String,
}

#[test]
fn adversarial_payloads_get_their_exact_decision_and_reason() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/adversarial.json"
    );
    let cases: Vec<Case> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(cases.len() >= 60, "only {} cases", cases.len());
    let kernel = kernel();
    let mut failures = Vec::new();
    for case in &cases {
        let arguments = match case.arguments.strip_prefix("@blob:") {
            Some(n) => format!("{{\"blob\":\"{}\"}}", "x".repeat(n.parse().unwrap())),
            None => case.arguments.clone(),
        };
        let d = kernel.decide(&call(&case.tool, &arguments), Now::current());
        if d.outcome().as_str() != case.outcome || d.code() != case.code {
            failures.push(format!(
                "{}: got {} {} ({}), expected {} {}",
                case.note,
                d.outcome().as_str(),
                d.code(),
                d.message(),
                case.outcome,
                case.code
            ));
        }
        if d.outcome() == Outcome::Deny {
            assert!(
                d.message().contains(&case.tool) || d.code().starts_with("args_"),
                "{}: {}",
                case.note,
                d.message()
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn a_scope_narrows_what_the_policy_allows() {
    let kernel = kernel();
    let scope = Scope::new(["fetch"]);
    let mut c = call("run", r#"{"cmd":"ls"}"#);
    c.scope = Some(&scope);
    let d = kernel.decide(&c, Now::current());
    assert_eq!((d.outcome(), d.code()), (Outcome::Deny, "capability"));
    c.tool = "fetch";
    c.arguments = r#"{"url":"https://api.example.com/"}"#;
    assert_eq!(kernel.decide(&c, Now::current()).outcome(), Outcome::Allow);
    // A scope never widens: the policy still blocks a scoped tool it does not allow.
    let wide = Scope::new(["shell_exec"]);
    let mut c = call("shell_exec", "{}");
    c.scope = Some(&wide);
    assert_eq!(
        kernel.decide(&c, Now::current()).code(),
        "tool_access.default"
    );
}

#[test]
fn an_approval_lets_exactly_one_identical_call_through() {
    let kernel = kernel();
    let now = Now::current();
    let first = kernel.decide(&call("deploy", r#"{"env":"prod"}"#), now);
    assert_eq!(first.outcome(), Outcome::Pending);
    let id = first.approval_id().unwrap().to_owned();
    assert!(first.message().contains(&id));
    assert!(kernel.approvals().approve(&id));
    let other = kernel.decide(&call("deploy", r#"{"env":"staging"}"#), now);
    assert_eq!(
        other.outcome(),
        Outcome::Pending,
        "other arguments are not covered"
    );
    let granted = kernel.decide(&call("deploy", r#"{ "env" : "prod" }"#), now);
    assert_eq!(
        (granted.outcome(), granted.code()),
        (Outcome::Allow, "approval_granted")
    );
    assert_eq!(granted.approval_id(), Some(id.as_str()));
    let replay = kernel.decide(&call("deploy", r#"{"env":"prod"}"#), now);
    assert_ne!(
        replay.outcome(),
        Outcome::Allow,
        "a replay needs a new approval"
    );
}

#[test]
fn velocity_allows_exactly_the_limit_under_concurrency() {
    let policy = Policy::from_text(
        "hushspec: \"0.1.0\"\nrules:\n  velocity:\n    max_invocations: 25\n    window_seconds: 60\n    per_tool: true\n",
        "v",
    )
    .unwrap();
    let kernel = Arc::new(Kernel::new(policy));
    let now = Now::current();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let kernel = kernel.clone();
            std::thread::spawn(move || {
                (0..10)
                    .filter(|_| {
                        kernel.decide(&call("search", "{}"), now).outcome() == Outcome::Allow
                    })
                    .count()
            })
        })
        .collect();
    let allowed: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(allowed, 25);
    let refused = kernel.decide(&call("search", "{}"), now);
    assert_eq!(refused.code(), "velocity");
    // Per tool: another tool has its own count; after the window the tool is free again.
    assert_eq!(
        kernel.decide(&call("lookup", "{}"), now).outcome(),
        Outcome::Allow
    );
    let later = Now {
        wall: now.wall + Duration::from_secs(61),
        mono: now.mono + Duration::from_secs(61),
    };
    assert_eq!(
        kernel.decide(&call("search", "{}"), later).outcome(),
        Outcome::Allow
    );
}

#[test]
fn refusals_never_repeat_credentials_from_urls() {
    let d = kernel().decide(
        &call(
            "fetch",
            r#"{"url":"https://bob:hunter2@api.example.com/x"}"#,
        ),
        Now::current(),
    );
    assert_eq!(d.code(), "egress.userinfo");
    let shown = format!("{} {:?}", d.message(), d.trace());
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[test]
fn decisions_never_carry_the_secret() {
    let kernel = kernel();
    let d = kernel.decide(
        &call("run", r#"{"env":"AWS=AKIAIOSFODNN7EXAMPLE","other":"ok"}"#),
        Now::current(),
    );
    assert_eq!(d.code(), "secret_patterns.aws_access_key");
    let shown = format!("{} {} {:?}", d.message(), d.parameters(), d.trace());
    assert!(!shown.contains("AKIAIOSFODNN7EXAMPLE"), "{shown}");
    assert!(
        d.parameters()["env"]
            .as_str()
            .unwrap()
            .starts_with("AWS=[REDACTED:aws_access_key:sha256:")
    );
    assert_eq!(d.parameters()["other"], "ok");
    assert_eq!(d.secrets().len(), 1);
    assert_eq!(d.parameters_hash().len(), 64);
    assert_eq!(d.policy_hash(), kernel.policy().hash());
}

#[test]
fn policy_explain_shows_the_decision_and_every_check() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.yaml"), POLICY).unwrap();
    let (status, out, err) = crate::common::run_binary(
        &[
            "policy",
            "explain",
            "p.yaml",
            "--tool",
            "fetch",
            "--args",
            r#"{"url":"http://2130706433/"}"#,
            "--json",
        ],
        dir.path(),
        &[],
    );
    assert!(status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["code"], "egress.private_address");
    let trace = v["trace"].as_array().unwrap();
    assert!(
        trace
            .iter()
            .any(|t| t["check"].as_str().unwrap().starts_with("tool_access"))
    );
    assert!(
        trace.iter().any(|t| t["check"] == "egress $.url 127.0.0.1"),
        "{trace:?}"
    );
    assert_eq!(
        v["policy_hash"],
        Policy::from_text(POLICY, "p").unwrap().hash()
    );
}

#[test]
fn keys_and_tokens_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let (status, out, err) = crate::common::run_binary(
        &["keys", "generate", "--out", "issuer.pem"],
        dir.path(),
        &[],
    );
    assert!(status.success(), "{err}");
    assert!(out.contains("BEGIN PUBLIC KEY") && out.contains("key id: k_"));
    let (status, token, err) = crate::common::run_binary(
        &[
            "token",
            "issue",
            "--agent",
            "bot-1",
            "--tools",
            "get_weather,github__*",
            "--ttl",
            "8h",
            "--key",
            "issuer.pem",
        ],
        dir.path(),
        &[],
    );
    assert!(status.success(), "{err}");
    let token = token.trim().to_owned();
    assert!(token.starts_with("tg1_"));
    let (status, out, _) = crate::common::run_binary(
        &["token", "inspect", &token, "--public-key", "issuer.pem"],
        dir.path(),
        &[],
    );
    assert!(status.success());
    assert!(
        out.contains("\"sub\": \"bot-1\"") && out.contains("verified: yes"),
        "{out}"
    );
    // The library agrees with the command line.
    let key = tollgate::keys::read_verifying(&dir.path().join("issuer.pem")).unwrap();
    let verified = tollgate::kernel::token::Verifier::new([key], "tollgate")
        .verify(&token, std::time::SystemTime::now())
        .unwrap();
    assert!(verified.scope().allows("github__issues"));
    // Another issuer's key does not verify it.
    crate::common::run_binary(&["keys", "generate", "--out", "other.pem"], dir.path(), &[]);
    let (status, out, _) = crate::common::run_binary(
        &["token", "inspect", &token, "--public-key", "other.pem"],
        dir.path(),
        &[],
    );
    assert!(!status.success());
    assert!(out.contains("verified: no (token_unknown_key"), "{out}");
}
