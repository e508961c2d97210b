//! [`BlobStore`]: encrypted blobs and their key envelopes over any `object_store`
//! backend, streamed in and out with memory bounded by a few chunks.
//!
//! On the local filesystem (the default), blobs that fit one chunk (most records) and
//! every envelope set live in pack files with a catalog (see `local`); larger blobs are
//! files `blobs/<shard>/<cid>` (sharded by the CID's next-to-last two characters, as
//! IPFS's flatfs does). On an object store every blob is an object `blobs/<shard>/<cid>`,
//! with `env/<shard>/<cid>` (its HPKE envelopes, one per reader, as a JSON
//! [`EnvelopeSet`]) and `erased/<shard>/<cid>` (an empty tombstone so reads can say
//! "erased"). `tmp/` holds uploads in progress, renamed to their CID when complete.

use crate::envelope::{self, Envelope, Reader, ReaderSecret};
use crate::error::{Result, StoreError};
use crate::format::{
    ChunkSealer, DEFAULT_CHUNK, Header, MAX_CHUNK, NONCE_PREFIX_LEN, StreamOpener,
};
use crate::key_cache::KeyCache;
use crate::local::Local;
use futures::StreamExt;
use medledger_core::{AccountId, Cid, Digest32};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};
use std::sync::{Arc, OnceLock};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Multipart part size for uploads.
const PART: usize = 8 << 20;
/// Read size for local files.
const READ_PIECE: usize = 1 << 20;
/// Parts in flight at once (bounds upload memory to about PART × this).
const PARTS_IN_FLIGHT: usize = 2;

/// Where blobs are kept.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// A directory on the local filesystem (the default: `<data-dir>/blobs`).
    Local { path: std::path::PathBuf },
    /// An S3-compatible bucket (AWS S3, MinIO, Ceph RGW, ...).
    S3(S3Config),
}

/// An S3-compatible bucket. Credentials come from the environment
/// (`MEDLEDGER_S3_ACCESS_KEY_ID`, `MEDLEDGER_S3_SECRET_ACCESS_KEY`, or `*_FILE`
/// variants naming files that hold them), never from command lines or config files.
#[derive(Clone)]
pub struct S3Config {
    pub bucket: String,
    /// e.g. `https://s3.eu-central-1.amazonaws.com` or `http://127.0.0.1:9000`.
    pub endpoint: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Plain HTTP to the endpoint (only for a store on loopback).
    pub allow_http: bool,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &"<redacted>")
            .field("secret_access_key", &"<redacted>")
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

fn secret_from_env(name: &str) -> Result<String> {
    if let Ok(v) = std::env::var(name) {
        return Ok(v);
    }
    if let Ok(path) = std::env::var(format!("{name}_FILE")) {
        return std::fs::read_to_string(&path)
            .map(|s| s.trim_end().to_owned())
            .map_err(|e| StoreError::Config(format!("{name}_FILE: {e}")));
    }
    Err(StoreError::Config(format!(
        "{name} (or {name}_FILE) is not set"
    )))
}

impl S3Config {
    /// `s3://BUCKET?endpoint=URL&region=R`, with credentials from the environment.
    pub fn from_url(url: &str) -> Result<Self> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            StoreError::Config("expected s3://BUCKET?endpoint=URL&region=R".into())
        })?;
        let (bucket, query) = rest.split_once('?').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(StoreError::Config("bucket name is empty".into()));
        }
        let mut endpoint = None;
        let mut region = "us-east-1".to_owned();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("endpoint", v)) => endpoint = Some(v.to_owned()),
                Some(("region", v)) => region = v.to_owned(),
                _ => return Err(StoreError::Config(format!("unknown S3 option {pair:?}"))),
            }
        }
        let endpoint =
            endpoint.ok_or_else(|| StoreError::Config("endpoint= is required".into()))?;
        let allow_http = endpoint.starts_with("http://");
        Ok(S3Config {
            bucket: bucket.to_owned(),
            endpoint,
            region,
            access_key_id: secret_from_env("MEDLEDGER_S3_ACCESS_KEY_ID")?,
            secret_access_key: secret_from_env("MEDLEDGER_S3_SECRET_ACCESS_KEY")?,
            allow_http,
        })
    }
}

