//! The vocabulary of the health-record contracts: organisations, roles, purposes,
//! consent scopes, content identifiers and the ids of ledger objects. Nothing here can
//! hold personal data: categories are FHIR resource type names, reasons are codes,
//! contents are referred to by CID and hash only.

use crate::error::CoreError;
use crate::hash::Digest32;
use crate::ids::{AccountId, TxHash, digest_id};
use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A ledger object id: a [`digest_id`] that equals the hash of the creating tx.
macro_rules! object_id {
    ($(#[$doc:meta])* $name:ident) => {
        digest_id!($(#[$doc])* $name);

        impl $name {
            /// The id of the object created by the transaction with this hash.
            pub fn from_tx(hash: &TxHash) -> Self {
                $name(hash.0)
            }
        }
    };
}

object_id!(
    /// A health record (all its versions). Equal to the hash of the creating tx, so a
    /// client knows the id before it submits.
    RecordId
);
object_id!(
    /// A consent grant (the hash of the granting tx).
    GrantId
);
object_id!(
    /// A message (the hash of the sending tx).
    MessageId
);
object_id!(
    /// A paid access agreement (the hash of the proposing tx).
    AgreementId
);
object_id!(
    /// A break-glass emergency access (the hash of the opening tx).
    BreakGlassId
);

/// A string newtype whose every value (serde, `FromStr`, constructor) obeys `$valid`.
macro_rules! checked_string {
    ($(#[$doc:meta])* $name:ident, $valid:expr, $err:expr) => {
        $(#[$doc])*
        #[derive(
            Clone, PartialEq, Eq, Hash, PartialOrd, Ord, BorshSerialize, BorshDeserialize,
            Serialize, Deserialize,
        )]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn new(s: impl Into<String>) -> Result<Self, CoreError> {
                let s = s.into();
                let valid: fn(&str) -> bool = $valid;
                if valid(&s) { Ok($name(s)) } else { Err($err) }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Whether a decoded value obeys the same rules as `new` (borsh decoding
            /// bypasses the constructor).
            pub fn is_valid(&self) -> bool {
                let valid: fn(&str) -> bool = $valid;
                valid(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = CoreError;
            fn try_from(s: String) -> Result<Self, CoreError> {
                $name::new(s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl FromStr for $name {
            type Err = CoreError;
            fn from_str(s: &str) -> Result<Self, CoreError> {
                $name::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }
    };
}

checked_string!(
    /// An organisation of the consortium: a short slug such as `st-mary`, never a
    /// person's name.
    OrgId,
    |s| {
        (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    },
    CoreError::InvalidOrgId
);

checked_string!(
    /// A record category: a FHIR resource type name (`Observation`, `Condition`, ...)
    /// or another code of up to 64 ASCII letters and digits, starting with a capital.
    Category,
    |s| {
        (1..=64).contains(&s.len())
            && s.as_bytes()[0].is_ascii_uppercase()
            && s.bytes().all(|b| b.is_ascii_alphanumeric())
    },
    CoreError::InvalidCategory
);

/// The binary prefix of every CID we issue: CIDv1, `raw` codec (0x55), sha2-256
/// multihash (0x12) of 32 bytes (0x20).
const CID_PREFIX: [u8; 4] = [0x01, 0x55, 0x12, 0x20];

/// A CIDv1 (raw codec, sha2-256) of stored bytes, as IPFS computes it. Only the
/// digest varies, so only the digest is stored; the text form is multibase base32
/// (`b` + lowercase RFC 4648 without padding), e.g. `bafkrei...`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, BorshSerialize, BorshDeserialize)]
pub struct Cid(pub Digest32);

impl Cid {
    /// The CID of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest;
        Cid(Digest32(sha2::Sha256::digest(bytes).into()))
    }

    /// The binary CID (36 bytes).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = CID_PREFIX.to_vec();
        v.extend_from_slice(&self.0.0);
        v
    }
}

impl fmt::Display for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b32 = data_encoding::BASE32_NOPAD.encode(&self.to_bytes());
        write!(f, "b{}", b32.to_ascii_lowercase())
    }
}

impl fmt::Debug for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cid({self})")
    }
}

impl FromStr for Cid {
    type Err = CoreError;
    /// Accepts the base32 text form of a CIDv1 with raw codec and sha2-256 only.
    fn from_str(s: &str) -> Result<Self, CoreError> {
        let rest = s.strip_prefix('b').ok_or(CoreError::InvalidCid)?;
        if rest.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(CoreError::InvalidCid);
        }
        let bytes = data_encoding::BASE32_NOPAD
            .decode(rest.to_ascii_uppercase().as_bytes())
            .map_err(|_| CoreError::InvalidCid)?;
        if bytes.len() != 36 || bytes[..4] != CID_PREFIX {
            return Err(CoreError::InvalidCid);
        }
        let mut d = [0u8; 32];
        d.copy_from_slice(&bytes[4..]);
        Ok(Cid(Digest32(d)))
    }
}

impl Serialize for Cid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <String as Deserialize>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What an account does inside an organisation.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    BorshSerialize,
    BorshDeserialize,
    Serialize,
    Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Patient,
    Doctor,
    Nurse,
    HospitalAdmin,
    Researcher,
    Insurer,
    Auditor,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Role::Patient,
        Role::Doctor,
        Role::Nurse,
        Role::HospitalAdmin,
        Role::Researcher,
        Role::Insurer,
        Role::Auditor,
    ];

    pub fn is_clinician(self) -> bool {
        matches!(self, Role::Doctor | Role::Nurse)
    }

    /// The purposes for which this role may use someone else's records under a grant.
    pub fn may_use_for(self, purpose: Purpose) -> bool {
        match purpose {
            Purpose::Treatment | Purpose::Emergency => self.is_clinician(),
            Purpose::Payment => self == Role::Insurer,
            Purpose::Research => self == Role::Researcher,
            Purpose::Operations => matches!(
                self,
                Role::Doctor | Role::Nurse | Role::HospitalAdmin | Role::Auditor
            ),
        }
    }
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Patient => "patient",
            Role::Doctor => "doctor",
            Role::Nurse => "nurse",
            Role::HospitalAdmin => "hospital_admin",
            Role::Researcher => "researcher",
            Role::Insurer => "insurer",
            Role::Auditor => "auditor",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, CoreError> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or(CoreError::InvalidRole)
    }
}

/// Why a record is used (HIPAA's treatment, payment, operations; plus research, and
/// emergency for break-glass access).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    BorshSerialize,
    BorshDeserialize,
    Serialize,
    Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    Treatment,
    Payment,
    Operations,
    Research,
    /// Only through break-glass; a grant cannot name it.
    Emergency,
}

