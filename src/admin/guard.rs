//! Who may use the admin listener, decided before any endpoint runs, in this order:
//!
//! 1. `Host` (and an absolute-form target's authority) must name this listener: the
//!    connection's local `ip:port` (IPv6 in brackets), `localhost:PORT`, or an
//!    `[admin] allowed_hosts` entry. A page that rebinds its own DNS name to the gateway
//!    still sends its own name, so DNS rebinding ends here (421). HTTP/1.1 without `Host`, or
//!    with two, is 400 (RFC 9112 §3.2).
//! 2. No page of another origin: `Sec-Fetch-Site` absent, `none` (typed in the address bar)
//!    or `same-origin` (the admin console's own requests), and `Origin`, when present, exactly
//!    this listener's origin (`http://` + the `Host` just checked). Browsers send these on
//!    every cross-site POST and `fetch` and a page cannot forge them; Prometheus, kubelet
//!    probes and curl never send them (403).
//! 3. With `[admin] token` set, every endpoint but the `/healthz` and `/readyz` probes and the
//!    console's static files (`/`, `/console.js`, `/console.css`: no data) needs
//!    `Authorization: Bearer <token>`, compared in constant time (401).

use std::net::SocketAddr;

use http::header::{AUTHORIZATION, HOST, ORIGIN};
use http::{HeaderMap, StatusCode, Version};
use pingora::http::RequestHeader;

use crate::config::{AdminSettings, AdminToken, Authority, Host};

/// The realm in the admin listener's `WWW-Authenticate`.
pub(super) const REALM: &str = "admin";

/// Why an admin request is refused; each maps to one status and JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Missing, repeated or unparseable `Host`, a target neither origin- nor absolute-form: 400.
    BadRequest(&'static str),
    /// `Host` names another server (DNS rebinding, a misrouted request): 421.
    ForeignHost,
    /// Sent by a browser on behalf of a page (`Origin`, `Sec-Fetch-Site`): 403.
    CrossSite(&'static str),
    /// No bearer credentials (none, or another scheme): 401 without an error attribute.
    MissingToken,
    /// Two `Authorization` headers: 400.
    BadAuthorization(&'static str),
    /// A bearer token that is not the admin token: 401 `invalid_token`.
    WrongToken,
}

impl Refusal {
    pub(super) fn status(&self) -> StatusCode {
        match self {
            Refusal::BadRequest(_) | Refusal::BadAuthorization(_) => StatusCode::BAD_REQUEST,
            Refusal::ForeignHost => StatusCode::MISDIRECTED_REQUEST,
            Refusal::CrossSite(_) => StatusCode::FORBIDDEN,
            Refusal::MissingToken | Refusal::WrongToken => StatusCode::UNAUTHORIZED,
        }
    }

    /// Bounded label for the log line.
    pub(super) fn reason(&self) -> &'static str {
        match self {
            Refusal::BadRequest(_) => "bad_request",
            Refusal::ForeignHost => "foreign_host",
            Refusal::CrossSite(_) => "cross_site",
            Refusal::MissingToken => "missing_token",
            Refusal::BadAuthorization(_) => "bad_authorization",
            Refusal::WrongToken => "wrong_token",
        }
    }

    /// `(error, error_description)` of the JSON body.
    pub(super) fn error_pair(&self) -> (&'static str, &'static str) {
        match self {
            Refusal::BadRequest(d) | Refusal::BadAuthorization(d) => ("invalid_request", d),
            Refusal::ForeignHost => (
                "misdirected_request",
                "the Host header does not name this admin listener",
            ),
            Refusal::CrossSite(d) => ("forbidden", d),
            Refusal::MissingToken => ("invalid_request", "missing bearer token"),
            Refusal::WrongToken => ("invalid_token", "the admin token does not match"),
        }
    }

    /// `WWW-Authenticate` value, where one belongs (RFC 6750 §3).
    pub(super) fn www_authenticate(&self) -> Option<String> {
        match self {
            Refusal::MissingToken => Some(format!("Bearer realm=\"{REALM}\"")),
            Refusal::WrongToken => Some(format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"the admin token does not match\""
            )),
            _ => None,
        }
    }
}

