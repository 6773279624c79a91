//! Integration-test harness: the real `wetrials-gateway` binary on ephemeral loopback ports,
//! configured from a small builder, in front of the crate's own loopback servers
//! (`LocalIssuer` serving a JWKS and minting tokens, `EchoUpstream` describing what it got).
//!
//! - `Config` + `IssuerSpec` / `UpstreamSpec` / `RouteSpec` render a TOML config; every
//!   section takes extra keys with `.set(key, json!(value))` and `Config::raw` appends TOML.
//! - `TestGateway::start(&cfg)` writes the config to a tempdir, spawns the binary with its
//!   output in a log file (`logs()`), waits for `GET /readyz` = 200 and kills it on drop;
//!   `start_unready` only waits for the listeners.
//! - `send` / `Reply` and the `assert_*` helpers check status, `WWW-Authenticate` and the
//!   JSON error body; `raw_request` speaks bytes for requests reqwest would not send.
//! - token helpers build hostile tokens by hand (`alg: none`, HMAC with a public key).
//!
//! Used by several test binaries, each with a different subset: hence `allow(dead_code)`.
#![allow(dead_code, unused_imports)]

use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use wetrials_gateway::demo::{now, EchoUpstream, KeyAlg, LocalIssuer};

/// The audience every test issuer uses unless told otherwise.
pub const AUDIENCE: &str = "https://api.wetrials.com";
/// The realm the gateway names in `WWW-Authenticate`.
pub const REALM: &str = "wetrials";
/// Bound on every HTTP exchange of a test.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on waiting for a gateway to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_wetrials-gateway")
}

/// A loopback address nobody listens on right now (bind port 0, drop). The port may be
/// handed out again: for a peer that must stay dead use [`DeadPort`].
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr")
}

/// A loopback port that refuses connections for as long as this value lives: bound but not
/// listening, so no other socket (a gateway listener, say) can take it meanwhile.
pub struct DeadPort {
    _socket: tokio::net::TcpSocket,
    pub addr: SocketAddr,
}

impl DeadPort {
    pub fn new() -> DeadPort {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let addr = socket.local_addr().expect("local addr");
        DeadPort {
            _socket: socket,
            addr,
        }
    }

    pub fn peer(&self) -> String {
        self.addr.to_string()
    }
}

impl Default for DeadPort {
    fn default() -> Self {
        Self::new()
    }
}

// ------------------------------------------------------------------------------- TOML

/// A JSON value as a TOML inline value (strings, numbers, bools, arrays, inline tables).
pub fn toml_inline(v: &Value) -> String {
    match v {
        Value::Null => panic!("TOML has no null"),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        // A JSON string literal is a valid TOML basic string (same escapes).
        Value::String(s) => Value::String(s.clone()).to_string(),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(toml_inline).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(m) => format!(
            "{{ {} }}",
            m.iter()
                .map(|(k, v)| format!("{} = {}", toml_key(k), toml_inline(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn toml_key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        k.to_string()
    } else {
        Value::String(k.to_string()).to_string()
    }
}

/// Keys of one TOML table, in insertion order; setting a key again replaces it.
#[derive(Debug, Clone, Default)]
pub struct Table(Vec<(String, Value)>);

impl Table {
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        let value = value.into();
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key.to_string(), value)),
        }
    }

    pub fn unset(&mut self, key: &str) {
        self.0.retain(|(k, _)| k != key);
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn render(&self, out: &mut String) {
        for (k, v) in &self.0 {
            if !v.is_null() {
                let _ = writeln!(out, "{} = {}", toml_key(k), toml_inline(v));
            }
        }
    }
}

fn strings(v: &[&str]) -> Value {
    Value::Array(v.iter().map(|s| Value::String(s.to_string())).collect())
}

/// `[[issuers]]`.
#[derive(Debug, Clone)]
pub struct IssuerSpec {
    pub keys: Table,
}

impl IssuerSpec {
    /// An issuer by name and exact `iss`, audience [`AUDIENCE`]; set `jwks_uri` or
    /// `discovery_url` yourself.
    pub fn new(name: &str, iss: &str) -> Self {
        let mut keys = Table::default();
        keys.set("name", name);
        keys.set("issuer", iss);
        keys.set("audiences", strings(&[AUDIENCE]));
        IssuerSpec { keys }
    }

    /// The issuer served by a `LocalIssuer` (its `iss`, audience and JWKS URL).
    pub fn local(name: &str, li: &LocalIssuer) -> Self {
        let mut s = Self::new(name, li.issuer());
        s.keys.set("audiences", strings(&[&li.audience]));
        s.keys.set("jwks_uri", li.jwks_uri());
        s
    }

    pub fn audiences(mut self, auds: &[&str]) -> Self {
        self.keys.set("audiences", strings(auds));
        self
    }

    pub fn jwks_uri(mut self, uri: &str) -> Self {
        self.keys.unset("discovery_url");
        self.keys.set("jwks_uri", uri);
        self
    }

    pub fn discovery_url(mut self, url: &str) -> Self {
        self.keys.unset("jwks_uri");
        self.keys.set("discovery_url", url);
        self
    }

    pub fn algorithms(mut self, algs: &[&str]) -> Self {
        self.keys.set("algorithms", strings(algs));
        self
    }

    pub fn leeway(mut self, secs: u64) -> Self {
        self.keys.set("leeway_secs", secs);
        self
    }

    /// Any other key (`unknown_kid_cooldown_secs`, `jwks_refresh_secs`, `strip_authorization`...).
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.keys.set(key, value);
        self
    }
}

