//! `verify`: recomputes every hash, signature, Merkle root and state digest from the
//! stored blocks, re-executing every transaction from genesis into a scratch state,
//! then checks the stored state, Merkle nodes and indexes against what it rebuilt.
//! The first inconsistency is reported with the height of the block it belongs to.

use crate::contracts::{self, BlockCtx};
use crate::error::{LedgerError, Result};
use crate::exec::Overlay;
use crate::store::{
    BLOCKS, MERKLE, META, SIZES, STATE, SigCheck, TX_INDEX, Tip, header_for, origin, precheck,
    signer_name,
};
use borsh::BorshDeserialize;
use medledger_core::tx::verify_signatures;
use medledger_core::{Digest32, Genesis, RejectReason, SignedBlock, SignedTx, TxHash};
use medledger_merkle::{Checkpoint, Frontier, SignedCheckpoint};
use rayon::prelude::*;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyMode {
    /// Everything, including every transaction signature.
    Full,
    /// Everything except per-transaction signatures (block and head signatures are
    /// still checked). Used for a fast start-up check.
    SkipTxSignatures,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub blocks: u64,
    pub txs: u64,
    pub tip: Tip,
    pub log_root: Digest32,
    pub seconds: f64,
    pub txs_per_second: f64,
    /// The verified mark the check started after (0: everything from genesis).
    pub from_height: u64,
}

fn corrupt(height: u64, reason: impl Into<String>) -> LedgerError {
    LedgerError::Corrupt {
        height,
        reason: reason.into(),
    }
}

/// How many blocks are decoded and signature-checked in parallel at a time.
const CHUNK: u64 = 64;

struct Decoded {
    height: u64,
    block: SignedBlock,
    txs: Vec<(SignedTx, TxHash)>,
}

/// Decodes a block and runs every per-transaction check except signatures, which
/// [`check_signatures`] does for a whole chunk of blocks at once.
fn decode_block(db_block: Option<Vec<u8>>, height: u64, genesis: &Genesis) -> Result<Decoded> {
    let raw = db_block.ok_or_else(|| corrupt(height, "block is missing"))?;
    let block =
        SignedBlock::decode(&raw).map_err(|e| corrupt(height, format!("undecodable: {e}")))?;
    let encoded: Vec<Vec<u8>> = block.txs.iter().map(SignedTx::to_bytes).collect();
    let mut txs = Vec::with_capacity(encoded.len());
    for (i, r) in precheck(genesis, &encoded, SigCheck::Skip)
        .into_iter()
        .enumerate()
    {
        match r {
            Ok(t) => txs.push(t),
            Err((_, reason)) => return Err(corrupt(height, format!("transaction {i}: {reason}"))),
        }
    }
    // Signatures over the header and the tree head need no earlier block, so they are
    // checked here, in parallel, rather than in the sequential replay.
    if !genesis.is_node_key(&block.signer) {
        return Err(corrupt(
            height,
            "signed by a key that is not a genesis node",
        ));
    }
    let h = &block.header;
    if !block.signer.verify(&h.hash().0.0, &block.signature.0) {
        return Err(corrupt(height, "block signature does not verify"));
    }
    let cp = Checkpoint {
        origin: origin(genesis),
        size: h.log_size,
        root: h.log_root,
    };
    SignedCheckpoint::from_parts(
        cp,
        &signer_name(genesis, &block.signer),
        &block.signer,
        block.checkpoint_signature.0,
    )
    .verify(&block.signer)
    .map_err(|_| corrupt(height, "tree-head signature does not verify"))?;
    Ok(Decoded { height, block, txs })
}

