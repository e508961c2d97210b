//! The audit trail is never best-effort (issue 12, defect 6): content leaves the node
//! only after its access report is durable, a crash loses no report, unknown keys
//! cannot crowd reports out of the batcher, and paging the trail by time returns
//! every entry exactly once.

mod common;
use common::fhir::Fhir;
use common::signin::*;
use common::*;
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Allowed reads of `record` by `accessor` on the ledger's audit trail.
async fn allowed_reads(h: &Http, dir: &std::path::Path, record: &str, accessor: &Value) -> usize {
    let mut n = 0;
    let mut after: Option<u64> = None;
    loop {
        let q = match after {
            Some(a) => format!("/v1/audit?record={record}&limit=1000&after={a}"),
            None => format!("/v1/audit?record={record}&limit=1000"),
        };
        let (st, v) = h.get_as_admin(dir, &q).await;
        assert_eq!(st, 200, "{v}");
        let e = v["entries"].as_array().unwrap();
        n += e
            .iter()
            .filter(|e| &e["accessor"] == accessor && e["allowed"] == true)
            .count();
        match e.last() {
            Some(l) if e.len() == 1000 => after = l["seq"].as_u64(),
            _ => return n,
        }
    }
}

/// A doctor's token and the ids of `n` Observations of one synthetic patient.
async fn setup(
    h: &Http,
    dir: &std::path::Path,
    node: &Node,
    n: usize,
) -> (String, Value, Vec<String>) {
    let admin = admin_signed_in(h, dir, node).await;
    let (doctor, doctor_id) = staff_token(
        h,
        dir,
        &admin,
        "Dana Doctor",
        "dana@hospital.example",
        "doctor",
    )
    .await;
    let f = Fhir::new(h, doctor.clone());
    let (st, p) = f
        .post(
            "/Patient",
            &json!({"resourceType": "Patient", "name": [{"family": "Zorvath"}], "gender": "male"}),
        )
        .await;
    assert_eq!(st, 201, "{p}");
    let pid = p["id"].as_str().unwrap().to_owned();
    let mut ids = Vec::new();
    for i in 0..n {
        let (st, o) = f
            .post(
                "/Observation",
                &json!({"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": format!("Patient/{pid}")},
                "valueQuantity": {"value": 60 + i, "unit": "/min"}}),
            )
            .await;
        assert_eq!(st, 201, "{o}");
        ids.push(o["id"].as_str().unwrap().to_owned());
    }
    (doctor, json!(doctor_id), ids)
}

