//! Erasure (GDPR art. 17) by crypto-shredding: a tombstone here, deletion of the
//! ciphertext and its key envelopes in the record store. A category under a legal
//! retention rule is held until its period ends, and the patient sees why.

use super::state::*;
use super::{Ctx, R, counter, ensure};
use crate::exec::{Overlay, StateRead};
use medledger_core::{Digest32, ErasureTarget, RecordId, RejectReason};

pub(super) fn request<S: StateRead>(
    st: &mut Overlay<'_, S>,
    cx: &Ctx<'_>,
    target: &ErasureTarget,
) -> R {
    match target {
        ErasureTarget::Record(id) => {
            let rec: RecordState = st
                .get_obj(&record_key(id))?
                .ok_or_else(|| RejectReason::not_found("record"))?;
            ensure(rec.patient == cx.signer, || {
                RejectReason::unauthorized("only the patient may ask to erase their records")
            })?;
            ensure(matches!(rec.erasure, ErasureStatus::None), || {
                RejectReason::conflict("erasure was already requested")
            })?;
            mark(st, cx, id, rec)?;
        }
        ErasureTarget::Everything => {
            let prefix = patient_record_prefix(&cx.signer);
            let mut any = false;
            for (k, _) in st.scan(&prefix)? {
                let Some(raw) = k.get(prefix.len()..prefix.len() + 32) else {
                    continue;
                };
                let id = RecordId(Digest32(raw.try_into().expect("32 bytes")));
                let rec: Option<RecordState> = st.get_obj(&record_key(&id))?;
                if let Some(rec) = rec.filter(|r| matches!(r.erasure, ErasureStatus::None)) {
                    mark(st, cx, &id, rec)?;
                    any = true;
                }
            }
            ensure(any, || RejectReason::not_found("records left to erase"))?;
        }
    }
    Ok(())
}

/// Queues the record's blobs for deletion on every node.
fn shred<S: StateRead>(st: &mut Overlay<'_, S>, id: &RecordId) -> R {
    let seq = counter(st, SHRED_SEQ_KEY)? + 1;
    st.put_obj(SHRED_SEQ_KEY.to_vec(), &seq);
    st.put_obj(shred_key(seq), id);
    Ok(())
}

fn mark<S: StateRead>(
    st: &mut Overlay<'_, S>,
    cx: &Ctx<'_>,
    id: &RecordId,
    mut rec: RecordState,
) -> R {
    let rule = cx
        .params
        .retention
        .iter()
        .find(|r| r.category == rec.category);
    rec.erasure = match rule {
        Some(r) if rec.created_ms.saturating_add(r.period_ms) > cx.now => {
            let until_ms = rec.created_ms.saturating_add(r.period_ms);
            st.put(erasure_due_key(until_ms, id), Vec::new());
            ErasureStatus::Retained {
                requested_ms: cx.now,
                until_ms,
                period_ms: r.period_ms,
            }
        }
        _ => {
            shred(st, id)?;
            ErasureStatus::Erased {
                requested_ms: cx.now,
                erased_ms: cx.now,
            }
        }
    };
    st.put_obj(record_key(id), &rec);
    Ok(())
}

pub(super) fn complete<S: StateRead>(st: &mut Overlay<'_, S>, cx: &Ctx<'_>, id: &RecordId) -> R {
    let mut rec: RecordState = st
        .get_obj(&record_key(id))?
        .ok_or_else(|| RejectReason::not_found("record"))?;
    let ErasureStatus::Retained {
        requested_ms,
        until_ms,
        ..
    } = rec.erasure
    else {
        return Err(RejectReason::conflict("no erasure is being held for this record").into());
    };
    ensure(cx.now >= until_ms, || {
        RejectReason::conflict("the retention period has not ended")
    })?;
    rec.erasure = ErasureStatus::Erased {
        requested_ms,
        erased_ms: cx.now,
    };
    st.put_obj(record_key(id), &rec);
    st.delete(erasure_due_key(until_ms, id));
    shred(st, id)
}
