//! The Redis store against a real `redis-server`: the same contract as the file store, the
//! compare-and-set, the refresh lock, and the shared access token.

mod support;

use mollie_gateway::store::redis::RedisStore;
use mollie_gateway::store::{unix_now_ms, CredentialStore, SharedToken, StoredMerchant};
use mollie_gateway::types::{AccessToken, MerchantId, RefreshToken};
use std::sync::Arc;
use std::time::Duration;
use support::redis::Redis;

fn id(s: &str) -> MerchantId {
    MerchantId::parse(s).unwrap()
}

fn open(redis: &Redis, prefix: &str) -> Arc<RedisStore> {
    RedisStore::open(
        &redis.url(),
        prefix,
        &redis.dir.path().join("fallback.json"),
    )
    .unwrap()
}

#[tokio::test]
async fn the_store_contract_holds_on_redis() {
    let redis = Redis::start();
    let store = open(&redis, "t:");
    store.check().await.unwrap();
    assert!(store.load_all().await.unwrap().is_empty());
    store
        .put(&id("m1"), &StoredMerchant::new(RefreshToken::new("r1")))
        .await
        .unwrap();
    assert!(store
        .rotate(&id("m1"), &RefreshToken::new("r2"))
        .await
        .unwrap());
    assert!(!store
        .rotate(&id("gone"), &RefreshToken::new("x"))
        .await
        .unwrap());
    // A second handle (another replica, in effect) sees the change.
    let other = open(&redis, "t:");
    let m1 = other.get(&id("m1")).await.unwrap().unwrap();
    assert_eq!(m1.refresh_token.expose(), "r2");
    other
        .put(&id("m2"), &StoredMerchant::new(RefreshToken::new("q")))
        .await
        .unwrap();
    store
        .mark_revoked(&id("m1"), &RefreshToken::new("old"))
        .await
        .unwrap();
    assert!(!store.get(&id("m1")).await.unwrap().unwrap().revoked);
    store
        .mark_revoked(&id("m1"), &RefreshToken::new("r2"))
        .await
        .unwrap();
    let all = other.load_all().await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(all[0].1.revoked);
    let listed = store.list().await.unwrap();
    assert_eq!((listed[0].id.as_str(), listed[0].revoked), ("m1", true));
    assert!(store.remove(&id("m2")).await.unwrap());
    assert!(!store.remove(&id("m2")).await.unwrap());
    assert_eq!(store.load_all().await.unwrap().len(), 1);
    // Another prefix is another store; no secret appears in a key name.
    assert!(open(&redis, "u:").load_all().await.unwrap().is_empty());
    let keys = redis.command("KEYS *");
    assert!(keys.contains("t:merchant:m1"), "{keys}");
    assert!(!keys.contains("r2"), "{keys}");
}

#[tokio::test]
async fn a_write_with_a_stale_version_is_refused() {
    let redis = Redis::start();
    let store = open(&redis, "t:");
    store
        .put(&id("m1"), &StoredMerchant::new(RefreshToken::new("r1")))
        .await
        .unwrap();
    let stale = redis.call(&["HGET", "t:merchant:m1", "version"]);
    let stale = stale.lines().nth(1).unwrap().to_string();
    assert!(store
        .rotate(&id("m1"), &RefreshToken::new("r2"))
        .await
        .unwrap());
    // The store's own compare-and-set, run with the version read before the rotation: refused,
    // and the record keeps the rotation.
    let lua = mollie_gateway::store::redis::CAS_SET_LUA;
    let keys = ["t:merchant:m1", "t:merchants", "t:version"];
    let eval = [
        "EVAL", lua, "3", keys[0], keys[1], keys[2], &stale, "{}", "m1",
    ];
    assert_eq!(redis.call(&eval).trim(), ":0");
    let m1 = store.get(&id("m1")).await.unwrap().unwrap();
    assert_eq!(m1.refresh_token.expose(), "r2");
    // Versions never repeat, even across a remove and a new authorization (no ABA).
    store.remove(&id("m1")).await.unwrap();
    store
        .put(&id("m1"), &StoredMerchant::new(RefreshToken::new("r3")))
        .await
        .unwrap();
    let again = redis.command("HGET t:merchant:m1 version");
    assert!(again.trim().ends_with('3'), "{again}");
}

