//! The OpenAPI document of `/v1` and `/auth`, generated from the routes themselves:
//! every JSON route is registered through `utoipa-axum` (`routes!`) with its
//! `#[utoipa::path]` annotation, so a route cannot exist without its description, and
//! request and response schemas come from the Rust types that serde decodes and
//! encodes (the transaction payloads from `medledger-core`'s `openapi` feature).
//! This module adds what is shared: the document's header, the security schemes, the
//! error body and the refusals every route can answer.

pub use crate::http::error::ErrorResponse;
use std::collections::BTreeMap;
use utoipa::openapi::response::Response;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{Modify, OpenApi, ToResponse};

/// The request is malformed (a field, a parameter or the JSON itself).
#[derive(ToResponse)]
pub struct BadRequest(#[allow(dead_code)] ErrorResponse);

/// No identified caller (sign in, an API token, or a signed request), or the sign-in
/// was refused.
#[derive(ToResponse)]
pub struct Unauthenticated(#[allow(dead_code)] ErrorResponse);

/// Identified, but refused as made (missing CSRF token, second factor not set up or
/// not given, role not allowed to do this).
#[derive(ToResponse)]
pub struct Forbidden(#[allow(dead_code)] ErrorResponse);

/// Not found, or not visible to this caller: the two answer alike.
#[derive(ToResponse)]
pub struct NotFound(#[allow(dead_code)] ErrorResponse);

/// The request body is over the route's limit.
#[derive(ToResponse)]
pub struct TooLarge(#[allow(dead_code)] ErrorResponse);

/// The ledger refused the transaction this request makes.
#[derive(ToResponse)]
pub struct Rejected(#[allow(dead_code)] ErrorResponse);

/// Too many requests from this client address (or, for sign-in, to this account).
#[derive(ToResponse)]
#[response(headers(("Retry-After" = u64, description = "Seconds to wait before retrying")))]
pub struct RateLimited(#[allow(dead_code)] ErrorResponse);

/// The node cannot serve this now (not the leader, shutting down, storage failing).
#[derive(ToResponse)]
pub struct Unavailable(#[allow(dead_code)] ErrorResponse);

/// Refusals that many routes share, listed in `responses(...)` beside a route's own
/// (each names a response component above).
macro_rules! refusals {
    ($($(#[$doc:meta])* $name:ident: $($status:literal => $response:ident),+;)*) => {$(
        $(#[$doc])*
        pub struct $name;

        impl utoipa::IntoResponses for $name {
            fn responses() -> BTreeMap<String, RefOr<Response>> {
                BTreeMap::from([$(
                    ($status.to_owned(), Ref::from_response_name(stringify!($response)).into())
                ),+])
            }
        }
    )*};
}

refusals! {
    /// A lookup by an identified caller: malformed, anonymous, refused as made, or
    /// absent (what the caller may not see answers as absent).
    Lookup: "400" => BadRequest, "401" => Unauthenticated, "403" => Forbidden, "404" => NotFound;
    /// A request made with the session cookie that changes state: no session, or no
    /// CSRF token or second factor.
    SessionWrite: "401" => Unauthenticated, "403" => Forbidden;
    /// A JSON body: malformed, or over the limit.
    JsonBody: "400" => BadRequest, "413" => TooLarge;
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "medledger JSON API",
        version = "1",
        description = "Ledger, contracts and audit of a medledger node. Record contents never \
            pass through these endpoints; the ledger holds ids, CIDs, hashes, roles, consent, \
            payments and audit facts only. Transactions are signed by their account (see \
            /v1/tx/prepare). Queries answer only an identified caller (session cookie, Bearer \
            API token, or a signed request), with what that caller may see; anything else \
            answers 404 as if absent. The HL7 FHIR R4 API lives under /fhir (its \
            CapabilityStatement is /fhir/metadata)."
    ),
    components(
        schemas(ErrorResponse),
        responses(
            BadRequest,
            Unauthenticated,
            Forbidden,
            NotFound,
            TooLarge,
            Rejected,
            RateLimited,
            Unavailable
        )
    ),
    tags(
        (name = "ledger", description = "Transactions, blocks, tree heads, proofs, accounts, node status"),
        (name = "contracts", description = "Queries of contract state: records, consent, audit, messages, payments"),
        (name = "auth", description = "Registration, sign-in, sessions, API tokens, recovery")
    ),
    modifiers(&SecuritySchemes)
)]
pub struct ApiDoc;

/// How a caller identifies itself (the one extractor, `http::caller`). Routes name
/// these in their `security(...)`: `medledgerSignature`, `medledgerSession` (with
/// `csrfToken` on state-changing routes), `apiToken`.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "medledgerSignature",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "Medledger-Ed25519 did=<did:key>,ts=<ms>,sig=<hex Ed25519 signature over \
                 'medledger/request/v1\\n<METHOD>\\n<path?query>\\n<ts>'>",
            ))),
        );
        components.add_security_scheme(
            "medledgerSession",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                crate::http::auth::SESSION_COOKIE,
                "Session cookie from /auth/login; writes also need the X-CSRF-Token header",
            ))),
        );
        components.add_security_scheme(
            "csrfToken",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-CSRF-Token",
                "The csrf value /auth/login answered; every state-changing request made with \
                 the session cookie carries it",
            ))),
        );
        let mut bearer = Http::new(HttpAuthScheme::Bearer);
        bearer.description = Some("API token from /auth/tokens (mlt_...)".into());
        components.add_security_scheme("apiToken", SecurityScheme::Http(bearer));
    }
}

/// The document as served: generated once when the router is built.
pub fn to_json(doc: &utoipa::openapi::OpenApi) -> String {
    doc.to_pretty_json()
        .expect("an OpenAPI document always serialises")
}

#[cfg(test)]
mod tests {
    use crate::http::limits::PerClient;
    use serde_json::{Value, json};
    use std::sync::Arc;

    fn document() -> Value {
        let (_, doc) = crate::http::api(Arc::new(PerClient::new(1, 1)));
        serde_json::from_str(&super::to_json(&doc)).unwrap()
    }

    /// The document names exactly the transaction kinds the node accepts (serde's
    /// refusal of an unknown kind lists them all), each with its own fields.
    #[test]
    fn openapi_lists_every_transaction_kind() {
        let doc = document();
        let kinds = doc["components"]["schemas"]["Payload"]["oneOf"]
            .as_array()
            .expect("Payload is one of its kinds")
            .clone();
        let mut documented: Vec<String> = kinds
            .iter()
            .map(|k| {
                k["properties"]["kind"]["enum"][0]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        let err = serde_json::from_value::<medledger_core::Payload>(json!({"kind": "zzz"}))
            .unwrap_err()
            .to_string();
        let expected = err.split("expected one of").nth(1).expect("variant list");
        let mut accepted: Vec<String> = expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        documented.sort();
        accepted.sort();
        assert!(accepted.len() > 20, "{err}");
        assert_eq!(documented, accepted);
        // Fields come from the type: a grant names its grantee, scope and times.
        let grant = kinds
            .iter()
            .find(|k| k["properties"]["kind"]["enum"][0] == "grant_consent")
            .unwrap();
        let mut required: Vec<&str> = grant["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        required.sort();
        assert_eq!(
            required,
            [
                "expiry_ms",
                "grantee",
                "kind",
                "purpose",
                "scope",
                "start_ms"
            ]
        );
    }
}
