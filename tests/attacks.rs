//! Attacks on the request path, replayed against the real binary: each test sends what an
//! attacker would send and checks that the gateway and the upstream cannot read the request
//! differently. Where an attack depends on how an upstream decodes, a real decoding stack
//! stands behind the gateway: Python's wsgiref (percent-decodes PATH_INFO, maps `_` in header
//! names to the same variable as `-`) and Node's http (hands the raw request target to the app).
//!
//! - encoded `/` and `\` in paths: 400 unless the route opts in;
//! - request targets that are not origin-form: 400; absolute-form goes upstream in origin-form;
//! - identity headers spelled with `_`: never reach the upstream;
//! - `client_id` on a JWT route comes from the token only; on public routes every spelling
//!   of a second client (repeated parameter, Basic beside a body secret or another id) is 400,
//!   and a per-address limit beside the per-client one stops fresh ids buying fresh quota;
//! - `X-Forwarded-For` garbage left of the client address does not merge clients;
//! - `require_tls`: plain HTTP is refused (403 or 426), HTTPS through a trusted balancer passes;
//! - framing an upstream could read differently (repeated `Content-Length`, `gzip, chunked`,
//!   lower-case methods) is 400.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use base64::Engine;
use common::*;
use serde_json::{json, Value};

// ------------------------------------------------------------------------ real upstreams

/// A real upstream stack run as a child process from tests/upstreams/: it prints its port,
/// answers what it received as JSON, and counts requests (`GET /__hits`).
struct Stack {
    child: Child,
    port: u16,
}

impl Stack {
    fn start(program: &str, script: &str) -> Stack {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/upstreams/");
        let mut child = Command::new(program)
            .arg(format!("{path}{script}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program} {script}: {e}"));
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read port");
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{script} printed {line:?}, not a port"));
        Stack { child, port }
    }

    /// Python's wsgiref with a small routing app.
    fn wsgi() -> Stack {
        Stack::start("python3", "wsgi_upstream.py")
    }

    /// Node's http server.
    fn node() -> Stack {
        Stack::start("node", "node_upstream.js")
    }

