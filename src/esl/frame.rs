//! ESL framing: header blocks ended by a blank line, then `Content-Length` bytes of body.
//!
//! This module owns the outer frame of the event socket only: it cuts the byte stream into
//! [`Frame`]s (a header block plus an optional body) and knows nothing about what an event body
//! means (that is [`crate::esl::event`]). The rules, as FreeSWITCH sends them (see
//! `esl-captures/CAPTURES.md`):
//!
//! * a header block is `Name: value\n` lines ended by an empty line (`\r\n` is tolerated);
//!   outer header values are not percent-encoded and are kept exactly (`User-Data: ` has an
//!   empty value);
//! * when the block has a `Content-Length` header, exactly that many body bytes follow and the
//!   next frame starts right after them;
//! * stray blank lines between frames are skipped.
//!
//! [`FrameDecoder`] is incremental: it remembers how far it has scanned and, once a header block
//! is parsed, how long the body is, so a large body arriving in small pieces is not rescanned.
//! It never allocates in proportion to a claimed `Content-Length` (it reserves at most
//! [`MAX_RESERVE`] ahead) and refuses header blocks and bodies beyond fixed limits.

use bytes::{Buf, Bytes, BytesMut};
use nom::bytes::complete::take_till;
use nom::character::complete::char;
use nom::combinator::opt;
use nom::{IResult, Parser};

/// Largest body a frame may announce; a larger `Content-Length` is an error.
pub const MAX_CONTENT_LENGTH: usize = 16 * 1024 * 1024;
/// Largest header block; no blank line within this many bytes is an error.
pub(crate) const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// The most [`FrameDecoder::decode`] reserves in the buffer for a body still arriving.
pub const MAX_RESERVE: usize = 64 * 1024;

/// One frame of the event socket: its header block and its body (empty without
/// `Content-Length`). Both share the connection's read buffer (no copy).
#[derive(Debug, Clone)]
pub struct Frame {
    /// The header lines, each with its line terminator, without the blank line. Checked to be
    /// UTF-8 made of well-formed header lines when the frame was decoded.
    head: Bytes,
    body: Bytes,
}

impl Frame {
    /// The value of the first header named exactly `name` (values are not percent-decoded:
    /// outer headers are not encoded).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Every header in order, duplicates included.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        // The block was validated in `decode`, so neither step below can fail; if it somehow
        // did, the iterator is simply empty.
        let mut rest = std::str::from_utf8(&self.head).unwrap_or("");
        std::iter::from_fn(move || {
            let (tail, (name, value)) = header_line_str(rest).ok()?;
            rest = tail;
            Some((name, value))
        })
    }

    /// The `Content-Type` header (`text/event-plain`, `api/response`, ...).
    pub fn content_type(&self) -> Option<&str> {
        self.header("Content-Type")
    }

    /// The body: the `Content-Length` bytes after the header block.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The raw header block (each line with its terminator, no blank line).
    pub fn head(&self) -> &Bytes {
        &self.head
    }
}

/// Why the byte stream could not be cut into frames. After an error the stream is out of
/// step: the connection should be dropped (the decoder resets itself).
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("Content-Length {0} exceeds the 16 MiB limit")]
    ContentLengthTooLarge(String),
    #[error("Content-Length value {0:?} is not a decimal number")]
    InvalidContentLength(String),
    #[error("header line without ':' at byte {0} of the header block")]
    MissingColon(usize),
    #[error("header block is not UTF-8 (invalid byte at {0})")]
    HeaderNotUtf8(usize),
    #[error("header block over 64 KiB without a blank line")]
    HeaderBlockTooLarge,
}

/// A parsed header block whose body has not fully arrived yet.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// Length of the header lines (without the blank line).
    block_len: usize,
    /// Length of the header lines plus the blank line.
    head_len: usize,
    body_len: usize,
}

