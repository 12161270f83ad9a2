//! `eslstream tail`: follows the streams the agent writes and prints one readable line per
//! entry, or the raw entry as one JSON object per line, for the person on call who wants to
//! see a call's events now without composing `XRANGE` by hand.
//!
//! It loads the configuration exactly as the agent does (`.env`, then the environment:
//! `REDIS_URL` or `REDIS_REMOTE_*`, TLS with `rediss://`, an ACL user in the URL, the stream
//! keys) and reads with blocking `XREAD`, so an entry is printed as soon as Redis has it.
//! Filters (`--call`, `--event`) are applied here, on what was read; `--since` starts from the
//! entries whose id (the time Redis added them) is that recent. A lost connection is re-made
//! and reading resumes after the last entry seen, so nothing is skipped or shown twice.
//! SIGINT (Ctrl-C) and SIGTERM end it with exit code 0.
//!
//! The Redis user needs `XREAD` and `XREVRANGE` on the stream keys, and `TIME` for `--since`.

use std::cmp::Ordering as CmpOrdering;
use std::io::Write;
use std::time::Duration;

use redis::Value;
use serde_json::{Map, Value as Json};

use crate::config::{parse_duration, Config};

/// Default key of the HTTP ingress stream (`HTTP_STREAM`).
pub(crate) const DEFAULT_HTTP_STREAM: &str = "freeswitch:telephony:http-events";
/// Default key of the outbox stream (`OUTBOX_STREAM`).
pub(crate) const DEFAULT_OUTBOX_STREAM: &str = "freeswitch:telephony:outbox-events";

/// How long one `XREAD` blocks: also how soon a signal is noticed.
const BLOCK: Duration = Duration::from_millis(250);
/// Most entries one `XREAD` returns per stream.
const COUNT: usize = 500;
/// Pause before connecting again after Redis failed.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// `eslstream tail`: follow the streams the agent writes, one line per entry.
///
/// Examples: `eslstream tail`, `eslstream tail --call 5f0c...`, `eslstream tail --event
/// CHANNEL_HANGUP --since 10m`, `eslstream tail --stream jobs --json`.
#[derive(Debug, Clone, clap::Args)]
pub struct TailArgs {
    /// Streams to follow: `events` (STREAM_EVENTS), `jobs` (STREAM_JOBS), `http` (HTTP_STREAM),
    /// `outbox` (OUTBOX_STREAM), or a literal key. Repeat or separate with commas.
    #[arg(long = "stream", value_name = "STREAM", value_delimiter = ',', default_values_t = ["events".to_string(), "jobs".to_string()])]
    pub streams: Vec<String>,
    /// Only entries of this call: its `Unique-ID`, `Channel-Call-UUID` or `Job-UUID`.
    #[arg(long, value_name = "UUID")]
    pub call: Option<String>,
    /// Only these events (`CHANNEL_HANGUP,DTMF`; `CUSTOM::sofia::register` for one subclass).
    #[arg(long = "event", value_name = "NAME[,NAME]", value_delimiter = ',')]
    pub events: Vec<String>,
    /// Start with the entries added this recently (`30s`, `5m`, `1h`), by entry id; default:
    /// only entries added from now on.
    #[arg(long, value_name = "DURATION", value_parser = parse_since)]
    pub since: Option<Duration>,
    /// Print each entry as it is stored, as one JSON object per line:
    /// `{"stream":KEY,"id":ID,"fields":{"event":{...},"event_name":...}}`.
    #[arg(long)]
    pub json: bool,
}

fn parse_since(text: &str) -> Result<Duration, String> {
    parse_duration(text).ok_or_else(|| format!("{text:?}: expected a duration such as 30s, 5m or 1h"))
}

/// One followed stream: its key, the name shown on each line, and the last id read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Followed {
    pub key: String,
    pub label: String,
    pub last_id: String,
}

