//! `medledger backup`: create (through a running node's admin socket, or offline),
//! verify, restore, keygen, recipients.

use crate::DataDirArg;
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use medledger_node::backup::{self, Progress};
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum BackupCommand {
    /// Back up a node (running or stopped) into a directory, encrypted for the node's
    /// recipients; after the first, only new blobs are copied.
    Create(CreateArgs),
    /// Decrypt a backup into a temporary place, verify everything, print what it covers.
    Verify(SourceArgs),
    /// Restore a backup into a new data directory.
    Restore(RestoreArgs),
    /// Make an age identity for backups; prints its public recipient.
    Keygen {
        /// Where to write the secret identity (mode 0600); keep it off the node.
        #[arg(long)]
        out: PathBuf,
    },
    /// Set the recipients the node encrypts its backups for.
    Recipients {
        #[command(flatten)]
        dir: DataDirArg,
        /// An age recipient (`age1…`); repeatable. Replaces the current list.
        #[arg(long = "set", required = true)]
        set: Vec<String>,
    },
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    pub dir: DataDirArg,
    /// Destination: a directory (not inside the data directory), or an S3-compatible
    /// bucket `s3://BUCKET/PREFIX?endpoint=URL&region=R` (credentials from
    /// MEDLEDGER_S3_ACCESS_KEY_ID and MEDLEDGER_S3_SECRET_ACCESS_KEY).
    #[arg(long)]
    pub out: String,
}

#[derive(Args, Debug)]
pub struct SourceArgs {
    /// A backup: `DEST/backup-…`, DEST for its newest backup, or a bucket
    /// (`s3://BUCKET/PREFIX?endpoint=URL`) for its newest.
    pub src: String,
    /// File of age identities (`AGE-SECRET-KEY-1…`) that open it.
    #[arg(long)]
    pub identity: PathBuf,
    /// The genesis hash the backup must be of (from `medledger init`'s output or the
    /// portal's status panel). Without it, a backup is only checked against itself.
    #[arg(long)]
    pub genesis: Option<String>,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// The new data directory (must not exist, or be empty).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The node's erasure journal: records erased after the backup are shredded
    /// before the restored node serves.
    #[arg(long)]
    pub erasure_journal: Option<PathBuf>,
}

/// A progress bar per stage.
struct Bar(indicatif::ProgressBar);

impl Bar {
    fn new() -> Self {
        Bar(indicatif::ProgressBar::hidden())
    }
}

impl Progress for Bar {
    fn stage(&self, name: &str, total: Option<u64>) {
        let style = match total {
            Some(_) => "{msg:>24} {bar:40} {pos}/{len} {per_sec} {eta}",
            None => "{msg:>24} {spinner} {elapsed}",
        };
        self.0
            .set_draw_target(indicatif::ProgressDrawTarget::stderr());
        self.0.set_style(
            indicatif::ProgressStyle::with_template(style)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        self.0.set_message(name.to_owned());
        self.0.set_position(0);
        self.0.set_length(total.unwrap_or(0));
        self.0
            .enable_steady_tick(std::time::Duration::from_millis(200));
    }
    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
}

pub fn run(c: BackupCommand) -> Result<()> {
    match c {
        BackupCommand::Create(a) => crate::runtime()?.block_on(create(a)),
        BackupCommand::Verify(a) => crate::runtime()?.block_on(verify(a)),
        BackupCommand::Restore(a) => crate::runtime()?.block_on(restore(a)),
        BackupCommand::Keygen { out } => keygen(&out),
        BackupCommand::Recipients { dir, set } => {
            medledger_node::datadir::read_genesis(&dir.data_dir)?;
            backup::write_recipients(&dir.data_dir, &set)?;
            println!(
                "backups of {} are now encrypted for {} recipient(s)",
                dir.data_dir.display(),
                set.len()
            );
            Ok(())
        }
    }
}

async fn create(a: CreateArgs) -> Result<()> {
    let dir = &a.dir.data_dir;
    medledger_node::datadir::read_genesis(dir)?;
    let bar = Bar::new();
    let started = std::time::Instant::now();
    // A bucket: written to a private staging directory laid out like one, then uploaded.
    let dest = backup::Dest::parse(&a.out)?;
    let (out, _staging) = match &dest {
        backup::Dest::Dir(d) => (d.clone(), None),
        backup::Dest::Bucket(r) => {
            let staging = r.staging().await?;
            (staging.path().to_owned(), Some(staging))
        }
    };
    let (manifest, taken_by) = match backup::socket::request_backup(dir, &out, &bar).await? {
        Some(m) => (m, "node"),
        None => (
            backup::create_offline(dir, &out, &bar).await?,
            "this process",
        ),
    };
    if let backup::Dest::Bucket(r) = &dest {
        bar.stage("uploading", None);
        r.upload_backup(&out, &manifest).await?;
    }
    bar.0.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "backup {} written to {}: ledger height {}, {} blobs ({} new, {} bytes)",
        manifest.name,
        dest.shown(),
        manifest.height,
        manifest.blobs,
        manifest.blobs_new,
        manifest.bytes_new
    );
    let json = serde_json::json!({
        "backup": manifest.name,
        "height": manifest.height,
        "tree_size": manifest.tree_size,
        "blobs": manifest.blobs,
        "blobs_new": manifest.blobs_new,
        "bytes_new": manifest.bytes_new,
        "seconds": secs,
        "taken_by": taken_by,
        // This process's own peak: the backup's when taken here (node stopped).
        "peak_rss_mb": crate::blob::peak_rss_mb(),
    });
    println!("{json}");
    Ok(())
}

