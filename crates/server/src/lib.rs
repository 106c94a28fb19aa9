//! The secondkey gateway service.
//!
//! Wires the deterministic core, Cedar policy, the store and the
//! transparency log behind the REST API; runs the expiry/escalation sweeper,
//! policy reload (SIGHUP and file changes) and the log sinks. This is the
//! only crate that knows HTTP.

pub mod admission;
mod after;
pub mod api;
pub mod auth;
pub mod config;
pub mod error;
pub mod extension;
pub mod gateway;
pub mod identity;
pub mod intercept;
pub mod jwt;
pub mod keys;
pub mod limits;
pub mod lineage;
pub mod logview;
pub mod metrics;
pub mod reload;
pub mod replicas;
pub mod reviewer;
pub mod views;
pub mod web;
pub mod witness;

use std::sync::Arc;
use std::time::Duration;

use secondkey_policy::PolicyEngine;
use secondkey_store::Store;

pub use config::{Config, ConfigError};
pub use extension::Extension;
pub use gateway::Gateway;
pub use intercept::{Denied, Execution, ExecutionResult, Held, Intercept, Lean, Verdict};

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    pub gateway: Arc<Gateway>,
}

/// Opens the store, loads keys and policy, records the start in the log.
/// Fails (and the gateway does not start) if any of that fails.
pub async fn build(config: Config) -> anyhow::Result<Arc<Gateway>> {
    build_with(config, |g| g).await
}

/// [`build`], with `adjust` applied to the gateway before it starts (tests
/// give it a clock they move).
pub async fn build_with(
    config: Config,
    adjust: impl FnOnce(Gateway) -> Gateway,
) -> anyhow::Result<Arc<Gateway>> {
    use anyhow::Context;
    let policy = PolicyEngine::load_dir_with(&config.policy_dir, &config.policy_options())
        .map_err(|e| anyhow::anyhow!("policy directory {}: {e}", config.policy_dir.display()))?;
    for w in policy.warnings() {
        tracing::warn!(warning = %w, "policy warning");
    }
    let log_signer = keys::load_or_create_log_signer(&config.log_key_file, &config.log_origin)?;
    let grant_key = keys::load_or_create_grant_key(&config.grant_key_file)?;
    let session_key = keys::load_or_create_secret(&config.data_dir.join("keys/session.key"))?;
    let store = Store::open(config.store_options())
        .with_context(|| format!("opening {}", config.store_place()))?;
    check_log_key(&store, &log_signer, &config.log_key_file)?;
    let gateway = Arc::new(adjust(
        Gateway::new(config, store, policy, log_signer, grant_key).with_session_key(session_key),
    ));
    // Sessions signed out or ended before this start stay dead: a store
    // that cannot say which refuses the start rather than revive them.
    gateway
        .web
        .sessions
        .load_revoked(&gateway.store, gateway.now().0 / 1000)
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot load the signed-out and ended web sessions (store records {} and {}), refusing to start: {e}",
                web::session::SIGNED_OUT_NS,
                web::session::ENDED_NS
            )
        })?;
    let (log_verifier, grant_kid) = gateway.key_ids();
    replicas::check_keys(
        &gateway,
        replicas::key_fingerprints(&log_verifier, &grant_kid, &session_key),
    )
    .await?;
    gateway
        .started()
        .await
        .map_err(|e| anyhow::anyhow!("the audit log is not writable, refusing to start: {e}"))?;
    Ok(gateway)
}

/// Refuses a log key that did not sign the embedded store's last
/// checkpoint: a log continued under another key (its file lost, or the gateway started
/// with another data directory's keys) would fail every auditor's check
/// with the key they hold.
fn check_log_key(
    store: &Store,
    signer: &secondkey_log::note::Signer,
    key_file: &std::path::Path,
) -> anyhow::Result<()> {
    use secondkey_log::checkpoint::Checkpoint;
    // Replicas on a shared store compare all their keys instead, naming
    // the files to copy from the others (`replicas::check_keys`).
    if store.is_shared() {
        return Ok(());
    }
    let Some(note) = store
        .get_meta("checkpoint")
        .map_err(|e| anyhow::anyhow!("cannot read the store's last checkpoint: {e}"))?
    else {
        return Ok(());
    };
    let verifier = signer.verifier();
    if Checkpoint::open(&note, &verifier).is_ok() {
        return Ok(());
    }
    let size = Checkpoint::parse_note_unverified(&note)
        .map(|c| c.size.to_string())
        .unwrap_or_else(|_| "?".into());
    anyhow::bail!(
        "the log key {} (verifier {verifier}) did not sign this store's log: its last checkpoint (size {size}) \
         was signed by another key. Put the key that signed it back at {} (or point [log] key_file at it) and \
         start again; a log continued under another key fails every auditor's check with the key they hold",
        key_file.display(),
        key_file.display()
    )
}

