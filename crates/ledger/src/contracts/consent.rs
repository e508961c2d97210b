//! Consent: a patient's grants (scope, purpose, start, expiry, revocation) and the
//! break-glass path by which a doctor opens a patient's records in an emergency.

use super::messages::{append_audit, notify};
use super::state::*;
use super::{Ctx, R, ensure, existing_account, patient_account, signer_state};
use crate::exec::{Overlay, StateRead};
use medledger_core::model::MAX_SCOPE_ITEMS;
use medledger_core::{
    AccountId, BreakGlassId, EmergencyReason, GrantId, Grantee, Purpose, RejectReason, Role, Scope,
};

/// A scope is non-empty, bounded, well-formed, and names only the patient's records.
pub(super) fn check_scope<S: StateRead>(
    st: &Overlay<'_, S>,
    patient: &AccountId,
    scope: &Scope,
) -> R {
    ensure(!scope.is_empty(), || {
        RejectReason::invalid("scope lists nothing")
    })?;
    ensure(scope.len() <= MAX_SCOPE_ITEMS, || {
        RejectReason::invalid(format!("scope lists more than {MAX_SCOPE_ITEMS} items"))
    })?;
    match scope {
        Scope::All => {}
        Scope::Categories(cats) => {
            ensure(cats.iter().all(|c| c.is_valid()), || {
                RejectReason::invalid("category")
            })?;
        }
        Scope::Records(ids) => {
            for id in ids {
                let rec: Option<RecordState> = st.get_obj(&record_key(id))?;
                ensure(rec.is_some_and(|r| &r.patient == patient), || {
                    RejectReason::not_found("record of this patient")
                })?;
            }
        }
    }
    Ok(())
}

pub(super) fn grant<S: StateRead>(
    st: &mut Overlay<'_, S>,
    cx: &Ctx<'_>,
    grantee: &Grantee,
    scope: &Scope,
    purpose: Purpose,
    start_ms: u64,
    expiry_ms: u64,
) -> R {
    ensure(signer_state(st, cx)?.has_role(Role::Patient), || {
        RejectReason::unauthorized("only a patient grants consent, for their own records")
    })?;
    ensure(purpose != Purpose::Emergency, || {
        RejectReason::invalid("emergency access is break-glass, not a grant")
    })?;
    ensure(start_ms < expiry_ms, || {
        RejectReason::invalid("expiry must be after start")
    })?;
    ensure(expiry_ms > cx.now, || {
        RejectReason::invalid("expiry is in the past")
    })?;
    match grantee {
        Grantee::Account(a) => {
            ensure(a != &cx.signer, || {
                RejectReason::invalid("a grant to oneself")
            })?;
            let g = existing_account(st, a)?;
            ensure(!g.node, || {
                RejectReason::invalid("a node cannot be granted access")
            })?;
        }
        Grantee::Org(o) => {
            ensure(o.is_valid() && st.get(&org_key(o))?.is_some(), || {
                RejectReason::not_found("organisation")
            })?;
        }
    }
    check_scope(st, &cx.signer, scope)?;
    put_grant(
        st,
        GrantId::from_tx(&cx.hash),
        GrantState {
            patient: cx.signer,
            grantee: grantee.clone(),
            scope: scope.clone(),
            purpose,
            start_ms,
            expiry_ms,
            revoked_ms: None,
            agreement: None,
        },
    );
    Ok(())
}

pub(super) fn put_grant<S: StateRead>(st: &mut Overlay<'_, S>, id: GrantId, g: GrantState) {
    st.put(patient_grant_key(&g.patient, &id), Vec::new());
    st.put_obj(grant_key(&id), &g);
}

pub(super) fn revoke<S: StateRead>(st: &mut Overlay<'_, S>, cx: &Ctx<'_>, id: &GrantId) -> R {
    let mut g: GrantState = st
        .get_obj(&grant_key(id))?
        .ok_or_else(|| RejectReason::not_found("grant"))?;
    ensure(g.patient == cx.signer, || {
        RejectReason::unauthorized("only the patient who granted it may revoke a grant")
    })?;
    ensure(g.revoked_ms.is_none(), || {
        RejectReason::conflict("grant already revoked")
    })?;
    ensure(cx.now < g.expiry_ms, || RejectReason::expired("grant"))?;
    g.revoked_ms = Some(cx.now);
    st.put_obj(grant_key(id), &g);
    Ok(())
}

pub(super) fn break_glass<S: StateRead>(
    st: &mut Overlay<'_, S>,
    cx: &Ctx<'_>,
    patient: &AccountId,
    reason: EmergencyReason,
) -> R {
    ensure(signer_state(st, cx)?.has_role(Role::Doctor), || {
        RejectReason::unauthorized("only a doctor may break the glass")
    })?;
    ensure(patient != &cx.signer, || {
        RejectReason::invalid("break-glass on one's own records")
    })?;
    patient_account(st, patient)?;
    let id = BreakGlassId::from_tx(&cx.hash);
    st.put_obj(
        break_glass_key(&id),
        &BreakGlassState {
            doctor: cx.signer,
            patient: *patient,
            reason,
            start_ms: cx.now,
            expiry_ms: cx.now.saturating_add(cx.params.break_glass_ms),
        },
    );
    st.put(patient_break_glass_key(patient, &id), Vec::new());
    append_audit(
        st,
        cx,
        AuditFact {
            accessor: cx.signer,
            record: None,
            patient: Some(*patient),
            purpose: Purpose::Emergency,
            time_ms: cx.now,
            allowed: true,
            reason: "break_glass_opened".into(),
            break_glass: true,
        },
    )?;
    notify(st, cx, patient, Some(id))
}

/// An audit entry before it gets its sequence number.
pub(crate) struct AuditFact {
    pub accessor: AccountId,
    pub record: Option<medledger_core::RecordId>,
    pub patient: Option<AccountId>,
    pub purpose: Purpose,
    pub time_ms: u64,
    pub allowed: bool,
    pub reason: String,
    pub break_glass: bool,
}
