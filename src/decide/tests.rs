//! The decision core driven directly: a snapshot built from a config in memory, keys installed
//! from a file, requests held in memory. No socket, no pingora: one test (at least) per
//! rejection reason, and the forward path with what the proxy applies from it.

use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use serde_json::{json, Value};

use super::*;
use crate::auth::AuthError;
use crate::mint::{KeyAlg, SigningKey};

const ISS: &str = "https://auth.test.local";
const AUD: &str = "https://api.wetrials.com";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn config(jwks: &std::path::Path, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:1"
trusted_proxies = ["10.0.0.0/8"]

[admin]
listen = "127.0.0.1:2"

[[issuers]]
name = "main"
issuer = "{ISS}"
audiences = ["{AUD}"]
jwks_uri = "{jwks}"
algorithms = ["ES256"]
leeway_secs = 0

[[issuers]]
name = "other"
issuer = "https://other.test.local"
audiences = ["{AUD}"]
jwks_uri = "{jwks}"
algorithms = ["ES256"]

[[upstreams]]
name = "api"
peers = ["127.0.0.1:3"]

[[routes]]
name = "studies-read"
methods = ["GET"]
path = "/v1/studies/{{id}}"
upstream = "api"
scopes = ["read:studies"]
issuers = ["main"]
[routes.rate_limit]
requests = 2
period = "1m"
key = ["sub"]

[[routes]]
name = "files"
path = "/v1/files/*"
upstream = "api"
auth = "none"
allow_encoded_slashes = true

[[routes]]
name = "oauth-token"
methods = ["POST"]
path = "/v1/oauth/token"
upstream = "api"
auth = "none"
require_tls = true
[routes.rate_limit]
requests = 100
period = "1m"
key = ["client_id", "ip"]

[[routes]]
name = "public"
path = "/v1/public/*"
upstream = "api"
auth = "none"
{extra}
"#,
        jwks = jwks.display()
    )
}

/// A snapshot with both issuers' keys loaded from a JWKS file (the key `kid` "k1").
struct Core {
    snap: Snapshot,
    metrics: Arc<Metrics>,
    key: SigningKey,
    _dir: tempfile::TempDir,
}

impl Core {
    async fn new() -> Core {
        Self::with(|t| t, true).await
    }

    async fn with(edit: impl FnOnce(String) -> String, load_keys: bool) -> Core {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate("k1", KeyAlg::ES256).unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, key.jwks().to_string()).unwrap();
        let cfg = crate::config::from_str(&edit(config(&jwks, ""))).unwrap();
        let metrics = Arc::new(Metrics::new().unwrap());
        let http = reqwest::Client::new();
        let snap = Snapshot::build(cfg, None, &http, &metrics).unwrap();
        if load_keys {
            for issuer in snap.auth.issuers() {
                issuer.refresh_using(&http).await.unwrap();
            }
        }
        Core {
            snap,
            metrics,
            key,
            _dir: dir,
        }
    }

    fn claims(&self, sub: &str, scope: &str) -> Value {
        let now = now();
        json!({"iss": ISS, "aud": AUD, "sub": sub, "scope": scope, "client_id": "app",
               "iat": now, "exp": now + 600})
    }

    fn token(&self, sub: &str, scope: &str) -> String {
        self.key.mint(json!({}), &self.claims(sub, scope))
    }

    async fn run(&self, req: &mut OfflineRequest) -> (Result<(), Reject>, Admission, Recorder) {
        let mut adm = Admission::default();
        let mut trace = Recorder::default();
        let verdict = decide(
            &self.snap,
            &self.metrics,
            req,
            &mut adm,
            &mut trace,
            Effects::Count,
        )
        .await;
        (verdict, adm, trace)
    }

    async fn verdict(&self, req: &mut OfflineRequest) -> Result<(), Reject> {
        self.run(req).await.0
    }
}

fn get(target: &str) -> OfflineRequest {
    OfflineRequest::new(Method::GET, target).unwrap()
}

