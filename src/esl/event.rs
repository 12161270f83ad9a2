//! Decoding of `text/event-plain` and `text/event-json` bodies into headers and body.
//!
//! This module owns what an event body means: [`decode`] turns a body into an [`Event`]
//! (every header in order, duplicates kept, values decoded), [`scan_meta`] is the socket
//! reader's fast path that decodes only the index fields of
//! [`EventMeta`], and [`percent_decode`] is FreeSWITCH's
//! `switch_url_decode`.
//!
//! Plain format, as `switch_event_serialize` writes it: `Name: value\n` lines (names raw,
//! values percent-encoded by `switch_url_encode`), an empty line, and, when the event has a
//! body, a final `Content-Length: N` header line followed (after the empty line) by exactly N
//! raw bytes. The body may hold blank lines and `Content-Length:` text of its own; it is taken
//! by length. A multi-value header is held by FreeSWITCH as the string `ARRAY::a|:b` and
//! serialized through the same encoder, so on the wire it reads `ARRAY%3A%3Aa%7C%3Ab`; it is
//! recognised after decoding and becomes [`DecodedValue::Array`].
//!
//! JSON format (`switch_event_serialize_json`): one object, string values, arrays for
//! multi-value headers, the body under `_body` (with a `Content-Length` key). Duplicate keys
//! occur on the wire and are all kept, in order.
//!
//! Decoding never rejects bytes that are not UTF-8: a switch may percent-encode Latin-1 bytes,
//! and such an event must not be dropped. They become U+FFFD and [`Event::lossy`] says so.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::envelope::{BodyFormat, Text};

/// The fields of an event the ESL source needs without decoding the whole body: to route it,
/// order it, deduplicate it and time it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMeta {
    /// `Event-Name`, percent-decoded (`CUSTOM` for custom events).
    pub name: Text,
    /// `Event-Subclass` for CUSTOM events, else empty.
    pub subclass: Text,
    /// `Unique-ID`, else `Job-UUID`, else empty: the per-call ordering key.
    pub unique_id: Text,
    /// `Core-UUID` of the FreeSWITCH process.
    pub core_uuid: Text,
    /// `Event-Sequence` as sent (decimal digits), empty when absent.
    pub sequence: Text,
    /// `Event-Date-Timestamp`: microseconds since the Unix epoch, when present.
    pub timestamp_us: Option<i64>,
    /// `Event-Calling-Function` (decides whether a BACKGROUND_JOB is a job).
    pub calling_function: Text,
}

impl Default for EventMeta {
    fn default() -> EventMeta {
        EventMeta {
            name: Text::new(),
            subclass: Text::new(),
            unique_id: Text::new(),
            core_uuid: Text::new(),
            sequence: Text::new(),
            timestamp_us: None,
            calling_function: Text::new(),
        }
    }
}

/// The wire format of an event body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EventFormat {
    /// FreeSWITCH's own default for `event` without a format word.
    #[default]
    Plain,
    Json,
}

impl EventFormat {
    /// The format of a frame's `Content-Type`, `None` for anything but an event we decode
    /// (`text/event-xml` included).
    pub fn from_content_type(ct: &str) -> Option<EventFormat> {
        match ct {
            "text/event-plain" => Some(EventFormat::Plain),
            "text/event-json" => Some(EventFormat::Json),
            _ => None,
        }
    }

    /// How the pipeline turns a body of this format into an entry.
    pub(crate) fn body_format(self) -> BodyFormat {
        match self {
            EventFormat::Plain => BodyFormat::EslPlain,
            EventFormat::Json => BodyFormat::EslJson,
        }
    }

