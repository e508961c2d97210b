//! The web portal: server-rendered pages for every role, one module per area, on the
//! same caller rules as the APIs. A page's visitor comes from the session cookie
//! through [`caller::cookie_session`] (the one place that decides the cookie, CSRF and
//! second-factor rules; a form presents its CSRF token in a hidden field instead of a
//! header), and everything a page shows or changes goes through the same services and
//! visibility rules ([`crate::access::Viewer`], the ledger's `can`, the FHIR service)
//! as `/v1` and `/fhir`. Pages work without JavaScript; the node serves every asset.
//!
//! | module | pages |
//! | --- | --- |
//! | [`account`] | landing, sign-in, registration, e-mail verification, second factor, sign-out |
//! | [`patient`] | records, permissions, access log, export |
//! | [`clinician`] | patient finder, chart, intake form, break-glass |
//! | [`messages`] | the patient's messages and access requests, the clinician's requests |
//! | [`agreements`] | paid agreements: the patient's answers and balance, the insurer's proposals and reads |
//! | [`consortium`] | the consortium operator's organisations, nodes and minting |
//! | [`documents`] | document upload (DocumentReference) and file downloads |
//! | [`claim`] | claiming an account a clinic created (the invitation and the claim page) |
//! | [`admin`] | pending registrations, members, patient invitations |
//! | [`auditor`] | audit explorer, chain status |
//! | [`form`] | form fields, their errors and the CSRF-checked form extractor |

mod account;
mod admin;
mod agreements;
mod auditor;
mod chart;
mod claim;
mod clinician;
mod consortium;
mod documents;
mod form;
mod messages;

pub use account::DemoAccount;
mod patient;
mod status;
mod summary;

use crate::auth::{AuthError, Session};
use crate::http::caller::{self, Intent};
use crate::http::error::ApiError;
use crate::state::AppState;
use askama::Template;
use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use medledger_core::Role;
use std::sync::Arc;

/// Largest form a page accepts (the intake form is the biggest, a few KiB).
pub const MAX_FORM_BYTES: usize = 64 * 1024;

pub fn routes(per_client: Arc<crate::http::limits::PerClient>) -> Router<AppState> {
    Router::new()
        .route("/assets/portal.css", get(stylesheet))
        .merge(account::routes(per_client.clone()))
        .merge(claim::routes(per_client))
        .merge(patient::routes())
        .merge(clinician::routes())
        .merge(admin::routes())
        .merge(auditor::routes())
        .merge(messages::routes())
        .merge(agreements::routes())
        .merge(consortium::routes())
        .merge(documents::routes())
        .layer(axum::middleware::from_fn(security_headers))
}

const STYLESHEET: &str = include_str!("../../../assets/portal.css");

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        STYLESHEET,
    )
        .into_response()
}

/// Pages carry personal data and one-time links: nothing is cached, no other site may
/// frame them or receive their address as a referrer, and only the node's own
/// stylesheet and images load.
async fn security_headers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    secured(next.run(req).await)
}

/// A portal response with the headers every page carries.
pub fn secured(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// What every page's layout needs: its title, and the signed-in person (if any) for
/// the navigation and the sign-out form's CSRF token.
pub struct Shell {
    pub title: String,
    pub who: Option<Nav>,
}

/// The navigation of a signed-in person.
pub struct Nav {
    pub name: String,
    pub role: Role,
    pub csrf: String,
    /// (path, label) of the pages of their role.
    pub links: Vec<(&'static str, &'static str)>,
}

impl Shell {
    pub fn public(title: &str) -> Self {
        Shell {
            title: title.to_owned(),
            who: None,
        }
    }

    pub fn of(title: &str, v: &Visitor) -> Self {
        Shell {
            title: title.to_owned(),
            who: Some(Nav {
                name: v.name.clone(),
                role: v.session.role,
                csrf: v.session.csrf.clone(),
                links: {
                    let mut l = links(v.session.role);
                    if v.operator {
                        l.insert(l.len() - 1, ("/consortium", "Consortium"));
                    }
                    l
                },
            }),
        }
    }

    pub fn role_label(&self) -> &'static str {
        self.who.as_ref().map_or("", |n| role_label(n.role))
    }
}

pub fn role_label(r: Role) -> &'static str {
    match r {
        Role::Patient => "Patient",
        Role::Doctor => "Doctor",
        Role::Nurse => "Nurse",
        Role::HospitalAdmin => "Hospital admin",
        Role::Researcher => "Researcher",
        Role::Insurer => "Insurer",
        Role::Auditor => "Auditor",
    }
}

/// The home page of a role.
pub fn home(r: Role) -> &'static str {
    match r {
        Role::Patient => "/patient",
        Role::Doctor | Role::Nurse => "/clinician",
        Role::HospitalAdmin => "/admin",
        Role::Auditor => "/auditor",
        Role::Insurer => "/insurer",
        _ => "/account",
    }
}

