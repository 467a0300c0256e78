//! The receipt log: round trip, concurrent appends, crash recovery, rotation,
//! the tamper suite (each tampering named by the check it fails), and a log that
//! cannot be written.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use serde_json::json;

use tollgate::receipt::log::rotated_files;
use tollgate::receipt::record::{GENESIS, line_hash};
use tollgate::receipt::verify::{Check, verify};
use tollgate::receipt::{ActionRecord, Draft, Grouping, LogOptions, Reason, Receipt, ReceiptLog};

fn key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

fn draft(i: usize) -> Draft {
    Draft {
        decision: ["allow", "deny", "pending"][i % 3].into(),
        reason: Reason {
            code: if i % 3 == 1 {
                "tool_access.block".into()
            } else {
                "allow".into()
            },
            message: format!("call {i}"),
            matched_rule: None,
        },
        server_id: "test".into(),
        agent_id: format!("agent-{}", i % 4),
        request_id: format!("tgr_{i}"),
        surface: "chat.completions".into(),
        action: ActionRecord {
            tool_name: format!("tool_{}", i % 5),
            tool_call_id: format!("call_{i}"),
            parameters: json!({"i": i}),
            parameters_hash: "0".repeat(64),
        },
        policy_hash: "p".repeat(64),
        metadata: json!({"adapter": "chat", "round": 0}),
    }
}

fn write_log(path: &Path, n: usize) -> Vec<Receipt> {
    let log = ReceiptLog::open(path, key(), LogOptions::default()).unwrap();
    let out = (0..n)
        .map(|i| log.append_blocking(draft(i)).unwrap())
        .collect();
    log.close();
    out
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(
        path,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
}

#[test]
fn appended_records_form_one_verified_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("receipts.jsonl");
    let written = write_log(&path, 20);
    assert_eq!(written[0].seq, 0);
    assert_eq!(written[0].prev, GENESIS);
    let file = lines(&path);
    for (i, r) in written.iter().enumerate().skip(1) {
        assert_eq!(r.seq, i as u64);
        assert_eq!(r.prev, line_hash(file[i - 1].as_bytes()));
    }
    let report = verify(std::slice::from_ref(&path), &[key().verifying_key()]);
    assert!(report.ok(), "{:?}", report.failure);
    assert_eq!(report.records, 20);
    // Reopening continues the chain.
    let log = ReceiptLog::open(&path, key(), LogOptions::default()).unwrap();
    assert_eq!(log.append_blocking(draft(20)).unwrap().seq, 20);
    log.close();
    assert!(verify(&[path], &[key().verifying_key()]).ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_give_one_unbroken_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("receipts.jsonl");
    let log = Arc::new(ReceiptLog::open(&path, key(), LogOptions::default()).unwrap());
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..64 {
        let log = log.clone();
        tasks.spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..25 {
                seqs.push(log.append(draft(t * 100 + i)).await.unwrap().seq);
            }
            seqs
        });
    }
    let mut all = Vec::new();
    while let Some(seqs) = tasks.join_next().await {
        all.extend(seqs.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (0..1600).collect::<Vec<u64>>());
    drop(log);
    let report = verify(&[path], &[key().verifying_key()]);
    assert!(report.ok(), "{:?}", report.failure);
    assert_eq!(report.records, 1600);
}

#[test]
fn a_torn_last_line_is_cut_off_and_the_recovery_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("receipts.jsonl");
    write_log(&path, 5);
    // A crash in the middle of writing the sixth record.
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(r#"{"version":"tollgate.receipt.v1","receipt_id":"rcpt_x","seq":5,"pr"#);
    std::fs::write(&path, &text).unwrap();
    assert_eq!(
        verify(std::slice::from_ref(&path), &[key().verifying_key()])
            .failure
            .unwrap()
            .check,
        Check::Truncated
    );

    let log = ReceiptLog::open(&path, key(), LogOptions::default()).unwrap();
    let next = log.append_blocking(draft(6)).unwrap();
    log.close();
    let records: Vec<Receipt> = lines(&path)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 7);
    assert_eq!(records[5].decision, "system");
    assert_eq!(records[5].reason.code, "log_recovered");
    assert_eq!(records[5].seq, 5);
    assert_eq!(next.seq, 6);
    assert!(verify(&[path], &[key().verifying_key()]).ok());
}

