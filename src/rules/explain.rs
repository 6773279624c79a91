//! `explain`: one request, decided by the proxy's own decision core with a recording trace and
//! [`Effects::LookOnly`] (limits are peeked, never consumed; no metric moves; nothing reaches
//! an upstream), then told step by step. The token's own fields are inspected against the
//! issuers' config and keys to say *why* the core's verdict on it is what it is. The CLI
//! (`wetrials-gateway explain`) runs it on a snapshot of a config file; the admin listener's
//! `POST /explain` on the live snapshot, with its keys and its limiter state.

use std::collections::BTreeMap;
use std::net::IpAddr;

use http::{HeaderName, HeaderValue, Method};
use serde::Serialize;

use crate::auth::inspect::TokenFacts;
use crate::decide::{self, Admission, Effects, OfflineRequest, Recorder, Step};
use crate::metrics::Metrics;
use crate::state::Snapshot;

/// The request to explain.
#[derive(Debug, Clone)]
pub(crate) struct ExplainInput {
    pub method: String,
    /// The request target as a client would send it.
    pub target: String,
    pub headers: Vec<(String, String)>,
    /// Sent as `Authorization: Bearer …` unless the headers carry an `Authorization`.
    pub token: Option<String>,
    pub body: Vec<u8>,
    pub tls: bool,
    pub peer: IpAddr,
}

/// The rate-limit state the decision saw (the group with the fewest requests left).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RateState {
    pub limit: u32,
    pub remaining: u32,
    pub reset_secs: u64,
}

/// What the gateway would do, and why.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Explanation {
    /// 200 when the request would be forwarded.
    pub status: u16,
    pub forwarded: bool,
    /// `forwarded`, or the refusal's reason (the `reason` label of `gateway_rejections_total`).
    pub reason: &'static str,
    pub route: Option<String>,
    pub upstream: Option<String>,
    /// The JSON `error` and `error_description` of a refusal.
    pub error: Option<&'static str>,
    pub error_description: Option<String>,
    pub www_authenticate: Option<String>,
    /// The identity headers the upstream would get.
    pub identity_headers: BTreeMap<&'static str, String>,
    pub rate_limit: Option<RateState>,
    /// The path sent upstream, when it differs from the target.
    pub upstream_path: Option<String>,
    pub steps: Vec<Step>,
    /// The token's fields, checked against the issuers (never the signature or the token).
    pub token: Option<TokenFacts>,
    /// Everything above as lines for people.
    pub lines: Vec<String>,
}

fn request(input: &ExplainInput) -> Result<OfflineRequest, String> {
    let method = Method::from_bytes(input.method.as_bytes())
        .map_err(|_| format!("method {:?} is not an HTTP method token", input.method))?;
    let mut req = OfflineRequest::new(method, &input.target)?;
    for (n, v) in &input.headers {
        let name = HeaderName::from_bytes(n.as_bytes())
            .map_err(|_| format!("header name {n:?} is not valid"))?;
        let value = HeaderValue::from_str(v)
            .map_err(|_| format!("the value of header {n} is not valid"))?;
        req.headers.append(name, value);
    }
    if let Some(t) = &input.token {
        if !req.headers.contains_key(http::header::AUTHORIZATION) {
            let value = HeaderValue::from_str(&format!("Bearer {}", t.trim()))
                .map_err(|_| "the token is not a valid header value".to_string())?;
            req.headers.insert(http::header::AUTHORIZATION, value);
        }
    }
    req.body = input.body.clone();
    req.tls = input.tls;
    req.peer = Some(input.peer);
    Ok(req)
}

/// The bearer token the request carries, for inspection.
fn bearer_token(req: &OfflineRequest) -> Option<String> {
    let v = req
        .headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// Explain one request against `snap`; `Err` for input that is not a request at all.
pub(crate) async fn explain(
    snap: &Snapshot,
    metrics: &Metrics,
    input: &ExplainInput,
) -> Result<Explanation, String> {
    let mut req = request(input)?;
    let token = bearer_token(&req);
    let mut adm = Admission::default();
    let mut trace = Recorder::default();
    let verdict = decide::decide(
        snap,
        metrics,
        &mut req,
        &mut adm,
        &mut trace,
        Effects::LookOnly,
    )
    .await;
    let facts = token.as_deref().map(|t| snap.auth.inspect(t));
    let (status, reason) = match &verdict {
        Ok(()) => (200, "forwarded"),
        Err(r) => (r.status(), r.reason()),
    };
    let reject = verdict.as_ref().err();
    let identity_headers: BTreeMap<&'static str, String> = if verdict.is_ok() {
        adm.identity_headers()
            .map(|(n, v)| (n.as_str(), v.to_string()))
            .collect()
    } else {
        BTreeMap::new()
    };
    let mut lines = Vec::new();
    for step in &trace.steps {
        lines.push(step.to_string());
        if matches!(step, Step::Credentials { .. }) {
            if let Some(f) = &facts {
                lines.extend(f.lines.iter().map(|l| format!("  {l}")));
            }
        }
    }
    let mut e = Explanation {
        status,
        forwarded: verdict.is_ok(),
        reason,
        route: adm.route.as_ref().map(|r| r.name.clone()),
        upstream: adm
            .route
            .as_ref()
            .map(|r| snap.upstreams[r.upstream].name.clone()),
        error: reject.map(|r| r.error_pair().0),
        error_description: reject.map(|r| r.error_pair().1),
        www_authenticate: reject.and_then(decide::Reject::www_authenticate),
        identity_headers,
        rate_limit: adm.rate.as_ref().map(|d| RateState {
            limit: d.limit,
            remaining: d.remaining,
            reset_secs: d.reset.as_secs() + u64::from(d.reset.subsec_nanos() > 0),
        }),
        upstream_path: adm.rewritten_path.clone(),
        steps: trace.steps,
        token: facts,
        lines: Vec::new(),
    };
    match reject {
        None => {
            lines.push(format!(
                "answer    forwarded to upstream {} as {}",
                e.upstream.as_deref().unwrap_or("-"),
                e.upstream_path.as_deref().unwrap_or(req.uri.path())
            ));
            for (n, v) in &e.identity_headers {
                lines.push(format!("  {n}: {v}"));
            }
        }
        Some(r) => {
            lines.push(format!(
                "answer    {} {} {{\"error\": {:?}, \"error_description\": {:?}}}",
                r.status(),
                http::StatusCode::from_u16(r.status())
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or(""),
                r.error_pair().0,
                r.error_pair().1
            ));
            for (n, v) in r.headers() {
                lines.push(format!("  {n}: {v}"));
            }
        }
    }
    if let Some(rate) = &e.rate_limit {
        lines.push(format!(
            "quota     this request would leave {} of {} (window resets in {} s); explain used none",
            rate.remaining, rate.limit, rate.reset_secs
        ));
    }
    e.lines = lines;
    Ok(e)
}
