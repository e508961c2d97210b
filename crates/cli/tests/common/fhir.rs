//! A minimal FHIR client for the end-to-end tests.

use serde_json::Value;

/// A FHIR client with an API token; every answer must be FHIR JSON.
pub struct Fhir {
    pub c: reqwest::Client,
    pub url: String,
    pub token: String,
}

impl Fhir {
    /// A client of `h`'s node with an API token.
    pub fn new(h: &super::signin::Http, token: impl Into<String>) -> Self {
        Fhir {
            c: h.c.clone(),
            url: h.url.clone(),
            token: token.into(),
        }
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut r = self
            .c
            .request(method, format!("{}/fhir{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            r = r
                .header("content-type", "application/fhir+json")
                .body(serde_json::to_vec(b).unwrap());
        }
        let resp = r.send().await.unwrap();
        let st = resp.status().as_u16();
        if st != 204 {
            let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
            assert!(ct.starts_with("application/fhir+json"), "{path}: {ct}");
        }
        (st, resp.json().await.unwrap_or(Value::Null))
    }
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, b: &Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(b)).await
    }
}

/// Every id a search returns, following its pages.
pub async fn search_ids(f: &Fhir, first: &str) -> std::collections::BTreeSet<String> {
    let mut ids = std::collections::BTreeSet::new();
    let mut next = Some(first.to_owned());
    while let Some(p) = next {
        let (st, page) = f.get(&p).await;
        assert_eq!(st, 200, "{p}: {page}");
        for e in page["entry"].as_array().into_iter().flatten() {
            if e["search"]["mode"] == "match" || e["search"]["mode"].is_null() {
                ids.insert(e["resource"]["id"].as_str().unwrap().to_owned());
            }
        }
        next = page["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| {
                l["url"]
                    .as_str()
                    .unwrap()
                    .split("/fhir")
                    .nth(1)
                    .unwrap()
                    .to_owned()
            });
    }
    ids
}
