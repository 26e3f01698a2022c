//! Merchants stored with a static credential (an API key or an organization access token)
//! instead of a refresh token, through the real binary in front of the fake Mollie: added from
//! standard input (CLI) or the admin API, sealed at rest, injected as the Bearer, never
//! refreshed (no token endpoint call), a 401 passed back without a replay, no request
//! defaults for an API key, a `test_` caller key refused for a `live_` API key, listed with
//! `credential_kind`, and forgotten on removal without a revocation call.

mod support;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use support::fake_mollie::FakeMollie;
use support::{client, Gateway, GatewayBuilder};

const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";
const K1: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// A key file in its own directory (kept alive by the returned handle).
fn key_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store-keys");
    std::fs::write(&path, format!("{K1}\n")).unwrap();
    (dir, path)
}

/// `mollie-gateway ARGS` with `stdin` written to its standard input.
fn cli_with_stdin(gw: &Gateway, args: &[&str], stdin: &str) -> Output {
    let mut child = gw
        .command()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A key of Mollie's shape, recorded for the log-secrets test.
fn caller_key(prefix: &str) -> String {
    support::recorded_key(prefix, "static-clients")
}

/// `method path` for `merchant` with extra headers and an optional JSON body; (status, the
/// gateway's error code, body).
async fn call(
    gw: &Gateway,
    method: reqwest::Method,
    path: &str,
    merchant: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String, String) {
    let mut req = client()
        .request(method, format!("{}{path}", gw.base_url()))
        .header("X-Merchant-Id", merchant);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    if let Some(body) = body {
        req = req
            .header("Content-Type", "application/json")
            .body(body.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let code = resp
        .headers()
        .get("x-gateway-error")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, code, resp.text().await.unwrap())
}

async fn get(gw: &Gateway, merchant: &str) -> (u16, String, String) {
    call(gw, reqwest::Method::GET, "/v2/methods", merchant, &[], None).await
}

/// The `Authorization` the fake saw on its last API request.
fn last_bearer(fake: &FakeMollie) -> String {
    let requests = fake.api_requests();
    let last = requests.last().expect("an API request at the fake");
    last.header("authorization").unwrap_or_default().to_string()
}

async fn admin(
    gw: &Gateway,
    method: reqwest::Method,
    path: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut req = client()
        .request(method, format!("{}{path}", gw.admin_url()))
        .header("Authorization", format!("Bearer {ADMIN_TOKEN}"));
    if let Some(body) = body {
        req = req.body(body.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_from_stdin_is_sealed_injected_never_refreshed_and_forgotten_without_revocation()
{
    let fake = FakeMollie::start().await;
    let key = fake.issue_static("m1", "test");
    let (_keys_dir, keys) = key_file();
    let mut gw = GatewayBuilder::new(&fake)
        .env("STORE__ENCRYPTION_KEY_FILE", keys.display().to_string())
        .env("ADMIN__TOKEN", ADMIN_TOKEN)
        .prepare();

    // Only `-` is taken: a key on the command line is refused, and so is a malformed one.
    let out = gw.cli(&["merchants", "add", "m1", "--api-key", &key]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("standard input"), "{}", text(&out));
    assert!(!text(&out).contains(&key), "{}", text(&out));
    let out = cli_with_stdin(
        &gw,
        &["merchants", "add", "m1", "--api-key", "-"],
        "live_short\n",
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("30 or more"), "{}", text(&out));
    let out = cli_with_stdin(
        &gw,
        &["merchants", "add", "m1", "--api-key", "-"],
        &format!("{key}\n"),
    );
    assert!(out.status.success(), "{}", text(&out));

    // Sealed at rest: the raw store file does not hold the key.
    let raw = std::fs::read_to_string(&gw.store).unwrap();
    assert!(!raw.contains(&key), "{raw}");
    assert!(raw.contains("\"api_key\""), "{raw}");

    let out = gw.cli(&["merchants", "list"]);
    let listed = text(&out);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("m1 ") && l.contains("api_key")),
        "{listed}"
    );

    gw.spawn();
    for _ in 0..3 {
        let (status, _, body) = get(&gw, "m1").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(last_bearer(&fake), format!("Bearer {key}"));
    }
    assert_eq!(
        fake.token_calls(),
        0,
        "a static credential is never refreshed"
    );
    let (status, list) = admin(&gw, reqwest::Method::GET, "/admin/merchants", None).await;
    assert_eq!(status, 200);
    assert_eq!(list[0]["credential_kind"], "api_key", "{list}");
    assert!(list[0]["access_token_expires_at"].is_null(), "{list}");
    // A forced refresh has nothing to do: still no token call.
    let (status, _) = admin(
        &gw,
        reqwest::Method::POST,
        "/admin/merchants/m1/refresh",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(fake.token_calls(), 0);

    // Removal forgets the merchant without a revocation call (it is not an OAuth token).
    let (status, body) = admin(&gw, reqwest::Method::DELETE, "/admin/merchants/m1", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["removed"], true);
    assert!(
        fake.revocations().is_empty(),
        "no revocation for a static credential"
    );
    assert!(gw
        .metrics()
        .await
        .contains("revocations_total{outcome=\"static_credential\"} 1"));
    let (status, code, _) = get(&gw, "m1").await;
    assert_eq!((status, code.as_str()), (401, "unknown_merchant"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_removes_a_static_merchant_without_revoking() {
    let fake = FakeMollie::start().await;
    let token = fake.issue_static("o1", "access");
    let gw = GatewayBuilder::new(&fake).prepare();
    let out = cli_with_stdin(&gw, &["merchants", "add", "o1", "--org-token", "-"], &token);
    assert!(out.status.success(), "{}", text(&out));
    let out = gw.cli(&["merchants", "list"]);
    assert!(text(&out).contains("org_token"), "{}", text(&out));
    let out = gw.cli(&["merchants", "remove", "o1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("nothing revoked"), "{}", text(&out));
    assert!(fake.revocations().is_empty());
    assert_eq!(fake.token_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_token_from_the_admin_api_gets_a_401_passed_back_once() {
    let fake = FakeMollie::start().await;
    let token = fake.issue_static("o1", "access");
    let mut gw = GatewayBuilder::new(&fake)
        .env("ADMIN__TOKEN", ADMIN_TOKEN)
        .prepare();
    gw.spawn();
    let (status, body) = admin(
        &gw,
        reqwest::Method::PUT,
        "/admin/merchants/o1",
        Some(r#"{"org_token":"refresh_not_an_org_token"}"#),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("org_token"), "{body}");
    assert!(!body.to_string().contains("refresh_not"), "{body}");
    let put = format!(r#"{{"org_token":"{token}"}}"#);
    let (status, body) = admin(&gw, reqwest::Method::PUT, "/admin/merchants/o1", Some(&put)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["credential_kind"], "org_token", "{body}");
    assert!(!body.to_string().contains(&token));

    let (status, _, body) = get(&gw, "o1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(last_bearer(&fake), format!("Bearer {token}"));

    // Revoked in Mollie's dashboard: the 401 goes back to the caller, sent once, no refresh.
    fake.revoke_static(&token);
    let before = fake.api_calls_total();
    let (status, code, body) = get(&gw, "o1").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(code, "", "Mollie's own 401, not the gateway's");
    assert!(body.contains("Unauthorized Request"), "{body}");
    assert_eq!(fake.api_calls_total() - before, 1, "no replay");
    assert_eq!(fake.token_calls(), 0, "no refresh");
    // Counted after the answer was written: the caller may read it first.
    let passed_back = r#"mollie_gateway_replays_total{outcome="static_credential"}"#;
    assert_eq!(gw.metric_reaching(passed_back, 1.0).await, 1.0);
    // Still the same credential: the next call is sent (and refused) again, once.
    let (status, _, _) = get(&gw, "o1").await;
    assert_eq!(status, 401);
    assert_eq!(fake.api_calls_total() - before, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_gets_no_defaults_and_a_test_caller_no_live_key() {
    let fake = FakeMollie::start().await;
    let live = fake.issue_static("live1", "live");
    let test = fake.issue_static("test1", "test");
    let qa = caller_key("test");
    let ops = caller_key("live");
    let toml = format!(
        "[clients.qa]\nkey_sha256 = [\"{}\"]\nmerchants = [\"*\"]\n\
         [clients.ops]\nkey_sha256 = [\"{}\"]\nmerchants = [\"*\"]\n\
         [merchants.defaults.test1]\ntestmode = \"always\"\nprofile_id = \"pfl_default\"\n\
         [merchants.defaults.m2]\ntestmode = \"always\"\nprofile_id = \"pfl_default\"\n",
        mollie_gateway::clients::sha256_hex(&qa),
        mollie_gateway::clients::sha256_hex(&ops),
    );
    let mut gw = GatewayBuilder::new(&fake).toml(&toml).prepare();
    for (id, key) in [("live1", &live), ("test1", &test)] {
        let out = cli_with_stdin(&gw, &["merchants", "add", id, "--api-key", "-"], key);
        assert!(out.status.success(), "{}", text(&out));
    }
    gw.onboard(&fake, "m2");
    gw.spawn();

    // The defaults apply to the OAuth merchant m2 and not to the API key merchant test1.
    let payment = r#"{"amount":{"currency":"EUR","value":"10.00"},"description":"x","redirectUrl":"https://example.org"}"#;
    let ops_auth = format!("Bearer {ops}");
    for merchant in ["m2", "test1"] {
        let (status, _, body) = call(
            &gw,
            reqwest::Method::POST,
            "/v2/payments",
            merchant,
            &[("Authorization", &ops_auth)],
            Some(payment),
        )
        .await;
        assert!(status < 300, "{merchant}: {status} {body}");
        let (status, _, body) = call(
            &gw,
            reqwest::Method::GET,
            "/v2/methods",
            merchant,
            &[("Authorization", &ops_auth)],
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let requests = fake.api_requests();
    let seen = |merchant: &str, method: &str| {
        requests
            .iter()
            .find(|r| r.merchant.as_deref() == Some(merchant) && r.method == method)
            .unwrap_or_else(|| panic!("{method} for {merchant} at the fake"))
            .clone()
    };
    let body = String::from_utf8_lossy(&seen("m2", "POST").body).into_owned();
    assert!(
        body.contains("pfl_default") && body.contains("testmode"),
        "{body}"
    );
    assert_eq!(seen("m2", "GET").query.as_deref(), Some("testmode=true"));
    let post = seen("test1", "POST");
    assert_eq!(String::from_utf8_lossy(&post.body), payment);
    assert_eq!(
        post.header("authorization"),
        Some(format!("Bearer {test}").as_str())
    );
    assert_eq!(seen("test1", "GET").query, None);

    // A test caller key: refused for the live API key merchant, served for the test one.
    let qa_auth = format!("Bearer {qa}");
    let before = fake.api_calls_total();
    let (status, code, body) = call(
        &gw,
        reqwest::Method::GET,
        "/v2/methods",
        "live1",
        &[("Authorization", &qa_auth)],
        None,
    )
    .await;
    assert_eq!((status, code.as_str()), (403, "caller_forbidden"), "{body}");
    assert!(body.contains("live API key"), "{body}");
    assert_eq!(fake.api_calls_total(), before, "nothing forwarded");
    let (status, _, body) = call(
        &gw,
        reqwest::Method::GET,
        "/v2/methods",
        "test1",
        &[("Authorization", &qa_auth)],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // A live caller may use the live key.
    let (status, _, body) = call(
        &gw,
        reqwest::Method::GET,
        "/v2/methods",
        "live1",
        &[("Authorization", &ops_auth)],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(last_bearer(&fake), format!("Bearer {live}"));
    assert_eq!(
        fake.token_calls_for("test1") + fake.token_calls_for("live1"),
        0
    );
}
