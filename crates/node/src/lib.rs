//! The medledger node: the data directory and its keys, keystores, the services a node
//! runs (sign-in, FHIR, audit reporting and housekeeping, transaction submission) and
//! the HTTP layer above them. The binary calls [`serve`] and [`datadir::init`]; tests
//! call them too.

pub mod access;
pub mod audit_queue;
pub mod auth;
pub mod backup;
pub mod client;
pub mod datadir;
pub mod erasure_journal;
mod error;
pub mod fhir;
pub mod http;
pub mod notes;
pub mod reporter;
mod server;
pub mod state;
pub mod submitter;

pub use error::{NodeError, Result};
pub use medledger_keystore as keystore;
pub use server::{DEFAULT_KEY_CACHE, ServeConfig, StartupCheck, serve};

/// Installs the process-wide rustls crypto provider (ring). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
