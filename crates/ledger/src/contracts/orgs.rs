//! Organisations, roles and registration: the consortium admin founds organisations;
//! an organisation's admins (HospitalAdmin) assign roles and decide registrations.

use super::state::*;
use super::{Ctx, R, ensure, existing_account, signer_state};
use crate::exec::{Overlay, StateRead};
use medledger_core::{AccountId, Digest32, GrantId, OrgId, Purpose, RejectReason, Role};

fn require_org<S: StateRead>(st: &Overlay<'_, S>, org: &OrgId) -> R {
    ensure(org.is_valid(), || RejectReason::invalid("organisation id"))?;
    ensure(st.get(&org_key(org))?.is_some(), || {
        RejectReason::not_found("organisation")
    })
}

/// The signer administers `org` (or is the consortium admin, who may act for any).
fn require_admin_of<S: StateRead>(st: &Overlay<'_, S>, cx: &Ctx<'_>, org: &OrgId) -> R {
    let me = signer_state(st, cx)?;
    ensure(
        me.consortium_admin || me.has_role_in(org, Role::HospitalAdmin),
        || RejectReason::unauthorized(format!("only an admin of {org} may do this")),
    )
}

/// Who may give `role` in `org` to `account`: an admin of `org` (or the consortium
/// admin), never to themselves; and an auditor, who oversees the whole consortium,
/// only by the consortium admin. Applies to assigning a role and to approving a
/// registration that asks for one, so neither is a way around the other.
fn require_may_give<S: StateRead>(
    st: &Overlay<'_, S>,
    cx: &Ctx<'_>,
    org: &OrgId,
    account: &AccountId,
    role: Role,
) -> R {
    require_admin_of(st, cx, org)?;
    let me = signer_state(st, cx)?;
    if me.consortium_admin {
        return Ok(());
    }
    ensure(account != &cx.signer, || {
        RejectReason::unauthorized("an admin cannot give themselves a role")
    })?;
    ensure(role != Role::Auditor, || {
        RejectReason::unauthorized("only the consortium admin makes auditors")
    })
}

/// Gives `account` `role` in `org` and indexes the membership; the caller stores `a`.
fn add_membership<S: StateRead>(
    st: &mut Overlay<'_, S>,
    account: &AccountId,
    a: &mut AccountState,
    org: &OrgId,
    role: Role,
) {
    a.roles.push(Membership {
        org: org.clone(),
        role,
    });
    st.put(member_key(org, account, role), Vec::new());
}

/// A new key introducing itself with its first transaction takes the encryption key
/// it names; a known account keeps its own.
fn adopt_new_key(me: &mut AccountState, encryption_key: &Digest32) -> R {
    if me.nonce == 1 && me.encryption_key == Digest32::ZERO && me.roles.is_empty() {
        ensure(*encryption_key != Digest32::ZERO, || {
            RejectReason::invalid("an encryption key is required")
        })?;
        me.encryption_key = *encryption_key;
    }
    Ok(())
}

pub(super) fn register_account<S: StateRead>(
    st: &mut Overlay<'_, S>,
    _cx: &Ctx<'_>,
    signer: &AccountState,
    account: &AccountId,
    encryption_key: &Digest32,
) -> R {
    ensure(signer.consortium_admin, || {
        RejectReason::unauthorized("only the consortium admin registers accounts")
    })?;
    ensure(account.verifying_key().is_ok(), || {
        RejectReason::Malformed {
            detail: "account is not a valid Ed25519 public key".into(),
        }
    })?;
    ensure(st.get(&account_key(account))?.is_none(), || {
        RejectReason::AccountExists
    })?;
    st.put_obj(account_key(account), &AccountState::new(*encryption_key));
    Ok(())
}

pub(super) fn add_org<S: StateRead>(
    st: &mut Overlay<'_, S>,
    cx: &Ctx<'_>,
    signer: &AccountState,
    org: &OrgId,
    admin: &AccountId,
) -> R {
    ensure(signer.consortium_admin, || {
        RejectReason::unauthorized("only the consortium admin adds organisations")
    })?;
    ensure(org.is_valid(), || RejectReason::invalid("organisation id"))?;
    ensure(st.get(&org_key(org))?.is_none(), || {
        RejectReason::conflict("organisation exists")
    })?;
    let mut a = existing_account(st, admin)?;
    ensure(!a.node, || {
        RejectReason::invalid("a node key cannot hold roles")
    })?;
    st.put_obj(org_key(org), &OrgState { created_ms: cx.now });
    add_membership(st, admin, &mut a, org, Role::HospitalAdmin);
    st.put_obj(account_key(admin), &a);
    Ok(())
}

