//! `medledger bench ledger`: starts a node (or targets one), submits pre-signed
//! transactions from concurrent clients over the HTTPS API, and reports committed
//! tx/s, commit latency percentiles and `verify` throughput.

use anyhow::{Context, Result, bail};
use clap::Args;
use medledger_core::tx::TX_VERSION;
use medledger_core::{AccountId, ChainId, Digest32, Payload, TxBody};
use medledger_ledger::{VerifyMode, verify_ledger};
use medledger_node::client::Client;
use medledger_node::datadir;
use medledger_node::keystore::{AccountKeys, KeystoreFile};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct LedgerBenchArgs {
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
    _dir: tempfile::TempDir,
    pub(crate) dir: PathBuf,
}

pub(crate) fn spawn_node() -> Result<Spawned> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let exe = std::env::current_exe()?;
    let st = Command::new(&exe)
        .args(["init", "--data-dir"])
        .arg(&data)
        .stdout(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("init failed");
    }
    let mut child = Command::new(&exe)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
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
    Ok(Spawned {
        child,
        url,
        _dir: dir,
        dir: data,
    })
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
        Some(spawn_node()?)
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
            // SIGTERM-equivalent: stop the node so verify can open the store.
            let _ = Command::new("kill").arg(s.child.id().to_string()).status();
            let _ = s.child.wait();
            let genesis = datadir::read_genesis(&s.dir)?;
            let r = verify_ledger(
                &s.dir.join(datadir::LEDGER_DB),
                &genesis,
                VerifyMode::Full,
                &|_, _| {},
            )?;
            Some(r)
        }
        (_, Some(s)) => {
            let _ = s.child.kill();
            None
        }
        _ => None,
    };
    let r = result?;
    let verify_tps = verify.as_ref().map(|v| v.txs_per_second);
    println!(
        "medledger bench ledger ({} txs, {} clients, {} per request)",
        a.txs, a.clients, a.per_request
    );
    println!("{:<28}{:>14}", "metric", "value");
    println!("{:<28}{:>14.0}", "committed tx/s", r.tps);
    println!("{:<28}{:>14.1}", "commit latency p50 (ms)", r.p50);
    println!("{:<28}{:>14.1}", "commit latency p99 (ms)", r.p99);
    println!("{:<28}{:>14}", "committed", r.committed);
    println!("{:<28}{:>14}", "rejected", r.rejected);
    match &verify {
        Some(v) => println!(
            "{:<28}{:>14.0}   ({} txs in {:.2}s)",
            "verify tx/s", v.txs_per_second, v.txs, v.seconds
        ),
        None => println!("{:<28}{:>14}", "verify tx/s", "skipped"),
    }
    println!(
        "{}",
        serde_json::json!({
            "bench": "ledger", "txs": a.txs, "clients": a.clients, "per_request": a.per_request,
            "committed": r.committed, "rejected": r.rejected,
            "committed_tx_per_s": r.tps, "p50_ms": r.p50, "p99_ms": r.p99,
            "verify_tx_per_s": verify_tps,
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

    // Pre-sign everything so the measurement covers submission and commit only.
    let per_client = a.txs / a.clients;
    let bar = indicatif::ProgressBar::new((per_client * a.clients) as u64);
    let signed: Vec<Vec<Vec<u8>>> = users
        .iter()
        .map(|u| {
            let id: AccountId = u.account();
            (1..=per_client as u64)
                .map(|n| {
                    let mut d = [0u8; 32];
                    d[..8].copy_from_slice(&n.to_le_bytes());
                    d[8..16].copy_from_slice(&id.0[..8]);
                    TxBody {
                        version: TX_VERSION,
                        chain_id: chain.clone(),
                        signer: id,
                        nonce: n,
                        payload: Payload::Anchor {
                            digest: Digest32(d),
                        },
                    }
                    .sign(&u.signing)
                    .to_bytes()
                })
                .collect()
        })
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
    Ok(Figures {
        tps: committed as f64 / secs,
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
        committed,
        rejected,
    })
}
