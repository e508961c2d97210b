//! The local backend's own storage: append-only pack files that hold small sealed
//! blobs and every blob's envelope set, and a redb catalog that says where each lies.
//! Large blobs stay files of their own (written by `object_store`, flushed here).
//!
//! Why: a record of a few KiB as two files cost two inode allocations and a `syncfs`
//! of the whole filesystem per put. Here one writer thread takes every mutation that
//! is waiting, appends their entries to the current pack in one write, flushes that
//! one file, commits one catalog transaction and answers them all (group commit), so
//! durability costs two flushes of files the store owns per batch, whatever else
//! writes to the disk.
//!
//! Erasure really removes the bytes: entries are never rewritten, so a superseded or
//! erased entry is overwritten with zeros where it lies and flushed; a large blob's
//! file is zeroed before it is unlinked. The catalog holds only CIDs and offsets (no
//! ciphertext, no keys), so a page redb frees cannot keep a copy of anything erased.
//! Regions to zero are recorded in the same catalog transaction that drops them, and
//! zeroed again at open, so a crash between the two cannot leave them behind.

use crate::error::{Result, StoreError};
use medledger_core::Cid;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio::sync::oneshot;

/// Where an entry lies: pack number, offset of its header, payload length.
type Loc = (u32, u64, u32);

/// Sealed blobs kept in packs (large blobs are absent here and live as files).
const BLOBS: TableDefinition<[u8; 32], Loc> = TableDefinition::new("blobs");
/// The current envelope set of every blob.
const ENVELOPES: TableDefinition<[u8; 32], Loc> = TableDefinition::new("envelopes");
/// Tombstones, so reads can say "erased" rather than "not found".
const ERASED: TableDefinition<[u8; 32], ()> = TableDefinition::new("erased");
/// Regions dropped from the catalog whose zeroing may not have reached the disk yet:
/// (pack, offset) → entry length.
const TO_ZERO: TableDefinition<(u32, u64), u32> = TableDefinition::new("to_zero");
/// Large blobs erased from the catalog whose files may not be zeroed and gone yet.
const FILES_TO_ERASE: TableDefinition<[u8; 32], ()> = TableDefinition::new("files_to_erase");
/// How far each pack's entries were committed: bytes past this end were appended
/// by a batch whose catalog commit never happened (a crash, a failed commit), and
/// are zeroed at the next open.
const PACK_ENDS: TableDefinition<u32, u64> = TableDefinition::new("pack_ends");

const MAGIC: [u8; 4] = *b"MLPK";
/// magic, kind, 3 reserved bytes, payload length (u32 LE), CID digest.
pub const ENTRY_HEADER: usize = 4 + 1 + 3 + 4 + 32;
const KIND_BLOB: u8 = 1;
const KIND_ENVELOPES: u8 = 2;
/// A pack is closed and a new one started past this size, so that a later
/// compaction rewrites bounded files.
const PACK_LIMIT: u64 = 256 << 20;
/// Times a read looks the catalog up again when an entry moved under it.
const READ_ATTEMPTS: usize = 8;
/// The catalog is a few dozen bytes a record; its page cache need not be large.
const CATALOG_CACHE: usize = 32 << 20;

/// What a caller asks the writer to do.
enum Op {
    /// A new blob: its sealed bytes when small (`None` when it is a file of its own,
    /// already flushed) and its envelope set.
    Put {
        cid: Cid,
        blob: Option<Vec<u8>>,
        envelopes: Vec<u8>,
    },
    /// Replaces a blob's envelope set (reader added or removed).
    Envelopes { cid: Cid, envelopes: Vec<u8> },
    /// Drops the blob and its envelopes, zeroes their bytes, leaves a tombstone.
    Erase { cid: Cid },
}

struct Job {
    op: Op,
    done: oneshot::Sender<Result<()>>,
}

/// A blob's entries as one read saw them.
pub(crate) struct Entries {
    pub blob: Option<Vec<u8>>,
    pub envelopes: Option<Vec<u8>>,
    pub erased: bool,
}

