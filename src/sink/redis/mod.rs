//! The Redis side of a writer: one connection, and one idempotent, pipelined write of a batch.
//!
//! [`RedisSink::write`] sends a whole batch in one round trip and reports, per entry, whether
//! it was written (or was already there), refused for good, undecodable, or not processed (to
//! retry). Each event's JSON is made as the request is encoded, straight into it. Every
//! entry carries its idempotency key `(producer, id)` (for ESL `(Core-UUID, Event-Sequence)`),
//! so re-sending a batch after an ambiguous failure (timeout, connection cut after sending)
//! never creates a second entry. One write path serves every server (Redis 7.x and 8.x,
//! Valkey): numeric ids are bits in bitmaps next to the stream
//! (`{<stream>}:idmp:<producer>:<generation>`, 2^20 ids per key) and string ids are members
//! of a sorted set scored by the time they were written (`{<stream>}:idmp-keys:<producer>`,
//! members older than [`DEDUP_KEYS_TTL_SECS`] dropped, at most [`DEDUP_KEYS_MAX`] kept). A
//! batch of numeric ids never sent before sets its bits and adds its entries in one
//! `MULTI`/`EXEC`; a batch that may already be there, or that has string ids (a producer may
//! re-send those at any time), goes through one Lua script (`idempotent.lua`) that skips
//! what is recorded and says so.
//!
//! Redis 8.6's `XADD ... IDMP` is deliberately not used: its window is at most 10,000 ids per
//! producer (seconds of traffic, against the bitmaps' three million), a duplicate answers with
//! the original entry's ID (so a re-sent event could not be acknowledged as a duplicate), it
//! cannot carry a hot-standby pair's fence, and `XCFGSET` clears a stream's remembered ids.
//!
//! Every dedup key carries the stream's hash tag ([`keys::slot_tag`]), so it lives in the stream's
//! Redis Cluster slot and the transaction and the script touch one slot.
//!
//! With `REDIS_WAIT_REPLICAS=N` every batch's pipeline ends with `WAIT N <timeout>`, so the
//! confirmation costs no extra round trip; a batch fewer replicas confirmed in time is a
//! [`WriteError::Unconfirmed`], retried through the checking path.

//!
//! One concern per file: [`keys`] names every key the agent keeps in Redis; [`request`] is an
//! entry and its `XADD`; [`transaction`] the fast path (`MULTI`/`EXEC` behind its guard) and
//! [`script`] the checking path; [`error`] what a failed write means. This file owns the
//! connection: its set-up, `WAIT`, and the choice of path.

mod error;
pub mod keys;
mod request;
mod script;
mod transaction;

use std::borrow::Borrow;
use std::time::Duration;

use redis::{Connection, Value};

use crate::config::RedisConfig;
use crate::envelope::EventId;
use crate::sink::resp::Resp;
use crate::telemetry::metrics::metrics;

pub(crate) use error::classify;
use error::server_error;
pub use error::WriteError;
use keys::connection_token;
pub use keys::{dedup_key, dedup_keys_key, DEDUP_GENERATION_BITS, DEDUP_KEEP_GENERATIONS, DEDUP_KEYS_TTL_SECS};
pub(crate) use keys::{trip_key, DEDUP_KEYS_MAX, DEDUP_TTL_SECS};
pub use request::Entry;
use request::{Failure, Undecodable};
pub(crate) use script::IDEMPOTENT_SCRIPT;
pub use transaction::DEDUP_TRIM_EVERY;
pub(crate) use transaction::{Unanswered, FENCE_CHECK, TRANSACTION_GUARD};

/// The fate of one entry of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryOutcome {
    /// Written now, with this ID.
    Written(String),
    /// Its idempotency key was already written: nothing added.
    Duplicate,
    /// Redis refused it for good (e.g. `WRONGTYPE`): retrying cannot help.
    Rejected(String),
    /// Not processed (a transient error stopped the batch before it): retry it.
    Pending,
    /// Its event cannot be turned into JSON (left out of the request): it can never be
    /// written.
    Undecodable(String),
}

