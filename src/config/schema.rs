//! The keys each table of the file may have, to report every unknown key at once with its
//! location (serde's `deny_unknown_fields` stops at the first). The serde structs keep
//! `deny_unknown_fields` too, and a test checks that both agree.

use super::Problem;

const TOP: &[&str] = &[
    "server",
    "admin",
    "logging",
    "rate_limit",
    "issuers",
    "upstreams",
    "routes",
];
const SERVER: &[&str] = &[
    "listen",
    "trusted_proxies",
    "threads",
    "grace_period_secs",
    "upstream_keepalive_pool_size",
    "max_token_bytes",
    "max_body_bytes",
    "tls",
    "h2c",
    "upgrade_sock",
    "pid_file",
    "require_tls",
    "require_tls_status",
    "headers_with_underscores",
    "preserve_header_case",
    "max_header_bytes",
    "header_timeout_ms",
    "keepalive_timeout_ms",
    "max_connections",
    "max_connections_per_ip",
    "client_cert_header",
    "public_url",
    "dpop_algorithms",
    "dpop_max_age_secs",
    "dpop_leeway_secs",
];
const TLS: &[&str] = &["cert_path", "key_path", "client_ca_path", "client_auth"];
const ADMIN: &[&str] = &["listen", "allowed_hosts", "token"];
const LOGGING: &[&str] = &["format", "level", "access_log"];
const RATE_LIMIT: &[&str] = &[
    "backend",
    "redis_url",
    "pool_size",
    "timeout_ms",
    "on_backend_error",
    "key_prefix",
    "memory_max_keys",
];
const ISSUER: &[&str] = &[
    "name",
    "issuer",
    "audiences",
    "jwks_uri",
    "discovery_url",
    "algorithms",
    "leeway_secs",
    "strip_authorization",
    "jwks_refresh_secs",
    "jwks_min_refresh_secs",
    "jwks_max_refresh_secs",
    "unknown_kid_cooldown_secs",
    "jwks_timeout_ms",
    "dpop",
    "introspection_endpoint",
    "introspection_auth",
    "introspection_client_id",
    "introspection_client_secret",
    "introspection_timeout_ms",
    "introspection_cache_secs",
    "introspection_negative_cache_secs",
];
const UPSTREAM: &[&str] = &[
    "name",
    "peers",
    "tls",
    "sni",
    "verify_cert",
    "connect_timeout_ms",
    "read_timeout_ms",
    "write_timeout_ms",
    "idle_timeout_ms",
];
const ROUTE: &[&str] = &[
    "name",
    "methods",
    "path",
    "upstream",
    "auth",
    "scopes",
    "any_scopes",
    "issuers",
    "token_query_param",
    "token_cookie",
    "rate_limit",
    "allow_encoded_slashes",
    "require_tls",
    "introspect",
    "mode",
    "dpop",
];
const RULE: &[&str] = &["requests", "period", "key", "report_only"];

/// The line of `key = ...`, when exactly one line of the file assigns that key.
fn line_of(raw: &str, key: &str) -> Option<usize> {
    let mut found = None;
    for (i, line) in raw.lines().enumerate() {
        let l = line.trim_start();
        let rest = l
            .strip_prefix(key)
            .or_else(|| l.strip_prefix(&format!("\"{key}\"")));
        if rest.is_some_and(|r| r.trim_start().starts_with('=')) {
            if found.is_some() {
                return None;
            }
            found = Some(i + 1);
        }
    }
    found
}

fn check_table(
    table: &mut toml::Table,
    known: &[&str],
    at: &str,
    raw: &str,
    problems: &mut Vec<Problem>,
) {
    let unknown: Vec<String> = table
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .cloned()
        .collect();
    for key in unknown {
        table.remove(&key);
        let location = if at.is_empty() {
            key.clone()
        } else {
            format!("{at}.{key}")
        };
        let message = match line_of(raw, &key) {
            Some(line) => format!("unknown key (line {line})"),
            None => "unknown key".to_string(),
        };
        problems.push(Problem { location, message });
    }
}

fn named(item: &toml::Table, list: &str, i: usize) -> String {
    match item.get("name").and_then(|n| n.as_str()) {
        Some(name) => format!("{list}[{i}] {name:?}"),
        None => format!("{list}[{i}]"),
    }
}

