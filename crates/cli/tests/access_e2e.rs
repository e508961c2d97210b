//! Issue 12 regressions against the real binary, tried as a hostile caller would: each
//! test names the defect it reproduces and fails on the code before the fix.
//!
//! - `/v1` queries answered anyone (defect 3);
//! - FHIR search counted and paged records the caller may not read, so `_count=0`
//!   and `next` links answered questions about other patients' data (defect 2);
//! - a transaction Bundle `PUT` moved a resource to another patient (defect 8);
//! - bodies were buffered before the caller was known (defect 5);
//! - an API token outlived the role that allowed it (defect 9);
//! - a multi-byte character in a date panicked and dropped the connection, `POST
//!   /fhir/` and unrouted paths answered empty 404s, and a corrupt blob answered a
//!   retryable 503 and failed the patient's whole `$everything` (defect 10).

mod common;
use common::fhir::Fhir;
use common::signin::*;
use common::*;
use serde_json::{Value, json};

fn next_link(b: &Value) -> Option<String> {
    b["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == "next")
        .and_then(|l| l["url"].as_str())
        .map(str::to_owned)
}

fn entries(b: &Value) -> usize {
    b["entry"].as_array().map_or(0, |e| e.len())
}

/// The intake form of one synthetic patient with a Condition, as the doctor: the
/// Patient's id and the Condition's id.
async fn intake(f: &Fhir, family: &str, code: &str) -> (String, String) {
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:p", "resource": {"resourceType": "Patient",
            "name": [{"family": family, "given": ["Testa"]}], "gender": "female", "birthDate": "1961-04-02"},
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:c", "resource": {"resourceType": "Condition",
            "subject": {"reference": "urn:uuid:p"},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}]}},
         "request": {"method": "POST", "url": "Condition"}}
    ]});
    let (st, resp) = f.post("", &bundle).await;
    assert_eq!(st, 200, "{resp}");
    let id = |i: usize| {
        resp["entry"][i]["response"]["location"]
            .as_str()
            .unwrap()
            .split('/')
            .nth(1)
            .unwrap()
            .to_owned()
    };
    (id(0), id(1))
}

