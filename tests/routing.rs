//! Routing and forwarding end to end: route table semantics, path normalisation (no spelling
//! of a path escapes its route), forwarded headers, upstream failures and peers, bodies,
//! malformed requests on a raw socket, and HTTP/2 prior knowledge (h2c) on a raw socket.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// `GET path` over a raw socket (`Connection: close`), with extra header lines.
async fn raw_get(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> RawResponse {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n", gw.addr());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    raw_request(gw.addr(), req.as_bytes())
        .await
        .unwrap_or_else(|| panic!("no answer to GET {path}"))
}

fn raw_json(r: &RawResponse) -> Value {
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", r.status, r.text()))
}

fn assert_raw_error(r: &RawResponse, status: u16, error: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {} {}", r.status, r.text());
    assert!(
        r.header("content-type")
            .unwrap_or_default()
            .starts_with("application/json"),
        "{what}: content-type {:?}",
        r.header("content-type")
    );
    let v = raw_json(r);
    assert_eq!(v["error"], error, "{what}: {v}");
    assert!(
        v["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{what}: {v}"
    );
}

async fn issuer_and_echo() -> (LocalIssuer, EchoUpstream) {
    (local_issuer().await, echo_upstream().await)
}

// ------------------------------------------------------------------ route table

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_first_match_in_file_order_wins() {
    let (li, echo) = issuer_and_echo().await;
    let special = RouteSpec::new("special", "/v1/items/special", "api")
        .methods(&["GET"])
        .public();
    let items = RouteSpec::new("items", "/v1/items/{id}", "api");
    let catchall = RouteSpec::new("catchall", "/v1/*", "api").public();

    let gw = TestGateway::start(
        &Config::basic(&li, &echo)
            .route(special.clone())
            .route(items.clone())
            .route(catchall.clone()),
    )
    .await;
    assert_eq!(
        send(gw.get("/v1/items/special")).await.status,
        200,
        "special comes first"
    );
    assert_missing_token(&send(gw.get("/v1/items/7")).await);
    assert_missing_token(&send(gw.post("/v1/items/special")).await); // special is GET only
    assert_eq!(
        send(gw.get("/v1/items/7/more")).await.status,
        200,
        "catchall"
    );
    assert_eq!(send(gw.get("/v1/other")).await.status, 200, "catchall");

    // The same routes in another order: the jwt route now shadows the public one.
    let gw = TestGateway::start(
        &Config::basic(&li, &echo)
            .route(items)
            .route(special)
            .route(catchall),
    )
    .await;
    assert_missing_token(&send(gw.get("/v1/items/special")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_methods_filter_selects_route() {
    let (li, echo) = issuer_and_echo().await;
    let gw = TestGateway::start(
        &Config::basic(&li, &echo)
            .route(
                RouteSpec::new("read", "/v1/things/{id}", "api")
                    .methods(&["GET", "HEAD"])
                    .public(),
            )
            .route(RouteSpec::new("write", "/v1/things/{id}", "api").methods(&["POST", "PUT"])),
    )
    .await;
    let r = send(gw.get("/v1/things/1")).await;
    assert_eq!(r.echo()["method"], "GET");
    assert_eq!(send(gw.request("HEAD", "/v1/things/1")).await.status, 200);
    assert_missing_token(&send(gw.post("/v1/things/1")).await);
    assert_missing_token(&send(gw.request("PUT", "/v1/things/1")).await);
    let before = echo.hits();
    assert_json_error(
        &send(gw.request("DELETE", "/v1/things/1")).await,
        404,
        "not_found",
    );
    assert_json_error(
        &send(gw.request("PATCH", "/v1/things/1")).await,
        404,
        "not_found",
    );
    assert_eq!(echo.hits(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_param_matches_exactly_one_segment() {
    let (li, echo) = issuer_and_echo().await;
    let gw = TestGateway::start(
        &Config::basic(&li, &echo)
            .route(RouteSpec::new("study", "/v1/studies/{id}", "api").public())
            .route(RouteSpec::new("participants", "/v1/studies/{id}/participants", "api").public()),
    )
    .await;
    for ok in [
        "/v1/studies/1",
        "/v1/studies/abc-def",
        "/v1/studies/1/participants",
    ] {
        assert_eq!(send(gw.get(ok)).await.status, 200, "{ok}");
    }
    let before = echo.hits();
    for missing in [
        "/v1/studies",
        "/v1/studies/1/2",
        "/v1/studies/1/participants/3",
        "/v1/studiesx/1",
    ] {
        assert_json_error(&send(gw.get(missing)).await, 404, "not_found");
    }
    assert_eq!(echo.hits(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_prefix_matches_zero_or_more_segments() {
    let (li, echo) = issuer_and_echo().await;
    let gw = TestGateway::start(
        &Config::basic(&li, &echo).route(RouteSpec::new("files", "/v1/files/*", "api").public()),
    )
    .await;
    for ok in ["/v1/files", "/v1/files/", "/v1/files/a", "/v1/files/a/b/c"] {
        assert_eq!(send(gw.get(ok)).await.status, 200, "{ok}");
    }
    for missing in ["/v1/filesx", "/v1/file", "/v1", "/"] {
        assert_json_error(&send(gw.get(missing)).await, 404, "not_found");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_rejected_404_json() {
    let (li, echo) = issuer_and_echo().await;
    let gw = TestGateway::start(
        &Config::basic(&li, &echo).route(RouteSpec::new("a", "/v1/a", "api").public()),
    )
    .await;
    let before = echo.hits();
    let r = send(gw.get("/v1/nothing-here")).await;
    assert_json_error(&r, 404, "not_found");
    assert!(r.header("x-request-id").is_some_and(|v| !v.is_empty()));
    assert!(r.header("www-authenticate").is_none());
    let r = send(gw.post("/v2/x").body("payload")).await;
    assert_json_error(&r, 404, "not_found");
    assert_eq!(echo.hits(), before);
}

// ------------------------------------------------------------------ normalisation

async fn public_and_admin() -> (LocalIssuer, EchoUpstream, TestGateway) {
    let (li, echo) = issuer_and_echo().await;
    let gw = TestGateway::start(
        &Config::basic(&li, &echo)
            .route(RouteSpec::new("public", "/v1/public/*", "api").public())
            .route(RouteSpec::new("admin", "/v1/admin/*", "api").scopes(&["admin:read"])),
    )
    .await;
    (li, echo, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_normalisation_bypass_attempts_are_treated_as_admin() {
    let (li, echo, gw) = public_and_admin().await;
    let admin = token(&li, "root", "admin:read");
    let bearer = format!("Bearer {admin}");
    let spellings = [
        "/v1/public/../admin/x",
        "/v1/public/%2e%2e/admin/x",
        "/v1/public/%2E%2E/admin/x",
        "/v1/public/.%2e/admin/x",
        "/v1/public/./../admin/x",
        "/v1/public/x/../../admin/x",
        "/v1/%61dmin/x",
        "/v1/%61%64%6d%69%6e/x",
        "/%761/admin/x",
        "//v1//admin/x",
        "/v1/admin/x/",
        "/v1/./admin/./x",
        "/v1/admin/./x",
        "/v1/public/../../v1/admin/x",
        "/../v1/admin/x",
    ];
    for path in spellings {
        let before = echo.hits();
        let r = raw_get(&gw, path, &[]).await;
        assert_eq!(
            r.status,
            401,
            "{path} without a token must hit the admin route: {} {}",
            r.status,
            r.text()
        );
        assert_eq!(
            echo.hits(),
            before,
            "{path} reached the upstream without a token"
        );
        let r = raw_get(&gw, path, &[("Authorization", &bearer)]).await;
        assert_eq!(
            r.status,
            200,
            "{path} with an admin token: {} {}",
            r.status,
            r.text()
        );
        assert_eq!(
            raw_json(&r)["path"],
            "/v1/admin/x",
            "{path}: the upstream gets the normalised path"
        );
        // A public-only caller gets nothing either.
        let weak = format!("Bearer {}", token(&li, "u", "read:profile"));
        let r = raw_get(&gw, path, &[("Authorization", &weak)]).await;
        assert_eq!(
            r.status,
            403,
            "{path} with a token lacking admin:read: {} {}",
            r.status,
            r.text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_encoded_slash_is_refused_unless_the_route_opts_in() {
    let (_li, echo, gw) = public_and_admin().await;
    let before = echo.hits();
    for p in ["/v1/public/a%2Fb", "/v1/public/a%2fb", "/v1/public/a%5Cb"] {
        let r = raw_get(&gw, p, &[]).await;
        assert_raw_error(&r, 400, "invalid_request", p);
    }
    assert_eq!(echo.hits(), before);
    drop(gw);
    // Opted in: forwarded with the slash still encoded (upper-case hex).
    let (li, echo) = issuer_and_echo().await;
    let gw = TestGateway::start(
        &Config::basic(&li, &echo).route(
            RouteSpec::new("public", "/v1/public/*", "api")
                .public()
                .set("allow_encoded_slashes", true),
        ),
    )
    .await;
    let r = raw_get(&gw, "/v1/public/a%2fb", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let path = raw_json(&r)["path"].as_str().unwrap().to_string();
    assert_eq!(path, "/v1/public/a%2Fb", "upstream path");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_segments_other_servers_read_as_dots_are_rejected_400() {
    let (_li, echo, gw) = public_and_admin().await;
    // Tomcat-style path parameters and encoded/back slashes next to dots: some upstreams
    // resolve these to `/v1/admin/x`, so they must not pass as public paths.
    for path in [
        "/v1/public/..;/admin/x",
        "/v1/public/..;jsessionid=1/admin/x",
        "/v1/public/..%2Fadmin/x",
        "/v1/public/..%2fadmin/x",
        "/v1/public/..%5Cadmin/x",
        "/v1/public/.;/x",
    ] {
        let before = echo.hits();
        let r = raw_get(&gw, path, &[]).await;
        assert_eq!(r.status, 400, "{path}: {} {}", r.status, r.text());
        assert_eq!(raw_json(&r)["error"], "invalid_request", "{path}");
        assert_eq!(echo.hits(), before, "{path} reached the upstream");
    }
    // A path parameter on an ordinary segment is just data.
    let r = raw_get(&gw, "/v1/public/a;v=1", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_normalised_keeps_query_string() {
    let (_li, _echo, gw) = public_and_admin().await;
    let r = raw_get(&gw, "/v1/public/../public/%78?q=1&r=%20&s=a/../b", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = raw_json(&r);
    assert_eq!(v["path"], "/v1/public/x");
    assert_eq!(v["query"], "q=1&r=%20&s=a/../b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_bad_percent_encoding_is_rejected_400_json() {
    let (_li, echo, gw) = public_and_admin().await;
    let before = echo.hits();
    for path in [
        "/v1/public/%zz",
        "/v1/public/%4",
        "/v1/public/x%",
        "/v1/public/%00",
        "/v1/public/a%0Ab",
    ] {
        let r = raw_get(&gw, path, &[]).await;
        assert_raw_error(&r, 400, "invalid_request", path);
    }
    assert_eq!(echo.hits(), before);
}

// ------------------------------------------------------------------ forwarded headers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_x_auth_headers_are_stripped_and_replaced() {
    let (li, echo) = issuer_and_echo().await;
    let gw = TestGateway::start(
        &Config::basic(&li, &echo)
            .route(RouteSpec::new("public", "/v1/public/*", "api").public())
            .route(RouteSpec::new("api", "/v1/*", "api")),
    )
    .await;
    let spoof = |rb: reqwest::RequestBuilder| {
        rb.header("X-Auth-Subject", "admin")
            .header("X-Auth-Scopes", "admin:write admin:users")
            .header("X-Auth-Client-Id", "evil-client")
            .header("x-auth-anything", "1")
            .header("X-AUTH-ROLE", "superuser")
            .header("X-Auth-Subject", "second-copy")
    };
    let t = token(&li, "user-1", "read:studies");
    let echo_v = send(spoof(gw.get("/v1/studies/1").bearer_auth(&t)))
        .await
        .echo();
    let h = &echo_v["headers"];
    assert_eq!(h["x-auth-subject"], "user-1", "{h}");
    assert_eq!(h["x-auth-scopes"], "read:studies", "{h}");
    assert_eq!(h["x-auth-client-id"], "demo-client", "{h}");
    assert!(
        h.get("x-auth-anything").is_none() && h.get("x-auth-role").is_none(),
        "{h}"
    );

    // A token without sub / client_id: the spoofed values must not survive in their place.
    let bare = li.mint(&patch(
        li.claims("x", "read:studies", 3600),
        serde_json::json!({"sub": null, "client_id": null}),
    ));
    let h = send(spoof(gw.get("/v1/studies/1").bearer_auth(&bare)))
        .await
        .echo()["headers"]
        .clone();
    assert!(h.get("x-auth-subject").is_none(), "{h}");
    assert!(h.get("x-auth-client-id").is_none(), "{h}");
    assert_eq!(h["x-auth-scopes"], "read:studies", "{h}");

    // Public route: nothing X-Auth-* reaches the upstream.
    let h = send(spoof(gw.get("/v1/public/x"))).await.echo()["headers"].clone();
    let leaked: Vec<&String> = h
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("x-auth-"))
        .collect();
    assert!(leaked.is_empty(), "{leaked:?}");

    // Naming them in Connection does not help either.
    let h = send(spoof(gw.get("/v1/public/x")).header("connection", "x-auth-subject"))
        .await
        .echo()["headers"]
        .clone();
    assert!(h.get("x-auth-subject").is_none(), "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_is_kept_when_sent_and_generated_when_not() {
    let (_li, echo, gw) = public_and_admin().await;
    // Forwarded, with an id.
    let r = send(
        gw.get("/v1/public/x")
            .header("x-request-id", "client-id-123"),
    )
    .await;
    assert_eq!(r.header("x-request-id").as_deref(), Some("client-id-123"));
    assert_eq!(r.echo()["headers"]["x-request-id"], "client-id-123");
    // Forwarded, without: one is generated, the same upstream and back.
    let r = send(gw.get("/v1/public/x")).await;
    let id = r.header("x-request-id").expect("generated request id");
    assert!(!id.is_empty());
    assert_eq!(r.echo()["headers"]["x-request-id"], id.as_str());
    let r2 = send(gw.get("/v1/public/x")).await;
    assert_ne!(r2.header("x-request-id").unwrap(), id, "ids are unique");
    // Rejections carry it too.
    let before = echo.hits();
    let r = send(gw.get("/v1/admin/x").header("x-request-id", "rejected-1")).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("x-request-id").as_deref(), Some("rejected-1"));
    let r = send(gw.get("/v1/admin/x")).await;
    assert!(
        r.header("x-request-id").is_some_and(|v| !v.is_empty()),
        "{}",
        r.describe()
    );
    let r = send(gw.get("/nope").header("x-request-id", "rejected-2")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("x-request-id").as_deref(), Some("rejected-2"));
    assert_eq!(echo.hits(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_is_appended() {
    let (_li, _echo, gw) = public_and_admin().await;
    let h = send(gw.get("/v1/public/x")).await.echo()["headers"].clone();
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    let h = send(
        gw.get("/v1/public/x")
            .header("x-forwarded-for", "203.0.113.7"),
    )
    .await
    .echo()["headers"]
        .clone();
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    let h = send(
        gw.get("/v1/public/x")
            .header("x-forwarded-for", "198.51.100.1, 203.0.113.7"),
    )
    .await
    .echo()["headers"]
        .clone();
    assert_eq!(h["x-forwarded-for"], "198.51.100.1, 203.0.113.7, 127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_repeated_headers_are_joined_then_appended() {
    // Several X-Forwarded-For fields are one list (RFC 9110 §5.3): none may be dropped.
    let (_li, _echo, gw) = public_and_admin().await;
    let r = raw_get(
        &gw,
        "/v1/public/x",
        &[
            ("X-Forwarded-For", "198.51.100.1"),
            ("X-Forwarded-For", "203.0.113.7"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let h = raw_json(&r)["headers"].clone();
    let forwarded = match &h["x-forwarded-for"] {
        Value::Array(v) => v
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(", "),
        v => v.as_str().unwrap_or_default().to_string(),
    };
    assert_eq!(forwarded, "198.51.100.1, 203.0.113.7, 127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_not_forwarded() {
    let (_li, _echo, gw) = public_and_admin().await;
    let req = format!(
        "GET /v1/public/hop HTTP/1.1\r\nHost: {}\r\nConnection: X-Foo, X-Bar, close\r\nX-Foo: secret\r\nX-Bar: other\r\n\
         Keep-Alive: timeout=5\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nProxy-Connection: keep-alive\r\n\
         TE: gzip\r\nX-Keep: yes\r\n\r\n",
        gw.addr()
    );
    let r = raw_request(gw.addr(), req.as_bytes())
        .await
        .expect("answer");
    assert_eq!(r.status, 200, "{}", r.text());
    let h = raw_json(&r)["headers"].clone();
    for gone in [
        "connection",
        "x-foo",
        "x-bar",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
    ] {
        assert!(h.get(gone).is_none(), "{gone} was forwarded: {h}");
    }
    assert_eq!(h["x-keep"], "yes");

    // Trailer is hop-by-hop. (`TE: trailers`, which our filter lets pass, does not reach this
    // HTTP/1 upstream either: pingora drops it on the way.)
    let r = raw_get(
        &gw,
        "/v1/public/hop",
        &[("TE", "trailers"), ("Trailer", "X-Checksum")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let h = raw_json(&r)["headers"].clone();
    assert!(h.get("trailer").is_none(), "trailer was forwarded: {h}");

    // Nominating a header the proxy sets (X-Forwarded-For) as hop-by-hop is refused by pingora
    // itself: a 400 in our JSON shape, not a 5xx.
    let r = raw_get(&gw, "/v1/public/hop", &[("Connection", "x-forwarded-for")]).await;
    assert_raw_error(&r, 400, "invalid_request", "protected header nominated");
}

// ------------------------------------------------------------------ upstreams

async fn dead_upstream_gateway() -> (LocalIssuer, TestGateway, DeadPort) {
    let li = local_issuer().await;
    let dead = DeadPort::new();
    let gw = TestGateway::start(
        &Config::new()
            .issuer(IssuerSpec::local("main", &li))
            .upstream(UpstreamSpec::new("api", &[dead.peer()]).set("connect_timeout_ms", 500))
            .route(RouteSpec::new("public", "/v1/public/*", "api").public())
            .route(RouteSpec::new("api", "/v1/*", "api")),
    )
    .await;
    (li, gw, dead)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_502_json() {
    let (li, gw, _dead) = dead_upstream_gateway().await;
    // A fresh connection per request (see the keep-alive test below).
    let r = send(client().get(gw.url("/v1/public/x"))).await;
    assert_json_error(&r, 502, "bad_gateway");
    assert!(r.header("x-request-id").is_some());
    let r = send(
        client()
            .get(gw.url("/v1/studies/1"))
            .bearer_auth(token(&li, "u", "")),
    )
    .await;
    assert_json_error(&r, 502, "bad_gateway");
    let r = send(client().post(gw.url("/v1/public/x")).body("data")).await;
    assert_json_error(&r, 502, "bad_gateway");
    assert_eq!(gw.readyz().await, 200);
}

/// Two requests on one raw keep-alive connection, the second sent once the first answer is
/// read. Returns both answers (`None`: the connection ended without one).
async fn two_on_one_connection(
    addr: std::net::SocketAddr,
    first: &str,
    second: &str,
) -> (Option<RawResponse>, Option<RawResponse>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let work = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut answers = Vec::new();
        for path in [first, second] {
            let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
            if s.write_all(req.as_bytes()).await.is_err() {
                answers.push(None);
                continue;
            }
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            let answer = loop {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => break None,
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(r) = parse_response(&buf) {
                            break Some(r);
                        }
                    }
                }
            };
            answers.push(answer);
        }
        (answers[0].clone(), answers[1].clone())
    };
    tokio::time::timeout(HTTP_TIMEOUT, work)
        .await
        .expect("timed out")
}

/// A complete response with a Content-Length body, if `buf` holds one.
fn parse_response(buf: &[u8]) -> Option<RawResponse> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let body = buf.get(end + 4..end + 4 + len)?.to_vec();
    Some(RawResponse {
        status,
        headers,
        body,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_error_answer_keeps_or_cleanly_closes_client_connection() {
    // After a 502 a client sends its next request on the same kept-alive connection: the
    // gateway must either answer it or have announced `Connection: close` with the 502.
    let (_li, gw, _dead) = dead_upstream_gateway().await;
    let (first, second) = two_on_one_connection(gw.addr(), "/v1/public/a", "/v1/public/b").await;
    let first = first.expect("an answer to the first request");
    assert_eq!(first.status, 502, "{}", first.text());
    let announced_close = first
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
    assert!(
        announced_close || second.is_some(),
        "the 502 said `Connection: {}` but the gateway closed the connection: the client's next request is lost",
        first.header("connection").unwrap_or("(none)")
    );
    // The same after a rejection of our own (401): the connection stays usable.
    let (_li, _echo, gw) = public_and_admin().await;
    let (first, second) = two_on_one_connection(gw.addr(), "/v1/admin/x", "/v1/public/y").await;
    assert_eq!(first.expect("401").status, 401);
    assert_eq!(
        second.expect("second answer on the same connection").status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_slow_beyond_read_timeout_is_504_json() {
    let (li, echo) = issuer_and_echo().await;
    let gw = TestGateway::start(
        &Config::new()
            .issuer(IssuerSpec::local("main", &li))
            .upstream(UpstreamSpec::echo("api", &echo).set("read_timeout_ms", 300))
            .route(RouteSpec::new("public", "/v1/public/*", "api").public()),
    )
    .await;
    let start = std::time::Instant::now();
    let r = send(client().get(gw.url("/v1/public/slow?sleep_ms=3000"))).await;
    assert_json_error(&r, 504, "gateway_timeout");
    assert!(
        start.elapsed() < Duration::from_millis(2500),
        "took {:?}",
        start.elapsed()
    );
    // Within the timeout is fine.
    let r = send(client().get(gw.url("/v1/public/quick?sleep_ms=20"))).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_status_and_body_are_passed_through() {
    let (_li, _echo, gw) = public_and_admin().await;
    for status in [201u16, 404, 418, 500, 503] {
        let r = send(gw.get(&format!("/v1/public/x?status={status}"))).await;
        assert_eq!(r.status, status, "{}", r.describe());
        assert_eq!(r.json()["path"], "/v1/public/x", "the upstream's own body");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_peers_round_robin_both_get_requests() {
    let li = local_issuer().await;
    let a = echo_upstream().await;
    let b = echo_upstream().await;
    let gw = TestGateway::start(
        &Config::new()
            .issuer(IssuerSpec::local("main", &li))
            .upstream(UpstreamSpec::new(
                "api",
                &[a.addr().to_string(), b.addr().to_string()],
            ))
            .route(RouteSpec::new("public", "/*", "api").public()),
    )
    .await;
    for i in 0..10 {
        assert_eq!(send(gw.get(&format!("/r/{i}"))).await.status, 200);
    }
    assert_eq!(a.hits() + b.hits(), 10);
    assert!(
        a.hits() >= 3 && b.hits() >= 3,
        "round robin: {} / {}",
        a.hits(),
        b.hits()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_refused_peer_is_skipped() {
    let li = local_issuer().await;
    let alive = echo_upstream().await;
    let dead = DeadPort::new();
    let gw = TestGateway::start(
        &Config::new()
            .issuer(IssuerSpec::local("main", &li))
            .upstream(UpstreamSpec::new(
                "api",
                &[dead.peer(), alive.addr().to_string()],
            ))
            .route(RouteSpec::new("public", "/*", "api").public()),
    )
    .await;
    for i in 0..10 {
        let r = send(gw.get(&format!("/r/{i}"))).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.describe());
    }
    // Non-idempotent requests too: a refused connection sent nothing.
    for i in 0..4 {
        let r = send(gw.post(&format!("/p/{i}")).body("x=1")).await;
        assert_eq!(r.status, 200, "POST {i}: {}", r.describe());
    }
    assert_eq!(alive.hits(), 14);
}

// ------------------------------------------------------------------ bodies

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_streams_to_upstream_unchanged() {
    let (_li, _echo, gw) = public_and_admin().await;
    // 1 MiB of printable pseudo-random bytes (the echo reports the body as text).
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let body: Vec<u8> = (0..1024 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b'!' + (x % 94) as u8
        })
        .collect();
    let r = send(
        gw.post("/v1/public/upload")
            .header("content-type", "application/octet-stream")
            .body(body.clone()),
    )
    .await;
    let v = r.echo();
    assert_eq!(v["body_len"], body.len());
    assert!(
        v["body"].as_str().unwrap().as_bytes() == body.as_slice(),
        "body changed on the way"
    );
    assert_eq!(v["headers"]["content-length"], body.len().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_chunked_is_forwarded_unchanged() {
    let (_li, _echo, gw) = public_and_admin().await;
    let req = format!(
        "POST /v1/public/chunks HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         5\r\nhello\r\n1\r\n \r\n6\r\nworld!\r\n0\r\n\r\n",
        gw.addr()
    );
    let r = raw_request(gw.addr(), req.as_bytes())
        .await
        .expect("answer");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = raw_json(&r);
    assert_eq!(v["body"], "hello world!");
    assert_eq!(v["body_len"], 12);
}

// ------------------------------------------------------------------ malformed input

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_never_produce_5xx_and_gateway_keeps_serving() {
    let (li, echo, mut gw) = public_and_admin().await;
    let host = gw.addr().to_string();
    let big = "x".repeat(100 * 1024);
    let many: String = (0..300).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("space in header name", format!("GET /v1/public/x HTTP/1.1\r\nHost: {host}\r\nBad Header: x\r\n\r\n").into_bytes()),
        ("control byte in header value", format!("GET /v1/public/x HTTP/1.1\r\nHost: {host}\r\nX-A: a\x01b\r\n\r\n").into_bytes()),
        ("NUL in header value", format!("GET /v1/public/x HTTP/1.1\r\nHost: {host}\r\nX-A: a\x00b\r\n\r\n").into_bytes()),
        ("non-UTF-8 header value", [format!("GET /v1/public/x HTTP/1.1\r\nHost: {host}\r\nX-A: ").into_bytes(), vec![0xff, 0xfe, 0x80], b"\r\n\r\n".to_vec()].concat()),
        ("non-UTF-8 header name", [b"GET /v1/public/x HTTP/1.1\r\nHost: x\r\n".to_vec(), vec![0xc3, 0x28], b": v\r\n\r\n".to_vec()].concat()),
        ("header without colon", format!("GET /v1/public/x HTTP/1.1\r\nHost: {host}\r\nNoColonHere\r\n\r\n").into_bytes()),
        ("obs-fold continuation", format!("GET /v1/public/x HTTP/1.1\r\nHost: {host}\r\nX-A: a\r\n  folded\r\n\r\n").into_bytes()),
        ("100 KB header", format!("GET /v1/public/x HTTP/1.1\r\nHost: {host}\r\nX-Big: {big}\r\n\r\n").into_bytes()),
        ("100 KB header on a jwt route", format!("GET /v1/admin/x HTTP/1.1\r\nHost: {host}\r\nX-Big: {big}\r\n\r\n").into_bytes()),
        ("300 headers", format!("GET /v1/public/x HTTP/1.1\r\nHost: {host}\r\n{many}\r\n").into_bytes()),
        ("garbage request line", b"GARBAGE\r\n\r\n".to_vec()),
        ("method only", b"GET\r\n\r\n".to_vec()),
        ("unknown version", b"GET /v1/public/x HTTP/9.9\r\nHost: x\r\n\r\n".to_vec()),
        ("relative path", b"GET v1/public/x HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("asterisk form", b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("absolute form", b"GET http://evil.example/v1/admin/x HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("connect", b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n".to_vec()),
        ("tls client hello", vec![0x16, 0x03, 0x01, 0x00, 0x2f, 0x01, 0x00, 0x00, 0x2b, 0x03, 0x03, 0, 0, 0, 0, 0, 0, 0, 0]),
        ("binary garbage", (0..=255u8).cycle().take(4096).collect()),
        ("no Host", b"GET /v1/public/x HTTP/1.1\r\n\r\n".to_vec()),
        ("two Hosts", b"GET /v1/public/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec()),
        ("CL and TE", format!("POST /v1/public/x HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").into_bytes()),
        ("two different CL", format!("POST /v1/public/x HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!").into_bytes()),
        ("bad CL", format!("POST /v1/public/x HTTP/1.1\r\nHost: {host}\r\nContent-Length: abc\r\n\r\nhello").into_bytes()),
        ("negative CL", format!("POST /v1/public/x HTTP/1.1\r\nHost: {host}\r\nContent-Length: -1\r\n\r\n").into_bytes()),
        ("bad chunk size", format!("POST /v1/public/x HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n").into_bytes()),
        ("unknown TE", format!("POST /v1/public/x HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: gzip\r\n\r\nabc").into_bytes()),
        ("control char in path", b"GET /v1/public/a\x01b HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("bare LF line endings", b"GET /v1/public/x HTTP/1.1\nHost: x\n\n".to_vec()),
        ("bad Authorization bytes", [format!("GET /v1/admin/x HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer ").into_bytes(), vec![0xff, 0x80], b"\r\n\r\n".to_vec()].concat()),
    ];
    let mut set = tokio::task::JoinSet::new();
    let addr = gw.addr();
    for (name, bytes) in cases {
        set.spawn(async move {
            let r = raw_request_timeout(addr, &bytes, Duration::from_secs(4)).await;
            (name, r)
        });
    }
    let mut failures = Vec::new();
    while let Some(done) = set.join_next().await {
        let (name, r) = done.expect("task");
        if let Some(r) = &r {
            if r.status >= 500 {
                failures.push(format!("{name}: {} {}", r.status, r.text()));
            }
        }
    }
    assert!(gw.is_running(), "the gateway died:\n{}", gw.logs());
    assert!(
        failures.is_empty(),
        "5xx answers to malformed requests:\n{}",
        failures.join("\n")
    );
    // Still serving.
    assert_eq!(send(gw.get("/v1/public/after")).await.status, 200);
    assert_eq!(
        gw.get_with_token("/v1/admin/x", &token(&li, "root", "admin:read"))
            .await
            .status,
        200
    );
    assert_eq!(gw.readyz().await, 200);
    assert!(echo.hits() > 0);
}

// ------------------------------------------------------------------ HTTP/2 (h2c prior knowledge)

/// A frame: (type, flags, stream, payload).
type Frame = (u8, u8, u32, Vec<u8>);

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK literal header field without indexing, indexed name (RFC 7541 §6.2.2), no Huffman.
fn hpack_literal(name_index: u8, value: &str) -> Vec<u8> {
    assert!(value.len() < 127 && name_index < 15);
    let mut v = vec![name_index, value.len() as u8];
    v.extend_from_slice(value.as_bytes());
    v
}

/// One GET over h2c prior knowledge; returns the response header block and the body.
async fn h2c_get(
    addr: std::net::SocketAddr,
    path: &str,
    authorization: Option<&str>,
) -> (Vec<u8>, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let work = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(h2_frame(0x4, 0, 0, &[]));
        let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
        block.extend(hpack_literal(4, path)); // :path
        block.extend(hpack_literal(1, &addr.to_string())); // :authority
        if let Some(a) = authorization {
            // literal without indexing, new name
            block.push(0x00);
            block.push(13);
            block.extend_from_slice(b"authorization");
            let len = a.len();
            assert!(len < 127 + 255 * 4, "value too long for this tiny encoder");
            if len < 127 {
                block.push(len as u8);
            } else {
                block.push(127);
                let mut rest = len - 127;
                while rest >= 128 {
                    block.push((rest % 128) as u8 | 0x80);
                    rest /= 128;
                }
                block.push(rest as u8);
            }
            block.extend_from_slice(a.as_bytes());
        }
        out.extend(h2_frame(0x1, 0x5, 1, &block)); // HEADERS, END_STREAM | END_HEADERS
        s.write_all(&out).await.expect("write");
        let mut headers = Vec::new();
        let mut body = Vec::new();
        loop {
            let mut head = [0u8; 9];
            if s.read_exact(&mut head).await.is_err() {
                break;
            }
            let len =
                (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            s.read_exact(&mut payload).await.expect("frame payload");
            let frame: Frame = (
                head[3],
                head[4],
                u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
                payload,
            );
            match frame {
                (0x4, flags, 0, _) if flags & 0x1 == 0 => {
                    s.write_all(&h2_frame(0x4, 0x1, 0, &[]))
                        .await
                        .expect("settings ack");
                }
                (0x1, flags, 1, p) | (0x9, flags, 1, p) => {
                    headers.extend(p);
                    if flags & 0x1 != 0 {
                        break;
                    }
                }
                (0x0, flags, 1, p) => {
                    body.extend(p);
                    if flags & 0x1 != 0 {
                        break;
                    }
                }
                (0x7, ..) | (0x3, _, 1, _) => break, // GOAWAY, RST_STREAM
                _ => {}
            }
        }
        (headers, body)
    };
    tokio::time::timeout(HTTP_TIMEOUT, work)
        .await
        .expect("h2c exchange timed out")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_is_routed_and_authenticated() {
    let (li, echo, gw) = public_and_admin().await;
    // Public route: 200 (HPACK static index 8 = ":status 200") and the echo body.
    let (headers, body) = h2c_get(gw.addr(), "/v1/public/../public/h2", None).await;
    assert_eq!(
        headers.first(),
        Some(&0x88),
        "expected :status 200; header block {headers:02x?}"
    );
    let v: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)));
    assert_eq!(v["path"], "/v1/public/h2");
    // jwt route without a token: the JSON rejection, nothing forwarded.
    let before = echo.hits();
    let (headers, body) = h2c_get(gw.addr(), "/v1/admin/x", None).await;
    assert_ne!(headers.first(), Some(&0x88), "a rejection is not 200");
    let v: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)));
    assert!(v["error"].is_string(), "{v}");
    assert_eq!(echo.hits(), before);
    // With a token.
    let bearer = format!("Bearer {}", token(&li, "h2-user", "admin:read"));
    let (headers, body) = h2c_get(gw.addr(), "/v1/admin/x", Some(&bearer)).await;
    assert_eq!(
        headers.first(),
        Some(&0x88),
        "expected 200 with a token: {}",
        String::from_utf8_lossy(&body)
    );
    let v: Value = serde_json::from_slice(&body).expect("echo JSON");
    assert_eq!(v["headers"]["x-auth-subject"], "h2-user");
}