/// Every check, in order; `local` is the connection's local address.
pub(super) fn admit(
    req: &RequestHeader,
    local: Option<SocketAddr>,
    cfg: &AdminSettings,
) -> Result<(), Refusal> {
    check_host(req, local, &cfg.allowed_hosts)?;
    check_not_browser(&req.headers)?;
    match &cfg.token {
        Some(token) if !is_probe(req.uri.path()) && !is_static(req.uri.path()) => {
            check_token(&req.headers, token)
        }
        _ => Ok(()),
    }
}

/// kubelet probes and load-balancer health checks carry no credentials.
fn is_probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz")
}

/// The console's page, script and style: the same bytes for everyone, no data in them (the
/// page asks for the token and sends it on its data requests).
pub(super) fn is_static(path: &str) -> bool {
    matches!(path, "/" | "/console.js" | "/console.css")
}

fn check_host(
    req: &RequestHeader,
    local: Option<SocketAddr>,
    allowed: &[Authority],
) -> Result<(), Refusal> {
    let mut hosts = req.headers.get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Refusal::BadRequest("more than one Host header"));
    }
    // Absolute-form (`POST http://a:1/reload`): its authority is the target (RFC 9112 §3.2.2);
    // both it and any Host header must name this listener.
    let target = match req.uri.authority() {
        Some(a) => Some(a.as_str().as_bytes()),
        None => target_authority(req.raw_path())?,
    };
    if host.is_none() && target.is_none() {
        // HTTP/1.0 predates Host; every browser sends it, so its absence is no browser.
        return if req.version == Version::HTTP_10 {
            Ok(())
        } else {
            Err(Refusal::BadRequest("the Host header is required"))
        };
    }
    for value in host.map(|h| h.as_bytes()).into_iter().chain(target) {
        let authority = std::str::from_utf8(value)
            .ok()
            .and_then(Authority::parse)
            .ok_or(Refusal::BadRequest(
                "the Host header is not a host or host:port",
            ))?;
        if !names_listener(&authority, local, allowed) {
            return Err(Refusal::ForeignHost);
        }
    }
    Ok(())
}

/// The authority of an absolute-form target; `None` for origin-form. pingora keeps only the
/// path of an absolute-form target in `uri`; its own classifier reads the raw bytes, so the
/// authority checked here is the one pingora compared with `Host`.
fn target_authority(raw: &[u8]) -> Result<Option<&[u8]>, Refusal> {
    use pingora::http::authority::{raw_target_authority, RawTargetAuthority};
    match raw_target_authority(raw) {
        RawTargetAuthority::Absolute { authority, .. } => Ok(Some(authority)),
        RawTargetAuthority::None if raw.first() == Some(&b'/') => Ok(None),
        _ => Err(Refusal::BadRequest(
            "the request target must be a path or an absolute URL",
        )),
    }
}

/// The listener's own `ip:port`, `localhost:PORT`, or an `allowed_hosts` entry.
fn names_listener(a: &Authority, local: Option<SocketAddr>, allowed: &[Authority]) -> bool {
    let own = local.is_some_and(|local| {
        a.port == Some(local.port())
            && match &a.host {
                Host::Ip(ip) => *ip == local.ip().to_canonical(),
                Host::Name(name) => name == "localhost",
            }
    });
    own || allowed.iter().any(|entry| entry.admits(a))
}

