//! Payments: integer balances, minting by the consortium admin, transfers, the fee
//! pool and its withdrawal, and paid access agreements whose price waits in escrow
//! until the patient accepts (paid to the patient), rejects or lets it expire (both
//! refunded). Units are only created by `mint`; every other rule moves them.

use super::consent::{check_scope, put_grant};
use super::state::*;
use super::{Ctx, R, counter, ensure, existing_account, patient_account, signer_state};
use crate::exec::{Overlay, StateRead};
use medledger_core::{
    AccountId, AgreementId, Cid, GrantId, Grantee, Purpose, RejectReason, Role, Scope,
};

fn overflow() -> RejectReason {
    RejectReason::invalid("amount overflows the balance")
}

pub(super) fn credit<S: StateRead>(st: &mut Overlay<'_, S>, to: &AccountId, amount: u64) -> R {
    let b = super::balance(st, to)?;
    let nb = b.checked_add(amount).ok_or_else(overflow)?;
    st.put_obj(balance_key(to), &nb);
    Ok(())
}

pub(super) fn debit<S: StateRead>(st: &mut Overlay<'_, S>, from: &AccountId, amount: u64) -> R {
    let balance = super::balance(st, from)?;
    ensure(balance >= amount, || RejectReason::InsufficientFunds {
        balance,
        needed: amount,
    })?;
    st.put_obj(balance_key(from), &(balance - amount));
    Ok(())
}

fn add_counter<S: StateRead>(st: &mut Overlay<'_, S>, key: &[u8], delta: i128) -> R {
    let v = counter(st, key)? as i128 + delta;
    let v = u64::try_from(v).map_err(|_| overflow())?;
    st.put_obj(key.to_vec(), &v);
    Ok(())
}

fn positive(amount: u64) -> R {
    ensure(amount > 0, || {
        RejectReason::invalid("amount must be positive")
    })
}

pub(super) fn mint<S: StateRead>(
    st: &mut Overlay<'_, S>,
    _cx: &Ctx<'_>,
    signer: &AccountState,
    to: &AccountId,
    amount: u64,
) -> R {
    ensure(signer.consortium_admin, || {
        RejectReason::unauthorized("only the consortium admin mints")
    })?;
    positive(amount)?;
    ensure(!existing_account(st, to)?.node, || {
        RejectReason::invalid("nodes hold no balance")
    })?;
    add_counter(st, SUPPLY_KEY, amount as i128)?;
    credit(st, to, amount)
}

pub(super) fn transfer<S: StateRead>(
    st: &mut Overlay<'_, S>,
    cx: &Ctx<'_>,
    to: &AccountId,
    amount: u64,
) -> R {
    positive(amount)?;
    ensure(to != &cx.signer, || {
        RejectReason::invalid("a transfer to oneself")
    })?;
    ensure(!existing_account(st, to)?.node, || {
        RejectReason::invalid("nodes hold no balance")
    })?;
    debit(st, &cx.signer, amount)?;
    credit(st, to, amount)
}

pub(super) fn withdraw_fees<S: StateRead>(st: &mut Overlay<'_, S>, cx: &Ctx<'_>, amount: u64) -> R {
    ensure(cx.signer == cx.params.fee_owner, || {
        RejectReason::unauthorized("only the fee account's owner withdraws fees")
    })?;
    positive(amount)?;
    let fees = counter(st, FEES_KEY)?;
    ensure(fees >= amount, || RejectReason::InsufficientFunds {
        balance: fees,
        needed: amount,
    })?;
    st.put_obj(FEES_KEY.to_vec(), &(fees - amount));
    credit(st, &cx.signer, amount)
}

pub(super) struct Proposal<'a> {
    pub patient: &'a AccountId,
    pub scope: &'a Scope,
    pub purpose: Purpose,
    pub duration_ms: u64,
    pub price: u64,
    pub terms: &'a Cid,
    pub respond_by_ms: u64,
}

