//! Transactions: the body an account signs, the payload kinds, and the stateless half
//! of validation (encoding, size, version, chain id, signature). The stateful half
//! (known signer, nonce, permissions) belongs to the state machine in `medledger-ledger`.

use crate::error::{CoreError, RejectReason};
use crate::hash::{Digest32, TAG_TX, tagged};
use crate::ids::{AccountId, ChainId, TxHash};
use crate::model::{
    AccessReport, AgreementId, Category, Cid, EmergencyReason, ErasureTarget, GrantId, Grantee,
    MessageId, OrgId, Purpose, RecordId, RecordWrite, Role, Scope,
};
use borsh::{BorshDeserialize, BorshSerialize};
use ed25519_dalek::{Signature, Signer, SigningKey};
use serde::{Deserialize, Serialize};

/// Upper bound on one encoded signed transaction. Record contents never go on the
/// ledger (only ids, CIDs and hashes), so real transactions are a few hundred bytes.
pub const MAX_TX_BYTES: usize = 256 * 1024;

/// The transaction format this node writes and accepts.
pub const TX_VERSION: u8 = 1;

/// What the signer asks the ledger to do. New kinds are appended at the end so that
/// existing encodings keep their meaning (borsh encodes the variant index).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Payload {
    /// Create an account with its X25519 key for receiving wrapped record keys.
    /// Only the consortium admin may do this (organisations and roles come later).
    RegisterAccount {
        account: AccountId,
        encryption_key: Digest32,
    },
    /// Anchor a 32-byte digest (e.g. of an external document) on the ledger, giving
    /// it a timestamp and an inclusion proof. Only a hash: never content.
    Anchor {
        digest: Digest32,
    },
    /// Consortium admin: create an organisation whose first admin is an existing account.
    AddOrg {
        org: OrgId,
        admin: AccountId,
    },
    /// Org admin (or consortium admin): give an account a role in the organisation.
    AssignRole {
        org: OrgId,
        account: AccountId,
        role: Role,
    },
    /// Org admin (or consortium admin): take a role away.
    RevokeRole {
        org: OrgId,
        account: AccountId,
        role: Role,
    },
    /// Any key, known or new: ask to join `org` with `role`; pending until an org admin
    /// decides. A new key becomes an account holding `encryption_key`.
    Register {
        org: OrgId,
        role: Role,
        encryption_key: Digest32,
    },
    /// Org admin: approve a pending registration (charges the registration fee).
    ApproveRegistration {
        account: AccountId,
    },
    /// Org admin: reject a pending registration.
    RejectRegistration {
        account: AccountId,
    },
    /// The patient, or a clinician allowed to treat them: register an encrypted record
    /// version. The record id is the hash of this transaction.
    AddRecord {
        patient: AccountId,
        category: Category,
        cid: Cid,
        content_hash: Digest32,
        size: u64,
    },
    /// A new version of a record; earlier versions stay in its history.
    AmendRecord {
        record: RecordId,
        cid: Cid,
        content_hash: Digest32,
        size: u64,
    },
    /// The patient: let `grantee` use records in `scope` for `purpose` from `start_ms`
    /// until `expiry_ms` (exclusive). The grant id is the hash of this transaction.
    GrantConsent {
        grantee: Grantee,
        scope: Scope,
        purpose: Purpose,
        start_ms: u64,
        expiry_ms: u64,
    },
    /// The patient: end a grant now.
    RevokeConsent {
        grant: GrantId,
    },
    /// A doctor: open a patient's records for emergency care without a grant.
    BreakGlass {
        patient: AccountId,
        reason: EmergencyReason,
    },
    /// A node: record reads (and refused reads) it served.
    ReportAccess {
        reports: Vec<AccessReport>,
    },
    /// Send a message whose content is an encrypted blob in the record store.
    SendMessage {
        to: AccountId,
        content: Cid,
    },
    /// The recipient: approve or deny a message, once.
    RespondMessage {
        message: MessageId,
        approve: bool,
    },
    /// Consortium admin: create units in an account.
    Mint {
        to: AccountId,
        amount: u64,
    },
    Transfer {
        to: AccountId,
        amount: u64,
    },
    /// The fee account's owner: move collected fees to their own balance.
    WithdrawFees {
        amount: u64,
    },
    /// An insurer or researcher: offer to pay for access; the price is held in escrow
    /// until the patient answers or `respond_by_ms` passes.
    ProposeAgreement {
        patient: AccountId,
        scope: Scope,
        purpose: Purpose,
        duration_ms: u64,
        price: u64,
        terms: Cid,
        respond_by_ms: u64,
    },
    /// The patient: accept (grant created, escrow paid to the patient) or reject (refund).
    RespondAgreement {
        agreement: AgreementId,
        accept: bool,
    },
    /// Anyone, after the deadline: refund an unanswered proposal.
    ExpireAgreement {
        agreement: AgreementId,
    },
    /// The patient: erase a record, or all of their records.
    RequestErasure {
        target: ErasureTarget,
    },
    /// Anyone, once a retention period has ended: carry out a held erasure.
    CompleteErasure {
        record: RecordId,
    },
    /// A clinician or org admin: invite a patient to `org`. `commitment` is
    /// SHA-256("medledger/invite/v1\0" ‖ secret) of the single-use secret sent to the
    /// patient; the secret itself stays off the ledger until it is used.
    InvitePatient {
        org: OrgId,
        commitment: Digest32,
        expires_ms: u64,
    },
    /// A key (new or known): join as a patient through an unexpired, unused invite,
    /// proving it with the invite's secret. No approval step: the invite was it.
    RegisterInvited {
        secret: Digest32,
        encryption_key: Digest32,
    },
    /// An org admin: ask to restore a member's access through the organisation's
    /// recovery escrow. Takes effect only when a second admin approves.
    RequestRecovery {
        account: AccountId,
    },
    /// A second, different admin of the same org: approve a recovery request.
    ApproveRecovery {
        request: GrantId,
    },
    /// Several record additions and amendments that succeed or fail together (a FHIR
    /// transaction Bundle). Each item obeys the rules of `AddRecord`/`AmendRecord`;
    /// the record added by item `i` has id `RecordId::in_batch(signer, nonce, i)`.
    WriteRecords {
        items: Vec<RecordWrite>,
    },
}

