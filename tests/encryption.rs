//! Credentials at rest through the real binary: with `store.encryption_key_file` no token the
//! fake issued is ever in the store file; a record moved to another merchant id, a missing or
//! wrong key all refuse (and leave the file untouched); a plaintext store is sealed by its
//! next write; `store rekey` moves every record to the newest key; `check-config` shows the
//! key file's path, never a key.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::fake_mollie::{secrets_dir, FakeMollie};
use support::{client, read_store, Gateway, GatewayBuilder};

const KEY_ENV: &str = "MOLLIE_GATEWAY__STORE__ENCRYPTION_KEY_FILE";
const K1: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const K2: &str = "k2:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
/// Another key under the id `k1`: a wrong key.
const K1_WRONG: &str = "k1:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

/// A key file in its own directory (kept alive by the returned handle).
fn key_file(lines: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store-keys");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    (dir, path)
}

fn sealed_gateway(fake: &FakeMollie, keys: &Path) -> Gateway {
    GatewayBuilder::new(fake)
        .env("STORE__ENCRYPTION_KEY_FILE", keys.display().to_string())
        .prepare()
}

/// Runs a command to completion, bounded (a `run` that should refuse must not serve).
fn bounded(mut cmd: Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let id = child.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    while !waiter.is_finished() {
        if Instant::now() > deadline {
            let _ = Command::new("kill").arg(id.to_string()).status();
            panic!("still running after 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    waiter.join().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn get_status(gw: &Gateway, merchant: &str) -> u16 {
    client()
        .get(format!("{}/v2/echo/payments", gw.base_url()))
        .header("X-Merchant-Id", merchant)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Every `key_id` in the store file.
fn key_ids(store: &Path) -> Vec<String> {
    let json = read_store(store);
    let merchants = json["merchants"].as_object().unwrap();
    merchants
        .values()
        .map(|r| r["refresh_token"]["key_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn no_issued_token_is_ever_in_the_sealed_store() {
    let fake = FakeMollie::start().await;
    fake.set_rotate_refresh_tokens(true);
    let (_keys, keys) = key_file(&[K1]);
    let mut gw = sealed_gateway(&fake, &keys);
    let first = [gw.onboard(&fake, "m1"), gw.onboard(&fake, "m2")];
    gw.spawn();
    for round in 0..3 {
        for m in ["m1", "m2"] {
            assert_eq!(get_status(&gw, m).await, 200, "{m} round {round}");
            fake.expire_tokens(m); // the next request gets a 401: refresh (rotating) + replay
        }
    }
    assert!(fake.token_calls() >= 6, "{}", fake.token_calls());
    let raw = std::fs::read_to_string(&gw.store).unwrap();
    let secrets_file =
        secrets_dir().join(format!("{}-{}.txt", std::process::id(), fake.addr().port()));
    let issued = std::fs::read_to_string(&secrets_file).unwrap_or_default();
    let mut tokens: Vec<String> = issued.lines().map(str::to_string).collect();
    tokens.extend(first);
    for m in ["m1", "m2"] {
        tokens.push(fake.current_refresh_token(m).unwrap());
    }
    assert!(tokens.len() >= 8, "{tokens:?}");
    for t in tokens.iter().filter(|t| t.len() >= 8) {
        assert!(!raw.contains(t.as_str()), "an issued token is in the store");
    }
    assert_eq!(read_store(&gw.store)["version"], 2);
    assert_eq!(key_ids(&gw.store), ["k1", "k1"]);
    let log = gw.log_text();
    assert!(log.contains("credentials at rest are encrypted"), "{log}");
    assert!(!log.contains(&K1[3..]), "the key is in the log");
}

#[tokio::test]
async fn the_plaintext_default_starts_and_warns() {
    let fake = FakeMollie::start().await;
    let (_keys, keys) = key_file(&[K1]);
    std::fs::set_permissions(&keys, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let mut gw = GatewayBuilder::new(&fake)
        .env("STORE__ENCRYPTION_KEY_FILE", "")
        .prepare();
    gw.onboard(&fake, "m1");
    gw.spawn();
    assert_eq!(get_status(&gw, "m1").await, 200);
    let log = gw.log_text();
    assert!(log.contains("stored in plaintext"), "{log}");
    // With a key file others may read: it starts, and says so.
    let mut sealed = sealed_gateway(&fake, &keys);
    sealed.spawn();
    let log = sealed.log_text();
    assert!(log.contains("readable by other users"), "{log}");
}

#[tokio::test]
async fn a_record_moved_to_another_merchant_id_does_not_open() {
    let fake = FakeMollie::start().await;
    let (_keys, keys) = key_file(&[K1]);
    let gw = sealed_gateway(&fake, &keys);
    gw.onboard(&fake, "m1");
    let mut json = read_store(&gw.store);
    let record = json["merchants"]["m1"].take();
    json["merchants"] = serde_json::json!({ "m9": record });
    let moved = serde_json::to_string_pretty(&json).unwrap();
    std::fs::write(&gw.store, &moved).unwrap();
    let mut run = gw.command();
    run.arg("run");
    let out = bounded(run);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("merchant m9") && err.contains("does not decrypt"),
        "{err}"
    );
    let out = gw.cli(&["merchants", "add", "m3", "--refresh-token", "r3"]);
    assert!(!out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&gw.store).unwrap(), moved);
}

#[tokio::test]
async fn a_plaintext_store_is_sealed_by_its_next_write() {
    let fake = FakeMollie::start().await;
    let (_keys, keys) = key_file(&[K1]);
    let mut gw = sealed_gateway(&fake, &keys);
    let refresh = fake.add_merchant("m1");
    let mut add = gw.command();
    add.env(KEY_ENV, "")
        .args(["merchants", "add", "m1", "--refresh-token", &refresh]);
    assert!(bounded(add).status.success());
    assert!(std::fs::read_to_string(&gw.store)
        .unwrap()
        .contains(&refresh));
    assert_eq!(read_store(&gw.store)["version"], 1);
    // A gateway started with the key now says the record is still in plaintext.
    gw.spawn();
    assert!(
        gw.log_text().contains("still in plaintext"),
        "{}",
        gw.log_text()
    );
    gw.terminate();
    // With the key: the plaintext record is read, and sealed by the next write.
    gw.onboard(&fake, "m2");
    let raw = std::fs::read_to_string(&gw.store).unwrap();
    assert!(!raw.contains(&refresh), "m1's token is still in plaintext");
    assert_eq!(key_ids(&gw.store), ["k1", "k1"]);
    gw.spawn();
    assert_eq!(get_status(&gw, "m1").await, 200);
}

#[tokio::test]
async fn sealed_records_without_their_key_refuse_and_are_not_rewritten() {
    let fake = FakeMollie::start().await;
    let (_keys, keys) = key_file(&[K1]);
    let gw = sealed_gateway(&fake, &keys);
    gw.onboard(&fake, "m1");
    let before = std::fs::read_to_string(&gw.store).unwrap();
    let mut run = gw.command();
    run.env(KEY_ENV, "").arg("run");
    let out = bounded(run);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("store.encryption_key_file"),
        "{}",
        stderr(&out)
    );
    // A wrong key under the same id: refused, never "fixed" by a write.
    let (_wrong, wrong) = key_file(&[K1_WRONG]);
    let mut add = gw.command();
    add.env(KEY_ENV, &wrong)
        .args(["merchants", "add", "m2", "--refresh-token", "r2"]);
    let out = bounded(add);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("does not decrypt"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&gw.store).unwrap(), before);
}

#[tokio::test]
async fn rekey_moves_every_record_to_the_newest_key() {
    let fake = FakeMollie::start().await;
    let (_keys, keys) = key_file(&[K1]);
    let mut gw = sealed_gateway(&fake, &keys);
    gw.onboard(&fake, "m1");
    gw.onboard(&fake, "m2");
    assert_eq!(key_ids(&gw.store), ["k1", "k1"]);
    std::fs::write(&keys, format!("{K1}\n{K2}\n")).unwrap();
    let out = gw.cli(&["store", "rekey"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("re-encrypted 2 record"), "{said}");
    assert_eq!(key_ids(&gw.store), ["k2", "k2"]);
    // k1 can go: every record opens with k2 alone, and serves.
    std::fs::write(&keys, format!("{K2}\n")).unwrap();
    gw.spawn();
    assert_eq!(get_status(&gw, "m1").await, 200);
    assert_eq!(get_status(&gw, "m2").await, 200);
}

#[tokio::test]
async fn check_config_shows_the_key_path_never_a_key() {
    let fake = FakeMollie::start().await;
    let (_keys, keys) = key_file(&[K1, K2]);
    let gw = sealed_gateway(&fake, &keys);
    let out = gw.cli(&["check-config"]);
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(out.status.success(), "{all}");
    assert!(all.contains(&keys.display().to_string()), "{all}");
    for key in [K1, K2] {
        assert!(!all.contains(&key[3..]), "a key is shown: {all}");
    }
    // A bad line: a configuration error naming its number, never its content.
    let bad = "k3:c2hvcnQ=";
    std::fs::write(&keys, format!("{K1}\n{bad}\n")).unwrap();
    let out = gw.cli(&["check-config"]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("store.encryption_key_file") && err.contains("line 2"),
        "{err}"
    );
    assert!(!err.contains("c2hvcnQ") && !err.contains(&K1[3..]), "{err}");
    // Without a key file, check-config says the tokens are kept in plaintext.
    let mut plain = gw.command();
    plain.env(KEY_ENV, "").arg("check-config");
    let err = stderr(&bounded(plain));
    assert!(err.contains("plaintext"), "{err}");
}
