//! Forms: the posted fields with their errors (each shown next to its field, with
//! what the person typed kept), and the extractors that read a form only after the
//! request is checked.
//!
//! A signed-in form ([`Posted`]) presents the session's CSRF token in the hidden
//! field `csrf`, checked by [`crate::http::caller::cookie_session`] like the API's
//! header. A form without a session (sign-in, registration) is protected by a
//! double-submit token instead ([`Public`]): a random `__Host-` cookie (SameSite=Strict,
//! so a cross-site post never carries it) that the form repeats in the field `pre`.

use super::{MAX_FORM_BYTES, PortalError, Visitor};
use crate::http::caller::Intent;
use crate::state::AppState;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use medledger_core::model::MAX_SCOPE_ITEMS;
use medledger_core::{AccountId, Category, Purpose, Scope};
use std::collections::{BTreeMap, HashMap};

/// A form's values and the errors found in them.
#[derive(Debug, Default, Clone)]
pub struct Fields {
    values: HashMap<String, String>,
    errors: BTreeMap<String, String>,
}

/// Fields whose values are never shown again.
const SECRET: [&str; 8] = [
    "password",
    "current_password",
    "new_password",
    "new_password2",
    "code",
    "csrf",
    "pre",
    "recovery_code",
];

impl Fields {
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut values = HashMap::new();
        for (k, v) in pairs {
            values.entry(k).or_insert(v);
        }
        Fields {
            values,
            errors: BTreeMap::new(),
        }
    }

    /// A field's value as typed (empty if absent).
    pub fn get(&self, k: &str) -> &str {
        self.values.get(k).map_or("", String::as_str)
    }

    /// A field's value to show again in the form (never a secret).
    pub fn v(&self, k: &str) -> &str {
        if SECRET.contains(&k) { "" } else { self.get(k) }
    }

    pub fn set(&mut self, k: &str, v: impl Into<String>) {
        self.values.insert(k.to_owned(), v.into());
    }

    pub fn err(&self, k: &str) -> Option<&str> {
        self.errors.get(k).map(String::as_str)
    }

    pub fn has_err(&self, k: &str) -> bool {
        self.errors.contains_key(k)
    }

    pub fn fail(&mut self, k: &str, msg: impl Into<String>) {
        self.errors
            .entry(k.to_owned())
            .or_insert_with(|| msg.into());
    }

    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// The status of a page showing this form: 400 while it has errors.
    pub fn status(&self) -> axum::http::StatusCode {
        if self.is_ok() {
            axum::http::StatusCode::OK
        } else {
            axum::http::StatusCode::BAD_REQUEST
        }
    }

    /// The trimmed value, or an error on the field if it is empty or too long.
    pub fn required(&mut self, k: &str, max_chars: usize) -> String {
        let v = self.get(k).trim().to_owned();
        if v.is_empty() {
            self.fail(k, "Fill this in.");
        } else if v.chars().count() > max_chars || v.chars().any(char::is_control) {
            self.fail(k, format!("Use at most {max_chars} ordinary characters."));
        }
        v
    }

    /// The trimmed value if there is one; an error if it is too long.
    pub fn optional(&mut self, k: &str, max_chars: usize) -> Option<String> {
        let v = self.get(k).trim().to_owned();
        if v.is_empty() {
            return None;
        }
        if v.chars().count() > max_chars || v.chars().any(char::is_control) {
            self.fail(k, format!("Use at most {max_chars} ordinary characters."));
        }
        Some(v)
    }
}

impl Fields {
    /// Free text (a message): line breaks and tabs allowed, other control characters
    /// not; at most `max_bytes`.
    pub fn text(&mut self, k: &str, max_bytes: usize, required: bool) -> String {
        let v = self.get(k).trim().replace("\r\n", "\n");
        if v.is_empty() && required {
            self.fail(k, "Fill this in.");
        } else if v.len() > max_bytes {
            self.fail(k, format!("Use at most {max_bytes} characters."));
        } else if v.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
            self.fail(k, "Use ordinary characters only.");
        }
        v
    }

    /// A person's account id (`did:key:…`).
    pub fn account(&mut self, k: &str) -> Option<AccountId> {
        let v = self.required(k, 200);
        if self.has_err(k) {
            return None;
        }
        match v.parse::<AccountId>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.fail(k, "This account id is not valid (did:key:z6Mk…).");
                None
            }
        }
    }

    /// Record kinds separated by commas, or empty for all records.
    pub fn scope(&mut self, k: &str) -> Option<Scope> {
        let Some(list) = self.optional(k, 600) else {
            return Some(Scope::All);
        };
        let cats: Result<Vec<Category>, _> = list
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(Category::new)
            .collect();
        match cats {
            Ok(c) if !self.has_err(k) && !c.is_empty() && c.len() <= MAX_SCOPE_ITEMS => {
                Some(Scope::Categories(c))
            }
            _ => {
                self.fail(
                    k,
                    "List record kinds separated by commas (like Observation, Condition), or leave empty for all.",
                );
                None
            }
        }
    }

    /// A whole number from `lo` to `hi` (`unit` names what it counts in the message).
    pub fn number(&mut self, k: &str, lo: u64, hi: u64, unit: &str) -> Option<u64> {
        match self.get(k).trim().parse::<u64>() {
            Ok(d) if (lo..=hi).contains(&d) => Some(d),
            _ => {
                self.fail(k, format!("A whole number of {unit} from {lo} to {hi}."));
                None
            }
        }
    }

    /// A two-way choice a button posts (`k` is `yes` or `no`); anything else is a
    /// malformed post, not a form error (the page offers only the two buttons).
    pub fn choice(&self, k: &str, yes: &str, no: &str) -> Result<bool, PortalError> {
        match self.get(k) {
            v if v == yes => Ok(true),
            v if v == no => Ok(false),
            _ => Err(PortalError::BadRequest(format!("Choose {yes} or {no}."))),
        }
    }

    /// A purpose a grant may name (never `emergency`, which only break-glass opens).
    pub fn purpose(&mut self, k: &str) -> Option<Purpose> {
        match self.get(k).parse::<Purpose>() {
            Ok(p) if p != Purpose::Emergency => Some(p),
            _ => {
                self.fail(k, "Choose a purpose.");
                None
            }
        }
    }
}