    /// The word of the `event` command that subscribes in this format (and the value of
    /// `ESL_EVENT_FORMAT` that chooses it).
    pub fn word(self) -> &'static str {
        match self {
            EventFormat::Plain => "plain",
            EventFormat::Json => "json",
        }
    }

    /// The format a word names, in any case.
    pub fn from_word(word: &str) -> Option<EventFormat> {
        [EventFormat::Plain, EventFormat::Json].into_iter().find(|f| word.trim().eq_ignore_ascii_case(f.word()))
    }

    /// The frame `Content-Type` that carries this format.
    pub fn content_type(self) -> &'static str {
        match self {
            EventFormat::Plain => "text/event-plain",
            EventFormat::Json => "text/event-json",
        }
    }
}

impl From<EventFormat> for BodyFormat {
    fn from(format: EventFormat) -> BodyFormat {
        format.body_format()
    }
}

/// Why an event body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("plain event header line at byte {0} has no ':'")]
    MissingColon(usize),
    #[error("plain event has {0} bytes after its headers but its last header is not Content-Length")]
    BodyWithoutContentLength(usize),
    #[error("plain event's final Content-Length value {0:?} is not a decimal number")]
    InvalidContentLength(String),
    #[error("plain event announces a {declared}-byte body but {actual} bytes follow its headers")]
    BodyLengthMismatch { declared: usize, actual: usize },
    #[error("JSON event is not a valid object of strings: {0}")]
    Json(#[from] serde_json::Error),
    #[error("JSON event is not valid JSON: {0}")]
    InvalidJson(String),
}

/// A decoded header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodedValue<'a> {
    One(Cow<'a, str>),
    /// A multi-value header (`ARRAY::a|:b` in plain format, a JSON array in json format).
    Array(Vec<Cow<'a, str>>),
}

impl DecodedValue<'_> {
    pub fn into_owned(self) -> DecodedValue<'static> {
        match self {
            DecodedValue::One(v) => DecodedValue::One(Cow::Owned(v.into_owned())),
            DecodedValue::Array(items) => {
                DecodedValue::Array(items.into_iter().map(|v| Cow::Owned(v.into_owned())).collect())
            }
        }
    }
}

/// A decoded event: values percent-decoded (plain) or unescaped (json), borrowed from the body
/// when nothing needed decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    /// Every header in wire order, duplicates included. In plain format the final
    /// `Content-Length` line that announces the body is a header too (as FreeSWITCH's own json
    /// has a `Content-Length` key next to `_body`).
    pub headers: Vec<(Cow<'a, str>, DecodedValue<'a>)>,
    pub body: Option<Cow<'a, str>>,
    /// Some bytes were not UTF-8 (after percent-decoding) and were replaced by U+FFFD.
    pub lossy: bool,
}

impl Event<'_> {
    /// The first single (non-array) value of the header named exactly `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|(n, v)| match v {
            DecodedValue::One(v) if n == name => Some(v.as_ref()),
            _ => None,
        })
    }

    pub fn into_owned(self) -> Event<'static> {
        Event {
            headers: self.headers.into_iter().map(|(n, v)| (Cow::Owned(n.into_owned()), v.into_owned())).collect(),
            body: self.body.map(|b| Cow::Owned(b.into_owned())),
            lossy: self.lossy,
        }
    }
}

/// Decodes an event body of the given format.
pub fn decode(format: EventFormat, body: &[u8]) -> Result<Event<'_>, EventError> {
    match format {
        EventFormat::Plain => decode_plain(body),
        EventFormat::Json => decode_json(body),
    }
}

// ---------------------------------------------------------------------------------------------
// Percent-decoding

pub(crate) fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Appends `raw` to `out`, turning every `%XX` (two hex digits, either case) into its byte;
/// anything else, `+` and a `%` not followed by two hex digits included, is copied as it is.
pub(crate) fn percent_decode_into(raw: &[u8], out: &mut Vec<u8>) {
    out.reserve(raw.len());
    let mut start = 0;
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hi = raw.get(i + 1).copied().and_then(hex_val);
            let lo = raw.get(i + 2).copied().and_then(hex_val);
            if let (Some(hi), Some(lo)) = (hi, lo) {
                out.extend_from_slice(&raw[start..i]);
                out.push(hi << 4 | lo);
                i += 3;
                start = i;
                continue;
            }
        }
        i += 1;
    }
    out.extend_from_slice(&raw[start..]);
}

