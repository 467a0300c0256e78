//! Command-line definitions, and nothing else.
//!
//! Every flag of `serve` can also be set in `tollgate.toml` and as a `TOLLGATE_*`
//! environment variable; the precedence is flag, then variable, then file, then the
//! built-in default. Merging and validation live in [`crate::config`], so that this
//! module stays a plain description of the interface (its doc comments are the help
//! text).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// A transparent reverse proxy for the OpenAI API that governs tool calls.
///
/// Point an OpenAI SDK at it (`OPENAI_BASE_URL=http://127.0.0.1:7070/v1`) and change
/// nothing else.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version, about, long_about)]
pub struct Cli {
    /// Log output format.
    #[arg(long, global = true, env = "TOLLGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written to standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per event.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    Serve(ServeArgs),
    /// Validate the configuration, print a summary, and exit.
    Check(ServeArgs),
    /// Development certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// HushSpec policies: check and test them.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Ed25519 keys for signing tokens (and receipts).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Capability tokens for `tokens` auth mode.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Signed receipt logs: verify, show, summarise, follow.
    #[command(subcommand)]
    Receipts(ReceiptsCommand),
    /// Approval requests on a running server: list, approve, reject.
    #[command(subcommand)]
    Approvals(ApprovalsCommand),
}