impl Purpose {
    pub const ALL: [Purpose; 5] = [
        Purpose::Treatment,
        Purpose::Payment,
        Purpose::Operations,
        Purpose::Research,
        Purpose::Emergency,
    ];
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Treatment => "treatment",
            Purpose::Payment => "payment",
            Purpose::Operations => "operations",
            Purpose::Research => "research",
            Purpose::Emergency => "emergency",
        }
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Purpose {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, CoreError> {
        Purpose::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or(CoreError::InvalidPurpose)
    }
}

/// Which of a patient's records a grant covers.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(tag = "type", content = "items", rename_all = "snake_case")]
pub enum Scope {
    All,
    Categories(Vec<Category>),
    Records(Vec<RecordId>),
}

/// Most categories or records one scope may list (keeps grants small and checks cheap).
pub const MAX_SCOPE_ITEMS: usize = 64;

impl Scope {
    pub fn covers(&self, record: &RecordId, category: &Category) -> bool {
        match self {
            Scope::All => true,
            Scope::Categories(c) => c.contains(category),
            Scope::Records(r) => r.contains(record),
        }
    }

    /// Whether a new record of `category` (no id yet known to the grantor) is covered.
    pub fn covers_category(&self, category: &Category) -> bool {
        match self {
            Scope::All => true,
            Scope::Categories(c) => c.contains(category),
            Scope::Records(_) => false,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Scope::All => 0,
            Scope::Categories(c) => c.len(),
            Scope::Records(r) => r.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        !matches!(self, Scope::All) && self.len() == 0
    }
}

/// Who receives a grant: one account, or every member of an organisation.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
#[serde(tag = "type", content = "id", rename_all = "snake_case")]
pub enum Grantee {
    Account(AccountId),
    Org(OrgId),
}

/// A coded reason for break-glass access. Free text could carry clinical details, so
/// the ledger takes a code only; notes belong in an encrypted record.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum EmergencyReason {
    PatientUnconscious,
    LifeThreatening,
    NoConsentObtainable,
    Other,
}

/// What a patient asks to erase.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(tag = "type", content = "record", rename_all = "snake_case")]
pub enum ErasureTarget {
    Record(RecordId),
    Everything,
}

/// A record category kept for a legal period despite erasure requests.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct RetentionRule {
    pub category: Category,
    /// Kept this long after the record was created.
    pub period_ms: u64,
}

/// One read (or refused read) of a record, as a serving node reports it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct AccessReport {
    pub accessor: AccountId,
    pub record: RecordId,
    pub purpose: Purpose,
    /// When the node decided (not later than the block that records it).
    pub time_ms: u64,
    pub allowed: bool,
    /// The decision's reason code (see the ledger's `Decision`).
    pub reason: String,
}

/// One item of a `WriteRecords` transaction.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum RecordWrite {
    Add {
        patient: AccountId,
        category: Category,
        cid: Cid,
        content_hash: Digest32,
        size: u64,
    },
    Amend {
        record: RecordId,
        cid: Cid,
        content_hash: Digest32,
        size: u64,
    },
}

/// Most items one `WriteRecords` transaction may carry.
pub const MAX_RECORD_WRITES: usize = 1500;

impl RecordId {
    /// The id of the record added by item `index` of a `WriteRecords` transaction.
    /// Derived from the signer and nonce (unique per transaction) rather than the tx
    /// hash, so a writer knows every id before it seals contents that refer to each
    /// other (a FHIR transaction Bundle's references).
    pub fn in_batch(signer: &AccountId, nonce: u64, index: u32) -> Self {
        RecordId(crate::hash::tagged(
            b"medledger/record-in-batch/v1\0",
            &[&signer.0, &nonce.to_be_bytes(), &index.to_be_bytes()],
        ))
    }
}

/// Most access reports one transaction may carry.
pub const MAX_ACCESS_REPORTS: usize = 100;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cid_text_round_trip_and_ipfs_prefix() {
        let cid = Cid::of(b"hello");
        let s = cid.to_string();
        // Every CIDv1 raw/sha2-256 in base32 starts like this (as `ipfs add --cid-version 1` prints).
        assert!(s.starts_with("bafkrei"), "{s}");
        assert_eq!(s.parse::<Cid>().unwrap(), cid);
        assert!(s.to_uppercase().parse::<Cid>().is_err());
        assert!(
            "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"
                .parse::<Cid>()
                .is_err()
        );
    }

    #[test]
    fn ids_and_codes_are_validated() {
        assert!(OrgId::new("st-mary").is_ok());
        assert!(OrgId::new("St Mary").is_err());
        assert!(Category::new("Observation").is_ok());
        assert!(Category::new("john smith").is_err());
        assert_eq!("doctor".parse::<Role>().unwrap(), Role::Doctor);
        assert!("surgeon".parse::<Role>().is_err());
    }
}
