//! Authentication end to end: the real gateway, a real JWKS issuer, a real echo upstream.
//!
//! Every row of the README's "HTTP behaviour" table about tokens (status, the exact
//! `WWW-Authenticate` form, the JSON body) and the token attacks the README lists; each
//! rejection is also checked not to have reached the upstream.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Routes used by most tests:
/// - `studies` `GET /v1/studies/{id}` needs `read:studies`;
/// - `both` `/v1/both/*` needs `read:studies` and `read:participants`;
/// - `reports` `/v1/reports/*` needs one of `admin:read`, `read:studies`;
/// - `any` `/v1/any/*` any valid token;
/// - `public` `/v1/public/*` no token.
fn routes(cfg: Config) -> Config {
    cfg.route(
        RouteSpec::new("studies", "/v1/studies/{id}", "api")
            .methods(&["GET"])
            .scopes(&["read:studies"]),
    )
    .route(
        RouteSpec::new("both", "/v1/both/*", "api").scopes(&["read:studies", "read:participants"]),
    )
    .route(
        RouteSpec::new("reports", "/v1/reports/*", "api")
            .any_scopes(&["admin:read", "read:studies"]),
    )
    .route(RouteSpec::new("any", "/v1/any/*", "api"))
    .route(RouteSpec::new("public", "/v1/public/*", "api").public())
}

struct Env {
    issuer: LocalIssuer,
    echo: EchoUpstream,
    gw: TestGateway,
}

impl Env {
    async fn start() -> Env {
        Self::start_with(|c| c, |i| i).await
    }

    /// `issuer` adjusts the issuer entry, `cfg` the whole config (routes are added first).
    async fn start_with(
        cfg: impl FnOnce(Config) -> Config,
        issuer: impl FnOnce(IssuerSpec) -> IssuerSpec,
    ) -> Env {
        let li = local_issuer().await;
        Self::start_on(li, cfg, issuer).await
    }

    async fn start_on(
        li: LocalIssuer,
        cfg: impl FnOnce(Config) -> Config,
        issuer: impl FnOnce(IssuerSpec) -> IssuerSpec,
    ) -> Env {
        let echo = echo_upstream().await;
        let c = Config::new()
            .issuer(issuer(IssuerSpec::local("main", &li)))
            .upstream(UpstreamSpec::echo("api", &echo));
        let gw = TestGateway::start(&cfg(routes(c))).await;
        Env {
            issuer: li,
            echo,
            gw,
        }
    }

    fn good(&self, scope: &str) -> String {
        token(&self.issuer, "user-1", scope)
    }

    /// `GET path` with the raw `Authorization` value; asserts the upstream was not reached
    /// unless the answer is 200.
    async fn get_auth(&self, path: &str, authorization: &str) -> Reply {
        let before = self.echo.hits();
        let r = send(self.gw.get(path).header("authorization", authorization)).await;
        if r.status != 200 {
            assert_eq!(
                self.echo.hits(),
                before,
                "a rejected request reached the upstream: {}",
                r.describe()
            );
        }
        r
    }

    /// `GET path` with `Bearer token`, same upstream check; the answer never echoes the token.
    async fn get_token(&self, path: &str, token: &str) -> Reply {
        let r = self.get_auth(path, &format!("Bearer {token}")).await;
        if r.status != 200 {
            assert!(
                !r.text().contains(token),
                "the answer echoes the token: {}",
                r.describe()
            );
            for v in r.headers.values() {
                assert!(
                    !String::from_utf8_lossy(v.as_bytes()).contains(token),
                    "a header echoes the token"
                );
            }
        }
        r
    }

    /// Expect 401 invalid_token for `token` on the unscoped route.
    async fn rejects(&self, token: &str, what: &str) -> String {
        let r = self.get_token("/v1/any/x", token).await;
        assert_eq!(
            r.status,
            401,
            "{what}: expected 401, got:\n{}",
            r.describe()
        );
        assert_invalid_token(&r)
    }

    async fn accepts(&self, token: &str, what: &str) -> Value {
        let r = self.get_token("/v1/any/x", token).await;
        assert_eq!(
            r.status,
            200,
            "{what}: expected 200, got:\n{}",
            r.describe()
        );
        r.json()
    }

    fn claims(&self) -> Value {
        self.issuer.claims("user-1", "read:studies", 3600)
    }
}

