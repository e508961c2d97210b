//! The node's signed record of how far its ledger is verified, so that start-up
//! checks only what came after instead of replaying the whole chain.
//!
//! A node writes a [`VerifiedMark`] after a full `verify` at start-up, and advances it
//! while it runs (every block it applied went through its own contracts) and when it
//! stops. The mark names the block (height, hash, Merkle log size and root, state
//! digest) and is signed with the node's key; it lives in the ledger's metadata and is
//! written in a durable commit, which also makes every block it covers durable.
//!
//! What start-up then proves ([`crate::Ledger::verify_since`]): the mark's signature;
//! that the stored block at its height is the block it names; that the stored Merkle
//! log still has the root it names; and for every later block everything but the
//! state replay (which needs the state as of the mark): hashes, chaining, block, tree
//! head and transaction signatures, transaction roots, the log, and the indexes.
//! Tampering with blocks the mark covers is caught by `medledger verify`, which
//! replays everything, and by reads, which check each block they decode.

use crate::error::{LedgerError, Result};
use borsh::{BorshDeserialize, BorshSerialize};
use medledger_core::{BlockHash, Digest32};
use serde::Serialize;

pub(crate) const META_VERIFIED: &str = "verified";
const TAG: &[u8] = b"medledger/verified-mark/v1\0";

/// How the blocks up to the mark were checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MarkSource {
    /// Replayed from genesis by `verify` (start-up's full check).
    Replayed,
    /// Applied by this node through its contracts since a verified mark.
    Applied,
}

/// What a node verified: everything up to and including block `height`.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize)]
pub struct VerifiedMark {
    pub chain_id: String,
    pub height: u64,
    pub block_hash: BlockHash,
    pub log_size: u64,
    pub log_root: Digest32,
    pub state_digest: Digest32,
    /// Whether every transaction signature up to here was checked.
    pub signatures: bool,
    pub source: MarkSource,
    pub at_ms: u64,
}

#[derive(BorshSerialize, BorshDeserialize)]
struct SignedMark {
    mark: VerifiedMark,
    signature: [u8; 64],
}

fn message(mark: &VerifiedMark) -> Digest32 {
    medledger_core::hash::tagged(TAG, &[&borsh::to_vec(mark).expect("Vec")])
}

pub(crate) fn encode(mark: VerifiedMark, signer: &medledger_core::NodeSigner) -> Vec<u8> {
    let signature = signer.sign(&message(&mark).0);
    borsh::to_vec(&SignedMark { mark, signature }).expect("Vec")
}

/// The stored mark, if its signature is this node's and it is for this chain.
pub(crate) fn decode(
    bytes: &[u8],
    key: &medledger_core::NodeKey,
    chain_id: &str,
) -> Result<VerifiedMark> {
    let bad = |why: &str| LedgerError::CorruptMeta(format!("verified mark: {why}"));
    let signed = SignedMark::try_from_slice(bytes).map_err(|_| bad("undecodable"))?;
    if !key.verify(&message(&signed.mark).0, &signed.signature) {
        return Err(bad("its signature is not this node's"));
    }
    if signed.mark.chain_id != chain_id {
        return Err(bad("it is for another chain"));
    }
    Ok(signed.mark)
}
