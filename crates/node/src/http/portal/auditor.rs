//! The auditor's page: the audit explorer (by patient, record or accessor, or a time
//! range; narrowed to allowed/refused and break-glass) and the chain's status. What
//! an auditor may see is `Viewer`'s rule (auditors oversee the whole trail); each
//! entry links to its transaction, whose inclusion proof `medledger proof inclusion`
//! checks offline against a signed tree head.

use super::form::Fields;
use super::patient::short;
use super::{PortalError, Shell, Visitor, render, when};
use crate::access::Viewer;
use crate::http::caller::Caller;
use crate::http::contracts::view;
use crate::state::AppState;
use askama::Template;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use medledger_core::{AccountId, RecordId, Role};
use medledger_ledger::contracts::query::{self, AuditFilter};
use serde::Deserialize;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/auditor", get(explorer))
        .route("/auditor/proof/{seq}", get(proof))
}

/// One audit entry's proof bundle as a file: the entry, the inclusion proof of the
/// transaction that recorded it and the signed tree head, checkable offline with
/// `medledger proof check FILE` against the checker's own genesis.
async fn proof(
    State(s): State<AppState>,
    v: Visitor,
    axum::extract::Path(seq): axum::extract::Path<String>,
) -> Result<Response, PortalError> {
    v.require(AUDITOR)?;
    let seq: u64 = seq.parse().map_err(|_| PortalError::NotFound)?;
    let entry =
        view(
            &s,
            &Caller::Person(v.principal()),
            move |st, viewer: &Viewer| {
                Ok(query::audit_entry(st, seq)?.filter(|e| viewer.sees_audit(e)))
            },
        )
        .await?
        .ok_or(PortalError::NotFound)?;
    let (tx, inclusion, tree_head) = crate::http::v1::proof_of(&s, &entry.tx)?;
    let bundle = crate::http::v1::ProofBundle {
        format: crate::http::v1::PROOF_FORMAT.to_owned(),
        chain_id: s.ledger.genesis().chain_id.to_string(),
        entry: serde_json::to_value(&entry).map_err(|e| PortalError::Internal(e.to_string()))?,
        tx,
        inclusion,
        tree_head,
    };
    let body =
        serde_json::to_vec_pretty(&bundle).map_err(|e| PortalError::Internal(e.to_string()))?;
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/json".to_owned(),
            ),
            (
                axum::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"medledger-proof-{seq}.json\""),
            ),
        ],
        body,
    )
        .into_response())
}

const AUDITOR: &[Role] = &[Role::Auditor];
/// Entries shown per query.
const PAGE: usize = 200;

#[derive(Deserialize, Default)]
struct Filters {
    patient: Option<String>,
    record: Option<String>,
    accessor: Option<String>,
    from: Option<String>,
    to: Option<String>,
    outcome: Option<String>,
    break_glass: Option<String>,
}

struct Row {
    seq: u64,
    when: String,
    patient: String,
    accessor: String,
    record: String,
    purpose: String,
    allowed: bool,
    reason: String,
    break_glass: bool,
    tx: String,
}

#[derive(Template)]
#[template(path = "portal/auditor.html")]
struct Explorer {
    shell: Shell,
    f: Fields,
    rows: Vec<Row>,
    status: super::status::ChainStatus,
    searched: bool,
}

/// A date `YYYY-MM-DD` as milliseconds at its start (UTC).
fn day_ms(d: &str) -> Option<u64> {
    let b = d.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, day): (i64, i64, i64) = (
        d[..4].parse().ok()?,
        d[5..7].parse().ok()?,
        d[8..].parse().ok()?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    u64::try_from(days).ok().map(|d| d * 86_400_000)
}