fn with(mut req: OfflineRequest, headers: &[(&str, &str)]) -> OfflineRequest {
    for (n, v) in headers {
        req.headers.append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    req
}

fn bearer(req: OfflineRequest, token: &str) -> OfflineRequest {
    with(req, &[("authorization", &format!("Bearer {token}"))])
}

/// A POST to the token endpoint over (forwarded) HTTPS with a form body.
fn token_post(body: &str, headers: &[(&str, &str)]) -> OfflineRequest {
    let mut req = OfflineRequest::new(Method::POST, "/v1/oauth/token").unwrap();
    req.tls = true;
    req.body = body.as_bytes().to_vec();
    let len = body.len().to_string();
    let mut all = vec![
        ("content-type", "application/x-www-form-urlencoded"),
        ("content-length", len.as_str()),
    ];
    all.extend_from_slice(headers);
    with(req, &all)
}

#[tokio::test]
async fn a_reader_is_forwarded_with_its_identity_and_the_routed_path() {
    let core = Core::new().await;
    let mut req = bearer(
        get("/v1/studies/./42"),
        &core.token("u1", "read:studies write:studies"),
    );
    let (verdict, adm, trace) = core.run(&mut req).await;
    assert_eq!(verdict, Ok(()));
    assert_eq!(adm.route.as_ref().unwrap().name, "studies-read");
    assert_eq!(adm.rewritten_path.as_deref(), Some("/v1/studies/42"));
    assert_eq!(adm.auth_result, "ok");
    assert_eq!(
        adm.identity_headers()
            .map(|(n, v)| (n.as_str(), v))
            .collect::<Vec<_>>(),
        vec![
            ("x-auth-subject", "u1"),
            ("x-auth-client-id", "app"),
            ("x-auth-scopes", "read:studies write:studies"),
        ]
    );
    let rate = adm.rate.unwrap();
    assert_eq!((rate.limit, rate.remaining), (2, 1));
    // The trace names every gate it passed, in order.
    let names: Vec<String> = trace
        .steps
        .iter()
        .map(|s| {
            serde_json::to_value(s).unwrap()["step"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        names,
        [
            "target",
            "path",
            "route",
            "tls",
            "credentials",
            "token",
            "scopes",
            "limit",
            "verdict"
        ]
    );
    assert!(trace.steps.contains(&Step::Limit {
        scope: "studies-read".into(),
        source: "sub".into(),
        key: "sub:u1".into(),
        allowed: true,
        limit: 2,
        remaining: 1,
    }));
    // A trace never holds the token.
    let text = serde_json::to_string(&trace).unwrap();
    let token = core.token("u1", "read:studies write:studies");
    assert!(!text.contains(token.split('.').nth(2).unwrap()));
}

#[tokio::test]
async fn the_proxy_path_and_a_recorded_trace_decide_alike() {
    let core = Core::new().await;
    let token = core.token("u2", "read:studies");
    for target in ["/v1/studies/1", "/v1/nope", "/v1/studies/1%2Fx"] {
        let mut adm = Admission::default();
        let off = decide(
            &core.snap,
            &core.metrics,
            &mut bearer(get(target), &token),
            &mut adm,
            &mut Off,
            Effects::Count,
        )
        .await;
        let recorded = core.verdict(&mut bearer(get(target), &token)).await;
        assert_eq!(
            off.map_err(|r| r.reason()),
            recorded.map_err(|r| r.reason())
        );
    }
}

#[tokio::test]
async fn absolute_form_is_routed_by_its_path_and_keeps_its_authority() {
    let core = Core::new().await;
    let (verdict, adm, _) = core
        .run(&mut get("http://api.example/v1/public/a?q=1"))
        .await;
    assert_eq!(verdict, Ok(()));
    assert_eq!(adm.target_authority.as_deref(), Some("api.example"));
    assert_eq!(adm.rewritten_path.as_deref(), Some("/v1/public/a"));
}

#[tokio::test]
async fn refusals_before_routing() {
    let core = Core::new().await;
    // Malformed: framing or names an upstream could read differently.
    let mut lower =
        OfflineRequest::new(Method::from_bytes(b"get").unwrap(), "/v1/public/a").unwrap();
    assert!(matches!(
        core.verdict(&mut lower).await,
        Err(Reject::Malformed(_))
    ));
    let two_lengths = with(
        get("/v1/public/a"),
        &[("content-length", "1"), ("content-length", "1")],
    );
    let gzip = with(
        get("/v1/public/a"),
        &[("transfer-encoding", "gzip, chunked")],
    );
    let both = with(
        get("/v1/public/a"),
        &[("transfer-encoding", "chunked"), ("content-length", "3")],
    );
    for mut req in [two_lengths, gzip, both] {
        assert!(matches!(
            core.verdict(&mut req).await,
            Err(Reject::Malformed(_))
        ));
    }
    // BadTarget: not origin-form, not http(s) absolute-form, not UTF-8.
    let mut req = get("/v1/public/a");
    req.raw_target = b"x:/v1/public/a".to_vec();
    assert!(matches!(
        core.verdict(&mut req).await,
        Err(Reject::BadTarget(_))
    ));
    req.raw_target = b"/v1/public/\xff".to_vec();
    assert_eq!(
        core.verdict(&mut req).await,
        Err(Reject::BadTarget("request target is not valid UTF-8"))
    );
    // BadPath: what normalisation cannot read.
    assert!(matches!(
        core.verdict(&mut get("/v1/public/%zz")).await,
        Err(Reject::BadPath(_))
    ));
    // EncodedSlash: refused where the route does not opt in, and when no route matches.
    assert_eq!(
        core.verdict(&mut get("/v1/public/a%2Fb")).await,
        Err(Reject::EncodedSlash)
    );
    assert_eq!(
        core.verdict(&mut get("/v1/nowhere/a%2Fb")).await,
        Err(Reject::EncodedSlash)
    );
    assert_eq!(core.verdict(&mut get("/v1/files/a%2Fb")).await, Ok(()));
    // NoRoute.
    assert_eq!(
        core.verdict(&mut get("/v1/nowhere")).await,
        Err(Reject::NoRoute)
    );
    let mut post = OfflineRequest::new(Method::POST, "/v1/studies/1").unwrap();
    assert_eq!(core.verdict(&mut post).await, Err(Reject::NoRoute));
}

#[tokio::test]
async fn underscore_names_are_refused_only_where_configured() {
    let req = || with(get("/v1/public/a"), &[("x_auth_subject", "admin")]);
    let core = Core::new().await;
    assert_eq!(core.verdict(&mut req()).await, Ok(()));
    let core = Core::with(
        |t| {
            t.replace(
                "[server]\n",
                "[server]\nheaders_with_underscores = \"refuse\"\n",
            )
        },
        true,
    )
    .await;
    assert!(matches!(
        core.verdict(&mut req()).await,
        Err(Reject::Malformed(_))
    ));
}

#[tokio::test]
async fn tls_required_unless_https_or_a_trusted_proxy_says_so() {
    let core = Core::new().await;
    let form = "grant_type=client_credentials&client_id=app";
    let mut plain = token_post(form, &[]);
    plain.tls = false;
    assert_eq!(
        core.verdict(&mut plain).await,
        Err(Reject::TlsRequired { status: 403 })
    );
    // X-Forwarded-Proto counts from a trusted proxy only.
    let mut untrusted = token_post(form, &[("x-forwarded-proto", "https")]);
    untrusted.tls = false;
    assert!(core.verdict(&mut untrusted).await.is_err());
    let mut trusted = token_post(form, &[("x-forwarded-proto", "https")]);
    trusted.tls = false;
    trusted.peer = Some("10.1.2.3".parse().unwrap());
    assert_eq!(core.verdict(&mut trusted).await, Ok(()));
}

#[tokio::test]
async fn token_refusals() {
    let core = Core::new().await;
    let studies = || get("/v1/studies/1");
    let auth = |r: Result<(), Reject>| match r {
        Err(Reject::Auth(e)) => e,
        other => panic!("expected an auth refusal, got {other:?}"),
    };
    // No credentials, and another scheme (RFC 6750 §3.1: no error attribute).
    assert_eq!(
        auth(core.verdict(&mut studies()).await),
        AuthError::MissingToken
    );
    let mut basic = with(studies(), &[("authorization", "Basic YTpi")]);
    assert_eq!(
        auth(core.verdict(&mut basic).await),
        AuthError::MissingToken
    );
    // Bearer without a token, or two Authorization headers: 400.
    let mut empty = with(studies(), &[("authorization", "Bearer ")]);
    let e = auth(core.verdict(&mut empty).await);
    assert!(matches!(e, AuthError::InvalidRequest(_)), "{e:?}");
    let t = core.token("u1", "read:studies");
    let mut twice = with(
        studies(),
        &[
            ("authorization", &format!("Bearer {t}")),
            ("authorization", &format!("Bearer {t}")),
        ],
    );
    assert!(matches!(
        auth(core.verdict(&mut twice).await),
        AuthError::InvalidRequest(_)
    ));
    // Expired.
    let mut c = core.claims("u1", "read:studies");
    c["exp"] = json!(now() - 60);
    let mut expired = bearer(studies(), &core.key.mint(json!({}), &c));
    assert_eq!(auth(core.verdict(&mut expired).await), AuthError::Expired);
    // A signature by another key under the same kid.
    let forger = SigningKey::generate("k1", KeyAlg::ES256).unwrap();
    let mut forged = bearer(
        studies(),
        &forger.mint(json!({}), &core.claims("u1", "read:studies")),
    );
    assert_eq!(
        auth(core.verdict(&mut forged).await),
        AuthError::BadSignature
    );
    // Another issuer than the route accepts; an issuer nobody configured.
    let mut c = core.claims("u1", "read:studies");
    c["iss"] = json!("https://other.test.local");
    let mut other = bearer(studies(), &core.key.mint(json!({}), &c));
    assert_eq!(
        auth(core.verdict(&mut other).await),
        AuthError::IssuerNotAllowed
    );
    c["iss"] = json!("https://evil.test.local");
    let mut unknown = bearer(studies(), &core.key.mint(json!({}), &c));
    assert_eq!(
        auth(core.verdict(&mut unknown).await),
        AuthError::WrongIssuer
    );
    // An algorithm the issuer does not allow.
    let mut none_alg = bearer(
        studies(),
        &core
            .key
            .mint(json!({"alg": "HS256"}), &core.claims("u1", "read:studies")),
    );
    assert!(matches!(
        auth(core.verdict(&mut none_alg).await),
        AuthError::AlgNotAllowed(_)
    ));
    // Refusals are counted by reason.
    let text = String::from_utf8(core.metrics.render()).unwrap();
    assert!(
        text.contains(r#"gateway_rejections_total{reason="expired",route="studies-read"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn keys_not_loaded_is_503_not_a_refusal_of_the_token() {
    let core = Core::with(|t| t, false).await;
    let t = core.token("u1", "read:studies");
    let r = core.verdict(&mut bearer(get("/v1/studies/1"), &t)).await;
    assert_eq!(r, Err(Reject::Auth(AuthError::KeysUnavailable)));
    assert_eq!(r.unwrap_err().status(), 503);
}

#[tokio::test]
async fn a_token_without_the_scope_is_403_naming_it() {
    let core = Core::new().await;
    let t = core.token("u1", "read:profile");
    let (verdict, adm, trace) = core.run(&mut bearer(get("/v1/studies/1"), &t)).await;
    let reject = verdict.unwrap_err();
    assert_eq!(reject.status(), 403);
    assert!(matches!(&reject, Reject::Scope(m) if m.0 == "read:studies"));
    assert_eq!(adm.auth_result, "insufficient_scope");
    assert!(trace.steps.contains(&Step::Scopes {
        required: "read:studies".into(),
        granted: "read:profile".into(),
        missing: Some("read:studies".into()),
    }));
    // Nothing was counted against the limit.
    assert!(adm.rate.is_none());
}

#[tokio::test]
async fn the_third_request_in_a_minute_is_429_for_that_subject_only() {
    let core = Core::new().await;
    let t1 = core.token("u1", "read:studies");
    for _ in 0..2 {
        assert_eq!(
            core.verdict(&mut bearer(get("/v1/studies/1"), &t1)).await,
            Ok(())
        );
    }
    let (verdict, adm, _) = core.run(&mut bearer(get("/v1/studies/1"), &t1)).await;
    match verdict {
        Err(Reject::RateLimited { retry_after_secs }) => {
            assert!((1..=60).contains(&retry_after_secs))
        }
        other => panic!("expected 429, got {other:?}"),
    }
    assert_eq!(adm.rate.unwrap().remaining, 0);
    let t2 = core.token("u2", "read:studies");
    assert_eq!(
        core.verdict(&mut bearer(get("/v1/studies/1"), &t2)).await,
        Ok(())
    );
}

#[tokio::test]
async fn a_full_limiter_store_fails_closed_with_503() {
    let core = Core::with(
        |t| {
            t.replace(
                "[admin]\n",
                "[rate_limit]\nmemory_max_keys = 1\non_backend_error = \"fail_closed\"\n\n[admin]\n",
            )
        },
        true,
    )
    .await;
    let t1 = core.token("u1", "read:studies");
    let t2 = core.token("u2", "read:studies");
    assert_eq!(
        core.verdict(&mut bearer(get("/v1/studies/1"), &t1)).await,
        Ok(())
    );
    assert_eq!(
        core.verdict(&mut bearer(get("/v1/studies/1"), &t2)).await,
        Err(Reject::LimiterUnavailable)
    );
}

#[tokio::test]
async fn the_token_endpoint_counts_the_client_an_authorization_server_would_read() {
    let core = Core::new().await;
    let (verdict, adm, trace) = core
        .run(&mut token_post(
            "grant_type=client_credentials&client_id=app-1",
            &[],
        ))
        .await;
    assert_eq!(verdict, Ok(()));
    assert_eq!(adm.client_id.as_deref(), Some("app-1"));
    assert!(trace.steps.contains(&Step::Client {
        client_id: Some("app-1".into())
    }));
    // Basic and the body agree: one client.
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "app-1:s3cret")
    );
    assert_eq!(
        core.verdict(&mut token_post(
            "client_id=app-1",
            &[("authorization", &basic)]
        ))
        .await,
        Ok(())
    );
    // ClientAuthConflict: two clients, two methods, a parameter twice.
    for (body, headers) in [
        ("client_id=app-2", vec![("authorization", basic.as_str())]),
        ("client_secret=x", vec![("authorization", basic.as_str())]),
        ("client_id=a&client_id=b", vec![]),
    ] {
        let r = core.verdict(&mut token_post(body, &headers)).await;
        assert!(
            matches!(
                r,
                Err(Reject::ClientAuthConflict(_)) | Err(Reject::BadBody(_))
            ),
            "{body}: {r:?}"
        );
    }
    let r = core
        .verdict(&mut token_post("client_id=a&client_id=b", &[]))
        .await;
    assert!(matches!(r, Err(Reject::BadBody(_))), "{r:?}");
    let r = core
        .verdict(&mut token_post(
            "client_id=app-2",
            &[("authorization", &basic)],
        ))
        .await;
    assert!(matches!(r, Err(Reject::ClientAuthConflict(_))), "{r:?}");
    // BodyTooLarge: announced, or read.
    let big = "a".repeat(70_000);
    let r = core.verdict(&mut token_post(&big, &[])).await;
    assert!(matches!(r, Err(Reject::BodyTooLarge(_))), "{r:?}");
    let mut unannounced = token_post("client_id=x", &[]);
    unannounced.headers.remove(CONTENT_LENGTH);
    unannounced.body = big.into_bytes();
    let r = core.verdict(&mut unannounced).await;
    assert!(matches!(r, Err(Reject::BodyTooLarge(_))), "{r:?}");
    // BadBody: a length that is no number is malformed framing before anything else.
    let mut bad_len = token_post("client_id=x", &[]);
    bad_len
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from_static("x"));
    assert!(matches!(
        core.verdict(&mut bad_len).await,
        Err(Reject::Malformed(_))
    ));
}

#[tokio::test]
async fn every_reject_reason_has_a_standard_json_answer() {
    let all = [
        Reject::NoRoute,
        Reject::BadPath("p"),
        Reject::BadTarget("t"),
        Reject::EncodedSlash,
        Reject::Malformed("m"),
        Reject::ClientAuthConflict("c"),
        Reject::TlsRequired { status: 426 },
        Reject::Auth(AuthError::Expired),
        Reject::Scope(crate::policy::MissingScopes("s".into())),
        Reject::RateLimited {
            retry_after_secs: 3,
        },
        Reject::LimiterUnavailable,
        Reject::BodyTooLarge(10),
        Reject::BadBody("b"),
    ];
    for r in all {
        let body: Value = serde_json::from_slice(&r.body()).unwrap();
        let error = body["error"].as_str().unwrap();
        assert!(
            !error.is_empty() && body["error_description"].is_string(),
            "{r:?}"
        );
        assert!((400..600).contains(&r.status()), "{r:?}");
        assert!(
            r.status() < 500 || error == "temporarily_unavailable",
            "{r:?}"
        );
    }
}

/// A report-mode route beside the enforced ones, and a public route whose first limit only
/// reports (same key as an enforced one).
const REPORT_ROUTES: &str = r#"
[[routes]]
name = "studies-report"
methods = ["GET"]
path = "/v1/report/{id}"
upstream = "api"
scopes = ["read:studies"]
issuers = ["main"]
mode = "report"

[[routes]]
name = "quota"
path = "/v1/quota/*"
upstream = "api"
auth = "none"
[[routes.rate_limit]]
requests = 1
period = "1m"
key = ["ip"]
report_only = true
[[routes.rate_limit]]
requests = 3
period = "1m"
key = ["ip"]
"#;

async fn report_core() -> Core {
    Core::with(|t| t + REPORT_ROUTES, true).await
}

fn report_metric(core: &Core, route: &str, reason: &str) -> Option<String> {
    let text = String::from_utf8(core.metrics.render()).unwrap();
    let series =
        format!(r#"gateway_report_only_denials_total{{reason="{reason}",route="{route}"}} "#);
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()).map(str::to_string))
}

#[tokio::test]
async fn report_mode_forwards_an_invalid_token_without_identity_and_says_why() {
    let core = report_core().await;
    let mut c = core.claims("u1", "read:studies");
    c["exp"] = json!(now() - 60);
    let expired = core.key.mint(json!({}), &c);
    let (verdict, adm, trace) = core.run(&mut bearer(get("/v1/report/1"), &expired)).await;
    assert_eq!(verdict, Ok(()));
    assert_eq!(adm.would_deny, Some("expired"));
    assert_eq!(adm.auth_result, "expired");
    assert!(adm.principal.is_none());
    assert_eq!(adm.identity_headers().count(), 0);
    assert!(trace.steps.contains(&Step::WouldDeny {
        status: 401,
        reason: "expired"
    }));
    // No token at all: the same, for its own reason.
    let (verdict, adm, _) = core.run(&mut get("/v1/report/1")).await;
    assert_eq!(verdict, Ok(()));
    assert_eq!(adm.would_deny, Some("missing"));
    // Counted as a report-only denial, not as a rejection.
    assert_eq!(
        report_metric(&core, "studies-report", "expired").as_deref(),
        Some("1")
    );
    assert_eq!(
        report_metric(&core, "studies-report", "missing").as_deref(),
        Some("1")
    );
    let text = String::from_utf8(core.metrics.render()).unwrap();
    assert!(!text.contains("gateway_rejections_total{"), "{text}");
    // A valid token with its scope: nothing to report.
    let ok = core.token("u1", "read:studies");
    let (verdict, adm, _) = core.run(&mut bearer(get("/v1/report/1"), &ok)).await;
    assert_eq!(verdict, Ok(()));
    assert_eq!(adm.would_deny, None);
    assert_eq!(adm.identity_headers().count(), 3);
    // The same token is still refused on an enforced route.
    assert_eq!(
        core.verdict(&mut bearer(get("/v1/studies/1"), &expired))
            .await
            .map_err(|r| r.reason()),
        Err("expired")
    );
}

#[tokio::test]
async fn report_mode_forwards_a_missing_scope_with_the_callers_identity() {
    let core = report_core().await;
    let t = core.token("u1", "read:profile");
    let (verdict, adm, trace) = core.run(&mut bearer(get("/v1/report/1"), &t)).await;
    assert_eq!(verdict, Ok(()));
    assert_eq!(adm.would_deny, Some("insufficient_scope"));
    // The token is valid: its identity is forwarded.
    assert_eq!(
        adm.identity_headers()
            .map(|(n, v)| (n.as_str(), v))
            .collect::<Vec<_>>(),
        vec![
            ("x-auth-subject", "u1"),
            ("x-auth-client-id", "app"),
            ("x-auth-scopes", "read:profile"),
        ]
    );
    assert!(trace.steps.contains(&Step::WouldDeny {
        status: 403,
        reason: "insufficient_scope"
    }));
    assert_eq!(
        report_metric(&core, "studies-report", "insufficient_scope").as_deref(),
        Some("1")
    );
}

#[tokio::test]
async fn a_report_only_limit_forwards_over_quota_and_the_enforced_one_still_counts() {
    let core = report_core().await;
    // 1: within both limits.
    let (verdict, adm, _) = core.run(&mut get("/v1/quota/a")).await;
    assert_eq!(verdict, Ok(()));
    assert_eq!(adm.would_deny, None);
    // 2 and 3: over the report-only 1/min, within the enforced 3/min.
    for _ in 0..2 {
        let (verdict, adm, trace) = core.run(&mut get("/v1/quota/a")).await;
        assert_eq!(verdict, Ok(()));
        assert_eq!(adm.would_deny, Some("rate_limited"));
        // The headers say what the limiter says: nothing left (under the report-only
        // limit, and after the third request under the enforced one too).
        assert_eq!(adm.rate.unwrap().remaining, 0);
        assert!(trace.steps.contains(&Step::WouldDeny {
            status: 429,
            reason: "rate_limited"
        }));
    }
    // 4: the enforced limit counted all three and refuses.
    assert!(matches!(
        core.verdict(&mut get("/v1/quota/a")).await,
        Err(Reject::RateLimited { .. })
    ));
    assert_eq!(
        report_metric(&core, "quota", "rate_limited").as_deref(),
        Some("2")
    );
}

#[tokio::test]
async fn request_shape_refusals_are_enforced_on_a_report_route() {
    let core = report_core().await;
    let t = core.token("u1", "read:studies");
    assert_eq!(
        core.verdict(&mut bearer(get("/v1/report/a%2Fb"), &t)).await,
        Err(Reject::EncodedSlash)
    );
    assert!(matches!(
        core.verdict(&mut get("/v1/report/%zz")).await,
        Err(Reject::BadPath(_))
    ));
    let mut lower =
        OfflineRequest::new(Method::from_bytes(b"get").unwrap(), "/v1/report/1").unwrap();
    assert!(matches!(
        core.verdict(&mut lower).await,
        Err(Reject::Malformed(_))
    ));
    let mut two_lengths = with(
        get("/v1/report/1"),
        &[("content-length", "1"), ("content-length", "1")],
    );
    assert!(matches!(
        core.verdict(&mut two_lengths).await,
        Err(Reject::Malformed(_))
    ));
    let mut req = get("/v1/report/1");
    req.raw_target = b"x:/v1/report/1".to_vec();
    assert!(matches!(
        core.verdict(&mut req).await,
        Err(Reject::BadTarget(_))
    ));
    let text = String::from_utf8(core.metrics.render()).unwrap();
    assert!(
        !text.contains("gateway_report_only_denials_total{"),
        "{text}"
    );
}
