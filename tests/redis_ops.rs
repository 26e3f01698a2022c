//! Operating the Redis store (`store.backend = "redis"`) on a real `redis-server`: start-up
//! checks (a Redis that refuses the credentials), TLS (`rediss://`), OAuth states single-use
//! across replicas, and `store migrate`.

mod support;

use mollie_gateway::store::redis::{client, RedisStore};
use mollie_gateway::store::{CredentialStore, StoredMerchant};
use mollie_gateway::types::{MerchantId, RefreshToken};
use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::fake_mollie::FakeMollie;
use support::redis::Redis;
use support::tls::ListenerPki;
use support::{client as http, Gateway, GatewayBuilder};

fn id(s: &str) -> MerchantId {
    MerchantId::parse(s).unwrap()
}

fn on_redis(fake: &FakeMollie, url: &str) -> Gateway {
    GatewayBuilder::new(fake)
        .env("STORE__BACKEND", "redis")
        .env("STORE__REDIS_URL", url)
        .env("STORE__KEY_PREFIX", "gw:")
        .prepare()
}

/// `run`, which must exit by itself within 15 s: its exit code and standard error.
fn run_refused(gw: &Gateway) -> (Option<i32>, String) {
    let mut child = gw
        .command()
        .arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mollie-gateway");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the gateway started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    (status.code(), err)
}

#[tokio::test]
async fn a_redis_that_refuses_the_credentials_stops_the_start_naming_the_key() {
    let redis = Redis::start_with(&[
        "--requirepass",
        "Default-Pa55",
        "--user",
        "gw",
        "on",
        ">Gw-Pa55",
        "~*",
        "&*",
        "+@all",
        "--user",
        "pinger",
        "on",
        ">Ping-Pa55",
        "~*",
        "+ping",
    ]);
    let fake = FakeMollie::start().await;
    let sock = redis.socket.display().to_string();
    for (case, url) in [
        (
            "wrong password",
            format!("redis+unix://{sock}?pass=Wr0ng-Pa55"),
        ),
        ("no password", format!("redis+unix://{sock}")),
        (
            "unknown ACL user",
            format!("redis+unix://{sock}?user=nobody&pass=Wr0ng-Pa55"),
        ),
        (
            "ACL user, wrong password",
            format!("redis+unix://{sock}?user=gw&pass=Wr0ng-Pa55"),
        ),
        (
            "ACL user without the store's commands (NOPERM)",
            format!("redis+unix://{sock}?user=pinger&pass=Ping-Pa55"),
        ),
    ] {
        let gw = on_redis(&fake, &url);
        let (code, err) = run_refused(&gw);
        assert_eq!(code, Some(1), "{case}: {err}");
        assert!(err.contains("store.redis_url"), "{case}: {err}");
        assert!(
            err.contains("refused the user, password or permissions of store.redis_url"),
            "{case}: {err}"
        );
        // `err` holds the whole log of the attempt (the gateway logs to standard error).
        for password in ["Wr0ng-Pa55", "Ping-Pa55"] {
            assert!(!err.contains(password), "{case}: the password shown: {err}");
        }
    }
    // The ACL user with its password: starts and is ready.
    let mut gw = on_redis(&fake, &format!("redis+unix://{sock}?user=gw&pass=Gw-Pa55"));
    gw.spawn();
    let mut gw = on_redis(&fake, &format!("redis+unix://{sock}?pass=Default-Pa55"));
    gw.spawn();
    drop(redis);
}

#[tokio::test]
async fn a_redis_url_that_does_not_parse_stops_the_start_naming_the_key() {
    let fake = FakeMollie::start().await;
    let gw = on_redis(&fake, "redis://u:Wr0ng-Pa55@h:6379/notadb");
    let (code, err) = run_refused(&gw);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("store.redis_url does not parse"), "{err}");
    assert!(!err.contains("Wr0ng-Pa55"), "{err}");
}

/// A `redis-server` that speaks only TLS on TCP (its certificate signed by `pki`'s CA, for
/// `localhost` and 127.0.0.1): the `rediss://` URL.
fn tls_redis(pki: &ListenerPki) -> (Redis, String) {
    let port = support::free_port().to_string();
    let path = |p: &std::path::Path| p.display().to_string();
    let redis = Redis::start_with(&[
        "--tls-port",
        &port,
        "--tls-cert-file",
        &path(&pki.cert_file),
        "--tls-key-file",
        &path(&pki.key_file),
        "--tls-ca-cert-file",
        &path(&pki.ca_file),
        "--tls-auth-clients",
        "no",
    ]);
    (redis, format!("rediss://127.0.0.1:{port}"))
}

