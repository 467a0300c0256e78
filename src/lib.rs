//! tollgate: a transparent reverse proxy for the OpenAI API that governs tool calls.
//!
//! An agent sets `OPENAI_BASE_URL` to tollgate and changes nothing else. Every
//! request and response passes through unchanged, byte for byte, status, headers
//! (less the hop-by-hop ones) and SSE framing included. The governance stages
//! (inject, inspect, decide, sign, act) are described in `ARCHITECTURE.md`.
//!
//! The crate is laid out along the request's path:
//!
//! - [`cli`] and [`config`]: what the operator asked for, validated once;
//! - [`proxy`]: listener, TLS, connections, and the per-request relay pipeline;
//! - [`error`]: tollgate's own errors as OpenAI-shaped responses;
//! - [`gateway`]: what governs a request (policy, receipts, identity, tools),
//!   built once from the configuration;
//! - [`adapter`]: each surface's wire format, as pure functions;
//! - [`turn`]: the turn loop that decides, records and acts on every tool call;
//! - [`kernel`]: decisions about tool calls (HushSpec policies), with no I/O;
//! - [`receipt`]: signed, hash-chained receipts and their log;
//! - [`tools`]: the governed tools tollgate runs itself;
//! - [`certs`]: development certificates for the HTTPS listener.

pub mod adapter;
pub mod certs;
pub mod cli;
pub mod commands;
pub mod config;
pub mod error;
pub mod gateway;
pub mod kernel;
pub mod keys;
pub mod proxy;
pub mod receipt;
pub mod telemetry;
pub mod tools;
pub mod turn;