/// `[[upstreams]]`.
#[derive(Debug, Clone)]
pub struct UpstreamSpec {
    pub keys: Table,
}

impl UpstreamSpec {
    pub fn new(name: &str, peers: &[String]) -> Self {
        let mut keys = Table::default();
        keys.set("name", name);
        keys.set(
            "peers",
            Value::Array(peers.iter().map(|p| Value::String(p.clone())).collect()),
        );
        UpstreamSpec { keys }
    }

    /// One echo upstream as a named upstream.
    pub fn echo(name: &str, echo: &EchoUpstream) -> Self {
        Self::new(name, &[echo.addr().to_string()])
    }

    /// Any other key (`read_timeout_ms`, `connect_timeout_ms`, `tls`...).
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.keys.set(key, value);
        self
    }
}

/// `[[routes]]` (with `[routes.rate_limit]` rules).
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub keys: Table,
    pub rate_limits: Vec<Table>,
}

impl RouteSpec {
    /// A jwt route (the default `auth`), any method.
    pub fn new(name: &str, path: &str, upstream: &str) -> Self {
        let mut keys = Table::default();
        keys.set("name", name);
        keys.set("path", path);
        keys.set("upstream", upstream);
        RouteSpec {
            keys,
            rate_limits: Vec::new(),
        }
    }

    pub fn methods(mut self, methods: &[&str]) -> Self {
        self.keys.set("methods", strings(methods));
        self
    }

    /// `auth = "none"`.
    pub fn public(mut self) -> Self {
        self.keys.set("auth", "none");
        self
    }

    pub fn auth(mut self, mode: &str) -> Self {
        self.keys.set("auth", mode);
        self
    }

    pub fn scopes(mut self, scopes: &[&str]) -> Self {
        self.keys.set("scopes", strings(scopes));
        self
    }

    pub fn any_scopes(mut self, scopes: &[&str]) -> Self {
        self.keys.set("any_scopes", strings(scopes));
        self
    }

    pub fn issuers(mut self, names: &[&str]) -> Self {
        self.keys.set("issuers", strings(names));
        self
    }

    pub fn token_query_param(mut self, name: &str) -> Self {
        self.keys.set("token_query_param", name);
        self
    }

    pub fn token_cookie(mut self, name: &str) -> Self {
        self.keys.set("token_cookie", name);
        self
    }

    /// Add one limit; one rule renders as `[routes.rate_limit]`, several as `[[routes.rate_limit]]`.
    pub fn rate_limit(mut self, requests: u32, period: &str, key: &[&str]) -> Self {
        let mut t = Table::default();
        t.set("requests", requests);
        t.set("period", period);
        if !key.is_empty() {
            t.set("key", strings(key));
        }
        self.rate_limits.push(t);
        self
    }

    /// Any other key.
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.keys.set(key, value);
        self
    }
}

