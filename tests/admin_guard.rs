//! The admin listener answers only requests that name it in `Host`, never a browser page
//! (`Origin`, `Sec-Fetch-Site`), and with `[admin] token` set only its holders, the probes
//! excepted (otherwise DNS rebinding and cross-site POSTs could reload the config and read the
//! metrics).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// The admin token of these tests; long and unlike anything else in the log.
const TOKEN: &str = "adm1n-T0ken-6f1c9e2b7d4a8035";

fn base(li: &LocalIssuer, echo: &EchoUpstream) -> Config {
    Config::basic(li, echo).route(RouteSpec::new("public", "/v1/*", "api").public())
}

/// `method path` on the admin listener with exactly these header lines (each ending `\r\n`).
async fn admin_raw(gw: &TestGateway, method: &str, path: &str, headers: &str) -> RawResponse {
    let req = format!("{method} {path} HTTP/1.1\r\n{headers}Connection: close\r\n\r\n");
    raw_request(gw.admin_addr(), req.as_bytes())
        .await
        .unwrap_or_else(|| panic!("no answer to {method} {path} with {headers:?}"))
}

/// A JSON error answer with this status and `error` code.
fn assert_raw_error(what: &str, r: &RawResponse, status: u16, error: &str) {
    assert_eq!(r.status, status, "{what}: {} {}", r.status, r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{what}: content-type {:?}",
        r.header("content-type")
    );
    let body: serde_json::Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {}", r.text()));
    assert_eq!(body["error"], error, "{what}: {body}");
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{what}: {body}"
    );
}

/// `gateway_config_reloads_total{result="ok"}`, read with a Host and token that are accepted.
async fn reloads_ok(gw: &TestGateway, token: Option<&str>) -> f64 {
    let mut rb = gw.client().get(gw.admin_url("/metrics"));
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    let r = send(rb).await;
    assert_eq!(r.status, 200, "/metrics: {}", r.describe());
    metric_value(
        &r.text(),
        "gateway_config_reloads_total",
        &[("result", "ok")],
    )
}

#[tokio::test]
async fn admin_foreign_host_is_refused_421_and_nothing_is_reloaded() {
    let (li, echo) = (local_issuer().await, echo_upstream().await);
    let gw = TestGateway::start(&base(&li, &echo)).await;
    let port = gw.admin_addr().port();
    // A page at http://evil.example:PORT whose name now resolves to the gateway (DNS
    // rebinding) sends its own name; so does a request with the right IP but another port.
    for host in [
        format!("evil.example:{port}"),
        "evil.example".to_string(),
        format!("127.0.0.1:{}", port.wrapping_add(1)),
        format!("localhost:{}", port.wrapping_add(1)),
    ] {
        let headers = format!("Host: {host}\r\nContent-Length: 0\r\n");
        let r = admin_raw(&gw, "POST", "/reload", &headers).await;
        assert_raw_error(
            &format!("POST /reload, Host {host}"),
            &r,
            421,
            "misdirected_request",
        );
        let r = admin_raw(&gw, "GET", "/metrics", &format!("Host: {host}\r\n")).await;
        assert_raw_error(
            &format!("GET /metrics, Host {host}"),
            &r,
            421,
            "misdirected_request",
        );
        assert!(
            !r.text().contains("gateway_"),
            "metrics leaked: {}",
            r.text()
        );
    }
    assert_eq!(reloads_ok(&gw, None).await, 0.0, "a refused reload ran");
}

