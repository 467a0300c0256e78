//! Capability tokens: what a caller presents instead of an API key in `tokens`
//! auth mode.
//!
//! A token is `tg1_` + base64url(RFC 8785 JSON of the [`Claims`]) + `.` +
//! base64url(Ed25519 signature over `tg1.` + that payload). The claims carry the
//! token id, the agent, the audience, the scope (tool names or `server__*`), when
//! it was issued and when it expires, and the id of the key that signed it.
//!
//! [`Verifier::verify`] is the only way to get a [`VerifiedToken`]; it refuses a
//! token for exactly one stated reason: malformed, unknown key, bad signature,
//! expired (beyond the allowed clock skew), not yet valid, wrong audience, or
//! revoked.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::capability::Scope;

/// The token prefix.
pub const PREFIX: &str = "tg1_";
/// The default audience.
pub const DEFAULT_AUDIENCE: &str = "tollgate";
/// Clock skew tolerated on `iat` and `exp`.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// Format version (1).
    pub v: u8,
    /// Token id (for revocation).
    pub jti: String,
    /// The agent the token is for.
    pub sub: String,
    /// Who must accept it.
    pub aud: String,
    /// Tools it may call: exact names or `server__*`.
    pub scope: Vec<String>,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Expires at, seconds since the epoch.
    pub exp: u64,
    /// Id of the signing key.
    pub kid: String,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not a token of this format.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// Signed by a key this gateway does not trust.
    #[error("token signed by unknown key {0}")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("token signature is invalid")]
    BadSignature,
    /// Past its expiry.
    #[error("token expired at {0} (seconds since the epoch)")]
    Expired(u64),
    /// Issued in the future.
    #[error("token is not valid before {0} (seconds since the epoch)")]
    NotYetValid(u64),
    /// Meant for someone else.
    #[error("token audience {got:?} is not {expected:?}")]
    WrongAudience {
        /// The audience this gateway expects.
        expected: String,
        /// The token's audience.
        got: String,
    },
    /// On the revocation list.
    #[error("token {0} is revoked")]
    Revoked(String),
}

impl TokenError {
    /// A stable reason code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "token_malformed",
            Self::UnknownKey(_) => "token_unknown_key",
            Self::BadSignature => "token_bad_signature",
            Self::Expired(_) => "token_expired",
            Self::NotYetValid(_) => "token_not_yet_valid",
            Self::WrongAudience { .. } => "token_wrong_audience",
            Self::Revoked(_) => "token_revoked",
        }
    }
}

/// The id of a public key: `k_` and the first 16 hex digits of the SHA-256 of
/// its 32 bytes.
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = hex::encode(Sha256::digest(key.as_bytes()));
    format!("k_{}", &digest[..16])
}

fn seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn signing_input(payload: &str) -> Vec<u8> {
    format!("tg1.{payload}").into_bytes()
}

/// Issues a token for `agent` with `scope`, valid for `ttl` from `now`.
pub fn issue(
    key: &SigningKey,
    agent: &str,
    scope: &[String],
    audience: &str,
    ttl: Duration,
    now: SystemTime,
) -> Result<String, TokenError> {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id)
        .map_err(|e| TokenError::Malformed(format!("no randomness for the token id: {e}")))?;
    let iat = seconds(now);
    let claims = Claims {
        v: 1,
        jti: format!("tok_{}", hex::encode(id)),
        sub: agent.to_owned(),
        aud: audience.to_owned(),
        scope: scope.to_vec(),
        iat,
        exp: iat + ttl.as_secs(),
        kid: key_id(&key.verifying_key()),
    };
    sign(key, &claims)
}

/// Signs given claims (for tests and tools that build their own).
pub fn sign(key: &SigningKey, claims: &Claims) -> Result<String, TokenError> {
    let json = serde_jcs::to_vec(claims).map_err(|e| TokenError::Malformed(e.to_string()))?;
    let payload = URL_SAFE_NO_PAD.encode(json);
    let signature = key.sign(&signing_input(&payload));
    Ok(format!(
        "{PREFIX}{payload}.{}",
        URL_SAFE_NO_PAD.encode(signature.to_bytes())
    ))
}

/// Splits a token and reads its claims without checking anything else (for
/// `tollgate token inspect`).
pub fn decode_unverified(token: &str) -> Result<(Claims, String, Vec<u8>), TokenError> {
    let body = token
        .trim()
        .strip_prefix(PREFIX)
        .ok_or_else(|| TokenError::Malformed(format!("does not start with {PREFIX}")))?;
    let (payload, signature) = body
        .split_once('.')
        .ok_or_else(|| TokenError::Malformed("no signature part".into()))?;
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|e| TokenError::Malformed(format!("payload is not base64url: {e}")))?;
    let claims: Claims =
        serde_json::from_slice(&json).map_err(|e| TokenError::Malformed(format!("claims: {e}")))?;
    if claims.v != 1 {
        return Err(TokenError::Malformed(format!(
            "unsupported version {}",
            claims.v
        )));
    }
    // The payload must be exactly the canonical form: one token, one spelling.
    let canonical = serde_jcs::to_vec(&claims).map_err(|e| TokenError::Malformed(e.to_string()))?;
    if canonical != json {
        return Err(TokenError::Malformed(
            "claims are not in canonical form".into(),
        ));
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|e| TokenError::Malformed(format!("signature is not base64url: {e}")))?;
    Ok((claims, payload.to_owned(), signature))
}

/// A token that passed every check. Only [`Verifier::verify`] makes one.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    claims: Claims,
}

