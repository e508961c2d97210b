//! Scheduled backups (`serve --backup-to DEST --backup-every 6h --backup-keep 14`),
//! retention, and what the node knows of its last successful backup (for `/metrics`
//! and the admin's status panel).

use super::remote::Remote;
use super::{Manifest, Quiet, Result};
use crate::state::AppState;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where backups go (and where `verify` and `restore` find them).
#[derive(Debug, Clone)]
pub enum Dest {
    Dir(PathBuf),
    /// `s3://BUCKET/PREFIX?endpoint=URL&region=R` ([`super::remote`]).
    Bucket(Arc<Remote>),
}

impl Dest {
    /// A bucket for an `s3://` URL, otherwise a directory.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(if s.starts_with("s3://") {
            Dest::Bucket(Arc::new(Remote::open(s)?))
        } else {
            Dest::Dir(PathBuf::from(s))
        })
    }

    /// For people: a bucket without its query (which names the endpoint).
    pub fn shown(&self) -> String {
        match self {
            Dest::Dir(p) => p.display().to_string(),
            Dest::Bucket(r) => r.url().to_owned(),
        }
    }
}

/// When and where backups are taken on their own.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub dest: Dest,
    pub every: Duration,
    /// Backups kept in `dest` (the newest); older ones and blob files no kept backup
    /// needs are deleted after each successful backup.
    pub keep: usize,
}

impl Schedule {
    /// Refuses a schedule that could never succeed, before the node serves.
    pub fn check(&self, data_dir: &Path) -> Result<()> {
        super::recipients(data_dir)?;
        if let Dest::Dir(d) = &self.dest {
            super::create::check_dest(data_dir, d)?;
        }
        if self.every < Duration::from_secs(1) {
            return Err(super::BackupError::Config(
                "--backup-every must be at least a second".into(),
            ));
        }
        Ok(())
    }
}

/// The last successful backup this node knows of.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LastBackup {
    pub name: String,
    pub height: u64,
    pub at_ms: u64,
    pub dest: String,
    pub blobs_new: u64,
    pub bytes_new: u64,
}

#[derive(Debug, Default)]
pub struct BackupStatus {
    pub schedule: Option<Schedule>,
    last: Mutex<Option<LastBackup>>,
}

impl BackupStatus {
    /// The status of a node with `schedule`, starting from the newest backup already in
    /// its destination.
    pub fn new(schedule: Option<Schedule>) -> Self {
        let s = BackupStatus {
            schedule,
            last: Mutex::new(None),
        };
        if let Some(Schedule {
            dest: Dest::Dir(dir),
            ..
        }) = &s.schedule
            && let Ok(names) = super::list(dir)
            && let Some(newest) = names.last()
            && let Ok(m) = Manifest::read(&dir.join(newest))
        {
            s.record(&m, &dir.display().to_string());
        }
        s
    }

    pub fn last(&self) -> Option<LastBackup> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records a successful backup (and exports it as metrics).
    pub fn record(&self, m: &Manifest, dest: &str) {
        metrics::gauge!("medledger_backup_last_success_timestamp_seconds")
            .set(m.created_ms as f64 / 1000.0);
        metrics::gauge!("medledger_backup_last_height").set(m.height as f64);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(LastBackup {
            name: m.name.clone(),
            height: m.height,
            at_ms: m.created_ms,
            dest: dest.to_owned(),
            blobs_new: m.blobs_new,
            bytes_new: m.bytes_new,
        });
    }
}

/// Takes a backup now (one at a time per node), records it, applies retention.
pub(crate) async fn take(
    state: &AppState,
    dest: &Dest,
    progress: &dyn super::Progress,
) -> Result<Manifest> {
    let _one = super::socket::RUNNING.lock().await;
    let r = match dest {
        Dest::Dir(d) => super::create_running(state, &state.data_dir, d, progress).await,
        Dest::Bucket(r) => to_bucket(state, r, progress).await,
    };
    match &r {
        Ok(m) => {
            metrics::counter!("medledger_backups_total", "result" => "ok").increment(1);
            state.backups.record(m, &dest.shown());
        }
        Err(e) => {
            metrics::counter!("medledger_backups_total", "result" => "failed").increment(1);
            tracing::warn!(error = %e, "backup failed");
        }
    }
    r
}

/// A backup into a bucket: staged in a private temporary directory, then uploaded.
async fn to_bucket(
    state: &AppState,
    remote: &Remote,
    progress: &dyn super::Progress,
) -> Result<Manifest> {
    let staging = remote.staging().await?;
    let m = super::create_running(state, &state.data_dir, staging.path(), progress).await?;
    remote.upload_backup(staging.path(), &m).await?;
    Ok(m)
}

/// Runs the schedule until the process ends.
pub(crate) fn start(state: AppState) {
    let Some(sch) = state.backups.schedule.clone() else {
        return;
    };
    tokio::spawn(async move {
        let mut every = tokio::time::interval(sch.every);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            if take(&state, &sch.dest, &Quiet).await.is_ok() {
                let pruned = match &sch.dest {
                    Dest::Dir(d) => prune(d, sch.keep),
                    Dest::Bucket(r) => r.prune(sch.keep).await,
                };
                if let Err(e) = pruned {
                    tracing::warn!(error = %e, "backup retention failed");
                }
            }
        }
    });
}

/// Keeps the newest `keep` backups in `dest`; deletes the others and every blob file
/// no kept backup lists.
pub fn prune(dest: &Path, keep: usize) -> Result<usize> {
    let names = super::list(dest)?;
    if names.len() <= keep.max(1) {
        return Ok(0);
    }
    let (old, kept) = names.split_at(names.len() - keep.max(1));
    let mut needed = HashSet::new();
    for n in kept {
        for f in Manifest::read(&dest.join(n))?.files {
            needed.insert(f.path);
        }
    }
    for n in old {
        let d = dest.join(n);
        // The manifest first: a backup without it is incomplete and never listed.
        std::fs::remove_file(d.join("manifest.json")).map_err(super::io(&d))?;
        std::fs::remove_dir_all(&d).map_err(super::io(&d))?;
    }
    let blobs = dest.join("blobs");
    for e in std::fs::read_dir(&blobs).map_err(super::io(&blobs))? {
        let e = e.map_err(super::io(&blobs))?;
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = file.strip_suffix(".age") else {
            continue;
        };
        if !needed.contains(&format!("blobs/{file}")) {
            for ext in ["tags", "sum", "age"] {
                let p = blobs.join(format!("{stem}.{ext}"));
                if let Err(e) = std::fs::remove_file(&p)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    return Err(super::io(&p)(e));
                }
            }
        }
    }
    tracing::info!(
        removed = old.len(),
        kept = kept.len(),
        "old backups removed"
    );
    Ok(old.len())
}
