//! Signed tree heads in the C2SP `tlog-checkpoint` format, wrapped as a C2SP
//! `signed-note`, so transparency-log tooling can read them:
//!
//! ```text
//! medledger/<chain-id>
//! <tree size>
//! <base64 root hash>
//!
//! — <key name> <base64(4-byte key id || Ed25519 signature)>
//! ```
//!
//! The key id is the first four bytes of SHA-256(name || "\n" || 0x01 || public key).
//! A note may carry several signature lines (co-signing nodes); `verify` looks for the
//! one made by the key it is given.

use crate::error::{MerkleError, Result};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, VerifyingKey};
use medledger_core::{Digest32, NodeKey, NodeSigner};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The unsigned tree head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Digest32,
}

impl Checkpoint {
    /// The exact bytes a signature covers.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root.0)
        )
    }

    pub fn sign(&self, key_name: &str, signer: &NodeSigner) -> SignedCheckpoint {
        let signature = signer.sign(self.body().as_bytes());
        SignedCheckpoint {
            checkpoint: self.clone(),
            signatures: vec![NoteSignature {
                key_name: key_name.to_owned(),
                key_id: key_id(key_name, &signer.public()),
                signature,
            }],
        }
    }
}

/// One `— name sig` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    pub key_name: String,
    pub key_id: [u8; 4],
    pub signature: [u8; 64],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub checkpoint: Checkpoint,
    pub signatures: Vec<NoteSignature>,
}

pub fn key_id(name: &str, key: &NodeKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([0x01]);
    h.update(key.0);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

impl SignedCheckpoint {
    /// Rebuilds a signed checkpoint from a stored signature.
    pub fn from_parts(
        checkpoint: Checkpoint,
        key_name: &str,
        key: &NodeKey,
        sig: [u8; 64],
    ) -> Self {
        SignedCheckpoint {
            checkpoint,
            signatures: vec![NoteSignature {
                key_name: key_name.to_owned(),
                key_id: key_id(key_name, key),
                signature: sig,
            }],
        }
    }

    /// The note text.
    pub fn to_note(&self) -> String {
        let mut out = self.checkpoint.body();
        out.push('\n');
        for s in &self.signatures {
            let mut blob = Vec::with_capacity(68);
            blob.extend_from_slice(&s.key_id);
            blob.extend_from_slice(&s.signature);
            out.push_str(&format!("\u{2014} {} {}\n", s.key_name, B64.encode(blob)));
        }
        out
    }

    /// Parses a note. Does not check signatures: call [`SignedCheckpoint::verify`].
    pub fn parse(note: &str) -> Result<Self> {
        let (body, sigs) = note
            .split_once("\n\n")
            .ok_or(MerkleError::CheckpointMalformed("no blank line"))?;
        let mut lines = body.split('\n');
        let origin = lines.next().filter(|o| !o.is_empty());
        let origin = origin.ok_or(MerkleError::CheckpointMalformed("empty origin"))?;
        let size = lines
            .next()
            .and_then(|s| {
                if s.starts_with('0') && s.len() > 1 {
                    None
                } else {
                    s.parse().ok()
                }
            })
            .ok_or(MerkleError::CheckpointMalformed("bad tree size"))?;
        let root = lines
            .next()
            .and_then(|r| B64.decode(r).ok())
            .and_then(|r| <[u8; 32]>::try_from(r).ok())
            .ok_or(MerkleError::CheckpointMalformed("bad root hash"))?;
        if lines.next().is_some() {
            return Err(MerkleError::CheckpointMalformed(
                "unexpected extension lines",
            ));
        }
        let checkpoint = Checkpoint {
            origin: origin.to_owned(),
            size,
            root: Digest32(root),
        };
        let mut signatures = Vec::new();
        for line in sigs.lines() {
            let rest = line
                .strip_prefix("\u{2014} ")
                .ok_or(MerkleError::CheckpointMalformed(
                    "signature line must start with an em dash",
                ))?;
            let (name, blob) = rest
                .split_once(' ')
                .ok_or(MerkleError::CheckpointMalformed("bad signature line"))?;
            let blob = B64
                .decode(blob)
                .map_err(|_| MerkleError::CheckpointMalformed("bad base64"))?;
            if blob.len() != 68 {
                return Err(MerkleError::CheckpointMalformed(
                    "signature has wrong length",
                ));
            }
            let mut key_id = [0u8; 4];
            key_id.copy_from_slice(&blob[..4]);
            let mut signature = [0u8; 64];
            signature.copy_from_slice(&blob[4..]);
            signatures.push(NoteSignature {
                key_name: name.to_owned(),
                key_id,
                signature,
            });
        }
        if signatures.is_empty() {
            return Err(MerkleError::CheckpointMalformed("no signatures"));
        }
        let parsed = SignedCheckpoint {
            checkpoint,
            signatures,
        };
        // Exactly one text per checkpoint: `+12345`, `\r\n` line ends or a missing
        // final newline parsed to the same value, so a note other than the one signed
        // would still verify (the signature covers the re-serialised body).
        if parsed.to_note() != note {
            return Err(MerkleError::CheckpointMalformed("not in canonical form"));
        }
        Ok(parsed)
    }

    /// Checks that `key` signed this checkpoint (under any key name).
    pub fn verify(&self, key: &NodeKey) -> Result<&Checkpoint> {
        let vk = VerifyingKey::from_bytes(&key.0).map_err(|_| MerkleError::CheckpointSignature)?;
        let body = self.checkpoint.body();
        let ok = self.signatures.iter().any(|s| {
            s.key_id == key_id(&s.key_name, key)
                && vk
                    .verify_strict(body.as_bytes(), &Signature::from_bytes(&s.signature))
                    .is_ok()
        });
        if ok {
            Ok(&self.checkpoint)
        } else {
            Err(MerkleError::CheckpointSignature)
        }
    }
}
