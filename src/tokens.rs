//! The token manager: each merchant's cached access token, refreshed before it expires, on
//! demand, and after an upstream 401, one refresh per merchant at a time.
//!
//! A merchant stored with a static credential (API key, organization token) gets a slot whose
//! token never expires and is never scheduled or refreshed ([`CachedToken::is_static`]).
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
//! Where refreshes run: each in a task on the runtime that started it (proxy, admin listener
//! or refresher); its token endpoint call goes through the [`TokenEndpoint`] it was given,
//! which in the server is `oauth::TokenClient`, so every call runs on the one runtime of token
//! traffic (`oauth::TokenEndpointService`; see `oauth/home.rs`).
//!
//! Sub-modules: `error` ([`TokenError`] and its typed causes; `error.rs` at the crate root
//! turns it into an answer), `policy` (the timing rules and the backoff, pure), `refresh` (one
//! refresh, step by step), `operators` (onboarding, removal, forced refresh, state listing),
//! `refresher` (the background service), `removal` (revocation at Mollie on removal, and the
//! [`RevokerService`] that retries it), `shared` (the store's cross-replica lock and shared
//! access token), `events` (other replicas' announced changes applied to the cache).

use crate::metrics::Metrics;
use crate::oauth::TokenEndpoint;
use crate::store::{CredentialKind, CredentialStore, StaticCredential, StoredMerchant};
use crate::types::{MerchantId, RefreshToken};
use dashmap::DashMap;
use http::HeaderValue;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

mod error;
mod events;
mod operators;
mod policy;
mod refresh;
mod refresher;
mod removal;
mod shared;
pub use error::{BadAnswer, Misconfigured, StoreFailure, TokenError, Unavailable};
pub use events::StoreEventsService;
pub use operators::MerchantStatus;
pub use policy::{token_times, Backoff, TokenPolicy, TokenTimes, MAX_STALE_MARGIN};
pub use refresher::RefresherService;
pub use removal::{Removal, RevocationOutcome, RevokerService, REMOVING_RESCAN};

/// A cached access token, ready to be put on a request.
pub struct CachedToken {
    /// `Bearer <access token>`, built once, marked sensitive.
    pub bearer: HeaderValue,
    /// Unique per token: what an upstream 401 invalidates.
    pub id: u64,
    pub times: TokenTimes,
    /// Wall-clock expiry, unix milliseconds, for operators (`GET /admin/merchants`) and
    /// to tell which of two replicas' tokens is newer. Not a `SystemTime` (16 bytes): with
    /// this the `Arc` is 128 bytes, one allocator size class below 160 (100,000 tokens).
    pub expires_at_ms: u64,
    /// What the merchant is stored with: a static credential never expires, is never
    /// refreshed, and an upstream 401 for it is passed back (no replay).
    pub kind: CredentialKind,
    /// A `live_` API key: live data only, whatever the caller asks.
    pub live_api_key: bool,
}

impl CachedToken {
    /// The token of a static credential: usable until the merchant changes (a century, for
    /// the timing rules), never scheduled for a refresh.
    fn fixed(credential: &StaticCredential) -> Option<Arc<CachedToken>> {
        let mut bearer =
            HeaderValue::try_from(format!("Bearer {}", credential.token().expose())).ok()?;
        bearer.set_sensitive(true);
        let far = Instant::now() + STATIC_LIFETIME;
        Some(Arc::new(CachedToken {
            bearer,
            id: 0,
            times: TokenTimes {
                refresh_at: far,
                usable_until: far,
                background_at: far,
            },
            expires_at_ms: shared::unix_ms(SystemTime::now() + STATIC_LIFETIME),
            kind: credential.kind(),
            live_api_key: credential.is_live_api_key(),
        }))
    }

    /// Whether the gateway refreshes this token (OAuth), or uses it as it is.
    pub fn is_static(&self) -> bool {
        self.kind != CredentialKind::Oauth
    }
}

