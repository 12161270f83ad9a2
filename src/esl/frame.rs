//! ESL framing: header blocks ended by a blank line, then `Content-Length` bytes of body.