/// A whole gateway config, rendered with the ports and directory of a `TestGateway`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Extra `[server]` keys (`listen` and `upgrade_sock`/`pid_file` are filled in).
    pub server: Table,
    /// Extra `[admin]` keys (`listen` is filled in).
    pub admin: Table,
    /// `[logging]`: `format = "json"`, `level = "info"` unless changed.
    pub logging: Table,
    /// `[rate_limit]`: rendered when not empty.
    pub rate_limit: Table,
    pub issuers: Vec<IssuerSpec>,
    pub upstreams: Vec<UpstreamSpec>,
    pub routes: Vec<RouteSpec>,
    /// TOML appended verbatim at the end (start it with a table header).
    pub raw: Vec<String>,
    /// Environment variables of the gateway process (for `${ENV}` substitution).
    pub env: Vec<(String, String)>,
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

impl Config {
    pub fn new() -> Self {
        let mut logging = Table::default();
        logging.set("format", "json");
        logging.set("level", "info");
        Config {
            server: Table::default(),
            admin: Table::default(),
            logging,
            rate_limit: Table::default(),
            issuers: Vec::new(),
            upstreams: Vec::new(),
            routes: Vec::new(),
            raw: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Issuer "main" from a local issuer, upstream "api" on an echo upstream, no routes yet.
    pub fn basic(issuer: &LocalIssuer, echo: &EchoUpstream) -> Self {
        Self::new()
            .issuer(IssuerSpec::local("main", issuer))
            .upstream(UpstreamSpec::echo("api", echo))
    }

    pub fn issuer(mut self, i: IssuerSpec) -> Self {
        self.issuers.push(i);
        self
    }

    pub fn upstream(mut self, u: UpstreamSpec) -> Self {
        self.upstreams.push(u);
        self
    }

    pub fn route(mut self, r: RouteSpec) -> Self {
        self.routes.push(r);
        self
    }

    pub fn server_set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.server.set(key, value);
        self
    }

    pub fn trusted_proxies(mut self, cidrs: &[&str]) -> Self {
        self.server.set("trusted_proxies", strings(cidrs));
        self
    }

    pub fn logging_set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.logging.set(key, value);
        self
    }

    pub fn log_level(self, level: &str) -> Self {
        self.logging_set("level", level)
    }

    pub fn rate_limit_set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.rate_limit.set(key, value);
        self
    }

    pub fn raw(mut self, toml: &str) -> Self {
        self.raw.push(toml.to_string());
        self
    }

    /// Set an environment variable of the gateway process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// The TOML text for these listeners; `dir` holds the upgrade socket and pid file.
    pub fn render(&self, listen: SocketAddr, admin: SocketAddr, dir: &Path) -> String {
        let mut out = String::from("# rendered by tests/common\n[server]\n");
        let mut server = Table::default();
        server.set("listen", listen.to_string());
        server.set(
            "upgrade_sock",
            dir.join("upgrade.sock").display().to_string(),
        );
        server.set("pid_file", dir.join("gateway.pid").display().to_string());
        for (k, v) in &self.server.0 {
            server.set(k, v.clone());
        }
        server.render(&mut out);
        out.push_str("\n[admin]\n");
        let mut adm = Table::default();
        adm.set("listen", admin.to_string());
        for (k, v) in &self.admin.0 {
            adm.set(k, v.clone());
        }
        adm.render(&mut out);
        out.push_str("\n[logging]\n");
        self.logging.render(&mut out);
        if !self.rate_limit.0.is_empty() {
            out.push_str("\n[rate_limit]\n");
            self.rate_limit.render(&mut out);
        }
        for i in &self.issuers {
            out.push_str("\n[[issuers]]\n");
            i.keys.render(&mut out);
        }
        for u in &self.upstreams {
            out.push_str("\n[[upstreams]]\n");
            u.keys.render(&mut out);
        }
        for r in &self.routes {
            out.push_str("\n[[routes]]\n");
            r.keys.render(&mut out);
            match r.rate_limits.as_slice() {
                [] => {}
                [one] => {
                    out.push_str("[routes.rate_limit]\n");
                    one.render(&mut out);
                }
                many => {
                    for t in many {
                        out.push_str("[[routes.rate_limit]]\n");
                        t.render(&mut out);
                    }
                }
            }
        }
        for r in &self.raw {
            out.push('\n');
            out.push_str(r);
            out.push('\n');
        }
        out
    }
}

// ------------------------------------------------------------------------------- gateway

/// What `TestGateway::spawn` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// `GET /readyz` answers 200.
    Ready,
    /// Admin `/healthz` answers 200 and the data port accepts connections.
    Listening,
}

