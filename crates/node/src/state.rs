//! `AppState`: the services one node runs, shared by every HTTP surface. Built once by
//! [`crate::serve`]; handlers get it through axum's `State`.

use medledger_consensus::{Batcher, Raft};
use medledger_ledger::Ledger;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;

#[derive(Clone)]
pub struct AppState {
    pub ledger: Ledger,
    pub raft: Raft,
    pub batcher: Batcher,
    pub metrics: PrometheusHandle,
    pub reporter: crate::reporter::Reporter,
    pub auth: Arc<crate::auth::Auth>,
    pub fhir: Arc<crate::fhir::Fhir>,
    /// Message bodies and agreement terms, sealed for their two parties.
    pub notes: crate::notes::Notes,
    /// Admissions of transactions from keys the ledger does not know yet, node-wide.
    pub new_signers: Arc<crate::auth::secrets::RateLimiter>,
    /// Each client address's budget on the expensive unauthenticated routes.
    pub per_client: Arc<crate::http::limits::PerClient>,
    /// Demo accounts shown on the sign-in page (only `medledger demo` has any).
    pub demo: DemoBoard,
    /// What the start-up check verified, shown on the admin's and auditor's pages.
    pub verified: Arc<Verified>,
    /// The Raft log's store (its vote goes into backups).
    pub raft_log: medledger_consensus::LogStore,
    /// The record store.
    pub store: medledger_store::BlobStore,
    /// The data directory (backups read its key files).
    pub data_dir: std::path::PathBuf,
    /// The backup schedule and the last successful backup.
    pub backups: Arc<crate::backup::BackupStatus>,
}

/// The ledger verification this node ran when it started.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Verified {
    /// When the check ran (ms since the epoch).
    pub at_ms: u64,
    /// The verified mark the check started after (0: everything from genesis).
    pub from_height: u64,
    /// The height it verified up to.
    pub height: u64,
    /// Blocks and transactions checked at start-up.
    pub blocks: u64,
    pub txs: u64,
    pub seconds: f64,
    /// Whether every transaction signature up to `height` has been checked.
    pub signatures: bool,
}

/// The demo accounts a node started by `medledger demo` lists on its sign-in page.
pub type DemoBoard = Arc<std::sync::RwLock<Vec<crate::http::portal::DemoAccount>>>;
