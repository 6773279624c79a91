//! The admin endpoints end to end, against the running binary: `/healthz`, `/readyz`,
//! `/metrics` and `POST /reload` answer with the right status and media type, unknown paths
//! and wrong methods get a JSON error, and the admin listener is not the data plane.

mod common;

use common::*;

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
