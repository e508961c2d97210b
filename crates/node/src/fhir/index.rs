//! The node-local FHIR index (`fhir.redb`): which records are FHIR resources of which
//! type, in creation order, and keyed search tokens. Search values are stored only as
//! HMAC-SHA256 under the node's FHIR key; dates (which cannot be compared as tokens)
//! live in a per-record document sealed with the same key. Patient custody keys and
//! each organisation's directory subject live here too, sealed.
//!
//! The ledger stays the source of truth for what exists, its versions and who may see
//! it; everything here can be rebuilt by re-reading the records.

use super::FhirError;
use crate::auth::secrets::LocalKey;
use hmac::{Hmac, Mac};
use medledger_core::{AccountId, RecordId};
use medledger_fhir::date::Range;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::path::Path;
use std::sync::Arc;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// `type ‖ 0 ‖ seq` → record id.
const TYPES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("types");
/// `token ‖ seq` → record id.
const TOKENS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tokens");
/// record id → sealed [`Doc`].
const DOCS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("docs");
/// patient account → keys sealed under the node key (custody until claimed).
const CUSTODY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("custody");
/// organisation → its directory subject account.
const DIRECTORY: TableDefinition<&str, &[u8]> = TableDefinition::new("directory");

/// What the index knows about one record (sealed at rest).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Doc {
    pub seq: u64,
    pub rtype: String,
    pub deleted: bool,
    /// The keyed tokens this record is indexed under (hex), to remove them on update.
    pub tokens: Vec<String>,
    pub dates: Vec<(String, i64, i64)>,
    /// The CID of the version indexed, to tell an up-to-date entry from a stale one.
    #[serde(default)]
    pub cid: Option<String>,
}

impl Doc {
    pub fn date_ranges<'a>(&'a self, param: &'a str) -> impl Iterator<Item = Range> + 'a {
        self.dates
            .iter()
            .filter(move |(p, _, _)| p == param)
            .map(|(_, lo, hi)| Range { lo: *lo, hi: *hi })
    }
}

/// One record version to (re-)index.
#[derive(Debug, Clone)]
pub struct IndexEntry {
    pub record: RecordId,
    pub rtype: String,
    /// Keyed search tokens ([`Index::token`]).
    pub tokens: Vec<[u8; 32]>,
    pub dates: Vec<(String, i64, i64)>,
    pub deleted: bool,
    /// The version's CID.
    pub cid: medledger_core::Cid,
}

/// `META` key: every record change committed at or below this ledger height is in
/// the index (see `catchup`).
const INDEXED_HEIGHT: &str = "indexed_height";

/// A write waiting for the index writer: records to index or forget, a custody
/// key, an organisation's directory subject. All index writes go through it.
enum Job {
    Entries(Vec<IndexEntry>),
    Remove(Vec<RecordId>),
    Custody(AccountId, Vec<u8>),
    /// The patient claimed their keys: the node's copy goes.
    Release(AccountId),
    Directory(String, AccountId),
    /// Everything up to this ledger height is indexed.
    Watermark(u64),
    /// Drops every search entry and the watermark (custody and directory stay): the
    /// start of a rebuild.
    ResetSearch,
}

type Reply = tokio::sync::oneshot::Sender<Result<(), String>>;

