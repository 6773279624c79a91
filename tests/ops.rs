//! Operations end to end, against the running binary: the Prometheus metrics (values move as
//! requests flow, labels stay bounded, `promtool check metrics` passes, every metric the alert
//! rules and the dashboard use is exported), the JSON / text access log (one line per request,
//! never a token or a secret at any level), hot reload (under load, refused files, JWKS caches,
//! new upstreams, kept-alive connections), SIGTERM drain, the pingora zero-downtime upgrade and
//! the admin endpoints.
//!
//! `promtool` comes from the Debian package `prometheus`, which `make test` installs; a missing
//! promtool fails the test that needs it.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ------------------------------------------------------------------------------- fixtures

/// Routes of most tests:
/// - `studies` `GET /v1/studies/{id}` needs `read:studies`;
/// - `scoped` `/v1/scoped/*` needs `scope:a` (the reload tests flip it to `scope:b`);
/// - `limited` `/v1/limited/*` public, 1000 per minute per ip;
/// - `dead` `/v1/dead/*` public, upstream `dead` (a port that refuses connections);
/// - `public` `/v1/public/*` public.
fn ops_config(li: &LocalIssuer, echo: &EchoUpstream, dead: &DeadPort) -> Config {
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

fn expired_token(li: &LocalIssuer) -> String {
    li.mint(&li.claims("user-expired", "read:studies", -3600))
}

/// A well-formed token for `main` whose signature belongs to another token.
fn bad_signature_token(li: &LocalIssuer) -> String {
    let good = token_parts(&token(li, "user-badsig", "read:studies"));
    let other = token_parts(&token(li, "someone-else", "nothing"));
    format!("{}.{}.{}", good[0], good[1], other[2])
}

/// A random lowercase hex string (uuid v4, simple form).
fn random_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

async fn status_of(rb: reqwest::RequestBuilder) -> u16 {
    send(rb).await.status
}

/// The gateway's config-reload counter for `result` (`ok`, `error`).
async fn reloads(gw: &TestGateway, result: &str) -> f64 {
    gw.metric("gateway_config_reloads_total", &[("result", result)])
        .await
}

/// Parsed JSON log lines (lines that are not JSON objects are skipped).
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(Value::is_object)
        .collect()
}

/// Access-log lines (target `access`).
fn access_lines(log: &str) -> Vec<Value> {
    json_lines(log)
        .into_iter()
        .filter(|v| v["target"] == "access")
        .collect()
}

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

/// The lines of `log` that are not access-log lines (the last 40), for failure messages.
fn log_excerpt(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains("\"target\":\"access\""))
        .collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Kill and reap a child on drop (a second gateway process of the upgrade test).
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ------------------------------------------------------------------------------- load

/// What a load generator saw.
#[derive(Debug, Default)]
struct Load {
    ok: usize,
    failed: usize,
    /// The first failures, described.
    samples: Vec<String>,
}

impl Load {
    fn merge(&mut self, other: Load) {
        self.ok += other.ok;
        self.failed += other.failed;
        for s in other.samples {
            if self.samples.len() < 20 {
                self.samples.push(s);
            }
        }
    }

    fn record(&mut self, what: String) {
        self.failed += 1;
        if self.samples.len() < 20 {
            self.samples.push(what);
        }
    }
}