/// A connection to Redis and the way to write idempotently on it.
pub struct RedisSink {
    conn: Connection,
    /// The server's name and version as `INFO server` reports them (for the log).
    server: String,
    script_sha: String,
    /// SHA1 of [`TRANSACTION_GUARD`], loaded on this connection.
    guard_sha: String,
    batches: u64,
    /// String ids kept per producer and stream ([`DEDUP_KEYS_MAX`] unless set).
    keys_max: u64,
    /// How long a string id is remembered ([`DEDUP_KEYS_TTL_SECS`] unless set).
    keys_ttl_secs: u64,
    /// The batch being sent, encoded.
    resp: Resp,
    /// How long a read waits for the reply now (set on the socket only when it changes).
    reply_timeout: Duration,
    /// The hot-standby pair's group and the lease epoch the next writes carry.
    fence: Option<(String, u64)>,
    /// This connection's own name in its tripwire and retired keys (see
    /// [`TRANSACTION_GUARD`]): unique to the connection.
    token: String,
    /// The streams of a request this connection sent and never got the answer to (see
    /// [`RedisSink::take_unanswered`]).
    unanswered: Option<Unanswered>,
    /// The tripwire this connection `WATCH`es now, armed at the end of its last transaction:
    /// the next transaction needs no guard script (see [`TRANSACTION_GUARD`]).
    armed: Option<String>,
    /// Whether transactions re-arm their `WATCH` (not on a cluster node).
    rearm: bool,
    /// `REDIS_WAIT_REPLICAS` (0: no `WAIT`).
    wait_replicas: u32,
    /// `REDIS_WAIT_TIMEOUT`.
    wait_timeout: Duration,
    /// Entries written by a batch `WAIT` did not confirm, with their IDs (see
    /// [`RedisSink::confirm`]).
    unconfirmed: Vec<(EntryKey, String)>,
}

/// An entry's stream, producer and id.
type EntryKey = (String, String, EventId);

/// Entries not confirmed by `WAIT` remembered at most (see [`RedisSink::confirm`]).
const UNCONFIRMED_MAX: usize = 100_000;

impl RedisSink {
    /// Connects to the server of `REDIS_URL` (whatever the topology: the writers connect
    /// through [`crate::sink::target::Sink`]), sets timeouts and loads the script.
    pub fn connect(config: &RedisConfig) -> Result<RedisSink, WriteError> {
        let conn = crate::sink::connect::connect_node(config, None, config.write_timeout).map_err(classify)?;
        RedisSink::on(conn, config)
    }

    /// Writes on `conn` (its timeouts set already): notes the server's version and loads the
    /// script.
    pub fn on(mut conn: Connection, config: &RedisConfig) -> Result<RedisSink, WriteError> {
        let reply_timeout = config.write_timeout + config.wait_timeout.min(config.write_timeout);
        if config.wait_replicas > 0 {
            conn.set_read_timeout(Some(reply_timeout)).map_err(classify)?;
        }
        let info: String = redis::cmd("INFO").arg("server").query(&mut conn).map_err(classify)?;
        let script_sha: String =
            redis::cmd("SCRIPT").arg("LOAD").arg(IDEMPOTENT_SCRIPT).query(&mut conn).map_err(classify)?;
        let guard_sha: String =
            redis::cmd("SCRIPT").arg("LOAD").arg(TRANSACTION_GUARD).query(&mut conn).map_err(classify)?;
        Ok(RedisSink {
            conn,
            server: server_version(&info),
            script_sha,
            guard_sha,
            batches: 0,
            keys_max: DEDUP_KEYS_MAX,
            keys_ttl_secs: DEDUP_KEYS_TTL_SECS,
            reply_timeout: config.write_timeout,
            resp: Resp::with_capacity(1 << 20),
            wait_replicas: config.wait_replicas,
            wait_timeout: config.wait_timeout,
            unconfirmed: Vec::new(),
            fence: None,
            token: connection_token(),
            unanswered: None,
            armed: None,
            rearm: !matches!(config.topology, crate::config::RedisTopology::Cluster { .. }),
        })
    }

    /// The lease epoch the next writes carry (`None`: not fenced), for pair `group`.
    pub fn set_fence(&mut self, fence: Option<(&str, u64)>) {
        match (fence, &mut self.fence) {
            (Some((group, epoch)), Some((g, e))) if g == group => *e = epoch,
            (fence, slot) => *slot = fence.map(|(g, e)| (g.to_owned(), e)),
        }
    }

