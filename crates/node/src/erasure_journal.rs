//! The erasure journal: every erasure the ledger commits, appended (and flushed) to a
//! file kept apart from the node's data and its backups *before* the erasure is
//! acknowledged, so a node restored from a backup taken earlier learns it and shreds
//! the record again before it serves anything.
//!
//! Appending happens inside the state machine's apply (the hook of
//! `medledger_consensus::StateMachine`), after the block is written and before Raft
//! answers the client: an erasure that could not be journalled is never acknowledged
//! (the apply fails and the node stops). Lines are JSON, one per erased record: its
//! id and the CIDs of its versions (ids and hashes only; nothing clinical). The
//! journal's position is the ledger's own `erasure_journal` metadata, which a restore
//! brings back with the ledger, so a restored node journals its own erasures after it.

use medledger_core::{Cid, RecordId};
use medledger_ledger::Ledger;
use medledger_ledger::contracts::query;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// How far this ledger's shred queue has been journalled (ledger-local metadata).
const CURSOR: &str = "erasure_journal";

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("erasure journal {path}: {detail}")]
    Io { path: String, detail: String },
    #[error("erasure journal {path}, line {line}: {detail}")]
    Malformed {
        path: String,
        line: usize,
        detail: String,
    },
    #[error("erasure journal: the ledger: {0}")]
    Ledger(#[from] medledger_ledger::LedgerError),
}

type Result<T> = std::result::Result<T, JournalError>;

/// One erased record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    pub record: RecordId,
    pub cids: Vec<Cid>,
    /// Height of the block this was read after (where the erasure took effect).
    pub height: u64,
}

#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    /// The file, and the ledger's journal cursor once read: only `sync` moves it, so
    /// every apply after the first skips the metadata read.
    tail: Mutex<(std::fs::File, Option<u64>)>,
}

impl Journal {
    /// Opens (creating, mode 0600) the journal at `path`. A last line a crash cut
    /// short (never flushed, so never acknowledged) is cut off, so the next append
    /// starts a line of its own.
    pub fn open(path: &Path) -> Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let err = |e: std::io::Error| JournalError::Io {
            path: path.display().to_string(),
            detail: e.to_string(),
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o600)
            .open(path)
            .map_err(err)?;
        let bytes = std::fs::read(path).map_err(err)?;
        if bytes.last().is_some_and(|b| *b != b'\n') {
            let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            file.set_len(keep as u64).map_err(err)?;
            file.sync_data().map_err(err)?;
            tracing::warn!(
                bytes = bytes.len() - keep,
                "cut off the erasure journal's unfinished last line (a crash while writing it)"
            );
        }
        Ok(Journal {
            path: path.to_owned(),
            tail: Mutex::new((file, None)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, e: impl std::fmt::Display) -> JournalError {
        JournalError::Io {
            path: self.path.display().to_string(),
            detail: e.to_string(),
        }
    }

    /// Every entry. A last line cut short by a crash was never acknowledged and is
    /// passed over; a damaged line anywhere else is an error.
    pub fn entries(&self) -> Result<Vec<Entry>> {
        read(&self.path)
    }

    /// Appends the erasures the ledger committed since the last call and flushes them,
    /// then records how far it got. Cheap when there is nothing new (one read).
    pub fn sync(&self, ledger: &Ledger) -> Result<usize> {
        let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        let cursor = match tail.1 {
            Some(c) => c,
            None => ledger
                .meta(CURSOR)?
                .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0),
        };
        tail.1 = Some(cursor);
        let height = ledger.tip().height;
        let state = ledger.state()?;
        let mut appended = 0;
        let mut last = cursor;
        let mut lines = Vec::new();
        loop {
            let page = query::shred_after(&state, last, 500)?;
            let Some((seq, _)) = page.last().copied() else {
                break;
            };
            for (_, record) in page {
                let cids = query::record(&state, &record)?
                    .map(|r| r.history.into_iter().map(|v| v.cid).collect())
                    .unwrap_or_default();
                let entry = Entry {
                    record,
                    cids,
                    height,
                };
                lines.extend(serde_json::to_vec(&entry).expect("entry serializes"));
                lines.push(b'\n');
                appended += 1;
            }
            last = seq;
        }
        if appended == 0 {
            return Ok(0);
        }
        tail.0.write_all(&lines).map_err(|e| self.io(e))?;
        tail.0.sync_data().map_err(|e| self.io(e))?;
        ledger.put_meta(CURSOR, &last.to_be_bytes())?;
        tail.1 = Some(last);
        tracing::info!(records = appended, "erasures journalled");
        Ok(appended)
    }
}

/// Reads a journal file (see [`Journal::entries`]).
pub fn read(path: &Path) -> Result<Vec<Entry>> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(JournalError::Io {
                path: path.display().to_string(),
                detail: e.to_string(),
            });
        }
    };
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::BufReader::new(f), &mut bytes).map_err(|e| {
        JournalError::Io {
            path: path.display().to_string(),
            detail: e.to_string(),
        }
    })?;
    let mut out = Vec::new();
    let mut lines = bytes
        .split_inclusive(|b| *b == b'\n')
        .enumerate()
        .peekable();
    while let Some((i, line)) = lines.next() {
        let whole = line.ends_with(b"\n");
        match serde_json::from_slice::<Entry>(line.strip_suffix(b"\n").unwrap_or(line)) {
            Ok(e) => out.push(e),
            // Never flushed whole, so never acknowledged: passed over.
            Err(_) if !whole && lines.peek().is_none() => {
                tracing::warn!("the erasure journal's last line is unfinished; passed over");
            }
            Err(e) => {
                return Err(JournalError::Malformed {
                    path: path.display().to_string(),
                    line: i + 1,
                    detail: e.to_string(),
                });
            }
        }
    }
    Ok(out)
}

