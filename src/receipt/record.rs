//! The receipt record, its canonical bytes and its signature.
//!
//! Fields follow SPEC section 5 and are serialised in the order declared here, so
//! every line of a log reads the same way. The signature is Ed25519 over the RFC
//! 8785 (JCS) canonical form of the record without `signature`, written as
//! `ed25519:` + base64; `key_id` names the public key (`k_` and 16 hex digits of
//! its SHA-256, the same ids capability tokens use).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The record format.
pub const VERSION: &str = "tollgate.receipt.v1";

/// The `prev` of the first record of a log.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Why a decision was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    /// The stable reason code.
    pub code: String,
    /// The message (as the model received it, for denials).
    pub message: String,
    /// The policy rule that decided, if any.
    pub matched_rule: Option<String>,
}

/// What was attempted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRecord {
    /// The tool.
    pub tool_name: String,
    /// The call's id in the conversation.
    pub tool_call_id: String,
    /// The arguments, with detected secrets replaced by markers.
    pub parameters: Value,
    /// SHA-256 of the canonical original arguments.
    pub parameters_hash: String,
}

/// Everything a caller supplies; the log adds the rest.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    /// `allow`, `deny`, `pending` (or `system` for the log's own records).
    pub decision: String,
    /// Why.
    pub reason: Reason,
    /// Which gateway.
    pub server_id: String,
    /// Which agent.
    pub agent_id: String,
    /// tollgate's request id.
    pub request_id: String,
    /// `chat.completions`, `responses`, ...
    pub surface: String,
    /// The call.
    pub action: ActionRecord,
    /// The hash of the policy that decided.
    pub policy_hash: String,
    /// Adapter, route (governed or client tool), round, approval id, ...
    pub metadata: Value,
}

impl Draft {
    /// The draft of a kernel decision about one call: the decision, its reason,
    /// the redacted arguments and the hash of the original ones, the policy hash.
    pub fn from_decision(
        decision: &crate::kernel::Decision,
        call: &crate::kernel::Call<'_>,
        tool_call_id: &str,
        context: DraftContext<'_>,
    ) -> Self {
        let mut metadata = context.metadata;
        if let (Some(id), Some(map)) = (decision.approval_id(), metadata.as_object_mut()) {
            map.insert("approval_id".into(), Value::String(id.to_owned()));
        }
        Self {
            decision: decision.outcome().as_str().to_owned(),
            reason: Reason {
                code: decision.code().to_owned(),
                message: decision.message().to_owned(),
                matched_rule: decision.matched_rule().map(str::to_owned),
            },
            server_id: context.server_id.to_owned(),
            agent_id: call.agent_id.to_owned(),
            request_id: context.request_id.to_owned(),
            surface: context.surface.to_owned(),
            action: ActionRecord {
                tool_name: call.tool.to_owned(),
                tool_call_id: tool_call_id.to_owned(),
                parameters: decision.parameters().clone(),
                parameters_hash: decision.parameters_hash().to_owned(),
            },
            policy_hash: decision.policy_hash().to_owned(),
            metadata,
        }
    }
}

/// Where a decision was made, for [`Draft::from_decision`].
#[derive(Debug, Clone)]
pub struct DraftContext<'a> {
    /// Which gateway.
    pub server_id: &'a str,
    /// tollgate's request id.
    pub request_id: &'a str,
    /// Which API surface.
    pub surface: &'a str,
    /// Adapter, route, round, ... (an object).
    pub metadata: Value,
}

/// One signed receipt: one line of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// The record format (`tollgate.receipt.v1`).
    pub version: String,
    /// Time-ordered unique id (`rcpt_…`).
    pub receipt_id: String,
    /// Position in the log: 0, 1, 2, ...
    pub seq: u64,
    /// SHA-256 (hex) of the previous record's line; [`GENESIS`] for the first.
    pub prev: String,
    /// When it was recorded (RFC 3339, UTC).
    pub timestamp: String,
    /// `allow`, `deny`, `pending` or `system`.
    pub decision: String,
    /// Why.
    pub reason: Reason,
    /// Which gateway.
    pub server_id: String,
    /// Which agent.
    pub agent_id: String,
    /// tollgate's request id.
    pub request_id: String,
    /// Which API surface.
    pub surface: String,
    /// The call.
    pub action: ActionRecord,
    /// The hash of the policy that decided.
    pub policy_hash: String,
    /// Adapter, route, round, ...
    pub metadata: Value,
    /// Which key signed it.
    pub key_id: String,
    /// `ed25519:` + base64 signature.
    pub signature: String,
}

