//! Taking a backup while the node runs.
//!
//! Order matters, because each database is read in its own transaction:
//! 1. the FHIR search tables, so their watermark is at or below the ledger's height
//!    (the restored node's catch-up indexes the rest), and the audit queue, so a
//!    report is in the queue or on the ledger (it may be in both: the restored node
//!    then reports it twice, which beats losing it);
//! 2. the ledger: this fixes the height the backup covers;
//! 3. the Raft vote, custody keys and accounts, after the ledger, so
//!    everything the backed-up ledger names (an account, a custodial patient) is there
//!    (what they hold beyond the ledger's height is harmless: keys of accounts it does
//!    not know yet);
//! 4. the blobs, listed after the ledger, so every CID it registered is among them;
//!    a blob erased since (its erasure is after the backup's height) is recorded as
//!    such, and any other registered CID the store lacks fails the backup.

use super::{
    BackupError, FILES, FORMAT, FileEntry, Manifest, Progress, Result, io, node_err, tag, tag_key,
};
use crate::auth::directory::Directory;
use medledger_consensus::LogStore;
use medledger_core::{Cid, Genesis, NodeSigner};
use medledger_ledger::Ledger;
use medledger_store::BlobStore;
use redb::ReadableDatabase;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Magic at the start of `state.age`'s plaintext and of every blob file's.
pub(crate) const STATE_MAGIC: &[u8; 8] = b"MLBKST01";
pub(crate) const BLOBS_MAGIC: &[u8; 8] = b"MLBKBL01";
/// Pieces a blob is written in (bounded memory for large blobs).
pub(crate) const PIECE: usize = 1 << 20;

/// What a backup reads: the node's open databases and store (the running node's own
/// handles, or ones the CLI opened while the node is stopped).
pub(crate) struct Sources<'a> {
    pub data_dir: &'a Path,
    pub genesis: &'a Genesis,
    pub node: &'a NodeSigner,
    pub ledger: &'a Ledger,
    pub raft_log: &'a LogStore,
    pub fhir_index: &'a redb::Database,
    pub accounts: &'a Directory,
    pub audit_queue: &'a redb::Database,
    pub store: &'a BlobStore,
}

/// Counts and hashes what passes through to the file, so a finished file's size and
/// SHA-256 are known without reading it back.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// An age-encrypted file being written; `finish` makes it durable under its name.
struct Sealed {
    path: PathBuf,
    partial: PathBuf,
    w: age::stream::StreamWriter<Hashing<BufWriter<std::fs::File>>>,
}

impl Sealed {
    fn create(path: PathBuf, recipients: &[age::x25519::Recipient]) -> Result<Self> {
        let partial = path.with_extension("partial");
        let f = create_new(&partial)?;
        let enc =
            age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
                .map_err(|e| BackupError::Config(format!("recipients: {e}")))?;
        let w = enc
            .wrap_output(Hashing {
                inner: BufWriter::with_capacity(1 << 20, f),
                hash: Sha256::new(),
                bytes: 0,
            })
            .map_err(io(&partial))?;
        Ok(Sealed { path, partial, w })
    }

    fn finish(self) -> Result<FileEntry> {
        let hashing = self.w.finish().map_err(io(&self.partial))?;
        let (bytes, sha256) = (hashing.bytes, hex::encode(hashing.hash.finalize()));
        let f = hashing
            .inner
            .into_inner()
            .map_err(|e| io(&self.partial)(e.into_error()))?;
        f.sync_all().map_err(io(&self.partial))?;
        drop(f);
        std::fs::rename(&self.partial, &self.path).map_err(io(&self.path))?;
        Ok(FileEntry {
            path: String::new(),
            bytes,
            sha256,
        })
    }
}

fn dump_err(e: impl std::fmt::Display) -> BackupError {
    node_err(format!("dump: {e}"))
}

/// A blob file's sidecar: its size and hash, so later backups list it without
/// reading it again (a wrong sidecar makes their verify fail, never pass).
#[derive(serde::Serialize, serde::Deserialize)]
struct Sum {
    bytes: u64,
    sha256: String,
}

