//! The contracts over JSON (`/v1`): preparing any transaction kind for a self-custody
//! signer, queries of organisations, records, consent, audit, messages, payments and
//! agreements, the access decision, and the audited record-access read path.
//!
//! Every query needs an identified caller ([`Caller`]) and answers only what that
//! caller may see ([`Viewer`]): the filter is inside the query, and an object the
//! caller may not see answers exactly like one that does not exist (404). Record
//! access is decided and audited, so the audit entry names the account that asked.

use crate::access::Viewer;
use crate::http::caller::Caller;
use crate::http::error::ApiError;
use crate::http::openapi as doc;
use crate::http::v1::parse;
use crate::reporter::now_ms;
use crate::state::AppState;
use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use medledger_core::tx::TX_VERSION;
use medledger_core::{
    AccountId, AgreementId, GrantId, MessageId, OrgId, Payload, Purpose, RecordId, TxBody,
};
use medledger_ledger::contracts::query::{self, AuditFilter};
use medledger_ledger::{StateView, contracts};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(prepare))
        .routes(routes!(org))
        .routes(routes!(record))
        .routes(routes!(access))
        .routes(routes!(patient_records))
        .routes(routes!(patient_grants))
        .routes(routes!(patient_break_glass))
        .routes(routes!(patient_agreements))
        .routes(routes!(inbox))
        .routes(routes!(grant))
        .routes(routes!(message))
        .routes(routes!(agreement))
        .routes(routes!(audit))
        .routes(routes!(decision))
        .routes(routes!(totals))
        .routes(routes!(due))
}

/// An allowed, audited access: the decision and the record's registry entry.
#[derive(Serialize, ToSchema)]
pub struct Access {
    pub decision: DecisionView,
    pub record: query::RecordView,
}

/// A page of a patient's record ids.
#[derive(Serialize, ToSchema)]
pub struct RecordList {
    pub records: Vec<RecordId>,
}

#[derive(Serialize, ToSchema)]
pub struct GrantList {
    pub grants: Vec<query::GrantView>,
}

#[derive(Serialize, ToSchema)]
pub struct BreakGlassList {
    pub break_glass: Vec<query::BreakGlassView>,
}

#[derive(Serialize, ToSchema)]
pub struct AgreementList {
    pub agreements: Vec<query::AgreementView>,
}

#[derive(Serialize, ToSchema)]
pub struct Inbox {
    pub messages: Vec<query::MessageView>,
}

/// A page of the audit trail, oldest first.
#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    pub entries: Vec<contracts::state::AuditEntry>,
}

/// Runs a query for an identified caller over one consistent read of the committed
/// state, off the async threads; anonymous callers get 401 before anything is read.
pub(crate) async fn view<T: Send + 'static>(
    s: &AppState,
    caller: &Caller,
    f: impl FnOnce(&StateView, &Viewer) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    caller.account()?;
    let ledger = s.ledger.clone();
    let caller = caller.clone();
    tokio::task::spawn_blocking(move || {
        let st = ledger.state()?;
        let v = caller.viewer(&st)?;
        f(&st, &v)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
}

/// `Some(x)` only if the viewer may see it; otherwise the same 404 as a missing one.
fn visible<T>(
    x: Option<T>,
    sees: impl FnOnce(&T) -> bool,
    what: &'static str,
) -> Result<T, ApiError> {
    x.filter(sees).ok_or(ApiError::NotFound(what))
}

#[derive(Deserialize, ToSchema)]
pub struct PrepareRequest {
    /// did:key of the signing account.
    #[schema(value_type = AccountId)]
    pub signer: String,
    /// Defaults to the account's next nonce.
    pub nonce: Option<u64>,
    pub payload: Payload,
}

/// Builds the canonical body of any transaction kind so that a client holding its
/// own key only has to sign `hash` and append the 64-byte signature to `body`.
#[utoipa::path(post, path = "/v1/tx/prepare", tag = "contracts",
    request_body = PrepareRequest,
    responses(
        (status = 200, description = "The body to sign and its hash", body = Prepared),
        doc::JsonBody,
    ))]
