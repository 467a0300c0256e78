//! The decision kernel: what tollgate decides about one tool call, with no I/O.
//!
//! [`Kernel::decide`] takes one call and answers with a [`Decision`], in this order,
//! failing closed at every step:
//!
//! 1. **Capability**: a caller with a scope may only call the tools it names.
//! 2. **Arguments**: one JSON object, unique keys, within size and depth limits
//!    ([`normalize`]).
//! 3. **Policy**: the tool name against `tool_access`; every string of the
//!    arguments, normalised and decoded, against `shell_commands`, the secret
//!    detectors ([`secrets`]), egress ([`egress`]; internal addresses refused unless
//!    the policy names them) and the path rules. All results are combined with
//!    deny > warn > allow.
//! 4. **Approval**: a `warn` becomes a pending approval request, or the approved
//!    request it uses ([`approvals`]).
//! 5. **Velocity**: a call about to be allowed is counted against the policy's rate
//!    limit ([`velocity`]).
//!
//! A [`Decision`] can only be made here. It says what was decided, a stable reason
//! code, the rule that matched, a message written for the model, the policy hash,
//! the arguments with every secret replaced by a marker and its SHA-256, the
//! SHA-256 of the canonical original arguments, and the trace of every check.

pub mod approvals;
pub mod capability;
pub mod egress;
pub mod normalize;
pub mod policy;
pub mod secrets;
pub mod token;
pub mod velocity;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use sha2::{Digest, Sha256};

use capability::Scope;
use normalize::{Limits, Via};
use policy::evaluate::combine;
use policy::{Action, Evaluation, Policy, Verdict};
use secrets::Finding;

/// How long an approval request waits for an operator.
pub const APPROVAL_TTL: Duration = Duration::from_secs(15 * 60);

/// What was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The call may run.
    Allow,
    /// The call must not run.
    Deny,
    /// The call waits for a human's approval.
    Pending,
}

impl Outcome {
    /// `allow`, `deny` or `pending`, as receipts write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Pending => "pending",
        }
    }
}

/// One check the kernel made, for explanations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceStep {
    /// What was checked (`capability`, `tool_access`, `egress $.url`, ...).
    pub check: String,
    /// What it found.
    pub outcome: String,
}

/// The kernel's answer about one call. Only the kernel makes these.
#[derive(Debug, Clone)]
pub struct Decision {
    outcome: Outcome,
    code: String,
    matched_rule: Option<String>,
    message: String,
    policy_hash: String,
    approval_id: Option<String>,
    parameters: Value,
    parameters_hash: String,
    secrets: Vec<(String, String)>,
    trace: Vec<TraceStep>,
}

impl Decision {
    /// What was decided.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }
    /// The stable reason code (`tool_access.block`, `egress.private_address`, ...).
    pub fn code(&self) -> &str {
        &self.code
    }
    /// The rule that decided, as a path into the policy.
    pub fn matched_rule(&self) -> Option<&str> {
        self.matched_rule.as_deref()
    }
    /// What the model is told: what was refused and what it can do instead.
    pub fn message(&self) -> &str {
        &self.message
    }
    /// The hash of the policy that decided.
    pub fn policy_hash(&self) -> &str {
        &self.policy_hash
    }
    /// The approval request involved, if any.
    pub fn approval_id(&self) -> Option<&str> {
        self.approval_id.as_deref()
    }
    /// The arguments with every detected secret replaced by its marker.
    pub fn parameters(&self) -> &Value {
        &self.parameters
    }
    /// SHA-256 (hex) of the RFC 8785 form of the original arguments.
    pub fn parameters_hash(&self) -> &str {
        &self.parameters_hash
    }
    /// Secrets found: `(detector, sha256)`; never the secret itself.
    pub fn secrets(&self) -> &[(String, String)] {
        &self.secrets
    }
    /// Every check made, in order.
    pub fn trace(&self) -> &[TraceStep] {
        &self.trace
    }
}

/// One call to decide.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The agent making it.
    pub agent_id: &'a str,
    /// The caller's capability; `None` when the caller is not restricted by one.
    pub scope: Option<&'a Scope>,
    /// The tool's name, exactly as the model wrote it.
    pub tool: &'a str,
    /// The arguments as the model wrote them (a JSON string).
    pub arguments: &'a str,
    /// Whether the tool changes things (paths then count as writes).
    pub has_side_effects: bool,
}

/// The clock readings a decision uses.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Wall time, for approval expiry.
    pub wall: SystemTime,
    /// Monotonic time, for velocity windows.
    pub mono: Instant,
}

impl Now {
    /// The current time.
    pub fn current() -> Self {
        Self {
            wall: SystemTime::now(),
            mono: Instant::now(),
        }
    }
}

