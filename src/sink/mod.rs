//! Sinks: where events end up. [`redis`] owns the connection and the idempotent write;
//! [`resp`] encodes a batch's commands; [`writer`] owns the per-lane loop around it.

pub mod redis;
pub mod resp;
pub mod writer;
