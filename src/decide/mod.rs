//! The decision core: one request in, a verdict out. The gates run in a fixed order — will the
//! upstream read this request as we do? -> which route? -> who is calling? -> may they use
//! this route? -> may they, right now? — over a plain [`RequestView`] and the [`Snapshot`], with
//! no pingora type in sight. The proxy (`proxy::Gateway`) is one front door: it builds the
//! view from a pingora session, calls [`decide`] and applies the [`Admission`]. Offline front
//! doors (route-table tests, `explain`) call the same function with an [`OfflineRequest`] and
//! a [`Recorder`] for the steps.

pub(crate) mod clientkey;
mod dpop;
mod reject;
pub(crate) mod trace;

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, COOKIE};
use http::{HeaderMap, Method, Uri};
use tracing::warn;

pub(crate) use reject::{json_error, Reject};
pub(crate) use trace::{Off, Recorder, Step, Trace};

use crate::auth::{bearer, AuthError, Principal, RouteAuth};
use crate::config::{AuthMode, UnderscoreHeaders};
use crate::metrics::Metrics;
use crate::policy::{has_encoded_separator, normalize_path, KeySource, Route, RouteMode};
use crate::ratelimit::Decision;
use crate::state::Snapshot;

// Looked up on every request: a `HeaderName` is hashed as it is, a `&str` is parsed first.
const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");

/// What the decision reads of a request. Borrowed: building one costs nothing.
#[derive(Clone, Copy)]
pub(crate) struct RequestView<'a> {
    pub method: &'a Method,
    /// The parsed target (its path is what is routed).
    pub uri: &'a Uri,
    /// The request target as received, for its form (RFC 9112 §3.2).
    pub raw_target: &'a [u8],
    pub raw_target_utf8: bool,
    pub headers: &'a HeaderMap,
    /// The TCP peer.
    pub peer: Option<IpAddr>,
    /// Arrived over TLS on our own listener.
    pub tls: bool,
    /// SHA-256 of the DER of the client certificate presented in our TLS handshake.
    pub tls_client_cert: Option<&'a [u8]>,
}

/// A request the core can decide on: its view, and its body when a limit key needs a
/// `client_id` from it.
#[async_trait]
pub(crate) trait Request: Send {
    fn view(&self) -> RequestView<'_>;

    /// The whole body, at most `max` bytes (else [`Reject::BodyTooLarge`]). A proxy answers
    /// `Expect: 100-continue` first and keeps the bytes for the upstream.
    async fn read_body(&mut self, max: usize) -> Result<Vec<u8>, Reject>;
}

/// A request held in memory: for the offline front doors and the core's own tests.
pub(crate) struct OfflineRequest {
    pub method: Method,
    pub uri: Uri,
    pub raw_target: Vec<u8>,
    pub headers: HeaderMap,
    pub peer: Option<IpAddr>,
    pub tls: bool,
    pub body: Vec<u8>,
    /// SHA-256 of the client certificate presented in the TLS handshake.
    pub client_cert_sha256: Option<[u8; 32]>,
}

impl OfflineRequest {
    /// `target` as a client would send it. A target that is not a URI at all is kept as raw
    /// bytes with `/` as its parsed path (as pingora leaves such a target), so the core
    /// refuses it as the proxy would.
    pub(crate) fn new(method: Method, target: &str) -> Result<Self, String> {
        let uri: Uri = target.parse().unwrap_or_else(|_| Uri::from_static("/"));
        Ok(OfflineRequest {
            method,
            uri,
            raw_target: target.as_bytes().to_vec(),
            headers: HeaderMap::new(),
            peer: Some(IpAddr::from([127, 0, 0, 1])),
            tls: false,
            body: Vec::new(),
            client_cert_sha256: None,
        })
    }
}