/// A log whose records that may wait wait `group_wait`, counting it busy when
/// the record before came within `busy`.
fn grouping_log(dir: &Path, group_wait: Duration, busy: Duration) -> ReceiptLog {
    let options = LogOptions {
        group_wait,
        busy,
        ..LogOptions::default()
    };
    ReceiptLog::open(&dir.join("receipts.jsonl"), key(), options).unwrap()
}

/// Far longer than any append takes: an append that waited for it fails the
/// test instead of passing late.
const NEVER: Duration = Duration::from_secs(600);
const PATIENCE: Duration = Duration::from_secs(30);

/// Appends `draft` and asserts it is still waiting for company 300 ms later (its
/// caller stops waiting; the record stays queued).
async fn assert_waits(log: &ReceiptLog, draft: Draft) {
    let waiting = tokio::time::timeout(
        Duration::from_millis(300),
        log.append_grouped(draft, Grouping::MayWait),
    )
    .await;
    assert!(waiting.is_err(), "written without waiting: {waiting:?}");
}

#[tokio::test]
async fn records_that_may_wait_share_a_sync_while_the_log_is_busy() {
    let dir = tempfile::tempdir().unwrap();
    let log = grouping_log(dir.path(), NEVER, NEVER);
    // The first record finds the log idle and is written alone.
    log.append_grouped(draft(0), Grouping::MayWait)
        .await
        .unwrap();
    assert_eq!(log.syncs(), 1);
    // The next one, close behind it, waits for company: it is not written
    // while nothing else comes.
    assert_waits(&log, draft(1)).await;
    assert_eq!(log.syncs(), 1);
    // Another that may wait joins it, and one that cannot takes both along.
    let (b, c) = tokio::time::timeout(PATIENCE, async {
        tokio::join!(
            log.append_grouped(draft(2), Grouping::MayWait),
            log.append_grouped(draft(3), Grouping::Now),
        )
    })
    .await
    .expect("a record that cannot wait ends the wait");
    assert_eq!((b.unwrap().seq, c.unwrap().seq), (2, 3));
    assert_eq!(log.syncs(), 2, "three records, one sync");
    let path = log.path().to_path_buf();
    log.close();
    assert_eq!(lines(&path).len(), 4);
    assert!(verify(&[path], &[key().verifying_key()]).ok());
}

#[tokio::test]
async fn a_record_waits_no_longer_than_the_group_wait_and_never_when_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    // Busy all the time, a short wait: a lone record that may wait is written
    // once the wait is over.
    let log = grouping_log(dir.path(), Duration::from_millis(20), NEVER);
    log.append_grouped(draft(0), Grouping::Now).await.unwrap();
    let alone = tokio::time::timeout(PATIENCE, log.append_grouped(draft(1), Grouping::MayWait))
        .await
        .expect("written once the wait is over");
    assert_eq!(alone.unwrap().seq, 1);
    assert_eq!(log.syncs(), 2);
    log.close();

    // A wait longer than the test: one that cannot wait is written at once,
    // and so is one that may, when the log is idle or waiting is off.
    for (group_wait, busy, grouping) in [
        (NEVER, NEVER, Grouping::Now),
        (NEVER, Duration::ZERO, Grouping::MayWait),
        (Duration::ZERO, NEVER, Grouping::MayWait),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let log = grouping_log(dir.path(), group_wait, busy);
        log.append_grouped(draft(0), Grouping::Now).await.unwrap();
        let next = tokio::time::timeout(PATIENCE, log.append_grouped(draft(1), grouping))
            .await
            .unwrap_or_else(|_| panic!("{grouping:?} waited (wait {group_wait:?}, busy {busy:?})"));
        assert_eq!(next.unwrap().seq, 1);
        log.close();
    }
}

#[tokio::test]
async fn one_turn_settling_its_calls_in_turn_does_not_make_the_log_busy() {
    let dir = tempfile::tempdir().unwrap();
    let log = grouping_log(dir.path(), NEVER, NEVER);
    let of_turn = |i| Draft {
        request_id: "tgr_turn".into(),
        ..draft(i)
    };
    for i in 0..3 {
        let next =
            tokio::time::timeout(PATIENCE, log.append_grouped(of_turn(i), Grouping::MayWait))
                .await
                .unwrap_or_else(|_| panic!("call {i} waited for its own turn's records"));
        assert_eq!(next.unwrap().seq, i as u64);
    }
    // Another request's record close behind them does wait.
    assert_waits(&log, draft(3)).await;
    assert_eq!(log.syncs(), 3);
    // Closing the log writes what waits, at once.
    let path = log.path().to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        log.close();
        let _ = tx.send(());
    });
    rx.recv_timeout(PATIENCE)
        .expect("close writes a waiting record without waiting");
    assert_eq!(lines(&path).len(), 4);
    assert!(verify(&[path], &[key().verifying_key()]).ok());
}