#[derive(Debug)]
pub(crate) struct Local {
    shared: Arc<Shared>,
    /// Taken on drop, which ends the writer; then the writer is joined so the catalog
    /// is closed (and may be opened again) once the store is gone.
    jobs: Option<std::sync::mpsc::Sender<Job>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Local {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

#[derive(Debug)]
struct Shared {
    root: PathBuf,
    db: Database,
    packs: RwLock<HashMap<u32, Arc<File>>>,
}

fn catalog_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(std::io::Error::other(format!("store catalog: {e}")))
}

fn pack_path(root: &Path, n: u32) -> PathBuf {
    root.join("packs").join(format!("{n:08}.pack"))
}

fn header(kind: u8, cid: &Cid, len: usize) -> [u8; ENTRY_HEADER] {
    let mut h = [0u8; ENTRY_HEADER];
    h[..4].copy_from_slice(&MAGIC);
    h[4] = kind;
    h[8..12].copy_from_slice(&(len as u32).to_le_bytes());
    h[12..].copy_from_slice(&cid.0.0);
    h
}

/// The file that holds a large blob.
pub(crate) fn blob_file(root: &Path, cid: &Cid) -> PathBuf {
    root.join(crate::store::blob_location(cid).as_ref())
}

impl Local {
    pub(crate) fn open(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root.join("packs"))?;
        // Operators' tools (`medledger blob ...`) open the store beside a running node,
        // as they could when every blob was a file: redb lets several processes write,
        // one transaction at a time, and each process appends only to packs it created.
        let db = Database::builder()
            .set_cache_size(CATALOG_CACHE)
            .set_concurrency_mode(redb::ConcurrencyMode::MultiWriter)
            .create(root.join("catalog.redb"))
            .map_err(catalog_err)?;
        let shared = Arc::new(Shared {
            root: root.to_owned(),
            db,
            packs: RwLock::new(HashMap::new()),
        });
        if root.join("env").is_dir() {
            // The layout before packs kept envelopes as files; reading it as empty would
            // lose every record and leave wrapped keys behind on erasure.
            return Err(StoreError::Config(format!(
                "{} holds a record store of the earlier layout (env/ files); this version does not read it",
                root.display()
            )));
        }
        shared.init_tables()?;
        shared.finish_zeroing()?;
        shared.zero_uncommitted_tails()?;
        // Every start writes to a new pack, so a write torn by a crash is never followed
        // by good entries in the same file.
        let next = std::fs::read_dir(root.join("packs"))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".pack")?
                    .parse::<u32>()
                    .ok()
            })
            .max()
            .map_or(1, |n| n + 1);
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let writer = Writer {
            shared: shared.clone(),
            pack: None,
            next,
            zeroed: Vec::new(),
            erased_files: Vec::new(),
        };
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(rx))?;
        Ok(Local {
            shared,
            jobs: Some(jobs),
            writer: Some(writer),
        })
    }

    async fn submit(&self, op: Op) -> Result<()> {
        let (done, rx) = oneshot::channel();
        let stopped = || StoreError::Io(std::io::Error::other("store writer stopped"));
        self.jobs
            .as_ref()
            .ok_or_else(stopped)?
            .send(Job { op, done })
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Stores a new blob durably: `blob` when it is small (else its file is already
    /// flushed), and its envelopes.
    pub(crate) async fn put(
        &self,
        cid: Cid,
        blob: Option<Vec<u8>>,
        envelopes: Vec<u8>,
    ) -> Result<()> {
        self.submit(Op::Put {
            cid,
            blob,
            envelopes,
        })
        .await
    }

    pub(crate) async fn set_envelopes(&self, cid: Cid, envelopes: Vec<u8>) -> Result<()> {
        self.submit(Op::Envelopes { cid, envelopes }).await
    }

    pub(crate) async fn erase(&self, cid: Cid) -> Result<()> {
        self.submit(Op::Erase { cid }).await
    }

    /// A blob's packed bytes and envelopes, read in one catalog transaction.
    pub(crate) async fn entries(&self, cid: Cid, want_blob: bool) -> Result<Entries> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.entries(&cid, want_blob))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
    }

    /// Every blob that has an envelope set (every live blob), in CID order.
    pub(crate) async fn cids(&self) -> Result<Vec<Cid>> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let r = shared.db.begin_read().map_err(catalog_err)?;
            let t = r.open_table(ENVELOPES).map_err(catalog_err)?;
            t.iter()
                .map_err(catalog_err)?
                .map(|e| {
                    e.map(|(k, _)| Cid(medledger_core::Digest32(k.value())))
                        .map_err(catalog_err)
                })
                .collect()
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
    }

    pub(crate) fn root(&self) -> &Path {
        &self.shared.root
    }
}

