//! Between sources and sinks: [`lanes`] (one per writer, chosen by ordering key, three tiers:
//! channel, memory overflow, durable [`spool`]), the choice of lane ([`routing`]), and the
//! write [`fence`] of a hot-standby pair. The acknowledgements that tell a source what became
//! of its events are the ground's ([`crate::ack`]).

pub mod fence;
pub mod lanes;
pub mod routing;
pub mod spool;

pub use lanes::{Lane, Pipeline, PipelineShape, Submitted, WriteNow};
