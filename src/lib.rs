//! wetrials-gateway: a pingora reverse proxy that validates bearer JWTs against cached JWKS
//! keys, enforces per-route scopes and rate limits, and forwards what passes.
//!
//! The request's path through the crate:
//! 0. `config` — what the operator asked for (TOML -> validated runtime types);
//! 1. `policy` — which route? (path normalisation, route table, required scopes, limit keys);
//! 2. `auth` — who is calling? (bearer token, JWT checks, JWKS cache, verified-token cache);
//! 3. `ratelimit` — may they, right now? (exact sliding window, memory or Redis);
//! 4. `decide` — the decision core: runs those gates in order over a plain request view and
//!    the snapshot, returning `Ok` (forward, with what was found) or a `Reject`, and the steps
//!    it took when asked; it knows nothing of pingora;
//! 5. `proxy` — the pingora seam: a thin adapter that builds the core's view of each request,
//!    applies its verdict and forwards (`Gateway`).
//!
//! beside it: `admin` (metrics, health, reload endpoint), `state` (the swappable snapshot),
//! `reload` (SIGHUP), `server` (assembly), `telemetry` (logs), `demo` (local issuer + echo).

#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

// The public surface is what the binary, the benches and the integration tests use; the rest
// is the crate's own.
mod admin;
mod auth;
pub mod config;
mod decide;
pub mod demo;
mod expiring;
mod metrics;
mod mint;
mod policy;
mod proxy;
pub mod ratelimit;
mod refresher;
mod reload;
pub mod rules;
pub mod server;
mod state;
pub mod telemetry;
mod upstream;

/// For the fuzz targets in `tests/fuzz` only (`make fuzz`): thin re-exports of the parsers an
/// attacker feeds, including the private ones. Not an API; nothing else may use it.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::auth::bearer::{check_chars, from_authorization};
    pub use crate::auth::jwt::parse as parse_jws;
    pub use crate::auth::AuthError;
    pub use crate::config::from_str_with as config_from_str_with;
    pub use crate::decide::clientkey::{
        basic_client_id, body_client, client_ip, forwarded_https, is_basic, query_client_id,
    };
    pub use crate::policy::{has_encoded_separator, normalize_path, RouteTable};

    /// The request-target check of `proxy` (RFC 9112 §3.2): the absolute-form authority,
    /// `None` for origin-form, `Err` for a 400.
    pub fn target_form(
        req: &pingora::http::RequestHeader,
    ) -> Result<Option<String>, crate::decide::Reject> {
        crate::decide::target_form(&crate::proxy::view_of(req, None, false))
    }

    /// The route table the gateway builds from a config (as `state` does; upstream indexes
    /// are irrelevant to matching).
    pub fn route_table(cfg: &crate::config::GatewayConfig) -> RouteTable {
        RouteTable::new(
            cfg.routes
                .iter()
                .enumerate()
                .map(|(i, r)| crate::state::route_from_config(r, i, 0))
                .collect(),
        )
    }
}
