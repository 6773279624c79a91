//! Below step 1, the connection: what a downstream connection may cost before any request on
//! it reaches `Gateway`. pingora reads the request head before any `ProxyHttp` hook runs, with
//! a timeout per read (not per head), a buffer that may grow to 1 MiB, and no limit on idle
//! keep-alive or never-speaking connections; so these limits sit below it, in a `ServerApp`
//! of our own that wraps the `HttpProxy<Gateway>`:
//!
//! - a connection permit (total and per client address, trusted proxies exempt from the
//!   latter), held for the connection's life; over a cap: a static 503 and close;
//! - for HTTP/1.x, the head of every request is read here, before pingora sees it: at most
//!   `max_header_bytes` (431 past it), within `header_timeout` from its first byte (from accept
//!   for the first request; 408 on expiry, or a silent close when nothing arrived), after at
//!   most `keepalive_timeout` of idleness between requests (silent close). The complete head
//!   (plus whatever the same reads brought of the body) is handed to pingora's parser as the
//!   session's pipelined prefix, so pingora parses it without reading the socket; the bytes
//!   are read once and scanned once, in the buffer pingora would have allocated itself.
//! - HTTP/2 (TLS ALPN `h2`, or h2c prior knowledge) goes to pingora's own connection handling,
//!   under the permit, with `h2_idle_timeout` set to the keep-alive timeout.
//!
//! The keep-alive loop is pingora's (`impl<T: HttpServerApp> ServerApp for T` in
//! pingora-core's `apps/mod.rs`): same persistent settings between requests, same shutdown
//! handling. Answers written here never reach pingora, so a refused head is never logged as a
//! proxy error nor answered with a 5xx.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use ipnet::IpNet;
use parking_lot::Mutex;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout_at, Instant};

use super::answer::raw_error_response;
use crate::config::ServerSettings;

/// HTTP/2 connection preface (RFC 9113 §3.4), to recognise h2c prior knowledge.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// First allocation of a head buffer (pingora's `INIT_HEADER_BUF_SIZE`).
const INIT_HEAD_BUF: usize = 4096;
/// After a refusal: how long, and how much, to read and discard what the client still sends,
/// so that closing does not reset the connection before it has read the answer.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;
/// Bound on writing a refusal (a few hundred bytes: they fit any socket buffer).
const WRITE_TIME: Duration = Duration::from_secs(1);

/// The limits, from `[server]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ConnLimits {
    pub max_header_bytes: usize,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub trusted_proxies: Vec<IpNet>,
}

impl ConnLimits {
    pub(crate) fn from_settings(s: &ServerSettings) -> Self {
        ConnLimits {
            max_header_bytes: s.max_header_bytes,
            header_timeout: s.header_timeout,
            keepalive_timeout: s.keepalive_timeout,
            max_connections: s.max_connections,
            max_connections_per_ip: s.max_connections_per_ip,
            trusted_proxies: s.trusted_proxies.clone(),
        }
    }
}

// ------------------------------------------------------------------------------- metrics

/// Connection-level metrics, registered once into the registry the admin app serves.
#[derive(Clone, Debug)]
pub(crate) struct ConnMetrics {
    /// `gateway_connections_open`: downstream connections holding a permit.
    pub open: IntGauge,
    /// `gateway_connections_refused_total{reason="total"|"per_ip"}` and
    /// `gateway_request_heads_refused_total{reason="timeout"|"too_large"}`, by label.
    refused_total: IntCounter,
    refused_per_ip: IntCounter,
    head_timeout: IntCounter,
    head_too_large: IntCounter,
}