/// What the destination already holds: the tags of every blob file and the files.
fn existing(dest: &Path) -> Result<(HashSet<[u8; super::TAG_LEN]>, Vec<FileEntry>)> {
    let dir = dest.join("blobs");
    let mut tags = HashSet::new();
    let mut files = Vec::new();
    let mut names: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".tags"))
                    .map(str::to_owned)
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io(&dir)(e)),
    };
    names.sort();
    for name in names {
        let age_path = dir.join(format!("{name}.age"));
        let sum_path = dir.join(format!("{name}.sum"));
        // A blob file some interrupted backup left without its sum is not relied on.
        let Ok(sum) = std::fs::read(&sum_path) else {
            continue;
        };
        if !age_path.exists() {
            continue;
        }
        let sum: Sum = serde_json::from_slice(&sum)
            .map_err(|e| BackupError::Bad(format!("{}: {e}", sum_path.display())))?;
        let tag_path = dir.join(format!("{name}.tags"));
        let t = std::fs::read(&tag_path).map_err(io(&tag_path))?;
        if t.len() % super::TAG_LEN != 0 {
            return Err(BackupError::Bad(format!(
                "{} is not a whole number of tags",
                tag_path.display()
            )));
        }
        for c in t.chunks_exact(super::TAG_LEN) {
            tags.insert(c.try_into().expect("chunk"));
        }
        files.push(FileEntry {
            path: format!("blobs/{name}.age"),
            bytes: sum.bytes,
            sha256: sum.sha256,
        });
    }
    Ok((tags, files))
}

fn now_ms() -> u64 {
    crate::reporter::now_ms()
}

fn sync_dir(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io(path))
}

