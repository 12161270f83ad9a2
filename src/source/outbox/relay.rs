//! The relay loop: one active relay per outbox table, moving committed rows into their
//! stream in `id` order and removing them once Redis has them.
//!
//! **Which rows, in which order.** `bigserial` ids are drawn at insert, but transactions commit
//! in any order, so "rows with `id` above the last one published" would skip a row whose
//! transaction commits late, and would publish rows of one ordering key out of order. The
//! relay keeps a *horizon*: an id up to which every row is final (committed, or never to
//! appear), and publishes only rows at or below it, in `id` order. To move the horizon it
//! reads the sequence's last value `S`, then the transactions holding `RowExclusiveLock` on
//! the table (`pg_locks`). An inserting statement takes that lock before it draws its id and
//! keeps it until its transaction ends, so every id up to `S` was drawn by one of those
//! transactions or by one already finished: once they have all ended, `S` is the horizon.
//! A transaction still open holds back only the rows with higher ids, only of this table, and
//! only while it runs; nothing is ever skipped, since the relay keeps no cursor: it reads what
//! is left in the table. This needs ids drawn by the insert itself (the column default; not a
//! `nextval` called ahead in another statement) from a sequence with `CACHE 1` (checked at
//! start). It gives one global `id` order, so per ordering key too, whichever transactions
//! the rows came from.
//!
//! **Exactly once.** Each row's idempotency key is (producer, row id): a row written but not
//! yet deleted when the agent dies, or relayed by two agents around a takeover, is written
//! once; the second copy is reported as a duplicate and its row removed.
//!
//! **One active relay.** The relay takes a session-level advisory lock keyed by the table;
//! another agent's relay on the same table waits as standby, trying again every second, and
//! takes over when the active one's session ends (a crash closes its socket at once; a network
//! cut is noticed by TCP keepalives and `client_connection_check_interval` within seconds).
//!
//! **Waking up.** The table's trigger `NOTIFY`s on every insert, delivered at commit: the
//! relay fetches at once. With no notification it polls every `OUTBOX_POLL_INTERVAL`; when
//! rows are there but not yet eligible (an older transaction is still running) it retries
//! within milliseconds.
//!
//! **Removing.** Fetch and delete are one statement each (autocommit, no transaction held
//! open across the Redis round trip), the delete with `synchronous_commit = off`: a delete
//! lost in a database crash only means a row is relayed again, which its key makes harmless.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::types::ToSql;
use tracing::{error, info, warn};

use crate::ack::AckStatus;
use crate::config::OutboxConfig;
use crate::envelope::Source;
use crate::shutdown::Shutdown;
use crate::source::outbox::connect::{describe, ConnectTarget, Session};
use crate::source::outbox::row::{OutboxRow, RowEncoder, SELECT_COLUMNS};
use crate::source::outbox::schema::{self, SchemaProblems, TableName, CHANNEL};
use crate::source::outbox::{OutboxStatus, Role, StartError};
use crate::source::Intake;
use crate::telemetry::logging::RateLimit;
use crate::telemetry::metrics::metrics;

/// How long a batch may wait for its acknowledgements before it is given up (its rows stay
/// and are fetched again; what was written meanwhile is then a duplicate).
const ACK_WAIT: Duration = Duration::from_secs(30);
/// How long a batch may still wait for its acknowledgements once the agent stops.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How often a standby tries for the lock.
const STANDBY_RETRY: Duration = Duration::from_secs(1);
/// How often the backlog is counted.
const COUNT_EVERY: Duration = Duration::from_secs(2);
/// Reconnection backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a misconfigured table waits before it is checked again.
const RECHECK_AFTER: Duration = Duration::from_secs(30);
/// Retry bounds while the horizon waits for a writing transaction to end.
const HELD_BACK_MIN: Duration = Duration::from_millis(1);
const HELD_BACK_MAX: Duration = Duration::from_millis(100);

static DEFER_WARN: RateLimit = RateLimit::new(Duration::from_secs(10));

/// Why a session with the database ended.
enum SessionEnd {
    /// The agent is stopping.
    Shutdown,
    /// The connection failed or a statement did.
    Lost(String),
    /// The table is missing or wrong.
    Schema(SchemaProblems),
}

