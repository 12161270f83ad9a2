//! Redis writer.