// ------------------------------------------------------------------ the HTTP table

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_token_with_scope_is_forwarded_200_with_identity_headers() {
    let env = Env::start().await;
    let t = env.good("read:studies read:profile");
    let before = env.echo.hits();
    let r = env.get_token("/v1/studies/42", &t).await;
    let echo = r.echo();
    assert_eq!(env.echo.hits(), before + 1);
    assert_eq!(echo["path"], "/v1/studies/42");
    assert_eq!(echo["headers"]["x-auth-subject"], "user-1");
    assert_eq!(echo["headers"]["x-auth-client-id"], "demo-client");
    assert_eq!(
        echo["headers"]["x-auth-scopes"],
        "read:studies read:profile"
    );
    assert_eq!(
        echo["headers"]["authorization"],
        format!("Bearer {t}"),
        "Authorization is forwarded by default"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_token_on_jwt_route_is_rejected_401_without_error_attribute() {
    let env = Env::start().await;
    let before = env.echo.hits();
    let r = send(env.gw.get("/v1/studies/1")).await;
    assert_missing_token(&r);
    assert_eq!(
        r.header("www-authenticate").unwrap(),
        format!("Bearer realm=\"{REALM}\"")
    );
    assert_eq!(env.echo.hits(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_scheme_is_401_without_error_and_bad_bearer_is_400() {
    // RFC 6750 §3.1: a request in another authentication scheme carries no bearer
    // credentials, so it gets the bare challenge; a malformed Bearer one is invalid_request.
    let env = Env::start().await;
    let before = env.echo.hits();
    for other in [
        "Basic dXNlcjpwYXNz",
        "Digest username=\"x\"",
        "Token abc",
        // `DPoP …` is such a scheme only where DPoP is off (tests/dpop.rs); by default it is read.
        "Bearerabc.def.ghi",
    ] {
        let r = env.get_auth("/v1/studies/1", other).await;
        assert_missing_token(&r);
        assert_eq!(
            r.header("www-authenticate").unwrap(),
            format!("Bearer realm=\"{REALM}\""),
            "{other}"
        );
    }
    for bad in ["Bearer", "Bearer ", "Bearer a b"] {
        let r = env.get_auth("/v1/studies/1", bad).await;
        assert_invalid_request(&r);
    }
    assert_eq!(env.echo.hits(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_authorization_headers_are_rejected_400_invalid_request() {
    let env = Env::start().await;
    let t = env.good("read:studies");
    let before = env.echo.hits();
    let r = send(
        env.gw
            .get("/v1/studies/1")
            .header("authorization", format!("Bearer {t}"))
            .header("authorization", format!("Bearer {t}")),
    )
    .await;
    assert_invalid_request(&r);
    assert_eq!(env.echo.hits(), before);
    // A good token beside a bad one is no better.
    let r = send(
        env.gw
            .get("/v1/studies/1")
            .header("authorization", format!("Bearer {t}"))
            .header("authorization", "Basic dXNlcjpwYXNz"),
    )
    .await;
    assert_invalid_request(&r);
    assert_eq!(env.echo.hits(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_scheme_is_case_insensitive_200() {
    let env = Env::start().await;
    let t = env.good("read:studies");
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let r = env
            .get_auth("/v1/studies/1", &format!("{scheme} {t}"))
            .await;
        assert_eq!(r.status, 200, "{scheme}: {}", r.describe());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_scope_is_rejected_403_insufficient_scope() {
    let env = Env::start().await;
    let r = env
        .get_token("/v1/studies/1", &env.good("read:profile"))
        .await;
    assert_insufficient_scope(&r, "read:studies");
    // All listed scopes are required; the challenge names them all.
    let r = env.get_token("/v1/both/1", &env.good("read:studies")).await;
    assert_insufficient_scope(&r, "read:studies read:participants");
    let r = env
        .get_token("/v1/both/1", &env.good("read:participants read:studies"))
        .await;
    assert_eq!(r.status, 200, "{}", r.describe());
    // A scope that merely starts like the required one does not count.
    let r = env
        .get_token("/v1/studies/1", &env.good("read:studies2 read:studie"))
        .await;
    assert_insufficient_scope(&r, "read:studies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_scopes_route_needs_one_of_them() {
    let env = Env::start().await;
    for ok in ["admin:read", "read:studies", "x admin:read y"] {
        let r = env.get_token("/v1/reports/q", &env.good(ok)).await;
        assert_eq!(r.status, 200, "{ok}: {}", r.describe());
    }
    let r = env
        .get_token("/v1/reports/q", &env.good("read:profile"))
        .await;
    assert_insufficient_scope(&r, "admin:read read:studies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scp_claim_as_array_or_string_grants_scopes_200() {
    let env = Env::start().await;
    let base = patch(env.claims(), json!({"scope": null}));
    let arr = env.issuer.mint(&patch(
        base.clone(),
        json!({"scp": ["read:profile", "read:studies"]}),
    ));
    let r = env.get_token("/v1/studies/1", &arr).await;
    assert_eq!(r.status, 200, "scp array: {}", r.describe());
    assert_eq!(
        r.json()["headers"]["x-auth-scopes"],
        "read:profile read:studies"
    );
    let s = env.issuer.mint(&patch(
        base.clone(),
        json!({"scp": "read:profile read:studies"}),
    ));
    let r = env.get_token("/v1/studies/1", &s).await;
    assert_eq!(r.status, 200, "scp string: {}", r.describe());
    let without = env
        .issuer
        .mint(&patch(base, json!({"scp": ["read:profile"]})));
    let r = env.get_token("/v1/studies/1", &without).await;
    assert_insufficient_scope(&r, "read:studies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_without_scope_claim_is_rejected_403_on_scoped_route() {
    let env = Env::start().await;
    let t = env
        .issuer
        .mint(&patch(env.claims(), json!({"scope": null})));
    let r = env.get_token("/v1/studies/1", &t).await;
    assert_insufficient_scope(&r, "read:studies");
    // ... and is a valid token where no scope is required.
    let r = env.get_token("/v1/any/1", &t).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.json()["headers"]["x-auth-scopes"], "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_exceeded_is_rejected_429_with_retry_after() {
    let env = Env::start_with(
        |c| {
            let mut c = c;
            c.routes.insert(
                0,
                RouteSpec::new("limited", "/v1/limited", "api")
                    .public()
                    .rate_limit(2, "1m", &["ip"]),
            );
            c
        },
        |i| i,
    )
    .await;
    for i in 0..2 {
        let r = send(env.gw.get("/v1/limited")).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.describe());
    }
    let before = env.echo.hits();
    let r = send(env.gw.get("/v1/limited")).await;
    assert_json_error(&r, 429, "rate_limit_exceeded");
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    for h in ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"] {
        assert!(r.header(h).is_some(), "{h} missing: {}", r.describe());
    }
    assert_eq!(env.echo.hits(), before);
}

// ------------------------------------------------------------------ malformed tokens

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_token_is_rejected_401_invalid_token() {
    let env = Env::start().await;
    for t in ["garbage", "abc.def.ghi", "eyJhbGciOiJSUzI1NiJ9", "a.b.c"] {
        env.rejects(t, t).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_with_two_or_four_segments_is_rejected_401() {
    let env = Env::start().await;
    let good = env.good("read:studies");
    let p = token_parts(&good);
    env.rejects(&format!("{}.{}", p[0], p[1]), "two segments")
        .await;
    env.rejects(&format!("{good}.{}", p[2]), "four segments")
        .await;
    env.rejects(
        &format!("{}.{}.{}.{}.{}", p[0], p[1], p[2], p[1], p[2]),
        "five segments (JWE shape)",
    )
    .await;
    env.rejects(&format!(".{}.{}", p[1], p[2]), "empty header")
        .await;
    env.rejects(&format!("{}..{}", p[0], p[2]), "empty payload")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_with_bad_base64_is_rejected_401() {
    let env = Env::start().await;
    let good = env.good("read:studies");
    let p = token_parts(&good);
    // Characters a b64token allows but base64url does not; and an impossible length.
    env.rejects(&format!("{}+.{}.{}", p[0], p[1], p[2]), "'+' in header")
        .await;
    env.rejects(&format!("{}.{}/.{}", p[0], p[1], p[2]), "'/' in payload")
        .await;
    env.rejects(&format!("{}.{}.{}~", p[0], p[1], p[2]), "'~' in signature")
        .await;
    env.rejects(
        &format!("{}.{}A.{}", p[0], p[1], p[2]),
        "payload of length 1 mod 4",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_with_non_object_json_is_rejected_401() {
    let env = Env::start().await;
    let sig = b"signature";
    let header = json!({"alg": "RS256", "kid": "rsa-1"});
    env.rejects(&compose(&header, &json!([1, 2, 3]), sig), "array payload")
        .await;
    env.rejects(
        &compose(&json!(["RS256"]), &env.claims(), sig),
        "array header",
    )
    .await;
    let not_json = format!(
        "{}.{}.{}",
        b64url(b"{not json"),
        b64url(env.claims().to_string().as_bytes()),
        b64url(sig)
    );
    env.rejects(&not_json, "header not JSON").await;
    let not_json = format!(
        "{}.{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(b"\"just a string\""),
        b64url(sig)
    );
    env.rejects(&not_json, "payload a JSON string").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_authorization_header_is_rejected_400_and_gateway_survives() {
    let env = Env::start().await;
    let big = format!("Bearer {}", "a".repeat(20 * 1024));
    let r = env.get_auth("/v1/studies/1", &big).await;
    assert_invalid_request(&r);

    let before = env.echo.hits();
    let huge = format!(
        "Bearer {}.{}.{}",
        "a".repeat(100 * 1024),
        "b".repeat(50 * 1024),
        "c".repeat(50 * 1024)
    );
    match env
        .gw
        .get("/v1/studies/1")
        .header("authorization", huge)
        .send()
        .await
    {
        Ok(r) => assert!(
            r.status().as_u16() < 500,
            "200 KB Authorization: {}",
            r.status()
        ),
        Err(e) => assert!(!e.is_timeout(), "200 KB Authorization: gateway hung: {e}"),
    }
    assert_eq!(env.echo.hits(), before);
    // Still up and serving.
    let r = env
        .get_token("/v1/studies/1", &env.good("read:studies"))
        .await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(env.gw.readyz().await, 200);
}

// ------------------------------------------------------------------ attacks

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alg_none_token_is_rejected_401() {
    let env = Env::start().await;
    let claims = env.claims();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let h = json!({"alg": alg, "typ": "JWT", "kid": "rsa-1"});
        env.rejects(
            &format!(
                "{}.{}.",
                b64url(h.to_string().as_bytes()),
                b64url(claims.to_string().as_bytes())
            ),
            alg,
        )
        .await;
        env.rejects(
            &compose(&h, &claims, b"sig"),
            &format!("{alg} with a signature"),
        )
        .await;
        let no_kid = json!({"alg": alg});
        env.rejects(
            &compose(&no_kid, &claims, b""),
            &format!("{alg} without kid"),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_signed_with_rsa_public_key_is_rejected_401() {
    let env = Env::start().await;
    let claims = env.claims();
    let jwk = jwk_of(&env.issuer, "rsa-1");
    let n = jwk["n"].as_str().unwrap();
    let secrets: Vec<Vec<u8>> = vec![
        b64url_decode(n),
        n.as_bytes().to_vec(),
        jwk.to_string().into_bytes(),
        env.issuer.jwks().to_string().into_bytes(),
    ];
    for (i, secret) in secrets.iter().enumerate() {
        for alg in ["HS256", "HS384", "HS512"] {
            let with_kid = hs256(
                &json!({"alg": alg, "typ": "JWT", "kid": "rsa-1"}),
                &claims,
                secret,
            );
            env.rejects(&with_kid, &format!("{alg} secret #{i}")).await;
        }
        let without_kid = hs256(&json!({"alg": "HS256", "typ": "JWT"}), &claims, secret);
        env.rejects(&without_kid, &format!("HS256 without kid, secret #{i}"))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_crit_header_is_rejected_401() {
    let env = Env::start().await;
    let claims = env.claims();
    for h in [
        json!({"crit": ["exp"], "exp": 1}),
        json!({"crit": ["b64"], "b64": false}),
        json!({"crit": ["urn:example:unknown"], "urn:example:unknown": true}),
        json!({"crit": []}),
    ] {
        let t = env.issuer.mint_with("rsa-1", h.clone(), &claims);
        env.rejects(&t, &h.to_string()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_carried_in_token_are_never_used_or_fetched_401() {
    let env = Env::start().await;
    // The attacker runs an issuer with the same `iss` and its own key.
    let attacker = LocalIssuer::start(Some(env.issuer.issuer()), AUDIENCE)
        .await
        .unwrap();
    let claims = env.claims();
    let attacker_jwk = jwk_of(&attacker, "rsa-1");
    let headers = [
        json!({"jwk": attacker_jwk}),
        json!({"jwk": attacker_jwk, "kid": null}),
        json!({"jku": attacker.jwks_uri()}),
        json!({"jku": attacker.jwks_uri(), "kid": "attacker-kid"}),
        json!({"x5u": format!("http://{}/cert.pem", attacker.addr())}),
        json!({"x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0"]}),
    ];
    for h in headers {
        let t = attacker.mint_with("rsa-1", h.clone(), &claims);
        env.rejects(&t, &format!("attacker key with {h}")).await;
        // The same header on a token our issuer really signed is refused too.
        let t = env.issuer.mint_with("rsa-1", h.clone(), &claims);
        env.rejects(&t, &format!("own key with {h}")).await;
    }
    assert_eq!(
        attacker.fetch_count(),
        0,
        "the gateway fetched a URL carried in a token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_signed_by_another_key_is_rejected_401() {
    let env = Env::start().await;
    let attacker = LocalIssuer::start(Some(env.issuer.issuer()), AUDIENCE)
        .await
        .unwrap();
    // Same kid, same iss, different key: a forged signature.
    let forged = attacker.mint(&env.claims());
    let d = env.rejects(&forged, "forged signature").await;
    assert!(d.contains("signature"), "{d}");
    // Same without kid.
    let forged = attacker.mint_with("rsa-1", json!({"kid": null}), &env.claims());
    env.rejects(&forged, "forged signature without kid").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_payload_is_rejected_401_even_after_the_original_was_cached() {
    let env = Env::start().await;
    let good = env.good("read:profile");
    let r = env.get_token("/v1/any/x", &good).await;
    assert_eq!(r.status, 200);
    let p = token_parts(&good);
    let escalated = patch(
        env.issuer.claims("user-1", "read:profile", 3600),
        json!({"scope": "admin:write"}),
    );
    let tampered = format!(
        "{}.{}.{}",
        p[0],
        b64url(escalated.to_string().as_bytes()),
        p[2]
    );
    env.rejects(&tampered, "payload swapped under a valid signature")
        .await;
    let r = env.get_token("/v1/studies/1", &tampered).await;
    assert_invalid_token(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_rejected_401() {
    let env = Env::start().await;
    let t = env
        .issuer
        .mint(&env.issuer.claims("user-1", "read:studies", -3600));
    let d = env.rejects(&t, "expired an hour ago").await;
    assert!(d.contains("expired"), "{d}");
    // Beyond the 30 s leeway.
    let t = env
        .issuer
        .mint(&env.issuer.claims("user-1", "read:studies", -45));
    env.rejects(&t, "expired 45 s ago").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recently_expired_token_within_leeway_is_accepted_200() {
    let env = Env::start().await;
    let t = env
        .issuer
        .mint(&env.issuer.claims("user-1", "read:studies", -5));
    env.accepts(&t, "expired 5 s ago, leeway 30 s").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbf_in_future_is_rejected_401() {
    let env = Env::start().await;
    let t = env
        .issuer
        .mint(&patch(env.claims(), json!({"nbf": now() + 3600})));
    env.rejects(&t, "nbf in an hour").await;
    let t = env
        .issuer
        .mint(&patch(env.claims(), json!({"nbf": now() - 10})));
    env.accepts(&t, "nbf in the past").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iat_in_future_beyond_leeway_is_rejected_401() {
    let env = Env::start().await;
    let t = env
        .issuer
        .mint(&patch(env.claims(), json!({"iat": now() + 3600})));
    env.rejects(&t, "iat in an hour").await;
    let t = env
        .issuer
        .mint(&patch(env.claims(), json!({"iat": now() + 120})));
    env.rejects(&t, "iat in 2 minutes (leeway 30 s)").await;
    let t = env
        .issuer
        .mint(&patch(env.claims(), json!({"iat": now() + 5})));
    env.accepts(&t, "iat 5 s ahead, within leeway").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_without_exp_is_rejected_401() {
    let env = Env::start().await;
    let t = env.issuer.mint(&patch(env.claims(), json!({"exp": null})));
    env.rejects(&t, "no exp").await;
    let t = env
        .issuer
        .mint(&patch(env.claims(), json!({"exp": "tomorrow"})));
    env.rejects(&t, "exp not a number").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_issuer_is_rejected_401() {
    let env = Env::start().await;
    for iss in [
        json!("https://evil.example"),
        json!(format!("{}/", env.issuer.issuer())),
        json!(null),
        json!(42),
    ] {
        let t = env.issuer.mint(&patch(env.claims(), json!({"iss": iss})));
        env.rejects(&t, &format!("iss {iss}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_audience_is_rejected_401() {
    let env = Env::start().await;
    for aud in [
        json!("https://evil.example"),
        json!(["https://evil.example", "https://other.example"]),
        json!([]),
        json!(null),
    ] {
        let t = env.issuer.mint(&patch(env.claims(), json!({"aud": aud})));
        env.rejects(&t, &format!("aud {aud}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audience_array_containing_accepted_audience_is_accepted_200() {
    let env = Env::start().await;
    let t = env.issuer.mint(&patch(
        env.claims(),
        json!({"aud": ["https://other.example", AUDIENCE]}),
    ));
    env.accepts(&t, "aud array with a good one").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_is_rejected_401() {
    let env = Env::start().await;
    let other = LocalIssuer::start(Some(env.issuer.issuer()), AUDIENCE)
        .await
        .unwrap();
    other.add_key("not-published", KeyAlg::RS256).unwrap();
    let t = other.mint_with("not-published", json!({}), &env.claims());
    env.rejects(&t, "unknown kid").await;
    let t = env
        .issuer
        .mint_with("rsa-1", json!({"kid": 17}), &env.claims());
    env.rejects(&t, "numeric kid").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kid_of_key_whose_type_does_not_fit_alg_is_rejected_401() {
    let li = local_issuer().await;
    li.add_key("ec-1", KeyAlg::ES256).unwrap();
    let env = Env::start_on(li, |c| c, |i| i.algorithms(&["RS256", "ES256"])).await;
    let claims = env.claims();
    // Header says RS256 but names the EC key (signed with the EC key).
    env.rejects(
        &env.issuer
            .mint_with("ec-1", json!({"alg": "RS256"}), &claims),
        "RS256 + EC kid",
    )
    .await;
    // Header says ES256 but names the RSA key (signed with the RSA key).
    env.rejects(
        &env.issuer
            .mint_with("rsa-1", json!({"alg": "ES256"}), &claims),
        "ES256 + RSA kid",
    )
    .await;
    // Both keys work with their own algorithm.
    env.accepts(
        &env.issuer.mint_with("ec-1", json!({}), &claims),
        "ES256 + EC kid",
    )
    .await;
    env.accepts(
        &env.issuer.mint_with("rsa-1", json!({}), &claims),
        "RS256 + RSA kid",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alg_outside_issuer_allow_list_is_rejected_401() {
    let li = local_issuer().await;
    li.add_key("ec-1", KeyAlg::ES256).unwrap();
    li.add_key("ps-1", KeyAlg::PS256).unwrap();
    let env = Env::start_on(li, |c| c, |i| i.algorithms(&["RS256"])).await;
    let claims = env.claims();
    env.rejects(
        &env.issuer.mint_with("ec-1", json!({}), &claims),
        "ES256 not allowed",
    )
    .await;
    env.rejects(
        &env.issuer.mint_with("ps-1", json!({}), &claims),
        "PS256 not allowed",
    )
    .await;
    env.rejects(
        &env.issuer.mint_with("ec-1", json!({"kid": null}), &claims),
        "ES256 without kid",
    )
    .await;
    env.accepts(
        &env.issuer.mint_with("rsa-1", json!({}), &claims),
        "RS256 allowed",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_without_kid_is_tried_against_fitting_keys_200() {
    let li = local_issuer().await;
    li.add_key("ec-1", KeyAlg::ES256).unwrap();
    li.add_key("rsa-2", KeyAlg::RS256).unwrap();
    let env = Env::start_on(li, |c| c, |i| i.algorithms(&["RS256", "ES256"])).await;
    let claims = env.claims();
    for kid in ["rsa-1", "rsa-2", "ec-1"] {
        let t = env.issuer.mint_with(kid, json!({"kid": null}), &claims);
        env.accepts(&t, &format!("no kid, signed by {kid}")).await;
    }
    // Without kid, a bad signature still fails.
    let p = token_parts(&env.issuer.mint_with("rsa-2", json!({"kid": null}), &claims));
    let other = token_parts(&env.issuer.mint_with(
        "rsa-1",
        json!({"kid": null}),
        &patch(claims, json!({"sub": "x"})),
    ));
    env.rejects(
        &format!("{}.{}.{}", p[0], p[1], other[2]),
        "no kid, wrong signature",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_with_typ_at_jwt_is_accepted_200() {
    let env = Env::start().await;
    for typ in ["at+jwt", "at+JWT", "application/at+jwt", "JWT"] {
        let t = env
            .issuer
            .mint_with("rsa-1", json!({"typ": typ}), &env.claims());
        env.accepts(&t, typ).await;
    }
    let t = env
        .issuer
        .mint_with("rsa-1", json!({"typ": null}), &env.claims());
    env.accepts(&t, "no typ").await;
}

// ------------------------------------------------------------------ issuers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_issuer_tokens_are_accepted_and_route_issuers_restrict() {
    let first = local_issuer().await;
    let second = local_issuer().await;
    let echo = echo_upstream().await;
    let cfg = Config::new()
        .issuer(IssuerSpec::local("first", &first))
        .issuer(IssuerSpec::local("second", &second))
        .upstream(UpstreamSpec::echo("api", &echo))
        .route(RouteSpec::new("only-second", "/v1/second/*", "api").issuers(&["second"]))
        .route(RouteSpec::new("any", "/v1/any/*", "api"));
    let gw = TestGateway::start(&cfg).await;
    let t1 = token(&first, "alice", "read:studies");
    let t2 = token(&second, "bob", "read:studies");
    assert_eq!(
        gw.get_with_token("/v1/any/x", &t1).await.echo()["headers"]["x-auth-subject"],
        "alice"
    );
    assert_eq!(
        gw.get_with_token("/v1/any/x", &t2).await.echo()["headers"]["x-auth-subject"],
        "bob"
    );
    assert_eq!(gw.get_with_token("/v1/second/x", &t2).await.status, 200);
    let before = echo.hits();
    let r = gw.get_with_token("/v1/second/x", &t1).await;
    assert_invalid_token(&r);
    assert_eq!(echo.hits(), before);
    // A token signed by the first issuer's key but claiming the second's `iss` fails.
    let cross = first.mint(&second.claims("mallory", "read:studies", 3600));
    assert_invalid_token(&gw.get_with_token("/v1/any/x", &cross).await);
    assert_invalid_token(&gw.get_with_token("/v1/second/x", &cross).await);
    assert_eq!(echo.hits(), before);
}

// ------------------------------------------------------------------ token sources

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_route_forwards_without_token_200() {
    let env = Env::start().await;
    let before = env.echo.hits();
    let r = send(env.gw.get("/v1/public/hello?x=1")).await;
    let echo = r.echo();
    assert_eq!(env.echo.hits(), before + 1);
    assert_eq!(echo["path"], "/v1/public/hello");
    assert_eq!(echo["query"], "x=1");
    assert!(echo["headers"].get("x-auth-subject").is_none(), "{echo}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_and_cookie_tokens_are_ignored_unless_route_opts_in() {
    let env = Env::start_with(
        |c| {
            c.route(RouteSpec::new("q", "/v1/q/*", "api").token_query_param("access_token"))
                .route(RouteSpec::new("c", "/v1/c/*", "api").token_cookie("at"))
        },
        |i| i,
    )
    .await;
    let t = env.good("read:studies");
    let before = env.echo.hits();
    // Not opted in: as if no token was sent.
    let r = send(env.gw.get(&format!("/v1/studies/1?access_token={t}"))).await;
    assert_missing_token(&r);
    let r = send(
        env.gw
            .get("/v1/studies/1")
            .header("cookie", format!("at={t}")),
    )
    .await;
    assert_missing_token(&r);
    let r = send(env.gw.get("/v1/c/x").header("cookie", format!("other={t}"))).await;
    assert_missing_token(&r);
    let r = send(env.gw.get(&format!("/v1/c/x?access_token={t}"))).await;
    assert_missing_token(&r);
    let r = send(env.gw.get("/v1/q/x").header("cookie", format!("at={t}"))).await;
    assert_missing_token(&r);
    assert_eq!(env.echo.hits(), before);
    // Opted in.
    let r = send(env.gw.get(&format!("/v1/q/x?access_token={t}"))).await;
    assert_eq!(r.echo()["headers"]["x-auth-subject"], "user-1");
    let r = send(
        env.gw
            .get("/v1/c/x")
            .header("cookie", format!("theme=dark; at={t}")),
    )
    .await;
    assert_eq!(r.echo()["headers"]["x-auth-subject"], "user-1");
    // A bad token where the route looks is still a bad token.
    let r = send(env.gw.get("/v1/q/x?access_token=abc.def.ghi")).await;
    assert_eq!(r.status, 401, "{}", r.describe());
    assert!(r
        .header("www-authenticate")
        .unwrap_or_default()
        .contains("invalid_token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_token_hits_verified_token_cache() {
    let env = Env::start().await;
    let t = env.good("read:studies");
    let hits0 = env
        .gw
        .metric("gateway_token_cache_requests_total", &[("result", "hit")])
        .await;
    assert_eq!(env.get_token("/v1/studies/1", &t).await.status, 200);
    let hits1 = env
        .gw
        .metric("gateway_token_cache_requests_total", &[("result", "hit")])
        .await;
    for _ in 0..3 {
        let r = env.get_token("/v1/studies/1", &t).await;
        assert_eq!(r.status, 200, "{}", r.describe());
        assert_eq!(r.json()["headers"]["x-auth-subject"], "user-1");
    }
    let hits2 = env
        .gw
        .metric("gateway_token_cache_requests_total", &[("result", "hit")])
        .await;
    assert_eq!(hits1, hits0, "first use is a miss");
    assert!(hits2 >= hits1 + 3.0, "cache hits {hits1} -> {hits2}");
    // A cached token still gets its scopes checked per route.
    let r = env.get_token("/v1/both/1", &t).await;
    assert_insufficient_scope(&r, "read:studies read:participants");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_token_is_rejected_401_once_expired() {
    let env = Env::start_with(|c| c, |i| i.leeway(0)).await;
    let t = env
        .issuer
        .mint(&env.issuer.claims("user-1", "read:studies", 2));
    assert_eq!(env.get_token("/v1/any/x", &t).await.status, 200);
    assert_eq!(env.get_token("/v1/any/x", &t).await.status, 200);
    tokio::time::sleep(Duration::from_millis(3200)).await;
    env.rejects(&t, "expired while cached").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_authorization_removes_header_before_forwarding() {
    let env = Env::start_with(|c| c, |i| i.set("strip_authorization", true)).await;
    let t = env.good("read:studies");
    let echo = env.get_token("/v1/studies/1", &t).await.echo();
    assert!(echo["headers"].get("authorization").is_none(), "{echo}");
    assert_eq!(echo["headers"]["x-auth-subject"], "user-1");
    // Repeated (cached) token: stripped as well.
    let echo = env.get_token("/v1/studies/1", &t).await.echo();
    assert!(echo["headers"].get("authorization").is_none(), "{echo}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_route_and_status_and_auth_failures_by_reason() {
    let env = Env::start().await;
    let expired = env
        .issuer
        .mint(&env.issuer.claims("user-1", "read:studies", -3600));
    for _ in 0..2 {
        assert_eq!(env.get_token("/v1/studies/1", &expired).await.status, 401);
    }
    assert_eq!(
        env.get_token("/v1/studies/1", &env.good("read:profile"))
            .await
            .status,
        403
    );
    assert_eq!(
        env.get_token("/v1/studies/1", &env.good("read:studies"))
            .await
            .status,
        200
    );
    // The request counters are written when a request's log phase ends, just after its
    // response: wait for the last one.
    let counted = eventually(Duration::from_secs(5), || async {
        metric_value(
            &env.gw.metrics().await,
            "gateway_requests_total",
            &[("route", "studies"), ("status", "200")],
        ) == 1.0
    })
    .await;
    assert!(counted, "the 200 was never counted");
    let m = env.gw.metrics().await;
    let req = |status: &str| {
        metric_value(
            &m,
            "gateway_requests_total",
            &[("route", "studies"), ("status", status)],
        )
    };
    assert_eq!(req("401"), 2.0, "{m}");
    assert_eq!(req("403"), 1.0, "{m}");
    assert_eq!(req("200"), 1.0, "{m}");
    assert_eq!(
        metric_value(&m, "gateway_auth_decisions_total", &[("result", "expired")]),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            "gateway_auth_decisions_total",
            &[("result", "insufficient_scope")]
        ),
        1.0
    );
}

// ------------------------------------------------------------------ logs

/// A batch of good and bad requests; returns the tokens sent and the request ids used.
async fn token_batch(env: &Env) -> (Vec<String>, Vec<String>) {
    let claims = env.claims();
    let good = env.good("read:studies");
    let expired = env
        .issuer
        .mint(&env.issuer.claims("user-1", "read:studies", -3600));
    let wrong_aud = env.issuer.mint(&patch(
        claims.clone(),
        json!({"aud": "https://evil.example"}),
    ));
    let none = format!(
        "{}.{}.",
        b64url(json!({"alg": "none"}).to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let forged = {
        let p = token_parts(&good);
        let other = token_parts(&expired);
        format!("{}.{}.{}", p[0], p[1], other[2])
    };
    let no_scope = env.good("read:email");
    let tokens = vec![good, expired, wrong_aud, none, forged, no_scope];
    let mut ids = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        let id = format!("logcheck-{i}-{}", now());
        ids.push(id.clone());
        let _ = send(
            env.gw
                .get("/v1/studies/1")
                .bearer_auth(t)
                .header("x-request-id", &id),
        )
        .await;
        let _ = send(env.gw.get(&format!("/v1/studies/1?access_token={t}"))).await;
        let _ = send(
            env.gw
                .get("/v1/studies/1")
                .header("cookie", format!("at={t}")),
        )
        .await;
        let _ = send(
            env.gw
                .get("/v1/studies/1")
                .header("authorization", format!("Basic {t}")),
        )
        .await;
        // A malformed request carrying the token.
        let raw = format!(
            "GET /v1/studies/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nBad Header: x\r\nConnection: close\r\n\r\n"
        );
        let _ = raw_request(env.gw.addr(), raw.as_bytes()).await;
    }
    (tokens, ids)
}

/// The first log line containing `needle`, with every segment of `token` redacted, shortened.
fn offending_line(logs: &str, needle: &str, token: &str) -> String {
    let mut line = logs
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_default()
        .to_string();
    for part in token_parts(token) {
        if part.len() >= 16 {
            line = line.replace(&part, "<REDACTED>");
        }
    }
    line.chars().take(400).collect()
}

fn assert_no_token_in(logs: &str, tokens: &[String]) {
    for (i, t) in tokens.iter().enumerate() {
        for (j, part) in token_parts(t).iter().enumerate().skip(1) {
            if part.len() >= 16 {
                assert!(
                    !logs.contains(part.as_str()),
                    "token #{i} segment {j} appears in the logs: {}",
                    offending_line(logs, part, t)
                );
            }
        }
        assert!(
            !logs.contains(t.as_str()),
            "token #{i} appears in the logs: {}",
            offending_line(logs, t, t)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_contain_tokens_and_carry_request_ids() {
    let env = Env::start().await;
    let (tokens, ids) = token_batch(&env).await;
    let last = ids.last().unwrap();
    assert!(
        env.gw.wait_for_log(last, Duration::from_secs(5)).await,
        "access log line with request_id {last} missing:\n{}",
        env.gw.logs()
    );
    let logs = env.gw.logs();
    assert_no_token_in(&logs, &tokens);
    for id in &ids {
        let line = logs
            .lines()
            .find(|l| l.contains(id.as_str()))
            .unwrap_or_else(|| panic!("no log line for request id {id}"));
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert_eq!(v["request_id"], id.as_str(), "{line}");
        assert!(v["status"].is_number(), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_contain_tokens_at_debug_level() {
    let env = Env::start_with(|c| c.log_level("debug"), |i| i).await;
    let (tokens, ids) = token_batch(&env).await;
    let last = ids.last().unwrap();
    assert!(
        env.gw.wait_for_log(last, Duration::from_secs(5)).await,
        "access log missing"
    );
    assert_no_token_in(&env.gw.logs(), &tokens);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_contain_tokens_of_malformed_requests_at_debug_level() {
    // Nothing is forwarded here: only requests the HTTP parser refuses, carrying a token.
    let env = Env::start_with(|c| c.log_level("debug"), |i| i).await;
    let t = env.good("read:studies");
    for bad in ["Bad Header: x", "X-Ctl: a\u{1}b", "\u{7f}: x"] {
        let raw = format!(
            "GET /v1/studies/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\n{bad}\r\n\r\n"
        );
        let r = raw_request(env.gw.addr(), raw.as_bytes()).await;
        assert_not_5xx(bad, &r);
    }
    let raw = format!(
        "GET /v1/studies/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nX-Big: {}\r\n\r\n",
        "x".repeat(1100 * 1024)
    );
    let _ = raw_request(env.gw.addr(), raw.as_bytes()).await;
    let id = format!("after-malformed-{}", now());
    let _ = send(env.gw.get("/v1/public/x").header("x-request-id", &id)).await;
    assert!(
        env.gw.wait_for_log(&id, Duration::from_secs(5)).await,
        "access log missing"
    );
    assert_no_token_in(&env.gw.logs(), &[t]);
}

async fn cache(gw: &TestGateway, result: &str) -> f64 {
    metric_value(
        &gw.metrics().await,
        "gateway_token_cache_requests_total",
        &[("result", result)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_tokens_stay_cached_across_a_reload_unless_their_issuer_changed() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let studies = RouteSpec::new("studies", "/v1/studies/{id}", "api").scopes(&["read:studies"]);
    let cfg = Config::new()
        .issuer(IssuerSpec::local("main", &li))
        .upstream(UpstreamSpec::echo("api", &echo))
        .route(studies.clone());
    let mut gw = TestGateway::start(&cfg).await;
    let t = token(&li, "user-1", "read:studies");
    assert_eq!(gw.get_with_token("/v1/studies/1", &t).await.status, 200);
    let misses = cache(&gw, "miss").await;
    assert_eq!(misses, 1.0);

    // A reload that changes the routes only: the token is still a cache hit.
    gw.rewrite_config(
        &cfg.clone()
            .route(RouteSpec::new("public", "/v1/public/*", "api").public()),
    );
    assert_eq!(gw.reload().await.status, 200);
    assert_eq!(gw.get_with_token("/v1/studies/2", &t).await.status, 200);
    assert_eq!(
        cache(&gw, "miss").await,
        misses,
        "verified again after a route reload"
    );
    assert!(cache(&gw, "hit").await >= 1.0);

    // A reload that changes the issuer (its leeway): its tokens are verified again.
    gw.rewrite_config(
        &Config::new()
            .issuer(IssuerSpec::local("main", &li).leeway(5))
            .upstream(UpstreamSpec::echo("api", &echo))
            .route(studies),
    );
    assert_eq!(gw.reload().await.status, 200);
    assert_eq!(gw.get_with_token("/v1/studies/3", &t).await.status, 200);
    assert_eq!(
        cache(&gw, "miss").await,
        misses + 1.0,
        "a changed issuer re-verifies"
    );
}
