//! Event to stream entry.
pub fn event_json(
    _f: crate::esl::event::EventFormat,
    _b: &[u8],
    _o: &mut Vec<u8>,
) -> Result<bool, crate::esl::event::EventError> {
    Ok(false)
}