#[test]
fn rotation_keeps_the_chain_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("receipts.jsonl");
    let options = LogOptions {
        rotate_bytes: 4096,
        ..LogOptions::default()
    };
    let log = ReceiptLog::open(&path, key(), options.clone()).unwrap();
    for i in 0..40 {
        log.append_blocking(draft(i)).unwrap();
    }
    log.close();
    let mut files = rotated_files(&path);
    assert!(files.len() >= 2, "no rotation: {files:?}");
    // A file is rotated at the first write that finds it at the bound or over.
    let longest = files
        .iter()
        .chain([&path])
        .flat_map(|f| lines(f))
        .map(|l| l.len() + 1)
        .max()
        .unwrap();
    for file in &files {
        let size = std::fs::metadata(file).unwrap().len();
        assert!(
            (4096..4096 + longest as u64).contains(&size),
            "{} is {size} bytes",
            file.display()
        );
    }
    files.push(path.clone());
    let report = verify(&files, &[key().verifying_key()]);
    assert!(report.ok(), "{:?}", report.failure);
    assert_eq!(report.records, 40);
    // Verifying without the first file starts mid-chain, which is reported.
    let report = verify(&files[1..], &[key().verifying_key()]);
    assert!(report.ok());
    assert!(report.first_seq.unwrap() > 0);
    // Leaving a file out of the middle breaks the chain.
    let mut gap = files.clone();
    gap.remove(1);
    assert_eq!(
        verify(&gap, &[key().verifying_key()])
            .failure
            .unwrap()
            .check,
        Check::Sequence
    );
    // A reopened log continues after rotation.
    let log = ReceiptLog::open(&path, key(), options).unwrap();
    assert_eq!(log.append_blocking(draft(40)).unwrap().seq, 40);
}

fn tampered(name: &str, mutate: impl FnOnce(&mut Vec<String>)) -> (PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{name}.jsonl"));
    write_log(&path, 6);
    let mut l = lines(&path);
    mutate(&mut l);
    write_lines(&path, &l);
    (path, dir)
}

#[test]
fn every_kind_of_tampering_is_named_by_the_check_it_fails() {
    let trusted = [key().verifying_key()];
    type Mutation = Box<dyn FnOnce(&mut Vec<String>)>;
    let cases: Vec<(&str, Check, Mutation)> = vec![
        (
            "flipped byte",
            Check::Signature,
            Box::new(|l: &mut Vec<String>| {
                l[2] = l[2].replacen("\"message\":\"call 2\"", "\"message\":\"call 3\"", 1)
            }),
        ),
        (
            "deleted record",
            Check::Sequence,
            Box::new(|l: &mut Vec<String>| {
                l.remove(3);
            }),
        ),
        (
            "swapped records",
            Check::Sequence,
            Box::new(|l: &mut Vec<String>| l.swap(2, 3)),
        ),
        (
            "duplicated record",
            Check::Sequence,
            Box::new(|l: &mut Vec<String>| {
                let copy = l[4].clone();
                l.insert(4, copy);
            }),
        ),
        (
            "rechained forgery",
            Check::Signature,
            Box::new(|l: &mut Vec<String>| {
                // Change a decision and fix up every later prev: the signatures catch it.
                let mut r: Receipt = serde_json::from_str(&l[1]).unwrap();
                r.decision = "allow".into();
                l[1] = r.to_line().unwrap();
                for i in 2..l.len() {
                    let mut next: Receipt = serde_json::from_str(&l[i]).unwrap();
                    next.prev = line_hash(l[i - 1].as_bytes());
                    l[i] = next.to_line().unwrap();
                }
            }),
        ),
        (
            "unknown key",
            Check::UnknownKey,
            Box::new(|l: &mut Vec<String>| {
                let r: Receipt = serde_json::from_str(&l[5]).unwrap();
                let other = SigningKey::from_bytes(&[9; 32]);
                let forged = Receipt::sign(
                    draft(5),
                    r.seq,
                    r.prev.clone(),
                    r.receipt_id.clone(),
                    r.timestamp.clone(),
                    &other,
                )
                .unwrap();
                l[5] = forged.to_line().unwrap();
            }),
        ),
        (
            "time going back",
            Check::Signature,
            Box::new(|l: &mut Vec<String>| {
                l[3] = l[3].replacen("\"timestamp\":\"2", "\"timestamp\":\"1", 1)
            }),
        ),
    ];
    for (name, expected, mutate) in cases {
        let (path, _dir) = tampered(name, mutate);
        let report = verify(&[path], &trusted);
        let failure = report
            .failure
            .unwrap_or_else(|| panic!("{name}: verify passed"));
        assert_eq!(failure.check, expected, "{name}: {failure:?}");
        assert!(failure.line > 0, "{name}");
    }
    // A cut-off tail.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.jsonl");
    write_log(&path, 4);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, &text[..text.len() - 30]).unwrap();
    assert_eq!(
        verify(&[path], &trusted).failure.unwrap().check,
        Check::Truncated
    );
}

