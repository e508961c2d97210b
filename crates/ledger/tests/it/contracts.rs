//! The contracts through the ledger's public API: the role × transaction-kind
//! authorization matrix, the named misuse cases (each rejected with its reason and no
//! state change), consent timing at exact blocks, break-glass, agreements, erasure
//! with retention, and the audit queries.

use crate::world::*;
use medledger_core::*;
use medledger_ledger::contracts::state::{AgreementStatus, ErasureStatus, MessageStatus};
use medledger_ledger::contracts::{self, BlockCtx, query};
use medledger_ledger::{Decision, Overlay, StateRead};
use std::collections::BTreeMap;

const ACTORS: [&str; 12] = [
    "admin",
    "orgadmin",
    "patient",
    "doctor",
    "nurse",
    "researcher",
    "insurer",
    "auditor",
    "pending",
    "outsider",
    "node",
    "stranger",
];

const INVITE_SECRET: Digest32 = Digest32([0x1e; 32]);

struct Fixtures {
    recovery: GrantId,
    r1: RecordId,
    r2: RecordId,
    g_doc: GrantId,
    m1: MessageId,
    a1: AgreementId,
    a2: AgreementId,
}

fn matrix_world() -> (World, Fixtures) {
    let retention = vec![RetentionRule {
        category: Category::new("Condition").unwrap(),
        period_ms: HOUR,
    }];
    let mut w = standard(1, retention);
    let patient = w.id("patient");
    let doctor = w.id("doctor");
    let r1 = RecordId::from_tx(&w.ok("patient", add_record(patient, "Observation", 1)));
    let g_doc = GrantId::from_tx(&w.ok(
        "patient",
        Payload::GrantConsent {
            grantee: Grantee::Account(doctor),
            scope: Scope::All,
            purpose: Purpose::Treatment,
            start_ms: w.now,
            expiry_ms: w.now + 1000 * HOUR,
        },
    ));
    let m1 = MessageId::from_tx(&w.ok(
        "doctor",
        Payload::SendMessage {
            to: patient,
            content: cid(7),
        },
    ));
    let propose = |price, respond_by_ms| Payload::ProposeAgreement {
        patient,
        scope: Scope::Categories(vec![Category::new("Observation").unwrap()]),
        purpose: Purpose::Payment,
        duration_ms: 10 * HOUR,
        price,
        terms: cid(8),
        respond_by_ms,
    };
    let a1 = AgreementId::from_tx(&w.ok("insurer", propose(10, w.now + 100 * HOUR)));
    let a2 = AgreementId::from_tx(&w.ok("insurer", propose(5, w.now + HOUR)));
    let r2 = RecordId::from_tx(&w.ok("patient", add_record(patient, "Condition", 2)));
    w.ok(
        "patient",
        Payload::RequestErasure {
            target: ErasureTarget::Record(r2),
        },
    );
    w.ok(
        "orgadmin",
        Payload::InvitePatient {
            org: org(),
            commitment: medledger_core::tx::invite_commitment(&INVITE_SECRET),
            expires_ms: w.now + 100 * HOUR,
        },
    );
    // The consortium admin also administers `general`, so a recovery it requests can
    // be approved by the other admin.
    let admin_id = w.id("admin");
    w.ok(
        "admin",
        Payload::AssignRole {
            org: org(),
            account: admin_id,
            role: Role::HospitalAdmin,
        },
    );
    let recovery = GrantId::from_tx(&w.ok("admin", Payload::RequestRecovery { account: patient }));
    w.now += 2 * HOUR;
    (
        w,
        Fixtures {
            recovery,
            r1,
            r2,
            g_doc,
            m1,
            a1,
            a2,
        },
    )
}

