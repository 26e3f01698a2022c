//! Cost of what the gateway does per request, each against a baseline in the same run:
//! - a cache-hit token lookup (`TokenManager::get`), alone and with the upstream header
//!   rewrite (`proxy::rewrite_upstream_headers`), vs a bare `DashMap::get` + `Arc` clone;
//! - the same lookup with 1,000 vs 100,000 merchants (ids visited in a shuffled order, so the
//!   large cache pays its cache misses as real traffic would);
//! - merchant-header validation (`MerchantId::parse_bytes`) vs the `Arc<str>` it allocates;
//! - token-response parsing (`oauth::parse_token_response`) vs a bare JSON scan;
//! - single-flight: 1, 100 and 10,000 concurrent waiters on one refresh (token endpoint
//!   answering after 1 ms) vs as many tasks that just sleep 1 ms.
//!
//! Run: `cargo bench --bench hot_path` (one group: `cargo bench --bench hot_path -- single_flight`)

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use dashmap::DashMap;
use http::{HeaderName, HeaderValue};
use mollie_gateway::metrics::Metrics;
use mollie_gateway::oauth::{parse_token_response, Grant, OAuthError, TokenEndpoint, TokenSet};
use mollie_gateway::proxy::rewrite_upstream_headers;
use mollie_gateway::store::{CredentialStore, StoreError, StoredMerchant};
use mollie_gateway::tokens::{Backoff, CachedToken, TokenError, TokenManager, TokenPolicy};
use mollie_gateway::types::{AccessToken, MerchantId, RefreshToken};
use pingora::http::RequestHeader;
use std::collections::HashMap;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

/// A credential store in memory.
#[derive(Default)]
struct MemStore(Mutex<HashMap<MerchantId, StoredMerchant>>);

#[async_trait::async_trait]
impl CredentialStore for MemStore {
    async fn load_all(&self) -> Result<Vec<(MerchantId, StoredMerchant)>, StoreError> {
        Ok(self.0.lock().unwrap().clone().into_iter().collect())
    }
    async fn get(&self, id: &MerchantId) -> Result<Option<StoredMerchant>, StoreError> {
        Ok(self.0.lock().unwrap().get(id).cloned())
    }
    async fn put(&self, id: &MerchantId, m: &StoredMerchant) -> Result<(), StoreError> {
        self.0.lock().unwrap().insert(id.clone(), m.clone());
        Ok(())
    }
    async fn rotate(&self, id: &MerchantId, t: &RefreshToken) -> Result<bool, StoreError> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .get_mut(id)
            .map(|m| m.refresh_token = t.clone())
            .is_some())
    }
    async fn mark_revoked(&self, id: &MerchantId, _: &RefreshToken) -> Result<(), StoreError> {
        if let Some(m) = self.0.lock().unwrap().get_mut(id) {
            m.revoked = true;
        }
        Ok(())
    }
    async fn remove(&self, id: &MerchantId) -> Result<bool, StoreError> {
        Ok(self.0.lock().unwrap().remove(id).is_some())
    }
}

/// A token endpoint that answers after `delay`, counting its calls.
struct Endpoint {
    delay: Duration,
    calls: AtomicU64,
}

#[async_trait::async_trait]
impl TokenEndpoint for Endpoint {
    async fn exchange(&self, _grant: Grant<'_>) -> Result<TokenSet, OAuthError> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        Ok(TokenSet {
            access_token: AccessToken::new(format!("access_{n:032}")),
            refresh_token: None,
            expires_in: Duration::from_secs(3600),
        })
    }
}

fn merchant(i: usize) -> MerchantId {
    MerchantId::parse(&format!("m{i:06}")).unwrap()
}

/// A token manager over `n` merchants, every token already cached; ids in shuffled order.
fn manager(
    rt: &Runtime,
    n: usize,
    delay: Duration,
) -> (TokenManager, Vec<MerchantId>, Arc<Endpoint>) {
    let store = MemStore::default();
    let mut ids: Vec<MerchantId> = (1..=n).map(merchant).collect();
    for id in &ids {
        let stored = StoredMerchant::new(RefreshToken::new(format!("refresh_{id}")));
        store.0.lock().unwrap().insert(id.clone(), stored);
    }
    let endpoint = Arc::new(Endpoint {
        delay,
        calls: AtomicU64::new(0),
    });
    let policy = TokenPolicy {
        refresh_before_expiry: Duration::from_secs(300),
        waiter_timeout: Duration::from_secs(6),
        stuck_leader_after: Duration::from_secs(15),
        store_lock_ttl: Duration::from_secs(6),
        backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)).unwrap(),
    };
    let metrics = Arc::new(Metrics::default());
    let tm = TokenManager::new(endpoint.clone(), Arc::new(store), policy, metrics);
    rt.block_on(async {
        tm.load().await.unwrap();
        for id in &ids {
            tm.get(id).await.unwrap();
        }
    });
    fastrand::seed(7);
    fastrand::shuffle(&mut ids);
    (tm, ids, endpoint)
}

/// Polls a future once: the cache-hit path must complete without waiting.
fn ready<T>(fut: impl Future<Output = T>) -> T {
    match pin!(fut).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the cache-hit path must not wait"),
    }
}

/// Cycles through `ids`, one per call.
fn cycle<'a>(ids: &'a [MerchantId]) -> impl FnMut() -> &'a MerchantId + 'a {
    let mut i = 0;
    move || {
        i = if i + 1 == ids.len() { 0 } else { i + 1 };
        &ids[i]
    }
}

/// The bare baseline: a `DashMap` of the same ids to a bearer `HeaderValue`.
fn bare_map(ids: &[MerchantId]) -> DashMap<MerchantId, Arc<HeaderValue>> {
    ids.iter()
        .map(|id| {
            (
                id.clone(),
                Arc::new(HeaderValue::from_static("Bearer access_x")),
            )
        })
        .collect()
}

