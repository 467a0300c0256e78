//! Validation: a parsed (and resolved) [`Document`] becomes a [`Policy`], with
//! every regex and glob compiled and every value checked, or the first problem is
//! reported with the path of the field at fault.

use std::collections::HashSet;

use regex::Regex;

use super::glob::{HostPatterns, PathGlobs};
use super::model::{
    ComputerUse, DefaultAction, Document, Extensions, PatchIntegrity, ToolAccess, Velocity,
};
use super::{Policy, PolicyError};

/// The versions of HushSpec this engine evaluates.
pub const SUPPORTED_VERSIONS: [&str; 1] = ["0.1.0"];

/// `forbidden_paths`, compiled.
#[derive(Debug, Clone)]
pub struct ForbiddenPathsRule {
    pub(crate) patterns: PathGlobs,
    pub(crate) exceptions: PathGlobs,
}

/// `path_allowlist`, compiled.
#[derive(Debug, Clone)]
pub struct PathAllowlistRule {
    pub(crate) read: PathGlobs,
    pub(crate) write: PathGlobs,
    pub(crate) patch: PathGlobs,
}

/// `egress`, compiled.
#[derive(Debug, Clone)]
pub struct EgressRule {
    pub(crate) allow: HostPatterns,
    pub(crate) block: HostPatterns,
    pub(crate) default: DefaultAction,
}

/// One compiled secret pattern.
#[derive(Debug, Clone)]
pub struct SecretRule {
    pub(crate) name: String,
    pub(crate) regex: Regex,
}

/// `secret_patterns`, compiled.
#[derive(Debug, Clone)]
pub struct SecretPatternsRule {
    pub(crate) patterns: Vec<SecretRule>,
    pub(crate) skip_paths: PathGlobs,
}

/// `patch_integrity`, compiled.
#[derive(Debug, Clone)]
pub struct PatchIntegrityRule {
    pub(crate) limits: PatchIntegrity,
    pub(crate) forbidden: Vec<Regex>,
}

/// Every enabled rule block of a policy, ready to evaluate. A disabled block is
/// `None`, exactly like an absent one.
#[derive(Debug, Clone, Default)]
pub struct CompiledRules {
    pub(crate) forbidden_paths: Option<ForbiddenPathsRule>,
    pub(crate) path_allowlist: Option<PathAllowlistRule>,
    pub(crate) egress: Option<EgressRule>,
    pub(crate) secret_patterns: Option<SecretPatternsRule>,
    pub(crate) patch_integrity: Option<PatchIntegrityRule>,
    pub(crate) shell_commands: Option<Vec<Regex>>,
    pub(crate) tool_access: Option<ToolAccess>,
    pub(crate) computer_use: Option<ComputerUse>,
    pub(crate) velocity: Option<Velocity>,
}

fn invalid(path: impl Into<String>, message: impl Into<String>) -> PolicyError {
    PolicyError::Invalid {
        path: path.into(),
        message: message.into(),
    }
}

fn regexes(path: &str, patterns: &[String]) -> Result<Vec<Regex>, PolicyError> {
    patterns
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Regex::new(p)
                .map_err(|e| invalid(format!("{path}[{i}]"), format!("invalid regex: {e}")))
        })
        .collect()
}

fn globs(path: &str, patterns: &[String]) -> Result<PathGlobs, PolicyError> {
    PathGlobs::new(patterns).map_err(|m| invalid(path, m))
}

