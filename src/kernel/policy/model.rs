//! The HushSpec 0.1 document exactly as written: serde types that reject unknown
//! fields at every level, with the defaults the specification gives.
//!
//! Nothing here is checked beyond its shape; [`super::validate`] turns a document
//! into a compiled policy. The types also serialise back, so that a merged document
//! can be compared with an expected one and written out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A HushSpec document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// The specification version the document is written against.
    pub hushspec: String,
    /// A human name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A human description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The base policy: a path relative to this file, or a bundled policy's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends: Option<String>,
    /// How this document combines with its base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge_strategy: Option<MergeStrategy>,
    /// The rule blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Rules>,
    /// The optional extensions (parsed strictly; not evaluated by the core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Extensions>,
    /// Governance metadata (no effect on decisions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
}

/// How a document combines with the one it extends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MergeStrategy {
    /// The child alone.
    Replace,
    /// Child's top-level fields and whole rule blocks over the base's.
    Merge,
    /// As `merge` for rules; extensions merged key by key (the default).
    DeepMerge,
}

/// `allow` or `block`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefaultAction {
    /// Allow what no list names.
    Allow,
    /// Block what no list names.
    Block,
}

/// The rule blocks; each is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Rules {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forbidden_paths: Option<ForbiddenPaths>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_allowlist: Option<PathAllowlist>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Egress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_patterns: Option<SecretPatterns>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_integrity: Option<PatchIntegrity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell_commands: Option<ShellCommands>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_access: Option<ToolAccess>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub computer_use: Option<ComputerUse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_desktop_channels: Option<RemoteDesktopChannels>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_injection: Option<InputInjection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub browser_automation: Option<BrowserAutomation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_execution: Option<CodeExecution>,
    /// tollgate's addition to the core: rate limits per agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub velocity: Option<Velocity>,
}

fn yes() -> bool {
    true
}

/// Paths that must not be read or written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForbiddenPaths {
    /// Whether the block applies.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Path globs that are forbidden.
    #[serde(default)]
    pub patterns: Vec<String>,
    /// Path globs exempt from `patterns`.
    #[serde(default)]
    pub exceptions: Vec<String>,
}

/// The only paths that may be read, written or patched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathAllowlist {
    /// Whether the block applies (off unless said).
    #[serde(default)]
    pub enabled: bool,
    /// Globs that may be read.
    #[serde(default)]
    pub read: Vec<String>,
    /// Globs that may be written.
    #[serde(default)]
    pub write: Vec<String>,
    /// Globs that may be patched (`write` when empty).
    #[serde(default)]
    pub patch: Vec<String>,
}

/// Network destinations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Egress {
    /// Whether the block applies.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Host patterns that are allowed.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Host patterns that are blocked (wins over `allow`).
    #[serde(default)]
    pub block: Vec<String>,
    /// What happens to a host neither list names.
    #[serde(default = "block_default")]
    pub default: DefaultAction,
}

fn block_default() -> DefaultAction {
    DefaultAction::Block
}

fn allow_default() -> DefaultAction {
    DefaultAction::Allow
}

/// Severity of a secret pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum Severity {
    Critical,
    Error,
    Warn,
}

/// One named secret pattern.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretPattern {
    /// Unique name, used in `matched_rule`.
    pub name: String,
    /// The regular expression.
    pub pattern: String,
    /// How serious a match is.
    pub severity: Severity,
    /// A human description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Secrets in written content or arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretPatterns {
    /// Whether the block applies.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The policy's own patterns (tollgate adds built-in detectors).
    #[serde(default)]
    pub patterns: Vec<SecretPattern>,
    /// Path globs exempt from scanning.
    #[serde(default)]
    pub skip_paths: Vec<String>,
}

/// Limits on patches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchIntegrity {
    /// Whether the block applies.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Most added lines.
    #[serde(default = "max_additions_default")]
    pub max_additions: u64,
    /// Most deleted lines.
    #[serde(default = "max_deletions_default")]
    pub max_deletions: u64,
    /// Regexes that must not appear in a patch.
    #[serde(default)]
    pub forbidden_patterns: Vec<String>,
    /// Whether additions and deletions must stay in proportion.
    #[serde(default)]
    pub require_balance: bool,
    /// Largest ratio between additions and deletions.
    #[serde(default = "ratio_default")]
    pub max_imbalance_ratio: f64,
}

fn max_additions_default() -> u64 {
    1000
}
fn max_deletions_default() -> u64 {
    500
}
fn ratio_default() -> f64 {
    10.0
}

/// Shell commands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellCommands {
    /// Whether the block applies.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Regexes that must not appear in a command.
    #[serde(default)]
    pub forbidden_patterns: Vec<String>,
}

/// Which tools may be called.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolAccess {
    /// Whether the block applies.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Tools that may be called.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Tools that may not be called.
    #[serde(default)]
    pub block: Vec<String>,
    /// Tools that need a human's approval.
    #[serde(default)]
    pub require_confirmation: Vec<String>,
    /// What happens to a tool no list names.
    #[serde(default = "allow_default")]
    pub default: DefaultAction,
    /// Largest serialised arguments, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_args_size: Option<u64>,
}

/// `computer_use` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum ComputerUseMode {
    Observe,
    Guardrail,
    FailClosed,
}

fn guardrail() -> ComputerUseMode {
    ComputerUseMode::Guardrail
}

