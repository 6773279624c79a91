//! wetrials-gateway: a pingora reverse proxy that validates bearer JWTs against cached JWKS
//! keys, enforces per-route scopes and rate limits, and forwards what passes.
//!
//! The request's path through the crate:
//! 0. `config` — what the operator asked for (TOML -> validated runtime types);
//! 1. `policy` — which route? (path normalisation, route table, required scopes, limit keys);
//! 2. `auth` — who is calling? (bearer token, JWT checks, JWKS cache, verified-token cache);
//! 3. `ratelimit` — may they, right now? (exact sliding window, memory or Redis);
//! 4. `proxy` — the pingora seam that runs the gates and forwards (`Gateway`, `Reject`);
//!
//! beside it: `admin` (metrics, health, reload endpoint), `state` (the swappable snapshot),
//! `reload` (SIGHUP), `server` (assembly), `telemetry` (logs), `demo` (local issuer + echo).

pub mod admin;
pub mod auth;
pub mod config;
pub mod demo;
mod expiring;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod ratelimit;
pub mod refresher;
pub mod reload;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod upstream;
