//! Sinks: where events end up. [`redis`] owns the connection and the idempotent write;
//! [`writer`] owns the per-lane loop around it.

pub mod redis;
pub mod writer;
