//! `medledger bench ledger`: starts a node (or targets one), submits pre-signed
//! transactions from concurrent clients over the HTTPS API, and reports committed
//! tx/s, commit latency percentiles, a single client's sequential commit latency and
//! `verify` throughput. Two workloads: `anchor` (the cheapest kind) and `records`, the
//! original design's `addHealthcareRecord`: doctors add records (CID, content hash,
//! category) for patients who granted them treatment access.

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use medledger_core::tx::TX_VERSION;
use medledger_core::{
    AccountId, Category, ChainId, Cid, Digest32, Grantee, OrgId, Payload, Purpose, Role, Scope,
    TxBody,
};
use medledger_ledger::{VerifyMode, verify_ledger};
use medledger_node::client::Client;
use medledger_node::datadir;
use medledger_node::keystore::{AccountKeys, KeystoreFile};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What the bench's transactions do.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Anchor a digest: the cheapest kind.
    Anchor,
    /// Doctors add records for patients who granted them treatment access (the
    /// original design's `addHealthcareRecord`).
    Records,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Anchor => "anchor",
            Workload::Records => "records",
        }
    }
}

#[derive(Args, Debug)]
pub struct LedgerBenchArgs {
    #[arg(long, value_enum, default_value_t = Workload::Anchor)]
    pub workload: Workload,
    /// Patients (records workload); each grants one doctor (a client) treatment access.
    #[arg(long, default_value_t = 1_000)]
    pub patients: usize,
    /// Commits of a single client, one at a time, after the concurrent run.
    #[arg(long, default_value_t = 300)]
    pub seq: usize,
    /// Transactions to submit in total.
    #[arg(long, default_value_t = 50_000)]
    pub txs: usize,
    /// Concurrent clients, each with its own account.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Transactions per HTTP request.
    #[arg(long, default_value_t = 64)]
    pub per_request: usize,
    /// Target a running node instead of starting one (verify is then skipped: it
    /// needs the node stopped). Needs --data-dir of that node for its admin keystore.
    #[arg(long)]
    pub node: Option<String>,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

pub(crate) struct Spawned {
    pub(crate) child: Child,
    pub(crate) url: String,
    /// The temporary directory holding `dir`, removed on drop; `None` when the
    /// caller asked to keep the data directory.
    _dir: Option<tempfile::TempDir>,
    pub(crate) dir: PathBuf,
}

/// Initialises a data directory and serves it: in a temporary directory, or at
/// `keep` (which must not exist yet) when the caller wants the data set afterwards.
pub(crate) fn spawn_node(keep: Option<&Path>) -> Result<Spawned> {
    let (dir, data) = match keep {
        Some(k) => {
            ensure!(!k.exists(), "{} already exists", k.display());
            (None, k.to_path_buf())
        }
        None => {
            let t = tempfile::tempdir()?;
            let data = t.path().join("data");
            (Some(t), data)
        }
    };
    let exe = std::env::current_exe()?;
    let st = Command::new(&exe)
        .args(["init", "--data-dir"])
        .arg(&data)
        .stdout(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("init failed");
    }
    let (child, url) = serve_node(&data)?;
    Ok(Spawned {
        child,
        url,
        _dir: dir,
        dir: data,
    })
}

/// Starts `serve` on an initialised data directory and waits until it is ready.
pub(crate) fn serve_node(data: &Path) -> Result<(Child, String)> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(&exe)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        // The bench prints its own figures; the node says only what went wrong.
        .env("MEDLEDGER_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let url = line
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_owned();
    if !url.starts_with("http") {
        let _ = child.kill();
        bail!("node did not start: {line}");
    }
    Ok((child, url))
}

/// Stops a node the way an operator does (SIGTERM), so it shuts down cleanly.
pub(crate) fn stop_node(child: &mut Child) {
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

pub fn ledger(a: LedgerBenchArgs) -> Result<()> {
    let spawned = if a.node.is_none() {
        Some(spawn_node(None)?)
    } else {
        None
    };
    let (url, dir) = match (&spawned, &a.node, &a.data_dir) {
        (Some(s), _, _) => (s.url.clone(), s.dir.clone()),
        (None, Some(n), Some(d)) => (n.clone(), d.clone()),
        _ => bail!("--node needs --data-dir (for the admin keystore and TLS certificate)"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(run(&a, &url, &dir));
    let mut spawned = spawned;
    let verify = match (&result, spawned.as_mut()) {
        (Ok(_), Some(s)) => {
            // Stop the node so verify can open the store.
            stop_node(&mut s.child);
            let genesis = datadir::read_genesis(&s.dir)?;
            let r = verify_ledger(
                &s.dir.join(datadir::LEDGER_DB),
                &genesis,
                VerifyMode::Full,
                &|_, _| {},
            )?;
            // A restart checks only what came after the node's verified mark.
            let started = Instant::now();
            let (mut child, _) = serve_node(&s.dir)?;
            let restart_s = started.elapsed().as_secs_f64();
            stop_node(&mut child);
            Some((r, restart_s))
        }
        (_, Some(s)) => {
            let _ = s.child.kill();
            None
        }
        _ => None,
    };
    let r = result?;
    let verify_tps = verify.as_ref().map(|(v, _)| v.txs_per_second);
    let restart_s = verify.as_ref().map(|(_, s)| *s);
    println!(
        "medledger bench ledger --workload {} ({} txs, {} clients, {} per request{})",
        a.workload.name(),
        a.txs,
        a.clients,
        a.per_request,
        if a.workload == Workload::Records {
            format!(", {} patients", a.patients)
        } else {
            String::new()
        }
    );
    println!("{:<28}{:>14}", "metric", "value");
    println!("{:<28}{:>14.0}", "committed tx/s", r.tps);
    println!("{:<28}{:>14.1}", "commit latency p50 (ms)", r.p50);
    println!("{:<28}{:>14.1}", "commit latency p99 (ms)", r.p99);
    println!("{:<28}{:>14.1}", "sequential commit p50 (ms)", r.seq_p50);
    println!("{:<28}{:>14.1}", "sequential commit p99 (ms)", r.seq_p99);
    println!("{:<28}{:>14}", "committed", r.committed);
    println!("{:<28}{:>14}", "rejected", r.rejected);
    match &verify {
        Some((v, restart)) => {
            println!(
                "{:<28}{:>14.0}   ({} txs in {:.2}s)",
                "verify tx/s", v.txs_per_second, v.txs, v.seconds
            );
            println!("{:<28}{:>14.2}", "restart to ready (s)", restart);
        }
        None => println!("{:<28}{:>14}", "verify tx/s", "skipped"),
    }
    println!(
        "{}",
        serde_json::json!({
            "bench": "ledger", "workload": a.workload.name(), "txs": a.txs, "clients": a.clients,
            "per_request": a.per_request, "patients": (a.workload == Workload::Records).then_some(a.patients),
            "committed": r.committed, "rejected": r.rejected,
            "committed_tx_per_s": r.tps, "p50_ms": r.p50, "p99_ms": r.p99,
            "seq_p50_ms": r.seq_p50, "seq_p99_ms": r.seq_p99,
            "verify_tx_per_s": verify_tps, "restart_s": restart_s,
        })
    );
    if r.rejected > 0 {
        bail!("{} transactions were rejected", r.rejected);
    }
    Ok(())
}

struct Figures {
    tps: f64,
    p50: f64,
    p99: f64,
    seq_p50: f64,
    seq_p99: f64,
    committed: usize,
    rejected: usize,
}

async fn run(a: &LedgerBenchArgs, url: &str, dir: &std::path::Path) -> Result<Figures> {
    let ca = dir.join(datadir::TLS_CERT);
    let client = Client::new(url, url.starts_with("https").then_some(ca.as_path()))?;
    client.wait_ready(Duration::from_secs(30)).await?;
    let status = client.status().await?;
    let chain = ChainId::new(status.chain_id)?;
    let admin = KeystoreFile::read(&dir.join(datadir::ADMIN_KEYSTORE))?.open(
        std::fs::read_to_string(dir.join(datadir::ADMIN_PASSWORD))?
            .trim()
            .as_bytes(),
    )?;
    let admin = std::sync::Arc::new(admin);
    // Queries answer identified callers only: the bench asks as the admin.
    let client = client.signed_by(admin.clone());
    let mut admin_nonce = client.account_nonce(&admin.account()).await?;

    // One account per client, registered by the admin.
    let users: Vec<AccountKeys> = (0..a.clients)
        .map(|_| AccountKeys::generate())
        .collect::<Result<_, _>>()?;
    let regs: Vec<Vec<u8>> = users
        .iter()
        .map(|u| {
            admin_nonce += 1;
            TxBody {
                version: TX_VERSION,
                chain_id: chain.clone(),
                signer: admin.account(),
                nonce: admin_nonce,
                payload: Payload::RegisterAccount {
                    account: u.account(),
                    encryption_key: u.encryption_public(),
                },
            }
            .sign(&admin.signing)
            .to_bytes()
        })
        .collect();
    for r in client.submit_many(&regs).await? {
        if r.status != "committed" {
            bail!("could not register bench accounts: {:?}", r.error);
        }
    }

    // The records workload: an organisation whose doctors are the clients, patients
    // who each grant one doctor treatment access (set up before the measurement).
    let patients_of: Vec<Vec<AccountId>> = match a.workload {
        Workload::Anchor => vec![Vec::new(); a.clients],
        Workload::Records => {
            records_setup(
                &client,
                &chain,
                &admin,
                &mut admin_nonce,
                &users,
                a.patients,
            )
            .await?
        }
    };

    // Pre-sign everything so the measurement covers submission and commit only.
    let per_client = a.txs / a.clients;
    let bar = indicatif::ProgressBar::new((per_client * a.clients) as u64);
    let category = Category::new("Observation")?;
    let payload = |id: &AccountId, i: usize, n: u64| {
        let mut d = [0u8; 32];
        d[..8].copy_from_slice(&n.to_le_bytes());
        d[8..16].copy_from_slice(&id.0[..8]);
        match a.workload {
            Workload::Anchor => Payload::Anchor {
                digest: Digest32(d),
            },
            Workload::Records => {
                let patients = &patients_of[i];
                let mut h = d;
                h[31] = 0xc4;
                Payload::AddRecord {
                    patient: patients[(n as usize) % patients.len()],
                    category: category.clone(),
                    cid: Cid(Digest32(d)),
                    content_hash: Digest32(h),
                    size: 4096,
                }
            }
        }
    };
    let sign = |u: &AccountKeys, nonce: u64, payload: Payload| {
        TxBody {
            version: TX_VERSION,
            chain_id: chain.clone(),
            signer: u.account(),
            nonce,
            payload,
        }
        .sign(&u.signing)
        .to_bytes()
    };
    let signed: Vec<Vec<Vec<u8>>> = users
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let id: AccountId = u.account();
            (1..=per_client as u64)
                .map(|n| sign(u, n, payload(&id, i, n)))
                .collect()
        })
        .collect();
    // The sequential client's transactions: the first client's, after its others.
    let seq_txs: Vec<Vec<u8>> = (per_client as u64 + 1..=(per_client + a.seq) as u64)
        .map(|n| sign(&users[0], n, payload(&users[0].account(), 0, n)))
        .collect();

    let started = Instant::now();
    let mut tasks = Vec::new();
    for txs in signed {
        let client = client.clone();
        let per_request = a.per_request.max(1);
        let bar = bar.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(txs.len());
            let (mut ok, mut bad) = (0usize, 0usize);
            for chunk in txs.chunks(per_request) {
                let t0 = Instant::now();
                let res = client.submit_many(chunk).await?;
                let ms = t0.elapsed().as_secs_f64() * 1000.0;
                for r in res {
                    if r.status == "committed" {
                        ok += 1
                    } else {
                        bad += 1
                    }
                    lat.push(ms);
                }
                bar.inc(chunk.len() as u64);
            }
            anyhow::Ok((lat, ok, bad))
        }));
    }
    let mut lat = Vec::new();
    let (mut committed, mut rejected) = (0, 0);
    for t in tasks {
        let (l, ok, bad) = t.await??;
        lat.extend(l);
        committed += ok;
        rejected += bad;
    }
    let secs = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    lat.sort_by(|a, b| a.total_cmp(b));

    // One client alone, one transaction at a time: the commit latency a single
    // caller sees when nothing else is queued.
    let mut seq = Vec::with_capacity(seq_txs.len());
    for tx in &seq_txs {
        let t0 = Instant::now();
        let r = client.submit(tx).await?;
        seq.push(t0.elapsed().as_secs_f64() * 1000.0);
        if r.status == "committed" {
            committed += 1;
        } else {
            rejected += 1;
        }
    }
    seq.sort_by(|a, b| a.total_cmp(b));
    Ok(Figures {
        tps: (committed - seq.len().min(committed)) as f64 / secs,
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
        seq_p50: percentile(&seq, 0.50),
        seq_p99: percentile(&seq, 0.99),
        committed,
        rejected,
    })
}

