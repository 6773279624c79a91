//! `explain` against the live proxy: for every reason the proxy refuses a request (and for a
//! forwarded one), the same request is sent to the running gateway, to its admin
//! `POST /explain`, and to the `explain` command; all three must give the same status and
//! reason (the live reason read from `gateway_rejections_total`). Explain never consumes
//! quota, never reaches the upstream, moves no metric, and never prints the token.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// One request, as bytes for the live proxy and as fields for explain.
struct Probe {
    name: &'static str,
    method: &'static str,
    target: &'static str,
    headers: Vec<(&'static str, String)>,
    body: String,
    token: Option<String>,
}

impl Probe {
    fn new(name: &'static str, method: &'static str, target: &'static str) -> Self {
        Probe {
            name,
            method,
            target,
            headers: Vec::new(),
            body: String::new(),
            token: None,
        }
    }

    fn header(mut self, n: &'static str, v: &str) -> Self {
        self.headers.push((n, v.to_string()));
        self
    }

    fn body(mut self, content_type: &str, body: &str) -> Self {
        self.body = body.to_string();
        self.header("content-type", content_type)
    }

    fn token(mut self, t: String) -> Self {
        self.token = Some(t);
        self
    }

    fn bytes(&self, addr: SocketAddr) -> Vec<u8> {
        let mut out = format!(
            "{} {} HTTP/1.1\r\nhost: {addr}\r\n",
            self.method, self.target
        );
        for (n, v) in &self.headers {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        if let Some(t) = &self.token {
            out.push_str(&format!("authorization: Bearer {t}\r\n"));
        }
        if !self.body.is_empty() && !self.headers.iter().any(|(n, _)| *n == "content-length") {
            out.push_str(&format!("content-length: {}\r\n", self.body.len()));
        }
        out.push_str("connection: close\r\n\r\n");
        out.push_str(&self.body);
        out.into_bytes()
    }

    fn json(&self) -> Value {
        let mut headers: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (n, v) in &self.headers {
            headers.entry(n).or_default().push(v.clone());
        }
        json!({
            "method": self.method,
            "path": self.target,
            "headers": headers,
            "token": self.token,
            "body": self.body,
        })
    }
}

/// `{(route, reason): count}` of `gateway_rejections_total`.
fn rejections(metrics: &str) -> BTreeMap<(String, String), f64> {
    let mut out = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("gateway_rejections_total{") else {
            continue;
        };
        let (labels, value) = rest.split_once("} ").unwrap();
        let label = |k: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap()
        };
        out.insert((label("route"), label("reason")), value.parse().unwrap());
    }
    out
}

/// The live reason of the last request: the one rejection counter that moved (`forwarded`
/// when none did).
fn moved(
    before: &BTreeMap<(String, String), f64>,
    after: &BTreeMap<(String, String), f64>,
) -> String {
    let changed: Vec<&(String, String)> = after
        .iter()
        .filter(|(k, v)| before.get(*k).copied().unwrap_or(0.0) != **v)
        .map(|(k, _)| k)
        .collect();
    match changed.as_slice() {
        [] => "forwarded".into(),
        [(_, reason)] => reason.clone(),
        more => panic!("more than one counter moved: {more:?}"),
    }
}

fn config(li: &LocalIssuer, echo: &EchoUpstream) -> Config {
    Config::basic(li, echo)
        .trusted_proxies(&["127.0.0.1/32"])
        .server_set("max_body_bytes", 256)
        .route(
            RouteSpec::new("studies", "/v1/studies/{id}", "api")
                .methods(&["GET"])
                .scopes(&["read:studies"])
                .rate_limit(3, "1m", &["sub"]),
        )
        .route(RouteSpec::new("public", "/v1/public/*", "api").public())
        .route(
            RouteSpec::new("token", "/v1/oauth/token", "api")
                .methods(&["POST"])
                .public()
                .set("require_tls", true)
                .rate_limit(100, "1m", &["client_id", "ip"]),
        )
}

