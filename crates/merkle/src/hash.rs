//! RFC 6962 hashing: `leaf = SHA-256(0x00 || data)`, `node = SHA-256(0x01 || l || r)`.
//! The prefixes keep a leaf from ever passing for an inner node (second preimages).

use medledger_core::Digest32;
use sha2::{Digest, Sha256};

pub fn leaf_hash(data: &[u8]) -> Digest32 {
    let mut h = Sha256::new_with_prefix([0x00]);
    h.update(data);
    Digest32(h.finalize().into())
}

pub fn node_hash(left: &Digest32, right: &Digest32) -> Digest32 {
    let mut h = Sha256::new_with_prefix([0x01]);
    h.update(left.0);
    h.update(right.0);
    Digest32(h.finalize().into())
}

/// The root of the empty tree: SHA-256 of the empty string.
pub fn empty_root() -> Digest32 {
    Digest32(Sha256::digest([]).into())
}
