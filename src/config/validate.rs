//! Step 0, continued: file structs -> runtime types. Parse everything, then fail with every
//! problem at once, each with its TOML location.

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use jsonwebtoken::Algorithm;

use super::file::*;
use super::introspection::{issuer_introspection, route_problems, IntrospectionConfig};
use super::{AdminToken, Authority, ConfigError, Problem};
pub use crate::policy::{AuthMode, DpopMode, RouteMode};
use crate::policy::{KeySource, LimitGroup, PathTemplate, RequiredScopes};
use crate::ratelimit::{Backend, LimitSpec, OnBackendError, RateLimiterConfig};

/// The validated configuration the gateway runs on.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    pub server: ServerSettings,
    pub admin: AdminSettings,
    pub logging: LoggingSettings,
    /// The limiter exactly as `ratelimit` takes it (its `Debug` redacts the Redis password).
    pub rate_limit: RateLimiterConfig,
    pub issuers: Vec<IssuerConfig>,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    pub listen: String,
    pub trusted_proxies: Vec<IpNet>,
    pub threads: usize,
    pub grace_period: Duration,
    pub upstream_keepalive_pool_size: usize,
    pub max_token_bytes: usize,
    pub max_body_bytes: usize,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub h2c: bool,
    pub upgrade_sock: String,
    pub pid_file: String,
    pub require_tls: bool,
    /// 403 or 426.
    pub require_tls_status: u16,
    pub headers_with_underscores: UnderscoreHeaders,
    /// Header names forwarded as spelled (pingora's case map kept) or as `http` writes them.
    pub preserve_header_case: bool,
    /// Connection limits (`proxy::conn`).
    pub max_header_bytes: usize,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Client certificate verification on the TLS listener.
    pub client_tls: Option<ClientTls>,
    /// Lower-case header name carrying a client certificate from a trusted proxy.
    pub client_cert_header: Option<String>,
    /// `public_url` normalised to `scheme://host[:port]` (lower case, no default port).
    pub public_origin: Option<String>,
    pub dpop: DpopSettings,
}

/// The DPoP proof algorithms accepted when the config names none (asymmetric only).
pub const DEFAULT_DPOP_ALGORITHMS: &[Algorithm] = &[
    Algorithm::ES256,
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::EdDSA,
];

/// How DPoP proofs are checked (`[server] dpop_*`).
#[derive(Debug, Clone, PartialEq)]
pub struct DpopSettings {
    pub algorithms: Vec<Algorithm>,
    pub max_age: Duration,
    pub leeway: Duration,
}

impl DpopSettings {
    /// How long a proof's `jti` is remembered: every `iat` still accepted.
    pub fn replay_window(&self) -> Duration {
        self.max_age + self.leeway * 2
    }
}

/// `[server.tls] client_ca_path` / `client_auth`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientTls {
    pub ca_path: PathBuf,
    /// A client without a certificate fails the handshake.
    pub required: bool,
}

