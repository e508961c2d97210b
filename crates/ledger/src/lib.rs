//! The ledger: the deterministic state machine ("contracts") every node applies, the
//! block builder that turns a committed batch into a signed block, durable storage in
//! redb, proofs against stored tree heads, and `verify`, which recomputes everything
//! from the stored blocks.

pub mod admission;
pub mod contracts;
mod error;
pub mod exec;
pub mod store;
pub mod verified;
pub mod verify;

pub use contracts::state::AccountState;
pub use contracts::{BlockCtx, Decision};
pub use error::{LedgerError, Result};
pub use exec::{Overlay, StateRead};
pub use store::{
    ApplyDurability, BatchOutcome, Ledger, LedgerSnapshot, StateView, Tip, TxLocation, TxOutcome,
};
pub use verified::{MarkSource, VerifiedMark};
pub use verify::{VerifyMode, VerifyReport, verify_ledger};
