//! The portal's message, agreement, erasure, password, role, recovery, proof and
//! consortium forms over plain HTTP, each done once by the person it is for and tried
//! by people it is not for: another patient, another role, a signed-out visitor, a
//! form without its CSRF token, a replay, malformed input. Every refusal is checked
//! to change nothing on the ledger (grants, balances, messages) and to look like
//! absence where the object is someone else's. The browser flows, screenshots and
//! accessibility checks are in `portal_e2e`.

mod common;

use common::signin::{self, STRONG, Signed, mail_token};
use common::*;
use reqwest::header::{COOKIE, LOCATION};
use serde_json::{Value, json};
use std::path::Path;

/// A portal client that does not follow redirects, so each answer is seen as sent.
struct Web {
    c: reqwest::Client,
    url: String,
    h: signin::Http,
}

impl Web {
    fn new(node: &Node, dir: &Path) -> Web {
        // The node's client first: it installs the TLS crypto provider.
        let h = signin::http(node, dir);
        Web {
            c: reqwest::Client::builder()
                .add_root_certificate(
                    reqwest::Certificate::from_pem(
                        &std::fs::read(dir.join("tls/cert.pem")).unwrap(),
                    )
                    .unwrap(),
                )
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            url: node.url.clone(),
            h,
        }
    }