/// Percent-decodes `s` as FreeSWITCH's `switch_url_decode` does for what its encoder writes:
/// `%XX` (either hex case) becomes that byte, everything else stays (`+` stays `+`). Bytes
/// that are not UTF-8 after decoding become U+FFFD. Borrowed when `s` has no `%`.
pub fn percent_decode(s: &str) -> Cow<'_, str> {
    decode_value(s.as_bytes(), &mut false)
}

/// Bytes to text, replacing what is not UTF-8 (and noting it in `lossy`).
fn text<'a>(raw: &'a [u8], lossy: &mut bool) -> Cow<'a, str> {
    match std::str::from_utf8(raw) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => {
            *lossy = true;
            Cow::Owned(String::from_utf8_lossy(raw).into_owned())
        }
    }
}

fn owned_text(bytes: Vec<u8>, lossy: &mut bool) -> String {
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => {
            *lossy = true;
            String::from_utf8_lossy(e.as_bytes()).into_owned()
        }
    }
}

/// A raw plain value, percent-decoded (borrowed when it has no `%`).
pub(crate) fn decode_value<'a>(raw: &'a [u8], lossy: &mut bool) -> Cow<'a, str> {
    if memchr::memchr(b'%', raw).is_none() {
        return text(raw, lossy);
    }
    let mut out = Vec::with_capacity(raw.len());
    percent_decode_into(raw, &mut out);
    Cow::Owned(owned_text(out, lossy))
}

/// The prefix FreeSWITCH gives the string form of a multi-value header.
pub(crate) const ARRAY_PREFIX: &str = "ARRAY::";
/// The separator between the items of a multi-value header.
pub(crate) const ARRAY_SEPARATOR: &str = "|:";