async fn prepare(
    State(s): State<AppState>,
    body: Result<Json<PrepareRequest>, JsonRejection>,
) -> Result<Json<Prepared>, ApiError> {
    let Json(req) = body?;
    let signer: AccountId = parse(&req.signer, "signer (did:key)")?;
    let nonce = match req.nonce {
        Some(n) => n,
        None => s.ledger.account(&signer)?.map(|a| a.nonce).unwrap_or(0) + 1,
    };
    let body = TxBody {
        version: TX_VERSION,
        chain_id: s.ledger.genesis().chain_id.clone(),
        signer,
        nonce,
        payload: req.payload,
    };
    let hash = body.hash();
    let bytes = borsh::to_vec(&body).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(Prepared {
        kind: body.payload.kind(),
        nonce,
        hash,
        body: B64.encode(bytes),
        how_to_submit: "sign the 32 bytes of `hash` with Ed25519; POST /v1/tx {\"tx\": base64(body || signature)}",
    }))
}

/// A transaction body ready to sign.
#[derive(Serialize, ToSchema)]
pub struct Prepared {
    /// The transaction kind.
    pub kind: &'static str,
    pub nonce: u64,
    /// What to sign.
    pub hash: medledger_core::TxHash,
    /// base64 of the borsh `TxBody`.
    pub body: String,
    pub how_to_submit: &'static str,
}

/// An organisation and its members (its admins and overseers only).
#[utoipa::path(get, path = "/v1/orgs/{org}", tag = "contracts",
    params(("org" = OrgId, Path, description = "organisation")),
    responses(
        (status = 200, description = "The organisation and its members (its admins and overseers only)", body = query::OrgView),
        doc::Lookup,
    ),
    security(("medledgerSignature" = []), ("medledgerSession" = []), ("apiToken" = [])))]
async fn org(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<query::OrgView>, ApiError> {
    let id: OrgId = parse(&id, "organisation id")?;
    // Membership (patients included) is for the organisation's admins and overseers.
    let o = view(&s, &caller, move |st, v| {
        let o = query::org(st, &id)?;
        visible(o, |_| v.oversees() || v.administers(&id), "organisation")
    })
    .await?;
    Ok(Json(o))
}

/// A record's registry entry and version history (no content).
#[utoipa::path(get, path = "/v1/records/{id}", tag = "contracts",
    params(("id" = RecordId, Path, description = "record id")),
    responses(
        (status = 200, description = "Record registry entry with its version history (no content)", body = query::RecordView),
        doc::Lookup,
    ),
    security(("medledgerSignature" = []), ("medledgerSession" = []), ("apiToken" = [])))]
async fn record(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<query::RecordView>, ApiError> {
    let id: RecordId = parse(&id, "record id")?;
    let at = now_ms();
    let r = view(&s, &caller, move |st, v| {
        let sees = v.sees_record(st, &id, at)?;
        visible(query::record(st, &id)?, |_| sees, "record")
    })
    .await?;
    Ok(Json(r))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// Continue after this record id.
    #[param(value_type = Option<RecordId>)]
    pub after: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

const MAX_PAGE: usize = 1000;

fn limit(l: Option<usize>) -> Result<usize, ApiError> {
    match l.unwrap_or(100) {
        0 => Err(ApiError::BadRequest("limit must be at least 1".into())),
        n if n > MAX_PAGE => Err(ApiError::BadRequest(format!("limit is at most {MAX_PAGE}"))),
        n => Ok(n),
    }
}

/// A patient's records: all of them for the patient and overseers; for anyone else
/// only those they may read now (others are simply not there).
#[utoipa::path(get, path = "/v1/patients/{did}/records", tag = "contracts",
    params(("did" = AccountId, Path, description = "patient"), Page),
    responses(
        (status = 200, description = "{\"records\": [record id]}: those the caller may read now", body = RecordList),
        doc::Lookup,
    ),
    security(("medledgerSignature" = []), ("medledgerSession" = []), ("apiToken" = [])))]