#[tokio::test]
async fn rediss_trusts_the_configured_ca_and_refuses_an_unknown_one() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ListenerPki::write(dir.path());
    let (_redis, url) = tls_redis(&pki);
    let fallback = dir.path().join("fallback.json");
    // Trusting the test CA: the store works over TLS (the server has no plain TCP port).
    let trusted = client(&url, Some(&pki.ca_file)).unwrap();
    let store = RedisStore::open_client(trusted, "t:", &fallback, Default::default()).unwrap();
    let m = StoredMerchant::new(RefreshToken::new("refresh_over_tls"));
    store.put(&id("m1"), &m).await.unwrap();
    assert_eq!(store.get(&id("m1")).await.unwrap(), Some(m));
    // The system's trust store does not know the test CA: refused, in time.
    let system = RedisStore::open_client(
        client(&url, None).unwrap(),
        "t:",
        &fallback,
        Default::default(),
    )
    .unwrap();
    let started = Instant::now();
    let err = system.get(&id("m1")).await.unwrap_err().to_string();
    assert!(started.elapsed() < Duration::from_secs(5), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    // Another CA: refused too.
    let other_dir = tempfile::tempdir().unwrap();
    let other = ListenerPki::write(other_dir.path());
    let wrong = client(&url, Some(&other.ca_file)).unwrap();
    let wrong = RedisStore::open_client(wrong, "t:", &fallback, Default::default()).unwrap();
    assert!(wrong.get(&id("m1")).await.is_err());
}

#[tokio::test]
async fn a_gateway_on_rediss_with_store_redis_ca_file_serves() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ListenerPki::write(dir.path());
    let (_redis, url) = tls_redis(&pki);
    let fake = FakeMollie::start().await;
    let mut gw = GatewayBuilder::new(&fake)
        .env("STORE__BACKEND", "redis")
        .env("STORE__REDIS_URL", url.as_str())
        .env("STORE__REDIS_CA_FILE", pki.ca_file.display().to_string())
        .env("STORE__KEY_PREFIX", "gw:")
        .prepare();
    gw.onboard(&fake, "m1");
    gw.spawn();
    let status = http()
        .get(format!("{}/v2/echo/payments", gw.base_url()))
        .header("X-Merchant-Id", "m1")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
}

/// `GET` on the admin listener without following redirects: status, `Location`, body.
async fn page(gw: &Gateway, path_and_query: &str) -> (u16, Option<String>, String) {
    let browser = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = browser
        .get(format!("{}{path_and_query}", gw.admin_url()))
        .send()
        .await
        .unwrap();
    let location = resp
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string());
    (resp.status().as_u16(), location, resp.text().await.unwrap())
}

#[tokio::test]
async fn an_oauth_callback_replayed_on_another_replica_is_refused() {
    let mut redis = Redis::start();
    let fake = FakeMollie::start().await;
    let onboarding = |b: GatewayBuilder| {
        b.env("STORE__BACKEND", "redis")
            .env("STORE__REDIS_URL", redis.url())
            .env("STORE__KEY_PREFIX", "gw:")
            .env("ADMIN__TOKEN", "admin-token-not-needed-here")
            .env("OAUTH__STATE_SECRET", "one-state-secret-for-both-replicas")
    };
    let mut a = onboarding(GatewayBuilder::new(&fake))
        .env("OAUTH__REDIRECT_URI", "http://{admin}/oauth/callback")
        .prepare();
    let redirect_uri = format!("http://{}/oauth/callback", a.admin);
    let mut b = onboarding(GatewayBuilder::new(&fake))
        .env("OAUTH__REDIRECT_URI", redirect_uri.as_str())
        .prepare();
    a.spawn();
    b.spawn();
    // The merchant starts on A; Mollie's redirect reaches B (the load balancer's choice).
    let (status, location, _) = page(&a, "/oauth/connect?merchant=m1").await;
    assert_eq!(status, 302);
    let authorize = url::Url::parse(&location.unwrap()).unwrap();
    let state = authorize
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let code = fake.issue_code("m1", Some(&redirect_uri));
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("code", &code).append_pair("state", &state);
    let callback = format!("/oauth/callback?{}", q.finish());
    let (status, _, html) = page(&b, &callback).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("connected"), "{html}");
    // The same callback URL replayed on A, which never saw it used: refused through Redis.
    let (status, _, html) = page(&a, &callback).await;
    assert_eq!(status, 400, "{html}");
    assert!(html.contains("already used"), "{html}");
    assert!(html.contains("/oauth/connect?merchant=m1"), "{html}");
    // And on B again (its own memory, and Redis).
    let (status, _, html) = page(&b, &callback).await;
    assert_eq!(status, 400, "{html}");
    assert_eq!(
        fake.token_requests().len(),
        1,
        "the code was exchanged once"
    );
    let keys = redis.command("KEYS *");
    assert!(!keys.contains(&state) && !keys.contains(&code), "{keys}");
    assert!(keys.contains("gw:once:"), "{keys}");
    // Redis unreachable: the state cannot be checked, so nothing is exchanged (503, again later).
    let (_, location, _) = page(&a, "/oauth/connect?merchant=m2").await;
    let authorize = url::Url::parse(&location.unwrap()).unwrap();
    let state = authorize
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1;
    let code = fake.issue_code("m2", Some(&redirect_uri));
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("code", &code).append_pair("state", &state);
    redis.kill();
    let (status, _, html) = page(&b, &format!("/oauth/callback?{}", q.finish())).await;
    assert_eq!(status, 503, "{html}");
    assert!(html.contains("nothing was stored"), "{html}");
    assert_eq!(fake.token_requests().len(), 1);
}

