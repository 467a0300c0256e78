//! Configuration: the raw `tollgate.toml`, merged with flags and variables, then
//! validated into a [`Config`] the rest of the program can trust.
//!
//! Parsing happens in two stages. [`RawConfig`] mirrors the file exactly and rejects
//! unknown keys; [`Config::resolve`] merges it under the command line (flag, then
//! `TOLLGATE_*` variable, then file, then default), resolves relative paths (file
//! values against the file's directory, flags against the working directory) and
//! checks every value, so that a bad configuration fails before anything listens.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use serde::Deserialize;

use crate::cli::{AuthMode, Mode, ServeArgs};
use crate::tools::http::HttpToolConfig;

/// Default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
/// Default upstream origin.
pub const DEFAULT_UPSTREAM: &str = "https://api.openai.com";
/// Name of the configuration file read from the working directory when no
/// `--config` is given.
pub const DEFAULT_CONFIG_FILE: &str = "tollgate.toml";

/// A configuration that could not be loaded or is not valid.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML or has unknown keys.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with the offending location.
        message: String,
    },
    /// A value is out of range or malformed.
    #[error("invalid `{key}`: {message}")]
    Invalid {
        /// The key (file) or flag name.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// `tollgate.toml` exactly as written. Every key is also a `serve` flag of the same
/// name (with `-` for `_`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    listen: Option<String>,
    upstream: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    max_body_bytes: Option<u64>,
    max_governed_bytes: Option<u64>,
    max_header_bytes: Option<usize>,
    max_headers: Option<usize>,
    header_read_timeout: Option<String>,
    connect_timeout: Option<String>,
    first_byte_timeout: Option<String>,
    idle_timeout: Option<String>,
    shutdown_grace: Option<String>,
    policy: Option<String>,
    receipts: Option<PathBuf>,
    receipt_group_wait: Option<String>,
    signing_key: Option<PathBuf>,
    mode: Option<Mode>,
    auth: Option<AuthMode>,
    upstream_key_env: Option<String>,
    token_keys: Option<Vec<PathBuf>>,
    token_audience: Option<String>,
    revoked_tokens: Option<PathBuf>,
    max_rounds: Option<u32>,
    remember_for: Option<String>,
    remember_turns: Option<usize>,
    remember_bytes: Option<u64>,
    admin_token: Option<String>,
    server_id: Option<String>,
    #[serde(default)]
    tools: ToolsSection,
}

/// The `[tools]` table: governed tools by kind.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolsSection {
    /// `[[tools.http]]` entries.
    #[serde(default)]
    http: Vec<HttpToolConfig>,
}

impl RawConfig {
    /// Parses the text of a configuration file.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_owned(),
        })
    }
}

/// The validated configuration of a running proxy.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Where requests go.
    pub upstream: Upstream,
    /// Certificate and key for HTTPS; plain HTTP when absent.
    pub tls: Option<TlsFiles>,
    /// Size limits on requests.
    pub limits: Limits,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Governance: policy, receipts, identity, tools.
    pub govern: GovernConfig,
    /// The configuration file that was read, if any.
    pub file: Option<PathBuf>,
}

/// Where the policy comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// A policy bundled into the binary, by name.
    Bundled(String),
    /// A YAML file.
    File(PathBuf),
}

impl fmt::Display for PolicySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bundled(name) => write!(f, "bundled {name}"),
            Self::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A secret from the configuration: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Default receipt log.
pub const DEFAULT_RECEIPTS: &str = "receipts.jsonl";
/// Default variable holding the upstream key in `tokens` mode.
pub const DEFAULT_UPSTREAM_KEY_ENV: &str = "OPENAI_API_KEY";
/// Default most upstream rounds per client request.
pub const DEFAULT_MAX_ROUNDS: u32 = 8;
/// How long a changed turn is remembered unless configured.
pub const DEFAULT_REMEMBER_FOR: Duration = Duration::from_secs(3600);
/// How many changed turns a surface remembers unless configured.
pub const DEFAULT_REMEMBER_TURNS: usize = 10_000;
/// How many bytes of changed turns (their estimated size in memory) a surface remembers
/// unless configured.
pub const DEFAULT_REMEMBER_BYTES: usize = 64 * 1024 * 1024;

