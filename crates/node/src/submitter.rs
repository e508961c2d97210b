//! The one place that numbers and submits the transactions this node signs itself:
//! for the accounts it holds in custody (sign-in's staff and patients, the FHIR API's
//! patients and clinicians) and for its own account (access reports, housekeeping).
//!
//! Every such transaction takes its nonce here. An account's submissions are queued in
//! call order: a reservation holds the account's sequence lock until its transaction
//! is in the batcher, so nonces reach consensus in order and several transactions of
//! one account can be in flight at once (pipelined). The next nonce is the larger of
//! the last one handed out and the ledger's committed nonce + 1; a transaction that
//! does not commit forgets the local counter, so later ones are renumbered from the
//! ledger. Two services numbering the same account from the ledger on their own would
//! collide, which is why there is only this one.

use crate::keystore::AccountKeys;
use medledger_consensus::{Batcher, ConsensusError};
use medledger_core::tx::{SignatureBytes, TX_VERSION};
use medledger_core::{AccountId, NodeSigner, Payload, RejectReason, SignedTx, TxBody, TxHash};
use medledger_ledger::{Ledger, TxLocation, TxOutcome};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use thiserror::Error;

/// What consensus answers for one queued transaction.
pub type Outcome = Result<TxOutcome, ConsensusError>;

/// Attempts [`Submitter::submit`] makes when another submission of the same account
/// took the nonce first (a pipelined transaction ahead of it was refused).
const NONCE_RETRIES: usize = 5;

