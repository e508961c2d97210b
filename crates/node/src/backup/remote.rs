//! Backups in an S3-compatible bucket (`s3://BUCKET/PREFIX?endpoint=URL&region=R`,
//! credentials from `MEDLEDGER_S3_ACCESS_KEY_ID` / `MEDLEDGER_S3_SECRET_ACCESS_KEY`).
//!
//! The bucket holds exactly the layout of a local destination. A backup is written to
//! a private staging directory (after the tags and sums of the blob files already in
//! the bucket are fetched, so it stays incremental) and its new files are uploaded,
//! the manifest last: a backup without its manifest is never listed. A verify or
//! restore downloads the files a manifest lists into a temporary directory first,
//! where every check of a local restore applies.

use super::{BackupError, Manifest, Result};
use futures::StreamExt;
use medledger_store::object_store::path::Path as Key;
use medledger_store::object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use std::path::Path;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// Upload part size.
const PART: usize = 8 << 20;

pub struct Remote {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    url: String,
}

/// Only the bucket and prefix: the client's own form would include its configuration.
impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("url", &self.url).finish()
    }
}

fn s3_err(e: impl std::fmt::Display) -> BackupError {
    BackupError::Node(format!("backup bucket: {e}"))
}

impl Remote {
    /// The bucket `url` names (`s3://BUCKET/PREFIX?endpoint=URL&region=R`).
    pub fn open(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| BackupError::Config(format!("{url:?} is not an s3:// URL")))?;
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
        let config = medledger_store::S3Config::from_url(&format!("s3://{bucket}?{query}"))
            .map_err(|e| BackupError::Config(e.to_string()))?;
        let store = medledger_store::s3_object_store(&config)
            .map_err(|e| BackupError::Config(e.to_string()))?;
        Ok(Remote {
            store,
            prefix: prefix.trim_matches('/').to_owned(),
            url: format!("s3://{bucket}/{prefix}"),
        })
    }

    /// The bucket and prefix, without the query (which names the endpoint).
    pub fn url(&self) -> &str {
        &self.url
    }

    fn key(&self, rel: &str) -> Key {
        if self.prefix.is_empty() {
            Key::from(rel)
        } else {
            Key::from(format!("{}/{rel}", self.prefix))
        }
    }

    /// Paths (relative to the prefix) of every object under `sub`.
    async fn list(&self, sub: &str) -> Result<Vec<String>> {
        let base = self.key(sub);
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let mut out = Vec::new();
        let mut l = self.store.list(Some(&base));
        while let Some(m) = l.next().await {
            let m = m.map_err(s3_err)?;
            let p = m.location.to_string();
            out.push(p.strip_prefix(&strip).unwrap_or(&p).to_owned());
        }
        Ok(out)
    }

    async fn download(&self, rel: &str, to: &Path) -> Result<()> {
        if let Some(d) = to.parent() {
            std::fs::create_dir_all(d).map_err(super::io(d))?;
        }
        let got = match self.store.get(&self.key(rel)).await {
            Ok(g) => g,
            Err(medledger_store::object_store::Error::NotFound { .. }) => {
                return Err(BackupError::Bad(format!(
                    "{rel} is missing from {}",
                    self.url
                )));
            }
            Err(e) => return Err(s3_err(e)),
        };
        let mut f = tokio::fs::File::create(to).await.map_err(super::io(to))?;
        let mut s = got.into_stream();
        while let Some(b) = s.next().await {
            f.write_all(&b.map_err(s3_err)?)
                .await
                .map_err(super::io(to))?;
        }
        f.sync_all().await.map_err(super::io(to))
    }

    async fn upload(&self, from: &Path, rel: &str) -> Result<()> {
        use tokio::io::AsyncReadExt;
        let len = std::fs::metadata(from).map_err(super::io(from))?.len();
        let mut f = tokio::fs::File::open(from).await.map_err(super::io(from))?;
        if len <= PART as u64 {
            let mut buf = Vec::with_capacity(len as usize);
            f.read_to_end(&mut buf).await.map_err(super::io(from))?;
            self.store
                .put(&self.key(rel), PutPayload::from(buf))
                .await
                .map_err(s3_err)?;
            return Ok(());
        }
        let upload = self
            .store
            .put_multipart(&self.key(rel))
            .await
            .map_err(s3_err)?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
        let mut buf = vec![0u8; PART];
        loop {
            let n = f.read(&mut buf).await.map_err(super::io(from))?;
            if n == 0 {
                break;
            }
            w.wait_for_capacity(2).await.map_err(s3_err)?;
            w.write(&buf[..n]);
        }
        w.finish().await.map_err(s3_err)?;
        Ok(())
    }

    /// A private directory to write the next backup into before [`Remote::upload_backup`],
    /// holding what a backup needs to know of the bucket: every blob file's tags and
    /// sum, and an empty stand-in for the file itself.
    pub async fn staging(&self) -> Result<tempfile::TempDir> {
        let dir = tempfile::Builder::new()
            .prefix("medledger-backup-staging")
            .tempdir()
            .map_err(super::io(&std::env::temp_dir()))?;
        let staging = dir.path();
        let all = self.list("blobs").await?;
        for rel in &all {
            let Some(stem) = rel.strip_suffix(".age") else {
                continue;
            };
            let (tags, sum) = (format!("{stem}.tags"), format!("{stem}.sum"));
            if all.contains(&tags) && all.contains(&sum) {
                self.download(&tags, &staging.join(&tags)).await?;
                self.download(&sum, &staging.join(&sum)).await?;
                std::fs::write(staging.join(rel), b"").map_err(super::io(staging))?;
            }
        }
        Ok(dir)
    }

    /// Uploads backup `m` from `staging`: its blob file (with tags and sum), its
    /// state, then its manifest.
    pub async fn upload_backup(&self, staging: &Path, m: &Manifest) -> Result<()> {
        let blob = format!("blobs/{}", m.name);
        if m.files.iter().any(|f| f.path == format!("{blob}.age")) {
            for ext in ["age", "tags", "sum"] {
                let rel = format!("{blob}.{ext}");
                self.upload(&staging.join(&rel), &rel).await?;
            }
        }
        let state = format!("{}/state.age", m.name);
        self.upload(&staging.join(&state), &state).await?;
        let manifest = format!("{}/manifest.json", m.name);
        self.upload(&staging.join(&manifest), &manifest).await
    }

    /// Names of the backups in the bucket, oldest first.
    async fn names(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .list("")
            .await?
            .into_iter()
            .filter_map(|p| p.strip_suffix("/manifest.json").map(str::to_owned))
            .filter(|n| n.starts_with("backup-") && !n.contains('/'))
            .collect();
        names.sort();
        Ok(names)
    }

    async fn delete(&self, rel: &str) -> Result<()> {
        match self.store.delete(&self.key(rel)).await {
            Ok(()) | Err(medledger_store::object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(s3_err(e)),
        }
    }

    /// Keeps the newest `keep` backups in the bucket; deletes the others (manifest
    /// first) and every blob file no kept backup lists.
    pub async fn prune(&self, keep: usize) -> Result<usize> {
        let names = self.names().await?;
        if names.len() <= keep.max(1) {
            return Ok(0);
        }
        let (old, kept) = names.split_at(names.len() - keep.max(1));
        let tmp = tempfile::tempdir().map_err(super::io(&std::env::temp_dir()))?;
        let mut needed = std::collections::HashSet::new();
        for n in kept {
            let dir = tmp.path().join(n);
            self.download(&format!("{n}/manifest.json"), &dir.join("manifest.json"))
                .await?;
            needed.extend(Manifest::read(&dir)?.files.into_iter().map(|f| f.path));
        }
        for n in old {
            self.delete(&format!("{n}/manifest.json")).await?;
            self.delete(&format!("{n}/state.age")).await?;
        }
        for rel in self.list("blobs").await? {
            let stem = rel
                .strip_suffix(".age")
                .or_else(|| rel.strip_suffix(".tags"))
                .or_else(|| rel.strip_suffix(".sum"));
            if let Some(stem) = stem
                && !needed.contains(&format!("{stem}.age"))
            {
                self.delete(&rel).await?;
            }
        }
        Ok(old.len())
    }

    /// Downloads backup `name` (the newest when `None`) and every file it lists into
    /// `into`; returns its directory there.
    pub async fn fetch(&self, name: Option<&str>, into: &Path) -> Result<std::path::PathBuf> {
        let name = match name {
            Some(n) => n.to_owned(),
            None => {
                let mut names = self.names().await?;
                names.pop().ok_or_else(|| {
                    BackupError::Bad(format!("{} holds no backup (no manifest.json)", self.url))
                })?
            }
        };
        if name.contains('/') || name.contains("..") {
            return Err(BackupError::Bad(format!("{name:?} is not a backup name")));
        }
        let dir = into.join(&name);
        self.download(&format!("{name}/manifest.json"), &dir.join("manifest.json"))
            .await?;
        let m = Manifest::read(&dir)?;
        for f in &m.files {
            if f.path.contains("..") || f.path.starts_with('/') {
                return Err(BackupError::Bad(format!(
                    "the manifest names a file outside it: {}",
                    f.path
                )));
            }
            self.download(&f.path, &into.join(&f.path)).await?;
        }
        Ok(dir)
    }
}
