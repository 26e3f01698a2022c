//! The admin listener's health endpoints: `/healthz` while the process serves, `/readyz` only
//! while the credential store is readable, the upstream and token endpoint hosts have
//! resolved and the proxy accepts.

mod support;

use std::time::{Duration, Instant};
use support::fake_mollie::FakeMollie;
use support::{client, GatewayBuilder};

#[tokio::test]
async fn readyz_follows_the_store_and_healthz_the_process() {
    let fake = FakeMollie::start().await;
    let mut gw = GatewayBuilder::new(&fake).prepare();
    gw.onboard(&fake, "m1");
    gw.spawn();
    let get = |path: &'static str| {
        let url = format!("{}{path}", gw.admin_url());
        async move { client().get(url).send().await.unwrap() }
    };

    let health = get("/healthz").await;
    assert_eq!(health.status(), 200);
    assert_eq!(
        health.json::<serde_json::Value>().await.unwrap()["status"],
        "ok"
    );
    assert_eq!(get("/readyz").await.status(), 200);

    // The store becomes unreadable (corrupted by hand): not ready, and says why.
    let good = std::fs::read(&gw.store).unwrap();
    std::fs::write(&gw.store, b"{half a file").unwrap();
    let not_ready = get("/readyz").await;
    assert_eq!(not_ready.status(), 503);
    let reason = not_ready.json::<serde_json::Value>().await.unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("credential store"), "{reason}");
    assert_eq!(get("/healthz").await.status(), 200, "alive, just not ready");

    // Repaired: ready again, without a restart.
    std::fs::write(&gw.store, &good).unwrap();
    assert_eq!(get("/readyz").await.status(), 200);

    assert_eq!(get("/nope").await.status(), 404);
    let post = client()
        .post(format!("{}/healthz", gw.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
}

#[tokio::test]
async fn readyz_waits_until_the_upstream_host_has_resolved() {
    let fake = FakeMollie::start().await;
    let mut gw = GatewayBuilder::new(&fake)
        .env("UPSTREAM__BASE_URL", "http://no-such-host.invalid")
        .prepare();
    gw.spawn_unready();
    // Start-up waits (bounded) for DNS, then serves anyway: poll until the admin answers.
    let url = format!("{}/readyz", gw.admin_url());
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = loop {
        if let Ok(resp) = client().get(&url).send().await {
            break resp;
        }
        assert!(
            Instant::now() < deadline,
            "no admin listener:\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ready.status(), 503);
    let v: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(v["status"], "not ready");
    let reason = v["reason"].as_str().unwrap();
    assert!(
        reason.contains("upstream.base_url") && reason.contains("no-such-host.invalid"),
        "{reason}"
    );
    let health = client()
        .get(format!("{}/healthz", gw.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "alive, just not ready");
}
