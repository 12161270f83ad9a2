//! The PostgreSQL transactional outbox source (`OUTBOX_DATABASE_URL`): an application inserts
//! a row into the outbox table in the same transaction as its own change; the relay here moves
//! committed rows into a stream, exactly once, per ordering key in `id` order, milliseconds
//! after the commit, and then deletes them (or marks them, `OUTBOX_KEEP=true`).
//!
//! - [`schema`]: the table, `eslstream outbox init`, and the start-up check;
//! - [`connect`]: the URL (libpq's `sslmode`), TLS, and the session that turns `NOTIFY` into
//!   wake-ups;
//! - [`row`]: a fetched row as an [`crate::envelope::Envelope`];
//! - [`relay`]: the loop: one active relay per table (an advisory lock), fetch, hand to the
//!   pipeline, wait for the acknowledgements, delete;
//! - [`OutboxStatus`]: what `/health` shows of it.
//!
//! The table is the durable buffer: outbox events never go to the agent's spool. While Redis
//! is down the pipeline hands them back ([`crate::ack::AckStatus::Deferred`]) and
//! the rows simply stay in the table.

pub mod cli;
pub(crate) mod connect;
pub(crate) mod relay;
pub(crate) mod row;
pub(crate) mod schema;

use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;
use serde::Serialize;

use crate::config::{mask_url, ConfigError, OutboxConfig};
use crate::shutdown::Shutdown;
use crate::source::Intake;

/// Checks what the outbox owns of its configuration: the URL's form (libpq's) and the table
/// name. A [`ConfigError`], as for any bad value (exit 2).
pub(crate) fn check_config(config: &OutboxConfig) -> Result<(), ConfigError> {
    if let Err(e) = connect::ConnectTarget::parse(&config.database_url) {
        return Err(ConfigError {
            variable: "OUTBOX_DATABASE_URL".into(),
            value: mask_url(&config.database_url),
            expected: format!("a PostgreSQL URL such as postgres://user:password@host:5432/db?sslmode=require ({e})"),
        });
    }
    if schema::TableName::parse(&config.table).is_none() {
        return Err(ConfigError {
            variable: "OUTBOX_TABLE".into(),
            value: config.table.clone(),
            expected: "a table name such as eslstream_outbox or app.outbox (letters, digits, _; at most 63 each)"
                .into(),
        });
    }
    Ok(())
}

/// The relay's role as `/health` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Role {
    /// Not connected to PostgreSQL (yet, or since a failure).
    #[default]
    Connecting,
    /// Connected; another agent's relay holds the table's lock.
    Standby,
    /// Connected, holding the lock: this agent relays the table.
    Active,
    /// The table is missing or wrong; nothing is relayed until it is fixed.
    Misconfigured,
    /// The agent is stopping.
    Stopped,
}

/// What `/health` shows of the outbox (`data.outbox`).
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct OutboxView {
    pub table: String,
    pub role: Role,
    pub connected: bool,
    /// Rows in the table waiting to be relayed, as of the last count.
    pub backlog_rows: Option<u64>,
    /// Age of the oldest waiting row (`created_at`), as of the last count.
    pub oldest_row_age_seconds: Option<f64>,
    /// Rows relayed (written, duplicate or dead-lettered, then removed) since start.
    pub relayed_rows: u64,
    /// The idempotency keys' producer.
    pub producer: Option<String>,
    pub last_error: Option<String>,
}

/// The relay's live state, shared with the health monitor.
#[derive(Default)]
pub(crate) struct OutboxStatus(Mutex<OutboxView>);

impl OutboxStatus {
    pub(crate) fn view(&self) -> OutboxView {
        self.0.lock().clone()
    }

    fn update(&self, f: impl FnOnce(&mut OutboxView)) {
        f(&mut self.0.lock());
    }
}

/// The running relay thread.
pub(crate) struct OutboxSource {
    pub status: Arc<OutboxStatus>,
    thread: Option<JoinHandle<()>>,
}

impl OutboxSource {
    /// Checks the table once when the database answers within `startup_check` (a wrong table
    /// is an error the caller reports and exits 2 for), then starts the relay on its own
    /// thread.
    pub(crate) fn start(
        config: OutboxConfig,
        intake: Arc<Intake>,
        shutdown: Shutdown,
        startup_check: std::time::Duration,
    ) -> Result<OutboxSource, StartError> {
        let status = Arc::new(OutboxStatus::default());
        let relay = relay::Relay::new(config, intake, status.clone(), shutdown)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StartError::Io(std::io::Error::other(format!("cannot start the outbox runtime: {e}"))))?;
        runtime.block_on(relay.check_at_start(startup_check))?;
        let thread = std::thread::Builder::new()
            .name("outbox-relay".into())
            .spawn(move || runtime.block_on(relay.run()))
            .map_err(StartError::Io)?;
        Ok(OutboxSource { status, thread: Some(thread) })
    }

    /// Waits for the relay to finish its batch and stop (after the agent's shutdown trigger).
    pub(crate) fn join(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Why the outbox source cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The table is missing or wrong (exit 2: the configuration or the database must change).
    #[error("OUTBOX_TABLE: {0}")]
    Schema(schema::SchemaProblems),
    #[error("OUTBOX_DATABASE_URL: {0}")]
    Url(String),
    #[error("{0}")]
    Io(std::io::Error),
}
