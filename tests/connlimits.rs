//! Connection limits of the data listener, over raw loopback sockets against
//! the real binary: the request-head deadline (never-speaking and slowloris clients), the idle
//! keep-alive timeout, the head size limit (431), the total and per-address connection caps
//! (503) with their metrics; and that ordinary keep-alive, pipelined, POST and h2c traffic
//! still works under them.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound on anything a test waits for that the old binary would wait for forever (or 60 s).
const BOUND: Duration = Duration::from_secs(5);

async fn gateway(cfg: impl FnOnce(Config) -> Config) -> (LocalIssuer, EchoUpstream, TestGateway) {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let base =
        Config::basic(&li, &echo).route(RouteSpec::new("public", "/v1/public/*", "api").public());
    let gw = TestGateway::start(&cfg(base)).await;
    (li, echo, gw)
}

fn get(addr: SocketAddr, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").into_bytes()
}

/// One client connection that keeps what it read past a response for the next one.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

/// A response: status, lower-cased headers, body.
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// How a wait for the server ended.
#[derive(Debug, PartialEq)]
enum Closed {
    /// EOF or reset.
    Yes,
    /// Still open when the bound ran out.
    No,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        Conn {
            s: TcpStream::connect(addr).await.expect("connect"),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.expect("write");
    }

    /// Read one response (Content-Length framed, as every answer here is); `None` when the
    /// connection closed or nothing complete came within `BOUND`.
    async fn response(&mut self) -> Option<Resp> {
        let deadline = Instant::now() + BOUND;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let mut lines = head.split("\r\n");
                let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .map(|(_, v)| v.parse().expect("content-length"))
                    .expect("a Content-Length framed response");
                if self.buf.len() >= end + 4 + len {
                    let body = self.buf[end + 4..end + 4 + len].to_vec();
                    self.buf.drain(..end + 4 + len);
                    return Some(Resp {
                        status,
                        headers,
                        body,
                    });
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline.into(), self.s.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    /// Wait (at most `within`) for the server to close; bytes that arrive meanwhile are kept.
    async fn closed_within(&mut self, within: Duration) -> Closed {
        let deadline = Instant::now() + within;
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(deadline.into(), self.s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Closed::Yes,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => return Closed::No,
            }
        }
    }
}

/// A forwarded 200 from the echo upstream.
fn assert_forwarded(r: Option<Resp>, path: &str) {
    let r = r.unwrap_or_else(|| panic!("no answer for {path}"));
    assert_eq!(
        r.status,
        200,
        "{path}: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.json()["path"], path);
}

fn assert_error(r: &Resp, status: u16, error: &str) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.json()["error"], error);
}