/// A decoded plain value: an array when it starts with `ARRAY::` (split on `|:`, as
/// `switch_event_add_array` does), else one value.
fn plain_value(value: Cow<'_, str>) -> DecodedValue<'_> {
    if !value.starts_with(ARRAY_PREFIX) {
        return DecodedValue::One(value);
    }
    match value {
        Cow::Borrowed(s) => {
            DecodedValue::Array(s[ARRAY_PREFIX.len()..].split(ARRAY_SEPARATOR).map(Cow::Borrowed).collect())
        }
        Cow::Owned(s) => DecodedValue::Array(
            s[ARRAY_PREFIX.len()..].split(ARRAY_SEPARATOR).map(|item| Cow::Owned(item.to_owned())).collect(),
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Plain format

/// A plain header line as it is on the wire: the name and the raw (still encoded) value.
pub(crate) type RawHeader<'a> = (&'a [u8], &'a [u8]);

/// Walks the header lines of a plain event body, then hands out the body. Shared by
/// [`decode`], [`scan_meta`] and the streaming JSON writer in [`crate::entry`].
pub(crate) struct PlainScanner<'a> {
    buf: &'a [u8],
    pos: usize,
    last: Option<RawHeader<'a>>,
    done: bool,
    /// The header whose name [`PlainScanner::next_name`] handed out: its name and where its
    /// raw value starts.
    current: (&'a [u8], usize),
}

impl<'a> PlainScanner<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        PlainScanner { buf, pos: 0, last: None, done: false, current: (&[], 0) }
    }

    /// The next header `(name, raw value)`: the value without the line terminator and without
    /// the single space after the colon. `None` at the empty line that ends the headers (or at
    /// the end of the input).
    #[inline]
    pub(crate) fn next_header(&mut self) -> Result<Option<RawHeader<'a>>, EventError> {
        Ok(match self.next_name()? {
            Some(name) => Some((name, self.take_value())),
            None => None,
        })
    }

    /// The next header's name, or `None` at the end of the headers. Its value must then be
    /// consumed, by [`PlainScanner::take_value`] or by reading [`PlainScanner::value_rest`]
    /// and reporting where the value ended ([`PlainScanner::value_ended`]).
    #[inline]
    pub(crate) fn next_name(&mut self) -> Result<Option<&'a [u8]>, EventError> {
        if self.done {
            return Ok(None);
        }
        let rest = &self.buf[self.pos..];
        match memchr::memchr2(b':', b'\n', rest) {
            Some(i) if rest[i] == b':' => {
                let mut value_at = self.pos + i + 1;
                if self.buf.get(value_at) == Some(&b' ') {
                    value_at += 1;
                }
                self.current = (&rest[..i], value_at);
                Ok(Some(&rest[..i]))
            }
            found => {
                // A line without a colon: the empty line that ends the headers, or an error.
                let (line, next) = match found {
                    Some(i) => (&rest[..i], self.pos + i + 1),
                    None => (rest, self.buf.len()),
                };
                if line.is_empty() || line == b"\r" {
                    self.done = true;
                    self.pos = next;
                    return Ok(None);
                }
                Err(EventError::MissingColon(self.pos))
            }
        }
    }

    /// The input from the current header's raw value on (its line and everything after).
    #[inline]
    pub(crate) fn value_rest(&self) -> &'a [u8] {
        &self.buf[self.current.1..]
    }

    /// The current header's value ends `len` bytes into [`PlainScanner::value_rest`] (where
    /// its `\n`, or the `\r` before it, or the end of the input is).
    #[inline]
    pub(crate) fn value_ended(&mut self, len: usize) {
        let (name, at) = self.current;
        let end = at + len;
        self.last = Some((name, &self.buf[at..end]));
        self.pos = match self.buf.get(end) {
            Some(b'\r') => (end + 2).min(self.buf.len()),
            Some(_) => end + 1,
            None => end,
        };
    }

    /// The current header's raw value, up to its line's end.
    #[inline]
    pub(crate) fn take_value(&mut self) -> &'a [u8] {
        let rest = self.value_rest();
        let len = match memchr::memchr(b'\n', rest) {
            Some(i) if i > 0 && rest[i - 1] == b'\r' => i - 1,
            Some(i) => i,
            None if rest.last() == Some(&b'\r') => rest.len() - 1,
            None => rest.len(),
        };
        self.value_ended(len);
        &rest[..len]
    }

    /// After the headers: the body, if bytes follow the empty line. The last header must then
    /// be `Content-Length: N` with exactly N bytes following.
    pub(crate) fn body(mut self) -> Result<Option<&'a [u8]>, EventError> {
        while self.next_header()?.is_some() {}
        let rest = &self.buf[self.pos.min(self.buf.len())..];
        if rest.is_empty() {
            return Ok(None);
        }
        let declared = match self.last {
            Some((b"Content-Length", value)) => parse_len(value)?,
            _ => return Err(EventError::BodyWithoutContentLength(rest.len())),
        };
        if declared != rest.len() {
            return Err(EventError::BodyLengthMismatch { declared, actual: rest.len() });
        }
        Ok(Some(rest))
    }
}

fn parse_len(value: &[u8]) -> Result<usize, EventError> {
    let invalid =
        || EventError::InvalidContentLength(String::from_utf8_lossy(&value[..value.len().min(40)]).into_owned());
    let s = std::str::from_utf8(value).map_err(|_| invalid())?;
    let s = s.trim_matches(|c: char| c == ' ' || c == '\t');
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    s.parse().map_err(|_| invalid())
}

fn decode_plain(body: &[u8]) -> Result<Event<'_>, EventError> {
    let mut lossy = false;
    let mut headers = Vec::with_capacity(32);
    let mut scanner = PlainScanner::new(body);
    while let Some((name, value)) = scanner.next_header()? {
        let name = text(name, &mut lossy);
        let value = plain_value(decode_value(value, &mut lossy));
        headers.push((name, value));
    }
    let body = scanner.body()?.map(|b| text(b, &mut lossy));
    Ok(Event { headers, body, lossy })
}

