//! `serve`: config → data dir → start-up check → ledger → Raft → batcher → HTTPS.

use crate::datadir::{self, AUDIT_QUEUE_DB, BLOBS_DIR, LEDGER_DB, RAFT_DB, TLS_CERT, TLS_KEY};
use crate::error::{NodeError, Result};
use crate::state::AppState;
use medledger_consensus::{Batcher, BatcherConfig, LogStore, StateMachine, network::HttpNetwork};
use medledger_ledger::{Ledger, VerifyMode};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartupCheck {
    /// Only what came after the node's verified mark ([`medledger_ledger::verified`]),
    /// fully; everything from genesis when there is no mark or it does not check.
    #[default]
    SinceVerified,
    /// Re-verify everything, including every transaction signature.
    Full,
    /// Everything but per-transaction signatures.
    Quick,
}

/// How often a running node advances its verified mark to the blocks it applied.
const MARK_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// The start-up check: after the verified mark when there is a good one, else from
/// genesis (then a mark is recorded, so the next start is short).
fn startup_check(
    ledger: &Ledger,
    check: StartupCheck,
) -> medledger_ledger::Result<(medledger_ledger::VerifyReport, bool)> {
    use medledger_ledger::MarkSource;
    if check == StartupCheck::SinceVerified {
        match ledger.verified_mark() {
            Ok(Some(mark)) => {
                let report = ledger.verify_since(&mark, VerifyMode::Full)?;
                return Ok((report, mark.signatures));
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "verifying everything"),
        }
    }
    let mode = match check {
        StartupCheck::Quick => VerifyMode::SkipTxSignatures,
        _ => VerifyMode::Full,
    };
    let report = ledger.verify(mode, &|_, _| {})?;
    let signatures = mode == VerifyMode::Full;
    ledger.record_verified(MarkSource::Replayed, signatures)?;
    Ok((report, signatures))
}

/// Self-registrations by unknown keys admitted per second, node-wide, and in a burst.
const NEW_SIGNERS_PER_S: f64 = 20.0;
const NEW_SIGNERS_BURST: f64 = 100.0;

/// Record data keys kept opened by default: the keys of the last 131,072 record
/// versions the node wrote or read, roughly 18 MB.
pub const DEFAULT_KEY_CACHE: usize = 1 << 17;

/// Everything `serve` needs; validated before anything starts.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The initialised data directory.
    pub data_dir: PathBuf,
    /// Address to listen on; port 0 picks a free port (printed on start).
    pub listen: SocketAddr,
    /// Serve plain HTTP instead of HTTPS. Only for when it is explicitly asked for.
    pub insecure_http: bool,
    /// TLS certificate and key (PEM); default: the data dir's self-signed pair.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// How thoroughly the stored ledger is checked before serving.
    pub startup_check: StartupCheck,
    /// Mount the node-to-node Raft endpoints (for multi-node clusters).
    pub peer_rpc: bool,
    pub batcher: BatcherConfig,
    /// How often the node settles due work (expired proposals, ended retentions).
    pub housekeeping: std::time::Duration,
    /// The record store; default: `<data-dir>/blobs` on the local filesystem.
    pub store: Option<medledger_store::StoreConfig>,
    /// Outgoing mail; default: files in `<data-dir>/outbox`.
    pub mail: Option<crate::auth::mail::MailConfig>,
    /// How long patient invites stay valid.
    pub invite_ttl: std::time::Duration,
    /// Per client address: requests per second and burst on the sign-in routes that
    /// run a password KDF ([`crate::http::limits`]).
    pub per_client: (u32, u32),
    /// The erasure journal: a file kept apart from the data directory (another disk),
    /// which every erasure is appended to before it is acknowledged, and whose
    /// erasures are shredded before the node serves (after a restore).
    pub erasure_journal: Option<PathBuf>,
    /// How many record data keys the node keeps opened for its custodian key
    /// (`medledger_store::BlobStore::remember_keys`); 0: none.
    pub key_cache: usize,
    /// Scheduled backups (`--backup-to`, `--backup-every`, `--backup-keep`).
    pub backup: Option<crate::backup::Schedule>,
    /// Demo accounts the sign-in page lists (`medledger demo` fills it once it has
    /// created them; empty on a real node).
    pub demo: crate::state::DemoBoard,
}

