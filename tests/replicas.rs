//! Several gateway processes on one Redis (`store.backend = "redis"`) in front of one fake
//! Mollie: one token call per merchant across replicas, a token fetched by one serves the
//! others, a lock holder killed mid-refresh, and a start without Redis.

mod support;

use std::time::{Duration, Instant};
use support::fake_mollie::FakeMollie;
use support::redis::Redis;
use support::{client, Gateway, GatewayBuilder};

fn replica(fake: &FakeMollie, url: &str, env: &[(&str, &str)]) -> Gateway {
    let mut b = GatewayBuilder::new(fake)
        .env("STORE__BACKEND", "redis")
        .env("STORE__REDIS_URL", url)
        .env("STORE__KEY_PREFIX", "gw:");
    for (k, v) in env {
        b = b.env(k, *v);
    }
    b.prepare()
}

async fn status_of(gw: &Gateway) -> u16 {
    let sent = client()
        .get(format!("{}/v2/echo/payments", gw.base_url()))
        .header("X-Merchant-Id", "m1")
        .send()
        .await;
    sent.map(|r| r.status().as_u16()).unwrap_or(0)
}

/// Two replicas on one Redis, m1 onboarded through the first one's CLI.
fn two_replicas(fake: &FakeMollie, redis: &Redis, env: &[(&str, &str)]) -> (Gateway, Gateway) {
    let mut a = replica(fake, &redis.url(), env);
    let mut b = replica(fake, &redis.url(), env);
    a.onboard(fake, "m1");
    a.spawn();
    b.spawn();
    (a, b)
}

#[tokio::test]
async fn concurrent_requests_over_two_replicas_cause_one_token_call() {
    let redis = Redis::start();
    let fake = FakeMollie::start().await;
    fake.set_token_delay(Duration::from_millis(300));
    let (a, b) = two_replicas(&fake, &redis, &[]);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..40 {
        let url = if i % 2 == 0 {
            a.base_url()
        } else {
            b.base_url()
        };
        set.spawn(async move {
            let sent = client()
                .get(format!("{url}/v2/echo/payments"))
                .header("X-Merchant-Id", "m1")
                .send()
                .await;
            sent.map(|r| r.status().as_u16()).unwrap_or(0)
        });
    }
    while let Some(status) = set.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    assert_eq!(
        fake.token_calls_for("m1"),
        1,
        "one token call across replicas"
    );
}

#[tokio::test]
async fn a_token_fetched_by_one_replica_serves_the_other() {
    let redis = Redis::start();
    let fake = FakeMollie::start().await;
    let (a, b) = two_replicas(&fake, &redis, &[]);
    assert_eq!(status_of(&a).await, 200);
    assert_eq!(fake.token_calls_for("m1"), 1);
    assert_eq!(status_of(&b).await, 200);
    assert_eq!(fake.token_calls_for("m1"), 1, "replica B used A's token");
    let keys = redis.command("KEYS *");
    let token = fake.current_access_token("m1").unwrap();
    assert!(!keys.contains(&token), "no secret in a key name: {keys}");
}

