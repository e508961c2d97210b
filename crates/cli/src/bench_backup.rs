//! `medledger bench backup`: a backup of the `bench fhir` data set. Fills a node with
//! synthetic patients and observations through FHIR, stops it, takes a full backup,
//! adds 1 % more observations, takes an incremental one. Each backup runs as its own
//! `medledger backup create` process (the offline path: the same code a running node
//! runs through its admin socket), so its peak memory is its own. Prints a table and,
//! last, one JSON line.

use crate::bench_fhir::{clinician_token, create_patients, dir_bytes, drive};
use crate::synth::{Mix, observation};
use crate::web::Fhir;
use anyhow::{Context, Result, ensure};
use clap::Args;
use medledger_node::client::{Client, http_client, http1_client};
use medledger_node::datadir;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct BackupBenchArgs {
    /// Synthetic patients to create.
    #[arg(long, default_value_t = 10_000)]
    pub patients: usize,
    /// Observations per patient.
    #[arg(long, default_value_t = 10)]
    pub observations: usize,
    /// Concurrent HTTP clients while filling the node.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
}

/// Runs `medledger backup create` (node stopped); its JSON line.
fn backup_once(data: &Path, dest: &Path) -> Result<Value> {
    let out = Command::new(std::env::current_exe()?)
        .args(["backup", "create", "--data-dir"])
        .arg(data)
        .arg("--out")
        .arg(dest)
        .env("MEDLEDGER_LOG", "warn")
        .output()?;
    ensure!(
        out.status.success(),
        "backup create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().context("no output")?).context("backup JSON")
}

async fn fill(
    fhir: &Fhir,
    patients: &[String],
    from: usize,
    n: usize,
    per: usize,
    clients: usize,
) -> Result<()> {
    let (f, ids) = (fhir.clone(), Arc::new(patients.to_vec()));
    drive(n, clients, "Observation", move |j| {
        let (f, ids) = (f.clone(), ids.clone());
        let i = from + j;
        async move {
            let body = observation(&ids[i % ids.len()], i % per, &mut Mix(!(i as u64)));
            f.create(&body).await
        }
    })
    .await?;
    Ok(())
}

pub fn backup(a: BackupBenchArgs) -> Result<()> {
    ensure!(
        a.patients > 0 && a.observations > 0,
        "--patients and --observations must be at least 1"
    );
    let mut node = crate::bench::spawn_node(None)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let ca = node.dir.join(datadir::TLS_CERT);
    let (token, patients) = rt.block_on(async {
        let client = Client::new(&node.url, Some(&ca))?;
        client.wait_ready(Duration::from_secs(30)).await?;
        let http = http_client(Some(&ca))?;
        let token = clinician_token(&client, &http, &node.url, &node.dir).await?;
        let fhir = Fhir {
            http: http1_client(Some(&ca))?,
            url: node.url.clone(),
            token: token.clone().into(),
        };
        let patients = create_patients(&fhir, a.patients, a.clients).await?;
        fill(
            &fhir,
            &patients,
            0,
            a.patients * a.observations,
            a.observations,
            a.clients,
        )
        .await?;
        anyhow::Ok((token, patients))
    })?;
    crate::bench::stop_node(&mut node.child);

    let (_, recipient) = medledger_node::backup::keygen();
    medledger_node::backup::write_recipients(&node.dir, &[recipient])?;
    let dest_tmp = tempfile::tempdir()?;
    let dest = dest_tmp.path().join("backups");
    let data_bytes = dir_bytes(&node.dir);
    let full = backup_once(&node.dir, &dest)?;
    let full_bytes = dir_bytes(&dest);

    // 1 % more records, through a restarted node.
    let more = (a.patients * (1 + a.observations)).div_ceil(100);
    let (mut again, url) = crate::bench::serve_node(&node.dir)?;
    rt.block_on(async {
        let fhir = Fhir {
            http: http1_client(Some(&ca))?,
            url,
            token: token.into(),
        };
        fill(
            &fhir,
            &patients,
            a.patients * a.observations,
            more,
            a.observations,
            a.clients,
        )
        .await
    })?;
    crate::bench::stop_node(&mut again);
    let incr = backup_once(&node.dir, &dest)?;
    let incr_bytes = dir_bytes(&dest) - full_bytes;

    let mb = |b: u64| b as f64 / 1e6;
    let secs = |v: &Value| v["seconds"].as_f64().unwrap_or(0.0);
    let full_s = secs(&full);
    let incr_s = secs(&incr);
    let resources = a.patients * (1 + a.observations);
    println!(
        "medledger bench backup ({resources} resources, {:.0} MB of node data; then {more} more)",
        mb(data_bytes)
    );
    println!("{:<40}{:>14}{:>14}", "", "full", "incremental");
    println!("{:<40}{:>14.2}{:>14.2}", "seconds", full_s, incr_s);
    println!(
        "{:<40}{:>14.1}{:>14.1}",
        "MB written",
        mb(full_bytes),
        mb(incr_bytes)
    );
    println!(
        "{:<40}{:>14.1}{:>14}",
        "node data read, MB/s",
        mb(data_bytes) / full_s.max(1e-9),
        ""
    );
    println!(
        "{:<40}{:>14.1}{:>14.1}",
        "backup written, MB/s",
        mb(full_bytes) / full_s.max(1e-9),
        mb(incr_bytes) / incr_s.max(1e-9)
    );
    println!(
        "{:<40}{:>14}{:>14}",
        "blobs copied",
        full["blobs_new"].as_u64().unwrap_or(0),
        incr["blobs_new"].as_u64().unwrap_or(0)
    );
    println!(
        "{:<40}{:>14.1}{:>14.1}",
        "peak RSS of the backup process, MB",
        full["peak_rss_mb"].as_f64().unwrap_or(0.0),
        incr["peak_rss_mb"].as_f64().unwrap_or(0.0)
    );
    println!(
        "{}",
        json!({
            "bench": "backup", "resources": resources, "more_resources": more,
            "node_data_bytes": data_bytes,
            "full": {"seconds": full_s, "bytes": full_bytes, "blobs_new": full["blobs_new"],
                     "read_mb_per_s": mb(data_bytes) / full_s.max(1e-9),
                     "written_mb_per_s": mb(full_bytes) / full_s.max(1e-9),
                     "peak_rss_mb": full["peak_rss_mb"]},
            "incremental": {"seconds": incr_s, "bytes": incr_bytes, "blobs_new": incr["blobs_new"],
                            "peak_rss_mb": incr["peak_rss_mb"]},
        })
    );
    Ok(())
}
