//! Blocks: one per committed batch. The header commits to the previous block, the
//! block's transactions, the whole-ledger Merkle log after the block, and the state
//! writes; the node that applied it signs the header hash.

use crate::hash::{Digest32, TAG_BLOCK, tagged};
use crate::ids::{BlockHash, ChainId, NodeKey};
use crate::tx::{SignatureBytes, SignedTx};
use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

pub const BLOCK_VERSION: u8 = 1;

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct BlockHeader {
    pub version: u8,
    pub chain_id: ChainId,
    /// 1 for the first block; the genesis hash stands in as block 0's hash.
    pub height: u64,
    pub prev_hash: BlockHash,
    /// Milliseconds since the Unix epoch, chosen by the leader when it proposed the
    /// batch, so every replica computes the same header. Never decreases.
    pub time_ms: u64,
    /// RFC 6962 root over this block's tx hashes.
    pub tx_root: Digest32,
    pub tx_count: u32,
    /// RFC 6962 root of the whole-ledger log after this block.
    pub log_root: Digest32,
    /// Total transactions in the ledger after this block (the log's tree size).
    pub log_size: u64,
    /// Digest of every state write this block made (see `hash::StateDigest`).
    pub state_digest: Digest32,
}

impl BlockHeader {
    pub fn hash(&self) -> BlockHash {
        let bytes = borsh::to_vec(self).expect("borsh encoding into a Vec cannot fail");
        BlockHash(tagged(TAG_BLOCK, &[&bytes]))
    }
}

/// A block as stored: header, the node's signature over the header hash, the C2SP
/// checkpoint signature for the tree head after the block, and the transactions.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct SignedBlock {
    pub header: BlockHeader,
    pub signer: NodeKey,
    pub signature: SignatureBytes,
    pub checkpoint_signature: SignatureBytes,
    pub txs: Vec<SignedTx>,
}

impl SignedBlock {
    pub fn to_bytes(&self) -> Vec<u8> {
        borsh::to_vec(self).expect("borsh encoding into a Vec cannot fail")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, crate::CoreError> {
        borsh::from_slice(bytes).map_err(|e| crate::CoreError::Decode(e.to_string()))
    }
}
