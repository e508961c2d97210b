//! The contracts: the deterministic rules every node applies to every transaction.
//! Organisations and roles, records, consent and break-glass, audit, messages,
//! payments and access agreements, erasure. Each transaction runs in its own overlay
//! and its writes are kept only if every rule passes, so a rejection changes nothing.
//! Time is the block's time, so consent expiry and revocation take effect at an exact
//! block on every node.

mod consent;
pub mod decision;
mod erasure;
mod messages;
mod money;
mod orgs;
pub mod query;
mod records;
pub mod state;

use crate::error::{LedgerError, Result};
use crate::exec::{Overlay, StateRead, read_obj};
use medledger_core::{
    AccountId, ContractParams, Genesis, Payload, RecordId, RejectReason, Role, SignedTx, TxHash,
};
use state::*;
use std::collections::BTreeMap;

pub use decision::{Decision, can};

/// What every transaction of a block sees besides the state.
#[derive(Debug, Clone, Copy)]
pub struct BlockCtx<'a> {
    pub genesis: &'a Genesis,
    /// The block's time; every deadline is compared with it.
    pub time_ms: u64,
}

/// The context of one transaction.
pub(crate) struct Ctx<'a> {
    pub params: &'a ContractParams,
    pub now: u64,
    pub signer: AccountId,
    pub nonce: u64,
    pub hash: TxHash,
}

/// A rule failed: either the transaction is refused, or storage failed.
pub(crate) enum Fail {
    Reject(RejectReason),
    Ledger(LedgerError),
}

impl From<LedgerError> for Fail {
    fn from(e: LedgerError) -> Self {
        Fail::Ledger(e)
    }
}

impl From<RejectReason> for Fail {
    fn from(r: RejectReason) -> Self {
        Fail::Reject(r)
    }
}

pub(crate) type R<T = ()> = std::result::Result<T, Fail>;

/// Refuses the transaction unless `cond` holds.
pub(crate) fn ensure(cond: bool, reason: impl FnOnce() -> RejectReason) -> R {
    if cond {
        Ok(())
    } else {
        Err(Fail::Reject(reason()))
    }
}

/// The state writes genesis makes: the consortium admin's and the nodes' accounts.
pub fn genesis_writes(genesis: &Genesis) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut admin = AccountState::new(genesis.admin_encryption_key);
    admin.consortium_admin = true;
    let mut w = BTreeMap::new();
    w.insert(
        account_key(&genesis.admin),
        borsh::to_vec(&admin).expect("Vec encoding"),
    );
    for n in &genesis.nodes {
        let id = AccountId(n.key.0);
        if id == genesis.admin {
            continue;
        }
        let mut node = AccountState::new(medledger_core::Digest32::ZERO);
        node.node = true;
        w.insert(
            account_key(&id),
            borsh::to_vec(&node).expect("Vec encoding"),
        );
    }
    w
}

/// Checks a transaction whose signature is already verified against the state, and
/// on success applies it to `state`. On a rejection `state` is unchanged.
pub fn execute<S: StateRead>(
    state: &mut Overlay<'_, S>,
    tx: &SignedTx,
    hash: &TxHash,
    block: &BlockCtx<'_>,
) -> Result<std::result::Result<(), RejectReason>> {
    let writes = {
        let mut txs = Overlay::new(&*state);
        match run(&mut txs, tx, hash, block) {
            Ok(()) => txs.writes,
            Err(Fail::Reject(r)) => return Ok(Err(r)),
            Err(Fail::Ledger(e)) => return Err(e),
        }
    };
    state.writes.extend(writes);
    Ok(Ok(()))
}

