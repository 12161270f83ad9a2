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
//! Every dedup key carries the stream's hash tag ([`slot_tag`]), so it lives in the stream's
//! Redis Cluster slot and the transaction and the script touch one slot.
//!
//! With `REDIS_WAIT_REPLICAS=N` every batch's pipeline ends with `WAIT N <timeout>`, so the
//! confirmation costs no extra round trip; a batch fewer replicas confirmed in time is a
//! [`WriteError::Unconfirmed`], retried through the checking path.

use std::time::Duration;

use std::borrow::Borrow;

use redis::{Connection, ConnectionLike, ErrorKind, RedisError, Value};

use crate::config::{EntryFormat, RedisConfig};
use crate::envelope::{EventId, IdempotencyKey};
use crate::ops::metrics::metrics;
use crate::sink::entry::EventField;
use crate::sink::resp::Resp;
use crate::source::esl::event::EventError;

/// The checking path's Lua script.
pub const IDEMPOTENT_SCRIPT: &str = include_str!("idempotent.lua");

/// The guard of a fast-path transaction, run once per stream of the batch between `WATCH` of
/// the connection's tripwire and `MULTI`. KEYS: the tripwire, the connection's retired mark
/// ([`retired_key`]), and for a hot-standby pair the stream's fence; ARGV: the write's lease
/// epoch (pairs), the fence's TTL. It touches the tripwire, so the `EXEC` that follows does
/// nothing, when the connection was retired (a request that arrives after the writer gave up
/// on its connection and retried elsewhere: the transaction does not check the dedup bits, so
/// it must not run late) or, for a pair, when a newer lease epoch has written to the stream;
/// otherwise it raises the fence to the epoch. Returns 1 (go), 0 (fenced) or 2 (retired). It
/// calls only `BITFIELD`, `SETBIT`, `EXPIRE` (and, for pairs, `GET`/`SET` on the fence), which
/// the agent's ACL rule grants already.
pub const TRANSACTION_GUARD: &str = "local function trip() redis.call('SETBIT', KEYS[1], 0, 1) \
redis.call('EXPIRE', KEYS[1], 60) end \
if redis.call('BITFIELD', KEYS[2], 'GET', 'u1', 0)[1] == 1 then trip() return 2 end \
if KEYS[3] == nil then return 1 end \
local seen = tonumber(redis.call('GET', KEYS[3]) or '0') \
local epoch = tonumber(ARGV[1]) \
if seen > epoch then trip() return 0 end \
if seen < epoch then redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[2]) end \
return 1";

/// How long a retired connection's mark is kept: longer than TCP keeps re-sending what a
/// closed connection had sent (about 15 minutes at Linux's defaults).
pub const RETIRED_TTL_SECS: u64 = 3600;

/// A hot-standby pair's fence check at takeover (see `source::esl::pair`). KEYS: the stream's
/// fence, a tripwire; ARGV: the lease epoch, the fence's TTL. A fence newer than the epoch
/// sets the tripwire; otherwise the fence is raised to the epoch.
pub const FENCE_CHECK: &str = "local seen = tonumber(redis.call('GET', KEYS[1]) or '0') \
local epoch = tonumber(ARGV[1]) \
if seen > epoch then redis.call('SET', KEYS[2], ARGV[1], 'EX', 60) return 0 end \
if seen < epoch then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end \
return 1";

/// A dedup bitmap holds 2^this sequences (128 KiB at most).
pub const DEDUP_GENERATION_BITS: u32 = 20;
/// Bitmaps kept behind the one being written: the dedup window is at least this many times
/// 2^20 sequences of one Core-UUID (older bitmaps are deleted).
pub const DEDUP_KEEP_GENERATIONS: u64 = 3;
/// How long a dedup bitmap is kept after its last write.
pub const DEDUP_TTL_SECS: u64 = 24 * 3600;
/// The transaction path deletes bitmaps behind the window once every this many batches.
pub const DEDUP_TRIM_EVERY: u64 = 64;
/// How long a string id is remembered (the HTTP ingress's `HTTP_INGRESS_IDEMPOTENCY_TTL`
/// default).
pub const DEDUP_KEYS_TTL_SECS: u64 = 24 * 3600;
/// String ids remembered per producer and stream at most (the oldest go first).
pub const DEDUP_KEYS_MAX: u64 = 1_000_000;
/// One entry ready to be written.
#[derive(Debug, Clone)]
pub struct Entry {
    pub stream_key: String,
    /// `MAXLEN ~` cap, 0 for none.
    pub max_len: u64,
    /// The idempotency key: its producer ...
    pub producer: String,
    /// ... and its id within the producer.
    pub id: EventId,
    /// The first field's value (`event`).
    pub event: EventField,
    /// The index fields after it, in order (none in the reference format).
    pub index: Vec<(&'static str, Vec<u8>)>,
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            stream_key: String::new(),
            max_len: 0,
            producer: String::new(),
            id: EventId::Seq(0),
            event: EventField::Json(Vec::new()),
            index: Vec::new(),
        }
    }
}

