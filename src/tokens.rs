//! The token manager: each merchant's cached access token, refreshed before it expires, on
//! demand, and after an upstream 401, one refresh per merchant at a time.
//!
//! Owns: the cache (a `DashMap` of [`Slot`]s), the lifecycle rules of DESIGN.md §4 (expiry
//! with a skew window capped at half the lifetime, single-flight refresh with a waiter timeout
//! and a stuck-leader bound, jittered per-merchant backoff, `invalid_grant` → revoked), the
//! order "store a rotated refresh token, then use the new access token", and the background
//! [`RefresherService`].
//! Must not: hold a `DashMap` guard across `.await` (every guard lives in a sync helper), or
//! let a caller's cancellation cancel a refresh (refreshes run in their own task, so a rotated
//! refresh token is always stored).
//!
//! A token's life, with `w = min(refresh_before_expiry, lifetime / 2)`:
//! `fresh` until `lifetime - w` (served from cache), then `stale` until
//! `lifetime - min(w / 2, 30 s)` (still served, while one refresh runs), then `expired`
//! (callers wait for the refresh). The background refresher starts refreshes a jittered moment
//! before `lifetime - w`, so requests rarely see anything but `fresh`.
//!
//! Sub-modules: `policy` (the timing rules and the backoff, pure), `operators` (onboarding,
//! removal, forced refresh, state listing), `refresher` (the background service).

use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::oauth::{Grant, OAuthError, TokenEndpoint};
use crate::store::{CredentialStore, StoredMerchant};
use crate::types::{AccessToken, MerchantId, RefreshToken};
use dashmap::DashMap;
use http::HeaderValue;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tracing::Instrument;

mod operators;
mod policy;
mod refresher;
pub use operators::MerchantStatus;
pub use policy::{token_times, Backoff, TokenPolicy, TokenTimes, MAX_STALE_MARGIN};
pub use refresher::RefresherService;

/// A cached access token, ready to be put on a request.
pub struct CachedToken {
    /// `Bearer <access token>`, built once, marked sensitive.
    pub bearer: HeaderValue,
    /// Unique per token: what an upstream 401 invalidates.
    pub id: u64,
    pub times: TokenTimes,
    /// Wall-clock expiry, for operators (`GET /admin/merchants`).
    pub expires_at: SystemTime,
}

impl fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedToken")
            .field("id", &self.id)
            .field("bearer", &"***")
            .finish()
    }
}

/// Why no token could be had. Texts are safe to show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("unknown merchant")]
    UnknownMerchant,
    #[error("authorization revoked")]
    Revoked,
    #[error("token endpoint unavailable: {reason}")]
    Unavailable {
        reason: String,
        retry_after: Duration,
    },
    #[error("token endpoint bad response: {0}")]
    BadResponse(String),
    #[error("OAuth app misconfigured: {reason}")]
    Misconfigured {
        reason: String,
        retry_after: Duration,
    },
    #[error("credential store: {0}")]
    Store(String),
}

impl TokenError {
    pub fn to_gateway(&self, merchant: &MerchantId) -> GatewayError {
        let secs = |d: &Duration| d.as_secs() + u64::from(d.subsec_nanos() > 0);
        match self {
            TokenError::UnknownMerchant => GatewayError::UnknownMerchant(merchant.to_string()),
            TokenError::Revoked => GatewayError::AuthorizationRevoked(merchant.to_string()),
            TokenError::Unavailable {
                reason,
                retry_after,
            } => GatewayError::TokenEndpointUnavailable {
                reason: reason.clone(),
                retry_after_secs: secs(retry_after),
            },
            TokenError::BadResponse(r) => GatewayError::TokenEndpointBadResponse(r.clone()),
            TokenError::Misconfigured {
                reason,
                retry_after,
            } => GatewayError::OAuthMisconfigured {
                reason: reason.clone(),
                retry_after_secs: secs(retry_after),
            },
            TokenError::Store(r) => GatewayError::StoreUnavailable(r.clone()),
        }
    }

    fn with_retry_after(&self, d: Duration) -> TokenError {
        match self {
            TokenError::Unavailable { reason, .. } => TokenError::Unavailable {
                reason: reason.clone(),
                retry_after: d,
            },
            TokenError::Misconfigured { reason, .. } => TokenError::Misconfigured {
                reason: reason.clone(),
                retry_after: d,
            },
            other => other.clone(),
        }
    }
}

type RefreshResult = Result<Arc<CachedToken>, TokenError>;

