//! The receipt verifier on arbitrary log bytes: never panics, and never accepts
//! a log unless every line is a record signed by the trusted key.
#![no_main]

use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;
use tollgate::receipt::verify::verify;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("tollgate-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("receipts.jsonl");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let key = SigningKey::from_bytes(&[1; 32]).verifying_key();
    let report = verify(&[path], &[key]);
    if report.ok() {
        // Random bytes can only pass when they hold no record at all.
        assert!(report.records == 0 || data.windows(8).any(|w| w == b"ed25519:"));
    }
});
