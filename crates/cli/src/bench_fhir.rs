//! `medledger bench fhir`: starts a node, signs a clinician in through `/auth` (with
//! MFA and an API token, as a hospital system would), then drives the FHIR API over
//! HTTPS: creates synthetic Patients and Observations, reads Observations (each read
//! decided by consent and audited on the ledger), and searches. Prints a table and,
//! last, one JSON line.

use crate::synth::{Mix, VITALS, observation, patient};
use crate::web::{Auth, Fhir, rand_bytes};
use anyhow::{Context, Result, ensure};
use clap::Args;
use medledger_node::client::{Client, http_client, http1_client};
use medledger_node::datadir;
use medledger_node::keystore::KeystoreFile;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct FhirBenchArgs {
    /// Synthetic patients to create.
    #[arg(long, default_value_t = 10_000)]
    pub patients: usize,
    /// Observations per patient.
    #[arg(long, default_value_t = 10)]
    pub observations: usize,
    /// Audited reads of random Observations.
    #[arg(long, default_value_t = 50_000)]
    pub reads: usize,
    /// Searches (`Observation?patient=…&code=…`), for latency percentiles.
    #[arg(long, default_value_t = 2_000)]
    pub searches: usize,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
}

/// Runs `n` jobs on `clients` concurrent workers; returns each job's output and latency.
async fn drive<T, F, Fut>(n: usize, clients: usize, bar: &str, job: F) -> Result<Vec<(T, f64)>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<T>> + Send,
{
    let pb = indicatif::ProgressBar::new(n as u64).with_message(bar.to_owned());
    pb.set_style(
        indicatif::ProgressStyle::with_template("{msg:>12} {wide_bar} {pos}/{len} {per_sec}")
            .expect("template"),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let job = Arc::new(job);
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let (next, job, pb) = (next.clone(), job.clone(), pb.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(out);
                }
                let t0 = Instant::now();
                let v = job(i).await?;
                out.push((i, v, t0.elapsed().as_secs_f64() * 1000.0));
                pb.inc(1);
            }
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await??);
    }
    pb.finish_and_clear();
    all.sort_by_key(|(i, _, _)| *i);
    Ok(all.into_iter().map(|(_, v, ms)| (v, ms)).collect())
}

struct Figures {
    patients_per_s: f64,
    observations_per_s: f64,
    creates_per_s: f64,
    reads_per_s: f64,
    read_p50: f64,
    read_p99: f64,
    audit_lag_s: f64,
    search_p50: f64,
    search_p99: f64,
}

pub fn fhir(a: FhirBenchArgs) -> Result<()> {
    ensure!(
        a.patients > 0 && a.observations > 0,
        "--patients and --observations must be at least 1"
    );
    let mut node = crate::bench::spawn_node()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(run(&a, &node.url, &node.dir));
    let _ = node.child.kill();
    let _ = node.child.wait();
    let f = result?;
    let creates = a.patients * (1 + a.observations);
    println!(
        "medledger bench fhir ({} patients x {} observations = {creates} creates, {} reads, {} searches, {} clients)",
        a.patients, a.observations, a.reads, a.searches, a.clients
    );
    println!("{:<34}{:>12}", "metric", "value");
    let rows = [
        ("creates/s (all)", f.creates_per_s, 0),
        ("  Patient creates/s", f.patients_per_s, 0),
        ("  Observation creates/s", f.observations_per_s, 0),
        ("audited reads/s", f.reads_per_s, 0),
        ("  read latency p50 (ms)", f.read_p50, 1),
        ("  read latency p99 (ms)", f.read_p99, 1),
        ("  audit committed after (s)", f.audit_lag_s, 2),
        ("search latency p50 (ms)", f.search_p50, 1),
        ("search latency p99 (ms)", f.search_p99, 1),
    ];
    for (label, value, decimals) in rows {
        println!("{label:<34}{value:>12.decimals$}");
    }
    println!(
        "{}",
        json!({
            "bench": "fhir", "patients": a.patients, "observations_per_patient": a.observations,
            "reads": a.reads, "searches": a.searches, "clients": a.clients,
            "creates_per_s": f.creates_per_s, "patient_creates_per_s": f.patients_per_s,
            "observation_creates_per_s": f.observations_per_s,
            "reads_per_s": f.reads_per_s, "read_p50_ms": f.read_p50, "read_p99_ms": f.read_p99,
            "audit_lag_s": f.audit_lag_s,
            "search_p50_ms": f.search_p50, "search_p99_ms": f.search_p99,
        })
    );
    Ok(())
}