#[test]
fn hostile_callers_learn_nothing_and_change_nothing() {
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
        let f = Fhir { c: h.c.clone(), url: node.url.clone(), token: doctor.clone() };
        let spy = Fhir { c: h.c.clone(), url: node.url.clone(), token: insurer.clone() };
        let (pid, cond) = intake(&f, "Quixwell", "44054006").await;
        let (pid2, _) = intake(&f, "Brandt", "38341003").await;

        // ---- defect 3: the /v1 query surface needs an identified caller ------------
        let did = insurer_id.to_did();
        for path in [
            "/v1/audit?from=0".to_owned(),
            format!("/v1/audit?accessor={did}"),
            format!("/v1/patients/{did}/records"),
            format!("/v1/patients/{did}/grants"),
            format!("/v1/patients/{did}/break-glass"),
            format!("/v1/patients/{did}/agreements"),
            format!("/v1/accounts/{did}/inbox"),
            format!("/v1/accounts/{did}"),
            "/v1/orgs/general".to_owned(),
            format!("/v1/records/{cond}"),
            format!("/v1/decision?account={did}&record={cond}&purpose=payment"),
            "/v1/blocks/1".to_owned(),
            format!("/v1/tx/{}", "ab".repeat(32)),
            "/v1/totals".to_owned(),
            "/v1/due".to_owned(),
        ] {
            let (st, v) = h.get(&path, &[]).await;
            assert_eq!((st, v["error"]["code"].as_str()), (401, Some("unauthenticated")), "{path}: {v}");
        }
        // `POST /fhir/` (the base URL with a slash) needs a signed-in person too.
        let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": []});
        let (st, oo) = Fhir { c: h.c.clone(), url: node.url.clone(), token: "mlt_wrong".into() }.post("/", &batch).await;
        assert_eq!((st, oo["resourceType"].as_str()), (401, Some("OperationOutcome")), "{oo}");
        for path in ["/health", "/v1/status", "/v1/tree-head", "/v1/openapi.json"] {
            assert_eq!(h.get(path, &[]).await.0, 200, "{path} is public");
        }
        // Identified but not entitled: absent, exactly like something that is not there.
        let bearer = format!("Bearer {insurer}");
        let auth = [("authorization", bearer.as_str())];
        let (st, v) = h.get(&format!("/v1/records/{cond}"), &auth).await;
        let (st2, v2) = h.get(&format!("/v1/records/{}", "0".repeat(64)), &auth).await;
        assert_eq!((st, &v), (st2, &v2));
        assert_eq!(st, 404);
        let (st, v) = h.get("/v1/orgs/general", &auth).await;
        assert_eq!(st, 404, "membership (patients included) is for the org's admins: {v}");

        // ---- defect 5: no body is taken in before the caller is known --------------
        let big = vec![b' '; 8 * 1024 * 1024];
        let r = h.c.post(format!("{}/fhir/Observation", node.url))
            .header("content-type", "application/fhir+json").body(big.clone()).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "an anonymous 8 MiB upload must be refused as unauthenticated");
        let r = h.c.post(format!("{}/v1/tx", node.url))
            .header("content-type", "application/json").body(big).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 413, "one transaction's body is bounded by what a transaction can be");

        // ---- defect 2: search reveals nothing before it decides --------------------
        // With no consent, a probe for a code the patient has and for one they do not
        // have answer exactly alike: no entries and no `next` link, even with _count=0.
        for probe in [
            format!("/Condition?patient={pid}&code=http://snomed.info/sct|44054006&_count=0"),
            format!("/Condition?patient={pid}&_count=0"),
            format!("/Condition?patient={pid}&_count=0&_offset=0"),
            "/Patient?family=Quix&_count=0".to_owned(),
            "/Patient?family=Q&_count=0".to_owned(),
            "/Patient?birthdate=lt1962&_count=0".to_owned(),
            "/Patient?_count=0".to_owned(),
            "/Condition?_count=0".to_owned(),
        ] {
            let (st, b) = spy.get(&probe).await;
            assert_eq!(st, 200, "{probe}: {b}");
            assert_eq!((entries(&b), next_link(&b)), (0, None), "{probe} revealed a match: {b}");
        }
        // The doctor, who may read, does see the match behind `next`.
        let (_, b) = f.get(&format!("/Condition?patient={pid}&code=http://snomed.info/sct|44054006&_count=0")).await;
        assert!(next_link(&b).is_some(), "{b}");
        let (_, b) = f.get("/Patient?family=Quix").await;
        assert_eq!(entries(&b), 1, "{b}");
        // The refused probes are on the patient's audit trail.
        let mut refused = 0;
        for _ in 0..50 {
            let (_, a) = h.get_as_admin(&dir, &format!("/v1/audit?record={cond}")).await;
            refused = a["entries"].as_array().map_or(0, |a| {
                a.iter().filter(|e| e["accessor"] == json!(insurer_id) && e["allowed"] == false).count()
            });
            if refused > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(refused > 0, "search probes on the Condition were not audited");
        // The insurer sees their own trail, and nothing of anyone else's.
        let (_, v) = h.get("/v1/audit?from=0", &auth).await;
        let mine = v["entries"].as_array().unwrap();
        assert!(!mine.is_empty() && mine.iter().all(|e| e["accessor"] == json!(insurer_id)), "{v}");
        // Type history by a caller with no access lists nothing (and reads nothing).
        let (st, b) = spy.get("/Condition/_history").await;
        assert_eq!((st, entries(&b)), (200, 0), "{b}");

        // ---- defect 8: a transaction Bundle PUT cannot move a resource -------------
        let (_, current) = f.get(&format!("/Condition/{cond}")).await;
        let mut moved = current.clone();
        moved["subject"]["reference"] = json!(format!("Patient/{pid2}"));
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": moved, "request": {"method": "PUT", "url": format!("Condition/{cond}")}}]});
        let (st, oo) = f.post("", &bundle).await;
        assert_eq!((st, oo["issue"][0]["code"].as_str()), (400, Some("business-rule")), "{oo}");
        let (_, after) = f.get(&format!("/Condition/{cond}")).await;
        assert_eq!(after, current, "the refused move changed the resource");
        let (_, b) = f.get(&format!("/Condition?patient={pid2}")).await;
        assert_eq!(entries(&b), 1, "{b}");
        assert_ne!(b["entry"][0]["resource"]["id"], json!(cond), "the resource moved to the other patient");

        // ---- defect 10: bad input gets an answer, never a dropped connection -------
        for bad in ["/Observation?date=2020-01-01T00%3A0%C3%A9", "/Patient?birthdate=1961-0%C3%A9"] {
            let (st, oo) = f.get(bad).await;
            assert_eq!((st, oo["resourceType"].as_str()), (400, Some("OperationOutcome")), "{bad}: {oo}");
        }
        let c = json!({"resourceType": "Condition", "subject": {"reference": format!("Patient/{pid}")},
            "code": {"text": "x"}, "onsetDateTime": "2020-01-01T00:0\u{e9}"});
        let (st, oo) = f.post("/Condition", &c).await;
        assert_eq!((st, oo["resourceType"].as_str()), (400, Some("OperationOutcome")), "{oo}");
        let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": format!("Condition/{cond}")}}]});
        let (st, b) = f.post("/", &batch).await;
        assert_eq!((st, b["type"].as_str()), (200, Some("batch-response")), "POST /fhir/: {b}");
        for path in ["/Patient/x/y/z/w", "/no-such-thing/a/b/c"] {
            let (st, oo) = f.get(path).await;
            assert_eq!((st, oo["resourceType"].as_str()), (404, Some("OperationOutcome")), "{path}");
        }

        // ---- a corrupt blob: permanent error, left out of searches, not a 503 ------
        let (st, obs) = f.post("/Observation", &json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
            "subject": {"reference": format!("Patient/{pid}")},
            "valueQuantity": {"value": 71.5, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}})).await;
        assert_eq!(st, 201, "{obs}");
        let oid = obs["id"].as_str().unwrap().to_owned();
        let (_, reg) = h.get_as_admin(&dir, &format!("/v1/records/{oid}")).await;
        let cid: medledger_core::Cid = reg["history"][0]["cid"].as_str().unwrap().parse().unwrap();
        let blob = dir.join("blobs").join(medledger_store::BlobStore::blob_location(&cid).as_ref());
        let mut bytes = std::fs::read(&blob).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        std::fs::write(&blob, &bytes).unwrap();
        let (st, oo) = f.get(&format!("/Observation/{oid}")).await;
        assert_eq!(st, 500, "{oo}");
        assert!(oo["issue"][0]["diagnostics"].as_str().unwrap().contains("integrity"), "{oo}");
        let (st, b) = f.get(&format!("/Patient/{pid}/$everything")).await;
        assert_eq!(st, 200, "{b}");
        let types: Vec<&str> = b["entry"].as_array().unwrap().iter().map(|e| e["resource"]["resourceType"].as_str().unwrap()).collect();
        assert_eq!(types, vec!["Patient", "Condition", "OperationOutcome"], "{b}");
        assert_eq!(b["entry"][2]["search"]["mode"], "outcome");

        // ---- defect 9: an API token ends with the role that allowed it --------------
        assert_eq!(f.get(&format!("/Condition/{cond}")).await.0, 200);
        let out = std::process::Command::new(BIN)
            .args(["tx", "submit", "--node", &node.url, "--data-dir"])
            .arg(&dir)
            .arg("--password-file")
            .arg(root.path().join("pw"))
            .args(["json", &format!(r#"{{"kind":"revoke_role","org":"general","account":"{}","role":"insurer"}}"#, insurer_id.to_did())])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let (st, oo) = spy.get("/Patient?_count=1").await;
        assert_eq!((st, oo["resourceType"].as_str()), (401, Some("OperationOutcome")), "{oo}");
        let (st, _) = h.get(&format!("/v1/accounts/{did}"), &auth).await;
        assert_eq!(st, 401, "the token outlived the revoked role");
    });
    node.stop();
}

