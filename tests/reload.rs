//! Hot reload end to end (SIGHUP and `POST /reload`), against the running binary: under
//! continuous load with zero failed requests, refused files leave the old config serving, JWKS
//! caches are kept unless the key source changes, added upstreams and routes are served on
//! kept-alive connections, in-flight requests finish, a removed issuer's gauges go, the rate
//! limiter keeps its state, and a new listen address waits for a restart.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ------------------------------------------------------------------------------- fixtures

/// `cfg` with the `scoped` route requiring `scope` instead.
fn with_scoped_scope(cfg: &Config, scope: &str) -> Config {
    let mut cfg = cfg.clone();
    for r in &mut cfg.routes {
        if r.keys.get("name") == Some(&json!("scoped")) {
            r.keys.set("scopes", json!([scope]));
        }
    }
    cfg
}

// ------------------------------------------------------------------------------- raw keep-alive

/// One HTTP/1.1 connection kept open across requests.
struct KeepAlive {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl KeepAlive {
    async fn connect(addr: SocketAddr) -> KeepAlive {
        KeepAlive {
            stream: tokio::net::TcpStream::connect(addr)
                .await
                .expect("connect to the gateway"),
            buf: Vec::new(),
        }
    }

    /// `GET path` on this connection; (status, body). Panics when the connection was closed.
    async fn get(&mut self, path: &str) -> (u16, String) {
        let req = format!("GET {path} HTTP/1.1\r\nHost: gateway\r\nConnection: keep-alive\r\n\r\n");
        tokio::time::timeout(Duration::from_secs(5), async {
            self.stream
                .write_all(req.as_bytes())
                .await
                .expect("write on the kept-alive connection");
            self.read_response().await
        })
        .await
        .expect("response on the kept-alive connection within 5 s")
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 16 * 1024];
        let n = self
            .stream
            .read(&mut chunk)
            .await
            .expect("read on the kept-alive connection");
        assert!(n > 0, "the gateway closed the kept-alive connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    async fn read_response(&mut self) -> (u16, String) {
        let head_end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            self.fill().await;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end + 4);
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line: {head}"));
        let header = |name: &str| {
            head.lines().skip(1).find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let body = if let Some(len) = header("content-length").and_then(|v| v.parse().ok()) {
            while self.buf.len() < len {
                self.fill().await;
            }
            self.buf.drain(..len).collect::<Vec<u8>>()
        } else if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            let mut body = Vec::new();
            loop {
                let line_end = loop {
                    if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break p;
                    }
                    self.fill().await;
                };
                let size = usize::from_str_radix(
                    String::from_utf8_lossy(&self.buf[..line_end]).trim(),
                    16,
                )
                .expect("chunk size");
                self.buf.drain(..line_end + 2);
                while self.buf.len() < size + 2 {
                    self.fill().await;
                }
                body.extend(self.buf.drain(..size));
                self.buf.drain(..2);
                if size == 0 {
                    break;
                }
            }
            body
        } else {
            panic!("response without a length on a kept-alive connection:\n{head}");
        };
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

// ------------------------------------------------------------------------------- reload

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_continuous_load_changes_scopes_with_zero_failed_requests() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let dead = DeadPort::new();
    let cfg = ops_config(&li, &echo, &dead);
    let mut gw = TestGateway::start(&cfg).await;
    let both = token(&li, "loader", "scope:a scope:b");
    let only_a = token(&li, "user-a", "scope:a");
    let only_b = token(&li, "user-b", "scope:b");
    assert_eq!(gw.get_with_token("/v1/scoped/x", &only_a).await.status, 200);
    assert_eq!(gw.get_with_token("/v1/scoped/x", &only_b).await.status, 403);

