//! Durable ledger storage in redb, and the block builder.
//!
//! One redb file (`ledger.redb`) holds blocks, the tx index, the Merkle log's perfect
//! nodes, the state, and metadata (tip, genesis hash, and whatever the consensus layer
//! stores atomically with a block, such as the last applied Raft log id). A batch of
//! blocks is written in one write transaction with two-phase commit and immediate
//! durability: a block is either wholly stored with its state writes, or not at all.

use crate::contracts::{self, BlockCtx, state::AccountState};
use crate::error::{LedgerError, Result};
use crate::exec::{Overlay, StateRead, Writes, merge_scan, page};
use borsh::{BorshDeserialize, BorshSerialize};
use medledger_core::block::BLOCK_VERSION;
use medledger_core::hash::StateDigest;
use medledger_core::tx::{SignatureBytes, verify_signatures};
use medledger_core::{
    AccountId, BlockHash, BlockHeader, Digest32, Genesis, MAX_TX_BYTES, NodeSigner, RejectReason,
    SignedBlock, SignedTx, TxHash,
};
use medledger_merkle::{Checkpoint, Frontier, MerkleError, NodeStore, SignedCheckpoint};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

pub(crate) const BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("blocks");
/// tx hash -> (block height, leaf index in the whole-ledger log)
pub(crate) const TX_INDEX: TableDefinition<&[u8], (u64, u64)> = TableDefinition::new("tx_index");
/// in-order node index -> 32-byte hash, perfect subtrees only
pub(crate) const MERKLE: TableDefinition<u64, &[u8]> = TableDefinition::new("merkle");
pub(crate) const STATE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("state");
/// log size after a block -> block height (to find the signed head for a size)
pub(crate) const SIZES: TableDefinition<u64, u64> = TableDefinition::new("sizes");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const META_GENESIS: &str = "genesis_hash";
const META_TIP: &str = "tip";
const META_FORMAT: &str = "format";
/// Bumped when the on-disk layout or the contracts' state writes change; `open`
/// refuses other versions. 2: the CID registry (`cid/`) — blocks of a version-1
/// ledger replay to different state digests, so this build cannot verify them.
const FORMAT_VERSION: u8 = 2;

/// The newest block, as the rest of the node sees it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(
    Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, serde::Deserialize,
)]
pub struct Tip {
    pub height: u64,
    pub hash: BlockHash,
    pub time_ms: u64,
    pub log_size: u64,
}

/// Where a committed transaction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TxLocation {
    pub height: u64,
    /// Position in the whole-ledger Merkle log.
    pub leaf_index: u64,
}

/// The result for one submitted transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TxOutcome {
    /// None only when the bytes did not decode.
    pub hash: Option<TxHash>,
    pub result: std::result::Result<TxLocation, RejectReason>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct BatchOutcome {
    /// The block this batch became, if any transaction was accepted.
    pub height: Option<u64>,
    pub txs: Vec<TxOutcome>,
}

/// Whether [`Ledger::apply`] waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyDurability {
    /// fsync (two-phase commit) before returning.
    Durable,
    /// Atomic but not yet on disk: a crash rolls back to the last durable write.
    /// Only for callers that can re-apply from their own durable log (consensus),
    /// and that call [`Ledger::flush`] before relying on the state (snapshots).
    Deferred,
}

/// A batch as ordered by consensus.
#[derive(Debug, Clone)]
pub struct Batch<'a> {
    /// Proposed by the leader; the block time is max(this, previous block time).
    pub time_ms: u64,
    pub txs: &'a [Vec<u8>],
}

struct TipState {
    tip: Tip,
    frontier: Frontier,
}

struct Inner {
    db: Database,
    genesis: Genesis,
    signer: NodeSigner,
    key_name: String,
    origin: String,
    tip: Mutex<TipState>,
    verified: Mutex<VerifiedCache>,
    /// A snapshot was imported since open: blocks this node did not apply.
    imported: std::sync::atomic::AtomicBool,
}

/// Signatures this node has already verified at admission, keyed by tx hash and
/// signature bytes. Verification is a pure function, so apply may trust an entry
/// instead of verifying again; followers and `verify` check everything themselves.
#[derive(Default)]
struct VerifiedCache {
    set: std::collections::HashSet<(TxHash, [u8; 64])>,
    order: std::collections::VecDeque<(TxHash, [u8; 64])>,
}

/// Bounds the cache; older entries are simply verified again.
const VERIFIED_CACHE_CAP: usize = 1 << 20;

impl VerifiedCache {
    fn insert(&mut self, key: (TxHash, [u8; 64])) {
        if self.set.insert(key) {
            self.order.push_back(key);
            if self.order.len() > VERIFIED_CACHE_CAP
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }
}

/// A handle to the ledger; cheap to clone. Reads may run concurrently with the one
/// applier (the consensus state machine).
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("chain", &self.inner.genesis.chain_id)
            .finish()
    }
}

/// The C2SP origin line of this chain's checkpoints.
pub fn origin(genesis: &Genesis) -> String {
    format!("medledger/{}", genesis.chain_id)
}

/// The key name under which a genesis node signs (by its key).
pub(crate) fn signer_name(genesis: &Genesis, key: &medledger_core::NodeKey) -> String {
    let id = genesis
        .nodes
        .iter()
        .find(|n| &n.key == key)
        .map(|n| n.id)
        .unwrap_or(0);
    key_name(genesis, id)
}