/// An entry's event could not be turned into its JSON: it can never be written.
#[derive(Debug)]
struct Undecodable {
    /// The entry's place in the batch being encoded.
    index: usize,
    error: EventError,
}

/// Why encoding or sending one request failed.
enum Failure {
    Write(WriteError),
    Undecodable(Undecodable),
}

impl From<WriteError> for Failure {
    fn from(e: WriteError) -> Failure {
        Failure::Write(e)
    }
}

impl From<Undecodable> for Failure {
    fn from(u: Undecodable) -> Failure {
        Failure::Undecodable(u)
    }
}

impl Entry {
    /// An entry for an event (see [`Entry::refill`]).
    pub fn new(
        format: EntryFormat,
        stream: (&str, u64),
        name: &str,
        ordering_key: &str,
        key: &IdempotencyKey,
        event: impl Into<EventField>,
    ) -> Entry {
        let mut entry = Entry::default();
        entry.refill(format, stream, name, ordering_key, key, event.into());
        entry
    }

    /// Makes this (used) entry the one for a new event, reusing its buffers: the contract's
    /// fields, `event` then the index fields (`event_name`, `unique_id` = the ordering key,
    /// `core_uuid` = the producer, `event_sequence` = the id), or `event` alone.
    pub fn refill(
        &mut self,
        format: EntryFormat,
        stream: (&str, u64),
        name: &str,
        ordering_key: &str,
        key: &IdempotencyKey,
        event: EventField,
    ) {
        self.stream_key.clear();
        self.stream_key.push_str(stream.0);
        self.max_len = stream.1;
        self.producer.clear();
        self.producer.push_str(&key.producer);
        self.id.clone_from(&key.id);
        self.event = event;
        let index: &[&'static str] = match format {
            EntryFormat::Full => &["event_name", "unique_id", "core_uuid", "event_sequence"],
            EntryFormat::Reference => &[],
        };
        self.index.truncate(index.len());
        for (i, field) in index.iter().enumerate() {
            if self.index.len() <= i {
                self.index.push((field, Vec::new()));
            }
            let slot = &mut self.index[i];
            slot.0 = field;
            slot.1.clear();
            match i {
                0 => slot.1.extend_from_slice(name.as_bytes()),
                1 => slot.1.extend_from_slice(ordering_key.as_bytes()),
                2 => slot.1.extend_from_slice(key.producer.as_bytes()),
                _ => key.id.write_text(&mut slot.1),
            }
        }
    }

    /// The entry's fields as written, the event's JSON made on the way.
    pub fn fields(&self) -> Result<Vec<(&'static str, Vec<u8>)>, EventError> {
        let mut fields = vec![("event", self.event.to_json()?)];
        fields.extend(self.index.iter().cloned());
        Ok(fields)
    }

    /// Whether deduplicating this entry needs the checking path (a string id).
    fn has_string_id(&self) -> bool {
        matches!(self.id, EventId::Key(_))
    }
}

/// Where an entry's idempotency key is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DedupMark {
    /// This bit of the bitmap of that generation (numeric ids).
    Bit { generation: u64, bit: u64 },
    /// A member of the producer's keyed set (string ids; the member is the id).
    Member,
}

impl Entry {
    fn dedup_mark(&self) -> DedupMark {
        match &self.id {
            EventId::Seq(n) => {
                DedupMark::Bit { generation: n >> DEDUP_GENERATION_BITS, bit: n & ((1 << DEDUP_GENERATION_BITS) - 1) }
            }
            EventId::Key(_) => DedupMark::Member,
        }
    }

    /// The Redis key that records this entry's idempotency key.
    fn dedup_key(&self) -> String {
        match self.dedup_mark() {
            DedupMark::Bit { generation, .. } => dedup_key(&self.stream_key, &self.producer, generation),
            DedupMark::Member => dedup_keys_key(&self.stream_key, &self.producer),
        }
    }