// ---------------------------------------------------------------------------------------------
// JSON format

/// A JSON string, borrowed from the input when it had no escapes.
struct CowStr<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(CowStrVisitor)
    }
}

struct CowStrVisitor;

impl<'de> Visitor<'de> for CowStrVisitor {
    type Value = CowStr<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(CowStr(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(CowStr(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(CowStr(Cow::Owned(v)))
    }
}

/// A JSON header value: a string or an array of strings.
struct JsonValue<'a>(DecodedValue<'a>);

impl<'de> Deserialize<'de> for JsonValue<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonValueVisitor)
    }
}

struct JsonValueVisitor;

impl<'de> Visitor<'de> for JsonValueVisitor {
    type Value = JsonValue<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or an array of strings")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(JsonValue(DecodedValue::One(Cow::Borrowed(v))))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(JsonValue(DecodedValue::One(Cow::Owned(v.to_owned()))))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(JsonValue(DecodedValue::One(Cow::Owned(v))))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(4).min(64));
        while let Some(CowStr(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(JsonValue(DecodedValue::Array(items)))
    }
}

/// Collects every key/value pair of the object in order (duplicate keys included: a map type
/// would silently keep only one of them).
struct EventVisitor;

impl<'de> Visitor<'de> for EventVisitor {
    type Value = Event<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut headers = Vec::with_capacity(64);
        let mut body = None;
        while let Some(CowStr(name)) = map.next_key()? {
            let JsonValue(value) = map.next_value()?;
            match value {
                // The first `_body` is the body; a later duplicate is ignored.
                DecodedValue::One(v) if name == "_body" => {
                    if body.is_none() {
                        body = Some(v);
                    }
                }
                value => headers.push((name, value)),
            }
        }
        Ok(Event { headers, body, lossy: false })
    }
}

/// Runs `f` over the body as text: borrowed when it is UTF-8, else over a lossy copy (and
/// the result made owned).
fn with_json_text<T>(
    body: &[u8],
    f: impl Fn(&str) -> Result<T, serde_json::Error>,
) -> Result<(T, bool), serde_json::Error> {
    match std::str::from_utf8(body) {
        Ok(s) => Ok((f(s)?, false)),
        Err(_) => {
            let owned = String::from_utf8_lossy(body);
            Ok((f(&owned)?, true))
        }
    }
}

fn parse_json_event(s: &str) -> Result<Event<'_>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(s);
    let event = de.deserialize_map(EventVisitor)?;
    de.end()?;
    Ok(event)
}

fn decode_json(body: &[u8]) -> Result<Event<'_>, EventError> {
    if let Ok(s) = std::str::from_utf8(body) {
        return Ok(parse_json_event(s)?);
    }
    let owned = String::from_utf8_lossy(body);
    let mut event = parse_json_event(&owned)?.into_owned();
    event.lossy = true;
    Ok(event)
}

// ---------------------------------------------------------------------------------------------
// Index fields

const META_NAME: usize = 0;
const META_SUBCLASS: usize = 1;
const META_UNIQUE_ID: usize = 2;
const META_JOB_UUID: usize = 3;
const META_CORE_UUID: usize = 4;
const META_SEQUENCE: usize = 5;
const META_TIMESTAMP: usize = 6;
const META_FUNCTION: usize = 7;

#[inline]
pub(crate) fn meta_index(name: &[u8]) -> Option<usize> {
    match name {
        b"Event-Name" => Some(META_NAME),
        b"Event-Subclass" => Some(META_SUBCLASS),
        b"Unique-ID" => Some(META_UNIQUE_ID),
        b"Job-UUID" => Some(META_JOB_UUID),
        b"Core-UUID" => Some(META_CORE_UUID),
        b"Event-Sequence" => Some(META_SEQUENCE),
        b"Event-Date-Timestamp" => Some(META_TIMESTAMP),
        b"Event-Calling-Function" => Some(META_FUNCTION),
        _ => None,
    }
}

