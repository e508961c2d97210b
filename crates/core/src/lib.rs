//! The bottom layer of medledger: identifiers, transactions, blocks and genesis, with
//! their canonical (`borsh`) encodings and domain-separated hashes. No I/O lives here.

pub mod block;
pub mod error;
pub mod genesis;
pub mod hash;
pub mod ids;
pub mod keys;
pub mod model;
#[cfg(feature = "openapi")]
mod openapi;
pub mod tx;

pub use block::{BlockHeader, SignedBlock};
pub use error::{CoreError, RejectReason, Result};
pub use genesis::{ContractParams, Genesis};
pub use hash::Digest32;
pub use ids::{AccountId, BlockHash, ChainId, NodeKey, TxHash};
pub use keys::NodeSigner;
pub use model::{
    AccessReport, AgreementId, BreakGlassId, Category, Cid, EmergencyReason, ErasureTarget,
    GrantId, Grantee, MessageId, OrgId, Purpose, RecordId, RecordWrite, RetentionRule, Role, Scope,
};
pub use tx::{MAX_TX_BYTES, Payload, SignedTx, TxBody};
