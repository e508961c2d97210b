//! Domain-separated SHA-256. Every hash the ledger commits to starts with a tag naming
//! what is hashed and its format version, so a tx hash can never be confused with a
//! block hash or a state digest.

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// Domain tag for transaction hashes.
pub const TAG_TX: &[u8] = b"medledger/tx/v1\0";
/// Domain tag for block hashes.
pub const TAG_BLOCK: &[u8] = b"medledger/block/v1\0";
/// Domain tag for the digest of a block's state writes.
pub const TAG_STATE: &[u8] = b"medledger/state-writes/v1\0";
/// Domain tag for the genesis hash.
pub const TAG_GENESIS: &[u8] = b"medledger/genesis/v1\0";

/// A 32-byte SHA-256 output.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, BorshSerialize, BorshDeserialize,
)]
pub struct Digest32(pub [u8; 32]);

impl Digest32 {
    pub const ZERO: Digest32 = Digest32([0; 32]);

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Digest32(out))
    }
}

impl fmt::Debug for Digest32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_hex())
    }
}

impl fmt::Display for Digest32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_hex())
    }
}

impl Serialize for Digest32 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Digest32 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <String as Deserialize>::deserialize(d)?;
        Digest32::from_hex(&s).ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
    }
}

/// SHA-256 over `tag || parts...`.
pub fn tagged(tag: &[u8], parts: &[&[u8]]) -> Digest32 {
    let mut h = Sha256::new();
    h.update(tag);
    for p in parts {
        h.update(p);
    }
    Digest32(h.finalize().into())
}

/// Incremental digest of a block's state writes: every (key, value) pair, in the order
/// the executor sorted them, length-prefixed so no two write sets share an encoding.
pub struct StateDigest(Sha256);

impl Default for StateDigest {
    fn default() -> Self {
        let mut h = Sha256::new();
        h.update(TAG_STATE);
        StateDigest(h)
    }
}

impl StateDigest {
    pub fn write(&mut self, key: &[u8], value: &[u8]) {
        self.0.update((key.len() as u64).to_le_bytes());
        self.0.update(key);
        self.0.update((value.len() as u64).to_le_bytes());
        self.0.update(value);
    }

    /// A deleted key: its length and bytes, then a length no value can have.
    pub fn delete(&mut self, key: &[u8]) {
        self.0.update((key.len() as u64).to_le_bytes());
        self.0.update(key);
        self.0.update(u64::MAX.to_le_bytes());
    }

    pub fn finish(self) -> Digest32 {
        Digest32(self.0.finalize().into())
    }
}
