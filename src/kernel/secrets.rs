//! Credentials in arguments: built-in detectors for the common kinds, the
//! policy's own patterns beside them, and redaction.
//!
//! A finding never carries the secret: only the detector's name, where it was
//! found, and the SHA-256 of the matched text, so that a receipt can prove which
//! secret it was without holding it. [`redact`] replaces each secret in a copy of
//! the arguments with a marker naming the detector and that hash.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A built-in detector.
#[derive(Debug)]
pub struct Detector {
    /// Its name, used in reason codes (`secret_patterns.<name>`).
    pub name: &'static str,
    regex: Regex,
}

const PATTERNS: [(&str, &str); 13] = [
    (
        "anthropic_api_key",
        r"\bsk-ant-[a-z0-9]{2,10}-[A-Za-z0-9_\-]{20,}",
    ),
    (
        "openai_api_key",
        r"\bsk-(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_\-]{20,}T3BlbkFJ[A-Za-z0-9_\-]{20,}|\bsk-(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{40,}|\bsk-[A-Za-z0-9]{48}\b",
    ),
    (
        "aws_access_key",
        r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA|A3T[A-Z0-9])[A-Z0-9]{16}\b",
    ),
    (
        "aws_secret_key",
        r#"(?i)\baws_?secret_?(?:access_?)?key\b["']?\s*[:=]\s*["']?[A-Za-z0-9/+=]{40}\b"#,
    ),
    (
        "github_token",
        r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,255}\b|\bgithub_pat_[A-Za-z0-9_]{22,255}\b",
    ),
    ("slack_token", r"\bxox[abposre]-[A-Za-z0-9\-]{10,}"),
    (
        "slack_webhook",
        r"https://hooks\.slack\.com/(?:services|workflows)/[A-Za-z0-9_/\-]{20,}",
    ),
    (
        "stripe_key",
        r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}\b",
    ),
    ("google_api_key", r"\bAIza[0-9A-Za-z_\-]{35}\b"),
    ("google_oauth_token", r"\bya29\.[0-9A-Za-z_\-]{20,}"),
    (
        "jwt",
        r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",
    ),
    (
        "private_key",
        r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----",
    ),
    (
        "bearer_credential",
        r#"(?i)\bauthorization\b["']?\s*[:=]\s*["']?bearer\s+[A-Za-z0-9._~+/\-]{20,}=*"#,
    ),
];

/// The built-in detectors, in the order they are tried.
pub static BUILTIN: LazyLock<Vec<Detector>> = LazyLock::new(|| {
    PATTERNS
        .iter()
        .filter_map(|(name, pattern)| {
            Regex::new(pattern)
                .ok()
                .map(|regex| Detector { name, regex })
        })
        .collect()
});

/// A secret found in one scanned string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The detector or policy pattern that found it.
    pub detector: String,
    /// SHA-256 (hex) of the matched text.
    pub sha256: String,
    /// Where: the scanned string's path (derived strings end in `<base64>` etc.).
    pub path: String,
    /// Whether the policy's own pattern found it (rather than a built-in one).
    pub from_policy: bool,
    /// The matched text, kept only to redact; never serialised.
    matched: String,
}

impl Finding {
    /// The marker that replaces the secret in redacted arguments.
    pub fn marker(&self) -> String {
        format!("[REDACTED:{}:sha256:{}]", self.detector, self.sha256)
    }
}

/// The first secret a built-in detector finds in `text`, if any.
pub fn builtin_in(text: &str, path: &str) -> Option<Finding> {
    BUILTIN.iter().find_map(|d| {
        d.regex
            .find(text)
            .map(|m| finding(d.name, m.as_str(), path, false))
    })
}

/// A finding for a match of `detector`.
pub fn finding(detector: &str, matched: &str, path: &str, from_policy: bool) -> Finding {
    Finding {
        detector: detector.to_owned(),
        sha256: hex::encode(Sha256::digest(matched.as_bytes())),
        path: path.to_owned(),
        from_policy,
        matched: matched.to_owned(),
    }
}

/// A copy of `args` with every finding replaced by its marker. Where the secret
/// does not appear as written (it was encoded, or split by invisible characters),
/// the whole string it came from is replaced.
pub fn redact(args: &Value, findings: &[Finding]) -> Value {
    let mut out = args.clone();
    for f in findings {
        let source = f.path.split('<').next().unwrap_or(&f.path);
        if let Some(slot) = lookup_mut(&mut out, source) {
            if let Value::String(s) = slot {
                *s = if s.contains(&f.matched) {
                    s.replace(&f.matched, &f.marker())
                } else {
                    f.marker()
                };
            }
        } else {
            // Found in a key: replace the key's value and rename nothing.
            redact_keys(&mut out, f);
        }
    }
    out
}