/// The key a `--stream` value stands for: one of the four names, else the value itself.
/// `var` reads a variable (the environment once `.env` is loaded).
pub fn stream_key(name: &str, config: &Config, var: impl Fn(&str) -> Option<String>) -> String {
    let named =
        |variable: &str, default: &str| var(variable).filter(|v| !v.trim().is_empty()).unwrap_or(default.into());
    match name {
        "events" => config.streams.events_key.clone(),
        "jobs" => config.streams.jobs_key.clone(),
        "http" => named("HTTP_STREAM", DEFAULT_HTTP_STREAM),
        "outbox" => named("OUTBOX_STREAM", DEFAULT_OUTBOX_STREAM),
        key => key.to_owned(),
    }
}

/// One stream entry as read: its stream's label and key, id, and fields in stored order.
#[derive(Debug, Clone)]
pub struct Entry {
    pub label: String,
    pub key: String,
    pub id: String,
    pub fields: Vec<(String, String)>,
}

impl Entry {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The `event` field as a JSON object (empty when absent or not an object).
    pub fn headers(&self) -> Map<String, Json> {
        self.field("event").and_then(|text| serde_json::from_str(text).ok()).unwrap_or_default()
    }
}

/// `(milliseconds, sequence)` of an entry id, for ordering and for the time shown.
pub(crate) fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

fn compare_ids(a: &str, b: &str) -> CmpOrdering {
    parse_id(a).cmp(&parse_id(b))
}

/// A header's value as text (`ARRAY::` values, stored as JSON arrays, joined with commas).
fn header(headers: &Map<String, Json>, name: &str) -> Option<String> {
    let text = match headers.get(name)? {
        Json::String(s) => s.clone(),
        Json::Array(items) => {
            items.iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned)).collect::<Vec<_>>().join(",")
        }
        Json::Null => return None,
        other => other.to_string(),
    };
    (!text.is_empty()).then_some(text)
}

/// What `--call` and `--event` keep.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    pub call: Option<String>,
    pub events: Vec<String>,
}

impl Filter {
    pub(crate) fn from_args(args: &TailArgs) -> Filter {
        Filter {
            call: args.call.as_ref().map(|c| c.trim().to_owned()).filter(|c| !c.is_empty()),
            events: args.events.iter().map(|e| e.trim().to_owned()).filter(|e| !e.is_empty()).collect(),
        }
    }

    /// Whether the entry passes: its call is `--call` (by the `unique_id` field, `Unique-ID`,
    /// `Channel-Call-UUID` or `Job-UUID`, any case), and its name is one of `--event` (or
    /// `CUSTOM::<subclass>` is).
    pub(crate) fn keeps(&self, entry: &Entry, headers: &Map<String, Json>) -> bool {
        if let Some(call) = &self.call {
            let ids = [
                entry.field("unique_id").map(str::to_owned),
                header(headers, "Unique-ID"),
                header(headers, "Channel-Call-UUID"),
                header(headers, "Job-UUID"),
            ];
            if !ids.iter().flatten().any(|id| id.eq_ignore_ascii_case(call)) {
                return false;
            }
        }
        if !self.events.is_empty() {
            let name = event_name(entry, headers);
            let custom = header(headers, "Event-Subclass").map(|sub| format!("{name}::{sub}"));
            let matches = |wanted: &String| {
                wanted.eq_ignore_ascii_case(&name) || custom.as_ref().is_some_and(|c| wanted.eq_ignore_ascii_case(c))
            };
            if !self.events.iter().any(matches) {
                return false;
            }
        }
        true
    }
}

fn event_name(entry: &Entry, headers: &Map<String, Json>) -> String {
    entry
        .field("event_name")
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .or_else(|| header(headers, "Event-Name"))
        .unwrap_or_else(|| "-".into())
}

/// The call an entry belongs to: the `unique_id` field, else `Unique-ID`, else `Job-UUID`.
fn call_id(entry: &Entry, headers: &Map<String, Json>) -> String {
    entry
        .field("unique_id")
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .or_else(|| header(headers, "Unique-ID"))
        .or_else(|| header(headers, "Job-UUID"))
        .unwrap_or_else(|| "-".into())
}