/// What becomes of request header names holding `_` (CGI/WSGI servers read `X_Auth_Subject`
/// as `X-Auth-Subject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnderscoreHeaders {
    /// Not forwarded (nginx's default).
    Drop,
    /// 400 `invalid_request`.
    Refuse,
    /// Forwarded, except names that read as a header the gateway sets.
    Forward,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminSettings {
    pub listen: String,
    /// `Host` values answered besides the listener's own address and `localhost:PORT`.
    pub allowed_hosts: Vec<Authority>,
    /// Required on every endpoint but the probes when set (`Debug` redacts it).
    pub token: Option<AdminToken>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
    /// JSON, or text when stderr is a terminal.
    Auto,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoggingSettings {
    pub format: LogFormat,
    pub level: String,
    pub access_log: bool,
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    Url(String),
    File(PathBuf),
    Discovery(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct IssuerConfig {
    pub name: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub jwks: JwksSource,
    pub algorithms: Vec<Algorithm>,
    pub leeway: Duration,
    pub strip_authorization: bool,
    pub refresh: Duration,
    pub min_refresh: Duration,
    pub max_refresh: Duration,
    pub unknown_kid_cooldown: Duration,
    pub fetch_timeout: Duration,
    pub dpop: DpopMode,
    /// RFC 7662: opaque tokens, and JWTs on `introspect = true` routes.
    pub introspection: Option<IntrospectionConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub name: String,
    pub peers: Vec<SocketAddr>,
    pub tls: bool,
    pub sni: String,
    pub verify_cert: bool,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    pub name: String,
    pub methods: Option<Vec<http::Method>>,
    pub path: PathTemplate,
    pub upstream: String,
    pub auth: AuthMode,
    pub scopes: RequiredScopes,
    pub issuers: Option<Vec<String>>,
    pub token_query_param: Option<String>,
    pub token_cookie: Option<String>,
    /// Limits grouped by key, in file order.
    pub limit_groups: Vec<LimitGroup>,
    pub allow_encoded_slashes: bool,
    /// `None`: the server default.
    pub require_tls: Option<bool>,
    /// Introspect every token on this route, JWTs too.
    pub introspect: bool,
    pub mode: RouteMode,
    /// `None`: the token issuer's default.
    pub dpop: Option<DpopMode>,
}

struct Collector {
    problems: Vec<Problem>,
}

impl Collector {
    fn push(&mut self, location: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            location: location.into(),
            message: message.into(),
        });
    }
}

/// Build runtime types from the file; every problem is reported.
pub fn validate(file: &GatewayFile, base_dir: &Path) -> Result<GatewayConfig, ConfigError> {
    let mut c = Collector {
        problems: Vec::new(),
    };
    let server = server_settings(&file.server, base_dir, &mut c);
    if !is_socket_addr(&file.admin.listen) {
        c.push(
            "admin.listen",
            format!("{:?} is not an ip:port address", file.admin.listen),
        );
    } else if file.admin.listen == file.server.listen {
        c.push("admin.listen", "must differ from server.listen");
    }
    let admin = admin_settings(&file.admin, &mut c);
    let logging = logging_settings(&file.logging, &mut c);
    let rate_limit = rate_limit_settings(&file.rate_limit, &mut c);

    let mut issuers = Vec::new();
    let mut names = HashSet::new();
    let mut iss_values = HashSet::new();
    for (i, raw) in file.issuers.iter().enumerate() {
        let at = format!("issuers[{i}] {:?}", raw.name);
        if !names.insert(raw.name.clone()) {
            c.push(&at, format!("duplicate issuer name {:?}", raw.name));
        }
        if !iss_values.insert(raw.issuer.clone()) {
            c.push(
                &at,
                format!("another issuer already has issuer = {:?}", raw.issuer),
            );
        }
        if let Some(cfg) = issuer(raw, base_dir, &at, &mut c) {
            issuers.push(cfg);
        }
    }

    let mut upstreams = Vec::new();
    let mut up_names = HashSet::new();
    for (i, raw) in file.upstreams.iter().enumerate() {
        let at = format!("upstreams[{i}] {:?}", raw.name);
        if !up_names.insert(raw.name.clone()) {
            c.push(&at, format!("duplicate upstream name {:?}", raw.name));
        }
        if let Some(cfg) = upstream(raw, &at, &mut c) {
            upstreams.push(cfg);
        }
    }

    let mut routes = Vec::new();
    let mut route_names = HashSet::new();
    for (i, raw) in file.routes.iter().enumerate() {
        let at = format!("routes[{i}] {:?}", raw.name);
        if !route_names.insert(raw.name.clone()) {
            c.push(&at, format!("duplicate route name {:?}", raw.name));
        }
        let introspecting: Vec<(&str, bool)> = file
            .issuers
            .iter()
            .map(|i| (i.name.as_str(), i.introspection_endpoint.is_some()))
            .collect();
        let jwt_route = matches!(raw.auth.as_deref(), None | Some("jwt"));
        route_problems(raw, jwt_route, &introspecting, &at, &mut c.problems);
        if let Some(cfg) = route(
            raw,
            &up_names,
            &names,
            !file.issuers.is_empty(),
            &at,
            &mut c,
        ) {
            routes.push(cfg);
        }
    }
    if file.routes.is_empty() {
        c.push("routes", "no routes: every request would be answered 404");
    }

    if !c.problems.is_empty() {
        return Err(ConfigError::Invalid(c.problems));
    }
    Ok(GatewayConfig {
        server,
        admin,
        logging,
        rate_limit,
        issuers,
        upstreams,
        routes,
    })
}

fn is_socket_addr(s: &str) -> bool {
    s.parse::<SocketAddr>().is_ok()
}

fn server_settings(f: &ServerFile, base_dir: &Path, c: &mut Collector) -> ServerSettings {
    if !is_socket_addr(&f.listen) {
        c.push(
            "server.listen",
            format!("{:?} is not an ip:port address", f.listen),
        );
    }
    let mut trusted = Vec::new();
    for (i, cidr) in f.trusted_proxies.iter().enumerate() {
        match parse_cidr(cidr) {
            Some(net) => trusted.push(net),
            None => c.push(
                format!("server.trusted_proxies[{i}]"),
                format!("{cidr:?} is not a CIDR (e.g. 10.0.0.0/8) or an IP address"),
            ),
        }
    }
    if f.threads == Some(0) {
        c.push("server.threads", "must be at least 1");
    }
    let max_body = f.max_body_bytes.unwrap_or(16 * 1024);
    if max_body > 64 * 1024 {
        c.push(
            "server.max_body_bytes",
            "at most 65536 (the body is buffered to be forwarded unchanged)",
        );
    }
    // pingora refuses heads past 1048575 bytes (`MAX_HEADER_SIZE`) whatever this says.
    let max_header_bytes = f.max_header_bytes.unwrap_or(32 * 1024);
    if !(1024..=1_048_575).contains(&max_header_bytes) {
        c.push(
            "server.max_header_bytes",
            format!("{max_header_bytes} is not from 1024 to 1048575"),
        );
    }
    let client_tls = f.tls.as_ref().and_then(|t| {
        let required = match t.client_auth.as_deref() {
            None | Some("optional") => false,
            Some("required") => true,
            Some(other) => {
                c.push(
                    "server.tls.client_auth",
                    format!("{other:?} is neither \"optional\" nor \"required\""),
                );
                false
            }
        };
        match &t.client_ca_path {
            Some(p) => {
                let ca = resolve(base_dir, p);
                if !ca.is_file() {
                    c.push(
                        "server.tls.client_ca_path",
                        format!("{} is not a readable file", ca.display()),
                    );
                }
                Some(ClientTls {
                    ca_path: ca,
                    required,
                })
            }
            None => {
                if t.client_auth.is_some() {
                    c.push(
                        "server.tls.client_auth",
                        "needs client_ca_path (the CAs client certificates must chain to)",
                    );
                }
                None
            }
        }
    });
    let client_cert_header = match f.client_cert_header.as_deref() {
        None => None,
        Some(h) if http::HeaderName::from_bytes(h.as_bytes()).is_ok() => {
            if f.trusted_proxies.is_empty() {
                c.push(
                    "server.client_cert_header",
                    "is believed only from trusted_proxies, and none are listed",
                );
            }
            Some(h.to_ascii_lowercase())
        }
        Some(h) => {
            c.push(
                "server.client_cert_header",
                format!("{h:?} is not a header name"),
            );
            None
        }
    };
    let tls = f.tls.as_ref().map(|t| {
        let cert = resolve(base_dir, &t.cert_path);
        let key = resolve(base_dir, &t.key_path);
        if !cert.is_file() {
            c.push(
                "server.tls.cert_path",
                format!("{} is not a readable file", cert.display()),
            );
        }
        if !key.is_file() {
            c.push(
                "server.tls.key_path",
                format!("{} is not a readable file", key.display()),
            );
        }
        (cert, key)
    });
    ServerSettings {
        listen: f.listen.clone(),
        trusted_proxies: trusted,
        threads: f.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }),
        grace_period: Duration::from_secs(f.grace_period_secs.unwrap_or(30)),
        upstream_keepalive_pool_size: f.upstream_keepalive_pool_size.unwrap_or(512),
        max_token_bytes: f.max_token_bytes.unwrap_or(8192),
        max_body_bytes: max_body,
        tls,
        h2c: f.h2c.unwrap_or(true),
        upgrade_sock: f
            .upgrade_sock
            .clone()
            .unwrap_or_else(|| "/tmp/wetrials-gateway-upgrade.sock".into()),
        pid_file: f
            .pid_file
            .clone()
            .unwrap_or_else(|| "/tmp/wetrials-gateway.pid".into()),
        require_tls: f.require_tls.unwrap_or(false),
        require_tls_status: match f.require_tls_status {
            None => 403,
            Some(s @ (403 | 426)) => s,
            Some(s) => {
                c.push(
                    "server.require_tls_status",
                    format!("{s} is neither 403 nor 426"),
                );
                403
            }
        },
        headers_with_underscores: match f.headers_with_underscores.as_deref() {
            None | Some("drop") => UnderscoreHeaders::Drop,
            Some("refuse") => UnderscoreHeaders::Refuse,
            Some("forward") => UnderscoreHeaders::Forward,
            Some(other) => {
                c.push(
                    "server.headers_with_underscores",
                    format!("{other:?} is not one of \"drop\", \"refuse\", \"forward\""),
                );
                UnderscoreHeaders::Drop
            }
        },
        preserve_header_case: f.preserve_header_case.unwrap_or(true),
        max_header_bytes,
        header_timeout: positive_ms(c, "server.header_timeout_ms", f.header_timeout_ms, 10_000),
        keepalive_timeout: positive_ms(
            c,
            "server.keepalive_timeout_ms",
            f.keepalive_timeout_ms,
            75_000,
        ),
        max_connections: at_least_one(c, "server.max_connections", f.max_connections, 10_000),
        max_connections_per_ip: at_least_one(
            c,
            "server.max_connections_per_ip",
            f.max_connections_per_ip,
            256,
        ),
        client_tls,
        client_cert_header,
        public_origin: public_origin(f.public_url.as_deref(), c),
        dpop: dpop_settings(f, c),
    }
}

