//! A real echo upstream on loopback: answers every request with JSON describing what it
//! received (method, path, query, headers, body), and counts requests so tests can prove a
//! rejected request never reached it. `?sleep_ms=N` delays the answer, `?status=N` sets it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use serde_json::{json, Map, Value};

use super::serve;

#[derive(Clone)]
pub struct EchoUpstream {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl EchoUpstream {
    pub async fn start() -> std::io::Result<EchoUpstream> {
        Self::start_on("127.0.0.1:0").await
    }

    pub async fn start_on(bind: &str) -> std::io::Result<EchoUpstream> {
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        serve(listener, move |req| echo(h.clone(), addr, req));
        Ok(EchoUpstream { addr, hits })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn echo(
    hits: Arc<AtomicUsize>,
    addr: SocketAddr,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    hits.fetch_add(1, Ordering::SeqCst);
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let mut headers = Map::new();
    for (k, v) in req.headers() {
        let v = Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned());
        match headers.get_mut(k.as_str()) {
            Some(Value::Array(a)) => a.push(v),
            Some(prev) => *prev = Value::Array(vec![prev.clone(), v]),
            None => {
                headers.insert(k.as_str().to_string(), v);
            }
        }
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let param = |n: &str| {
        params
            .iter()
            .find(|(k, _)| k == n)
            .and_then(|(_, v)| v.parse::<u64>().ok())
    };
    if let Some(ms) = param("sleep_ms") {
        tokio::time::sleep(std::time::Duration::from_millis(ms.min(60_000))).await;
    }
    let status = param("status")
        .and_then(|s| u16::try_from(s).ok())
        .unwrap_or(200);
    let out = json!({
        "upstream": addr.to_string(),
        "method": method,
        "path": path,
        "query": query,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
        "body_len": body.len(),
    });
    super::respond(status, "application/json", out.to_string(), None)
}
