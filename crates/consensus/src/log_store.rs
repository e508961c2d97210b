//! The Raft log in redb (`raft.redb`). An append is durable (fsync, two-phase
//! commit) before openraft is told it is, through `LogFlushed`; so is a vote.
//! Entries are stored as postcard; metadata (vote, committed, last purged) as JSON.

use crate::{NodeId, TypeConfig};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

type SErr = StorageError<NodeId>;

fn read_err(e: impl std::error::Error + 'static) -> SErr {
    StorageIOError::read_logs(&e).into()
}
fn write_err(e: impl std::error::Error + 'static) -> SErr {
    StorageIOError::write_logs(&e).into()
}

/// The Raft log store; clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    pub fn open(path: &Path) -> crate::Result<Self> {
        let db = Database::create(path)?;
        let mut w = db.begin_write()?;
        w.set_quick_repair(true);
        w.open_table(LOG)?;
        w.open_table(META)?;
        w.commit()?;
        Ok(LogStore { db: Arc::new(db) })
    }

    /// The stored vote as bytes, for a backup. A backup restores no log entries: the
    /// ledger it restores is the snapshot they were applied into, and openraft, finding
    /// the applied id past an empty log, purges up to it. The vote is kept so the next
    /// term is above every term in that history.
    pub fn vote_bytes(&self) -> crate::Result<Option<Vec<u8>>> {
        let r = self.db.begin_read()?;
        let t = r.open_table(META)?;
        Ok(t.get("vote")?.map(|v| v.value().to_vec()))
    }

    /// Creates the Raft log of a restored node at `path` (which must not exist) with
    /// only the vote of [`LogStore::vote_bytes`].
    pub fn restore(path: &Path, vote: Option<&[u8]>) -> crate::Result<()> {
        if let Some(v) = vote {
            serde_json::from_slice::<Vote<NodeId>>(v)
                .map_err(|e| crate::ConsensusError::Config(format!("restored vote: {e}")))?;
        }
        let db = medledger_dump::create_new(path)
            .map_err(|e| crate::ConsensusError::Config(format!("raft log: {e}")))?;
        let mut w = db.begin_write()?;
        w.set_quick_repair(true);
        w.open_table(LOG)?;
        {
            let mut m = w.open_table(META)?;
            if let Some(v) = vote {
                m.insert("vote", v)?;
            }
        }
        w.commit()?;
        Ok(())
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SErr> {
        let r = self.db.begin_read().map_err(read_err)?;
        let t = r.open_table(META).map_err(read_err)?;
        let v = t.get(key).map_err(read_err)?;
        match v {
            None => Ok(None),
            Some(v) => serde_json::from_slice(v.value())
                .map(Some)
                .map_err(read_err),
        }
    }

    /// Writes durably; everything Raft records must survive a crash once acknowledged.
    async fn write<F>(&self, f: F) -> Result<(), SErr>
    where
        F: FnOnce(&redb::WriteTransaction) -> Result<(), SErr> + Send + 'static,
    {
        self.write_with(Durability::Immediate, f).await
    }

    async fn write_with<F>(&self, durability: Durability, f: F) -> Result<(), SErr>
    where
        F: FnOnce(&redb::WriteTransaction) -> Result<(), SErr> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut w = db.begin_write().map_err(write_err)?;
            if matches!(durability, Durability::Immediate) {
                w.set_quick_repair(true);
            }
            w.set_durability(durability).map_err(write_err)?;
            f(&w)?;
            w.commit().map_err(write_err)
        })
        .await
        .map_err(write_err)?
    }
}

fn put_meta<T: serde::Serialize>(w: &redb::WriteTransaction, key: &str, v: &T) -> Result<(), SErr> {
    let bytes = serde_json::to_vec(v).map_err(write_err)?;
    w.open_table(META)
        .map_err(write_err)?
        .insert(key, &bytes[..])
        .map_err(write_err)?;
    Ok(())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => Some(*e),
            Bound::Excluded(0) => return Ok(vec![]),
            Bound::Excluded(e) => Some(e - 1),
            Bound::Unbounded => None,
        };
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let r = db.begin_read().map_err(read_err)?;
            let t = r.open_table(LOG).map_err(read_err)?;
            let iter = match end {
                Some(e) if e < start => return Ok(vec![]),
                Some(e) => t.range(start..=e),
                None => t.range(start..),
            }
            .map_err(read_err)?;
            let mut out = Vec::new();
            for item in iter {
                let (_, v) = item.map_err(read_err)?;
                out.push(postcard::from_bytes(v.value()).map_err(read_err)?);
            }
            Ok(out)
        })
        .await
        .map_err(read_err)?
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let last_purged: Option<LogId<NodeId>> = self.get_meta("last_purged")?;
        let last = {
            let r = self.db.begin_read().map_err(read_err)?;
            let t = r.open_table(LOG).map_err(read_err)?;
            match t.last().map_err(read_err)? {
                Some((_, v)) => {
                    let e: Entry<TypeConfig> = postcard::from_bytes(v.value()).map_err(read_err)?;
                    Some(e.log_id)
                }
                None => None,
            }
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SErr> {
        let vote = *vote;
        self.write(move |w| put_meta(w, "vote", &vote)).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SErr> {
        self.get_meta("vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SErr> {
        // Advisory in openraft (it only speeds up recovery), so no fsync of its own:
        // it reaches disk with the next durable append.
        self.write_with(Durability::None, move |w| {
            put_meta(w, "committed", &committed)
        })
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SErr> {
        Ok(self
            .get_meta::<Option<LogId<NodeId>>>("committed")?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|e| postcard::to_stdvec(&e).map(|b| (e.log_id.index, b)))
            .collect::<Result<_, _>>()
            .map_err(write_err)?;
        let started = std::time::Instant::now();
        let res = self
            .write(move |w| {
                let mut t = w.open_table(LOG).map_err(write_err)?;
                for (i, b) in &encoded {
                    t.insert(*i, &b[..]).map_err(write_err)?;
                }
                Ok(())
            })
            .await;
        metrics::histogram!("medledger_raft_append_seconds")
            .record(started.elapsed().as_secs_f64());
        match &res {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        res
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        self.write(move |w| {
            let mut t = w.open_table(LOG).map_err(write_err)?;
            t.retain_in(log_id.index.., |_, _| false)
                .map_err(write_err)?;
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        self.write(move |w| {
            put_meta(w, "last_purged", &log_id)?;
            let mut t = w.open_table(LOG).map_err(write_err)?;
            t.retain_in(..=log_id.index, |_, _| false)
                .map_err(write_err)?;
            Ok(())
        })
        .await
    }
}
