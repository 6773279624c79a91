//! Keys refresh in the background: `JwksRefresher` is a pingora background service that, every
//! `TICK` (250 ms), fetches the keys of every issuer of the current snapshot whose refresh is due
//! (first load with backoff until it succeeds, then on the issuer's TTL). Issuers added by a
//! reload are picked up on the next tick; the last good key set survives every failure.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::state::SharedState;

/// How often due issuers are looked for: a JWKS's refresh is late by at most this much.
const TICK: Duration = Duration::from_millis(250);

pub(crate) struct JwksRefresher {
    state: SharedState,
}

impl JwksRefresher {
    pub(crate) fn new(state: SharedState) -> Self {
        JwksRefresher { state }
    }

    /// Refresh every due issuer once, concurrently.
    pub(crate) async fn tick(&self) {
        let snap = self.state.load_full();
        let now = Instant::now();
        let due: Vec<_> = snap
            .auth
            .issuers()
            .iter()
            .filter(|i| i.refresh_due(now))
            .cloned()
            .collect();
        let mut tasks = tokio::task::JoinSet::new();
        for issuer in due {
            tasks.spawn(async move {
                let _ = issuer.refresh().await;
            });
        }
        while tasks.join_next().await.is_some() {}
    }
}

#[async_trait]
impl BackgroundService for JwksRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            self.tick().await;
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }
}