fn public_origin(url: Option<&str>, c: &mut Collector) -> Option<String> {
    let url = url?;
    let origin = url.split_once("://").and_then(|(scheme, rest)| {
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            return None;
        }
        crate::policy::normalize_origin(&scheme.to_ascii_lowercase(), authority)
    });
    if origin.is_none() {
        c.push(
            "server.public_url",
            format!("{url:?} is not an http(s) URL of scheme, host and port only (e.g. \"https://api.wetrials.com\")"),
        );
    }
    origin
}

fn dpop_settings(f: &ServerFile, c: &mut Collector) -> DpopSettings {
    let mut algorithms = Vec::new();
    match &f.dpop_algorithms {
        None => algorithms.extend_from_slice(DEFAULT_DPOP_ALGORITHMS),
        Some(list) => {
            if list.is_empty() {
                c.push("server.dpop_algorithms", "must list at least one algorithm");
            }
            for (i, a) in list.iter().enumerate() {
                match parse_algorithm(a) {
                    Ok(alg) if !algorithms.contains(&alg) => algorithms.push(alg),
                    Ok(_) => {}
                    Err(e) => c.push(format!("server.dpop_algorithms[{i}]"), e),
                }
            }
        }
    }
    let max_age = f.dpop_max_age_secs.unwrap_or(60);
    if !(1..=3600).contains(&max_age) {
        c.push("server.dpop_max_age_secs", "must be between 1 and 3600");
    }
    let leeway = f.dpop_leeway_secs.unwrap_or(5);
    if leeway > 300 {
        c.push("server.dpop_leeway_secs", "at most 300 seconds");
    }
    DpopSettings {
        algorithms,
        max_age: Duration::from_secs(max_age.clamp(1, 3600)),
        leeway: Duration::from_secs(leeway.min(300)),
    }
}

fn dpop_mode(v: Option<&str>, at: String, c: &mut Collector) -> Option<DpopMode> {
    match v? {
        "off" => Some(DpopMode::Off),
        "allowed" => Some(DpopMode::Allowed),
        "required" => Some(DpopMode::Required),
        other => {
            c.push(
                at,
                format!("{other:?} is not one of \"off\", \"allowed\", \"required\""),
            );
            None
        }
    }
}

