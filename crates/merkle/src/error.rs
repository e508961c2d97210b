use thiserror::Error;

pub type Result<T, E = MerkleError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum MerkleError {
    #[error("leaf index {index} is outside a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("tree size {requested} is larger than the log ({have} leaves)")]
    SizeOutOfRange { requested: u64, have: u64 },
    #[error("a consistency proof needs 0 < old size <= new size (got {old} -> {new})")]
    BadSizes { old: u64, new: u64 },
    #[error("stored Merkle node {0} is missing")]
    MissingNode(u64),
    #[error("proof does not verify: {0}")]
    ProofInvalid(String),
    #[error("checkpoint is malformed: {0}")]
    CheckpointMalformed(&'static str),
    #[error("checkpoint signature does not verify under the given key")]
    CheckpointSignature,
    #[error("node store: {0}")]
    Store(String),
}
