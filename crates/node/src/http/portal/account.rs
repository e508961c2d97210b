//! Pages of one's own account: landing, sign-in (password, then a TOTP or recovery
//! code), staff registration and patient registration through an invitation link,
//! e-mail verification, second-factor set-up (QR code rendered by the node), password
//! recovery (own recovery code, or an organisation-assisted link), sign-out here and
//! everywhere. The decisions are the sign-in service's ([`crate::auth::Auth`]).

use super::form::{Fields, Posted, Public, pre_token, with_pre};
use super::{PortalError, Shell, Visitor, home, ok, render, role_label, see_other};
use crate::auth::{AuthError, RegisterRequest};
use crate::http::auth::{clear_cookie, session_cookie};
use crate::http::caller::Intent;
use crate::http::limits::PerClient;
use crate::state::AppState;
use askama::Template;
use axum::extract::{OptionalFromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Router, extract::FromRequestParts};
use medledger_core::{OrgId, Role};
use serde::Deserialize;
use std::sync::Arc;

pub fn routes(per_client: Arc<PerClient>) -> Router<AppState> {
    // The forms that run a password KDF share the API's per-client budget.
    let expensive = Router::new()
        .route("/signin", post(signin))
        .route("/register", post(register))
        .route("/recover", post(recover))
        .route("/recovery", post(recovery_complete))
        .route_layer(axum::middleware::from_fn_with_state(
            per_client,
            crate::http::limits::expensive,
        ));
    Router::new()
        .merge(expensive)
        .route("/", get(landing))
        .route("/signin", get(signin_page))
        .route("/signout", post(signout))
        .route("/signout-all", post(signout_all))
        .route("/register", get(register_page))
        .route("/verify", get(verify))
        .route("/mfa", get(mfa_page).post(mfa_confirm))
        .route("/mfa/start", post(mfa_start))
        .route("/account", get(account))
        .route("/account/password", post(change_password))
        .route("/recover", get(recover_page))
        .route("/recovery", get(recovery_page))
}

impl OptionalFromRequestParts<AppState> for Visitor {
    type Rejection = PortalError;

