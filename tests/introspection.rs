//! RFC 7662 introspection against a real authorization server (node oidc-provider,
//! tests/authz): opaque tokens are accepted with the scopes and identity the server reports,
//! revoked ones stop working once the cached answer expires, an unreachable or refusing
//! endpoint is 503 (never fail open, never a logged secret), many requests with one new token
//! make one call, and `introspect = true` routes ask the server about valid JWTs too.

mod common;

use std::time::Duration;

use common::*;

const SECRET_ENV: &str = "INTROSPECTION_SECRET";

/// Issuer "authz" = the oidc-provider (its JWKS for JWT tokens, its introspection endpoint
/// with the gateway's client), upstream "api" on `echo`, routes:
/// - `/v1/studies/*` needs `read:studies`,
/// - `/v1/admin/*` needs `admin:studies`,
/// - `/v1/sensitive/*` needs `read:studies` and introspects every token (`introspect = true`).
fn config(authz: &AuthServer, echo: &EchoUpstream, cache_secs: u64) -> Config {
    Config::new()
        .issuer(
            IssuerSpec::new("authz", &authz.issuer())
                .audiences(&[AUDIENCE, JWT_RESOURCE])
                .jwks_uri(&authz.jwks_uri())
                .set("introspection_endpoint", authz.introspection_endpoint())
                .set("introspection_client_id", GATEWAY.0)
                .set("introspection_client_secret", format!("${{{SECRET_ENV}}}"))
                .set("introspection_cache_secs", cache_secs),
        )
        .env(SECRET_ENV, GATEWAY.1)
        .upstream(UpstreamSpec::echo("api", echo))
        .route(RouteSpec::new("studies", "/v1/studies/*", "api").scopes(&["read:studies"]))
        .route(RouteSpec::new("admin", "/v1/admin/*", "api").scopes(&["admin:studies"]))
        .route(
            RouteSpec::new("sensitive", "/v1/sensitive/*", "api")
                .scopes(&["read:studies"])
                .set("introspect", true),
        )
}

async fn calls(gw: &TestGateway, result: &str) -> f64 {
    gw.metric(
        "gateway_introspection_requests_total",
        &[("issuer", "authz"), ("result", result)],
    )
    .await
}

async fn cache(gw: &TestGateway, result: &str) -> f64 {
    gw.metric(
        "gateway_introspection_cache_total",
        &[("issuer", "authz"), ("result", result)],
    )
    .await
}

#[tokio::test]
async fn opaque_token_is_accepted_with_its_scopes_and_identity_and_scopes_are_checked_every_time() {
    let authz = AuthServer::start().await;
    let echo = echo_upstream().await;
    let gw = TestGateway::start(&config(&authz, &echo, 60)).await;
    let token = authz.client_credentials_token("read:studies").await;
    assert!(!token.contains('.'), "expected an opaque token");

    let echoed = gw.get_with_token("/v1/studies/1", &token).await.echo();
    assert_eq!(echoed["headers"]["x-auth-client-id"], "app");
    assert_eq!(echoed["headers"]["x-auth-scopes"], "read:studies");

    // The same token again, and on a route it lacks the scope for: the cached answer serves
    // both, and the route's scopes are still checked.
    gw.get_with_token("/v1/studies/2", &token).await.echo();
    let r = gw.get_with_token("/v1/admin/1", &token).await;
    assert_insufficient_scope(&r, "admin:studies");
    assert_eq!(echo.hits(), 2);
    assert_eq!(calls(&gw, "active").await, 1.0);
    assert_eq!(cache(&gw, "miss").await, 1.0);
    assert_eq!(cache(&gw, "hit").await, 2.0);
}