/// Submits set-up transactions in large requests; every one must commit.
async fn all_committed(client: &Client, txs: &[Vec<u8>], what: &str) -> Result<()> {
    for chunk in txs.chunks(5_000) {
        for r in client.submit_many(chunk).await? {
            if r.status != "committed" {
                bail!("bench set-up ({what}): {:?}", r.error);
            }
        }
    }
    Ok(())
}

/// Org `bench` (the admin its admin), the clients as its doctors, and `patients`
/// patients each granting one doctor treatment access for a day; the patients of
/// each doctor.
async fn records_setup(
    client: &Client,
    chain: &ChainId,
    admin: &AccountKeys,
    admin_nonce: &mut u64,
    doctors: &[AccountKeys],
    patients: usize,
) -> Result<Vec<Vec<AccountId>>> {
    if patients < doctors.len() {
        bail!("--patients must be at least --clients (each doctor needs a patient)");
    }
    let org = OrgId::new("bench")?;
    let mut by_admin = |payload: Payload| {
        *admin_nonce += 1;
        TxBody {
            version: TX_VERSION,
            chain_id: chain.clone(),
            signer: admin.account(),
            nonce: *admin_nonce,
            payload,
        }
        .sign(&admin.signing)
        .to_bytes()
    };
    let people: Vec<AccountKeys> = (0..patients)
        .map(|_| AccountKeys::generate())
        .collect::<Result<_, _>>()?;
    let mut setup = vec![by_admin(Payload::AddOrg {
        org: org.clone(),
        admin: admin.account(),
    })];
    for d in doctors {
        setup.push(by_admin(Payload::AssignRole {
            org: org.clone(),
            account: d.account(),
            role: Role::Doctor,
        }));
    }
    for p in &people {
        setup.push(by_admin(Payload::RegisterAccount {
            account: p.account(),
            encryption_key: p.encryption_public(),
        }));
        setup.push(by_admin(Payload::AssignRole {
            org: org.clone(),
            account: p.account(),
            role: Role::Patient,
        }));
    }
    all_committed(client, &setup, "organisation, doctors, patients").await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let mut of = vec![Vec::new(); doctors.len()];
    let grants: Vec<Vec<u8>> = people
        .iter()
        .enumerate()
        .map(|(j, p)| {
            let d = &doctors[j % doctors.len()];
            of[j % doctors.len()].push(p.account());
            TxBody {
                version: TX_VERSION,
                chain_id: chain.clone(),
                signer: p.account(),
                nonce: 1,
                payload: Payload::GrantConsent {
                    grantee: Grantee::Account(d.account()),
                    scope: Scope::All,
                    purpose: Purpose::Treatment,
                    start_ms: now.saturating_sub(60_000),
                    expiry_ms: now + 86_400_000,
                },
            }
            .sign(&p.signing)
            .to_bytes()
        })
        .collect();
    all_committed(client, &grants, "grants").await?;
    Ok(of)
}