    fn peer(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn hits(&self) -> u64 {
        let url = format!("http://{}/__hits", self.peer());
        let v: Value = client()
            .get(url)
            .send()
            .await
            .expect("upstream /__hits")
            .json()
            .await
            .expect("JSON");
        v["hits"].as_u64().expect("hits")
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw request line + headers (`Connection: close`), answered once.
async fn raw(gw: &TestGateway, head: &str) -> RawResponse {
    let req = format!("{head}\r\nConnection: close\r\n\r\n");
    raw_request(gw.addr(), req.as_bytes())
        .await
        .unwrap_or_else(|| panic!("no answer to {head:?}"))
}

fn assert_raw_400(r: &RawResponse, what: &str) {
    assert_eq!(r.status, 400, "{what}: {} {}", r.status, r.text());
    let v: Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|_| panic!("{what}: not JSON: {}", r.text()));
    assert_eq!(v["error"], "invalid_request", "{what}: {v}");
}

// ------------------------------------------------------------------ 1. encoded slashes

/// The shipped shape of the studies routes (participants first, studies as a prefix), an
/// admin prefix, and a route that opts in to encoded slashes, in front of wsgiref.
async fn wsgi_gateway(li: &LocalIssuer, echo: &EchoUpstream, py: &Stack) -> TestGateway {
    TestGateway::start(&wsgi_config(li, echo, py)).await
}

fn wsgi_config(li: &LocalIssuer, echo: &EchoUpstream, py: &Stack) -> Config {
    Config::basic(li, echo)
        .upstream(UpstreamSpec::new("py", &[py.peer()]))
        .route(
            RouteSpec::new("participants-read", "/v1/studies/{id}/participants/*", "py")
                .methods(&["GET"])
                .scopes(&["read:participants"]),
        )
        .route(
            RouteSpec::new("studies-read", "/v1/studies/*", "py")
                .methods(&["GET"])
                .scopes(&["read:studies"]),
        )
        .route(RouteSpec::new("admin", "/v1/admin/*", "py").scopes(&["admin:read"]))
        .route(
            RouteSpec::new("files", "/v1/files/{name}", "py")
                .public()
                .set("allow_encoded_slashes", true),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_slashes_are_refused_so_a_decoding_upstream_cannot_reroute() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let py = Stack::wsgi();
    let gw = wsgi_gateway(&li, &echo, &py).await;
    let reader = token(&li, "u1", "read:studies");
    let admin = token(&li, "u2", "admin:read");

    // What the app serves when the gateway forwards: the study, and a 403 for participants.
    let r = gw.get_with_token("/v1/studies/7", &reader).await;
    assert_eq!(r.json()["handler"], "study", "{}", r.describe());
    let r = gw
        .get_with_token("/v1/studies/7/participants", &reader)
        .await;
    assert_insufficient_scope(&r, "read:participants");
    let before = py.hits().await;

    for (path, t) in [
        ("/v1/studies/7%2Fparticipants", &reader),
        ("/v1/studies/7%2fparticipants", &reader),
        ("/v1/studies/7%5Cparticipants", &reader),
        ("/v1/admin/users%2F42", &admin),
        ("/v1/admin/users%2f42", &admin),
        ("/v1/nowhere%2Fat/all", &admin),
    ] {
        let r = raw(
            &gw,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {t}",
                gw.addr()
            ),
        )
        .await;
        assert_raw_400(&r, path);
    }
    // A raw backslash, which some servers read as '/'.
    let r = raw(
        &gw,
        &format!(
            "GET /v1/studies/7\\participants HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {reader}",
            gw.addr()
        ),
    )
    .await;
    assert!(r.status == 400, "raw backslash: {} {}", r.status, r.text());
    assert_eq!(py.hits().await, before, "nothing reached the upstream");
    let refused = gw
        .metric(
            "gateway_rejections_total",
            &[("route", "studies-read"), ("reason", "encoded_slash")],
        )
        .await;
    assert!(refused >= 3.0, "counted: {refused}");

    // A route that opts in forwards them: wsgiref then decodes the slash, as documented.
    let r = send(gw.get("/v1/files/a%2Fb")).await;
    assert_eq!(r.json()["path_info"], "/v1/files/a/b", "{}", r.describe());
}

// ------------------------------------------------------------------ 2. request targets

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_targets_that_are_not_origin_form_are_refused_and_absolute_form_is_rewritten() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let node = Stack::node();
    let gw = TestGateway::start(
        &Config::basic(&li, &echo)
            .upstream(UpstreamSpec::new("node", &[node.peer()]))
            .route(RouteSpec::new("admin", "/v1/admin/*", "node").scopes(&["admin:read"]))
            .route(RouteSpec::new("public", "/*", "node").public()),
    )
    .await;
    let host = gw.addr();
    // Sanity: the public route forwards, and Node sees the target it was sent.
    let r = send(gw.get("/v1/public/x")).await;
    assert_eq!(r.json()["url"], "/v1/public/x", "{}", r.describe());
    let before = node.hits().await;

    for target in [
        "x:/v1/admin/x",
        "v1/admin/x",
        "./v1/admin/x",
        " /v1/admin/x",
        "*",
        "?x=/v1/admin",
        "http:/v1/admin/x",
        "http://user@evil/v1/admin/x",
        "ftp://h/v1/admin/x",
    ] {
        let r = raw_request(
            gw.addr(),
            format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        let r = r.unwrap_or_else(|| panic!("no answer to target {target:?}"));
        assert_eq!(
            r.status,
            400,
            "target {target:?}: {} {}",
            r.status,
            r.text()
        );
    }
    assert_eq!(node.hits().await, before, "no odd target reached Node");

    // Absolute-form: routed by its path, sent on in origin-form with its authority as Host.
    let r = raw(
        &gw,
        &format!("GET http://{host}/v1/public/../public/y?q=1 HTTP/1.1\r\nhost: {host}"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen: Value = serde_json::from_slice(&r.body).expect("JSON");
    assert_eq!(seen["url"], "/v1/public/y?q=1");
    assert_eq!(seen["host"], host.to_string());
    // The Host the gateway sets is spelled as pingora spells it, whatever the client wrote.
    let got = raw_headers(&seen);
    let names: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        names.contains(&"Host") && !names.contains(&"host"),
        "{names:?}"
    );
    let r = raw(
        &gw,
        &format!("GET http://{host}/v1/admin/x HTTP/1.1\r\nHost: {host}"),
    )
    .await;
    assert_eq!(
        r.status,
        401,
        "absolute-form admin path is the admin route: {}",
        r.text()
    );
    assert_eq!(node.hits().await, before + 1);
}

// ------------------------------------------------------------- 3b. header name spelling

/// One request over a fresh connection, read to its end: the response head as text, the body.
async fn exchange(addr: std::net::SocketAddr, request: &str) -> (String, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole response");
    let body = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (head.to_string(), body)
}

/// The header names (as spelled) and values Node received, in order.
fn raw_headers(seen: &Value) -> Vec<(String, String)> {
    let flat: Vec<String> = seen["raw_headers"]
        .as_array()
        .expect("raw_headers")
        .iter()
        .map(|v| v.as_str().expect("string").to_string())
        .collect();
    flat.chunks(2)
        .map(|p| (p[0].clone(), p[1].clone()))
        .collect()
}

/// By default every name goes on as spelled, both ways. With `preserve_header_case = false`
/// the gateway edits the headers without the spelling (cheaper): names arrive in lower case,
/// and everything else (which headers, their values and order, the identity, the stripping of
/// spoofed identity headers, the status and its reason phrase) is the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_names_keep_their_spelling_unless_configured_and_nothing_else_changes() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let node = Stack::node();
    let t = token(&li, "speller", "read:studies");
    let mut seen_by_mode = Vec::new();
    for preserve in [true, false] {
        let gw = TestGateway::start(
            &Config::basic(&li, &echo)
                .server_set("preserve_header_case", preserve)
                .upstream(UpstreamSpec::new("node", &[node.peer()]))
                .route(
                    RouteSpec::new("spelled", "/v1/spelled/*", "node")
                        .scopes(&["read:studies"])
                        .rate_limit(100, "1m", &["sub"]),
                ),
        )
        .await;
        let (head, seen) = exchange(
            gw.addr(),
            &format!(
                "GET /v1/spelled/x?q=%2F HTTP/1.1\r\nHost: spelled.test\r\nX-CuStOm-Thing: a\r\nx-custom-thing: b\r\nX-AUTH-SUBJECT: admin\r\nX-Request-Id: spelling-test-1\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n"
            ),
        )
        .await;
        let status_line = head.lines().next().unwrap_or_default();
        assert_eq!(
            status_line, "HTTP/1.1 200 Fine Thanks",
            "preserve={preserve}: {head}"
        );
        assert_eq!(seen["url"], "/v1/spelled/x?q=%2F", "preserve={preserve}");
        assert_eq!(seen["host"], "spelled.test", "preserve={preserve}");
        let got = raw_headers(&seen);
        let named = |n: &str| -> Vec<&str> {
            got.iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.as_str())
                .collect()
        };
        assert_eq!(
            named("x-custom-thing"),
            ["a", "b"],
            "preserve={preserve}: {got:?}"
        );
        assert_eq!(
            named("x-auth-subject"),
            ["speller"],
            "preserve={preserve}: {got:?}"
        );
        assert_eq!(
            named("x-auth-scopes"),
            ["read:studies"],
            "preserve={preserve}"
        );
        assert_eq!(
            named("x-request-id"),
            ["spelling-test-1"],
            "preserve={preserve}"
        );
        assert_eq!(
            named("x-forwarded-for"),
            ["127.0.0.1"],
            "preserve={preserve}"
        );
        assert_eq!(named("x-forwarded-proto"), ["http"], "preserve={preserve}");
        let has = |h: &str| head.lines().any(|l| l == h);
        assert!(
            has("x-request-id: spelling-test-1"),
            "preserve={preserve}: {head}"
        );
        assert!(has("ratelimit-limit: 100"), "preserve={preserve}: {head}");
        assert!(
            has("ratelimit-remaining: 99"),
            "preserve={preserve}: {head}"
        );
        let names: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        if preserve {
            assert!(names.contains(&"X-CuStOm-Thing"), "{names:?}");
            assert!(names.contains(&"x-custom-thing"), "{names:?}");
            assert!(has("X-Upstream-MiXed: 1"), "{head}");
            assert!(has("Content-Type: application/json"), "{head}");
        } else {
            assert!(!names.contains(&"X-CuStOm-Thing"), "{names:?}");
            assert_eq!(
                names.iter().filter(|n| **n == "x-custom-thing").count(),
                2,
                "{names:?}"
            );
            assert!(has("x-upstream-mixed: 1"), "{head}");
            assert!(has("Content-Type: application/json"), "{head}");
        }
        let lower: Vec<(String, String)> = got
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        seen_by_mode.push(lower);
    }
    assert_eq!(
        seen_by_mode[0], seen_by_mode[1],
        "the upstream gets the same headers, values and order in both modes"
    );
}

// ------------------------------------------------------------------ 4. underscore names

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_spelled_with_underscores_never_reach_a_wsgi_upstream() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let py = Stack::wsgi();
    let t = token(&li, "lowuser", "read:studies");
    // Both ways of editing the forwarded headers (`proxy::headers`).
    for preserve in [true, false] {
        let gw = TestGateway::start(
            &wsgi_config(&li, &echo, &py).server_set("preserve_header_case", preserve),
        )
        .await;
        let r = send(
            gw.get("/v1/studies/7")
                .bearer_auth(&t)
                .header("X_Auth_Subject", "admin")
                .header("X-Auth_Scopes", "admin:write")
                .header("x_auth_client_id", "root-client")
                .header("X_Forwarded_For", "198.51.100.1")
                .header("X_Forwarded_Proto", "https")
                .header("X_Request_Id", "forged"),
        )
        .await;
        let seen = r.json();
        assert_eq!(seen["handler"], "study", "{seen}");
        assert_eq!(seen["sub"], "lowuser", "{seen}");
        assert_eq!(seen["scopes"], "read:studies", "{seen}");
        assert_eq!(seen["client_id"], "demo-client", "{seen}");
        assert_eq!(seen["forwarded_for"], "127.0.0.1", "{seen}");
        assert_eq!(seen["forwarded_proto"], "http", "{seen}");
        assert!(
            !seen["request_id"].as_str().unwrap_or("").contains("forged"),
            "{seen}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_underscore_names_follow_headers_with_underscores() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let cfg = |mode: &str| {
        Config::basic(&li, &echo)
            .server_set("headers_with_underscores", mode)
            .route(RouteSpec::new("public", "/v1/public/*", "api").public())
    };
    let send_one = |gw: &TestGateway| {
        send(
            gw.get("/v1/public/x")
                .header("X_Custom", "1")
                .header("X_Auth_Subject", "admin"),
        )
    };
    let header_names = |r: &Reply| -> Vec<String> {
        r.echo()["headers"]
            .as_object()
            .map(|h| h.keys().map(|k| k.to_ascii_lowercase()).collect())
            .unwrap_or_default()
    };

    let gw = TestGateway::start(&cfg("drop")).await;
    let names = header_names(&send_one(&gw).await);
    assert!(!names.iter().any(|n| n.contains('_')), "{names:?}");
    drop(gw);

    let gw = TestGateway::start(&cfg("forward")).await;
    let names = header_names(&send_one(&gw).await);
    assert!(names.contains(&"x_custom".to_string()), "{names:?}");
    assert!(!names.contains(&"x_auth_subject".to_string()), "{names:?}");
    drop(gw);

    let gw = TestGateway::start(&cfg("refuse")).await;
    let before = echo.hits();
    let r = send_one(&gw).await;
    assert_json_error(&r, 400, "invalid_request");
    assert_eq!(echo.hits(), before);
}

// ------------------------------------------------------------------ 5, 6. client_id

fn basic(user: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"))
    )
}

