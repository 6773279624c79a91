//! DPoP (RFC 9449) end to end: tokens minted by the local issuer with `cnf.jkt`, proofs made
//! here with an ES256 key carried in the proof's `jwk` header, sent to the real binary as
//! `Authorization: DPoP <token>` + `DPoP: <proof>`. Each attack of the issue has its case; the
//! replay cache is checked across a verified-token cache hit and across two gateway processes
//! sharing Redis. The last case takes a DPoP-bound token from a real authorization server (node
//! oidc-provider) and proves its key to the gateway.

mod common;

use common::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use wetrials_gateway::demo::SigningKey;

/// A client's DPoP key.
struct Client {
    key: SigningKey,
}

impl Client {
    fn new() -> Self {
        Client {
            key: SigningKey::generate("dpop", KeyAlg::ES256).expect("key"),
        }
    }

    /// The public JWK as a proof carries it (no `kid`, `use`, `alg`: only what the key is).
    fn jwk(&self) -> Value {
        let k = self.key.jwk();
        json!({"kty": k["kty"], "crv": k["crv"], "x": k["x"], "y": k["y"]})
    }

    /// RFC 7638 thumbprint, computed here independently of the gateway.
    fn jkt(&self) -> String {
        let k = self.jwk();
        let canonical = format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            k["crv"].as_str().unwrap(),
            k["x"].as_str().unwrap(),
            k["y"].as_str().unwrap()
        );
        b64url(&Sha256::digest(canonical.as_bytes()))
    }

    /// A proof with `claims` over the defaults (a `null` removes a claim) and `header` over
    /// `{typ, alg, jwk}`.
    fn proof_with(&self, header: Value, claims: Value) -> String {
        let mut h = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk(), "kid": null});
        for (k, v) in header.as_object().unwrap() {
            h[k] = v.clone();
        }
        self.key.mint(h, &claims)
    }

    fn proof(&self, method: &str, url: &str, token: &str) -> String {
        self.proof_with(json!({}), proof_claims(method, url, token))
    }
}

fn proof_claims(method: &str, url: &str, token: &str) -> Value {
    json!({
        "jti": uuid(),
        "htm": method,
        "htu": url,
        "iat": now(),
        "ath": b64url(&Sha256::digest(token.as_bytes())),
    })
}

fn uuid() -> String {
    let mut b = [0u8; 16];
    for (i, x) in b.iter_mut().enumerate() {
        *x = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
            .wrapping_mul(2654435761)
            .rotate_left(i as u32)
            & 0xff) as u8;
    }
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "{}-{}",
        b64url(&b),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

struct Env {
    li: LocalIssuer,
    gw: TestGateway,
    echo: EchoUpstream,
}

fn config(li: &LocalIssuer, echo: &EchoUpstream) -> Config {
    Config::basic(li, echo)
        .route(
            RouteSpec::new("studies", "/v1/studies/{id}", "api")
                .methods(&["GET", "POST"])
                .scopes(&["read:studies"]),
        )
        .route(
            RouteSpec::new("strict", "/v1/strict/*", "api")
                .scopes(&["read:studies"])
                .set("dpop", "required"),
        )
        .route(RouteSpec::new("plain", "/v1/plain/*", "api").set("dpop", "off"))
}

impl Env {
    async fn start() -> Env {
        let (li, echo) = (local_issuer().await, echo_upstream().await);
        let gw = TestGateway::start(&config(&li, &echo)).await;
        Env { li, gw, echo }
    }

    fn bound_token(&self, client: &Client) -> String {
        self.li.mint(&patch(
            self.li.claims("alice", "read:studies", 600),
            json!({"cnf": {"jkt": client.jkt()}}),
        ))
    }

    async fn dpop(&self, method: &str, path: &str, token: &str, proof: Option<&str>) -> Reply {
        let mut rb = self
            .gw
            .request(method, path)
            .header("authorization", format!("DPoP {token}"));
        if let Some(p) = proof {
            rb = rb.header("dpop", p);
        }
        send(rb).await
    }
}

