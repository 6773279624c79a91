//! The side listener for operators: `GET /healthz` (the process runs), `GET /readyz` (every
//! issuer has keys: 503 until then), `GET /metrics` (Prometheus text) and `POST /reload`
//! (re-read the config file, as SIGHUP does). `guard` decides first who may ask: only
//! requests naming this listener in `Host`, never a browser page, and with `[admin] token`
//! set, only its holders (the probes excepted). Its settings follow reloads.

mod guard;

use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::metrics::Metrics;

use crate::reload::Reloader;
use crate::state::SharedState;

pub(crate) struct AdminApp {
    state: SharedState,
    metrics: Arc<Metrics>,
    reloader: Option<Arc<Reloader>>,
    /// Readiness opens after every issuer had keys once and never closes: a later JWKS
    /// outage or a reload adding an issuer must not pull every replica out of the balancer.
    ready_latch: std::sync::atomic::AtomicBool,
}

impl AdminApp {
    pub(crate) fn new(
        state: SharedState,
        metrics: Arc<Metrics>,
        reloader: Option<Arc<Reloader>>,
    ) -> Self {
        AdminApp {
            state,
            metrics,
            reloader,
            ready_latch: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn ready(&self, snap: &crate::state::Snapshot) -> bool {
        use std::sync::atomic::Ordering;
        if self.ready_latch.load(Ordering::Acquire) {
            return true;
        }
        let now = snap.ready();
        if now {
            self.ready_latch.store(true, Ordering::Release);
        }
        now
    }
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    if let Ok(v) = http::HeaderValue::from_str(&r.body().len().to_string()) {
        r.headers_mut().insert(http::header::CONTENT_LENGTH, v);
    }
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Vec<u8>> {
    respond(status, "application/json", v.to_string().into_bytes())
}

fn refused(r: guard::Refusal) -> Response<Vec<u8>> {
    let (error, description) = r.error_pair();
    let mut resp = json(
        r.status(),
        serde_json::json!({"error": error, "error_description": description}),
    );
    if let Some(v) = r
        .www_authenticate()
        .and_then(|v| http::HeaderValue::from_str(&v).ok())
    {
        resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// `POST /reload` takes no body: one means a client that thinks it sends something.
fn has_body(headers: &http::HeaderMap) -> bool {
    headers.contains_key(http::header::TRANSFER_ENCODING)
        || headers
            .get_all(http::header::CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes() != b"0")
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let local = session.server_addr().and_then(|a| a.as_inet()).copied();
        let admitted = guard::admit(session.req_header(), local, &self.state.load().config.admin);
        if let Err(r) = admitted {
            // No header values here: they are the caller's and may hold a token.
            tracing::info!(reason = r.reason(), %method, path = %path, "admin request refused");
            return refused(r);
        }
        match (method, path.as_str()) {
            (Method::GET | Method::HEAD, "/healthz") => {
                json(StatusCode::OK, serde_json::json!({"status": "ok"}))
            }
            (Method::GET | Method::HEAD, "/readyz") => {
                let snap = self.state.load();
                let issuers: serde_json::Map<String, serde_json::Value> = snap
                    .auth
                    .issuers()
                    .iter()
                    .map(|i| {
                        (
                            i.name().to_string(),
                            serde_json::json!({"ready": i.is_ready(), "keys": i.keys().keys.len()}),
                        )
                    })
                    .collect();
                let ready = self.ready(&snap);
                self.metrics.ready.set(i64::from(ready));
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                json(
                    status,
                    serde_json::json!({"status": if ready { "ready" } else { "not_ready" }, "issuers": issuers}),
                )
            }
            (Method::GET, "/metrics") => {
                let snap = self.state.load();
                let ready = self.ready(&snap);
                self.metrics.ready.set(i64::from(ready));
                self.metrics
                    .token_cache_entries
                    .set(snap.auth.cached_tokens() as i64);
                respond(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    self.metrics.render(),
                )
            }
            (Method::POST, "/reload") if has_body(&session.req_header().headers) => json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": "invalid_request", "error_description": "POST /reload takes no body"}),
            ),
            (Method::POST, "/reload") => match &self.reloader {
                None => json(
                    StatusCode::NOT_FOUND,
                    serde_json::json!({"error": "not_found", "error_description": "this gateway has no config file to reload"}),
                ),
                Some(r) => match r.reload().await {
                    Ok(()) => json(StatusCode::OK, serde_json::json!({"status": "reloaded"})),
                    Err(problems) => json(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        serde_json::json!({"error": "invalid_config", "error_description": "config refused; the running config stays", "problems": problems}),
                    ),
                },
            },
            (_, "/healthz" | "/readyz" | "/metrics" | "/reload") => json(
                StatusCode::METHOD_NOT_ALLOWED,
                serde_json::json!({"error": "method_not_allowed", "error_description": "method not allowed"}),
            ),
            _ => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "not_found", "error_description": "admin endpoints: /healthz /readyz /metrics /reload"}),
            ),
        }
    }
}