#[async_trait]
impl Request for OfflineRequest {
    fn view(&self) -> RequestView<'_> {
        RequestView {
            method: &self.method,
            uri: &self.uri,
            raw_target: &self.raw_target,
            raw_target_utf8: std::str::from_utf8(&self.raw_target).is_ok(),
            headers: &self.headers,
            peer: self.peer,
            tls: self.tls,
            tls_client_cert: self.client_cert_sha256.as_ref().map(|c| c.as_slice()),
        }
    }

    async fn read_body(&mut self, max: usize) -> Result<Vec<u8>, Reject> {
        if self.body.len() > max {
            return Err(Reject::BodyTooLarge(max));
        }
        Ok(self.body.clone())
    }
}

/// What the decision found, whether it forwards or refuses: the proxy forwards with it, logs
/// it, and adds its rate headers to whatever answer goes out.
#[derive(Debug)]
pub(crate) struct Admission {
    pub route: Option<Arc<Route>>,
    pub principal: Option<Arc<Principal>>,
    /// The path sent upstream, when it differs from the request target's bytes (normalised,
    /// or the path of an absolute-form target).
    pub rewritten_path: Option<String>,
    /// The authority of an absolute-form target: the upstream's `Host` (RFC 9112 §3.2.2).
    pub target_authority: Option<String>,
    /// Arrived over TLS: on our listener, or per `X-Forwarded-Proto` from a trusted proxy.
    pub https: bool,
    pub client_ip: Option<IpAddr>,
    /// A public route's client (its `client_id` limit key).
    pub client_id: Option<String>,
    /// The limit group with the fewest requests left: the `RateLimit-*` headers.
    pub rate: Option<Decision>,
    /// For logs and metrics: `public`, `ok`, or why authentication or scopes failed.
    pub auth_result: &'static str,
    /// Report mode: the reason (a [`Reject::reason`]) the first gate that only reports would
    /// have refused the request for. `None` when nothing would have been refused.
    pub would_deny: Option<&'static str>,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            route: None,
            principal: None,
            rewritten_path: None,
            target_authority: None,
            https: false,
            client_ip: None,
            client_id: None,
            rate: None,
            auth_result: "-",
            would_deny: None,
        }
    }
}

pub(crate) static X_AUTH_SUBJECT: http::HeaderName =
    http::HeaderName::from_static("x-auth-subject");
pub(crate) static X_AUTH_CLIENT_ID: http::HeaderName =
    http::HeaderName::from_static("x-auth-client-id");
pub(crate) static X_AUTH_SCOPES: http::HeaderName = http::HeaderName::from_static("x-auth-scopes");

impl Admission {
    /// The identity headers the upstream gets (in this order), when the caller was verified.
    /// Their values were checked to be valid header values when the token was verified.
    pub(crate) fn identity_headers(
        &self,
    ) -> impl Iterator<Item = (&'static http::HeaderName, &str)> {
        let p = self.principal.as_deref();
        [
            (&X_AUTH_SUBJECT, p.and_then(Principal::sub)),
            (&X_AUTH_CLIENT_ID, p.and_then(Principal::client_id)),
            (&X_AUTH_SCOPES, p.map(Principal::scopes)),
        ]
        .into_iter()
        .filter_map(|(n, v)| v.map(|v| (n, v)))
    }
}

/// Whether a decision leaves traces: the proxy's and the route-table tests' count (limits
/// are consumed, metrics move); `explain`'s only look (limits are peeked, no metric moves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effects {
    Count,
    LookOnly,
}

/// Decide on one request: `Ok` = forward with `adm`, `Err` = answer with the rejection. With
/// [`Effects::Count`] every outcome is counted in `metrics` (auth decisions, limiter
/// decisions, rejections) and the request is counted against its limits.
pub(crate) async fn decide<R: Request, T: Trace + Send>(
    snap: &Snapshot,
    metrics: &Metrics,
    req: &mut R,
    adm: &mut Admission,
    trace: &mut T,
    effects: Effects,
) -> Result<(), Reject> {
    let result = admit(snap, metrics, req, adm, trace, effects).await;
    match &result {
        Ok(()) => {
            if let (Some(reason), Some(route), Effects::Count) =
                (adm.would_deny, &adm.route, effects)
            {
                metrics
                    .report_only_denials
                    .with_label_values(&[route.name.as_str(), reason])
                    .inc();
            }
            trace.step(|| Step::Verdict {
                status: 0,
                reason: "forwarded",
            })
        }
        Err(reject) => {
            let route = adm.route.as_ref().map_or("_none", |r| r.name.as_str());
            if effects == Effects::Count {
                metrics
                    .rejections
                    .with_label_values(&[route, reject.reason()])
                    .inc();
            }
            trace.step(|| Step::Verdict {
                status: reject.status(),
                reason: reject.reason(),
            });
        }
    }
    result
}

