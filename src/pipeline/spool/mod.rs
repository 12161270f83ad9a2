//! The durable spool: per lane, an append-only log of checksummed records in segment files,
//! which takes over when Redis is unreachable or slower than the input.
//!
//! Layout: `SPOOL_DIR/lane-<n>/<segment id>.seg` plus a `cursor` file holding the committed
//! read position (everything before it was acknowledged by Redis), and a `<segment id>.start`
//! beside a segment whose first records were acknowledged before events were put in front of
//! it (a spill, [`LaneSpool::prepend`]): reading comes back to it there, not at its start.
//! Appended records collect in
//! a small buffer that [`LaneSpool::flush`] writes with one `write`: the reader flushes after
//! each socket read, reading back flushes first, and the buffer is flushed whenever it passes
//! [`FLUSH_BYTES`]. Once flushed, an event survives a SIGKILL of the agent (the kernel holds
//! it); segments are fsynced when they are closed and on shutdown, so a power loss can cost
//! the last unsynced segment's tail. On open, every record after the cursor is
//! verified; a torn or corrupt record and everything after it in that segment is truncated with a
//! warning. Records read back but not yet acknowledged are re-read after a restart; the
//! idempotent writes make that safe.
//!
//! A spool that cannot write (disk full, I/O error, read-only) is a state, not a flood: the
//! first failure is logged once (then a reminder a minute), [`SpoolBudget::fault`] names it for
//! `/health`, appends are refused at once (the lane keeps events in memory or counts them as
//! dropped) and a write is tried again at most every [`RETRY_EVERY`]. Records that were
//! buffered when writing failed are still read back, from the buffer, in order, so the lane
//! keeps serving Redis. The first write that succeeds ends the state, with one log line.
//!
//! Files deleted while the agent runs (by hand during an incident, or by a cleaner of temporary
//! files) do not stop a lane: when a file the spool needs is not found (or is shorter than
//! what was written to it, or the tail's name leads to another file), it puts back what it
//! still holds open (the segment being appended to, with its buffered records, and the one
//! being read), recreates the directory and the cursor, counts the unread events that were only
//! in the deleted files as lost (`eslstream_events_dropped_total{reason="spool_lost"}`, one
//! error line) and reads on ([`LaneSpool::recover_deleted`]).
//!
//! This file owns one lane's spool ([`LaneSpool`]); [`record`] the record format, `budget` the
//! budget all lanes share and why an append is refused, `files` the segment files and the
//! cursor, `open` the start-up (and the re-partition when `WRITER_WORKERS` changed).

mod budget;
mod files;
mod open;
pub mod record;

pub use budget::SpoolBudget;
pub(crate) use budget::SpoolError;
pub(crate) use files::same_error;
use files::{
    buffered_records, count_whole_records, displaced, free_bytes, read_cursor, remove_start, restore_segment,
    segment_path, start_path, verify_segment, write_cursor,
};
pub(crate) use open::open_lanes;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::envelope::{Envelope, SpoolPos};
use crate::telemetry::metrics::metrics;

/// A segment is closed and a new one started past this size.
pub(crate) const SEGMENT_BYTES: u64 = 16 << 20;
/// Appended records are written once this many bytes are buffered (or on [`LaneSpool::flush`]).
pub(crate) const FLUSH_BYTES: usize = 256 * 1024;
/// Past this many buffered bytes that cannot be written, appends are refused.
const MAX_PENDING: usize = 8 << 20;
/// Segment ids start here so that segments can be put in front of the first one.
const FIRST_SEGMENT: u64 = 1 << 32;
/// While the spool cannot write, a write is tried again at most this often.
pub(crate) const RETRY_EVERY: Duration = Duration::from_millis(100);
/// A full disk counts as writable again once this much is free.
const RECOVERED_FREE_BYTES: u64 = 1 << 20;
/// While the spool cannot write, the error is logged again this often.
const REMIND_EVERY: Duration = Duration::from_secs(60);
/// While events are being spooled, the spool looks this often whether the segment it appends
/// to is still there: records written to a deleted file would not survive a SIGKILL (it is
/// otherwise noticed only when a segment is opened, created or synced).
const DELETION_CHECK_EVERY: Duration = Duration::from_secs(1);

