//! Backups of a running node and their restore (`medledger backup create|verify|restore`).
//!
//! A backup is a consistent image of everything a node needs, taken while it keeps
//! writing: each redb database is dumped inside one read transaction (MVCC, writers
//! never wait), in an order that keeps the pieces consistent with each other (see
//! [`create`]); blobs are copied by CID, so a later backup to the same place copies
//! only what is new. Everything is encrypted with `age` for recipients configured on
//! the node (`backup-recipients.txt`, public keys only); the identities that open a
//! backup are never stored beside it or on the node.
//!
//! ```text
//! DEST/<name>/manifest.json   what it covers (height, block, signed tree head), the
//!                             files it needs with their sizes and SHA-256; signed
//!                             by the node key
//! DEST/<name>/state.age       secrets, ledger, Raft vote, FHIR index and custody
//!                             keys, accounts, audit queue, the blob catalog
//! DEST/blobs/<name>.age       blobs and envelope sets new in that backup
//! DEST/blobs/<name>.tags      keyed tags of what that file holds (for increments)
//! ```

pub mod create;
pub mod remote;
pub mod restore;
pub mod schedule;
pub mod socket;

use crate::error::NodeError;
use hmac::{Hmac, Mac};
use medledger_core::Genesis;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

pub use create::{create_offline, create_running};
pub use restore::{RestoreOptions, RestoreReport, restore, verify};
pub use schedule::{BackupStatus, Dest, Schedule};

/// Version of the backup layout and of `state.age`'s framing.
pub const FORMAT: u32 = 1;
/// Public age recipients the node encrypts its backups for, one per line.
pub const RECIPIENTS_FILE: &str = "backup-recipients.txt";
/// Present in a data directory while a restore into it has not finished.
pub const RESTORE_INCOMPLETE: &str = "restore-incomplete";
/// What a finished restore wrote into the data directory.
pub const RESTORED: &str = "restored.json";
/// Tags are truncated HMACs: 128 bits tell blobs apart and halve the set a
/// following backup loads.
const TAG_LEN: usize = 16;

/// The data directory's files a backup carries as they are (the databases are dumped).
pub(crate) const FILES: &[&str] = &[
    crate::datadir::GENESIS,
    crate::datadir::NODE_KEY,
    crate::datadir::NODE_ID,
    crate::datadir::ADMIN_KEYSTORE,
    crate::datadir::ADMIN_PASSWORD,
    crate::datadir::TLS_CERT,
    crate::datadir::TLS_KEY,
    "fhir.key",
    "auth.key",
    RECIPIENTS_FILE,
];
/// Files that hold secrets are restored readable by the owner only.
pub(crate) fn is_secret(name: &str) -> bool {
    name != crate::datadir::GENESIS
        && name != crate::datadir::NODE_ID
        && name != crate::datadir::TLS_CERT
        && name != RECIPIENTS_FILE
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The backup is damaged, incomplete or not what it claims; names what.
    #[error("the backup is not usable: {0}")]
    Bad(String),
    #[error("the backup cannot be opened with the given identities: {0}")]
    Key(String),
    #[error("{0}")]
    Node(String),
}

pub type Result<T> = std::result::Result<T, BackupError>;

pub(crate) fn io(path: &Path) -> impl Fn(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.display().to_string(),
        source,
    }
}

pub(crate) fn node_err(e: impl std::fmt::Display) -> BackupError {
    BackupError::Node(e.to_string())
}

impl From<BackupError> for NodeError {
    fn from(e: BackupError) -> Self {
        NodeError::Server(e.to_string())
    }
}

/// One file a backup needs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    /// Relative to the destination.
    pub path: String,
    pub bytes: u64,
    /// SHA-256 of the stored (encrypted) bytes, hex.
    pub sha256: String,
}

