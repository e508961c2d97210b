//! The record registry: which encrypted blob (CID and content hash) is which version
//! of which patient's record, and who wrote it. Contents never come here.

use super::decision::may_write;
use super::state::*;
use super::{Ctx, R, ensure, patient_account};
use crate::exec::{Overlay, StateRead};
use medledger_core::model::MAX_RECORD_WRITES;
use medledger_core::{AccountId, Category, Cid, Digest32, RecordId, RecordWrite, RejectReason};

fn writer_denied() -> RejectReason {
    RejectReason::unauthorized(
        "only the patient, or a clinician with a live treatment grant or break-glass, may write this record",
    )
}

#[allow(clippy::too_many_arguments)]
pub(super) fn add<S: StateRead>(
    st: &mut Overlay<'_, S>,
    cx: &Ctx<'_>,
    id: RecordId,
    patient: &AccountId,
    category: &Category,
    cid: &Cid,
    content_hash: &Digest32,
    size: u64,
) -> R {
    ensure(category.is_valid(), || RejectReason::invalid("category"))?;
    patient_account(st, patient)?;
    ensure(
        may_write(st, &cx.signer, patient, category, None, cx.now)?.is_some(),
        writer_denied,
    )?;
    claim_cid(st, cid, &id, 1)?;
    st.put_obj(
        record_key(&id),
        &RecordState {
            patient: *patient,
            category: category.clone(),
            created_by: cx.signer,
            created_ms: cx.now,
            versions: 1,
            erasure: ErasureStatus::None,
        },
    );
    put_version(st, cx, &id, 1, cid, content_hash, size);
    st.put(patient_record_key(patient, &id), Vec::new());
    Ok(())
}

pub(super) fn amend<S: StateRead>(
    st: &mut Overlay<'_, S>,
    cx: &Ctx<'_>,
    record: &RecordId,
    cid: &Cid,
    content_hash: &Digest32,
    size: u64,
) -> R {
    let mut rec: RecordState = st
        .get_obj(&record_key(record))?
        .ok_or_else(|| RejectReason::not_found("record"))?;
    ensure(!rec.is_erased(), || RejectReason::Erased)?;
    ensure(
        may_write(
            st,
            &cx.signer,
            &rec.patient,
            &rec.category,
            Some(record),
            cx.now,
        )?
        .is_some(),
        writer_denied,
    )?;
    rec.versions += 1;
    claim_cid(st, cid, record, rec.versions)?;
    put_version(st, cx, record, rec.versions, cid, content_hash, size);
    st.put_obj(record_key(record), &rec);
    Ok(())
}

/// Binds `cid` to one record version, or refuses a CID that is already bound. Without
/// this a caller could register another patient's blob under a record of their own
/// (and read it through the node's custodian envelope, or shred it by erasing theirs).
/// Within a transaction the overlay sees earlier items, so one batch cannot bind a
/// CID twice either.
fn claim_cid<S: StateRead>(
    st: &mut Overlay<'_, S>,
    cid: &Cid,
    record: &RecordId,
    version: u32,
) -> R {
    let key = cid_key(cid);
    ensure(st.get(&key)?.is_none(), || RejectReason::CidTaken)?;
    st.put_obj(
        key,
        &CidOwner {
            record: *record,
            version,
        },
    );
    Ok(())
}

fn put_version<S: StateRead>(
    st: &mut Overlay<'_, S>,
    cx: &Ctx<'_>,
    id: &RecordId,
    version: u32,
    cid: &Cid,
    content_hash: &Digest32,
    size: u64,
) {
    st.put_obj(
        version_key(id, version),
        &VersionState {
            version,
            cid: *cid,
            content_hash: *content_hash,
            size,
            author: cx.signer,
            time_ms: cx.now,
            tx: cx.hash,
        },
    );
}

/// All items or none: they run in the transaction's overlay, which is dropped on the
/// first rejection.
pub(super) fn write_many<S: StateRead>(
    st: &mut Overlay<'_, S>,
    cx: &Ctx<'_>,
    items: &[RecordWrite],
) -> R {
    ensure(
        !items.is_empty() && items.len() <= MAX_RECORD_WRITES,
        || {
            RejectReason::invalid(format!(
                "1 to {MAX_RECORD_WRITES} record writes per transaction"
            ))
        },
    )?;
    for (i, item) in items.iter().enumerate() {
        match item {
            RecordWrite::Add {
                patient,
                category,
                cid,
                content_hash,
                size,
            } => {
                let id = RecordId::in_batch(&cx.signer, cx.nonce, i as u32);
                add(st, cx, id, patient, category, cid, content_hash, *size)?
            }
            RecordWrite::Amend {
                record,
                cid,
                content_hash,
                size,
            } => amend(st, cx, record, cid, content_hash, *size)?,
        }
    }
    Ok(())
}