pub struct Index {
    inner: Arc<Inner>,
    /// To the writer thread, which commits every waiting write in one transaction
    /// (group commit: one fsync for many concurrent creates instead of one each).
    /// `None` only while dropping.
    writer: Option<std::sync::mpsc::Sender<(Job, Reply)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Closing the channel ends the writer thread, which holds the database; joining it
/// lets redb close the file cleanly before the process exits. A file left open is
/// repaired at the next open (a walk of every page: seconds per GB).
impl Drop for Index {
    fn drop(&mut self) {
        self.writer.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Inner {
    db: Database,
    key: LocalKey,
    mac_key: [u8; 32],
}

fn storage(e: impl std::fmt::Display) -> FhirError {
    FhirError::Internal(format!("fhir index: {e}"))
}

impl Index {
    pub fn open(path: &Path, key: [u8; 32]) -> Result<Self, FhirError> {
        let db = Database::create(path).map_err(storage)?;
        let mut w = db.begin_write().map_err(storage)?;
        w.set_quick_repair(true);
        {
            w.open_table(META).map_err(storage)?;
            for t in [TYPES, TOKENS, DOCS, CUSTODY] {
                w.open_table(t).map_err(storage)?;
            }
            w.open_table(DIRECTORY).map_err(storage)?;
        }
        w.commit().map_err(storage)?;
        let mac_key = {
            let mut m =
                <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&key).expect("any key length");
            m.update(b"medledger/fhir-search-key/v1");
            m.finalize().into_bytes().into()
        };
        let inner = Arc::new(Inner {
            db,
            key: LocalKey::new(key),
            mac_key,
        });
        let (writer, jobs) = std::sync::mpsc::channel();
        let w = inner.clone();
        let thread = std::thread::Builder::new()
            .name("fhir-index-writer".into())
            .spawn(move || w.write_loop(jobs))
            .map_err(storage)?;
        Ok(Index {
            inner,
            writer: Some(writer),
            thread: Some(thread),
        })
    }

    /// Indexes (or re-indexes, on update/delete) the records; returns once committed.
    pub async fn put(&self, entries: Vec<IndexEntry>) -> Result<(), FhirError> {
        self.submit(Job::Entries(entries)).await
    }

    /// Forgets records entirely (entries written ahead for a transaction the ledger
    /// then refused).
    pub async fn remove(&self, records: Vec<RecordId>) -> Result<(), FhirError> {
        self.submit(Job::Remove(records)).await
    }

    /// Keeps a patient's keys (sealed under the node key) until they claim them.
    pub async fn put_custody(&self, account: &AccountId, keys: &[u8]) -> Result<(), FhirError> {
        let sealed = self.inner.seal(keys, &account.0)?;
        self.submit(Job::Custody(*account, sealed)).await
    }

    /// Forgets a patient's keys once they hold them themselves.
    pub async fn release_custody(&self, account: &AccountId) -> Result<(), FhirError> {
        self.submit(Job::Release(*account)).await
    }

    /// Records that every record change up to `height` is indexed; written after
    /// (in the same order as) the entries queued before it.
    pub async fn set_indexed_height(&self, height: u64) -> Result<(), FhirError> {
        self.submit(Job::Watermark(height)).await
    }

    /// The height up to which every record change is indexed (0: none yet).
    pub fn indexed_height(&self) -> Result<u64, FhirError> {
        let r = self.inner.db.begin_read().map_err(storage)?;
        let meta = r.open_table(META).map_err(storage)?;
        Ok(meta
            .get(INDEXED_HEIGHT)
            .map_err(storage)?
            .map_or(0, |v| v.value()))
    }

    /// Empties the search tables (a rebuild from the ledger follows).
    pub async fn reset_search(&self) -> Result<(), FhirError> {
        self.submit(Job::ResetSearch).await
    }

    async fn submit(&self, job: Job) -> Result<(), FhirError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.writer
            .as_ref()
            .ok_or_else(|| storage("index writer stopped"))?
            .send((job, tx))
            .map_err(|_| storage("index writer stopped"))?;
        rx.await
            .map_err(|_| storage("index writer stopped"))?
            .map_err(storage)
    }
}

impl Inner {
    fn seal(&self, plain: &[u8], aad: &[u8]) -> Result<Vec<u8>, FhirError> {
        self.key
            .seal(plain, aad)
            .map_err(|e| FhirError::Internal(e.to_string()))
    }

