//! Sealed notes: the bodies of messages (notes and access requests) and the terms of
//! paid agreements. The ledger keeps only their CIDs; the bytes live in the record
//! store, sealed for exactly two readers, the sender and the recipient, and are opened
//! with the reader's own key.
//!
//! Notes are never opened with the node's custodian key. A message names any CID its
//! sender likes; opening it with a key that can open every record would let a sender
//! point a message at someone else's record and have the node decrypt it for the
//! recipient. With the reader's own key, a note shows only what was sealed for them.

use crate::auth::Principal;
use medledger_core::{AccountId, Cid, Purpose};
use medledger_ledger::Ledger;
use medledger_store::{BlobStore, Reader, ReaderSecret, StoreError};
use serde::{Deserialize, Serialize};

/// Longest text of a note, in bytes.
pub const MAX_NOTE_TEXT: usize = 4_000;

/// What a note says. Stored as JSON; `kind` tells a plain note from an access request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Note {
    /// Free text.
    Text { text: String },
    /// A clinician asks a patient for access. Approving it grants exactly this.
    AccessRequest {
        text: String,
        purpose: Purpose,
        /// Record kinds asked for; empty for all.
        categories: Vec<String>,
        days: u64,
    },
    /// The terms of a paid agreement, as its proposer wrote them.
    Terms { text: String },
}

/// What is sealed: the note with the two parties it is between, so that a note can be
/// shown only under the message (or agreement) it was written for. A message names a
/// CID its sender chooses; without this, a sender could point their message at
/// someone else's note to the same recipient and have it shown as theirs.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sealed {
    from: AccountId,
    to: AccountId,
    note: Note,
}

#[derive(Debug, thiserror::Error)]
pub enum NoteError {
    /// Not sealed for this reader, missing, or not a note: the same answer for all.
    #[error("no such note")]
    NotFound,
    #[error("the recipient has no account")]
    NoRecipient,
    #[error("record store: {0}")]
    Unavailable(String),
    #[error("ledger: {0}")]
    Ledger(String),
}

#[derive(Clone)]
pub struct Notes {
    store: BlobStore,
    ledger: Ledger,
}

impl Notes {
    pub fn new(store: BlobStore, ledger: Ledger) -> Self {
        Notes { store, ledger }
    }

    /// Seals `note` for its author and `to` (whose key the ledger holds).
    pub async fn seal(
        &self,
        from: &Principal,
        to: &AccountId,
        note: &Note,
    ) -> Result<Cid, NoteError> {
        let key = self
            .ledger
            .account(to)
            .map_err(|e| NoteError::Ledger(e.to_string()))?
            .ok_or(NoteError::NoRecipient)?
            .encryption_key;
        let readers = [
            Reader {
                account: from.account,
                public: from.keys.encryption_public().0,
            },
            Reader {
                account: *to,
                public: key.0,
            },
        ];
        let sealed = Sealed {
            from: from.account,
            to: *to,
            note: note.clone(),
        };
        let bytes = serde_json::to_vec(&sealed).expect("a note serializes");
        let receipt = self
            .store
            .put(&bytes[..], &readers)
            .await
            .map_err(|e| NoteError::Unavailable(e.to_string()))?;
        Ok(receipt.cid)
    }

    /// Opens `cid` with the reader's own key, as a note from `from` to `to`: a note
    /// sealed between other parties is not found.
    pub async fn open(
        &self,
        reader: &Principal,
        cid: &Cid,
        from: &AccountId,
        to: &AccountId,
    ) -> Result<Note, NoteError> {
        let me = ReaderSecret {
            account: reader.account,
            secret: reader.keys.encryption_secret,
        };
        let mut out = Vec::new();
        match self.store.get(cid, &me, &mut out).await {
            Ok(_) => {}
            Err(
                StoreError::NotFound(_)
                | StoreError::Erased(_)
                | StoreError::NoAccess(_)
                | StoreError::EnvelopeOpen(_),
            ) => return Err(NoteError::NotFound),
            Err(e) => return Err(NoteError::Unavailable(e.to_string())),
        }
        match serde_json::from_slice::<Sealed>(&out) {
            Ok(s) if &s.from == from && &s.to == to => Ok(s.note),
            _ => Err(NoteError::NotFound),
        }
    }
}