#[test]
fn a_log_that_cannot_be_written_never_reports_success() {
    // A full disk: every write fails with ENOSPC.
    let full = Path::new("/dev/full");
    if full.exists() {
        let log = ReceiptLog::open(full, key(), LogOptions::default()).unwrap();
        for i in 0..3 {
            assert!(
                log.append_blocking(draft(i)).is_err(),
                "append {i} reported success on a full disk"
            );
        }
    }
    // A read-only file, even for root: it may open, but nothing can be appended.
    if let Ok(log) = ReceiptLog::open(Path::new("/proc/version"), key(), LogOptions::default()) {
        assert!(
            log.append_blocking(draft(0)).is_err(),
            "append reported success on a read-only file"
        );
    }
    // A directory where the file should be.
    let dir = tempfile::tempdir().unwrap();
    assert!(ReceiptLog::open(dir.path(), key(), LogOptions::default()).is_err());
}

#[test]
fn receipts_commands_verify_show_and_summarise() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("key.pem");
    tollgate::keys::write_signing(&key_path, &key(), false).unwrap();
    let path = dir.path().join("receipts.jsonl");
    write_log(&path, 9);
    let run = |args: &[&str]| crate::common::run_binary(args, dir.path(), &[]);

    let (status, out, err) = run(&[
        "receipts",
        "verify",
        "receipts.jsonl",
        "--public-key",
        "key.pem",
    ]);
    assert!(status.success(), "{out}{err}");
    assert!(out.starts_with("OK: 9 receipts, seq 0..8"), "{out}");
    let (status, out, _) = run(&[
        "receipts",
        "verify",
        "receipts.jsonl",
        "--public-key",
        "key.pem",
        "--json",
    ]);
    assert!(status.success());
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["records"], 9);

    let (status, out, _) = run(&["receipts", "show", "receipts.jsonl", "--decision", "deny"]);
    assert!(status.success());
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(
        out.lines()
            .all(|l| l.contains(" deny ") && l.contains("tool_access.block")),
        "{out}"
    );
    let (_, out, _) = run(&[
        "receipts",
        "show",
        "receipts.jsonl",
        "--agent",
        "agent-1",
        "--json",
        "--since",
        "1h",
    ]);
    for line in out.lines() {
        let r: Receipt = serde_json::from_str(line).unwrap();
        assert_eq!(r.agent_id, "agent-1");
    }
    assert!(!out.is_empty());

    let (status, out, _) = run(&[
        "receipts",
        "summary",
        "receipts.jsonl",
        "--markdown",
        "--fail-on-deny",
    ]);
    assert!(!status.success(), "denials must fail the CI job");
    assert!(
        out.contains("| deny | 3 |") && out.contains("| `tool_access.block` | 3 |"),
        "{out}"
    );
    let (status, out, _) = run(&["receipts", "summary", "receipts.jsonl"]);
    assert!(status.success());
    assert!(
        out.starts_with("9 receipts: 3 allow, 3 deny, 3 pending"),
        "{out}"
    );

    // A tampered log fails verification, naming the record and the check.
    let mut l = lines(&path);
    l.swap(4, 5);
    write_lines(&path, &l);
    let (status, out, _) = run(&[
        "receipts",
        "verify",
        "receipts.jsonl",
        "--public-key",
        "key.pem",
    ]);
    assert!(!status.success());
    assert!(
        out.contains("receipts.jsonl:5 (seq 5): Sequence check"),
        "{out}"
    );
}

