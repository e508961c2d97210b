//! Who is calling: the one extractor every HTTP surface takes its caller from. What a
//! caller may then see is [`crate::access::Viewer`]'s to decide.
//!
//! A request is anonymous, signed by a self-custody account (`Medledger-Ed25519`), or
//! made by a signed-in person (session cookie or `Bearer` API token). Credentials that
//! are present but wrong are refused (401); absent credentials make an anonymous
//! caller, and each route decides whether that is enough. A person whose role the
//! ledger no longer gives them is signed out: sessions and tokens never outlive the
//! role that allowed them.

use crate::access::Viewer;
use crate::auth::{AuthError, Principal, Session};
use crate::http::auth::SESSION_COOKIE;
use crate::http::error::ApiError;
use crate::reporter::now_ms;
use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use medledger_core::AccountId;
use medledger_ledger::exec::StateRead;

/// Signed requests: `Authorization: Medledger-Ed25519 did=<did:key>,ts=<ms>,sig=<hex>`
/// where `sig` is the account's Ed25519 signature over
/// `medledger/request/v1\n<METHOD>\n<path?query>\n<ts>`. Valid for five minutes.
pub const REQUEST_TAG: &str = "medledger/request/v1";
const REQUEST_WINDOW_MS: u64 = 5 * 60 * 1000;

pub fn request_message(method: &str, path_and_query: &str, ts: u64) -> String {
    format!("{REQUEST_TAG}\n{method}\n{path_and_query}\n{ts}")
}

/// The caller of one request.
#[derive(Debug, Clone)]
pub enum Caller {
    Anonymous,
    /// A self-custody account that signed this request.
    Signed(AccountId),
    /// A signed-in person (session cookie or API token), with their keys.
    Person(Principal),
}

impl Caller {
    /// The acting account, or 401 for an anonymous caller.
    pub fn account(&self) -> Result<AccountId, ApiError> {
        match self {
            Caller::Anonymous => Err(ApiError::Unauthenticated(
                "sign in, send an API token (Authorization: Bearer) or sign the request (Authorization: Medledger-Ed25519)".into(),
            )),
            Caller::Signed(a) => Ok(*a),
            Caller::Person(p) => Ok(p.account),
        }
    }

