//! The background refresher: refreshes tokens a jittered moment before their proactive window
//! opens, sleeping until the next one is due (no polling), and stops on shutdown.

use super::TokenManager;
use std::cmp::Reverse;
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

/// Refreshes tokens a jittered moment before their proactive window opens, so requests
/// rarely wait. Sleeps until the next due refresh (no polling); stops on shutdown.
pub struct RefresherService {
    pub tokens: TokenManager,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for RefresherService {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let span = tracing::info_span!("refresher");
        async {
            loop {
                let next = self.tokens.run_due(Instant::now());
                let sleep = match next {
                    Some(at) => tokio::time::sleep_until(at),
                    None => tokio::time::sleep(Duration::from_secs(3600)),
                };
                tokio::select! {
                    _ = sleep => {}
                    _ = self.tokens.inner.schedule_changed.notified() => {}
                    _ = shutdown.changed() => {
                        tracing::info!("refresher stopped");
                        return;
                    }
                }
            }
        }
        .instrument(span)
        .await
    }
}

impl TokenManager {
    /// Starts the background refreshes that are due; returns when the next one is.
    fn run_due(&self, now: Instant) -> Option<Instant> {
        loop {
            let due = {
                let mut heap = self
                    .inner
                    .schedule
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                match heap.peek() {
                    Some(Reverse((at, _, _))) if *at <= now => heap.pop(),
                    Some(Reverse((at, _, _))) => return Some(*at),
                    None => return None,
                }
            };
            let Some(Reverse((_, token_id, merchant))) = due else {
                continue;
            };
            if let Some(mut slot) = self.inner.slots.get_mut(&merchant) {
                let current = slot.token.as_ref().is_some_and(|t| t.id == token_id);
                if current && !slot.revoked && slot.inflight.is_none() && !slot.in_backoff(now) {
                    self.start_refresh(&mut slot, &merchant, now);
                }
            }
        }
    }
}