impl ServeConfig {
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> Self {
        ServeConfig {
            data_dir,
            listen,
            insecure_http: false,
            tls_cert: None,
            tls_key: None,
            startup_check: StartupCheck::Full,
            peer_rpc: false,
            batcher: BatcherConfig::default(),
            housekeeping: std::time::Duration::from_secs(5),
            store: None,
            mail: None,
            invite_ttl: std::time::Duration::from_millis(crate::auth::INVITE_MS),
            per_client: (
                crate::http::limits::DEFAULT_PER_SECOND,
                crate::http::limits::DEFAULT_BURST,
            ),
            demo: Default::default(),
            erasure_journal: None,
            key_cache: crate::DEFAULT_KEY_CACHE,
            backup: None,
        }
    }
}

/// Runs a node until the process is stopped. `on_ready` receives the URL it serves.
pub async fn serve(config: ServeConfig, on_ready: impl FnOnce(&str)) -> Result<()> {
    crate::install_crypto_provider();
    let dd = datadir::load(&config.data_dir)?;
    if dd.dir.join(crate::backup::RESTORE_INCOMPLETE).exists() {
        return Err(NodeError::Server(format!(
            "a restore into {} did not finish: its data is incomplete; restore again into \
             a new directory",
            dd.dir.display()
        )));
    }
    let ledger_path = dd.dir.join(LEDGER_DB);
    let ledger = {
        let (g, n, id) = (dd.genesis.clone(), dd.node.clone(), dd.node_id);
        let p = ledger_path.clone();
        tokio::task::spawn_blocking(move || Ledger::open(&p, g, n, id))
            .await
            .map_err(|e| NodeError::Server(e.to_string()))?
            .map_err(NodeError::StartupCheck)?
    };
    let l = ledger.clone();
    let check = config.startup_check;
    let (report, signatures) = tokio::task::spawn_blocking(move || startup_check(&l, check))
        .await
        .map_err(|e| NodeError::Server(e.to_string()))?
        .map_err(NodeError::StartupCheck)?;
    tracing::info!(
        from_height = report.from_height,
        blocks = report.blocks,
        txs = report.txs,
        seconds = report.seconds,
        "start-up check passed"
    );
    let verified = std::sync::Arc::new(crate::state::Verified {
        at_ms: crate::reporter::now_ms(),
        from_height: report.from_height,
        height: report.tip.height,
        blocks: report.blocks,
        txs: report.txs,
        seconds: report.seconds,
        signatures,
    });
    {
        // Blocks this node applies go through its own contracts: it advances its mark
        // over them, so that a restart (even after a crash) checks little.
        let l = ledger.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(MARK_EVERY);
            every.tick().await;
            loop {
                every.tick().await;
                let l = l.clone();
                let r = tokio::task::spawn_blocking(move || advance_mark(&l, signatures)).await;
                if !matches!(r, Ok(Ok(()))) {
                    tracing::warn!("could not advance the verified mark");
                }
            }
        });
    }

    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| NodeError::Server(format!("metrics: {e}")))?;

    let listener = std::net::TcpListener::bind(config.listen)
        .map_err(|e| NodeError::Server(format!("cannot listen on {}: {e}", config.listen)))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| NodeError::Server(e.to_string()))?;
    let local = listener
        .local_addr()
        .map_err(|e| NodeError::Server(e.to_string()))?;
    let scheme = if config.insecure_http {
        "http"
    } else {
        "https"
    };
    let url = format!("{scheme}://{local}");

    let cert = config
        .tls_cert
        .clone()
        .unwrap_or_else(|| dd.dir.join(TLS_CERT));
    let key = config
        .tls_key
        .clone()
        .unwrap_or_else(|| dd.dir.join(TLS_KEY));
    let peer_client = crate::client::http_client(if config.insecure_http {
        None
    } else {
        Some(&cert)
    })?;
    if let Some(s) = &config.backup {
        s.check(&dd.dir)?;
    }
    let journal = match &config.erasure_journal {
        Some(path) => Some(std::sync::Arc::new(open_journal(&dd.dir, path)?)),
        None => None,
    };
    let log = LogStore::open(&dd.dir.join(RAFT_DB))?;
    let raft = medledger_consensus::start(
        dd.node_id,
        &url,
        dd.genesis.chain_id.as_str(),
        log.clone(),
        match &journal {
            Some(j) => {
                let j = j.clone();
                StateMachine::new(ledger.clone()).with_after_apply(std::sync::Arc::new(
                    move |l: &Ledger| j.sync(l).map(|_| ()).map_err(|e| e.to_string()),
                ))
            }
            None => StateMachine::new(ledger.clone()),
        },
        HttpNetwork::new(peer_client),
    )
    .await?;
    // Entries committed before a crash may not be in the ledger file yet (its writes
    // are deferred to the Raft log's fsync); answer nobody until they are re-applied,
    // so every acknowledged transaction is visible from the first request on.
    let last_log = raft.metrics().borrow().last_log_index;
    if let Err(e) = raft
        .wait(Some(std::time::Duration::from_secs(120)))
        .applied_index_at_least(last_log, "replay of the committed Raft log")
        .await
    {
        tracing::warn!(error = %e, "serving before the Raft log was fully re-applied");
    }
    // The re-applied entries went through this node's contracts: the mark moves past
    // them (and makes them durable in the ledger file), so a crash before the next
    // periodic advance does not leave them to be checked again.
    {
        let l = ledger.clone();
        let r = tokio::task::spawn_blocking(move || advance_mark(&l, signatures)).await;
        if !matches!(r, Ok(Ok(()))) {
            tracing::warn!("could not advance the verified mark after the Raft log replay");
        }
    }
    let batcher = Batcher::start(raft.clone(), config.batcher.clone());
    let submitter = crate::submitter::Submitter::new(ledger.clone(), batcher.clone());
    let store_config = config
        .store
        .clone()
        .unwrap_or(medledger_store::StoreConfig::Local {
            path: dd.dir.join(BLOBS_DIR),
        });
    let store = medledger_store::BlobStore::open(&store_config)
        .map_err(|e| NodeError::Server(format!("record store: {e}")))?;
    if let Some(j) = &journal {
        // Erasures the ledger already had are journalled (a journal set up on a node
        // that ran without one); erasures the journal holds that this ledger does not
        // (a restore from an older backup) are shredded, before anything is served.
        j.sync(&ledger)
            .map_err(|e| NodeError::Server(e.to_string()))?;
        crate::erasure_journal::shred_journalled(j.path(), &store)
            .await
            .map_err(|e| NodeError::Server(e.to_string()))?;
    }
    let audit_queue = crate::audit_queue::AuditQueue::open(&dd.dir.join(AUDIT_QUEUE_DB))
        .map_err(|e| NodeError::Server(format!("audit queue: {e}")))?;
    let reporter = crate::reporter::Reporter::start(
        ledger.clone(),
        submitter.clone(),
        dd.node.clone(),
        store.clone(),
        audit_queue,
        config.housekeeping,
    );
    let fhir = crate::fhir::Fhir::open(
        &dd.dir,
        crate::datadir::local_secret(&dd.dir.join("fhir.key"), &dd.dir.join("fhir.redb"))?,
        medledger_core::AccountId(dd.node.public().0),
        ledger.clone(),
        submitter.clone(),
        store.clone(),
        reporter.clone(),
    )
    .map_err(|e| NodeError::Server(format!("FHIR index: {e}")))?;
    if config.key_cache > 0 {
        fhir.keep_keys(config.key_cache)
            .map_err(|e| NodeError::Server(format!("record store: {e}")))?;
    }
    // A crash between a commit and its index write leaves a record no search finds:
    // index what the ledger holds beyond the index's watermark before serving.
    let caught = fhir
        .catch_up(ledger.tip().height)
        .await
        .map_err(|e| NodeError::Server(format!("FHIR index catch-up: {e}")))?;
    tracing::info!(
        from = caught.from,
        to = caught.to,
        records = caught.records,
        indexed = caught.indexed,
        seconds = caught.seconds,
        "FHIR index caught up with the ledger"
    );
    let auth = crate::auth::Auth::open(
        &dd.dir,
        ledger.clone(),
        submitter,
        config.mail.clone(),
        url.clone(),
    )
    .map_err(|e| NodeError::Server(format!("sign-in directory: {e}")))?
    .with_invite_ttl(config.invite_ttl.as_millis() as u64);
    let state = AppState {
        ledger: ledger.clone(),
        raft: raft.clone(),
        batcher,
        metrics: prometheus,
        reporter,
        auth: std::sync::Arc::new(auth),
        fhir: std::sync::Arc::new(fhir),
        notes: crate::notes::Notes::new(store.clone(), ledger.clone()),
        verified,
        new_signers: std::sync::Arc::new(crate::auth::secrets::RateLimiter::new(
            NEW_SIGNERS_PER_S,
            NEW_SIGNERS_BURST,
        )),
        per_client: std::sync::Arc::new(crate::http::limits::PerClient::new(
            config.per_client.0,
            config.per_client.1,
        )),
        demo: config.demo.clone(),
        raft_log: log,
        store,
        data_dir: dd.dir.clone(),
        backups: std::sync::Arc::new(crate::backup::BackupStatus::new(config.backup.clone())),
    };
    tokio::spawn(crate::fhir::follow(state.fhir.clone(), ledger.clone()));
    crate::backup::socket::listen(&dd.dir, state.clone())?;
    crate::backup::schedule::start(state.clone());
    let per_client = state.per_client.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            every.tick().await;
            per_client.forget_idle();
        }
    });
    let app = crate::http::router(state, config.peer_rpc).layer(
        tower_http::trace::TraceLayer::new_for_http().make_span_with(
            |req: &axum::http::Request<_>| {
                // The matched route, never the raw URI: paths can carry identifiers.
                let route = req
                    .extensions()
                    .get::<axum::extract::MatchedPath>()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_default();
                tracing::info_span!("http", method = %req.method(), route)
            },
        ),
    );

    on_ready(&url);
    let result = if config.insecure_http {
        let l = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| NodeError::Server(e.to_string()))?;
        axum::serve(l, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(shutdown_signal())
            .await
            .map_err(|e| NodeError::Server(e.to_string()))
    } else {
        let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert, &key)
            .await
            .map_err(|e| NodeError::Tls(format!("{}: {e}", cert.display())))?;
        let handle = axum_server::Handle::new();
        let h = handle.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            h.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
        });
        axum_server::from_tcp_rustls(listener, tls)
            .map_err(|e| NodeError::Server(e.to_string()))?
            .handle(handle)
            .serve(app.into_make_service_with_connect_info::<SocketAddr>())
            .await
            .map_err(|e| NodeError::Server(e.to_string()))
    };
    let _ = raft.shutdown().await;
    let flushed = tokio::task::spawn_blocking(move || advance_mark(&ledger, signatures)).await;
    if !matches!(flushed, Ok(Ok(()))) {
        tracing::warn!("ledger flush at shutdown failed; the Raft log will be re-applied at start");
    }
    result
}

