//! Evaluating one HushSpec action against a compiled policy.
//!
//! Every rule block that applies to the action's type is consulted, and the results
//! are combined with the precedence deny > warn > allow: one deny anywhere denies.
//! Among results of the same weight the first block in the order below wins, and an
//! allow that names a rule beats one that does not. When no block says anything,
//! the action is allowed with no `matched_rule`.
//!
//! | action | blocks, in order |
//! |---|---|
//! | `tool_call` | `tool_access` |
//! | `egress` | `egress` |
//! | `file_read` | `forbidden_paths`, `path_allowlist.read` |
//! | `file_write` | `forbidden_paths`, `path_allowlist.write`, `secret_patterns` |
//! | `patch_apply` | `forbidden_paths`, `path_allowlist.patch`, `patch_integrity` |
//! | `shell_command` | `shell_commands` |
//! | `computer_use` | `computer_use` |
//!
//! Differences from the reference implementation, all towards refusing: results are
//! combined rather than the first one taken (so a path exception does not skip the
//! secret scan), tool names match exactly (a look-alike is another tool), a
//! non-empty `tool_access.allow` refuses unlisted tools even with `default: allow`
//! (the specification's allowlist mode), and an action type the engine does not
//! know is denied.

use serde::{Deserialize, Serialize};

use super::Policy;
use super::model::{ComputerUseMode, DefaultAction};

/// A decision, ordered by weight: `Deny` > `Warn` > `Allow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Go ahead.
    Allow,
    /// Only with a human's confirmation.
    Warn,
    /// Refused.
    Deny,
}

impl Verdict {
    /// `allow`, `warn` or `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Warn => "warn",
            Self::Deny => "deny",
        }
    }
}

/// What an agent tries to do, in HushSpec's terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// `tool_call`, `egress`, `file_read`, `file_write`, `patch_apply`,
    /// `shell_command` or `computer_use`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Tool name, host, path, command or action id.
    #[serde(default)]
    pub target: String,
    /// File or patch text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Size of the serialised arguments, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args_size: Option<u64>,
}

impl Action {
    /// An action of `kind` on `target`.
    pub fn new(kind: &str, target: impl Into<String>) -> Self {
        Self {
            kind: kind.to_owned(),
            target: target.into(),
            content: None,
            args_size: None,
        }
    }
}

/// The outcome of evaluating one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// The decision.
    pub verdict: Verdict,
    /// The rule that decided, as a path into the document
    /// (`rules.tool_access.block`, `rules.shell_commands.forbidden_patterns[0]`).
    pub matched_rule: Option<String>,
    /// Why, in words.
    pub reason: String,
}

fn result(
    verdict: Verdict,
    rule: impl Into<String>,
    reason: impl Into<String>,
) -> Option<Evaluation> {
    Some(Evaluation {
        verdict,
        matched_rule: Some(rule.into()),
        reason: reason.into(),
    })
}

impl Policy {
    /// Evaluates `action`, combining every applicable block.
    pub fn evaluate(&self, action: &Action) -> Evaluation {
        let candidates: Vec<Option<Evaluation>> = match action.kind.as_str() {
            "tool_call" => vec![self.tool_access(action)],
            "egress" => vec![self.egress(&action.target)],
            "file_read" => vec![
                self.forbidden_paths(&action.target),
                self.path_allowlist(action, "read"),
            ],
            "file_write" => vec![
                self.forbidden_paths(&action.target),
                self.path_allowlist(action, "write"),
                self.secrets_in_content(action),
            ],
            "patch_apply" => vec![
                self.forbidden_paths(&action.target),
                self.path_allowlist(action, "patch"),
                self.patch_integrity(action),
            ],
            "shell_command" => vec![self.shell_command(&action.target)],
            "computer_use" => vec![self.computer_use(&action.target)],
            other => vec![Some(Evaluation {
                verdict: Verdict::Deny,
                matched_rule: None,
                reason: format!("unknown action type {other:?}"),
            })],
        };
        combine(candidates.into_iter().flatten())
    }