/// A refresh in flight: its id, start, and where its result will appear.
struct Inflight {
    id: u64,
    started: Instant,
    result: watch::Receiver<Option<RefreshResult>>,
}

/// One merchant's state. Lives in the `DashMap`; changed only under its shard guard, in sync
/// code. Slots sit inline in the map's table, one per merchant: the rare states (an error to
/// repeat, a refresh in flight) are boxed, so a slot is 104 bytes, not 176 (100,000 merchants:
/// a 16 MB table instead of 25 MB).
struct Slot {
    refresh_token: RefreshToken,
    token: Option<Arc<CachedToken>>,
    revoked: bool,
    /// Consecutive failed refreshes, and until when callers get `last_error` at once.
    failures: u32,
    backoff_until: Option<Instant>,
    last_error: Option<Box<TokenError>>,
    inflight: Option<Box<Inflight>>,
    last_refresh: Option<(SystemTime, &'static str)>,
}

impl Slot {
    fn new(stored: StoredMerchant) -> Slot {
        Slot {
            refresh_token: stored.refresh_token,
            token: None,
            revoked: stored.revoked,
            failures: 0,
            backoff_until: None,
            last_error: None,
            inflight: None,
            last_refresh: None,
        }
    }

    fn in_backoff(&self, now: Instant) -> bool {
        self.backoff_until.is_some_and(|u| now < u)
    }
}

/// What a caller of [`TokenManager::get`] got or waits for.
enum Step {
    Ready(Arc<CachedToken>),
    Fail(TokenError),
    Load,
    Wait(watch::Receiver<Option<RefreshResult>>),
}

struct Inner {
    slots: DashMap<MerchantId, Slot>,
    endpoint: Arc<dyn TokenEndpoint>,
    store: Arc<dyn CredentialStore>,
    policy: TokenPolicy,
    metrics: Arc<Metrics>,
    next_id: AtomicU64,
    /// Background refresh schedule: (when, token id, merchant); stale entries are skipped.
    /// A std mutex: pushed and popped in sync code only.
    schedule: Mutex<BinaryHeap<Reverse<(Instant, u64, MerchantId)>>>,
    schedule_changed: Notify,
}

/// Cheap to clone: every clone shares one cache.
#[derive(Clone)]
pub struct TokenManager {
    inner: Arc<Inner>,
}

impl TokenManager {
    pub fn new(
        endpoint: Arc<dyn TokenEndpoint>,
        store: Arc<dyn CredentialStore>,
        policy: TokenPolicy,
        metrics: Arc<Metrics>,
    ) -> TokenManager {
        TokenManager {
            inner: Arc::new(Inner {
                slots: DashMap::new(),
                endpoint,
                store,
                policy,
                metrics,
                next_id: AtomicU64::new(1),
                schedule: Mutex::new(BinaryHeap::new()),
                schedule_changed: Notify::new(),
            }),
        }
    }

    /// Loads every stored merchant into the cache (without access tokens).
    pub async fn load(&self) -> Result<usize, crate::store::StoreError> {
        let all = self.inner.store.load_all().await;
        self.count_store("load", all.is_ok());
        let all = all?;
        let n = all.len();
        for (id, stored) in all {
            self.inner.slots.insert(id, Slot::new(stored));
        }
        self.inner
            .metrics
            .merchants
            .set(self.inner.slots.len() as i64);
        Ok(n)
    }

    fn count_store(&self, op: &str, ok: bool) {
        self.inner
            .metrics
            .store_operations
            .with_label_values(&[op, if ok { "ok" } else { "error" }])
            .inc();
    }

    /// The merchant's current access token: from the cache when fresh (the hot path: one
    /// shard read lock, no allocation), else after the single-flight refresh.
    pub async fn get(&self, merchant: &MerchantId) -> RefreshResult {
        if let Some(token) = self.cached(merchant) {
            return Ok(token);
        }
        // Boxed: inline, the slow path's state (store reads, waiting for a refresh) made this
        // future 440 bytes, moved and allocated on every request, cache hits included.
        Box::pin(self.get_slow(merchant)).await
    }

    /// A fresh cached token: the clock is read before the shard's read lock is taken, and
    /// the lock is held only for the lookup and an `Arc` clone.
    fn cached(&self, merchant: &MerchantId) -> Option<Arc<CachedToken>> {
        let now = Instant::now();
        let slot = self.inner.slots.get(merchant)?;
        let token = slot
            .token
            .as_ref()
            .filter(|t| now < t.times.refresh_at)?
            .clone();
        drop(slot);
        self.inner.metrics.token_cache_hits.inc();
        Some(token)
    }

