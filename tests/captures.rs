//! The parser against real FreeSWITCH captures (`tests/data/esl-captures`, described in its
//! `CAPTURES.md`): framing to the last byte, counts per Content-Type and per event name as the
//! document's tables give them, specific values checked against a hand reading of the capture
//! text, chunked delivery, plain vs json agreement, and the entry JSON for every event.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::BytesMut;
use eslstream::esl::encode::url_encode;
use eslstream::esl::event::{decode, percent_decode, scan_meta, DecodedValue, Event, EventFormat};
use eslstream::esl::frame::{Frame, FrameDecoder};
use eslstream::esl::json::{event_json, write_event_json};

/// Feeds `bytes` to a decoder in the given chunks; every frame, and no leftover.
fn frames_chunked<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<Frame> {
    let mut dec = FrameDecoder::new();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        while let Some(frame) = dec.decode(&mut buf).expect("capture frames decode") {
            frames.push(frame);
        }
    }
    assert!(buf.is_empty(), "{} bytes left over after the last frame", buf.len());
    frames
}

fn frames(bytes: &[u8]) -> Vec<Frame> {
    frames_chunked([bytes])
}

fn content_type_counts(frames: &[Frame]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for f in frames {
        *counts.entry(f.content_type().unwrap_or("<none>").to_owned()).or_insert(0) += 1;
    }
    counts
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// The decoded events of a capture, in order, with their format.
fn events(frames: &[Frame]) -> Vec<(EventFormat, &[u8])> {
    frames
        .iter()
        .filter_map(|f| {
            let format = EventFormat::from_content_type(f.content_type()?)?;
            Some((format, &f.body()[..]))
        })
        .collect()
}

fn frame_key(f: &Frame) -> (Vec<u8>, Vec<u8>) {
    (f.head().to_vec(), f.body().to_vec())
}

#[test]
fn content_type_counts_match_captures_md() {
    // "Content-Type (outer frame)" table of CAPTURES.md.
    let table = [
        ("plain.esl", 2684741, &[("text/event-plain", 1009)]),
        ("json.esl", 2847070, &[("text/event-json", 1012)]),
        ("xml.esl", 4712002, &[("text/event-xml", 1009)]),
    ];
    for (file, size, event_row) in table {
        let bytes = support::capture_bytes(file);
        assert_eq!(bytes.len(), size, "{file} size");
        let mut expected = counts(&[
            ("api/response", 5),
            ("auth/request", 1),
            ("command/reply", 11),
            ("log/data", 412),
            ("text/disconnect-notice", 1),
        ]);
        expected.extend(counts(event_row));
        assert_eq!(content_type_counts(&frames(&bytes)), expected, "{file}");
    }
}

#[test]
fn driver_captures_have_one_reply_per_command() {
    for fmt in ["plain", "json", "xml"] {
        let client = String::from_utf8(support::capture_bytes(&format!("{fmt}.driver.client.txt"))).unwrap();
        let commands: Vec<&str> = client.split("\n\n").filter(|c| !c.trim().is_empty()).collect();
        let api = commands.iter().filter(|c| c.starts_with("api ")).count();
        let others = commands.len() - api; // auth, bgapi, exit: each gets a command/reply
        assert_eq!((api, others), (26, 17), "{fmt}.driver.client.txt commands");
        let expected = counts(&[
            ("api/response", api),
            ("auth/request", 1),
            ("command/reply", others),
            ("text/disconnect-notice", 1),
        ]);
        let frames = frames(&support::capture_bytes(&format!("{fmt}.driver.esl")));
        assert_eq!(content_type_counts(&frames), expected, "{fmt}.driver.esl");
    }
}

/// The "Event counts per file" table of CAPTURES.md (CUSTOM by subclass).
fn event_name_table(json: bool) -> BTreeMap<String, usize> {
    let mut table = counts(&[
        ("CHANNEL_STATE", 268),
        ("CHANNEL_CALLSTATE", 97),
        ("CODEC", 84),
        ("CHANNEL_EXECUTE", 58),
        ("CHANNEL_EXECUTE_COMPLETE", 56),
        ("API", 48),
        ("CHANNEL_CREATE", 40),
        ("CHANNEL_DESTROY", 40),
        ("CHANNEL_HANGUP", 40),
        ("CHANNEL_HANGUP_COMPLETE", 40),
        ("CHANNEL_ANSWER", 34),
        ("CUSTOM conference::maintenance", 26),
        ("CHANNEL_PARK", 21),
        ("CHANNEL_UNPARK", 21),
        ("CHANNEL_ORIGINATE", 20),
        ("CHANNEL_OUTGOING", 20),
        ("BACKGROUND_JOB", 17),
        ("CHANNEL_UUID", 17),
        ("CALL_UPDATE", 16),
        ("DTMF", 9),
        ("PLAYBACK_START", 9),
        ("PLAYBACK_STOP", 9),
        ("PRESENCE_IN", 7),
        ("CHANNEL_BRIDGE", 2),
        ("CHANNEL_PROGRESS", 2),
        ("CHANNEL_UNBRIDGE", 2),
        ("CUSTOM", 1),
        ("CUSTOM esl_capture::test", 1),
        ("CUSTOM esl_capture::with_body", 1),
        ("HEARTBEAT", if json { 2 } else { 1 }),
        ("MESSAGE", 1),
        ("RE_SCHEDULE", if json { 3 } else { 1 }),
    ]);
    table.retain(|_, n| *n > 0);
    table
}

fn name_key(name: &str, subclass: &str) -> String {
    if subclass.is_empty() {
        name.to_owned()
    } else {
        format!("{name} {subclass}")
    }
}

#[test]
fn event_name_counts_match_captures_md() {
    for (file, json) in [("plain.esl", false), ("json.esl", true)] {
        let bytes = support::capture_bytes(file);
        let frames = frames(&bytes);
        let mut by_meta = BTreeMap::new();
        let mut by_decode = BTreeMap::new();
        for (format, body) in events(&frames) {
            let meta = scan_meta(format, body).unwrap();
            *by_meta.entry(name_key(&meta.name, &meta.subclass)).or_insert(0) += 1;
            let ev = decode(format, body).unwrap();
            let name = ev.get("Event-Name").unwrap();
            let subclass = if name == "CUSTOM" { ev.get("Event-Subclass").unwrap_or("") } else { "" };
            *by_decode.entry(name_key(name, subclass)).or_insert(0) += 1;
        }
        assert_eq!(by_meta, event_name_table(json), "{file} by scan_meta");
        assert_eq!(by_decode, event_name_table(json), "{file} by decode");
        let total: usize = by_meta.values().sum();
        assert_eq!(total, if json { 1012 } else { 1009 });
    }
}

#[test]
fn scan_meta_agrees_with_full_decode_on_every_event() {
    for file in ["plain.esl", "json.esl"] {
        let bytes = support::capture_bytes(file);
        let frames = frames(&bytes);
        for (format, body) in events(&frames) {
            let meta = scan_meta(format, body).unwrap();
            let ev = decode(format, body).unwrap();
            assert_eq!(Some(meta.name.as_str()), ev.get("Event-Name"));
            assert_eq!(meta.core_uuid, "c76fa84c-21b9-496c-ab66-57208cf171a5");
            assert_eq!(Some(meta.sequence.as_str()), ev.get("Event-Sequence"));
            let uid = ev.get("Unique-ID").or(ev.get("Job-UUID")).unwrap_or("");
            assert_eq!(meta.unique_id, uid);
            let ts = ev.get("Event-Date-Timestamp").unwrap();
            assert_eq!(meta.timestamp_us, Some(ts.parse::<i64>().unwrap()));
            assert!(meta.timestamp_us.unwrap() > 1_795_000_000_000_000);
            assert_eq!(Some(meta.calling_function.as_str()), ev.get("Event-Calling-Function"));
        }
    }
}

/// All decoded events of a capture, owned.
fn decoded_events(file: &str) -> Vec<Event<'static>> {
    let bytes = support::capture_bytes(file);
    let frames = frames(&bytes);
    events(&frames).into_iter().map(|(format, body)| decode(format, body).unwrap().into_owned()).collect()
}

