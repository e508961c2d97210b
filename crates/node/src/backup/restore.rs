//! Checking a backup and restoring it onto a new data directory.
//!
//! Nothing in a backup is trusted before it checks: every file against the size and
//! SHA-256 its signed manifest gives, the manifest's signature against the node key
//! its genesis lists, every age stream's authentication (a flipped byte, a cut or a
//! wrong key stops the restore), every blob against its CID, the restored ledger by a
//! full `verify`, and every CID the ledger registered against the restored store.

use super::create::{BLOBS_MAGIC, STATE_MAGIC};
use super::{BackupError, FILES, Manifest, Progress, Result, io, is_secret, node_err};
use crate::datadir::{AUDIT_QUEUE_DB, BLOBS_DIR, LEDGER_DB, RAFT_DB};
use medledger_core::{Cid, Digest32};
use medledger_dump::{read_field, read_tag};
use medledger_ledger::{Ledger, VerifyMode};
use medledger_store::{BlobStore, EnvelopeSet};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::path::Path;

/// What a restore checks beyond the backup itself, and what it applies after.
#[derive(Debug, Default, Clone, Copy)]
pub struct RestoreOptions<'a> {
    /// Records erased after the backup: shredded before the node serves.
    pub erasure_journal: Option<&'a Path>,
    /// The genesis hash the backup must belong to (the trust anchor: a backup's own
    /// signature only shows it was made by a key its own genesis lists).
    pub genesis: Option<&'a str>,
}

/// What a restore (or a verify) found and wrote.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RestoreReport {
    pub backup: String,
    pub chain_id: String,
    pub genesis_hash: String,
    pub height: u64,
    pub block_hash: String,
    pub tree_size: u64,
    /// Transactions the full verification checked.
    pub txs: u64,
    pub blobs: u64,
    pub blob_bytes: u64,
    pub accounts: u64,
    /// Blobs shredded because the erasure journal names their records.
    pub shredded: u64,
    pub seconds: f64,
}

type Identities = [Box<dyn age::Identity + Send + Sync>];
/// Every live blob of a backup and the hash of its envelope set.
type Catalog = HashMap<Cid, [u8; 32]>;

fn bad(e: impl std::fmt::Display) -> BackupError {
    BackupError::Bad(e.to_string())
}

/// Checks every file the manifest lists: present, whole, unaltered.
fn check_files(dest: &Path, manifest: &Manifest, progress: &dyn Progress) -> Result<()> {
    let total = manifest
        .files
        .iter()
        .fold(0u64, |t, f| t.saturating_add(f.bytes));
    progress.stage("checking files", Some(total));
    for f in &manifest.files {
        if f.path.contains("..") || f.path.starts_with('/') {
            return Err(bad(format!(
                "the manifest names a file outside it: {}",
                f.path
            )));
        }
        let path = dest.join(&f.path);
        let len = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(bad(format!("{} is missing", f.path)));
            }
            Err(e) => return Err(io(&path)(e)),
        };
        if len != f.bytes {
            let how = if len < f.bytes {
                "truncated"
            } else {
                "longer than recorded"
            };
            return Err(bad(format!(
                "{} is {how}: {len} bytes, the manifest says {}",
                f.path, f.bytes
            )));
        }
        let (_, sha) = super::hash_file(&path)?;
        if sha != f.sha256 {
            return Err(bad(format!(
                "{} does not match its SHA-256 in the manifest: it was altered or damaged",
                f.path
            )));
        }
        progress.advance(f.bytes);
    }
    Ok(())
}

/// Opens an age file of the backup with the identities.
fn open_sealed(path: &Path, name: &str, ids: &Identities) -> Result<impl Read + use<>> {
    let f = std::fs::File::open(path).map_err(io(path))?;
    let dec = age::Decryptor::new_buffered(BufReader::with_capacity(1 << 20, f))
        .map_err(|e| bad(format!("{name} is not an age file: {e}")))?;
    dec.decrypt(ids.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map(|r| BufReader::with_capacity(1 << 20, r))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => {
                BackupError::Key(format!("none of the identities opens {name} (wrong key?)"))
            }
            e => bad(format!("{name}: {e}")),
        })
}

