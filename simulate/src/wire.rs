//! The simulator's event model and its encoding to the wire.
//!
//! An event is a list of [`Item`]s: single headers, or [`Block`]s of headers that many events of
//! a call share (a leg's identity, caller profile, variables). A block is percent-encoded once
//! when it is built, so encoding an event is mostly copying pre-encoded bytes. All escaping goes
//! through [`eslstream::esl::encode`], the FreeSWITCH-exact encoder.

use std::cell::OnceCell;
use std::io::Write;
use std::rc::Rc;

use eslstream::esl::encode;

/// The wire format a listener asked for with `event plain|json ...`: the agent's own.
pub use eslstream::esl::event::EventFormat as Format;

/// A header value.
#[derive(Debug, Clone)]
pub enum Val {
    Static(&'static str),
    Owned(String),
    Num(u64),
    /// A multi-value header: `ARRAY::a|:b` in plain, a JSON array in json.
    Array(Vec<String>),
}

/// A run of headers encoded once and shared by many events.
#[derive(Debug)]
pub struct Block {
    pairs: Vec<(&'static str, String)>,
    plain: Vec<u8>,
    json: OnceCell<Vec<u8>>,
}

impl Block {
    pub fn new(pairs: Vec<(&'static str, String)>) -> Rc<Block> {
        let mut plain = Vec::with_capacity(pairs.len() * 40);
        for (name, value) in &pairs {
            plain_header(name, value, &mut plain);
        }
        Rc::new(Block { pairs, plain, json: OnceCell::new() })
    }

    /// `"name":"value"` pairs joined by commas (no braces).
    fn json(&self) -> &[u8] {
        self.json.get_or_init(|| {
            let mut out = Vec::with_capacity(self.plain.len() + self.pairs.len() * 4);
            for (i, (name, value)) in self.pairs.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json_pair(name, value, &mut out);
            }
            out
        })
    }
}

/// One element of an event's header list.
#[derive(Debug, Clone)]
pub enum Item {
    H(&'static str, Val),
    Block(Rc<Block>),
}

/// Where FreeSWITCH says an event was fired from (`Event-Calling-*`).
pub type Calling = (&'static str, &'static str, u32);

/// One event as the generator produced it, before it is encoded for a listener.
#[derive(Debug, Clone)]
pub struct SimEvent {
    /// `Event-Name`, also the key of the per-name counters.
    pub name: &'static str,
    /// `Event-Subclass` of a CUSTOM event (sent first, before `Event-Name`, as FreeSWITCH does).
    pub subclass: Option<&'static str>,
    pub calling: Calling,
    pub sequence: u64,
    pub items: Vec<Item>,
    pub body: Option<String>,
    /// Counts toward `events`/`calls` limits (false for bgapi jobs the clients asked for).
    pub traffic: bool,
}

/// The switch identity shared by every event of a simulator process.
#[derive(Debug, Clone)]
pub struct Identity {
    pub core_uuid: String,
    pub hostname: String,
}

/// Encodes [`SimEvent`]s into complete `text/event-plain` or `text/event-json` frames.
pub struct Encoder {
    host_plain: Vec<u8>,
    host_json: Vec<u8>,
    dates: DateCache,
    body: Vec<u8>,
}

impl Encoder {
    pub fn new(identity: &Identity) -> Encoder {
        let host = [
            ("Core-UUID", identity.core_uuid.as_str()),
            ("FreeSWITCH-Hostname", identity.hostname.as_str()),
            ("FreeSWITCH-Switchname", identity.hostname.as_str()),
            ("FreeSWITCH-IPv4", "192.0.2.2"),
            ("FreeSWITCH-IPv6", "fd00::2"),
        ];
        let mut host_plain = Vec::new();
        let mut host_json = Vec::new();
        for (name, value) in host {
            plain_header(name, value, &mut host_plain);
            host_json.push(b',');
            json_pair(name, value, &mut host_json);
        }
        Encoder { host_plain, host_json, dates: DateCache::default(), body: Vec::with_capacity(16 << 10) }
    }

