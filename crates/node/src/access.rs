//! What an identified account may see of the ledger's objects: the one set of
//! visibility rules behind every surface (`/v1` queries, the FHIR Consent, AuditEvent
//! and Provenance views, the portal to come). Record *content* is decided by the
//! ledger's `contracts::can`; these rules cover the ledger facts around it.

use medledger_core::{AccountId, Grantee, OrgId, Purpose, RecordId, Role};
use medledger_ledger::contracts;
use medledger_ledger::contracts::state::{AccountState, AuditEntry, GrantState};
use medledger_ledger::exec::StateRead;

/// An identified caller as the ledger knows them: the rules below read only this and
/// committed state, so `/v1` and `/fhir` decide visibility the same way.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub account: AccountId,
    /// `None` for a key the ledger does not know: it may see nothing but itself.
    pub state: Option<AccountState>,
}

impl Viewer {
    /// `account` as committed state knows it.
    pub fn of(st: &impl StateRead, account: AccountId) -> medledger_ledger::Result<Viewer> {
        let state = contracts::query::account(st, &account)?.map(|a| a.state);
        Ok(Viewer { account, state })
    }

    /// Auditors, the consortium admin and consortium nodes see the whole ledger: the
    /// audit trail, blocks and every object's ledger facts (never record content).
    pub fn oversees(&self) -> bool {
        self.state
            .as_ref()
            .is_some_and(|a| a.consortium_admin || a.node || a.has_role(Role::Auditor))
    }

    pub fn is(&self, account: &AccountId) -> bool {
        &self.account == account
    }

    fn roles(&self) -> impl Iterator<Item = &medledger_ledger::contracts::state::Membership> {
        self.state.iter().flat_map(|a| a.roles.iter())
    }

    /// An admin of `org` (or the consortium admin, who may act for any organisation).
    pub fn administers(&self, org: &OrgId) -> bool {
        self.state
            .as_ref()
            .is_some_and(|a| a.consortium_admin || a.has_role_in(org, Role::HospitalAdmin))
    }

    /// May see a grant: its patient, its grantee (an organisation's grant only to
    /// members whose role may use it for its purpose, never to the organisation's
    /// patients), and overseers.
    pub fn sees_grant(&self, g: &GrantState) -> bool {
        self.is(&g.patient)
            || self.oversees()
            || match &g.grantee {
                Grantee::Account(a) => self.is(a),
                Grantee::Org(o) => self
                    .roles()
                    .any(|m| &m.org == o && m.role.may_use_for(g.purpose)),
            }
    }

    /// May see an audit entry: its patient, its accessor, and overseers.
    pub fn sees_audit(&self, e: &AuditEntry) -> bool {
        self.oversees() || self.is(&e.accessor) || e.patient.is_some_and(|p| self.is(&p))
    }

    /// May see a record's ledger facts (versions, CIDs, authors): overseers, and
    /// whoever `can` would let read it now for some purpose.
    pub fn sees_record(
        &self,
        st: &impl StateRead,
        record: &RecordId,
        at: u64,
    ) -> medledger_ledger::Result<bool> {
        if self.oversees() {
            return Ok(true);
        }
        for p in Purpose::ALL {
            if contracts::can(st, &self.account, record, p, at)?.allowed() {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
