//! Crash-consistent search: the node is killed (SIGKILL) while FHIR creates,
//! transaction Bundles and updates are in flight; after a restart every record the
//! ledger committed, answered or not, is found by search with its latest version's
//! terms. `medledger reindex` then rebuilds the index from the ledger and the store
//! to the same answers, and refuses to run beside a live node.

use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

mod common;
use common::fhir::{Fhir, search_ids};
use common::signin::*;
use common::*;

const WEIGHT: &str = "29463-7";
const HEIGHT: &str = "8302-2";
const PULSE: &str = "8867-4";
const TEMP: &str = "8310-5";

fn obs(pid: &str, code: &str, value: f64) -> Value {
    json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": format!("Patient/{pid}")},
        "effectiveDateTime": "2026-11-25T10:00:00Z",
        "valueQuantity": {"value": value, "unit": "1", "system": "http://unitsofmeasure.org", "code": "1"}})
}

/// The patient's records as the ledger holds them (the consortium admin oversees).
async fn ledger_records(h: &Http, dir: &std::path::Path, did: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/v1/patients/{did}/records?limit=500&after={a}"),
            None => format!("/v1/patients/{did}/records?limit=500"),
        };
        let (st, v) = h.get_as_admin(dir, &path).await;
        assert_eq!(st, 200, "{v}");
        let page: Vec<String> = v["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect();
        if page.is_empty() {
            return out;
        }
        after = page.last().cloned();
        out.extend(page);
    }
}

/// Writes until the first failure (the node was killed); returns nothing: what
/// committed is read back from the ledger, answered or not.
async fn creates(f: Fhir, pid: String) {
    for i in 0.. {
        let st = try_send(
            &f,
            reqwest::Method::POST,
            "/Observation",
            &obs(&pid, WEIGHT, i as f64),
        )
        .await;
        if st != Some(201) {
            return;
        }
    }
}

async fn bundles(f: Fhir, pid: String) {
    for i in 0.. {
        let entry = |v: f64| json!({"resource": obs(&pid, HEIGHT, v), "request": {"method": "POST", "url": "Observation"}});
        let b = json!({"resourceType": "Bundle", "type": "transaction",
            "entry": [entry(i as f64), entry(i as f64 + 0.5)]});
        let st = try_send(&f, reqwest::Method::POST, "", &b).await;
        if st != Some(200) {
            return;
        }
    }
}

/// Updates one Observation, alternating its code between PULSE and TEMP.
async fn updates(f: Fhir, pid: String, id: String) {
    for i in 1.. {
        let mut o = obs(&pid, if i % 2 == 0 { PULSE } else { TEMP }, i as f64);
        o["id"] = json!(id);
        let st = try_send(&f, reqwest::Method::PUT, &format!("/Observation/{id}"), &o).await;
        if st != Some(200) {
            return;
        }
    }
}

/// A write that may meet a killed node: its status, or `None` when the connection
/// failed.
async fn try_send(f: &Fhir, method: reqwest::Method, path: &str, body: &Value) -> Option<u16> {
    let r =
        f.c.request(method, format!("{}/fhir{path}", f.url))
            .bearer_auth(&f.token)
            .header("content-type", "application/fhir+json")
            .body(serde_json::to_vec(body).unwrap())
            .send()
            .await
            .ok()?;
    Some(r.status().as_u16())
}

