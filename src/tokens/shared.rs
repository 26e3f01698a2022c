//! The cross-replica part of a refresh: the store's per-merchant lock, and the access token
//! another replica already fetched (DESIGN.md §7).
//!
//! Owns: taking the lock before a refresh (or waiting, bounded, for the replica that holds
//! it), the re-read after taking it (a newer shared token skips the token call), and sharing
//! a new token. With the file store the lock is always free and nothing is shared, so this is
//! the single-process behaviour unchanged.
//! Waiting replicas wake when the store announces a new token (Redis pub/sub), and look again
//! at least every [`LOCK_POLL_WITH_EVENTS`] (a holder that died announces nothing).
//! Must not: wait without a bound, or use a shared token that is not newer than the one this
//! replica last saw (after a 401 that one is dead).

use super::{CachedToken, TokenError, TokenManager, Unavailable};
use crate::store::{unix_now_ms, SharedToken, StoreEvent, StoreLock};
use crate::types::{AccessToken, MerchantId};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;
use tokio::time::Instant;

/// How often a replica waiting for another one's refresh looks at the record again, when the
/// store announces nothing.
pub const LOCK_POLL: Duration = Duration::from_millis(50);
/// The same when the store announces new tokens (a waiter wakes on the announcement; this
/// bound covers a holder that died or failed, which announces nothing).
pub const LOCK_POLL_WITH_EVENTS: Duration = Duration::from_millis(250);

/// What a refresh holds, or got, before calling the token endpoint.
pub(super) enum Turn {
    /// This replica refreshes, holding the lock (released when dropped).
    Refresh(StoreLock),
    /// Another replica already stored a newer token: use it, no token call.
    Use(Arc<CachedToken>),
}

impl TokenManager {
    /// Takes the merchant's store lock, or waits for the replica holding it, bounded by the
    /// stuck-leader bound (callers stop waiting at the waiter timeout). `seen_ms` is the
    /// expiry of the newest token this replica has seen. An unreachable store: local single
    /// flight only.
    pub(super) async fn take_turn(
        &self,
        merchant: &MerchantId,
        seen_ms: u64,
    ) -> Result<Turn, TokenError> {
        let deadline = Instant::now() + self.inner.policy.stuck_leader_after;
        let mut events = self.inner.store.events();
        loop {
            match self
                .inner
                .store
                .lock(merchant, self.inner.policy.store_lock_ttl)
                .await
            {
                Ok(Some(lock)) => {
                    // Re-read: the replica that held the lock may have just stored a token.
                    return Ok(match self.newer_shared(merchant, seen_ms).await {
                        Some(token) => Turn::Use(token),
                        None => Turn::Refresh(lock),
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    self.count_store("lock", false);
                    tracing::warn!(error = %e, "cannot take the store's refresh lock; refreshing with local single flight only");
                    return Ok(Turn::Refresh(StoreLock::local()));
                }
            }
            if let Some(token) = self.newer_shared(merchant, seen_ms).await {
                return Ok(Turn::Use(token));
            }
            if Instant::now() >= deadline {
                let waited = self.inner.policy.stuck_leader_after;
                return Err(TokenError::unavailable(Unavailable::WaitedTooLong(waited)));
            }
            wait_for_news(merchant, events.as_mut()).await;
        }
    }

    /// The shared token, if it expires after `seen_ms` and is still fresh here.
    pub(super) async fn newer_shared(
        &self,
        merchant: &MerchantId,
        seen_ms: u64,
    ) -> Option<Arc<CachedToken>> {
        let shared = match self.inner.store.shared_token(merchant).await {
            Ok(Some(s)) if s.expires_at_ms > seen_ms => s,
            Ok(_) => return None,
            Err(e) => {
                self.count_store("load", false);
                tracing::warn!(error = %e, "cannot read the shared access token");
                return None;
            }
        };
        let remaining = Duration::from_millis(shared.expires_at_ms.saturating_sub(unix_now_ms()));
        let lifetime = Duration::from_millis(shared.lifetime_ms).max(remaining);
        let now = Instant::now();
        let issued = now.checked_sub(lifetime - remaining)?;
        let token = self
            .make_token(shared.access_token, lifetime, issued)
            .ok()?;
        if now >= token.times.refresh_at {
            return None;
        }
        self.learn_refresh_token(merchant).await;
        Some(token)
    }

    /// Another replica refreshed, and may have rotated the refresh token: this replica takes
    /// the stored one, so that a refresh it makes while the store is unreachable presents the
    /// live one (with rotation, the one it knew is dead). Skipped if this replica's own copy
    /// changed meanwhile (its own refresh rotated it).
    async fn learn_refresh_token(&self, merchant: &MerchantId) {
        let known = match self.inner.slots.get(merchant) {
            Some(slot) if !slot.revoked => slot.refresh_token.clone(),
            _ => return,
        };
        let Ok(Some(stored)) = self.inner.store.get(merchant).await else {
            return;
        };
        if stored.revoked || stored.removing || stored.refresh_token == known {
            return;
        }
        if let Some(mut slot) = self.inner.slots.get_mut(merchant) {
            if slot.refresh_token == known && !slot.revoked {
                slot.refresh_token = stored.refresh_token;
            }
        }
    }

    /// Offers a new token to the other replicas (a failure only costs them a token call).
    pub(super) async fn share(
        &self,
        merchant: &MerchantId,
        access: AccessToken,
        token: &CachedToken,
        lifetime: Duration,
    ) {
        let shared = SharedToken {
            access_token: access,
            expires_at_ms: token.expires_at_ms,
            lifetime_ms: lifetime.as_millis() as u64,
        };
        let saved = self.inner.store.save_access_token(merchant, &shared).await;
        if let Err(e) = saved {
            self.count_store("save", false);
            tracing::warn!(error = %e, "cannot share the new access token with other replicas");
        }
    }
}

/// Unix milliseconds of a wall-clock moment (0 before 1970).
pub(super) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Until the store announces a new token for `merchant`, or the poll interval passes.
async fn wait_for_news(merchant: &MerchantId, events: Option<&mut Receiver<StoreEvent>>) {
    let Some(rx) = events else {
        return tokio::time::sleep(LOCK_POLL).await;
    };
    let heard = async {
        loop {
            match rx.recv().await {
                Ok(StoreEvent::Token(id)) if id == *merchant => return,
                Err(RecvError::Closed) => std::future::pending::<()>().await,
                _ => {}
            }
        }
    };
    let _ = tokio::time::timeout(LOCK_POLL_WITH_EVENTS, heard).await;
}
