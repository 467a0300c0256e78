//! Verifying receipt logs: every signature by a trusted key, the `prev` chain
//! across files, `seq` continuity, timestamps that never go backwards by more than
//! [`TIME_TOLERANCE`], and no cut-off tail. The first bad record is reported with
//! the check it failed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ed25519_dalek::VerifyingKey;
use serde::Serialize;

use super::record::{GENESIS, Receipt, VERSION, line_hash};
use crate::kernel::token::key_id;

/// How far a timestamp may go back from the previous one.
pub const TIME_TOLERANCE: Duration = Duration::from_secs(1);

/// The checks, in the order they are made for each record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// The file could not be read.
    Read,
    /// The last line has no newline: the log was cut off.
    Truncated,
    /// The line is not a receipt.
    Parse,
    /// Not a record format this verifier knows.
    Version,
    /// `seq` does not follow the previous record.
    Sequence,
    /// `prev` is not the hash of the previous line.
    Chain,
    /// Signed by a key that is not trusted.
    UnknownKey,
    /// The signature does not verify.
    Signature,
    /// The timestamp goes back in time.
    Time,
}

/// The first bad record.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// The file.
    pub file: PathBuf,
    /// The line number in it (1-based).
    pub line: usize,
    /// The record's `seq`, when it could be read.
    pub seq: Option<u64>,
    /// The check it failed.
    pub check: Check,
    /// What exactly.
    pub detail: String,
}

/// What verification found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Records that passed every check.
    pub records: u64,
    /// The first record's `seq` (0 unless the files start mid-chain).
    pub first_seq: Option<u64>,
    /// The last good record's `seq`.
    pub last_seq: Option<u64>,
    /// Records per signing key id.
    pub keys: BTreeMap<String, u64>,
    /// The first failure, if any.
    pub failure: Option<Failure>,
}

impl Report {
    /// Whether every check held.
    pub fn ok(&self) -> bool {
        self.failure.is_none()
    }
}

/// Where the chain stands after the last good record.
#[derive(Default)]
struct Chain {
    hash: Option<String>,
    seq: Option<u64>,
    time: Option<SystemTime>,
}

/// Verifies `files`, in order, as one chain.
pub fn verify(files: &[PathBuf], trusted: &[VerifyingKey]) -> Report {
    let keys: HashMap<String, VerifyingKey> = trusted.iter().map(|k| (key_id(k), *k)).collect();
    let mut report = Report {
        records: 0,
        first_seq: None,
        last_seq: None,
        keys: BTreeMap::new(),
        failure: None,
    };
    let mut chain = Chain::default();
    for (index, file) in files.iter().enumerate() {
        let bytes = match std::fs::read(file) {
            Ok(b) => b,
            Err(e) => {
                report.failure = Some(Failure {
                    file: file.clone(),
                    line: 0,
                    seq: None,
                    check: Check::Read,
                    detail: e.to_string(),
                });
                return report;
            }
        };
        // A last line without its newline was cut off; everything before the cut
        // is still checked first.
        let cut = index + 1 == files.len() && !bytes.is_empty() && !bytes.ends_with(b"\n");
        let complete = if cut {
            bytes.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1)
        } else {
            bytes.len()
        };
        report.failure = check_lines(&bytes[..complete], file, &keys, &mut report, &mut chain);
        if report.failure.is_none() && cut {
            report.failure = Some(Failure {
                file: file.clone(),
                line: bytes.split(|b| *b == b'\n').count(),
                seq: None,
                check: Check::Truncated,
                detail: "the last line has no newline: the log was cut off".into(),
            });
        }
        if report.failure.is_some() {
            return report;
        }
    }
    report
}

fn check_lines(
    bytes: &[u8],
    file: &Path,
    keys: &HashMap<String, VerifyingKey>,
    report: &mut Report,
    chain: &mut Chain,
) -> Option<Failure> {
    for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let n = i + 1;
        let fail = |seq: Option<u64>, check: Check, detail: String| Failure {
            file: file.to_path_buf(),
            line: n,
            seq,
            check,
            detail,
        };
        let receipt: Receipt = match serde_json::from_slice(line) {
            Ok(r) => r,
            Err(e) => return Some(fail(None, Check::Parse, e.to_string())),
        };
        let seq = Some(receipt.seq);
        if receipt.version != VERSION {
            return Some(fail(
                seq,
                Check::Version,
                format!("unknown version {:?}", receipt.version),
            ));
        }
        match chain.seq {
            Some(p) if receipt.seq != p + 1 => {
                return Some(fail(
                    seq,
                    Check::Sequence,
                    format!("seq {} follows seq {p}", receipt.seq),
                ));
            }
            None if receipt.seq == 0 && receipt.prev != GENESIS => {
                return Some(fail(
                    seq,
                    Check::Chain,
                    "the first record's prev is not the genesis value".into(),
                ));
            }
            _ => {}
        }
        if let Some(expected) = chain.hash.as_deref()
            && receipt.prev != expected
        {
            return Some(fail(
                seq,
                Check::Chain,
                "prev is not the SHA-256 of the previous line".into(),
            ));
        }
        let Some(key) = keys.get(&receipt.key_id) else {
            return Some(fail(
                seq,
                Check::UnknownKey,
                format!("key {} is not trusted", receipt.key_id),
            ));
        };
        if let Err(e) = receipt.verify_signature(key) {
            return Some(fail(seq, Check::Signature, e.to_string()));
        }
        let time = match humantime::parse_rfc3339(&receipt.timestamp) {
            Ok(t) => t,
            Err(e) => {
                return Some(fail(
                    seq,
                    Check::Time,
                    format!("timestamp {:?}: {e}", receipt.timestamp),
                ));
            }
        };
        if let Some(p) = chain.time
            && time + TIME_TOLERANCE < p
        {
            return Some(fail(
                seq,
                Check::Time,
                format!("timestamp {} goes back in time", receipt.timestamp),
            ));
        }
        chain.time = Some(time);
        chain.hash = Some(line_hash(line));
        chain.seq = seq;
        report.first_seq.get_or_insert(receipt.seq);
        report.last_seq = seq;
        report.records += 1;
        *report.keys.entry(receipt.key_id).or_default() += 1;
    }
    None
}
