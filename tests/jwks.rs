//! JWKS end to end: readiness waits for keys, rotation, the unknown-`kid` refetch throttle,
//! failures after start (the last good set survives), the refresh schedule (`max-age`
//! within bounds), key removal, file and discovery sources, and every supported key type.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn routes(cfg: Config) -> Config {
    cfg.route(RouteSpec::new("public", "/v1/public/*", "api").public())
        .route(RouteSpec::new("api", "/v1/*", "api"))
}

async fn start(
    li: &LocalIssuer,
    echo: &EchoUpstream,
    issuer: impl FnOnce(IssuerSpec) -> IssuerSpec,
) -> TestGateway {
    TestGateway::start(&routes(
        Config::new()
            .issuer(issuer(IssuerSpec::local("main", li)))
            .upstream(UpstreamSpec::echo("api", echo)),
    ))
    .await
}

fn claims(li: &LocalIssuer) -> Value {
    li.claims("user-1", "read:studies", 3600)
}

async fn jwks_errors(gw: &TestGateway) -> f64 {
    gw.metric(
        "gateway_jwks_fetches_total",
        &[("issuer", "main"), ("result", "error")],
    )
    .await
}

// ------------------------------------------------------------------ readiness

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_jwks_fails_then_200_after_recovery() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    li.set_failing(true);
    let mut gw = TestGateway::start_unready(&routes(
        Config::new()
            .issuer(IssuerSpec::local("main", &li))
            .upstream(UpstreamSpec::echo("api", &echo)),
    ))
    .await;
    assert!(
        eventually(Duration::from_secs(5), || async { li.fetch_count() >= 1 }).await,
        "no JWKS fetch attempted"
    );
    let r = send(gw.client().get(gw.admin_url("/readyz"))).await;
    assert_eq!(r.status, 503, "{}", r.describe());
    assert_eq!(r.json()["status"], "not_ready");

    // A jwt request meanwhile: a clean 503 JSON, not a 401 and not a proxy error page.
    let t = token(&li, "user-1", "read:studies");
    let r = gw.get_with_token("/v1/studies/1", &t).await;
    assert_json_error(&r, 503, "temporarily_unavailable");
    assert!(r.header("retry-after").is_some(), "{}", r.describe());
    assert_eq!(echo.hits(), 0, "nothing forwarded while keys are missing");
    // Without a token it is still the missing-token answer.
    assert_missing_token(&send(gw.get("/v1/studies/1")).await);

    li.set_failing(false);
    gw.wait_ready().await;
    assert_eq!(gw.readyz().await, 200);
    let r = gw.get_with_token("/v1/studies/1", &t).await;
    assert_eq!(r.status, 200, "{}", r.describe());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_every_issuer() {
    let good = local_issuer().await;
    let bad = local_issuer().await;
    let echo = echo_upstream().await;
    bad.set_failing(true);
    let mut gw = TestGateway::start_unready(&routes(
        Config::new()
            .issuer(IssuerSpec::local("good", &good))
            .issuer(IssuerSpec::local("bad", &bad))
            .upstream(UpstreamSpec::echo("api", &echo)),
    ))
    .await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            good.fetch_count() >= 1 && bad.fetch_count() >= 1
        })
        .await
    );
    assert_eq!(gw.readyz().await, 503);
    bad.set_failing(false);
    gw.wait_ready().await;
    assert_eq!(
        gw.get_with_token("/v1/x", &token(&bad, "b", ""))
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_without_usable_keys_keeps_gateway_unready() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let only_bogus = json!({"keys": [
        {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
        {"kty": "RSA", "kid": "short", "n": "AQAB", "e": "AQAB"},
    ]});
    std::fs::write(&path, only_bogus.to_string()).unwrap();
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let gw = TestGateway::start_unready(&routes(
        Config::new()
            .issuer(IssuerSpec::local("main", &li).jwks_uri(path.to_str().unwrap()))
            .upstream(UpstreamSpec::echo("api", &echo)),
    ))
    .await;
    assert!(gw.wait_for_log("jwks", Duration::from_secs(5)).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gw.readyz().await, 503);
    // An HMAC key in the set is never used, whatever the token says.
    let hs = hs256(
        &json!({"alg": "HS256", "kid": "h"}),
        &claims(&li),
        b"secret",
    );
    let r = gw.get_with_token("/v1/x", &hs).await;
    assert!(r.status == 401 || r.status == 503, "{}", r.describe());
    assert_eq!(echo.hits(), 0);
}

// ------------------------------------------------------------------ rotation and unknown kids

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_new_kid_is_accepted_without_restart() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let gw = start(&li, &echo, |i| i.set("unknown_kid_cooldown_secs", 1)).await;
    let fetched = li.fetch_count();
    // Let the start-up fetch leave the cooldown.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    li.add_key("rsa-2", KeyAlg::RS256).unwrap();
    let t = li.mint_with("rsa-2", json!({}), &claims(&li));
    let r = gw.get_with_token("/v1/x", &t).await;
    assert_eq!(r.status, 200, "new kid after rotation: {}", r.describe());
    assert_eq!(
        li.fetch_count(),
        fetched + 1,
        "exactly one refetch for the new kid"
    );
    // The old key still works; the new one keeps working without more fetches.
    assert_eq!(
        gw.get_with_token("/v1/x", &token(&li, "u", ""))
            .await
            .status,
        200
    );
    let t2 = li.mint_with("rsa-2", json!({}), &li.claims("user-2", "", 3600));
    assert_eq!(gw.get_with_token("/v1/x", &t2).await.status, 200);
    assert_eq!(li.fetch_count(), fetched + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kid_flood_causes_at_most_two_jwks_fetches() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let gw = start(&li, &echo, |i| i.set("unknown_kid_cooldown_secs", 3)).await;
    // Out of the start-up cooldown, so the flood may trigger its one refetch.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let before = li.fetch_count();
    let c = claims(&li);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..200 {
        // Real signatures by the real key, under kids nobody publishes.
        let t = li.mint_with("rsa-1", json!({"kid": format!("flood-{i}-{}", now())}), &c);
        let url = gw.url("/v1/x");
        let client = gw.client().clone();
        set.spawn(async move { send(client.get(url).bearer_auth(t)).await });
    }
    let start = std::time::Instant::now();
    while let Some(r) = set.join_next().await {
        let r = r.expect("task");
        assert_invalid_token(&r);
    }
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "flood took {:?} (beyond the cooldown)",
        start.elapsed()
    );
    let grew = li.fetch_count() - before;
    assert!(grew <= 2, "200 unknown kids caused {grew} JWKS fetches");
    assert_eq!(echo.hits(), 0);
    // Known keys are unaffected.
    assert_eq!(gw.get_with_token("/v1/x", &li.mint(&c)).await.status, 200);
}