/// The signed-note key name of a node.
pub fn key_name(genesis: &Genesis, node_id: u64) -> String {
    format!("medledger/{}/node-{node_id}", genesis.chain_id)
}

pub(crate) struct TableNodes<'a, T: ReadableTable<u64, &'static [u8]>>(pub(crate) &'a T);

impl<T: ReadableTable<u64, &'static [u8]>> NodeStore for TableNodes<'_, T> {
    fn get_node(&self, index: u64) -> medledger_merkle::Result<Option<Digest32>> {
        let v = self
            .0
            .get(index)
            .map_err(|e| MerkleError::Store(e.to_string()))?;
        match v {
            None => Ok(None),
            Some(v) => <[u8; 32]>::try_from(v.value())
                .map(|a| Some(Digest32(a)))
                .map_err(|_| MerkleError::Store(format!("node {index} is not 32 bytes"))),
        }
    }
}

struct TableState<T>(T);

impl<T: ReadableTable<&'static [u8], &'static [u8]>> StateRead for TableState<T> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.0.get(key)?.map(|v| v.value().to_vec()))
    }

    fn scan_page(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        // Seek straight to the resume point: walking from the prefix made every page
        // cost all the pages before it (quadratic paging of the audit trail).
        let from = match start_after {
            Some(s) if s >= prefix => s,
            _ => prefix,
        };
        for r in self.0.range(from..)? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = r?;
            let k = k.value();
            if !k.starts_with(prefix) {
                break;
            }
            if start_after.is_some_and(|s| k <= s) {
                continue;
            }
            out.push((k.to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }
}

impl<T: ReadableTable<&'static [u8], &'static [u8]>> TableState<T> {
    /// [`StateRead::scan_page_rev`] by seeking: from `before` (or the end of the
    /// prefix) backwards, so the newest page costs what it returns.
    fn scan_rev(
        &self,
        prefix: &[u8],
        before: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        let upper = before.map(<[u8]>::to_vec).or_else(|| successor(prefix));
        let range = match &upper {
            Some(u) => self.0.range::<&[u8]>(prefix..u.as_slice())?,
            None => self.0.range::<&[u8]>(prefix..)?,
        };
        for r in range.rev() {
            if out.len() >= limit {
                break;
            }
            let (k, v) = r?;
            let k = k.value();
            if !k.starts_with(prefix) {
                continue;
            }
            out.push((k.to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }
}

/// The smallest key above every key that starts with `prefix` (none if it is all 0xff).
fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut s = prefix.to_vec();
    while let Some(last) = s.pop() {
        if last < 0xff {
            s.push(last + 1);
            return Some(s);
        }
    }
    None
}

/// Earlier blocks' writes (same apply call) over the stored state.
struct Layered<'a, S: StateRead> {
    pending: &'a Writes,
    base: &'a S,
}

impl<S: StateRead> StateRead for Layered<'_, S> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.pending.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(key),
        }
    }

    fn scan_page(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(page(
            merge_scan(self.base.scan(prefix)?, self.pending, prefix),
            start_after,
            limit,
        ))
    }
}

/// Which transaction signatures `precheck` verifies.
pub(crate) enum SigCheck<'a> {
    Skip,
    /// All except those this predicate says were already verified.
    Unless(&'a mut dyn FnMut(&TxHash, &[u8; 64]) -> bool),
}

/// A decoded, signature-checked tx, or why it was refused (with its hash if known).
pub(crate) type Prechecked =
    std::result::Result<(SignedTx, TxHash), (Option<TxHash>, RejectReason)>;

/// Decodes and checks a batch's transactions up to (not including) state checks.
/// Shared by the applier and `verify`, so both apply the same rules.
pub(crate) fn precheck(genesis: &Genesis, txs: &[Vec<u8>], sigs: SigCheck<'_>) -> Vec<Prechecked> {
    let mut out: Vec<_> = txs
        .iter()
        .map(|bytes| {
            if bytes.len() > MAX_TX_BYTES {
                return Err((
                    None,
                    RejectReason::Oversized {
                        size: bytes.len(),
                        max: MAX_TX_BYTES,
                    },
                ));
            }
            let tx = SignedTx::decode(bytes).map_err(|e| {
                (
                    None,
                    RejectReason::Malformed {
                        detail: e.to_string(),
                    },
                )
            })?;
            let hash = tx
                .check_without_signature(&genesis.chain_id)
                .map_err(|r| (None, r))?;
            Ok((tx, hash))
        })
        .collect();
    let to_verify: Vec<(&SignedTx, TxHash)> = out
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|(t, h)| (t, *h)))
        .collect();
    let verdicts: Vec<bool> = match sigs {
        SigCheck::Skip => vec![true; to_verify.len()],
        SigCheck::Unless(known) => {
            let flags: Vec<bool> = to_verify
                .iter()
                .map(|(t, h)| known(h, &t.signature.0))
                .collect();
            let unknown: Vec<(&SignedTx, TxHash)> = to_verify
                .iter()
                .zip(&flags)
                .filter(|(_, k)| !**k)
                .map(|(p, _)| *p)
                .collect();
            let mut fresh = verify_signatures(&unknown).into_iter();
            flags
                .iter()
                .map(|k| *k || fresh.next().unwrap_or(false))
                .collect()
        }
    };
    let mut verdicts = verdicts.into_iter();
    for r in out.iter_mut() {
        if let Ok((_, h)) = r
            && !verdicts.next().unwrap_or(false)
        {
            *r = Err((Some(*h), RejectReason::BadSignature));
        }
    }
    out
}

