//! The error every JSON surface (`/v1`, `/auth`, the Raft endpoints) answers with:
//! `{"error": {"code", "message"}}`, never internals. `/fhir` answers the same cases as
//! an OperationOutcome ([`crate::http::fhir`]).

use crate::auth::AuthError;
use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use medledger_ledger::LedgerError;
use serde::{Deserialize, Serialize};

/// The one error type of the HTTP layer.
#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    NotFound(&'static str),
    Unavailable(String),
    /// The request needs a valid signature of the acting account.
    Unauthenticated(String),
    /// Identified, but the request is refused as made (missing CSRF token, no second
    /// factor yet). Never used for "may not see": that answers [`ApiError::NotFound`].
    Forbidden(String),
    /// The body is over the route's limit.
    TooLarge(String),
    Internal(String),
    /// A refusal a service names itself (sign-in's `bad_credentials`, `locked`, a
    /// ledger reject code...).
    Refused {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
}

/// The body of every refusal under `/v1` and `/auth`.
#[derive(Serialize, Deserialize, Debug, Clone, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

#[derive(Serialize, Deserialize, Debug, Clone, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A stable code (`not_found`, `bad_request`, a ledger reject code...).
    pub code: String,
    /// For people; never contains personal data.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m),
            ApiError::NotFound(what) => (
                StatusCode::NOT_FOUND,
                "not_found",
                format!("{what} not found"),
            ),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", m),
            ApiError::Unauthenticated(m) => (StatusCode::UNAUTHORIZED, "unauthenticated", m),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m),
            ApiError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large", m),
            ApiError::Refused {
                status,
                code,
                message,
            } => (status, code, message),
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error".to_owned(),
                )
            }
        };
        (
            status,
            Json(ErrorResponse {
                error: ErrorBody {
                    code: code.into(),
                    message,
                },
            }),
        )
            .into_response()
    }
}

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::NoSuchBlock(_) => ApiError::NotFound("block"),
            LedgerError::NoSuchTx => ApiError::NotFound("transaction"),
            LedgerError::NoSuchHead(_) => ApiError::NotFound("tree head at that size"),
            LedgerError::Merkle(m) => ApiError::BadRequest(m.to_string()),
            // Named, not hidden: an auditor reading a block that fails its check must
            // learn which one (the message holds a height and a reason, nothing else).
            e @ LedgerError::Corrupt { .. } => {
                tracing::error!(error = %e, "a ledger read failed its integrity check");
                ApiError::Refused {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    code: "ledger_corrupt",
                    message: e.to_string(),
                }
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::TooLarge(e.body_text());
        }
        ApiError::BadRequest(e.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::BadRequest(e.body_text())
    }
}
impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let (status, code) = match &e {
            AuthError::WeakPassword(_) => (StatusCode::BAD_REQUEST, "weak_password"),
            AuthError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
            AuthError::EmailTaken => (StatusCode::CONFLICT, "email_taken"),
            AuthError::BadLink => (StatusCode::BAD_REQUEST, "invalid_link"),
            AuthError::BadCredentials => (StatusCode::UNAUTHORIZED, "bad_credentials"),
            AuthError::Locked => (StatusCode::TOO_MANY_REQUESTS, "locked"),
            AuthError::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            AuthError::EmailUnverified => (StatusCode::FORBIDDEN, "email_unverified"),
            AuthError::PendingApproval => (StatusCode::FORBIDDEN, "pending_approval"),
            AuthError::MfaRequired => (StatusCode::UNAUTHORIZED, "mfa_required"),
            AuthError::BadCode => (StatusCode::UNAUTHORIZED, "bad_code"),
            AuthError::BadRecoveryCode => (StatusCode::UNAUTHORIZED, "bad_recovery_code"),
            AuthError::NoSession => (StatusCode::UNAUTHORIZED, "no_session"),
            AuthError::BadCsrf => (StatusCode::FORBIDDEN, "bad_csrf"),
            AuthError::MfaSetupRequired => (StatusCode::FORBIDDEN, "mfa_setup_required"),
            AuthError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            AuthError::Ledger(r) => (StatusCode::UNPROCESSABLE_ENTITY, r.code()),
            AuthError::Internal(detail) => return ApiError::Internal(format!("auth: {detail}")),
        };
        ApiError::Refused {
            status,
            code,
            message: e.to_string(),
        }
    }
}