/// A gate refused: `Err` when it is enforced; when it only reports, note the first such
/// refusal in `adm.would_deny` (the reason enforcing would have answered with) and go on.
fn refuse<T: Trace>(
    report: bool,
    adm: &mut Admission,
    trace: &mut T,
    reject: Reject,
) -> Result<(), Reject> {
    if !report {
        return Err(reject);
    }
    trace.step(|| Step::WouldDeny {
        status: reject.status(),
        reason: reject.reason(),
    });
    adm.would_deny.get_or_insert(reject.reason());
    Ok(())
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

async fn admit<R: Request, T: Trace + Send>(
    snap: &Snapshot,
    metrics: &Metrics,
    req: &mut R,
    adm: &mut Admission,
    trace: &mut T,
    effects: Effects,
) -> Result<(), Reject> {
    let count = effects == Effects::Count;
    let route = {
        let v = req.view();
        let trusted = &snap.config.server.trusted_proxies;
        adm.client_ip = clientkey::client_ip(
            v.peer,
            v.headers
                .get_all(X_FORWARDED_FOR)
                .iter()
                .map(|h| h.as_bytes()),
            trusted,
        );
        adm.https = v.tls
            || clientkey::forwarded_https(
                v.peer,
                v.headers
                    .get_all(X_FORWARDED_PROTO)
                    .iter()
                    .map(|h| h.as_bytes()),
                trusted,
            );
        // 0. will the upstream read this request as we do?
        check_message(&v, snap.config.server.headers_with_underscores)?;
        let absolute = target_form(&v)?;
        trace.step(|| Step::Target {
            form: if absolute.is_some() {
                "absolute"
            } else {
                "origin"
            },
            authority: absolute.clone(),
        });
        // 1. which route?
        let raw_path = v.uri.path();
        let path = normalize_path(raw_path).map_err(|e| Reject::BadPath(e.describe()))?;
        trace.step(|| Step::Path {
            raw: raw_path.to_string(),
            routed: path.to_string(),
        });
        let route = snap.routes.find(v.method, &path).cloned();
        if trace.records() {
            // Why each route before the match (or every route, when none matched) did not.
            for r in snap.routes.iter() {
                if route.as_ref().is_some_and(|m| Arc::ptr_eq(m, r)) {
                    break;
                }
                let why = r.mismatch(v.method, &path);
                trace.step(|| Step::RouteTried {
                    route: r.name.clone(),
                    why,
                });
            }
        }
        trace.step(|| Step::Route {
            matched: route.as_ref().map(|r| r.name.clone()),
        });
        adm.route = route.clone();
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
            adm.rewritten_path = Some(p);
        } else if absolute.is_some() {
            adm.rewritten_path = Some(raw_path.to_string());
        }
        adm.target_authority = absolute;
        let required = route.require_tls.unwrap_or(snap.config.server.require_tls);
        trace.step(|| Step::Tls {
            https: adm.https,
            required,
        });
        if !adm.https && required {
            return Err(Reject::TlsRequired {
                status: snap.config.server.require_tls_status,
            });
        }
        route
    };

    // 2. who is calling? On a report-mode route a refusal here or in 2b is only noted: the
    // request goes on (without identity, when the token was not valid) to the limits.
    let report = route.mode == RouteMode::Report;
    if route.auth == AuthMode::Jwt {
        let mut seen = None;
        let mut via_dpop = false;
        let authenticated = authenticate(
            snap,
            metrics,
            &req.view(),
            &route,
            adm,
            (&mut seen, &mut via_dpop),
            trace,
            effects,
        )
        .await;
        let principal = match authenticated {
            Ok(p) => Some(p),
            Err(e) => {
                let issuer = seen
                    .and_then(|i| snap.auth.issuers().get(i))
                    .map(|i| i.name())
                    .unwrap_or("_unknown");
                if count {
                    metrics.auth(issuer, e.reason());
                }
                trace.step(|| Step::Token {
                    issuer: seen.map(|_| issuer.to_string()),
                    result: e.reason(),
                });
                adm.auth_result = e.reason();
                refuse(report, adm, trace, dpop::reject(snap, &route, via_dpop, e))?;
                None
            }
        };
        // 2b. may it use this route?
        if let Some(principal) = principal {
            trace.step(|| Step::Token {
                issuer: Some(snap.auth.issuer_name(&principal).to_string()),
                result: "ok",
            });
            let checked = route.scopes.check(principal.scopes());
            trace.step(|| Step::Scopes {
                required: route.scopes.to_string(),
                granted: principal.scopes().to_string(),
                missing: checked.as_ref().err().map(|m| m.0.clone()),
            });
            if let Err(missing) = checked {
                if count {
                    metrics.auth(snap.auth.issuer_name(&principal), "insufficient_scope");
                }
                adm.auth_result = "insufficient_scope";
                // A valid token keeps its identity headers in report mode.
                adm.principal = Some(principal);
                refuse(report, adm, trace, Reject::Scope(missing))?;
            } else {
                if let Some(ok) = snap.auth_ok.get(principal.issuer_index).filter(|_| count) {
                    ok.inc();
                }
                adm.auth_result = "ok";
                adm.principal = Some(principal);
            }
        }
    } else {
        trace.step(|| Step::Public);
        adm.auth_result = "public";
    }

    // 3. may they, right now? Each key's limits are decided together; groups in file
    // order, so a refusal by a later group leaves the earlier groups' slots used. A
    // report-only group's refusal is only noted (a refused check records nothing).
    for (scope, group) in &route.limits {
        let (key, source) = limit_key(snap, req, adm, &route, &group.key, trace).await?;
        let decision = match effects {
            Effects::Count => snap.limiter.check(scope, &group.limits, &key).await,
            Effects::LookOnly => snap.limiter.peek(scope, &group.limits, &key).await,
        };
        match decision {
            Ok(decision) => {
                let allowed = decision.allowed;
                if let Some(d) = snap.route_metrics[route.index]
                    .decisions
                    .as_ref()
                    .filter(|_| count)
                {
                    if allowed {
                        d.allowed.inc();
                    } else {
                        d.limited.inc();
                    }
                }
                trace.step(|| Step::Limit {
                    scope: scope.clone(),
                    source: source.to_string(),
                    key: key.clone(),
                    allowed,
                    limit: decision.limit,
                    remaining: decision.remaining,
                });
                let retry = decision.retry_after.map(ceil_secs).unwrap_or(1).max(1);
                // The headers show the group with the fewest requests left.
                if adm
                    .rate
                    .as_ref()
                    .is_none_or(|r| decision.remaining <= r.remaining)
                {
                    adm.rate = Some(decision);
                }
                if !allowed {
                    let reject = Reject::RateLimited {
                        retry_after_secs: retry,
                    };
                    refuse(group.report_only, adm, trace, reject)?;
                }
            }
            Err(e) => {
                if let Some(d) = snap.route_metrics[route.index]
                    .decisions
                    .as_ref()
                    .filter(|_| count)
                {
                    d.error.inc();
                }
                if group.report_only {
                    warn!(route = %route.name, error = %e, "rate limiter unavailable for a report-only limit; not enforced");
                } else {
                    warn!(route = %route.name, error = %e, "rate limiter unavailable; failing closed");
                }
                refuse(group.report_only, adm, trace, Reject::LimiterUnavailable)?;
            }
        }
    }
    Ok(())
}