/// Domain tag of invite commitments.
pub const TAG_INVITE: &[u8] = b"medledger/invite/v1\0";

/// The on-ledger commitment to an invite secret.
pub fn invite_commitment(secret: &Digest32) -> Digest32 {
    crate::hash::tagged(TAG_INVITE, &[&secret.0])
}

impl Payload {
    /// The stable name of this kind (the serde tag).
    pub fn kind(&self) -> &'static str {
        match self {
            Payload::RegisterAccount { .. } => "register_account",
            Payload::Anchor { .. } => "anchor",
            Payload::AddOrg { .. } => "add_org",
            Payload::AssignRole { .. } => "assign_role",
            Payload::RevokeRole { .. } => "revoke_role",
            Payload::Register { .. } => "register",
            Payload::ApproveRegistration { .. } => "approve_registration",
            Payload::RejectRegistration { .. } => "reject_registration",
            Payload::AddRecord { .. } => "add_record",
            Payload::AmendRecord { .. } => "amend_record",
            Payload::GrantConsent { .. } => "grant_consent",
            Payload::RevokeConsent { .. } => "revoke_consent",
            Payload::BreakGlass { .. } => "break_glass",
            Payload::ReportAccess { .. } => "report_access",
            Payload::SendMessage { .. } => "send_message",
            Payload::RespondMessage { .. } => "respond_message",
            Payload::Mint { .. } => "mint",
            Payload::Transfer { .. } => "transfer",
            Payload::WithdrawFees { .. } => "withdraw_fees",
            Payload::ProposeAgreement { .. } => "propose_agreement",
            Payload::RespondAgreement { .. } => "respond_agreement",
            Payload::ExpireAgreement { .. } => "expire_agreement",
            Payload::RequestErasure { .. } => "request_erasure",
            Payload::CompleteErasure { .. } => "complete_erasure",
            Payload::InvitePatient { .. } => "invite_patient",
            Payload::RegisterInvited { .. } => "register_invited",
            Payload::RequestRecovery { .. } => "request_recovery",
            Payload::ApproveRecovery { .. } => "approve_recovery",
            Payload::WriteRecords { .. } => "write_records",
        }
    }
}