/// Verifies the signatures of every decoded block in a chunk. Batch verification
/// gets cheaper per signature as batches grow, so the chunk's signatures are pooled
/// and split evenly over the cores rather than verified block by block. Returns the
/// first block (in height order) with a bad signature, and which transaction.
fn check_signatures(decoded: &[Result<Decoded>]) -> Option<(u64, usize)> {
    let all: Vec<(&SignedTx, TxHash, u64, usize)> = decoded
        .iter()
        .flatten()
        .flat_map(|d| {
            d.txs
                .iter()
                .enumerate()
                .map(move |(i, (t, h))| (t, *h, d.height, i))
        })
        .collect();
    let parts = rayon::current_num_threads().max(1);
    let size = all.len().div_ceil(parts).max(1);
    let verdicts: Vec<bool> = all
        .par_chunks(size)
        .flat_map_iter(|chunk| {
            let pairs: Vec<(&SignedTx, TxHash)> =
                chunk.iter().map(|(t, h, _, _)| (*t, *h)).collect();
            verify_signatures(&pairs)
        })
        .collect();
    all.iter()
        .zip(verdicts)
        .find(|(_, ok)| !ok)
        .map(|((_, _, height, i), _)| (*height, *i))
}

/// What a block must be, given the one before it, before its contents are looked at:
/// its transactions' signatures (the chunk's verdict), its height, its chaining, its
/// chain and its time.
fn check_link(
    height: u64,
    bad_signature: Option<(u64, usize)>,
    h: &medledger_core::BlockHeader,
    prev: &Tip,
    genesis: &Genesis,
) -> Result<()> {
    if let Some((bad, i)) = bad_signature
        && bad == height
    {
        return Err(corrupt(
            height,
            format!("transaction {i}: {}", RejectReason::BadSignature),
        ));
    }
    if h.height != height {
        return Err(corrupt(height, format!("header says height {}", h.height)));
    }
    if h.prev_hash != prev.hash {
        return Err(corrupt(height, "previous-block hash does not match"));
    }
    if h.chain_id != genesis.chain_id {
        return Err(corrupt(height, "chain id does not match genesis"));
    }
    if h.time_ms < prev.time_ms {
        return Err(corrupt(height, "block time goes backwards"));
    }
    Ok(())
}

/// The stored transaction index entries and tree-size entry of a block.
fn check_indexes(
    height: u64,
    h: &medledger_core::BlockHeader,
    hashes: &[TxHash],
    index_t: &impl ReadableTable<&'static [u8], (u64, u64)>,
    sizes_t: &impl ReadableTable<u64, u64>,
) -> Result<()> {
    let first_leaf = h.log_size - h.tx_count as u64;
    for (i, hash) in hashes.iter().enumerate() {
        let got = index_t.get(&hash.0.0[..])?.map(|v| v.value());
        if got != Some((height, first_leaf + i as u64)) {
            return Err(corrupt(
                height,
                format!("tx index entry for transaction {i} is wrong"),
            ));
        }
    }
    if sizes_t.get(h.log_size)?.map(|v| v.value()) != Some(height) {
        return Err(corrupt(height, "tree-size index is wrong"));
    }
    Ok(())
}

