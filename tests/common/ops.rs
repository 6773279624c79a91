//! Fixtures shared by the operations tests (metrics, logs, reload, lifecycle, admin): their
//! usual config, a few tokens, and readers of the JSON log and the reload counter.

use serde_json::Value;

use super::*;

/// Routes of most tests:
/// - `studies` `GET /v1/studies/{id}` needs `read:studies`;
/// - `scoped` `/v1/scoped/*` needs `scope:a` (the reload tests flip it to `scope:b`);
/// - `limited` `/v1/limited/*` public, 1000 per minute per ip;
/// - `dead` `/v1/dead/*` public, upstream `dead` (a port that refuses connections);
/// - `public` `/v1/public/*` public.
pub fn ops_config(li: &LocalIssuer, echo: &EchoUpstream, dead: &DeadPort) -> Config {
    Config::basic(li, echo)
        .upstream(UpstreamSpec::new("dead", &[dead.peer()]))
        .route(
            RouteSpec::new("studies", "/v1/studies/{id}", "api")
                .methods(&["GET"])
                .scopes(&["read:studies"]),
        )
        .route(RouteSpec::new("scoped", "/v1/scoped/*", "api").scopes(&["scope:a"]))
        .route(
            RouteSpec::new("limited", "/v1/limited/*", "api")
                .public()
                .rate_limit(1000, "1m", &["ip"]),
        )
        .route(RouteSpec::new("dead", "/v1/dead/*", "dead").public())
        .route(RouteSpec::new("public", "/v1/public/*", "api").public())
}

pub fn expired_token(li: &LocalIssuer) -> String {
    li.mint(&li.claims("user-expired", "read:studies", -3600))
}

/// A well-formed token for `main` whose signature belongs to another token.
pub fn bad_signature_token(li: &LocalIssuer) -> String {
    let good = token_parts(&token(li, "user-badsig", "read:studies"));
    let other = token_parts(&token(li, "someone-else", "nothing"));
    format!("{}.{}.{}", good[0], good[1], other[2])
}

/// A random lowercase hex string (uuid v4, simple form).
pub fn random_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The status of the answer to `rb`.
pub async fn status_of(rb: reqwest::RequestBuilder) -> u16 {
    send(rb).await.status
}

/// The gateway's config-reload counter for `result` (`ok`, `error`).
pub async fn reloads(gw: &TestGateway, result: &str) -> f64 {
    gw.metric("gateway_config_reloads_total", &[("result", result)])
        .await
}

/// Parsed JSON log lines (lines that are not JSON objects are skipped).
pub fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(Value::is_object)
        .collect()
}

/// Access-log lines (target `access`).
pub fn access_lines(log: &str) -> Vec<Value> {
    json_lines(log)
        .into_iter()
        .filter(|v| v["target"] == "access")
        .collect()
}
