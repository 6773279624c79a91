//! Route-table tests: `wetrials-gateway test --config FILE CASES.toml…`. Each case is a request
//! decided by the proxy's own decision core (`decide::decide`, the very function the proxy
//! calls) against a snapshot of the config built offline: no network, no upstream, no JWKS
//! fetch. Every issuer gets a key generated here (of its first algorithm the runner can
//! sign), so cases give claims instead of tokens; the rate limiter runs on a virtual clock
//! that cases move with `at = "+61s"`.

mod cases;
pub(crate) mod explain;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method};
use jsonwebtoken::Algorithm;
use serde_json::{json, Value as Json};

use crate::config::{GatewayConfig, IssuerConfig};
use crate::decide::{self, Admission, OfflineRequest, Recorder, Reject, Step};
use crate::metrics::Metrics;
use crate::mint::{KeyAlg, SigningKey};
use crate::ratelimit::ManualClock;
use crate::state::Snapshot;
use cases::{Case, CaseToken};

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One line per case, a diff and the decision trace for each failure, a summary line.
    Text,
    /// JUnit XML, for CI systems.
    Junit,
}

/// The one-thread runtime the offline commands (`test`, `explain`) run on; `None` (said on
/// stderr) when it cannot start.
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            None
        }
    }
}

/// Exit status of `test`: 0 every case passed, 1 a case failed, 2 the tests could not run
/// (a bad config or cases file: every problem is printed with its location).
pub fn run(config: &Path, files: &[PathBuf], format: Format) -> u8 {
    let cfg = match crate::config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: invalid", config.display());
            for p in e.problems() {
                eprintln!("  - {p}");
            }
            return 2;
        }
    };
    let mut all = Vec::new();
    let mut problems = Vec::new();
    for f in files {
        match std::fs::read_to_string(f) {
            Ok(text) => match cases::parse(&f.display().to_string(), &text) {
                Ok(c) => all.extend(c),
                Err(p) => problems.extend(p.0),
            },
            Err(e) => problems.push(format!("{}: cannot read: {e}", f.display())),
        }
    }
    if !problems.is_empty() {
        eprintln!("cases invalid:");
        for p in problems {
            eprintln!("  - {p}");
        }
        return 2;
    }
    let Some(runtime) = runtime() else {
        return 2;
    };
    let results = match runtime.block_on(run_cases(cfg, &all)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot run the cases: {e}");
            return 2;
        }
    };
    let failed = results.iter().filter(|r| !r.diffs.is_empty()).count();
    let text = match format {
        Format::Text => text_report(&all, &results),
        Format::Junit => junit_report(&all, &results),
    };
    write_out(&text);
    u8::from(failed > 0)
}

