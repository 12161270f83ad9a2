//! The PostgreSQL outbox source end to end: a real PostgreSQL cluster and a real Redis, both
//! started here, the agent binary relaying. Every test counts: exactly the rows committed,
//! once each, per ordering key in `id` order, and the table empty afterwards.

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::postgres::PgServer;
use support::{
    assert_exactly_once_in_order, free_port, health_json, http, metric_sum, read_stream, start_agent, wait_until, xlen,
    Agent, RedisServer, TcpProxy,
};

const STREAM: &str = "freeswitch:telephony:outbox-events";
const PRODUCER: &str = "postgres.public.eslstream_outbox";
const INSERT: &str =
    "INSERT INTO eslstream_outbox (event_name, ordering_key, payload) VALUES ($1, $2, $3::text::jsonb)";
/// The test's own record of the batches its writers committed (first row number), beside the
/// outbox: see [`insert_rows`].
const MARKS: &str = "CREATE TABLE IF NOT EXISTS test_batches (first bigint PRIMARY KEY)";
const MARK: &str = "INSERT INTO test_batches (first) VALUES ($1)";
const MARKED: &str = "SELECT 1 FROM test_batches WHERE first = $1";

/// The agent's environment: no event socket, the outbox on `db_url`, quick retries.
fn env(db_url: &str, redis: &RedisServer, health_port: u16) -> Vec<(String, String)> {
    [
        ("ESL_ENABLED", "false".to_owned()),
        ("OUTBOX_DATABASE_URL", db_url.to_owned()),
        ("REDIS_URL", redis.url()),
        ("HEALTH_BIND", "127.0.0.1".into()),
        ("HEALTH_PORT", health_port.to_string()),
        ("HEALTH_CHECK_INTERVAL", "1s".into()),
        ("REDIS_REMOTE_DIAL_TIMEOUT", "500ms".into()),
        ("REDIS_REMOTE_WRITE_TIMEOUT", "1s".into()),
        ("WRITER_RETRY_PAUSE_AFTER", "50ms".into()),
        ("WRITER_RETRY_TTL", "1s".into()),
        ("SHUTDOWN_TIMEOUT", "5s".into()),
        ("METRICS_PRINT_INTERVAL", "0".into()),
        ("OUTBOX_POLL_INTERVAL", "1s".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// `eslstream outbox <args>` against `db_url`: (exit code, output).
fn outbox_command(db_url: &str, args: &[&str], extra: &[(&str, &str)]) -> (i32, String) {
    let mut all = vec!["outbox"];
    all.extend_from_slice(args);
    let mut vars = vec![("OUTBOX_DATABASE_URL", db_url)];
    vars.extend_from_slice(extra);
    let mut cmd = Agent::start(&all, &vars);
    let code = cmd.wait_timeout(Duration::from_secs(30)).expect("outbox command exits");
    (code, cmd.output())
}

/// A cluster with the table, a Redis, and an agent whose relay is active: (PostgreSQL, Redis,
/// the agent's health port, the agent).
fn active_relay() -> (PgServer, RedisServer, u16, Agent) {
    let pg = PgServer::start();
    let redis = RedisServer::start();
    init(&pg);
    let port = free_port();
    let agent = start_agent(&env(&pg.url(), &redis, port), &[]);
    wait_until(Duration::from_secs(20), "the relay to become active", || role(port) == "active");
    (pg, redis, port, agent)
}

fn init(pg: &PgServer) {
    let (code, out) = outbox_command(&pg.url(), &["init"], &[]);
    assert_eq!(code, 0, "outbox init:\n{out}");
}

/// The relay's state from `/health` (`data.outbox`).
fn outbox_health(port: u16) -> Option<serde_json::Value> {
    health_json(port).map(|doc| doc["data"]["outbox"].clone())
}

fn role(port: u16) -> String {
    outbox_health(port).and_then(|o| o["role"].as_str().map(str::to_owned)).unwrap_or_default()
}

fn rows_left(pg: &PgServer) -> i64 {
    pg.client().query_one("SELECT count(*) FROM eslstream_outbox", &[]).unwrap().get(0)
}

/// Inserts `total` rows from `writers` concurrent sessions, in transactions of 1-50 rows, over
/// `keys` ordering keys shared by all writers; at most `rate` rows/s in all (0: as fast as they
/// commit). Returns the rows committed (all of them: a writer retries a failed transaction,
/// e.g. while the database restarts).
fn insert_rows(pg_url_port: u16, writers: usize, total: u64, keys: u64, rate: u64, stop: Arc<AtomicBool>) -> u64 {
    let dsn = format!("host=127.0.0.1 port={pg_url_port} user=postgres dbname=postgres");
    postgres::Client::connect(&dsn, postgres::NoTls).and_then(|mut c| c.batch_execute(MARKS)).expect("marks table");
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let (next, stop) = (next.clone(), stop.clone());
            std::thread::spawn(move || {
                let connect = || {
                    let dsn = format!("host=127.0.0.1 port={pg_url_port} user=postgres dbname=postgres");
                    postgres::Client::connect(&dsn, postgres::NoTls).ok()
                };
                let mut client = None;
                let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ w as u64;
                let mut committed = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let size = 1 + seed % 50;
                    let first = next.fetch_add(size, Ordering::SeqCst);
                    if first >= total {
                        break;
                    }
                    let size = size.min(total - first);
                    if rate > 0 {
                        let due = started + Duration::from_secs_f64(first as f64 / rate as f64);
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    }
                    // The same rows until they commit. A failed transaction wrote nothing,
                    // except where the error came after the commit itself (the server went
                    // down before its answer): the marker row, committed with the rows and
                    // never relayed, tells which.
                    let mut unsure = false;
                    loop {
                        if client.is_none() {
                            client = connect();
                        }
                        let Some(c) = client.as_mut() else {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        };
                        let attempt = (|| -> Result<(), postgres::Error> {
                            if unsure && c.query_opt(MARKED, &[&(first as i64)])?.is_some() {
                                return Ok(());
                            }
                            let mut tx = c.transaction()?;
                            let insert = tx.prepare(INSERT)?;
                            for n in first..first + size {
                                let key = format!("k{}", (n * 7919) % keys);
                                let payload = format!(r#"{{"writer": {w}, "n": {n}, "text": "a b\"c"}}"#);
                                tx.execute(&insert, &[&"order.updated", &key, &payload])?;
                            }
                            tx.execute(MARK, &[&(first as i64)])?;
                            tx.commit()
                        })();
                        match attempt {
                            Ok(()) => break,
                            Err(_) => {
                                unsure = true;
                                client = None;
                                std::thread::sleep(Duration::from_millis(50));
                            }
                        }
                    }
                    committed += size;
                }
                committed
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("writer")).sum()
}

/// Starts [`insert_rows`] on a thread; join it for the count.
fn insert_in_background(pg: &PgServer, writers: usize, total: u64, rate: u64) -> std::thread::JoinHandle<u64> {
    let port = pg.port();
    std::thread::spawn(move || insert_rows(port, writers, total, 40, rate, Arc::new(AtomicBool::new(false))))
}

/// Waits until the stream holds `n` entries and the table is empty, then checks every
/// guarantee: exactly once, per ordering key in id order, the producer, the payload.
fn assert_relayed(pg: &PgServer, redis: &RedisServer, n: u64, timeout: Duration) {
    let mut conn = redis.connection();
    let deadline = Instant::now() + timeout;
    while (xlen(&mut conn, STREAM) < n || rows_left(pg) > 0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300)); // anything more would be a duplicate
    let entries = read_stream(&mut conn, STREAM);
    assert_exactly_once_in_order(&entries, n);
    // No row the test meant once is there twice (committed twice, it would carry a new id).
    let numbers: Vec<u64> = entries
        .iter()
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(&e.event).ok()?["n"].as_u64())
        .collect();
    let distinct: HashSet<u64> = numbers.iter().copied().collect();
    assert_eq!(distinct.len(), numbers.len(), "a row the test inserted once is in the stream twice");
    assert!(entries.iter().all(|e| e.core_uuid == PRODUCER), "producer of every entry is {PRODUCER}");
    let first = &entries[0];
    assert_eq!(first.event_name, "order.updated");
    let payload: serde_json::Value = serde_json::from_str(&first.event).expect("event is JSON");
    assert_eq!(payload["text"], "a b\"c");
    assert!(!first.event.contains(": "), "event is compact: {}", first.event);
    assert_eq!(rows_left(pg), 0, "rows left in the table");
}

#[test]
fn init_is_idempotent_and_a_wrong_table_stops_the_start_with_exit_2() {
    let pg = PgServer::start();
    let redis = RedisServer::start();
    // No table: the agent says so and exits 2.
    let mut agent = start_agent(&env(&pg.url(), &redis, free_port()), &[]);
    assert_eq!(agent.wait_timeout(Duration::from_secs(20)), Some(2), "{}", agent.output());
    assert!(agent.output().contains("eslstream_outbox does not exist in database postgres"), "{}", agent.output());

    let (code, sql) = outbox_command("", &["init", "--print"], &[("OUTBOX_TABLE", "app.outbox")]);
    assert_eq!(code, 0, "{sql}");
    assert!(sql.contains("CREATE TABLE IF NOT EXISTS \"app\".\"outbox\"") && sql.contains("pg_notify"), "{sql}");
    init(&pg);
    init(&pg); // twice is harmless
    let mut c = pg.client();
    c.execute(INSERT, &[&"e", &"k", &"{}"]).unwrap();
    init(&pg);
    assert_eq!(rows_left(&pg), 1, "init kept the rows");

    // A table of the same name without the columns the relay needs.
    c.batch_execute("CREATE TABLE wrong_outbox (id bigserial primary key, payload text)").unwrap();
    let (code, out) = outbox_command(&pg.url(), &["init"], &[("OUTBOX_TABLE", "wrong_outbox")]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("has no column event_name (text)") && out.contains("payload is text, not jsonb"), "{out}");
    let mut agent = start_agent(&env(&pg.url(), &redis, free_port()), &[("OUTBOX_TABLE", "wrong_outbox")]);
    assert_eq!(agent.wait_timeout(Duration::from_secs(20)), Some(2), "{}", agent.output());
    assert!(agent.output().contains("has no column event_name"), "{}", agent.output());
    // A sequence that hands out ids in blocks would break the order, and without the trigger
    // the relay would only poll: both refused, naming the fix.
    c.batch_execute(
        "ALTER SEQUENCE eslstream_outbox_id_seq CACHE 20; DROP TRIGGER eslstream_outbox_notify ON eslstream_outbox",
    )
    .unwrap();
    let mut agent = start_agent(&env(&pg.url(), &redis, free_port()), &[]);
    assert_eq!(agent.wait_timeout(Duration::from_secs(20)), Some(2), "{}", agent.output());
    let out = agent.output();
    assert!(
        out.contains("CACHE 20; the relay needs CACHE 1") && out.contains("has no eslstream_outbox_notify trigger"),
        "{out}"
    );
}

#[test]
fn rows_of_four_concurrent_writers_arrive_exactly_once_in_id_order() {
    let (pg, redis, port, _agent) = active_relay();
    let committed = insert_rows(pg.port(), 4, 20_000, 40, 0, Arc::new(AtomicBool::new(false)));
    assert_eq!(committed, 20_000);
    assert_relayed(&pg, &redis, 20_000, Duration::from_secs(120));
    let written = metric_sum(port, "eslstream_outbox_rows_total", "outcome=\"written\"");
    assert_eq!(written, 20_000.0);
    assert_eq!(metric_sum(port, "eslstream_events_received_total", "source=\"outbox\""), 20_000.0);
    wait_until(Duration::from_secs(10), "the backlog count to reach 0", || {
        outbox_health(port).is_some_and(|o| o["backlog_rows"] == 0 && o["relayed_rows"] == 20_000)
    });
    let health = outbox_health(port).unwrap();
    assert_eq!((health["producer"].as_str(), health["connected"].as_bool()), (Some(PRODUCER), Some(true)));
}

#[test]
fn a_row_whose_transaction_commits_late_is_published_and_keeps_id_order() {
    let (pg, redis, _port, _agent) = active_relay();
    let (mut early, mut late) = (pg.client(), pg.client());
    let mut first = early.transaction().unwrap();
    let low: i64 = first
        .query_one(&format!("{INSERT} RETURNING id"), &[&"order.updated", &"same", &r#"{"text": "a b\"c", "n": 1}"#])
        .unwrap()
        .get(0);
    let mut second = late.transaction().unwrap();
    let high: i64 = second
        .query_one(&format!("{INSERT} RETURNING id"), &[&"order.updated", &"same", &r#"{"text": "a b\"c", "n": 2}"#])
        .unwrap()
        .get(0);
    second.commit().unwrap();
    assert!(low < high);
    // The higher id is committed, the lower one not yet: nothing may be published before it.
    std::thread::sleep(Duration::from_millis(1500));
    let mut conn = redis.connection();
    assert_eq!(xlen(&mut conn, STREAM), 0, "row {high} published while row {low} was uncommitted");
    first.commit().unwrap();
    assert_relayed(&pg, &redis, 2, Duration::from_secs(20));
    let ids: Vec<u64> = read_stream(&mut conn, STREAM).iter().map(|e| e.sequence).collect();
    assert_eq!(ids, [low as u64, high as u64]);
}

#[test]
fn postgres_restarted_mid_stream() {
    let (pg, redis, port, _agent) = active_relay();
    let writer = insert_in_background(&pg, 2, 4000, 1000);
    wait_until(Duration::from_secs(30), "a quarter relayed", || xlen(&mut redis.connection(), STREAM) >= 1000);
    pg.restart();
    let committed = writer.join().unwrap();
    assert_eq!(committed, 4000);
    assert_relayed(&pg, &redis, 4000, Duration::from_secs(60));
    assert!(metric_sum(port, "eslstream_outbox_reconnections_total", "") >= 1.0);
}

#[test]
fn redis_down_for_5_seconds_rows_wait_in_the_table() {
    let (pg, mut redis, port, _agent) = active_relay();
    let writer = insert_in_background(&pg, 2, 6000, 1000);
    wait_until(Duration::from_secs(30), "a quarter relayed", || xlen(&mut redis.connection(), STREAM) >= 1500);
    redis.kill();
    std::thread::sleep(Duration::from_secs(5));
    assert!(rows_left(&pg) > 0, "rows wait in the table while Redis is down");
    redis.restart();
    assert_eq!(writer.join().unwrap(), 6000);
    assert_relayed(&pg, &redis, 6000, Duration::from_secs(60));
    // The outbox never used the agent's spool, and dropped nothing.
    assert_eq!(metric_sum(port, "eslstream_events_dropped_total", ""), 0.0);
    assert_eq!(metric_sum(port, "eslstream_spool_events", ""), 0.0);
}

#[test]
fn agent_killed_between_writing_a_batch_and_deleting_its_rows() {
    let pg = PgServer::start();
    let redis = RedisServer::start();
    init(&pg);
    let committed = insert_rows(pg.port(), 1, 1000, 40, 0, Arc::new(AtomicBool::new(false)));
    // Deletes wait behind this lock (reads do not): the agent writes a batch and then blocks.
    let mut holder = pg.client();
    let mut lock = holder.transaction().unwrap();
    lock.batch_execute("LOCK TABLE eslstream_outbox IN EXCLUSIVE MODE").unwrap();
    let mut agent = start_agent(&env(&pg.url(), &redis, free_port()), &[("OUTBOX_BATCH_SIZE", "300")]);
    wait_until(Duration::from_secs(20), "the first batch in Redis", || xlen(&mut redis.connection(), STREAM) >= 300);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(xlen(&mut redis.connection(), STREAM), 300, "one batch written, then the delete waits");
    agent.kill();
    lock.rollback().unwrap();
    assert_eq!(rows_left(&pg), 1000, "the killed agent deleted nothing");
    let port = free_port();
    let _agent = start_agent(&env(&pg.url(), &redis, port), &[("OUTBOX_BATCH_SIZE", "300")]);
    assert_relayed(&pg, &redis, committed, Duration::from_secs(30));
    assert_eq!(metric_sum(port, "eslstream_outbox_rows_total", "outcome=\"duplicate\""), 300.0);
}

#[test]
fn database_connection_cut_through_a_proxy() {
    let pg = PgServer::start();
    let redis = RedisServer::start();
    init(&pg);
    let proxy = TcpProxy::start(pg.addr());
    let port = free_port();
    let _agent = start_agent(&env(&pg.url_via(proxy.addr()), &redis, port), &[]);
    wait_until(Duration::from_secs(20), "the relay to become active", || role(port) == "active");
    let writer = insert_in_background(&pg, 2, 4000, 1000);
    wait_until(Duration::from_secs(30), "a quarter relayed", || xlen(&mut redis.connection(), STREAM) >= 1000);
    proxy.set_refusing(true);
    proxy.cut_all();
    wait_until(Duration::from_secs(20), "/health to show the outbox disconnected", || {
        outbox_health(port).is_some_and(|o| o["connected"] == false)
    });
    std::thread::sleep(Duration::from_secs(1));
    proxy.set_refusing(false);
    assert_eq!(writer.join().unwrap(), 4000);
    assert_relayed(&pg, &redis, 4000, Duration::from_secs(60));
}

#[test]
fn two_agents_one_outbox_the_standby_takes_over_when_the_active_is_killed() {
    let pg = PgServer::start();
    let redis = RedisServer::start();
    init(&pg);
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = start_agent(&env(&pg.url(), &redis, port_a), &[]);
    wait_until(Duration::from_secs(20), "agent A active", || role(port_a) == "active");
    let b = start_agent(&env(&pg.url(), &redis, port_b), &[]);
    wait_until(Duration::from_secs(20), "agent B standby", || role(port_b) == "standby");
    let mut health_b = http(port_b, "/health").unwrap();
    assert_eq!(health_b.0, 200, "a standby is healthy: {}", health_b.1);
    let writer = insert_in_background(&pg, 2, 6000, 1000);
    wait_until(Duration::from_secs(30), "a third relayed", || xlen(&mut redis.connection(), STREAM) >= 2000);
    let killed_at = Instant::now();
    a.kill();
    wait_until(Duration::from_secs(10), "agent B active", || role(port_b) == "active");
    let takeover = killed_at.elapsed();
    assert_eq!(writer.join().unwrap(), 6000);
    assert_relayed(&pg, &redis, 6000, Duration::from_secs(60));
    health_b = http(port_b, "/health").unwrap();
    assert!(health_b.1.contains("\"role\":\"active\""), "{}", health_b.1);
    eprintln!("standby took over {takeover:?} after the active agent was killed");
    drop(b);
}

#[test]
fn keep_mode_marks_rows_published_instead_of_deleting_them() {
    let pg = PgServer::start();
    let redis = RedisServer::start();
    let (code, out) = outbox_command(&pg.url(), &["init"], &[("OUTBOX_KEEP", "true")]);
    assert_eq!(code, 0, "{out}");
    let committed = insert_rows(pg.port(), 2, 500, 10, 0, Arc::new(AtomicBool::new(false)));
    let port = free_port();
    let _agent = start_agent(&env(&pg.url(), &redis, port), &[("OUTBOX_KEEP", "true")]);
    let mut c = pg.client();
    wait_until(Duration::from_secs(30), "every row marked published", || {
        c.query_one("SELECT count(*) FROM eslstream_outbox WHERE published_at IS NULL", &[]).unwrap().get::<_, i64>(0)
            == 0
    });
    std::thread::sleep(Duration::from_millis(500));
    let entries = read_stream(&mut redis.connection(), STREAM);
    assert_exactly_once_in_order(&entries, committed);
    assert_eq!(rows_left(&pg), 500, "the rows are kept");
}

#[test]
fn a_poison_row_is_dead_lettered_with_its_row_id_and_does_not_block_the_rest() {
    let pg = PgServer::start();
    let redis = RedisServer::start();
    init(&pg);
    redis.cli(&["SET", "not-a-stream", "a string"]);
    let mut c = pg.client();
    for n in 0..10 {
        let stream: Option<&str> = if n == 4 { Some("not-a-stream") } else { None };
        let payload = format!(r#"{{"text": "a b\"c", "n": {n}}}"#);
        c.execute(
            "INSERT INTO eslstream_outbox (stream, event_name, ordering_key, payload) VALUES ($1, 'order.updated', 'k', $2::text::jsonb)",
            &[&stream, &payload],
        )
        .unwrap();
    }
    let poison: i64 = c.query_one("SELECT id FROM eslstream_outbox WHERE stream = 'not-a-stream'", &[]).unwrap().get(0);
    let port = free_port();
    let _agent = start_agent(&env(&pg.url(), &redis, port), &[]);
    assert_relayed(&pg, &redis, 9, Duration::from_secs(30));
    let (status, body) = http(port, "/dlq").unwrap();
    assert_eq!(status, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["count"], 1, "{body}");
    let letter = &list["items"][0];
    assert_eq!((letter["stream_key"].as_str(), letter["core_uuid"].as_str()), (Some("not-a-stream"), Some(PRODUCER)));
    assert_eq!(letter["event_sequence"].as_str(), Some(poison.to_string().as_str()), "{letter}");
    assert_eq!(metric_sum(port, "eslstream_outbox_rows_total", "outcome=\"dead_lettered\""), 1.0);
}

#[test]
fn awkward_rows_arrive_with_their_exact_values() {
    let pg = PgServer::start();
    let redis = RedisServer::start();
    init(&pg);
    let big = "x".repeat(1 << 20);
    let nested = format!("{}1{}", "[".repeat(60), "]".repeat(60));
    let rows: Vec<(Option<String>, String)> = vec![
        (Some("call-ü-日本".into()), r#"{"text": "a b\"c", "emoji": "📞", "ctl": "\u0001\t\n", "esc": "\\/"}"#.into()),
        (None, format!(r#"{{"text": "a b\"c", "big": "{big}"}}"#)),
        (Some("k".repeat(2000)), format!(r#"{{"text": "a b\"c", "deep": {nested}, "num": 1e308, "neg": -0.0}}"#)),
        (Some(String::new()), r#"{"text": "a b\"c", "empty": {}, "list": []}"#.into()),
    ];
    let mut c = pg.client();
    for (key, payload) in &rows {
        c.execute(INSERT, &[&"order.updated", key, payload]).unwrap();
    }
    let stored: std::collections::HashMap<u64, (String, String)> = c
        .query("SELECT id, coalesce(ordering_key, ''), payload::text FROM eslstream_outbox", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, i64>(0) as u64, (r.get(1), r.get(2))))
        .collect();
    let _agent = start_agent(&env(&pg.url(), &redis, free_port()), &[]);
    assert_relayed(&pg, &redis, rows.len() as u64, Duration::from_secs(30));
    let entries = read_stream(&mut redis.connection(), STREAM);
    for entry in &entries {
        // Lanes are per ordering key: entries of different keys may be in any order.
        let (key, text) = &stored[&entry.sequence];
        let want: serde_json::Value = serde_json::from_str(text).unwrap();
        let got: serde_json::Value = serde_json::from_str(&entry.event).expect("valid JSON");
        assert_eq!(got, want);
        assert_eq!(&entry.unique_id, key);
    }
}

#[test]
fn tls_per_sslmode_verifies_against_the_given_root() {
    let certs = support::certs::TestCa::new();
    // The server reads its key as the postgres user and wants it private.
    std::fs::set_permissions(certs.path("server.key"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    if unsafe { libc::geteuid() } == 0 {
        let status = std::process::Command::new("chown").args(["-R", "postgres:postgres"]).arg(certs.dir()).status();
        assert!(status.is_ok_and(|s| s.success()));
    }
    let (cert, key) =
        (format!("ssl_cert_file={}", certs.path("server.crt")), format!("ssl_key_file={}", certs.path("server.key")));
    let pg = PgServer::start_with(&["-c", "fsync=off", "-c", "ssl=on", "-c", &cert, "-c", &key]);
    let redis = RedisServer::start();
    init(&pg);
    insert_rows(pg.port(), 1, 20, 5, 0, Arc::new(AtomicBool::new(false)));
    let base = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port());

    // Without the private root, verify-full refuses the server, and says why.
    let port = free_port();
    let unverified = format!("{base}?sslmode=verify-full");
    let agent = start_agent(&env(&unverified, &redis, port), &[]);
    wait_until(Duration::from_secs(20), "a certificate error in /health", || {
        outbox_health(port).is_some_and(|o| {
            o["connected"] == false && o["last_error"].as_str().is_some_and(|e| e.contains("certificate"))
        })
    });
    assert!(agent.output().contains("certificate"), "{}", agent.output());
    assert_eq!(xlen(&mut redis.connection(), STREAM), 0);
    drop(agent);

    // With it, the relay connects over TLS and relays.
    let root = certs.path("ca.crt");
    let verified = format!("{base}?sslmode=verify-full&sslrootcert={root}");
    let port = free_port();
    let _agent = start_agent(&env(&verified, &redis, port), &[]);
    assert_relayed(&pg, &redis, 20, Duration::from_secs(30));
    let mut c = pg.client();
    let tls_sessions: i64 = c
        .query_one("SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE s.ssl AND a.application_name = 'eslstream outbox relay'", &[])
        .unwrap()
        .get(0);
    assert_eq!(tls_sessions, 1, "the relay's session is encrypted");
}
