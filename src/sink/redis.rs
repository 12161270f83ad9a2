//! The Redis side of a writer: one connection, and one idempotent, pipelined write of a batch.
//!
//! [`RedisSink::write`] sends a whole batch in one round trip and reports, per entry, whether
//! it was written (or was already there), refused for good, or not processed (to retry). Every
//! entry carries its idempotency key `(Core-UUID, Event-Sequence)`, so re-sending a batch after
//! an ambiguous failure (timeout, connection cut after sending) never creates a second entry:
//! - on Redis 8.6+ with `XADD ... IDMP <producer> <sequence>`, producer = `<core-uuid>:<lane>`;
//! - on older servers, the written sequences of each Core-UUID are bits in bitmaps next to the
//!   stream (`<stream>:idmp:<core-uuid>:<generation>`, 2^20 sequences per key): a batch never
//!   sent before sets its bits and adds its entries in one `MULTI`/`EXEC`; a batch that may
//!   already be there goes through one Lua script (`idempotent.lua`) that skips set bits.

use std::time::Duration;

use redis::{Connection, ConnectionLike, ErrorKind, RedisError, Value};

use crate::config::{EntryFormat, RedisConfig};
use crate::sink::resp::Resp;

/// The Lua script used where `XADD IDMP` is not available.
pub const IDEMPOTENT_SCRIPT: &str = include_str!("idempotent.lua");

/// A dedup bitmap holds 2^this sequences (128 KiB at most).
pub const DEDUP_GENERATION_BITS: u32 = 20;
/// Bitmaps kept behind the one being written: the dedup window is at least this many times
/// 2^20 sequences of one Core-UUID (older bitmaps are deleted).
pub const DEDUP_KEEP_GENERATIONS: u64 = 3;
/// How long a dedup bitmap is kept after its last write.
pub const DEDUP_TTL_SECS: u64 = 24 * 3600;
/// The transaction path deletes bitmaps behind the window once every this many batches.
pub const DEDUP_TRIM_EVERY: u64 = 64;
/// IDMP entries kept per producer on 8.6+ (the server's maximum).
pub const IDMP_MAXSIZE: u64 = 10_000;
/// How long 8.6+ remembers an idempotency key.
pub const IDMP_DURATION_SECS: u64 = 3600;

/// How writes are made idempotent on the connected server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Redis 8.6+: `XADD key IDMP producer iid ...` in a pipeline.
    Idmp,
    /// Older servers: the Lua script, one call per batch.
    Script,
}

/// One entry ready to be written.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub stream_key: String,
    /// `MAXLEN ~` cap, 0 for none.
    pub max_len: u64,
    /// Producer for the idempotency key (Core-UUID, plus the lane on IDMP).
    pub core_uuid: String,
    /// Idempotent ID within the producer (the Event-Sequence), empty for none.
    pub sequence: String,
    /// Field/value pairs, in order.
    pub fields: Vec<(&'static str, Vec<u8>)>,
}

impl Entry {
    /// An entry for an event whose `event` JSON is written already (see [`Entry::refill`]).
    pub fn new(
        format: EntryFormat,
        stream: (&str, u64),
        name: &str,
        unique_id: &str,
        core_uuid: &str,
        sequence: &str,
        event_json: Vec<u8>,
    ) -> Entry {
        let mut entry = Entry::default();
        entry.refill(format, stream, name, unique_id, core_uuid, sequence);
        *entry.event_json_mut() = event_json;
        entry
    }

