//! A typed client for the `/v1` API, used by the CLI, the benchmark and the tests.

use crate::error::{NodeError, Result};
use crate::http::v1::{
    ConsistencyProofView, InclusionProofView, StatusView, SubmitManyResponse, SubmitResult,
    TxStatus,
};
use crate::keystore::AccountKeys;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use medledger_core::{AccountId, TxHash};
use std::path::Path;

/// An HTTP client; with `ca`, HTTPS trusts exactly that certificate (PEM).
pub fn http_client(ca: Option<&Path>) -> Result<reqwest::Client> {
    build(reqwest::Client::builder(), ca)
}

/// As [`http_client`], but HTTP/1.1 only: one connection per concurrent request, as
/// a fleet of independent clients would have (HTTP/2 multiplexes them all over one).
pub fn http1_client(ca: Option<&Path>) -> Result<reqwest::Client> {
    build(reqwest::Client::builder().http1_only(), ca)
}

fn build(b: reqwest::ClientBuilder, ca: Option<&Path>) -> Result<reqwest::Client> {
    crate::install_crypto_provider();
    let mut b = b.pool_max_idle_per_host(64);
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).map_err(|e| NodeError::io(ca, e))?;
        let cert =
            reqwest::Certificate::from_pem(&pem).map_err(|e| NodeError::Tls(e.to_string()))?;
        b = b.tls_certs_only([cert]);
    }
    b.build().map_err(|e| NodeError::Http(e.to_string()))
}

#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    /// Signs every request (`Medledger-Ed25519`) as this account, when set.
    signer: Option<std::sync::Arc<AccountKeys>>,
}

/// The `Authorization` value of a request signed by `keys` (see [`crate::caller`]).
pub fn request_authorization(keys: &AccountKeys, method: &str, path_and_query: &str) -> String {
    let ts = crate::reporter::now_ms();
    let msg = crate::http::caller::request_message(method, path_and_query, ts);
    let sig = ed25519_dalek::Signer::sign(&keys.signing, msg.as_bytes());
    format!(
        "Medledger-Ed25519 did={},ts={ts},sig={}",
        keys.account().to_did(),
        hex::encode(sig.to_bytes())
    )
}

impl Client {
    pub fn new(base: &str, ca: Option<&Path>) -> Result<Self> {
        Ok(Client {
            http: http_client(ca)?,
            base: base.trim_end_matches('/').to_owned(),
            signer: None,
        })
    }

    /// The same client, signing every request as `keys`' account: the node answers
    /// ledger queries only to an identified caller, with what that caller may see.
    pub fn signed_by(mut self, keys: impl Into<std::sync::Arc<AccountKeys>>) -> Self {
        self.signer = Some(keys.into());
        self
    }

    /// A GET of `path` (which starts with `/`), signed when the client has a signer.
    fn get_req(&self, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.get(format!("{}{path}", self.base));
        if let Some(k) = &self.signer {
            r = r.header(
                reqwest::header::AUTHORIZATION,
                request_authorization(k, "GET", path),
            );
        }
        r
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let r = self.get_req(path).send().await.map_err(http)?;
        decode(r).await
    }

    /// GET `path` (with optional extra headers); returns the status and the JSON body
    /// whatever the status, for callers that show errors themselves.
    pub async fn get_raw(
        &self,
        path: &str,
        headers: &[(&str, String)],
    ) -> Result<(u16, serde_json::Value)> {
        let mut req = self.get_req(path);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let r = req.send().await.map_err(http)?;
        let status = r.status().as_u16();
        let body = r.bytes().await.map_err(http)?;
        let json = serde_json::from_slice(&body)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into()));
        Ok((status, json))
    }

    /// The node's Prometheus metrics, as text.
    pub async fn metrics_text(&self) -> Result<String> {
        let r = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .map_err(http)?;
        r.text().await.map_err(http)
    }

    pub async fn status(&self) -> Result<StatusView> {
        self.get("/v1/status").await
    }

    /// The account's last used nonce; 0 for a key the ledger does not know yet (its
    /// first transaction may register it).
    pub async fn account_nonce(&self, id: &AccountId) -> Result<u64> {
        let (status, v) = self.get_raw(&format!("/v1/accounts/{id}"), &[]).await?;
        match status {
            200 => Ok(v["nonce"].as_u64().unwrap_or(0)),
            404 => Ok(0),
            s => Err(crate::NodeError::Http(format!("{s}: {v}"))),
        }
    }

    pub async fn submit(&self, tx: &[u8]) -> Result<SubmitResult> {
        let body = serde_json::json!({ "tx": B64.encode(tx) });
        let r = self
            .http
            .post(format!("{}/v1/tx", self.base))
            .json(&body)
            .send()
            .await
            .map_err(http)?;
        if r.status() == reqwest::StatusCode::UNPROCESSABLE_ENTITY {
            return r.json().await.map_err(http);
        }
        decode(r).await
    }

    pub async fn submit_many(&self, txs: &[Vec<u8>]) -> Result<Vec<SubmitResult>> {
        let body =
            serde_json::json!({ "txs": txs.iter().map(|t| B64.encode(t)).collect::<Vec<_>>() });
        let r = self
            .http
            .post(format!("{}/v1/txs", self.base))
            .json(&body)
            .send()
            .await
            .map_err(http)?;
        Ok(decode::<SubmitManyResponse>(r).await?.results)
    }

    pub async fn tx_status(&self, hash: &TxHash) -> Result<Option<TxStatus>> {
        let r = self
            .get_req(&format!("/v1/tx/{hash}"))
            .send()
            .await
            .map_err(http)?;
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        decode(r).await.map(Some)
    }

    pub async fn tree_head(&self, size: Option<u64>) -> Result<String> {
        let q = size.map(|s| format!("?size={s}")).unwrap_or_default();
        let r = self
            .http
            .get(format!("{}/v1/tree-head{q}", self.base))
            .send()
            .await
            .map_err(http)?;
        if !r.status().is_success() {
            return Err(api_error(r).await);
        }
        r.text().await.map_err(http)
    }

    pub async fn inclusion(&self, hash: &TxHash, size: u64) -> Result<InclusionProofView> {
        self.get(&format!("/v1/proof/inclusion?hash={hash}&size={size}"))
            .await
    }

    pub async fn consistency(&self, old: u64, new: u64) -> Result<ConsistencyProofView> {
        self.get(&format!("/v1/proof/consistency?old={old}&new={new}"))
            .await
    }

    pub async fn wait_ready(&self, timeout: std::time::Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(r) = self.http.get(format!("{}/health", self.base)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(NodeError::Http("node did not become ready".into()));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

fn http(e: reqwest::Error) -> NodeError {
    NodeError::Http(e.to_string())
}

async fn api_error(r: reqwest::Response) -> NodeError {
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    let msg = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or(text);
    NodeError::Http(format!("{status}: {msg}"))
}

async fn decode<T: serde::de::DeserializeOwned>(r: reqwest::Response) -> Result<T> {
    if !r.status().is_success() {
        return Err(api_error(r).await);
    }
    r.json().await.map_err(http)
}