fn probes(li: &LocalIssuer) -> Vec<Probe> {
    let good = token(li, "u1", "read:studies");
    let claims = li.claims("u1", "read:studies", 600);
    let https = |p: Probe| p.header("x-forwarded-proto", "https");
    let form = "application/x-www-form-urlencoded";
    vec![
        Probe::new("forwarded", "GET", "/v1/studies/7").token(good.clone()),
        Probe::new("public forwarded", "GET", "/v1/public/a"),
        Probe::new("no_route", "GET", "/v1/nowhere"),
        Probe::new("bad_path", "GET", "/v1/public/%zz"),
        Probe::new("bad_target", "GET", "x:/v1/public/a"),
        Probe::new("encoded_slash", "GET", "/v1/public/a%2Fb"),
        Probe::new("malformed_request", "GET", "/v1/public/a")
            .header("content-length", "0")
            .header("content-length", "0"),
        Probe::new("tls_required", "POST", "/v1/oauth/token").body(form, "client_id=app"),
        https(Probe::new(
            "client_auth_conflict",
            "POST",
            "/v1/oauth/token",
        ))
        .header("authorization", "Basic YXBwLWE6cw==")
        .body(form, "client_id=app-b"),
        https(Probe::new("body_too_large", "POST", "/v1/oauth/token"))
            .body(form, &format!("client_id={}", "a".repeat(300))),
        https(Probe::new("bad_body", "POST", "/v1/oauth/token"))
            .body(form, "client_id=a&client_id=b"),
        Probe::new("missing", "GET", "/v1/studies/7"),
        Probe::new("basic is no credentials", "GET", "/v1/studies/7")
            .header("authorization", "Basic dTE6cHc="),
        Probe::new("invalid_request", "GET", "/v1/studies/7").header("authorization", "Bearer"),
        Probe::new("malformed", "GET", "/v1/studies/7").token("a.b".into()),
        Probe::new("expired", "GET", "/v1/studies/7")
            .token(li.mint(&patch(claims.clone(), json!({"exp": now() - 600})))),
        Probe::new("wrong_audience", "GET", "/v1/studies/7")
            .token(li.mint(&patch(claims.clone(), json!({"aud": "https://other"})))),
        Probe::new("wrong_issuer", "GET", "/v1/studies/7")
            .token(li.mint(&patch(claims.clone(), json!({"iss": "https://evil"})))),
        Probe::new("unknown_kid", "GET", "/v1/studies/7").token(li.mint_with(
            "rsa-1",
            json!({"kid": "nope"}),
            &claims,
        )),
        Probe::new("bad_signature", "GET", "/v1/studies/7").token({
            let p = token_parts(&good);
            format!("{}.{}.{}", p[0], p[1], b64url(&[7u8; 256]))
        }),
        Probe::new("alg_not_allowed", "GET", "/v1/studies/7").token(hs256(
            &json!({"alg": "HS256", "kid": "rsa-1"}),
            &claims,
            b"k",
        )),
        Probe::new("insufficient_scope", "GET", "/v1/studies/7").token(token(
            li,
            "u2",
            "read:profile",
        )),
    ]
}

async fn admin_explain(gw: &TestGateway, body: &Value) -> Value {
    let r = send(gw.client().post(gw.admin_url("/explain")).json(body)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_str(&r.text()).unwrap()
}

/// Runs the CLI off the test's runtime thread: the local issuer it fetches keys from is served
/// by that runtime.
async fn cli_explain(gw: &TestGateway, p: &Probe) -> Value {
    let config = gw.config_path().to_path_buf();
    let probe = Probe {
        name: p.name,
        method: p.method,
        target: p.target,
        headers: p.headers.clone(),
        body: p.body.clone(),
        token: p.token.clone(),
    };
    tokio::task::spawn_blocking(move || cli_explain_blocking(&config, &probe))
        .await
        .unwrap()
}

fn cli_explain_blocking(config: &std::path::Path, p: &Probe) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = vec![
        "explain".into(),
        "--config".into(),
        config.to_str().unwrap().into(),
        "--method".into(),
        p.method.into(),
        "--path".into(),
        p.target.into(),
        "--json".into(),
    ];
    for (n, v) in &p.headers {
        args.push("--header".into());
        args.push(format!("{n}: {v}"));
    }
    if !p.body.is_empty() {
        args.push("--body".into());
        args.push(p.body.clone());
    }
    if let Some(t) = &p.token {
        let f = dir.path().join("token");
        std::fs::write(&f, t).unwrap();
        args.push("--token-file".into());
        args.push(f.to_str().unwrap().into());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, out, err) = run_bin(&refs, &[], Duration::from_secs(30));
    assert!(matches!(status.code(), Some(0 | 1)), "{}: {err}", p.name);
    if let Some(t) = &p.token {
        let sig = t.rsplit('.').next().unwrap();
        assert!(
            sig.len() < 4 || (!out.contains(sig) && !err.contains(sig)),
            "{}: signature printed",
            p.name
        );
    }
    let mut v: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{}: {e}: {out}", p.name));
    v["stderr"] = json!(err);
    v
}