/// Incremental frame decoder; see the module documentation.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    /// Offset in the buffer of the first header line not yet scanned (always a line start).
    scanned: usize,
    pending: Option<Pending>,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one complete frame off the front of `buf` (zero-copy: split_to + freeze),
    /// `Ok(None)` when more bytes are needed. Bytes of an incomplete frame stay in `buf`; the
    /// caller appends more and calls again.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let result = self.decode_inner(buf);
        if result.is_err() {
            *self = Self::default();
        }
        result
    }

    fn decode_inner(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let pending = match self.pending {
            Some(p) => p,
            None => match self.scan_head(buf)? {
                Some(p) => p,
                None => return Ok(None),
            },
        };
        let total = pending.head_len + pending.body_len;
        if buf.len() < total {
            self.pending = Some(pending);
            let missing = total - buf.len();
            buf.reserve(missing.min(MAX_RESERVE));
            return Ok(None);
        }
        self.pending = None;
        self.scanned = 0;
        let mut head = buf.split_to(pending.head_len).freeze();
        head.truncate(pending.block_len);
        let body = buf.split_to(pending.body_len).freeze();
        Ok(Some(Frame { head, body }))
    }

    /// Looks for the end of the header block, resuming where the last call stopped; parses
    /// the block once it is complete.
    fn scan_head(&mut self, buf: &mut BytesMut) -> Result<Option<Pending>, FrameError> {
        if self.scanned == 0 {
            // Skip stray blank lines before a frame.
            loop {
                match buf.first() {
                    Some(b'\n') => buf.advance(1),
                    Some(b'\r') => match buf.get(1) {
                        Some(b'\n') => buf.advance(2),
                        Some(_) => break,
                        None => return Ok(None),
                    },
                    _ => break,
                }
            }
            if buf.is_empty() {
                return Ok(None);
            }
        }
        let mut line_start = self.scanned;
        loop {
            if line_start > MAX_HEADER_BLOCK {
                return Err(FrameError::HeaderBlockTooLarge);
            }
            let Some(nl) = memchr::memchr(b'\n', &buf[line_start..]) else {
                self.scanned = line_start;
                if buf.len() > MAX_HEADER_BLOCK {
                    return Err(FrameError::HeaderBlockTooLarge);
                }
                return Ok(None);
            };
            let line_end = line_start + nl;
            let line = &buf[line_start..line_end];
            if line.is_empty() || line == b"\r" {
                let block_len = line_start;
                let head_len = line_end + 1;
                let body_len = parse_block(&buf[..block_len])?;
                return Ok(Some(Pending { block_len, head_len, body_len }));
            }
            line_start = line_end + 1;
        }
    }
}

/// Checks a complete header block and returns its `Content-Length` (0 without one).
fn parse_block(block: &[u8]) -> Result<usize, FrameError> {
    let text = std::str::from_utf8(block).map_err(|e| FrameError::HeaderNotUtf8(e.valid_up_to()))?;
    let mut rest = text;
    let mut content_length = None;
    while !rest.is_empty() {
        let offset = text.len() - rest.len();
        let (tail, (name, value)) = header_line_str(rest).map_err(|_| FrameError::MissingColon(offset))?;
        if content_length.is_none() && name == "Content-Length" {
            content_length = Some(parse_content_length(value)?);
        }
        rest = tail;
    }
    Ok(content_length.unwrap_or(0))
}

/// Parses a `Content-Length` value: decimal digits, at most [`MAX_CONTENT_LENGTH`].
fn parse_content_length(value: &str) -> Result<usize, FrameError> {
    let digits = value.trim_matches(|c: char| c == ' ' || c == '\t');
    let invalid = || FrameError::InvalidContentLength(value.chars().take(40).collect());
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let too_large = || FrameError::ContentLengthTooLarge(digits.chars().take(40).collect());
    match digits.parse::<u64>() {
        // Bounded by MAX_CONTENT_LENGTH, so it fits in usize.
        Ok(n) if n <= MAX_CONTENT_LENGTH as u64 => Ok(n as usize),
        _ => Err(too_large()),
    }
}

