//! The load harness's `outbox` mode: a real PostgreSQL cluster (fsync on, as in production),
//! `eslstream outbox init`, the agent relaying with `ESL_ENABLED=false`, and two phases:
//!
//! - **latency**: rows inserted at `--outbox-rate` rows/s (default 1,000; four writers, one row
//!   per transaction) for `--seconds`; for each row, from its `COMMIT` returning to the entry
//!   being readable by a blocking `XREAD` on another connection (p50, p99, p99.9, max);
//! - **throughput**: `--outbox-rows` rows (default 200,000) committed by four writers as fast
//!   as they go, in transactions of 50; rows/s relayed = rows / (last entry readable − first
//!   commit), beside the writers' own commit rate.
//!
//! Both are checked against `XLEN` and an empty table.

use super::*;

#[path = "../../tests/support/postgres.rs"]
#[allow(dead_code)] // the tests' harness: this mode uses only part of it
mod postgres;

const OUTBOX_STREAM: &str = "freeswitch:telephony:outbox-events";
const INSERT: &str =
    "INSERT INTO eslstream_outbox (event_name, ordering_key, payload) VALUES ($1, $2, $3::text::jsonb)";

/// What the outbox mode measured.
#[derive(Debug, Clone)]
pub struct OutboxResult {
    rate: u64,
    latency: Summary,
    latency_rows: u64,
    rows: u64,
    commit_rows_per_sec: f64,
    relay_rows_per_sec: f64,
    in_redis: u64,
    left_in_table: i64,
}

impl OutboxResult {
    pub fn markdown(&self) -> String {
        format!(
            "| PostgreSQL outbox | rows | p50 ms | p99 ms | p99.9 ms | max ms | rows/s |\n|---|---:|---:|---:|---:|---:|---:|\n\
             | commit → readable at {}/s | {} | {} | {} | {} | {} | - |\n\
             | 4 writers, 50 rows per transaction | {} | - | - | - | - | {:.0} relayed ({:.0} committed) |\n\
             \n{} rows committed, {} in Redis, {} left in the table.\n",
            self.rate,
            self.latency_rows,
            ms(self.latency.p50),
            ms(self.latency.p99),
            ms(self.latency.p999),
            ms(self.latency.max),
            self.rows,
            self.relay_rows_per_sec,
            self.commit_rows_per_sec,
            self.latency_rows + self.rows,
            self.in_redis,
            self.left_in_table,
        )
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "rate": self.rate,
            "latency_rows": self.latency_rows,
            "latency_us": {"p50": self.latency.p50, "p99": self.latency.p99, "p999": self.latency.p999, "max": self.latency.max},
            "throughput_rows": self.rows,
            "commit_rows_per_sec": self.commit_rows_per_sec,
            "relay_rows_per_sec": self.relay_rows_per_sec,
            "in_redis": self.in_redis,
            "left_in_table": self.left_in_table,
        })
    }

    /// Everything committed is in Redis once, and nothing is left behind.
    pub fn complete(&self) -> bool {
        self.in_redis == self.latency_rows + self.rows && self.left_in_table == 0
    }
}

fn payload(n: u64) -> String {
    format!(
        r#"{{"order_id": "ord-{n}", "customer": "cust-{}", "status": "paid", "amount": 12.5, "currency": "EUR", "lines": [{{"sku": "A-1", "qty": 2}}, {{"sku": "B-7", "qty": 1}}], "note": "{}"}}"#,
        n % 997,
        "delivered to the front desk; ".repeat(8)
    )
}

