//! The web portal in a real browser: headless Chromium driven over WebDriver
//! (`chromedriver`, Debian's `chromium-driver`; `.ci/run` installs both) against a
//! node this test starts, with a screenshot of every step in
//! `target/tmp/portal-screenshots/`. The whole path of the issue: an admin invites a
//! patient, who registers, verifies and signs in; a doctor registers, is approved and
//! sets up a second factor; the patient grants the doctor treatment access; the
//! doctor adds an intake record; the patient sees it and the doctor's access; the
//! patient revokes; the doctor's next attempt is a denial page, which the patient's
//! access log shows. Alongside, plain HTTP tries what should not work: another role's
//! page (403), no session (to sign-in), a form without its CSRF token (403, nothing
//! changed).

mod common;

use common::signin::{STRONG, code_at, mail_token};
use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A chromedriver process on a free loopback port, stopped on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromedriver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect(
            "chromedriver (Debian package chromium-driver) must be installed: .ci/run installs it",
        );
    // Dropping the driver kills and waits for the process on every path below.
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return driver;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("chromedriver did not start");
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert("acceptInsecureCerts".into(), json!(true));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1000", "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync"]}),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

/// One browser with a name, saving numbered screenshots.
struct Person {
    c: Client,
    base: String,
    shots: PathBuf,
    name: &'static str,
}

/// Pages axe-core has checked (distinct paths).
static AXE_PAGES: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// axe-core's script from npm (`.ci/run` installs it into target/npm-axe).
fn axe_source() -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/npm-axe/node_modules/axe-core/axe.min.js");
    std::fs::read_to_string(&p).unwrap_or_else(|_| {
        panic!("npm axe-core missing: npm install --prefix target/npm-axe axe-core@4 (.ci/run does this)")
    })
}