/// The first value of each index header, as found so far.
#[derive(Default)]
pub(crate) struct MetaFields {
    pub(crate) values: [Option<Text>; 8],
}

impl MetaFields {
    /// Whether every field that matters has been seen, so the rest cannot change the result
    /// (the first occurrence of each header wins; Job-UUID only matters without Unique-ID,
    /// Event-Subclass only for CUSTOM events).
    fn complete(&self) -> bool {
        let has = |i: usize| self.values[i].is_some();
        has(META_NAME)
            && has(META_UNIQUE_ID)
            && has(META_CORE_UUID)
            && has(META_SEQUENCE)
            && has(META_TIMESTAMP)
            && has(META_FUNCTION)
            && (has(META_SUBCLASS) || self.values[META_NAME].as_deref() != Some("CUSTOM"))
    }

    pub(crate) fn into_meta(self) -> EventMeta {
        let [name, subclass, unique_id, job_uuid, core_uuid, sequence, timestamp, function] = self.values;
        let name = name.unwrap_or_else(Text::new);
        EventMeta {
            subclass: if name == "CUSTOM" { subclass.unwrap_or_else(Text::new) } else { Text::new() },
            name,
            unique_id: unique_id.or(job_uuid).unwrap_or_else(Text::new),
            core_uuid: core_uuid.unwrap_or_else(Text::new),
            sequence: sequence.unwrap_or_else(Text::new),
            timestamp_us: timestamp.and_then(|t| t.trim().parse().ok()),
            calling_function: function.unwrap_or_else(Text::new),
        }
    }
}

/// Fast path for the socket reader: fills only the index fields of [`EventMeta`], decoding
/// only those values (the first occurrence of each header wins). In plain format it stops
/// reading once every field that matters is known, so lines after that point are not checked;
/// the full decode ([`decode`], or the writer's `event_json`) reports any such error.
pub fn scan_meta(format: EventFormat, body: &[u8]) -> Result<EventMeta, EventError> {
    match format {
        EventFormat::Plain => scan_meta_plain(body),
        EventFormat::Json => scan_meta_json(body),
    }
}

fn scan_meta_plain(body: &[u8]) -> Result<EventMeta, EventError> {
    let mut fields = MetaFields::default();
    let mut scanner = PlainScanner::new(body);
    let mut lossy = false;
    while let Some((name, value)) = scanner.next_header()? {
        if let Some(i) = meta_index(name) {
            if fields.values[i].is_none() {
                fields.values[i] = Some(Text::from(decode_value(value, &mut lossy)));
                if fields.complete() {
                    break;
                }
            }
        }
    }
    Ok(fields.into_meta())
}

struct MetaVisitor;

