//! What other replicas announce through the store (Redis pub/sub), applied to this replica's
//! cache: a removed merchant is dropped, a changed one (onboarded, re-authorized, revoked) is
//! re-read, a newer shared access token replaces the cached one, and after a (re)subscription
//! everything is re-read (pub/sub drops messages while disconnected).
//! Must not: hold a slot guard across `.await`, or drop a cached token of a merchant whose
//! stored authorization did not change.

use super::{CachedToken, Slot, TokenManager};
use crate::store::{StoreEvent, StoredMerchant};
use crate::types::MerchantId;
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;
use tracing::Instrument;

/// Applies the store's announcements until shutdown; does nothing for a store that makes
/// none (the file store).
pub struct StoreEventsService {
    pub tokens: TokenManager,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for StoreEventsService {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let Some(mut events) = self.tokens.inner.store.events() else {
            let _ = shutdown.changed().await;
            return;
        };
        let span = tracing::info_span!("store events");
        async {
            loop {
                let event = tokio::select! {
                    e = events.recv() => e,
                    _ = shutdown.changed() => return,
                };
                match event {
                    Ok(event) => self.tokens.apply(event).await,
                    // Missed some: re-read everything.
                    Err(RecvError::Lagged(_)) => self.tokens.apply(StoreEvent::Resync).await,
                    Err(RecvError::Closed) => return,
                }
            }
        }
        .instrument(span)
        .await
    }
}

impl TokenManager {
    /// Applies one announcement to the cache.
    pub async fn apply(&self, event: StoreEvent) {
        match event {
            StoreEvent::Removed(id) => self.forget(&id),
            StoreEvent::Changed(id) => match self.inner.store.get(&id).await {
                Ok(Some(stored)) => self.adopt(id, stored),
                Ok(None) => self.forget(&id),
                Err(e) => {
                    tracing::warn!(merchant = %id, error = %e, "cannot re-read an announced change")
                }
            },
            StoreEvent::Token(id) => {
                let seen = self.seen_expiry_ms(&id);
                if let Some(token) = self.newer_shared(&id, seen).await {
                    self.install(&id, token);
                }
            }
            StoreEvent::Resync => self.resync().await,
        }
    }

    /// A token another replica fetched replaces an older cached one at once (that one may be
    /// the token an upstream just rejected there).
    fn install(&self, id: &MerchantId, token: Arc<CachedToken>) {
        let Some(mut slot) = self.inner.slots.get_mut(id) else {
            return;
        };
        let newer = slot
            .token
            .as_ref()
            .is_none_or(|t| t.expires_at_ms < token.expires_at_ms);
        if !newer || slot.revoked {
            return;
        }
        slot.token = Some(token.clone());
        slot.seen_expiry_ms = slot.seen_expiry_ms.max(token.expires_at_ms);
        let key = slot.key().clone();
        drop(slot);
        self.schedule(token.times.background_at, token.id, key);
    }

    async fn resync(&self) {
        let all = match self.inner.store.load_all().await {
            Ok(all) => all,
            Err(e) => return tracing::warn!(error = %e, "cannot resync the cache"),
        };
        let ids: HashSet<MerchantId> = all.iter().map(|(id, _)| id.clone()).collect();
        self.inner.slots.retain(|id, _| ids.contains(id));
        for (id, stored) in all {
            self.adopt(id, stored);
        }
        self.inner
            .loaded
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.set_merchants_gauge();
    }

    /// Takes the stored state unless the cache already holds that same authorization.
    fn adopt(&self, id: MerchantId, stored: StoredMerchant) {
        let same = self
            .inner
            .slots
            .get(&id)
            .is_some_and(|slot| slot.holds(&stored));
        if !same {
            self.inner.slots.insert(id, Slot::new(stored));
            self.set_merchants_gauge();
        }
    }

    fn forget(&self, id: &MerchantId) {
        if self.inner.slots.remove(id).is_some() {
            tracing::info!(merchant = %id, "merchant removed by another process");
        }
        self.set_merchants_gauge();
    }

    fn set_merchants_gauge(&self) {
        let n = self.inner.slots.len() as i64;
        self.inner.metrics.merchants.set(n);
    }
}
