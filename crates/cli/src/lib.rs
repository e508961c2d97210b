//! The `medledger` commands. Each subcommand is a function over the node, ledger and
//! client libraries; `main` stays thin.

mod account;
mod backup;
mod bench;
mod bench_backup;
mod bench_fhir;
mod blob;
mod demo;
mod fhir;
mod proof_check;
mod synth;
mod web;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use medledger_core::tx::TX_VERSION;
use medledger_core::{AccountId, ChainId, Digest32, Payload, TxBody, TxHash};
use medledger_ledger::{VerifyMode, verify_ledger};
use medledger_merkle::SignedCheckpoint;
use medledger_merkle::verify::{verify_consistency, verify_inclusion};
use medledger_node::client::Client;
use medledger_node::datadir::{self, InitOptions};
use medledger_node::keystore::KeystoreFile;
use medledger_node::{ServeConfig, StartupCheck};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(
    name = "medledger",
    version,
    about = "Permissioned ledger for health records"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new chain in a data directory: genesis, admin keystore, node key, TLS cert.
    Init(InitArgs),
    /// Run a node.
    Serve(ServeArgs),
    /// Recompute every hash, signature, Merkle root and state digest (node stopped).
    Verify(DataDirArg),
    /// Rebuild the FHIR search index from the ledger and the record store (node
    /// stopped); custody keys and directory subjects are kept.
    Reindex(ReindexArgs),
    /// Build, sign locally, submit and look up transactions.
    #[command(subcommand)]
    Tx(TxCommand),
    /// Fetch a proof from a node and verify it offline against a signed tree head.
    #[command(subcommand)]
    Proof(ProofCommand),
    /// Benchmarks that print their figures.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Self-custody keystores: new, show, import, export.
    #[command(subcommand)]
    Account(account::AccountCommand),
    /// Backups: create (node running or stopped), verify, restore, keygen, recipients.
    #[command(subcommand)]
    Backup(backup::BackupCommand),
    /// Encrypted record store: put, get, verify and erase blobs.
    #[command(subcommand)]
    Blob(blob::BlobCommand),
    /// Import FHIR transaction Bundles (files or directories) through a node's FHIR API.
    Import(fhir::ImportArgs),
    /// Start a node with synthetic organisations, people of every role and records,
    /// and print how to sign in as each (the data is deleted when it stops).
    Demo(demo::DemoArgs),
    /// Export a patient's whole record (`Patient/{id}/$everything`) as a FHIR Bundle.
    Export(fhir::ExportArgs),
    /// Query the node's JSON API: `medledger query orgs/general`,
    /// `medledger query "audit?patient=did:key:..."`, `medledger query decision?...`.
    Query {
        /// Path under /v1/.
        path: String,
        #[command(flatten)]
        node: NodeArgs,
        #[command(flatten)]
        who: SignerArgs,
    },
}

#[derive(Args, Debug, Clone)]
pub struct DataDirArg {
    /// Data directory.
    #[arg(long, env = "MEDLEDGER_DATA_DIR", default_value = "medledger-data")]
    pub data_dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    #[command(flatten)]
    pub dir: DataDirArg,
    /// Chain id (a-z, 0-9, '-').
    #[arg(long, default_value = "medledger-dev")]
    pub chain_id: String,
    /// File holding the admin keystore password; if absent one is generated and
    /// written to <data-dir>/admin.password (mode 0600).
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// Fee charged to a registrant when an org admin approves them.
    #[arg(long, default_value_t = 0)]
    pub registration_fee: u64,
    /// How long break-glass access lasts, in hours.
    #[arg(long, default_value_t = 24)]
    pub break_glass_hours: u64,
    /// A legal retention rule, CATEGORY=DAYS (e.g. Observation=3650); repeatable.
    #[arg(long = "retention", value_parser = parse_retention)]
    pub retention: Vec<medledger_core::RetentionRule>,
    /// An age recipient (`age1…`) the node's backups are encrypted for; repeatable
    /// (`medledger backup keygen` makes one).
    #[arg(long = "backup-recipient")]
    pub backup_recipients: Vec<String>,
}

