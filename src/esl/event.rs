//! Decoding of `text/event-plain` and `text/event-json` bodies into headers and body.

/// The wire format of an event body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventFormat {
    Plain,
    Json,
}
impl EventFormat {
    pub fn from_content_type(_c: &str) -> Option<Self> {
        None
    }
}
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("x")]
    X,
}
pub fn scan_meta(_f: EventFormat, _b: &[u8]) -> Result<crate::envelope::EventMeta, EventError> {
    Err(EventError::X)
}
