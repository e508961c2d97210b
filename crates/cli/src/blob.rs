//! `medledger blob put|get|verify|erase` for operators, and `medledger bench store`.
//! They use the record store library directly on `<data-dir>/blobs`; the keystore's
//! account is always a reader of what it puts, and its X25519 key opens what it gets.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use medledger_core::{AccountId, Cid};
use medledger_node::datadir;
use medledger_node::keystore::KeystoreFile;
use medledger_store::{BlobStore, Reader, ReaderSecret, StoreConfig};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskCx, Poll};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Subcommand, Debug)]
pub enum BlobCommand {
    /// Encrypt a file into the store; prints its CID.
    Put(PutArgs),
    /// Decrypt a blob into a file (written whole or not at all).
    Get(GetArgs),
    /// Check that a blob's bytes hash to its CID.
    Verify(CidArgs),
    /// Delete a blob and every key envelope (crypto-shredding).
    Erase(CidArgs),
}

/// Where the record store is: `<data-dir>/blobs` unless given.
#[derive(Args, Debug, Clone, Default)]
pub struct StoreArg {
    /// Record store: `s3://BUCKET?endpoint=URL&region=R` (credentials from
    /// MEDLEDGER_S3_ACCESS_KEY_ID / MEDLEDGER_S3_SECRET_ACCESS_KEY or their *_FILE
    /// variants); default: the local directory <data-dir>/blobs.
    #[arg(long = "store", env = "MEDLEDGER_STORE")]
    pub url: Option<String>,
}

impl StoreArg {
    pub fn config(&self, data_dir: &Path) -> Result<StoreConfig> {
        Ok(match &self.url {
            None => StoreConfig::Local {
                path: data_dir.join(datadir::BLOBS_DIR),
            },
            Some(u) => StoreConfig::S3(medledger_store::S3Config::from_url(u)?),
        })
    }
}

#[derive(Args, Debug)]
pub struct KeyArgs {
    #[command(flatten)]
    pub dir: crate::DataDirArg,
    #[command(flatten)]
    pub store: StoreArg,
    /// Keystore of the acting account (default: the data dir's admin keystore).
    #[arg(long)]
    pub keystore: Option<PathBuf>,
    /// File with the keystore password (default: <data-dir>/admin.password).
    #[arg(long)]
    pub password_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PutArgs {
    pub file: PathBuf,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Another reader, as DID=X25519-PUBLIC-KEY-HEX (repeatable).
    #[arg(long = "reader", value_parser = parse_reader)]
    pub readers: Vec<Reader>,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    pub cid: String,
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub keys: KeyArgs,
}

#[derive(Args, Debug)]
pub struct CidArgs {
    pub cid: String,
    #[command(flatten)]
    pub dir: crate::DataDirArg,
    #[command(flatten)]
    pub store: StoreArg,
}

fn parse_reader(s: &str) -> std::result::Result<Reader, String> {
    let (did, key) = s.split_once('=').ok_or("expected DID=X25519-KEY-HEX")?;
    let account: AccountId = did.parse().map_err(|e| format!("{e}"))?;
    let mut public = [0u8; 32];
    hex::decode_to_slice(key, &mut public).map_err(|_| "key must be 64 hex digits")?;
    Ok(Reader { account, public })
}

/// Peak resident memory of this process so far, in MB (Linux `VmHWM`).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn store(dir: &Path, arg: &StoreArg) -> Result<BlobStore> {
    Ok(BlobStore::open(&arg.config(dir)?)?)
}

fn secret(k: &KeyArgs) -> Result<ReaderSecret> {
    let dir = &k.dir.data_dir;
    let ks = k
        .keystore
        .clone()
        .unwrap_or_else(|| dir.join(datadir::ADMIN_KEYSTORE));
    let pw = k
        .password_file
        .clone()
        .unwrap_or_else(|| dir.join(datadir::ADMIN_PASSWORD));
    let keys = KeystoreFile::read(&ks)?.open(crate::read_secret(&pw)?.as_bytes())?;
    Ok(ReaderSecret {
        account: keys.account(),
        secret: keys.encryption_secret,
    })
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg} {bar:40} {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("static template"),
    );
    pb.set_message(what.to_owned());
    pb
}

/// Counts bytes through a reader or writer into a progress bar.
struct Progress<T> {
    inner: T,
    pb: ProgressBar,
}

