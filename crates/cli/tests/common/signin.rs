//! Sign-in helpers for the end-to-end tests: an HTTP client with cookies and CSRF,
//! mail links from the outbox, TOTP codes, and ready-made signed-in people.

use super::*;
use medledger_core::AccountId;
use reqwest::header::{COOKIE, SET_COOKIE};
use serde_json::{Value, json};
use std::path::Path;

pub const PW: &str = "a long enough test password";
pub const STRONG: &str = "quartz lantern ribbon 47 meadow";

pub struct Http {
    pub c: reqwest::Client,
    pub url: String,
}

pub struct Signed {
    pub cookie: String,
    pub csrf: String,
}

impl Http {
    pub async fn post(
        &self,
        path: &str,
        body: Value,
        who: Option<&Signed>,
    ) -> (u16, Value, Option<String>) {
        let mut r = self.c.post(format!("{}{path}", self.url)).json(&body);
        if let Some(s) = who {
            r = r.header(COOKIE, &s.cookie).header("x-csrf-token", &s.csrf);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let cookie = resp
            .headers()
            .get(SET_COOKIE)
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned());
        let v = resp.json().await.unwrap_or(Value::Null);
        (status, v, cookie)
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut r = self.c.get(format!("{}{path}", self.url));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let resp = r.send().await.unwrap();
        (
            resp.status().as_u16(),
            resp.json().await.unwrap_or(Value::Null),
        )
    }

    /// A GET signed by the consortium admin (see [`admin_auth`]).
    pub async fn get_as_admin(&self, dir: &Path, path: &str) -> (u16, Value) {
        self.get(path, &[("authorization", &admin_auth(dir, path))])
            .await
    }

    pub async fn login(
        &self,
        email: &str,
        password: &str,
        code: Option<&str>,
    ) -> Result<(Signed, Value), (u16, String)> {
        let (st, v, cookie) = self
            .post(
                "/auth/login",
                json!({"email": email, "password": password, "code": code}),
                None,
            )
            .await;
        if st != 200 {
            return Err((st, v["error"]["code"].as_str().unwrap_or("").to_owned()));
        }
        let cookie = cookie.expect("session cookie");
        assert!(cookie.starts_with("__Host-medledger_session="));
        Ok((
            Signed {
                cookie,
                csrf: v["csrf"].as_str().unwrap().to_owned(),
            },
            v,
        ))
    }
}

/// The newest mail to `to` in the outbox, and the token after `param=` in it.
pub fn mail_token(dir: &Path, to: &str, param: &str) -> String {
    let mut mails: Vec<_> = std::fs::read_dir(dir.join("outbox"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    mails.sort();
    for m in mails.iter().rev() {
        // Undo quoted-printable (soft line breaks, escaped '=') as a mail client would.
        let text = std::fs::read_to_string(m)
            .unwrap()
            .replace("=\r\n", "")
            .replace("=3D", "=");
        // The newest mail to `to` that carries such a link (notices carry none).
        if text.contains(&format!("To: {to}"))
            && let Some(at) = text.find(&format!("{param}="))
        {
            let i = at + param.len() + 1;
            return text[i..]
                .chars()
                .take_while(|c| c.is_ascii_hexdigit())
                .collect();
        }
    }
    panic!("no mail to {to} with a {param}= link");
}

/// A sign-in client for a running node that trusts its self-signed certificate.
pub fn http(node: &Node, dir: &Path) -> Http {
    Http {
        c: medledger_node::client::http_client(Some(&dir.join("tls/cert.pem"))).unwrap(),
        url: node.url.clone(),
    }
}

pub fn code_at(secret_b32: &str, offset_s: i64) -> String {
    let secret = data_encoding::BASE32_NOPAD
        .decode(secret_b32.as_bytes())
        .unwrap();
    let t = totp_rs::Builder::new().with_secret(secret).build().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    t.generate((now + offset_s) as u64).to_string()
}

pub async fn verify(h: &Http, dir: &Path, email: &str) {
    let token = mail_token(dir, email, "token");
    let (st, _) = h.get(&format!("/auth/verify?token={token}"), &[]).await;
    assert_eq!(st, 200);
    // A verification link works once.
    let (st, v) = h.get(&format!("/auth/verify?token={token}"), &[]).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("invalid_link"))
    );
}