fn run<S: StateRead>(
    st: &mut Overlay<'_, S>,
    tx: &SignedTx,
    hash: &TxHash,
    block: &BlockCtx<'_>,
) -> R {
    let body = &tx.body;
    let cx = Ctx {
        params: &block.genesis.params,
        now: block.time_ms,
        signer: body.signer,
        nonce: body.nonce,
        hash: *hash,
    };
    let signer = match st.get_obj::<AccountState>(&account_key(&body.signer))? {
        Some(a) => a,
        // A new key may only introduce itself, with its first transaction.
        None if matches!(
            body.payload,
            Payload::Register { .. } | Payload::RegisterInvited { .. }
        ) =>
        {
            AccountState::new(medledger_core::Digest32::ZERO)
        }
        None => return Err(RejectReason::UnknownSigner.into()),
    };
    let expected = signer.nonce + 1;
    ensure(body.nonce >= expected, || RejectReason::ReplayedNonce {
        expected,
        got: body.nonce,
    })?;
    ensure(body.nonce <= expected, || RejectReason::NonceGap {
        expected,
        got: body.nonce,
    })?;
    // A node reports accesses and settles what has come due; its key must never
    // act as a person.
    ensure(
        !signer.node
            || matches!(
                body.payload,
                Payload::ReportAccess { .. }
                    | Payload::ExpireAgreement { .. }
                    | Payload::CompleteErasure { .. }
            ),
        || RejectReason::unauthorized("a node key may only report accesses and settle due work"),
    )?;
    let mut signer = signer;
    signer.nonce = expected;
    st.put_obj(account_key(&body.signer), &signer);

    match &body.payload {
        Payload::RegisterAccount {
            account,
            encryption_key,
        } => orgs::register_account(st, &cx, &signer, account, encryption_key),
        Payload::Anchor { .. } => Ok(()),
        Payload::AddOrg { org, admin } => orgs::add_org(st, &cx, &signer, org, admin),
        Payload::AssignRole { org, account, role } => {
            orgs::assign_role(st, &cx, org, account, *role)
        }
        Payload::RevokeRole { org, account, role } => {
            orgs::revoke_role(st, &cx, org, account, *role)
        }
        Payload::Register {
            org,
            role,
            encryption_key,
        } => orgs::register(st, &cx, org, *role, encryption_key),
        Payload::ApproveRegistration { account } => orgs::decide(st, &cx, account, true),
        Payload::RejectRegistration { account } => orgs::decide(st, &cx, account, false),
        Payload::AddRecord {
            patient,
            category,
            cid,
            content_hash,
            size,
        } => records::add(
            st,
            &cx,
            RecordId::from_tx(&cx.hash),
            patient,
            category,
            cid,
            content_hash,
            *size,
        ),
        Payload::WriteRecords { items } => records::write_many(st, &cx, items),
        Payload::AmendRecord {
            record,
            cid,
            content_hash,
            size,
        } => records::amend(st, &cx, record, cid, content_hash, *size),
        Payload::GrantConsent {
            grantee,
            scope,
            purpose,
            start_ms,
            expiry_ms,
        } => consent::grant(st, &cx, grantee, scope, *purpose, *start_ms, *expiry_ms),
        Payload::RevokeConsent { grant } => consent::revoke(st, &cx, grant),
        Payload::BreakGlass { patient, reason } => consent::break_glass(st, &cx, patient, *reason),
        Payload::ReportAccess { reports } => messages::report_access(st, &cx, reports),
        Payload::SendMessage { to, content } => messages::send(st, &cx, to, content),
        Payload::RespondMessage { message, approve } => {
            messages::respond(st, &cx, message, *approve)
        }
        Payload::Mint { to, amount } => money::mint(st, &cx, &signer, to, *amount),
        Payload::Transfer { to, amount } => money::transfer(st, &cx, to, *amount),
        Payload::WithdrawFees { amount } => money::withdraw_fees(st, &cx, *amount),
        Payload::ProposeAgreement {
            patient,
            scope,
            purpose,
            duration_ms,
            price,
            terms,
            respond_by_ms,
        } => money::propose(
            st,
            &cx,
            money::Proposal {
                patient,
                scope,
                purpose: *purpose,
                duration_ms: *duration_ms,
                price: *price,
                terms,
                respond_by_ms: *respond_by_ms,
            },
        ),
        Payload::RespondAgreement { agreement, accept } => {
            money::respond(st, &cx, agreement, *accept)
        }
        Payload::ExpireAgreement { agreement } => money::expire(st, &cx, agreement),
        Payload::RequestErasure { target } => erasure::request(st, &cx, target),
        Payload::CompleteErasure { record } => erasure::complete(st, &cx, record),
        Payload::InvitePatient {
            org,
            commitment,
            expires_ms,
        } => orgs::invite_patient(st, &cx, org, commitment, *expires_ms),
        Payload::RegisterInvited {
            secret,
            encryption_key,
        } => orgs::register_invited(st, &cx, secret, encryption_key),
        Payload::RequestRecovery { account } => orgs::request_recovery(st, &cx, account),
        Payload::ApproveRecovery { request } => orgs::approve_recovery(st, &cx, request),
    }
}

/// The signer's current state (written back with its new nonce before the rule runs).
pub(crate) fn signer_state<S: StateRead>(st: &Overlay<'_, S>, cx: &Ctx<'_>) -> R<AccountState> {
    Ok(st
        .get_obj::<AccountState>(&account_key(&cx.signer))?
        .ok_or(RejectReason::UnknownSigner)?)
}

pub(crate) fn existing_account<S: StateRead>(
    st: &Overlay<'_, S>,
    id: &AccountId,
) -> R<AccountState> {
    Ok(st
        .get_obj::<AccountState>(&account_key(id))?
        .ok_or_else(|| RejectReason::not_found("account"))?)
}

/// A patient account: one that holds the Patient role somewhere.
pub(crate) fn patient_account<S: StateRead>(
    st: &Overlay<'_, S>,
    id: &AccountId,
) -> R<AccountState> {
    let a = st
        .get_obj::<AccountState>(&account_key(id))?
        .ok_or_else(|| RejectReason::not_found("patient"))?;
    ensure(a.has_role(Role::Patient), || {
        RejectReason::not_found("patient")
    })?;
    Ok(a)
}

pub fn balance(state: &impl StateRead, id: &AccountId) -> Result<u64> {
    Ok(read_obj::<u64>(state, &balance_key(id))?.unwrap_or(0))
}

pub(crate) fn counter(state: &impl StateRead, key: &[u8]) -> Result<u64> {
    Ok(read_obj::<u64>(state, key)?.unwrap_or(0))
}
