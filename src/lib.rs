//! eslstream: reads FreeSWITCH's event socket (and, optionally, HTTP and a PostgreSQL outbox)
//! and writes every event to Redis Streams, exactly once and in per-key order.
//!
//! Data flows one way, and the folders show it:
//! - [`source`]: where events come from. Each source turns what it receives into
//!   [`envelope::Envelope`]s and hands them to the pipeline through one [`source::Intake`].
//! - [`pipeline`]: lanes chosen by ordering key, each backed by a durable spool, that never
//!   block a source.
//! - [`sink`]: the per-lane writers, the idempotent Redis write, and the dead-letter store.
//! - [`ops`] beside them: the admin HTTP server, health, trimmer and summary line; [`ha`],
//!   the hot-standby pair (lease, fence, replay window), which the reader hands events to
//!   through a [`source::Gate`] and the writers read through a [`sink::writer::WriteFence`].
//!   The fake FreeSWITCH of the demo, tests and benches is a crate of its own
//!   (`simulate/`, the `eslstream-simulate` binary): the agent does not carry it.
//!
//! Under all of them, the ground: [`envelope`] (what flows), [`ack`] (what became of an event,
//! for the source that asked), [`config`] (the environment), [`telemetry`] (metrics and logs),
//! [`esl`] (the event socket's format, shared by reader, writer and simulator), [`http`] (a
//! small HTTP server generic over its state, handed its routes by their owners), [`shutdown`],
//! [`state`] and [`civil`] (dates). [`app`] wires the wings together and alone names [`ops`].
//! `tests/layout.rs` checks that the imports say so.

#![warn(unreachable_pub)]

pub mod ack;
pub mod app;
pub mod civil;
pub mod config;
pub mod envelope;
pub mod esl;
pub(crate) mod ha;
pub mod http;
pub mod ops;
pub mod pipeline;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod state;
pub mod telemetry;