/// `seen`: the issuer's index once the token named one; `via_dpop`: the DPoP scheme was used.
#[allow(clippy::too_many_arguments)]
async fn authenticate<T: Trace>(
    snap: &Snapshot,
    metrics: &Metrics,
    v: &RequestView<'_>,
    route: &Route,
    adm: &Admission,
    (seen, via_dpop): (&mut Option<usize>, &mut bool),
    trace: &mut T,
    effects: Effects,
) -> Result<Arc<Principal>, AuthError> {
    let max = snap.config.server.max_token_bytes;
    let (scheme, token) = match bearer::from_authorization_with(
        v.headers
            .get_all(AUTHORIZATION)
            .iter()
            .map(|h| h.as_bytes()),
        max,
        dpop::scheme_accepted(snap, route),
    ) {
        Err(AuthError::MissingToken) => {
            // Only routes that opt in look elsewhere.
            let from_query = route
                .token_query_param
                .as_deref()
                .and_then(|name| clientkey::query_param(v.uri.query(), name))
                .map(|t| ("query", t));
            let from_cookie = || {
                route.token_cookie.as_deref().and_then(|name| {
                    clientkey::cookie(v.headers.get_all(COOKIE).iter().map(|h| h.as_bytes()), name)
                        .map(|t| ("cookie", t))
                })
            };
            match from_query.or_else(from_cookie) {
                Some((source, t)) => {
                    trace.step(|| Step::Credentials { source });
                    let t = bearer::from_value(&t, max)?;
                    return authenticate_token(snap, v, route, t.0, seen, false, trace).await;
                }
                None => {
                    trace.step(|| Step::Credentials { source: "none" });
                    return Err(AuthError::MissingToken);
                }
            }
        }
        other => other?,
    };
    *via_dpop = scheme == bearer::Scheme::Dpop;
    trace.step(|| Step::Credentials {
        source: if *via_dpop {
            "authorization (DPoP scheme)"
        } else {
            "authorization"
        },
    });
    let p = authenticate_token(snap, v, route, token.0, seen, *via_dpop, trace).await?;
    if *via_dpop {
        // Every request, also on a verified-token cache hit: the proof is per request.
        dpop::check(snap, metrics, v, adm, token.0, &p, effects, trace).await?;
    }
    Ok(p)
}