impl VerifiedToken {
    /// The agent id.
    pub fn agent_id(&self) -> &str {
        &self.claims.sub
    }
    /// The token id.
    pub fn token_id(&self) -> &str {
        &self.claims.jti
    }
    /// What the token may call.
    pub fn scope(&self) -> Scope {
        Scope::new(self.claims.scope.iter().cloned())
    }
    /// All claims.
    pub fn claims(&self) -> &Claims {
        &self.claims
    }
}

/// Checks tokens against trusted keys, an audience and a revocation list.
#[derive(Clone)]
pub struct Verifier {
    keys: HashMap<String, VerifyingKey>,
    audience: String,
    revoked: HashSet<String>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .field("audience", &self.audience)
            .field("revoked", &self.revoked.len())
            .finish()
    }
}

impl Verifier {
    /// A verifier trusting `keys`, for `audience`.
    pub fn new(keys: impl IntoIterator<Item = VerifyingKey>, audience: &str) -> Self {
        Self {
            keys: keys.into_iter().map(|k| (key_id(&k), k)).collect(),
            audience: audience.to_owned(),
            revoked: HashSet::new(),
        }
    }

    /// Adds token ids to the revocation list.
    pub fn revoke(&mut self, ids: impl IntoIterator<Item = impl Into<String>>) {
        self.revoked.extend(ids.into_iter().map(Into::into));
    }

    /// Verifies `token` at `now`.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<VerifiedToken, TokenError> {
        let (claims, payload, signature) = decode_unverified(token)?;
        let key = self
            .keys
            .get(&claims.kid)
            .ok_or_else(|| TokenError::UnknownKey(claims.kid.clone()))?;
        let signature = Signature::from_slice(&signature).map_err(|_| TokenError::BadSignature)?;
        key.verify_strict(&signing_input(&payload), &signature)
            .map_err(|_| TokenError::BadSignature)?;
        let now = seconds(now);
        let skew = CLOCK_SKEW.as_secs();
        if now > claims.exp.saturating_add(skew) {
            return Err(TokenError::Expired(claims.exp));
        }
        if claims.iat > now.saturating_add(skew) {
            return Err(TokenError::NotYetValid(claims.iat));
        }
        if claims.aud != self.audience {
            return Err(TokenError::WrongAudience {
                expected: self.audience.clone(),
                got: claims.aud,
            });
        }
        if self.revoked.contains(&claims.jti) {
            return Err(TokenError::Revoked(claims.jti));
        }
        Ok(VerifiedToken { claims })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn a_token_round_trips_and_each_failure_has_its_own_reason() {
        let k = key(1);
        let now = SystemTime::now();
        let scope = vec!["get_weather".to_owned(), "github__*".to_owned()];
        let token = issue(
            &k,
            "agent-7",
            &scope,
            DEFAULT_AUDIENCE,
            Duration::from_secs(3600),
            now,
        )
        .unwrap();
        assert!(token.starts_with("tg1_"));
        let mut verifier = Verifier::new([k.verifying_key()], DEFAULT_AUDIENCE);
        let ok = verifier.verify(&token, now).unwrap();
        assert_eq!(ok.agent_id(), "agent-7");
        assert!(ok.scope().allows("github__search"));
        assert!(!ok.scope().allows("shell"));

        // Expired, beyond the skew; within the skew still fine.
        let late = now + Duration::from_secs(3600 + 61);
        assert!(matches!(
            verifier.verify(&token, late),
            Err(TokenError::Expired(_))
        ));
        assert!(
            verifier
                .verify(&token, now + Duration::from_secs(3600 + 59))
                .is_ok()
        );
        // Not yet valid.
        let early = now - Duration::from_secs(120);
        assert!(matches!(
            verifier.verify(&token, early),
            Err(TokenError::NotYetValid(_))
        ));
        // Wrong audience.
        let other = Verifier::new([k.verifying_key()], "another-gateway");
        assert!(matches!(
            other.verify(&token, now),
            Err(TokenError::WrongAudience { .. })
        ));
        // Unknown key.
        let stranger = Verifier::new([key(2).verifying_key()], DEFAULT_AUDIENCE);
        assert!(matches!(
            stranger.verify(&token, now),
            Err(TokenError::UnknownKey(_))
        ));
        // Revoked.
        verifier.revoke([ok.token_id().to_owned()]);
        assert!(matches!(
            verifier.verify(&token, now),
            Err(TokenError::Revoked(_))
        ));
    }

    #[test]
    fn tampering_is_a_bad_signature_or_malformed() {
        let k = key(3);
        let now = SystemTime::now();
        let verifier = Verifier::new([k.verifying_key()], DEFAULT_AUDIENCE);
        let token = issue(
            &k,
            "a",
            &["x".to_owned()],
            DEFAULT_AUDIENCE,
            Duration::from_secs(60),
            now,
        )
        .unwrap();
        let (mut claims, _, _) = decode_unverified(&token).unwrap();
        // Widen the scope and keep the old signature.
        claims.scope.push("shell".into());
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_jcs::to_vec(&claims).unwrap());
        let old_sig = token.rsplit_once('.').unwrap().1;
        let forged = format!("{PREFIX}{forged_payload}.{old_sig}");
        assert_eq!(
            verifier.verify(&forged, now).unwrap_err(),
            TokenError::BadSignature
        );
        // Signed by another key that claims the trusted key id.
        let imposter = sign(&key(4), &claims).unwrap();
        assert_eq!(
            verifier.verify(&imposter, now).unwrap_err(),
            TokenError::BadSignature
        );
        for bad in [
            "",
            "sk-abc",
            "tg1_",
            "tg1_abc",
            "tg1_!!!.sig",
            &token.replace('.', ""),
        ] {
            assert!(
                matches!(verifier.verify(bad, now), Err(TokenError::Malformed(_))),
                "{bad:?}"
            );
        }
    }
}
