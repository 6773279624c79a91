//! The process lifecycle end to end, against the running binary: SIGTERM lets in-flight
//! requests finish, refuses new connections and exits; the pingora zero-downtime upgrade (a
//! second process started with `--upgrade`, then SIGQUIT to the first) hands the listeners
//! over with zero failed requests, also when the identity provider is slow.

mod common;

use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

// ------------------------------------------------------------------------------- fixtures

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