/// A spool that cannot write: since when, the error, when a write was last tried.
#[derive(Debug)]
struct Failing {
    error: io::Error,
    last_try: Instant,
    last_log: Instant,
}

/// What opening a lane's spool found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub segments: usize,
    pub records: u64,
    pub truncated_bytes: u64,
}

/// What a [`LaneSpool::rewind`] moved back, to undo it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rewound {
    read: SpoolPos,
    records: u64,
}

impl Rewound {
    /// Records made unread again: those read since the last commit, unless some were in files
    /// deleted under the agent.
    pub(crate) fn records(&self) -> u64 {
        self.records
    }
}

/// One lane's spool.
pub struct LaneSpool {
    dir: PathBuf,
    /// Segment id → length in bytes.
    segments: BTreeMap<u64, u64>,
    /// Segment id → where its unread records begin, for the segments whose first records were
    /// acknowledged before events were put in front of them (persisted as `<id>.start`).
    starts: BTreeMap<u64, u64>,
    tail: Option<(u64, File)>,
    read: SpoolPos,
    reader: Option<(u64, BufReader<File>)>,
    committed: SpoolPos,
    /// Records up to here were in the spool when it was opened: they may have been sent
    /// before a crash, so they are read back as `maybe_written`.
    replay_end: SpoolPos,
    cursor: File,
    unread: u64,
    budget: Arc<SpoolBudget>,
    scratch: Vec<u8>,
    /// Records appended to the tail segment and not yet written to it.
    pending: Vec<u8>,
    /// The streams records of the previous format name by number.
    v1_streams: record::V1Streams,
    /// A segment file was created since the last [`LaneSpool::sync`]: the directory entry
    /// must reach the disk too.
    dir_dirty: bool,
    /// Set while writing fails.
    failing: Option<Failing>,
    /// This spool's lane, for its log lines.
    lane: String,
    /// `SPOOL_DIR/lanes` and the number it holds ([`open_lanes`]), written again if the
    /// directory is deleted under the agent: the next start must know how the spool is split.
    lane_count: Option<(PathBuf, usize)>,
    /// When [`LaneSpool::flush`] last looked whether the tail's file is still there.
    checked_at: Instant,
}

impl LaneSpool {
    /// Opens (or creates) the spool in `dir`, verifying and repairing what is there.
    pub fn open(dir: &Path, budget: Arc<SpoolBudget>) -> io::Result<(LaneSpool, Recovery)> {
        fs::create_dir_all(dir)?;
        let (mut ids, mut start_ids): (Vec<u64>, Vec<u64>) = (Vec::new(), Vec::new());
        for entry in fs::read_dir(dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = name.strip_suffix(".seg").and_then(|n| n.parse().ok()) {
                ids.push(id);
            } else if let Some(id) = name.strip_suffix(".start").and_then(|n| n.parse().ok()) {
                start_ids.push(id);
            } else if name.ends_with(".restoring") {
                // A segment being put back when the agent stopped: the segment is whole or gone.
                fs::remove_file(dir.join(&*name))?;
            }
        }
        ids.sort_unstable();
        let cursor = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(dir.join("cursor"))?;
        let first = ids.first().copied().unwrap_or(FIRST_SEGMENT);
        let mut starts = BTreeMap::new();
        for id in start_ids {
            let path = start_path(dir, id);
            if ids.binary_search(&id).is_err() {
                // Its segment was deleted before it (a crash in between).
                remove_start(dir, id)?;
            } else if let Ok(file) = File::open(&path) {
                match read_cursor(&file)? {
                    Some(pos) if pos.segment == id => {
                        starts.insert(id, pos.offset);
                    }
                    // Corrupt: the segment is read from its beginning, its first records as
                    // replayed (maybe written, so checked).
                    _ => warn!(file = %path.display(), "spool segment start is unreadable; reading the segment whole"),
                }
            }
        }
        let mut committed = match read_cursor(&cursor)? {
            Some(pos) if pos.segment >= first => pos,
            // The cursor's segment was drained and deleted: start at the next one.
            Some(_) | None => SpoolPos { segment: first, offset: 0 },
        };
        committed.offset = committed.offset.max(starts.get(&committed.segment).copied().unwrap_or(0));
        let mut recovery = Recovery::default();
        let mut segments = BTreeMap::new();
        for id in ids {
            let path = segment_path(dir, id);
            if id < committed.segment {
                fs::remove_file(&path)?;
                remove_start(dir, id)?;
                starts.remove(&id);
                continue;
            }
            let from = if id == committed.segment { committed.offset } else { starts.get(&id).copied().unwrap_or(0) };
            let (len, records, truncated) = verify_segment(&path, from)?;
            if truncated > 0 {
                warn!(segment = %path.display(), kept_bytes = len, truncated_bytes = truncated, "spool segment had a torn or corrupt tail; truncated");
            }
            recovery.records += records;
            recovery.truncated_bytes += truncated;
            segments.insert(id, len);
        }
        recovery.segments = segments.len();
        let replay_end =
            segments.iter().next_back().map_or(committed, |(&segment, &offset)| SpoolPos { segment, offset });
        let bytes: u64 = segments.values().sum();
        budget.used.fetch_add(bytes, Ordering::Relaxed);
        budget.events.fetch_add(recovery.records, Ordering::Relaxed);
        // The cursor's block is taken now, so that recording progress never needs new space.
        write_cursor(&cursor, committed)?;
        let spool = LaneSpool {
            dir: dir.to_owned(),
            segments,
            starts,
            tail: None,
            read: committed,
            reader: None,
            committed,
            replay_end,
            cursor,
            unread: recovery.records,
            budget,
            scratch: Vec::with_capacity(16 * 1024),
            pending: Vec::new(),
            v1_streams: record::V1Streams::default(),
            dir_dirty: false,
            failing: None,
            lane: dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            lane_count: None,
            checked_at: Instant::now(),
        };
        Ok((spool, recovery))
    }

