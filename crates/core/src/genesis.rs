//! Genesis: the configuration every node of a consortium starts from. Its hash stands
//! in for the hash of block 0, so two ledgers from different genesis files can never
//! share a block.

use crate::hash::{Digest32, TAG_GENESIS, tagged};
use crate::ids::{AccountId, BlockHash, ChainId, NodeKey};
use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

pub const GENESIS_VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct GenesisNode {
    /// The Raft node id.
    pub id: u64,
    pub key: NodeKey,
}

#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Genesis {
    pub version: u8,
    pub chain_id: ChainId,
    pub created_ms: u64,
    /// The consortium admin account.
    pub admin: AccountId,
    pub admin_encryption_key: Digest32,
    /// Nodes whose signatures on blocks and tree heads are accepted.
    pub nodes: Vec<GenesisNode>,
}

impl Genesis {
    pub fn hash(&self) -> BlockHash {
        let bytes = borsh::to_vec(self).expect("borsh encoding into a Vec cannot fail");
        BlockHash(tagged(TAG_GENESIS, &[&bytes]))
    }

    pub fn is_node_key(&self, key: &NodeKey) -> bool {
        self.nodes.iter().any(|n| &n.key == key)
    }
}