/// The request each actor makes when trying a kind of transaction.
fn payload_for(kind: &str, actor: &str, w: &mut World, f: &Fixtures) -> Payload {
    let patient = w.id("patient");
    let doctor = w.id("doctor");
    match kind {
        "register_account" => Payload::RegisterAccount {
            account: w.id("newcomer"),
            encryption_key: Digest32([5; 32]),
        },
        "anchor" => Payload::Anchor {
            digest: Digest32([6; 32]),
        },
        "add_org" => Payload::AddOrg {
            org: OrgId::new("new-org").unwrap(),
            admin: w.id("outsider"),
        },
        "assign_role" => Payload::AssignRole {
            org: org(),
            account: w.id("outsider"),
            role: Role::Nurse,
        },
        "revoke_role" => Payload::RevokeRole {
            org: org(),
            account: w.id("nurse"),
            role: Role::Nurse,
        },
        "register" => Payload::Register {
            org: org(),
            role: Role::Doctor,
            encryption_key: Digest32([9; 32]),
        },
        "approve_registration" => Payload::ApproveRegistration {
            account: w.id("pending"),
        },
        "reject_registration" => Payload::RejectRegistration {
            account: w.id("pending"),
        },
        "add_record" => add_record(patient, "Observation", 3),
        "amend_record" => Payload::AmendRecord {
            record: f.r1,
            cid: cid(4),
            content_hash: Digest32([4; 32]),
            size: 4,
        },
        "grant_consent" => Payload::GrantConsent {
            grantee: Grantee::Account(w.id("nurse")),
            scope: Scope::All,
            purpose: Purpose::Treatment,
            start_ms: w.now,
            expiry_ms: w.now + HOUR,
        },
        "revoke_consent" => Payload::RevokeConsent { grant: f.g_doc },
        "break_glass" => Payload::BreakGlass {
            patient,
            reason: EmergencyReason::PatientUnconscious,
        },
        "report_access" => Payload::ReportAccess {
            reports: vec![AccessReport {
                accessor: doctor,
                record: f.r1,
                purpose: Purpose::Treatment,
                time_ms: w.now,
                allowed: true,
                reason: "grant".into(),
            }],
        },
        "send_message" => Payload::SendMessage {
            to: if actor == "patient" { doctor } else { patient },
            content: cid(9),
        },
        "respond_message" => Payload::RespondMessage {
            message: f.m1,
            approve: true,
        },
        "mint" => Payload::Mint {
            to: patient,
            amount: 10,
        },
        "transfer" => Payload::Transfer {
            to: if actor == "auditor" {
                patient
            } else {
                w.id("auditor")
            },
            amount: 5,
        },
        "withdraw_fees" => Payload::WithdrawFees { amount: 1 },
        "propose_agreement" => Payload::ProposeAgreement {
            patient,
            scope: Scope::All,
            purpose: if actor == "researcher" {
                Purpose::Research
            } else {
                Purpose::Payment
            },
            duration_ms: HOUR,
            price: 3,
            terms: cid(10),
            respond_by_ms: w.now + HOUR,
        },
        "respond_agreement" => Payload::RespondAgreement {
            agreement: f.a1,
            accept: true,
        },
        "expire_agreement" => Payload::ExpireAgreement { agreement: f.a2 },
        "request_erasure" => Payload::RequestErasure {
            target: ErasureTarget::Record(f.r1),
        },
        "complete_erasure" => Payload::CompleteErasure { record: f.r2 },
        "invite_patient" => Payload::InvitePatient {
            org: org(),
            commitment: Digest32([0x2f; 32]),
            expires_ms: w.now + HOUR,
        },
        "register_invited" => Payload::RegisterInvited {
            secret: INVITE_SECRET,
            encryption_key: Digest32([9; 32]),
        },
        "request_recovery" => Payload::RequestRecovery { account: patient },
        "approve_recovery" => Payload::ApproveRecovery {
            request: f.recovery,
        },
        "write_records" => Payload::WriteRecords {
            items: vec![
                RecordWrite::Add {
                    patient,
                    category: Category::new("Observation").unwrap(),
                    cid: cid(11),
                    content_hash: Digest32([11; 32]),
                    size: 11,
                },
                RecordWrite::Amend {
                    record: f.r1,
                    cid: cid(12),
                    content_hash: Digest32([12; 32]),
                    size: 12,
                },
            ],
        },
        other => panic!("no payload for {other}"),
    }
}

/// Expected outcome per actor, in [`ACTORS`] order: "ok" or a rejection code.
fn expected(kind: &str) -> [&'static str; 12] {
    const U: &str = "unauthorized";
    const OK: &str = "ok";
    const X: &str = "unknown_signer";
    // admin, orgadmin, patient, doctor, nurse, researcher, insurer, auditor, pending, outsider, node, stranger
    let only = |who: &[usize]| {
        let mut row = [U, U, U, U, U, U, U, U, U, U, U, X];
        for i in who {
            row[*i] = OK;
        }
        row
    };
    let anyone = [OK, OK, OK, OK, OK, OK, OK, OK, OK, OK, U, X];
    // Settling due work is permissionless, and the node's housekeeping does it.
    let settle = [OK, OK, OK, OK, OK, OK, OK, OK, OK, OK, OK, X];
    match kind {
        "register_account" | "add_org" | "mint" | "withdraw_fees" => only(&[0]),
        "anchor" | "send_message" | "transfer" => anyone,
        "expire_agreement" | "complete_erasure" => settle,
        "assign_role" | "revoke_role" | "approve_registration" | "reject_registration" => {
            only(&[0, 1])
        }
        "register" => [
            "invalid", OK, OK, "conflict", OK, OK, OK, OK, "conflict", OK, U, OK,
        ],
        "add_record" | "amend_record" | "write_records" => only(&[2, 3]),
        "grant_consent" | "revoke_consent" | "respond_message" | "respond_agreement"
        | "request_erasure" => only(&[2]),
        "break_glass" => only(&[3]),
        "report_access" => only(&[10]),
        "propose_agreement" => only(&[5, 6]),
        "invite_patient" => only(&[0, 1, 3, 4]),
        // Admins of the member's org; nobody for themself.
        "request_recovery" => [OK, OK, "invalid", U, U, U, U, U, U, U, U, X],
        // Only a second admin: the requester (admin) may not approve its own request.
        "approve_recovery" => only(&[1]),
        // Through the invite; a patient of the org already is one.
        "register_invited" => ["invalid", OK, "conflict", OK, OK, OK, OK, OK, OK, OK, U, OK],
        other => panic!("no expectations for {other}"),
    }
}

const KINDS: [&str; 29] = [
    "register_account",
    "anchor",
    "add_org",
    "assign_role",
    "revoke_role",
    "register",
    "approve_registration",
    "reject_registration",
    "add_record",
    "amend_record",
    "grant_consent",
    "revoke_consent",
    "break_glass",
    "report_access",
    "send_message",
    "respond_message",
    "mint",
    "transfer",
    "withdraw_fees",
    "propose_agreement",
    "respond_agreement",
    "expire_agreement",
    "request_erasure",
    "complete_erasure",
    "invite_patient",
    "register_invited",
    "request_recovery",
    "approve_recovery",
    "write_records",
];