    /// Makes this (used) entry the one for a new event, reusing its buffers: the contract's
    /// fields, `event` then the index fields (or `event` alone). The caller then writes the
    /// `event` JSON into [`Entry::event_json_mut`].
    pub fn refill(
        &mut self,
        format: EntryFormat,
        stream: (&str, u64),
        name: &str,
        unique_id: &str,
        core_uuid: &str,
        sequence: &str,
    ) {
        let refill = |s: &mut String, with: &str| {
            s.clear();
            s.push_str(with);
        };
        refill(&mut self.stream_key, stream.0);
        self.max_len = stream.1;
        refill(&mut self.core_uuid, core_uuid);
        refill(&mut self.sequence, sequence);
        let index: &[(&'static str, &str)] = match format {
            EntryFormat::Full => &[
                ("event_name", name),
                ("unique_id", unique_id),
                ("core_uuid", core_uuid),
                ("event_sequence", sequence),
            ],
            EntryFormat::Reference => &[],
        };
        self.fields.truncate(1 + index.len());
        if self.fields.is_empty() {
            self.fields.push(("event", Vec::new()));
        }
        self.fields[0].1.clear();
        for (i, (field, value)) in index.iter().enumerate() {
            match self.fields.get_mut(i + 1) {
                Some(slot) => {
                    slot.0 = field;
                    slot.1.clear();
                    slot.1.extend_from_slice(value.as_bytes());
                }
                None => self.fields.push((field, value.as_bytes().to_vec())),
            }
        }
    }

    /// The `event` field's value, for the JSON to be written into.
    pub fn event_json_mut(&mut self) -> &mut Vec<u8> {
        &mut self.fields[0].1
    }
}

impl Entry {
    /// The dedup bitmap generation and bit of this entry's key; `None` when it has no
    /// numeric key (then it is written without deduplication).
    fn dedup_slot(&self) -> Option<(u64, u64)> {
        if self.core_uuid.is_empty() {
            return None;
        }
        let sequence: u64 = self.sequence.parse().ok()?;
        Some((sequence >> DEDUP_GENERATION_BITS, sequence & ((1 << DEDUP_GENERATION_BITS) - 1)))
    }

    /// Arguments of this entry's `XADD` after the command name: key, `MAXLEN ~ n` when capped,
    /// `*`, fields.
    fn encode_xadd_args(&self, resp: &mut Resp) {
        resp.arg(self.stream_key.as_bytes());
        if self.max_len > 0 {
            resp.arg(b"MAXLEN").arg(b"~").int(self.max_len as i64);
        }
        resp.arg(b"*");
        for (name, value) in &self.fields {
            resp.arg(name.as_bytes()).arg(value);
        }
    }

    fn xadd_arg_count(&self) -> usize {
        2 + if self.max_len > 0 { 3 } else { 0 } + self.fields.len() * 2
    }
}

/// The distinct dedup bitmaps of a batch, and which one (and which bit) each entry uses.
struct DedupGroups {
    /// `(key, index of its first entry, generation)` of each bitmap.
    keys: Vec<(String, usize, u64)>,
    /// Per entry: index into `keys` and bit, or `None`.
    of_entry: Vec<Option<(usize, u64)>>,
}

impl DedupGroups {
    fn new(entries: &[Entry]) -> DedupGroups {
        let mut keys: Vec<(String, usize, u64)> = Vec::new();
        let of_entry = entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let (generation, bit) = e.dedup_slot()?;
                let same = |(_, j, g): &(String, usize, u64)| {
                    *g == generation && entries[*j].stream_key == e.stream_key && entries[*j].core_uuid == e.core_uuid
                };
                let group = match keys.iter().position(same) {
                    Some(g) => g,
                    None => {
                        keys.push((dedup_key(&e.stream_key, &e.core_uuid, generation), i, generation));
                        keys.len() - 1
                    }
                };
                Some((group, bit))
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
}

impl WriteError {
    pub fn kind(&self) -> &'static str {
        match self {
            WriteError::Connection(_) => "connection",
            WriteError::Transient(_) => "transient",
        }
    }
}

fn classify(e: RedisError) -> WriteError {
    let text = e.to_string();
    if e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.kind() == ErrorKind::Io
    {
        WriteError::Connection(text)
    } else {
        WriteError::Transient(text)
    }
}

/// A connection to Redis and the way to write idempotently on it.
pub struct RedisSink {
    conn: Connection,
    mode: WriteMode,
    script_sha: String,
    lane: usize,
    batches: u64,
    /// Streams whose IDMP window this connection has checked (8.6+ only).
    idmp_checked: Vec<String>,
    /// The batch being sent, encoded.
    resp: Resp,
    /// How long a read waits for the reply now (set on the socket only when it changes).
    reply_timeout: Duration,
}

impl RedisSink {
    /// Connects, sets timeouts, and detects the server's version to pick the write mode.
    pub fn connect(config: &RedisConfig, lane: usize) -> Result<RedisSink, WriteError> {
        let client = redis::Client::open(config.url.as_str()).map_err(|e| WriteError::Connection(e.to_string()))?;
        let mut conn = client.get_connection_with_timeout(config.dial_timeout).map_err(classify)?;
        conn.set_read_timeout(Some(config.write_timeout)).map_err(classify)?;
        conn.set_write_timeout(Some(config.write_timeout)).map_err(classify)?;
        let info: String = redis::cmd("INFO").arg("server").query(&mut conn).map_err(classify)?;
        let mode = if supports_idmp(&info) { WriteMode::Idmp } else { WriteMode::Script };
        let script_sha: String =
            redis::cmd("SCRIPT").arg("LOAD").arg(IDEMPOTENT_SCRIPT).query(&mut conn).map_err(classify)?;
        Ok(RedisSink {
            conn,
            mode,
            script_sha,
            lane,
            batches: 0,
            idmp_checked: Vec::new(),
            reply_timeout: config.write_timeout,
            resp: Resp::with_capacity(1 << 20),
        })
    }

