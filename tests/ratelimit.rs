//! Rate limits end to end (README "Rate limits"): the real gateway binary, a real JWKS issuer, a real echo
//! upstream and, for the shared backend, a real `redis-server` started by the test.
//!
//! - The documented limits are checked on `config/gateway.toml` itself (only its listen
//!   addresses, upstream peers and JWKS URL are replaced): each admits exactly N, then 429 with
//!   `Retry-After` and the `RateLimit-*` headers, and the 429s never reach the upstream.
//! - Window semantics on short periods (2 s): sliding, no double burst, rejections consume
//!   nothing, several limits on one route.
//! - Keys: `client_id` (Basic, form body, JSON body, token), anonymous, `ip` behind trusted
//!   proxies, `header:`, `cookie:`, `query:`; bodies reach the upstream byte for byte; bodies that
//!   are too large or malformed get 413/400, never a 5xx.
//! - Redis: exact limits, two gateways share one count, Redis killed (fail_open / fail_closed)
//!   and frozen (SIGSTOP), recovery when it returns, metrics.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

// ------------------------------------------------------------------------------- helpers

/// `iss` and `aud` of config/gateway.toml (kept as shipped: the local issuer mints them).
const SHIPPED_ISS: &str = "https://auth.wetrials.com";
const SHIPPED_AUD: &str = "https://api.wetrials.com";

/// Bound on one request while Redis is down or frozen, with `timeout_ms = 50`.
const DEGRADED_BOUND: Duration = Duration::from_millis(500);

fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "config/gateway.toml should contain {from:?} exactly once"
    );
    text.replacen(from, to, 1)
}

/// config/gateway.toml for a test: listeners, upgrade socket and pid file, the two upstream
/// peers and the JWKS URL replaced; `rate_limit` replaces the `backend = "memory"` line.
#[allow(clippy::too_many_arguments)]
fn shipped_text(
    shipped: &str,
    listen: SocketAddr,
    admin: SocketAddr,
    dir: &Path,
    issuer: &LocalIssuer,
    api: &EchoUpstream,
    auth: &EchoUpstream,
    rate_limit: Option<&str>,
) -> String {
    let mut t = replace_once(
        shipped,
        "listen = \"127.0.0.1:8080\"",
        &format!(
            "listen = \"{listen}\"\nupgrade_sock = \"{}\"\npid_file = \"{}\"",
            dir.join("upgrade.sock").display(),
            dir.join("gateway.pid").display()
        ),
    );
    t = replace_once(
        &t,
        "listen = \"127.0.0.1:9091\"",
        &format!("listen = \"{admin}\""),
    );
    t = replace_once(
        &t,
        "jwks_uri = \"https://auth.wetrials.com/.well-known/jwks.json\"",
        &format!("jwks_uri = \"{}\"", issuer.jwks_uri()),
    );
    t = replace_once(
        &t,
        "peers = [\"127.0.0.1:9000\"]",
        &format!("peers = [\"{}\"]", api.addr()),
    );
    t = replace_once(
        &t,
        "peers = [\"127.0.0.1:9001\"]",
        &format!("peers = [\"{}\"]", auth.addr()),
    );
    if let Some(rl) = rate_limit {
        t = replace_once(&t, "backend = \"memory\"", rl);
    }
    // These tests speak plain HTTP on loopback; the shipped OAuth routes are HTTPS-only
    // (`shipped_oauth_routes_refuse_plain_http` checks that as shipped).
    t.replace("require_tls = true", "require_tls = false")
}

/// The shipped config in front of a local issuer (its `iss`/`aud`) and two echo upstreams.
struct Shipped {
    issuer: LocalIssuer,
    auth: EchoUpstream,
    gw: TestGateway,
    _api: EchoUpstream,
}

impl Shipped {
    async fn start(rate_limit: Option<String>) -> Shipped {
        Self::start_with(rate_limit, |t| t).await
    }

    /// As shipped, with `tweak` applied to the text after the test's own replacements.
    async fn start_with(rate_limit: Option<String>, tweak: impl Fn(String) -> String) -> Shipped {
        let issuer = LocalIssuer::start(Some(SHIPPED_ISS), SHIPPED_AUD)
            .await
            .expect("local issuer");
        let api = echo_upstream().await;
        let auth = echo_upstream().await;
        let shipped =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/gateway.toml"))
                .expect("read config/gateway.toml");
        let gw = TestGateway::start_text(|listen, admin, dir| {
            tweak(shipped_text(
                &shipped,
                listen,
                admin,
                dir,
                &issuer,
                &api,
                &auth,
                rate_limit.as_deref(),
            ))
        })
        .await;
        Shipped {
            issuer,
            auth,
            gw,
            _api: api,
        }
    }

    /// A token for `sub` (unique `jti`, so two tokens of one subject differ).
    fn token(&self, sub: &str, client_id: &str) -> String {
        let claims = patch(
            self.issuer.claims(sub, "openid profile", 3600),
            json!({"client_id": client_id, "jti": uuid_like()}),
        );
        self.issuer.mint(&claims)
    }
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A unique key value (header, cookie, client id) for one test phase.
fn fresh(prefix: &str) -> String {
    format!("{prefix}-{}", uuid_like())
}

/// A gateway from the builder: local issuer "main", upstream "api" on an echo upstream.
struct Env {
    issuer: LocalIssuer,
    echo: EchoUpstream,
    gw: TestGateway,
}

impl Env {
    async fn start(routes: Vec<RouteSpec>, tweak: impl FnOnce(Config) -> Config) -> Env {
        let issuer = local_issuer().await;
        let echo = echo_upstream().await;
        let mut cfg = Config::basic(&issuer, &echo);
        for r in routes {
            cfg = cfg.route(r);
        }
        let gw = TestGateway::start(&tweak(cfg)).await;
        Env { issuer, echo, gw }
    }