async fn explorer(
    State(s): State<AppState>,
    v: Visitor,
    q: Result<Query<Filters>, QueryRejection>,
) -> Result<Response, PortalError> {
    v.require(AUDITOR)?;
    let q = q.map(|Query(q)| q).unwrap_or_default();
    let mut f = Fields::default();
    for (k, val) in [
        ("patient", &q.patient),
        ("record", &q.record),
        ("accessor", &q.accessor),
        ("from", &q.from),
        ("to", &q.to),
        ("outcome", &q.outcome),
        ("break_glass", &q.break_glass),
    ] {
        if let Some(x) = val {
            f.set(k, x.as_str());
        }
    }
    let patient = f.optional("patient", 100);
    let record = f.optional("record", 100);
    let accessor = f.optional("accessor", 100);
    let (from, to) = (f.optional("from", 10), f.optional("to", 10));
    let mut filter = None;
    if let Some(p) = patient {
        match p.parse::<AccountId>() {
            Ok(a) => filter = Some(AuditFilter::Patient(a)),
            Err(_) => f.fail("patient", "An account id (did:key:z6Mk…)."),
        }
    } else if let Some(r) = record {
        match r.parse::<RecordId>() {
            Ok(r) => filter = Some(AuditFilter::Record(r)),
            Err(_) => f.fail("record", "A record id (64 hexadecimal digits)."),
        }
    } else if let Some(a) = accessor {
        match a.parse::<AccountId>() {
            Ok(a) => filter = Some(AuditFilter::Accessor(a)),
            Err(_) => f.fail("accessor", "An account id (did:key:z6Mk…)."),
        }
    }
    let range = match (from.as_deref().map(day_ms), to.as_deref().map(day_ms)) {
        (Some(None), _) => {
            f.fail("from", "Write the date as YYYY-MM-DD.");
            None
        }
        (_, Some(None)) => {
            f.fail("to", "Write the date as YYYY-MM-DD.");
            None
        }
        (a, b) => {
            let lo = a.flatten().unwrap_or(0);
            let hi = b.flatten().map_or(u64::MAX, |t| t + 86_400_000);
            if lo >= hi {
                f.fail("to", "The end must be after the start.");
            }
            Some((lo, hi))
        }
    };
    let searched = filter.is_some() || from.is_some() || to.is_some();
    let outcome = f.get("outcome").to_owned();
    let only_bg = f.get("break_glass") == "on";
    let mut rows = Vec::new();
    if f.is_ok() && searched {
        let (lo, hi) = range.unwrap_or((0, u64::MAX));
        let filter = filter.unwrap_or(AuditFilter::Time {
            from_ms: lo,
            to_ms: hi,
        });
        let entries = view(
            &s,
            &Caller::Person(v.principal()),
            move |st, viewer: &Viewer| {
                let mut e = match &filter {
                    AuditFilter::Time { .. } => query::audit(st, &filter, None, PAGE * 5)?,
                    _ => query::audit_latest(st, &filter, None, PAGE * 5)?,
                };
                e.retain(|e| {
                    viewer.sees_audit(e)
                        && (lo..hi).contains(&e.time_ms)
                        && match outcome.as_str() {
                            "allowed" => e.allowed,
                            "refused" => !e.allowed,
                            _ => true,
                        }
                        && (!only_bg || e.break_glass)
                });
                e.truncate(PAGE);
                Ok(e)
            },
        )
        .await?;
        rows = entries
            .into_iter()
            .map(|e| Row {
                seq: e.seq,
                when: when(e.time_ms),
                patient: e.patient.as_ref().map(short).unwrap_or_default(),
                accessor: short(&e.accessor),
                record: e.record.map(|r| r.to_string()).unwrap_or_default(),
                purpose: e.purpose.to_string(),
                allowed: e.allowed,
                reason: e.reason.replace('_', " "),
                break_glass: e.break_glass,
                tx: e.tx.to_string(),
            })
            .collect();
    }
    let status = f.status();
    Ok(render(
        status,
        &Explorer {
            shell: Shell::of("Audit explorer", &v),
            f,
            rows,
            status: super::status::of(&s),
            searched,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::day_ms;

    #[test]
    fn dates_start_their_day() {
        assert_eq!(day_ms("1970-01-02"), Some(86_400_000));
        assert_eq!(day_ms("2024-03-01"), Some(1_709_251_200_000));
        for bad in ["2024-13-01", "2024-1-01", "yesterday", "2024-02-00"] {
            assert_eq!(day_ms(bad), None, "{bad}");
        }
    }
}