/// Sets up a second factor; returns its secret (the confirmation used the current step).
pub async fn enable_mfa(h: &Http, s: &Signed) -> String {
    let (st, v, _) = h.post("/auth/mfa/setup", json!({}), Some(s)).await;
    assert_eq!(st, 200, "{v}");
    let secret = v["secret"].as_str().unwrap().to_owned();
    let wrong = if code_at(&secret, 0) == "000000" {
        "111111"
    } else {
        "000000"
    };
    let (st, v, _) = h
        .post("/auth/mfa/confirm", json!({"code": wrong}), Some(s))
        .await;
    assert_eq!((st, v["error"]["code"].as_str()), (401, Some("bad_code")));
    let (st, v, _) = h
        .post(
            "/auth/mfa/confirm",
            json!({"code": code_at(&secret, 0)}),
            Some(s),
        )
        .await;
    assert_eq!(st, 204, "{v}");
    secret
}

/// Org `general` with the consortium admin enrolled for web sign-in, verified, with MFA.
pub async fn admin_signed_in(h: &Http, dir: &Path, node: &Node) -> Signed {
    admin_with_codes(h, dir, node).await.0
}

/// Org `general` on the ledger with the consortium admin as its admin, enrolled for
/// web sign-in as `admin@hospital.example` (not yet verified); returns the recovery codes.
pub async fn enroll_admin(h: &Http, dir: &Path, node: &Node) -> Vec<String> {
    let admin = admin(dir).account().to_did();
    succeed(
        std::process::Command::new(BIN)
            .args(["tx", "submit", "--node", &node.url, "--data-dir"])
            .arg(dir)
            .args(["--password-file"])
            .arg(dir.parent().unwrap().join("pw"))
            .args([
                "json",
                &format!(r#"{{"kind":"add_org","org":"general","admin":"{admin}"}}"#),
            ]),
    );
    let ks: Value =
        serde_json::from_slice(&std::fs::read(dir.join("admin.keystore.json")).unwrap()).unwrap();
    let (st, v, _) = h
        .post(
            "/auth/enroll",
            json!({"keystore": ks, "keystore_password": PW, "name": "Ada Admin", "email": "admin@hospital.example",
                   "password": STRONG, "org": "general", "role": "hospital_admin"}),
            None,
        )
        .await;
    assert_eq!(st, 201, "{v}");
    serde_json::from_value(v["recovery_codes"].clone()).unwrap()
}

/// As [`admin_signed_in`], also returning the admin's recovery codes.
pub async fn admin_with_codes(h: &Http, dir: &Path, node: &Node) -> (Signed, Vec<String>) {
    let codes = enroll_admin(h, dir, node).await;
    verify(h, dir, "admin@hospital.example").await;
    let (s, v) = h
        .login("admin@hospital.example", STRONG, None)
        .await
        .unwrap();
    assert_eq!(v["mfa_setup_required"], true);
    enable_mfa(h, &s).await;
    (s, codes)
}

/// A staff member of `general`: registered, verified, approved by the admin and
/// signed in (with MFA where the role needs it).
pub async fn staff_signed_in(
    h: &Http,
    dir: &Path,
    admin: &Signed,
    name: &str,
    email: &str,
    role: &str,
) -> (Signed, AccountId) {
    let (st, v, _) = h
        .post(
            "/auth/register",
            json!({"name": name, "email": email, "password": STRONG, "org": "general", "role": role}),
            None,
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let account: AccountId = serde_json::from_value(v["account"].clone()).unwrap();
    verify(h, dir, email).await;
    let (st, v, _) = h
        .post("/auth/approve", json!({"account": account}), Some(admin))
        .await;
    assert_eq!(st, 204, "{v}");
    let (s, v) = h.login(email, STRONG, None).await.unwrap();
    if v["mfa_setup_required"] == true {
        enable_mfa(h, &s).await;
    }
    (s, account)
}

/// As [`staff_signed_in`], returning an API token for them and their account.
pub async fn staff_token(
    h: &Http,
    dir: &Path,
    admin: &Signed,
    name: &str,
    email: &str,
    role: &str,
) -> (String, AccountId) {
    let (s, account) = staff_signed_in(h, dir, admin, name, email, role).await;
    let (st, v, _) = h
        .post("/auth/tokens", json!({"ttl_s": 86400}), Some(&s))
        .await;
    assert_eq!(st, 201, "{v}");
    (v["token"].as_str().unwrap().to_owned(), account)
}
