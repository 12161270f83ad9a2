//! Dead letters: events Redis refused for good (e.g. `WRONGTYPE` on the stream key, an entry
//! over a size limit), kept on disk with the error so they can be listed, inspected and
//! replayed (`GET /dlq`, `GET /dlq/{id}`, `POST /dlq/{id}/retry`) instead of being retried
//! forever or lost.
//!
//! One JSON file per dead letter in `SPOOL_DIR/dlq/`, written to a temporary name and renamed,
//! so a crash never leaves half a record. IDs sort by time.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::envelope::{now_us, EventId};
use crate::sink::entry::EventField;
use crate::sink::redis::Entry;

/// The most dead letters kept; past it new ones are dropped (counted).
pub(crate) const MAX_DEAD_LETTERS: u64 = 100_000;

/// One refused event, with everything needed to write it again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeadLetter {
    pub id: String,
    /// When Redis refused it, µs since the epoch.
    pub failed_at_us: i64,
    /// Redis's error.
    pub error: String,
    pub stream_key: String,
    pub max_len: u64,
    pub event_name: String,
    pub unique_id: String,
    /// The idempotency key's producer (`core_uuid` for ESL events).
    pub core_uuid: String,
    /// The idempotency key's id (`event_sequence` for ESL events).
    pub event_sequence: String,
    /// The id is a string (an HTTP idempotency key), not a number.
    #[serde(default)]
    pub string_id: bool,
    /// The entry's field/value pairs as they were sent (values as UTF-8 text).
    pub fields: Vec<(String, String)>,
}

/// A line of `GET /dlq`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub id: String,
    pub failed_at_us: i64,
    pub error: String,
    pub stream_key: String,
    pub event_name: String,
    pub unique_id: String,
    /// The idempotency key: producer and id (an outbox row's id, an ESL event's sequence).
    pub core_uuid: String,
    pub event_sequence: String,
}

impl DeadLetter {
    /// Rebuilds the entry to write it again (same idempotency key).
    pub(crate) fn to_entry(&self) -> Result<Entry, String> {
        const NAMES: &[&str] = &["event", "event_name", "unique_id", "core_uuid", "event_sequence"];
        let mut fields = self
            .fields
            .iter()
            .map(|(name, value)| {
                let name = NAMES.iter().find(|n| **n == name).ok_or_else(|| format!("unknown field {name:?}"))?;
                Ok((*name, value.as_bytes().to_vec()))
            })
            .collect::<Result<Vec<_>, String>>()?;
        if fields.first().map(|(name, _)| *name) != Some("event") {
            return Err("the first field is not `event`".into());
        }
        let (_, event) = fields.remove(0);
        let id = match self.event_sequence.parse::<u64>() {
            Ok(n) if !self.string_id => EventId::Seq(n),
            _ => EventId::Key(self.event_sequence.clone()),
        };
        Ok(Entry {
            stream_key: self.stream_key.clone(),
            max_len: self.max_len,
            producer: self.core_uuid.clone(),
            id,
            event: EventField::Json(event),
            index: fields,
        })
    }
}

/// The dead-letter store.
pub struct DeadLetters {
    dir: PathBuf,
    count: AtomicU64,
    next: AtomicU64,
}

