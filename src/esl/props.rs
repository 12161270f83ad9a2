//! Property tests of the parser: events encoded exactly as FreeSWITCH does (`esl::encode`),
//! several per stream, split anywhere, decode back to the same headers and body; garbage and
//! mutated real frames never panic and never make memory grow without bound; truncated
//! frames wait for more bytes.

use crate::esl::encode::{encode_json, encode_plain, event_frame, HeaderValue};
use crate::esl::event::{decode, DecodedValue, EventFormat};
use crate::esl::frame::{Frame, FrameDecoder, FrameError, MAX_CONTENT_LENGTH, MAX_RESERVE};
use crate::esl::json::{event_json, write_event_json};
use bytes::BytesMut;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};

#[derive(Debug, Clone, PartialEq)]
enum Value {
    One(String),
    Array(Vec<String>),
}

#[derive(Debug, Clone)]
struct TestEvent {
    headers: Vec<(String, Value)>,
    body: Option<String>,
    json: bool,
}

/// What a value reads after FreeSWITCH's plain round trip, computed independently of the
/// library: `switch_url_encode` passes a `%` followed by two uppercase hex digits through
/// unencoded, so decoding turns it into that byte (U+FFFD where the bytes are not UTF-8).
fn through_plain(value: &str) -> String {
    let is_hex = |b: u8| b.is_ascii_digit() || (b'A'..=b'F').contains(&b);
    let hex = |b: u8| {
        if b.is_ascii_digit() {
            b - b'0'
        } else {
            b - b'A' + 10
        }
    };
    let bytes = value.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() && is_hex(bytes[i + 1]) && is_hex(bytes[i + 2]) {
            out.push(hex(bytes[i + 1]) << 4 | hex(bytes[i + 2]));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Characters that stress the encoding, mixed with any character at all.
fn text_char() -> impl Strategy<Value = char> {
    prop_oneof![
        3 => select(vec!['%', '+', ':', '\n', '\r', '\t', ' ', '|', '"', '\\', 'A', 'F', '0', '9', 'a', 'é', '東', '😀', '\u{1}']),
        1 => any::<char>(),
    ]
}

fn text(max: usize) -> impl Strategy<Value = String> {
    vec(text_char(), 0..max).prop_map(|chars| chars.into_iter().collect())
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => text(24)
            .prop_filter("FreeSWITCH holds no empty value", |v| !v.is_empty())
            .prop_filter("would read as an array", |v| {
                !v.starts_with("ARRAY::") && !through_plain(v).starts_with("ARRAY::")
            })
            .prop_map(Value::One),
        1 => vec(
            text(10).prop_filter("an item holding the separator splits", |v| {
                !v.contains("|:") && !through_plain(v).contains("|:")
            }),
            1..4
        )
        .prop_filter("the joined items must not pass an escape through across items", |items| {
            let joined = items.join("|:");
            through_plain(&joined) == items.iter().map(|i| through_plain(i)).collect::<Vec<_>>().join("|:")
        })
        .prop_map(Value::Array),
    ]
}

fn event() -> impl Strategy<Value = TestEvent> {
    (
        vec(("[A-Za-z][A-Za-z0-9_-]{0,15}", value()), 0..10),
        prop_oneof![
            1 => Just(None),
            2 => vec(
                prop_oneof![
                    3 => text_char().prop_map(String::from),
                    1 => Just("\n\n".to_owned()),
                    1 => Just("Content-Length: 999\n".to_owned()),
                ],
                1..20
            )
            .prop_map(|parts| Some(parts.concat())),
        ],
        any::<bool>(),
    )
        .prop_map(|(headers, body, json)| TestEvent { headers, body, json })
}

/// The event body as FreeSWITCH would send it.
fn encode(ev: &TestEvent) -> Vec<u8> {
    let headers: Vec<(&str, HeaderValue<'_>)> = ev
        .headers
        .iter()
        .map(|(n, v)| {
            let v = match v {
                Value::One(s) => HeaderValue::One(s.as_str()),
                Value::Array(items) => HeaderValue::Array(items.iter().map(String::as_str).collect()),
            };
            (n.as_str(), v)
        })
        .collect();
    let mut out = Vec::new();
    if ev.json {
        encode_json(&headers, ev.body.as_deref(), &mut out);
    } else {
        encode_plain(&headers, ev.body.as_deref().map(str::as_bytes), &mut out);
    }
    out
}

/// The headers and body decoding must give back.
fn expected(ev: &TestEvent) -> (Vec<(String, Value)>, Option<String>) {
    let fix = |s: &String| if ev.json { s.clone() } else { through_plain(s) };
    let mut headers: Vec<(String, Value)> = ev
        .headers
        .iter()
        .map(|(n, v)| {
            let v = match v {
                Value::One(s) => Value::One(fix(s)),
                Value::Array(items) => Value::Array(items.iter().map(fix).collect()),
            };
            (n.clone(), v)
        })
        .collect();
    if let Some(body) = &ev.body {
        headers.push(("Content-Length".into(), Value::One(body.len().to_string())));
    }
    (headers, ev.body.clone())
}

fn decoded(format: EventFormat, body: &[u8]) -> (Vec<(String, Value)>, Option<String>) {
    let ev = decode(format, body).expect("encoded event decodes");
    let headers = ev
        .headers
        .iter()
        .map(|(n, v)| {
            let v = match v {
                DecodedValue::One(s) => Value::One(s.to_string()),
                DecodedValue::Array(items) => Value::Array(items.iter().map(|s| s.to_string()).collect()),
            };
            (n.to_string(), v)
        })
        .collect();
    (headers, ev.body.map(|b| b.into_owned()))
}

fn value_json(v: &Value) -> serde_json::Value {
    match v {
        Value::One(s) => s.as_str().into(),
        Value::Array(items) => items.iter().map(|s| serde_json::Value::from(s.as_str())).collect(),
    }
}

/// Where a stream of `len` bytes is split: `cuts` (any order) between its two ends, sorted.
fn cut_points(len: usize, cuts: &[Index]) -> Vec<usize> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(len + 1)).collect();
    points.push(0);
    points.push(len);
    points.sort_unstable();
    points
}

