//! The pingora seam: `Gateway` implements `ProxyHttp` as a thin adapter around the decision
//! core (`decide`). `request_filter` builds the core's view of the request, calls
//! [`decide::decide`] and either answers there (a `Reject`) or keeps the `Admission`, which
//! the later phases apply: the upstream request gets the routed path, identity headers and
//! forwarding headers; every answer gets the request id and the rate headers.

mod answer;
pub(crate) mod conn;
mod headers;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::AUTHORIZATION;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{ErrorSource, ErrorType};
use tracing::info;

use crate::config::{AuthMode, UnderscoreHeaders};
use crate::decide::{self, json_error, Admission, Reject, RequestView};
use crate::metrics::Metrics;
use crate::policy::Route;
use crate::ratelimit::Decision;
use crate::state::{SharedState, Snapshot};
use headers::HeaderEdit;

/// The proxy: reads the current snapshot, records metrics, writes access logs.
pub(crate) struct Gateway {
    state: SharedState,
    metrics: Arc<Metrics>,
    access_log: bool,
    tls: bool,
}

impl Gateway {
    pub(crate) fn new(
        state: SharedState,
        metrics: Arc<Metrics>,
        access_log: bool,
        tls: bool,
    ) -> Self {
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
pub(crate) enum Outcome {
    Pending,
    Forwarded,
    Rejected(&'static str),
    UpstreamFailed,
}

/// What one request carries between phases: the decision and the proxying state.
pub(crate) struct RequestCtx {
    snap: Arc<Snapshot>,
    start: Instant,
    /// The inbound `X-Request-Id` when valid (shared, not copied), else a new one: the one
    /// value both the upstream request and the answer carry.
    request_id: http::HeaderValue,
    adm: Admission,
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

/// The decision core's view of a pingora request, and its body on demand.
struct PingoraRequest<'s> {
    session: &'s mut Session,
    tls: bool,
}

#[async_trait]
impl decide::Request for PingoraRequest<'_> {
    fn view(&self) -> RequestView<'_> {
        let mut v = view_of(
            self.session.req_header(),
            self.session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            self.tls,
        );
        if self.tls {
            v.tls_client_cert = self
                .session
                .digest()
                .and_then(|d| d.ssl_digest.as_deref())
                .map(|s| s.cert_digest.as_slice())
                .filter(|d| !d.is_empty());
        }
        v
    }

    /// Reads with pingora's retry buffer on, so the body still reaches the upstream byte
    /// for byte.
    async fn read_body(&mut self, max: usize) -> Result<Vec<u8>, Reject> {
        let session = &mut *self.session;
        // A client waiting for `100 Continue` would otherwise wait (curl: 1 s) before sending.
        let expects_continue = session
            .req_header()
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
        Ok(body)
    }
}

/// The core's view of a pingora request header.
pub(crate) fn view_of(
    req: &RequestHeader,
    peer: Option<std::net::IpAddr>,
    tls: bool,
) -> RequestView<'_> {
    RequestView {
        method: &req.method,
        uri: &req.uri,
        raw_target: req.raw_path(),
        raw_target_utf8: req.raw_path_is_utf8(),
        headers: &req.headers,
        peer,
        tls,
        tls_client_cert: None,
    }
}