    /// How long the next writes wait for their reply (a system call only when it changes).
    pub fn set_reply_timeout(&mut self, timeout: Duration) -> Result<(), WriteError> {
        if timeout != self.reply_timeout {
            self.conn.set_read_timeout(Some(timeout)).map_err(classify)?;
            self.reply_timeout = timeout;
        }
        Ok(())
    }

    pub fn mode(&self) -> WriteMode {
        self.mode
    }

    /// Writes `entries` in one round trip; the outcome list is parallel to `entries`.
    /// `maybe_written` says some of them may already be in Redis (an earlier attempt failed
    /// ambiguously, or they were replayed from the spool after a restart): on servers without
    /// IDMP they then take the checking path.
    pub fn write(&mut self, entries: &[Entry], maybe_written: bool) -> Result<Vec<EntryOutcome>, WriteError> {
        match self.mode {
            WriteMode::Idmp => self.write_idmp(entries),
            WriteMode::Script if maybe_written => self.write_script(entries),
            WriteMode::Script => self.write_transaction(entries),
        }
    }

    /// The checking path: one script call that skips entries whose key was already written.
    fn write_script(&mut self, entries: &[Entry]) -> Result<Vec<EntryOutcome>, WriteError> {
        let groups = DedupGroups::new(entries);
        let args = 4 + groups.keys.len() + entries.iter().map(|e| 3 + e.xadd_arg_count()).sum::<usize>();
        let resp = &mut self.resp;
        resp.clear();
        resp.command(args).arg(b"EVALSHA").arg(self.script_sha.as_bytes()).int(groups.keys.len() as i64);
        for (key, _, _) in &groups.keys {
            resp.arg(key.as_bytes());
        }
        resp.int(DEDUP_TTL_SECS as i64);
        for (e, slot) in entries.iter().zip(&groups.of_entry) {
            let (group, bit) = slot.map_or((0, 0), |(g, bit)| (g as i64 + 1, bit as i64));
            resp.int(group).int(bit).int(e.xadd_arg_count() as i64);
            e.encode_xadd_args(resp);
        }
        let reply = match self.conn.req_packed_command(self.resp.as_bytes()).map_err(classify)? {
            Value::ServerError(err) if err.code() == "NOSCRIPT" => {
                redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(IDEMPOTENT_SCRIPT)
                    .query::<String>(&mut self.conn)
                    .map_err(classify)?;
                return Err(WriteError::Transient("script was not loaded (server restarted?); loaded it".into()));
            }
            Value::ServerError(err) => return Err(WriteError::Transient(server_error_text(&err))),
            reply => reply,
        };
        let Value::Array(items) = reply else {
            return Err(WriteError::Transient(format!("unexpected script reply {reply:?}")));
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
        outcomes.resize(entries.len(), EntryOutcome::Pending);
        Ok(outcomes)
    }

    /// The fast path for entries never sent before: one `MULTI`/`EXEC` that records every key
    /// (`BITFIELD ... SET u1 <bit> 1`, first, so an OOM refuses the whole transaction) and adds
    /// every entry. Either all of it happens or none, so a retry after an ambiguous failure can
    /// take the checking path and find out exactly what is there.
    fn write_transaction(&mut self, entries: &[Entry]) -> Result<Vec<EntryOutcome>, WriteError> {
        let groups = DedupGroups::new(entries);
        let resp = &mut self.resp;
        resp.clear();
        resp.command(1).arg(b"MULTI");
        for (g, (key, _, _)) in groups.keys.iter().enumerate() {
            let bits = groups.of_entry.iter().flatten().filter(|(group, _)| *group == g);
            resp.command(2 + 4 * bits.clone().count()).arg(b"BITFIELD").arg(key.as_bytes());
            for (_, bit) in bits {
                resp.arg(b"SET").arg(b"u1").int(*bit as i64).arg(b"1");
            }
            resp.command(3).arg(b"EXPIRE").arg(key.as_bytes()).int(DEDUP_TTL_SECS as i64);
        }
        let before_xadds = resp.commands() - 1;
        for e in entries {
            resp.command(1 + e.xadd_arg_count()).arg(b"XADD");
            e.encode_xadd_args(resp);
        }
        let trim_now = self.batches.is_multiple_of(DEDUP_TRIM_EVERY);
        self.batches += 1;
        if trim_now {
            for (_, first, generation) in groups.keys.iter().filter(|(_, _, g)| *g > DEDUP_KEEP_GENERATIONS) {
                let old = dedup_key(
                    &entries[*first].stream_key,
                    &entries[*first].core_uuid,
                    generation - DEDUP_KEEP_GENERATIONS - 1,
                );
                resp.command(2).arg(b"UNLINK").arg(old.as_bytes());
            }
        }
        let queued = resp.commands() - 1;
        resp.command(1).arg(b"EXEC");
        // The replies: +OK, one +QUEUED per command (an error there aborts the transaction,
        // which the call reports as an error), then EXEC's array.
        let mut replies = self.conn.req_packed_commands(self.resp.as_bytes(), queued + 1, 1).map_err(classify)?;
        let exec = replies.pop().unwrap_or(Value::Nil);
        let items = match exec {
            Value::Array(items) => items,
            Value::ServerError(err) => return Err(WriteError::Transient(server_error_text(&err))),
            other => return Err(WriteError::Transient(format!("unexpected EXEC reply {other:?}"))),
        };
        let mut outcomes = Vec::with_capacity(entries.len());
        let mut refused = Vec::new();
        for (e, reply) in entries.iter().zip(items.into_iter().skip(before_xadds)) {
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
            if let Some((generation, bit)) = e.dedup_slot() {
                let _: redis::RedisResult<Value> = redis::cmd("SETBIT")
                    .arg(dedup_key(&e.stream_key, &e.core_uuid, generation))
                    .arg(bit)
                    .arg(0)
                    .query(&mut self.conn);
            }
        }
        outcomes.resize(entries.len(), EntryOutcome::Pending);
        Ok(outcomes)
    }

    fn write_idmp(&mut self, entries: &[Entry]) -> Result<Vec<EntryOutcome>, WriteError> {
        let resp = &mut self.resp;
        resp.clear();
        let mut producer = String::new();
        for e in entries {
            let idmp = !e.core_uuid.is_empty() && !e.sequence.is_empty();
            resp.command(1 + e.xadd_arg_count() + if idmp { 3 } else { 0 }).arg(b"XADD").arg(e.stream_key.as_bytes());
            if idmp {
                producer.clear();
                producer.push_str(&e.core_uuid);
                producer.push(':');
                producer.push_str(itoa::Buffer::new().format(self.lane));
                resp.arg(b"IDMP").arg(producer.as_bytes()).arg(e.sequence.as_bytes());
            }
            if e.max_len > 0 {
                resp.arg(b"MAXLEN").arg(b"~").int(e.max_len as i64);
            }
            resp.arg(b"*");
            for (name, value) in &e.fields {
                resp.arg(name.as_bytes()).arg(value);
            }
        }
        let replies = self.conn.req_packed_commands(self.resp.as_bytes(), 0, entries.len()).map_err(classify)?;
        // The stream exists now: size its IDMP window once per connection.
        for e in entries {
            if !self.idmp_checked.contains(&e.stream_key) {
                if let Err(err) = self.ensure_idmp_window(&e.stream_key) {
                    tracing::warn!(stream = %e.stream_key, error = %err, "cannot check the stream's IDMP window");
                }
                self.idmp_checked.push(e.stream_key.clone());
            }
        }
        let mut outcomes = Vec::with_capacity(entries.len());
        for reply in replies {
            match reply {
                Value::BulkString(b) => outcomes.push(EntryOutcome::Written(String::from_utf8_lossy(&b).into_owned())),
                Value::ServerError(err) => {
                    let text = server_error_text(&err);
                    if matches!(
                        err.code(),
                        "OOM" | "LOADING" | "BUSY" | "MISCONF" | "READONLY" | "NOREPLICAS" | "TRYAGAIN" | "MASTERDOWN"
                    ) {
                        if outcomes.is_empty() {
                            return Err(WriteError::Transient(text));
                        }
                        break;
                    }
                    outcomes.push(EntryOutcome::Rejected(text));
                }
                other => outcomes.push(EntryOutcome::Rejected(format!("unexpected reply {other:?}"))),
            }
        }
        outcomes.resize(entries.len(), EntryOutcome::Pending);
        Ok(outcomes)
    }

    /// Configures the IDMP window of a stream on 8.6+ where it differs from ours (calling
    /// `XCFGSET` clears the stream's IDMP maps, so it is only sent when needed).
    pub fn ensure_idmp_window(&mut self, stream_key: &str) -> Result<(), WriteError> {
        if self.mode != WriteMode::Idmp {
            return Ok(());
        }
        let info: Value = redis::cmd("XINFO").arg("STREAM").arg(stream_key).query(&mut self.conn).map_err(classify)?;
        let text = format!("{info:?}");
        if text.contains(&format!("{IDMP_MAXSIZE}")) && text.contains(&format!("{IDMP_DURATION_SECS}")) {
            return Ok(());
        }
        redis::cmd("XCFGSET")
            .arg(stream_key)
            .arg("IDMP-DURATION")
            .arg(IDMP_DURATION_SECS)
            .arg("IDMP-MAXSIZE")
            .arg(IDMP_MAXSIZE)
            .query::<Value>(&mut self.conn)
            .map_err(classify)?;
        Ok(())
    }
}

/// An error reply as text: its code and message.
fn server_error_text(err: &redis::ServerError) -> String {
    format!("{} {}", err.code(), err.details().unwrap_or(""))
}

/// One dedup bitmap: sequences `generation * 2^20 ..` of one Core-UUID, kept beside the stream.
pub fn dedup_key(stream_key: &str, core_uuid: &str, generation: u64) -> String {
    format!("{stream_key}:idmp:{core_uuid}:{generation}")
}

/// Whether `INFO server` reports a version with `XADD ... IDMP` (8.6 or later).
pub fn supports_idmp(info: &str) -> bool {
    let Some(version) = info.lines().find_map(|l| l.strip_prefix("redis_version:")) else {
        return false;
    };
    let mut parts = version.trim().split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (8, 6)
}

/// Capped exponential backoff: `base * 2^attempt`, never above `max`.
pub fn backoff(base: Duration, attempt: u32, max: Duration) -> Duration {
    base.saturating_mul(1u32 << attempt.min(16)).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_detection() {
        assert!(!supports_idmp("# Server\r\nredis_version:7.0.15\r\n"));
        assert!(!supports_idmp("redis_version:8.4.0\r\n"));
        assert!(supports_idmp("redis_version:8.6.0\r\n"));
        assert!(supports_idmp("redis_version:9.0.1\r\n"));
        assert!(!supports_idmp("garbage"));
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
        for (format, name, seq, expected) in [
            (EntryFormat::Full, "CHANNEL_CREATE", "12", full("CHANNEL_CREATE", "12")),
            (EntryFormat::Reference, "DTMF", "13", vec![("event", b"{}".to_vec())]),
            (EntryFormat::Full, "HEARTBEAT", "1234567", full("HEARTBEAT", "1234567")),
        ] {
            entry.refill(format, ("stream", 7), name, "uid", "core", seq);
            entry.event_json_mut().extend_from_slice(b"{}");
            assert_eq!(entry.fields, expected);
            let fresh = Entry::new(format, ("stream", 7), name, "uid", "core", seq, b"{}".to_vec());
            assert_eq!(entry.fields, fresh.fields);
            assert_eq!((entry.stream_key.as_str(), entry.max_len), ("stream", 7));
            assert_eq!((entry.core_uuid.as_str(), entry.sequence.as_str()), ("core", seq));
        }
    }

    #[test]
    fn backoff_is_capped() {
        let b = Duration::from_millis(100);
        assert_eq!(backoff(b, 0, Duration::from_secs(5)), b);
        assert_eq!(backoff(b, 3, Duration::from_secs(5)), Duration::from_millis(800));
        assert_eq!(backoff(b, 30, Duration::from_secs(5)), Duration::from_secs(5));
    }
}
