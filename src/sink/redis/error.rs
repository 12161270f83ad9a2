//! What a failed write means: [`WriteError`] and how a Redis error becomes one.

use redis::{ErrorKind, RedisError};

/// Why a whole write failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Nothing is known about what happened (connection lost, timeout): retry everything;
    /// idempotency makes that safe.
    #[error("connection to Redis failed: {0}")]
    Connection(String),
    /// Redis answered with an error that may pass (OOM, LOADING, BUSY, paused ...).
    #[error("Redis is refusing writes for now: {0}")]
    Transient(String),
    /// The node is not (or no longer) the primary for these keys (`READONLY`, `MOVED`, `ASK`,
    /// `CLUSTERDOWN`, `TRYAGAIN`): find the primary again, then retry.
    #[error("Redis node is not the primary for these keys: {0}")]
    Topology(String),
    /// The batch was written on the primary but fewer replicas than `REDIS_WAIT_REPLICAS`
    /// confirmed it within `REDIS_WAIT_TIMEOUT`: retried through the checking path.
    #[error("write not confirmed by enough replicas: {0}")]
    Unconfirmed(String),
    /// A hot-standby pair's fence refused the write: another agent holds a newer lease and
    /// has written to the stream. Nothing of the batch was written.
    #[error("fenced: {0}")]
    Fenced(String),
}

impl WriteError {
    pub fn kind(&self) -> &'static str {
        match self {
            WriteError::Connection(_) => "connection",
            WriteError::Transient(_) => "transient",
            WriteError::Topology(_) => "topology",
            WriteError::Unconfirmed(_) => "unconfirmed",
            WriteError::Fenced(_) => "fenced",
        }
    }

    /// Whether the batch may have been written although it failed (the retry must check).
    pub fn maybe_written(&self) -> bool {
        matches!(self, WriteError::Connection(_) | WriteError::Topology(_) | WriteError::Unconfirmed(_))
    }
}

/// Error codes saying the node is not where these keys are written now.
const TOPOLOGY_CODES: &[&str] = &["MOVED", "ASK", "READONLY", "CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN"];

/// Whether an error's text names a topology error code (also inside an aborted
/// transaction's list, where redis-rs spells them `Moved`, `ReadOnly` ...).
fn names_topology_error(text: &str) -> bool {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .any(|word| TOPOLOGY_CODES.iter().any(|code| word.eq_ignore_ascii_case(code)) || word == "ReadOnly")
}

/// A failed request as a [`WriteError`].
pub(crate) fn classify(e: RedisError) -> WriteError {
    let text = e.to_string();
    if e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.kind() == ErrorKind::Io
    {
        WriteError::Connection(text)
    } else if e.code().is_some_and(|c| TOPOLOGY_CODES.contains(&c)) || names_topology_error(&text) {
        WriteError::Topology(text)
    } else {
        WriteError::Transient(text)
    }
}

/// An error reply to a whole request as a [`WriteError`].
pub(super) fn server_error(err: &redis::ServerError) -> WriteError {
    let text = server_error_text(err);
    if TOPOLOGY_CODES.contains(&err.code()) {
        WriteError::Topology(text)
    } else {
        WriteError::Transient(text)
    }
}

/// An error reply as text: its code and message.
pub(super) fn server_error_text(err: &redis::ServerError) -> String {
    format!("{} {}", err.code(), err.details().unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology_errors_are_recognised() {
        assert!(names_topology_error("Transaction aborted: [(Index 3, error: Moved: 1234 127.0.0.1:7001)]"));
        assert!(names_topology_error("ReadOnly: You can't write against a read only replica."));
        assert!(names_topology_error("CLUSTERDOWN The cluster is down"));
        assert!(names_topology_error("ASK 866 127.0.0.1:7002"));
        assert!(!names_topology_error("OOM command not allowed when used memory > 'maxmemory'"));
        assert!(!names_topology_error("TASK failed; MOVEDX"));
        let e = classify(RedisError::from((ErrorKind::Server(redis::ServerErrorKind::ReadOnly), "read only")));
        assert_eq!(e.kind(), "topology");
        assert!(e.maybe_written() && WriteError::Unconfirmed(String::new()).maybe_written());
        assert!(!WriteError::Transient(String::new()).maybe_written());
    }
}