impl DeadLetters {
    pub fn open(dir: &Path) -> io::Result<DeadLetters> {
        fs::create_dir_all(dir)?;
        let mut count = 0;
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("json") => count += 1,
                Some("tmp") => fs::remove_file(&path)?,
                _ => {}
            }
        }
        Ok(DeadLetters { dir: dir.to_owned(), count: AtomicU64::new(count), next: AtomicU64::new(0) })
    }

    /// Dead letters stored now.
    pub fn len(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stores a refused entry; returns its id, or an error when the store is full or failing.
    pub fn add(&self, entry: &Entry, event_name: &str, unique_id: &str, error: &str) -> io::Result<String> {
        if self.len() >= MAX_DEAD_LETTERS {
            return Err(io::Error::other(format!("dead-letter store is full ({MAX_DEAD_LETTERS} entries)")));
        }
        let failed_at_us = now_us();
        let id = format!("{failed_at_us}-{}", self.next.fetch_add(1, Ordering::Relaxed));
        let letter = DeadLetter {
            id: id.clone(),
            failed_at_us,
            error: error.to_owned(),
            stream_key: entry.stream_key.clone(),
            max_len: entry.max_len,
            event_name: event_name.to_owned(),
            unique_id: unique_id.to_owned(),
            core_uuid: entry.producer.clone(),
            event_sequence: entry.id.text(),
            string_id: matches!(entry.id, EventId::Key(_)),
            fields: entry
                .fields()
                .map_err(|e| io::Error::other(format!("the event cannot be decoded: {e}")))?
                .iter()
                .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v).into_owned()))
                .collect(),
        };
        let tmp = self.dir.join(format!("{id}.tmp"));
        let bytes = serde_json::to_vec(&letter).map_err(io::Error::other)?;
        if let Err(e) = fs::write(&tmp, &bytes) {
            if e.kind() != io::ErrorKind::NotFound {
                return Err(e);
            }
            // The directory was deleted while the agent ran, and the letters in it with it.
            fs::create_dir_all(&self.dir)?;
            let lost = self.count.swap(0, Ordering::Relaxed);
            tracing::warn!(dir = %self.dir.display(), lost, "the dead-letter directory was deleted while the agent ran; recreated it");
            fs::write(&tmp, &bytes)?;
        }
        fs::rename(&tmp, self.path(&id))?;
        self.count.fetch_add(1, Ordering::Relaxed);
        Ok(id)
    }

    /// Up to `limit` dead letters, oldest first.
    pub fn list(&self, limit: usize) -> io::Result<Vec<Summary>> {
        let entries = match fs::read_dir(&self.dir) {
            // Deleted while the agent ran: no letters (the next one recreates it).
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            entries => entries?,
        };
        let mut ids: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".json")).map(str::to_owned))
            .collect();
        ids.sort_by_key(|id| {
            id.split_once('-').and_then(|(t, n)| Some((t.parse::<i64>().ok()?, n.parse::<u64>().ok()?)))
        });
        let mut out = Vec::new();
        for id in ids.into_iter().take(limit) {
            if let Some(d) = self.get(&id)? {
                out.push(Summary {
                    id: d.id,
                    failed_at_us: d.failed_at_us,
                    error: d.error,
                    stream_key: d.stream_key,
                    event_name: d.event_name,
                    unique_id: d.unique_id,
                    core_uuid: d.core_uuid,
                    event_sequence: d.event_sequence,
                });
            }
        }
        Ok(out)
    }

    /// One dead letter by id (`None` when there is no such id).
    pub fn get(&self, id: &str) -> io::Result<Option<DeadLetter>> {
        if !valid_id(id) {
            return Ok(None);
        }
        match fs::read(self.path(id)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(io::Error::other),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes a dead letter (after a successful retry). Returns whether it existed.
    pub fn remove(&self, id: &str) -> io::Result<bool> {
        if !valid_id(id) {
            return Ok(false);
        }
        match fs::remove_file(self.path(id)) {
            Ok(()) => {
                self.count.fetch_sub(1, Ordering::Relaxed);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }
}

/// Ids are `<digits>-<digits>`: nothing else may reach the file system.
fn valid_id(id: &str) -> bool {
    id.split_once('-').is_some_and(|(a, b)| {
        !a.is_empty() && !b.is_empty() && a.bytes().all(|c| c.is_ascii_digit()) && b.bytes().all(|c| c.is_ascii_digit())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            stream_key: "s".into(),
            max_len: 10,
            producer: "core".into(),
            id: EventId::Seq(7),
            // As the writer has it: the event as received, its JSON made when it is needed.
            event: EventField::event(crate::envelope::BodyFormat::EslPlain, "Event-Name: DTMF\n".into()),
            index: vec![("event_name", b"DTMF".to_vec())],
        }
    }

    #[test]
    fn add_list_get_remove_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeadLetters::open(dir.path()).unwrap();
        let a = store.add(&entry(), "DTMF", "u1", "WRONGTYPE Operation against a key").unwrap();
        let b = store.add(&entry(), "DTMF", "u2", "ERR too big").unwrap();
        assert_eq!(store.len(), 2);
        let listed: Vec<_> = store.list(10).unwrap().into_iter().map(|s| s.id).collect();
        assert_eq!(listed, vec![a.clone(), b.clone()]);
        let got = store.get(&a).unwrap().unwrap();
        let again = got.to_entry().unwrap().fields().unwrap();
        assert_eq!(again, entry().fields().unwrap());
        assert_eq!(again[0], ("event", b"{\"Event-Name\":\"DTMF\"}".to_vec()));
        assert_eq!(got.error, "WRONGTYPE Operation against a key");
        assert!(store.remove(&a).unwrap());
        assert!(!store.remove(&a).unwrap());
        drop(store);
        let store = DeadLetters::open(dir.path()).unwrap();
        assert_eq!(store.len(), 1);
    }

    /// The directory deleted while the agent runs: listing says there are none (not an error),
    /// and the next dead letter recreates it and is counted alone.
    #[test]
    fn a_deleted_directory_is_recreated_by_the_next_letter() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("dlq");
        let store = DeadLetters::open(&dir).unwrap();
        store.add(&entry(), "DTMF", "u1", "WRONGTYPE").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(store.list(10).unwrap().is_empty());
        let id = store.add(&entry(), "DTMF", "u2", "WRONGTYPE").unwrap();
        assert_eq!(store.len(), 1);
        let listed: Vec<_> = store.list(10).unwrap().into_iter().map(|s| s.id).collect();
        assert_eq!(listed, vec![id]);
    }

    #[test]
    fn ids_cannot_escape_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeadLetters::open(dir.path()).unwrap();
        for bad in ["../x", "1-2/../../etc", "", "abc", "1-", "-1", "1-2.json"] {
            assert!(store.get(bad).unwrap().is_none(), "{bad}");
            assert!(!store.remove(bad).unwrap(), "{bad}");
        }
    }
}
