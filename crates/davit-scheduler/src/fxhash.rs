//! FxHash (rustc's hasher) for the scheduler's lookup maps.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A hash map with [`FxHasher`]: for maps that are only looked up, never iterated.
pub(crate) type FxHashMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// FxHash (rustc's): a fast, non-cryptographic hasher for the scheduler's lookup maps. Fine here: the
/// keys are node ids, node attribute values and the scheduler's own random ids, which clients cannot
/// choose in bulk, and nothing iterates these maps.
#[derive(Default)]
pub(crate) struct FxHasher {
    hash: u64,
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let word = u64::from_le_bytes(chunk.try_into().expect("chunks of 8"));
            self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
        }
        for byte in chunks.remainder() {
            self.hash = (self.hash.rotate_left(5) ^ u64::from(*byte)).wrapping_mul(SEED);
        }
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}
