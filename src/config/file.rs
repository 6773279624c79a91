//! Step 0, what the operator asked for: a serde mirror of the TOML file, key for key.
//!
//! Nothing here is interpreted; `validate.rs` turns these structs into runtime types and
//! reports every problem with its location. Unknown keys are errors (`deny_unknown_fields`).

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GatewayFile {
    #[serde(default)]
    pub server: ServerFile,
    #[serde(default)]
    pub admin: AdminFile,
    #[serde(default)]
    pub logging: LoggingFile,
    #[serde(default)]
    pub rate_limit: RateLimitFile,
    #[serde(default)]
    pub issuers: Vec<IssuerFile>,
    #[serde(default)]
    pub upstreams: Vec<UpstreamFile>,
    #[serde(default)]
    pub routes: Vec<RouteFile>,
}

/// `[server]`: the data-plane listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// Address of the data listener. Defaults to `127.0.0.1:8080`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// CIDRs whose `X-Forwarded-For` is believed for the client IP. Defaults to none.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Worker threads of the proxy service. Defaults to the number of CPUs.
    pub threads: Option<usize>,
    /// Seconds a graceful shutdown (SIGTERM) waits for in-flight requests. Defaults to 30.
    pub grace_period_secs: Option<u64>,
    /// Upstream keep-alive connections kept in total. Defaults to 512.
    pub upstream_keepalive_pool_size: Option<usize>,
    /// Largest `Authorization` header accepted, in bytes. Defaults to 8192.
    pub max_token_bytes: Option<usize>,
    /// Largest request body read to find a `client_id` (token endpoint), in bytes.
    /// Defaults to 16384; at most 65536.
    pub max_body_bytes: Option<usize>,
    /// Optional TLS on the data listener.
    pub tls: Option<TlsFile>,
    /// Accept HTTP/2 over cleartext (h2c prior knowledge). Defaults to true.
    pub h2c: Option<bool>,
    /// Unix socket used to hand listeners to a new binary (zero-downtime upgrade).
    /// Defaults to `/tmp/wetrials-gateway-upgrade.sock`.
    pub upgrade_sock: Option<String>,
    /// Pid file (used by the upgrade procedure). Defaults to `/tmp/wetrials-gateway.pid`.
    pub pid_file: Option<String>,
    /// Default of the routes' `require_tls`. Defaults to false.
    pub require_tls: Option<bool>,
    /// Status for a plain-HTTP request on a `require_tls` route: 403 (default) or 426.
    pub require_tls_status: Option<u16>,
    /// Request header names with `_`: `drop` (default; not forwarded), `refuse` (400) or
    /// `forward`. Names that read as a header the gateway sets are dropped whatever this says.
    pub headers_with_underscores: Option<String>,
    /// Forward header names as the client and the upstream spelled them (true, the default),
    /// or let the gateway edit the headers without keeping the spelling: cheaper, names then
    /// go on in lower case (title case for a dozen common ones). See `proxy::headers`.
    pub preserve_header_case: Option<bool>,
    /// Largest request head (request line and headers) accepted, in bytes; a larger one is
    /// answered 431. Defaults to 32768; from 1024 to 1048575.
    pub max_header_bytes: Option<usize>,
    /// Milliseconds a request head may take, from its first byte (from accept for the first
    /// request) to its end; then 408 (or a plain close when nothing arrived). Defaults to 10000.
    pub header_timeout_ms: Option<u64>,
    /// Milliseconds an idle keep-alive connection is kept between requests. Defaults to 75000.
    pub keepalive_timeout_ms: Option<u64>,
    /// Downstream connections open at once on the data listener; more are answered 503.
    /// Defaults to 10000.
    pub max_connections: Option<usize>,
    /// Downstream connections open at once from one client address (IPv6: one /64); peers in
    /// `trusted_proxies` are exempt. Defaults to 256.
    pub max_connections_per_ip: Option<usize>,
    /// Header in which a TLS-terminating proxy in `trusted_proxies` passes the client
    /// certificate (URL-encoded PEM, as nginx's `$ssl_client_escaped_cert`). Not set: none.
    pub client_cert_header: Option<String>,
    /// The URL clients use to reach the gateway (`https://api.wetrials.com`: scheme, host and
    /// port only); DPoP proofs' `htu` are checked against it. Not set: the listener's scheme
    /// (or a trusted `X-Forwarded-Proto`) and the request's `Host`.
    pub public_url: Option<String>,
    /// Algorithms accepted for DPoP proofs (asymmetric only). Defaults to
    /// `["ES256", "RS256", "PS256", "EdDSA"]`.
    pub dpop_algorithms: Option<Vec<String>>,
    /// Oldest DPoP proof accepted (`iat`), in seconds; also how long a proof's `jti` is
    /// remembered against replay. Defaults to 60; from 1 to 3600.
    pub dpop_max_age_secs: Option<u64>,
    /// Clock skew allowed on a DPoP proof's `iat`, in seconds. Defaults to 5; at most 300.
    pub dpop_leeway_secs: Option<u64>,
}