/// Takes a backup of `src` into `dest` for `recipients`. Writers are never paused.
pub(crate) async fn create(
    src: &Sources<'_>,
    dest: &Path,
    recipients: &[age::x25519::Recipient],
    progress: &dyn Progress,
) -> Result<Manifest> {
    if recipients.is_empty() {
        return Err(BackupError::Config("no backup recipients".into()));
    }
    check_dest(src.data_dir, dest)?;
    std::fs::create_dir_all(dest.join("blobs")).map_err(io(dest))?;
    let created_ms = now_ms();
    let mut name = format!("backup-{created_ms:013}");
    while dest.join(&name).exists() {
        name.push('x');
    }
    let dir = dest.join(&name);
    std::fs::create_dir(&dir).map_err(io(&dir))?;
    let (present, mut files) = existing(dest)?;
    let base = files.last().map(|f| {
        f.path
            .trim_start_matches("blobs/")
            .trim_end_matches(".age")
            .to_owned()
    });

    // 1–2: the search tables' view, then the ledger's.
    let search = src.fhir_index.begin_read().map_err(dump_err)?;
    let queue = src.audit_queue.begin_read().map_err(dump_err)?;
    let ledger = src.ledger.snapshot_reader().map_err(dump_err)?;
    let tip = ledger.tip().clone();

    let state_path = dir.join("state.age");
    let mut state = Sealed::create(state_path.clone(), recipients)?;
    let sw = &mut state.w;
    let we = io(&state_path);
    progress.stage("secrets and ledger", None);
    tokio::task::block_in_place(|| -> Result<()> {
        sw.write_all(STATE_MAGIC).map_err(&we)?;
        for f in FILES {
            let p = src.data_dir.join(f);
            match std::fs::read(&p) {
                Ok(bytes) => {
                    sw.write_all(b"F").map_err(&we)?;
                    medledger_dump::write_field(sw, f.as_bytes()).map_err(dump_err)?;
                    medledger_dump::write_field(sw, &bytes).map_err(dump_err)?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&p)(e)),
            }
        }
        sw.write_all(b"L").map_err(&we)?;
        ledger.dump(sw).map_err(dump_err)?;
        // 3: after the ledger.
        sw.write_all(b"R").map_err(&we)?;
        let vote = src.raft_log.vote_bytes().map_err(dump_err)?;
        medledger_dump::write_field(sw, vote.as_deref().unwrap_or_default()).map_err(dump_err)?;
        sw.write_all(b"I").map_err(&we)?;
        crate::fhir::index::dump_search(&search, sw).map_err(dump_err)?;
        drop(search);
        let keys = src.fhir_index.begin_read().map_err(dump_err)?;
        crate::fhir::index::dump_keys(&keys, sw).map_err(dump_err)?;
        drop(keys);
        sw.write_all(b"A").map_err(&we)?;
        src.accounts.dump(sw).map_err(dump_err)?;
        sw.write_all(b"Q").map_err(&we)?;
        crate::audit_queue::dump(&queue, sw).map_err(dump_err)?;
        Ok(())
    })?;

    // 4: the blobs, after the ledger.
    let cids = src.store.cids().await.map_err(node_err)?;
    progress.stage("blobs", Some(cids.len() as u64));
    let key = tag_key(src.node);
    let blob_name = name.clone();
    let blobs_path = dest.join("blobs").join(format!("{blob_name}.age"));
    let mut blobs = Sealed::create(blobs_path.clone(), recipients)?;
    blobs.w.write_all(BLOBS_MAGIC).map_err(io(&blobs_path))?;
    let mut new_tags: Vec<[u8; super::TAG_LEN]> = Vec::new();
    let mut catalog: Vec<(Cid, [u8; 32])> = Vec::with_capacity(cids.len());
    let (mut blobs_new, mut bytes_new) = (0u64, 0u64);
    for cid in cids {
        progress.advance(1);
        // Erased (or never completed) since the listing: not part of this backup.
        let env = match src.store.envelope_bytes(&cid).await {
            Ok(e) => e,
            Err(
                medledger_store::StoreError::Erased(_) | medledger_store::StoreError::NotFound(_),
            ) => {
                continue;
            }
            Err(e) => return Err(node_err(format!("blob {cid}: {e}"))),
        };
        let env_hash: [u8; 32] = Sha256::digest(&env).into();
        let blob_tag = tag(&key, b'B', &cid, &cid.0.0);
        let env_tag = tag(&key, b'V', &cid, &env_hash);
        let w = &mut blobs.w;
        let we = io(&blobs_path);
        if !present.contains(&blob_tag) {
            w.write_all(b"B").map_err(&we)?;
            w.write_all(&cid.0.0).map_err(&we)?;
            let mut failed = None;
            let read = src
                .store
                .read_sealed(&cid, |piece| {
                    for p in piece.chunks(PIECE) {
                        w.write_all(&(p.len() as u32).to_le_bytes())?;
                        w.write_all(p)?;
                    }
                    Ok(())
                })
                .await;
            match read {
                Ok(n) => bytes_new += n,
                Err(medledger_store::StoreError::Erased(_)) => failed = Some(()),
                Err(e) => {
                    return Err(node_err(format!("blob {cid} cannot be backed up: {e}")));
                }
            }
            if failed.is_some() {
                // Erased while being read: the record is cut short; a restore refuses
                // a blob that does not hash to its CID, so mark it as dropped.
                w.write_all(&u32::MAX.to_le_bytes()).map_err(&we)?;
                continue;
            }
            w.write_all(&0u32.to_le_bytes()).map_err(&we)?;
            blobs_new += 1;
            new_tags.push(blob_tag);
        }
        if !present.contains(&env_tag) || new_tags.last() == Some(&blob_tag) {
            w.write_all(b"V").map_err(&we)?;
            w.write_all(&cid.0.0).map_err(&we)?;
            medledger_dump::write_field(w, &env).map_err(dump_err)?;
            new_tags.push(env_tag);
        }
        catalog.push((cid, env_hash));
    }
    blobs.w.write_all(b"Z").map_err(io(&blobs_path))?;
    let erased_since = check_registered(&ledger, &catalog, src.store).await?;
    drop(ledger);

    // The catalog closes the state file.
    tokio::task::block_in_place(|| -> Result<()> {
        let sw = &mut state.w;
        let we = io(&state_path);
        sw.write_all(b"C").map_err(&we)?;
        sw.write_all(&(catalog.len() as u64).to_le_bytes())
            .map_err(&we)?;
        for (cid, h) in &catalog {
            sw.write_all(&cid.0.0).map_err(&we)?;
            sw.write_all(h).map_err(&we)?;
        }
        sw.write_all(b"X").map_err(&we)?;
        sw.write_all(&(erased_since.len() as u64).to_le_bytes())
            .map_err(&we)?;
        for cid in &erased_since {
            sw.write_all(&cid.0.0).map_err(&we)?;
        }
        sw.write_all(b"Z").map_err(&we)?;
        Ok(())
    })?;
    let mut state_entry = tokio::task::block_in_place(|| state.finish())?;
    state_entry.path = format!("{name}/state.age");

    let blobs_dir = dest.join("blobs");
    if new_tags.is_empty() {
        drop(blobs);
        let _ = std::fs::remove_file(blobs_path.with_extension("partial"));
    } else {
        let mut entry = tokio::task::block_in_place(|| blobs.finish())?;
        entry.path = format!("blobs/{blob_name}.age");
        new_tags.sort();
        let tags_path = blobs_dir.join(format!("{blob_name}.tags"));
        write_durable(&tags_path, &new_tags.concat())?;
        let sum = Sum {
            bytes: entry.bytes,
            sha256: entry.sha256.clone(),
        };
        write_durable(
            &blobs_dir.join(format!("{blob_name}.sum")),
            &serde_json::to_vec(&sum).expect("sum serializes"),
        )?;
        files.push(entry);
    }
    sync_dir(&blobs_dir)?;
    files.insert(0, state_entry);

    let tree_head = if tip.log_size > 0 {
        src.ledger
            .checkpoint(Some(tip.log_size))
            .ok()
            .map(|c| c.to_note())
    } else {
        None
    };
    let mut manifest = Manifest {
        format: FORMAT,
        name: name.clone(),
        created_ms,
        chain_id: src.genesis.chain_id.to_string(),
        genesis_hash: src.genesis.hash().to_string(),
        node_key: src.node.public().to_string(),
        height: tip.height,
        block_hash: tip.hash.to_string(),
        tree_size: tip.log_size,
        tree_head,
        blobs: catalog.len() as u64,
        blobs_new,
        bytes_new,
        base,
        files,
        signature: String::new(),
    };
    manifest.sign(src.node);
    // The manifest last: its presence marks a complete backup.
    write_durable(
        &dir.join("manifest.json"),
        &serde_json::to_vec_pretty(&manifest).expect("manifest serializes"),
    )?;
    sync_dir(&dir)?;
    sync_dir(dest)?;
    tracing::info!(
        name = %manifest.name,
        height = manifest.height,
        blobs = manifest.blobs,
        blobs_new = manifest.blobs_new,
        "backup written"
    );
    Ok(manifest)
}

