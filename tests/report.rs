//! Report-only rollout end to end, against the running binary: on a `mode = "report"` route
//! what authentication or scopes would refuse is forwarded (an invalid token without any
//! `X-Auth-*` identity, a valid one with its identity), and so is what a `report_only` limit
//! would refuse; each is counted in `gateway_report_only_denials_total{route,reason}` and
//! logged with `would_deny`. Request-shape refusals stay enforced. Switching the route to
//! enforce is a reload that fails no valid request under load. The route-table runner
//! (`wetrials-gateway test`) forwards the same cases and checks `expect.would_deny`.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Routes:
/// - `rollout` `/v1/rollout/*` needs `read:studies`, in `mode` (report or enforce);
/// - `enforced` `/v1/enforced/*` needs `read:studies` (enforced);
/// - `quota` `/v1/quota/*` public, 1 per minute per ip report-only, 100 enforced.
fn report_config(li: &LocalIssuer, echo: &EchoUpstream, mode: &str) -> Config {
    let mut quota = RouteSpec::new("quota", "/v1/quota/*", "api")
        .public()
        .rate_limit(1, "1m", &["ip"])
        .rate_limit(100, "1m", &["ip"]);
    quota.rate_limits[0].set("report_only", true);
    Config::basic(li, echo)
        .route(
            RouteSpec::new("rollout", "/v1/rollout/*", "api")
                .scopes(&["read:studies"])
                .set("mode", mode),
        )
        .route(RouteSpec::new("enforced", "/v1/enforced/*", "api").scopes(&["read:studies"]))
        .route(quota)
}

fn x_auth_headers(echo: &Value) -> Vec<String> {
    echo["headers"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("x-auth-"))
        .cloned()
        .collect()
}