    async fn page(&self, path: &str, who: Option<&Signed>) -> (u16, String) {
        let mut r = self.c.get(format!("{}{path}", self.url));
        if let Some(s) = who {
            r = r.header(COOKIE, &s.cookie);
        }
        let r = r.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Posts a form as `who` (with their CSRF token unless `csrf` is false); the
    /// status, the page and where a redirect leads.
    async fn form(
        &self,
        path: &str,
        who: Option<&Signed>,
        csrf: bool,
        fields: &[(&str, &str)],
    ) -> (u16, String, String) {
        let mut f: Vec<(&str, &str)> = fields.to_vec();
        let mut r = self.c.post(format!("{}{path}", self.url));
        if let Some(s) = who {
            r = r.header(COOKIE, &s.cookie);
            if csrf {
                f.push(("csrf", &s.csrf));
            }
        }
        let r = r.form(&f).send().await.unwrap();
        let status = r.status().as_u16();
        let to = r
            .headers()
            .get(LOCATION)
            .map(|l| l.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, r.text().await.unwrap(), to)
    }

    /// A `/v1` query as `who` (their session cookie).
    async fn v1(&self, path: &str, who: &Signed) -> Value {
        let (st, v) = self.h.get(path, &[("cookie", &who.cookie)]).await;
        assert_eq!(st, 200, "{path}: {v}");
        v
    }

    async fn members(&self, who: &Signed) -> Value {
        self.v1("/v1/orgs/general", who).await["members"].clone()
    }

    /// An insurer's proposal of a year's access to a patient's Conditions.
    async fn propose(&self, who: &Signed, patient: &str, price: &str) -> (u16, String, String) {
        self.form(
            "/insurer",
            Some(who),
            true,
            &[
                ("patient", patient),
                ("categories", "Condition"),
                ("days", "365"),
                ("price", price),
                ("respond_days", "7"),
                ("terms", "Claims settlement only."),
            ],
        )
        .await
    }

    async fn balance(&self, did: &str, who: &Signed) -> u64 {
        self.v1(&format!("/v1/accounts/{did}"), who).await["balance"]
            .as_u64()
            .unwrap()
    }

    async fn grants(&self, did: &str, who: &Signed) -> Vec<Value> {
        self.v1(&format!("/v1/patients/{did}/grants"), who).await["grants"]
            .as_array()
            .unwrap()
            .clone()
    }

    async fn inbox(&self, did: &str, who: &Signed) -> Vec<Value> {
        self.v1(&format!("/v1/accounts/{did}/inbox"), who).await["messages"]
            .as_array()
            .unwrap()
            .clone()
    }
}

/// An invited patient: registered, verified, signed in; their session and account id.
async fn patient(w: &Web, dir: &Path, admin: &Signed, email: &str) -> (Signed, String) {
    let (st, v, _) =
        w.h.post("/auth/invite", json!({"email": email}), Some(admin))
            .await;
    assert_eq!(st, 201, "{v}");
    let invite = mail_token(dir, email, "invite");
    let (st, v, _) = w
        .h
        .post(
            "/auth/register",
            json!({"name": "Synthetic Patient", "email": email, "password": STRONG, "invite": invite}),
            None,
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let did = v["account"].as_str().unwrap().to_owned();
    signin::verify(&w.h, dir, email).await;
    let (s, _) = w.h.login(email, STRONG, None).await.unwrap();
    (s, did)
}

/// The value of the first `name="{name}" value="…"` hidden input after `after`.
fn hidden_after(html: &str, after: &str, name: &str) -> String {
    let from = html.find(after).unwrap_or_else(|| panic!("no {after}"));
    let rest = &html[from..];
    let at = rest
        .find(&format!("name=\"{name}\" value=\""))
        .unwrap_or_else(|| panic!("no {name} input after {after}"));
    let v = &rest[at + name.len() + 15..];
    v[..v.find('"').unwrap()].to_owned()
}

/// A patient's own records written through FHIR with an API token: their Patient
/// resource and a Condition; the ids of both.
async fn own_condition(w: &Web, s: &Signed) -> (String, String) {
    let (st, v, _) =
        w.h.post("/auth/tokens", json!({"ttl_s": 3600}), Some(s))
            .await;
    assert_eq!(st, 201);
    let token = v["token"].as_str().unwrap().to_owned();
    let post = |body: Value| {
        let (c, url, token) = (w.h.c.clone(), w.url.clone(), token.clone());
        async move {
            let rtype = body["resourceType"].as_str().unwrap().to_owned();
            let r = c
                .post(format!("{url}/fhir/{rtype}"))
                .bearer_auth(token)
                .header("content-type", "application/fhir+json")
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let pid = post(json!({"resourceType": "Patient", "name": [{"family": "Synthetic", "given": ["Pat"]}], "gender": "unknown"})).await;
    let condition = post(json!({"resourceType": "Condition", "subject": {"reference": format!("Patient/{pid}")},
        "code": {"text": "Synthetic condition"}, "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]}}))
    .await;
    (pid, condition)
}

#[test]
fn access_requests_agreements_and_erasure() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_with(tmp.path(), &["--retention", "Condition=3650"]);
    let node = start(&dir);
    let w = Web::new(&node, &dir);
    rt().block_on(async {
        let admin = signin::admin_signed_in(&w.h, &dir, &node).await;
        let (doctor, doctor_id) = signin::staff_signed_in(
            &w.h,
            &dir,
            &admin,
            "Dr Req",
            "req@hospital.example",
            "doctor",
        )
        .await;
        let (insurer, insurer_id) = signin::staff_signed_in(
            &w.h,
            &dir,
            &admin,
            "Claims Desk",
            "claims@insurer.example",
            "insurer",
        )
        .await;
        let (pat, pat_id) = patient(&w, &dir, &admin, "one@patients.example").await;
        let (other, other_id) = patient(&w, &dir, &admin, "two@patients.example").await;
        let (auditor, _) = signin::staff_signed_in(
            &w.h,
            &dir,
            &admin,
            "Audit Desk",
            "audit@hospital.example",
            "auditor",
        )
        .await;
        let (_, record) = own_condition(&w, &pat).await;

        // --- Access request: the doctor asks, the patient approves. ---
        // Malformed input: each error next to its field, what was typed kept.
        let (st, html, _) = w
            .form(
                "/clinician/requests",
                Some(&doctor),
                true,
                &[
                    ("patient", "someone"),
                    ("days", "0"),
                    ("categories", "not a kind!"),
                    ("text", ""),
                ],
            )
            .await;
        assert_eq!(st, 400);
        for f in ["patient", "days", "categories", "text"] {
            assert!(html.contains(&format!("id=\"{f}-error\"")), "{f}: {html}");
        }
        assert!(html.contains("value=\"someone\""), "what was typed is kept");
        // A huge note is refused, not truncated.
        let huge = "x".repeat(5_000);
        let (st, html, _) = w
            .form(
                "/clinician/requests",
                Some(&doctor),
                true,
                &[("patient", &pat_id), ("days", "30"), ("text", &huge)],
            )
            .await;
        assert_eq!(st, 400);
        assert!(html.contains("id=\"text-error\""));
        assert!(w.inbox(&pat_id, &pat).await.is_empty(), "nothing sent");
        // Without the CSRF token, or signed out: refused, nothing sent.
        let ask = [
            ("patient", pat_id.as_str()),
            ("categories", "Condition"),
            ("days", "30"),
            ("text", "Referral: I need your history."),
        ];
        let (st, _, _) = w
            .form("/clinician/requests", Some(&doctor), false, &ask)
            .await;
        assert_eq!(st, 403);
        let (st, _, to) = w.form("/clinician/requests", None, false, &ask).await;
        assert_eq!((st, to.starts_with("/signin")), (303, true));
        // A patient cannot send access requests.
        let (st, _, _) = w
            .form("/clinician/requests", Some(&other), true, &ask)
            .await;
        assert_eq!(st, 403);
        assert!(w.inbox(&pat_id, &pat).await.is_empty(), "nothing sent");
        let (st, _, to) = w
            .form("/clinician/requests", Some(&doctor), true, &ask)
            .await;
        assert_eq!((st, to.as_str()), (303, "/clinician/requests"));
        let inbox = w.inbox(&pat_id, &pat).await;
        assert_eq!(inbox.len(), 1);
        assert_eq!(inbox[0]["status"]["status"], "pending");
        let (_, sent) = w.page("/clinician/requests", Some(&doctor)).await;
        assert!(sent.contains("Condition, 30 days") && sent.contains("pending"));
        // The patient reads it: the note opens with their own key.
        let (st, html) = w.page("/patient/messages", Some(&pat)).await;
        assert_eq!(st, 200);
        assert!(html.contains("Referral: I need your history.") && html.contains("Dr Req"));
        let msg = hidden_after(&html, "action=\"/patient/messages/respond\"", "message");
        // The ledger holds only the CID: the note's text is nowhere in the message.
        let on_ledger = w.v1(&format!("/v1/messages/{msg}"), &pat).await;
        assert!(!on_ledger.to_string().contains("Referral"));
        // Another patient: the message looks missing, and it stays pending.
        let (_, html) = w.page("/patient/messages", Some(&other)).await;
        assert!(!html.contains("Referral"));
        let (st, _, _) = w
            .form(
                "/patient/messages/respond",
                Some(&other),
                true,
                &[("message", &msg), ("decision", "approve")],
            )
            .await;
        assert_eq!(st, 404);
        // The doctor cannot answer their own request; nor can anyone without the token.
        let (st, _, _) = w
            .form(
                "/patient/messages/respond",
                Some(&doctor),
                true,
                &[("message", &msg), ("decision", "approve")],
            )
            .await;
        assert_eq!(st, 403);
        let (st, _, _) = w
            .form(
                "/patient/messages/respond",
                Some(&pat),
                false,
                &[("message", &msg), ("decision", "approve")],
            )
            .await;
        assert_eq!(st, 403);
        let (st, _, _) = w
            .form(
                "/patient/messages/respond",
                Some(&pat),
                true,
                &[("message", &msg), ("decision", "maybe")],
            )
            .await;
        assert_eq!(st, 400);
        let (st, _, _) = w
            .form(
                "/patient/messages/respond",
                Some(&pat),
                true,
                &[("message", "not-an-id"), ("decision", "approve")],
            )
            .await;
        assert_eq!(st, 404);
        assert_eq!(
            w.inbox(&pat_id, &pat).await[0]["status"]["status"],
            "pending"
        );
        assert!(w.grants(&pat_id, &pat).await.is_empty(), "nothing granted");
        // Approving grants exactly what was asked, to the doctor.
        let (st, _, to) = w
            .form(
                "/patient/messages/respond",
                Some(&pat),
                true,
                &[("message", &msg), ("decision", "approve")],
            )
            .await;
        assert_eq!((st, to.as_str()), (303, "/patient/messages"));
        let grants = w.grants(&pat_id, &pat).await;
        assert_eq!(grants.len(), 1);
        let g = &grants[0];
        assert_eq!(
            g["grantee"],
            json!({"type": "account", "id": doctor_id.to_string()}),
            "{g}"
        );
        assert_eq!(g["purpose"], "treatment");
        assert_eq!(
            g["scope"],
            json!({"type": "categories", "items": ["Condition"]}),
            "{g}"
        );
        let days =
            (g["expiry_ms"].as_u64().unwrap() - g["start_ms"].as_u64().unwrap()) / 86_400_000;
        assert_eq!(days, 30);
        assert_eq!(
            w.inbox(&pat_id, &pat).await[0]["status"]["status"],
            "approved"
        );
        // A replayed approval is refused and grants nothing more.
        let (st, html, _) = w
            .form(
                "/patient/messages/respond",
                Some(&pat),
                true,
                &[("message", &msg), ("decision", "approve")],
            )
            .await;
        assert_eq!(st, 409, "{html}");
        assert!(html.contains("answered already"));
        assert_eq!(w.grants(&pat_id, &pat).await.len(), 1);
        let (_, sent) = w.page("/clinician/requests", Some(&doctor)).await;
        assert!(sent.contains("approved"));
        // A message that is not an access request cannot be approved into a grant:
        // the notice the ledger sends when a doctor opens break-glass.
        let (st, _, _) = w
            .form(
                "/clinician/break-glass",
                Some(&doctor),
                true,
                &[
                    ("patient", &pat_id),
                    ("reason", "other"),
                    ("confirm", "yes"),
                ],
            )
            .await;
        assert_eq!(st, 303);
        let notice = w
            .inbox(&pat_id, &pat)
            .await
            .into_iter()
            .find(|m| !m["break_glass"].is_null())
            .expect("a break-glass notice");
        let nid = notice["id"].as_str().unwrap().to_owned();
        let (_, html) = w.page("/patient/messages", Some(&pat)).await;
        assert!(html.contains("Emergency access to your records"));
        let (st, html, _) = w
            .form(
                "/patient/messages/respond",
                Some(&pat),
                true,
                &[("message", &nid), ("decision", "approve")],
            )
            .await;
        assert_eq!(st, 400, "{html}");
        assert!(html.contains("Only an access request"));
        assert_eq!(w.grants(&pat_id, &pat).await.len(), 1, "nothing granted");
        let notice = w.inbox(&pat_id, &pat).await;
        assert!(
            notice
                .iter()
                .any(|m| m["id"] == nid.as_str() && m["status"]["status"] == "pending")
        );

        // --- Paid agreement: funded by the operator, proposed, answered. ---
        // Only the consortium operator mints; the doctor is refused and nothing moves.
        let (st, _, _) = w
            .form(
                "/consortium/mint",
                Some(&doctor),
                true,
                &[("to", &insurer_id.to_string()), ("amount", "500")],
            )
            .await;
        assert_eq!(st, 403);
        let (st, _) = w.page("/consortium", Some(&insurer)).await;
        assert_eq!(st, 403);
        let (st, html, _) = w
            .form(
                "/consortium/mint",
                Some(&admin),
                true,
                &[("to", "nobody"), ("amount", "-5")],
            )
            .await;
        assert_eq!(st, 400);
        assert!(html.contains("id=\"to-error\"") && html.contains("id=\"amount-error\""));
        assert_eq!(w.balance(&insurer_id.to_string(), &insurer).await, 0);
        let (st, _, _) = w
            .form(
                "/consortium/mint",
                Some(&admin),
                true,
                &[("to", &insurer_id.to_string()), ("amount", "500")],
            )
            .await;
        assert_eq!(st, 303);
        assert_eq!(w.balance(&insurer_id.to_string(), &insurer).await, 500);
        // More than the balance: refused next to the price, nothing held.
        let (st, html, _) = w.propose(&insurer, &pat_id, "900").await;
        assert_eq!(st, 400);
        assert!(html.contains("id=\"price-error\""), "{html}");
        // To someone who is not a patient (the doctor): one refusal for all such cases.
        let (st, html, _) = w.propose(&insurer, &doctor_id.to_string(), "100").await;
        assert_eq!(st, 400);
        assert!(html.contains("id=\"patient-error\""));
        // A doctor cannot propose.
        let (st, _, _) = w.propose(&doctor, &pat_id, "100").await;
        assert_eq!(st, 403);
        assert_eq!(
            w.balance(&insurer_id.to_string(), &insurer).await,
            500,
            "nothing held"
        );
        let (st, _, to) = w.propose(&insurer, &pat_id, "200").await;
        assert_eq!((st, to.as_str()), (303, "/insurer"));
        assert_eq!(
            w.balance(&insurer_id.to_string(), &insurer).await,
            300,
            "price in escrow"
        );
        let (_, html) = w.page("/insurer", Some(&insurer)).await;
        assert!(html.contains("waiting until"));
        let (st, html) = w.page("/patient/agreements", Some(&pat)).await;
        assert_eq!(st, 200);
        assert!(html.contains("Claims settlement only.") && html.contains("200 units"));
        let agr = hidden_after(&html, "action=\"/patient/agreements/respond\"", "agreement");
        // The insurer cannot read before acceptance.
        let (st, _) = w
            .page(&format!("/insurer/agreements/{agr}"), Some(&insurer))
            .await;
        assert_eq!(st, 403);
        // Another patient, the insurer itself, no token: refused, nothing paid.
        let (st, _, _) = w
            .form(
                "/patient/agreements/respond",
                Some(&other),
                true,
                &[("agreement", &agr), ("decision", "accept")],
            )
            .await;
        assert_eq!(st, 404);
        let (_, html) = w.page("/patient/agreements", Some(&other)).await;
        assert!(!html.contains("Claims settlement"));
        let (st, _, _) = w
            .form(
                "/patient/agreements/respond",
                Some(&insurer),
                true,
                &[("agreement", &agr), ("decision", "accept")],
            )
            .await;
        assert_eq!(st, 403);
        let (st, _, _) = w
            .form(
                "/patient/agreements/respond",
                Some(&pat),
                false,
                &[("agreement", &agr), ("decision", "accept")],
            )
            .await;
        assert_eq!(st, 403);
        assert_eq!(w.balance(&pat_id, &pat).await, 0);
        assert_eq!(w.grants(&pat_id, &pat).await.len(), 1);
        let (st, _, _) = w
            .form(
                "/patient/agreements/respond",
                Some(&pat),
                true,
                &[("agreement", &agr), ("decision", "accept")],
            )
            .await;
        assert_eq!(st, 303);
        assert_eq!(w.balance(&pat_id, &pat).await, 200, "paid on acceptance");
        assert_eq!(
            w.grants(&pat_id, &pat).await.len(),
            2,
            "the agreement's grant"
        );
        let (st, _, _) = w
            .form(
                "/patient/agreements/respond",
                Some(&pat),
                true,
                &[("agreement", &agr), ("decision", "reject")],
            )
            .await;
        assert_eq!(st, 409, "answered once");
        assert_eq!(
            w.balance(&insurer_id.to_string(), &insurer).await,
            300,
            "no refund after acceptance"
        );
        // The insurer reads what the agreement allows, and that read is in the log.
        let (st, html) = w
            .page(&format!("/insurer/agreements/{agr}"), Some(&insurer))
            .await;
        assert_eq!(st, 200, "{html}");
        let link = format!("/insurer/records/{record}");
        assert!(html.contains(&link), "{html}");
        let (st, html) = w.page(&link, Some(&insurer)).await;
        assert_eq!(st, 200);
        assert!(html.contains("Synthetic condition"));
        // Reads are reported to the ledger in batches: wait for this one.
        let mut logged = false;
        for _ in 0..100 {
            let (_, log) = w.page("/patient/access-log", Some(&pat)).await;
            if log.contains("Claims Desk") {
                logged = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(logged, "the insurer's read is in the patient's access log");
        // The auditor's proof of that read (a node's access report) checks offline.
        let text = checked_proof(&w, &dir, &auditor, &format!("accessor={insurer_id}")).await;
        assert!(
            text.contains("report_access transaction") && text.contains("time_ms"),
            "{text}"
        );
        // Another patient's agreement page for the insurer: absent.
        let (st, _) = w
            .page(
                &format!("/insurer/agreements/{}", "ab".repeat(32)),
                Some(&insurer),
            )
            .await;
        assert_eq!(st, 404);

        // --- Erasure with a retention hold (Condition: 10 years). ---
        let (st, html) = w
            .page(&format!("/patient/records/{record}"), Some(&pat))
            .await;
        assert_eq!(st, 200);
        assert!(html.contains("Ask to erase"));
        let erase = format!("/patient/records/{record}/erase");
        let (st, html, _) = w.form(&erase, Some(&pat), true, &[]).await;
        assert_eq!(st, 400, "the confirmation is required");
        assert!(html.contains("id=\"confirm-error\""));
        let (st, _, _) = w
            .form(&erase, Some(&other), true, &[("confirm", "yes")])
            .await;
        assert_eq!(st, 404, "another patient's record looks missing");
        let (st, _, _) = w
            .form(&erase, Some(&pat), false, &[("confirm", "yes")])
            .await;
        assert_eq!(st, 403);
        let rec = w.v1(&format!("/v1/records/{record}"), &pat).await;
        assert_eq!(rec["erasure"]["status"], "none", "{rec}");
        let (st, _, to) = w
            .form(&erase, Some(&pat), true, &[("confirm", "yes")])
            .await;
        assert_eq!(
            (st, to.as_str()),
            (303, format!("/patient/records/{record}").as_str())
        );
        let rec = w.v1(&format!("/v1/records/{record}"), &pat).await;
        assert_eq!(rec["erasure"]["status"], "retained", "{rec}");
        let (_, html) = w
            .page(&format!("/patient/records/{record}"), Some(&pat))
            .await;
        assert!(html.contains("kept for 10 years"), "the hold is shown");
        assert!(!html.contains("Ask to erase"), "asked once");
        let (st, _, _) = w
            .form(&erase, Some(&pat), true, &[("confirm", "yes")])
            .await;
        assert_eq!(st, 409, "a second request is refused");
        let _ = other_id;
    });
    node.stop();
}

#[test]
fn password_roles_recovery_proofs_and_the_consortium() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init(tmp.path());
    let node = start(&dir);
    let w = Web::new(&node, &dir);
    rt().block_on(async {
        let admin = signin::admin_signed_in(&w.h, &dir, &node).await;
        let (admin2, admin2_id) = signin::staff_signed_in(
            &w.h,
            &dir,
            &admin,
            "Second Admin",
            "admin2@hospital.example",
            "hospital_admin",
        )
        .await;
        let (nurse, nurse_id) = signin::staff_signed_in(
            &w.h,
            &dir,
            &admin,
            "Nurse Pw",
            "nurse@hospital.example",
            "nurse",
        )
        .await;
        let (auditor, _) = signin::staff_signed_in(
            &w.h,
            &dir,
            &admin,
            "Audit Desk",
            "audit@hospital.example",
            "auditor",
        )
        .await;
        let (pat, pat_id) = patient(&w, &dir, &admin, "pw@patients.example").await;

        // --- Password change. ---
        let new_pw = "harbour violet quartz 1984 teapot";
        let (st, html, _) = w
            .form(
                "/account/password",
                Some(&pat),
                true,
                &[
                    ("current_password", "wrong one entirely"),
                    ("new_password", new_pw),
                    ("new_password2", new_pw),
                ],
            )
            .await;
        assert_eq!(st, 400);
        assert!(html.contains("id=\"current_password-error\""));
        assert!(!html.contains(new_pw), "passwords are never shown again");
        let (st, html, _) = w
            .form(
                "/account/password",
                Some(&pat),
                true,
                &[
                    ("current_password", STRONG),
                    ("new_password", "short"),
                    ("new_password2", "short"),
                ],
            )
            .await;
        assert_eq!(st, 400);
        assert!(html.contains("id=\"new_password-error\""));
        let (st, html, _) = w
            .form(
                "/account/password",
                Some(&pat),
                true,
                &[
                    ("current_password", STRONG),
                    ("new_password", new_pw),
                    ("new_password2", "different"),
                ],
            )
            .await;
        assert_eq!(st, 400);
        assert!(html.contains("id=\"new_password2-error\""));
        let (st, _, _) = w
            .form(
                "/account/password",
                Some(&pat),
                false,
                &[
                    ("current_password", STRONG),
                    ("new_password", new_pw),
                    ("new_password2", new_pw),
                ],
            )
            .await;
        assert_eq!(st, 403, "no CSRF token");
        let (st, _, to) = w
            .form(
                "/account/password",
                None,
                false,
                &[
                    ("current_password", STRONG),
                    ("new_password", new_pw),
                    ("new_password2", new_pw),
                ],
            )
            .await;
        assert_eq!((st, to.starts_with("/signin")), (303, true));
        // None of that changed the password.
        let (check, _) =
            w.h.login("pw@patients.example", STRONG, None)
                .await
                .unwrap();
        let (st, _, _) = w
            .form(
                "/account/password",
                Some(&pat),
                true,
                &[
                    ("current_password", STRONG),
                    ("new_password", new_pw),
                    ("new_password2", new_pw),
                ],
            )
            .await;
        assert_eq!(st, 200);
        // Every session ended; the old password no longer opens the account.
        let (st, _) = w.page("/patient", Some(&pat)).await;
        assert_eq!(st, 303);
        let (st, _) = w.page("/patient", Some(&check)).await;
        assert_eq!(st, 303);
        assert_eq!(
            w.h.login("pw@patients.example", STRONG, None)
                .await
                .err()
                .map(|e| e.0),
            Some(401)
        );
        let (pat, _) =
            w.h.login("pw@patients.example", new_pw, None)
                .await
                .unwrap();
        // The keys are the same keys: the patient's account is unchanged.
        let me = w.v1(&format!("/v1/accounts/{pat_id}"), &pat).await;
        assert!(me["balance"].is_u64(), "{me}");

        // --- Roles: assign and revoke. ---
        let before = w.members(&admin).await;
        let (st, _, _) = w
            .form(
                "/admin/roles",
                Some(&nurse),
                true,
                &[
                    ("action", "assign"),
                    ("account", &nurse_id.to_string()),
                    ("role", "doctor"),
                ],
            )
            .await;
        assert_eq!(st, 403, "a nurse cannot give herself a role");
        let (st, _, _) = w
            .form(
                "/admin/roles",
                Some(&admin),
                false,
                &[
                    ("action", "assign"),
                    ("account", &nurse_id.to_string()),
                    ("role", "doctor"),
                ],
            )
            .await;
        assert_eq!(st, 403, "no CSRF token");
        let (st, html, _) = w
            .form(
                "/admin/roles",
                Some(&admin),
                true,
                &[
                    ("action", "assign"),
                    ("account", "did:key:nope"),
                    ("role", "patient"),
                ],
            )
            .await;
        assert_eq!(st, 400);
        assert!(html.contains("id=\"account-error\"") && html.contains("id=\"role-error\""));
        let (st, html, _) = w
            .form(
                "/admin/roles",
                Some(&admin),
                true,
                &[
                    ("action", "revoke"),
                    ("account", &common::admin(&dir).account().to_did()),
                    ("role", "hospital_admin"),
                ],
            )
            .await;
        assert_eq!(st, 400, "an admin cannot remove their own admin role");
        assert!(html.contains("your own admin role"));
        assert_eq!(w.members(&admin).await, before, "nothing changed");
        let (st, _, _) = w
            .form(
                "/admin/roles",
                Some(&admin),
                true,
                &[
                    ("action", "assign"),
                    ("account", &nurse_id.to_string()),
                    ("role", "auditor"),
                ],
            )
            .await;
        assert_eq!(st, 303);
        let m = w.members(&admin).await;
        assert!(
            m.as_array()
                .unwrap()
                .iter()
                .any(|m| m["account"] == nurse_id.to_string() && m["role"] == "auditor"),
            "{m}"
        );
        let (st, _, _) = w
            .form(
                "/admin/roles",
                Some(&admin),
                true,
                &[
                    ("action", "revoke"),
                    ("account", &nurse_id.to_string()),
                    ("role", "auditor"),
                ],
            )
            .await;
        assert_eq!(st, 303);
        assert_eq!(w.members(&admin).await, before, "assigned, then revoked");

        // --- Organisation-assisted recovery: one admin asks, another approves. ---
        let (st, html, _) = w
            .form(
                "/admin/recovery",
                Some(&admin),
                true,
                &[("member_email", "nobody@hospital.example")],
            )
            .await;
        assert_eq!(st, 400);
        assert!(html.contains("id=\"member_email-error\""));
        let (st, _, _) = w
            .form(
                "/admin/recovery",
                Some(&nurse),
                true,
                &[("member_email", "nurse@hospital.example")],
            )
            .await;
        assert_eq!(st, 403);
        let (st, _, _) = w
            .form(
                "/admin/recovery",
                Some(&admin),
                true,
                &[("member_email", "nurse@hospital.example")],
            )
            .await;
        assert_eq!(st, 303);
        let (_, html) = w.page("/admin", Some(&admin)).await;
        assert!(
            html.contains("waiting for a second admin"),
            "the asker cannot approve"
        );
        let (_, html) = w.page("/admin", Some(&admin2)).await;
        let request = hidden_after(&html, "action=\"/admin/recovery/approve\"", "request");
        // The asker's own approval is refused by the ledger; no link is mailed.
        let mails = std::fs::read_dir(dir.join("outbox")).unwrap().count();
        let (st, html, _) = w
            .form(
                "/admin/recovery/approve",
                Some(&admin),
                true,
                &[("request", &request)],
            )
            .await;
        assert_eq!(st, 409, "{html}");
        let (st, _, _) = w
            .form(
                "/admin/recovery/approve",
                Some(&nurse),
                true,
                &[("request", &request)],
            )
            .await;
        assert_eq!(st, 403);
        let (st, _, _) = w
            .form(
                "/admin/recovery/approve",
                Some(&admin2),
                true,
                &[("request", &"ab".repeat(32))],
            )
            .await;
        assert_eq!(st, 404);
        assert_eq!(
            std::fs::read_dir(dir.join("outbox")).unwrap().count(),
            mails
        );
        let (st, _, _) = w
            .form(
                "/admin/recovery/approve",
                Some(&admin2),
                true,
                &[("request", &request)],
            )
            .await;
        assert_eq!(st, 303);
        let token = mail_token(&dir, "nurse@hospital.example", "token");
        let (st, html) = w.page(&format!("/recovery?token={token}"), None).await;
        assert_eq!(st, 200, "the mailed link opens a portal page");
        assert!(html.contains("new_password"));
        let (_, html) = w.page("/admin", Some(&admin)).await;
        assert!(
            html.contains("approved</span> by Second Admin"),
            "{}",
            &html[html.find("recoveries").unwrap()..][..600]
        );
        let _ = admin2_id;

        // --- The node and chain status on the admin page. ---
        let (_, html) = w.page("/admin", Some(&admin)).await;
        assert!(html.contains("id=\"verified\"") && html.contains("Verified up to height"));
        assert!(html.contains("(this node)") && html.contains("leader"));

        // --- The auditor's proof download, checked offline. ---
        let (st, html) = w.page("/auditor?from=2000-01-01", Some(&auditor)).await;
        assert_eq!(st, 200);
        let at = html.find("href=\"/auditor/proof/").expect("a proof link") + 6;
        let link = html[at..at + html[at..].find('"').unwrap()].to_owned();
        for who in [&pat, &nurse] {
            let (st, _) = w.page(&link, Some(who)).await;
            assert_eq!(st, 403, "only auditors download proofs");
        }
        let (st, _) = w.page("/auditor/proof/999999999", Some(&auditor)).await;
        assert_eq!(st, 404);
        let (st, _) = w.page("/auditor/proof/x", Some(&auditor)).await;
        assert_eq!(st, 404);
        let r =
            w.c.get(format!("{}{link}", w.url))
                .header(COOKIE, &auditor.cookie)
                .send()
                .await
                .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()["content-disposition"]
                .to_str()
                .unwrap()
                .starts_with("attachment")
        );
        let bundle: Value = r.json().await.unwrap();
        let file = tmp.path().join("proof.json");
        std::fs::write(&file, serde_json::to_vec(&bundle).unwrap()).unwrap();
        let out = medledger(&["proof", "check", file.to_str().unwrap()], &dir);
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains("proof OK") && text.contains("states this entry's accessor"),
            "{text}"
        );
        eprintln!("{text}");
        // A tampered bundle is refused, naming what is wrong.
        let mut bad = bundle.clone();
        let p0 = bad["inclusion"]["proof"][0].as_str().map(str::to_owned);
        match p0 {
            Some(p) => {
                bad["inclusion"]["proof"][0] = json!(format!(
                    "{}{}",
                    if p.starts_with('0') { "1" } else { "0" },
                    &p[1..]
                ))
            }
            None => {
                bad["inclusion"]["leaf_index"] =
                    json!(bad["inclusion"]["leaf_index"].as_u64().unwrap() + 1)
            }
        }
        let mut wrong_tx = bundle.clone();
        wrong_tx["entry"]["tx"] = json!("ab".repeat(32));
        let mut forged = bundle.clone();
        forged["entry"]["allowed"] = json!(!bundle["entry"]["allowed"].as_bool().unwrap());
        let mut other_accessor = bundle.clone();
        other_accessor["entry"]["accessor"] = json!(pat_id);
        let mut bad_tx = bundle.clone();
        let mut raw = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            bundle["tx"].as_str().unwrap(),
        )
        .unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        bad_tx["tx"] = json!(base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            raw
        ));
        let mut unsigned = bundle.clone();
        unsigned["tree_head"] = json!(bundle["tree_head"].as_str().unwrap().replace("— ", "— x"));
        for (b, says) in [
            (bad, "does NOT verify"),
            (wrong_tx, "the entry names"),
            (unsigned, "tree head"),
        ] {
            std::fs::write(&file, serde_json::to_vec(&b).unwrap()).unwrap();
            let out = medledger(&["proof", "check", file.to_str().unwrap()], &dir);
            let text = String::from_utf8_lossy(&out.stderr).to_string();
            assert!(!out.status.success(), "a tampered bundle passed");
            assert!(text.contains(says), "{says}: {text}");
        }
        std::fs::write(&file, b"{not json").unwrap();
        let out = medledger(&["proof", "check", file.to_str().unwrap()], &dir);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("not a medledger proof bundle"));

        // --- The consortium operator: organisations and nodes. ---
        let (st, html) = w.page("/consortium", Some(&admin)).await;
        assert_eq!(st, 200);
        assert!(html.contains("general") && html.contains("id=\"nodes\""));
        for who in [&admin2, &pat, &auditor] {
            let (st, _) = w.page("/consortium", Some(who)).await;
            assert_eq!(st, 403, "only the consortium admin account");
            let (st, _, _) = w
                .form(
                    "/consortium/orgs",
                    Some(who),
                    true,
                    &[("org", "rogue"), ("admin", &pat_id)],
                )
                .await;
            assert_eq!(st, 403);
        }
        let (st, html, _) = w
            .form(
                "/consortium/orgs",
                Some(&admin),
                true,
                &[("org", "Bad Org!"), ("admin", "x")],
            )
            .await;
        assert_eq!(st, 400);
        assert!(html.contains("id=\"org-error\"") && html.contains("id=\"admin-error\""));
        let (st, _) =
            w.h.get("/v1/orgs/rogue", &[("cookie", &admin.cookie)])
                .await;
        assert_eq!(st, 404, "no organisation was created by the refused posts");
        let (st, _, _) = w
            .form(
                "/consortium/orgs",
                Some(&admin),
                true,
                &[("org", "northside"), ("admin", &admin2_id.to_string())],
            )
            .await;
        assert_eq!(st, 303);
        let (_, html) = w.page("/consortium", Some(&admin)).await;
        assert!(html.contains("northside"));
    });
    node.stop();
}

/// Downloads the proof of the first entry the auditor's explorer lists for `query` and
/// checks it offline; the checker's report.
async fn checked_proof(w: &Web, dir: &Path, auditor: &Signed, query: &str) -> String {
    let (st, html) = w.page(&format!("/auditor?{query}"), Some(auditor)).await;
    assert_eq!(st, 200);
    let at = html.find("href=\"/auditor/proof/").expect("a proof link") + 6;
    let link = &html[at..at + html[at..].find('"').unwrap()];
    let r =
        w.c.get(format!("{}{link}", w.url))
            .header(COOKIE, &auditor.cookie)
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 200);
    let file = dir.parent().unwrap().join("checked-proof.json");
    std::fs::write(&file, r.bytes().await.unwrap()).unwrap();
    let out = medledger(&["proof", "check", file.to_str().unwrap()], dir);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    text
}

/// A small, valid-looking PDF (synthetic; its first bytes are what the node checks).
fn pdf() -> Vec<u8> {
    let mut b = b"%PDF-1.4\n% synthetic test document\n".to_vec();
    b.extend(std::iter::repeat_n(b'x', 3000));
    b.extend_from_slice(b"\n%%EOF\n");
    b
}

impl Web {
    /// Uploads `file` as `who` for the patient whose Patient resource is `pid`.
    async fn upload(
        &self,
        pid: &str,
        who: Option<&Signed>,
        csrf: bool,
        title: &str,
        file: Vec<u8>,
    ) -> (u16, String, String) {
        let mut form = reqwest::multipart::Form::new();
        if let (Some(s), true) = (who, csrf) {
            form = form.text("csrf", s.csrf.clone());
        }
        form = form
            .text("title", title.to_owned())
            .text("kind", "discharge")
            .part(
                "file",
                reqwest::multipart::Part::bytes(file).file_name("letter.pdf"),
            );
        let mut r = self
            .c
            .post(format!("{}/clinician/patients/{pid}/documents", self.url))
            .multipart(form);
        if let Some(s) = who {
            r = r.header(COOKIE, &s.cookie);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        let to = r
            .headers()
            .get(LOCATION)
            .map(|l| l.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, r.text().await.unwrap(), to)
    }

    async fn records(&self, did: &str, who: &Signed) -> usize {
        self.v1(&format!("/v1/patients/{did}/records"), who).await["records"]
            .as_array()
            .unwrap()
            .len()
    }
}

#[test]
fn documents_are_uploaded_sealed_and_downloaded_only_by_who_may_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init(tmp.path());
    let node = start(&dir);
    let w = Web::new(&node, &dir);
    rt().block_on(async {
        let admin = signin::admin_signed_in(&w.h, &dir, &node).await;
        let (doctor, doctor_id) = signin::staff_signed_in(
            &w.h,
            &dir,
            &admin,
            "Dr Doc",
            "doc@hospital.example",
            "doctor",
        )
        .await;
        let (stranger, _) = signin::staff_signed_in(
            &w.h,
            &dir,
            &admin,
            "Dr Stranger",
            "stranger@hospital.example",
            "doctor",
        )
        .await;
        let (pat, pat_id) = patient(&w, &dir, &admin, "doc@patients.example").await;
        let (other, _) = patient(&w, &dir, &admin, "notme@patients.example").await;
        let (pid, _) = own_condition(&w, &pat).await;
        // The patient grants Dr Doc treatment access (the portal form).
        let (st, _, _) = w
            .form(
                "/patient/permissions",
                Some(&pat),
                true,
                &[
                    ("grantee", &doctor_id.to_string()),
                    ("purpose", "treatment"),
                    ("days", "30"),
                ],
            )
            .await;
        assert_eq!(st, 303);
        let before = w.records(&pat_id, &pat).await;

        // Finding the patient: a posted search (names never go into a URL), only
        // among the patients who granted the searcher.
        let (st, html, _) = w
            .form("/clinician", Some(&doctor), true, &[("name", "Synth")])
            .await;
        assert_eq!(st, 200);
        assert!(
            html.contains(&format!("/clinician/patients/{pid}")),
            "found"
        );
        let (_, html, _) = w
            .form("/clinician", Some(&stranger), true, &[("name", "Synth")])
            .await;
        assert!(!html.contains(&pid), "not among the stranger's patients");
        let (st, _, _) = w
            .form("/clinician", Some(&doctor), false, &[("name", "Synth")])
            .await;
        assert_eq!(st, 403, "a search needs the CSRF token too");
        let (st, html, _) = w
            .form(
                "/clinician",
                Some(&doctor),
                true,
                &[("name", &"x".repeat(500))],
            )
            .await;
        assert_eq!(st, 400);
        assert!(html.contains("id=\"name-error\""));

        // Refusals first, none of which stores anything.
        let (st, _, to) = w.upload(&pid, None, false, "Letter", pdf()).await;
        assert_eq!((st, to.starts_with("/signin")), (303, true), "signed out");
        let (st, _, _) = w.upload(&pid, Some(&doctor), false, "Letter", pdf()).await;
        assert_eq!(st, 403, "no CSRF token");
        let (st, _, _) = w.upload(&pid, Some(&pat), true, "Letter", pdf()).await;
        assert_eq!(st, 403, "patients do not upload here");
        let (st, html, _) = w.upload(&pid, Some(&stranger), true, "Letter", pdf()).await;
        assert_eq!(st, 400, "a doctor without a grant");
        assert!(html.contains("id=\"file-error\"") && html.contains("may not add"));
        let (st, html, _) = w
            .upload(
                &pid,
                Some(&doctor),
                true,
                "Letter",
                b"<html><script>alert(1)</script>".to_vec(),
            )
            .await;
        assert_eq!(st, 400, "not a PDF or image, whatever its name says");
        assert!(html.contains("PDF, PNG or JPEG"));
        assert!(html.contains("value=\"Letter\""), "the title is kept");
        let (st, html, _) = w.upload(&pid, Some(&doctor), true, "", pdf()).await;
        assert_eq!(st, 400);
        assert!(html.contains("id=\"title-error\""));
        let mut huge = pdf();
        huge.resize(9 * 1024 * 1024, b'x');
        let (st, _, _) = w.upload(&pid, Some(&doctor), true, "Huge", huge).await;
        assert!(
            st == 400 || st == 413,
            "an oversized upload is refused: {st}"
        );
        assert_eq!(w.records(&pat_id, &pat).await, before, "nothing stored");

        // The doctor uploads; the document is a record of the patient.
        let (st, _, to) = w
            .upload(&pid, Some(&doctor), true, "Discharge letter", pdf())
            .await;
        assert_eq!(st, 303);
        assert!(to.starts_with("/clinician/records/"), "{to}");
        let doc = to.trim_start_matches("/clinician/records/").to_owned();
        assert_eq!(w.records(&pat_id, &pat).await, before + 1);
        let (st, html) = w.page(&to, Some(&doctor)).await;
        assert_eq!(st, 200);
        assert!(html.contains("Discharge letter") && html.contains("application/pdf"));
        assert!(html.contains(&format!("/clinician/records/{doc}/file")));
        // The ledger holds no trace of the content or its title.
        let on_ledger = w.v1(&format!("/v1/records/{doc}"), &pat).await.to_string();
        assert!(!on_ledger.contains("Discharge") && !on_ledger.contains("PDF"));

        // The patient downloads exactly the bytes uploaded.
        let (st, html) = w.page(&format!("/patient/records/{doc}"), Some(&pat)).await;
        assert_eq!(st, 200);
        let href = format!("/patient/records/{doc}/file");
        assert!(html.contains(&href));
        let r =
            w.c.get(format!("{}{href}", w.url))
                .header(COOKIE, &pat.cookie)
                .send()
                .await
                .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/pdf");
        assert_eq!(
            r.headers()["content-disposition"],
            "attachment; filename=\"document.pdf\"",
            "a neutral name"
        );
        assert_eq!(r.bytes().await.unwrap().to_vec(), pdf());
        // Another patient and a doctor without a grant: as if it did not exist.
        let (st, _) = w.page(&href, Some(&other)).await;
        assert_eq!(st, 404);
        let (st, _) = w
            .page(&format!("/clinician/records/{doc}/file"), Some(&stranger))
            .await;
        assert_eq!(st, 404);
        let (st, _) = w
            .page(&format!("/clinician/records/{doc}/file"), Some(&pat))
            .await;
        assert_eq!(st, 403, "another role's path");
        let (st, _) = w
            .page(
                &format!("/patient/records/{}/file", "ab".repeat(32)),
                Some(&pat),
            )
            .await;
        assert_eq!(st, 404);
        // The stranger's refused download is in the patient's access log.
        let mut logged = false;
        for _ in 0..100 {
            let (_, log) = w.page("/patient/access-log", Some(&pat)).await;
            if log.contains("Dr Stranger") && log.contains("refused") {
                logged = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(logged, "the refused download is audited");
    });
    node.stop();
}

impl Web {
    /// A public form's page: its double-submit cookie and `pre` token.
    async fn public_page(&self, path: &str) -> (u16, String, String, String) {
        let r = self
            .c
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let cookie = r
            .headers()
            .get("set-cookie")
            .map(|c| c.to_str().unwrap().split(';').next().unwrap().to_owned())
            .unwrap_or_default();
        let html = r.text().await.unwrap();
        let pre = hidden_after(&html, "<form", "pre");
        (status, html, cookie, pre)
    }

    async fn public_form(
        &self,
        path: &str,
        cookie: &str,
        fields: &[(&str, &str)],
    ) -> (u16, String) {
        let r = self
            .c
            .post(format!("{}{path}", self.url))
            .header(COOKIE, cookie)
            .form(fields)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

#[test]
fn an_account_a_clinic_created_is_claimed_once_by_the_person_it_was_sent_to() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init(tmp.path());
    let node = start(&dir);
    let w = Web::new(&node, &dir);
    rt().block_on(async {
        let admin = signin::admin_signed_in(&w.h, &dir, &node).await;
        let (doctor, _) = signin::staff_signed_in(
            &w.h,
            &dir,
            &admin,
            "Dr Desk",
            "desk@hospital.example",
            "doctor",
        )
        .await;
        let (pat, _) = patient(&w, &dir, &admin, "own@patients.example").await;
        // A patient registered at the desk: the intake form without an account id.
        let (st, html, chart) = w
            .form(
                "/clinician/intake",
                Some(&doctor),
                true,
                &[
                    ("given", "Custo"),
                    ("family", "Dial"),
                    ("birth_date", "1970-01-01"),
                    ("gender", "other"),
                    ("weight", "70"),
                    ("height", "170"),
                ],
            )
            .await;
        assert_eq!(st, 303, "{html}");
        let pid = chart.trim_start_matches("/clinician/patients/").to_owned();
        let (st, html) = w.page(&chart, Some(&doctor)).await;
        assert_eq!(st, 200);
        assert!(
            html.contains("Send the claim link"),
            "a desk patient can be invited"
        );
        let claim = format!("/clinician/patients/{pid}/claim");

        // Who may not send the link: a patient (another role), no CSRF token, a made-up
        // patient; a bad address is refused. No mail goes out.
        let mails = std::fs::read_dir(dir.join("outbox")).unwrap().count();
        let (st, _, _) = w
            .form(
                &claim,
                Some(&pat),
                true,
                &[("claim_email", "x@example.org")],
            )
            .await;
        assert_eq!(st, 403);
        let (st, _, _) = w
            .form(
                &claim,
                Some(&doctor),
                false,
                &[("claim_email", "x@example.org")],
            )
            .await;
        assert_eq!(st, 403);
        let (st, _, _) = w
            .form(
                &format!("/clinician/patients/{}/claim", "ab".repeat(32)),
                Some(&doctor),
                true,
                &[("claim_email", "x@example.org")],
            )
            .await;
        assert_eq!(st, 404);
        let (st, _, _) = w
            .form(
                &claim,
                Some(&doctor),
                true,
                &[("claim_email", "not an address")],
            )
            .await;
        assert_eq!(st, 400);
        assert_eq!(
            std::fs::read_dir(dir.join("outbox")).unwrap().count(),
            mails
        );
        // A good address: the link is mailed.
        let (st, _, _) = w
            .form(
                &claim,
                Some(&doctor),
                true,
                &[("claim_email", "custo@patients.example")],
            )
            .await;
        assert_eq!(st, 303);
        let token = mail_token(&dir, "custo@patients.example", "token");

        // The claim page: a bad link says so; a good one opens the form.
        let (st, html, _, _) = w.public_page("/claim?token=abcdef").await;
        assert_eq!(st, 400);
        assert!(html.contains("invalid"));
        let (st, _, cookie, pre) = w.public_page(&format!("/claim?token={token}")).await;
        assert_eq!(st, 200);
        let form = |pw: &'static str| {
            vec![
                ("pre", pre.clone()),
                ("token", token.clone()),
                ("name", "Custo Dial".to_owned()),
                ("email", "custo@patients.example".to_owned()),
                ("password", pw.to_owned()),
                ("password2", pw.to_owned()),
            ]
        };
        let pairs = |v: &Vec<(&'static str, String)>| -> Vec<(&'static str, String)> { v.clone() };
        // Another site's post (no double-submit cookie) is refused before anything.
        let f = pairs(&form(STRONG));
        let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (st, _) = w.public_form("/claim", "", &f).await;
        assert_eq!(st, 403);
        let f = pairs(&form("short"));
        let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (st, html) = w.public_form("/claim", &cookie, &f).await;
        assert_eq!(st, 400);
        assert!(html.contains("id=\"password-error\""));
        assert!(
            html.contains("value=\"Custo Dial\""),
            "what was typed is kept"
        );
        let f = pairs(&form(STRONG));
        let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (st, html) = w.public_form("/claim", &cookie, &f).await;
        assert_eq!(st, 200, "{html}");
        assert!(html.contains("Registered"));
        assert!(
            html.matches("<li").count() >= 10,
            "recovery codes shown once"
        );
        // The link works once.
        let (st, html) = w.public_form("/claim", &cookie, &f).await;
        assert_eq!(st, 400);
        assert!(html.contains("invalid"));

        // The person verifies and signs in: the desk's records are theirs.
        signin::verify(&w.h, &dir, "custo@patients.example").await;
        let (me, _) =
            w.h.login("custo@patients.example", STRONG, None)
                .await
                .unwrap();
        let (st, html) = w.page("/patient", Some(&me)).await;
        assert_eq!(st, 200);
        assert!(
            html.contains("Observation") && html.contains(&pid),
            "{html}"
        );
        let (st, html) = w.page(&format!("/patient/records/{pid}"), Some(&me)).await;
        assert_eq!(st, 200);
        assert!(html.contains("Custo"));
        // The node no longer holds the keys: nothing more to claim.
        let (_, html) = w.page(&chart, Some(&doctor)).await;
        assert!(!html.contains("Send the claim link"));
        let (st, _, _) = w
            .form(
                &claim,
                Some(&doctor),
                true,
                &[("claim_email", "again@patients.example")],
            )
            .await;
        assert_eq!(st, 404);
    });
    node.stop();
}