#[test]
fn receipts_tail_follows_new_records() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("receipts.jsonl");
    write_log(&path, 3);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["receipts", "tail", "receipts.jsonl", "--lines", "2"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(crate::common::WAIT).unwrap();
    assert!(first.contains("#1 "), "{first}");
    assert!(
        rx.recv_timeout(crate::common::WAIT)
            .unwrap()
            .contains("#2 ")
    );
    let log = ReceiptLog::open(&path, key(), LogOptions::default()).unwrap();
    log.append_blocking(draft(3)).unwrap();
    let followed = rx
        .recv_timeout(crate::common::WAIT)
        .expect("tail did not print the new receipt");
    assert!(
        followed.contains("#3 ") && followed.contains("request=tgr_3"),
        "{followed}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_receipt_of_a_decision_holds_the_redacted_arguments_and_the_original_hash() {
    use tollgate::kernel::policy::Policy;
    use tollgate::kernel::{Call, Kernel, Now};
    let kernel = Kernel::new(Policy::bundled("default").unwrap());
    let arguments = r#"{"note":"key AKIAIOSFODNN7EXAMPLE","n":1}"#;
    let call = Call {
        agent_id: "key:0123456789abcdef",
        scope: None,
        tool: "send_note",
        arguments,
        has_side_effects: false,
    };
    let decision = kernel.decide(&call, Now::current());
    let draft = Draft::from_decision(
        &decision,
        &call,
        "call_9",
        tollgate::receipt::DraftContext {
            server_id: "gw-1",
            request_id: "tgr_9",
            surface: "chat.completions",
            metadata: json!({"adapter": "chat", "route": "client", "round": 0}),
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("receipts.jsonl");
    let log = ReceiptLog::open(&path, key(), LogOptions::default()).unwrap();
    let receipt = log.append_blocking(draft).unwrap();
    log.close();
    let line = std::fs::read_to_string(&path).unwrap();
    assert!(!line.contains("AKIAIOSFODNN7EXAMPLE"), "{line}");
    assert_eq!(receipt.decision, "deny");
    assert_eq!(receipt.reason.code, "secret_patterns.aws_access_key");
    assert!(
        receipt.action.parameters["note"]
            .as_str()
            .unwrap()
            .contains("[REDACTED:aws_access_key:sha256:")
    );
    // parameters_hash is over the original canonical arguments.
    let original: serde_json::Value = serde_json::from_str(arguments).unwrap();
    let expected = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(serde_jcs::to_vec(&original).unwrap()))
    };
    assert_eq!(receipt.action.parameters_hash, expected);
    assert_eq!(receipt.policy_hash, kernel.policy().hash());
    assert!(verify(&[path], &[key().verifying_key()]).ok());
}

#[test]
fn a_timestamp_going_back_fails_the_time_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("receipts.jsonl");
    let k = key();
    let first = Receipt::sign(
        draft(0),
        0,
        GENESIS.into(),
        "rcpt_a".into(),
        "2026-11-21T22:00:10.000000Z".into(),
        &k,
    )
    .unwrap();
    let first_line = first.to_line().unwrap();
    // Signed correctly and chained correctly, but five seconds earlier.
    let second = Receipt::sign(
        draft(1),
        1,
        line_hash(first_line.as_bytes()),
        "rcpt_b".into(),
        "2026-11-21T22:00:05.000000Z".into(),
        &k,
    )
    .unwrap();
    write_lines(&path, &[first_line.clone(), second.to_line().unwrap()]);
    let failure = verify(std::slice::from_ref(&path), &[k.verifying_key()])
        .failure
        .unwrap();
    assert_eq!(
        (failure.check, failure.line, failure.seq),
        (Check::Time, 2, Some(1))
    );
    // Within the tolerance it passes.
    let close = Receipt::sign(
        draft(1),
        1,
        line_hash(first_line.as_bytes()),
        "rcpt_b".into(),
        "2026-11-21T22:00:09.500000Z".into(),
        &k,
    )
    .unwrap();
    write_lines(&path, &[first_line, close.to_line().unwrap()]);
    assert!(verify(&[path], &[k.verifying_key()]).ok());
}
