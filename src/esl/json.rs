//! An event as the JSON of a stream entry's `event` field, from the switch's plain or JSON
//! format: shared by the writer (which makes it straight into the write request) and the
//! tests.
//!
//! This module owns the `event` field of a stream entry (see `CONTRACT.md`, "A stream entry"):
//! a JSON object with every header of the event, its name exactly as sent and its value
//! decoded (percent-decoded for plain; a multi-value header as a JSON array), plus `_body`
//! when the event has a body.
//!
//! A header name can occur more than once in an event (a `sendevent` with its own
//! `Content-Length`, to which the serializer adds another). The object holds each name once:
//! **the first occurrence wins** and later ones are left out. When the event has a body, a
//! header literally named `_body` is left out too (`_body` is the body).
//!
//! [`event_json`] is the writer's hot path. For plain events it works in one pass over the
//! bytes, with no allocation per header: it scans the lines, percent-decodes into a reused
//! scratch buffer only values that contain `%`, and JSON-escapes straight into the output.

use std::cell::RefCell;

use super::names::{hash_name, word_at, NameSet};
use crate::envelope::BodyFormat;
use crate::esl::event::{
    decode, hex_val, percent_decode_into, DecodedValue, Event, EventError, EventFormat, PlainScanner, ARRAY_PREFIX,
    ARRAY_SEPARATOR,
};