// ------------------------------------------------------------------ failures after start

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_endpoint_down_after_start_keeps_known_keys() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let gw = start(&li, &echo, |i| {
        i.set("jwks_refresh_secs", 1)
            .set("jwks_min_refresh_secs", 1)
    })
    .await;
    let errors = jwks_errors(&gw).await;
    li.set_failing(true);
    let seen = li.fetch_count();
    assert!(
        eventually(Duration::from_secs(5), || async { li.fetch_count() > seen }).await,
        "no refresh attempted"
    );
    assert!(
        eventually(Duration::from_secs(3), || async {
            jwks_errors(&gw).await > errors
        })
        .await,
        "failed refresh not counted"
    );
    // Fresh tokens (not in the verified-token cache) still verify with the kept keys.
    for i in 0..3 {
        let t = li.mint(&li.claims(&format!("user-{i}"), "", 3600));
        assert_eq!(gw.get_with_token("/v1/x", &t).await.status, 200);
    }
    assert_eq!(gw.readyz().await, 200, "readiness never closes again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_garbage_after_start_keeps_known_keys_and_counts_errors() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let gw = start(&li, &echo, |i| {
        i.set("jwks_refresh_secs", 1)
            .set("jwks_min_refresh_secs", 1)
    })
    .await;
    let errors = jwks_errors(&gw).await;
    li.set_garbage(true);
    assert!(
        eventually(Duration::from_secs(5), || async {
            jwks_errors(&gw).await > errors
        })
        .await,
        "gateway_jwks_fetches_total{{result=\"error\"}} did not grow:\n{}",
        gw.metrics().await
    );
    for i in 0..3 {
        let t = li.mint(&li.claims(&format!("user-{i}"), "", 3600));
        assert_eq!(gw.get_with_token("/v1/x", &t).await.status, 200);
    }
    assert!(gw.metric("gateway_jwks_keys", &[("issuer", "main")]).await >= 1.0);
    assert_eq!(gw.readyz().await, 200);
}

