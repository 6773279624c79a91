//! A full in-process limiter store never forgets a live key, end to end.
//!
//! With `[rate_limit] memory_max_keys = 2000` and a route limited to 5/min keyed by a header, a
//! key driven to its limit stays limited while 2,800 other keys are sprayed at the gateway: a
//! new key that finds the store full of live keys is decided by `on_backend_error`
//! (`fail_closed`: 503 `temporarily_unavailable`, never forwarded; `fail_open`: admitted without
//! being stored) and counted in `gateway_ratelimit_store_full_total{route}`. A store that evicted
//! to make room would let the spray push the limited key out, and it would get 5 more requests
//! through.

mod common;

use common::*;

const MAX_KEYS: u64 = 2_000;
/// Distinct keys sprayed after the victim reached its limit (sequential, over one connection).
const SPRAY: usize = 2_800;
const LIMIT: u32 = 5;
const ROUTE: &str = "spray";
const PATH: &str = "/v1/spray";

struct Env {
    _issuer: LocalIssuer,
    echo: EchoUpstream,
    gw: TestGateway,
}

impl Env {
    async fn start(on_backend_error: &str) -> Env {
        let issuer = local_issuer().await;
        let echo = echo_upstream().await;
        let cfg = Config::basic(&issuer, &echo)
            .rate_limit_set("memory_max_keys", MAX_KEYS)
            .rate_limit_set("on_backend_error", on_backend_error)
            .route(RouteSpec::new(ROUTE, PATH, "api").public().rate_limit(
                LIMIT,
                "1m",
                &["header:x-user"],
            ));
        let gw = TestGateway::start(&cfg).await;
        Env {
            _issuer: issuer,
            echo,
            gw,
        }
    }

    async fn get(&self, user: &str) -> Reply {
        send(self.gw.get(PATH).header("x-user", user)).await
    }

    /// Drives `user` to its limit: `LIMIT` admitted, then a 429.
    async fn exhaust(&self, user: &str) {
        for i in 0..LIMIT {
            let r = self.get(user).await;
            assert_eq!(r.status, 200, "request {i} of {user}: {}", r.describe());
        }
        let r = self.get(user).await;
        assert_json_error(&r, 429, "rate_limit_exceeded");
    }

    /// Sends one request for each of `SPRAY` new keys; returns the statuses.
    async fn spray(&self) -> Vec<u16> {
        let mut statuses = Vec::with_capacity(SPRAY);
        for i in 0..SPRAY {
            let r = self.get(&format!("spray-{i}")).await;
            if r.status == 503 {
                assert_json_error(&r, 503, "temporarily_unavailable");
            }
            statuses.push(r.status);
        }
        statuses
    }

    async fn store_full(&self) -> f64 {
        self.gw
            .metric("gateway_ratelimit_store_full_total", &[("route", ROUTE)])
            .await
    }
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|&&s| s == status).count()
}

#[tokio::test]
async fn full_store_fail_closed_keeps_limited_key_and_refuses_new_keys_503() {
    let env = Env::start("fail_closed").await;
    env.exhaust("victim").await;

    let statuses = env.spray().await;
    let (admitted, refused) = (count(&statuses, 200), count(&statuses, 503));
    assert_eq!(
        admitted + refused,
        SPRAY,
        "only 200 and 503 expected: {statuses:?}"
    );
    assert!(
        admitted < MAX_KEYS as usize && refused > SPRAY - MAX_KEYS as usize,
        "a store of {MAX_KEYS} keys took {admitted} new keys while the victim was live"
    );

    let r = env.get("victim").await;
    assert_json_error(&r, 429, "rate_limit_exceeded");
    let r = env.get("one-more-new-key").await;
    assert_json_error(&r, 503, "temporarily_unavailable");

    // Refused requests never reached the upstream; each was counted.
    assert_eq!(env.echo.hits(), LIMIT as usize + admitted);
    assert_eq!(env.store_full().await, (refused + 1) as f64);
    assert!(env.gw.metric("gateway_ratelimit_keys", &[]).await <= MAX_KEYS as f64);
}

#[tokio::test]
async fn full_store_fail_open_keeps_limited_key_and_admits_new_keys_counted() {
    let env = Env::start("fail_open").await;
    env.exhaust("victim").await;

    let statuses = env.spray().await;
    assert_eq!(
        count(&statuses, 200),
        SPRAY,
        "fail_open admits every new key"
    );

    let r = env.get("victim").await;
    assert_json_error(&r, 429, "rate_limit_exceeded");
    let r = env.get("one-more-new-key").await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(
        r.header("ratelimit-remaining").as_deref(),
        Some("4"),
        "a new key's first request: {}",
        r.describe()
    );

    // Every new key that found the store full was counted (at least the 800 past its size).
    let full = env.store_full().await;
    assert!(
        full >= (SPRAY + 1 - MAX_KEYS as usize) as f64 && full <= (SPRAY + 1) as f64,
        "gateway_ratelimit_store_full_total = {full}"
    );
    assert!(env.gw.metric("gateway_ratelimit_keys", &[]).await <= MAX_KEYS as f64);
}
