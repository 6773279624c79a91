//! Request target -> route -> the path forwarded. Input: `METHOD TARGET` (or a bare target, GET).
//! The table is the shipped config/gateway.toml plus a public catch-all `/*` and an
//! `allow_encoded_slashes` route, as an operator might add them.
//! Properties:
//! - normalising is idempotent; the result starts with '/', has no empty, `.` or `..`
//!   segment and no trailing '/'; an unchanged (borrowed) result is the raw path;
//! - a request that routes is forwarded with exactly the normalised path, which builds a
//!   valid URI (never a 5xx), is origin-form, and routes to the same route again;
//! - without an encoded separator, a decoding upstream (Werkzeug, wsgiref) splits the
//!   forwarded path into the same segments, none of them a dot segment, and the route's
//!   template matches what it sees.
#![no_main]
use std::borrow::Cow;
use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pingora_http::RequestHeader;
use wetrials_gateway::fuzzing::{
    config_from_str_with, has_encoded_separator, normalize_path, route_table, target_form,
    RouteTable,
};
use wetrials_gateway_fuzz::{percent_decode, template_matches_decoded};

const EXTRA: &str = r#"
[[routes]]
name = "fuzz-files"
path = "/v1/files/*"
upstream = "api"
auth = "none"
allow_encoded_slashes = true

[[routes]]
name = "fuzz-public"
path = "/*"
upstream = "api"
auth = "none"
"#;

fn table() -> &'static RouteTable {
    static T: OnceLock<RouteTable> = OnceLock::new();
    T.get_or_init(|| {
        let raw = format!("{}{EXTRA}", include_str!("../../../config/gateway.toml"));
        let cfg = config_from_str_with(&raw, &|_| None, Path::new("."))
            .expect("the shipped config is valid");
        route_table(&cfg)
    })
}

fn check_normal(p: &str) {
    assert!(p.starts_with('/'), "{p:?}");
    if p != "/" {
        assert!(!p.ends_with('/'), "trailing slash in {p:?}");
        for seg in p[1..].split('/') {
            assert!(!matches!(seg, "" | "." | ".."), "segment {seg:?} in {p:?}");
        }
    }
    let again = normalize_path(p).expect("a normalised path normalises");
    assert_eq!(again, p, "normalising twice changed the path");
}

fuzz_target!(|data: &[u8]| {
    let (method, target) = match data.iter().position(|&b| b == b' ') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"GET"[..], data),
    };
    // What httparse could hand over as one target.
    if target.is_empty()
        || target
            .iter()
            .any(|&b| matches!(b, b' ' | b'\r' | b'\n' | 0))
    {
        return;
    }
    let Ok(method) = http::Method::from_bytes(method) else {
        return;
    };
    let Ok(req) = RequestHeader::build(method.clone(), target, None) else {
        return;
    };
    let absolute = match target_form(&req) {
        Ok(a) => a,
        Err(_) => return, // 400
    };
    let raw_path = req.uri.path();
    let Ok(norm) = normalize_path(raw_path) else {
        return;
    }; // 400
    check_normal(&norm);
    if let Cow::Borrowed(b) = &norm {
        assert_eq!(*b, raw_path);
    }
    let table = table();
    let route = table.find(&method, &norm);
    let owned = matches!(norm, Cow::Owned(_));
    if owned && has_encoded_separator(&norm) && !route.is_some_and(|r| r.allow_encoded_slashes) {
        return; // 400
    }
    let Some(route) = route else { return }; // 404
                                             // As `admit` + `upstream_request_filter` build it: the rewritten path when normalising
                                             // changed it, else the raw path (set explicitly for absolute-form, kept for origin-form).
    let forwarded: String = match &norm {
        Cow::Owned(p) => p.clone(),
        Cow::Borrowed(_) => raw_path.to_string(),
    };
    let _ = absolute;
    assert_eq!(forwarded, *norm, "forwarded path is not the routed path");
    let pq = match req.uri.query() {
        Some(q) => format!("{forwarded}?{q}"),
        None => forwarded.clone(),
    };
    let uri = http::Uri::builder()
        .path_and_query(pq.as_str())
        .build()
        .unwrap_or_else(|e| panic!("forwarded target {pq:?} is not a URI ({e}): a 500"));
    assert_eq!(uri.path(), forwarded);
    // The upstream receives it in origin-form and, as a gateway would, routes it the same.
    let up = RequestHeader::build(method.clone(), pq.as_bytes(), None).expect("rebuild");
    assert!(
        matches!(target_form(&up), Ok(None)),
        "forwarded target not origin-form"
    );
    assert_eq!(up.uri.path(), forwarded);
    let renorm = normalize_path(up.uri.path()).expect("forwarded path normalises");
    assert_eq!(renorm, forwarded);
    let again = table.find(&method, &renorm).expect("forwarded path routes");
    assert_eq!(again.name, route.name, "forwarded path routes elsewhere");
    // A decoding upstream's view.
    if !has_encoded_separator(&forwarded) {
        let segments: Vec<Vec<u8>> = if forwarded == "/" {
            Vec::new()
        } else {
            forwarded[1..]
                .split('/')
                .map(|s| percent_decode(s.as_bytes()))
                .collect()
        };
        for s in &segments {
            assert!(
                !s.is_empty()
                    && s != b"."
                    && s != b".."
                    && !s.contains(&b'/')
                    && !s.contains(&b'\\'),
                "upstream reads segment {:?} of {forwarded:?}",
                String::from_utf8_lossy(s)
            );
        }
        assert!(
            template_matches_decoded(route.path.as_str(), &segments),
            "route {} ({}) does not cover {forwarded:?} as a decoding upstream reads it",
            route.name,
            route.path.as_str()
        );
    }
});
