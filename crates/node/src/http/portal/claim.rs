//! Claiming an account a clinic created. A patient registered at the desk has an
//! account whose keys the node keeps in custody; a clinician who may see them (or an
//! admin of the organisation) sends them a single-use link, and through it the person
//! sets their name, e-mail and password and takes their keys: from then on they sign
//! in, see and control their record like any patient, and the node's copy is gone.

use super::account::{Registered, capitalise};
use super::form::{Fields, Posted, Public, pre_token, with_pre};
use super::{PortalError, Shell, ok, render, see_other};
use crate::auth::AuthError;
use crate::http::caller::Caller;
use crate::http::contracts::view;
use crate::http::limits::PerClient;
use crate::reporter::now_ms;
use crate::state::AppState;
use askama::Template;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use medledger_core::{RecordId, Role};
use medledger_ledger::contracts::query;
use serde::Deserialize;
use std::sync::Arc;

pub fn routes(per_client: Arc<PerClient>) -> Router<AppState> {
    Router::new()
        .route(
            "/claim",
            get(claim_page)
                .post(claim)
                .route_layer(axum::middleware::from_fn_with_state(
                    per_client,
                    crate::http::limits::expensive,
                )),
        )
        .route("/clinician/patients/{id}/claim", post(invite))
}

const STAFF: &[Role] = &[Role::Doctor, Role::Nurse];

/// Sends the claim link for the patient whose Patient record is `id`. Only for a
/// patient the visitor may see, whose keys the node still holds; anything else is
/// refused like a missing patient.
async fn invite(
    State(s): State<AppState>,
    Path(id): Path<String>,
    p: Posted,
) -> Result<Response, PortalError> {
    let Posted {
        visitor: v,
        mut fields,
    } = p;
    v.require(STAFF)?;
    let record: RecordId = id.parse().map_err(|_| PortalError::NotFound)?;
    let at = now_ms();
    let patient = view(&s, &Caller::Person(v.principal()), move |st, viewer| {
        let Some(r) = query::record(st, &record)? else {
            return Ok(None);
        };
        let sees = viewer.sees_record(st, &record, at)?;
        Ok((sees && r.state.category.as_str() == "Patient").then_some(r.state.patient))
    })
    .await?
    .ok_or(PortalError::NotFound)?;
    if !s.fhir.in_custody(&patient)? {
        return Err(PortalError::NotFound);
    }
    let email = fields.required("claim_email", 254);
    if fields.is_ok() {
        match s.auth.invite_claim(&v.session, &patient, &email).await {
            Ok(()) => return Ok(see_other(&format!("/clinician/patients/{id}?claim=sent"))),
            Err(AuthError::Invalid(_)) => {
                fields.fail("claim_email", "This is not an e-mail address.")
            }
            Err(AuthError::Forbidden(_)) => return Err(PortalError::NotFound),
            Err(e) => return Err(e.into()),
        }
    }
    Err(PortalError::BadRequest(
        fields
            .err("claim_email")
            .unwrap_or("Give the patient's e-mail address.")
            .to_owned(),
    ))
}

#[derive(Template)]
#[template(path = "portal/claim.html")]
struct Claim {
    shell: Shell,
    f: Fields,
    pre: String,
}

#[derive(Deserialize)]
struct Token {
    token: Option<String>,
}

async fn claim_page(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<Token>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PortalError> {
    let (pre, new) = pre_token(&headers)?;
    let token = q.ok().and_then(|Query(q)| q.token).unwrap_or_default();
    let mut f = Fields::default();
    f.set("token", token.as_str());
    if s.auth.claim_account(&token).is_err() {
        f.fail(
            "form",
            "This link is invalid, has expired or was already used. Ask your care team for a new one.",
        );
    }
    let page = Claim {
        shell: Shell::public("Claim your health record"),
        f,
        pre: pre.clone(),
    };
    Ok(with_pre(render(page.f.status(), &page), &pre, new))
}

async fn claim(State(s): State<AppState>, Public { mut fields }: Public) -> Response {
    let token = fields.get("token").to_owned();
    let name = fields.required("name", 200);
    let email = fields.required("email", 254);
    let password = fields.get("password").to_owned();
    if password.is_empty() {
        fields.fail("password", "Fill this in.");
    } else if password != fields.get("password2") {
        fields.fail("password2", "The two passwords differ.");
    }
    if fields.is_ok() {
        let keys = match s.auth.claim_account(&token) {
            Ok(account) => match s.fhir.custody_keys(&account) {
                Ok(k) => k.map(|k| (account, k)),
                Err(e) => return PortalError::from(e).into_response(),
            },
            Err(_) => None,
        };
        let result = match keys {
            Some((account, keys)) => s
                .auth
                .claim(&token, keys, &name, &email, &password)
                .await
                .map(|r| (account, r)),
            None => Err(AuthError::BadLink),
        };
        match result {
            Ok((account, r)) => {
                // The person holds their keys now; the node's copy goes.
                if let Err(e) = s.fhir.release_custody(&account).await {
                    tracing::error!(error = %e, "claimed account's custody copy not removed");
                }
                return ok(&Registered {
                    shell: Shell::public("Registered"),
                    codes: r.recovery_codes,
                    staff: false,
                });
            }
            Err(AuthError::WeakPassword(m)) => fields.fail("password", capitalise(&m)),
            Err(AuthError::Invalid(what)) if what.contains("email") => {
                fields.fail("email", "This is not an e-mail address.")
            }
            Err(AuthError::Invalid(_)) => fields.fail("name", "Use 1 to 200 ordinary characters."),
            Err(AuthError::BadLink) => fields.fail(
                "form",
                "This link is invalid, has expired or was already used. Ask your care team for a new one.",
            ),
            Err(e @ (AuthError::RateLimited | AuthError::EmailTaken)) => {
                fields.fail("form", capitalise(&e.to_string()))
            }
            Err(e) => return PortalError::from(e).into_response(),
        }
    }
    let pre = fields.get("pre").to_owned();
    render(
        StatusCode::BAD_REQUEST,
        &Claim {
            shell: Shell::public("Claim your health record"),
            f: fields,
            pre,
        },
    )
}