/// A block built in memory, not yet stored.
pub(crate) struct BuiltBlock {
    pub block: SignedBlock,
    pub hashes: Vec<TxHash>,
    pub writes: Writes,
    pub nodes: Vec<(u64, Digest32)>,
}

/// Builds the header fields that follow from the accepted txs and state writes.
pub(crate) fn header_for(
    genesis: &Genesis,
    prev: &Tip,
    time_ms: u64,
    hashes: &[TxHash],
    writes: &Writes,
    frontier: &mut Frontier,
    nodes: &mut Vec<(u64, Digest32)>,
) -> BlockHeader {
    let tx_root = medledger_merkle::log::root_of(hashes.iter().map(|h| &h.0.0[..]));
    for h in hashes {
        frontier.push(&h.0.0, |i, d| nodes.push((i, d)));
    }
    let mut digest = StateDigest::default();
    for (k, v) in writes {
        match v {
            Some(v) => digest.write(k, v),
            None => digest.delete(k),
        }
    }
    BlockHeader {
        version: BLOCK_VERSION,
        chain_id: genesis.chain_id.clone(),
        height: prev.height + 1,
        prev_hash: prev.hash,
        time_ms: time_ms.max(prev.time_ms),
        tx_root,
        tx_count: hashes.len() as u32,
        log_root: frontier.root(),
        log_size: frontier.size(),
        state_digest: digest.finish(),
    }
}

/// The tip a metadata table records.
fn stored_tip(meta: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<Tip> {
    let tip = meta
        .get(META_TIP)?
        .ok_or_else(|| LedgerError::CorruptMeta("no tip".into()))?;
    Tip::try_from_slice(tip.value()).map_err(|e| LedgerError::CorruptMeta(format!("tip: {e}")))
}

/// The ledger as of one commit, for a backup ([`Ledger::snapshot_reader`]).
pub struct LedgerSnapshot {
    rtx: redb::ReadTransaction,
    tip: Tip,
}

impl std::fmt::Debug for LedgerSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerSnapshot")
            .field("tip", &self.tip)
            .finish()
    }
}

impl LedgerSnapshot {
    /// The tip this view holds.
    pub fn tip(&self) -> &Tip {
        &self.tip
    }

    /// The contract state of this view.
    pub fn state(&self) -> Result<StateView> {
        Ok(StateView(TableState(self.rtx.open_table(STATE)?)))
    }

    /// Writes every table of this view ([`Ledger::load_dump`] reads it back).
    pub fn dump(&self, w: &mut impl std::io::Write) -> Result<()> {
        use medledger_dump::dump_table;
        dump_table(&self.rtx, META, w)?;
        dump_table(&self.rtx, BLOCKS, w)?;
        dump_table(&self.rtx, TX_INDEX, w)?;
        dump_table(&self.rtx, MERKLE, w)?;
        dump_table(&self.rtx, SIZES, w)?;
        dump_table(&self.rtx, STATE, w)?;
        medledger_dump::end(w)?;
        Ok(())
    }
}

impl Ledger {
    /// Opens (creating if needed) the ledger at `path` for `genesis`.
    pub fn open(path: &Path, genesis: Genesis, signer: NodeSigner, node_id: u64) -> Result<Self> {
        Self::open_with_cache(path, genesis, signer, node_id, None)
    }