/// A running gateway: its address and a handle to stop it.
pub struct Running {
    pub addr: std::net::SocketAddr,
    pub gateway: Arc<Gateway>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The background lease's keeper (a shared store only).
    keeper: Option<replicas::Keeper>,
}

impl Running {
    /// Stops accepting connections, finishes in-flight requests, writes the
    /// tallied limit refusals and closes the store.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // In-flight requests get a grace period; idle keep-alive or
        // long-poll clients do not hold the shutdown hostage.
        let abort = self.task.abort_handle();
        let r = match tokio::time::timeout(std::time::Duration::from_secs(5), &mut self.task).await
        {
            Ok(r) => r.unwrap_or(Ok(())),
            Err(_) => {
                tracing::warn!("connections still open after 5 s; closing them");
                abort.abort();
                Ok(())
            }
        };
        // After-allows still waiting for their result are written now.
        self.gateway.flush_after().await;
        if let Err(e) = self.gateway.flush_refusals(true).await {
            tracing::warn!(error = %e, "could not record the last limit refusals at shutdown");
        }
        // Anchor what was signed last, so the next start checks against it.
        if let Err(e) = self.gateway.anchor_latest().await {
            tracing::warn!(error = %e, "could not anchor the last checkpoint at shutdown");
        }
        // And give the witnesses the final checkpoint (bounded: a witness
        // that is down does not hold the shutdown) — on a shared store only
        // the replica holding the background lease submits, as it does
        // while running.
        if !self.gateway.store.is_shared() || self.gateway.replica.is_leader() {
            let final_round = witness::submit_once(&self.gateway);
            if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(15), final_round).await {
                tracing::warn!(error = %e, "could not submit the last checkpoint to witnesses");
            }
        }
        // Hand the background work over at once, not after the lease lapses.
        if let Some(keeper) = self.keeper.take() {
            keeper.stop().await;
        }
        self.gateway.store.close();
        r
    }
}

/// Starts the gateway on `config.listen` (port 0 picks a free port) with the
/// sweeper, policy watcher and sinks.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    start_with(config, Vec::new()).await
}

/// [`start`] with extensions: their routes are served and each is started
/// (in order) before the gateway accepts connections.
pub async fn start_with(
    config: Config,
    extensions: Vec<Arc<dyn Extension>>,
) -> anyhow::Result<Running> {
    let listener = limits::conn::bind(config.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    let conn_limits = limits::conn::fit_to_open_files(
        config.limits.conn.clone(),
        limits::conn::raise_open_files_limit(),
    );
    let listener = limits::LimitedListener::new(listener, conn_limits);
    let mut config = config;
    if config.public_url == format!("http://{}", config.listen) && config.listen.port() == 0 {
        config.public_url = format!("http://{addr}");
    }
    // A configured sink that cannot be built (its secret's environment
    // variable unset, most often) refuses the start: the operator asked
    // for the export, so the gateway does not run without it. Checked
    // before the store is opened, so that a refused start leaves nothing
    // (no data directory, keys or `gateway.started` entry).
    for (i, cfg) in config.sinks.iter().enumerate() {
        cfg.build(&config.log_origin)
            .map_err(|e| anyhow::anyhow!("config key `sinks[{i}]`: {e}"))?;
    }
    let gateway = build(config).await?;
    let sinks = build_sinks(&gateway)?;
    let _ = gateway.connections.set(listener.connections());
    let keeper = spawn_background(gateway.clone(), sinks);
    let mut extra = axum::Router::new();
    let mut docs = Vec::new();
    for ext in &extensions {
        ext.start(gateway.clone())
            .map_err(|e| anyhow::anyhow!("{} did not start: {e}", ext.name()))?;
        extra = extra.merge(ext.routes());
        docs.extend(ext.openapi());
    }
    let app = api::router_with(
        AppState {
            gateway: gateway.clone(),
        },
        extra,
        docs,
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        limits::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await
    });
    Ok(Running {
        addr,
        gateway,
        shutdown: Some(tx),
        task,
        keeper,
    })
}

