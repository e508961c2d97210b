//! Property tests of the contracts over random transaction sequences: replicas agree,
//! no read is allowed without a live grant or break-glass (checked against
//! an independent reading of the raw state), grants end at their exact expiry, and
//! money is conserved.

use crate::world::*;
use medledger_core::*;
use medledger_ledger::contracts::{self, query};
use proptest::prelude::*;

const PEOPLE: [&str; 8] = [
    "patient",
    "patient2",
    "doctor",
    "nurse",
    "researcher",
    "insurer",
    "auditor",
    "outsider",
];
const CATS: [&str; 3] = ["Observation", "Condition", "Claim"];

#[derive(Debug, Clone)]
enum Op {
    Advance(u64),
    AddRecord {
        by: usize,
        patient: usize,
        cat: usize,
    },
    Amend {
        by: usize,
        rec: usize,
    },
    Grant {
        patient: usize,
        to: usize,
        scope: usize,
        purpose: usize,
        start: u64,
        len: u64,
    },
    Revoke {
        patient: usize,
        grant: usize,
    },
    BreakGlass {
        by: usize,
        patient: usize,
    },
    Transfer {
        from: usize,
        to: usize,
        amount: u64,
    },
    Propose {
        by: usize,
        patient: usize,
        price: u64,
        window: u64,
    },
    Respond {
        by: usize,
        agreement: usize,
        accept: bool,
    },
    Expire {
        agreement: usize,
    },
    Erase {
        by: usize,
        rec: Option<usize>,
    },
    Complete {
        rec: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let p = 0usize..PEOPLE.len();
    prop_oneof![
        (1u64..3 * HOUR).prop_map(Op::Advance),
        (0usize..4, 0usize..2, 0usize..3).prop_map(|(by, patient, cat)| Op::AddRecord {
            by,
            patient,
            cat
        }),
        (p.clone(), 0usize..8).prop_map(|(by, rec)| Op::Amend { by, rec }),
        (
            0usize..2,
            0usize..7,
            0usize..3,
            0usize..5,
            0u64..HOUR,
            1u64..4 * HOUR
        )
            .prop_map(|(patient, to, scope, purpose, start, len)| Op::Grant {
                patient,
                to,
                scope,
                purpose,
                start,
                len
            }),
        (0usize..2, 0usize..8).prop_map(|(patient, grant)| Op::Revoke { patient, grant }),
        (p.clone(), 0usize..2).prop_map(|(by, patient)| Op::BreakGlass { by, patient }),
        (p.clone(), p.clone(), 0u64..150).prop_map(|(from, to, amount)| Op::Transfer {
            from,
            to,
            amount
        }),
        (4usize..6, 0usize..2, 0u64..120, 1u64..3 * HOUR).prop_map(
            |(by, patient, price, window)| Op::Propose {
                by,
                patient,
                price,
                window
            }
        ),
        (0usize..3, 0usize..6, any::<bool>()).prop_map(|(by, agreement, accept)| Op::Respond {
            by,
            agreement,
            accept
        }),
        (0usize..6).prop_map(|agreement| Op::Expire { agreement }),
        (0usize..3, proptest::option::of(0usize..8)).prop_map(|(by, rec)| Op::Erase { by, rec }),
        (0usize..8).prop_map(|rec| Op::Complete { rec }),
    ]
}

#[derive(Default)]
struct Ids {
    records: Vec<RecordId>,
    grants: Vec<GrantId>,
    agreements: Vec<AgreementId>,
}

/// A CID never registered before (each blob belongs to one record version; reusing
/// one is refused with `cid_taken`, tested in `contracts.rs`).
fn fresh_cid() -> Cid {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1 << 32);
    Cid::of(
        &N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .to_be_bytes(),
    )
}

fn pick<T: Copy>(v: &[T], i: usize) -> Option<T> {
    (!v.is_empty()).then(|| v[i % v.len()])
}

