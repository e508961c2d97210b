//! The clinician's pages (doctors and nurses): find the patients they may see, a
//! patient's chart (records by kind, vital-sign trends), and the intake form of the
//! original design, stored as a FHIR Patient plus body-weight and body-height
//! Observations. Everything goes through the FHIR service as the clinician, so the
//! ledger decides and every read (and refusal) lands in the patient's access log.

use super::chart::{self, Line};
use super::form::{Fields, Posted};
use super::summary;
use super::{PortalError, Shell, Visitor, ok, render, see_other};
use crate::http::caller::Caller;
use crate::http::contracts::view;
use crate::state::AppState;
use askama::Template;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use medledger_core::{AccountId, Role};
use medledger_core::{EmergencyReason, Payload};
use medledger_ledger::contracts::query;
use serde_json::{Value, json};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/clinician", get(patients).post(search))
        .route("/clinician/patients/{id}", get(chart_page))
        .route("/clinician/records/{id}", get(record))
        .route("/clinician/intake", get(intake_page).post(intake))
        .route(
            "/clinician/break-glass",
            get(break_glass_page).post(break_glass),
        )
}

const CLINICIAN: &[Role] = &[Role::Doctor, Role::Nurse];

/// Patients listed before any search.
const LISTED: usize = 50;

/// The base the FHIR service writes into `fullUrl`s (not shown on these pages).
const BASE: &str = "https://localhost/fhir";

struct Found {
    id: String,
    name: String,
    birth: String,
    gender: String,
}

#[derive(Template)]
#[template(path = "portal/clinician_patients.html")]
struct Patients {
    shell: Shell,
    f: Fields,
    found: Vec<Found>,
    searched: bool,
}

async fn patients(State(s): State<AppState>, v: Visitor) -> Result<Response, PortalError> {
    v.require(CLINICIAN)?;
    find(&s, &v, Fields::default(), false).await
}

/// A search by name or identifier is posted, never put in the address: names in a URL
/// end up in browser history, proxy logs and referrers.
async fn search(State(s): State<AppState>, p: Posted) -> Result<Response, PortalError> {
    p.visitor.require(CLINICIAN)?;
    find(&s, &p.visitor, p.fields, true).await
}

async fn find(
    s: &AppState,
    v: &Visitor,
    form: Fields,
    posted: bool,
) -> Result<Response, PortalError> {
    let mut f = Fields::default();
    let mut pairs = vec![("_count".to_owned(), "50".to_owned())];
    let mut searched = false;
    if posted {
        for k in ["name", "identifier"] {
            let typed = form.get(k).to_owned();
            if let Some(x) = f_opt(&mut f, k, (!typed.is_empty()).then_some(typed)) {
                pairs.push((k.to_owned(), x));
                searched = true;
            }
        }
    }
    let mut found = Vec::new();
    if f.is_ok() {
        let bundle = if searched {
            s.fhir
                .search(&v.principal(), "Patient", &pairs, BASE)
                .await?
        } else {
            s.fhir
                .readable(&v.principal(), "Patient", LISTED, BASE)
                .await?
        };
        for e in bundle["entry"].as_array().into_iter().flatten() {
            let r = &e["resource"];
            if r["resourceType"] != "Patient" {
                continue;
            }
            found.push(Found {
                id: r["id"].as_str().unwrap_or_default().to_owned(),
                name: summary::name(r),
                birth: r["birthDate"].as_str().unwrap_or("").to_owned(),
                gender: r["gender"].as_str().unwrap_or("").to_owned(),
            });
        }
    }
    let status = f.status();
    Ok(render(
        status,
        &Patients {
            shell: Shell::of("Patients", v),
            f,
            found,
            searched,
        },
    ))
}

/// A search field's value, kept for the form; an error if it cannot be searched.
fn f_opt(f: &mut Fields, k: &str, v: Option<String>) -> Option<String> {
    let v = v?;
    f.set(k, v.as_str());
    f.optional(k, 100)
}