/// `workers` tasks send `GET url` (with `token` when given) as fast as they can until `stop`
/// is set or `limit` passes; every answer must be a 200. `fresh_connections` opens a new
/// connection per request, otherwise each worker keeps its connection alive.
fn spawn_load(
    url: String,
    token: Option<String>,
    workers: usize,
    fresh_connections: bool,
    stop: Arc<AtomicBool>,
    limit: Duration,
) -> tokio::task::JoinHandle<Load> {
    tokio::spawn(async move {
        let deadline = Instant::now() + limit;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..workers {
            let url = url.clone();
            let token = token.clone();
            let stop = stop.clone();
            tasks.spawn(async move {
                let mut b = reqwest::Client::builder()
                    .no_proxy()
                    .timeout(Duration::from_secs(5));
                if fresh_connections {
                    b = b.pool_max_idle_per_host(0);
                }
                let client = b.build().expect("client");
                let mut load = Load::default();
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    let mut rb = client.get(&url);
                    if fresh_connections {
                        rb = rb.header("connection", "close");
                    }
                    if let Some(t) = &token {
                        rb = rb.bearer_auth(t);
                    }
                    match rb.send().await {
                        Ok(resp) => {
                            let status = resp.status().as_u16();
                            match resp.bytes().await {
                                Ok(_) if status == 200 => load.ok += 1,
                                Ok(body) => load.record(format!(
                                    "status {status}: {}",
                                    String::from_utf8_lossy(&body)
                                )),
                                Err(e) => {
                                    load.record(format!("status {status}, body error: {e:?}"))
                                }
                            }
                        }
                        Err(e) => load.record(format!("transport error: {e:?}")),
                    }
                }
                load
            });
        }
        let mut total = Load::default();
        while let Some(r) = tasks.join_next().await {
            total.merge(r.expect("load worker panicked"));
        }
        total
    })
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

// ------------------------------------------------------------------------------- metrics

