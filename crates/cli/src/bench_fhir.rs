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
    /// Keep the node's data directory here (must not exist yet), to profile a
    /// restart on the data set or look at it afterwards.
    #[arg(long)]
    pub keep: Option<std::path::PathBuf>,
}

/// Runs `n` jobs on `clients` concurrent workers; returns each job's output and latency.
pub(crate) async fn drive<T, F, Fut>(
    n: usize,
    clients: usize,
    bar: &str,
    job: F,
) -> Result<Vec<(T, f64)>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<T>> + Send,
{
    Ok(drive_timed(n, clients, bar, job)
        .await?
        .into_iter()
        .map(|(v, ms, _)| (v, ms))
        .collect())
}

/// Jobs done per second over the last `k` completions of `done`, or since `start`
/// when `start` is given (the first leg of a run).
fn rate(mut done: Vec<Instant>, k: usize, start: Option<Instant>) -> f64 {
    done.sort();
    let n = done.len();
    if n == 0 || k == 0 {
        return 0.0;
    }
    let (k, from) = match start {
        Some(s) => (n, s),
        None => {
            let k = k.min(n - 1);
            (k, done[n - 1 - k])
        }
    };
    k as f64 / done[n - 1].duration_since(from).as_secs_f64().max(1e-9)
}

/// [`drive`], also returning when each job completed.
async fn drive_timed<T, F, Fut>(
    n: usize,
    clients: usize,
    bar: &str,
    job: F,
) -> Result<Vec<(T, f64, Instant)>>
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
                let done = Instant::now();
                out.push((i, v, done.duration_since(t0).as_secs_f64() * 1000.0, done));
                pb.inc(1);
            }
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await??);
    }
    pb.finish_and_clear();
    all.sort_by_key(|(i, _, _, _)| *i);
    Ok(all.into_iter().map(|(_, v, ms, at)| (v, ms, at)).collect())
}

/// Read and search latency of a sample taken at one point of the run.
#[derive(Default, serde::Serialize)]
struct Probe {
    resources: usize,
    read_p50_ms: f64,
    read_p99_ms: f64,
    search_p50_ms: f64,
    search_p99_ms: f64,
}

