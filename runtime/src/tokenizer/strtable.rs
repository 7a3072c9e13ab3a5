//! A compact string table: strings stored back to back in one buffer, found by index or by
//! text through an open-addressing hash index. A 262k-token vocabulary costs its text plus about
//! 12 bytes a token, instead of three heap allocations a token for a `Vec<String>` and a
//! `HashMap<String, u32>`.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

const EMPTY: u32 = u32::MAX;

/// Strings addressed by index (their insertion order) and by text.
pub(crate) struct StrTable {
    arena: String,
    /// End offset in `arena` of each string; string `i` starts where `i - 1` ends.
    ends: Vec<u32>,
    /// Hash index: string indices, `EMPTY` for a free slot. Length is a power of two, at least
    /// twice the number of strings.
    slots: Vec<u32>,
    /// Randomly keyed, so that crafted texts cannot make every lookup collide.
    hasher: RandomState,
}

/// The table cannot grow past `u32` offsets.
#[derive(Debug)]
pub(crate) struct TooLarge;

impl StrTable {
    /// An empty table sized for `n` strings of `bytes` bytes in total.
    pub(crate) fn with_capacity(n: usize, bytes: usize) -> StrTable {
        StrTable {
            arena: String::with_capacity(bytes),
            ends: Vec::with_capacity(n),
            slots: vec![EMPTY; (2 * n.max(4)).next_power_of_two()],
            hasher: RandomState::new(),
        }
    }

    /// Number of strings.
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// String `i`, if in range.
    pub(crate) fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)? as usize;
        let start = match i.checked_sub(1) {
            Some(p) => self.ends[p] as usize,
            None => 0,
        };
        self.arena.get(start..end)
    }

    /// The index of `text`.
    pub(crate) fn find(&self, text: &str) -> Option<u32> {
        let mask = self.slots.len() - 1;
        let mut at = self.hasher.hash_one(text) as usize & mask;
        loop {
            let slot = self.slots[at];
            if slot == EMPTY {
                return None;
            }
            if self.get(slot as usize) == Some(text) {
                return Some(slot);
            }
            at = (at + 1) & mask;
        }
    }

    /// Appends `text` as string number `len()`. If the text is already present, nothing is
    /// added and `Ok(Err(existing index))` is returned.
    pub(crate) fn push(&mut self, text: &str) -> Result<Result<u32, u32>, TooLarge> {
        if let Some(existing) = self.find(text) {
            return Ok(Err(existing));
        }
        let index = u32::try_from(self.ends.len()).map_err(|_| TooLarge)?;
        if index == EMPTY {
            return Err(TooLarge);
        }
        let end = u32::try_from(self.arena.len() + text.len()).map_err(|_| TooLarge)?;
        self.arena.push_str(text);
        self.ends.push(end);
        if 2 * self.ends.len() > self.slots.len() {
            self.rehash(self.slots.len() * 2);
        } else {
            self.insert_slot(text, index);
        }
        Ok(Ok(index))
    }

    fn insert_slot(&mut self, text: &str, index: u32) {
        let mask = self.slots.len() - 1;
        let mut at = self.hasher.hash_one(text) as usize & mask;
        while self.slots[at] != EMPTY {
            at = (at + 1) & mask;
        }
        self.slots[at] = index;
    }

    fn rehash(&mut self, size: usize) {
        let mut slots = vec![EMPTY; size];
        let mask = size - 1;
        let mut start = 0;
        for (i, &end) in self.ends.iter().enumerate() {
            let text = &self.arena[start..end as usize];
            let mut at = self.hasher.hash_one(text) as usize & mask;
            while slots[at] != EMPTY {
                at = (at + 1) & mask;
            }
            // Indices fit in u32 (checked on push).
            slots[at] = i as u32;
            start = end as usize;
        }
        self.slots = slots;
    }

    /// Approximate heap bytes held.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.arena.capacity() + 4 * self.ends.capacity() + 4 * self.slots.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_find_get_and_grow() {
        let mut t = StrTable::with_capacity(2, 4);
        let words: Vec<String> = (0..1000).map(|i| format!("w{i}")).collect();
        for (i, w) in words.iter().enumerate() {
            assert_eq!(t.push(w).unwrap(), Ok(i as u32));
        }
        assert_eq!(t.push("w7").unwrap(), Err(7));
        assert_eq!(t.len(), 1000);
        for (i, w) in words.iter().enumerate() {
            assert_eq!(t.find(w), Some(i as u32));
            assert_eq!(t.get(i), Some(w.as_str()));
        }
        assert_eq!(t.find("nope"), None);
        assert_eq!(t.get(1000), None);
        assert_eq!(t.push("").unwrap(), Ok(1000));
        assert_eq!(t.find(""), Some(1000));
        assert_eq!(t.get(1000), Some(""));
    }
}