pub(super) fn assign_role<S: StateRead>(
    st: &mut Overlay<'_, S>,
    cx: &Ctx<'_>,
    org: &OrgId,
    account: &AccountId,
    role: Role,
) -> R {
    require_org(st, org)?;
    require_may_give(st, cx, org, account, role)?;
    let mut a = existing_account(st, account)?;
    ensure(!a.node, || {
        RejectReason::invalid("a node key cannot hold roles")
    })?;
    ensure(!a.has_role_in(org, role), || {
        RejectReason::conflict(format!("already has role {role} in {org}"))
    })?;
    add_membership(st, account, &mut a, org, role);
    st.put_obj(account_key(account), &a);
    Ok(())
}

pub(super) fn revoke_role<S: StateRead>(
    st: &mut Overlay<'_, S>,
    cx: &Ctx<'_>,
    org: &OrgId,
    account: &AccountId,
    role: Role,
) -> R {
    require_org(st, org)?;
    require_admin_of(st, cx, org)?;
    let mut a = existing_account(st, account)?;
    ensure(a.has_role_in(org, role), || {
        RejectReason::not_found(format!("role {role} in {org} for that account"))
    })?;
    a.roles.retain(|m| !(m.role == role && &m.org == org));
    st.put_obj(account_key(account), &a);
    st.delete(member_key(org, account, role));
    Ok(())
}

pub(super) fn register<S: StateRead>(
    st: &mut Overlay<'_, S>,
    cx: &Ctx<'_>,
    org: &OrgId,
    role: Role,
    encryption_key: &Digest32,
) -> R {
    require_org(st, org)?;
    let mut me = signer_state(st, cx)?;
    adopt_new_key(&mut me, encryption_key)?;
    ensure(!me.consortium_admin && !me.node, || {
        RejectReason::invalid("this account cannot register")
    })?;
    ensure(me.pending.is_none(), || {
        RejectReason::conflict("a registration is already pending")
    })?;
    ensure(!me.has_role_in(org, role), || {
        RejectReason::conflict(format!("already has role {role} in {org}"))
    })?;
    me.pending = Some(Membership {
        org: org.clone(),
        role,
    });
    st.put_obj(account_key(&cx.signer), &me);
    st.put(pending_key(org, &cx.signer), vec![role as u8]);
    Ok(())
}

pub(super) fn decide<S: StateRead>(
    st: &mut Overlay<'_, S>,
    cx: &Ctx<'_>,
    account: &AccountId,
    approve: bool,
) -> R {
    let mut a = existing_account(st, account)?;
    let m = a
        .pending
        .clone()
        .ok_or_else(|| RejectReason::not_found("pending registration"))?;
    require_admin_of(st, cx, &m.org)?;
    if approve {
        require_may_give(st, cx, &m.org, account, m.role)?;
        let fee = cx.params.registration_fee;
        if fee > 0 {
            let balance = super::balance(st, account)?;
            ensure(balance >= fee, || RejectReason::InsufficientFunds {
                balance,
                needed: fee,
            })?;
            st.put_obj(balance_key(account), &(balance - fee));
            let fees = super::counter(st, FEES_KEY)?;
            st.put_obj(FEES_KEY.to_vec(), &(fees + fee));
        }
        add_membership(st, account, &mut a, &m.org, m.role);
    }
    a.pending = None;
    st.put_obj(account_key(account), &a);
    st.delete(pending_key(&m.org, account));
    Ok(())
}

pub(super) fn invite_patient<S: StateRead>(
    st: &mut Overlay<'_, S>,
    cx: &Ctx<'_>,
    org: &OrgId,
    commitment: &Digest32,
    expires_ms: u64,
) -> R {
    require_org(st, org)?;
    let me = signer_state(st, cx)?;
    ensure(
        me.consortium_admin
            || me.has_role_in(org, Role::HospitalAdmin)
            || me.has_role_in(org, Role::Doctor)
            || me.has_role_in(org, Role::Nurse),
        || {
            RejectReason::unauthorized(format!(
                "only a clinician or admin of {org} invites patients"
            ))
        },
    )?;
    ensure(expires_ms > cx.now, || {
        RejectReason::invalid("invite expiry is in the past")
    })?;
    ensure(st.get(&invite_key(commitment))?.is_none(), || {
        RejectReason::conflict("invite exists")
    })?;
    st.put_obj(
        invite_key(commitment),
        &InviteState {
            org: org.clone(),
            inviter: cx.signer,
            expires_ms,
            used_by: None,
        },
    );
    Ok(())
}