/// A request as an SDK sends it through the gateway.
fn sdk_request() -> RequestHeader {
    let mut req = RequestHeader::build("GET", b"/v2/payments/tr_WDqYK6vllg", None).unwrap();
    for (k, v) in [
        ("Host", "mollie-gateway:8080"),
        ("User-Agent", "Mollie/4.0.0 Python/3.12.1 OS/Linux"),
        ("Accept", "application/json"),
        (
            "Authorization",
            "Bearer live_gatewaygatewaygatewaygatewayga",
        ),
        ("X-Merchant-Id", "m000042"),
        ("Idempotency-Key", "2f9b6a2e-8d0b-4c1e-9a51-0b7f3c2d1e4a"),
    ] {
        req.append_header(k, v).unwrap();
    }
    req
}

fn lookup(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (tm, ids, _) = manager(&rt, 1_000, Duration::ZERO);
    let map = bare_map(&ids);
    let header = HeaderName::from_static("x-merchant-id");
    let host = HeaderValue::from_static("api.mollie.com");
    let mut g = c.benchmark_group("lookup+rewrite (1,000 merchants)");
    let mut next = cycle(&ids);
    g.bench_function("DashMap::get + Arc clone (baseline)", |b| {
        b.iter(|| map.get(next()).map(|v| v.value().clone()))
    });
    let mut next = cycle(&ids);
    g.bench_function("TokenManager::get (cache hit)", |b| {
        b.iter(|| ready(tm.get(next())).unwrap())
    });
    let mut next = cycle(&ids);
    g.bench_function("TokenManager::get + rewrite_upstream_headers", |b| {
        b.iter_batched_ref(
            sdk_request,
            |req| {
                let token: Arc<CachedToken> = ready(tm.get(next())).unwrap();
                rewrite_upstream_headers(req, &header, &token.bearer, &host, false).unwrap();
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn scale(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("lookup scale");
    for n in [1_000usize, 100_000] {
        let (tm, ids, _) = manager(&rt, n, Duration::ZERO);
        let map = bare_map(&ids);
        let mut next = cycle(&ids);
        g.bench_function(format!("DashMap::get, {n} merchants (baseline)"), |b| {
            b.iter(|| map.get(next()).map(|v| v.value().clone()))
        });
        let mut next = cycle(&ids);
        g.bench_function(format!("TokenManager::get, {n} merchants"), |b| {
            b.iter(|| ready(tm.get(next())).unwrap())
        });
    }
    g.finish();
}

fn merchant_header(c: &mut Criterion) {
    let mut g = c.benchmark_group("merchant_header");
    let long = "o".repeat(128);
    for (name, raw) in [("7 B", "m000042"), ("128 B", long.as_str())] {
        g.bench_function(format!("Arc<str>::from, {name} (baseline)"), |b| {
            b.iter(|| Arc::<str>::from(black_box(raw)))
        });
        g.bench_function(format!("MerchantId::parse_bytes, {name}"), |b| {
            b.iter(|| MerchantId::parse_bytes(black_box(raw.as_bytes())).unwrap())
        });
    }
    g.finish();
}

fn token_response(c: &mut Criterion) {
    let body = br#"{"access_token":"access_46EUJ6x8jFJZZeAvhNH4JVey6qVpqR","refresh_token":"refresh_FS4xc3BgDQe4B9ZWXNBK9qtAp9Ax6v","expires_in":3600,"token_type":"bearer","scope":"payments.read payments.write organizations.read"}"#;
    let mut g = c.benchmark_group("token_response");
    g.bench_function("serde_json IgnoredAny scan (baseline)", |b| {
        b.iter(|| serde_json::from_slice::<serde::de::IgnoredAny>(black_box(body)).unwrap())
    });
    g.bench_function("parse_token_response", |b| {
        b.iter(|| parse_token_response(200, black_box(body)).unwrap())
    });
    g.finish();
}

fn single_flight(c: &mut Criterion) {
    const DELAY: Duration = Duration::from_millis(1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (tm, ids, endpoint) = manager(&rt, 1, DELAY);
    let m = ids[0].clone();
    let mut g = c.benchmark_group("single_flight (token endpoint: 1 ms)");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    for n in [1usize, 100, 10_000] {
        g.bench_function(format!("{n} tasks sleeping 1 ms (baseline)"), |b| {
            b.iter_custom(|iters| {
                let t0 = Instant::now();
                for _ in 0..iters {
                    rt.block_on(async {
                        let mut set = tokio::task::JoinSet::new();
                        for _ in 0..n {
                            set.spawn(tokio::time::sleep(DELAY));
                        }
                        set.join_all().await;
                    });
                }
                t0.elapsed()
            })
        });
        g.bench_function(format!("{n} waiters on one refresh"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let current = rt.block_on(tm.get(&m)).unwrap();
                    tm.invalidate(&m, current.id);
                    let calls = endpoint.calls.load(Ordering::Relaxed);
                    let t0 = Instant::now();
                    let got: Vec<Result<Arc<CachedToken>, TokenError>> = rt.block_on(async {
                        let mut set = tokio::task::JoinSet::new();
                        for _ in 0..n {
                            let (tm, m) = (tm.clone(), m.clone());
                            set.spawn(async move { tm.get(&m).await });
                        }
                        set.join_all().await
                    });
                    total += t0.elapsed();
                    assert!(got.iter().all(Result::is_ok));
                    assert_eq!(
                        endpoint.calls.load(Ordering::Relaxed),
                        calls + 1,
                        "single flight"
                    );
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    lookup,
    scale,
    merchant_header,
    token_response,
    single_flight
);
criterion_main!(benches);
