//! Sign-in over HTTP (`/auth`): registration, email verification, sign-in with a
//! second factor, sessions in `__Host-` cookies (HttpOnly, Secure, SameSite=Strict)
//! with a CSRF token that every state-changing request must echo in `X-CSRF-Token`,
//! API tokens (`Authorization: Bearer mlt_...`) for scripts, sign-out (here and
//! everywhere), recovery with a one-time code.

use crate::auth::{AuthError, RegisterRequest, Session};
use crate::http::caller::cookie_session;
use crate::http::error::ApiError;
use crate::keystore::KeystoreFile;
use crate::state::AppState;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use medledger_core::{AccountId, OrgId, Role};
use serde::Deserialize;
use serde_json::json;

pub const SESSION_COOKIE: &str = "__Host-medledger_session";

pub fn routes(state: &AppState) -> Router<AppState> {
    // Anonymous requests that run a password KDF: limited per client address before
    // anything else happens (see `limits`).
    let expensive = Router::new()
        .route("/auth/register", post(register))
        .route("/auth/enroll", post(enroll))
        .route("/auth/login", post(login))
        .route("/auth/recover", post(recover))
        .route("/auth/recovery/complete", post(recovery_complete))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::http::limits::expensive,
        ));
    Router::new()
        .merge(expensive)
        .route("/auth/verify", get(verify))
        .route("/auth/logout", post(logout))
        .route("/auth/logout-all", post(logout_all))
        .route("/auth/me", get(me))
        .route("/auth/mfa/setup", post(mfa_setup))
        .route("/auth/mfa/confirm", post(mfa_confirm))
        .route("/auth/invite", post(invite))
        .route("/auth/approve", post(approve))
        .route("/auth/tokens", post(tokens))
        .route("/auth/keystore", post(export_keystore))
        .route("/auth/recovery/request", post(recovery_request))
        .route("/auth/recovery/approve", post(recovery_approve))
}

/// The session of a cookie-authenticated request that changes state (the rules are
/// [`cookie_session`]'s).
fn session(
    s: &AppState,
    headers: &HeaderMap,
    allow_mfa_setup: bool,
) -> Result<(String, Session), ApiError> {
    Ok(cookie_session(s, headers, true, allow_mfa_setup)?.ok_or(AuthError::NoSession)?)
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, AuthError> {
    b.map(|Json(v)| v)
        .map_err(|e| AuthError::Invalid(e.body_text()))
}

async fn register(
    State(s): State<AppState>,
    b: Result<Json<RegisterRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let r = s.auth.register(body(b)?).await?;
    Ok((StatusCode::CREATED, Json(r)).into_response())
}

#[derive(Deserialize)]
struct EnrollRequest {
    keystore: KeystoreFile,
    keystore_password: String,
    name: String,
    email: String,
    password: String,
    org: OrgId,
    role: Role,
}

async fn enroll(
    State(s): State<AppState>,
    b: Result<Json<EnrollRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let r = body(b)?;
    let out = s
        .auth
        .enroll(
            r.keystore,
            &r.keystore_password,
            &r.name,
            &r.email,
            &r.password,
            r.org,
            r.role,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

#[derive(Deserialize)]
struct TokenQuery {
    token: String,
}

async fn verify(
    State(s): State<AppState>,
    q: Result<Query<TokenQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = q.map_err(|_| AuthError::BadLink)?;
    s.auth.verify_email(&q.token)?;
    Ok(Json(json!({ "verified": true })))
}

#[derive(Deserialize)]
struct LoginRequest {
    email: String,
    password: String,
    code: Option<String>,
}

async fn login(
    State(s): State<AppState>,
    b: Result<Json<LoginRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let r = body(b)?;
    let ok = s
        .auth
        .login(&r.email, &r.password, r.code.as_deref())
        .await?;
    let cookie = format!(
        "{SESSION_COOKIE}={}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={}",
        ok.token,
        crate::auth::SESSION_MS / 1000
    );
    let mut resp = Json(&ok).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(|e| AuthError::Internal(e.to_string()))?,
    );
    Ok(resp)
}

fn clear_cookie(mut resp: Response) -> Response {
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "__Host-medledger_session=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0",
        ),
    );
    resp
}

// Handlers without a body still take it (`_body`): hyper closes a connection whose
// request body was left unread, and the client's next pooled request then fails.

async fn logout(
    State(s): State<AppState>,
    headers: HeaderMap,
    _body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let (token, _) = session(&s, &headers, true)?;
    s.auth.logout(&token);
    Ok(clear_cookie(StatusCode::NO_CONTENT.into_response()))
}