    fn open_sealed(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, FhirError> {
        self.key
            .open(sealed, aad)
            .map_err(|e| FhirError::Internal(e.to_string()))
    }

    fn write_loop(&self, jobs: std::sync::mpsc::Receiver<(Job, Reply)>) {
        while let Ok(first) = jobs.recv() {
            let mut group = vec![first];
            group.extend(jobs.try_iter());
            let (work, replies): (Vec<Job>, Vec<Reply>) = group.into_iter().unzip();
            let result = self.write(work).map_err(|e| e.to_string());
            for r in replies {
                // The asker may have gone (request cancelled); the write stands.
                let _ = r.send(result.clone());
            }
        }
    }

    fn write(&self, jobs: Vec<Job>) -> Result<(), FhirError> {
        let mut w = self.db.begin_write().map_err(storage)?;
        // Each commit also saves the allocator state (and is two-phase), so opening
        // after a crash loads it instead of walking every page of a multi-GB file.
        w.set_quick_repair(true);
        for job in jobs {
            match job {
                Job::Entries(entries) => self.put_entries(&w, entries)?,
                Job::Remove(records) => self.remove_entries(&w, &records)?,
                Job::Custody(account, sealed) => {
                    w.open_table(CUSTODY)
                        .map_err(storage)?
                        .insert(&account.0[..], &sealed[..])
                        .map_err(storage)?;
                }
                Job::Release(account) => {
                    w.open_table(CUSTODY)
                        .map_err(storage)?
                        .remove(&account.0[..])
                        .map_err(storage)?;
                }
                Job::Directory(org, account) => {
                    w.open_table(DIRECTORY)
                        .map_err(storage)?
                        .insert(org.as_str(), &account.0[..])
                        .map_err(storage)?;
                }
                Job::Watermark(h) => {
                    let mut meta = w.open_table(META).map_err(storage)?;
                    let now = meta
                        .get(INDEXED_HEIGHT)
                        .map_err(storage)?
                        .map_or(0, |v| v.value());
                    meta.insert(INDEXED_HEIGHT, now.max(h)).map_err(storage)?;
                }
                Job::ResetSearch => {
                    for t in [TYPES, TOKENS, DOCS] {
                        w.delete_table(t).map_err(storage)?;
                        w.open_table(t).map_err(storage)?;
                    }
                    let mut meta = w.open_table(META).map_err(storage)?;
                    meta.remove(INDEXED_HEIGHT).map_err(storage)?;
                    meta.remove("seq").map_err(storage)?;
                }
            }
        }
        w.commit().map_err(storage)
    }

    fn remove_entries(
        &self,
        w: &redb::WriteTransaction,
        records: &[RecordId],
    ) -> Result<(), FhirError> {
        let mut types = w.open_table(TYPES).map_err(storage)?;
        let mut tokens = w.open_table(TOKENS).map_err(storage)?;
        let mut docs = w.open_table(DOCS).map_err(storage)?;
        for record in records {
            let Some(sealed) = docs.remove(&record.0.0[..]).map_err(storage)? else {
                continue;
            };
            let doc: Doc = serde_json::from_slice(&self.open_sealed(sealed.value(), &record.0.0)?)
                .map_err(storage)?;
            drop(sealed);
            for t in &doc.tokens {
                let mut k = hex::decode(t).map_err(storage)?;
                k.extend_from_slice(&doc.seq.to_be_bytes());
                tokens.remove(&k[..]).map_err(storage)?;
            }
            let mut k = doc.rtype.as_bytes().to_vec();
            k.push(0);
            k.extend_from_slice(&doc.seq.to_be_bytes());
            types.remove(&k[..]).map_err(storage)?;
        }
        Ok(())
    }

    fn put_entries(
        &self,
        w: &redb::WriteTransaction,
        entries: Vec<IndexEntry>,
    ) -> Result<(), FhirError> {
        {
            let mut meta = w.open_table(META).map_err(storage)?;
            let mut types = w.open_table(TYPES).map_err(storage)?;
            let mut tokens = w.open_table(TOKENS).map_err(storage)?;
            let mut docs = w.open_table(DOCS).map_err(storage)?;
            let mut next = meta
                .get("seq")
                .map_err(storage)?
                .map(|v| v.value())
                .unwrap_or(0);
            for IndexEntry {
                record,
                rtype,
                tokens: toks,
                dates,
                deleted,
                cid,
            } in entries
            {
                let old: Option<Doc> = match docs.get(&record.0.0[..]).map_err(storage)? {
                    Some(v) => Some(
                        serde_json::from_slice(&self.open_sealed(v.value(), &record.0.0)?)
                            .map_err(storage)?,
                    ),
                    None => None,
                };
                let seq = match &old {
                    Some(d) => {
                        for t in &d.tokens {
                            let mut k = hex::decode(t).map_err(storage)?;
                            k.extend_from_slice(&d.seq.to_be_bytes());
                            tokens.remove(&k[..]).map_err(storage)?;
                        }
                        d.seq
                    }
                    None => {
                        next += 1;
                        let mut k = rtype.as_bytes().to_vec();
                        k.push(0);
                        k.extend_from_slice(&next.to_be_bytes());
                        types.insert(&k[..], &record.0.0[..]).map_err(storage)?;
                        next
                    }
                };
                let toks = if deleted { Vec::new() } else { toks };
                for t in &toks {
                    let mut k = t.to_vec();
                    k.extend_from_slice(&seq.to_be_bytes());
                    tokens.insert(&k[..], &record.0.0[..]).map_err(storage)?;
                }
                let doc = Doc {
                    seq,
                    rtype,
                    deleted,
                    tokens: toks.iter().map(hex::encode).collect(),
                    dates,
                    cid: Some(cid.to_string()),
                };
                let sealed = self.seal(&serde_json::to_vec(&doc).map_err(storage)?, &record.0.0)?;
                docs.insert(&record.0.0[..], &sealed[..]).map_err(storage)?;
            }
            meta.insert("seq", next).map_err(storage)?;
        }
        Ok(())
    }
}

/// The search tables (derived from the ledger and the store; rebuilt by `reindex`).
/// Dumped before the ledger in a backup, so their watermark is at or below the
/// ledger's height and the restored node's catch-up indexes the rest.
pub(crate) fn dump_search(
    rtx: &redb::ReadTransaction,
    w: &mut impl std::io::Write,
) -> Result<(), FhirError> {
    use medledger_dump::dump_table;
    dump_table(rtx, META, w).map_err(storage)?;
    dump_table(rtx, TYPES, w).map_err(storage)?;
    dump_table(rtx, TOKENS, w).map_err(storage)?;
    dump_table(rtx, DOCS, w).map_err(storage)?;
    medledger_dump::end(w).map_err(storage)
}

/// The tables that exist nowhere else (custody keys, organisations' directory
/// subjects). Dumped after the ledger, so every account the backed-up ledger knows
/// has its keys.
pub(crate) fn dump_keys(
    rtx: &redb::ReadTransaction,
    w: &mut impl std::io::Write,
) -> Result<(), FhirError> {
    use medledger_dump::dump_table;
    dump_table(rtx, CUSTODY, w).map_err(storage)?;
    dump_table(rtx, DIRECTORY, w).map_err(storage)?;
    medledger_dump::end(w).map_err(storage)
}

/// Creates `fhir.redb` at `path` (which must not exist) from [`dump_search`] followed
/// by [`dump_keys`].
pub(crate) fn load_dumps(path: &Path, r: &mut impl std::io::Read) -> Result<u64, FhirError> {
    use medledger_dump::{insert, unknown_table};
    let db = medledger_dump::create_new(path).map_err(storage)?;
    let mut w = db.begin_write().map_err(storage)?;
    w.set_quick_repair(true);
    let mut n = 0;
    for _ in 0..2 {
        n += medledger_dump::load(r, &w, |w, table, k, v| match table {
            "meta" => insert(w, META, k, v),
            "types" => insert(w, TYPES, k, v),
            "tokens" => insert(w, TOKENS, k, v),
            "docs" => insert(w, DOCS, k, v),
            "custody" => insert(w, CUSTODY, k, v),
            "directory" => insert(w, DIRECTORY, k, v),
            other => Err(unknown_table(other)),
        })
        .map_err(storage)?;
    }
    w.commit().map_err(storage)?;
    Ok(n)
}

impl Index {
    /// The database, for a backup's dumps.
    pub(crate) fn database(&self) -> &Database {
        &self.inner.db
    }
}

impl Index {
    /// The keyed token of a search value: the index never holds the value itself.
    pub fn token(&self, rtype: &str, param: &str, value: &str) -> [u8; 32] {
        let mut m = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&self.inner.mac_key)
            .expect("any key length");
        for part in [rtype, param, value] {
            m.update(&(part.len() as u32).to_be_bytes());
            m.update(part.as_bytes());
        }
        m.finalize().into_bytes().into()
    }

