//! The typed objects the contracts keep in the state table, and their keys. Keys are
//! `<kind>/` followed by fixed-width binary ids, so prefix scans list one patient's,
//! record's or account's objects in id (or sequence) order.

use borsh::{BorshDeserialize, BorshSerialize};
use medledger_core::{
    AccountId, AgreementId, BreakGlassId, Category, Cid, Digest32, EmergencyReason, GrantId,
    Grantee, MessageId, OrgId, Purpose, RecordId, Role, Scope, TxHash,
};
use serde::Serialize;

pub(crate) fn key(kind: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(kind.len() + 1 + parts.iter().map(|p| p.len()).sum::<usize>());
    k.extend_from_slice(kind);
    k.push(b'/');
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

pub fn account_key(id: &AccountId) -> Vec<u8> {
    key(b"acct", &[&id.0])
}
pub fn balance_key(id: &AccountId) -> Vec<u8> {
    key(b"bal", &[&id.0])
}
pub fn org_key(org: &OrgId) -> Vec<u8> {
    key(b"org", &[org.as_str().as_bytes()])
}
/// Pending registrations of an org: `pend/<org>\0<account>`.
pub fn pending_key(org: &OrgId, account: &AccountId) -> Vec<u8> {
    key(b"pend", &[org.as_str().as_bytes(), b"\0", &account.0])
}
pub fn pending_prefix(org: &OrgId) -> Vec<u8> {
    key(b"pend", &[org.as_str().as_bytes(), b"\0"])
}
/// Members of an org: `mem/<org>\0<account><role>`.
pub fn member_key(org: &OrgId, account: &AccountId, role: Role) -> Vec<u8> {
    key(
        b"mem",
        &[org.as_str().as_bytes(), b"\0", &account.0, &[role as u8]],
    )
}
pub fn member_prefix(org: &OrgId) -> Vec<u8> {
    key(b"mem", &[org.as_str().as_bytes(), b"\0"])
}
pub fn record_key(id: &RecordId) -> Vec<u8> {
    key(b"rec", &[&id.0.0])
}
pub fn version_key(id: &RecordId, version: u32) -> Vec<u8> {
    key(b"recv", &[&id.0.0, &version.to_be_bytes()])
}
pub fn version_prefix(id: &RecordId) -> Vec<u8> {
    key(b"recv", &[&id.0.0])
}
pub fn patient_record_key(patient: &AccountId, id: &RecordId) -> Vec<u8> {
    key(b"prec", &[&patient.0, &id.0.0])
}
pub fn patient_record_prefix(patient: &AccountId) -> Vec<u8> {
    key(b"prec", &[&patient.0])
}
pub fn grant_key(id: &GrantId) -> Vec<u8> {
    key(b"grant", &[&id.0.0])
}
pub fn patient_grant_key(patient: &AccountId, id: &GrantId) -> Vec<u8> {
    key(b"pgrant", &[&patient.0, &id.0.0])
}
pub fn patient_grant_prefix(patient: &AccountId) -> Vec<u8> {
    key(b"pgrant", &[&patient.0])
}
pub fn break_glass_key(id: &BreakGlassId) -> Vec<u8> {
    key(b"bg", &[&id.0.0])
}
pub fn patient_break_glass_key(patient: &AccountId, id: &BreakGlassId) -> Vec<u8> {
    key(b"pbg", &[&patient.0, &id.0.0])
}
pub fn patient_break_glass_prefix(patient: &AccountId) -> Vec<u8> {
    key(b"pbg", &[&patient.0])
}
pub fn message_key(id: &MessageId) -> Vec<u8> {
    key(b"msg", &[&id.0.0])
}
pub fn inbox_key(to: &AccountId, id: &MessageId) -> Vec<u8> {
    key(b"inbox", &[&to.0, &id.0.0])
}
pub fn inbox_prefix(to: &AccountId) -> Vec<u8> {
    key(b"inbox", &[&to.0])
}
/// Messages by sender, so that a sender can follow what they asked.
pub fn outbox_key(from: &AccountId, id: &MessageId) -> Vec<u8> {
    key(b"outbox", &[&from.0, &id.0.0])
}
pub fn outbox_prefix(from: &AccountId) -> Vec<u8> {
    key(b"outbox", &[&from.0])
}
pub fn agreement_key(id: &AgreementId) -> Vec<u8> {
    key(b"agr", &[&id.0.0])
}
pub fn patient_agreement_key(patient: &AccountId, id: &AgreementId) -> Vec<u8> {
    key(b"pagr", &[&patient.0, &id.0.0])
}
pub fn patient_agreement_prefix(patient: &AccountId) -> Vec<u8> {
    key(b"pagr", &[&patient.0])
}
/// Agreements by proposer (an insurer's or researcher's own proposals).
pub fn proposer_agreement_key(proposer: &AccountId, id: &AgreementId) -> Vec<u8> {
    key(b"ragr", &[&proposer.0, &id.0.0])
}
pub fn proposer_agreement_prefix(proposer: &AccountId) -> Vec<u8> {
    key(b"ragr", &[&proposer.0])
}
/// Open proposals by deadline: `agrdue/<respond_by_ms be><id>`.
pub fn agreement_due_key(respond_by_ms: u64, id: &AgreementId) -> Vec<u8> {
    key(b"agrdue", &[&respond_by_ms.to_be_bytes(), &id.0.0])
}
/// Held erasures by the end of their retention: `erdue/<until_ms be><record>`.
pub fn erasure_due_key(until_ms: u64, id: &RecordId) -> Vec<u8> {
    key(b"erdue", &[&until_ms.to_be_bytes(), &id.0.0])
}
pub fn audit_key(seq: u64) -> Vec<u8> {
    key(b"aud", &[&seq.to_be_bytes()])
}
/// Audit indexes: by patient, record, accessor, time; each value is empty.
pub fn audit_index_key(index: AuditIndex, id: &[u8], seq: u64) -> Vec<u8> {
    key(index.tag(), &[id, &seq.to_be_bytes()])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditIndex {
    Patient,
    Record,
    Accessor,
    /// By the access time (8 bytes big-endian), for time-range queries.
    Time,
}

impl AuditIndex {
    pub(crate) fn tag(self) -> &'static [u8] {
        match self {
            AuditIndex::Patient => b"audp",
            AuditIndex::Record => b"audr",
            AuditIndex::Accessor => b"auda",
            AuditIndex::Time => b"audt",
        }
    }
}

pub fn invite_key(commitment: &Digest32) -> Vec<u8> {
    key(b"inv", &[&commitment.0])
}

/// A patient invite: who issued it, for which org, until when, and whether used.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize)]
pub struct InviteState {
    pub org: OrgId,
    pub inviter: AccountId,
    pub expires_ms: u64,
    pub used_by: Option<AccountId>,
}

pub fn recovery_key(id: &GrantId) -> Vec<u8> {
    key(b"recov", &[&id.0.0])
}
/// Recovery requests by organisation, for its admins' list of what awaits approval.
pub fn org_recovery_key(org: &OrgId, id: &GrantId) -> Vec<u8> {
    key(b"orecov", &[org.as_str().as_bytes(), &[0], &id.0.0])
}
pub fn org_recovery_prefix(org: &OrgId) -> Vec<u8> {
    key(b"orecov", &[org.as_str().as_bytes(), &[0]])
}

/// An organisation-assisted recovery: requested by one admin, approved by another.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize)]
pub struct RecoveryState {
    pub account: AccountId,
    pub org: OrgId,
    pub requested_by: AccountId,
    pub requested_ms: u64,
    pub approved_by: Option<AccountId>,
    pub approved_ms: Option<u64>,
}

pub const SUPPLY_KEY: &[u8] = b"sys/supply";
pub const FEES_KEY: &[u8] = b"sys/fees";
pub const ESCROW_KEY: &[u8] = b"sys/escrow";
pub const AUDIT_SEQ_KEY: &[u8] = b"sys/audit-seq";
pub const SHRED_SEQ_KEY: &[u8] = b"sys/shred-seq";

/// Records whose contents every node must now delete from its record store, in the
/// order they were erased: `shred/<seq be>` → record id. Each node keeps its own
/// cursor (local metadata), so shredding resumes after a restart.
pub fn shred_key(seq: u64) -> Vec<u8> {
    key(b"shred", &[&seq.to_be_bytes()])
}

/// Which record version a blob belongs to: `cid/<digest>` → [`CidOwner`]. Written
/// once, when the version is registered; a second registration of the CID is refused.
pub fn cid_key(cid: &Cid) -> Vec<u8> {
    key(b"cid", &[&cid.0.0])
}

/// The one record version a CID is registered to.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize)]
pub struct CidOwner {
    pub record: RecordId,
    pub version: u32,
}

/// One role in one organisation.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize)]
pub struct Membership {
    pub org: OrgId,
    pub role: Role,
}

/// An account as the ledger knows it. No personal data: keys, counters, roles.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize)]
pub struct AccountState {
    /// Nonce of the last applied transaction (0 before the first).
    pub nonce: u64,
    pub encryption_key: Digest32,
    /// The consortium admin named in genesis.
    pub consortium_admin: bool,
    /// A consortium node (signs access reports).
    pub node: bool,
    pub roles: Vec<Membership>,
    /// A registration waiting for an org admin.
    pub pending: Option<Membership>,
}

impl AccountState {
    pub fn new(encryption_key: Digest32) -> Self {
        AccountState {
            nonce: 0,
            encryption_key,
            consortium_admin: false,
            node: false,
            roles: Vec::new(),
            pending: None,
        }
    }

    pub fn has_role(&self, role: Role) -> bool {
        self.roles.iter().any(|m| m.role == role)
    }

    pub fn has_role_in(&self, org: &OrgId, role: Role) -> bool {
        self.roles.iter().any(|m| m.role == role && &m.org == org)
    }

    pub fn is_member_of(&self, org: &OrgId) -> bool {
        self.roles.iter().any(|m| &m.org == org)
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize)]
pub struct OrgState {
    pub created_ms: u64,
}

/// Where a record stands with respect to erasure.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ErasureStatus {
    None,
    /// Asked for, but the category's legal retention period runs until `until_ms`.
    Retained {
        requested_ms: u64,
        until_ms: u64,
        /// The retention rule's period, shown to the patient as the reason.
        period_ms: u64,
    },
    /// Tombstoned: the content is to be deleted and nothing may read it.
    Erased {
        requested_ms: u64,
        erased_ms: u64,
    },
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize)]
pub struct RecordState {
    pub patient: AccountId,
    pub category: Category,
    pub created_by: AccountId,
    pub created_ms: u64,
    /// Number of versions (the latest is `versions`, the first is 1).
    pub versions: u32,
    pub erasure: ErasureStatus,
}

