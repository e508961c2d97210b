//! Accounts and sign-in for people who use the node's web and JSON interfaces
//! (custodial accounts): registration (self-service for staff, by invitation for
//! patients), email verification, password sign-in with lockout, TOTP second factor,
//! recovery codes that re-open the keystore, sessions with CSRF tokens, API tokens,
//! and sign-out everywhere.
//!
//! The password is never stored: it seals the account's keystore (Argon2id), and
//! opening the keystore is how a password is checked. A session holds the opened keys
//! in memory only, so the node can sign the person's ledger transactions while they
//! are signed in; sign-out drops them.

pub(crate) mod directory;
pub mod mail;
pub mod secrets;

use crate::keystore::{AccountKeys, KeystoreFile};
use crate::submitter::{SubmitError, Submitter};
use directory::*;
use mail::{MailConfig, Mailer};
use medledger_core::tx::invite_commitment;
use medledger_core::{AccountId, Digest32, GrantId, OrgId, Payload, RejectReason, Role, TxHash};
use medledger_ledger::Ledger;
use secrets::{LocalKey, token_hash};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

pub use directory::DIRECTORY_VERSION;

/// Failed sign-ins before the account locks.
pub const MAX_FAILURES: u32 = 5;
pub const LOCKOUT_MS: u64 = 15 * 60 * 1000;
pub const SESSION_MS: u64 = 8 * 3600 * 1000;
pub const INVITE_MS: u64 = 72 * 3600 * 1000;
pub const VERIFY_MS: u64 = 48 * 3600 * 1000;
pub const MAX_TOKEN_MS: u64 = 90 * 24 * 3600 * 1000;
/// Sign-in and recovery attempts the whole node accepts per second (and in a burst).
pub const ATTEMPTS_PER_S: f64 = 20.0;
pub const ATTEMPTS_BURST: f64 = 100.0;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("password rejected: {0}")]
    WeakPassword(String),
    #[error("an account with this email address exists")]
    EmailTaken,
    #[error("invalid {0}")]
    Invalid(String),
    #[error("this link is invalid, expired or already used")]
    BadLink,
    #[error("wrong email or password")]
    BadCredentials,
    #[error("too many failed sign-ins; try again later")]
    Locked,
    #[error("too many sign-in attempts on this node; slow down")]
    RateLimited,
    #[error("verify your email address first (see the link we sent)")]
    EmailUnverified,
    #[error("your registration is waiting for an administrator's approval")]
    PendingApproval,
    #[error("a one-time code from your authenticator app is required")]
    MfaRequired,
    #[error("wrong or already used one-time code")]
    BadCode,
    #[error("wrong or already used recovery code")]
    BadRecoveryCode,
    #[error("sign in first")]
    NoSession,
    #[error("missing or wrong CSRF token")]
    BadCsrf,
    #[error("set up your authenticator app first")]
    MfaSetupRequired,
    #[error("not allowed: {0}")]
    Forbidden(String),
    #[error("the ledger refused: {0}")]
    Ledger(RejectReason),
    #[error("internal: {0}")]
    Internal(String),
}

/// Whoever a request acts for (a session or an API token), with the keys to sign
/// their transactions and open their envelopes.
#[derive(Clone)]
pub struct Principal {
    pub account: AccountId,
    pub org: OrgId,
    pub role: Role,
    pub keys: Arc<AccountKeys>,
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Principal({}, {})", self.account, self.role)
    }
}

impl From<&Session> for Principal {
    fn from(s: &Session) -> Self {
        Principal {
            account: s.account,
            org: s.org.clone(),
            role: s.role,
            keys: s.keys.clone(),
        }
    }
}

/// The key that seals an API token's copy of the account keys: derived from the
/// token (which only its holder has), domain-separated from the token's lookup hash.
fn token_key(token: &str) -> LocalKey {
    LocalKey::new(
        medledger_core::hash::tagged(b"medledger/api-token-keys/v1\0", &[token.as_bytes()]).0,
    )
}