fn parse_retention(s: &str) -> std::result::Result<medledger_core::RetentionRule, String> {
    let (cat, days) = s
        .split_once('=')
        .ok_or("expected CATEGORY=DAYS, e.g. Observation=3650")?;
    let category = medledger_core::Category::new(cat).map_err(|e| e.to_string())?;
    let days: u64 = days.parse().map_err(|_| "DAYS must be a whole number")?;
    Ok(medledger_core::RetentionRule {
        category,
        period_ms: days.saturating_mul(86_400_000),
    })
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum CheckArg {
    /// What came after this node's verified mark (everything, the first time).
    Since,
    /// Everything from genesis, every signature.
    Full,
    /// Everything from genesis but transaction signatures.
    Quick,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub dir: DataDirArg,
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub listen: SocketAddr,
    /// Serve plain HTTP instead of HTTPS.
    #[arg(long)]
    pub insecure_http: bool,
    /// PEM certificate and key to use instead of the data dir's self-signed pair.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Initialise the data directory first if it is empty (development quick start).
    #[arg(long)]
    pub init: bool,
    /// How much of the stored ledger to check before serving.
    #[arg(long, value_enum, default_value = "since")]
    pub startup_check: CheckArg,
    /// Mount the node-to-node Raft endpoints (multi-node clusters).
    #[arg(long)]
    pub peer_rpc: bool,
    #[command(flatten)]
    pub store: blob::StoreArg,
    /// Send mail over SMTP (lettre URL, e.g. smtps://user:pass@mail.example:465);
    /// default: write it to <data-dir>/outbox. Prefer the environment for credentials.
    #[arg(long, env = "MEDLEDGER_SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,
    /// Sender address for SMTP mail.
    #[arg(
        long,
        env = "MEDLEDGER_SMTP_FROM",
        default_value = "medledger <no-reply@localhost>"
    )]
    pub smtp_from: String,
    /// How long patient invitation links stay valid, in ms.
    #[arg(long, default_value_t = 72 * 3600 * 1000)]
    pub invite_ttl_ms: u64,
    /// How often the node settles due work and shreds erased records, in ms.
    #[arg(long, default_value_t = 5000)]
    pub housekeeping_ms: u64,
    /// Requests per second one client address may make to the sign-in routes that run
    /// a password KDF (register, login, enroll, recover), after a burst of
    /// --client-burst.
    #[arg(long, default_value_t = medledger_node::http::limits::DEFAULT_PER_SECOND)]
    pub client_rate: u32,
    #[arg(long, default_value_t = medledger_node::http::limits::DEFAULT_BURST)]
    pub client_burst: u32,
    /// The erasure journal: a file on another disk than the data directory; every
    /// erasure is appended to it before it is acknowledged, and what it names is
    /// shredded before the node serves (after a restore from an older backup).
    #[arg(long, env = "MEDLEDGER_ERASURE_JOURNAL")]
    pub erasure_journal: Option<PathBuf>,
    /// Record data keys the node keeps opened in memory (about 140 bytes each), so a
    /// record read again skips its key-envelope decryption; 0 turns it off.
    #[arg(long, default_value_t = medledger_node::DEFAULT_KEY_CACHE)]
    pub key_cache: usize,
    /// Take backups on a schedule into this directory (encrypted for the node's
    /// backup recipients; not inside the data directory).
    /// (or an S3-compatible bucket: s3://BUCKET/PREFIX?endpoint=URL&region=R)
    #[arg(long, requires = "backup_every")]
    pub backup_to: Option<String>,
    /// How often to back up: `30m`, `6h`, `1d`, …
    #[arg(long, requires = "backup_to", value_parser = humantime::parse_duration)]
    pub backup_every: Option<std::time::Duration>,
    /// How many backups to keep in `--backup-to` (older ones, and blob files no kept
    /// backup needs, are deleted).
    #[arg(long, default_value_t = 14, value_parser = clap::value_parser!(u32).range(1..))]
    pub backup_keep: u32,
}

