//! The ledger: the deterministic state machine ("contracts") every node applies, the
//! block builder that turns a committed batch into a signed block, durable storage in
//! redb, proofs against stored tree heads, and `verify`, which recomputes everything
//! from the stored blocks.

mod error;
pub mod exec;
pub mod store;
pub mod verify;

pub use error::{LedgerError, Result};
pub use exec::{AccountState, Overlay, StateRead};
pub use store::{ApplyDurability, BatchOutcome, Ledger, Tip, TxLocation, TxOutcome};
pub use verify::{VerifyMode, VerifyReport, verify_ledger};