fn positive_ms(c: &mut Collector, at: &str, v: Option<u64>, default: u64) -> Duration {
    if v == Some(0) {
        c.push(at, "must be at least 1");
    }
    Duration::from_millis(v.unwrap_or(default).max(1))
}

fn at_least_one(c: &mut Collector, at: &str, v: Option<usize>, default: usize) -> usize {
    if v == Some(0) {
        c.push(at, "must be at least 1");
    }
    v.unwrap_or(default).max(1)
}

fn resolve(base_dir: &Path, p: &str) -> PathBuf {
    let path = PathBuf::from(p);
    if path.is_absolute() {
        path
    } else {
        base_dir.join(path)
    }
}

/// `10.0.0.0/8`, or a bare address meaning that one host.
pub fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

fn admin_settings(f: &AdminFile, c: &mut Collector) -> AdminSettings {
    let mut allowed_hosts = Vec::new();
    for (i, h) in f.allowed_hosts.iter().enumerate() {
        match Authority::parse(h) {
            Some(a) => allowed_hosts.push(a),
            None => c.push(
                format!("admin.allowed_hosts[{i}]"),
                format!("{h:?} is not a host or host:port (IPv6 in brackets)"),
            ),
        }
    }
    // The problem names the rule, never the value: it is a secret.
    let token = f.token.as_ref().and_then(|t| match AdminToken::new(&t.0) {
        Ok(t) => Some(t),
        Err(e) => {
            c.push("admin.token", e);
            None
        }
    });
    AdminSettings {
        listen: f.listen.clone(),
        allowed_hosts,
        token,
    }
}

fn logging_settings(f: &LoggingFile, c: &mut Collector) -> LoggingSettings {
    let format = match f.format.as_deref() {
        None => LogFormat::Auto,
        Some("json") => LogFormat::Json,
        Some("text") => LogFormat::Text,
        Some(other) => {
            c.push(
                "logging.format",
                format!("{other:?} is not one of \"json\", \"text\""),
            );
            LogFormat::Json
        }
    };
    let level = f.level.clone().unwrap_or_else(|| "info".to_string());
    if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
        c.push(
            "logging.level",
            format!("{level:?} is not a valid log filter"),
        );
    }
    LoggingSettings {
        format,
        level,
        access_log: f.access_log.unwrap_or(true),
    }
}

fn rate_limit_settings(f: &RateLimitFile, c: &mut Collector) -> RateLimiterConfig {
    let pool_size = f.pool_size.unwrap_or(4);
    if pool_size == 0 || pool_size > 256 {
        c.push("rate_limit.pool_size", "must be between 1 and 256");
    }
    let timeout_ms = f.timeout_ms.unwrap_or(50);
    if timeout_ms == 0 || timeout_ms > 10_000 {
        c.push("rate_limit.timeout_ms", "must be between 1 and 10000");
    }
    let backend = match f.backend.as_deref() {
        None | Some("memory") => Backend::Memory,
        Some("redis") => match &f.redis_url {
            Some(url) if url.starts_with("redis://") || url.starts_with("rediss://") => {
                Backend::Redis {
                    url: url.clone(),
                    pool_size,
                    timeout: Duration::from_millis(timeout_ms),
                    key_prefix: f.key_prefix.clone().unwrap_or_else(|| "wtgw".to_string()),
                }
            }
            Some(_) => {
                c.push(
                    "rate_limit.redis_url",
                    "must start with redis:// or rediss://",
                );
                Backend::Memory
            }
            None => {
                c.push("rate_limit.redis_url", "required with backend = \"redis\"");
                Backend::Memory
            }
        },
        Some(other) => {
            c.push(
                "rate_limit.backend",
                format!("{other:?} is not one of \"memory\", \"redis\""),
            );
            Backend::Memory
        }
    };
    let on_backend_error = match f.on_backend_error.as_deref() {
        None | Some("fail_open") => OnBackendError::FailOpen,
        Some("fail_closed") => OnBackendError::FailClosed,
        Some(other) => {
            c.push(
                "rate_limit.on_backend_error",
                format!("{other:?} is not one of \"fail_open\", \"fail_closed\""),
            );
            OnBackendError::FailOpen
        }
    };
    let memory_max_keys = f.memory_max_keys.unwrap_or(1_000_000);
    if memory_max_keys == 0 {
        c.push("rate_limit.memory_max_keys", "must be at least 1");
    }
    RateLimiterConfig {
        backend,
        on_backend_error,
        memory_max_keys,
    }
}

fn parse_algorithm(s: &str) -> Result<Algorithm, String> {
    match s {
        "none" => Err("\"none\" is never allowed".into()),
        s if s.starts_with("HS") => Err(format!(
            "{s:?}: HMAC algorithms are not allowed with public keys"
        )),
        s => s.parse::<Algorithm>().ok().ok_or_else(|| {
            format!("{s:?} is not a supported algorithm (RS*, PS*, ES256, ES384, EdDSA)")
        }),
    }
}

fn is_http_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