#[test]
fn authorization_matrix_every_role_times_every_kind() {
    let (mut w, f) = matrix_world();
    let base: BTreeMap<Vec<u8>, Vec<u8>> = w.dump();
    let genesis = w.genesis.clone();
    let ctx = BlockCtx {
        genesis: &genesis,
        time_ms: w.now,
    };
    let mut failures = Vec::new();
    let mut checked = 0;
    for kind in KINDS {
        let want = expected(kind);
        for (i, actor) in ACTORS.iter().enumerate() {
            let payload = payload_for(kind, actor, &mut w, &f);
            assert_eq!(payload.kind(), kind);
            w.forget_nonces();
            let (bytes, hash) = w.sign(actor, payload);
            let tx = SignedTx::decode(&bytes).unwrap();
            let mut overlay = Overlay::new(&base);
            let got = match contracts::execute(&mut overlay, &tx, &hash, &ctx).unwrap() {
                Ok(()) => {
                    assert!(
                        !overlay.writes.is_empty(),
                        "{actor} {kind}: accepted, wrote nothing"
                    );
                    "ok"
                }
                Err(r) => {
                    assert!(
                        overlay.writes.is_empty(),
                        "{actor} {kind}: rejected but wrote"
                    );
                    r.code()
                }
            };
            checked += 1;
            if got != want[i] {
                failures.push(format!("{actor} × {kind}: got {got}, want {}", want[i]));
            }
        }
    }
    assert_eq!(checked, KINDS.len() * ACTORS.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn record_writes_succeed_or_fail_together() {
    let mut w = standard(0, vec![]);
    let patient = w.id("patient");
    let add = |n: u8| RecordWrite::Add {
        patient,
        category: Category::new("Observation").unwrap(),
        cid: cid(n),
        content_hash: Digest32([n; 32]),
        size: n as u64,
    };
    // The second item amends a record that does not exist: nothing of the first stays.
    let missing = RecordWrite::Amend {
        record: RecordId::from_tx(&TxHash(Digest32([0xee; 32]))),
        cid: cid(3),
        content_hash: Digest32([3; 32]),
        size: 3,
    };
    w.rejected(
        "patient",
        Payload::WriteRecords {
            items: vec![add(1), missing],
        },
        "not_found",
    );
    w.rejected(
        "patient",
        Payload::WriteRecords { items: vec![] },
        "invalid",
    );
    // A doctor without a grant may not write any item.
    w.rejected(
        "doctor",
        Payload::WriteRecords {
            items: vec![add(4)],
        },
        "unauthorized",
    );
    w.ok(
        "patient",
        Payload::WriteRecords {
            items: vec![add(1), add(2)],
        },
    );
    let nonce = w.ledger.account(&patient).unwrap().unwrap().nonce;
    let (r0, r1) = (
        RecordId::in_batch(&patient, nonce, 0),
        RecordId::in_batch(&patient, nonce, 1),
    );
    assert_ne!(r0, r1);
    let st = w.ledger.state().unwrap();
    for (r, n) in [(r0, 1u8), (r1, 2)] {
        let rec = query::record(&st, &r).unwrap().expect("record in batch");
        assert_eq!(rec.history.last().unwrap().cid, cid(n));
    }
    // A later batch amends one of them and adds another, atomically.
    w.ok(
        "patient",
        Payload::WriteRecords {
            items: vec![
                RecordWrite::Amend {
                    record: r0,
                    cid: cid(5),
                    content_hash: Digest32([5; 32]),
                    size: 5,
                },
                add(6),
            ],
        },
    );
    let rec = query::record(&w.ledger.state().unwrap(), &r0)
        .unwrap()
        .unwrap();
    assert_eq!(rec.history.len(), 2);
}

#[test]
fn messages_answered_once_by_their_recipient_only() {
    let mut w = standard(0, vec![]);
    let patient = w.id("patient");
    let m = MessageId::from_tx(&w.ok(
        "doctor",
        Payload::SendMessage {
            to: patient,
            content: cid(1),
        },
    ));
    let deny = Payload::RespondMessage {
        message: m,
        approve: false,
    };
    let approve = Payload::RespondMessage {
        message: m,
        approve: true,
    };
    // Someone else's message.
    let e = w.rejected("patient2", approve.clone(), "unauthorized");
    assert!(e.to_string().contains("only the recipient"), "{e}");
    w.rejected("doctor", approve.clone(), "unauthorized");
    w.ok("patient", deny.clone());
    // Approve after deny, and deny twice.
    let e = w.rejected("patient", approve.clone(), "conflict");
    assert!(e.to_string().contains("already denied"), "{e}");
    w.rejected("patient", deny, "conflict");

    let m2 = MessageId::from_tx(&w.ok(
        "doctor",
        Payload::SendMessage {
            to: patient,
            content: cid(2),
        },
    ));
    let approve2 = Payload::RespondMessage {
        message: m2,
        approve: true,
    };
    w.ok("patient", approve2.clone());
    let e = w.rejected("patient", approve2, "conflict");
    assert!(e.to_string().contains("already approved"), "{e}");
    let s = w.ledger.state().unwrap();
    assert!(matches!(
        query::message(&s, &m).unwrap().unwrap().status,
        MessageStatus::Denied { .. }
    ));
    assert!(matches!(
        query::message(&s, &m2).unwrap().unwrap().status,
        MessageStatus::Approved { .. }
    ));
    w.rejected(
        "patient",
        Payload::RespondMessage {
            message: MessageId(Digest32([0xee; 32])),
            approve: true,
        },
        "not_found",
    );
}

#[test]
fn overspending_and_foreign_consent_are_refused_without_change() {
    let mut w = standard(0, vec![]);
    let doctor = w.id("doctor");
    let patient2 = w.id("patient2");
    let e = w.rejected(
        "patient",
        Payload::Transfer {
            to: doctor,
            amount: 101,
        },
        "insufficient_funds",
    );
    assert_eq!(
        e,
        RejectReason::InsufficientFunds {
            balance: 100,
            needed: 101
        }
    );
    let patient = w.id("patient");
    w.rejected(
        "insurer",
        Payload::ProposeAgreement {
            patient,
            scope: Scope::All,
            purpose: Purpose::Payment,
            duration_ms: HOUR,
            price: 1000,
            terms: cid(1),
            respond_by_ms: w.now + HOUR,
        },
        "insufficient_funds",
    );
    w.rejected(
        "patient",
        Payload::WithdrawFees { amount: 1 },
        "unauthorized",
    );
    w.rejected(
        "admin",
        Payload::WithdrawFees { amount: 1 },
        "insufficient_funds",
    );
    w.rejected(
        "patient",
        Payload::Transfer {
            to: doctor,
            amount: 0,
        },
        "invalid",
    );

    // Granting on another patient's behalf: naming their record in the scope...
    let r_other = RecordId::from_tx(&w.ok("patient2", add_record(patient2, "Observation", 1)));
    let now = w.now;
    let grant = |scope| Payload::GrantConsent {
        grantee: Grantee::Account(doctor),
        scope,
        purpose: Purpose::Treatment,
        start_ms: now,
        expiry_ms: now + HOUR,
    };
    let e = w.rejected("patient", grant(Scope::Records(vec![r_other])), "not_found");
    assert!(e.to_string().contains("record of this patient"), "{e}");
    // ...a clinician granting access to someone's records...
    w.rejected("doctor", grant(Scope::All), "unauthorized");
    // ...or revoking another patient's grant.
    let g = GrantId::from_tx(&w.ok("patient2", grant(Scope::All)));
    w.rejected(
        "patient",
        Payload::RevokeConsent { grant: g },
        "unauthorized",
    );
    w.rejected("patient", grant(Scope::Categories(vec![])), "invalid");
    let mut bad = grant(Scope::All);
    if let Payload::GrantConsent { expiry_ms, .. } = &mut bad {
        *expiry_ms = now - 1;
    }
    w.rejected("patient", bad, "invalid");
    w.assert_conserved();
}

#[test]
fn consent_expiry_and_revocation_take_effect_at_the_exact_block() {
    let mut w = standard(0, vec![]);
    let patient = w.id("patient");
    let doctor = w.id("doctor");
    let rec = RecordId::from_tx(&w.ok("patient", add_record(patient, "Observation", 1)));
    assert_eq!(
        w.can("doctor", &rec, Purpose::Treatment),
        Decision::DenyNoValidGrant
    );
    let start = w.now + HOUR;
    let expiry = start + HOUR;
    let g = GrantId::from_tx(&w.ok(
        "patient",
        Payload::GrantConsent {
            grantee: Grantee::Account(doctor),
            scope: Scope::Categories(vec![Category::new("Observation").unwrap()]),
            purpose: Purpose::Treatment,
            start_ms: start,
            expiry_ms: expiry,
        },
    ));
    // Not yet started.
    w.now = start - 1;
    assert_eq!(
        w.can("doctor", &rec, Purpose::Treatment),
        Decision::DenyNoValidGrant
    );
    w.rejected(
        "doctor",
        add_record(patient, "Observation", 2),
        "unauthorized",
    );
    w.now = start;
    assert_eq!(
        w.can("doctor", &rec, Purpose::Treatment),
        Decision::AllowGrant { grant: g }
    );
    // Scope: another category is not covered, nor is another purpose.
    w.rejected(
        "doctor",
        add_record(patient, "Condition", 2),
        "unauthorized",
    );
    assert_eq!(
        w.can("doctor", &rec, Purpose::Operations),
        Decision::DenyNoValidGrant
    );
    assert_eq!(
        w.can("insurer", &rec, Purpose::Treatment),
        Decision::DenyRoleNotPermitted
    );
    w.now = expiry - 1;
    w.ok("doctor", add_record(patient, "Observation", 3));
    w.now = expiry;
    assert_eq!(
        w.can("doctor", &rec, Purpose::Treatment),
        Decision::DenyNoValidGrant
    );
    w.rejected(
        "doctor",
        add_record(patient, "Observation", 4),
        "unauthorized",
    );

    // Revocation: in one block, a write before the revoke is accepted and one after it
    // is refused; from that block on, reads are denied.
    let g2 = GrantId::from_tx(&w.ok(
        "patient",
        Payload::GrantConsent {
            grantee: Grantee::Org(org()),
            scope: Scope::All,
            purpose: Purpose::Treatment,
            start_ms: w.now,
            expiry_ms: w.now + 10 * HOUR,
        },
    ));
    assert_eq!(
        w.can("nurse", &rec, Purpose::Treatment),
        Decision::AllowGrant { grant: g2 }
    );
    w.now += 1;
    let (before, _) = w.sign("nurse", add_record(patient, "Observation", 5));
    let (revoke, _) = w.sign("patient", Payload::RevokeConsent { grant: g2 });
    let (after, _) = w.sign("doctor", add_record(patient, "Observation", 6));
    let out = w.apply(&[before, revoke, after]);
    assert!(out[0].is_ok() && out[1].is_ok(), "{out:?}");
    assert_eq!(out[2].as_ref().unwrap_err().code(), "unauthorized");
    assert_eq!(
        w.can("nurse", &rec, Purpose::Treatment),
        Decision::DenyNoValidGrant
    );
    w.now -= 1;
    assert_eq!(
        w.can("nurse", &rec, Purpose::Treatment),
        Decision::AllowGrant { grant: g2 }
    );
    w.now += 1;
    w.rejected("patient", Payload::RevokeConsent { grant: g2 }, "conflict");
}

#[test]
fn break_glass_opens_for_a_day_is_flagged_and_tells_the_patient() {
    let mut w = standard(0, vec![]);
    let patient = w.id("patient");
    let doctor = w.id("doctor");
    let rec = RecordId::from_tx(&w.ok("patient", add_record(patient, "Observation", 1)));
    assert_eq!(
        w.can("doctor", &rec, Purpose::Emergency),
        Decision::DenyNoValidGrant
    );
    assert_eq!(
        w.can("nurse", &rec, Purpose::Emergency),
        Decision::DenyNoValidGrant
    );
    w.rejected(
        "nurse",
        Payload::BreakGlass {
            patient,
            reason: EmergencyReason::LifeThreatening,
        },
        "unauthorized",
    );
    let bg = BreakGlassId::from_tx(&w.ok(
        "doctor",
        Payload::BreakGlass {
            patient,
            reason: EmergencyReason::LifeThreatening,
        },
    ));
    assert_eq!(
        w.can("doctor", &rec, Purpose::Emergency),
        Decision::AllowBreakGlass { break_glass: bg }
    );
    // Break-glass is for emergency use only, not a general grant.
    assert_eq!(
        w.can("doctor", &rec, Purpose::Treatment),
        Decision::DenyNoValidGrant
    );
    w.ok("doctor", add_record(patient, "Observation", 2));
    let s = w.ledger.state().unwrap();
    let inbox = query::inbox(&s, &patient).unwrap();
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].state.break_glass, Some(bg));
    assert_eq!(inbox[0].state.from, doctor);
    let trail = query::audit(&s, &query::AuditFilter::Patient(patient), None, 100).unwrap();
    assert_eq!(trail.len(), 1);
    assert!(trail[0].break_glass && trail[0].allowed);
    assert_eq!(trail[0].accessor, doctor);
    drop(s);
    w.now += 24 * HOUR - 1;
    assert!(w.can("doctor", &rec, Purpose::Emergency).allowed());
    w.now += 1;
    assert_eq!(
        w.can("doctor", &rec, Purpose::Emergency),
        Decision::DenyNoValidGrant
    );
    w.rejected(
        "doctor",
        add_record(patient, "Observation", 3),
        "unauthorized",
    );
}