/// Every CID the backed-up ledger registered is in the catalog, or was erased from
/// the store after the ledger was read (returned: a restore accepts exactly those).
async fn check_registered(
    ledger: &medledger_ledger::LedgerSnapshot,
    catalog: &[(Cid, [u8; 32])],
    store: &BlobStore,
) -> Result<Vec<Cid>> {
    let have: HashSet<Cid> = catalog.iter().map(|(c, _)| *c).collect();
    let state = ledger.state().map_err(dump_err)?;
    let missing = super::registered_missing(&state, |c| have.contains(c)).map_err(dump_err)?;
    let mut erased_since = Vec::new();
    for cid in missing {
        match store.envelope_set(&cid).await {
            Err(medledger_store::StoreError::Erased(_)) => erased_since.push(cid),
            Ok(_) => {
                return Err(node_err(format!(
                    "blob {cid} was not listed by the record store: try again"
                )));
            }
            Err(e) => {
                return Err(node_err(format!(
                    "blob {cid}, registered on the ledger, is not in the record store ({e}): \
                     a backup without it could not be restored"
                )));
            }
        }
    }
    Ok(erased_since)
}

/// A destination inside the data directory (or holding it) would be lost with it.
pub(crate) fn check_dest(data_dir: &Path, dest: &Path) -> Result<()> {
    let (d, data) = (resolved(dest), resolved(data_dir));
    if d.starts_with(&data) || data.starts_with(&d) {
        return Err(BackupError::Config(
            "the backup destination must not be inside the data directory (nor hold it): \
             losing the disk would lose both"
                .into(),
        ));
    }
    Ok(())
}

/// `path` with symbolic links and `..` resolved, for the part of it that exists.
fn resolved(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(c) = std::fs::canonicalize(existing) {
            return rest.iter().rev().fold(c, |p, r| p.join(r));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return abs,
        }
    }
}

