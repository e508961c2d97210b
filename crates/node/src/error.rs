use thiserror::Error;

pub type Result<T, E = NodeError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum NodeError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("data directory {0} is already initialised")]
    AlreadyInitialised(String),
    #[error("data directory {0} is not initialised (run `medledger init` first)")]
    NotInitialised(String),
    #[error("{0}: malformed: {1}")]
    Malformed(String, String),
    #[error(transparent)]
    Keystore(#[from] medledger_keystore::KeystoreError),
    #[error("ledger store failed its start-up check, refusing to serve: {0}")]
    StartupCheck(medledger_ledger::LedgerError),
    #[error(transparent)]
    Ledger(#[from] medledger_ledger::LedgerError),
    #[error(transparent)]
    Consensus(#[from] medledger_consensus::ConsensusError),
    #[error(transparent)]
    Core(#[from] medledger_core::CoreError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("HTTP client: {0}")]
    Http(String),
    #[error("server: {0}")]
    Server(String),
}

impl NodeError {
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        NodeError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