impl ConnMetrics {
    pub(crate) fn new(registry: &Registry) -> prometheus::Result<Self> {
        let open = IntGauge::new(
            "gateway_connections_open",
            "Downstream connections open on the data listener",
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "gateway_connections_refused_total",
                "Downstream connections refused with 503 by a connection cap (total, per_ip)",
            ),
            &["reason"],
        )?;
        let heads_refused = IntCounterVec::new(
            Opts::new(
                "gateway_request_heads_refused_total",
                "Request heads refused: not complete within header_timeout (timeout, 408 or \
                 close) or larger than max_header_bytes (too_large, 431)",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(open.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        registry.register(Box::new(heads_refused.clone()))?;
        // Every series exists from the start, so increase() sees the first refusal.
        Ok(ConnMetrics {
            refused_total: refused.with_label_values(&["total"]),
            refused_per_ip: refused.with_label_values(&["per_ip"]),
            head_timeout: heads_refused.with_label_values(&["timeout"]),
            head_too_large: heads_refused.with_label_values(&["too_large"]),
            open,
        })
    }
}

// ------------------------------------------------------------------------------- permits

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    Total,
    PerIp,
}

/// Shards of the per-address counts: connections come and go on every worker thread.
const SHARDS: usize = 16;

/// Counts open connections, in total and per client address.
pub(crate) struct ConnCounter {
    max_total: usize,
    max_per_ip: usize,
    trusted: Vec<IpNet>,
    total: AtomicUsize,
    per_ip: Box<[Mutex<HashMap<IpAddr, usize, ahash::RandomState>>]>,
    hasher: ahash::RandomState,
    open: IntGauge,
}

/// Held for the life of a connection; gives its place back on drop.
pub(crate) struct Permit {
    counter: Arc<ConnCounter>,
    ip: Option<IpAddr>,
}

impl ConnCounter {
    pub(crate) fn new(limits: &ConnLimits, open: IntGauge) -> Self {
        ConnCounter {
            max_total: limits.max_connections,
            max_per_ip: limits.max_connections_per_ip,
            trusted: limits.trusted_proxies.clone(),
            total: AtomicUsize::new(0),
            per_ip: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            hasher: ahash::RandomState::new(),
            open,
        }
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, usize, ahash::RandomState>> {
        &self.per_ip[(self.hasher.hash_one(ip) as usize) % SHARDS]
    }

    /// A place for a connection from `peer`, or why not.
    pub(crate) fn acquire(self: &Arc<Self>, peer: Option<IpAddr>) -> Result<Permit, Refused> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Total);
        }
        // A trusted proxy carries many clients: only the total cap applies to it.
        let ip = peer
            .filter(|p| !self.trusted.iter().any(|n| n.contains(p)))
            .map(client_key);
        if let Some(ip) = ip {
            let mut counts = self.shard(&ip).lock();
            let n = counts.entry(ip).or_insert(0);
            if *n >= self.max_per_ip {
                drop(counts);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(Refused::PerIp);
            }
            *n += 1;
        }
        self.open.inc();
        Ok(Permit {
            counter: self.clone(),
            ip,
        })
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let c = &self.counter;
        if let Some(ip) = self.ip {
            let mut counts = c.shard(&ip).lock();
            if let Some(n) = counts.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&ip);
                }
            }
        }
        c.total.fetch_sub(1, Ordering::AcqRel);
        c.open.dec();
    }
}

/// The address a per-IP cap counts: IPv4 as is (also when IPv4-mapped), IPv6 by its /64, the
/// block one host or one subscriber usually gets whole.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

// ------------------------------------------------------------------------------- head reading

/// How reading one request head ended.
#[derive(Debug)]
enum Head {
    /// A complete head (and possibly the first bytes after it) in this buffer.
    Complete(BytesMut),
    /// An HTTP/2 connection preface (h2c): the bytes read, to be put back.
    H2c(BytesMut),
    /// Nothing to answer: the client closed, stayed idle, or the server is shutting down.
    Closed,
    /// The head did not complete in time; `started`: some of it had arrived.
    TimedOut { started: bool },
    /// The head is larger than allowed.
    TooLarge,
}

/// Finds the end of a request head in `buf` the way httparse reads one: leading empty lines
/// are skipped, then the head ends at the first empty line (`\n\n` or `\n\r\n`). `from` is
/// where the previous call stopped; returns the end offset, or where to resume.
fn find_head_end(buf: &[u8], from: usize) -> Result<usize, usize> {
    // Leading CR/LF (empty lines before the request line) are not a head yet.
    let start = buf
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(buf.len());
    let from = from.max(start);
    for i in memchr::memchr_iter(b'\n', &buf[from..]) {
        let lf = from + i;
        match (buf.get(lf + 1), buf.get(lf + 2)) {
            (Some(b'\n'), _) => return Ok(lf + 2),
            (Some(b'\r'), Some(b'\n')) => return Ok(lf + 3),
            // Undecided until more bytes arrive: resume at this line feed.
            (None, _) | (Some(b'\r'), None) => return Err(lf),
            _ => {}
        }
    }
    Err(buf.len())
}