    fn tool_access(&self, action: &Action) -> Option<Evaluation> {
        let rule = self.rules.tool_access.as_ref()?;
        let name = action.target.as_str();
        if let Some(max) = rule.max_args_size
            && action.args_size.unwrap_or(0) > max
        {
            return result(
                Verdict::Deny,
                "rules.tool_access.max_args_size",
                format!("the arguments are larger than {max} bytes"),
            );
        }
        let listed = |list: &[String]| list.iter().any(|n| n == name);
        if listed(&rule.block) {
            return result(
                Verdict::Deny,
                "rules.tool_access.block",
                format!("tool {name:?} is blocked"),
            );
        }
        if listed(&rule.require_confirmation) {
            return result(
                Verdict::Warn,
                "rules.tool_access.require_confirmation",
                format!("tool {name:?} needs a human's approval"),
            );
        }
        if listed(&rule.allow) {
            return result(
                Verdict::Allow,
                "rules.tool_access.allow",
                format!("tool {name:?} is allowed"),
            );
        }
        match rule.default {
            DefaultAction::Block => result(
                Verdict::Deny,
                "rules.tool_access.default",
                format!("tool {name:?} is not allowed by this policy"),
            ),
            DefaultAction::Allow if !rule.allow.is_empty() => result(
                Verdict::Deny,
                "rules.tool_access.allow",
                format!("tool {name:?} is not in the policy's list of allowed tools"),
            ),
            DefaultAction::Allow => result(
                Verdict::Allow,
                "rules.tool_access.default",
                format!("tool {name:?} is allowed by default"),
            ),
        }
    }

    /// Evaluates one destination host (already normalised: lowercase, no trailing
    /// dot).
    pub fn egress(&self, host: &str) -> Option<Evaluation> {
        let rule = self.rules.egress.as_ref()?;
        let lowered = host.trim().to_ascii_lowercase();
        let host = lowered.strip_suffix('.').unwrap_or(&lowered);
        if rule.block.matches(host) {
            return result(
                Verdict::Deny,
                "rules.egress.block",
                format!("host {host} is blocked"),
            );
        }
        if rule.allow.matches(host) {
            return result(
                Verdict::Allow,
                "rules.egress.allow",
                format!("host {host} is allowed"),
            );
        }
        match rule.default {
            DefaultAction::Allow => result(
                Verdict::Allow,
                "rules.egress.default",
                format!("host {host} is allowed by default"),
            ),
            DefaultAction::Block => result(
                Verdict::Deny,
                "rules.egress.default",
                format!("host {host} is not in the policy's list of allowed hosts"),
            ),
        }
    }

    fn forbidden_paths(&self, path: &str) -> Option<Evaluation> {
        let rule = self.rules.forbidden_paths.as_ref()?;
        if rule.exceptions.matches(path) {
            return result(
                Verdict::Allow,
                "rules.forbidden_paths.exceptions",
                format!("path {path} is an exception"),
            );
        }
        if rule.patterns.matches(path) {
            return result(
                Verdict::Deny,
                "rules.forbidden_paths.patterns",
                format!("path {path} is forbidden"),
            );
        }
        None
    }

    fn path_allowlist(&self, action: &Action, list: &str) -> Option<Evaluation> {
        let rule = self.rules.path_allowlist.as_ref()?;
        let globs = match list {
            "read" => &rule.read,
            "patch" if !rule.patch.is_empty() => &rule.patch,
            _ => &rule.write,
        };
        let path = &action.target;
        if globs.matches(path) {
            result(
                Verdict::Allow,
                "rules.path_allowlist",
                format!("path {path} is in the allowlist"),
            )
        } else {
            result(
                Verdict::Deny,
                "rules.path_allowlist",
                format!("path {path} is not in the allowlist"),
            )
        }
    }

    fn secrets_in_content(&self, action: &Action) -> Option<Evaluation> {
        let rule = self.rules.secret_patterns.as_ref()?;
        if rule.skip_paths.matches(&action.target) {
            return result(
                Verdict::Allow,
                "rules.secret_patterns.skip_paths",
                format!("path {} is not scanned for secrets", action.target),
            );
        }
        self.secret_in(action.content.as_deref().unwrap_or(""))
    }

    /// The first of the policy's own secret patterns found in `text`.
    pub fn secret_in(&self, text: &str) -> Option<Evaluation> {
        let rule = self.rules.secret_patterns.as_ref()?;
        // Every severity refuses: a secret on its way out is never a warning.
        let hit = rule.patterns.iter().find(|p| p.regex.is_match(text))?;
        result(
            Verdict::Deny,
            format!("rules.secret_patterns.patterns.{}", hit.name),
            format!("the content holds a secret ({})", hit.name),
        )
    }

