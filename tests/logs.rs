//! The access log end to end, against the running binary: one line per request with every
//! field (JSON), plain lines in the text format, and never a token or a secret at any level
//! (`level = "debug"`, `RUST_LOG=trace`).

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

// ------------------------------------------------------------------------------- fixtures

/// Wait until the access log holds at least `n` lines; returns them.
async fn wait_access_lines(gw: &TestGateway, n: usize) -> Vec<Value> {
    let ok = eventually(Duration::from_secs(5), || async {
        access_lines(&gw.logs()).len() >= n
    })
    .await;
    let lines = access_lines(&gw.logs());
    assert!(
        ok,
        "expected {n} access-log lines, found {}; log:\n{}",
        lines.len(),
        gw.logs()
    );
    lines
}

// ------------------------------------------------------------------------------- access lines

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_access_line_per_request_has_every_field() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let dead = DeadPort::new();
    let gw = TestGateway::start(&ops_config(&li, &echo, &dead)).await;
    let tag = random_hex();
    let sub = format!("alice-{}", &tag[..8]);
    let cid = format!("client-{}", &tag[8..16]);
    let query_secret = random_hex();
    let tok = li.mint(&patch(
        li.claims(&sub, "read:studies", 3600),
        json!({"client_id": cid}),
    ));
    let rid = |n: &str| format!("rid-{n}-{tag}");
    let ok = send(
        gw.get(&format!("/v1/studies/7?q={query_secret}"))
            .bearer_auth(&tok)
            .header("x-request-id", rid("ok")),
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("x-request-id"), Some(rid("ok")));
    let missing = send(
        gw.get("/v1/studies/7")
            .header("x-request-id", rid("missing")),
    )
    .await;
    assert_eq!(missing.status, 401);
    let scope = send(
        gw.get("/v1/scoped/x")
            .bearer_auth(&tok)
            .header("x-request-id", rid("scope")),
    )
    .await;
    assert_eq!(scope.status, 403);
    let none = send(gw.get("/v1/nothing").header("x-request-id", rid("none"))).await;
    assert_eq!(none.status, 404);
    let dead_r = send(gw.get("/v1/dead/x").header("x-request-id", rid("dead"))).await;
    assert_eq!(dead_r.status, 502);
    // Without an inbound id the gateway makes one, logs it and returns it.
    let generated = send(gw.get("/v1/public/gen")).await;
    assert_eq!(generated.status, 200);
    let gen_id = generated
        .header("x-request-id")
        .expect("a generated x-request-id");

    let lines = wait_access_lines(&gw, 6).await;
    assert_eq!(
        lines.len(),
        6,
        "one access line per request; log:\n{}",
        gw.logs()
    );
    let line = |id: &str| {
        let found: Vec<&Value> = lines.iter().filter(|l| l["request_id"] == id).collect();
        assert_eq!(
            found.len(),
            1,
            "one access line for {id}; log:\n{}",
            gw.logs()
        );
        found[0].clone()
    };
    for l in &lines {
        for field in [
            "request_id",
            "route",
            "method",
            "path",
            "status",
            "duration_ms",
            "upstream",
            "outcome",
            "auth",
            "issuer",
            "client_id",
            "subject",
            "client_ip",
            "error",
        ] {
            assert!(!l[field].is_null(), "field {field} missing in {l}");
        }
        assert!(
            l["duration_ms"].as_f64().is_some_and(|d| d >= 0.0),
            "duration_ms is a number: {l}"
        );
        assert!(l["status"].is_u64(), "status is a number: {l}");
        assert_eq!(l["method"], "GET", "{l}");
        assert_eq!(l["client_ip"], "127.0.0.1", "{l}");
    }

    let l = line(&rid("ok"));
    assert_eq!(l["route"], "studies", "{l}");
    assert_eq!(l["status"], 200, "{l}");
    assert_eq!(l["upstream"], "api", "{l}");
    assert_eq!(l["outcome"], "forwarded", "{l}");
    assert_eq!(l["auth"], "ok", "{l}");
    assert_eq!(l["issuer"], "main", "{l}");
    assert_eq!(l["subject"], sub.as_str(), "{l}");
    assert_eq!(l["client_id"], cid.as_str(), "{l}");
    assert_eq!(
        l["path"], "/v1/studies/7",
        "the path without its query: {l}"
    );

    let l = line(&rid("missing"));
    assert_eq!(l["status"], 401, "{l}");
    assert_eq!(l["auth"], "missing", "{l}");
    assert_eq!(l["outcome"], "missing", "{l}");
    assert_eq!(l["subject"], "-", "{l}");

    let l = line(&rid("scope"));
    assert_eq!(l["status"], 403, "{l}");
    assert_eq!(l["route"], "scoped", "{l}");
    assert_eq!(l["auth"], "insufficient_scope", "{l}");
    assert_eq!(l["outcome"], "insufficient_scope", "{l}");
    assert_eq!(l["subject"], sub.as_str(), "{l}");
    assert_eq!(l["client_id"], cid.as_str(), "{l}");

    let l = line(&rid("none"));
    assert_eq!(l["status"], 404, "{l}");
    assert_eq!(l["route"], "_none", "{l}");
    assert_eq!(l["outcome"], "no_route", "{l}");
    assert_eq!(l["upstream"], "-", "{l}");

    let l = line(&rid("dead"));
    assert_eq!(l["status"], 502, "{l}");
    assert_eq!(l["route"], "dead", "{l}");
    assert_eq!(l["upstream"], "dead", "{l}");
    assert_eq!(l["outcome"], "upstream_failed", "{l}");
    assert_eq!(l["auth"], "public", "{l}");

    let l = line(&gen_id);
    assert_eq!(l["route"], "public", "{l}");
    assert_eq!(l["status"], 200, "{l}");

    let log = gw.logs();
    assert!(
        !log.contains(&query_secret),
        "the query string was logged:\n{log}"
    );
}

