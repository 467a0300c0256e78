//! Signed receipts: one per decision, in a tamper-evident log.
//!
//! - [`record`]: the record, its canonical bytes and its Ed25519 signature;
//! - [`log`]: the append-only, chained, durable log with group commit, recovery
//!   and rotation;
//! - [`verify`]: checking logs, naming the first bad record and the check it failed.

pub mod log;
pub mod record;
pub mod verify;

pub use log::{Grouping, LogError, LogOptions, ReceiptLog};
pub use record::{ActionRecord, Draft, DraftContext, Reason, Receipt};
