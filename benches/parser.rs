//! Parser throughput: frame decoding, `scan_meta` and `event_json` over the real captures
//! (`tests/data/esl-captures`) and over synthetic plain events of about 1, 4 and 16 KB built
//! with the FreeSWITCH-exact encoder. Each measurement is reported twice, in bytes (MB/s) and
//! in events (events/s). `requests/plain.esl` encodes the capture's events as the writer does,
//! in batches of `XADD`s: each event's JSON made in its own buffer and then copied into the
//! request (`json_then_copy`, as before), or written straight into the request (`in_place`).
//!
//! On `json.esl`, `scan_json` (the reader's single pass in `ESL_EVENT_FORMAT=json`, after which
//! the writer copies the bytes) runs beside `scan_meta_serde` (the serde scan it replaced), and
//! `scan_json+event_field` is the reader's scan and the writer's work on the field together.
//!
//! `cargo bench --bench parser` (about two minutes) or `-- --quick`.

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use eslstream::config::EntryFormat;
use eslstream::envelope::{EventId, IdempotencyKey};
use eslstream::esl::encode::{encode_plain, event_frame, HeaderValue};
use eslstream::esl::event::{scan_meta, EventFormat};
use eslstream::esl::frame::FrameDecoder;
use eslstream::esl::json::event_json;
use eslstream::esl::json_scan::scan_json;
use eslstream::sink::entry::EventField;
use eslstream::sink::redis::Entry;
use eslstream::sink::resp::Resp;

fn capture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/esl-captures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read capture {path}: {e}"))
}

/// Decodes every frame of `bytes`; with `meta`, also runs `scan_meta` on each event.
fn frame_all(bytes: &mut BytesMut, meta: bool) -> usize {
    let mut dec = FrameDecoder::new();
    let mut n = 0;
    while let Some(frame) = dec.decode(bytes).expect("valid capture") {
        if meta {
            if let Some(format) = frame.content_type().and_then(EventFormat::from_content_type) {
                black_box(scan_meta(format, frame.body()).expect("valid event"));
            }
        }
        n += 1;
    }
    n
}

/// The event bodies of a capture with their format.
fn event_bodies(bytes: &[u8]) -> Vec<(EventFormat, Vec<u8>)> {
    let mut buf = BytesMut::from(bytes);
    let mut dec = FrameDecoder::new();
    let mut out = Vec::new();
    while let Some(frame) = dec.decode(&mut buf).expect("valid capture") {
        if let Some(format) = frame.content_type().and_then(EventFormat::from_content_type) {
            out.push((format, frame.body().to_vec()));
        }
    }
    out
}