fn form(body: &str) -> (&'static str, String) {
    ("application/x-www-form-urlencoded", body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_id_key_on_a_jwt_route_comes_from_the_token_only() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let gw = TestGateway::start(
        &Config::basic(&li, &echo).route(
            RouteSpec::new("orders", "/v1/orders", "api")
                .scopes(&["read:studies"])
                .rate_limit(5, "1m", &["client_id"]),
        ),
    )
    .await;
    // No client_id and no azp in the token: the body's value must not be the key.
    let t = li.mint(&patch(
        li.claims("u1", "read:studies", 3600),
        json!({"client_id": null}),
    ));
    let mut admitted = 0;
    for i in 0..10 {
        let (ct, body) = form(&format!("client_id=random-{i}"));
        let r = send(
            gw.post("/v1/orders")
                .bearer_auth(&t)
                .header("content-type", ct)
                .body(body),
        )
        .await;
        match r.status {
            200 => admitted += 1,
            429 => {}
            s => panic!("unexpected {s}: {}", r.describe()),
        }
    }
    assert_eq!(admitted, 5, "one bucket (anonymous) for all ten");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_client_in_any_spelling_is_400_and_fresh_ids_do_not_buy_quota() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let gw = TestGateway::start(
        &Config::basic(&li, &echo).route(
            RouteSpec::new("token", "/v1/oauth/token", "api")
                .methods(&["POST"])
                .public()
                .set(
                    "rate_limit",
                    json!([
                        {"requests": 5, "period": "1m", "key": ["client_id", "ip"]},
                        {"requests": 8, "period": "1m", "key": ["ip"]},
                    ]),
                ),
        ),
    )
    .await;
    let post = |auth: Vec<String>, query: &str, ct: &str, body: &str| {
        let mut rb = gw
            .post(&format!("/v1/oauth/token{query}"))
            .header("content-type", ct.to_string())
            .body(body.to_string());
        for a in auth {
            rb = rb.header("authorization", a);
        }
        send(rb)
    };
    let before = echo.hits();
    let form_ct = "application/x-www-form-urlencoded";
    for (what, auth, query, ct, body) in [
        (
            "client_id twice",
            vec![],
            "",
            form_ct,
            "grant_type=client_credentials&client_id=r1&client_id=victim",
        ),
        (
            "Basic and another body client_id",
            vec![basic("r2", "s")],
            "",
            form_ct,
            "grant_type=client_credentials&client_id=victim",
        ),
        (
            "Basic and client_secret in the body",
            vec![basic("victim", "s")],
            "",
            form_ct,
            "grant_type=client_credentials&client_secret=s",
        ),
        (
            "two Basic headers",
            vec![basic("r3", "s"), basic("victim", "s")],
            "",
            form_ct,
            "grant_type=client_credentials",
        ),
        (
            "query and body disagree",
            vec![],
            "?client_id=victim",
            form_ct,
            "grant_type=client_credentials&client_id=r4",
        ),
        (
            "JSON key twice",
            vec![],
            "",
            "application/json",
            r#"{"client_id":"r5","client_id":"victim"}"#,
        ),
        (
            "malformed Basic",
            vec!["Basic !!!".into()],
            "",
            form_ct,
            "x=1",
        ),
    ] {
        let r = post(auth, query, ct, body).await;
        let v = assert_json_error(&r, 400, "invalid_request");
        assert!(v["error_description"].is_string(), "{what}: {v}");
    }
    assert_eq!(
        echo.hits(),
        before,
        "no conflicting request reached the server"
    );

    // One client in two agreeing places is fine.
    let r = post(
        vec![basic("app1", "s")],
        "",
        form_ct,
        "grant_type=client_credentials&client_id=app1",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.describe());

    // Fresh client ids each time: the per-address limit (8) still counts them.
    let mut admitted = 1;
    for i in 0..12 {
        let r = post(
            vec![],
            "",
            form_ct,
            &format!("grant_type=client_credentials&client_id=fresh-{i}"),
        )
        .await;
        match r.status {
            200 => admitted += 1,
            429 => assert!(r.header("retry-after").is_some()),
            s => panic!("unexpected {s}: {}", r.describe()),
        }
    }
    assert_eq!(
        admitted, 8,
        "8 per address per minute, whatever the client_id"
    );
}

// ------------------------------------------------------------------ 8. X-Forwarded-For

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_left_of_the_client_in_x_forwarded_for_does_not_merge_clients() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let gw = TestGateway::start(
        &Config::basic(&li, &echo)
            .trusted_proxies(&["127.0.0.1/32"])
            .route(
                RouteSpec::new("public", "/v1/public/*", "api")
                    .public()
                    .rate_limit(2, "1m", &["ip"]),
            ),
    )
    .await;
    let get = |xff: &'static str| send(gw.get("/v1/public/x").header("x-forwarded-for", xff));
    assert_eq!(get("garbage, 203.0.113.7").await.status, 200);
    assert_eq!(get("also garbage, 203.0.113.7").await.status, 200);
    assert_eq!(get("garbage, 203.0.113.7").await.status, 429);
    // Another client behind the same proxy has its own bucket.
    assert_eq!(get("garbage, 203.0.113.8").await.status, 200);
    assert_eq!(get("203.0.113.9").await.status, 200);
}

