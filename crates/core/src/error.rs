//! Errors of the core types, and the typed reasons a transaction is rejected.

use serde::{Deserialize, Serialize};
use std::fmt;

pub type Result<T, E = CoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CoreError {
    #[error("not a valid Ed25519 public key")]
    InvalidKey,
    #[error("not a valid did:key identifier (expected did:key:z6Mk... or 64 hex digits)")]
    InvalidDid,
    #[error("not a valid hash (expected 64 hex digits)")]
    InvalidHash,
    #[error("chain id must be 1-64 characters of a-z, 0-9 and '-'")]
    InvalidChainId,
    #[error("malformed encoding: {0}")]
    Decode(String),
    #[error("random number generator failed")]
    Rng,
    #[error("organisation id must be 1-64 characters of a-z, 0-9 and '-'")]
    InvalidOrgId,
    #[error("category must be 1-64 ASCII letters and digits starting with a capital letter")]
    InvalidCategory,
    #[error("not a CIDv1 (raw codec, sha2-256) in base32 text form")]
    InvalidCid,
    #[error(
        "unknown role (expected one of patient, doctor, nurse, hospital_admin, researcher, insurer, auditor)"
    )]
    InvalidRole,
    #[error(
        "unknown purpose (expected one of treatment, payment, operations, research, emergency)"
    )]
    InvalidPurpose,
}

/// Why a transaction was refused. Every rejection leaves the ledger unchanged.
/// Serialized as `{"code": "...", ...}` so API clients can match on the code.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum RejectReason {
    /// The bytes are not a canonical encoding of a signed transaction.
    Malformed { detail: String },
    /// The encoded transaction is larger than the limit.
    Oversized { size: usize, max: usize },
    /// The transaction format version is not one this node understands.
    UnsupportedVersion { version: u8 },
    /// Signed for another chain.
    WrongChainId { expected: String, got: String },
    /// The signature does not verify under the signer's key.
    BadSignature,
    /// The signer has no account on this ledger.
    UnknownSigner,
    /// The nonce was already used (a replay).
    ReplayedNonce { expected: u64, got: u64 },
    /// The nonce skips ahead of the next expected one.
    NonceGap { expected: u64, got: u64 },
    /// The signer's role does not allow this transaction.
    Unauthorized { detail: String },
    /// The account to create already exists.
    AccountExists,
    /// The node's queue is full; retry later. Nothing was recorded.
    Overloaded,
    /// A referenced object (account, organisation, record, grant, ...) does not exist.
    NotFound { what: String },
    /// A field is out of range or inconsistent (empty scope, expiry before start, ...).
    Invalid { detail: String },
    /// The request contradicts the object's current state (already decided, revoked, ...).
    Conflict { detail: String },
    /// The signer's balance does not cover the amount.
    InsufficientFunds { balance: u64, needed: u64 },
    /// The object's deadline has passed.
    Expired { what: String },
    /// The record was erased; nothing can be done with it any more.
    Erased,
    /// The CID is already registered to a record version: a blob belongs to exactly
    /// one version of one record, so its envelopes, grants and erasure are that
    /// record's alone.
    CidTaken,
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RejectReason::Malformed { detail } => write!(f, "malformed transaction: {detail}"),
            RejectReason::Oversized { size, max } => {
                write!(f, "transaction is {size} bytes; the limit is {max}")
            }
            RejectReason::UnsupportedVersion { version } => {
                write!(f, "unsupported transaction format version {version}")
            }
            RejectReason::WrongChainId { expected, got } => {
                write!(
                    f,
                    "wrong chain id: this ledger is {expected:?}, the transaction is for {got:?}"
                )
            }
            RejectReason::BadSignature => f.write_str("signature does not verify"),
            RejectReason::UnknownSigner => f.write_str("signer has no account on this ledger"),
            RejectReason::ReplayedNonce { expected, got } => {
                write!(
                    f,
                    "nonce {got} was already used (replay); next nonce is {expected}"
                )
            }
            RejectReason::NonceGap { expected, got } => {
                write!(f, "nonce {got} is out of order; next nonce is {expected}")
            }
            RejectReason::Unauthorized { detail } => write!(f, "not allowed: {detail}"),
            RejectReason::AccountExists => f.write_str("account already exists"),
            RejectReason::Overloaded => f.write_str("node is overloaded; retry later"),
            RejectReason::NotFound { what } => write!(f, "{what} not found"),
            RejectReason::Invalid { detail } => write!(f, "invalid: {detail}"),
            RejectReason::Conflict { detail } => write!(f, "conflict: {detail}"),
            RejectReason::InsufficientFunds { balance, needed } => {
                write!(f, "insufficient funds: balance {balance}, needed {needed}")
            }
            RejectReason::Expired { what } => write!(f, "{what} has expired"),
            RejectReason::Erased => f.write_str("the record was erased"),
            RejectReason::CidTaken => f.write_str(
                "this CID is already registered to a record version; store the content anew",
            ),
        }
    }
}

impl RejectReason {
    /// The stable machine-readable code (the serde tag).
    pub fn code(&self) -> &'static str {
        match self {
            RejectReason::Malformed { .. } => "malformed",
            RejectReason::Oversized { .. } => "oversized",
            RejectReason::UnsupportedVersion { .. } => "unsupported_version",
            RejectReason::WrongChainId { .. } => "wrong_chain_id",
            RejectReason::BadSignature => "bad_signature",
            RejectReason::UnknownSigner => "unknown_signer",
            RejectReason::ReplayedNonce { .. } => "replayed_nonce",
            RejectReason::NonceGap { .. } => "nonce_gap",
            RejectReason::Unauthorized { .. } => "unauthorized",
            RejectReason::AccountExists => "account_exists",
            RejectReason::Overloaded => "overloaded",
            RejectReason::NotFound { .. } => "not_found",
            RejectReason::Invalid { .. } => "invalid",
            RejectReason::Conflict { .. } => "conflict",
            RejectReason::InsufficientFunds { .. } => "insufficient_funds",
            RejectReason::Expired { .. } => "expired",
            RejectReason::Erased => "erased",
            RejectReason::CidTaken => "cid_taken",
        }
    }
}

impl RejectReason {
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        RejectReason::Unauthorized {
            detail: detail.into(),
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        RejectReason::NotFound { what: what.into() }
    }

    pub fn invalid(detail: impl Into<String>) -> Self {
        RejectReason::Invalid {
            detail: detail.into(),
        }
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        RejectReason::Conflict {
            detail: detail.into(),
        }
    }

    pub fn expired(what: impl Into<String>) -> Self {
        RejectReason::Expired { what: what.into() }
    }
}