    /// How long the next writes wait for their reply (a system call only when it changes);
    /// with `WAIT`, the replicas get at most as long again.
    pub(crate) fn set_reply_timeout(&mut self, timeout: Duration) -> Result<(), WriteError> {
        if timeout != self.reply_timeout {
            let socket = if self.wait_replicas > 0 { timeout + self.wait_for(timeout) } else { timeout };
            self.conn.set_read_timeout(Some(socket)).map_err(classify)?;
            self.reply_timeout = timeout;
        }
        Ok(())
    }

    /// How long this write's `WAIT` may wait: `REDIS_WAIT_TIMEOUT`, at most the reply timeout.
    fn wait_for(&self, reply_timeout: Duration) -> Duration {
        self.wait_timeout.min(reply_timeout).max(Duration::from_millis(1))
    }

    /// Appends `WAIT <replicas> <ms>` to the request being encoded; returns how many replies
    /// it adds (0 without `REDIS_WAIT_REPLICAS`).
    fn encode_wait(&mut self) -> usize {
        if self.wait_replicas == 0 {
            return 0;
        }
        let ms = self.wait_for(self.reply_timeout).as_millis() as i64;
        self.resp.command(3).arg(b"WAIT").int(i64::from(self.wait_replicas)).int(ms);
        1
    }

    /// The outcomes of a write once `WAIT` (if sent) confirmed it. Not confirmed: the entries
    /// written now are remembered with their IDs, so the retry, which finds them already there,
    /// reports them written with those IDs rather than as duplicates (the producer sent them
    /// once); confirmed: a duplicate remembered so is reported written, and forgotten. (On
    /// this connection only: after a reconnect such a retry reports a duplicate.)
    fn confirm<E: Borrow<Entry>>(
        &mut self,
        entries: &[E],
        waits: usize,
        wait: Option<Value>,
        mut outcomes: Vec<EntryOutcome>,
    ) -> Result<Vec<EntryOutcome>, WriteError> {
        if waits == 0 {
            return Ok(outcomes);
        }
        if let Err(e) = self.check_wait(wait) {
            // Bounded: the oldest go first (their retry, if any, reports a duplicate).
            let excess = (self.unconfirmed.len() + entries.len()).saturating_sub(UNCONFIRMED_MAX);
            self.unconfirmed.drain(..excess.min(self.unconfirmed.len()));
            for (entry, outcome) in entries.iter().map(Borrow::borrow).zip(&outcomes) {
                if let EntryOutcome::Written(id) = outcome {
                    self.unconfirmed
                        .push(((entry.stream_key.clone(), entry.producer.clone(), entry.id.clone()), id.clone()));
                }
            }
            return Err(e);
        }
        if !self.unconfirmed.is_empty() {
            for (entry, outcome) in entries.iter().map(Borrow::borrow).zip(outcomes.iter_mut()) {
                if *outcome != EntryOutcome::Duplicate {
                    continue;
                }
                let key =
                    |(k, _): &&(EntryKey, String)| k.0 == entry.stream_key && k.1 == entry.producer && k.2 == entry.id;
                if let Some(i) = self.unconfirmed.iter().position(|u| key(&u)) {
                    *outcome = EntryOutcome::Written(self.unconfirmed.swap_remove(i).1);
                }
            }
        }
        Ok(outcomes)
    }

    /// Checks `WAIT`'s reply: the number of replicas that have the batch.
    fn check_wait(&self, reply: Option<Value>) -> Result<(), WriteError> {
        match reply {
            Some(Value::Int(n)) if n >= i64::from(self.wait_replicas) => Ok(()),
            Some(Value::Int(n)) => {
                metrics().writer.wait_timeouts.inc();
                Err(WriteError::Unconfirmed(format!(
                    "WAIT: {n} of REDIS_WAIT_REPLICAS={} replicas confirmed within {:?}",
                    self.wait_replicas,
                    self.wait_for(self.reply_timeout)
                )))
            }
            Some(Value::ServerError(err)) => Err(server_error(&err)),
            other => Err(WriteError::Unconfirmed(format!("unexpected WAIT reply {other:?}"))),
        }
    }

    /// How long string ids are remembered (`HTTP_INGRESS_IDEMPOTENCY_TTL`), at least a second.
    pub(crate) fn set_dedup_keys_ttl(&mut self, ttl: Duration) {
        self.keys_ttl_secs = ttl.as_secs().max(1);
    }

