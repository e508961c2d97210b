//! The contracts over JSON (`/v1`): preparing any transaction kind for a self-custody
//! signer, queries of organisations, records, consent, audit, messages, payments and
//! agreements, the access decision, and the audited record-access read path.
//!
//! Ledger queries expose what the blocks already hold (ids, CIDs, hashes, roles,
//! consent facts), never record content. Record access needs a signed request, so
//! the audit entry names the account that really asked.

use crate::api::{ApiError, AppState, parse};
use crate::reporter::now_ms;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
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

/// Runs a query over one consistent read of the committed state, off the async threads.
async fn view<T: Send + 'static>(
    s: &AppState,
    f: impl FnOnce(&StateView) -> medledger_ledger::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let ledger = s.ledger.clone();
    tokio::task::spawn_blocking(move || f(&ledger.state()?))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(ApiError::from)
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

async fn org(State(s): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id: OrgId = parse(&id, "organisation id")?;
    let o = view(&s, move |st| query::org(st, &id)).await?;
    to_json(o.ok_or(ApiError::NotFound("organisation"))?)
}

async fn record(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id: RecordId = parse(&id, "record id")?;
    let r = view(&s, move |st| query::record(st, &id)).await?;
    to_json(r.ok_or(ApiError::NotFound("record"))?)
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

async fn patient_records(
    State(s): State<AppState>,
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
    let ids = view(&s, move |st| {
        query::patient_records(st, &patient, after.as_ref(), n)
    })
    .await?;
    to_json(json!({ "records": ids }))
}

async fn patient_grants(
    State(s): State<AppState>,
    Path(did): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let patient: AccountId = parse(&did, "patient id (did:key)")?;
    to_json(json!({ "grants": view(&s, move |st| query::grants(st, &patient)).await? }))
}

async fn patient_break_glass(
    State(s): State<AppState>,
    Path(did): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let patient: AccountId = parse(&did, "patient id (did:key)")?;
    to_json(json!({ "break_glass": view(&s, move |st| query::break_glasses(st, &patient)).await? }))
}

async fn patient_agreements(
    State(s): State<AppState>,
    Path(did): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let patient: AccountId = parse(&did, "patient id (did:key)")?;
    to_json(json!({ "agreements": view(&s, move |st| query::agreements(st, &patient)).await? }))
}

async fn inbox(
    State(s): State<AppState>,
    Path(did): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let to: AccountId = parse(&did, "account id (did:key)")?;
    to_json(json!({ "messages": view(&s, move |st| query::inbox(st, &to)).await? }))
}

async fn grant(State(s): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id: GrantId = parse(&id, "grant id")?;
    let g = view(&s, move |st| query::grant(st, &id)).await?;
    to_json(g.ok_or(ApiError::NotFound("grant"))?)
}

async fn message(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id: MessageId = parse(&id, "message id")?;
    let m = view(&s, move |st| query::message(st, &id)).await?;
    to_json(m.ok_or(ApiError::NotFound("message"))?)
}

async fn agreement(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id: AgreementId = parse(&id, "agreement id")?;
    let a = view(&s, move |st| query::agreement(st, &id)).await?;
    to_json(a.ok_or(ApiError::NotFound("agreement"))?)
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

async fn audit(
    State(s): State<AppState>,
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
    let entries = view(&s, move |st| query::audit(st, &filter, after, n)).await?;
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

async fn decision(
    State(s): State<AppState>,
    q: Result<Query<DecisionQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q?;
    let account: AccountId = parse(&q.account, "account id (did:key)")?;
    let record: RecordId = parse(&q.record, "record id")?;
    let purpose: Purpose = parse(&q.purpose, "purpose")?;
    let at = q.at.unwrap_or_else(now_ms);
    let d = view(&s, move |st| {
        contracts::can(st, &account, &record, purpose, at)
    })
    .await?;
    Ok(Json(decision_json(&d)))
}

async fn totals(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    to_json(view(&s, query::totals).await?)
}

async fn due(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    to_json(view(&s, |st| query::due(st, now_ms(), 100)).await?)
}

/// Signed requests: `Authorization: Medledger-Ed25519 did=<did:key>,ts=<ms>,sig=<hex>`
/// where `sig` is the account's Ed25519 signature over
/// `medledger/request/v1\n<METHOD>\n<path?query>\n<ts>`. Valid for five minutes.
pub const REQUEST_TAG: &str = "medledger/request/v1";
const REQUEST_WINDOW_MS: u64 = 5 * 60 * 1000;

pub fn request_message(method: &str, path_and_query: &str, ts: u64) -> String {
    format!("{REQUEST_TAG}\n{method}\n{path_and_query}\n{ts}")
}

fn authenticate(
    headers: &HeaderMap,
    method: &str,
    path_and_query: &str,
) -> Result<AccountId, ApiError> {
    let unauth = |m: &str| ApiError::Unauthenticated(m.to_owned());
    let h = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            unauth("a signed request is required (Authorization: Medledger-Ed25519 ...)")
        })?;
    let params = h
        .strip_prefix("Medledger-Ed25519 ")
        .ok_or_else(|| unauth("unsupported authorization scheme"))?;
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

#[derive(Deserialize)]
pub struct AccessQuery {
    pub purpose: String,
}

/// The audited read path: decides, reports the access (allowed or not) for the
/// ledger's audit trail, and returns the record's registry entry only if allowed.
/// A missing record and a forbidden one answer alike.
async fn access(
    State(s): State<AppState>,
    Path(id): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    q: Result<Query<AccessQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("");
    let accessor = authenticate(&headers, "GET", path)?;
    let Query(q) = q?;
    let record: RecordId = parse(&id, "record id")?;
    let purpose: Purpose = parse(&q.purpose, "purpose")?;
    let at = now_ms();
    let (d, rec) = view(&s, move |st| {
        query::access(st, &accessor, &record, purpose, at)
    })
    .await?;
    s.reporter
        .report_decision(accessor, record, purpose, at, &d)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    match rec {
        Some(r) if d.allowed() => Ok(Json(json!({ "decision": decision_json(&d), "record": r })).into_response()),
        _ => Ok((
            StatusCode::FORBIDDEN,
            Json(json!({ "error": { "code": "forbidden", "message": "no access to this record for this purpose" } })),
        )
            .into_response()),
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
