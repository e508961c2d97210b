//! The patient's pages: records (by category, newest first; one as a readable
//! summary with its version history), permissions (grant, revoke) and the access log
//! (every read and refusal of their records, break-glass highlighted, with a chart).
//! Reads of content go through the FHIR service, so they are decided and audited like
//! any other read; ledger facts through the same queries and [`Viewer`] rules as `/v1`.

use super::chart::{self, Bars};
use super::form::{Fields, Posted, scope_text};
use super::summary;
use super::{PortalError, Shell, Visitor, ok, render, see_other, when};
use crate::access::Viewer;
use crate::http::caller::Caller;
use crate::http::contracts::view;
use crate::reporter::now_ms;
use crate::state::AppState;
use askama::Template;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use medledger_core::{AccountId, ErasureTarget, GrantId, Grantee, OrgId, Payload, RecordId, Role};
use medledger_ledger::contracts::query::{self, AuditFilter};
use medledger_ledger::contracts::state::ErasureStatus;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/patient", get(records))
        .route("/patient/records/{id}", get(record))
        .route("/patient/records/{id}/erase", post(erase))
        .route("/patient/permissions", get(permissions).post(grant))
        .route("/patient/permissions/revoke", post(revoke))
        .route("/patient/access-log", get(access_log))
        .route("/patient/export", get(export))
}

const PATIENT: &[Role] = &[Role::Patient];

/// A record in a list.
pub struct Row {
    pub id: String,
    pub category: String,
    pub versions: u32,
    pub created: String,
    pub updated: String,
    pub updated_ms: u64,
    pub erased: bool,
}

fn caller_of(v: &Visitor) -> Caller {
    Caller::Person(v.principal())
}

/// The records of `patient` that the visitor may see, newest change first.
pub async fn visible_records(
    s: &AppState,
    v: &Visitor,
    patient: AccountId,
) -> Result<Vec<Row>, PortalError> {
    let at = now_ms();
    let rows = view(s, &caller_of(v), move |st, viewer: &Viewer| {
        let mut out = Vec::new();
        for id in query::patient_records(st, &patient, None, 5_000)? {
            if !(viewer.is(&patient) || viewer.sees_record(st, &id, at)?) {
                continue;
            }
            let Some(r) = query::record(st, &id)? else {
                continue;
            };
            let last = r.history.last().map_or(r.state.created_ms, |h| h.time_ms);
            out.push(Row {
                id: id.to_string(),
                category: r.state.category.to_string(),
                versions: r.state.versions,
                created: when(r.state.created_ms),
                updated: when(last),
                updated_ms: last,
                erased: r.state.is_erased(),
            });
        }
        Ok(out)
    })
    .await?;
    let mut rows = rows;
    rows.sort_by(|a, b| {
        a.category
            .cmp(&b.category)
            .then(b.updated_ms.cmp(&a.updated_ms))
    });
    Ok(rows)
}

#[derive(Template)]
#[template(path = "portal/patient_records.html")]
struct Records {
    shell: Shell,
    groups: Vec<(String, Vec<Row>)>,
}

pub fn grouped(rows: Vec<Row>) -> Vec<(String, Vec<Row>)> {
    let mut groups: Vec<(String, Vec<Row>)> = Vec::new();
    for r in rows {
        match groups.last_mut() {
            Some((c, g)) if *c == r.category => g.push(r),
            _ => groups.push((r.category.clone(), vec![r])),
        }
    }
    groups
}

async fn records(State(s): State<AppState>, v: Visitor) -> Result<Response, PortalError> {
    v.require(PATIENT)?;
    let rows = visible_records(&s, &v, v.session.account).await?;
    Ok(ok(&Records {
        shell: Shell::of("My records", &v),
        groups: grouped(rows),
    }))
}

/// One version in a record's history.
pub struct Version {
    pub version: u32,
    pub when: String,
    pub author: String,
}