/// The same traffic for the metrics tests: 2×200, 3×401 (missing, expired, bad signature),
/// 1×403, 1×404, 1×502.
async fn mixed_traffic(gw: &TestGateway, li: &LocalIssuer) {
    let good = token(li, "user-1", "read:studies");
    assert_eq!(gw.get_with_token("/v1/studies/1", &good).await.status, 200);
    assert_eq!(gw.get_with_token("/v1/studies/2", &good).await.status, 200);
    assert_missing_token(&send(gw.get("/v1/studies/1")).await);
    assert_invalid_token(&gw.get_with_token("/v1/studies/1", &expired_token(li)).await);
    assert_invalid_token(
        &gw.get_with_token("/v1/studies/1", &bad_signature_token(li))
            .await,
    );
    let other = token(li, "user-2", "read:other");
    assert_insufficient_scope(
        &gw.get_with_token("/v1/studies/1", &other).await,
        "read:studies",
    );
    assert_json_error(&send(gw.get("/v1/nothing/here")).await, 404, "not_found");
    assert_json_error(&send(gw.get("/v1/dead/x")).await, 502, "bad_gateway");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_mixed_traffic_count_requests_auth_upstreams_and_jwks() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let dead = DeadPort::new();
    let started = now();
    let gw = TestGateway::start(&ops_config(&li, &echo, &dead)).await;
    mixed_traffic(&gw, &li).await;
    // The last request's `logging` phase may run just after its answer.
    assert!(
        eventually(Duration::from_secs(3), || async {
            gw.metric("gateway_requests_total", &[]).await >= 8.0
        })
        .await,
        "requests_total did not reach 8:\n{}",
        gw.metrics().await
    );
    let m = gw.metrics().await;
    let v = |name: &str, labels: &[(&str, &str)]| metric_value(&m, name, labels);
    let req = |route: &str, status: &str| {
        v(
            "gateway_requests_total",
            &[("route", route), ("method", "GET"), ("status", status)],
        )
    };
    assert_eq!(req("studies", "200"), 2.0, "{m}");
    assert_eq!(req("studies", "401"), 3.0, "{m}");
    assert_eq!(req("studies", "403"), 1.0, "{m}");
    assert_eq!(req("_none", "404"), 1.0, "{m}");
    assert_eq!(req("dead", "502"), 1.0, "{m}");
    assert_eq!(v("gateway_requests_total", &[]), 8.0, "{m}");

    // Duration histogram by route: one observation per request, `le` buckets present.
    assert_eq!(
        v(
            "gateway_request_duration_seconds_count",
            &[("route", "studies")]
        ),
        6.0,
        "{m}"
    );
    assert_eq!(
        v(
            "gateway_request_duration_seconds_bucket",
            &[("route", "studies"), ("le", "+Inf")]
        ),
        6.0,
        "{m}"
    );
    assert!(
        m.contains("gateway_request_duration_seconds_bucket{route=\"dead\",le=\"0.005\"}")
            || m.contains("gateway_request_duration_seconds_bucket{le=\"0.005\",route=\"dead\"}"),
        "{m}"
    );
    assert!(
        v(
            "gateway_upstream_duration_seconds_count",
            &[("upstream", "api")]
        ) >= 2.0,
        "{m}"
    );

    // Upstream errors by upstream and kind.
    assert!(
        v(
            "gateway_upstream_errors_total",
            &[("upstream", "dead"), ("kind", "connect")]
        ) >= 1.0,
        "{m}"
    );
    assert_eq!(
        v("gateway_upstream_errors_total", &[("upstream", "api")]),
        0.0,
        "{m}"
    );

    // Auth decisions by issuer and result.
    let auth = |issuer: &str, result: &str| {
        v(
            "gateway_auth_decisions_total",
            &[("issuer", issuer), ("result", result)],
        )
    };
    assert_eq!(auth("main", "ok"), 2.0, "{m}");
    assert_eq!(auth("main", "expired"), 1.0, "{m}");
    assert_eq!(auth("main", "bad_signature"), 1.0, "{m}");
    assert_eq!(auth("main", "insufficient_scope"), 1.0, "{m}");
    assert_eq!(auth("_unknown", "missing"), 1.0, "{m}");

    // JWKS: fetched, keys held, time of the last good fetch.
    assert!(
        v(
            "gateway_jwks_fetches_total",
            &[("issuer", "main"), ("result", "ok")]
        ) >= 1.0,
        "{m}"
    );
    assert_eq!(v("gateway_jwks_keys", &[("issuer", "main")]), 1.0, "{m}");
    let last = v(
        "gateway_jwks_last_success_timestamp_seconds",
        &[("issuer", "main")],
    );
    assert!(
        last >= (started - 5) as f64 && last <= (now() + 5) as f64,
        "last JWKS success {last} not between the start {started} and now; {m}"
    );

    // Verified-token cache: the second request with the same token was a hit.
    assert!(
        v("gateway_token_cache_requests_total", &[("result", "hit")]) >= 1.0,
        "{m}"
    );
    assert!(
        v("gateway_token_cache_requests_total", &[("result", "miss")]) >= 1.0,
        "{m}"
    );

    // Reloads (both series exist from the start), build info, readiness.
    assert!(
        m.contains("gateway_config_reloads_total{result=\"ok\"} 0"),
        "{m}"
    );
    assert!(
        m.contains("gateway_config_reloads_total{result=\"error\"} 0"),
        "{m}"
    );
    assert_eq!(
        v(
            "gateway_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0,
        "{m}"
    );
    assert!(
        m.lines().any(|l| l == "gateway_ready 1"),
        "gateway_ready should be 1; {m}"
    );
    assert_eq!(v("gateway_requests_in_flight", &[]), 0.0, "{m}");
}

/// `promtool check metrics` on `text`; panics with a clear message when promtool is missing.
fn promtool_check_metrics(text: &str) -> std::process::Output {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed: `make test` installs the Debian package `prometheus` \
             (apt-get install -y prometheus), which provides it"
        ),
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("promtool stdin");
        stdin
            .write_all(text.as_bytes())
            .expect("write metrics to promtool");
    }
    child.wait_with_output().expect("promtool output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_mixed_traffic_pass_promtool_check_metrics() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let dead = DeadPort::new();
    let gw = TestGateway::start(&ops_config(&li, &echo, &dead)).await;
    mixed_traffic(&gw, &li).await;
    assert_eq!(status_of(gw.get("/v1/limited/a")).await, 200);
    // A reload so the reload series move too.
    assert_eq!(gw.reload().await.status, 200);
    let text = gw.metrics().await;
    // Labelled families from every part of the gateway are in the text promtool sees.
    for family in [
        "gateway_requests_total{",
        "gateway_request_duration_seconds_bucket{",
        "gateway_upstream_errors_total{",
        "gateway_auth_decisions_total{",
        "gateway_jwks_fetches_total{",
        "gateway_ratelimit_decisions_total{",
    ] {
        assert!(text.contains(family), "{family} missing:\n{text}");
    }
    let out = promtool_check_metrics(&text);
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n--- metrics\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // promtool reports lint problems on stdout/stderr even when it exits 0 in some versions.
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.trim().is_empty(),
        "promtool check metrics reported problems:\n{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_labels_never_carry_paths_subjects_client_ids_or_tokens() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let dead = DeadPort::new();
    let gw = TestGateway::start(&ops_config(&li, &echo, &dead)).await;
    let path_secret = random_hex();
    let sub_secret = random_hex();
    let client_secret = random_hex();
    let query_secret = random_hex();
    let tok = li.mint(&patch(
        li.claims(&format!("sub-{sub_secret}"), "read:studies", 3600),
        json!({"client_id": format!("client-{client_secret}")}),
    ));
    // Unmatched paths, matched templated paths, rejected and failed requests.
    assert_eq!(
        status_of(gw.get(&format!("/v1/nothing/{path_secret}"))).await,
        404
    );
    assert_eq!(
        gw.get_with_token(&format!("/v1/studies/{path_secret}?q={query_secret}"), &tok)
            .await
            .status,
        200
    );
    assert_eq!(
        gw.get_with_token(&format!("/v1/scoped/{path_secret}"), &tok)
            .await
            .status,
        403
    );
    assert_eq!(
        status_of(gw.get(&format!("/v1/dead/{path_secret}"))).await,
        502
    );
    assert_eq!(
        status_of(gw.get(&format!("/v1/limited/{path_secret}"))).await,
        200
    );
    assert!(
        eventually(Duration::from_secs(3), || async {
            gw.metric("gateway_requests_total", &[]).await >= 5.0
        })
        .await
    );
    let m = gw.metrics().await;
    for (what, secret) in [
        ("raw path", path_secret.as_str()),
        ("subject", sub_secret.as_str()),
        ("client_id", client_secret.as_str()),
        ("query string", query_secret.as_str()),
    ] {
        assert!(!m.contains(secret), "the {what} leaked into /metrics:\n{m}");
    }
    for part in token_parts(&tok) {
        assert!(
            !m.contains(&part),
            "a token part leaked into /metrics:\n{m}"
        );
    }
    // Every label value is from a bounded set: route and upstream names, methods, status
    // codes, fixed reasons, issuer names, buckets, the version.
    let routes = ["studies", "scoped", "limited", "dead", "public", "_none"];
    for line in m.lines().filter(|l| !l.starts_with('#')) {
        let Some((_, labels)) = line.split_once('{') else {
            continue;
        };
        let labels = labels.rsplit_once('}').map(|(l, _)| l).unwrap_or("");
        for kv in labels.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').expect("label k=v");
            let v = v.trim_matches('"');
            assert!(
                !v.contains('/') && v.len() <= 40,
                "unbounded-looking label {k}={v:?} in {line:?}"
            );
            if k == "route" {
                assert!(routes.contains(&v), "route label {v:?} is not a route name");
            }
        }
    }
}

