//! Durability for the local filesystem backend. `object_store` writes a file and
//! renames it into place but never calls fsync, so after a power failure a record the
//! ledger registered could point at ciphertext or envelopes that never reached the
//! disk (and an erased blob could come back). Every mutation therefore waits for a
//! `syncfs` of the store's filesystem before it returns; one writer thread runs them
//! and lets every mutation that was waiting share one call (group commit), so many
//! concurrent puts cost one flush, not one each.

use crate::error::{Result, StoreError};
use std::path::Path;
use tokio::sync::oneshot;

type Waiter = oneshot::Sender<std::result::Result<(), String>>;

#[derive(Debug)]
pub(crate) struct SyncBarrier {
    waiters: std::sync::mpsc::Sender<Waiter>,
}

impl SyncBarrier {
    /// Starts the flushing thread for the filesystem that holds `root`.
    pub(crate) fn start(root: &Path) -> Result<Self> {
        let dir = std::fs::File::open(root)?;
        let (waiters, rx) = std::sync::mpsc::channel::<Waiter>();
        std::thread::Builder::new()
            .name("store-syncfs".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    // Whoever queued before this flush starts is covered by it; later
                    // arrivals wait for the next one.
                    let mut group = vec![first];
                    group.extend(rx.try_iter());
                    let r = rustix::fs::syncfs(&dir).map_err(|e| e.to_string());
                    for w in group {
                        let _ = w.send(r.clone());
                    }
                }
            })?;
        Ok(SyncBarrier { waiters })
    }

    /// Returns once everything written before the call is on disk.
    pub(crate) async fn sync(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        let stopped = || StoreError::Io(std::io::Error::other("syncfs thread stopped"));
        self.waiters.send(tx).map_err(|_| stopped())?;
        rx.await
            .map_err(|_| stopped())?
            .map_err(|e| StoreError::Io(std::io::Error::other(format!("syncfs: {e}"))))
    }
}