/// The `approvals` subcommands.
#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// The approval requests the server holds, newest first.
    List {
        /// Only requests in this state.
        #[arg(long, value_parser = ["pending", "approved", "rejected", "consumed"])]
        state: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Approve a pending request: the next identical call runs, once.
    Approve {
        /// The request id (`apr_…`).
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Reject a pending request.
    Reject {
        /// The request id (`apr_…`).
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Where the running server's admin API is.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// The server's base URL.
    #[arg(long, env = "TOLLGATE_URL", default_value = "http://127.0.0.1:7070")]
    pub url: String,
    /// The admin token the server was started with.
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
    /// A CA certificate (PEM) to trust for an https URL, e.g. `certs/ca.pem`.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
}

/// The default signing key: `signing-key.pem` in the data directory `.tollgate`.
pub const DEFAULT_SIGNING_KEY: &str = ".tollgate/signing-key.pem";

/// The `receipts` subcommands.
#[derive(Debug, Subcommand)]
pub enum ReceiptsCommand {
    /// Check every signature, the chain across files, seq continuity and time
    /// order; exit 0 only if all hold.
    Verify {
        /// Log files, oldest first (rotated files, then the current one).
        #[arg(required = true)]
        logs: Vec<PathBuf>,
        /// Trusted public keys (PEM). Without any, the local signing key's public
        /// half is trusted.
        #[arg(long = "public-key")]
        public_keys: Vec<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// One readable line per receipt.
    Show {
        /// The log file.
        log: PathBuf,
        /// Only this decision.
        #[arg(long, value_parser = ["allow", "deny", "pending", "system"])]
        decision: Option<String>,
        /// Only this agent.
        #[arg(long)]
        agent: Option<String>,
        /// Only this tool.
        #[arg(long)]
        tool: Option<String>,
        /// Only receipts at or after this time: RFC 3339, or a duration ago (`15m`).
        #[arg(long)]
        since: Option<String>,
        /// One JSON receipt per line instead.
        #[arg(long)]
        json: bool,
    },
    /// Counts per decision, tool and agent; deny reasons; policy hashes.
    Summary {
        /// The log file.
        log: PathBuf,
        /// Markdown tables (for a CI job summary).
        #[arg(long)]
        markdown: bool,
        /// Exit non-zero if anything was denied.
        #[arg(long)]
        fail_on_deny: bool,
    },
    /// Print receipts as they are appended.
    Tail {
        /// The log file.
        log: PathBuf,
        /// How many existing receipts to print first.
        #[arg(long, default_value_t = 10)]
        lines: usize,
    },
}

/// The `keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Write a new signing key (PKCS#8 PEM, owner-only) and print its public key.
    Generate {
        /// Where to write the key.
        #[arg(long, default_value = DEFAULT_SIGNING_KEY)]
        out: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Print the public key (SPKI PEM) and key id of a signing key.
    Public {
        /// The signing key.
        #[arg(long, default_value = DEFAULT_SIGNING_KEY)]
        key: PathBuf,
    },
}

/// The `token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Issue a capability token.
    Issue {
        /// The agent the token is for.
        #[arg(long)]
        agent: String,
        /// Tools it may call, comma-separated: exact names or `server__*`.
        #[arg(long, value_delimiter = ',', required = true)]
        tools: Vec<String>,
        /// How long it is valid (`8h`, `30m`, `7d`).
        #[arg(long, default_value = "8h", value_parser = parse_duration)]
        ttl: Duration,
        /// Who must accept it.
        #[arg(long, default_value = "tollgate")]
        audience: String,
        /// The signing key.
        #[arg(long, default_value = DEFAULT_SIGNING_KEY)]
        key: PathBuf,
    },
    /// Show a token's claims; with public keys, verify it too.
    Inspect {
        /// The token.
        token: String,
        /// Trusted public keys (PEM); verification is skipped without any.
        #[arg(long = "public-key")]
        public_keys: Vec<PathBuf>,
        /// The audience to expect when verifying.
        #[arg(long, default_value = "tollgate")]
        audience: String,
    },
}

/// The `policy` subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Parse, resolve and validate a policy; print its hash.
    Check(PolicyCheckArgs),
    /// Run HushSpec test files (`*.test.yaml`); exit non-zero if any case fails.
    Test(PolicyTestArgs),
    /// Decide one tool call and show every check consulted.
    Explain(PolicyExplainArgs),
}

/// Options of `tollgate policy explain`.
#[derive(Debug, Args)]
pub struct PolicyExplainArgs {
    /// The policy file, or the name of a bundled policy.
    pub file: String,
    /// The tool's name.
    #[arg(long)]
    pub tool: String,
    /// The arguments, as the model would write them (a JSON object).
    #[arg(long, default_value = "{}")]
    pub args: String,
    /// Treat the tool as one with side effects (paths count as writes).
    #[arg(long)]
    pub side_effects: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Options of `tollgate policy check`.
#[derive(Debug, Args)]
pub struct PolicyCheckArgs {
    /// The policy file (YAML), or the name of a bundled policy (`default`, `strict`).
    pub file: String,
}

/// Options of `tollgate policy test`.
#[derive(Debug, Args)]
pub struct PolicyTestArgs {
    /// Test files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// The `certs` subcommands.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Write a local certificate authority and a `localhost` / `127.0.0.1` / `::1`
    /// server certificate signed by it.
    Dev(CertsDevArgs),
}

/// Options of `tollgate certs dev`.
#[derive(Debug, Args)]
pub struct CertsDevArgs {
    /// Directory to write `ca.pem`, `ca-key.pem`, `server.pem` and `server-key.pem` into.
    #[arg(long, default_value = "certs")]
    pub dir: PathBuf,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
}

/// Options of `tollgate serve` and `tollgate check`.
///
/// Each is optional here so that the configuration file can fill what the command
/// line leaves out; defaults are applied in [`crate::config`].
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Configuration file (TOML). Without it, `./tollgate.toml` is read if it exists.
    #[arg(long, env = "TOLLGATE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address to listen on [default: 127.0.0.1:7070].
    #[arg(long, env = "TOLLGATE_LISTEN")]
    pub listen: Option<String>,

    /// Upstream origin that requests are forwarded to, without `/v1`
    /// [default: https://api.openai.com].
    #[arg(long, env = "TOLLGATE_UPSTREAM")]
    pub upstream: Option<String>,

    /// PEM certificate chain; with `--tls-key`, the listener speaks HTTPS
    /// (HTTP/1.1 and HTTP/2 by ALPN).
    #[arg(long, env = "TOLLGATE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for `--tls-cert`.
    #[arg(long, env = "TOLLGATE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Largest request body accepted, in bytes [default: 16 MiB].
    #[arg(long, env = "TOLLGATE_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<u64>,

    /// Most bytes of request bodies (with their parsed form), upstream answers and
    /// held stream events that governed requests in progress may hold together; beyond it a governed request is refused with a
    /// 503 to retry [default: 256 MiB].
    #[arg(long, env = "TOLLGATE_MAX_GOVERNED_BYTES")]
    pub max_governed_bytes: Option<u64>,

    /// Largest total size of the request headers, in bytes [default: 32 KiB].
    #[arg(long, env = "TOLLGATE_MAX_HEADER_BYTES")]
    pub max_header_bytes: Option<usize>,

    /// Largest number of request headers [default: 100].
    #[arg(long, env = "TOLLGATE_MAX_HEADERS")]
    pub max_headers: Option<usize>,

    /// Time a client has to send the request headers (and finish the TLS handshake)
    /// before its connection is dropped [default: 30s].
    #[arg(long, env = "TOLLGATE_HEADER_READ_TIMEOUT", value_parser = parse_duration)]
    pub header_read_timeout: Option<Duration>,

    /// Time allowed to open a connection to the upstream [default: 10s].
    #[arg(long, env = "TOLLGATE_CONNECT_TIMEOUT", value_parser = parse_duration)]
    pub connect_timeout: Option<Duration>,

    /// Time allowed between sending a request upstream and receiving its response
    /// headers (the first byte) [default: 10m].
    #[arg(long, env = "TOLLGATE_FIRST_BYTE_TIMEOUT", value_parser = parse_duration)]
    pub first_byte_timeout: Option<Duration>,

    /// Longest silence allowed between two pieces of a body, in either direction;
    /// there is no total deadline on a stream [default: 300s].
    #[arg(long, env = "TOLLGATE_IDLE_TIMEOUT", value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,

    /// On SIGTERM or SIGINT, how long in-flight requests may take to finish
    /// [default: 30s].
    #[arg(long, env = "TOLLGATE_SHUTDOWN_GRACE", value_parser = parse_duration)]
    pub shutdown_grace: Option<Duration>,

    /// The HushSpec policy: a YAML file, or a bundled name (`default`, `strict`,
    /// `openai-argument-guards`, `pinned-tools`) [default: the bundled `default`].
    #[arg(long, env = "TOLLGATE_POLICY")]
    pub policy: Option<String>,

    /// The receipt log (JSON Lines) [default: ./receipts.jsonl].
    #[arg(long, env = "TOLLGATE_RECEIPTS")]
    pub receipts: Option<PathBuf>,

    /// The Ed25519 key receipts are signed with (PKCS#8 PEM); it must exist
    /// [default: .tollgate/signing-key.pem, created on first run].
    #[arg(long, env = "TOLLGATE_SIGNING_KEY")]
    pub signing_key: Option<PathBuf>,

    /// `govern` (default) decides every tool call; `relay` passes everything
    /// through ungoverned, for measurement and debugging only.
    #[arg(long, env = "TOLLGATE_MODE", value_enum)]
    pub mode: Option<Mode>,

    /// How callers are identified [default: passthrough].
    #[arg(long, env = "TOLLGATE_AUTH", value_enum)]
    pub auth: Option<AuthMode>,

    /// In `tokens` mode, the environment variable that holds tollgate's own
    /// upstream API key [default: OPENAI_API_KEY].
    #[arg(long, env = "TOLLGATE_UPSTREAM_KEY_ENV")]
    pub upstream_key_env: Option<String>,

    /// Public keys (PEM) whose capability tokens are accepted in `tokens` mode;
    /// repeatable [default: the signing key's public half].
    #[arg(long = "token-key", env = "TOLLGATE_TOKEN_KEYS", value_delimiter = ',')]
    pub token_keys: Option<Vec<PathBuf>>,

    /// The audience capability tokens must name [default: tollgate].
    #[arg(long, env = "TOLLGATE_TOKEN_AUDIENCE")]
    pub token_audience: Option<String>,

    /// A file of revoked token ids (`jti`), one per line; `#` starts a comment.
    /// Read again on SIGHUP and when the file changes.
    #[arg(long, env = "TOLLGATE_REVOKED_TOKENS")]
    pub revoked_tokens: Option<PathBuf>,

    /// How long the receipt of a call in a stream may wait, while the log is
    /// busy, for others to share its sync (0 turns it off; at most 100ms)
    /// [default: 1ms].
    #[arg(long, env = "TOLLGATE_RECEIPT_GROUP_WAIT", value_parser = parse_duration)]
    pub receipt_group_wait: Option<Duration>,

    /// Most upstream rounds for one client request [default: 8].
    #[arg(long, env = "TOLLGATE_MAX_ROUNDS")]
    pub max_rounds: Option<u32>,

    /// How long a turn tollgate changed is remembered, so that the client's
    /// follow-up (its tool results, a `previous_response_id`, a fetch by id) finds
    /// it [default: 1h].
    #[arg(long, env = "TOLLGATE_REMEMBER_FOR", value_parser = parse_duration)]
    pub remember_for: Option<Duration>,

    /// Most turns remembered at once on each surface; past it the oldest is
    /// forgotten [default: 10000].
    #[arg(long, env = "TOLLGATE_REMEMBER_TURNS")]
    pub remember_turns: Option<usize>,

    /// Most bytes of remembered turns on each surface, each turn counted as the
    /// estimated size in memory of its parsed JSON; past it the oldest are
    /// forgotten, and a turn larger than all of it is not remembered [default:
    /// 67108864, 64 MiB].
    #[arg(long, env = "TOLLGATE_REMEMBER_BYTES")]
    pub remember_bytes: Option<u64>,

    /// The bearer token of the approvals admin API; without one, that API is off.
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// This gateway's id, in receipts [default: tollgate].
    #[arg(long, env = "TOLLGATE_SERVER_ID")]
    pub server_id: Option<String>,
}

/// Whether tool calls are governed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Inject, inspect, decide, sign, act.
    Govern,
    /// Pass everything through (identity still applies); nothing is decided or
    /// recorded.
    Relay,
}

/// How callers are identified (SPEC section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// The client's own API key goes upstream; the agent id is derived from it.
    Passthrough,
    /// Clients present tollgate capability tokens; tollgate calls upstream with
    /// its own key.
    Tokens,
}

/// Parses `10s`, `250ms`, `5m`, `1h 30m` and the like.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("invalid duration {text:?}: {e}"))
}
