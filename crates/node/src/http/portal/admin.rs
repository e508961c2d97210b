//! The hospital admin's page: pending registrations of their organisation (approve,
//! reject), its members and roles, and patient invitations. Membership is read with
//! the same rule as `GET /v1/orgs/{org}` (only the org's admins and overseers); the
//! decisions are the sign-in service's and the ledger's.

use super::form::{Fields, Posted};
use super::patient::{display_account, short};
use super::{PortalError, Shell, Visitor, ok, render, role_label, see_other};
use crate::access::Viewer;
use crate::auth::AuthError;
use crate::http::caller::Caller;
use crate::http::contracts::view;
use crate::state::AppState;
use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use medledger_core::{AccountId, Role};
use medledger_ledger::contracts::query;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin", get(admin))
        .route("/admin/decide", post(decide))
        .route("/admin/invite", post(invite))
}

const ADMIN: &[Role] = &[Role::HospitalAdmin];

struct Person {
    did: String,
    short: String,
    name: String,
    role: &'static str,
}

#[derive(Template)]
#[template(path = "portal/admin.html")]
struct Admin {
    shell: Shell,
    org: String,
    pending: Vec<Person>,
    members: Vec<Person>,
    f: Fields,
    invited: bool,
}

async fn page(s: &AppState, v: &Visitor, f: Fields, invited: bool) -> Result<Admin, PortalError> {
    let org = v.session.org.clone();
    let org2 = org.clone();
    let o = view(
        s,
        &Caller::Person(v.principal()),
        move |st, viewer: &Viewer| {
            Ok(query::org(st, &org2)?.filter(|_| viewer.administers(&org2) || viewer.oversees()))
        },
    )
    .await?
    .ok_or(PortalError::NotFound)?;
    let person = |m: &query::Member| Person {
        did: m.account.to_did(),
        short: short(&m.account),
        name: display_account(s, v, &m.account),
        role: role_label(m.role),
    };
    Ok(Admin {
        shell: Shell::of("Administration", v),
        org: org.to_string(),
        pending: o.pending.iter().map(person).collect(),
        members: o
            .members
            .iter()
            .filter(|m| m.role != Role::Patient)
            .map(person)
            .collect(),
        f,
        invited,
    })
}

async fn admin(State(s): State<AppState>, v: Visitor) -> Result<Response, PortalError> {
    v.require(ADMIN)?;
    Ok(ok(&page(&s, &v, Fields::default(), false).await?))
}

async fn decide(State(s): State<AppState>, p: Posted) -> Result<Response, PortalError> {
    let v = p.visitor;
    v.require(ADMIN)?;
    let account: AccountId = p
        .fields
        .get("account")
        .parse()
        .map_err(|_| PortalError::NotFound)?;
    let approve = match p.fields.get("decision") {
        "approve" => true,
        "reject" => false,
        _ => return Err(PortalError::BadRequest("Choose approve or reject.".into())),
    };
    match s.auth.approve(&v.session, &account, approve).await {
        Ok(()) => Ok(see_other("/admin")),
        Err(AuthError::Ledger(r)) => Err(PortalError::BadRequest(format!(
            "The ledger refused this decision ({}).",
            r.code().replace('_', " ")
        ))),
        Err(e) => Err(e.into()),
    }
}

async fn invite(State(s): State<AppState>, p: Posted) -> Result<Response, PortalError> {
    let Posted {
        visitor: v,
        mut fields,
    } = p;
    v.require(ADMIN)?;
    let email = fields.required("email", 254);
    if fields.is_ok() {
        match s.auth.invite(&v.session, &email).await {
            Ok(()) => {
                return Ok(ok(&page(&s, &v, Fields::default(), true).await?));
            }
            Err(AuthError::Invalid(_)) => fields.fail("email", "This is not an e-mail address."),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(render(
        StatusCode::BAD_REQUEST,
        &page(&s, &v, fields, false).await?,
    ))
}
