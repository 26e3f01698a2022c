//! Unit tests of the token lifecycle rules on a paused tokio clock, with a scripted token
//! endpoint and an in-memory store (the HTTP client and the file store have their own tests).

use super::*;
use crate::oauth::{self, Grant, OAuthError};
use crate::store::StoreError;
use crate::types::AccessToken;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A scripted answer: (access token, rotated refresh token, lifetime in seconds) or an error.
type Answer = Result<(String, Option<String>, u64), OAuthError>;

/// Answers token calls from a script (then repeats the last answer), after `delay`.
struct Scripted {
    answers: Mutex<VecDeque<Answer>>,
    calls: AtomicUsize,
    delay: Duration,
}

impl Scripted {
    fn new(delay: Duration, answers: Vec<Answer>) -> Arc<Self> {
        Arc::new(Scripted {
            answers: Mutex::new(answers.into()),
            calls: AtomicUsize::new(0),
            delay,
        })
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn ok(access: &str, lifetime: u64) -> Answer {
    Ok((access.into(), None, lifetime))
}

#[async_trait::async_trait]
impl TokenEndpoint for Scripted {
    async fn exchange(&self, _grant: Grant<'_>) -> Result<crate::oauth::TokenSet, OAuthError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        let answer = {
            let mut q = self.answers.lock().unwrap();
            if q.len() > 1 {
                q.pop_front().unwrap()
            } else {
                q.front().cloned().expect("script not empty")
            }
        };
        answer.map(|(access, refresh, secs)| crate::oauth::TokenSet {
            access_token: AccessToken::new(access),
            refresh_token: refresh.map(RefreshToken::new),
            expires_in: Duration::from_secs(secs),
        })
    }
}

#[derive(Default)]
struct MemoryStore {
    map: Mutex<HashMap<MerchantId, StoredMerchant>>,
}

#[async_trait::async_trait]
impl CredentialStore for MemoryStore {
    async fn load_all(&self) -> Result<Vec<(MerchantId, StoredMerchant)>, StoreError> {
        Ok(self
            .map
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
    async fn get(&self, id: &MerchantId) -> Result<Option<StoredMerchant>, StoreError> {
        Ok(self.map.lock().unwrap().get(id).cloned())
    }
    async fn put(&self, id: &MerchantId, m: &StoredMerchant) -> Result<(), StoreError> {
        self.map.lock().unwrap().insert(id.clone(), m.clone());
        Ok(())
    }
    async fn rotate(&self, id: &MerchantId, t: &RefreshToken) -> Result<bool, StoreError> {
        Ok(self
            .map
            .lock()
            .unwrap()
            .get_mut(id)
            .map(|m| m.refresh_token = t.clone())
            .is_some())
    }
    async fn mark_revoked(&self, id: &MerchantId, t: &RefreshToken) -> Result<(), StoreError> {
        if let Some(m) = self.map.lock().unwrap().get_mut(id) {
            if m.refresh_token == *t {
                m.revoked = true;
            }
        }
        Ok(())
    }
    async fn remove(&self, id: &MerchantId) -> Result<bool, StoreError> {
        Ok(self.map.lock().unwrap().remove(id).is_some())
    }
}

fn policy() -> TokenPolicy {
    TokenPolicy {
        refresh_before_expiry: Duration::from_secs(300),
        waiter_timeout: Duration::from_secs(6),
        stuck_leader_after: Duration::from_secs(15),
        store_lock_ttl: Duration::from_secs(6),
        backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)).unwrap(),
    }
}

fn m1() -> MerchantId {
    MerchantId::parse("m1").unwrap()
}

async fn manager(endpoint: Arc<Scripted>) -> (TokenManager, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::default());
    store
        .put(&m1(), &StoredMerchant::new(RefreshToken::new("refresh_1")))
        .await
        .unwrap();
    let tm = TokenManager::new(
        endpoint,
        store.clone(),
        policy(),
        Arc::new(Metrics::default()),
    );
    tm.load().await.unwrap();
    (tm, store)
}

fn bearer(t: &CachedToken) -> &str {
    t.bearer.to_str().unwrap()
}