#[tokio::test]
async fn the_refresh_lock_has_one_owner_and_expires() {
    let redis = Redis::start();
    let (a, b) = (open(&redis, "t:"), open(&redis, "t:"));
    let ttl = Duration::from_millis(600);
    let held = a.lock(&id("m1"), ttl).await.unwrap().expect("free lock");
    assert!(b.lock(&id("m1"), ttl).await.unwrap().is_none());
    // Renewed while held: still taken well past its first TTL.
    tokio::time::sleep(ttl * 2).await;
    assert!(b.lock(&id("m1"), ttl).await.unwrap().is_none());
    drop(held);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let taken = loop {
        if let Some(l) = b.lock(&id("m1"), ttl).await.unwrap() {
            break l;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "released lock never free"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // A holder that vanished without releasing (its store dropped: no renewal, no
    // release... simulated by forgetting the lock) blocks no longer than the TTL.
    std::mem::forget(taken);
    drop(b);
    let deadline = tokio::time::Instant::now() + ttl * 3;
    while a.lock(&id("m1"), ttl).await.unwrap().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead holder's lock never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_shared_access_token_only_moves_forward() {
    let redis = Redis::start();
    let store = open(&redis, "t:");
    let m1 = id("m1");
    assert!(store.shared_token(&m1).await.unwrap().is_none());
    let token = |t: &str, at: u64| SharedToken {
        access_token: AccessToken::new(t),
        expires_at_ms: at,
        lifetime_ms: 3_600_000,
    };
    // No record: nothing is created for a token alone.
    store.save_access_token(&m1, &token("a0", 1)).await.unwrap();
    assert!(store.get(&m1).await.unwrap().is_none());
    store
        .put(&m1, &StoredMerchant::new(RefreshToken::new("r1")))
        .await
        .unwrap();
    let now = unix_now_ms();
    store
        .save_access_token(&m1, &token("a1", now + 10))
        .await
        .unwrap();
    store
        .save_access_token(&m1, &token("older", now + 5))
        .await
        .unwrap();
    let shared = store.shared_token(&m1).await.unwrap().unwrap();
    assert_eq!(shared.access_token.expose(), "a1");
    // A rotation keeps it; a revocation drops it.
    store.rotate(&m1, &RefreshToken::new("r2")).await.unwrap();
    assert!(store.shared_token(&m1).await.unwrap().is_some());
    store
        .mark_revoked(&m1, &RefreshToken::new("r2"))
        .await
        .unwrap();
    assert!(store.shared_token(&m1).await.unwrap().is_none());
}

#[tokio::test]
async fn an_unreachable_redis_is_an_error_in_time_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("redis+unix://{}", dir.path().join("none.sock").display());
    let store = RedisStore::open(&url, "t:", &dir.path().join("fallback.json")).unwrap();
    let started = std::time::Instant::now();
    assert!(store.check().await.is_err());
    // A rotation Redis would not take is kept in the fallback file.
    let err = store
        .rotate(&id("m1"), &RefreshToken::new("rot"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("fallback.json"), "{err}");
    let kept = std::fs::read_to_string(dir.path().join("fallback.json")).unwrap();
    assert!(kept.contains("rot"));
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[tokio::test]
async fn a_rotation_kept_in_the_fallback_file_is_pushed_back_when_redis_returns() {
    let mut redis = Redis::start();
    let store = open(&redis, "t:");
    let m1 = id("m1");
    store
        .put(&m1, &StoredMerchant::new(RefreshToken::new("r1")))
        .await
        .unwrap();
    redis.kill();
    let err = store
        .rotate(&m1, &RefreshToken::new("r2"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("fallback.json"), "{err}");
    // Back, but empty (no persistence): the live refresh token is not lost.
    redis.restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let found = store.get(&m1).await.ok().flatten();
        if found.is_some_and(|m| m.refresh_token.expose() == "r2") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never pushed back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fallback = redis.dir.path().join("fallback.json");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(&fallback).unwrap().contains("r2") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "fallback entry never cleared"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