/// A running gateway process; killed (SIGKILL) on drop.
pub struct TestGateway {
    child: Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    admin: SocketAddr,
    config_path: PathBuf,
    log_path: PathBuf,
    client: reqwest::Client,
    pub config: Config,
}

/// A reqwest client for tests: no proxy from the environment, bounded time.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(HTTP_TIMEOUT)
        .build()
        .expect("reqwest client")
}

impl TestGateway {
    /// Start and wait until `/readyz` says 200.
    pub async fn start(cfg: &Config) -> TestGateway {
        Self::spawn(cfg, Wait::Ready).await
    }

    /// Start and wait only for the listeners (for tests of the not-ready state).
    pub async fn start_unready(cfg: &Config) -> TestGateway {
        Self::spawn(cfg, Wait::Listening).await
    }

    /// Start with fresh ports (retried when a port was taken meanwhile) and wait.
    pub async fn spawn(cfg: &Config, wait: Wait) -> TestGateway {
        Self::spawn_rendered(|addr, admin, dir| cfg.render(addr, admin, dir), cfg, wait).await
    }

    /// `spawn` with the config text made by `text` for the chosen ports; `cfg` supplies the
    /// child's environment and is kept as the gateway's config.
    async fn spawn_rendered<F>(text: F, cfg: &Config, wait: Wait) -> TestGateway
    where
        F: Fn(SocketAddr, SocketAddr, &Path) -> String,
    {
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("wtgw-test-")
                .tempdir()
                .expect("tempdir");
            let addr = free_addr();
            let mut admin = free_addr();
            while admin == addr {
                admin = free_addr();
            }
            let config_path = dir.path().join("gateway.toml");
            fs::write(&config_path, text(addr, admin, dir.path())).expect("write config");
            let log_path = dir.path().join("gateway.log");
            let env: Vec<(&str, &str)> = cfg
                .env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let child = spawn_logged(
                &["--config", config_path.to_str().expect("utf-8 path")],
                &env,
                &log_path,
            );
            let mut gw = TestGateway {
                child,
                dir,
                addr,
                admin,
                config_path,
                log_path,
                client: client(),
                config: cfg.clone(),
            };
            match gw.wait_until(wait).await {
                Ok(()) => return gw,
                Err(log) => {
                    if log.contains("in use") || log.contains("AddrInUse") {
                        last_log = log;
                        continue; // another process took a port: retry with new ones
                    }
                    panic!(
                        "gateway did not start ({wait:?}); config:\n{}\nlog:\n{log}",
                        fs::read_to_string(&gw.config_path).unwrap_or_default()
                    );
                }
            }
        }
        panic!("gateway could not bind free ports after 5 attempts; last log:\n{last_log}");
    }

    /// Poll every 50 ms; `Err(log)` when the process exits or the time is up.
    async fn wait_until(&mut self, wait: Wait) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let probe = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(1))
            .build()
            .expect("client");
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("[exited: {status}]\n{}", self.logs()));
            }
            let log = self.logs();
            if log.contains("is in use, will try again") {
                // pingora retries a taken port forever: give up on these ports.
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(format!("[port in use]\n{log}"));
            }
            let ok = match wait {
                // /readyz can open a moment before the data listener accepts (they are two
                // pingora services): wait for both, or a first request may be refused.
                Wait::Ready => {
                    matches!(
                        probe.get(self.admin_url("/readyz")).send().await,
                        Ok(r) if r.status() == 200
                    ) && tokio::net::TcpStream::connect(self.addr).await.is_ok()
                }
                Wait::Listening => {
                    matches!(probe.get(self.admin_url("/healthz")).send().await, Ok(r) if r.status() == 200)
                        && tokio::net::TcpStream::connect(self.addr).await.is_ok()
                }
            };
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(format!(
                    "[not {wait:?} within {READY_TIMEOUT:?}]\n{}",
                    self.logs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until `/readyz` answers 200 (after a `start_unready`), or panic with the log.
    pub async fn wait_ready(&mut self) {
        if let Err(log) = self.wait_until(Wait::Ready).await {
            panic!("gateway did not become ready:\n{log}");
        }
    }

    /// Data listener address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Admin listener address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Wait up to `timeout` for the log to contain `needle`.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.logs().contains(needle) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Send a signal by name or number (`"HUP"`, `"TERM"`, `"QUIT"`, `"9"`) with `kill`.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {} failed", self.pid());
    }

    /// `Some(status)` once the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Wait up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Replace the config file with `cfg` rendered for this gateway's ports and directory
    /// (reload it with `signal("HUP")` or `reload()`).
    pub fn rewrite_config(&mut self, cfg: &Config) {
        fs::write(
            &self.config_path,
            cfg.render(self.addr, self.admin, self.dir.path()),
        )
        .expect("write config");
        self.config = cfg.clone();
    }

    /// Replace the config file with raw text.
    pub fn rewrite_config_raw(&self, toml: &str) {
        fs::write(&self.config_path, toml).expect("write config");
    }

    /// Start a second process on the same config with `--upgrade` (pingora zero-downtime
    /// upgrade: it takes the listeners over once this one gets SIGQUIT); output to `log`.
    /// The caller owns (and must kill) the returned child.
    pub fn spawn_upgrade(&self, log: &Path) -> Child {
        let env: Vec<(&str, &str)> = self
            .config
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        spawn_logged(
            &[
                "--config",
                self.config_path.to_str().expect("utf-8 path"),
                "--upgrade",
            ],
            &env,
            log,
        )
    }

    /// `POST /reload` on the admin listener.
    pub async fn reload(&self) -> Reply {
        send(self.client.post(self.admin_url("/reload"))).await
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path))
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(self.url(path))
    }

    pub fn request(&self, method: &str, path: &str) -> reqwest::RequestBuilder {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        self.client.request(m, self.url(path))
    }

    /// `GET path` with `Authorization: Bearer token`.
    pub async fn get_with_token(&self, path: &str, token: &str) -> Reply {
        send(self.get(path).bearer_auth(token)).await
    }

    /// The admin `/metrics` text.
    pub async fn metrics(&self) -> String {
        let r = send(self.client.get(self.admin_url("/metrics"))).await;
        assert_eq!(r.status, 200, "/metrics: {}", r.text());
        r.text()
    }

    /// Sum of the samples of `name` whose labels include every pair of `labels`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics().await, name, labels)
    }

    /// Status of `GET /readyz`.
    pub async fn readyz(&self) -> u16 {
        send(self.client.get(self.admin_url("/readyz")))
            .await
            .status
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawn the binary with `args` and extra `env`, stdout and stderr appended to `log`.
pub fn spawn_logged(args: &[&str], env: &[(&str, &str)], log: &Path) -> Child {
    let out = fs::File::create(log).expect("create log file");
    let err = out.try_clone().expect("clone log file");
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn wetrials-gateway")
}

/// Run the binary to completion (bounded), returning (exit status, stdout, stderr).
pub fn run_bin(
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> (ExitStatus, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(
            fs::File::create(&out_path).expect("stdout file"),
        ))
        .stderr(Stdio::from(
            fs::File::create(&err_path).expect("stderr file"),
        ))
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn wetrials-gateway");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "wetrials-gateway {args:?} still running after {timeout:?}; stderr:\n{}",
                fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status,
        fs::read_to_string(&out_path).unwrap_or_default(),
        fs::read_to_string(&err_path).unwrap_or_default(),
    )
}