async fn authenticate_token<T: Trace>(
    snap: &Snapshot,
    v: &RequestView<'_>,
    route: &Route,
    token: &str,
    seen: &mut Option<usize>,
    via_dpop: bool,
    trace: &mut T,
) -> Result<Arc<Principal>, AuthError> {
    let needs = RouteAuth {
        issuers: route.issuers.as_deref(),
        introspect: route.introspect,
    };
    let mut introspected = None;
    let p = snap
        .auth
        .authenticate_for(bearer::BearerToken(token), needs, seen, &mut introspected)
        .await;
    if let Some(source) = introspected {
        trace.step(|| Step::Introspection {
            issuer: seen
                .and_then(|i| snap.auth.issuers().get(i))
                .map_or("_unknown", |i| i.name())
                .to_string(),
            source,
        });
    }
    let p = p?;
    if let Some(allowed) = &route.issuers {
        let name = snap.auth.issuer_name(&p);
        if !allowed.iter().any(|n| **n == *name) {
            return Err(AuthError::IssuerNotAllowed);
        }
    }
    match (dpop::mode(snap, route, &p), via_dpop) {
        // The DPoP scheme is not accepted for this issuer's tokens here: no credentials.
        (crate::config::DpopMode::Off, true) => return Err(AuthError::MissingToken),
        (crate::config::DpopMode::Required, false) => return Err(AuthError::DpopRequired),
        _ => {}
    }
    if let Some(b) = p.binding.as_deref() {
        // RFC 9449 §7.2: a DPoP-bound token sent as a bearer token is refused.
        if b.jkt.is_some() && !via_dpop {
            return Err(AuthError::DpopBound);
        }
        // RFC 8705 §3: only with the certificate it was issued to.
        if let Some(want) = b.cert_sha256 {
            if presented_cert(snap, v) != Some(want) {
                return Err(AuthError::CertificateMismatch);
            }
        }
    }
    Ok(p)
}

