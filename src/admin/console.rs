//! The admin console: one self-contained page (`GET /`, with `/console.js` and `/console.css`;
//! no CDN, no external script or font) for the people who run the gateway and own its rules:
//! the route table, the issuers and their keys, live request and denial rates per route, and
//! an explain form that calls `POST /explain`. Its data comes from `GET /console.json`.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::metrics::Metrics;
use crate::state::Snapshot;

pub(super) const PAGE: &str = include_str!("console/index.html");
pub(super) const SCRIPT: &str = include_str!("console/console.js");
pub(super) const STYLE: &str = include_str!("console/console.css");

/// No inline script or style, nothing from elsewhere, never framed.
pub(super) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// `{route: value}` sums of a counter family by its `route` label.
fn by_route(metrics: &Metrics, family: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for f in metrics.registry().gather() {
        if f.name() != family {
            continue;
        }
        for m in f.get_metric() {
            let route = m
                .get_label()
                .iter()
                .find(|l| l.name() == "route")
                .map(|l| l.value().to_string())
                .unwrap_or_default();
            *out.entry(route).or_default() += m.get_counter().get_value();
        }
    }
    out
}

/// The console's data: routes (in match order), issuers, and counters to rate.
pub(super) fn data(snap: &Snapshot, metrics: &Metrics) -> Value {
    let requests = by_route(metrics, "gateway_requests_total");
    let denials = by_route(metrics, "gateway_rejections_total");
    let routes: Vec<Value> = snap
        .routes
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "methods": r.methods.as_ref().map(|ms| ms.iter().map(|m| m.as_str()).collect::<Vec<_>>()),
                "path": r.path.as_str(),
                "auth": if r.auth == crate::policy::AuthMode::Jwt { "jwt" } else { "none" },
                "scopes": r.scopes.to_string(),
                "issuers": r.issuers,
                "limits": r.limit_policy.to_str().unwrap_or(""),
                "limit_keys": r.limits.iter().map(|(_, g)| g.key.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(" | ")).collect::<Vec<_>>(),
                "upstream": snap.upstreams[r.upstream].name,
                "require_tls": r.require_tls.unwrap_or(snap.config.server.require_tls),
                "requests_total": requests.get(&r.name).copied().unwrap_or(0.0),
                "denials_total": denials.get(&r.name).copied().unwrap_or(0.0),
            })
        })
        .collect();
    let issuers: Vec<Value> = snap
        .auth
        .issuers()
        .iter()
        .map(|i| {
            let (last, next_in, failures) = i.refresh_state();
            let keys = i.keys();
            json!({
                "name": i.name(),
                "issuer": i.cfg.issuer,
                "audiences": i.cfg.audiences,
                "algorithms": i.cfg.algorithms.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>(),
                "kids": keys.keys.iter().map(|k| k.kid.clone().unwrap_or_else(|| "(no kid)".into())).collect::<Vec<_>>(),
                "ready": i.is_ready(),
                "last_refresh_unix": last,
                "next_refresh_in_secs": next_in,
                "failures_in_a_row": failures,
                "healthy": i.is_ready() && failures == 0,
            })
        })
        .collect();
    json!({
        "routes": routes,
        "issuers": issuers,
        "unmatched": {
            "requests_total": requests.get("_none").copied().unwrap_or(0.0),
            "denials_total": denials.get("_none").copied().unwrap_or(0.0),
        },
    })
}
