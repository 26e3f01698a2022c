//! Forwarding: what reaches the upstream and what comes back, through a real gateway process
//! in front of the fake Mollie.

mod support;

use support::fake_mollie::FakeMollie;
use support::{client, GatewayBuilder};

#[tokio::test]
async fn forwards_method_path_query_body_and_the_response_back() {
    let fake = FakeMollie::start().await;
    let mut gw = GatewayBuilder::new(&fake).prepare();
    gw.onboard(&fake, "m1");
    gw.spawn();

    for method in ["GET", "POST", "PATCH", "DELETE"] {
        let body = format!("{{\"amount\":{{\"value\":\"10.00\"}},\"m\":\"{method}\"}}");
        let resp = client()
            .request(
                method.parse().unwrap(),
                format!(
                    "{}/v2/echo/payments/tr_1?limit=5&from=tr_a%20b",
                    gw.base_url()
                ),
            )
            .header("X-Merchant-Id", "m1")
            .header(
                // A live key: a test key would get `testmode` added (tests/rewrite.rs).
                "Authorization",
                "Bearer live_gatewaygatewaygatewaygatewayga",
            )
            .header("Idempotency-Key", "idem-123")
            .header("Content-Type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{method}");
        assert_eq!(resp.headers()["x-fake-mollie"], "echo");
        assert_eq!(resp.headers()["content-type"], "application/hal+json");
        let echo: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(echo["method"], method);
        assert_eq!(echo["path"], "/v2/echo/payments/tr_1");
        assert_eq!(echo["query"], "limit=5&from=tr_a%20b");
        assert_eq!(echo["body"], body);
        assert_eq!(echo["merchant"], "m1");
    }

    let seen = fake.api_requests();
    assert_eq!(seen.len(), 4);
    let token = fake.current_access_token("m1").unwrap();
    for req in &seen {
        // The caller's dummy key is gone, the merchant's token is the only Authorization.
        assert_eq!(
            req.header_values("authorization"),
            vec![format!("Bearer {token}")]
        );
        assert!(req.header("x-merchant-id").is_none());
        assert_eq!(req.header("idempotency-key"), Some("idem-123"));
        assert_eq!(req.header("host"), Some(fake.addr().to_string().as_str()));
    }
}

#[tokio::test]
async fn upstream_statuses_and_bodies_pass_through_unchanged() {
    let fake = FakeMollie::start().await;
    let mut gw = GatewayBuilder::new(&fake).prepare();
    gw.onboard(&fake, "m1");
    gw.spawn();

    let resp = client()
        .post(format!("{}/v2/status/422", gw.base_url()))
        .header("X-Merchant-Id", "m1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    assert!(resp.headers().get("x-gateway-error").is_none());
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["detail"], "as asked");

    // A 1 MiB body streams back intact.
    let resp = client()
        .get(format!("{}/v2/large?bytes=1048576", gw.base_url()))
        .header("X-Merchant-Id", "m1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.bytes().await.unwrap();
    assert_eq!(body.len(), 1_048_576);
    assert!(body.iter().all(|b| *b == b'a'));
}

#[tokio::test]
async fn absolute_form_targets_and_host_headers_cannot_redirect_the_upstream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fake = FakeMollie::start().await;
    let mut gw = GatewayBuilder::new(&fake).prepare();
    gw.onboard(&fake, "m1");
    gw.spawn();

    let mut s = tokio::net::TcpStream::connect(&gw.listen).await.unwrap();
    s.write_all(
        b"GET http://evil.example:9/v2/echo/abs?x=1 HTTP/1.1\r\nHost: evil.example:9\r\n\
          X-Merchant-Id: m1\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let seen = fake.api_requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v2/echo/abs");
    assert_eq!(seen[0].query.as_deref(), Some("x=1"));
    assert_eq!(
        seen[0].header("host"),
        Some(fake.addr().to_string().as_str())
    );
}
