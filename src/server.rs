//! Assembly: one validated config -> a pingora `Server` with the data listener (the
//! `Gateway` proxy), the admin listener, the JWKS refresher and the SIGHUP reloader.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::proxy::http_proxy;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{ExecutionPhase, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::admin::AdminApp;
use crate::config::GatewayConfig;
use crate::metrics::Metrics;
use crate::proxy::conn::ConnMetrics;
use crate::proxy::conn::{ConnApp, ConnLimits};
use crate::proxy::Gateway;
use crate::refresher::JwksRefresher;
use crate::reload::{Reloader, SighupListener};
use crate::state::{SharedState, Snapshot};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("rate limiter: {0}")]
    RateLimit(#[from] crate::ratelimit::RateLimitError),
    #[error("http client: {0}")]
    Http(String),
    #[error("tls listener: {0}")]
    Tls(String),
}

/// Handles kept by the caller (tests, benches) besides the server itself.
pub struct Built {
    pub server: Server,
    pub state: SharedState,
    pub metrics: Arc<Metrics>,
}

/// Build the server. `config_path` enables reloads (SIGHUP, `POST /reload`); `upgrade`
/// takes the listeners over from a running instance (pingora zero-downtime upgrade).
pub fn build(
    cfg: GatewayConfig,
    config_path: Option<PathBuf>,
    upgrade: bool,
) -> Result<Server, BuildError> {
    Ok(build_parts(cfg, config_path, upgrade)?.server)
}

pub fn build_parts(
    cfg: GatewayConfig,
    config_path: Option<PathBuf>,
    upgrade: bool,
) -> Result<Built, BuildError> {
    let metrics = Arc::new(Metrics::new()?);
    let http = reqwest::Client::builder()
        .user_agent(concat!("wetrials-gateway/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(3))
        .build()
        .map_err(|e| BuildError::Http(e.to_string()))?;

    let listen = cfg.server.listen.clone();
    let admin_listen = cfg.admin.listen.clone();
    let tls = cfg.server.tls.clone();
    let client_tls = cfg.server.client_tls.clone();
    let h2c = cfg.server.h2c;
    let access_log = cfg.logging.access_log;
    let threads = cfg.server.threads;
    let conn_limits = ConnLimits::from_settings(&cfg.server);
    let mut conf = ServerConf {
        threads: cfg.server.threads,
        upstream_keepalive_pool_size: cfg.server.upstream_keepalive_pool_size,
        grace_period_seconds: Some(cfg.server.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(5),
        work_stealing: true,
        ..ServerConf::default()
    };
    conf.upgrade_sock = cfg.server.upgrade_sock.clone();
    conf.pid_file = cfg.server.pid_file.clone();
    let snapshot = Snapshot::build(cfg, None, &http, &metrics)?;
    // Fetch the keys before taking the listeners: a fresh instance is ready sooner, and one
    // taking over from a running instance (--upgrade) never answers 503 while its keys load.
    prefetch_keys(&snapshot);
    let state: SharedState = Arc::new(ArcSwap::from_pointee(snapshot));

    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let gateway = Gateway::new(state.clone(), metrics.clone(), access_log, tls.is_some());
    let mut app = http_proxy(&server.configuration, gateway);
    let mut opts = HttpServerOptions::default();
    opts.h2c = h2c;
    opts.h2_idle_timeout = Some(conn_limits.keepalive_timeout);
    app.server_options = Some(opts);
    // Connection caps and head limits sit below pingora's HTTP handling (see proxy::conn).
    let app = ConnApp::new(app, conn_limits, ConnMetrics::new(metrics.registry())?);
    let mut proxy = Service::new("wetrials-gateway".to_string(), app);
    match &tls {
        Some((cert, key)) => {
            let mut settings =
                TlsSettings::intermediate(&cert.to_string_lossy(), &key.to_string_lossy())
                    .map_err(|e| BuildError::Tls(e.to_string()))?;
            settings.enable_h2();
            if let Some(ct) = &client_tls {
                settings.set_client_cert_verifier(client_verifier(ct)?);
            }
            proxy.add_tls_with_settings(&listen, None, settings);
        }
        None => proxy.add_tcp(&listen),
    }
    proxy.threads = Some(threads);

    let reloader = config_path.map(|p| {
        Arc::new(Reloader::new(
            p,
            state.clone(),
            http.clone(),
            metrics.clone(),
        ))
    });
    let mut admin = Service::new(
        "wetrials-gateway admin".to_string(),
        AdminApp::new(state.clone(), metrics.clone(), reloader.clone()),
    );
    admin.add_tcp(&admin_listen);
    admin.threads = Some(1);

    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(background_service(
        "jwks refresher",
        JwksRefresher::new(state.clone()),
    ));
    if let Some(r) = reloader {
        server.add_service(background_service(
            "sighup reloader",
            SighupListener { reloader: r },
        ));
    }
    drain_then_exit(
        &server,
        metrics.clone(),
        Duration::from_secs(server.configuration.grace_period_seconds.unwrap_or(30)),
    );
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    metrics.config_last_reload_success.set(unix as i64);
    Ok(Built {
        server,
        state,
        metrics,
    })
}

/// Longest start-up waits for the first keys before serving anyway (503 for JWT routes and
/// `/readyz` until the background refresher gets them).
const PREFETCH_LIMIT: Duration = Duration::from_secs(10);

fn prefetch_keys(snapshot: &Snapshot) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!(error = %e, "cannot prefetch keys; the refresher will load them");
            return;
        }
    };
    // A client of its own: pooled connections belong to the runtime that made them.
    let Ok(http) = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .build()
    else {
        return;
    };
    runtime.block_on(snapshot.warm_up(&http, PREFETCH_LIMIT));
}

/// Client certificates must chain to the configured CAs (RFC 8705 §2.1: certificate-bound
/// tokens then bind to a verified certificate); optional unless `client_auth = "required"`.
fn client_verifier(
    ct: &crate::config::ClientTls,
) -> Result<Arc<dyn pingora::tls::ClientCertVerifier>, BuildError> {
    use pingora::tls::{RootCertStore, WebPkiClientVerifier};
    pingora::tls::install_default_crypto_provider();
    let mut roots = RootCertStore::empty();
    pingora::tls::load_ca_file_into_store(&ct.ca_path, &mut roots)
        .map_err(|e| BuildError::Tls(format!("client_ca_path: {e}")))?;
    let builder = WebPkiClientVerifier::builder(Arc::new(roots));
    let builder = if ct.required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder
        .build()
        .map_err(|e| BuildError::Tls(format!("client_ca_path: {e}")))
}

/// pingora sleeps the whole grace period after SIGTERM; we exit as soon as no request is
/// in flight (in-flight requests still get up to the grace period).
fn drain_then_exit(server: &Server, metrics: Arc<Metrics>, grace: Duration) {
    let mut phases = server.watch_execution_phase();
    let spawned = std::thread::Builder::new()
        .name("drain-watch".into())
        .spawn(move || loop {
            match phases.blocking_recv() {
                Ok(ExecutionPhase::ShutdownGracePeriod) => {
                    let start = std::time::Instant::now();
                    // Let listeners close and requests accepted just before the signal register.
                    std::thread::sleep(Duration::from_millis(200));
                    while start.elapsed() < grace {
                        if metrics.in_flight.get() <= 0 {
                            tracing::info!("drained; exiting");
                            std::process::exit(0);
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    return;
                }
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the drain watcher; shutdown waits the whole grace period");
    }
}