#[tokio::test]
async fn a_lock_holder_killed_mid_refresh_blocks_no_longer_than_the_lock_ttl() {
    let redis = Redis::start();
    let fake = FakeMollie::start().await;
    // Lock TTL = token timeout + 1 s = 3 s; the token call hangs longer than that.
    let env = [("OAUTH__TOKEN_TIMEOUT_MS", "2000")];
    let (mut a, b) = two_replicas(&fake, &redis, &env);
    fake.set_token_delay(Duration::from_secs(10));
    let url = a.base_url();
    let stuck = tokio::spawn(async move {
        let _ = client()
            .get(format!("{url}/v2/echo/payments"))
            .header("X-Merchant-Id", "m1")
            .send()
            .await;
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while fake.token_calls_for("m1") == 0 {
        assert!(
            Instant::now() < deadline,
            "replica A never called the token endpoint"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.kill9();
    stuck.abort();
    fake.set_token_delay(Duration::ZERO);
    let killed = Instant::now();
    // B answers a clean 503 while the dead holder's lock lives, then 200; never hangs.
    loop {
        let started = Instant::now();
        let status = status_of(&b).await;
        assert!(started.elapsed() < Duration::from_secs(6), "a request hung");
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "B never took over"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        killed.elapsed() >= Duration::from_millis(500),
        "the lock was held"
    );
}

/// `/readyz` once it answers (bounded): status code and body.
async fn readyz(gw: &Gateway) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(resp) = reqwest::get(format!("{}/readyz", gw.admin_url())).await {
            return (resp.status().as_u16(), resp.text().await.unwrap());
        }
        assert!(Instant::now() < deadline, "no /readyz answer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `/readyz` (bounded, 10 s) until its body contains `want`.
async fn readyz_until(gw: &Gateway, want: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = readyz(gw).await;
        if body.contains(want) {
            return (status, body);
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never said {want}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_replica_starts_without_redis_and_is_ready_once_it_loaded_the_store() {
    let fake = FakeMollie::start().await;
    let mut redis = Redis::start();
    let mut gw = replica(&fake, &redis.url(), &[]);
    redis.kill();
    gw.spawn_unready();
    let (status, body) = readyz(&gw).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("redis"), "{body}");
    assert!(!body.contains("redis.sock"), "the URL is not shown: {body}");
    let health = reqwest::get(format!("{}/healthz", gw.admin_url()))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // Redis back (empty): an operator onboards; the replica loads and serves, no restart.
    redis.restart();
    gw.onboard(&fake, "m1");
    assert_eq!(readyz_until(&gw, "\"ready\"").await.0, 200);
    assert_eq!(status_of(&gw).await, 200);
}

#[tokio::test]
async fn redis_down_after_start_is_degraded_and_cached_tokens_serve() {
    let fake = FakeMollie::start().await;
    let mut redis = Redis::start();
    let mut gw = replica(&fake, &redis.url(), &[]);
    gw.onboard(&fake, "m1");
    gw.spawn();
    assert_eq!(status_of(&gw).await, 200);
    redis.kill();
    let (status, body) = readyz_until(&gw, "degraded").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("redis"), "{body}");
    for _ in 0..5 {
        assert_eq!(
            status_of(&gw).await,
            200,
            "a cached token serves without Redis"
        );
    }
    assert_eq!(fake.token_calls_for("m1"), 1);
    assert_eq!(gw.metric("mollie_gateway_store_up").await, 0.0);
    redis.restart();
    assert_eq!(readyz_until(&gw, "\"ready\"").await.0, 200);
    assert_eq!(gw.metric("mollie_gateway_store_up").await, 1.0);
}

#[tokio::test]
async fn with_rotation_no_replica_presents_a_dead_refresh_token() {
    let redis = Redis::start();
    let fake = FakeMollie::start().await;
    fake.set_rotate_refresh_tokens(true);
    fake.set_token_delay(Duration::from_millis(100));
    let (a, b) = two_replicas(&fake, &redis, &[]);
    for round in 1..=3 {
        fake.expire_tokens("m1");
        let mut set = tokio::task::JoinSet::new();
        for i in 0..10 {
            let url = if i % 2 == 0 {
                a.base_url()
            } else {
                b.base_url()
            };
            set.spawn(async move {
                let sent = client()
                    .get(format!("{url}/v2/echo/payments"))
                    .header("X-Merchant-Id", "m1")
                    .send()
                    .await;
                sent.map(|r| r.status().as_u16()).unwrap_or(0)
            });
        }
        while let Some(status) = set.join_next().await {
            assert_eq!(status.unwrap(), 200, "round {round}");
        }
        assert_eq!(
            fake.token_calls_for("m1"),
            round,
            "one token call per expiry"
        );
    }
    let dead =
        r#"mollie_gateway_token_refreshes_total{grant="refresh_token",outcome="invalid_grant"}"#;
    assert_eq!(a.metric(dead).await + b.metric(dead).await, 0.0);
    let stored = redis.command("HGET gw:merchant:m1 data");
    let current = fake.current_refresh_token("m1").unwrap();
    assert!(
        stored.contains(&current),
        "Redis holds the live refresh token"
    );
}

#[tokio::test]
async fn a_removal_on_one_replica_reaches_the_other_within_a_second() {
    let redis = Redis::start();
    let fake = FakeMollie::start().await;
    let admin = "admin-token-for-replica-tests-0123";
    let (a, b) = two_replicas(&fake, &redis, &[("ADMIN__TOKEN", admin)]);
    assert_eq!(status_of(&b).await, 200, "B has m1's token cached");
    let removed = client()
        .delete(format!("{}/admin/merchants/m1", a.admin_url()))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let resp = client()
            .get(format!("{}/v2/echo/payments", b.base_url()))
            .header("X-Merchant-Id", "m1")
            .send()
            .await
            .unwrap();
        let code = resp.headers().get("x-gateway-error").cloned();
        if code.is_some_and(|c| c == "unknown_merchant") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B still serves a removed merchant"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_token_refreshed_after_a_401_on_one_replica_replaces_the_other_ones_at_once() {
    let redis = Redis::start();
    let fake = FakeMollie::start().await;
    let (a, b) = two_replicas(&fake, &redis, &[]);
    assert_eq!(status_of(&a).await, 200);
    assert_eq!(status_of(&b).await, 200, "B took A's token");
    fake.expire_tokens("m1");
    assert_eq!(status_of(&a).await, 200, "A: 401, refresh, replay");
    assert_eq!((fake.api_401s(), fake.token_calls_for("m1")), (1, 2));
    // B hears of A's new token (pub/sub: milliseconds) and drops the dead one, so its next
    // request meets no 401 of its own.
    let new = fake.current_access_token("m1").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status_of(&b).await, 200);
    assert_eq!(fake.api_401s(), 1, "B used the dead token");
    let last = fake.api_requests().pop().unwrap();
    assert_eq!(
        last.header_values("authorization"),
        vec![format!("Bearer {new}")]
    );
    assert_eq!(fake.token_calls_for("m1"), 2, "B made no token call");
}
