//! Hot reload: on SIGHUP or `POST /reload` the config file is re-read and validated; a valid
//! file becomes a new snapshot (routes, scopes, limits, issuers, upstreams) swapped in
//! atomically without touching connections, an invalid one is refused with its problems
//! logged and the running config stays. Listener addresses, TLS and threads need a restart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tracing::{error, info, warn};

use crate::metrics::Metrics;
use crate::state::{SharedState, Snapshot};

pub(crate) struct Reloader {
    path: PathBuf,
    state: SharedState,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
    /// One reload at a time.
    lock: tokio::sync::Mutex<()>,
}

/// Longest a reload waits for the keys of a new or changed issuer before swapping anyway.
const WARM_UP_LIMIT: Duration = Duration::from_secs(5);

impl Reloader {
    pub(crate) fn new(
        path: PathBuf,
        state: SharedState,
        http: reqwest::Client,
        metrics: Arc<Metrics>,
    ) -> Self {
        Reloader {
            path,
            state,
            http,
            metrics,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Re-read the file; `Err` lists every problem (the running config stays). Issuers that
    /// are new or changed their key source get their keys fetched before the swap, so their
    /// tokens are never answered 503 in between.
    pub(crate) async fn reload(&self) -> Result<(), Vec<String>> {
        let _one = self.lock.lock().await;
        let path = self.path.clone();
        // Reading the file and resolving peer names may block: not on an async worker.
        let loaded = tokio::task::spawn_blocking(move || crate::config::load(&path))
            .await
            .map_err(|e| vec![format!("config loader failed: {e}")])
            .and_then(|r| r.map_err(|e| e.problems()));
        let current = self.state.load_full();
        let result = loaded.and_then(|cfg| {
            // The admin token and allowed_hosts are read per request: they apply now.
            if cfg.server != current.config.server || cfg.admin.listen != current.config.admin.listen {
                warn!("server/admin settings changed: listeners, TLS and threads take effect after a restart");
            }
            Snapshot::build(cfg, Some(&current), &self.http, &self.metrics).map_err(|e| vec![e.to_string()])
        });
        match result {
            Ok(snap) => {
                snap.warm_up(&self.http, WARM_UP_LIMIT).await;
                for i in snap.auth.issuers().iter().filter(|i| !i.is_ready()) {
                    warn!(issuer = %i.name(), "reloaded without keys for this issuer yet; its tokens get 503 until they load");
                }
                let routes = snap.routes.len();
                let kept: Vec<String> = snap
                    .auth
                    .issuers()
                    .iter()
                    .map(|i| i.name().to_string())
                    .collect();
                self.state.store(Arc::new(snap));
                for old in current.auth.issuers() {
                    if !kept.iter().any(|k| k == old.name()) {
                        self.metrics.forget_issuer(old.name());
                    }
                }
                self.metrics.config_reloads.with_label_values(&["ok"]).inc();
                let unix = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                self.metrics.config_last_reload_success.set(unix as i64);
                info!(path = %self.path.display(), routes, "config reloaded");
                Ok(())
            }
            Err(problems) => {
                self.metrics
                    .config_reloads
                    .with_label_values(&["error"])
                    .inc();
                for p in &problems {
                    error!(path = %self.path.display(), problem = %p, "config reload refused; keeping the running config");
                }
                Err(problems)
            }
        }
    }
}

/// Waits for SIGHUP and reloads.
pub(crate) struct SighupListener {
    pub reloader: Arc<Reloader>,
}

#[async_trait]
impl BackgroundService for SighupListener {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "cannot listen for SIGHUP; use POST /reload on the admin listener");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                got = hup.recv() => {
                    if got.is_none() { return; }
                    info!("SIGHUP received; reloading config");
                    let _ = self.reloader.reload().await;
                }
            }
        }
    }
}
