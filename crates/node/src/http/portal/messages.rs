//! Messages and access requests. A clinician asks a patient for access (purpose,
//! record kinds, days and a note); the patient approves, which grants exactly what
//! was asked and answers the request on the ledger, or denies. The patient's inbox
//! also shows plain notes and the notices the ledger sends when their records are
//! opened by break-glass. Bodies are [`Note`]s sealed for the two parties only.

use super::form::{Fields, Posted, scope_text};
use super::patient::display_account;
use super::{PortalError, Shell, Visitor, ok, render, see_other, when};
use crate::auth::AuthError;
use crate::http::caller::Caller;
use crate::http::contracts::view;
use crate::notes::{MAX_NOTE_TEXT, Note, NoteError};
use crate::reporter::now_ms;
use crate::state::AppState;
use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use medledger_core::{Category, Grantee, MessageId, Payload, Purpose, Role, Scope};
use medledger_ledger::contracts::query::{self, MessageView};
use medledger_ledger::contracts::state::MessageStatus;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/patient/messages", get(inbox))
        .route("/patient/messages/respond", post(respond))
        .route(
            "/clinician/requests",
            get(requests_page).post(request_access),
        )
}

const PATIENT: &[Role] = &[Role::Patient];
const CLINICIAN: &[Role] = &[Role::Doctor, Role::Nurse];
/// Longest access a request may ask for (as long as a patient may grant).
const MAX_REQUEST_DAYS: u64 = 3650;
/// Most messages listed on a page.
const LISTED: usize = 200;

/// A message as a page shows it.
struct Shown {
    id: String,
    who: String,
    sent: String,
    status: &'static str,
    answered: String,
    /// The text, or why there is none.
    text: String,
    /// For an access request: what approving grants.
    request: Option<Asked>,
    break_glass: bool,
}

struct Asked {
    purpose: String,
    scope: String,
    days: u64,
}

fn status_of(s: &MessageStatus) -> (&'static str, String) {
    match s {
        MessageStatus::Pending => ("pending", String::new()),
        MessageStatus::Approved { at_ms } => ("approved", when(*at_ms)),
        MessageStatus::Denied { at_ms } => ("denied", when(*at_ms)),
    }
}

fn scope_of(categories: &[String]) -> Option<Scope> {
    if categories.is_empty() {
        return Some(Scope::All);
    }
    categories
        .iter()
        .map(|c| Category::new(c).ok())
        .collect::<Option<Vec<_>>>()
        .map(Scope::Categories)
}

/// What approving an access request would grant: only a request from someone who is
/// a doctor or nurse now, for treatment, for a scope and length a grant can have.
fn grantable(
    s: &AppState,
    from: &medledger_core::AccountId,
    purpose: Purpose,
    categories: &[String],
    days: u64,
) -> Result<Option<(Scope, u64)>, PortalError> {
    let clinician = s
        .ledger
        .account(from)
        .map_err(|e| PortalError::Internal(e.to_string()))?
        .is_some_and(|a| a.has_role(Role::Doctor) || a.has_role(Role::Nurse));
    if !clinician || purpose != Purpose::Treatment || !(1..=MAX_REQUEST_DAYS).contains(&days) {
        return Ok(None);
    }
    Ok(scope_of(categories).map(|scope| (scope, days)))
}

/// Messages whose approval is being carried out now: a second approval of the same
/// request (a double click, a second tab) waits for none of it and is refused, so a
/// request never yields two grants.
static APPROVING: std::sync::Mutex<Vec<MessageId>> = std::sync::Mutex::new(Vec::new());

/// Holds a message in [`APPROVING`] until dropped.
struct Approving(MessageId);

impl Approving {
    fn claim(id: MessageId) -> Option<Approving> {
        let mut a = APPROVING.lock().unwrap_or_else(|p| p.into_inner());
        if a.contains(&id) {
            return None;
        }
        a.push(id);
        Some(Approving(id))
    }
}

impl Drop for Approving {
    fn drop(&mut self) {
        APPROVING
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|m| *m != self.0);
    }
}

