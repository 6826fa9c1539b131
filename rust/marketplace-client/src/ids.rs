//! A fast keyed hash for maps keyed by the server's ids.
//!
//! Maps keyed by ids a server chose (listing ids) sit on the game's main
//! thread, on the path of every `buy_listing` call. The standard library's
//! SipHash made a third of a purchase's hashing cost; an unkeyed hasher
//! (FxHash) would let a hostile server pick ids that all land in one bucket
//! and make each call walk them. This one mixes each id with two random
//! 64-bit keys, made once per map, through a full 64×64→128-bit multiply
//! folded to 64 bits (the construction of the `foldhash` and `ahash`
//! fallbacks): a few instructions, and a server that does not know the
//! keys has no id pattern known to collide. It is not a cryptographic MAC
//! (checked here statistically, not proven); the maps it serves are small
//! anyway (`lots` is cleared at 4,096 entries, `purchases` holds only the
//! listings being bought).

use std::hash::{BuildHasher, Hasher};

/// A `HashMap` keyed by server-chosen ids.
pub type IdMap<K, V> = std::collections::HashMap<K, V, KeyedIds>;

/// Random keys for one map ([`BuildHasher`]).
#[derive(Clone, Debug)]
pub struct KeyedIds {
    keys: [u64; 2],
}

impl Default for KeyedIds {
    fn default() -> Self {
        KeyedIds {
            keys: rand::random(),
        }
    }
}

impl BuildHasher for KeyedIds {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher {
            state: self.keys[0],
            key: self.keys[1],
        }
    }
}

/// The hasher of one key.
pub struct IdHasher {
    state: u64,
    key: u64,
}

/// The high and low halves of the 128-bit product, xored.
fn fold(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        // The length first, so that zero padding cannot make `"a"` and
        // `"a\0"` the same input whatever the keys.
        self.write_u64(bytes.len() as u64);
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.state = fold(self.state ^ n, self.key ^ 0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        fold(self.state, self.key.rotate_left(32) | 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_ids_hash_equal_and_maps_work() {
        let build = KeyedIds::default();
        assert_eq!(build.hash_one(42i64), build.hash_one(42i64));
        assert_ne!(build.hash_one(42i64), build.hash_one(43i64));
        let mut map: IdMap<i64, i64> = IdMap::default();
        for id in 0..10_000 {
            map.insert(id * 4096, id);
        }
        assert!((0..10_000).all(|id| map.get(&(id * 4096)) == Some(&id)));
    }

    #[test]
    fn byte_strings_differing_only_in_trailing_zeros_differ() {
        let build = KeyedIds::default();
        assert_ne!(build.hash_one("a"), build.hash_one("a\0"));
        assert_ne!(build.hash_one(b"" as &[u8]), build.hash_one(b"\0" as &[u8]));
    }

    #[test]
    fn another_map_has_other_keys() {
        let (a, b) = (KeyedIds::default(), KeyedIds::default());
        assert_ne!(a.hash_one(7i64), b.hash_one(7i64));
    }

    /// Ids spaced so that they share their low bits (what an unkeyed
    /// multiplicative hash sends to one bucket) spread over the buckets:
    /// hashbrown picks a bucket by the low bits and a tag by the top 7.
    #[test]
    fn ids_sharing_low_bits_spread() {
        let build = KeyedIds::default();
        let hashes: Vec<u64> = (0..6_400i64).map(|i| build.hash_one(i << 32)).collect();
        let mut top = [0u32; 64];
        for h in &hashes {
            top[(h >> 58) as usize] += 1;
        }
        let low: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 1023).collect();
        assert!(top.iter().all(|&n| n > 40), "{top:?}");
        assert!(low.len() > 900, "{} distinct low bits", low.len());
    }
}
