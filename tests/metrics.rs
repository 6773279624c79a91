//! The Prometheus metrics end to end, against the running binary: values move as requests
//! flow, labels stay bounded (no paths, subjects, client ids or tokens), `promtool check
//! metrics` passes, every metric the alert rules and the dashboard use is exported, and the
//! in-flight gauge returns to zero.
//!
//! `promtool` comes from the Debian package `prometheus`, which `make test` installs; a missing
//! promtool fails the test that needs it.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;

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
