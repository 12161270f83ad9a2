//! RESP request encoding straight into one reused buffer.
//!
//! The writer sends every batch as one pre-encoded byte string (`MULTI`, the commands, `EXEC`,
//! or one `EVALSHA`): each argument is copied once, from the entry into this buffer, with no
//! per-argument allocation on the way.

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

    /// One integer argument, as its decimal text.
    pub fn int(&mut self, value: i64) -> &mut Resp {
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
}