/// Why a record could not be signed or does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The record cannot be canonicalised.
    #[error("cannot canonicalise the record: {0}")]
    Canonical(String),
    /// The signature field is not `ed25519:` + base64 of 64 bytes.
    #[error("malformed signature")]
    MalformedSignature,
    /// The signature does not verify with the key.
    #[error("signature does not verify")]
    BadSignature,
}

impl Receipt {
    /// Builds and signs a record.
    pub fn sign(
        draft: Draft,
        seq: u64,
        prev: String,
        receipt_id: String,
        timestamp: String,
        key: &SigningKey,
    ) -> Result<Self, RecordError> {
        let mut receipt = Self {
            version: VERSION.to_owned(),
            receipt_id,
            seq,
            prev,
            timestamp,
            decision: draft.decision,
            reason: draft.reason,
            server_id: draft.server_id,
            agent_id: draft.agent_id,
            request_id: draft.request_id,
            surface: draft.surface,
            action: draft.action,
            policy_hash: draft.policy_hash,
            metadata: draft.metadata,
            key_id: crate::kernel::token::key_id(&key.verifying_key()),
            signature: String::new(),
        };
        let signature = key.sign(&receipt.signed_bytes()?);
        receipt.signature = format!("ed25519:{}", STANDARD.encode(signature.to_bytes()));
        Ok(receipt)
    }

    /// The RFC 8785 bytes the signature covers: the record without `signature`.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, RecordError> {
        let mut value =
            serde_json::to_value(self).map_err(|e| RecordError::Canonical(e.to_string()))?;
        if let Some(map) = value.as_object_mut() {
            map.remove("signature");
        }
        serde_jcs::to_vec(&value).map_err(|e| RecordError::Canonical(e.to_string()))
    }

    /// Checks the signature with `key`.
    pub fn verify_signature(&self, key: &VerifyingKey) -> Result<(), RecordError> {
        let encoded = self
            .signature
            .strip_prefix("ed25519:")
            .ok_or(RecordError::MalformedSignature)?;
        let bytes = STANDARD
            .decode(encoded)
            .map_err(|_| RecordError::MalformedSignature)?;
        let signature =
            Signature::from_slice(&bytes).map_err(|_| RecordError::MalformedSignature)?;
        key.verify_strict(&self.signed_bytes()?, &signature)
            .map_err(|_| RecordError::BadSignature)
    }

    /// The line as written to the log (without the newline).
    pub fn to_line(&self) -> Result<String, RecordError> {
        serde_json::to_string(self).map_err(|e| RecordError::Canonical(e.to_string()))
    }
}

/// A draft serialised ahead of time: everything but `seq`, `prev`, `receipt_id`,
/// `timestamp` and the signature is turned into bytes before the log's chain
/// lock is taken, so that inside it only a few strings are joined and one
/// signature is made. [`Prepared::finish`] gives exactly the bytes
/// [`Receipt::sign`] and [`Receipt::to_line`] would.
#[derive(Debug)]
pub struct Prepared {
    draft: Draft,
    key_id: String,
    /// Canonical (RFC 8785) pieces around the variable fields, in sorted key order.
    jcs: [String; 5],
    /// Line pieces around the variable fields, in declared order.
    line: [String; 2],
}

fn json_text<T: Serialize + ?Sized>(value: &T) -> Result<String, RecordError> {
    serde_json::to_string(value).map_err(|e| RecordError::Canonical(e.to_string()))
}

fn jcs_text<T: Serialize + ?Sized>(value: &T) -> Result<String, RecordError> {
    serde_jcs::to_string(value).map_err(|e| RecordError::Canonical(e.to_string()))
}

/// The variable fields are ASCII without quotes or backslashes, so they are
/// written as JSON strings as they are.
fn plain(s: &str) -> Result<&str, RecordError> {
    if s.bytes()
        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        Ok(s)
    } else {
        Err(RecordError::Canonical(format!(
            "unexpected characters in {s:?}"
        )))
    }
}

