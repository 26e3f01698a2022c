//! Crash durability (issue 13): `kill -9` of the real gateway process at random instants while
//! refresh tokens rotate, with the file store and with the Redis store. The fake Mollie rotates
//! with the grace rule (a rotated-out refresh token stays valid until its successor is first
//! used) and records every refresh grant it answers, which proves after each restart that
//! every merchant presents its latest refresh token or (the kill fell between Mollie's answer
//! and the store write) its predecessor, never an older one, and that no merchant ends in
//! `invalid_grant`.
//!
//! Refreshes are forced through the admin API (`POST /admin/merchants/{id}/refresh`), one
//! worker per merchant. Half the kills come at a random instant, half just after the fake
//! answered a refresh (0-2 ms later), which is where a lost rotation would be.
//!
//! The normal suite runs a short loop (100 refreshes per store); the full loop is the same
//! code: `CRASH_REFRESHES=1000 cargo test --release --test crash_durability -- --nocapture`.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::fake_mollie::{FakeMollie, Presentation, Presented};
use support::redis::Redis;
use support::{client, Gateway, GatewayBuilder};

const ADMIN_TOKEN: &str = "admin-token-for-the-crash-loop-0123456789";
const MERCHANTS: usize = 6;

/// Refreshes (rotations answered by the fake) per store: `CRASH_REFRESHES`, default 100.
fn refreshes_wanted() -> usize {
    std::env::var("CRASH_REFRESHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

fn merchant(i: usize) -> String {
    format!("m{i}")
}

/// What one loop did, printed at its end.
#[derive(Debug, Default)]
struct Tally {
    refreshes: usize,
    kills: usize,
    kills_after_answer: usize,
    /// Restarts × merchants whose first refresh presented the latest / the predecessor token.
    first_latest: usize,
    first_predecessor: usize,
    /// Forced refreshes answered other than 200 (503 while a dead process's Redis lock
    /// lives, ...), and requests cut by the kill.
    non_200: usize,
    cut: usize,
}

/// One forced refresh through the admin API: the status, or `None` when the connection failed.
async fn force_refresh(http: &reqwest::Client, admin: &str, id: &str) -> Option<u16> {
    let sent = http
        .post(format!("{admin}/admin/merchants/{id}/refresh"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await;
    sent.ok().map(|r| r.status().as_u16())
}

/// Checks the presentations one gateway process made (`since..`): per merchant the first is
/// the latest or the predecessor, every later one the latest, all accepted.
fn check_process_life(life: &[Presentation], round: usize, tally: &mut Tally) {
    let mut seen = std::collections::HashSet::new();
    for p in life {
        assert!(
            p.accepted,
            "round {round}: a refresh grant was refused (invalid_grant): {p:?}"
        );
        if seen.insert(p.merchant.clone()) {
            match p.presented {
                Presented::Latest => tally.first_latest += 1,
                Presented::Predecessor => tally.first_predecessor += 1,
                other => panic!(
                    "round {round}: {} presented an {other:?} refresh token after a restart",
                    p.merchant
                ),
            }
        } else {
            assert_eq!(
                p.presented,
                Presented::Latest,
                "round {round}: {} presented a rotated-out token while running",
                p.merchant
            );
        }
    }
}

/// The kill -9 loop over one prepared gateway (merchants onboarded, not started).
/// `stored` gives the refresh token the store holds for a merchant (or a text containing it).
async fn crash_loop(fake: &FakeMollie, gw: &mut Gateway, stored: impl Fn(&str) -> String) -> Tally {
    let wanted = refreshes_wanted();
    let deadline =
        Instant::now() + Duration::from_secs(60) + Duration::from_millis(300) * wanted as u32;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut tally = Tally::default();
    let mut round = 0;
    while tally.refreshes < wanted {
        assert!(
            Instant::now() < deadline,
            "only {} of {wanted} refreshes before the deadline: {tally:?}",
            tally.refreshes
        );
        round += 1;
        let since = fake.presentations_len();
        tokio::task::block_in_place(|| gw.spawn());

        // One worker per merchant forces refreshes until the kill cuts its request.
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = tokio::task::JoinSet::new();
        for i in 0..MERCHANTS {
            let (http, admin, stop) = (http.clone(), gw.admin_url(), stop.clone());
            workers.spawn(async move {
                let (mut non_200, mut cut) = (0, 0);
                while !stop.load(Ordering::SeqCst) {
                    match force_refresh(&http, &admin, &merchant(i)).await {
                        Some(200) => {}
                        Some(401) => panic!("m{i}: 401 from a forced refresh (revoked?)"),
                        Some(_) => {
                            non_200 += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        None => {
                            cut += 1;
                            break;
                        }
                    }
                }
                (non_200, cut)
            });
        }

        // The kill: at a random instant, or just after one of the next answers.
        if round % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(fastrand::u64(5..=150))).await;
        } else {
            let answered = fake.answered();
            for _ in 0..fastrand::usize(1..=8) {
                let next = answered.notified();
                if tokio::time::timeout(Duration::from_secs(3), next)
                    .await
                    .is_err()
                {
                    break;
                }
            }
            std::thread::sleep(Duration::from_micros(fastrand::u64(0..=2000)));
            tally.kills_after_answer += 1;
        }
        gw.kill9();
        tally.kills += 1;
        stop.store(true, Ordering::SeqCst);
        while let Some(done) = tokio::time::timeout(Duration::from_secs(15), workers.join_next())
            .await
            .expect("workers end after the kill")
        {
            let (non_200, cut) = done.expect("worker");
            tally.non_200 += non_200;
            tally.cut += cut;
        }
        // Let the fake finish any grant the kill cut off.
        tokio::time::sleep(Duration::from_millis(30)).await;

        let all = fake.presentations();
        check_process_life(&all[since..], round, &mut tally);
        tally.refreshes = all.iter().filter(|p| p.accepted).count();

        // The store holds the latest refresh token or its predecessor.
        for i in 0..MERCHANTS {
            let id = merchant(i);
            let held = stored(&id);
            let latest = fake
                .current_refresh_token(&id)
                .expect("fake knows the merchant");
            let previous = fake.previous_refresh_token(&id);
            assert!(
                held.contains(&latest) || previous.is_some_and(|p| held.contains(&p)),
                "round {round}: the store holds neither {id}'s latest refresh token nor its \
                 predecessor"
            );
        }
    }

    // The end: a last process serves every merchant.
    let since = fake.presentations_len();
    tokio::task::block_in_place(|| gw.spawn());
    for i in 0..MERCHANTS {
        let id = merchant(i);
        let until = Instant::now() + Duration::from_secs(10);
        let status = loop {
            let status = force_refresh(&http, &gw.admin_url(), &id).await;
            if status == Some(200) || Instant::now() >= until {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(
            status,
            Some(200),
            "{id}: forced refresh after the last restart"
        );
        let resp = client()
            .get(format!("{}/v2/echo/payments", gw.base_url()))
            .header("X-Merchant-Id", &id)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{id}: a request after the last restart");
    }
    let all = fake.presentations();
    check_process_life(&all[since..], round + 1, &mut tally);
    assert!(
        all.iter().all(|p| p.accepted),
        "a merchant met invalid_grant"
    );
    let dead =
        r#"mollie_gateway_token_refreshes_total{grant="refresh_token",outcome="invalid_grant"}"#;
    assert_eq!(gw.metric(dead).await, 0.0);
    gw.terminate();
    tally
}

fn fake_setup(fake: &FakeMollie) {
    fake.set_rotate_refresh_tokens(true);
    fake.set_rotation_grace(true);
    // A short token call, so that some kills land while it is in flight.
    fake.set_token_delay(Duration::from_millis(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_kill_9_during_rotations_loses_no_merchant() {
    let fake = FakeMollie::start().await;
    fake_setup(&fake);
    let mut gw = GatewayBuilder::new(&fake)
        .env("ADMIN__TOKEN", ADMIN_TOKEN)
        .prepare();
    for i in 0..MERCHANTS {
        gw.onboard(&fake, &merchant(i));
    }
    let store = gw.store.clone();
    let started = Instant::now();
    let tally = crash_loop(&fake, &mut gw, |id| {
        let v = support::read_store(&store);
        v["merchants"][id]["refresh_token"]
            .as_str()
            .unwrap_or_else(|| panic!("{id} lost from the store: {v}"))
            .to_string()
    })
    .await;
    println!(
        "crash loop, file store: {tally:?} in {:.1?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_kill_9_during_rotations_loses_no_merchant() {
    let redis = Redis::start();
    let fake = FakeMollie::start().await;
    fake_setup(&fake);
    let mut gw = GatewayBuilder::new(&fake)
        .env("ADMIN__TOKEN", ADMIN_TOKEN)
        .env("STORE__BACKEND", "redis")
        .env("STORE__REDIS_URL", redis.url())
        .env("STORE__KEY_PREFIX", "gw:")
        .prepare();
    for i in 0..MERCHANTS {
        gw.onboard(&fake, &merchant(i));
    }
    let started = Instant::now();
    let tally = crash_loop(&fake, &mut gw, |id| {
        let data = redis.call(&["HGET", &format!("gw:merchant:{id}"), "data"]);
        assert!(data.starts_with('$'), "{id} lost from Redis: {data}");
        data
    })
    .await;
    println!(
        "crash loop, redis store: {tally:?} in {:.1?}",
        started.elapsed()
    );
}