// ------------------------------------------------------------------ refresh schedule

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_max_age_within_bounds_drives_refresh() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    li.set_max_age(Some(1));
    let gw = start(&li, &echo, |i| i.set("jwks_min_refresh_secs", 1)).await;
    let before = li.fetch_count();
    tokio::time::sleep(Duration::from_millis(3300)).await;
    let grew = li.fetch_count() - before;
    assert!(
        (2..=5).contains(&grew),
        "max-age=1: {grew} refreshes in 3.3 s"
    );
    assert_eq!(gw.readyz().await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_max_age_below_minimum_is_clamped() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    li.set_max_age(Some(1));
    // jwks_min_refresh_secs defaults to 30: max-age=1 must not mean a fetch a second.
    let gw = start(&li, &echo, |i| i).await;
    let before = li.fetch_count();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(
        li.fetch_count(),
        before,
        "max-age below the minimum was not clamped"
    );
    assert_eq!(gw.readyz().await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_without_max_age_uses_refresh_interval() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let gw = start(&li, &echo, |i| {
        i.set("jwks_refresh_secs", 300)
            .set("jwks_min_refresh_secs", 1)
    })
    .await;
    let before = li.fetch_count();
    assert_eq!(before, 1, "one start-up fetch");
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(li.fetch_count(), before, "refetched without reason");
    let _ = gw;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_max_age_above_maximum_is_clamped() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    li.set_max_age(Some(3600));
    let gw = start(&li, &echo, |i| {
        i.set("jwks_min_refresh_secs", 1)
            .set("jwks_max_refresh_secs", 1)
    })
    .await;
    let before = li.fetch_count();
    tokio::time::sleep(Duration::from_millis(3300)).await;
    let grew = li.fetch_count() - before;
    assert!(
        (2..=5).contains(&grew),
        "max-age=3600 with a 1 s maximum: {grew} refreshes in 3.3 s"
    );
    assert_eq!(gw.readyz().await, 200);
}

// ------------------------------------------------------------------ key removal

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_key_tokens_are_rejected_after_refresh_even_if_cached() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    li.add_key("rsa-2", KeyAlg::RS256).unwrap();
    let gw = start(&li, &echo, |i| {
        i.set("jwks_refresh_secs", 1)
            .set("jwks_min_refresh_secs", 1)
    })
    .await;
    let doomed = li.mint_with("rsa-2", json!({}), &claims(&li));
    let doomed_no_kid = li.mint_with(
        "rsa-2",
        json!({"kid": null}),
        &li.claims("user-9", "", 3600),
    );
    let kept = li.mint_with("rsa-1", json!({}), &claims(&li));
    for t in [&doomed, &doomed_no_kid, &kept] {
        // Twice: the second answer comes from the verified-token cache.
        assert_eq!(gw.get_with_token("/v1/x", t).await.status, 200);
        assert_eq!(gw.get_with_token("/v1/x", t).await.status, 200);
    }
    li.remove_key("rsa-2");
    let seen = li.fetch_count();
    assert!(
        eventually(Duration::from_secs(5), || async { li.fetch_count() > seen }).await,
        "no refresh"
    );
    let rejected = eventually(Duration::from_secs(3), || async {
        gw.get_with_token("/v1/x", &doomed).await.status == 401
    })
    .await;
    assert!(
        rejected,
        "a removed key's cached token is still accepted after the refresh"
    );
    assert_invalid_token(&gw.get_with_token("/v1/x", &doomed).await);
    assert_invalid_token(&gw.get_with_token("/v1/x", &doomed_no_kid).await);
    assert_eq!(
        gw.get_with_token("/v1/x", &kept).await.status,
        200,
        "the remaining key is unaffected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_key_material_under_same_kid_invalidates_cached_tokens() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let gw = start(&li, &echo, |i| {
        i.set("jwks_refresh_secs", 1)
            .set("jwks_min_refresh_secs", 1)
    })
    .await;
    let old = li.mint(&claims(&li));
    assert_eq!(gw.get_with_token("/v1/x", &old).await.status, 200);
    assert_eq!(gw.get_with_token("/v1/x", &old).await.status, 200); // cached
                                                                    // Same kid, new key pair.
    li.remove_key("rsa-1");
    li.add_key("rsa-1", KeyAlg::RS256).unwrap();
    let new = li.mint(&li.claims("user-2", "", 3600));
    let switched = eventually(Duration::from_secs(5), || async {
        gw.get_with_token("/v1/x", &new).await.status == 200
    })
    .await;
    assert!(
        switched,
        "the new key material under the same kid was never picked up"
    );
    assert_invalid_token(&gw.get_with_token("/v1/x", &old).await);
}