/// Gateway metrics named by deploy/prometheus/alerts.yml and the Grafana dashboard.
fn metric_names_used_by_deploy() -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut names = BTreeSet::new();
    for file in ["prometheus/alerts.yml", "grafana/wetrials-gateway.json"] {
        let path = root.join(file);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        names.extend(metric_names_in(&text));
    }
    names
}

/// Families of a Prometheus text exposition, from its `# TYPE` lines.
fn exported_families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_used_by_alerts_and_dashboard_are_exported_by_a_running_gateway() {
    let used = metric_names_used_by_deploy();
    assert!(used.len() >= 10, "suspiciously few names found: {used:?}");
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let dead = DeadPort::new();
    let gw = TestGateway::start(&ops_config(&li, &echo, &dead)).await;
    // One request through each part so the labelled families have a series.
    mixed_traffic(&gw, &li).await;
    let r = send(gw.get("/v1/limited/one")).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert!(
        eventually(Duration::from_secs(3), || async {
            gw.metric("gateway_ratelimit_decisions_total", &[]).await >= 1.0
        })
        .await,
        "no rate-limit decision counted:\n{}",
        gw.metrics().await
    );
    let exported = exported_families(&gw.metrics().await);
    let missing: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "metrics used by deploy/prometheus/alerts.yml or deploy/grafana/wetrials-gateway.json \
         but not exported by the running gateway: {missing:?}\nexported: {exported:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_in_flight_gauge_counts_a_slow_request_then_returns_to_zero() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let dead = DeadPort::new();
    let gw = TestGateway::start(&ops_config(&li, &echo, &dead)).await;
    let slow = tokio::spawn(send(gw.get("/v1/public/slow?sleep_ms=1200")));
    assert!(
        eventually(Duration::from_secs(3), || async {
            gw.metric("gateway_requests_in_flight", &[]).await == 1.0
        })
        .await,
        "in-flight gauge never showed the slow request:\n{}",
        gw.metrics().await
    );
    assert_eq!(slow.await.expect("slow request").status, 200);
    assert!(
        eventually(Duration::from_secs(3), || async {
            gw.metric("gateway_requests_in_flight", &[]).await == 0.0
        })
        .await,
        "in-flight gauge did not return to 0:\n{}",
        gw.metrics().await
    );
}