/// A client that connects from `source` (any address in 127.0.0.0/8 is local).
fn http_from(node: &Node, dir: &std::path::Path, source: &str) -> Http {
    let pem = std::fs::read(dir.join("tls/cert.pem")).unwrap();
    let c = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
        .local_address(source.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    Http {
        c,
        url: node.url.clone(),
    }
}

fn mails_to(dir: &std::path::Path, to: &str) -> usize {
    std::fs::read_dir(dir.join("outbox"))
        .map(|d| {
            d.filter(|m| {
                std::fs::read_to_string(m.as_ref().unwrap().path())
                    .unwrap_or_default()
                    .contains(&format!("To: {to}"))
            })
            .count()
        })
        .unwrap_or(0)
}

/// Issue 12 (costly work before authentication): the sign-in routes that run a
/// password KDF were limited only node-wide, so one client could spend the whole
/// node's sign-in budget and lock every other client out. Now each client address has
/// its own budget: past it, it gets 429 with `Retry-After` before anything runs (a
/// registration sends no mail), while another address is still served.
#[test]
fn one_client_address_cannot_spend_the_sign_in_budget_of_others() {
    let root = tempfile::tempdir().unwrap();
    let dir = init(root.path());
    let node = start_with(&dir, &["--client-rate", "1", "--client-burst", "4"]);
    let rt = rt();
    rt.block_on(async {
        client(&node, &dir).await;
        // The organisation to register with (set up from a third address).
        admin_signed_in(&http_from(&node, &dir, "127.0.0.3"), &dir, &node).await;
        let greedy = http_from(&node, &dir, "127.0.0.1");
        let other = http_from(&node, &dir, "127.0.0.2");
        let login = |who: &'static str| json!({"email": who, "password": "not the password at all"});

        let mut limited = None;
        for i in 0..20 {
            let resp = greedy
                .c
                .post(format!("{}/auth/login", greedy.url))
                .json(&login("nobody@nowhere.example"))
                .send()
                .await
                .unwrap();
            if resp.status().as_u16() == 429 {
                let retry = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
                let v: Value = resp.json().await.unwrap();
                limited = Some((i, retry, v));
                break;
            }
            assert_eq!(resp.status().as_u16(), 401, "attempt {i}");
        }
        let (i, retry, v) = limited.expect("the greedy client is never limited");
        assert!(i >= 4, "limited after {i} requests, before its burst of 4");
        assert_eq!(v["error"]["code"], "rate_limited", "{v}");
        assert!(retry.is_some_and(|r| r.parse::<u64>().is_ok_and(|s| s >= 1)));

        // Over its budget, a registration is refused before it runs: no mail is sent.
        let reg = json!({"name": "Late Comer", "email": "late@hospital.example", "password": STRONG, "org": "general", "role": "doctor"});
        let (st, v, _) = greedy.post("/auth/register", reg.clone(), None).await;
        assert_eq!((st, v["error"]["code"].as_str()), (429, Some("rate_limited")), "{v}");
        assert_eq!(mails_to(&dir, "late@hospital.example"), 0);

        // Another address keeps its own budget.
        let (st, v, _) = other.post("/auth/login", login("nobody@nowhere.example"), None).await;
        assert_eq!((st, v["error"]["code"].as_str()), (401, Some("bad_credentials")), "{v}");
        let (st, v, _) = other.post("/auth/register", reg, None).await;
        assert_eq!(st, 201, "{v}");
        assert_eq!(mails_to(&dir, "late@hospital.example"), 1);
    });
    node.stop();
}
