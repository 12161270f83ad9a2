//! The set of header names an event has shown so far, for the first-wins rule (a name that
//! occurs twice keeps its first value): shared by the JSON writer and the JSON event scan.

/// Eight bytes of `bytes` from `i`, little-endian.
#[inline(always)]
pub(crate) fn word_at(bytes: &[u8], i: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[i..i + 8]);
    u64::from_le_bytes(word)
}

/// A cheap hash of a header name (FxHash-style, 8 bytes at a time; the last word overlaps
/// the one before it instead of being copied out byte by byte).
#[inline]
pub(crate) fn hash_name(name: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mix = |h: u64, w: u64| (h.rotate_left(5) ^ w).wrapping_mul(K);
    let mut h = name.len() as u64;
    if name.len() < 8 {
        h = mix(h, name.iter().rev().fold(0u64, |w, &b| w << 8 | b as u64));
    } else {
        let mut i = 0;
        while i + 8 < name.len() {
            h = mix(h, word_at(name, i));
            i += 8;
        }
        h = mix(h, word_at(name, name.len() - 8));
    }
    h ^ (h >> 32)
}

/// The header names already written for the current event: an open-addressing set that is
/// emptied in O(1) per event (slots from an older event carry an older stamp).
#[derive(Default)]
pub(crate) struct NameSet {
    slots: Vec<Slot>,
    stamp: u32,
    len: usize,
}

#[derive(Clone, Copy, Default)]
struct Slot {
    stamp: u32,
    /// Where the name is (an offset in the body, or a header index) and its length.
    start: u32,
    len: u32,
    hash: u64,
}

impl NameSet {
    const INITIAL_SLOTS: usize = 512;

    pub(crate) fn reset(&mut self) {
        if self.slots.is_empty() {
            self.slots = vec![Slot::default(); Self::INITIAL_SLOTS];
        }
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.slots.fill(Slot::default());
            self.stamp = 1;
        }
        self.len = 0;
    }

    /// Records the name unless an equal one is already there (`same(start, len)` tells
    /// whether a recorded name equals it); returns whether it was new.
    pub(crate) fn insert(&mut self, hash: u64, start: u32, len: u32, same: impl Fn(u32, u32) -> bool) -> bool {
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut i = hash as usize & mask;
        loop {
            let slot = self.slots[i];
            if slot.stamp != self.stamp {
                self.slots[i] = Slot { stamp: self.stamp, start, len, hash };
                self.len += 1;
                return true;
            }
            if slot.hash == hash && slot.len == len && same(slot.start, slot.len) {
                return false;
            }
            i = (i + 1) & mask;
        }
    }

    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(Self::INITIAL_SLOTS);
        let old = std::mem::replace(&mut self.slots, vec![Slot::default(); size]);
        let mask = self.slots.len() - 1;
        for slot in old.into_iter().filter(|s| s.stamp == self.stamp) {
            let mut i = slot.hash as usize & mask;
            while self.slots[i].stamp == self.stamp {
                i = (i + 1) & mask;
            }
            self.slots[i] = slot;
        }
    }
}
