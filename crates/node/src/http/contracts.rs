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
use crate::http::v1::parse;
use crate::reporter::now_ms;
use crate::state::AppState;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use medledger_core::tx::TX_VERSION;
use medledger_core::{
    AccountId, AgreementId, GrantId, MessageId, OrgId, Payload, Purpose, RecordId, TxBody,
};
use medledger_ledger::contracts::query::{self, AuditFilter};
use medledger_ledger::{StateView, contracts};
use serde::Deserialize;
use serde_json::{Value, json};

/// The OpenAPI description of `/v1`.
pub const OPENAPI: &str = include_str!("openapi.json");

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/tx/prepare", post(prepare))
        .route("/v1/orgs/{org}", get(org))
        .route("/v1/records/{id}", get(record))
        .route("/v1/records/{id}/access", get(access))
        .route("/v1/patients/{did}/records", get(patient_records))
        .route("/v1/patients/{did}/grants", get(patient_grants))
        .route("/v1/patients/{did}/break-glass", get(patient_break_glass))
        .route("/v1/patients/{did}/agreements", get(patient_agreements))
        .route("/v1/accounts/{did}/inbox", get(inbox))
        .route("/v1/grants/{id}", get(grant))
        .route("/v1/messages/{id}", get(message))
        .route("/v1/agreements/{id}", get(agreement))
        .route("/v1/audit", get(audit))
        .route("/v1/decision", get(decision))
        .route("/v1/totals", get(totals))
        .route("/v1/due", get(due))
}

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

/// Runs a query for an identified caller over one consistent read of the committed
/// state, off the async threads; anonymous callers get 401 before anything is read.
async fn view<T: Send + 'static>(
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

fn to_json<T: serde::Serialize>(v: T) -> Result<Json<Value>, ApiError> {
    serde_json::to_value(v)
        .map(Json)
        .map_err(|e| ApiError::Internal(e.to_string()))
}

#[derive(Deserialize)]
pub struct PrepareRequest {
    /// did:key of the signing account.
    pub signer: String,
    /// Defaults to the account's next nonce.
    pub nonce: Option<u64>,
    pub payload: Payload,
}

/// Builds the canonical body of any transaction kind so that a client holding its
/// own key only has to sign `hash` and append the 64-byte signature to `body`.
async fn prepare(
    State(s): State<AppState>,
    body: Result<Json<PrepareRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({
        "kind": body.payload.kind(),
        "nonce": nonce,
        "hash": hash,
        "body": B64.encode(bytes),
        "how_to_submit": "sign the 32 bytes of `hash` with Ed25519; POST /v1/tx {\"tx\": base64(body || signature)}",
    })))
}

async fn org(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id: OrgId = parse(&id, "organisation id")?;
    // Membership (patients included) is for the organisation's admins and overseers.
    let o = view(&s, &caller, move |st, v| {
        let o = query::org(st, &id)?;
        visible(o, |_| v.oversees() || v.administers(&id), "organisation")
    })
    .await?;
    to_json(o)
}

async fn record(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id: RecordId = parse(&id, "record id")?;
    let at = now_ms();
    let r = view(&s, &caller, move |st, v| {
        let sees = v.sees_record(st, &id, at)?;
        visible(query::record(st, &id)?, |_| sees, "record")
    })
    .await?;
    to_json(r)
}