/// How long the timing rules take a static credential to last (it never expires).
const STATIC_LIFETIME: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 86_400);

impl fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedToken")
            .field("id", &self.id)
            .field("bearer", &"***")
            .finish()
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
/// code. Slots sit inline in the map's table, one per merchant: the rare states (failing
/// refreshes, a refresh in flight) are boxed and the last refresh is two words, so a slot is
/// 80 bytes, not 176 (100,000 merchants: a 12.7 MB table instead of 25 MB).
struct Slot {
    refresh_token: RefreshToken,
    token: Option<Arc<CachedToken>>,
    /// Set while refreshes fail (rare): the count, the backoff, the error to repeat.
    failing: Option<Box<Failing>>,
    inflight: Option<Box<Inflight>>,
    /// When (unix seconds) and how the last refresh ended, for operators.
    last_refresh: Option<(u64, Outcome)>,
    /// Unix ms expiry of the newest token this slot held: a token shared by another replica
    /// is used only if newer (the one held may have been rejected with a 401).
    seen_expiry_ms: u64,
    revoked: bool,
}

/// A merchant whose refreshes fail.
struct Failing {
    /// Consecutive failed refreshes (the backoff grows with them).
    count: u32,
    /// Until when callers get `error` at once; `None` once an operator lifted the backoff
    /// (the count stays, so a next failure backs off longer).
    until: Option<Instant>,
    error: TokenError,
}

/// How a merchant's last refresh ended (`GET /admin/merchants`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Failed,
    InvalidGrant,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::InvalidGrant => "invalid_grant",
        }
    }

    /// This outcome, now.
    fn now(self) -> Option<(u64, Outcome)> {
        Some((crate::store::unix_now(), self))
    }
}

impl Slot {
    fn new(stored: StoredMerchant) -> Slot {
        // Its shape was checked when it was stored: a static credential is a header value.
        let token = stored
            .static_credential
            .as_ref()
            .and_then(CachedToken::fixed);
        Slot {
            refresh_token: stored.refresh_token,
            token,
            failing: None,
            inflight: None,
            last_refresh: None,
            seen_expiry_ms: 0,
            revoked: stored.revoked,
        }
    }

    /// Whether this slot already holds the stored authorization (or static credential).
    fn holds(&self, stored: &StoredMerchant) -> bool {
        let fixed = self.token.as_ref().filter(|t| t.is_static());
        match (&stored.static_credential, fixed) {
            (None, None) => {
                self.refresh_token == stored.refresh_token && self.revoked == stored.revoked
            }
            (Some(c), Some(t)) => {
                t.bearer.as_bytes().strip_prefix(b"Bearer ") == Some(c.token().expose().as_bytes())
            }
            _ => false,
        }
    }

    /// Until when callers get the last error at once, if they do.
    fn backoff_until(&self) -> Option<Instant> {
        self.failing.as_ref().and_then(|f| f.until)
    }

    fn in_backoff(&self, now: Instant) -> bool {
        self.backoff_until().is_some_and(|u| now < u)
    }
}

