//! Event to stream entry.
