//! HushSpec conformance, Levels 0 to 3, against the vectors in
//! ../shared/fixtures/hushspec (read from there, never copied), plus the policies
//! bundled in `policies/` and `extends` resolution.

use std::path::{Path, PathBuf};

use tollgate::kernel::policy::merge::merge;
use tollgate::kernel::policy::model::Document;
use tollgate::kernel::policy::{Action, Policy, PolicyError, Verdict, parse_document, testfile};

use crate::common::{run_binary, shared_fixtures};

fn core(dir: &str) -> Vec<PathBuf> {
    let root = shared_fixtures().join("hushspec/core").join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no vectors in {}", root.display());
    files
}

#[test]
fn level_0_and_1_valid_documents_load_and_invalid_ones_are_refused() {
    for file in core("valid") {
        if let Err(e) = Policy::load(&file) {
            panic!("{} should be valid: {e}", file.display());
        }
    }
    let expected_problem = [
        ("bad-default-action.yaml", "maybe"),
        ("bad-severity.yaml", "banana"),
        ("duplicate-pattern-names.yaml", "duplicate"),
        ("missing-version.yaml", "hushspec"),
        ("unknown-rule.yaml", "nonexistent_guard"),
        ("unknown-top-level.yaml", "unknown_field"),
    ];
    let invalid = core("invalid");
    assert_eq!(invalid.len(), expected_problem.len());
    for file in invalid {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let (_, needle) = expected_problem.iter().find(|(n, _)| *n == name).unwrap();
        match Policy::load(&file) {
            Ok(_) => panic!("{name} should be refused"),
            Err(e) => assert!(e.to_string().contains(needle), "{name}: {e}"),
        }
    }
}

#[test]
fn level_2_merges_match_the_expected_documents() {
    let dir = shared_fixtures().join("hushspec/core/merge");
    let read = |name: &str| -> Document {
        let path = dir.join(name);
        parse_document(&std::fs::read_to_string(&path).unwrap(), name).unwrap()
    };
    let base = read("base.yaml");
    for case in ["deep-merge", "replace"] {
        let child = read(&format!("child-{case}.yaml"));
        let expected = read(&format!("expected-{case}.yaml"));
        assert_eq!(merge(&base, &child), expected, "merge case {case}");
    }
}

#[test]
fn level_3_every_evaluation_vector_passes() {
    let mut cases = 0;
    for file in core("evaluation") {
        let text = std::fs::read_to_string(&file).unwrap();
        let results = testfile::run(&text, &file.display().to_string()).unwrap();
        for result in results {
            cases += 1;
            assert!(
                result.failure.is_none(),
                "{}: {}: {:?}",
                file.display(),
                result.description,
                result.failure
            );
        }
    }
    assert!(cases >= 30, "only {cases} cases ran");
}

#[test]
fn policy_test_command_runs_the_vectors_and_fails_on_a_wrong_expectation() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["policy".to_owned(), "test".to_owned()];
    args.extend(core("evaluation").iter().map(|p| p.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, out, err) = run_binary(&args, dir.path(), &[]);
    assert!(status.success(), "{out}{err}");
    assert!(out.contains(", 0 failed"), "{out}");

    let wrong = dir.path().join("wrong.test.yaml");
    std::fs::write(
        &wrong,
        "hushspec_test: \"0.1.0\"\ndescription: wrong\npolicy:\n  hushspec: \"0.1.0\"\n  rules:\n    tool_access:\n      block: [rm]\ncases:\n  - description: expects allow for a blocked tool\n    action: {type: tool_call, target: rm}\n    expect: {decision: allow}\n",
    )
    .unwrap();
    let (status, out, _) = run_binary(&["policy", "test", "wrong.test.yaml"], dir.path(), &[]);
    assert!(!status.success());
    assert!(
        out.contains("FAIL") && out.contains("decision deny (expected allow)"),
        "{out}"
    );
}

#[test]
fn policy_check_names_the_problem_and_prints_the_hash() {
    let dir = tempfile::tempdir().unwrap();
    for file in core("invalid") {
        let (status, _, err) = run_binary(
            &["policy", "check", &file.display().to_string()],
            dir.path(),
            &[],
        );
        assert!(!status.success(), "{} accepted", file.display());
        assert!(err.contains("tollgate: error:"), "{err}");
    }
    let (status, out, err) = run_binary(&["policy", "check", "default"], dir.path(), &[]);
    assert!(status.success(), "{err}");
    let hash = Policy::bundled("default").unwrap().hash().to_owned();
    assert!(out.contains(&hash), "{out}");
}

#[test]
fn every_bundled_policy_file_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let policy = Policy::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            // The same policy by its bundled name.
            assert_eq!(
                Policy::bundled(&name).unwrap().hash(),
                policy.hash(),
                "{name}"
            );
            count += 1;
        }
    }
    assert!(count >= 4);
    // The example policy of the product brief loads as is.
    let guards = Policy::bundled("openai-argument-guards").unwrap();
    assert_eq!(
        guards
            .evaluate(&Action::new("tool_call", "run_query"))
            .verdict,
        Verdict::Allow
    );
    assert_eq!(
        guards
            .evaluate(&Action::new("tool_call", "delete_all"))
            .verdict,
        Verdict::Deny
    );
    let strict = Policy::bundled("strict").unwrap();
    assert_eq!(
        strict
            .evaluate(&Action::new("tool_call", "anything"))
            .verdict,
        Verdict::Deny
    );
    assert_eq!(
        strict
            .evaluate(&Action::new("egress", "example.com"))
            .verdict,
        Verdict::Deny
    );
    // strict extends default: default's shell guards are inherited.
    let rm = strict.evaluate(&Action::new("shell_command", "rm -rf /"));
    assert_eq!(rm.verdict, Verdict::Deny);
}

