//! The one runtime of token traffic (`oauth/home.rs`) in the real binary: token calls started
//! by proxied requests and by the admin API all run on the token endpoint service, and a
//! request still served during SIGTERM's grace period can refresh through it.
//!
//! Try it: `cargo test --test token_home`.

mod support;

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::fake_mollie::FakeMollie;
use support::{client, GatewayBuilder};

const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";

/// Polls (bounded) until `cond` holds.
async fn eventually(within: Duration, cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// One admin request with the admin token; the status.
async fn admin(base: &str, method: &str, path: &str, body: Option<serde_json::Value>) -> u16 {
    let mut req = client()
        .request(method.parse().unwrap(), format!("{base}{path}"))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_and_admin_token_calls_share_one_home_that_outlives_the_grace_period() {
    let fake = FakeMollie::start().await;
    let mut gw = GatewayBuilder::new(&fake)
        .env("ADMIN__TOKEN", ADMIN_TOKEN)
        .env("OAUTH__REDIRECT_URI", "http://{admin}/oauth/callback")
        .env("SERVER__GRACE_PERIOD_SECS", "3")
        .prepare();
    gw.onboard(&fake, "m1");
    gw.spawn();
    let admin_url = gw.admin_url();

    // 1. Token calls from the proxy's runtime and from the admin listener's.
    let r = client()
        .get(format!("{}/v2/payments", gw.base_url()))
        .header("X-Merchant-Id", "m1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        admin(&admin_url, "POST", "/admin/merchants/m1/refresh", None).await,
        200
    );
    let code = fake.issue_code("m2", Some(&format!("{admin_url}/oauth/callback")));
    let put = serde_json::json!({ "authorization_code": code });
    assert_eq!(
        admin(&admin_url, "PUT", "/admin/merchants/m2", Some(put)).await,
        200
    );
    // m3 is stored without a token call: its first token comes after SIGTERM.
    let put = serde_json::json!({ "refresh_token": fake.add_merchant("m3") });
    assert_eq!(
        admin(&admin_url, "PUT", "/admin/merchants/m3", Some(put)).await,
        200
    );
    assert_eq!(fake.token_calls(), 3);

    // 2. A request whose head is still arriving when SIGTERM comes.
    let mut raw = tokio::net::TcpStream::connect(&gw.listen).await.unwrap();
    raw.write_all(b"GET /v2/payments HTTP/1.1\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.signal("TERM");
    let announced = eventually(Duration::from_secs(5), || {
        gw.log_text()
            .contains("token endpoint service: shutdown announced")
    })
    .await;
    assert!(announced, "{}", gw.log_text());
    // The service counted the three calls above: all of them ran on its runtime.
    let log = gw.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("shutdown announced"))
        .unwrap_or_default();
    assert!(line.contains("calls=3"), "{line}");
    assert_eq!(fake.token_calls_for("m3"), 0);

    // 3. The rest of the head: m3 needs its first token, during the grace period.
    raw.write_all(b"Host: gw\r\nX-Merchant-Id: m3\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut answer))
        .await
        .expect("no answer within 5 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{answer}\n{}",
        gw.log_text()
    );
    assert_eq!(fake.token_calls_for("m3"), 1);

    let exit = tokio::task::block_in_place(|| gw.wait_exit(Duration::from_secs(15)));
    let exit = exit.unwrap_or_else(|| panic!("still running 15 s after SIGTERM"));
    assert!(exit.success(), "exit {exit}; log:\n{}", gw.log_text());
}
