//! The durable local queue of access reports (`audit-queue.redb`, node-local).
//!
//! A read path appends its report here and waits until the append is on disk before
//! any content leaves the node; the reporter then moves reports to the ledger and
//! deletes them only once their transaction committed. So a report is never lost: a
//! crash leaves it in the queue and the next start replays it, and a refused or
//! overloaded submission is retried. Appends are group-committed by one thread (all
//! waiting appends share one fsync), so durability does not cap read throughput.
//!
//! Before a batch is submitted its transaction hash is written down (`inflight`):
//! after a crash between commit and deletion, the replay finds that transaction on
//! the ledger and deletes the batch instead of reporting it twice.

use medledger_core::{AccessReport, TxHash};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{Notify, mpsc, oneshot};

const PENDING: TableDefinition<u64, &[u8]> = TableDefinition::new("pending");
/// Reports the ledger refused on their own (they can never commit): kept, not lost.
const REFUSED: TableDefinition<u64, &[u8]> = TableDefinition::new("refused");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const INFLIGHT: &str = "inflight";

/// Most appends one group commit takes.
const MAX_GROUP: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("audit queue storage: {0}")]
    Storage(String),
    #[error("audit queue stopped")]
    Stopped,
}

fn storage(e: impl std::fmt::Display) -> QueueError {
    QueueError::Storage(e.to_string())
}

type Result<T> = std::result::Result<T, QueueError>;

/// The batch being submitted: its transaction hash and the queue entries it carries.
#[derive(Debug, Clone, borsh::BorshSerialize, borsh::BorshDeserialize)]
pub struct Inflight {
    pub tx: TxHash,
    pub seqs: Vec<u64>,
}

struct Append {
    reports: Vec<AccessReport>,
    done: oneshot::Sender<Result<()>>,
}

#[derive(Clone)]
pub struct AuditQueue {
    db: Arc<Database>,
    appends: Arc<Appends>,
    /// Woken after every commit of new reports.
    pub ready: Arc<Notify>,
}

/// The sending side of the group-commit thread, shared by every clone of the queue.
/// The last clone's drop closes the channel and joins the thread, which holds the
/// database: redb then closes the file cleanly instead of repairing it at next open.
struct Appends {
    tx: Option<mpsc::Sender<Append>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Appends {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for AuditQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditQueue")
    }
}

/// Writes the queue (reports not yet on the ledger) in one read transaction.
pub(crate) fn dump(rtx: &redb::ReadTransaction, w: &mut impl std::io::Write) -> Result<()> {
    medledger_dump::dump_table(rtx, PENDING, w).map_err(storage)?;
    medledger_dump::dump_table(rtx, REFUSED, w).map_err(storage)?;
    medledger_dump::dump_table(rtx, META, w).map_err(storage)?;
    medledger_dump::end(w).map_err(storage)
}

/// Creates the queue at `path` (which must not exist) from a [`dump`].
pub(crate) fn load_dump(path: &Path, r: &mut impl std::io::Read) -> Result<u64> {
    use medledger_dump::{insert, unknown_table};
    let db = medledger_dump::create_new(path).map_err(storage)?;
    let mut w = db.begin_write().map_err(storage)?;
    w.set_quick_repair(true);
    let n = medledger_dump::load(r, &w, |w, table, k, v| match table {
        "pending" => insert(w, PENDING, k, v),
        "refused" => insert(w, REFUSED, k, v),
        "meta" => insert(w, META, k, v),
        other => Err(unknown_table(other)),
    })
    .map_err(storage)?;
    w.commit().map_err(storage)?;
    Ok(n)
}