fn values_of<'a>(events: &'a [Event<'static>], name: &str) -> BTreeSet<&'a str> {
    events.iter().filter_map(|e| e.get(name)).collect()
}

fn find<'a>(events: &'a [Event<'static>], name: &str, value: &str) -> &'a Event<'static> {
    events.iter().find(|e| e.get(name) == Some(value)).unwrap_or_else(|| panic!("no event with {name}: {value}"))
}

fn all_values<'a>(ev: &'a Event<'_>, name: &str) -> Vec<&'a str> {
    ev.headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| match v {
            DecodedValue::One(v) => v.as_ref(),
            DecodedValue::Array(_) => panic!("{name} is an array"),
        })
        .collect()
}

#[test]
fn specific_values_match_a_hand_reading_of_the_captures() {
    // plain.esl: `Caller-Caller-ID-Name: Zo%C3%AB%20O'Brien%20%26%20co%3A%20100%25` etc.
    // json.esl: the same values as JSON strings.
    for file in ["plain.esl", "json.esl"] {
        let evs = decoded_events(file);
        assert!(values_of(&evs, "Caller-Caller-ID-Name").contains("Zoë O'Brien & co: 100%"), "{file}");
        assert_eq!(values_of(&evs, "variable_esl_tabs"), BTreeSet::from(["a\tb"]), "{file}");
        assert_eq!(values_of(&evs, "variable_esl_exported"), BTreeSet::from(["a=b&c=d e+f/g"]), "{file}");
        assert_eq!(
            values_of(&evs, "variable_esl_note"),
            BTreeSet::from(["Grüße, 東京 & «quotes» 100% sure?"]),
            "{file}"
        );
        assert_eq!(
            values_of(&evs, "variable_esl_unicode"),
            BTreeSet::from(["日本語テキスト \"quoted\" <tag> 100% +plus"]),
            "{file}"
        );
        assert_eq!(values_of(&evs, "FreeSWITCH-IPv6"), BTreeSet::from(["fd00::2"]), "{file}");
        assert!(values_of(&evs, "variable_switch_r_sdp").iter().all(|v| v.starts_with("v=0\r\no=")), "{file}");
        assert!(!values_of(&evs, "variable_switch_r_sdp").is_empty());
        assert!(evs.iter().all(|e| !e.lossy), "{file}: no lossy event");

        // sendevent CUSTOM esl_capture::test
        let ev = find(&evs, "Event-Subclass", "esl_capture::test");
        assert_eq!(ev.headers[0].0, "Event-Subclass", "{file}: Event-Name is not first");
        assert_eq!(ev.get("Event-Name"), Some("CUSTOM"));
        assert_eq!(ev.get("Command"), Some("sendevent CUSTOM"));
        assert_eq!(ev.get("X-Test-Header"), Some("hello world"));
        assert_eq!(ev.get("X-Unicode"), Some("Grüße 東京 & co=100%"));
        assert_eq!(ev.body, None);

        // sendevent CUSTOM esl_capture::with_body: 86 bytes with a blank line and a decoy.
        let ev = find(&evs, "Event-Subclass", "esl_capture::with_body");
        let body = "line one\nline two: with colon\n\nafter a blank line\nContent-Length: 999\nünïcödé ✓\n";
        assert_eq!(body.len(), 86);
        assert_eq!(ev.body.as_deref(), Some(body), "{file}");
        assert_eq!(all_values(ev, "Content-Length"), ["86", "86"], "{file}: both Content-Length kept");
        assert_eq!(ev.get("Content-Type"), Some("text/plain"));
        assert_eq!(ev.get("X-Note"), Some("body follows"));

        // sendevent MESSAGE: 35 bytes of UTF-8, no trailing newline.
        let ev = find(&evs, "Event-Name", "MESSAGE");
        assert_eq!(ev.body.as_deref(), Some("Hello from ESL ✓ — MESSAGE body"));
        assert_eq!(ev.body.as_ref().map(|b| b.len()), Some(35));
        assert_eq!(ev.headers[0].0, "Command");
        assert_eq!(ev.get("from"), Some("1000@127.0.0.1"));
        assert_eq!(ev.get("subject"), Some("hi there"));
        assert_eq!(all_values(ev, "Content-Length"), ["35", "35"]);

        // sendevent NONEXISTENT_EVENT_NAME: fired as CUSTOM without a subclass.
        let ev = find(&evs, "Command", "sendevent NONEXISTENT_EVENT_NAME");
        assert_eq!(ev.get("Event-Name"), Some("CUSTOM"));
        assert_eq!(ev.get("Event-Subclass"), None);
        assert_eq!(ev.get("X-What"), Some("unknown event name"));

        // BACKGROUND_JOB of `bgapi status`: the status text as body.
        let jobs: Vec<_> = evs.iter().filter(|e| e.get("Job-Command") == Some("status")).collect();
        assert_eq!(jobs.len(), 2, "{file}: two `bgapi status`");
        for job in jobs {
            assert_eq!(job.get("Event-Name"), Some("BACKGROUND_JOB"));
            assert_eq!(job.get("Event-Calling-Function"), Some("api_exec"));
            let body = job.body.as_deref().unwrap();
            assert!(body.starts_with("UP 0 years, 0 days, 0 hours, "), "{body:?}");
            assert!(body.contains("\nFreeSWITCH (Version 1.11.1-release  64bit) is ready\n"));
            assert!(body.ends_with("Current Stack Size/Max 240K/8192K\n"));
            assert_eq!(job.get("Content-Length"), Some(body.len().to_string().as_str()));
        }
    }
}