// ------------------------------------------------------------------------------- logs

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

// ------------------------------------------------------------------------------- shutdown

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sigterm_lets_slow_request_finish_refuses_new_connections_then_exits() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let dead = DeadPort::new();
    let cfg = ops_config(&li, &echo, &dead).server_set("grace_period_secs", 10);
    let mut gw = TestGateway::start(&cfg).await;
    let url = gw.url("/v1/public/slow?sleep_ms=1500");
    let slow = tokio::spawn(async move {
        let r = client().get(url).send().await;
        let finished = Instant::now();
        match r {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body = resp.text().await.map_err(|e| format!("{e:?}"));
                (Ok((status, body)), finished)
            }
            Err(e) => (Err(format!("{e:?}")), finished),
        }
    });
    assert!(
        eventually(Duration::from_secs(3), || async { echo.hits() >= 1 }).await,
        "the slow request never reached the upstream"
    );
    let signalled = Instant::now();
    gw.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // New connections are not served any more.
    let addr = gw.addr();
    let probe = raw_request_timeout(
        addr,
        b"GET /v1/public/new HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n",
        Duration::from_millis(800),
    )
    .await;
    assert!(
        probe.is_none(),
        "a connection opened after SIGTERM was served: {probe:?}"
    );
    let connect = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::TcpStream::connect(addr),
    )
    .await;
    let refused = matches!(connect, Ok(Err(_)));

    let (result, finished) = slow.await.expect("slow task");
    let (status, body) = result.unwrap_or_else(|e| panic!("the in-flight request failed: {e}"));
    assert_eq!(status, 200, "{body:?}");
    assert!(body.is_ok(), "body of the in-flight request: {body:?}");
    let exit = gw.wait_exit(Duration::from_secs(12)).await;
    let exited = Instant::now();
    let exit =
        exit.unwrap_or_else(|| panic!("still running 12 s after SIGTERM; log:\n{}", gw.logs()));
    assert!(exit.success(), "exit status {exit}; log:\n{}", gw.logs());
    assert!(
        exited.duration_since(finished) < Duration::from_secs(5),
        "exited {:?} after the last request finished: drain then exit, not the whole grace period",
        exited.duration_since(finished)
    );
    assert!(
        exited.duration_since(signalled) < Duration::from_secs(10),
        "exited {:?} after SIGTERM, past grace_period_secs",
        exited.duration_since(signalled)
    );
    assert!(
        refused,
        "a TCP connection to the data port was accepted after SIGTERM (result {connect:?}): \
         the listening socket stays open while draining, so new clients hang instead of being refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sigterm_with_nothing_in_flight_exits_promptly() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let dead = DeadPort::new();
    let cfg = ops_config(&li, &echo, &dead).server_set("grace_period_secs", 10);
    let mut gw = TestGateway::start(&cfg).await;
    assert_eq!(status_of(gw.get("/v1/public/x")).await, 200);
    let signalled = Instant::now();
    gw.signal("TERM");
    let exit = gw.wait_exit(Duration::from_secs(3)).await;
    assert!(
        exit.is_some(),
        "still running 3 s after SIGTERM with nothing in flight; log:\n{}",
        gw.logs()
    );
    assert!(exit.expect("exited").success());
    assert!(signalled.elapsed() < Duration::from_secs(3));
}