impl From<tokio_postgres::Error> for SessionEnd {
    fn from(e: tokio_postgres::Error) -> SessionEnd {
        SessionEnd::Lost(describe(&e))
    }
}

/// The statements of one table, written once.
struct Statements {
    /// `$1` the batch size, `$2` the horizon.
    fetch: String,
    count: String,
    remove: String,
}

impl Statements {
    fn new(table: &TableName, keep: bool) -> Statements {
        let t = table.sql();
        let unpublished = if keep { " AND published_at IS NULL" } else { "" };
        let where_unpublished = if keep { " WHERE published_at IS NULL" } else { "" };
        Statements {
            fetch: format!("SELECT {SELECT_COLUMNS} FROM {t} WHERE id <= $2{unpublished} ORDER BY id LIMIT $1"),
            count: format!(
                "SELECT count(*), extract(epoch from clock_timestamp() - min(created_at))::float8 FROM {t}{where_unpublished}"
            ),
            remove: if keep {
                format!("UPDATE {t} SET published_at = clock_timestamp() WHERE id = ANY($1)")
            } else {
                format!("DELETE FROM {t} WHERE id = ANY($1)")
            },
        }
    }
}

/// The sequence's last value (0 before the first).
const LAST_ID: &str = "SELECT coalesce(pg_sequence_last_value($1::text::regclass), 0)";
/// The other sessions' transactions that may be inserting into the table now.
const WRITERS: &str = "SELECT coalesce(array_agg(virtualtransaction), '{}') FROM pg_locks \
     WHERE locktype = 'relation' AND database = $1 AND relation = $2 AND mode = 'RowExclusiveLock' AND granted \
     AND pid IS DISTINCT FROM pg_backend_pid()";
/// Whether any of them still runs.
const STILL_WRITING: &str = "SELECT EXISTS (SELECT 1 FROM pg_locks \
     WHERE locktype = 'relation' AND database = $1 AND relation = $2 AND virtualtransaction = ANY($3))";

/// Up to which id every row of the table is final (see the module's comment).
#[derive(Debug, Default)]
struct Horizon {
    /// Every row with an id up to this one is committed or will never appear.
    safe: i64,
    /// The next horizon and the transactions it waits for.
    next: Option<(i64, Vec<String>)>,
}

impl Horizon {
    /// Moves the horizon as far as the table's writers allow. Returns whether ids above it
    /// were drawn by transactions still running (rows may follow in a moment).
    async fn advance(&mut self, c: &tokio_postgres::Client, table: &TableInfo) -> Result<bool, SessionEnd> {
        if self.next.is_none() {
            // The sequence first, then the lock holders: see the module's comment.
            let (sequence, locks): (&[&(dyn ToSql + Sync)], &[&(dyn ToSql + Sync)]) =
                (&[&table.sequence], &[&table.database, &table.oid]);
            let (last, writers) = tokio::try_join!(c.query_one(LAST_ID, sequence), c.query_one(WRITERS, locks))?;
            let last: i64 = last.get(0);
            if last <= self.safe {
                return Ok(false);
            }
            self.next = Some((last, writers.get(0)));
        }
        let (last, writers) = self.next.as_ref().expect("just set");
        if !writers.is_empty() {
            let running: bool = c.query_one(STILL_WRITING, &[&table.database, &table.oid, writers]).await?.get(0);
            if running {
                return Ok(true);
            }
        }
        self.safe = *last;
        self.next = None;
        Ok(false)
    }
}

/// The checked table, as the relay's statements use it.
struct TableInfo {
    resolved: String,
    oid: u32,
    database: u32,
    sequence: String,
}

/// The relay of one outbox table.
pub(crate) struct Relay {
    config: OutboxConfig,
    target: ConnectTarget,
    table: TableName,
    sql: Statements,
    intake: Arc<Intake>,
    status: Arc<OutboxStatus>,
    shutdown: Shutdown,
    encoder: Option<RowEncoder>,
    /// The table as checked by this session.
    info: Option<TableInfo>,
    /// The role last logged (a session that fails the same way again logs nothing new).
    announced: Option<Role>,
}

