//! Read-only views of the contracts' state for the API and CLI. Pure functions over
//! any [`StateRead`], so tests can run them over a scratch map and the node over a
//! consistent redb read transaction.

use super::decision::{break_glasses_of, grants_of, id_at};
use super::state::*;
use crate::error::Result;
use crate::exec::{StateRead, read_obj};
use medledger_core::{
    AccountId, AgreementId, BreakGlassId, Digest32, GrantId, MessageId, OrgId, Purpose, RecordId,
    Role,
};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct AccountView {
    pub id: AccountId,
    #[serde(flatten)]
    pub state: AccountState,
    pub balance: u64,
}

pub fn account(state: &impl StateRead, id: &AccountId) -> Result<Option<AccountView>> {
    let Some(a) = read_obj::<AccountState>(state, &account_key(id))? else {
        return Ok(None);
    };
    Ok(Some(AccountView {
        id: *id,
        state: a,
        balance: super::balance(state, id)?,
    }))
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    pub account: AccountId,
    pub role: Role,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct OrgView {
    pub id: OrgId,
    pub created_ms: u64,
    pub members: Vec<Member>,
    pub pending: Vec<Member>,
}

fn role_from(b: u8) -> Option<Role> {
    Role::ALL.get(b as usize).copied()
}

/// Every organisation with when it was created, in id order.
pub fn orgs(state: &impl StateRead) -> Result<Vec<(OrgId, OrgState)>> {
    let prefix = key(b"org", &[]);
    let mut out = Vec::new();
    for (k, v) in state.scan(&prefix)? {
        let Ok(id) = std::str::from_utf8(&k[prefix.len()..]).map(OrgId::new) else {
            continue;
        };
        if let (Ok(id), Some(o)) = (id, crate::exec::decode_opt::<OrgState>(&k, Some(v))?) {
            out.push((id, o));
        }
    }
    Ok(out)
}

pub fn org(state: &impl StateRead, id: &OrgId) -> Result<Option<OrgView>> {
    let Some(o) = read_obj::<OrgState>(state, &org_key(id))? else {
        return Ok(None);
    };
    let mp = member_prefix(id);
    let members = state
        .scan(&mp)?
        .into_iter()
        .filter_map(|(k, _)| {
            let account = AccountId(k.get(mp.len()..mp.len() + 32)?.try_into().ok()?);
            let role = role_from(*k.get(mp.len() + 32)?)?;
            Some(Member { account, role })
        })
        .collect();
    let pp = pending_prefix(id);
    let pending = state
        .scan(&pp)?
        .into_iter()
        .filter_map(|(k, v)| {
            let account = AccountId(k.get(pp.len()..pp.len() + 32)?.try_into().ok()?);
            let role = role_from(*v.first()?)?;
            Some(Member { account, role })
        })
        .collect();
    Ok(Some(OrgView {
        id: id.clone(),
        created_ms: o.created_ms,
        members,
        pending,
    }))
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct RecordView {
    pub id: RecordId,
    #[serde(flatten)]
    pub state: RecordState,
    pub history: Vec<VersionState>,
}

pub fn record(state: &impl StateRead, id: &RecordId) -> Result<Option<RecordView>> {
    let Some(r) = read_obj::<RecordState>(state, &record_key(id))? else {
        return Ok(None);
    };
    let mut history = Vec::new();
    for (k, _) in state.scan(&version_prefix(id))? {
        if let Some(v) = read_obj::<VersionState>(state, &k)? {
            history.push(v);
        }
    }
    Ok(Some(RecordView {
        id: *id,
        state: r,
        history,
    }))
}

/// The decision for `accessor` using `record` for `purpose` at `at`, with the record
/// only if allowed: what an audited read path needs, from one state view.
pub fn access(
    state: &impl StateRead,
    accessor: &AccountId,
    record: &RecordId,
    purpose: Purpose,
    at: u64,
) -> Result<(super::decision::Decision, Option<RecordView>)> {
    let d = super::decision::can(state, accessor, record, purpose, at)?;
    let view = if d.allowed() {
        self::record(state, record)?
    } else {
        None
    };
    Ok((d, view))
}

/// Ids of a patient's records, in id order, after `after`, at most `limit`.
pub fn patient_records(
    state: &impl StateRead,
    patient: &AccountId,
    after: Option<&RecordId>,
    limit: usize,
) -> Result<Vec<RecordId>> {
    let prefix = patient_record_prefix(patient);
    let start = after.map(|a| patient_record_key(patient, a));
    Ok(state
        .scan_page(&prefix, start.as_deref(), limit)?
        .into_iter()
        .filter_map(|(k, _)| id_at::<RecordId>(&k, prefix.len()))
        .collect())
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct GrantView {
    pub id: GrantId,
    #[serde(flatten)]
    pub state: GrantState,
}

pub fn grants(state: &impl StateRead, patient: &AccountId) -> Result<Vec<GrantView>> {
    Ok(grants_of(state, patient)?
        .into_iter()
        .map(|(id, state)| GrantView { id, state })
        .collect())
}

pub fn grant(state: &impl StateRead, id: &GrantId) -> Result<Option<GrantState>> {
    read_obj(state, &grant_key(id))
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct BreakGlassView {
    pub id: BreakGlassId,
    #[serde(flatten)]
    pub state: BreakGlassState,
}

pub fn break_glasses(state: &impl StateRead, patient: &AccountId) -> Result<Vec<BreakGlassView>> {
    Ok(break_glasses_of(state, patient)?
        .into_iter()
        .map(|(id, state)| BreakGlassView { id, state })
        .collect())
}

/// One audit entry by its sequence number.
pub fn audit_entry(state: &impl StateRead, seq: u64) -> Result<Option<AuditEntry>> {
    read_obj(state, &audit_key(seq))
}

/// Which audit index a query walks.
#[derive(Debug, Clone)]
pub enum AuditFilter {
    Patient(AccountId),
    Record(RecordId),
    Accessor(AccountId),
    /// Access times in `[from_ms, to_ms)`.
    Time {
        from_ms: u64,
        to_ms: u64,
    },
}

/// Audit entries matching `filter`, oldest first, skipping sequence numbers up to
/// `after` (the last one a previous page returned).
pub fn audit(
    state: &impl StateRead,
    filter: &AuditFilter,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<AuditEntry>> {
    let (prefix, start) = match filter {
        AuditFilter::Patient(p) => (
            key(AuditIndex::Patient.tag(), &[&p.0]),
            after.map(|s| audit_index_key(AuditIndex::Patient, &p.0, s)),
        ),
        AuditFilter::Record(r) => (
            key(AuditIndex::Record.tag(), &[&r.0.0]),
            after.map(|s| audit_index_key(AuditIndex::Record, &r.0.0, s)),
        ),
        AuditFilter::Accessor(a) => (
            key(AuditIndex::Accessor.tag(), &[&a.0]),
            after.map(|s| audit_index_key(AuditIndex::Accessor, &a.0, s)),
        ),
        AuditFilter::Time { .. } => (key(AuditIndex::Time.tag(), &[]), None),
    };
    let mut out = Vec::new();
    if let AuditFilter::Time { from_ms, to_ms } = filter {
        // The time index is ordered by (time, seq), and entries are not appended in
        // time order (a report carries the time of the read it reports), so a page
        // resumes right after the (time, seq) key of the entry `after` names; skipping
        // by sequence number alone lost entries. Sequence numbers start at 1, so
        // (from_ms, 0) sorts before every entry at from_ms.
        let mut cursor = audit_index_key(AuditIndex::Time, &from_ms.to_be_bytes(), 0);
        let mut resume_after = None;
        if let Some(a) = after
            && let Some(e) = read_obj::<AuditEntry>(state, &audit_key(a))?
            && e.time_ms >= *from_ms
        {
            let k = audit_index_key(AuditIndex::Time, &e.time_ms.to_be_bytes(), a);
            cursor = k.clone();
            resume_after = Some(k);
        }
        loop {
            let page = state.scan_page(&prefix, Some(&cursor), 256)?;
            let Some((last, _)) = page.last() else {
                return Ok(out);
            };
            let last = last.clone();
            for (k, _) in page {
                let raw = &k[prefix.len()..];
                if raw.len() != 16 {
                    continue;
                }
                let t = u64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
                let seq = u64::from_be_bytes(raw[8..].try_into().expect("8 bytes"));
                if t >= *to_ms || out.len() >= limit {
                    return Ok(out);
                }
                if resume_after.as_ref().is_some_and(|r| &k <= r) {
                    continue;
                }
                if let Some(e) = read_obj::<AuditEntry>(state, &audit_key(seq))? {
                    out.push(e);
                }
            }
            cursor = last;
        }
    }
    for (k, _) in state.scan_page(&prefix, start.as_deref(), limit)? {
        let Some(raw) = k.get(prefix.len()..) else {
            continue;
        };
        let Ok(seq) = <[u8; 8]>::try_from(raw) else {
            continue;
        };
        if let Some(e) = read_obj::<AuditEntry>(state, &audit_key(u64::from_be_bytes(seq)))? {
            out.push(e);
        }
    }
    Ok(out)
}

/// The newest audit entries of one patient, record or accessor, newest first, before
/// sequence number `before` (the oldest one a previous page returned), at most `limit`.
/// A time range is not an index of one party; use [`audit`] for it.
pub fn audit_latest(
    state: &impl StateRead,
    filter: &AuditFilter,
    before: Option<u64>,
    limit: usize,
) -> Result<Vec<AuditEntry>> {
    let (kind, id): (AuditIndex, &[u8]) = match filter {
        AuditFilter::Patient(p) => (AuditIndex::Patient, &p.0),
        AuditFilter::Record(r) => (AuditIndex::Record, &r.0.0),
        AuditFilter::Accessor(a) => (AuditIndex::Accessor, &a.0),
        AuditFilter::Time { .. } => return Ok(Vec::new()),
    };
    let prefix = key(kind.tag(), &[id]);
    let before = before.map(|s| audit_index_key(kind, id, s));
    let mut out = Vec::new();
    for (k, _) in state.scan_page_rev(&prefix, before.as_deref(), limit)? {
        let Some(Ok(seq)) = k.get(prefix.len()..).map(<[u8; 8]>::try_from) else {
            continue;
        };
        if let Some(e) = read_obj::<AuditEntry>(state, &audit_key(u64::from_be_bytes(seq)))? {
            out.push(e);
        }
    }
    Ok(out)
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct MessageView {
    pub id: MessageId,
    #[serde(flatten)]
    pub state: MessageState,
}

pub fn inbox(state: &impl StateRead, to: &AccountId) -> Result<Vec<MessageView>> {
    messages_at(state, &inbox_prefix(to))
}

/// The messages `from` sent.
pub fn outbox(state: &impl StateRead, from: &AccountId) -> Result<Vec<MessageView>> {
    messages_at(state, &outbox_prefix(from))
}

fn messages_at(state: &impl StateRead, prefix: &[u8]) -> Result<Vec<MessageView>> {
    let mut out = Vec::new();
    for (k, _) in state.scan(prefix)? {
        let Some(id) = id_at::<MessageId>(&k, prefix.len()) else {
            continue;
        };
        if let Some(m) = read_obj::<MessageState>(state, &message_key(&id))? {
            out.push(MessageView { id, state: m });
        }
    }
    Ok(out)
}

pub fn message(state: &impl StateRead, id: &MessageId) -> Result<Option<MessageState>> {
    read_obj(state, &message_key(id))
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct AgreementView {
    pub id: AgreementId,
    #[serde(flatten)]
    pub state: AgreementState,
}

pub fn agreement(state: &impl StateRead, id: &AgreementId) -> Result<Option<AgreementState>> {
    read_obj(state, &agreement_key(id))
}

pub fn agreements(state: &impl StateRead, patient: &AccountId) -> Result<Vec<AgreementView>> {
    agreements_at(state, &patient_agreement_prefix(patient))
}

/// The agreements `proposer` offered.
pub fn proposed_by(state: &impl StateRead, proposer: &AccountId) -> Result<Vec<AgreementView>> {
    agreements_at(state, &proposer_agreement_prefix(proposer))
}

fn agreements_at(state: &impl StateRead, prefix: &[u8]) -> Result<Vec<AgreementView>> {
    let mut out = Vec::new();
    for (k, _) in state.scan(prefix)? {
        let Some(id) = id_at::<AgreementId>(&k, prefix.len()) else {
            continue;
        };
        if let Some(a) = read_obj::<AgreementState>(state, &agreement_key(&id))? {
            out.push(AgreementView { id, state: a });
        }
    }
    Ok(out)
}

/// Totals of the payment system: units minted, fees collected, escrow held.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Totals {
    pub supply: u64,
    pub fees: u64,
    pub escrow: u64,
}

pub fn totals(state: &impl StateRead) -> Result<Totals> {
    Ok(Totals {
        supply: super::counter(state, SUPPLY_KEY)?,
        fees: super::counter(state, FEES_KEY)?,
        escrow: super::counter(state, ESCROW_KEY)?,
    })
}

/// Sum of every account balance (for conservation checks).
pub fn balances_sum(state: &impl StateRead) -> Result<u128> {
    let mut sum = 0u128;
    for (k, v) in state.scan(b"bal/")? {
        let b: u64 = crate::exec::decode_opt(&k, Some(v))?.unwrap_or(0);
        sum += b as u128;
    }
    Ok(sum)
}

/// Work that has come due by `now`: open proposals past their deadline and held
/// erasures whose retention has ended. The node's housekeeping submits the txs.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, Serialize)]
pub struct Due {
    pub agreements: Vec<AgreementId>,
    pub erasures: Vec<RecordId>,
}

pub fn due(state: &impl StateRead, now: u64, limit: usize) -> Result<Due> {
    let mut d = Due::default();
    let walk = |tag: &[u8]| -> Result<Vec<Digest32>> {
        let prefix = key(tag, &[]);
        let mut out = Vec::new();
        for (k, _) in state.scan_page(&prefix, None, limit)? {
            let raw = &k[prefix.len()..];
            if raw.len() != 40 {
                continue;
            }
            let t = u64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
            if t > now {
                break;
            }
            out.push(Digest32(raw[8..].try_into().expect("32 bytes")));
        }
        Ok(out)
    };
    d.agreements = walk(b"agrdue")?.into_iter().map(AgreementId).collect();
    d.erasures = walk(b"erdue")?.into_iter().map(RecordId).collect();
    Ok(d)
}

/// Records erased after shred sequence number `after` (at most `limit`), with their
/// sequence numbers: what a node must still delete from its record store.
pub fn shred_after(
    state: &impl StateRead,
    after: u64,
    limit: usize,
) -> Result<Vec<(u64, RecordId)>> {
    let prefix = key(b"shred", &[]);
    let start = shred_key(after);
    let mut out = Vec::new();
    for (k, v) in state.scan_page(&prefix, Some(&start), limit)? {
        let Ok(seq) = <[u8; 8]>::try_from(&k[prefix.len()..]) else {
            continue;
        };
        if let Some(id) = crate::exec::decode_opt::<RecordId>(&k, Some(v))? {
            out.push((u64::from_be_bytes(seq), id));
        }
    }
    Ok(out)
}

/// Registered CIDs in digest order, `limit` at a time after `after`.
pub fn cids_page(
    state: &impl StateRead,
    after: Option<&medledger_core::Cid>,
    limit: usize,
) -> Result<Vec<medledger_core::Cid>> {
    let prefix = key(b"cid", &[]);
    let start = after.map(cid_key);
    let mut out = Vec::new();
    for (k, _) in state.scan_page(&prefix, start.as_deref(), limit)? {
        if let Ok(d) = <[u8; 32]>::try_from(&k[prefix.len()..]) {
            out.push(medledger_core::Cid(medledger_core::Digest32(d)));
        }
    }
    Ok(out)
}

/// The record version a CID is registered to, if any.
pub fn cid_owner(state: &impl StateRead, cid: &medledger_core::Cid) -> Result<Option<CidOwner>> {
    read_obj(state, &cid_key(cid))
}

pub fn recovery(state: &impl StateRead, id: &GrantId) -> Result<Option<RecoveryState>> {
    read_obj(state, &recovery_key(id))
}

/// The recovery requests of an organisation's members, oldest first.
pub fn recoveries(state: &impl StateRead, org: &OrgId) -> Result<Vec<(GrantId, RecoveryState)>> {
    let prefix = org_recovery_prefix(org);
    let mut out = Vec::new();
    for (k, _) in state.scan(&prefix)? {
        let Some(id) = id_at::<GrantId>(&k, prefix.len()) else {
            continue;
        };
        if let Some(r) = read_obj::<RecoveryState>(state, &recovery_key(&id))? {
            out.push((id, r));
        }
    }
    out.sort_by_key(|(_, r)| r.requested_ms);
    Ok(out)
}