impl<T: AsyncRead + Unpin> AsyncRead for Progress<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskCx<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.pb.inc(n as u64);
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Progress<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskCx<'_>,
        b: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, b);
        if let Poll::Ready(Ok(n)) = &r {
            self.pb.inc(*n as u64);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

pub async fn run(cmd: BlobCommand) -> Result<()> {
    match cmd {
        BlobCommand::Put(a) => {
            let me = secret(&a.keys)?;
            let mut readers = vec![me.reader()];
            readers.extend(
                a.readers
                    .iter()
                    .copied()
                    .filter(|r| r.account != me.account),
            );
            let file = tokio::fs::File::open(&a.file)
                .await
                .with_context(|| format!("opening {}", a.file.display()))?;
            let len = file.metadata().await?.len();
            let pb = bar(len, "encrypting");
            let started = Instant::now();
            let r = store(&a.keys.dir.data_dir, &a.keys.store)?
                .put(
                    Progress {
                        inner: file,
                        pb: pb.clone(),
                    },
                    &readers,
                )
                .await?;
            pb.finish_and_clear();
            let json = serde_json::json!({
                "cid": r.cid, "content_hash": r.content_hash, "stored_bytes": r.stored_bytes,
                "plain_bytes": r.plain_bytes, "readers": readers.len(),
                "seconds": started.elapsed().as_secs_f64(), "peak_rss_mb": peak_rss_mb(),
            });
            println!("{json}");
        }
        BlobCommand::Get(a) => {
            let cid: Cid = a.cid.parse().context("not a CID")?;
            let me = secret(&a.keys)?;
            let partial = a.out.with_extension("partial");
            let file = tokio::fs::File::create(&partial)
                .await
                .with_context(|| format!("creating {}", partial.display()))?;
            let pb = bar(0, "decrypting");
            let started = Instant::now();
            let mut w = Progress {
                inner: file,
                pb: pb.clone(),
            };
            let res = store(&a.keys.dir.data_dir, &a.keys.store)?
                .get(&cid, &me, &mut w)
                .await;
            pb.finish_and_clear();
            match res {
                Ok(n) => {
                    std::fs::rename(&partial, &a.out)?;
                    let json = serde_json::json!({
                        "cid": cid, "plain_bytes": n, "seconds": started.elapsed().as_secs_f64(),
                        "peak_rss_mb": peak_rss_mb(),
                    });
                    println!("{json}");
                }
                Err(e) => {
                    // Never leave partial plaintext behind.
                    let _ = std::fs::remove_file(&partial);
                    bail!(e);
                }
            }
        }
        BlobCommand::Verify(a) => {
            let cid: Cid = a.cid.parse().context("not a CID")?;
            let size = store(&a.dir.data_dir, &a.store)?.verify(&cid).await?;
            println!(
                "{}",
                serde_json::json!({ "cid": cid, "stored_bytes": size, "ok": true })
            );
        }
        BlobCommand::Erase(a) => {
            let cid: Cid = a.cid.parse().context("not a CID")?;
            store(&a.dir.data_dir, &a.store)?.erase(&cid).await?;
            println!("{}", serde_json::json!({ "cid": cid, "erased": true }));
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct StoreBenchArgs {
    /// Small (4 KiB) records to put.
    #[arg(long, default_value_t = 20000)]
    pub small: usize,
    /// Concurrent small puts.
    #[arg(long, default_value_t = 32, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096))]
    pub concurrency: usize,
    /// Size of the large record, MiB.
    #[arg(long, default_value_t = 256)]
    pub large_mib: u64,
}

/// Synthetic content streamed on the fly: one pseudo-random MiB, repeated, so a
/// large record needs no memory and generating it costs little next to the store.
struct Synthetic {
    left: u64,
    pos: usize,
    block: Vec<u8>,
}

impl Synthetic {
    fn new(len: u64) -> Self {
        let mut x: u64 = 0x1234_5678_9abc_def1;
        let block = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        Synthetic {
            left: len,
            pos: 0,
            block,
        }
    }
}

impl AsyncRead for Synthetic {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut TaskCx<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = (buf.remaining() as u64)
            .min(self.left)
            .min((self.block.len() - self.pos) as u64) as usize;
        let pos = self.pos;
        buf.put_slice(&self.block[pos..pos + n]);
        self.pos = (pos + n) % self.block.len();
        self.left -= n as u64;
        Poll::Ready(Ok(()))
    }
}

pub async fn bench(a: StoreBenchArgs) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = BlobStore::open(&StoreConfig::Local {
        path: dir.path().join("blobs"),
    })?;
    let me = ReaderSecret {
        account: AccountId([1; 32]),
        secret: [2; 32],
    };
    let readers = [me.reader()];

    let large = a.large_mib << 20;
    let started = Instant::now();
    let r = store.put(Synthetic::new(large), &readers).await?;
    let put_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let n = store.get(&r.cid, &me, &mut tokio::io::sink()).await?;
    let get_s = started.elapsed().as_secs_f64();
    if n != large {
        bail!("large record came back with {n} bytes, expected {large}");
    }

    let pb = ProgressBar::new(a.small as u64);
    let small = vec![7u8; 4096];
    let started = Instant::now();
    let mut done = 0;
    // Each put on a task of its own, as concurrent requests to a node are: sealing and
    // key wrapping then use every core while the store group-commits their writes.
    let small = Arc::new(small);
    let mut puts = tokio::task::JoinSet::new();
    while done < a.small {
        while puts.len() < a.concurrency && done + puts.len() < a.small {
            let (store, small, readers) = (store.clone(), small.clone(), readers);
            puts.spawn(async move { store.put(&small[..], &readers).await });
        }
        puts.join_next().await.expect("puts in flight")??;
        done += 1;
        pb.inc(1);
    }
    pb.finish_and_clear();
    let small_s = started.elapsed().as_secs_f64();

    let mb = large as f64 / 1e6;
    let put_mb_per_s = mb / put_s;
    let get_mb_per_s = mb / get_s;
    let small_puts_per_s = a.small as f64 / small_s;
    let peak = peak_rss_mb();
    println!(
        "medledger bench store ({} MiB large record, {} x 4 KiB small records)",
        a.large_mib, a.small
    );
    println!("{:<36}{:>10}", "metric", "value");
    println!("{:<36}{:>10.1}", "encrypt+store large (MB/s)", put_mb_per_s);
    println!(
        "{:<36}{:>10.1}",
        "fetch+verify+decrypt large (MB/s)", get_mb_per_s
    );
    println!("{:<36}{:>10.0}", "small puts/s", small_puts_per_s);
    println!("{:<36}{:>10.1}", "peak RSS (MB)", peak);
    println!(
        "{}",
        serde_json::json!({
            "bench": "store", "large_mib": a.large_mib, "small": a.small,
            "put_mb_per_s": put_mb_per_s, "get_mb_per_s": get_mb_per_s,
            "small_puts_per_s": small_puts_per_s, "peak_rss_mb": peak,
        })
    );
    Ok(())
}