#[test]
fn irreversible_percent_passthrough_differs_between_plain_and_json() {
    // `esl_tag='a;b c=d&e f%20g/ü€😀'`: FreeSWITCH passes `%20` through unencoded, so the
    // plain wire reads `f%20g` and decodes to `f g`; json keeps the value as set.
    let plain = decoded_events("plain.esl");
    let json = decoded_events("json.esl");
    assert_eq!(values_of(&plain, "variable_esl_tag"), BTreeSet::from(["a;b c=d&e f g/ü€😀"]));
    assert_eq!(values_of(&json, "variable_esl_tag"), BTreeSet::from(["a;b c=d&e f%20g/ü€😀"]));
}

#[test]
fn outer_frames_match_a_hand_reading() {
    let bytes = support::capture_bytes("plain.esl");
    let frames = frames(&bytes);
    assert_eq!(frames[0].content_type(), Some("auth/request"));
    assert_eq!(frames[1].header("Reply-Text"), Some("+OK accepted"));
    assert_eq!(frames[2].header("Reply-Text"), Some("+OK event listener enabled plain"));

    let logs: Vec<_> = frames.iter().filter(|f| f.content_type() == Some("log/data")).collect();
    assert_eq!(logs.len(), 412);
    let first = logs[0];
    let headers: Vec<_> = first.headers().collect();
    assert_eq!(
        headers,
        [
            ("Content-Type", "log/data"),
            ("Content-Length", "95"),
            ("Log-Level", "7"),
            ("Text-Channel", "3"),
            ("Log-File", "switch_ivr_originate.c"),
            ("Log-Func", "switch_ivr_originate"),
            ("Log-Line", "2301"),
            ("User-Data", ""),
        ]
    );
    assert!(first.body().starts_with(b"2026-11-23 00:47:45.335709 98.23% [DEBUG] switch_ivr_originate.c:2301 "));
    assert_eq!(first.body().len(), 95);
    for log in &logs {
        let user_data = log.header("User-Data").expect("every log frame has User-Data");
        assert!(user_data.is_empty() || user_data.len() == 36, "{user_data:?}");
        assert!(log.body().ends_with(b"\n"));
    }
    assert!(logs.iter().any(|l| l.header("User-Data") == Some("")));
    assert!(logs.iter().any(|l| l.header("User-Data").is_some_and(|u| u.len() == 36)));

    let api: Vec<_> = frames.iter().filter(|f| f.content_type() == Some("api/response")).collect();
    let bodies: Vec<_> = api.iter().map(|f| String::from_utf8_lossy(f.body()).into_owned()).collect();
    assert!(bodies[0].starts_with("UP 0 years"));
    assert_eq!(bodies[2], "\n0 total.\n");
    assert_eq!(bodies[3], "-ERR No such channel!\n");
    assert!(bodies[4].starts_with("-ERR ") && bodies[4].ends_with("Command not found!\n"), "{:?}", bodies[4]);

    let n = frames.len();
    assert_eq!(frames[n - 2].header("Reply-Text"), Some("+OK bye"));
    let last = &frames[n - 1];
    assert_eq!(last.content_type(), Some("text/disconnect-notice"));
    assert_eq!(&last.body()[..], b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n");
}

/// A small deterministic generator for split points.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % bound.max(1)
    }
}