#[derive(Template)]
#[template(path = "portal/record.html")]
pub struct RecordPage {
    pub shell: Shell,
    pub title: String,
    pub category: String,
    pub lines: Vec<(String, String)>,
    pub history: Vec<Version>,
    pub back: (String, &'static str),
    pub erased: bool,
    pub id: String,
    /// Where an erasure request stands (empty if there is none).
    pub erasure: String,
    /// Whether this page offers to ask for erasure (the patient's own, not asked yet).
    pub can_erase: bool,
    /// Where to download the document's file, for a DocumentReference that has one.
    pub file: Option<String>,
    pub f: Fields,
}

/// How a record's erasure state reads to its patient.
fn erasure_text(e: &ErasureStatus) -> String {
    match e {
        ErasureStatus::None => String::new(),
        ErasureStatus::Retained {
            requested_ms,
            until_ms,
            period_ms,
        } => {
            let days = period_ms / 86_400_000;
            let period = if days >= 365 && days % 365 == 0 {
                format!("{} years", days / 365)
            } else {
                format!("{days} days")
            };
            format!(
                "You asked to erase this record on {}. The law requires records of this kind to be kept for {period}, so it stays until {} and is erased then.",
                when(*requested_ms),
                when(*until_ms)
            )
        }
        ErasureStatus::Erased { erased_ms, .. } => {
            format!("This record was erased on {}.", when(*erased_ms))
        }
    }
}

/// A record as the visitor may read it: the ledger entry if they may see it, the
/// content through the FHIR service (decided and audited). Anything else is "not found".
pub async fn read_record(
    s: &AppState,
    v: &Visitor,
    id: &str,
    back: (String, &'static str),
) -> Result<RecordPage, PortalError> {
    let record: RecordId = id.parse().map_err(|_| PortalError::NotFound)?;
    let at = now_ms();
    let view_ = view(s, &caller_of(v), move |st, viewer: &Viewer| {
        let Some(r) = query::record(st, &record)? else {
            return Ok(None);
        };
        let mine = viewer.is(&r.state.patient);
        Ok((mine || viewer.sees_record(st, &record, at)?).then_some(r))
    })
    .await?;
    let category = match &view_ {
        Some(r) => r.state.category.to_string(),
        // Not visible: still ask the FHIR service under the category the caller
        // guessed, so the refusal is decided and audited like any other read.
        None => "Patient".to_owned(),
    };
    let stored = s.fhir.read(&v.principal(), &category, id, None).await;
    let (Some(r), Ok(stored)) = (view_, stored) else {
        return Err(PortalError::NotFound);
    };
    let history = r
        .history
        .iter()
        .rev()
        .map(|h| Version {
            version: h.version,
            when: when(h.time_ms),
            author: display_account(s, v, &h.author),
        })
        .collect();
    Ok(RecordPage {
        shell: Shell::of(&summary::title(&stored.resource), v),
        title: summary::title(&stored.resource),
        category,
        lines: summary::lines(&stored.resource),
        history,
        erased: r.state.is_erased(),
        id: id.to_owned(),
        erasure: erasure_text(&r.state.erasure),
        can_erase: false,
        file: (stored.resource["resourceType"] == "DocumentReference"
            && super::documents::attachment(&stored.resource).is_some())
        .then(|| format!("{}/records/{id}/file", back.0)),
        f: Fields::default(),
        back,
    })
}

async fn record(
    State(s): State<AppState>,
    v: Visitor,
    Path(id): Path<String>,
) -> Result<Response, PortalError> {
    v.require(PATIENT)?;
    Ok(ok(&own_record(&s, &v, &id, Fields::default()).await?))
}

async fn own_record(
    s: &AppState,
    v: &Visitor,
    id: &str,
    f: Fields,
) -> Result<RecordPage, PortalError> {
    let mut page = read_record(s, v, id, ("/patient".into(), "My records")).await?;
    page.can_erase = page.erasure.is_empty();
    page.f = f;
    Ok(page)
}

/// Asks for a record's erasure. The ledger decides: erased now, or held until the
/// end of its kind's legal retention period (the record page then says until when).
async fn erase(
    State(s): State<AppState>,
    Path(id): Path<String>,
    p: Posted,
) -> Result<Response, PortalError> {
    let Posted {
        visitor: v,
        mut fields,
    } = p;
    v.require(PATIENT)?;
    let record: RecordId = id.parse().map_err(|_| PortalError::NotFound)?;
    let me = v.session.account;
    // Only the patient's own records; any other looks like a missing one.
    view(&s, &caller_of(&v), move |st, _| {
        Ok(query::record(st, &record)?.filter(|r| r.state.patient == me))
    })
    .await?
    .ok_or(PortalError::NotFound)?;
    if fields.get("confirm") != "yes" {
        fields.fail(
            "confirm",
            "Tick this box to confirm that you want this record erased.",
        );
        let page = own_record(&s, &v, &id, fields).await?;
        return Ok(render(StatusCode::BAD_REQUEST, &page));
    }
    let payload = Payload::RequestErasure {
        target: ErasureTarget::Record(record),
    };
    match s.auth.act(&v.principal(), payload).await {
        Ok(_) => {}
        Err(crate::auth::AuthError::Ledger(r)) => {
            fields.fail("confirm", super::ledger_refused(&r));
            let page = own_record(&s, &v, &id, fields).await?;
            return Ok(render(StatusCode::CONFLICT, &page));
        }
        Err(e) => return Err(e.into()),
    }
    // Held records stay readable (the page says until when); erased ones are gone.
    let held = view(&s, &caller_of(&v), move |st, _| {
        Ok(query::record(st, &record)?.is_some_and(|r| !r.state.is_erased()))
    })
    .await?;
    Ok(see_other(&if held {
        format!("/patient/records/{id}")
    } else {
        "/patient".to_owned()
    }))
}

/// How an account is named to the visitor: "You"; staff by name and role when this
/// node knows them; anyone else (patients above all) by a short id only, so that
/// typing someone's account id into a form never reveals who they are.
pub fn display_account(s: &AppState, v: &Visitor, a: &AccountId) -> String {
    if *a == v.session.account {
        return "You".to_owned();
    }
    match s.auth.me(a) {
        Ok(m) if m.role != Role::Patient => format!("{} ({})", m.name, super::role_label(m.role)),
        _ => short(a),
    }
}

pub fn short(a: &AccountId) -> String {
    let d = a.to_did();
    format!(
        "{}…{}",
        &d[..16.min(d.len())],
        &d[d.len().saturating_sub(6)..]
    )
}

struct GrantRow {
    id: String,
    grantee: String,
    purpose: String,
    scope: String,
    until: String,
    live: bool,
    revoked: bool,
}

#[derive(Template)]
#[template(path = "portal/permissions.html")]
struct Permissions {
    shell: Shell,
    grants: Vec<GrantRow>,
    f: Fields,
}

fn grantee_text(s: &AppState, v: &Visitor, g: &Grantee) -> String {
    match g {
        Grantee::Org(o) => format!("Everyone with a fitting role at {o}"),
        Grantee::Account(a) => display_account(s, v, a),
    }
}

async fn permissions_page(
    s: &AppState,
    v: &Visitor,
    f: Fields,
) -> Result<Permissions, PortalError> {
    let me = v.session.account;
    let at = now_ms();
    let grants = view(s, &caller_of(v), move |st, viewer: &Viewer| {
        let mut g = query::grants(st, &me)?;
        g.retain(|g| viewer.sees_grant(&g.state));
        Ok(g)
    })
    .await?;
    let mut rows: Vec<GrantRow> = grants
        .into_iter()
        .map(|g| GrantRow {
            id: g.id.to_string(),
            grantee: grantee_text(s, v, &g.state.grantee),
            purpose: g.state.purpose.to_string(),
            scope: scope_text(&g.state.scope),
            until: when(g.state.expiry_ms),
            live: g.state.live_at(at),
            revoked: g.state.revoked_ms.is_some(),
        })
        .collect();
    rows.sort_by_key(|r| !r.live);
    Ok(Permissions {
        shell: Shell::of("Permissions", v),
        grants: rows,
        f,
    })
}

async fn permissions(State(s): State<AppState>, v: Visitor) -> Result<Response, PortalError> {
    v.require(PATIENT)?;
    let mut f = Fields::default();
    f.set("days", "90");
    f.set("purpose", "treatment");
    Ok(ok(&permissions_page(&s, &v, f).await?))
}

const MAX_GRANT_DAYS: u64 = 3650;

async fn grant(State(s): State<AppState>, p: Posted) -> Result<Response, PortalError> {
    let Posted {
        visitor: v,
        mut fields,
    } = p;
    v.require(PATIENT)?;
    let who = fields.required("grantee", 200);
    let grantee = if fields.has_err("grantee") {
        None
    } else if who.starts_with("did:key:") {
        match who.parse::<AccountId>() {
            Ok(a) => Some(Grantee::Account(a)),
            Err(_) => {
                fields.fail("grantee", "This account id is not valid (did:key:z6Mk…).");
                None
            }
        }
    } else {
        match who.parse::<OrgId>() {
            Ok(o) => Some(Grantee::Org(o)),
            Err(_) => {
                fields.fail(
                    "grantee",
                    "Give an organisation id (like st-mary) or a person's account id (did:key:…).",
                );
                None
            }
        }
    };
    let purpose = fields.purpose("purpose");
    let scope = fields.scope("categories");
    let days = fields.number("days", 1, MAX_GRANT_DAYS, "days");
    if let (true, Some(grantee), Some(purpose), Some(scope), Some(days)) =
        (fields.is_ok(), grantee, purpose, scope, days)
    {
        let now = now_ms();
        let payload = Payload::GrantConsent {
            grantee,
            scope,
            purpose,
            start_ms: now,
            expiry_ms: now + days * 86_400_000,
        };
        match s.auth.act(&v.principal(), payload).await {
            Ok(_) => return Ok(see_other("/patient/permissions")),
            Err(crate::auth::AuthError::Ledger(r)) => fields.fail(
                "grantee",
                format!(
                    "The ledger refused this grant ({}).",
                    r.code().replace('_', " ")
                ),
            ),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(render(
        StatusCode::BAD_REQUEST,
        &permissions_page(&s, &v, fields).await?,
    ))
}

async fn revoke(State(s): State<AppState>, p: Posted) -> Result<Response, PortalError> {
    let v = p.visitor;
    v.require(PATIENT)?;
    let grant: GrantId = p
        .fields
        .get("grant")
        .parse()
        .map_err(|_| PortalError::NotFound)?;
    match s
        .auth
        .act(&v.principal(), Payload::RevokeConsent { grant })
        .await
    {
        Ok(_) => Ok(see_other("/patient/permissions")),
        // Someone else's grant, or one that does not exist: the same answer.
        Err(crate::auth::AuthError::Ledger(_)) => Err(PortalError::NotFound),
        Err(e) => Err(e.into()),
    }
}

struct LogRow {
    when: String,
    who: String,
    record: Option<String>,
    purpose: String,
    allowed: bool,
    reason: String,
    break_glass: bool,
}

#[derive(Template)]
#[template(path = "portal/access_log.html")]
struct AccessLog {
    shell: Shell,
    rows: Vec<LogRow>,
    chart: Bars,
    /// Break-glass openings on the patient's records, ever.
    break_glass: usize,
    /// The `before` of the next older page, if there is one.
    older: Option<u64>,
    paged: bool,
}

/// Entries per page of the access log (newest first; "older" pages further back).
const LOG_PAGE: usize = 200;
const CHART_DAYS: u64 = 30;
/// Most entries read for the chart of the last 30 days.
const CHART_LIMIT: usize = 20_000;

#[derive(serde::Deserialize)]
struct Older {
    before: Option<u64>,
}

async fn access_log(
    State(s): State<AppState>,
    v: Visitor,
    q: Result<axum::extract::Query<Older>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PortalError> {
    v.require(PATIENT)?;
    let me = v.session.account;
    let before = q.ok().and_then(|axum::extract::Query(q)| q.before);
    let since = now_ms().saturating_sub(CHART_DAYS * 86_400_000);
    let (entries, recent, break_glass) = view(&s, &caller_of(&v), move |st, viewer: &Viewer| {
        let filter = AuditFilter::Patient(me);
        let mut page = query::audit_latest(st, &filter, before, LOG_PAGE)?;
        page.retain(|e| viewer.sees_audit(e));
        // The chart: entries of the last 30 days, newest backwards until older.
        let mut recent = Vec::new();
        let mut cursor = None;
        'chart: loop {
            let chunk = query::audit_latest(st, &filter, cursor, 1_000)?;
            let Some(last) = chunk.last().map(|e| e.seq) else {
                break;
            };
            for e in chunk {
                if e.time_ms < since || recent.len() >= CHART_LIMIT {
                    break 'chart;
                }
                if viewer.sees_audit(&e) {
                    recent.push((e.time_ms, e.allowed));
                }
            }
            cursor = Some(last);
        }
        let bg = query::break_glasses(st, &me)?.len();
        Ok((page, recent, bg))
    })
    .await?;
    let today = now_ms() / 86_400_000;
    let mut days: Vec<(String, u64, u64)> = (0..CHART_DAYS)
        .rev()
        .map(|d| {
            let (_, m, dd) = super::civil((today - d) as i64);
            (format!("{m:02}-{dd:02}"), 0, 0)
        })
        .collect();
    for (t, allowed) in recent {
        let age = today.saturating_sub(t / 86_400_000);
        if age < CHART_DAYS {
            let slot = &mut days[(CHART_DAYS - 1 - age) as usize];
            if allowed {
                slot.1 += 1;
            } else {
                slot.2 += 1;
            }
        }
    }
    let older = (entries.len() == LOG_PAGE)
        .then(|| entries.last().map(|e| e.seq))
        .flatten();
    let rows = entries
        .iter()
        .map(|e| LogRow {
            when: when(e.time_ms),
            who: display_account(&s, &v, &e.accessor),
            record: e.record.map(|r| r.to_string()),
            purpose: e.purpose.to_string(),
            allowed: e.allowed,
            reason: e.reason.replace('_', " "),
            break_glass: e.break_glass,
        })
        .collect();
    Ok(ok(&AccessLog {
        shell: Shell::of("Access log", &v),
        rows,
        chart: chart::bars(&days),
        break_glass,
        older,
        paged: before.is_some(),
    }))
}

/// "Export my data": the patient's whole record as a FHIR Bundle (`$everything` of
/// their Patient resource), as a file download. Read through the FHIR service like any
/// other read, so the export is in their own access log too.
async fn export(State(s): State<AppState>, v: Visitor) -> Result<Response, PortalError> {
    v.require(PATIENT)?;
    let me = v.session.account;
    let first = view(&s, &caller_of(&v), move |st, _| {
        for id in query::patient_records(st, &me, None, usize::MAX)? {
            if query::record(st, &id)?
                .is_some_and(|r| r.state.category.as_str() == "Patient" && !r.state.is_erased())
            {
                return Ok(Some(id));
            }
        }
        Ok(None)
    })
    .await?
    .ok_or(PortalError::NotFound)?;
    let bundle = s
        .fhir
        .everything(&v.principal(), &first.to_string(), "https://localhost/fhir")
        .await?;
    let body =
        serde_json::to_vec_pretty(&bundle).map_err(|e| PortalError::Internal(e.to_string()))?;
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "application/fhir+json"),
            (
                axum::http::header::CONTENT_DISPOSITION,
                "attachment; filename=\"medledger-export.json\"",
            ),
        ],
        body,
    )
        .into_response())
}