    /// This entry's `XADD` command, its event's JSON written straight into the request.
    pub fn encode_xadd(&self, resp: &mut Resp) -> Result<(), EventError> {
        resp.command(1 + self.xadd_arg_count()).arg(b"XADD");
        self.encode_xadd_args(resp)
    }

    /// Arguments of this entry's `XADD` after the command name: key, `MAXLEN ~ n` when capped,
    /// `*`, fields. On error (the event cannot be decoded) the request is left unfinished:
    /// the caller encodes it again without the entry.
    fn encode_xadd_args(&self, resp: &mut Resp) -> Result<(), EventError> {
        resp.arg(self.stream_key.as_bytes());
        if self.max_len > 0 {
            resp.arg(b"MAXLEN").arg(b"~").int(self.max_len as i64);
        }
        resp.arg(b"*");
        self.encode_fields(resp)
    }

    /// The field/value pairs, `event` first.
    fn encode_fields(&self, resp: &mut Resp) -> Result<(), EventError> {
        resp.arg(b"event");
        resp.arg_with(self.event.size_hint(), |out| self.event.write_json(out))?;
        for (name, value) in &self.index {
            resp.arg(name.as_bytes()).arg(value);
        }
        Ok(())
    }

    fn xadd_arg_count(&self) -> usize {
        2 + if self.max_len > 0 { 3 } else { 0 } + (1 + self.index.len()) * 2
    }
}

/// The distinct dedup keys of a batch (bitmaps and keyed sets), and which one each entry
/// uses.
struct DedupGroups {
    /// `(key, index of its first entry, its mark)` of each dedup key.
    keys: Vec<(String, usize, DedupMark)>,
    /// Per entry: index into `keys`.
    of_entry: Vec<usize>,
}