/// Standard output, where a closed pipe (`| head`) is not an error worth a panic.
fn write_out(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// `wetrials-gateway explain`'s arguments.
pub struct ExplainArgs {
    pub config: PathBuf,
    pub method: String,
    pub path: String,
    /// `Name: value` each.
    pub headers: Vec<String>,
    /// The token, else stdin when it is not a terminal, else no token.
    pub token_file: Option<PathBuf>,
    /// A JWKS document installed as every issuer's keys, instead of fetching them.
    pub jwks_file: Option<PathBuf>,
    pub body: Option<String>,
    pub tls: bool,
    pub peer: Option<std::net::IpAddr>,
    pub json: bool,
}

/// `explain`: exit 0 when the request would be forwarded, 1 when it would be refused, 2 when
/// it could not be explained (bad config, unreadable token file, malformed arguments).
pub fn explain_cli(a: ExplainArgs) -> u8 {
    use std::io::{IsTerminal, Read};
    let cfg = match crate::config::load(&a.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: invalid", a.config.display());
            for p in e.problems() {
                eprintln!("  - {p}");
            }
            return 2;
        }
    };
    let token = match &a.token_file {
        Some(f) => match std::fs::read_to_string(f) {
            Ok(t) => Some(t.trim().to_string()),
            Err(e) => {
                eprintln!("{}: cannot read the token: {}", f.display(), e.kind());
                return 2;
            }
        },
        None if !std::io::stdin().is_terminal() => {
            let mut t = String::new();
            match std::io::stdin().read_to_string(&mut t) {
                Ok(_) => Some(t.trim().to_string()).filter(|t| !t.is_empty()),
                Err(e) => {
                    eprintln!("cannot read the token from stdin: {}", e.kind());
                    return 2;
                }
            }
        }
        None => None,
    };
    let mut headers = Vec::new();
    for h in &a.headers {
        match h.split_once(':') {
            Some((n, v)) if !n.trim().is_empty() => {
                headers.push((n.trim().to_string(), v.trim().to_string()))
            }
            _ => {
                eprintln!("--header {h:?}: expected \"Name: value\"");
                return 2;
            }
        }
    }
    let jwks = match &a.jwks_file {
        Some(f) => match std::fs::read(f) {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("{}: cannot read: {e}", f.display());
                return 2;
            }
        },
        None => None,
    };
    let input = explain::ExplainInput {
        method: a.method.clone(),
        target: a.path.clone(),
        headers,
        token,
        body: a.body.clone().unwrap_or_default().into_bytes(),
        tls: a.tls,
        peer: a.peer.unwrap_or(std::net::IpAddr::from([127, 0, 0, 1])),
    };
    let Some(runtime) = runtime() else {
        return 2;
    };
    let result = runtime.block_on(async {
        let metrics = Arc::new(Metrics::new().map_err(|e| e.to_string())?);
        let snap = Snapshot::offline(cfg, &metrics, Arc::new(ManualClock::new(0)))
            .map_err(|e| e.to_string())?;
        let http = reqwest::Client::new();
        for issuer in snap.auth.issuers() {
            let loaded = match &jwks {
                Some(doc) => issuer.install_jwks(doc).map(|_| ()),
                None => issuer.refresh_using(&http).await.map(|_| ()),
            };
            if let Err(e) = loaded {
                eprintln!("issuer {}: no keys ({e})", issuer.name());
            }
        }
        explain::explain(&snap, &metrics, &input).await
    });
    let e = match result {
        Ok(e) => e,
        Err(msg) => {
            eprintln!("cannot explain: {msg}");
            return 2;
        }
    };
    let text = if a.json {
        match serde_json::to_string_pretty(&e) {
            Ok(j) => j + "\n",
            Err(err) => {
                eprintln!("cannot print: {err}");
                return 2;
            }
        }
    } else {
        e.lines.join("\n") + "\n"
    };
    write_out(&text);
    u8::from(!e.forwarded)
}

/// What one case got, and what differed from its expectations.
struct CaseResult {
    diffs: Vec<String>,
    trace: Recorder,
}

/// The runner's key per issuer (by name), and the issuer's config.
struct Keys(BTreeMap<String, (SigningKey, IssuerConfig)>);

/// The first of an issuer's algorithms the runner can sign with.
fn signable(algs: &[Algorithm]) -> Option<KeyAlg> {
    algs.iter().find_map(|a| match a {
        Algorithm::RS256 => Some(KeyAlg::RS256),
        Algorithm::PS256 => Some(KeyAlg::PS256),
        Algorithm::ES256 => Some(KeyAlg::ES256),
        Algorithm::EdDSA => Some(KeyAlg::EdDSA),
        _ => None,
    })
}

async fn run_cases(cfg: GatewayConfig, cases: &[Case]) -> Result<Vec<CaseResult>, String> {
    let metrics = Arc::new(Metrics::new().map_err(|e| e.to_string())?);
    let clock = Arc::new(ManualClock::new(0));
    let issuers = cfg.issuers.clone();
    let snap = Snapshot::offline(cfg, &metrics, clock.clone()).map_err(|e| e.to_string())?;
    let mut keys = Keys(BTreeMap::new());
    for (issuer, icfg) in snap.auth.issuers().iter().zip(issuers) {
        let Some(alg) = signable(&icfg.algorithms) else {
            continue;
        };
        let key = SigningKey::generate("wetrials-test-key", alg)?;
        issuer
            .install_jwks(key.jwks().to_string().as_bytes())
            .map_err(|e| format!("issuer {}: {e}", icfg.name))?;
        keys.0.insert(icfg.name.clone(), (key, icfg));
    }
    let mut results = Vec::with_capacity(cases.len());
    for case in cases {
        clock.advance(case.at);
        results.push(run_case(&snap, &metrics, &keys, case).await);
    }
    Ok(results)
}

/// `"+1h"` / `"-3m"` for a time claim: now plus or minus that; anything else as given.
fn time_claim(v: &Json, now: i64) -> Result<Json, String> {
    let Some(s) = v.as_str() else {
        return Ok(v.clone());
    };
    let (sign, rest) = match s.as_bytes().first() {
        Some(b'+') => (1, &s[1..]),
        Some(b'-') => (-1, &s[1..]),
        _ => return Ok(v.clone()),
    };
    let d = humantime::parse_duration(rest).map_err(|e| format!("{s:?}: {e}"))?;
    let secs = i64::try_from(d.as_secs()).map_err(|_| format!("{s:?}: too far"))?;
    Ok(json!(now.saturating_add(sign * secs)))
}