#[tokio::test]
async fn admin_own_address_and_localhost_with_its_port_are_accepted_nothing_else() {
    let (li, echo) = (local_issuer().await, echo_upstream().await);
    let gw = TestGateway::start(&base(&li, &echo)).await;
    let port = gw.admin_addr().port();
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        let r = admin_raw(&gw, "GET", "/metrics", &format!("Host: {host}\r\n")).await;
        assert_eq!(r.status, 200, "Host {host}: {}", r.text());
        assert!(
            r.text().contains("# TYPE gateway_ready gauge"),
            "{}",
            r.text()
        );
    }
    let r = admin_raw(
        &gw,
        "POST",
        "/reload",
        &format!("Host: localhost:{port}\r\n"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(reloads_ok(&gw, None).await, 1.0);

    // The same requests naming another server are not.
    let r = admin_raw(&gw, "GET", "/metrics", "Host: 127.0.0.2\r\n").await;
    assert_raw_error("Host without the port", &r, 421, "misdirected_request");
    let r = admin_raw(&gw, "GET", "/metrics", &format!("Host: [::1]:{port}\r\n")).await;
    assert_raw_error(
        "Host [::1] on a 127.0.0.1 listener",
        &r,
        421,
        "misdirected_request",
    );
    // HTTP/1.1 without Host, or with two, is malformed (RFC 9112 §3.2).
    let r = admin_raw(&gw, "GET", "/metrics", "").await;
    assert_raw_error("no Host", &r, 400, "invalid_request");
    // Two Host headers: 400, or pingora closes the connection before the app sees them.
    let two = format!(
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nHost: evil.example:{port}\r\n\r\n"
    );
    if let Some(r) = raw_request(gw.admin_addr(), two.as_bytes()).await {
        assert_raw_error("two Host headers", &r, 400, "invalid_request");
    }
    // An absolute-form target names the server too (pingora already drops a connection whose
    // Host differs from it; here both name the other server).
    let target = format!("http://evil.example:{port}/metrics");
    let r = admin_raw(
        &gw,
        "GET",
        &target,
        &format!("Host: evil.example:{port}\r\n"),
    )
    .await;
    assert_raw_error("absolute-form target", &r, 421, "misdirected_request");
    let target = format!("http://127.0.0.1:{port}/metrics");
    let r = admin_raw(&gw, "GET", &target, &format!("Host: 127.0.0.1:{port}\r\n")).await;
    assert_eq!(
        r.status,
        200,
        "absolute-form naming the listener: {}",
        r.text()
    );
}

#[tokio::test]
async fn admin_allowed_hosts_names_are_accepted() {
    let (li, echo) = (local_issuer().await, echo_upstream().await);
    let mut cfg = base(&li, &echo);
    cfg.admin.set(
        "allowed_hosts",
        serde_json::json!(["gw-admin.internal", "metrics.example:9999"]),
    );
    let gw = TestGateway::start(&cfg).await;
    let port = gw.admin_addr().port();
    for host in [
        format!("gw-admin.internal:{port}"),
        "GW-Admin.Internal".to_string(),
        "metrics.example:9999".to_string(),
    ] {
        let r = admin_raw(&gw, "GET", "/metrics", &format!("Host: {host}\r\n")).await;
        assert_eq!(r.status, 200, "Host {host}: {}", r.text());
    }
    for host in [
        format!("metrics.example:{port}"),
        format!("other.internal:{port}"),
        format!("admin.gw-admin.internal:{port}"),
    ] {
        let r = admin_raw(&gw, "GET", "/metrics", &format!("Host: {host}\r\n")).await;
        assert_raw_error(&format!("Host {host}"), &r, 421, "misdirected_request");
    }
}

#[tokio::test]
async fn admin_requests_from_browsers_are_refused_403() {
    let (li, echo) = (local_issuer().await, echo_upstream().await);
    let gw = TestGateway::start(&base(&li, &echo)).await;
    let c = gw.client();
    // A cross-site form POST (text/plain body) and a fetch() read of the metrics.
    let form = c
        .post(gw.admin_url("/reload"))
        .header("origin", "http://evil.example")
        .header("content-type", "text/plain")
        .body("x");
    let r = send(form).await;
    assert_json_error(&r, 403, "forbidden");
    // Pages of other origins (another port of the same host is another origin, and the
    // same site): refused. Only the admin console's own page (same origin) may call.
    let other_port = format!("http://127.0.0.1:{}", gw.addr().port());
    for (name, value) in [
        ("origin", "http://evil.example"),
        ("origin", "null"),
        ("origin", other_port.as_str()),
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
    ] {
        let r = send(c.get(gw.admin_url("/metrics")).header(name, value)).await;
        let body = assert_json_error(&r, 403, "forbidden");
        assert!(!r.text().contains("gateway_"), "{name}: {value}: {body}");
        let r = send(c.post(gw.admin_url("/reload")).header(name, value)).await;
        assert_json_error(&r, 403, "forbidden");
    }
    // The console's own fetch: same origin.
    let r = send(
        c.get(gw.admin_url("/metrics"))
            .header("origin", format!("http://{}", gw.admin_addr()))
            .header("sec-fetch-site", "same-origin"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.describe());
    // Typed into the address bar: Sec-Fetch-Site none, no Origin.
    let r = send(
        c.get(gw.admin_url("/metrics"))
            .header("sec-fetch-site", "none"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(reloads_ok(&gw, None).await, 0.0, "a refused reload ran");
}

#[tokio::test]
async fn admin_reload_with_a_body_is_refused_400() {
    let (li, echo) = (local_issuer().await, echo_upstream().await);
    let gw = TestGateway::start(&base(&li, &echo)).await;
    let c = gw.client();
    let r = send(
        c.post(gw.admin_url("/reload"))
            .header("content-type", "text/plain")
            .body("reload=1"),
    )
    .await;
    assert_json_error(&r, 400, "invalid_request");
    assert_eq!(reloads_ok(&gw, None).await, 0.0, "a refused reload ran");
    // No body, or an empty one: reloaded.
    assert_eq!(send(c.post(gw.admin_url("/reload"))).await.status, 200);
    assert_eq!(
        send(c.post(gw.admin_url("/reload")).body("")).await.status,
        200
    );
    assert_eq!(reloads_ok(&gw, None).await, 2.0);
}

fn with_token(li: &LocalIssuer, echo: &EchoUpstream) -> Config {
    let mut cfg = base(li, echo).env("ADMIN_TOKEN", TOKEN);
    cfg.admin.set("token", "${ADMIN_TOKEN}");
    cfg
}

#[tokio::test]
async fn admin_token_is_required_when_configured() {
    let (li, echo) = (local_issuer().await, echo_upstream().await);
    let gw = TestGateway::start(&with_token(&li, &echo)).await;
    let c = gw.client();
    for (method, path) in [("GET", "/metrics"), ("POST", "/reload"), ("GET", "/nope")] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let url = gw.admin_url(path);
        let r = send(c.request(m.clone(), &url)).await;
        assert_json_error(&r, 401, "invalid_request");
        assert_eq!(
            r.header("www-authenticate").as_deref(),
            Some("Bearer realm=\"admin\""),
            "{method} {path} without a token"
        );
        let r = send(c.request(m.clone(), &url).basic_auth("admin", Some(TOKEN))).await;
        assert_eq!(
            r.status,
            401,
            "{method} {path} with Basic: {}",
            r.describe()
        );
        let wrong = format!("{TOKEN}x");
        let r = send(c.request(m.clone(), &url).bearer_auth(&wrong)).await;
        assert_json_error(&r, 401, "invalid_token");
        assert!(
            r.header("www-authenticate")
                .is_some_and(|v| v.starts_with("Bearer realm=\"admin\", error=\"invalid_token\"")),
            "{}",
            r.describe()
        );
        let r = send(c.request(m, &url).bearer_auth(&TOKEN[..TOKEN.len() - 1])).await;
        assert_json_error(&r, 401, "invalid_token");
    }
    assert_eq!(
        reloads_ok(&gw, Some(TOKEN)).await,
        0.0,
        "a refused reload ran"
    );
    let r = send(c.post(gw.admin_url("/reload")).bearer_auth(TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(reloads_ok(&gw, Some(TOKEN)).await, 1.0);
    // The token does not lift the other checks.
    let r = send(
        c.post(gw.admin_url("/reload"))
            .bearer_auth(TOKEN)
            .header("origin", "http://evil.example"),
    )
    .await;
    assert_json_error(&r, 403, "forbidden");
}

#[tokio::test]
async fn admin_probes_need_no_token_and_the_docker_healthcheck_passes() {
    let (li, echo) = (local_issuer().await, echo_upstream().await);
    let gw = TestGateway::start(&with_token(&li, &echo)).await;
    let c = gw.client();
    let r = send(c.get(gw.admin_url("/metrics"))).await;
    assert_eq!(r.status, 401, "the token is configured: {}", r.describe());
    for path in ["/healthz", "/readyz"] {
        let r = send(c.get(gw.admin_url(path))).await;
        assert_eq!(r.status, 200, "{path}: {}", r.describe());
    }
    // kubelet: Host is podIP:port, the connection's local address.
    let port = gw.admin_addr().port();
    let r = admin_raw(
        &gw,
        "GET",
        "/readyz",
        &format!("Host: 127.0.0.1:{port}\r\nUser-Agent: kube-probe/1.31\r\n"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The image's HEALTHCHECK script, against the real listener.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/docker-healthcheck.sh");
    let out = Command::new("bash")
        .arg(script)
        .env("GATEWAY_ADMIN_PORT", port.to_string())
        .output()
        .expect("run bash deploy/docker-healthcheck.sh");
    assert!(
        out.status.success(),
        "healthcheck failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn admin_token_never_appears_in_logs_or_check_output() {
    let (li, echo) = (local_issuer().await, echo_upstream().await);
    let cfg = with_token(&li, &echo)
        .log_level("debug")
        .env("RUST_LOG", "trace");
    let mut gw = TestGateway::start(&cfg).await;
    let c = gw.client().clone();
    let wrong = format!("{TOKEN}x");
    for token in [TOKEN, wrong.as_str()] {
        send(c.get(gw.admin_url("/metrics")).bearer_auth(token)).await;
        send(c.post(gw.admin_url("/reload")).bearer_auth(token)).await;
        send(
            c.get(gw.admin_url("/metrics"))
                .bearer_auth(token)
                .header("origin", "http://evil.example"),
        )
        .await;
        admin_raw(
            &gw,
            "GET",
            "/metrics",
            &format!("Host: evil.example\r\nAuthorization: Bearer {token}\r\n"),
        )
        .await;
    }
    // A reload that refuses the file (token too short) and one of a file that is fine.
    let mut bad = cfg.clone();
    bad.admin.set("token", "tooShortS3cr");
    gw.rewrite_config(&bad);
    let r = send(c.post(gw.admin_url("/reload")).bearer_auth(TOKEN)).await;
    assert_eq!(r.status, 422, "{}", r.describe());
    assert!(r.text().contains("admin.token"), "{}", r.text());
    assert!(!r.text().contains("tooShortS3cr"), "{}", r.text());
    gw.rewrite_config(&cfg);
    let r = send(c.post(gw.admin_url("/reload")).bearer_auth(TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert!(
        gw.wait_for_log("config reloaded", Duration::from_secs(5))
            .await,
        "{}",
        gw.logs()
    );

    let log = gw.logs();
    assert!(
        log.contains("admin request refused"),
        "refusals are logged:\n{log}"
    );
    for secret in [TOKEN, wrong.as_str(), "tooShortS3cr"] {
        assert!(!log.contains(secret), "log contains {secret:?}:\n{log}");
    }

    // `check` on a file with a bad token names the key, never the value.
    let (status, out, err) = run_bin(
        &["check", "--config", gw.config_path().to_str().unwrap()],
        &[("ADMIN_TOKEN", "tooShortS3cr")],
        Duration::from_secs(30),
    );
    assert!(!status.success(), "{out}{err}");
    assert!(format!("{out}{err}").contains("admin.token"), "{out}{err}");
    assert!(
        !format!("{out}{err}").contains("tooShortS3cr"),
        "{out}{err}"
    );
}
