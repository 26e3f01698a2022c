//! Removal revokes the merchant's authorization at Mollie (`DELETE /oauth2/tokens` at the
//! fake), through the admin API and the CLI; a failed revocation keeps the record `removing`,
//! stops serving the merchant at once and is retried until the fake recovers;
//! `keep_authorization` sends nothing.

mod support;

use std::time::{Duration, Instant};
use support::fake_mollie::FakeMollie;
use support::{client, Gateway, GatewayBuilder};

const ADMIN_TOKEN: &str = "admin-token-for-revocation-tests-42";

fn gateway(fake: &FakeMollie) -> Gateway {
    let mut gw = GatewayBuilder::new(fake)
        .env("ADMIN__TOKEN", ADMIN_TOKEN)
        .prepare();
    gw.onboard(fake, "m1");
    gw.spawn();
    gw
}

/// An admin request: (status, JSON body).
async fn admin(gw: &Gateway, method: &str, path: &str) -> (u16, serde_json::Value) {
    let resp = client()
        .request(method.parse().unwrap(), format!("{}{path}", gw.admin_url()))
        .header("Authorization", format!("Bearer {ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    (status, serde_json::from_str(&body).unwrap_or_default())
}

fn stored(gw: &Gateway, id: &str) -> bool {
    support::read_store(&gw.store)["merchants"]
        .get(id)
        .is_some()
}

/// Revocations the fake received for this hint and token.
fn revoked(fake: &FakeMollie, hint: &str, token: &str) -> usize {
    fake.revocations()
        .iter()
        .filter(|r| {
            r.params.get("token_type_hint").map(String::as_str) == Some(hint)
                && r.params.get("token").map(String::as_str) == Some(token)
        })
        .inspect(|r| {
            assert!(r.basic_auth_ok, "{r:?}");
            assert_eq!(r.content_type, "application/x-www-form-urlencoded");
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_delete_revokes_refresh_and_access_token() {
    let fake = FakeMollie::start().await;
    let gw = gateway(&fake);
    let refresh = fake.current_refresh_token("m1").unwrap();
    assert_eq!(gw.proxied("m1").await.0, 200);
    let access = fake.current_access_token("m1").unwrap();

    let (status, body) = admin(&gw, "DELETE", "/admin/merchants/m1").await;
    assert_eq!(status, 200, "{body}");
    let expected = serde_json::json!({"id": "m1", "removed": true, "revoked_at_mollie": true});
    assert_eq!(body, expected);
    assert_eq!(revoked(&fake, "refresh_token", &refresh), 1);
    assert_eq!(revoked(&fake, "access_token", &access), 1);
    assert_eq!(fake.current_refresh_token("m1"), None, "dead at the fake");
    assert_eq!(gw.proxied("m1").await, (401, "unknown_merchant".into()));
    assert!(!stored(&gw, "m1"));
    let revoked_total = "mollie_gateway_revocations_total{outcome=\"revoked\"}";
    assert_eq!(gw.metric(revoked_total).await, 1.0);
    let log = gw.log_text();
    assert!(log.contains("admin action") && log.contains("m1"), "{log}");
    assert!(!log.contains(&refresh) && !log.contains(&access));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_revocation_stops_serving_and_is_retried() {
    let fake = FakeMollie::start().await;
    let gw = gateway(&fake);
    let refresh = fake.current_refresh_token("m1").unwrap();
    assert_eq!(gw.proxied("m1").await.0, 200);
    fake.set_fail_revocations(true);

    let (status, body) = admin(&gw, "DELETE", "/admin/merchants/m1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["revoked_at_mollie"], false, "{body}");
    assert_eq!(body["removed"], true, "{body}");
    assert_eq!(gw.proxied("m1").await, (401, "unknown_merchant".into()));
    let (_, one) = admin(&gw, "GET", "/admin/merchants/m1").await;
    assert_eq!(one["state"], "removing", "{one}");
    assert!(stored(&gw, "m1"), "the record stays until Mollie confirms");
    let failed = "mollie_gateway_revocations_total{outcome=\"failed\"}";
    assert!(gw.metric(failed).await >= 1.0);

    fake.set_fail_revocations(false);
    let deadline = Instant::now() + Duration::from_secs(15);
    while stored(&gw, "m1") {
        assert!(Instant::now() < deadline, "not retried: {}", gw.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fake.current_refresh_token("m1"), None);
    assert!(revoked(&fake, "refresh_token", &refresh) >= 2);
    let ok = "mollie_gateway_revocations_total{outcome=\"revoked\"}";
    assert_eq!(gw.metric(ok).await, 1.0);
    assert_eq!(gw.proxied("m1").await, (401, "unknown_merchant".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_authorization_sends_nothing() {
    let fake = FakeMollie::start().await;
    let gw = gateway(&fake);
    let refresh = fake.current_refresh_token("m1").unwrap();
    let path = "/admin/merchants/m1?keep_authorization=true";
    let (status, body) = admin(&gw, "DELETE", path).await;
    assert_eq!(status, 200, "{body}");
    let expected = serde_json::json!({"id": "m1", "removed": true, "revoked_at_mollie": false});
    assert_eq!(body, expected);
    assert!(fake.revocations().is_empty());
    assert_eq!(fake.current_refresh_token("m1"), Some(refresh));
    assert!(!stored(&gw, "m1"));
    let (status, _) = admin(&gw, "DELETE", "/admin/merchants/m2?keep=1").await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_remove_revokes_or_exits_3_and_the_gateway_retries() {
    let fake = FakeMollie::start().await;
    let mut gw = GatewayBuilder::new(&fake).prepare();
    let r1 = gw.onboard(&fake, "m1");
    let r2 = gw.onboard(&fake, "m2");
    let r3 = gw.onboard(&fake, "m3");

    let out = gw.cli(&["merchants", "remove", "m1"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("revoked at Mollie"));
    assert_eq!(revoked(&fake, "refresh_token", &r1), 1);
    assert!(!stored(&gw, "m1"));

    let out = gw.cli(&["merchants", "remove", "m2", "--keep-authorization"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(revoked(&fake, "refresh_token", &r2), 0);
    assert!(!stored(&gw, "m2"));

    fake.set_fail_revocations(true);
    let out = gw.cli(&["merchants", "remove", "m3"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("revocation at Mollie failed"), "{stderr}");
    assert!(!stderr.contains(&r3), "{stderr}");
    let list = gw.cli(&["merchants", "list"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains("removing"));

    // A gateway started later is not serving m3 and retries its revocation.
    fake.set_fail_revocations(false);
    gw.spawn();
    assert_eq!(gw.proxied("m3").await, (401, "unknown_merchant".into()));
    let deadline = Instant::now() + Duration::from_secs(15);
    while stored(&gw, "m3") {
        assert!(Instant::now() < deadline, "not retried: {}", gw.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fake.current_refresh_token("m3"), None);
}
