//! Key envelopes: a record version's data key wrapped with HPKE (RFC 9180, base mode,
//! DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305) for one reader's X25519
//! key. The associated data binds the envelope to the blob's CID and the reader's
//! account, so an envelope cannot be moved to another blob or reader.

use crate::error::{Result, StoreError};
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, OpModeR, OpModeS, Serializable};
use medledger_core::{AccountId, Cid};
use serde::{Deserialize, Serialize};

pub const ENVELOPE_VERSION: u8 = 1;
const INFO: &[u8] = b"medledger/envelope/v1";
pub const SUITE: &str = "DHKEM(X25519,HKDF-SHA256)/HKDF-SHA256/ChaCha20Poly1305";

/// Who may read: an account and its X25519 public key (as registered on the ledger).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reader {
    pub account: AccountId,
    pub public: [u8; 32],
}

/// A reader's own key pair, to open their envelopes.
#[derive(Clone)]
pub struct ReaderSecret {
    pub account: AccountId,
    pub secret: [u8; 32],
}

impl std::fmt::Debug for ReaderSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReaderSecret({})", self.account)
    }
}

impl ReaderSecret {
    pub fn public(&self) -> [u8; 32] {
        let s = x25519_dalek::StaticSecret::from(self.secret);
        x25519_dalek::PublicKey::from(&s).to_bytes()
    }

    pub fn reader(&self) -> Reader {
        Reader {
            account: self.account,
            public: self.public(),
        }
    }
}

/// The stored form of one envelope (JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u8,
    pub suite: String,
    pub reader: AccountId,
    /// HPKE encapsulated key, hex.
    pub enc: String,
    /// The sealed data key, hex.
    pub ct: String,
}

fn aad(cid: &Cid, reader: &AccountId) -> Vec<u8> {
    let mut a = INFO.to_vec();
    a.extend_from_slice(&cid.to_bytes());
    a.extend_from_slice(&reader.0);
    a
}

pub fn wrap(key: &[u8; 32], cid: &Cid, reader: &Reader) -> Result<Envelope> {
    let pk = <X25519HkdfSha256 as Kem>::PublicKey::from_bytes(&reader.public)
        .map_err(|_| StoreError::BadReaderKey)?;
    let (enc, ct) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
        &OpModeS::Base,
        &pk,
        INFO,
        key,
        &aad(cid, &reader.account),
    )
    .map_err(|_| StoreError::BadReaderKey)?;
    Ok(Envelope {
        version: ENVELOPE_VERSION,
        suite: SUITE.into(),
        reader: reader.account,
        enc: hex::encode(enc.to_bytes()),
        ct: hex::encode(ct),
    })
}

pub fn unwrap(env: &Envelope, cid: &Cid, who: &ReaderSecret) -> Result<[u8; 32]> {
    let fail = || StoreError::EnvelopeOpen(*cid);
    if env.version != ENVELOPE_VERSION || env.suite != SUITE || env.reader != who.account {
        return Err(fail());
    }
    let sk = <X25519HkdfSha256 as Kem>::PrivateKey::from_bytes(&who.secret).map_err(|_| fail())?;
    let enc_bytes = hex::decode(&env.enc).map_err(|_| fail())?;
    let enc = <X25519HkdfSha256 as Kem>::EncappedKey::from_bytes(&enc_bytes).map_err(|_| fail())?;
    let ct = hex::decode(&env.ct).map_err(|_| fail())?;
    let key = hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
        &OpModeR::Base,
        &sk,
        &enc,
        INFO,
        &ct,
        &aad(cid, &who.account),
    )
    .map_err(|_| fail())?;
    key.try_into().map_err(|_| fail())
}