async fn denials(gw: &TestGateway, route: &str, reason: &str) -> f64 {
    gw.metric(
        "gateway_report_only_denials_total",
        &[("route", route), ("reason", reason)],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_mode_forwards_would_be_denials_and_counts_and_logs_them() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let gw = TestGateway::start(&report_config(&li, &echo, "report")).await;
    let tag = random_hex();
    let rid = |what: &str| format!("{what}-{}", &tag[..12]);
    let get = |path: &str, what: &str| gw.get(path).header("x-request-id", rid(what));

    // No token, and a client's own identity header: forwarded, with no identity at all.
    let r = send(get("/v1/rollout/a", "missing").header("x-auth-subject", "admin")).await;
    let e = r.echo();
    assert!(x_auth_headers(&e).is_empty(), "{e}");
    // Invalid tokens: forwarded without identity headers.
    for (what, t) in [
        ("expired", expired_token(&li)),
        ("badsig", bad_signature_token(&li)),
    ] {
        let r = send(get("/v1/rollout/a", what).bearer_auth(&t)).await;
        let e = r.echo();
        assert!(x_auth_headers(&e).is_empty(), "{what}: {e}");
    }
    // A valid token without the scope: forwarded with its identity.
    let reader = token(&li, "u-profile", "read:profile");
    let e = send(get("/v1/rollout/a", "scope").bearer_auth(&reader))
        .await
        .echo();
    assert_eq!(e["headers"]["x-auth-subject"], "u-profile", "{e}");
    assert_eq!(e["headers"]["x-auth-scopes"], "read:profile", "{e}");
    // A valid token with the scope: nothing to report.
    let ok = token(&li, "u-ok", "read:studies");
    send(get("/v1/rollout/a", "ok").bearer_auth(&ok))
        .await
        .echo();
    // The enforced route refuses what the report-mode route forwards.
    assert_invalid_token(
        &send(get("/v1/enforced/a", "enforced").bearer_auth(expired_token(&li))).await,
    );
    // Request shape is enforced in report mode too.
    let r = send(get("/v1/rollout/a%2Fb", "shape")).await;
    assert_json_error(&r, 400, "invalid_request");
    // A report-only limit: the second request in the minute is forwarded, and the headers
    // say what the limiter says.
    send(get("/v1/quota/a", "quota1")).await.echo();
    let r = send(get("/v1/quota/a", "quota2")).await;
    r.echo();
    assert_eq!(r.header("ratelimit-remaining").as_deref(), Some("0"));

    assert_eq!(echo.hits(), 7, "every would-be denial reached the upstream");
    for (route, reason, n) in [
        ("rollout", "missing", 1.0),
        ("rollout", "expired", 1.0),
        ("rollout", "bad_signature", 1.0),
        ("rollout", "insufficient_scope", 1.0),
        ("quota", "rate_limited", 1.0),
    ] {
        assert_eq!(
            denials(&gw, route, reason).await,
            n,
            "{route} {reason}:\n{}",
            gw.metrics().await
        );
    }
    let metrics = gw.metrics().await;
    assert!(
        !metrics
            .contains(r#"gateway_report_only_denials_total{reason="expired",route="enforced"}"#),
        "{metrics}"
    );
    assert!(
        !metrics.contains(r#"gateway_report_only_denials_total{reason="encoded_slash""#),
        "{metrics}"
    );
    assert_eq!(
        gw.metric(
            "gateway_rejections_total",
            &[("route", "rollout"), ("reason", "encoded_slash")]
        )
        .await,
        1.0
    );

    // One access line per request, `would_deny` naming the reason (or "-").
    let wanted = 9;
    assert!(
        eventually(Duration::from_secs(5), || async {
            access_lines(&gw.logs()).len() >= wanted
        })
        .await,
        "{}",
        gw.logs()
    );
    let lines = access_lines(&gw.logs());
    let line = |what: &str| -> Value {
        lines
            .iter()
            .find(|l| l["request_id"] == rid(what))
            .cloned()
            .unwrap_or_else(|| panic!("no access line for {what}:\n{}", gw.logs()))
    };
    for (what, status, would_deny, auth) in [
        ("missing", 200, "missing", "missing"),
        ("expired", 200, "expired", "expired"),
        ("badsig", 200, "bad_signature", "bad_signature"),
        ("scope", 200, "insufficient_scope", "insufficient_scope"),
        ("ok", 200, "-", "ok"),
        ("enforced", 401, "-", "expired"),
        ("shape", 400, "-", "-"),
        ("quota1", 200, "-", "public"),
        ("quota2", 200, "rate_limited", "public"),
    ] {
        let l = line(what);
        assert_eq!(l["status"], status, "{what}: {l}");
        assert_eq!(l["would_deny"], would_deny, "{what}: {l}");
        assert_eq!(l["auth"], auth, "{what}: {l}");
        if status == 200 {
            assert_eq!(l["outcome"], "forwarded", "{what}: {l}");
        }
    }
    assert_eq!(line("scope")["subject"], "u-profile");
    assert_eq!(line("expired")["subject"], "-");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_report_to_enforce_by_reload_under_load_fails_no_valid_request() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let report = report_config(&li, &echo, "report");
    let mut gw = TestGateway::start(&report).await;
    let valid = token(&li, "loader", "read:studies");
    let expired = expired_token(&li);
    let reader = token(&li, "u-profile", "read:profile");
    assert_eq!(
        gw.get_with_token("/v1/rollout/x", &expired).await.status,
        200
    );
    assert_eq!(
        gw.get_with_token("/v1/rollout/x", &reader).await.status,
        200
    );

    let stop = Arc::new(AtomicBool::new(false));
    let load = spawn_load(
        gw.url("/v1/rollout/load"),
        Some(valid.clone()),
        4,
        false,
        stop.clone(),
        Duration::from_secs(8),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // report -> enforce with POST /reload.
    gw.rewrite_config(&report_config(&li, &echo, "enforce"));
    let r = gw.reload().await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.json()["status"], "reloaded");
    assert_invalid_token(&gw.get_with_token("/v1/rollout/x", &expired).await);
    assert_insufficient_scope(
        &gw.get_with_token("/v1/rollout/x", &reader).await,
        "read:studies",
    );
    assert_missing_token(&send(gw.get("/v1/rollout/x")).await);
    // Enforced refusals are rejections, not report-only denials.
    assert_eq!(
        gw.metric(
            "gateway_rejections_total",
            &[("route", "rollout"), ("reason", "expired")]
        )
        .await,
        1.0
    );
    assert_eq!(denials(&gw, "rollout", "expired").await, 1.0);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // And back to report with SIGHUP: a rollback is a reload too.
    gw.rewrite_config(&report);
    gw.signal("HUP");
    let back = eventually(Duration::from_secs(3), || async {
        gw.get_with_token("/v1/rollout/x", &expired).await.status == 200
    })
    .await;
    assert!(
        back,
        "SIGHUP did not apply report mode; log:\n{}",
        gw.logs()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    stop.store(true, Ordering::SeqCst);
    let load = load.await.expect("load task");
    assert!(
        load.ok >= 100,
        "too few requests under load to mean anything: {load:?}"
    );
    assert_eq!(
        load.failed, 0,
        "requests failed during the switch ({} ok): {:?}",
        load.ok, load.samples
    );
    // Back in report mode, the expired token that showed it was counted as a denial again.
    assert_eq!(denials(&gw, "rollout", "expired").await, 2.0);
    assert_eq!(reloads(&gw, "ok").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_forwarded_in_report_mode_is_stripped_where_its_issuer_strips_tokens() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let mut cfg = report_config(&li, &echo, "report");
    cfg.issuers[0].keys.set("strip_authorization", true);
    let gw = TestGateway::start(&cfg).await;
    for t in [
        expired_token(&li),
        bad_signature_token(&li),
        token(&li, "u1", "read:profile"),
        token(&li, "u1", "read:studies"),
    ] {
        let e = gw.get_with_token("/v1/rollout/a", &t).await.echo();
        assert!(e["headers"].get("authorization").is_none(), "{e}");
    }
    // Without the issuer's strip_authorization, the upstream gets the header as sent.
    let gw = TestGateway::start(&report_config(&li, &echo, "report")).await;
    let t = expired_token(&li);
    let e = gw.get_with_token("/v1/rollout/a", &t).await.echo();
    assert_eq!(e["headers"]["authorization"], format!("Bearer {t}"), "{e}");
}

fn shipped(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(name)
        .to_str()
        .unwrap()
        .to_string()
}

#[test]
fn the_route_table_runner_forwards_report_mode_denials_and_checks_would_deny() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(shipped("gateway.toml")).unwrap();
    assert!(text.contains("name = \"studies-write\"\n"));
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        text.replace(
            "name = \"studies-write\"\n",
            "name = \"studies-write\"\nmode = \"report\"\n",
        ),
    )
    .unwrap();
    let cases = dir.path().join("cases.toml");
    std::fs::write(
        &cases,
        r#"
[[case]]
name = "a reader's write is forwarded in report mode, with its identity"
request = { method = "POST", path = "/v1/studies/42" }
token = { sub = "u1", scope = "read:studies" }
expect = { status = 200, route = "studies-write", would_deny = "insufficient_scope", headers = { "x-auth-subject" = "u1" } }

[[case]]
name = "an expired token is forwarded without identity"
request = { method = "POST", path = "/v1/studies/42" }
token = { sub = "u1", scope = "write:studies", exp = "-5m" }
expect = { status = 200, would_deny = "expired", headers = { "x-auth-subject" = "" } }

[[case]]
name = "a writer has nothing to report"
request = { method = "POST", path = "/v1/studies/42" }
token = { sub = "u1", scope = "write:studies" }
expect = { status = 200, would_deny = "none" }

[[case]]
name = "wrong on purpose"
request = { method = "POST", path = "/v1/studies/42" }
expect = { status = 200, would_deny = "expired" }
"#,
    )
    .unwrap();
    let (status, out, err) = run_bin(
        &[
            "test",
            "--config",
            cfg.to_str().unwrap(),
            cases.to_str().unwrap(),
        ],
        &[],
        Duration::from_secs(60),
    );
    assert_eq!(status.code(), Some(1), "{out}\n{err}");
    assert!(out.contains("FAIL  wrong on purpose"), "{out}");
    assert!(
        out.contains(r#"would_deny: expected "expired", got "missing""#),
        "{out}"
    );
    assert!(
        out.contains("report    would refuse 401 (missing)"),
        "{out}"
    );
    assert!(out.trim_end().ends_with("3 passed, 1 failed"), "{out}");
    // The shipped config enforces every route: the same case is a 403 there.
    std::fs::write(
        &cases,
        r#"
[[case]]
name = "enforced"
request = { method = "POST", path = "/v1/studies/42" }
token = { sub = "u1", scope = "read:studies" }
expect = { status = 403, would_deny = "none" }
"#,
    )
    .unwrap();
    let (status, out, err) = run_bin(
        &[
            "test",
            "--config",
            &shipped("gateway.toml"),
            cases.to_str().unwrap(),
        ],
        &[],
        Duration::from_secs(60),
    );
    assert_eq!(status.code(), Some(0), "{out}\n{err}");
}