impl Default for ServerFile {
    fn default() -> Self {
        ServerFile {
            listen: default_listen(),
            trusted_proxies: Vec::new(),
            threads: None,
            grace_period_secs: None,
            upstream_keepalive_pool_size: None,
            max_token_bytes: None,
            max_body_bytes: None,
            tls: None,
            h2c: None,
            upgrade_sock: None,
            pid_file: None,
            require_tls: None,
            require_tls_status: None,
            headers_with_underscores: None,
            preserve_header_case: None,
            max_header_bytes: None,
            header_timeout_ms: None,
            keepalive_timeout_ms: None,
            max_connections: None,
            max_connections_per_ip: None,
            client_cert_header: None,
            public_url: None,
            dpop_algorithms: None,
            dpop_max_age_secs: None,
            dpop_leeway_secs: None,
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8080".to_string()
}

/// `[server.tls]`: certificate and key (PEM) of the data listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub cert_path: String,
    pub key_path: String,
    /// CA certificates (PEM) that client certificates must chain to; enables client
    /// certificate verification (RFC 8705 certificate-bound tokens).
    pub client_ca_path: Option<String>,
    /// `"optional"` (default when `client_ca_path` is set: a client may present none) or
    /// `"required"` (the TLS handshake fails without a valid client certificate).
    pub client_auth: Option<String>,
}

/// `[admin]`: the side listener for `/metrics`, `/healthz`, `/readyz`, `POST /reload`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// Defaults to `127.0.0.1:9091`.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// `Host` values answered besides the listener's own `ip:port` and `localhost:PORT`:
    /// `name` (any port) or `name:port`. Defaults to none.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Bearer token every admin endpoint but `/healthz` and `/readyz` requires (write
    /// `"${ADMIN_TOKEN}"`). Defaults to none: no token asked.
    pub token: Option<Redacted>,
}

impl Default for AdminFile {
    fn default() -> Self {
        AdminFile {
            listen: default_admin_listen(),
            allowed_hosts: Vec::new(),
            token: None,
        }
    }
}

/// A secret value from the file: `Debug` prints `Redacted(..)`, never the value.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct Redacted(pub String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redacted(..)")
    }
}

fn default_admin_listen() -> String {
    "127.0.0.1:9091".to_string()
}

/// `[logging]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct LoggingFile {
    /// `json` or `text`. Defaults to `json`, or `text` when stderr is a terminal.
    pub format: Option<String>,
    /// A tracing filter (`info`, `warn,wetrials_gateway=debug`). `RUST_LOG` wins. Defaults to `info`.
    pub level: Option<String>,
    /// Write one access-log line per request. Defaults to true.
    pub access_log: Option<bool>,
}

/// `[rate_limit]`: where limiter state lives.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    /// `memory` (default) or `redis`.
    pub backend: Option<String>,
    /// `redis://[user:pass@]host:port/db`; required with `backend = "redis"`.
    pub redis_url: Option<String>,
    /// Multiplexed Redis connections. Defaults to 4.
    pub pool_size: Option<usize>,
    /// Bound on one Redis decision, in ms. Defaults to 50.
    pub timeout_ms: Option<u64>,
    /// When Redis fails: `fail_open` (default: decide locally and count it) or `fail_closed`
    /// (503). Also decides a new key while the in-process store is full of live keys
    /// (`fail_open`: admitted, not stored; `fail_closed`: 503).
    pub on_backend_error: Option<String>,
    /// Prefix of the Redis keys. Defaults to `wtgw`.
    pub key_prefix: Option<String>,
    /// Keys the in-process limiter holds at most; a key is dropped only once its window is
    /// empty, never to make room. Defaults to 1,000,000.
    pub memory_max_keys: Option<u64>,
}