    /// The events and jobs streams, for records of the previous format (which named them by
    /// number).
    pub(crate) fn set_v1_streams(&mut self, streams: record::V1Streams) {
        self.v1_streams = streams;
    }

    /// The file recording how many lanes the spool is split into, and that number.
    pub(crate) fn set_lane_count(&mut self, file: PathBuf, lanes: usize) {
        self.lane_count = Some((file, lanes));
    }

    /// Events appended and not yet read back.
    #[cfg(test)]
    pub(crate) fn unread(&self) -> u64 {
        self.unread
    }

    pub(crate) fn has_unread(&self) -> bool {
        self.unread > 0
    }

    /// Appends one event at the end (buffered: see [`LaneSpool::flush`]). While the spool
    /// cannot write, refused at once, but for one append every [`RETRY_EVERY`] that tries.
    pub fn append(&mut self, envelope: &Envelope) -> Result<(), SpoolError> {
        if let Some(failing) = &mut self.failing {
            if failing.last_try.elapsed() < RETRY_EVERY {
                return Err(SpoolError::Io(same_error(&failing.error)));
            }
            failing.last_try = Instant::now();
            self.flush()?;
        }
        self.scratch.clear();
        record::encode(envelope, &mut self.scratch);
        let len = self.scratch.len() as u64;
        self.reserve(len)?;
        if let Err(e) = self.make_room(len) {
            self.budget.used.fetch_sub(len, Ordering::Relaxed);
            self.write_failed(&e);
            return Err(e.into());
        }
        self.pending.extend_from_slice(&self.scratch);
        self.unread += 1;
        self.budget.events.fetch_add(1, Ordering::Relaxed);
        if self.pending.len() >= FLUSH_BYTES || self.failing.is_some() {
            // On failure the records stay buffered (and readable) and the spool is failing.
            let _ = self.flush();
        }
        Ok(())
    }

    /// Why this spool cannot write now, if it cannot.
    pub fn failing(&self) -> Option<&io::Error> {
        self.failing.as_ref().map(|f| &f.error)
    }

    /// Writing failed: enter (or stay in) the failing state; one log line per change, a
    /// reminder a minute.
    fn write_failed(&mut self, e: &io::Error) {
        let now = Instant::now();
        let copy = || same_error(e);
        match &mut self.failing {
            None => {
                error!(lane = %self.lane, error = %e, buffered_bytes = self.pending.len(), "cannot write to the spool; new events stay in memory or are dropped (counted) until it can");
                self.failing = Some(Failing { error: copy(), last_try: now, last_log: now });
                self.budget.failing_lanes.fetch_add(1, Ordering::AcqRel);
            }
            Some(failing) => {
                failing.error = copy();
                failing.last_try = now;
                if now.duration_since(failing.last_log) >= REMIND_EVERY {
                    failing.last_log = now;
                    warn!(lane = %self.lane, error = %e, "the spool still cannot write");
                }
            }
        }
        *self.budget.fault.lock() = Some(e.to_string());
    }

