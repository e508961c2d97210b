//! Documents: a clinician uploads a PDF or image for a patient, kept as a FHIR
//! DocumentReference whose attachment travels inside the resource, so it is sealed in
//! the record store, written under the ledger's rule and read (decided, audited)
//! exactly like any other record. Whoever may read the record downloads the file.
//!
//! The upload is a multipart form: the CSRF token comes first in the form, and the
//! visitor is identified with it before the file is accepted. Files are checked by
//! their first bytes, not by the name or type the browser claims.

use super::form::Fields;
use super::{PortalError, Shell, Visitor, ok, render, see_other};
use crate::http::caller::Intent;
use crate::state::AppState;
use askama::Template;
use axum::Router;
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use medledger_core::Role;
use serde_json::{Value, json};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/clinician/patients/{id}/documents",
            get(upload_page)
                .post(upload)
                .layer(axum::extract::DefaultBodyLimit::max(MAX_UPLOAD_BODY)),
        )
        .route("/clinician/records/{id}/file", get(clinician_file))
        .route("/patient/records/{id}/file", get(patient_file))
        .route("/insurer/records/{id}/file", get(insurer_file))
}

const CLINICIAN: &[Role] = &[Role::Doctor, Role::Nurse];
/// Largest document accepted.
pub const MAX_DOCUMENT: usize = 8 * 1024 * 1024;
/// The whole upload: the file plus the form's few small fields.
const MAX_UPLOAD_BODY: usize = MAX_DOCUMENT + 64 * 1024;

/// The file types accepted, by their first bytes.
const TYPES: [(&str, &[u8], &str); 3] = [
    ("application/pdf", b"%PDF-", "pdf"),
    ("image/png", b"\x89PNG\r\n\x1a\n", "png"),
    ("image/jpeg", b"\xff\xd8\xff", "jpg"),
];

/// Kinds of document: (value, label, LOINC code).
const KINDS: [(&str, &str, &str); 6] = [
    ("note", "Clinical note", "11506-3"),
    ("lab", "Laboratory report", "11502-2"),
    ("imaging", "Imaging report", "18748-4"),
    ("discharge", "Discharge summary", "18842-5"),
    ("referral", "Referral letter", "57133-1"),
    ("other", "Other document", "55107-7"),
];

#[derive(Template)]
#[template(path = "portal/upload.html")]
struct Upload {
    shell: Shell,
    id: String,
    kinds: Vec<(&'static str, &'static str)>,
    f: Fields,
}

fn page(v: &Visitor, id: &str, f: Fields) -> Upload {
    Upload {
        shell: Shell::of("Upload a document", v),
        id: id.to_owned(),
        kinds: KINDS.iter().map(|(k, l, _)| (*k, *l)).collect(),
        f,
    }
}

async fn upload_page(v: Visitor, Path(id): Path<String>) -> Result<Response, PortalError> {
    v.require(CLINICIAN)?;
    let mut f = Fields::default();
    f.set("kind", "note");
    Ok(ok(&page(&v, &id, f)))
}

/// The form's fields and the file, read from a multipart body.
struct Form {
    fields: Fields,
    file: Vec<u8>,
}

async fn read_multipart(mut m: Multipart) -> Result<Form, PortalError> {
    let bad = |_| PortalError::BadRequest("The upload could not be read; send it again.".into());
    let mut pairs = Vec::new();
    let mut file = Vec::new();
    while let Some(mut field) = m.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or_default().to_owned();
        if name == "file" {
            while let Some(chunk) = field.chunk().await.map_err(bad)? {
                if file.len() + chunk.len() > MAX_DOCUMENT {
                    return Err(PortalError::BadRequest(format!(
                        "The file is larger than {} MiB.",
                        MAX_DOCUMENT / (1024 * 1024)
                    )));
                }
                file.extend_from_slice(&chunk);
            }
        } else if pairs.len() < 16 {
            let text = field.text().await.map_err(bad)?;
            if text.len() > 4096 {
                return Err(PortalError::BadRequest("A field is too long.".into()));
            }
            pairs.push((name, text));
        }
    }
    Ok(Form {
        fields: Fields::from_pairs(pairs),
        file,
    })
}