fn pg_client(port: u16) -> Result<::postgres::Client, String> {
    ::postgres::Client::connect(&format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"), ::postgres::NoTls)
        .map_err(|e| format!("PostgreSQL: {e}"))
}

/// Reads every entry of the outbox stream as it arrives and records when each row id was
/// readable (µs since `origin`).
fn reader(redis: &RedisServer, origin: Instant, expected: u64) -> Result<JoinHandle<Result<Vec<u64>, String>>, String> {
    let mut con = redis.connection()?;
    Ok(std::thread::spawn(move || {
        let mut seen = vec![0u64; expected as usize + 1];
        let (mut last_id, mut got) = ("0-0".to_owned(), 0u64);
        let mut idle_since = Instant::now();
        while got < expected {
            let reply: Value = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(1000)
                .arg("BLOCK")
                .arg(1000)
                .arg("STREAMS")
                .arg(OUTBOX_STREAM)
                .arg(&last_id)
                .query(&mut con)
                .map_err(|e| format!("XREAD: {e}"))?;
            let now = origin.elapsed().as_micros() as u64;
            let Value::Array(streams) = reply else {
                if idle_since.elapsed() > STALL_TIMEOUT {
                    return Err(format!("outbox: {got} of {expected} entries, then nothing for {STALL_TIMEOUT:?}"));
                }
                continue;
            };
            idle_since = Instant::now();
            for stream in streams {
                let Value::Array(parts) = stream else { continue };
                let Some(Value::Array(entries)) = parts.get(1) else { continue };
                for entry in entries {
                    let Value::Array(e) = entry else { continue };
                    if let Some(Value::BulkString(id)) = e.first() {
                        last_id = String::from_utf8_lossy(id).into_owned();
                    }
                    let Some(Value::Array(fields)) = e.get(1) else { continue };
                    let seq = fields.chunks(2).find_map(|kv| match kv {
                        [Value::BulkString(k), Value::BulkString(v)] if k == b"event_sequence" => {
                            std::str::from_utf8(v).ok()?.parse::<usize>().ok()
                        }
                        _ => None,
                    });
                    if let Some(seq) = seq.filter(|s| *s < seen.len()) {
                        seen[seq] = now;
                    }
                    got += 1;
                }
            }
        }
        Ok(seen)
    }))
}

pub fn run_outbox(redis: &RedisServer, opts: &Opts) -> Result<OutboxResult, String> {
    let pg = postgres::PgServer::start_with(&[]);
    eprintln!("load: PostgreSQL on 127.0.0.1:{}", pg.port());
    let url = pg.url();
    let init = Command::new(&opts.agent)
        .args(["outbox", "init"])
        .env_clear()
        .env("OUTBOX_DATABASE_URL", &url)
        .output()
        .map_err(|e| format!("outbox init: {e}"))?;
    if !init.status.success() {
        return Err(format!("outbox init failed: {}", String::from_utf8_lossy(&init.stderr)));
    }
    let mut env = vec![
        ("ESL_ENABLED", "false".to_owned()),
        ("OUTBOX_DATABASE_URL", url.clone()),
        ("OUTBOX_MAX_LEN", "0".into()),
        ("REDIS_URL", redis.url()),
        ("HEALTH_BIND", "127.0.0.1".into()),
        ("HEALTH_PORT", "0".into()),
        ("LOG_LEVEL", "warn".into()),
        ("METRICS_PRINT_INTERVAL", "0".into()),
    ];
    env.extend(opts.env.iter().map(|(k, v)| (k.as_str(), v.clone())));
    let agent = AgentProcess::start(&opts.agent, &env)?;
    std::thread::sleep(Duration::from_millis(500));
    if !agent.is_running() {
        return Err(format!("the agent did not start:\n{}", agent.output()));
    }

    // Latency: four writers, one row per transaction, paced to `rate` in all.
    let rate = opts.outbox_rate;
    let latency_rows = rate * opts.seconds;
    let total = latency_rows + opts.outbox_rows;
    let origin = Instant::now();
    let read = reader(redis, origin, total)?;
    let committed_at = Arc::new(Mutex::new(vec![0u64; total as usize + 1]));
    let next = Arc::new(AtomicU64::new(0));
    let writers: Vec<JoinHandle<Result<(), String>>> = (0..4)
        .map(|_| {
            let (next, committed_at, port) = (next.clone(), committed_at.clone(), pg.port());
            std::thread::spawn(move || {
                let mut c = pg_client(port)?;
                let insert = c.prepare(&format!("{INSERT} RETURNING id")).map_err(|e| e.to_string())?;
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= latency_rows {
                        return Ok(());
                    }
                    let due = origin + Duration::from_secs_f64(n as f64 / rate as f64);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let mut tx = c.transaction().map_err(|e| e.to_string())?;
                    let key = format!("order-{}", n % 500);
                    let id: i64 =
                        tx.query_one(&insert, &[&"order.paid", &key, &payload(n)]).map_err(|e| e.to_string())?.get(0);
                    tx.commit().map_err(|e| e.to_string())?;
                    let at = origin.elapsed().as_micros() as u64;
                    if let Some(slot) = committed_at.lock().unwrap().get_mut(id as usize) {
                        *slot = at;
                    }
                    if n % rate == 0 {
                        eprintln!("load: outbox latency {n}/{latency_rows}");
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().map_err(|_| "a writer panicked".to_owned())??;
    }

    // Throughput: four writers as fast as they commit, 50 rows per transaction.
    let rows = opts.outbox_rows;
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let started_us = origin.elapsed().as_micros() as u64;
    let writers: Vec<JoinHandle<Result<(), String>>> = (0..4)
        .map(|_| {
            let (next, port) = (next.clone(), pg.port());
            std::thread::spawn(move || {
                let mut c = pg_client(port)?;
                let insert = c.prepare(INSERT).map_err(|e| e.to_string())?;
                loop {
                    let from = next.fetch_add(50, Ordering::Relaxed);
                    if from >= rows {
                        return Ok(());
                    }
                    let mut tx = c.transaction().map_err(|e| e.to_string())?;
                    for n in from..(from + 50).min(rows) {
                        let key = format!("order-{}", n % 500);
                        tx.execute(&insert, &[&"order.paid", &key, &payload(n)]).map_err(|e| e.to_string())?;
                    }
                    tx.commit().map_err(|e| e.to_string())?;
                    if (from / 50) % 400 == 0 {
                        eprintln!("load: outbox throughput {from}/{rows}");
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().map_err(|_| "a writer panicked".to_owned())??;
    }
    let commit_secs = started.elapsed().as_secs_f64();
    let seen = read.join().map_err(|_| "the reader panicked".to_owned())??;
    let committed_at = committed_at.lock().unwrap().clone();
    let mut hist = Histogram::new();
    let mut last_readable = 0;
    for (id, &read_at) in seen.iter().enumerate().skip(1) {
        let commit = committed_at[id];
        if commit > 0 && read_at >= commit && id as u64 > rate * WARMUP.as_secs() {
            hist.record(read_at - commit);
        }
        last_readable = last_readable.max(read_at);
    }
    let mut con = redis.connection()?;
    let in_redis: u64 = redis::cmd("XLEN").arg(OUTBOX_STREAM).query(&mut con).map_err(|e| format!("XLEN: {e}"))?;
    std::thread::sleep(Duration::from_millis(500)); // the last deletes
    let left_in_table: i64 = pg_client(pg.port())?
        .query_one("SELECT count(*) FROM eslstream_outbox", &[])
        .map_err(|e| e.to_string())?
        .get(0);
    drop(agent);
    Ok(OutboxResult {
        rate,
        latency: hist.summary(),
        latency_rows,
        rows,
        commit_rows_per_sec: rows as f64 / commit_secs,
        relay_rows_per_sec: rows as f64 / ((last_readable - started_us) as f64 / 1e6),
        in_redis,
        left_in_table,
    })
}