    /// While failing with nothing buffered, no write tells when the spool could write again:
    /// for a full disk, look at the free space (at most every [`RETRY_EVERY`]) and end the
    /// failing state once there is room for a segment's worth of writes. Other errors end with
    /// the next write that succeeds.
    pub(crate) fn probe_recovery(&mut self) {
        let Some(failing) = &mut self.failing else { return };
        if !self.pending.is_empty() || failing.last_try.elapsed() < RETRY_EVERY {
            return;
        }
        failing.last_try = Instant::now();
        let no_space = matches!(failing.error.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT));
        if no_space && free_bytes(&self.dir).is_some_and(|free| free >= RECOVERED_FREE_BYTES) {
            self.write_succeeded();
        }
    }

    fn write_succeeded(&mut self) {
        if let Some(failing) = self.failing.take() {
            info!(lane = %self.lane, failed_for = ?failing.last_log.elapsed(), "the spool can write again");
            self.budget.failing_lanes.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Writes the buffered records to the tail segment in one `write`. On failure the segment
    /// is cut back to its last whole record and the records stay buffered.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if self.checked_at.elapsed() >= DELETION_CHECK_EVERY {
            self.checked_at = Instant::now();
            if self.tail_displaced() {
                // It writes the buffered records into the file it puts back.
                self.recover_deleted()?;
            }
        }
        self.write_pending()
    }

    /// [`LaneSpool::flush`] without looking whether the tail's file is still there (what
    /// [`LaneSpool::recover_deleted`] itself uses).
    fn write_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let (id, file) = self.tail.as_mut().expect("buffered records belong to the open tail segment");
        let flushed = self.segments.get_mut(id).expect("tail segment is listed");
        match file.write_all(&self.pending) {
            Ok(()) => {
                *flushed += self.pending.len() as u64;
                self.pending.clear();
                self.write_succeeded();
                Ok(())
            }
            Err(e) => {
                let _ = file.set_len(*flushed);
                self.write_failed(&e);
                Err(e)
            }
        }
    }

    /// Makes sure the tail segment can take the buffered records plus `len` more bytes,
    /// writing them out and starting a new segment when it cannot.
    fn make_room(&mut self, len: u64) -> io::Result<()> {
        if self.pending.len() >= MAX_PENDING {
            self.flush()?;
        }
        if let Some((id, _)) = &self.tail {
            let flushed = self.segments.get(id).copied().unwrap_or(0);
            if !self.pending.is_empty() && flushed + self.pending.len() as u64 + len <= SEGMENT_BYTES {
                return Ok(());
            }
        }
        self.flush()?;
        self.tail_for(len).map(|_| ())
    }

    /// Puts `envelopes` in front of everything unread, in their order. Only valid when no
    /// spooled record is in flight (call [`LaneSpool::rewind`] first).
    pub(crate) fn prepend(&mut self, envelopes: &[Envelope]) -> Result<(), SpoolError> {
        if envelopes.is_empty() {
            return Ok(());
        }
        debug_assert_eq!(self.read, self.committed, "prepend with spooled records in flight");
        if !self.dir.is_dir() {
            self.recover_deleted()?;
        }
        self.scratch.clear();
        for e in envelopes {
            record::encode(e, &mut self.scratch);
        }
        // The records of the committed segment before the cursor are in Redis: once the new
        // segment is read, reading comes back to that segment where the cursor is now. Written
        // first: it holds whether or not the new segment then gets written.
        let resume = self.committed;
        if resume.offset > self.start_of(resume.segment) && self.segments.contains_key(&resume.segment) {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(start_path(&self.dir, resume.segment))?;
            write_cursor(&file, resume)?;
            file.sync_data()?;
            self.starts.insert(resume.segment, resume.offset);
            self.dir_dirty = true;
        }
        let len = self.scratch.len() as u64;
        self.reserve(len)?;
        let first = self.segments.keys().next().copied().unwrap_or(FIRST_SEGMENT).min(self.read.segment);
        let id = first - 1;
        let write = || -> io::Result<()> {
            let mut f = OpenOptions::new().create_new(true).write(true).open(segment_path(&self.dir, id))?;
            f.write_all(&self.scratch)?;
            f.sync_data()
        };
        if let Err(e) = write() {
            self.budget.used.fetch_sub(len, Ordering::Relaxed);
            // A segment never listed must not be found at the next start.
            let _ = fs::remove_file(segment_path(&self.dir, id));
            return Err(e.into());
        }
        self.segments.insert(id, len);
        self.dir_dirty = true;
        self.unread += envelopes.len() as u64;
        self.budget.events.fetch_add(envelopes.len() as u64, Ordering::Relaxed);
        self.read = SpoolPos { segment: id, offset: 0 };
        self.reader = None;
        self.committed = self.read;
        write_cursor(&self.cursor, self.committed)?;
        Ok(())
    }

    /// Reads up to `max` events in order into `out`, each tagged with its position.
    pub fn read_batch(&mut self, max: usize, out: &mut Vec<Envelope>) -> io::Result<usize> {
        // A failure is the spool's failing state, logged once; buffered records are read anyway.
        let _ = self.flush();
        let mut n = 0;
        while n < max && self.unread > 0 {
            match self.read_one()? {
                Some(envelope) => {
                    out.push(envelope);
                    n += 1;
                }
                None => break,
            }
        }
        Ok(n)
    }

    fn read_one(&mut self) -> io::Result<Option<Envelope>> {
        let mut recovered = false;
        loop {
            let Some(&len) = self.segments.get(&self.read.segment) else {
                // The read segment is gone (deleted after being fully committed): go to the next.
                match self.segments.range(self.read.segment..).next() {
                    Some((&next, _)) => {
                        self.read = SpoolPos { segment: next, offset: self.start_of(next) };
                        self.reader = None;
                        continue;
                    }
                    None => return Ok(None),
                }
            };
            if self.read.offset >= len {
                match self.segments.range(self.read.segment + 1..).next() {
                    Some((&next, _)) => {
                        self.read = SpoolPos { segment: next, offset: self.start_of(next) };
                        self.reader = None;
                        continue;
                    }
                    None if self.pending.is_empty() => return Ok(None),
                    // The rest is buffered: written now if the spool can, else read from the
                    // buffer (it was never on disk, so it goes on as an event in memory).
                    None => match self.flush() {
                        Ok(()) => continue,
                        Err(_) => return Ok(self.take_buffered()),
                    },
                }
            }
            let mut payload = Vec::new();
            let (plen, crc) = match self.next_record(&mut payload) {
                Ok(read) => read,
                // The file was deleted, or cut short, under the agent: once what can be is put
                // back and the rest counted lost, reading goes on.
                Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::UnexpectedEof) && !recovered => {
                    recovered = true;
                    self.recover_deleted()?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.read.offset += (record::HEADER_LEN + plen) as u64;
            self.unread -= 1;
            self.budget.events.fetch_sub(1, Ordering::Relaxed);
            match record::decode(&payload, crc, &self.v1_streams) {
                Ok(mut envelope) => {
                    envelope.spool_pos = Some(self.read);
                    envelope.maybe_written |= self.read <= self.replay_end;
                    return Ok(Some(envelope));
                }
                Err(e) => {
                    // Verified at open and written whole since: only a disk fault gets here.
                    warn!(segment = self.read.segment, offset = self.read.offset, error = %e, "skipping a corrupt spool record");
                }
            }
        }
    }

    /// Reads the record at the read position from its segment file (opened if it is not yet)
    /// into `payload`; returns its length and checksum.
    fn next_record(&mut self, payload: &mut Vec<u8>) -> io::Result<(usize, u32)> {
        if self.reader.as_ref().map(|(id, _)| *id) != Some(self.read.segment) {
            let mut f = File::open(segment_path(&self.dir, self.read.segment))?;
            f.seek(SeekFrom::Start(self.read.offset))?;
            self.reader = Some((self.read.segment, BufReader::with_capacity(256 * 1024, f)));
        }
        let (_, reader) = self.reader.as_mut().expect("opened above");
        let mut head = [0u8; record::HEADER_LEN];
        reader.read_exact(&mut head)?;
        let (plen, crc) = record::header(&head).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        payload.resize(plen, 0);
        reader.read_exact(payload)?;
        Ok((plen, crc))
    }

    /// The first buffered record, out of the buffer (only when everything before it was read).
    fn take_buffered(&mut self) -> Option<Envelope> {
        loop {
            let head: &[u8; record::HEADER_LEN] = self.pending.get(..record::HEADER_LEN)?.try_into().ok()?;
            let (plen, crc) = record::header(head).ok()?;
            let end = record::HEADER_LEN + plen;
            let decoded = record::decode(self.pending.get(record::HEADER_LEN..end)?, crc, &self.v1_streams);
            self.pending.drain(..end);
            self.budget.used.fetch_sub(end as u64, Ordering::Relaxed);
            self.budget.events.fetch_sub(1, Ordering::Relaxed);
            self.unread -= 1;
            if self.pending.is_empty() && self.unread == 0 && self.read == self.committed {
                // Read out, and what came from the files is acknowledged: give the room back.
                let _ = self.delete_acknowledged();
            }
            match decoded {
                Ok(envelope) => return Some(envelope),
                Err(e) => warn!(lane = %self.lane, error = %e, "skipping a corrupt buffered spool record"),
            }
        }
    }

    /// Where segment `id`'s unread records begin when reading comes to it.
    fn start_of(&self, id: u64) -> u64 {
        self.starts.get(&id).copied().unwrap_or(0)
    }

    /// Sends the read position back to the committed one: records read but not acknowledged
    /// will be read again.
    pub(crate) fn rewind(&mut self) -> Rewound {
        let mark = Rewound { read: self.read, records: 0 };
        if self.read == self.committed {
            return mark;
        }
        let mut back = 0u64;
        let mut pos = self.committed;
        // Count records between committed and read to restore the unread count (of a file
        // deleted or cut short, what is still there: the spill guard compares the count).
        for (&id, &len) in self.segments.range(self.committed.segment..=self.read.segment) {
            let from = if id == self.committed.segment { self.committed.offset } else { self.start_of(id) };
            let to = if id == self.read.segment { self.read.offset } else { len };
            back += count_whole_records(&segment_path(&self.dir, id), from, to).map_or(0, |(n, _)| n);
            pos = SpoolPos { segment: id, offset: to };
        }
        debug_assert_eq!(pos, self.read);
        self.unread += back;
        self.budget.events.fetch_add(back, Ordering::Relaxed);
        self.read = self.committed;
        self.reader = None;
        Rewound { records: back, ..mark }
    }

    /// Undoes a [`LaneSpool::rewind`]: the records it made unread are in flight again.
    pub(crate) fn undo_rewind(&mut self, rewound: Rewound) {
        self.unread -= rewound.records.min(self.unread);
        self.budget.events.fetch_sub(rewound.records, Ordering::Relaxed);
        self.read = rewound.read;
        self.reader = None;
    }

    /// Whether `bytes` more fit in the budget now (another lane may take the room before they
    /// are written, so a write can still find it full).
    pub(crate) fn check_room(&self, bytes: u64) -> Result<(), SpoolError> {
        let (used, max) = (self.budget.used.load(Ordering::Relaxed), self.budget.max_bytes);
        match used.checked_add(bytes) {
            Some(total) if total <= max => Ok(()),
            _ => Err(SpoolError::Full { used, max }),
        }
    }

    /// Records that everything up to `pos` was acknowledged: persists the cursor and deletes
    /// segments wholly behind it.
    pub fn commit(&mut self, pos: SpoolPos) -> io::Result<()> {
        if pos <= self.committed {
            return Ok(());
        }
        self.committed = pos;
        // Segments first: on a full disk, deleting them is what makes room (a cursor behind
        // its deleted segments is safe; the open skips to the next one).
        self.delete_acknowledged()?;
        write_cursor(&self.cursor, pos)
    }

    /// Deletes the segments wholly behind the committed position, and the last one too when
    /// everything was read and acknowledged, so a drained spool gives its bytes back at once.
    fn delete_acknowledged(&mut self) -> io::Result<()> {
        let pos = self.committed;
        let mut done: Vec<u64> = self.segments.range(..pos.segment).map(|(&id, _)| id).collect();
        if self.unread == 0 && self.read == pos && self.segments.get(&pos.segment) == Some(&pos.offset) {
            done.push(pos.segment);
        }
        for id in done {
            // Open handles keep a deleted file's blocks: close them, or the disk stays full.
            if self.tail.as_ref().is_some_and(|(t, _)| *t == id) {
                self.tail = None;
            }
            if self.reader.as_ref().is_some_and(|(r, _)| *r == id) {
                self.reader = None;
            }
            let len = self.segments.remove(&id).unwrap_or(0);
            match fs::remove_file(segment_path(&self.dir, id)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            if self.starts.remove(&id).is_some() {
                remove_start(&self.dir, id)?;
            }
            self.budget.used.fetch_sub(len, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Writes buffered records and flushes them to disk: the open segment, and the directory
    /// when a segment was created (for acknowledged events, and on shutdown). Earlier
    /// segments were synced when they were closed.
    pub fn sync(&mut self) -> io::Result<()> {
        // What is acknowledged as spooled must be in a file that is still there.
        if self.tail_displaced() {
            self.recover_deleted()?;
        }
        self.flush()?;
        if let Some((_, f)) = &self.tail {
            f.sync_data()?;
        }
        if self.dir_dirty {
            File::open(&self.dir)?.sync_all()?;
            self.dir_dirty = false;
        }
        self.cursor.sync_data()
    }

    fn reserve(&self, len: u64) -> Result<(), SpoolError> {
        let max = self.budget.max_bytes;
        let mut used = self.budget.used.load(Ordering::Relaxed);
        loop {
            if used + len > max {
                return Err(SpoolError::Full { used, max });
            }
            match self.budget.used.compare_exchange_weak(used, used + len, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(now) => used = now,
            }
        }
    }

    /// The segment being appended to is no longer what its name leads to (deleted, or replaced).
    fn tail_displaced(&self) -> bool {
        self.tail.as_ref().is_some_and(|(id, file)| displaced(&segment_path(&self.dir, *id), file))
    }

    /// A file the spool needs was not found: its directory, or files in it, were deleted while
    /// the agent ran. Puts back on disk what the spool still holds open (the segment being
    /// appended to, with its buffered records, and the segment being read), recreates the
    /// directory and the cursor, and counts the unread events that were only in the deleted
    /// files as lost, so the lane reads on rather than waiting for files that will not come
    /// back. Events read and not yet acknowledged stay with the writer; their segment is put
    /// back when it is the one being read.
    fn recover_deleted(&mut self) -> io::Result<()> {
        self.checked_at = Instant::now();
        let directory_deleted = !self.dir.is_dir();
        fs::create_dir_all(&self.dir)?;
        if let Some((file, lanes)) = self.lane_count.as_ref().filter(|(file, _)| !file.exists()) {
            fs::write(file, format!("{lanes}\n"))?;
        }
        let mut restored = 0;
        if let Some(id) = self.tail.as_ref().map(|(id, _)| *id).filter(|_| self.tail_displaced()) {
            // Buffered records go to the old file first (its handle still writes), so they are
            // put back with it; if that fails they stay buffered for the restored file.
            let _ = self.write_pending();
            let (_, old) = self.tail.take().expect("checked above");
            restore_segment(&old, &segment_path(&self.dir, id))?;
            self.tail = Some((id, OpenOptions::new().append(true).open(segment_path(&self.dir, id))?));
            restored += 1;
        }
        // The segment being read, unless it is the tail (whose handle has all of it).
        let tail = self.tail.as_ref().map(|(id, _)| *id);
        if let Some((id, reader)) = self.reader.as_ref().filter(|(id, _)| Some(*id) != tail) {
            if displaced(&segment_path(&self.dir, *id), reader.get_ref()) {
                restore_segment(reader.get_ref(), &segment_path(&self.dir, *id))?;
                restored += 1;
            }
        }
        // Read on from the files as they are now (appends go to the restored tail, not the old).
        self.reader = None;
        for (&id, &offset) in &self.starts {
            if segment_path(&self.dir, id).exists() && !start_path(&self.dir, id).exists() {
                let file =
                    OpenOptions::new().create(true).truncate(false).write(true).open(start_path(&self.dir, id))?;
                write_cursor(&file, SpoolPos { segment: id, offset })?;
                file.sync_data()?;
            }
        }
        if !self.dir.join("cursor").exists() {
            self.cursor =
                OpenOptions::new().read(true).write(true).create(true).truncate(false).open(self.dir.join("cursor"))?;
            write_cursor(&self.cursor, self.committed)?;
            self.cursor.sync_data()?;
        }
        // What can still be read: the unread records of the segments still on disk, and those
        // buffered. The rest of the unread records were only in deleted files.
        let mut readable = buffered_records(&self.pending);
        let mut gone = Vec::new();
        let mut cut = Vec::new();
        for (&id, &len) in &self.segments {
            let path = segment_path(&self.dir, id);
            if !path.exists() {
                gone.push(id);
                continue;
            }
            let from = match id.cmp(&self.read.segment) {
                std::cmp::Ordering::Less => continue, // read already (with the writer, or acknowledged)
                std::cmp::Ordering::Equal => self.read.offset,
                std::cmp::Ordering::Greater => self.start_of(id),
            };
            // A file shorter than what was written to it (replaced under the agent): its whole
            // records count, the rest is gone.
            let (records, end) = count_whole_records(&path, from, len)?;
            readable += records;
            if end < len {
                cut.push((id, len, end));
            }
        }
        for (id, len, end) in cut {
            self.segments.insert(id, end);
            self.budget.used.fetch_sub(len - end, Ordering::Relaxed);
        }
        for id in &gone {
            let len = self.segments.remove(id).unwrap_or(0);
            self.budget.used.fetch_sub(len, Ordering::Relaxed);
            if self.starts.remove(id).is_some() {
                remove_start(&self.dir, *id)?;
            }
        }
        let lost = self.unread.saturating_sub(readable);
        self.unread -= lost;
        self.budget.events.fetch_sub(lost, Ordering::Relaxed);
        if lost > 0 {
            self.budget.lost.fetch_add(lost, Ordering::Relaxed);
            metrics().events.dropped.with_label_values(&["unknown", "spool_lost", "unknown"]).inc_by(lost);
        }
        File::open(&self.dir)?.sync_all()?;
        self.dir_dirty = false;
        if lost > 0 {
            error!(lane = %self.lane, directory_deleted, restored_segments = restored, deleted_segments = gone.len(), lost_events = lost, "spool files were deleted while the agent ran; put back what it still held open and reading on: events only in the deleted files are lost (counted as dropped, reason spool_lost)");
        } else {
            warn!(lane = %self.lane, directory_deleted, restored_segments = restored, deleted_segments = gone.len(), "spool files were deleted while the agent ran; put back what it still held open, nothing was lost");
        }
        Ok(())
    }

    /// The segment to append `len` bytes to, starting a new one when the last is full.
    fn tail_for(&mut self, len: u64) -> io::Result<(u64, &mut File)> {
        let last = self.segments.iter().next_back().map(|(&id, &l)| (id, l));
        let reuse = match (&self.tail, last) {
            (Some((t, _)), Some((id, l))) => *t == id && l + len <= SEGMENT_BYTES.max(len),
            _ => false,
        };
        if !reuse && (!self.dir.is_dir() || self.tail_displaced()) {
            // The old tail is put back before it is closed, and the new one made in a
            // directory that exists.
            self.recover_deleted()?;
            return self.tail_for(len);
        }
        if !reuse {
            if let Some((_, f)) = self.tail.take() {
                f.sync_data()?;
            }
            let id = match last {
                // Reopen the last segment after a restart if it has room and nothing read it.
                Some((id, l)) if l + len <= SEGMENT_BYTES => id,
                Some((id, _)) => id + 1,
                // Never reuse the committed segment's id once it has been read from.
                None if self.committed.offset == 0 => self.committed.segment,
                None => self.committed.segment + 1,
            };
            let file = OpenOptions::new().create(true).append(true).open(segment_path(&self.dir, id))?;
            self.segments.entry(id).or_insert(0);
            self.tail = Some((id, file));
            self.dir_dirty = true;
        }
        let (id, file) = self.tail.as_mut().expect("tail set above");
        Ok((*id, file))
    }
}

impl Drop for LaneSpool {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            warn!(error = %e, lost = self.pending.len(), "cannot write buffered records to the spool on close");
        }
    }
}

#[cfg(test)]
mod tests;