/// Writes the entry's `event` field: a JSON object of every header (name exactly as sent,
/// value decoded; arrays as JSON arrays; each name once, first wins) plus `_body` when there
/// is a body.
pub fn write_event_json(event: &Event<'_>, out: &mut Vec<u8>) {
    SCRATCH.with(|scratch| {
        let mut guard = scratch.borrow_mut();
        let names = &mut guard.names;
        names.reset();
        out.push(b'{');
        let mut first = true;
        for (i, (name, value)) in event.headers.iter().enumerate() {
            if event.body.is_some() && name == "_body" {
                continue;
            }
            let fresh = names.insert(hash_name(name.as_bytes()), i as u32, name.len() as u32, |j, _| {
                event.headers.get(j as usize).is_some_and(|(n, _)| n == name)
            });
            if !fresh {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            write_json_str(name, out);
            out.push(b':');
            match value {
                DecodedValue::One(v) => write_json_str(v, out),
                DecodedValue::Array(items) => {
                    out.push(b'[');
                    for (k, item) in items.iter().enumerate() {
                        if k > 0 {
                            out.push(b',');
                        }
                        write_json_str(item, out);
                    }
                    out.push(b']');
                }
            }
        }
        if let Some(body) = &event.body {
            if !first {
                out.push(b',');
            }
            out.extend_from_slice(b"\"_body\":");
            write_json_str(body, out);
        }
        out.push(b'}');
    });
}

/// One-shot for the writer hot path: decodes `body` in `format` and appends the JSON object
/// to `out` (reuse `out` across calls). Returns whether decoding was lossy (bytes that were
/// not UTF-8 replaced by U+FFFD). On error `out` is left as it was. A [`BodyFormat::Json`]
/// body is the field already (its source validated and compacted it) and is copied as is.
pub fn event_json(format: impl Into<BodyFormat>, body: &[u8], out: &mut Vec<u8>) -> Result<bool, EventError> {
    let start = out.len();
    let result = match format.into() {
        BodyFormat::EslPlain => plain_event_json(body, out),
        BodyFormat::EslJson => decode(EventFormat::Json, body).map(|event| {
            write_event_json(&event, out);
            event.lossy
        }),
        BodyFormat::Json => {
            out.extend_from_slice(body);
            Ok(false)
        }
    };
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// Per-thread buffers reused across events.
#[derive(Default)]
struct Scratch {
    decoded: Vec<u8>,
    names: NameSet,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

fn plain_event_json(body: &[u8], out: &mut Vec<u8>) -> Result<bool, EventError> {
    SCRATCH.with(|scratch| {
        let mut guard = scratch.borrow_mut();
        let Scratch { decoded, names } = &mut *guard;
        names.reset();
        let mut lossy = false;
        let object_start = out.len();
        out.push(b'{');
        let mut first = true;
        // Where a header named `_body` was written, to take it out again if there is a body.
        let mut body_header: Option<(usize, usize)> = None;
        let mut scanner = PlainScanner::new(body);
        while let Some(name) = scanner.next_name()? {
            let start = name.as_ptr() as usize - body.as_ptr() as usize;
            let fresh = names.insert(hash_name(name), start as u32, name.len() as u32, |s, l| {
                body.get(s as usize..(s + l) as usize) == Some(name)
            });
            if !fresh {
                scanner.take_value();
                continue;
            }
            let entry_start = out.len();
            if !first {
                out.push(b',');
            }
            first = false;
            write_name(name, out, &mut lossy);
            out.push(b':');
            write_raw_plain_value(&mut scanner, decoded, out, &mut lossy);
            if name == b"_body" {
                body_header = Some((entry_start, out.len()));
            }
        }
        let event_body = scanner.body()?;
        if let Some(event_body) = event_body {
            if let Some((from, to)) = body_header {
                // Drop the `_body` header entry with the comma that joins it to the others.
                let to = if from == object_start + 1 && out.get(to) == Some(&b',') { to + 1 } else { to };
                out.drain(from..to);
                first = out.len() == object_start + 1;
            }
            if !first {
                out.push(b',');
            }
            out.extend_from_slice(b"\"_body\":");
            write_json_bytes(event_body, out, &mut lossy);
        }
        out.push(b'}');
        Ok(lossy)
    })
}

/// The scanner's current raw plain value: percent-decoded and JSON-escaped in the same pass
/// that finds the end of its line (the common case), or, for an array or a value whose decoded
/// bytes are not UTF-8, decoded into `decoded` first.
fn write_raw_plain_value(scanner: &mut PlainScanner<'_>, decoded: &mut Vec<u8>, out: &mut Vec<u8>, lossy: &mut bool) {
    let rest = scanner.value_rest();
    if !rest.starts_with(b"ARRAY") {
        let mark = out.len();
        if let Some(len) = write_json_raw(rest, true, true, true, out) {
            scanner.value_ended(len);
            return;
        }
        out.truncate(mark);
    }
    let value = scanner.take_value();
    decoded.clear();
    percent_decode_into(value, decoded);
    write_plain_value(decoded, out, lossy);
}

/// A decoded plain value: a JSON array when it starts with `ARRAY::`, else a string.
fn write_plain_value(value: &[u8], out: &mut Vec<u8>, lossy: &mut bool) {
    match value.strip_prefix(ARRAY_PREFIX.as_bytes()) {
        None => write_json_bytes(value, out, lossy),
        Some(items) => {
            out.push(b'[');
            let mut rest = items;
            loop {
                match memchr::memmem::find(rest, ARRAY_SEPARATOR.as_bytes()) {
                    Some(i) => {
                        write_json_bytes(&rest[..i], out, lossy);
                        out.push(b',');
                        rest = &rest[i + ARRAY_SEPARATOR.len()..];
                    }
                    None => {
                        write_json_bytes(rest, out, lossy);
                        break;
                    }
                }
            }
            out.push(b']');
        }
    }
}

/// Writes a header name as a JSON string. A name is nearly always printable ASCII with no
/// quote or backslash: that is checked eight bytes at a time (the last word overlapping the
/// one before it, so no byte-by-byte tail) and the name copied in one piece; anything else
/// takes the general path.
#[inline(always)]
fn write_name(name: &[u8], out: &mut Vec<u8>, lossy: &mut bool) {
    if is_plain_ascii(name) {
        out.reserve(name.len() + 2);
        out.push(b'"');
        out.extend_from_slice(name);
        out.push(b'"');
    } else {
        write_json_bytes(name, out, lossy);
    }
}

/// Whether no byte of `bytes` needs work inside a JSON string (no control byte, quote,
/// backslash or non-ASCII byte).
#[inline(always)]
fn is_plain_ascii(bytes: &[u8]) -> bool {
    let n = bytes.len();
    if n < 8 {
        return bytes.iter().all(|&b| (0x20..0x80).contains(&b) && b != b'"' && b != b'\\');
    }
    let mut i = 0;
    while i + 8 < n {
        if attention(word_at(bytes, i), false) != 0 {
            return false;
        }
        i += 8;
    }
    attention(word_at(bytes, n - 8), false) == 0
}

/// Writes bytes as a JSON string, replacing what is not UTF-8 by U+FFFD (noted in `lossy`).
fn write_json_bytes(bytes: &[u8], out: &mut Vec<u8>, lossy: &mut bool) {
    write_json(bytes, Mode::Bytes, out, lossy);
}

/// Writes `s` as a JSON string: quotes, backslashes and every control character escaped.
pub(crate) fn write_json_str(s: &str, out: &mut Vec<u8>) {
    write_json(s.as_bytes(), Mode::Utf8, out, &mut false);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Known to be UTF-8.
    Utf8,
    /// Checked for UTF-8 (only when it holds a non-ASCII byte), replaced where it is not.
    Bytes,
}

/// What to write for each byte inside a JSON string: 0 = the byte itself, `u` = `\u00XX`,
/// anything else = a backslash and that character.
static ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0A] = b'n';
    table[0x0C] = b'f';
    table[0x0D] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Has the high bit of a byte set where `w` has a byte equal to `b` (and possibly beyond it).
#[inline(always)]
fn eq_bytes(w: u64, b: u8) -> u64 {
    let v = w ^ (ONES * b as u64);
    v.wrapping_sub(ONES) & !v
}

/// Nonzero when one of the eight bytes needs a look: a control character, `"`, `\`, a
/// non-ASCII byte, or (with `percent`) a `%`. Never misses one; may flag a clean byte after a
/// flagged one, which only costs time.
#[inline(always)]
fn attention(w: u64, percent: bool) -> u64 {
    let ctrl = w.wrapping_sub(ONES * 0x20) & !w;
    let mut flags = ctrl | eq_bytes(w, b'"') | eq_bytes(w, b'\\') | w;
    if percent {
        flags |= eq_bytes(w, b'%');
    }
    flags & HIGH
}

/// Writes the JSON escape of the ASCII byte `b` (`ESCAPE[b]` is not 0).
#[inline]
fn write_escape(b: u8, escape: u8, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    if escape == b'u' {
        out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
    } else {
        out.extend_from_slice(&[b'\\', escape]);
    }
}

/// Writes `bytes` as a JSON string, replacing what is not UTF-8 by U+FFFD (noted in `lossy`)
/// unless `mode` says it is UTF-8 already.
#[inline]
fn write_json(bytes: &[u8], mode: Mode, out: &mut Vec<u8>, lossy: &mut bool) {
    let mark = out.len();
    if write_json_raw(bytes, false, mode == Mode::Bytes, false, out).is_some() {
        return;
    }
    *lossy = true;
    out.truncate(mark);
    write_json_str(&String::from_utf8_lossy(bytes), out);
}

/// Writes `bytes` as a JSON string, sixteen bytes at a time (SSE2; eight elsewhere) while
/// nothing needs escaping, copying clean runs whole.
///
/// - With `percent`, each `%XX` becomes its byte (as [`percent_decode_into`] does; a `%`
///   without two hex digits stays).
/// - With `line`, the string ends at the end of the line: at the first `\n`, or at a `\r`
///   right before one or at the end of `bytes` (the line terminator is not written).
/// - With `check_utf8`, returns `None` (having written part of it) when what was written is
///   not UTF-8; escapes are ASCII, so that is exactly when the (decoded) bytes are not.
///
/// Returns how many bytes of `bytes` the string took.
#[inline(always)]
fn write_json_raw(bytes: &[u8], percent: bool, check_utf8: bool, line: bool, out: &mut Vec<u8>) -> Option<usize> {
    let mark = out.len();
    if !line {
        out.reserve(bytes.len() + 2);
    }
    out.push(b'"');
    let mut start = 0;
    let mut non_ascii = false;
    let mut i = 0;
    let mut end = bytes.len();
    'scan: while i < bytes.len() {
        // Sixteen bytes at a time while nothing needs work; else straight to the first byte
        // that does (the clean run before it is copied whole, later).
        #[cfg(target_arch = "x86_64")]
        if i + 16 <= bytes.len() {
            let (mask, high) = simd::attention16(bytes, i, percent);
            non_ascii |= high;
            if mask == 0 {
                i += 16;
                continue;
            }
            i += mask.trailing_zeros() as usize;
            match flagged(bytes, i, start, percent, line, out, &mut non_ascii) {
                Step::Next { at, run_start } => (i, start) = (at, run_start),
                Step::LineEnd => {
                    end = i;
                    break 'scan;
                }
            }
            continue;
        }
        if i + 8 <= bytes.len() && attention(word_at(bytes, i), percent) == 0 {
            i += 8;
            continue;
        }
        let chunk_end = (i + 8).min(bytes.len());
        while i < chunk_end {
            if bytes[i] >= 0x80 {
                non_ascii = true;
                i += 1;
                continue;
            }
            match flagged(bytes, i, start, percent, line, out, &mut non_ascii) {
                Step::Next { at, run_start } => (i, start) = (at, run_start),
                Step::LineEnd => {
                    end = i;
                    break 'scan;
                }
            }
        }
    }
    out.extend_from_slice(&bytes[start..end]);
    if check_utf8 && non_ascii && std::str::from_utf8(&out[mark + 1..]).is_err() {
        return None;
    }
    out.push(b'"');
    Some(end)
}

/// Where [`write_json_raw`] goes on after looking at one ASCII byte.
enum Step {
    /// At `at`, the clean run to copy starting at `run_start`.
    Next { at: usize, run_start: usize },
    /// The byte ends the line (with `line`): the string ends before it.
    LineEnd,
}

/// Handles the ASCII byte at `i` inside a JSON string whose pending clean run starts at
/// `start`: a `%XX` (with `percent`) is decoded, a byte JSON escapes is escaped (or ends the
/// line), anything else joins the clean run.
#[inline(always)]
fn flagged(
    bytes: &[u8],
    i: usize,
    start: usize,
    percent: bool,
    line: bool,
    out: &mut Vec<u8>,
    non_ascii: &mut bool,
) -> Step {
    let b = bytes[i];
    if percent && b == b'%' {
        if let Some(d) = percent_byte(bytes, i) {
            out.extend_from_slice(&bytes[start..i]);
            push_decoded(d, out, non_ascii);
            return Step::Next { at: i + 3, run_start: i + 3 };
        }
    } else if ESCAPE[b as usize] != 0 {
        if line && (b == b'\n' || (b == b'\r' && matches!(bytes.get(i + 1), None | Some(b'\n')))) {
            return Step::LineEnd;
        }
        out.extend_from_slice(&bytes[start..i]);
        write_escape(b, ESCAPE[b as usize], out);
        return Step::Next { at: i + 1, run_start: i + 1 };
    }
    Step::Next { at: i + 1, run_start: start }
}

/// The byte a `%XX` at `i` stands for, when two hex digits follow.
#[inline(always)]
fn percent_byte(bytes: &[u8], i: usize) -> Option<u8> {
    let hi = bytes.get(i + 1).copied().and_then(hex_val)?;
    let lo = bytes.get(i + 2).copied().and_then(hex_val)?;
    Some(hi << 4 | lo)
}

/// Writes a percent-decoded byte into a JSON string (escaped where JSON wants it).
#[inline(always)]
fn push_decoded(d: u8, out: &mut Vec<u8>, non_ascii: &mut bool) {
    match ESCAPE[d as usize] {
        _ if d >= 0x80 => {
            *non_ascii = true;
            out.push(d);
        }
        0 => out.push(d),
        escape => write_escape(d, escape, out),
    }
}

/// SSE2 (always there on x86_64): which of sixteen bytes need work inside a JSON string.
#[cfg(target_arch = "x86_64")]
pub(super) mod simd {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };

    /// The bytes of `bytes[i..i + 16]` that need work, one bit each (a quote, a backslash, a
    /// control byte, and with `percent` a `%`), and whether any byte is not ASCII (the caller
    /// then checks the result is UTF-8).
    #[inline(always)]
    pub(in crate::esl) fn attention16(bytes: &[u8], i: usize, percent: bool) -> (u32, bool) {
        assert!(i + 16 <= bytes.len());
        // SAFETY: the 16 bytes read are in bounds (asserted); SSE2 is part of x86_64.
        unsafe {
            let x = _mm_loadu_si128(bytes.as_ptr().add(i).cast::<__m128i>());
            let byte = |b: u8| _mm_set1_epi8(b as i8);
            let quote = _mm_cmpeq_epi8(x, byte(b'"'));
            let backslash = _mm_cmpeq_epi8(x, byte(b'\\'));
            // x <= 0x1F, unsigned: max(x, 0x1F) == 0x1F.
            let control = _mm_cmpeq_epi8(_mm_max_epu8(x, byte(0x1F)), byte(0x1F));
            let mut m = _mm_or_si128(_mm_or_si128(quote, backslash), control);
            if percent {
                m = _mm_or_si128(m, _mm_cmpeq_epi8(x, byte(b'%')));
            }
            (_mm_movemask_epi8(m) as u32, _mm_movemask_epi8(x) != 0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A whole value, percent-decoded: false when the decoded bytes are not UTF-8.
    fn write_json_percent(bytes: &[u8], out: &mut Vec<u8>) -> bool {
        write_json_raw(bytes, true, true, false, out).is_some()
    }

    fn json(format: EventFormat, body: &[u8]) -> serde_json::Value {
        let mut out = Vec::new();
        event_json(format, body, &mut out).unwrap();
        serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
    }

    #[test]
    fn plain_to_json() {
        let body = b"Event-Name: CUSTOM\nX: a%22b%5C%0A%01\nA: ARRAY%3A%3Ax%7C%3Ay\nContent-Length: 3\nContent-Length: 3\n\n\"\n\x7f";
        let v = json(EventFormat::Plain, body);
        assert_eq!(
            v,
            serde_json::json!({"Event-Name": "CUSTOM", "X": "a\"b\\\n\u{1}", "A": ["x", "y"],
                "Content-Length": "3", "_body": "\"\n\u{7f}"})
        );
    }

    #[test]
    fn first_occurrence_wins_and_body_beats_a_body_header() {
        let v = json(EventFormat::Plain, b"_body: h\nA: 1\nA: 2\nContent-Length: 1\n\nb");
        assert_eq!(v, serde_json::json!({"A": "1", "Content-Length": "1", "_body": "b"}));
        let v = json(EventFormat::Json, br#"{"A":"1","_body":"b","A":"2"}"#);
        assert_eq!(v, serde_json::json!({"A": "1", "_body": "b"}));
    }

    #[test]
    fn many_names_grow_the_set() {
        let mut body = Vec::new();
        for i in 0..2000 {
            body.extend_from_slice(format!("H{i}: v\nH{}: dup\n", i / 2).as_bytes());
        }
        body.push(b'\n');
        let v = json(EventFormat::Plain, &body);
        let map = v.as_object().unwrap();
        assert_eq!(map.len(), 2000);
        assert_eq!(map["H1"], "v");
        assert_eq!(map["H3"], "v");
    }

    #[test]
    fn escaping_at_every_alignment() {
        let mut all: String = (0u8..0x80).map(char::from).collect();
        all.push_str("é東😀");
        for shift in 0..9 {
            let s = format!("{}{all}{}", "x".repeat(shift), "y".repeat(shift));
            let mut out = Vec::new();
            write_json_str(&s, &mut out);
            assert_eq!(serde_json::from_slice::<String>(&out).unwrap(), s);
            // Percent-encoded (every byte, and only some), decoded and escaped in one pass.
            let every: String = s.bytes().map(|b| format!("%{b:02X}")).collect();
            let some: String = s
                .chars()
                .map(|c| if c.is_ascii_punctuation() { format!("%{:02x}", c as u8) } else { c.to_string() })
                .collect();
            for encoded in [every, some, format!("{s}%zz%4")] {
                let mut out = Vec::new();
                assert!(write_json_percent(encoded.as_bytes(), &mut out));
                let mut expected = Vec::new();
                percent_decode_into(encoded.as_bytes(), &mut expected);
                assert_eq!(serde_json::from_slice::<String>(&out).unwrap().as_bytes(), expected.as_slice());
            }
            assert!(!write_json_percent(format!("{s}%FF").as_bytes(), &mut Vec::new()), "not UTF-8 once decoded");
            let mut lossy = false;
            let bad = [s.as_bytes(), b"\xff"].concat();
            let mut out = Vec::new();
            write_json_bytes(&bad, &mut out, &mut lossy);
            assert!(lossy);
            assert_eq!(serde_json::from_slice::<String>(&out).unwrap(), format!("{s}\u{FFFD}"));
        }
    }

    /// The name fast path writes what the general path writes, for every byte in every
    /// position of names of 0 to 40 bytes (where the overlapping last word and the short-name
    /// loop meet).
    #[test]
    fn names_take_the_fast_path_only_when_it_writes_the_same() {
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        for len in 0..40usize {
            for pos in 0..len.max(1) {
                for special in [b'"', b'\\', b'\n', 0x01, 0x1F, 0x7F, 0x80, 0xC3, 0xFF, b'%', b'a'] {
                    let mut name: Vec<u8> = (0..len)
                        .map(|_| {
                            rng ^= rng << 13;
                            rng ^= rng >> 7;
                            rng ^= rng << 17;
                            b"abcXYZ-_019:. "[(rng % 14) as usize]
                        })
                        .collect();
                    if len > 0 {
                        name[pos] = special;
                    }
                    let (mut fast, mut general) = (Vec::new(), Vec::new());
                    let (mut lossy_fast, mut lossy_general) = (false, false);
                    write_name(&name, &mut fast, &mut lossy_fast);
                    write_json_bytes(&name, &mut general, &mut lossy_general);
                    assert_eq!(fast, general, "name {name:?}");
                    assert_eq!(lossy_fast, lossy_general);
                    let plain = name.iter().all(|&b| (0x20..0x80).contains(&b) && b != b'"' && b != b'\\');
                    assert_eq!(is_plain_ascii(&name), plain, "name {name:?}");
                }
            }
        }
    }

    #[test]
    fn errors_leave_out_untouched() {
        let mut out = b"keep".to_vec();
        assert!(event_json(EventFormat::Plain, b"A: 1\nbad\n\n", &mut out).is_err());
        assert_eq!(out, b"keep");
    }
}
