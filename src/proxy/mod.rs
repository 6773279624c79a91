//! The pingora seam: `Gateway` implements `ProxyHttp`. Each request runs the gates in a fixed
//! order in `request_filter` — route -> authenticate -> scopes -> rate limit — and is either
//! answered there (a `Reject`) or forwarded to its route's upstream with identity headers.

mod clientkey;
mod reject;
mod upstream;

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, COOKIE};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{ErrorSource, ErrorType};
use tracing::{info, warn};

pub use clientkey::client_ip;
pub use reject::{json_error, Reject, REALM};
pub use upstream::Upstream;

use crate::admin::Metrics;
use crate::auth::{bearer, AuthError, Principal};
use crate::config::AuthMode;
use crate::policy::{normalize_path, KeySource, Route};
use crate::ratelimit::Decision;
use crate::state::{SharedState, Snapshot};

/// The proxy: reads the current snapshot, records metrics, writes access logs.
pub struct Gateway {
    state: SharedState,
    metrics: Arc<Metrics>,
    access_log: bool,
    tls: bool,
}

impl Gateway {
    pub fn new(state: SharedState, metrics: Arc<Metrics>, access_log: bool, tls: bool) -> Self {
        Gateway {
            state,
            metrics,
            access_log,
            tls,
        }
    }
}

/// How the request ended, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pending,
    Forwarded,
    Rejected(&'static str),
    UpstreamFailed,
}

/// Decisions carried between phases.
pub struct RequestCtx {
    snap: Arc<Snapshot>,
    start: Instant,
    request_id: String,
    route: Option<Arc<Route>>,
    principal: Option<Arc<Principal>>,
    /// The normalised path, when it differs from the request's.
    rewritten_path: Option<String>,
    client_ip: Option<IpAddr>,
    client_id: Option<String>,
    rate: Option<Decision>,
    auth_result: &'static str,
    outcome: Outcome,
    peer_start: usize,
    attempt: usize,
    upstream_start: Option<Instant>,
    in_flight: bool,
}

fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= 128 && v.iter().all(|b| b.is_ascii_graphic())
}

fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl Gateway {
    /// Gates in order; `Ok` = forward, `Err` = answer with the rejection.
    async fn admit(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<(), Reject> {
        let snap = ctx.snap.clone();
        let req = session.req_header();
        // 1. which route?
        let raw_path = req.uri.path();
        let path = normalize_path(raw_path).map_err(|e| Reject::BadPath(e.describe()))?;
        let route = snap
            .routes
            .find(&req.method, &path)
            .cloned()
            .ok_or(Reject::NoRoute)?;
        if let std::borrow::Cow::Owned(p) = path {
            ctx.rewritten_path = Some(p);
        }
        ctx.route = Some(route.clone());

        // 2. who is calling?
        if route.auth == AuthMode::Jwt {
            let mut seen = None;
            let principal = match self.authenticate(session, &snap, &route, &mut seen).await {
                Ok(p) => p,
                Err(e) => {
                    let issuer = seen
                        .and_then(|i| snap.auth.issuers().get(i))
                        .map(|i| i.name())
                        .unwrap_or("_unknown");
                    self.metrics.auth(issuer, e.reason());
                    ctx.auth_result = e.reason();
                    return Err(Reject::Auth(e));
                }
            };
            // 2b. may it use this route?
            if let Err(missing) = route.scopes.check(principal.scopes()) {
                self.metrics
                    .auth(snap.auth.issuer_name(&principal), "insufficient_scope");
                ctx.auth_result = "insufficient_scope";
                ctx.principal = Some(principal);
                return Err(Reject::Scope(missing));
            }
            if let Some(ok) = snap.auth_ok.get(principal.issuer_index) {
                ok.inc();
            }
            ctx.auth_result = "ok";
            ctx.principal = Some(principal);
        } else {
            ctx.auth_result = "public";
        }

        // 3. may they, right now?
        if !route.limits.is_empty() {
            let key = self.limit_key(session, ctx, &route).await?;
            match snap.limiter.check(&route.name, &route.limits, &key).await {
                Ok(decision) => {
                    let allowed = decision.allowed;
                    if let Some(d) = &snap.route_metrics[route.index].decisions {
                        if allowed {
                            d.allowed.inc();
                        } else {
                            d.limited.inc();
                        }
                    }
                    let retry = decision.retry_after.map(ceil_secs).unwrap_or(1).max(1);
                    ctx.rate = Some(decision);
                    if !allowed {
                        return Err(Reject::RateLimited {
                            retry_after_secs: retry,
                        });
                    }
                }
                Err(e) => {
                    if let Some(d) = &snap.route_metrics[route.index].decisions {
                        d.error.inc();
                    }
                    warn!(route = %route.name, error = %e, "rate limiter unavailable; failing closed");
                    return Err(Reject::LimiterUnavailable);
                }
            }
        }
        Ok(())
    }

    async fn authenticate(
        &self,
        session: &Session,
        snap: &Snapshot,
        route: &Route,
        seen: &mut Option<usize>,
    ) -> Result<Arc<Principal>, AuthError> {
        let req = session.req_header();
        let max = snap.config.server.max_token_bytes;
        let token = match bearer::from_authorization(
            req.headers
                .get_all(AUTHORIZATION)
                .iter()
                .map(|v| v.as_bytes()),
            max,
        ) {
            Err(AuthError::MissingToken) => {
                // Only routes that opt in look elsewhere.
                let from_query = route
                    .token_query_param
                    .as_deref()
                    .and_then(|name| clientkey::query_param(req.uri.query(), name));
                let from_cookie = route.token_cookie.as_deref().and_then(|name| {
                    clientkey::cookie(
                        req.headers.get_all(COOKIE).iter().map(|v| v.as_bytes()),
                        name,
                    )
                });
                match from_query.or(from_cookie) {
                    Some(t) => {
                        let t = bearer::from_value(&t, max)?;
                        return self.authenticate_token(snap, route, t.0, seen).await;
                    }
                    None => return Err(AuthError::MissingToken),
                }
            }
            other => other?,
        };
        self.authenticate_token(snap, route, token.0, seen).await
    }

    async fn authenticate_token(
        &self,
        snap: &Snapshot,
        route: &Route,
        token: &str,
        seen: &mut Option<usize>,
    ) -> Result<Arc<Principal>, AuthError> {
        let p = snap
            .auth
            .authenticate(bearer::BearerToken(token), seen)
            .await?;
        if let Some(allowed) = &route.issuers {
            let name = snap.auth.issuer_name(&p);
            if !allowed.iter().any(|n| **n == *name) {
                return Err(AuthError::IssuerNotAllowed);
            }
        }
        Ok(p)
    }

    /// The limiter key: first source that yields a value; `anonymous` when none does.
    async fn limit_key(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
    ) -> Result<String, Reject> {
        // Values are borrowed where they can be (the subject, a header) and copied once, into
        // the key. The principal is held by its own handle so `ctx` stays free to update.
        let principal = ctx.principal.clone();
        for source in &route.limit_key {
            let req = session.req_header();
            let value: Option<Cow<'_, str>> = match source {
                KeySource::Sub => principal.as_deref().and_then(Principal::sub).map(Cow::from),
                KeySource::Ip => ctx.client_ip.map(|ip| Cow::from(ip.to_string())),
                KeySource::Header(name) => req
                    .headers
                    .get(name.as_str())
                    .and_then(|v| v.to_str().ok())
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(Cow::from),
                KeySource::Cookie(name) => clientkey::cookie(
                    req.headers.get_all(COOKIE).iter().map(|v| v.as_bytes()),
                    name,
                )
                .map(Cow::from),
                KeySource::Query(name) => {
                    clientkey::query_param(req.uri.query(), name).map(Cow::from)
                }
                KeySource::ClientId => {
                    let from_token = principal
                        .as_deref()
                        .and_then(Principal::client_id)
                        .map(str::to_string);
                    let from_basic = || {
                        req.headers
                            .get(AUTHORIZATION)
                            .and_then(|v| clientkey::basic_client_id(v.as_bytes()))
                    };
                    let id = match from_token.or_else(from_basic) {
                        Some(id) => Some(id),
                        None => self.body_client_id(session, &ctx.snap).await?,
                    };
                    if let Some(id) = &id {
                        ctx.client_id = Some(id.clone());
                    }
                    id.map(Cow::from)
                }
            };
            if let Some(v) = value {
                let tag = match source {
                    KeySource::Header(n) => Cow::from(format!("header:{n}")),
                    KeySource::Cookie(n) => Cow::from(format!("cookie:{n}")),
                    KeySource::Query(n) => Cow::from(format!("query:{n}")),
                    other => Cow::from(other.tag()),
                };
                return Ok(clientkey::key(&tag, &v));
            }
        }
        Ok("anonymous".to_string())
    }

    /// Read a small form or JSON body to find `client_id`; the body still reaches the
    /// upstream byte for byte (pingora's retry buffer).
    async fn body_client_id(
        &self,
        session: &mut Session,
        snap: &Snapshot,
    ) -> Result<Option<String>, Reject> {
        let req = session.req_header();
        let Some(ct) = req
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
        else {
            return Ok(None);
        };
        if !clientkey::readable_body_type(&ct) {
            return Ok(None);
        }
        let max = snap.config.server.max_body_bytes;
        if let Some(len) = req.headers.get(CONTENT_LENGTH) {
            match len
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
            {
                Some(n) if n > max => return Err(Reject::BodyTooLarge(max)),
                Some(_) => {}
                None => return Err(Reject::BadBody("malformed Content-Length")),
            }
        }
        // A client waiting for `100 Continue` would otherwise wait (curl: 1 s) before sending.
        let expects_continue = req
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expects_continue {
            session
                .as_downstream_mut()
                .write_continue_response()
                .await
                .map_err(|_| Reject::BadBody("could not answer Expect: 100-continue"))?;
        }
        session.enable_retry_buffering();
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > max {
                        return Err(Reject::BodyTooLarge(max));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(_) => return Err(Reject::BadBody("request body could not be read")),
            }
        }
        if session.as_ref().retry_buffer_truncated() {
            return Err(Reject::BodyTooLarge(max));
        }
        clientkey::body_client_id(&ct, &body).map_err(Reject::BadBody)
    }

    async fn write_reject(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        reject: &Reject,
    ) -> Result<()> {
        let body = reject.body();
        let mut header = reject.response_header(&ctx.request_id, body.len())?;
        if let (Some(route), Some(d)) = (&ctx.route, &ctx.rate) {
            add_rate_headers(&mut header, route, d)?;
        }
        // An unread request body would poison a kept-alive connection.
        if !session.is_body_done() {
            session.set_keepalive(None);
        }
        session
            .write_response_header(Box::new(header), false)
            .await?;
        session.write_response_body(Some(body), true).await?;
        Ok(())
    }
}