#[tokio::test]
async fn revoked_token_is_refused_once_the_cached_answer_expires() {
    let authz = AuthServer::start().await;
    let echo = echo_upstream().await;
    // client_secret_post this time, and a short positive cache.
    let mut cfg = config(&authz, &echo, 3).env(SECRET_ENV, GATEWAY_POST.1);
    cfg.issuers[0]
        .keys
        .set("introspection_client_id", GATEWAY_POST.0);
    cfg.issuers[0]
        .keys
        .set("introspection_auth", "client_secret_post");
    let gw = TestGateway::start(&cfg).await;
    let token = authz.client_credentials_token("read:studies").await;

    assert_eq!(gw.get_with_token("/v1/studies/1", &token).await.status, 200);
    authz.revoke(&token).await;
    assert_eq!(authz.introspect(&token).await["active"], false);
    // Still within the cached answer's lifetime (3 s): served from the cache.
    assert_eq!(gw.get_with_token("/v1/studies/1", &token).await.status, 200);
    let refused = eventually(Duration::from_secs(10), || async {
        gw.get_with_token("/v1/studies/1", &token).await.status == 401
    })
    .await;
    assert!(refused, "a revoked token kept working");
    let hits = echo.hits();
    let r = gw.get_with_token("/v1/studies/1", &token).await;
    assert!(assert_invalid_token(&r).contains("not active"));
    assert_eq!(echo.hits(), hits, "a refused request reached the upstream");
    // The refusal is cached briefly too: one call said `active: false`.
    assert_eq!(calls(&gw, "inactive").await, 1.0);
}

#[tokio::test]
async fn unreachable_introspection_endpoint_is_503_never_admitted() {
    let authz = AuthServer::start().await;
    let echo = echo_upstream().await;
    let dead = DeadPort::new();
    let mut cfg = config(&authz, &echo, 60);
    cfg.issuers[0].keys.set(
        "introspection_endpoint",
        format!("http://{}/token/introspection", dead.peer()),
    );
    cfg.issuers[0].keys.set("introspection_timeout_ms", 500);
    let gw = TestGateway::start(&cfg).await;
    let token = authz.client_credentials_token("read:studies").await;

    for _ in 0..2 {
        let r = gw.get_with_token("/v1/studies/1", &token).await;
        assert_json_error(&r, 503, "temporarily_unavailable");
        assert!(r.header("www-authenticate").is_none(), "{}", r.describe());
    }
    assert_eq!(echo.hits(), 0);
    // Failures are not cached: each request tried again.
    assert_eq!(calls(&gw, "error").await, 2.0);
}

#[tokio::test]
async fn wrong_client_secret_is_503_and_neither_secret_nor_token_is_logged() {
    let authz = AuthServer::start().await;
    let echo = echo_upstream().await;
    let wrong = "not-the-gateway-secret-4f1c";
    let cfg = config(&authz, &echo, 60)
        .env(SECRET_ENV, wrong)
        .log_level("debug");
    let gw = TestGateway::start(&cfg).await;
    let token = authz.client_credentials_token("read:studies").await;

    let r = gw.get_with_token("/v1/studies/1", &token).await;
    assert_json_error(&r, 503, "temporarily_unavailable");
    assert_eq!(echo.hits(), 0);
    assert_eq!(calls(&gw, "error").await, 1.0);
    assert!(
        gw.wait_for_log("token introspection failed", Duration::from_secs(5))
            .await,
        "{}",
        gw.logs()
    );
    let logs = gw.logs();
    assert!(logs.contains("http status 401"), "{logs}");
    assert!(!logs.contains(wrong), "the client secret was logged");
    assert!(!logs.contains(&token), "the token was logged");
}

