//! The switch's JSON event (`event json`), checked in one pass: whether its bytes can be the
//! entry's `event` field as they came, and the index fields the reader needs.
//!
//! `switch_event_serialize_json` writes compact JSON (`cJSON_PrintUnformatted`): every header
//! under its name as sent, multi-value headers as arrays, the body under `_body`. That is the
//! entry's `event` field already, except where a header name occurs twice (8.5% of a real
//! load capture: `CODEC`'s `Channel-Write-Codec-Name`, `CHANNEL_HANGUP_COMPLETE`'s
//! `Hangup-Cause`): the entry holds each name once, the first occurrence, as FreeSWITCH's own
//! `switch_event_get_header` reads it. So [`scan_json`] validates the bytes (RFC 8259: UTF-8,
//! string escapes, numbers, nesting up to [`MAX_DEPTH`]), notes a repeated key, and decodes
//! only the index fields' values (unescaping only a value that has escapes). The reader then
//! hands the bytes on to be written as they are ([`JsonScan::verbatim`]), or, with a repeated
//! key, each key's first pair as it came ([`JsonScan::rewritten`]); only bytes that are not
//! UTF-8 are left to be rewritten by [`super::json::event_json`].
//!
//! Two passes, chosen by measurement (instructions counted with callgrind over the real JSON
//! capture, reader scan plus the writer's work for the `event` field, per event): serde's scan
//! and the writer's decode-and-rewrite cost about 100,000; the plain format's scan and its
//! conversion to JSON about 44,000; this, about 30,000.
//! - The fast path ([`scan_compact`]) takes JSON as cJSON prints it (no whitespace, no escape,
//!   no control byte; strings and arrays of strings): SSE2 finds every quote sixteen bytes at a
//!   time, the few bytes between strings are checked, keys go through a 2,048-bit filter before
//!   any comparison, and an event with a repeated key is rewritten right here by copying each
//!   key's first pair ([`JsonScan::rewritten`]).
//! - Anything else (about one event in eight: bodies and values with escapes) takes the general
//!   scanner, a hand-written single pass over the RFC 8259 grammar; a repeated key (compared
//!   unescaped) is rewritten the same way. Copying the pairs keeps every value's bytes, escapes
//!   included, as the switch wrote them; the writer's decode-and-rewrite, which this replaced
//!   for such events, cost about 4% of the agent's CPU at saturation on the real capture.
//!
//! `serde_json` is the reference the property tests hold both to; it cannot be the scanner
//! itself, as a deserializer does not report repeated keys.

use super::event::{EventError, EventMeta, MetaFields};
use super::names::{hash_name, word_at, NameSet};
use crate::envelope::Text;

/// Deepest nesting accepted (the event object is depth 1; FreeSWITCH's arrays make it 2).
pub const MAX_DEPTH: usize = 64;

/// What [`scan_json`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonScan {
    pub meta: EventMeta,
    /// The bytes are valid JSON, one object, each key once: they are the `event` field.
    pub verbatim: bool,
    /// A key occurs more than once (the event is rewritten, the first occurrence kept).
    pub duplicate_keys: bool,
    /// For an event with a repeated key, the object already rewritten (each key's first pair,
    /// bytes as they came): the `event` field.
    pub rewritten: Option<Vec<u8>>,
}

/// Validates a JSON event and reads its index fields; see the module documentation.
/// Bytes that are not UTF-8 are not rejected here (a switch may pass Latin-1 through): they
/// take the decoding path, which keeps them as U+FFFD.
pub fn scan_json(body: &[u8]) -> Result<JsonScan, EventError> {
    KEYS.with(|keys| {
        let mut keys = keys.borrow_mut();
        if let Some(scan) = scan_compact(body, &mut keys) {
            return Ok(scan);
        }
        if std::str::from_utf8(body).is_err() {
            let meta = super::event::scan_meta(super::event::EventFormat::Json, body)?;
            return Ok(JsonScan { meta, verbatim: false, duplicate_keys: false, rewritten: None });
        }
        let mut scanner = Scanner { b: body, i: 0, keys: &mut keys };
        scanner.event().map_err(|at| EventError::InvalidJson(format!("at byte {at} of {}", body.len())))
    })
}