fn links(r: Role) -> Vec<(&'static str, &'static str)> {
    let mut l = match r {
        Role::Patient => vec![
            ("/patient", "My records"),
            ("/patient/permissions", "Permissions"),
            ("/patient/access-log", "Access log"),
            ("/patient/messages", "Messages"),
            ("/patient/agreements", "Agreements"),
        ],
        Role::Doctor => vec![
            ("/clinician", "Patients"),
            ("/clinician/intake", "Intake form"),
            ("/clinician/requests", "Access requests"),
            ("/clinician/break-glass", "Emergency access"),
        ],
        Role::Nurse => vec![
            ("/clinician", "Patients"),
            ("/clinician/intake", "Intake form"),
            ("/clinician/requests", "Access requests"),
        ],
        Role::HospitalAdmin => vec![("/admin", "Registrations and members")],
        Role::Auditor => vec![("/auditor", "Audit explorer")],
        Role::Insurer => vec![("/insurer", "Agreements")],
        _ => vec![],
    };
    l.push(("/account", "Account"));
    l
}

/// What a form says when the ledger refused what it asked: the reason's code in
/// words (codes carry no personal data).
pub fn ledger_refused(r: &medledger_core::RejectReason) -> String {
    format!("The ledger refused this ({}).", r.code().replace('_', " "))
}

/// Renders a page (a template failure is a 500 page, never a panic).
pub fn render(status: StatusCode, t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "portal template failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Html("<!doctype html><title>Error</title><p>Something went wrong.</p>"),
            )
                .into_response()
        }
    }
}

pub fn ok(t: &impl Template) -> Response {
    render(StatusCode::OK, t)
}

/// A signed-in visitor, from the session cookie (its rules: [`caller::cookie_session`]).
/// Without one, the visitor is sent to sign in; a clinician or admin without a
/// second factor is sent to set it up; a person whose role has ended is signed out.
pub struct Visitor {
    pub token: String,
    pub session: Session,
    pub name: String,
    /// Holds the consortium admin account (the consortium operator's page).
    pub operator: bool,
}

impl Visitor {
    /// Identifies the visitor of a request that presents `intent`.
    pub fn identify(
        s: &AppState,
        parts: &Parts,
        intent: Intent<'_>,
        allow_mfa_setup: bool,
    ) -> Result<Visitor, PortalError> {
        let next = parts.uri.path().to_owned();
        let (token, session) =
            match caller::cookie_session(s, &parts.headers, intent, allow_mfa_setup) {
                Ok(Some(x)) => x,
                Ok(None) | Err(AuthError::NoSession) => return Err(PortalError::SignIn(next)),
                Err(AuthError::MfaSetupRequired) => return Err(PortalError::MfaSetup),
                Err(AuthError::BadCsrf) => return Err(PortalError::Csrf),
                Err(e) => return Err(PortalError::from(ApiError::from(e))),
            };
        // The same liveness rule as every other surface: no session outlives its role.
        let Ok(account) = caller::live_account(s, &crate::auth::Principal::from(&session)) else {
            s.auth.logout(&token);
            return Err(PortalError::SignIn(next));
        };
        let name = s
            .auth
            .me(&session.account)
            .map(|m| m.name)
            .unwrap_or_default();
        let operator = account.consortium_admin;
        Ok(Visitor {
            token,
            session,
            name,
            operator,
        })
    }

    /// 403 unless the visitor holds the consortium admin account.
    pub fn require_operator(&self) -> Result<(), PortalError> {
        if self.operator {
            Ok(())
        } else {
            Err(PortalError::Forbidden(
                "This page belongs to the consortium operator.".into(),
            ))
        }
    }

    /// 403 unless the visitor has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), PortalError> {
        if roles.contains(&self.session.role) {
            Ok(())
        } else {
            Err(PortalError::Forbidden(
                "This page belongs to another role.".into(),
            ))
        }
    }

    pub fn principal(&self) -> crate::auth::Principal {
        crate::auth::Principal::from(&self.session)
    }
}

impl FromRequestParts<AppState> for Visitor {
    type Rejection = PortalError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, PortalError> {
        Visitor::identify(s, parts, Intent::Read, false)
    }
}

/// Why a page cannot be shown, as the page that says so.
#[derive(Debug)]
pub enum PortalError {
    /// Not signed in: to the sign-in page, then back to this path.
    SignIn(String),
    /// Signed in, but the second factor is not set up yet.
    MfaSetup,
    /// A form without this session's CSRF token.
    Csrf,
    Forbidden(String),
    /// Absent, or not the visitor's to see (the two look alike).
    NotFound,
    BadRequest(String),
    TooMany(String),
    Unavailable,
    Internal(String),
}