/// The SHA-256 of the client certificate of this request: from our own TLS handshake, else
/// from `client_cert_header` when a trusted proxy sent the request.
fn presented_cert(snap: &Snapshot, v: &RequestView<'_>) -> Option<[u8; 32]> {
    if let Some(d) = v.tls_client_cert {
        return d.try_into().ok();
    }
    let name = snap.config.server.client_cert_header.as_deref()?;
    let peer = v.peer?;
    if !snap
        .config
        .server
        .trusted_proxies
        .iter()
        .any(|n| n.contains(&peer))
    {
        return None;
    }
    let mut values = v.headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(one), None) => clientkey::cert_sha256_from_header(one.as_bytes()),
        _ => None,
    }
}

/// The limiter key and the tag of its source: the first source that yields a value;
/// `anonymous` when none does.
async fn limit_key<R: Request, T: Trace>(
    snap: &Snapshot,
    req: &mut R,
    adm: &mut Admission,
    route: &Route,
    sources: &[KeySource],
    trace: &mut T,
) -> Result<(String, Cow<'static, str>), Reject> {
    // Values are borrowed where they can be (the subject, a header) and copied once, into
    // the key. The principal is held by its own handle so `adm` stays free to update.
    let principal = adm.principal.clone();
    for source in sources {
        let value: Option<Cow<'_, str>> = match source {
            KeySource::Sub => principal.as_deref().and_then(Principal::sub).map(Cow::from),
            KeySource::Ip => adm.client_ip.map(|ip| Cow::from(ip.to_string())),
            KeySource::Header(name) => req
                .view()
                .headers
                .get(name.as_str())
                .and_then(|h| h.to_str().ok())
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(|h| Cow::from(h.to_string())),
            KeySource::Cookie(name) => clientkey::cookie(
                req.view()
                    .headers
                    .get_all(COOKIE)
                    .iter()
                    .map(|h| h.as_bytes()),
                name,
            )
            .map(Cow::from),
            KeySource::Query(name) => {
                clientkey::query_param(req.view().uri.query(), name).map(Cow::from)
            }
            // On a JWT route the client is the token's (`client_id`/`azp`) and nothing
            // else: a body or Basic value there is the caller's to choose.
            KeySource::ClientId if route.auth == AuthMode::Jwt => principal
                .as_deref()
                .and_then(Principal::client_id)
                .map(Cow::from),
            KeySource::ClientId => {
                let id = match &adm.client_id {
                    Some(id) => Some(id.clone()),
                    None => {
                        let id = public_client_id(snap, req).await?;
                        trace.step(|| Step::Client {
                            client_id: id.clone(),
                        });
                        id
                    }
                };
                if let Some(id) = &id {
                    adm.client_id = Some(id.clone());
                }
                id.map(Cow::from)
            }
        };
        if let Some(v) = value {
            let tag = match source {
                KeySource::Header(n) => Cow::from(format!("header:{n}")),
                KeySource::Cookie(n) => Cow::from(format!("cookie:{n}")),
                KeySource::Query(n) => Cow::from(format!("query:{n}")),
                KeySource::Sub => Cow::from("sub"),
                KeySource::Ip => Cow::from("ip"),
                KeySource::ClientId => Cow::from("client_id"),
            };
            return Ok((clientkey::key(&tag, &v), tag));
        }
    }
    Ok(("anonymous".to_string(), Cow::from("anonymous")))
}

