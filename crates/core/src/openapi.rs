//! JSON Schemas (for the node's generated OpenAPI document) of the types whose JSON
//! form is a string with its own syntax: ids, hashes, CIDs, signatures. The derived
//! types (payloads, scopes, roles...) get theirs from `utoipa`'s derive, which follows
//! their serde attributes; only the hand-written serde forms need one written here.

use crate::hash::Digest32;
use crate::ids::{AccountId, BlockHash, ChainId, NodeKey, TxHash};
use crate::model::{AgreementId, BreakGlassId, Category, Cid, GrantId, MessageId, OrgId, RecordId};
use crate::tx::SignatureBytes;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

/// `did:key` (Ed25519) or 64 hex digits, as [`AccountId`]'s `FromStr` accepts.
const KEY: &str = "^(did:key:z6Mk[1-9A-HJ-NP-Za-km-z]{44}|[0-9a-fA-F]{64})$";
const HEX32: &str = "^[0-9a-fA-F]{64}$";
const SLUG: &str = "^[a-z0-9-]{1,64}$";

macro_rules! string_schema {
    ($($ty:ty => $pattern:expr, $doc:expr;)*) => {$(
        impl utoipa::PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some($pattern))
                    .description(Some($doc))
                    .into()
            }
        }
        impl utoipa::ToSchema for $ty {}
    )*};
}

string_schema! {
    AccountId => KEY, "An account: its Ed25519 public key as did:key (or 64 hex digits).";
    NodeKey => KEY, "A node's Ed25519 public key as did:key (or 64 hex digits).";
    Digest32 => HEX32, "32 bytes in hex.";
    TxHash => HEX32, "A transaction hash (hex).";
    BlockHash => HEX32, "A block hash (hex).";
    RecordId => HEX32, "A record id (hex).";
    GrantId => HEX32, "A consent grant id (hex).";
    MessageId => HEX32, "A message id (hex).";
    AgreementId => HEX32, "A paid access agreement id (hex).";
    BreakGlassId => HEX32, "A break-glass access id (hex).";
    ChainId => SLUG, "The chain a transaction is meant for.";
    OrgId => SLUG, "An organisation of the consortium (a slug, never a person's name).";
    Category => "^[A-Z][A-Za-z0-9]{0,63}$", "A record category: a FHIR resource type name or a similar code.";
    Cid => "^bafkrei[a-z2-7]{52}$", "A CIDv1 (raw codec, sha2-256) in multibase base32.";
    SignatureBytes => "^[0-9a-fA-F]{128}$", "A 64-byte Ed25519 signature in hex.";
}
