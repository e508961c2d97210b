//! The hospital admin's page: pending registrations of their organisation (approve,
//! reject), its members and their roles (assign, revoke), patient invitations,
//! organisation-assisted recovery (one admin asks, a second approves) and the node's
//! and chain's status. Membership is read with the same rule as `GET /v1/orgs/{org}`
//! (only the org's admins and overseers); the decisions are the sign-in service's and
//! the ledger's.

use super::form::{Fields, Posted};
use super::patient::{display_account, short};
use super::{PortalError, Shell, Visitor, ok, render, role_label, see_other, when};
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
use medledger_core::{AccountId, GrantId, Payload, Role};
use medledger_ledger::contracts::query;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin", get(admin))
        .route("/admin/decide", post(decide))
        .route("/admin/invite", post(invite))
        .route("/admin/roles", post(roles))
        .route("/admin/recovery", post(recovery))
        .route("/admin/recovery/approve", post(approve_recovery))
}

/// Roles an admin may give here: all but patient (patients join through invitations).
fn assignable(r: Role) -> bool {
    r != Role::Patient
}

struct Recovery {
    id: String,
    member: String,
    requested_by: String,
    requested: String,
    /// Who approved it and when, once approved.
    approved: Option<String>,
    /// The visitor may approve it (another admin asked, and it is still open).
    mine_to_approve: bool,
}

const ADMIN: &[Role] = &[Role::HospitalAdmin];

struct Person {
    did: String,
    short: String,
    name: String,
    role: &'static str,
    /// The role's wire name, for the revoke form.
    role_id: String,
    me: bool,
}

#[derive(Template)]
#[template(path = "portal/admin.html")]
struct Admin {
    shell: Shell,
    org: String,
    pending: Vec<Person>,
    members: Vec<Person>,
    recoveries: Vec<Recovery>,
    roles: Vec<(String, &'static str)>,
    status: super::status::ChainStatus,
    f: Fields,
    invited: bool,
}

async fn page(s: &AppState, v: &Visitor, f: Fields, invited: bool) -> Result<Admin, PortalError> {
    let org = v.session.org.clone();
    let org2 = org.clone();
    let (o, recoveries) = view(
        s,
        &Caller::Person(v.principal()),
        move |st, viewer: &Viewer| {
            if !(viewer.administers(&org2) || viewer.oversees()) {
                return Ok(None);
            }
            Ok(query::org(st, &org2)?.map(|o| (o, query::recoveries(st, &org2))))
        },
    )
    .await?
    .ok_or(PortalError::NotFound)?;
    let me = v.session.account;
    let person = |m: &query::Member| Person {
        did: m.account.to_did(),
        short: short(&m.account),
        name: display_account(s, v, &m.account),
        role: role_label(m.role),
        role_id: m.role.to_string(),
        me: m.account == me,
    };
    let recoveries = recoveries?
        .into_iter()
        .map(|(id, r)| Recovery {
            id: id.to_string(),
            member: display_account(s, v, &r.account),
            requested_by: display_account(s, v, &r.requested_by),
            requested: when(r.requested_ms),
            approved: r.approved_by.map(|a| {
                format!(
                    "{}, {}",
                    display_account(s, v, &a),
                    when(r.approved_ms.unwrap_or_default())
                )
            }),
            mine_to_approve: r.approved_by.is_none() && r.requested_by != me,
        })
        .collect();
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
        recoveries,
        // Auditors oversee the whole consortium: only its admin makes them.
        roles: Role::ALL
            .iter()
            .filter(|r| assignable(**r) && (**r != Role::Auditor || v.operator))
            .map(|r| (r.to_string(), role_label(*r)))
            .collect(),
        status: super::status::of(s),
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
    let approve = p.fields.choice("decision", "approve", "reject")?;
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

/// Gives a member a role in the organisation, or takes one away. The ledger decides
/// (only the org's admins, or the consortium admin); an admin cannot remove their
/// own admin role here, so an organisation is never left without one by a slip.
async fn roles(State(s): State<AppState>, p: Posted) -> Result<Response, PortalError> {
    let Posted {
        visitor: v,
        mut fields,
    } = p;
    v.require(ADMIN)?;
    let assign = fields.choice("action", "assign", "revoke")?;
    let account = fields.account("account");
    let role = match fields.get("role").parse::<Role>() {
        Ok(r) if assignable(r) => Some(r),
        _ => {
            fields.fail("role", "Choose a role.");
            None
        }
    };
    if let (Some(account), Some(role)) = (account, role) {
        if !assign && account == v.session.account && role == Role::HospitalAdmin {
            fields.fail(
                "account",
                "You cannot remove your own admin role; ask another admin.",
            );
        } else {
            let org = v.session.org.clone();
            let payload = if assign {
                Payload::AssignRole { org, account, role }
            } else {
                Payload::RevokeRole { org, account, role }
            };
            match s.auth.act(&v.principal(), payload).await {
                Ok(_) => return Ok(see_other("/admin")),
                Err(AuthError::Ledger(r)) => fields.fail("account", super::ledger_refused(&r)),
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(render(
        StatusCode::BAD_REQUEST,
        &page(&s, &v, fields, false).await?,
    ))
}

/// Starts an organisation-assisted recovery for a member who lost their password
/// and their recovery codes; it takes effect only when a second admin approves.
async fn recovery(State(s): State<AppState>, p: Posted) -> Result<Response, PortalError> {
    let Posted {
        visitor: v,
        mut fields,
    } = p;
    v.require(ADMIN)?;
    let email = fields.required("member_email", 254);
    if fields.is_ok() {
        match s.auth.request_recovery(&v.session, &email).await {
            Ok(_) => return Ok(see_other("/admin")),
            // No such member, or not one of this organisation: the same answer.
            Err(AuthError::Invalid(_) | AuthError::Ledger(_)) => fields.fail(
                "member_email",
                "No member of your organisation has this address, or it is your own.",
            ),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(render(
        StatusCode::BAD_REQUEST,
        &page(&s, &v, fields, false).await?,
    ))
}

/// The second admin's approval: the member gets a single-use link to set a password.
async fn approve_recovery(State(s): State<AppState>, p: Posted) -> Result<Response, PortalError> {
    let Posted {
        visitor: v,
        mut fields,
    } = p;
    v.require(ADMIN)?;
    let id: GrantId = fields
        .get("request")
        .parse()
        .map_err(|_| PortalError::NotFound)?;
    let org = v.session.org.clone();
    // Another organisation's request looks like a missing one.
    view(&s, &Caller::Person(v.principal()), move |st, _| {
        Ok(query::recovery(st, &id)?.filter(|r| r.org == org))
    })
    .await?
    .ok_or(PortalError::NotFound)?;
    match s.auth.approve_recovery(&v.session, &id).await {
        Ok(()) => Ok(see_other("/admin")),
        Err(AuthError::Ledger(r)) => {
            fields.fail(
                "form",
                format!(
                    "The ledger refused this approval ({}).",
                    r.code().replace('_', " ")
                ),
            );
            Ok(render(
                StatusCode::CONFLICT,
                &page(&s, &v, fields, false).await?,
            ))
        }
        Err(e) => Err(e.into()),
    }
}