fn add_rate_headers(h: &mut ResponseHeader, route: &Route, d: &Decision) -> Result<()> {
    h.insert_header("ratelimit-limit", d.limit.to_string())?;
    h.insert_header("ratelimit-remaining", d.remaining.to_string())?;
    h.insert_header("ratelimit-reset", ceil_secs(d.reset).to_string())?;
    h.insert_header("ratelimit-policy", route.limit_policy.as_str())?;
    Ok(())
}

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// Names a client's `Connection` header may list that are not removed for it: connection
/// options, and headers the gateway needs or sets itself (`X-Auth-*` are stripped anyway).
const KEEP_EVEN_IF_LISTED: [&str; 6] = [
    "upgrade",
    "close",
    "keep-alive",
    "host",
    "authorization",
    "content-length",
];

/// Hop-by-hop headers (RFC 9110 §7.6.1) that must not be forwarded, plus the ones a client
/// may not set for the upstream (`X-Auth-*`). One pass over the names: most requests carry
/// none of them, and then nothing is looked up or allocated.
fn strip_request_headers(h: &mut RequestHeader) {
    let mut doomed: Vec<http::HeaderName> = Vec::new();
    let mut connection = false;
    for (name, value) in h.headers.iter() {
        let drop = match name.as_str() {
            "keep-alive" | "proxy-connection" | "proxy-authorization" | "trailer" => true,
            // `TE: trailers` is the one value a proxy may pass on.
            "te" => !value
                .to_str()
                .is_ok_and(|v| v.trim().eq_ignore_ascii_case("trailers")),
            "connection" => {
                connection = true;
                false
            }
            n => n.starts_with("x-auth-"),
        };
        if drop {
            doomed.push(name.clone());
        }
    }
    if connection {
        // Headers the client listed in Connection are hop-by-hop too, except the ones the
        // gateway itself needs or sets.
        for v in h.headers.get_all(http::header::CONNECTION) {
            let Ok(v) = v.to_str() else { continue };
            for listed in v.split(',').map(str::trim) {
                let keep = listed.is_empty()
                    || KEEP_EVEN_IF_LISTED
                        .iter()
                        .any(|k| listed.eq_ignore_ascii_case(k))
                    || listed
                        .get(..7)
                        .is_some_and(|p| p.eq_ignore_ascii_case("x-auth-"));
                if !keep {
                    if let Ok(n) = http::HeaderName::from_bytes(listed.as_bytes()) {
                        doomed.push(n);
                    }
                }
            }
        }
    }
    for name in &doomed {
        h.remove_header(name);
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            snap: self.state.load_full(),
            start: Instant::now(),
            request_id: String::new(),
            route: None,
            principal: None,
            rewritten_path: None,
            client_ip: None,
            client_id: None,
            rate: None,
            auth_result: "-",
            outcome: Outcome::Pending,
            peer_start: 0,
            attempt: 0,
            upstream_start: None,
            in_flight: false,
        }
    }

    /// `Ok(true)`: answered here (a rejection), nothing goes upstream. `Ok(false)`: forward.
    /// `Err` is kept for faults (writing the answer failed), which pingora logs.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        self.metrics.in_flight.inc();
        ctx.in_flight = true;
        let req = session.req_header();
        ctx.request_id = match req.headers.get("x-request-id") {
            Some(v) if valid_request_id(v.as_bytes()) => {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            }
            _ => uuid::Uuid::new_v4().simple().to_string(),
        };
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.client_ip = client_ip(
            peer,
            req.headers
                .get_all(X_FORWARDED_FOR)
                .iter()
                .map(|v| v.as_bytes()),
            &ctx.snap.config.server.trusted_proxies,
        );
        match self.admit(session, ctx).await {
            Ok(()) => {
                ctx.outcome = Outcome::Forwarded;
                Ok(false)
            }
            Err(reject) => {
                ctx.outcome = Outcome::Rejected(reject.reason());
                self.write_reject(session, ctx, &reject).await?;
                Ok(true)
            }
        }
    }

    /// The route's prebuilt peer; later attempts (after a refused connection) take the next.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let route = ctx
            .route
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route decided"))?;
        let upstream = &ctx.snap.upstreams[route.upstream];
        if ctx.attempt == 0 {
            ctx.peer_start = upstream.start_index();
        }
        let peer = upstream.peer(ctx.peer_start, ctx.attempt);
        ctx.attempt += 1;
        ctx.upstream_start = Some(Instant::now());
        Ok(Box::new(peer))
    }

    /// Connection refused or timed out: try the next peer while any is left.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(route) = &ctx.route {
            let upstream = &ctx.snap.upstreams[route.upstream];
            let kind = match e.etype() {
                ErrorType::ConnectTimedout => "timeout",
                _ => "connect",
            };
            self.metrics
                .upstream_errors
                .with_label_values(&[upstream.name.as_str(), kind])
                .inc();
            if ctx.attempt < upstream.len() {
                e.set_retry(true);
            }
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        if let Some(route) = &ctx.route {
            let name = ctx.snap.upstreams[route.upstream].name.as_str();
            let kind = match e.etype() {
                ErrorType::ReadTimedout | ErrorType::WriteTimedout => "timeout",
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError => {
                    "reset"
                }
                _ => "other",
            };
            if *e.esource() == ErrorSource::Upstream {
                self.metrics
                    .upstream_errors
                    .with_label_values(&[name, kind])
                    .inc();
            }
        }
        let mut e = e.more_context(format!("peer: {peer}"));
        if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        up: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(path) = &ctx.rewritten_path {
            let pq = match up.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.clone(),
            };
            let uri = http::Uri::builder()
                .path_and_query(pq)
                .build()
                .map_err(|_| {
                    Error::explain(
                        ErrorType::InternalError,
                        "normalised path is not a valid URI",
                    )
                })?;
            up.set_uri(uri);
        }
        strip_request_headers(up);
        if session.as_ref().get_retry_buffer().is_some() {
            // We read the body (and answered any `Expect: 100-continue`); the upstream gets
            // it whole, so it must not answer another 100.
            up.remove_header(&http::header::EXPECT);
        }
        if let Some(p) = &ctx.principal {
            // The values were checked to be valid header values when the token was verified
            // (auth::jwt `Claims::identity`), so these inserts cannot fail; if one did, the
            // request fails rather than going upstream without the caller's identity.
            if let Some(sub) = p.sub() {
                up.insert_header("x-auth-subject", sub)?;
            }
            if let Some(cid) = p.client_id() {
                up.insert_header("x-auth-client-id", cid)?;
            }
            up.insert_header("x-auth-scopes", p.scopes())?;
            if p.strip_authorization {
                up.remove_header(&AUTHORIZATION);
            }
        }
        up.insert_header("x-request-id", ctx.request_id.as_str())?;
        if let Some(ip) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        {
            // Every inbound X-Forwarded-For value, in order, then the peer. Inserting replaces
            // the inbound values.
            let mut xff = String::with_capacity(48);
            for v in up.headers.get_all(X_FORWARDED_FOR) {
                let v = String::from_utf8_lossy(v.as_bytes());
                let v = v.trim();
                if !v.is_empty() {
                    xff.push_str(v);
                    xff.push_str(", ");
                }
            }
            // Writing to a String cannot fail.
            let _ = write!(xff, "{ip}");
            up.insert_header(X_FORWARDED_FOR, xff)?;
        }
        up.insert_header(
            "x-forwarded-proto",
            http::HeaderValue::from_static(if self.tls { "https" } else { "http" }),
        )?;
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some(start), Some(route)) = (ctx.upstream_start.take(), &ctx.route) {
            ctx.snap.upstream_durations[route.upstream].observe(start.elapsed().as_secs_f64());
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if resp.status.is_informational() {
            return Ok(());
        }
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
        if let (Some(route), Some(d)) = (&ctx.route, &ctx.rate) {
            add_rate_headers(resp, route, d)?;
        }
        Ok(())
    }

    /// Upstream down (502), timed out (504), or a broken request (400): JSON, never a bare page.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let (code, error, description) = match e.etype() {
            ErrorType::HTTPStatus(code) => (*code, "invalid_request", "request rejected"),
            _ => match e.esource() {
                ErrorSource::Upstream => match e.etype() {
                    ErrorType::ConnectTimedout
                    | ErrorType::ReadTimedout
                    | ErrorType::WriteTimedout => {
                        (504, "gateway_timeout", "upstream did not answer in time")
                    }
                    _ => (502, "bad_gateway", "upstream unavailable"),
                },
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => {
                        (0, "", "")
                    }
                    _ => (400, "invalid_request", "malformed request"),
                },
                ErrorSource::Internal | ErrorSource::Unset => {
                    (500, "server_error", "internal error")
                }
            },
        };
        if ctx.outcome == Outcome::Forwarded || ctx.outcome == Outcome::Pending {
            ctx.outcome = Outcome::UpstreamFailed;
        }
        if code > 0 && session.response_written().is_none() {
            // The connection is not reused after a failure: say so instead of resetting it.
            session.set_keepalive(None);
            if ctx.request_id.is_empty() {
                ctx.request_id = uuid::Uuid::new_v4().simple().to_string();
            }
            let body: Bytes = json_error(error, description);
            if let Ok(mut h) = reject::error_header(code, &ctx.request_id, body.len()) {
                // An admitted request on a limited route was counted: say how many are left.
                if let (Some(route), Some(d)) = (&ctx.route, &ctx.rate) {
                    let _ = add_rate_headers(&mut h, route, d);
                }
                if session
                    .write_response_header(Box::new(h), false)
                    .await
                    .is_ok()
                {
                    let _ = session.write_response_body(Some(body), true).await;
                }
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// What pingora's own error logs say about a request: method and path, never the query
    /// string (a route may opt in to tokens in the query) nor any header.
    fn request_summary(&self, session: &Session, ctx: &RequestCtx) -> String {
        let req = session.req_header();
        format!(
            "{} {} (request_id {})",
            req.method,
            ctx.rewritten_path.as_deref().unwrap_or(req.uri.path()),
            ctx.request_id
        )
    }

    /// Once per request: metrics and one access-log line (never a token or a header value
    /// that could carry one).
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if ctx.in_flight {
            self.metrics.in_flight.dec();
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let route = ctx
            .route
            .as_ref()
            .map(|r| r.name.as_str())
            .unwrap_or("_none");
        let method = method_label(&session.req_header().method);
        let elapsed = ctx.start.elapsed();
        let handles = match &ctx.route {
            Some(r) => &ctx.snap.route_metrics[r.index],
            None => &ctx.snap.no_route_metrics,
        };
        handles.request(method, status);
        handles.duration.observe(elapsed.as_secs_f64());
        if self.access_log {
            let upstream = ctx
                .route
                .as_ref()
                .map(|r| ctx.snap.upstreams[r.upstream].name.as_str())
                .unwrap_or("-");
            let outcome = match ctx.outcome {
                Outcome::Pending => "pending",
                Outcome::Forwarded => "forwarded",
                Outcome::Rejected(r) => r,
                Outcome::UpstreamFailed => "upstream_failed",
            };
            let sub = ctx.principal.as_ref().and_then(|p| p.sub()).unwrap_or("-");
            let issuer = ctx
                .principal
                .as_ref()
                .map_or("-", |p| ctx.snap.auth.issuer_name(p));
            let error = e.map(|e| e.etype().as_str()).unwrap_or("-");
            info!(
                target: "access",
                request_id = %ctx.request_id,
                route,
                method = %session.req_header().method,
                path = %ctx.rewritten_path.as_deref().unwrap_or(session.req_header().uri.path()),
                status,
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                upstream,
                outcome,
                auth = ctx.auth_result,
                issuer,
                client_id = ctx
                    .client_id
                    .as_deref()
                    .or_else(|| ctx.principal.as_ref().and_then(|p| p.client_id()))
                    .unwrap_or("-"),
                subject = sub,
                client_ip = %ctx.client_ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
                error,
                "request"
            );
        }
    }
}
