//! What a `POST /events` body holds: one JSON object, an array of objects, or NDJSON (one
//! object per line). Each event keeps its exact text, made compact (whitespace outside strings
//! removed), as the entry's `event` field; its top-level fields are parsed for validation and
//! for the name, ordering and id fields. A request is all or nothing: the first bad event
//! names its index and the problem.

use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// One event of a request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BodyEvent {
    /// The object as sent, compact: the `event` field.
    pub compact: Vec<u8>,
    pub fields: Map<String, Value>,
}

/// How the events were sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyKind {
    /// `application/json`.
    Json,
    /// `application/x-ndjson`.
    NdJson,
}

impl BodyKind {
    /// The kind a `Content-Type` names (parameters such as `charset` ignored).
    pub(crate) fn from_content_type(value: &str) -> Option<BodyKind> {
        match value.split(';').next().unwrap_or("").trim().to_ascii_lowercase().as_str() {
            "application/json" => Some(BodyKind::Json),
            "application/x-ndjson" | "application/ndjson" | "application/jsonl" => Some(BodyKind::NdJson),
            _ => None,
        }
    }
}

/// Why a body was refused: which event (when one is to blame) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BodyError {
    pub index: Option<usize>,
    pub message: String,
}

impl BodyError {
    fn at(index: usize, message: impl Into<String>) -> BodyError {
        BodyError { index: Some(index), message: message.into() }
    }

    fn whole(message: impl Into<String>) -> BodyError {
        BodyError { index: None, message: message.into() }
    }
}

/// The events of a body, in order; `batch` is whether the request was a batch (an array or
/// NDJSON), which decides how an `Idempotency-Key` header is applied.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Parsed {
    pub events: Vec<BodyEvent>,
    pub batch: bool,
}

/// Parses a body of `kind`; at most `max_events` events, each with every `required` field
/// present and non-empty.
pub(crate) fn parse(kind: BodyKind, body: &[u8], max_events: usize, required: &[String]) -> Result<Parsed, BodyError> {
    let (raws, batch) = match kind {
        BodyKind::Json => match body.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'[') => {
                let items: Vec<&RawValue> =
                    serde_json::from_slice(body).map_err(|e| BodyError::whole(format!("not a JSON array: {e}")))?;
                (items.into_iter().map(|r| r.get().as_bytes()).collect::<Vec<_>>(), true)
            }
            Some(b'{') => {
                let one: &RawValue =
                    serde_json::from_slice(body).map_err(|e| BodyError::whole(format!("not a JSON object: {e}")))?;
                (vec![one.get().as_bytes()], false)
            }
            Some(_) => return Err(BodyError::whole("the body must be a JSON object or an array of objects")),
            None => return Err(BodyError::whole("the body is empty")),
        },
        BodyKind::NdJson => {
            let lines: Vec<&[u8]> = body
                .split(|b| *b == b'\n')
                .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
                .filter(|l| l.iter().any(|b| !b.is_ascii_whitespace()))
                .collect();
            if lines.is_empty() {
                return Err(BodyError::whole("the body has no events"));
            }
            (lines, true)
        }
    };
    if raws.is_empty() {
        return Err(BodyError::whole("the batch is empty"));
    }
    if raws.len() > max_events {
        return Err(BodyError::whole(format!(
            "{} events in one request; HTTP_INGRESS_MAX_BATCH is {max_events}",
            raws.len()
        )));
    }
    let mut events = Vec::with_capacity(raws.len());
    for (index, raw) in raws.into_iter().enumerate() {
        let value: Value =
            serde_json::from_slice(raw).map_err(|e| BodyError::at(index, format!("not valid JSON: {e}")))?;
        let Value::Object(fields) = value else {
            return Err(BodyError::at(index, "an event must be a JSON object"));
        };
        for name in required {
            if !fields.get(name).is_some_and(non_empty) {
                return Err(BodyError::at(index, format!("required field {name:?} is missing or empty")));
            }
        }
        events.push(BodyEvent { compact: compact(raw), fields });
    }
    Ok(Parsed { events, batch })
}

fn non_empty(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::String(s) => !s.trim().is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    }
}

/// Refuses an event whose field of `names` (those the agent reads: its name, ordering key
/// and id) holds an object or an array: it could name nothing, and an id silently ignored
/// would let a retry write the event twice. `null` counts as absent.
pub(crate) fn check_scalars(events: &[BodyEvent], names: &[&str]) -> Result<(), BodyError> {
    for (index, event) in events.iter().enumerate() {
        for name in names {
            let kind = match event.fields.get(*name) {
                Some(Value::Object(_)) => "an object",
                Some(Value::Array(_)) => "an array",
                _ => continue,
            };
            return Err(BodyError::at(
                index,
                format!("field {name:?} must be a string, a number or a boolean, not {kind}"),
            ));
        }
    }
    Ok(())
}

