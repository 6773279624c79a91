//! TLS end to end: the data listener with `[server.tls]` (a self-signed certificate made with
//! the `openssl` CLI for 127.0.0.1 / localhost), `check` on a missing certificate file, and
//! upstream TLS (`tls = true`, `sni`, `verify_cert`) through a second gateway that terminates
//! TLS in front of the echo upstream.
//!
//! pingora's rustls connector cannot be given an extra trust anchor from the gateway config,
//! so the upstream that forwards uses `verify_cert = false`; with `verify_cert = true` the
//! self-signed certificate must be refused (502).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::json;

/// A self-signed certificate for `localhost` and 127.0.0.1 in `dir`: (cert.pem, key.pem).
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    self_signed_cert(dir).unwrap_or_else(|e| panic!("{e}"))
}

/// `[server.tls]` with these files.
fn with_tls(cfg: Config, cert: &Path, key: &Path) -> Config {
    cfg.server_set(
        "tls",
        json!({
            "cert_path": cert.display().to_string(),
            "key_path": key.display().to_string(),
        }),
    )
}

/// A reqwest client that trusts only `cert` (rustls).
fn https_client(cert: &Path) -> reqwest::Client {
    let pem = std::fs::read(cert).expect("read cert.pem");
    reqwest::Client::builder()
        .no_proxy()
        .timeout(HTTP_TIMEOUT)
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).expect("PEM certificate")])
        .build()
        .expect("https client")
}

fn routes(cfg: Config) -> Config {
    cfg.route(
        RouteSpec::new("studies", "/v1/studies/{id}", "api")
            .methods(&["GET"])
            .scopes(&["read:studies"]),
    )
    .route(RouteSpec::new("public", "/v1/public/*", "api").public())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_tls_routes_are_served_on_the_tls_listener() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let certs = tempfile::tempdir().expect("tempdir");
    let (cert, key) = self_signed(certs.path());
    let cfg = Config::basic(&li, &echo)
        .server_set("require_tls", true)
        .route(RouteSpec::new("public", "/v1/public/*", "api").public());
    let gw = TestGateway::start(&with_tls(cfg, &cert, &key)).await;
    let r = send(https_client(&cert).get(format!(
        "https://127.0.0.1:{}/v1/public/x",
        gw.addr().port()
    )))
    .await;
    assert_eq!(r.echo()["headers"]["x-forwarded-proto"], "https");
    // The server default applies to every route: plain HTTP on a second, plain gateway is refused.
    let plain = TestGateway::start(
        &Config::basic(&li, &echo)
            .server_set("require_tls", true)
            .route(RouteSpec::new("public", "/v1/public/*", "api").public()),
    )
    .await;
    assert_json_error(
        &send(plain.get("/v1/public/x")).await,
        403,
        "invalid_request",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_serves_jwt_route_over_https_and_forwards_proto_https() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let certs = tempfile::tempdir().expect("tempdir");
    let (cert, key) = self_signed(certs.path());
    let gw = TestGateway::start(&with_tls(routes(Config::basic(&li, &echo)), &cert, &key)).await;
    let https = https_client(&cert);
    let url = |path: &str| format!("https://127.0.0.1:{}{path}", gw.addr().port());

    let tok = token(&li, "tls-user", "read:studies");
    let r = send(https.get(url("/v1/studies/1")).bearer_auth(&tok)).await;
    let echoed = r.echo();
    assert_eq!(echoed["headers"]["x-forwarded-proto"], "https", "{echoed}");
    assert_eq!(echoed["headers"]["x-auth-subject"], "tls-user", "{echoed}");
    assert_eq!(echoed["path"], "/v1/studies/1");

    // The same name the certificate carries as DNS: also accepted.
    let by_name = reqwest::Client::builder()
        .no_proxy()
        .timeout(HTTP_TIMEOUT)
        .resolve("localhost", gw.addr())
        .tls_certs_only([
            reqwest::Certificate::from_pem(&std::fs::read(&cert).expect("cert")).expect("PEM"),
        ])
        .build()
        .expect("client");
    let r = send(
        by_name
            .get(format!(
                "https://localhost:{}/v1/studies/2",
                gw.addr().port()
            ))
            .bearer_auth(&tok),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.describe());

    assert_missing_token(&send(https.get(url("/v1/studies/1"))).await);
    let hits = echo.hits();
    assert_eq!(hits, 2, "the 401 did not reach the upstream");

    // Plain HTTP on the TLS port is not served.
    let plain = raw_request_timeout(
        gw.addr(),
        b"GET /v1/public/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(
        plain.as_ref().is_none_or(|r| r.status >= 400),
        "plain HTTP served on the TLS listener: {plain:?}"
    );
    assert_eq!(echo.hits(), hits);
    // A client that does not trust the certificate fails the handshake.
    let untrusting = reqwest::Client::builder()
        .no_proxy()
        .timeout(HTTP_TIMEOUT)
        .tls_certs_only([])
        .build()
        .expect("client");
    assert!(untrusting.get(url("/v1/public/x")).send().await.is_err());
}

#[test]
fn tls_check_with_missing_cert_path_reports_server_tls_cert_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, key) = self_signed(dir.path());
    let missing = dir.path().join("no-such-cert.pem");
    let cfg = with_tls(Config::new(), &missing, &key)
        .route(RouteSpec::new("public", "/v1/*", "api").public());
    let cfg = cfg.upstream(UpstreamSpec::new("api", &["127.0.0.1:9".to_string()]));
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, cfg.render(free_addr(), free_addr(), dir.path())).expect("write");
    let (status, stdout, stderr) = run_bin(
        &["check", "--config", path.to_str().expect("utf-8")],
        &[],
        Duration::from_secs(10),
    );
    assert!(
        !status.success(),
        "check accepted a missing cert: {stdout}{stderr}"
    );
    let all = format!("{stdout}{stderr}");
    assert!(all.contains("server.tls.cert_path"), "{all}");
    assert!(
        all.contains("no-such-cert.pem"),
        "the problem names the file: {all}"
    );
    assert!(
        !all.contains("server.tls.key_path"),
        "the key exists, only the cert is reported: {all}"
    );

    // With both files present the same config passes.
    let (cert, key) = self_signed(dir.path());
    let ok = with_tls(Config::new(), &cert, &key)
        .route(RouteSpec::new("public", "/v1/*", "api").public())
        .upstream(UpstreamSpec::new("api", &["127.0.0.1:9".to_string()]));
    std::fs::write(&path, ok.render(free_addr(), free_addr(), dir.path())).expect("write");
    let (status, stdout, stderr) = run_bin(
        &["check", "--config", path.to_str().expect("utf-8")],
        &[],
        Duration::from_secs(10),
    );
    assert!(status.success(), "{stdout}{stderr}");
}