/// How a scope reads on a page.
pub fn scope_text(scope: &Scope) -> String {
    match scope {
        Scope::All => "All records".into(),
        Scope::Categories(c) => c
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        Scope::Records(r) => format!("{} chosen records", r.len()),
    }
}

/// Reads an url-encoded form body of at most [`MAX_FORM_BYTES`].
async fn read_form(req: Request) -> Result<(axum::http::request::Parts, Fields), PortalError> {
    let (parts, body) = req.into_parts();
    let ctype = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ctype.starts_with("application/x-www-form-urlencoded") {
        return Err(PortalError::BadRequest(
            "Send the form as the page does (application/x-www-form-urlencoded).".into(),
        ));
    }
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| PortalError::BadRequest("The form is too large.".into()))?;
    let fields = Fields::from_pairs(form_urlencoded::parse(&bytes).into_owned());
    Ok((parts, fields))
}

/// A form posted by a signed-in visitor, with its CSRF token checked. `SETUP` allows a
/// session that has not set up its second factor yet (the set-up form itself).
pub struct Posted<const SETUP: bool = false> {
    pub visitor: Visitor,
    pub fields: Fields,
}

impl<const SETUP: bool> FromRequest<AppState> for Posted<SETUP> {
    type Rejection = PortalError;

    async fn from_request(req: Request, s: &AppState) -> Result<Self, PortalError> {
        // Not signed in: to sign-in without reading the body.
        if crate::http::caller::cookie_token(req.headers()).is_none() {
            return Err(PortalError::SignIn(req.uri().path().to_owned()));
        }
        let (parts, fields) = read_form(req).await?;
        let csrf = fields.get("csrf").to_owned();
        let visitor = Visitor::identify(s, &parts, Intent::Write(Some(&csrf)), SETUP)?;
        Ok(Posted { visitor, fields })
    }
}

pub const PRE_COOKIE: &str = "__Host-medledger_form";

/// A form posted without a session, with its double-submit token checked.
pub struct Public {
    pub fields: Fields,
}

impl FromRequest<AppState> for Public {
    type Rejection = PortalError;

    async fn from_request(req: Request, _: &AppState) -> Result<Self, PortalError> {
        let cookie = pre_cookie(req.headers());
        let (_, fields) = read_form(req).await?;
        let ok = cookie.is_some_and(|c| {
            !c.is_empty()
                && bool::from(subtle::ConstantTimeEq::ct_eq(
                    c.as_bytes(),
                    fields.get("pre").as_bytes(),
                ))
        });
        if !ok {
            return Err(PortalError::Csrf);
        }
        Ok(Public { fields })
    }
}

fn pre_cookie(headers: &HeaderMap) -> Option<String> {
    crate::http::caller::cookie(headers, PRE_COOKIE)
}

/// The double-submit token of a public form: the visitor's cookie if they have one,
/// else a new one (set on the response by [`with_pre`]).
pub fn pre_token(headers: &HeaderMap) -> Result<(String, bool), PortalError> {
    if let Some(c) = pre_cookie(headers).filter(|c| c.len() == 64) {
        return Ok((c, false));
    }
    let t =
        crate::auth::secrets::random::<32>().map_err(|e| PortalError::Internal(e.to_string()))?;
    Ok((hex::encode(t), true))
}

/// Sets the double-submit cookie on a page's response when it is new.
pub fn with_pre(mut resp: Response, token: &str, new: bool) -> Response {
    if new
        && let Ok(v) = HeaderValue::from_str(&format!(
            "{PRE_COOKIE}={token}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=86400"
        ))
    {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}
