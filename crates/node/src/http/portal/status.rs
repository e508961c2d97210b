//! The node's and chain's status as the admin's and auditor's pages show it: chain
//! id, height, head, log size, the start-up verification, and the consensus cluster
//! (this node's role, the leader and every member).

use super::when;
use crate::state::AppState;

pub struct ChainStatus {
    pub chain: String,
    pub height: u64,
    pub head: String,
    pub log_size: u64,
    /// The start-up verification, in words.
    pub verified: String,
    /// This node's consensus role (leader, follower, …).
    pub role: String,
    /// Members of the consensus cluster: (id, address, is leader, is this node).
    pub peers: Vec<(u64, String, bool, bool)>,
    /// The last successful backup and the schedule, in words.
    pub backup: String,
}

pub fn of(s: &AppState) -> ChainStatus {
    let tip = s.ledger.tip();
    let v = &s.verified;
    let m = s.raft.metrics().borrow().clone();
    let peers = m
        .membership_config
        .membership()
        .nodes()
        .map(|(id, n)| {
            (
                *id,
                n.addr.clone(),
                m.current_leader == Some(*id),
                *id == m.id,
            )
        })
        .collect();
    ChainStatus {
        chain: s.ledger.genesis().chain_id.to_string(),
        height: tip.height,
        head: tip.hash.to_string(),
        log_size: tip.log_size,
        verified: format!(
            "Verified up to height {} when this node started, {}: {} in {:.1} s{}.",
            v.height,
            when(v.at_ms),
            if v.from_height == 0 {
                format!("everything from genesis ({} transactions)", v.txs)
            } else {
                format!(
                    "the {} blocks ({} transactions) after height {}, which this node had verified before",
                    v.blocks, v.txs, v.from_height
                )
            },
            v.seconds,
            if v.signatures {
                ", every signature checked"
            } else {
                ""
            },
        ),
        role: format!("{:?}", m.state).to_lowercase(),
        peers,
        backup: backup_words(s),
    }
}

fn backup_words(s: &AppState) -> String {
    let last = match s.backups.last() {
        Some(b) => format!(
            "Last successful backup {}: height {}, {} new blobs ({} bytes).",
            when(b.at_ms),
            b.height,
            b.blobs_new,
            b.bytes_new
        ),
        None => "No successful backup since this node started.".into(),
    };
    match &s.backups.schedule {
        Some(sch) => format!(
            "{last} Scheduled every {}, keeping the newest {}.",
            humantime::format_duration(sch.every),
            sch.keep
        ),
        None => format!("{last} Not scheduled on this node: run `medledger backup create`."),
    }
}