    fn token(&self, claims: Value) -> String {
        let c = patch(
            self.issuer.claims("alice", "openid", 3600),
            json!({"jti": uuid_like()}),
        );
        self.issuer.mint(&patch(c, claims))
    }
}

/// `RateLimit-*` headers of an admitted request.
fn assert_rate_headers(r: &Reply, limit: u32, remaining: u32, period: u64, policy: &str) {
    assert_eq!(
        r.header("ratelimit-limit").as_deref(),
        Some(limit.to_string().as_str()),
        "RateLimit-Limit; got:\n{}",
        r.describe()
    );
    assert_eq!(
        r.header("ratelimit-remaining").as_deref(),
        Some(remaining.to_string().as_str()),
        "RateLimit-Remaining; got:\n{}",
        r.describe()
    );
    let reset: u64 = r
        .header("ratelimit-reset")
        .unwrap_or_else(|| panic!("RateLimit-Reset missing:\n{}", r.describe()))
        .parse()
        .expect("RateLimit-Reset is an integer");
    assert!(
        (1..=period).contains(&reset),
        "RateLimit-Reset {reset} not in 1..={period}:\n{}",
        r.describe()
    );
    assert_eq!(
        r.header("ratelimit-policy").as_deref(),
        Some(policy),
        "RateLimit-Policy; got:\n{}",
        r.describe()
    );
}

/// A 429 of a limit `limit` per `period` s whose first counted request was sent `since` ago:
/// JSON body, `Retry-After` between what is left of the window and the period, the headers.
/// Returns `Retry-After`.
fn assert_limited(r: &Reply, limit: u32, period: u64, policy: &str, since: Duration) -> u64 {
    let body = assert_json_error(r, 429, "rate_limit_exceeded");
    assert!(body["error_description"].is_string(), "{body}");
    let retry: u64 = r
        .header("retry-after")
        .unwrap_or_else(|| panic!("Retry-After missing:\n{}", r.describe()))
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After is not an integer:\n{}", r.describe()));
    let least = period.saturating_sub(since.as_secs() + 1).max(1);
    assert!(
        (least..=period).contains(&retry),
        "Retry-After {retry} not in {least}..={period} (first request {since:?} ago):\n{}",
        r.describe()
    );
    assert_rate_headers(r, limit, 0, period, policy);
    retry
}

/// Sends `n` requests from `make(i)`: each admitted (200, reaching the upstream) with
/// `RateLimit-Remaining` counting down from `n - 1` to 0; then one more: a 429 that never
/// reaches the upstream. Returns that 429.
async fn admits_exactly(
    echo: &EchoUpstream,
    (n, period, policy): (u32, u64, &str),
    what: &str,
    mut make: impl FnMut(u32) -> reqwest::RequestBuilder,
) -> Reply {
    let first = Instant::now();
    for i in 0..n {
        let before = echo.hits();
        let r = send(make(i)).await;
        assert_eq!(
            r.status,
            200,
            "{what}: request {} of {n} should be admitted:\n{}",
            i + 1,
            r.describe()
        );
        assert_eq!(
            echo.hits(),
            before + 1,
            "{what}: admitted request forwarded"
        );
        assert_rate_headers(&r, n, n - 1 - i, period, policy);
    }
    let before = echo.hits();
    let r = send(make(n)).await;
    assert_eq!(
        r.status,
        429,
        "{what}: request {} of {n}:\n{}",
        n + 1,
        r.describe()
    );
    assert_limited(&r, n, period, policy, first.elapsed());
    assert_eq!(
        echo.hits(),
        before,
        "{what}: a 429 must not reach the upstream"
    );
    r
}

async fn sleep_until(t: Instant) {
    tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await;
}

// ------------------------------------------------------------------------------- shipped limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_oauth_routes_refuse_plain_http() {
    // Undo the plain-HTTP switch of `shipped_text`: the file as shipped, except a trusted
    // balancer on loopback so that one request can come "over TLS".
    let env = Shipped::start_with(None, |t| {
        t.replace("require_tls = false", "require_tls = true")
            .replacen(
                "trusted_proxies = []",
                "trusted_proxies = [\"127.0.0.1/32\"]",
                1,
            )
    })
    .await;
    let before = env.auth.hits();
    for (method, path) in [
        ("GET", "/v1/oauth/authorize"),
        ("POST", "/v1/oauth/token"),
        ("POST", "/v1/oauth/refresh"),
        ("GET", "/v1/oauth/userinfo"),
        ("POST", "/oauth/revoke"),
    ] {
        let r = send(env.gw.request(method, path)).await;
        assert_json_error(&r, 403, "invalid_request");
    }
    assert_eq!(env.auth.hits(), before, "nothing reached the auth server");
    let r = send(
        env.gw
            .request("POST", "/oauth/revoke")
            .header("x-forwarded-proto", "https"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.describe());
}

/// `/v1/oauth/authorize`: 20 per minute per session cookie, else per IP.
async fn check_authorize(env: &Shipped) {
    let gw = &env.gw;
    let get = |cookie: Option<String>| {
        let rb = gw.get("/v1/oauth/authorize?response_type=code&client_id=web");
        match cookie {
            Some(c) => rb.header("cookie", c),
            None => rb,
        }
    };
    let alice = fresh("alice-session");
    let t0 = Instant::now();
    admits_exactly(
        &env.auth,
        (20, 60, "20;w=60"),
        "authorize, session cookie",
        |_| get(Some(format!("lang=en; session={alice}"))),
    )
    .await;
    // Still limited: the cookie is the key, whatever else the request carries.
    let r = send(get(Some(format!("session={alice}")))).await;
    assert_limited(&r, 20, 60, "20;w=60", t0.elapsed());
    // Another session, and a request without one (its IP), each count on their own.
    let r = send(get(Some(format!("session={}", fresh("bob-session"))))).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_rate_headers(&r, 20, 19, 60, "20;w=60");
    admits_exactly(
        &env.auth,
        (20, 60, "20;w=60"),
        "authorize, no session: ip",
        |_| get(None),
    )
    .await;
    // An empty session cookie yields no value: the IP key, limited.
    let r = send(get(Some("session=".into()))).await;
    assert_eq!(
        r.status,
        429,
        "empty cookie falls back to ip: {}",
        r.describe()
    );
    let r = send(get(Some(format!("session={}", fresh("carol-session"))))).await;
    assert_eq!(r.status, 200, "{}", r.describe());
}

/// The shipped token and refresh routes: 60 per minute per client, 300 per minute per address.
const TOKEN_POLICY: &str = "60;w=60, 300;w=60";

/// `/v1/oauth/token` (`refresh = false`) or `/v1/oauth/refresh`: 60 per minute per client.
async fn check_token_endpoint(env: &Shipped, path: &str) {
    let gw = &env.gw;
    let app = fresh("app-one");
    let form = "grant_type=client_credentials&scope=read%3Astudies";
    let t0 = Instant::now();
    admits_exactly(
        &env.auth,
        (60, 60, TOKEN_POLICY),
        &format!("{path}, Basic client"),
        |_| {
            gw.post(path)
                .basic_auth(&app, Some("s3cret"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form)
        },
    )
    .await;
    // The same client named in a form body or a JSON body is the same key.
    let r = send(
        gw.post(path)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("grant_type=refresh_token&client_id={app}")),
    )
    .await;
    assert_limited(&r, 60, 60, TOKEN_POLICY, t0.elapsed());
    let r = send(
        gw.post(path)
            .header("content-type", "application/json")
            .body(json!({"client_id": app, "grant_type": "refresh_token"}).to_string()),
    )
    .await;
    assert_limited(&r, 60, 60, TOKEN_POLICY, t0.elapsed());
    // Another client is unaffected.
    let body = format!(
        "grant_type=client_credentials&client_id={}",
        fresh("app-two")
    );
    let r = send(
        gw.post(path)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.clone()),
    )
    .await;
    assert_rate_headers(&r, 60, 59, 60, TOKEN_POLICY);
    assert_eq!(r.echo()["body"], body, "body forwarded unchanged");
    // No client id anywhere: the IP key, its own count.
    let r = send(gw.post(path)).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_rate_headers(&r, 60, 59, 60, TOKEN_POLICY);
}