fn payload(w: &mut World, ids: &Ids, op: &Op) -> Option<(&'static str, Payload)> {
    let cat = |i: usize| Category::new(CATS[i]).unwrap();
    Some(match *op {
        Op::Advance(_) => return None,
        Op::AddRecord {
            by,
            patient,
            cat: c,
        } => {
            // Half by the patient themself, half by a clinician (who needs a grant).
            let author = if by < 2 { PEOPLE[patient] } else { PEOPLE[by] };
            let patient = w.id(PEOPLE[patient]);
            let mut p = add_record(patient, CATS[c], c as u8);
            if let Payload::AddRecord { cid, .. } = &mut p {
                *cid = fresh_cid();
            }
            (author, p)
        }
        Op::Amend { by, rec } => (
            PEOPLE[by],
            Payload::AmendRecord {
                record: pick(&ids.records, rec)?,
                cid: fresh_cid(),
                content_hash: Digest32([rec as u8; 32]),
                size: 1,
            },
        ),
        Op::Grant {
            patient,
            to,
            scope,
            purpose,
            start,
            len,
        } => {
            let grantee = if to == 6 {
                Grantee::Org(org())
            } else {
                Grantee::Account(w.id(PEOPLE[to + 1]))
            };
            let scope = match scope {
                0 => Scope::All,
                1 => Scope::Categories(vec![cat(0), cat(2)]),
                _ => Scope::Records(ids.records.iter().take(2).copied().collect()),
            };
            let start_ms = w.now + start;
            (
                PEOPLE[patient],
                Payload::GrantConsent {
                    grantee,
                    scope,
                    purpose: Purpose::ALL[purpose],
                    start_ms,
                    expiry_ms: start_ms + len,
                },
            )
        }
        Op::Revoke { patient, grant } => (
            PEOPLE[patient],
            Payload::RevokeConsent {
                grant: pick(&ids.grants, grant)?,
            },
        ),
        Op::BreakGlass { by, patient } => {
            let patient = w.id(PEOPLE[patient]);
            (
                PEOPLE[by],
                Payload::BreakGlass {
                    patient,
                    reason: EmergencyReason::Other,
                },
            )
        }
        Op::Transfer { from, to, amount } => {
            let to = w.id(PEOPLE[to]);
            (PEOPLE[from], Payload::Transfer { to, amount })
        }
        Op::Propose {
            by,
            patient,
            price,
            window,
        } => {
            let patient = w.id(PEOPLE[patient]);
            let purpose = if PEOPLE[by] == "insurer" {
                Purpose::Payment
            } else {
                Purpose::Research
            };
            (
                PEOPLE[by],
                Payload::ProposeAgreement {
                    patient,
                    scope: Scope::All,
                    purpose,
                    duration_ms: HOUR,
                    price,
                    terms: cid(0),
                    respond_by_ms: w.now + window,
                },
            )
        }
        Op::Respond {
            by,
            agreement,
            accept,
        } => (
            PEOPLE[by],
            Payload::RespondAgreement {
                agreement: pick(&ids.agreements, agreement)?,
                accept,
            },
        ),
        Op::Expire { agreement } => (
            "auditor",
            Payload::ExpireAgreement {
                agreement: pick(&ids.agreements, agreement)?,
            },
        ),
        Op::Erase { by, rec } => {
            let target = match rec {
                None => ErasureTarget::Everything,
                Some(r) => ErasureTarget::Record(pick(&ids.records, r)?),
            };
            (PEOPLE[by], Payload::RequestErasure { target })
        }
        Op::Complete { rec } => (
            "doctor",
            Payload::CompleteErasure {
                record: pick(&ids.records, rec)?,
            },
        ),
    })
}

/// Runs `ops` on `w` (consecutive ops share a block until an `Advance`); returns the
/// exact batches applied, with their block times.
/// Batches as applied: block time and the transactions' bytes.
type Batches = Vec<(u64, Vec<Vec<u8>>)>;

