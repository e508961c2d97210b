//! Transaction admission: the checks a node runs before a transaction may enter the
//! Raft log. Stateless checks (size, encoding, version, chain id, signature) and a
//! cheap look at committed state (known signer, nonce not replayed), so obviously
//! invalid transactions cost no consensus round. The state machine checks everything
//! again when it applies them; this is only the gate, and the one place that keeps it.

use crate::store::{Ledger, TxOutcome};
use medledger_core::tx::verify_signatures;
use medledger_core::{MAX_TX_BYTES, RejectReason, SignedTx, TxHash};

/// A decoded tx (bytes, parsed form, hash), or its rejection.
type Decoded = std::result::Result<(Vec<u8>, SignedTx, TxHash), TxOutcome>;

fn reject(hash: Option<TxHash>, reason: RejectReason) -> TxOutcome {
    TxOutcome {
        hash,
        result: Err(reason),
    }
}

/// Admits each raw transaction (or gives its rejection), in order. At most
/// `new_signers` self-registrations by keys the ledger does not know are admitted;
/// the rest are refused as `overloaded` (retry later), changing nothing.
pub fn admit(
    ledger: &Ledger,
    raw: Vec<std::result::Result<Vec<u8>, String>>,
    mut new_signers: usize,
) -> Vec<std::result::Result<Vec<u8>, TxOutcome>> {
    let chain = &ledger.genesis().chain_id;
    let mut decoded: Vec<Decoded> = raw
        .into_iter()
        .map(|r| {
            let bytes = r.map_err(|detail| reject(None, RejectReason::Malformed { detail }))?;
            if bytes.len() > MAX_TX_BYTES {
                return Err(reject(
                    None,
                    RejectReason::Oversized {
                        size: bytes.len(),
                        max: MAX_TX_BYTES,
                    },
                ));
            }
            let tx = SignedTx::decode(&bytes).map_err(|e| {
                reject(
                    None,
                    RejectReason::Malformed {
                        detail: e.to_string(),
                    },
                )
            })?;
            let hash = tx
                .check_without_signature(chain)
                .map_err(|r| reject(Some(tx.body.hash()), r))?;
            Ok((bytes, tx, hash))
        })
        .collect();
    let pairs: Vec<(&SignedTx, TxHash)> = decoded
        .iter()
        .filter_map(|d| d.as_ref().ok().map(|(_, t, h)| (t, *h)))
        .collect();
    let verdicts = verify_signatures(&pairs);
    // Apply on this node may then skip re-verifying exactly these (hash, signature) pairs.
    ledger.remember_verified(
        pairs
            .iter()
            .zip(&verdicts)
            .filter(|(_, ok)| **ok)
            .map(|((t, h), _)| (*h, t.signature.0)),
    );
    let mut v = verdicts.into_iter();
    for d in decoded.iter_mut() {
        if let Ok((_, _, h)) = d
            && !v.next().unwrap_or(false)
        {
            *d = Err(reject(Some(*h), RejectReason::BadSignature));
        }
    }
    decoded
        .into_iter()
        .map(|d| {
            let (bytes, tx, hash) = d?;
            match ledger.account(&tx.body.signer) {
                // A new key may introduce itself (the contracts check the rest),
                // within the caller's budget.
                Ok(None)
                    if matches!(
                        tx.body.payload,
                        medledger_core::Payload::Register { .. }
                            | medledger_core::Payload::RegisterInvited { .. }
                    ) =>
                {
                    if new_signers == 0 {
                        return Err(reject(Some(hash), RejectReason::Overloaded));
                    }
                    new_signers -= 1;
                    Ok(bytes)
                }
                Ok(None) => Err(reject(Some(hash), RejectReason::UnknownSigner)),
                Ok(Some(a)) if tx.body.nonce <= a.nonce => Err(reject(
                    Some(hash),
                    RejectReason::ReplayedNonce {
                        expected: a.nonce + 1,
                        got: tx.body.nonce,
                    },
                )),
                _ => Ok(bytes),
            }
        })
        .collect()
}
