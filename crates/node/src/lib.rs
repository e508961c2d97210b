//! The medledger node: the data directory and its keys, keystores, and the HTTPS
//! server that wires storage → consensus → API. The binary calls [`serve`] and
//! [`datadir::init`]; tests call them too.

pub mod api;
pub mod audit_queue;
pub mod auth;
pub mod auth_api;
pub mod caller;
pub mod client;
pub mod contracts_api;
pub mod datadir;
mod error;
pub mod fhir;
pub mod fhir_api;
pub mod keystore;
pub mod reporter;
mod server;

pub use error::{NodeError, Result};
pub use server::{ServeConfig, StartupCheck, serve};

/// Installs the process-wide rustls crypto provider (ring). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
