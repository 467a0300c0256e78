//! The governed gateway as `serve` builds it from the configuration: the policy,
//! the signing key and receipt log, the governed tools, how callers are identified
//! (SPEC section 3), and the reload of what may change while it runs (the policy
//! and the revoked-token list, on SIGHUP or when the policy file changes).
//!
//! Everything that can fail is checked in [`Gateway::open`], before the server
//! listens; a reload that fails keeps the previous policy.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use ed25519_dalek::VerifyingKey;
use http::{HeaderMap, HeaderValue, header};
use sha2::{Digest, Sha256};

use crate::cli::AuthMode;
use crate::config::{GovernConfig, PolicySource, Secret};
use crate::error::ProxyError;
use crate::kernel::Kernel;
use crate::kernel::policy::{Policy, PolicyError};
use crate::kernel::token::Verifier;
use crate::keys::KeyError;
use crate::receipt::{LogError, LogOptions, ReceiptLog};
use crate::tools::http::{HttpTool, ToolConfigError};
use crate::turn::chat::{Caller, Governance, Settings};

/// Why the gateway could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The policy does not load.
    #[error("policy: {0}")]
    Policy(#[from] PolicyError),
    /// A key does not load.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The receipt log cannot be opened.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A governed tool is misconfigured.
    #[error("tools.http: {0}")]
    Tool(#[from] ToolConfigError),
    /// Something else in the configuration.
    #[error("{0}")]
    Config(String),
}

/// How callers are identified.
enum Auth {
    Passthrough,
    Tokens {
        keys: Vec<VerifyingKey>,
        audience: String,
        revoked: Option<PathBuf>,
        verifier: RwLock<Arc<Verifier>>,
        upstream_authorization: HeaderValue,
    },
}

/// Who a request comes from, and the credentials to send upstream.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The caller, for the kernel.
    pub caller: Caller,
    /// The `authorization` to send upstream instead of the client's, in `tokens`
    /// mode.
    pub upstream_authorization: Option<HeaderValue>,
}

/// What a reload changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// The policy hash before.
    pub old_hash: String,
    /// The policy hash now.
    pub new_hash: String,
    /// Revoked token ids now, in `tokens` mode.
    pub revoked: Option<usize>,
}

/// The governed gateway.
pub struct Gateway {
    governance: Governance,
    auth: Auth,
    admin_token: Option<Secret>,
    policy_source: PolicySource,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("policy", &self.policy_source)
            .field(
                "auth",
                &match self.auth {
                    Auth::Passthrough => "passthrough",
                    Auth::Tokens { .. } => "tokens",
                },
            )
            .finish_non_exhaustive()
    }
}

/// Loads the configured policy.
pub fn load_policy(source: &PolicySource) -> Result<Policy, PolicyError> {
    match source {
        PolicySource::Bundled(name) => Policy::bundled(name),
        PolicySource::File(path) => Policy::load(path),
    }
}

fn read_revoked(path: &std::path::Path) -> Result<Vec<String>, GatewayError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| GatewayError::Config(format!("revoked_tokens {}: {e}", path.display())))?;
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

fn build_verifier(
    keys: &[VerifyingKey],
    audience: &str,
    revoked: Option<&std::path::Path>,
) -> Result<(Verifier, usize), GatewayError> {
    let mut verifier = Verifier::new(keys.iter().copied(), audience);
    let ids = match revoked {
        Some(path) => read_revoked(path)?,
        None => Vec::new(),
    };
    let count = ids.len();
    verifier.revoke(ids);
    Ok((verifier, count))
}

/// The agent id of a passthrough caller: `key:` and the first 16 hex digits of the
/// SHA-256 of the API key. The key itself is never kept.
pub fn passthrough_agent_id(api_key: &str) -> String {
    let digest = Sha256::digest(api_key.as_bytes());
    format!("key:{}", &hex::encode(digest)[..16])
}

/// The bearer credential of a request, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

impl Gateway {
    /// Loads the policy and keys, opens the receipt log and checks the tools.
    pub fn open(config: &GovernConfig) -> Result<Self, GatewayError> {
        let policy = load_policy(&config.policy)?;
        let (key, created) = crate::keys::load_or_create(
            config.signing_key.as_deref(),
            std::path::Path::new(crate::cli::DEFAULT_SIGNING_KEY),
        )?;
        if created {
            tracing::info!(
                path = crate::cli::DEFAULT_SIGNING_KEY,
                "created a new signing key"
            );
        }
        let public = key.verifying_key();
        let receipts = ReceiptLog::open(
            &config.receipts,
            key,
            LogOptions {
                server_id: config.server_id.clone(),
                group_wait: config.receipt_group_wait,
                ..LogOptions::default()
            },
        )?;
        let tools = config
            .http_tools
            .iter()
            .cloned()
            .map(HttpTool::new)
            .collect::<Result<Vec<_>, _>>()?;
        let auth = match config.auth {
            AuthMode::Passthrough => Auth::Passthrough,
            AuthMode::Tokens => {
                let keys = if config.token_keys.is_empty() {
                    vec![public]
                } else {
                    config
                        .token_keys
                        .iter()
                        .map(|p| crate::keys::read_verifying(p))
                        .collect::<Result<Vec<_>, _>>()?
                };
                let upstream_key = std::env::var(&config.upstream_key_env)
                    .ok()
                    .filter(|k| !k.trim().is_empty())
                    .ok_or_else(|| {
                        GatewayError::Config(format!(
                            "auth = \"tokens\" needs tollgate's own upstream key in the environment variable {}, which is not set",
                            config.upstream_key_env
                        ))
                    })?;
                let mut upstream_authorization =
                    HeaderValue::from_str(&format!("Bearer {}", upstream_key.trim())).map_err(
                        |_| {
                            GatewayError::Config(format!(
                                "the upstream key in {} is not a valid header value",
                                config.upstream_key_env
                            ))
                        },
                    )?;
                upstream_authorization.set_sensitive(true);
                let (verifier, _) = build_verifier(
                    &keys,
                    &config.token_audience,
                    config.revoked_tokens.as_deref(),
                )?;
                Auth::Tokens {
                    keys,
                    audience: config.token_audience.clone(),
                    revoked: config.revoked_tokens.clone(),
                    verifier: RwLock::new(Arc::new(verifier)),
                    upstream_authorization,
                }
            }
        };
        let governance = Governance::new(
            Kernel::new(policy),
            receipts,
            tools,
            Settings {
                max_rounds: config.max_rounds,
                server_id: config.server_id.clone(),
                splice_turns: config.remember_turns,
                splice_bytes: config.remember_bytes,
                splice_ttl: config.remember_for,
            },
        )
        .map_err(GatewayError::Config)?;
        Ok(Self {
            governance,
            auth,
            admin_token: config.admin_token.clone(),
            policy_source: config.policy.clone(),
        })
    }