/// The few headers that matter for an event, as `(label, value)`, in the order shown.
pub(crate) fn details(name: &str, headers: &Map<String, Json>) -> Vec<(&'static str, String)> {
    let wanted: &[(&'static str, &str)] = match name {
        "DTMF" => &[("digit", "DTMF-Digit")],
        "BACKGROUND_JOB" => &[("job", "Job-Command"), ("arg", "Job-Command-Arg")],
        "CHANNEL_EXECUTE" => &[("app", "Application"), ("data", "Application-Data")],
        "CHANNEL_EXECUTE_COMPLETE" => {
            &[("app", "Application"), ("data", "Application-Data"), ("response", "Application-Response")]
        }
        "CUSTOM" => &[("subclass", "Event-Subclass")],
        "DETECTED_SPEECH" => &[("speech", "Speech-Type")],
        "HEARTBEAT" => &[("sessions", "Session-Count")],
        n if n.contains("HANGUP") => &[
            ("caller", "Caller-Caller-ID-Number"),
            ("caller_name", "Caller-Caller-ID-Name"),
            ("dest", "Caller-Destination-Number"),
            ("cause", "Hangup-Cause"),
        ],
        n if n.starts_with("CHANNEL_") || n == "CALL_UPDATE" => &[
            ("caller", "Caller-Caller-ID-Number"),
            ("caller_name", "Caller-Caller-ID-Name"),
            ("dest", "Caller-Destination-Number"),
        ],
        _ => &[],
    };
    let mut out: Vec<(&'static str, String)> =
        wanted.iter().filter_map(|(label, name)| Some((*label, header(headers, name)?))).collect();
    if name == "BACKGROUND_JOB" {
        // The job's answer is its body: `+OK <uuid>`, `-ERR NO_ANSWER`, ...
        if let Some(first) = header(headers, "_body").and_then(|b| b.lines().next().map(str::trim).map(str::to_owned)) {
            if !first.is_empty() {
                out.push(("result", first));
            }
        }
    }
    out
}

/// `value`, quoted when a reader could not tell where it ends (spaces, quotes, `=`, empty).
fn shown(value: &str) -> String {
    if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c == '"' || c == '=' || c.is_control()) {
        format!("{value:?}")
    } else {
        value.to_owned()
    }
}

/// One readable line: time from the entry id (UTC), stream, event name, call, details.
///
/// `2026-12-01T07:36:48.123Z events CHANNEL_HANGUP 5f0c... caller=1000 caller_name="Alice Smith" dest=5000 cause=NORMAL_CLEARING`
pub(crate) fn format_line(entry: &Entry, headers: &Map<String, Json>) -> String {
    let time = parse_id(&entry.id)
        .map(|(ms, _)| crate::ops::health::report::rfc3339((ms as i64).saturating_mul(1000)))
        .unwrap_or_else(|| entry.id.clone());
    let name = event_name(entry, headers);
    let mut line = format!("{time} {} {name} {}", entry.label, call_id(entry, headers));
    for (label, value) in details(&name, headers) {
        line.push(' ');
        line.push_str(label);
        line.push('=');
        line.push_str(&shown(&value));
    }
    line
}

/// The entry as stored, as one line of JSON: `{"stream":KEY,"id":ID,"fields":{...}}`, fields
/// in stored order; the `event` field is embedded as the JSON it holds, byte for byte (as a
/// string when it is not JSON).
pub(crate) fn format_json(entry: &Entry) -> String {
    let string = |s: &str| serde_json::to_string(s).expect("a string serializes");
    let mut out = format!("{{\"stream\":{},\"id\":{},\"fields\":{{", string(&entry.key), string(&entry.id));
    for (i, (name, value)) in entry.fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&string(name));
        out.push(':');
        let raw_json = name == "event"
            && !value.contains('\n')
            && serde_json::from_str::<&serde_json::value::RawValue>(value).is_ok();
        if raw_json {
            out.push_str(value.trim());
        } else {
            out.push_str(&string(value));
        }
    }
    out.push_str("}}");
    out
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Pairs of a RESP2 flat array or a RESP3 map.
fn pairs(value: &Value) -> Vec<(&Value, &Value)> {
    match value {
        Value::Array(items) => items.chunks(2).filter(|c| c.len() == 2).map(|c| (&c[0], &c[1])).collect(),
        Value::Map(items) => items.iter().map(|(k, v)| (k, v)).collect(),
        _ => Vec::new(),
    }
}