/// One header line `Name: value\n` (or `\r\n`): the name, then the value without the line
/// terminator and without the single space after the colon.
fn header_line_str(input: &str) -> IResult<&str, (&str, &str)> {
    let (input, name) = take_till(|c| c == ':' || c == '\n').parse(input)?;
    let (input, _) = char(':').parse(input)?;
    let (input, _) = opt(char(' ')).parse(input)?;
    let (input, value) = take_till(|c| c == '\n').parse(input)?;
    let (input, _) = char('\n').parse(input)?;
    Ok((input, (name, value.strip_suffix('\r').unwrap_or(value))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> Vec<Frame> {
        let mut dec = FrameDecoder::new();
        let mut buf = BytesMut::from(bytes);
        let mut frames = Vec::new();
        while let Some(f) = dec.decode(&mut buf).expect("valid stream") {
            frames.push(f);
        }
        assert!(buf.is_empty(), "leftover bytes: {:?}", buf);
        frames
    }

    #[test]
    fn header_only_and_body_frames() {
        let frames =
            decode_all(b"Content-Type: auth/request\n\nContent-Type: api/response\nContent-Length: 10\n\n\n0 total.\n");
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].content_type(), Some("auth/request"));
        assert!(frames[0].body().is_empty());
        assert_eq!(frames[1].header("Content-Length"), Some("10"));
        assert_eq!(&frames[1].body()[..], b"\n0 total.\n");
    }

    #[test]
    fn empty_value_with_trailing_space_and_crlf() {
        let frames = decode_all(b"\n\r\nContent-Type: log/data\r\nUser-Data: \r\nX:  two\r\n\r\n");
        assert_eq!(frames.len(), 1);
        let headers: Vec<_> = frames[0].headers().collect();
        assert_eq!(headers, vec![("Content-Type", "log/data"), ("User-Data", ""), ("X", " two")]);
    }

    #[test]
    fn incomplete_frames_wait_for_more() {
        let mut dec = FrameDecoder::new();
        let mut buf = BytesMut::from(&b"Content-Length: 5\nContent-Type: x\n\nabc"[..]);
        assert!(dec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"de");
        let f = dec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(&f.body()[..], b"abcde");
        assert!(dec.decode(&mut buf).unwrap().is_none());
    }

    #[test]
    fn errors_say_what_happened() {
        let mut dec = FrameDecoder::new();
        let mut buf = BytesMut::from(&b"Content-Length: 99999999999\n\n"[..]);
        let err = dec.decode(&mut buf).unwrap_err();
        assert_eq!(err.to_string(), "Content-Length 99999999999 exceeds the 16 MiB limit");

        let mut buf = BytesMut::from(&b"Content-Type: x\nno colon here\n\n"[..]);
        let err = dec.decode(&mut buf).unwrap_err();
        assert_eq!(err.to_string(), "header line without ':' at byte 16 of the header block");

        let mut buf = BytesMut::from(&b"Content-Length: -1\n\n"[..]);
        assert!(matches!(dec.decode(&mut buf), Err(FrameError::InvalidContentLength(_))));

        let mut buf = BytesMut::from(&b"X: \xff\n\n"[..]);
        assert!(matches!(dec.decode(&mut buf), Err(FrameError::HeaderNotUtf8(3))));

        let mut buf = BytesMut::from(&vec![b'a'; MAX_HEADER_BLOCK + 1][..]);
        assert!(matches!(dec.decode(&mut buf), Err(FrameError::HeaderBlockTooLarge)));
    }

    #[test]
    fn big_body_in_small_pieces_does_not_rescan() {
        let mut dec = FrameDecoder::new();
        let body = vec![b'x'; 1 << 20];
        let mut stream = format!("Content-Length: {}\n\n", body.len()).into_bytes();
        stream.extend_from_slice(&body);
        let mut buf = BytesMut::new();
        let mut got = None;
        for chunk in stream.chunks(1000) {
            buf.extend_from_slice(chunk);
            if let Some(f) = dec.decode(&mut buf).unwrap() {
                got = Some(f);
            }
            // The scan position never moves past the header block once it is parsed.
            assert!(dec.scanned < 64);
        }
        assert_eq!(got.unwrap().body().len(), body.len());
    }
}