impl Gateway {
    async fn write_reject(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        reject: &Reject,
    ) -> Result<()> {
        let body = reject.body();
        let mut header = answer::response_header(reject, &ctx.request_id, body.len())?;
        if let (Some(route), Some(d)) = (&ctx.adm.route, &ctx.adm.rate) {
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

fn ceil_secs(d: std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The `RateLimit-*` headers: integer values formatted by `http` straight into the value, the
/// policy prebuilt per route.
fn add_rate_headers<H: HeaderEdit>(h: &mut H, route: &Route, d: &Decision) -> Result<()> {
    h.set(&RATELIMIT_LIMIT, http::HeaderValue::from(d.limit))?;
    h.set(&RATELIMIT_REMAINING, http::HeaderValue::from(d.remaining))?;
    h.set(
        &RATELIMIT_RESET,
        http::HeaderValue::from(ceil_secs(d.reset)),
    )?;
    h.set(&RATELIMIT_POLICY, route.limit_policy.clone())?;
    Ok(())
}

// The names the gateway sets, built once. `static`, so `HeaderEdit::set` can hand pingora
// their text as `&'static str`, the one form it takes without copying.
static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");
static HOST: http::HeaderName = http::header::HOST;
static RATELIMIT_LIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: http::HeaderName = http::HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: http::HeaderName = http::HeaderName::from_static("ratelimit-reset");
static RATELIMIT_POLICY: http::HeaderName = http::HeaderName::from_static("ratelimit-policy");

/// Room for what the forwarded request gains (`X-Auth-*` ×3, `X-Request-Id`,
/// `X-Forwarded-For`, `X-Forwarded-Proto`, `Host`) and the answer (`X-Request-Id`,
/// `RateLimit-*` ×4), so that each map grows once at most.
const ADDED_REQUEST_HEADERS: usize = 7;
const ADDED_RESPONSE_HEADERS: usize = 5;

/// A new request id: 32 lowercase hex digits of a random (v4) UUID, written without the
/// formatting machinery.
fn new_request_id() -> http::HeaderValue {
    let mut buf = uuid::Uuid::encode_buffer();
    let id = uuid::Uuid::new_v4().simple().encode_lower(&mut buf);
    // Hex digits: always a valid header value.
    http::HeaderValue::from_str(id).unwrap_or_else(|_| http::HeaderValue::from_static("-"))
}

impl RequestCtx {
    /// The request id as text, for logs (it is printable ASCII: checked or generated).
    fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or("-")
    }
}

/// Append `ip` as text: IPv4 (nearly every request) digit by digit, since `Display` goes
/// through the formatting machinery; IPv6 with `Display`.
fn push_ip(out: &mut String, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if o >= 100 {
                    out.push(char::from(b'0' + o / 100));
                }
                if o >= 10 {
                    out.push(char::from(b'0' + o / 10 % 10));
                }
                out.push(char::from(b'0' + o % 10));
            }
        }
        std::net::IpAddr::V6(_) => {
            // Writing to a String cannot fail.
            let _ = write!(out, "{ip}");
        }
    }
}

/// `(status, error, error_description)` for a status pingora decided on its own (a request it
/// could not proxy): the error code that fits the status, never a 4xx code on a 5xx.
fn status_error(code: u16) -> (u16, &'static str, &'static str) {
    let description = match code {
        400 => "malformed request",
        405 => "method not allowed",
        408 => "request not received in time",
        413 => "request body too large",
        414 => "request target too long",
        431 => "request header fields too large",
        502 => "upstream unavailable",
        503 => "try again shortly",
        504 => "upstream did not answer in time",
        _ if (400..500).contains(&code) => "request rejected",
        _ => "the gateway could not complete the request",
    };
    match code {
        400..=499 => (code, "invalid_request", description),
        502 => (502, "bad_gateway", description),
        503 => (503, "temporarily_unavailable", description),
        504 => (504, "gateway_timeout", description),
        500..=599 => (code, "server_error", description),
        // Not an error status: answer as an internal error.
        _ => (500, "server_error", description),
    }
}
/// Names a client's `Connection` header may list that are not removed for it: connection
/// options, and framing the request needs (`X-Auth-*` are stripped anyway). `Authorization`
/// is not among them: a client that lists it says it is for the gateway alone (RFC 9110
/// §7.6.1), and pingora removes it from the upstream request in any case.
const KEEP_EVEN_IF_LISTED: [&str; 5] = ["upgrade", "close", "keep-alive", "host", "content-length"];

