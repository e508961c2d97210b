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
        // A transaction Bundle whose entry names a patient by an id that is no record
        // here (`Patient/123`, as imports from other systems do) goes to the
        // organisation's directory. When that directory did not exist yet, creating it
        // signed with the caller's key while the Bundle held the caller's nonce
        // reservation: the request waited for itself, forever, and with it every later
        // write of that person (their sign-in transactions too).
        let foreign = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
                "subject": {"reference": "Patient/123"}},
             "request": {"method": "POST", "url": "Observation"}}]});
        let answered = tokio::time::timeout(std::time::Duration::from_secs(30), f.post("", &foreign)).await;
        let (st, b) = answered.expect("a transaction Bundle hung on its own nonce reservation");
        assert_eq!(st, 200, "{b}");
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
        // Consensus RPC is not mounted on a node that was not asked for it.
        let r = h.c.post(format!("{}/raft/vote", node.url)).json(&json!({})).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 404, "/raft/* answered without --peer-rpc");
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

        // A session cookie without its CSRF token may not write through FHIR either:
        // refused as made (403), not "sign in again" (401).
        let r = h.c.post(format!("{}/fhir/Observation", node.url))
            .header("cookie", &admin.cookie)
            .header("content-type", "application/fhir+json")
            .body("{}").send().await.unwrap();
        assert_eq!(r.status().as_u16(), 403);
        let oo: Value = r.json().await.unwrap();
        assert_eq!(oo["issue"][0]["code"], "forbidden", "{oo}");

        // ---- defect 5: no body is taken in before the caller is known --------------
        let big = vec![b' '; 8 * 1024 * 1024];
        let r = h.c.post(format!("{}/fhir/Observation", node.url))
            .header("content-type", "application/fhir+json").body(big.clone()).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "an anonymous 8 MiB upload must be refused as unauthenticated");
        let r = h.c.post(format!("{}/v1/tx", node.url))
            .header("content-type", "application/json").body(big).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 413, "one transaction's body is bounded by what a transaction can be");
        // A body declared over the node-wide limit is refused before it is read, in the
        // surface's own shape: an OperationOutcome under /fhir, the JSON error elsewhere.
        let huge = vec![b' '; 25 * 1024 * 1024];
        let r = h.c.post(format!("{}/fhir/Observation", node.url)).header("authorization", &bearer)
            .header("content-type", "application/fhir+json").body(huge.clone()).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 413);
        let oo: Value = r.json().await.unwrap();
        assert_eq!((oo["resourceType"].as_str(), oo["issue"][0]["code"].as_str()), (Some("OperationOutcome"), Some("too-long")), "{oo}");
        let r = h.c.post(format!("{}/v1/txs", node.url))
            .header("content-type", "application/json").body(huge).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 413);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "too_large", "{e}");

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
        let at = medledger_store::find_stored(&dir.join("blobs"), &cid).unwrap().unwrap();
        {
            use std::os::unix::fs::FileExt;
            let file = std::fs::OpenOptions::new().read(true).write(true).open(&at.path).unwrap();
            let mut last = [0u8; 1];
            file.read_exact_at(&mut last, at.offset + at.len - 1).unwrap();
            file.write_all_at(&[last[0] ^ 0x01], at.offset + at.len - 1).unwrap();
        }
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
        admin_tx(root.path(), &dir, &node, &format!(r#"{{"kind":"revoke_role","org":"general","account":"{}","role":"insurer"}}"#, insurer_id.to_did()));
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

// ---- the access-control matrix ------------------------------------------------------

/// Submits `json` as a transaction signed by the consortium admin, through the CLI.
fn admin_tx(root: &std::path::Path, dir: &std::path::Path, node: &Node, json: &str) {
    let out = std::process::Command::new(BIN)
        .args(["tx", "submit", "--node", &node.url, "--data-dir"])
        .arg(dir)
        .arg("--password-file")
        .arg(root.join("pw"))
        .args(["json", json])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{json}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A patient invited by `admin`, registered, signed in, with an API token.
async fn patient_token(
    h: &Http,
    dir: &std::path::Path,
    admin: &Signed,
    name: &str,
    email: &str,
) -> (String, medledger_core::AccountId) {
    let (st, v, _) = h
        .post("/auth/invite", json!({"email": email}), Some(admin))
        .await;
    assert_eq!(st, 201, "{v}");
    let invite = mail_token(dir, email, "invite");
    let (st, v, _) = h
        .post(
            "/auth/register",
            json!({"name": name, "email": email, "password": STRONG, "invite": invite}),
            None,
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let account = serde_json::from_value(v["account"].clone()).unwrap();
    verify(h, dir, email).await;
    let (s, _) = h.login(email, STRONG, None).await.unwrap();
    let (st, v, _) = h
        .post("/auth/tokens", json!({"ttl_s": 3600}), Some(&s))
        .await;
    assert_eq!(st, 201, "{v}");
    (v["token"].as_str().unwrap().to_owned(), account)
}

/// A Consent by which the patient grants `grantee` treatment access until `end`.
fn treatment_consent(pid: &str, grantee: &medledger_core::AccountId, end: &str) -> Value {
    json!({"resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{pid}")},
        "policy": [{"uri": "urn:medledger:consent-grant"}],
        "provision": {"type": "permit", "period": {"end": end},
            "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                       "reference": {"identifier": {"system": "urn:medledger:account", "value": grantee.to_did()}}}],
            "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}]}})
}

/// One resource of every searchable type about `pid`, each with an identifier
/// `urn:matrix|m-<Type>`, a code and a date that the search probes below match.
fn matrix_resources(pid: &str) -> Vec<Value> {
    let subject = json!({"reference": format!("Patient/{pid}")});
    let ident = |t: &str| json!([{"system": "urn:matrix", "value": format!("m-{t}")}]);
    let cc = |system: &str, code: &str| json!({"coding": [{"system": system, "code": code}]});
    let sct = "http://snomed.info/sct";
    let loinc = "http://loinc.org";
    vec![
        json!({"resourceType": "AllergyIntolerance", "identifier": ident("AllergyIntolerance"), "patient": subject,
               "code": cc(sct, "300916003"), "recordedDate": "2021-01-02"}),
        json!({"resourceType": "Condition", "identifier": ident("Condition"), "subject": subject,
               "code": cc(sct, "44054006"), "onsetDateTime": "2021-02-03", "recordedDate": "2021-02-04"}),
        json!({"resourceType": "DiagnosticReport", "identifier": ident("DiagnosticReport"), "status": "final",
               "code": cc(loinc, "58410-2"), "subject": subject, "effectiveDateTime": "2021-03-04"}),
        json!({"resourceType": "DocumentReference", "identifier": ident("DocumentReference"), "status": "current",
               "type": cc(loinc, "34117-2"), "subject": subject, "date": "2021-04-05T10:00:00Z",
               "content": [{"attachment": {"contentType": "text/plain", "data": "bWF0cml4"}}]}),
        json!({"resourceType": "Encounter", "identifier": ident("Encounter"), "status": "finished",
               "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
               "type": [cc(sct, "185349003")], "subject": subject,
               "period": {"start": "2021-05-06T10:00:00Z", "end": "2021-05-06T11:00:00Z"}}),
        json!({"resourceType": "Immunization", "identifier": ident("Immunization"), "status": "completed",
               "vaccineCode": cc("http://hl7.org/fhir/sid/cvx", "140"), "patient": subject,
               "occurrenceDateTime": "2021-06-07"}),
        json!({"resourceType": "MedicationRequest", "identifier": ident("MedicationRequest"), "status": "active",
               "intent": "order", "medicationCodeableConcept": cc("http://www.nlm.nih.gov/research/umls/rxnorm", "313782"),
               "subject": subject, "authoredOn": "2021-07-08"}),
        json!({"resourceType": "Observation", "identifier": ident("Observation"), "status": "final",
               "category": [cc("http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs")],
               "code": cc(loinc, "29463-7"), "subject": subject, "effectiveDateTime": "2021-08-09",
               "valueQuantity": {"value": 70.5, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}}),
        json!({"resourceType": "Procedure", "identifier": ident("Procedure"), "status": "completed",
               "code": cc(sct, "80146002"), "subject": subject, "performedDateTime": "2021-09-10"}),
    ]
}

/// A search value that matches the matrix resource (or the patient) for `param`.
fn matching_value(resource: &Value, param: &medledger_fhir::search::Param, pid: &str) -> String {
    use medledger_fhir::search::Kind;
    let rtype = resource["resourceType"].as_str().unwrap();
    match (&param.kind, param.name) {
        (Kind::Patient, _) => format!("Patient/{pid}"),
        (Kind::Token, "identifier") => format!("urn:matrix|m-{rtype}"),
        (Kind::Token, "gender") => "female".into(),
        (Kind::Token, _) => {
            // The first coding under the parameter's first path.
            let mut v = &resource[param.paths[0]];
            if let Some(first) = v.as_array().and_then(|a| a.first()) {
                v = first;
            }
            let c = &v["coding"][0];
            format!(
                "{}|{}",
                c["system"].as_str().unwrap(),
                c["code"].as_str().unwrap()
            )
        }
        (Kind::Date, _) => {
            let year = param
                .paths
                .iter()
                .find_map(|p| {
                    let v = &resource[*p];
                    v.as_str()
                        .or_else(|| v["start"].as_str())
                        .map(|s| s[..4].to_owned())
                })
                .unwrap_or_else(|| panic!("{rtype}.{}: no date", param.name));
            format!("ge{year}")
        }
        (Kind::Str, "given") => "Pat".into(),
        (Kind::Str, _) => "Matrixa".into(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// Reads everything of the patient's.
    Sees,
    /// Identified, sees nothing of the patient's data: exactly like absence.
    Nothing,
    /// Not identified (no token, or a token whose role ended): 401 on every request.
    Unauthenticated,
    /// A role that may not use identified FHIR data at all: 403 alike for any id.
    RoleRefused,
}

/// Issue 12, must show: every read surface × every kind of caller. For each caller the
/// answer matches the route table; what a caller may not see answers like what does
/// not exist; every identified attempt on record data is on the audit trail.
#[test]
fn access_matrix_every_surface_every_kind_of_caller() {
    use medledger_fhir::search::SEARCHABLE;
    let root = tempfile::tempdir().unwrap();
    let dir = init(root.path());
    let node = start(&dir);
    let rt = rt();
    rt.block_on(async {
        client(&node, &dir).await;
        let h = http(&node, &dir);
        let admin = admin_signed_in(&h, &dir, &node).await;
        let admin_did = common::admin(&dir).account().to_did();
        admin_tx(root.path(), &dir, &node, &format!(r#"{{"kind":"add_org","org":"eastside","admin":"{admin_did}"}}"#));
        let fhir = |token: &str| Fhir { c: h.c.clone(), url: node.url.clone(), token: token.to_owned() };

        let (pat_t, _pat_id) = patient_token(&h, &dir, &admin, "Pat Matrix", "pat.matrix@home.example").await;
        let (other_t, other_id) = patient_token(&h, &dir, &admin, "Olga Other", "olga@home.example").await;
        let mut staff = Vec::new();
        for (name, email, role) in [
            ("Dana Granted", "dana@hospital.example", "doctor"),
            ("Fred Former", "fred@hospital.example", "doctor"),
            ("Eve Expired", "eve@hospital.example", "doctor"),
            ("Rita Revoked", "rita@hospital.example", "doctor"),
            ("Ivan Insurer", "ivan@insurer.example", "insurer"),
            ("Rhea Researcher", "rhea@research.example", "researcher"),
            ("Otto Auditor", "otto@audit.example", "auditor"),
        ] {
            staff.push(staff_token(&h, &dir, &admin, name, email, role).await);
        }
        // A doctor of another organisation.
        let (st, v, _) = h
            .post("/auth/register", json!({"name": "Oscar Eastside", "email": "oscar@eastside.example", "password": STRONG, "org": "eastside", "role": "doctor"}), None)
            .await;
        assert_eq!(st, 201, "{v}");
        let oscar_id: medledger_core::AccountId = serde_json::from_value(v["account"].clone()).unwrap();
        verify(&h, &dir, "oscar@eastside.example").await;
        let (st, v, _) = h.post("/auth/approve", json!({"account": oscar_id}), Some(&admin)).await;
        assert_eq!(st, 204, "{v}");
        let (s, v) = h.login("oscar@eastside.example", STRONG, None).await.unwrap();
        if v["mfa_setup_required"] == true {
            enable_mfa(&h, &s).await;
        }
        let (st, v, _) = h.post("/auth/tokens", json!({"ttl_s": 3600}), Some(&s)).await;
        assert_eq!(st, 201, "{v}");
        let oscar_t = v["token"].as_str().unwrap().to_owned();

        let [dana, fred, eve, rita, ivan, rhea, otto] = &staff[..] else { unreachable!() };
        let pat = fhir(&pat_t);

        // The patient's own Patient resource and one resource of every searchable type.
        let (st, me) = pat.post("/Patient", &json!({"resourceType": "Patient",
            "identifier": [{"system": "urn:matrix", "value": "m-Patient"}],
            "name": [{"family": "Matrixa", "given": ["Pat"]}], "gender": "female", "birthDate": "1970-05-06"})).await;
        assert_eq!(st, 201, "{me}");
        let pid = me["id"].as_str().unwrap().to_owned();
        let mut resources = vec![me.clone()];
        for r in matrix_resources(&pid) {
            let (st, stored) = pat.post(&format!("/{}", r["resourceType"].as_str().unwrap()), &r).await;
            assert_eq!(st, 201, "{r}: {stored}");
            resources.push(stored);
        }
        // Grants: Dana (current), Fred (writes a record, then the grant is revoked),
        // Eve (expires in a few seconds), Rita (her role is revoked below).
        let far = "2099-12-31";
        let soon_ms = reporter_now() + 4_000;
        let soon = medledger_fhir::date::instant(soon_ms);
        let mut consents = Vec::new();
        for (who, end) in [(&dana.1, far), (&fred.1, far), (&eve.1, soon.as_str()), (&rita.1, far)] {
            let (st, c) = pat.post("/Consent", &treatment_consent(&pid, who, end)).await;
            assert_eq!(st, 201, "{c}");
            consents.push(c["id"].as_str().unwrap().to_owned());
        }
        // Each granted doctor can read now (the grants are real).
        let obs = resources.iter().find(|r| r["resourceType"] == "Observation").unwrap();
        let oid = obs["id"].as_str().unwrap().to_owned();
        for (t, _) in [dana, fred, eve, rita] {
            assert_eq!(fhir(t).get(&format!("/Observation/{oid}")).await.0, 200);
        }
        // Fred writes a record for the patient, then loses the grant.
        let (st, written) = fhir(&fred.0).post("/Observation", &json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]},
            "subject": {"reference": format!("Patient/{pid}")}, "effectiveDateTime": "2022-01-01",
            "valueQuantity": {"value": 170, "unit": "cm", "system": "http://unitsofmeasure.org", "code": "cm"}})).await;
        assert_eq!(st, 201, "{written}");
        resources.push(written);
        let mut off = pat.get(&format!("/Consent/{}", consents[1])).await.1;
        off["status"] = json!("inactive");
        assert_eq!(pat.send(reqwest::Method::PUT, &format!("/Consent/{}", consents[1]), Some(&off)).await.0, 200);
        admin_tx(root.path(), &dir, &node, &format!(r#"{{"kind":"revoke_role","org":"general","account":"{}","role":"doctor"}}"#, rita.1.to_did()));
        // Let Eve's grant expire.
        while reporter_now() < soon_ms + 1_000 {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }

        let callers: Vec<(&str, String, Option<medledger_core::AccountId>, Expect)> = vec![
            ("anonymous", "mlt_not_a_token".into(), None, Expect::Unauthenticated),
            ("the patient", pat_t.clone(), None, Expect::Sees),
            ("granted doctor", dana.0.clone(), Some(dana.1), Expect::Sees),
            ("another patient", other_t.clone(), Some(other_id), Expect::Nothing),
            ("insurer without agreement", ivan.0.clone(), Some(ivan.1), Expect::Nothing),
            ("doctor of another organisation", oscar_t.clone(), Some(oscar_id), Expect::Nothing),
            ("doctor whose grant expired", eve.0.clone(), Some(eve.1), Expect::Nothing),
            ("former author, grant revoked", fred.0.clone(), Some(fred.1), Expect::Nothing),
            ("doctor whose role was revoked", rita.0.clone(), None, Expect::Unauthenticated),
            ("researcher", rhea.0.clone(), Some(rhea.1), Expect::RoleRefused),
            ("auditor", otto.0.clone(), Some(otto.1), Expect::Nothing),
        ];

        for (name, token, _, expect) in &callers {
            let f = fhir(token);
            let ctx = |what: &str| format!("{name}: {what}");
            // Absent: the answer for an id that does not exist, with the id blanked.
            let blank = |v: &Value, id: &str| serde_json::from_str::<Value>(&v.to_string().replace(id, "ID")).unwrap();
            let missing = "0".repeat(64);
            for r in &resources {
                let (rtype, id) = (r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap());
                let paths = [
                    format!("/{rtype}/{id}"),
                    format!("/{rtype}/{id}/_history/1"),
                    format!("/{rtype}/{id}/_history"),
                ];
                for path in &paths {
                    let (st, v) = f.get(path).await;
                    let (st0, v0) = f.get(&path.replace(id, &missing)).await;
                    match expect {
                        Expect::Sees => {
                            assert_eq!(st, 200, "{}", ctx(&format!("{path}: {v}")));
                            assert!(v.to_string().contains(id), "{}", ctx(path));
                        }
                        Expect::Nothing | Expect::RoleRefused => {
                            assert!(matches!(st, 403 | 404), "{}", ctx(&format!("{path}: {st} {v}")));
                            assert_eq!((st, blank(&v, id)), (st0, blank(&v0, &missing)), "{}", ctx(&format!("{path} is not like absence")));
                        }
                        Expect::Unauthenticated => assert_eq!(st, 401, "{}", ctx(path)),
                    }
                }
                // Blob access through the JSON API (decided by `can`, audited).
                let path = format!("/v1/records/{id}/access?purpose=treatment");
                let (st, v) = h.get(&path, &[("authorization", &format!("Bearer {token}"))]).await;
                let (st0, v0) = h.get(&path.replace(id, &missing), &[("authorization", &format!("Bearer {token}"))]).await;
                match expect {
                    Expect::Sees if *name != "the patient" => assert_eq!(st, 200, "{}", ctx(&format!("{path}: {v}"))),
                    Expect::Sees => {}
                    Expect::Unauthenticated => assert_eq!(st, 401, "{}", ctx(&path)),
                    _ => assert_eq!((st, &v), (st0, &v0), "{}", ctx(&format!("{path} is not like absence"))),
                }
            }
            // Type history, every search parameter, _id, _count=0, paging.
            for r in &resources[..resources.len() - 1] {
                let (rtype, id) = (r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap());
                let (_, params) = SEARCHABLE.iter().find(|(t, _)| *t == rtype).unwrap();
                let mut probes: Vec<String> = params
                    .iter()
                    .map(|p| format!("/{rtype}?{}={}", p.name, matching_value(r, p, &pid)))
                    .collect();
                probes.push(format!("/{rtype}?_id={id}"));
                probes.push(format!("/{rtype}?_id={id}&_count=0"));
                probes.push(format!("/{rtype}?identifier=urn:matrix|m-{rtype}&_count=1&_offset=0"));
                probes.push(format!("/{rtype}/_history"));
                for probe in &probes {
                    let (st, b) = f.get(probe).await;
                    let ids: Vec<&str> = b["entry"].as_array().map_or(vec![], |e| e.iter().filter_map(|e| e["resource"]["id"].as_str()).collect());
                    match expect {
                        Expect::Sees if probe.contains("_count=0") => {
                            assert_eq!(st, 200, "{}", ctx(probe));
                            assert!(next_link(&b).is_some() || b["total"] == 1, "{}", ctx(&format!("{probe}: {b}")));
                        }
                        Expect::Sees => {
                            assert_eq!(st, 200, "{}", ctx(&format!("{probe}: {b}")));
                            assert!(ids.contains(&id), "{}", ctx(&format!("{probe} did not find it: {b}")));
                        }
                        Expect::Nothing => {
                            assert_eq!(st, 200, "{}", ctx(&format!("{probe}: {b}")));
                            assert_eq!((entries(&b), next_link(&b)), (0, None), "{}", ctx(&format!("{probe} revealed a match: {b}")));
                            assert!(b["total"].is_null() || b["total"] == 0, "{}", ctx(&format!("{probe}: {b}")));
                        }
                        Expect::RoleRefused => assert_eq!(st, 403, "{}", ctx(&format!("{probe}: {b}"))),
                        Expect::Unauthenticated => assert_eq!(st, 401, "{}", ctx(probe)),
                    }
                }
            }
            // $everything and a batch of GETs.
            let (st, b) = f.get(&format!("/Patient/{pid}/$everything")).await;
            let gets: Vec<Value> = resources.iter().map(|r| json!({"request": {"method": "GET",
                "url": format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap())}})).collect();
            let (bst, batch) = f.post("/", &json!({"resourceType": "Bundle", "type": "batch", "entry": gets})).await;
            let statuses: Vec<&str> = batch["entry"].as_array().map_or(vec![], |e| e.iter().filter_map(|e| e["response"]["status"].as_str()).collect());
            match expect {
                Expect::Sees => {
                    assert_eq!(st, 200, "{}", ctx(&format!("$everything: {b}")));
                    assert!(entries(&b) >= resources.len(), "{}", ctx(&format!("$everything: {b}")));
                    assert_eq!(bst, 200);
                    assert!(statuses.iter().all(|s| s.starts_with("200")), "{}", ctx(&format!("batch: {batch}")));
                }
                Expect::Nothing | Expect::RoleRefused => {
                    assert!(matches!(st, 403 | 404), "{}", ctx(&format!("$everything: {st} {b}")));
                    let (st0, b0) = f.get(&format!("/Patient/{missing}/$everything")).await;
                    assert_eq!((st, blank(&b, &pid)), (st0, blank(&b0, &missing)), "{}", ctx("$everything is not like absence"));
                    assert_eq!(bst, 200, "{}", ctx(&format!("batch: {batch}")));
                    assert_eq!(statuses.len(), resources.len());
                    assert!(statuses.iter().all(|s| s.starts_with("404") || s.starts_with("403")), "{}", ctx(&format!("batch: {batch}")));
                    assert!(batch["entry"].as_array().unwrap().iter().all(|e| e["resource"].is_null()), "{}", ctx("batch leaked"));
                }
                Expect::Unauthenticated => {
                    assert_eq!(st, 401);
                    assert_eq!(bst, 401);
                }
            }
            // Consent, Provenance, AuditEvent of the patient's.
            let (cst, c) = f.get(&format!("/Consent/{}", consents[0])).await;
            let (qst, q) = f.get(&format!("/Consent?patient={pid}")).await;
            let (pst, p) = f.get(&format!("/Provenance?target=Observation/{oid}")).await;
            let (ast, a) = f.get(&format!("/AuditEvent?patient={pid}&_count=200")).await;
            match expect {
                Expect::Unauthenticated => {
                    assert_eq!((cst, qst, pst, ast), (401, 401, 401, 401), "{}", ctx("views"));
                }
                Expect::RoleRefused => {
                    assert!(matches!(cst, 403 | 404) && matches!(qst, 200 | 403) && matches!(pst, 200 | 403), "{}", ctx("views"));
                    if qst == 200 {
                        assert_eq!(entries(&q), 0, "{}", ctx(&format!("{q}")));
                    }
                    if pst == 200 {
                        assert_eq!(entries(&p), 0, "{}", ctx(&format!("{p}")));
                    }
                }
                Expect::Sees => {
                    assert_eq!((cst, qst, pst, ast), (200, 200, 200, 200), "{}", ctx("views"));
                    assert_eq!(c["id"].as_str(), Some(consents[0].as_str()));
                    assert!(entries(&q) >= 1 && entries(&p) == 1, "{}", ctx(&format!("{q} {p}")));
                }
                Expect::Nothing => {
                    let (cst0, _) = f.get(&format!("/Consent/{}", "0".repeat(64))).await;
                    if *name == "auditor" {
                        // Auditors oversee the ledger's facts: grants, authorship, audit.
                        assert_eq!((cst, qst, pst, ast), (200, 200, 200, 200), "{}", ctx("views"));
                        assert_eq!(entries(&p), 1, "{}", ctx(&format!("{p}")));
                    } else {
                        assert_eq!((cst, cst0), (404, 404), "{}", ctx(&format!("Consent: {c}")));
                        // Only grants made to them (a grantee sees its own grant, ended or not).
                        let me = callers.iter().find(|c| c.0 == *name).unwrap().2.unwrap();
                        assert_eq!(qst, 200, "{}", ctx(&format!("Consent search: {q}")));
                        assert!(q["entry"].as_array().is_none_or(|e| e.iter().all(|e|
                            e["resource"]["provision"]["actor"][0]["reference"]["identifier"]["value"] == json!(me.to_did()))),
                            "{}", ctx(&format!("Consent search: {q}")));
                        assert_eq!((pst, entries(&p)), (200, 0), "{}", ctx(&format!("Provenance: {p}")));
                        // Only their own accesses, never anyone else's.
                        assert_eq!(ast, 200);
                        let who = json!({"identifier": {"system": "urn:medledger:account", "value": me.to_did()}});
                        assert!(a["entry"].as_array().is_none_or(|e| e.iter().all(|e| e["resource"]["agent"][0]["who"] == who)),
                            "{}", ctx(&format!("AuditEvent: {a}")));
                    }
                }
            }
        }

        // Every identified attempt on record data is on the audit trail, as refused.
        for (name, _, account, expect) in &callers {
            let (Some(account), Expect::Nothing | Expect::RoleRefused) = (account, expect) else { continue };
            let mut refused = 0;
            for _ in 0..100 {
                let (_, a) = h.get_as_admin(&dir, &format!("/v1/audit?accessor={}&limit=1000", account.to_did())).await;
                refused = a["entries"].as_array().map_or(0, |e| e.iter().filter(|e| e["allowed"] == false).count());
                if refused >= resources.len() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            assert!(refused >= resources.len(), "{name}: only {refused} refused attempts audited");
        }
    });
    node.stop();
}

fn reporter_now() -> u64 {
    medledger_node::reporter::now_ms()
}