impl RecordState {
    pub fn is_erased(&self) -> bool {
        matches!(self.erasure, ErasureStatus::Erased { .. })
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize)]
pub struct VersionState {
    pub version: u32,
    pub cid: Cid,
    pub content_hash: Digest32,
    pub size: u64,
    pub author: AccountId,
    pub time_ms: u64,
    pub tx: TxHash,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize)]
pub struct GrantState {
    pub patient: AccountId,
    pub grantee: Grantee,
    pub scope: Scope,
    pub purpose: Purpose,
    pub start_ms: u64,
    /// Exclusive: the grant no longer holds in a block at or after this time.
    pub expiry_ms: u64,
    pub revoked_ms: Option<u64>,
    /// The paid agreement that created this grant, if any.
    pub agreement: Option<AgreementId>,
}

impl GrantState {
    /// Whether the grant holds at `at` (start ≤ at < expiry, before any revocation).
    pub fn live_at(&self, at: u64) -> bool {
        self.start_ms <= at && at < self.expiry_ms && self.revoked_ms.is_none_or(|r| at < r)
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize)]
pub struct BreakGlassState {
    pub doctor: AccountId,
    pub patient: AccountId,
    pub reason: EmergencyReason,
    pub start_ms: u64,
    pub expiry_ms: u64,
}