    /// The turn loop.
    pub fn governance(&self) -> &Governance {
        &self.governance
    }

    /// Where the policy comes from.
    pub fn policy_source(&self) -> &PolicySource {
        &self.policy_source
    }

    /// The files [`reload`](Self::reload) reads by name: the policy file (none for
    /// a bundled policy) and, in `tokens` mode, the revoked-token list. Files the
    /// policy pulls in through `extends` are read too but are not listed.
    pub fn reload_files(&self) -> Vec<PathBuf> {
        let policy = match &self.policy_source {
            PolicySource::File(path) => Some(path.clone()),
            PolicySource::Bundled(_) => None,
        };
        let revoked = match &self.auth {
            Auth::Tokens { revoked, .. } => revoked.clone(),
            Auth::Passthrough => None,
        };
        policy.into_iter().chain(revoked).collect()
    }

    /// Identifies the caller of a request. In `tokens` mode a missing or invalid
    /// token is a 401 and nothing goes upstream.
    pub fn identify(&self, headers: &HeaderMap) -> Result<Identity, ProxyError> {
        match &self.auth {
            Auth::Passthrough => Ok(Identity {
                caller: Caller {
                    agent_id: bearer(headers)
                        .map_or_else(|| "anonymous".to_owned(), passthrough_agent_id),
                    scope: None,
                },
                upstream_authorization: None,
            }),
            Auth::Tokens {
                verifier,
                upstream_authorization,
                ..
            } => {
                let token = bearer(headers).ok_or_else(|| ProxyError::Unauthorized {
                    message: "this gateway needs a tollgate capability token as the API key (Authorization: Bearer tg1_…)".into(),
                    code: "missing_api_key",
                })?;
                let verifier = match verifier.read() {
                    Ok(v) => v.clone(),
                    Err(poisoned) => poisoned.into_inner().clone(),
                };
                let verified = verifier.verify(token, SystemTime::now()).map_err(|e| {
                    ProxyError::Unauthorized {
                        message: format!("the capability token was refused ({}): {e}", e.code()),
                        code: "invalid_api_key",
                    }
                })?;
                Ok(Identity {
                    caller: Caller {
                        agent_id: verified.agent_id().to_owned(),
                        scope: Some(verified.scope()),
                    },
                    upstream_authorization: Some(upstream_authorization.clone()),
                })
            }
        }
    }

    /// What a relayed (ungoverned) request sends upstream as `authorization`:
    /// nothing new in passthrough mode (no agent id is needed, so the key is not
    /// hashed), tollgate's own key for a valid token in tokens mode.
    pub fn relay_authorization(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<HeaderValue>, ProxyError> {
        match self.auth {
            Auth::Passthrough => Ok(None),
            Auth::Tokens { .. } => Ok(self.identify(headers)?.upstream_authorization),
        }
    }

    /// Whether the approvals admin API is on.
    pub fn admin_enabled(&self) -> bool {
        self.admin_token.is_some()
    }

    /// Checks the admin API's bearer token.
    pub fn admin_authorized(&self, headers: &HeaderMap) -> bool {
        match (&self.admin_token, bearer(headers)) {
            (Some(expected), Some(given)) => {
                // Compare digests so the time taken says nothing about the token.
                Sha256::digest(expected.expose().as_bytes()) == Sha256::digest(given.as_bytes())
            }
            _ => false,
        }
    }

    /// Loads the policy (and the revoked-token list) again. On any error nothing
    /// changes.
    pub fn reload(&self) -> Result<Reloaded, GatewayError> {
        let policy = load_policy(&self.policy_source)?;
        let revoked = match &self.auth {
            Auth::Passthrough => None,
            Auth::Tokens {
                keys,
                audience,
                revoked,
                verifier,
                ..
            } => {
                let (next, count) = build_verifier(keys, audience, revoked.as_deref())?;
                match verifier.write() {
                    Ok(mut v) => *v = Arc::new(next),
                    Err(poisoned) => *poisoned.into_inner() = Arc::new(next),
                }
                Some(count)
            }
        };
        let old_hash = self.governance.kernel().policy().hash().to_owned();
        let new_hash = policy.hash().to_owned();
        self.governance.replace_policy(policy);
        Ok(Reloaded {
            old_hash,
            new_hash,
            revoked,
        })
    }
}