/// Every merchant holds one: with its two reference counts, a token fits the allocator's
/// 128-byte size class (the next one is 160 bytes: 3 MiB more at 100,000 merchants).
#[test]
fn a_cached_token_with_its_counts_fits_128_bytes() {
    let size = std::mem::size_of::<CachedToken>();
    assert!(
        size + 2 * std::mem::size_of::<usize>() <= 128,
        "{size} bytes"
    );
}

/// Slots sit inline in the map's table, one per merchant, the rare states boxed.
#[test]
fn a_slot_is_80_bytes() {
    assert!(
        std::mem::size_of::<Slot>() <= 80,
        "{}",
        std::mem::size_of::<Slot>()
    );
}

#[test]
fn skew_is_capped_at_half_the_lifetime() {
    let t0 = Instant::now();
    let short = token_times(t0, Duration::from_secs(2), Duration::from_secs(300), 1.0);
    assert_eq!(short.refresh_at, t0 + Duration::from_secs(1));
    assert_eq!(short.usable_until, t0 + Duration::from_millis(1500));
    assert_eq!(short.background_at, t0 + Duration::from_millis(500));
    let hour = token_times(t0, Duration::from_secs(3600), Duration::from_secs(300), 0.0);
    assert_eq!(hour.refresh_at, t0 + Duration::from_secs(3300));
    assert_eq!(hour.usable_until, t0 + Duration::from_secs(3570));
    assert_eq!(hour.background_at, hour.refresh_at);
}

#[test]
fn jitter_spreads_background_refreshes_over_half_the_window() {
    let t0 = Instant::now();
    let at =
        |u| token_times(t0, Duration::from_secs(3600), Duration::from_secs(300), u).background_at;
    assert_eq!(at(0.0) - at(1.0), Duration::from_secs(150));
    assert!(at(0.5) < at(0.0) && at(0.5) > at(1.0));
}

#[test]
fn backoff_doubles_with_equal_jitter_and_is_capped() {
    let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60)).unwrap();
    assert_eq!(b.delay(1, 0.0), Duration::from_millis(500));
    assert_eq!(b.delay(1, 1.0), Duration::from_secs(1));
    assert_eq!(b.delay(3, 1.0), Duration::from_secs(4));
    assert_eq!(b.delay(3, 0.0), Duration::from_secs(2));
    assert_eq!(b.delay(40, 1.0), Duration::from_secs(60));
    assert!(Backoff::new(Duration::ZERO, Duration::from_secs(1)).is_err());
    assert!(Backoff::new(Duration::from_secs(2), Duration::from_secs(1)).is_err());
}

