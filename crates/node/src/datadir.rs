//! The data directory: what `init` creates and `serve` reads.
//!
//! ```text
//! genesis.json          chain id, consortium admin, genesis nodes (public)
//! node.key              this node's Ed25519 seed, hex (0600)
//! node-id               this node's Raft id
//! admin.keystore.json   the consortium admin's encrypted keystore
//! admin.password        only when init generated the password (0600)
//! tls/cert.pem, tls/key.pem   self-signed certificate for 127.0.0.1/localhost
//! ledger.redb           blocks, state, Merkle log, indexes
//! raft.redb             the Raft log
//! ```

use crate::error::{NodeError, Result};
use crate::keystore::AccountKeys;
use ed25519_dalek::SigningKey;
use medledger_core::genesis::{GENESIS_VERSION, GenesisNode};
use medledger_core::keys::random_bytes32;
use medledger_core::{AccountId, ChainId, Genesis, NodeSigner};
use std::path::{Path, PathBuf};

pub const GENESIS: &str = "genesis.json";
pub const NODE_KEY: &str = "node.key";
pub const NODE_ID: &str = "node-id";
pub const ADMIN_KEYSTORE: &str = "admin.keystore.json";
pub const ADMIN_PASSWORD: &str = "admin.password";
pub const TLS_CERT: &str = "tls/cert.pem";
pub const TLS_KEY: &str = "tls/key.pem";
pub const LEDGER_DB: &str = "ledger.redb";
/// The record store (encrypted blobs and key envelopes).
pub const BLOBS_DIR: &str = "blobs";
pub const RAFT_DB: &str = "raft.redb";
/// Access reports not yet on the ledger (node-local, see `audit_queue`).
pub const AUDIT_QUEUE_DB: &str = "audit-queue.redb";