async fn patient_records(
    State(s): State<AppState>,
    caller: Caller,
    Path(did): Path<String>,
    q: Result<Query<Page>, QueryRejection>,
) -> Result<Json<RecordList>, ApiError> {
    let Query(page) = q?;
    let patient: AccountId = parse(&did, "patient id (did:key)")?;
    let after: Option<RecordId> = page
        .after
        .as_deref()
        .map(|a| parse(a, "after"))
        .transpose()?;
    let n = limit(page.limit)?;
    let at = now_ms();
    let ids = view(&s, &caller, move |st, v| {
        if v.is(&patient) || v.oversees() {
            return Ok(query::patient_records(st, &patient, after.as_ref(), n)?);
        }
        let mut out = Vec::new();
        for r in query::patient_records(st, &patient, after.as_ref(), usize::MAX)? {
            if out.len() >= n {
                break;
            }
            if v.sees_record(st, &r, at)? {
                out.push(r);
            }
        }
        Ok(out)
    })
    .await?;
    Ok(Json(RecordList { records: ids }))
}

/// A patient's consent grants that the caller may see.
#[utoipa::path(get, path = "/v1/patients/{did}/grants", tag = "contracts",
    params(("did" = AccountId, Path, description = "patient")),
    responses(
        (status = 200, description = "{\"grants\": [...]}: those the caller may see", body = GrantList),
        doc::Lookup,
    ),
    security(("medledgerSignature" = []), ("medledgerSession" = []), ("apiToken" = [])))]
async fn patient_grants(
    State(s): State<AppState>,
    caller: Caller,
    Path(did): Path<String>,
) -> Result<Json<GrantList>, ApiError> {
    let patient: AccountId = parse(&did, "patient id (did:key)")?;
    let grants = view(&s, &caller, move |st, v| {
        let mut g = query::grants(st, &patient)?;
        g.retain(|g| v.sees_grant(&g.state));
        Ok(g)
    })
    .await?;
    Ok(Json(GrantList { grants }))
}

/// A patient's break-glass accesses that the caller may see.
#[utoipa::path(get, path = "/v1/patients/{did}/break-glass", tag = "contracts",
    params(("did" = AccountId, Path, description = "patient")),
    responses(
        (status = 200, description = "{\"break_glass\": [...]}: for the patient, overseers and the doctor who opened it", body = BreakGlassList),
        doc::Lookup,
    ),
    security(("medledgerSignature" = []), ("medledgerSession" = []), ("apiToken" = [])))]
async fn patient_break_glass(
    State(s): State<AppState>,
    caller: Caller,
    Path(did): Path<String>,
) -> Result<Json<BreakGlassList>, ApiError> {
    let patient: AccountId = parse(&did, "patient id (did:key)")?;
    let list = view(&s, &caller, move |st, v| {
        let mut b = query::break_glasses(st, &patient)?;
        b.retain(|b| v.is(&patient) || v.oversees() || v.is(&b.state.doctor));
        Ok(b)
    })
    .await?;
    Ok(Json(BreakGlassList { break_glass: list }))
}

/// A patient's paid access agreements that the caller may see.
#[utoipa::path(get, path = "/v1/patients/{did}/agreements", tag = "contracts",
    params(("did" = AccountId, Path, description = "patient")),
    responses(
        (status = 200, description = "{\"agreements\": [...]}: for the patient, overseers and the proposer", body = AgreementList),
        doc::Lookup,
    ),
    security(("medledgerSignature" = []), ("medledgerSession" = []), ("apiToken" = [])))]