/// The signed part of a transaction.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct TxBody {
    pub version: u8,
    pub chain_id: ChainId,
    pub signer: AccountId,
    /// Per-account counter, starting at 1; each account's transactions apply in
    /// nonce order, once.
    pub nonce: u64,
    pub payload: Payload,
}

impl TxBody {
    pub fn hash(&self) -> TxHash {
        let bytes = borsh::to_vec(self).expect("borsh encoding into a Vec cannot fail");
        TxHash(tagged(TAG_TX, &[&bytes]))
    }

    /// Signs with `key`, which must belong to `self.signer` for the tx to be accepted.
    pub fn sign(self, key: &SigningKey) -> SignedTx {
        let hash = self.hash();
        let signature = key.sign(&hash.0.0).to_bytes();
        SignedTx {
            body: self,
            signature: SignatureBytes(signature),
        }
    }
}

/// A 64-byte Ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct SignatureBytes(pub [u8; 64]);

impl std::fmt::Debug for SignatureBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", hex::encode(self.0))
    }
}

impl Serialize for SignatureBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for SignatureBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <String as Deserialize>::deserialize(d)?;
        let mut out = [0u8; 64];
        hex::decode_to_slice(&s, &mut out).map_err(serde::de::Error::custom)?;
        Ok(SignatureBytes(out))
    }
}

/// A transaction as submitted and as stored in blocks.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct SignedTx {
    pub body: TxBody,
    pub signature: SignatureBytes,
}

/// A transaction that passed the stateless checks, with its hash computed once.
#[derive(Debug, Clone)]
pub struct CheckedTx {
    pub tx: SignedTx,
    pub hash: TxHash,
}

impl SignedTx {
    pub fn to_bytes(&self) -> Vec<u8> {
        borsh::to_vec(self).expect("borsh encoding into a Vec cannot fail")
    }

    /// Decodes the canonical encoding; trailing bytes are an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, CoreError> {
        borsh::from_slice(bytes).map_err(|e| CoreError::Decode(e.to_string()))
    }

    /// Decodes and runs every check that needs no ledger state.
    pub fn check_bytes(bytes: &[u8], chain: &ChainId) -> Result<CheckedTx, RejectReason> {
        if bytes.len() > MAX_TX_BYTES {
            return Err(RejectReason::Oversized {
                size: bytes.len(),
                max: MAX_TX_BYTES,
            });
        }
        let tx = SignedTx::decode(bytes).map_err(|e| RejectReason::Malformed {
            detail: e.to_string(),
        })?;
        tx.check(chain)
    }

    /// The stateless checks on an already decoded transaction.
    pub fn check(self, chain: &ChainId) -> Result<CheckedTx, RejectReason> {
        let hash = self.check_without_signature(chain)?;
        self.verify_signature(&hash)?;
        Ok(CheckedTx { tx: self, hash })
    }

    /// Version and chain checks; returns the hash the signature must cover.
    pub fn check_without_signature(&self, chain: &ChainId) -> Result<TxHash, RejectReason> {
        if self.body.version != TX_VERSION {
            return Err(RejectReason::UnsupportedVersion {
                version: self.body.version,
            });
        }
        if &self.body.chain_id != chain {
            return Err(RejectReason::WrongChainId {
                expected: chain.to_string(),
                got: self.body.chain_id.to_string(),
            });
        }
        Ok(self.body.hash())
    }

    pub fn verify_signature(&self, hash: &TxHash) -> Result<(), RejectReason> {
        let key = self
            .body
            .signer
            .verifying_key()
            .map_err(|_| RejectReason::BadSignature)?;
        let sig = Signature::from_bytes(&self.signature.0);
        // Strict verification rejects malleable and small-order encodings, so a
        // signature has exactly one valid form and tx bytes cannot be re-signed in place.
        key.verify_strict(&hash.0.0, &sig)
            .map_err(|_| RejectReason::BadSignature)
    }
}