#[derive(Args, Debug, Clone)]
pub struct NodeArgs {
    /// Node URL.
    #[arg(long, env = "MEDLEDGER_NODE", default_value = "https://127.0.0.1:7700")]
    pub node: String,
    /// CA certificate (PEM) to trust; default: <data-dir>/tls/cert.pem if present.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    #[command(flatten)]
    pub dir: DataDirArg,
}

impl NodeArgs {
    /// The certificate to trust: `--ca`, else the data directory's (HTTPS only).
    pub fn ca_path(&self) -> Option<PathBuf> {
        let default_ca = self.dir.data_dir.join(datadir::TLS_CERT);
        let ca = self
            .ca
            .clone()
            .or_else(|| default_ca.exists().then_some(default_ca));
        if self.node.starts_with("https://") {
            ca
        } else {
            None
        }
    }

    fn client(&self) -> Result<Client> {
        Ok(Client::new(&self.node, self.ca_path().as_deref())?)
    }
}

#[derive(Subcommand, Debug)]
pub enum TxCommand {
    /// Sign a transaction with a keystore and submit it; waits until committed.
    Submit(SubmitArgs),
    /// Show a transaction's status (visible to its signer and to overseers).
    Status {
        hash: String,
        #[command(flatten)]
        node: NodeArgs,
        #[command(flatten)]
        who: SignerArgs,
    },
}

/// The account that signs transactions and requests: the node answers queries only to
/// an identified caller, with what that caller may see.
#[derive(Args, Debug)]
pub struct SignerArgs {
    /// Keystore file of the signing account (default: the data dir's admin keystore).
    #[arg(long)]
    pub keystore: Option<PathBuf>,
    /// File with the keystore password (default: <data-dir>/admin.password).
    #[arg(long)]
    pub password_file: Option<PathBuf>,
}

impl SignerArgs {
    fn open(&self, dir: &std::path::Path) -> Result<medledger_node::keystore::AccountKeys> {
        let ks_path = self
            .keystore
            .clone()
            .unwrap_or_else(|| dir.join(datadir::ADMIN_KEYSTORE));
        let pw_path = self
            .password_file
            .clone()
            .unwrap_or_else(|| dir.join(datadir::ADMIN_PASSWORD));
        let ks = KeystoreFile::read(&ks_path)?;
        Ok(ks.open(read_secret(&pw_path)?.as_bytes())?)
    }
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    #[command(flatten)]
    pub who: SignerArgs,
    #[command(subcommand)]
    pub payload: PayloadArg,
}

