//! The pingora seam: `Gateway` implements `ProxyHttp`. Each request runs the gates in a fixed
//! order in `request_filter` — route -> authenticate -> scopes -> rate limit — and is either
//! answered there (a `Reject`) or forwarded to its route's upstream with identity headers.

pub(crate) mod clientkey;
pub mod conn;
mod reject;

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

use crate::auth::{bearer, AuthError, Principal};
use crate::config::{AuthMode, UnderscoreHeaders};
use crate::metrics::Metrics;
use crate::policy::{has_encoded_separator, normalize_path, KeySource, Route};
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
    /// The path sent upstream, when it differs from the request target's bytes (normalised,
    /// or the path of an absolute-form target).
    rewritten_path: Option<String>,
    /// The authority of an absolute-form target: the upstream's `Host` (RFC 9112 §3.2.2).
    target_authority: Option<String>,
    /// Arrived over TLS: on our listener, or per `X-Forwarded-Proto` from a trusted proxy.
    https: bool,
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
        // 0. will the upstream read this request as we do?
        check_message(req, snap.config.server.headers_with_underscores)?;
        let absolute = target_form(req)?;
        // 1. which route?
        let raw_path = req.uri.path();
        let path = normalize_path(raw_path).map_err(|e| Reject::BadPath(e.describe()))?;
        let route = snap.routes.find(&req.method, &path).cloned();
        ctx.route = route.clone();
        // Checked after matching so an opted-in route keeps them; refused when no route
        // matches too (400 before 404), so no spelling of a path probes the table.
        if matches!(path, Cow::Owned(_))
            && has_encoded_separator(&path)
            && !route.as_ref().is_some_and(|r| r.allow_encoded_slashes)
        {
            return Err(Reject::EncodedSlash);
        }
        let route = route.ok_or(Reject::NoRoute)?;
        // The upstream gets exactly the path that was routed: rewritten when normalising
        // changed it, and always for absolute-form (sent on in origin-form, RFC 9112 §3.2.2).
        if let Cow::Owned(p) = path {
            ctx.rewritten_path = Some(p);
        } else if absolute.is_some() {
            ctx.rewritten_path = Some(raw_path.to_string());
        }
        ctx.target_authority = absolute;
        ctx.route = Some(route.clone());
        if !ctx.https && route.require_tls.unwrap_or(snap.config.server.require_tls) {
            return Err(Reject::TlsRequired {
                status: snap.config.server.require_tls_status,
            });
        }

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

        // 3. may they, right now? Each key's limits are decided together; groups in file
        // order, so a refusal by a later group leaves the earlier groups' slots used.
        for (scope, group) in &route.limits {
            let key = self.limit_key(session, ctx, &route, &group.key).await?;
            match snap.limiter.check(scope, &group.limits, &key).await {
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
                    // The headers show the group with the fewest requests left.
                    if ctx
                        .rate
                        .as_ref()
                        .is_none_or(|r| decision.remaining <= r.remaining)
                    {
                        ctx.rate = Some(decision);
                    }
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
        sources: &[KeySource],
    ) -> Result<String, Reject> {
        // Values are borrowed where they can be (the subject, a header) and copied once, into
        // the key. The principal is held by its own handle so `ctx` stays free to update.
        let principal = ctx.principal.clone();
        for source in sources {
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
                // On a JWT route the client is the token's (`client_id`/`azp`) and nothing
                // else: a body or Basic value there is the caller's to choose.
                KeySource::ClientId if route.auth == AuthMode::Jwt => principal
                    .as_deref()
                    .and_then(Principal::client_id)
                    .map(Cow::from),
                KeySource::ClientId => {
                    let id = match &ctx.client_id {
                        Some(id) => Some(id.clone()),
                        None => self.public_client_id(session, &ctx.snap).await?,
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

    /// The client of a request to a public (OAuth) route, as an authorization server would
    /// read it: the HTTP Basic user, the `client_id` of a form or JSON body, and the one in
    /// the query string must name one client, each at most once, and a Basic client sends
    /// no `client_secret` in the body (RFC 6749 §2.3: one authentication method per
    /// request; §3.1: no parameter twice). Anything else is 400: the server might pick
    /// another value than the one the limit counted.
    async fn public_client_id(
        &self,
        session: &mut Session,
        snap: &Snapshot,
    ) -> Result<Option<String>, Reject> {
        let req = session.req_header();
        let mut authz = req.headers.get_all(AUTHORIZATION).iter();
        let basic = match (authz.next(), authz.next()) {
            (_, Some(_)) => {
                return Err(Reject::ClientAuthConflict(
                    "more than one Authorization header",
                ))
            }
            (Some(v), None) if clientkey::is_basic(v.as_bytes()) => Some(
                clientkey::basic_client_id(v.as_bytes()).ok_or(Reject::ClientAuthConflict(
                    "malformed HTTP Basic client credentials",
                ))?,
            ),
            _ => None,
        };
        let query =
            clientkey::query_client_id(req.uri.query()).map_err(Reject::ClientAuthConflict)?;
        let body = self.body_client(session, snap).await?;
        if basic.is_some() && body.has_secret {
            return Err(Reject::ClientAuthConflict(
                "client authenticated with both HTTP Basic and client_secret in the body",
            ));
        }
        let mut found: Option<String> = None;
        for id in [basic, body.client_id, query].into_iter().flatten() {
            match &found {
                Some(f) if *f != id => {
                    return Err(Reject::ClientAuthConflict(
                        "client_id differs between HTTP Basic, the body and the query",
                    ))
                }
                _ => found = Some(id),
            }
        }
        Ok(found)
    }

    /// Read a small form or JSON body for `client_id` and `client_secret`; the body still
    /// reaches the upstream byte for byte (pingora's retry buffer).
    async fn body_client(
        &self,
        session: &mut Session,
        snap: &Snapshot,
    ) -> Result<clientkey::BodyClient, Reject> {
        let req = session.req_header();
        let Some(ct) = req
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
        else {
            return Ok(clientkey::BodyClient::default());
        };
        if !clientkey::readable_body_type(&ct) {
            return Ok(clientkey::BodyClient::default());
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
        clientkey::body_client(&ct, &body).map_err(Reject::BadBody)
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
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";

/// Step 0: refuse what an upstream could frame or name differently from us.
/// - a method with lower-case letters (methods are case-sensitive, RFC 9110 §9.1: `get` is
///   not `GET`, and a route's method list would not see it, while some servers would);
/// - `Content-Length` given twice or as a list (RFC 9110 §8.6 allows refusing; `3, 3`
///   would otherwise be forwarded as is);
/// - a `Transfer-Encoding` other than exactly `chunked` (`gzip, chunked` was forwarded as
///   plain chunked with a gzip body), or beside `Content-Length` (RFC 9112 §6.1);
/// - header names with `_`, where the config refuses them.
fn check_message(req: &RequestHeader, underscores: UnderscoreHeaders) -> Result<(), Reject> {
    if req.method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(Reject::Malformed(
            "method names are case-sensitive and must be upper case",
        ));
    }
    let mut lengths = req.headers.get_all(CONTENT_LENGTH).iter();
    let length = lengths.next();
    if lengths.next().is_some()
        || length.is_some_and(|v| v.is_empty() || !v.as_bytes().iter().all(u8::is_ascii_digit))
    {
        return Err(Reject::Malformed(
            "Content-Length must be given once, as one number",
        ));
    }
    let mut codings = req.headers.get_all(http::header::TRANSFER_ENCODING).iter();
    if let Some(te) = codings.next() {
        let chunked = te
            .to_str()
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
        if !chunked || codings.next().is_some() {
            return Err(Reject::Malformed(
                "only Transfer-Encoding: chunked is accepted",
            ));
        }
        if length.is_some() {
            return Err(Reject::Malformed(
                "Content-Length and Transfer-Encoding together",
            ));
        }
    }
    if underscores == UnderscoreHeaders::Refuse
        && req.headers.keys().any(|n| n.as_str().contains('_'))
    {
        return Err(Reject::Malformed(
            "header names with '_' are not accepted (CGI and WSGI servers read them as '-')",
        ));
    }
    Ok(())
}

/// RFC 9112 §3.2: origin-form (`/path?query`), or absolute-form with an http(s) scheme,
/// whose authority is returned (its path is what is routed and sent upstream). Anything
/// else (`x:/a`, `a/b`, `./a`, `*`, a target pingora could not classify and left empty, one
/// that is not valid UTF-8) is refused: pingora would route `/` and forward the raw bytes.
pub(crate) fn target_form(req: &RequestHeader) -> Result<Option<String>, Reject> {
    const BAD: Reject = Reject::BadTarget(
        "request target must be an absolute path (origin-form) or an http(s) URL",
    );
    let raw = req.raw_path();
    if !req.raw_path_is_utf8() {
        return Err(Reject::BadTarget("request target is not valid UTF-8"));
    }
    if raw.first() == Some(&b'/') {
        return Ok(None);
    }
    let rest = [&b"http://"[..], b"https://"].iter().find_map(|scheme| {
        (raw.len() > scheme.len() && raw[..scheme.len()].eq_ignore_ascii_case(scheme))
            .then(|| &raw[scheme.len()..])
    });
    let Some(rest) = rest else {
        return Err(BAD);
    };
    let end = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    let path_ok = matches!(rest.get(end), None | Some(b'/'));
    if authority.is_empty()
        || !path_ok
        || !authority
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
        || !req.uri.path().starts_with('/')
    {
        return Err(BAD);
    }
    // ASCII checked above.
    Ok(Some(String::from_utf8_lossy(authority).into_owned()))
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
fn strip_request_headers(h: &mut RequestHeader, underscores: UnderscoreHeaders) {
    let mut doomed: Vec<http::HeaderName> = Vec::new();
    let mut connection = false;
    for (name, value) in h.headers.iter() {
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
                !h.headers.contains_key(http::header::UPGRADE)
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
            target_authority: None,
            https: self.tls,
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
        let trusted = &ctx.snap.config.server.trusted_proxies;
        ctx.client_ip = client_ip(
            peer,
            req.headers
                .get_all(X_FORWARDED_FOR)
                .iter()
                .map(|v| v.as_bytes()),
            trusted,
        );
        if !self.tls {
            ctx.https = clientkey::forwarded_https(
                peer,
                req.headers
                    .get_all(X_FORWARDED_PROTO)
                    .iter()
                    .map(|v| v.as_bytes()),
                trusted,
            );
        }
        match self.admit(session, ctx).await {
            Ok(()) => {
                ctx.outcome = Outcome::Forwarded;
                Ok(false)
            }
            Err(reject) => {
                let route = ctx.route.as_ref().map_or("_none", |r| r.name.as_str());
                self.metrics
                    .rejections
                    .with_label_values(&[route, reject.reason()])
                    .inc();
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
        if let Some(authority) = &ctx.target_authority {
            up.insert_header(http::header::HOST, authority.as_str())?;
        }
        strip_request_headers(up, ctx.snap.config.server.headers_with_underscores);
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
            X_FORWARDED_PROTO,
            http::HeaderValue::from_static(if ctx.https { "https" } else { "http" }),
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

#[cfg(test)]
mod tests {
    use super::*;

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