    let stop = Arc::new(AtomicBool::new(false));
    let load = spawn_load(
        gw.url("/v1/scoped/load"),
        Some(both.clone()),
        4,
        false,
        stop.clone(),
        Duration::from_secs(8),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A -> B with SIGHUP.
    gw.rewrite_config(&with_scoped_scope(&cfg, "scope:b"));
    gw.signal("HUP");
    let flipped = eventually(Duration::from_secs(3), || async {
        gw.get_with_token("/v1/scoped/x", &only_a).await.status == 403
    })
    .await;
    assert!(
        flipped,
        "SIGHUP did not apply the new scope; log:\n{}",
        gw.logs()
    );
    assert_insufficient_scope(&gw.get_with_token("/v1/scoped/x", &only_a).await, "scope:b");
    assert_eq!(gw.get_with_token("/v1/scoped/x", &only_b).await.status, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // B -> A with POST /reload.
    gw.rewrite_config(&cfg);
    let r = gw.reload().await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.json()["status"], "reloaded");
    assert_eq!(gw.get_with_token("/v1/scoped/x", &only_a).await.status, 200);
    assert_insufficient_scope(&gw.get_with_token("/v1/scoped/x", &only_b).await, "scope:a");
    tokio::time::sleep(Duration::from_millis(500)).await;

    stop.store(true, Ordering::SeqCst);
    let load = load.await.expect("load task");
    assert!(
        load.ok >= 100,
        "too few requests under load to mean anything: {load:?}"
    );
    assert_eq!(
        load.failed, 0,
        "requests failed during the reloads ({} ok): {:?}",
        load.ok, load.samples
    );
    assert_eq!(reloads(&gw, "ok").await, 2.0);
    assert_eq!(reloads(&gw, "error").await, 0.0);
    assert!(gw.logs().contains("config reloaded"), "{}", gw.logs());
}

/// After a refused reload: the old config answers exactly as before.
async fn assert_old_config_serves(gw: &TestGateway, li: &LocalIssuer) {
    let only_a = token(li, "user-a", "scope:a");
    assert_eq!(gw.get_with_token("/v1/scoped/x", &only_a).await.status, 200);
    assert_eq!(
        gw.get_with_token("/v1/studies/1", &token(li, "u", "read:studies"))
            .await
            .status,
        200
    );
    assert_eq!(status_of(gw.get("/v1/new/x")).await, 404);
    assert_eq!(gw.readyz().await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_with_syntax_error_is_refused_and_old_config_keeps_serving() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let dead = DeadPort::new();
    let cfg = ops_config(&li, &echo, &dead);
    let mut gw = TestGateway::start(&cfg).await;
    let mut broken = with_scoped_scope(&cfg, "scope:b")
        .route(RouteSpec::new("new", "/v1/new/*", "api").public())
        .render(gw.addr(), gw.admin_addr(), gw.dir());
    broken.push_str("\n[[routes]\nname = \"oops\"\n");
    gw.rewrite_config_raw(&broken);

    gw.signal("HUP");
    assert!(
        eventually(Duration::from_secs(3), || async {
            reloads(&gw, "error").await == 1.0
        })
        .await,
        "SIGHUP with a broken file did not count an error:\n{}",
        gw.metrics().await
    );
    assert!(
        gw.wait_for_log("config reload refused", Duration::from_secs(2))
            .await,
        "{}",
        gw.logs()
    );
    let refused: Vec<Value> = json_lines(&gw.logs())
        .into_iter()
        .filter(|l| l["message"] == "config reload refused; keeping the running config")
        .collect();
    assert!(
        refused
            .iter()
            .any(|l| l["problem"].as_str().unwrap_or("").contains("TOML")),
        "the log names the syntax problem: {refused:?}"
    );
    assert_eq!(refused[0]["level"], "ERROR", "{refused:?}");
    assert_old_config_serves(&gw, &li).await;

    let r = gw.reload().await;
    assert_eq!(r.status, 422, "{}", r.describe());
    let body = r.json();
    assert_eq!(body["error"], "invalid_config", "{body}");
    let problems = body["problems"].as_array().expect("problems array");
    assert!(!problems.is_empty(), "{body}");
    assert!(
        problems
            .iter()
            .any(|p| p.as_str().unwrap_or("").contains("TOML")),
        "{body}"
    );
    assert_eq!(reloads(&gw, "error").await, 2.0);
    assert_eq!(reloads(&gw, "ok").await, 0.0);
    assert_old_config_serves(&gw, &li).await;
    assert!(gw.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_with_unknown_upstream_is_refused_and_old_config_keeps_serving() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let dead = DeadPort::new();
    let cfg = ops_config(&li, &echo, &dead);
    let mut gw = TestGateway::start(&cfg).await;
    // Valid TOML, invalid config: a route naming an upstream that does not exist, plus a
    // scope change that must not be applied either.
    let bad = with_scoped_scope(&cfg, "scope:b")
        .route(RouteSpec::new("new", "/v1/new/*", "nope").public());
    gw.rewrite_config(&bad);

    gw.signal("HUP");
    assert!(
        eventually(Duration::from_secs(3), || async {
            reloads(&gw, "error").await == 1.0
        })
        .await,
        "SIGHUP with an invalid file did not count an error:\n{}",
        gw.metrics().await
    );
    assert!(
        gw.wait_for_log("unknown upstream", Duration::from_secs(2))
            .await,
        "the log names the problem:\n{}",
        gw.logs()
    );
    assert_old_config_serves(&gw, &li).await;

    let r = gw.reload().await;
    assert_eq!(r.status, 422, "{}", r.describe());
    let body = r.json();
    assert_eq!(body["error"], "invalid_config", "{body}");
    let problems: Vec<String> = body["problems"]
        .as_array()
        .expect("problems array")
        .iter()
        .map(|p| p.as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("unknown upstream") && p.contains("nope")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("routes[5]") || p.contains("\"new\"")),
        "the problem has its location: {problems:?}"
    );
    assert_eq!(reloads(&gw, "error").await, 2.0);
    assert_eq!(reloads(&gw, "ok").await, 0.0);
    assert_old_config_serves(&gw, &li).await;

    // The file fixed: the next reload is accepted and applies it.
    let fixed = bad.upstream(UpstreamSpec::echo("nope", &echo));
    gw.rewrite_config(&fixed);
    let r = gw.reload().await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(status_of(gw.get("/v1/new/x")).await, 200);
    assert_eq!(reloads(&gw, "ok").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_jwks_unless_the_key_source_changes() {
    let li = local_issuer().await;
    let other = local_issuer().await;
    let echo = echo_upstream().await;
    let dead = DeadPort::new();
    let cfg = ops_config(&li, &echo, &dead).issuer(IssuerSpec::local("other", &other));
    let mut gw = TestGateway::start(&cfg).await;
    let main_tok = token(&li, "m", "read:studies");
    let other_tok = token(&other, "o", "read:studies");
    assert_eq!(
        gw.get_with_token("/v1/studies/1", &main_tok).await.status,
        200
    );
    assert_eq!(
        gw.get_with_token("/v1/studies/1", &other_tok).await.status,
        200
    );
    let (main_before, other_before) = (li.fetch_count(), other.fetch_count());
    assert!(main_before >= 1 && other_before >= 1);

    // Routes only: neither issuer is refetched.
    let routes_only = cfg
        .clone()
        .route(RouteSpec::new("new", "/v1/new/*", "api").public());
    gw.rewrite_config(&routes_only);
    let r = gw.reload().await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(status_of(gw.get("/v1/new/x")).await, 200);
    // Tokens keep working straight away on the carried-over keys.
    assert_eq!(
        gw.get_with_token("/v1/studies/1", &main_tok).await.status,
        200
    );
    assert_eq!(
        gw.get_with_token("/v1/studies/1", &other_tok).await.status,
        200
    );
    // Longer than a refresher tick (250 ms): a new issuer object would be fetched by now.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        li.fetch_count(),
        main_before,
        "unchanged issuer `main` was refetched after a routes-only reload"
    );
    assert_eq!(
        other.fetch_count(),
        other_before,
        "unchanged issuer `other` was refetched after a routes-only reload"
    );

    // `other` changes a setting but not its key source (leeway): it keeps its keys, so its
    // tokens work at once and nothing is fetched.
    let mut changed = routes_only.clone();
    changed.issuers[1] = IssuerSpec::local("other", &other).leeway(5);
    gw.rewrite_config(&changed);
    let r = gw.reload().await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(
        gw.get_with_token("/v1/studies/1", &other_tok).await.status,
        200,
        "a changed issuer lost its keys"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        other.fetch_count(),
        other_before,
        "leeway change refetched `other`"
    );
    assert_eq!(
        li.fetch_count(),
        main_before,
        "unchanged issuer `main` was refetched"
    );

    // `other` changes its key source (discovery instead of jwks_uri): fetched before the
    // reload answers, so its tokens never see a 503.
    let mut moved = changed.clone();
    moved.issuers[1] = IssuerSpec::local("other", &other)
        .leeway(5)
        .discovery_url(&other.discovery_url());
    gw.rewrite_config(&moved);
    let r = gw.reload().await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert!(
        other.fetch_count() > other_before,
        "issuer `other` changed its key source but was not fetched before the swap; log:\n{}",
        gw.logs()
    );
    assert_eq!(
        gw.get_with_token("/v1/studies/1", &other_tok).await.status,
        200
    );
    assert_eq!(
        li.fetch_count(),
        main_before,
        "unchanged issuer `main` was refetched"
    );
    assert_eq!(reloads(&gw, "ok").await, 3.0);
}

/// README: "issuers ... change without dropping in-flight or keep-alive connections", and
/// readiness "never goes back". A reload that changes one setting of the issuer every
/// request uses must not answer anything but 200 meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_changing_an_issuer_under_load_has_zero_failed_requests() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let dead = DeadPort::new();
    let cfg = ops_config(&li, &echo, &dead);
    let mut gw = TestGateway::start(&cfg).await;
    let tok = token(&li, "loader", "read:studies");
    let stop = Arc::new(AtomicBool::new(false));
    let load = spawn_load(
        gw.url("/v1/studies/1"),
        Some(tok),
        4,
        false,
        stop.clone(),
        Duration::from_secs(8),
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = li.fetch_count();
    // A change of key source (jwks_uri -> discovery) plus a setting: the new issuer must have
    // its keys before it serves.
    let mut changed = cfg.clone();
    changed.issuers[0] = IssuerSpec::local("main", &li)
        .leeway(7)
        .discovery_url(&li.discovery_url());
    gw.rewrite_config(&changed);
    let r = gw.reload().await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert!(
        li.fetch_count() > before,
        "the issuer with a new key source was not fetched before the swap"
    );
    // Readiness is polled straight after the reload: it must not go back to 503.
    let mut readyz = Vec::new();
    for _ in 0..10 {
        readyz.push(gw.readyz().await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let load = load.await.expect("load task");
    assert!(load.ok >= 50, "too few requests: {load:?}");
    assert_eq!(
        load.failed, 0,
        "requests failed after a reload that changed the issuer's leeway ({} ok; /readyz just \
         after the reload: {readyz:?}): {:?}",
        load.ok, load.samples
    );
    assert!(
        readyz.iter().all(|s| *s == 200),
        "/readyz went back after the reload: {readyz:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adding_upstream_and_route_serves_them_and_keeps_alive_connections() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let echo2 = echo_upstream().await;
    let dead = DeadPort::new();
    let cfg = ops_config(&li, &echo, &dead);
    let mut gw = TestGateway::start(&cfg).await;
    let mut conn = KeepAlive::connect(gw.addr()).await;
    let (status, _) = conn.get("/v1/public/before").await;
    assert_eq!(status, 200);
    let (status, _) = conn.get("/v1/new/before").await;
    assert_eq!(status, 404);

    let grown = cfg
        .clone()
        .upstream(UpstreamSpec::echo("api2", &echo2))
        .route(RouteSpec::new("new", "/v1/new/*", "api2").public());
    gw.rewrite_config(&grown);
    gw.signal("HUP");
    assert!(
        eventually(Duration::from_secs(3), || async {
            reloads(&gw, "ok").await == 1.0
        })
        .await,
        "SIGHUP reload not applied; log:\n{}",
        gw.logs()
    );

    // The connection opened before the reload serves the new route, and the old one.
    let (status, body) = conn.get("/v1/new/after").await;
    assert_eq!(status, 200, "{body}");
    let echoed: Value = serde_json::from_str(&body).expect("echo JSON");
    assert_eq!(echoed["upstream"], echo2.addr().to_string(), "{echoed}");
    let (status, body) = conn.get("/v1/public/after").await;
    assert_eq!(status, 200, "{body}");
    let echoed: Value = serde_json::from_str(&body).expect("echo JSON");
    assert_eq!(echoed["upstream"], echo.addr().to_string(), "{echoed}");
    // And a new connection too.
    let r = send(gw.get("/v1/new/fresh")).await;
    assert_eq!(r.echo()["upstream"], echo2.addr().to_string());
    assert_eq!(echo2.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_removing_an_upstream_lets_in_flight_requests_finish() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let echo2 = echo_upstream().await;
    let dead = DeadPort::new();
    let base = ops_config(&li, &echo, &dead);
    let cfg = base
        .clone()
        .upstream(UpstreamSpec::echo("api2", &echo2))
        .route(RouteSpec::new("second", "/v1/second/*", "api2").public());
    let mut gw = TestGateway::start(&cfg).await;
    let slow = tokio::spawn(send(gw.get("/v1/second/slow?sleep_ms=1000")));
    assert!(
        eventually(Duration::from_secs(3), || async { echo2.hits() >= 1 }).await,
        "the slow request never reached its upstream"
    );
    gw.rewrite_config(&base);
    let r = gw.reload().await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(status_of(gw.get("/v1/second/new")).await, 404);
    let r = slow.await.expect("slow request");
    assert_eq!(r.echo()["upstream"], echo2.addr().to_string());
}

/// Series of `gateway_jwks_keys` / `gateway_jwks_last_success_timestamp_seconds` for `issuer`.
async fn jwks_gauges_of(gw: &TestGateway, issuer: &str) -> Vec<String> {
    let m = gw.metrics().await;
    let label = format!("issuer=\"{issuer}\"");
    m.lines()
        .filter(|l| !l.starts_with('#') && l.contains(&label))
        .filter(|l| {
            l.starts_with("gateway_jwks_keys")
                || l.starts_with("gateway_jwks_last_success_timestamp_seconds")
        })
        .map(str::to_string)
        .collect()
}

/// The JWKS-stale alert (`time() - gateway_jwks_last_success_timestamp_seconds > 3600`) and
/// the no-keys alert must not fire for an issuer the running config no longer has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_removing_an_issuer_drops_its_jwks_gauges() {
    let li = local_issuer().await;
    let other = local_issuer().await;
    let echo = echo_upstream().await;
    let dead = DeadPort::new();
    let cfg = ops_config(&li, &echo, &dead);
    let mut gw = TestGateway::start(&cfg.clone().issuer(IssuerSpec::local("other", &other))).await;
    assert_eq!(
        jwks_gauges_of(&gw, "other").await.len(),
        2,
        "{}",
        gw.metrics().await
    );
    gw.rewrite_config(&cfg);
    let r = gw.reload().await;
    assert_eq!(r.status, 200, "{}", r.describe());
    let body = send(gw.client().get(gw.admin_url("/readyz"))).await.json();
    assert!(body["issuers"]["other"].is_null(), "{body}");
    let left = jwks_gauges_of(&gw, "other").await;
    assert!(
        left.is_empty(),
        "series of the removed issuer `other` are still exported (the JWKS-stale alert will \
         fire for it an hour later): {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_of_routes_only_keeps_the_rate_limiter_state() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let dead = DeadPort::new();
    let cfg = ops_config(&li, &echo, &dead).route(
        RouteSpec::new("tight", "/v1/tight/*", "api")
            .public()
            .rate_limit(3, "1m", &["ip"]),
    );
    let mut gw = TestGateway::start(&cfg).await;
    for _ in 0..3 {
        assert_eq!(status_of(gw.get("/v1/tight/x")).await, 200);
    }
    assert_eq!(status_of(gw.get("/v1/tight/x")).await, 429);
    gw.rewrite_config(
        &cfg.clone()
            .route(RouteSpec::new("new", "/v1/new/*", "api").public()),
    );
    gw.signal("HUP");
    assert!(
        eventually(Duration::from_secs(3), || async {
            reloads(&gw, "ok").await == 1.0
        })
        .await
    );
    assert_eq!(status_of(gw.get("/v1/new/x")).await, 200);
    let r = send(gw.get("/v1/tight/x")).await;
    assert_eq!(
        r.status,
        429,
        "a routes-only reload reset the limiter: {}",
        r.describe()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_changing_the_listen_address_warns_and_keeps_the_old_listener() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let dead = DeadPort::new();
    let cfg = ops_config(&li, &echo, &dead);
    let mut gw = TestGateway::start(&cfg).await;
    let elsewhere = free_addr();
    gw.rewrite_config(&cfg.clone().server_set("listen", elsewhere.to_string()));
    let r = gw.reload().await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert!(
        gw.wait_for_log("take effect after a restart", Duration::from_secs(2))
            .await,
        "no warning about the listener change:\n{}",
        gw.logs()
    );
    assert_eq!(status_of(gw.get("/v1/public/x")).await, 200);
    assert!(
        tokio::net::TcpStream::connect(elsewhere).await.is_err(),
        "the new address was bound without a restart"
    );
}
