//! One module per wire surface: what calls a request or response holds, how
//! governed tools are injected, how handled calls are removed and their results
//! spliced back. Adapters do no I/O.
//!
//! - [`chat`]: Chat Completions.

pub mod chat;
