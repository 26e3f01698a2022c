//! Drop-in for API-key SDKs: `testmode`/`profileId` added per merchant, HAL links kept on the
//! gateway (DESIGN.md §5), against the real gateway and the fake Mollie.

mod support;

use support::fake_mollie::FakeMollie;
use support::{client, Gateway, GatewayBuilder};

const TEST_KEY: &str = "Bearer test_gatewaygatewaygatewaygatewayga";
const LIVE_KEY: &str = "Bearer live_gatewaygatewaygatewaygatewayga";

fn onboard(gw: &Gateway, fake: &FakeMollie, ids: &[&str]) {
    for id in ids {
        gw.onboard(fake, id);
    }
}

async fn send(
    gw: &Gateway,
    method: &str,
    path: &str,
    merchant: &str,
    key: &str,
    body: Option<&str>,
) -> reqwest::Response {
    let mut req = client()
        .request(method.parse().unwrap(), format!("{}{path}", gw.base_url()))
        .header("X-Merchant-Id", merchant)
        .header("Authorization", key);
    if let Some(b) = body {
        req = req
            .header("Content-Type", "application/json")
            .body(b.to_string());
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn testmode_follows_the_callers_key_and_the_merchants_mode() {
    let fake = FakeMollie::start().await;
    let mut gw = GatewayBuilder::new(&fake)
        .toml("[merchants.defaults.always]\ntestmode = \"always\"\n[merchants.defaults.never]\ntestmode = \"never\"\n")
        .prepare();
    onboard(&gw, &fake, &["m1", "always", "never"]);
    gw.spawn();

    let cases = [
        ("m1", TEST_KEY, "/v2/echo/methods", Some("testmode=true")),
        (
            "m1",
            TEST_KEY,
            "/v2/echo/methods?locale=nl_NL",
            Some("locale=nl_NL&testmode=true"),
        ),
        (
            "m1",
            TEST_KEY,
            "/v2/echo/methods?testmode=false",
            Some("testmode=false"),
        ),
        ("m1", LIVE_KEY, "/v2/echo/methods", None),
        (
            "always",
            LIVE_KEY,
            "/v2/echo/methods",
            Some("testmode=true"),
        ),
        ("never", TEST_KEY, "/v2/echo/methods", None),
    ];
    for (merchant, key, path, query) in cases {
        let resp = send(&gw, "GET", path, merchant, key, None).await;
        assert_eq!(resp.status(), 200);
        let last = fake.api_requests().pop().unwrap();
        assert_eq!(last.query.as_deref(), query, "{merchant} {key} {path}");
    }
    // DELETE without a body: in the query too.
    send(
        &gw,
        "DELETE",
        "/v2/echo/payments/tr_1",
        "m1",
        TEST_KEY,
        None,
    )
    .await;
    assert_eq!(
        fake.api_requests().pop().unwrap().query.as_deref(),
        Some("testmode=true")
    );
}

#[tokio::test]
async fn json_bodies_get_testmode_and_profile_id_with_a_correct_length() {
    let fake = FakeMollie::start().await;
    let mut gw = GatewayBuilder::new(&fake)
        .toml("[merchants.defaults.m1]\nprofile_id = \"pfl_test123\"\n")
        .prepare();
    onboard(&gw, &fake, &["m1", "m2"]);
    gw.spawn();

    let body = r#"{"amount":{"currency":"EUR","value":"10.00"},"description":"Order 1"}"#;
    let resp = send(&gw, "POST", "/v2/echo/payments", "m1", TEST_KEY, Some(body)).await;
    assert_eq!(resp.status(), 200);
    let seen = fake.api_requests().pop().unwrap();
    let sent: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(sent["testmode"], true);
    assert_eq!(sent["profileId"], "pfl_test123");
    assert_eq!(sent["description"], "Order 1");
    assert_eq!(
        seen.header("content-length").unwrap(),
        seen.body.len().to_string(),
        "Content-Length matches the rewritten body"
    );
    assert!(seen.header("transfer-encoding").is_none());

    // What the caller sent wins; PATCH gets testmode but never profileId.
    let own = r#"{"testmode":false,"profileId":"pfl_mine"}"#;
    send(&gw, "POST", "/v2/echo/payments", "m1", TEST_KEY, Some(own)).await;
    assert_eq!(fake.api_requests().pop().unwrap().body, own.as_bytes());
    send(
        &gw,
        "PATCH",
        "/v2/echo/payments/tr_1",
        "m1",
        TEST_KEY,
        Some("{}"),
    )
    .await;
    assert_eq!(
        fake.api_requests().pop().unwrap().body,
        br#"{"testmode":true}"#
    );
    // A live key and no profile configured: untouched.
    send(&gw, "POST", "/v2/echo/payments", "m2", LIVE_KEY, Some(body)).await;
    assert_eq!(fake.api_requests().pop().unwrap().body, body.as_bytes());

    // Non-JSON and oversized bodies are forwarded untouched.
    let form = client()
        .post(format!("{}/v2/echo/payments", gw.base_url()))
        .header("X-Merchant-Id", "m1")
        .header("Authorization", TEST_KEY)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("amount=10")
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 200);
    assert_eq!(fake.api_requests().pop().unwrap().body, b"amount=10");
    let big = format!(r#"{{"description":"{}"}}"#, "x".repeat(70 * 1024));
    send(&gw, "POST", "/v2/echo/payments", "m1", TEST_KEY, Some(&big)).await;
    assert_eq!(fake.api_requests().pop().unwrap().body, big.as_bytes());
}

#[tokio::test]
async fn a_replayed_post_carries_the_rewritten_body_again() {
    let fake = FakeMollie::start().await;
    let mut gw = GatewayBuilder::new(&fake)
        .toml("[merchants.defaults.m1]\nprofile_id = \"pfl_replay\"\n")
        .prepare();
    onboard(&gw, &fake, &["m1"]);
    gw.spawn();
    assert_eq!(
        send(&gw, "GET", "/v2/echo/warm", "m1", LIVE_KEY, None)
            .await
            .status(),
        200
    );
    fake.expire_tokens("m1");
    let body = r#"{"amount":{"currency":"EUR","value":"1.00"}}"#;
    let resp = send(&gw, "POST", "/v2/echo/payments", "m1", TEST_KEY, Some(body)).await;
    assert_eq!(resp.status(), 200);
    let seen = fake.api_requests();
    let (rejected, replayed) = (&seen[seen.len() - 2], &seen[seen.len() - 1]);
    assert!(rejected.merchant.is_none() && replayed.merchant.is_some());
    assert_eq!(rejected.body, replayed.body);
    let sent: serde_json::Value = serde_json::from_slice(&replayed.body).unwrap();
    assert_eq!(
        (sent["testmode"].clone(), sent["profileId"].clone()),
        (true.into(), "pfl_replay".into())
    );
}

#[tokio::test]
async fn hal_links_on_the_upstream_host_point_back_at_the_gateway() {
    let fake = FakeMollie::start().await;
    let mut gw = GatewayBuilder::new(&fake)
        .env("UPSTREAM__PUBLIC_BASE_URL", "http://{listen}")
        .prepare();
    onboard(&gw, &fake, &["m1"]);
    gw.spawn();
    let up = fake.base_url();
    let doc = format!(
        r#"{{"count":1,"_links":{{"self":{{"href":"{up}/v2/payments?limit=1","type":"application/hal+json"}},"next":{{"href":"{up}/v2/payments?from=tr_2&limit=1","type":"application/hal+json"}},"checkout":{{"href":"https://www.mollie.com/checkout/select-method/x","type":"text/html"}},"documentation":{{"href":"https://docs.mollie.com/reference/list-payments","type":"text/html"}}}}}}"#
    );
    let url = format!("/v2/raw?body={}", urlencode(&doc));
    let resp = send(&gw, "GET", &url, "m1", LIVE_KEY, None).await;
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    let me = gw.base_url();
    assert_eq!(
        v["_links"]["self"]["href"],
        format!("{me}/v2/payments?limit=1")
    );
    assert_eq!(
        v["_links"]["next"]["href"],
        format!("{me}/v2/payments?from=tr_2&limit=1")
    );
    assert_eq!(
        v["_links"]["checkout"]["href"],
        "https://www.mollie.com/checkout/select-method/x"
    );
    assert_eq!(v["count"], 1);
    // Upstream was asked for an uncompressed answer.
    let last = fake.api_requests().pop().unwrap();
    assert_eq!(last.header("accept-encoding"), Some("identity"));

    // The Ruby SDK follows api.mollie.com links by their path: left alone for it.
    let url = format!("/v2/raw?body={}", urlencode(&doc));
    let resp = client()
        .get(format!("{}{url}", gw.base_url()))
        .header("X-Merchant-Id", "m1")
        .header("User-Agent", "Mollie/4.18.0 Ruby/3.3.5 OpenSSL/3.0.13")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), doc);

    // Non-JSON answers are never touched.
    let url = format!("/v2/raw?ct=text/plain&body={}", urlencode(&doc));
    let resp = send(&gw, "GET", &url, "m1", LIVE_KEY, None).await;
    assert_eq!(resp.text().await.unwrap(), doc);
}

#[tokio::test]
async fn without_public_base_url_links_are_left_alone() {
    let fake = FakeMollie::start().await;
    let mut gw = GatewayBuilder::new(&fake).prepare();
    onboard(&gw, &fake, &["m1"]);
    gw.spawn();
    let doc = format!(
        r#"{{"_links":{{"self":{{"href":"{}/v2/x"}}}}}}"#,
        fake.base_url()
    );
    let url = format!("/v2/raw?body={}", urlencode(&doc));
    let resp = send(&gw, "GET", &url, "m1", LIVE_KEY, None).await;
    assert_eq!(resp.headers()["content-length"], doc.len().to_string());
    assert_eq!(resp.text().await.unwrap(), doc);
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
