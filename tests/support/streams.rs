//! Reading a stream back and checking the guarantees: exactly once, per-call order.

use std::collections::{HashMap, HashSet};

use redis::Value;

/// One stream entry, with the contract's index fields.
#[derive(Debug, Clone)]
pub struct StreamEntry {
    pub id: String,
    pub event: String,
    pub event_name: String,
    pub unique_id: String,
    pub core_uuid: String,
    pub sequence: u64,
}

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        other => format!("{other:?}"),
    }
}

/// Every entry of `key`, oldest first.
pub fn read_stream(conn: &mut redis::Connection, key: &str) -> Vec<StreamEntry> {
    let mut out = Vec::new();
    let mut start = "-".to_string();
    loop {
        let reply: Value =
            redis::cmd("XRANGE").arg(key).arg(&start).arg("+").arg("COUNT").arg(5000).query(conn).unwrap();
        let Value::Array(items) = reply else { panic!("XRANGE reply {reply:?}") };
        if items.is_empty() {
            break;
        }
        let n = items.len();
        for item in items {
            let Value::Array(parts) = item else { panic!("entry") };
            let id = text(&parts[0]);
            let Value::Array(fields) = &parts[1] else { panic!("fields") };
            let mut map = HashMap::new();
            for pair in fields.chunks(2) {
                map.insert(text(&pair[0]), text(&pair[1]));
            }
            let field = |name: &str| map.get(name).cloned().unwrap_or_default();
            out.push(StreamEntry {
                id: id.clone(),
                event: field("event"),
                event_name: field("event_name"),
                unique_id: field("unique_id"),
                core_uuid: field("core_uuid"),
                sequence: field("event_sequence").parse().unwrap_or(0),
            });
            start = format!("({id}");
        }
        if n < 5000 {
            break;
        }
    }
    out
}

/// Entries in a stream, by XLEN.
pub fn xlen(conn: &mut redis::Connection, key: &str) -> u64 {
    redis::cmd("XLEN").arg(key).query(conn).unwrap_or(0)
}

/// Asserts exactly `expected` entries, no `(core_uuid, event_sequence)` twice, and for every
/// call (and for the key-less events as one group) sequences rising in stream order, which is
/// the order the simulator sent them in.
pub fn assert_exactly_once_in_order(entries: &[StreamEntry], expected: u64) {
    assert_exactly_once(entries, expected);
    let mut last: HashMap<&str, u64> = HashMap::new();
    for e in entries {
        if let Some(prev) = last.insert(&e.unique_id, e.sequence) {
            assert!(prev < e.sequence, "call {:?}: sequence {} written after {}", e.unique_id, e.sequence, prev);
        }
    }
}

/// Asserts that each call's entries appear in the order they were sent, given as
/// `(call, sequence)` pairs in send order (a real switch may send out of sequence).
pub fn assert_call_order_as_sent(entries: &[StreamEntry], sent: &[(String, u64)]) {
    let mut expected: HashMap<&str, Vec<u64>> = HashMap::new();
    for (call, seq) in sent {
        expected.entry(call).or_default().push(*seq);
    }
    let mut got: HashMap<&str, Vec<u64>> = HashMap::new();
    for e in entries {
        got.entry(&e.unique_id).or_default().push(e.sequence);
    }
    for (call, seqs) in &got {
        let want: Vec<u64> =
            expected.get(call).map(|v| v.iter().copied().filter(|s| seqs.contains(s)).collect()).unwrap_or_default();
        assert_eq!(seqs, &want, "call {call:?}: stream order differs from send order");
    }
}

/// Asserts exactly `expected` entries and no `(core_uuid, event_sequence)` twice.
pub fn assert_exactly_once(entries: &[StreamEntry], expected: u64) {
    let mut seen = HashSet::new();
    let mut dups = Vec::new();
    for e in entries {
        if !seen.insert((e.core_uuid.clone(), e.sequence)) {
            dups.push((e.core_uuid.clone(), e.sequence));
        }
    }
    assert!(dups.is_empty(), "{} duplicate entries, first {:?}", dups.len(), &dups[..dups.len().min(5)]);
    assert_eq!(entries.len() as u64, expected, "entries in Redis; {}", missing_sequences(entries));
}

/// The gaps in each switch's event sequences (the simulator numbers every event it sends),
/// so that a count short of what was sent says which events are missing.
pub fn missing_sequences(entries: &[StreamEntry]) -> String {
    let mut by_core: HashMap<&str, Vec<u64>> = HashMap::new();
    for e in entries {
        by_core.entry(&e.core_uuid).or_default().push(e.sequence);
    }
    let mut out = Vec::new();
    for (core, mut seqs) in by_core {
        seqs.sort_unstable();
        let gaps: Vec<String> = seqs
            .windows(2)
            .filter(|w| w[1] > w[0] + 1)
            .map(|w| format!("{}..={} ({})", w[0] + 1, w[1] - 1, w[1] - w[0] - 1))
            .collect();
        let (first, last) = (seqs.first().copied().unwrap_or(0), seqs.last().copied().unwrap_or(0));
        out.push(format!(
            "switch {core}: sequences {first}..={last}, missing {}",
            if gaps.is_empty() { "none".to_owned() } else { gaps.join(", ") }
        ));
    }
    out.join("; ")
}