fn captures(c: &mut Criterion) {
    for file in ["plain.esl", "json.esl", "xml.esl"] {
        let bytes = capture(file);
        let events = event_bodies(&bytes);
        let event_bytes: usize = events.iter().map(|(_, b)| b.len()).sum();
        let event_count = if file == "xml.esl" { 1009 } else { events.len() };
        for (unit, frame_tp, event_tp) in [
            ("MB", Throughput::Bytes(bytes.len() as u64), Throughput::Bytes(event_bytes as u64)),
            ("events", Throughput::Elements(event_count as u64), Throughput::Elements(events.len() as u64)),
        ] {
            let mut group = c.benchmark_group(format!("capture/{file}/{unit}"));
            group.throughput(frame_tp);
            group.bench_function("frames", |b| {
                b.iter_batched(
                    || BytesMut::from(&bytes[..]),
                    |mut buf| frame_all(&mut buf, false),
                    BatchSize::LargeInput,
                )
            });
            if events.is_empty() {
                group.finish();
                continue;
            }
            group.bench_function("frames+scan_meta", |b| {
                b.iter_batched(
                    || BytesMut::from(&bytes[..]),
                    |mut buf| frame_all(&mut buf, true),
                    BatchSize::LargeInput,
                )
            });
            group.throughput(event_tp);
            let mut out = Vec::with_capacity(64 * 1024);
            group.bench_function("event_json", |b| {
                b.iter(|| {
                    for (format, body) in &events {
                        out.clear();
                        black_box(event_json(*format, body, &mut out).expect("valid event"));
                    }
                })
            });
            if file == "json.esl" {
                // The reader's one pass in ESL_EVENT_FORMAT=json (then the writer copies the
                // bytes), against what json mode cost before: serde's scan of the index fields
                // plus the writer's decode-and-rewrite (`event_json` above).
                group.bench_function("scan_json", |b| {
                    b.iter(|| {
                        for (_, body) in &events {
                            black_box(scan_json(body).expect("valid event"));
                        }
                    })
                });
                // The agent's whole work on a JSON event's `event` field: the reader's scan,
                // then the writer's: a copy of the bytes as they came (or as the reader
                // rewrote them), or the decoding rewrite for bytes that are not UTF-8.
                let mut field = Vec::with_capacity(64 * 1024);
                group.bench_function("scan_json+event_field", |b| {
                    b.iter(|| {
                        for (_, body) in &events {
                            let scan = scan_json(body).expect("valid event");
                            field.clear();
                            match (&scan.rewritten, scan.verbatim) {
                                (Some(rewritten), _) => field.extend_from_slice(rewritten),
                                (None, true) => field.extend_from_slice(body),
                                (None, false) => {
                                    event_json(EventFormat::Json, body, &mut field).expect("valid event");
                                }
                            }
                            black_box(&field);
                        }
                    })
                });
                group.bench_function("scan_meta_serde", |b| {
                    b.iter(|| {
                        for (format, body) in &events {
                            black_box(scan_meta(*format, body).expect("valid event"));
                        }
                    })
                });
            }
            group.finish();
        }
    }
}

