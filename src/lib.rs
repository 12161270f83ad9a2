//! eslstream: reads FreeSWITCH's event socket and writes every event to Redis Streams.
//!
//! Data flows one way: a **source** (the ESL client in [`esl::client`]) turns bytes into
//! [`envelope::Envelope`]s, the [`pipeline`] routes them by call onto lanes that never block the
//! source, and the [`sink`] writers turn them into idempotent, pipelined `XADD`s.

pub mod app;
pub mod civil;
pub mod config;
pub mod dlq;
pub mod dlq_api;
pub mod entry;
pub mod envelope;
pub mod esl;
pub mod health;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod ops;
pub mod pipeline;
pub mod routing;
pub mod shutdown;
pub mod simulate;
pub mod sink;
pub mod spool;
pub mod state;
pub mod summary;
pub mod trim;