#[test]
fn agreements_pay_the_patient_refund_on_reject_or_expiry() {
    let mut w = standard(0, vec![]);
    let patient = w.id("patient");
    let insurer = w.id("insurer");
    let rec = RecordId::from_tx(&w.ok("patient", add_record(patient, "Claim", 1)));
    let propose = |w: &mut World, price| Payload::ProposeAgreement {
        patient,
        scope: Scope::Records(vec![rec]),
        purpose: Purpose::Payment,
        duration_ms: 2 * HOUR,
        price,
        terms: cid(1),
        respond_by_ms: w.now + HOUR,
    };
    let p = propose(&mut w, 30);
    let a = AgreementId::from_tx(&w.ok("insurer", p));
    assert_eq!(w.balance("insurer"), 70);
    assert_eq!(
        query::totals(&w.ledger.state().unwrap()).unwrap().escrow,
        30
    );
    assert_eq!(
        w.can("insurer", &rec, Purpose::Payment),
        Decision::DenyNoValidGrant
    );
    w.ok(
        "patient",
        Payload::RespondAgreement {
            agreement: a,
            accept: true,
        },
    );
    assert_eq!(w.balance("patient"), 130);
    assert!(matches!(
        w.can("insurer", &rec, Purpose::Payment),
        Decision::AllowGrant { .. }
    ));
    let st = query::agreement(&w.ledger.state().unwrap(), &a)
        .unwrap()
        .unwrap();
    assert!(matches!(st.status, AgreementStatus::Accepted { .. }));
    w.rejected(
        "patient",
        Payload::RespondAgreement {
            agreement: a,
            accept: false,
        },
        "conflict",
    );
    w.now += 2 * HOUR;
    assert_eq!(
        w.can("insurer", &rec, Purpose::Payment),
        Decision::DenyNoValidGrant
    );

    let p = propose(&mut w, 20);
    let b = AgreementId::from_tx(&w.ok("insurer", p));
    w.ok(
        "patient",
        Payload::RespondAgreement {
            agreement: b,
            accept: false,
        },
    );
    assert_eq!(w.balance("insurer"), 70);

    let p = propose(&mut w, 15);
    let c = AgreementId::from_tx(&w.ok("insurer", p));
    w.rejected(
        "doctor",
        Payload::ExpireAgreement { agreement: c },
        "conflict",
    );
    let due = query::due(&w.ledger.state().unwrap(), w.now, 10).unwrap();
    assert!(due.agreements.is_empty());
    w.now += HOUR;
    let due = query::due(&w.ledger.state().unwrap(), w.now, 10).unwrap();
    assert_eq!(due.agreements, vec![c]);
    w.rejected(
        "patient",
        Payload::RespondAgreement {
            agreement: c,
            accept: true,
        },
        "expired",
    );
    w.ok("doctor", Payload::ExpireAgreement { agreement: c });
    assert_eq!(w.balance("insurer"), 70);
    assert_eq!(query::totals(&w.ledger.state().unwrap()).unwrap().escrow, 0);
    assert!(
        query::due(&w.ledger.state().unwrap(), w.now, 10)
            .unwrap()
            .agreements
            .is_empty()
    );
    let _ = insurer;
    w.assert_conserved();
}

