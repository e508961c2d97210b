//! The whole-ledger Merkle log (RFC 6962 / RFC 9162 §2.1): hashing with leaf/node
//! domain prefixes, a log whose perfect-subtree nodes live in any [`NodeStore`]
//! (redb in the node), inclusion and consistency proofs for any tree size, C2SP
//! signed checkpoints, and offline verification that needs only a checkpoint and the
//! node's public key. Proof index math and proof verification come from `ct-merkle`.

pub mod checkpoint;
mod error;
pub mod hash;
pub mod log;
pub mod verify;

pub use checkpoint::{Checkpoint, SignedCheckpoint};
pub use error::{MerkleError, Result};
pub use log::{Frontier, MemNodeStore, NodeStore, consistency_proof, inclusion_proof, root_at};
