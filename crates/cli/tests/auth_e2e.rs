//! Sign-in through the HTTP interface of the real binary: the clinician register →
//! verify → approve → sign in → MFA story, the patient invite → register → verify →
//! sign in → MFA → sign in with MFA story, every refusal the issue lists, and password
//! recovery that keeps earlier records readable. Mail is read from the outbox folder.

mod common;
use common::signin::*;
use common::*;
use medledger_core::AccountId;
use medledger_node::keystore::KeystoreFile;
use reqwest::header::COOKIE;
use serde_json::{Value, json};
use std::path::Path;

/// Encrypts `text` into the node's record store for `reader` (and the admin) with the
/// CLI; returns its CID.
fn put_blob_for(
    root: &Path,
    dir: &Path,
    reader: &AccountId,
    enc: &str,
    text: &str,
) -> medledger_core::Cid {
    let note = root.join("note.txt");
    std::fs::write(&note, text).unwrap();
    let out = succeed(
        std::process::Command::new(BIN)
            .args(["blob", "put"])
            .arg(&note)
            .arg("--data-dir")
            .arg(dir)
            .arg("--password-file")
            .arg(root.join("pw"))
            .args(["--reader", &format!("{}={enc}", reader.to_did())]),
    );
    serde_json::from_slice::<Value>(&out.stdout).unwrap()["cid"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn clinician_registers_is_approved_signs_in_and_sets_up_mfa() {
    let root = tempfile::tempdir().unwrap();
    let dir = init(root.path());
    let node = start(&dir);
    let rt = rt();
    rt.block_on(async {
        client(&node, &dir).await;
        let h = http(&node, &dir);
        let admin = admin_signed_in(&h, &dir, &node).await;

        // Weak passwords are refused, and nothing is created.
        let reg = |pw: &str| {
            json!({"name": "Dora Doctor", "email": "dora@hospital.example", "password": pw, "org": "general", "role": "doctor"})
        };
        for weak in ["short", "password1234", "dora@hospital.example"] {
            let (st, v, _) = h.post("/auth/register", reg(weak), None).await;
            assert_eq!((st, v["error"]["code"].as_str()), (400, Some("weak_password")), "{weak}");
        }
        let (st, v, _) = h.post("/auth/register", reg(STRONG), None).await;
        assert_eq!(st, 201, "{v}");
        assert_eq!(v["recovery_codes"].as_array().unwrap().len(), 10);
        let doctor: AccountId = serde_json::from_value(v["account"].clone()).unwrap();
        // Regression (issue 12, defect 7): a known address answered 409 email_taken.
        // Now it answers like a new registration; the owner gets a notice by mail,
        // and nothing is created (sign-in below still finds the first account).
        let (st, v, _) = h.post("/auth/register", reg(STRONG), None).await;
        assert_eq!(st, 201, "{v}");
        assert_eq!(v["recovery_codes"].as_array().unwrap().len(), 10);
        assert_ne!(v["account"], json!(doctor));
        let notice = std::fs::read_dir(dir.join("outbox")).unwrap().filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
            .map(|m| m.replace("=\r\n", ""))
            .any(|m| m.contains("To: dora@hospital.example") && m.contains("already has one"));
        assert!(notice, "the address's owner was not told");
        // An unknown organisation is refused before any key derivation.
        let (st, v, _) = h
            .post("/auth/register", json!({"name": "X", "email": "x@x.example", "password": STRONG, "org": "nowhere", "role": "doctor"}), None)
            .await;
        assert_eq!((st, v["error"]["code"].as_str()), (400, Some("invalid")), "{v}");
        // Patients cannot self-register.
        let (st, _, _) = h
            .post("/auth/register", json!({"name": "P", "email": "p@x.example", "password": STRONG, "org": "general", "role": "patient"}), None)
            .await;
        assert_eq!(st, 403);

        // Unverified, then pending approval.
        assert_eq!(h.login("dora@hospital.example", STRONG, None).await.err(), Some((403, "email_unverified".into())));
        verify(&h, &dir, "dora@hospital.example").await;
        assert_eq!(h.login("dora@hospital.example", STRONG, None).await.err(), Some((403, "pending_approval".into())));

        // Approval needs the admin's session and CSRF token.
        let no_csrf = Signed { cookie: admin.cookie.clone(), csrf: "wrong".into() };
        let (st, v, _) = h.post("/auth/approve", json!({"account": doctor}), Some(&no_csrf)).await;
        assert_eq!((st, v["error"]["code"].as_str()), (403, Some("bad_csrf")));
        let resp = h
            .c
            .post(format!("{}/auth/approve", h.url))
            .header(COOKIE, &admin.cookie)
            .json(&json!({"account": doctor}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 403, "missing CSRF header");
        let (st, v, _) = h.post("/auth/approve", json!({"account": doctor}), Some(&admin)).await;
        assert_eq!(st, 204, "{v}");

        // Signed in, but a clinician must set up MFA before doing anything else.
        let (s, v) = h.login("dora@hospital.example", STRONG, None).await.unwrap();
        assert_eq!(v["mfa_setup_required"], true);
        let (st, v, _) = h.post("/auth/invite", json!({"email": "pat@home.example"}), Some(&s)).await;
        assert_eq!((st, v["error"]["code"].as_str()), (403, Some("mfa_setup_required")));
        let secret = enable_mfa(&h, &s).await;
        let (st, v, _) = h.post("/auth/invite", json!({"email": "pat@home.example"}), Some(&s)).await;
        assert_eq!(st, 201, "{v}");
        // Next sign-in needs the code; a wrong one and a reused one are refused.
        assert_eq!(h.login("dora@hospital.example", STRONG, None).await.err(), Some((401, "mfa_required".into())));
        let bad = if code_at(&secret, 30) == "123456" { "654321" } else { "123456" };
        assert_eq!(h.login("dora@hospital.example", STRONG, Some(bad)).await.err(), Some((401, "bad_code".into())));
        let code = code_at(&secret, 30);
        let (_, v) = h.login("dora@hospital.example", STRONG, Some(&code)).await.unwrap();
        assert_eq!(v["mfa_setup_required"], false);
        assert_eq!(h.login("dora@hospital.example", STRONG, Some(&code)).await.err(), Some((401, "bad_code".into())));

        // Lockout: failures (the bad code above counted) lock the account; then even
        // the right password is refused.
        for _ in 0..3 {
            assert_eq!(h.login("dora@hospital.example", "wrong password entirely", None).await.err().unwrap().0, 401);
        }
        assert_eq!(h.login("dora@hospital.example", "wrong password entirely", None).await.err().unwrap().0, 401);
        assert_eq!(h.login("dora@hospital.example", STRONG, Some(&code_at(&secret, 30))).await.err(), Some((429, "locked".into())));
        // Unknown addresses look like wrong passwords, and lock alike (defect 7: only
        // known addresses ever answered `locked`).
        for _ in 0..5 {
            assert_eq!(h.login("nobody@x.example", STRONG, None).await.err(), Some((401, "bad_credentials".into())));
        }
        assert_eq!(h.login("nobody@x.example", STRONG, None).await.err(), Some((429, "locked".into())));
    });
    node.stop();
}

#[test]
fn patient_invite_register_mfa_sign_out_and_recovery_keep_records_readable() {
    let root = tempfile::tempdir().unwrap();
    let dir = init(root.path());
    let node = start(&dir);
    let rt = rt();
    rt.block_on(async {
        client(&node, &dir).await;
        let h = http(&node, &dir);
        let admin = admin_signed_in(&h, &dir, &node).await;
        let (st, v, _) = h.post("/auth/invite", json!({"email": "pat@home.example"}), Some(&admin)).await;
        assert_eq!(st, 201, "{v}");
        let invite = mail_token(&dir, "pat@home.example", "invite");
        let reg = json!({"name": "Pat Patient", "email": "pat@home.example", "password": STRONG, "invite": invite});
        let (st, v, _) = h.post("/auth/register", reg.clone(), None).await;
        assert_eq!(st, 201, "{v}");
        assert_eq!(v["role"], "patient");
        let codes: Vec<String> = serde_json::from_value(v["recovery_codes"].clone()).unwrap();
        let patient: AccountId = serde_json::from_value(v["account"].clone()).unwrap();
        // The invite is single-use.
        let again = json!({"name": "Eve", "email": "eve@x.example", "password": STRONG, "invite": invite});
        let (st, v, _) = h.post("/auth/register", again, None).await;
        assert_eq!((st, v["error"]["code"].as_str()), (400, Some("invalid_link")));
        let (st, v, _) = h
            .post("/auth/register", json!({"name": "Eve", "email": "eve@x.example", "password": STRONG, "invite": "00ff"}), None)
            .await;
        assert_eq!((st, v["error"]["code"].as_str()), (400, Some("invalid_link")));

        assert_eq!(h.login("pat@home.example", STRONG, None).await.err(), Some((403, "email_unverified".into())));
        verify(&h, &dir, "pat@home.example").await;
        let (s1, v) = h.login("pat@home.example", STRONG, None).await.unwrap();
        assert_eq!(v["mfa_setup_required"], false, "MFA is optional for patients");
        let (st, me) = h.get("/auth/me", &[("cookie", &s1.cookie)]).await;
        assert_eq!(st, 200);
        assert_eq!(me["name"], "Pat Patient");
        assert_eq!(me["role"], "patient");
        // The ledger knows the patient (role granted through the invite, no approval).
        let (st, acct) = h.get_as_admin(&dir, &format!("/v1/accounts/{}", patient.to_did())).await;
        assert_eq!(st, 200);
        assert!(acct["roles"].to_string().contains("patient"), "{acct}");

        // A record encrypted for the patient's ledger key before any recovery.
        let enc = acct["encryption_key"].as_str().unwrap().to_owned();
        let cid = put_blob_for(root.path(), &dir, &patient, &enc, "synthetic note for recovery test");

        // MFA on, then the story again with the second factor.
        let secret = enable_mfa(&h, &s1).await;
        let (s2, _) = h.login("pat@home.example", STRONG, Some(&code_at(&secret, 30))).await.unwrap();
        let (st, v, _) = h.post("/auth/tokens", json!({"ttl_s": 3600}), Some(&s2)).await;
        assert_eq!(st, 201);
        let api = v["token"].as_str().unwrap().to_owned();
        let bearer = format!("Bearer {api}");
        assert_eq!(h.get("/auth/me", &[("authorization", &bearer)]).await.0, 200);
        // The FHIR API knows the token too (and remembers who it is, see below).
        assert_eq!(h.get("/fhir/Observation", &[("authorization", &bearer)]).await.0, 200);

        // Sign-out: that session is dead even if the cookie was stolen.
        let (st, _, cleared) = h.post("/auth/logout", json!({}), Some(&s1)).await;
        assert_eq!(st, 204);
        assert!(cleared.unwrap().ends_with('='));
        assert_eq!(h.get("/auth/me", &[("cookie", &s1.cookie)]).await.0, 401);
        assert_eq!(h.get("/auth/me", &[("cookie", &s2.cookie)]).await.0, 200);
        // Sign-out everywhere ends the other session and the API token.
        let (st, _, _) = h.post("/auth/logout-all", json!({}), Some(&s2)).await;
        assert_eq!(st, 204);
        assert_eq!(h.get("/auth/me", &[("cookie", &s2.cookie)]).await.0, 401);
        assert_eq!(h.get("/auth/me", &[("authorization", &bearer)]).await.0, 401);
        assert_eq!(h.get("/fhir/Observation", &[("authorization", &bearer)]).await.0, 401);

        // Forgotten password: a wrong code is refused; a right one re-opens the keys.
        let new_pw = "saffron kettle orbit 93 glacier";
        let (st, v, _) = h
            .post("/auth/recover", json!({"email": "pat@home.example", "recovery_code": "aaaaa-bbbbb", "new_password": new_pw}), None)
            .await;
        assert_eq!((st, v["error"]["code"].as_str()), (401, Some("bad_recovery_code")));
        let (st, v, _) = h
            .post("/auth/recover", json!({"email": "pat@home.example", "recovery_code": codes[3], "new_password": new_pw}), None)
            .await;
        assert_eq!(st, 204, "{v}");
        // Used once only.
        let (st, _, _) = h
            .post("/auth/recover", json!({"email": "pat@home.example", "recovery_code": codes[3], "new_password": new_pw}), None)
            .await;
        assert_eq!(st, 401);
        assert_eq!(h.login("pat@home.example", STRONG, None).await.err().unwrap().0, 401);
        let (s3, _) = h.login("pat@home.example", new_pw, None).await.unwrap();
        let (st, me) = h.get("/auth/me", &[("cookie", &s3.cookie)]).await;
        assert_eq!(st, 200);
        assert_eq!(me["account"], serde_json::to_value(patient).unwrap());
        assert_eq!(me["recovery_codes_left"], 9);

        // The exported keystore opens with the new password, and the earlier record
        // decrypts with it: nothing was lost.
        let (st, ks, _) = h.post("/auth/keystore", json!({}), Some(&s3)).await;
        assert_eq!(st, 200);
        let ks: KeystoreFile = serde_json::from_value(ks).unwrap();
        assert!(ks.open(STRONG.as_bytes()).is_err());
        let keys = ks.open(new_pw.as_bytes()).unwrap();
        assert_eq!(keys.account(), patient);
        let store = medledger_store::BlobStore::open(&medledger_store::StoreConfig::Local { path: dir.join("blobs") }).unwrap();
        let mut out = Vec::new();
        store
            .get(&cid, &medledger_store::ReaderSecret { account: patient, secret: keys.encryption_secret }, &mut out)
            .await
            .unwrap();
        assert_eq!(out, b"synthetic note for recovery test");
    });
    node.stop();
}

/// Organisation-assisted recovery: one admin requests, the same admin cannot approve,
/// a second admin approves (both on the ledger, both in the audit trail); the patient
/// sets a new password from the mailed link and every earlier record stays readable.
#[test]
fn organisation_assisted_recovery_needs_two_admins_and_keeps_records_readable() {
    let root = tempfile::tempdir().unwrap();
    let dir = init(root.path());
    let node = start(&dir);
    let rt = rt();
    rt.block_on(async {
        client(&node, &dir).await;
        let h = http(&node, &dir);
        let admin = admin_signed_in(&h, &dir, &node).await;
        // A second hospital admin registers and is approved.
        let (ben_s, _) =
            staff_signed_in(&h, &dir, &admin, "Ben Admin", "ben@hospital.example", "hospital_admin").await;

        // A patient with a record encrypted for their key.
        let (st, _, _) = h.post("/auth/invite", json!({"email": "rita@home.example"}), Some(&admin)).await;
        assert_eq!(st, 201);
        let invite = mail_token(&dir, "rita@home.example", "invite");
        let (st, v, _) = h
            .post("/auth/register", json!({"name": "Rita Patient", "email": "rita@home.example", "password": STRONG, "invite": invite}), None)
            .await;
        assert_eq!(st, 201, "{v}");
        let rita: AccountId = serde_json::from_value(v["account"].clone()).unwrap();
        verify(&h, &dir, "rita@home.example").await;
        let (_, acct) = h.get_as_admin(&dir, &format!("/v1/accounts/{}", rita.to_did())).await;
        let enc = acct["encryption_key"].as_str().unwrap().to_owned();
        let cid = put_blob_for(root.path(), &dir, &rita, &enc, "synthetic note for organisation recovery");

        // Rita forgets her password and her recovery codes.
        let (st, v, _) = h.post("/auth/recovery/request", json!({"email": "rita@home.example"}), Some(&admin)).await;
        assert_eq!(st, 201, "{v}");
        let request = v["request"].clone();
        // The requesting admin cannot approve alone; the ledger refuses.
        let (st, v, _) = h.post("/auth/recovery/approve", json!({"request": request}), Some(&admin)).await;
        assert_eq!((st, v["error"]["code"].as_str()), (422, Some("unauthorized")), "{v}");
        // A made-up reset token is refused.
        let (st, _, _) = h.post("/auth/recovery/complete", json!({"token": "00", "new_password": STRONG}), None).await;
        assert_eq!(st, 400);
        let (st, v, _) = h.post("/auth/recovery/approve", json!({"request": request}), Some(&ben_s)).await;
        assert_eq!(st, 204, "{v}");
        let token = mail_token(&dir, "rita@home.example", "token");
        let new_pw = "violet harbour cinder 58 lattice";
        let (st, v, _) = h.post("/auth/recovery/complete", json!({"token": token, "new_password": "weak"}), None).await;
        assert_eq!((st, v["error"]["code"].as_str()), (400, Some("weak_password")));
        let (st, _, _) = h.post("/auth/recovery/complete", json!({"token": token, "new_password": new_pw}), None).await;
        assert_eq!(st, 204);
        // Single use.
        let (st, _, _) = h.post("/auth/recovery/complete", json!({"token": token, "new_password": new_pw}), None).await;
        assert_eq!(st, 400);
        assert_eq!(h.login("rita@home.example", STRONG, None).await.err().unwrap().0, 401);
        let (s, _) = h.login("rita@home.example", new_pw, None).await.unwrap();

        // Both steps are in the ledger's audit trail for Rita.
        let (_, trail) = h.get_as_admin(&dir, &format!("/v1/audit?patient={}", rita.to_did())).await;
        let reasons: Vec<&str> = trail["entries"].as_array().unwrap().iter().map(|e| e["reason"].as_str().unwrap()).collect();
        assert_eq!(reasons, vec!["recovery_requested", "recovery_approved"]);

        let (st, ks, _) = h.post("/auth/keystore", json!({}), Some(&s)).await;
        assert_eq!(st, 200);
        let keys = serde_json::from_value::<KeystoreFile>(ks).unwrap().open(new_pw.as_bytes()).unwrap();
        assert_eq!(keys.account(), rita);
        let store = medledger_store::BlobStore::open(&medledger_store::StoreConfig::Local { path: dir.join("blobs") }).unwrap();
        let mut out = Vec::new();
        store
            .get(&cid, &medledger_store::ReaderSecret { account: rita, secret: keys.encryption_secret }, &mut out)
            .await
            .unwrap();
        assert_eq!(out, b"synthetic note for organisation recovery");
    });
    node.stop();
}

/// Self-custody keystores from the CLI (and a transaction they sign accepted), an
/// expired invitation refused, and a recovery code standing in for a lost authenticator.
#[test]
fn self_custody_keystores_expired_invites_and_recovery_code_as_second_factor() {
    let root = tempfile::tempdir().unwrap();
    let dir = init(root.path());
    let node = start_with(&dir, &["--invite-ttl-ms", "400"]);
    let p = |name: &str, text: &str| {
        let f = root.path().join(name);
        std::fs::write(&f, text).unwrap();
        f.to_str().unwrap().to_owned()
    };
    let (weak, strong, other) = (
        p("weak", "password1234"),
        p("strong", STRONG),
        p("other", "violet harbour cinder 58 lattice"),
    );
    let ks = root.path().join("me.json");
    let ks_s = ks.to_str().unwrap();
    let (ok, out) = cli_raw(&["account", "new", "--out", ks_s, "--password-file", &weak]);
    assert!(!ok && out.contains("password rejected"), "{out}");
    assert!(!ks.exists());
    let (ok, out) = cli_raw(&["account", "new", "--out", ks_s, "--password-file", &strong]);
    assert!(ok, "{out}");
    let did = serde_json::from_str::<Value>(out.trim()).unwrap()["account"]
        .as_str()
        .unwrap()
        .to_owned();
    let (ok, out) = cli_raw(&["account", "show", ks_s]);
    assert!(ok && out.contains(&did), "{out}");
    let copy = root.path().join("copy.json");
    let (ok, out) = cli_raw(&[
        "account",
        "export",
        ks_s,
        "--password-file",
        &other,
        "--new-password-file",
        &other,
        "--out",
        copy.to_str().unwrap(),
    ]);
    assert!(!ok && out.contains("wrong password"), "{out}");
    let (ok, out) = cli_raw(&[
        "account",
        "export",
        ks_s,
        "--password-file",
        &strong,
        "--new-password-file",
        &other,
        "--out",
        copy.to_str().unwrap(),
    ]);
    assert!(ok && out.contains(&did), "{out}");
    assert!(
        KeystoreFile::read(&copy)
            .unwrap()
            .open(STRONG.as_bytes())
            .is_err()
    );
    let secret = p("secret", &"11".repeat(64));
    let (ok, out) = cli_raw(&[
        "account",
        "import",
        "--secret-file",
        &secret,
        "--out",
        root.path().join("imp.json").to_str().unwrap(),
        "--password-file",
        &strong,
    ]);
    let want = AccountId(
        ed25519_dalek::SigningKey::from_bytes(&[0x11; 32])
            .verifying_key()
            .to_bytes(),
    )
    .to_did();
    assert!(ok && out.contains(&want), "{out}");

    let rt = rt();
    rt.block_on(async {
        client(&node, &dir).await;
        let h = http(&node, &dir);
        let (admin, codes) = admin_with_codes(&h, &dir, &node).await;
        // The self-custody key signs its own registration locally; the node accepts it.
        let (ok, out) = cli_raw(&["tx", "submit", "--node", &node.url, "--data-dir", dir.to_str().unwrap(), "--keystore", ks_s, "--password-file", &strong,
            "json", &format!(r#"{{"kind":"register","org":"general","role":"researcher","encryption_key":"{}"}}"#, "22".repeat(32))]);
        assert!(ok && out.contains("committed"), "{out}");
        let (_, acct) = h.get_as_admin(&dir, &format!("/v1/accounts/{did}")).await;
        assert_eq!(acct["pending"]["role"], "researcher");

        // An invitation used after it expired is refused.
        let (st, _, _) = h.post("/auth/invite", json!({"email": "late@home.example"}), Some(&admin)).await;
        assert_eq!(st, 201);
        let invite = mail_token(&dir, "late@home.example", "invite");
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        let (st, v, _) = h
            .post("/auth/register", json!({"name": "Late", "email": "late@home.example", "password": STRONG, "invite": invite}), None)
            .await;
        assert_eq!((st, v["error"]["code"].as_str()), (400, Some("invalid_link")));

        // Lost authenticator: a recovery code works once as the second factor.
        assert_eq!(h.login("admin@hospital.example", STRONG, Some("zzzzz-zzzzz")).await.err(), Some((401, "bad_code".into())));
        let (s, _) = h.login("admin@hospital.example", STRONG, Some(&codes[0])).await.unwrap();
        let (_, me) = h.get("/auth/me", &[("cookie", &s.cookie)]).await;
        assert_eq!(me["recovery_codes_left"], 9);
        assert_eq!(h.login("admin@hospital.example", STRONG, Some(&codes[0])).await.err(), Some((401, "bad_code".into())));
    });
    node.stop();
}

/// One nonce rule for every custodial signer (issue 12): sign-in (`/auth/invite`) and
/// the FHIR API (a Patient create invites and registers a patient) both sign with the
/// doctor's custodial key. Each used to number the doctor's transactions on its own
/// (sign-in from the ledger, FHIR from its pipeline), so concurrent requests collided
/// and some failed with `replayed_nonce`/`nonce_gap`. Now every request succeeds and
/// each is on the ledger exactly once.
#[test]
fn sign_in_and_fhir_share_one_nonce_sequence_per_custodial_account() {
    let root = tempfile::tempdir().unwrap();
    let dir = init(root.path());
    let node = start(&dir);
    let rt = rt();
    rt.block_on(async {
        client(&node, &dir).await;
        let h = http(&node, &dir);
        let admin = admin_signed_in(&h, &dir, &node).await;
        let (doctor, doctor_id) = staff_signed_in(
            &h,
            &dir,
            &admin,
            "Nonce Doctor",
            "nonce.doctor@hospital.example",
            "doctor",
        )
        .await;
        let (st, v, _) = h
            .post("/auth/tokens", json!({"ttl_s": 3600}), Some(&doctor))
            .await;
        assert_eq!(st, 201, "{v}");
        let fhir = common::fhir::Fhir::new(&h, v["token"].as_str().unwrap().to_owned());
        let (_, before) = h.get_as_admin(&dir, &format!("/v1/accounts/{doctor_id}")).await;
        let nonce_before = before["nonce"].as_u64().unwrap();

        const EACH: usize = 8;
        let invites = (0..EACH).map(|i| {
            let (h, doctor) = (&h, &doctor);
            async move {
                h.post(
                    "/auth/invite",
                    json!({"email": format!("invitee{i}@patients.example")}),
                    Some(doctor),
                )
                .await
            }
        });
        let creates = (0..EACH).map(|i| {
            let fhir = &fhir;
            async move {
                fhir.post(
                    "/Patient",
                    &json!({"resourceType": "Patient", "name": [{"family": format!("Nonce{i}"), "given": ["Pat"]}]}),
                )
                .await
            }
        });
        let (invited, created) = tokio::join!(
            futures::future::join_all(invites),
            futures::future::join_all(creates)
        );
        for (st, v, _) in &invited {
            assert_eq!(*st, 201, "invite: {v}");
        }
        for (st, v) in &created {
            assert_eq!(*st, 201, "create: {v}");
        }
        // Each invite is one transaction of the doctor; each Patient create is two (the
        // new patient's invite and the record; the registration is the patient's).
        let (_, after) = h.get_as_admin(&dir, &format!("/v1/accounts/{doctor_id}")).await;
        assert_eq!(
            after["nonce"].as_u64().unwrap(),
            nonce_before + 3 * EACH as u64,
            "{after}"
        );
    });
    node.stop();
}
