//! ESL framing: header blocks ended by a blank line, then `Content-Length` bytes of body.
#[derive(Debug, Clone)]
pub struct Frame {
    pub body: bytes::Bytes,
}
impl Frame {
    pub fn header(&self, _n: &str) -> Option<&str> {
        None
    }
    pub fn content_type(&self) -> Option<&str> {
        None
    }
    pub fn body(&self) -> &bytes::Bytes {
        &self.body
    }
}
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("x")]
    X,
}
#[derive(Default)]
pub struct FrameDecoder;
impl FrameDecoder {
    pub fn new() -> Self {
        FrameDecoder
    }
    pub fn decode(&mut self, _b: &mut bytes::BytesMut) -> Result<Option<Frame>, FrameError> {
        Ok(None)
    }
}
