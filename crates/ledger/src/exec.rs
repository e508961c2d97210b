//! The state machine's rules. Pure: reads go through [`StateRead`], writes collect in
//! an [`Overlay`], so the node (over redb) and `verify` (over a scratch map) run the
//! very same code. A rejected transaction writes nothing.

use crate::error::Result;
use borsh::{BorshDeserialize, BorshSerialize};
use medledger_core::{AccountId, Digest32, Genesis, Payload, RejectReason, SignedTx};
use serde::Serialize;
use std::collections::BTreeMap;

/// Key prefix of account records in the state table.
const ACCOUNT_PREFIX: &[u8] = b"acct/";

pub fn account_key(id: &AccountId) -> Vec<u8> {
    let mut k = ACCOUNT_PREFIX.to_vec();
    k.extend_from_slice(&id.0);
    k
}

/// An account as the ledger knows it. No personal data: a key, a counter, a flag.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize)]
pub struct AccountState {
    /// Nonce of the last applied transaction (0 before the first).
    pub nonce: u64,
    pub encryption_key: Digest32,
    /// The consortium admin named in genesis.
    pub consortium_admin: bool,
}

pub trait StateRead {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
}

impl StateRead for BTreeMap<Vec<u8>, Vec<u8>> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(BTreeMap::get(self, key).cloned())
    }
}

/// Pending writes over a base state. Iterating `writes` yields keys in sorted order,
/// which is the order the state digest commits to.
pub struct Overlay<'a, S: StateRead> {
    base: &'a S,
    pub writes: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl<'a, S: StateRead> Overlay<'a, S> {
    pub fn new(base: &'a S) -> Self {
        Overlay {
            base,
            writes: BTreeMap::new(),
        }
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.writes.get(key) {
            Some(v) => Ok(Some(v.clone())),
            None => self.base.get(key),
        }
    }

    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, value);
    }

    pub fn account(&self, id: &AccountId) -> Result<Option<AccountState>> {
        match self.get(&account_key(id))? {
            None => Ok(None),
            Some(bytes) => AccountState::try_from_slice(&bytes)
                .map(Some)
                .map_err(|e| crate::LedgerError::CorruptMeta(format!("account record: {e}"))),
        }
    }

    fn put_account(&mut self, id: &AccountId, acct: &AccountState) {
        self.put(
            account_key(id),
            borsh::to_vec(acct).expect("encoding into a Vec cannot fail"),
        );
    }
}

/// The state writes genesis makes (the consortium admin's account).
pub fn genesis_writes(genesis: &Genesis) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let admin = AccountState {
        nonce: 0,
        encryption_key: genesis.admin_encryption_key,
        consortium_admin: true,
    };
    let mut w = BTreeMap::new();
    w.insert(
        account_key(&genesis.admin),
        borsh::to_vec(&admin).expect("Vec encoding"),
    );
    w
}

/// Checks a transaction whose signature is already verified against the state, and
/// on success applies it to `state`. On error `state` is unchanged.
pub fn execute<S: StateRead>(
    state: &mut Overlay<'_, S>,
    tx: &SignedTx,
) -> Result<Result<(), RejectReason>> {
    let body = &tx.body;
    let Some(mut signer) = state.account(&body.signer)? else {
        return Ok(Err(RejectReason::UnknownSigner));
    };
    let expected = signer.nonce + 1;
    if body.nonce < expected {
        return Ok(Err(RejectReason::ReplayedNonce {
            expected,
            got: body.nonce,
        }));
    }
    if body.nonce > expected {
        return Ok(Err(RejectReason::NonceGap {
            expected,
            got: body.nonce,
        }));
    }
    match &body.payload {
        Payload::RegisterAccount {
            account,
            encryption_key,
        } => {
            if !signer.consortium_admin {
                return Ok(Err(RejectReason::Unauthorized {
                    detail: "only the consortium admin registers accounts".into(),
                }));
            }
            if account.verifying_key().is_err() {
                return Ok(Err(RejectReason::Malformed {
                    detail: "account is not a valid Ed25519 public key".into(),
                }));
            }
            if state.account(account)?.is_some() || account == &body.signer {
                return Ok(Err(RejectReason::AccountExists));
            }
            let new = AccountState {
                nonce: 0,
                encryption_key: *encryption_key,
                consortium_admin: false,
            };
            state.put_account(account, &new);
        }
        Payload::Anchor { .. } => {}
    }
    signer.nonce = expected;
    state.put_account(&body.signer, &signer);
    Ok(Ok(()))
}