fn mint(keys: &Keys, token: &CaseToken) -> Result<String, String> {
    let (issuer, header, claims) = match token {
        CaseToken::Literal(t) => return Ok(t.clone()),
        CaseToken::Minted {
            issuer,
            header,
            claims,
        } => (issuer, header, claims),
    };
    let (key, icfg) = match issuer {
        Some(name) => keys.0.get(name).ok_or_else(|| {
            format!("token.issuer {name:?}: no such issuer, or none of its algorithms is RS256, PS256, ES256 or EdDSA")
        })?,
        None => keys
            .0
            .values()
            .next()
            .ok_or("no issuer whose tokens the runner can sign (RS256, PS256, ES256, EdDSA)")?,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut c = serde_json::Map::new();
    c.insert("iss".into(), json!(icfg.issuer));
    if let Some(aud) = icfg.audiences.first() {
        c.insert("aud".into(), json!(aud));
    }
    c.insert("iat".into(), json!(now));
    c.insert("exp".into(), json!(now + 3600));
    for (k, v) in claims {
        let v = match k.as_str() {
            "exp" | "iat" | "nbf" => time_claim(v, now).map_err(|e| format!("token.{k}: {e}"))?,
            _ => v.clone(),
        };
        c.insert(k.clone(), v);
    }
    Ok(key.mint(header.clone(), &Json::Object(c)))
}

fn request(case: &Case, token: Option<&str>) -> Result<OfflineRequest, String> {
    let r = &case.request;
    let method = Method::from_bytes(r.method.as_bytes()).map_err(|e| e.to_string())?;
    let mut req = OfflineRequest::new(method, &r.target)?;
    for (n, v) in &r.headers {
        let name = HeaderName::from_bytes(n.as_bytes()).map_err(|e| e.to_string())?;
        let value = HeaderValue::from_str(v).map_err(|e| e.to_string())?;
        req.headers.append(name, value);
    }
    if let Some(t) = token {
        let value = HeaderValue::from_str(&format!("Bearer {t}"))
            .map_err(|_| "the token is not a valid header value".to_string())?;
        req.headers.append(http::header::AUTHORIZATION, value);
    }
    req.body = r.body.as_bytes().to_vec();
    req.tls = r.tls;
    req.peer = Some(r.peer);
    Ok(req)
}

async fn run_case(snap: &Snapshot, metrics: &Metrics, keys: &Keys, case: &Case) -> CaseResult {
    let token = match case.token.as_ref().map(|t| mint(keys, t)).transpose() {
        Ok(t) => t,
        Err(e) => {
            return CaseResult {
                diffs: vec![format!("cannot mint the token: {e}")],
                trace: Recorder::default(),
            }
        }
    };
    let mut last = None;
    for _ in 0..case.repeat {
        let mut req = match request(case, token.as_deref()) {
            Ok(r) => r,
            Err(e) => {
                return CaseResult {
                    diffs: vec![format!("cannot build the request: {e}")],
                    trace: Recorder::default(),
                }
            }
        };
        let mut adm = Admission::default();
        let mut trace = Recorder::default();
        let verdict = decide::decide(
            snap,
            metrics,
            &mut req,
            &mut adm,
            &mut trace,
            decide::Effects::Count,
        )
        .await;
        last = Some((verdict, adm, trace));
    }
    let Some((verdict, adm, trace)) = last else {
        return CaseResult {
            diffs: vec!["no request was sent".into()],
            trace: Recorder::default(),
        };
    };
    CaseResult {
        diffs: compare(snap, case, &verdict, &adm, &trace),
        trace,
    }
}

fn compare(
    snap: &Snapshot,
    case: &Case,
    verdict: &Result<(), Reject>,
    adm: &Admission,
    trace: &Recorder,
) -> Vec<String> {
    let e = &case.expect;
    let mut diffs = Vec::new();
    let check = |diffs: &mut Vec<String>, what: &str, want: &str, got: &str| {
        if want != got {
            diffs.push(format!("{what}: expected {want:?}, got {got:?}"));
        }
    };
    let status = match verdict {
        Ok(()) => 200,
        Err(r) => r.status(),
    };
    if let Some(want) = e.status {
        let got = match verdict {
            Ok(()) => "200 (forwarded)".to_string(),
            Err(r) => format!("{} ({})", r.status(), r.reason()),
        };
        if want != status {
            diffs.push(format!("status: expected {want}, got {got}"));
        }
    }
    let route = adm.route.as_ref().map(|r| r.name.as_str());
    if let Some(want) = &e.route {
        check(
            &mut diffs,
            "route",
            want.as_deref().unwrap_or("none"),
            route.unwrap_or("none"),
        );
    }
    if let Some(want) = &e.upstream {
        let got = adm
            .route
            .as_ref()
            .map(|r| snap.upstreams[r.upstream].name.as_str())
            .unwrap_or("none");
        check(&mut diffs, "upstream", want, got);
    }
    let reject = verdict.as_ref().err();
    if let Some(want) = &e.error {
        let got = reject
            .map(|r| r.error_pair().0)
            .unwrap_or("none (forwarded)");
        check(&mut diffs, "error", want, got);
    }
    if let Some(want) = &e.scope {
        let got = match reject {
            Some(Reject::Scope(m)) => m.0.as_str(),
            _ => "none",
        };
        check(&mut diffs, "scope", want, got);
    }
    if let Some(want) = &e.www_authenticate {
        let got = reject
            .and_then(Reject::www_authenticate)
            .unwrap_or_default();
        check(&mut diffs, "www-authenticate", want, &got);
    }
    for (name, want) in &e.headers {
        // Only a forwarded request sends anything upstream.
        let got = if verdict.is_ok() {
            adm.identity_headers()
                .find(|(n, _)| n.as_str() == name.as_str())
                .map(|(_, v)| v)
                .unwrap_or("")
        } else {
            ""
        };
        check(&mut diffs, &format!("header {name}"), want, got);
    }
    if let Some(want) = &e.would_deny {
        let want = if want.is_empty() { "none" } else { want };
        check(
            &mut diffs,
            "would_deny",
            want,
            adm.would_deny.unwrap_or("none"),
        );
    }
    if let Some(want) = &e.limit_key {
        let keys: Vec<&str> = trace
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Limit { key, .. } => Some(key.as_str()),
                _ => None,
            })
            .collect();
        if !keys.contains(&want.as_str()) {
            diffs.push(format!(
                "limit key: expected {want:?}, got {}",
                if keys.is_empty() {
                    "no limit decided".to_string()
                } else {
                    format!("{keys:?}")
                }
            ));
        }
    }
    diffs
}