pub(super) fn register_invited<S: StateRead>(
    st: &mut Overlay<'_, S>,
    cx: &Ctx<'_>,
    secret: &Digest32,
    encryption_key: &Digest32,
) -> R {
    let commitment = medledger_core::tx::invite_commitment(secret);
    let mut inv: InviteState = st
        .get_obj(&invite_key(&commitment))?
        .ok_or_else(|| RejectReason::not_found("invite"))?;
    ensure(inv.used_by.is_none(), || {
        RejectReason::conflict("invite already used")
    })?;
    ensure(cx.now < inv.expires_ms, || RejectReason::expired("invite"))?;
    let mut me = signer_state(st, cx)?;
    ensure(!me.consortium_admin && !me.node, || {
        RejectReason::invalid("this account cannot register")
    })?;
    adopt_new_key(&mut me, encryption_key)?;
    ensure(!me.has_role_in(&inv.org, Role::Patient), || {
        RejectReason::conflict(format!("already a patient of {}", inv.org))
    })?;
    add_membership(st, &cx.signer, &mut me, &inv.org, Role::Patient);
    st.put_obj(account_key(&cx.signer), &me);
    inv.used_by = Some(cx.signer);
    st.put_obj(invite_key(&commitment), &inv);
    Ok(())
}

/// The org (shared by the member and the signing admin) a recovery concerns.
fn shared_admin_org<S: StateRead>(
    st: &Overlay<'_, S>,
    cx: &Ctx<'_>,
    member: &AccountState,
) -> R<OrgId> {
    let me = signer_state(st, cx)?;
    member
        .roles
        .iter()
        .map(|m| m.org.clone())
        .find(|o| me.has_role_in(o, Role::HospitalAdmin))
        .ok_or_else(|| {
            RejectReason::unauthorized(
                "only an admin of the member's organisation handles recovery",
            )
            .into()
        })
}

fn audit_recovery<S: StateRead>(
    st: &mut Overlay<'_, S>,
    cx: &Ctx<'_>,
    account: &AccountId,
    reason: &str,
) -> R {
    super::messages::append_audit(
        st,
        cx,
        super::consent::AuditFact {
            accessor: cx.signer,
            record: None,
            patient: Some(*account),
            purpose: Purpose::Operations,
            time_ms: cx.now,
            allowed: true,
            reason: reason.into(),
            break_glass: false,
        },
    )
}

pub(super) fn request_recovery<S: StateRead>(
    st: &mut Overlay<'_, S>,
    cx: &Ctx<'_>,
    account: &AccountId,
) -> R {
    ensure(account != &cx.signer, || {
        RejectReason::invalid("recovery of one's own account")
    })?;
    let member = existing_account(st, account)?;
    let org = shared_admin_org(st, cx, &member)?;
    let id = GrantId::from_tx(&cx.hash);
    st.put(org_recovery_key(&org, &id), Vec::new());
    st.put_obj(
        recovery_key(&id),
        &RecoveryState {
            account: *account,
            org,
            requested_by: cx.signer,
            requested_ms: cx.now,
            approved_by: None,
            approved_ms: None,
        },
    );
    audit_recovery(st, cx, account, "recovery_requested")
}

pub(super) fn approve_recovery<S: StateRead>(
    st: &mut Overlay<'_, S>,
    cx: &Ctx<'_>,
    id: &GrantId,
) -> R {
    let mut r: RecoveryState = st
        .get_obj(&recovery_key(id))?
        .ok_or_else(|| RejectReason::not_found("recovery request"))?;
    ensure(r.approved_by.is_none(), || {
        RejectReason::conflict("recovery already approved")
    })?;
    ensure(r.requested_by != cx.signer, || {
        RejectReason::unauthorized("a second, different admin must approve a recovery")
    })?;
    let me = signer_state(st, cx)?;
    ensure(me.has_role_in(&r.org, Role::HospitalAdmin), || {
        RejectReason::unauthorized(format!("only an admin of {} approves this recovery", r.org))
    })?;
    r.approved_by = Some(cx.signer);
    r.approved_ms = Some(cx.now);
    let account = r.account;
    st.put_obj(recovery_key(id), &r);
    audit_recovery(st, cx, &account, "recovery_approved")
}