// ------------------------------------------------------------------------------- upgrade

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_sigquit_hands_listeners_over_with_zero_failed_requests() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let dead = DeadPort::new();
    let cfg = ops_config(&li, &echo, &dead).server_set("grace_period_secs", 10);
    let mut gw = TestGateway::start(&cfg).await;
    let tok = token(&li, "upgrader", "read:studies");
    let stop = Arc::new(AtomicBool::new(false));
    // A new connection per request, on a JWT route and on a public one.
    let jwt_load = spawn_load(
        gw.url("/v1/studies/1"),
        Some(tok.clone()),
        2,
        true,
        stop.clone(),
        Duration::from_secs(13),
    );
    let public_load = spawn_load(
        gw.url("/v1/public/x"),
        None,
        1,
        true,
        stop.clone(),
        Duration::from_secs(13),
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let b_log = gw.dir().join("gateway-b.log");
    let mut b = ChildGuard(gw.spawn_upgrade(&b_log));
    // B waits on the upgrade socket for the listeners.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        b.0.try_wait().expect("try_wait").is_none(),
        "the new process exited early; log:\n{}",
        std::fs::read_to_string(&b_log).unwrap_or_default()
    );
    gw.signal("QUIT");
    // A hands over, keeps serving for pingora's close timeout (5 s), then drains and exits.
    let exit = gw.wait_exit(Duration::from_secs(11)).await;
    let b_text = || std::fs::read_to_string(&b_log).unwrap_or_default();
    assert!(
        exit.is_some(),
        "the old process still runs 11 s after SIGQUIT; log A:\n{}\nlog B:\n{}",
        log_excerpt(&gw.logs()),
        log_excerpt(&b_text())
    );
    // Keep the clients going a little after A is gone: B alone serves them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let mut load = jwt_load.await.expect("jwt load");
    load.merge(public_load.await.expect("public load"));
    assert!(
        b.0.try_wait().expect("try_wait").is_none(),
        "the new process died; log:\n{}",
        log_excerpt(&b_text())
    );

    // B took part: it answered some of the load while A drained.
    let served_by_b = access_lines(&b_text()).len();
    assert!(
        served_by_b >= 5,
        "the new process answered {served_by_b} requests of the load; log B:\n{}",
        log_excerpt(&b_text())
    );

    // B serves afterwards, on the same ports (data and admin).
    let rid = format!("rid-after-upgrade-{}", random_hex());
    let r = send(
        client()
            .get(gw.url("/v1/studies/1"))
            .bearer_auth(&tok)
            .header("x-request-id", &rid),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert!(
        eventually(Duration::from_secs(3), || async { b_text().contains(&rid) }).await,
        "the request after the upgrade is not in B's log:\n{}",
        log_excerpt(&b_text())
    );
    assert_eq!(
        send(client().get(gw.admin_url("/readyz"))).await.status,
        200
    );

    assert!(load.ok >= 50, "too few requests: {load:?}");
    assert_eq!(
        load.failed,
        0,
        "requests failed during the upgrade ({} ok): {:?}\nlog B:\n{}",
        load.ok,
        load.samples,
        log_excerpt(&b_text())
    );
}

