//! The record store: record contents encrypted before they are stored anywhere, in
//! content-addressed blobs (CIDv1, raw, sha2-256, as IPFS computes them) kept through
//! `object_store` (local filesystem by default). Each record version has a fresh data
//! key; the key is wrapped with HPKE for every reader. Reads verify the CID before
//! decrypting. Erasure deletes the ciphertext and every envelope, and locally overwrites their bytes.

pub mod envelope;
mod error;
pub mod format;
mod key_cache;
mod local;
mod store;

pub use envelope::{Reader, ReaderSecret};
pub use error::{Result, StoreError};
pub use local::{StoredAt, find_envelopes, find_stored};
/// The object store crate, for callers that talk to a bucket themselves (backups).
pub use object_store;
pub use store::{BlobStore, EnvelopeSet, PutReceipt, S3Config, StoreConfig, s3_object_store};
