//! Every key the agent keeps in Redis, and how long: beside each stream (in its Redis Cluster
//! slot, behind [`slot_tag`]) the dedup bitmaps and keyed sets, a pair's fence, each
//! connection's tripwire and retired mark; and a hot-standby pair's lease and epoch counter.

/// A dedup bitmap holds 2^this sequences (128 KiB at most).
pub const DEDUP_GENERATION_BITS: u32 = 20;
/// Bitmaps kept behind the one being written: the dedup window is at least this many times
/// 2^20 sequences of one Core-UUID (older bitmaps are deleted).
pub const DEDUP_KEEP_GENERATIONS: u64 = 3;
/// How long a dedup bitmap is kept after its last write.
pub(crate) const DEDUP_TTL_SECS: u64 = 24 * 3600;
/// How long a string id is remembered (the HTTP ingress's `HTTP_INGRESS_IDEMPOTENCY_TTL`
/// default).
pub const DEDUP_KEYS_TTL_SECS: u64 = 24 * 3600;
/// String ids remembered per producer and stream at most (the oldest go first).
pub(crate) const DEDUP_KEYS_MAX: u64 = 1_000_000;
/// How long a retired connection's mark is kept: longer than TCP keeps re-sending what a
/// closed connection had sent (about 15 minutes at Linux's defaults).
pub(crate) const RETIRED_TTL_SECS: u64 = 3600;

/// The prefix of every key kept beside a stream, in the stream's Redis Cluster slot: the
/// stream key itself when it has a hash tag (`{...}` with something inside: dedup keys that
/// start with it hash alike), else the stream key wrapped in braces. (A key with a stray `}`
/// and no tag cannot be wrapped into its own slot; give such a key a tag for Redis Cluster.)
pub(crate) fn slot_tag(stream_key: &str) -> std::borrow::Cow<'_, str> {
    let has_tag = stream_key.find('{').and_then(|open| stream_key[open + 1..].find('}')).is_some_and(|len| len > 0);
    if has_tag {
        std::borrow::Cow::Borrowed(stream_key)
    } else {
        std::borrow::Cow::Owned(format!("{{{stream_key}}}"))
    }
}

/// The fence of a hot-standby pair on one stream (the highest lease epoch that wrote to it),
/// kept beside the stream.
pub(crate) fn fence_key(stream_key: &str, group: &str) -> String {
    format!("{}:ha-fence:{group}", slot_tag(stream_key))
}

/// A connection's tripwire on one stream, which its fast-path transactions `WATCH` (see
/// [`TRANSACTION_GUARD`]).
pub(crate) fn trip_key(stream_key: &str, token: &str) -> String {
    format!("{}:trip:{token}", slot_tag(stream_key))
}

/// The mark of a connection the writer gave up on, on one stream: a transaction of that
/// connection arriving after it is set does nothing (see [`TRANSACTION_GUARD`]).
pub(crate) fn retired_key(stream_key: &str, token: &str) -> String {
    format!("{}:retired:{token}", slot_tag(stream_key))
}

/// A name no other connection has, here or in another agent: the process, a counter, and 64
/// random bits.
pub(crate) fn connection_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    format!("{:x}.{n:x}.{random:016x}", std::process::id())
}

/// One dedup bitmap: ids `generation * 2^20 ..` of one producer, kept beside the stream.
pub fn dedup_key(stream_key: &str, producer: &str, generation: u64) -> String {
    format!("{}:idmp:{producer}:{generation}", slot_tag(stream_key))
}

/// The keyed set of one producer's string ids written to the stream (member: the id; score:
/// when it was written, in seconds).
pub fn dedup_keys_key(stream_key: &str, producer: &str) -> String {
    format!("{}:idmp-keys:{producer}", slot_tag(stream_key))
}

/// A hot-standby pair's lease and its epoch counter (`<agent id> <epoch>` and the last epoch
/// granted), in the group's own slot.
pub(crate) fn lease_keys(group: &str) -> (String, String) {
    (format!("eslstream:ha:{{{group}}}:lease"), format!("eslstream:ha:{{{group}}}:epoch"))
}

/// The tripwire a pair's takeover uses while it raises the fence of one stream.
pub(crate) fn takeover_trip_key(stream_key: &str, group: &str) -> String {
    format!("{}:ha-trip:{group}:takeover", slot_tag(stream_key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_keys_share_the_stream_slot() {
        assert_eq!(dedup_key("freeswitch:telephony:events", "c", 3), "{freeswitch:telephony:events}:idmp:c:3");
        assert_eq!(dedup_keys_key("a:{sw1}:http", "crm"), "a:{sw1}:http:idmp-keys:crm");
        // An empty tag is no tag: the whole key is hashed, so the key is wrapped.
        assert_eq!(dedup_keys_key("a{}b", "p"), "{a{}b}:idmp-keys:p");
    }

    #[test]
    fn pair_keys_share_the_group_slot() {
        assert_eq!(lease_keys("sw1"), ("eslstream:ha:{sw1}:lease".to_owned(), "eslstream:ha:{sw1}:epoch".to_owned()));
        assert_eq!(takeover_trip_key("s", "sw1"), "{s}:ha-trip:sw1:takeover");
        assert_eq!(fence_key("s", "sw1"), "{s}:ha-fence:sw1");
    }
}