/// Feeds `stream` split at `cuts` (positions, any order); every frame, and what is left.
fn feed(stream: &[u8], cuts: &[Index]) -> Result<(Vec<Frame>, BytesMut), FrameError> {
    let points = cut_points(stream.len(), cuts);
    let mut dec = FrameDecoder::new();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for w in points.windows(2) {
        buf.extend_from_slice(&stream[w[0]..w[1]]);
        while let Some(frame) = dec.decode(&mut buf)? {
            frames.push(frame);
        }
    }
    Ok((frames, buf))
}

fn real_frames() -> Vec<u8> {
    let path = format!("{}/tests/data/esl-captures/plain.esl", env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read capture {path}: {e}"));
    // The start of the session: auth, replies, an api/response, events, log frames.
    bytes[..12_000].to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn encoded_streams_decode_back(events in vec(event(), 1..6), cuts in vec(any::<Index>(), 0..10)) {
        let mut stream = Vec::new();
        for ev in &events {
            let format = if ev.json { EventFormat::Json } else { EventFormat::Plain };
            event_frame(format.content_type(), &encode(ev), &mut stream);
        }
        let (frames, rest) = feed(&stream, &cuts).expect("valid stream");
        prop_assert!(rest.is_empty());
        prop_assert_eq!(frames.len(), events.len());
        let mut out = Vec::new();
        for (frame, ev) in frames.iter().zip(&events) {
            let format = EventFormat::from_content_type(frame.content_type().unwrap_or("")).unwrap();
            prop_assert_eq!(format == EventFormat::Json, ev.json);
            let want = expected(ev);
            prop_assert_eq!(decoded(format, frame.body()), want.clone());

            // The entry JSON: valid, each name once with its first value, `_body` the body.
            out.clear();
            event_json(format, frame.body(), &mut out).expect("encoded event converts");
            let parsed: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
            let mut map = serde_json::Map::new();
            for (name, v) in &want.0 {
                map.entry(name.clone()).or_insert_with(|| value_json(v));
            }
            if let Some(body) = &want.1 {
                map.insert("_body".into(), body.as_str().into());
            }
            prop_assert_eq!(parsed, serde_json::Value::Object(map));
        }
    }

    #[test]
    fn truncated_frames_wait_for_more(ev in event(), cut in any::<Index>()) {
        let mut stream = Vec::new();
        crate::esl::encode::auth_request(&mut stream);
        let first = stream.len();
        let format = if ev.json { EventFormat::Json } else { EventFormat::Plain };
        event_frame(format.content_type(), &encode(&ev), &mut stream);
        // Cut strictly inside the event frame: only the auth frame comes out.
        let end = first + cut.index(stream.len() - first);
        let (frames, rest) = feed(&stream[..end], &[]).expect("a prefix is not an error");
        prop_assert_eq!(frames.len(), 1);
        prop_assert_eq!(frames[0].content_type(), Some("auth/request"));
        prop_assert_eq!(rest.len(), end - first);
    }

    #[test]
    fn garbage_never_panics(bytes in vec(any::<u8>(), 0..3000), cuts in vec(any::<Index>(), 0..8)) {
        check_garbage(&bytes, &cuts)?;
    }

    #[test]
    fn garbage_made_of_protocol_pieces_never_panics(
        parts in vec(select(vec![
            &b"Content-Length: "[..], b"Content-Type: text/event-plain", b"\n", b"\r\n", b": ", b"12",
            b"999999999999999999999", b"%", b"%4", b"%C3%A9", b"ARRAY%3A%3A", b"%7C%3A", b"{\"a\":", b"\"x\"",
            b"[", b"}", b"\xff", b"abc", b"-1",
        ]), 0..200),
        cuts in vec(any::<Index>(), 0..8),
    ) {
        check_garbage(&parts.concat(), &cuts)?;
    }

    #[test]
    fn mutated_real_frames_never_panic(
        edits in vec((any::<Index>(), any::<u8>(), 0u8..3), 1..20),
        cuts in vec(any::<Index>(), 0..8),
    ) {
        let mut bytes = real_frames();
        for (at, byte, kind) in edits {
            let i = at.index(bytes.len());
            match kind {
                0 => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ => { bytes.remove(i); }
            }
        }
        check_garbage(&bytes, &cuts)?;
    }

    #[test]
    /// Plain bodies made of the bytes line ends, escapes and percent-decoding trip over (raw
    /// `\r` inside values, `\r\r\n`, a last line without `\n`, names repeated, `ARRAY::`,
    /// `%XX` that decodes to invalid UTF-8): the one-pass JSON writer agrees with decoding the
    /// event first and writing that, byte for byte, and fails exactly when decoding fails.
    #[test]
    fn one_pass_plain_json_agrees_with_decode_then_write(
        bytes in vec(select(vec![
            &b"a"[..], b"B", b":", b": ", b"\r", b"\n", b"\r\n", b"%", b"%41", b"%0A", b"%C3", b"%A9", b"%FF",
            "é".as_bytes(), b"\"", b"\\", b"\t", b"ARRAY::", b"|:", b"Content-Length: 3\n\nxyz", b"_body",
        ]), 0..40)
    ) {
        let body: Vec<u8> = bytes.concat();
        let mut out = Vec::new();
        let one_pass = event_json(EventFormat::Plain, &body, &mut out);
        match decode(EventFormat::Plain, &body) {
            Ok(ev) => {
                let mut via_event = Vec::new();
                write_event_json(&ev, &mut via_event);
                prop_assert!(one_pass.is_ok(), "{:?}: {:?}", String::from_utf8_lossy(&body), one_pass);
                prop_assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&via_event));
            }
            Err(_) => prop_assert!(one_pass.is_err(), "{:?}", String::from_utf8_lossy(&body)),
        }
    }

    #[test]
    fn huge_content_length_is_an_error_not_an_allocation(n in (MAX_CONTENT_LENGTH as u64 + 1)..u64::MAX) {
        let mut buf = BytesMut::from(format!("Content-Length: {n}\nContent-Type: text/event-plain\n\n").as_bytes());
        let err = FrameDecoder::new().decode(&mut buf).unwrap_err();
        prop_assert!(matches!(err, FrameError::ContentLengthTooLarge(_)), "{}", err);
        prop_assert!(buf.capacity() < 4096);
    }

    #[test]
    fn a_large_claimed_body_reserves_little(n in 0usize..=MAX_CONTENT_LENGTH, have in 0usize..1000) {
        let mut buf = BytesMut::from(format!("Content-Length: {n}\n\n").as_bytes());
        buf.extend_from_slice(&vec![b'x'; have.min(n.saturating_sub(1))]);
        let mut dec = FrameDecoder::new();
        let got = dec.decode(&mut buf).unwrap();
        if n == 0 {
            prop_assert!(got.is_some());
        } else {
            prop_assert!(got.is_none());
            prop_assert!(buf.capacity() <= 2 * (buf.len() + MAX_RESERVE) + 64);
        }
    }
}