impl Prepared {
    /// Serialises the constant part of `draft`, to be signed by the key named
    /// `key_id` ([`crate::kernel::token::key_id`]).
    ///
    /// Only `parameters` and `metadata`, whose shape the draft does not fix, go
    /// through the general canonicaliser; the record's own objects are written with
    /// their keys in RFC 8785 order, and strings as JSON writes them, which is the
    /// RFC's form too (`\b \t \n \f \r`, other control characters as lower-case
    /// `\u00xx`, `"` and `\` escaped, everything else as it is).
    pub fn new(draft: Draft, key_id: &str) -> Result<Self, RecordError> {
        let key_id = key_id.to_owned();
        let d = &draft;
        // Every field named, so that a field added to either struct fails to
        // compile here instead of leaving the signed bytes short of it.
        let ActionRecord {
            tool_name,
            tool_call_id,
            parameters,
            parameters_hash,
        } = &d.action;
        let Reason {
            code,
            message,
            matched_rule,
        } = &d.reason;
        let action = format!(
            "{{\"parameters\":{},\"parameters_hash\":{},\"tool_call_id\":{},\"tool_name\":{}}}",
            jcs_text(parameters)?,
            json_text(parameters_hash)?,
            json_text(tool_call_id)?,
            json_text(tool_name)?
        );
        let reason = format!(
            "{{\"code\":{},\"matched_rule\":{},\"message\":{}}}",
            json_text(code)?,
            json_text(matched_rule)?,
            json_text(message)?
        );
        let jcs = [
            format!(
                "{{\"action\":{action},\"agent_id\":{},\"decision\":{},\"key_id\":{},\"metadata\":{},\"policy_hash\":{},\"prev\":\"",
                json_text(&d.agent_id)?,
                json_text(&d.decision)?,
                json_text(&key_id)?,
                jcs_text(&d.metadata)?,
                json_text(&d.policy_hash)?
            ),
            format!("\",\"reason\":{reason},\"receipt_id\":\""),
            format!("\",\"request_id\":{},\"seq\":", json_text(&d.request_id)?),
            format!(
                ",\"server_id\":{},\"surface\":{},\"timestamp\":\"",
                json_text(&d.server_id)?,
                json_text(&d.surface)?
            ),
            format!("\",\"version\":{}}}", json_text(VERSION)?),
        ];
        let line = [
            format!("{{\"version\":{},\"receipt_id\":\"", json_text(VERSION)?),
            format!(
                "\",\"decision\":{},\"reason\":{},\"server_id\":{},\"agent_id\":{},\"request_id\":{},\"surface\":{},\"action\":{},\"policy_hash\":{},\"metadata\":{},\"key_id\":{},\"signature\":\"",
                json_text(&d.decision)?,
                json_text(&d.reason)?,
                json_text(&d.server_id)?,
                json_text(&d.agent_id)?,
                json_text(&d.request_id)?,
                json_text(&d.surface)?,
                json_text(&d.action)?,
                json_text(&d.policy_hash)?,
                json_text(&d.metadata)?,
                json_text(&key_id)?
            ),
        ];
        Ok(Self {
            draft,
            key_id,
            jcs,
            line,
        })
    }

    /// Signs with the chain fields filled in; returns the record and its line
    /// (without the newline).
    pub fn finish(
        self,
        seq: u64,
        prev: &str,
        receipt_id: &str,
        timestamp: &str,
        key: &SigningKey,
    ) -> Result<(Receipt, String), RecordError> {
        let (prev, id, ts) = (plain(prev)?, plain(receipt_id)?, plain(timestamp)?);
        let [j0, j1, j2, j3, j4] = &self.jcs;
        let canonical = format!("{j0}{prev}{j1}{id}{j2}{seq}{j3}{ts}{j4}");
        let signature = format!(
            "ed25519:{}",
            STANDARD.encode(key.sign(canonical.as_bytes()).to_bytes())
        );
        let [l0, l1] = &self.line;
        let line = format!(
            "{l0}{id}\",\"seq\":{seq},\"prev\":\"{prev}\",\"timestamp\":\"{ts}{l1}{signature}\"}}"
        );
        let d = self.draft;
        let receipt = Receipt {
            version: VERSION.to_owned(),
            receipt_id: receipt_id.to_owned(),
            seq,
            prev: prev.to_owned(),
            timestamp: timestamp.to_owned(),
            decision: d.decision,
            reason: d.reason,
            server_id: d.server_id,
            agent_id: d.agent_id,
            request_id: d.request_id,
            surface: d.surface,
            action: d.action,
            policy_hash: d.policy_hash,
            metadata: d.metadata,
            key_id: self.key_id,
            signature,
        };
        Ok((receipt, line))
    }
}

