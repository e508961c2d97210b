//! FHIR R4 REST under `/fhir` (JSON, `application/fhir+json`): CapabilityStatement,
//! instance and type interactions, history, search, Bundles and `$everything`.
//! Callers authenticate with an API token (`Authorization: Bearer mlt_…`) or a session
//! cookie (writes then need `X-CSRF-Token`); every failure is an OperationOutcome.

use crate::auth::Principal;
use crate::fhir::{FhirError, Stored, searchset};
use crate::state::AppState;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use medledger_fhir::outcome::{Issue, IssueCode, operation_outcome};
use medledger_fhir::{FHIR_JSON, FHIR_VERSION, search, validate::R4_TYPES};
use serde_json::{Value, json};

/// Largest request body (a transaction Bundle of a long patient history with notes):
/// the node-wide limit, which axum's own 2 MB default would otherwise undercut.
pub const MAX_FHIR_BODY: usize = crate::http::MAX_BODY_BYTES;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/fhir/metadata", get(metadata))
        .route("/fhir", axum::routing::post(bundle))
        // Common FHIR clients post transaction and batch Bundles to the base URL with
        // a trailing slash.
        .route("/fhir/", axum::routing::post(bundle))
        .route("/fhir/{rtype}", get(search_type).post(create))
        .route("/fhir/{rtype}/_search", axum::routing::post(search_post))
        .route("/fhir/{rtype}/{id}", get(read).put(update).delete(delete))
        .route("/fhir/{rtype}/{id}/{op}", get(instance_op))
        .route("/fhir/{rtype}/{id}/_history/{vid}", get(vread))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FHIR_BODY))
}

/// Any other path under `/fhir` (the node's fallback sends them here): an
/// OperationOutcome, never an empty body.
pub fn unrouted(method: &axum::http::Method) -> Response {
    let (status, msg) = if method == axum::http::Method::GET || method == axum::http::Method::HEAD {
        (
            StatusCode::NOT_FOUND,
            "no such FHIR endpoint; see /fhir/metadata",
        )
    } else {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "this FHIR endpoint does not support that method; see /fhir/metadata",
        )
    };
    let code = if status == StatusCode::NOT_FOUND {
        IssueCode::NotFound
    } else {
        IssueCode::NotSupported
    };
    fhir_json(status, &operation_outcome(&[Issue::new(code, msg)]))
}

impl IntoResponse for FhirError {
    fn into_response(self) -> Response {
        let (status, body) = self.outcome();
        let mut r = fhir_json(status, &body);
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

fn fhir_json(status: StatusCode, v: &Value) -> Response {
    let mut r = (status, serde_json::to_vec(v).unwrap_or_default()).into_response();
    if let Ok(ct) = HeaderValue::from_str(&format!("{FHIR_JSON}; charset=utf-8")) {
        r.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    r
}

/// The caller, from the one extractor every surface uses ([`crate::caller`]): FHIR
/// needs a signed-in person (API token, or session cookie with its CSRF token on
/// anything but GET), because the node signs their writes and opens envelopes for
/// them. An extractor, so it runs before any body is read: an unauthenticated upload
/// is refused without buffering it.
pub struct Who(pub Principal);

impl axum::extract::FromRequestParts<AppState> for Who {
    type Rejection = FhirError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        s: &AppState,
    ) -> Result<Self, FhirError> {
        use crate::http::error::ApiError;
        match crate::http::caller::identify(s, &parts.headers, parts.method.as_str(), "") {
            Ok(crate::http::caller::Caller::Person(p)) => Ok(Who(p)),
            Ok(_) => Err(FhirError::Unauthenticated),
            Err(ApiError::Forbidden(m)) => Err(FhirError::Forbidden(m)),
            // A missing CSRF token or second factor: identified, but refused as made.
            Err(ApiError::Refused {
                status: axum::http::StatusCode::FORBIDDEN,
                message,
                ..
            }) => Err(FhirError::Forbidden(message)),
            Err(ApiError::Internal(m)) => Err(FhirError::Internal(m)),
            Err(_) => Err(FhirError::Unauthenticated),
        }
    }
}

fn base(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".:-[]".contains(&b))
        })
        .unwrap_or("localhost");
    format!("https://{host}/fhir")
}

/// A body that could not be read: over the limit (413), or cut off (400).
fn too_large_or_invalid(e: BytesRejection) -> FhirError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        FhirError::TooLarge(format!(
            "the request body is over {} bytes",
            crate::http::MAX_BODY_BYTES
        ))
    } else {
        FhirError::invalid(IssueCode::Invalid, e.body_text())
    }
}

