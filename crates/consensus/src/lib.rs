//! Ordering through openraft (0.9, storage v2). A node is a cluster of one by default;
//! more voters are configuration. Owns: the Raft type configuration, the Raft log in
//! redb (`raft.redb`), the state-machine adapter that turns each committed entry into
//! a ledger block, the HTTP transport between nodes, and the leader's group-commit
//! batcher.

// openraft's trait methods return its own `StorageError` (~224 bytes); our helpers must
// return the same type, so boxing it is not an option here.
#![allow(clippy::result_large_err)]

mod batcher;
mod error;
mod log_store;
pub mod network;
mod state_machine;

pub use batcher::{Batcher, BatcherConfig};
pub use error::{ConsensusError, Result};
pub use log_store::LogStore;
pub use state_machine::{AfterApply, StateMachine};

use medledger_ledger::BatchOutcome;
use serde::{Deserialize, Serialize};
use std::io::Cursor;

/// One Raft entry: a batch of signed transactions (canonical bytes) and the time the
/// leader proposed it, which becomes the block time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub time_ms: u64,
    pub txs: Vec<Vec<u8>>,
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Request,
        R = BatchOutcome,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type NodeId = u64;
pub type Node = openraft::BasicNode;

/// Raft configuration tuned for a LAN consortium and for group commit.
pub fn raft_config(cluster: &str) -> openraft::Config {
    openraft::Config {
        cluster_name: cluster.to_owned(),
        heartbeat_interval: 250,
        election_timeout_min: 600,
        election_timeout_max: 1200,
        // Entries are already batches of transactions; keep replication payloads sane.
        max_payload_entries: 64,
        // The ledger itself is the durable record, so a snapshot is the whole ledger;
        // taking one rarely keeps that cost low while bounding the Raft log.
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(20_000),
        max_in_snapshot_log_to_keep: 1_000,
        ..Default::default()
    }
}

/// Starts Raft over the given stores; `initialize` makes a fresh single node its own
/// cluster (a no-op when the log already has a membership).
pub async fn start(
    node_id: NodeId,
    addr: &str,
    cluster: &str,
    log: LogStore,
    sm: StateMachine,
    network: network::HttpNetwork,
) -> Result<Raft> {
    let config = std::sync::Arc::new(
        raft_config(cluster)
            .validate()
            .map_err(|e| ConsensusError::Config(e.to_string()))?,
    );
    let raft = Raft::new(node_id, config, network, log, sm)
        .await
        .map_err(|e| ConsensusError::Raft(e.to_string()))?;
    if !raft
        .is_initialized()
        .await
        .map_err(|e| ConsensusError::Raft(e.to_string()))?
    {
        let mut members = std::collections::BTreeMap::new();
        members.insert(
            node_id,
            Node {
                addr: addr.to_owned(),
            },
        );
        raft.initialize(members)
            .await
            .map_err(|e| ConsensusError::Raft(e.to_string()))?;
    }
    Ok(raft)
}
