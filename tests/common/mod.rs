//! Integration-test harness: the real `wetrials-gateway` binary on ephemeral loopback ports,
//! configured from a small builder, in front of the crate's own loopback servers
//! (`LocalIssuer` serving a JWKS and minting tokens, `EchoUpstream` describing what it got).
//!
//! - `Config` + `IssuerSpec` / `UpstreamSpec` / `RouteSpec` render a TOML config; every
//!   section takes extra keys with `.set(key, json!(value))` and `Config::raw` appends TOML.
//! - `TestGateway::start(&cfg)` writes the config to a tempdir, spawns the binary with its
//!   output in a log file (`logs()`), waits for `GET /readyz` = 200 and kills it on drop;
//!   `start_unready` only waits for the listeners.
//! - `send` / `Reply` and the `assert_*` helpers check status, `WWW-Authenticate` and the
//!   JSON error body; `raw_request` speaks bytes for requests reqwest would not send.
//! - token helpers build hostile tokens by hand (`alg: none`, HMAC with a public key).
//!
//! One file per concern, everything re-exported here so a test needs only `use common::*;`:
//!
//! | file              | holds                                                            |
//! |-------------------|------------------------------------------------------------------|
//! | `config.rs`       | `Config`, `IssuerSpec`, `UpstreamSpec`, `RouteSpec`, `Table`     |
//! | `gateway.rs`      | `TestGateway`, `Wait`, `spawn_logged`, `run_bin`                 |
//! | `http.rs`         | `Reply`, `send`, the `assert_*` error-answer checks              |
//! | `raw.rs`          | `raw_request`, `RawResponse`: HTTP over a plain socket           |
//! | `peers.rs`        | `local_issuer`, `echo_upstream`, `fixed_http_server`, certs      |
//! | `ports.rs`        | `free_addr`, `DeadPort`                                          |
//! | `tokens.rs`       | `token`, `compose`, `hs256`, `patch`, `jwk_of`, base64url        |
//! | `metrics.rs`      | `metric_value`, `metric_names_in`                                |
//! | `redis_server.rs` | `RedisServer`, `PausedRedis`                                     |
//! | `ops.rs`          | `ops_config` and the other fixtures of the operations tests      |
//! | `load.rs`         | `spawn_load`, `Load`: traffic that must see zero failures        |
//! | `authz.rs`        | `AuthServer`: a real OAuth server (node oidc-provider, tests/authz) |
//!
//! Used by several test binaries, each with a different subset: hence `allow(dead_code)`.
#![allow(dead_code, unused_imports)]

mod authz;
mod config;
mod gateway;
mod http;
mod load;
mod metrics;
mod ops;
mod peers;
mod ports;
mod raw;
mod redis_server;
mod tokens;

pub use self::authz::*;
pub use self::config::*;
pub use self::gateway::*;
pub use self::http::*;
pub use self::load::*;
pub use self::metrics::*;
pub use self::ops::*;
pub use self::peers::*;
pub use self::ports::*;
pub use self::raw::*;
pub use self::redis_server::*;
pub use self::tokens::*;

use std::time::{Duration, Instant};

pub use wetrials_gateway::demo::{now, EchoUpstream, KeyAlg, LocalIssuer};

/// The audience every test issuer uses unless told otherwise.
pub const AUDIENCE: &str = "https://api.wetrials.com";
/// The realm the gateway names in `WWW-Authenticate`.
pub const REALM: &str = "wetrials";
/// Bound on every HTTP exchange of a test.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on waiting for a gateway to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Poll `f` every 50 ms until it returns true or `timeout` passes; returns the last result.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
