use thiserror::Error;

pub type Result<T, E = ConsensusError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum ConsensusError {
    #[error("raft log storage: {0}")]
    Storage(#[from] redb::Error),
    #[error("raft: {0}")]
    Raft(String),
    #[error("raft configuration: {0}")]
    Config(String),
    #[error("this node is not the leader{}", .0.as_ref().map(|l| format!(" (leader: node {l})")).unwrap_or_default())]
    NotLeader(Option<u64>),
    #[error("the node is shutting down")]
    ShuttingDown,
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for ConsensusError {
            fn from(e: $t) -> Self {
                ConsensusError::Storage(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
