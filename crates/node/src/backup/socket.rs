//! The node's admin socket (`<data-dir>/admin.sock`): how `medledger backup create`
//! reaches a running node, whose databases it cannot open itself (redb locks them).
//!
//! A Unix socket, mode 0600, in the data directory: whoever can use it could read
//! `node.key` anyway, so the operating system's file permissions are its
//! authorisation, and nothing of it is reachable over the network. One JSON request
//! per connection; the node answers with progress lines and one final line.

use super::{BackupError, Manifest, Progress, Result, io};
use crate::state::AppState;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

pub const SOCKET: &str = "admin.sock";
/// Requests longer than this are refused unread.
const MAX_REQUEST: usize = 64 << 10;
/// How long a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections answered at once; more are closed at once.
const MAX_CONNECTIONS: usize = 8;

/// One backup at a time per node (the admin socket and the schedule share it).
pub(crate) static RUNNING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request {
    Backup { dest: PathBuf },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Event {
    Stage { name: String, total: Option<u64> },
    Advance { n: u64 },
    Done { manifest: Box<Manifest> },
    Error { message: String },
}

/// Sends progress over the socket, at most every 100 ms for advances.
struct Relay {
    tx: mpsc::UnboundedSender<Event>,
    pending: Mutex<(u64, Instant)>,
}

impl Progress for Relay {
    fn stage(&self, name: &str, total: Option<u64>) {
        self.flush();
        let _ = self.tx.send(Event::Stage {
            name: name.into(),
            total,
        });
    }
    fn advance(&self, n: u64) {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        p.0 += n;
        if p.1.elapsed() >= Duration::from_millis(100) {
            let _ = self.tx.send(Event::Advance { n: p.0 });
            *p = (0, Instant::now());
        }
    }
}

impl Relay {
    fn flush(&self) {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if p.0 > 0 {
            let _ = self.tx.send(Event::Advance { n: p.0 });
        }
        *p = (0, Instant::now());
    }
}

/// Listens on the admin socket of `data_dir` until the process ends.
pub(crate) fn listen(data_dir: &Path, state: AppState) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = data_dir.join(SOCKET);
    // A socket file left by a node that stopped (the data directory's lock files
    // guarantee no other node runs on it now).
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(io(&path))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io(&path))?;
    // The mode is set after the bind: a client of another user who connected in
    // between is turned away by its credentials.
    let owner = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&path).map_err(io(&path))?.uid()
    };
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    if !stream.peer_cred().is_ok_and(|c| c.uid() == owner) {
                        tracing::warn!("admin socket: a connection from another user refused");
                        continue;
                    }
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        continue;
                    };
                    let state = state.clone();
                    tokio::spawn(async move {
                        answer(stream, state).await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(())
}

async fn answer(stream: UnixStream, state: AppState) {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut r = BufReader::new(r).take(MAX_REQUEST as u64);
    let request = match tokio::time::timeout(REQUEST_TIMEOUT, r.read_line(&mut line)).await {
        Ok(Ok(_)) => {
            serde_json::from_str::<Request>(&line).map_err(|e| format!("bad request: {e}"))
        }
        Ok(Err(e)) => Err(format!("bad request: {e}")),
        Err(_) => Err("no request within 10 s".into()),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            let mut bytes = serde_json::to_vec(&ev).expect("event serializes");
            bytes.push(b'\n');
            if w.write_all(&bytes).await.is_err() {
                // The client went away; the work goes on and is logged.
                while rx.recv().await.is_some() {}
                return;
            }
        }
    });
    let relay = Relay {
        tx: tx.clone(),
        pending: Mutex::new((0, Instant::now())),
    };
    let outcome = match request {
        Err(message) => Event::Error { message },
        Ok(Request::Backup { dest }) if !dest.is_absolute() => Event::Error {
            message: "the destination must be an absolute path".into(),
        },
        Ok(Request::Backup { dest }) => {
            match super::schedule::take(&state, &super::schedule::Dest::Dir(dest), &relay).await {
                Ok(m) => Event::Done {
                    manifest: Box::new(m),
                },
                Err(e) => Event::Error {
                    message: e.to_string(),
                },
            }
        }
    };
    relay.flush();
    let _ = tx.send(outcome);
    drop(relay);
    drop(tx);
    let _ = writer.await;
}

/// Asks the node running on `data_dir` for a backup into `dest`. `Ok(None)` when no
/// node answers on the socket (the node is stopped: the caller backs up offline).
pub async fn request_backup(
    data_dir: &Path,
    dest: &Path,
    progress: &dyn Progress,
) -> Result<Option<Manifest>> {
    let path = data_dir.join(SOCKET);
    let stream = match UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(io(&path)(e)),
    };
    let dest = std::path::absolute(dest).map_err(io(dest))?;
    let (r, mut w) = stream.into_split();
    let mut req = serde_json::to_vec(&Request::Backup { dest }).expect("request serializes");
    req.push(b'\n');
    w.write_all(&req).await.map_err(io(&path))?;
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await.map_err(io(&path))? {
        match serde_json::from_str::<Event>(&line) {
            Ok(Event::Stage { name, total }) => progress.stage(&name, total),
            Ok(Event::Advance { n }) => progress.advance(n),
            Ok(Event::Done { manifest }) => return Ok(Some(*manifest)),
            Ok(Event::Error { message }) => return Err(BackupError::Node(message)),
            Err(e) => return Err(BackupError::Node(format!("admin socket: {e}"))),
        }
    }
    Err(BackupError::Node(
        "the node closed the admin socket before the backup finished".into(),
    ))
}