/// SHA-256 (hex) of a line's bytes (without its newline): the next record's `prev`.
pub fn line_hash(line: &[u8]) -> String {
    hex::encode(Sha256::digest(line))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn draft() -> Draft {
        Draft {
            decision: "deny".into(),
            reason: Reason {
                code: "tool_access.block".into(),
                message: "no".into(),
                matched_rule: Some("rules.tool_access.block".into()),
            },
            server_id: "tollgate-test".into(),
            agent_id: "key:0123456789abcdef".into(),
            request_id: "tgr_1".into(),
            surface: "chat.completions".into(),
            action: ActionRecord {
                tool_name: "shell_exec".into(),
                tool_call_id: "call_1".into(),
                parameters: json!({"cmd": "ls", "n": 1.0}),
                parameters_hash: "ab".repeat(32),
            },
            policy_hash: "cd".repeat(32),
            metadata: json!({"adapter": "chat", "route": "client", "round": 0}),
        }
    }

    #[test]
    fn canonical_bytes_follow_rfc_8785() {
        // The RFC's own example of number forms and key order.
        // The input text of the RFC's example (section 3.2.2).
        let value: Value = serde_json::from_str(
            r#"{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001], "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/", "literals": [null, true, false]}"#,
        )
        .unwrap();
        let canonical = String::from_utf8(serde_jcs::to_vec(&value).unwrap()).unwrap();
        assert_eq!(
            canonical,
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
        let sorted = String::from_utf8(serde_jcs::to_vec(&json!({"\u{20ac}": 1, "\r": 2, "\u{fb33}": 3, "1": 4, "\u{1f600}": 5, "\u{80}": 6, "\u{00f6}": 7})).unwrap()).unwrap();
        assert_eq!(
            sorted,
            "{\"\\r\":2,\"1\":4,\"\u{80}\":6,\"\u{f6}\":7,\"\u{20ac}\":1,\"\u{1f600}\":5,\"\u{fb33}\":3}"
        );
    }

    #[test]
    fn prepared_records_are_byte_for_byte_the_slow_path() {
        let key = SigningKey::from_bytes(&[11; 32]);
        let key_id = crate::kernel::token::key_id(&key.verifying_key());
        let mut d = draft();
        d.action.parameters = json!({"z": "é\u{1f600}\"q\"\\", "a": [1.5, 1e21, null], "m": {"b": 2, "a": 1}, "\u{20ac}": 0, "\r": -0.0});
        d.reason.message = "line\nbreak \u{7} and \u{2028}".into();
        let mut other = draft();
        other.reason.matched_rule = None;
        other.action.tool_name = "t\u{1}\u{7f}\u{fb33}\u{1f600}".into();
        other.action.tool_call_id = "call \"x\"\t\\".into();
        other.agent_id = "\u{8}\u{c}".into();
        other.metadata = json!({"round": 2, "route": "client", "adapter": "chat", "n": 3e-7});
        let prev = "ab".repeat(32);
        for d in [d, other] {
            let (fast, line) = Prepared::new(d.clone(), &key_id)
                .unwrap()
                .finish(41, &prev, "rcpt_0190", "2026-11-21T22:00:00.000001Z", &key)
                .unwrap();
            let slow = Receipt::sign(
                d,
                41,
                prev.clone(),
                "rcpt_0190".into(),
                "2026-11-21T22:00:00.000001Z".into(),
                &key,
            )
            .unwrap();
            assert_eq!(fast, slow);
            assert_eq!(line, slow.to_line().unwrap());
            fast.verify_signature(&key.verifying_key()).unwrap();
        }
    }

    #[test]
    fn a_signed_record_verifies_and_any_change_breaks_it() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let receipt = Receipt::sign(
            draft(),
            0,
            GENESIS.into(),
            "rcpt_1".into(),
            "2026-11-21T22:00:00.000000Z".into(),
            &key,
        )
        .unwrap();
        assert!(receipt.signature.starts_with("ed25519:"));
        assert_eq!(
            receipt.key_id,
            crate::kernel::token::key_id(&key.verifying_key())
        );
        receipt.verify_signature(&key.verifying_key()).unwrap();
        // Key order in the line is the declared order.
        let line = receipt.to_line().unwrap();
        assert!(line.starts_with(
            r#"{"version":"tollgate.receipt.v1","receipt_id":"rcpt_1","seq":0,"prev":"#
        ));
        let mut changed = receipt.clone();
        changed.decision = "allow".into();
        assert_eq!(
            changed.verify_signature(&key.verifying_key()),
            Err(RecordError::BadSignature)
        );
        let other = SigningKey::from_bytes(&[8; 32]);
        assert_eq!(
            receipt.verify_signature(&other.verifying_key()),
            Err(RecordError::BadSignature)
        );
        // The line round-trips to the same record.
        let back: Receipt = serde_json::from_str(&line).unwrap();
        back.verify_signature(&key.verifying_key()).unwrap();
    }
}
