//! Token lifecycle through a real gateway process in front of the fake Mollie: proactive
//! refresh, 401 → refresh → replay, single-flight refreshes, revocation, token endpoint
//! failures and rotated refresh tokens.

mod support;

use std::time::{Duration, Instant};

use support::fake_mollie::{FakeMollie, TokenMode, UNAUTHORIZED_BODY};
use support::{client, read_store, start_with_m1, Gateway};

async fn get(gw: &Gateway, path: &str) -> reqwest::Response {
    client()
        .get(format!("{}{path}", gw.base_url()))
        .header("X-Merchant-Id", "m1")
        .send()
        .await
        .unwrap()
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

/// Sends `n` concurrent GETs for m1; returns their statuses.
async fn concurrent_gets(gw: &Gateway, n: usize) -> Vec<u16> {
    let c = client();
    let url = format!("{}/v2/echo/payments", gw.base_url());
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (c, url) = (c.clone(), url.clone());
        set.spawn(async move {
            let r = c.get(url).header("X-Merchant-Id", "m1").send().await;
            r.map(|r| r.status().as_u16()).unwrap_or(0)
        });
    }
    let mut statuses = Vec::with_capacity(n);
    while let Some(s) = set.join_next().await {
        statuses.push(s.unwrap());
    }
    statuses
}