impl BreakGlassState {
    pub fn live_at(&self, at: u64) -> bool {
        self.start_ms <= at && at < self.expiry_ms
    }
}

/// One access fact: who used which record, why, and whether it was allowed.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize)]
pub struct AuditEntry {
    pub seq: u64,
    /// Who signed the transaction that recorded this fact: the node that served (or
    /// refused) a read, or the doctor who opened break-glass.
    pub reporter: AccountId,
    pub accessor: AccountId,
    pub record: Option<RecordId>,
    pub patient: Option<AccountId>,
    pub purpose: Purpose,
    pub time_ms: u64,
    pub allowed: bool,
    pub reason: String,
    /// Set when the access rests on break-glass.
    pub break_glass: bool,
    pub tx: TxHash,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum MessageStatus {
    Pending,
    Approved { at_ms: u64 },
    Denied { at_ms: u64 },
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize)]
pub struct MessageState {
    pub from: AccountId,
    pub to: AccountId,
    /// The encrypted body in the record store; none for system notices.
    pub content: Option<Cid>,
    /// Set for the notice a patient gets when their records are opened by break-glass.
    pub break_glass: Option<BreakGlassId>,
    pub sent_ms: u64,
    pub status: MessageStatus,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum AgreementStatus {
    Proposed,
    Accepted { at_ms: u64, grant: GrantId },
    Rejected { at_ms: u64 },
    Expired { at_ms: u64 },
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize)]
pub struct AgreementState {
    pub proposer: AccountId,
    pub patient: AccountId,
    pub scope: Scope,
    pub purpose: Purpose,
    pub duration_ms: u64,
    pub price: u64,
    pub terms: Cid,
    pub proposed_ms: u64,
    pub respond_by_ms: u64,
    pub status: AgreementStatus,
}
