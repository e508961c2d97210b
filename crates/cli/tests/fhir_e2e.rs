//! The FHIR R4 API of the real binary: all 13 Synthea bundles through `medledger
//! import`, every resource read back equal in content with references rewritten to
//! server ids; the intake form as one transaction Bundle; search with paging;
//! update/vread/history/delete; refusals (invalid resources, malformed JSON, an
//! all-or-nothing transaction, another role's reads) that change nothing and are
//! audited; `$everything` and `medledger export`. Every resource the server returned
//! is checked by two independent validators: PyPI `fhirclient` (R4 models) and npm
//! `fhir` (`validate` with `errorOnUnexpected`).

mod common;
use common::fhir::Fhir;
use common::signin::*;
use common::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

fn samples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fhir-samples/synthea-r4")
}

/// Content without the server's parts, for comparison.
fn content(mut v: Value) -> Value {
    let o = v.as_object_mut().unwrap();
    o.remove("id");
    o.remove("meta");
    v
}

fn rewrite(v: &mut Value, map: &HashMap<String, String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                if k == "reference"
                    && let Value::String(s) = x
                    && let Some(n) = map.get(s.as_str())
                {
                    *s = n.clone();
                } else {
                    rewrite(x, map);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rewrite(x, map)),
        _ => {}
    }
}

/// The writer's nonce: every FHIR write is a transaction signed by the writer, so an
/// unchanged nonce means nothing was written (the node's own audit reports keep
/// adding blocks meanwhile, so the height is no measure).
fn nonce(dir: &Path, node: &Node, account: &medledger_core::AccountId) -> u64 {
    let out = succeed(
        Command::new(BIN)
            .args([
                "query",
                &format!("accounts/{}", account.to_did()),
                "--node",
                &node.url,
                "--data-dir",
            ])
            .arg(dir)
            .arg("--password-file")
            .arg(dir.parent().unwrap().join("pw")),
    );
    serde_json::from_slice::<Value>(&out.stdout).unwrap()["nonce"]
        .as_u64()
        .unwrap()
}

const PY_VALIDATE: &str = r#"
import importlib, json, sys
bad = 0
rs = json.load(open(sys.argv[1]))
for r in rs:
    t = r["resourceType"]
    try:
        getattr(importlib.import_module("fhirclient.models." + t.lower()), t)(r)
    except Exception as e:
        bad += 1
        print(t, str(e)[:400])
print("checked", len(rs), "failed", bad)
sys.exit(1 if bad or not rs else 0)
"#;

const JS_VALIDATE: &str = r#"
const { Fhir } = require('fhir');
const fhir = new Fhir();
const rs = JSON.parse(require('fs').readFileSync(process.argv[2]));
let bad = 0;
for (const r of rs) {
  const res = fhir.validate(r, { errorOnUnexpected: true });
  if (!res.valid) { bad++; console.log(r.resourceType, JSON.stringify(res.messages.filter(m => m.severity === 'error')).slice(0, 400)); }
}
console.log('checked', rs.length, 'failed', bad);
process.exit(bad || rs.length === 0 ? 1 : 0);
"#;

