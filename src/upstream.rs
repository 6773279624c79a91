//! Named upstreams: prebuilt `HttpPeer`s (built once per config, cloned per request), round
//! robin across peers, and the next peer on a refused connection.

use std::sync::atomic::{AtomicUsize, Ordering};

use pingora::upstreams::peer::HttpPeer;

use crate::config::UpstreamConfig;

pub struct Upstream {
    pub name: String,
    peers: Vec<HttpPeer>,
    next: AtomicUsize,
}

impl Upstream {
    pub fn new(cfg: &UpstreamConfig) -> Self {
        let peers = cfg
            .peers
            .iter()
            .map(|addr| {
                let mut p = HttpPeer::new(*addr, cfg.tls, cfg.sni.clone());
                p.options.connection_timeout = Some(cfg.connect_timeout);
                p.options.total_connection_timeout = Some(cfg.connect_timeout * 2);
                p.options.read_timeout = Some(cfg.read_timeout);
                p.options.write_timeout = Some(cfg.write_timeout);
                p.options.idle_timeout = Some(cfg.idle_timeout);
                p.options.verify_cert = cfg.verify_cert;
                p.options.verify_hostname = cfg.verify_cert;
                p
            })
            .collect();
        Upstream {
            name: cfg.name.clone(),
            peers,
            next: AtomicUsize::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Round-robin start for a new request.
    pub fn start_index(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// The peer for the `attempt`-th try of a request that started at `start`.
    pub fn peer(&self, start: usize, attempt: usize) -> HttpPeer {
        self.peers[(start + attempt) % self.peers.len()].clone()
    }
}
