//! `medledger import` and `medledger export`: FHIR transaction Bundles in, a patient's
//! record (`$everything`) out, through a node's FHIR API with an API token.

use crate::NodeArgs;
use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args, Debug)]
pub struct TokenArg {
    /// API token (create one with POST /auth/tokens while signed in).
    #[arg(long, env = "MEDLEDGER_TOKEN", hide_env_values = true)]
    pub token: String,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Transaction Bundle files, or directories of them (`*.json`).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Write where each entry went to this file: `[{file, entries: {fullUrl: "Type/id"}}]`
    /// in import order.
    #[arg(long)]
    pub map: Option<PathBuf>,
    #[command(flatten)]
    pub token: TokenArg,
    #[command(flatten)]
    pub node: NodeArgs,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The Patient resource id.
    #[arg(long)]
    pub patient: String,
    /// Output file (default: standard output).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub token: TokenArg,
    #[command(flatten)]
    pub node: NodeArgs,
}

fn files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "json"))
                .collect();
            v.sort();
            out.extend(v);
        } else {
            out.push(p.clone());
        }
    }
    if out.is_empty() {
        bail!("no .json files to import");
    }
    Ok(out)
}

/// The diagnostics of an OperationOutcome, one line.
fn diagnostics(v: &Value) -> String {
    v["issue"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| {
                    let at = i["expression"][0]
                        .as_str()
                        .map(|e| format!(" at {e}"))
                        .unwrap_or_default();
                    format!("{}{at}", i["diagnostics"].as_str().unwrap_or("?"))
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_else(|| v.to_string())
}

fn http(node: &NodeArgs) -> Result<reqwest::Client> {
    let ca = node.ca_path();
    Ok(medledger_node::client::http_client(ca.as_deref())?)
}

pub async fn import(a: ImportArgs) -> Result<()> {
    // Bundles without patients (organisations, practitioners) first: patient
    // bundles refer to them. References to entries of earlier bundles (Synthea's
    // `urn:uuid:` across files) are rewritten to the ids those entries got.
    let mut files = files(&a.paths)?;
    let mut keyed = Vec::new();
    for f in files.drain(..) {
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        keyed.push((
            text.contains("\"resourceType\": \"Patient\"")
                || text.contains("\"resourceType\":\"Patient\""),
            f,
        ));
    }
    keyed.sort();
    let files: Vec<PathBuf> = keyed.into_iter().map(|(_, f)| f).collect();
    let http = http(&a.node)?;
    let url = format!("{}/fhir", a.node.node.trim_end_matches('/'));
    let bar = ProgressBar::new(files.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} importing [{bar:30}] {pos}/{len} bundles · {msg} · {elapsed}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    let started = Instant::now();
    let (mut ok, mut failed, mut resources) = (0usize, 0usize, 0usize);
    let mut by_type: BTreeMap<String, usize> = BTreeMap::new();
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    let mut per_file = Vec::new();
    for f in &files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut bundle: Value = serde_json::from_slice(
            &std::fs::read(f).with_context(|| format!("reading {}", f.display()))?,
        )
        .with_context(|| format!("{name} is not JSON"))?;
        let own: std::collections::HashSet<String> = bundle["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["fullUrl"].as_str().map(str::to_owned))
            .collect();
        let earlier: BTreeMap<String, String> = map
            .iter()
            .filter(|(k, _)| !own.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        rewrite_known(&mut bundle, &earlier);
        let body = serde_json::to_vec(&bundle)?;
        let resp = http
            .post(&url)
            .bearer_auth(&a.token.token)
            .header("content-type", "application/fhir+json")
            .body(body)
            .send()
            .await
            .with_context(|| format!("posting {name}"))?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            ok += 1;
            let mut local = BTreeMap::new();
            for e in v["entry"].as_array().into_iter().flatten() {
                let loc = e["response"]["location"].as_str().unwrap_or("");
                let typed: Vec<&str> = loc.split('/').collect();
                if let [t, id, ..] = typed.as_slice() {
                    resources += 1;
                    *by_type.entry((*t).to_owned()).or_default() += 1;
                    if let Some(u) = e["fullUrl"].as_str() {
                        local.insert(u.to_owned(), format!("{t}/{id}"));
                    }
                }
            }
            map.extend(local.clone());
            per_file.push(json!({"file": name, "entries": local}));
        } else {
            failed += 1;
            bar.suspend(|| eprintln!("{name}: {status}: {}", diagnostics(&v)));
        }
        bar.set_message(format!("{resources} resources"));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "imported {ok} of {} bundles ({resources} resources) in {secs:.1} s ({:.0} resources/s)",
        files.len(),
        resources as f64 / secs.max(1e-9)
    );
    for (t, n) in &by_type {
        eprintln!("  {t:<24} {n:>6}");
    }
    if let Some(m) = &a.map {
        std::fs::write(m, serde_json::to_vec_pretty(&per_file)?)
            .with_context(|| format!("writing {}", m.display()))?;
    }
    println!(
        "{}",
        json!({"bundles": files.len(), "imported": ok, "failed": failed, "resources": resources, "by_type": by_type, "seconds": secs})
    );
    if failed > 0 {
        bail!("{failed} bundle(s) were refused; nothing of those was stored");
    }
    Ok(())
}

/// Rewrites references to entries imported from earlier bundles.
fn rewrite_known(v: &mut Value, map: &BTreeMap<String, String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                if k == "reference"
                    && let Value::String(s) = x
                    && let Some(n) = map.get(s.as_str())
                {
                    *s = n.clone();
                } else {
                    rewrite_known(x, map);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rewrite_known(x, map)),
        _ => {}
    }
}

pub async fn export(a: ExportArgs) -> Result<()> {
    let http = http(&a.node)?;
    let url = format!(
        "{}/fhir/Patient/{}/$everything",
        a.node.node.trim_end_matches('/'),
        a.patient
    );
    let resp = http
        .get(&url)
        .bearer_auth(&a.token.token)
        .send()
        .await
        .context("fetching the patient's record")?;
    let status = resp.status();
    let v: Value = resp.json().await.context("reading the answer")?;
    if !status.is_success() {
        bail!("{status}: {}", diagnostics(&v));
    }
    let n = v["entry"].as_array().map_or(0, Vec::len);
    let bytes = serde_json::to_vec_pretty(&v)?;
    match &a.out {
        Some(p) => write_out(p, &bytes)?,
        None => println!("{}", String::from_utf8_lossy(&bytes)),
    }
    eprintln!("exported {n} resources");
    Ok(())
}

fn write_out(p: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(p, bytes).with_context(|| format!("writing {}", p.display()))
}
