//! The fast path: a batch of numeric ids never sent before goes in one `MULTI`/`EXEC`, behind
//! a guard that keeps a late request of a connection given up on (and, for a hot-standby
//! pair, a write of an older lease epoch) from running.
//!
//! The guard is a `WATCH` of the connection's tripwire. Each transaction re-arms it after its
//! `EXEC`, so the next one is guarded by a `WATCH` that ran before any retirement could (its
//! request was answered): no extra work per batch. Where nothing is armed (the first
//! transaction on a connection, a cluster node, whose slots can move under the key) or a pair's
//! fence must be checked, [`TRANSACTION_GUARD`] runs first and trips the wire itself. To
//! retire a connection ([`RedisSink::retire`]), the writer touches its armed tripwire and sets
//! its retired marks.

use std::borrow::Borrow;

use redis::{ConnectionLike, Value};

use super::error::{classify, server_error, server_error_text};
use super::keys::{
    dedup_key, fence_key, retired_key, trip_key, DEDUP_KEEP_GENERATIONS, DEDUP_TTL_SECS, RETIRED_TTL_SECS,
};
use super::request::{DedupGroups, DedupMark, Failure, Undecodable};
use super::{Entry, EntryOutcome, RedisSink, WriteError};

/// The guard of a fast-path transaction, run once per batch between `WATCH` of the
/// connection's tripwire (beside the batch's first stream) and `MULTI`. KEYS: the tripwire,
/// the connection's retired mark beside the same stream ([`retired_key`]), then for a
/// hot-standby pair each stream's fence; ARGV: the write's lease epoch (pairs), the fences'
/// TTL. It touches the tripwire, so the `EXEC` that follows does nothing, when the connection
/// was retired (a request that arrives after the writer gave up on its connection and retried
/// elsewhere: the transaction does not check the dedup bits, so it must not run late) or, for a
/// pair, when a newer lease epoch has written to one of the streams; otherwise it raises the
/// fences to the epoch. Returns 1 (go), 0 (fenced) or 2 (retired). It calls only `BITFIELD`,
/// `SETBIT`, `EXPIRE` (and, for pairs, `GET`/`SET` on the fences), which the agent's ACL rule
/// grants already. (One small call per batch: the keys of a transaction share a slot in a
/// cluster anyway.)
pub(crate) const TRANSACTION_GUARD: &str = "local function trip() redis.call('SETBIT', KEYS[1], 0, 1) \
redis.call('EXPIRE', KEYS[1], 60) end \
if redis.call('BITFIELD', KEYS[2], 'GET', 'u1', 0)[1] == 1 then trip() return 2 end \
if #KEYS < 3 then return 1 end \
local epoch = tonumber(ARGV[1]) \
for i = 3, #KEYS do \
  if tonumber(redis.call('GET', KEYS[i]) or '0') > epoch then trip() return 0 end \
end \
for i = 3, #KEYS do \
  if tonumber(redis.call('GET', KEYS[i]) or '0') < epoch then redis.call('SET', KEYS[i], ARGV[1], 'EX', ARGV[2]) end \
end \
return 1";

/// A hot-standby pair's fence check at takeover (see `crate::ha`). KEYS: the stream's
/// fence, a tripwire; ARGV: the lease epoch, the fence's TTL. A fence newer than the epoch
/// sets the tripwire; otherwise the fence is raised to the epoch.
pub(crate) const FENCE_CHECK: &str = "local seen = tonumber(redis.call('GET', KEYS[1]) or '0') \
local epoch = tonumber(ARGV[1]) \
if seen > epoch then redis.call('SET', KEYS[2], ARGV[1], 'EX', 60) return 0 end \
if seen < epoch then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end \
return 1";

/// The transaction path deletes bitmaps behind the window once every this many batches.
pub const DEDUP_TRIM_EVERY: u64 = 64;

/// A fast-path transaction a connection sent and got no answer to: the connection's token,
/// the request's first stream (its guard checks the retired mark beside it), and the tripwire
/// its connection was `WATCH`ing when it was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unanswered {
    pub token: String,
    pub stream: String,
    pub watched: Option<String>,
}

impl RedisSink {
    /// The last fast-path transaction this connection sent without getting its answer (a timeout, a lost connection), taken once. Such a request can still reach
    /// Redis after the writer has retried it on another connection: the writer retires this
    /// connection there ([`RedisSink::retire`]) before the retry.
    pub fn take_unanswered(&mut self) -> Option<Unanswered> {
        self.unanswered.take()
    }