#[derive(Template)]
#[template(path = "portal/error.html")]
struct ErrorPage {
    shell: Shell,
    heading: String,
    message: String,
}

impl IntoResponse for PortalError {
    fn into_response(self) -> Response {
        let (status, heading, message) = match self {
            PortalError::SignIn(next) => {
                let to = if next.starts_with('/') && !next.starts_with("//") {
                    format!("/signin?next={}", percent(&next))
                } else {
                    "/signin".to_owned()
                };
                return Redirect::to(&to).into_response();
            }
            PortalError::MfaSetup => return Redirect::to("/mfa").into_response(),
            PortalError::Csrf => (
                StatusCode::FORBIDDEN,
                "This form has expired",
                "The form did not carry this session's security token. Go back, reload the page and try again.".to_owned(),
            ),
            PortalError::Forbidden(m) => (StatusCode::FORBIDDEN, "Not allowed", m),
            PortalError::NotFound => (
                StatusCode::NOT_FOUND,
                "Not found",
                "There is nothing here, or nothing you may see.".to_owned(),
            ),
            PortalError::BadRequest(m) => (StatusCode::BAD_REQUEST, "That did not work", m),
            PortalError::TooMany(m) => (StatusCode::TOO_MANY_REQUESTS, "Too many attempts", m),
            PortalError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Busy",
                "The node is busy. Try again in a moment.".to_owned(),
            ),
            PortalError::Internal(detail) => {
                tracing::error!(%detail, "portal internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong",
                    "The node could not complete this. Nothing was changed by the failed step."
                        .to_owned(),
                )
            }
        };
        render(
            status,
            &ErrorPage {
                shell: Shell::public(heading),
                heading: heading.to_owned(),
                message,
            },
        )
    }
}

impl From<ApiError> for PortalError {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::NotFound(_) => PortalError::NotFound,
            ApiError::BadRequest(m) => PortalError::BadRequest(m),
            ApiError::Unauthenticated(_) => PortalError::SignIn("/".into()),
            ApiError::Forbidden(m) => PortalError::Forbidden(m),
            ApiError::Unavailable(_) => PortalError::Unavailable,
            ApiError::TooLarge(m) => PortalError::BadRequest(m),
            ApiError::Refused {
                status, message, ..
            } => match status {
                StatusCode::UNAUTHORIZED => PortalError::SignIn("/".into()),
                StatusCode::FORBIDDEN => PortalError::Forbidden(message),
                StatusCode::TOO_MANY_REQUESTS => PortalError::TooMany(message),
                StatusCode::NOT_FOUND => PortalError::NotFound,
                _ => PortalError::BadRequest(message),
            },
            ApiError::Internal(m) => PortalError::Internal(m),
        }
    }
}

impl From<AuthError> for PortalError {
    fn from(e: AuthError) -> Self {
        PortalError::from(ApiError::from(e))
    }
}

impl From<medledger_ledger::LedgerError> for PortalError {
    fn from(e: medledger_ledger::LedgerError) -> Self {
        PortalError::from(ApiError::from(e))
    }
}

impl From<crate::fhir::FhirError> for PortalError {
    fn from(e: crate::fhir::FhirError) -> Self {
        use crate::fhir::FhirError as F;
        match e {
            F::NotFound(_) | F::Gone(_) => PortalError::NotFound,
            F::Forbidden(m) => PortalError::Forbidden(m),
            F::Unauthenticated => PortalError::SignIn("/".into()),
            F::Unavailable(_) => PortalError::Unavailable,
            F::Ledger(r) => PortalError::BadRequest(format!(
                "The ledger refused this: {}.",
                r.code().replace('_', " ")
            )),
            F::Invalid(issues) => PortalError::BadRequest(
                issues
                    .iter()
                    .map(|i| i.diagnostics.clone())
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            F::Conflict(m) | F::TooLarge(m) | F::PreconditionFailed(m) | F::NotSupported(m) => {
                PortalError::BadRequest(m)
            }
            other => PortalError::Internal(other.to_string()),
        }
    }
}

/// Percent-encodes a path for a query parameter.
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A redirect after a successful form post (303: the browser follows with GET, so a
/// reload does not post again).
pub fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// Date and time of milliseconds since the epoch, UTC, for people.
pub fn when(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_723), (2024, 1, 1));
        assert_eq!(civil(19_782), (2024, 2, 29));
        assert_eq!(when(1_700_000_000_000), "2023-11-14 22:13 UTC");
    }

    #[test]
    fn sign_in_redirect_keeps_only_local_paths() {
        let r = PortalError::SignIn("//evil.example/x".into()).into_response();
        assert_eq!(r.headers()[header::LOCATION], "/signin");
        let r = PortalError::SignIn("/patient/records/ab".into()).into_response();
        assert_eq!(
            r.headers()[header::LOCATION],
            "/signin?next=/patient/records/ab"
        );
    }
}