/// Decodes `bytes` split at `cuts`: no panic, bounded buffer; every frame that comes out
/// also goes through the event decoders and the entry JSON without panicking, and any JSON
/// produced is valid.
fn check_garbage(bytes: &[u8], cuts: &[Index]) -> Result<(), TestCaseError> {
    let points = cut_points(bytes.len(), cuts);
    let mut dec = FrameDecoder::new();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    'feed: for w in points.windows(2) {
        buf.extend_from_slice(&bytes[w[0]..w[1]]);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    for format in [EventFormat::Plain, EventFormat::Json] {
                        let _ = decode(format, frame.body());
                        let _ = crate::esl::event::scan_meta(format, frame.body());
                        out.clear();
                        if event_json(format, frame.body(), &mut out).is_ok() {
                            prop_assert!(serde_json::from_slice::<serde_json::Value>(&out).is_ok());
                        }
                    }
                }
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
        prop_assert!(buf.capacity() <= 2 * (bytes.len() + MAX_RESERVE) + 64);
    }
    // The event decoders on the raw bytes too.
    for format in [EventFormat::Plain, EventFormat::Json] {
        let _ = decode(format, bytes);
        out.clear();
        if event_json(format, bytes, &mut out).is_ok() {
            prop_assert!(serde_json::from_slice::<serde_json::Value>(&out).is_ok());
        }
    }
    Ok(())
}
