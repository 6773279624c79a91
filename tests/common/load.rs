//! A load generator for the tests that change a running gateway (reload, upgrade) and
//! require zero failed requests meanwhile: [`spawn_load`] and what it saw, [`Load`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a load generator saw.
#[derive(Debug, Default)]
pub struct Load {
    pub ok: usize,
    pub failed: usize,
    /// The first failures, described.
    pub samples: Vec<String>,
}

impl Load {
    pub fn merge(&mut self, other: Load) {
        self.ok += other.ok;
        self.failed += other.failed;
        for s in other.samples {
            if self.samples.len() < 20 {
                self.samples.push(s);
            }
        }
    }

    fn record(&mut self, what: String) {
        self.failed += 1;
        if self.samples.len() < 20 {
            self.samples.push(what);
        }
    }
}

/// `workers` tasks send `GET url` (with `token` when given) as fast as they can until `stop`
/// is set or `limit` passes; every answer must be a 200. `fresh_connections` opens a new
/// connection per request, otherwise each worker keeps its connection alive.
pub fn spawn_load(
    url: String,
    token: Option<String>,
    workers: usize,
    fresh_connections: bool,
    stop: Arc<AtomicBool>,
    limit: Duration,
) -> tokio::task::JoinHandle<Load> {
    tokio::spawn(async move {
        let deadline = Instant::now() + limit;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..workers {
            let url = url.clone();
            let token = token.clone();
            let stop = stop.clone();
            tasks.spawn(async move {
                let mut b = reqwest::Client::builder()
                    .no_proxy()
                    .timeout(Duration::from_secs(5));
                if fresh_connections {
                    b = b.pool_max_idle_per_host(0);
                }
                let client = b.build().expect("client");
                let mut load = Load::default();
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    let mut rb = client.get(&url);
                    if fresh_connections {
                        rb = rb.header("connection", "close");
                    }
                    if let Some(t) = &token {
                        rb = rb.bearer_auth(t);
                    }
                    match rb.send().await {
                        Ok(resp) => {
                            let status = resp.status().as_u16();
                            match resp.bytes().await {
                                Ok(_) if status == 200 => load.ok += 1,
                                Ok(body) => load.record(format!(
                                    "status {status}: {}",
                                    String::from_utf8_lossy(&body)
                                )),
                                Err(e) => {
                                    load.record(format!("status {status}, body error: {e:?}"))
                                }
                            }
                        }
                        Err(e) => load.record(format!("transport error: {e:?}")),
                    }
                }
                load
            });
        }
        let mut total = Load::default();
        while let Some(r) = tasks.join_next().await {
            total.merge(r.expect("load worker panicked"));
        }
        total
    })
}