#[tokio::test]
async fn many_concurrent_requests_with_one_new_token_make_one_introspection_call() {
    let authz = AuthServer::start().await;
    let echo = echo_upstream().await;
    let gw = TestGateway::start(&config(&authz, &echo, 60)).await;
    let token = authz.client_credentials_token("read:studies").await;

    const N: usize = 32;
    let mut tasks = Vec::new();
    for i in 0..N {
        let req = gw
            .get(&format!("/v1/studies/{i}"))
            .bearer_auth(token.clone());
        tasks.push(tokio::spawn(async move { send(req).await.status }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("request task"), 200);
    }
    assert_eq!(calls(&gw, "active").await, 1.0);
    assert_eq!(cache(&gw, "miss").await, 1.0);
    assert_eq!(cache(&gw, "hit").await, (N - 1) as f64);
}

/// oidc-provider refuses to introspect (and to revoke) its own JWT access tokens
/// ("Structured JWT Tokens cannot be introspected", 400), so a revoked JWT cannot be made
/// here; what this shows is that an `introspect = true` route does not admit a valid JWT on
/// its signature alone: the server's refusal to vouch for it is a 503, while the same JWT
/// passes on a route without `introspect`.
#[tokio::test]
async fn introspect_route_asks_the_server_about_a_valid_jwt() {
    let authz = AuthServer::start().await;
    let echo = echo_upstream().await;
    let gw = TestGateway::start(&config(&authz, &echo, 60)).await;
    let jwt = authz.client_credentials_jwt("read:studies").await;
    assert_eq!(jwt.split('.').count(), 3, "expected a JWT");

    let echoed = gw.get_with_token("/v1/studies/1", &jwt).await.echo();
    assert_eq!(echoed["headers"]["x-auth-client-id"], "app");
    assert_eq!(calls(&gw, "error").await, 0.0);

    let r = gw.get_with_token("/v1/sensitive/1", &jwt).await;
    assert_json_error(&r, 503, "temporarily_unavailable");
    assert_eq!(calls(&gw, "error").await, 1.0);
    assert_eq!(echo.hits(), 1);

    // An opaque token on the same route: introspected once, as always.
    let token = authz.client_credentials_token("read:studies").await;
    gw.get_with_token("/v1/sensitive/1", &token).await.echo();
    assert_eq!(calls(&gw, "active").await, 1.0);
}

#[test]
fn check_reports_introspection_problems_without_printing_the_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gateway.toml");
    let secret = "s3cr3t-value-never-printed";
    std::fs::write(
        &path,
        format!(
            r#"
[[issuers]]
name = "a"
issuer = "https://a"
audiences = ["x"]
jwks_uri = "https://a/jwks"
introspection_endpoint = "https://a/introspect"
introspection_client_id = "gw"
introspection_client_secret = "{secret}"
introspection_auth = "private_key_jwt"
introspection_negative_cache_secs = 600

[[issuers]]
name = "b"
issuer = "https://b"
audiences = ["x"]
jwks_uri = "https://b/jwks"
introspection_endpoint = "ftp://b/introspect"
introspection_client_id = "gw"

[[issuers]]
name = "c"
issuer = "https://c"
audiences = ["x"]
jwks_uri = "https://c/jwks"
introspection_cache_secs = 5

[[upstreams]]
name = "api"
peers = ["127.0.0.1:9"]

[[routes]]
name = "all"
path = "/*"
upstream = "api"
introspect = true
"#
        ),
    )
    .expect("write config");
    let (status, out, err) = run_bin(
        &["check", "--config", path.to_str().expect("utf-8 path")],
        &[],
        Duration::from_secs(20),
    );
    assert!(!status.success());
    let text = format!("{out}{err}");
    for needle in [
        "issuers[0] \"a\".introspection_auth",
        "issuers[0] \"a\".introspection_negative_cache_secs",
        "issuers[1] \"b\".introspection_endpoint",
        "issuers[1] \"b\".introspection_client_secret",
        "issuers[2] \"c\".introspection_cache_secs: has no effect without introspection_endpoint",
        "routes[0] \"all\".introspect: issuer \"c\"",
        "routes[0] \"all\": accepts more than one issuer with an introspection_endpoint",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(!text.contains(secret), "the secret was printed:\n{text}");
}
