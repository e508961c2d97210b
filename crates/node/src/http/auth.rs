//! Sign-in over HTTP (`/auth`): registration, email verification, sign-in with a
//! second factor, sessions in `__Host-` cookies (HttpOnly, Secure, SameSite=Strict)
//! with a CSRF token that every state-changing request must echo in `X-CSRF-Token`,
//! API tokens (`Authorization: Bearer mlt_...`) for scripts, sign-out (here and
//! everywhere), recovery with a one-time code.

use crate::auth::{AuthError, LoginOk, RegisterRequest, Registered, Session};
use crate::http::caller::{Intent, cookie_session, header_csrf};
use crate::http::error::ApiError;
use crate::http::limits::PerClient;
use crate::http::openapi as doc;
use crate::keystore::KeystoreFile;
use crate::state::AppState;
use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use medledger_core::{AccountId, OrgId, Role};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub const SESSION_COOKIE: &str = "__Host-medledger_session";

pub fn routes(per_client: std::sync::Arc<PerClient>) -> OpenApiRouter<AppState> {
    // Anonymous requests that run a password KDF: limited per client address before
    // anything else happens (see `limits`).
    let expensive = OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(enroll))
        .routes(routes!(login))
        .routes(routes!(recover))
        .routes(routes!(recovery_complete))
        .route_layer(axum::middleware::from_fn_with_state(
            per_client,
            crate::http::limits::expensive,
        ));
    OpenApiRouter::new()
        .merge(expensive)
        .routes(routes!(verify))
        .routes(routes!(logout))
        .routes(routes!(logout_all))
        .routes(routes!(me))
        .routes(routes!(mfa_setup))
        .routes(routes!(mfa_confirm))
        .routes(routes!(invite))
        .routes(routes!(approve))
        .routes(routes!(tokens))
        .routes(routes!(export_keystore))
        .routes(routes!(recovery_request))
        .routes(routes!(recovery_approve))
}

/// The session of a cookie-authenticated request that changes state (the rules are
/// [`cookie_session`]'s).
fn session(
    s: &AppState,
    headers: &HeaderMap,
    allow_mfa_setup: bool,
) -> Result<(String, Session), ApiError> {
    Ok(cookie_session(
        s,
        headers,
        Intent::Write(header_csrf(headers)),
        allow_mfa_setup,
    )?
    .ok_or(AuthError::NoSession)?)
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, AuthError> {
    b.map(|Json(v)| v)
        .map_err(|e| AuthError::Invalid(e.body_text()))
}

/// Staff registration (pending until an org admin approves) or a patient through an invite.
#[utoipa::path(
    post, path = "/auth/register", tag = "auth",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "Registered; a verification e-mail is sent", body = Registered),
        (status = 403, response = doc::Forbidden),
        (status = 409, description = "Another registration of this address is being made at the same moment", body = doc::ErrorResponse),
        (status = 422, response = doc::Rejected),
        (status = 429, response = doc::RateLimited),
        doc::JsonBody,
    )
)]
async fn register(
    State(s): State<AppState>,
    b: Result<Json<RegisterRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let r = s.auth.register(body(b)?).await?;
    Ok((StatusCode::CREATED, Json(r)).into_response())
}

#[derive(Deserialize, ToSchema)]
struct EnrollRequest {
    /// A keystore file as `medledger keygen` writes it.
    keystore: KeystoreFile,
    keystore_password: String,
    name: String,
    email: String,
    password: String,
    org: OrgId,
    role: Role,
}

/// Enrols an existing keystore for web sign-in, proving possession with its password.
#[utoipa::path(
    post, path = "/auth/enroll", tag = "auth",
    request_body = EnrollRequest,
    responses(
        (status = 201, description = "Enrolled; a verification e-mail is sent", body = Registered),
        (status = 401, response = doc::Unauthenticated),
        (status = 403, response = doc::Forbidden),
        (status = 409, description = "The e-mail address already has an account", body = doc::ErrorResponse),
        (status = 429, response = doc::RateLimited),
        doc::JsonBody,
    )
)]
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

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct TokenQuery {
    /// The token from the verification e-mail.
    token: String,
}