    fn patch_integrity(&self, action: &Action) -> Option<Evaluation> {
        let rule = self.rules.patch_integrity.as_ref()?;
        let content = action.content.as_deref().unwrap_or("");
        if let Some(i) = rule.forbidden.iter().position(|r| r.is_match(content)) {
            return result(
                Verdict::Deny,
                format!("rules.patch_integrity.forbidden_patterns[{i}]"),
                "the patch holds a forbidden pattern",
            );
        }
        let (mut additions, mut deletions) = (0u64, 0u64);
        for line in content.lines() {
            if line.starts_with("+++") || line.starts_with("---") {
                continue;
            }
            if line.starts_with('+') {
                additions += 1;
            } else if line.starts_with('-') {
                deletions += 1;
            }
        }
        let limits = &rule.limits;
        if additions > limits.max_additions {
            return result(
                Verdict::Deny,
                "rules.patch_integrity.max_additions",
                format!(
                    "the patch adds {additions} lines, more than {}",
                    limits.max_additions
                ),
            );
        }
        if deletions > limits.max_deletions {
            return result(
                Verdict::Deny,
                "rules.patch_integrity.max_deletions",
                format!(
                    "the patch deletes {deletions} lines, more than {}",
                    limits.max_deletions
                ),
            );
        }
        if limits.require_balance {
            let (big, small) = (
                additions.max(deletions) as f64,
                additions.min(deletions) as f64,
            );
            let ratio = if small == 0.0 { big } else { big / small };
            if ratio > limits.max_imbalance_ratio {
                return result(
                    Verdict::Deny,
                    "rules.patch_integrity.max_imbalance_ratio",
                    format!("the patch's additions and deletions are out of balance ({ratio:.1})"),
                );
            }
        }
        None
    }

    /// Evaluates one shell command line (or any string checked as one).
    pub fn shell_command(&self, command: &str) -> Option<Evaluation> {
        let patterns = self.rules.shell_commands.as_ref()?;
        let i = patterns.iter().position(|r| r.is_match(command))?;
        result(
            Verdict::Deny,
            format!("rules.shell_commands.forbidden_patterns[{i}]"),
            "the command matches a forbidden pattern",
        )
    }

    fn computer_use(&self, action_id: &str) -> Option<Evaluation> {
        let rule = self.rules.computer_use.as_ref()?;
        if rule.allowed_actions.iter().any(|a| a == action_id) {
            return result(
                Verdict::Allow,
                "rules.computer_use.allowed_actions",
                format!("action {action_id} is allowed"),
            );
        }
        let (verdict, what) = match rule.mode {
            ComputerUseMode::Observe => (Verdict::Allow, "is only observed"),
            ComputerUseMode::Guardrail => (Verdict::Warn, "needs a human's approval"),
            ComputerUseMode::FailClosed => (Verdict::Deny, "is not allowed"),
        };
        result(
            verdict,
            "rules.computer_use.mode",
            format!("unlisted action {action_id} {what}"),
        )
    }
}

