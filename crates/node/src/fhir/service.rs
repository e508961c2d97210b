//! Create, read, update, delete, history, search and Bundles over the ledger.

use super::catchup::{CatchUp, CatchUpReport};
use super::index::{Doc, Index, IndexEntry};
use crate::auth::Principal;
use crate::keystore::AccountKeys;
use crate::reporter::{Reporter, now_ms};
use crate::submitter::{Outcome, Reserved, SubmitError, Submitter};
use axum::http::StatusCode;
use medledger_core::tx::invite_commitment;
use medledger_core::{
    AccountId, Category, Digest32, Grantee, Payload, Purpose, RecordId, RecordWrite, RejectReason,
    Role, Scope, TxHash,
};
use medledger_fhir::outcome::{Issue, IssueCode, operation_outcome};
use medledger_fhir::{date, refs, search};
use medledger_ledger::contracts::query::{self, RecordView};
use medledger_ledger::contracts::state::VersionState;
use medledger_ledger::exec::StateRead;
use medledger_ledger::{Decision, Ledger, contracts};
use medledger_store::{BlobStore, Reader, ReaderSecret};
use serde_json::{Map, Value, json};
use std::collections::{HashMap, HashSet};
use std::future::Future;

/// Why a FHIR interaction failed; the API turns it into a status and an
/// OperationOutcome.
#[derive(Debug, thiserror::Error)]
pub enum FhirError {
    #[error("invalid resource")]
    Invalid(Vec<Issue>),
    #[error("not signed in")]
    Unauthenticated,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    NotSupported(String),
    #[error("the ledger refused the write: {0}")]
    Ledger(RejectReason),
    #[error("{0}")]
    Unavailable(String),
    /// The request body is over the limit.
    #[error("{0}")]
    TooLarge(String),
    /// Stored content failed its integrity check (CID, AEAD tag, or the ledger's
    /// binding of CID to record): permanent, not worth a retry.
    #[error("integrity: {0}")]
    Corrupt(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl FhirError {
    pub fn invalid(code: IssueCode, msg: impl Into<String>) -> Self {
        FhirError::Invalid(vec![Issue::new(code, msg)])
    }
}

impl From<Issue> for FhirError {
    fn from(i: Issue) -> Self {
        FhirError::Invalid(vec![i])
    }
}

impl FhirError {
    /// The HTTP status and OperationOutcome FHIR answers this failure with, for a
    /// whole interaction or one entry of a batch. Internal details go to the log only.
    pub fn outcome(&self) -> (StatusCode, Value) {
        use medledger_core::RejectReason as R;
        let one = |code, msg: String| operation_outcome(&[Issue::new(code, msg)]);
        match self {
            FhirError::Invalid(issues) => (StatusCode::BAD_REQUEST, operation_outcome(issues)),
            FhirError::Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                one(
                    IssueCode::Login,
                    "sign in, or send an API token as Authorization: Bearer".into(),
                ),
            ),
            FhirError::NotFound(m) => (StatusCode::NOT_FOUND, one(IssueCode::NotFound, m.clone())),
            FhirError::TooLarge(m) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                one(IssueCode::TooLong, m.clone()),
            ),
            FhirError::Gone(m) => (StatusCode::GONE, one(IssueCode::Deleted, m.clone())),
            FhirError::Forbidden(m) => {
                (StatusCode::FORBIDDEN, one(IssueCode::Forbidden, m.clone()))
            }
            FhirError::Conflict(m) => (StatusCode::CONFLICT, one(IssueCode::Conflict, m.clone())),
            FhirError::PreconditionFailed(m) => (
                StatusCode::PRECONDITION_FAILED,
                one(IssueCode::Conflict, m.clone()),
            ),
            FhirError::NotSupported(m) => (
                StatusCode::METHOD_NOT_ALLOWED,
                one(IssueCode::NotSupported, m.clone()),
            ),
            FhirError::Ledger(r) => {
                let status = match r {
                    R::Unauthorized { .. } => StatusCode::FORBIDDEN,
                    R::NotFound { .. } => StatusCode::NOT_FOUND,
                    R::Erased => StatusCode::GONE,
                    R::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::CONFLICT,
                };
                let code = if status == StatusCode::FORBIDDEN {
                    IssueCode::Forbidden
                } else {
                    IssueCode::Processing
                };
                (status, one(code, format!("ledger: {} ({})", r, r.code())))
            }
            FhirError::Unavailable(m) => {
                tracing::warn!(error = %m, "fhir: service unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    one(
                        IssueCode::Exception,
                        "temporarily unavailable; retry".into(),
                    ),
                )
            }
            FhirError::Corrupt(m) => {
                // Permanent: a retry reads the same bytes. The detail stays in the log.
                tracing::error!(error = %m, "fhir: stored content failed its integrity check");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    one(
                        IssueCode::Exception,
                        "the stored content of this resource failed its integrity check; retrying will not help, report it to the node's operator".into(),
                    ),
                )
            }
            FhirError::Internal(m) => {
                tracing::error!(error = %m, "fhir: internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    one(IssueCode::Exception, "internal error".into()),
                )
            }
        }
    }
}

fn internal(e: impl std::fmt::Display) -> FhirError {
    FhirError::Internal(e.to_string())
}

fn submit_error(e: SubmitError) -> FhirError {
    match e {
        SubmitError::Refused(reason) => FhirError::Ledger(reason),
        SubmitError::Unavailable(m) => FhirError::Unavailable(m),
        SubmitError::Ledger(e) => internal(e),
    }
}

/// What a caller gets for a resource they may not see: exactly the answer for one
/// that does not exist, so a refusal tells nothing about existence.
fn absent(rtype: &str) -> FhirError {
    FhirError::NotFound(format!("no {rtype} with this id"))
}

/// Errors that leave one resource out of a search or `$everything` instead of failing
/// the whole answer: absent, refused, deleted, or failing its integrity check.
fn skippable(e: &FhirError) -> bool {
    matches!(
        e,
        FhirError::NotFound(_)
            | FhirError::Gone(_)
            | FhirError::Forbidden(_)
            | FhirError::Corrupt(_)
    )
}

/// A searchset entry (`search.mode: outcome`) saying that `n` matches were left out
/// because their stored content failed its integrity check; none when `n` is 0.
fn damaged_outcome(n: usize) -> Option<Value> {
    (n > 0).then(|| {
        let oo = medledger_fhir::outcome::warnings(&[Issue::new(
            IssueCode::Exception,
            format!(
                "{n} matching resource(s) left out: their stored content failed its integrity check"
            ),
        )]);
        json!({"resource": oo, "search": {"mode": "outcome"}})
    })
}

/// Most refused candidates of one search written to the audit trail: each is a
/// ledger entry, and one request must not be able to write without bound.
const MAX_REFUSED_REPORTS: usize = 100;

/// Content of a deleted version (sealed like any other version).
const TOMBSTONE: &str = "medledger:deleted";
/// How long the grants made at patient creation last (the patient can revoke them).
const INTAKE_GRANT_MS: u64 = 50 * 365 * 24 * 3600 * 1000;
/// Largest `$everything` and type-history answer.
const MAX_EVERYTHING: usize = 10_000;

/// A resource as stored: its id, version and time on the ledger.
#[derive(Debug, Clone)]
pub struct Stored {
    pub rtype: String,
    pub id: String,
    pub version: u32,
    pub time_ms: u64,
    pub resource: Value,
}

impl Stored {
    /// Version `v` of `rtype/id` with `content`: id and meta come from the ledger.
    fn new(rtype: &str, id: &str, v: &VersionState, content: Value) -> Self {
        Stored {
            rtype: rtype.to_owned(),
            id: id.to_owned(),
            version: v.version,
            time_ms: v.time_ms,
            resource: render(content, id, v),
        }
    }

    /// `Type/id/_history/version`.
    pub fn location(&self) -> String {
        format!("{}/{}/_history/{}", self.rtype, self.id, self.version)
    }

    pub fn etag(&self) -> String {
        format!("W/\"{}\"", self.version)
    }
}

pub struct Fhir {
    ledger: Ledger,
    submitter: Submitter,
    store: BlobStore,
    reporter: Reporter,
    index: Index,
    custodian: ReaderSecret,
    custodian_public: [u8; 32],
    directory_lock: tokio::sync::Mutex<()>,
}

impl Fhir {
    /// The search index (a backup dumps it).
    pub(crate) fn index(&self) -> &Index {
        &self.index
    }
}

impl std::fmt::Debug for Fhir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fhir")
    }
}