#[test]
fn extends_resolves_files_bundled_names_and_refuses_cycles() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    write(
        "base.yaml",
        "hushspec: \"0.1.0\"\nname: base\nrules:\n  tool_access:\n    block: [rm]\n  egress:\n    allow: [a.example.com]\n",
    );
    // Relative to the file that names it, not to the working directory.
    write(
        "sub/child.yaml",
        "hushspec: \"0.1.0\"\nextends: ../base.yaml\nrules:\n  egress:\n    allow: [b.example.com]\n",
    );
    let child = Policy::load(&dir.path().join("sub/child.yaml")).unwrap();
    assert_eq!(
        child.evaluate(&Action::new("tool_call", "rm")).verdict,
        Verdict::Deny
    );
    assert_eq!(
        child
            .evaluate(&Action::new("egress", "b.example.com"))
            .verdict,
        Verdict::Allow
    );
    // The child's egress block replaces the base's whole block.
    assert_eq!(
        child
            .evaluate(&Action::new("egress", "a.example.com"))
            .verdict,
        Verdict::Deny
    );
    assert_eq!(child.document().name.as_deref(), Some("base"));
    assert!(child.document().extends.is_none());

    write(
        "bundled-child.yaml",
        "hushspec: \"0.1.0\"\nextends: tollgate:strict\nrules:\n  tool_access:\n    default: block\n    allow: [get_weather]\n",
    );
    let pinned = Policy::load(&dir.path().join("bundled-child.yaml")).unwrap();
    assert_eq!(
        pinned
            .evaluate(&Action::new("tool_call", "get_weather"))
            .verdict,
        Verdict::Allow
    );
    assert_eq!(
        pinned
            .evaluate(&Action::new("egress", "example.com"))
            .verdict,
        Verdict::Deny
    );

    write("a.yaml", "hushspec: \"0.1.0\"\nextends: b.yaml\n");
    write("b.yaml", "hushspec: \"0.1.0\"\nextends: a.yaml\n");
    match Policy::load(&dir.path().join("a.yaml")) {
        Err(PolicyError::Extends { message }) => assert!(message.contains("circular"), "{message}"),
        other => panic!("cycle not refused: {other:?}"),
    }
    write(
        "missing.yaml",
        "hushspec: \"0.1.0\"\nextends: nowhere.yaml\n",
    );
    assert!(matches!(
        Policy::load(&dir.path().join("missing.yaml")),
        Err(PolicyError::Read { .. })
    ));
    write(
        "unknown.yaml",
        "hushspec: \"0.1.0\"\nextends: \"hushspec:nonexistent\"\n",
    );
    assert!(matches!(
        Policy::load(&dir.path().join("unknown.yaml")),
        Err(PolicyError::Extends { .. })
    ));
}

#[test]
fn the_policy_hash_ignores_layout_and_follows_content() {
    let a = Policy::from_text(
        "hushspec: \"0.1.0\"\nrules:\n  tool_access:\n    block: [rm, dd]\n",
        "a",
    )
    .unwrap();
    let b = Policy::from_text("# same rules, other layout\nrules: {tool_access: {block: [\"rm\", \"dd\"]}}\nhushspec: '0.1.0'\n", "b").unwrap();
    let c = Policy::from_text(
        "hushspec: \"0.1.0\"\nrules:\n  tool_access:\n    block: [rm]\n",
        "c",
    )
    .unwrap();
    assert_eq!(a.hash(), b.hash());
    assert_ne!(a.hash(), c.hash());
    assert_eq!(a.hash().len(), 64);
}

#[test]
fn strict_parsing_refuses_yaml_1_1_booleans_duplicate_keys_and_unknown_fields_at_depth() {
    for (text, needle) in [
        (
            "hushspec: \"0.1.0\"\nrules:\n  egress:\n    enabled: yes\n",
            "enabled",
        ),
        ("hushspec: \"0.1.0\"\nhushspec: \"0.1.0\"\n", "duplicate"),
        (
            "hushspec: \"0.1.0\"\nrules:\n  tool_access:\n    blok: [rm]\n",
            "blok",
        ),
        (
            "hushspec: \"0.1.0\"\nrules:\n  secret_patterns:\n    patterns:\n      - {name: a, pattern: x, severity: warn, colour: red}\n",
            "colour",
        ),
        (
            "hushspec: \"0.1.0\"\nextensions:\n  posture:\n    initial: a\n    states: {a: {}}\n    transitions: []\n    extra: 1\n",
            "extra",
        ),
        ("hushspec: \"0.2.0\"\n", "unsupported version"),
        (
            "hushspec: \"0.1.0\"\nrules:\n  shell_commands:\n    forbidden_patterns: [\"(unclosed\"]\n",
            "forbidden_patterns[0]",
        ),
        (
            "hushspec: \"0.1.0\"\nrules:\n  patch_integrity:\n    max_imbalance_ratio: 0\n",
            "max_imbalance_ratio",
        ),
        (
            "hushspec: \"0.1.0\"\nrules:\n  tool_access:\n    max_args_size: 0\n",
            "max_args_size",
        ),
        (
            "hushspec: \"0.1.0\"\nrules:\n  velocity:\n    max_invocations: 0\n    window_seconds: 60\n",
            "max_invocations",
        ),
        (
            "hushspec: \"0.1.0\"\nrules:\n  egress:\n    allow: [\"https://x.example.com/\"]\n",
            "egress.allow",
        ),
    ] {
        match Policy::from_text(text, "t") {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => assert!(e.to_string().contains(needle), "{needle} not in: {e}"),
        }
    }
}