/// The fast path, for JSON as cJSON prints it unformatted: no whitespace, no control byte, no
/// escape, and values that are strings or arrays of strings. Then the quotes alone delimit
/// every string (found sixteen bytes at a time, [`quote_positions`]), and only the one or two
/// bytes between strings are left to check. `None` for anything else, valid or not: the general scanner decides.
fn scan_compact(b: &[u8], keys: &mut Keys) -> Option<JsonScan> {
    if b.first() != Some(&b'{') {
        return None;
    }
    let non_ascii = quote_positions(b, &mut keys.quotes)?;
    // ASCII is UTF-8; only an event with other bytes is checked again, whole.
    if !keys.quotes.len().is_multiple_of(2) || (non_ascii && std::str::from_utf8(b).is_err()) {
        return None;
    }
    let (q, seen, pairs) = (&keys.quotes, &mut keys.seen, &mut keys.pairs);
    seen.reset();
    pairs.clear();
    let mut fields = MetaFields::default();
    let mut duplicate_keys = false;
    // `i`: the next byte to check; `k`: the next quote (an opening one).
    let (mut i, mut k) = (1usize, 0usize);
    // The string opening at `i`: its content, and the position after its closing quote.
    let string_at = |i: usize, k: &mut usize| -> Option<(usize, usize)> {
        if q.get(*k) != Some(&i) {
            return None;
        }
        let end = q[*k + 1];
        *k += 2;
        Some((i + 1, end))
    };
    if b.get(1) == Some(&b'}') {
        i = 2;
    } else {
        loop {
            let pair_start = i;
            let (ks, ke) = string_at(i, &mut k)?;
            i = ke + 1;
            if b.get(i) != Some(&b':') {
                return None;
            }
            i += 1;
            match b.get(i)? {
                b'"' => {
                    let (vs, ve) = string_at(i, &mut k)?;
                    i = ve + 1;
                    if let Some(m) = super::event::meta_index(&b[ks..ke]) {
                        if fields.values[m].is_none() {
                            // The body is UTF-8 (checked) and a string ends at an ASCII quote.
                            fields.values[m] = Some(Text::from(std::str::from_utf8(&b[vs..ve]).ok()?));
                        }
                    }
                }
                b'[' => {
                    i += 1;
                    if b.get(i) == Some(&b']') {
                        i += 1;
                    } else {
                        loop {
                            let (_, ve) = string_at(i, &mut k)?;
                            i = ve + 1;
                            match b.get(i)? {
                                b',' => i += 1,
                                b']' => {
                                    i += 1;
                                    break;
                                }
                                _ => return None,
                            }
                        }
                    }
                }
                _ => return None,
            }
            let first = seen.insert(b, ks, ke);
            duplicate_keys |= !first;
            pairs.push((pair_start, i, first));
            match b.get(i)? {
                b',' => i += 1,
                b'}' => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    if i != b.len() || k != q.len() {
        return None;
    }
    let rewritten = duplicate_keys.then(|| first_pairs(b, pairs));
    Some(JsonScan { meta: fields.into_meta(), verbatim: !duplicate_keys, duplicate_keys, rewritten })
}

/// The object of `b` with each key's first pair only, each pair's bytes as they came (a
/// pair runs from its key's opening quote to the end of its value).
fn first_pairs(b: &[u8], pairs: &[(usize, usize, bool)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    out.push(b'{');
    for &(start, end, _) in pairs.iter().filter(|p| p.2) {
        if out.len() > 1 {
            out.push(b',');
        }
        out.extend_from_slice(&b[start..end]);
    }
    out.push(b'}');
    out
}

/// Fills `out` with the offset of every `"` in `b` and says whether `b` has a byte that is
/// not ASCII; `None` (and `out` unfinished) when `b` holds a backslash or a control byte.
/// Sixteen bytes at a time with SSE2: a mask of quotes, one of what sends the event to the
/// general scanner, and one of bytes above 0x7F.
fn quote_positions(b: &[u8], out: &mut Vec<usize>) -> Option<bool> {
    out.clear();
    let mut i = 0;
    let mut non_ascii = 0u32;
    #[cfg(target_arch = "x86_64")]
    while i + 16 <= b.len() {
        let (quotes, stop, high) = simd::quotes16(b, i);
        if stop != 0 {
            return None;
        }
        non_ascii |= high;
        let mut m = quotes;
        while m != 0 {
            out.push(i + m.trailing_zeros() as usize);
            m &= m - 1;
        }
        i += 16;
    }
    for (at, &c) in b.iter().enumerate().skip(i) {
        match c {
            b'"' => out.push(at),
            b'\\' | 0..=0x1F => return None,
            0x80.. => non_ascii = 1,
            _ => {}
        }
    }
    Some(non_ascii != 0)
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };

    /// For `b[i..i + 16]`: a bit per quote, a bit per backslash or control byte, and a bit per
    /// byte above 0x7F.
    #[inline(always)]
    pub(super) fn quotes16(b: &[u8], i: usize) -> (u32, u32, u32) {
        assert!(i + 16 <= b.len());
        // SAFETY: the 16 bytes read are in bounds (asserted); SSE2 is part of x86_64.
        unsafe {
            let x = _mm_loadu_si128(b.as_ptr().add(i).cast::<__m128i>());
            let byte = |c: u8| _mm_set1_epi8(c as i8);
            let quote = _mm_cmpeq_epi8(x, byte(b'"'));
            let backslash = _mm_cmpeq_epi8(x, byte(b'\\'));
            let control = _mm_cmpeq_epi8(_mm_max_epu8(x, byte(0x1F)), byte(0x1F));
            let stop = _mm_or_si128(backslash, control);
            (_mm_movemask_epi8(quote) as u32, _mm_movemask_epi8(stop) as u32, _mm_movemask_epi8(x) as u32)
        }
    }
}

thread_local! {
    static KEYS: std::cell::RefCell<Keys> = std::cell::RefCell::new(Keys::default());
}

/// The keys of the event being scanned; unescaped copies of keys that had escapes.
#[derive(Default)]
struct Keys {
    set: NameSet,
    unescaped: Vec<u8>,
    /// Where the quotes are, for the compact fast path.
    quotes: Vec<usize>,
    /// The compact path's keys so far.
    seen: SeenKeys,
    /// The event's key/value pairs (both scanners): where each starts and ends, whether its key
    /// is new; a repeated key's rewrite copies the new ones ([`first_pairs`]).
    pairs: Vec<(usize, usize, bool)>,
}

/// The keys of one event on the compact path: a 2,048-bit filter answers "new" for almost
/// every key at the cost of one multiply; only a key whose bit is already set is compared
/// with the keys before it. About a tenth of what a hash set costs per key.
#[derive(Default)]
struct SeenKeys {
    bits: [u64; 32],
    keys: Vec<(usize, usize)>,
}

impl SeenKeys {
    fn reset(&mut self) {
        self.bits = [0; 32];
        self.keys.clear();
    }

    /// Records the key `b[start..end]`; whether it was not there already.
    #[inline]
    fn insert(&mut self, b: &[u8], start: usize, end: usize) -> bool {
        let key = &b[start..end];
        let bit = (quick_hash(key) >> 53) as usize;
        let (word, mask) = (bit / 64, 1u64 << (bit % 64));
        let maybe_seen = self.bits[word] & mask != 0;
        self.bits[word] |= mask;
        if maybe_seen && self.keys.iter().any(|&(s, e)| &b[s..e] == key) {
            return false;
        }
        self.keys.push((start, end));
        true
    }
}

/// A hash of a key from its length and its first and last eight bytes (enough to spread
/// header names, which differ at either end).
#[inline(always)]
fn quick_hash(key: &[u8]) -> u64 {
    let n = key.len();
    let (head, tail) = if n >= 8 {
        (word_at(key, 0), word_at(key, n - 8))
    } else {
        let mut word = [0u8; 8];
        word[..n].copy_from_slice(key);
        (u64::from_le_bytes(word), 0)
    };
    (head ^ tail.rotate_left(29) ^ n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Marks a key location in [`Keys::unescaped`] rather than in the body.
const UNESCAPED: u32 = 1 << 31;

/// Bytes that end a run of plain string bytes: the quote, the backslash, control characters.
static STRING_STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// A position at which the bytes stop being valid JSON.
type At = usize;

struct Scanner<'a, 'k> {
    b: &'a [u8],
    i: usize,
    keys: &'k mut Keys,
}

/// A string's content: where it is (between the quotes) and whether it holds escapes.
struct Str {
    start: usize,
    end: usize,
    escaped: bool,
}

impl<'a> Scanner<'a, '_> {
    fn event(&mut self) -> Result<JsonScan, At> {
        self.keys.set.reset();
        self.keys.unescaped.clear();
        self.keys.pairs.clear();
        let mut fields = MetaFields::default();
        let mut duplicate_keys = false;
        self.ws();
        self.expect(b'{')?;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
        } else {
            loop {
                let pair_start = self.i;
                self.expect(b'"')?;
                let key = self.string()?;
                let first = self.first_key(&key);
                duplicate_keys |= !first;
                self.ws();
                self.expect(b':')?;
                self.ws();
                if self.peek() == Some(b'"') {
                    self.i += 1;
                    let value = self.string()?;
                    let index = if key.escaped { None } else { super::event::meta_index(&self.b[key.start..key.end]) };
                    if let Some(i) = index {
                        if fields.values[i].is_none() {
                            fields.values[i] = Some(self.text(&value));
                        }
                    }
                } else {
                    self.value(2)?;
                }
                self.keys.pairs.push((pair_start, self.i, first));
                self.ws();
                match self.next() {
                    Some(b',') => self.ws(),
                    Some(b'}') => break,
                    _ => return Err(self.i.saturating_sub(1)),
                }
            }
        }
        self.ws();
        if self.i != self.b.len() {
            return Err(self.i);
        }
        let rewritten = duplicate_keys.then(|| first_pairs(self.b, &self.keys.pairs));
        Ok(JsonScan { meta: fields.into_meta(), verbatim: !duplicate_keys, duplicate_keys, rewritten })
    }

    /// Records a key; whether it was not there already.
    fn first_key(&mut self, key: &Str) -> bool {
        let (start, len) = if key.escaped {
            let start = self.keys.unescaped.len();
            unescape_into(&self.b[key.start..key.end], &mut self.keys.unescaped);
            ((start as u32) | UNESCAPED, (self.keys.unescaped.len() - start) as u32)
        } else {
            (key.start as u32, (key.end - key.start) as u32)
        };
        let (body, unescaped) = (self.b, &self.keys.unescaped);
        let bytes = |start: u32, len: u32| -> &[u8] {
            let (from, to) = ((start & !UNESCAPED) as usize, (start & !UNESCAPED) as usize + len as usize);
            if start & UNESCAPED != 0 {
                &unescaped[from..to]
            } else {
                &body[from..to]
            }
        };
        let name = bytes(start, len);
        let hash = hash_name(name);
        self.keys.set.insert(hash, start, len, |s, l| bytes(s, l) == name)
    }

    /// A string value as text, unescaped when it has escapes.
    fn text(&self, s: &Str) -> Text {
        let raw = &self.b[s.start..s.end];
        if !s.escaped {
            // The whole body was checked to be UTF-8 and a string ends at an ASCII quote.
            return Text::from(String::from_utf8_lossy(raw));
        }
        let mut out = Vec::with_capacity(raw.len());
        unescape_into(raw, &mut out);
        Text::from(String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn expect(&mut self, c: u8) -> Result<(), At> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.i)
        }
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.i += 1;
        }
    }

    /// The rest of a string whose opening quote was read; leaves the position after the
    /// closing quote.
    fn string(&mut self) -> Result<Str, At> {
        let start = self.i;
        let mut escaped = false;
        loop {
            self.skip_plain();
            match self.next() {
                Some(b'"') => return Ok(Str { start, end: self.i - 1, escaped }),
                Some(b'\\') => {
                    escaped = true;
                    self.escape()?;
                }
                _ => return Err(self.i.saturating_sub(1)),
            }
        }
    }

    /// Moves past string bytes that need no look (not a quote, a backslash or a control byte):
    /// sixteen at a time with SSE2 (the bytes are UTF-8 already), then one by one.
    #[inline(always)]
    fn skip_plain(&mut self) {
        #[cfg(target_arch = "x86_64")]
        while self.i + 16 <= self.b.len() {
            let (stops, _) = super::json::simd::attention16(self.b, self.i, false);
            if stops != 0 {
                self.i += stops.trailing_zeros() as usize;
                return;
            }
            self.i += 16;
        }
        while self.i < self.b.len() && !STRING_STOP[self.b[self.i] as usize] {
            self.i += 1;
        }
    }

    /// The escape after a backslash: one of `"\/bfnrt`, or `u` and four hex digits (a high
    /// surrogate only with a low one after it).
    fn escape(&mut self) -> Result<(), At> {
        match self.next() {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(()),
            Some(b'u') => {
                let unit = self.hex4()?;
                match unit {
                    0xD800..=0xDBFF => {
                        if self.b.get(self.i..self.i + 2) != Some(b"\\u") {
                            return Err(self.i);
                        }
                        self.i += 2;
                        match self.hex4()? {
                            0xDC00..=0xDFFF => Ok(()),
                            _ => Err(self.i - 4),
                        }
                    }
                    0xDC00..=0xDFFF => Err(self.i - 4),
                    _ => Ok(()),
                }
            }
            _ => Err(self.i.saturating_sub(1)),
        }
    }

    fn hex4(&mut self) -> Result<u16, At> {
        let digits = self.b.get(self.i..self.i + 4).ok_or(self.i)?;
        let mut unit = 0u16;
        for &d in digits {
            unit = unit << 4 | super::event::hex_val(d).ok_or(self.i)? as u16;
        }
        self.i += 4;
        Ok(unit)
    }

    /// Any JSON value at nesting `depth`.
    fn value(&mut self, depth: usize) -> Result<(), At> {
        if depth > MAX_DEPTH {
            return Err(self.i);
        }
        match self.peek() {
            Some(b'"') => {
                self.i += 1;
                self.string().map(drop)
            }
            Some(b'[') => {
                self.i += 1;
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.ws();
                    self.value(depth + 1)?;
                    self.ws();
                    match self.next() {
                        Some(b',') => {}
                        Some(b']') => return Ok(()),
                        _ => return Err(self.i.saturating_sub(1)),
                    }
                }
            }
            Some(b'{') => {
                self.i += 1;
                self.ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.ws();
                    self.expect(b'"')?;
                    self.string()?;
                    self.ws();
                    self.expect(b':')?;
                    self.ws();
                    self.value(depth + 1)?;
                    self.ws();
                    match self.next() {
                        Some(b',') => {}
                        Some(b'}') => return Ok(()),
                        _ => return Err(self.i.saturating_sub(1)),
                    }
                }
            }
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.i),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), At> {
        if self.b.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.i)
        }
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`, within what a double holds
    /// (as `serde_json` reads it: a consumer must be able to read the entry).
    fn number(&mut self) -> Result<(), At> {
        let start = self.i;
        self.number_grammar()?;
        let text = std::str::from_utf8(&self.b[start..self.i]).map_err(|_| start)?;
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(()),
            _ => Err(start),
        }
    }

    fn number_grammar(&mut self) -> Result<(), At> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.next() {
            Some(b'0') => {}
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.i.saturating_sub(1)),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            self.some_digits()?;
        }
        Ok(())
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
    }

    fn some_digits(&mut self) -> Result<(), At> {
        match self.peek() {
            Some(b'0'..=b'9') => {
                self.digits();
                Ok(())
            }
            _ => Err(self.i),
        }
    }
}

/// Appends the text of a validated string's content (between its quotes) to `out`.
fn unescape_into(raw: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let e = raw[i + 1];
        i += 2;
        let simple = match e {
            b'b' => Some(0x08),
            b'f' => Some(0x0C),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'u' => None,
            other => Some(other),
        };
        if let Some(byte) = simple {
            out.push(byte);
            continue;
        }
        let hex = |at: usize| {
            raw[at..at + 4].iter().fold(0u32, |u, &d| u << 4 | super::event::hex_val(d).unwrap_or(0) as u32)
        };
        let mut unit = hex(i);
        i += 4;
        if (0xD800..0xDC00).contains(&unit) && raw.get(i) == Some(&b'\\') {
            let low = hex(i + 2);
            unit = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
            i += 6;
        }
        let ch = char::from_u32(unit).unwrap_or('\u{FFFD}');
        out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::esl::event::{scan_meta, EventFormat};
    use crate::esl::frame::FrameDecoder;
    use proptest::prelude::*;

    /// The pairs of a JSON object in order, repeated keys kept (serde_json's `Value` keeps one).
    fn pairs_of(text: &str) -> Option<Vec<(String, serde_json::Value)>> {
        struct Pairs;
        impl<'de> serde::de::Visitor<'de> for Pairs {
            type Value = Vec<(String, serde_json::Value)>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut pairs = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    pairs.push((key, map.next_value::<serde_json::Value>()?));
                }
                Ok(pairs)
            }
        }
        use serde::Deserializer;
        let mut de = serde_json::Deserializer::from_str(text);
        let pairs = de.deserialize_map(Pairs).ok()?;
        de.end().ok()?;
        Some(pairs)
    }

    fn keys_of(text: &str) -> Option<Vec<String>> {
        Some(pairs_of(text)?.into_iter().map(|(k, _)| k).collect())
    }

    /// Checks a rewrite against serde_json's reading of the body: each key once, in the order
    /// it first came, with its first value (as FreeSWITCH's `switch_event_get_header` reads it).
    fn assert_first_wins(body: &[u8], rewritten: &[u8]) {
        let text = std::str::from_utf8(rewritten).expect("a rewrite is UTF-8");
        let ours = pairs_of(text).expect("a rewrite is one JSON object");
        let mut seen = std::collections::HashSet::new();
        let firsts: Vec<(String, serde_json::Value)> = pairs_of(std::str::from_utf8(body).unwrap())
            .unwrap()
            .into_iter()
            .filter(|(k, _)| seen.insert(k.clone()))
            .collect();
        assert_eq!(ours, firsts, "each key's first pair, in order");
    }

    fn unique(keys: &[String]) -> bool {
        keys.iter().collect::<std::collections::HashSet<_>>().len() == keys.len()
    }

    /// Every event of the real JSON capture: written as it came unless a key repeats (then
    /// rewritten), index fields as the full decoder reads them.
    #[test]
    fn the_real_capture_is_written_as_it_came_except_events_with_a_repeated_key() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/esl-captures/json.esl");
        let mut buf = bytes::BytesMut::from(&std::fs::read(path).expect("the JSON capture is in the repository")[..]);
        let mut decoder = FrameDecoder::default();
        let (mut events, mut repeated) = (0, 0);
        while let Some(frame) = decoder.decode(&mut buf).expect("the capture frames") {
            if frame.content_type() != Some("text/event-json") {
                continue;
            }
            let body = frame.body();
            let scan = scan_json(body).expect("FreeSWITCH's JSON is valid");
            let keys = keys_of(std::str::from_utf8(body).unwrap()).expect("serde_json reads it too");
            assert_eq!(scan.verbatim, unique(&keys), "{}", String::from_utf8_lossy(body));
            assert_eq!(scan.duplicate_keys, !unique(&keys));
            assert_eq!(scan.meta, scan_meta(EventFormat::Json, body).unwrap());
            assert_eq!(scan.rewritten.is_some(), scan.duplicate_keys, "every repeat is rewritten in the reader");
            if let Some(rewritten) = &scan.rewritten {
                assert_first_wins(body, rewritten);
            }
            events += 1;
            repeated += scan.duplicate_keys as usize;
        }
        assert!(events > 900, "{events} JSON events");
        assert!(repeated > 0 && repeated * 5 < events, "{repeated} of {events} with a repeated key");
    }

    #[test]
    fn escapes_arrays_bodies_and_repeats() {
        let ok = |s: &str| scan_json(s.as_bytes()).unwrap();
        let s = ok(
            r#"{"Event-Name":"CUSTOM","Event-Subclass":"a\u002Fb","Unique-ID":"u\"1","A":["x","y"],"_body":"l1\nl2"}"#,
        );
        assert!(s.verbatim && !s.duplicate_keys);
        assert_eq!(
            (s.meta.name.as_str(), s.meta.subclass.as_str(), s.meta.unique_id.as_str()),
            ("CUSTOM", "a/b", "u\"1")
        );
        let s = ok(r#"{"Event-Name":"CODEC","Channel-Write-Codec-Name":"PCMU","Channel-Write-Codec-Name":"PCMA"}"#);
        assert!(!s.verbatim && s.duplicate_keys);
        assert_eq!(s.rewritten.as_deref(), Some(&br#"{"Event-Name":"CODEC","Channel-Write-Codec-Name":"PCMU"}"#[..]));
        let s = ok(r#"{"A":["1","2"],"B":"x","A":"3","B":[],"C":"y"}"#);
        assert_eq!(s.rewritten.as_deref(), Some(&br#"{"A":["1","2"],"B":"x","C":"y"}"#[..]));
        // With escapes (the general scanner), each kept pair's bytes are as they came.
        let s = ok(r#"{"A":"x\u002Fy","B":["\n"],"A":"z","C":{"d":1}}"#);
        assert_eq!(s.rewritten.as_deref(), Some(&br#"{"A":"x\u002Fy","B":["\n"],"C":{"d":1}}"#[..]));
        let s = ok(r#" { "A" : "1" , "B":2, "A" : "\"" } "#);
        assert_eq!(s.rewritten.as_deref(), Some(&br#"{"A" : "1","B":2}"#[..]));
        // Values other than strings: kept as they came too (the writer's decoding rewrite,
        // which such events took before, refused them, and the event was dropped).
        let s = ok(r#"{"Event-Name":"X","n":1,"Unique-ID":null,"n":[true],"Unique-ID":"u"}"#);
        assert_eq!(s.rewritten.as_deref(), Some(&br#"{"Event-Name":"X","n":1,"Unique-ID":null}"#[..]));
        assert_eq!(s.meta.name, "X");
        // A key spelled with an escape is the same key.
        let s = ok(r#"{"A":"1","\u0041":"2"}"#);
        assert_eq!(s.rewritten.as_deref(), Some(&br#"{"A":"1"}"#[..]));
        assert!(!ok(r#"{"A":"1","\u0042":"2"}"#).duplicate_keys);
        // First occurrence wins, as switch_event_get_header reads it.
        assert_eq!(ok(r#"{"Event-Name":"A","Event-Name":"B"}"#).meta.name, "A");
        assert_eq!(ok(r#" { "Event-Name" : "X" , "n" : -1.5e+3 , "o" : { "p" : [ true , null ] } } "#).meta.name, "X");
        assert_eq!(
            ok("{\"Event-Name\":\"Gr\u{fc}\u{df}e \u{1F4DE}\",\"s\":\"\\ud83d\\udcde\"}").meta.name,
            "Gr\u{fc}\u{df}e \u{1F4DE}"
        );
        assert!(ok("{}").verbatim);
        // Not UTF-8: not rejected (a switch may pass Latin-1 through), rewritten instead.
        let latin = scan_json(b"{\"Event-Name\":\"Gr\xfc\xdfe\"}").unwrap();
        assert!(!latin.verbatim);
        assert_eq!(latin.meta.name, "Gr\u{fffd}\u{fffd}e");
    }

    #[test]
    fn invalid_json_is_an_error() {
        for bad in [
            "",
            "[]",
            "\"s\"",
            "{",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":\"b\",}",
            "{\"a\":\"b\"} x",
            "{\"a\":\"b\nc\"}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\ud800\"}",
            "{\"a\":\"\\udc00\"}",
            "{\"a\":\"\\ud800\\u0041\"}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":tru}",
            "{\"a\":[1,]}",
            "{a:1}",
        ] {
            assert!(scan_json(bad.as_bytes()).is_err(), "{bad:?} accepted");
            assert!(keys_of(bad).is_none(), "serde_json accepts {bad:?}");
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(scan_json(deep.as_bytes()).is_err(), "nested too deep");
        let ok = format!("{{\"a\":{}{}}}", "[".repeat(MAX_DEPTH - 2), "]".repeat(MAX_DEPTH - 2));
        assert!(scan_json(ok.as_bytes()).is_ok());
        let big = format!("{{\"a\":\"{}\"}}", "x".repeat(16 << 20));
        assert!(scan_json(big.as_bytes()).unwrap().verbatim);
    }

    /// Objects whose keys may repeat and whose values hold escapes, non-ASCII, arrays.
    fn object() -> impl Strategy<Value = Vec<(String, serde_json::Value)>> {
        let key = prop_oneof![
            Just("Event-Name".to_owned()),
            Just("Unique-ID".to_owned()),
            Just("Event-Sequence".to_owned()),
            "[A-Za-z_-]{1,8}",
            "\\PC{0,6}",
        ];
        let leaf = prop_oneof![
            "\\PC{0,12}".prop_map(serde_json::Value::from),
            any::<String>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            Just(serde_json::Value::Null),
        ];
        let value = leaf
            .prop_recursive(3, 16, 4, |inner| prop::collection::vec(inner, 0..4).prop_map(serde_json::Value::Array));
        prop::collection::vec((key, value), 0..12)
    }

    fn write(pairs: &[(String, serde_json::Value)]) -> String {
        let fields: Vec<String> =
            pairs.iter().map(|(k, v)| format!("{}:{}", serde_json::to_string(k).unwrap(), v)).collect();
        format!("{{{}}}", fields.join(","))
    }

    /// Objects as cJSON prints them (strings and arrays of strings) whose strings are dense in
    /// what JSON escapes (quotes, backslashes, control bytes) and in non-ASCII, as the switch's
    /// SDP and multi-line variables are.
    fn cjson_object() -> impl Strategy<Value = Vec<(String, serde_json::Value)>> {
        let key = prop_oneof![
            Just("Event-Name".to_owned()),
            Just("Unique-ID".to_owned()),
            "[A-Za-z_-]{1,8}",
            "[a\\\\\"/\\n\\x01\u{e9}]{1,4}",
        ];
        let text = prop_oneof!["[a\\\\\"/\\r\\n\\t\\x01\u{e9}\u{1F4DE}]{0,40}", any::<String>()];
        let value = prop_oneof![
            text.clone().prop_map(serde_json::Value::from),
            prop::collection::vec(text, 0..4).prop_map(|v| v.into_iter().map(serde_json::Value::from).collect()),
        ];
        prop::collection::vec((key, value), 0..12)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        #[test]
        fn valid_objects_are_accepted_and_repeats_found(pairs in prop_oneof![object(), cjson_object()]) {
            let text = write(&pairs);
            let scan = scan_json(text.as_bytes()).unwrap();
            let keys: Vec<String> = pairs.iter().map(|(k, _)| k.clone()).collect();
            prop_assert_eq!(scan.verbatim, unique(&keys));
            prop_assert_eq!(scan.duplicate_keys, !unique(&keys));
            prop_assert_eq!(scan.rewritten.is_some(), scan.duplicate_keys);
            if let Some(rewritten) = &scan.rewritten {
                assert_first_wins(text.as_bytes(), rewritten);
            }
            // The serde scan agrees where it reads the event (it wants index fields as strings).
            if let Ok(meta) = scan_meta(EventFormat::Json, text.as_bytes()) {
                prop_assert_eq!(&scan.meta, &meta);
            }
            // The first string value of Event-Name is the name.
            if let Some(serde_json::Value::String(name)) = pairs.iter().find(|(k, _)| k == "Event-Name").map(|(_, v)| v) {
                prop_assert_eq!(&scan.meta.name, name);
            }
        }

        #[test]
        fn damaged_json_is_accepted_exactly_when_serde_json_accepts_it(
            pairs in prop_oneof![object(), cjson_object()],
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            how in 0..3u8,
        ) {
            let mut bytes = write(&pairs).into_bytes();
            match how {
                0 => bytes.truncate(cut.index(bytes.len() + 1)),
                1 => { let i = flip.index(bytes.len()); bytes[i] = byte; }
                _ => { let i = flip.index(bytes.len() + 1); bytes.insert(i, byte); }
            }
            let ours = scan_json(&bytes);
            // Not UTF-8: the decoding path decides; whatever it says, it is not a panic.
            if let Ok(text) = std::str::from_utf8(&bytes) {
                prop_assert_eq!(ours.is_ok(), keys_of(text).is_some(), "{:?}", text);
            }
        }
    }
}
