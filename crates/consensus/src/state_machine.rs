//! The openraft state machine over the ledger: each committed normal entry is one
//! batch, applied by `Ledger::apply` (one block if anything was accepted). The last
//! applied log id and membership are written in the same redb transaction as the
//! blocks, so after a crash the ledger and Raft agree on what was applied.

use crate::{Node, NodeId, TypeConfig};
use medledger_ledger::store::Batch;
use medledger_ledger::{ApplyDurability, BatchOutcome, Ledger};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use std::io::Cursor;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const META_APPLIED: &str = "raft_applied";
const META_MEMBERSHIP: &str = "raft_membership";

type SErr = StorageError<NodeId>;
type Applied = (Option<LogId<NodeId>>, StoredMembership<NodeId, Node>);

fn sm_err(e: impl std::error::Error + 'static) -> SErr {
    StorageIOError::write_state_machine(&e).into()
}
fn sm_read_err(e: impl std::error::Error + 'static) -> SErr {
    StorageIOError::read_state_machine(&e).into()
}

type CurrentSnapshot = Option<(SnapshotMeta<NodeId, Node>, Vec<u8>)>;

/// How long applied blocks may stay only in the Raft log before the ledger file is
/// flushed. Bounds replay work after a crash; correctness does not depend on it.
const FLUSH_EVERY: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct StateMachine {
    ledger: Ledger,
    snapshot: Arc<Mutex<CurrentSnapshot>>,
    last_flush: Arc<Mutex<Instant>>,
}

impl StateMachine {
    pub fn new(ledger: Ledger) -> Self {
        StateMachine {
            ledger,
            snapshot: Arc::new(Mutex::new(None)),
            last_flush: Arc::new(Mutex::new(Instant::now())),
        }
    }

    /// Deferred (no fsync) unless the ledger file has not been flushed for a while.
    fn durability(&self) -> ApplyDurability {
        let mut last = self.last_flush.lock().unwrap_or_else(|p| p.into_inner());
        if last.elapsed() >= FLUSH_EVERY {
            *last = Instant::now();
            ApplyDurability::Durable
        } else {
            ApplyDurability::Deferred
        }
    }

    fn read_applied(&self) -> Result<Applied, SErr> {
        let applied = match self.ledger.meta(META_APPLIED).map_err(sm_read_err)? {
            Some(b) => serde_json::from_slice(&b).map_err(sm_read_err)?,
            None => None,
        };
        let membership = match self.ledger.meta(META_MEMBERSHIP).map_err(sm_read_err)? {
            Some(b) => serde_json::from_slice(&b).map_err(sm_read_err)?,
            None => StoredMembership::default(),
        };
        Ok((applied, membership))
    }

    fn lock_snapshot(&self) -> std::sync::MutexGuard<'_, CurrentSnapshot> {
        self.snapshot.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        let ledger = self.ledger.clone();
        // A snapshot lets openraft purge the log, so what it covers must be on disk.
        let l = ledger.clone();
        tokio::task::spawn_blocking(move || l.flush())
            .await
            .map_err(sm_err)?
            .map_err(sm_err)?;
        // The export is one redb read transaction, so the applied log id read with it
        // matches the image even while later blocks are being applied.
        let (data, meta) =
            tokio::task::spawn_blocking(move || ledger.export(&[META_APPLIED, META_MEMBERSHIP]))
                .await
                .map_err(sm_read_err)?
                .map_err(sm_read_err)?;
        let applied: Option<LogId<NodeId>> = match &meta[0] {
            Some(b) => serde_json::from_slice(b).map_err(sm_read_err)?,
            None => None,
        };
        let membership: StoredMembership<NodeId, Node> = match &meta[1] {
            Some(b) => serde_json::from_slice(b).map_err(sm_read_err)?,
            None => StoredMembership::default(),
        };
        let meta = SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
            snapshot_id: format!(
                "{}-{}",
                applied.map(|l| l.index).unwrap_or(0),
                self.ledger.tip().height
            ),
        };
        *self.lock_snapshot() = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Node>), SErr> {
        self.read_applied()
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchOutcome>, SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let (_, mut membership) = self.read_applied()?;
        let mut last = None;
        let mut requests = Vec::new();
        // For each entry: Some(i) = the i-th batch; None = no transactions.
        let mut slots = Vec::new();
        for e in entries {
            last = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => slots.push(None),
                EntryPayload::Membership(m) => {
                    membership = StoredMembership::new(Some(e.log_id), m);
                    slots.push(None);
                }
                EntryPayload::Normal(req) => {
                    slots.push(Some(requests.len()));
                    requests.push(req);
                }
            }
        }
        let Some(last) = last else { return Ok(vec![]) };
        let applied = serde_json::to_vec(&Some(last)).map_err(sm_err)?;
        let members = serde_json::to_vec(&membership).map_err(sm_err)?;
        let ledger = self.ledger.clone();
        // The Raft log already holds these entries durably and apply is deterministic,
        // so the ledger write may skip its fsync: after a crash openraft re-applies
        // from the last durable applied id and produces the very same blocks.
        let durability = self.durability();
        let started = std::time::Instant::now();
        let outcomes = tokio::task::spawn_blocking(move || {
            let batches: Vec<Batch<'_>> = requests
                .iter()
                .map(|r| Batch {
                    time_ms: r.time_ms,
                    txs: &r.txs,
                })
                .collect();
            ledger.apply(
                &batches,
                &[(META_APPLIED, &applied), (META_MEMBERSHIP, &members)],
                durability,
            )
        })
        .await
        .map_err(sm_err)?
        .map_err(sm_err)?;
        metrics::histogram!("medledger_apply_seconds").record(started.elapsed().as_secs_f64());
        let mut outcomes = outcomes.into_iter();
        Ok(slots
            .into_iter()
            .map(|slot| match slot {
                Some(_) => outcomes.next().unwrap_or(BatchOutcome {
                    height: None,
                    txs: vec![],
                }),
                None => BatchOutcome {
                    height: None,
                    txs: vec![],
                },
            })
            .collect())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        let data = snapshot.into_inner();
        let ledger = self.ledger.clone();
        let applied = serde_json::to_vec(&meta.last_log_id).map_err(sm_err)?;
        let members = serde_json::to_vec(&meta.last_membership).map_err(sm_err)?;
        let image = data.clone();
        tokio::task::spawn_blocking(move || {
            ledger.import(&image)?;
            ledger.put_meta(META_APPLIED, &applied)?;
            ledger.put_meta(META_MEMBERSHIP, &members)
        })
        .await
        .map_err(sm_err)?
        .map_err(sm_err)?;
        *self.lock_snapshot() = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        Ok(self.lock_snapshot().as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(data.clone())),
        }))
    }
}