/// A 32-byte node-local secret at `path` that seals what `sealed` (a file or
/// directory beside it) holds. Created (mode 0600) only while `sealed` does not exist
/// yet: a missing key with its data present means the data can no longer be opened,
/// and making a new key would hide that until the first read failed, so the node
/// refuses to start instead.
pub fn local_secret(path: &Path, sealed: &Path) -> Result<[u8; 32]> {
    match std::fs::read(path) {
        Ok(b) => <[u8; 32]>::try_from(b.as_slice())
            .map_err(|_| NodeError::Server(format!("{} is not 32 bytes", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !sealed.exists() => {
            let mut k = [0u8; 32];
            getrandom::fill(&mut k).map_err(|e| NodeError::Server(format!("randomness: {e}")))?;
            write_private(path, &k)?;
            Ok(k)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(NodeError::Server(format!(
            "{} is missing but {} exists: the key that seals it is gone; restore the key \
             from a backup (a new key could open none of it)",
            path.display(),
            sealed.display()
        ))),
        Err(e) => Err(NodeError::io(path, e)),
    }
}

pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(medledger_keystore::write_private(path, bytes)?)
}

fn write_public(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| NodeError::io(path, e))
}

#[derive(Debug, Clone)]
pub struct InitOptions {
    pub chain_id: ChainId,
    /// The admin keystore password; generated (and written to `admin.password`) if None.
    pub admin_password: Option<String>,
    pub node_id: u64,
    /// Registration fee, break-glass duration and retention rules; `None` fee owner
    /// means the consortium admin.
    pub params: ParamOptions,
}

/// The genesis contract parameters `init` takes (see [`medledger_core::ContractParams`]).
#[derive(Debug, Clone)]
pub struct ParamOptions {
    pub registration_fee: u64,
    pub break_glass_ms: u64,
    pub retention: Vec<medledger_core::RetentionRule>,
}

impl Default for ParamOptions {
    fn default() -> Self {
        ParamOptions {
            registration_fee: 0,
            break_glass_ms: medledger_core::genesis::DEFAULT_BREAK_GLASS_MS,
            retention: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct InitReport {
    pub data_dir: PathBuf,
    pub chain_id: ChainId,
    pub admin: AccountId,
    pub node_key: medledger_core::NodeKey,
    pub genesis_hash: medledger_core::BlockHash,
    pub password_file: Option<PathBuf>,
}

pub fn is_initialised(dir: &Path) -> bool {
    dir.join(GENESIS).exists()
}

/// Creates a new single-node chain in `dir` (which may exist but must not hold one).
pub fn init(dir: &Path, opts: InitOptions) -> Result<InitReport> {
    if is_initialised(dir) {
        return Err(NodeError::AlreadyInitialised(dir.display().to_string()));
    }
    std::fs::create_dir_all(dir.join("tls")).map_err(|e| NodeError::io(dir, e))?;
    let node_seed = random_bytes32()?;
    let node = NodeSigner::new(SigningKey::from_bytes(&node_seed));
    let admin = AccountKeys::generate()?;
    let (password, password_file) = match opts.admin_password {
        Some(p) => (p, None),
        None => {
            let p = hex::encode(random_bytes32()?);
            let path = dir.join(ADMIN_PASSWORD);
            write_private(&path, p.as_bytes())?;
            (p, Some(path))
        }
    };
    admin
        .seal(password.as_bytes())?
        .write(&dir.join(ADMIN_KEYSTORE))?;
    let created_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let genesis = Genesis {
        version: GENESIS_VERSION,
        chain_id: opts.chain_id.clone(),
        created_ms,
        admin: admin.account(),
        admin_encryption_key: admin.encryption_public(),
        nodes: vec![GenesisNode {
            id: opts.node_id,
            key: node.public(),
        }],
        params: medledger_core::ContractParams {
            registration_fee: opts.params.registration_fee,
            fee_owner: admin.account(),
            break_glass_ms: opts.params.break_glass_ms,
            retention: opts.params.retention,
        },
    };
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .map_err(|e| NodeError::Tls(e.to_string()))?;
    write_public(&dir.join(TLS_CERT), cert.cert.pem().as_bytes())?;
    write_private(
        &dir.join(TLS_KEY),
        cert.signing_key.serialize_pem().as_bytes(),
    )?;
    write_private(&dir.join(NODE_KEY), hex::encode(node_seed).as_bytes())?;
    write_public(&dir.join(NODE_ID), opts.node_id.to_string().as_bytes())?;
    // genesis.json last: its presence marks the directory as initialised.
    let json = serde_json::to_vec_pretty(&genesis).expect("genesis serializes");
    write_public(&dir.join(GENESIS), &json)?;
    Ok(InitReport {
        data_dir: dir.to_owned(),
        chain_id: opts.chain_id,
        admin: admin.account(),
        node_key: node.public(),
        genesis_hash: genesis.hash(),
        password_file,
    })
}

/// A loaded data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    pub dir: PathBuf,
    pub genesis: Genesis,
    pub node: NodeSigner,
    pub node_id: u64,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| NodeError::io(path, e))
}

pub fn read_genesis(dir: &Path) -> Result<Genesis> {
    if !is_initialised(dir) {
        return Err(NodeError::NotInitialised(dir.display().to_string()));
    }
    let path = dir.join(GENESIS);
    serde_json::from_slice(&read(&path)?)
        .map_err(|e| NodeError::Malformed(path.display().to_string(), e.to_string()))
}

pub fn load(dir: &Path) -> Result<DataDir> {
    let genesis = read_genesis(dir)?;
    let key_path = dir.join(NODE_KEY);
    let seed: [u8; 32] = hex::decode(read(&key_path)?.trim_ascii())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            NodeError::Malformed(
                key_path.display().to_string(),
                "expected 64 hex digits".into(),
            )
        })?;
    let node = NodeSigner::new(SigningKey::from_bytes(&seed));
    let id_path = dir.join(NODE_ID);
    let node_id = String::from_utf8_lossy(&read(&id_path)?)
        .trim()
        .parse()
        .map_err(|_| {
            NodeError::Malformed(id_path.display().to_string(), "expected a number".into())
        })?;
    if !genesis.is_node_key(&node.public()) {
        return Err(NodeError::Malformed(
            key_path.display().to_string(),
            "this node's key is not listed in genesis.json".into(),
        ));
    }
    Ok(DataDir {
        dir: dir.to_owned(),
        genesis,
        node,
        node_id,
    })
}
