//! HTTP/1.x over a plain socket, for requests reqwest would not send: [`raw_request`] writes
//! bytes and parses one [`RawResponse`].

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A response read off a raw socket.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Parse a complete HTTP/1.x response from `buf`; `None` while incomplete (or when
/// `eof` and nothing parseable arrived).
fn parse_raw(buf: &[u8], eof: bool) -> Option<RawResponse> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status = status_line.split(' ').nth(1)?.parse::<u16>().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = &buf[end + 4..];
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        if rest.len() >= len {
            return Some(RawResponse {
                status,
                headers,
                body: rest[..len].to_vec(),
            });
        }
        return None;
    }
    if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        if !rest.ends_with(b"0\r\n\r\n") && !eof {
            return None;
        }
        let mut body = Vec::new();
        let mut r = rest;
        while let Some(pos) = r.windows(2).position(|w| w == b"\r\n") {
            let size =
                usize::from_str_radix(String::from_utf8_lossy(&r[..pos]).trim(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            let start = pos + 2;
            if r.len() < start + size {
                break;
            }
            body.extend_from_slice(&r[start..start + size]);
            r = &r[(start + size + 2).min(r.len())..];
        }
        return Some(RawResponse {
            status,
            headers,
            body,
        });
    }
    if status == 204 || status == 304 || (100..200).contains(&status) {
        return Some(RawResponse {
            status,
            headers,
            body: Vec::new(),
        });
    }
    if eof {
        return Some(RawResponse {
            status,
            headers,
            body: rest.to_vec(),
        });
    }
    None
}

/// Write `bytes` to `addr` and read one response. `None` when the server closed the
/// connection (or stayed silent for `timeout`) without a parseable answer.
pub async fn raw_request_timeout(
    addr: SocketAddr,
    bytes: &[u8],
    timeout: Duration,
) -> Option<RawResponse> {
    let work = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        // The server may answer and close before reading everything: ignore write errors.
        let _ = s.write_all(bytes).await;
        let _ = s.flush().await;
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return parse_raw(&buf, true),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(r) = parse_raw(&buf, false) {
                        return Some(r);
                    }
                }
            }
        }
    };
    tokio::time::timeout(timeout, work).await.ok().flatten()
}

/// [`raw_request_timeout`] with 5 s.
pub async fn raw_request(addr: SocketAddr, bytes: &[u8]) -> Option<RawResponse> {
    raw_request_timeout(addr, bytes, Duration::from_secs(5)).await
}

/// Assert `r` is not a server error (a closed connection counts as no answer, not a 5xx).
pub fn assert_not_5xx(what: &str, r: &Option<RawResponse>) {
    if let Some(r) = r {
        assert!(r.status < 500, "{what}: got {} {}", r.status, r.text());
    }
}
