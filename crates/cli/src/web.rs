//! A client of a node's web sign-in (`/auth`) for the CLI's own tools (`bench fhir`,
//! `demo`): JSON posts with the session cookie and CSRF token, the links the node
//! mailed (its outbox folder), second-factor set-up.

use anyhow::{Context, Result, bail, ensure};
use medledger_core::tx::TX_VERSION;
use medledger_core::{ChainId, OrgId, Payload, TxBody};
use medledger_node::client::Client;
use medledger_node::keystore::AccountKeys;
use serde_json::{Value, json};
use std::path::Path;

/// A small `/auth` client: JSON posts with an optional session cookie and CSRF token.
pub struct Auth<'a> {
    pub http: &'a reqwest::Client,
    pub url: &'a str,
}

pub struct Session {
    pub cookie: String,
    pub csrf: String,
    /// The base32 TOTP secret, when this sign-in set up the second factor.
    pub totp: Option<String>,
}

impl Auth<'_> {
    pub async fn post(
        &self,
        path: &str,
        body: Value,
        s: Option<&Session>,
    ) -> Result<(Value, Option<String>)> {
        let mut r = self.http.post(format!("{}{path}", self.url)).json(&body);
        if let Some(s) = s {
            r = r
                .header(reqwest::header::COOKIE, &s.cookie)
                .header("x-csrf-token", &s.csrf);
        }
        let resp = r.send().await?;
        let status = resp.status();
        let cookie = resp
            .headers()
            .get(reqwest::header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::to_owned);
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        ensure!(status.is_success(), "POST {path}: {status} {v}");
        Ok((v, cookie))
    }

    /// A JSON GET as `s` (their session cookie).
    pub async fn get(&self, path: &str, s: &Session) -> Result<Value> {
        let resp = self
            .http
            .get(format!("{}{path}", self.url))
            .header(reqwest::header::COOKIE, &s.cookie)
            .send()
            .await?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        ensure!(status.is_success(), "GET {path}: {status} {v}");
        Ok(v)
    }

    /// Posts a portal form as `s` (its CSRF token in the `csrf` field, as the page
    /// sends it); the portal answers a done form with a page or a redirect.
    pub async fn form(&self, path: &str, fields: &[(&str, &str)], s: &Session) -> Result<()> {
        let mut body = form_urlencoded::Serializer::new(String::new());
        body.extend_pairs(fields.iter().copied());
        body.append_pair("csrf", &s.csrf);
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .header(reqwest::header::COOKIE, &s.cookie)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body.finish())
            .send()
            .await?;
        let status = r.status();
        ensure!(status == 200 || status == 303, "POST {path}: {status}");
        Ok(())
    }

    /// Follows the verification link the node mailed to `email` (outbox folder).
    pub async fn verify(&self, dir: &Path, email: &str) -> Result<()> {
        let token = mail_token(dir, email, "token")?;
        let r = self
            .http
            .get(format!("{}/auth/verify?token={token}", self.url))
            .send()
            .await?;
        ensure!(r.status() == 200, "verify {email}: {}", r.status());
        Ok(())
    }

    /// Signs in and, if the role requires it, sets up a second factor.
    pub async fn sign_in(&self, email: &str, password: &str) -> Result<Session> {
        let (v, cookie) = self
            .post(
                "/auth/login",
                json!({"email": email, "password": password}),
                None,
            )
            .await?;
        let mut s = Session {
            cookie: cookie.context("session cookie")?,
            csrf: v["csrf"].as_str().context("csrf")?.to_owned(),
            totp: None,
        };
        if v["mfa_setup_required"] == true {
            let (v, _) = self.post("/auth/mfa/setup", json!({}), Some(&s)).await?;
            let b32 = v["secret"].as_str().context("mfa secret")?.to_owned();
            let secret = data_encoding::BASE32_NOPAD.decode(b32.as_bytes())?;
            let code = totp_rs::Builder::new()
                .with_secret(secret)
                .build()?
                .generate(unix_now());
            self.post(
                "/auth/mfa/confirm",
                json!({"code": code.to_string()}),
                Some(&s),
            )
            .await?;
            s.totp = Some(b32);
        }
        Ok(s)
    }
}

pub fn mail_token(dir: &Path, to: &str, param: &str) -> Result<String> {
    let mut mails: Vec<_> = std::fs::read_dir(dir.join("outbox"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    mails.sort();
    for m in mails.iter().rev() {
        // Undo quoted-printable soft breaks and escapes, as a mail client would.
        let text = std::fs::read_to_string(m)?
            .replace("=\r\n", "")
            .replace("=3D", "=");
        if text.contains(&format!("To: {to}")) {
            let key = format!("{param}=");
            let i = text.find(&key).context("link in mail")? + key.len();
            return Ok(text[i..]
                .chars()
                .take_while(|c| c.is_ascii_hexdigit())
                .collect());
        }
    }
    bail!("no mail to {to}")
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn rand_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("system randomness");
    b
}

/// The consortium admin creates organisation `org` with itself as its admin.
pub async fn add_org(
    client: &Client,
    admin: &std::sync::Arc<AccountKeys>,
    org: &str,
) -> Result<()> {
    let chain = ChainId::new(client.status().await?.chain_id)?;
    let client = client.clone().signed_by(admin.clone());
    let nonce = client.account_nonce(&admin.account()).await? + 1;
    let tx = TxBody {
        version: TX_VERSION,
        chain_id: chain,
        signer: admin.account(),
        nonce,
        payload: Payload::AddOrg {
            org: OrgId::new(org)?,
            admin: admin.account(),
        },
    }
    .sign(&admin.signing);
    let r = client.submit(&tx.to_bytes()).await?;
    ensure!(r.status == "committed", "add_org {org}: {:?}", r.error);
    Ok(())
}

/// FHIR calls as one person (their API token), for `bench fhir` and `demo`.
#[derive(Clone)]
pub struct Fhir {
    pub http: reqwest::Client,
    pub url: String,
    pub token: std::sync::Arc<str>,
}

impl Fhir {
    pub async fn create(&self, body: &Value) -> Result<String> {
        let rtype = body["resourceType"].as_str().unwrap_or_default();
        let r = self
            .http
            .post(format!("{}/fhir/{rtype}", self.url))
            .bearer_auth(&*self.token)
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await?;
        let status = r.status();
        let v: Value = r.json().await?;
        ensure!(status == 201, "create {rtype}: {status} {v}");
        v["id"].as_str().map(str::to_owned).context("created id")
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        let r = self
            .http
            .get(format!("{}/fhir/{path}", self.url))
            .bearer_auth(&*self.token)
            .send()
            .await?;
        let status = r.status();
        let v: Value = r.json().await?;
        ensure!(status == 200, "GET {path}: {status}");
        Ok(v)
    }
}

impl Fhir {
    /// The status of a GET (for reads expected to be refused).
    pub async fn status(&self, path: &str) -> Result<u16> {
        let r = self
            .http
            .get(format!("{}/fhir/{path}", self.url))
            .bearer_auth(&*self.token)
            .send()
            .await?;
        Ok(r.status().as_u16())
    }
}