#[test]
fn erasure_tombstones_and_retention_holds_with_a_reason() {
    let retention = vec![RetentionRule {
        category: Category::new("Condition").unwrap(),
        period_ms: 10 * HOUR,
    }];
    let mut w = standard(0, retention);
    let patient = w.id("patient");
    let obs = RecordId::from_tx(&w.ok("patient", add_record(patient, "Observation", 1)));
    let cond = RecordId::from_tx(&w.ok("patient", add_record(patient, "Condition", 2)));
    let created = w.now;
    w.rejected(
        "doctor",
        Payload::RequestErasure {
            target: ErasureTarget::Record(obs),
        },
        "unauthorized",
    );
    w.now += HOUR;
    w.ok(
        "patient",
        Payload::RequestErasure {
            target: ErasureTarget::Everything,
        },
    );
    assert_eq!(
        w.can("patient", &obs, Purpose::Treatment),
        Decision::DenyErased
    );
    let s = w.ledger.state().unwrap();
    let c = query::record(&s, &cond).unwrap().unwrap();
    assert_eq!(
        c.state.erasure,
        ErasureStatus::Retained {
            requested_ms: w.now,
            until_ms: created + 10 * HOUR,
            period_ms: 10 * HOUR
        }
    );
    drop(s);
    w.rejected(
        "patient",
        Payload::AmendRecord {
            record: obs,
            cid: cid(3),
            content_hash: Digest32([3; 32]),
            size: 1,
        },
        "erased",
    );
    w.rejected(
        "node",
        Payload::CompleteErasure { record: cond },
        "conflict",
    );
    w.rejected(
        "node",
        Payload::Anchor {
            digest: Digest32::ZERO,
        },
        "unauthorized",
    );
    w.rejected(
        "doctor",
        Payload::CompleteErasure { record: cond },
        "conflict",
    );
    w.rejected(
        "doctor",
        Payload::CompleteErasure { record: obs },
        "conflict",
    );
    w.now = created + 10 * HOUR;
    let due = query::due(&w.ledger.state().unwrap(), w.now, 10).unwrap();
    assert_eq!(due.erasures, vec![cond]);
    w.ok("doctor", Payload::CompleteErasure { record: cond });
    assert_eq!(
        w.can("patient", &cond, Purpose::Treatment),
        Decision::DenyErased
    );
    w.rejected(
        "patient",
        Payload::RequestErasure {
            target: ErasureTarget::Everything,
        },
        "not_found",
    );
}

