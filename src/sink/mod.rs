//! Sinks: where events end up. [`writer`] owns the per-lane loop; [`entry`] turns an event into
//! its stream entry's `event` JSON; [`redis`] owns the connection and the idempotent write;
//! [`resp`] encodes a batch's commands; [`dlq`] keeps what Redis refused for good;
//! [`permissions`] checks that the Redis user may do all of it.

pub mod dlq;
pub mod entry;
pub mod permissions;
pub mod redis;
pub mod resp;
pub mod writer;