// ------------------------------------------------------------------------------- secrets

const REDIS_PASSWORD: &str = "s3cretpw";
const BASIC_PASSWORD: &str = "b4sic-pw-9f1c";

/// Requests that carry tokens and secrets every way a client can send them; returns the
/// secrets that must never be logged.
async fn traffic_with_secrets(gw: &TestGateway, li: &LocalIssuer) -> Vec<String> {
    let good = token(li, "user-secret", "read:studies");
    let expired = expired_token(li);
    let bad_sig = bad_signature_token(li);
    let wrong_scope = token(li, "user-scope", "read:other");
    let in_query = token(li, "user-query", "read:studies");
    let in_cookie = token(li, "user-cookie", "read:studies");
    let limited = token(li, "user-limited", "read:studies");
    let dead = token(li, "user-dead", "read:studies");
    assert_eq!(gw.get_with_token("/v1/studies/1", &good).await.status, 200);
    assert_eq!(gw.get_with_token("/v1/studies/1", &good).await.status, 200);
    assert_eq!(
        gw.get_with_token("/v1/studies/1", &expired).await.status,
        401
    );
    assert_eq!(
        gw.get_with_token("/v1/studies/1", &bad_sig).await.status,
        401
    );
    assert_eq!(
        gw.get_with_token("/v1/studies/1", &wrong_scope)
            .await
            .status,
        403
    );
    // Not of the form `Bearer <token>`: 400, the header must not be echoed to the log.
    let r = send(
        gw.get("/v1/studies/1")
            .header("authorization", format!("Bearer {good} trailing")),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.describe());
    let r = send(
        gw.get(&format!("/v1/qtoken/x?access_token={in_query}"))
            .header("x-request-id", "rid-qtoken"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.describe());
    let r = send(
        gw.get("/v1/ctoken/x")
            .header("cookie", format!("session=abc; at={in_cookie}")),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.describe());
    // A rate-limited route on the (unreachable) Redis backend: fail_open lets it through.
    let r = gw.get_with_token("/v1/rl/x", &limited).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    let r = gw.get_with_token("/v1/rl/y", &limited).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    // Basic credentials on a client_id-keyed route, and a client secret in a form body
    // (client_secret_post; one method per request, RFC 6749 §2.3).
    let r = send(
        gw.post("/v1/basic/token")
            .basic_auth("client-basic", Some(BASIC_PASSWORD))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.describe());
    let r = send(
        gw.post("/v1/basic/token")
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials&client_id=client-post&client_secret=form-secret-77a1"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.describe());
    // An upstream failure (pingora writes its own error line).
    assert_eq!(gw.get_with_token("/v1/dead/x", &dead).await.status, 502);

    let mut secrets = vec![
        REDIS_PASSWORD.to_string(),
        BASIC_PASSWORD.to_string(),
        "form-secret-77a1".to_string(),
        b64url(format!("client-basic:{BASIC_PASSWORD}").as_bytes()),
        base64_std(format!("client-basic:{BASIC_PASSWORD}").as_bytes()),
    ];
    for t in [
        &good,
        &expired,
        &bad_sig,
        &wrong_scope,
        &in_query,
        &in_cookie,
        &limited,
        &dead,
    ] {
        secrets.push(t.clone());
        let parts = token_parts(t);
        secrets.push(parts[1].clone());
        secrets.push(parts[2].clone());
    }
    secrets
}

fn base64_std(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The config of the log-secrets tests: the usual routes, token-in-query and token-in-cookie
/// routes, a rate-limited route on a Redis backend whose URL carries a password (the server
/// is down: `fail_open`), a client_id-keyed route.
fn secrets_config(
    li: &LocalIssuer,
    echo: &EchoUpstream,
    dead: &DeadPort,
    redis: &DeadPort,
) -> Config {
    ops_config(li, echo, dead)
        .route(
            RouteSpec::new("qtoken", "/v1/qtoken/*", "api")
                .scopes(&["read:studies"])
                .token_query_param("access_token"),
        )
        .route(
            RouteSpec::new("ctoken", "/v1/ctoken/*", "api")
                .scopes(&["read:studies"])
                .token_cookie("at"),
        )
        .route(RouteSpec::new("rl", "/v1/rl/*", "api").rate_limit(100, "1m", &["sub"]))
        .route(
            RouteSpec::new("basic", "/v1/basic/*", "api")
                .public()
                .rate_limit(100, "1m", &["client_id"]),
        )
        .rate_limit_set("backend", "redis")
        .rate_limit_set(
            "redis_url",
            format!("redis://:{REDIS_PASSWORD}@{}/0", redis.peer()),
        )
        .rate_limit_set("on_backend_error", "fail_open")
        .rate_limit_set("timeout_ms", 200)
}

/// Assert no secret and no `Bearer <jwt>` is in `log`.
fn assert_log_has_no_secrets(log: &str, secrets: &[String]) {
    for s in secrets {
        if let Some(pos) = log.find(s.as_str()) {
            let from = log[..pos].rfind('\n').map(|p| p + 1).unwrap_or(0);
            let to = log[pos..].find('\n').map(|p| pos + p).unwrap_or(log.len());
            panic!(
                "a secret ({}…) was logged in:\n{}",
                &s[..s.len().min(12)],
                &log[from..to]
            );
        }
    }
    assert!(
        !log.contains("Bearer ey"),
        "an Authorization header value was logged"
    );
    assert!(
        !log.to_ascii_lowercase().contains("authorization: "),
        "an Authorization header was logged"
    );
}

/// Runs traffic full of secrets through a gateway logging at `level` (set by `verbose`) and
/// checks that records of that level were written and that none holds a secret.
async fn assert_verbose_logs_have_no_secrets(verbose: impl FnOnce(Config) -> Config, level: &str) {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let dead = DeadPort::new();
    let redis = DeadPort::new();
    let cfg = verbose(secrets_config(&li, &echo, &dead, &redis));
    let gw = TestGateway::start(&cfg).await;
    let secrets = traffic_with_secrets(&gw, &li).await;
    wait_access_lines(&gw, 12).await;
    let log = gw.logs();
    // The level took effect (e.g. the JWKS client's debug records are written).
    assert!(
        json_lines(&log).iter().any(|l| l["level"] == level),
        "no {level} record; log:\n{log}"
    );
    assert_log_has_no_secrets(&log, &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_at_debug_level_never_contain_tokens_or_secrets() {
    assert_verbose_logs_have_no_secrets(|c| c.log_level("debug"), "DEBUG").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_with_rust_log_trace_never_contain_tokens_or_secrets() {
    assert_verbose_logs_have_no_secrets(|c| c.env("RUST_LOG", "trace"), "TRACE").await;
}

// ------------------------------------------------------------------------------- text format

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_text_format_writes_plain_access_lines() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let dead = DeadPort::new();
    let cfg = ops_config(&li, &echo, &dead).logging_set("format", "text");
    let gw = TestGateway::start(&cfg).await;
    let rid = format!("rid-text-{}", random_hex());
    let tok = token(&li, "text-user", "read:studies");
    let r = send(
        gw.get("/v1/studies/3")
            .bearer_auth(&tok)
            .header("x-request-id", &rid),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        gw.wait_for_log(&rid, Duration::from_secs(5)).await,
        "no access line for {rid}; log:\n{}",
        gw.logs()
    );
    let raw = gw.logs();
    let log = strip_ansi(&raw);
    let line = log
        .lines()
        .find(|l| l.contains(&rid))
        .expect("access line")
        .to_string();
    assert!(
        serde_json::from_str::<Value>(&line).is_err(),
        "format = \"text\" wrote JSON: {line}"
    );
    assert!(line.contains("access"), "target shown: {line}");
    assert!(line.contains("INFO"), "level shown: {line}");
    for needle in [
        "route=\"studies\"",
        "status=200",
        "subject=\"text-user\"",
        "outcome=\"forwarded\"",
    ] {
        let plain = needle.replace('"', "");
        assert!(
            line.contains(needle) || line.contains(&plain),
            "{needle} missing in: {line}"
        );
    }
    assert!(
        json_lines(&log).is_empty(),
        "no JSON line at all in text format; log:\n{log}"
    );
    assert!(!log.contains(&tok), "the token was logged");
    // stderr here is a file, not a terminal: no colour escapes in it.
    assert!(
        !raw.contains('\u{1b}'),
        "format = \"text\" writes ANSI colour escapes into a log file that is not a terminal: {:?}",
        raw.lines().find(|l| l.contains(&rid)).unwrap_or_default()
    );
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