/// Both independent validators over every resource in `returned`.
fn validate_all(root: &Path, returned: &[Value]) {
    let file = root.join("returned.json");
    std::fs::write(&file, serde_json::to_vec(returned).unwrap()).unwrap();
    let py = root.join("validate.py");
    std::fs::write(&py, PY_VALIDATE).unwrap();
    let out = Command::new("python3")
        .arg(&py)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fhirclient (pip install fhirclient):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let modules =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/npm-fhir/node_modules");
    assert!(
        modules.join("fhir").exists(),
        "npm package fhir missing: npm install --prefix target/npm-fhir fhir@4.12.0 (.ci/run does this)"
    );
    let js = root.join("validate.js");
    std::fs::write(&js, JS_VALIDATE).unwrap();
    let out = Command::new("node")
        .arg(&js)
        .arg(&file)
        .env("NODE_PATH", &modules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "npm fhir:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn fhir_api_end_to_end() {
    let root = tempfile::tempdir().unwrap();
    let dir = init(root.path());
    let node = start(&dir);
    let rt = rt();
    rt.block_on(async {
        client(&node, &dir).await;
        let h = http(&node, &dir);
        let admin = admin_signed_in(&h, &dir, &node).await;
        let (doctor, doctor_id) = staff_token(&h, &dir, &admin, "Dana Doctor", "dana@hospital.example", "doctor").await;
        let (insurer, insurer_id) = staff_token(&h, &dir, &admin, "Ivan Insurer", "ivan@insurer.example", "insurer").await;
        let f = Fhir { c: h.c.clone(), url: node.url.clone(), token: doctor.clone() };
        let other = Fhir { c: h.c.clone(), url: node.url.clone(), token: insurer };
        let mut returned: Vec<Value> = Vec::new();

        // The CapabilityStatement.
        let (st, cap) = f.get("/metadata").await;
        assert_eq!(st, 200);
        assert_eq!(cap["fhirVersion"], "4.0.1");
        returned.push(cap);

        // No token, or a wrong one: 401 with an OperationOutcome.
        let anon = Fhir { c: h.c.clone(), url: node.url.clone(), token: "mlt_wrong".into() };
        let (st, oo) = anon.get("/Patient").await;
        assert_eq!((st, oo["resourceType"].as_str()), (401, Some("OperationOutcome")));

        // Import all 13 bundles with the CLI.
        let map_file = root.path().join("map.json");
        let out = succeed(
Command::new(BIN)
            .args(["import"])
            .arg(samples())
            .arg("--map")
            .arg(&map_file)
            .args(["--node", &node.url, "--data-dir"])
            .arg(&dir)
            .env("MEDLEDGER_TOKEN", &doctor),
);
        let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!((summary["imported"].as_u64(), summary["failed"].as_u64()), (Some(13), Some(0)), "{summary}");
        let imported: Vec<Value> = serde_json::from_slice(&std::fs::read(&map_file).unwrap()).unwrap();
        assert_eq!(imported.len(), 13);

        // Every resource comes back equal in content, references rewritten: to the
        // entries of its own bundle, or (Synthea refers across files) of a bundle
        // imported before it.
        let mut n = 0;
        let mut patients = Vec::new();
        let mut earlier: HashMap<String, String> = HashMap::new();
        for f_map in &imported {
            let file = samples().join(f_map["file"].as_str().unwrap());
            let local: HashMap<String, String> = serde_json::from_value(f_map["entries"].clone()).unwrap();
            let mut map = earlier.clone();
            map.extend(local.clone());
            let b: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
            assert_eq!(local.len(), b["entry"].as_array().unwrap().len());
            earlier.extend(local);
            for e in b["entry"].as_array().unwrap() {
                let loc = &map[e["fullUrl"].as_str().unwrap()];
                let (st, got) = f.get(&format!("/{loc}")).await;
                assert_eq!(st, 200, "{loc}: {got}");
                assert_eq!(got["meta"]["versionId"], "1");
                let mut want = e["resource"].clone();
                rewrite(&mut want, &map);
                assert_eq!(content(got.clone()), content(want), "{loc} differs");
                if loc.starts_with("Patient/") {
                    patients.push(loc.trim_start_matches("Patient/").to_owned());
                }
                returned.push(got);
                n += 1;
            }
        }
        assert_eq!(n, summary["resources"].as_u64().unwrap() as usize);
        assert_eq!(patients.len(), 11);

        // The intake form: a Patient and weight/height vital signs in one transaction.
        let vital = |code: &str, display: &str, value: f64, unit: &str| json!({
            "fullUrl": format!("urn:uuid:obs-{code}"),
            "resource": {"resourceType": "Observation", "status": "final",
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
                "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
                "subject": {"reference": "urn:uuid:intake-patient"},
                "effectiveDateTime": "2026-11-25T10:00:00Z",
                "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}},
            "request": {"method": "POST", "url": "Observation"}});
        let intake = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:intake-patient", "resource": {"resourceType": "Patient",
                "name": [{"family": "Testperson", "given": ["Synthia"]}], "gender": "female", "birthDate": "1980-02-29",
                "telecom": [{"system": "phone", "value": "+1-555-0100"}, {"system": "email", "value": "synthia@example.invalid"}],
                "address": [{"line": ["1 Test Street"], "city": "Exampleville", "postalCode": "00000"}]},
             "request": {"method": "POST", "url": "Patient"}},
            vital("29463-7", "Body weight", 61.5, "kg"),
            vital("8302-2", "Body height", 168.0, "cm"),
        ]});
        let (st, resp) = f.post("", &intake).await;
        assert_eq!(st, 200, "{resp}");
        assert_eq!(resp["type"], "transaction-response");
        let pid = resp["entry"][0]["response"]["location"].as_str().unwrap().split('/').nth(1).unwrap().to_owned();
        let (st, found) = f.get(&format!("/Observation?patient=Patient/{pid}&code=http://loinc.org|29463-7")).await;
        assert_eq!(st, 200);
        let hits = found["entry"].as_array().unwrap();
        assert_eq!(hits.len(), 1, "{found}");
        assert_eq!(hits[0]["resource"]["valueQuantity"]["unit"], "kg");
        assert_eq!(hits[0]["resource"]["subject"]["reference"], format!("Patient/{pid}"));
        returned.push(found.clone());
        let (st, found) = f.get("/Patient?name=synth&birthdate=ge1980-01-01&birthdate=lt1981").await;
        assert_eq!(st, 200);
        assert_eq!(found["entry"].as_array().unwrap().len(), 1, "{found}");
        let (_, found) = f.get("/Patient?name=synth&birthdate=lt1980").await;
        assert_eq!(found["entry"].as_array().unwrap().len(), 0, "{found}");

        // Paging through one Synthea patient's observations.
        let mut next = Some(format!("/Observation?patient={}&_count=7", patients[0]));
        let (mut pages, mut seen) = (0, Vec::new());
        while let Some(p) = next {
            let (st, page) = f.get(&p).await;
            assert_eq!(st, 200, "{page}");
            for e in page["entry"].as_array().unwrap() {
                seen.push(e["resource"]["id"].as_str().unwrap().to_owned());
            }
            next = page["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next")
                .map(|l| l["url"].as_str().unwrap().split("/fhir").nth(1).unwrap().to_owned());
            returned.push(page);
            pages += 1;
        }
        let mut dedup = seen.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), seen.len(), "a resource appeared on two pages");
        assert!(pages > 1 && seen.len() > 7, "{pages} pages, {} resources", seen.len());

        // Update, vread, history, delete.
        let (_, mut p) = f.get(&format!("/Patient/{pid}")).await;
        p["gender"] = json!("other");
        let (st, p2) = f.send(reqwest::Method::PUT, &format!("/Patient/{pid}"), Some(&p)).await;
        assert_eq!(st, 200, "{p2}");
        assert_eq!(p2["meta"]["versionId"], "2");
        let (st, v1) = f.get(&format!("/Patient/{pid}/_history/1")).await;
        assert_eq!((st, v1["gender"].as_str()), (200, Some("female")));
        let (st, hist) = f.get(&format!("/Patient/{pid}/_history")).await;
        assert_eq!((st, hist["entry"].as_array().unwrap().len()), (200, 2));
        returned.extend([p2, v1, hist]);

        // Refusals change nothing: invalid resource, malformed JSON, a transaction
        // with one bad entry, a wrong If-Match.
        let before = nonce(&dir, &node, &doctor_id);
        let (st, oo) = f.post("/Patient", &json!({"resourceType": "Patient", "gender": "m"})).await;
        assert_eq!((st, oo["resourceType"].as_str()), (400, Some("OperationOutcome")));
        returned.push(oo);
        let resp = f.c.post(format!("{}/fhir/Patient", node.url)).bearer_auth(&doctor)
            .header("content-type", "application/fhir+json").body("{\"resourceType\": ").send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 400);
        let mut bad = intake.clone();
        bad["entry"][2]["resource"]["status"] = json!("done");
        let (st, oo) = f.post("", &bad).await;
        assert_eq!(st, 400, "{oo}");
        assert!(oo["issue"][0]["expression"][0].as_str().unwrap().starts_with("Bundle.entry[2]"), "{oo}");
        let (st, _) = f.send(reqwest::Method::PUT, &format!("/Patient/{pid}"), Some(&json!({"resourceType": "Patient", "id": pid, "gender": "x"}))).await;
        assert_eq!(st, 400);
        // An update may not move a resource into another patient's record.
        let mut moved = hits[0]["resource"].clone();
        moved["subject"]["reference"] = json!(format!("Patient/{}", patients[0]));
        let (st, oo) = f.send(reqwest::Method::PUT, &format!("/Observation/{}", moved["id"].as_str().unwrap()), Some(&moved)).await;
        assert_eq!((st, oo["issue"][0]["code"].as_str()), (400, Some("business-rule")), "{oo}");
        returned.push(oo);
        assert_eq!(nonce(&dir, &node, &doctor_id), before, "a refused write reached the ledger");
        let (_, found) = f.get("/Patient?name=synth").await;
        assert_eq!(found["entry"].as_array().unwrap().len(), 1);

        // Another role without consent: the read answers exactly like a read of a
        // resource that does not exist; left out of searches; audited.
        let (st, oo) = other.get(&format!("/Patient/{pid}")).await;
        assert_eq!((st, oo["resourceType"].as_str()), (404, Some("OperationOutcome")));
        assert_eq!((st, &oo), (404, &other.get(&format!("/Patient/{}", "a".repeat(64))).await.1));
        let (st, found) = other.get("/Patient?name=synth").await;
        assert_eq!(st, 200);
        assert_eq!(found["entry"].as_array().unwrap().len(), 0);
        let (st, oo) = other.post("/Observation", &json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": format!("Patient/{pid}")}})).await;
        assert_eq!(st, 403, "{oo}");
        let mut refused = 0;
        for _ in 0..50 {
            let (_, audit) = h.get_as_admin(&dir, &format!("/v1/audit?record={pid}")).await;
            refused = audit["entries"].as_array().map_or(0, |a| a.iter()
                .filter(|e| e["accessor"] == json!(insurer_id) && e["allowed"] == false).count());
            if refused >= 2 { break; }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(refused >= 2, "refused reads were not audited");

        // $everything and export.
        let (st, all) = f.get(&format!("/Patient/{pid}/$everything")).await;
        assert_eq!(st, 200);
        assert_eq!(all["entry"].as_array().unwrap().len(), 3, "{all}");
        returned.push(all);
        let out = succeed(
Command::new(BIN)
            .args(["export", "--patient", &patients[0], "--node", &node.url, "--data-dir"])
            .arg(&dir)
            .env("MEDLEDGER_TOKEN", &doctor),
);
        let exported: Value = serde_json::from_slice(&out.stdout).unwrap();
        let types: BTreeMap<String, usize> = exported["entry"].as_array().unwrap().iter().fold(BTreeMap::new(), |mut m, e| {
            *m.entry(e["resource"]["resourceType"].as_str().unwrap().to_owned()).or_default() += 1;
            m
        });
        assert!(types.get("Observation").copied().unwrap_or(0) > 7 && types.contains_key("Claim"), "{types:?}");

        // Delete: reads say Gone, searches leave it out, history keeps it.
        let (st, _) = f.send(reqwest::Method::DELETE, &format!("/Patient/{pid}"), None).await;
        assert_eq!(st, 204);
        let (st, oo) = f.get(&format!("/Patient/{pid}")).await;
        assert_eq!((st, oo["resourceType"].as_str()), (410, Some("OperationOutcome")));
        let (_, found) = f.get("/Patient?name=synth").await;
        assert_eq!(found["entry"].as_array().unwrap().len(), 0);
        let (_, hist) = f.get(&format!("/Patient/{pid}/_history")).await;
        assert_eq!(hist["entry"].as_array().unwrap().len(), 3);
        returned.push(hist);

        validate_all(root.path(), &returned);
    });
    node.stop();
}