impl AuditQueue {
    /// Opens (creating) the queue at `path` and starts its group-commit thread.
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path).map_err(storage)?;
        let mut w = db.begin_write().map_err(storage)?;
        w.set_quick_repair(true);
        w.open_table(PENDING).map_err(storage)?;
        w.open_table(REFUSED).map_err(storage)?;
        w.open_table(META).map_err(storage)?;
        w.commit().map_err(storage)?;
        let db = Arc::new(db);
        let ready = Arc::new(Notify::new());
        let (tx, rx) = mpsc::channel::<Append>(MAX_GROUP);
        let (d, r) = (db.clone(), ready.clone());
        let thread = std::thread::Builder::new()
            .name("audit-queue".into())
            .spawn(move || writer(d, rx, r))
            .map_err(storage)?;
        Ok(AuditQueue {
            db,
            appends: Arc::new(Appends {
                tx: Some(tx),
                thread: Some(thread),
            }),
            ready,
        })
    }

    /// The database (a backup dumps it).
    pub(crate) fn database(&self) -> &Database {
        &self.db
    }

    /// Appends `reports` and returns once they are durable.
    pub async fn append(&self, reports: Vec<AccessReport>) -> Result<()> {
        if reports.is_empty() {
            return Ok(());
        }
        let (done, wait) = oneshot::channel();
        self.appends
            .tx
            .as_ref()
            .ok_or(QueueError::Stopped)?
            .send(Append { reports, done })
            .await
            .map_err(|_| QueueError::Stopped)?;
        wait.await.map_err(|_| QueueError::Stopped)?
    }

    /// The oldest `n` pending reports with their sequence numbers.
    pub fn oldest(&self, n: usize) -> Result<Vec<(u64, AccessReport)>> {
        let r = self.db.begin_read().map_err(storage)?;
        let t = r.open_table(PENDING).map_err(storage)?;
        let mut out = Vec::new();
        for e in t.iter().map_err(storage)?.take(n) {
            let (k, v) = e.map_err(storage)?;
            let rep = borsh::from_slice(v.value()).map_err(storage)?;
            out.push((k.value(), rep));
        }
        Ok(out)
    }

    /// How many reports wait for the ledger.
    pub fn pending(&self) -> Result<u64> {
        let r = self.db.begin_read().map_err(storage)?;
        let t = r.open_table(PENDING).map_err(storage)?;
        t.len().map_err(storage)
    }

    /// Notes the batch about to be submitted (durably, before submission).
    pub fn set_inflight(&self, f: Option<&Inflight>) -> Result<()> {
        let mut w = self.db.begin_write().map_err(storage)?;
        w.set_quick_repair(true);
        {
            let mut m = w.open_table(META).map_err(storage)?;
            match f {
                Some(f) => {
                    let bytes = borsh::to_vec(f).map_err(storage)?;
                    m.insert(INFLIGHT, &bytes[..]).map_err(storage)?;
                }
                None => {
                    m.remove(INFLIGHT).map_err(storage)?;
                }
            }
        }
        w.commit().map_err(storage)
    }

    pub fn inflight(&self) -> Result<Option<Inflight>> {
        let r = self.db.begin_read().map_err(storage)?;
        let m = r.open_table(META).map_err(storage)?;
        m.get(INFLIGHT)
            .map_err(storage)?
            .map(|v| borsh::from_slice(v.value()).map_err(storage))
            .transpose()
    }

    /// Deletes reports the ledger committed, and the inflight note, in one write.
    pub fn committed(&self, seqs: &[u64]) -> Result<()> {
        let mut w = self.db.begin_write().map_err(storage)?;
        w.set_quick_repair(true);
        {
            let mut t = w.open_table(PENDING).map_err(storage)?;
            for s in seqs {
                t.remove(s).map_err(storage)?;
            }
            w.open_table(META)
                .map_err(storage)?
                .remove(INFLIGHT)
                .map_err(storage)?;
        }
        w.commit().map_err(storage)
    }

    /// Moves a report the ledger refused on its own out of the way, keeping it.
    pub fn refuse(&self, seq: u64) -> Result<()> {
        let mut w = self.db.begin_write().map_err(storage)?;
        w.set_quick_repair(true);
        {
            let mut t = w.open_table(PENDING).map_err(storage)?;
            let v = t.remove(seq).map_err(storage)?.map(|v| v.value().to_vec());
            if let Some(v) = v {
                w.open_table(REFUSED)
                    .map_err(storage)?
                    .insert(seq, &v[..])
                    .map_err(storage)?;
            }
        }
        w.commit().map_err(storage)
    }
}

/// The group-commit thread: every append waiting when a commit starts shares it.
fn writer(db: Arc<Database>, mut rx: mpsc::Receiver<Append>, ready: Arc<Notify>) {
    let next = || -> Result<u64> {
        let r = db.begin_read().map_err(storage)?;
        let last = |t: TableDefinition<u64, &[u8]>| -> Result<u64> {
            let t = r.open_table(t).map_err(storage)?;
            Ok(t.last().map_err(storage)?.map_or(0, |(k, _)| k.value()))
        };
        Ok(last(PENDING)?.max(last(REFUSED)?) + 1)
    };
    let mut seq = match next() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "audit queue unreadable; reads will fail");
            while let Some(a) = rx.blocking_recv() {
                let _ = a.done.send(Err(QueueError::Storage(e.to_string())));
            }
            return;
        }
    };
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(a) => group.push(a),
                Err(_) => break,
            }
        }
        let start = seq;
        let result = (|| -> Result<u64> {
            let mut w = db.begin_write().map_err(storage)?;
            // Reports carry caller-chosen ids: two-phase commit (quick repair implies
            // it), as for every redb file that stores untrusted input.
            w.set_quick_repair(true);
            let mut s = start;
            {
                let mut t = w.open_table(PENDING).map_err(storage)?;
                for a in &group {
                    for r in &a.reports {
                        let bytes = borsh::to_vec(r).map_err(storage)?;
                        t.insert(s, &bytes[..]).map_err(storage)?;
                        s += 1;
                    }
                }
            }
            w.commit().map_err(storage)?;
            Ok(s)
        })();
        match result {
            Ok(s) => {
                seq = s;
                for a in group {
                    let _ = a.done.send(Ok(()));
                }
                ready.notify_one();
            }
            Err(e) => {
                tracing::error!(error = %e, "audit queue append failed");
                for a in group {
                    let _ = a.done.send(Err(QueueError::Storage(e.to_string())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dropping the last handle joins the writer thread, which holds the database, so
    /// the file is closed when the drop returns: reopening at once succeeds (an open
    /// file would refuse with "already open", and a process exiting then would leave
    /// it to be repaired).
    #[tokio::test(flavor = "multi_thread")]
    async fn dropping_the_queue_closes_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.redb");
        for i in 0..20 {
            let q = AuditQueue::open(&path).unwrap_or_else(|e| panic!("open {i}: {e}"));
            q.append(vec![AccessReport {
                accessor: medledger_core::AccountId([1; 32]),
                record: medledger_core::RecordId::from_tx(&TxHash(medledger_core::Digest32(
                    [2; 32],
                ))),
                purpose: medledger_core::Purpose::Treatment,
                time_ms: i,
                allowed: true,
                reason: "ok".into(),
            }])
            .await
            .unwrap();
            let _clone = q.clone();
            drop(q);
        }
        assert_eq!(AuditQueue::open(&path).unwrap().pending().unwrap(), 20);
    }
}