/// The same hand-over when the identity provider takes 1.5 s to serve its JWKS: the new
/// process must not answer JWT routes with 503 while the old one still holds good keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_with_a_slow_jwks_endpoint_has_zero_failed_requests() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let dead = DeadPort::new();
    let cfg = ops_config(&li, &echo, &dead).server_set("grace_period_secs", 10);
    let mut gw = TestGateway::start(&cfg).await;
    let tok = token(&li, "upgrader", "read:studies");
    // Same issuer, same keys, served slowly: only the new process reads this file.
    let slow = fixed_http_server(
        "application/json",
        li.jwks().to_string(),
        Duration::from_millis(1500),
    )
    .await;
    let slow = format!("http://{slow}/.well-known/jwks.json");
    let mut next = cfg.clone();
    next.issuers[0] = IssuerSpec::local("main", &li).jwks_uri(&slow);
    gw.rewrite_config(&next);

    let stop = Arc::new(AtomicBool::new(false));
    let load = spawn_load(
        gw.url("/v1/studies/1"),
        Some(tok.clone()),
        2,
        true,
        stop.clone(),
        Duration::from_secs(13),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b_log = gw.dir().join("gateway-b.log");
    let _b = ChildGuard(gw.spawn_upgrade(&b_log));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    gw.signal("QUIT");
    let exit = gw.wait_exit(Duration::from_secs(11)).await;
    let b_text = || std::fs::read_to_string(&b_log).unwrap_or_default();
    assert!(
        exit.is_some(),
        "the old process still runs 11 s after SIGQUIT; log B:\n{}",
        b_text()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let load = load.await.expect("load");
    let r = gw.get_with_token("/v1/studies/1", &tok).await;
    assert_eq!(r.status, 200, "the new process serves: {}", r.describe());
    assert!(load.ok >= 50, "too few requests: {load:?}");
    assert_eq!(
        load.failed, 0,
        "requests failed during the upgrade ({} ok): {:?}",
        load.ok, load.samples
    );
}

// ------------------------------------------------------------------------------- admin

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_answer_json_with_the_right_status() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let dead = DeadPort::new();
    let gw = TestGateway::start(&ops_config(&li, &echo, &dead)).await;
    let c = gw.client();
    let json_ct = |r: &Reply| {
        assert!(
            r.header("content-type")
                .unwrap_or_default()
                .starts_with("application/json"),
            "{}",
            r.describe()
        )
    };

    let r = send(c.get(gw.admin_url("/healthz"))).await;
    assert_eq!(r.status, 200);
    json_ct(&r);
    assert_eq!(r.json()["status"], "ok");

    let r = send(c.get(gw.admin_url("/readyz"))).await;
    assert_eq!(r.status, 200);
    json_ct(&r);
    let body = r.json();
    assert_eq!(body["status"], "ready", "{body}");
    assert_eq!(body["issuers"]["main"]["ready"], true, "{body}");
    assert_eq!(body["issuers"]["main"]["keys"], 1, "{body}");

    let r = send(c.get(gw.admin_url("/metrics"))).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap_or_default()
            .starts_with("text/plain"),
        "{}",
        r.describe()
    );
    assert!(
        r.text().contains("# TYPE gateway_ready gauge"),
        "{}",
        r.text()
    );

    let r = send(c.get(gw.admin_url("/nope"))).await;
    assert_json_error(&r, 404, "not_found");
    let r = send(c.post(gw.admin_url("/metrics"))).await;
    assert_json_error(&r, 405, "method_not_allowed");
    let r = send(c.get(gw.admin_url("/reload"))).await;
    assert_json_error(&r, 405, "method_not_allowed");
    let r = send(c.delete(gw.admin_url("/healthz"))).await;
    assert_json_error(&r, 405, "method_not_allowed");

    // POST /reload of the unchanged file: accepted and counted.
    let r = gw.reload().await;
    assert_eq!(r.status, 200, "{}", r.describe());
    json_ct(&r);
    assert_eq!(r.json()["status"], "reloaded");
    assert_eq!(reloads(&gw, "ok").await, 1.0);
    let last = gw
        .metric("gateway_config_last_reload_success_timestamp_seconds", &[])
        .await;
    assert!(
        (last - now() as f64).abs() <= 5.0,
        "last reload timestamp {last} is not now"
    );
    // The admin listener is not the data plane.
    assert_eq!(status_of(gw.get("/healthz")).await, 404);
}
