//! `decide()` for typical calls under the bundled default policy.
//!
//! Run: `cargo bench --bench decide`. The median is reported in BENCHMARKS.md.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tollgate::kernel::policy::Policy;
use tollgate::kernel::{Call, Kernel, Now};

fn bench(c: &mut Criterion) {
    let kernel = Kernel::new(Policy::bundled("default").unwrap());
    let typical = r#"{"query":"how do I reset my password","url":"https://docs.example.com/account/reset","limit":5,"filters":{"lang":"en","tags":["account","security"]}}"#;
    let command = r#"{"command":"git log --oneline -n 20 -- src/","cwd":"/home/dev/project","timeout_ms":30000}"#;
    let large = format!(
        r#"{{"title":"Quarterly report","body":"{}","recipients":["a@example.com","b@example.com"],"attachments":[{{"name":"q3.csv","url":"https://files.example.com/q3.csv"}}]}}"#,
        "The numbers for the quarter are in the attached sheet. ".repeat(60)
    );
    let mut group = c.benchmark_group("decide");
    for (name, tool, args) in [
        ("typical search call", "search_docs", typical),
        ("shell command", "run_command", command),
        ("3 KiB message", "send_email", large.as_str()),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let call = Call {
                    agent_id: "key:0123456789abcdef",
                    scope: None,
                    tool,
                    arguments: black_box(args),
                    has_side_effects: false,
                };
                black_box(kernel.decide(&call, Now::current()))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