// ------------------------------------------------------------------ head deadline

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_is_closed_after_header_timeout() {
    let (_li, echo, gw) = gateway(|c| c.server_set("header_timeout_ms", 500)).await;
    let mut c = Conn::open(gw.addr()).await;
    let start = Instant::now();
    assert_eq!(
        c.closed_within(BOUND).await,
        Closed::Yes,
        "still open after {BOUND:?}"
    );
    assert!(
        c.buf.is_empty(),
        "nothing to answer, yet got {:?}",
        String::from_utf8_lossy(&c.buf)
    );
    assert!(
        start.elapsed() >= Duration::from_millis(400),
        "closed before the timeout"
    );
    assert_eq!(echo.hits(), 0);
    assert_eq!(
        gw.metric(
            "gateway_request_heads_refused_total",
            &[("reason", "timeout")]
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_head_is_cut_off_at_the_head_deadline_with_408() {
    let (_li, echo, gw) = gateway(|c| c.server_set("header_timeout_ms", 1000)).await;
    let mut c = Conn::open(gw.addr()).await;
    c.send(format!("GET /v1/public/slow HTTP/1.1\r\nHost: {}\r\n", gw.addr()).as_bytes())
        .await;
    // One header line every 200 ms, each read quick: 30 lines would take 6 s.
    let start = Instant::now();
    let mut answered = None;
    for i in 0..30 {
        match tokio::time::timeout(Duration::from_millis(200), c.response()).await {
            Ok(r) => {
                answered = Some(r);
                break;
            }
            Err(_) => {
                if c.s
                    .write_all(format!("X-Slow-{i}: a\r\n").as_bytes())
                    .await
                    .is_err()
                {
                    answered = Some(c.response().await);
                    break;
                }
            }
        }
    }
    let r = answered
        .expect("the gateway let a slowloris head run for 6 s")
        .expect("a 408 answer before the close");
    assert_error(&r, 408, "invalid_request");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "cut off after {:?}",
        start.elapsed()
    );
    assert_eq!(c.closed_within(BOUND).await, Closed::Yes);
    assert_eq!(echo.hits(), 0);
}

// ------------------------------------------------------------------ keep-alive idle timeout

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_connection_is_closed_after_keepalive_timeout() {
    let (_li, _echo, gw) = gateway(|c| c.server_set("keepalive_timeout_ms", 500)).await;
    let mut c = Conn::open(gw.addr()).await;
    c.send(&get(gw.addr(), "/v1/public/one")).await;
    assert_forwarded(c.response().await, "/v1/public/one");
    let idle = Instant::now();
    assert_eq!(
        c.closed_within(BOUND).await,
        Closed::Yes,
        "idle connection kept past {BOUND:?}"
    );
    assert!(
        idle.elapsed() >= Duration::from_millis(400),
        "closed before the timeout"
    );
    assert!(c.buf.is_empty(), "an idle close answers nothing");
    // Not a refused head.
    assert_eq!(
        gw.metric(
            "gateway_request_heads_refused_total",
            &[("reason", "timeout")]
        )
        .await,
        0.0
    );
}

// ------------------------------------------------------------------ head size

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_over_32k_gets_431_and_a_30k_head_is_served() {
    let (_li, echo, gw) = gateway(|c| c).await;
    let big = |n: usize| {
        format!(
            "GET /v1/public/big HTTP/1.1\r\nHost: {}\r\nX-Big: {}\r\n\r\n",
            gw.addr(),
            "x".repeat(n)
        )
    };
    let mut c = Conn::open(gw.addr()).await;
    c.send(big(40 * 1024).as_bytes()).await;
    let r = c.response().await.expect("an answer to a 40 KiB head");
    assert_error(&r, 431, "invalid_request");
    assert_eq!(
        r.json()["error_description"],
        "request header fields too large"
    );
    assert_eq!(c.closed_within(BOUND).await, Closed::Yes);
    assert_eq!(echo.hits(), 0, "an oversize head reached the upstream");
    assert_eq!(
        gw.metric(
            "gateway_request_heads_refused_total",
            &[("reason", "too_large")]
        )
        .await,
        1.0
    );

    let mut c = Conn::open(gw.addr()).await;
    c.send(big(30 * 1024).as_bytes()).await;
    assert_forwarded(c.response().await, "/v1/public/big");
    assert_eq!(echo.hits(), 1);
}

// ------------------------------------------------------------------ connection caps

/// `n` connections that each completed a request and stay open (keep-alive).
async fn held(addr: SocketAddr, n: usize) -> Vec<Conn> {
    let mut conns = Vec::new();
    for i in 0..n {
        let mut c = Conn::open(addr).await;
        let path = format!("/v1/public/held-{i}");
        c.send(&get(addr, &path)).await;
        assert_forwarded(c.response().await, &path);
        conns.push(c);
    }
    conns
}

/// A new connection's answer to one GET.
async fn try_once(addr: SocketAddr, path: &str) -> Option<Resp> {
    let mut c = Conn::open(addr).await;
    c.send(&get(addr, path)).await;
    c.response().await
}

fn assert_busy(r: Option<Resp>) {
    let r = r.expect("an answer over the cap");
    assert_error(&r, 503, "temporarily_unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixth_connection_from_one_ip_gets_503_and_a_freed_slot_is_usable() {
    let (_li, echo, gw) = gateway(|c| c.server_set("max_connections_per_ip", 5)).await;
    let mut conns = held(gw.addr(), 5).await;
    assert_eq!(gw.metric("gateway_connections_open", &[]).await, 5.0);
    assert_busy(try_once(gw.addr(), "/v1/public/sixth").await);
    assert_eq!(echo.hits(), 5, "the refused request reached the upstream");
    assert_eq!(
        gw.metric("gateway_connections_refused_total", &[("reason", "per_ip")])
            .await,
        1.0
    );
    assert_eq!(
        gw.metric("gateway_connections_refused_total", &[("reason", "total")])
            .await,
        0.0
    );
    // The held connections still work.
    let c = &mut conns[0];
    c.send(&get(gw.addr(), "/v1/public/again")).await;
    assert_forwarded(c.response().await, "/v1/public/again");

    drop(conns.pop());
    let freed = eventually(BOUND, || async {
        try_once(gw.addr(), "/v1/public/freed")
            .await
            .is_some_and(|r| r.status == 200)
    })
    .await;
    assert!(freed, "the slot of a closed connection was not given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxy_skips_the_per_ip_cap_but_not_the_total_cap() {
    let (_li, _echo, gw) = gateway(|c| {
        c.trusted_proxies(&["127.0.0.1"])
            .server_set("max_connections_per_ip", 2)
            .server_set("max_connections", 4)
    })
    .await;
    let conns = held(gw.addr(), 4).await;
    assert_busy(try_once(gw.addr(), "/v1/public/fifth").await);
    assert_eq!(
        gw.metric("gateway_connections_refused_total", &[("reason", "total")])
            .await,
        1.0
    );
    assert_eq!(
        gw.metric("gateway_connections_refused_total", &[("reason", "per_ip")])
            .await,
        0.0
    );
    drop(conns);
    let drained = eventually(BOUND, || async {
        gw.metric("gateway_connections_open", &[]).await == 0.0
    })
    .await;
    assert!(drained, "gateway_connections_open did not come back to 0");
}

// ------------------------------------------------------------------ ordinary traffic

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_pipelined_and_post_traffic_works_on_one_counted_connection() {
    let (_li, echo, gw) = gateway(|c| {
        c.server_set("header_timeout_ms", 2000)
            .server_set("keepalive_timeout_ms", 2000)
            .server_set("max_connections_per_ip", 2)
    })
    .await;
    let addr = gw.addr();
    let mut c = Conn::open(addr).await;
    for i in 0..20 {
        let path = format!("/v1/public/ka-{i}");
        c.send(&get(addr, &path)).await;
        assert_forwarded(c.response().await, &path);
    }
    // A POST with a body whose head and body arrive in separate writes.
    c.send(
        format!(
            "POST /v1/public/form HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    c.send(b"hello world").await;
    let r = c.response().await.expect("POST answer");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body"], "hello world");
    // Head split across many small writes, well within the deadline.
    let head = get(addr, "/v1/public/split");
    for part in head.chunks(7) {
        c.send(part).await;
    }
    assert_forwarded(c.response().await, "/v1/public/split");
    assert_eq!(gw.metric("gateway_connections_open", &[]).await, 1.0);
    assert_eq!(echo.hits(), 22);

    // Two requests in one write, as pingora without pipelining handles them: the first is
    // answered; the second is answered too or the connection closes (never a 4xx/5xx).
    let mut p = Conn::open(addr).await;
    let mut two = get(addr, "/v1/public/p1");
    two.extend_from_slice(&get(addr, "/v1/public/p2"));
    p.send(&two).await;
    assert_forwarded(p.response().await, "/v1/public/p1");
    if let Some(second) = p.response().await {
        assert_eq!(second.status, 200);
        assert_eq!(second.json()["path"], "/v1/public/p2");
    }
    drop(p);
    drop(c);
    let drained = eventually(BOUND, || async {
        gw.metric("gateway_connections_open", &[]).await == 0.0
    })
    .await;
    assert!(drained, "gateway_connections_open did not come back to 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_requests_share_one_counted_connection_closed_when_idle() {
    let (_li, echo, gw) = gateway(|c| c.server_set("keepalive_timeout_ms", 1000)).await;
    let tcp = TcpStream::connect(gw.addr()).await.expect("connect");
    let (mut client, connection) = h2::client::handshake(tcp).await.expect("h2c handshake");
    let driver = tokio::spawn(connection);
    for i in 0..3 {
        let req = http::Request::get(format!("http://{}/v1/public/h2-{i}", gw.addr()))
            .body(())
            .expect("request");
        client = client.ready().await.expect("ready");
        let (resp, _) = client.send_request(req, true).expect("send");
        let resp = tokio::time::timeout(BOUND, resp)
            .await
            .expect("in time")
            .expect("response");
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(echo.hits(), 3);
    assert_eq!(gw.metric("gateway_connections_open", &[]).await, 1.0);
    // Idle past keepalive_timeout (h2_idle_timeout): the gateway ends the connection.
    let ended = tokio::time::timeout(BOUND, driver).await;
    assert!(
        ended.is_ok(),
        "idle h2c connection still open after {BOUND:?}"
    );
    let drained = eventually(BOUND, || async {
        gw.metric("gateway_connections_open", &[]).await == 0.0
    })
    .await;
    assert!(drained, "gateway_connections_open did not come back to 0");
}