/// Checks a resolved document and compiles it.
pub fn compile(document: Document) -> Result<Policy, PolicyError> {
    if !SUPPORTED_VERSIONS.contains(&document.hushspec.as_str()) {
        return Err(invalid(
            "hushspec",
            format!(
                "unsupported version {:?}; this engine evaluates {}",
                document.hushspec,
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    let mut compiled = CompiledRules::default();
    if let Some(rules) = &document.rules {
        if let Some(b) = rules.forbidden_paths.as_ref().filter(|b| b.enabled) {
            compiled.forbidden_paths = Some(ForbiddenPathsRule {
                patterns: globs("rules.forbidden_paths.patterns", &b.patterns)?,
                exceptions: globs("rules.forbidden_paths.exceptions", &b.exceptions)?,
            });
        }
        if let Some(b) = rules.path_allowlist.as_ref().filter(|b| b.enabled) {
            compiled.path_allowlist = Some(PathAllowlistRule {
                read: globs("rules.path_allowlist.read", &b.read)?,
                write: globs("rules.path_allowlist.write", &b.write)?,
                patch: globs("rules.path_allowlist.patch", &b.patch)?,
            });
        }
        if let Some(b) = rules.egress.as_ref().filter(|b| b.enabled) {
            compiled.egress = Some(EgressRule {
                allow: HostPatterns::new(&b.allow).map_err(|m| invalid("rules.egress.allow", m))?,
                block: HostPatterns::new(&b.block).map_err(|m| invalid("rules.egress.block", m))?,
                default: b.default,
            });
        }
        if let Some(b) = &rules.secret_patterns {
            let mut seen = HashSet::new();
            let mut patterns = Vec::new();
            for p in &b.patterns {
                let path = format!("rules.secret_patterns.patterns.{}", p.name);
                if p.name.is_empty() {
                    return Err(invalid(
                        "rules.secret_patterns.patterns",
                        "a pattern has an empty name",
                    ));
                }
                if !seen.insert(p.name.clone()) {
                    return Err(invalid(
                        path,
                        format!("duplicate secret pattern name {:?}", p.name),
                    ));
                }
                let regex = Regex::new(&p.pattern)
                    .map_err(|e| invalid(&path, format!("invalid regex: {e}")))?;
                patterns.push(SecretRule {
                    name: p.name.clone(),
                    regex,
                });
            }
            let skip_paths = globs("rules.secret_patterns.skip_paths", &b.skip_paths)?;
            if b.enabled {
                compiled.secret_patterns = Some(SecretPatternsRule {
                    patterns,
                    skip_paths,
                });
            }
        }
        if let Some(b) = &rules.patch_integrity {
            if !b.max_imbalance_ratio.is_finite() || b.max_imbalance_ratio <= 0.0 {
                return Err(invalid(
                    "rules.patch_integrity.max_imbalance_ratio",
                    "must be a finite number greater than 0",
                ));
            }
            let forbidden = regexes(
                "rules.patch_integrity.forbidden_patterns",
                &b.forbidden_patterns,
            )?;
            if b.enabled {
                compiled.patch_integrity = Some(PatchIntegrityRule {
                    limits: b.clone(),
                    forbidden,
                });
            }
        }
        if let Some(b) = &rules.shell_commands {
            let forbidden = regexes(
                "rules.shell_commands.forbidden_patterns",
                &b.forbidden_patterns,
            )?;
            if b.enabled {
                compiled.shell_commands = Some(forbidden);
            }
        }
        if let Some(b) = &rules.tool_access {
            if b.max_args_size == Some(0) {
                return Err(invalid(
                    "rules.tool_access.max_args_size",
                    "must be at least 1",
                ));
            }
            for (list, names) in [
                ("allow", &b.allow),
                ("block", &b.block),
                ("require_confirmation", &b.require_confirmation),
            ] {
                if let Some(empty) = names.iter().position(String::is_empty) {
                    return Err(invalid(
                        format!("rules.tool_access.{list}[{empty}]"),
                        "empty tool name",
                    ));
                }
            }
            if b.enabled {
                compiled.tool_access = Some(b.clone());
            }
        }
        if let Some(b) = rules.computer_use.as_ref().filter(|b| b.enabled) {
            compiled.computer_use = Some(b.clone());
        }
        if let Some(b) = &rules.browser_automation {
            regexes(
                "rules.browser_automation.extra_credential_patterns",
                &b.extra_credential_patterns,
            )?;
        }
        if let Some(b) = &rules.code_execution
            && b.max_scan_bytes == Some(0)
        {
            return Err(invalid(
                "rules.code_execution.max_scan_bytes",
                "must be at least 1",
            ));
        }
        if let Some(b) = &rules.velocity {
            if b.max_invocations == 0 {
                return Err(invalid(
                    "rules.velocity.max_invocations",
                    "must be at least 1",
                ));
            }
            if b.window_seconds == 0 {
                return Err(invalid(
                    "rules.velocity.window_seconds",
                    "must be at least 1",
                ));
            }
            if b.enabled {
                compiled.velocity = Some(b.clone());
            }
        }
    }
    if let Some(extensions) = &document.extensions {
        check_extensions(extensions)?;
    }
    Policy::new(document, compiled)
}

fn check_extensions(extensions: &Extensions) -> Result<(), PolicyError> {
    let states = extensions.posture.as_ref().map(|p| &p.states);
    if let Some(posture) = &extensions.posture {
        if posture.states.is_empty() {
            return Err(invalid(
                "extensions.posture.states",
                "at least one state is required",
            ));
        }
        if !posture.states.contains_key(&posture.initial) {
            return Err(invalid(
                "extensions.posture.initial",
                format!("{:?} is not a defined state", posture.initial),
            ));
        }
        for (name, state) in &posture.states {
            if let Some((key, _)) = state.budgets.iter().find(|(_, v)| **v < 0) {
                return Err(invalid(
                    format!("extensions.posture.states.{name}.budgets.{key}"),
                    "must not be negative",
                ));
            }
        }
        let after =
            Regex::new(r"^\d+[smhd]$").map_err(|e| invalid("extensions.posture", e.to_string()))?;
        for (i, t) in posture.transitions.iter().enumerate() {
            let path = format!("extensions.posture.transitions[{i}]");
            if t.from != "*" && !posture.states.contains_key(&t.from) {
                return Err(invalid(
                    format!("{path}.from"),
                    format!("{:?} is not a defined state", t.from),
                ));
            }
            if t.to == "*" || !posture.states.contains_key(&t.to) {
                return Err(invalid(
                    format!("{path}.to"),
                    format!("{:?} is not a defined state", t.to),
                ));
            }
            match &t.after {
                Some(a) if !after.is_match(a) => {
                    return Err(invalid(
                        format!("{path}.after"),
                        format!("{a:?} is not a duration like 30s or 5m"),
                    ));
                }
                None if t.on == super::model::PostureTrigger::Timeout => {
                    return Err(invalid(
                        format!("{path}.after"),
                        "a timeout transition needs `after`",
                    ));
                }
                _ => {}
            }
        }
    }
    if let Some(origins) = &extensions.origins {
        let mut ids = HashSet::new();
        for (i, profile) in origins.profiles.iter().enumerate() {
            let path = format!("extensions.origins.profiles[{i}]");
            if !ids.insert(profile.id.as_str()) {
                return Err(invalid(
                    format!("{path}.id"),
                    format!("duplicate profile id {:?}", profile.id),
                ));
            }
            if let Some(posture) = &profile.posture
                && !states.is_some_and(|s| s.contains_key(posture))
            {
                return Err(invalid(
                    format!("{path}.posture"),
                    format!("{posture:?} is not a defined posture state"),
                ));
            }
        }
    }
    if let Some(detection) = &extensions.detection {
        if detection
            .prompt_injection
            .as_ref()
            .and_then(|p| p.max_scan_bytes)
            == Some(0)
        {
            return Err(invalid(
                "extensions.detection.prompt_injection.max_scan_bytes",
                "must be at least 1",
            ));
        }
        if let Some(j) = &detection.jailbreak {
            for (name, value) in [
                ("block_threshold", j.block_threshold),
                ("warn_threshold", j.warn_threshold),
            ] {
                if value.is_some_and(|v| v > 100) {
                    return Err(invalid(
                        format!("extensions.detection.jailbreak.{name}"),
                        "must be between 0 and 100",
                    ));
                }
            }
            if j.max_input_bytes == Some(0) {
                return Err(invalid(
                    "extensions.detection.jailbreak.max_input_bytes",
                    "must be at least 1",
                ));
            }
        }
        if let Some(t) = &detection.threat_intel {
            if t.similarity_threshold
                .is_some_and(|v| !(0.0..=1.0).contains(&v))
            {
                return Err(invalid(
                    "extensions.detection.threat_intel.similarity_threshold",
                    "must be between 0 and 1",
                ));
            }
            if t.top_k == Some(0) {
                return Err(invalid(
                    "extensions.detection.threat_intel.top_k",
                    "must be at least 1",
                ));
            }
        }
    }
    Ok(())
}
