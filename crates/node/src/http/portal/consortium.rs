//! The consortium operator's page, for the consortium admin account whatever its role
//! in an organisation: the organisations (add one, with its first admin), the nodes
//! whose signatures the chain accepts and the consensus cluster, and minting units
//! into an account (agreements are paid in them). The ledger decides every change:
//! only the consortium admin may add organisations or mint.

use super::form::{Fields, Posted};
use super::patient::display_account;
use super::{PortalError, Shell, Visitor, ok, render, see_other, when};
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
use medledger_core::{OrgId, Payload};
use medledger_ledger::contracts::query;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/consortium", get(consortium))
        .route("/consortium/orgs", post(add_org))
        .route("/consortium/mint", post(mint))
}

/// Largest single mint.
const MAX_MINT: u64 = 1_000_000_000;

struct Org {
    id: String,
    created: String,
    admins: Vec<String>,
    members: usize,
}

#[derive(Template)]
#[template(path = "portal/consortium.html")]
struct Consortium {
    shell: Shell,
    orgs: Vec<Org>,
    /// Genesis nodes: (raft id, key).
    nodes: Vec<(u64, String)>,
    status: super::status::ChainStatus,
    f: Fields,
}

async fn page(s: &AppState, v: &Visitor, f: Fields) -> Result<Consortium, PortalError> {
    let orgs = view(s, &Caller::Person(v.principal()), move |st, _| {
        let mut out = Vec::new();
        for (id, o) in query::orgs(st)? {
            let view = query::org(st, &id)?;
            out.push((id, o, view));
        }
        Ok(out)
    })
    .await?;
    let orgs = orgs
        .into_iter()
        .map(|(id, o, view)| {
            let (admins, members) = view.map_or((Vec::new(), 0), |view| {
                (
                    view.members
                        .iter()
                        .filter(|m| m.role == medledger_core::Role::HospitalAdmin)
                        .map(|m| display_account(s, v, &m.account))
                        .collect(),
                    view.members.len(),
                )
            });
            Org {
                id: id.to_string(),
                created: when(o.created_ms),
                admins,
                members,
            }
        })
        .collect();
    Ok(Consortium {
        shell: Shell::of("Consortium", v),
        orgs,
        nodes: s
            .ledger
            .genesis()
            .nodes
            .iter()
            .map(|n| (n.id, n.key.to_string()))
            .collect(),
        status: super::status::of(s),
        f,
    })
}

async fn consortium(State(s): State<AppState>, v: Visitor) -> Result<Response, PortalError> {
    v.require_operator()?;
    Ok(ok(&page(&s, &v, Fields::default()).await?))
}

async fn add_org(State(s): State<AppState>, p: Posted) -> Result<Response, PortalError> {
    let Posted {
        visitor: v,
        mut fields,
    } = p;
    v.require_operator()?;
    let id = fields.required("org", 64);
    let org = match OrgId::new(&id) {
        Ok(o) => Some(o),
        Err(_) if fields.has_err("org") => None,
        Err(_) => {
            fields.fail(
                "org",
                "Lower-case letters, digits and '-' (like st-mary), starting with a letter.",
            );
            None
        }
    };
    let admin = fields.account("admin");
    if let (Some(org), Some(admin)) = (org, admin) {
        match s
            .auth
            .act(&v.principal(), Payload::AddOrg { org, admin })
            .await
        {
            Ok(_) => return Ok(see_other("/consortium")),
            Err(AuthError::Ledger(r)) => fields.fail("org", super::ledger_refused(&r)),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(render(
        StatusCode::BAD_REQUEST,
        &page(&s, &v, fields).await?,
    ))
}

async fn mint(State(s): State<AppState>, p: Posted) -> Result<Response, PortalError> {
    let Posted {
        visitor: v,
        mut fields,
    } = p;
    v.require_operator()?;
    let to = fields.account("to");
    let amount = fields.number("amount", 1, MAX_MINT, "units");
    if let (Some(to), Some(amount)) = (to, amount) {
        match s
            .auth
            .act(&v.principal(), Payload::Mint { to, amount })
            .await
        {
            Ok(_) => return Ok(see_other("/consortium")),
            Err(AuthError::Ledger(r)) => fields.fail("to", super::ledger_refused(&r)),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(render(
        StatusCode::BAD_REQUEST,
        &page(&s, &v, fields).await?,
    ))
}