    pub fn doc(&self, record: &RecordId) -> Result<Option<Doc>, FhirError> {
        let r = self.inner.db.begin_read().map_err(storage)?;
        let t = r.open_table(DOCS).map_err(storage)?;
        let Some(v) = t.get(&record.0.0[..]).map_err(storage)? else {
            return Ok(None);
        };
        let plain = self.inner.open_sealed(v.value(), &record.0.0)?;
        serde_json::from_slice(&plain).map(Some).map_err(storage)
    }

    /// Records indexed under `token`, as `(seq, record)` in creation order.
    pub fn lookup(&self, token: &[u8; 32]) -> Result<Vec<(u64, RecordId)>, FhirError> {
        self.by_prefix(TOKENS, token)
    }

    /// Every record of a type, as `(seq, record)` in creation order.
    pub fn of_type(&self, rtype: &str) -> Result<Vec<(u64, RecordId)>, FhirError> {
        let mut prefix = rtype.as_bytes().to_vec();
        prefix.push(0);
        self.by_prefix(TYPES, &prefix)
    }

    /// The `(seq, record)` entries of a `prefix ‖ seq` → record table under `prefix`.
    fn by_prefix(
        &self,
        table: TableDefinition<&[u8], &[u8]>,
        prefix: &[u8],
    ) -> Result<Vec<(u64, RecordId)>, FhirError> {
        let r = self.inner.db.begin_read().map_err(storage)?;
        let t = r.open_table(table).map_err(storage)?;
        let mut hi = prefix.to_vec();
        hi.extend_from_slice(&[0xff; 8]);
        let mut out = Vec::new();
        for e in t.range(prefix..=&hi[..]).map_err(storage)? {
            let (k, v) = e.map_err(storage)?;
            out.push((seq_of(k.value()), record_of(v.value())?));
        }
        Ok(out)
    }