impl Shared {
    fn init_tables(&self) -> Result<()> {
        let w = self.db.begin_write().map_err(catalog_err)?;
        w.open_table(BLOBS).map_err(catalog_err)?;
        w.open_table(ENVELOPES).map_err(catalog_err)?;
        w.open_table(ERASED).map_err(catalog_err)?;
        w.open_table(TO_ZERO).map_err(catalog_err)?;
        w.open_table(FILES_TO_ERASE).map_err(catalog_err)?;
        w.open_table(PACK_ENDS).map_err(catalog_err)?;
        w.commit().map_err(catalog_err)
    }

    /// Zeroes what batches appended but never committed (their entries hold sealed
    /// records and wrapped keys that nothing references), in every pack no live
    /// process is appending to: a writer holds its pack's lock while it owns it.
    fn zero_uncommitted_tails(&self) -> Result<()> {
        let ends: HashMap<u32, u64> = {
            let r = self.db.begin_read().map_err(catalog_err)?;
            let t = r.open_table(PACK_ENDS).map_err(catalog_err)?;
            t.iter()
                .map_err(catalog_err)?
                .map(|e| e.map(|(k, v)| (k.value(), v.value())))
                .collect::<std::result::Result<_, _>>()
                .map_err(catalog_err)?
        };
        for entry in std::fs::read_dir(self.root.join("packs"))? {
            let path = entry?.path();
            let Some(n) = path
                .file_name()
                .and_then(|f| f.to_str())
                .and_then(|f| f.strip_suffix(".pack"))
                .and_then(|f| f.parse::<u32>().ok())
            else {
                continue;
            };
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)?;
            if f.try_lock().is_err() {
                continue;
            }
            let end = ends.get(&n).copied().unwrap_or(0);
            let len = f.metadata()?.len();
            if len > end {
                let zeros = vec![0u8; 1 << 20];
                let mut at = end;
                while at < len {
                    let k = (len - at).min(zeros.len() as u64) as usize;
                    f.write_all_at(&zeros[..k], at)?;
                    at += k as u64;
                }
                f.sync_data()?;
                tracing::warn!(
                    pack = n,
                    bytes = len - end,
                    "zeroed entries a crash left uncommitted"
                );
            }
        }
        Ok(())
    }

    fn pack(&self, n: u32) -> Result<Arc<File>> {
        if let Some(f) = self.packs.read().expect("pack map").get(&n) {
            return Ok(f.clone());
        }
        let f = Arc::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(pack_path(&self.root, n))?,
        );
        self.packs.write().expect("pack map").insert(n, f.clone());
        Ok(f)
    }

    /// Reads the entry at `loc` if it still is `kind` for `cid` (it may have been
    /// zeroed since the catalog was read).
    fn read_entry(&self, loc: Loc, kind: u8, cid: &Cid) -> Result<Option<Vec<u8>>> {
        let (n, off, len) = loc;
        let mut buf = vec![0u8; ENTRY_HEADER + len as usize];
        self.pack(n)?.read_exact_at(&mut buf, off)?;
        if buf[..ENTRY_HEADER] != header(kind, cid, len as usize) {
            return Ok(None);
        }
        buf.drain(..ENTRY_HEADER);
        Ok(Some(buf))
    }

    /// Where the catalog says a blob's bytes and its envelope set lie now.
    fn locations(
        &self,
        r: &redb::ReadTransaction,
        key: [u8; 32],
    ) -> Result<(Option<Loc>, Option<Loc>)> {
        let at = |t: TableDefinition<[u8; 32], Loc>| -> Result<Option<Loc>> {
            Ok(r.open_table(t)
                .map_err(catalog_err)?
                .get(key)
                .map_err(catalog_err)?
                .map(|g| g.value()))
        };
        Ok((at(BLOBS)?, at(ENVELOPES)?))
    }

    fn entries(&self, cid: &Cid, want_blob: bool) -> Result<Entries> {
        // An entry zeroed between the catalog read and the file read (erasure or a new
        // envelope set) is looked up again: the next look sees the change.
        let key = cid.0.0;
        for _ in 0..READ_ATTEMPTS {
            let r = self.db.begin_read().map_err(catalog_err)?;
            let (blob_loc, env_loc) = self.locations(&r, key)?;
            if blob_loc.is_none() && env_loc.is_none() {
                let erased = r
                    .open_table(ERASED)
                    .map_err(catalog_err)?
                    .get(key)
                    .map_err(catalog_err)?
                    .is_some();
                return Ok(Entries {
                    blob: None,
                    envelopes: None,
                    erased,
                });
            }
            let blob = match blob_loc.filter(|_| want_blob) {
                Some(loc) => match self.read_entry(loc, KIND_BLOB, cid)? {
                    Some(b) => Some(b),
                    None => continue,
                },
                None => None,
            };
            let envelopes = match env_loc {
                Some(loc) => match self.read_entry(loc, KIND_ENVELOPES, cid)? {
                    Some(e) => Some(e),
                    None => continue,
                },
                None => None,
            };
            // Zeroing follows the commit that drops an entry, so bytes read while the
            // catalog still names the same places are whole; if it moved, read again.
            let again = self.db.begin_read().map_err(catalog_err)?;
            if self.locations(&again, key)? != (blob_loc, env_loc) {
                continue;
            }
            return Ok(Entries {
                blob,
                envelopes,
                erased: false,
            });
        }
        Err(StoreError::Corrupt {
            cid: *cid,
            detail: "its catalog entry points at bytes that are not its own".into(),
        })
    }

    /// Zeroes what an interrupted erasure or replacement left, then forgets it.
    fn finish_zeroing(&self) -> Result<()> {
        let regions: Vec<(u32, u64, u32)> = {
            let r = self.db.begin_read().map_err(catalog_err)?;
            let t = r.open_table(TO_ZERO).map_err(catalog_err)?;
            t.iter()
                .map_err(catalog_err)?
                // Stored as the whole entry's length; `zero` takes the payload's.
                .map(|e| {
                    e.map(|(k, v)| {
                        let (n, off) = k.value();
                        (n, off, v.value().saturating_sub(ENTRY_HEADER as u32))
                    })
                })
                .collect::<std::result::Result<_, _>>()
                .map_err(catalog_err)?
        };
        let files: Vec<[u8; 32]> = {
            let r = self.db.begin_read().map_err(catalog_err)?;
            let t = r.open_table(FILES_TO_ERASE).map_err(catalog_err)?;
            t.iter()
                .map_err(catalog_err)?
                .map(|e| e.map(|(k, _)| k.value()))
                .collect::<std::result::Result<_, _>>()
                .map_err(catalog_err)?
        };
        if regions.is_empty() && files.is_empty() {
            return Ok(());
        }
        self.zero(&regions)?;
        for cid in &files {
            zero_and_remove(&blob_file(&self.root, &Cid(medledger_core::Digest32(*cid))))?;
        }
        let w = self.db.begin_write().map_err(catalog_err)?;
        {
            let mut t = w.open_table(TO_ZERO).map_err(catalog_err)?;
            for (n, off, _) in &regions {
                t.remove((*n, *off)).map_err(catalog_err)?;
            }
            let mut t = w.open_table(FILES_TO_ERASE).map_err(catalog_err)?;
            for cid in &files {
                t.remove(cid).map_err(catalog_err)?;
            }
        }
        w.commit().map_err(catalog_err)
    }

    /// Overwrites entries with zeros and flushes each pack touched. A pack removed
    /// by compaction has nothing left to zero.
    fn zero(&self, regions: &[(u32, u64, u32)]) -> Result<()> {
        let mut touched: Vec<u32> = Vec::new();
        for &(n, off, len) in regions {
            if !pack_path(&self.root, n).exists() {
                continue;
            }
            let zeros = vec![0u8; ENTRY_HEADER + len as usize];
            self.pack(n)?.write_all_at(&zeros, off)?;
            if !touched.contains(&n) {
                touched.push(n);
            }
        }
        for n in touched {
            self.pack(n)?.sync_data()?;
        }
        Ok(())
    }
}

