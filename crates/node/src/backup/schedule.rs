//! Scheduled backups (`serve --backup-to DEST --backup-every 6h --backup-keep 14`),
//! retention, and what the node knows of its last successful backup (for `/metrics`
//! and the admin's status panel).

use super::{Manifest, Quiet, Result};
use crate::state::AppState;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// When and where backups are taken on their own.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub dest: PathBuf,
    pub every: Duration,
    /// Backups kept in `dest` (the newest); older ones and blob files no kept backup
    /// needs are deleted after each successful backup.
    pub keep: usize,
}

impl Schedule {
    /// Refuses a schedule that could never succeed, before the node serves.
    pub fn check(&self, data_dir: &Path) -> Result<()> {
        super::recipients(data_dir)?;
        super::create::check_dest(data_dir, &self.dest)?;
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
    pub dest: PathBuf,
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
        if let Some(sch) = &s.schedule
            && let Ok(names) = super::list(&sch.dest)
            && let Some(newest) = names.last()
            && let Ok(m) = Manifest::read(&sch.dest.join(newest))
        {
            s.record(&m, &sch.dest);
        }
        s
    }

    pub fn last(&self) -> Option<LastBackup> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records a successful backup (and exports it as metrics).
    pub fn record(&self, m: &Manifest, dest: &Path) {
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
    dest: &Path,
    progress: &dyn super::Progress,
) -> Result<Manifest> {
    let _one = super::socket::RUNNING.lock().await;
    let r = super::create_running(state, &state.data_dir, dest, progress).await;
    match &r {
        Ok(m) => {
            metrics::counter!("medledger_backups_total", "result" => "ok").increment(1);
            state.backups.record(m, dest);
        }
        Err(e) => {
            metrics::counter!("medledger_backups_total", "result" => "failed").increment(1);
            tracing::warn!(error = %e, "backup failed");
        }
    }
    r
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
            if take(&state, &sch.dest, &Quiet).await.is_ok()
                && let Err(e) = prune(&sch.dest, sch.keep)
            {
                tracing::warn!(error = %e, "backup retention failed");
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