#[test]
fn roles_registration_and_fees() {
    let mut w = standard(2, vec![]);
    let fees = query::totals(&w.ledger.state().unwrap()).unwrap().fees;
    assert_eq!(fees, 2 * CLINICAL.len() as u64);
    let pending = w.id("pending");
    // 100 units minted after registering, so the fee can be paid.
    w.ok(
        "orgadmin",
        Payload::ApproveRegistration { account: pending },
    );
    assert_eq!(w.balance("pending"), 98);
    let acct = query::account(&w.ledger.state().unwrap(), &pending)
        .unwrap()
        .unwrap();
    assert!(acct.state.has_role_in(&org(), Role::Doctor));
    assert!(acct.state.pending.is_none());
    w.rejected(
        "orgadmin",
        Payload::ApproveRegistration { account: pending },
        "not_found",
    );
    // A registrant who cannot pay stays pending.
    w.ok(
        "poor",
        Payload::Register {
            org: org(),
            role: Role::Nurse,
            encryption_key: Digest32([1; 32]),
        },
    );
    let poor = w.id("poor");
    w.rejected(
        "orgadmin",
        Payload::ApproveRegistration { account: poor },
        "insufficient_funds",
    );
    w.ok("orgadmin", Payload::RejectRegistration { account: poor });
    let o = query::org(&w.ledger.state().unwrap(), &org())
        .unwrap()
        .unwrap();
    assert!(o.pending.is_empty());
    assert!(
        o.members
            .iter()
            .any(|m| m.account == pending && m.role == Role::Doctor)
    );
    w.ok("admin", Payload::WithdrawFees { amount: fees + 2 });
    assert_eq!(query::totals(&w.ledger.state().unwrap()).unwrap().fees, 0);
    // A stranger's first tx must be a registration; a malformed org is refused.
    w.rejected(
        "nobody",
        Payload::Anchor {
            digest: Digest32::ZERO,
        },
        "unknown_signer",
    );
    w.rejected(
        "nobody",
        Payload::Register {
            org: OrgId::new("no-such-org").unwrap(),
            role: Role::Patient,
            encryption_key: Digest32([1; 32]),
        },
        "not_found",
    );
    w.assert_conserved();
}