    /// Appends the whole frame of `event` in `format` to `out`, stamped with `now_us`.
    pub fn frame(&mut self, event: &SimEvent, format: Format, now_us: i64, out: &mut Vec<u8>) {
        self.dates.update(now_us);
        let mut body = std::mem::take(&mut self.body);
        body.clear();
        let content_type = match format {
            Format::Plain => {
                self.plain_body(event, now_us, &mut body);
                "text/event-plain"
            }
            Format::Json => {
                self.json_body(event, now_us, &mut body);
                "text/event-json"
            }
        };
        encode::event_frame(content_type, &body, out);
        self.body = body;
    }

    fn plain_body(&self, ev: &SimEvent, now_us: i64, out: &mut Vec<u8>) {
        if let Some(sub) = ev.subclass {
            plain_header("Event-Subclass", sub, out);
        }
        plain_header("Event-Name", ev.name, out);
        out.extend_from_slice(&self.host_plain);
        out.extend_from_slice(b"Event-Date-Local: ");
        out.extend_from_slice(&self.dates.local_plain);
        out.extend_from_slice(b"\nEvent-Date-GMT: ");
        out.extend_from_slice(&self.dates.gmt_plain);
        let _ = write!(
            out,
            "\nEvent-Date-Timestamp: {now_us}\nEvent-Calling-File: {}\nEvent-Calling-Function: {}\n\
             Event-Calling-Line-Number: {}\nEvent-Sequence: {}\n",
            ev.calling.0, ev.calling.1, ev.calling.2, ev.sequence
        );
        for item in &ev.items {
            match item {
                Item::Block(block) => out.extend_from_slice(&block.plain),
                Item::H(name, value) => plain_val(name, value, out),
            }
        }
        match &ev.body {
            Some(body) => {
                let _ = write!(out, "Content-Length: {}\n\n", body.len());
                out.extend_from_slice(body.as_bytes());
            }
            None => out.push(b'\n'),
        }
    }