/// The purpose a role reads FHIR resources for.
fn purpose_of(role: Role) -> Result<Purpose, FhirError> {
    match role {
        Role::Patient | Role::Doctor | Role::Nurse => Ok(Purpose::Treatment),
        Role::HospitalAdmin | Role::Auditor => Ok(Purpose::Operations),
        Role::Insurer => Ok(Purpose::Payment),
        Role::Researcher => Err(FhirError::Forbidden(
            "researchers may use de-identified data only; the FHIR API serves identified records"
                .into(),
        )),
    }
}

/// How the FHIR surface decides a read: for the role's purpose, and for a doctor whom
/// that refuses, for `emergency`, which only their own live break-glass on the
/// patient allows. The one place that picks the purpose a read is decided and
/// audited under (the report carries it, so break-glass reads are marked as such).
fn can_as(
    st: &impl StateRead,
    who: &Principal,
    record: &RecordId,
    at: u64,
) -> medledger_ledger::Result<Result<(Decision, Purpose), FhirError>> {
    let purpose = match purpose_of(who.role) {
        Ok(p) => p,
        Err(e) => return Ok(Err(e)),
    };
    let d = contracts::can(st, &who.account, record, purpose, at)?;
    if !d.allowed() && who.role == Role::Doctor {
        let e = contracts::can(st, &who.account, record, Purpose::Emergency, at)?;
        if e.allowed() {
            return Ok(Ok((e, Purpose::Emergency)));
        }
    }
    Ok(Ok((d, purpose)))
}

pub fn record_id(id: &str) -> Option<RecordId> {
    id.parse().ok()
}

/// Content without the server-assigned parts (`id`, `meta.versionId`,
/// `meta.lastUpdated`), which come from the ledger on every read.
fn strip_server_fields(v: &mut Value) {
    if let Some(o) = v.as_object_mut() {
        o.remove("id");
        let empty = match o.get_mut("meta").and_then(Value::as_object_mut) {
            Some(m) => {
                m.remove("versionId");
                m.remove("lastUpdated");
                m.is_empty()
            }
            None => false,
        };
        if empty {
            o.remove("meta");
        }
    }
}

fn render(mut content: Value, id: &str, v: &VersionState) -> Value {
    if let Some(o) = content.as_object_mut() {
        o.insert("id".into(), json!(id));
        let meta = o.entry("meta").or_insert_with(|| json!({}));
        if let Some(m) = meta.as_object_mut() {
            m.insert("versionId".into(), json!(v.version.to_string()));
            m.insert("lastUpdated".into(), json!(date::instant(v.time_ms)));
        }
    }
    content
}

fn is_tombstone(v: &Value) -> bool {
    v.get("resourceType").and_then(Value::as_str) == Some(TOMBSTONE)
}

/// A resource ready to be registered: sealed in the store, with its index entries.
struct Prepared {
    rtype: String,
    cid: medledger_core::Cid,
    content_hash: Digest32,
    size: u64,
    tokens: Vec<[u8; 32]>,
    dates: Vec<(String, i64, i64)>,
    deleted: bool,
}

/// A validated transaction entry (`id` for PUT and DELETE).
struct Planned {
    method: &'static str,
    rtype: String,
    id: Option<String>,
    full_url: Option<String>,
    resource: Option<Value>,
}

impl Prepared {
    fn entry(&self, record: RecordId) -> IndexEntry {
        IndexEntry {
            record,
            rtype: self.rtype.clone(),
            tokens: self.tokens.clone(),
            dates: self.dates.clone(),
            deleted: self.deleted,
            cid: self.cid,
        }
    }
}

/// Opens one version's blob with the custodian key, after checking that the ledger
/// registered this CID to exactly this record version: the custodian envelope opens
/// any blob, so the binding (not the envelope) is what ties content to the record it
/// is read as.
pub(super) async fn fetch_version(
    ledger: &Ledger,
    store: &BlobStore,
    custodian: &ReaderSecret,
    record: &RecordId,
    v: &VersionState,
) -> Result<Value, FhirError> {
    let cid = v.cid;
    let owner = ledger
        .state()
        .and_then(|st| query::cid_owner(&st, &cid))
        .map_err(internal)?;
    if !owner.is_some_and(|o| o.record == *record && o.version == v.version) {
        return Err(FhirError::Corrupt(format!(
            "blob {cid} is not registered to this record version"
        )));
    }
    let mut out = Vec::new();
    store.get(&cid, custodian, &mut out).await.map_err(|e| {
        use medledger_store::StoreError as S;
        match e {
            // The ledger registered this version: a blob that is missing, erased,
            // unopenable or altered is damage, not a passing failure.
            S::Corrupt { .. }
            | S::Format(_)
            | S::Decrypt { .. }
            | S::EnvelopeOpen(_)
            | S::NotFound(_)
            | S::NoAccess(_) => FhirError::Corrupt(format!("record store: {e}")),
            // Shredded while the ledger still lists it: an erasure this node learnt
            // from its erasure journal after a restore (or one racing this read).
            S::Erased(_) => FhirError::NotFound("no resource with this id".into()),
            e => FhirError::Unavailable(format!("record store: {e}")),
        }
    })?;
    serde_json::from_slice(&out).map_err(|e| FhirError::Corrupt(format!("content: {e}")))
}

/// The node's custodian key pair, derived from its FHIR key: every resource written
/// through this node is also sealed for it, so the node can index and serve it.
pub(super) fn custodian(key: [u8; 32], node: AccountId) -> ReaderSecret {
    ReaderSecret {
        account: node,
        secret: medledger_core::hash::tagged(b"medledger/fhir-custodian/v1\0", &[&key]).0,
    }
}

/// What the index keeps of one version of a resource.
pub(super) struct Terms {
    pub tokens: Vec<[u8; 32]>,
    pub dates: Vec<(String, i64, i64)>,
    /// A deletion's tombstone (no tokens, no dates).
    pub deleted: bool,
}

pub(super) fn index_terms(index: &Index, rtype: &str, content: &Value) -> Terms {
    if is_tombstone(content) {
        return Terms {
            tokens: Vec::new(),
            dates: Vec::new(),
            deleted: true,
        };
    }
    let extracted = search::extract(rtype, content);
    Terms {
        tokens: extracted
            .tokens
            .iter()
            .map(|(p, v)| index.token(rtype, p, v))
            .collect(),
        dates: extracted
            .dates
            .iter()
            .map(|(p, r)| ((*p).to_owned(), r.lo, r.hi))
            .collect(),
        deleted: false,
    }
}

/// One entry of a transaction Bundle after resolution.
struct BundleOp {
    method: &'static str,
    rtype: String,
    /// The record written (known before submission).
    record: RecordId,
    full_url: Option<String>,
    resource: Option<Value>,
    patient: Option<AccountId>,
}