/// Remove every unknown key from the parsed file, recording a problem for each.
pub(super) fn remove_unknown_keys(root: &mut toml::Table, raw: &str, problems: &mut Vec<Problem>) {
    check_table(root, TOP, "", raw, problems);
    for (section, known) in [
        ("server", SERVER),
        ("admin", ADMIN),
        ("logging", LOGGING),
        ("rate_limit", RATE_LIMIT),
    ] {
        if let Some(toml::Value::Table(t)) = root.get_mut(section) {
            check_table(t, known, section, raw, problems);
            if section == "server" {
                if let Some(toml::Value::Table(tls)) = t.get_mut("tls") {
                    check_table(tls, TLS, "server.tls", raw, problems);
                }
            }
        }
    }
    for (list, known) in [
        ("issuers", ISSUER),
        ("upstreams", UPSTREAM),
        ("routes", ROUTE),
    ] {
        let Some(toml::Value::Array(items)) = root.get_mut(list) else {
            continue;
        };
        for (i, item) in items.iter_mut().enumerate() {
            let toml::Value::Table(t) = item else {
                continue;
            };
            let at = named(t, list, i);
            check_table(t, known, &at, raw, problems);
            if list == "routes" {
                match t.get_mut("rate_limit") {
                    Some(toml::Value::Table(rule)) => {
                        check_table(rule, RULE, &format!("{at}.rate_limit"), raw, problems)
                    }
                    Some(toml::Value::Array(rules)) => {
                        for (j, rule) in rules.iter_mut().enumerate() {
                            if let toml::Value::Table(rule) = rule {
                                check_table(
                                    rule,
                                    RULE,
                                    &format!("{at}.rate_limit[{j}]"),
                                    raw,
                                    problems,
                                );
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file using every known key must deserialize with `deny_unknown_fields`: the lists
    /// above and the serde structs agree.
    #[test]
    fn schema_lists_match_the_serde_structs() {
        let raw = r#"
[server]
listen = "127.0.0.1:1"
trusted_proxies = []
threads = 1
grace_period_secs = 1
upstream_keepalive_pool_size = 1
max_token_bytes = 1
max_body_bytes = 1
h2c = true
upgrade_sock = "/tmp/x"
pid_file = "/tmp/y"
max_header_bytes = 1024
header_timeout_ms = 1
keepalive_timeout_ms = 1
max_connections = 1
max_connections_per_ip = 1
public_url = "https://api.example.com"
dpop_algorithms = ["ES256"]
dpop_max_age_secs = 60
dpop_leeway_secs = 5
[server.tls]
cert_path = "a"
key_path = "b"
[admin]
listen = "127.0.0.1:2"
allowed_hosts = []
token = "0123456789abcdef"
[logging]
format = "json"
level = "info"
access_log = true
[rate_limit]
backend = "memory"
redis_url = "redis://x"
pool_size = 1
timeout_ms = 1
on_backend_error = "fail_open"
key_prefix = "p"
memory_max_keys = 1
[[issuers]]
name = "i"
issuer = "i"
audiences = []
jwks_uri = "/x"
discovery_url = "http://x"
algorithms = []
leeway_secs = 1
strip_authorization = true
jwks_refresh_secs = 1
jwks_min_refresh_secs = 1
jwks_max_refresh_secs = 1
unknown_kid_cooldown_secs = 1
jwks_timeout_ms = 1
dpop = "allowed"
introspection_endpoint = "http://x"
introspection_auth = "basic"
introspection_client_id = "c"
introspection_client_secret = "s"
introspection_timeout_ms = 1
introspection_cache_secs = 1
introspection_negative_cache_secs = 1
[[upstreams]]
name = "u"
peers = []
tls = false
sni = "s"
verify_cert = true
connect_timeout_ms = 1
read_timeout_ms = 1
write_timeout_ms = 1
idle_timeout_ms = 1
[[routes]]
name = "r"
methods = []
path = "/"
upstream = "u"
auth = "jwt"
scopes = []
any_scopes = []
issuers = []
token_query_param = "q"
token_cookie = "c"
dpop = "required"
introspect = true
[routes.rate_limit]
requests = 1
period = "1s"
key = []
"#;
        let mut table: toml::Table = toml::from_str(raw).unwrap();
        let mut problems = Vec::new();
        remove_unknown_keys(&mut table, raw, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        toml::from_str::<super::super::GatewayFile>(raw).unwrap();
    }
}