/// The backup `src` names, fetched first when it is in a bucket (the temporary
/// directory must live as long as the returned path is used).
async fn locate(src: &str) -> Result<(PathBuf, Option<tempfile::TempDir>)> {
    match backup::Dest::parse(src)? {
        backup::Dest::Bucket(r) => {
            let tmp = tempfile::Builder::new()
                .prefix("medledger-backup-fetch")
                .tempdir()?;
            let dir = r.fetch(None, tmp.path()).await?;
            Ok((dir, Some(tmp)))
        }
        backup::Dest::Dir(d) => Ok((resolve(&d)?, None)),
    }
}

/// `DEST/backup-…` as given, or the newest backup in DEST.
fn resolve(src: &Path) -> Result<PathBuf> {
    if src.join("manifest.json").exists() {
        return Ok(src.to_owned());
    }
    let all = backup::list(src)?;
    match all.last() {
        Some(n) => Ok(src.join(n)),
        None => bail!("{} holds no backup (no manifest.json)", src.display()),
    }
}

fn print_report(verb: &str, r: &backup::RestoreReport) -> Result<()> {
    println!(
        "{verb} {}: chain {} (genesis {}), ledger height {} ({} transactions verified), \
         tree size {}, {} blobs ({} bytes), {} sign-in accounts, {} blobs shredded by the \
         erasure journal",
        r.backup,
        r.chain_id,
        r.genesis_hash,
        r.height,
        r.txs,
        r.tree_size,
        r.blobs,
        r.blob_bytes,
        r.accounts,
        r.shredded
    );
    println!("{}", serde_json::to_string(r)?);
    Ok(())
}

async fn verify(a: SourceArgs) -> Result<()> {
    let (src, _fetched) = locate(&a.src).await?;
    let ids = backup::identities(&a.identity)?;
    let bar = Bar::new();
    if a.genesis.is_none() {
        eprintln!(
            "note: without --genesis the backup is checked only against itself; pass the \
             chain's genesis hash to check it is yours"
        );
    }
    let r = backup::verify(&src, &ids, a.genesis.as_deref(), &bar).await;
    bar.0.finish_and_clear();
    let r = r.context("backup verify FAILED")?;
    print_report("backup OK:", &r)
}

async fn restore(a: RestoreArgs) -> Result<()> {
    let (src, _fetched) = locate(&a.source.src).await?;
    let ids = backup::identities(&a.source.identity)?;
    let bar = Bar::new();
    if a.erasure_journal.is_none() {
        eprintln!(
            "note: without --erasure-journal, records erased after this backup was taken come \
             back; start the restored node with its --erasure-journal to shred them"
        );
    }
    let opts = backup::RestoreOptions {
        erasure_journal: a.erasure_journal.as_deref(),
        genesis: a.source.genesis.as_deref(),
    };
    let r = backup::restore(&src, &ids, &a.data_dir, &opts, &bar).await;
    bar.0.finish_and_clear();
    let r = r.context("backup restore FAILED")?;
    print_report(&format!("restored into {}:", a.data_dir.display()), &r)
}

fn keygen(out: &Path) -> Result<()> {
    if out.exists() {
        bail!("{} exists; not overwriting an identity", out.display());
    }
    let (secret, public) = backup::keygen();
    medledger_node::datadir::write_private(
        out,
        format!("# public key: {public}\n{secret}\n").as_bytes(),
    )
    .with_context(|| format!("writing {}", out.display()))?;
    println!("{public}");
    Ok(())
}