#[tokio::test]
async fn explain_gives_the_live_proxys_status_and_reason_for_every_refusal() {
    let (li, echo) = (local_issuer().await, echo_upstream().await);
    let gw = TestGateway::start(&config(&li, &echo)).await;
    for p in probes(&li) {
        // Explain first (admin and CLI): nothing may move, nothing may reach the upstream.
        let hits = echo.hits();
        let m0 = gw.metrics().await;
        let admin = admin_explain(&gw, &p.json()).await;
        let cli = cli_explain(&gw, &p).await;
        let m1 = gw.metrics().await;
        assert_eq!(
            echo.hits(),
            hits,
            "{}: explain reached the upstream",
            p.name
        );
        assert_eq!(
            rejections(&m0),
            rejections(&m1),
            "{}: explain counted",
            p.name
        );
        // Then the live proxy.
        let live = raw_request(gw.addr(), &p.bytes(gw.addr()))
            .await
            .unwrap_or_else(|| panic!("{}: no answer", p.name));
        let m2 = gw.metrics().await;
        let reason = moved(&rejections(&m1), &rejections(&m2));
        let status = if reason == "forwarded" {
            200
        } else {
            live.status
        };
        for (who, e) in [("admin", &admin), ("cli", &cli)] {
            assert_eq!(
                e["status"],
                json!(status),
                "{}: {who} status: {e:#}",
                p.name
            );
            assert_eq!(
                e["reason"],
                json!(reason),
                "{}: {who} reason: {e:#}",
                p.name
            );
            assert_eq!(
                e["www_authenticate"].as_str(),
                live.header("www-authenticate"),
                "{}: {who}",
                p.name
            );
            assert!(
                e["lines"].as_array().is_some_and(|l| !l.is_empty()),
                "{}: {who} has no lines",
                p.name
            );
        }
        if reason != "forwarded" {
            let body: Value = serde_json::from_slice(&live.body).unwrap();
            assert_eq!(admin["error"], body["error"], "{}", p.name);
        }
    }
}

#[tokio::test]
async fn explain_shows_the_live_quota_and_never_consumes_it() {
    let (li, echo) = (local_issuer().await, echo_upstream().await);
    let gw = TestGateway::start(&config(&li, &echo)).await;
    let t = token(&li, "quota-user", "read:studies");
    let probe = json!({"path": "/v1/studies/1", "token": t});
    // Two live requests of three.
    for _ in 0..2 {
        assert_eq!(gw.get_with_token("/v1/studies/1", &t).await.status, 200);
    }
    // Explain, many times: the third would pass and leave none; it is not used up.
    for _ in 0..5 {
        let e = admin_explain(&gw, &probe).await;
        assert_eq!(e["status"], 200, "{e:#}");
        assert_eq!(e["rate_limit"]["remaining"], 0, "{e:#}");
        assert_eq!(e["rate_limit"]["limit"], 3);
        assert_eq!(e["identity_headers"]["x-auth-subject"], "quota-user");
    }
    assert_eq!(gw.get_with_token("/v1/studies/1", &t).await.status, 200);
    // Now the live limiter has none left: explain says 429, and so does the proxy.
    let e = admin_explain(&gw, &probe).await;
    assert_eq!(
        (e["status"].clone(), e["reason"].clone()),
        (json!(429), json!("rate_limited"))
    );
    assert_eq!(gw.get_with_token("/v1/studies/1", &t).await.status, 429);
    // The answer never carries the token or its signature.
    let text = e.to_string();
    assert!(!text.contains(&t) && !text.contains(t.rsplit('.').next().unwrap()));
}

#[tokio::test]
async fn explain_tells_the_steps_a_person_needs() {
    let (li, echo) = (local_issuer().await, echo_upstream().await);
    let gw = TestGateway::start(&config(&li, &echo)).await;
    let expired = li.mint(&patch(
        li.claims("u1", "read:studies", 600),
        json!({"exp": now() - 180}),
    ));
    let e = admin_explain(&gw, &json!({"path": "/v1/studies/./1", "token": expired})).await;
    let lines: Vec<&str> = e["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    let has = |s: &str| lines.iter().any(|l| l.contains(s));
    assert!(
        has("path      /v1/studies/./1 -> /v1/studies/1 (normalised)"),
        "{lines:#?}"
    );
    assert!(has("route     studies"), "{lines:#?}");
    assert!(has("is issuer main"), "{lines:#?}");
    assert!(has("kid \"rsa-1\" is in main's key set"), "{lines:#?}");
    assert!(has("algorithm RS256 is allowed"), "{lines:#?}");
    assert!(has("exp       expired 3 min ago"), "{lines:#?}");
    assert!(has("verdict   401 (expired)"), "{lines:#?}");
    assert!(
        has("www-authenticate: Bearer realm=\"wetrials\", error=\"invalid_token\""),
        "{lines:#?}"
    );
    assert_eq!(e["token"]["claims"]["sub"], "u1");
    // A route that did not match says why.
    let e = admin_explain(
        &gw,
        &json!({"method": "POST", "path": "/v1/public/x/../../studies/1"}),
    )
    .await;
    let text = e["lines"].to_string();
    assert!(
        text.contains("not studies: method POST not in [GET]"),
        "{text}"
    );
    // Bad input is a 400 JSON error naming the problem, never echoing a value.
    for bad in [
        json!({"path": 7}),
        json!({"path": "/x", "tokn": "eyJsecret"}),
        json!([]),
    ] {
        let r = send(gw.client().post(gw.admin_url("/explain")).json(&bad)).await;
        assert_eq!(r.status, 400, "{bad}");
        let body: Value = serde_json::from_str(&r.text()).unwrap();
        assert_eq!(body["error"], "invalid_request");
        assert!(!r.text().contains("eyJsecret"));
    }
}