    pub fn custody(&self, account: &AccountId) -> Result<Option<Vec<u8>>, FhirError> {
        let r = self.inner.db.begin_read().map_err(storage)?;
        let t = r.open_table(CUSTODY).map_err(storage)?;
        match t.get(&account.0[..]).map_err(storage)? {
            Some(v) => self.inner.open_sealed(v.value(), &account.0).map(Some),
            None => Ok(None),
        }
    }

    pub fn has_custody(&self, account: &AccountId) -> Result<bool, FhirError> {
        let r = self.inner.db.begin_read().map_err(storage)?;
        let t = r.open_table(CUSTODY).map_err(storage)?;
        Ok(t.get(&account.0[..]).map_err(storage)?.is_some())
    }

    /// Whether `account` is an organisation's directory subject (never claimable).
    pub fn is_directory(&self, account: &AccountId) -> Result<bool, FhirError> {
        let r = self.inner.db.begin_read().map_err(storage)?;
        let t = r.open_table(DIRECTORY).map_err(storage)?;
        for e in t.iter().map_err(storage)? {
            let (_, v) = e.map_err(storage)?;
            if v.value() == &account.0[..] {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub fn directory(&self, org: &str) -> Result<Option<AccountId>, FhirError> {
        let r = self.inner.db.begin_read().map_err(storage)?;
        let t = r.open_table(DIRECTORY).map_err(storage)?;
        Ok(t.get(org)
            .map_err(storage)?
            .and_then(|v| <[u8; 32]>::try_from(v.value()).ok())
            .map(AccountId))
    }

    pub async fn put_directory(&self, org: &str, account: &AccountId) -> Result<(), FhirError> {
        self.submit(Job::Directory(org.to_owned(), *account)).await
    }
}

fn seq_of(k: &[u8]) -> u64 {
    let n = k.len();
    u64::from_be_bytes(k[n - 8..].try_into().expect("8 bytes"))
}

fn record_of(v: &[u8]) -> Result<RecordId, FhirError> {
    <[u8; 32]>::try_from(v)
        .map(|b| RecordId(medledger_core::Digest32(b)))
        .map_err(|_| storage("record id"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dropping the index joins its writer thread, which holds the database, so the
    /// file is closed when the drop returns: reopening at once succeeds (a file still
    /// open refuses with "already open"; a process exiting then leaves it unclosed).
    #[tokio::test(flavor = "multi_thread")]
    async fn dropping_the_index_closes_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fhir.redb");
        for h in 1..=20 {
            let index = Index::open(&path, [7; 32]).unwrap_or_else(|e| panic!("open {h}: {e}"));
            index.set_indexed_height(h).await.unwrap();
            drop(index);
        }
        assert_eq!(
            Index::open(&path, [7; 32])
                .unwrap()
                .indexed_height()
                .unwrap(),
            20
        );
    }
}