    /// Bounds the keyed sets of string ids to `n` members (tests of the bound).
    pub fn set_dedup_keys_max(&mut self, n: u64) {
        self.keys_max = n;
    }

    /// The server's name and version, e.g. `redis 7.0.15` or `valkey 8.0.1`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Writes `entries` in one round trip; the outcome list is parallel to `entries`.
    /// `maybe_written` says some of them may already be in Redis (an earlier attempt failed
    /// ambiguously, they were replayed from the spool after a restart, or their producer may
    /// have sent them before): they then take the checking path, as does any batch with a
    /// string id.
    ///
    /// `entries` are entries or references to them (a cluster writes part of a batch to each
    /// node). An entry whose event cannot be decoded is found as the request is encoded (its
    /// JSON is made there): it is left out, the request encoded again without it, and its
    /// outcome is [`EntryOutcome::Undecodable`].
    pub fn write<E: Borrow<Entry>>(
        &mut self,
        entries: &[E],
        maybe_written: bool,
    ) -> Result<Vec<EntryOutcome>, WriteError> {
        // Places in `entries`, in order, with why.
        let mut undecodable: Vec<(usize, String)> = Vec::new();
        loop {
            let result = if undecodable.is_empty() {
                self.write_by_path(entries, maybe_written).map_err(|f| (f, None))
            } else {
                let kept: Vec<usize> =
                    (0..entries.len()).filter(|i| !undecodable.iter().any(|(u, _)| u == i)).collect();
                let left: Vec<&Entry> = kept.iter().map(|&i| entries[i].borrow()).collect();
                if left.is_empty() {
                    Ok(Vec::new())
                } else {
                    self.write_by_path(&left, maybe_written).map_err(|f| (f, Some(kept)))
                }
            };
            match result {
                Ok(outcomes) => return Ok(with_undecodable(outcomes, undecodable, entries.len())),
                Err((Failure::Write(e), _)) => return Err(e),
                Err((Failure::Undecodable(Undecodable { index, error }), kept)) => {
                    let place = kept.map_or(index, |kept| kept[index]);
                    let at = undecodable.partition_point(|(u, _)| *u < place);
                    undecodable.insert(at, (place, error.to_string()));
                }
            }
        }
    }

    /// One request of `entries` by the path the server and the batch call for.
    fn write_by_path<E: Borrow<Entry>>(
        &mut self,
        entries: &[E],
        maybe_written: bool,
    ) -> Result<Vec<EntryOutcome>, Failure> {
        if maybe_written || entries.iter().any(|e| e.borrow().has_string_id()) {
            self.write_script(entries)
        } else {
            self.write_transaction(entries)
        }
    }
}

/// The outcomes of the entries that were sent, with the undecodable ones (places in the batch,
/// in order) put back in their places.
fn with_undecodable(sent: Vec<EntryOutcome>, undecodable: Vec<(usize, String)>, len: usize) -> Vec<EntryOutcome> {
    if undecodable.is_empty() {
        return sent;
    }
    let mut sent = sent.into_iter();
    let mut undecodable = undecodable.into_iter().peekable();
    (0..len)
        .map(|i| match undecodable.next_if(|(u, _)| *u == i) {
            Some((_, why)) => EntryOutcome::Undecodable(why),
            None => sent.next().unwrap_or(EntryOutcome::Pending),
        })
        .collect()
}

/// The server's name and version from `INFO server`: Valkey reports `server_name:valkey` and
/// `valkey_version` beside a `redis_version` it keeps for compatibility.
fn server_version(info: &str) -> String {
    let field = |name: &str| info.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
    match (field("server_name:"), field("valkey_version:"), field("redis_version:")) {
        (Some(name), Some(version), _) | (Some(name), None, Some(version)) => format!("{name} {version}"),
        (None, Some(version), _) => format!("valkey {version}"),
        (None, None, Some(version)) => format!("redis {version}"),
        (_, None, None) => "unknown server".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions_are_named() {
        assert_eq!(server_version("# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n"), "redis 7.0.15");
        assert_eq!(server_version("# Server\r\nredis_version:255.255.255\r\n"), "redis 255.255.255");
        assert_eq!(
            server_version("# Server\r\nredis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:8.0.1\r\n"),
            "valkey 8.0.1"
        );
        assert_eq!(server_version("garbage"), "unknown server");
    }
}
