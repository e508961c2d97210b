//! [`BlobStore`]: encrypted blobs and their key envelopes over any `object_store`
//! backend, streamed in and out with memory bounded by a few chunks.
//!
//! Layout: `blobs/<cid>` (the sealed blob), `env/<cid>/<reader hex>` (one HPKE
//! envelope per reader), `erased/<cid>` (an empty tombstone so reads can say
//! "erased"), `tmp/` (uploads in progress; renamed to their CID when complete).

use crate::envelope::{self, Envelope, Reader, ReaderSecret};
use crate::error::{Result, StoreError};
use crate::format::{
    ChunkSealer, DEFAULT_CHUNK, Header, MAX_CHUNK, NONCE_PREFIX_LEN, StreamOpener,
};
use futures::StreamExt;
use medledger_core::{AccountId, Cid, Digest32};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Multipart part size for uploads.
const PART: usize = 8 << 20;
/// Parts in flight at once (bounds upload memory to about PART × this).
const PARTS_IN_FLIGHT: usize = 2;

/// Where blobs are kept.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// A directory on the local filesystem (the default: `<data-dir>/blobs`).
    Local { path: std::path::PathBuf },
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
    chunk_size: u32,
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|_| StoreError::Rng)?;
    Ok(b)
}

fn blob_path(cid: &Cid) -> Path {
    Path::from(format!("blobs/{cid}"))
}

fn env_prefix(cid: &Cid) -> Path {
    Path::from(format!("env/{cid}"))
}

fn env_path(cid: &Cid, reader: &AccountId) -> Path {
    Path::from(format!("env/{cid}/{}", hex::encode(reader.0)))
}