// ------------------------------------------------------------------ 11. require_tls

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_tls_refuses_plain_http_and_believes_only_trusted_forwarded_proto() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let routes = |cfg: Config| {
        cfg.route(
            RouteSpec::new("token", "/v1/oauth/token", "api")
                .public()
                .set("require_tls", true),
        )
        .route(RouteSpec::new("open", "/v1/public/*", "api").public())
    };
    let gw = TestGateway::start(&routes(Config::basic(&li, &echo))).await;
    let before = echo.hits();
    let r = send(
        gw.post("/v1/oauth/token")
            .header("x-forwarded-proto", "https")
            .body("grant_type=client_credentials"),
    )
    .await;
    let v = assert_json_error(&r, 403, "invalid_request");
    assert!(
        v["error_description"].as_str().unwrap().contains("HTTPS"),
        "{v}"
    );
    assert!(r.header("location").is_none(), "never a redirect");
    assert_eq!(echo.hits(), before);
    assert_eq!(
        gw.metric(
            "gateway_rejections_total",
            &[("route", "token"), ("reason", "tls_required")]
        )
        .await,
        1.0
    );
    // Other routes are not affected.
    assert_eq!(send(gw.get("/v1/public/x")).await.status, 200);
    drop(gw);

    // 426 when configured, with the protocols to switch to.
    let gw = TestGateway::start(
        &routes(Config::basic(&li, &echo)).server_set("require_tls_status", 426),
    )
    .await;
    let r = send(gw.post("/v1/oauth/token")).await;
    assert_json_error(&r, 426, "invalid_request");
    assert!(
        r.header("upgrade").is_some_and(|u| u.contains("TLS")),
        "{}",
        r.describe()
    );
    drop(gw);

    // Behind a TLS-terminating balancer in trusted_proxies: its X-Forwarded-Proto counts.
    let gw =
        TestGateway::start(&routes(Config::basic(&li, &echo)).trusted_proxies(&["127.0.0.1/32"]))
            .await;
    let r = send(
        gw.post("/v1/oauth/token")
            .header("x-forwarded-proto", "https"),
    )
    .await;
    let seen = r.echo();
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https", "{seen}");
    let r = send(
        gw.post("/v1/oauth/token")
            .header("x-forwarded-proto", "http"),
    )
    .await;
    assert_eq!(r.status, 403);
    let r = send(gw.post("/v1/oauth/token")).await;
    assert_eq!(r.status, 403);
}