async fn upload(
    State(s): State<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, PortalError> {
    // Not signed in: to sign-in without reading the body.
    if crate::http::caller::cookie_token(req.headers()).is_none() {
        return Err(PortalError::SignIn(req.uri().path().to_owned()));
    }
    let (parts, body) = req.into_parts();
    let m = Multipart::from_request(Request::from_parts(parts.clone(), body), &s)
        .await
        .map_err(|_| {
            PortalError::BadRequest("Send the form as the page does (multipart).".into())
        })?;
    let Form { mut fields, file } = read_multipart(m).await?;
    let csrf = fields.get("csrf").to_owned();
    let v = Visitor::identify(&s, &parts, Intent::Write(Some(&csrf)), false)?;
    v.require(CLINICIAN)?;
    let title = fields.required("title", 200);
    let kind = KINDS.iter().find(|(k, _, _)| *k == fields.get("kind"));
    if kind.is_none() {
        fields.fail("kind", "Choose a kind of document.");
    }
    let ctype = TYPES
        .iter()
        .find(|(_, magic, _)| file.starts_with(magic))
        .map(|(t, _, _)| *t);
    if file.is_empty() {
        fields.fail("file", "Choose a file.");
    } else if ctype.is_none() {
        fields.fail("file", "Upload a PDF, PNG or JPEG file.");
    }
    if let (true, Some((_, label, loinc)), Some(ctype)) = (fields.is_ok(), kind, ctype) {
        let doc = json!({
            "resourceType": "DocumentReference",
            "status": "current",
            "type": {"coding": [{"system": "http://loinc.org", "code": loinc, "display": label}], "text": label},
            "subject": {"reference": format!("Patient/{id}")},
            "date": now_rfc3339(),
            "description": title,
            "content": [{"attachment": {
                "contentType": ctype,
                "data": B64.encode(&file),
                "size": file.len(),
                "title": title,
            }}],
        });
        match s
            .fhir
            .create(&v.principal(), "DocumentReference", doc)
            .await
        {
            Ok(stored) => return Ok(see_other(&format!("/clinician/records/{}", stored.id))),
            // Not allowed to write for this patient, or no such patient: the same page.
            Err(
                crate::fhir::FhirError::Ledger(_)
                | crate::fhir::FhirError::NotFound(_)
                | crate::fhir::FhirError::Forbidden(_)
                | crate::fhir::FhirError::Invalid(_),
            ) => fields.fail(
                "file",
                "The document was not stored: you may not add records for this patient.",
            ),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(render(StatusCode::BAD_REQUEST, &page(&v, &id, fields)))
}

fn now_rfc3339() -> String {
    let ms = crate::reporter::now_ms();
    let (y, m, d) = super::civil((ms / 86_400_000) as i64);
    let secs = (ms / 1000) % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

async fn clinician_file(
    State(s): State<AppState>,
    v: Visitor,
    Path(id): Path<String>,
) -> Result<Response, PortalError> {
    v.require(CLINICIAN)?;
    file(&s, &v, &id).await
}

async fn patient_file(
    State(s): State<AppState>,
    v: Visitor,
    Path(id): Path<String>,
) -> Result<Response, PortalError> {
    v.require(&[Role::Patient])?;
    file(&s, &v, &id).await
}

async fn insurer_file(
    State(s): State<AppState>,
    v: Visitor,
    Path(id): Path<String>,
) -> Result<Response, PortalError> {
    v.require(&[Role::Insurer])?;
    file(&s, &v, &id).await
}

/// Downloads a DocumentReference's file: read through the FHIR service (decided and
/// audited as the visitor's role allows), served as a download under a neutral name.
async fn file(s: &AppState, v: &Visitor, id: &str) -> Result<Response, PortalError> {
    let stored = s
        .fhir
        .read(&v.principal(), "DocumentReference", id, None)
        .await
        .map_err(|e| match e {
            crate::fhir::FhirError::NotFound(_) | crate::fhir::FhirError::Gone(_) => {
                PortalError::NotFound
            }
            e => e.into(),
        })?;
    let (ctype, bytes) = attachment(&stored.resource).ok_or(PortalError::NotFound)?;
    let ext = TYPES
        .iter()
        .find(|(t, _, _)| *t == ctype)
        .map_or("bin", |(_, _, e)| *e);
    Ok((
        [
            (header::CONTENT_TYPE, ctype.to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"document.{ext}\""),
            ),
        ],
        bytes,
    )
        .into_response())
}

/// The first attachment's type and bytes, when it is one of the accepted types and
/// its bytes say so (a resource written through the FHIR API may claim anything).
pub fn attachment(r: &Value) -> Option<(&'static str, Vec<u8>)> {
    let a = &r["content"].as_array()?.first()?["attachment"];
    let bytes = B64.decode(a["data"].as_str()?).ok()?;
    TYPES
        .iter()
        .find(|(t, magic, _)| a["contentType"] == *t && bytes.starts_with(magic))
        .map(|(t, _, _)| (*t, bytes))
}