#[derive(Subcommand, Debug)]
pub enum PayloadArg {
    /// Anchor a 32-byte digest (hex).
    Anchor { digest: String },
    /// Register an account (consortium admin only).
    RegisterAccount {
        /// did:key of the new account.
        account: String,
        /// Its X25519 public key, hex.
        encryption_key: String,
    },
    /// Any transaction kind, as JSON (the API's payload form), e.g.
    /// '{"kind":"add_org","org":"general","admin":"did:key:z6Mk..."}'.
    Json {
        /// The payload JSON, or @FILE to read it from a file.
        payload: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ProofCommand {
    /// Prove a transaction is in the ledger.
    Inclusion {
        hash: String,
        /// Tree size of the head to prove against (default: latest).
        #[arg(long)]
        size: Option<u64>,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Check a downloaded proof bundle (the auditor page's "Proof") offline: the tree
    /// head's signature against this data directory's genesis, and the inclusion of
    /// the entry's transaction under it.
    Check {
        /// The proof bundle (JSON).
        file: PathBuf,
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Prove the head at OLD is a prefix of the head at NEW.
    Consistency {
        old: u64,
        new: Option<u64>,
        #[command(flatten)]
        node: NodeArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Commit throughput and latency over the HTTP API, and verify throughput.
    Ledger(bench::LedgerBenchArgs),
    /// Record store throughput (large and small records) and peak memory.
    Store(blob::StoreBenchArgs),
    /// FHIR API: creates/s, audited reads/s and search latency on synthetic patients.
    Fhir(bench_fhir::FhirBenchArgs),
    /// Backups of the `bench fhir` data set: a full one, then an incremental one after
    /// 1 % more records (time, size, MB/s, peak memory).
    Backup(bench_backup::BackupBenchArgs),
}

impl Cli {
    /// The log filter when `MEDLEDGER_LOG` is unset: the demo prints its sign-in
    /// table on a quiet terminal; everything else logs the node's progress.
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Demo(_) => "warn",
            _ => "warn,medledger=info",
        }
    }
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init(a) => init(a),
        Command::Serve(a) => serve(a),
        Command::Verify(d) => verify(&d.data_dir),
        Command::Reindex(a) => reindex(a),
        Command::Tx(TxCommand::Submit(a)) => runtime()?.block_on(submit(a)),
        Command::Tx(TxCommand::Status { hash, node, who }) => {
            runtime()?.block_on(status(&hash, &node, &who))
        }
        Command::Query { path, node, who } => runtime()?.block_on(query(&path, &node, &who)),
        Command::Proof(ProofCommand::Inclusion { hash, size, node }) => {
            runtime()?.block_on(proof_inclusion(&hash, size, &node))
        }
        Command::Proof(ProofCommand::Check { file, dir }) => {
            proof_check::check(&file, &dir.data_dir)
        }
        Command::Proof(ProofCommand::Consistency { old, new, node }) => {
            runtime()?.block_on(proof_consistency(old, new, &node))
        }
        Command::Bench(BenchCommand::Ledger(a)) => bench::ledger(a),
        Command::Bench(BenchCommand::Store(a)) => runtime()?.block_on(blob::bench(a)),
        Command::Bench(BenchCommand::Fhir(a)) => bench_fhir::fhir(a),
        Command::Bench(BenchCommand::Backup(a)) => bench_backup::backup(a),
        Command::Blob(c) => runtime()?.block_on(blob::run(c)),
        Command::Backup(c) => backup::run(c),
        Command::Account(c) => account::run(c),
        Command::Import(a) => runtime()?.block_on(fhir::import(a)),
        Command::Export(a) => runtime()?.block_on(fhir::export(a)),
        Command::Demo(a) => demo::demo(a),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

pub(crate) fn read_secret(path: &Path) -> Result<String> {
    let s = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(s.trim_end_matches(['\n', '\r']).to_owned())
}

fn init(a: InitArgs) -> Result<()> {
    let password = a.password_file.as_deref().map(read_secret).transpose()?;
    if !a.backup_recipients.is_empty() {
        medledger_node::backup::parse_recipients(&a.backup_recipients.join("\n"))
            .map_err(|e| anyhow::anyhow!("--backup-recipient: {e}"))?;
    }
    let report = datadir::init(
        &a.dir.data_dir,
        InitOptions {
            chain_id: ChainId::new(a.chain_id)?,
            admin_password: password,
            node_id: 1,
            params: datadir::ParamOptions {
                registration_fee: a.registration_fee,
                break_glass_ms: a.break_glass_hours.saturating_mul(3_600_000),
                retention: a.retention,
            },
        },
    )?;
    if !a.backup_recipients.is_empty() {
        medledger_node::backup::write_recipients(&report.data_dir, &a.backup_recipients)?;
    }
    println!("initialised {}", report.data_dir.display());
    println!("  chain id     {}", report.chain_id);
    println!("  admin        {}", report.admin);
    println!("  node key     {}", report.node_key);
    println!("  genesis hash {}", report.genesis_hash);
    if let Some(p) = report.password_file {
        println!(
            "  admin keystore password written to {} (mode 0600)",
            p.display()
        );
    }
    Ok(())
}

fn serve(a: ServeArgs) -> Result<()> {
    if a.init && !datadir::is_initialised(&a.dir.data_dir) {
        init(InitArgs {
            dir: a.dir.clone(),
            chain_id: "medledger-dev".into(),
            password_file: None,
            registration_fee: 0,
            break_glass_hours: 24,
            retention: Vec::new(),
            backup_recipients: Vec::new(),
        })?;
    }
    let mut config = ServeConfig::new(a.dir.data_dir, a.listen);
    config.insecure_http = a.insecure_http;
    config.tls_cert = a.tls_cert;
    config.tls_key = a.tls_key;
    config.peer_rpc = a.peer_rpc;
    config.housekeeping = std::time::Duration::from_millis(a.housekeeping_ms.max(10));
    config.invite_ttl = std::time::Duration::from_millis(a.invite_ttl_ms);
    config.per_client = (a.client_rate, a.client_burst);
    config.erasure_journal = a.erasure_journal;
    config.key_cache = a.key_cache;
    if let (Some(dest), Some(every)) = (a.backup_to, a.backup_every) {
        config.backup = Some(medledger_node::backup::Schedule {
            dest: medledger_node::backup::Dest::parse(&dest)?,
            every,
            keep: a.backup_keep as usize,
        });
    }
    if let Some(url) = a.smtp_url {
        config.mail = Some(medledger_node::auth::mail::MailConfig::Smtp {
            url,
            from: a.smtp_from,
        });
    }
    if a.store.url.is_some() {
        config.store = Some(a.store.config(&config.data_dir)?);
    }
    config.startup_check = match a.startup_check {
        CheckArg::Since => StartupCheck::SinceVerified,
        CheckArg::Full => StartupCheck::Full,
        CheckArg::Quick => StartupCheck::Quick,
    };
    runtime()?.block_on(medledger_node::serve(config, |url| {
        println!("medledger listening on {url}");
    }))?;
    Ok(())
}

#[derive(Args, Debug)]
pub struct ReindexArgs {
    #[command(flatten)]
    pub dir: DataDirArg,
    #[command(flatten)]
    pub store: blob::StoreArg,
}

fn reindex(a: ReindexArgs) -> Result<()> {
    let dir = &a.dir.data_dir;
    datadir::read_genesis(dir)?;
    let store = a.store.config(dir)?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} blocks {per_sec} {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let result = runtime()?.block_on(medledger_node::fhir::reindex(dir, &store, &progress));
    bar.finish_and_clear();
    let r = result.context("reindex FAILED")?;
    println!(
        "FHIR index rebuilt: {} blocks, {} records, {} indexed, {} not indexable on this node ({:.2}s)",
        r.to, r.records, r.indexed, r.passed_over, r.seconds
    );
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

fn verify(dir: &Path) -> Result<()> {
    let genesis = datadir::read_genesis(dir)?;
    let ledger = dir.join(datadir::LEDGER_DB);
    if !ledger.exists() {
        // `init` writes genesis only; the ledger file appears at the first `serve`.
        println!(
            "ledger OK: genesis {} only, no blocks yet (the node has not served)",
            genesis.hash()
        );
        return Ok(());
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} txs {per_sec} {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let result = verify_ledger(&ledger, &genesis, VerifyMode::Full, &progress);
    bar.finish_and_clear();
    let r = result.context("verification FAILED")?;
    println!(
        "ledger OK: {} blocks, {} transactions, root {} ({:.2}s, {:.0} tx/s)",
        r.blocks, r.txs, r.log_root, r.seconds, r.txs_per_second
    );
    Ok(())
}

async fn submit(a: SubmitArgs) -> Result<()> {
    let keys = std::sync::Arc::new(a.who.open(&a.node.dir.data_dir)?);
    let payload = match a.payload {
        PayloadArg::Anchor { digest } => Payload::Anchor {
            digest: Digest32::from_hex(&digest).context("digest must be 64 hex digits")?,
        },
        PayloadArg::RegisterAccount {
            account,
            encryption_key,
        } => Payload::RegisterAccount {
            account: account.parse::<AccountId>()?,
            encryption_key: Digest32::from_hex(&encryption_key)
                .context("encryption key must be 64 hex digits")?,
        },
        PayloadArg::Json { payload } => {
            let text = match payload.strip_prefix('@') {
                Some(path) => {
                    std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?
                }
                None => payload,
            };
            serde_json::from_str::<Payload>(&text).context("invalid transaction payload JSON")?
        }
    };
    let client = a.node.client()?.signed_by(keys.clone());
    let status = client.status().await?;
    let nonce = client.account_nonce(&keys.account()).await? + 1;
    let tx = TxBody {
        version: TX_VERSION,
        chain_id: ChainId::new(status.chain_id)?,
        signer: keys.account(),
        nonce,
        payload,
    }
    .sign(&keys.signing);
    let r = client.submit(&tx.to_bytes()).await?;
    println!("{}", serde_json::to_string_pretty(&r)?);
    if r.status != "committed" {
        bail!("transaction rejected");
    }
    Ok(())
}

async fn query(path: &str, node: &NodeArgs, who: &SignerArgs) -> Result<()> {
    let path = format!("/v1/{}", path.trim_start_matches('/'));
    let client = node.client()?.signed_by(who.open(&node.dir.data_dir)?);
    let (code, body) = client.get_raw(&path, &[]).await?;
    println!("{}", serde_json::to_string_pretty(&body)?);
    if !(200..300).contains(&code) {
        bail!("the node answered {code}");
    }
    Ok(())
}

async fn status(hash: &str, node: &NodeArgs, who: &SignerArgs) -> Result<()> {
    let hash: TxHash = hash.parse()?;
    let client = node.client()?.signed_by(who.open(&node.dir.data_dir)?);
    match client.tx_status(&hash).await? {
        Some(s) => println!("{}", serde_json::to_string_pretty(&s)?),
        None => bail!("transaction {hash} is not in the ledger"),
    }
    Ok(())
}

/// Fetches a head and checks its signature with the node key from the local genesis.
async fn verified_head(
    client: &Client,
    node: &NodeArgs,
    size: Option<u64>,
) -> Result<medledger_merkle::Checkpoint> {
    let genesis = datadir::read_genesis(&node.dir.data_dir)
        .context("the genesis file holds the node keys that heads are checked against")?;
    let note = client.tree_head(size).await?;
    let signed = SignedCheckpoint::parse(&note)?;
    for n in &genesis.nodes {
        if let Ok(cp) = signed.verify(&n.key) {
            return Ok(cp.clone());
        }
    }
    bail!("tree head is not signed by any node in genesis")
}

async fn proof_inclusion(hash: &str, size: Option<u64>, node: &NodeArgs) -> Result<()> {
    let hash: TxHash = hash.parse()?;
    let client = node.client()?;
    let head = verified_head(&client, node, size).await?;
    let p = client.inclusion(&hash, head.size).await?;
    verify_inclusion(&head.root, head.size, &hash.0.0, p.leaf_index, &p.proof)
        .context("inclusion proof does NOT verify")?;
    println!(
        "inclusion proof OK: {hash} is leaf {} of the tree of size {} with root {}",
        p.leaf_index, head.size, head.root
    );
    Ok(())
}

async fn proof_consistency(old: u64, new: Option<u64>, node: &NodeArgs) -> Result<()> {
    let client = node.client()?;
    let new_head = verified_head(&client, node, new).await?;
    let old_head = verified_head(&client, node, Some(old)).await?;
    let p = client.consistency(old_head.size, new_head.size).await?;
    verify_consistency(
        &old_head.root,
        old_head.size,
        &new_head.root,
        new_head.size,
        &p.proof,
    )
    .context("consistency proof does NOT verify")?;
    println!(
        "consistency proof OK: tree {} is a prefix of tree {}",
        old_head.size, new_head.size
    );
    Ok(())
}
