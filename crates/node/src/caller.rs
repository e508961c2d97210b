//! Who is calling: the one extractor every HTTP surface takes its caller from, and the
//! one place that decides what a caller may see of the ledger's objects.
//!
//! A request is anonymous, signed by a self-custody account (`Medledger-Ed25519`), or
//! made by a signed-in person (session cookie or `Bearer` API token). Credentials that
//! are present but wrong are refused (401); absent credentials make an anonymous
//! caller, and each route decides whether that is enough. A person whose role the
//! ledger no longer gives them is signed out: sessions and tokens never outlive the
//! role that allowed them.

use crate::api::{ApiError, AppState};
use crate::auth::Principal;
use crate::reporter::now_ms;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use medledger_core::{AccountId, Grantee, OrgId, Purpose, RecordId, Role};
use medledger_ledger::contracts;
use medledger_ledger::contracts::state::{AccountState, AuditEntry, GrantState};
use medledger_ledger::exec::StateRead;

/// Signed requests: `Authorization: Medledger-Ed25519 did=<did:key>,ts=<ms>,sig=<hex>`
/// where `sig` is the account's Ed25519 signature over
/// `medledger/request/v1\n<METHOD>\n<path?query>\n<ts>`. Valid for five minutes.
pub const REQUEST_TAG: &str = "medledger/request/v1";
const REQUEST_WINDOW_MS: u64 = 5 * 60 * 1000;

pub fn request_message(method: &str, path_and_query: &str, ts: u64) -> String {
    format!("{REQUEST_TAG}\n{method}\n{path_and_query}\n{ts}")
}

/// The caller of one request.
#[derive(Debug, Clone)]
pub enum Caller {
    Anonymous,
    /// A self-custody account that signed this request.
    Signed(AccountId),
    /// A signed-in person (session cookie or API token), with their keys.
    Person(Principal),
}

impl Caller {
    /// The acting account, or 401 for an anonymous caller.
    pub fn account(&self) -> Result<AccountId, ApiError> {
        match self {
            Caller::Anonymous => Err(ApiError::Unauthenticated(
                "sign in, send an API token (Authorization: Bearer) or sign the request (Authorization: Medledger-Ed25519)".into(),
            )),
            Caller::Signed(a) => Ok(*a),
            Caller::Person(p) => Ok(p.account),
        }
    }

    /// What the ledger says about the acting account: 401 for anonymous callers.
    pub fn viewer(&self, st: &impl StateRead) -> Result<Viewer, ApiError> {
        let account = self.account()?;
        let state = contracts::query::account(st, &account)
            .map_err(ApiError::from)?
            .map(|a| a.state);
        Ok(Viewer { account, state })
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, ApiError> {
        let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("");
        identify(s, &parts.headers, parts.method.as_str(), path)
    }
}

/// The caller behind a request's credentials (see the module docs).
pub fn identify(
    s: &AppState,
    headers: &HeaderMap,
    method: &str,
    path_and_query: &str,
) -> Result<Caller, ApiError> {
    let unauth = |m: &str| ApiError::Unauthenticated(m.to_owned());
    if let Some(h) = headers.get(header::AUTHORIZATION) {
        let h = h
            .to_str()
            .map_err(|_| unauth("unreadable Authorization header"))?;
        if let Some(token) = h.strip_prefix("Bearer ") {
            let p = s
                .auth
                .principal(token.trim())
                .map_err(|e| ApiError::Internal(format!("token lookup: {e}")))?
                .ok_or_else(|| unauth("unknown or expired API token"))?;
            return person(s, p);
        }
        if let Some(params) = h.strip_prefix("Medledger-Ed25519 ") {
            return signed(params, method, path_and_query).map(Caller::Signed);
        }
        return Err(unauth("unsupported authorization scheme"));
    }
    if let Some(token) = crate::auth_api::cookie_token(headers) {
        let sess = s
            .auth
            .session(&token)
            .ok_or_else(|| unauth("the session has ended; sign in again"))?;
        // A cookie rides along on cross-site requests; the CSRF token does not.
        let reads = matches!(method, "GET" | "HEAD");
        if !reads
            && headers.get("x-csrf-token").and_then(|v| v.to_str().ok()) != Some(sess.csrf.as_str())
        {
            return Err(ApiError::Forbidden("missing or wrong X-CSRF-Token".into()));
        }
        if !sess.mfa_ok {
            return Err(ApiError::Forbidden(
                "set up two-factor sign-in first".into(),
            ));
        }
        return person(s, Principal::from(&sess));
    }
    Ok(Caller::Anonymous)
}

/// A signed-in person, if the ledger still gives them the role they signed in with.
fn person(s: &AppState, p: Principal) -> Result<Caller, ApiError> {
    let live = s
        .ledger
        .account(&p.account)
        .map_err(ApiError::from)?
        .is_some_and(|a| a.has_role_in(&p.org, p.role));
    if !live {
        return Err(ApiError::Unauthenticated(
            "the role this sign-in was made for has ended; sign in again".into(),
        ));
    }
    Ok(Caller::Person(p))
}

fn signed(params: &str, method: &str, path_and_query: &str) -> Result<AccountId, ApiError> {
    let unauth = |m: &str| ApiError::Unauthenticated(m.to_owned());
    let (mut did, mut ts, mut sig) = (None, None, None);
    for part in params.split(',') {
        match part.trim().split_once('=') {
            Some(("did", v)) => did = Some(v),
            Some(("ts", v)) => ts = v.parse::<u64>().ok(),
            Some(("sig", v)) => sig = Some(v),
            _ => {}
        }
    }
    let (Some(did), Some(ts), Some(sig)) = (did, ts, sig) else {
        return Err(unauth("authorization needs did, ts and sig"));
    };
    let account: AccountId = did.parse().map_err(|_| unauth("invalid did"))?;
    if now_ms().abs_diff(ts) > REQUEST_WINDOW_MS {
        return Err(unauth(
            "request timestamp is outside the five-minute window",
        ));
    }
    let mut sig_bytes = [0u8; 64];
    hex::decode_to_slice(sig, &mut sig_bytes).map_err(|_| unauth("sig must be 128 hex digits"))?;
    if !account.verify(
        request_message(method, path_and_query, ts).as_bytes(),
        &sig_bytes,
    ) {
        return Err(unauth("request signature does not verify"));
    }
    Ok(account)
}

/// An identified caller as the ledger knows them: the rules below read only this and
/// committed state, so `/v1` and `/fhir` decide visibility the same way.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub account: AccountId,
    /// `None` for a key the ledger does not know: it may see nothing but itself.
    pub state: Option<AccountState>,
}

impl Viewer {
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