    async fn get_slow(&self, merchant: &MerchantId) -> RefreshResult {
        // Twice at most: once to (re)load the merchant from the store, once to use it.
        for attempt in 0..2 {
            match self.decide(merchant, Instant::now()) {
                Step::Ready(token) => {
                    self.inner.metrics.token_cache_hits.inc();
                    return Ok(token);
                }
                Step::Fail(TokenError::Revoked) if attempt == 0 => {
                    // Another process (CLI, admin API, replica) may have stored a new
                    // authorization since: the store decides.
                    if !self.reload_if_reauthorized(merchant).await {
                        return Err(TokenError::Revoked);
                    }
                }
                Step::Fail(e) => return Err(e),
                Step::Wait(rx) => {
                    self.inner.metrics.token_cache_misses.inc();
                    return self.wait(rx).await;
                }
                Step::Load => self.load_one(merchant).await?,
            }
        }
        Err(TokenError::UnknownMerchant)
    }

    /// Replaces a revoked slot when the store holds a newer, unrevoked authorization.
    async fn reload_if_reauthorized(&self, merchant: &MerchantId) -> bool {
        let found = self.inner.store.get(merchant).await;
        self.count_store("load", found.is_ok());
        match found {
            Ok(Some(stored)) if !stored.revoked => {
                self.inner.slots.insert(merchant.clone(), Slot::new(stored));
                true
            }
            Ok(None) => {
                self.inner.slots.remove(merchant);
                self.inner
                    .metrics
                    .merchants
                    .set(self.inner.slots.len() as i64);
                false
            }
            _ => false,
        }
    }

    /// Decides, under the slot's guard, what a caller does; may start a refresh.
    fn decide(&self, merchant: &MerchantId, now: Instant) -> Step {
        let Some(mut slot) = self.inner.slots.get_mut(merchant) else {
            return Step::Load;
        };
        if slot.revoked {
            return Step::Fail(TokenError::Revoked);
        }
        if let Some(token) = slot.token.clone() {
            if now < token.times.usable_until {
                if now >= token.times.refresh_at && slot.inflight.is_none() && !slot.in_backoff(now)
                {
                    self.start_refresh(&mut slot, merchant, now);
                }
                return Step::Ready(token);
            }
        }
        if let (Some(until), Some(e)) = (slot.backoff_until, &slot.last_error) {
            if now < until {
                return Step::Fail(e.with_retry_after(until - now));
            }
        }
        if let Some(inflight) = &slot.inflight {
            if now.duration_since(inflight.started) < self.inner.policy.stuck_leader_after {
                return Step::Wait(inflight.result.clone());
            }
            tracing::warn!(merchant = %merchant, "refresh stuck; starting another");
        }
        Step::Wait(self.start_refresh(&mut slot, merchant, now))
    }

    async fn wait(&self, mut rx: watch::Receiver<Option<RefreshResult>>) -> RefreshResult {
        let timeout = self.inner.policy.waiter_timeout;
        match tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await {
            Ok(Ok(result)) => result.clone().unwrap_or(Err(TokenError::UnknownMerchant)),
            Ok(Err(_)) => Err(TokenError::Unavailable {
                reason: "the refresh task ended without a result".into(),
                retry_after: Duration::from_secs(1),
            }),
            Err(_) => Err(TokenError::Unavailable {
                reason: format!("no token within {} ms", timeout.as_millis()),
                retry_after: Duration::from_secs(1),
            }),
        }
    }

    /// Reads one merchant from the store into the cache (another process may have added it).
    async fn load_one(&self, merchant: &MerchantId) -> Result<(), TokenError> {
        let found = self.inner.store.get(merchant).await;
        self.count_store("load", found.is_ok());
        match found {
            Ok(Some(stored)) => {
                self.inner
                    .slots
                    .entry(merchant.clone())
                    .or_insert_with(|| Slot::new(stored));
                self.inner
                    .metrics
                    .merchants
                    .set(self.inner.slots.len() as i64);
                Ok(())
            }
            Ok(None) => Err(TokenError::UnknownMerchant),
            Err(e) => Err(TokenError::Store(e.to_string())),
        }
    }