/// A new file that must not exist: whoever can write the destination cannot plant a
/// link there that the node would follow and truncate.
fn create_new(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io(path))
}

/// Writes `bytes` to `path` through a temporary file, durably.
fn write_durable(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = create_new(&tmp)?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// A backup of the node serving `state` (through its admin socket, or scheduled).
pub async fn create_running(
    state: &crate::state::AppState,
    data_dir: &Path,
    dest: &Path,
    progress: &dyn Progress,
) -> Result<Manifest> {
    let recipients = super::recipients(data_dir)?;
    let dd = crate::datadir::load(data_dir).map_err(node_err)?;
    let src = Sources {
        data_dir,
        genesis: &dd.genesis,
        node: &dd.node,
        ledger: &state.ledger,
        raft_log: &state.raft_log,
        fhir_index: state.fhir.index().database(),
        accounts: state.auth.directory(),
        audit_queue: state.reporter.queue().database(),
        store: &state.store,
    };
    create(&src, dest, &recipients, progress).await
}

/// redb's page cache per database when the CLI reads a stopped node's: a dump reads
/// each page once, so a large cache only holds memory (redb's default is 1 GiB).
const OFFLINE_CACHE: usize = 16 << 20;

/// A backup of a stopped node: the CLI opens its databases itself (they are locked
/// while a node runs; then the node's admin socket takes the backup).
pub async fn create_offline(
    data_dir: &Path,
    dest: &Path,
    progress: &dyn Progress,
) -> Result<Manifest> {
    use crate::datadir::{AUDIT_QUEUE_DB, BLOBS_DIR, LEDGER_DB, RAFT_DB};
    let recipients = super::recipients(data_dir)?;
    let dd = crate::datadir::load(data_dir).map_err(node_err)?;
    let locked = |what: &str, e: &dyn std::fmt::Display| {
        BackupError::Node(format!(
            "cannot open {what} ({e}); if the node is running, its admin socket takes the backup"
        ))
    };
    check_dest(data_dir, dest)?;
    for f in [LEDGER_DB, RAFT_DB] {
        if !data_dir.join(f).exists() {
            return Err(BackupError::Config(format!(
                "{} has no {f}: the node has never served, there is nothing to back up yet",
                data_dir.display()
            )));
        }
    }
    let ledger = Ledger::open_with_cache(
        &data_dir.join(LEDGER_DB),
        dd.genesis.clone(),
        dd.node.clone(),
        dd.node_id,
        Some(OFFLINE_CACHE),
    )
    .map_err(|e| locked("the ledger", &e))?;
    let raft_log =
        LogStore::open(&data_dir.join(RAFT_DB)).map_err(|e| locked("the Raft log", &e))?;
    // Databases the node has not created yet are backed up empty (and not created
    // here: the FHIR index, say, must come with its key).
    let scratch = tempfile::tempdir().map_err(io(&std::env::temp_dir()))?;
    let existing_or_scratch = |name: &str| {
        let p = data_dir.join(name);
        if p.exists() {
            p
        } else {
            scratch.path().join(name)
        }
    };
    let small = || {
        let mut b = redb::Database::builder();
        b.set_cache_size(OFFLINE_CACHE);
        b
    };
    let fhir_index = small()
        .create(existing_or_scratch("fhir.redb"))
        .map_err(|e| locked("the FHIR index", &e))?;
    let accounts =
        Directory::open_with_cache(&existing_or_scratch("accounts.redb"), Some(OFFLINE_CACHE))
            .map_err(|e| locked("the sign-in directory", &e))?;
    let audit_queue = small()
        .create(existing_or_scratch(AUDIT_QUEUE_DB))
        .map_err(|e| locked("the audit queue", &e))?;
    let store = BlobStore::open(&medledger_store::StoreConfig::Local {
        path: data_dir.join(BLOBS_DIR),
    })
    .map_err(|e| locked("the record store", &e))?;
    let src = Sources {
        data_dir,
        genesis: &dd.genesis,
        node: &dd.node,
        ledger: &ledger,
        raft_log: &raft_log,
        fhir_index: &fhir_index,
        accounts: &accounts,
        audit_queue: &audit_queue,
        store: &store,
    };
    create(&src, dest, &recipients, progress).await
}