async fn run(a: &FhirBenchArgs, url: &str, dir: &Path) -> Result<Figures> {
    let ca = dir.join(datadir::TLS_CERT);
    let client = Client::new(url, Some(&ca))?;
    client.wait_ready(Duration::from_secs(30)).await?;
    let http = http_client(Some(&ca))?;
    let token = clinician_token(&client, &http, url, dir).await?;
    let fhir = Fhir {
        http: http1_client(Some(&ca))?,
        url: url.to_owned(),
        token: token.into(),
    };

    // Creates: patients, then their observations.
    let t0 = Instant::now();
    let f = fhir.clone();
    let patients: Vec<String> = drive(a.patients, a.clients, "Patient", move |i| {
        let f = f.clone();
        async move { f.create(&patient(i, &mut Mix(i as u64))).await }
    })
    .await?
    .into_iter()
    .map(|(id, _)| id)
    .collect();
    let patient_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let (f, ids, per) = (fhir.clone(), Arc::new(patients.clone()), a.observations);
    let observations: Vec<String> = drive(a.patients * per, a.clients, "Observation", move |i| {
        let (f, ids) = (f.clone(), ids.clone());
        async move {
            let body = observation(&ids[i / per], i % per, &mut Mix(!(i as u64)));
            f.create(&body).await
        }
    })
    .await?
    .into_iter()
    .map(|(id, _)| id)
    .collect();
    let obs_secs = t1.elapsed().as_secs_f64();

    // Audited reads of random observations.
    let reports_before = access_reports(&client).await?;
    let t2 = Instant::now();
    let (f, ids) = (fhir.clone(), Arc::new(observations));
    let reads = drive(a.reads, a.clients, "read", move |i| {
        let (f, ids) = (f.clone(), ids.clone());
        async move {
            let id = &ids[Mix(i as u64 ^ 0x5eed).below(ids.len())];
            let v = f.get(&format!("Observation/{id}")).await?;
            ensure!(v["id"] == id.as_str(), "read returned another resource");
            Ok(())
        }
    })
    .await?;
    let read_secs = t2.elapsed().as_secs_f64();
    // Every read is reported to the ledger; wait until all those reports committed.
    let want = reports_before + a.reads as u64;
    while access_reports(&client).await? < want {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let audit_lag_s = t2.elapsed().as_secs_f64() - read_secs;

    // Searches: one patient's observations of one code.
    let (f, ids) = (fhir.clone(), Arc::new(patients));
    let searches = drive(a.searches, a.clients, "search", move |i| {
        let (f, ids) = (f.clone(), ids.clone());
        async move {
            let mut g = Mix(i as u64 ^ 0x5ea7c4);
            let p = &ids[g.below(ids.len())];
            let k = g.below(per.min(VITALS.len()));
            let b = f
                .get(&format!(
                    "Observation?patient={p}&code=http://loinc.org|{}",
                    VITALS[k].0
                ))
                .await?;
            let expected = (0..per).filter(|j| j % VITALS.len() == k).count();
            let found = b["entry"].as_array().map_or(0, Vec::len);
            ensure!(
                found == expected,
                "search found {found} observations, expected {expected}"
            );
            Ok(())
        }
    })
    .await?;

    let mut read_lat: Vec<f64> = reads.iter().map(|(_, ms)| *ms).collect();
    let mut search_lat: Vec<f64> = searches.iter().map(|(_, ms)| *ms).collect();
    read_lat.sort_by(f64::total_cmp);
    search_lat.sort_by(f64::total_cmp);
    let creates = a.patients * (1 + a.observations);
    Ok(Figures {
        patients_per_s: a.patients as f64 / patient_secs,
        observations_per_s: (a.patients * a.observations) as f64 / obs_secs,
        creates_per_s: creates as f64 / (patient_secs + obs_secs),
        reads_per_s: a.reads as f64 / read_secs,
        read_p50: crate::bench::percentile(&read_lat, 0.50),
        read_p99: crate::bench::percentile(&read_lat, 0.99),
        audit_lag_s,
        search_p50: crate::bench::percentile(&search_lat, 0.50),
        search_p99: crate::bench::percentile(&search_lat, 0.99),
    })
}

/// Committed access reports so far, from the node's metrics.
async fn access_reports(client: &Client) -> Result<u64> {
    let text = client.metrics_text().await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("medledger_access_reports_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64)
}

/// Sets up org `bench` (the consortium admin as its admin, signed in with MFA), a
/// doctor approved by that admin, and an API token for the doctor.
async fn clinician_token(
    client: &Client,
    http: &reqwest::Client,
    url: &str,
    dir: &Path,
) -> Result<String> {
    let password = std::fs::read_to_string(dir.join(datadir::ADMIN_PASSWORD))?;
    let password = password.trim();
    let admin =
        KeystoreFile::read(&dir.join(datadir::ADMIN_KEYSTORE))?.open(password.as_bytes())?;
    crate::web::add_org(client, &std::sync::Arc::new(admin), "bench").await?;

    let auth = Auth { http, url };
    let secret = |who: &str| format!("bench {who} {}", hex::encode(rand_bytes()));
    let keystore: Value =
        serde_json::from_slice(&std::fs::read(dir.join(datadir::ADMIN_KEYSTORE))?)?;
    let admin_pw = secret("admin");
    auth.post(
        "/auth/enroll",
        json!({"keystore": keystore, "keystore_password": password, "name": "Bench Admin",
               "email": "admin@bench.example", "password": admin_pw, "org": "bench",
               "role": "hospital_admin"}),
        None,
    )
    .await?;
    auth.verify(dir, "admin@bench.example").await?;
    let admin_session = auth.sign_in("admin@bench.example", &admin_pw).await?;

    let doctor_pw = secret("doctor");
    let (v, _) = auth
        .post(
            "/auth/register",
            json!({"name": "Bench Doctor", "email": "doctor@bench.example", "password": doctor_pw,
                   "org": "bench", "role": "doctor"}),
            None,
        )
        .await?;
    auth.verify(dir, "doctor@bench.example").await?;
    auth.post(
        "/auth/approve",
        json!({"account": v["account"]}),
        Some(&admin_session),
    )
    .await?;
    let doctor = auth.sign_in("doctor@bench.example", &doctor_pw).await?;
    let (v, _) = auth
        .post("/auth/tokens", json!({"ttl_s": 86400}), Some(&doctor))
        .await?;
    v["token"].as_str().map(str::to_owned).context("api token")
}
