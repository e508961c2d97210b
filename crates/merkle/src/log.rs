//! The append-only log. Only *perfect* subtrees (2^k leaves, aligned) are stored,
//! each once, when it completes; they never change. Any node of any historical tree
//! size is a perfect node or is computed from O(log n) of them, which is what makes
//! proofs for every earlier tree head possible without keeping old trees around.
//!
//! Nodes are addressed by their in-order (array-tree) index, the layout `ct-merkle`
//! uses for its proof index math: leaf `i` is `2i`, the perfect subtree of level `k`
//! and position `j` is `j·2^(k+1) + 2^k − 1`.

use crate::error::{MerkleError, Result};
use crate::hash::{empty_root, leaf_hash, node_hash};
use medledger_core::Digest32;
use std::collections::BTreeMap;

/// Read access to stored perfect-subtree nodes.
pub trait NodeStore {
    fn get_node(&self, index: u64) -> Result<Option<Digest32>>;
}

/// An in-memory node store: used to compute per-block tx roots, by `verify` as its
/// scratch space, and in tests. The node keeps the ledger's log in redb.
#[derive(Debug, Default, Clone)]
pub struct MemNodeStore(pub BTreeMap<u64, Digest32>);

impl NodeStore for MemNodeStore {
    fn get_node(&self, index: u64) -> Result<Option<Digest32>> {
        Ok(self.0.get(&index).copied())
    }
}

fn node_index(level: u32, position: u64) -> u64 {
    (position << (level + 1)) + (1u64 << level) - 1
}

fn get(store: &impl NodeStore, index: u64) -> Result<Digest32> {
    store
        .get_node(index)?
        .ok_or(MerkleError::MissingNode(index))
}

/// The right edge of the tree: one root per perfect subtree ("peaks"), largest first.
/// Enough to append and to compute the current root in O(log n) memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    peaks: Vec<Digest32>,
}

impl Frontier {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds the frontier of a tree of `size` leaves from its stored nodes.
    pub fn load(store: &impl NodeStore, size: u64) -> Result<Self> {
        let mut peaks = Vec::new();
        let mut start = 0u64;
        for level in (0..64u32).rev() {
            if size & (1u64 << level) != 0 {
                peaks.push(get(store, node_index(level, start >> level))?);
                start += 1u64 << level;
            }
        }
        Ok(Frontier { size, peaks })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends one leaf; `emit` receives every node that became complete (the leaf and
    /// the perfect subtrees it closed), to be stored.
    pub fn push(&mut self, leaf_data: &[u8], mut emit: impl FnMut(u64, Digest32)) {
        let n = self.size;
        let mut cur = leaf_hash(leaf_data);
        emit(2 * n, cur);
        let mut level = 0u32;
        while (n >> level) & 1 == 1 {
            let left = self
                .peaks
                .pop()
                .expect("a set bit of the size always has a peak");
            cur = node_hash(&left, &cur);
            level += 1;
            emit(node_index(level, ((n + 1) >> level) - 1), cur);
        }
        self.peaks.push(cur);
        self.size += 1;
    }

    pub fn root(&self) -> Digest32 {
        let mut iter = self.peaks.iter().rev();
        let Some(last) = iter.next() else {
            return empty_root();
        };
        iter.fold(*last, |acc, peak| node_hash(peak, &acc))
    }
}

/// RFC 6962 root of an arbitrary list of leaves (used for a block's tx root).
pub fn root_of<'a>(leaves: impl IntoIterator<Item = &'a [u8]>) -> Digest32 {
    let mut f = Frontier::new();
    for leaf in leaves {
        f.push(leaf, |_, _| {});
    }
    f.root()
}

/// MTH(D[lo:hi]) from stored perfect nodes (RFC 6962 §2.1's split at the largest
/// power of two below the length).
fn subtree_hash(store: &impl NodeStore, lo: u64, hi: u64) -> Result<Digest32> {
    let n = hi - lo;
    if n.is_power_of_two() && lo.is_multiple_of(n) {
        return get(store, node_index(n.trailing_zeros(), lo / n));
    }
    let k = 1u64 << (63 - (n - 1).leading_zeros());
    let left = subtree_hash(store, lo, lo + k)?;
    let right = subtree_hash(store, lo + k, hi)?;
    Ok(node_hash(&left, &right))
}

/// The value of array-tree node `index` in the tree of `size` leaves.
fn node_at_size(store: &impl NodeStore, index: u64, size: u64) -> Result<Digest32> {
    let level = index.trailing_ones();
    let lo = (index >> (level + 1)) << level;
    let hi = (lo + (1u64 << level)).min(size);
    subtree_hash(store, lo, hi)
}

fn check_size(size: u64, have: u64) -> Result<()> {
    if size > have {
        return Err(MerkleError::SizeOutOfRange {
            requested: size,
            have,
        });
    }
    Ok(())
}

/// Root of the tree made of the first `size` leaves of a log that has `have`.
pub fn root_at(store: &impl NodeStore, size: u64, have: u64) -> Result<Digest32> {
    check_size(size, have)?;
    if size == 0 {
        return Ok(empty_root());
    }
    subtree_hash(store, 0, size)
}

/// Audit path for leaf `index` in the tree of the first `size` leaves.
pub fn inclusion_proof(
    store: &impl NodeStore,
    size: u64,
    index: u64,
    have: u64,
) -> Result<Vec<Digest32>> {
    check_size(size, have)?;
    if index >= size {
        return Err(MerkleError::IndexOutOfRange { index, size });
    }
    ct_merkle::indices_for_inclusion_proof(size, index)
        .into_iter()
        .map(|i| node_at_size(store, i, size))
        .collect()
}

/// Proof that the tree of `old` leaves is a prefix of the tree of `new` leaves.
pub fn consistency_proof(
    store: &impl NodeStore,
    old: u64,
    new: u64,
    have: u64,
) -> Result<Vec<Digest32>> {
    check_size(new, have)?;
    if old == 0 || old > new {
        return Err(MerkleError::BadSizes { old, new });
    }
    ct_merkle::indices_for_consistency_proof(old, new - old)
        .into_iter()
        .map(|i| node_at_size(store, i, new))
        .collect()
}