#[test]
fn only_the_consortium_admin_makes_auditors_and_no_admin_gives_themselves_a_role() {
    let mut w = standard(0, vec![]);
    let (nurse, orgadmin) = (w.id("nurse"), w.id("orgadmin"));
    // An auditor oversees the whole consortium: an org admin cannot make one, by
    // assigning the role or by approving a registration that asks for it.
    w.rejected(
        "orgadmin",
        Payload::AssignRole {
            org: org(),
            account: nurse,
            role: Role::Auditor,
        },
        "unauthorized",
    );
    w.ok(
        "hopeful",
        Payload::Register {
            org: org(),
            role: Role::Auditor,
            encryption_key: Digest32([2; 32]),
        },
    );
    let hopeful = w.id("hopeful");
    w.rejected(
        "orgadmin",
        Payload::ApproveRegistration { account: hopeful },
        "unauthorized",
    );
    // Nor can an admin give themselves another role (here: auditor or doctor).
    for role in [Role::Auditor, Role::Doctor] {
        w.rejected(
            "orgadmin",
            Payload::AssignRole {
                org: org(),
                account: orgadmin,
                role,
            },
            "unauthorized",
        );
    }
    // The org admin still gives other roles to others; the consortium admin makes
    // auditors.
    w.ok(
        "orgadmin",
        Payload::AssignRole {
            org: org(),
            account: nurse,
            role: Role::Doctor,
        },
    );
    w.ok("admin", Payload::ApproveRegistration { account: hopeful });
    let st = w.ledger.state().unwrap();
    assert!(
        query::account(&st, &hopeful)
            .unwrap()
            .unwrap()
            .state
            .has_role_in(&org(), Role::Auditor)
    );
}

#[test]
fn audit_reports_are_indexed_by_patient_record_accessor_and_time() {
    let mut w = standard(0, vec![]);
    let patient = w.id("patient");
    let doctor = w.id("doctor");
    let nurse = w.id("nurse");
    let r1 = RecordId::from_tx(&w.ok("patient", add_record(patient, "Observation", 1)));
    let r2 = RecordId::from_tx(&w.ok("patient", add_record(patient, "Observation", 2)));
    let t = w.now;
    let report = |accessor, record, time_ms, allowed: bool| AccessReport {
        accessor,
        record,
        purpose: Purpose::Treatment,
        time_ms,
        allowed,
        reason: if allowed { "grant" } else { "no_valid_grant" }.into(),
    };
    w.ok(
        "node",
        Payload::ReportAccess {
            reports: vec![
                report(doctor, r1, t - 3, true),
                report(nurse, r1, t - 2, false),
                report(doctor, r2, t - 1, true),
            ],
        },
    );
    w.rejected(
        "node",
        Payload::ReportAccess {
            reports: vec![report(doctor, r1, t + 1, true)],
        },
        "invalid",
    );
    w.rejected(
        "node",
        Payload::ReportAccess {
            reports: vec![AccessReport {
                reason: "Free text with a Name".into(),
                ..report(doctor, r1, t, true)
            }],
        },
        "invalid",
    );
    w.rejected("node", Payload::ReportAccess { reports: vec![] }, "invalid");
    let s = w.ledger.state().unwrap();
    use query::AuditFilter::*;
    let n = |f, after| query::audit(&s, &f, after, 100).unwrap();
    assert_eq!(n(Patient(patient), None).len(), 3);
    assert_eq!(n(Record(r1), None).len(), 2);
    assert_eq!(n(Accessor(doctor), None).len(), 2);
    let nurse_trail = n(Accessor(nurse), None);
    assert_eq!(nurse_trail.len(), 1);
    assert!(!nurse_trail[0].allowed);
    assert_eq!(nurse_trail[0].reason, "no_valid_grant");
    let window = n(
        Time {
            from_ms: t - 2,
            to_ms: t,
        },
        None,
    );
    assert_eq!(
        window.iter().map(|e| e.time_ms).collect::<Vec<_>>(),
        vec![t - 2, t - 1]
    );
    let first = n(Patient(patient), None)[0].seq;
    assert_eq!(n(Patient(patient), Some(first)).len(), 2);
    assert!(n(Patient(w.id("patient2")), None).is_empty());
}

#[test]
fn amended_records_keep_their_history() {
    let mut w = standard(0, vec![]);
    let patient = w.id("patient");
    let rec = RecordId::from_tx(&w.ok("patient", add_record(patient, "Observation", 1)));
    w.now += 5;
    w.ok(
        "patient",
        Payload::AmendRecord {
            record: rec,
            cid: cid(2),
            content_hash: Digest32([2; 32]),
            size: 2,
        },
    );
    let s = w.ledger.state().unwrap();
    let r = query::record(&s, &rec).unwrap().unwrap();
    assert_eq!(r.state.versions, 2);
    assert_eq!(r.history.len(), 2);
    assert_eq!(r.history[0].cid, cid(1));
    assert_eq!(r.history[1].cid, cid(2));
    assert_eq!(
        query::patient_records(&s, &patient, None, 10).unwrap(),
        vec![rec]
    );
    // The whole ledger, contracts included, still verifies from its blocks.
    drop(s);
    w.ledger.flush().unwrap();
    let report = w
        .ledger
        .verify(medledger_ledger::VerifyMode::Full, &|_, _| {})
        .unwrap();
    assert_eq!(report.tip, w.ledger.tip());
    let _ = StateRead::get(&w.ledger.state().unwrap(), b"x").unwrap();
}

