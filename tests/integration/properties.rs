//! Properties of normalisation and decisions, over generated inputs: normalising
//! twice changes nothing; no input makes the argument parser or the policy parser
//! panic; and neither adding benign keys nor wrapping a value turns a refusal into
//! an allow.

use proptest::prelude::*;
use serde_json::{Value, json};

use tollgate::kernel::normalize::{Limits, normalize_text, parse};
use tollgate::kernel::policy::Policy;
use tollgate::kernel::{Call, Kernel, Now, Outcome};

const POLICY: &str = r#"
hushspec: "0.1.0"
rules:
  tool_access:
    default: allow
  shell_commands:
    forbidden_patterns: ['(?i)\brm\s+-[a-z]*r[a-z]*\s+/']
  egress:
    allow: ["api.example.com"]
    default: block
  secret_patterns:
    enabled: true
"#;

/// Values the policy refuses, each on its own.
fn refused_values() -> Vec<Value> {
    vec![
        json!("rm -rf /"),
        json!("http://169.254.169.254/latest"),
        json!("https://evil.example.net/x"),
        json!("AKIAIOSFODNN7EXAMPLE"),
        json!("ftp://api.example.com/f"),
    ]
}

fn decide(kernel: &Kernel, args: &Value) -> Outcome {
    let text = args.to_string();
    let call = Call {
        agent_id: "prop",
        scope: None,
        tool: "tool",
        arguments: &text,
        has_side_effects: false,
    };
    kernel.decide(&call, Now::current()).outcome()
}

/// Wraps a value the ways an agent could: in an array, in an object, as a JSON
/// string, or not at all.
fn wrap(value: Value, how: u8) -> Value {
    match how % 4 {
        0 => value,
        1 => json!([value]),
        2 => json!({"inner": value}),
        _ => Value::String(value.to_string()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn normalising_twice_changes_nothing(s in "\\PC{0,40}|[\\u{200b}\\u{e0041}\\u{ff41}-\\u{ff5a}a-z \\u{301}\\u{feff}]{0,40}") {
        let once = normalize_text(&s);
        prop_assert_eq!(normalize_text(&once), once);
    }

    #[test]
    fn the_argument_parser_never_panics(s in "\\PC{0,200}") {
        let _ = parse(&s, &Limits::default());
    }

    #[test]
    fn the_receipt_verifier_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        std::fs::write(&path, &bytes).unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]).verifying_key();
        let report = tollgate::receipt::verify::verify(&[path], &[key]);
        prop_assert!(report.records == 0 || !report.ok() || bytes.windows(8).any(|w| w == b"ed25519:"));
    }

    #[test]
    fn the_policy_parser_never_panics(s in "[a-z_:\\[\\]{}\"' \\n\\-0-9.]{0,200}") {
        let _ = Policy::from_text(&format!("hushspec: \"0.1.0\"\n{s}"), "prop");
    }

    #[test]
    fn benign_keys_and_wrapping_never_turn_a_refusal_into_an_allow(
        which in 0usize..5,
        how in 0u8..8,
        depth in 0usize..3,
        benign in proptest::collection::vec(("[a-z]{1,8}", "[a-z0-9 ]{0,12}"), 0..6),
    ) {
        let kernel = Kernel::new(Policy::from_text(POLICY, "p").unwrap());
        let refused = refused_values()[which].clone();
        let plain = json!({"value": refused.clone()});
        prop_assert_ne!(decide(&kernel, &plain), Outcome::Allow);
        let mut value = refused;
        for level in 0..=depth {
            value = wrap(value, how.wrapping_add(level as u8));
        }
        let mut object = serde_json::Map::new();
        for (k, v) in benign {
            object.insert(format!("benign_{k}"), Value::String(v));
        }
        object.insert("value".into(), value);
        prop_assert_ne!(decide(&kernel, &Value::Object(object)), Outcome::Allow);
    }
}