async fn patient_agreements(
    State(s): State<AppState>,
    caller: Caller,
    Path(did): Path<String>,
) -> Result<Json<AgreementList>, ApiError> {
    let patient: AccountId = parse(&did, "patient id (did:key)")?;
    let list = view(&s, &caller, move |st, v| {
        let mut a = query::agreements(st, &patient)?;
        a.retain(|a| v.is(&patient) || v.oversees() || v.is(&a.state.proposer));
        Ok(a)
    })
    .await?;
    Ok(Json(AgreementList { agreements: list }))
}

/// An inbox is its owner's alone.
#[utoipa::path(get, path = "/v1/accounts/{did}/inbox", tag = "contracts",
    params(("did" = AccountId, Path, description = "account")),
    responses(
        (status = 200, description = "{\"messages\": [...]}: empty for anyone but the owner", body = Inbox),
        doc::Lookup,
    ),
    security(("medledgerSignature" = []), ("medledgerSession" = []), ("apiToken" = [])))]
async fn inbox(
    State(s): State<AppState>,
    caller: Caller,
    Path(did): Path<String>,
) -> Result<Json<Inbox>, ApiError> {
    let to: AccountId = parse(&did, "account id (did:key)")?;
    let list = view(&s, &caller, move |st, v| {
        Ok(if v.is(&to) {
            query::inbox(st, &to)?
        } else {
            Vec::new()
        })
    })
    .await?;
    Ok(Json(Inbox { messages: list }))
}

/// One consent grant.
#[utoipa::path(get, path = "/v1/grants/{id}", tag = "contracts",
    params(("id" = GrantId, Path, description = "grant id")),
    responses(
        (status = 200, description = "A consent grant", body = contracts::state::GrantState),
        doc::Lookup,
    ),
    security(("medledgerSignature" = []), ("medledgerSession" = []), ("apiToken" = [])))]
async fn grant(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<contracts::state::GrantState>, ApiError> {
    let id: GrantId = parse(&id, "grant id")?;
    let g = view(&s, &caller, move |st, v| {
        visible(query::grant(st, &id)?, |g| v.sees_grant(g), "grant")
    })
    .await?;
    Ok(Json(g))
}

/// One message (sender, recipient and overseers).
#[utoipa::path(get, path = "/v1/messages/{id}", tag = "contracts",
    params(("id" = MessageId, Path, description = "message id")),
    responses(
        (status = 200, description = "A message (sender, recipient, overseers)", body = contracts::state::MessageState),
        doc::Lookup,
    ),
    security(("medledgerSignature" = []), ("medledgerSession" = []), ("apiToken" = [])))]
async fn message(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<contracts::state::MessageState>, ApiError> {
    let id: MessageId = parse(&id, "message id")?;
    let m = view(&s, &caller, move |st, v| {
        visible(
            query::message(st, &id)?,
            |m| v.is(&m.from) || v.is(&m.to) || v.oversees(),
            "message",
        )
    })
    .await?;
    Ok(Json(m))
}

/// One paid access agreement.
#[utoipa::path(get, path = "/v1/agreements/{id}", tag = "contracts",
    params(("id" = AgreementId, Path, description = "agreement id")),
    responses(
        (status = 200, description = "A paid access agreement (patient, proposer, overseers)", body = contracts::state::AgreementState),
        doc::Lookup,
    ),
    security(("medledgerSignature" = []), ("medledgerSession" = []), ("apiToken" = [])))]
async fn agreement(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<contracts::state::AgreementState>, ApiError> {
    let id: AgreementId = parse(&id, "agreement id")?;
    let a = view(&s, &caller, move |st, v| {
        visible(
            query::agreement(st, &id)?,
            |a| v.is(&a.patient) || v.is(&a.proposer) || v.oversees(),
            "agreement",
        )
    })
    .await?;
    Ok(Json(a))
}

/// Exactly one of `patient`, `record`, `accessor`, or a `from`/`to` time range.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    #[param(value_type = Option<AccountId>)]
    pub patient: Option<String>,
    #[param(value_type = Option<RecordId>)]
    pub record: Option<String>,
    #[param(value_type = Option<AccountId>)]
    pub accessor: Option<String>,
    /// Milliseconds since the epoch (inclusive).
    pub from: Option<u64>,
    /// Milliseconds since the epoch (exclusive).
    pub to: Option<u64>,
    /// Continue after this entry (the `seq` of the last one of the previous page).
    pub after: Option<u64>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// The audit trail: overseers see all of it; anyone else only entries about them as
/// patient or as accessor (a filter naming someone else answers an empty trail).
#[utoipa::path(get, path = "/v1/audit", tag = "contracts",
    params(AuditQuery),
    responses(
        (status = 200, description = "{\"entries\": [...]}: overseers all; anyone else only entries naming them as patient or accessor", body = AuditPage),
        doc::Lookup,
    ),
    security(("medledgerSignature" = []), ("medledgerSession" = []), ("apiToken" = [])))]