fn erased_path(cid: &Cid) -> Path {
    Path::from(format!("erased/{cid}"))
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
            chunk_size: DEFAULT_CHUNK,
        }
    }

    pub fn open(config: &StoreConfig) -> Result<Self> {
        match config {
            StoreConfig::Local { path } => {
                std::fs::create_dir_all(path)?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(path)?
                    .with_automatic_cleanup(true);
                Ok(BlobStore::new(Arc::new(fs)))
            }
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
        let header = Header {
            chunk_size: self.chunk_size,
            nonce_prefix: random::<NONCE_PREFIX_LEN>()?,
        };
        let tmp = Path::from(format!("tmp/{}", hex::encode(random::<16>()?)));
        let upload = self.inner.put_multipart(&tmp).await?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
        match self.seal_into(&mut src, &key, &header, &mut w).await {
            Ok((hash, stored, plain)) => {
                w.finish().await?;
                let cid = Cid(Digest32(hash));
                if let Err(e) = self.inner.rename(&tmp, &blob_path(&cid)).await {
                    let _ = self.inner.delete(&tmp).await;
                    return Err(e.into());
                }
                for r in readers {
                    self.put_envelope(&cid, &envelope::wrap(&key, &cid, r)?)
                        .await?;
                }
                tracing::debug!(%cid, stored, "blob stored");
                Ok(PutReceipt {
                    cid,
                    content_hash: cid.0,
                    stored_bytes: stored,
                    plain_bytes: plain,
                })
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
    ) -> Result<([u8; 32], u64, u64)> {
        let chunk = header.chunk_size as usize;
        let mut hasher = Sha256::new();
        let head = header.encode();
        hasher.update(head);
        w.write(&head);
        let mut stored = head.len() as u64;
        let mut plain = 0u64;
        let mut sealer = Some(ChunkSealer::new(key, header));
        let mut cur = Vec::with_capacity(chunk + 16);
        read_up_to(src, &mut cur, chunk).await?;
        loop {
            // Read one chunk ahead: the current chunk is the last iff nothing follows.
            let mut next = Vec::with_capacity(chunk + 16);
            if cur.len() == chunk {
                read_up_to(src, &mut next, chunk).await?;
            }
            let last = next.is_empty();
            plain += cur.len() as u64;
            let s = sealer.take().expect("sealer present until the last chunk");
            let (s, sealed) = tokio::task::spawn_blocking(move || -> Result<_> {
                let mut buf = cur;
                if last {
                    s.seal_last(&mut buf)?;
                    Ok((None, buf))
                } else {
                    let mut s = s;
                    s.seal_next(&mut buf)?;
                    Ok((Some(s), buf))
                }
            })
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
            hasher.update(&sealed);
            stored += sealed.len() as u64;
            w.wait_for_capacity(PARTS_IN_FLIGHT).await?;
            w.put(sealed.into());
            if last {
                return Ok((hasher.finalize().into(), stored, plain));
            }
            sealer = s;
            cur = next;
        }
    }

    async fn put_envelope(&self, cid: &Cid, env: &Envelope) -> Result<()> {
        let bytes = serde_json::to_vec(env).map_err(|e| StoreError::Format(e.to_string()))?;
        self.inner
            .put(&env_path(cid, &env.reader), PutPayload::from(bytes))
            .await?;
        Ok(())
    }

    /// Why a blob cannot be read: erased, or simply absent.
    async fn missing(&self, cid: &Cid) -> StoreError {
        match self.inner.head(&erased_path(cid)).await {
            Ok(_) => StoreError::Erased(*cid),
            Err(_) => StoreError::NotFound(*cid),
        }
    }

    /// Hashes the stored blob and checks it against its CID; returns its size.
    pub async fn verify(&self, cid: &Cid) -> Result<u64> {
        let got = match self.inner.get(&blob_path(cid)).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Err(self.missing(cid).await),
            Err(e) => return Err(e.into()),
        };
        let mut stream = got.into_stream();
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(b) = stream.next().await {
            let b = b?;
            size += b.len() as u64;
            hasher.update(&b);
        }
        let digest: [u8; 32] = hasher.finalize().into();
        if digest != cid.0.0 {
            return Err(StoreError::Corrupt {
                cid: *cid,
                detail: "stored bytes do not hash to their CID".into(),
            });
        }
        Ok(size)
    }

    async fn envelope(&self, cid: &Cid, reader: &AccountId) -> Result<Envelope> {
        match self.inner.get(&env_path(cid, reader)).await {
            Ok(g) => {
                let bytes = g.bytes().await?;
                serde_json::from_slice(&bytes).map_err(|_| StoreError::Corrupt {
                    cid: *cid,
                    detail: "key envelope is malformed".into(),
                })
            }
            Err(object_store::Error::NotFound { .. }) => {
                if self.inner.head(&blob_path(cid)).await.is_err() {
                    return Err(self.missing(cid).await);
                }
                Err(StoreError::NoAccess(*cid))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The data key of a blob, opened with `who`'s envelope.
    async fn data_key(&self, cid: &Cid, who: &ReaderSecret) -> Result<[u8; 32]> {
        let env = self.envelope(cid, &who.account).await?;
        envelope::unwrap(&env, cid, who)
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
        let key = self.data_key(cid, who).await?;
        self.verify(cid).await?;
        let got = self.inner.get(&blob_path(cid)).await?;
        let mut stream = got.into_stream();
        let mut opener = StreamOpener::new(key);
        let mut written = 0u64;
        let mut ready: Vec<Vec<u8>> = Vec::new();
        while let Some(b) = stream.next().await {
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

    /// Accounts holding an envelope for the blob.
    pub async fn readers(&self, cid: &Cid) -> Result<Vec<AccountId>> {
        let mut out = Vec::new();
        let mut list = self.inner.list(Some(&env_prefix(cid)));
        while let Some(m) = list.next().await {
            let m = m?;
            let Some(name) = m.location.filename() else {
                continue;
            };
            if let Ok(a) = name.parse::<AccountId>() {
                out.push(a);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Wraps the blob's key for `new`, opening it with `opener`'s envelope.
    pub async fn add_reader(&self, cid: &Cid, opener: &ReaderSecret, new: &Reader) -> Result<()> {
        let key = self.data_key(cid, opener).await?;
        self.put_envelope(cid, &envelope::wrap(&key, cid, new)?)
            .await
    }

    /// Deletes `reader`'s envelope (consent revoked).
    pub async fn remove_reader(&self, cid: &Cid, reader: &AccountId) -> Result<()> {
        match self.inner.delete(&env_path(cid, reader)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
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

    /// Crypto-shredding: deletes the ciphertext and every envelope, and leaves a
    /// tombstone so later reads say "erased". Idempotent.
    pub async fn erase(&self, cid: &Cid) -> Result<()> {
        let mut list = self.inner.list(Some(&env_prefix(cid)));
        let mut envs = Vec::new();
        while let Some(m) = list.next().await {
            envs.push(m?.location);
        }
        for p in envs {
            match self.inner.delete(&p).await {
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

    pub fn blob_location(cid: &Cid) -> Path {
        blob_path(cid)
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
