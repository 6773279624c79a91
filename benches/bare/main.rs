//! The floor of every benchmark: a bare pingora proxy built exactly like the gateway (same
//! crate, pingora version and features, release profile, allocator), whose `ProxyHttp` does
//! nothing but return one `HttpPeer`. `benches/instructions.rs` and `benches/gateway/` run it
//! beside the gateway, so every table shows what pingora itself costs.
//!
//! `bare-pingora --listen 127.0.0.1:8081 --upstream 127.0.0.1:9000 [--threads 1]`

#![forbid(unsafe_code)]

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;

struct Bare {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (arg(&args, "--listen"), arg(&args, "--upstream")) else {
        eprintln!("usage: bare-pingora --listen ADDR --upstream ADDR [--threads N]");
        std::process::exit(64);
    };
    let threads = arg(&args, "--threads")
        .and_then(|t| t.parse().ok())
        .unwrap_or(1);
    let conf = ServerConf {
        threads,
        upstream_keepalive_pool_size: 1024,
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Bare { upstream });
    proxy.add_tcp(&listen);
    proxy.threads = Some(threads);
    server.add_service(proxy);
    server.run_forever();
}

/// The gateway's allocator (src/main.rs), so the floor is built the same way.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