fn body_json(headers: &HeaderMap, body: &Bytes) -> Result<Value, FhirError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !matches!(
        mime,
        "application/fhir+json" | "application/json" | "application/json+fhir"
    ) {
        return Err(FhirError::invalid(
            IssueCode::NotSupported,
            "send JSON: Content-Type application/fhir+json",
        ));
    }
    if body.len() > MAX_FHIR_BODY {
        return Err(FhirError::invalid(
            IssueCode::TooLong,
            "request body too large",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        FhirError::invalid(
            IssueCode::Structure,
            format!("malformed JSON at line {} column {}", e.line(), e.column()),
        )
    })
}

fn resource_response(status: StatusCode, s: &Stored) -> Response {
    versioned(status, &s.resource, &s.etag(), &s.location())
}

/// A resource with its version headers: `ETag`, `Content-Location`, and `Location`
/// on a create.
fn versioned(status: StatusCode, body: &Value, etag: &str, location: &str) -> Response {
    let mut r = fhir_json(status, body);
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(location) {
        h.insert(header::CONTENT_LOCATION, v.clone());
        if status == StatusCode::CREATED {
            h.insert(header::LOCATION, v);
        }
    }
    r
}

fn pairs(q: Option<String>) -> Result<Vec<(String, String)>, FhirError> {
    query_pairs(q.as_deref().unwrap_or_default())
}

/// `application/x-www-form-urlencoded` pairs; a malformed escape is an error rather
/// than passed through, so a search never runs on a value the client did not mean.
fn query_pairs(q: &str) -> Result<Vec<(String, String)>, FhirError> {
    let mut out = Vec::new();
    for part in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let dec = |s: &str| {
            let s = s.replace('+', " ");
            percent(&s)
                .ok_or_else(|| FhirError::invalid(IssueCode::Invalid, "malformed query string"))
        };
        out.push((dec(k)?, dec(v)?));
    }
    Ok(out)
}

fn percent(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

async fn metadata() -> Response {
    fhir_json(StatusCode::OK, &capability_statement())
}

/// What this server really supports, generated from the same tables the handlers use.
pub fn capability_statement() -> Value {
    let mut resources = Vec::new();
    for t in R4_TYPES {
        if matches!(
            *t,
            "Bundle" | "OperationOutcome" | "CapabilityStatement" | "Parameters"
        ) {
            continue;
        }
        // The ledger's own views: what their mapping supports, nothing more.
        let view = |codes: &[&str], params: &[(&str, &str)], doc: &str| {
            json!({
                "type": t,
                "documentation": doc,
                "interaction": codes.iter().map(|c| json!({"code": c})).collect::<Vec<_>>(),
                "searchParam": params.iter().map(|(n, k)| json!({"name": n, "type": k})).collect::<Vec<_>>(),
            })
        };
        match *t {
            "Consent" => {
                resources.push(view(
                    &["read", "create", "update", "search-type"],
                    &[("patient", "reference")],
                    "A Consent is a ledger grant: created by the patient (provision: one actor identified in urn:medledger:org or urn:medledger:account, one v3-ActReason purpose, period end required, class or data for scope); update to status inactive revokes; reads show the ledger's current state.",
                ));
                continue;
            }
            "AuditEvent" => {
                resources.push(view(
                    &["read", "search-type"],
                    &[("patient", "reference"), ("entity", "reference"), ("date", "date")],
                    "Read-only: the ledger's audit trail, one AuditEvent per entry (id = sequence number). Visible to the entry's patient and accessor, and to auditors.",
                ));
                continue;
            }
            _ => {}
        }
        let interactions: Vec<Value> = [
            "read",
            "vread",
            "create",
            "update",
            "delete",
            "history-instance",
            "history-type",
        ]
        .iter()
        .map(|c| json!({ "code": c }))
        .collect();
        let mut r = json!({
            "type": t,
            "interaction": interactions,
            "versioning": "versioned",
            "readHistory": true,
            "updateCreate": false,
            "conditionalCreate": false,
            "conditionalUpdate": false,
            "conditionalDelete": "not-supported",
        });
        if let Some(params) = search::params(t) {
            r["interaction"]
                .as_array_mut()
                .expect("array")
                .push(json!({"code": "search-type"}));
            let mut sp = vec![json!({"name": "_id", "type": "token"})];
            sp.extend(params.iter().map(|p| {
                json!({"name": p.name, "type": match p.kind {
                    search::Kind::Token => "token",
                    search::Kind::Str => "string",
                    search::Kind::Date => "date",
                    search::Kind::Patient => "reference",
                }})
            }));
            r["searchParam"] = json!(sp);
        }
        if *t == "Provenance" {
            r["documentation"] = json!(
                "Provenance sent by clients is stored like any resource. Provenance/tx-… are read-only views of the ledger's authorship (signer, block time, signature) of the versions one transaction wrote; search them with target=Type/{id}."
            );
            r["interaction"]
                .as_array_mut()
                .expect("array")
                .push(json!({"code": "search-type"}));
            r["searchParam"] = json!([{"name": "target", "type": "reference"}]);
        }
        if *t == "Patient" {
            r["operation"] = json!([{"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"}]);
        }
        resources.push(r);
    }
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-25",
        "publisher": "medledger",
        "kind": "instance",
        "software": {"name": "medledger", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "medledger node: FHIR resources as encrypted, consent-checked, audited ledger records"},
        "fhirVersion": FHIR_VERSION,
        "format": ["json"],
        "rest": [{
            "mode": "server",
            "documentation": "Ids, versionId and lastUpdated come from the ledger. Reads are decided by consent and audited. Search values are indexed as keyed tokens; string search matches the start of a name part (up to 24 characters), case-insensitively. Paging with _count and _offset.",
            "security": {"cors": false, "description": "Authorization: Bearer <API token>, or a session cookie with X-CSRF-Token on writes"},
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
        }],
    })
}