impl<'de> Visitor<'de> for MetaVisitor {
    type Value = MetaFields;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = MetaFields::default();
        while let Some(CowStr(name)) = map.next_key()? {
            match meta_index(name.as_bytes()) {
                Some(i) => {
                    let JsonValue(value) = map.next_value()?;
                    if let (None, DecodedValue::One(v)) = (&fields.values[i], value) {
                        fields.values[i] = Some(Text::from(v));
                    }
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(fields)
    }
}

fn scan_meta_json(body: &[u8]) -> Result<EventMeta, EventError> {
    let (fields, _lossy) = with_json_text(body, |s| {
        let mut de = serde_json::Deserializer::from_str(s);
        let fields = de.deserialize_map(MetaVisitor)?;
        de.end()?;
        Ok(fields)
    })?;
    Ok(fields.into_meta())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decode_follows_switch_url_decode() {
        assert_eq!(percent_decode("a%20b%2Bc+d"), "a b+c+d");
        assert_eq!(percent_decode("%e2%82%ac%E2%82%AC"), "€€");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert!(matches!(percent_decode("plain"), Cow::Borrowed("plain")));
        // Latin-1 bytes a switch may send: replaced, never an error.
        let mut lossy = false;
        assert_eq!(decode_value(b"Gr%FC%DFe", &mut lossy), "Gr\u{FFFD}\u{FFFD}e");
        assert!(lossy);
    }

    #[test]
    fn plain_event_with_body_array_and_duplicate() {
        let body = b"Event-Name: CUSTOM\nX-A: ARRAY%3A%3Aa%7C%3Ab%20c\nContent-Length: 4\nContent-Length: 4\n\nab\n\n";
        let ev = decode(EventFormat::Plain, body).unwrap();
        assert_eq!(ev.get("Event-Name"), Some("CUSTOM"));
        assert_eq!(ev.headers[1].1, DecodedValue::Array(vec!["a".into(), "b c".into()]));
        assert_eq!(ev.headers.len(), 4);
        assert_eq!(ev.body.as_deref(), Some("ab\n\n"));
        assert!(!ev.lossy);
    }

    #[test]
    fn plain_errors() {
        let err = decode(EventFormat::Plain, b"A: b\nnocolon\n\n").unwrap_err();
        assert_eq!(err.to_string(), "plain event header line at byte 5 has no ':'");
        let err = decode(EventFormat::Plain, b"A: b\n\nxyz").unwrap_err();
        assert!(matches!(err, EventError::BodyWithoutContentLength(3)), "{err}");
        let err = decode(EventFormat::Plain, b"Content-Length: 5\n\nxyz").unwrap_err();
        assert!(matches!(err, EventError::BodyLengthMismatch { declared: 5, actual: 3 }), "{err}");
    }

    #[test]
    fn json_event_keeps_duplicates_and_borrows() {
        let body = br#"{"Event-Name":"CUSTOM","Content-Length":"2","A":["x","y\n"],"Content-Length":"2","_body":"hi"}"#;
        let ev = decode(EventFormat::Json, body).unwrap();
        assert_eq!(ev.headers.len(), 4);
        assert!(matches!(ev.headers[0].1, DecodedValue::One(Cow::Borrowed("CUSTOM"))));
        assert_eq!(ev.headers[2].1, DecodedValue::Array(vec!["x".into(), "y\n".into()]));
        assert_eq!(ev.body.as_deref(), Some("hi"));
        assert!(decode(EventFormat::Json, br#"{"a":1}"#).is_err());
        assert!(decode(EventFormat::Json, br#"[]"#).is_err());
    }

    #[test]
    fn json_with_latin1_bytes_is_lossy_not_dropped() {
        let ev = decode(EventFormat::Json, b"{\"A\":\"Gr\xfc\xdfe\"}").unwrap();
        assert!(ev.lossy);
        assert_eq!(ev.get("A"), Some("Gr\u{FFFD}\u{FFFD}e"));
    }

    #[test]
    fn meta_from_plain_and_json() {
        let plain = b"Event-Subclass: conference%3A%3Amaintenance\nEvent-Name: CUSTOM\nCore-UUID: c\nEvent-Date-Timestamp: 1795394864815714\nEvent-Calling-Function: f\nEvent-Sequence: 7\nJob-UUID: j\n\n";
        let meta = scan_meta(EventFormat::Plain, plain).unwrap();
        assert_eq!(meta.name, "CUSTOM");
        assert_eq!(meta.subclass, "conference::maintenance");
        assert_eq!(meta.unique_id, "j");
        assert_eq!(meta.timestamp_us, Some(1795394864815714));
        let json = br#"{"Event-Name":"API","Event-Subclass":"x","Unique-ID":"u","Event-Sequence":"9"}"#;
        let meta = scan_meta(EventFormat::Json, json).unwrap();
        assert_eq!((meta.name.as_str(), meta.subclass.as_str(), meta.unique_id.as_str()), ("API", "", "u"));
        assert_eq!(meta.sequence, "9");
        assert_eq!(meta.timestamp_us, None);
    }
}