    async fn from_request_parts(
        parts: &mut Parts,
        s: &AppState,
    ) -> Result<Option<Self>, PortalError> {
        match Visitor::identify(s, parts, Intent::Read, false) {
            Ok(v) => Ok(Some(v)),
            Err(PortalError::SignIn(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A visitor who may not have set up their second factor yet (the set-up pages).
pub struct SettingUp(Visitor);

impl FromRequestParts<AppState> for SettingUp {
    type Rejection = PortalError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, PortalError> {
        Visitor::identify(s, parts, Intent::Read, true).map(SettingUp)
    }
}

#[derive(Template)]
#[template(path = "portal/landing.html")]
struct Landing {
    shell: Shell,
}

async fn landing(v: Option<Visitor>) -> Response {
    match v {
        Some(v) => see_other(home(v.session.role)),
        None => ok(&Landing {
            shell: Shell::public("medledger"),
        }),
    }
}

/// One demo account as the sign-in page shows it (only a node started by
/// `medledger demo` has any).
#[derive(Debug, Clone)]
pub struct DemoAccount {
    pub role: Role,
    pub email: String,
    pub password: String,
    /// Base32 TOTP secret, for staff (the page shows the current code).
    pub totp: Option<String>,
}

/// A demo account with its current code, for the template.
struct DemoRow {
    role: &'static str,
    email: String,
    password: String,
    code: String,
}

fn demo_rows(s: &AppState) -> Vec<DemoRow> {
    // The next step's code: the demo used the current one to set the factor up, each
    // code works once, and sign-in accepts one step either side.
    let now = crate::reporter::now_ms() / 1000 + 30;
    s.demo
        .read()
        .map(|d| d.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|a| DemoRow {
            role: role_label(a.role),
            code: a
                .totp
                .as_deref()
                .and_then(|b32| data_encoding::BASE32_NOPAD.decode(b32.as_bytes()).ok())
                .and_then(|k| crate::auth::secrets::totp(&k).ok())
                .map(|t| t.generate(now).to_string())
                .unwrap_or_default(),
            email: a.email,
            password: a.password,
        })
        .collect()
}

#[derive(Template)]
#[template(path = "portal/signin.html")]
struct SignIn {
    shell: Shell,
    f: Fields,
    pre: String,
    demo: Vec<DemoRow>,
}

#[derive(Deserialize)]
struct Next {
    next: Option<String>,
}

/// A path on this node to return to after sign-in: only characters a portal path
/// uses (no whitespace or control characters, which browsers strip and so turn
/// `/\t/host` into `//host`), starting with one slash.
fn local_path(p: &str) -> Option<&str> {
    let plain = p
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/-_.~?=&%".contains(&b));
    (plain && p.starts_with('/') && !p.starts_with("//") && p.len() <= 512).then_some(p)
}

async fn signin_page(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<Next>, axum::extract::rejection::QueryRejection>,
    v: Option<Visitor>,
) -> Result<Response, PortalError> {
    if let Some(v) = v {
        return Ok(see_other(home(v.session.role)));
    }
    let (pre, new) = pre_token(&headers)?;
    let mut f = Fields::default();
    if let Some(n) = q
        .ok()
        .and_then(|Query(q)| q.next)
        .as_deref()
        .and_then(local_path)
    {
        f.set("next", n);
    }
    let page = SignIn {
        shell: Shell::public("Sign in"),
        f,
        demo: demo_rows(&s),
        pre: pre.clone(),
    };
    Ok(with_pre(ok(&page), &pre, new))
}

async fn signin(State(s): State<AppState>, Public { mut fields }: Public) -> Response {
    let email = fields.required("email", 254);
    if fields.get("password").is_empty() {
        fields.fail("password", "Fill this in.");
    }
    let code = fields.optional("code", 64);
    if fields.is_ok() {
        let password = fields.get("password").to_owned();
        match s.auth.login(&email, &password, code.as_deref()).await {
            Ok(done) => {
                let to = if done.mfa_setup_required {
                    "/mfa".to_owned()
                } else {
                    local_path(fields.get("next"))
                        .unwrap_or(home(done.role))
                        .to_owned()
                };
                let mut resp = see_other(&to);
                match session_cookie(&done.token) {
                    Ok(c) => {
                        resp.headers_mut().insert(header::SET_COOKIE, c);
                    }
                    Err(e) => return PortalError::from(e).into_response(),
                }
                return resp;
            }
            Err(AuthError::BadCredentials) => {
                fields.fail("password", "Wrong e-mail address or password.")
            }
            Err(AuthError::MfaRequired) => fields.fail(
                "code",
                "Enter the 6-digit code from your authenticator app, or a recovery code.",
            ),
            Err(AuthError::BadCode) => {
                fields.fail("code", "Wrong or already used code. Wait for the next one.")
            }
            Err(
                e @ (AuthError::Locked
                | AuthError::RateLimited
                | AuthError::EmailUnverified
                | AuthError::PendingApproval),
            ) => fields.fail("form", capitalise(&e.to_string())),
            Err(e) => return PortalError::from(e).into_response(),
        }
    }
    let pre = fields.get("pre").to_owned();
    render(
        StatusCode::BAD_REQUEST,
        &SignIn {
            shell: Shell::public("Sign in"),
            f: fields,
            demo: demo_rows(&s),
            pre,
        },
    )
}

pub(super) fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect::<String>() + ".",
        None => String::new(),
    }
}

async fn signout(State(s): State<AppState>, p: Posted<true>) -> Response {
    s.auth.logout(&p.visitor.token);
    clear_cookie(see_other("/signin"))
}

async fn signout_all(State(s): State<AppState>, p: Posted<true>) -> Result<Response, PortalError> {
    s.auth.logout_all(&p.visitor.session.account)?;
    Ok(clear_cookie(see_other("/signin")))
}

#[derive(Template)]
#[template(path = "portal/register.html")]
struct Register {
    shell: Shell,
    f: Fields,
    pre: String,
    invited: bool,
    roles: Vec<(&'static str, &'static str)>,
}

#[derive(Template)]
#[template(path = "portal/registered.html")]
pub(super) struct Registered {
    pub shell: Shell,
    pub codes: Vec<String>,
    pub staff: bool,
}

/// Roles that register themselves (patients come through an invitation).
const STAFF_ROLES: [(&str, &str); 6] = [
    ("doctor", "Doctor"),
    ("nurse", "Nurse"),
    ("hospital_admin", "Hospital admin"),
    ("researcher", "Researcher"),
    ("insurer", "Insurer"),
    ("auditor", "Auditor"),
];

#[derive(Deserialize)]
struct Invite {
    invite: Option<String>,
}

async fn register_page(
    headers: HeaderMap,
    q: Result<Query<Invite>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PortalError> {
    let (pre, new) = pre_token(&headers)?;
    let mut f = Fields::default();
    let invite = q
        .ok()
        .and_then(|Query(q)| q.invite)
        .filter(|i| !i.is_empty());
    if let Some(i) = &invite {
        f.set("invite", i.as_str());
    }
    let page = Register {
        shell: Shell::public(if invite.is_some() {
            "Create your patient account"
        } else {
            "Register as staff"
        }),
        invited: invite.is_some(),
        f,
        pre: pre.clone(),
        roles: STAFF_ROLES.to_vec(),
    };
    Ok(with_pre(ok(&page), &pre, new))
}

async fn register(State(s): State<AppState>, Public { mut fields }: Public) -> Response {
    let invite = fields.optional("invite", 128);
    let name = fields.required("name", 200);
    let email = fields.required("email", 254);
    let password = fields.get("password").to_owned();
    if password.is_empty() {
        fields.fail("password", "Fill this in.");
    }
    if password != fields.get("password2") {
        fields.fail("password2", "The two passwords differ.");
    }
    let (mut org, mut role) = (None, None);
    if invite.is_none() {
        let o = fields.required("org", 64);
        match o.parse::<OrgId>() {
            Ok(o) => org = Some(o),
            Err(_) if fields.has_err("org") => {}
            Err(_) => fields.fail(
                "org",
                "Use the organisation's id: lower-case letters, digits and dashes.",
            ),
        }
        match serde_json::from_value::<Role>(serde_json::Value::String(
            fields.get("role").to_owned(),
        )) {
            Ok(r) if r != Role::Patient => role = Some(r),
            _ => fields.fail("role", "Choose a role."),
        }
    }
    if fields.is_ok() {
        let req = RegisterRequest {
            name,
            email,
            password,
            org,
            role,
            invite: invite.clone(),
        };
        match s.auth.register(req).await {
            Ok(r) => {
                return ok(&Registered {
                    shell: Shell::public("Registered"),
                    codes: r.recovery_codes,
                    staff: invite.is_none(),
                });
            }
            Err(AuthError::WeakPassword(m)) => fields.fail("password", capitalise(&m)),
            Err(AuthError::Invalid(what)) if what.contains("email") => {
                fields.fail("email", "This is not an e-mail address.")
            }
            Err(AuthError::Invalid(what)) if what.contains("name") => {
                fields.fail("name", "Use 1 to 200 ordinary characters.")
            }
            Err(AuthError::BadLink) => fields.fail(
                "form",
                "This invitation link is invalid, has expired or was already used. Ask your care team for a new one.",
            ),
            Err(e @ (AuthError::Forbidden(_) | AuthError::Ledger(_) | AuthError::Invalid(_))) => {
                fields.fail("form", capitalise(&e.to_string()))
            }
            Err(e @ (AuthError::RateLimited | AuthError::EmailTaken)) => {
                fields.fail("form", capitalise(&e.to_string()))
            }
            Err(e) => return PortalError::from(e).into_response(),
        }
    }
    let pre = fields.get("pre").to_owned();
    let invited = invite.is_some();
    render(
        StatusCode::BAD_REQUEST,
        &Register {
            shell: Shell::public("Register"),
            f: fields,
            pre,
            invited,
            roles: STAFF_ROLES.to_vec(),
        },
    )
}

#[derive(Template)]
#[template(path = "portal/message.html")]
struct Message {
    shell: Shell,
    heading: String,
    text: String,
    link: Option<(&'static str, &'static str)>,
}

#[derive(Deserialize)]
struct Token {
    token: Option<String>,
}

async fn verify(
    State(s): State<AppState>,
    q: Result<Query<Token>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let token = q.ok().and_then(|Query(q)| q.token).unwrap_or_default();
    match s.auth.verify_email(&token) {
        Ok(()) => ok(&Message {
            shell: Shell::public("E-mail verified"),
            heading: "E-mail address verified".into(),
            text: "Thank you. You can sign in now (staff: once an administrator of your organisation has approved you).".into(),
            link: Some(("/signin", "Sign in")),
        }),
        Err(AuthError::BadLink) => render(
            StatusCode::BAD_REQUEST,
            &Message {
                shell: Shell::public("Link not valid"),
                heading: "This link does not work".into(),
                text: "It is invalid, has expired or was already used.".into(),
                link: Some(("/signin", "Sign in")),
            },
        ),
        Err(e) => PortalError::from(e).into_response(),
    }
}

#[derive(Template)]
#[template(path = "portal/mfa.html")]
struct Mfa {
    shell: Shell,
    f: Fields,
    secret: Option<String>,
    qr: Option<String>,
}

/// The otpauth URI as a QR code, an SVG data URI (the page loads nothing else).
fn qr_data_uri(uri: &str) -> Result<String, PortalError> {
    use base64::Engine;
    let code = qrcode::QrCode::new(uri.as_bytes())
        .map_err(|e| PortalError::Internal(format!("qr: {e}")))?;
    let svg = code
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(220, 220)
        .build();
    Ok(format!(
        "data:image/svg+xml;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(svg)
    ))
}

fn mfa_view(s: &AppState, v: &Visitor, f: Fields) -> Result<Mfa, PortalError> {
    let pending = s.auth.totp_pending(&v.session)?;
    let qr = pending
        .as_ref()
        .map(|(_, uri)| qr_data_uri(uri))
        .transpose()?;
    Ok(Mfa {
        shell: Shell::of("Second factor", v),
        f,
        secret: pending.map(|(b32, _)| b32),
        qr,
    })
}

async fn mfa_page(
    State(s): State<AppState>,
    SettingUp(v): SettingUp,
) -> Result<Response, PortalError> {
    if v.session.mfa_ok && s.auth.me(&v.session.account)?.mfa {
        return Ok(see_other("/account"));
    }
    Ok(ok(&mfa_view(&s, &v, Fields::default())?))
}

async fn mfa_start(State(s): State<AppState>, p: Posted<true>) -> Result<Response, PortalError> {
    match s.auth.totp_setup(&p.visitor.session) {
        Ok(_) | Err(AuthError::Forbidden(_)) => Ok(see_other("/mfa")),
        Err(e) => Err(e.into()),
    }
}

async fn mfa_confirm(State(s): State<AppState>, p: Posted<true>) -> Result<Response, PortalError> {
    let Posted {
        visitor: v,
        mut fields,
    } = p;
    let code = fields.required("code", 12);
    if fields.is_ok() {
        match s.auth.totp_confirm(&v.token, &v.session, &code) {
            Ok(()) => return Ok(see_other(home(v.session.role))),
            Err(AuthError::BadCode) => fields.fail(
                "code",
                "That code is wrong or was already used. Enter the current one.",
            ),
            Err(AuthError::MfaSetupRequired) => fields.fail("form", "Start the set-up first."),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(render(StatusCode::BAD_REQUEST, &mfa_view(&s, &v, fields)?))
}

#[derive(Template)]
#[template(path = "portal/account.html")]
struct Account {
    shell: Shell,
    me: crate::auth::Me,
    role: &'static str,
    did: String,
    f: Fields,
}

fn account_page(s: &AppState, v: &Visitor, f: Fields) -> Result<Account, PortalError> {
    let me = s.auth.me(&v.session.account)?;
    Ok(Account {
        shell: Shell::of("Account", v),
        role: role_label(me.role),
        did: me.account.to_did(),
        me,
        f,
    })
}

async fn account(State(s): State<AppState>, v: Visitor) -> Result<Response, PortalError> {
    Ok(ok(&account_page(&s, &v, Fields::default())?))
}

/// Changes the password; every session ends, so the person signs in again with it.
async fn change_password(State(s): State<AppState>, p: Posted) -> Result<Response, PortalError> {
    let Posted {
        visitor: v,
        mut fields,
    } = p;
    let current = fields.get("current_password").to_owned();
    if current.is_empty() {
        fields.fail("current_password", "Fill this in.");
    }
    let password = new_password(&mut fields);
    if fields.is_ok() {
        match s
            .auth
            .change_password(&v.session, &current, &password)
            .await
        {
            Ok(()) => return Ok(clear_cookie(password_set())),
            Err(AuthError::BadCredentials) => {
                fields.fail("current_password", "This is not your current password.")
            }
            Err(AuthError::WeakPassword(m)) => fields.fail("new_password", capitalise(&m)),
            Err(e @ (AuthError::Locked | AuthError::RateLimited)) => {
                fields.fail("form", capitalise(&e.to_string()))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(render(
        StatusCode::BAD_REQUEST,
        &account_page(&s, &v, fields)?,
    ))
}

#[derive(Template)]
#[template(path = "portal/recover.html")]
struct Recover {
    shell: Shell,
    f: Fields,
    pre: String,
    /// An organisation-assisted recovery link (only a new password is asked).
    assisted: bool,
}

async fn recover_page(headers: HeaderMap) -> Result<Response, PortalError> {
    let (pre, new) = pre_token(&headers)?;
    let page = Recover {
        shell: Shell::public("Recover your account"),
        f: Fields::default(),
        pre: pre.clone(),
        assisted: false,
    };
    Ok(with_pre(ok(&page), &pre, new))
}

async fn recover(State(s): State<AppState>, Public { mut fields }: Public) -> Response {
    let email = fields.required("email", 254);
    let code = fields.required("recovery_code", 64);
    let password = new_password(&mut fields);
    if fields.is_ok() {
        match s.auth.recover(&email, &code, &password).await {
            Ok(()) => return password_set(),
            Err(AuthError::BadRecoveryCode | AuthError::BadCredentials) => fields.fail(
                "recovery_code",
                "Wrong or already used recovery code for this address.",
            ),
            Err(AuthError::WeakPassword(m)) => fields.fail("new_password", capitalise(&m)),
            Err(e @ (AuthError::Locked | AuthError::RateLimited)) => {
                fields.fail("form", capitalise(&e.to_string()))
            }
            Err(e) => return PortalError::from(e).into_response(),
        }
    }
    recover_again(fields, false)
}

fn new_password(fields: &mut Fields) -> String {
    let p = fields.get("new_password").to_owned();
    if p.is_empty() {
        fields.fail("new_password", "Fill this in.");
    } else if p != fields.get("new_password2") {
        fields.fail("new_password2", "The two passwords differ.");
    }
    p
}

fn password_set() -> Response {
    ok(&Message {
        shell: Shell::public("Password set"),
        heading: "Your new password is set".into(),
        text: "Sign in with it now.".into(),
        link: Some(("/signin", "Sign in")),
    })
}

fn recover_again(fields: Fields, assisted: bool) -> Response {
    let pre = fields.get("pre").to_owned();
    render(
        StatusCode::BAD_REQUEST,
        &Recover {
            shell: Shell::public("Recover your account"),
            f: fields,
            pre,
            assisted,
        },
    )
}

async fn recovery_page(
    headers: HeaderMap,
    q: Result<Query<Token>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PortalError> {
    let (pre, new) = pre_token(&headers)?;
    let mut f = Fields::default();
    f.set(
        "token",
        q.ok().and_then(|Query(q)| q.token).unwrap_or_default(),
    );
    let page = Recover {
        shell: Shell::public("Set a new password"),
        f,
        pre: pre.clone(),
        assisted: true,
    };
    Ok(with_pre(ok(&page), &pre, new))
}

async fn recovery_complete(State(s): State<AppState>, Public { mut fields }: Public) -> Response {
    let token = fields.get("token").to_owned();
    let password = new_password(&mut fields);
    if fields.is_ok() {
        match s.auth.complete_recovery(&token, &password).await {
            Ok(()) => return password_set(),
            Err(AuthError::BadLink) => fields.fail(
                "form",
                "This recovery link is invalid, has expired or was already used.",
            ),
            Err(AuthError::WeakPassword(m)) => fields.fail("new_password", capitalise(&m)),
            Err(e) => return PortalError::from(e).into_response(),
        }
    }
    recover_again(fields, true)
}

#[cfg(test)]
mod tests {
    use super::local_path;

    #[test]
    fn sign_in_returns_only_to_local_paths() {
        assert_eq!(
            local_path("/patient/records/ab"),
            Some("/patient/records/ab")
        );
        assert_eq!(
            local_path("/patient/access-log?before=12"),
            Some("/patient/access-log?before=12")
        );
        for bad in [
            "//evil.example",
            "/\t/evil.example",
            "/\\evil.example",
            "https://evil.example",
            "/a\r\nSet-Cookie:x",
            "/ /x",
            "",
        ] {
            assert_eq!(local_path(bad), None, "{bad:?}");
        }
    }
}