/// Entries of one `[id, [field, value, ...]]` list (an `XRANGE`/`XREAD` stream body).
fn entries_of(list: &Value, label: &str, key: &str) -> Vec<Entry> {
    let Value::Array(items) = list else { return Vec::new() };
    items
        .iter()
        .filter_map(|item| {
            let Value::Array(parts) = item else { return None };
            let id = text(parts.first()?)?;
            let fields = parts
                .get(1)
                .map(|f| pairs(f).into_iter().filter_map(|(n, v)| Some((text(n)?, text(v)?))).collect())
                .unwrap_or_default();
            Some(Entry { label: label.to_owned(), key: key.to_owned(), id, fields })
        })
        .collect()
}

/// The entries of an `XREAD` reply (nil when the block timed out), per followed stream.
fn xread_entries(reply: &Value, streams: &[Followed]) -> Vec<Entry> {
    let mut out = Vec::new();
    let per_stream: Vec<(&Value, &Value)> = match reply {
        Value::Array(items) => items
            .iter()
            .filter_map(|item| match item {
                Value::Array(kv) if kv.len() == 2 => Some((&kv[0], &kv[1])),
                _ => None,
            })
            .collect(),
        Value::Map(items) => items.iter().map(|(k, v)| (k, v)).collect(),
        _ => Vec::new(),
    };
    for (key, list) in per_stream {
        let Some(key) = text(key) else { continue };
        if let Some(s) = streams.iter().find(|s| s.key == key) {
            out.extend(entries_of(list, &s.label, &s.key));
        }
    }
    out
}

fn stopped() -> bool {
    crate::shutdown::stop_requested()
}

/// The primary holding the events stream (in a cluster, every followed stream must share
/// its slot: give them one hash tag).
fn connect(config: &Config) -> redis::RedisResult<redis::Connection> {
    let timeout = config.redis.write_timeout;
    let conn = crate::sink::target::connect_primary_for(&config.redis, &config.streams.events_key, timeout)?;
    conn.set_read_timeout(Some(BLOCK + config.redis.write_timeout))?;
    conn.set_write_timeout(Some(config.redis.write_timeout))?;
    Ok(conn)
}

/// Where each stream starts: after the entries older than `since` (by Redis' clock, as entry
/// ids are), or after its newest entry now.
fn start_ids(
    conn: &mut redis::Connection,
    streams: &mut [Followed],
    since: Option<Duration>,
) -> redis::RedisResult<()> {
    if let Some(since) = since {
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query(conn)?;
        let cutoff_ms = (secs * 1000 + micros / 1000).saturating_sub(since.as_millis() as u64);
        // XREAD returns ids strictly after the one given: the last id before the cut-off.
        let before = if cutoff_ms == 0 { "0-0".to_owned() } else { format!("{}-{}", cutoff_ms - 1, u64::MAX) };
        for s in streams.iter_mut() {
            s.last_id = before.clone();
        }
        return Ok(());
    }
    for s in streams.iter_mut() {
        let newest: Value = redis::cmd("XREVRANGE").arg(&s.key).arg("+").arg("-").arg("COUNT").arg(1).query(conn)?;
        s.last_id = entries_of(&newest, &s.label, &s.key).first().map_or_else(|| "0-0".to_owned(), |e| e.id.clone());
    }
    Ok(())
}

/// Entries read but not printed yet. Several streams are printed as one sequence in entry-id
/// order: a stream whose read stopped at `COUNT` may hold entries older than the newest ones
/// read from the others, so those wait here until every stream has been read past them.
#[derive(Debug, Default)]
struct Merge {
    held: Vec<Entry>,
}

