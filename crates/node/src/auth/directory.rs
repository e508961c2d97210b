//! The sign-in directory, `accounts.redb` in the data dir: the node's own record of
//! people who sign in here (never on the ledger, which holds no personal data). Email
//! addresses are stored only as keyed lookup tokens and inside sealed profiles; every
//! secret token only as its hash.

use super::AuthError;
use crate::keystore::KeystoreFile;
use medledger_core::{AccountId, OrgId, Role};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::path::Path;

pub(super) const USERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("users");
pub(super) const EMAILS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("emails");
pub(super) const INVITES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("invites");
pub(super) const VERIFY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("verify");
pub(super) const API_TOKENS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("api_tokens");
pub(super) const RESETS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("resets");
/// Links to claim an account a clinic created (custodial), by token hash.
pub(super) const CLAIMS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("claims");
/// Failed sign-in attempts by email token (the keyed hash `EMAILS` uses), for known
/// and unknown addresses alike, so lockout cannot tell which addresses have accounts.
pub(super) const LOCKOUTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("lockouts");

pub const DIRECTORY_VERSION: u8 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecoverySlot {
    pub used: bool,
    /// The account keys sealed under this recovery code.
    pub keystore: KeystoreFile,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TotpState {
    /// The TOTP secret, sealed with the node's local key (hex).
    pub secret: String,
    pub confirmed: bool,
    /// The last accepted time step (a code is accepted once).
    pub last_step: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRecord {
    pub version: u8,
    pub account: AccountId,
    pub org: OrgId,
    pub role: Role,
    /// Name and email, sealed with the node's local key (hex).
    pub profile: String,
    /// The account keys sealed under the password (the password's only verifier).
    pub keystore: KeystoreFile,
    pub recovery: Vec<RecoverySlot>,
    pub email_verified: bool,
    pub totp: Option<TotpState>,
    /// The account keys sealed for the organisation's recovery escrow (hex): opened
    /// only after two admins have approved a recovery on the ledger.
    #[serde(default)]
    pub org_escrow: String,
    pub created_ms: u64,
}

/// Failed attempts and lock of one email token (see [`LOCKOUTS`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Lockout {
    pub failures: u32,
    pub locked_until_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InviteRecord {
    pub org: OrgId,
    pub inviter: AccountId,
    pub expires_ms: u64,
    pub used: bool,
    /// The invite's secret (also the preimage of the ledger commitment), sealed.
    pub secret: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Expiring {
    pub account: AccountId,
    pub expires_ms: u64,
    /// API tokens only: the account keys sealed under a key derived from the token,
    /// so a request presenting the token can sign as its owner (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<String>,
}

pub struct Directory {
    db: Database,
    /// Bumped after every committed write: what was read before may be stale.
    generation: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Directory")
    }
}

fn storage(e: impl std::fmt::Display) -> AuthError {
    AuthError::Internal(format!("directory: {e}"))
}

/// Every table of the directory, in dump order.
const TABLES: [TableDefinition<&[u8], &[u8]>; 8] = [
    USERS, EMAILS, INVITES, VERIFY, API_TOKENS, RESETS, CLAIMS, LOCKOUTS,
];

impl Directory {
    /// Writes every table in one read transaction (a backup).
    pub(crate) fn dump(&self, w: &mut impl std::io::Write) -> Result<(), AuthError> {
        let rtx = self.db.begin_read().map_err(storage)?;
        for t in TABLES {
            medledger_dump::dump_table(&rtx, t, w).map_err(storage)?;
        }
        medledger_dump::end(w).map_err(storage)
    }

    /// Sign-in accounts held.
    pub(crate) fn count_users(&self) -> Result<u64, AuthError> {
        use redb::ReadableTableMetadata;
        let rtx = self.db.begin_read().map_err(storage)?;
        rtx.open_table(USERS)
            .map_err(storage)?
            .len()
            .map_err(storage)
    }

    /// Creates the directory at `path` (which must not exist) from a [`Directory::dump`].
    pub(crate) fn load_dump(path: &Path, r: &mut impl std::io::Read) -> Result<u64, AuthError> {
        let db = medledger_dump::create_new(path).map_err(storage)?;
        let mut w = db.begin_write().map_err(storage)?;
        w.set_quick_repair(true);
        let n = medledger_dump::load(r, &w, |w, table, k, v| {
            match TABLES.iter().find(|t| redb::TableHandle::name(*t) == table) {
                Some(t) => medledger_dump::insert(w, *t, k, v),
                None => Err(medledger_dump::unknown_table(table)),
            }
        })
        .map_err(storage)?;
        w.commit().map_err(storage)?;
        Ok(n)
    }
}

impl Directory {
    pub fn open(path: &Path) -> Result<Self, AuthError> {
        Self::open_with_cache(path, None)
    }

    /// [`Directory::open`] with redb's page cache limited (a backup reads it once).
    pub(crate) fn open_with_cache(
        path: &Path,
        cache_bytes: Option<usize>,
    ) -> Result<Self, AuthError> {
        let mut builder = Database::builder();
        if let Some(c) = cache_bytes {
            builder.set_cache_size(c);
        }
        let db = builder.create(path).map_err(storage)?;
        let mut w = db.begin_write().map_err(storage)?;
        w.set_quick_repair(true);
        for t in [
            USERS, EMAILS, INVITES, VERIFY, API_TOKENS, RESETS, LOCKOUTS, CLAIMS,
        ] {
            w.open_table(t).map_err(storage)?;
        }
        w.commit().map_err(storage)?;
        Ok(Directory {
            db,
            generation: 0.into(),
        })
    }

    pub fn get<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&[u8], &[u8]>,
        key: &[u8],
    ) -> Result<Option<T>, AuthError> {
        let r = self.db.begin_read().map_err(storage)?;
        let t = r.open_table(table).map_err(storage)?;
        match t.get(key).map_err(storage)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(v.value()).map(Some).map_err(storage),
        }
    }

    pub fn raw(
        &self,
        table: TableDefinition<&[u8], &[u8]>,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, AuthError> {
        let r = self.db.begin_read().map_err(storage)?;
        let t = r.open_table(table).map_err(storage)?;
        Ok(t.get(key).map_err(storage)?.map(|v| v.value().to_vec()))
    }

    /// Applies puts and deletes in one durable transaction.
    pub fn write(&self, ops: Vec<Op>) -> Result<(), AuthError> {
        let mut w = self.db.begin_write().map_err(storage)?;
        w.set_quick_repair(true);
        for op in ops {
            match op {
                Op::Put(table, k, v) => {
                    w.open_table(table)
                        .map_err(storage)?
                        .insert(&k[..], &v[..])
                        .map_err(storage)?;
                }
                Op::Delete(table, k) => {
                    w.open_table(table)
                        .map_err(storage)?
                        .remove(&k[..])
                        .map_err(storage)?;
                }
                Op::PutNew(table, k, v) => {
                    let mut t = w.open_table(table).map_err(storage)?;
                    if t.get(&k[..]).map_err(storage)?.is_some() {
                        return Err(AuthError::EmailTaken);
                    }
                    t.insert(&k[..], &v[..]).map_err(storage)?;
                }
            }
        }
        w.commit().map_err(storage)?;
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }

    /// Counts one failed attempt against `key` inside one write transaction, so
    /// parallel guesses each count (a read-modify-write outside it lost increments).
    /// The `max`-th failure locks until `now + lock_ms` and starts the count anew.
    pub fn record_failure(
        &self,
        key: &[u8],
        now: u64,
        max: u32,
        lock_ms: u64,
    ) -> Result<(), AuthError> {
        let mut w = self.db.begin_write().map_err(storage)?;
        w.set_quick_repair(true);
        {
            let mut t = w.open_table(LOCKOUTS).map_err(storage)?;
            let mut l: Lockout = match t.get(key).map_err(storage)? {
                Some(v) => serde_json::from_slice(v.value()).map_err(storage)?,
                None => Lockout::default(),
            };
            l.failures += 1;
            if l.failures >= max {
                l.locked_until_ms = now.saturating_add(lock_ms);
                l.failures = 0;
                tracing::warn!("sign-in locked after repeated failures");
            }
            t.insert(key, &json(&l)[..]).map_err(storage)?;
        }
        w.commit().map_err(storage)
    }

    /// Whether `key` is locked at `now`.
    pub fn locked(&self, key: &[u8], now: u64) -> Result<bool, AuthError> {
        Ok(self
            .get::<Lockout>(LOCKOUTS, key)?
            .is_some_and(|l| now < l.locked_until_ms))
    }

    /// Changes whenever the directory changed (see [`Directory::write`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Every API token of an account (for sign-out everywhere).
    pub fn tokens_of(&self, account: &AccountId) -> Result<Vec<Vec<u8>>, AuthError> {
        let r = self.db.begin_read().map_err(storage)?;
        let t = r.open_table(API_TOKENS).map_err(storage)?;
        let mut out = Vec::new();
        for e in t.iter().map_err(storage)? {
            let (k, v) = e.map_err(storage)?;
            if let Ok(x) = serde_json::from_slice::<Expiring>(v.value())
                && &x.account == account
            {
                out.push(k.value().to_vec());
            }
        }
        Ok(out)
    }
}

pub enum Op {
    Put(
        TableDefinition<'static, &'static [u8], &'static [u8]>,
        Vec<u8>,
        Vec<u8>,
    ),
    /// Fails with `EmailTaken` if the key exists (used for the email index).
    PutNew(
        TableDefinition<'static, &'static [u8], &'static [u8]>,
        Vec<u8>,
        Vec<u8>,
    ),
    Delete(
        TableDefinition<'static, &'static [u8], &'static [u8]>,
        Vec<u8>,
    ),
}

pub fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("directory records serialize")
}

/// A pending organisation-assisted reset: the approved ledger request it rests on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResetRecord {
    pub account: AccountId,
    pub request: medledger_core::GrantId,
    pub expires_ms: u64,
}
