//! The RSS check: every token of the walk file once through the rate-limited route (a new
//! token and a new limiter key per request), then the gateway's RSS and cache counters. Its
//! first pass is the walk row of the table.

use std::path::Path;
use std::time::Duration;

use crate::fixtures::Fixtures;
use crate::net::metric;
use crate::procs::{cpu_ticks, rss_kib};
use crate::proxies::Gateway;
use crate::rows::Sample;
use crate::wrk::{run_wrk, Load};
pub(crate) struct Walk {
    /// The first pass: every request carries a token the gateway has not seen (when
    /// `first_all_new`): req/s, latency and CPU-µs of signature verification plus a new
    /// limiter key per request.
    pub(crate) first: Option<Sample>,
    pub(crate) first_all_new: bool,
    pub(crate) requests: u64,
    pub(crate) non2xx: u64,
    pub(crate) failure: Option<String>,
    pub(crate) rss_before_kib: Option<u64>,
    pub(crate) rss_kib: Option<u64>,
    pub(crate) cached: Option<f64>,
    pub(crate) limiter_keys: Option<f64>,
    pub(crate) misses: Option<f64>,
}

/// Walk every token of the walk file at least once through the rate-limited route (passes of
/// 2 s, each starting where the previous one stopped), then read the gateway's RSS.
pub(crate) fn walk_tokens(
    fx: &Fixtures,
    gw: &Gateway,
    lua: &Path,
    count: usize,
    ticks: f64,
) -> Walk {
    let (gw_addr, admin, pid) = (&gw.addr, gw.admin.as_str(), gw.pid);
    println!("RSS check: sending {count} distinct tokens to the rate-limited route");
    let mut walk = Walk {
        first: None,
        first_all_new: false,
        requests: 0,
        non2xx: 0,
        failure: None,
        rss_before_kib: rss_kib(pid),
        rss_kib: None,
        cached: None,
        limiter_keys: None,
        misses: None,
    };
    let miss0 = metric(admin, "gateway_token_cache_requests_total{result=\"miss\"}");
    for _ in 0..100 {
        if walk.requests >= count as u64 {
            break;
        }
        let load = Load {
            url: format!("http://{gw_addr}/jwt-limited"),
            headers: Vec::new(),
            script: Some((
                lua.to_path_buf(),
                vec![
                    fx.walk.to_string_lossy().to_string(),
                    walk.requests.to_string(),
                ],
            )),
        };
        let cpu0 = cpu_ticks(pid);
        match run_wrk(&load, 2.0) {
            Ok(w) => {
                let cpu1 = cpu_ticks(pid);
                if walk.first.is_none() {
                    walk.first_all_new = w.requests <= count as u64;
                    let cpu_us = match (cpu0, cpu1) {
                        (Some(a), Some(b)) if w.requests > 0 => {
                            b.saturating_sub(a) as f64 / ticks * 1e6 / w.requests as f64
                        }
                        _ => f64::NAN,
                    };
                    walk.first = Some(Sample {
                        wrk: w.clone(),
                        cpu_us_per_req: cpu_us,
                        round: 0,
                        other_pct: f64::NAN,
                        steal_pct: f64::NAN,
                    });
                }
                walk.requests += w.requests;
                walk.non2xx += w.non2xx + w.socket_errors;
                if w.requests == 0 {
                    walk.failure = Some("a walk pass completed no request".to_string());
                    break;
                }
            }
            Err(e) => {
                walk.failure = Some(e);
                break;
            }
        }
    }
    // Let the token cache apply its pending inserts before reading RSS and entries.
    std::thread::sleep(Duration::from_secs(1));
    walk.rss_kib = rss_kib(pid);
    walk.cached = metric(admin, "gateway_token_cache_entries");
    walk.limiter_keys = metric(admin, "gateway_ratelimit_keys");
    let miss1 = metric(admin, "gateway_token_cache_requests_total{result=\"miss\"}");
    walk.misses = match (miss0, miss1) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    walk
}