/// A CHANNEL_HANGUP_COMPLETE-like plain event of about `target` bytes: the core headers, a
/// caller profile, then `variable_*` headers with values that need percent-encoding.
fn synthetic_event(target: usize) -> Vec<u8> {
    let fixed: Vec<(String, String)> = [
        ("Event-Name", "CHANNEL_HANGUP_COMPLETE"),
        ("Core-UUID", "c76fa84c-21b9-496c-ab66-57208cf171a5"),
        ("FreeSWITCH-Hostname", "vm"),
        ("FreeSWITCH-Switchname", "vm"),
        ("FreeSWITCH-IPv4", "192.0.2.2"),
        ("FreeSWITCH-IPv6", "fd00::2"),
        ("Event-Date-Local", "2026-11-23 00:47:44"),
        ("Event-Date-GMT", "Mon, 23 Nov 2026 00:47:44 GMT"),
        ("Event-Date-Timestamp", "1795394864815714"),
        ("Event-Calling-File", "switch_core_state_machine.c"),
        ("Event-Calling-Function", "switch_core_session_reporting_state"),
        ("Event-Calling-Line-Number", "1001"),
        ("Event-Sequence", "754471"),
        ("Hangup-Cause", "NORMAL_CLEARING"),
        ("Channel-State", "CS_REPORTING"),
        ("Unique-ID", "e2264866-f459-446b-a41c-c8f30d88170c"),
        ("Call-Direction", "outbound"),
        ("Caller-Caller-ID-Name", "Zoë O'Brien & co: 100%"),
        ("Caller-Caller-ID-Number", "+4915112345678"),
        ("Caller-Destination-Number", "park"),
        ("Caller-Channel-Name", "loopback/park-a"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    let vars = [
        "sofia/internal/1000@127.0.0.1:5060",
        "a=b&c=d e+f/g",
        "Grüße, 東京 & «quotes» 100% sure?",
        "1795394864815714",
        "NORMAL_CLEARING",
        "v=0\r\no=FreeSWITCH 1795371234 1795371235 IN IP4 127.0.0.1\r\ns=FreeSWITCH\r\n",
        "true",
        "<sip:1000@127.0.0.1>;tag=a0rZ0vK0eep",
    ];
    let mut headers = fixed;
    let mut i = 0;
    loop {
        let refs: Vec<(&str, HeaderValue<'_>)> =
            headers.iter().map(|(n, v)| (n.as_str(), HeaderValue::One(v.as_str()))).collect();
        let mut body = Vec::new();
        encode_plain(&refs, None, &mut body);
        if body.len() >= target {
            return body;
        }
        headers.push((format!("variable_synthetic_{i}"), vars[i % vars.len()].to_owned()));
        i += 1;
    }
}

fn synthetic(c: &mut Criterion) {
    for (label, target) in [("1KB", 1024), ("4KB", 4096), ("16KB", 16384)] {
        let body = synthetic_event(target);
        let mut frame = Vec::new();
        event_frame(EventFormat::Plain.content_type(), &body, &mut frame);
        for (unit, tp) in [("MB", Throughput::Bytes(body.len() as u64)), ("events", Throughput::Elements(1))] {
            let mut group = c.benchmark_group(format!("synthetic/{label}/{unit}"));
            group.throughput(tp);
            group.bench_function("frame+scan_meta", |b| {
                b.iter_batched(
                    || BytesMut::from(&frame[..]),
                    |mut buf| frame_all(&mut buf, true),
                    BatchSize::SmallInput,
                )
            });
            group.bench_function("scan_meta", |b| {
                b.iter(|| black_box(scan_meta(EventFormat::Plain, black_box(&body)).expect("valid event")))
            });
            let mut out = Vec::with_capacity(64 * 1024);
            group.bench_function("event_json", |b| {
                b.iter(|| {
                    out.clear();
                    black_box(event_json(EventFormat::Plain, black_box(&body), &mut out).expect("valid event"))
                })
            });
            group.finish();
        }
    }
}

/// Events per request in `requests`.
const BATCH: usize = 64;

fn requests(c: &mut Criterion) {
    let bytes = capture("plain.esl");
    let events = event_bodies(&bytes);
    let event_bytes: usize = events.iter().map(|(_, b)| b.len()).sum();
    let entry = |i: usize, event: EventField| {
        let key =
            IdempotencyKey { producer: "c76fa84c-21b9-496c-ab66-57208cf171a5".into(), id: EventId::Seq(i as u64) };
        Entry::new(EntryFormat::Full, ("freeswitch:telephony:events", 1_000_000), "CHANNEL_STATE", "uid", &key, event)
    };
    let mut copied: Vec<Entry> =
        (0..events.len()).map(|i| entry(i, EventField::Json(Vec::with_capacity(16 * 1024)))).collect();
    let in_place: Vec<Entry> = events
        .iter()
        .enumerate()
        .map(|(i, (format, body))| entry(i, EventField::event((*format).into(), Bytes::copy_from_slice(body))))
        .collect();
    let mut resp = Resp::with_capacity(1 << 20);
    let mut group = c.benchmark_group("requests/plain.esl/MB");
    group.throughput(Throughput::Bytes(event_bytes as u64));
    group.bench_function("json_then_copy", |b| {
        b.iter(|| {
            for (batch, bodies) in copied.chunks_mut(BATCH).zip(events.chunks(BATCH)) {
                for (e, (format, body)) in batch.iter_mut().zip(bodies) {
                    let EventField::Json(json) = &mut e.event else { unreachable!("made as JSON") };
                    json.clear();
                    event_json(*format, body, json).expect("valid event");
                }
                resp.clear();
                for e in batch.iter() {
                    e.encode_xadd(&mut resp).expect("valid event");
                }
                black_box(resp.as_bytes());
            }
        })
    });
    group.bench_function("in_place", |b| {
        b.iter(|| {
            for batch in in_place.chunks(BATCH) {
                resp.clear();
                for e in batch {
                    e.encode_xadd(&mut resp).expect("valid event");
                }
                black_box(resp.as_bytes());
            }
        })
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = captures, synthetic, requests
}
criterion_main!(benches);