    /// [`Ledger::open`] with redb's page cache limited to `cache_bytes` (a one-pass
    /// reader such as a backup needs little; redb's default is 1 GiB).
    pub fn open_with_cache(
        path: &Path,
        genesis: Genesis,
        signer: NodeSigner,
        node_id: u64,
        cache_bytes: Option<usize>,
    ) -> Result<Self> {
        let mut builder = Database::builder();
        if let Some(c) = cache_bytes {
            builder.set_cache_size(c);
        }
        let db = builder.create(path)?;
        let genesis_hash = genesis.hash();
        let mut wtx = db.begin_write()?;
        wtx.set_quick_repair(true);
        let tip = {
            let mut meta = wtx.open_table(META)?;
            for t in [BLOCKS, MERKLE] {
                wtx.open_table(t)?;
            }
            wtx.open_table(TX_INDEX)?;
            wtx.open_table(SIZES)?;
            let mut state = wtx.open_table(STATE)?;
            let stored = meta.get(META_GENESIS)?.map(|v| v.value().to_vec());
            match stored {
                Some(h) if h != genesis_hash.0.0 => {
                    return Err(LedgerError::GenesisMismatch {
                        stored: hex_of(&h),
                        given: genesis_hash.to_string(),
                    });
                }
                Some(_) => {
                    let format = meta.get(META_FORMAT)?.map(|v| v.value().to_vec());
                    if format.as_deref() != Some(&[FORMAT_VERSION][..]) {
                        return Err(LedgerError::CorruptMeta(format!(
                            "ledger storage format {:?}; this build reads format {FORMAT_VERSION} \
                             (a ledger made by an older build must be initialised anew)",
                            format.as_deref().and_then(|f| f.first())
                        )));
                    }
                    stored_tip(&meta)?
                }
                None => {
                    for (k, v) in contracts::genesis_writes(&genesis) {
                        state.insert(&k[..], &v[..])?;
                    }
                    let tip = Tip {
                        height: 0,
                        hash: genesis_hash,
                        time_ms: genesis.created_ms,
                        log_size: 0,
                    };
                    meta.insert(META_GENESIS, &genesis_hash.0.0[..])?;
                    meta.insert(META_FORMAT, &[FORMAT_VERSION][..])?;
                    meta.insert(META_TIP, &borsh::to_vec(&tip).expect("Vec")[..])?;
                    tip
                }
            }
        };
        wtx.commit()?;
        let rtx = db.begin_read()?;
        let merkle = rtx.open_table(MERKLE)?;
        let frontier = Frontier::load(&TableNodes(&merkle), tip.log_size)?;
        drop(merkle);
        drop(rtx);
        Ok(Ledger {
            inner: Arc::new(Inner {
                db,
                key_name: key_name(&genesis, node_id),
                origin: origin(&genesis),
                genesis,
                signer,
                tip: Mutex::new(TipState { tip, frontier }),
                verified: Mutex::new(VerifiedCache::default()),
                imported: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    pub fn genesis(&self) -> &Genesis {
        &self.inner.genesis
    }

    pub fn node_key(&self) -> medledger_core::NodeKey {
        self.inner.signer.public()
    }

    pub fn tip(&self) -> Tip {
        self.lock_tip().tip.clone()
    }

    fn lock_tip(&self) -> std::sync::MutexGuard<'_, TipState> {
        // A panic while holding this lock can only come from a bug in apply; the tip it
        // guards is rebuilt from disk on restart, so continuing with it is safe.
        self.inner.tip.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies consensus-ordered batches: each batch with an accepted transaction
    /// becomes one block. All blocks and `meta` are committed in one atomic write,
    /// fsynced before returning only with [`ApplyDurability::Durable`].
    pub fn apply(
        &self,
        batches: &[Batch<'_>],
        meta: &[(&str, &[u8])],
        durability: ApplyDurability,
    ) -> Result<Vec<BatchOutcome>> {
        let mut guard = self.lock_tip();
        let mut tip = guard.tip.clone();
        let mut frontier = guard.frontier.clone();
        let rtx = self.inner.db.begin_read()?;
        let base = TableState(rtx.open_table(STATE)?);
        let mut pending: Writes = BTreeMap::new();
        let mut built: Vec<BuiltBlock> = Vec::new();
        let mut outcomes = Vec::with_capacity(batches.len());

        for batch in batches {
            let checked = {
                let mut cache = self
                    .inner
                    .verified
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                // Each admission vouches for one application only.
                let mut known = |h: &TxHash, sig: &[u8; 64]| cache.set.remove(&(*h, *sig));
                precheck(&self.inner.genesis, batch.txs, SigCheck::Unless(&mut known))
            };
            let layered = Layered {
                pending: &pending,
                base: &base,
            };
            let mut overlay = Overlay::new(&layered);
            let ctx = BlockCtx {
                genesis: &self.inner.genesis,
                time_ms: batch.time_ms.max(tip.time_ms),
            };
            let mut accepted = Vec::new();
            let mut results = Vec::with_capacity(checked.len());
            for c in checked {
                match c {
                    Err((hash, reason)) => results.push(TxOutcome {
                        hash,
                        result: Err(reason),
                    }),
                    Ok((tx, hash)) => match contracts::execute(&mut overlay, &tx, &hash, &ctx)? {
                        Err(reason) => results.push(TxOutcome {
                            hash: Some(hash),
                            result: Err(reason),
                        }),
                        Ok(()) => {
                            let leaf_index = tip.log_size + accepted.len() as u64;
                            results.push(TxOutcome {
                                hash: Some(hash),
                                result: Ok(TxLocation {
                                    height: tip.height + 1,
                                    leaf_index,
                                }),
                            });
                            accepted.push((tx, hash));
                        }
                    },
                }
            }
            let writes = std::mem::take(&mut overlay.writes);
            if accepted.is_empty() {
                outcomes.push(BatchOutcome {
                    height: None,
                    txs: results,
                });
                continue;
            }
            let hashes: Vec<TxHash> = accepted.iter().map(|(_, h)| *h).collect();
            let mut nodes = Vec::new();
            let header = header_for(
                &self.inner.genesis,
                &tip,
                batch.time_ms,
                &hashes,
                &writes,
                &mut frontier,
                &mut nodes,
            );
            let block = self.sign_block(header, accepted.into_iter().map(|(t, _)| t).collect());
            tip = Tip {
                height: block.header.height,
                hash: block.header.hash(),
                time_ms: block.header.time_ms,
                log_size: block.header.log_size,
            };
            for (k, v) in &writes {
                pending.insert(k.clone(), v.clone());
            }
            outcomes.push(BatchOutcome {
                height: Some(tip.height),
                txs: results,
            });
            built.push(BuiltBlock {
                block,
                hashes,
                writes,
                nodes,
            });
        }
        drop(base);
        drop(rtx);

        self.write(&built, &tip, meta, durability)?;
        guard.tip = tip;
        guard.frontier = frontier;
        Ok(outcomes)
    }

    fn sign_block(&self, header: BlockHeader, txs: Vec<SignedTx>) -> SignedBlock {
        let signer = &self.inner.signer;
        let signature = SignatureBytes(signer.sign(&header.hash().0.0));
        let cp = Checkpoint {
            origin: self.inner.origin.clone(),
            size: header.log_size,
            root: header.log_root,
        };
        let cp_sig = cp.sign(&self.inner.key_name, signer).signatures[0].signature;
        SignedBlock {
            header,
            signer: signer.public(),
            signature,
            checkpoint_signature: SignatureBytes(cp_sig),
            txs,
        }
    }

    fn write(
        &self,
        built: &[BuiltBlock],
        tip: &Tip,
        meta: &[(&str, &[u8])],
        durability: ApplyDurability,
    ) -> Result<()> {
        let mut wtx = self.inner.db.begin_write()?;
        match durability {
            ApplyDurability::Durable => wtx.set_quick_repair(true),
            ApplyDurability::Deferred => wtx.set_durability(Durability::None)?,
        }
        {
            let mut blocks = wtx.open_table(BLOCKS)?;
            let mut index = wtx.open_table(TX_INDEX)?;
            let mut merkle = wtx.open_table(MERKLE)?;
            let mut state = wtx.open_table(STATE)?;
            let mut sizes = wtx.open_table(SIZES)?;
            let mut meta_t = wtx.open_table(META)?;
            for b in built {
                let h = &b.block.header;
                blocks.insert(h.height, &b.block.to_bytes()[..])?;
                let first_leaf = h.log_size - h.tx_count as u64;
                for (i, hash) in b.hashes.iter().enumerate() {
                    index.insert(&hash.0.0[..], (h.height, first_leaf + i as u64))?;
                }
                for (i, d) in &b.nodes {
                    merkle.insert(*i, &d.0[..])?;
                }
                for (k, v) in &b.writes {
                    match v {
                        Some(v) => state.insert(&k[..], &v[..])?,
                        None => state.remove(&k[..])?,
                    };
                }
                sizes.insert(h.log_size, h.height)?;
            }
            if !built.is_empty() {
                meta_t.insert(META_TIP, &borsh::to_vec(tip).expect("Vec")[..])?;
            }
            for (k, v) in meta {
                meta_t.insert(*k, *v)?;
            }
        }
        wtx.commit()?;
        Ok(())
    }

    /// Records signatures this node verified at admission (see `VerifiedCache`).
    pub fn remember_verified(&self, items: impl IntoIterator<Item = (TxHash, [u8; 64])>) {
        let mut cache = self
            .inner
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for item in items {
            cache.insert(item);
        }
    }

    /// Makes every earlier deferred write durable (one two-phase fsync).
    pub fn flush(&self) -> Result<()> {
        let mut wtx = self.inner.db.begin_write()?;
        wtx.set_quick_repair(true);
        wtx.commit()?;
        Ok(())
    }

    /// Reads a metadata value stored by [`Ledger::apply`] or [`Ledger::put_meta`].
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.metas(&[key])?.pop().flatten())
    }

    /// Several metadata values read in one transaction, so they describe one point.
    pub fn metas(&self, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>> {
        let rtx = self.inner.db.begin_read()?;
        let t = rtx.open_table(META)?;
        keys.iter()
            .map(|k| Ok(t.get(*k)?.map(|v| v.value().to_vec())))
            .collect()
    }

    pub fn put_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        let mut wtx = self.inner.db.begin_write()?;
        wtx.set_quick_repair(true);
        wtx.open_table(META)?.insert(key, value)?;
        wtx.commit()?;
        Ok(())
    }

    /// A stored block, checked as it is read: a genesis node's signature over its
    /// header, its height, its transactions against the header's root, and every
    /// transaction's signature. Start-up no longer replays blocks a verified mark
    /// covers, so reads are where tampering with them shows (besides `verify`).
    pub fn block(&self, height: u64) -> Result<SignedBlock> {
        let block = self.block_for_scan(height)?;
        let pairs: Vec<(&SignedTx, TxHash)> =
            block.txs.iter().map(|t| (t, t.body.hash())).collect();
        if let Some(i) = verify_signatures(&pairs).iter().position(|ok| !ok) {
            return Err(LedgerError::Corrupt {
                height,
                reason: format!("transaction {i}: signature does not verify"),
            });
        }
        Ok(block)
    }

    /// A stored block whose header signature, height and transaction root check, for
    /// callers that scan many blocks for what they contain (transaction signatures
    /// are not checked again: [`Ledger::block`] does).
    pub fn block_for_scan(&self, height: u64) -> Result<SignedBlock> {
        let rtx = self.inner.db.begin_read()?;
        let t = rtx.open_table(BLOCKS)?;
        let v = t.get(height)?.ok_or(LedgerError::NoSuchBlock(height))?;
        let corrupt = |reason: String| LedgerError::Corrupt { height, reason };
        let block = SignedBlock::decode(v.value()).map_err(|e| corrupt(e.to_string()))?;
        let h = &block.header;
        if h.height != height {
            return Err(corrupt(format!("header says height {}", h.height)));
        }
        if !self.inner.genesis.is_node_key(&block.signer)
            || !block.signer.verify(&h.hash().0.0, &block.signature.0)
        {
            return Err(corrupt("block signature does not verify".into()));
        }
        let hashes: Vec<TxHash> = block.txs.iter().map(|t| t.body.hash()).collect();
        let root = medledger_merkle::log::root_of(hashes.iter().map(|h| &h.0.0[..]));
        if root != h.tx_root || block.txs.len() != h.tx_count as usize {
            return Err(corrupt("transactions do not match the block's root".into()));
        }
        Ok(block)
    }

    /// Signs and durably stores a [`VerifiedMark`] for the current tip. The commit is
    /// two-phase, so every block the mark covers is durable with it.
    pub fn record_verified(
        &self,
        source: crate::verified::MarkSource,
        signatures: bool,
    ) -> Result<crate::verified::VerifiedMark> {
        if source == crate::verified::MarkSource::Applied
            && self
                .inner
                .imported
                .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(LedgerError::CorruptMeta(
                "a snapshot was imported since the last check: not marking its blocks as applied here"
                    .into(),
            ));
        }
        let mut wtx = self.inner.db.begin_write()?;
        wtx.set_quick_repair(true);
        let mark = {
            let mut meta = wtx.open_table(META)?;
            let tip = stored_tip(&meta)?;
            let frontier = Frontier::load(&TableNodes(&wtx.open_table(MERKLE)?), tip.log_size)?;
            let state_digest = if tip.height == 0 {
                Digest32::default()
            } else {
                let blocks = wtx.open_table(BLOCKS)?;
                let raw = blocks
                    .get(tip.height)?
                    .ok_or(LedgerError::NoSuchBlock(tip.height))?;
                let header = SignedBlock::decode(raw.value())
                    .map_err(|e| LedgerError::Corrupt {
                        height: tip.height,
                        reason: e.to_string(),
                    })?
                    .header;
                // The mark names what the block says, and the stored log must agree.
                if header.hash() != tip.hash || header.log_root != frontier.root() {
                    return Err(LedgerError::Corrupt {
                        height: tip.height,
                        reason: "the tip block does not match the stored tip and Merkle log".into(),
                    });
                }
                header.state_digest
            };
            let mark = crate::verified::VerifiedMark {
                chain_id: self.inner.genesis.chain_id.as_str().to_owned(),
                height: tip.height,
                block_hash: tip.hash,
                log_size: tip.log_size,
                log_root: frontier.root(),
                state_digest,
                signatures,
                source,
                at_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
            };
            meta.insert(
                crate::verified::META_VERIFIED,
                &crate::verified::encode(mark.clone(), &self.inner.signer)[..],
            )?;
            mark
        };
        wtx.commit()?;
        Ok(mark)
    }

    /// The stored verified mark: `None` if there is none, an error if there is one
    /// that is not this node's or not for this chain.
    pub fn verified_mark(&self) -> Result<Option<crate::verified::VerifiedMark>> {
        self.meta(crate::verified::META_VERIFIED)?
            .map(|b| {
                crate::verified::decode(
                    &b,
                    &self.inner.signer.public(),
                    self.inner.genesis.chain_id.as_str(),
                )
            })
            .transpose()
    }

    /// A committed transaction and where it is.
    pub fn tx(&self, hash: &TxHash) -> Result<(TxLocation, SignedTx)> {
        let (loc, tx, _) = self.tx_in_block(hash)?.ok_or(LedgerError::NoSuchTx)?;
        Ok((loc, tx))
    }

    /// A committed transaction with where it is and the time of its block; `None` if
    /// the ledger does not hold it. One index lookup and one block read.
    pub fn tx_in_block(&self, hash: &TxHash) -> Result<Option<(TxLocation, SignedTx, u64)>> {
        let Some(loc) = self.tx_location(hash)? else {
            return Ok(None);
        };
        let block = self.block_for_scan(loc.height)?;
        let first = block.header.log_size - block.header.tx_count as u64;
        let tx = block
            .txs
            .get((loc.leaf_index - first) as usize)
            .cloned()
            .ok_or_else(|| LedgerError::Corrupt {
                height: loc.height,
                reason: "tx index".into(),
            })?;
        if tx.body.hash() != *hash || tx.verify_signature(hash).is_err() {
            return Err(LedgerError::Corrupt {
                height: loc.height,
                reason: "the transaction read does not verify".into(),
            });
        }
        Ok(Some((loc, tx, block.header.time_ms)))
    }

    pub fn tx_location(&self, hash: &TxHash) -> Result<Option<TxLocation>> {
        let rtx = self.inner.db.begin_read()?;
        let t = rtx.open_table(TX_INDEX)?;
        Ok(t.get(&hash.0.0[..])?.map(|v| {
            let (height, leaf_index) = v.value();
            TxLocation { height, leaf_index }
        }))
    }

    pub fn account(&self, id: &AccountId) -> Result<Option<AccountState>> {
        let rtx = self.inner.db.begin_read()?;
        let state = TableState(rtx.open_table(STATE)?);
        crate::exec::read_obj(&state, &contracts::state::account_key(id))
    }

    /// A consistent read-only view of the committed state, for queries
    /// (see [`crate::contracts::query`]).
    pub fn state(&self) -> Result<StateView> {
        let rtx = self.inner.db.begin_read()?;
        Ok(StateView(TableState(rtx.open_table(STATE)?)))
    }

    /// The signed tree head at `size` (a block boundary), or the latest.
    pub fn checkpoint(&self, size: Option<u64>) -> Result<SignedCheckpoint> {
        let tip = self.tip();
        let size = size.unwrap_or(tip.log_size);
        if size == 0 {
            return Err(LedgerError::NoSuchHead(0));
        }
        let height = {
            let rtx = self.inner.db.begin_read()?;
            let t = rtx.open_table(SIZES)?;
            t.get(size)?.ok_or(LedgerError::NoSuchHead(size))?.value()
        };
        let block = self.block_for_scan(height)?;
        let cp = Checkpoint {
            origin: self.inner.origin.clone(),
            size: block.header.log_size,
            root: block.header.log_root,
        };
        Ok(SignedCheckpoint::from_parts(
            cp,
            &signer_name(&self.inner.genesis, &block.signer),
            &block.signer,
            block.checkpoint_signature.0,
        ))
    }

    /// Inclusion proof of leaf `index` in the tree of `size` leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Digest32>> {
        let have = self.tip().log_size;
        let rtx = self.inner.db.begin_read()?;
        let t = rtx.open_table(MERKLE)?;
        Ok(medledger_merkle::inclusion_proof(
            &TableNodes(&t),
            size,
            index,
            have,
        )?)
    }

    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Digest32>> {
        let have = self.tip().log_size;
        let rtx = self.inner.db.begin_read()?;
        let t = rtx.open_table(MERKLE)?;
        Ok(medledger_merkle::consistency_proof(
            &TableNodes(&t),
            old,
            new,
            have,
        )?)
    }

    /// Everything in the ledger, for a Raft snapshot, with the values of `meta_keys`
    /// as of the same consistent read.
    pub fn export(&self, meta_keys: &[&str]) -> Result<Export> {
        let rtx = self.inner.db.begin_read()?;
        let mut dump = Dump::default();
        for r in rtx.open_table(BLOCKS)?.iter()? {
            let (k, v) = r?;
            dump.blocks.push((k.value(), v.value().to_vec()));
        }
        for r in rtx.open_table(TX_INDEX)?.iter()? {
            let (k, v) = r?;
            dump.tx_index.push((k.value().to_vec(), v.value()));
        }
        for r in rtx.open_table(MERKLE)?.iter()? {
            let (k, v) = r?;
            dump.merkle.push((k.value(), v.value().to_vec()));
        }
        for r in rtx.open_table(STATE)?.iter()? {
            let (k, v) = r?;
            dump.state.push((k.value().to_vec(), v.value().to_vec()));
        }
        for r in rtx.open_table(SIZES)?.iter()? {
            let (k, v) = r?;
            dump.sizes.push((k.value(), v.value()));
        }
        for r in rtx.open_table(META)?.iter()? {
            let (k, v) = r?;
            dump.meta.push((k.value().to_owned(), v.value().to_vec()));
        }
        let values = meta_keys
            .iter()
            .map(|k| {
                dump.meta
                    .iter()
                    .find(|(m, _)| m == k)
                    .map(|(_, v)| v.clone())
            })
            .collect();
        Ok((borsh::to_vec(&dump).expect("Vec"), values))
    }

    /// A consistent view of the whole ledger as of now (one read transaction) that
    /// writers do not wait for: what a backup dumps.
    pub fn snapshot_reader(&self) -> Result<LedgerSnapshot> {
        let rtx = self.inner.db.begin_read()?;
        let tip = stored_tip(&rtx.open_table(META)?)?;
        Ok(LedgerSnapshot { rtx, tip })
    }

    /// Creates `path` (which must not exist) from a [`LedgerSnapshot::dump`]. The result is
    /// checked by [`Ledger::open`] and `verify` like any stored ledger.
    pub fn load_dump(path: &Path, r: &mut impl std::io::Read) -> Result<u64> {
        use medledger_dump::{insert, unknown_table};
        let db = medledger_dump::create_new(path)?;
        let mut wtx = db.begin_write()?;
        wtx.set_quick_repair(true);
        let n = medledger_dump::load(r, &wtx, |wtx, table, k, v| match table {
            "meta" => insert(wtx, META, k, v),
            "blocks" => insert(wtx, BLOCKS, k, v),
            "tx_index" => insert(wtx, TX_INDEX, k, v),
            "merkle" => insert(wtx, MERKLE, k, v),
            "sizes" => insert(wtx, SIZES, k, v),
            "state" => insert(wtx, STATE, k, v),
            other => Err(unknown_table(other)),
        })?;
        wtx.commit()?;
        Ok(n)
    }

    /// Replaces the whole ledger with an [`Ledger::export`] image of the same genesis.
    pub fn import(&self, bytes: &[u8]) -> Result<()> {
        let dump = Dump::try_from_slice(bytes)
            .map_err(|e| LedgerError::CorruptMeta(format!("snapshot: {e}")))?;
        let genesis_hash = self.inner.genesis.hash();
        let theirs = dump
            .meta
            .iter()
            .find(|(k, _)| k == META_GENESIS)
            .map(|(_, v)| v.clone());
        if theirs.as_deref() != Some(&genesis_hash.0.0[..]) {
            return Err(LedgerError::GenesisMismatch {
                stored: theirs.map(|h| hex_of(&h)).unwrap_or_default(),
                given: genesis_hash.to_string(),
            });
        }
        let mut guard = self.lock_tip();
        let mut wtx = self.inner.db.begin_write()?;
        wtx.set_quick_repair(true);
        {
            let mut t = wtx.open_table(BLOCKS)?;
            t.retain(|_, _| false)?;
            for (k, v) in &dump.blocks {
                t.insert(*k, &v[..])?;
            }
            let mut t = wtx.open_table(TX_INDEX)?;
            t.retain(|_, _| false)?;
            for (k, v) in &dump.tx_index {
                t.insert(&k[..], *v)?;
            }
            let mut t = wtx.open_table(MERKLE)?;
            t.retain(|_, _| false)?;
            for (k, v) in &dump.merkle {
                t.insert(*k, &v[..])?;
            }
            let mut t = wtx.open_table(STATE)?;
            t.retain(|_, _| false)?;
            for (k, v) in &dump.state {
                t.insert(&k[..], &v[..])?;
            }
            let mut t = wtx.open_table(SIZES)?;
            t.retain(|_, _| false)?;
            for (k, v) in &dump.sizes {
                t.insert(*k, *v)?;
            }
            let mut t = wtx.open_table(META)?;
            t.retain(|_, _| false)?;
            // Another node's verified mark is not this node's: the imported blocks
            // were never checked here, so the next start checks everything.
            for (k, v) in dump
                .meta
                .iter()
                .filter(|(k, _)| k != crate::verified::META_VERIFIED)
            {
                t.insert(k.as_str(), &v[..])?;
            }
        }
        wtx.commit()?;
        // Nor may the running node mark them as applied by itself.
        self.inner
            .imported
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let tip = self.meta_tip()?;
        let rtx = self.inner.db.begin_read()?;
        let frontier = Frontier::load(&TableNodes(&rtx.open_table(MERKLE)?), tip.log_size)?;
        guard.tip = tip;
        guard.frontier = frontier;
        Ok(())
    }

    fn meta_tip(&self) -> Result<Tip> {
        let rtx = self.inner.db.begin_read()?;
        stored_tip(&rtx.open_table(META)?)
    }

    pub(crate) fn db(&self) -> &Database {
        &self.inner.db
    }
}

/// The committed state as of one read transaction.
pub struct StateView(TableState<redb::ReadOnlyTable<&'static [u8], &'static [u8]>>);

impl StateRead for StateView {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.0.get(key)
    }

    fn scan_page(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.0.scan_page(prefix, start_after, limit)
    }

    fn scan_page_rev(
        &self,
        prefix: &[u8],
        before: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.0.scan_rev(prefix, before, limit)
    }
}

/// A snapshot image and the requested metadata values read with it.
pub type Export = (Vec<u8>, Vec<Option<Vec<u8>>>);

#[derive(Default, BorshSerialize, BorshDeserialize)]
struct Dump {
    blocks: Vec<(u64, Vec<u8>)>,
    tx_index: Vec<(Vec<u8>, (u64, u64))>,
    merkle: Vec<(u64, Vec<u8>)>,
    state: Vec<(Vec<u8>, Vec<u8>)>,
    sizes: Vec<(u64, u64)>,
    meta: Vec<(String, Vec<u8>)>,
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod rev_scan_tests {
    use super::*;

    #[test]
    fn successor_bounds_a_prefix() {
        assert_eq!(successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(successor(&[1, 0xff]), Some(vec![2]));
        assert_eq!(successor(&[0xff, 0xff]), None);
    }

    #[test]
    fn the_stored_state_scans_backwards_like_a_plain_map() {
        const T: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("t");
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("s.redb")).unwrap();
        let mut map = std::collections::BTreeMap::new();
        let w = db.begin_write().unwrap();
        {
            let mut t = w.open_table(T).unwrap();
            for p in [&b"a/"[..], b"b/", &[0xff, 0xff]] {
                for i in 0u8..20 {
                    let k = [p, &[i]].concat();
                    t.insert(k.as_slice(), &[i][..]).unwrap();
                    map.insert(k, vec![i]);
                }
            }
        }
        w.commit().unwrap();
        let r = db.begin_read().unwrap();
        let stored = TableState(r.open_table(T).unwrap());
        for prefix in [&b"a/"[..], b"b/", &[0xff, 0xff], b"c/"] {
            for before in [
                None,
                Some([prefix, &[7]].concat()),
                Some([prefix, &[0]].concat()),
            ] {
                for limit in [0, 1, 5, 100] {
                    assert_eq!(
                        stored.scan_rev(prefix, before.as_deref(), limit).unwrap(),
                        map.scan_page_rev(prefix, before.as_deref(), limit).unwrap(),
                        "{prefix:?} {before:?} {limit}"
                    );
                }
            }
        }
        let newest = stored.scan_rev(b"b/", None, 2).unwrap();
        assert_eq!(newest[0].0, b"b/\x13".to_vec());
        assert_eq!(newest[1].0, b"b/\x12".to_vec());
    }
}