/// Requests every ~100 ms for ~5 s with 2 s tokens: none may be rejected by the API.
async fn refreshes_before_expiry(background: &str) {
    let fake = FakeMollie::start().await;
    fake.set_token_lifetime(2);
    let gw = start_with_m1(&fake, &[("OAUTH__BACKGROUND_REFRESH", background)]);

    let start = Instant::now();
    let mut n = 0;
    while n < 60 && start.elapsed() < Duration::from_secs(5) {
        let resp = get(&gw, "/v2/echo/payments").await;
        assert_eq!(resp.status(), 200, "request {n} at {:?}", start.elapsed());
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(n >= 20, "only {n} requests in 5 s");
    assert_eq!(
        fake.api_401s(),
        0,
        "a request went out with an expired token"
    );
    assert!(
        fake.token_calls_for("m1") >= 3,
        "only {} token calls in 5 s of 2 s tokens",
        fake.token_calls_for("m1")
    );
    assert_eq!(gw.metric("mollie_gateway_upstream_401_total").await, 0.0);
}

#[tokio::test]
async fn tokens_are_refreshed_before_they_expire() {
    refreshes_before_expiry("true").await;
}

#[tokio::test]
async fn request_driven_refresh_alone_avoids_401s() {
    refreshes_before_expiry("false").await;
}

#[tokio::test]
async fn upstream_401_refreshes_and_replays_a_post_with_its_body() {
    let fake = FakeMollie::start().await;
    let gw = start_with_m1(&fake, &[]);
    assert_eq!(get(&gw, "/v2/echo/warm").await.status(), 200);
    let old = fake.current_access_token("m1").unwrap();
    fake.expire_tokens("m1");

    let body = r#"{"amount":{"currency":"EUR","value":"10.00"},"description":"replay me"}"#;
    let resp = client()
        .post(format!("{}/v2/echo/payments", gw.base_url()))
        .header("X-Merchant-Id", "m1")
        .header("Content-Type", "application/json")
        .header("Idempotency-Key", "idem-replay")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(header(&resp, "x-gateway-error").is_none());
    let echo: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(echo["body"], body);
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["merchant"], "m1");

    let new = fake.current_access_token("m1").unwrap();
    assert_ne!(old, new);
    let posts: Vec<_> = fake
        .api_requests()
        .into_iter()
        .filter(|r| r.path == "/v2/echo/payments")
        .collect();
    assert_eq!(posts.len(), 2, "the POST went upstream exactly twice");
    assert_eq!(posts[0].merchant, None, "first attempt rejected");
    assert_eq!(
        posts[0].header_values("authorization"),
        vec![format!("Bearer {old}")]
    );
    assert_eq!(posts[1].merchant.as_deref(), Some("m1"));
    assert_eq!(
        posts[1].header_values("authorization"),
        vec![format!("Bearer {new}")]
    );
    for p in &posts {
        assert_eq!(p.method, "POST");
        assert_eq!(p.body, body.as_bytes());
        assert_eq!(p.header("idempotency-key"), Some("idem-replay"));
        assert!(p.header("x-merchant-id").is_none());
    }
    assert_eq!(fake.token_calls_for("m1"), 2);
    assert_eq!(
        gw.metric_reaching(r#"mollie_gateway_replays_total{outcome="replayed"}"#, 1.0)
            .await,
        1.0
    );
    assert_eq!(gw.metric("mollie_gateway_upstream_401_total").await, 1.0);
    // The replay is expected: counted and in the access line, not a pingora warning.
    let log = gw.log_eventually("replayed=true").await;
    assert!(!log.contains("Fail to proxy"), "{log}");
    assert!(log.contains("replayed=true"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_token_call_for_concurrent_requests_on_a_cold_merchant() {
    let fake = FakeMollie::start().await;
    fake.set_token_delay(Duration::from_millis(300));
    let gw = start_with_m1(&fake, &[]);

    let statuses = concurrent_gets(&gw, 200).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(fake.api_calls_for("m1"), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_token_call_for_concurrent_requests_on_an_expired_token() {
    let fake = FakeMollie::start().await;
    fake.set_token_lifetime(2);
    let gw = start_with_m1(&fake, &[("OAUTH__BACKGROUND_REFRESH", "false")]);
    assert_eq!(get(&gw, "/v2/echo/warm").await.status(), 200);
    assert_eq!(fake.token_calls(), 1);
    // The next token lives long, so only the expiry of the first one can cause a refresh.
    fake.set_token_lifetime(3600);
    fake.set_token_delay(Duration::from_millis(300));
    tokio::time::sleep(Duration::from_millis(2200)).await;

    let statuses = concurrent_gets(&gw, 200).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(fake.token_calls(), 2, "exactly one new token call");
    assert_eq!(fake.api_401s(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_token_call_for_concurrent_upstream_401s() {
    let fake = FakeMollie::start().await;
    let gw = start_with_m1(&fake, &[]);
    assert_eq!(get(&gw, "/v2/echo/warm").await.status(), 200);
    assert_eq!(fake.token_calls(), 1);
    fake.expire_tokens("m1");
    fake.set_token_delay(Duration::from_millis(300));

    let statuses = concurrent_gets(&gw, 200).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(fake.token_calls(), 2, "exactly one new token call");
    assert!(
        fake.api_401s() >= 1,
        "the cached token was used and rejected"
    );
}

#[tokio::test]
async fn invalid_grant_marks_the_merchant_revoked_durably() {
    let fake = FakeMollie::start().await;
    let mut gw = start_with_m1(&fake, &[]);
    assert_eq!(get(&gw, "/v2/echo/warm").await.status(), 200);
    let calls = fake.token_calls_for("m1");
    fake.revoke("m1");

    let resp = get(&gw, "/v2/echo/payments").await;
    assert_eq!(resp.status(), 401);
    assert_eq!(
        header(&resp, "x-gateway-error").as_deref(),
        Some("authorization_revoked")
    );
    assert_eq!(
        header(&resp, "content-type").as_deref(),
        Some("application/hal+json")
    );
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["status"], 401);
    for i in 0..20 {
        let resp = get(&gw, "/v2/echo/payments").await;
        assert_eq!(resp.status(), 401, "request {i}");
        assert_eq!(
            header(&resp, "x-gateway-error").as_deref(),
            Some("authorization_revoked"),
            "request {i}"
        );
    }
    assert_eq!(
        fake.token_calls_for("m1"),
        calls + 1,
        "one refresh in total"
    );
    assert_eq!(
        gw.metric_reaching(r#"mollie_gateway_token_refreshes_total{grant="refresh_token",outcome="invalid_grant"}"#,
            1.0
        )
        .await,
        1.0
    );
    assert_eq!(read_store(&gw.store)["merchants"]["m1"]["revoked"], true);

    gw.kill9();
    gw.spawn();
    let resp = get(&gw, "/v2/echo/payments").await;
    assert_eq!(resp.status(), 401);
    assert_eq!(
        header(&resp, "x-gateway-error").as_deref(),
        Some("authorization_revoked")
    );
    assert_eq!(
        fake.token_calls_for("m1"),
        calls + 1,
        "no token call after restart"
    );
}

#[tokio::test]
async fn token_endpoint_5xx_answers_503_with_retry_after_then_recovers() {
    let fake = FakeMollie::start().await;
    fake.set_token_mode(TokenMode::ServerError);
    // A backoff of 1-2 s, so that "immediate" is reliably inside it.
    let gw = start_with_m1(
        &fake,
        &[
            ("OAUTH__BACKOFF_MIN_MS", "2000"),
            ("OAUTH__BACKOFF_MAX_MS", "4000"),
        ],
    );

    let resp = get(&gw, "/v2/echo/payments").await;
    assert_eq!(resp.status(), 503);
    assert_eq!(
        header(&resp, "x-gateway-error").as_deref(),
        Some("token_endpoint_unavailable")
    );
    let retry: u64 = header(&resp, "retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1, "Retry-After {retry}");
    assert_eq!(fake.token_calls(), 1);

    let resp = get(&gw, "/v2/echo/payments").await;
    assert_eq!(resp.status(), 503);
    assert_eq!(
        header(&resp, "x-gateway-error").as_deref(),
        Some("token_endpoint_unavailable")
    );
    let retry: u64 = header(&resp, "retry-after").unwrap().parse().unwrap();
    assert!((1..=4).contains(&retry), "Retry-After {retry}");
    assert_eq!(fake.token_calls(), 1, "no token call during the backoff");
    assert_eq!(fake.api_calls_total(), 0);

    fake.set_token_mode(TokenMode::Normal);
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let deadline = Instant::now() + Duration::from_secs(3);
    let status = loop {
        let s = get(&gw, "/v2/echo/payments").await.status().as_u16();
        if s == 200 || Instant::now() >= deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 200, "recovered after Retry-After");
    assert_eq!(fake.token_calls(), 2);
}

#[tokio::test]
async fn a_second_401_passes_through_unchanged_and_is_counted() {
    let fake = FakeMollie::start().await;
    let gw = start_with_m1(&fake, &[]);
    assert_eq!(get(&gw, "/v2/echo/warm").await.status(), 200);
    let before = fake.api_calls_total();

    let resp = get(&gw, "/v2/status/401").await;
    assert_eq!(resp.status(), 401);
    assert!(header(&resp, "x-gateway-error").is_none());
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["title"], "fake");
    assert_eq!(v["detail"], "as asked");
    assert_eq!(
        fake.api_calls_total() - before,
        2,
        "one attempt, one replay"
    );
    assert_eq!(
        gw.metric_reaching(
            r#"mollie_gateway_replays_total{outcome="rejected_again"}"#,
            1.0
        )
        .await,
        1.0
    );
    assert_eq!(
        gw.metric(r#"mollie_gateway_replays_total{outcome="replayed"}"#)
            .await,
        0.0
    );
    assert_eq!(gw.metric("mollie_gateway_upstream_401_total").await, 2.0);
}

#[tokio::test]
async fn a_body_too_large_to_replay_gets_the_401_and_the_token_is_replaced() {
    let fake = FakeMollie::start().await;
    let gw = start_with_m1(&fake, &[]);
    assert_eq!(get(&gw, "/v2/echo/warm").await.status(), 200);
    fake.expire_tokens("m1");

    let big = "x".repeat(100 * 1024);
    let resp = client()
        .post(format!("{}/v2/echo/payments", gw.base_url()))
        .header("X-Merchant-Id", "m1")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(header(&resp, "x-gateway-error").is_none());
    assert_eq!(resp.text().await.unwrap(), UNAUTHORIZED_BODY);
    let posts: Vec<_> = fake
        .api_requests()
        .into_iter()
        .filter(|r| r.path == "/v2/echo/payments")
        .collect();
    assert_eq!(posts.len(), 1, "not replayed");
    assert_eq!(posts[0].body.len(), big.len());
    assert_eq!(
        gw.metric_reaching(
            r#"mollie_gateway_replays_total{outcome="body_too_large"}"#,
            1.0
        )
        .await,
        1.0
    );
    assert_eq!(fake.api_401s(), 1);

    // The rejected token was dropped: the next request goes out with a new one at once.
    let resp = get(&gw, "/v2/echo/payments").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(fake.token_calls_for("m1"), 2);
    assert_eq!(
        fake.api_401s(),
        1,
        "the next request was sent with the token the API had just rejected"
    );
}

#[tokio::test]
async fn token_answers_with_html_content_type_or_without_expires_in_work() {
    let fake = FakeMollie::start().await;
    fake.set_token_content_type("text/html; charset=UTF-8");
    let gw = start_with_m1(&fake, &[]);
    let resp = get(&gw, "/v2/echo/payments").await;
    assert_eq!(resp.status(), 200);
    assert!(header(&resp, "x-gateway-error").is_none());
    assert_eq!(fake.token_calls(), 1);
    drop(gw);

    let fake = FakeMollie::start().await;
    fake.set_omit_expires_in(true);
    let gw = start_with_m1(&fake, &[]);
    for _ in 0..5 {
        assert_eq!(get(&gw, "/v2/echo/payments").await.status(), 200);
    }
    // Without expires_in the token counts as an hour's: cached, not fetched per request.
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(fake.api_calls_for("m1"), 5);
}

#[tokio::test]
async fn token_endpoint_failures_map_to_gateway_errors_and_forward_nothing() {
    let cases = [
        (
            TokenMode::Hang,
            503,
            "token_endpoint_unavailable",
            "unavailable",
        ),
        (
            TokenMode::NotJson,
            502,
            "token_endpoint_bad_response",
            "bad_response",
        ),
        (
            TokenMode::NoAccessToken,
            502,
            "token_endpoint_bad_response",
            "bad_response",
        ),
        (
            TokenMode::InvalidClient,
            503,
            "oauth_misconfigured",
            "misconfigured",
        ),
    ];
    for (mode, status, code, outcome) in cases {
        let fake = FakeMollie::start().await;
        fake.set_token_mode(mode);
        let gw = start_with_m1(&fake, &[]);
        let started = Instant::now();
        let resp = get(&gw, "/v2/echo/payments").await;
        let took = started.elapsed();
        assert_eq!(resp.status(), status, "{mode:?}");
        assert_eq!(
            header(&resp, "x-gateway-error").as_deref(),
            Some(code),
            "{mode:?}"
        );
        assert_eq!(
            header(&resp, "content-type").as_deref(),
            Some("application/hal+json"),
            "{mode:?}"
        );
        if status == 503 {
            let retry: u64 = header(&resp, "retry-after")
                .unwrap_or_else(|| panic!("{mode:?}: no Retry-After"))
                .parse()
                .unwrap();
            assert!(retry >= 1, "{mode:?}");
        }
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["status"], status, "{mode:?}");
        assert!(took < Duration::from_secs(3), "{mode:?} took {took:?}");
        assert_eq!(fake.token_calls(), 1, "{mode:?}");
        assert_eq!(fake.api_calls_total(), 0, "{mode:?}: forwarded to the API");
        let sample = format!(
            r#"mollie_gateway_token_refreshes_total{{grant="refresh_token",outcome="{outcome}"}}"#
        );
        assert_eq!(gw.metric_reaching(&sample, 1.0).await, 1.0, "{mode:?}");
    }
}

#[tokio::test]
async fn rotated_refresh_tokens_are_stored_and_survive_a_restart() {
    let fake = FakeMollie::start().await;
    fake.set_rotate_refresh_tokens(true);
    fake.set_token_lifetime(2);
    let mut gw = start_with_m1(&fake, &[]);
    let original = fake.current_refresh_token("m1").unwrap();

    let start = Instant::now();
    let mut n = 0;
    while n < 20 && start.elapsed() < Duration::from_secs(3) {
        assert_eq!(get(&gw, "/v2/echo/payments").await.status(), 200);
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        fake.token_calls_for("m1") >= 3,
        "only {} token calls",
        fake.token_calls_for("m1")
    );
    // The background refresher replaces the last 2 s token (within 1 s of its issue) by a
    // long one; after that no refresh can race the kill.
    fake.set_token_lifetime(3600);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let deadline = Instant::now() + Duration::from_secs(2);
    let stored = loop {
        let current = fake.current_refresh_token("m1").unwrap();
        let stored = read_store(&gw.store)["merchants"]["m1"]["refresh_token"].clone();
        if stored == current.as_str() || Instant::now() >= deadline {
            break stored;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let current = fake.current_refresh_token("m1").unwrap();
    assert_ne!(current, original, "the refresh token rotated");
    assert_eq!(
        stored,
        current.as_str(),
        "the store holds the current refresh token"
    );
    assert_eq!(read_store(&gw.store)["merchants"]["m1"]["revoked"], false);

    gw.kill9();
    gw.spawn();
    let calls = fake.token_calls_for("m1");
    let resp = get(&gw, "/v2/echo/payments").await;
    assert_eq!(resp.status(), 200, "after restart");
    assert!(header(&resp, "x-gateway-error").is_none());
    assert_eq!(fake.token_calls_for("m1"), calls + 1);
    assert_eq!(
        gw.metric(
            r#"mollie_gateway_token_refreshes_total{grant="refresh_token",outcome="invalid_grant"}"#
        )
        .await,
        0.0
    );
}