/// The one thread that changes packs and catalog.
struct Writer {
    shared: Arc<Shared>,
    /// The pack being appended to, and its length.
    pack: Option<(u32, Arc<File>, u64)>,
    next: u32,
    /// Regions zeroed by the last batch, dropped from `TO_ZERO` by the next commit.
    zeroed: Vec<(u32, u64)>,
    /// Large blobs whose files the last batch zeroed and removed, dropped from
    /// `FILES_TO_ERASE` by the next commit.
    erased_files: Vec<[u8; 32]>,
}

/// What one job of a batch appended.
#[derive(Default, Clone, Copy)]
struct Appended {
    blob: Option<Loc>,
    envelopes: Option<Loc>,
}

impl Writer {
    fn run(mut self, rx: std::sync::mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            // Everyone who queued before this batch starts shares its flushes.
            let mut batch = vec![first];
            batch.extend(rx.try_iter());
            match self.apply(&batch) {
                Ok(results) => {
                    for (job, r) in batch.into_iter().zip(results) {
                        let _ = job.done.send(r);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "record store batch failed");
                    let msg = e.to_string();
                    for job in batch {
                        let _ = job
                            .done
                            .send(Err(StoreError::Io(std::io::Error::other(msg.clone()))));
                    }
                }
            }
        }
    }

    fn current_pack(&mut self, need: u64) -> Result<(u32, Arc<File>, u64)> {
        if let Some((n, f, len)) = &self.pack
            && (*len == 0 || len + need <= PACK_LIMIT)
        {
            return Ok((*n, f.clone(), *len));
        }
        // Another process sharing the store may have taken the next number.
        let (n, f) = loop {
            let n = self.next;
            self.next += 1;
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(pack_path(&self.shared.root, n))
            {
                Ok(f) => {
                    // Held while this process appends to it (released with the file),
                    // so no other process's open zeroes its uncommitted tail.
                    f.lock()?;
                    break (n, Arc::new(f));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e.into()),
            }
        };
        File::open(self.shared.root.join("packs"))?.sync_all()?;
        self.shared
            .packs
            .write()
            .expect("pack map")
            .insert(n, f.clone());
        self.pack = Some((n, f.clone(), 0));
        Ok((n, f, 0))
    }

    /// Applies a batch: appends, one flush, one catalog commit, zeroing. The outer
    /// error fails the whole batch; the inner results are each job's own answer.
    fn apply(&mut self, batch: &[Job]) -> Result<Vec<Result<()>>> {
        let mut buf: Vec<u8> = Vec::new();
        let mut appended = vec![Appended::default(); batch.len()];
        let need: u64 = batch
            .iter()
            .map(|j| match &j.op {
                Op::Put {
                    blob, envelopes, ..
                } => {
                    blob.as_ref().map_or(0, |b| b.len() + ENTRY_HEADER)
                        + envelopes.len()
                        + ENTRY_HEADER
                }
                Op::Envelopes { envelopes, .. } => envelopes.len() + ENTRY_HEADER,
                Op::Erase { .. } => 0,
            } as u64)
            .sum();
        if need > 0 {
            let (n, file, base) = self.current_pack(need)?;
            let mut push = |kind: u8, cid: &Cid, bytes: &[u8]| -> Loc {
                let at = base + buf.len() as u64;
                buf.extend_from_slice(&header(kind, cid, bytes.len()));
                buf.extend_from_slice(bytes);
                (n, at, bytes.len() as u32)
            };
            for (job, out) in batch.iter().zip(appended.iter_mut()) {
                match &job.op {
                    Op::Put {
                        cid,
                        blob,
                        envelopes,
                    } => {
                        out.blob = blob.as_ref().map(|b| push(KIND_BLOB, cid, b));
                        out.envelopes = Some(push(KIND_ENVELOPES, cid, envelopes));
                    }
                    Op::Envelopes { cid, envelopes } => {
                        out.envelopes = Some(push(KIND_ENVELOPES, cid, envelopes));
                    }
                    Op::Erase { .. } => {}
                }
            }
            file.write_all_at(&buf, base)?;
            file.sync_data()?;
            if let Some((_, _, len)) = &mut self.pack {
                *len = base + buf.len() as u64;
            }
            return self.settle(batch, &appended).inspect_err(|_| {
                // Nothing references what this batch appended: zero it now, before
                // a later commit moves the pack's committed end past it.
                let _ = file
                    .write_all_at(&vec![0u8; buf.len()], base)
                    .and_then(|_| file.sync_data());
            });
        }
        self.settle(batch, &appended)
    }

    /// A batch's catalog commit, then the zeroing of what it dropped.
    fn settle(&mut self, batch: &[Job], appended: &[Appended]) -> Result<Vec<Result<()>>> {
        let mut results = Vec::with_capacity(batch.len());
        let mut to_zero: Vec<Loc> = Vec::new();
        let mut files_to_erase: Vec<Cid> = Vec::new();
        let w = self.shared.db.begin_write().map_err(catalog_err)?;
        {
            let mut blobs = w.open_table(BLOBS).map_err(catalog_err)?;
            let mut envs = w.open_table(ENVELOPES).map_err(catalog_err)?;
            let mut erased = w.open_table(ERASED).map_err(catalog_err)?;
            let mut pending = w.open_table(TO_ZERO).map_err(catalog_err)?;
            let mut pending_files = w.open_table(FILES_TO_ERASE).map_err(catalog_err)?;
            for key in self.zeroed.drain(..) {
                pending.remove(key).map_err(catalog_err)?;
            }
            for key in self.erased_files.drain(..) {
                pending_files.remove(key).map_err(catalog_err)?;
            }
            if let Some((n, _, end)) = &self.pack {
                w.open_table(PACK_ENDS)
                    .map_err(catalog_err)?
                    .insert(*n, *end)
                    .map_err(catalog_err)?;
            }
            for (job, got) in batch.iter().zip(appended) {
                let r = match &job.op {
                    Op::Put { cid, .. } => {
                        let key = cid.0.0;
                        if erased.get(key).map_err(catalog_err)?.is_some() {
                            // An erased CID never comes back (a restore or import of
                            // old bytes included).
                            to_zero.extend(got.blob.iter().chain(&got.envelopes));
                            Err(StoreError::Erased(*cid))
                        } else {
                            if let Some(loc) = got.blob
                                && let Some(old) = blobs.insert(key, loc).map_err(catalog_err)?
                            {
                                to_zero.push(old.value());
                            }
                            if let Some(loc) = got.envelopes
                                && let Some(old) = envs.insert(key, loc).map_err(catalog_err)?
                            {
                                to_zero.push(old.value());
                            }
                            Ok(())
                        }
                    }
                    Op::Envelopes { cid, .. } => {
                        let key = cid.0.0;
                        let loc = got.envelopes.expect("appended above");
                        if envs.get(key).map_err(catalog_err)?.is_none() {
                            // The blob was erased (or never stored) meanwhile.
                            to_zero.push(loc);
                            Err(if erased.get(key).map_err(catalog_err)?.is_some() {
                                StoreError::Erased(*cid)
                            } else {
                                StoreError::NotFound(*cid)
                            })
                        } else {
                            let old = envs.insert(key, loc).map_err(catalog_err)?;
                            to_zero.extend(old.map(|g| g.value()));
                            Ok(())
                        }
                    }
                    Op::Erase { cid } => {
                        let key = cid.0.0;
                        let blob = blobs.remove(key).map_err(catalog_err)?.map(|g| g.value());
                        let env = envs.remove(key).map_err(catalog_err)?.map(|g| g.value());
                        if blob.is_none() {
                            files_to_erase.push(*cid);
                            pending_files.insert(key, ()).map_err(catalog_err)?;
                        }
                        to_zero.extend(blob.into_iter().chain(env));
                        erased.insert(key, ()).map_err(catalog_err)?;
                        Ok(())
                    }
                };
                results.push(r);
            }
            for &(n, off, len) in &to_zero {
                pending
                    .insert((n, off), ENTRY_HEADER as u32 + len)
                    .map_err(catalog_err)?;
            }
        }
        w.commit().map_err(catalog_err)?;

        // The catalog no longer points at these; now the bytes themselves go.
        self.shared.zero(&to_zero)?;
        self.zeroed = to_zero.iter().map(|&(n, off, _)| (n, off)).collect();
        for cid in &files_to_erase {
            zero_and_remove(&blob_file(&self.shared.root, cid))?;
        }
        self.erased_files = files_to_erase.iter().map(|c| c.0.0).collect();
        Ok(results)
    }
}