async fn audit(
    State(s): State<AppState>,
    caller: Caller,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    let Query(q) = q?;
    let filters = [
        q.patient.is_some(),
        q.record.is_some(),
        q.accessor.is_some(),
        q.from.is_some() || q.to.is_some(),
    ];
    if filters.iter().filter(|f| **f).count() != 1 {
        return Err(ApiError::BadRequest(
            "give exactly one of patient, record, accessor, or a from/to time range".into(),
        ));
    }
    let filter = if let Some(p) = &q.patient {
        AuditFilter::Patient(parse(p, "patient id")?)
    } else if let Some(r) = &q.record {
        AuditFilter::Record(parse(r, "record id")?)
    } else if let Some(a) = &q.accessor {
        AuditFilter::Accessor(parse(a, "accessor id")?)
    } else {
        let (from_ms, to_ms) = (q.from.unwrap_or(0), q.to.unwrap_or(u64::MAX));
        if from_ms >= to_ms {
            return Err(ApiError::BadRequest("from must be before to".into()));
        }
        AuditFilter::Time { from_ms, to_ms }
    };
    let n = limit(q.limit)?;
    let after = q.after;
    let entries = view(&s, &caller, move |st, v| {
        if v.oversees() {
            return Ok(query::audit(st, &filter, after, n)?);
        }
        // Walk the chosen index but keep only the viewer's entries, page by page.
        let mut out = Vec::new();
        let mut cursor = after;
        loop {
            let page = query::audit(st, &filter, cursor, n)?;
            let Some(last) = page.last().map(|e| e.seq) else {
                break;
            };
            let full = page.len() < n;
            out.extend(page.into_iter().filter(|e| v.sees_audit(e)));
            if out.len() >= n || full {
                break;
            }
            cursor = Some(last);
        }
        out.truncate(n);
        Ok(out)
    })
    .await?;
    Ok(Json(AuditPage { entries }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DecisionQuery {
    #[param(value_type = AccountId)]
    pub account: String,
    #[param(value_type = RecordId)]
    pub record: String,
    #[param(value_type = Purpose)]
    pub purpose: String,
    /// Milliseconds since the epoch; default now.
    pub at: Option<u64>,
}

/// An access decision: the verdict, its reason code, and the rule that decided.
#[derive(Serialize, ToSchema)]
pub struct DecisionView {
    pub allowed: bool,
    pub reason: &'static str,
    pub detail: contracts::Decision,
}

impl From<contracts::Decision> for DecisionView {
    fn from(d: contracts::Decision) -> Self {
        DecisionView {
            allowed: d.allowed(),
            reason: d.code(),
            detail: d,
        }
    }
}

/// The decision oracle: a caller may ask about themself; overseers about anyone.
/// Asking about someone else answers 404, so the oracle cannot map other people's
/// access (or whether a record exists).
#[utoipa::path(get, path = "/v1/decision", tag = "contracts",
    params(DecisionQuery),
    responses(
        (status = 200, description = "{\"allowed\", \"reason\", \"detail\"}: about the caller (overseers: anyone)", body = DecisionView),
        doc::Lookup,
    ),
    security(("medledgerSignature" = []), ("medledgerSession" = []), ("apiToken" = [])))]
async fn decision(
    State(s): State<AppState>,
    caller: Caller,
    q: Result<Query<DecisionQuery>, QueryRejection>,
) -> Result<Json<DecisionView>, ApiError> {
    let Query(q) = q?;
    let account: AccountId = parse(&q.account, "account id (did:key)")?;
    let record: RecordId = parse(&q.record, "record id")?;
    let purpose: Purpose = parse(&q.purpose, "purpose")?;
    let at = q.at.unwrap_or_else(now_ms);
    let d = view(&s, &caller, move |st, v| {
        if !(v.is(&account) || v.oversees()) {
            return Err(ApiError::NotFound("decision"));
        }
        Ok(contracts::can(st, &account, &record, purpose, at)?)
    })
    .await?;
    Ok(Json(d.into()))
}

/// Overseers only; to anyone else the route looks absent.
fn overseer_only(v: &Viewer, what: &'static str) -> Result<(), ApiError> {
    if v.oversees() {
        Ok(())
    } else {
        Err(ApiError::NotFound(what))
    }
}

/// Money supply and fee totals (overseers only).
#[utoipa::path(get, path = "/v1/totals", tag = "contracts",
    responses(
        (status = 200, description = "Supply and fee totals (overseers only)", body = query::Totals),
        doc::Lookup,
    ),
    security(("medledgerSignature" = []), ("medledgerSession" = []), ("apiToken" = [])))]
