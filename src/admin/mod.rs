//! The side listener for operators: `GET /healthz` (the process runs), `GET /readyz` (every
//! issuer has keys: 503 until then), `GET /metrics` (Prometheus text), `POST /reload`
//! (re-read the config file, as SIGHUP does) and `POST /explain` (what the gateway would do
//! with a request, step by step, without counting or forwarding it). `guard` decides first who may ask: only
//! requests naming this listener in `Host`, never a browser page, and with `[admin] token`
//! set, only its holders (the probes excepted). Its settings follow reloads.

mod console;
mod guard;

use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::metrics::Metrics;

use crate::reload::Reloader;
use crate::rules::explain::{explain, ExplainInput};
use crate::state::SharedState;

/// The largest `POST /explain` body read.
const MAX_EXPLAIN_BODY: usize = 256 * 1024;

/// `POST /explain`'s body: the request to explain.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ExplainBody {
    #[serde(default = "get")]
    method: String,
    path: String,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, OneOrMany>,
    /// Sent as `Authorization: Bearer …` unless `headers` has an Authorization.
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    tls: bool,
    /// The client address; default: the address of the caller of `/explain`.
    #[serde(default)]
    peer: Option<std::net::IpAddr>,
}

fn get() -> String {
    "GET".into()
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

fn bad_request(description: &str) -> Response<Vec<u8>> {
    json(
        StatusCode::BAD_REQUEST,
        serde_json::json!({"error": "invalid_request", "error_description": description}),
    )
}

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

impl AdminApp {
    /// `POST /explain`: the live decision for the request described in the JSON body, with
    /// the live keys and the live limiter state; nothing is counted, nothing is forwarded.
    async fn explain(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let mut raw = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) if raw.len() + chunk.len() <= MAX_EXPLAIN_BODY => {
                    raw.extend_from_slice(&chunk)
                }
                Ok(Some(_)) => return bad_request("body larger than 256 KiB"),
                Ok(None) => break,
                Err(_) => return bad_request("the body could not be read"),
            }
        }
        let body: ExplainBody = match serde_json::from_slice(&raw) {
            Ok(b) => b,
            // serde's message names the field and the expected type; never a value.
            Err(e) => return bad_request(&format!("body: {}", describe_json_error(&e))),
        };
        let peer = body.peer.or_else(|| {
            session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip())
        });
        let input = ExplainInput {
            method: body.method,
            target: body.path,
            headers: body
                .headers
                .into_iter()
                .flat_map(|(n, v)| match v {
                    OneOrMany::One(v) => vec![(n, v)],
                    OneOrMany::Many(vs) => vs.into_iter().map(|v| (n.clone(), v)).collect(),
                })
                .collect(),
            token: body.token,
            body: body.body.unwrap_or_default().into_bytes(),
            tls: body.tls,
            peer: peer.unwrap_or(std::net::IpAddr::from([127, 0, 0, 1])),
        };
        let snap = self.state.load_full();
        match explain(&snap, &self.metrics, &input).await {
            Ok(e) => match serde_json::to_value(&e) {
                Ok(v) => json(StatusCode::OK, v),
                Err(_) => json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    serde_json::json!({"error": "server_error", "error_description": "the explanation could not be encoded"}),
                ),
            },
            Err(msg) => bad_request(&msg),
        }
    }
}

/// A JSON error without the input's text (it may hold a token).
fn describe_json_error(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    // serde_json quotes offending string values as `invalid value: string "…"`; keep only the
    // part before any quoted value.
    match msg.find(" \"") {
        Some(i) if matches!(e.classify(), serde_json::error::Category::Data) => {
            format!("{} (line {}, column {})", &msg[..i], e.line(), e.column())
        }
        _ => msg,
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
    r.headers_mut().insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    r
}

/// The console page's content security policy, and no framing, no sniffing.
fn with_csp(mut r: Response<Vec<u8>>) -> Response<Vec<u8>> {
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_static(console::CSP),
    );
    h.insert(
        http::header::X_FRAME_OPTIONS,
        http::HeaderValue::from_static("DENY"),
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
            (Method::POST, "/explain") => self.explain(session).await,
            (Method::GET | Method::HEAD, "/") => with_csp(respond(
                StatusCode::OK,
                "text/html; charset=utf-8",
                console::PAGE.into(),
            )),
            (Method::GET | Method::HEAD, "/console.js") => respond(
                StatusCode::OK,
                "text/javascript; charset=utf-8",
                console::SCRIPT.into(),
            ),
            (Method::GET | Method::HEAD, "/console.css") => respond(
                StatusCode::OK,
                "text/css; charset=utf-8",
                console::STYLE.into(),
            ),
            (Method::GET, "/console.json") => {
                let snap = self.state.load();
                json(StatusCode::OK, console::data(&snap, &self.metrics))
            }
            (
                _,
                "/healthz" | "/readyz" | "/metrics" | "/reload" | "/explain" | "/" | "/console.js"
                | "/console.css" | "/console.json",
            ) => json(
                StatusCode::METHOD_NOT_ALLOWED,
                serde_json::json!({"error": "method_not_allowed", "error_description": "method not allowed"}),
            ),
            _ => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "not_found", "error_description": "admin endpoints: / (console) /healthz /readyz /metrics /reload /explain /console.json"}),
            ),
        }
    }
}
