//! The admin API (`/admin/merchants…` on the admin listener) through a real gateway process in
//! front of the fake Mollie: bearer auth, listing without secrets, onboarding by refresh token
//! and by code, removal, forced refresh, and 400s in Mollie's shape for every bad input.

mod support;

use serde_json::Value;
use support::fake_mollie::FakeMollie;
use support::{client, Gateway, GatewayBuilder};

const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";

/// A gateway with the admin API on and `oauth.redirect_uri` pointing at its own callback.
fn gateway(fake: &FakeMollie) -> Gateway {
    GatewayBuilder::new(fake)
        .env("ADMIN__TOKEN", ADMIN_TOKEN)
        .env("OAUTH__REDIRECT_URI", "http://{admin}/oauth/callback")
        .start()
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Asserts a gateway error in Mollie's shape with this status and code.
    fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.header("x-gateway-error"), code, "{}", self.body);
        assert_eq!(self.header("content-type"), "application/hal+json");
        assert_eq!(self.header("content-length"), self.body.len().to_string());
        let v = self.json();
        assert_eq!(v["status"], status);
        assert!(v["title"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(v["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("mollie-gateway: ")));
        assert_eq!(v["_links"]["documentation"]["type"], "text/html");
    }
}

/// One admin request; `auth` is the whole `Authorization` value.
async fn call(
    gw: &Gateway,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<String>,
) -> Answer {
    let mut req = client().request(method.parse().unwrap(), format!("{}{path}", gw.admin_url()));
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    if let Some(b) = body {
        req = req.header("Content-Type", "application/json").body(b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    Answer {
        status,
        headers,
        body: resp.text().await.unwrap(),
    }
}

async fn admin(gw: &Gateway, method: &str, path: &str, body: Option<Value>) -> Answer {
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    call(gw, method, path, Some(&bearer), body.map(|b| b.to_string())).await
}

/// A proxied request for `merchant`: (status, X-Gateway-Error).
/// Registers `id` at the fake, stores it with `PUT /admin/merchants/{id}` and checks that the
/// proxy then serves it.
async fn onboard_via_api(gw: &Gateway, fake: &FakeMollie, id: &str) {
    let refresh = fake.add_merchant(id);
    let put = admin(
        gw,
        "PUT",
        &format!("/admin/merchants/{id}"),
        Some(serde_json::json!({ "refresh_token": refresh })),
    )
    .await;
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(gw.proxied(id).await.0, 200);
}

#[tokio::test]
async fn the_admin_token_guards_every_admin_path() {
    let fake = FakeMollie::start().await;
    let gw = gateway(&fake);
    for (path, method) in [
        ("/admin/merchants", "GET"),
        ("/admin/merchants/m1", "PUT"),
        ("/admin/merchants/m1/refresh", "POST"),
        ("/admin/nothing", "GET"),
    ] {
        let body = Some(r#"{"refresh_token":"x"}"#.to_string());
        call(&gw, method, path, None, body.clone())
            .await
            .assert_error(401, "admin_unauthorized");
        for wrong in [
            "Bearer wrong".to_string(),
            format!("Bearer {ADMIN_TOKEN}x"),
            format!("Basic {ADMIN_TOKEN}"),
            ADMIN_TOKEN.to_string(),
            "Bearer ".to_string(),
        ] {
            let a = call(&gw, method, path, Some(&wrong), body.clone()).await;
            a.assert_error(401, "admin_unauthorized");
            assert!(a.header("www-authenticate").starts_with("Bearer"));
        }
    }
    assert!(fake.token_requests().is_empty());
    let ok = call(
        &gw,
        "GET",
        "/admin/merchants",
        Some(&format!("bearer {ADMIN_TOKEN}")),
        None,
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.header("content-type"), "application/json");
    assert_eq!(ok.header("content-length"), ok.body.len().to_string());
    assert_eq!(ok.json(), serde_json::json!([]));
    // Metrics and health stay open.
    assert_eq!(call(&gw, "GET", "/healthz", None, None).await.status, 200);
}

#[tokio::test]
async fn without_an_admin_token_the_api_does_not_exist() {
    let fake = FakeMollie::start().await;
    let gw = GatewayBuilder::new(&fake).start();
    for auth in [None, Some("Bearer "), Some("Bearer anything")] {
        for (method, path) in [
            ("GET", "/admin/merchants"),
            ("PUT", "/admin/merchants/m1"),
            ("DELETE", "/admin/merchants/m1"),
            ("POST", "/admin/merchants/m1/refresh"),
            ("GET", "/admin"),
        ] {
            call(&gw, method, path, auth, Some("{}".into()))
                .await
                .assert_error(404, "admin_not_found");
        }
    }
    assert_eq!(call(&gw, "GET", "/healthz", None, None).await.status, 200);
}

#[tokio::test]
async fn listing_shows_state_and_never_a_token() {
    let fake = FakeMollie::start().await;
    let refresh = fake.add_merchant("m1");
    let gw = gateway(&fake);
    let put = admin(
        &gw,
        "PUT",
        "/admin/merchants/m1",
        Some(serde_json::json!({"refresh_token": refresh})),
    )
    .await;
    assert_eq!(put.status, 200, "{}", put.body);
    assert!(!put.body.contains(&refresh));
    assert_eq!(gw.proxied("m1").await.0, 200);
    let access = fake.current_access_token("m1").unwrap();

    let list = admin(&gw, "GET", "/admin/merchants", None).await;
    assert_eq!(list.status, 200);
    assert!(!list.body.contains(&refresh), "{}", list.body);
    assert!(!list.body.contains(&access), "{}", list.body);
    let v = list.json();
    let all = v.as_array().unwrap();
    assert_eq!(all.len(), 1);
    let m1 = &all[0];
    assert_eq!(m1["id"], "m1");
    assert_eq!(m1["state"], "active");
    assert!(m1["access_token_expires_at"].as_u64().unwrap() > support_now());
    assert!(m1["last_refresh_at"].as_u64().is_some());
    assert_eq!(m1["last_refresh_outcome"], "ok");
    assert_eq!(m1["credential_kind"], "oauth");
    let keys: Vec<&String> = m1.as_object().unwrap().keys().collect();
    assert_eq!(
        keys.len(),
        6,
        "only id, credential kind, state, expiry, last refresh and outcome: {keys:?}"
    );

    let one = admin(&gw, "GET", "/admin/merchants/m1", None).await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json(), *m1);
    assert!(!one.body.contains(&access) && !one.body.contains(&refresh));
    admin(&gw, "GET", "/admin/merchants/nobody", None)
        .await
        .assert_error(404, "admin_not_found");

    // A merchant only the store knows (added by the CLI while the gateway runs) is listed too.
    let refresh2 = fake.add_merchant("m2");
    let out = gw.cli(&["merchants", "add", "m2", "--refresh-token", &refresh2]);
    assert!(out.status.success());
    let list = admin(&gw, "GET", "/admin/merchants", None).await;
    assert!(!list.body.contains(&refresh2));
    let ids: Vec<Value> = list
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(ids, vec!["m1", "m2"]);
    assert!(!gw.log_text().contains(&refresh) && !gw.log_text().contains(&access));
}

fn support_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn put_with_a_refresh_token_onboards_a_merchant() {
    let fake = FakeMollie::start().await;
    let refresh = fake.add_merchant("m2");
    let gw = gateway(&fake);
    assert_eq!(gw.proxied("m2").await, (401, "unknown_merchant".into()));
    let put = admin(
        &gw,
        "PUT",
        "/admin/merchants/m2",
        Some(serde_json::json!({"refresh_token": refresh})),
    )
    .await;
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(put.json()["id"], "m2");
    assert_eq!(put.json()["state"], "active");
    assert_eq!(gw.proxied("m2").await, (200, String::new()));
    assert_eq!(fake.api_calls_for("m2"), 1);
    let store = support::read_store(&gw.store).to_string();
    assert!(store.contains("m2") && store.contains(&refresh));
}

#[tokio::test]
async fn put_with_a_code_exchanges_it_at_once() {
    let fake = FakeMollie::start().await;
    let gw = gateway(&fake);
    let redirect = format!("http://{}/oauth/callback", gw.admin);

    // Default redirect URI: oauth.redirect_uri.
    let code = fake.issue_code("m3", Some(&redirect));
    let put = admin(
        &gw,
        "PUT",
        "/admin/merchants/m3",
        Some(serde_json::json!({"authorization_code": code})),
    )
    .await;
    assert_eq!(put.status, 200, "{}", put.body);
    assert!(!put.body.contains(&code));
    assert!(put.json()["access_token_expires_at"].as_u64().is_some());
    let reqs = fake.token_requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].grant_type, "authorization_code");
    assert_eq!(reqs[0].params["code"], code);
    assert_eq!(reqs[0].params["redirect_uri"], redirect);
    assert_eq!(gw.proxied("m3").await.0, 200);
    assert_eq!(
        fake.token_requests().len(),
        1,
        "the exchanged access token is used"
    );

    // An explicit redirect URI wins.
    let other = "https://example.com/mollie/return";
    let code = fake.issue_code("m4", Some(other));
    let put = admin(
        &gw,
        "PUT",
        "/admin/merchants/m4",
        Some(serde_json::json!({"authorization_code": code, "redirect_uri": other})),
    )
    .await;
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(fake.token_requests()[1].params["redirect_uri"], other);
    assert_eq!(gw.proxied("m4").await.0, 200);

    // A used code is refused by Mollie: a token error, nothing stored.
    let again = admin(
        &gw,
        "PUT",
        "/admin/merchants/m5",
        Some(serde_json::json!({"authorization_code": code, "redirect_uri": other})),
    )
    .await;
    again.assert_error(502, "token_endpoint_bad_response");
    assert!(!again.body.contains(&code));
    admin(&gw, "GET", "/admin/merchants/m5", None)
        .await
        .assert_error(404, "admin_not_found");
}

#[tokio::test]
async fn delete_forgets_the_merchant() {
    let fake = FakeMollie::start().await;
    let gw = gateway(&fake);
    onboard_via_api(&gw, &fake, "m1").await;
    let del = admin(&gw, "DELETE", "/admin/merchants/m1", None).await;
    assert_eq!(del.status, 200, "{}", del.body);
    assert_eq!(
        del.json(),
        serde_json::json!({"id": "m1", "removed": true, "revoked_at_mollie": true})
    );
    assert_eq!(gw.proxied("m1").await, (401, "unknown_merchant".into()));
    assert!(!support::read_store(&gw.store).to_string().contains("m1"));
    admin(&gw, "DELETE", "/admin/merchants/m1", None)
        .await
        .assert_error(404, "admin_not_found");
    assert_eq!(
        admin(&gw, "GET", "/admin/merchants", None).await.json(),
        serde_json::json!([])
    );
}

#[tokio::test]
async fn post_refresh_makes_exactly_one_token_call() {
    let fake = FakeMollie::start().await;
    let gw = gateway(&fake);
    onboard_via_api(&gw, &fake, "m1").await;
    let before = fake.token_calls_for("m1");
    let old_access = fake.current_access_token("m1").unwrap();

    let post = admin(&gw, "POST", "/admin/merchants/m1/refresh", None).await;
    assert_eq!(post.status, 200, "{}", post.body);
    assert_eq!(fake.token_calls_for("m1"), before + 1);
    let v = post.json();
    assert_eq!(v["id"], "m1");
    assert_eq!(v["last_refresh_outcome"], "ok");
    let new_access = fake.current_access_token("m1").unwrap();
    assert_ne!(old_access, new_access);
    assert!(!post.body.contains(&new_access));
    assert_eq!(gw.proxied("m1").await.0, 200);
    assert_eq!(fake.token_calls_for("m1"), before + 1);

    // A merchant only the store knows is loaded and refreshed, once.
    let refresh2 = fake.add_merchant("m2");
    assert!(gw
        .cli(&["merchants", "add", "m2", "--refresh-token", &refresh2])
        .status
        .success());
    let post = admin(&gw, "POST", "/admin/merchants/m2/refresh", None).await;
    assert_eq!(post.status, 200, "{}", post.body);
    assert_eq!(fake.token_calls_for("m2"), 1);

    admin(&gw, "POST", "/admin/merchants/nobody/refresh", None)
        .await
        .assert_error(404, "admin_not_found");

    // A revoked refresh token: the token error's own code.
    fake.revoke("m1");
    admin(&gw, "POST", "/admin/merchants/m1/refresh", None)
        .await
        .assert_error(401, "authorization_revoked");
    assert_eq!(
        admin(&gw, "GET", "/admin/merchants/m1", None).await.json()["state"],
        "revoked"
    );
}

#[tokio::test]
async fn every_bad_input_is_a_400_in_mollies_shape() {
    let fake = FakeMollie::start().await;
    let gw = gateway(&fake);
    let secret = "refresh_do_not_echo_me_123";
    let bodies = [
        "not json".to_string(),
        "".to_string(),
        "{".to_string(),
        format!("\"{secret}\""),
        format!("[\"{secret}\"]"),
        "{}".to_string(),
        format!(r#"{{"refresh_token":"{secret}","extra":1}}"#),
        format!(r#"{{"refresh_tokn":"{secret}"}}"#),
        format!(r#"{{"refresh_token":"{secret}","authorization_code":"code_x"}}"#),
        r#"{"redirect_uri":"https://x/cb"}"#.to_string(),
        r#"{"refresh_token":""}"#.to_string(),
        r#"{"authorization_code":""}"#.to_string(),
        r#"{"refresh_token":12}"#.to_string(),
        format!(r#"{{"refresh_token":"{secret}","redirect_uri":"https://x/cb"}}"#),
        r#"{"authorization_code":"code_x","redirect_uri":"not a url"}"#.to_string(),
        format!(r#"{{"refresh_token":"{secret}","refresh_token":"{secret}"}}"#),
    ];
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    for body in bodies {
        let a = call(
            &gw,
            "PUT",
            "/admin/merchants/m1",
            Some(&bearer),
            Some(body.clone()),
        )
        .await;
        a.assert_error(400, "admin_bad_request");
        assert!(!a.body.contains(secret), "{body} → {}", a.body);
    }
    let a = call(
        &gw,
        "PUT",
        "/admin/merchants/m1",
        Some(&bearer),
        Some(r#"{"nope":1}"#.into()),
    )
    .await;
    assert!(
        a.json()["detail"]
            .as_str()
            .unwrap()
            .contains("unknown field `nope`"),
        "{}",
        a.body
    );

    // Bad ids, in every endpoint that takes one.
    let long = "m".repeat(129);
    for id in ["a%20b", "%zz", "caf%C3%A9", long.as_str(), "%00"] {
        for (method, suffix) in [
            ("GET", ""),
            ("PUT", ""),
            ("DELETE", ""),
            ("POST", "/refresh"),
        ] {
            let body = Some(format!(r#"{{"refresh_token":"{secret}"}}"#));
            let a = call(
                &gw,
                method,
                &format!("/admin/merchants/{id}{suffix}"),
                Some(&bearer),
                body,
            )
            .await;
            a.assert_error(400, "admin_bad_request");
        }
    }

    // Over 64 KiB: refused, and the connection still answers.
    let big = format!(r#"{{"refresh_token":"{}"}}"#, "r".repeat(64 * 1024));
    call(&gw, "PUT", "/admin/merchants/m1", Some(&bearer), Some(big))
        .await
        .assert_error(400, "admin_bad_request");
    let huge = "x".repeat(3 * 1024 * 1024);
    let resp = client()
        .put(format!("{}/admin/merchants/m1", gw.admin_url()))
        .header("Authorization", &bearer)
        .body(huge)
        .send()
        .await;
    if let Ok(resp) = resp {
        // The gateway may close the connection before the client finished sending.
        assert_eq!(resp.status(), 400);
    }

    // Wrong methods and unknown paths.
    let a = call(&gw, "POST", "/admin/merchants", Some(&bearer), None).await;
    a.assert_error(405, "admin_method_not_allowed");
    assert_eq!(a.header("allow"), "GET");
    call(
        &gw,
        "GET",
        "/admin/merchants/m1/refresh",
        Some(&bearer),
        None,
    )
    .await
    .assert_error(405, "admin_method_not_allowed");
    call(&gw, "GET", "/admin/other", Some(&bearer), None)
        .await
        .assert_error(404, "admin_not_found");

    // Nothing was stored and nothing reached the token endpoint.
    assert!(fake.token_requests().is_empty());
    assert_eq!(
        admin(&gw, "GET", "/admin/merchants", None).await.json(),
        serde_json::json!([])
    );
    assert!(!gw.log_text().contains(secret));
}