impl Fhir {
    /// Opens `fhir.redb` in the data directory; `key` is the node-local secret the
    /// search tokens, sealed documents and the custodian key derive from.
    pub fn open(
        data_dir: &std::path::Path,
        key: [u8; 32],
        node: AccountId,
        ledger: Ledger,
        submitter: Submitter,
        store: BlobStore,
        reporter: Reporter,
    ) -> Result<Self, FhirError> {
        let index = Index::open(&data_dir.join("fhir.redb"), key)?;
        let custodian = custodian(key, node);
        Ok(Fhir {
            ledger,
            submitter,
            store,
            reporter,
            index,
            custodian_public: custodian.public(),
            custodian,
            directory_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Keeps up to `capacity` data keys this node's custodian opened or sealed in
    /// memory (`BlobStore::remember_keys`): a record read again skips its HPKE
    /// decapsulation.
    pub fn keep_keys(&self, capacity: usize) -> Result<(), FhirError> {
        self.store
            .remember_keys(self.custodian.clone(), capacity)
            .map_err(internal)
    }

    /// Brings the index up to ledger height `to` (see `catchup`).
    pub async fn catch_up(&self, to: u64) -> Result<CatchUpReport, FhirError> {
        CatchUp {
            ledger: &self.ledger,
            store: &self.store,
            index: &self.index,
            custodian: &self.custodian,
        }
        .run(to, &|_, _| {})
        .await
    }

    /// The height up to which every record change is indexed.
    pub fn indexed_height(&self) -> Result<u64, FhirError> {
        self.index.indexed_height()
    }

    // ---- signing and submission -------------------------------------------------

    /// Reserves the account's next nonce ([`Submitter::reserve`]).
    async fn reserve(&self, account: &AccountId) -> Result<Reserved, FhirError> {
        self.submitter.reserve(account).await.map_err(submit_error)
    }

    /// Queues `payload` signed by `keys` with the reserved nonce.
    fn queue(
        &self,
        r: Reserved,
        keys: &AccountKeys,
        payload: Payload,
    ) -> (TxHash, impl Future<Output = Outcome> + use<>) {
        self.submitter.queue(r, keys, payload)
    }

    /// Queues `payload` signed by `keys` with the account's next nonce. Calls for one
    /// account are queued in call order.
    async fn enqueue(
        &self,
        keys: &AccountKeys,
        payload: Payload,
    ) -> Result<(TxHash, impl Future<Output = Outcome> + use<>), FhirError> {
        self.submitter
            .enqueue(keys, payload)
            .await
            .map_err(submit_error)
    }

    fn outcome(&self, account: &AccountId, r: Outcome) -> Result<(), FhirError> {
        self.submitter
            .settle(account, r)
            .map(|_| ())
            .map_err(submit_error)
    }

    /// Signs, submits and waits; retries when a concurrent submission of the same
    /// account took the nonce.
    async fn submit(&self, keys: &AccountKeys, payload: Payload) -> Result<TxHash, FhirError> {
        self.submit_indexed(keys, payload, None).await
    }

    /// As [`Fhir::submit`] for a transaction that adds one record, indexing `entry`
    /// under the new record's id while the transaction commits (the id is the hash,
    /// known once signed). Index first, ledger second: a crash in between leaves an
    /// index entry for a record that does not exist, which reads and searches skip
    /// (the ledger decides), never a committed record that search cannot find. A
    /// refused transaction's entry is removed again.
    async fn submit_indexed(
        &self,
        keys: &AccountKeys,
        payload: Payload,
        entry: Option<&Prepared>,
    ) -> Result<TxHash, FhirError> {
        let account = keys.account();
        let mut attempt = 0;
        loop {
            let (hash, wait) = self.enqueue(keys, payload.clone()).await?;
            let record = RecordId::from_tx(&hash);
            let (indexed, outcome) = match entry {
                Some(p) => tokio::join!(self.index.put(vec![p.entry(record)]), wait),
                None => (Ok(()), wait.await),
            };
            let outcome = self.outcome(&account, outcome);
            if outcome.is_err() && entry.is_some() && indexed.is_ok() {
                self.index.remove(vec![record]).await?;
            }
            match outcome {
                Err(FhirError::Ledger(
                    RejectReason::NonceGap { .. } | RejectReason::ReplayedNonce { .. },
                )) if attempt < 5 => attempt += 1,
                Err(e) => return Err(e),
                Ok(()) => return indexed.map(|_| hash),
            }
        }
    }

    // ---- subjects: patients and directory ----------------------------------------

    /// Creates a patient account held in this node's custody, registered through an
    /// invite from `who`, with the intake grants to `who`'s organisation.
    async fn new_subject(
        &self,
        who: &Principal,
        purposes: &[Purpose],
    ) -> Result<AccountId, FhirError> {
        let keys = AccountKeys::generate().map_err(internal)?;
        self.new_subject_then(who, purposes, &keys, None)
            .await
            .map(|_| keys.account())
    }

    /// [`Fhir::new_subject`] with `keys`, and `then` (a transaction of `who`'s, such
    /// as the subject's first record) pipelined behind the registration and grants, so
    /// that all of it can commit in one round. Returns `then`'s hash.
    async fn new_subject_then(
        &self,
        who: &Principal,
        purposes: &[Purpose],
        keys: &AccountKeys,
        then: Option<Payload>,
    ) -> Result<Option<TxHash>, FhirError> {
        let account = keys.account();
        self.index
            .put_custody(&account, &keys.secret_bytes())
            .await?;
        let secret = Digest32(crate::auth::secrets::random::<32>().map_err(internal)?);
        let now = now_ms();
        let (_, invite) = self
            .enqueue(
                &who.keys,
                Payload::InvitePatient {
                    org: who.org.clone(),
                    commitment: invite_commitment(&secret),
                    expires_ms: now + 3_600_000,
                },
            )
            .await?;
        let mut waits = Vec::new();
        waits.push(
            self.enqueue(
                keys,
                Payload::RegisterInvited {
                    secret,
                    encryption_key: keys.encryption_public(),
                },
            )
            .await?
            .1,
        );
        for p in purposes {
            waits.push(
                self.enqueue(
                    keys,
                    Payload::GrantConsent {
                        grantee: Grantee::Org(who.org.clone()),
                        scope: Scope::All,
                        purpose: *p,
                        start_ms: now.saturating_sub(1000),
                        expiry_ms: now + INTAKE_GRANT_MS,
                    },
                )
                .await?
                .1,
            );
        }
        // The author's next transaction is numbered after the invite (one account's
        // transactions are queued in call order), and applied after the grants.
        let then = match then {
            Some(payload) => Some(self.enqueue(&who.keys, payload).await?),
            None => None,
        };
        let first = self.outcome(&who.account, invite.await);
        let mut rest = Ok(());
        for w in waits {
            let r = self.outcome(&account, w.await);
            if rest.is_ok() {
                rest = r;
            }
        }
        let last = match then {
            Some((hash, wait)) => self.outcome(&who.account, wait.await).map(|_| Some(hash)),
            None => Ok(None),
        };
        first?;
        rest?;
        last
    }

    /// The keys of a patient account the node holds in custody (created at the desk,
    /// not claimed yet); never an organisation's directory subject, which no person
    /// may claim.
    pub fn custody_keys(&self, account: &AccountId) -> Result<Option<AccountKeys>, FhirError> {
        if self.index.is_directory(account)? {
            return Ok(None);
        }
        match self.index.custody(account)? {
            Some(b) => AccountKeys::from_secret_bytes(&b)
                .map(Some)
                .ok_or_else(|| internal("custody keys do not decode")),
            None => Ok(None),
        }
    }

    /// Whether the node holds this account's keys for a person who can claim them
    /// (what [`Fhir::custody_keys`] would return, without opening them).
    pub fn in_custody(&self, account: &AccountId) -> Result<bool, FhirError> {
        Ok(!self.index.is_directory(account)? && self.index.has_custody(account)?)
    }

    /// Drops the node's copy of a claimed account's keys.
    pub async fn release_custody(&self, account: &AccountId) -> Result<(), FhirError> {
        self.index.release_custody(account).await
    }

    /// The organisation's directory subject (created on first use).
    async fn directory_subject(&self, who: &Principal) -> Result<AccountId, FhirError> {
        if let Some(a) = self.index.directory(who.org.as_str())? {
            return Ok(a);
        }
        let _g = self.directory_lock.lock().await;
        if let Some(a) = self.index.directory(who.org.as_str())? {
            return Ok(a);
        }
        let a = self
            .new_subject(who, &[Purpose::Treatment, Purpose::Operations])
            .await?;
        self.index.put_directory(who.org.as_str(), &a).await?;
        Ok(a)
    }

    /// [`Fhir::compartment`] while the caller's nonce is reserved: it must not create
    /// the directory subject (that signs with the caller's key, whose sequence this
    /// request holds: it would wait for itself). The directory was made beforehand.
    async fn compartment_reserved(
        &self,
        who: &Principal,
        resource: &Value,
    ) -> Result<AccountId, FhirError> {
        if let Some(p) = self.named_patient(resource).await? {
            return Ok(p);
        }
        if who.role == Role::Patient {
            return Err(FhirError::Forbidden(
                "a patient may only write resources about themself".into(),
            ));
        }
        self.index
            .directory(who.org.as_str())?
            .ok_or_else(|| internal("the organisation's directory subject was not created first"))
    }

    fn encryption_key(&self, account: &AccountId) -> Result<[u8; 32], FhirError> {
        self.ledger
            .account(account)
            .map_err(internal)?
            .map(|a| a.encryption_key.0)
            .ok_or_else(|| FhirError::NotFound("no such account".into()))
    }

    /// The patient whose compartment a (non-Patient) resource is in: the patient a
    /// local `Patient/{id}` reference names, else the organisation's directory.
    async fn compartment(&self, who: &Principal, resource: &Value) -> Result<AccountId, FhirError> {
        if let Some(p) = self.named_patient(resource).await? {
            return Ok(p);
        }
        if who.role == Role::Patient {
            return Err(FhirError::Forbidden(
                "a patient may only write resources about themself".into(),
            ));
        }
        self.directory_subject(who).await
    }

    /// A point lookup in the current state, run inline: a few key reads in an open
    /// read transaction take microseconds, less than handing them to a blocking
    /// thread. Scans go through [`Fhir::view`].
    fn lookup<T>(
        &self,
        f: impl FnOnce(&medledger_ledger::StateView) -> medledger_ledger::Result<T>,
    ) -> Result<T, FhirError> {
        self.ledger.state().and_then(|st| f(&st)).map_err(internal)
    }

    async fn view<T: Send + 'static>(
        &self,
        f: impl FnOnce(&medledger_ledger::StateView) -> medledger_ledger::Result<T> + Send + 'static,
    ) -> Result<T, FhirError> {
        let ledger = self.ledger.clone();
        tokio::task::spawn_blocking(move || f(&ledger.state()?))
            .await
            .map_err(internal)?
            .map_err(internal)
    }

    // ---- sealing -----------------------------------------------------------------

    /// Seals `content` for the patient, the author and the custodian.
    async fn seal(
        &self,
        who: &Principal,
        rtype: &str,
        patient: AccountId,
        patient_key: Option<[u8; 32]>,
        content: &Value,
    ) -> Result<Prepared, FhirError> {
        let Terms {
            tokens,
            dates,
            deleted,
        } = index_terms(&self.index, rtype, content);
        let bytes = serde_json::to_vec(content).map_err(internal)?;
        let mut readers = vec![Reader {
            account: self.custodian.account,
            public: self.custodian_public,
        }];
        for (a, k) in [
            (patient, patient_key),
            (who.account, Some(who.keys.encryption_public().0)),
        ] {
            if readers.iter().any(|r| r.account == a) {
                continue;
            }
            let public = match k {
                Some(k) => k,
                None => self.encryption_key(&a)?,
            };
            readers.push(Reader { account: a, public });
        }
        let receipt = self
            .store
            .put(&bytes[..], &readers)
            .await
            .map_err(|e| FhirError::Unavailable(format!("record store: {e}")))?;
        Ok(Prepared {
            rtype: rtype.to_owned(),
            cid: receipt.cid,
            content_hash: receipt.content_hash,
            size: receipt.stored_bytes,
            tokens,
            dates,
            deleted,
        })
    }

    /// [`fetch_version`] with this node's custodian key.
    async fn fetch(&self, record: &RecordId, v: &VersionState) -> Result<Value, FhirError> {
        fetch_version(&self.ledger, &self.store, &self.custodian, record, v).await
    }

    // ---- access ------------------------------------------------------------------

    /// Decides and reports one access to a resource of type `rtype`; the record if
    /// allowed and of that type. A refusal answers exactly like a missing resource
    /// (only the patient learns that their own record was erased).
    async fn access(
        &self,
        who: &Principal,
        record: RecordId,
        rtype: &str,
    ) -> Result<RecordView, FhirError> {
        self.access_many(who, &[(record, rtype)])
            .await?
            .pop()
            .ok_or_else(|| internal("no decision"))?
    }

    /// [`Fhir::access`] for many records: decided in one state view and reported in one
    /// durable append (one fsync for a whole page, not one per resource).
    async fn access_many(
        &self,
        who: &Principal,
        items: &[(RecordId, &str)],
    ) -> Result<Vec<Result<RecordView, FhirError>>, FhirError> {
        purpose_of(who.role)?;
        let accessor = who.account;
        let at = now_ms();
        let decided = self.lookup(|st| {
            items
                .iter()
                .map(|(r, _)| {
                    let (d, purpose) = match can_as(st, who, r, at)? {
                        Ok(x) => x,
                        Err(_) => (Decision::DenyRoleNotPermitted, Purpose::Treatment),
                    };
                    let view = if d.allowed() {
                        query::record(st, r)?
                    } else {
                        None
                    };
                    // Whether an erased record is the caller's own (the one case a
                    // refusal may say more than "absent").
                    let own = d == Decision::DenyErased
                        && query::record(st, r)?.is_some_and(|v| v.state.patient == accessor);
                    Ok((d, view, own, purpose))
                })
                .collect::<medledger_ledger::Result<Vec<_>>>()
        })?;
        self.reporter
            .report_decisions(
                items
                    .iter()
                    .zip(&decided)
                    .filter(|(_, (d, _, _, _))| *d != Decision::DenyNoSuchRecord)
                    .map(|((r, _), (d, _, _, p))| (accessor, *r, *p, at, d)),
            )
            .await
            .map_err(|e| FhirError::Unavailable(e.to_string()))?;
        Ok(items
            .iter()
            .zip(decided)
            .map(|((_, rtype), (d, view, own, _))| match (d, view) {
                (Decision::DenyErased, _) if own => {
                    Err(FhirError::Gone("the resource was erased".into()))
                }
                (d, Some(v)) if d.allowed() && v.state.category.as_str() == *rtype => Ok(v),
                _ => Err(absent(rtype)),
            })
            .collect())
    }

    /// The current versions of `items`, through the audited access path (one
    /// decision pass and one report for all of them).
    async fn latest_many(
        &self,
        who: &Principal,
        items: &[(RecordId, &str)],
    ) -> Result<Vec<Result<Option<Stored>, FhirError>>, FhirError> {
        let views = self.access_many(who, items).await?;
        let mut out = Vec::with_capacity(views.len());
        for ((record, rtype), view) in items.iter().zip(views) {
            out.push(match view {
                Ok(v) => match v.history.last() {
                    Some(last) => self.open_version(rtype, record, last).await,
                    None => Ok(None),
                },
                Err(e) => Err(e),
            });
        }
        Ok(out)
    }

    // ---- interactions --------------------------------------------------------------

    pub async fn read(
        &self,
        who: &Principal,
        rtype: &str,
        id: &str,
        version: Option<u32>,
    ) -> Result<Stored, FhirError> {
        Ok(self.read_view(who, rtype, id, version).await?.0)
    }

    /// A read, with the ledger's view of the record it came from.
    async fn read_view(
        &self,
        who: &Principal,
        rtype: &str,
        id: &str,
        version: Option<u32>,
    ) -> Result<(Stored, RecordView), FhirError> {
        let record = record_id(id).ok_or_else(|| absent(rtype))?;
        let view = self.access(who, record, rtype).await?;
        let v = match version {
            Some(n) => view
                .history
                .iter()
                .find(|h| h.version == n)
                .ok_or_else(|| FhirError::NotFound(format!("no version {n}")))?,
            None => view
                .history
                .last()
                .ok_or_else(|| internal("record without versions"))?,
        };
        let stored = self
            .open_version(rtype, &record, v)
            .await?
            .ok_or_else(|| FhirError::Gone(format!("{rtype}/{id} was deleted")))?;
        Ok((stored, view))
    }

    /// The content of one version; `None` for a deletion.
    async fn open_version(
        &self,
        rtype: &str,
        record: &RecordId,
        v: &VersionState,
    ) -> Result<Option<Stored>, FhirError> {
        let content = self.fetch(record, v).await?;
        Ok((!is_tombstone(&content)).then(|| Stored::new(rtype, &record.to_string(), v, content)))
    }

    async fn stored(
        &self,
        record: RecordId,
        rtype: &str,
        resource: Value,
    ) -> Result<Stored, FhirError> {
        let view = self
            .lookup(|st| query::record(st, &record))?
            .ok_or_else(|| internal("committed record not found"))?;
        let v = view
            .history
            .last()
            .ok_or_else(|| internal("record without versions"))?;
        Ok(Stored::new(rtype, &record.to_string(), v, resource))
    }

    pub async fn create(
        &self,
        who: &Principal,
        rtype: &str,
        body: Value,
    ) -> Result<Stored, FhirError> {
        self.create_in(who, rtype, body, None).await
    }

    /// A Patient resource for a patient account that exists already (the portal's
    /// intake form for a patient with their own account). Whether the author may write
    /// for that patient is the ledger's rule (a live treatment grant, as for any write).
    pub async fn create_patient_for(
        &self,
        who: &Principal,
        patient: AccountId,
        body: Value,
    ) -> Result<Stored, FhirError> {
        self.create_in(who, "Patient", body, Some(patient)).await
    }

    async fn create_in(
        &self,
        who: &Principal,
        rtype: &str,
        mut body: Value,
        existing: Option<AccountId>,
    ) -> Result<Stored, FhirError> {
        writable(rtype)?;
        medledger_fhir::validate(&body, Some(rtype), false).map_err(FhirError::Invalid)?;
        strip_server_fields(&mut body);
        if rtype == "Patient" && existing.is_none() && who.role != Role::Patient {
            return self.create_custodial_patient(who, body).await;
        }
        let (patient, key) = match (rtype == "Patient", existing) {
            (true, Some(p)) => (p, None),
            (true, None) => self.patient_for_new(who).await?,
            (false, _) => (self.compartment(who, &body).await?, None),
        };
        let p = self.seal(who, rtype, patient, key, &body).await?;
        let payload = Payload::AddRecord {
            patient,
            category: Category::new(rtype).map_err(internal)?,
            cid: p.cid,
            content_hash: p.content_hash,
            size: p.size,
        };
        let hash = self
            .submit_indexed(&who.keys, payload, Some(&p))
            .await
            .inspect_err(|_| self.discard(&[p.cid]))?;
        self.stored(RecordId::from_tx(&hash), rtype, body).await
    }

    /// A Patient resource for a new custodial account: the resource is sealed for the
    /// account's key before the account exists, and its record is pipelined behind the
    /// invite, the registration and the intake grant, so the whole creation commits in
    /// one round instead of one for the account and another for the record.
    async fn create_custodial_patient(
        &self,
        who: &Principal,
        body: Value,
    ) -> Result<Stored, FhirError> {
        let keys = AccountKeys::generate().map_err(internal)?;
        let patient = keys.account();
        let p = self
            .seal(
                who,
                "Patient",
                patient,
                Some(keys.encryption_public().0),
                &body,
            )
            .await?;
        let payload = Payload::AddRecord {
            patient,
            category: Category::new("Patient").map_err(internal)?,
            cid: p.cid,
            content_hash: p.content_hash,
            size: p.size,
        };
        let hash = self
            .new_subject_then(who, &[Purpose::Treatment], &keys, Some(payload))
            .await
            .inspect_err(|e| {
                // Only a refusal is final; a record whose outcome is unknown may still
                // commit, and its blob must then be there.
                if matches!(e, FhirError::Ledger(_)) {
                    self.discard(&[p.cid]);
                }
            })?
            .ok_or_else(|| internal("the record's transaction was not queued"))?;
        let record = RecordId::from_tx(&hash);
        // After the commit; a crash before this line is repaired by the index's
        // catch-up at the next start.
        self.index.put(vec![p.entry(record)]).await?;
        self.stored(record, "Patient", body).await
    }

    /// The account a new Patient resource belongs to: the caller, if they are a
    /// patient; else a new custodial account.
    async fn patient_for_new(
        &self,
        who: &Principal,
    ) -> Result<(AccountId, Option<[u8; 32]>), FhirError> {
        if who.role == Role::Patient {
            return Ok((who.account, Some(who.keys.encryption_public().0)));
        }
        let a = self.new_subject(who, &[Purpose::Treatment]).await?;
        Ok((a, None))
    }

    /// Best effort: a blob whose registration failed is deleted again.
    fn discard(&self, cids: &[medledger_core::Cid]) {
        for &cid in cids {
            let store = self.store.clone();
            tokio::spawn(async move {
                if let Err(e) = store.erase(&cid).await {
                    tracing::warn!(%cid, error = %e, "could not remove an unregistered blob");
                }
            });
        }
    }

    pub async fn update(
        &self,
        who: &Principal,
        rtype: &str,
        id: &str,
        mut body: Value,
        if_match: Option<u32>,
    ) -> Result<Stored, FhirError> {
        writable(rtype)?;
        medledger_fhir::validate(&body, Some(rtype), false).map_err(FhirError::Invalid)?;
        if body.get("id").and_then(Value::as_str) != Some(id) {
            return Err(FhirError::invalid(
                IssueCode::Invalid,
                "the body's id must equal the id in the URL",
            ));
        }
        let record = record_id(id).ok_or_else(|| {
            FhirError::NotSupported("update cannot create: ids are assigned by the ledger".into())
        })?;
        let view = self.access(who, record, rtype).await?;
        let current = view.history.last().map(|v| v.version).unwrap_or(0);
        if let Some(want) = if_match
            && want != current
        {
            return Err(FhirError::PreconditionFailed(format!(
                "If-Match names version {want}; the current version is {current}"
            )));
        }
        self.stays_with(rtype, &body, view.state.patient, &HashMap::new())
            .await?;
        strip_server_fields(&mut body);
        self.amend(who, record, rtype, view.state.patient, body)
            .await
    }

    /// A resource stays in its patient's record: its envelopes, grants and audit trail
    /// are that patient's, so an update (plain or in a transaction Bundle) that names
    /// another patient is refused; moving it means creating it for that patient.
    /// `new` maps records of patients a Bundle is creating to their accounts.
    async fn stays_with(
        &self,
        rtype: &str,
        resource: &Value,
        patient: AccountId,
        new: &HashMap<RecordId, (AccountId, Option<[u8; 32]>)>,
    ) -> Result<(), FhirError> {
        if rtype == "Patient" {
            return Ok(());
        }
        let in_bundle = refs::patients(resource)
            .first()
            .and_then(|id| record_id(id))
            .and_then(|r| new.get(&r))
            .map(|(a, _)| *a);
        let named = match in_bundle {
            Some(a) => Some(a),
            None => self.named_patient(resource).await?,
        };
        if named.is_some_and(|p| p != patient) {
            return Err(FhirError::invalid(
                IssueCode::BusinessRule,
                "an update cannot move a resource to another patient; create it for that patient instead",
            ));
        }
        Ok(())
    }

    /// The patient account the first patient reference of `resource` names, if any.
    async fn named_patient(&self, resource: &Value) -> Result<Option<AccountId>, FhirError> {
        for id in refs::patients(resource) {
            let Some(r) = record_id(&id) else { continue };
            return match self.lookup(|st| query::record(st, &r))? {
                Some(v) if v.state.category.as_str() == "Patient" => Ok(Some(v.state.patient)),
                _ => Err(FhirError::invalid(
                    IssueCode::Value,
                    format!("reference Patient/{id} does not resolve to a patient on this server"),
                )),
            };
        }
        Ok(None)
    }

    async fn amend(
        &self,
        who: &Principal,
        record: RecordId,
        rtype: &str,
        patient: AccountId,
        body: Value,
    ) -> Result<Stored, FhirError> {
        let p = self.seal(who, rtype, patient, None, &body).await?;
        self.submit(
            &who.keys,
            Payload::AmendRecord {
                record,
                cid: p.cid,
                content_hash: p.content_hash,
                size: p.size,
            },
        )
        .await
        .inspect_err(|_| self.discard(&[p.cid]))?;
        self.index.put(vec![p.entry(record)]).await?;
        self.stored(record, rtype, body).await
    }

    /// Deleting writes a tombstone version; history keeps every earlier version.
    pub async fn delete(&self, who: &Principal, rtype: &str, id: &str) -> Result<(), FhirError> {
        writable(rtype)?;
        let record = record_id(id).ok_or_else(|| absent(rtype))?;
        let view = self.access(who, record, rtype).await?;
        if self.index.doc(&record)?.is_some_and(|d| d.deleted) {
            return Ok(());
        }
        self.amend(
            who,
            record,
            rtype,
            view.state.patient,
            json!({ "resourceType": TOMBSTONE }),
        )
        .await
        .map(|_| ())
    }

    /// Versions of one resource (newest first), as a `history` Bundle.
    pub async fn history(
        &self,
        who: &Principal,
        rtype: &str,
        id: &str,
        base: &str,
    ) -> Result<Value, FhirError> {
        let record = record_id(id).ok_or_else(|| absent(rtype))?;
        let view = self.access(who, record, rtype).await?;
        let mut entries = Vec::new();
        for v in view.history.iter().rev() {
            entries.push(self.history_entry(rtype, &record, v, base).await?);
        }
        Ok(json!({
            "resourceType": "Bundle", "type": "history", "total": entries.len(),
            "link": [{"relation": "self", "url": format!("{base}/{rtype}/{id}/_history")}],
            "entry": entries,
        }))
    }

    async fn history_entry(
        &self,
        rtype: &str,
        record: &RecordId,
        v: &VersionState,
        base: &str,
    ) -> Result<Value, FhirError> {
        let url = format!("{rtype}/{record}");
        let modified = date::instant(v.time_ms);
        Ok(match self.open_version(rtype, record, v).await? {
            None => json!({
                "fullUrl": format!("{base}/{url}"),
                "request": {"method": "DELETE", "url": url},
                "response": {"status": "204", "etag": format!("W/\"{}\"", v.version), "lastModified": modified},
            }),
            Some(s) => {
                let method = if v.version == 1 { "POST" } else { "PUT" };
                json!({
                    "fullUrl": format!("{base}/{url}"),
                    "resource": s.resource,
                    "request": {"method": method, "url": if v.version == 1 { rtype.to_owned() } else { url }},
                    "response": {"status": if v.version == 1 { "201" } else { "200" }, "etag": s.etag(), "lastModified": modified},
                })
            }
        })
    }

    /// Every version of every resource of a type the caller may see, newest first.
    pub async fn type_history(
        &self,
        who: &Principal,
        rtype: &str,
        count: usize,
        base: &str,
    ) -> Result<Value, FhirError> {
        // Only records the caller may read are candidates: decided (not audited) before
        // any is opened, so one request neither reads nor writes a refusal for every
        // resource of the type on the server. A patient's candidates are their own.
        purpose_of(who.role)?;
        let (accessor, at) = (who.account, now_ms());
        let caller = who.clone();
        let candidates: Vec<RecordId> = if who.role == Role::Patient {
            let own: HashSet<RecordId> =
                self.patient_records(accessor).await?.into_iter().collect();
            self.index
                .of_type(rtype)?
                .into_iter()
                .rev()
                .map(|(_, r)| r)
                .filter(|r| own.contains(r))
                .collect()
        } else {
            self.index
                .of_type(rtype)?
                .into_iter()
                .rev()
                .map(|(_, r)| r)
                .collect()
        };
        let limit = count.min(MAX_EVERYTHING);
        let readable = self
            .view(move |st| {
                let mut out = Vec::new();
                for r in candidates {
                    if out.len() >= limit {
                        break;
                    }
                    if can_as(st, &caller, &r, at)?.is_ok_and(|(d, _)| d.allowed()) {
                        out.push(r);
                    }
                }
                Ok(out)
            })
            .await?;
        let mut versions = Vec::new();
        let items: Vec<(RecordId, &str)> = readable.iter().map(|r| (*r, rtype)).collect();
        for (record, view) in readable.iter().zip(self.access_many(who, &items).await?) {
            let Ok(view) = view else {
                continue;
            };
            for v in view.history.iter().rev() {
                match self.history_entry(rtype, record, v, base).await {
                    Ok(e) => versions.push(e),
                    Err(e) if skippable(&e) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        versions.truncate(count);
        Ok(json!({
            "resourceType": "Bundle", "type": "history",
            "link": [{"relation": "self", "url": format!("{base}/{rtype}/_history")}],
            "entry": versions,
        }))
    }

    // ---- search --------------------------------------------------------------------

    /// Where a search starts, narrowest first: explicit ids, the named patient's
    /// records (one ledger index scan), the records under the first parameter's
    /// tokens, every record of the type. Deduplicated; not yet decided or matched.
    async fn candidates(&self, rtype: &str, q: &search::Query) -> Result<Vec<RecordId>, FhirError> {
        let patient = match &q.patient {
            Some(pid) => {
                let Some(r) = record_id(pid) else {
                    return Ok(Vec::new());
                };
                match self.view(move |st| query::record(st, &r)).await? {
                    Some(v) if v.state.category.as_str() == "Patient" => Some(v.state.patient),
                    _ => return Ok(Vec::new()),
                }
            }
            None => None,
        };
        let candidates: Vec<RecordId> = match (&q.ids, patient, q.tokens.first()) {
            (Some(ids), _, _) => ids.iter().filter_map(|i| record_id(i)).collect(),
            (None, Some(p), _) => self.patient_records(p).await?,
            (None, None, Some(group)) => {
                let mut set = Vec::new();
                for (param, value) in group {
                    set.extend(self.index.lookup(&self.index.token(rtype, param, value))?);
                }
                set.into_iter().map(|(_, r)| r).collect()
            }
            (None, None, None) => self
                .index
                .of_type(rtype)?
                .into_iter()
                .map(|(_, r)| r)
                .collect(),
        };
        let compartment = match (&q.ids, patient) {
            (Some(_), Some(p)) => Some(self.patient_records(p).await?.into_iter().collect()),
            _ => None::<HashSet<RecordId>>,
        };
        let mut seen = HashSet::new();
        Ok(candidates
            .into_iter()
            .filter(|r| seen.insert(*r) && compartment.as_ref().is_none_or(|c| c.contains(r)))
            .collect())
    }

    /// Those of `records` whose index document matches the query, in creation order.
    fn matching(
        &self,
        rtype: &str,
        q: &search::Query,
        records: &[RecordId],
    ) -> Result<Vec<(u64, RecordId)>, FhirError> {
        // Each group matches if the record carries any of its tokens (OR inside a
        // parameter, AND across parameters), checked against the record's own document.
        let groups: Vec<HashSet<String>> = q
            .tokens
            .iter()
            .map(|g| {
                g.iter()
                    .map(|(param, value)| hex::encode(self.index.token(rtype, param, value)))
                    .collect()
            })
            .collect();
        let mut out = Vec::new();
        for r in records {
            let Some(doc) = self.index.doc(r)? else {
                continue;
            };
            if doc.deleted
                || doc.rtype != rtype
                || !dates_match(&doc, q)
                || !groups
                    .iter()
                    .all(|g| doc.tokens.iter().any(|t| g.contains(t)))
            {
                continue;
            }
            out.push((doc.seq, *r));
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Ids of every record of a patient, from the ledger's patient index.
    async fn patient_records(&self, patient: AccountId) -> Result<Vec<RecordId>, FhirError> {
        self.view(move |st| query::patient_records(st, &patient, None, usize::MAX))
            .await
    }

    /// A `searchset` Bundle over what the caller may read: every candidate is decided
    /// before its content is looked at, so matching, counting and paging (and the
    /// `next` link, even with `_count=0`) never run over a record the caller may not
    /// read, and a search with no readable match looks exactly like one with no match.
    /// Returned resources are audited as reads; a match beyond the page whose
    /// existence the `next` link discloses is audited too; refused candidates that
    /// match are audited as refused (at most [`MAX_REFUSED_REPORTS`] per search).
    pub async fn search(
        &self,
        who: &Principal,
        rtype: &str,
        pairs: &[(String, String)],
        base: &str,
    ) -> Result<Value, FhirError> {
        self.search_as(who, rtype, pairs, base, true).await
    }

    /// The first `count` resources of `rtype` the caller may read, as a searchset: a
    /// listing that names nothing (the portal's "your patients"), so it reveals nothing
    /// about records the caller may not read and does not report each of them as a
    /// refused probe; every resource it returns is audited as a read.
    pub async fn readable(
        &self,
        who: &Principal,
        rtype: &str,
        count: usize,
        base: &str,
    ) -> Result<Value, FhirError> {
        let pairs = [("_count".to_owned(), count.to_string())];
        self.search_as(who, rtype, &pairs, base, false).await
    }

    async fn search_as(
        &self,
        who: &Principal,
        rtype: &str,
        pairs: &[(String, String)],
        base: &str,
        report_refused: bool,
    ) -> Result<Value, FhirError> {
        purpose_of(who.role)?;
        let q = search::parse_query(rtype, pairs)?;
        let candidates = self.candidates(rtype, &q).await?;
        let (accessor, at) = (who.account, now_ms());
        let caller = who.clone();
        let decided = self
            .view(move |st| {
                let mut out = Vec::with_capacity(candidates.len());
                for r in candidates {
                    if let Ok((d, p)) = can_as(st, &caller, &r, at)? {
                        out.push((r, (d, p)));
                    }
                }
                Ok(out)
            })
            .await?;
        let (allowed, refused): (Vec<_>, Vec<_>) = decided
            .into_iter()
            .filter(|(_, (d, _))| !matches!(d, Decision::DenyNoSuchRecord | Decision::DenyErased))
            .partition(|(_, (d, _))| d.allowed());
        let readable: Vec<RecordId> = allowed.iter().map(|(r, _)| *r).collect();
        let all = self.matching(rtype, &q, &readable)?;
        let refused_ids: Vec<RecordId> = refused.iter().map(|(r, _)| *r).collect();
        let refused: HashMap<RecordId, (Decision, Purpose)> = refused.into_iter().collect();
        let mut reports: Vec<(RecordId, (Decision, Purpose))> = self
            .matching(rtype, &q, &refused_ids)?
            .into_iter()
            .take(if report_refused {
                MAX_REFUSED_REPORTS
            } else {
                0
            })
            .map(|(_, r)| (r, refused[&r].clone()))
            .collect();
        let more = q.offset.saturating_add(q.count) < all.len();
        if more {
            let (_, next) = all[q.offset + q.count];
            let d = allowed
                .iter()
                .find(|(r, _)| *r == next)
                .map(|(_, d)| d.clone())
                .ok_or_else(|| internal("decided match missing"))?;
            reports.push((next, d));
        }
        self.reporter
            .report_decisions(reports.iter().map(|(r, (d, p))| (accessor, *r, *p, at, d)))
            .await
            .map_err(|e| FhirError::Unavailable(e.to_string()))?;
        let page: Vec<(RecordId, &str)> = all
            .iter()
            .skip(q.offset)
            .take(q.count)
            .map(|(_, r)| (*r, rtype))
            .collect();
        let mut found = Vec::new();
        let mut damaged = 0usize;
        for read in self.latest_many(who, &page).await? {
            match read {
                Ok(Some(s)) => found.push(s.resource),
                Ok(None) => {}
                Err(e @ FhirError::Corrupt(_)) => {
                    tracing::warn!(error = %e, "fhir search: a match failed its integrity check");
                    damaged += 1;
                }
                Err(e) if skippable(&e) => {}
                Err(e) => return Err(e),
            }
        }
        let page = Page {
            count: q.count,
            offset: q.offset,
            more,
        };
        let mut bundle = searchset(base, rtype, pairs, found, Some(page));
        if let Some(entries) = bundle["entry"].as_array_mut() {
            entries.extend(damaged_outcome(damaged));
        }
        Ok(bundle)
    }

    /// `Patient/{id}/$everything`: the patient resource and every current resource in
    /// the patient's compartment the caller may see (each read audited).
    pub async fn everything(
        &self,
        who: &Principal,
        id: &str,
        base: &str,
    ) -> Result<Value, FhirError> {
        let (patient, view) = self.read_view(who, "Patient", id, None).await?;
        let records = self.patient_records(view.state.patient).await?;
        let mut entries = vec![
            json!({"fullUrl": format!("{base}/Patient/{id}"), "resource": patient.resource, "search": {"mode": "match"}}),
        ];
        let mut docs = Vec::new();
        for r in records {
            if r == view.id || docs.len() >= MAX_EVERYTHING {
                continue;
            }
            match self.index.doc(&r)? {
                Some(doc) if !doc.deleted => docs.push((r, doc)),
                _ => {}
            }
        }
        let items: Vec<(RecordId, &str)> =
            docs.iter().map(|(r, d)| (*r, d.rtype.as_str())).collect();
        let mut found: Vec<(u64, Value)> = Vec::new();
        let mut damaged = 0usize;
        for ((_, doc), read) in docs.iter().zip(self.latest_many(who, &items).await?) {
            let cat = &doc.rtype;
            match read {
                Ok(Some(s)) => found.push((
                    doc.seq,
                    json!({"fullUrl": format!("{base}/{cat}/{}", s.id), "resource": s.resource, "search": {"mode": "match"}}),
                )),
                Ok(None) => {}
                Err(e @ FhirError::Corrupt(_)) => {
                    tracing::warn!(error = %e, "fhir $everything: a record failed its integrity check");
                    damaged += 1;
                }
                Err(e) if skippable(&e) => {}
                Err(e) => return Err(e),
            }
        }
        found.sort_by_key(|(s, _)| *s);
        entries.extend(found.into_iter().map(|(_, e)| e));
        let total = entries.len();
        entries.extend(damaged_outcome(damaged));
        Ok(json!({"resourceType": "Bundle", "type": "searchset", "total": total, "entry": entries}))
    }

    // ---- Bundles ---------------------------------------------------------------------

    pub async fn bundle(&self, who: &Principal, body: Value) -> Result<Value, FhirError> {
        medledger_fhir::validate(&body, Some("Bundle"), true).map_err(FhirError::Invalid)?;
        match body.get("type").and_then(Value::as_str) {
            Some("transaction") => self.transaction(who, body).await,
            Some("batch") => Ok(self.batch(who, &body).await),
            _ => Err(FhirError::invalid(
                IssueCode::NotSupported,
                "only transaction and batch Bundles can be posted",
            )),
        }
    }

    /// Each entry on its own; failures become that entry's OperationOutcome.
    async fn batch(&self, who: &Principal, body: &Value) -> Value {
        let mut out = Vec::new();
        for e in body
            .get("entry")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            out.push(match self.batch_entry(who, e).await {
                Ok((status, Some(s))) => json!({
                    "response": {"status": status, "location": s.location(), "etag": s.etag(), "lastModified": date::instant(s.time_ms)},
                    "resource": s.resource,
                }),
                Ok((status, None)) => json!({"response": {"status": status}}),
                Err(e) => {
                    let (status, oo) = e.outcome();
                    json!({"response": {"status": status.as_u16().to_string(), "outcome": oo}})
                }
            });
        }
        json!({"resourceType": "Bundle", "type": "batch-response", "entry": out})
    }

    async fn batch_entry(
        &self,
        who: &Principal,
        e: &Value,
    ) -> Result<(&'static str, Option<Stored>), FhirError> {
        let (method, url) = request_of(e);
        let path: Vec<&str> = url.split('?').next().unwrap_or("").split('/').collect();
        let resource = e.get("resource").cloned();
        match (method, path.as_slice(), resource) {
            ("POST", [t], Some(r)) => self
                .create(who, t, r)
                .await
                .map(|s| ("201 Created", Some(s))),
            ("PUT", [t, id], Some(r)) => self
                .update(who, t, id, r, None)
                .await
                .map(|s| ("200 OK", Some(s))),
            ("DELETE", [t, id], _) => self
                .delete(who, t, id)
                .await
                .map(|_| ("204 No Content", None)),
            ("GET", [t, id], _) => self
                .read(who, t, id, None)
                .await
                .map(|s| ("200 OK", Some(s))),
            _ => Err(FhirError::invalid(
                IssueCode::NotSupported,
                "batch entries: POST Type, PUT/DELETE/GET Type/id",
            )),
        }
    }

    /// All entries or none: every resource is validated and sealed first, then all
    /// record writes go to the ledger as one `write_records` transaction. Patients
    /// created by the Bundle get their accounts before it (an account with no records
    /// is what remains if the Bundle is then refused).
    async fn transaction(&self, who: &Principal, body: Value) -> Result<Value, FhirError> {
        let entries = body
            .get("entry")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if entries.is_empty() || entries.len() > medledger_core::model::MAX_RECORD_WRITES {
            return Err(FhirError::invalid(
                IssueCode::TooLong,
                format!(
                    "a transaction holds 1 to {} entries",
                    medledger_core::model::MAX_RECORD_WRITES
                ),
            ));
        }
        let mut issues = Vec::new();
        let mut ops: Vec<Planned> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let (method, url) = request_of(e);
            let resource = e.get("resource").cloned();
            let at = format!("Bundle.entry[{i}]");
            let (method, rtype, id) = match (method, url.split('/').collect::<Vec<_>>().as_slice())
            {
                ("POST", [t]) if !url.contains('?') && resource.is_some() => ("POST", *t, None),
                ("PUT", [t, id]) if resource.is_some() => ("PUT", *t, Some(*id)),
                ("DELETE", [t, id]) => ("DELETE", *t, Some(*id)),
                _ => {
                    issues.push(
                        Issue::new(
                            IssueCode::NotSupported,
                            "transaction entries: POST Type, PUT Type/id, DELETE Type/id",
                        )
                        .at(at),
                    );
                    continue;
                }
            };
            let resource = if method == "DELETE" { None } else { resource };
            if let Some(r) = &resource {
                if let Err(mut is) = medledger_fhir::validate(r, Some(rtype), true) {
                    is.iter_mut()
                        .for_each(|x| x.expression = Some(format!("{at}.resource")));
                    issues.extend(is);
                    continue;
                }
                let refused = match method {
                    "POST" => writable(rtype).err().map(|_| {
                        (
                            IssueCode::NotSupported,
                            format!("{rtype} cannot be written"),
                        )
                    }),
                    _ => (r.get("id").and_then(Value::as_str) != id).then(|| {
                        (
                            IssueCode::Invalid,
                            "the resource id must equal the id in request.url".to_owned(),
                        )
                    }),
                };
                if let Some((code, msg)) = refused {
                    issues.push(Issue::new(code, msg).at(at));
                    continue;
                }
            }
            ops.push(Planned {
                method,
                rtype: rtype.to_owned(),
                id: id.map(str::to_owned),
                full_url: e.get("fullUrl").and_then(Value::as_str).map(str::to_owned),
                resource,
            });
        }
        if !issues.is_empty() {
            return Err(FhirError::Invalid(issues));
        }
        // Subjects first, while no nonce of the caller is reserved (creating them
        // signs with the caller's key): an account for each new Patient, and the
        // directory subject if some entry is in no patient's compartment.
        let new_patient = |o: &Planned| o.method == "POST" && o.rtype == "Patient";
        let patient_urls: HashSet<String> = ops
            .iter()
            .filter(|o| new_patient(o))
            .filter_map(|o| o.full_url.clone())
            .collect();
        let mut subjects = Vec::new();
        let mut need_directory = false;
        for o in &ops {
            if new_patient(o) {
                subjects.push(self.patient_for_new(who).await?);
            } else if let Some(r) = &o.resource {
                // The rule `compartment` applies: only a reference that can name a
                // record here (or a patient created by this Bundle) is a patient.
                let mut has_patient = refs::patients(r).iter().any(|p| record_id(p).is_some());
                refs::visit(r, &mut |_, s| has_patient |= patient_urls.contains(s));
                need_directory |= !has_patient;
            }
        }
        // Patients may not write outside their own compartment (refused below).
        if need_directory && who.role != Role::Patient {
            self.directory_subject(who).await?;
        }
        // Reserve the nonce: record ids of new entries derive from it, and other
        // entries' references are rewritten to them before anything is sealed.
        let reserved = self.reserve(&who.account).await?;
        let nonce = reserved.nonce();
        let mut urls: HashMap<String, String> = HashMap::new();
        let mut plan: Vec<BundleOp> = Vec::new();
        let mut adds = 0u32;
        let mut new_patients: HashMap<RecordId, (AccountId, Option<[u8; 32]>)> = HashMap::new();
        let mut subjects = subjects.into_iter();
        for Planned {
            method,
            rtype,
            id,
            full_url,
            resource,
        } in ops
        {
            let record = match &id {
                None => {
                    adds += 1;
                    RecordId::in_batch(&who.account, nonce, adds - 1)
                }
                Some(id) => record_id(id)
                    .ok_or_else(|| FhirError::NotFound(format!("no {rtype} with id {id}")))?,
            };
            if let Some(u) = &full_url {
                urls.insert(u.clone(), format!("{rtype}/{record}"));
            }
            let mut patient = None;
            if method == "POST" && rtype == "Patient" {
                let s = subjects.next().expect("one subject per new Patient");
                patient = Some(s.0);
                new_patients.insert(record, s);
            }
            plan.push(BundleOp {
                method,
                rtype,
                record,
                full_url,
                resource,
                patient,
            });
        }
        // Rewrite references to entries of this Bundle; unknown urn: references fail.
        let mut unresolved = Vec::new();
        for op in plan.iter_mut() {
            if let Some(r) = op.resource.as_mut() {
                strip_server_fields(r);
                refs::rewrite(r, &mut |s| {
                    if let Some(n) = urls.get(s) {
                        return Some(n.clone());
                    }
                    if matches!(refs::parse(s), Some(refs::Target::Urn(_))) {
                        unresolved.push(s.to_owned());
                    }
                    None
                });
            }
        }
        if !unresolved.is_empty() {
            return Err(FhirError::invalid(
                IssueCode::NotFound,
                format!(
                    "{} urn: reference(s) name no entry of this Bundle",
                    unresolved.len()
                ),
            ));
        }
        // Existing records being updated or deleted: current state and access.
        for op in plan.iter_mut().filter(|o| o.method != "POST") {
            let view = self.access(who, op.record, &op.rtype).await?;
            if let Some(r) = &op.resource {
                self.stays_with(&op.rtype, r, view.state.patient, &new_patients)
                    .await?;
            }
            op.patient = Some(view.state.patient);
        }
        for op in plan.iter_mut().filter(|o| o.patient.is_none()) {
            let r = op.resource.as_ref().expect("POST has a resource");
            let mut patient = None;
            for pid in refs::patients(r) {
                if let Some((a, _)) = record_id(&pid).and_then(|p| new_patients.get(&p)) {
                    patient = Some(*a);
                    break;
                }
            }
            op.patient = Some(match patient {
                Some(p) => p,
                None => self.compartment_reserved(who, r).await?,
            });
        }
        // Seal every resource, then one transaction registers all of them.
        let mut sealed = Vec::new();
        let mut items = Vec::new();
        let mut cids = Vec::new();
        for op in &plan {
            let patient = op.patient.expect("resolved above");
            let key = new_patients.get(&op.record).and_then(|(_, k)| *k);
            let content = op
                .resource
                .clone()
                .unwrap_or_else(|| json!({"resourceType": TOMBSTONE}));
            let p = match self.seal(who, &op.rtype, patient, key, &content).await {
                Ok(p) => p,
                Err(e) => {
                    self.discard(&cids);
                    return Err(e);
                }
            };
            cids.push(p.cid);
            items.push(match op.method {
                "POST" => RecordWrite::Add {
                    patient,
                    category: Category::new(&op.rtype).map_err(internal)?,
                    cid: p.cid,
                    content_hash: p.content_hash,
                    size: p.size,
                },
                _ => RecordWrite::Amend {
                    record: op.record,
                    cid: p.cid,
                    content_hash: p.content_hash,
                    size: p.size,
                },
            });
            sealed.push(p);
        }
        let (_, wait) = self.queue(reserved, &who.keys, Payload::WriteRecords { items });
        if let Err(e) = self.outcome(&who.account, wait.await) {
            self.discard(&cids);
            return Err(e);
        }
        self.index
            .put(
                sealed
                    .into_iter()
                    .zip(&plan)
                    .map(|(p, op)| p.entry(op.record))
                    .collect(),
            )
            .await?;
        let records: Vec<RecordId> = plan.iter().map(|op| op.record).collect();
        let versions = self
            .view(move |st| {
                records
                    .iter()
                    .map(|r| Ok(query::record(st, r)?.and_then(|v| v.history.last().cloned())))
                    .collect::<medledger_ledger::Result<Vec<_>>>()
            })
            .await?;
        let mut out = Vec::new();
        for (op, v) in plan.iter().zip(versions) {
            let v = v.ok_or_else(|| internal("committed record not found"))?;
            let (status, loc) = match op.method {
                "POST" => ("201 Created", true),
                "PUT" => ("200 OK", true),
                _ => ("204 No Content", false),
            };
            let mut response = json!({"status": status, "etag": format!("W/\"{}\"", v.version), "lastModified": date::instant(v.time_ms)});
            if loc {
                response["location"] =
                    json!(format!("{}/{}/_history/{}", op.rtype, op.record, v.version));
            }
            let mut entry = Map::new();
            if let Some(u) = &op.full_url {
                entry.insert("fullUrl".into(), json!(u));
            }
            entry.insert("response".into(), response);
            out.push(Value::Object(entry));
        }
        Ok(json!({"resourceType": "Bundle", "type": "transaction-response", "entry": out}))
    }
}

/// Where a page of search results sits: `_count`, `_offset`, and whether more follow.
pub struct Page {
    pub count: usize,
    pub offset: usize,
    pub more: bool,
}

/// A `searchset` Bundle of `resources` found by `rtype?pairs`; when paged, with
/// `self`, `next` and `previous` links that repeat the query with other offsets.
pub fn searchset(
    base: &str,
    rtype: &str,
    pairs: &[(String, String)],
    resources: Vec<Value>,
    page: Option<Page>,
) -> Value {
    let entry: Vec<Value> = resources
        .into_iter()
        .map(|r| {
            let url = format!("{base}/{rtype}/{}", r["id"].as_str().unwrap_or_default());
            json!({"fullUrl": url, "resource": r, "search": {"mode": "match"}})
        })
        .collect();
    let mut bundle = json!({"resourceType": "Bundle", "type": "searchset", "entry": entry});
    let Some(p) = page else {
        return bundle;
    };
    let query_string = |offset: usize| {
        let mut parts: Vec<String> = pairs
            .iter()
            .filter(|(k, _)| k != "_offset" && k != "_count")
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect();
        parts.push(format!("_count={}", p.count));
        parts.push(format!("_offset={offset}"));
        format!("{base}/{rtype}?{}", parts.join("&"))
    };
    let mut links = vec![json!({"relation": "self", "url": query_string(p.offset)})];
    if p.more {
        links.push(json!({"relation": "next", "url": query_string(p.offset + p.count)}));
    }
    if p.offset > 0 {
        links.push(
            json!({"relation": "previous", "url": query_string(p.offset.saturating_sub(p.count))}),
        );
    }
    bundle["link"] = json!(links);
    bundle
}

/// A Bundle entry's `request.method` and `request.url` ("" where absent).
fn request_of(e: &Value) -> (&str, &str) {
    let get = |p| e.pointer(p).and_then(Value::as_str).unwrap_or("");
    (get("/request/method"), get("/request/url"))
}

fn dates_match(doc: &Doc, q: &search::Query) -> bool {
    q.dates.iter().all(|(param, prefix, range)| {
        doc.date_ranges(param)
            .any(|r| date::matches(*prefix, *range, r))
    })
}

/// Percent-encodes a query-string part for paging links.
fn enc(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:|/,".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// Types written through their own mapping, or not at all.
fn writable(rtype: &str) -> Result<(), FhirError> {
    match rtype {
        "Bundle" | "OperationOutcome" | "CapabilityStatement" | "Parameters" => Err(
            FhirError::NotSupported(format!("{rtype} resources are not stored")),
        ),
        "AuditEvent" => Err(FhirError::NotSupported(
            "AuditEvent is a read-only view of the ledger's audit trail".into(),
        )),
        "Consent" => Err(FhirError::NotSupported(
            "Consent maps to ledger grants: see the CapabilityStatement".into(),
        )),
        t if medledger_fhir::validate::is_r4_type(t) => Ok(()),
        t => Err(FhirError::NotFound(format!(
            "{t} is not a FHIR R4 resource type"
        ))),
    }
}

mod views;
