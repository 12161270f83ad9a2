//! The checking path: one Lua script call (`idempotent.lua`) writes a batch that may already
//! be in Redis, skipping (and reporting as duplicates) the entries whose key is recorded.

use std::borrow::Borrow;

use redis::{ConnectionLike, Value};

use crate::envelope::EventId;

use super::error::{classify, server_error, server_error_text};
use super::keys::{fence_key, DEDUP_TTL_SECS};
use super::request::{DedupGroups, DedupMark, Failure, Undecodable};
use super::{Entry, EntryOutcome, RedisSink, WriteError};

/// The checking path's Lua script.
pub(crate) const IDEMPOTENT_SCRIPT: &str = include_str!("idempotent.lua");

impl RedisSink {
    /// The checking path: one script call that skips entries whose key was already written.
    pub(super) fn write_script<E: Borrow<Entry>>(&mut self, entries: &[E]) -> Result<Vec<EntryOutcome>, Failure> {
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
}
