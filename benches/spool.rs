//! Spool throughput: events/s appended (the path taken while Redis is down or slow) and read
//! back (the drain when it returns), with ~2.5 KB events, on the real file system.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use eslstream::envelope::{BodyFormat, Envelope, EventId, IdempotencyKey, Source, StreamTarget};
use eslstream::pipeline::spool::{LaneSpool, SpoolBudget};

const EVENTS: u64 = 20_000;

fn envelope(seq: u64) -> Envelope {
    let body = format!("Event-Name: CHANNEL_STATE\nEvent-Sequence: {seq}\n{}\n\n", "variable_x: y\n".repeat(170));
    let key = IdempotencyKey { producer: "c76fa84c-21b9-496c-ab66-57208cf171a5".into(), id: EventId::Seq(seq) };
    let stream = StreamTarget::new("freeswitch:telephony:events", 0, "events");
    Envelope {
        name: "CHANNEL_STATE".into(),
        ordering_key: format!("call-{}", seq % 100).into(),
        timestamp_us: Some(1),
        parsed_at_us: 1,
        ..Envelope::new(Source::Esl, stream, BodyFormat::EslPlain, Bytes::from(body), key)
    }
}

fn bench(c: &mut Criterion) {
    let events: Vec<Envelope> = (0..EVENTS).map(envelope).collect();
    let mut group = c.benchmark_group("spool");
    group.throughput(Throughput::Elements(EVENTS)).sample_size(10).measurement_time(Duration::from_secs(5));
    group.bench_function("append", |b| {
        b.iter_batched(
            || tempfile::tempdir().unwrap(),
            |dir| {
                let (mut spool, _) = LaneSpool::open(dir.path(), SpoolBudget::new(u64::MAX)).unwrap();
                for e in &events {
                    spool.append(e).unwrap();
                }
                dir
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("read_and_commit", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                let (mut spool, _) = LaneSpool::open(dir.path(), SpoolBudget::new(u64::MAX)).unwrap();
                for e in &events {
                    spool.append(e).unwrap();
                }
                (dir, spool)
            },
            |(dir, mut spool)| {
                let mut out = Vec::with_capacity(256);
                while spool.read_batch(256, &mut out).unwrap() > 0 {
                    let pos = out.last().and_then(|e| e.spool_pos).unwrap();
                    spool.commit(pos).unwrap();
                    black_box(&out);
                    out.clear();
                }
                dir
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