/// What governs `POST /v1/chat/completions` and `POST /v1/responses`.
#[derive(Debug, Clone)]
pub struct GovernConfig {
    /// The policy.
    pub policy: PolicySource,
    /// The receipt log.
    pub receipts: PathBuf,
    /// How long the receipt of a call in a stream may wait, while the log is
    /// busy, to share a sync with others (zero: never).
    pub receipt_group_wait: Duration,
    /// The signing key file, if one is configured (else the default, created on
    /// first run).
    pub signing_key: Option<PathBuf>,
    /// Govern, or only relay.
    pub mode: Mode,
    /// How callers are identified.
    pub auth: AuthMode,
    /// The variable holding the upstream key in `tokens` mode.
    pub upstream_key_env: String,
    /// Keys whose tokens are accepted (empty: the signing key's public half).
    pub token_keys: Vec<PathBuf>,
    /// The audience tokens must name.
    pub token_audience: String,
    /// Revoked token ids, one per line.
    pub revoked_tokens: Option<PathBuf>,
    /// Most upstream rounds per client request.
    pub max_rounds: u32,
    /// How long a changed turn is remembered for the client's follow-up.
    pub remember_for: Duration,
    /// Most turns remembered at once on each surface.
    pub remember_turns: usize,
    /// Most bytes of remembered turns (their estimated size in memory) on each surface.
    pub remember_bytes: usize,
    /// The admin API's bearer token; the approvals API is off without one.
    pub admin_token: Option<Secret>,
    /// This gateway's id, in receipts.
    pub server_id: String,
    /// Governed HTTP tools.
    pub http_tools: Vec<HttpToolConfig>,
}

impl Default for GovernConfig {
    fn default() -> Self {
        Self {
            policy: PolicySource::Bundled("default".into()),
            receipts: PathBuf::from(DEFAULT_RECEIPTS),
            receipt_group_wait: crate::receipt::log::GROUP_WAIT,
            signing_key: None,
            mode: Mode::Govern,
            auth: AuthMode::Passthrough,
            upstream_key_env: DEFAULT_UPSTREAM_KEY_ENV.into(),
            token_keys: Vec::new(),
            token_audience: "tollgate".into(),
            revoked_tokens: None,
            max_rounds: DEFAULT_MAX_ROUNDS,
            remember_for: DEFAULT_REMEMBER_FOR,
            remember_turns: DEFAULT_REMEMBER_TURNS,
            remember_bytes: DEFAULT_REMEMBER_BYTES,
            admin_token: None,
            server_id: "tollgate".into(),
            http_tools: Vec::new(),
        }
    }
}

/// Whether a `policy` value names a bundled policy rather than a file.
pub fn bundled_policy_name(value: &str) -> Option<String> {
    crate::kernel::policy::resolve::bundled(value).map(|(name, _)| name.to_owned())
}

/// The upstream origin, split into the parts the relay needs.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// Host and port.
    pub authority: Authority,
    /// A path prefix put before every request path (empty, or `/something` without
    /// a trailing slash).
    pub base_path: String,
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.base_path)
    }
}

/// Certificate chain and private key files for the HTTPS listener.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Size limits on what a client may send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body in bytes.
    pub max_body_bytes: u64,
    /// Most bytes of request bodies (with their parsed form), upstream answers and
    /// held stream events that governed requests in progress may hold together; a governed request that would pass it is refused
    /// with a 503.
    pub max_governed_bytes: u64,
    /// Largest total size of request headers (names, values and separators).
    pub max_header_bytes: usize,
    /// Largest number of request headers.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 * 1024 * 1024,
            max_governed_bytes: 256 * 1024 * 1024,
            max_header_bytes: 32 * 1024,
            max_headers: 100,
        }
    }
}

/// Timeouts. None of them bounds the total length of a streaming response.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Client: TLS handshake plus request headers.
    pub header_read: Duration,
    /// Upstream: opening the connection.
    pub connect: Duration,
    /// Upstream: from request sent to response headers received.
    pub first_byte: Duration,
    /// Either direction: longest gap between two pieces of a body.
    pub idle: Duration,
    /// Shutdown: how long in-flight requests may take to finish.
    pub shutdown_grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            header_read: Duration::from_secs(30),
            connect: Duration::from_secs(10),
            first_byte: Duration::from_secs(600),
            idle: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