#[test]
fn patient_invites_are_single_use_and_expire() {
    let mut w = standard(0, vec![]);
    let secret = Digest32([0x42; 32]);
    let commitment = medledger_core::tx::invite_commitment(&secret);
    w.ok(
        "doctor",
        Payload::InvitePatient {
            org: org(),
            commitment,
            expires_ms: w.now + HOUR,
        },
    );
    let join = Payload::RegisterInvited {
        secret,
        encryption_key: Digest32([5; 32]),
    };
    // A wrong secret finds no invite.
    w.rejected(
        "newbie",
        Payload::RegisterInvited {
            secret: Digest32([0x43; 32]),
            encryption_key: Digest32([5; 32]),
        },
        "not_found",
    );
    w.ok("newbie", join.clone());
    let newbie = w.id("newbie");
    let acct = query::account(&w.ledger.state().unwrap(), &newbie)
        .unwrap()
        .unwrap();
    assert!(acct.state.has_role_in(&org(), Role::Patient));
    let e = w.rejected("other", join, "conflict");
    assert!(e.to_string().contains("already used"), "{e}");
    // Expired.
    let s2 = Digest32([0x44; 32]);
    w.ok(
        "nurse",
        Payload::InvitePatient {
            org: org(),
            commitment: medledger_core::tx::invite_commitment(&s2),
            expires_ms: w.now + HOUR,
        },
    );
    w.now += HOUR;
    w.rejected(
        "late",
        Payload::RegisterInvited {
            secret: s2,
            encryption_key: Digest32([5; 32]),
        },
        "expired",
    );
}

/// Regression (issue 12, defect 1): patient2 registered the CID of the patient's
/// record under a record of their own, then read the patient's content through it
/// and shredded the patient's blob by erasing theirs.
#[test]
fn a_cid_belongs_to_exactly_one_record_version() {
    let mut w = standard(0, vec![]);
    let patient = w.id("patient");
    let patient2 = w.id("patient2");
    let rec = RecordId::from_tx(&w.ok("patient", add_record(patient, "Observation", 1)));
    // Another patient cannot register it, nor can the owner reuse it for a new record
    // or a new version, nor can a batch bind one CID twice.
    w.rejected(
        "patient2",
        add_record(patient2, "Observation", 1),
        "cid_taken",
    );
    w.rejected("patient", add_record(patient, "Condition", 1), "cid_taken");
    let amend = |n: u8| Payload::AmendRecord {
        record: rec,
        cid: cid(n),
        content_hash: Digest32([n; 32]),
        size: n as u64,
    };
    w.rejected("patient", amend(1), "cid_taken");
    let add = |n: u8| RecordWrite::Add {
        patient,
        category: Category::new("Observation").unwrap(),
        cid: cid(n),
        content_hash: Digest32([n; 32]),
        size: n as u64,
    };
    w.rejected(
        "patient",
        Payload::WriteRecords {
            items: vec![add(3), add(3)],
        },
        "cid_taken",
    );
    // The registry names the one owner, for every version.
    w.ok("patient", amend(2));
    let s = w.ledger.state().unwrap();
    for (n, version) in [(1u8, 1u32), (2, 2)] {
        let owner = query::cid_owner(&s, &cid(n)).unwrap().unwrap();
        assert_eq!((owner.record, owner.version), (rec, version));
    }
    assert!(query::cid_owner(&s, &cid(3)).unwrap().is_none());
}

/// Regression (issue 12, defect 4): a doctor who once wrote a version kept reading the
/// record (and its later versions) after the grant was revoked and after their role
/// was revoked, with `reason: author`.
#[test]
fn writing_a_version_gives_no_access_once_the_grant_or_role_ends() {
    let mut w = standard(0, vec![]);
    let patient = w.id("patient");
    let doctor = w.id("doctor");
    let g = GrantId::from_tx(&w.ok(
        "patient",
        Payload::GrantConsent {
            grantee: Grantee::Account(doctor),
            scope: Scope::All,
            purpose: Purpose::Treatment,
            start_ms: w.now,
            expiry_ms: w.now + 10 * HOUR,
        },
    ));
    let rec = RecordId::from_tx(&w.ok("doctor", add_record(patient, "Observation", 1)));
    assert_eq!(
        w.can("doctor", &rec, Purpose::Treatment),
        Decision::AllowGrant { grant: g }
    );
    w.ok("patient", Payload::RevokeConsent { grant: g });
    assert_eq!(
        w.can("doctor", &rec, Purpose::Treatment),
        Decision::DenyNoValidGrant
    );
    // Nor may they write to it any more.
    w.rejected(
        "doctor",
        Payload::AmendRecord {
            record: rec,
            cid: cid(2),
            content_hash: Digest32([2; 32]),
            size: 2,
        },
        "unauthorized",
    );
    // With a new grant, the role's end ends access too.
    w.ok(
        "patient",
        Payload::GrantConsent {
            grantee: Grantee::Org(org()),
            scope: Scope::All,
            purpose: Purpose::Treatment,
            start_ms: w.now,
            expiry_ms: w.now + 10 * HOUR,
        },
    );
    assert!(w.can("doctor", &rec, Purpose::Treatment).allowed());
    w.ok(
        "admin",
        Payload::RevokeRole {
            account: doctor,
            org: org(),
            role: Role::Doctor,
        },
    );
    assert_eq!(
        w.can("doctor", &rec, Purpose::Treatment),
        Decision::DenyRoleNotPermitted
    );
}