/// A read error inside an age stream: damage (authentication failed) or a cut.
fn stream_err(name: &str) -> impl Fn(medledger_dump::DumpError) -> BackupError + '_ {
    move |e| bad(format!("{name} is damaged: {e}"))
}

fn expect_magic(r: &mut impl Read, magic: &[u8; 8], name: &str) -> Result<()> {
    let mut m = [0u8; 8];
    r.read_exact(&mut m)
        .map_err(|e| bad(format!("{name} is damaged: {e}")))?;
    if &m != magic {
        return Err(bad(format!("{name} is not a medledger backup file")));
    }
    Ok(())
}

/// The end of an age stream must be reached (its last chunk authenticates the end).
fn expect_end(r: &mut impl Read, name: &str) -> Result<()> {
    let mut rest = [0u8; 1];
    match r.read(&mut rest) {
        Ok(0) => Ok(()),
        Ok(_) => Err(bad(format!("{name} has data after its end"))),
        Err(e) => Err(bad(format!("{name} is damaged: {e}"))),
    }
}

/// Restores the backup in `backup_dir` (a `DEST/<name>` directory) into `data_dir`,
/// which must not exist or be empty, then shreds every blob the erasure journal (if
/// given) names: records erased after the backup was taken do not come back. The
/// restored node can start at once.
pub async fn restore(
    backup_dir: &Path,
    ids: &Identities,
    data_dir: &Path,
    opts: &RestoreOptions<'_>,
    progress: &dyn Progress,
) -> Result<RestoreReport> {
    let started = std::time::Instant::now();
    let journal = opts.erasure_journal;
    let manifest = Manifest::read(backup_dir)?;
    if backup_dir.file_name().and_then(|n| n.to_str()) != Some(manifest.name.as_str()) {
        return Err(bad(format!(
            "the manifest names backup {:?}, but it lies in {}",
            manifest.name,
            backup_dir.display()
        )));
    }
    // Anyone who knows a recipient can make a backup that checks against itself; the
    // chain it must belong to is the operator's to say.
    if let Some(g) = opts.genesis
        && g != manifest.genesis_hash
    {
        return Err(bad(format!(
            "the backup is of genesis {}, not the expected {g}",
            manifest.genesis_hash
        )));
    }
    let dest = backup_dir
        .parent()
        .ok_or_else(|| bad("a backup directory has a parent"))?;
    if let Ok(mut rd) = std::fs::read_dir(data_dir)
        && rd.next().is_some()
    {
        return Err(BackupError::Config(format!(
            "{} is not empty: restore into a new data directory",
            data_dir.display()
        )));
    }
    check_files(dest, &manifest, progress)?;
    std::fs::create_dir_all(data_dir.join("tls")).map_err(io(data_dir))?;
    let marker = data_dir.join(super::RESTORE_INCOMPLETE);
    std::fs::write(&marker, manifest.name.as_bytes()).map_err(io(&marker))?;

    let state_name = format!("{}/state.age", manifest.name);
    let (catalog, erased_since) = tokio::task::block_in_place(|| {
        restore_state(
            &dest.join(&state_name),
            &state_name,
            ids,
            data_dir,
            &manifest,
            progress,
        )
    })?;

    // Blobs: every blob file, oldest first; each new blob is followed by its envelope
    // set of that time, a later file may carry a newer set.
    let store = BlobStore::open(&medledger_store::StoreConfig::Local {
        path: data_dir.join(BLOBS_DIR),
    })
    .map_err(node_err)?;
    progress.stage("blobs", Some(catalog.len() as u64));
    let mut restored: HashMap<Cid, [u8; 32]> = HashMap::with_capacity(catalog.len());
    let mut blob_bytes = 0u64;
    for f in manifest
        .files
        .iter()
        .filter(|f| f.path.starts_with("blobs/"))
    {
        let name = f.path.as_str();
        let mut r = tokio::task::block_in_place(|| open_sealed(&dest.join(name), name, ids))?;
        expect_magic(&mut r, BLOBS_MAGIC, name)?;
        let mut pending: Option<(Cid, Vec<u8>)> = None;
        loop {
            let tag = tokio::task::block_in_place(|| read_tag(&mut r)).map_err(stream_err(name))?;
            match tag {
                b'B' => {
                    let (cid, blob) = tokio::task::block_in_place(|| read_blob(&mut r, name))?;
                    pending = blob.map(|b| (cid, b));
                }
                b'V' => {
                    let (cid, env) = tokio::task::block_in_place(|| -> Result<_> {
                        let cid = read_cid(&mut r, name)?;
                        Ok((
                            cid,
                            read_field(&mut r, medledger_dump::MAX_FIELD)
                                .map_err(stream_err(name))?,
                        ))
                    })?;
                    let hash: [u8; 32] = Sha256::digest(&env).into();
                    let wanted = catalog.get(&cid);
                    let set = || -> Result<EnvelopeSet> {
                        serde_json::from_slice(&env).map_err(|_| {
                            bad(format!("{name}: the envelope set of {cid} is malformed"))
                        })
                    };
                    match pending.take() {
                        Some((pcid, blob)) if pcid == cid => {
                            if wanted.is_some() {
                                blob_bytes += blob.len() as u64;
                                store
                                    .put_sealed(blob, &set()?)
                                    .await
                                    .map_err(|e| node_err(format!("storing blob {cid}: {e}")))?;
                                restored.insert(cid, hash);
                                progress.advance(1);
                            }
                        }
                        Some((pcid, _)) => {
                            return Err(bad(format!(
                                "{name}: blob {pcid} is not followed by its envelope set"
                            )));
                        }
                        None => {
                            if wanted == Some(&hash)
                                && restored.get(&cid).is_some_and(|h| *h != hash)
                            {
                                store
                                    .restore_envelopes(&cid, &set()?)
                                    .await
                                    .map_err(|e| node_err(format!("envelopes of {cid}: {e}")))?;
                                restored.insert(cid, hash);
                            }
                        }
                    }
                }
                b'Z' => break,
                t => return Err(bad(format!("{name}: unknown record {t:#04x}"))),
            }
        }
        tokio::task::block_in_place(|| expect_end(&mut r, name))?;
    }
    for (cid, hash) in &catalog {
        match restored.get(cid) {
            None => {
                return Err(bad(format!(
                    "blob {cid} is missing from the backup's blob files"
                )));
            }
            Some(h) if h != hash => {
                return Err(bad(format!(
                    "the envelope set of blob {cid} the backup recorded is missing"
                )));
            }
            Some(_) => {}
        }
    }
    let shredded = match journal {
        Some(j) => {
            if !j.exists() {
                return Err(BackupError::Config(format!(
                    "the erasure journal {} does not exist",
                    j.display()
                )));
            }
            crate::erasure_journal::shred_journalled(j, &store)
                .await
                .map_err(node_err)? as u64
        }
        None => 0,
    };
    drop(store);

    // The restored ledger: a full verification, then every registered CID present.
    let dd = crate::datadir::load(data_dir).map_err(node_err)?;
    let ledger = Ledger::open(
        &data_dir.join(LEDGER_DB),
        dd.genesis.clone(),
        dd.node.clone(),
        dd.node_id,
    )
    .map_err(|e| bad(format!("the restored ledger does not open: {e}")))?;
    let tip = ledger.tip();
    if tip.height != manifest.height || tip.hash.to_string() != manifest.block_hash {
        return Err(bad(format!(
            "the ledger holds block {} ({}), the manifest names block {} ({})",
            tip.height, tip.hash, manifest.height, manifest.block_hash
        )));
    }
    progress.stage("verifying the ledger", Some(tip.height));
    let report = tokio::task::block_in_place(|| {
        ledger.verify(VerifyMode::Full, &|_, _| progress.advance(1))
    })
    .map_err(|e| bad(format!("the restored ledger does not verify: {e}")))?;
    check_registered(&ledger, &catalog, &erased_since)?;
    ledger
        .record_verified(medledger_ledger::MarkSource::Replayed, true)
        .map_err(node_err)?;
    ledger.flush().map_err(node_err)?;
    drop(ledger);

    let accounts = crate::auth::directory::Directory::open(&data_dir.join("accounts.redb"))
        .map_err(node_err)?
        .count_users()
        .map_err(node_err)?;
    let out = RestoreReport {
        backup: manifest.name.clone(),
        chain_id: manifest.chain_id.clone(),
        genesis_hash: manifest.genesis_hash.clone(),
        height: manifest.height,
        block_hash: manifest.block_hash.clone(),
        tree_size: manifest.tree_size,
        txs: report.txs,
        blobs: restored.len() as u64,
        blob_bytes,
        accounts,
        shredded,
        seconds: started.elapsed().as_secs_f64(),
    };
    let done = data_dir.join(super::RESTORED);
    std::fs::write(
        &done,
        serde_json::to_vec_pretty(&out).expect("report serializes"),
    )
    .map_err(io(&done))?;
    std::fs::remove_file(&marker).map_err(io(&marker))?;
    Ok(out)
}