/// Verifies the ledger file at `path` against `genesis`. `progress(done, total)` is
/// called with transaction counts as blocks are checked.
pub fn verify_ledger(
    path: &Path,
    genesis: &Genesis,
    mode: VerifyMode,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<VerifyReport> {
    let started = Instant::now();
    let db = Database::open(path)?;
    verify_db(&db, genesis, mode, progress, started)
}

pub(crate) fn verify_db(
    db: &Database,
    genesis: &Genesis,
    mode: VerifyMode,
    progress: &(dyn Fn(u64, u64) + Sync),
    started: Instant,
) -> Result<VerifyReport> {
    let rtx = db.begin_read()?;
    let meta = rtx.open_table(META)?;
    let genesis_hash = genesis.hash();
    match meta.get("genesis_hash")? {
        Some(h) if h.value() == &genesis_hash.0.0[..] => {}
        _ => {
            return Err(LedgerError::CorruptMeta(
                "genesis hash does not match genesis.json".into(),
            ));
        }
    }
    let tip_bytes = meta
        .get("tip")?
        .ok_or_else(|| LedgerError::CorruptMeta("no tip".into()))?;
    let tip = Tip::try_from_slice(tip_bytes.value())
        .map_err(|e| LedgerError::CorruptMeta(format!("tip: {e}")))?;
    let blocks_t = rtx.open_table(BLOCKS)?;
    let index_t = rtx.open_table(TX_INDEX)?;
    let sizes_t = rtx.open_table(SIZES)?;
    if let Some(last) = blocks_t.last()?
        && last.0.value() != tip.height
    {
        return Err(corrupt(
            last.0.value(),
            format!("block beyond the recorded tip {}", tip.height),
        ));
    }

    let mut state: BTreeMap<Vec<u8>, Vec<u8>> = contracts::genesis_writes(genesis);
    let mut last_writer: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    let mut nodes: BTreeMap<u64, Digest32> = BTreeMap::new();
    let mut frontier = Frontier::new();
    let mut prev = Tip {
        height: 0,
        hash: genesis_hash,
        time_ms: genesis.created_ms,
        log_size: 0,
    };
    let mut boundaries: Vec<(u64, u64)> = Vec::new(); // (log size after, height)

    let read_chunk = |from: u64| -> Result<Vec<(u64, Option<Vec<u8>>)>> {
        let to = (from + CHUNK - 1).min(tip.height);
        let mut raws = Vec::with_capacity((to + 1 - from) as usize);
        for h in from..=to {
            raws.push((h, blocks_t.get(h)?.map(|v| v.value().to_vec())));
        }
        Ok(raws)
    };
    let prepare = |raws: Vec<(u64, Option<Vec<u8>>)>| {
        let decoded: Vec<Result<Decoded>> = raws
            .into_par_iter()
            .map(|(h, raw)| decode_block(raw, h, genesis))
            .collect();
        let bad = if mode == VerifyMode::Full {
            check_signatures(&decoded)
        } else {
            None
        };
        (decoded, bad)
    };
    // A two-stage pipeline: while chunk k is replayed in order (state, Merkle log,
    // indexes), chunk k+1 is decoded and its signatures verified on the other cores.
    let mut current = if tip.height >= 1 {
        Some(prepare(read_chunk(1)?))
    } else {
        None
    };
    let mut next = 1 + CHUNK;
    while let Some((decoded, bad_signature)) = current.take() {
        let raws = if next <= tip.height {
            Some(read_chunk(next)?)
        } else {
            None
        };
        next += CHUNK;
        let (prepared, replayed) = rayon::join(
            || raws.map(&prepare),
            || -> Result<()> {
                for d in decoded {
                    let Decoded { height, block, txs } = d?;
                    let h = &block.header;
                    check_link(height, bad_signature, h, &prev, genesis)?;

                    let base = &state;
                    let mut overlay = Overlay::new(base);
                    let ctx = BlockCtx {
                        genesis,
                        time_ms: h.time_ms.max(prev.time_ms),
                    };
                    for (i, (tx, hash)) in txs.iter().enumerate() {
                        if let Err(reason) = contracts::execute(&mut overlay, tx, hash, &ctx)? {
                            return Err(corrupt(
                                height,
                                format!("transaction {i} would be rejected: {reason}"),
                            ));
                        }
                    }
                    let writes = std::mem::take(&mut overlay.writes);
                    let hashes: Vec<TxHash> = txs.iter().map(|(_, h)| *h).collect();
                    let mut new_nodes = Vec::new();
                    let expected = header_for(
                        genesis,
                        &prev,
                        h.time_ms,
                        &hashes,
                        &writes,
                        &mut frontier,
                        &mut new_nodes,
                    );
                    for (what, ok) in [
                        (
                            "transaction root",
                            expected.tx_root == h.tx_root && expected.tx_count == h.tx_count,
                        ),
                        ("state digest", expected.state_digest == h.state_digest),
                        (
                            "ledger Merkle root",
                            expected.log_root == h.log_root && expected.log_size == h.log_size,
                        ),
                        ("header", &expected == h),
                    ] {
                        if !ok {
                            return Err(corrupt(
                                height,
                                format!("{what} does not match its contents"),
                            ));
                        }
                    }
                    check_indexes(height, h, &hashes, &index_t, &sizes_t)?;
                    for k in writes.keys() {
                        last_writer.insert(k.clone(), height);
                    }
                    crate::exec::apply_writes(&mut state, writes);
                    nodes.extend(new_nodes);
                    boundaries.push((h.log_size, height));
                    prev = Tip {
                        height,
                        hash: h.hash(),
                        time_ms: h.time_ms,
                        log_size: h.log_size,
                    };
                    progress(prev.log_size, tip.log_size);
                }
                Ok(())
            },
        );
        replayed?;
        current = prepared;
    }
    if prev != tip {
        return Err(LedgerError::CorruptMeta(
            "recorded tip does not match the last block".into(),
        ));
    }

    // Stored derived data must equal what the blocks imply.
    let block_of_leaf = |leaf: u64| {
        let i = boundaries.partition_point(|(size, _)| *size <= leaf);
        boundaries.get(i).map(|(_, h)| *h).unwrap_or(tip.height)
    };
    let state_t = rtx.open_table(STATE)?;
    let mut stored_count = 0usize;
    for r in state_t.iter()? {
        let (k, v) = r?;
        stored_count += 1;
        let key = k.value();
        if state.get(key).map(Vec::as_slice) != Some(v.value()) {
            let h = last_writer.get(key).copied().unwrap_or(tip.height);
            return Err(corrupt(
                h,
                "stored state differs from the state the blocks produce",
            ));
        }
    }
    if stored_count != state.len() {
        return Err(corrupt(tip.height, "stored state is missing entries"));
    }
    let merkle_t = rtx.open_table(MERKLE)?;
    let mut merkle_count = 0usize;
    for r in merkle_t.iter()? {
        let (k, v) = r?;
        merkle_count += 1;
        let idx = k.value();
        if nodes.get(&idx).map(|d| &d.0[..]) != Some(v.value()) {
            let level = idx.trailing_ones();
            let first_leaf = (idx >> (level + 1)) << level;
            let last_leaf = first_leaf + (1u64 << level) - 1;
            return Err(corrupt(
                block_of_leaf(last_leaf),
                format!("stored Merkle node {idx} is wrong"),
            ));
        }
    }
    if merkle_count != nodes.len() {
        return Err(corrupt(tip.height, "stored Merkle nodes are missing"));
    }
    if index_t.len()? != tip.log_size {
        return Err(corrupt(
            tip.height,
            "tx index has entries no block accounts for",
        ));
    }

    let seconds = started.elapsed().as_secs_f64();
    Ok(VerifyReport {
        blocks: tip.height,
        txs: tip.log_size,
        log_root: frontier.root(),
        txs_per_second: if seconds > 0.0 {
            tip.log_size as f64 / seconds
        } else {
            0.0
        },
        tip,
        seconds,
        from_height: 0,
    })
}

impl crate::Ledger {
    /// Runs [`verify_ledger`] on this open ledger (used as the start-up check).
    pub fn verify(
        &self,
        mode: VerifyMode,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<VerifyReport> {
        verify_db(self.db(), self.genesis(), mode, progress, Instant::now())
    }
}

impl crate::Ledger {
    /// The start-up check after a verified mark (see [`crate::verified`]): the mark's
    /// block and Merkle log are the stored ones, and every later block passes every
    /// check but the state replay. The report counts only the blocks checked here;
    /// `from_height` is the mark's height.
    pub fn verify_since(
        &self,
        mark: &crate::verified::VerifiedMark,
        mode: VerifyMode,
    ) -> Result<VerifyReport> {
        let started = Instant::now();
        let genesis = self.genesis();
        let rtx = self.db().begin_read()?;
        let meta = rtx.open_table(META)?;
        let tip = meta
            .get("tip")?
            .map(|v| Tip::try_from_slice(v.value()))
            .transpose()
            .map_err(|e| LedgerError::CorruptMeta(format!("tip: {e}")))?
            .ok_or_else(|| LedgerError::CorruptMeta("no tip".into()))?;
        let blocks_t = rtx.open_table(BLOCKS)?;
        let index_t = rtx.open_table(TX_INDEX)?;
        let sizes_t = rtx.open_table(SIZES)?;
        let merkle_t = rtx.open_table(MERKLE)?;
        if tip.height < mark.height {
            return Err(corrupt(
                tip.height,
                format!(
                    "the ledger ends before block {}, which this node verified",
                    mark.height
                ),
            ));
        }
        if let Some(last) = blocks_t.last()?
            && last.0.value() != tip.height
        {
            return Err(corrupt(
                last.0.value(),
                format!("block beyond the recorded tip {}", tip.height),
            ));
        }
        let mut prev = if mark.height == 0 {
            Tip {
                height: 0,
                hash: genesis.hash(),
                time_ms: genesis.created_ms,
                log_size: 0,
            }
        } else {
            let raw = blocks_t
                .get(mark.height)?
                .ok_or_else(|| corrupt(mark.height, "block is missing"))?;
            let d = decode_block(Some(raw.value().to_vec()), mark.height, genesis)?;
            let h = &d.block.header;
            if h.hash() != mark.block_hash
                || h.log_size != mark.log_size
                || h.log_root != mark.log_root
            {
                return Err(corrupt(
                    mark.height,
                    "it is not the block this node verified",
                ));
            }
            Tip {
                height: mark.height,
                hash: h.hash(),
                time_ms: h.time_ms,
                log_size: h.log_size,
            }
        };
        let mut frontier = Frontier::load(&crate::store::TableNodes(&merkle_t), mark.log_size)?;
        if frontier.root() != mark.log_root {
            return Err(corrupt(
                mark.height,
                "the stored Merkle log no longer has the root this node verified",
            ));
        }
        let mut from = mark.height + 1;
        while from <= tip.height {
            let to = (from + CHUNK - 1).min(tip.height);
            let mut raws = Vec::with_capacity((to + 1 - from) as usize);
            for h in from..=to {
                raws.push((h, blocks_t.get(h)?.map(|v| v.value().to_vec())));
            }
            let decoded: Vec<Result<Decoded>> = raws
                .into_par_iter()
                .map(|(h, raw)| decode_block(raw, h, genesis))
                .collect();
            let bad_signature = if mode == VerifyMode::Full {
                check_signatures(&decoded)
            } else {
                None
            };
            for d in decoded {
                let Decoded { height, block, txs } = d?;
                let h = &block.header;
                check_link(height, bad_signature, h, &prev, genesis)?;
                let hashes: Vec<TxHash> = txs.iter().map(|(_, h)| *h).collect();
                let tx_root = medledger_merkle::log::root_of(hashes.iter().map(|h| &h.0.0[..]));
                if tx_root != h.tx_root || hashes.len() != h.tx_count as usize {
                    return Err(corrupt(
                        height,
                        "transaction root does not match its contents",
                    ));
                }
                for hash in &hashes {
                    frontier.push(&hash.0.0, |_, _| {});
                }
                if frontier.root() != h.log_root || frontier.size() != h.log_size {
                    return Err(corrupt(
                        height,
                        "ledger Merkle root does not match its contents",
                    ));
                }
                check_indexes(height, h, &hashes, &index_t, &sizes_t)?;
                prev = Tip {
                    height,
                    hash: h.hash(),
                    time_ms: h.time_ms,
                    log_size: h.log_size,
                };
            }
            from = to + 1;
        }
        if prev != tip {
            return Err(LedgerError::CorruptMeta(
                "recorded tip does not match the last block".into(),
            ));
        }
        let seconds = started.elapsed().as_secs_f64();
        let txs = tip.log_size - mark.log_size;
        Ok(VerifyReport {
            blocks: tip.height - mark.height,
            txs,
            log_root: frontier.root(),
            txs_per_second: if seconds > 0.0 {
                txs as f64 / seconds
            } else {
                0.0
            },
            tip,
            seconds,
            from_height: mark.height,
        })
    }
}