// ------------------------------------------------------------------------------- replies

/// A whole response, read eagerly.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}); status {}: {}",
                self.status,
                self.text()
            )
        })
    }

    /// For a forwarded request: the echo upstream's description of what it received.
    pub fn echo(&self) -> Value {
        assert_eq!(
            self.status,
            200,
            "expected a forwarded 200, got: {}",
            self.describe()
        );
        self.json()
    }

    pub fn describe(&self) -> String {
        let mut s = format!("{}", self.status);
        for (k, v) in &self.headers {
            let _ = write!(s, "\n{k}: {}", String::from_utf8_lossy(v.as_bytes()));
        }
        let _ = write!(s, "\n\n{}", self.text());
        s
    }
}

/// Send and read the whole response; panics on transport errors.
pub async fn send(rb: reqwest::RequestBuilder) -> Reply {
    let resp = rb
        .send()
        .await
        .unwrap_or_else(|e| panic!("request failed: {e:?}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("reading body failed: {e:?}"))
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

/// A gateway error answer: `status`, JSON content type, `{"error": error, "error_description": <non-empty>}`.
/// Returns the body.
pub fn assert_json_error(r: &Reply, status: u16, error: &str) -> Value {
    assert_eq!(r.status, status, "status; got:\n{}", r.describe());
    let ct = r.header("content-type").unwrap_or_default();
    assert!(
        ct.starts_with("application/json"),
        "content-type {ct:?}; got:\n{}",
        r.describe()
    );
    let body = r.json();
    assert_eq!(body["error"], error, "error code; got:\n{}", r.describe());
    let desc = body["error_description"].as_str().unwrap_or_default();
    assert!(
        !desc.is_empty(),
        "error_description missing; got:\n{}",
        r.describe()
    );
    body
}

/// 401 without a token: `WWW-Authenticate: Bearer realm="…"` and no error attribute.
pub fn assert_missing_token(r: &Reply) {
    assert_eq!(r.status, 401, "got:\n{}", r.describe());
    let w = r.header("www-authenticate").unwrap_or_default();
    assert!(w.starts_with("Bearer "), "WWW-Authenticate {w:?}");
    assert!(
        w.contains(&format!("realm=\"{REALM}\"")),
        "WWW-Authenticate {w:?}"
    );
    assert!(
        !w.contains("error="),
        "no error attribute without a token (RFC 6750 §3.1): {w:?}"
    );
    let body = r.json();
    assert!(
        body["error"].is_string() && body["error_description"].is_string(),
        "{body}"
    );
}

/// 400: `WWW-Authenticate: Bearer ... error="invalid_request"` and the JSON body.
pub fn assert_invalid_request(r: &Reply) {
    assert_json_error(r, 400, "invalid_request");
    let w = r.header("www-authenticate").unwrap_or_default();
    assert!(
        w.starts_with("Bearer "),
        "WWW-Authenticate {w:?}; got:\n{}",
        r.describe()
    );
    assert!(
        w.contains("error=\"invalid_request\""),
        "WWW-Authenticate {w:?}"
    );
}

/// 401 `invalid_token` with an `error_description` attribute; returns the description.
pub fn assert_invalid_token(r: &Reply) -> String {
    let body = assert_json_error(r, 401, "invalid_token");
    let w = r.header("www-authenticate").unwrap_or_default();
    assert!(
        w.starts_with("Bearer "),
        "WWW-Authenticate {w:?}; got:\n{}",
        r.describe()
    );
    assert!(
        w.contains("error=\"invalid_token\""),
        "WWW-Authenticate {w:?}"
    );
    assert!(w.contains("error_description=\""), "WWW-Authenticate {w:?}");
    body["error_description"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// 403 `insufficient_scope` naming `scope` in the challenge.
pub fn assert_insufficient_scope(r: &Reply, scope: &str) {
    assert_json_error(r, 403, "insufficient_scope");
    let w = r.header("www-authenticate").unwrap_or_default();
    assert!(
        w.starts_with("Bearer "),
        "WWW-Authenticate {w:?}; got:\n{}",
        r.describe()
    );
    assert!(
        w.contains("error=\"insufficient_scope\""),
        "WWW-Authenticate {w:?}"
    );
    assert!(
        w.contains(&format!("scope=\"{scope}\"")),
        "WWW-Authenticate {w:?} should name scope {scope:?}"
    );
}

/// Sum of the samples of a Prometheus text exposition matching `name` and `labels`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(p) => p,
            None => continue,
        };
        let (metric, label_text) = match series.split_once('{') {
            Some((m, l)) => (m, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| label_text.split(',').any(|kv| kv == format!("{k}=\"{v}\"")))
        {
            sum += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    sum
}

/// Poll `f` every 50 ms until it returns true or `timeout` passes; returns the last result.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ------------------------------------------------------------------------------- tokens

pub fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn b64url_decode(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .expect("base64url")
}

/// `b64(header).b64(claims).b64(signature)` — any header, any signature bytes.
pub fn compose(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes()),
        b64url(signature)
    )
}

/// An HS256 token signed with `secret` (e.g. an RSA public key: the key-confusion attack).
pub fn hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64url(tag.as_ref()))
}

/// `claims` with `patch` merged in (a `null` removes the key).
pub fn patch(mut claims: Value, patch: Value) -> Value {
    if let (Some(c), Some(p)) = (claims.as_object_mut(), patch.as_object()) {
        for (k, v) in p {
            if v.is_null() {
                c.remove(k);
            } else {
                c.insert(k.clone(), v.clone());
            }
        }
    }
    claims
}

/// The JWK of `kid` as the issuer publishes it.
pub fn jwk_of(issuer: &LocalIssuer, kid: &str) -> Value {
    issuer.jwks()["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == kid).cloned())
        .unwrap_or_else(|| panic!("no key {kid} in {}", issuer.jwks()))
}

/// The three parts of a compact token.
pub fn token_parts(token: &str) -> Vec<String> {
    token.split('.').map(str::to_string).collect()
}

/// A valid token with `scope` for 1 h from the issuer's first key.
pub fn token(issuer: &LocalIssuer, sub: &str, scope: &str) -> String {
    issuer.mint(&issuer.claims(sub, scope, 3600))
}

/// A `LocalIssuer` with [`AUDIENCE`] and its base URL as `iss`.
pub async fn local_issuer() -> LocalIssuer {
    LocalIssuer::start(None, AUDIENCE)
        .await
        .expect("start local issuer")
}

pub async fn echo_upstream() -> EchoUpstream {
    EchoUpstream::start().await.expect("start echo upstream")
}

// ------------------------------------------------------------------------------- raw HTTP

/// A response read off a raw socket.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Parse a complete HTTP/1.x response from `buf`; `None` while incomplete (or when
/// `eof` and nothing parseable arrived).
fn parse_raw(buf: &[u8], eof: bool) -> Option<RawResponse> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status = status_line.split(' ').nth(1)?.parse::<u16>().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = &buf[end + 4..];
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        if rest.len() >= len {
            return Some(RawResponse {
                status,
                headers,
                body: rest[..len].to_vec(),
            });
        }
        return None;
    }
    if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        if !rest.ends_with(b"0\r\n\r\n") && !eof {
            return None;
        }
        let mut body = Vec::new();
        let mut r = rest;
        while let Some(pos) = r.windows(2).position(|w| w == b"\r\n") {
            let size =
                usize::from_str_radix(String::from_utf8_lossy(&r[..pos]).trim(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            let start = pos + 2;
            if r.len() < start + size {
                break;
            }
            body.extend_from_slice(&r[start..start + size]);
            r = &r[(start + size + 2).min(r.len())..];
        }
        return Some(RawResponse {
            status,
            headers,
            body,
        });
    }
    if status == 204 || status == 304 || (100..200).contains(&status) {
        return Some(RawResponse {
            status,
            headers,
            body: Vec::new(),
        });
    }
    if eof {
        return Some(RawResponse {
            status,
            headers,
            body: rest.to_vec(),
        });
    }
    None
}

/// Write `bytes` to `addr` and read one response. `None` when the server closed the
/// connection (or stayed silent for `timeout`) without a parseable answer.
pub async fn raw_request_timeout(
    addr: SocketAddr,
    bytes: &[u8],
    timeout: Duration,
) -> Option<RawResponse> {
    let work = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        // The server may answer and close before reading everything: ignore write errors.
        let _ = s.write_all(bytes).await;
        let _ = s.flush().await;
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return parse_raw(&buf, true),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(r) = parse_raw(&buf, false) {
                        return Some(r);
                    }
                }
            }
        }
    };
    tokio::time::timeout(timeout, work).await.ok().flatten()
}

