//! Signed and durable receipts per second, with 1 and with 64 concurrent writers.
//!
//! `cargo run --release --example receipts_bench [DIR]` appends to a fresh log in
//! DIR (default `bench/out`, on the same disk as the repository; never tmpfs, where
//! a sync costs nothing) for a few seconds per writer count and prints one JSON
//! line per run. Each append returns only after its record is signed, written and
//! synced (group commit).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use serde_json::json;
use tollgate::receipt::{ActionRecord, Draft, LogOptions, Reason, ReceiptLog};

fn draft(i: u64) -> Draft {
    Draft {
        decision: if i.is_multiple_of(5) {
            "deny".into()
        } else {
            "allow".into()
        },
        reason: Reason {
            code: if i.is_multiple_of(5) {
                "tool_access.block".into()
            } else {
                "allow".into()
            },
            message:
                "The call to `search_docs` is allowed: tool \"search_docs\" is allowed by default."
                    .into(),
            matched_rule: Some("rules.tool_access.default".into()),
        },
        server_id: "bench".into(),
        agent_id: "key:0123456789abcdef".into(),
        request_id: format!("tgr_{i:032x}"),
        surface: "chat.completions".into(),
        action: ActionRecord {
            tool_name: "search_docs".into(),
            tool_call_id: format!("call_{i:024x}"),
            parameters: json!({"query": "how do I reset my password", "limit": 5, "filters": {"lang": "en"}}),
            parameters_hash: "9f".repeat(32),
        },
        policy_hash: "2869124fd610a652192e58626fe1ebed8e8444aea43e35c8ef26d97c060ec053".into(),
        metadata: json!({"adapter": "chat", "route": "client", "round": 0}),
    }
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("bench/out"));
    std::fs::create_dir_all(&dir).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut out = std::io::stdout().lock();
    for writers in [1u64, 64] {
        let path = dir.join(format!("receipts-bench-{writers}.jsonl"));
        for old in tollgate::receipt::log::rotated_files(&path) {
            let _ = std::fs::remove_file(old);
        }
        let _ = std::fs::remove_file(&path);
        let log = Arc::new(
            ReceiptLog::open(
                &path,
                SigningKey::from_bytes(&[5; 32]),
                LogOptions::default(),
            )
            .unwrap(),
        );
        let seconds = 5.0;
        let (count, elapsed) = runtime.block_on(async {
            let deadline = Instant::now() + Duration::from_secs_f64(seconds);
            let started = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for w in 0..writers {
                let log = log.clone();
                tasks.spawn(async move {
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        log.append(draft(w * 1_000_000 + n)).await.unwrap();
                        n += 1;
                    }
                    n
                });
            }
            let mut total = 0;
            while let Some(n) = tasks.join_next().await {
                total += n.unwrap();
            }
            (total, started.elapsed().as_secs_f64())
        });
        drop(log);
        let mut files = tollgate::receipt::log::rotated_files(&path);
        files.push(path.clone());
        let report = tollgate::receipt::verify::verify(
            &files,
            &[SigningKey::from_bytes(&[5; 32]).verifying_key()],
        );
        assert!(report.ok(), "{:?}", report.failure);
        writeln!(
            out,
            "{}",
            json!({"writers": writers, "receipts": count, "seconds": elapsed, "per_second": count as f64 / elapsed, "verified": report.records})
        )
        .unwrap();
        for file in files {
            let _ = std::fs::remove_file(file);
        }
    }
}