impl Config {
    /// Loads the configuration file named by the arguments (or `./tollgate.toml`
    /// when it exists) and merges the arguments over it.
    pub fn load(args: &ServeArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => Some(path.clone()),
            None => {
                let default = PathBuf::from(DEFAULT_CONFIG_FILE);
                default.is_file().then_some(default)
            }
        };
        let raw = match &file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                RawConfig::parse(&text, path)?
            }
            None => RawConfig::default(),
        };
        let base_dir = file
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut config = Self::resolve(args, raw, &base_dir)?;
        config.file = file;
        Ok(config)
    }

    /// Merges flags over a parsed file and validates the result. Relative paths from
    /// the file are taken relative to `file_dir`.
    pub fn resolve(args: &ServeArgs, raw: RawConfig, file_dir: &Path) -> Result<Self, ConfigError> {
        let raw_govern = RawGovern {
            mode: raw.mode,
            policy: raw.policy,
            receipts: raw.receipts,
            receipt_group_wait: raw.receipt_group_wait,
            signing_key: raw.signing_key,
            auth: raw.auth,
            upstream_key_env: raw.upstream_key_env,
            token_keys: raw.token_keys,
            token_audience: raw.token_audience,
            revoked_tokens: raw.revoked_tokens,
            max_rounds: raw.max_rounds,
            remember_for: raw.remember_for,
            remember_turns: raw.remember_turns,
            remember_bytes: raw.remember_bytes,
            admin_token: raw.admin_token,
            server_id: raw.server_id,
            tools: raw.tools,
        };
        let listen_text = args
            .listen
            .clone()
            .or(raw.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = listen_text
            .parse::<SocketAddr>()
            .map_err(|e| ConfigError::Invalid {
                key: "listen",
                message: format!("{listen_text:?} is not an address like 127.0.0.1:7070 ({e})"),
            })?;

        let upstream_text = args
            .upstream
            .clone()
            .or(raw.upstream)
            .unwrap_or_else(|| DEFAULT_UPSTREAM.to_owned());
        let upstream = parse_upstream(&upstream_text)?;

        let in_file = |p: PathBuf| if p.is_absolute() { p } else { file_dir.join(p) };
        let tls_cert = args.tls_cert.clone().or(raw.tls_cert.map(in_file));
        let tls_key = args.tls_key.clone().or(raw.tls_key.map(in_file));
        let tls = match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::Invalid {
                    key: "tls_key",
                    message: "tls_cert is set but tls_key is not".into(),
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    key: "tls_cert",
                    message: "tls_key is set but tls_cert is not".into(),
                });
            }
        };

        let defaults = Limits::default();
        let limits = Limits {
            max_body_bytes: args
                .max_body_bytes
                .or(raw.max_body_bytes)
                .unwrap_or(defaults.max_body_bytes),
            max_governed_bytes: args
                .max_governed_bytes
                .or(raw.max_governed_bytes)
                .unwrap_or(defaults.max_governed_bytes),
            max_header_bytes: args
                .max_header_bytes
                .or(raw.max_header_bytes)
                .unwrap_or(defaults.max_header_bytes),
            max_headers: args
                .max_headers
                .or(raw.max_headers)
                .unwrap_or(defaults.max_headers),
        };
        if limits.max_body_bytes == 0 {
            return Err(invalid("max_body_bytes", "must be at least 1"));
        }
        if limits.max_governed_bytes < limits.max_body_bytes {
            return Err(invalid(
                "max_governed_bytes",
                "must be at least max_body_bytes, or a request of the largest size could never be governed",
            ));
        }
        if !(1024..=1024 * 1024).contains(&limits.max_header_bytes) {
            return Err(invalid(
                "max_header_bytes",
                "must be between 1024 and 1048576",
            ));
        }
        if !(8..=1000).contains(&limits.max_headers) {
            return Err(invalid("max_headers", "must be between 8 and 1000"));
        }

        let d = Timeouts::default();
        let timeouts = Timeouts {
            header_read: duration(
                "header_read_timeout",
                args.header_read_timeout,
                raw.header_read_timeout,
                d.header_read,
            )?,
            connect: duration(
                "connect_timeout",
                args.connect_timeout,
                raw.connect_timeout,
                d.connect,
            )?,
            first_byte: duration(
                "first_byte_timeout",
                args.first_byte_timeout,
                raw.first_byte_timeout,
                d.first_byte,
            )?,
            idle: duration("idle_timeout", args.idle_timeout, raw.idle_timeout, d.idle)?,
            shutdown_grace: duration(
                "shutdown_grace",
                args.shutdown_grace,
                raw.shutdown_grace,
                d.shutdown_grace,
            )?,
        };

        let govern = resolve_govern(args, raw_govern, &in_file)?;

        Ok(Self {
            listen,
            upstream,
            tls,
            limits,
            timeouts,
            govern,
            file: None,
        })
    }
}

