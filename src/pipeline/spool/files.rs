//! The spool's files: segment names, the checksummed read cursor, the check of a segment's
//! records on open, and the free space of the file system holding them.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tracing::warn;

use super::record;
use crate::envelope::SpoolPos;

pub(super) fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

/// Where a segment's unread records begin, when its first ones were acknowledged before
/// events were put in front of it ([`super::LaneSpool::prepend`]): a checksummed position,
/// like the cursor.
pub(super) fn start_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.start"))
}

/// Removes a segment's start file, if it has one.
pub(super) fn remove_start(dir: &Path, id: u64) -> io::Result<()> {
    match std::fs::remove_file(start_path(dir, id)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

pub(super) fn read_cursor(file: &File) -> io::Result<Option<SpoolPos>> {
    let mut buf = [0u8; 20];
    match file.read_exact_at(&mut buf, 0) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let crc = u32::from_le_bytes(buf[16..20].try_into().expect("4 bytes"));
    if crc32fast::hash(&buf[..16]) != crc {
        warn!("spool cursor is corrupt; replaying from the first segment (duplicates are suppressed)");
        return Ok(None);
    }
    Ok(Some(SpoolPos {
        segment: u64::from_le_bytes(buf[0..8].try_into().expect("8 bytes")),
        offset: u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes")),
    }))
}

/// Bytes an unprivileged writer may still use on the file system holding `dir`.
pub(super) fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string and `stat` a valid statvfs to fill.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 || stat.f_flag & libc::ST_RDONLY != 0 {
        return None;
    }
    Some(stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// A copy of an I/O error that keeps its OS code (the drop reason depends on it).
pub(crate) fn same_error(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

pub(super) fn write_cursor(file: &File, pos: SpoolPos) -> io::Result<()> {
    let mut buf = [0u8; 20];
    buf[0..8].copy_from_slice(&pos.segment.to_le_bytes());
    buf[8..16].copy_from_slice(&pos.offset.to_le_bytes());
    let crc = crc32fast::hash(&buf[..16]);
    buf[16..20].copy_from_slice(&crc.to_le_bytes());
    file.write_all_at(&buf, 0)
}

/// Checks every record of a segment from `from`; truncates at the first bad one.
/// Returns (length kept, records after `from`, bytes truncated).
pub(super) fn verify_segment(path: &Path, from: u64) -> io::Result<(u64, u64, u64)> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let total = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(256 * 1024, &file);
    reader.seek(SeekFrom::Start(from.min(total)))?;
    let mut offset = from.min(total);
    let mut records = 0u64;
    let mut payload = Vec::new();
    while offset < total {
        let mut head = [0u8; record::HEADER_LEN];
        if offset + record::HEADER_LEN as u64 > total || reader.read_exact(&mut head).is_err() {
            break;
        }
        let Ok((len, crc)) = record::header(&head) else { break };
        if offset + (record::HEADER_LEN + len) as u64 > total {
            break;
        }
        payload.resize(len, 0);
        if reader.read_exact(&mut payload).is_err()
            || record::decode(&payload, crc, &record::V1Streams::default()).is_err()
        {
            break;
        }
        offset += (record::HEADER_LEN + len) as u64;
        records += 1;
    }
    if offset < total {
        file.set_len(offset)?;
        file.sync_all()?;
    }
    Ok((offset, records, total - offset))
}

/// Whether `path` no longer leads to the open `file` (deleted, or another file put there).
pub(super) fn displaced(path: &Path, file: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(path), file.metadata()) {
        (Ok(named), Ok(open)) => (named.dev(), named.ino()) != (open.dev(), open.ino()),
        _ => true,
    }
}

/// Puts a segment whose file was deleted while the spool held it open back at `path`: its
/// bytes are copied through the open handle (`/proc/self/fd`, which reaches a deleted file's
/// data for as long as a handle is open) and synced.
/// The copy is made under another name and renamed into place, so `path` is never seen half
/// written, and a file already there is never truncated.
pub(super) fn restore_segment(open: &File, path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut from = File::open(format!("/proc/self/fd/{}", open.as_raw_fd()))?;
    let copy = path.with_extension("restoring");
    let mut to = OpenOptions::new().write(true).create(true).truncate(true).open(&copy)?;
    io::copy(&mut from, &mut to)?;
    to.sync_data()?;
    std::fs::rename(&copy, path)
}

/// The whole records of a segment file between `from` and `to`, and where they end: at `to`,
/// or earlier when the file is shorter (or cut inside a record).
pub(super) fn count_whole_records(path: &Path, from: u64, to: u64) -> io::Result<(u64, u64)> {
    let mut f = BufReader::new(File::open(path)?);
    let size = f.get_ref().metadata()?.len().min(to);
    f.seek(SeekFrom::Start(from))?;
    let (mut offset, mut n) = (from, 0);
    while offset + record::HEADER_LEN as u64 <= size {
        let mut head = [0u8; record::HEADER_LEN];
        f.read_exact(&mut head)?;
        let Ok((len, _)) = record::header(&head) else { break };
        let end = offset + (record::HEADER_LEN + len) as u64;
        if end > size {
            break;
        }
        f.seek_relative(len as i64)?;
        (offset, n) = (end, n + 1);
    }
    Ok((n, offset))
}

/// How many whole records `pending` (records not yet written to their segment) holds.
pub(super) fn buffered_records(mut pending: &[u8]) -> u64 {
    let mut n = 0;
    while let Some(head) = pending.get(..record::HEADER_LEN) {
        let head: &[u8; record::HEADER_LEN] = head.try_into().expect("HEADER_LEN bytes");
        let Ok((len, _)) = record::header(head) else { break };
        pending = pending.get(record::HEADER_LEN + len..).unwrap_or(&[]);
        n += 1;
    }
    n
}