/// Combines block results: the heaviest verdict; among equals the first, preferring
/// one that names a rule.
pub fn combine(results: impl Iterator<Item = Evaluation>) -> Evaluation {
    let mut best: Option<Evaluation> = None;
    for candidate in results {
        let better = match &best {
            None => true,
            Some(b) => {
                candidate.verdict > b.verdict
                    || (candidate.verdict == b.verdict
                        && b.matched_rule.is_none()
                        && candidate.matched_rule.is_some())
            }
        };
        if better {
            best = Some(candidate);
        }
    }
    best.unwrap_or_else(|| Evaluation {
        verdict: Verdict::Allow,
        matched_rule: None,
        reason: "no rule applies".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rules: &str) -> Policy {
        Policy::from_text(&format!("hushspec: \"0.1.0\"\nrules:\n{rules}"), "t").unwrap()
    }

    #[test]
    fn tool_names_match_byte_for_byte() {
        let p = policy("  tool_access:\n    allow: [read_file]\n    default: block\n");
        assert_eq!(
            p.evaluate(&Action::new("tool_call", "read_file")).verdict,
            Verdict::Allow
        );
        // Cyrillic "е", a trailing space, another case: different tools.
        for lookalike in ["rеad_file", "read_file ", "Read_File", "read_file\u{200b}"] {
            let e = p.evaluate(&Action::new("tool_call", lookalike));
            assert_eq!(e.verdict, Verdict::Deny, "{lookalike:?}");
            assert_eq!(e.matched_rule.as_deref(), Some("rules.tool_access.default"));
        }
    }

    #[test]
    fn a_non_empty_allow_list_refuses_unlisted_tools_even_with_default_allow() {
        let p = policy("  tool_access:\n    allow: [search]\n    default: allow\n");
        let e = p.evaluate(&Action::new("tool_call", "deploy"));
        assert_eq!(e.verdict, Verdict::Deny);
        assert_eq!(e.matched_rule.as_deref(), Some("rules.tool_access.allow"));
        let open = policy("  tool_access:\n    default: allow\n");
        assert_eq!(
            open.evaluate(&Action::new("tool_call", "deploy")).verdict,
            Verdict::Allow
        );
    }

    #[test]
    fn max_args_size_is_checked_first() {
        let p = policy("  tool_access:\n    allow: [search]\n    max_args_size: 10\n");
        let mut a = Action::new("tool_call", "search");
        a.args_size = Some(11);
        let e = p.evaluate(&a);
        assert_eq!(
            (e.verdict, e.matched_rule.as_deref()),
            (Verdict::Deny, Some("rules.tool_access.max_args_size"))
        );
        a.args_size = Some(10);
        assert_eq!(p.evaluate(&a).verdict, Verdict::Allow);
    }

    #[test]
    fn a_path_exception_does_not_skip_the_secret_scan() {
        let p = policy(
            "  forbidden_paths:\n    patterns: ['**/.ssh/**']\n    exceptions: ['**/.ssh/config']\n  secret_patterns:\n    patterns:\n      - {name: aws, pattern: 'AKIA[0-9A-Z]{16}', severity: warn}\n",
        );
        let mut a = Action::new("file_write", "/home/u/.ssh/config");
        a.content = Some("key AKIAABCDEFGHIJKLMNOP".into());
        let e = p.evaluate(&a);
        assert_eq!(e.verdict, Verdict::Deny);
        assert_eq!(
            e.matched_rule.as_deref(),
            Some("rules.secret_patterns.patterns.aws")
        );
        a.content = Some("Host x".into());
        let e = p.evaluate(&a);
        assert_eq!(
            (e.verdict, e.matched_rule.as_deref()),
            (Verdict::Allow, Some("rules.forbidden_paths.exceptions"))
        );
    }

    #[test]
    fn disabled_blocks_say_nothing_and_unknown_actions_are_denied() {
        let p = policy("  shell_commands:\n    enabled: false\n    forbidden_patterns: ['rm']\n");
        let e = p.evaluate(&Action::new("shell_command", "rm -rf /"));
        assert_eq!((e.verdict, e.matched_rule), (Verdict::Allow, None));
        assert_eq!(
            p.evaluate(&Action::new("teleport", "x")).verdict,
            Verdict::Deny
        );
    }

    #[test]
    fn patch_limits_and_balance() {
        let p = policy(
            "  patch_integrity:\n    max_additions: 3\n    require_balance: true\n    max_imbalance_ratio: 2.0\n",
        );
        let mut a = Action::new("patch_apply", "src/x.rs");
        a.content = Some("--- a\n+++ b\n+1\n+2\n+3\n+4\n".into());
        assert_eq!(
            p.evaluate(&a).matched_rule.as_deref(),
            Some("rules.patch_integrity.max_additions")
        );
        a.content = Some("+one\n+two\n-gone\n".into());
        assert_eq!(p.evaluate(&a).verdict, Verdict::Allow);
        // With nothing deleted, the ratio is the number of additions.
        a.content = Some("+one\n+two\n+three\n".into());
        assert_eq!(
            p.evaluate(&a).matched_rule.as_deref(),
            Some("rules.patch_integrity.max_imbalance_ratio")
        );
    }

    #[test]
    fn computer_use_modes() {
        for (mode, verdict) in [
            ("observe", Verdict::Allow),
            ("guardrail", Verdict::Warn),
            ("fail_closed", Verdict::Deny),
        ] {
            let p = policy(&format!(
                "  computer_use:\n    enabled: true\n    mode: {mode}\n    allowed_actions: [click]\n"
            ));
            assert_eq!(
                p.evaluate(&Action::new("computer_use", "click")).verdict,
                Verdict::Allow
            );
            assert_eq!(
                p.evaluate(&Action::new("computer_use", "type")).verdict,
                verdict,
                "{mode}"
            );
        }
    }
}