/// `store migrate --from … --to …` through the CLI: exit code, stdout, stderr.
fn migrate(gw: &Gateway, from: &str, to: &str) -> (Option<i32>, String, String) {
    let out = gw.cli(&["store", "migrate", "--from", from, "--to", to]);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[tokio::test]
async fn store_migrate_file_to_redis_and_back_keeps_every_record_and_newer_targets() {
    let redis = Redis::start();
    let fake = FakeMollie::start().await;
    let gw = GatewayBuilder::new(&fake).prepare();
    for m in ["m1", "m2", "m3"] {
        gw.onboard(&fake, m);
    }
    let file = format!("file:{}", gw.store.display());
    let url = redis.url();
    let (code, out, err) = migrate(&gw, &file, &url);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out.trim(), "copied 3, unchanged 0, conflicts 0, failed 0");
    // And back into a new file: the same records.
    let back = gw.store.with_file_name("back.json");
    let (code, out, err) = migrate(&gw, &url, &format!("file:{}", back.display()));
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out.trim(), "copied 3, unchanged 0, conflicts 0, failed 0");
    assert_eq!(support::read_store(&back), support::read_store(&gw.store));
    // Again: nothing to do, either way.
    let (code, out, _) = migrate(&gw, &file, &url);
    assert_eq!(
        (code, out.trim()),
        (Some(0), "copied 0, unchanged 3, conflicts 0, failed 0")
    );
    let (code, out, _) = migrate(&gw, &url, &format!("file:{}", back.display()));
    assert_eq!(
        (code, out.trim()),
        (Some(0), "copied 0, unchanged 3, conflicts 0, failed 0")
    );

    // m1 changed later in Redis (a replica re-authorized it): kept, reported as a conflict.
    let store =
        RedisStore::open(&url, "mollie-gateway:", &redis.dir.path().join("f.json")).unwrap();
    let mut newer = store.get(&id("m1")).await.unwrap().unwrap();
    newer.refresh_token = RefreshToken::new("refresh_newer_in_redis");
    newer.updated_at += 60;
    store.put(&id("m1"), &newer).await.unwrap();
    let (code, out, err) = migrate(&gw, &file, &url);
    assert_eq!(code, Some(4), "{out}{err}");
    assert_eq!(out.trim(), "copied 0, unchanged 2, conflicts 1, failed 0");
    assert!(err.contains("conflict: merchant m1"), "{err}");
    assert_eq!(store.get(&id("m1")).await.unwrap(), Some(newer));
    // The other way, the newer record is copied over the file's older one.
    let (code, out, err) = migrate(&gw, &url, &file);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out.trim(), "copied 1, unchanged 2, conflicts 0, failed 0");
    assert!(support::read_store(&gw.store)
        .to_string()
        .contains("refresh_newer_in_redis"));
    // A record in Redis that does not parse: named, exit 1, the others copied.
    redis.call(&["HSET", "mollie-gateway:merchant:m2", "data", "{not json"]);
    let third = gw.store.with_file_name("third.json");
    let (code, out, err) = migrate(&gw, &url, &format!("file:{}", third.display()));
    assert_eq!(code, Some(1), "{out}{err}");
    assert_eq!(out.trim(), "copied 2, unchanged 0, conflicts 0, failed 1");
    assert!(err.contains("failed: merchant m2"), "{err}");
    assert!(err.contains("(m2)"), "{err}");
}