/// After a restart: every committed Observation of the patient is found by search,
/// and the updated one under its latest code only. Returns the search's answer.
async fn check(
    f: &Fhir,
    h: &Http,
    dir: &std::path::Path,
    pid: &str,
    did: &str,
    updated: &str,
    round: usize,
) -> BTreeSet<String> {
    let mut committed = ledger_records(h, dir, did).await;
    committed.remove(pid);
    let found = search_ids(f, &format!("/Observation?patient=Patient/{pid}&_count=500")).await;
    let missing: Vec<&String> = committed.difference(&found).collect();
    assert!(
        missing.is_empty(),
        "round {round}: {} committed records no search finds: {missing:?}",
        missing.len()
    );
    assert_eq!(
        found, committed,
        "round {round}: search found records the ledger does not hold"
    );
    let (st, latest) = f.get(&format!("/Observation/{updated}")).await;
    assert_eq!(st, 200);
    let code = latest["code"]["coding"][0]["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = if code == PULSE { TEMP } else { PULSE };
    let q = |c: &str| format!("/Observation?patient=Patient/{pid}&code=http://loinc.org|{c}");
    assert!(
        search_ids(f, &q(&code)).await.contains(updated),
        "round {round}: not found under its latest code {code}"
    );
    assert!(
        !search_ids(f, &q(other)).await.contains(updated),
        "round {round}: still found under an old code"
    );
    found
}

#[test]
fn search_finds_every_committed_record_after_sigkill_and_reindex_rebuilds_it() {
    let root = tempfile::tempdir().unwrap();
    let dir = init(root.path());
    let rt = rt();
    let mut node = start(&dir);
    let (token, pid, did, updated) = rt.block_on(async {
        client(&node, &dir).await;
        let h = http(&node, &dir);
        let admin = admin_signed_in(&h, &dir, &node).await;
        let (token, _) = staff_token(&h, &dir, &admin, "Dana Doctor", "dana@hospital.example", "doctor").await;
        let f = Fhir { c: h.c.clone(), url: node.url.clone(), token: token.clone() };
        let (st, p) = f
            .post("/Patient", &json!({"resourceType": "Patient", "name": [{"family": "Crashtest", "given": ["Synthia"]}]}))
            .await;
        assert_eq!(st, 201, "{p}");
        let pid = p["id"].as_str().unwrap().to_owned();
        let (_, reg) = h.get_as_admin(&dir, &format!("/v1/records/{pid}")).await;
        let did = reg["patient"].as_str().unwrap().to_owned();
        let (st, o) = f.post("/Observation", &obs(&pid, PULSE, 0.0)).await;
        assert_eq!(st, 201, "{o}");
        (token, pid, did, o["id"].as_str().unwrap().to_owned())
    });

    let mut last = BTreeSet::new();
    for round in 0..3usize {
        rt.block_on(async {
            let h = http(&node, &dir);
            let f = || Fhir::new(&h, token.clone());
            let mut tasks = Vec::new();
            for _ in 0..6 {
                tasks.push(tokio::spawn(creates(f(), pid.clone())));
            }
            for _ in 0..3 {
                tasks.push(tokio::spawn(bundles(f(), pid.clone())));
            }
            tasks.push(tokio::spawn(updates(f(), pid.clone(), updated.clone())));
            // Wait until writes are flowing, then kill the node mid-stream.
            let started = std::time::Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let n = ledger_records(&h, &dir, &did).await.len();
                if n > last.len() + 40 + round * 23 || started.elapsed() > Duration::from_secs(20) {
                    break;
                }
            }
            node.child.kill().unwrap(); // SIGKILL
            node.child.wait().unwrap();
            for t in tasks {
                t.await.unwrap();
            }
        });
        node = start(&dir);
        last = rt.block_on(async {
            client(&node, &dir).await;
            let h = http(&node, &dir);
            let f = Fhir::new(&h, token.clone());
            check(&f, &h, &dir, &pid, &did, &updated, round).await
        });
    }
    assert!(
        last.len() > 100,
        "the load never got going ({} records)",
        last.len()
    );

    // reindex refuses to run beside the live node, and changes nothing.
    let out = medledger(&["reindex"], &dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stop the node"), "{err}");
    node.stop();

    // Rebuilt from the ledger and the store, the index answers the same.
    let out = medledger(&["reindex"], &dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert!(
        report["indexed"].as_u64().unwrap() as usize > last.len(),
        "{report}"
    );
    let node = start(&dir);
    rt.block_on(async {
        client(&node, &dir).await;
        let h = http(&node, &dir);
        let f = Fhir::new(&h, token.clone());
        let found = check(&f, &h, &dir, &pid, &did, &updated, 99).await;
        assert_eq!(found, last);
        let (st, p) = f.get("/Patient?name=crashtest").await;
        assert_eq!(st, 200);
        assert_eq!(p["entry"][0]["resource"]["id"], pid.as_str(), "{p}");
    });
    node.stop();
    assert_closed_cleanly(&dir);
}

/// After a graceful stop no redb file of the node needs a full repair at the next
/// open (a walk of every page, seconds per GB at scale): each is either closed or has
/// the allocator state of its last durable commit (quick repair). Each file is opened
/// with a repair callback that records the need and aborts. (That a file is closed
/// at all is shown by the index's and audit queue's drop tests in the node crate.)
fn assert_closed_cleanly(dir: &std::path::Path) {
    let mut checked = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_none_or(|x| x != "redb") {
            continue;
        }
        let repaired = std::rc::Rc::new(std::cell::Cell::new(false));
        let flag = repaired.clone();
        let opened = redb::Builder::new()
            .set_repair_callback(move |session| {
                flag.set(true);
                session.abort();
            })
            .open(&path);
        assert!(!repaired.get(), "{} needs a full repair", path.display());
        opened.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} redb files found");
}