async fn logout_all(
    State(s): State<AppState>,
    headers: HeaderMap,
    _body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let (_, sess) = session(&s, &headers, true)?;
    s.auth.logout_all(&sess.account)?;
    Ok(clear_cookie(StatusCode::NO_CONTENT.into_response()))
}

/// Reads accept a session cookie or an API token.
fn reader(s: &AppState, headers: &HeaderMap) -> Result<AccountId, AuthError> {
    if let Some(bearer) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return s.auth.api_token(bearer)?.ok_or(AuthError::NoSession);
    }
    let (_, sess) = cookie_session(s, headers, false, true)?.ok_or(AuthError::NoSession)?;
    Ok(sess.account)
}

async fn me(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let account = reader(&s, &headers)?;
    Ok(Json(s.auth.me(&account)?))
}

async fn mfa_setup(
    State(s): State<AppState>,
    headers: HeaderMap,
    _body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (_, sess) = session(&s, &headers, true)?;
    let (secret, url) = s.auth.totp_setup(&sess)?;
    Ok(Json(json!({ "secret": secret, "otpauth_url": url })))
}

#[derive(Deserialize)]
struct CodeRequest {
    code: String,
}

async fn mfa_confirm(
    State(s): State<AppState>,
    headers: HeaderMap,
    b: Result<Json<CodeRequest>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let (token, sess) = session(&s, &headers, true)?;
    s.auth.totp_confirm(&token, &sess, &body(b)?.code)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct InviteRequest {
    email: String,
}

async fn invite(
    State(s): State<AppState>,
    headers: HeaderMap,
    b: Result<Json<InviteRequest>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let (_, sess) = session(&s, &headers, false)?;
    s.auth.invite(&sess, &body(b)?.email).await?;
    Ok(StatusCode::CREATED)
}

#[derive(Deserialize)]
struct ApproveRequest {
    account: AccountId,
    #[serde(default = "yes")]
    approve: bool,
}

fn yes() -> bool {
    true
}

async fn approve(
    State(s): State<AppState>,
    headers: HeaderMap,
    b: Result<Json<ApproveRequest>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let (_, sess) = session(&s, &headers, false)?;
    let r = body(b)?;
    s.auth.approve(&sess, &r.account, r.approve).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct RecoverRequest {
    email: String,
    recovery_code: String,
    new_password: String,
}

async fn recover(
    State(s): State<AppState>,
    b: Result<Json<RecoverRequest>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let r = body(b)?;
    s.auth
        .recover(&r.email, &r.recovery_code, &r.new_password)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct TokenRequest {
    ttl_s: u64,
}

async fn tokens(
    State(s): State<AppState>,
    headers: HeaderMap,
    b: Result<Json<TokenRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let (_, sess) = session(&s, &headers, false)?;
    let (token, expires_ms) = s
        .auth
        .create_api_token(&sess, body(b)?.ttl_s.saturating_mul(1000))?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "token": token, "expires_ms": expires_ms })),
    )
        .into_response())
}

/// The signed-in account's keystore file (sealed under its password), so the person
/// can hold their keys themself (`medledger` CLI) without the node.
async fn export_keystore(
    State(s): State<AppState>,
    headers: HeaderMap,
    _body: axum::body::Bytes,
) -> Result<Json<KeystoreFile>, ApiError> {
    let (_, sess) = session(&s, &headers, false)?;
    Ok(Json(s.auth.export_keystore(&sess)?))
}

#[derive(Deserialize)]
struct RecoveryRequest {
    email: String,
}

async fn recovery_request(
    State(s): State<AppState>,
    headers: HeaderMap,
    b: Result<Json<RecoveryRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let (_, sess) = session(&s, &headers, false)?;
    let id = s.auth.request_recovery(&sess, &body(b)?.email).await?;
    Ok((StatusCode::CREATED, Json(json!({ "request": id }))).into_response())
}

#[derive(Deserialize)]
struct RecoveryApprove {
    request: medledger_core::GrantId,
}

async fn recovery_approve(
    State(s): State<AppState>,
    headers: HeaderMap,
    b: Result<Json<RecoveryApprove>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let (_, sess) = session(&s, &headers, false)?;
    s.auth.approve_recovery(&sess, &body(b)?.request).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct RecoveryComplete {
    token: String,
    new_password: String,
}

async fn recovery_complete(
    State(s): State<AppState>,
    b: Result<Json<RecoveryComplete>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let r = body(b)?;
    s.auth.complete_recovery(&r.token, &r.new_password).await?;
    Ok(StatusCode::NO_CONTENT)
}