#[derive(Deserialize)]
pub struct Page {
    pub after: Option<String>,
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
async fn patient_records(
    State(s): State<AppState>,
    caller: Caller,
    Path(did): Path<String>,
    q: Result<Query<Page>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
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
    to_json(json!({ "records": ids }))
}

async fn patient_grants(
    State(s): State<AppState>,
    caller: Caller,
    Path(did): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let patient: AccountId = parse(&did, "patient id (did:key)")?;
    let grants = view(&s, &caller, move |st, v| {
        let mut g = query::grants(st, &patient)?;
        g.retain(|g| v.sees_grant(&g.state));
        Ok(g)
    })
    .await?;
    to_json(json!({ "grants": grants }))
}

async fn patient_break_glass(
    State(s): State<AppState>,
    caller: Caller,
    Path(did): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let patient: AccountId = parse(&did, "patient id (did:key)")?;
    let list = view(&s, &caller, move |st, v| {
        let mut b = query::break_glasses(st, &patient)?;
        b.retain(|b| v.is(&patient) || v.oversees() || v.is(&b.state.doctor));
        Ok(b)
    })
    .await?;
    to_json(json!({ "break_glass": list }))
}

async fn patient_agreements(
    State(s): State<AppState>,
    caller: Caller,
    Path(did): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let patient: AccountId = parse(&did, "patient id (did:key)")?;
    let list = view(&s, &caller, move |st, v| {
        let mut a = query::agreements(st, &patient)?;
        a.retain(|a| v.is(&patient) || v.oversees() || v.is(&a.state.proposer));
        Ok(a)
    })
    .await?;
    to_json(json!({ "agreements": list }))
}

/// An inbox is its owner's alone.
async fn inbox(
    State(s): State<AppState>,
    caller: Caller,
    Path(did): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let to: AccountId = parse(&did, "account id (did:key)")?;
    let list = view(&s, &caller, move |st, v| {
        Ok(if v.is(&to) {
            query::inbox(st, &to)?
        } else {
            Vec::new()
        })
    })
    .await?;
    to_json(json!({ "messages": list }))
}

async fn grant(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id: GrantId = parse(&id, "grant id")?;
    let g = view(&s, &caller, move |st, v| {
        visible(query::grant(st, &id)?, |g| v.sees_grant(g), "grant")
    })
    .await?;
    to_json(g)
}

async fn message(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id: MessageId = parse(&id, "message id")?;
    let m = view(&s, &caller, move |st, v| {
        visible(
            query::message(st, &id)?,
            |m| v.is(&m.from) || v.is(&m.to) || v.oversees(),
            "message",
        )
    })
    .await?;
    to_json(m)
}

async fn agreement(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id: AgreementId = parse(&id, "agreement id")?;
    let a = view(&s, &caller, move |st, v| {
        visible(
            query::agreement(st, &id)?,
            |a| v.is(&a.patient) || v.is(&a.proposer) || v.oversees(),
            "agreement",
        )
    })
    .await?;
    to_json(a)
}

#[derive(Deserialize)]
pub struct AuditQuery {
    pub patient: Option<String>,
    pub record: Option<String>,
    pub accessor: Option<String>,
    pub from: Option<u64>,
    pub to: Option<u64>,
    pub after: Option<u64>,
    pub limit: Option<usize>,
}

/// The audit trail: overseers see all of it; anyone else only entries about them as
/// patient or as accessor (a filter naming someone else answers an empty trail).
async fn audit(
    State(s): State<AppState>,
    caller: Caller,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
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
    to_json(json!({ "entries": entries }))
}

#[derive(Deserialize)]
pub struct DecisionQuery {
    pub account: String,
    pub record: String,
    pub purpose: String,
    /// Milliseconds since the epoch; default now.
    pub at: Option<u64>,
}

fn decision_json(d: &contracts::Decision) -> Value {
    json!({ "allowed": d.allowed(), "reason": d.code(), "detail": d })
}

/// The decision oracle: a caller may ask about themself; overseers about anyone.
/// Asking about someone else answers 404, so the oracle cannot map other people's
/// access (or whether a record exists).
async fn decision(
    State(s): State<AppState>,
    caller: Caller,
    q: Result<Query<DecisionQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(decision_json(&d)))
}

/// Overseers only; to anyone else the route looks absent.
fn overseer_only(v: &Viewer, what: &'static str) -> Result<(), ApiError> {
    if v.oversees() {
        Ok(())
    } else {
        Err(ApiError::NotFound(what))
    }
}

async fn totals(State(s): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    to_json(
        view(&s, &caller, |st, v| {
            overseer_only(v, "totals")?;
            Ok(query::totals(st)?)
        })
        .await?,
    )
}

async fn due(State(s): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    to_json(
        view(&s, &caller, |st, v| {
            overseer_only(v, "due work")?;
            Ok(query::due(st, now_ms(), 100)?)
        })
        .await?,
    )
}

#[derive(Deserialize)]
pub struct AccessQuery {
    pub purpose: String,
}

/// The audited read path: decides, reports the access (allowed or not) for the
/// ledger's audit trail, and returns the record's registry entry only if allowed.
/// A missing record and a forbidden one answer alike.
async fn access(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<AccessQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
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
        Some(r) if d.allowed() => {
            Ok(Json(json!({ "decision": decision_json(&d), "record": r })).into_response())
        }
        // Refused and missing answer alike.
        _ => Err(ApiError::NotFound("record")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    /// The OpenAPI document names exactly the transaction kinds the node accepts
    /// (serde's refusal of an unknown kind lists them all).
    #[test]
    fn openapi_lists_every_transaction_kind() {
        let doc: Value = serde_json::from_str(super::OPENAPI).unwrap();
        let mut documented: Vec<String> = serde_json::from_value(
            doc["components"]["schemas"]["Payload"]["properties"]["kind"]["enum"].clone(),
        )
        .unwrap();
        let err = serde_json::from_value::<medledger_core::Payload>(json!({"kind": "zzz"}))
            .unwrap_err()
            .to_string();
        let expected = err.split("expected one of").nth(1).expect("variant list");
        let mut accepted: Vec<String> = expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        documented.sort();
        accepted.sort();
        assert!(accepted.len() > 20, "{err}");
        assert_eq!(documented, accepted);
    }
}
