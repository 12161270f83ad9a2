//! The choice of lane: events sharing an ordering key always take the same lane, so one
//! writer writes them, in order.

/// FNV-1a over the ordering key, reduced to a lane. Events without a key share lane 0, which
/// keeps their relative order too.
pub(crate) fn lane_for(key: &str, lanes: usize) -> usize {
    if key.is_empty() || lanes <= 1 {
        return 0;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        hash ^= b as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % lanes as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_lane() {
        for lanes in 1..9 {
            assert_eq!(lane_for("abc", lanes), lane_for("abc", lanes));
            assert!(lane_for("abc", lanes) < lanes);
        }
        assert_eq!(lane_for("", 8), 0);
    }
}