/// The link in the verification e-mail.
#[utoipa::path(
    get, path = "/auth/verify", tag = "auth",
    params(TokenQuery),
    responses(
        (status = 200, description = "E-mail address verified", body = Verified),
        (status = 400, response = doc::BadRequest),
    )
)]
async fn verify(
    State(s): State<AppState>,
    q: Result<Query<TokenQuery>, QueryRejection>,
) -> Result<Json<Verified>, ApiError> {
    let Query(q) = q.map_err(|_| AuthError::BadLink)?;
    s.auth.verify_email(&q.token)?;
    Ok(Json(Verified { verified: true }))
}

#[derive(Serialize, ToSchema)]
struct Verified {
    verified: bool,
}

#[derive(Deserialize, ToSchema)]
struct LoginRequest {
    email: String,
    password: String,
    /// A TOTP code or a recovery code, once the account has a second factor.
    code: Option<String>,
}

/// Sign-in with e-mail, password and, once set up, a TOTP or recovery code.
#[utoipa::path(
    post, path = "/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Signed in; sets the session cookie", body = LoginOk),
        (status = 401, response = doc::Unauthenticated),
        (status = 403, response = doc::Forbidden),
        (status = 429, response = doc::RateLimited),
        doc::JsonBody,
    )
)]
async fn login(
    State(s): State<AppState>,
    b: Result<Json<LoginRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let r = body(b)?;
    let ok = s
        .auth
        .login(&r.email, &r.password, r.code.as_deref())
        .await?;
    let mut resp = Json(&ok).into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, session_cookie(&ok.token)?);
    Ok(resp)
}

/// The session cookie: `__Host-` (this origin only), HttpOnly, Secure, SameSite=Strict.
pub(crate) fn session_cookie(token: &str) -> Result<HeaderValue, AuthError> {
    let cookie = format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={}",
        crate::auth::SESSION_MS / 1000
    );
    HeaderValue::from_str(&cookie).map_err(|e| AuthError::Internal(e.to_string()))
}

pub(crate) fn clear_cookie(mut resp: Response) -> Response {
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

/// Ends this session.
#[utoipa::path(
    post, path = "/auth/logout", tag = "auth",
    responses(
        (status = 204, description = "Signed out here"),
        doc::SessionWrite,
    ),
    security(("medledgerSession" = [], "csrfToken" = []))
)]
async fn logout(
    State(s): State<AppState>,
    headers: HeaderMap,
    _body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let (token, _) = session(&s, &headers, true)?;
    s.auth.logout(&token);
    Ok(clear_cookie(StatusCode::NO_CONTENT.into_response()))
}

/// Ends every session and API token of the account.
#[utoipa::path(
    post, path = "/auth/logout-all", tag = "auth",
    responses(
        (status = 204, description = "Every session and API token of the account ended"),
        doc::SessionWrite,
    ),
    security(("medledgerSession" = [], "csrfToken" = []))
)]
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
    let (_, sess) = cookie_session(s, headers, Intent::Read, true)?.ok_or(AuthError::NoSession)?;
    Ok(sess.account)
}

/// The signed-in account as its owner sees it.
#[utoipa::path(
    get, path = "/auth/me", tag = "auth",
    security(("medledgerSession" = []), ("apiToken" = [])),
    responses(
        (status = 200, description = "The signed-in account: name, e-mail, organisation, role, second factor", body = crate::auth::Me),
        (status = 401, response = doc::Unauthenticated),
    )
)]
async fn me(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<crate::auth::Me>, ApiError> {
    let account = reader(&s, &headers)?;
    Ok(Json(s.auth.me(&account)?))
}

/// Starts TOTP set-up: a new secret to confirm.
#[utoipa::path(
    post, path = "/auth/mfa/setup", tag = "auth",
    responses(
        (status = 200, description = "A new TOTP secret", body = MfaSetup),
        doc::SessionWrite,
    ),
    security(("medledgerSession" = [], "csrfToken" = []))
)]
async fn mfa_setup(
    State(s): State<AppState>,
    headers: HeaderMap,
    _body: axum::body::Bytes,
) -> Result<Json<MfaSetup>, ApiError> {
    let (_, sess) = session(&s, &headers, true)?;
    let (secret, otpauth_url) = s.auth.totp_setup(&sess)?;
    Ok(Json(MfaSetup {
        secret,
        otpauth_url,
    }))
}