    /// Marks connections the writer gave up on as retired, so a transaction
    /// of theirs that reaches Redis from now on does nothing (see [`TRANSACTION_GUARD`]). The
    /// retry that follows takes the checking path, which finds whatever such a transaction
    /// wrote before.
    pub fn retire(&mut self, unanswered: &[Unanswered]) -> Result<(), WriteError> {
        let mut pipe = redis::pipe();
        for u in unanswered {
            // Touching the key its connection WATCHes makes that connection's EXEC fail.
            if let Some(watched) = &u.watched {
                pipe.cmd("SETBIT").arg(watched).arg(0).arg(1).ignore();
                pipe.cmd("EXPIRE").arg(watched).arg(60).ignore();
            }
            let key = retired_key(&u.stream, &u.token);
            pipe.cmd("SETBIT").arg(&key).arg(0).arg(1).ignore();
            pipe.cmd("EXPIRE").arg(&key).arg(RETIRED_TTL_SECS).ignore();
        }
        pipe.query::<()>(&mut self.conn).map_err(classify)
    }

    /// The fast path for entries with numeric ids never sent before: one `MULTI`/`EXEC` that
    /// records every key (`BITFIELD ... SET u1 <bit> 1`, first, so an OOM refuses the whole
    /// transaction) and adds every entry. Either all of it happens or none, so a retry after an
    /// ambiguous failure can take the checking path and find out exactly what is there.
    pub(super) fn write_transaction<E: Borrow<Entry>>(&mut self, entries: &[E]) -> Result<Vec<EntryOutcome>, Failure> {
        let groups = DedupGroups::new(entries);
        let all = || entries.iter().map(Borrow::borrow);
        let resp = &mut self.resp;
        resp.clear();
        // WATCH this connection's tripwire, then the guard, which trips it when this connection
        // was retired (the request arrived after the writer had given up on it) or, for a
        // hot-standby pair, when a newer lease epoch has written to a stream of the batch;
        // EXEC then does nothing.
        let mut streams: Vec<&str> = Vec::new();
        for e in all() {
            if !streams.contains(&e.stream_key.as_str()) {
                streams.push(&e.stream_key);
            }
        }
        let first = streams.first().copied().unwrap_or_default();
        // A WATCH armed by the previous transaction on this connection (answered, so it ran
        // before any retirement) guards this one at no cost; otherwise (the first transaction
        // on a connection, a cluster node, a pair's fence) the guard script runs.
        let mut prefix = 0;
        if self.armed.is_none() || self.fence.is_some() {
            let trip = trip_key(first, &self.token);
            resp.command(2).arg(b"WATCH").arg(trip.as_bytes());
            let fences = if self.fence.is_some() { streams.len() } else { 0 };
            resp.command(5 + fences + if fences > 0 { 2 } else { 0 });
            resp.arg(b"EVALSHA").arg(self.guard_sha.as_bytes()).int(2 + fences as i64);
            resp.arg(trip.as_bytes()).arg(retired_key(first, &self.token).as_bytes());
            if let Some((group, epoch)) = &self.fence {
                for stream in &streams {
                    resp.arg(fence_key(stream, group).as_bytes());
                }
                resp.int(*epoch as i64).int(DEDUP_TTL_SECS as i64);
            }
            prefix = 2;
        }
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
        // EXEC ends every WATCH: arm the next transaction's (not on a cluster node, whose
        // slots can move under a key).
        let rearm = self.rearm.then(|| trip_key(first, &self.token));
        if let Some(key) = &rearm {
            resp.command(2).arg(b"WATCH").arg(key.as_bytes());
        }
        let rearms = usize::from(rearm.is_some());
        let waits = self.encode_wait();
        // The replies, all read here (redis-rs's skipping of replies assumes MULTI comes
        // first): WATCH's +OK and the guard's answer, MULTI's +OK, one +QUEUED per
        // command (an error there aborts the transaction: EXEC answers EXECABORT), EXEC's
        // array (nil when the wire was tripped), and WAIT's count.
        let sent = self.conn.req_packed_commands(self.resp.as_bytes(), 0, prefix + 1 + queued + 1 + rearms + waits);
        let mut replies = match sent.map_err(classify) {
            Ok(replies) => replies,
            Err(WriteError::Connection(e)) => {
                // No answer: the request may still reach Redis later, after the retry.
                let watched = self.armed.take();
                self.unanswered = Some(Unanswered { token: self.token.clone(), stream: first.to_owned(), watched });
                return Err(WriteError::Connection(e).into());
            }
            Err(e) => return Err(e.into()),
        };
        let wait = if waits > 0 { replies.pop() } else { None };
        self.armed = match rearm {
            Some(key) if matches!(replies.pop(), Some(Value::Okay)) => Some(key),
            _ => None,
        };
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
