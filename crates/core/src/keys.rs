//! Key generation and the node's signing key. Randomness comes from the OS.

use crate::error::CoreError;
use crate::ids::NodeKey;
use ed25519_dalek::{Signer, SigningKey};

/// 32 bytes from the operating system's CSPRNG.
pub fn random_bytes32() -> Result<[u8; 32], CoreError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|_| CoreError::Rng)?;
    Ok(seed)
}

pub fn generate_signing_key() -> Result<SigningKey, CoreError> {
    Ok(SigningKey::from_bytes(&random_bytes32()?))
}

/// The key a node signs blocks and tree heads with.
#[derive(Clone)]
pub struct NodeSigner {
    key: SigningKey,
}

impl std::fmt::Debug for NodeSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeSigner({})", self.public())
    }
}

impl NodeSigner {
    pub fn new(key: SigningKey) -> Self {
        NodeSigner { key }
    }

    pub fn public(&self) -> NodeKey {
        NodeKey(self.key.verifying_key().to_bytes())
    }

    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }
}
