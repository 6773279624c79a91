//! What stands behind a gateway on loopback: the crate's own [`LocalIssuer`] and
//! [`EchoUpstream`], an HTTP server with a fixed answer, and a self-signed certificate for the
//! TLS peers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{EchoUpstream, LocalIssuer, AUDIENCE};

/// A `LocalIssuer` with [`AUDIENCE`] and its base URL as `iss`.
pub async fn local_issuer() -> LocalIssuer {
    LocalIssuer::start(None, AUDIENCE)
        .await
        .expect("start local issuer")
}

pub async fn echo_upstream() -> EchoUpstream {
    EchoUpstream::start().await.expect("start echo upstream")
}

/// An HTTP server on loopback that answers every request with `200`, `content_type` and
/// `body`, after `delay` (a JWKS with a chosen media type; an identity provider far away).
pub async fn fixed_http_server(
    content_type: &'static str,
    body: String,
    delay: Duration,
) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind fixed HTTP server");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                tokio::time::sleep(delay).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

/// A self-signed certificate for `localhost` and 127.0.0.1 in `dir`, valid one day, made with
/// the `openssl` command: (cert.pem, key.pem), or why it could not be made.
pub fn self_signed_cert(dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "extendedKeyUsage=serverAuth",
            "-days",
            "1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "the `openssl` command is not installed: the TLS \
                 certificates are made with it (Debian package `openssl`)"
                .to_string(),
            _ => format!("cannot run openssl: {e}"),
        })?;
    if !out.status.success() {
        return Err(format!(
            "openssl req failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok((cert, key))
}
