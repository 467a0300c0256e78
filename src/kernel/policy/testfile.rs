//! HushSpec evaluator test files (`*.test.yaml`): a policy and cases, each an
//! action and the decision (and optionally the matched rule and reason) expected.
//! `tollgate policy test` runs them so that policy authors can test in CI.

use serde::Deserialize;

use super::evaluate::{Action, Verdict};
use super::model::Document;
use super::{Policy, PolicyError, parse_yaml};

/// The test-file format versions accepted.
pub const SUPPORTED_TEST_VERSIONS: [&str; 1] = ["0.1.0"];

/// A test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// Format version.
    pub hushspec_test: String,
    /// What the file tests.
    pub description: String,
    /// The policy under test.
    pub policy: Document,
    /// The cases.
    pub cases: Vec<TestCase>,
}

/// One case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    /// What the case checks.
    pub description: String,
    /// The action.
    pub action: TestAction,
    /// What must come out.
    pub expect: Expectation,
}

/// An action as test files write it (origin and posture belong to extensions this
/// engine does not evaluate; they are accepted and ignored).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestAction {
    /// The action type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The target.
    #[serde(default)]
    pub target: Option<String>,
    /// Content for writes and patches.
    #[serde(default)]
    pub content: Option<String>,
    /// Argument size for tool calls.
    #[serde(default)]
    pub args_size: Option<u64>,
    /// Origin context (extensions).
    #[serde(default)]
    pub origin: Option<serde_json::Value>,
    /// Posture context (extensions).
    #[serde(default)]
    pub posture: Option<serde_json::Value>,
}

/// What a case expects.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    /// The decision.
    pub decision: Verdict,
    /// The rule, when given.
    #[serde(default)]
    pub matched_rule: Option<String>,
    /// The reason, when given.
    #[serde(default)]
    pub reason: Option<String>,
    /// Extension results (not evaluated by this engine; a case that expects one
    /// fails).
    #[serde(default)]
    pub origin_profile: Option<String>,
    /// Extension results (see `origin_profile`).
    #[serde(default)]
    pub posture: Option<serde_json::Value>,
}

/// The outcome of one case.
#[derive(Debug)]
pub struct CaseResult {
    /// The case's description.
    pub description: String,
    /// `None` when it passed; what differed otherwise.
    pub failure: Option<String>,
}

/// Parses a test file and runs every case. An error means the file itself is
/// unusable (bad format, invalid policy).
pub fn run(text: &str, source_name: &str) -> Result<Vec<CaseResult>, PolicyError> {
    let file: TestFile = parse_yaml(text, source_name)?;
    if !SUPPORTED_TEST_VERSIONS.contains(&file.hushspec_test.as_str()) {
        return Err(PolicyError::Invalid {
            path: "hushspec_test".into(),
            message: format!("unsupported test format version {:?}", file.hushspec_test),
        });
    }
    if file.cases.is_empty() {
        return Err(PolicyError::Invalid {
            path: "cases".into(),
            message: "a test file needs at least one case".into(),
        });
    }
    let policy = Policy::from_document(file.policy)?;
    Ok(file
        .cases
        .iter()
        .map(|case| run_case(&policy, case))
        .collect())
}

fn run_case(policy: &Policy, case: &TestCase) -> CaseResult {
    let action = Action {
        kind: case.action.kind.clone(),
        target: case.action.target.clone().unwrap_or_default(),
        content: case.action.content.clone(),
        args_size: case.action.args_size,
    };
    let got = policy.evaluate(&action);
    let expect = &case.expect;
    let mut problems = Vec::new();
    if got.verdict != expect.decision {
        problems.push(format!(
            "decision {} (expected {})",
            got.verdict.as_str(),
            expect.decision.as_str()
        ));
    }
    if let Some(rule) = &expect.matched_rule
        && got.matched_rule.as_deref() != Some(rule.as_str())
    {
        problems.push(format!(
            "matched_rule {} (expected {rule})",
            got.matched_rule.as_deref().unwrap_or("none")
        ));
    }
    if let Some(reason) = &expect.reason
        && &got.reason != reason
    {
        problems.push(format!("reason {:?} (expected {reason:?})", got.reason));
    }
    if expect.origin_profile.is_some() || expect.posture.is_some() {
        problems.push("origin and posture results are not evaluated by this engine".into());
    }
    CaseResult {
        description: case.description.clone(),
        failure: (!problems.is_empty()).then(|| problems.join("; ")),
    }
}