/// Grow `buf` so that it has room for another read, never beyond `max` bytes in total.
fn make_room(buf: &mut BytesMut, max: usize) {
    if buf.len() < buf.capacity() {
        return;
    }
    let want = (buf.capacity() * 2).clamp(INIT_HEAD_BUF, max);
    let mut bigger = BytesMut::with_capacity(want);
    bigger.extend_from_slice(buf);
    *buf = bigger;
}

/// Resolves once the server starts shutting down; never when the signal is gone.
async fn shutting_down(rx: &mut ShutdownWatch) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

// ------------------------------------------------------------------------------- the app

/// The data listener's application: limits, then the `HttpProxy` it wraps.
pub(crate) struct ConnApp<A> {
    inner: Arc<A>,
    limits: ConnLimits,
    counter: Arc<ConnCounter>,
    metrics: ConnMetrics,
    /// Static answers, rendered once.
    busy: Bytes,
    too_large: Bytes,
    timed_out: Bytes,
}

impl<A> ConnApp<A>
where
    A: HttpServerApp + ServerApp + Send + Sync + 'static,
{
    pub(crate) fn new(inner: A, limits: ConnLimits, metrics: ConnMetrics) -> Self {
        let counter = Arc::new(ConnCounter::new(&limits, metrics.open.clone()));
        ConnApp {
            inner: Arc::new(inner),
            counter,
            metrics,
            busy: raw_error_response(
                503,
                "temporarily_unavailable",
                "too many connections; retry shortly",
                &[("Retry-After", "1")],
            ),
            too_large: raw_error_response(
                431,
                "invalid_request",
                "request header fields too large",
                &[],
            ),
            timed_out: raw_error_response(
                408,
                "invalid_request",
                "request header not received in time",
                &[],
            ),
            limits,
        }
    }

    /// Read one request head. `first`: the connection's first request (its deadline counts
    /// from `accepted`); `h2c`: look for an HTTP/2 preface first.
    async fn read_head(
        &self,
        stream: &mut Stream,
        first: bool,
        accepted: Instant,
        h2c: bool,
        shutdown: &mut ShutdownWatch,
    ) -> Head {
        let max = self.limits.max_header_bytes;
        let mut buf = BytesMut::with_capacity(INIT_HEAD_BUF.min(max));
        // Waiting for the first byte: the first request's head deadline, or the idle timeout.
        let idle_until = if first {
            accepted + self.limits.header_timeout
        } else {
            Instant::now() + self.limits.keepalive_timeout
        };
        // A shutdown (SIGTERM, or SIGQUIT handing the listeners to a new process) closes a
        // kept-alive connection that sits idle between requests, as pingora does. A connection
        // just accepted is served: its client may already be sending, and closing it now
        // would fail a request the new process never saw.
        let read = if first {
            timeout_at(idle_until, stream.read_buf(&mut buf)).await
        } else {
            tokio::select! {
                biased;
                r = timeout_at(idle_until, stream.read_buf(&mut buf)) => r,
                _ = shutting_down(shutdown) => return Head::Closed,
            }
        };
        match read {
            Ok(Ok(n)) if n > 0 => {}
            // A new connection that never spoke: its head timed out, nothing to answer.
            Err(_) if first => return Head::TimedOut { started: false },
            // EOF, reset, or idle between requests past the keep-alive timeout: close quietly.
            _ => return Head::Closed,
        }
        let deadline = if first {
            idle_until
        } else {
            Instant::now() + self.limits.header_timeout
        };
        let mut h2c = h2c;
        let mut from = 0;
        loop {
            if h2c {
                let n = buf.len().min(H2_PREFACE.len());
                if buf[..n] != H2_PREFACE[..n] {
                    h2c = false;
                } else if n == H2_PREFACE.len() {
                    return Head::H2c(buf);
                }
            }
            if !h2c {
                match find_head_end(&buf, from) {
                    Ok(end) if end <= max => return Head::Complete(buf),
                    Ok(_) => return Head::TooLarge,
                    Err(resume) => from = resume,
                }
                if buf.len() >= max {
                    return Head::TooLarge;
                }
            }
            make_room(&mut buf, max);
            match timeout_at(deadline, stream.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                // The client gave up mid-head: nobody to answer.
                Ok(_) => return Head::Closed,
                Err(_) => return Head::TimedOut { started: true },
            }
        }
    }

    /// Write a static answer, then close without resetting what the client still sends.
    async fn refuse(stream: &mut Stream, answer: &[u8]) {
        let _ = tokio::time::timeout(WRITE_TIME, async {
            stream.write_all(answer).await?;
            stream.flush().await
        })
        .await;
        Self::linger_close(stream).await;
    }

    /// Half-close, then read and discard (bounded) until the client closes too: closing a
    /// socket with unread data sends a reset, which may destroy the answer in flight.
    async fn linger_close(stream: &mut Stream) {
        let _ = AsyncWriteExt::shutdown(stream).await;
        let _ = tokio::time::timeout(LINGER_TIME, async {
            let mut sink = [0u8; 2048];
            let mut total = 0;
            while total < LINGER_BYTES {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
        })
        .await;
    }
}

/// The peer's IP address (none for a Unix socket).
fn peer_ip(stream: &Stream) -> Option<IpAddr> {
    let digest = stream.get_socket_digest()?;
    digest.peer_addr()?.as_inet().map(|a| a.ip())
}

#[async_trait]
impl<A> ServerApp for ConnApp<A>
where
    A: HttpServerApp + ServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let accepted = Instant::now();
        let alpn = stream.selected_alpn_proto();
        let h2 = matches!(alpn, Some(ALPN::H2));
        let _permit = match self.counter.acquire(peer_ip(&stream)) {
            Ok(p) => p,
            Err(why) => {
                match why {
                    Refused::Total => self.metrics.refused_total.inc(),
                    Refused::PerIp => self.metrics.refused_per_ip.inc(),
                }
                tracing::debug!(reason = ?why, open = self.counter.open(), "connection refused");
                if h2 {
                    // An HTTP/1.1 answer means nothing to an h2 client: just close.
                    let _ = AsyncWriteExt::shutdown(&mut stream).await;
                } else {
                    Self::refuse(&mut stream, &self.busy).await;
                }
                return None;
            }
        };
        if h2 || matches!(alpn, Some(ALPN::Custom(_))) {
            // pingora's own HTTP/2 handling (idle timeout: `h2_idle_timeout`).
            return self.inner.process_new(stream, shutdown).await;
        }
        let options = self.inner.server_options();
        let h2c = stream.get_ssl_digest().is_none() && options.is_some_and(|o| o.h2c);
        let mut shutdown_rx = shutdown.clone();
        let mut settings: Option<HttpPersistentSettings> = None;
        let mut first = true;
        loop {
            let head = self
                .read_head(&mut stream, first, accepted, h2c && first, &mut shutdown_rx)
                .await;
            let buf = match head {
                Head::Complete(buf) => buf,
                Head::H2c(buf) => {
                    // Put the preface back where pingora's h2c detection will read it.
                    let Ok(mut l4) = stream.into_any().downcast::<L4Stream>() else {
                        return None;
                    };
                    l4.rewind(&buf);
                    return self.inner.process_new(l4, shutdown).await;
                }
                Head::Closed => return None,
                Head::TimedOut { started } => {
                    self.metrics.head_timeout.inc();
                    tracing::debug!(started, "request head not complete in time");
                    if started {
                        Self::refuse(&mut stream, &self.timed_out).await;
                    }
                    return None;
                }
                Head::TooLarge => {
                    self.metrics.head_too_large.inc();
                    tracing::debug!(max = self.limits.max_header_bytes, "request head too large");
                    Self::refuse(&mut stream, &self.too_large).await;
                    return None;
                }
            };
            let mut session = ServerSession::new_http1(stream);
            match settings.take() {
                Some(s) => s.apply_to_session(&mut session),
                None if first => {
                    // As pingora does for a new connection; the parsed head's own keep-alive
                    // wish then decides (`respect_keepalive`).
                    let keepalive = (!*shutdown.borrow()).then_some(60);
                    session.set_keepalive(keepalive);
                    session.set_keepalive_reuses_remaining(
                        options.and_then(|o| o.keepalive_request_limit),
                    );
                }
                None => {}
            }
            // pipelining stays off here (pingora's default): a reused connection never carries
            // a pingora-side prefix, so this is the only one.
            session.set_pipelined_prefix(buf);
            let reused = self.inner.process_new_http(session, shutdown).await?;
            let (next, next_settings) = reused.consume();
            stream = next;
            settings = next_settings;
            first = false;
        }
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_end_is_found_with_crlf_and_bare_lf() {
        assert_eq!(
            find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 0),
            Ok(27)
        );
        assert_eq!(find_head_end(b"GET / HTTP/1.1\nHost: a\n\nbody", 0), Ok(24));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: a\n\r\n", 0), Ok(26));
    }

    #[test]
    fn head_end_skips_leading_empty_lines() {
        assert_eq!(find_head_end(b"\r\n\r\n", 0), Err(4));
        assert_eq!(find_head_end(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n", 0), Ok(22));
    }

    #[test]
    fn head_end_waits_when_undecided() {
        let partial = b"GET / HTTP/1.1\r\nHost: a\r\n";
        let resume = find_head_end(partial, 0).unwrap_err();
        assert_eq!(resume, partial.len() - 1);
        let mut whole = partial.to_vec();
        whole.extend_from_slice(b"\r\n");
        assert_eq!(find_head_end(&whole, resume), Ok(whole.len()));
        assert_eq!(
            find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r", 0),
            Err(24)
        );
    }

    #[test]
    fn buffer_never_grows_past_the_limit() {
        let mut buf = BytesMut::with_capacity(INIT_HEAD_BUF);
        while buf.capacity() < 10_000 {
            buf.resize(buf.capacity(), b'x');
            make_room(&mut buf, 10_000);
        }
        assert_eq!(buf.capacity(), 10_000);
    }

    fn limits(total: usize, per_ip: usize, trusted: &[&str]) -> ConnLimits {
        ConnLimits {
            max_header_bytes: 32768,
            header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            max_connections: total,
            max_connections_per_ip: per_ip,
            trusted_proxies: trusted.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn per_ip_cap_refuses_and_frees_on_drop() {
        let gauge = IntGauge::new("open", "open").unwrap();
        let c = Arc::new(ConnCounter::new(&limits(10, 2, &[]), gauge.clone()));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let p1 = c.acquire(Some(a)).unwrap();
        let _p2 = c.acquire(Some(a)).unwrap();
        assert_eq!(c.acquire(Some(a)).err(), Some(Refused::PerIp));
        let _p3 = c.acquire(Some(b)).unwrap();
        assert_eq!(gauge.get(), 3);
        drop(p1);
        assert_eq!(gauge.get(), 2);
        assert!(c.acquire(Some(a)).is_ok());
    }

    #[test]
    fn total_cap_refuses_and_trusted_proxies_skip_the_per_ip_cap() {
        let gauge = IntGauge::new("open", "open").unwrap();
        let c = Arc::new(ConnCounter::new(
            &limits(3, 1, &["10.0.0.0/8"]),
            gauge.clone(),
        ));
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| c.acquire(Some(proxy)).unwrap()).collect();
        assert_eq!(c.acquire(Some(proxy)).err(), Some(Refused::Total));
        assert_eq!(c.open(), 3);
        drop(held);
        assert_eq!(c.open(), 0);
        assert_eq!(gauge.get(), 0);
    }

    #[test]
    fn ipv6_is_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let k = |s: &str| client_key(s.parse().unwrap());
        assert_eq!(k("2001:db8:1:2:aaaa::1"), k("2001:db8:1:2:bbbb::2"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("::ffff:192.0.2.7"), k("192.0.2.7"));
    }
}