    /// Starts the one refresh of this merchant in its own task; returns where its result
    /// appears. Called with the slot's guard held (spawning does not block).
    fn start_refresh(
        &self,
        slot: &mut Slot,
        merchant: &MerchantId,
        now: Instant,
    ) -> watch::Receiver<Option<RefreshResult>> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        slot.inflight = Some(Box::new(Inflight {
            id,
            started: now,
            result: rx.clone(),
        }));
        let this = self.clone();
        let merchant = merchant.clone();
        let refresh_token = slot.refresh_token.clone();
        let span = tracing::info_span!("refresh", merchant = %merchant);
        tokio::spawn(
            async move {
                let result = this.refresh(&merchant, refresh_token, id).await;
                let _ = tx.send(Some(result));
            }
            .instrument(span),
        );
        rx
    }

    /// One refresh: call the token endpoint, store a rotated refresh token, then install.
    async fn refresh(&self, merchant: &MerchantId, used: RefreshToken, id: u64) -> RefreshResult {
        // The store is the truth: the merchant may have been removed, or re-authorized, by
        // another process (CLI, admin API, another replica) since it was cached.
        let used = match self.inner.store.get(merchant).await {
            Ok(None) => {
                tracing::info!("merchant no longer in the store; dropping it");
                self.inner.slots.remove(merchant);
                self.inner
                    .metrics
                    .merchants
                    .set(self.inner.slots.len() as i64);
                return Err(TokenError::UnknownMerchant);
            }
            Ok(Some(stored)) if stored.refresh_token != used => {
                if let Some(mut slot) = self.inner.slots.get_mut(merchant) {
                    slot.refresh_token = stored.refresh_token.clone();
                    slot.revoked = stored.revoked;
                }
                if stored.revoked {
                    let dead = Some(&stored.refresh_token);
                    return self.finish(merchant, id, Err(TokenError::Revoked), dead);
                }
                stored.refresh_token
            }
            Ok(Some(_)) => used,
            Err(e) => {
                self.count_store("load", false);
                tracing::warn!(error = %e, "cannot read the store before refreshing; using the cached refresh token");
                used
            }
        };
        let issued = Instant::now();
        let answer = self
            .inner
            .endpoint
            .exchange(Grant::RefreshToken(&used))
            .await;
        self.inner
            .metrics
            .token_refresh_duration
            .observe(issued.elapsed().as_secs_f64());
        self.count_refresh("refresh_token", &answer);
        let set = match answer {
            Ok(set) => set,
            Err(OAuthError::InvalidGrant(_)) => {
                tracing::warn!(
                    "refresh token rejected (invalid_grant): merchant must authorize again"
                );
                let stored = self.inner.store.mark_revoked(merchant, &used).await;
                self.count_store("save", stored.is_ok());
                if let Err(e) = stored {
                    tracing::error!(error = %e, "cannot record the revocation in the store");
                }
                return self.finish(merchant, id, Err(TokenError::Revoked), Some(&used));
            }
            Err(e) => {
                tracing::warn!(error = %e, "refresh failed");
                return self.finish(merchant, id, Err(classify(e)), None);
            }
        };
        if let Some(rotated) = set.refresh_token.filter(|t| *t != used) {
            // Durable first: a rotated refresh token that is not stored is a lost merchant.
            let saved = self.inner.store.rotate(merchant, &rotated).await;
            self.count_store("save", saved.is_ok());
            match saved {
                Ok(true) => {
                    if let Some(mut slot) = self.inner.slots.get_mut(merchant) {
                        slot.refresh_token = rotated;
                    }
                }
                Ok(false) => {
                    tracing::info!("merchant was removed during its refresh; dropping it");
                    self.inner.slots.remove(merchant);
                    return Err(TokenError::UnknownMerchant);
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot store the rotated refresh token; keeping it in memory and failing this refresh");
                    if let Some(mut slot) = self.inner.slots.get_mut(merchant) {
                        slot.refresh_token = rotated;
                    }
                    return self.finish(merchant, id, Err(TokenError::Store(e.to_string())), None);
                }
            }
        }
        let token = self.make_token(set.access_token, set.expires_in, issued)?;
        self.finish(merchant, id, Ok(token), None)
    }

    fn make_token(
        &self,
        access: AccessToken,
        lifetime: Duration,
        issued: Instant,
    ) -> RefreshResult {
        let mut bearer = HeaderValue::try_from(format!("Bearer {}", access.expose()))
            .map_err(|_| TokenError::BadResponse("access token is not a header value".into()))?;
        bearer.set_sensitive(true);
        Ok(Arc::new(CachedToken {
            bearer,
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            times: token_times(
                issued,
                lifetime,
                self.inner.policy.refresh_before_expiry,
                fastrand::f64(),
            ),
            expires_at: SystemTime::now() + lifetime,
        }))
    }

