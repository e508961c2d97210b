use thiserror::Error;

pub type Result<T, E = LedgerError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum LedgerError {
    #[error("storage: {0}")]
    Storage(#[from] redb::Error),
    #[error("ledger data is corrupt at block {height}: {reason}")]
    Corrupt { height: u64, reason: String },
    #[error("ledger metadata is corrupt: {0}")]
    CorruptMeta(String),
    #[error("this ledger was created from another genesis (stored {stored}, given {given})")]
    GenesisMismatch { stored: String, given: String },
    #[error(transparent)]
    Merkle(#[from] medledger_merkle::MerkleError),
    #[error("no block at height {0}")]
    NoSuchBlock(u64),
    #[error("transaction not found")]
    NoSuchTx,
    #[error("no signed tree head for tree size {0} (heads exist only at block boundaries)")]
    NoSuchHead(u64),
    #[error("ledger dump: {0}")]
    Dump(#[from] medledger_dump::DumpError),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for LedgerError {
            fn from(e: $t) -> Self {
                LedgerError::Storage(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);