    /// What the ledger says about the acting account: 401 for anonymous callers.
    pub fn viewer(&self, st: &impl StateRead) -> Result<Viewer, ApiError> {
        Ok(Viewer::of(st, self.account()?)?)
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, ApiError> {
        let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("");
        identify(s, &parts.headers, parts.method.as_str(), path)
    }
}

/// The caller behind a request's credentials (see the module docs).
pub fn identify(
    s: &AppState,
    headers: &HeaderMap,
    method: &str,
    path_and_query: &str,
) -> Result<Caller, ApiError> {
    let unauth = |m: &str| ApiError::Unauthenticated(m.to_owned());
    if let Some(h) = headers.get(header::AUTHORIZATION) {
        let h = h
            .to_str()
            .map_err(|_| unauth("unreadable Authorization header"))?;
        if let Some(token) = h.strip_prefix("Bearer ") {
            let p = s
                .auth
                .principal(token.trim())
                .map_err(|e| ApiError::Internal(format!("token lookup: {e}")))?
                .ok_or_else(|| unauth("unknown or expired API token"))?;
            return person(s, p);
        }
        if let Some(params) = h.strip_prefix("Medledger-Ed25519 ") {
            return signed(params, method, path_and_query).map(Caller::Signed);
        }
        return Err(unauth("unsupported authorization scheme"));
    }
    let intent = if matches!(method, "GET" | "HEAD") {
        Intent::Read
    } else {
        Intent::Write(header_csrf(headers))
    };
    if let Some((_, sess)) = cookie_session(s, headers, intent, false)? {
        return person(s, Principal::from(&sess));
    }
    Ok(Caller::Anonymous)
}

/// What a cookie-authenticated request does: read, or change state presenting a CSRF
/// token (the API's `X-CSRF-Token` header, or the portal's hidden form field).
#[derive(Debug, Clone, Copy)]
pub enum Intent<'a> {
    Read,
    Write(Option<&'a str>),
}

/// The CSRF token an API request presents in `X-CSRF-Token`.
pub fn header_csrf(headers: &HeaderMap) -> Option<&str> {
    headers.get("x-csrf-token").and_then(|v| v.to_str().ok())
}

/// The session behind a request's cookie, if it carries one. This is the one place
/// that decides the cookie rules: a request that changes state must present the
/// session's CSRF token (a cookie rides along on cross-site requests, the token does
/// not), and clinicians and admins must have passed their second factor (only MFA
/// set-up itself may go without, `allow_mfa_setup`).
pub fn cookie_session(
    s: &AppState,
    headers: &HeaderMap,
    intent: Intent<'_>,
    allow_mfa_setup: bool,
) -> Result<Option<(String, Session)>, AuthError> {
    let Some(token) = cookie_token(headers) else {
        return Ok(None);
    };
    let sess = s.auth.session(&token).ok_or(AuthError::NoSession)?;
    if let Intent::Write(presented) = intent {
        let ok = presented.is_some_and(|p| {
            bool::from(subtle::ConstantTimeEq::ct_eq(
                p.as_bytes(),
                sess.csrf.as_bytes(),
            ))
        });
        if !ok {
            return Err(AuthError::BadCsrf);
        }
    }
    if !sess.mfa_ok && !allow_mfa_setup {
        return Err(AuthError::MfaSetupRequired);
    }
    Ok(Some((token, sess)))
}

/// The session token in a request's `__Host-` cookie.
pub fn cookie_token(headers: &HeaderMap) -> Option<String> {
    cookie(headers, SESSION_COOKIE)
}

/// The value of the cookie `name` in a request.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// A signed-in person, if the ledger still gives them the role they signed in with.
pub(crate) fn person(s: &AppState, p: Principal) -> Result<Caller, ApiError> {
    live_account(s, &p)?;
    Ok(Caller::Person(p))
}

/// The ledger account behind a sign-in, while it still holds the role the sign-in
/// was made for (the liveness rule of every surface).
pub(crate) fn live_account(
    s: &AppState,
    p: &Principal,
) -> Result<medledger_ledger::contracts::state::AccountState, ApiError> {
    match s.ledger.account(&p.account).map_err(ApiError::from)? {
        Some(a) if a.has_role_in(&p.org, p.role) => Ok(a),
        _ => Err(ApiError::Unauthenticated(
            "the role this sign-in was made for has ended; sign in again".into(),
        )),
    }
}

fn signed(params: &str, method: &str, path_and_query: &str) -> Result<AccountId, ApiError> {
    let unauth = |m: &str| ApiError::Unauthenticated(m.to_owned());
    let (mut did, mut ts, mut sig) = (None, None, None);
    for part in params.split(',') {
        match part.trim().split_once('=') {
            Some(("did", v)) => did = Some(v),
            Some(("ts", v)) => ts = v.parse::<u64>().ok(),
            Some(("sig", v)) => sig = Some(v),
            _ => {}
        }
    }
    let (Some(did), Some(ts), Some(sig)) = (did, ts, sig) else {
        return Err(unauth("authorization needs did, ts and sig"));
    };
    let account: AccountId = did.parse().map_err(|_| unauth("invalid did"))?;
    if now_ms().abs_diff(ts) > REQUEST_WINDOW_MS {
        return Err(unauth(
            "request timestamp is outside the five-minute window",
        ));
    }
    let mut sig_bytes = [0u8; 64];
    hex::decode_to_slice(sig, &mut sig_bytes).map_err(|_| unauth("sig must be 128 hex digits"))?;
    if !account.verify(
        request_message(method, path_and_query, ts).as_bytes(),
        &sig_bytes,
    ) {
        return Err(unauth("request signature does not verify"));
    }
    Ok(account)
}