    fn count_refresh<T>(&self, grant: &str, answer: &Result<T, OAuthError>) {
        let outcome = match answer {
            Ok(_) => "ok",
            Err(OAuthError::InvalidGrant(_)) => "invalid_grant",
            Err(OAuthError::InvalidClient(_)) | Err(OAuthError::NotConfigured) => "misconfigured",
            Err(OAuthError::Unavailable(_)) => "unavailable",
            Err(OAuthError::BadResponse(_)) => "bad_response",
        };
        self.inner
            .metrics
            .token_refreshes
            .with_label_values(&[grant, outcome])
            .inc();
    }

    /// Records a refresh's outcome in the slot (if it still exists) and clears `inflight`.
    /// `revoked_token`: revoke only if the slot still holds that refresh token.
    fn finish(
        &self,
        merchant: &MerchantId,
        id: u64,
        result: RefreshResult,
        revoked_token: Option<&RefreshToken>,
    ) -> RefreshResult {
        let Some(mut slot) = self.inner.slots.get_mut(merchant) else {
            return Err(TokenError::UnknownMerchant);
        };
        if slot.inflight.as_ref().is_some_and(|i| i.id == id) {
            slot.inflight = None;
        }
        let now = Instant::now();
        match &result {
            Ok(token) => {
                // A late (stuck) leader never replaces a newer token.
                if slot.token.as_ref().is_none_or(|t| t.id < token.id) {
                    slot.token = Some(token.clone());
                }
                slot.failures = 0;
                slot.backoff_until = None;
                slot.last_error = None;
                slot.last_refresh = Some((SystemTime::now(), "ok"));
                self.schedule(token.times.background_at, token.id, merchant);
            }
            Err(TokenError::Revoked) => {
                if revoked_token.is_some_and(|t| *t == slot.refresh_token) {
                    slot.revoked = true;
                    slot.token = None;
                    slot.last_refresh = Some((SystemTime::now(), "invalid_grant"));
                } else {
                    // A new authorization arrived while this refresh ran: try it instead.
                    drop(slot);
                    return Err(TokenError::Unavailable {
                        reason: "authorization replaced during refresh".into(),
                        retry_after: Duration::from_secs(1),
                    });
                }
            }
            Err(e) => {
                slot.failures = slot.failures.saturating_add(1);
                let delay = self
                    .inner
                    .policy
                    .backoff
                    .delay(slot.failures, fastrand::f64());
                slot.backoff_until = Some(now + delay);
                let e = e.with_retry_after(delay);
                slot.last_error = Some(Box::new(e.clone()));
                slot.last_refresh = Some((SystemTime::now(), "failed"));
                if let Some(token) = &slot.token {
                    // Try again in the background once the backoff is over.
                    self.schedule(now + delay, token.id, merchant);
                }
                return Err(e);
            }
        }
        result
    }

    fn schedule(&self, at: Instant, token_id: u64, merchant: &MerchantId) {
        self.inner
            .schedule
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Reverse((at, token_id, merchant.clone())));
        self.inner.schedule_changed.notify_one();
    }

    /// After an upstream 401: forget `token_id` if it is still the merchant's current token.
    /// A newer token (from a concurrent refresh) stays.
    pub fn invalidate(&self, merchant: &MerchantId, token_id: u64) -> bool {
        let Some(mut slot) = self.inner.slots.get_mut(merchant) else {
            return false;
        };
        if slot.token.as_ref().is_some_and(|t| t.id == token_id) {
            slot.token = None;
            return true;
        }
        false
    }
}

/// Maps a token endpoint failure to what callers see (backoff decides `retry_after`).
fn classify(e: OAuthError) -> TokenError {
    let retry_after = Duration::from_secs(1);
    match e {
        OAuthError::Unavailable(reason) => TokenError::Unavailable {
            reason,
            retry_after,
        },
        OAuthError::InvalidClient(reason) => TokenError::Misconfigured {
            reason,
            retry_after,
        },
        OAuthError::NotConfigured => TokenError::Misconfigured {
            reason: "oauth.client_id and oauth.client_secret are not set (MOLLIE_GATEWAY__OAUTH__CLIENT_ID, MOLLIE_GATEWAY__OAUTH__CLIENT_SECRET)".into(),
            retry_after,
        },
        OAuthError::BadResponse(r) => TokenError::BadResponse(r),
        OAuthError::InvalidGrant(r) => TokenError::BadResponse(format!("invalid_grant: {r}")),
    }
}

#[cfg(test)]
#[path = "tokens_tests.rs"]
mod tests;
