//! OAuth onboarding (`/oauth/connect`, `/oauth/callback` on the admin listener) through a real
//! gateway process in front of the fake Mollie: the redirect to Mollie, the signed state's
//! round trip, and every way a callback is refused. Expiry on a clock is unit-tested in
//! `src/admin/state.rs`; here an expired state is minted with the configured secret.

mod support;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use std::collections::HashMap;
use support::fake_mollie::{FakeMollie, CLIENT_ID};
use support::{Gateway, GatewayBuilder};

const STATE_SECRET: &str = "state-secret-for-tests";

fn gateway(fake: &FakeMollie) -> Gateway {
    GatewayBuilder::new(fake)
        .env("ADMIN__TOKEN", "admin-token-not-needed-here")
        .env("OAUTH__REDIRECT_URI", "http://{admin}/oauth/callback")
        .env("OAUTH__STATE_SECRET", STATE_SECRET)
        .start()
}

fn redirect_uri(gw: &Gateway) -> String {
    format!("http://{}/oauth/callback", gw.admin)
}

/// A client that shows redirects instead of following them.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

struct Page {
    status: u16,
    location: Option<String>,
    content_type: String,
    html: String,
}

async fn get(gw: &Gateway, path_and_query: &str) -> Page {
    let resp = browser()
        .get(format!("{}{path_and_query}", gw.admin_url()))
        .send()
        .await
        .unwrap();
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let location = header("location");
    let content_type = header("content-type").unwrap_or_default();
    let length = header("content-length");
    let status = resp.status().as_u16();
    let html = resp.text().await.unwrap();
    assert_eq!(length, Some(html.len().to_string()));
    Page {
        status,
        location,
        content_type,
        html,
    }
}

/// `/oauth/connect` for `merchant`: the authorize URL's query parameters.
async fn connect(gw: &Gateway, merchant: &str) -> HashMap<String, String> {
    let page = get(gw, &format!("/oauth/connect?merchant={merchant}")).await;
    assert_eq!(page.status, 302, "{}", page.html);
    let url = url::Url::parse(&page.location.expect("Location")).unwrap();
    url.query_pairs().into_owned().collect()
}

fn callback_path(code: Option<&str>, state: &str) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    if let Some(c) = code {
        q.append_pair("code", c);
    }
    q.append_pair("state", state);
    format!("/oauth/callback?{}", q.finish())
}

async fn proxied_status(gw: &Gateway, merchant: &str) -> u16 {
    support::client()
        .get(format!("{}/v2/echo/x", gw.base_url()))
        .header("X-Merchant-Id", merchant)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A state signed with the test secret, as the gateway would make it.
fn mint_state(merchant: &str, expires: u64) -> String {
    let payload = serde_json::json!({"m": merchant, "e": expires, "n": "bm9uY2Vub25jZQ"});
    let payload = B64.encode(payload.to_string());
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, STATE_SECRET.as_bytes());
    let tag = ring::hmac::sign(&key, payload.as_bytes());
    format!("{payload}.{}", B64.encode(tag.as_ref()))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn connect_redirects_to_mollie_with_every_parameter() {
    let fake = FakeMollie::start().await;
    let gw = GatewayBuilder::new(&fake)
        .env("OAUTH__REDIRECT_URI", "http://{admin}/oauth/callback")
        .env(
            "OAUTH__AUTHORIZE_URL",
            "https://my.mollie.test/oauth2/authorize?locale=nl_NL",
        )
        .env("OAUTH__SCOPES", "payments.read organizations.read")
        .start();
    let page = get(&gw, "/oauth/connect?merchant=org_1").await;
    assert_eq!(page.status, 302);
    assert!(page.content_type.starts_with("text/html"));
    assert!(page.html.contains("org_1"));
    let url = url::Url::parse(page.location.as_deref().unwrap()).unwrap();
    assert_eq!(url.scheme(), "https");
    assert_eq!(url.host_str(), Some("my.mollie.test"));
    assert_eq!(url.path(), "/oauth2/authorize");
    let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(q["locale"], "nl_NL");
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["redirect_uri"], redirect_uri(&gw));
    assert_eq!(q["scope"], "payments.read organizations.read");
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["approval_prompt"], "auto");
    let (payload, tag) = q["state"].split_once('.').expect("payload.signature");
    assert_eq!(B64.decode(tag).unwrap().len(), 32);
    let payload: serde_json::Value = serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap();
    assert_eq!(payload["m"], "org_1");
    let expires = payload["e"].as_u64().unwrap();
    assert!((now() + 590..=now() + 610).contains(&expires), "{expires}");
    // Every state is different.
    assert_ne!(connect(&gw, "org_1").await["state"], q["state"]);

    // Bad merchant ids: a page, no redirect; anything echoed is escaped.
    for bad in ["", "a%20b", &"m".repeat(129)] {
        let page = get(&gw, &format!("/oauth/connect?merchant={bad}")).await;
        assert_eq!(page.status, 400, "{bad}");
        assert!(page.location.is_none());
    }
    assert_eq!(get(&gw, "/oauth/connect").await.status, 400);
    let page = get(
        &gw,
        "/oauth/connect?merchant=%3Cscript%3Ealert(1)%3C/script%3E",
    )
    .await;
    assert_eq!(page.status, 302);
    assert!(!page.html.contains("<script>"), "{}", page.html);
    assert!(page.html.contains("&lt;script&gt;"));
}