#[tokio::test]
async fn store_migrate_into_an_unreachable_redis_fails_naming_each_merchant() {
    let fake = FakeMollie::start().await;
    let gw = GatewayBuilder::new(&fake).prepare();
    gw.onboard(&fake, "m1");
    gw.onboard(&fake, "m2");
    let before = support::read_store(&gw.store);
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "redis+unix://{}/none.sock?pass=Wr0ng-Pa55",
        dir.path().display()
    );
    let started = Instant::now();
    let (code, out, err) = migrate(&gw, &format!("file:{}", gw.store.display()), &url);
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(code, Some(1), "{out}{err}");
    assert_eq!(out.trim(), "copied 0, unchanged 0, conflicts 0, failed 2");
    assert!(
        err.contains("failed: merchant m1") && err.contains("failed: merchant m2"),
        "{err}"
    );
    assert!(err.contains("2 merchant(s) not copied (m1, m2)"), "{err}");
    assert!(!err.contains("Wr0ng-Pa55"), "{err}");
    assert_eq!(
        support::read_store(&gw.store),
        before,
        "the source is untouched"
    );
    // Not a store at all.
    let (code, _, err) = migrate(&gw, "postgres://u:Wr0ng-Pa55@h/db", &url);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--from: a store is file:PATH"), "{err}");
    assert!(!err.contains("Wr0ng-Pa55"), "{err}");
}

/// How many times Redis ran `SMEMBERS` (once per full load of the merchants).
fn full_loads(redis: &Redis) -> u64 {
    let info = redis.call(&["INFO", "commandstats"]);
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_smembers:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test]
async fn an_unreadable_record_answers_503_is_logged_once_and_never_overwritten() {
    let redis = Redis::start();
    let fake = FakeMollie::start().await;
    let mut gw = on_redis(&fake, &redis.url());
    gw.onboard(&fake, "m1");
    gw.onboard(&fake, "m2");
    redis.call(&["HSET", "gw:merchant:m2", "data", "{not json"]);
    gw.spawn();
    let status_of = |m: &'static str| {
        let url = format!("{}/v2/echo/payments", gw.base_url());
        async move {
            let resp = http()
                .get(url)
                .header("X-Merchant-Id", m)
                .send()
                .await
                .unwrap();
            let code = resp
                .headers()
                .get("x-gateway-error")
                .map(|v| v.to_str().unwrap().to_string());
            let status = resp.status().as_u16();
            (status, code, resp.text().await.unwrap())
        }
    };
    assert_eq!(status_of("m1").await.0, 200);
    for _ in 0..3 {
        let (status, code, body) = status_of("m2").await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(code.as_deref(), Some("store_unavailable"), "{body}");
        assert!(body.contains("\"status\":503"), "Mollie's shape: {body}");
    }
    // Full reloads (after each pub/sub resubscription): the record is not logged again.
    for _ in 0..2 {
        let before = full_loads(&redis);
        redis.call(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while full_loads(&redis) <= before {
            assert!(Instant::now() < deadline, "no full reload");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logged = gw.log_text().matches("unreadable record in Redis").count();
    assert_eq!(logged, 1, "{}", gw.log_text());
    // A new authorization of m2 through the CLI does not write over it either.
    let out = gw.cli(&["merchants", "add", "m2", "--refresh-token", "refresh_new"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("never overwritten while unreadable"), "{err}");
    assert_eq!(
        redis.call(&["HGET", "gw:merchant:m2", "data"]),
        "$9\r\n{not json\r\n"
    );
    assert_eq!(status_of("m1").await.0, 200);
}

#[tokio::test]
async fn a_full_load_reads_every_merchant_in_batches() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let store = RedisStore::open(&redis.url(), "t:", &dir.path().join("f.json")).unwrap();
    const N: usize = 1200; // three batches
    let mut set = tokio::task::JoinSet::new();
    for i in 0..N {
        let store = store.clone();
        set.spawn(async move {
            let m = StoredMerchant::new(RefreshToken::new(format!("refresh_{i}")));
            store.put(&id(&format!("m{i:04}")), &m).await.unwrap();
        });
    }
    while let Some(done) = set.join_next().await {
        done.unwrap();
    }
    redis.call(&["HSET", "t:merchant:m0007", "data", "[]"]);
    let started = Instant::now();
    let all = store.load_all().await.unwrap();
    let took = started.elapsed();
    println!("load_all of {N} merchants: {took:?}");
    assert_eq!(all.len(), N - 1, "all but the unreadable one");
    assert_eq!(all[0].0, id("m0000"));
    assert_eq!(all[7].0, id("m0008"));
    assert_eq!(
        all[N - 2].1.refresh_token,
        RefreshToken::new("refresh_1199")
    );
}
