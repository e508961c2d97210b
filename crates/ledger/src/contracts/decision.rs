//! The one access decision every read path uses: `can(account, record, purpose, at)`,
//! and its write-side twin for adding and amending records. Both read only committed
//! state (or a block's overlay), so every node decides the same way.

use super::state::*;
use crate::error::Result;
use crate::exec::{StateRead, read_obj};
use medledger_core::{
    AccountId, BreakGlassId, Category, Digest32, GrantId, Grantee, Purpose, RecordId, Role,
};
use serde::Serialize;

/// Allow or deny, with the reason.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Decision {
    /// The accessor is the record's patient.
    AllowPatient,
    AllowGrant {
        grant: GrantId,
    },
    AllowBreakGlass {
        break_glass: BreakGlassId,
    },
    DenyNoSuchRecord,
    DenyErased,
    DenyUnknownAccount,
    /// No role of the accessor may use records for this purpose.
    DenyRoleNotPermitted,
    /// No live grant (or break-glass for emergency) covers this record and purpose.
    DenyNoValidGrant,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        matches!(
            self,
            Decision::AllowPatient | Decision::AllowGrant { .. } | Decision::AllowBreakGlass { .. }
        )
    }

    /// The stable reason code (also written into audit entries).
    pub fn code(&self) -> &'static str {
        match self {
            Decision::AllowPatient => "patient",
            Decision::AllowGrant { .. } => "grant",
            Decision::AllowBreakGlass { .. } => "break_glass",
            Decision::DenyNoSuchRecord => "no_such_record",
            Decision::DenyErased => "erased",
            Decision::DenyUnknownAccount => "unknown_account",
            Decision::DenyRoleNotPermitted => "role_not_permitted",
            Decision::DenyNoValidGrant => "no_valid_grant",
        }
    }
}

pub(crate) fn id_at<T: From<Digest32>>(key: &[u8], prefix_len: usize) -> Option<T> {
    let raw: [u8; 32] = key.get(prefix_len..prefix_len + 32)?.try_into().ok()?;
    Some(T::from(Digest32(raw)))
}

/// The patient's grants, in id order.
pub fn grants_of(
    state: &impl StateRead,
    patient: &AccountId,
) -> Result<Vec<(GrantId, GrantState)>> {
    let prefix = patient_grant_prefix(patient);
    let mut out = Vec::new();
    for (k, _) in state.scan(&prefix)? {
        let Some(id) = id_at::<GrantId>(&k, prefix.len()) else {
            continue;
        };
        if let Some(g) = read_obj::<GrantState>(state, &grant_key(&id))? {
            out.push((id, g));
        }
    }
    Ok(out)
}

/// Break-glass openings of a patient's records, in id order.
pub fn break_glasses_of(
    state: &impl StateRead,
    patient: &AccountId,
) -> Result<Vec<(BreakGlassId, BreakGlassState)>> {
    let prefix = patient_break_glass_prefix(patient);
    let mut out = Vec::new();
    for (k, _) in state.scan(&prefix)? {
        let Some(id) = id_at::<BreakGlassId>(&k, prefix.len()) else {
            continue;
        };
        if let Some(b) = read_obj::<BreakGlassState>(state, &break_glass_key(&id))? {
            out.push((id, b));
        }
    }
    Ok(out)
}

/// Whether `grant` names `accessor` (directly or through an organisation) and the
/// accessor holds a role there that may use records for the grant's purpose.
fn grant_reaches(grant: &GrantState, accessor_id: &AccountId, accessor: &AccountState) -> bool {
    match &grant.grantee {
        Grantee::Account(a) => {
            a == accessor_id
                && accessor
                    .roles
                    .iter()
                    .any(|m| m.role.may_use_for(grant.purpose))
        }
        Grantee::Org(org) => accessor
            .roles
            .iter()
            .any(|m| &m.org == org && m.role.may_use_for(grant.purpose)),
    }
}

fn live_break_glass(
    state: &impl StateRead,
    doctor: &AccountId,
    doctor_state: &AccountState,
    patient: &AccountId,
    at: u64,
) -> Result<Option<BreakGlassId>> {
    if !doctor_state.has_role(Role::Doctor) {
        return Ok(None);
    }
    Ok(break_glasses_of(state, patient)?
        .into_iter()
        .find(|(_, b)| &b.doctor == doctor && b.live_at(at))
        .map(|(id, _)| id))
}

/// May `accessor` use `record` for `purpose` at time `at`?
///
/// Having written a version is deliberately not a reason: access lasts only as long
/// as the grant, role or break-glass that allowed it, so a clinician whose grant was
/// revoked or whose role ended loses the records they wrote with it too.
pub fn can(
    state: &impl StateRead,
    accessor: &AccountId,
    record: &RecordId,
    purpose: Purpose,
    at: u64,
) -> Result<Decision> {
    let Some(rec) = read_obj::<RecordState>(state, &record_key(record))? else {
        return Ok(Decision::DenyNoSuchRecord);
    };
    if rec.is_erased() {
        return Ok(Decision::DenyErased);
    }
    if accessor == &rec.patient {
        return Ok(Decision::AllowPatient);
    }
    let Some(who) = read_obj::<AccountState>(state, &account_key(accessor))? else {
        return Ok(Decision::DenyUnknownAccount);
    };
    if purpose == Purpose::Emergency {
        return Ok(
            match live_break_glass(state, accessor, &who, &rec.patient, at)? {
                Some(id) => Decision::AllowBreakGlass { break_glass: id },
                None if !who.roles.iter().any(|m| m.role.may_use_for(purpose)) => {
                    Decision::DenyRoleNotPermitted
                }
                None => Decision::DenyNoValidGrant,
            },
        );
    }
    if !who.roles.iter().any(|m| m.role.may_use_for(purpose)) {
        return Ok(Decision::DenyRoleNotPermitted);
    }
    for (id, g) in grants_of(state, &rec.patient)? {
        if g.purpose == purpose
            && g.live_at(at)
            && g.scope.covers(record, &rec.category)
            && grant_reaches(&g, accessor, &who)
        {
            return Ok(Decision::AllowGrant { grant: id });
        }
    }
    Ok(Decision::DenyNoValidGrant)
}

/// Why a write is allowed (or `None` when it is not): the patient themself, or a
/// clinician with a live treatment grant covering it, or a live break-glass.
pub(crate) fn may_write(
    state: &impl StateRead,
    writer: &AccountId,
    patient: &AccountId,
    category: &Category,
    record: Option<&RecordId>,
    at: u64,
) -> Result<Option<Decision>> {
    if writer == patient {
        return Ok(Some(Decision::AllowPatient));
    }
    let Some(who) = read_obj::<AccountState>(state, &account_key(writer))? else {
        return Ok(None);
    };
    if !who.roles.iter().any(|m| m.role.is_clinician()) {
        return Ok(None);
    }
    if let Some(id) = live_break_glass(state, writer, &who, patient, at)? {
        return Ok(Some(Decision::AllowBreakGlass { break_glass: id }));
    }
    for (id, g) in grants_of(state, patient)? {
        let covers = match record {
            Some(r) => g.scope.covers(r, category),
            None => g.scope.covers_category(category),
        };
        if g.purpose == Purpose::Treatment
            && g.live_at(at)
            && covers
            && grant_reaches(&g, writer, &who)
        {
            return Ok(Some(Decision::AllowGrant { grant: id }));
        }
    }
    Ok(None)
}