struct Group {
    kind: String,
    items: Vec<(String, String, String)>,
}

struct Trend {
    name: String,
    unit: String,
    line: Line,
    latest: String,
}

#[derive(Template)]
#[template(path = "portal/chart.html")]
struct ChartPage {
    shell: Shell,
    patient: Vec<(String, String)>,
    name: String,
    id: String,
    groups: Vec<Group>,
    trends: Vec<Trend>,
    /// The patient's account was created at the desk and can be claimed.
    claimable: bool,
    claim_sent: bool,
    f: Fields,
}

#[derive(serde::Deserialize)]
struct ChartQuery {
    claim: Option<String>,
}

#[derive(Template)]
#[template(path = "portal/denied.html")]
struct Denied {
    shell: Shell,
}

/// What a clinician sees when a patient's records are closed to them: absent and
/// refused look alike, and the attempt is already in the patient's access log.
fn denied(v: &Visitor) -> Response {
    render(
        StatusCode::NOT_FOUND,
        &Denied {
            shell: Shell::of("No access", v),
        },
    )
}

const VITALS: [(&str, &str); 5] = [
    ("29463-7", "Body weight"),
    ("8302-2", "Body height"),
    ("8867-4", "Heart rate"),
    ("9279-1", "Respiratory rate"),
    ("8310-5", "Body temperature"),
];

fn loinc(r: &Value) -> Option<&str> {
    r["code"]["coding"].as_array()?.iter().find_map(|c| {
        (c["system"] == "http://loinc.org")
            .then(|| c["code"].as_str())
            .flatten()
    })
}

async fn chart_page(
    State(s): State<AppState>,
    v: Visitor,
    Path(id): Path<String>,
    q: Result<axum::extract::Query<ChartQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PortalError> {
    v.require(CLINICIAN)?;
    let claim_sent = q.ok().and_then(|q| q.0.claim).as_deref() == Some("sent");
    let bundle = match s.fhir.everything(&v.principal(), &id, BASE).await {
        Ok(b) => b,
        Err(crate::fhir::FhirError::NotFound(_) | crate::fhir::FhirError::Gone(_)) => {
            return Ok(denied(&v));
        }
        Err(e) => return Err(e.into()),
    };
    let resources: Vec<&Value> = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["resource"])
        .filter(|r| r["resourceType"] != "OperationOutcome")
        .collect();
    let patient = resources
        .iter()
        .find(|r| r["resourceType"] == "Patient" && r["id"] == id.as_str())
        .copied()
        .cloned()
        .unwrap_or(Value::Null);
    let mut groups: Vec<Group> = Vec::new();
    let mut series: Vec<Vec<(u64, f64, String)>> = vec![Vec::new(); VITALS.len()];
    let mut units = vec![String::new(); VITALS.len()];
    for r in resources.iter().filter(|r| r["id"] != id.as_str()) {
        let kind = r["resourceType"].as_str().unwrap_or("Record").to_owned();
        let date = summary::date(r).unwrap_or_default();
        let item = (
            r["id"].as_str().unwrap_or_default().to_owned(),
            summary::title(r),
            date.clone(),
        );
        match groups.iter_mut().find(|g| g.kind == kind) {
            Some(g) => g.items.push(item),
            None => groups.push(Group {
                kind,
                items: vec![item],
            }),
        }
        if let (Some(code), Some((value, unit)), Some(t)) =
            (loinc(r), summary::number(r), date_ms(&date))
            && let Some(k) = VITALS.iter().position(|(c, _)| *c == code)
        {
            series[k].push((t, value, format!("{date}: {value} {unit}")));
            units[k] = unit;
        }
    }
    for g in &mut groups {
        g.items.sort_by(|a, b| b.2.cmp(&a.2));
    }
    groups.sort_by(|a, b| a.kind.cmp(&b.kind));
    let trends = series
        .into_iter()
        .zip(units)
        .zip(VITALS)
        .filter(|((s, _), _)| !s.is_empty())
        .map(|((mut s, unit), (_, name))| {
            s.sort_by_key(|p| p.0);
            let latest = s.last().map(|p| p.2.clone()).unwrap_or_default();
            Trend {
                name: name.to_owned(),
                unit,
                line: chart::line(&s),
                latest,
            }
        })
        .collect();
    let name = summary::name(&patient);
    // Readable here means the chart was allowed: whether its account is still in the
    // node's custody decides if the patient can be invited to claim it.
    let claimable = match id.parse::<medledger_core::RecordId>() {
        Ok(rid) => {
            let owner = view(&s, &Caller::Person(v.principal()), move |st, _| {
                Ok(query::record(st, &rid)?.map(|r| r.state.patient))
            })
            .await?;
            match owner {
                Some(p) => s.fhir.in_custody(&p)?,
                None => false,
            }
        }
        Err(_) => false,
    };
    Ok(ok(&ChartPage {
        shell: Shell::of(&name, &v),
        patient: summary::lines(&patient),
        name,
        id,
        groups,
        trends,
        claimable,
        claim_sent,
        f: Fields::default(),
    }))
}