/// A field as text, when it is a string, a number or a boolean.
pub(crate) fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Valid JSON with the whitespace outside strings removed.
fn compact(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for &b in json {
        if in_string {
            out.push(b);
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            in_string = b == b'"';
            out.push(b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(kind: BodyKind, body: &str) -> Parsed {
        parse(kind, body.as_bytes(), 10, &[]).unwrap()
    }

    #[test]
    fn one_object_an_array_and_ndjson() {
        let one = ok(BodyKind::Json, " { \"a\" : 1 , \"s\" : \"x  y\\\" z\" } ");
        assert!(!one.batch);
        assert_eq!(String::from_utf8(one.events[0].compact.clone()).unwrap(), r#"{"a":1,"s":"x  y\" z"}"#);
        let many = ok(BodyKind::Json, r#"[{"a":1}, {"b":[1, 2]}]"#);
        assert!(many.batch);
        assert_eq!(many.events[1].compact, br#"{"b":[1,2]}"#);
        let nd = ok(BodyKind::NdJson, "{\"a\":1}\r\n\n  \n{\"a\":2}");
        assert_eq!(nd.events.len(), 2);
        assert_eq!(nd.events[1].fields["a"], 2);
    }

    #[test]
    fn bad_events_name_their_index() {
        let e = parse(BodyKind::Json, br#"[{"a":1}, 3]"#, 10, &[]).unwrap_err();
        assert_eq!(e.index, Some(1));
        let e = parse(BodyKind::NdJson, b"{\"a\":1}\n{\"a\":", 10, &[]).unwrap_err();
        assert_eq!(e.index, Some(1));
        let required = vec!["call_id".to_owned()];
        let named = ["event_type", "call_id", "event_id"];
        let ok = parse(BodyKind::Json, br#"[{"call_id":"c","event_id":7,"event_type":null}]"#, 10, &[]).unwrap();
        assert!(check_scalars(&ok.events, &named).is_ok());
        let bad = parse(BodyKind::Json, br#"[{"call_id":"c"},{"event_id":{"a":1}}]"#, 10, &[]).unwrap();
        let e = check_scalars(&bad.events, &named).unwrap_err();
        assert_eq!(
            (e.index, e.message.as_str()),
            (Some(1), r#"field "event_id" must be a string, a number or a boolean, not an object"#)
        );
        let e = parse(BodyKind::Json, br#"[{"call_id":"c"},{"call_id":""}]"#, 10, &required).unwrap_err();
        assert_eq!((e.index, e.message.contains("call_id")), (Some(1), true));
        assert!(parse(BodyKind::Json, b"[]", 10, &[]).is_err());
        assert!(parse(BodyKind::Json, b"\"x\"", 10, &[]).is_err());
        assert!(parse(BodyKind::Json, br#"[{},{},{}]"#, 2, &[]).unwrap_err().message.contains("MAX_BATCH"));
        assert_eq!(BodyKind::from_content_type("application/json; charset=utf-8"), Some(BodyKind::Json));
        assert_eq!(BodyKind::from_content_type("text/plain"), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        /// Garbage never panics, and anything accepted is compact JSON equal to what was sent.
        #[test]
        fn garbage_is_refused_or_kept_exactly(body in proptest::collection::vec(any::<u8>(), 0..300), nd in any::<bool>()) {
            let kind = if nd { BodyKind::NdJson } else { BodyKind::Json };
            if let Ok(parsed) = parse(kind, &body, 50, &[]) {
                for e in parsed.events {
                    let back: Value = serde_json::from_slice(&e.compact).expect("compact is valid JSON");
                    prop_assert_eq!(back, Value::Object(e.fields));
                }
            }
        }

        /// Real-looking objects with whitespace everywhere come out compact and equal.
        #[test]
        fn objects_round_trip(keys in proptest::collection::vec("[a-z \"\\\\]{0,6}", 1..6), ws in "[ \t\r\n]{0,3}") {
            let mut map = Map::new();
            for (i, k) in keys.iter().enumerate() {
                map.insert(k.clone(), Value::String(format!("{k} {i}")));
            }
            let pretty = serde_json::to_string_pretty(&Value::Object(map.clone())).unwrap().replace('\n', &format!("\n{ws}"));
            let parsed = parse(BodyKind::Json, pretty.as_bytes(), 10, &[]).unwrap();
            prop_assert_eq!(&parsed.events[0].fields, &map);
            prop_assert!(!parsed.events[0].compact.contains(&b'\n'));
            let back: Value = serde_json::from_slice(&parsed.events[0].compact).unwrap();
            prop_assert_eq!(back, Value::Object(map));
        }
    }
}