/// `/v1/oauth/userinfo`: 120 per minute per subject, GET and POST together.
async fn check_userinfo(env: &Shipped) {
    let gw = &env.gw;
    // Unauthenticated requests are answered 401 before the limiter: they consume nothing.
    for _ in 0..3 {
        assert_missing_token(&send(gw.get("/v1/oauth/userinfo")).await);
    }
    let alice = fresh("alice");
    let token = env.token(&alice, "portal");
    let t0 = Instant::now();
    admits_exactly(&env.auth, (120, 60, "120;w=60"), "userinfo, sub", |i| {
        let rb = if i % 2 == 0 {
            gw.get("/v1/oauth/userinfo")
        } else {
            gw.post("/v1/oauth/userinfo")
        };
        rb.bearer_auth(&token)
    })
    .await;
    // The subject is the key: another token of alice, from another client, is limited too.
    let other_token = env.token(&alice, "mobile");
    let r = send(gw.get("/v1/oauth/userinfo").bearer_auth(&other_token)).await;
    assert_limited(&r, 120, 60, "120;w=60", t0.elapsed());
    // Another subject is unaffected.
    let bob = env.token(&fresh("bob"), "portal");
    let r = send(gw.get("/v1/oauth/userinfo").bearer_auth(&bob)).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_rate_headers(&r, 120, 119, 60, "120;w=60");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_authorize_limit_admits_20_per_session_then_429() {
    let env = Shipped::start(None).await;
    check_authorize(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_token_limit_admits_60_per_client_then_429() {
    let env = Shipped::start(None).await;
    check_token_endpoint(&env, "/v1/oauth/token").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_refresh_limit_counts_separately_from_token() {
    let env = Shipped::start(None).await;
    let gw = &env.gw;
    let app = fresh("app-both");
    let post = |path: &'static str| {
        gw.post(path)
            .basic_auth(&app, Some("pw"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=refresh_token&refresh_token=abc")
    };
    admits_exactly(&env.auth, (60, 60, TOKEN_POLICY), "token endpoint", |_| {
        post("/v1/oauth/token")
    })
    .await;
    // The token endpoint being exhausted for this client leaves its refresh count whole ...
    admits_exactly(
        &env.auth,
        (60, 60, TOKEN_POLICY),
        "refresh endpoint",
        |_| post("/v1/oauth/refresh"),
    )
    .await;
    // ... and both stay limited.
    assert_eq!(send(post("/v1/oauth/token")).await.status, 429);
    assert_eq!(send(post("/v1/oauth/refresh")).await.status, 429);
    check_token_endpoint(&env, "/v1/oauth/refresh").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_userinfo_limit_admits_120_per_subject_then_429() {
    let env = Shipped::start(None).await;
    check_userinfo(&env).await;
}

// ------------------------------------------------------------------------------- windows

/// A limit of 3 per 2 s on `path` keyed by `x-user`, served by `gws` (requests rotate over
/// them): admissions spaced 500 ms apart, then hammering while limited: it reopens when the
/// oldest admission leaves the window, not later (rejections would otherwise keep it shut)
/// and not earlier (exactness).
async fn check_sliding(gws: &[&TestGateway], path: &str) {
    let user = fresh("u");
    let turn = std::cell::Cell::new(0usize);
    let get = || {
        let i = turn.get();
        turn.set(i + 1);
        gws[i % gws.len()].get(path).header("x-user", &user)
    };
    let period = Duration::from_secs(2);
    // Three admissions: a1 at ~0, a2 at ~0.5 s, a3 at ~1 s.
    let s1 = Instant::now();
    let mut sent = Vec::new();
    for i in 0..3u32 {
        sleep_until(s1 + Duration::from_millis(500) * i).await;
        let s = Instant::now();
        let r = send(get()).await;
        assert_eq!(r.status, 200, "admission {i}: {}", r.describe());
        assert_rate_headers(&r, 3, 2 - i, 2, "3;w=2");
        sent.push((s, Instant::now()));
    }
    let r = send(get()).await;
    let retry = assert_limited(&r, 3, 2, "3;w=2", s1.elapsed());
    assert!((1..=2).contains(&retry), "Retry-After {retry}");

    for (k, &(sent_at, answered_at)) in sent.iter().enumerate().take(2) {
        let mut rejected = 0;
        let (ok_sent, ok_answered) = loop {
            let s = Instant::now();
            let r = send(get()).await;
            let a = Instant::now();
            match r.status {
                200 => break (s, a),
                429 => rejected += 1,
                _ => panic!("unexpected {}", r.describe()),
            }
            assert!(
                s < answered_at + period + Duration::from_secs(1),
                "admission {k} aged out over 1 s ago and the route is still limited \
                 ({rejected} rejections since): do rejected requests consume?"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            ok_answered + Duration::from_millis(5) >= sent_at + period,
            "admitted {:?} after admission {k} was sent: before it left the 2 s window",
            ok_answered - sent_at
        );
        assert!(
            ok_sent <= answered_at + period + Duration::from_millis(300),
            "reopened {:?} after admission {k}: later than its leaving the window",
            ok_sent - answered_at
        );
        assert!(
            rejected > 0,
            "there was a limited stretch to hammer through"
        );
        // The next admission is still in the window: limited again right away.
        let r = send(get()).await;
        assert_eq!(r.status, 429, "after reopening {k}: {}", r.describe());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_window_reopens_when_oldest_ages_out_and_rejections_consume_nothing() {
    let env = Env::start(
        vec![RouteSpec::new("slide", "/v1/slide", "api")
            .public()
            .rate_limit(3, "2s", &["header:x-user"])],
        |c| c,
    )
    .await;
    check_sliding(&[&env.gw], "/v1/slide").await;
}

/// Many requests of one key at once: exactly `n` admitted.
async fn check_concurrent_burst(gws: &[&TestGateway], path: &str, n: usize, echo: &EchoUpstream) {
    let user = fresh("burst");
    let before = echo.hits();
    let replies = futures_join_all(
        (0..40)
            .map(|i| send(gws[i % gws.len()].get(path).header("x-user", &user)))
            .collect(),
    )
    .await;
    let admitted = replies.iter().filter(|r| r.status == 200).count();
    let limited = replies.iter().filter(|r| r.status == 429).count();
    assert_eq!(
        (admitted, limited),
        (n, 40 - n),
        "40 concurrent requests of one key, limit {n}: statuses {:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(echo.hits(), before + n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_of_one_key_admit_exactly_n() {
    let env = Env::start(
        vec![RouteSpec::new("rush", "/v1/rush", "api")
            .public()
            .rate_limit(10, "1m", &["header:x-user"])],
        |c| c,
    )
    .await;
    check_concurrent_burst(&[&env.gw], "/v1/rush", 10, &env.echo).await;
}

/// 3 requests of a fresh key at once, 3 more just before the 2 s window ends (refused), 3
/// more once the first ones aged out (admitted), a 4th (refused).
async fn double_burst(gw: &TestGateway, path: &str, delay: Duration) {
    sleep_until(Instant::now() + delay).await;
    let user = fresh("u");
    let get = || gw.get(path).header("x-user", &user);
    let period = Duration::from_secs(2);
    let first_sent = Instant::now();
    for _ in 0..3 {
        assert_eq!(send(get()).await.status, 200);
    }
    let last_answered = Instant::now();
    // Near the end of the window: a second burst of 3 is refused (a fixed window or a token
    // bucket refilled at a boundary in between would let it through).
    sleep_until(first_sent + Duration::from_millis(1800)).await;
    let mut conclusive = 0;
    for _ in 0..3 {
        let r = send(get()).await;
        let answered = Instant::now();
        if answered < first_sent + period {
            conclusive += 1;
            assert_eq!(
                r.status,
                429,
                "a 4th request within 2 s of the first 3 was admitted: {}",
                r.describe()
            );
        } else {
            assert!(r.status == 200 || r.status == 429, "{}", r.describe());
        }
    }
    assert!(
        conclusive > 0,
        "too slow: no request answered inside the window"
    );
    // Once the first burst has aged out, exactly 3 are admitted again.
    sleep_until(last_answered + period + Duration::from_millis(100)).await;
    for i in 0..3 {
        let r = send(get()).await;
        assert_eq!(
            r.status,
            200,
            "request {i} after the window slid: {}",
            r.describe()
        );
    }
    let r = send(get()).await;
    assert_eq!(r.status, 429, "4th after the window slid: {}", r.describe());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_window_boundary_allows_no_double_burst() {
    let env = Env::start(
        vec![RouteSpec::new("burst", "/v1/burst", "api")
            .public()
            .rate_limit(3, "2s", &["header:x-user"])],
        |c| c,
    )
    .await;
    // Two keys, started 1 s apart: whatever the alignment of a fixed 2 s window, a boundary
    // falls inside one of the two 1.8 s stretches.
    tokio::join!(
        double_burst(&env.gw, "/v1/burst", Duration::ZERO),
        double_burst(&env.gw, "/v1/burst", Duration::from_millis(1000)),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_limits_on_one_route_are_all_enforced() {
    let env = Env::start(
        vec![RouteSpec::new("multi", "/v1/multi", "api")
            .public()
            .rate_limit(3, "2s", &["header:x-user"])
            .rate_limit(5, "10s", &["header:x-user"])],
        |c| c,
    )
    .await;
    let policy = "3;w=2, 5;w=10";
    let user = fresh("u");
    let get = || env.gw.get("/v1/multi").header("x-user", &user);
    let first = Instant::now();
    for i in 0..3u32 {
        let r = send(get()).await;
        assert_eq!(r.status, 200, "{}", r.describe());
        // The most constraining limit is described: 3/2s has fewer left.
        assert_rate_headers(&r, 3, 2 - i, 2, policy);
    }
    let last_admitted = Instant::now();
    let r = send(get()).await;
    let retry = assert_limited(&r, 3, 2, policy, first.elapsed());
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    // More rejections while limited: they count in neither limit.
    for _ in 0..5 {
        assert_eq!(send(get()).await.status, 429);
    }
    // Once the first three left the 3/2s window: 3 of 5 used in the 10 s window.
    sleep_until(last_admitted + Duration::from_millis(2050)).await;
    let reopened = send(get()).await;
    assert_eq!(reopened.status, 200, "{}", reopened.describe());
    // 4 of 5 used in 10 s (had the rejections counted, none would be left); the 3/2s
    // window holds only this one.
    assert_eq!(reopened.header("ratelimit-limit").as_deref(), Some("5"));
    assert_eq!(reopened.header("ratelimit-remaining").as_deref(), Some("1"));
    let r = send(get()).await;
    assert_eq!(r.status, 200, "5th in 10 s: {}", r.describe());
    assert_rate_headers(&r, 5, 0, 10, policy);
    // The 3/2s limit has room (2 in its window); 5/10s refuses.
    let r = send(get()).await;
    let retry = assert_limited(&r, 5, 10, policy, first.elapsed());
    assert!(
        retry >= 3,
        "Retry-After {retry}: the 10 s window frees later"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratelimit_decisions_metric_counts_allowed_and_limited() {
    let env = Env::start(
        vec![RouteSpec::new("metered", "/v1/metered", "api")
            .public()
            .rate_limit(2, "1m", &["ip"])],
        |c| c,
    )
    .await;
    for expect in [200, 200, 429, 429, 429] {
        assert_eq!(send(env.gw.get("/v1/metered")).await.status, expect);
    }
    let m = env.gw.metrics().await;
    let count = |result: &str| {
        metric_value(
            &m,
            "gateway_ratelimit_decisions_total",
            &[("route", "metered"), ("result", result)],
        )
    };
    assert_eq!(count("allowed"), 2.0, "allowed:\n{m}");
    assert_eq!(count("limited"), 3.0, "limited:\n{m}");
    assert_eq!(count("error"), 0.0, "error:\n{m}");
    // Requests are counted once their answer is written (the logging phase): poll.
    let counted = eventually(Duration::from_secs(2), || async {
        env.gw
            .metric(
                "gateway_requests_total",
                &[("route", "metered"), ("status", "429")],
            )
            .await
            == 3.0
    })
    .await;
    assert!(
        counted,
        "gateway_requests_total 429:\n{}",
        env.gw.metrics().await
    );
    assert_eq!(env.echo.hits(), 2);
}

// ------------------------------------------------------------------------------- keys

fn form(rb: reqwest::RequestBuilder, body: impl Into<reqwest::Body>) -> reqwest::RequestBuilder {
    rb.header("content-type", "application/x-www-form-urlencoded")
        .body(body)
}

fn json_body(rb: reqwest::RequestBuilder, v: &Value) -> reqwest::RequestBuilder {
    rb.header("content-type", "application/json")
        .body(v.to_string())
}

/// The echo saw exactly `body`.
fn assert_body_forwarded(r: &Reply, body: &[u8]) {
    let e = r.echo();
    assert_eq!(e["body_len"], body.len(), "body length upstream: {e}");
    assert_eq!(
        e["body"],
        String::from_utf8_lossy(body).as_ref(),
        "body upstream: {e}"
    );
}

fn token_route(limit: u32, key: &[&str]) -> RouteSpec {
    RouteSpec::new("token", "/v1/oauth/token", "api")
        .methods(&["POST"])
        .public()
        .rate_limit(limit, "1m", key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_id_from_basic_form_and_json_is_one_key_and_body_reaches_upstream_unchanged() {
    let env = Env::start(vec![token_route(2, &["client_id"])], |c| c).await;
    let gw = &env.gw;
    let post = || gw.post("/v1/oauth/token");

    // Basic credentials; the form body and the Authorization header go upstream as sent.
    let body = b"grant_type=client_credentials&scope=read%3Astudies+write%3Astudies";
    let r = send(form(post().basic_auth("app-a", Some("pw")), &body[..])).await;
    assert_rate_headers(&r, 2, 1, 60, "2;w=60");
    assert_body_forwarded(&r, body);
    assert!(
        r.echo()["headers"]["authorization"]
            .as_str()
            .is_some_and(|v| v.starts_with("Basic ")),
        "{}",
        r.describe()
    );
    // The same client in a form body (with a charset parameter).
    let body = b"client_id=app-a&grant_type=client_credentials";
    let r = send(
        post()
            .header(
                "content-type",
                "application/x-www-form-urlencoded; charset=UTF-8",
            )
            .body(&body[..]),
    )
    .await;
    assert_rate_headers(&r, 2, 0, 60, "2;w=60");
    assert_body_forwarded(&r, body);
    // ... and in a JSON body: the third request of app-a.
    let r = send(json_body(post(), &json!({"client_id": "app-a"}))).await;
    assert_eq!(r.status, 429, "JSON body client_id app-a: {}", r.describe());
    // Basic beside a body naming another client is refused (RFC 6749 §2.3: the server could
    // read either); naming the same client in both is one client.
    let basic_b_with = |body: &str| {
        post()
            .basic_auth("app-b", Some("pw"))
            .header("content-type", "application/json")
            .body(body.to_string())
    };
    let body = json!({"client_id": "app-a", "grant_type": "client_credentials"}).to_string();
    let r = send(basic_b_with(&body)).await;
    assert_json_error(&r, 400, "invalid_request");
    let body = json!({"client_id": "app-b", "grant_type": "client_credentials"}).to_string();
    let r = send(basic_b_with(&body)).await;
    assert_rate_headers(&r, 2, 1, 60, "2;w=60");
    assert_body_forwarded(&r, body.as_bytes());
    // A JSON body (`+json` media type, escapes, non-ASCII) is keyed and forwarded as is.
    let body = "{ \"note\": \"caf\u{e9} \\\"q\\\" \\\\ \\u00e9\",\n  \"client_id\" : \"app-c\" }";
    for remaining in [1, 0] {
        let r = send(
            post()
                .header("content-type", "application/vnd.wetrials+json")
                .body(body),
        )
        .await;
        assert_rate_headers(&r, 2, remaining, 60, "2;w=60");
        assert_body_forwarded(&r, body.as_bytes());
    }
    // A form body with percent-escapes, `+`, NUL and bytes that are not UTF-8: the client id
    // is decoded (`app%2Dd` = `app-d`), the bytes travel untouched.
    let mut odd = b"redirect_uri=https%3A%2F%2Fx.example%2Fcb%3Fa%3D1%26b%3D2&client_id=app%2Dd&blob=%00%FF%E2%9C%93+plus&raw=".to_vec();
    odd.extend_from_slice(&[0xff, 0xfe, 0x00, 0x01, b'&', b'=', b'%', b'z']);
    for remaining in [1, 0] {
        let r = send(form(post(), odd.clone())).await;
        assert_rate_headers(&r, 2, remaining, 60, "2;w=60");
        assert_body_forwarded(&r, &odd);
    }
    let before = env.echo.hits();
    let r = send(form(post(), "client_id=app-d")).await;
    assert_eq!(
        r.status,
        429,
        "app-d decoded from app%2Dd: {}",
        r.describe()
    );
    // A Basic user is form-encoded too (RFC 6749 §2.3.1).
    let r = send(post().basic_auth("app%2Dd", Some("pw"))).await;
    assert_eq!(r.status, 429, "Basic app%2Dd is app-d: {}", r.describe());
    assert_eq!(env.echo.hits(), before, "429s never reach the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_id_missing_everywhere_is_limited_under_shared_anonymous_key() {
    let env = Env::start(vec![token_route(3, &["client_id"])], |c| c).await;
    let gw = &env.gw;
    let post = || gw.post("/v1/oauth/token");
    // Three different callers, none naming a client: one shared key.
    let r = send(post()).await;
    assert_rate_headers(&r, 3, 2, 60, "3;w=60");
    let r = send(form(post(), "grant_type=password&username=u&password=p")).await;
    assert_rate_headers(&r, 3, 1, 60, "3;w=60");
    let r = send(post().bearer_auth("not-basic")).await;
    assert_rate_headers(&r, 3, 0, 60, "3;w=60");
    // Still anonymous: a body type that is not read, a client_id that is not a string.
    let r = send(
        post()
            .header("content-type", "text/plain")
            .body("client_id=zzz"),
    )
    .await;
    assert_eq!(r.status, 429, "text/plain is not read: {}", r.describe());
    let r = send(json_body(post(), &json!({"client_id": 42}))).await;
    assert_eq!(r.status, 429, "numeric client_id: {}", r.describe());
    let r = send(form(post(), "client_id=")).await;
    assert_eq!(r.status, 429, "empty client_id: {}", r.describe());
    // A named client has its own key.
    let r = send(post().basic_auth("app-x", Some("pw"))).await;
    assert_rate_headers(&r, 3, 2, 60, "3;w=60");
    assert_eq!(env.echo.hits(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_id_from_token_is_the_key_on_jwt_route() {
    let env = Env::start(
        vec![RouteSpec::new("me", "/v1/me", "api").rate_limit(2, "1m", &["client_id"])],
        |c| c,
    )
    .await;
    let gw = &env.gw;
    let call = |claims: Value| send(gw.get("/v1/me").bearer_auth(env.token(claims)));
    // Two subjects of client "portal" share its count.
    let r = call(json!({"sub": "alice", "client_id": "portal"})).await;
    assert_rate_headers(&r, 2, 1, 60, "2;w=60");
    assert_eq!(r.echo()["headers"]["x-auth-client-id"], "portal");
    let r = call(json!({"sub": "bob", "client_id": "portal"})).await;
    assert_rate_headers(&r, 2, 0, 60, "2;w=60");
    let r = call(json!({"sub": "carol", "client_id": "portal"})).await;
    assert_eq!(r.status, 429, "{}", r.describe());
    // Another client, also found as `azp` when `client_id` is absent.
    let r = call(json!({"sub": "alice", "client_id": "mobile"})).await;
    assert_rate_headers(&r, 2, 1, 60, "2;w=60");
    let r = call(json!({"sub": "dave", "client_id": null, "azp": "mobile"})).await;
    assert_rate_headers(&r, 2, 0, 60, "2;w=60");
    let r = call(json!({"sub": "erin", "client_id": null, "azp": "mobile"})).await;
    assert_eq!(r.status, 429, "azp mobile: {}", r.describe());
    // The token's client wins over a body naming an exhausted one.
    let t = env.token(json!({"client_id": "cli"}));
    let r = send(form(gw.post("/v1/me").bearer_auth(&t), "client_id=portal")).await;
    assert_rate_headers(&r, 2, 1, 60, "2;w=60");
    assert_body_forwarded(&r, b"client_id=portal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_key_believes_x_forwarded_for_only_from_trusted_proxies() {
    let route = || {
        RouteSpec::new("by-ip", "/v1/ip", "api")
            .public()
            .rate_limit(2, "1m", &["ip"])
    };
    let trusted = Env::start(vec![route()], |c| c.trusted_proxies(&["127.0.0.1/32"])).await;
    let untrusted = Env::start(vec![route()], |c| c).await;
    let via = |env: &Env, xff: Option<&str>| {
        let rb = env.gw.get("/v1/ip");
        let rb = match xff {
            Some(v) => rb.header("x-forwarded-for", v),
            None => rb,
        };
        async move { send(rb).await }
    };

    // Behind a trusted proxy: the forwarded client is the key.
    let gw = &trusted;
    assert_rate_headers(&via(gw, Some("203.0.113.1")).await, 2, 1, 60, "2;w=60");
    assert_rate_headers(&via(gw, Some("203.0.113.1")).await, 2, 0, 60, "2;w=60");
    assert_eq!(via(gw, Some("203.0.113.1")).await.status, 429);
    assert_rate_headers(&via(gw, Some("203.0.113.2")).await, 2, 1, 60, "2;w=60");
    // A spoofed left-most entry changes nothing: the right-most untrusted hop is the client.
    assert_eq!(
        via(gw, Some("198.51.100.66, 203.0.113.1")).await.status,
        429
    );
    // Trusted hops are skipped.
    assert_rate_headers(
        &via(gw, Some("203.0.113.2, 127.0.0.1")).await,
        2,
        0,
        60,
        "2;w=60",
    );
    // No header: the peer itself.
    assert_rate_headers(&via(gw, None).await, 2, 1, 60, "2;w=60");

    // No trusted proxies: X-Forwarded-For is ignored, every request is the peer's.
    let gw = &untrusted;
    assert_rate_headers(&via(gw, Some("203.0.113.1")).await, 2, 1, 60, "2;w=60");
    assert_rate_headers(&via(gw, Some("203.0.113.2")).await, 2, 0, 60, "2;w=60");
    assert_eq!(via(gw, Some("203.0.113.3")).await.status, 429);
    assert_eq!(via(gw, None).await.status, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_cookie_and_query_keys_limit_per_value() {
    let env = Env::start(
        vec![
            RouteSpec::new("hdr", "/v1/hdr", "api").public().rate_limit(
                2,
                "1m",
                &["header:X-Api-Key"],
            ),
            RouteSpec::new("cookie", "/v1/cookie", "api")
                .public()
                .rate_limit(2, "1m", &["cookie:session"]),
            RouteSpec::new("query", "/v1/query", "api")
                .public()
                .rate_limit(2, "1m", &["query:api_key"]),
        ],
        |c| c,
    )
    .await;
    let gw = &env.gw;

    // header:X-Api-Key (configured in mixed case; header names are case-insensitive).
    let hdr = |v: &str| send(gw.get("/v1/hdr").header("x-api-key", v));
    assert_rate_headers(&hdr("k1").await, 2, 1, 60, "2;w=60");
    assert_rate_headers(&hdr("k1").await, 2, 0, 60, "2;w=60");
    assert_eq!(hdr("k1").await.status, 429);
    assert_rate_headers(&hdr("k2").await, 2, 1, 60, "2;w=60");
    // No header: the anonymous key, not k1's.
    let r = send(gw.get("/v1/hdr")).await;
    assert_rate_headers(&r, 2, 1, 60, "2;w=60");

    // cookie:session, among other cookies, or quoted.
    let cookie = |v: &str| send(gw.get("/v1/cookie").header("cookie", v));
    assert_rate_headers(&cookie("theme=dark; session=s1").await, 2, 1, 60, "2;w=60");
    assert_rate_headers(&cookie("session=\"s1\"").await, 2, 0, 60, "2;w=60");
    assert_eq!(cookie("session=s1; theme=light").await.status, 429);
    assert_rate_headers(&cookie("session=s2").await, 2, 1, 60, "2;w=60");
    // `session_x` is not `session`: anonymous.
    assert_rate_headers(&cookie("session_x=s1").await, 2, 1, 60, "2;w=60");

    // query:api_key, percent-decoded.
    let query = |q: &str| send(gw.get(&format!("/v1/query?{q}")));
    let r = query("x=1&api_key=q1").await;
    assert_rate_headers(&r, 2, 1, 60, "2;w=60");
    assert_eq!(r.echo()["query"], "x=1&api_key=q1", "query forwarded");
    assert_rate_headers(&query("api_key=q1").await, 2, 0, 60, "2;w=60");
    assert_eq!(query("api_key=q%31").await.status, 429, "q%31 is q1");
    assert_rate_headers(&query("api_key=q2").await, 2, 1, 60, "2;w=60");
    // The header of the same name is not the query parameter.
    let r = send(gw.get("/v1/query").header("api_key", "q1")).await;
    assert_rate_headers(&r, 2, 1, 60, "2;w=60");
    assert_eq!(env.echo.hits(), 12);
}

// ------------------------------------------------------------------------------- bodies

/// The token endpoint keyed by client_id then ip, bodies read up to 1024 bytes.
async fn body_env() -> Env {
    Env::start(vec![token_route(50, &["client_id", "ip"])], |c| {
        c.server_set("max_body_bytes", 1024)
    })
    .await
}

fn raw_post(gw: &TestGateway, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST /v1/oauth/token HTTP/1.1\r\nHost: {}\r\n{headers}\r\n",
        gw.addr()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_oversized_body_is_rejected_413_not_5xx() {
    let env = body_env().await;
    let gw = &env.gw;
    let form_of = |len: usize| {
        let mut b = b"client_id=big&pad=".to_vec();
        b.resize(len, b'x');
        b
    };
    // At the bound: read, keyed and forwarded whole.
    let body = form_of(1024);
    let r = send(form(gw.post("/v1/oauth/token"), body.clone())).await;
    assert_body_forwarded(&r, &body);
    let hits = env.echo.hits();
    // One byte over, announced by Content-Length.
    let r = send(form(gw.post("/v1/oauth/token"), form_of(1025))).await;
    let b = assert_json_error(&r, 413, "invalid_request");
    assert!(
        b["error_description"]
            .as_str()
            .unwrap_or("")
            .contains("1024"),
        "{b}"
    );
    // A huge Content-Length is refused without waiting for the body.
    let started = Instant::now();
    let r = raw_request(
        gw.addr(),
        &raw_post(
            gw,
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 10000000\r\n",
            b"client_id=x&",
        ),
    )
    .await
    .expect("an answer to a huge Content-Length");
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(2));
    // Chunked, over the bound in several chunks; JSON this time.
    let mut chunked = Vec::new();
    for _ in 0..5 {
        chunked.extend_from_slice(b"12c\r\n");
        chunked.extend_from_slice(&[b' '; 0x12c]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let r = raw_request(
        gw.addr(),
        &raw_post(
            gw,
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n",
            &chunked,
        ),
    )
    .await
    .expect("an answer to an oversized chunked body");
    assert_eq!(r.status, 413, "{}", r.text());
    let v: Value = serde_json::from_slice(&r.body).expect("JSON body");
    assert_eq!(v["error"], "invalid_request", "{v}");
    assert_eq!(env.echo.hits(), hits, "413s never reach the upstream");

    // A small chunked body is read and forwarded whole.
    let r = raw_request(
        gw.addr(),
        &raw_post(
            gw,
            "Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n",
            b"a\r\nclient_id=\r\n9\r\nchunky&x=\r\n1\r\n1\r\n0\r\n\r\n",
        ),
    )
    .await
    .expect("an answer to a small chunked body");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("ratelimit-remaining"), Some("49"));
    let e: Value = serde_json::from_slice(&r.body).expect("echo JSON");
    assert_eq!(e["body"], "client_id=chunky&x=1", "{e}");
    // Bodies that need no reading are not bounded: a type that is never read. A form body
    // beside Basic credentials is read all the same (it must not name another client or carry
    // a client_secret), so it is bounded too.
    let big = vec![b'z'; 4000];
    let r = send(
        gw.post("/v1/oauth/token")
            .header("content-type", "application/octet-stream")
            .body(big.clone()),
    )
    .await;
    assert_body_forwarded(&r, &big);
    let big = form_of(4000);
    let hits = env.echo.hits();
    let r = send(form(
        gw.post("/v1/oauth/token")
            .basic_auth("app-basic", Some("pw")),
        big.clone(),
    ))
    .await;
    assert_json_error(&r, 413, "invalid_request");
    assert_eq!(env.echo.hits(), hits);
}

/// RFC 9110 §10.1.1: a proxy receiving `Expect: 100-continue` either answers with a final
/// status right away or starts forwarding; reading the body for `client_id` first must send
/// `100 Continue` itself, or clients (curl: bodies over 1 KiB) stall until their own timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_expect_100_continue_is_answered_before_the_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = body_env().await;
    let gw = &env.gw;
    let body = b"grant_type=client_credentials&client_id=expecting";
    let head = format!(
        "POST /v1/oauth/token HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        gw.addr(),
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(gw.addr())
        .await
        .expect("connect");
    s.write_all(head.as_bytes()).await.expect("write head");
    let mut buf = vec![0u8; 4096];
    let interim = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await;
    let got = match interim {
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Ok(Err(e)) => panic!("reading the interim answer: {e}"),
        Err(_) => String::new(),
    };
    assert!(
        got.starts_with("HTTP/1.1 100"),
        "no `100 Continue` (nor a final status) within 500 ms of a request head with \
         `Expect: 100-continue` on a route that reads the body for client_id; got {got:?}"
    );
    // The body then goes through, keyed by its client_id, and arrives whole.
    s.write_all(body).await.expect("write body");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    let text = String::from_utf8_lossy(&rest);
    assert!(text.contains(" 200 "), "final answer: {text}");
    assert!(
        text.contains("client_id=expecting"),
        "body forwarded: {text}"
    );
}

/// A request the limiter admitted counts even when the upstream then fails, and its 502
/// carries the `RateLimit-*` headers like every response of a limited route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limited_route_upstream_down_answers_502_with_rate_headers() {
    let dead = DeadPort::new();
    let env = Env::start(
        vec![RouteSpec::new("down", "/v1/down", "dead")
            .public()
            .rate_limit(2, "1m", &["ip"])],
        |c| c.upstream(UpstreamSpec::new("dead", &[dead.peer()])),
    )
    .await;
    for remaining in [1, 0] {
        let r = send(env.gw.get("/v1/down")).await;
        assert_json_error(&r, 502, "bad_gateway");
        assert_rate_headers(&r, 2, remaining, 60, "2;w=60");
    }
    let r = send(env.gw.get("/v1/down")).await;
    assert_eq!(
        r.status,
        429,
        "the two 502s were admitted: {}",
        r.describe()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_malformed_json_is_rejected_400_not_5xx() {
    let env = body_env().await;
    let gw = &env.gw;
    for bad in [
        "{\"client_id\": \"x\"",
        "[\"client_id\"]",
        "client_id=x",
        "\"x\"",
    ] {
        let r = send(
            gw.post("/v1/oauth/token")
                .header("content-type", "application/json")
                .body(bad),
        )
        .await;
        assert_json_error(&r, 400, "invalid_request");
    }
    assert_eq!(env.echo.hits(), 0, "400s never reach the upstream");
    // A malformed Content-Length is a 400 as well (pingora's or ours), never a 5xx.
    let r = raw_request(
        gw.addr(),
        &raw_post(
            gw,
            "Content-Type: application/json\r\nContent-Length: 12x\r\n",
            b"{}",
        ),
    )
    .await;
    assert_not_5xx("malformed Content-Length", &r);
    if let Some(r) = r {
        assert_eq!(r.status, 400, "{}", r.text());
    }
    assert_eq!(env.echo.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn form_body_without_client_id_falls_back_to_ip() {
    let env = Env::start(vec![token_route(3, &["client_id", "ip"])], |c| c).await;
    let gw = &env.gw;
    let post = || gw.post("/v1/oauth/token");
    let r = send(form(post(), "grant_type=password&username=u")).await;
    assert_rate_headers(&r, 3, 2, 60, "3;w=60");
    assert_body_forwarded(&r, b"grant_type=password&username=u");
    let r = send(post()).await;
    assert_rate_headers(&r, 3, 1, 60, "3;w=60");
    let r = send(json_body(post(), &json!({}))).await;
    assert_rate_headers(&r, 3, 0, 60, "3;w=60");
    let r = send(
        post()
            .header("content-type", "application/json")
            .body("  \n"),
    )
    .await;
    assert_eq!(
        r.status,
        429,
        "whitespace JSON body: ip key: {}",
        r.describe()
    );
    // A named client is not the ip.
    let r = send(form(post(), "client_id=app&grant_type=password")).await;
    assert_rate_headers(&r, 3, 2, 60, "3;w=60");
    assert_eq!(env.echo.hits(), 4);
}

// ------------------------------------------------------------------------------- redis

fn redis_cfg(cfg: Config, redis: &RedisServer, on_error: &str, timeout_ms: u64) -> Config {
    cfg.rate_limit_set("backend", "redis")
        .rate_limit_set("redis_url", redis.url())
        .rate_limit_set("timeout_ms", timeout_ms)
        .rate_limit_set("on_backend_error", on_error)
}

/// Two gateways on one Redis, each serving `shared` (`/v1/shared`, `n` per minute per
/// `x-user`), plus the echo upstream both forward to.
struct Pair {
    echo: EchoUpstream,
    a: TestGateway,
    b: TestGateway,
}

async fn pair(redis: &RedisServer, n: u32, on_error: &str, timeout_ms: u64) -> Pair {
    let issuer = local_issuer().await;
    let echo = echo_upstream().await;
    let cfg = redis_cfg(
        Config::basic(&issuer, &echo).route(
            RouteSpec::new("shared", "/v1/shared", "api")
                .public()
                .rate_limit(n, "1m", &["header:x-user"]),
        ),
        redis,
        on_error,
        timeout_ms,
    );
    let (a, b) = tokio::join!(TestGateway::start(&cfg), TestGateway::start(&cfg));
    Pair { echo, a, b }
}

/// Alternating between the two gateways, `2 * n` requests of a fresh user: the first `n`
/// admitted with `RateLimit-Remaining` counting down across both, the rest 429.
async fn shared_exactly(p: &Pair, n: u32) {
    let user = fresh("shared");
    let before = p.echo.hits();
    for i in 0..2 * n {
        let gw = if i % 2 == 0 { &p.a } else { &p.b };
        let r = send(gw.get("/v1/shared").header("x-user", &user)).await;
        if i < n {
            assert_eq!(
                r.status,
                200,
                "request {} of {n} (gateway {}) should be admitted:\n{}",
                i + 1,
                i % 2,
                r.describe()
            );
            assert_eq!(
                r.header("ratelimit-remaining"),
                Some((n - 1 - i).to_string()),
                "the count is shared: {}",
                r.describe()
            );
        } else {
            assert_eq!(
                r.status,
                429,
                "request {} on gateway {}: two gateways admitted more than {n} in total:\n{}",
                i + 1,
                i % 2,
                r.describe()
            );
        }
    }
    assert_eq!(p.echo.hits(), before + n as usize);
}

/// One request of `user` on `/v1/shared` and how long it took.
async fn timed(gw: &TestGateway, user: &str) -> (Reply, Duration) {
    let started = Instant::now();
    let r = send(gw.get("/v1/shared").header("x-user", user)).await;
    (r, started.elapsed())
}

/// Wait (up to 10 s) until `gw` decides in Redis again: six requests in a row on throwaway
/// keys admitted without a backend error (so without a fallback).
async fn wait_redis_again(gw: &TestGateway) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut clean = 0;
    while clean < 6 {
        assert!(
            Instant::now() < deadline,
            "gateway still not deciding in Redis 10 s after it returned; log:\n{}",
            gw.logs()
        );
        let errs = gw
            .metric(
                "gateway_ratelimit_backend_errors_total",
                &[("backend", "redis")],
            )
            .await;
        let r = send(gw.get("/v1/shared").header("x-user", fresh("probe"))).await;
        let after = gw
            .metric(
                "gateway_ratelimit_backend_errors_total",
                &[("backend", "redis")],
            )
            .await;
        if r.status == 200 && after == errs {
            clean += 1;
        } else {
            clean = 0;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn assert_healthy(gw: &TestGateway) {
    let r = send(gw.client().get(gw.admin_url("/healthz"))).await;
    assert_eq!(r.status, 200, "healthz: {}", r.describe());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_backend_documented_limits_are_exact() {
    let redis = RedisServer::start();
    let env = Shipped::start(Some(format!(
        "backend = \"redis\"\nredis_url = \"{}\"\ntimeout_ms = 1000\non_backend_error = \"fail_closed\"",
        redis.url()
    )))
    .await;
    check_authorize(&env).await;
    check_token_endpoint(&env, "/v1/oauth/token").await;
    check_userinfo(&env).await;
    let m = env.gw.metrics().await;
    assert!(
        metric_value(
            &m,
            "gateway_ratelimit_backend_duration_seconds_count",
            &[("backend", "redis")]
        ) >= 200.0,
        "every decision went to Redis:\n{m}"
    );
    assert_eq!(
        metric_value(&m, "gateway_ratelimit_fallbacks_total", &[]),
        0.0
    );
    // The logs live in Redis: hash-tagged keys that expire with the window.
    let keys: Vec<String> = redis.query(&["KEYS", "*"]);
    assert!(keys.len() >= 8, "keys in Redis: {keys:?}");
    for k in &keys {
        let tag = k
            .strip_prefix("wtgw:rl:{")
            .and_then(|r| r.strip_suffix('}'))
            .unwrap_or_else(|| panic!("key {k:?} is not <prefix>:rl:{{<hash>}}"));
        assert!(
            tag.len() == 32 && tag.bytes().all(|b| b.is_ascii_hexdigit()),
            "hash tag of {k:?}"
        );
        let ttl: i64 = redis.query(&["PTTL", k]);
        assert!((1..=60_000).contains(&ttl), "PTTL {ttl} of {k:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_two_gateways_share_one_limit_admit_n_total() {
    let redis = RedisServer::start();
    let p = pair(&redis, 6, "fail_closed", 1000).await;
    shared_exactly(&p, 6).await;
    check_concurrent_burst(&[&p.a, &p.b], "/v1/shared", 6, &p.echo).await;
    // Another user is unaffected, on either gateway.
    let r = send(p.b.get("/v1/shared").header("x-user", fresh("other"))).await;
    assert_rate_headers(&r, 6, 5, 60, "6;w=60");
    for gw in [&p.a, &p.b] {
        let m = gw.metrics().await;
        assert!(
            metric_value(
                &m,
                "gateway_ratelimit_backend_duration_seconds_count",
                &[("backend", "redis")]
            ) >= 6.0,
            "Redis latency recorded:\n{m}"
        );
        assert_eq!(
            metric_value(&m, "gateway_ratelimit_fallbacks_total", &[]),
            0.0
        );
        assert_eq!(
            metric_value(
                &m,
                "gateway_ratelimit_backend_errors_total",
                &[("backend", "redis")]
            ),
            0.0
        );
        assert!(
            metric_value(
                &m,
                "gateway_ratelimit_decisions_total",
                &[("route", "shared"), ("result", "limited")]
            ) >= 3.0,
            "{m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sliding_window_across_two_gateways_reopens_on_time() {
    let redis = RedisServer::start();
    let issuer = local_issuer().await;
    let echo = echo_upstream().await;
    let cfg = redis_cfg(
        Config::basic(&issuer, &echo).route(
            RouteSpec::new("slide", "/v1/slide", "api")
                .public()
                .rate_limit(3, "2s", &["header:x-user"]),
        ),
        &redis,
        "fail_closed",
        1000,
    );
    let (a, b) = tokio::join!(TestGateway::start(&cfg), TestGateway::start(&cfg));
    check_sliding(&[&a, &b], "/v1/slide").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_with_fail_open_decides_locally_then_shares_again() {
    let mut redis = RedisServer::start();
    let p = pair(&redis, 4, "fail_open", 50).await;
    shared_exactly(&p, 4).await;

    redis.stop();
    // Every request is still answered, quickly, by each gateway's local limiter (exact per
    // process: 4 then 429).
    for gw in [&p.a, &p.b] {
        let user = fresh("local");
        for i in 0..6 {
            let (r, took) = timed(gw, &user).await;
            assert!(
                took < DEGRADED_BOUND,
                "request {i} took {took:?} with Redis down"
            );
            let expect = if i < 4 { 200 } else { 429 };
            assert_eq!(
                r.status,
                expect,
                "request {i}, Redis down: {}",
                r.describe()
            );
        }
        let m = gw.metrics().await;
        assert!(
            metric_value(&m, "gateway_ratelimit_fallbacks_total", &[]) >= 6.0,
            "fallbacks counted:\n{m}"
        );
        assert!(
            metric_value(
                &m,
                "gateway_ratelimit_backend_errors_total",
                &[("backend", "redis")]
            ) >= 6.0,
            "backend errors counted:\n{m}"
        );
        assert_healthy(gw).await;
    }

    redis.restart();
    wait_redis_again(&p.a).await;
    wait_redis_again(&p.b).await;
    let fallbacks = (
        p.a.metric("gateway_ratelimit_fallbacks_total", &[]).await,
        p.b.metric("gateway_ratelimit_fallbacks_total", &[]).await,
    );
    shared_exactly(&p, 4).await;
    assert_eq!(
        fallbacks,
        (
            p.a.metric("gateway_ratelimit_fallbacks_total", &[]).await,
            p.b.metric("gateway_ratelimit_fallbacks_total", &[]).await,
        ),
        "decided in Redis again, not locally"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_with_fail_closed_answers_503_then_recovers() {
    let mut redis = RedisServer::start();
    let p = pair(&redis, 4, "fail_closed", 50).await;
    let user = fresh("closed");
    assert_eq!(
        send(p.a.get("/v1/shared").header("x-user", &user))
            .await
            .status,
        200
    );

    redis.stop();
    let hits = p.echo.hits();
    for i in 0..5 {
        let (r, took) = timed(&p.a, &user).await;
        assert!(took < DEGRADED_BOUND, "request {i} took {took:?}");
        assert_json_error(&r, 503, "temporarily_unavailable");
        assert!(r.header("retry-after").is_some(), "{}", r.describe());
    }
    assert_eq!(p.echo.hits(), hits, "503s never reach the upstream");
    let m = p.a.metrics().await;
    assert!(
        metric_value(
            &m,
            "gateway_ratelimit_decisions_total",
            &[("route", "shared"), ("result", "error")]
        ) >= 5.0,
        "{m}"
    );
    assert!(
        metric_value(
            &m,
            "gateway_ratelimit_backend_errors_total",
            &[("backend", "redis")]
        ) >= 5.0,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "gateway_ratelimit_fallbacks_total", &[]),
        0.0
    );
    assert_healthy(&p.a).await;

    redis.restart();
    for gw in [&p.a, &p.b] {
        let ok = eventually(Duration::from_secs(10), || async {
            send(gw.get("/v1/shared").header("x-user", fresh("probe")))
                .await
                .status
                == 200
        })
        .await;
        assert!(ok, "no recovery after Redis returned; log:\n{}", gw.logs());
    }
    wait_redis_again(&p.a).await;
    wait_redis_again(&p.b).await;
    shared_exactly(&p, 4).await;
    let mut a = p.a;
    assert!(a.is_running(), "gateway crashed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_answers_within_timeout_not_hanging() {
    let redis = RedisServer::start();
    let issuer = local_issuer().await;
    let echo = echo_upstream().await;
    let base = Config::basic(&issuer, &echo).route(
        RouteSpec::new("shared", "/v1/shared", "api")
            .public()
            .rate_limit(4, "1m", &["header:x-user"]),
    );
    let open_cfg = redis_cfg(base.clone(), &redis, "fail_open", 50);
    let closed_cfg = redis_cfg(base, &redis, "fail_closed", 50);
    let (open, closed) = tokio::join!(
        TestGateway::start(&open_cfg),
        TestGateway::start(&closed_cfg)
    );
    // Connections established while Redis answers.
    for gw in [&open, &closed] {
        for _ in 0..4 {
            let r = send(gw.get("/v1/shared").header("x-user", fresh("warm"))).await;
            assert_eq!(r.status, 200, "{}", r.describe());
        }
    }
    {
        let _frozen = redis.pause(); // SIGCONT when dropped, also on a failed assertion
        let user = fresh("frozen");
        for i in 0..5 {
            let (r, took) = timed(&open, &user).await;
            assert!(took < DEGRADED_BOUND, "fail_open request {i} took {took:?}");
            let expect = if i < 4 { 200 } else { 429 };
            assert_eq!(r.status, expect, "fail_open request {i}: {}", r.describe());
            let (r, took) = timed(&closed, &user).await;
            assert!(
                took < DEGRADED_BOUND,
                "fail_closed request {i} took {took:?}"
            );
            assert_json_error(&r, 503, "temporarily_unavailable");
        }
        // Concurrent requests do not queue behind one another.
        let started = Instant::now();
        let replies = futures_join_all(
            (0..8)
                .map(|_| send(open.get("/v1/shared").header("x-user", fresh("c"))))
                .collect(),
        )
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "8 concurrent requests took {:?}",
            started.elapsed()
        );
        assert!(replies.iter().all(|r| r.status == 200));
        assert!(
            open.metric("gateway_ratelimit_fallbacks_total", &[]).await >= 5.0,
            "fallbacks counted"
        );
    }
    // Thawed: both decide in Redis again.
    wait_redis_again(&open).await;
    wait_redis_again(&closed).await;
    for gw in [&open, &closed] {
        assert_healthy(gw).await;
    }
}

/// Await every future (in parallel on the runtime).
async fn futures_join_all<F>(futs: Vec<F>) -> Vec<Reply>
where
    F: std::future::Future<Output = Reply> + Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("request task"));
    }
    out
}
