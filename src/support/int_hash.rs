//! A hasher for maps keyed by small integers the program itself produces
//! (file descriptors, object addresses), where std's SipHash, built to resist
//! chosen keys, costs more than the rest of a lookup.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Multiplies by a 64-bit odd constant (Fibonacci hashing) and folds the
/// high half down, so that keys differing only in high bits (addresses a
/// page apart) or only in low bits (consecutive fds) both spread out.
#[derive(Default, Clone, Copy)]
pub struct IntHasher(u64);

const MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for IntHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.mix(u64::from(byte));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.mix(u64::from(n));
    }

    fn write_i32(&mut self, n: i32) {
        self.mix(n as u32 as u64);
    }

    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl IntHasher {
    #[inline]
    fn mix(&mut self, n: u64) {
        let product = (self.0 ^ n).wrapping_mul(MULTIPLIER);
        self.0 = product ^ (product >> 32);
    }
}

pub type IntMap<K, V> = HashMap<K, V, BuildHasherDefault<IntHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    fn bucket(key: usize, buckets: u64) -> u64 {
        BuildHasherDefault::<IntHasher>::default().hash_one(key) % buckets
    }

    #[test]
    fn aligned_addresses_spread_over_buckets() {
        // 1,000 objects 64 bytes apart, as an allocator lays them out.
        let used: HashSet<u64> = (0..1000).map(|i| bucket(0x7f00_0000_0000 + i * 64, 1024)).collect();
        assert!(used.len() > 500, "only {} of 1024 buckets used", used.len());
    }

    #[test]
    fn consecutive_fds_spread_over_buckets() {
        let used: HashSet<u64> = (0..64).map(|fd| bucket(fd, 64)).collect();
        assert!(used.len() > 32, "only {} of 64 buckets used", used.len());
    }

    #[test]
    fn map_works_as_a_map() {
        let mut map: IntMap<usize, &str> = IntMap::default();
        map.insert(8, "a");
        map.insert(16, "b");
        assert_eq!((map.get(&8), map.get(&16), map.get(&24)), (Some(&"a"), Some(&"b"), None));
    }
}
