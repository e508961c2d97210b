use medledger_core::Cid;
use thiserror::Error;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What can go wrong in the record store. Messages name CIDs and chunk numbers only,
/// never content.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("blob {0} not found")]
    NotFound(Cid),
    #[error("blob {0} was erased")]
    Erased(Cid),
    #[error("blob {cid} is corrupt: {detail}")]
    Corrupt { cid: Cid, detail: String },
    #[error("not a medledger blob: {0}")]
    Format(String),
    #[error(
        "decryption failed at chunk {chunk}: wrong key, or the blob was altered, reordered or truncated"
    )]
    Decrypt { chunk: u64 },
    #[error("no key envelope for this reader on blob {0}")]
    NoAccess(Cid),
    #[error("key envelope for blob {0} does not open with this reader's key")]
    EnvelopeOpen(Cid),
    #[error("invalid public key for reader")]
    BadReaderKey,
    #[error("random number generator failed")]
    Rng,
    #[error("storage: {0}")]
    Storage(#[from] object_store::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("storage configuration: {0}")]
    Config(String),
}