/// Gateway B terminates TLS in front of the echo upstream; gateway A forwards to B over TLS.
struct TwoHops {
    _certs: tempfile::TempDir,
    echo: EchoUpstream,
    li: LocalIssuer,
    front: TestGateway,
    _back: TestGateway,
}

async fn two_hops(verify_cert: bool) -> TwoHops {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let certs = tempfile::tempdir().expect("tempdir");
    let (cert, key) = self_signed(certs.path());
    let back = TestGateway::start(&with_tls(
        Config::new()
            .upstream(UpstreamSpec::echo("api", &echo))
            .route(RouteSpec::new("all", "/v1/*", "api").public()),
        &cert,
        &key,
    ))
    .await;
    let front = TestGateway::start(
        &Config::new()
            .issuer(IssuerSpec::local("main", &li))
            .upstream(
                UpstreamSpec::new("backtls", &[back.addr().to_string()])
                    .set("tls", true)
                    .set("sni", "localhost")
                    .set("verify_cert", verify_cert),
            )
            .route(
                RouteSpec::new("studies", "/v1/studies/{id}", "backtls").scopes(&["read:studies"]),
            ),
    )
    .await;
    TwoHops {
        _certs: certs,
        echo,
        li,
        front,
        _back: back,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_upstream_without_verification_carries_the_request_through_both_gateways() {
    let t = two_hops(false).await;
    let tok = token(&t.li, "hop-user", "read:studies");
    let r = t.front.get_with_token("/v1/studies/5", &tok).await;
    let echoed = r.echo();
    assert_eq!(echoed["path"], "/v1/studies/5", "{echoed}");
    // Set by the TLS gateway (B) from what it terminated.
    assert_eq!(echoed["headers"]["x-forwarded-proto"], "https", "{echoed}");
    // B is a gateway too: it strips the X-Auth-* headers A set (its route is public).
    assert!(echoed["headers"]["x-auth-subject"].is_null(), "{echoed}");
    let xff = echoed["headers"]["x-forwarded-for"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        xff.split(',').count(),
        2,
        "two hops appended to X-Forwarded-For: {xff:?}"
    );
    assert_eq!(t.echo.hits(), 1);
    // Several requests reuse the upstream TLS connection without trouble.
    for i in 0..5 {
        let r = t
            .front
            .get_with_token(&format!("/v1/studies/{i}"), &tok)
            .await;
        assert_eq!(r.status, 200, "{}", r.describe());
    }
    assert_eq!(t.echo.hits(), 6);
    assert_eq!(
        t.front
            .metric("gateway_upstream_errors_total", &[("upstream", "backtls")])
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_upstream_with_verify_cert_refuses_an_untrusted_certificate_502() {
    let t = two_hops(true).await;
    let tok = token(&t.li, "hop-user", "read:studies");
    let r = t.front.get_with_token("/v1/studies/5", &tok).await;
    assert_json_error(&r, 502, "bad_gateway");
    assert_eq!(t.echo.hits(), 0, "nothing reached the upstream");
}