/// A client of the S3-compatible bucket `c` names (the record store's backend, and
/// where backups may go).
pub fn s3_object_store(c: &S3Config) -> Result<Arc<dyn ObjectStore>> {
    // HTTPS to the bucket uses the process-wide rustls provider (ring, as the node's
    // own TLS does); idempotent.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let s3 = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(&c.bucket)
        .with_endpoint(&c.endpoint)
        .with_region(&c.region)
        .with_access_key_id(&c.access_key_id)
        .with_secret_access_key(&c.secret_access_key)
        .with_allow_http(c.allow_http)
        .build()?;
    Ok(Arc::new(s3))
}

/// What a put produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PutReceipt {
    pub cid: Cid,
    /// SHA-256 of the stored (encrypted) bytes: the CID's digest, as the ledger records it.
    pub content_hash: Digest32,
    /// Bytes stored (header, ciphertext, tags).
    pub stored_bytes: u64,
    pub plain_bytes: u64,
}

#[derive(Clone, Debug)]
pub struct BlobStore {
    inner: Arc<dyn ObjectStore>,
    /// Packs and catalog when `inner` is the local filesystem: small blobs and all
    /// envelope sets live there, group-committed.
    local: Option<Arc<Local>>,
    chunk_size: u32,
    /// Serialises read-modify-write of envelope sets (grants and revocations).
    envelopes: Arc<tokio::sync::Mutex<()>>,
    /// Data keys already opened for one reader (see [`BlobStore::remember_keys`]),
    /// shared by every clone so an erasure through any of them drops the key.
    keys: Arc<OnceLock<KeyCache>>,
}

/// The stored envelopes of one blob.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct EnvelopeSet {
    pub version: u8,
    pub envelopes: Vec<Envelope>,
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|_| StoreError::Rng)?;
    Ok(b)
}

/// Directory shard of a CID: its next-to-last two characters (IPFS flatfs's
/// `next-to-last/2`), so concurrent writes do not all contend for one directory.
fn shard(cid: &str) -> &str {
    &cid[cid.len() - 3..cid.len() - 1]
}

/// Blobs up to this size are read into memory once to verify and open.
const SMALL_BLOB: u64 = 4 << 20;

fn check_cid(cid: &Cid, digest: [u8; 32]) -> Result<()> {
    if digest == cid.0.0 {
        Ok(())
    } else {
        Err(StoreError::Corrupt {
            cid: *cid,
            detail: "stored bytes do not hash to their CID".into(),
        })
    }
}

/// A whole stored blob in memory: checked against its CID, then opened.
fn open_whole(cid: &Cid, key: [u8; 32], blob: &[u8]) -> Result<Vec<u8>> {
    check_cid(cid, Sha256::digest(blob).into())?;
    let mut plain = Vec::with_capacity(blob.len());
    let mut opener = StreamOpener::new(key);
    let mut take = |p: &[u8]| {
        plain.extend_from_slice(p);
        Ok(())
    };
    opener.feed(blob, &mut take)?;
    opener.finish(&mut take)?;
    Ok(plain)
}

pub(crate) fn blob_location(cid: &Cid) -> Path {
    blob_path(cid)
}

fn blob_path(cid: &Cid) -> Path {
    let c = cid.to_string();
    Path::from(format!("blobs/{}/{c}", shard(&c)))
}

/// All envelopes of a blob live in one object: one file create per put instead of a
/// directory and a file per reader (filesystem metadata dominated small puts).
fn env_path(cid: &Cid) -> Path {
    let c = cid.to_string();
    Path::from(format!("env/{}/{c}", shard(&c)))
}

fn erased_path(cid: &Cid) -> Path {
    let c = cid.to_string();
    Path::from(format!("erased/{}/{c}", shard(&c)))
}

fn seal_envelopes(key: &[u8; 32], cid: &Cid, readers: &[Reader]) -> Result<EnvelopeSet> {
    Ok(EnvelopeSet {
        version: envelope::ENVELOPE_VERSION,
        envelopes: readers
            .iter()
            .map(|r| envelope::wrap(key, cid, r))
            .collect::<Result<_>>()?,
    })
}

