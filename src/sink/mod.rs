//! Sinks.
pub mod redis;