/// The governance keys of a file, split off so that [`Config::resolve`] can move
/// them out of [`RawConfig`] independently.
struct RawGovern {
    mode: Option<Mode>,
    policy: Option<String>,
    receipts: Option<PathBuf>,
    receipt_group_wait: Option<String>,
    signing_key: Option<PathBuf>,
    auth: Option<AuthMode>,
    upstream_key_env: Option<String>,
    token_keys: Option<Vec<PathBuf>>,
    token_audience: Option<String>,
    revoked_tokens: Option<PathBuf>,
    max_rounds: Option<u32>,
    remember_for: Option<String>,
    remember_turns: Option<usize>,
    remember_bytes: Option<u64>,
    admin_token: Option<String>,
    server_id: Option<String>,
    tools: ToolsSection,
}

/// The longest a receipt may wait to share a sync.
const MAX_RECEIPT_GROUP_WAIT: Duration = Duration::from_millis(100);
/// The longest a changed turn may be remembered.
const MAX_REMEMBER_FOR: Duration = Duration::from_secs(7 * 24 * 3600);
/// The most turns a surface may remember.
const MAX_REMEMBER_TURNS: usize = 1_000_000;
/// The bounds of the bytes of turns a surface remembers: 64 KiB to 64 GiB.
const REMEMBER_BYTES: std::ops::RangeInclusive<u64> = 64 * 1024..=64 * 1024 * 1024 * 1024;

fn resolve_govern(
    args: &ServeArgs,
    raw: RawGovern,
    in_file: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<GovernConfig, ConfigError> {
    let d = GovernConfig::default();
    let policy = match (&args.policy, raw.policy) {
        (Some(flag), _) => match bundled_policy_name(flag) {
            Some(name) => PolicySource::Bundled(name),
            None => PolicySource::File(PathBuf::from(flag)),
        },
        (None, Some(file)) => match bundled_policy_name(&file) {
            Some(name) => PolicySource::Bundled(name),
            None => PolicySource::File(in_file(PathBuf::from(file))),
        },
        (None, None) => d.policy,
    };
    let max_rounds = args.max_rounds.or(raw.max_rounds).unwrap_or(d.max_rounds);
    if !(1..=64).contains(&max_rounds) {
        return Err(invalid("max_rounds", "must be between 1 and 64"));
    }
    let remember_for = duration(
        "remember_for",
        args.remember_for,
        raw.remember_for,
        d.remember_for,
    )?;
    if remember_for > MAX_REMEMBER_FOR {
        return Err(invalid("remember_for", "must be at most 7 days"));
    }
    let receipt_group_wait = duration_or_zero(
        "receipt_group_wait",
        args.receipt_group_wait,
        raw.receipt_group_wait,
        d.receipt_group_wait,
    )?;
    if receipt_group_wait > MAX_RECEIPT_GROUP_WAIT {
        return Err(invalid(
            "receipt_group_wait",
            "must be at most 100ms (0 turns the wait off)",
        ));
    }
    let remember_turns = args
        .remember_turns
        .or(raw.remember_turns)
        .unwrap_or(d.remember_turns);
    if !(1..=MAX_REMEMBER_TURNS).contains(&remember_turns) {
        return Err(invalid("remember_turns", "must be between 1 and 1000000"));
    }
    let remember_bytes =
        args.remember_bytes
            .or(raw.remember_bytes)
            .map_or(Ok(d.remember_bytes), |bytes| {
                REMEMBER_BYTES
                    .contains(&bytes)
                    .then(|| usize::try_from(bytes).ok())
                    .flatten()
                    .ok_or_else(|| {
                        invalid(
                            "remember_bytes",
                            "must be between 65536 (64 KiB) and 68719476736 (64 GiB)",
                        )
                    })
            })?;
    let upstream_key_env = args
        .upstream_key_env
        .clone()
        .or(raw.upstream_key_env)
        .unwrap_or(d.upstream_key_env);
    if upstream_key_env.is_empty()
        || !upstream_key_env
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(invalid(
            "upstream_key_env",
            "must be the name of an environment variable",
        ));
    }
    let admin_token = args.admin_token.clone().or(raw.admin_token);
    if admin_token.as_ref().is_some_and(|t| t.len() < 16) {
        return Err(invalid(
            "admin_token",
            "must be at least 16 characters (or unset, which turns the admin API off)",
        ));
    }
    let server_id = args
        .server_id
        .clone()
        .or(raw.server_id)
        .unwrap_or(d.server_id);
    if server_id.is_empty() || server_id.len() > 128 {
        return Err(invalid("server_id", "must be 1 to 128 characters"));
    }
    let mut names = std::collections::HashSet::new();
    for tool in &raw.tools.http {
        if !names.insert(tool.name.clone()) {
            return Err(ConfigError::Invalid {
                key: "tools.http",
                message: format!("two tools are named {:?}", tool.name),
            });
        }
    }
    Ok(GovernConfig {
        policy,
        receipts: args
            .receipts
            .clone()
            .or(raw.receipts.map(in_file))
            .unwrap_or(d.receipts),
        receipt_group_wait,
        signing_key: args.signing_key.clone().or(raw.signing_key.map(in_file)),
        mode: args.mode.or(raw.mode).unwrap_or(d.mode),
        auth: args.auth.or(raw.auth).unwrap_or(d.auth),
        upstream_key_env,
        token_keys: args.token_keys.clone().unwrap_or_else(|| {
            raw.token_keys
                .unwrap_or_default()
                .into_iter()
                .map(in_file)
                .collect()
        }),
        token_audience: args
            .token_audience
            .clone()
            .or(raw.token_audience)
            .unwrap_or(d.token_audience),
        revoked_tokens: args
            .revoked_tokens
            .clone()
            .or(raw.revoked_tokens.map(in_file)),
        max_rounds,
        remember_for,
        remember_turns,
        remember_bytes,
        admin_token: admin_token.map(Secret),
        server_id,
        http_tools: raw.tools.http,
    })
}