struct Figures {
    /// Observation creates/s in the first and last tenth of their run.
    obs_first_tenth: f64,
    obs_last_tenth: f64,
    /// Reads and searches after the first tenth of the Observations, and at the end.
    early: Probe,
    late: Probe,
    /// Data directory bytes by part, after every create.
    disk: Vec<(&'static str, u64)>,
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
    let mut node = crate::bench::spawn_node(a.keep.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(run(&a, &node.url, &node.dir));
    crate::bench::stop_node(&mut node.child);
    let f = result?;
    // The node's start-up on the data set the run left.
    let started = Instant::now();
    let (mut again, _) = crate::bench::serve_node(&node.dir)?;
    let restart_s = started.elapsed().as_secs_f64();
    crate::bench::stop_node(&mut again);
    let creates = a.patients * (1 + a.observations);
    let disk_total: u64 = f.disk.iter().map(|(_, b)| b).sum();
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
    let more = [
        ("Observation creates/s, first tenth", f.obs_first_tenth, 0),
        ("Observation creates/s, last tenth", f.obs_last_tenth, 0),
        ("read p99 (ms), early / late", f.early.read_p99_ms, 1),
        ("", f.late.read_p99_ms, 1),
        ("search p99 (ms), early / late", f.early.search_p99_ms, 1),
        ("", f.late.search_p99_ms, 1),
        (
            "bytes on disk per resource",
            disk_total as f64 / creates as f64,
            0,
        ),
        ("restart to ready (s)", restart_s, 2),
    ];
    for (label, value, decimals) in more {
        println!("{label:<34}{value:>12.decimals$}");
    }
    for (part, bytes) in &f.disk {
        println!(
            "{:<34}{:>12.0}",
            format!("  {part} bytes per resource"),
            *bytes as f64 / creates as f64
        );
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
            "observation_creates_per_s_first_tenth": f.obs_first_tenth,
            "observation_creates_per_s_last_tenth": f.obs_last_tenth,
            "early": f.early, "late": f.late,
            "disk_bytes": f.disk.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "bytes_per_resource": disk_total as f64 / creates as f64,
            "restart_s": restart_s,
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
    let patients = create_patients(&fhir, a.patients, a.clients).await?;
    let patient_secs = t0.elapsed().as_secs_f64();
    // Observations in two legs: the first tenth, a probe of read and search latency on
    // what exists then, the rest. The probe's time is not counted as create time.
    let per = a.observations;
    let total = a.patients * per;
    let tenth = (total / 10).max(1).min(total);
    let mut observations: Vec<String> = Vec::with_capacity(total);
    let mut done_at = Vec::with_capacity(total);
    let mut obs_secs = 0.0;
    let mut early = Probe::default();
    let first_start = Instant::now();
    for (from, to) in [(0, tenth), (tenth, total)] {
        if from >= to {
            continue;
        }
        let t1 = Instant::now();
        let (f, ids) = (fhir.clone(), Arc::new(patients.clone()));
        let leg = drive_timed(to - from, a.clients, "Observation", move |j| {
            let (f, ids) = (f.clone(), ids.clone());
            let i = from + j;
            async move {
                let body = observation(&ids[i / per], i % per, &mut Mix(!(i as u64)));
                f.create(&body).await
            }
        })
        .await?;
        obs_secs += t1.elapsed().as_secs_f64();
        for (id, _, at) in leg {
            observations.push(id);
            done_at.push(at);
        }
        if to == tenth {
            early = probe(
                &fhir,
                &patients,
                &observations,
                per,
                a.clients,
                a.patients + observations.len(),
            )
            .await?;
        }
    }
    // The first leg is the first tenth; the last tenth is the last `tenth` completions
    // of the second leg (the probe's pause lies between the legs).
    let obs_first_tenth = rate(done_at[..tenth].to_vec(), tenth, Some(first_start));
    let obs_last_tenth = rate(done_at[tenth..].to_vec(), tenth, None);
    let disk = disk_usage(dir)?;

    // Audited reads of random observations.
    let reports_before = access_reports(&client).await?;
    let t2 = Instant::now();
    let observations_for_probe = observations.clone();
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
    let patients_for_probe = patients.clone();
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

    let late = probe(
        &fhir,
        &patients_for_probe,
        &observations_for_probe,
        per,
        a.clients,
        a.patients + observations_for_probe.len(),
    )
    .await?;
    let mut read_lat: Vec<f64> = reads.iter().map(|(_, ms)| *ms).collect();
    let mut search_lat: Vec<f64> = searches.iter().map(|(_, ms)| *ms).collect();
    read_lat.sort_by(f64::total_cmp);
    search_lat.sort_by(f64::total_cmp);
    let creates = a.patients * (1 + a.observations);
    Ok(Figures {
        obs_first_tenth,
        obs_last_tenth,
        early,
        late,
        disk,
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

/// Reads and searches this many times at one point of the run, for latency.
const PROBE_READS: usize = 2_000;
const PROBE_SEARCHES: usize = 300;

/// Read and search latency over the resources that exist now (patients whose
/// observations are all created).
async fn probe(
    fhir: &Fhir,
    patients: &[String],
    observations: &[String],
    per: usize,
    clients: usize,
    resources: usize,
) -> Result<Probe> {
    let complete = (observations.len() / per).min(patients.len()).max(1);
    let (f, ids) = (fhir.clone(), Arc::new(observations.to_vec()));
    let mut reads: Vec<f64> = drive(PROBE_READS, clients, "probe read", move |i| {
        let (f, ids) = (f.clone(), ids.clone());
        async move {
            let id = &ids[Mix(i as u64 ^ 0xa11).below(ids.len())];
            f.get(&format!("Observation/{id}")).await.map(|_| ())
        }
    })
    .await?
    .into_iter()
    .map(|(_, ms)| ms)
    .collect();
    let (f, ids) = (fhir.clone(), Arc::new(patients[..complete].to_vec()));
    let mut searches: Vec<f64> = drive(PROBE_SEARCHES, clients, "probe search", move |i| {
        let (f, ids) = (f.clone(), ids.clone());
        async move {
            let mut g = Mix(i as u64 ^ 0xbee);
            let p = &ids[g.below(ids.len())];
            let k = g.below(per.min(VITALS.len()));
            f.get(&format!(
                "Observation?patient={p}&code=http://loinc.org|{}",
                VITALS[k].0
            ))
            .await
            .map(|_| ())
        }
    })
    .await?
    .into_iter()
    .map(|(_, ms)| ms)
    .collect();
    reads.sort_by(f64::total_cmp);
    searches.sort_by(f64::total_cmp);
    Ok(Probe {
        resources,
        read_p50_ms: crate::bench::percentile(&reads, 0.50),
        read_p99_ms: crate::bench::percentile(&reads, 0.99),
        search_p50_ms: crate::bench::percentile(&searches, 0.50),
        search_p99_ms: crate::bench::percentile(&searches, 0.99),
    })
}

/// Creates `n` synthetic patients through FHIR; their ids.
pub(crate) async fn create_patients(fhir: &Fhir, n: usize, clients: usize) -> Result<Vec<String>> {
    let f = fhir.clone();
    Ok(drive(n, clients, "Patient", move |i| {
        let f = f.clone();
        async move { f.create(&patient(i, &mut Mix(i as u64))).await }
    })
    .await?
    .into_iter()
    .map(|(id, _)| id)
    .collect())
}

/// Bytes under `p` (a file or a whole directory; links not followed).
pub(crate) fn dir_bytes(p: &Path) -> u64 {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::read_dir(p)
            .map(|d| d.flatten().map(|e| dir_bytes(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

/// Bytes the data directory holds, by part.
pub(crate) fn disk_usage(dir: &Path) -> Result<Vec<(&'static str, u64)>> {
    let parts = [
        ("ledger", datadir::LEDGER_DB),
        ("raft log", datadir::RAFT_DB),
        ("record store", datadir::BLOBS_DIR),
        ("FHIR index", "fhir.redb"),
        ("audit queue", datadir::AUDIT_QUEUE_DB),
    ];
    let mut out: Vec<(&'static str, u64)> = parts
        .iter()
        .map(|(k, f)| (*k, dir_bytes(&dir.join(f))))
        .collect();
    let known: u64 = out.iter().map(|(_, b)| b).sum();
    out.push(("other", dir_bytes(dir).saturating_sub(known)));
    Ok(out)
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
pub(crate) async fn clinician_token(
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