/// A new TOTP secret, to confirm with `/auth/mfa/confirm`.
#[derive(Serialize, ToSchema)]
struct MfaSetup {
    /// Base32.
    secret: String,
    otpauth_url: String,
}

#[derive(Deserialize, ToSchema)]
struct CodeRequest {
    code: String,
}

/// Confirms TOTP set-up with a first code.
#[utoipa::path(
    post, path = "/auth/mfa/confirm", tag = "auth",
    request_body = CodeRequest,
    responses(
        (status = 204, description = "Second factor on"),
        doc::JsonBody,
        doc::SessionWrite,
    ),
    security(("medledgerSession" = [], "csrfToken" = []))
)]
async fn mfa_confirm(
    State(s): State<AppState>,
    headers: HeaderMap,
    b: Result<Json<CodeRequest>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let (token, sess) = session(&s, &headers, true)?;
    s.auth.totp_confirm(&token, &sess, &body(b)?.code)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
struct InviteRequest {
    email: String,
}

/// A clinician or org admin invites a patient by e-mail.
#[utoipa::path(
    post, path = "/auth/invite", tag = "auth",
    request_body = InviteRequest,
    responses(
        (status = 201, description = "Invitation e-mailed"),
        (status = 422, response = doc::Rejected),
        doc::JsonBody,
        doc::SessionWrite,
    ),
    security(("medledgerSession" = [], "csrfToken" = []))
)]
async fn invite(
    State(s): State<AppState>,
    headers: HeaderMap,
    b: Result<Json<InviteRequest>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let (_, sess) = session(&s, &headers, false)?;
    s.auth.invite(&sess, &body(b)?.email).await?;
    Ok(StatusCode::CREATED)
}

#[derive(Deserialize, ToSchema)]
struct ApproveRequest {
    account: AccountId,
    /// Approve (default) or reject the registration.
    #[serde(default = "yes")]
    #[schema(default = true)]
    approve: bool,
}

fn yes() -> bool {
    true
}

/// An org admin approves or rejects a pending registration.
#[utoipa::path(
    post, path = "/auth/approve", tag = "auth",
    request_body = ApproveRequest,
    responses(
        (status = 204, description = "Decided"),
        (status = 422, response = doc::Rejected),
        doc::JsonBody,
        doc::SessionWrite,
    ),
    security(("medledgerSession" = [], "csrfToken" = []))
)]
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

#[derive(Deserialize, ToSchema)]
struct RecoverRequest {
    email: String,
    recovery_code: String,
    new_password: String,
}

/// A lost password replaced with a one-time recovery code.
#[utoipa::path(
    post, path = "/auth/recover", tag = "auth",
    request_body = RecoverRequest,
    responses(
        (status = 204, description = "Password replaced"),
        (status = 401, response = doc::Unauthenticated),
        (status = 429, response = doc::RateLimited),
        doc::JsonBody,
    )
)]
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

#[derive(Deserialize, ToSchema)]
struct TokenRequest {
    /// Lifetime in seconds.
    ttl_s: u64,
}