/// The erasure journal must survive the data directory's disk, so it may not live in it.
fn open_journal(
    data_dir: &std::path::Path,
    path: &std::path::Path,
) -> Result<crate::erasure_journal::Journal> {
    // The file itself when it exists (it may be a link), else its directory.
    let abs = |p: &std::path::Path| {
        std::fs::canonicalize(p).ok().or_else(|| {
            std::path::absolute(p)
                .ok()
                .and_then(|a| a.parent().and_then(|d| std::fs::canonicalize(d).ok()))
        })
    };
    let dir = std::fs::canonicalize(data_dir).map_err(|e| NodeError::io(data_dir, e))?;
    if abs(path).is_some_and(|p| p.starts_with(&dir)) {
        return Err(NodeError::Server(format!(
            "the erasure journal {} is inside the data directory: it must survive losing \
             that disk (put it on another one)",
            path.display()
        )));
    }
    crate::erasure_journal::Journal::open(path).map_err(|e| NodeError::Server(e.to_string()))
}

/// Advances the verified mark to the tip, if it moved (a durable commit, so it also
/// flushes the ledger).
fn advance_mark(ledger: &Ledger, signatures: bool) -> medledger_ledger::Result<()> {
    let at = ledger.verified_mark().ok().flatten().map(|m| m.height);
    if at == Some(ledger.tip().height) {
        return ledger.flush();
    }
    match ledger.record_verified(medledger_ledger::MarkSource::Applied, signatures) {
        Ok(_) => Ok(()),
        Err(e) => {
            // E.g. after a snapshot import: the next start checks everything; the
            // blocks still have to be durable.
            tracing::warn!(error = %e, "verified mark not advanced");
            ledger.flush()
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