impl DedupGroups {
    fn new<E: Borrow<Entry>>(entries: &[E]) -> DedupGroups {
        let mut keys: Vec<(String, usize, DedupMark)> = Vec::new();
        let of_entry = entries
            .iter()
            .map(Borrow::borrow)
            .enumerate()
            .map(|(i, e)| {
                let mark = e.dedup_mark();
                let same_key = |(_, j, m): &(String, usize, DedupMark)| {
                    let other: &Entry = entries[*j].borrow();
                    let same_generation = match (m, mark) {
                        (DedupMark::Bit { generation: a, .. }, DedupMark::Bit { generation: b, .. }) => *a == b,
                        (DedupMark::Member, DedupMark::Member) => true,
                        _ => false,
                    };
                    same_generation && other.stream_key == e.stream_key && other.producer == e.producer
                };
                match keys.iter().position(same_key) {
                    Some(g) => g,
                    None => {
                        keys.push((e.dedup_key(), i, mark));
                        keys.len() - 1
                    }
                }
            })
            .collect();
        DedupGroups { keys, of_entry }
    }
}

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
pub fn classify(e: RedisError) -> WriteError {
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
fn server_error(err: &redis::ServerError) -> WriteError {
    let text = server_error_text(err);
    if TOPOLOGY_CODES.contains(&err.code()) {
        WriteError::Topology(text)
    } else {
        WriteError::Transient(text)
    }
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
    /// `REDIS_WAIT_REPLICAS` (0: no `WAIT`).
    wait_replicas: u32,
    /// `REDIS_WAIT_TIMEOUT`.
    wait_timeout: Duration,
    /// Entries written by a batch `WAIT` did not confirm, with their IDs (see
    /// [`RedisSink::confirm`]).
    unconfirmed: Vec<(EntryKey, String)>,
}

/// A fast-path transaction a connection sent and got no answer to: the connection's token
/// and the request's streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unanswered {
    pub token: String,
    pub streams: Vec<String>,
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
        })
    }

    /// The streams of the last fast-path transaction this connection sent without getting
    /// its answer (a timeout, a lost connection), taken once. Such a request can still reach
    /// Redis after the writer has retried it on another connection: the writer retires this
    /// connection there ([`RedisSink::retire`]) before the retry.
    pub fn take_unanswered(&mut self) -> Option<Unanswered> {
        self.unanswered.take()
    }

    /// Marks connections the writer gave up on as retired on their streams, so a transaction
    /// of theirs that reaches Redis from now on does nothing (see [`TRANSACTION_GUARD`]). The
    /// retry that follows takes the checking path, which finds whatever such a transaction
    /// wrote before.
    pub fn retire(&mut self, unanswered: &[Unanswered]) -> Result<(), WriteError> {
        let mut pipe = redis::pipe();
        for u in unanswered {
            for stream in &u.streams {
                let key = retired_key(stream, &u.token);
                pipe.cmd("SETBIT").arg(&key).arg(0).arg(1).ignore();
                pipe.cmd("EXPIRE").arg(&key).arg(RETIRED_TTL_SECS).ignore();
            }
        }
        pipe.query::<()>(&mut self.conn).map_err(classify)
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
    pub fn set_reply_timeout(&mut self, timeout: Duration) -> Result<(), WriteError> {
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
                metrics().redis_wait_timeouts.inc();
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
    pub fn set_dedup_keys_ttl(&mut self, ttl: Duration) {
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

    /// The checking path: one script call that skips entries whose key was already written.
    fn write_script<E: Borrow<Entry>>(&mut self, entries: &[E]) -> Result<Vec<EntryOutcome>, Failure> {
        let groups = DedupGroups::new(entries);
        let all = || entries.iter().map(Borrow::borrow);
        // A fenced write checks and raises the fence of every stream it writes to.
        let mut fences: Vec<String> = Vec::new();
        if let Some((group, _)) = &self.fence {
            for e in all() {
                let key = fence_key(&e.stream_key, group);
                if !fences.contains(&key) {
                    fences.push(key);
                }
            }
        }
        let epoch = self.fence.as_ref().map_or(0, |(_, epoch)| *epoch);
        let keys = groups.keys.len() + fences.len();
        let args = 8 + keys + all().map(|e: &Entry| 3 + e.xadd_arg_count()).sum::<usize>();
        let resp = &mut self.resp;
        resp.clear();
        resp.command(args).arg(b"EVALSHA").arg(self.script_sha.as_bytes()).int(keys as i64);
        for (key, _, _) in &groups.keys {
            resp.arg(key.as_bytes());
        }
        for key in &fences {
            resp.arg(key.as_bytes());
        }
        resp.int(DEDUP_TTL_SECS as i64).int(self.keys_ttl_secs as i64).int(self.keys_max as i64);
        let mut kinds: Vec<u8> = groups
            .keys
            .iter()
            .map(|(_, _, mark)| match mark {
                DedupMark::Bit { .. } => b'b',
                DedupMark::Member => b's',
            })
            .collect();
        kinds.extend(fences.iter().map(|_| b'f'));
        resp.arg(&kinds).int(epoch as i64);
        for (index, (e, group)) in all().zip(&groups.of_entry).enumerate() {
            resp.int(*group as i64 + 1);
            match (&e.id, e.dedup_mark()) {
                (_, DedupMark::Bit { bit, .. }) => resp.int(bit as i64),
                (EventId::Key(member), DedupMark::Member) => resp.arg(member.as_bytes()),
                (EventId::Seq(_), DedupMark::Member) => unreachable!("a numeric id is marked by a bit"),
            };
            resp.int(e.xadd_arg_count() as i64);
            e.encode_xadd_args(resp).map_err(|error| Undecodable { index, error })?;
        }
        let waits = self.encode_wait();
        let mut replies = self.conn.req_packed_commands(self.resp.as_bytes(), 0, 1 + waits).map_err(classify)?;
        let wait = if waits > 0 { replies.pop() } else { None };
        let reply = match replies.pop().unwrap_or(Value::Nil) {
            Value::ServerError(err) if err.code() == "NOSCRIPT" => {
                redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(IDEMPOTENT_SCRIPT)
                    .query::<String>(&mut self.conn)
                    .map_err(classify)?;
                return Err(WriteError::Transient("script was not loaded (server restarted?); loaded it".into()).into());
            }
            Value::ServerError(err) if err.code() == "FENCED" => {
                return Err(WriteError::Fenced(server_error_text(&err)).into());
            }
            Value::ServerError(err) => return Err(server_error(&err).into()),
            reply => reply,
        };
        let Value::Array(items) = reply else {
            return Err(WriteError::Transient(format!("unexpected script reply {reply:?}")).into());
        };
        let mut outcomes: Vec<EntryOutcome> = items
            .into_iter()
            .map(|item| {
                let text = match item {
                    Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                    Value::SimpleString(s) => s,
                    other => format!("E:unexpected reply {other:?}"),
                };
                if text == "dup" {
                    EntryOutcome::Duplicate
                } else if let Some(err) = text.strip_prefix("E:") {
                    EntryOutcome::Rejected(err.to_owned())
                } else {
                    EntryOutcome::Written(text)
                }
            })
            .collect();
        outcomes.resize(all().count(), EntryOutcome::Pending);
        Ok(self.confirm(entries, waits, wait, outcomes)?)
    }

    /// The fast path for entries with numeric ids never sent before: one `MULTI`/`EXEC` that
    /// records every key (`BITFIELD ... SET u1 <bit> 1`, first, so an OOM refuses the whole
    /// transaction) and adds every entry. Either all of it happens or none, so a retry after an
    /// ambiguous failure can take the checking path and find out exactly what is there.
    fn write_transaction<E: Borrow<Entry>>(&mut self, entries: &[E]) -> Result<Vec<EntryOutcome>, Failure> {
        let groups = DedupGroups::new(entries);
        let all = || entries.iter().map(Borrow::borrow);
        let resp = &mut self.resp;
        resp.clear();
        // Per stream: WATCH this connection's tripwire, then the guard, which trips it when
        // this connection was retired (the request arrived after the writer had given up on
        // it) or, for a hot-standby pair, when a newer lease epoch has written to the stream;
        // EXEC then does nothing.
        let mut streams: Vec<&str> = Vec::new();
        for e in all() {
            if !streams.contains(&e.stream_key.as_str()) {
                streams.push(&e.stream_key);
            }
        }
        for stream in &streams {
            let trip = trip_key(stream, &self.token);
            resp.command(2).arg(b"WATCH").arg(trip.as_bytes());
            match &self.fence {
                Some((group, epoch)) => {
                    resp.command(8).arg(b"EVALSHA").arg(self.guard_sha.as_bytes()).int(3);
                    resp.arg(trip.as_bytes()).arg(retired_key(stream, &self.token).as_bytes());
                    resp.arg(fence_key(stream, group).as_bytes()).int(*epoch as i64).int(DEDUP_TTL_SECS as i64);
                }
                None => {
                    resp.command(5).arg(b"EVALSHA").arg(self.guard_sha.as_bytes()).int(2);
                    resp.arg(trip.as_bytes()).arg(retired_key(stream, &self.token).as_bytes());
                }
            }
        }
        let prefix = 2 * streams.len();
        resp.command(1).arg(b"MULTI");
        for (g, (key, _, _)) in groups.keys.iter().enumerate() {
            let bits = || {
                all().zip(&groups.of_entry).filter(move |(_, group)| **group == g).filter_map(|(e, _): (&Entry, _)| {
                    match e.dedup_mark() {
                        DedupMark::Bit { bit, .. } => Some(bit),
                        DedupMark::Member => None,
                    }
                })
            };
            resp.command(2 + 4 * bits().count()).arg(b"BITFIELD").arg(key.as_bytes());
            for bit in bits() {
                resp.arg(b"SET").arg(b"u1").int(bit as i64).arg(b"1");
            }
            resp.command(3).arg(b"EXPIRE").arg(key.as_bytes()).int(DEDUP_TTL_SECS as i64);
        }
        let before_xadds = resp.commands() - 1 - prefix;
        for (index, e) in all().enumerate() {
            e.encode_xadd(resp).map_err(|error| Undecodable { index, error })?;
        }
        let trim_now = self.batches.is_multiple_of(DEDUP_TRIM_EVERY);
        self.batches += 1;
        if trim_now {
            for (_, first, mark) in &groups.keys {
                let DedupMark::Bit { generation, .. } = *mark else { continue };
                if generation <= DEDUP_KEEP_GENERATIONS {
                    continue;
                }
                let e: &Entry = entries[*first].borrow();
                let old = dedup_key(&e.stream_key, &e.producer, generation - DEDUP_KEEP_GENERATIONS - 1);
                resp.command(2).arg(b"UNLINK").arg(old.as_bytes());
            }
        }
        let queued = resp.commands() - 1 - prefix;
        resp.command(1).arg(b"EXEC");
        let waits = self.encode_wait();
        // The replies, all read here (redis-rs's skipping of replies assumes MULTI comes
        // first): per stream WATCH's +OK and the guard's answer, MULTI's +OK, one +QUEUED per
        // command (an error there aborts the transaction: EXEC answers EXECABORT), EXEC's
        // array (nil when the wire was tripped), and WAIT's count.
        let sent = self.conn.req_packed_commands(self.resp.as_bytes(), 0, prefix + 1 + queued + 1 + waits);
        let mut replies = match sent.map_err(classify) {
            Ok(replies) => replies,
            Err(WriteError::Connection(e)) => {
                // No answer: the request may still reach Redis later, after the retry.
                let streams = streams.into_iter().map(str::to_owned).collect();
                self.unanswered = Some(Unanswered { token: self.token.clone(), streams });
                return Err(WriteError::Connection(e).into());
            }
            Err(e) => return Err(e.into()),
        };
        let wait = if waits > 0 { replies.pop() } else { None };
        let exec = replies.pop().unwrap_or(Value::Nil);
        let first_error = |from: usize| {
            replies.iter().skip(from).find_map(|r| match r {
                Value::ServerError(e) => Some(e.clone()),
                _ => None,
            })
        };
        // The guard did not run (an administrator flushed the script cache): load it for the
        // next batch. This batch's EXEC ran unguarded: harmless for a request answered in
        // time; a pair's fence was not checked for it.
        if replies.iter().take(prefix).any(|r| matches!(r, Value::ServerError(e) if e.code() == "NOSCRIPT")) {
            redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(TRANSACTION_GUARD)
                .query::<String>(&mut self.conn)
                .map_err(classify)?;
        }
        let items = match exec {
            // Only a connection the writer gave up on is ever retired, and its token is its
            // own: on a live connection a tripped wire means the pair's fence.
            Value::Nil if self.fence.is_some() => {
                return Err(WriteError::Fenced("a newer lease epoch has written to the stream".into()).into())
            }
            Value::Nil => {
                return Err(WriteError::Connection("this connection was retired; connecting again".into()).into())
            }
            Value::Array(items) => items,
            // Aborted (nothing ran): why is the first refused command (MOVED, OOM ...).
            Value::ServerError(err) => return Err(server_error(&first_error(prefix).unwrap_or(err)).into()),
            other => return Err(WriteError::Transient(format!("unexpected EXEC reply {other:?}")).into()),
        };
        let mut outcomes = Vec::with_capacity(entries.len());
        let mut refused = Vec::new();
        for (e, reply) in all().zip(items.into_iter().skip(before_xadds)) {
            match reply {
                Value::BulkString(b) => outcomes.push(EntryOutcome::Written(String::from_utf8_lossy(&b).into_owned())),
                Value::SimpleString(s) => outcomes.push(EntryOutcome::Written(s)),
                other => {
                    let text = match other {
                        Value::ServerError(err) => server_error_text(&err),
                        other => format!("unexpected reply {other:?}"),
                    };
                    refused.push(e);
                    outcomes.push(EntryOutcome::Rejected(text));
                }
            }
        }
        // A refused entry's key was recorded: forget it, or a later retry would skip it.
        for e in refused {
            if let DedupMark::Bit { bit, .. } = e.dedup_mark() {
                let _: redis::RedisResult<Value> =
                    redis::cmd("SETBIT").arg(e.dedup_key()).arg(bit).arg(0).query(&mut self.conn);
            }
        }
        outcomes.resize(entries.len(), EntryOutcome::Pending);
        Ok(self.confirm(entries, waits, wait, outcomes)?)
    }
}

/// An error reply as text: its code and message.
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

fn server_error_text(err: &redis::ServerError) -> String {
    format!("{} {}", err.code(), err.details().unwrap_or(""))
}

/// The prefix of every key kept beside a stream, in the stream's Redis Cluster slot: the
/// stream key itself when it has a hash tag (`{...}` with something inside: dedup keys that
/// start with it hash alike), else the stream key wrapped in braces. (A key with a stray `}`
/// and no tag cannot be wrapped into its own slot; give such a key a tag for Redis Cluster.)
pub fn slot_tag(stream_key: &str) -> std::borrow::Cow<'_, str> {
    let has_tag = stream_key.find('{').and_then(|open| stream_key[open + 1..].find('}')).is_some_and(|len| len > 0);
    if has_tag {
        std::borrow::Cow::Borrowed(stream_key)
    } else {
        std::borrow::Cow::Owned(format!("{{{stream_key}}}"))
    }
}

/// The fence of a hot-standby pair on one stream (the highest lease epoch that wrote to it),
/// kept beside the stream.
pub fn fence_key(stream_key: &str, group: &str) -> String {
    format!("{}:ha-fence:{group}", slot_tag(stream_key))
}

/// A connection's tripwire on one stream, which its fast-path transactions `WATCH` (see
/// [`TRANSACTION_GUARD`]).
pub fn trip_key(stream_key: &str, token: &str) -> String {
    format!("{}:trip:{token}", slot_tag(stream_key))
}

/// The mark of a connection the writer gave up on, on one stream: a transaction of that
/// connection arriving after it is set does nothing (see [`TRANSACTION_GUARD`]).
pub fn retired_key(stream_key: &str, token: &str) -> String {
    format!("{}:retired:{token}", slot_tag(stream_key))
}

/// A name no other connection has, here or in another agent: the process, a counter, and 64
/// random bits.
fn connection_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    format!("{:x}.{n:x}.{random:016x}", std::process::id())
}

