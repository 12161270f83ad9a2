//! Between sources and sinks: [`lanes`] (one per writer, chosen by ordering key, three tiers:
//! channel, memory overflow, durable [`spool`]) and the choice of lane ([`routing`]). The acknowledgements that tell a source what became
//! of its events are the ground's ([`crate::ack`]).

pub(crate) mod lanes;
pub(crate) mod routing;
pub mod spool;

pub use lanes::Submitted;
pub(crate) use lanes::{Lane, Pipeline, PipelineShape, WriteNow};