static STEP: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Person {
    async fn open(&self, path: &str) {
        self.c.goto(&format!("{}{path}", self.base)).await.unwrap();
    }

    /// Saves a screenshot of this step and checks the page with axe-core.
    async fn shot(&self, what: &str) {
        self.axe().await;
        let n = STEP.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let png = self.c.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::write(
            self.shots.join(format!("{n:02}-{}-{what}.png", self.name)),
            png,
        )
        .unwrap();
    }

    /// Runs axe-core (npm, injected into the page) and fails on any serious or
    /// critical violation.
    async fn axe(&self) {
        self.c.execute(&axe_source(), vec![]).await.unwrap();
        let found = self
            .c
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 axe.run(document, {resultTypes: ['violations']}).then(r => done(
                   r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical')
                     .map(v => v.id + ' (' + v.impact + '): ' + v.nodes.map(n => n.target.join(' ')).join(', '))));",
                vec![],
            )
            .await
            .unwrap();
        let found: Vec<String> = serde_json::from_value(found).unwrap();
        assert!(
            found.is_empty(),
            "accessibility violations on {}: {found:#?}",
            self.path().await
        );
        let path = self.path().await;
        AXE_PAGES.lock().unwrap().insert(path);
    }

    async fn fill(&self, field: &str, value: &str) {
        let e = self
            .c
            .find(Locator::Css(&format!("[name=\"{field}\"]")))
            .await
            .unwrap_or_else(|_| panic!("field {field}"));
        e.clear().await.unwrap();
        e.send_keys(value).await.unwrap();
    }

    async fn select(&self, field: &str, value: &str) {
        self.c
            .find(Locator::Css(&format!(
                "select[name=\"{field}\"] option[value=\"{value}\"]"
            )))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    async fn submit(&self, form_action: &str) {
        self.click(&format!(
            "form[action=\"{form_action}\"] button[type=submit]"
        ))
        .await;
    }

    /// Clicks what `css` finds and waits until the page it leads to has loaded (the
    /// old page's root element has gone stale).
    async fn click(&self, css: &str) {
        let old = self.c.find(Locator::Css("html")).await.unwrap();
        match self.c.find(Locator::Css(css)).await {
            Ok(e) => e.click().await.unwrap(),
            Err(_) => panic!("no {css} on {}", self.path().await),
        }
        for _ in 0..200 {
            if old.tag_name().await.is_err() {
                self.c
                    .wait()
                    .for_element(Locator::Css("body"))
                    .await
                    .unwrap();
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("clicking {css} on {} loaded no page", self.path().await);
    }

    async fn text(&self, css: &str) -> String {
        match self.c.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.unwrap(),
            Err(_) => panic!("no {css} on {}", self.path().await),
        }
    }

    async fn h1(&self) -> String {
        self.text("h1").await
    }

    async fn path(&self) -> String {
        self.c.current_url().await.unwrap().path().to_owned()
    }

    async fn body(&self) -> String {
        self.text("main").await
    }

    async fn sign_in(&self, email: &str, password: &str, secret: Option<&str>) {
        self.open("/signin").await;
        self.fill("email", email).await;
        self.fill("password", password).await;
        if let Some(s) = secret {
            self.fill("code", &fresh_code(s)).await;
        }
        self.submit("/signin").await;
    }

    /// From the second-factor page: starts set-up, reads the key, confirms a code.
    async fn set_up_mfa(&self) -> String {
        assert_eq!(self.path().await, "/mfa");
        self.submit("/mfa/start").await;
        let secret = self.text("#totp-secret").await;
        let qr = self
            .c
            .find(Locator::Css("img.qr"))
            .await
            .unwrap()
            .attr("src")
            .await
            .unwrap()
            .unwrap();
        assert!(qr.starts_with("data:image/svg+xml;base64,"));
        // A wrong code is refused next to the field.
        let wrong = if code_at(&secret, 0) == "000000" {
            "111111"
        } else {
            "000000"
        };
        self.fill("code", wrong).await;
        self.submit("/mfa").await;
        assert!(self.text("#code-error").await.contains("wrong"));
        self.fill("code", &code_at(&secret, 0)).await;
        self.submit("/mfa").await;
        assert_ne!(self.path().await, "/mfa", "{}", self.body().await);
        secret
    }

    async fn did(&self) -> String {
        self.open("/account").await;
        self.text("#account-did").await
    }
}

/// A TOTP code not used before: each code is accepted once, so wait for the next step
/// if this one's code was just used.
fn fresh_code(secret: &str) -> String {
    static USED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    loop {
        let c = code_at(secret, 0);
        let key = format!("{secret}:{c}");
        let mut used = USED.lock().unwrap();
        if !used.contains(&key) {
            used.push(key);
            return c;
        }
        drop(used);
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn shots_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("portal-screenshots");
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn the_whole_path_in_a_real_browser() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init(tmp.path());
    let node = start(&dir);
    // Org `general` with the consortium admin enrolled for web sign-in; the admin
    // verifies and sets up the second factor in the browser.
    rt().block_on(common::signin::enroll_admin(
        &common::signin::http(&node, &dir),
        &dir,
        &node,
    ));
    let driver = chromedriver();
    let shots = shots_dir();
    let rt = rt();
    rt.block_on(async {
        let make = |name: &'static str| {
            let (driver, base, shots) = (&driver, node.url.clone(), shots.clone());
            async move {
                Person {
                    c: browser(driver).await,
                    base,
                    shots,
                    name,
                }
            }
        };
        let admin = make("admin").await;
        let patient = make("patient").await;
        let doctor = make("doctor").await;

        // The admin verifies their address through the link in the mail (a portal
        // page), signs in and is sent to set up the second factor.
        let token = mail_token(&dir, "admin@hospital.example", "token");
        admin.open(&format!("/verify?token={token}")).await;
        assert_eq!(admin.h1().await, "E-mail address verified");
        admin.sign_in("admin@hospital.example", STRONG, None).await;
        admin.shot("mfa-setup").await;
        let admin_secret = admin.set_up_mfa().await;
        assert_eq!(admin.path().await, "/admin");
        admin.shot("admin-home").await;

        // 1. The admin invites a patient; a bad address is refused next to the field.
        admin.fill("email", "not an address").await;
        admin.submit("/admin/invite").await;
        assert!(admin.text("#email-error").await.contains("not an e-mail"));
        assert_eq!(
            admin
                .c
                .find(Locator::Css("#email"))
                .await
                .unwrap()
                .prop("value")
                .await
                .unwrap()
                .as_deref(),
            Some("not an address"),
            "what the admin typed is kept"
        );
        admin.fill("email", "pat@example.org").await;
        admin.submit("/admin/invite").await;
        assert!(admin.body().await.contains("Invitation sent"));
        admin.shot("patient-invited").await;

        // 2. The patient registers through the link, verifies and signs in.
        let invite = mail_token(&dir, "pat@example.org", "invite");
        patient.open(&format!("/register?invite={invite}")).await;
        assert_eq!(patient.h1().await, "Create your patient account");
        patient.fill("name", "Mira Testpatient").await;
        patient.fill("email", "pat@example.org").await;
        patient.fill("password", "short").await;
        patient.fill("password2", "short").await;
        patient.submit("/register").await;
        assert!(!patient.text("#password-error").await.is_empty());
        assert_eq!(
            patient
                .c
                .find(Locator::Css("#name"))
                .await
                .unwrap()
                .prop("value")
                .await
                .unwrap()
                .as_deref(),
            Some("Mira Testpatient")
        );
        patient.shot("register-error").await;
        patient.fill("password", STRONG).await;
        patient.fill("password2", STRONG).await;
        patient.submit("/register").await;
        assert_eq!(patient.h1().await, "Registered");
        assert_eq!(
            patient
                .c
                .find_all(Locator::Css("ul.codes li"))
                .await
                .unwrap()
                .len(),
            10
        );
        patient.shot("registered").await;
        let token = mail_token(&dir, "pat@example.org", "token");
        patient.open(&format!("/verify?token={token}")).await;
        patient.sign_in("pat@example.org", STRONG, None).await;
        assert_eq!(patient.path().await, "/patient");
        patient.shot("patient-home").await;
        let patient_did = patient.did().await;

        // 3. A doctor registers (staff form), verifies; the admin approves; the doctor
        // signs in and sets up the second factor.
        doctor.open("/register").await;
        doctor.fill("name", "Dr Ren Testdoctor").await;
        doctor.fill("email", "ren@hospital.example").await;
        doctor.fill("password", STRONG).await;
        doctor.fill("password2", STRONG).await;
        doctor.fill("org", "general").await;
        doctor.select("role", "doctor").await;
        doctor.submit("/register").await;
        assert_eq!(doctor.h1().await, "Registered");
        let token = mail_token(&dir, "ren@hospital.example", "token");
        doctor.open(&format!("/verify?token={token}")).await;
        doctor.sign_in("ren@hospital.example", STRONG, None).await;
        assert!(
            doctor.body().await.contains("approval"),
            "a pending doctor cannot sign in yet"
        );
        doctor.shot("pending").await;
        admin.open("/admin").await;
        assert!(admin.text("#pending").await.contains("Dr Ren Testdoctor"));
        admin.shot("pending-registration").await;
        admin
            .click("#pending button[aria-label=\"Approve Dr Ren Testdoctor (Doctor)\"]")
            .await;
        assert!(!admin.text("#pending").await.contains("Dr Ren Testdoctor"));
        assert!(admin.text("#members").await.contains("Dr Ren Testdoctor"));
        doctor.sign_in("ren@hospital.example", STRONG, None).await;
        doctor.set_up_mfa().await;
        assert_eq!(doctor.path().await, "/clinician");
        doctor.shot("doctor-home").await;
        let doctor_did = doctor.did().await;

        // Before any grant the doctor cannot write for the patient.
        doctor.open("/clinician/intake").await;
        fill_intake(&doctor, &patient_did).await;
        doctor.submit("/clinician/intake").await;
        assert!(doctor.text("#account-error").await.contains("refused"));
        doctor.shot("intake-refused").await;

        // 4. The patient grants the doctor treatment access.
        patient.open("/patient/permissions").await;
        patient.fill("grantee", "nobody").await;
        patient.fill("days", "0").await;
        patient.submit("/patient/permissions").await;
        assert!(!patient.text("#days-error").await.is_empty());
        patient.fill("grantee", &doctor_did).await;
        patient.fill("days", "30").await;
        patient.select("purpose", "treatment").await;
        patient.submit("/patient/permissions").await;
        assert!(patient.body().await.contains("Dr Ren Testdoctor"));
        assert!(patient.body().await.contains("active"));
        patient.shot("granted").await;

        // 5. The doctor adds an intake record.
        doctor.open("/clinician/intake").await;
        fill_intake(&doctor, &patient_did).await;
        doctor.submit("/clinician/intake").await;
        assert!(doctor.path().await.starts_with("/clinician/patients/"));
        let chart_path = doctor.path().await;
        assert_eq!(doctor.h1().await, "Mira Testpatient");
        let chart = doctor.body().await;
        assert!(chart.contains("Body weight") && chart.contains("Body height"));
        assert!(chart.contains("72.5 kg"));
        doctor.shot("chart").await;
        // The doctor uploads a document from the chart: a real browser's multipart
        // post (CSRF field first, then the file).
        let pdf = tmp.path().join("synthetic-letter.pdf");
        std::fs::write(&pdf, b"%PDF-1.4\n% synthetic\n%%EOF\n").unwrap();
        doctor.click("a[href$=\"/documents\"]").await;
        assert_eq!(doctor.h1().await, "Upload a document");
        doctor.shot("upload").await;
        doctor.fill("title", "Synthetic discharge letter").await;
        doctor
            .c
            .find(Locator::Css("#file"))
            .await
            .unwrap()
            .send_keys(pdf.to_str().unwrap())
            .await
            .unwrap();
        doctor
            .click("form[enctype=\"multipart/form-data\"] button[type=submit]")
            .await;
        assert!(doctor.path().await.starts_with("/clinician/records/"));
        let doc = doctor.body().await;
        assert!(
            doc.contains("Synthetic discharge letter") && doc.contains("Download the document")
        );
        doctor.shot("document").await;
        doctor.open("/clinician").await;
        assert!(doctor.text("#patients").await.contains("Mira Testpatient"));

        // 6. The patient sees the record and the doctor's access.
        patient.open("/patient").await;
        let records = patient.body().await;
        assert!(records.contains("Patient") && records.contains("Observation"));
        patient.shot("records").await;
        patient.click("main a[href^=\"/patient/records/\"]").await;
        assert!(patient.text("dl.summary").await.len() > 5);
        assert!(patient.body().await.contains("Dr Ren Testdoctor"));
        patient.shot("record").await;
        patient.open("/patient/access-log").await;
        let log = patient.text("#access-log").await;
        assert!(log.contains("Dr Ren Testdoctor") && log.contains("allowed"));
        patient.shot("access-log").await;

        // 7. The patient revokes.
        patient.open("/patient/permissions").await;
        patient
            .click("form[action=\"/patient/permissions/revoke\"] button")
            .await;
        assert!(patient.body().await.contains("revoked"));
        patient.shot("revoked").await;

        // 8. The doctor's next attempt is a denial, and it is in the access log.
        doctor.open(&chart_path).await;
        assert_eq!(doctor.h1().await, "No access");
        assert!(!doctor.body().await.contains("72.5"));
        doctor.shot("denied").await;
        patient.open("/patient/access-log").await;
        let newest = patient.text("#access-log tbody tr:first-child").await;
        assert!(
            newest.contains("Dr Ren Testdoctor") && newest.contains("refused"),
            "the newest entry comes first: {newest}"
        );
        patient.shot("denial-logged").await;

        // 9. In an emergency the doctor opens break-glass: the chart opens again, and
        // the patient's log marks it.
        doctor.click("a[href=\"/clinician/break-glass\"]").await;
        doctor.fill("patient", &patient_did).await;
        doctor.select("reason", "patient_unconscious").await;
        doctor.submit("/clinician/break-glass").await;
        assert!(
            doctor.text("#confirm-error").await.contains("Confirm"),
            "break-glass needs the confirmation ticked"
        );
        doctor.shot("break-glass-form").await;
        doctor
            .c
            .find(Locator::Css("#confirm"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        doctor.submit("/clinician/break-glass").await;
        assert_eq!(
            doctor.path().await,
            chart_path,
            "break-glass opens the chart"
        );
        assert!(doctor.body().await.contains("72.5 kg"));
        doctor.shot("break-glass-chart").await;
        patient.open("/patient/access-log").await;
        let bg = patient.text("tr.break-glass").await;
        assert!(
            bg.contains("Dr Ren Testdoctor") && bg.contains("break-glass"),
            "{bg}"
        );
        patient.shot("break-glass-logged").await;

        // Every other page of each role, and the public ones, through axe-core too.
        for (who, paths) in [
            (&patient, vec!["/account", "/patient"]),
            (&doctor, vec!["/clinician", "/clinician/intake", "/account"]),
            (&admin, vec!["/admin", "/account"]),
        ] {
            for p in paths {
                who.open(p).await;
                who.axe().await;
            }
        }
        doctor.open(&chart_path).await;
        doctor.click("main a[href^=\"/clinician/records/\"]").await;
        doctor.shot("clinician-record").await;

        // A role's pages are closed to other roles (403), and signed-out visitors go
        // to sign-in.
        for (who, path) in [
            (&patient, "/admin"),
            (&patient, "/clinician"),
            (&doctor, "/patient/permissions"),
            (&doctor, "/patient/export"),
            (&doctor, "/auditor"),
            (&doctor, "/admin"),
            (&admin, "/patient/access-log"),
        ] {
            who.open(path).await;
            assert_eq!(who.h1().await, "Not allowed", "{} on {path}", who.name);
        }
        admin.shot("forbidden").await;
        // Signed out (everywhere), the public pages.
        admin.open("/account").await;
        admin.submit("/signout-all").await;
        assert_eq!(admin.path().await, "/signin");
        for p in [
            "/",
            "/signin",
            "/register",
            "/recover",
            "/recovery?token=x",
            "/verify?token=x",
            "/claim?token=x",
            "/no-such-page",
        ] {
            admin.open(p).await;
            admin.axe().await;
        }
        admin.open("/admin").await;
        assert_eq!(admin.path().await, "/signin", "signed out everywhere");
        let _ = admin_secret;
        let checked = AXE_PAGES.lock().unwrap().clone();
        eprintln!("axe-core checked {} pages: {checked:?}", checked.len());
        assert!(checked.len() >= 20, "{checked:?}");
        for p in [admin, patient, doctor] {
            p.c.close().await.unwrap();
        }
    });
    http_refusals(&dir, &node);
    node.stop();
}

/// How many grants the patient signed in as `s` has (through the API, as they see them).
async fn grants(h: &common::signin::Http, s: &common::signin::Signed) -> usize {
    let me: Value =
        h.c.get(format!("{}/auth/me", h.url))
            .header("cookie", &s.cookie)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let did = me["account"].as_str().unwrap().to_owned();
    let v: Value =
        h.c.get(format!("{}/v1/patients/{did}/grants", h.url))
            .header("cookie", &s.cookie)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    v["grants"].as_array().unwrap().len()
}

async fn fill_intake(doctor: &Person, patient_did: &str) {
    doctor.fill("account", patient_did).await;
    doctor.fill("given", "Mira").await;
    doctor.fill("family", "Testpatient").await;
    doctor.fill("birth_date", "1984-03-09").await;
    doctor.select("gender", "female").await;
    doctor.fill("phone", "+1 555 0100").await;
    doctor.fill("line1", "1 Synthetic Way").await;
    doctor.fill("city", "Springfield").await;
    doctor.fill("postal_code", "00000").await;
    doctor.fill("weight", "72.5").await;
    doctor.fill("height", "168").await;
}

/// What a browser would not send: no session, a form without its CSRF token, another
/// site's form post. Each is refused and changes nothing.
fn http_refusals(dir: &Path, node: &Node) {
    let c = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(dir.join("tls/cert.pem")).unwrap())
                .unwrap(),
        )
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = &node.url;
    rt().block_on(async {
        // Signed out: every role's page sends to sign-in, and says where to come back.
        for p in [
            "/patient",
            "/patient/permissions",
            "/patient/access-log",
            "/clinician",
            "/clinician/intake",
            "/admin",
            "/auditor",
            "/patient/export",
            "/clinician/break-glass",
            "/clinician/requests",
            "/patient/messages",
            "/patient/agreements",
            "/insurer",
            "/consortium",
            "/auditor/proof/1",
            "/clinician/patients/x/documents",
            "/patient/records/x/file",
            "/insurer/agreements/x",
            "/account",
            "/mfa",
        ] {
            let r = c.get(format!("{url}{p}")).send().await.unwrap();
            assert_eq!(r.status(), 303, "{p}");
            assert_eq!(
                r.headers()["location"].to_str().unwrap(),
                format!("/signin?next={p}")
            );
        }
        // A signed-out form post goes to sign-in too and changes nothing.
        let r = c
            .post(format!("{url}/patient/permissions"))
            .form(&[
                ("grantee", "general"),
                ("purpose", "treatment"),
                ("days", "9"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);

        // Signed in as the patient (over the API, for a cookie): a form without the
        // CSRF token, or with another one, is refused and grants nothing.
        let h = common::signin::http(node, dir);
        let (s, _) = h.login("pat@example.org", STRONG, None).await.unwrap();
        let before = grants(&h, &s).await;
        assert_eq!(before, 1, "the one (revoked) grant of the browser session");
        for csrf in [None, Some("0".repeat(64))] {
            let mut form = vec![
                ("grantee", "general".to_owned()),
                ("purpose", "treatment".to_owned()),
                ("days", "9".to_owned()),
            ];
            if let Some(t) = &csrf {
                form.push(("csrf", t.clone()));
            }
            let r = c
                .post(format!("{url}/patient/permissions"))
                .header("cookie", &s.cookie)
                .form(&form)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 403);
            assert!(r.text().await.unwrap().contains("expired"));
        }
        // The same form with the token works (so the refusals above were the token's).
        let r = c
            .post(format!("{url}/patient/permissions"))
            .header("cookie", &s.cookie)
            .form(&[
                ("grantee", "general"),
                ("purpose", "treatment"),
                ("days", "9"),
                ("csrf", s.csrf.as_str()),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
        assert_eq!(grants(&h, &s).await, before + 1);

        // Every portal form: signed out, it sends to sign-in; signed in as the patient
        // but without the CSRF token, 403; the other roles' forms even with the token,
        // 403. None of it changes anything.
        let erase = format!("/patient/records/{}/erase", "ab".repeat(32));
        let claim = format!("/clinician/patients/{}/claim", "ab".repeat(32));
        let forms = [
            "/patient/permissions",
            "/patient/permissions/revoke",
            "/patient/messages/respond",
            "/patient/agreements/respond",
            erase.as_str(),
            claim.as_str(),
            "/clinician",
            "/clinician/intake",
            "/clinician/break-glass",
            "/clinician/requests",
            "/insurer",
            "/admin/decide",
            "/admin/invite",
            "/admin/roles",
            "/admin/recovery",
            "/admin/recovery/approve",
            "/consortium/orgs",
            "/consortium/mint",
            "/account/password",
            "/mfa",
            "/mfa/start",
            "/signout",
            "/signout-all",
        ];
        let before = grants(&h, &s).await;
        for p in forms {
            let r = c
                .post(format!("{url}{p}"))
                .form(&[("email", "x@example.org")])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 303, "signed out: {p}");
            assert!(
                r.headers()["location"]
                    .to_str()
                    .unwrap()
                    .starts_with("/signin")
            );
            let r = c
                .post(format!("{url}{p}"))
                .header("cookie", &s.cookie)
                .form(&[("email", "x@example.org")])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 403, "no CSRF token: {p}");
        }
        for p in [
            "/clinician",
            "/clinician/intake",
            "/clinician/break-glass",
            "/clinician/requests",
            "/insurer",
            "/admin/decide",
            "/admin/invite",
            "/admin/roles",
            "/admin/recovery",
            "/admin/recovery/approve",
            "/consortium/orgs",
            "/consortium/mint",
        ] {
            let r = c
                .post(format!("{url}{p}"))
                .header("cookie", &s.cookie)
                .form(&[
                    ("csrf", s.csrf.as_str()),
                    ("email", "x@example.org"),
                    (
                        "patient",
                        "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK",
                    ),
                    ("reason", "other"),
                    ("confirm", "yes"),
                ])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 403, "another role's form: {p}");
        }
        for p in [
            format!("/clinician/patients/{}", "ab".repeat(32)),
            format!("/clinician/records/{}", "ab".repeat(32)),
            format!("/insurer/agreements/{}", "ab".repeat(32)),
            format!("/insurer/records/{}", "ab".repeat(32)),
            "/auditor/proof/1".to_owned(),
            "/auditor".to_owned(),
            "/admin".to_owned(),
            "/insurer".to_owned(),
            "/consortium".to_owned(),
            "/clinician/requests".to_owned(),
            format!("/clinician/patients/{}/documents", "ab".repeat(32)),
            format!("/clinician/records/{}/file", "ab".repeat(32)),
            format!("/insurer/records/{}/file", "ab".repeat(32)),
        ] {
            let r = c
                .get(format!("{url}{p}"))
                .header("cookie", &s.cookie)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 403, "another role's page: {p}");
        }
        assert_eq!(grants(&h, &s).await, before, "nothing changed");
        let r = c
            .get(format!("{url}/patient"))
            .header("cookie", &s.cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "the refused sign-outs left the session");

        // Sign-in without the double-submit cookie (another site's form) is refused
        // before any password is checked.
        let r = c
            .post(format!("{url}/signin"))
            .form(&[
                ("email", "pat@example.org"),
                ("password", STRONG),
                ("pre", "x"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        assert!(r.headers().get("set-cookie").is_none());

        // Another patient's record, and a made-up one, look alike: not found.
        let r = c
            .get(format!("{url}/patient/records/{}", "ab".repeat(32)))
            .header("cookie", &s.cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);

        // Pages carry the security headers.
        let r = c.get(format!("{url}/signin")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
        assert_eq!(r.headers()["cache-control"], "no-store");
    });
}

/// A child process killed (and waited for) when the test ends, also on a panic.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The first link in a page whose target starts with `prefix`.
fn first_link(html: &str, prefix: &str) -> Option<String> {
    let at = html.find(&format!("href=\"{prefix}"))? + 6;
    Some(html[at..at + html[at..].find('"')?].to_owned())
}

/// Which pages each role has, and one page of another role it must not open.
fn pages_of(role: &str) -> (Vec<&'static str>, &'static str) {
    match role {
        "Patient" => (
            vec![
                "/patient",
                "/patient/permissions",
                "/patient/access-log",
                "/patient/messages",
                "/patient/agreements",
                "/account",
            ],
            "/admin",
        ),
        "Doctor" => (
            vec![
                "/clinician",
                "/clinician/intake",
                "/clinician/requests",
                "/clinician/break-glass",
                "/account",
            ],
            "/patient",
        ),
        "Nurse" => (
            vec![
                "/clinician",
                "/clinician/intake",
                "/clinician/requests",
                "/account",
            ],
            "/clinician/break-glass",
        ),
        "Hospital admin" => (vec!["/admin", "/account"], "/clinician"),
        "Auditor" => (vec!["/auditor", "/account"], "/patient"),
        "Insurer" => (vec!["/insurer", "/account"], "/patient/agreements"),
        _ => (vec!["/account"], "/patient/access-log"),
    }
}

/// The session cookie (`name=value`) the browser holds for the node.
async fn browser_session(c: &Client) -> String {
    let k = c
        .get_named_cookie("__Host-medledger_session")
        .await
        .expect("signed in: a session cookie");
    format!("{}={}", k.name(), k.value())
}

/// Whether the page fits a 390 px wide screen: nothing wider than the viewport.
async fn fits_narrow_screen(c: &Client) -> (i64, i64) {
    let v = c
        .execute(
            "return [document.documentElement.scrollWidth, document.documentElement.clientWidth];",
            vec![],
        )
        .await
        .unwrap();
    (v[0].as_i64().unwrap(), v[1].as_i64().unwrap())
}

#[test]
fn the_demo_comes_up_and_every_printed_sign_in_works() {
    // Its sign-in page shows working sign-ins: loopback only unless asked.
    let (ok, out) = cli_raw(&["demo", "--listen", "0.0.0.0:0"]);
    assert!(!ok && out.contains("--public"), "{out}");
    let t0 = std::time::Instant::now();
    let mut child = Killed(
        Command::new(BIN)
            .args(["demo", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut out = std::io::BufReader::new(child.0.stdout.take().unwrap());
    let (mut url, mut password, mut data, mut accounts) = (None, None, None, Vec::new());
    let mut line = String::new();
    while url.is_none() {
        line.clear();
        let n = std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert!(n > 0, "the demo stopped before it was ready");
        let l = line.trim();
        if let Some(u) = l.strip_prefix("demo-ready ") {
            url = Some(u.to_owned());
        } else if let Some(p) = l.split("every password is: ").nth(1) {
            password = Some(p.to_owned());
        } else if let Some(d) = l.strip_prefix("data directory (deleted on stop): ") {
            data = Some(PathBuf::from(d));
        } else if l.ends_with(".demo") && l.contains('@') {
            let (role, email) = l.rsplit_once(' ').unwrap();
            accounts.push((role.trim().to_owned(), email.to_owned()));
        }
    }
    // Measured, not asserted: the target is 30 s on this machine.
    eprintln!("demo ready after {:.1} s", t0.elapsed().as_secs_f64());
    let (url, password, data) = (url.unwrap(), password.unwrap(), data.unwrap());
    let roles: std::collections::BTreeSet<&str> =
        accounts.iter().map(|(r, _)| r.as_str()).collect();
    for r in [
        "Patient",
        "Doctor",
        "Nurse",
        "Hospital admin",
        "Insurer",
        "Researcher",
        "Auditor",
    ] {
        assert!(roles.contains(r), "the demo has a {r}: {accounts:?}");
    }
    let c = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(data.join("tls/cert.pem")).unwrap())
                .unwrap(),
        )
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let driver = chromedriver();
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("demo-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    rt().block_on(async {
        // Every account signs in in a real browser at phone width (390 px), as a
        // newcomer would from the printed list; every page of its role then passes
        // axe-core and fits the screen.
        let person = Person {
            c: browser(&driver).await,
            base: url.clone(),
            shots,
            name: "demo",
        };
        person.c.set_window_size(390, 844).await.unwrap();
        for (role, email) in &accounts {
            // The sign-in page lists the demo accounts with a one-time code that works.
            person.open("/signin").await;
            let html = person.c.source().await.unwrap();
            let row = &html[html
                .find(&format!(">{email}<"))
                .expect("listed on the sign-in page")..];
            let code: String = row
                .split("<td class=\"mono\">")
                .nth(2)
                .unwrap()
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            // Clinicians and admins must use a second factor; the others may.
            let mfa = matches!(role.as_str(), "Doctor" | "Nurse" | "Hospital admin");
            assert_eq!(
                !code.is_empty(),
                mfa,
                "{role}: a code where the role needs one"
            );
            person.fill("email", email).await;
            person.fill("password", &password).await;
            if mfa {
                person.fill("code", &code).await;
            }
            person.submit("/signin").await;
            let (pages, other) = pages_of(role);
            assert_eq!(
                person.path().await,
                pages[0],
                "{email} signs in and lands on their home"
            );
            let session = browser_session(&person.c).await;
            for p in &pages {
                person.open(p).await;
                person.axe().await;
                let (wide, view) = fits_narrow_screen(&person.c).await;
                assert!(wide <= view, "{p} is {wide} px wide on a {view} px screen");
            }
            person.shot(&role.to_lowercase().replace(' ', "-")).await;
            let get = |p: String| {
                let (c, session) = (c.clone(), session.clone());
                let url = url.clone();
                async move {
                    let r = c
                        .get(format!("{url}{p}"))
                        .header("cookie", session)
                        .send()
                        .await
                        .unwrap();
                    (r.status().as_u16(), r.text().await.unwrap())
                }
            };
            let mut visited = Vec::new();
            for p in pages {
                let (st, html) = get(p.to_owned()).await;
                assert_eq!(st, 200, "{role} opens {p}");
                assert!(html.contains("<h1>") && !html.contains("Something went wrong"));
                visited.push(html);
            }
            // Pages reached from those: a record, a chart, a record from the chart.
            let deeper = match role.as_str() {
                "Patient" => first_link(&visited[0], "/patient/records/")
                    .into_iter()
                    .collect::<Vec<_>>(),
                "Doctor" | "Nurse" => {
                    let chart =
                        first_link(&visited[0], "/clinician/patients/").expect("a patient to open");
                    let (st, html) = get(chart.clone()).await;
                    assert_eq!(st, 200, "{role} opens {chart}");
                    assert!(html.contains("Vital signs"), "synthetic vitals charted");
                    first_link(&html, "/clinician/records/")
                        .into_iter()
                        .collect()
                }
                _ => vec![],
            };
            if matches!(role.as_str(), "Patient" | "Doctor" | "Nurse") {
                assert!(!deeper.is_empty(), "{email} has a record to open");
            }
            if email == "dr.omar@riverside.demo" {
                // Riverside has no grants: its doctor sees only the patient of the
                // demo's break-glass.
                assert_eq!(visited[0].matches("href=\"/clinician/patients/").count(), 1);
            }
            let mut deeper_pages = deeper.clone();
            if let Some(chart) = first_link(&visited[0], "/clinician/patients/") {
                deeper_pages.push(chart);
            }
            if role == "Auditor" {
                deeper_pages.push("/auditor?from=2000-01-01&break_glass=on".into());
            }
            if role == "Insurer" {
                // The accepted agreement's records, and one of them.
                let allowed = first_link(&visited[0], "/insurer/agreements/")
                    .expect("the demo's accepted agreement");
                let (st, html) = get(allowed.clone()).await;
                assert_eq!(st, 200, "{html}");
                let rec = first_link(&html, "/insurer/records/").expect("a record it allows");
                let (st, html) = get(rec.clone()).await;
                assert_eq!(st, 200);
                assert!(html.contains("Version history"));
                deeper_pages.push(allowed);
                deeper_pages.push(rec);
            }
            for p in deeper {
                let (st, html) = get(p.clone()).await;
                assert_eq!(st, 200, "{role} opens {p}");
                assert!(html.contains("Version history"));
            }
            let (st, _) = get(other.to_owned()).await;
            assert_eq!(st, 403, "{role} may not open {other}");
            if role == "Auditor" {
                // The explorer finds the demo's break-glass across the whole trail, and
                // refuses a malformed filter next to its field.
                let (st, html) = get("/auditor?from=2000-01-01&break_glass=on".into()).await;
                assert_eq!(st, 200);
                assert!(
                    html.contains("<tr class=\"break-glass\">"),
                    "break-glass rows"
                );
                assert_eq!(
                    html.matches("<tr>").count(),
                    1,
                    "only the header row is not break-glass"
                );
                let (st, html) = get("/auditor?from=2000-01-01&outcome=refused".into()).await;
                assert_eq!(st, 200);
                let table = &html[html.find("id=\"audit\"").unwrap()..];
                assert!(
                    table.contains("refused") && !table.contains("tag ok"),
                    "only refusals"
                );
                let (st, html) = get("/auditor?patient=someone".into()).await;
                assert_eq!(st, 400);
                assert!(html.contains("id=\"patient-error\""));
            }
            if role == "Patient" && email == "patient2@patients.demo" {
                let (_, offers) = get("/patient/agreements".into()).await;
                assert!(
                    offers.contains("accepted") && offers.contains("<strong>150</strong>"),
                    "the accepted offer paid the patient"
                );
                let (_, log) = get("/patient/access-log".into()).await;
                assert!(
                    log.contains("break-glass"),
                    "the demo's break-glass is in this patient's log"
                );
            }
            if role == "Patient" && email == "patient1@patients.demo" {
                // Export: the whole record as a FHIR Bundle download.
                let r = c
                    .get(format!("{url}/patient/export"))
                    .header("cookie", &session)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                assert_eq!(r.headers()["content-type"], "application/fhir+json");
                assert!(
                    r.headers()["content-disposition"]
                        .to_str()
                        .unwrap()
                        .starts_with("attachment")
                );
                let b: Value = r.json().await.unwrap();
                assert_eq!(b["resourceType"], "Bundle");
                let n = b["entry"].as_array().unwrap().len();
                assert!(n > 30, "three years of records exported: {n}");
                let (_, log) = get("/patient/access-log".into()).await;
                assert!(
                    log.contains("refused"),
                    "the demo's refused reads are in this patient's log"
                );
                // The insurer's offer waits for an answer.
                let (_, offers) = get("/patient/agreements".into()).await;
                assert!(
                    offers.contains("Offer from") && offers.contains("250 units"),
                    "the demo's agreement offer"
                );
            }
            if email == "patient3@patients.demo" {
                let (_, inbox) = get("/patient/messages".into()).await;
                assert!(
                    inbox.contains("Access request from") && inbox.contains("Omar Lindqvist"),
                    "the demo's access request"
                );
            }
            if role == "Insurer" {
                let (_, page) = get("/insurer".into()).await;
                assert!(page.contains("9600"), "funded, 250 in escrow and 150 paid");
            }
            if role == "Hospital admin" {
                // The consortium operator's page: only for the consortium admin account.
                let (st, html) = get("/consortium".into()).await;
                let operator = email == "admin@st-mary.demo";
                assert_eq!(st, if operator { 200 } else { 403 }, "{email}");
                if operator {
                    assert!(html.contains("acme-insurance") && html.contains("id=\"nodes\""));
                    person.open("/consortium").await;
                    person.axe().await;
                    let (wide, view) = fits_narrow_screen(&person.c).await;
                    assert!(wide <= view, "/consortium is {wide} px wide");
                }
            }
            // Deeper pages in the browser too: a record, a chart, an explorer query.
            for p in deeper_pages {
                person.open(&p).await;
                person.axe().await;
                let (wide, view) = fits_narrow_screen(&person.c).await;
                assert!(wide <= view, "{p} is {wide} px wide on a {view} px screen");
            }
            person.open("/account").await;
            person.submit("/signout").await;
            assert_eq!(person.path().await, "/signin");
        }
        let checked = AXE_PAGES.lock().unwrap().clone();
        eprintln!(
            "axe-core checked {} demo pages at 390 px: {checked:?}",
            checked.len()
        );
        person.c.close().await.unwrap();
    });
    let _ = Command::new("kill").arg(child.0.id().to_string()).status();
    assert!(child.0.wait().unwrap().success(), "the demo stops cleanly");
    assert!(!data.exists(), "the demo deletes its data when stopped");
}