#[test]
fn chunked_delivery_gives_identical_frames() {
    for file in ["plain.esl", "json.esl", "xml.esl", "plain.driver.esl"] {
        let bytes = support::capture_bytes(file);
        let whole: Vec<_> = frames(&bytes).iter().map(frame_key).collect();
        for size in [1, 7, 4096] {
            let got: Vec<_> = frames_chunked(bytes.chunks(size)).iter().map(frame_key).collect();
            assert!(got == whole, "{file} in chunks of {size}");
        }
        let mut rng = Lcg(bytes.len() as u64);
        for _ in 0..3 {
            let mut cuts = vec![0];
            let mut pos = 0;
            while pos < bytes.len() {
                pos = (pos + 1 + rng.next(3000)).min(bytes.len());
                cuts.push(pos);
            }
            let chunks = cuts.windows(2).map(|w| &bytes[w[0]..w[1]]);
            let got: Vec<_> = frames_chunked(chunks).iter().map(frame_key).collect();
            assert!(got == whole, "{file} in random chunks");
        }
    }
}

#[test]
fn every_split_point_of_small_frames() {
    let bytes = support::capture_bytes("plain.esl");
    let whole = frames(&bytes);
    // The first eight frames (auth, replies, an api/response with body, events) split once
    // at every byte boundary.
    let len: usize = whole[..8].iter().map(|f| f.head().len() + 1 + f.body().len()).sum();
    let prefix = &bytes[..len];
    let expected: Vec<_> = whole[..8].iter().map(frame_key).collect();
    for i in 0..=prefix.len() {
        let got: Vec<_> = frames_chunked([&prefix[..i], &prefix[i..]]).iter().map(frame_key).collect();
        assert!(got == expected, "split at {i}");
    }
    // The with_body event frame split twice at every pair of boundaries.
    let start = bytes.windows(24).position(|w| w == b"Content-Length: 741\nCont").unwrap();
    let frame = &bytes[start..start + "Content-Length: 741\nContent-Type: text/event-plain\n\n".len() + 741];
    let expected: Vec<_> = frames(frame).iter().map(frame_key).collect();
    assert_eq!(expected.len(), 1);
    for i in 0..=frame.len() {
        for j in i..=frame.len() {
            let got = frames_chunked([&frame[..i], &frame[i..j], &frame[j..]]);
            assert!(got.len() == 1 && frame_key(&got[0]) == expected[0], "split at {i}, {j}");
        }
    }
}