/// Computer-use actions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputerUse {
    /// Whether the block applies (off unless said).
    #[serde(default)]
    pub enabled: bool,
    /// What happens to unlisted actions.
    #[serde(default = "guardrail")]
    pub mode: ComputerUseMode,
    /// Actions allowed outright.
    #[serde(default)]
    pub allowed_actions: Vec<String>,
}

/// Remote desktop side channels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RemoteDesktopChannels {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub clipboard: bool,
    #[serde(default)]
    pub file_transfer: bool,
    #[serde(default = "yes")]
    pub audio: bool,
    #[serde(default)]
    pub drive_mapping: bool,
}

/// Synthetic input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct InputInjection {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub allowed_types: Vec<String>,
    #[serde(default)]
    pub require_postcondition_probe: bool,
}

/// Browser automation (parsed; not evaluated by the core).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct BrowserAutomation {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub allowed_domains: Vec<String>,
    #[serde(default)]
    pub blocked_domains: Vec<String>,
    #[serde(default)]
    pub allowed_verbs: Vec<String>,
    #[serde(default = "yes")]
    pub credential_detection: bool,
    #[serde(default)]
    pub extra_credential_patterns: Vec<String>,
}

/// Code execution (parsed; not evaluated by the core).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct CodeExecution {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub language_allowlist: Vec<String>,
    #[serde(default)]
    pub module_denylist: Vec<String>,
    #[serde(default)]
    pub network_access: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_execution_time_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_scan_bytes: Option<u64>,
}

/// tollgate's rate limit: at most `max_invocations` calls per `window_seconds`, per
/// agent, and per tool too when `per_tool` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Velocity {
    /// Whether the block applies.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Calls allowed per window.
    pub max_invocations: u64,
    /// Length of the window.
    pub window_seconds: u64,
    /// Count each tool separately.
    #[serde(default)]
    pub per_tool: bool,
}

/// The three extensions of the core specification.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Extensions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub posture: Option<Posture>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origins: Option<Origins>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detection: Option<Detection>,
}

/// A posture state machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Posture {
    pub initial: String,
    pub states: BTreeMap<String, PostureState>,
    pub transitions: Vec<PostureTransition>,
}

/// One posture state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct PostureState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub budgets: BTreeMap<String, i64>,
}

/// What moves a posture from one state to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum PostureTrigger {
    UserApproval,
    UserDenial,
    CriticalViolation,
    AnyViolation,
    Timeout,
    BudgetExhausted,
    PatternMatch,
}

/// One posture transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct PostureTransition {
    pub from: String,
    pub to: String,
    pub on: PostureTrigger,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// Origin profiles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Origins {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_behavior: Option<OriginDefault>,
    #[serde(default)]
    pub profiles: Vec<OriginProfile>,
}

/// What happens to an origin no profile matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum OriginDefault {
    Deny,
    MinimalProfile,
}

/// Kinds of conversation space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum SpaceType {
    Channel,
    Group,
    Dm,
    Thread,
    Issue,
    Ticket,
    PullRequest,
    EmailThread,
}

/// Visibility of a space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum Visibility {
    Private,
    Internal,
    Public,
    ExternalShared,
}

/// One origin profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct OriginProfile {
    pub id: String,
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matcher: Option<OriginMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub posture: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_access: Option<ToolAccess>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Egress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<OriginData>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budgets: Option<OriginBudgets>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<OriginBridge>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explanation: Option<String>,
}

/// What an origin must look like for a profile to apply.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct OriginMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub space_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub space_type: Option<SpaceType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility: Option<Visibility>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_participants: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensitivity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_role: Option<String>,
}

/// Data handling of an origin profile.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct OriginData {
    #[serde(default)]
    pub allow_external_sharing: bool,
    #[serde(default)]
    pub redact_before_send: bool,
    #[serde(default)]
    pub block_sensitive_outputs: bool,
}

/// Budgets of an origin profile.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct OriginBudgets {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_calls: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell_commands: Option<u64>,
}

/// Cross-origin rules of a profile.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct OriginBridge {
    #[serde(default)]
    pub allow_cross_origin: bool,
    #[serde(default)]
    pub allowed_targets: Vec<BridgeTarget>,
    #[serde(default)]
    pub require_approval: bool,
}

/// A space a bridge may reach.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct BridgeTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub space_type: Option<SpaceType>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility: Option<Visibility>,
}

/// Detection thresholds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Detection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_injection: Option<PromptInjection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jailbreak: Option<Jailbreak>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threat_intel: Option<ThreatIntel>,
}

/// Levels of a prompt-injection finding, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum DetectionLevel {
    Safe,
    Suspicious,
    High,
    Critical,
}

/// Prompt-injection detection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct PromptInjection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn_at_or_above: Option<DetectionLevel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_at_or_above: Option<DetectionLevel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_scan_bytes: Option<u64>,
}

/// Jailbreak detection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Jailbreak {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_threshold: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn_threshold: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_input_bytes: Option<u64>,
}

/// Threat-intelligence matching.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct ThreatIntel {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern_db: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub similarity_threshold: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u64>,
}

/// Governance metadata.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Metadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classification: Option<Classification>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_ticket: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle_state: Option<LifecycleState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry_date: Option<String>,
}

/// Data classification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum Classification {
    Public,
    Internal,
    Confidential,
    Restricted,
}

/// Where a policy is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum LifecycleState {
    Draft,
    Review,
    Approved,
    Deployed,
    Deprecated,
    Archived,
}
