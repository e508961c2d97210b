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
use std::sync::atomic::{AtomicBool, Ordering};
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

/// How long applied blocks may stay only in the Raft log before the ledger file is
/// flushed. Bounds replay work after a crash; correctness does not depend on it.
const FLUSH_EVERY: Duration = Duration::from_secs(5);

/// Snapshots: the ledger is itself the durable image of everything applied, so a
/// snapshot is a *point* (the applied log id and membership, made durable so openraft
/// may purge the log behind it) and its bytes are exported from the ledger only when
/// a lagging follower needs them. Building the image eagerly made every start linear
/// in the ledger's size (openraft builds a snapshot at start when the log has been
/// purged) and kept a copy of the whole ledger in memory.
#[derive(Clone)]
pub struct StateMachine {
    ledger: Ledger,
    /// Whether a snapshot point has been taken in this process; the image itself is
    /// never kept.
    snapshot_taken: Arc<AtomicBool>,
    last_flush: Arc<Mutex<Instant>>,
    after_apply: Option<AfterApply>,
}

/// Runs after every apply, before Raft answers the clients of what was applied; an
/// error fails the apply (nothing is acknowledged) and stops the node.
pub type AfterApply = Arc<dyn Fn(&Ledger) -> Result<(), String> + Send + Sync>;

impl StateMachine {
    pub fn new(ledger: Ledger) -> Self {
        StateMachine {
            ledger,
            snapshot_taken: Arc::new(AtomicBool::new(false)),
            last_flush: Arc::new(Mutex::new(Instant::now())),
            after_apply: None,
        }
    }

    /// Sets the hook run after every apply (the node's erasure journal).
    pub fn with_after_apply(mut self, hook: AfterApply) -> Self {
        self.after_apply = Some(hook);
        self
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
        let metas = self
            .ledger
            .metas(&[META_APPLIED, META_MEMBERSHIP])
            .map_err(sm_read_err)?;
        decode_applied(&metas)
    }

    fn snapshot_meta(&self, (applied, membership): Applied) -> SnapshotMeta<NodeId, Node> {
        SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
            snapshot_id: format!(
                "{}-{}",
                applied.map(|l| l.index).unwrap_or(0),
                self.ledger.tip().height
            ),
        }
    }
}

/// The applied log id and membership from their stored values, both read in one
/// ledger transaction so they describe the same point.
fn decode_applied(metas: &[Option<Vec<u8>>]) -> Result<Applied, SErr> {
    let applied = match &metas[0] {
        Some(b) => serde_json::from_slice(b).map_err(sm_read_err)?,
        None => None,
    };
    let membership = match &metas[1] {
        Some(b) => serde_json::from_slice(b).map_err(sm_read_err)?,
        None => StoredMembership::default(),
    };
    Ok((applied, membership))
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    /// Takes a snapshot point: what is applied now, made durable. openraft keeps only
    /// the returned meta (to purge the log behind it); the bytes handed back are empty
    /// and the image is exported by [`RaftStateMachine::get_current_snapshot`].
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        let applied = self.read_applied()?;
        // Flushing after the read makes the state it names durable: the log behind
        // this point may be purged as soon as openraft has the meta.
        let l = self.ledger.clone();
        tokio::task::spawn_blocking(move || l.flush())
            .await
            .map_err(sm_err)?
            .map_err(sm_err)?;
        self.snapshot_taken.store(true, Ordering::Release);
        Ok(Snapshot {
            meta: self.snapshot_meta(applied),
            snapshot: Box::new(Cursor::new(Vec::new())),
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
        let hook = self.after_apply.clone();
        let outcomes = tokio::task::spawn_blocking(move || {
            let batches: Vec<Batch<'_>> = requests
                .iter()
                .map(|r| Batch {
                    time_ms: r.time_ms,
                    txs: &r.txs,
                })
                .collect();
            let outcomes = ledger.apply(
                &batches,
                &[(META_APPLIED, &applied), (META_MEMBERSHIP, &members)],
                durability,
            )?;
            if let Some(hook) = hook {
                hook(&ledger).map_err(|e| {
                    medledger_ledger::LedgerError::CorruptMeta(format!("after apply: {e}"))
                })?;
            }
            Ok::<_, medledger_ledger::LedgerError>(outcomes)
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
        let image = snapshot.into_inner();
        let ledger = self.ledger.clone();
        let applied = serde_json::to_vec(&meta.last_log_id).map_err(sm_err)?;
        let members = serde_json::to_vec(&meta.last_membership).map_err(sm_err)?;
        tokio::task::spawn_blocking(move || {
            ledger.import(&image)?;
            ledger.put_meta(META_APPLIED, &applied)?;
            ledger.put_meta(META_MEMBERSHIP, &members)
        })
        .await
        .map_err(sm_err)?
        .map_err(sm_err)?;
        self.snapshot_taken.store(true, Ordering::Release);
        Ok(())
    }

    /// The image a lagging follower installs, exported now in one ledger read
    /// transaction, with the applied log id and membership read in that same
    /// transaction: it may be newer than the last snapshot point, never older, and
    /// its meta always matches its bytes. `None` until a point has been taken in this
    /// process, which keeps openraft's start-up query from exporting the ledger
    /// (openraft then takes a point itself when the log has been purged).
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        if !self.snapshot_taken.load(Ordering::Acquire) {
            return Ok(None);
        }
        let ledger = self.ledger.clone();
        // Durable first: openraft may take this meta as its snapshot point (and purge
        // behind it) if it ever asks at start while a point exists.
        let (data, metas) = tokio::task::spawn_blocking(move || {
            ledger.flush()?;
            ledger.export(&[META_APPLIED, META_MEMBERSHIP])
        })
        .await
        .map_err(sm_read_err)?
        .map_err(sm_read_err)?;
        let meta = self.snapshot_meta(decode_applied(&metas)?);
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