/// One dedup bitmap: ids `generation * 2^20 ..` of one producer, kept beside the stream.
pub fn dedup_key(stream_key: &str, producer: &str, generation: u64) -> String {
    format!("{}:idmp:{producer}:{generation}", slot_tag(stream_key))
}

/// The keyed set of one producer's string ids written to the stream (member: the id; score:
/// when it was written, in seconds).
pub fn dedup_keys_key(stream_key: &str, producer: &str) -> String {
    format!("{}:idmp-keys:{producer}", slot_tag(stream_key))
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

/// Capped exponential backoff: `base * 2^attempt`, never above `max`.
pub fn backoff(base: Duration, attempt: u32, max: Duration) -> Duration {
    base.saturating_mul(1u32 << attempt.min(16)).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::BodyFormat;

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

    #[test]
    fn a_refilled_entry_equals_a_new_one() {
        let full = |name: &str, seq: &str| -> Vec<(&'static str, Vec<u8>)> {
            vec![
                ("event", b"{}".to_vec()),
                ("event_name", name.into()),
                ("unique_id", b"uid".to_vec()),
                ("core_uuid", b"core".to_vec()),
                ("event_sequence", seq.into()),
            ]
        };
        let mut entry = Entry::default();
        let key = |id| IdempotencyKey { producer: "core".into(), id };
        for (format, name, id, expected) in [
            (EntryFormat::Full, "CHANNEL_CREATE", EventId::Seq(12), full("CHANNEL_CREATE", "12")),
            (EntryFormat::Reference, "DTMF", EventId::Seq(13), vec![("event", b"{}".to_vec())]),
            (EntryFormat::Full, "order.paid", EventId::Key("k-9".into()), full("order.paid", "k-9")),
            (EntryFormat::Full, "HEARTBEAT", EventId::Seq(1234567), full("HEARTBEAT", "1234567")),
        ] {
            let event = EventField::event(BodyFormat::Json, "{}".into());
            entry.refill(format, ("stream", 7), name, "uid", &key(id.clone()), event);
            assert_eq!(entry.fields().unwrap(), expected);
            let fresh = Entry::new(format, ("stream", 7), name, "uid", &key(id.clone()), b"{}".to_vec());
            assert_eq!(entry.fields().unwrap(), fresh.fields().unwrap());
            assert_eq!((entry.stream_key.as_str(), entry.max_len), ("stream", 7));
            assert_eq!((entry.producer.as_str(), &entry.id), ("core", &id));
        }
    }

    #[test]
    fn dedup_keys_share_the_stream_slot() {
        assert_eq!(dedup_key("freeswitch:telephony:events", "c", 3), "{freeswitch:telephony:events}:idmp:c:3");
        assert_eq!(dedup_keys_key("a:{sw1}:http", "crm"), "a:{sw1}:http:idmp-keys:crm");
        // An empty tag is no tag: the whole key is hashed, so the key is wrapped.
        assert_eq!(dedup_keys_key("a{}b", "p"), "{a{}b}:idmp-keys:p");
    }

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

    #[test]
    fn backoff_is_capped() {
        let b = Duration::from_millis(100);
        assert_eq!(backoff(b, 0, Duration::from_secs(5)), b);
        assert_eq!(backoff(b, 3, Duration::from_secs(5)), Duration::from_millis(800));
        assert_eq!(backoff(b, 30, Duration::from_secs(5)), Duration::from_secs(5));
    }
}