/// Milliseconds of a FHIR date or dateTime's day (enough for a trend line).
fn date_ms(d: &str) -> Option<u64> {
    let y: i64 = d.get(0..4)?.parse().ok()?;
    let m: u32 = d.get(5..7).and_then(|m| m.parse().ok()).unwrap_or(1);
    let day: u32 = d.get(8..10).and_then(|x| x.parse().ok()).unwrap_or(1);
    // Days from civil (inverse of `super::civil`).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days).ok().map(|d| d * 86_400_000)
}

async fn record(
    State(s): State<AppState>,
    v: Visitor,
    Path(id): Path<String>,
) -> Result<Response, PortalError> {
    v.require(CLINICIAN)?;
    match super::patient::read_record(&s, &v, &id, ("/clinician".into(), "Patients")).await {
        Ok(page) => Ok(ok(&page)),
        Err(PortalError::NotFound) => Ok(denied(&v)),
        Err(e) => Err(e),
    }
}

#[derive(Template)]
#[template(path = "portal/intake.html")]
struct Intake {
    shell: Shell,
    f: Fields,
}

async fn intake_page(v: Visitor) -> Result<Response, PortalError> {
    v.require(CLINICIAN)?;
    Ok(ok(&Intake {
        shell: Shell::of("Intake form", &v),
        f: Fields::default(),
    }))
}

