//! Sinks: where events end up. [`writer`] owns the per-lane loop; [`entry`] holds a stream
//! entry's `event` field (its JSON is made by [`crate::esl::json`]); [`redis`] owns the
//! connection and the idempotent write (one concern per file, [`redis::keys`] naming every key);
//! [`connect`] makes every connection (credentials, TLS, timeouts); [`target`] finds the
//! primary (one server, Sentinel, or per stream in a cluster) and is what writers write to;
//! [`cluster`] routes a batch over a Redis Cluster's primaries; [`durability`] checks that
//! the server itself keeps what it is given;
//! [`resp`] encodes a batch's commands; [`dlq`] keeps what Redis refused for good;
//! [`permissions`] checks that the Redis user may do all of it.

pub mod cluster;
pub(crate) mod connect;
pub mod dlq;
pub(crate) mod durability;
pub mod entry;
pub(crate) mod permissions;
pub mod redis;
pub mod resp;
pub(crate) mod target;
pub(crate) mod writer;
