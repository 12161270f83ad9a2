//! Encoding of events and frames exactly as FreeSWITCH writes them.
//!
//! Used by `eslstream simulate` and by the tests; the agent itself never encodes ESL. The rules
//! follow FreeSWITCH's `switch_url_encode` and `switch_event_serialize` (see
//! `esl-captures/CAPTURES.md`): header values are percent-encoded, names are not; a body is
//! announced by a final `Content-Length` line and sent raw; an event without a body ends in an
//! extra newline.

use std::io::Write;

/// Bytes FreeSWITCH escapes besides controls and non-ASCII (`SWITCH_URL_UNSAFE`).
const URL_UNSAFE: &[u8] = b"\r\n #%&+:;<=>?@[\\]^`{|}\"";
const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Bytes written as they are: printable ASCII not in [`URL_UNSAFE`].
static URL_SAFE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = b' ';
    while b <= b'~' {
        table[b as usize] = true;
        b += 1;
    }
    let mut i = 0;
    while i < URL_UNSAFE.len() {
        table[URL_UNSAFE[i] as usize] = false;
        i += 1;
    }
    table
};

/// Percent-encodes `value` the way `switch_url_encode` does, appending to `out`.
///
/// Like FreeSWITCH, a `%` already followed by two uppercase hex digits is passed through
/// unencoded, so the encoding is not always reversible (`f%20g` decodes to `f g`).
pub fn url_encode(value: &str, out: &mut Vec<u8>) {
    let bytes = value.as_bytes();
    let is_hex = |b: Option<&u8>| matches!(b, Some(b'0'..=b'9' | b'A'..=b'F'));
    out.reserve(bytes.len());
    // Runs of safe bytes are copied whole (the simulator encodes ~100 MB/s of values this way).
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if URL_SAFE[b as usize] || (b == b'%' && is_hex(bytes.get(i + 1)) && is_hex(bytes.get(i + 2))) {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(&[b'%', HEX_UPPER[(b >> 4) as usize], HEX_UPPER[(b & 15) as usize]]);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// A header value as FreeSWITCH holds it: one string, or an array (`ARRAY::a|:b` on the wire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue<'a> {
    One(&'a str),
    Array(Vec<&'a str>),
}

/// Serializes an event in `text/event-plain` form (the body of the frame), appending to `out`.
///
/// As `switch_event_serialize`: a value that encodes to nothing is written `_undef_` (FreeSWITCH
/// itself never holds an empty value: adding one deletes the header), and an empty body is
/// written like no body at all (no `Content-Length` line).
pub fn encode_plain(headers: &[(&str, HeaderValue<'_>)], body: Option<&[u8]>, out: &mut Vec<u8>) {
    let mut joined = String::new();
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        let value_start = out.len();
        match value {
            HeaderValue::One(v) => url_encode(v, out),
            HeaderValue::Array(items) => {
                joined.clear();
                joined.push_str("ARRAY::");
                joined.push_str(&items.join("|:"));
                url_encode(&joined, out);
            }
        }
        if out.len() == value_start {
            out.extend_from_slice(b"_undef_");
        }
        out.push(b'\n');
    }
    match body {
        Some(body) if !body.is_empty() => {
            let _ = write!(out, "Content-Length: {}\n\n", body.len());
            out.extend_from_slice(body);
        }
        _ => out.push(b'\n'),
    }
}

/// Serializes an event in `text/event-json` form, appending to `out`, as
/// `switch_event_serialize_json` does: one object with the headers in order (a name that occurs
/// twice is written twice), values as strings (arrays as arrays), and with a body a
/// `Content-Length` key then `_body`.
pub fn encode_json(headers: &[(&str, HeaderValue<'_>)], body: Option<&str>, out: &mut Vec<u8>) {
    fn string(s: &str, out: &mut Vec<u8>) {
        serde_json::to_writer(&mut *out, s).expect("writing JSON to a Vec cannot fail");
    }
    out.push(b'{');
    let mut first = true;
    let mut key = |name: &str, out: &mut Vec<u8>| {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        string(name, out);
        out.push(b':');
    };
    for (name, value) in headers {
        key(name, out);
        match value {
            HeaderValue::One(v) => string(v, out),
            HeaderValue::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    string(item, out);
                }
                out.push(b']');
            }
        }
    }
    if let Some(body) = body {
        key("Content-Length", out);
        string(&body.len().to_string(), out);
        key("_body", out);
        string(body, out);
    }
    out.push(b'}');
}

/// Wraps an event body in its outer frame, as FreeSWITCH sends events:
/// `Content-Length` first, then `Content-Type`.
pub fn event_frame(content_type: &str, body: &[u8], out: &mut Vec<u8>) {
    let _ = write!(out, "Content-Length: {}\nContent-Type: {}\n\n", body.len(), content_type);
    out.extend_from_slice(body);
}

/// `Content-Type: auth/request`, the first frame of every inbound connection.
pub fn auth_request(out: &mut Vec<u8>) {
    out.extend_from_slice(b"Content-Type: auth/request\n\n");
}

/// A `command/reply` frame with `Reply-Text` and any extra headers.
pub fn command_reply(reply_text: &str, extra: &[(&str, &str)], out: &mut Vec<u8>) {
    let _ = write!(out, "Content-Type: command/reply\nReply-Text: {reply_text}\n");
    for (name, value) in extra {
        let _ = writeln!(out, "{name}: {value}");
    }
    out.push(b'\n');
}

/// An `api/response` frame (`Content-Type` first, as FreeSWITCH sends it).
pub fn api_response(body: &[u8], out: &mut Vec<u8>) {
    let _ = write!(out, "Content-Type: api/response\nContent-Length: {}\n\n", body.len());
    out.extend_from_slice(body);
}

/// The `text/disconnect-notice` FreeSWITCH sends after `exit`.
pub fn disconnect_notice(out: &mut Vec<u8>) {
    let body = b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n";
    let _ = write!(out, "Content-Type: text/disconnect-notice\nContent-Length: {}\n\n", body.len());
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(s: &str) -> String {
        let mut out = Vec::new();
        url_encode(s, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn url_encode_matches_the_capture() {
        // Values copied from plain.esl (see CAPTURES.md).
        assert_eq!(enc("Mon, 23 Nov 2026 00:39:39 GMT"), "Mon,%2023%20Nov%202026%2000%3A39%3A39%20GMT");
        assert_eq!(enc("Zoë O'Brien & co: 100%"), "Zo%C3%AB%20O'Brien%20%26%20co%3A%20100%25");
        assert_eq!(enc("a\tb"), "a%09b");
        assert_eq!(enc("a=b&c=d e+f/g"), "a%3Db%26c%3Dd%20e%2Bf/g");
        assert_eq!(enc("a;b c=d&e f%20g/ü€😀"), "a%3Bb%20c%3Dd%26e%20f%20g/%C3%BC%E2%82%AC%F0%9F%98%80");
    }

    #[test]
    fn url_encode_is_switch_url_encode_for_every_byte() {
        // The rule as switch_url_encode states it, byte by byte.
        let reference = |bytes: &[u8]| {
            let is_hex = |b: Option<&u8>| matches!(b, Some(b'0'..=b'9' | b'A'..=b'F'));
            let mut out = Vec::new();
            for (i, &b) in bytes.iter().enumerate() {
                let passthrough = b == b'%' && is_hex(bytes.get(i + 1)) && is_hex(bytes.get(i + 2));
                if !passthrough && (!(b' '..=b'~').contains(&b) || URL_UNSAFE.contains(&b)) {
                    out.extend_from_slice(format!("%{b:02X}").as_bytes());
                } else {
                    out.push(b);
                }
            }
            out
        };
        for b in 0..128u8 {
            for text in [format!("{}", b as char), format!("ab{}cd%4", b as char), format!("%{}F x", b as char)] {
                let mut out = Vec::new();
                url_encode(&text, &mut out);
                assert_eq!(out, reference(text.as_bytes()), "{text:?}");
            }
        }
        assert_eq!(enc("ü%41%4g%"), "%C3%BC%41%254g%25");
    }

    #[test]
    fn plain_event_without_body_ends_in_blank_line() {
        let mut out = Vec::new();
        encode_plain(&[("Event-Name", HeaderValue::One("HEARTBEAT"))], None, &mut out);
        assert_eq!(out, b"Event-Name: HEARTBEAT\n\n");
    }

    #[test]
    fn empty_values_and_bodies_as_switch_event_serialize() {
        let mut out = Vec::new();
        encode_plain(&[("A", HeaderValue::One(""))], Some(b""), &mut out);
        assert_eq!(out, b"A: _undef_\n\n");
    }

    #[test]
    fn json_keeps_order_and_duplicate_names() {
        let mut out = Vec::new();
        let headers = [("Z", HeaderValue::One("1")), ("Content-Length", HeaderValue::One("2"))];
        encode_json(&headers, Some("hi"), &mut out);
        assert_eq!(out, br#"{"Z":"1","Content-Length":"2","Content-Length":"2","_body":"hi"}"#);
    }

    #[test]
    fn plain_event_with_body_announces_its_length() {
        let mut out = Vec::new();
        encode_plain(&[("Event-Name", HeaderValue::Array(vec!["a", "b"]))], Some(b"+OK\n\nx"), &mut out);
        assert_eq!(out, b"Event-Name: ARRAY%3A%3Aa%7C%3Ab\nContent-Length: 6\n\n+OK\n\nx");
    }
}