#[derive(Debug, Error)]
pub enum SubmitError {
    /// The contracts refused the transaction.
    #[error("refused: {0}")]
    Refused(RejectReason),
    /// Not committed for a passing reason (no leader, shutting down).
    #[error("not committed: {0}")]
    Unavailable(String),
    /// The ledger could not be read.
    #[error("ledger: {0}")]
    Ledger(#[from] medledger_ledger::LedgerError),
}

/// A key this node signs transactions with.
pub trait TxSigner: Send + Sync {
    fn account(&self) -> AccountId;
    fn sign(&self, body: TxBody) -> SignedTx;
}

impl TxSigner for AccountKeys {
    fn account(&self) -> AccountId {
        AccountKeys::account(self)
    }
    fn sign(&self, body: TxBody) -> SignedTx {
        body.sign(&self.signing)
    }
}

impl TxSigner for NodeSigner {
    fn account(&self) -> AccountId {
        AccountId(self.public().0)
    }
    fn sign(&self, body: TxBody) -> SignedTx {
        let signature = SignatureBytes(NodeSigner::sign(self, &body.hash().0.0));
        SignedTx { body, signature }
    }
}

/// An account's next nonce, held (with the account's sequence lock) until its
/// transaction is queued or the reservation is dropped.
pub struct Reserved {
    account: AccountId,
    nonce: u64,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Reserved {
    pub fn nonce(&self) -> u64 {
        self.nonce
    }
    pub fn account(&self) -> AccountId {
        self.account
    }
}

#[derive(Clone)]
pub struct Submitter {
    inner: Arc<Inner>,
}

struct Inner {
    ledger: Ledger,
    batcher: Batcher,
    /// Next nonce per account, for transactions not yet committed.
    nonces: Mutex<HashMap<AccountId, u64>>,
    /// Held while a nonce is reserved and until its transaction is queued.
    sequences: Mutex<HashMap<AccountId, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Submitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Submitter")
    }
}

impl Submitter {
    pub fn new(ledger: Ledger, batcher: Batcher) -> Self {
        Submitter {
            inner: Arc::new(Inner {
                ledger,
                batcher,
                nonces: Mutex::new(HashMap::new()),
                sequences: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn sequence(&self, account: &AccountId) -> Arc<tokio::sync::Mutex<()>> {
        self.inner
            .sequences
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(*account)
            .or_default()
            .clone()
    }

    fn set_next(&self, account: &AccountId, next: Option<u64>) {
        let mut n = self.inner.nonces.lock().unwrap_or_else(|p| p.into_inner());
        match next {
            Some(v) => n.insert(*account, v),
            None => n.remove(account),
        };
    }

    /// Reserves `account`'s next nonce; nothing else of the account is queued until
    /// the reservation is used (or dropped).
    pub async fn reserve(&self, account: &AccountId) -> Result<Reserved, SubmitError> {
        let guard = self.sequence(account).lock_owned().await;
        let committed = self
            .inner
            .ledger
            .account(account)?
            .map(|a| a.nonce)
            .unwrap_or(0);
        let local = self
            .inner
            .nonces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(account)
            .copied()
            .unwrap_or(0);
        Ok(Reserved {
            account: *account,
            nonce: local.max(committed + 1),
            _guard: guard,
        })
    }

    /// Signs `payload` with the reservation's nonce, without queueing it (a caller that
    /// must record the hash durably first sends it with [`Submitter::send`]).
    pub fn sign(&self, r: &Reserved, signer: &dyn TxSigner, payload: Payload) -> SignedTx {
        debug_assert_eq!(signer.account(), r.account);
        signer.sign(TxBody {
            version: TX_VERSION,
            chain_id: self.inner.ledger.genesis().chain_id.clone(),
            signer: r.account,
            nonce: r.nonce,
            payload,
        })
    }

    /// Queues a transaction signed with `r`'s nonce and releases the account for its
    /// next one; the returned future waits for the outcome (pass it to
    /// [`Submitter::settle`]).
    pub fn send(&self, r: Reserved, tx: &SignedTx) -> impl Future<Output = Outcome> + use<> {
        let wait = self.inner.batcher.enqueue(tx.to_bytes());
        self.set_next(&r.account, Some(r.nonce + 1));
        wait
    }

    /// [`Submitter::sign`] then [`Submitter::send`].
    pub fn queue(
        &self,
        r: Reserved,
        signer: &dyn TxSigner,
        payload: Payload,
    ) -> (TxHash, impl Future<Output = Outcome> + use<>) {
        let tx = self.sign(&r, signer, payload);
        (tx.body.hash(), self.send(r, &tx))
    }

    /// Reserves, signs and queues, in call order per account.
    pub async fn enqueue(
        &self,
        signer: &dyn TxSigner,
        payload: Payload,
    ) -> Result<(TxHash, impl Future<Output = Outcome> + use<>), SubmitError> {
        let r = self.reserve(&signer.account()).await?;
        Ok(self.queue(r, signer, payload))
    }

    /// What became of a queued transaction of `account`. One that did not commit did
    /// not use its nonce: the account's later transactions are renumbered from the
    /// ledger.
    pub fn settle(&self, account: &AccountId, outcome: Outcome) -> Result<TxLocation, SubmitError> {
        let result = match outcome {
            Ok(o) => match o.result {
                Ok(loc) => Ok(loc),
                Err(reason) => Err(SubmitError::Refused(reason)),
            },
            Err(e) => Err(SubmitError::Unavailable(e.to_string())),
        };
        if result.is_err() {
            self.set_next(account, None);
        }
        self.forget_if_idle(account);
        result
    }

    /// Drops an account's entries once nothing of it is reserved, awaited or in
    /// flight: the ledger then says everything (every registration and every patient
    /// would otherwise stay in these maps for the life of the process).
    fn forget_if_idle(&self, account: &AccountId) {
        let mut seqs = self
            .inner
            .sequences
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // The map's own handle is the only one: no reservation is held or waited for.
        if seqs.get(account).is_none_or(|m| Arc::strong_count(m) != 1) {
            return;
        }
        let Ok(committed) = self.inner.ledger.account(account) else {
            return;
        };
        let committed = committed.map_or(0, |a| a.nonce);
        let mut nonces = self.inner.nonces.lock().unwrap_or_else(|p| p.into_inner());
        if nonces
            .get(account)
            .is_none_or(|next| *next <= committed + 1)
        {
            nonces.remove(account);
            seqs.remove(account);
        }
    }

    /// Signs, submits and waits for the commit; when a pipelined transaction of the
    /// same account ahead of this one was refused (so this one's nonce no longer
    /// follows), it is renumbered and sent again.
    pub async fn submit(
        &self,
        signer: &dyn TxSigner,
        payload: Payload,
    ) -> Result<(TxHash, TxLocation), SubmitError> {
        let account = signer.account();
        let mut attempt = 0;
        loop {
            let (hash, wait) = self.enqueue(signer, payload.clone()).await?;
            match self.settle(&account, wait.await) {
                Ok(loc) => return Ok((hash, loc)),
                Err(e) if attempt < NONCE_RETRIES && is_nonce_race(&e) => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }
}

/// A refusal that only says another transaction of the account took or skipped the
/// nonce: sending the same payload again with a fresh nonce can succeed.
pub fn is_nonce_race(e: &SubmitError) -> bool {
    matches!(
        e,
        SubmitError::Refused(RejectReason::NonceGap { .. } | RejectReason::ReplayedNonce { .. })
    )
}