/// Every CID the ledger registered is in the restored store, unless its record was
/// erased (an erased record's blob is gone everywhere).
fn check_registered(
    ledger: &Ledger,
    catalog: &HashMap<Cid, [u8; 32]>,
    erased_since: &std::collections::HashSet<Cid>,
) -> Result<()> {
    use medledger_ledger::contracts::query;
    let state = ledger.state().map_err(node_err)?;
    let missing = super::registered_missing(&state, |c| {
        catalog.contains_key(c) || erased_since.contains(c)
    })
    .map_err(node_err)?;
    for cid in missing {
        let erased = query::cid_owner(&state, &cid)
            .map_err(node_err)?
            .map(|o| query::record(&state, &o.record))
            .transpose()
            .map_err(node_err)?
            .flatten()
            .is_some_and(|r| r.state.is_erased());
        if !erased {
            return Err(bad(format!(
                "blob {cid}, registered on the ledger, is not in the backup"
            )));
        }
    }
    Ok(())
}

fn read_cid(r: &mut impl Read, name: &str) -> Result<Cid> {
    let mut d = [0u8; 32];
    r.read_exact(&mut d)
        .map_err(|e| bad(format!("{name} is damaged: {e}")))?;
    Ok(Cid(Digest32(d)))
}

/// One blob record: its CID and bytes (checked against the CID), or `None` when the
/// record was abandoned (the blob was erased while the backup read it).
fn read_blob(r: &mut impl Read, name: &str) -> Result<(Cid, Option<Vec<u8>>)> {
    let cid = read_cid(r, name)?;
    let mut blob = Vec::new();
    let mut h = Sha256::new();
    loop {
        let mut len = [0u8; 4];
        r.read_exact(&mut len)
            .map_err(|e| bad(format!("{name} is damaged: {e}")))?;
        let len = u32::from_le_bytes(len);
        if len == 0 {
            break;
        }
        if len == u32::MAX {
            return Ok((cid, None));
        }
        if len as usize > super::create::PIECE {
            return Err(bad(format!("{name}: a piece of {len} bytes")));
        }
        let at = blob.len();
        blob.resize(at + len as usize, 0);
        r.read_exact(&mut blob[at..])
            .map_err(|e| bad(format!("{name} is damaged: {e}")))?;
        h.update(&blob[at..]);
    }
    if <[u8; 32]>::from(h.finalize()) != cid.0.0 {
        return Err(bad(format!("{name}: blob {cid} does not hash to its CID")));
    }
    Ok((cid, Some(blob)))
}

