//! The audit trail (node-signed access reports and contract-written facts) and
//! messages with a one-time approve/deny by their recipient.

use super::consent::AuditFact;
use super::state::*;
use super::{Ctx, R, counter, ensure, existing_account, signer_state};
use crate::exec::{Overlay, StateRead};
use medledger_core::model::MAX_ACCESS_REPORTS;
use medledger_core::{AccessReport, AccountId, BreakGlassId, Cid, MessageId, RejectReason};

pub(crate) fn append_audit<S: StateRead>(
    st: &mut Overlay<'_, S>,
    cx: &Ctx<'_>,
    fact: AuditFact,
) -> R {
    let seq = counter(st, AUDIT_SEQ_KEY)? + 1;
    st.put_obj(AUDIT_SEQ_KEY.to_vec(), &seq);
    if let Some(p) = &fact.patient {
        st.put(audit_index_key(AuditIndex::Patient, &p.0, seq), Vec::new());
    }
    if let Some(r) = &fact.record {
        st.put(audit_index_key(AuditIndex::Record, &r.0.0, seq), Vec::new());
    }
    st.put(
        audit_index_key(AuditIndex::Accessor, &fact.accessor.0, seq),
        Vec::new(),
    );
    st.put(
        audit_index_key(AuditIndex::Time, &fact.time_ms.to_be_bytes(), seq),
        Vec::new(),
    );
    st.put_obj(
        audit_key(seq),
        &AuditEntry {
            seq,
            reporter: cx.signer,
            accessor: fact.accessor,
            record: fact.record,
            patient: fact.patient,
            purpose: fact.purpose,
            time_ms: fact.time_ms,
            allowed: fact.allowed,
            reason: fact.reason,
            break_glass: fact.break_glass,
            tx: cx.hash,
        },
    );
    Ok(())
}

fn valid_reason_code(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

pub(super) fn report_access<S: StateRead>(
    st: &mut Overlay<'_, S>,
    cx: &Ctx<'_>,
    reports: &[AccessReport],
) -> R {
    ensure(signer_state(st, cx)?.node, || {
        RejectReason::unauthorized("only a consortium node reports accesses")
    })?;
    ensure(
        !reports.is_empty() && reports.len() <= MAX_ACCESS_REPORTS,
        || RejectReason::invalid(format!("1 to {MAX_ACCESS_REPORTS} reports per transaction")),
    )?;
    for r in reports {
        ensure(r.time_ms <= cx.now, || {
            RejectReason::invalid("an access report is dated after its block")
        })?;
        ensure(valid_reason_code(&r.reason), || {
            RejectReason::invalid("reason must be a code of a-z and '_'")
        })?;
        let rec: Option<RecordState> = st.get_obj(&record_key(&r.record))?;
        ensure(rec.is_some() || !r.allowed, || {
            RejectReason::not_found("record")
        })?;
        append_audit(
            st,
            cx,
            AuditFact {
                accessor: r.accessor,
                record: Some(r.record),
                patient: rec.map(|r| r.patient),
                purpose: r.purpose,
                time_ms: r.time_ms,
                allowed: r.allowed,
                break_glass: r.reason == "break_glass",
                reason: r.reason.clone(),
            },
        )?;
    }
    Ok(())
}

fn put_message<S: StateRead>(st: &mut Overlay<'_, S>, cx: &Ctx<'_>, m: MessageState) {
    let id = MessageId::from_tx(&cx.hash);
    st.put(inbox_key(&m.to, &id), Vec::new());
    st.put(outbox_key(&m.from, &id), Vec::new());
    st.put_obj(message_key(&id), &m);
}

/// Tells a patient that a doctor opened their records by break-glass.
pub(super) fn notify<S: StateRead>(
    st: &mut Overlay<'_, S>,
    cx: &Ctx<'_>,
    to: &AccountId,
    break_glass: Option<BreakGlassId>,
) -> R {
    put_message(
        st,
        cx,
        MessageState {
            from: cx.signer,
            to: *to,
            content: None,
            break_glass,
            sent_ms: cx.now,
            status: MessageStatus::Pending,
        },
    );
    Ok(())
}

pub(super) fn send<S: StateRead>(
    st: &mut Overlay<'_, S>,
    cx: &Ctx<'_>,
    to: &AccountId,
    content: &Cid,
) -> R {
    ensure(to != &cx.signer, || {
        RejectReason::invalid("a message to oneself")
    })?;
    let recipient = existing_account(st, to)?;
    ensure(!recipient.node, || {
        RejectReason::invalid("nodes take no messages")
    })?;
    put_message(
        st,
        cx,
        MessageState {
            from: cx.signer,
            to: *to,
            content: Some(*content),
            break_glass: None,
            sent_ms: cx.now,
            status: MessageStatus::Pending,
        },
    );
    Ok(())
}

pub(super) fn respond<S: StateRead>(
    st: &mut Overlay<'_, S>,
    cx: &Ctx<'_>,
    id: &MessageId,
    approve: bool,
) -> R {
    let mut m: MessageState = st
        .get_obj(&message_key(id))?
        .ok_or_else(|| RejectReason::not_found("message"))?;
    ensure(m.to == cx.signer, || {
        RejectReason::unauthorized("only the recipient may approve or deny a message")
    })?;
    match m.status {
        MessageStatus::Pending => {}
        MessageStatus::Approved { .. } => {
            return Err(RejectReason::conflict("message was already approved").into());
        }
        MessageStatus::Denied { .. } => {
            return Err(RejectReason::conflict("message was already denied").into());
        }
    }
    m.status = if approve {
        MessageStatus::Approved { at_ms: cx.now }
    } else {
        MessageStatus::Denied { at_ms: cx.now }
    };
    st.put_obj(message_key(id), &m);
    Ok(())
}