/// Polls `path` until `done` holds for the answer (audit reports commit in batches).
async fn poll(f: &Fhir, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..100 {
        let (st, v) = f.get(path).await;
        assert_eq!(st, 200, "{path}: {v}");
        if done(&v) {
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{path}: condition never held");
}

fn entries(b: &Value) -> Vec<Value> {
    b["entry"].as_array().map_or(Vec::new(), |e| {
        e.iter().map(|e| e["resource"].clone()).collect()
    })
}

/// Consent resources are ledger grants (create grants, `inactive` revokes, reads show
/// the ledger); AuditEvent and Provenance are read-only views of the audit trail and
/// of authorship. Every answer passes both validators.
#[test]
fn consent_grants_audit_events_and_provenance() {
    let root = tempfile::tempdir().unwrap();
    let dir = init(root.path());
    let node = start(&dir);
    let rt = rt();
    rt.block_on(async {
        client(&node, &dir).await;
        let h = http(&node, &dir);
        let admin = admin_signed_in(&h, &dir, &node).await;
        let (doctor, _) = staff_token(&h, &dir, &admin, "Dana Doctor", "dana@hospital.example", "doctor").await;
        let (insurer, insurer_id) = staff_token(&h, &dir, &admin, "Ivan Insurer", "ivan@insurer.example", "insurer").await;
        // A patient who signs in themselves (invited), with an API token.
        let (st, v, _) = h.post("/auth/invite", json!({"email": "pat@home.example"}), Some(&admin)).await;
        assert_eq!(st, 201, "{v}");
        let invite = mail_token(&dir, "pat@home.example", "invite");
        let (st, v, _) = h
            .post("/auth/register", json!({"name": "Pat Synthetic", "email": "pat@home.example", "password": STRONG, "invite": invite}), None)
            .await;
        assert_eq!(st, 201, "{v}");
        let patient_id: medledger_core::AccountId = serde_json::from_value(v["account"].clone()).unwrap();
        verify(&h, &dir, "pat@home.example").await;
        let (s, _) = h.login("pat@home.example", STRONG, None).await.unwrap();
        let (st, v, _) = h.post("/auth/tokens", json!({"ttl_s": 3600}), Some(&s)).await;
        assert_eq!(st, 201);
        let fhir = |token: &str| Fhir { c: h.c.clone(), url: node.url.clone(), token: token.to_owned() };
        let (pat, ins, doc) = (fhir(v["token"].as_str().unwrap()), fhir(&insurer), fhir(&doctor));
        let mut returned: Vec<Value> = Vec::new();

        // The patient's own Patient resource and an Observation they record.
        let (st, me) = pat.post("/Patient", &json!({"resourceType": "Patient", "name": [{"family": "Synthetic", "given": ["Pat"]}], "gender": "other"})).await;
        assert_eq!(st, 201, "{me}");
        let pid = me["id"].as_str().unwrap().to_owned();
        let (st, obs) = pat.post("/Observation", &json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
            "subject": {"reference": format!("Patient/{pid}")},
            "valueQuantity": {"value": 61.5, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}})).await;
        assert_eq!(st, 201, "{obs}");
        let oid = obs["id"].as_str().unwrap().to_owned();
        let (st, _) = ins.get(&format!("/Observation/{oid}")).await;
        assert_eq!(st, 404, "no consent yet: refused looks like absent");

        // A Consent for the insurer: payment, Observations only, until 2099.
        let consent = json!({"resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": format!("Patient/{pid}")},
            "policy": [{"uri": "urn:medledger:consent-grant"}],
            "provision": {"type": "permit", "period": {"end": "2099-12-31"},
                "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                           "reference": {"identifier": {"system": "urn:medledger:account", "value": insurer_id.to_did()}}}],
                "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HPAYMT"}],
                "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}]}});

        // Refusals change nothing: staff cannot consent for a patient; elements a
        // grant cannot keep, a missing end, a deny provision are 400s.
        let before = nonce(&dir, &node, &patient_id);
        let (st, oo) = doc.post("/Consent", &consent).await;
        assert_eq!((st, oo["resourceType"].as_str()), (403, Some("OperationOutcome")), "{oo}");
        let mut extra = consent.clone();
        extra["sourceAttachment"] = json!({"contentType": "application/pdf", "data": "AAAA"});
        let mut no_end = consent.clone();
        no_end["provision"]["period"] = json!({"start": "2026-01-01"});
        let mut deny = consent.clone();
        deny["provision"]["type"] = json!("deny");
        let mut bad_purpose = consent.clone();
        bad_purpose["provision"]["purpose"][0]["code"] = json!("ETREAT");
        for bad in [extra, no_end, deny, bad_purpose] {
            let (st, oo) = pat.post("/Consent", &bad).await;
            assert_eq!((st, oo["resourceType"].as_str()), (400, Some("OperationOutcome")), "{oo}");
            returned.push(oo);
        }
        assert_eq!(nonce(&dir, &node, &patient_id), before, "a refused Consent reached the ledger");

        let (st, c) = pat.post("/Consent", &consent).await;
        assert_eq!(st, 201, "{c}");
        assert_eq!((c["status"].as_str(), c["meta"]["versionId"].as_str()), (Some("active"), Some("1")));
        let cid = c["id"].as_str().unwrap().to_owned();
        // The ledger holds exactly this grant.
        let (_, grants) = h.get_as_admin(&dir, &format!("/v1/patients/{}/grants", patient_id.to_did())).await;
        let g = grants["grants"].as_array().unwrap().iter().find(|g| g["id"] == json!(cid)).cloned()
            .unwrap_or_else(|| panic!("grant {cid} not on the ledger: {grants}"));
        assert!(g["revoked_ms"].is_null(), "{g}");
        assert_eq!(g["purpose"], "payment");
        assert!(g["scope"].to_string().contains("Observation"), "{g}");
        returned.push(c.clone());
        let (st, ob) = ins.get(&format!("/Observation/{oid}")).await;
        assert_eq!(st, 200, "consent lets the insurer read: {ob}");
        returned.push(ob);
        let (st, p) = ins.get(&format!("/Patient/{pid}")).await;
        assert_eq!(st, 404, "the grant covers Observations only: {p}");
        // Who sees the Consent: the patient, the grantee; not an unrelated doctor.
        let (st, c2) = ins.get(&format!("/Consent/{cid}")).await;
        assert_eq!((st, &c2), (200, &c));
        assert_eq!(doc.get(&format!("/Consent/{cid}")).await.0, 404);
        let (st, found) = pat.get(&format!("/Consent?patient={pid}")).await;
        assert_eq!(st, 200);
        assert_eq!(entries(&found).len(), 1);
        returned.push(found);

        // Only status can change, and only to inactive: that revokes on the ledger.
        let mut changed = c.clone();
        changed["provision"]["period"]["end"] = json!("2100-01-01");
        let (st, oo) = pat.send(reqwest::Method::PUT, &format!("/Consent/{cid}"), Some(&changed)).await;
        assert_eq!(st, 400, "{oo}");
        let mut off = c.clone();
        off["status"] = json!("inactive");
        let (st, oo) = ins.send(reqwest::Method::PUT, &format!("/Consent/{cid}"), Some(&off)).await;
        assert_eq!(st, 403, "only the patient revokes: {oo}");
        let (st, revoked) = pat.send(reqwest::Method::PUT, &format!("/Consent/{cid}"), Some(&off)).await;
        assert_eq!(st, 200, "{revoked}");
        assert_eq!((revoked["status"].as_str(), revoked["meta"]["versionId"].as_str()), (Some("inactive"), Some("2")));
        let (_, g) = h.get_as_admin(&dir, &format!("/v1/grants/{cid}")).await;
        assert!(g["revoked_ms"].as_u64().is_some(), "revoked on the ledger: {g}");
        assert_eq!(ins.get(&format!("/Observation/{oid}")).await.0, 404, "revoked");
        let (_, again) = pat.get(&format!("/Consent/{cid}")).await;
        assert_eq!(again, revoked);
        returned.push(revoked);

        // AuditEvent: the patient sees every access to their records, allowed and
        // refused, as the ledger recorded it.
        let trail = poll(&pat, "/AuditEvent?_count=50", |b| {
            let e = entries(b);
            e.iter().filter(|a| a["outcome"] == "4").count() >= 3 && e.iter().any(|a| a["outcome"] == "0")
        })
        .await;
        let events = entries(&trail);
        let insurer_ref = json!({"identifier": {"system": "urn:medledger:account", "value": insurer_id.to_did()}});
        assert!(events.iter().any(|a| a["agent"][0]["who"] == insurer_ref
            && a["outcome"] == "0"
            && a["entity"][0]["what"]["reference"] == json!(format!("Observation/{oid}"))), "{trail}");
        returned.push(trail.clone());
        let one = events[0]["id"].as_str().unwrap();
        let (st, ev) = pat.get(&format!("/AuditEvent/{one}")).await;
        assert_eq!((st, &ev), (200, &events[0]));
        returned.push(ev);
        // The insurer sees only its own accesses; a doctor who touched nothing, none.
        let (_, theirs) = ins.get(&format!("/AuditEvent?patient={pid}&_count=50")).await;
        assert!(!entries(&theirs).is_empty());
        assert!(entries(&theirs).iter().all(|a| a["agent"][0]["who"] == insurer_ref), "{theirs}");
        assert_eq!(doc.get(&format!("/AuditEvent/{one}")).await.0, 404);
        // Paging through the trail: pages of one, no duplicates, same set.
        let mut seen = Vec::new();
        let mut next = Some(format!("/AuditEvent?entity=Observation/{oid}&_count=1"));
        while let Some(path) = next {
            let (st, page) = pat.get(&path).await;
            assert_eq!(st, 200, "{page}");
            seen.extend(entries(&page).into_iter().map(|e| e["id"].clone()));
            next = page["link"].as_array().and_then(|l| l.iter().find(|l| l["relation"] == "next"))
                .map(|l| l["url"].as_str().unwrap().split("/fhir").nth(1).unwrap().to_owned());
            returned.push(page);
        }
        let mut unique = seen.clone();
        unique.dedup();
        assert!(seen.len() >= 3 && unique.len() == seen.len(), "{seen:?}");
        // Read-only.
        let (st, _) = pat.post("/AuditEvent", &events[0]).await;
        assert_eq!(st, 405);

        // Provenance: who wrote the Observation, when, with the transaction's signature.
        let (st, prov) = pat.get(&format!("/Provenance?target=Observation/{oid}")).await;
        assert_eq!(st, 200, "{prov}");
        let p = entries(&prov);
        assert_eq!(p.len(), 1, "{prov}");
        assert_eq!(p[0]["target"][0]["reference"], json!(format!("Observation/{oid}/_history/1")));
        assert_eq!(p[0]["agent"][0]["who"]["identifier"]["value"], json!(patient_id.to_did()));
        let sig = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, p[0]["signature"][0]["data"].as_str().unwrap()).unwrap();
        assert_eq!(sig.len(), 64, "an Ed25519 signature");
        let (st, one) = pat.get(&format!("/Provenance/{}", p[0]["id"].as_str().unwrap())).await;
        assert_eq!((st, &one), (200, &p[0]));
        returned.extend([prov, one]);
        // After revocation the insurer may not see authorship of the record either.
        assert_eq!(ins.get(&format!("/Provenance/{}", p[0]["id"].as_str().unwrap())).await.0, 404);
        assert_eq!(pat.get("/Provenance/tx-aaaa").await.0, 404);

        // What the server says it supports, it supports.
        let (_, cap) = pat.get("/metadata").await;
        let types: Vec<&str> = cap["rest"][0]["resource"].as_array().unwrap().iter().filter_map(|r| r["type"].as_str()).collect();
        assert!(types.contains(&"Consent") && types.contains(&"AuditEvent") && types.contains(&"Provenance"));
        returned.push(cap);
        validate_all(root.path(), &returned);
    });
    node.stop();
}

