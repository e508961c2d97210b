//! Encrypted keystore files: an account's Ed25519 signing key and X25519 encryption
//! key, sealed with XChaCha20-Poly1305 under a key derived from a password with
//! Argon2id. The KDF parameters are stored in the file so they can be raised later;
//! the defaults follow the OWASP password-storage guidance (19 MiB, t=2, p=1).
//!
//! Its own crate because keystores are parsed from untrusted uploads
//! (`/auth/enroll`): the fuzz target opens them without building the node.

use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use ed25519_dalek::SigningKey;
use medledger_core::keys::random_bytes32;
use medledger_core::{AccountId, Digest32};
use serde::{Deserialize, Serialize};
use std::path::Path;
use thiserror::Error;

pub type Result<T, E = KeystoreError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum KeystoreError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}: malformed keystore: {1}")]
    Malformed(String, String),
    /// Wrong password, or the file was changed.
    #[error("keystore: wrong password or corrupted keystore")]
    Decrypt,
    /// Unsupported version, cipher or KDF, or KDF parameters beyond the bounds.
    #[error("keystore: {0}")]
    Invalid(String),
    #[error(transparent)]
    Core(#[from] medledger_core::CoreError),
}

impl KeystoreError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        KeystoreError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

pub const KEYSTORE_VERSION: u8 = 1;

/// The most work a keystore may ask of its KDF. Keystores are uploaded by people
/// nobody has authenticated yet (`/auth/enroll`), so their parameters are checked
/// against these before any hashing: the bounds allow about seven times the work of
/// the OWASP defaults this node writes (19 MiB, t=2, p=1; 43 ms here), so stronger
/// keystores still open, but one request buys at most about 0.3 s of one core and
/// 64 MiB (at 256 MiB and t=10 it was 3.1 s, measured by the keystore fuzz target).
pub const MAX_KDF_MEMORY_KIB: u32 = 64 * 1024;
pub const MAX_KDF_ITERATIONS: u32 = 4;
pub const MAX_KDF_PARALLELISM: u32 = 4;
/// Salts are 16-64 bytes (base64 text up to 88 characters).
const MAX_SALT_B64: usize = 88;

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KdfParams {
    pub algorithm: String,
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    pub salt: String,
}

impl KdfParams {
    fn owasp(salt: &[u8]) -> Self {
        KdfParams {
            algorithm: "argon2id".into(),
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
            salt: B64.encode(salt),
        }
    }

    fn derive(&self, password: &[u8]) -> Result<[u8; 32]> {
        if self.algorithm != "argon2id" {
            return Err(KeystoreError::Invalid(format!(
                "unsupported KDF {}",
                self.algorithm
            )));
        }
        if self.memory_kib > MAX_KDF_MEMORY_KIB
            || self.iterations > MAX_KDF_ITERATIONS
            || self.parallelism > MAX_KDF_PARALLELISM
            || self.salt.len() > MAX_SALT_B64
        {
            return Err(KeystoreError::Invalid(format!(
                "KDF parameters beyond this node's bounds (memory ≤ {MAX_KDF_MEMORY_KIB} KiB, \
                 iterations ≤ {MAX_KDF_ITERATIONS}, parallelism ≤ {MAX_KDF_PARALLELISM})"
            )));
        }
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
            .map_err(|e| KeystoreError::Invalid(e.to_string()))?;
        let salt = B64
            .decode(&self.salt)
            .map_err(|_| KeystoreError::Invalid("bad salt".into()))?;
        let mut key = [0u8; 32];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(password, &salt, &mut key)
            .map_err(|e| KeystoreError::Invalid(e.to_string()))?;
        Ok(key)
    }
}

/// The keystore file (JSON).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeystoreFile {
    pub version: u8,
    /// The account this keystore holds, as did:key (not secret).
    pub account: AccountId,
    pub encryption_key: Digest32,
    pub kdf: KdfParams,
    pub cipher: String,
    pub nonce: String,
    pub ciphertext: String,
}

/// Decrypted account keys.
pub struct AccountKeys {
    pub signing: SigningKey,
    pub encryption_secret: [u8; 32],
}

impl std::fmt::Debug for AccountKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AccountKeys({})", self.account())
    }
}

impl AccountKeys {
    pub fn generate() -> Result<Self> {
        Ok(AccountKeys {
            signing: SigningKey::from_bytes(&random_bytes32()?),
            encryption_secret: random_bytes32()?,
        })
    }

    pub fn account(&self) -> AccountId {
        AccountId(self.signing.verifying_key().to_bytes())
    }

    pub fn encryption_public(&self) -> Digest32 {
        let secret = x25519_dalek::StaticSecret::from(self.encryption_secret);
        Digest32(x25519_dalek::PublicKey::from(&secret).to_bytes())
    }