/// The intake form's fields as FHIR resources: the Patient and up to two
/// Observations (weight, height); `None` where a field is wrong (its error is set).
fn intake_resources(f: &mut Fields) -> Option<(Option<AccountId>, Value, Vec<Value>)> {
    let account = match f.optional("account", 100) {
        None => None,
        Some(a) => {
            match a.parse::<AccountId>() {
                Ok(a) => Some(a),
                Err(_) => {
                    f.fail("account", "This is not an account id (did:key:z6Mk…). Leave it empty for a new patient.");
                    None
                }
            }
        }
    };
    let given = f.required("given", 100);
    let family = f.required("family", 100);
    let birth = f.optional("birth_date", 10);
    let age = f.optional("age", 3);
    let birth_date = match (birth, age) {
        (Some(b), _) => {
            let ok = b.len() == 10
                && date_ms(&b).is_some()
                && b.as_bytes()[4] == b'-'
                && b.as_bytes()[7] == b'-'
                && b[..4] >= *"1900"
                && b[..4] <= *"2100";
            if !ok {
                f.fail("birth_date", "Write the date as YYYY-MM-DD.");
            }
            Some(b)
        }
        (None, Some(a)) => match a.parse::<u32>() {
            Ok(a) if a <= 130 => {
                let (y, _, _) = super::civil((crate::reporter::now_ms() / 86_400_000) as i64);
                Some(format!("{}", y - a as i64))
            }
            _ => {
                f.fail("age", "Age in whole years, 0 to 130.");
                None
            }
        },
        (None, None) => {
            f.fail("birth_date", "Give a birth date or an age.");
            None
        }
    };
    let gender = f.get("gender").to_owned();
    if !["female", "male", "other", "unknown"].contains(&gender.as_str()) {
        f.fail("gender", "Choose one.");
    }
    let phone = f.optional("phone", 40);
    if let Some(p) = &phone
        && !p
            .chars()
            .all(|c| c.is_ascii_digit() || " +-().".contains(c))
    {
        f.fail("phone", "Digits, spaces and + - ( ) only.");
    }
    let email = f.optional("email", 254);
    if let Some(e) = &email
        && e.parse::<lettre::Address>().is_err()
    {
        f.fail("email", "This is not an e-mail address.");
    }
    let lines: Vec<String> = ["line1", "line2"]
        .iter()
        .filter_map(|k| f.optional(k, 200))
        .collect();
    let city = f.optional("city", 100);
    let state = f.optional("state", 100);
    let postal = f.optional("postal_code", 20);
    let weight = measure(f, "weight", 0.2, 700.0);
    let height = measure(f, "height", 20.0, 300.0);
    if !f.is_ok() {
        return None;
    }
    let mut patient = json!({
        "resourceType": "Patient",
        "name": [{"family": family, "given": [given]}],
        "gender": gender,
        "birthDate": birth_date?,
    });
    let mut telecom = Vec::new();
    if let Some(p) = phone {
        telecom.push(json!({"system": "phone", "value": p}));
    }
    if let Some(e) = email {
        telecom.push(json!({"system": "email", "value": e}));
    }
    if !telecom.is_empty() {
        patient["telecom"] = Value::Array(telecom);
    }
    if !lines.is_empty() || city.is_some() || state.is_some() || postal.is_some() {
        let mut a = json!({});
        if !lines.is_empty() {
            a["line"] = json!(lines);
        }
        for (k, v) in [("city", city), ("state", state), ("postalCode", postal)] {
            if let Some(v) = v {
                a[k] = json!(v);
            }
        }
        patient["address"] = json!([a]);
    }
    let today = {
        let (y, m, d) = super::civil((crate::reporter::now_ms() / 86_400_000) as i64);
        format!("{y:04}-{m:02}-{d:02}")
    };
    let obs = [
        (weight, "29463-7", "Body weight", "kg"),
        (height, "8302-2", "Body height", "cm"),
    ]
    .into_iter()
    .filter_map(|(v, code, display, unit)| {
        Some(json!({
            "resourceType": "Observation",
            "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
            "effectiveDateTime": today,
            "valueQuantity": {"value": v?, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
        }))
    })
    .collect();
    Some((account, patient, obs))
}

fn measure(f: &mut Fields, k: &str, lo: f64, hi: f64) -> Option<f64> {
    let v = f.optional(k, 12)?;
    match v.replace(',', ".").parse::<f64>() {
        Ok(x) if (lo..=hi).contains(&x) => Some((x * 10.0).round() / 10.0),
        _ => {
            f.fail(k, format!("A number from {lo} to {hi}."));
            None
        }
    }
}

async fn intake(State(s): State<AppState>, p: Posted) -> Result<Response, PortalError> {
    let Posted {
        visitor: v,
        mut fields,
    } = p;
    v.require(CLINICIAN)?;
    if let Some((account, patient, observations)) = intake_resources(&mut fields) {
        let who = v.principal();
        let created = match account {
            Some(a) => s.fhir.create_patient_for(&who, a, patient).await,
            None => s.fhir.create(&who, "Patient", patient).await,
        };
        match created {
            Ok(p) => {
                for mut o in observations {
                    o["subject"] = json!({"reference": format!("Patient/{}", p.id)});
                    s.fhir.create(&who, "Observation", o).await?;
                }
                return Ok(see_other(&format!("/clinician/patients/{}", p.id)));
            }
            Err(crate::fhir::FhirError::Ledger(r)) => fields.fail(
                "account",
                format!(
                    "The ledger refused: {}. The patient must give you (or your organisation) treatment access first.",
                    r.code().replace('_', " ")
                ),
            ),
            Err(crate::fhir::FhirError::Invalid(_)) => {
                fields.fail("form", "Some of these values are not valid in a health record.")
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(render(
        StatusCode::BAD_REQUEST,
        &Intake {
            shell: Shell::of("Intake form", &v),
            f: fields,
        },
    )
    .into_response())
}

#[derive(Template)]
#[template(path = "portal/break_glass.html")]
struct BreakGlass {
    shell: Shell,
    f: Fields,
    hours: u64,
    opened: bool,
}

fn break_glass_view(s: &AppState, v: &Visitor, f: Fields, opened: bool) -> BreakGlass {
    let hours = s.ledger.genesis().params.break_glass_ms / 3_600_000;
    BreakGlass {
        shell: Shell::of("Emergency access", v),
        f,
        hours,
        opened,
    }
}

const DOCTOR: &[Role] = &[Role::Doctor];

async fn break_glass_page(State(s): State<AppState>, v: Visitor) -> Result<Response, PortalError> {
    v.require(DOCTOR)?;
    Ok(ok(&break_glass_view(&s, &v, Fields::default(), false)))
}

/// Opens break-glass: a doctor's emergency access to one patient without a grant, with
/// a coded reason, for the consortium's fixed time. The ledger records it in the
/// patient's access log (highlighted) and sends the patient a notice.
async fn break_glass(State(s): State<AppState>, p: Posted) -> Result<Response, PortalError> {
    let Posted {
        visitor: v,
        mut fields,
    } = p;
    v.require(DOCTOR)?;
    let patient = match fields.required("patient", 100).parse::<AccountId>() {
        Ok(a) => Some(a),
        Err(_) => {
            fields.fail("patient", "Give the patient's account id (did:key:z6Mk…).");
            None
        }
    };
    let reason = match serde_json::from_value::<EmergencyReason>(Value::String(
        fields.get("reason").to_owned(),
    )) {
        Ok(r) => Some(r),
        Err(_) => {
            fields.fail("reason", "Choose the reason.");
            None
        }
    };
    if fields.get("confirm") != "yes" {
        fields.fail("confirm", "Confirm that this is an emergency.");
    }
    if let (true, Some(patient), Some(reason)) = (fields.is_ok(), patient, reason) {
        match s
            .auth
            .act(&v.principal(), Payload::BreakGlass { patient, reason })
            .await
        {
            Ok(_) => {
                // Straight to the patient's chart, now open through break-glass: the
                // first Patient resource of the account (one ledger walk, no decisions:
                // the chart decides and audits).
                let first = view(&s, &Caller::Person(v.principal()), move |st, _| {
                    for id in query::patient_records(st, &patient, None, usize::MAX)? {
                        if query::record(st, &id)?.is_some_and(|r| {
                            r.state.category.as_str() == "Patient" && !r.state.is_erased()
                        }) {
                            return Ok(Some(id));
                        }
                    }
                    Ok(None)
                })
                .await?;
                if let Some(id) = first {
                    return Ok(see_other(&format!("/clinician/patients/{id}")));
                }
                return Ok(ok(&break_glass_view(&s, &v, Fields::default(), true)));
            }
            Err(crate::auth::AuthError::Ledger(r)) => fields.fail(
                "patient",
                format!("The ledger refused: {}.", r.code().replace('_', " ")),
            ),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(render(
        StatusCode::BAD_REQUEST,
        &break_glass_view(&s, &v, fields, false),
    ))
}
