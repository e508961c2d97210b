//! Newtype identifiers. Accounts and node keys are Ed25519 public keys and are shown
//! as W3C `did:key` identifiers (multicodec `ed25519-pub` = 0xed 0x01, base58btc).

use crate::error::CoreError;
use crate::hash::Digest32;
use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

const DID_KEY_PREFIX: &str = "did:key:z";

/// Decompressed keys kept: the signers a node sees are few (its doctors, admins and
/// peers) and sign most transactions, and decompressing a key (a field square root)
/// was about a quarter of each strict signature check in a `bench ledger --workload
/// records` profile. Decompression is a pure function of the bytes, so a kept key is
/// exactly what decompressing again would give; only keys that decompress are kept.
const KEPT_KEYS: usize = 4096;

fn verifying_key(bytes: &[u8; 32]) -> Result<ed25519_dalek::VerifyingKey, CoreError> {
    static KEPT: std::sync::LazyLock<
        quick_cache::sync::Cache<[u8; 32], ed25519_dalek::VerifyingKey>,
    > = std::sync::LazyLock::new(|| quick_cache::sync::Cache::new(KEPT_KEYS));
    if let Some(k) = KEPT.get(bytes) {
        return Ok(k);
    }
    let k = ed25519_dalek::VerifyingKey::from_bytes(bytes).map_err(|_| CoreError::InvalidKey)?;
    KEPT.insert(*bytes, k);
    Ok(k)
}
const ED25519_MULTICODEC: [u8; 2] = [0xed, 0x01];

macro_rules! key_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, BorshSerialize, BorshDeserialize,
        )]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The `did:key` form of this key.
            pub fn to_did(&self) -> String {
                let mut bytes = Vec::with_capacity(34);
                bytes.extend_from_slice(&ED25519_MULTICODEC);
                bytes.extend_from_slice(&self.0);
                format!("{DID_KEY_PREFIX}{}", bs58::encode(bytes).into_string())
            }

            /// Strict Ed25519 verification of `sig` over `msg` under this key.
            pub fn verify(&self, msg: &[u8], sig: &[u8; 64]) -> bool {
                self.verifying_key().is_ok_and(|k| {
                    k.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(sig)).is_ok()
                })
            }

            /// The Ed25519 verifying key; fails for byte strings that are not curve points.
            pub fn verifying_key(&self) -> Result<ed25519_dalek::VerifyingKey, CoreError> {
                verifying_key(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = CoreError;
            /// Accepts `did:key:z...` or 64 hex digits.
            fn from_str(s: &str) -> Result<Self, CoreError> {
                if let Some(rest) = s.strip_prefix(DID_KEY_PREFIX) {
                    let bytes = bs58::decode(rest).into_vec().map_err(|_| CoreError::InvalidDid)?;
                    if bytes.len() != 34 || bytes[..2] != ED25519_MULTICODEC {
                        return Err(CoreError::InvalidDid);
                    }
                    let mut out = [0u8; 32];
                    out.copy_from_slice(&bytes[2..]);
                    return Ok($name(out));
                }
                Digest32::from_hex(s).map(|d| $name(d.0)).ok_or(CoreError::InvalidDid)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_did())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_did())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_did())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <String as Deserialize>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

key_id!(
    /// An account: the Ed25519 public key that signs its transactions.
    AccountId
);
key_id!(
    /// A node's Ed25519 public key, which signs blocks and tree heads.
    NodeKey
);

macro_rules! digest_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, BorshSerialize,
            BorshDeserialize, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub Digest32);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = CoreError;
            fn from_str(s: &str) -> Result<Self, CoreError> {
                Digest32::from_hex(s).map($name).ok_or(CoreError::InvalidHash)
            }
        }

        impl From<Digest32> for $name {
            fn from(d: Digest32) -> Self {
                $name(d)
            }
        }
    };
}
pub(crate) use digest_id;

digest_id!(
    /// Hash of a transaction body (see [`crate::hash::TAG_TX`]).
    TxHash
);
digest_id!(
    /// Hash of a block header (see [`crate::hash::TAG_BLOCK`]).
    BlockHash
);

/// The chain a transaction is meant for; stops a transaction signed for one
/// consortium (or a test network) from being replayed on another.
#[derive(
    Clone,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    BorshSerialize,
    BorshDeserialize,
    Serialize,
    Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct ChainId(String);

impl ChainId {
    pub fn new(s: impl Into<String>) -> Result<Self, CoreError> {
        let s = s.into();
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(ChainId(s))
        } else {
            Err(CoreError::InvalidChainId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ChainId {
    type Error = CoreError;
    fn try_from(s: String) -> Result<Self, CoreError> {
        ChainId::new(s)
    }
}

impl From<ChainId> for String {
    fn from(c: ChainId) -> String {
        c.0
    }
}

impl fmt::Display for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn did_key_round_trip_and_known_prefix() {
        let id = AccountId([7u8; 32]);
        let did = id.to_did();
        // Every Ed25519 did:key starts with z6Mk (multicodec 0xed01 under base58btc).
        assert!(did.starts_with("did:key:z6Mk"), "{did}");
        assert_eq!(did.parse::<AccountId>().unwrap(), id);
    }

    #[test]
    fn did_key_rejects_other_multicodecs() {
        // x25519-pub multicodec (0xec 0x01) must not parse as an account.
        let mut bytes = vec![0xec, 0x01];
        bytes.extend_from_slice(&[1u8; 32]);
        let did = format!("did:key:z{}", bs58::encode(bytes).into_string());
        assert!(did.parse::<AccountId>().is_err());
    }

    #[test]
    fn chain_id_validation() {
        assert!(ChainId::new("medledger-dev").is_ok());
        assert!(ChainId::new("").is_err());
        assert!(ChainId::new("Has Space").is_err());
    }
}