fn redact_keys(value: &mut Value, f: &Finding) {
    match value {
        Value::Object(map) => {
            let keys: Vec<String> = map
                .keys()
                .filter(|k| k.contains(&f.matched))
                .cloned()
                .collect();
            for key in keys {
                if let Some(v) = map.remove(&key) {
                    map.insert(key.replace(&f.matched, &f.marker()), v);
                }
            }
            for v in map.values_mut() {
                redact_keys(v, f);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact_keys(v, f)),
        _ => {}
    }
}

/// Follows a `$.a.b[0]` path (as [`crate::kernel::normalize`] writes them).
fn lookup_mut<'a>(value: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    let mut rest = path.strip_prefix('$')?;
    let mut current = value;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('[') {
            let end = after.find(']')?;
            let index: usize = after[..end].parse().ok()?;
            current = current.get_mut(index)?;
            rest = &after[end + 1..];
        } else if let Some(after) = rest.strip_prefix('.') {
            // Keys may contain dots or brackets; take the longest key that exists.
            let map = current.as_object()?;
            let key = map
                .keys()
                .filter(|k| {
                    after.starts_with(k.as_str())
                        && matches!(
                            after.as_bytes().get(k.len()),
                            None | Some(b'.') | Some(b'[')
                        )
                })
                .max_by_key(|k| k.len())?
                .clone();
            rest = &after[key.len()..];
            current = current.get_mut(&key)?;
        } else {
            return None;
        }
    }
    Some(current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn built_in_detectors_find_the_common_credentials() {
        let cases = [
            ("AKIAIOSFODNN7EXAMPLE", "aws_access_key"),
            (
                "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                "aws_secret_key",
            ),
            ("ghp_0123456789abcdefghijABCDEFGHIJ012345", "github_token"),
            (
                "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
                "github_token",
            ),
            (
                "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
                "slack_token",
            ),
            (
                "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
                "slack_webhook",
            ),
            ("sk_live_4eC39HqLyjWDarjtT1zdp7dc", "stripe_key"),
            ("AIzaSyA-1234567890abcdefghijklmnopqrstu", "google_api_key"),
            (
                "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
                "jwt",
            ),
            ("-----BEGIN OPENSSH PRIVATE KEY-----", "private_key"),
            (
                "sk-proj-abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
                "openai_api_key",
            ),
            (
                "sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH",
                "anthropic_api_key",
            ),
            (
                "Authorization: Bearer abcdefghijklmnopqrstuvwxyz012345",
                "bearer_credential",
            ),
        ];
        for (text, name) in cases {
            let f = builtin_in(&format!("here: {text} ok"), "$.x")
                .unwrap_or_else(|| panic!("{name} missed"));
            assert_eq!(f.detector, name, "{text}");
            assert_eq!(f.sha256.len(), 64);
        }
        for clean in [
            "sk-short",
            "AKIA1234",
            "the key is in the drawer",
            "eyJ.eyJ.x",
        ] {
            assert!(builtin_in(clean, "$").is_none(), "{clean}");
        }
    }

    #[test]
    fn redaction_keeps_only_a_marker_and_the_hash() {
        let args = json!({"note": "use AKIAIOSFODNN7EXAMPLE now", "list": ["x", "QUtJQUlPU0ZPRE5ON0VYQU1QTEU="]});
        let direct = builtin_in("use AKIAIOSFODNN7EXAMPLE now", "$.note").unwrap();
        let encoded = builtin_in("AKIAIOSFODNN7EXAMPLE", "$.list[1]<base64>").unwrap();
        let redacted = redact(&args, &[direct.clone(), encoded]);
        let text = redacted.to_string();
        assert!(!text.contains("AKIAIOSFODNN7EXAMPLE"), "{text}");
        assert!(!text.contains("QUtJQUlPU0ZPRE5ON0VYQU1QTEU"), "{text}");
        assert_eq!(redacted["note"], format!("use {} now", direct.marker()));
        assert_eq!(redacted["list"][0], "x");
        assert!(text.contains(&direct.sha256));
    }
}