    fn json_body(&self, ev: &SimEvent, now_us: i64, out: &mut Vec<u8>) {
        out.push(b'{');
        if let Some(sub) = ev.subclass {
            json_pair("Event-Subclass", sub, out);
            out.push(b',');
        }
        json_pair("Event-Name", ev.name, out);
        out.extend_from_slice(&self.host_json);
        out.extend_from_slice(b",\"Event-Date-Local\":");
        json_str(&self.dates.local, out);
        out.extend_from_slice(b",\"Event-Date-GMT\":");
        json_str(&self.dates.gmt, out);
        let _ = write!(
            out,
            ",\"Event-Date-Timestamp\":\"{now_us}\",\"Event-Calling-File\":\"{}\",\
             \"Event-Calling-Function\":\"{}\",\"Event-Calling-Line-Number\":\"{}\",\"Event-Sequence\":\"{}\"",
            ev.calling.0, ev.calling.1, ev.calling.2, ev.sequence
        );
        for item in &ev.items {
            match item {
                Item::Block(block) if block.pairs.is_empty() => {}
                Item::Block(block) => {
                    out.push(b',');
                    out.extend_from_slice(block.json());
                }
                Item::H(name, value) => {
                    out.push(b',');
                    json_val(name, value, out);
                }
            }
        }
        if let Some(body) = &ev.body {
            let _ = write!(out, ",\"Content-Length\":\"{}\",\"_body\":", body.len());
            json_str(body, out);
        }
        out.push(b'}');
    }
}

fn plain_header(name: &str, value: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    encode::url_encode(value, out);
    out.push(b'\n');
}

fn plain_val(name: &str, value: &Val, out: &mut Vec<u8>) {
    match value {
        Val::Static(v) => plain_header(name, v, out),
        Val::Owned(v) => plain_header(name, v, out),
        Val::Num(n) => {
            let _ = writeln!(out, "{name}: {n}");
        }
        Val::Array(items) => plain_header(name, &format!("ARRAY::{}", items.join("|:")), out),
    }
}

fn json_str(value: &str, out: &mut Vec<u8>) {
    // Writing a string to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

fn json_pair(name: &str, value: &str, out: &mut Vec<u8>) {
    json_str(name, out);
    out.push(b':');
    json_str(value, out);
}

fn json_val(name: &str, value: &Val, out: &mut Vec<u8>) {
    match value {
        Val::Static(v) => json_pair(name, v, out),
        Val::Owned(v) => json_pair(name, v, out),
        Val::Num(n) => {
            json_str(name, out);
            let _ = write!(out, ":\"{n}\"");
        }
        Val::Array(items) => {
            json_str(name, out);
            out.extend_from_slice(b":[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json_str(item, out);
            }
            out.push(b']');
        }
    }
}

/// `Event-Date-Local` and `Event-Date-GMT`, recomputed once per second.
#[derive(Default)]
struct DateCache {
    second: i64,
    local: String,
    gmt: String,
    local_plain: Vec<u8>,
    gmt_plain: Vec<u8>,
}

impl DateCache {
    fn update(&mut self, now_us: i64) {
        let second = now_us.div_euclid(1_000_000);
        if second == self.second && !self.local.is_empty() {
            return;
        }
        self.second = second;
        let (local, gmt) = format_dates(second);
        self.local_plain.clear();
        encode::url_encode(&local, &mut self.local_plain);
        self.gmt_plain.clear();
        encode::url_encode(&gmt, &mut self.gmt_plain);
        self.local = local;
        self.gmt = gmt;
    }
}

/// `("2026-11-23 00:47:44", "Mon, 23 Nov 2026 00:47:44 GMT")` for a Unix time (local = UTC).
pub fn format_dates(unix_seconds: i64) -> (String, String) {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let days = unix_seconds.div_euclid(86_400);
    let secs = unix_seconds.rem_euclid(86_400);
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let (year, month, day) = eslstream::civil::civil_from_days(days);
    let local = format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02}");
    let weekday = DAYS[days.rem_euclid(7) as usize];
    let gmt = format!("{weekday}, {day:02} {} {year:04} {h:02}:{m:02}:{s:02} GMT", MONTHS[(month - 1) as usize]);
    (local, gmt)
}

/// A small, fast, seedable generator (SplitMix64): plenty for traffic shapes and UUIDs.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// A generator seeded from process-level entropy (hasher keys, clock, pid).
    pub fn from_entropy() -> Rng {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0),
        );
        hasher.write_u32(std::process::id());
        Rng::new(hasher.finish())
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo).max(1))
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// A random (version 4) UUID in its usual text form.
    pub fn uuid_v4(&mut self) -> String {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        b[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        b[6] = (b[6] & 0x0F) | 0x40;
        b[8] = (b[8] & 0x3F) | 0x80;
        let mut s = String::with_capacity(36);
        for (i, byte) in b.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                s.push('-');
            }
            s.push_str(&format!("{byte:02x}"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_match_the_capture_format() {
        // Event-Date-Timestamp 1795394864815714 in plain.esl reads 2026-11-23 00:47:44.
        let (local, gmt) = format_dates(1_795_394_864);
        assert_eq!(local, "2026-11-23 00:47:44");
        assert_eq!(gmt, "Mon, 23 Nov 2026 00:47:44 GMT");
        assert_eq!(format_dates(0).1, "Thu, 01 Jan 1970 00:00:00 GMT");
    }

    #[test]
    fn uuids_are_version_4() {
        let mut rng = Rng::new(1);
        let u = rng.uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(u, rng.uuid_v4());
    }

    #[test]
    fn json_body_holds_headers_as_strings_arrays_and_body() {
        let identity = Identity { core_uuid: "c0re".into(), hostname: "h".into() };
        let enc = Encoder::new(&identity);
        let block = Block::new(vec![("Caller-Caller-ID-Name", "Zoë & co: 100%".into())]);
        let ev = SimEvent {
            name: "BACKGROUND_JOB",
            subclass: None,
            calling: ("mod_event_socket.c", "api_exec", 1569),
            sequence: 7,
            items: vec![Item::Block(block), Item::H("X-Arr", Val::Array(vec!["a".into(), "b c".into()]))],
            body: Some("+OK\n".into()),
            traffic: true,
        };
        let mut ours = Vec::new();
        enc.json_body(&ev, 5, &mut ours);
        let ours: serde_json::Value = serde_json::from_slice(&ours).unwrap();
        assert_eq!(ours["Caller-Caller-ID-Name"], "Zoë & co: 100%");
        assert_eq!(ours["X-Arr"], serde_json::json!(["a", "b c"]));
        assert_eq!(ours["_body"], "+OK\n");
        assert_eq!(ours["Content-Length"], "4");
        assert_eq!(ours["Event-Sequence"], "7");
        assert_eq!(ours["Event-Date-Timestamp"], "5");
    }
}