fn encode_set(set: &EnvelopeSet) -> Result<Vec<u8>> {
    serde_json::to_vec(set).map_err(|e| StoreError::Format(e.to_string()))
}

fn decode_set(cid: &Cid, bytes: &[u8]) -> Result<EnvelopeSet> {
    serde_json::from_slice(bytes).map_err(|_| StoreError::Corrupt {
        cid: *cid,
        detail: "key envelopes are malformed".into(),
    })
}

fn receipt(cid: Cid, stored: u64, plain: u64) -> PutReceipt {
    tracing::debug!(%cid, stored, "blob stored");
    PutReceipt {
        cid,
        content_hash: cid.0,
        stored_bytes: stored,
        plain_bytes: plain,
    }
}

/// Reads until `buf` holds `n` bytes or the source ends.
async fn read_up_to<R: AsyncRead + Unpin>(src: &mut R, buf: &mut Vec<u8>, n: usize) -> Result<()> {
    buf.clear();
    buf.reserve(n);
    let mut limited = src.take(n as u64);
    limited.read_to_end(buf).await?;
    Ok(())
}

impl BlobStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        BlobStore {
            inner,
            local: None,
            chunk_size: DEFAULT_CHUNK,
            envelopes: Arc::new(tokio::sync::Mutex::new(())),
            keys: Arc::new(OnceLock::new()),
        }
    }

    /// Keeps up to `capacity` data keys opened for `reader` (the node's custodian) in
    /// memory, so reading a blob again skips its HPKE decapsulation; see `key_cache`
    /// for why a hit is exactly what opening the envelope would give. Set once per
    /// store (and its clones); a second call for another reader is refused.
    pub fn remember_keys(&self, reader: ReaderSecret, capacity: usize) -> Result<()> {
        let cache = self
            .keys
            .get_or_init(|| KeyCache::new(reader.clone(), capacity));
        if !cache.is_reader(&reader) {
            return Err(StoreError::Config(
                "this store already keeps another reader's data keys".into(),
            ));
        }
        Ok(())
    }

    /// The key cache's generation, taken before an envelope is read (0 without one).
    fn key_generation(&self) -> u64 {
        self.keys.get().map_or(0, KeyCache::generation)
    }

    /// Opens `env` for `who`, through the key cache when it is `who`'s; `since` is
    /// [`BlobStore::key_generation`] from before `env` was read.
    fn open_envelope(
        &self,
        env: &Envelope,
        cid: &Cid,
        who: &ReaderSecret,
        since: u64,
    ) -> Result<[u8; 32]> {
        let cache = self.keys.get();
        if let Some(key) = cache.and_then(|c| c.get(env, cid, who)) {
            return Ok(key);
        }
        let key = envelope::unwrap(env, cid, who)?;
        if let Some(c) = cache {
            c.put(env, cid, who, &key, since);
        }
        Ok(key)
    }

    /// After a blob is stored: its key, if the cache's reader is among `readers`.
    fn remember_sealed(
        &self,
        cid: &Cid,
        set: &EnvelopeSet,
        readers: &[Reader],
        key: &[u8; 32],
        since: u64,
    ) {
        if let Some(c) = self.keys.get() {
            c.sealed(cid, &set.envelopes, readers, key, since);
        }
    }

    fn forget_key(&self, cid: &Cid) {
        if let Some(c) = self.keys.get() {
            c.forget(cid);
        }
    }

    pub fn open(config: &StoreConfig) -> Result<Self> {
        match config {
            StoreConfig::Local { path } => {
                std::fs::create_dir_all(path)?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(path)?
                    .with_automatic_cleanup(true);
                Ok(BlobStore {
                    local: Some(Arc::new(Local::open(path)?)),
                    ..BlobStore::new(Arc::new(fs))
                })
            }
            StoreConfig::S3(c) => Ok(BlobStore::new(s3_object_store(c)?)),
        }
    }

    /// Chunk size for new blobs (existing blobs keep theirs, recorded in their header).
    pub fn with_chunk_size(mut self, chunk_size: u32) -> Result<Self> {
        if chunk_size == 0 || chunk_size > MAX_CHUNK {
            return Err(StoreError::Config(format!(
                "chunk size must be 1..={MAX_CHUNK}"
            )));
        }
        self.chunk_size = chunk_size;
        Ok(self)
    }

    /// Encrypts `src` under a fresh data key, stores it under its CID, and wraps the
    /// key for each reader. Nothing is left behind if it fails.
    pub async fn put<R: AsyncRead + Unpin>(
        &self,
        mut src: R,
        readers: &[Reader],
    ) -> Result<PutReceipt> {
        if readers.is_empty() {
            return Err(StoreError::Config(
                "a blob needs at least one reader".into(),
            ));
        }
        let key: [u8; 32] = random()?;
        let since = self.key_generation();
        let header = Header {
            chunk_size: self.chunk_size,
            nonce_prefix: random::<NONCE_PREFIX_LEN>()?,
        };
        let chunk = header.chunk_size as usize;
        let mut first = Vec::with_capacity(chunk + 16);
        read_up_to(&mut src, &mut first, chunk).await?;
        let mut second = Vec::new();
        if first.len() == chunk {
            read_up_to(&mut src, &mut second, chunk).await?;
        }
        if second.is_empty() {
            // One chunk (most records): seal in memory and store it in one put.
            let plain = first.len() as u64;
            let mut blob = header.encode().to_vec();
            let mut buf = first;
            ChunkSealer::new(&key, &header).seal_last(&mut buf)?;
            blob.extend_from_slice(&buf);
            let cid = Cid::of(&blob);
            let stored = blob.len() as u64;
            let set = seal_envelopes(&key, &cid, readers)?;
            match &self.local {
                Some(local) => local.put(cid, Some(blob), encode_set(&set)?).await?,
                None => {
                    self.inner
                        .put(&blob_path(&cid), PutPayload::from(blob))
                        .await?;
                    self.write_envelopes(&cid, &set).await?;
                }
            }
            self.remember_sealed(&cid, &set, readers, &key, since);
            return Ok(receipt(cid, stored, plain));
        }
        let tmp = Path::from(format!("tmp/{}", hex::encode(random::<16>()?)));
        let upload = self.inner.put_multipart(&tmp).await?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
        match self
            .seal_into(&mut src, &key, &header, &mut w, first, second)
            .await
        {
            Ok((hash, stored, plain)) => {
                w.finish().await?;
                let cid = Cid(Digest32(hash));
                if let Err(e) = self.inner.rename(&tmp, &blob_path(&cid)).await {
                    let _ = self.inner.delete(&tmp).await;
                    return Err(e.into());
                }
                let set = seal_envelopes(&key, &cid, readers)?;
                match &self.local {
                    Some(local) => {
                        let root = local.root().to_owned();
                        tokio::task::spawn_blocking(move || crate::local::flush_file(&root, &cid))
                            .await
                            .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
                        local.put(cid, None, encode_set(&set)?).await?;
                    }
                    None => self.write_envelopes(&cid, &set).await?,
                }
                self.remember_sealed(&cid, &set, readers, &key, since);
                Ok(receipt(cid, stored, plain))
            }
            Err(e) => {
                let _ = w.abort().await;
                Err(e)
            }
        }
    }

    async fn seal_into<R: AsyncRead + Unpin>(
        &self,
        src: &mut R,
        key: &[u8; 32],
        header: &Header,
        w: &mut WriteMultipart,
        first: Vec<u8>,
        second: Vec<u8>,
    ) -> Result<([u8; 32], u64, u64)> {
        let chunk = header.chunk_size as usize;
        let mut hasher = Sha256::new();
        let head = header.encode();
        hasher.update(head);
        w.write(&head);
        let mut stored = head.len() as u64;
        let mut plain = 0u64;
        let mut sealer = Some(ChunkSealer::new(key, header));
        // Two chunks of lookahead: a chunk is the last iff nothing follows it, and
        // while one chunk is sealed and hashed on a blocking thread, the next is read.
        let mut cur = first;
        let mut next = second;
        loop {
            let last = next.is_empty();
            plain += cur.len() as u64;
            let s = sealer.take().expect("sealer present until the last chunk");
            let mut h = hasher;
            let seal = tokio::task::spawn_blocking(move || -> Result<_> {
                let mut buf = cur;
                let s = if last {
                    s.seal_last(&mut buf)?;
                    None
                } else {
                    let mut s = s;
                    s.seal_next(&mut buf)?;
                    Some(s)
                };
                h.update(&buf);
                Ok((s, h, buf))
            });
            let read_more = async {
                let mut more = Vec::new();
                if !last && next.len() == chunk {
                    more.reserve(chunk + 16);
                    read_up_to(src, &mut more, chunk).await?;
                }
                Ok::<_, StoreError>(more)
            };
            let (sealed, more) = tokio::join!(seal, read_more);
            let (s, h, sealed) = sealed.map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
            let more = more?;
            hasher = h;
            stored += sealed.len() as u64;
            w.wait_for_capacity(PARTS_IN_FLIGHT).await?;
            w.put(sealed.into());
            if last {
                return Ok((hasher.finalize().into(), stored, plain));
            }
            sealer = s;
            cur = next;
            next = more;
        }
    }

    /// Replaces the blob's envelope set (object stores acknowledge writes durably; the
    /// local catalog flushes before it answers).
    async fn write_envelopes(&self, cid: &Cid, set: &EnvelopeSet) -> Result<()> {
        let bytes = encode_set(set)?;
        match &self.local {
            Some(local) => local.set_envelopes(*cid, bytes).await,
            None => {
                self.inner
                    .put(&env_path(cid), PutPayload::from(bytes))
                    .await?;
                Ok(())
            }
        }
    }

    /// The blob's envelopes (none if it has no envelope set).
    async fn read_envelopes(&self, cid: &Cid) -> Result<EnvelopeSet> {
        let bytes = match &self.local {
            Some(local) => match local.entries(*cid, false).await?.envelopes {
                Some(b) => b,
                None => return Ok(EnvelopeSet::default()),
            },
            None => match self.inner.get(&env_path(cid)).await {
                Ok(g) => g.bytes().await?.to_vec(),
                Err(object_store::Error::NotFound { .. }) => return Ok(EnvelopeSet::default()),
                Err(e) => return Err(e.into()),
            },
        };
        decode_set(cid, &bytes)
    }

    /// Why a blob cannot be read: erased, or simply absent.
    async fn missing(&self, cid: &Cid) -> StoreError {
        let erased = match &self.local {
            Some(local) => match local.entries(*cid, false).await {
                Ok(e) => e.erased,
                Err(e) => return e,
            },
            None => self.inner.head(&erased_path(cid)).await.is_ok(),
        };
        if erased {
            StoreError::Erased(*cid)
        } else {
            StoreError::NotFound(*cid)
        }
    }

    /// A packed blob's bytes (`None` when the local store keeps it as a file, or the
    /// store is not local).
    async fn packed(&self, cid: &Cid) -> Result<Option<Vec<u8>>> {
        match &self.local {
            Some(local) => Ok(local.entries(*cid, true).await?.blob),
            None => Ok(None),
        }
    }

    /// The stored bytes of a blob as a stream of pieces. A local file is read in
    /// large pieces on a blocking thread (the generic stream reads 8 KiB at a time).
    async fn pieces(&self, cid: &Cid) -> Result<tokio::sync::mpsc::Receiver<Result<bytes::Bytes>>> {
        if let Some(blob) = self.packed(cid).await? {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let _ = tx.send(Ok(blob.into())).await;
            return Ok(rx);
        }
        let got = match self.inner.get(&blob_path(cid)).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Err(self.missing(cid).await),
            Err(e) => return Err(e.into()),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut left = got.range.end.saturating_sub(got.range.start);
        match got.payload {
            object_store::GetResultPayload::File(mut file, _) => {
                tokio::task::spawn_blocking(move || {
                    use std::io::Read;
                    // Buffers sized to what is left: most records are small, and
                    // zeroing a whole piece for each of them showed up in read profiles.
                    while left > 0 {
                        let mut buf = vec![0u8; (left as usize).min(READ_PIECE)];
                        let n = match file.read(&mut buf) {
                            // The file is shorter than its metadata said; the CID check
                            // downstream reports it.
                            Ok(0) => return,
                            Ok(n) => n,
                            Err(e) => {
                                let _ = tx.blocking_send(Err(e.into()));
                                return;
                            }
                        };
                        buf.truncate(n);
                        left -= n as u64;
                        if tx.blocking_send(Ok(buf.into())).is_err() {
                            return;
                        }
                    }
                });
            }
            object_store::GetResultPayload::Stream(mut stream) => {
                tokio::spawn(async move {
                    while let Some(b) = stream.next().await {
                        if tx.send(b.map_err(StoreError::from)).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
        Ok(rx)
    }

    /// Hashes the stored blob and checks it against its CID; returns its size.
    pub async fn verify(&self, cid: &Cid) -> Result<u64> {
        self.read_sealed(cid, |_| Ok(())).await
    }

    async fn envelope(&self, cid: &Cid, reader: &AccountId) -> Result<Envelope> {
        let set = self.read_envelopes(cid).await?;
        if set.envelopes.is_empty() {
            // Every stored blob has at least one envelope.
            return Err(self.missing(cid).await);
        }
        match set.envelopes.into_iter().find(|e| &e.reader == reader) {
            Some(e) => Ok(e),
            None => Err(StoreError::NoAccess(*cid)),
        }
    }

    /// The data key of a blob, opened with `who`'s envelope.
    async fn data_key(&self, cid: &Cid, who: &ReaderSecret) -> Result<[u8; 32]> {
        let since = self.key_generation();
        let env = self.envelope(cid, &who.account).await?;
        self.open_envelope(&env, cid, who, since)
    }

    /// Verifies the CID, then decrypts into `dst`; returns the plaintext length.
    /// Nothing is written before the whole blob matched its CID. A chunk that fails
    /// authentication after that (possible only for a blob sealed by a dishonest
    /// writer) stops the stream with an error; callers writing files remove the
    /// partial output (the CLI does).
    pub async fn get<W: AsyncWrite + Unpin>(
        &self,
        cid: &Cid,
        who: &ReaderSecret,
        dst: &mut W,
    ) -> Result<u64> {
        let plain = match self.get_packed(cid, who).await? {
            Some(plain) => plain,
            None => {
                let key = self.data_key(cid, who).await?;
                let got = match self.inner.get(&blob_path(cid)).await {
                    Ok(g) => g,
                    Err(object_store::Error::NotFound { .. }) => {
                        return Err(self.missing(cid).await);
                    }
                    Err(e) => return Err(e.into()),
                };
                if got.meta.size > SMALL_BLOB {
                    drop(got);
                    return self.get_large(cid, key, dst).await;
                }
                // Small blobs (most records) are read once, checked against their CID
                // in memory and opened from there: two passes over the file cost more
                // than the crypto for them.
                open_whole(cid, key, &got.bytes().await?)?
            }
        };
        dst.write_all(&plain).await?;
        dst.flush().await?;
        Ok(plain.len() as u64)
    }

    /// Verifies the whole blob against its CID in one pass, then streams it through
    /// decryption in a second, so memory stays bounded for any size.
    async fn get_large<W: AsyncWrite + Unpin>(
        &self,
        cid: &Cid,
        key: [u8; 32],
        dst: &mut W,
    ) -> Result<u64> {
        let mut opener = StreamOpener::new(key);
        let mut written = 0u64;
        let mut ready: Vec<Vec<u8>> = Vec::new();
        self.verify(cid).await?;
        let mut pieces = self.pieces(cid).await?;
        while let Some(b) = pieces.recv().await {
            let b = b?;
            opener.feed(&b, &mut |p| {
                ready.push(p.to_vec());
                Ok(())
            })?;
            for p in ready.drain(..) {
                dst.write_all(&p).await?;
                written += p.len() as u64;
            }
        }
        opener.finish(&mut |p| {
            ready.push(p.to_vec());
            Ok(())
        })?;
        for p in ready.drain(..) {
            dst.write_all(&p).await?;
            written += p.len() as u64;
        }
        dst.flush().await?;
        Ok(written)
    }

    /// A packed blob, read with its envelopes in one catalog lookup, checked against
    /// its CID and opened in memory. `None` when the blob is not packed: the general
    /// path then reads it (or says precisely why not).
    async fn get_packed(&self, cid: &Cid, who: &ReaderSecret) -> Result<Option<Vec<u8>>> {
        let Some(local) = &self.local else {
            return Ok(None);
        };
        let since = self.key_generation();
        let got = local.entries(*cid, true).await?;
        if got.envelopes.is_none() {
            // Every stored blob has envelopes: answer the miss from this read rather
            // than looking the catalog up again.
            return Err(if got.erased {
                StoreError::Erased(*cid)
            } else {
                StoreError::NotFound(*cid)
            });
        }
        let (Some(blob), Some(env)) = (got.blob, got.envelopes) else {
            return Ok(None);
        };
        let set = decode_set(cid, &env)?;
        let Some(e) = set.envelopes.iter().find(|e| e.reader == who.account) else {
            return Err(StoreError::NoAccess(*cid));
        };
        open_whole(cid, self.open_envelope(e, cid, who, since)?, &blob).map(Some)
    }

    /// Accounts holding an envelope for the blob.
    pub async fn readers(&self, cid: &Cid) -> Result<Vec<AccountId>> {
        let mut out: Vec<AccountId> = self
            .read_envelopes(cid)
            .await?
            .envelopes
            .iter()
            .map(|e| e.reader)
            .collect();
        out.sort();
        Ok(out)
    }

    /// Wraps the blob's key for `new`, opening it with `opener`'s envelope.
    pub async fn add_reader(&self, cid: &Cid, opener: &ReaderSecret, new: &Reader) -> Result<()> {
        let key = self.data_key(cid, opener).await?;
        let env = envelope::wrap(&key, cid, new)?;
        let _guard = self.envelopes.lock().await;
        let mut set = self.read_envelopes(cid).await?;
        set.envelopes.retain(|e| e.reader != new.account);
        set.envelopes.push(env);
        set.version = envelope::ENVELOPE_VERSION;
        self.write_envelopes(cid, &set).await
    }

    /// Deletes `reader`'s envelope (consent revoked).
    pub async fn remove_reader(&self, cid: &Cid, reader: &AccountId) -> Result<()> {
        let _guard = self.envelopes.lock().await;
        let mut set = self.read_envelopes(cid).await?;
        let before = set.envelopes.len();
        set.envelopes.retain(|e| &e.reader != reader);
        if set.envelopes.len() != before {
            self.write_envelopes(cid, &set).await?;
        }
        if self.keys.get().is_some_and(|c| c.account() == *reader) {
            self.forget_key(cid);
        }
        Ok(())
    }

    /// Re-encrypts the blob under a new data key for `readers`, then erases the old
    /// blob. Streams through a pipe, so memory stays bounded.
    pub async fn rotate(
        &self,
        cid: &Cid,
        opener: &ReaderSecret,
        readers: &[Reader],
    ) -> Result<PutReceipt> {
        let (mut w, r) = tokio::io::duplex(1 << 20);
        let get = async {
            let n = self.get(cid, opener, &mut w).await;
            drop(w);
            n
        };
        let (n, receipt) = tokio::join!(get, self.put(r, readers));
        n?;
        let receipt = receipt?;
        self.erase(cid).await?;
        Ok(receipt)
    }

    /// Erasure: deletes the ciphertext and every envelope (locally their bytes are
    /// overwritten, see `local`), and leaves a tombstone so later reads say "erased".
    /// Idempotent.
    pub async fn erase(&self, cid: &Cid) -> Result<()> {
        self.erase_stored(cid).await?;
        // After the bytes are gone; a read that fetched the envelope before cannot
        // put the key back (see `key_cache`).
        self.forget_key(cid);
        Ok(())
    }

    async fn erase_stored(&self, cid: &Cid) -> Result<()> {
        if let Some(local) = &self.local {
            let _guard = self.envelopes.lock().await;
            local.erase(*cid).await?;
            tracing::info!(%cid, "blob erased");
            return Ok(());
        }
        {
            let _guard = self.envelopes.lock().await;
            match self.inner.delete(&env_path(cid)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        match self.inner.delete(&blob_path(cid)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.inner
            .put(&erased_path(cid), PutPayload::from_static(b""))
            .await?;
        tracing::info!(%cid, "blob erased");
        Ok(())
    }

    /// The raw store (for operators' tooling and tests of tamper detection).
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    /// Where an object store keeps a blob (and the local store a large one).
    pub fn blob_location(cid: &Cid) -> Path {
        blob_path(cid)
    }

    /// Where an object store keeps a blob's envelope set.
    pub fn envelope_location(cid: &Cid) -> Path {
        env_path(cid)
    }

    /// Stores already-sealed bytes under their CID with the given envelope set, as a
    /// restore does (and a dishonest writer could: reads must still refuse what does
    /// not open). An erased CID is refused: it never comes back.
    pub async fn put_sealed(&self, sealed: Vec<u8>, set: &EnvelopeSet) -> Result<Cid> {
        let cid = Cid::of(&sealed);
        match &self.local {
            Some(local) => local.put(cid, Some(sealed), encode_set(set)?).await?,
            None => {
                if self.inner.head(&erased_path(&cid)).await.is_ok() {
                    return Err(StoreError::Erased(cid));
                }
                self.inner
                    .put(&blob_path(&cid), PutPayload::from(sealed))
                    .await?;
                self.write_envelopes(&cid, set).await?;
            }
        }
        Ok(cid)
    }

    /// Every live blob's CID (each has an envelope set), for a backup.
    pub async fn cids(&self) -> Result<Vec<Cid>> {
        match &self.local {
            Some(local) => local.cids().await,
            None => {
                let mut out = Vec::new();
                let mut list = self.inner.list(Some(&Path::from("env")));
                while let Some(meta) = list.next().await {
                    let meta = meta?;
                    if let Some(cid) = meta.location.filename().and_then(|f| f.parse::<Cid>().ok())
                    {
                        out.push(cid);
                    }
                }
                out.sort_by_key(|c| c.0.0);
                Ok(out)
            }
        }
    }

    /// The stored (sealed) bytes of a blob, piece by piece, checked against its CID
    /// at the end: `each` sees every piece, and the call fails (naming the CID) if
    /// the whole does not hash to it. Nothing is decrypted.
    pub async fn read_sealed(
        &self,
        cid: &Cid,
        mut each: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<u64> {
        let mut pieces = self.pieces(cid).await?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(b) = pieces.recv().await {
            let b = b?;
            size += b.len() as u64;
            hasher.update(&b);
            each(&b)?;
        }
        check_cid(cid, hasher.finalize().into())?;
        Ok(size)
    }

    /// The blob's envelope set as stored bytes (what a backup copies).
    pub async fn envelope_bytes(&self, cid: &Cid) -> Result<Vec<u8>> {
        encode_set(&self.envelope_set(cid).await?)
    }

    /// Replaces a stored blob's envelope set with one from a backup (a restore
    /// brings the readers a later backup recorded).
    pub async fn restore_envelopes(&self, cid: &Cid, set: &EnvelopeSet) -> Result<()> {
        let _serial = self.envelopes.lock().await;
        self.envelope_set(cid).await?;
        self.write_envelopes(cid, set).await
    }

    /// The blob's envelope set as stored.
    pub async fn envelope_set(&self, cid: &Cid) -> Result<EnvelopeSet> {
        let set = self.read_envelopes(cid).await?;
        if set.envelopes.is_empty() {
            return Err(self.missing(cid).await);
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same store over the in-memory backend (used only in unit tests).
    #[tokio::test]
    async fn in_memory_backend_round_trip_and_erase() {
        let store = BlobStore::new(Arc::new(object_store::memory::InMemory::new()))
            .with_chunk_size(16)
            .unwrap();
        let who = ReaderSecret {
            account: AccountId([1; 32]),
            secret: [2; 32],
        };
        let r = store
            .put(
                &b"forty-two bytes of synthetic content here"[..],
                &[who.reader()],
            )
            .await
            .unwrap();
        let mut out = Vec::new();
        store.get(&r.cid, &who, &mut out).await.unwrap();
        assert_eq!(out, b"forty-two bytes of synthetic content here");
        store.erase(&r.cid).await.unwrap();
        assert!(matches!(
            store.get(&r.cid, &who, &mut Vec::new()).await,
            Err(StoreError::Erased(_))
        ));
    }
}