    /// The secret key material (signing key ‖ encryption secret), the one layout every
    /// sealed copy uses: keystores, API-token copies, custody.
    pub fn secret_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64);
        b.extend_from_slice(&self.signing.to_bytes());
        b.extend_from_slice(&self.encryption_secret);
        b
    }

    /// Keys from [`Self::secret_bytes`]; `None` unless exactly 64 bytes.
    pub fn from_secret_bytes(b: &[u8]) -> Option<Self> {
        let signing: [u8; 32] = b.get(..32)?.try_into().ok()?;
        let encryption_secret: [u8; 32] = b.get(32..)?.try_into().ok()?;
        Some(AccountKeys {
            signing: SigningKey::from_bytes(&signing),
            encryption_secret,
        })
    }

    /// Seals these keys under `password`.
    pub fn seal(&self, password: &[u8]) -> Result<KeystoreFile> {
        let salt = random_bytes32()?;
        let kdf = KdfParams::owasp(&salt[..16]);
        let key = kdf.derive(password)?;
        let nonce: [u8; 24] = random_bytes32()?[..24].try_into().expect("24 bytes");
        let plain = self.secret_bytes();
        let account = self.account();
        let aad = account.to_did();
        let ct = XChaCha20Poly1305::new(&key.into())
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: &plain,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| KeystoreError::Invalid("encryption failed".into()))?;
        Ok(KeystoreFile {
            version: KEYSTORE_VERSION,
            account,
            encryption_key: self.encryption_public(),
            kdf,
            cipher: "xchacha20poly1305".into(),
            nonce: B64.encode(nonce),
            ciphertext: B64.encode(ct),
        })
    }
}

impl KeystoreFile {
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| KeystoreError::io(path, e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| KeystoreError::Malformed(path.display().to_string(), e.to_string()))
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).expect("keystore serializes");
        write_private(path, &json)
    }

    pub fn open(&self, password: &[u8]) -> Result<AccountKeys> {
        if self.version != KEYSTORE_VERSION || self.cipher != "xchacha20poly1305" {
            return Err(KeystoreError::Invalid(
                "unsupported keystore version or cipher".into(),
            ));
        }
        let key = self.kdf.derive(password)?;
        let nonce: [u8; 24] = B64
            .decode(&self.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or(KeystoreError::Decrypt)?;
        let ct = B64
            .decode(&self.ciphertext)
            .map_err(|_| KeystoreError::Decrypt)?;
        let aad = self.account.to_did();
        let plain = XChaCha20Poly1305::new(&key.into())
            .decrypt(
                &nonce.into(),
                Payload {
                    msg: &ct,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| KeystoreError::Decrypt)?;
        let keys = AccountKeys::from_secret_bytes(&plain).ok_or(KeystoreError::Decrypt)?;
        if keys.account() != self.account {
            return Err(KeystoreError::Decrypt);
        }
        Ok(keys)
    }
}

/// Writes a new file only its owner may read (mode 0600), synced before returning;
/// refuses to overwrite. Keystores and every other secret of a data directory are
/// written this way.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| KeystoreError::io(path, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| KeystoreError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_password_fails_and_right_one_opens() {
        let keys = AccountKeys::generate().unwrap();
        let file = keys.seal(b"correct horse battery").unwrap();
        assert!(matches!(
            file.open(b"wrong password!"),
            Err(KeystoreError::Decrypt)
        ));
        let opened = file.open(b"correct horse battery").unwrap();
        assert_eq!(opened.account(), keys.account());
        let mut tampered = file.clone();
        tampered.account = AccountKeys::generate().unwrap().account();
        assert!(tampered.open(b"correct horse battery").is_err());
    }

    /// Regression (issue 12, defect 5): `/auth/enroll` ran Argon2 with whatever the
    /// uploaded keystore asked for; a large iteration count burned 10+ CPU-seconds.
    /// Out-of-bounds parameters are refused by the bounds check, which runs before any
    /// hashing (the error names the bounds; Argon2's own errors do not).
    #[test]
    fn kdf_parameters_beyond_the_bounds_are_refused_before_hashing() {
        let keys = AccountKeys::generate().unwrap();
        let file = keys.seal(b"correct horse battery").unwrap();
        for (m, t, p) in [
            (u32::MAX, 2, 1),
            (19 * 1024, 1_000_000, 1),
            (19 * 1024, 2, 64),
            (MAX_KDF_MEMORY_KIB + 1, 1, 1),
        ] {
            let mut f = file.clone();
            (f.kdf.memory_kib, f.kdf.iterations, f.kdf.parallelism) = (m, t, p);
            let err = f.open(b"correct horse battery").expect_err("refused");
            assert!(err.to_string().contains("bounds"), "{err}");
        }
        let mut f = file.clone();
        f.kdf.salt = "A".repeat(10_000);
        assert!(f.open(b"correct horse battery").is_err());
        assert!(file.open(b"correct horse battery").is_ok());
    }
}