// ------------------------------------------------------------------ HTTP edge cases

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_an_upstream_could_read_differently_is_400() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let gw = TestGateway::start(
        &Config::basic(&li, &echo).route(RouteSpec::new("public", "/v1/public/*", "api").public()),
    )
    .await;
    let host = gw.addr();
    let before = echo.hits();
    for (what, head) in [
        (
            "Content-Length: 3, 3",
            format!("POST /v1/public/x HTTP/1.1\r\nHost: {host}\r\nContent-Length: 3, 3\r\n\r\nabc"),
        ),
        (
            "two Content-Length",
            format!("POST /v1/public/x HTTP/1.1\r\nHost: {host}\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"),
        ),
        (
            "gzip, chunked",
            format!("POST /v1/public/x HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        ),
        (
            "lower-case method",
            format!("get /v1/public/x HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        ),
    ] {
        let r = raw_request(gw.addr(), head.as_bytes())
            .await
            .unwrap_or_else(|| panic!("{what}: no answer"));
        assert_eq!(r.status, 400, "{what}: {} {}", r.status, r.text());
    }
    assert_eq!(echo.hits(), before, "none of them was forwarded");
    // Connection may nominate Authorization: it is then the gateway's alone.
    let r = send(
        gw.get("/v1/public/x")
            .header("authorization", "Bearer abc")
            .header("connection", "authorization"),
    )
    .await;
    let seen = r.echo();
    assert!(seen["headers"].get("authorization").is_none(), "{seen}");
}
