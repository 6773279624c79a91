//! Loopback probes: free ports, one-shot HTTP requests, readiness, the gateway's metrics and
//! Redis's command counter.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::procs::Proc;
use crate::Res;

pub(crate) fn free_port() -> Res<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// One HTTP/1.1 request with `Connection: close`: (status, body).
pub(crate) fn http_get(addr: &str, path: &str, headers: &[String]) -> Res<(u16, String)> {
    let sock = addr
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP response from {addr}: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Poll until `GET path` answers 200, the process dies, or `timeout` passes.
pub(crate) fn wait_ready(proc_: &mut Proc, addr: &str, path: &str, timeout: Duration) -> Res<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        if !proc_.alive() {
            return Err(format!("{} exited; {}", proc_.name, proc_.log_tail()));
        }
        match http_get(addr, path, &[]) {
            Ok((200, _)) => return Ok(()),
            Ok((status, body)) => last = format!("status {status}: {}", body.trim()),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "{} not ready at http://{addr}{path} after {}s ({last}); {}",
        proc_.name,
        timeout.as_secs(),
        proc_.log_tail()
    ))
}

/// A Prometheus sample from the gateway's admin `/metrics`, e.g.
/// `gateway_token_cache_requests_total{result="hit"}`.
pub(crate) fn metric(admin: &str, series: &str) -> Option<f64> {
    let (_, body) = http_get(admin, "/metrics", &[]).ok()?;
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `total_commands_processed` from Redis `INFO stats` (RESP over a plain socket).
pub(crate) fn redis_commands(addr: &str) -> Option<u64> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"*2\r\n$4\r\nINFO\r\n$5\r\nstats\r\n").ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(v) = text
            .lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
        {
            return v.trim().parse().ok();
        }
    }
    None
}
