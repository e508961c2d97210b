//! Offline proof verification: needs nothing but a (verified) checkpoint's size and
//! root, the leaf, and the proof. Checking is delegated to `ct-merkle`, which checks
//! the exact proof length for the claimed sizes, so padded, truncated or re-indexed
//! proofs are refused (the class of bug behind immudb's GO-2022-1117).

use crate::error::{MerkleError, Result};
use ct_merkle::{ConsistencyProof, InclusionProof, RootHash};
use medledger_core::Digest32;
use sha2::Sha256;

fn root(hash: &Digest32, size: u64) -> RootHash<Sha256> {
    RootHash::new(hash.0.into(), size)
}

fn concat(proof: &[Digest32]) -> Vec<u8> {
    proof.iter().flat_map(|d| d.0).collect()
}

/// Checks that `leaf_data` (a tx hash) is leaf `index` of the tree `(size, root_hash)`.
pub fn verify_inclusion(
    root_hash: &Digest32,
    size: u64,
    leaf_data: &[u8],
    index: u64,
    proof: &[Digest32],
) -> Result<()> {
    if index >= size {
        return Err(MerkleError::IndexOutOfRange { index, size });
    }
    let proof = InclusionProof::<Sha256>::try_from_bytes(concat(proof))
        .map_err(|e| MerkleError::ProofInvalid(e.to_string()))?;
    root(root_hash, size)
        .verify_inclusion(&leaf_data, index, &proof)
        .map_err(|e| MerkleError::ProofInvalid(e.to_string()))
}

/// Checks that the tree `(old_size, old_root)` is a prefix of `(new_size, new_root)`.
pub fn verify_consistency(
    old_root: &Digest32,
    old_size: u64,
    new_root: &Digest32,
    new_size: u64,
    proof: &[Digest32],
) -> Result<()> {
    if old_size == 0 || old_size > new_size {
        return Err(MerkleError::BadSizes {
            old: old_size,
            new: new_size,
        });
    }
    let proof = ConsistencyProof::<Sha256>::try_from_bytes(concat(proof))
        .map_err(|e| MerkleError::ProofInvalid(e.to_string()))?;
    root(new_root, new_size)
        .verify_consistency(&root(old_root, old_size), &proof)
        .map_err(|e| MerkleError::ProofInvalid(e.to_string()))
}