/// An HTTP server on loopback that answers every request with `200`, `content_type` and
/// `body`, after `delay` (a JWKS with a chosen media type; an identity provider far away).
pub async fn fixed_http_server(
    content_type: &'static str,
    body: String,
    delay: Duration,
) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind fixed HTTP server");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                tokio::time::sleep(delay).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

/// A self-signed certificate for `localhost` and 127.0.0.1 in `dir`, valid one day, made with
/// the `openssl` command: (cert.pem, key.pem), or why it could not be made.
pub fn self_signed_cert(dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "extendedKeyUsage=serverAuth",
            "-days",
            "1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "the `openssl` command is not installed: the TLS \
                 certificates are made with it (Debian package `openssl`)"
                .to_string(),
            _ => format!("cannot run openssl: {e}"),
        })?;
    if !out.status.success() {
        return Err(format!(
            "openssl req failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok((cert, key))
}

/// [`raw_request_timeout`] with 5 s.
pub async fn raw_request(addr: SocketAddr, bytes: &[u8]) -> Option<RawResponse> {
    raw_request_timeout(addr, bytes, Duration::from_secs(5)).await
}

/// Assert `r` is not a server error (a closed connection counts as no answer, not a 5xx).
pub fn assert_not_5xx(what: &str, r: &Option<RawResponse>) {
    if let Some(r) = r {
        assert!(r.status < 500, "{what}: got {} {}", r.status, r.text());
    }
}

/// The JOSE header `LocalIssuer` writes for an RS256 key.
pub fn rs256_header(kid: &str) -> Value {
    json!({"alg": "RS256", "typ": "JWT", "kid": kid})
}

// ------------------------------------------------------------------------------- config text

impl TestGateway {
    /// Start on a config *text* (e.g. a shipped file with its addresses replaced):
    /// `text(listen, admin, dir)` renders it for fresh ports; waits for `/readyz` = 200.
    pub async fn start_text<F>(text: F) -> TestGateway
    where
        F: Fn(SocketAddr, SocketAddr, &Path) -> String,
    {
        Self::spawn_rendered(text, &Config::new(), Wait::Ready).await
    }
}

// ------------------------------------------------------------------------------- redis

/// A real `redis-server` from PATH on a free loopback port, without persistence; killed
/// (SIGKILL) on drop. `stop` + `restart` keep the port (Redis "comes back"); `pause` freezes
/// it with SIGSTOP until the returned guard drops (SIGCONT, also when the test panics).
/// No `redis-server` on PATH fails the test: the suite never skips the shared-limit tests.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Start on a free port (another one if the chosen port was taken meanwhile) and wait
    /// until it answers PING.
    pub fn start() -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("wtgw-redis-")
            .tempdir()
            .expect("tempdir");
        let mut server = RedisServer {
            child: None,
            port: 0,
            dir,
        };
        for _attempt in 0..5 {
            server.port = free_addr().port();
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server could not bind a free port after 5 attempts");
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Process id of the running server.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis-server running").id()
    }

    /// Kill the server (SIGKILL) and wait for it to exit; the port is then closed.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again on the same port (empty: nothing is persisted).
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "redis-server could not listen on port {} again within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Freeze the server (SIGSTOP): connections stay open, nothing is answered. It is thawed
    /// (SIGCONT) when the guard drops.
    pub fn pause(&self) -> PausedRedis {
        let pid = self.pid();
        signal_pid(pid, "STOP");
        PausedRedis { pid }
    }

    /// Run one command on a fresh connection (bounded by 2 s).
    pub fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let client = redis::Client::open(self.url()).expect("redis url");
        let mut con = client
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("connect to the test redis-server");
        let _ = con.set_read_timeout(Some(Duration::from_secs(2)));
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut con)
            .unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }

    /// Spawn on `self.port`; false when it exited before answering (port taken).
    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => panic!(
                "cannot run `redis-server` from PATH ({e}). The rate-limit tests need a real \
                 Redis server: `make test` installs the Debian package redis-server \
                 (or run `apt-get install redis-server`), then run the tests again."
            ),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if redis_ping(self.port) {
                self.child = Some(child);
                return true;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("redis-server on port {} not ready after 10 s", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_ref() {
            // A stopped process still dies of SIGKILL; CONT first keeps it simple for tools.
            signal_pid(child.id(), "CONT");
        }
        self.stop();
    }
}

/// A frozen `redis-server`; SIGCONT when dropped.
pub struct PausedRedis {
    pid: u32,
}

impl Drop for PausedRedis {
    fn drop(&mut self) {
        signal_pid(self.pid, "CONT");
    }
}

fn signal_pid(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

fn redis_ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

// ------------------------------------------------------------------------------- metrics

/// Every `gateway_[a-z_]+` metric name in `text`, histogram series suffixes (`_bucket`, `_sum`,
/// `_count`) folded into the base name. A name must start the word (`wetrials_gateway_x` is not
/// one).
pub fn metric_names_in(text: &str) -> std::collections::BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut names = std::collections::BTreeSet::new();
    let mut from = 0;
    while let Some(pos) = text[from..].find("gateway_") {
        let start = from + pos;
        let mut end = start + "gateway_".len();
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        from = end;
        let starts_word =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if !starts_word {
            continue;
        }
        let mut name = text[start..end].trim_end_matches('_');
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                name = base;
                break;
            }
        }
        if name.len() > "gateway_".len() {
            names.insert(name.to_string());
        }
    }
    names
}