/// Restores the state file: files, ledger, Raft vote, FHIR index, accounts, audit
/// queue; returns the blob catalog.
fn restore_state(
    path: &Path,
    name: &str,
    ids: &Identities,
    data_dir: &Path,
    manifest: &Manifest,
    progress: &dyn Progress,
) -> Result<(Catalog, std::collections::HashSet<Cid>)> {
    let mut r = open_sealed(path, name, ids)?;
    expect_magic(&mut r, STATE_MAGIC, name)?;
    let se = stream_err(name);
    let mut signature_checked = false;
    let mut catalog = HashMap::new();
    let mut erased_since = std::collections::HashSet::new();
    progress.stage("ledger and databases", None);
    loop {
        let tag = read_tag(&mut r).map_err(&se)?;
        if tag != b'F' && !signature_checked {
            // The files come first; genesis among them checks the manifest.
            let dd = crate::datadir::load(data_dir)
                .map_err(|e| bad(format!("the backup's node files: {e}")))?;
            manifest.check_signature(&dd.genesis)?;
            if dd.node.public().to_string() != manifest.node_key {
                return Err(bad(
                    "the manifest is signed by another node than the one whose key the backup holds",
                ));
            }
            signature_checked = true;
        }
        match tag {
            b'F' => {
                let file = String::from_utf8(read_field(&mut r, 256).map_err(&se)?)
                    .map_err(|_| bad(format!("{name}: a file name is not UTF-8")))?;
                let bytes = read_field(&mut r, 1 << 20).map_err(&se)?;
                if !FILES.contains(&file.as_str()) {
                    return Err(bad(format!("{name} holds an unexpected file {file:?}")));
                }
                let p = data_dir.join(&file);
                if is_secret(&file) {
                    crate::datadir::write_private(&p, &bytes).map_err(node_err)?;
                } else {
                    std::fs::write(&p, &bytes).map_err(io(&p))?;
                }
            }
            b'L' => {
                Ledger::load_dump(&data_dir.join(LEDGER_DB), &mut r).map_err(|e| match e {
                    medledger_ledger::LedgerError::Dump(d) => se(d),
                    e => node_err(e),
                })?;
            }
            b'R' => {
                let vote = read_field(&mut r, 4096).map_err(&se)?;
                let vote = (!vote.is_empty()).then_some(vote);
                medledger_consensus::LogStore::restore(&data_dir.join(RAFT_DB), vote.as_deref())
                    .map_err(node_err)?;
            }
            b'I' => {
                crate::fhir::index::load_dumps(&data_dir.join("fhir.redb"), &mut r)
                    .map_err(|e| bad(format!("{name}: the FHIR index: {e}")))?;
            }
            b'A' => {
                crate::auth::directory::Directory::load_dump(
                    &data_dir.join("accounts.redb"),
                    &mut r,
                )
                .map_err(|e| bad(format!("{name}: the sign-in directory: {e}")))?;
            }
            b'Q' => {
                crate::audit_queue::load_dump(&data_dir.join(AUDIT_QUEUE_DB), &mut r)
                    .map_err(|e| bad(format!("{name}: the audit queue: {e}")))?;
            }
            b'C' => {
                let mut n = [0u8; 8];
                r.read_exact(&mut n)
                    .map_err(|e| bad(format!("{name} is damaged: {e}")))?;
                let n = u64::from_le_bytes(n);
                if n != manifest.blobs {
                    return Err(bad(format!(
                        "{name} lists {n} blobs, the manifest {}",
                        manifest.blobs
                    )));
                }
                for _ in 0..n {
                    let cid = read_cid(&mut r, name)?;
                    let mut h = [0u8; 32];
                    r.read_exact(&mut h)
                        .map_err(|e| bad(format!("{name} is damaged: {e}")))?;
                    catalog.insert(cid, h);
                }
            }
            b'X' => {
                let mut n = [0u8; 8];
                r.read_exact(&mut n)
                    .map_err(|e| bad(format!("{name} is damaged: {e}")))?;
                for _ in 0..u64::from_le_bytes(n).min(manifest.blobs + (1 << 20)) {
                    erased_since.insert(read_cid(&mut r, name)?);
                }
            }
            b'Z' => break,
            t => return Err(bad(format!("{name}: unknown section {t:#04x}"))),
        }
    }
    expect_end(&mut r, name)?;
    for (f, what) in [
        (LEDGER_DB, "the ledger"),
        (RAFT_DB, "the Raft vote"),
        ("fhir.redb", "the FHIR index"),
        ("accounts.redb", "the sign-in directory"),
        (AUDIT_QUEUE_DB, "the audit queue"),
    ] {
        if !data_dir.join(f).exists() {
            return Err(bad(format!("{name} does not hold {what}")));
        }
    }
    Ok((catalog, erased_since))
}

/// Restores into a temporary directory and reports what the backup holds; nothing
/// of it stays.
pub async fn verify(
    backup_dir: &Path,
    ids: &Identities,
    genesis: Option<&str>,
    progress: &dyn Progress,
) -> Result<RestoreReport> {
    let tmp = tempfile::Builder::new()
        .prefix("medledger-backup-verify")
        .tempdir()
        .map_err(io(&std::env::temp_dir()))?;
    let target = tmp.path().join("node");
    let opts = RestoreOptions {
        erasure_journal: None,
        genesis,
    };
    restore(backup_dir, ids, &target, &opts, progress).await
}