/// `[[issuers]]`: one token issuer.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IssuerFile {
    pub name: String,
    /// Exact value of `iss`.
    pub issuer: String,
    /// `aud` must contain one of these.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// http(s) URL or absolute file path of the JWKS.
    pub jwks_uri: Option<String>,
    /// OIDC discovery document URL, instead of `jwks_uri`.
    pub discovery_url: Option<String>,
    /// Allowed algorithms. Defaults to `["RS256"]`.
    pub algorithms: Option<Vec<String>>,
    /// Clock skew allowed on `exp`, `nbf`, `iat`. Defaults to 30.
    pub leeway_secs: Option<u64>,
    /// Remove `Authorization` before forwarding. Defaults to false.
    pub strip_authorization: Option<bool>,
    /// JWKS refresh when the response has no `Cache-Control: max-age`. Defaults to 300.
    pub jwks_refresh_secs: Option<u64>,
    /// Lower bound on the refresh interval (also bounds `max-age`). Defaults to 30.
    pub jwks_min_refresh_secs: Option<u64>,
    /// Upper bound on the refresh interval (also bounds `max-age`). Defaults to 86400.
    pub jwks_max_refresh_secs: Option<u64>,
    /// Least time between two refetches caused by unknown `kid`s. Defaults to 10.
    pub unknown_kid_cooldown_secs: Option<u64>,
    /// Bound on one JWKS or discovery fetch, in ms. Defaults to 3000.
    pub jwks_timeout_ms: Option<u64>,
    /// DPoP default of the routes that accept this issuer's tokens and set no `dpop`:
    /// `off`, `allowed` (default) or `required`.
    pub dpop: Option<String>,
    /// RFC 7662 introspection endpoint (http(s) URL): validates opaque tokens, and JWTs on
    /// `introspect = true` routes. Defaults to none.
    pub introspection_endpoint: Option<String>,
    /// Client authentication at the endpoint: `basic` (default) or `client_secret_post`.
    pub introspection_auth: Option<String>,
    /// Required with `introspection_endpoint`.
    pub introspection_client_id: Option<String>,
    /// Required with `introspection_endpoint` (write `"${INTROSPECTION_SECRET}"`).
    pub introspection_client_secret: Option<Redacted>,
    /// Bound on one introspection call, in ms. Defaults to 2000.
    pub introspection_timeout_ms: Option<u64>,
    /// Longest an active result is reused (never past the token's `exp`); 0 = never. Defaults to 60.
    pub introspection_cache_secs: Option<u64>,
    /// How long an inactive result is reused; at most 60, 0 = never. Defaults to 5.
    pub introspection_negative_cache_secs: Option<u64>,
}

/// `[[upstreams]]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub name: String,
    /// `host:port` of each peer; names are resolved when the config is loaded.
    pub peers: Vec<String>,
    /// Connect to the peers with TLS. Defaults to false.
    pub tls: Option<bool>,
    /// SNI and certificate name for TLS. Defaults to the host of the first peer.
    pub sni: Option<String>,
    /// Verify the upstream certificate. Defaults to true.
    pub verify_cert: Option<bool>,
    /// Defaults to 2000.
    pub connect_timeout_ms: Option<u64>,
    /// Defaults to 30000.
    pub read_timeout_ms: Option<u64>,
    /// Defaults to 30000.
    pub write_timeout_ms: Option<u64>,
    /// Idle keep-alive connections are closed after this. Defaults to 60000.
    pub idle_timeout_ms: Option<u64>,
}

/// `[[routes]]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub name: String,
    /// Omitted = any method.
    pub methods: Option<Vec<String>>,
    pub path: String,
    pub upstream: String,
    /// `jwt` (default) or `none`.
    pub auth: Option<String>,
    /// Every one required.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// At least one required.
    #[serde(default)]
    pub any_scopes: Vec<String>,
    /// Only accept tokens from these issuers (names). Defaults to all.
    pub issuers: Option<Vec<String>>,
    /// Opt-in: also look for the token in this query parameter.
    pub token_query_param: Option<String>,
    /// Opt-in: also look for the token in this cookie.
    pub token_cookie: Option<String>,
    /// One limit (`[routes.rate_limit]`) or several (`[[routes.rate_limit]]`).
    pub rate_limit: Option<OneOrMany<RateLimitRuleFile>>,
    /// Keep `%2F`, `%5C` and `\` in paths instead of refusing them (400). Unsafe with prefix
    /// routes in front of upstreams that decode them. Defaults to false.
    pub allow_encoded_slashes: Option<bool>,
    /// Refuse requests that did not arrive over TLS. Defaults to `server.require_tls`.
    pub require_tls: Option<bool>,
    /// Introspect every token here, JWTs too (revocation-sensitive routes); every issuer
    /// accepted here needs an `introspection_endpoint`. Defaults to false.
    pub introspect: Option<bool>,
    /// `enforce` (default) or `report`: authentication and scope refusals are only reported
    /// (forwarded, logged with `would_deny`, counted), for rolling a rule out.
    pub mode: Option<String>,
    /// DPoP (RFC 9449): `off`, `allowed` or `required`. Defaults to the token issuer's `dpop`.
    pub dpop: Option<String>,
}

/// A table or an array of tables.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    pub fn as_slice(&self) -> &[T] {
        match self {
            OneOrMany::One(t) => std::slice::from_ref(t),
            OneOrMany::Many(v) => v,
        }
    }
}

/// `[routes.rate_limit]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitRuleFile {
    pub requests: u32,
    /// `30s`, `1m`, `1h`, `1d` (humantime).
    pub period: String,
    /// Sources tried in order. Defaults to `["ip"]`.
    pub key: Option<Vec<String>>,
    /// Report what this limit would refuse instead of refusing it. Defaults to false.
    pub report_only: Option<bool>,
}