impl Relay {
    pub(crate) fn new(
        config: OutboxConfig,
        intake: Arc<Intake>,
        status: Arc<OutboxStatus>,
        shutdown: Shutdown,
    ) -> Result<Relay, StartError> {
        let target = ConnectTarget::parse(&config.database_url).map_err(StartError::Url)?;
        let table = TableName::parse(&config.table).ok_or_else(|| StartError::Url("OUTBOX_TABLE is invalid".into()))?;
        status.update(|v| v.table = table.to_string());
        let sql = Statements::new(&table, config.keep);
        Ok(Relay { config, target, table, sql, intake, status, shutdown, encoder: None, info: None, announced: None })
    }

    /// Connects once and checks the table, when the database answers within `wait`: a
    /// missing or wrong table fails the start. A database that does not answer is not an
    /// error: the relay keeps trying and `/health` says so.
    pub(crate) async fn check_at_start(&self, wait: Duration) -> Result<(), StartError> {
        let attempt = async {
            let session = self.target.connect().await?;
            schema::check(&session.client, &self.table, self.config.keep).await.map_err(|e| describe(&e))
        };
        match tokio::time::timeout(wait, attempt).await {
            Ok(Ok(Err(problems))) => Err(StartError::Schema(problems)),
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Err(e)) => {
                warn!(error = %e, "the outbox database does not answer yet; the relay will keep trying");
                Ok(())
            }
            Err(_) => {
                warn!(wait = ?wait, "the outbox database did not answer in time; the relay will keep trying");
                Ok(())
            }
        }
    }

    /// Connects, relays, reconnects with backoff, until the agent stops.
    pub(crate) async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        let mut sessions = 0u64;
        let mut last_problem: Option<String> = None;
        while !self.shutdown.is_triggered() {
            let connected = tokio::select! {
                connected = self.target.connect() => connected,
                _ = self.shutdown.wait() => break,
            };
            let wait = match connected {
                Err(e) => {
                    self.lost(&e, &mut last_problem);
                    backoff
                }
                Ok(session) => {
                    if sessions > 0 {
                        metrics().outbox.reconnections.inc();
                    }
                    sessions += 1;
                    // A database that stops answering must not hold the agent's shutdown: past
                    // the grace the session is dropped (its rows stay; a re-send is harmless).
                    let shutdown = self.shutdown.clone();
                    let end = tokio::select! {
                        end = self.serve(&session) => end,
                        _ = async {
                            shutdown.wait().await;
                            tokio::time::sleep(STOP_GRACE * 2).await;
                        } => SessionEnd::Shutdown,
                    };
                    metrics().outbox.active.set(0);
                    match end {
                        SessionEnd::Shutdown => break,
                        SessionEnd::Lost(e) => {
                            self.lost(&e, &mut last_problem);
                            backoff = BACKOFF_MIN;
                            backoff
                        }
                        SessionEnd::Schema(problems) => {
                            let text = problems.to_string();
                            if last_problem.as_deref() != Some(text.as_str()) {
                                error!(table = %self.table, problems = %text, "the outbox table is not usable; nothing is relayed until it is fixed");
                                last_problem = Some(text.clone());
                            }
                            self.status.update(|v| {
                                v.role = Role::Misconfigured;
                                v.connected = true;
                                v.last_error = Some(text);
                            });
                            RECHECK_AFTER
                        }
                    }
                }
            };
            tokio::select! {
                _ = self.shutdown.wait() => break,
                _ = tokio::time::sleep(wait) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        self.status.update(|v| {
            v.role = Role::Stopped;
            v.connected = false;
        });
    }

    /// A failed connection or session: logged once per distinct error, shown in `/health`.
    fn lost(&mut self, e: &str, last: &mut Option<String>) {
        if last.as_deref() != Some(e) {
            warn!(error = %e, "outbox database unreachable or connection lost; reconnecting");
            *last = Some(e.to_owned());
            self.announced = None;
        }
        self.status.update(|v| {
            v.role = Role::Connecting;
            v.connected = false;
            v.last_error = Some(e.to_owned());
        });
    }

    /// One session: set up, check, wait for the lock, relay.
    async fn serve(&mut self, session: &Session) -> SessionEnd {
        match self.prepare(session).await {
            Ok(()) => {}
            Err(end) => return end,
        }
        match self.standby(session).await {
            Ok(()) => {}
            Err(end) => return end,
        }
        match self.relay(session).await {
            Err(end) => end,
            Ok(()) => SessionEnd::Shutdown,
        }
    }

    async fn prepare(&mut self, session: &Session) -> Result<(), SessionEnd> {
        let c = &session.client;
        // A dead client is noticed by the server within seconds, so its lock is freed.
        c.batch_execute(
            "SET synchronous_commit = off; SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2; \
             SET tcp_keepalives_count = 3",
        )
        .await?;
        let _ = c.batch_execute("SET client_connection_check_interval = '1s'").await; // PostgreSQL 14+
        let checked = match schema::check(c, &self.table, self.config.keep).await? {
            Ok(checked) => checked,
            Err(problems) => return Err(SessionEnd::Schema(problems)),
        };
        let db = c
            .query_one("SELECT current_database(), oid FROM pg_database WHERE datname = current_database()", &[])
            .await?;
        let (db_name, database): (String, u32) = (db.get(0), db.get(1));
        if self.encoder.is_none() {
            let resolved = &checked.resolved;
            let producer = self.config.producer.clone().unwrap_or_else(|| format!("{db_name}.{resolved}"));
            self.status.update(|v| v.producer = Some(producer.clone()));
            self.encoder = Some(RowEncoder::new(producer, self.config.stream_target()));
        }
        self.info =
            Some(TableInfo { resolved: checked.resolved, oid: checked.oid, database, sequence: checked.sequence });
        c.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        Ok(())
    }

    /// Waits as standby until this session holds the table's lock.
    async fn standby(&mut self, session: &Session) -> Result<(), SessionEnd> {
        let key = format!("eslstream outbox {}", self.info.as_ref().map_or("", |t| t.resolved.as_str()));
        let mut announced = false;
        let mut counted = Instant::now() - COUNT_EVERY;
        loop {
            let row = session.client.query_one("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", &[&key]).await?;
            if row.get::<_, bool>(0) {
                if self.announced != Some(Role::Active) {
                    info!(table = %self.table, producer = %self.producer(), "outbox relay active");
                    self.announced = Some(Role::Active);
                }
                self.status.update(|v| {
                    v.role = Role::Active;
                    v.connected = true;
                    v.last_error = None;
                });
                metrics().outbox.active.set(1);
                return Ok(());
            }
            if !announced {
                if self.announced != Some(Role::Standby) {
                    info!(table = %self.table, "another agent relays this outbox; standing by");
                    self.announced = Some(Role::Standby);
                }
                announced = true;
                self.status.update(|v| {
                    v.role = Role::Standby;
                    v.connected = true;
                    v.last_error = None;
                });
            }
            if counted.elapsed() >= COUNT_EVERY {
                self.count(session).await?;
                counted = Instant::now();
            }
            tokio::select! {
                _ = self.shutdown.wait() => return Err(SessionEnd::Shutdown),
                _ = tokio::time::sleep(STANDBY_RETRY) => {}
            }
            if let Some(why) = session.closed() {
                return Err(SessionEnd::Lost(why));
            }
        }
    }

    fn producer(&self) -> &str {
        self.encoder.as_ref().map(RowEncoder::producer).unwrap_or_default()
    }

    /// Relays until the session ends; never returns `Ok`.
    async fn relay(&mut self, session: &Session) -> Result<(), SessionEnd> {
        let mut counted = Instant::now() - COUNT_EVERY;
        let mut held_back = HELD_BACK_MIN;
        let mut deferred = BACKOFF_MIN;
        let mut horizon = Horizon::default();
        let mut behind = false;
        loop {
            if self.shutdown.is_triggered() {
                return Err(SessionEnd::Shutdown);
            }
            if let Some(why) = session.closed() {
                return Err(SessionEnd::Lost(why));
            }
            if counted.elapsed() >= COUNT_EVERY {
                self.count(session).await?;
                counted = Instant::now();
            }
            let info = self.info.as_ref().expect("set up before relaying");
            // A full batch last time: rows below the horizon are still waiting.
            let writing = if behind { false } else { horizon.advance(&session.client, info).await? };
            let limit = self.config.batch_size as i64;
            let rows = session.client.query(&self.sql.fetch, &[&limit, &horizon.safe]).await?;
            let rows = rows.iter().map(OutboxRow::from_row).collect::<Result<Vec<_>, _>>()?;
            behind = rows.len() == self.config.batch_size;
            if rows.is_empty() {
                // A transaction writing to the table is still open: its commit notifies, else
                // look again shortly.
                let pause = if writing {
                    let pause = held_back;
                    held_back = (held_back * 2).min(HELD_BACK_MAX);
                    pause
                } else {
                    held_back = HELD_BACK_MIN;
                    self.config.poll_interval
                };
                tokio::select! {
                    _ = self.shutdown.wait() => return Err(SessionEnd::Shutdown),
                    _ = session.wait(pause) => {}
                }
                continue;
            }
            held_back = HELD_BACK_MIN;
            if self.relay_batch(session, &rows).await? {
                deferred = BACKOFF_MIN;
            } else {
                // The pipeline cannot take them now (Redis down, memory full): they stay in
                // the table and are fetched again after a pause.
                behind = true;
                tokio::select! {
                    _ = self.shutdown.wait() => return Err(SessionEnd::Shutdown),
                    _ = tokio::time::sleep(deferred) => {}
                }
                deferred = (deferred * 2).min(BACKOFF_MAX);
            }
        }
    }

    /// Hands one batch to the pipeline, waits for its outcomes, removes the rows that are
    /// settled. Returns whether every row was.
    async fn relay_batch(&mut self, session: &Session, rows: &[OutboxRow]) -> Result<bool, SessionEnd> {
        let fetched = Instant::now();
        let encoder = self.encoder.as_mut().expect("set up before relaying");
        let envelopes = rows.iter().map(|row| encoder.envelope(row)).collect();
        self.intake.received(Source::Outbox, rows.len() as u64);
        let receiver = self.intake.submit_acked(envelopes);
        // Waits on a little while the agent stops: the writers drain this batch too.
        let wait = receiver.wait(ACK_WAIT);
        tokio::pin!(wait);
        let outcomes = tokio::select! {
            outcomes = &mut wait => outcomes,
            _ = async {
                self.shutdown.wait().await;
                tokio::time::sleep(STOP_GRACE).await;
            } => None,
        };
        let settled_at = fetched.elapsed().as_secs_f64();
        let mut done = Vec::with_capacity(rows.len());
        let mut not_done: Option<&'static str> = None;
        match &outcomes {
            None => not_done = Some("not settled in time"),
            Some(outcomes) => {
                for (row, outcome) in rows.iter().zip(outcomes) {
                    match outcome {
                        AckStatus::Written(_) | AckStatus::Duplicate | AckStatus::DeadLettered(_) => {
                            metrics().outbox.rows.with_label_values(&[outcome.label()]).inc();
                            if let AckStatus::Written(_) = outcome {
                                metrics().outbox.lag.observe(row.age_at_fetch.max(0.0) + settled_at);
                            }
                            done.push(row.id);
                        }
                        other => not_done = not_done.or(Some(other.label())),
                    }
                }
            }
        }
        if !done.is_empty() {
            session.client.execute(&self.sql.remove, &[&done]).await?;
            let n = done.len() as u64;
            self.status.update(|v| v.relayed_rows += n);
        }
        if let Some(why) = not_done {
            if let Some(suppressed) = DEFER_WARN.check() {
                warn!(table = %self.table, waiting = rows.len() - done.len(), why, suppressed, "outbox rows not written now; they stay in the table and are sent again");
            }
        }
        Ok(not_done.is_none())
    }

    /// Counts the backlog for `/health` and `/metrics`.
    async fn count(&self, session: &Session) -> Result<(), SessionEnd> {
        let row = session.client.query_one(&self.sql.count, &[]).await?;
        let rows: i64 = row.get(0);
        let age: Option<f64> = row.get(1);
        metrics().outbox.backlog.set(rows);
        self.status.update(|v| {
            v.backlog_rows = Some(rows as u64);
            v.oldest_row_age_seconds = age.map(|a| (a.max(0.0) * 1000.0).round() / 1000.0);
        });
        Ok(())
    }
}