/// The messages at `list` (newest first), each opened with the visitor's own key.
async fn shown(
    s: &AppState,
    v: &Visitor,
    mut list: Vec<MessageView>,
    other: impl Fn(&MessageView) -> medledger_core::AccountId,
) -> Result<Vec<Shown>, PortalError> {
    list.sort_by_key(|m| std::cmp::Reverse(m.state.sent_ms));
    list.truncate(LISTED);
    let me = v.principal();
    let mut out = Vec::with_capacity(list.len());
    for m in list {
        let (status, answered) = status_of(&m.state.status);
        let (text, request) = match &m.state.content {
            None if m.state.break_glass.is_some() => (
                "A doctor opened your records in an emergency (break-glass). Each read is in your access log, marked as break-glass.".to_owned(),
                None,
            ),
            None => (String::new(), None),
            Some(cid) => match s.notes.open(&me, cid, &m.state.from, &m.state.to).await {
                Ok(Note::Text { text }) | Ok(Note::Terms { text }) => (text, None),
                Ok(Note::AccessRequest {
                    text,
                    purpose,
                    categories,
                    days,
                }) => match grantable(s, &m.state.from, purpose, &categories, days)? {
                    Some((scope, _)) => (
                        text,
                        Some(Asked {
                            purpose: purpose.to_string(),
                            scope: scope_text(&scope),
                            days,
                        }),
                    ),
                    // Not from a clinician, or not something a grant can say: shown
                    // as a plain message, with nothing to approve.
                    None => (text, None),
                },
                Err(NoteError::NotFound) => ("(This message cannot be opened.)".to_owned(), None),
                Err(e) => return Err(PortalError::Internal(e.to_string())),
            },
        };
        out.push(Shown {
            id: m.id.to_string(),
            who: display_account(s, v, &other(&m)),
            sent: when(m.state.sent_ms),
            status,
            answered,
            text,
            request,
            break_glass: m.state.break_glass.is_some(),
        });
    }
    Ok(out)
}

#[derive(Template)]
#[template(path = "portal/inbox.html")]
struct Inbox {
    shell: Shell,
    messages: Vec<Shown>,
    f: Fields,
}

async fn inbox_page(s: &AppState, v: &Visitor, f: Fields) -> Result<Inbox, PortalError> {
    let me = v.session.account;
    let list = view(s, &Caller::Person(v.principal()), move |st, _| {
        Ok(query::inbox(st, &me)?)
    })
    .await?;
    Ok(Inbox {
        shell: Shell::of("Messages", v),
        messages: shown(s, v, list, |m| m.state.from).await?,
        f,
    })
}

async fn inbox(State(s): State<AppState>, v: Visitor) -> Result<Response, PortalError> {
    v.require(PATIENT)?;
    Ok(ok(&inbox_page(&s, &v, Fields::default()).await?))
}

/// Approve or deny a message. Only an access request from a clinician can be
/// approved: that first grants what it asked (to the account that asked, from now for
/// its days), then answers it on the ledger.
async fn respond(State(s): State<AppState>, p: Posted) -> Result<Response, PortalError> {
    let Posted {
        visitor: v,
        mut fields,
    } = p;
    v.require(PATIENT)?;
    let id: MessageId = fields
        .get("message")
        .parse()
        .map_err(|_| PortalError::NotFound)?;
    let approve = fields.choice("decision", "approve", "deny")?;
    let me = v.session.account;
    let load = || {
        let caller = Caller::Person(v.principal());
        let s = s.clone();
        async move {
            // Someone else's message looks like a missing one.
            view(&s, &caller, move |st, _| {
                Ok(query::message(st, &id)?.filter(|m| m.to == me))
            })
            .await?
            .ok_or(PortalError::NotFound)
        }
    };
    load().await?;
    if !approve {
        return match s
            .auth
            .act(
                &v.principal(),
                Payload::RespondMessage {
                    message: id,
                    approve,
                },
            )
            .await
        {
            Ok(_) => Ok(see_other("/patient/messages")),
            Err(e) => refused(&s, &v, fields, e).await,
        };
    }
    // Approving: one at a time per message, then decided on the committed state.
    let Some(_held) = Approving::claim(id) else {
        fields.fail("form", "This request is being answered already.");
        return Ok(render(
            StatusCode::CONFLICT,
            &inbox_page(&s, &v, fields).await?,
        ));
    };
    let m = load().await?;
    if m.status != MessageStatus::Pending {
        fields.fail("form", "This request was answered already.");
        return Ok(render(
            StatusCode::CONFLICT,
            &inbox_page(&s, &v, fields).await?,
        ));
    }
    let asked = match &m.content {
        Some(cid) => match s.notes.open(&v.principal(), cid, &m.from, &m.to).await {
            Ok(Note::AccessRequest {
                purpose,
                categories,
                days,
                ..
            }) => grantable(&s, &m.from, purpose, &categories, days)?.map(|g| (g, purpose)),
            Ok(_) | Err(NoteError::NotFound) => None,
            Err(e) => return Err(PortalError::Internal(e.to_string())),
        },
        None => None,
    };
    let Some(((scope, days), purpose)) = asked else {
        fields.fail(
            "form",
            "Only an access request from a doctor or nurse can be approved; deny this one instead.",
        );
        return Ok(render(
            StatusCode::BAD_REQUEST,
            &inbox_page(&s, &v, fields).await?,
        ));
    };
    let now = now_ms();
    let grant = Payload::GrantConsent {
        grantee: Grantee::Account(m.from),
        scope,
        purpose,
        start_ms: now,
        expiry_ms: now + days * 86_400_000,
    };
    // The grant first, then the answer: an answered request always has its grant, and
    // while this message is held no second approval can add another.
    if let Err(e) = s.auth.act(&v.principal(), grant).await {
        return refused(&s, &v, fields, e).await;
    }
    match s
        .auth
        .act(
            &v.principal(),
            Payload::RespondMessage {
                message: id,
                approve,
            },
        )
        .await
    {
        Ok(_) => Ok(see_other("/patient/messages")),
        Err(e) => refused(&s, &v, fields, e).await,
    }
}

