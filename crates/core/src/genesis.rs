//! Genesis: the configuration every node of a consortium starts from. Its hash stands
//! in for the hash of block 0, so two ledgers from different genesis files can never
//! share a block.

use crate::hash::{Digest32, TAG_GENESIS, tagged};
use crate::ids::{AccountId, BlockHash, ChainId, NodeKey};
use crate::model::RetentionRule;
use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

pub const GENESIS_VERSION: u8 = 2;

/// Default length of break-glass access: 24 hours.
pub const DEFAULT_BREAK_GLASS_MS: u64 = 24 * 3600 * 1000;

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
    /// Rules of the contracts that the consortium fixes at genesis.
    pub params: ContractParams,
}

/// Consortium-wide parameters of the contracts.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct ContractParams {
    /// Charged to a registrant when an org admin approves them (0: free).
    pub registration_fee: u64,
    /// Who may withdraw collected fees.
    pub fee_owner: AccountId,
    /// How long break-glass access lasts.
    pub break_glass_ms: u64,
    /// Categories kept for a legal period despite erasure requests.
    pub retention: Vec<RetentionRule>,
}

impl ContractParams {
    /// No fee, the consortium admin owns the fees, 24 h break-glass, no retention.
    pub fn defaults(admin: AccountId) -> Self {
        ContractParams {
            registration_fee: 0,
            fee_owner: admin,
            break_glass_ms: DEFAULT_BREAK_GLASS_MS,
            retention: Vec::new(),
        }
    }
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