/// The client of a request to a public (OAuth) route, as an authorization server would
/// read it: the HTTP Basic user, the `client_id` of a form or JSON body, and the one in
/// the query string must name one client, each at most once, and a Basic client sends
/// no `client_secret` in the body (RFC 6749 §2.3: one authentication method per
/// request; §3.1: no parameter twice). Anything else is 400: the server might pick
/// another value than the one the limit counted.
async fn public_client_id<R: Request>(
    snap: &Snapshot,
    req: &mut R,
) -> Result<Option<String>, Reject> {
    let (basic, query) = {
        let v = req.view();
        let mut authz = v.headers.get_all(AUTHORIZATION).iter();
        let basic = match (authz.next(), authz.next()) {
            (_, Some(_)) => {
                return Err(Reject::ClientAuthConflict(
                    "more than one Authorization header",
                ))
            }
            (Some(h), None) if clientkey::is_basic(h.as_bytes()) => Some(
                clientkey::basic_client_id(h.as_bytes()).ok_or(Reject::ClientAuthConflict(
                    "malformed HTTP Basic client credentials",
                ))?,
            ),
            _ => None,
        };
        let query =
            clientkey::query_client_id(v.uri.query()).map_err(Reject::ClientAuthConflict)?;
        (basic, query)
    };
    let body = body_client(snap, req).await?;
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

/// Read a small form or JSON body for `client_id` and `client_secret`.
async fn body_client<R: Request>(
    snap: &Snapshot,
    req: &mut R,
) -> Result<clientkey::BodyClient, Reject> {
    let max = snap.config.server.max_body_bytes;
    let ct = {
        let v = req.view();
        let Some(ct) = v
            .headers
            .get(CONTENT_TYPE)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
        else {
            return Ok(clientkey::BodyClient::default());
        };
        if !clientkey::readable_body_type(&ct) {
            return Ok(clientkey::BodyClient::default());
        }
        if let Some(len) = v.headers.get(CONTENT_LENGTH) {
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
        ct
    };
    let body = req.read_body(max).await?;
    clientkey::body_client(&ct, &body).map_err(Reject::BadBody)
}

/// Step 0: refuse what an upstream could frame or name differently from us.
/// - a method with lower-case letters (methods are case-sensitive, RFC 9110 §9.1: `get` is
///   not `GET`, and a route's method list would not see it, while some servers would);
/// - `Content-Length` given twice or as a list (RFC 9110 §8.6 allows refusing; `3, 3`
///   would otherwise be forwarded as is);
/// - a `Transfer-Encoding` other than exactly `chunked` (`gzip, chunked` was forwarded as
///   plain chunked with a gzip body), or beside `Content-Length` (RFC 9112 §6.1);
/// - header names with `_`, where the config refuses them.
fn check_message(v: &RequestView<'_>, underscores: UnderscoreHeaders) -> Result<(), Reject> {
    if v.method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(Reject::Malformed(
            "method names are case-sensitive and must be upper case",
        ));
    }
    let mut lengths = v.headers.get_all(CONTENT_LENGTH).iter();
    let length = lengths.next();
    if lengths.next().is_some()
        || length.is_some_and(|h| h.is_empty() || !h.as_bytes().iter().all(u8::is_ascii_digit))
    {
        return Err(Reject::Malformed(
            "Content-Length must be given once, as one number",
        ));
    }
    let mut codings = v.headers.get_all(http::header::TRANSFER_ENCODING).iter();
    if let Some(te) = codings.next() {
        let chunked = te
            .to_str()
            .is_ok_and(|h| h.trim().eq_ignore_ascii_case("chunked"));
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
        && v.headers.keys().any(|n| n.as_str().contains('_'))
    {
        return Err(Reject::Malformed(
            "header names with '_' are not accepted (CGI and WSGI servers read them as '-')",
        ));
    }
    Ok(())
}

/// RFC 9112 §3.2: origin-form (`/path?query`), or absolute-form with an http(s) scheme,
/// whose authority is returned (its path is what is routed and sent upstream). Anything
/// else (`x:/a`, `a/b`, `./a`, `*`, a target the HTTP parser could not classify and left
/// empty, one that is not valid UTF-8) is refused: pingora would route `/` and forward the
/// raw bytes.
pub(crate) fn target_form(v: &RequestView<'_>) -> Result<Option<String>, Reject> {
    const BAD: Reject = Reject::BadTarget(
        "request target must be an absolute path (origin-form) or an http(s) URL",
    );
    let raw = v.raw_target;
    if !v.raw_target_utf8 {
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
        || !v.uri.path().starts_with('/')
    {
        return Err(BAD);
    }
    // ASCII checked above.
    Ok(Some(String::from_utf8_lossy(authority).into_owned()))
}

#[cfg(test)]
mod tests;