/// 401 with a `DPoP` challenge of `error` and the accepted algorithms; returns the reason
/// description.
fn assert_dpop_refused(r: &Reply, error: &str) -> String {
    let body = assert_json_error(r, 401, error);
    let w = r.header("www-authenticate").unwrap_or_default();
    assert!(
        w.starts_with("DPoP ") && w.contains(&format!("error=\"{error}\"")),
        "WWW-Authenticate {w:?}; got:\n{}",
        r.describe()
    );
    assert!(w.contains("algs=\"ES256 RS256 PS256 EdDSA\""), "{w}");
    body["error_description"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_valid_proof_is_accepted_and_its_replay_refused() {
    let env = Env::start().await;
    let client = Client::new();
    let token = env.bound_token(&client);
    let url = env.gw.url("/v1/studies/1");
    let proof = client.proof("GET", &url, &token);
    let r = env.dpop("GET", "/v1/studies/1", &token, Some(&proof)).await;
    assert_eq!(r.echo()["headers"]["x-auth-subject"], "alice");
    let before = env.echo.hits();
    // The same proof again: a replay.
    let r = env.dpop("GET", "/v1/studies/1", &token, Some(&proof)).await;
    let d = assert_dpop_refused(&r, "invalid_dpop_proof");
    assert!(d.contains("replayed"), "{d}");
    assert_eq!(env.echo.hits(), before, "a replay reached the upstream");
    // The token came from the verified-token cache this time: a new proof still passes
    // and a replayed one still does not, so a cache hit never skips the proof.
    let fresh = client.proof("GET", &url, &token);
    assert_eq!(
        env.dpop("GET", "/v1/studies/1", &token, Some(&fresh))
            .await
            .status,
        200
    );
    assert_dpop_refused(
        &env.dpop("GET", "/v1/studies/1", &token, Some(&fresh)).await,
        "invalid_dpop_proof",
    );
    assert_eq!(
        env.gw
            .metric("gateway_dpop_proofs_total", &[("result", "dpop_replay")])
            .await,
        2.0
    );
    assert_eq!(
        env.gw
            .metric("gateway_dpop_proofs_total", &[("result", "ok")])
            .await,
        2.0
    );
}

#[tokio::test]
async fn a_proof_for_another_method_or_uri_is_refused() {
    let env = Env::start().await;
    let client = Client::new();
    let token = env.bound_token(&client);
    let url = env.gw.url("/v1/studies/1");
    let post = client.proof("POST", &url, &token);
    let d = assert_dpop_refused(
        &env.dpop("GET", "/v1/studies/1", &token, Some(&post)).await,
        "invalid_dpop_proof",
    );
    assert!(d.contains("htm"), "{d}");
    let other = client.proof("GET", &env.gw.url("/v1/studies/2"), &token);
    let d = assert_dpop_refused(
        &env.dpop("GET", "/v1/studies/1", &token, Some(&other)).await,
        "invalid_dpop_proof",
    );
    assert!(d.contains("htu"), "{d}");
    let other_host = client.proof("GET", "http://evil.example/v1/studies/1", &token);
    assert_dpop_refused(
        &env.dpop("GET", "/v1/studies/1", &token, Some(&other_host))
            .await,
        "invalid_dpop_proof",
    );
    // Normalisation: scheme and host case, the query and a fragment do not matter.
    let spelled = url.replace("http://", "HTTP://") + "?x=1#frag";
    let ok = client.proof("GET", &spelled, &token);
    assert_eq!(
        env.dpop("GET", "/v1/studies/1?x=2", &token, Some(&ok))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_proof_by_another_key_than_cnf_jkt_is_refused() {
    let env = Env::start().await;
    let (owner, thief) = (Client::new(), Client::new());
    let token = env.bound_token(&owner);
    let url = env.gw.url("/v1/studies/1");
    let d = assert_dpop_refused(
        &env.dpop(
            "GET",
            "/v1/studies/1",
            &token,
            Some(&thief.proof("GET", &url, &token)),
        )
        .await,
        "invalid_dpop_proof",
    );
    assert!(d.contains("bound"), "{d}");
    // The owner's jwk in the header but signed by the thief: the signature fails.
    let forged = thief.proof_with(
        json!({"jwk": owner.jwk()}),
        proof_claims("GET", &url, &token),
    );
    let d = assert_dpop_refused(
        &env.dpop("GET", "/v1/studies/1", &token, Some(&forged))
            .await,
        "invalid_dpop_proof",
    );
    assert!(d.contains("signature"), "{d}");
}

#[tokio::test]
async fn stale_or_future_iat_missing_or_wrong_ath_and_private_jwk_are_refused() {
    let env = Env::start().await;
    let client = Client::new();
    let token = env.bound_token(&client);
    let url = env.gw.url("/v1/studies/1");
    let with = |p: Value| patch(proof_claims("GET", &url, &token), p);
    // Another token bound to the same key (a token minted in the same second with the same
    // claims would be the same token).
    let other_token = env.li.mint(&patch(
        env.li.claims("alice", "read:studies", 900),
        json!({"cnf": {"jkt": client.jkt()}}),
    ));
    assert_ne!(other_token, token);
    for (claims, needle) in [
        (with(json!({"iat": now() - 600})), "iat"),
        (with(json!({"iat": now() + 600})), "iat"),
        (with(json!({"ath": null})), "ath"),
        (
            with(json!({"ath": b64url(&Sha256::digest(other_token.as_bytes()))})),
            "ath",
        ),
        (with(json!({"jti": null})), "jti"),
    ] {
        let proof = client.proof_with(json!({}), claims.clone());
        let d = assert_dpop_refused(
            &env.dpop("GET", "/v1/studies/1", &token, Some(&proof)).await,
            "invalid_dpop_proof",
        );
        assert!(d.contains(needle), "{claims}: {d}");
    }
    // A private key in the header (`d`), a wrong `typ`, a symmetric `alg`.
    let mut private = client.jwk();
    private["d"] = json!(b64url(&[7u8; 32]));
    for header in [
        json!({"jwk": private}),
        json!({"typ": "JWT"}),
        json!({"alg": "HS256"}),
    ] {
        let proof = client.proof_with(header.clone(), with(json!({})));
        assert_dpop_refused(
            &env.dpop("GET", "/v1/studies/1", &token, Some(&proof)).await,
            "invalid_dpop_proof",
        );
    }
    // No proof at all, and two proofs.
    assert_dpop_refused(
        &env.dpop("GET", "/v1/studies/1", &token, None).await,
        "invalid_dpop_proof",
    );
    let r = send(
        env.gw
            .get("/v1/studies/1")
            .header("authorization", format!("DPoP {token}"))
            .header("dpop", client.proof("GET", &url, &token))
            .header("dpop", client.proof("GET", &url, &token)),
    )
    .await;
    assert_dpop_refused(&r, "invalid_dpop_proof");
}

#[tokio::test]
async fn bearer_and_dpop_schemes_follow_the_binding_and_the_route_mode() {
    let env = Env::start().await;
    let client = Client::new();
    let bound = env.bound_token(&client);
    let unbound = token(&env.li, "bob", "read:studies");
    let url = env.gw.url("/v1/studies/1");
    // A bound token as Bearer: refused (RFC 9449 §7.2), with the Bearer challenge.
    let d = assert_invalid_token(&env.gw.get_with_token("/v1/studies/1", &bound).await);
    assert!(d.contains("DPoP"), "{d}");
    // An unbound token with the DPoP scheme and a good proof: refused (§4.3 check 12).
    let proof = client.proof("GET", &url, &unbound);
    let d = assert_dpop_refused(
        &env.dpop("GET", "/v1/studies/1", &unbound, Some(&proof))
            .await,
        "invalid_token",
    );
    assert!(d.contains("not DPoP-bound"), "{d}");
    // An unbound Bearer token still passes where DPoP is allowed (the default).
    assert_eq!(
        env.gw
            .get_with_token("/v1/studies/1", &unbound)
            .await
            .status,
        200
    );
    // `required`: Bearer refused with a DPoP challenge, DPoP accepted; no token: DPoP challenge.
    let r = env.gw.get_with_token("/v1/strict/x", &unbound).await;
    let d = assert_dpop_refused(&r, "invalid_token");
    assert!(d.contains("requires"), "{d}");
    let r = send(env.gw.get("/v1/strict/x")).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate").unwrap(),
        format!("DPoP realm=\"{REALM}\", algs=\"ES256 RS256 PS256 EdDSA\"")
    );
    let strict = env.gw.url("/v1/strict/x");
    let ok = client.proof("GET", &strict, &bound);
    assert_eq!(
        env.dpop("GET", "/v1/strict/x", &bound, Some(&ok))
            .await
            .status,
        200
    );
    // `off`: the DPoP scheme counts as no credentials (RFC 6750 §3.1).
    let plain = env.gw.url("/v1/plain/x");
    let p = client.proof("GET", &plain, &bound);
    assert_missing_token(&env.dpop("GET", "/v1/plain/x", &bound, Some(&p)).await);
    // A token problem on a DPoP request is answered with the DPoP challenge.
    let expired = env.li.mint(&patch(
        env.li.claims("alice", "read:studies", -120),
        json!({"cnf": {"jkt": client.jkt()}}),
    ));
    let p = client.proof("GET", &url, &expired);
    assert_dpop_refused(
        &env.dpop("GET", "/v1/studies/1", &expired, Some(&p)).await,
        "invalid_token",
    );
}

#[tokio::test]
async fn public_url_sets_the_htu_the_proof_must_name() {
    let (li, echo) = (local_issuer().await, echo_upstream().await);
    let cfg = config(&li, &echo).server_set("public_url", "https://API.wetrials.com:443/");
    let gw = TestGateway::start(&cfg).await;
    let env = Env { li, gw, echo };
    let client = Client::new();
    let token = env.bound_token(&client);
    let local = client.proof("GET", &env.gw.url("/v1/studies/1"), &token);
    assert_dpop_refused(
        &env.dpop("GET", "/v1/studies/1", &token, Some(&local)).await,
        "invalid_dpop_proof",
    );
    let public = client.proof("GET", "https://api.wetrials.com/v1/studies/1", &token);
    assert_eq!(
        env.dpop("GET", "/v1/studies/1", &token, Some(&public))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn explain_shows_the_proof_checks_and_records_no_jti() {
    let env = Env::start().await;
    let client = Client::new();
    let token = env.bound_token(&client);
    let url = env.gw.url("/v1/studies/1");
    let proof = client.proof("GET", &url, &token);
    let host = env.gw.addr().to_string();
    let explained = send(
        env.gw
            .client()
            .post(env.gw.admin_url("/explain"))
            .json(&json!({
                "method": "GET",
                "path": "/v1/studies/1",
                "headers": {"authorization": format!("DPoP {token}"), "dpop": proof, "host": host},
            })),
    )
    .await;
    assert_eq!(explained.status, 200, "{}", explained.describe());
    let e = explained.json();
    assert_eq!(e["forwarded"], true, "{e}");
    assert!(
        e["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["step"] == "dpop" && s["result"] == "ok"),
        "{e}"
    );
    // Explaining did not use the proof up.
    let r = env.dpop("GET", "/v1/studies/1", &token, Some(&proof)).await;
    assert_eq!(r.status, 200, "{}", r.describe());
}

#[tokio::test]
async fn the_replay_cache_is_shared_through_redis_across_replicas() {
    let redis = RedisServer::start();
    let (li, echo) = (local_issuer().await, echo_upstream().await);
    let cfg = config(&li, &echo)
        .server_set("public_url", "https://api.wetrials.com")
        .rate_limit_set("backend", "redis")
        .rate_limit_set("redis_url", redis.url())
        .rate_limit_set("on_backend_error", "fail_closed");
    let (a, b) = (
        TestGateway::start(&cfg).await,
        TestGateway::start(&cfg).await,
    );
    let client = Client::new();
    let token = li.mint(&patch(
        li.claims("alice", "read:studies", 600),
        json!({"cnf": {"jkt": client.jkt()}}),
    ));
    let proof = client.proof("GET", "https://api.wetrials.com/v1/studies/1", &token);
    let call = |gw: &TestGateway| {
        gw.get("/v1/studies/1")
            .header("authorization", format!("DPoP {token}"))
            .header("dpop", proof.clone())
    };
    assert_eq!(send(call(&a)).await.status, 200);
    // The other replica has never seen it, yet refuses it.
    assert_dpop_refused(&send(call(&b)).await, "invalid_dpop_proof");
    // Redis gone and fail_closed: 503, never an unchecked proof.
    let mut redis = redis;
    redis.stop();
    let fresh = client.proof("GET", "https://api.wetrials.com/v1/studies/1", &token);
    let r = send(
        a.get("/v1/studies/1")
            .header("authorization", format!("DPoP {token}"))
            .header("dpop", fresh),
    )
    .await;
    assert_json_error(&r, 503, "temporarily_unavailable");
}

/// A DPoP-bound token from a real authorization server (node oidc-provider, its `dPoP`
/// feature): the client proves its key at the token endpoint, gets a `token_type: DPoP` JWT
/// with `cnf.jkt`, and the gateway accepts it only with a fresh proof by that key.
#[tokio::test]
async fn a_dpop_bound_token_from_oidc_provider_needs_a_proof_by_its_key() {
    let authz = AuthServer::start().await;
    let echo = echo_upstream().await;
    let client = Client::new();
    let at_token_endpoint = client.proof_with(
        json!({}),
        json!({"jti": uuid(), "htm": "POST", "htu": authz.token_endpoint(), "iat": now()}),
    );
    let answer = authz
        .token_response(
            APP,
            "read:studies",
            Some(JWT_RESOURCE),
            &[("dpop", &at_token_endpoint)],
        )
        .await;
    assert_eq!(answer["token_type"], "DPoP", "{answer}");
    let token = answer["access_token"].as_str().unwrap().to_string();
    let claims: Value = serde_json::from_slice(&b64url_decode(&token_parts(&token)[1])).unwrap();
    assert_eq!(claims["cnf"]["jkt"], client.jkt(), "{claims}");

    let cfg = Config::new()
        .issuer(
            IssuerSpec::new("authz", &authz.issuer())
                .audiences(&[JWT_RESOURCE])
                .jwks_uri(&authz.jwks_uri()),
        )
        .upstream(UpstreamSpec::echo("api", &echo))
        .route(RouteSpec::new("studies", "/v1/studies/*", "api").scopes(&["read:studies"]));
    let gw = TestGateway::start(&cfg).await;
    let url = gw.url("/v1/studies/1");
    let send_dpop = |proof: Option<String>| {
        let mut rb = gw
            .get("/v1/studies/1")
            .header("authorization", format!("DPoP {token}"));
        if let Some(p) = proof {
            rb = rb.header("dpop", p);
        }
        send(rb)
    };
    let proof = client.proof("GET", &url, &token);
    let ok = send_dpop(Some(proof.clone())).await;
    assert_eq!(ok.status, 200, "{}", ok.describe());
    assert_eq!(ok.echo()["headers"]["x-auth-client-id"], "app");
    // Replayed, missing, or by another key: refused.
    assert_dpop_refused(&send_dpop(Some(proof)).await, "invalid_dpop_proof");
    assert_eq!(send_dpop(None).await.status, 401);
    let thief = Client::new();
    assert_dpop_refused(
        &send_dpop(Some(thief.proof("GET", &url, &token))).await,
        "invalid_dpop_proof",
    );
    // As a bearer token: refused (RFC 9449 §7.2).
    assert_invalid_token(&send(gw.get("/v1/studies/1").bearer_auth(&token)).await);
}