type Answer = Result<Response, FhirError>;

fn ok_json(v: &Value) -> Answer {
    Ok(fhir_json(StatusCode::OK, v))
}

async fn create(
    State(s): State<AppState>,
    Who(who): Who,
    Path(rtype): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let body = body.map_err(too_large_or_invalid)?;
    let v = body_json(&headers, &body)?;
    if rtype == "Consent" {
        let c = s.fhir.create_consent(&who, v).await?;
        return Ok(view_response(StatusCode::CREATED, &base(&headers), &c));
    }
    let st = s.fhir.create(&who, &rtype, v).await?;
    Ok(resource_response(StatusCode::CREATED, &st))
}

/// A resource rendered from the ledger (Consent, AuditEvent, Provenance), with the
/// headers a stored one gets.
fn view_response(status: StatusCode, base: &str, v: &Value) -> Response {
    let version = v["meta"]["versionId"].as_str().unwrap_or("1");
    let location = format!(
        "{base}/{}/{}/_history/{version}",
        v["resourceType"].as_str().unwrap_or_default(),
        v["id"].as_str().unwrap_or_default()
    );
    versioned(status, v, &format!("W/\"{version}\""), &location)
}

async fn read(
    State(s): State<AppState>,
    Who(who): Who,
    Path((rtype, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Answer {
    if id == "_history" {
        let count = pairs(q)
            .ok()
            .and_then(|p| p.into_iter().find(|(k, _)| k == "_count"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(search::DEFAULT_COUNT);
        return ok_json(
            &s.fhir
                .type_history(&who, &rtype, count, &base(&headers))
                .await?,
        );
    }
    let b = base(&headers);
    match rtype.as_str() {
        "Consent" => {
            return Ok(view_response(
                StatusCode::OK,
                &b,
                &s.fhir.read_consent(&who, &id).await?,
            ));
        }
        "AuditEvent" => {
            return Ok(view_response(
                StatusCode::OK,
                &b,
                &s.fhir.read_audit_event(&who, &id).await?,
            ));
        }
        "Provenance" if id.starts_with("tx-") => {
            return Ok(view_response(
                StatusCode::OK,
                &b,
                &s.fhir.read_provenance(&who, &id).await?,
            ));
        }
        _ => {}
    }
    let st = s.fhir.read(&who, &rtype, &id, None).await?;
    Ok(resource_response(StatusCode::OK, &st))
}

async fn vread(
    State(s): State<AppState>,
    Who(who): Who,
    Path((rtype, id, vid)): Path<(String, String, String)>,
) -> Answer {
    let v = vid
        .parse::<u32>()
        .map_err(|_| FhirError::NotFound("no such version".into()))?;
    let st = s.fhir.read(&who, &rtype, &id, Some(v)).await?;
    Ok(resource_response(StatusCode::OK, &st))
}

fn if_match(headers: &HeaderMap) -> Result<Option<u32>, FhirError> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .map(|s| s.trim().trim_start_matches("W/").trim_matches('"'))
        .and_then(|s| s.parse().ok())
        .map(Some)
        .ok_or_else(|| FhirError::invalid(IssueCode::Invalid, "If-Match must be W/\"<versionId>\""))
}

async fn update(
    State(s): State<AppState>,
    Who(who): Who,
    Path((rtype, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let body = body.map_err(too_large_or_invalid)?;
    let v = body_json(&headers, &body)?;
    if rtype == "Consent" {
        let c = s.fhir.update_consent(&who, &id, v).await?;
        return Ok(view_response(StatusCode::OK, &base(&headers), &c));
    }
    let st = s
        .fhir
        .update(&who, &rtype, &id, v, if_match(&headers)?)
        .await?;
    Ok(resource_response(StatusCode::OK, &st))
}

async fn delete(
    State(s): State<AppState>,
    Who(who): Who,
    Path((rtype, id)): Path<(String, String)>,
) -> Answer {
    s.fhir.delete(&who, &rtype, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn search_type(
    State(s): State<AppState>,
    Who(who): Who,
    Path(rtype): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Answer {
    if rtype == "_history" {
        return Err(FhirError::NotSupported(
            "system history is not supported".into(),
        ));
    }
    search_any(&s, &who, &rtype, &pairs(q)?, &base(&headers)).await
}

/// Search, for stored types and for the ledger's own views.
async fn search_any(
    s: &AppState,
    who: &Principal,
    rtype: &str,
    pairs: &[(String, String)],
    base: &str,
) -> Answer {
    let value = |k: &str| pairs.iter().find(|(p, _)| p == k).map(|(_, v)| v.as_str());
    match rtype {
        "Consent" => {
            let found = s.fhir.search_consents(who, pairs).await?;
            ok_json(&searchset(base, rtype, pairs, found, None))
        }
        "AuditEvent" => ok_json(&s.fhir.search_audit_events(who, pairs, base).await?),
        "Provenance" if value("target").is_some() => {
            if pairs.len() > 1 {
                return Err(FhirError::invalid(
                    IssueCode::NotSupported,
                    "Provenance?target= takes no other parameters",
                ));
            }
            let found = s
                .fhir
                .search_provenance(who, value("target").unwrap_or_default())
                .await?;
            ok_json(&searchset(base, rtype, pairs, found, None))
        }
        _ => ok_json(&s.fhir.search(who, rtype, pairs, base).await?),
    }
}

async fn search_post(
    State(s): State<AppState>,
    Who(who): Who,
    Path(rtype): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let body = body.map_err(too_large_or_invalid)?;
    let form = std::str::from_utf8(&body)
        .map_err(|_| FhirError::invalid(IssueCode::Invalid, "form body is not UTF-8"))?;
    search_any(&s, &who, &rtype, &query_pairs(form)?, &base(&headers)).await
}

async fn instance_op(
    State(s): State<AppState>,
    Who(who): Who,
    Path((rtype, id, op)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Answer {
    let b = base(&headers);
    match (rtype.as_str(), op.as_str()) {
        (t, "_history") => ok_json(&s.fhir.history(&who, t, &id, &b).await?),
        ("Patient", "$everything") => ok_json(&s.fhir.everything(&who, &id, &b).await?),
        _ => Err(FhirError::NotFound(format!("unknown operation {op}"))),
    }
}

async fn bundle(
    State(s): State<AppState>,
    Who(who): Who,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let body = body.map_err(too_large_or_invalid)?;
    let v = body_json(&headers, &body)?;
    ok_json(&s.fhir.bundle(&who, v).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode() {
        let p = query_pairs("code=http%3A%2F%2Floinc.org%7C8302-2&name=a+b&_count=2").unwrap();
        assert_eq!(p[0].1, "http://loinc.org|8302-2");
        assert_eq!(p[1].1, "a b");
        assert!(query_pairs("a=%zz").is_err());
    }

    #[test]
    fn capability_statement_lists_search_where_supported() {
        let c = capability_statement();
        let res = c["rest"][0]["resource"].as_array().unwrap();
        let obs = res.iter().find(|r| r["type"] == "Observation").unwrap();
        assert!(
            obs["searchParam"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "code")
        );
        let claim = res.iter().find(|r| r["type"] == "Claim").unwrap();
        assert!(claim.get("searchParam").is_none());
        // The audit trail is a read-only view.
        let audit = res.iter().find(|r| r["type"] == "AuditEvent").unwrap();
        let codes: Vec<&str> = audit["interaction"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["code"].as_str().unwrap())
            .collect();
        assert_eq!(codes, ["read", "search-type"]);
    }
}