#[tokio::test(start_paused = true)]
async fn concurrent_callers_share_one_refresh() {
    let ep = Scripted::new(Duration::from_millis(300), vec![ok("access_a", 3600)]);
    let (tm, _) = manager(ep.clone()).await;
    let calls: Vec<_> = (0..100)
        .map(|_| {
            let tm = tm.clone();
            tokio::spawn(async move { tm.get(&m1()).await })
        })
        .collect();
    for c in calls {
        assert_eq!(bearer(&c.await.unwrap().unwrap()), "Bearer access_a");
    }
    assert_eq!(ep.calls(), 1);
    // Cached now: no further call.
    tm.get(&m1()).await.unwrap();
    assert_eq!(ep.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn stale_tokens_are_served_while_one_refresh_runs_then_expire() {
    let ep = Scripted::new(
        Duration::from_millis(100),
        vec![ok("access_a", 2), ok("access_b", 2), ok("access_c", 2)],
    );
    let (tm, _) = manager(ep.clone()).await;
    assert_eq!(bearer(&tm.get(&m1()).await.unwrap()), "Bearer access_a");
    // Fresh for lifetime - min(300 s, 1 s) = 1 s after the call started (100 ms ago).
    tokio::time::advance(Duration::from_millis(950)).await;
    assert_eq!(bearer(&tm.get(&m1()).await.unwrap()), "Bearer access_a");
    assert_eq!(ep.calls(), 1);
    // Stale (refresh_at passed, usable until 1.5 s): served, and exactly one refresh starts.
    tokio::time::advance(Duration::from_millis(100)).await;
    for _ in 0..10 {
        assert_eq!(bearer(&tm.get(&m1()).await.unwrap()), "Bearer access_a");
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(ep.calls(), 2);
    assert_eq!(bearer(&tm.get(&m1()).await.unwrap()), "Bearer access_b");
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_with_retry_after_then_recover() {
    let ep = Scripted::new(
        Duration::ZERO,
        vec![
            Err(OAuthError::Unavailable(oauth::Unavailable::Status(503))),
            Err(OAuthError::Unavailable(oauth::Unavailable::Status(503))),
            ok("access_ok", 3600),
        ],
    );
    let (tm, _) = manager(ep.clone()).await;
    let Err(TokenError::Unavailable { retry_after, .. }) = tm.get(&m1()).await else {
        panic!("expected unavailable");
    };
    assert!(retry_after >= Duration::from_millis(500) && retry_after <= Duration::from_secs(1));
    // During the backoff: answered at once, no call.
    for _ in 0..5 {
        assert!(matches!(
            tm.get(&m1()).await,
            Err(TokenError::Unavailable { .. })
        ));
    }
    assert_eq!(ep.calls(), 1);
    tokio::time::advance(retry_after).await;
    let Err(TokenError::Unavailable {
        retry_after: second,
        ..
    }) = tm.get(&m1()).await
    else {
        panic!("expected unavailable");
    };
    assert_eq!(ep.calls(), 2);
    assert!(
        second >= Duration::from_secs(1),
        "second backoff doubles: {second:?}"
    );
    tokio::time::advance(second).await;
    assert_eq!(bearer(&tm.get(&m1()).await.unwrap()), "Bearer access_ok");
    assert_eq!(ep.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn invalid_grant_revokes_for_good() {
    let ep = Scripted::new(
        Duration::ZERO,
        vec![Err(OAuthError::InvalidGrant("gone".into()))],
    );
    let (tm, store) = manager(ep.clone()).await;
    assert_eq!(tm.get(&m1()).await.unwrap_err(), TokenError::Revoked);
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert_eq!(tm.get(&m1()).await.unwrap_err(), TokenError::Revoked);
    assert_eq!(ep.calls(), 1);
    assert!(store.get(&m1()).await.unwrap().unwrap().revoked);
    assert_eq!(tm.statuses()[0].state, "revoked");
    // A new authorization brings the merchant back.
    tm.add_refresh_token(&m1(), RefreshToken::new("refresh_2"))
        .await
        .unwrap();
    assert!(!store.get(&m1()).await.unwrap().unwrap().revoked);
}

#[tokio::test(start_paused = true)]
async fn rotated_refresh_token_is_stored_before_the_access_token_is_used() {
    let ep = Scripted::new(
        Duration::ZERO,
        vec![Ok((
            "access_r".into(),
            Some("refresh_rotated".into()),
            3600,
        ))],
    );
    let (tm, store) = manager(ep.clone()).await;
    tm.get(&m1()).await.unwrap();
    let stored = store.get(&m1()).await.unwrap().unwrap();
    assert_eq!(stored.refresh_token.expose(), "refresh_rotated");
}

#[tokio::test(start_paused = true)]
async fn an_upstream_401_invalidates_only_the_token_it_used() {
    let ep = Scripted::new(
        Duration::ZERO,
        vec![ok("access_a", 3600), ok("access_b", 3600)],
    );
    let (tm, _) = manager(ep.clone()).await;
    let a = tm.get(&m1()).await.unwrap();
    assert!(tm.invalidate(&m1(), a.id));
    let b = tm.get(&m1()).await.unwrap();
    assert_eq!(bearer(&b), "Bearer access_b");
    // A late 401 for the old token leaves the new one alone.
    assert!(!tm.invalidate(&m1(), a.id));
    assert_eq!(tm.get(&m1()).await.unwrap().id, b.id);
    assert_eq!(ep.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn waiters_time_out_and_a_stuck_leader_is_replaced() {
    let ep = Scripted::new(Duration::from_secs(3600), vec![ok("access_slow", 3600)]);
    let (tm, _) = manager(ep.clone()).await;
    let started = Instant::now();
    let err = tm.get(&m1()).await.unwrap_err();
    assert!(matches!(err, TokenError::Unavailable { .. }), "{err:?}");
    assert_eq!(started.elapsed(), policy().waiter_timeout);
    // Still within the stuck bound: joins the same refresh.
    let _ = tm.get(&m1()).await;
    assert_eq!(ep.calls(), 1);
    // Past the stuck bound: a new refresh starts.
    tokio::time::advance(policy().stuck_leader_after).await;
    let _ = tm.get(&m1()).await;
    assert_eq!(ep.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn background_refresher_refreshes_before_the_window() {
    let ep = Scripted::new(
        Duration::ZERO,
        vec![ok("access_a", 3600), ok("access_b", 3600)],
    );
    let (tm, _) = manager(ep.clone()).await;
    tm.get(&m1()).await.unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let service = RefresherService { tokens: tm.clone() };
    let task = tokio::spawn(async move {
        pingora::services::background::BackgroundService::start(&service, rx).await
    });
    // At most 3300 s (window opens); jitter brings it up to 150 s earlier.
    tokio::time::sleep(Duration::from_secs(3140)).await;
    assert_eq!(ep.calls(), 1);
    tokio::time::sleep(Duration::from_secs(161)).await;
    assert_eq!(ep.calls(), 2);
    assert_eq!(bearer(&tm.get(&m1()).await.unwrap()), "Bearer access_b");
    tx.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn unknown_merchants_are_looked_up_in_the_store() {
    let ep = Scripted::new(Duration::ZERO, vec![ok("access_x", 3600)]);
    let (tm, store) = manager(ep.clone()).await;
    let m2 = MerchantId::parse("m2").unwrap();
    assert_eq!(tm.get(&m2).await.unwrap_err(), TokenError::UnknownMerchant);
    // Added by another process: found without a restart.
    store
        .put(&m2, &StoredMerchant::new(RefreshToken::new("refresh_m2")))
        .await
        .unwrap();
    assert!(tm.get(&m2).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_new_authorization_stored_elsewhere_lifts_a_revocation() {
    let ep = Scripted::new(
        Duration::ZERO,
        vec![
            Err(OAuthError::InvalidGrant("gone".into())),
            ok("access_new", 3600),
        ],
    );
    let (tm, store) = manager(ep.clone()).await;
    assert_eq!(tm.get(&m1()).await.unwrap_err(), TokenError::Revoked);
    // Another process (the CLI) stores a new authorization: no restart needed.
    store
        .put(
            &m1(),
            &StoredMerchant::new(RefreshToken::new("refresh_new")),
        )
        .await
        .unwrap();
    assert_eq!(bearer(&tm.get(&m1()).await.unwrap()), "Bearer access_new");
    assert_eq!(ep.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_merchant_removed_elsewhere_is_dropped_at_its_next_refresh() {
    let ep = Scripted::new(Duration::ZERO, vec![ok("access_a", 3600)]);
    let (tm, store) = manager(ep.clone()).await;
    let a = tm.get(&m1()).await.unwrap();
    store.remove(&m1()).await.unwrap();
    tm.invalidate(&m1(), a.id);
    assert_eq!(
        tm.get(&m1()).await.unwrap_err(),
        TokenError::UnknownMerchant
    );
    assert_eq!(ep.calls(), 1);
    assert!(tm.statuses().is_empty());
}

#[tokio::test(start_paused = true)]
async fn refresh_now_bypasses_the_backoff_and_keeps_serving_the_old_token() {
    let ep = Scripted::new(
        Duration::from_millis(100),
        vec![ok("access_a", 3600), ok("access_b", 3600)],
    );
    let (tm, _) = manager(ep.clone()).await;
    let a = tm.get(&m1()).await.unwrap();
    let forced = {
        let tm = tm.clone();
        tokio::spawn(async move { tm.refresh_now(&m1()).await })
    };
    tokio::task::yield_now().await;
    // While the forced refresh runs, requests still get the current token at once.
    assert_eq!(tm.get(&m1()).await.unwrap().id, a.id);
    assert_eq!(tm.status(&m1()).unwrap().state, "refreshing");
    assert_eq!(bearer(&forced.await.unwrap().unwrap()), "Bearer access_b");
    assert_eq!(bearer(&tm.get(&m1()).await.unwrap()), "Bearer access_b");
    let unknown = MerchantId::parse("nobody").unwrap();
    assert_eq!(
        tm.refresh_now(&unknown).await.unwrap_err(),
        TokenError::UnknownMerchant
    );
}
