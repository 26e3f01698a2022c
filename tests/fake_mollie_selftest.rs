//! Self-test of the fake Mollie server used by the integration tests.

#[path = "support/fake_mollie.rs"]
mod fake_mollie;

use std::time::{Duration, Instant};

use fake_mollie::{FakeMollie, Presented, TokenMode, CLIENT_ID, CLIENT_SECRET, UNAUTHORIZED_BODY};
use serde_json::Value;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn refresh(fake: &FakeMollie, rt: &str) -> reqwest::Response {
    client()
        .post(fake.token_url())
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", rt)])
        .send()
        .await
        .unwrap()
}

async fn json_of(resp: reqwest::Response) -> Value {
    let bytes = resp.bytes().await.unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

async fn access_token(fake: &FakeMollie, rt: &str) -> String {
    let resp = refresh(fake, rt).await;
    assert_eq!(resp.status(), 200);
    json_of(resp).await["access_token"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn refresh_grant_and_echo() {
    let fake = FakeMollie::start().await;
    let rt = fake.add_merchant("m1");
    assert!(rt.starts_with("refresh_m1_"));

    let resp = refresh(&fake, &rt).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "text/html; charset=utf-8",
        "default token content type mimics Mollie's spec"
    );
    let body = json_of(resp).await;
    let at = body["access_token"].as_str().unwrap().to_string();
    assert!(at.starts_with("access_m1_1_"));
    assert_eq!(body["refresh_token"], rt.as_str());
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(
        fake.current_access_token("m1").as_deref(),
        Some(at.as_str())
    );

    let reqs = fake.token_requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].grant_type, "refresh_token");
    assert!(reqs[0].basic_auth_ok);
    assert_eq!(reqs[0].content_type, "application/x-www-form-urlencoded");
    assert_eq!(reqs[0].params["refresh_token"], rt);

    // Echo.
    let resp = client()
        .post(format!(
            "{}/v2/echo/payments?limit=5&x=a%20b",
            fake.base_url()
        ))
        .bearer_auth(&at)
        .header("x-custom", "one")
        .header("content-type", "application/json")
        .body(r#"{"amount":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-fake-mollie"], "echo");
    assert_eq!(resp.headers()["content-type"], "application/hal+json");
    let echo = json_of(resp).await;
    assert_eq!(echo["merchant"], "m1");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/v2/echo/payments");
    assert_eq!(echo["query"], "limit=5&x=a%20b");
    assert_eq!(echo["body"], r#"{"amount":1}"#);
    assert_eq!(echo["headers"]["x-custom"], "one");
    assert_eq!(echo["headers"]["authorization"], format!("Bearer {at}"));

    // Any other path echoes too; query null.
    let echo = json_of(
        client()
            .get(format!("{}/v2/payments/tr_1", fake.base_url()))
            .bearer_auth(&at)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(echo["path"], "/v2/payments/tr_1");
    assert!(echo["query"].is_null());

    // Status pass-through.
    let resp = client()
        .get(format!("{}/v2/status/422", fake.base_url()))
        .bearer_auth(&at)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    assert_eq!(json_of(resp).await["status"], 422);

    // Large body.
    let resp = client()
        .get(format!("{}/v2/large?bytes=300000", fake.base_url()))
        .bearer_auth(&at)
        .send()
        .await
        .unwrap();
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(bytes.len(), 300_000);
    assert!(bytes.iter().all(|b| *b == b'a'));

    // Slow.
    let t = Instant::now();
    let resp = client()
        .get(format!("{}/v2/slow?ms=200", fake.base_url()))
        .bearer_auth(&at)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(t.elapsed() >= Duration::from_millis(200));

    // Unauthenticated.
    let resp = client()
        .get(format!("{}/v2/echo", fake.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["content-type"], "application/hal+json");
    assert_eq!(resp.text().await.unwrap(), UNAUTHORIZED_BODY);

    assert_eq!(fake.token_calls(), 1);
    assert_eq!(fake.token_calls_for("m1"), 1);
    assert_eq!(fake.api_calls_for("m1"), 5);
    assert_eq!(fake.api_401s(), 1);
    assert_eq!(fake.api_calls_total(), 6);
    let api = fake.api_requests();
    assert_eq!(api.len(), 6);
    assert_eq!(api[0].method, "POST");
    assert_eq!(api[0].query.as_deref(), Some("limit=5&x=a%20b"));
    assert_eq!(api[0].body, br#"{"amount":1}"#);
    assert_eq!(api[0].merchant.as_deref(), Some("m1"));
    assert_eq!(api[0].header("x-custom"), Some("one"));
    assert_eq!(api[5].merchant, None);
}

#[tokio::test]
async fn expire_and_revoke() {
    let fake = FakeMollie::start().await;
    let rt = fake.add_merchant("m1");
    let at = access_token(&fake, &rt).await;
    let echo = |at: String| {
        let url = format!("{}/v2/echo", fake.base_url());
        async move { client().get(url).bearer_auth(at).send().await.unwrap() }
    };
    assert_eq!(echo(at.clone()).await.status(), 200);

    fake.expire_tokens("m1");
    let resp = echo(at.clone()).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["content-type"], "application/hal+json");
    let body = json_of(resp).await;
    assert_eq!(body["status"], 401);
    assert_eq!(body["title"], "Unauthorized Request");
    assert_eq!(
        body["_links"]["documentation"]["href"],
        "https://docs.mollie.com/overview/authentication"
    );

    // Refresh still works after expiry; new token is valid.
    let at2 = access_token(&fake, &rt).await;
    assert_ne!(at, at2);
    assert_eq!(echo(at2.clone()).await.status(), 200);

    fake.revoke("m1");
    assert_eq!(echo(at2).await.status(), 401);
    let resp = refresh(&fake, &rt).await;
    assert_eq!(resp.status(), 400);
    let body = json_of(resp).await;
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(body["error_description"], "The refresh token is invalid");

    assert_eq!(fake.token_calls_for("m1"), 3);
    assert_eq!(fake.api_calls_for("m1"), 2);
    assert_eq!(fake.api_401s(), 2);
}

#[tokio::test]
async fn authorization_code_single_use() {
    let fake = FakeMollie::start().await;
    let redirect = "https://gw.example/cb";
    let code = fake.issue_code("m2", Some(redirect));
    assert!(code.starts_with("code_"));
    let exchange = |code: String, redirect: Option<&'static str>| {
        let url = fake.token_url();
        async move {
            let mut form = vec![
                ("grant_type", "authorization_code".to_string()),
                ("code", code),
            ];
            if let Some(r) = redirect {
                form.push(("redirect_uri", r.to_string()));
            }
            client()
                .post(url)
                .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
                .form(&form)
                .send()
                .await
                .unwrap()
        }
    };

    let resp = exchange(code.clone(), Some("https://evil.example/cb")).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(json_of(resp).await["error"], "invalid_grant");

    let resp = exchange(code.clone(), Some(redirect)).await;
    assert_eq!(resp.status(), 200);
    let body = json_of(resp).await;
    let rt = body["refresh_token"].as_str().unwrap().to_string();
    assert!(rt.starts_with("refresh_m2_"));
    assert_eq!(
        fake.current_refresh_token("m2").as_deref(),
        Some(rt.as_str())
    );
    assert!(body["access_token"]
        .as_str()
        .unwrap()
        .starts_with("access_m2_"));

    // Used code rejected.
    let resp = exchange(code, Some(redirect)).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(json_of(resp).await["error"], "invalid_grant");

    // Unknown code.
    let resp = exchange("code_nope".into(), None).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(json_of(resp).await["error"], "invalid_grant");

    // Code without redirect_uri requirement.
    let code2 = fake.issue_code("m3", None);
    assert_eq!(exchange(code2, None).await.status(), 200);

    // The refresh token from the exchange works.
    assert_eq!(refresh(&fake, &rt).await.status(), 200);
    assert_eq!(fake.token_calls_for("m2"), 4);
    assert_eq!(fake.token_calls_for("m3"), 1);
    assert_eq!(fake.token_calls(), 6);
}

#[tokio::test]
async fn json_body_client_auth_and_errors() {
    let fake = FakeMollie::start().await;
    let rt = fake.add_merchant("m1");

    let resp = client()
        .post(fake.token_url())
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .json(&serde_json::json!({"grant_type": "refresh_token", "refresh_token": rt}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(json_of(resp).await["access_token"].is_string());
    assert_eq!(fake.token_requests()[0].content_type, "application/json");

    // Wrong secret.
    let resp = client()
        .post(fake.token_url())
        .basic_auth(CLIENT_ID, Some("wrong"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", &rt)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body = json_of(resp).await;
    assert_eq!(body["error"], "invalid_client");
    assert_eq!(body["error_description"], "Client authentication failed");
    assert!(!fake.token_requests()[1].basic_auth_ok);

    // Missing auth.
    let resp = client()
        .post(fake.token_url())
        .form(&[("grant_type", "refresh_token"), ("refresh_token", &rt)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // Unsupported grant / missing params.
    let post = |form: Vec<(&'static str, &'static str)>| {
        let url = fake.token_url();
        async move {
            client()
                .post(url)
                .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
                .form(&form)
                .send()
                .await
                .unwrap()
        }
    };
    let resp = post(vec![("grant_type", "password")]).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(json_of(resp).await["error"], "unsupported_grant_type");
    let resp = post(vec![("grant_type", "refresh_token")]).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(json_of(resp).await["error"], "invalid_request");
    let resp = post(vec![]).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(json_of(resp).await["error"], "invalid_request");

    assert_eq!(fake.token_calls(), 6);
    assert_eq!(fake.token_calls_for("m1"), 3);
}

#[tokio::test]
async fn lifetime_enforced_and_rotation() {
    let fake = FakeMollie::start().await;
    fake.set_token_lifetime(1);
    let rt = fake.add_merchant("m1");
    let resp = refresh(&fake, &rt).await;
    let body = json_of(resp).await;
    assert_eq!(body["expires_in"], 1);
    let at = body["access_token"].as_str().unwrap().to_string();
    let get = || {
        client()
            .get(format!("{}/v2/echo", fake.base_url()))
            .bearer_auth(&at)
            .send()
    };
    assert_eq!(get().await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(get().await.unwrap().status(), 401);

    fake.set_rotate_refresh_tokens(true);
    let body = json_of(refresh(&fake, &rt).await).await;
    let rt2 = body["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rt, rt2);
    let resp = refresh(&fake, &rt).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(json_of(resp).await["error"], "invalid_grant");
    assert_eq!(refresh(&fake, &rt2).await.status(), 200);
    assert_eq!(fake.token_calls_for("m1"), 4);
}

#[tokio::test]
async fn token_modes() {
    let fake = FakeMollie::start().await;
    fake.add_merchant_with("mx", "refresh_mx_given");
    let rt = "refresh_mx_given".to_string();
    assert_eq!(
        fake.current_refresh_token("mx").as_deref(),
        Some(rt.as_str())
    );

    fake.set_token_mode(TokenMode::ServerError);
    let resp = refresh(&fake, &rt).await;
    assert_eq!(resp.status(), 503);

    fake.set_token_mode(TokenMode::NotJson);
    let resp = refresh(&fake, &rt).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "<html>oops</html>");

    fake.set_token_mode(TokenMode::NoAccessToken);
    let body = json_of(refresh(&fake, &rt).await).await;
    assert!(body.get("access_token").is_none());

    fake.set_token_mode(TokenMode::InvalidClient);
    let resp = refresh(&fake, &rt).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(json_of(resp).await["error"], "invalid_client");

    fake.set_token_mode(TokenMode::Hang);
    let r = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap()
        .post(fake.token_url())
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", &rt)])
        .send()
        .await;
    assert!(r.is_err());

    fake.set_token_mode(TokenMode::Normal);
    fake.set_omit_expires_in(true);
    fake.set_token_content_type("application/json");
    fake.set_token_delay(Duration::from_millis(300));
    let t = Instant::now();
    let resp = refresh(&fake, &rt).await;
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body = json_of(resp).await;
    assert!(body.get("expires_in").is_none());
    assert!(body["access_token"].is_string());

    assert_eq!(fake.token_calls(), 6);
    assert_eq!(fake.token_calls_for("mx"), 6);
}

async fn revoke(fake: &FakeMollie, auth: bool, form: &[(&str, &str)]) -> u16 {
    let mut req = client().delete(fake.token_url()).form(form);
    if auth {
        req = req.basic_auth(CLIENT_ID, Some(CLIENT_SECRET));
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn revocations_are_recorded_and_end_the_authorization() {
    let fake = FakeMollie::start().await;
    let rt = fake.add_merchant("m1");
    let at = access_token(&fake, &rt).await;
    let form = |hint, token| [("token_type_hint", hint), ("token", token)];

    assert_eq!(revoke(&fake, false, &form("refresh_token", &rt)).await, 401);
    fake.set_fail_revocations(true);
    assert_eq!(revoke(&fake, true, &form("refresh_token", &rt)).await, 503);
    fake.set_fail_revocations(false);
    assert_eq!(
        fake.current_refresh_token("m1").as_deref(),
        Some(rt.as_str())
    );

    assert_eq!(revoke(&fake, true, &form("access_token", &at)).await, 204);
    assert_eq!(
        fake.current_refresh_token("m1").as_deref(),
        Some(rt.as_str())
    );
    assert_eq!(revoke(&fake, true, &form("refresh_token", &rt)).await, 204);
    assert_eq!(fake.current_refresh_token("m1"), None);
    assert_eq!(refresh(&fake, &rt).await.status(), 400, "invalid_grant now");
    // Unknown tokens are answered 204 too (RFC 7009).
    assert_eq!(
        revoke(&fake, true, &form("refresh_token", "nope")).await,
        204
    );

    let seen = fake.revocations();
    assert_eq!(seen.len(), 5);
    assert!(!seen[0].basic_auth_ok && seen[1].basic_auth_ok);
    assert_eq!(seen[1].content_type, "application/x-www-form-urlencoded");
    assert_eq!(seen[3].params["token_type_hint"], "refresh_token");
    assert_eq!(seen[3].params["token"], rt);
}

/// Rotation's grace rule: a rotated-out refresh token stays valid until its successor is
/// first used; every grant is recorded with its place in the chain.
#[tokio::test]
async fn rotation_grace_rule_and_presentations() {
    let fake = FakeMollie::start().await;
    fake.set_rotate_refresh_tokens(true);
    fake.set_rotation_grace(true);
    let rt1 = fake.add_merchant("m1");
    let new_refresh = |body: Value| body["refresh_token"].as_str().unwrap().to_string();

    let rt2 = new_refresh(json_of(refresh(&fake, &rt1).await).await);
    assert_eq!(fake.previous_refresh_token("m1"), Some(rt1.clone()));
    // rt2 never used: rt1 (a client that lost rt2 in a crash) still works, once more.
    let rt3 = new_refresh(json_of(refresh(&fake, &rt1).await).await);
    assert_eq!(fake.previous_refresh_token("m1"), Some(rt1.clone()));
    // rt2 was replaced before its first use: dead.
    let resp = refresh(&fake, &rt2).await;
    assert_eq!(json_of(resp).await["error"], "invalid_grant");
    // Using rt3 ends rt1's grace.
    let rt4 = new_refresh(json_of(refresh(&fake, &rt3).await).await);
    assert_eq!(fake.previous_refresh_token("m1"), Some(rt3.clone()));
    assert_eq!(refresh(&fake, &rt1).await.status(), 400);
    assert_eq!(fake.current_refresh_token("m1"), Some(rt4));

    let seen: Vec<(Presented, bool)> = fake
        .presentations()
        .iter()
        .map(|p| (p.presented, p.accepted))
        .collect();
    assert_eq!(
        seen,
        [
            (Presented::Latest, true),
            (Presented::Predecessor, true),
            (Presented::Older, false),
            (Presented::Latest, true),
            (Presented::Older, false),
        ]
    );
    assert!(fake.presentations().iter().all(|p| p.merchant == "m1"));

    // Without the grace rule the old token dies at once.
    fake.set_rotation_grace(false);
    let before = fake.current_refresh_token("m1").unwrap();
    let after = new_refresh(json_of(refresh(&fake, &before).await).await);
    assert_eq!(refresh(&fake, &before).await.status(), 400);
    assert_eq!(
        fake.presentations().last().unwrap().presented,
        Presented::Older
    );
    assert_eq!(refresh(&fake, &after).await.status(), 200);
}