fn run(w: &mut World, ops: &[Op]) -> (Ids, Batches) {
    let mut ids = Ids::default();
    let mut batches = Vec::new();
    for (i, who) in ["patient", "patient2"].into_iter().enumerate() {
        let id = w.id(who);
        for (c, cat) in CATS.iter().enumerate() {
            let (bytes, hash) = w.sign(who, add_record(id, cat, (10 * i + c) as u8));
            assert!(w.apply(std::slice::from_ref(&bytes))[0].is_ok());
            ids.records.push(RecordId::from_tx(&hash));
            batches.push((w.now, vec![bytes]));
        }
    }
    let mut pending: Vec<(Vec<u8>, TxHash, &'static str)> = Vec::new();
    let flush = |w: &mut World,
                 pending: &mut Vec<(Vec<u8>, TxHash, &'static str)>,
                 ids: &mut Ids,
                 batches: &mut Vec<_>| {
        if pending.is_empty() {
            return;
        }
        let bytes: Vec<Vec<u8>> = pending.iter().map(|p| p.0.clone()).collect();
        let out = w.apply(&bytes);
        for ((_, hash, kind), r) in pending.drain(..).zip(out) {
            if r.is_ok() {
                match kind {
                    "add_record" => ids.records.push(RecordId::from_tx(&hash)),
                    "grant_consent" => ids.grants.push(GrantId::from_tx(&hash)),
                    "propose_agreement" => ids.agreements.push(AgreementId::from_tx(&hash)),
                    _ => {}
                }
            }
        }
        batches.push((w.now, bytes));
    };
    for op in ops {
        if let Op::Advance(d) = op {
            flush(w, &mut pending, &mut ids, &mut batches);
            w.now += d;
            continue;
        }
        // Every tx in a block by one signer would need consecutive nonces that all
        // succeed; one tx per signer per block keeps the sequence meaningful.
        if let Some((who, p)) = payload(w, &ids, op) {
            let kind = p.kind();
            let signer = w.id(who);
            let clash = pending
                .iter()
                .any(|(b, _, _)| SignedTx::decode(b).unwrap().body.signer == signer);
            if clash {
                flush(w, &mut pending, &mut ids, &mut batches);
            }
            let (bytes, hash) = w.sign(who, p);
            pending.push((bytes, hash, kind));
        }
    }
    flush(w, &mut pending, &mut ids, &mut batches);
    (ids, batches)
}

/// Whether the raw state justifies `who` using `record` for `purpose` at `at`,
/// read without the contracts' decision code.
fn justified(w: &mut World, who: &str, record: &RecordId, purpose: Purpose, at: u64) -> bool {
    let me = w.id(who);
    let s = w.ledger.state().unwrap();
    let Some(rec) = query::record(&s, record).unwrap() else {
        return false;
    };
    if rec.state.is_erased() {
        return false;
    }
    if rec.state.patient == me {
        return true;
    }
    let Some(acct) = query::account(&s, &me).unwrap() else {
        return false;
    };
    let roles = acct.state.roles;
    if purpose == Purpose::Emergency {
        return roles.iter().any(|m| m.role == Role::Doctor)
            && query::break_glasses(&s, &rec.state.patient)
                .unwrap()
                .iter()
                .any(|b| b.state.doctor == me && b.state.start_ms <= at && at < b.state.expiry_ms);
    }
    query::grants(&s, &rec.state.patient)
        .unwrap()
        .iter()
        .any(|g| {
            let g = &g.state;
            let live = g.start_ms <= at && at < g.expiry_ms && g.revoked_ms.is_none_or(|r| at < r);
            let covers = match &g.scope {
                Scope::All => true,
                Scope::Categories(c) => c.contains(&rec.state.category),
                Scope::Records(r) => r.contains(record),
            };
            let reaches = match &g.grantee {
                Grantee::Account(a) => {
                    *a == me && roles.iter().any(|m| m.role.may_use_for(purpose))
                }
                Grantee::Org(o) => roles
                    .iter()
                    .any(|m| &m.org == o && m.role.may_use_for(purpose)),
            };
            g.purpose == purpose && live && covers && reaches
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn random_sequences_keep_every_invariant(ops in proptest::collection::vec(op(), 1..80)) {
        let mut a = standard(0, vec![RetentionRule { category: Category::new("Condition").unwrap(), period_ms: 2 * HOUR }]);
        let setup_tip = a.ledger.tip();
        let (ids, batches) = run(&mut a, &ops);

        // A second replica fed the same ordered batches reaches the same blocks and state.
        let mut b = standard(0, vec![RetentionRule { category: Category::new("Condition").unwrap(), period_ms: 2 * HOUR }]);
        prop_assert_eq!(b.ledger.tip(), setup_tip);
        for (time, txs) in &batches {
            b.now = *time;
            b.apply(txs);
        }
        prop_assert_eq!(a.ledger.tip(), b.ledger.tip());
        prop_assert!(a.dump() == b.dump(), "replica state differs");

        a.assert_conserved();

        let now = a.now;
        for record in &ids.records {
            for who in PEOPLE.iter().chain(["orgadmin", "admin"].iter()) {
                for purpose in Purpose::ALL {
                    for at in [now, now + HOUR] {
                        let id = a.id(who);
                        let d = contracts::can(&a.ledger.state().unwrap(), &id, record, purpose, at).unwrap();
                        let j = justified(&mut a, who, record, purpose, at);
                        prop_assert_eq!(d.allowed(), j, "{} {:?} {:?} at {}: {:?}", who, record, purpose, at, d);
                    }
                }
            }
        }

        // Each grant stops at its exact expiry.
        let s = a.ledger.state().unwrap();
        for g in &ids.grants {
            let Some(st) = query::grant(&s, g).unwrap() else { continue };
            let Grantee::Account(grantee) = st.grantee else { continue };
            for record in &ids.records {
                let before = contracts::can(&s, &grantee, record, st.purpose, st.expiry_ms - 1).unwrap();
                let at = contracts::can(&s, &grantee, record, st.purpose, st.expiry_ms).unwrap();
                prop_assert_ne!(at, medledger_ledger::Decision::AllowGrant { grant: *g });
                if before == (medledger_ledger::Decision::AllowGrant { grant: *g }) {
                    prop_assert!(st.revoked_ms.is_none_or(|r| r > st.expiry_ms - 1));
                }
            }
        }
    }
}
