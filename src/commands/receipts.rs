//! `tollgate receipts verify|show|summary|tail`: receipt logs for people and CI.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use crate::cli::{DEFAULT_SIGNING_KEY, ReceiptsCommand};
use crate::receipt::Receipt;
use crate::receipt::log::read_lines;
use crate::receipt::verify::verify;

use super::CommandError;

/// Runs one `receipts` subcommand.
pub fn run(command: ReceiptsCommand) -> Result<ExitCode, CommandError> {
    match command {
        ReceiptsCommand::Verify {
            logs,
            public_keys,
            json,
        } => verify_logs(&logs, &public_keys, json),
        ReceiptsCommand::Show {
            log,
            decision,
            agent,
            tool,
            since,
            json,
        } => {
            let since = since.as_deref().map(parse_since).transpose()?;
            let mut out = std::io::stdout().lock();
            for (line, r) in receipts(&log)? {
                let keep = decision.as_ref().is_none_or(|d| &r.decision == d)
                    && agent.as_ref().is_none_or(|a| &r.agent_id == a)
                    && tool.as_ref().is_none_or(|t| &r.action.tool_name == t)
                    && since.is_none_or(|s| {
                        humantime::parse_rfc3339(&r.timestamp).is_ok_and(|t| t >= s)
                    });
                if keep {
                    if json {
                        writeln!(out, "{line}")?;
                    } else {
                        writeln!(out, "{}", one_line(&r))?;
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ReceiptsCommand::Summary {
            log,
            markdown,
            fail_on_deny,
        } => summary(&log, markdown, fail_on_deny),
        ReceiptsCommand::Tail { log, lines } => tail(&log, lines),
    }
}

fn receipts(path: &Path) -> Result<Vec<(String, Receipt)>, CommandError> {
    let lines =
        read_lines(path).map_err(|e| CommandError::Io(std::io::Error::other(e.to_string())))?;
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.into_iter().enumerate() {
        let receipt: Receipt = serde_json::from_str(&line).map_err(|e| {
            CommandError::Io(std::io::Error::other(format!(
                "{}:{}: not a receipt: {e}",
                path.display(),
                i + 1
            )))
        })?;
        out.push((line, receipt));
    }
    Ok(out)
}

fn parse_since(text: &str) -> Result<SystemTime, CommandError> {
    humantime::parse_rfc3339_weak(text)
        .ok()
        .or_else(|| {
            humantime::parse_duration(text)
                .ok()
                .and_then(|d| SystemTime::now().checked_sub(d))
        })
        .ok_or_else(|| {
            CommandError::Io(std::io::Error::other(format!(
                "--since {text:?}: give RFC 3339 time or a duration like 15m"
            )))
        })
}

fn one_line(r: &Receipt) -> String {
    format!(
        "{} #{:<6} {:<7} {:<40} agent={} tool={} request={}",
        r.timestamp,
        r.seq,
        r.decision,
        r.reason.code,
        if r.agent_id.is_empty() {
            "-"
        } else {
            &r.agent_id
        },
        if r.action.tool_name.is_empty() {
            "-"
        } else {
            &r.action.tool_name
        },
        if r.request_id.is_empty() {
            "-"
        } else {
            &r.request_id
        },
    )
}

fn verify_logs(
    logs: &[PathBuf],
    public_keys: &[PathBuf],
    json: bool,
) -> Result<ExitCode, CommandError> {
    let keys = if public_keys.is_empty() {
        let default = Path::new(DEFAULT_SIGNING_KEY);
        if !default.exists() {
            return Err(CommandError::Io(std::io::Error::other(format!(
                "no trusted key: pass --public-key, or run where {DEFAULT_SIGNING_KEY} exists"
            ))));
        }
        vec![crate::keys::read_verifying(default)?]
    } else {
        public_keys
            .iter()
            .map(|p| crate::keys::read_verifying(p))
            .collect::<Result<Vec<_>, _>>()?
    };
    let report = verify(logs, &keys);
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string(&report).unwrap_or_default()
        )?;
    } else {
        match &report.failure {
            None => writeln!(
                out,
                "OK: {} receipts, seq {}..{}, keys {}",
                report.records,
                report.first_seq.map_or("-".into(), |s| s.to_string()),
                report.last_seq.map_or("-".into(), |s| s.to_string()),
                report.keys.keys().cloned().collect::<Vec<_>>().join(", ")
            )?,
            Some(f) => writeln!(
                out,
                "FAILED: {}:{} (seq {}): {:?} check: {}",
                f.file.display(),
                f.line,
                f.seq.map_or("?".into(), |s| s.to_string()),
                f.check,
                f.detail
            )?,
        }
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn summary(log: &Path, markdown: bool, fail_on_deny: bool) -> Result<ExitCode, CommandError> {
    let all = receipts(log)?;
    let mut decisions: BTreeMap<String, u64> = BTreeMap::new();
    let mut tools: BTreeMap<String, [u64; 3]> = BTreeMap::new();
    let mut agents: BTreeMap<String, [u64; 3]> = BTreeMap::new();
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut policies: BTreeMap<String, u64> = BTreeMap::new();
    for (_, r) in &all {
        *decisions.entry(r.decision.clone()).or_default() += 1;
        let slot = match r.decision.as_str() {
            "allow" => 0,
            "deny" => 1,
            "pending" => 2,
            _ => continue,
        };
        tools.entry(r.action.tool_name.clone()).or_default()[slot] += 1;
        agents.entry(r.agent_id.clone()).or_default()[slot] += 1;
        if r.decision == "deny" {
            *reasons.entry(r.reason.code.clone()).or_default() += 1;
        }
        if !r.policy_hash.is_empty() {
            *policies.entry(r.policy_hash.clone()).or_default() += 1;
        }
    }
    let denied = decisions.get("deny").copied().unwrap_or(0);
    let mut out = std::io::stdout().lock();
    let count = |d: &str| decisions.get(d).copied().unwrap_or(0);
    if markdown {
        writeln!(out, "### tollgate receipts: {}\n", log.display())?;
        writeln!(out, "| decision | count |\n|---|---|")?;
        for d in ["allow", "deny", "pending"] {
            writeln!(out, "| {d} | {} |", count(d))?;
        }
        for (title, map) in [("tool", &tools), ("agent", &agents)] {
            writeln!(
                out,
                "\n| {title} | allow | deny | pending |\n|---|---|---|---|"
            )?;
            for (name, [a, d, p]) in map {
                writeln!(out, "| `{name}` | {a} | {d} | {p} |")?;
            }
        }
        if !reasons.is_empty() {
            writeln!(out, "\n| deny reason | count |\n|---|---|")?;
            for (code, n) in &reasons {
                writeln!(out, "| `{code}` | {n} |")?;
            }
        }
        writeln!(out, "\n| policy hash | receipts |\n|---|---|")?;
        for (hash, n) in &policies {
            writeln!(out, "| `{hash}` | {n} |")?;
        }
    } else {
        writeln!(
            out,
            "{} receipts: {} allow, {} deny, {} pending",
            all.len(),
            count("allow"),
            denied,
            count("pending")
        )?;
        for (title, map) in [("per tool", &tools), ("per agent", &agents)] {
            writeln!(out, "{title} (allow/deny/pending):")?;
            for (name, [a, d, p]) in map {
                writeln!(out, "  {name:<40} {a}/{d}/{p}")?;
            }
        }
        if !reasons.is_empty() {
            writeln!(out, "deny reasons:")?;
            for (code, n) in &reasons {
                writeln!(out, "  {code:<40} {n}")?;
            }
        }
        writeln!(out, "policy hashes:")?;
        for (hash, n) in &policies {
            writeln!(out, "  {hash} {n}")?;
        }
    }
    Ok(if fail_on_deny && denied > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn tail(log: &Path, lines: usize) -> Result<ExitCode, CommandError> {
    // Read what is there through the same handle that then follows the file, so
    // nothing appended in between is missed.
    let mut file = std::fs::File::open(log)?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut file, &mut text)?;
    let complete = text.rfind('\n').map_or(0, |i| i + 1);
    let mut position = complete as u64;
    let existing: Vec<Receipt> = text[..complete]
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let mut out = std::io::stdout().lock();
    for r in existing.iter().skip(existing.len().saturating_sub(lines)) {
        writeln!(out, "{}", one_line(r))?;
    }
    out.flush()?;
    let mut pending = String::new();
    loop {
        let meta = std::fs::metadata(log).ok();
        let len = meta.as_ref().map_or(0, |m| m.len());
        if len < position || meta.is_some_and(|m| replaced(&m, &file)) {
            // Rotated or truncated: start over with the new file.
            file = std::fs::File::open(log)?;
            position = 0;
        }
        if len > position {
            file.seek(SeekFrom::Start(position))?;
            let mut reader = BufReader::new(&file);
            let mut chunk = String::new();
            let read = reader.read_line(&mut chunk)?;
            position += read as u64;
            pending.push_str(&chunk);
            if pending.ends_with('\n') {
                if let Ok(r) = serde_json::from_str::<Receipt>(pending.trim_end()) {
                    writeln!(out, "{}", one_line(&r))?;
                    out.flush()?;
                }
                pending.clear();
            }
            continue;
        }
        // Following a file has no blocking wait in std; poll gently.
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether the path now names another file than the one open (after rotation).
fn replaced(path_meta: &std::fs::Metadata, open: &std::fs::File) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        open.metadata()
            .is_ok_and(|m| m.ino() != path_meta.ino() || m.dev() != path_meta.dev())
    }
    #[cfg(not(unix))]
    {
        let _ = (path_meta, open);
        false
    }
}