#[tokio::test]
async fn the_state_round_trip_stores_the_merchant_once() {
    let fake = FakeMollie::start().await;
    let gw = gateway(&fake);
    let q = connect(&gw, "m1").await;
    // Mollie sends the merchant back with a code bound to the redirect URI.
    let code = fake.issue_code("m1", Some(&q["redirect_uri"]));
    let page = get(&gw, &callback_path(Some(&code), &q["state"])).await;
    assert_eq!(page.status, 200, "{}", page.html);
    assert!(page.content_type.starts_with("text/html"));
    assert!(page.html.contains("m1") && page.html.contains("connected"));
    assert!(!page.html.contains(&code));
    let reqs = fake.token_requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].grant_type, "authorization_code");
    assert_eq!(reqs[0].params["code"], code);
    assert_eq!(reqs[0].params["redirect_uri"], redirect_uri(&gw));
    assert!(support::read_store(&gw.store)
        .to_string()
        .contains("\"m1\""));
    assert_eq!(proxied_status(&gw, "m1").await, 200);

    // The same state again (a replayed or reloaded callback): refused, nothing exchanged.
    let page = get(&gw, &callback_path(Some(&code), &q["state"])).await;
    assert_eq!(page.status, 400);
    assert!(page.html.contains("already used"), "{}", page.html);
    assert_eq!(fake.token_requests().len(), 1);
    assert!(!gw.log_text().contains(&code));
    assert!(!gw.log_text().contains(&q["state"]));
}

#[tokio::test]
async fn tampered_expired_and_missing_states_are_refused() {
    let fake = FakeMollie::start().await;
    let gw = gateway(&fake);
    let q = connect(&gw, "m1").await;
    let code = fake.issue_code("m2", None);
    let (payload, tag) = q["state"].split_once('.').unwrap();
    let mut forged: serde_json::Value =
        serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap();
    forged["m"] = "m2".into();
    let forged = B64.encode(forged.to_string());
    for state in [
        format!("{forged}.{tag}"),
        format!("{payload}.{}", B64.encode([7u8; 32])),
        format!("{payload}.{tag}A"),
        "garbage".into(),
        String::new(),
    ] {
        let page = get(&gw, &callback_path(Some(&code), &state)).await;
        assert_eq!(page.status, 400, "{state}: {}", page.html);
        assert!(page.html.contains("not a valid"), "{}", page.html);
    }
    assert_eq!(
        get(&gw, &format!("/oauth/callback?code={code}"))
            .await
            .status,
        400
    );

    // Correctly signed with the configured secret, but expired.
    let page = get(
        &gw,
        &callback_path(Some(&code), &mint_state("m2", now() - 1)),
    )
    .await;
    assert_eq!(page.status, 400);
    assert!(page.html.contains("expired"), "{}", page.html);
    // The same secret, not expired: accepted (the configured key signs states).
    let page = get(
        &gw,
        &callback_path(Some(&code), &mint_state("m2", now() + 60)),
    )
    .await;
    assert_eq!(page.status, 200, "{}", page.html);

    assert_eq!(
        fake.token_requests().len(),
        1,
        "only the valid state exchanged a code"
    );
    assert_eq!(proxied_status(&gw, "m1").await, 401);
}

#[tokio::test]
async fn a_declined_authorization_stores_nothing() {
    let fake = FakeMollie::start().await;
    let gw = gateway(&fake);
    let q = connect(&gw, "m2").await;
    let path = format!(
        "/oauth/callback?error=access_denied&error_description=%3Cb%3Eno%3C%2Fb%3E&state={}",
        q["state"]
    );
    let page = get(&gw, &path).await;
    assert_eq!(page.status, 200, "{}", page.html);
    assert!(page.html.contains("did not authorize"), "{}", page.html);
    assert!(page.html.contains("access_denied"));
    assert!(!page.html.contains("<b>no</b>"), "{}", page.html);
    assert!(fake.token_requests().is_empty());
    assert!(!gw.store.exists() || !support::read_store(&gw.store).to_string().contains("m2"));
    assert_eq!(proxied_status(&gw, "m2").await, 401);

    // An error that is not a plain code is not echoed as given.
    let q = connect(&gw, "m2").await;
    let page = get(
        &gw,
        &format!("/oauth/callback?error=%3Cscript%3E&state={}", q["state"]),
    )
    .await;
    assert_eq!(page.status, 400);
    assert!(!page.html.contains("<script>"));
}

#[tokio::test]
async fn without_an_oauth_app_connect_names_the_keys_to_set() {
    let fake = FakeMollie::start().await;
    let gw = GatewayBuilder::new(&fake).unconfigured().start();
    let page = get(&gw, "/oauth/connect?merchant=m1").await;
    assert_eq!(page.status, 503);
    assert!(page.location.is_none());
    for key in [
        "oauth.client_id",
        "oauth.client_secret",
        "oauth.redirect_uri",
    ] {
        assert!(page.html.contains(key), "{key}: {}", page.html);
    }

    // An app without a redirect URI: only that key is missing.
    let gw = GatewayBuilder::new(&fake).start();
    let page = get(&gw, "/oauth/connect?merchant=m1").await;
    assert_eq!(page.status, 503);
    assert!(page.html.contains("oauth.redirect_uri"));
    assert!(!page.html.contains("oauth.client_id"));
    assert_eq!(get(&gw, "/oauth/callback?code=c&state=s").await.status, 503);
}
