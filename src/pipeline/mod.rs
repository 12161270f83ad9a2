//! Between sources and sinks: [`lanes`] (one per writer, chosen by ordering key, three tiers:
//! channel, memory overflow, durable [`spool`]) and the choice of lane ([`routing`]). The acknowledgements that tell a source what became
//! of its events are the ground's ([`crate::ack`]).

pub mod lanes;
pub mod routing;
pub mod spool;

pub use lanes::{Lane, Pipeline, PipelineShape, Submitted, WriteNow};