impl Merge {
    /// Adds one read's entries, where `cut` is the lowest last id of the streams whose read
    /// stopped at `COUNT` (`None`: every stream was read to its end); returns the entries that
    /// can be printed now, in order.
    fn take(&mut self, entries: Vec<Entry>, cut: Option<(u64, u64)>) -> Vec<Entry> {
        self.held.extend(entries);
        self.held.sort_by_cached_key(order_key);
        let ready = match cut {
            None => self.held.len(),
            Some(cut) => self.held.partition_point(|e| parse_id(&e.id).is_some_and(|id| id <= cut)),
        };
        self.held.drain(..ready).collect()
    }
}

/// Where an entry goes in the printed sequence: by entry id, and entries of different
/// streams with the same id (one `MULTI` writes a call's events to two streams in the same
/// millisecond, each `<ms>-0`) by their event's sequence number, the switch's own order.
fn order_key(entry: &Entry) -> ((u64, u64), u64) {
    let sequence = entry
        .field("event_sequence")
        .map(str::to_owned)
        .or_else(|| header(&entry.headers(), "Event-Sequence"))
        .and_then(|s| s.parse().ok())
        .unwrap_or(u64::MAX);
    (parse_id(&entry.id).unwrap_or((u64::MAX, u64::MAX)), sequence)
}

/// One blocking `XREAD` of every stream after its last id; the entries that can be printed
/// now, in entry-id order (see [`Merge`]).
fn read_once(
    conn: &mut redis::Connection,
    streams: &mut [Followed],
    merge: &mut Merge,
) -> redis::RedisResult<Vec<Entry>> {
    let mut cmd = redis::cmd("XREAD");
    cmd.arg("COUNT").arg(COUNT).arg("BLOCK").arg(BLOCK.as_millis() as u64).arg("STREAMS");
    for s in streams.iter() {
        cmd.arg(&s.key);
    }
    for s in streams.iter() {
        cmd.arg(&s.last_id);
    }
    let reply: Value = cmd.query(conn)?;
    let entries = xread_entries(&reply, streams);
    let mut cut: Option<(u64, u64)> = None;
    for s in streams.iter_mut() {
        let of_stream = entries.iter().filter(|e| e.key == s.key);
        if let Some(last) = of_stream.clone().map(|e| &e.id).max_by(|a, b| compare_ids(a, b)) {
            s.last_id = last.clone();
            if of_stream.count() >= COUNT {
                let last = parse_id(last).unwrap_or((0, 0));
                cut = Some(cut.map_or(last, |c| c.min(last)));
            }
        }
    }
    Ok(merge.take(entries, cut))
}

/// Sleeps up to `pause`, returning early on a signal.
fn pause(pause: Duration) {
    let step = Duration::from_millis(50);
    let mut waited = Duration::ZERO;
    while waited < pause && !stopped() {
        std::thread::sleep(step);
        waited += step;
    }
}