/// Creates an API token for scripts (shown once).
#[utoipa::path(
    post, path = "/auth/tokens", tag = "auth",
    request_body = TokenRequest,
    responses(
        (status = 201, description = "A new API token", body = ApiToken),
        doc::JsonBody,
        doc::SessionWrite,
    ),
    security(("medledgerSession" = [], "csrfToken" = []))
)]
async fn tokens(
    State(s): State<AppState>,
    headers: HeaderMap,
    b: Result<Json<TokenRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let (_, sess) = session(&s, &headers, false)?;
    let (token, expires_ms) = s
        .auth
        .create_api_token(&sess, body(b)?.ttl_s.saturating_mul(1000))?;
    Ok((StatusCode::CREATED, Json(ApiToken { token, expires_ms })).into_response())
}

/// Shown once: `Authorization: Bearer <token>`.
#[derive(Serialize, ToSchema)]
struct ApiToken {
    token: String,
    expires_ms: u64,
}

/// The signed-in account's keystore file (sealed under its password), so the person
/// can hold their keys themself (`medledger` CLI) without the node.
#[utoipa::path(
    post, path = "/auth/keystore", tag = "auth",
    responses(
        (status = 200, description = "The account's keystore, sealed under its password", body = KeystoreFile),
        doc::SessionWrite,
    ),
    security(("medledgerSession" = [], "csrfToken" = []))
)]
async fn export_keystore(
    State(s): State<AppState>,
    headers: HeaderMap,
    _body: axum::body::Bytes,
) -> Result<Json<KeystoreFile>, ApiError> {
    let (_, sess) = session(&s, &headers, false)?;
    Ok(Json(s.auth.export_keystore(&sess)?))
}

#[derive(Deserialize, ToSchema)]
struct RecoveryRequest {
    email: String,
}

/// An org admin asks to restore a member's access (a second admin approves).
#[utoipa::path(
    post, path = "/auth/recovery/request", tag = "auth",
    request_body = RecoveryRequest,
    responses(
        (status = 201, description = "Recovery requested", body = RecoveryRequested),
        (status = 422, response = doc::Rejected),
        doc::JsonBody,
        doc::SessionWrite,
    ),
    security(("medledgerSession" = [], "csrfToken" = []))
)]
async fn recovery_request(
    State(s): State<AppState>,
    headers: HeaderMap,
    b: Result<Json<RecoveryRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let (_, sess) = session(&s, &headers, false)?;
    let id = s.auth.request_recovery(&sess, &body(b)?.email).await?;
    Ok((StatusCode::CREATED, Json(RecoveryRequested { request: id })).into_response())
}

/// The request a second admin approves.
#[derive(Serialize, ToSchema)]
struct RecoveryRequested {
    request: medledger_core::GrantId,
}

#[derive(Deserialize, ToSchema)]
struct RecoveryApprove {
    request: medledger_core::GrantId,
}

/// A second org admin approves a recovery request.
#[utoipa::path(
    post, path = "/auth/recovery/approve", tag = "auth",
    request_body = RecoveryApprove,
    responses(
        (status = 204, description = "Approved; the member gets a recovery link"),
        (status = 422, response = doc::Rejected),
        doc::JsonBody,
        doc::SessionWrite,
    ),
    security(("medledgerSession" = [], "csrfToken" = []))
)]
async fn recovery_approve(
    State(s): State<AppState>,
    headers: HeaderMap,
    b: Result<Json<RecoveryApprove>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let (_, sess) = session(&s, &headers, false)?;
    s.auth.approve_recovery(&sess, &body(b)?.request).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
struct RecoveryComplete {
    token: String,
    new_password: String,
}

/// The link of an approved organisation-assisted recovery.
#[utoipa::path(
    post, path = "/auth/recovery/complete", tag = "auth",
    request_body = RecoveryComplete,
    responses(
        (status = 204, description = "Password set"),
        (status = 429, response = doc::RateLimited),
        doc::JsonBody,
    )
)]
async fn recovery_complete(
    State(s): State<AppState>,
    b: Result<Json<RecoveryComplete>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let r = body(b)?;
    s.auth.complete_recovery(&r.token, &r.new_password).await?;
    Ok(StatusCode::NO_CONTENT)
}