/// Replaces what differs between two runs of the same script: UUIDs, digit runs and SIP's
/// random tags and branches.
fn normalize(name: &str, value: &str) -> String {
    if name == "variable_sip_from_tag" || name == "variable_sip_to_tag" {
        return "<tag>".into();
    }
    let mut s = value.to_owned();
    for key in ["tag=", "branch="] {
        let mut out = String::new();
        let mut rest = s.as_str();
        while let Some(i) = rest.find(key) {
            out.push_str(&rest[..i + key.len()]);
            rest = rest[i + key.len()..].trim_start_matches(|c: char| c.is_ascii_alphanumeric());
            out.push_str("<r>");
        }
        out.push_str(rest);
        s = out;
    }
    let is_uuid = |w: &[u8]| {
        w.len() == 36
            && w.iter().enumerate().all(|(i, &b)| match i {
                8 | 13 | 18 | 23 => b == b'-',
                _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
            })
    };
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if i + 36 <= bytes.len() && is_uuid(&bytes[i..i + 36]) {
            out.extend_from_slice(b"<uuid>");
            i += 36;
        } else if bytes[i].is_ascii_digit() {
            out.push(b'0');
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// For each header name (and `_body`), the set of normalized values over all events, leaving
/// out HEARTBEAT and RE_SCHEDULE (timer events whose counts differ between the sessions).
fn value_sets(events: &[Event<'_>], transform: impl Fn(&str) -> String) -> HashMap<String, BTreeSet<String>> {
    let mut sets: HashMap<String, BTreeSet<String>> = HashMap::new();
    for ev in events {
        if matches!(ev.get("Event-Name"), Some("HEARTBEAT" | "RE_SCHEDULE")) {
            continue;
        }
        for (name, value) in &ev.headers {
            let text = match value {
                DecodedValue::One(v) => transform(v),
                DecodedValue::Array(items) => items.iter().map(|v| transform(v)).collect::<Vec<_>>().join("|:"),
            };
            sets.entry(name.to_string()).or_default().insert(normalize(name, &text));
        }
        if let Some(body) = &ev.body {
            sets.entry("_body".into()).or_default().insert(normalize("_body", &transform(body)));
        }
    }
    sets
}

/// What a value set through FreeSWITCH reads after a round trip through the plain format:
/// `switch_url_encode` (which passes `%XX` with uppercase hex through) and then decoding.
fn through_plain(value: &str) -> String {
    let mut encoded = Vec::new();
    url_encode(value, &mut encoded);
    percent_decode(std::str::from_utf8(&encoded).unwrap()).into_owned()
}

#[test]
fn plain_and_json_describe_the_same_events() {
    // The two sessions ran the same script on the same switch but at different times, so no
    // event appears in both (Event-Sequence continues from one file to the next, and every
    // call got fresh UUIDs). What must agree is the decoded content: for every header name,
    // the set of values over the whole session, once run-specific tokens are normalized.
    let plain = decoded_events("plain.esl");
    let json = decoded_events("json.esl");
    let plain_sets = value_sets(&plain, str::to_owned);
    let json_sets = value_sets(&json, through_plain);
    let mut names: Vec<_> = plain_sets.keys().chain(json_sets.keys()).collect();
    names.sort();
    names.dedup();
    assert!(names.len() > 400, "{} header names", names.len());
    for name in names {
        assert_eq!(plain_sets.get(name), json_sets.get(name), "values of {name}");
    }

    // The only values the plain round trip changes are those holding `%` + two uppercase hex
    // digits: the esl_tag variable and the originate command line that set it.
    let json_raw = value_sets(&json, str::to_owned);
    let changed: BTreeSet<_> = json_raw
        .iter()
        .filter(|(name, values)| json_sets.get(*name) != Some(values))
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(changed, BTreeSet::from(["API-Command-Argument", "variable_esl_tag"]));
}

fn header_map(ev: &Event<'_>) -> serde_json::Map<String, serde_json::Value> {
    let mut map = serde_json::Map::new();
    for (name, value) in &ev.headers {
        if ev.body.is_some() && name == "_body" {
            continue;
        }
        if map.contains_key(name.as_ref()) {
            continue; // first occurrence wins
        }
        let v = match value {
            DecodedValue::One(v) => serde_json::Value::from(v.as_ref()),
            DecodedValue::Array(items) => items.iter().map(|i| serde_json::Value::from(i.as_ref())).collect(),
        };
        map.insert(name.to_string(), v);
    }
    if let Some(body) = &ev.body {
        map.insert("_body".into(), body.as_ref().into());
    }
    map
}

#[test]
fn entry_json_round_trips_every_capture_event() {
    let mut out = Vec::new();
    let mut via_event = Vec::new();
    for file in ["plain.esl", "json.esl"] {
        let bytes = support::capture_bytes(file);
        let frames = frames(&bytes);
        let events = events(&frames);
        assert!(events.len() > 1000);
        for (format, body) in events {
            out.clear();
            let lossy = event_json(format, body, &mut out).unwrap();
            assert!(!lossy);
            let parsed: serde_json::Value = serde_json::from_slice(&out)
                .unwrap_or_else(|e| panic!("{file}: invalid JSON ({e}): {}", String::from_utf8_lossy(&out)));
            let ev = decode(format, body).unwrap();
            assert_eq!(parsed.as_object(), Some(&header_map(&ev)), "{file}");
            // The streaming writer and the Event writer give the same bytes.
            via_event.clear();
            write_event_json(&ev, &mut via_event);
            assert!(out == via_event, "{file}: streaming and Event JSON differ");
        }
    }
}

/// Every captured event's `XADD`, its JSON written straight into the request, is byte for
/// byte the command redis-rs packs from the same fields with the JSON made on its own.
#[test]
fn xadd_requests_written_in_place_match_redis_rs() {
    use eslstream::config::EntryFormat;
    use eslstream::envelope::{EventId, IdempotencyKey};
    use eslstream::sink::entry::EventField;
    use eslstream::sink::redis::Entry;
    use eslstream::sink::resp::Resp;

    let mut resp = Resp::default();
    let mut checked = 0;
    for file in ["plain.esl", "json.esl"] {
        let bytes = support::capture_bytes(file);
        let frames = frames(&bytes);
        for (i, (format, body)) in events(&frames).into_iter().enumerate() {
            let key = IdempotencyKey { producer: "c76fa84c".into(), id: EventId::Seq(i as u64) };
            let event = EventField::event(format.into(), bytes::Bytes::copy_from_slice(body));
            let entry = Entry::new(EntryFormat::Full, ("stream", 10_000), "EVENT", "uid", &key, event);
            resp.clear();
            entry.encode_xadd(&mut resp).expect("a captured event decodes");
            let mut json = Vec::new();
            event_json(format, body, &mut json).unwrap();
            let mut cmd = ::redis::cmd("XADD");
            cmd.arg("stream").arg("MAXLEN").arg("~").arg(10_000).arg("*");
            cmd.arg("event").arg(&json[..]);
            for (name, value) in &entry.index {
                cmd.arg(*name).arg(&value[..]);
            }
            assert_eq!(resp.as_bytes(), cmd.get_packed_command().as_slice(), "{file} event {i}");
            checked += 1;
        }
    }
    assert_eq!(checked, 1009 + 1012);
}
