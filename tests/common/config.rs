//! The gateway config of a test, built in code and rendered to TOML: [`Config`] with its
//! [`IssuerSpec`], [`UpstreamSpec`] and [`RouteSpec`] sections, each a [`Table`] of keys that
//! takes extra ones with `.set(key, json!(value))`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use serde_json::Value;

use super::{EchoUpstream, LocalIssuer, AUDIENCE};

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