fn issuer(f: &IssuerFile, base_dir: &Path, at: &str, c: &mut Collector) -> Option<IssuerConfig> {
    let before = c.problems.len();
    if f.name.trim().is_empty() {
        c.push(format!("{at}.name"), "must not be empty");
    }
    if f.issuer.is_empty() {
        c.push(format!("{at}.issuer"), "must not be empty");
    }
    if f.audiences.is_empty() {
        c.push(
            format!("{at}.audiences"),
            "at least one audience is required (`aud` must match)",
        );
    }
    let jwks = match (&f.jwks_uri, &f.discovery_url) {
        (Some(_), Some(_)) => {
            c.push(at, "set either jwks_uri or discovery_url, not both");
            None
        }
        (None, None) => {
            c.push(at, "one of jwks_uri or discovery_url is required");
            None
        }
        (Some(uri), None) if is_http_url(uri) => Some(JwksSource::Url(uri.clone())),
        (Some(uri), None) => {
            let p = PathBuf::from(uri.strip_prefix("file://").unwrap_or(uri));
            if !p.is_absolute() {
                c.push(
                    format!("{at}.jwks_uri"),
                    "must be an http(s) URL or an absolute file path",
                );
                None
            } else {
                let _ = base_dir;
                Some(JwksSource::File(p))
            }
        }
        (None, Some(url)) if is_http_url(url) => Some(JwksSource::Discovery(url.clone())),
        (None, Some(_)) => {
            c.push(format!("{at}.discovery_url"), "must be an http(s) URL");
            None
        }
    };
    let mut algorithms = Vec::new();
    let raw_algs = f
        .algorithms
        .clone()
        .unwrap_or_else(|| vec!["RS256".to_string()]);
    if raw_algs.is_empty() {
        c.push(
            format!("{at}.algorithms"),
            "must list at least one algorithm",
        );
    }
    for (i, a) in raw_algs.iter().enumerate() {
        match parse_algorithm(a) {
            Ok(alg) if !algorithms.contains(&alg) => algorithms.push(alg),
            Ok(_) => {}
            Err(e) => c.push(format!("{at}.algorithms[{i}]"), e),
        }
    }
    let leeway = f.leeway_secs.unwrap_or(30);
    if leeway > 600 {
        c.push(format!("{at}.leeway_secs"), "at most 600 seconds");
    }
    let min_refresh = f.jwks_min_refresh_secs.unwrap_or(30).max(1);
    let max_refresh = f.jwks_max_refresh_secs.unwrap_or(86_400);
    let refresh = f.jwks_refresh_secs.unwrap_or(300);
    if min_refresh > max_refresh {
        c.push(
            format!("{at}.jwks_min_refresh_secs"),
            "must not exceed jwks_max_refresh_secs",
        );
    }
    let dpop = dpop_mode(f.dpop.as_deref(), format!("{at}.dpop"), c).unwrap_or_default();
    let introspection = issuer_introspection(f, at, &mut c.problems);
    if c.problems.len() != before {
        return None;
    }
    Some(IssuerConfig {
        name: f.name.clone(),
        issuer: f.issuer.clone(),
        audiences: f.audiences.clone(),
        jwks: jwks?,
        algorithms,
        leeway: Duration::from_secs(leeway),
        strip_authorization: f.strip_authorization.unwrap_or(false),
        refresh: Duration::from_secs(refresh.clamp(min_refresh, max_refresh)),
        min_refresh: Duration::from_secs(min_refresh),
        max_refresh: Duration::from_secs(max_refresh),
        unknown_kid_cooldown: Duration::from_secs(f.unknown_kid_cooldown_secs.unwrap_or(10)),
        fetch_timeout: Duration::from_millis(f.jwks_timeout_ms.unwrap_or(3000).max(1)),
        dpop,
        introspection,
    })
}

fn upstream(f: &UpstreamFile, at: &str, c: &mut Collector) -> Option<UpstreamConfig> {
    let before = c.problems.len();
    if f.peers.is_empty() {
        c.push(format!("{at}.peers"), "at least one peer is required");
    }
    let mut peers = Vec::new();
    for (i, p) in f.peers.iter().enumerate() {
        match p.to_socket_addrs().map(|mut it| it.next()) {
            Ok(Some(addr)) => peers.push(addr),
            _ => c.push(
                format!("{at}.peers[{i}]"),
                format!("{p:?} is not a resolvable host:port"),
            ),
        }
    }
    let tls = f.tls.unwrap_or(false);
    let sni = f.sni.clone().unwrap_or_else(|| {
        f.peers
            .first()
            .and_then(|p| {
                p.rsplit_once(':')
                    .map(|(h, _)| h.trim_matches(['[', ']']).to_string())
            })
            .unwrap_or_default()
    });
    let ms = |v: Option<u64>, d: u64| Duration::from_millis(v.unwrap_or(d).max(1));
    if c.problems.len() != before {
        return None;
    }
    Some(UpstreamConfig {
        name: f.name.clone(),
        peers,
        tls,
        sni,
        verify_cert: f.verify_cert.unwrap_or(true),
        connect_timeout: ms(f.connect_timeout_ms, 2000),
        read_timeout: ms(f.read_timeout_ms, 30_000),
        write_timeout: ms(f.write_timeout_ms, 30_000),
        idle_timeout: ms(f.idle_timeout_ms, 60_000),
    })
}

