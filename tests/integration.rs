//! The integration suite: the proxy (in process, or the real binary) on
//! 127.0.0.1:0 in front of the in-process mock upstream.
//!
//! - `transparency`: what passes through is unchanged, both ways;
//! - `streaming`: event streams relayed event by event, recorded API streams byte
//!   for byte, upstream failures mid-stream;
//! - `failures`: bad input and a bad upstream each get a clean error while the
//!   process keeps serving;
//! - `lifecycle`: the binary's commands, HTTPS, admin endpoints, shutdown;
//! - `conformance`: HushSpec vectors, bundled policies, `extends`;
//! - `kernel`: decisions end to end, the adversarial suite;
//! - `properties`: generated inputs against normalisation and decisions;
//! - `receipts`: the signed, chained log and its verifier;
//! - `tools`: governed HTTP tools;
//! - `governance`: governed Chat Completions, plain, with a scripted upstream;
//! - `chat_stream`: governed Chat Completions streams;
//! - `responses`: the governed Responses API, plain and streaming.

// Tests may unwrap: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

#[path = "integration/chat_stream.rs"]
mod chat_stream;
#[path = "integration/conformance.rs"]
mod conformance;
#[path = "integration/failures.rs"]
mod failures;
#[path = "integration/governance.rs"]
mod governance;
#[path = "integration/kernel.rs"]
mod kernel;
#[path = "integration/lifecycle.rs"]
mod lifecycle;
#[path = "integration/properties.rs"]
mod properties;
#[path = "integration/receipts.rs"]
mod receipts;
#[path = "integration/responses.rs"]
mod responses;
#[path = "integration/streaming.rs"]
mod streaming;
#[path = "integration/tools.rs"]
mod tools;
#[path = "integration/transparency.rs"]
mod transparency;