/// A signed-in person. The keys stay in memory only.
#[derive(Clone)]
pub struct Session {
    pub account: AccountId,
    pub org: OrgId,
    pub role: Role,
    pub keys: Arc<AccountKeys>,
    pub csrf: String,
    pub expires_ms: u64,
    /// False until a clinician or admin has a confirmed second factor.
    pub mfa_ok: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Session({}, {})", self.account, self.role)
    }
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct RegisterRequest {
    pub name: String,
    pub email: String,
    pub password: String,
    /// Required without an invite; taken from the invite with one.
    pub org: Option<OrgId>,
    /// Staff roles self-register; patients come through an invite.
    pub role: Option<Role>,
    pub invite: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Registered {
    pub account: AccountId,
    pub role: Role,
    pub org: OrgId,
    /// Shown once: each re-opens the account if the password is lost.
    pub recovery_codes: Vec<String>,
}

/// The signed-in account as its owner sees it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Me {
    pub account: AccountId,
    pub name: String,
    pub email: String,
    pub org: OrgId,
    pub role: Role,
    pub email_verified: bool,
    /// Whether a second factor (TOTP) is confirmed.
    pub mfa: bool,
    pub recovery_codes_left: usize,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LoginOk {
    #[serde(skip)]
    pub token: String,
    pub csrf: String,
    pub account: AccountId,
    pub role: Role,
    pub mfa_setup_required: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Profile {
    name: String,
    email: String,
}

/// A TOTP secret as base32 and as the `otpauth://` URI authenticator apps scan.
fn totp_uri(account: &AccountId, secret: &[u8]) -> (String, String) {
    let b32 = data_encoding::BASE32_NOPAD.encode(secret);
    let url = format!(
        "otpauth://totp/medledger:{}?secret={b32}&issuer=medledger",
        account.to_did()
    );
    (b32, url)
}

/// Roles that must use a second factor.
pub fn mfa_required(role: Role) -> bool {
    matches!(role, Role::Doctor | Role::Nurse | Role::HospitalAdmin)
}

/// Account keys sealed under the password and under each new recovery code.
struct Sealed {
    keystore: KeystoreFile,
    slots: Vec<RecoverySlot>,
    codes: Vec<String>,
}

/// Bound on [`Auth`]'s principal cache (cleared when full: it is only a cache).
const MAX_CACHED_PRINCIPALS: usize = 10_000;

pub struct Auth {
    dir: Directory,
    mailer: Mailer,
    key: LocalKey,
    ledger: Ledger,
    submitter: Submitter,
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    /// Principals of recently presented API tokens, by token hash, with the directory
    /// generation they were read at: deriving the keys and decoding the user record on
    /// every request was an eighth of a FHIR read. Any directory write invalidates.
    principals: Mutex<HashMap<[u8; 32], (u64, u64, Principal)>>,
    base_url: String,
    invite_ms: u64,
    attempts: secrets::RateLimiter,
    /// Permits for key derivations (Argon2id): as many as the node has cores.
    kdf: Arc<tokio::sync::Semaphore>,
    /// A keystore under a random password nobody knows: opened for unknown addresses
    /// so that they cost the same derivation as known ones.
    decoy: KeystoreFile,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auth")
    }
}

fn escrow_aad(account: &AccountId) -> Vec<u8> {
    let mut a = b"medledger/org-escrow/v1\0".to_vec();
    a.extend_from_slice(&account.0);
    a
}

fn now() -> u64 {
    crate::reporter::now_ms()
}

fn valid_name(s: &str) -> bool {
    let n = s.trim().chars().count();
    (1..=200).contains(&n) && !s.chars().any(char::is_control)
}

fn valid_email(s: &str) -> bool {
    s.len() <= 254 && s.parse::<lettre::Address>().is_ok()
}

impl Auth {
    /// The sign-in directory (a backup dumps it).
    pub(crate) fn directory(&self) -> &Directory {
        &self.dir
    }

    /// Opens (creating) `accounts.redb` and the node-local key in `data_dir`.
    pub fn open(
        data_dir: &Path,
        ledger: Ledger,
        submitter: Submitter,
        mail: Option<MailConfig>,
        base_url: String,
    ) -> Result<Self, AuthError> {
        let key = crate::datadir::local_secret(
            &data_dir.join("auth.key"),
            &data_dir.join("accounts.redb"),
        )
        .map_err(|e| AuthError::Internal(e.to_string()))?;
        let mail = mail.unwrap_or_else(|| MailConfig::Outbox(data_dir.join("outbox")));
        let decoy_password = secrets::new_token()?;
        let decoy = AccountKeys::generate()
            .and_then(|k| k.seal(decoy_password.as_bytes()))
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        Ok(Auth {
            dir: Directory::open(&data_dir.join("accounts.redb"))?,
            mailer: Mailer::new(&mail)?,
            key: LocalKey::new(key),
            ledger,
            submitter,
            sessions: Mutex::new(HashMap::new()),
            principals: Mutex::new(HashMap::new()),
            base_url,
            invite_ms: INVITE_MS,
            attempts: secrets::RateLimiter::new(ATTEMPTS_PER_S, ATTEMPTS_BURST),
            kdf: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
            decoy,
        })
    }

    /// How long patient invites stay valid (default 72 hours).
    pub fn with_invite_ttl(mut self, ms: u64) -> Self {
        self.invite_ms = ms.max(1);
        self
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Signs with `keys` and submits through consensus ([`Submitter`], which numbers
    /// every custodial account's transactions), waiting for the outcome.
    async fn submit(&self, keys: &AccountKeys, payload: Payload) -> Result<TxHash, AuthError> {
        match self.submitter.submit(keys, payload).await {
            Ok((hash, _)) => Ok(hash),
            Err(SubmitError::Refused(reason)) => Err(AuthError::Ledger(reason)),
            Err(e) => Err(AuthError::Internal(e.to_string())),
        }
    }

    fn user(&self, account: &AccountId) -> Result<Option<UserRecord>, AuthError> {
        self.dir.get(USERS, &account.0)
    }

    fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, AuthError> {
        let token = self.key.email_token(email);
        match self.dir.raw(EMAILS, &token)? {
            None => Ok(None),
            Some(a) => {
                let id = AccountId(
                    a.try_into()
                        .map_err(|_| AuthError::Internal("email index".into()))?,
                );
                self.user(&id)
            }
        }
    }

    fn save(&self, u: &UserRecord) -> Result<(), AuthError> {
        self.dir
            .write(vec![Op::Put(USERS, u.account.0.to_vec(), json(u))])
    }

    fn profile(&self, u: &UserRecord) -> Result<Profile, AuthError> {
        let sealed = hex::decode(&u.profile).map_err(|_| AuthError::Internal("profile".into()))?;
        let plain = self.key.open(&sealed, &u.account.0)?;
        serde_json::from_slice(&plain).map_err(|_| AuthError::Internal("profile".into()))
    }

    fn link(&self, path: &str, token: &str) -> String {
        format!("{}{path}?token={token}", self.base_url)
    }

    pub async fn register(&self, req: RegisterRequest) -> Result<Registered, AuthError> {
        if !valid_name(&req.name) {
            return Err(AuthError::Invalid("name".into()));
        }
        if !valid_email(&req.email) {
            return Err(AuthError::Invalid("email address".into()));
        }
        secrets::check_password(&req.password, &[&req.name, &req.email])?;
        let keys = AccountKeys::generate().map_err(|e| AuthError::Internal(e.to_string()))?;
        let (org, role, invite) = match &req.invite {
            Some(token) => {
                let h = token_hash(token);
                let inv: InviteRecord = self.dir.get(INVITES, &h)?.ok_or(AuthError::BadLink)?;
                if inv.used || now() >= inv.expires_ms {
                    return Err(AuthError::BadLink);
                }
                (inv.org.clone(), Role::Patient, Some((h, inv)))
            }
            None => {
                let org = req
                    .org
                    .clone()
                    .ok_or_else(|| AuthError::Invalid("organisation".into()))?;
                let role = req.role.ok_or_else(|| AuthError::Invalid("role".into()))?;
                if role == Role::Patient {
                    return Err(AuthError::Forbidden(
                        "patients register through an invitation".into(),
                    ));
                }
                // Cheap checks before the eleven key derivations below.
                let known = self
                    .ledger
                    .state()
                    .and_then(|st| medledger_ledger::contracts::query::org(&st, &org))
                    .map_err(|e| AuthError::Internal(e.to_string()))?;
                if known.is_none() {
                    return Err(AuthError::Invalid(
                        "organisation (no such organisation)".into(),
                    ));
                }
                (org, role, None)
            }
        };
        let (keys, sealed) = self.seal_all(keys, req.password.clone()).await?;
        if self.user_by_email(&req.email)?.is_some() {
            return self
                .already_registered(&req.email, keys, sealed, org, role)
                .await;
        }
        // The ledger first: if it refuses, nothing is stored here.
        match &invite {
            Some((_, inv)) => {
                let secret = self.key.open(
                    &hex::decode(&inv.secret).map_err(|_| AuthError::Internal("invite".into()))?,
                    b"invite",
                )?;
                let secret = Digest32(
                    secret
                        .try_into()
                        .map_err(|_| AuthError::Internal("invite".into()))?,
                );
                self.submit(
                    &keys,
                    Payload::RegisterInvited {
                        secret,
                        encryption_key: keys.encryption_public(),
                    },
                )
                .await?;
            }
            None => {
                self.submit(
                    &keys,
                    Payload::Register {
                        org: org.clone(),
                        role,
                        encryption_key: keys.encryption_public(),
                    },
                )
                .await?;
            }
        }
        let account = keys.account();
        let extra = invite
            .map(|(h, mut inv)| {
                inv.used = true;
                Op::Put(INVITES, h.to_vec(), json(&inv))
            })
            .into_iter()
            .collect();
        let codes = self
            .create_user(&keys, sealed, &req.name, &req.email, &org, role, extra)
            .await?;
        tracing::info!(%account, role = %role, "account registered");
        Ok(Registered {
            account,
            role,
            org,
            recovery_codes: codes,
        })
    }

    /// Registration with an address that already has an account answers exactly like
    /// a new registration (after the same key derivations), so the answer does not
    /// tell whether the address is known; nothing is stored or sent to the ledger,
    /// and the address's owner gets a notice instead of a verification link. The
    /// account and codes returned belong to nothing.
    async fn already_registered(
        &self,
        email: &str,
        keys: AccountKeys,
        sealed: Sealed,
        org: OrgId,
        role: Role,
    ) -> Result<Registered, AuthError> {
        self.mailer
            .send(
                email,
                "Someone tried to register with your medledger address",
                "Somebody (perhaps you) asked to register a new medledger account with this \
                 address, which already has one. Nothing was changed. If it was you, sign in, \
                 or use a recovery code if you forgot your password.\n",
            )
            .await?;
        Ok(Registered {
            account: keys.account(),
            role,
            org,
            recovery_codes: sealed.codes,
        })
    }

    /// Stores a new person (keys sealed under their password and recovery codes, the
    /// escrow, the sealed profile), indexes the email, and mails a verification link.
    /// Returns the recovery codes to show once.
    #[allow(clippy::too_many_arguments)]
    async fn create_user(
        &self,
        keys: &AccountKeys,
        sealed: Sealed,
        name: &str,
        email: &str,
        org: &OrgId,
        role: Role,
        extra: Vec<Op>,
    ) -> Result<Vec<String>, AuthError> {
        let account = keys.account();
        let profile = Profile {
            name: name.trim().to_owned(),
            email: email.trim().to_owned(),
        };
        let user = UserRecord {
            version: DIRECTORY_VERSION,
            account,
            org: org.clone(),
            role,
            profile: hex::encode(
                self.key
                    .seal(&serde_json::to_vec(&profile).expect("json"), &account.0)?,
            ),
            org_escrow: self.escrow(keys)?,
            keystore: sealed.keystore,
            recovery: sealed.slots,
            email_verified: false,
            totp: None,
            created_ms: now(),
        };
        let verify = secrets::new_token()?;
        let mut ops = vec![
            Op::PutNew(
                EMAILS,
                self.key.email_token(email).to_vec(),
                account.0.to_vec(),
            ),
            Op::Put(USERS, account.0.to_vec(), json(&user)),
            Op::Put(
                VERIFY,
                token_hash(&verify).to_vec(),
                json(&Expiring {
                    account,
                    expires_ms: now() + VERIFY_MS,
                    keys: None,
                }),
            ),
        ];
        ops.extend(extra);
        self.dir.write(ops)?;
        self.mailer
            .send(
                &profile.email,
                "Verify your medledger email address",
                &format!(
                    "Open this link to verify your address:\n{}\n",
                    self.link("/verify", &verify)
                ),
            )
            .await?;
        Ok(sealed.codes)
    }

    pub fn verify_email(&self, token: &str) -> Result<(), AuthError> {
        let h = token_hash(token);
        let v: Expiring = self.dir.get(VERIFY, &h)?.ok_or(AuthError::BadLink)?;
        if now() >= v.expires_ms {
            return Err(AuthError::BadLink);
        }
        let mut u = self.user(&v.account)?.ok_or(AuthError::BadLink)?;
        u.email_verified = true;
        self.dir.write(vec![
            Op::Put(USERS, u.account.0.to_vec(), json(&u)),
            Op::Delete(VERIFY, h.to_vec()),
        ])
    }

    /// Opens a keystore with `secret` (`None` if it does not open). Every key
    /// derivation of the sign-in service runs under [`Auth::kdf`]'s permits, taken
    /// before the work starts: a request whose client has gone away is dropped while
    /// it waits, and no number of requests runs more derivations at once than the
    /// node has cores.
    async fn open_keystore(
        &self,
        ks: &KeystoreFile,
        secret: &str,
    ) -> Result<Option<AccountKeys>, AuthError> {
        let ks = ks.clone();
        let secret = secret.to_owned();
        self.derive(move || ks.open(secret.as_bytes()).ok()).await
    }

    /// Runs one key derivation (or a few cheap steps around one) off the async
    /// threads, under a permit.
    async fn derive<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AuthError> {
        let permit = self
            .kdf
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| AuthError::Internal("key derivation closed".into()))?;
        tokio::task::spawn_blocking(move || {
            let out = f();
            drop(permit);
            out
        })
        .await
        .map_err(|e| AuthError::Internal(e.to_string()))
    }

    /// The first unused recovery slot that `code` opens, with the keys it holds.
    async fn open_with_recovery_code(
        &self,
        u: &UserRecord,
        code: &str,
    ) -> Result<Option<(usize, AccountKeys)>, AuthError> {
        let code = secrets::normalise_code(code);
        for (i, slot) in u.recovery.iter().enumerate().filter(|(_, s)| !s.used) {
            if let Some(keys) = self.open_keystore(&slot.keystore, &code).await? {
                return Ok(Some((i, keys)));
            }
        }
        Ok(None)
    }

    /// Seals new keys under the password and under each new recovery code: one key
    /// derivation each, each under its own permit (see [`Auth::open_keystore`]).
    async fn seal_all(
        &self,
        keys: AccountKeys,
        password: String,
    ) -> Result<(AccountKeys, Sealed), AuthError> {
        let codes = secrets::recovery_codes()?;
        let keys = Arc::new(keys);
        let seal = |secret: String| {
            let keys = keys.clone();
            self.derive(move || {
                keys.seal(secret.as_bytes())
                    .map_err(|e| AuthError::Internal(e.to_string()))
            })
        };
        let keystore = seal(password).await??;
        let mut slots = Vec::with_capacity(codes.len());
        for c in &codes {
            slots.push(RecoverySlot {
                used: false,
                keystore: seal(c.clone()).await??,
            });
        }
        let keys = Arc::try_unwrap(keys).map_err(|_| AuthError::Internal("keys".into()))?;
        Ok((
            keys,
            Sealed {
                keystore,
                slots,
                codes,
            },
        ))
    }

    /// The account's TOTP generator, from its sealed secret.
    fn totp_of(&self, account: &AccountId, t: &TotpState) -> Result<totp_rs::Totp, AuthError> {
        let sealed = hex::decode(&t.secret).map_err(|_| AuthError::Internal("totp".into()))?;
        secrets::totp(&self.key.open(&sealed, &account.0)?)
    }

    /// Counts a failed attempt against the email, whether or not it has an account;
    /// returns `err` to answer with.
    fn fail(&self, email_key: &[u8; 32], err: AuthError) -> Result<AuthError, AuthError> {
        self.dir
            .record_failure(email_key, now(), MAX_FAILURES, LOCKOUT_MS)?;
        Ok(err)
    }

    /// Refuses while the email is locked: the same answer for addresses with and
    /// without an account.
    fn not_locked(&self, email_key: &[u8; 32]) -> Result<(), AuthError> {
        if self.dir.locked(email_key, now())? {
            Err(AuthError::Locked)
        } else {
            Ok(())
        }
    }

    /// The person behind `email` with the keystore `password` opens, or `None`. An
    /// unknown address costs the same key derivation as a known one (on a keystore
    /// nobody can open), so answer times do not tell which addresses have accounts.
    async fn open_by_password(
        &self,
        email: &str,
        password: &str,
    ) -> Result<Option<(UserRecord, AccountKeys)>, AuthError> {
        let user = self.user_by_email(email)?;
        let keystore = user
            .as_ref()
            .map(|u| u.keystore.clone())
            .unwrap_or_else(|| self.decoy.clone());
        let keys = self.open_keystore(&keystore, password).await?;
        Ok(user.zip(keys))
    }

    fn attempt(&self) -> Result<(), AuthError> {
        if self.attempts.allow() {
            Ok(())
        } else {
            Err(AuthError::RateLimited)
        }
    }

    pub async fn login(
        &self,
        email: &str,
        password: &str,
        code: Option<&str>,
    ) -> Result<LoginOk, AuthError> {
        self.attempt()?;
        let email_key = self.key.email_token(email);
        self.not_locked(&email_key)?;
        let Some((mut u, keys)) = self.open_by_password(email, password).await? else {
            return Err(self.fail(&email_key, AuthError::BadCredentials)?);
        };
        if !u.email_verified {
            return Err(AuthError::EmailUnverified);
        }
        let state = self
            .ledger
            .account(&u.account)
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        if !state.is_some_and(|a| a.has_role_in(&u.org, u.role)) {
            return Err(AuthError::PendingApproval);
        }
        let mut mfa_ok = !mfa_required(u.role);
        if let Some(t) = u.totp.clone().filter(|t| t.confirmed) {
            let Some(code) = code else {
                return Err(AuthError::MfaRequired);
            };
            // A one-time recovery code stands in for a lost authenticator.
            if code.contains('-') {
                let Some((i, _)) = self.open_with_recovery_code(&u, code).await? else {
                    return Err(self.fail(&email_key, AuthError::BadCode)?);
                };
                u.recovery[i].used = true;
                return self.start_session(u, &email_key, keys, true);
            }
            let totp = self.totp_of(&u.account, &t)?;
            match secrets::check_totp(&totp, code, now() / 1000, t.last_step) {
                Some(step) => {
                    u.totp = Some(TotpState {
                        last_step: step,
                        ..t
                    });
                    mfa_ok = true;
                }
                None => return Err(self.fail(&email_key, AuthError::BadCode)?),
            }
        }
        self.start_session(u, &email_key, keys, mfa_ok)
    }

    fn start_session(
        &self,
        u: UserRecord,
        email_key: &[u8; 32],
        keys: AccountKeys,
        mfa_ok: bool,
    ) -> Result<LoginOk, AuthError> {
        self.dir.write(vec![
            Op::Put(USERS, u.account.0.to_vec(), json(&u)),
            Op::Delete(LOCKOUTS, email_key.to_vec()),
        ])?;
        let token = secrets::new_token()?;
        let csrf = secrets::new_token()?;
        self.sessions().insert(
            token_hash(&token),
            Session {
                account: u.account,
                org: u.org.clone(),
                role: u.role,
                keys: Arc::new(keys),
                csrf: csrf.clone(),
                expires_ms: now() + SESSION_MS,
                mfa_ok,
            },
        );
        Ok(LoginOk {
            token,
            csrf,
            account: u.account,
            role: u.role,
            mfa_setup_required: !mfa_ok,
        })
    }

    pub fn session(&self, token: &str) -> Option<Session> {
        let h = token_hash(token);
        let mut s = self.sessions();
        match s.get(&h) {
            Some(x) if now() < x.expires_ms => Some(x.clone()),
            Some(_) => {
                s.remove(&h);
                None
            }
            None => None,
        }
    }

    pub fn logout(&self, token: &str) {
        self.sessions().remove(&token_hash(token));
    }

    /// Ends every session and API token of the account.
    pub fn logout_all(&self, account: &AccountId) -> Result<(), AuthError> {
        self.sessions().retain(|_, s| &s.account != account);
        let ops = self
            .dir
            .tokens_of(account)?
            .into_iter()
            .map(|k| Op::Delete(API_TOKENS, k))
            .collect();
        self.dir.write(ops)
    }

    pub fn totp_setup(&self, s: &Session) -> Result<(String, String), AuthError> {
        let mut u = self.user(&s.account)?.ok_or(AuthError::NoSession)?;
        if u.totp.as_ref().is_some_and(|t| t.confirmed) {
            return Err(AuthError::Forbidden(
                "a second factor is already set up".into(),
            ));
        }
        let secret = secrets::random::<20>()?;
        u.totp = Some(TotpState {
            secret: hex::encode(self.key.seal(&secret, &s.account.0)?),
            confirmed: false,
            last_step: 0,
        });
        self.save(&u)?;
        Ok(totp_uri(&s.account, &secret))
    }

    /// The secret of a set-up that was started but not confirmed yet (to show again).
    pub fn totp_pending(&self, s: &Session) -> Result<Option<(String, String)>, AuthError> {
        let u = self.user(&s.account)?.ok_or(AuthError::NoSession)?;
        match u.totp {
            Some(t) if !t.confirmed => {
                let sealed =
                    hex::decode(&t.secret).map_err(|_| AuthError::Internal("totp".into()))?;
                let secret = self.key.open(&sealed, &s.account.0)?;
                Ok(Some(totp_uri(&s.account, &secret)))
            }
            _ => Ok(None),
        }
    }

    /// Signs `payload` with a signed-in person's keys and commits it (the portal's
    /// writes: consent, approvals; the rules are the ledger's).
    pub async fn act(&self, p: &Principal, payload: Payload) -> Result<TxHash, AuthError> {
        self.submit(&p.keys, payload).await
    }

    pub fn totp_confirm(&self, token: &str, s: &Session, code: &str) -> Result<(), AuthError> {
        let mut u = self.user(&s.account)?.ok_or(AuthError::NoSession)?;
        let t = u.totp.clone().ok_or(AuthError::MfaSetupRequired)?;
        let totp = self.totp_of(&u.account, &t)?;
        let step = secrets::check_totp(&totp, code, now() / 1000, t.last_step)
            .ok_or(AuthError::BadCode)?;
        u.totp = Some(TotpState {
            confirmed: true,
            last_step: step,
            ..t
        });
        self.save(&u)?;
        if let Some(x) = self.sessions().get_mut(&token_hash(token)) {
            x.mfa_ok = true;
        }
        Ok(())
    }

    /// A clinician or admin invites a patient: an on-ledger commitment, and a link by email.
    pub async fn invite(&self, s: &Session, email: &str) -> Result<(), AuthError> {
        if !valid_email(email) {
            return Err(AuthError::Invalid("email address".into()));
        }
        if !matches!(s.role, Role::Doctor | Role::Nurse | Role::HospitalAdmin) {
            return Err(AuthError::Forbidden(
                "only clinicians and admins invite patients".into(),
            ));
        }
        let secret = Digest32(secrets::random::<32>()?);
        let token = secrets::new_token()?;
        let expires_ms = now() + self.invite_ms;
        self.submit(
            &s.keys,
            Payload::InvitePatient {
                org: s.org.clone(),
                commitment: invite_commitment(&secret),
                expires_ms,
            },
        )
        .await?;
        let inv = InviteRecord {
            org: s.org.clone(),
            inviter: s.account,
            expires_ms,
            used: false,
            secret: hex::encode(self.key.seal(&secret.0, b"invite")?),
        };
        self.dir.write(vec![Op::Put(
            INVITES,
            token_hash(&token).to_vec(),
            json(&inv),
        )])?;
        self.mailer
            .send(
                email,
                "You are invited to medledger",
                &format!(
                    "Your care team invites you to see and control your health records.\nRegister here (single use, valid 72 hours):\n{}/register?invite={token}\n",
                    self.base_url
                ),
            )
            .await
    }

    /// An org admin approves a pending registration (signed with their own key).
    pub async fn approve(
        &self,
        s: &Session,
        account: &AccountId,
        approve: bool,
    ) -> Result<(), AuthError> {
        let payload = if approve {
            Payload::ApproveRegistration { account: *account }
        } else {
            Payload::RejectRegistration { account: *account }
        };
        self.submit(&s.keys, payload).await.map(|_| ())
    }

    /// Seals the account keys into the organisation's recovery escrow.
    fn escrow(&self, keys: &AccountKeys) -> Result<String, AuthError> {
        let mut plain = keys.signing.to_bytes().to_vec();
        plain.extend_from_slice(&keys.encryption_secret);
        Ok(hex::encode(
            self.key.seal(&plain, &escrow_aad(&keys.account()))?,
        ))
    }

    fn open_escrow(&self, u: &UserRecord) -> Result<AccountKeys, AuthError> {
        let sealed = hex::decode(&u.org_escrow)
            .map_err(|_| AuthError::Forbidden("no recovery escrow".into()))?;
        let plain = self.key.open(&sealed, &escrow_aad(&u.account))?;
        if plain.len() != 64 {
            return Err(AuthError::Internal("escrow".into()));
        }
        let keys = AccountKeys {
            signing: ed25519_dalek::SigningKey::from_bytes(
                plain[..32].try_into().expect("32 bytes"),
            ),
            encryption_secret: plain[32..].try_into().expect("32 bytes"),
        };
        if keys.account() != u.account {
            return Err(AuthError::Internal("escrow holds another account".into()));
        }
        Ok(keys)
    }

    /// Organisation-assisted recovery, step 1: an org admin asks (on the ledger).
    pub async fn request_recovery(&self, s: &Session, email: &str) -> Result<GrantId, AuthError> {
        let u = self
            .user_by_email(email)?
            .ok_or_else(|| AuthError::Invalid("account".into()))?;
        let hash = self
            .submit(&s.keys, Payload::RequestRecovery { account: u.account })
            .await?;
        Ok(GrantId::from_tx(&hash))
    }

    /// Step 2: a second admin approves (on the ledger); the member gets a reset link.
    pub async fn approve_recovery(&self, s: &Session, request: &GrantId) -> Result<(), AuthError> {
        self.submit(&s.keys, Payload::ApproveRecovery { request: *request })
            .await?;
        let state = self
            .ledger
            .state()
            .and_then(|st| medledger_ledger::contracts::query::recovery(&st, request))
            .map_err(|e| AuthError::Internal(e.to_string()))?
            .ok_or_else(|| AuthError::Internal("approved recovery not found".into()))?;
        let u = self
            .user(&state.account)?
            .ok_or_else(|| AuthError::Invalid("account".into()))?;
        let token = secrets::new_token()?;
        self.dir.write(vec![Op::Put(
            RESETS,
            token_hash(&token).to_vec(),
            json(&ResetRecord {
                account: u.account,
                request: *request,
                expires_ms: now() + VERIFY_MS,
            }),
        )])?;
        let email = self.profile(&u)?.email;
        self.mailer
            .send(
                &email,
                "Reset your medledger password",
                &format!(
                    "Two administrators of your organisation approved restoring your access.\nChoose a new password here (single use):\n{}\n",
                    self.link("/recovery", &token)
                ),
            )
            .await
    }

    /// Step 3: the member sets a new password; the same keys are re-sealed under it.
    pub async fn complete_recovery(
        &self,
        token: &str,
        new_password: &str,
    ) -> Result<(), AuthError> {
        let h = token_hash(token);
        let r: ResetRecord = self.dir.get(RESETS, &h)?.ok_or(AuthError::BadLink)?;
        if now() >= r.expires_ms {
            return Err(AuthError::BadLink);
        }
        // The ledger must still say two different admins approved this very request.
        let state = self
            .ledger
            .state()
            .and_then(|st| medledger_ledger::contracts::query::recovery(&st, &r.request))
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        let approved = state.is_some_and(|x| {
            x.account == r.account && x.approved_by.is_some_and(|a| a != x.requested_by)
        });
        if !approved {
            return Err(AuthError::BadLink);
        }
        let mut u = self.user(&r.account)?.ok_or(AuthError::BadLink)?;
        let profile = self.profile(&u)?;
        secrets::check_password(new_password, &[&profile.name, &profile.email])?;
        let keys = self.open_escrow(&u)?;
        let pw = new_password.to_owned();
        u.keystore = tokio::task::spawn_blocking(move || keys.seal(pw.as_bytes()))
            .await
            .map_err(|e| AuthError::Internal(e.to_string()))?
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        u.totp = None;
        self.dir.write(vec![
            Op::Put(USERS, u.account.0.to_vec(), json(&u)),
            Op::Delete(RESETS, h.to_vec()),
            Op::Delete(LOCKOUTS, self.key.email_token(&profile.email).to_vec()),
        ])?;
        self.logout_all(&u.account)?;
        tracing::info!(account = %u.account, "access restored by organisation-assisted recovery");
        Ok(())
    }

    /// A clinician or admin sends the person behind an account their organisation
    /// created at the desk (its keys in the node's custody) a single-use link to claim
    /// it: to sign in themselves and hold their own keys from then on.
    pub async fn invite_claim(
        &self,
        s: &Session,
        account: &AccountId,
        email: &str,
    ) -> Result<(), AuthError> {
        if !valid_email(email) {
            return Err(AuthError::Invalid("email address".into()));
        }
        if !matches!(s.role, Role::Doctor | Role::Nurse | Role::HospitalAdmin) {
            return Err(AuthError::Forbidden(
                "only clinicians and admins invite patients".into(),
            ));
        }
        let state = self
            .ledger
            .account(account)
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        if !state.is_some_and(|a| a.has_role_in(&s.org, Role::Patient)) {
            return Err(AuthError::Forbidden(format!("not a patient of {}", s.org)));
        }
        if self.user(account)?.is_some() {
            return Err(AuthError::Forbidden("this account has an owner".into()));
        }
        let token = secrets::new_token()?;
        self.dir.write(vec![Op::Put(
            CLAIMS,
            token_hash(&token).to_vec(),
            json(&Expiring {
                account: *account,
                expires_ms: now() + self.invite_ms,
                keys: None,
            }),
        )])?;
        self.mailer
            .send(
                email,
                "Your health record at medledger",
                &format!(
                    "Your care team keeps your health record on medledger. Claim it to see it, decide who may read it and see every access.\nClaim it here (single use, valid 72 hours):\n{}\n",
                    self.link("/claim", &token)
                ),
            )
            .await
    }

    /// The account a claim link is for, while the link is valid.
    pub fn claim_account(&self, token: &str) -> Result<AccountId, AuthError> {
        let c: Expiring = self
            .dir
            .get(CLAIMS, &token_hash(token))?
            .ok_or(AuthError::BadLink)?;
        if now() >= c.expires_ms {
            return Err(AuthError::BadLink);
        }
        Ok(c.account)
    }

    /// Claims a custodial account with its keys (from the custodian): the person
    /// becomes its owner, with a password, recovery codes and a verification mail,
    /// exactly like a registered patient. The link is used up.
    pub async fn claim(
        &self,
        token: &str,
        keys: AccountKeys,
        name: &str,
        email: &str,
        password: &str,
    ) -> Result<Registered, AuthError> {
        let account = self.claim_account(token)?;
        if keys.account() != account || self.user(&account)?.is_some() {
            return Err(AuthError::BadLink);
        }
        if !valid_name(name) || !valid_email(email) {
            return Err(AuthError::Invalid("name or email address".into()));
        }
        secrets::check_password(password, &[name, email])?;
        let org = self
            .ledger
            .account(&account)
            .map_err(|e| AuthError::Internal(e.to_string()))?
            .and_then(|a| {
                a.roles
                    .iter()
                    .find(|m| m.role == Role::Patient)
                    .map(|m| m.org.clone())
            })
            .ok_or(AuthError::BadLink)?;
        let (keys, sealed) = self.seal_all(keys, password.to_owned()).await?;
        let codes = self
            .create_user(
                &keys,
                sealed,
                name,
                email,
                &org,
                Role::Patient,
                vec![Op::Delete(CLAIMS, token_hash(token).to_vec())],
            )
            .await?;
        tracing::info!(account = %account, "custodial account claimed");
        Ok(Registered {
            account,
            role: Role::Patient,
            org,
            recovery_codes: codes,
        })
    }

    /// Changes a signed-in person's password: the current one must open their keys
    /// (a wrong one counts towards the lockout, so a borrowed session cannot guess it),
    /// the keys are sealed under the new one, and every session and API token of the
    /// account ends, this one included.
    pub async fn change_password(
        &self,
        s: &Session,
        current: &str,
        new_password: &str,
    ) -> Result<(), AuthError> {
        self.attempt()?;
        let mut u = self.user(&s.account)?.ok_or(AuthError::NoSession)?;
        let profile = self.profile(&u)?;
        let email_key = self.key.email_token(&profile.email);
        self.not_locked(&email_key)?;
        let Some(keys) = self.open_keystore(&u.keystore, current).await? else {
            return Err(self.fail(&email_key, AuthError::BadCredentials)?);
        };
        secrets::check_password(new_password, &[&profile.name, &profile.email])?;
        if new_password == current {
            return Err(AuthError::WeakPassword(
                "choose a password different from the current one".into(),
            ));
        }
        let pw = new_password.to_owned();
        u.keystore = tokio::task::spawn_blocking(move || keys.seal(pw.as_bytes()))
            .await
            .map_err(|e| AuthError::Internal(e.to_string()))?
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        self.dir.write(vec![
            Op::Put(USERS, u.account.0.to_vec(), json(&u)),
            Op::Delete(LOCKOUTS, email_key.to_vec()),
        ])?;
        self.logout_all(&u.account)?;
        tracing::info!(account = %u.account, "password changed");
        Ok(())
    }

    /// Re-opens the keystore with a one-time recovery code and seals it under a new
    /// password: every record stays readable (the keys are the same keys).
    pub async fn recover(
        &self,
        email: &str,
        code: &str,
        new_password: &str,
    ) -> Result<(), AuthError> {
        self.attempt()?;
        let email_key = self.key.email_token(email);
        self.not_locked(&email_key)?;
        let user = self.user_by_email(email)?;
        if let Some(u) = &user {
            let profile = self.profile(u)?;
            secrets::check_password(new_password, &[&profile.name, &profile.email])?;
        } else {
            secrets::check_password(new_password, &[email])?;
        }
        // An unknown address costs what a known one with every code unused costs.
        let opened = match &user {
            Some(u) => self.open_with_recovery_code(u, code).await?,
            None => {
                for _ in 0..secrets::RECOVERY_CODE_COUNT {
                    self.open_keystore(&self.decoy, code).await?;
                }
                None
            }
        };
        let (Some(mut u), Some((i, keys))) = (user, opened) else {
            return Err(self.fail(&email_key, AuthError::BadRecoveryCode)?);
        };
        let pw = new_password.to_owned();
        let sealed = tokio::task::spawn_blocking(move || keys.seal(pw.as_bytes()))
            .await
            .map_err(|e| AuthError::Internal(e.to_string()))?
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        u.keystore = sealed;
        u.recovery[i].used = true;
        // A recovery code is also the way back in after losing the authenticator.
        u.totp = None;
        self.dir.write(vec![
            Op::Put(USERS, u.account.0.to_vec(), json(&u)),
            Op::Delete(LOCKOUTS, email_key.to_vec()),
        ])?;
        self.logout_all(&u.account)?;
        tracing::info!(account = %u.account, "password reset with a recovery code");
        Ok(())
    }

    /// The account's keystore, sealed under the current password, for self-custody.
    pub fn export_keystore(&self, s: &Session) -> Result<KeystoreFile, AuthError> {
        Ok(self.user(&s.account)?.ok_or(AuthError::NoSession)?.keystore)
    }

    /// A new API token for the session's account. The token also unlocks a copy of
    /// the account keys (sealed under a key derived from the token, which the node
    /// does not keep), so scripts and FHIR clients can write as the person.
    pub fn create_api_token(&self, s: &Session, ttl_ms: u64) -> Result<(String, u64), AuthError> {
        let ttl = ttl_ms.clamp(60_000, MAX_TOKEN_MS);
        let token = format!("mlt_{}", secrets::new_token()?);
        let expires_ms = now() + ttl;
        let sealed = token_key(&token).seal(&s.keys.secret_bytes(), &s.account.0)?;
        self.dir.write(vec![Op::Put(
            API_TOKENS,
            token_hash(&token).to_vec(),
            json(&Expiring {
                account: s.account,
                expires_ms,
                keys: Some(hex::encode(sealed)),
            }),
        )])?;
        Ok((token, expires_ms))
    }

    /// The stored entry of an unexpired API token.
    fn live_token(&self, token: &str) -> Result<Option<Expiring>, AuthError> {
        let e: Option<Expiring> = self.dir.get(API_TOKENS, &token_hash(token))?;
        Ok(e.filter(|e| now() < e.expires_ms))
    }

    pub fn api_token(&self, token: &str) -> Result<Option<AccountId>, AuthError> {
        Ok(self.live_token(token)?.map(|e| e.account))
    }

    /// Who presents this API token, with their keys, role and organisation; `None`
    /// if the token is unknown, expired, or its account left the directory.
    pub fn principal(&self, token: &str) -> Result<Option<Principal>, AuthError> {
        let hash = token_hash(token);
        let generation = self.dir.generation();
        if let Some((_, _, p)) = self
            .principals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&hash)
            .filter(|(g, expires_ms, _)| *g == generation && now() < *expires_ms)
        {
            return Ok(Some(p.clone()));
        }
        let Some(e) = self.live_token(token)? else {
            return Ok(None);
        };
        let expires_ms = e.expires_ms;
        let (Some(sealed), Some(u)) = (e.keys, self.user(&e.account)?) else {
            return Ok(None);
        };
        let sealed = hex::decode(sealed).map_err(|_| AuthError::Internal("token keys".into()))?;
        let plain = token_key(token).open(&sealed, &e.account.0)?;
        let keys = AccountKeys::from_secret_bytes(&plain)
            .ok_or_else(|| AuthError::Internal("token keys".into()))?;
        if keys.account() != e.account {
            return Err(AuthError::Internal("token keys".into()));
        }
        let p = Principal {
            account: e.account,
            org: u.org,
            role: u.role,
            keys: Arc::new(keys),
        };
        let mut cache = self.principals.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_CACHED_PRINCIPALS {
            cache.clear();
        }
        cache.insert(hash, (generation, expires_ms, p.clone()));
        Ok(Some(p))
    }

    /// What a person may see about their own account.
    pub fn me(&self, account: &AccountId) -> Result<Me, AuthError> {
        let u = self.user(account)?.ok_or(AuthError::NoSession)?;
        let p = self.profile(&u)?;
        Ok(Me {
            account: u.account,
            name: p.name,
            email: p.email,
            org: u.org.clone(),
            role: u.role,
            email_verified: u.email_verified,
            mfa: u.totp.as_ref().is_some_and(|t| t.confirmed),
            recovery_codes_left: u.recovery.iter().filter(|s| !s.used).count(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    /// Enrolls an existing keystore (e.g. the consortium admin's) for web sign-in,
    /// proving possession with its password.
    pub async fn enroll(
        &self,
        keystore: KeystoreFile,
        keystore_password: &str,
        name: &str,
        email: &str,
        password: &str,
        org: OrgId,
        role: Role,
    ) -> Result<Registered, AuthError> {
        if !valid_name(name) || !valid_email(email) {
            return Err(AuthError::Invalid("name or email address".into()));
        }
        secrets::check_password(password, &[name, email])?;
        let keys = self
            .open_keystore(&keystore, keystore_password)
            .await?
            .ok_or(AuthError::BadCredentials)?;
        let account = keys.account();
        let state = self
            .ledger
            .account(&account)
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        if !state.is_some_and(|a| a.has_role_in(&org, role)) {
            return Err(AuthError::Forbidden(format!(
                "the ledger does not give this account role {role} in {org}"
            )));
        }
        let (keys, sealed) = self.seal_all(keys, password.to_owned()).await?;
        let codes = self
            .create_user(&keys, sealed, name, email, &org, role, Vec::new())
            .await?;
        Ok(Registered {
            account,
            role,
            org,
            recovery_codes: codes,
        })
    }
}