fn route(
    f: &RouteFile,
    upstreams: &HashSet<String>,
    issuers: &HashSet<String>,
    any_issuer: bool,
    at: &str,
    c: &mut Collector,
) -> Option<RouteConfig> {
    let before = c.problems.len();
    let path = match PathTemplate::parse(&f.path) {
        Ok(p) => Some(p),
        Err(e) => {
            c.push(format!("{at}.path"), e);
            None
        }
    };
    let methods = f.methods.as_ref().map(|ms| {
        if ms.is_empty() {
            c.push(
                format!("{at}.methods"),
                "an empty list matches nothing; omit it for any method",
            );
        }
        ms.iter()
            .enumerate()
            .filter_map(|(i, m)| {
                let upper = m.to_ascii_uppercase();
                match http::Method::from_bytes(upper.as_bytes()) {
                    Ok(method) if upper == *m => Some(method),
                    Ok(_) => {
                        c.push(
                            format!("{at}.methods[{i}]"),
                            format!("{m:?}: write methods in upper case"),
                        );
                        None
                    }
                    Err(_) => {
                        c.push(
                            format!("{at}.methods[{i}]"),
                            format!("{m:?} is not an HTTP method"),
                        );
                        None
                    }
                }
            })
            .collect::<Vec<_>>()
    });
    if !upstreams.contains(&f.upstream) {
        c.push(
            format!("{at}.upstream"),
            format!("unknown upstream {:?}", f.upstream),
        );
    }
    let auth = match f.auth.as_deref() {
        None | Some("jwt") => AuthMode::Jwt,
        Some("none") => AuthMode::None,
        Some(other) => {
            c.push(
                format!("{at}.auth"),
                format!("{other:?} is not one of \"jwt\", \"none\""),
            );
            AuthMode::Jwt
        }
    };
    if auth == AuthMode::Jwt && !any_issuer {
        c.push(
            format!("{at}.auth"),
            "auth = \"jwt\" needs at least one [[issuers]]",
        );
    }
    let mode = match f.mode.as_deref() {
        None | Some("enforce") => RouteMode::Enforce,
        Some("report") if auth == AuthMode::None => {
            c.push(
                format!("{at}.mode"),
                "\"report\" has no effect on an auth = \"none\" route (for its limits: report_only = true)",
            );
            RouteMode::Enforce
        }
        Some("report") => RouteMode::Report,
        Some(other) => {
            c.push(
                format!("{at}.mode"),
                format!("{other:?} is not one of \"enforce\", \"report\""),
            );
            RouteMode::Enforce
        }
    };
    if auth == AuthMode::None && (!f.scopes.is_empty() || !f.any_scopes.is_empty()) {
        c.push(
            at,
            "scopes on an auth = \"none\" route would never be checked",
        );
    }
    for (field, list) in [("scopes", &f.scopes), ("any_scopes", &f.any_scopes)] {
        for (i, s) in list.iter().enumerate() {
            if s.is_empty()
                || !s
                    .bytes()
                    .all(|b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\')
            {
                c.push(
                    format!("{at}.{field}[{i}]"),
                    format!("{s:?} is not a valid scope token (RFC 6749 §3.3)"),
                );
            }
        }
    }
    if let Some(list) = &f.issuers {
        for (i, name) in list.iter().enumerate() {
            if !issuers.contains(name) {
                c.push(
                    format!("{at}.issuers[{i}]"),
                    format!("unknown issuer {name:?}"),
                );
            }
        }
    }
    let mut limit_groups: Vec<LimitGroup> = Vec::new();
    if let Some(rl) = &f.rate_limit {
        for (i, rule) in rl.as_slice().iter().enumerate() {
            let rat = if matches!(rl, OneOrMany::One(_)) {
                format!("{at}.rate_limit")
            } else {
                format!("{at}.rate_limit[{i}]")
            };
            if rule.requests == 0 {
                c.push(format!("{rat}.requests"), "must be at least 1");
            }
            let mut spec = None;
            match humantime::parse_duration(&rule.period) {
                Ok(d) if d >= Duration::from_secs(1) && d <= Duration::from_secs(24 * 86_400) => {
                    spec = Some(LimitSpec {
                        requests: rule.requests,
                        period: d,
                    });
                }
                Ok(_) => c.push(format!("{rat}.period"), "must be between 1s and 24 days"),
                Err(_) => c.push(
                    format!("{rat}.period"),
                    format!(
                        "{:?} is not a duration like \"30s\", \"1m\", \"1h\"",
                        rule.period
                    ),
                ),
            }
            let raw_keys = rule.key.clone().unwrap_or_else(|| vec!["ip".to_string()]);
            let mut keys = Vec::new();
            if raw_keys.is_empty() {
                c.push(format!("{rat}.key"), "must name at least one source");
            }
            for (k, src) in raw_keys.iter().enumerate() {
                match KeySource::parse(src) {
                    Ok(ks) => keys.push(ks),
                    Err(e) => c.push(format!("{rat}.key[{k}]"), e),
                }
            }
            if let Some(spec) = spec {
                // Limits with the same key are decided together; another key opens a group,
                // and so does report_only (a report-only refusal must not leave an enforced
                // limit of the same key uncounted).
                let report_only = rule.report_only.unwrap_or(false);
                match limit_groups
                    .iter_mut()
                    .find(|g| g.key == keys && g.report_only == report_only)
                {
                    Some(group) => group.limits.push(spec),
                    None => limit_groups.push(LimitGroup {
                        limits: vec![spec],
                        key: keys,
                        report_only,
                    }),
                }
            }
        }
    }
    for (field, v) in [
        ("token_query_param", &f.token_query_param),
        ("token_cookie", &f.token_cookie),
    ] {
        if let Some(v) = v {
            if v.is_empty() {
                c.push(format!("{at}.{field}"), "must not be empty");
            }
            if auth == AuthMode::None {
                c.push(
                    format!("{at}.{field}"),
                    "has no effect on an auth = \"none\" route",
                );
            }
        }
    }
    let dpop = dpop_mode(f.dpop.as_deref(), format!("{at}.dpop"), c);
    if dpop.is_some() && auth == AuthMode::None {
        c.push(
            format!("{at}.dpop"),
            "has no effect on an auth = \"none\" route",
        );
    }
    for group in &limit_groups {
        if let Err(e) = crate::ratelimit::RateLimiter::validate_limits(&group.limits) {
            c.push(format!("{at}.rate_limit"), e.to_string());
        }
    }
    if c.problems.len() != before {
        return None;
    }
    Some(RouteConfig {
        name: f.name.clone(),
        methods,
        path: path?,
        upstream: f.upstream.clone(),
        auth,
        scopes: RequiredScopes::new(f.scopes.clone(), f.any_scopes.clone()),
        issuers: f.issuers.clone(),
        token_query_param: f.token_query_param.clone(),
        token_cookie: f.token_cookie.clone(),
        limit_groups,
        allow_encoded_slashes: f.allow_encoded_slashes.unwrap_or(false),
        require_tls: f.require_tls,
        introspect: f.introspect.unwrap_or(false),
        mode,
        dpop,
    })
}

#[cfg(test)]
mod tests {
    use super::super::from_str;
    use super::*;

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:8080"
[admin]
listen = "127.0.0.1:9091"
[[issuers]]
name = "wetrials"
issuer = "https://auth.wetrials.com"
audiences = ["https://api.wetrials.com"]
jwks_uri = "http://127.0.0.1:8900/.well-known/jwks.json"
algorithms = ["RS256", "ES256"]
[[upstreams]]
name = "api"
peers = ["127.0.0.1:9000"]
[[routes]]
name = "studies-read"
methods = ["GET"]
path = "/v1/studies/{id}"
upstream = "api"
scopes = ["read:studies"]
[routes.rate_limit]
requests = 20
period = "1m"
key = ["cookie:session", "ip"]
"#;

    #[test]
    fn contract_example_is_valid() {
        let cfg = from_str(GOOD).unwrap();
        let group = &cfg.routes[0].limit_groups[0];
        assert_eq!(group.limits[0].requests, 20);
        assert_eq!(group.limits[0].period, Duration::from_secs(60));
        assert_eq!(
            group.key,
            vec![KeySource::Cookie("session".into()), KeySource::Ip]
        );
        assert_eq!(
            cfg.issuers[0].algorithms,
            vec![Algorithm::RS256, Algorithm::ES256]
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_location() {
        let bad = GOOD
            .replace("upstream = \"api\"", "upstream = \"apx\"")
            .replace("\"RS256\", \"ES256\"", "\"none\", \"HS256\"")
            .replace("period = \"1m\"", "period = \"soon\"")
            .replace("\"cookie:session\"", "\"cookie:\"");
        let err = from_str(&bad).unwrap_err();
        let problems = err.problems();
        let all = problems.join("\n");
        assert!(
            all.contains("routes[0] \"studies-read\".upstream: unknown upstream \"apx\""),
            "{all}"
        );
        assert!(
            all.contains("issuers[0] \"wetrials\".algorithms[0]"),
            "{all}"
        );
        assert!(
            all.contains("issuers[0] \"wetrials\".algorithms[1]"),
            "{all}"
        );
        assert!(
            all.contains("routes[0] \"studies-read\".rate_limit.period"),
            "{all}"
        );
        assert!(
            all.contains("routes[0] \"studies-read\".rate_limit.key[0]"),
            "{all}"
        );
        assert_eq!(problems.len(), 5, "{all}");
    }

    #[test]
    fn several_limits_on_one_route_are_accepted() {
        let cfg = from_str(&GOOD.replace(
            "[routes.rate_limit]\nrequests = 20\nperiod = \"1m\"\nkey = [\"cookie:session\", \"ip\"]",
            "[[routes.rate_limit]]\nrequests = 20\nperiod = \"1m\"\nkey = [\"sub\"]\n[[routes.rate_limit]]\nrequests = 200\nperiod = \"1h\"\nkey = [\"sub\"]",
        ))
        .unwrap();
        assert_eq!(cfg.routes[0].limit_groups.len(), 1);
        let limits = &cfg.routes[0].limit_groups[0].limits;
        assert_eq!(limits.len(), 2);
        assert_eq!(limits[1].period, Duration::from_secs(3600));
    }

    #[test]
    fn limits_with_different_keys_form_groups_in_file_order() {
        let cfg = from_str(&GOOD.replace(
            "[routes.rate_limit]\nrequests = 20\nperiod = \"1m\"\nkey = [\"cookie:session\", \"ip\"]",
            "[[routes.rate_limit]]\nrequests = 20\nperiod = \"1m\"\nkey = [\"sub\"]\n[[routes.rate_limit]]\nrequests = 200\nperiod = \"1h\"\nkey = [\"ip\"]\n[[routes.rate_limit]]\nrequests = 50\nperiod = \"10m\"\nkey = [\"sub\"]",
        ))
        .unwrap();
        let groups = &cfg.routes[0].limit_groups;
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].key, vec![KeySource::Sub]);
        assert_eq!(groups[0].limits.len(), 2);
        assert_eq!(groups[0].limits[1].requests, 50);
        assert_eq!(groups[1].key, vec![KeySource::Ip]);
        assert_eq!(groups[1].limits[0].requests, 200);
    }

    #[test]
    fn report_mode_and_report_only_limits_are_read_and_checked() {
        let cfg = from_str(&GOOD.replace(
            "[routes.rate_limit]\nrequests = 20\nperiod = \"1m\"\nkey = [\"cookie:session\", \"ip\"]",
            "mode = \"report\"\n[[routes.rate_limit]]\nrequests = 20\nperiod = \"1m\"\nkey = [\"sub\"]\n[[routes.rate_limit]]\nrequests = 5\nperiod = \"1m\"\nkey = [\"sub\"]\nreport_only = true",
        ))
        .unwrap();
        let route = &cfg.routes[0];
        assert_eq!(route.mode, RouteMode::Report);
        // A report-only limit is decided on its own, even with the same key.
        let groups = &route.limit_groups;
        assert_eq!(groups.len(), 2);
        assert!(!groups[0].report_only && groups[1].report_only);
        assert_eq!(groups[1].limits[0].requests, 5);
        // Defaults: enforce, and enforced limits.
        let cfg = from_str(GOOD).unwrap();
        assert_eq!(cfg.routes[0].mode, RouteMode::Enforce);
        assert!(!cfg.routes[0].limit_groups[0].report_only);
        // Unknown modes, and report mode where there is nothing to report.
        let err = from_str(&GOOD.replace(
            "scopes = [\"read:studies\"]",
            "scopes = [\"read:studies\"]\nmode = \"audit\"",
        ))
        .unwrap_err();
        let all = err.problems().join("\n");
        assert!(
            all.contains("routes[0] \"studies-read\".mode: \"audit\" is not one of"),
            "{all}"
        );
        let err = from_str(&GOOD.replace(
            "scopes = [\"read:studies\"]",
            "auth = \"none\"\nmode = \"report\"",
        ))
        .unwrap_err();
        let all = err.problems().join("\n");
        assert!(all.contains("routes[0] \"studies-read\".mode"), "{all}");
    }

    #[test]
    fn jwks_uri_relative_path_is_refused() {
        let err = from_str(&GOOD.replace(
            "http://127.0.0.1:8900/.well-known/jwks.json",
            "keys/jwks.json",
        ))
        .unwrap_err();
        assert!(err.to_string().contains("absolute file path"), "{err}");
    }

    #[test]
    fn connection_limits_have_defaults_and_are_checked() {
        let cfg = from_str(GOOD).unwrap();
        assert_eq!(cfg.server.max_header_bytes, 32768);
        assert_eq!(cfg.server.header_timeout, Duration::from_secs(10));
        assert_eq!(cfg.server.keepalive_timeout, Duration::from_secs(75));
        assert_eq!(cfg.server.max_connections, 10_000);
        assert_eq!(cfg.server.max_connections_per_ip, 256);
        let err = from_str(&GOOD.replace(
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:8080\"\nmax_header_bytes = 100\nheader_timeout_ms = 0\n\
             keepalive_timeout_ms = 0\nmax_connections = 0\nmax_connections_per_ip = 0",
        ))
        .unwrap_err();
        let all = err.problems().join("\n");
        for key in [
            "server.max_header_bytes",
            "server.header_timeout_ms",
            "server.keepalive_timeout_ms",
            "server.max_connections:",
            "server.max_connections_per_ip",
        ] {
            assert!(all.contains(key), "{key} missing in {all}");
        }
    }

    #[test]
    fn trusted_proxies_accept_cidrs_and_addresses() {
        let cfg = from_str(&GOOD.replace(
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:8080\"\ntrusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1\", \"::1\"]",
        ))
        .unwrap();
        assert_eq!(cfg.server.trusted_proxies.len(), 3);
        let err = from_str(&GOOD.replace(
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:8080\"\ntrusted_proxies = [\"10.0.0.0/33\"]",
        ))
        .unwrap_err();
        assert!(
            err.to_string().contains("server.trusted_proxies[0]"),
            "{err}"
        );
    }
    #[test]
    fn admin_token_and_allowed_hosts_are_validated_without_echoing_the_token() {
        let with = |extra: &str| {
            GOOD.replace(
                "listen = \"127.0.0.1:9091\"",
                &format!("listen = \"127.0.0.1:9091\"\n{extra}"),
            )
        };
        let cfg = from_str(&with(
            "allowed_hosts = [\"admin.example\", \"[::1]:9\"]\ntoken = \"tok-0123456789-SECRET\"",
        ))
        .unwrap();
        assert_eq!(cfg.admin.allowed_hosts.len(), 2);
        assert!(cfg
            .admin
            .token
            .as_ref()
            .unwrap()
            .matches(b"tok-0123456789-SECRET"));
        assert!(
            !format!("{cfg:?}").contains("SECRET"),
            "Debug shows the token"
        );
        let file: GatewayFile = toml::from_str(&with("token = \"tok-0123456789-SECRET\"")).unwrap();
        assert!(
            !format!("{file:?}").contains("SECRET"),
            "Debug shows the token"
        );

        let err = from_str(&with(
            "allowed_hosts = [\"http://admin.example/\"]\ntoken = \"SHORTSECRET\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("admin.allowed_hosts[0]"), "{err}");
        assert!(err.contains("admin.token: must be at least 16"), "{err}");
        assert!(!err.contains("SHORTSECRET"), "{err}");
    }
}
