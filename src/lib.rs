//! eslstream: reads FreeSWITCH's event socket (and, optionally, HTTP and a PostgreSQL outbox)
//! and writes every event to Redis Streams, exactly once and in per-key order.
//!
//! Data flows one way, and the folders show it:
//! - [`source`]: where events come from. Each source turns what it receives into
//!   [`envelope::Envelope`]s and hands them to the pipeline through one [`source::Intake`].
//! - [`pipeline`]: lanes chosen by ordering key, each backed by a durable spool, that never
//!   block a source; acknowledgements back to the source that asked ([`pipeline::ack`]).
//! - [`sink`]: the per-lane writers, the idempotent Redis write, and the dead-letter store.
//! - [`ops`] beside them: the admin HTTP server, health, metrics, trimmer and summary line.
//!
//! [`app`] wires them together; [`config`] reads the environment.

pub mod app;
pub mod civil;
pub mod config;
pub mod envelope;
pub mod logging;
pub mod ops;
pub mod pipeline;
pub mod shutdown;
pub mod simulate;
pub mod sink;
pub mod source;
pub mod state;
