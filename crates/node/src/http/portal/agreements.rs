//! Paid access agreements. An insurer proposes access to a patient's records for
//! payment (record kinds, how long, the price held in escrow, a deadline and its
//! terms); the patient accepts (the ledger grants the access and pays them) or
//! rejects (the insurer is refunded). Both see their balance; the insurer reads what
//! an accepted agreement allows, through the FHIR service like any other read.

use super::form::{Fields, Posted, scope_text};
use super::patient::{display_account, grouped, read_record, visible_records};
use super::{PortalError, Shell, Visitor, ok, render, see_other, when};
use crate::auth::AuthError;
use crate::http::caller::Caller;
use crate::http::contracts::view;
use crate::notes::{MAX_NOTE_TEXT, Note, NoteError};
use crate::reporter::now_ms;
use crate::state::AppState;
use askama::Template;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use medledger_core::{AccountId, AgreementId, Payload, Purpose, Role};
use medledger_ledger::contracts::query::{self, AgreementView};
use medledger_ledger::contracts::state::AgreementStatus;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/patient/agreements", get(patient_page))
        .route("/patient/agreements/respond", post(respond))
        .route("/insurer", get(insurer_page).post(propose))
        .route("/insurer/agreements/{id}", get(allowed))
        .route("/insurer/records/{id}", get(insurer_record))
}

const PATIENT: &[Role] = &[Role::Patient];
const INSURER: &[Role] = &[Role::Insurer];
/// Longest access an agreement may buy.
const MAX_AGREEMENT_DAYS: u64 = 3650;
/// Longest time a patient may be given to answer.
const MAX_RESPOND_DAYS: u64 = 90;
/// Largest price in one proposal (units).
const MAX_PRICE: u64 = 1_000_000_000;
const DAY_MS: u64 = 86_400_000;
/// Most agreements listed on a page (newest first).
const LISTED: usize = 200;

/// An agreement as a page shows it.
struct Shown {
    id: String,
    /// The other party.
    who: String,
    purpose: String,
    scope: String,
    days: u64,
    price: u64,
    terms: String,
    proposed: String,
    respond_by: String,
    /// `proposed`, `accepted`, `rejected` or `expired`.
    status: &'static str,
    /// When it was answered (or expired).
    closed: String,
    /// Still open to an answer now.
    open: bool,
}

async fn shown(
    s: &AppState,
    v: &Visitor,
    mut list: Vec<AgreementView>,
    other: impl Fn(&AgreementView) -> AccountId,
) -> Result<Vec<Shown>, PortalError> {
    list.sort_by_key(|a| std::cmp::Reverse(a.state.proposed_ms));
    list.truncate(LISTED);
    let me = v.principal();
    let now = now_ms();
    let mut out = Vec::with_capacity(list.len());
    for a in list {
        let terms = match s
            .notes
            .open(&me, &a.state.terms, &a.state.proposer, &a.state.patient)
            .await
        {
            Ok(Note::Terms { text }) => text,
            Ok(_) | Err(NoteError::NotFound) => "(The terms cannot be opened.)".to_owned(),
            Err(e) => return Err(PortalError::Internal(e.to_string())),
        };
        let (status, closed) = match &a.state.status {
            AgreementStatus::Proposed => ("proposed", String::new()),
            AgreementStatus::Accepted { at_ms, .. } => ("accepted", when(*at_ms)),
            AgreementStatus::Rejected { at_ms } => ("rejected", when(*at_ms)),
            AgreementStatus::Expired { at_ms } => ("expired", when(*at_ms)),
        };
        out.push(Shown {
            id: a.id.to_string(),
            who: display_account(s, v, &other(&a)),
            purpose: a.state.purpose.to_string(),
            scope: scope_text(&a.state.scope),
            days: a.state.duration_ms.div_ceil(DAY_MS),
            price: a.state.price,
            terms,
            proposed: when(a.state.proposed_ms),
            respond_by: when(a.state.respond_by_ms),
            status,
            closed,
            open: status == "proposed" && now < a.state.respond_by_ms,
        });
    }
    Ok(out)
}