/// Shreds from `store` every blob the journal at `path` names that is still there
/// (a node restored from an older backup); returns how many it shredded. Run before
/// a restored or starting node serves anything.
pub async fn shred_journalled(path: &Path, store: &medledger_store::BlobStore) -> Result<usize> {
    let mut shredded = 0;
    for entry in read(path)? {
        for cid in entry.cids {
            match store.envelope_set(&cid).await {
                Ok(_) => {}
                // Already gone (shredded here before, or never stored on this node).
                Err(
                    medledger_store::StoreError::Erased(_)
                    | medledger_store::StoreError::NotFound(_),
                ) => continue,
                Err(e) => {
                    return Err(JournalError::Io {
                        path: path.display().to_string(),
                        detail: format!("reading {cid}: {e}"),
                    });
                }
            }
            store.erase(&cid).await.map_err(|e| JournalError::Io {
                path: path.display().to_string(),
                detail: format!("shredding {cid}: {e}"),
            })?;
            shredded += 1;
        }
    }
    if shredded > 0 {
        tracing::info!(
            blobs = shredded,
            "shredded blobs of records the erasure journal names"
        );
    }
    Ok(shredded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(n: u8) -> String {
        let e = Entry {
            record: RecordId(medledger_core::Digest32([n; 32])),
            cids: vec![Cid(medledger_core::Digest32([n; 32]))],
            height: n as u64,
        };
        format!("{}\n", serde_json::to_string(&e).unwrap())
    }

    #[test]
    fn an_unfinished_last_line_is_cut_off_and_a_damaged_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let whole = line(1);
        let cut = &line(2)[..20];
        std::fs::write(&path, format!("{whole}{cut}")).unwrap();
        // Read as it is: the unfinished line is passed over.
        assert_eq!(read(&path).unwrap().len(), 1);
        // Opened for appending: cut off, so the next line starts on its own.
        let j = Journal::open(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), whole);
        j.tail
            .lock()
            .unwrap()
            .0
            .write_all(line(3).as_bytes())
            .unwrap();
        let got = j.entries().unwrap();
        assert_eq!(got.iter().map(|e| e.height).collect::<Vec<_>>(), vec![1, 3]);
        // A damaged whole line is an error, not skipped.
        std::fs::write(&path, format!("{whole}{{\"record\": 7}}\n{}", line(3))).unwrap();
        assert!(matches!(
            read(&path),
            Err(JournalError::Malformed { line: 2, .. })
        ));
    }
}
