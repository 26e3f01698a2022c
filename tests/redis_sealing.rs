//! Credentials at rest in the Redis store, against a real `redis-server` and the real binary:
//! with `store.encryption_key_file` no Redis value holds a token the fake issued (nor a static
//! credential), a record copied to another merchant id does not decrypt (that merchant is
//! refused 503, nothing is overwritten), a plaintext record of the older format is read and
//! sealed by `store rekey`, `store rekey` re-seals every record under the newest key while a
//! gateway refreshes (rotating) and loses nothing, and the fallback file is sealed too.

mod support;

use mollie_gateway::store::crypto::{Keyring, Sealing};
use mollie_gateway::store::redis::RedisStore;
use mollie_gateway::store::{CredentialStore, StoredMerchant};
use mollie_gateway::types::{MerchantId, RefreshToken};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use support::fake_mollie::{secrets_dir, FakeMollie};
use support::redis::Redis;
use support::{client, Gateway, GatewayBuilder};

const K1: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const K2: &str = "k2:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
const PREFIX: &str = "gw:";

fn write_keys(path: &Path, lines: &[&str]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// A gateway on `redis` sealing with the key file `keys`.
fn replica(fake: &FakeMollie, redis: &Redis, keys: &Path, name: &str) -> Gateway {
    GatewayBuilder::new(fake)
        .env("STORE__BACKEND", "redis")
        .env("STORE__REDIS_URL", redis.url())
        .env("STORE__KEY_PREFIX", PREFIX)
        .env(
            "STORE__FALLBACK_PATH",
            redis
                .dir
                .path()
                .join(format!("fallback-{name}.json"))
                .display()
                .to_string(),
        )
        .env("STORE__ENCRYPTION_KEY_FILE", keys.display().to_string())
        .prepare()
}

/// The elements of a RESP answer (bulk strings and simple values), in order.
fn resp_items(answer: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = answer.split("\r\n");
    while let Some(line) = lines.next() {
        if line.starts_with('$') {
            if line != "$-1" {
                out.push(lines.next().unwrap_or_default().to_string());
            }
        } else if let Some(v) = line.strip_prefix('+').or_else(|| line.strip_prefix(':')) {
            out.push(v.to_string());
        }
    }
    out
}

/// Every value under the prefix, as text: hashes field by field, strings, sets.
fn dump(redis: &Redis) -> Vec<(String, String)> {
    let keys = resp_items(&redis.call(&["KEYS", &format!("{PREFIX}*")]));
    assert!(!keys.is_empty(), "nothing under {PREFIX}");
    keys.into_iter()
        .map(|k| {
            let kind = resp_items(&redis.call(&["TYPE", &k])).join("");
            let values = match kind.as_str() {
                "hash" => redis.call(&["HGETALL", &k]),
                "string" => redis.call(&["GET", &k]),
                "set" => redis.call(&["SMEMBERS", &k]),
                other => panic!("{k} is a {other}"),
            };
            (k, resp_items(&values).join("\n"))
        })
        .collect()
}

/// The `data` of one merchant's record.
fn record(redis: &Redis, id: &str) -> String {
    resp_items(&redis.call(&["HGET", &format!("{PREFIX}merchant:{id}"), "data"])).join("")
}

fn issued_secrets(fake: &FakeMollie) -> Vec<String> {
    let file = secrets_dir().join(format!("{}-{}.txt", std::process::id(), fake.addr().port()));
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter(|t| t.len() >= 8)
        .map(str::to_string)
        .collect()
}

fn add_api_key(gw: &Gateway, id: &str, key: &str) {
    let mut child = gw
        .command()
        .args(["merchants", "add", id, "--api-key", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(key.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
}

fn keys_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store-keys");
    (dir, path)
}

#[tokio::test]
async fn no_redis_value_holds_an_issued_token() {
    let fake = FakeMollie::start().await;
    fake.set_rotate_refresh_tokens(true);
    let redis = Redis::start();
    let (_d, keys) = keys_dir();
    write_keys(&keys, &[K1]);
    let mut gw = replica(&fake, &redis, &keys, "a");
    let mut tokens = vec![gw.onboard(&fake, "m1"), gw.onboard(&fake, "m2")];
    let key = fake.issue_static("s1", "live");
    add_api_key(&gw, "s1", &key);
    gw.spawn();
    for round in 0..3 {
        for m in ["m1", "m2", "s1"] {
            assert_eq!(gw.proxied(m).await.0, 200, "{m} round {round}");
        }
        for m in ["m1", "m2"] {
            fake.expire_tokens(m); // the next request: 401, refresh (rotating), replay
        }
    }
    assert!(fake.token_calls() >= 6, "{}", fake.token_calls());
    tokens.extend(issued_secrets(&fake));
    for m in ["m1", "m2"] {
        tokens.push(fake.current_refresh_token(m).unwrap());
        tokens.push(fake.current_access_token(m).unwrap());
    }
    tokens.push(key);
    let all = dump(&redis);
    let text: String = all.iter().map(|(k, v)| format!("{k}\n{v}\n")).collect();
    // The shared access token is in Redis too, sealed.
    assert!(text.contains("\"access\""), "{text}");
    assert!(text.contains("\"api_key\""), "{text}");
    for t in &tokens {
        assert!(!text.contains(t.as_str()), "an issued token is in Redis");
    }
    for id in ["m1", "m2", "s1"] {
        assert!(record(&redis, id).contains("\"key_id\":\"k1\""), "{id}");
    }
}

#[tokio::test]
async fn a_record_copied_to_another_merchant_does_not_decrypt() {
    let fake = FakeMollie::start().await;
    let redis = Redis::start();
    let (_d, keys) = keys_dir();
    write_keys(&keys, &[K1]);
    let mut gw = replica(&fake, &redis, &keys, "a");
    gw.onboard(&fake, "m1");
    let data = record(&redis, "m1");
    assert!(data.contains("ciphertext"), "{data}");
    redis.call(&[
        "HSET",
        &format!("{PREFIX}merchant:m9"),
        "version",
        "999",
        "data",
        &data,
    ]);
    redis.call(&["SADD", &format!("{PREFIX}merchants"), "m9"]);
    gw.spawn();
    assert_eq!(gw.proxied("m1").await.0, 200);
    assert_eq!(
        gw.proxied("m9").await,
        (503, "store_unavailable".to_string())
    );
    let log = gw.log_text();
    assert!(log.contains("does not decrypt"), "{log}");
    assert!(log.contains("merchant m9"), "{log}");
    // Nothing overwritten: m9's record is the copied bytes, at the copied version.
    assert_eq!(record(&redis, "m9"), data);
    let version = redis.call(&["HGET", &format!("{PREFIX}merchant:m9"), "version"]);
    assert!(version.contains("999"), "{version}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_reseals_every_record_while_refreshes_rotate() {
    let fake = FakeMollie::start().await;
    fake.set_rotate_refresh_tokens(true);
    let redis = Redis::start();
    let (_d, keys) = keys_dir();
    write_keys(&keys, &[K1]);
    let first = replica(&fake, &redis, &keys, "a");
    let ids = ["m1", "m2", "m3", "m4"];
    for m in ids {
        first.onboard(&fake, m);
    }
    // A plaintext record of the older format (written before Redis records were sealed).
    let plain = "refresh_p1_plaintextrecord0001";
    fake.add_merchant_with("p1", plain);
    let old = format!(r#"{{"refresh_token":"{plain}","revoked":false,"updated_at":1}}"#);
    redis.call(&[
        "HSET",
        &format!("{PREFIX}merchant:p1"),
        "version",
        "500",
        "data",
        &old,
    ]);
    redis.call(&["SADD", &format!("{PREFIX}merchants"), "p1"]);

    // The new key goes in; every process restarts with it; then rekey runs under load.
    write_keys(&keys, &[K1, K2]);
    let mut gw = replica(&fake, &redis, &keys, "b");
    gw.spawn();
    assert_eq!(
        gw.proxied("p1").await.0,
        200,
        "the plaintext record is read"
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let base = gw.base_url();
        let fake = fake.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut rounds = 0;
            while rounds < 3 || !stop.load(std::sync::atomic::Ordering::SeqCst) {
                assert!(rounds < 500, "the rekey did not end");
                for m in ["m1", "m2", "m3", "m4", "p1"] {
                    fake.expire_tokens(m);
                    let resp = client()
                        .get(format!("{base}/v2/echo/payments"))
                        .header("X-Merchant-Id", m)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status().as_u16(), 200, "{m} round {rounds}");
                }
                rounds += 1;
            }
            rounds
        })
    };
    // Refreshes (each one a rotation, so a compare-and-set write) run while the rekey does.
    let before = fake.token_calls();
    while fake.token_calls() < before + 5 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cli = gw.command();
    let out = tokio::task::spawn_blocking(move || {
        let mut cli = cli;
        cli.args(["store", "rekey"]).output().unwrap()
    })
    .await
    .unwrap();
    let during = fake.token_calls() - before;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    assert!(said.contains("5 record(s) under key k2"), "{said}");
    let rounds = load.await.unwrap();
    assert!(
        rounds >= 3 && during >= 5,
        "{rounds} rounds, {during} refreshes"
    );
    for id in ["m1", "m2", "m3", "m4", "p1"] {
        let data = record(&redis, id);
        assert!(data.contains("\"key_id\":\"k2\""), "{id}: {data}");
        assert!(!data.contains("\"key_id\":\"k1\""), "{id}: {data}");
    }
    assert!(!record(&redis, "p1").contains(plain));
    gw.terminate();

    // Only the newest key left: every merchant still refreshes with its current token.
    write_keys(&keys, &[K2]);
    let mut last = replica(&fake, &redis, &keys, "c");
    last.spawn();
    for m in ["m1", "m2", "m3", "m4", "p1"] {
        fake.expire_tokens(m);
        assert_eq!(last.proxied(m).await.0, 200, "{m} after rekey");
    }
}

#[tokio::test]
async fn the_fallback_file_is_sealed_too() {
    let mut redis = Redis::start();
    let ring = Keyring::parse(&format!("{K1}\n")).unwrap();
    let sealing = Sealing::new(Some(Arc::new(ring)));
    let fallback = redis.dir.path().join("fallback.json");
    let store: Arc<RedisStore> =
        RedisStore::open_sealed(&redis.url(), PREFIX, &fallback, sealing).unwrap();
    let m1 = MerchantId::parse("m1").unwrap();
    store
        .put(
            &m1,
            &StoredMerchant::new(RefreshToken::new("refresh_first_0001")),
        )
        .await
        .unwrap();
    assert!(!record(&redis, "m1").contains("refresh_first_0001"));
    redis.kill();
    let rotated = RefreshToken::new("refresh_rotated_while_redis_is_down");
    let err = store.rotate(&m1, &rotated).await.unwrap_err();
    assert!(err.to_string().contains("fallback"), "{err}");
    let raw = std::fs::read_to_string(&fallback).unwrap();
    assert!(!raw.contains("refresh_rotated"), "{raw}");
    assert!(raw.contains("\"key_id\": \"k1\""), "{raw}");
    // Pushed back once Redis is there again, still sealed.
    redis.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let data = record(&redis, "m1");
        if data.contains("ciphertext") {
            assert!(!data.contains("refresh_rotated"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not pushed back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let back = store.get(&m1).await.unwrap().unwrap();
    assert_eq!(back.refresh_token, rotated);
}
