//! RESP request encoding straight into one reused buffer.
//!
//! The writer sends every batch as one pre-encoded byte string (`MULTI`, the commands, `EXEC`,
//! or one `EVALSHA`): each argument is copied once, from the entry into this buffer, with no
//! per-argument allocation on the way. The largest argument, an event's JSON, is not even
//! copied: [`Resp::arg_with`] lets it be written here directly, as it is made from the event.

/// A growing buffer of encoded commands; [`Resp::clear`] keeps its capacity for the next batch.
#[derive(Debug, Default)]
pub struct Resp {
    buf: Vec<u8>,
    commands: usize,
}

impl Resp {
    pub fn with_capacity(bytes: usize) -> Resp {
        Resp { buf: Vec::with_capacity(bytes), commands: 0 }
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.commands = 0;
    }

    /// Starts a command of `args` arguments (the command name counts as one).
    pub fn command(&mut self, args: usize) -> &mut Resp {
        self.commands += 1;
        self.header(b'*', args);
        self
    }

    /// One bulk-string argument.
    pub fn arg(&mut self, value: &[u8]) -> &mut Resp {
        self.header(b'$', value.len());
        self.buf.extend_from_slice(value);
        self.buf.extend_from_slice(b"\r\n");
        self
    }

    /// One bulk-string argument written in place by `write` (which appends to the buffer it
    /// is given), about `size_hint` bytes long: the length header is reserved for that many
    /// bytes and set afterwards, so the value is written once, where it is sent from (moved by
    /// a few bytes only when its length has another number of digits than the hint). When
    /// `write` fails, the buffer is as it was.
    pub(crate) fn arg_with<R, E>(
        &mut self,
        size_hint: usize,
        write: impl FnOnce(&mut Vec<u8>) -> Result<R, E>,
    ) -> Result<R, E> {
        let start = self.buf.len();
        let mut hint = itoa::Buffer::new();
        let reserved = hint.format(size_hint).len();
        self.buf.push(b'$');
        self.buf.resize(start + 1 + reserved, b'0');
        self.buf.extend_from_slice(b"\r\n");
        let value_start = self.buf.len();
        let result = write(&mut self.buf);
        if result.is_err() {
            self.buf.truncate(start);
            return result;
        }
        let len = self.buf.len() - value_start;
        let mut text = itoa::Buffer::new();
        let digits = text.format(len).as_bytes();
        if digits.len() != reserved {
            // Another number of digits: move the value to just after the real header.
            let to = start + 1 + digits.len() + 2;
            if to > value_start {
                self.buf.resize(self.buf.len() + (to - value_start), 0);
            }
            self.buf.copy_within(value_start..value_start + len, to);
            self.buf.truncate(to + len);
            self.buf[start + 1 + digits.len()..to].copy_from_slice(b"\r\n");
        }
        self.buf[start + 1..start + 1 + digits.len()].copy_from_slice(digits);
        self.buf.extend_from_slice(b"\r\n");
        result
    }

    /// One integer argument, as its decimal text.
    pub(crate) fn int(&mut self, value: i64) -> &mut Resp {
        let mut text = itoa::Buffer::new();
        self.arg(text.format(value).as_bytes())
    }

    /// Commands encoded since the last [`Resp::clear`].
    pub fn commands(&self) -> usize {
        self.commands
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    fn header(&mut self, kind: u8, n: usize) {
        let mut text = itoa::Buffer::new();
        self.buf.push(kind);
        self.buf.extend_from_slice(text.format(n).as_bytes());
        self.buf.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_redis_rs() {
        let mut resp = Resp::default();
        resp.command(4).arg(b"XADD").arg(b"s").arg(b"*").int(-12);
        resp.command(1).arg(b"");
        let mut a = redis::cmd("XADD");
        a.arg("s").arg("*").arg(-12);
        let mut expected = a.get_packed_command();
        expected.extend_from_slice(&redis::cmd("").get_packed_command());
        assert_eq!(resp.as_bytes(), expected.as_slice());
        assert_eq!(resp.commands(), 2);
        resp.clear();
        assert!(resp.as_bytes().is_empty());
    }

    fn written_in_place(value: &[u8], hint: usize) -> Resp {
        let mut resp = Resp::default();
        resp.command(3).arg(b"SET");
        let r: Result<(), ()> = resp.arg_with(hint, |out| {
            out.extend_from_slice(value);
            Ok(())
        });
        assert!(r.is_ok());
        resp.arg(b"tail");
        resp
    }

    #[test]
    fn an_argument_written_in_place_is_the_same_bytes() {
        for (len, hint) in
            [(0, 0), (0, 5), (9, 10), (10, 9), (99, 100), (100, 99), (5, 12345), (12345, 3), (1000, 1000)]
        {
            let value: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let mut expected = Resp::default();
            expected.command(3).arg(b"SET").arg(&value).arg(b"tail");
            assert_eq!(written_in_place(&value, hint).as_bytes(), expected.as_bytes(), "{len} bytes, hint {hint}");
        }
    }

    #[test]
    fn a_failed_argument_leaves_the_buffer_as_it_was() {
        let mut resp = Resp::default();
        resp.command(2).arg(b"GET");
        let before = resp.as_bytes().to_vec();
        let r: Result<(), &str> = resp.arg_with(10, |out| {
            out.extend_from_slice(b"half of it");
            Err("undecodable")
        });
        assert_eq!(r, Err("undecodable"));
        assert_eq!(resp.as_bytes(), before.as_slice());
    }

    proptest::proptest! {
        #[test]
        fn any_length_and_hint(value in proptest::collection::vec(proptest::num::u8::ANY, 0..3000), hint in 0usize..200_000) {
            let mut expected = Resp::default();
            expected.command(3).arg(b"SET").arg(&value).arg(b"tail");
            let got = written_in_place(&value, hint);
            proptest::prop_assert_eq!(got.as_bytes(), expected.as_bytes());
        }
    }
}