/// Overwrites a large blob's file with zeros, flushes, and unlinks it.
fn zero_and_remove(path: &Path) -> Result<()> {
    let f = match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let len = f.metadata()?.len();
    let zeros = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(zeros.len() as u64) as usize;
        f.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    f.sync_data()?;
    std::fs::remove_file(path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Flushes a large blob's file and the directories that name it.
pub(crate) fn flush_file(root: &Path, cid: &Cid) -> Result<()> {
    let path = blob_file(root, cid);
    File::open(&path)?.sync_all()?;
    let shard = path.parent().expect("blob files live in a shard directory");
    File::open(shard)?.sync_all()?;
    File::open(shard.parent().expect("shards live under blobs/"))?.sync_all()?;
    Ok(())
}

/// Where a blob's stored bytes lie, found by reading the packs and blob files
/// directly (no catalog lock): for operators' tooling and tamper tests, which may
/// run beside a node that holds the catalog open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAt {
    pub path: PathBuf,
    /// Offset of the sealed bytes within `path`.
    pub offset: u64,
    pub len: u64,
}

/// Finds the live copy of `cid`'s sealed bytes under a local store root.
pub fn find_stored(root: &Path, cid: &Cid) -> std::io::Result<Option<StoredAt>> {
    find_entry(root, cid, KIND_BLOB).and_then(|found| match found {
        Some(at) => Ok(Some(at)),
        None => {
            let path = blob_file(root, cid);
            match std::fs::metadata(&path) {
                Ok(m) => Ok(Some(StoredAt {
                    path,
                    offset: 0,
                    len: m.len(),
                })),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        }
    })
}

/// Finds the newest live copy of `cid`'s envelope set (JSON) under a local store root.
pub fn find_envelopes(root: &Path, cid: &Cid) -> std::io::Result<Option<StoredAt>> {
    find_entry(root, cid, KIND_ENVELOPES)
}

fn find_entry(root: &Path, cid: &Cid, kind: u8) -> std::io::Result<Option<StoredAt>> {
    let mut packs: Vec<PathBuf> = match std::fs::read_dir(root.join("packs")) {
        Ok(d) => d.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    packs.sort();
    let mut found = None;
    for path in packs {
        let bytes = std::fs::read(&path)?;
        let mut at = 0usize;
        while at + ENTRY_HEADER <= bytes.len() {
            let h = &bytes[at..at + ENTRY_HEADER];
            if h[..4] != MAGIC {
                // A zeroed entry: its length is gone too, so step to the next header.
                at += 1;
                continue;
            }
            let len = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes")) as usize;
            if h[4] == kind && h[12..] == cid.0.0 {
                found = Some(StoredAt {
                    path: path.clone(),
                    offset: (at + ENTRY_HEADER) as u64,
                    len: len as u64,
                });
            }
            at += ENTRY_HEADER + len;
        }
    }
    Ok(found)
}