pub(super) fn propose<S: StateRead>(st: &mut Overlay<'_, S>, cx: &Ctx<'_>, p: Proposal<'_>) -> R {
    let me = signer_state(st, cx)?;
    let ok = (me.has_role(Role::Insurer) && p.purpose == Purpose::Payment)
        || (me.has_role(Role::Researcher) && p.purpose == Purpose::Research);
    ensure(ok, || {
        RejectReason::unauthorized(
            "only an insurer (for payment) or a researcher (for research) proposes agreements",
        )
    })?;
    ensure(p.patient != &cx.signer, || {
        RejectReason::invalid("an agreement with oneself")
    })?;
    patient_account(st, p.patient)?;
    check_scope(st, p.patient, p.scope)?;
    ensure(p.duration_ms > 0, || {
        RejectReason::invalid("duration must be positive")
    })?;
    ensure(p.respond_by_ms > cx.now, || {
        RejectReason::invalid("the answer deadline is in the past")
    })?;
    debit(st, &cx.signer, p.price)?;
    add_counter(st, ESCROW_KEY, p.price as i128)?;
    let id = AgreementId::from_tx(&cx.hash);
    st.put_obj(
        agreement_key(&id),
        &AgreementState {
            proposer: cx.signer,
            patient: *p.patient,
            scope: p.scope.clone(),
            purpose: p.purpose,
            duration_ms: p.duration_ms,
            price: p.price,
            terms: *p.terms,
            proposed_ms: cx.now,
            respond_by_ms: p.respond_by_ms,
            status: AgreementStatus::Proposed,
        },
    );
    st.put(patient_agreement_key(p.patient, &id), Vec::new());
    st.put(proposer_agreement_key(&cx.signer, &id), Vec::new());
    st.put(agreement_due_key(p.respond_by_ms, &id), Vec::new());
    Ok(())
}

fn open_agreement<S: StateRead>(st: &Overlay<'_, S>, id: &AgreementId) -> R<AgreementState> {
    let a: AgreementState = st
        .get_obj(&agreement_key(id))?
        .ok_or_else(|| RejectReason::not_found("agreement"))?;
    let done = match a.status {
        AgreementStatus::Proposed => return Ok(a),
        AgreementStatus::Accepted { .. } => "accepted",
        AgreementStatus::Rejected { .. } => "rejected",
        AgreementStatus::Expired { .. } => "expired",
    };
    Err(RejectReason::conflict(format!("agreement was already {done}")).into())
}

/// Releases the escrow to `to` and closes the proposal's deadline entry.
fn settle<S: StateRead>(
    st: &mut Overlay<'_, S>,
    id: &AgreementId,
    a: &AgreementState,
    to: &AccountId,
) -> R {
    add_counter(st, ESCROW_KEY, -(a.price as i128))?;
    credit(st, to, a.price)?;
    st.delete(agreement_due_key(a.respond_by_ms, id));
    Ok(())
}

pub(super) fn respond<S: StateRead>(
    st: &mut Overlay<'_, S>,
    cx: &Ctx<'_>,
    id: &AgreementId,
    accept: bool,
) -> R {
    let mut a = open_agreement(st, id)?;
    ensure(a.patient == cx.signer, || {
        RejectReason::unauthorized("only the patient answers an agreement")
    })?;
    ensure(cx.now < a.respond_by_ms, || {
        RejectReason::expired("agreement proposal")
    })?;
    if accept {
        settle(st, id, &a, &a.patient.clone())?;
        let grant = GrantId::from_tx(&cx.hash);
        put_grant(
            st,
            grant,
            GrantState {
                patient: a.patient,
                grantee: Grantee::Account(a.proposer),
                scope: a.scope.clone(),
                purpose: a.purpose,
                start_ms: cx.now,
                expiry_ms: cx.now.saturating_add(a.duration_ms),
                revoked_ms: None,
                agreement: Some(*id),
            },
        );
        a.status = AgreementStatus::Accepted {
            at_ms: cx.now,
            grant,
        };
    } else {
        settle(st, id, &a, &a.proposer.clone())?;
        a.status = AgreementStatus::Rejected { at_ms: cx.now };
    }
    st.put_obj(agreement_key(id), &a);
    Ok(())
}

pub(super) fn expire<S: StateRead>(st: &mut Overlay<'_, S>, cx: &Ctx<'_>, id: &AgreementId) -> R {
    let mut a = open_agreement(st, id)?;
    ensure(cx.now >= a.respond_by_ms, || {
        RejectReason::conflict("the proposal is still open")
    })?;
    settle(st, id, &a, &a.proposer.clone())?;
    a.status = AgreementStatus::Expired { at_ms: cx.now };
    st.put_obj(agreement_key(id), &a);
    Ok(())
}