/// The kernel: a policy and the state decisions need (velocity counts and
/// approval requests).
#[derive(Debug)]
pub struct Kernel {
    policy: Policy,
    limits: Limits,
    velocity: Arc<velocity::Velocity>,
    approvals: Arc<approvals::Approvals>,
}

/// A result found while checking, before the approval and velocity steps.
struct Check {
    evaluation: Evaluation,
    code: String,
}

impl Kernel {
    /// A kernel deciding with `policy`.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            limits: Limits::default(),
            velocity: Arc::default(),
            approvals: Arc::new(approvals::Approvals::new(APPROVAL_TTL)),
        }
    }

    /// A kernel deciding with another policy that keeps this one's state: velocity
    /// counts and approval requests (which stay bound to the policy that asked for
    /// them, so a changed policy needs new approvals).
    pub fn with_policy(&self, policy: Policy) -> Self {
        Self {
            policy,
            limits: self.limits,
            velocity: self.velocity.clone(),
            approvals: self.approvals.clone(),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The approval requests.
    pub fn approvals(&self) -> &approvals::Approvals {
        &self.approvals
    }

    /// Decides one call.
    pub fn decide(&self, call: &Call<'_>, now: Now) -> Decision {
        let mut trace = Vec::new();
        let policy_hash = self.policy.hash().to_owned();
        // Refusals before the arguments are understood: nothing to redact, and the
        // hash is over the text as the model wrote it.
        let deny = |code: &str, message: String, trace: Vec<TraceStep>| Decision {
            outcome: Outcome::Deny,
            code: code.to_owned(),
            matched_rule: None,
            message,
            policy_hash: policy_hash.clone(),
            approval_id: None,
            parameters: Value::Null,
            parameters_hash: hash_text(call.arguments),
            secrets: Vec::new(),
            trace,
        };

        // 1. Capability.
        if let Some(scope) = call.scope {
            let allowed = scope.allows(call.tool);
            trace.push(step(
                "capability",
                if allowed {
                    "in scope"
                } else {
                    "outside the scope"
                },
            ));
            if !allowed {
                return deny(
                    "capability",
                    format!(
                        "The tool `{}` is not part of this agent's capability, so the call was not made. Use only the tools you were given; if this one is needed, the user must grant it.",
                        call.tool
                    ),
                    trace,
                );
            }
        }

        // 2. Arguments.
        let args = match normalize::parse(call.arguments, &self.limits) {
            Ok(args) => args,
            Err(error) => {
                trace.push(step("arguments", &error.to_string()));
                return deny(
                    error.code(),
                    format!(
                        "The call was not made: {error}. Send the arguments again as one JSON object with each key once."
                    ),
                    trace,
                );
            }
        };
        trace.push(step(
            "arguments",
            &format!(
                "{} bytes, {} strings scanned",
                args.size,
                args.strings.len()
            ),
        ));
        let parameters_hash = match serde_jcs::to_vec(&args.value) {
            Ok(bytes) => hex::encode(Sha256::digest(&bytes)),
            Err(e) => {
                return deny(
                    "guard_error",
                    format!(
                        "The call was not made because its arguments could not be checked ({e})."
                    ),
                    trace,
                );
            }
        };

        // 3. Policy.
        let mut found: Vec<Check> = Vec::new();
        let mut secret_hits: Vec<Finding> = Vec::new();
        let mut tool_action = Action::new("tool_call", call.tool);
        tool_action.args_size = Some(args.size as u64);
        let tool_eval = self.policy.evaluate(&tool_action);
        trace.push(step("tool_access", &describe(&tool_eval)));
        found.push(from_eval(tool_eval));

        let scan_secrets = self
            .policy
            .document()
            .rules
            .as_ref()
            .and_then(|r| r.secret_patterns.as_ref())
            .is_some_and(|b| b.enabled);
        for scanned in &args.strings {
            let text = &scanned.text;
            if let Some(e) = self.policy.shell_command(text) {
                trace.push(step(
                    &format!("shell_commands {}", scanned.path),
                    &describe(&e),
                ));
                found.push(from_eval(e));
            }
            if scan_secrets {
                let hit = self
                    .policy
                    .secret_in(text)
                    .and_then(|e| {
                        let name = e
                            .matched_rule
                            .as_deref()?
                            .strip_prefix("rules.secret_patterns.patterns.")?
                            .to_owned();
                        let m = self.policy_secret_match(&name, text)?;
                        Some(secrets::finding(&name, &m, &scanned.path, true))
                    })
                    .or_else(|| secrets::builtin_in(text, &scanned.path));
                if let Some(hit) = hit {
                    trace.push(step(
                        &format!("secrets {}", scanned.path),
                        &format!("deny: {} (sha256 {})", hit.detector, hit.sha256),
                    ));
                    let rule = if hit.from_policy {
                        format!("rules.secret_patterns.patterns.{}", hit.detector)
                    } else {
                        "rules.secret_patterns".to_owned()
                    };
                    found.push(Check {
                        evaluation: Evaluation {
                            verdict: Verdict::Deny,
                            matched_rule: Some(rule),
                            reason: format!("the arguments hold a credential ({})", hit.detector),
                        },
                        code: format!("secret_patterns.{}", hit.detector),
                    });
                    secret_hits.push(hit);
                }
            }
            if scanned.via != Via::Key {
                for dest in egress::destinations(text) {
                    let check = format!("egress {} {}", scanned.path, dest.host);
                    if let Some(f) = self.egress_finding(&dest) {
                        trace.push(step(&check, &describe(&f.evaluation)));
                        found.push(f);
                    }
                }
                for (path, action_kind) in path_candidates(text, call.has_side_effects) {
                    let e = self
                        .policy
                        .evaluate(&Action::new(action_kind, path.clone()));
                    if e.matched_rule.is_some() {
                        trace.push(step(&format!("{action_kind} {path}"), &describe(&e)));
                        found.push(from_eval(e));
                    }
                }
            }
        }
        let parameters = if secret_hits.is_empty() {
            args.value.clone()
        } else {
            secrets::redact(&args.value, &secret_hits)
        };
        let secrets_out: Vec<(String, String)> = secret_hits
            .iter()
            .map(|h| (h.detector.clone(), h.sha256.clone()))
            .collect();

        let decided = pick(found);
        let make = |outcome: Outcome,
                    code: String,
                    rule: Option<String>,
                    message: String,
                    approval: Option<String>,
                    trace: Vec<TraceStep>| Decision {
            outcome,
            code,
            matched_rule: rule,
            message,
            policy_hash: policy_hash.clone(),
            approval_id: approval,
            parameters: parameters.clone(),
            parameters_hash: parameters_hash.clone(),
            secrets: secrets_out.clone(),
            trace,
        };
        let (verdict, code, rule, reason) = match decided {
            Some(f) => (
                f.evaluation.verdict,
                f.code,
                f.evaluation.matched_rule,
                f.evaluation.reason,
            ),
            None => (
                Verdict::Allow,
                "allow".to_owned(),
                None,
                "no rule refuses it".to_owned(),
            ),
        };
        if verdict == Verdict::Deny {
            let message = model_message(&code, call.tool, &reason);
            return make(Outcome::Deny, code, rule, message, None, trace);
        }

        // 4. Approval.
        let mut approval_id = None;
        let mut code = code;
        if verdict == Verdict::Warn {
            let binding = approvals::Binding {
                agent_id: call.agent_id.to_owned(),
                tool: call.tool.to_owned(),
                arguments_hash: parameters_hash.clone(),
                policy_hash: policy_hash.clone(),
            };
            match self.approvals.check(&binding, now.wall) {
                approvals::Verdict::Granted(id) => {
                    trace.push(step("approval", &format!("granted by {id}")));
                    approval_id = Some(id);
                    code = "approval_granted".to_owned();
                }
                approvals::Verdict::Pending(id) => {
                    trace.push(step("approval", &format!("pending {id}")));
                    let message = format!(
                        "The call to `{}` needs a human's approval and has not run. Approval request {id} is waiting. Tell the user the call is waiting for approval, or carry on without it; if it is approved, make exactly the same call again.",
                        call.tool
                    );
                    return make(
                        Outcome::Pending,
                        "approval_pending".to_owned(),
                        rule,
                        message,
                        Some(id),
                        trace,
                    );
                }
                approvals::Verdict::Rejected(id) => {
                    trace.push(step("approval", &format!("rejected {id}")));
                    let message = format!(
                        "An operator refused the call to `{}` with these arguments (approval request {id}). Do not make it again; find another way or ask the user.",
                        call.tool
                    );
                    return make(
                        Outcome::Deny,
                        "approval_rejected".to_owned(),
                        rule,
                        message,
                        Some(id),
                        trace,
                    );
                }
            }
        }

        // 5. Velocity.
        if let Some(limit) = self.policy.velocity() {
            let key = if limit.per_tool {
                format!("{}\u{0}{}", call.agent_id, call.tool)
            } else {
                call.agent_id.to_owned()
            };
            let window = Duration::from_secs(limit.window_seconds);
            match self
                .velocity
                .admit(&key, limit.max_invocations, window, now.mono)
            {
                Ok(()) => trace.push(step("velocity", "within the limit")),
                Err(exceeded) => {
                    trace.push(step("velocity", "limit reached"));
                    let message = format!(
                        "This agent has made {} calls in {} seconds, the most the policy allows. Wait {} seconds before calling `{}` again.",
                        limit.max_invocations,
                        limit.window_seconds,
                        exceeded.retry_after.as_secs().max(1),
                        call.tool
                    );
                    return make(
                        Outcome::Deny,
                        "velocity".to_owned(),
                        Some("rules.velocity".to_owned()),
                        message,
                        approval_id,
                        trace,
                    );
                }
            }
        }
        let message = format!("The call to `{}` is allowed: {reason}.", call.tool);
        make(Outcome::Allow, code, rule, message, approval_id, trace)
    }

    fn policy_secret_match(&self, name: &str, text: &str) -> Option<String> {
        self.policy
            .secret_pattern(name)
            .and_then(|re| re.find(text))
            .map(|m| m.as_str().to_owned())
    }

    fn egress_finding(&self, dest: &egress::Destination) -> Option<Check> {
        let deny = |code: &str, reason: String| Check {
            evaluation: Evaluation {
                verdict: Verdict::Deny,
                matched_rule: None,
                reason,
            },
            code: code.to_owned(),
        };
        match &dest.problem {
            // The URL itself is never repeated: it may carry credentials.
            Some(egress::UrlProblem::Scheme(scheme)) => {
                return Some(deny(
                    "egress.scheme",
                    format!("a URL uses the {scheme} scheme; only http and https are allowed"),
                ));
            }
            Some(egress::UrlProblem::UserInfo) => {
                return Some(deny(
                    "egress.userinfo",
                    format!("a URL to {} carries a user name or password", dest.host),
                ));
            }
            None => {}
        }
        if dest.class.is_internal() && !self.policy.egress_names(&dest.host) {
            return Some(deny(
                "egress.private_address",
                format!("{} is a {}", dest.host, dest.class.describe()),
            ));
        }
        self.policy.egress(&dest.host).map(from_eval)
    }
}

fn step(check: &str, outcome: &str) -> TraceStep {
    TraceStep {
        check: check.to_owned(),
        outcome: outcome.to_owned(),
    }
}

fn describe(e: &Evaluation) -> String {
    match &e.matched_rule {
        Some(rule) => format!("{} by {rule}: {}", e.verdict.as_str(), e.reason),
        None => format!("{}: {}", e.verdict.as_str(), e.reason),
    }
}

fn from_eval(evaluation: Evaluation) -> Check {
    let code = match &evaluation.matched_rule {
        Some(rule) => rule.strip_prefix("rules.").unwrap_or(rule).to_owned(),
        None if evaluation.verdict == Verdict::Allow => "allow".to_owned(),
        None => "policy".to_owned(),
    };
    Check { evaluation, code }
}

/// The heaviest finding; among equals the first, preferring one that names a rule.
fn pick(found: Vec<Check>) -> Option<Check> {
    let winner = combine(found.iter().map(|f| f.evaluation.clone()));
    found.into_iter().find(|f| f.evaluation == winner)
}

fn hash_text(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Strings that name files: absolute, home-relative, explicitly relative, Windows
/// drive paths, and slash-separated names without spaces or a scheme. Each is
/// given as written and, when different, with `.` and `..` resolved.
fn path_candidates(text: &str, write: bool) -> Vec<(String, &'static str)> {
    let kind = if write { "file_write" } else { "file_read" };
    let t = text.trim();
    let looks_like_path = t.starts_with('/')
        || t.starts_with("~/")
        || t.starts_with("./")
        || t.starts_with("../")
        || (t.len() > 2
            && t.as_bytes()[1] == b':'
            && (t.as_bytes()[2] == b'\\' || t.as_bytes()[2] == b'/'))
        || (t.contains('/') && !t.contains(char::is_whitespace) && !t.contains("://"));
    if !looks_like_path || t.contains('\n') {
        return Vec::new();
    }
    let unified = t.replace('\\', "/");
    let mut out = vec![(t.to_owned(), kind)];
    let resolved = resolve_dots(&unified);
    if resolved != t {
        out.push((resolved, kind));
    }
    out
}

fn resolve_dots(path: &str) -> String {
    let absolute = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    if absolute {
        format!("/{joined}")
    } else {
        joined
    }
}

/// The message the model receives for a refusal.
fn model_message(code: &str, tool: &str, reason: &str) -> String {
    let advice = if code.starts_with("tool_access") {
        "Do not call this tool again; use another tool or ask the user for help."
    } else if code.starts_with("shell_commands") {
        "Use a command that does not match this pattern, or ask the user to run it."
    } else if code.starts_with("egress") {
        "Use a public host that the policy allows, without user names or passwords in the URL."
    } else if code.starts_with("secret_patterns") {
        "Never send credentials in tool arguments; remove the secret and try again."
    } else if code.starts_with("forbidden_paths") || code.starts_with("path_allowlist") {
        "Use a path the policy allows."
    } else {
        "Change the call so that the policy allows it, or ask the user."
    };
    format!("The call to `{tool}` was refused by policy ({code}): {reason}. {advice}")
}