// ------------------------------------------------------------------ sources

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_uri_absolute_file_path_is_loaded() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, li.jwks().to_string()).unwrap();
    let gw = start(&li, &echo, |i| i.jwks_uri(path.to_str().unwrap())).await;
    assert_eq!(
        gw.get_with_token("/v1/x", &token(&li, "u", ""))
            .await
            .status,
        200
    );
    assert_eq!(li.fetch_count(), 0, "the file was used, not the URL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_url_is_followed_to_jwks() {
    let li = LocalIssuer::start(Some("https://auth.example.test"), AUDIENCE)
        .await
        .unwrap();
    let echo = echo_upstream().await;
    let gw = start(&li, &echo, |i| i.discovery_url(&li.discovery_url())).await;
    assert!(
        li.fetch_count() >= 1,
        "the JWKS named by the discovery document was fetched"
    );
    let r = gw.get_with_token("/v1/x", &token(&li, "disco", "")).await;
    assert_eq!(r.echo()["headers"]["x-auth-subject"], "disco");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_ps256_eddsa_keys_are_verified_200() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    li.add_key("ec-1", KeyAlg::ES256).unwrap();
    li.add_key("ps-1", KeyAlg::PS256).unwrap();
    li.add_key("ed-1", KeyAlg::EdDSA).unwrap();
    let gw = start(&li, &echo, |i| {
        i.algorithms(&["RS256", "ES256", "PS256", "EdDSA"])
    })
    .await;
    let c = claims(&li);
    for kid in ["rsa-1", "ec-1", "ps-1", "ed-1"] {
        let t = li.mint_with(kid, json!({}), &c);
        let r = gw.get_with_token("/v1/x", &t).await;
        assert_eq!(r.status, 200, "{kid}: {}", r.describe());
        let t = li.mint_with(
            kid,
            json!({"kid": null}),
            &li.claims(&format!("{kid}-nokid"), "", 3600),
        );
        assert_eq!(
            gw.get_with_token("/v1/x", &t).await.status,
            200,
            "{kid} without kid"
        );
        // A signature by this key, with a byte flipped, fails.
        let mut p = token_parts(&li.mint_with(kid, json!({}), &li.claims("flip", "", 3600)));
        let mut sig = b64url_decode(&p[2]);
        sig[5] ^= 0x01;
        p[2] = b64url(&sig);
        assert_invalid_token(&gw.get_with_token("/v1/x", &p.join(".")).await);
    }
    // RS256 signed with the PS256 key (whose JWK says PS256): refused.
    let t = li.mint_with("ps-1", json!({"alg": "RS256"}), &c);
    assert_invalid_token(&gw.get_with_token("/v1/x", &t).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_keys_in_set_are_skipped_without_failing_set() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let mut set = li.jwks();
    let keys = set["keys"].as_array_mut().unwrap();
    let good = keys[0].clone();
    let bogus = [
        json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}),
        json!({"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"}),
        json!({"kty": "RSA", "kid": "tiny", "n": "AQAB", "e": "AQAB"}),
        json!({"kty": "RSA", "kid": "enc", "use": "enc", "n": good["n"], "e": "AQAB"}),
        json!({"kty": "OKP", "kid": "x25519", "crv": "X25519", "x": "AAAA"}),
        json!({"kty": "RSA", "kid": "badalg", "alg": "RS999", "n": good["n"], "e": "AQAB"}),
        json!({"kty": "XYZ", "kid": "what"}),
        json!({"no": "kty"}),
        json!("not an object"),
    ];
    keys.splice(0..0, bogus);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, set.to_string()).unwrap();
    let gw = start(&li, &echo, |i| i.jwks_uri(path.to_str().unwrap())).await;
    assert_eq!(
        gw.get_with_token("/v1/x", &token(&li, "u", ""))
            .await
            .status,
        200
    );
    assert_eq!(
        gw.metric("gateway_jwks_keys", &[("issuer", "main")]).await,
        1.0
    );
    assert!(
        gw.logs().contains("skipping jwk"),
        "skipped keys are not logged:\n{}",
        gw.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_is_accepted_whatever_its_json_media_type() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    for ct in [
        "application/json",
        "application/json; charset=utf-8",
        "application/jwk-set+json",
    ] {
        let addr = fixed_http_server(ct, li.jwks().to_string(), Duration::ZERO).await;
        let gw = start(&li, &echo, |i| i.jwks_uri(&format!("http://{addr}/keys"))).await;
        assert_eq!(
            gw.get_with_token("/v1/x", &token(&li, "u", ""))
                .await
                .status,
            200,
            "{ct}"
        );
    }
}