fn text_report(cases: &[Case], results: &[CaseResult]) -> String {
    let mut out = String::new();
    for (case, r) in cases.iter().zip(results) {
        if r.diffs.is_empty() {
            let _ = writeln!(out, "ok    {}", case.name);
            continue;
        }
        let _ = writeln!(out, "FAIL  {}  ({})", case.name, case.location);
        for d in &r.diffs {
            let _ = writeln!(out, "        {d}");
        }
        let _ = writeln!(out, "        decision:");
        for s in &r.trace.steps {
            let _ = writeln!(out, "          {s}");
        }
    }
    let failed = results.iter().filter(|r| !r.diffs.is_empty()).count();
    let _ = writeln!(
        out,
        "\n{} passed, {} failed",
        results.len() - failed,
        failed
    );
    out
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

fn junit_report(cases: &[Case], results: &[CaseResult]) -> String {
    let failed = results.iter().filter(|r| !r.diffs.is_empty()).count();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuite name=\"wetrials-gateway route table\" tests=\"{}\" failures=\"{failed}\" errors=\"0\">",
        results.len()
    );
    for (case, r) in cases.iter().zip(results) {
        let class = case.location.split(": case").next().unwrap_or("cases");
        let _ = write!(
            out,
            "  <testcase classname=\"{}\" name=\"{}\"",
            xml_escape(class),
            xml_escape(&case.name)
        );
        if r.diffs.is_empty() {
            out.push_str("/>\n");
            continue;
        }
        let mut body = r.diffs.join("\n");
        body.push_str("\ndecision:\n");
        for s in &r.trace.steps {
            let _ = writeln!(body, "  {s}");
        }
        let _ = writeln!(
            out,
            ">\n    <failure message=\"{}\">{}</failure>\n  </testcase>",
            xml_escape(&r.diffs[0]),
            xml_escape(&body)
        );
    }
    out.push_str("</testsuite>\n");
    out
}