fn balance(
    st: &impl medledger_ledger::exec::StateRead,
    a: &AccountId,
) -> Result<u64, crate::http::error::ApiError> {
    Ok(query::account(st, a)?.map_or(0, |a| a.balance))
}

#[derive(Template)]
#[template(path = "portal/agreements.html")]
struct PatientAgreements {
    shell: Shell,
    balance: u64,
    agreements: Vec<Shown>,
    f: Fields,
}

async fn patient_view(
    s: &AppState,
    v: &Visitor,
    f: Fields,
) -> Result<PatientAgreements, PortalError> {
    let me = v.session.account;
    let (list, bal) = view(s, &Caller::Person(v.principal()), move |st, _| {
        Ok((query::agreements(st, &me)?, balance(st, &me)?))
    })
    .await?;
    Ok(PatientAgreements {
        shell: Shell::of("Agreements", v),
        balance: bal,
        agreements: shown(s, v, list, |a| a.state.proposer).await?,
        f,
    })
}

async fn patient_page(State(s): State<AppState>, v: Visitor) -> Result<Response, PortalError> {
    v.require(PATIENT)?;
    Ok(ok(&patient_view(&s, &v, Fields::default()).await?))
}

async fn respond(State(s): State<AppState>, p: Posted) -> Result<Response, PortalError> {
    let Posted {
        visitor: v,
        mut fields,
    } = p;
    v.require(PATIENT)?;
    let id: AgreementId = fields
        .get("agreement")
        .parse()
        .map_err(|_| PortalError::NotFound)?;
    let accept = fields.choice("decision", "accept", "reject")?;
    let me = v.session.account;
    // Another patient's agreement looks like a missing one.
    view(&s, &Caller::Person(v.principal()), move |st, _| {
        Ok(query::agreement(st, &id)?.filter(|a| a.patient == me))
    })
    .await?
    .ok_or(PortalError::NotFound)?;
    match s
        .auth
        .act(
            &v.principal(),
            Payload::RespondAgreement {
                agreement: id,
                accept,
            },
        )
        .await
    {
        Ok(_) => Ok(see_other("/patient/agreements")),
        Err(AuthError::Ledger(r)) => {
            fields.fail("form", super::ledger_refused(&r));
            Ok(render(
                StatusCode::CONFLICT,
                &patient_view(&s, &v, fields).await?,
            ))
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Template)]
#[template(path = "portal/insurer.html")]
struct Insurer {
    shell: Shell,
    balance: u64,
    agreements: Vec<Shown>,
    f: Fields,
}

async fn insurer_view(s: &AppState, v: &Visitor, f: Fields) -> Result<Insurer, PortalError> {
    let me = v.session.account;
    let (list, bal) = view(s, &Caller::Person(v.principal()), move |st, _| {
        Ok((query::proposed_by(st, &me)?, balance(st, &me)?))
    })
    .await?;
    Ok(Insurer {
        shell: Shell::of("Agreements", v),
        balance: bal,
        agreements: shown(s, v, list, |a| a.state.patient).await?,
        f,
    })
}

async fn insurer_page(State(s): State<AppState>, v: Visitor) -> Result<Response, PortalError> {
    v.require(INSURER)?;
    let mut f = Fields::default();
    f.set("days", "365");
    f.set("respond_days", "14");
    Ok(ok(&insurer_view(&s, &v, f).await?))
}

/// Proposes a paid agreement: the terms are sealed for the insurer and the patient,
/// the price leaves the insurer's balance into escrow until the patient answers.
async fn propose(State(s): State<AppState>, p: Posted) -> Result<Response, PortalError> {
    let Posted {
        visitor: v,
        mut fields,
    } = p;
    v.require(INSURER)?;
    let patient = fields.account("patient");
    let scope = fields.scope("categories");
    let days = fields.number("days", 1, MAX_AGREEMENT_DAYS, "days");
    let price = fields.number("price", 1, MAX_PRICE, "units");
    let respond_days = fields.number("respond_days", 1, MAX_RESPOND_DAYS, "days");
    let text = fields.text("terms", MAX_NOTE_TEXT, true);
    if let (true, Some(patient), Some(scope), Some(days), Some(price), Some(respond_days)) =
        (fields.is_ok(), patient, scope, days, price, respond_days)
    {
        let sent = match s
            .notes
            .seal(&v.principal(), &patient, &Note::Terms { text })
            .await
        {
            Ok(terms) => {
                let payload = Payload::ProposeAgreement {
                    patient,
                    scope,
                    purpose: Purpose::Payment,
                    duration_ms: days * DAY_MS,
                    price,
                    terms,
                    respond_by_ms: now_ms() + respond_days * DAY_MS,
                };
                s.auth.act(&v.principal(), payload).await
            }
            Err(NoteError::NoRecipient) => Err(AuthError::Ledger(
                medledger_core::RejectReason::not_found("account"),
            )),
            Err(e) => return Err(PortalError::Internal(e.to_string())),
        };
        match sent {
            Ok(_) => return Ok(see_other("/insurer")),
            Err(AuthError::Ledger(r)) if r.code() == "insufficient_funds" => fields.fail(
                "price",
                "Your balance does not cover this price.",
            ),
            // No such account, not a patient, or a record kind they do not have: one
            // answer, so the form does not tell who is a patient.
            Err(AuthError::Ledger(r)) => fields.fail(
                "patient",
                format!(
                    "The ledger refused this proposal ({}). Check the patient's id and the record kinds.",
                    r.code().replace('_', " ")
                ),
            ),
            Err(e) => return Err(e.into()),
        }
    }
    let page = insurer_view(&s, &v, fields).await?;
    Ok(render(page.f.status(), &page))
}

#[derive(Template)]
#[template(path = "portal/insurer_records.html")]
struct Allowed {
    shell: Shell,
    patient: String,
    until: String,
    groups: Vec<(String, Vec<super::patient::Row>)>,
}

/// The records an accepted agreement lets the insurer read now.
async fn allowed(
    State(s): State<AppState>,
    v: Visitor,
    Path(id): Path<String>,
) -> Result<Response, PortalError> {
    v.require(INSURER)?;
    let id: AgreementId = id.parse().map_err(|_| PortalError::NotFound)?;
    let me = v.session.account;
    let (a, grant) = view(&s, &Caller::Person(v.principal()), move |st, _| {
        let Some(a) = query::agreement(st, &id)?.filter(|a| a.proposer == me) else {
            return Ok(None);
        };
        let grant = match &a.status {
            AgreementStatus::Accepted { grant, .. } => query::grant(st, grant)?,
            _ => None,
        };
        Ok(Some((a, grant)))
    })
    .await?
    .ok_or(PortalError::NotFound)?;
    let Some(grant) = grant else {
        return Err(PortalError::Forbidden(
            "This agreement has not been accepted, so it allows no reads.".into(),
        ));
    };
    let rows = visible_records(&s, &v, a.patient).await?;
    Ok(ok(&Allowed {
        shell: Shell::of("Records under an agreement", &v),
        patient: display_account(&s, &v, &a.patient),
        until: when(grant.expiry_ms),
        groups: grouped(rows),
    }))
}

async fn insurer_record(
    State(s): State<AppState>,
    v: Visitor,
    Path(id): Path<String>,
) -> Result<Response, PortalError> {
    v.require(INSURER)?;
    let page = read_record(&s, &v, &id, ("/insurer".into(), "Agreements")).await?;
    Ok(ok(&page))
}