/// Readers hammer the node with audited reads; the node is SIGKILLed mid-load. After
/// a restart, every read that returned content has its report on the ledger.
#[test]
fn sigkill_during_audited_reads_loses_no_report() {
    let root = tempfile::tempdir().unwrap();
    let dir = init(root.path());
    let node = start(&dir);
    let rt = rt();
    let (doctor, doctor_id, ids, served) = rt.block_on(async {
        client(&node, &dir).await;
        let h = http(&node, &dir);
        let (doctor, doctor_id, ids) = setup(&h, &dir, &node, 12).await;
        let served: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut readers = Vec::new();
        for k in 0..8 {
            let f = Fhir::new(&h, doctor.clone());
            let (ids, served, stop) = (ids.clone(), served.clone(), stop.clone());
            readers.push(tokio::spawn(async move {
                let mut i = k;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let id = &ids[i % ids.len()];
                    i += 3;
                    let r =
                        f.c.get(format!("{}/fhir/Observation/{id}", f.url))
                            .bearer_auth(&f.token)
                            .send()
                            .await;
                    // Count only reads whose content arrived in full.
                    if let Ok(r) = r
                        && r.status() == 200
                        && let Ok(v) = r.json::<Value>().await
                        && v["id"] == json!(id)
                    {
                        *served.lock().unwrap().entry(id.clone()).or_default() += 1;
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        (doctor, doctor_id, ids, (served, stop, readers))
    });
    let (served, stop, readers) = served;
    // SIGKILL while the readers are still reading.
    drop(node);
    rt.block_on(async {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for r in readers {
            let _ = r.await;
        }
    });
    let served = served.lock().unwrap().clone();
    let total: usize = served.values().sum();
    assert!(
        total > 50,
        "too few reads before the kill to mean anything: {total}"
    );

    let node = start(&dir);
    rt.block_on(async {
        client(&node, &dir).await;
        let h = http(&node, &dir);
        for id in &ids {
            let want = served.get(id).copied().unwrap_or(0);
            let mut got = 0;
            for _ in 0..100 {
                got = allowed_reads(&h, &dir, id, &doctor_id).await;
                if got >= want {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(
                got >= want,
                "Observation {id}: {want} reads returned content, {got} reported"
            );
        }
        // The token still works after the restart (its principal is on disk).
        let f = Fhir::new(&h, doctor.clone());
        assert_eq!(f.get(&format!("/Observation/{}", ids[0])).await.0, 200);

        // Paging the whole trail by time returns every entry exactly once (the cursor
        // used to be a sequence number over an index ordered by time).
        let mut paged = Vec::new();
        let mut after: Option<u64> = None;
        loop {
            let q = match after {
                Some(a) => format!("/v1/audit?from=0&limit=7&after={a}"),
                None => "/v1/audit?from=0&limit=7".to_owned(),
            };
            let (_, v) = h.get_as_admin(&dir, &q).await;
            let e = v["entries"].as_array().unwrap().clone();
            paged.extend(e.iter().map(|x| x["seq"].as_u64().unwrap()));
            match e.last() {
                Some(l) if e.len() == 7 => after = l["seq"].as_u64(),
                _ => break,
            }
        }
        let unique: BTreeSet<u64> = paged.iter().copied().collect();
        assert_eq!(unique.len(), paged.len(), "an entry came twice");
        let mut all = BTreeSet::new();
        let mut after: Option<u64> = None;
        loop {
            let q = match after {
                Some(a) => format!(
                    "/v1/audit?accessor={}&limit=1000&after={a}",
                    doctor_id.as_str().unwrap()
                ),
                None => format!(
                    "/v1/audit?accessor={}&limit=1000",
                    doctor_id.as_str().unwrap()
                ),
            };
            let (_, v) = h.get_as_admin(&dir, &q).await;
            let e = v["entries"].as_array().unwrap().clone();
            all.extend(e.iter().map(|x| x["seq"].as_u64().unwrap()));
            match e.last() {
                Some(l) if e.len() == 1000 => after = l["seq"].as_u64(),
                _ => break,
            }
        }
        assert!(
            all.is_subset(&unique),
            "paging by time skipped {} entries",
            all.difference(&unique).count()
        );
    });
    node.stop();
}

/// Regression (defect 5): `/v1/txs` admitted 10,000 self-signed registrations from
/// unknown keys per request, which could fill the batcher so that the node's own
/// report transactions were refused and reports dropped.
#[test]
fn unknown_keys_cannot_crowd_out_audit_reports() {
    let root = tempfile::tempdir().unwrap();
    let dir = init(root.path());
    let node = start(&dir);
    rt().block_on(async {
        let c = client(&node, &dir).await;
        let h = http(&node, &dir);
        let (doctor, doctor_id, ids) = setup(&h, &dir, &node, 3).await;
        let chain = c.status().await.unwrap().chain_id;
        let flood: Vec<Vec<u8>> = (0..2000)
            .map(|_| {
                let k = medledger_node::keystore::AccountKeys::generate().unwrap();
                sign(
                    &k,
                    &chain,
                    1,
                    medledger_core::Payload::Register {
                        org: medledger_core::OrgId::new("general").unwrap(),
                        role: medledger_core::Role::Doctor,
                        encryption_key: k.encryption_public(),
                    },
                )
            })
            .collect();
        let f = Fhir::new(&h, doctor.clone());
        let reads = async {
            let mut n = 0;
            for _ in 0..20 {
                for id in &ids {
                    if f.get(&format!("/Observation/{id}")).await.0 == 200 {
                        n += 1;
                    }
                }
            }
            n
        };
        let (results, served) = tokio::join!(c.submit_many(&flood), reads);
        let results = results.unwrap();
        let admitted = results.iter().filter(|r| r.status == "committed").count();
        let overloaded = results
            .iter()
            .filter(|r| r.error.as_ref().is_some_and(|e| e.code == "overloaded"))
            .count();
        assert!(
            admitted <= medledger_node::http::v1::MAX_NEW_SIGNERS_PER_REQUEST,
            "{admitted} unknown keys admitted"
        );
        assert_eq!(admitted + overloaded, flood.len());
        assert_eq!(served, 60);
        let mut reported = 0;
        for _ in 0..100 {
            reported = 0;
            for id in &ids {
                reported += allowed_reads(&h, &dir, id, &doctor_id).await;
            }
            if reported >= served {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Every served read is reported, once.
        assert_eq!(reported, served, "reads served vs reported");
    });
    node.stop();
}