/// Verifies many signatures, each with strict verification (`verify_strict`), spread
/// over the cores. Every node, admission and `verify` use this function, so they agree
/// on which signatures are valid.
///
/// Why not batch verification: a batch checks the cofactored equation, which accepts
/// signatures strict verification refuses (a small-order signer key, for which anyone
/// can forge, or an R with a torsion component, which the key's owner can make). A
/// verdict that depended on which other transactions shared the batch (batch when all
/// pass, strict when one fails) let a crafted transaction be valid on one node and
/// invalid on another, or in `verify`. Found by the `tx_decode` fuzz target; the
/// regression test is `batch_and_strict_agree_on_a_small_order_key_forgery`.
/// Returns one verdict per input (false also for undecodable keys).
pub fn verify_signatures(txs: &[(&SignedTx, TxHash)]) -> Vec<bool> {
    use rayon::prelude::*;
    // Small inputs are not worth a hand-off to the pool.
    if txs.len() < 16 {
        return txs
            .iter()
            .map(|(tx, h)| tx.verify_signature(h).is_ok())
            .collect();
    }
    txs.par_iter()
        .with_min_len(8)
        .map(|(tx, h)| tx.verify_signature(h).is_ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (fuzz target `tx_decode`): a transaction from the identity-point key
    /// (small order) with R = identity and s = 0 verifies under the cofactored batch
    /// equation for any message, so batch verification accepted it while strict
    /// verification refused it. Every verdict is now strict.
    #[test]
    fn batch_and_strict_agree_on_a_small_order_key_forgery() {
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut sig = [0u8; 64];
        sig[0] = 1;
        let forged = SignedTx {
            body: TxBody {
                version: TX_VERSION,
                chain_id: ChainId::new("medledger-fuzz").unwrap(),
                signer: AccountId(identity),
                nonce: 1,
                payload: Payload::Anchor {
                    digest: crate::Digest32([9; 32]),
                },
            },
            signature: SignatureBytes(sig),
        };
        let h = forged.body.hash();
        assert!(forged.verify_signature(&h).is_err());
        // Alone, and in a batch large enough to take the parallel path.
        assert_eq!(verify_signatures(&[(&forged, h)]), vec![false]);
        let many: Vec<(&SignedTx, TxHash)> = (0..40).map(|_| (&forged, h)).collect();
        assert!(verify_signatures(&many).iter().all(|ok| !ok));
    }
    use crate::keys::generate_signing_key;

    fn chain() -> ChainId {
        ChainId::new("test-chain").unwrap()
    }

    fn sample(key: &SigningKey, nonce: u64) -> SignedTx {
        TxBody {
            version: TX_VERSION,
            chain_id: chain(),
            signer: AccountId(key.verifying_key().to_bytes()),
            nonce,
            payload: Payload::Anchor {
                digest: Digest32([9; 32]),
            },
        }
        .sign(key)
    }

    #[test]
    fn round_trip_and_check() {
        let key = generate_signing_key().unwrap();
        let tx = sample(&key, 1);
        let checked = SignedTx::check_bytes(&tx.to_bytes(), &chain()).unwrap();
        assert_eq!(checked.tx, tx);
        assert_eq!(checked.hash, tx.body.hash());
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let key = generate_signing_key().unwrap();
        let mut bytes = sample(&key, 1).to_bytes();
        bytes.push(0);
        let err = SignedTx::check_bytes(&bytes, &chain()).unwrap_err();
        assert_eq!(err.code(), "malformed");
    }

    #[test]
    fn hash_depends_on_every_field() {
        let key = generate_signing_key().unwrap();
        let a = sample(&key, 1).body;
        let mut b = a.clone();
        b.nonce = 2;
        assert_ne!(a.hash(), b.hash());
    }

    proptest::proptest! {
        #[test]
        fn any_flipped_byte_is_rejected(idx in 0usize..200, bit in 0u8..8) {
            let key = generate_signing_key().unwrap();
            let tx = sample(&key, 1);
            let mut bytes = tx.to_bytes();
            let i = idx % bytes.len();
            bytes[i] ^= 1 << bit;
            // Either it no longer decodes, or it decodes to something whose check fails.
            proptest::prop_assert!(SignedTx::check_bytes(&bytes, &chain()).is_err());
        }
    }
}