fn check_not_browser(headers: &HeaderMap) -> Result<(), Refusal> {
    // `Host` was checked to name this listener (or was absent, HTTP/1.0): the console's origin.
    let own = headers.get(HOST).map(|h| h.as_bytes());
    let same_origin = |origin: &[u8]| {
        own.is_some_and(|host| {
            origin.len() == 7 + host.len()
                && origin[..7].eq_ignore_ascii_case(b"http://")
                && origin[7..].eq_ignore_ascii_case(host)
        })
    };
    if headers
        .get_all(ORIGIN)
        .iter()
        .any(|o| !same_origin(o.as_bytes()))
    {
        return Err(Refusal::CrossSite(
            "requests from pages of another origin are refused on the admin listener",
        ));
    }
    let fetch_site = headers.get_all("sec-fetch-site");
    if fetch_site
        .iter()
        .any(|v| v.as_bytes() != b"none" && v.as_bytes() != b"same-origin")
    {
        return Err(Refusal::CrossSite(
            "requests a page of another site makes (Sec-Fetch-Site) are refused on the admin listener",
        ));
    }
    Ok(())
}

fn check_token(headers: &HeaderMap, token: &AdminToken) -> Result<(), Refusal> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(Refusal::MissingToken);
    };
    if values.next().is_some() {
        return Err(Refusal::BadAuthorization(
            "more than one Authorization header",
        ));
    }
    let value = value.as_bytes();
    let trim = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !trim(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !trim(b))
        .map_or(start, |i| i + 1);
    let value = &value[start..end];
    let (scheme, presented) = match value.iter().position(|b| *b == b' ') {
        Some(i) => (&value[..i], &value[i + 1..]),
        None => (value, &b""[..]),
    };
    // Another scheme counts as no credentials (RFC 6750 §3.1), as on the data listener.
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(Refusal::MissingToken);
    }
    let presented = &presented[presented.iter().take_while(|b| **b == b' ').count()..];
    if token.matches(presented) {
        Ok(())
    } else {
        Err(Refusal::WrongToken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "admin-token-0123456789";

    fn settings(allowed: &[&str], token: bool) -> AdminSettings {
        AdminSettings {
            listen: "127.0.0.1:9091".into(),
            allowed_hosts: allowed
                .iter()
                .map(|h| Authority::parse(h).unwrap())
                .collect(),
            token: token.then(|| AdminToken::new(TOKEN).unwrap()),
        }
    }

    fn req(path: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", path.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn local() -> Option<SocketAddr> {
        Some("127.0.0.1:9091".parse().unwrap())
    }

    fn check(path: &str, headers: &[(&str, &str)], cfg: &AdminSettings) -> Result<(), Refusal> {
        admit(&req(path, headers), local(), cfg)
    }

    #[test]
    fn host_naming_the_listener_is_admitted() {
        let cfg = settings(&["admin.example"], false);
        for host in [
            "127.0.0.1:9091",
            "localhost:9091",
            "LocalHost:9091",
            "admin.example:9091",
            "admin.example",
        ] {
            assert_eq!(check("/reload", &[("host", host)], &cfg), Ok(()), "{host}");
        }
        let v6 = admit(
            &req("/reload", &[("host", "[::1]:9091")]),
            Some("[::1]:9091".parse().unwrap()),
            &cfg,
        );
        assert_eq!(v6, Ok(()));
    }

    #[test]
    fn foreign_host_is_misdirected_421() {
        let cfg = settings(&[], false);
        for host in [
            "evil.example:9091",
            "127.0.0.1:9092",
            "127.0.0.1",
            "localhost",
            "10.0.0.1:9091",
        ] {
            let r = check("/reload", &[("host", host)], &cfg);
            assert_eq!(r, Err(Refusal::ForeignHost), "{host}");
            assert_eq!(r.unwrap_err().status(), 421);
        }
    }

    #[test]
    fn missing_repeated_or_junk_host_is_400() {
        let cfg = settings(&[], false);
        assert!(matches!(
            check("/reload", &[], &cfg),
            Err(Refusal::BadRequest(_))
        ));
        let two = [("host", "127.0.0.1:9091"), ("host", "127.0.0.1:9091")];
        assert!(matches!(
            check("/reload", &two, &cfg),
            Err(Refusal::BadRequest(_))
        ));
        let junk = [("host", "127.0.0.1:9091/x")];
        assert!(matches!(
            check("/reload", &junk, &cfg),
            Err(Refusal::BadRequest(_))
        ));
        let mut old = req("/healthz", &[]);
        old.set_version(Version::HTTP_10);
        assert_eq!(admit(&old, local(), &cfg), Ok(()));
    }

    #[test]
    fn absolute_form_target_must_name_the_listener_too() {
        let cfg = settings(&[], false);
        let r = check(
            "http://evil.example:9091/reload",
            &[("host", "127.0.0.1:9091")],
            &cfg,
        );
        assert_eq!(r, Err(Refusal::ForeignHost));
        let ok = check("http://127.0.0.1:9091/reload", &[], &cfg);
        assert_eq!(ok, Ok(()));
        let host = [("host", "127.0.0.1:9091")];
        for odd in ["x:/reload", "reload", "*", "ftp://evil.example/reload"] {
            let r = check(odd, &host, &cfg);
            assert!(r.is_err(), "{odd}: {r:?}");
        }
    }

    #[test]
    fn browser_requests_are_refused_403() {
        let cfg = settings(&[], false);
        let host = ("host", "127.0.0.1:9091");
        for extra in [
            ("origin", "http://evil.example"),
            ("origin", "null"),
            ("origin", "http://127.0.0.1:9092"),
            ("origin", "https://127.0.0.1:9091"),
            ("origin", "http://127.0.0.1:9091/"),
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-site", "same-site"),
        ] {
            let r = check("/metrics", &[host, extra], &cfg);
            assert!(matches!(r, Err(Refusal::CrossSite(_))), "{extra:?}");
        }
        let typed = check("/metrics", &[host, ("sec-fetch-site", "none")], &cfg);
        assert_eq!(typed, Ok(()));
        // The console's own requests: same origin.
        let own = check(
            "/explain",
            &[
                host,
                ("origin", "http://127.0.0.1:9091"),
                ("sec-fetch-site", "same-origin"),
            ],
            &cfg,
        );
        assert_eq!(own, Ok(()));
    }

    #[test]
    fn token_is_required_except_on_probes() {
        let cfg = settings(&[], true);
        let host = ("host", "127.0.0.1:9091");
        let right = format!("Bearer {TOKEN}");
        let lower = format!("bearer  {TOKEN} ");
        assert_eq!(check("/reload", &[host], &cfg), Err(Refusal::MissingToken));
        assert_eq!(
            check("/metrics", &[host, ("authorization", "Basic YTpi")], &cfg),
            Err(Refusal::MissingToken)
        );
        assert_eq!(
            check("/metrics", &[host, ("authorization", "Bearer nope")], &cfg),
            Err(Refusal::WrongToken)
        );
        assert_eq!(
            check("/metrics", &[host, ("authorization", "Bearer")], &cfg),
            Err(Refusal::WrongToken)
        );
        assert!(matches!(
            check(
                "/metrics",
                &[host, ("authorization", &right), ("authorization", &right)],
                &cfg
            ),
            Err(Refusal::BadAuthorization(_))
        ));
        assert_eq!(
            check("/metrics", &[host, ("authorization", &right)], &cfg),
            Ok(())
        );
        assert_eq!(
            check("/reload", &[host, ("authorization", &lower)], &cfg),
            Ok(())
        );
        assert_eq!(check("/healthz", &[host], &cfg), Ok(()));
        assert_eq!(check("/readyz", &[host], &cfg), Ok(()));
        assert_eq!(check("/nope", &[host], &cfg), Err(Refusal::MissingToken));
    }

    #[test]
    fn refusals_never_carry_the_token() {
        let all = [
            Refusal::BadRequest("x"),
            Refusal::ForeignHost,
            Refusal::CrossSite("x"),
            Refusal::MissingToken,
            Refusal::BadAuthorization("x"),
            Refusal::WrongToken,
        ];
        for r in all {
            let text = format!("{r:?} {:?} {:?}", r.error_pair(), r.www_authenticate());
            assert!(!text.contains(TOKEN), "{text}");
        }
        assert_eq!(
            Refusal::MissingToken.www_authenticate().unwrap(),
            "Bearer realm=\"admin\""
        );
    }
}