/// Starts the background tasks; on a shared store, returns the keeper of
/// the lease they run under.
fn spawn_background(gateway: Arc<Gateway>, sinks: Vec<BuiltSink>) -> Option<replicas::Keeper> {
    let g = gateway.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // Expiry and escalation run on one replica (the lease holder).
            if g.replica.is_leader() {
                if let Err(e) = g.sweep().await {
                    tracing::warn!(error = %e, "expiry sweep failed; will retry");
                }
            }
            if let Err(e) = g.anchor_latest().await {
                tracing::warn!(error = %e, "could not anchor the latest checkpoint; will retry");
            }
            if let Err(e) = g.flush_refusals(false).await {
                tracing::warn!(error = %e, "could not record limit refusals; will retry");
            }
        }
    });
    reload::spawn(gateway.clone());
    let keeper = replicas::spawn(gateway.clone());
    witness::spawn(gateway.clone());
    start_sinks(&gateway, sinks);
    keeper
}

/// A configured sink, built (no connection is made yet).
struct BuiltSink {
    sink: Box<dyn secondkey_sinks::Sink>,
    /// On a shared store, its cursor there (started, while the store holds
    /// none, where an earlier version's file cursor stopped).
    cursor: Option<logview::StoreCursor>,
}

/// Every configured sink, built, in order. On a shared store that holds
/// no cursor for a sink yet, the sink's file cursor of an earlier version
/// that is corrupt or past the log's end refuses the start.
fn build_sinks(gateway: &Arc<Gateway>) -> anyhow::Result<Vec<BuiltSink>> {
    let source = Arc::new(logview::StoreSource(gateway.store.clone()));
    let dir = gateway.config.data_dir.join("sinks");
    gateway
        .config
        .sinks
        .iter()
        .enumerate()
        .map(|(i, cfg)| {
            let sink = cfg
                .build_with_source(&gateway.config.log_origin, source.clone())
                .map_err(|e| anyhow::anyhow!("config key `sinks[{i}]`: {e}"))?;
            let cursor = if gateway.store.is_shared() {
                let c = logview::StoreCursor::sink(gateway.store.clone(), cfg.name())
                    .upgraded_from(&dir, "to send the whole log again from its first entry")
                    .map_err(|e| anyhow::anyhow!("sink `{}`: {e}", cfg.name()))?;
                Some(c)
            } else {
                None
            };
            Ok(BuiltSink { sink, cursor })
        })
        .collect()
}

/// Runs the sinks [`build_sinks`] made, one per configured sink.
fn start_sinks(gateway: &Arc<Gateway>, sinks: Vec<BuiltSink>) {
    if sinks.is_empty() {
        return;
    }
    let source = Arc::new(logview::StoreSource(gateway.store.clone()));
    let dir = gateway.config.data_dir.join("sinks");
    for (cfg, BuiltSink { sink, cursor }) in gateway.config.sinks.iter().zip(sinks) {
        if let Some(cursor) = cursor {
            // Replicas take turns (the background lease) on a cursor kept
            // in the store.
            logview::run_sink(gateway, cfg.name(), sink, source.clone(), cursor);
        } else {
            let cursor = match secondkey_sinks::FileCursor::open(&dir, cfg.name()) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(sink = cfg.name(), error = %e, "sink cursor unavailable; sink not started");
                    continue;
                }
            };
            logview::run_sink(gateway, cfg.name(), sink, source.clone(), cursor);
        }
        tracing::info!(sink = cfg.name(), "sink started");
    }
}

/// Runs until SIGINT/SIGTERM.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    serve_with(config, Vec::new()).await
}

/// [`serve`] with extensions (see [`start_with`]).
pub async fn serve_with(config: Config, extensions: Vec<Arc<dyn Extension>>) -> anyhow::Result<()> {
    let running = start_with(config, extensions).await?;
    tracing::info!(addr = %running.addr, "secondkey gateway listening");
    eprintln!("secondkey gateway listening on http://{}", running.addr);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("shutting down");
    running.stop().await?;
    Ok(())
}