/// Runs `eslstream tail` with an already loaded configuration; returns the exit code: 0 after
/// SIGINT/SIGTERM or when stdout is closed, 1 when Redis cannot be reached at the start.
pub fn run(args: &TailArgs, config: &Config) -> u8 {
    crate::shutdown::stop_on_signals();
    let var = |name: &str| std::env::var(name).ok();
    let mut streams: Vec<Followed> = Vec::new();
    for name in &args.streams {
        let name = name.trim();
        if name.is_empty() {
            continue;
        }
        let key = stream_key(name, config, var);
        if streams.iter().all(|s| s.key != key) {
            streams.push(Followed { key, label: name.to_owned(), last_id: String::new() });
        }
    }
    if streams.is_empty() {
        eprintln!("eslstream tail: no stream to follow (--stream events|jobs|http|outbox|KEY)");
        return 2;
    }
    let filter = Filter::from_args(args);
    let url = crate::config::mask_url(&config.redis.url);
    let mut conn = match connect(config).and_then(|mut c| start_ids(&mut c, &mut streams, args.since).map(|()| c)) {
        Ok(conn) => conn,
        Err(e) => {
            eprintln!("eslstream tail: cannot read from Redis at {url}: {e}");
            return 1;
        }
    };
    let keys: Vec<&str> = streams.iter().map(|s| s.key.as_str()).collect();
    eprintln!("eslstream tail: following {} on {url} (Ctrl-C to stop)", keys.join(", "));
    let mut out = std::io::stdout().lock();
    let mut failing = false;
    let mut merge = Merge::default();
    while !stopped() {
        let entries = match read_once(&mut conn, &mut streams, &mut merge) {
            Ok(entries) => {
                if failing {
                    eprintln!("eslstream tail: reading again");
                    failing = false;
                }
                entries
            }
            Err(_) if stopped() => break,
            Err(e) => {
                if !failing {
                    eprintln!("eslstream tail: Redis: {e}; trying again every {RETRY_PAUSE:?}");
                    failing = true;
                }
                pause(RETRY_PAUSE);
                if let Ok(c) = connect(config) {
                    conn = c;
                }
                continue;
            }
        };
        for entry in &entries {
            let headers = entry.headers();
            if !filter.keeps(entry, &headers) {
                continue;
            }
            let line = if args.json { format_json(entry) } else { format_line(entry, &headers) };
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                return 0; // stdout closed (`| head`): done
            }
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn entry(fields: &[(&str, &str)]) -> Entry {
        Entry {
            label: "events".into(),
            key: "freeswitch:telephony:events".into(),
            id: "1764574608123-0".into(),
            fields: fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    fn hangup() -> Entry {
        let event = r#"{"Event-Name":"CHANNEL_HANGUP","Unique-ID":"a1","Channel-Call-UUID":"c1","Caller-Caller-ID-Number":"1000","Caller-Caller-ID-Name":"Zoë O'Brien","Caller-Destination-Number":"5000","Hangup-Cause":"NORMAL_CLEARING"}"#;
        entry(&[
            ("event", event),
            ("event_name", "CHANNEL_HANGUP"),
            ("unique_id", "a1"),
            ("core_uuid", "core"),
            ("event_sequence", "7"),
        ])
    }

    #[test]
    fn a_line_has_the_time_of_the_id_the_event_the_call_and_what_matters() {
        let e = hangup();
        assert_eq!(
            format_line(&e, &e.headers()),
            r#"2025-12-01T07:36:48.123Z events CHANNEL_HANGUP a1 caller=1000 caller_name="Zoë O'Brien" dest=5000 cause=NORMAL_CLEARING"#
        );
        let job = entry(&[(
            "event",
            r#"{"Event-Name":"BACKGROUND_JOB","Job-UUID":"j1","Job-Command":"originate","Job-Command-Arg":"user/1000 &park","_body":"-ERR NO_ANSWER\n"}"#,
        )]);
        assert_eq!(
            format_line(&job, &job.headers()),
            r#"2025-12-01T07:36:48.123Z events BACKGROUND_JOB j1 job=originate arg="user/1000 &park" result="-ERR NO_ANSWER""#
        );
        let dtmf =
            entry(&[("event", r##"{"Event-Name":"DTMF","Unique-ID":"a1","DTMF-Digit":"#"}"##), ("event_name", "DTMF")]);
        assert!(format_line(&dtmf, &dtmf.headers()).ends_with("DTMF a1 digit=#"));
        let custom = entry(&[("event", r#"{"Event-Name":"CUSTOM","Event-Subclass":"sofia::register"}"#)]);
        assert!(format_line(&custom, &custom.headers()).ends_with("CUSTOM - subclass=sofia::register"));
    }

    #[test]
    fn filters_match_the_call_by_any_of_its_ids_and_events_by_name_or_subclass() {
        let e = hangup();
        let h = e.headers();
        let keeps = |call: Option<&str>, events: &[&str]| {
            Filter { call: call.map(str::to_owned), events: events.iter().map(|s| s.to_string()).collect() }
                .keeps(&e, &h)
        };
        assert!(keeps(None, &[]));
        assert!(keeps(Some("a1"), &[]) && keeps(Some("A1"), &[]) && keeps(Some("c1"), &[]));
        assert!(!keeps(Some("b2"), &[]));
        assert!(keeps(None, &["DTMF", "channel_hangup"]));
        assert!(!keeps(Some("a1"), &["DTMF"]));
        let custom = entry(&[("event", r#"{"Event-Name":"CUSTOM","Event-Subclass":"sofia::register"}"#)]);
        let ch = custom.headers();
        let only = |names: &[&str]| {
            Filter { call: None, events: names.iter().map(|s| s.to_string()).collect() }.keeps(&custom, &ch)
        };
        assert!(only(&["CUSTOM"]) && only(&["CUSTOM::sofia::register"]) && !only(&["CUSTOM::sofia::expire"]));
    }

    #[test]
    fn json_keeps_the_entry_as_stored() {
        let e = hangup();
        let line = format_json(&e);
        let v: Json = serde_json::from_str(&line).expect("one JSON object");
        assert_eq!(v["stream"], "freeswitch:telephony:events");
        assert_eq!(v["id"], "1764574608123-0");
        assert_eq!(v["fields"]["event"]["Caller-Caller-ID-Name"], "Zoë O'Brien");
        assert_eq!(v["fields"]["event_sequence"], "7");
        assert!(line.contains(&e.fields[0].1), "the event JSON byte for byte: {line}");
        let odd = entry(&[("event", "not json"), ("x", "a\"b")]);
        let v: Json = serde_json::from_str(&format_json(&odd)).unwrap();
        assert_eq!(v["fields"]["event"], "not json");
        assert_eq!(v["fields"]["x"], "a\"b");
    }

    #[test]
    fn stream_names_map_to_the_configured_keys() {
        let config = Config::from_vars(HashMap::from([("STREAM_JOBS".to_string(), "jobs:here".to_string())])).unwrap();
        let none = |_: &str| None;
        assert_eq!(stream_key("events", &config, none), "freeswitch:telephony:events");
        assert_eq!(stream_key("jobs", &config, none), "jobs:here");
        assert_eq!(stream_key("http", &config, none), DEFAULT_HTTP_STREAM);
        assert_eq!(stream_key("outbox", &config, |n: &str| (n == "OUTBOX_STREAM").then(|| "ob".to_string())), "ob");
        assert_eq!(stream_key("my:stream", &config, none), "my:stream");
    }

    fn at(key: &str, id: &str, sequence: &str) -> Entry {
        Entry {
            label: key.into(),
            key: key.into(),
            id: id.into(),
            fields: vec![("event".into(), "{}".into()), ("event_sequence".into(), sequence.into())],
        }
    }

    fn ids(entries: &[Entry]) -> Vec<String> {
        entries.iter().map(|e| format!("{}/{}", e.key, e.id)).collect()
    }

    #[test]
    fn streams_are_merged_in_entry_id_order_and_ties_by_event_sequence() {
        let mut merge = Merge::default();
        // One read: the events stream is listed first, but its entry has the same id as the
        // jobs entry written before it in the same transaction.
        let read = vec![at("events", "10-0", "2"), at("events", "11-0", "3"), at("jobs", "10-0", "1")];
        assert_eq!(ids(&merge.take(read, None)), ["jobs/10-0", "events/10-0", "events/11-0"]);
        // A stream cut at COUNT: entries of other streams after its last id wait for the next
        // read, which brings the cut stream's older ones.
        let read = vec![at("events", "20-0", "5"), at("events", "21-0", "6"), at("jobs", "25-0", "9")];
        assert_eq!(ids(&merge.take(read, Some((21, 0)))), ["events/20-0", "events/21-0"]);
        let read = vec![at("events", "22-0", "7"), at("events", "30-0", "10")];
        assert_eq!(ids(&merge.take(read, None)), ["events/22-0", "jobs/25-0", "events/30-0"]);
        assert!(merge.held.is_empty());
    }

    #[test]
    fn ids_order_by_time_then_sequence() {
        assert_eq!(parse_id("1764574608123-7"), Some((1_764_574_608_123, 7)));
        assert_eq!(parse_id("nope"), None);
        assert_eq!(compare_ids("9-1", "10-0"), CmpOrdering::Less);
        assert_eq!(compare_ids("10-2", "10-10"), CmpOrdering::Less);
    }
}
