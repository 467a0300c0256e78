//! The decision kernel: what tollgate decides about one tool call, with no I/O.
//!
//! Today it holds the HushSpec policy engine ([`policy`]); capability tokens,
//! argument normalisation, velocity and approvals join it, and `decide()` will put
//! them together: capability, then policy, then approval, failing closed.

pub mod approvals;
pub mod egress;
pub mod normalize;
pub mod policy;
pub mod secrets;
pub mod velocity;