/// What [`TokenManager::get`] will do for a merchant, as far as the cache tells without waiting.
pub enum Lookup {
    /// The token is fresh: here it is (a cache hit, counted).
    Fresh(Arc<CachedToken>),
    /// A known merchant whose token needs a refresh (or one is running): `get` will wait.
    Refresh,
    /// Anything else: the merchant is not cached, is revoked or in backoff.
    Other,
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
    /// Revocations to retry (merchants `removing` in the store): when, and failures so far.
    /// A std mutex: locked in sync code only.
    removals: Mutex<std::collections::BTreeMap<MerchantId, removal::Pending>>,
    removals_changed: Notify,
    /// Every stored merchant was loaded once ([`TokenManager::load`]); `/readyz` waits for it.
    loaded: AtomicBool,
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
                removals: Mutex::new(Default::default()),
                removals_changed: Notify::new(),
                loaded: AtomicBool::new(false),
            }),
        }
    }

    /// Loads every stored merchant into the cache (without access tokens); merchants already
    /// cached (loaded on demand meanwhile) are kept as they are; a merchant being removed is
    /// not served, its revocation is retried.
    pub async fn load(&self) -> Result<usize, crate::store::StoreError> {
        let all = self.inner.store.load_all().await;
        self.count_store("load", all.is_ok());
        let all = all?;
        let n = all.len();
        for (id, stored) in all {
            if stored.removing {
                self.resume_removal(&id);
            } else {
                self.inner
                    .slots
                    .entry(id)
                    .or_insert_with(|| Slot::new(stored));
            }
        }
        self.inner.loaded.store(true, Ordering::Relaxed);
        // What the load freed (the store's copies of every merchant) goes back to the OS.
        crate::memory::release_freed();
        self.inner
            .metrics
            .merchants
            .set(self.inner.slots.len() as i64);
        Ok(n)
    }

    /// Whether [`load`](Self::load) has succeeded once.
    pub fn loaded(&self) -> bool {
        self.inner.loaded.load(Ordering::Relaxed)
    }

    fn count_store(&self, op: &str, ok: bool) {
        self.count_store_outcome(op, if ok { "ok" } else { "error" });
    }

    fn count_store_outcome(&self, op: &str, outcome: &str) {
        let m = &self.inner.metrics;
        m.store_operations.with_label_values(&[op, outcome]).inc();
        m.store_up.set(i64::from(outcome == "ok"));
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

    /// Whether [`get`](Self::get) has the merchant's token at hand, will wait for a refresh of a
    /// known merchant, or decides otherwise (a store read, a revoked merchant, a backoff): the
    /// proxy opens an upstream connection while a refresh runs, and only then.
    pub fn lookup(&self, merchant: &MerchantId) -> Lookup {
        if let Some(token) = self.cached(merchant) {
            return Lookup::Fresh(token);
        }
        let now = Instant::now();
        match self.inner.slots.get(merchant) {
            Some(slot) if !slot.revoked && !slot.in_backoff(now) => Lookup::Refresh,
            _ => Lookup::Other,
        }
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
            Ok(Some(stored)) if !stored.revoked && !stored.removing => {
                self.inner.slots.insert(merchant.clone(), Slot::new(stored));
                true
            }
            Ok(None) | Ok(Some(StoredMerchant { removing: true, .. })) => {
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
        if let Some(Failing {
            until: Some(until),
            error,
            ..
        }) = slot.failing.as_deref()
        {
            if now < *until {
                return Step::Fail(error.with_retry_after(*until - now));
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
            Ok(Err(_)) => Err(TokenError::unavailable(Unavailable::RefreshLost)),
            Err(_) => Err(TokenError::unavailable(Unavailable::WaitedTooLong(timeout))),
        }
    }

    /// Reads one merchant from the store into the cache (another process may have added it).
    async fn load_one(&self, merchant: &MerchantId) -> Result<(), TokenError> {
        let found = self.inner.store.get(merchant).await;
        self.count_store("load", found.is_ok());
        match found {
            Ok(Some(stored)) if stored.removing => {
                self.resume_removal(merchant);
                Err(TokenError::UnknownMerchant)
            }
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
            Err(e) => Err(e.into()),
        }
    }

    /// Queues a background refresh. `merchant` is the cache's own key (from the slot's
    /// guard): an entry waits about an hour, and a caller's copy of the id (parsed from its
    /// request header) would keep a second allocation per merchant alive that long.
    fn schedule(&self, at: Instant, token_id: u64, merchant: MerchantId) {
        self.inner
            .schedule
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Reverse((at, token_id, merchant)));
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

#[cfg(test)]
#[path = "tokens_tests.rs"]
mod tests;