/// What a backup covers; stored in the clear beside it and signed by the node key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    pub created_ms: u64,
    pub chain_id: String,
    /// Hex SHA of `genesis.json`'s genesis ([`Genesis::hash`]).
    pub genesis_hash: String,
    /// The node whose key signs this manifest (did:key).
    pub node_key: String,
    /// The ledger the backup holds: its tip and the signed tree head at it.
    pub height: u64,
    pub block_hash: String,
    pub tree_size: u64,
    pub tree_head: Option<String>,
    /// Live blobs the backup covers, and how many of them this backup copied.
    pub blobs: u64,
    pub blobs_new: u64,
    pub bytes_new: u64,
    /// The backup whose blob files this one builds on, if any.
    pub base: Option<String>,
    /// Every file a restore needs: this backup's state and every blob file.
    pub files: Vec<FileEntry>,
    /// Ed25519 by the node key over SHA-256 of this manifest with `signature` empty.
    pub signature: String,
}

impl Manifest {
    fn signed_bytes(&self) -> Vec<u8> {
        let mut m = self.clone();
        m.signature = String::new();
        let json = serde_json::to_vec(&m).expect("manifest serializes");
        let mut h = Sha256::new();
        h.update(b"medledger/backup-manifest/v1\0");
        h.update(&json);
        h.finalize().to_vec()
    }

    pub(crate) fn sign(&mut self, node: &medledger_core::NodeSigner) {
        self.signature = hex::encode(node.sign(&self.signed_bytes()));
    }

    /// Checks the signature against the node key `genesis` lists for it.
    pub(crate) fn check_signature(&self, genesis: &Genesis) -> Result<()> {
        if genesis.hash().to_string() != self.genesis_hash {
            return Err(BackupError::Bad(format!(
                "the manifest names genesis {} but the backup holds genesis {}",
                self.genesis_hash,
                genesis.hash()
            )));
        }
        let key: medledger_core::NodeKey = self
            .node_key
            .parse()
            .map_err(|_| BackupError::Bad("the manifest's node key is malformed".into()))?;
        if !genesis.is_node_key(&key) {
            return Err(BackupError::Bad(
                "the manifest is signed by a key its genesis does not list".into(),
            ));
        }
        let sig = hex::decode(&self.signature)
            .ok()
            .and_then(|s| <[u8; 64]>::try_from(s).ok())
            .ok_or_else(|| BackupError::Bad("the manifest's signature is malformed".into()))?;
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&key.0)
            .map_err(|_| BackupError::Bad("the manifest's node key is malformed".into()))?;
        vk.verify_strict(
            &self.signed_bytes(),
            &ed25519_dalek::Signature::from_bytes(&sig),
        )
        .map_err(|_| {
            BackupError::Bad("the manifest's signature does not check: it was altered".into())
        })
    }

    pub(crate) fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("manifest.json");
        if std::fs::metadata(&path).is_ok_and(|m| m.len() > 16 << 20) {
            return Err(BackupError::Bad(format!(
                "{} is implausibly large",
                path.display()
            )));
        }
        let bytes = std::fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                BackupError::Bad(format!("{} is missing", path.display()))
            } else {
                io(&path)(e)
            }
        })?;
        let m: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| BackupError::Bad(format!("{}: {e}", path.display())))?;
        if m.format != FORMAT {
            return Err(BackupError::Bad(format!(
                "backup format {} (this build reads {FORMAT})",
                m.format
            )));
        }
        Ok(m)
    }
}

/// The CIDs `state` registered that `have` does not hold, in digest order (both a
/// backup and a restore account for each).
pub(crate) fn registered_missing(
    state: &impl medledger_ledger::StateRead,
    have: impl Fn(&medledger_core::Cid) -> bool,
) -> medledger_ledger::Result<Vec<medledger_core::Cid>> {
    use medledger_ledger::contracts::query;
    let mut missing = Vec::new();
    let mut after = None;
    loop {
        let page = query::cids_page(state, after.as_ref(), 1000)?;
        let Some(last) = page.last().copied() else {
            return Ok(missing);
        };
        missing.extend(page.into_iter().filter(|c| !have(c)));
        after = Some(last);
    }
}