/// Does a header name read as one the gateway sets (`X-Auth-*`, `X-Forwarded-For`,
/// `X-Forwarded-Proto`, `X-Request-Id`) once `_` is read as `-`, as CGI and WSGI servers do?
fn spoofs_gateway_header(name: &str) -> bool {
    let dashed = |i: usize, want: u8| {
        let b = name.as_bytes()[i];
        (if b == b'_' { b'-' } else { b }) == want
    };
    let is = |want: &str| {
        name.len() == want.len() && want.bytes().enumerate().all(|(i, w)| dashed(i, w))
    };
    let starts = |want: &str| {
        name.len() >= want.len() && want.bytes().enumerate().all(|(i, w)| dashed(i, w))
    };
    starts("x-auth-") || is("x-forwarded-for") || is("x-forwarded-proto") || is("x-request-id")
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) that must not be forwarded, plus the ones a client
/// may not set for the upstream (`X-Auth-*`, in any spelling with `_`) and, unless the
/// config forwards them, every other name with `_`. One pass over the names: most requests
/// carry none of them, and then nothing is looked up or allocated.
fn strip_request_headers<H: HeaderEdit>(h: &mut H, underscores: UnderscoreHeaders) {
    let mut doomed: Vec<http::HeaderName> = Vec::new();
    let mut connection = false;
    for (name, value) in h.map().iter() {
        let drop = match name.as_str() {
            n if n.contains('_') => {
                underscores != UnderscoreHeaders::Forward || spoofs_gateway_header(n)
            }
            "keep-alive" | "proxy-connection" | "proxy-authorization" | "trailer" => true,
            // `TE: trailers` is the one value a proxy may pass on.
            "te" => !value
                .to_str()
                .is_ok_and(|v| v.trim().eq_ignore_ascii_case("trailers")),
            // Connection itself is hop-by-hop (RFC 9110 §7.6.1), and so is what it lists.
            // pingora's own request sanitising (which runs before this filter) removes it as
            // well, and re-adds `Connection: Upgrade` for a WebSocket handshake: that one stays.
            "connection" => {
                connection = true;
                !h.map().contains_key(http::header::UPGRADE)
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
        for v in h.map().get_all(http::header::CONNECTION) {
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
        h.remove(name);
    }
}

/// What the forwarded request's headers become: the absolute-form target's `Host`, hop-by-hop
/// and spoofable headers gone, the caller's identity, `X-Request-Id` and the forwarding
/// headers set (`peer`: the client's address; `retried_body`: the gateway read the body).
fn forward_headers<H: HeaderEdit>(
    h: &mut H,
    ctx: &RequestCtx,
    peer: Option<std::net::IpAddr>,
    retried_body: bool,
) -> Result<()> {
    if let Some(authority) = &ctx.adm.target_authority {
        h.set(&HOST, headers::value(authority.as_str())?)?;
    }
    strip_request_headers(h, ctx.snap.config.server.headers_with_underscores);
    // A client certificate header is the trusted proxy's to set, never a client's.
    if let Some(name) = ctx.snap.config.server.client_cert_header.as_deref() {
        let trusted = peer.is_some_and(|p| {
            ctx.snap
                .config
                .server
                .trusted_proxies
                .iter()
                .any(|n| n.contains(&p))
        });
        if !trusted {
            h.remove(name);
        }
    }
    if retried_body {
        // We read the body (and answered any `Expect: 100-continue`); the upstream gets it
        // whole, so it must not answer another 100.
        h.remove(&http::header::EXPECT);
    }
    // The values were checked to be valid header values when the token was verified
    // (auth::jwt `Claims::identity`), so these cannot fail; if one did, the request fails
    // rather than going upstream without the caller's identity.
    for (name, v) in ctx.adm.identity_headers() {
        h.set(name, headers::value(v)?)?;
    }
    let strip = match (&ctx.adm.principal, &ctx.adm.route) {
        (Some(p), _) => p.strip_authorization,
        // Report mode forwarded a token that did not verify: where the route's issuers strip
        // theirs, the upstream never sees this one either.
        (None, Some(r)) if ctx.adm.would_deny.is_some() && r.auth == AuthMode::Jwt => {
            ctx.snap.auth.issuers().iter().any(|i| {
                i.cfg.strip_authorization
                    && r.issuers
                        .as_ref()
                        .is_none_or(|names| names.iter().any(|n| n == i.name()))
            })
        }
        _ => false,
    };
    if strip {
        h.remove(&AUTHORIZATION);
    }
    h.set(&X_REQUEST_ID, ctx.request_id.clone())?;
    if let Some(ip) = peer {
        // Every inbound X-Forwarded-For value, in order, then the peer. Setting replaces the
        // inbound values.
        let mut xff = String::with_capacity(48);
        for v in h.map().get_all(&X_FORWARDED_FOR) {
            let v = String::from_utf8_lossy(v.as_bytes());
            let v = v.trim();
            if !v.is_empty() {
                xff.push_str(v);
                xff.push_str(", ");
            }
        }
        push_ip(&mut xff, ip);
        h.set(&X_FORWARDED_FOR, headers::value(xff)?)?;
    }
    h.set(
        &X_FORWARDED_PROTO,
        http::HeaderValue::from_static(if ctx.adm.https { "https" } else { "http" }),
    )
}

/// What every forwarded answer gains: the request id and, on a limited route, the rate.
fn answer_headers<H: HeaderEdit>(h: &mut H, ctx: &RequestCtx) -> Result<()> {
    h.set(&X_REQUEST_ID, ctx.request_id.clone())?;
    if let (Some(route), Some(d)) = (&ctx.adm.route, &ctx.adm.rate) {
        add_rate_headers(h, route, d)?;
    }
    Ok(())
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            snap: self.state.load_full(),
            start: Instant::now(),
            request_id: http::HeaderValue::from_static(""),
            adm: Admission {
                https: self.tls,
                ..Admission::default()
            },
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
        ctx.request_id = match req.headers.get(&X_REQUEST_ID) {
            Some(v) if valid_request_id(v.as_bytes()) => v.clone(),
            _ => new_request_id(),
        };
        let mut req = PingoraRequest {
            session: &mut *session,
            tls: self.tls,
        };
        let verdict = decide::decide(
            &ctx.snap,
            &self.metrics,
            &mut req,
            &mut ctx.adm,
            &mut decide::Off,
            decide::Effects::Count,
        )
        .await;
        match verdict {
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
            .adm
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
        if let Some(route) = &ctx.adm.route {
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
        if let Some(route) = &ctx.adm.route {
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
        if let Some(path) = &ctx.adm.rewritten_path {
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
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let retried_body = session.as_ref().get_retry_buffer().is_some();
        let ctx = &*ctx;
        if ctx.snap.config.server.preserve_header_case {
            forward_headers(up, ctx, peer, retried_body)
        } else {
            headers::edit_request(up, ADDED_REQUEST_HEADERS, |h| {
                forward_headers(h, ctx, peer, retried_body)
            })
        }
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some(start), Some(route)) = (ctx.upstream_start.take(), &ctx.adm.route) {
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
        let ctx = &*ctx;
        if ctx.snap.config.server.preserve_header_case {
            answer_headers(resp, ctx)
        } else {
            headers::edit_response(resp, ADDED_RESPONSE_HEADERS, |h| answer_headers(h, ctx))
        }
    }

    /// Upstream down (502), timed out (504), or a broken request (400): JSON, never a bare page.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let (code, error, description) = match e.etype() {
            ErrorType::HTTPStatus(code) => status_error(*code),
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
                ctx.request_id = new_request_id();
            }
            let body: Bytes = json_error(error, description);
            if let Ok(mut h) = answer::error_header(code, &ctx.request_id, body.len()) {
                // An admitted request on a limited route was counted: say how many are left.
                if let (Some(route), Some(d)) = (&ctx.adm.route, &ctx.adm.rate) {
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
            ctx.adm.rewritten_path.as_deref().unwrap_or(req.uri.path()),
            ctx.request_id()
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
            .adm
            .route
            .as_ref()
            .map(|r| r.name.as_str())
            .unwrap_or("_none");
        let method = method_label(&session.req_header().method);
        let elapsed = ctx.start.elapsed();
        let handles = match &ctx.adm.route {
            Some(r) => &ctx.snap.route_metrics[r.index],
            None => &ctx.snap.no_route_metrics,
        };
        handles.request(method, status);
        handles.duration.observe(elapsed.as_secs_f64());
        if self.access_log {
            let upstream = ctx
                .adm
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
            let sub = ctx
                .adm
                .principal
                .as_ref()
                .and_then(|p| p.sub())
                .unwrap_or("-");
            let issuer = ctx
                .adm
                .principal
                .as_ref()
                .map_or("-", |p| ctx.snap.auth.issuer_name(p));
            let error = e.map(|e| e.etype().as_str()).unwrap_or("-");
            info!(
                target: "access",
                request_id = %ctx.request_id(),
                route,
                method = %session.req_header().method,
                path = %ctx.adm.rewritten_path.as_deref().unwrap_or(session.req_header().uri.path()),
                status,
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                upstream,
                outcome,
                auth = ctx.adm.auth_result,
                would_deny = ctx.adm.would_deny.unwrap_or("-"),
                issuer,
                client_id = ctx
                    .adm
                    .client_id
                    .as_deref()
                    .or_else(|| ctx.adm.principal.as_ref().and_then(|p| p.client_id()))
                    .unwrap_or("-"),
                subject = sub,
                client_ip = %ctx.adm.client_ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
                error,
                "request"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With the spelling map kept, every name the gateway sets goes on the wire as pingora
    /// spells that `HeaderName` itself (`Host`, not `host`), on requests and on answers.
    #[test]
    fn names_the_gateway_sets_are_spelled_as_pingora_spells_them() {
        let names: [&'static http::HeaderName; 11] = [
            &HOST,
            &X_REQUEST_ID,
            &X_FORWARDED_FOR,
            &X_FORWARDED_PROTO,
            &RATELIMIT_LIMIT,
            &RATELIMIT_REMAINING,
            &RATELIMIT_RESET,
            &RATELIMIT_POLICY,
            &decide::X_AUTH_SUBJECT,
            &decide::X_AUTH_CLIENT_ID,
            &decide::X_AUTH_SCOPES,
        ];
        let v = http::HeaderValue::from_static("v");
        for name in names {
            let mut ours = RequestHeader::build("GET", b"/", None).unwrap();
            ours.set(name, v.clone()).unwrap();
            let mut pingoras = RequestHeader::build("GET", b"/", None).unwrap();
            pingoras.insert_header(name.clone(), v.clone()).unwrap();
            let (mut a, mut b) = (Vec::new(), Vec::new());
            ours.header_to_h1_wire(&mut a);
            pingoras.header_to_h1_wire(&mut b);
            assert_eq!(String::from_utf8_lossy(&a), String::from_utf8_lossy(&b));

            let mut ours = ResponseHeader::build(200, None).unwrap();
            ours.set(name, v.clone()).unwrap();
            let mut pingoras = ResponseHeader::build(200, None).unwrap();
            pingoras.insert_header(name.clone(), v.clone()).unwrap();
            let (mut a, mut b) = (Vec::new(), Vec::new());
            ours.header_to_h1_wire(&mut a);
            pingoras.header_to_h1_wire(&mut b);
            assert_eq!(String::from_utf8_lossy(&a), String::from_utf8_lossy(&b));
        }
    }

    #[test]
    fn pingora_statuses_get_the_error_code_that_fits() {
        assert_eq!(status_error(400).1, "invalid_request");
        assert_eq!(status_error(431).1, "invalid_request");
        assert_eq!(status_error(502).1, "bad_gateway");
        assert_eq!(status_error(503).1, "temporarily_unavailable");
        assert_eq!(status_error(504).1, "gateway_timeout");
        assert_eq!(
            status_error(500),
            (
                500,
                "server_error",
                "the gateway could not complete the request"
            )
        );
        assert_eq!(
            status_error(200).0,
            500,
            "never a success status from a failure"
        );
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        let mut ips: Vec<std::net::IpAddr> = [
            "0.0.0.0",
            "127.0.0.1",
            "9.10.99.100",
            "255.255.255.255",
            "10.0.200.5",
            "::1",
            "::ffff:10.1.2.3",
            "2001:db8::8a2e:370:7334",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        ips.extend((0..=255u8).map(|o| std::net::IpAddr::from([o, 255 - o, o / 3, 7])));
        for ip in ips {
            let mut out = String::from("x, ");
            push_ip(&mut out, ip);
            assert_eq!(out, format!("x, {ip}"));
        }
    }

    #[test]
    fn new_request_ids_are_32_lowercase_hex_digits_and_differ() {
        let (a, b) = (new_request_id(), new_request_id());
        assert_eq!(a.len(), 32);
        assert!(
            a.as_bytes()
                .iter()
                .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
            "{a:?}"
        );
        assert!(valid_request_id(a.as_bytes()));
        assert_ne!(a, b);
    }

    #[test]
    fn underscore_spellings_of_gateway_headers_are_recognised() {
        for n in [
            "x_auth_subject",
            "x-auth_scopes",
            "x_forwarded_for",
            "x_forwarded_proto",
            "x_request_id",
            "x-auth-anything",
        ] {
            assert!(spoofs_gateway_header(n), "{n}");
        }
        for n in ["x_custom", "x_forwarded_host", "x_auth", "x_request_idx"] {
            assert!(!spoofs_gateway_header(n), "{n}");
        }
    }
}