fn invalid(key: &'static str, message: &str) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.to_owned(),
    }
}

fn duration(
    key: &'static str,
    flag: Option<Duration>,
    file: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let value = duration_or_zero(key, flag, file, default)?;
    if value.is_zero() {
        return Err(invalid(key, "must be longer than zero"));
    }
    Ok(value)
}

/// A duration setting: the flag (or its variable), else the file's text, else
/// the default; zero allowed.
fn duration_or_zero(
    key: &'static str,
    flag: Option<Duration>,
    file: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    Ok(match (flag, file) {
        (Some(d), _) => d,
        (None, Some(text)) => crate::cli::parse_duration(&text)
            .map_err(|message| ConfigError::Invalid { key, message })?,
        (None, None) => default,
    })
}

/// Parses and checks the upstream origin: `http` or `https`, a host, no user info,
/// query or fragment. A path is kept as a prefix.
pub fn parse_upstream(text: &str) -> Result<Upstream, ConfigError> {
    let bad = |message: String| ConfigError::Invalid {
        key: "upstream",
        message,
    };
    let uri: http::Uri = text
        .parse()
        .map_err(|e| bad(format!("{text:?} is not a URL ({e})")))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| bad(format!("{text:?} has no scheme; use http:// or https://")))?;
    if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
        return Err(bad(format!(
            "scheme {scheme} is not supported; use http or https"
        )));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| bad(format!("{text:?} has no host")))?;
    if authority.as_str().contains('@') {
        return Err(bad("user info in the upstream URL is not allowed".into()));
    }
    if authority.host().is_empty() {
        return Err(bad(format!("{text:?} has no host")));
    }
    if uri.query().is_some() || text.contains('#') {
        return Err(bad(
            "the upstream URL must not have a query or fragment".into()
        ));
    }
    let base_path = uri.path().trim_end_matches('/').to_owned();
    Ok(Upstream {
        scheme,
        authority,
        base_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(args: ServeArgs, file: &str) -> Result<Config, ConfigError> {
        let raw = RawConfig::parse(file, Path::new("t.toml"))?;
        Config::resolve(&args, raw, Path::new("/etc/tollgate"))
    }

    #[test]
    fn defaults_without_anything() {
        let c = resolve(ServeArgs::default(), "").unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7070");
        assert_eq!(c.upstream.to_string(), "https://api.openai.com");
        assert!(c.tls.is_none());
        assert_eq!(c.limits.max_body_bytes, 16 * 1024 * 1024);
        assert_eq!(c.limits.max_governed_bytes, 256 * 1024 * 1024);
        assert_eq!(c.timeouts.idle, Duration::from_secs(300));
        assert_eq!(c.timeouts.connect, Duration::from_secs(10));
    }

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let args = ServeArgs {
            listen: Some("127.0.0.1:9999".into()),
            ..ServeArgs::default()
        };
        let c = resolve(
            args,
            "listen = \"127.0.0.1:1111\"\nupstream = \"http://127.0.0.1:8080/base/\"\nidle_timeout = \"5s\"\n",
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9999);
        assert_eq!(c.upstream.to_string(), "http://127.0.0.1:8080/base");
        assert_eq!(c.timeouts.idle, Duration::from_secs(5));
    }

    #[test]
    fn how_long_and_how_many_turns_are_remembered() {
        let d = resolve(ServeArgs::default(), "").unwrap().govern;
        assert_eq!(
            (d.remember_for, d.remember_turns, d.remember_bytes),
            (Duration::from_secs(3600), 10_000, 64 << 20)
        );
        let file = "remember_for = \"2h\"\nremember_turns = 5\nremember_bytes = 1048576\n";
        let f = resolve(ServeArgs::default(), file).unwrap().govern;
        assert_eq!(
            (f.remember_for, f.remember_turns, f.remember_bytes),
            (Duration::from_secs(7200), 5, 1 << 20)
        );
        let flags = ServeArgs {
            remember_for: Some(Duration::from_secs(60)),
            remember_turns: Some(7),
            remember_bytes: Some(65536),
            ..ServeArgs::default()
        };
        let over = resolve(flags, file).unwrap().govern;
        assert_eq!(
            (over.remember_for, over.remember_turns, over.remember_bytes),
            (Duration::from_secs(60), 7, 65536)
        );
    }

    #[test]
    fn how_long_a_receipt_may_wait_to_share_a_sync() {
        let d = resolve(ServeArgs::default(), "").unwrap().govern;
        assert_eq!(d.receipt_group_wait, Duration::from_millis(1));
        let file = "receipt_group_wait = \"0ms\"\n";
        let off = resolve(ServeArgs::default(), file).unwrap().govern;
        assert_eq!(off.receipt_group_wait, Duration::ZERO);
        let flags = ServeArgs {
            receipt_group_wait: Some(Duration::from_millis(3)),
            ..ServeArgs::default()
        };
        let flag = resolve(flags, file).unwrap().govern;
        assert_eq!(flag.receipt_group_wait, Duration::from_millis(3));
        for bad in [
            "receipt_group_wait = \"1s\"\n",
            "receipt_group_wait = \"soon\"\n",
        ] {
            let err = resolve(ServeArgs::default(), bad).unwrap_err();
            assert!(err.to_string().contains("receipt_group_wait"), "{err}");
        }
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = resolve(ServeArgs::default(), "listne = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(err.to_string().contains("listne"), "{err}");
    }

    #[test]
    fn file_paths_are_relative_to_the_file() {
        let c = resolve(
            ServeArgs::default(),
            "tls_cert = \"certs/server.pem\"\ntls_key = \"/abs/key.pem\"\n",
        )
        .unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.cert, PathBuf::from("/etc/tollgate/certs/server.pem"));
        assert_eq!(tls.key, PathBuf::from("/abs/key.pem"));
    }

    #[test]
    fn bad_values_are_rejected() {
        for (file, key) in [
            ("listen = \"nowhere\"", "listen"),
            ("upstream = \"ftp://x\"", "upstream"),
            ("upstream = \"https://user:pw@x\"", "upstream"),
            ("upstream = \"api.openai.com\"", "upstream"),
            ("idle_timeout = \"soon\"", "idle_timeout"),
            ("idle_timeout = \"0s\"", "idle_timeout"),
            ("max_body_bytes = 0", "max_body_bytes"),
            ("max_governed_bytes = 1048576", "max_governed_bytes"),
            ("max_headers = 2", "max_headers"),
            ("remember_for = \"0s\"", "remember_for"),
            ("remember_for = \"8d\"", "remember_for"),
            ("remember_turns = 0", "remember_turns"),
            ("remember_bytes = 1024", "remember_bytes"),
            ("remember_bytes = 68719476737", "remember_bytes"),
            ("max_rounds = 65", "max_rounds"),
            ("tls_cert = \"a.pem\"", "tls_key"),
        ] {
            match resolve(ServeArgs::default(), file) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{file}"),
                other => panic!("{file}: expected invalid {key}, got {other:?}"),
            }
        }
    }
}