async fn totals(
    State(s): State<AppState>,
    caller: Caller,
) -> Result<Json<query::Totals>, ApiError> {
    Ok(Json(
        view(&s, &caller, |st, v| {
            overseer_only(v, "totals")?;
            Ok(query::totals(st)?)
        })
        .await?,
    ))
}

/// Housekeeping that is due: expiries and held erasures (overseers only).
#[utoipa::path(get, path = "/v1/due", tag = "contracts",
    responses(
        (status = 200, description = "Due housekeeping work (overseers only)", body = query::Due),
        doc::Lookup,
    ),
    security(("medledgerSignature" = []), ("medledgerSession" = []), ("apiToken" = [])))]
async fn due(State(s): State<AppState>, caller: Caller) -> Result<Json<query::Due>, ApiError> {
    Ok(Json(
        view(&s, &caller, |st, v| {
            overseer_only(v, "due work")?;
            Ok(query::due(st, now_ms(), 100)?)
        })
        .await?,
    ))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AccessQuery {
    #[param(value_type = Purpose)]
    pub purpose: String,
}

/// The audited read path: decides, reports the access (allowed or not) for the
/// ledger's audit trail, and returns the record's registry entry only if allowed.
/// A missing record and a forbidden one answer alike.
#[utoipa::path(get, path = "/v1/records/{id}/access", tag = "contracts",
    params(("id" = RecordId, Path, description = "record id"), AccessQuery),
    responses(
        (status = 200, description = "Allowed: the decision and the registry entry; the access is on the audit trail before this answers", body = Access),
        (status = 503, response = doc::Unavailable),
        doc::Lookup,
    ),
    security(("medledgerSignature" = []), ("medledgerSession" = []), ("apiToken" = [])))]
async fn access(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<AccessQuery>, QueryRejection>,
) -> Result<Json<Access>, ApiError> {
    let accessor = caller.account()?;
    let Query(q) = q?;
    let record: RecordId = parse(&id, "record id")?;
    let purpose: Purpose = parse(&q.purpose, "purpose")?;
    let at = now_ms();
    let (d, rec) = view(&s, &caller, move |st, _| {
        Ok(query::access(st, &accessor, &record, purpose, at)?)
    })
    .await?;
    s.reporter
        .report_decision(accessor, record, purpose, at, &d)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    match rec {
        Some(record) if d.allowed() => Ok(Json(Access {
            decision: d.into(),
            record,
        })),
        // Refused and missing answer alike.
        _ => Err(ApiError::NotFound("record")),
    }
}