/// A FHIR client that is not ours, PyPI `fhirclient`, creates, reads, searches and
/// pages through patients and observations against the node (see
/// `tests/clients/fhirclient_session.py`); what it reports is then checked here.
#[test]
fn third_party_fhirclient_session() {
    let root = tempfile::tempdir().unwrap();
    let dir = init(root.path());
    let node = start(&dir);
    let rt = rt();
    rt.block_on(async {
        client(&node, &dir).await;
        let h = http(&node, &dir);
        let admin = admin_signed_in(&h, &dir, &node).await;
        let (doctor, _) = staff_token(
            &h,
            &dir,
            &admin,
            "Dana Doctor",
            "dana@hospital.example",
            "doctor",
        )
        .await;
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/fhirclient_session.py");
        let out = succeed(
            Command::new("python3")
                .arg(&script)
                .env("FHIR_BASE", format!("{}/fhir", node.url))
                .env("FHIR_TOKEN", &doctor)
                .env("FHIR_CA", dir.join("tls/cert.pem")),
        );
        let did: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(did["pages"], 3);
        let f = Fhir::new(&h, doctor);
        let mut returned = Vec::new();
        for (t, ids, n) in [
            ("Patient", &did["patients"], 3),
            ("Observation", &did["observations"], 7),
        ] {
            let ids = ids.as_array().unwrap();
            assert_eq!(ids.len(), n);
            for id in ids {
                let (st, r) = f.get(&format!("/{t}/{}", id.as_str().unwrap())).await;
                assert_eq!((st, r["resourceType"].as_str()), (200, Some(t)), "{r}");
                returned.push(r);
            }
        }
        // What the client was given passes the npm validator too (fhirclient's own
        // models already parsed every answer).
        validate_all(root.path(), &returned);
    });
    node.stop();
}