/// The age recipients a node encrypts for, from its data directory.
pub fn recipients(data_dir: &Path) -> Result<Vec<age::x25519::Recipient>> {
    let path = data_dir.join(RECIPIENTS_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            BackupError::Config(format!(
                "no backup recipients: {} does not exist (set them with `medledger init \
                 --backup-recipient` or `medledger backup recipients --add`)",
                path.display()
            ))
        } else {
            io(&path)(e)
        }
    })?;
    parse_recipients(&text).map_err(|e| BackupError::Config(format!("{}: {e}", path.display())))
}

/// Parses `age1…` public keys, one per line (`#` comments and blank lines ignored).
pub fn parse_recipients(text: &str) -> std::result::Result<Vec<age::x25519::Recipient>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with("AGE-SECRET-KEY-") {
            return Err(format!(
                "line {}: a secret identity, not a recipient: keep it away from the node",
                i + 1
            ));
        }
        out.push(
            line.parse()
                .map_err(|e| format!("line {}: not an age recipient: {e}", i + 1))?,
        );
    }
    if out.is_empty() {
        return Err("no recipients".into());
    }
    Ok(out)
}

/// Writes the recipients file of a data directory.
pub fn write_recipients(data_dir: &Path, recipients: &[String]) -> Result<()> {
    let text = recipients.join("\n");
    parse_recipients(&text).map_err(BackupError::Config)?;
    let path = data_dir.join(RECIPIENTS_FILE);
    std::fs::write(
        &path,
        format!("# age recipients of this node's backups\n{text}\n"),
    )
    .map_err(io(&path))
}

/// Reads age identities (`AGE-SECRET-KEY-1…` lines, as `age-keygen` writes them).
pub fn identities(path: &Path) -> Result<Vec<Box<dyn age::Identity + Send + Sync>>> {
    age::IdentityFile::from_file(path.display().to_string())
        .map_err(io(path))?
        .into_identities()
        .map_err(|e| BackupError::Key(format!("{}: {e}", path.display())))
}

/// A new identity: (secret, recipient).
pub fn keygen() -> (String, String) {
    use age::secrecy::ExposeSecret;
    let id = age::x25519::Identity::generate();
    (
        id.to_string().expose_secret().to_owned(),
        id.to_public().to_string(),
    )
}

/// The key that tags what a destination already holds: derived from the node key, so
/// the tags say nothing to whoever reads the destination, and a restored node (same
/// key) continues the same destination.
pub(crate) fn tag_key(node: &medledger_core::NodeSigner) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&node.signing_key().to_bytes())
        .expect("any key length");
    m.update(b"medledger/backup/tags/v1");
    m.finalize().into_bytes().into()
}

/// Tag of one blob record (kind `b'B'`, hash = CID) or envelope set (`b'V'`, hash of
/// the set's bytes).
pub(crate) fn tag(
    key: &[u8; 32],
    kind: u8,
    cid: &medledger_core::Cid,
    hash: &[u8; 32],
) -> [u8; TAG_LEN] {
    let mut m = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(key).expect("any key length");
    m.update(&[kind]);
    m.update(&cid.0.0);
    m.update(hash);
    let full: [u8; 32] = m.finalize().into_bytes().into();
    full[..TAG_LEN].try_into().expect("prefix")
}

/// SHA-256 and size of a file, read in pieces.
pub(crate) fn hash_file(path: &Path) -> Result<(u64, String)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(io(path))?;
        if k == 0 {
            break;
        }
        n += k as u64;
        h.update(&buf[..k]);
    }
    Ok((n, hex::encode(h.finalize())))
}

/// Where a long step is: a stage name, how far, and of how much when known.
pub trait Progress: Send + Sync {
    fn stage(&self, name: &str, total: Option<u64>);
    fn advance(&self, n: u64);
}

/// Progress nobody watches.
#[derive(Debug, Default)]
pub struct Quiet;

impl Progress for Quiet {
    fn stage(&self, _: &str, _: Option<u64>) {}
    fn advance(&self, _: u64) {}
}

/// Backups in `dest`, oldest first (names sort by time).
pub fn list(dest: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dest) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(dest)(e)),
    };
    for e in entries {
        let e = e.map_err(io(dest))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("backup-") && e.path().join("manifest.json").exists() {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}