async fn refused(
    s: &AppState,
    v: &Visitor,
    mut fields: Fields,
    e: AuthError,
) -> Result<Response, PortalError> {
    match e {
        AuthError::Ledger(r) => {
            fields.fail("form", super::ledger_refused(&r));
            Ok(render(
                StatusCode::CONFLICT,
                &inbox_page(s, v, fields).await?,
            ))
        }
        e => Err(e.into()),
    }
}

#[derive(Template)]
#[template(path = "portal/requests.html")]
struct Requests {
    shell: Shell,
    f: Fields,
    sent: Vec<Shown>,
}

async fn requests_view(s: &AppState, v: &Visitor, f: Fields) -> Result<Requests, PortalError> {
    let me = v.session.account;
    let list = view(s, &Caller::Person(v.principal()), move |st, _| {
        Ok(query::outbox(st, &me)?)
    })
    .await?;
    Ok(Requests {
        shell: Shell::of("Access requests", v),
        sent: shown(s, v, list, |m| m.state.to).await?,
        f,
    })
}

async fn requests_page(State(s): State<AppState>, v: Visitor) -> Result<Response, PortalError> {
    v.require(CLINICIAN)?;
    let mut f = Fields::default();
    f.set("days", "90");
    Ok(ok(&requests_view(&s, &v, f).await?))
}

/// A clinician asks a patient for treatment access to their records.
async fn request_access(State(s): State<AppState>, p: Posted) -> Result<Response, PortalError> {
    let Posted {
        visitor: v,
        mut fields,
    } = p;
    v.require(CLINICIAN)?;
    let patient = fields.account("patient");
    let scope = fields.scope("categories");
    let days = fields.number("days", 1, MAX_REQUEST_DAYS, "days");
    let text = fields.text("text", MAX_NOTE_TEXT, true);
    if let (true, Some(patient), Some(scope), Some(days)) = (fields.is_ok(), patient, scope, days) {
        let categories = match scope {
            Scope::Categories(c) => c.iter().map(|c| c.to_string()).collect(),
            _ => Vec::new(),
        };
        let note = Note::AccessRequest {
            text,
            purpose: Purpose::Treatment,
            categories,
            days,
        };
        // A patient who does not exist gets the same answer as one who cannot be asked,
        // so the form does not tell who has an account.
        let sent = match s.notes.seal(&v.principal(), &patient, &note).await {
            Ok(cid) => {
                s.auth
                    .act(
                        &v.principal(),
                        Payload::SendMessage {
                            to: patient,
                            content: cid,
                        },
                    )
                    .await
            }
            Err(NoteError::NoRecipient) => Err(AuthError::Ledger(
                medledger_core::RejectReason::not_found("account"),
            )),
            Err(e) => return Err(PortalError::Internal(e.to_string())),
        };
        match sent {
            Ok(_) => return Ok(see_other("/clinician/requests")),
            Err(AuthError::Ledger(_)) => fields.fail(
                "patient",
                "This account cannot be sent a request. Check the id with the patient.",
            ),
            Err(e) => return Err(e.into()),
        }
    }
    let page = requests_view(&s, &v, fields).await?;
    Ok(render(page.f.status(), &page))
}
