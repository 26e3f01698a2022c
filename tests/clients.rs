//! Callers' gateway keys (`[clients.<name>]`): who may act for which merchant, through the real
//! binary in front of the fake Mollie. Every key made here is recorded with the fake's secrets,
//! so `tests/zz_log_secrets.rs` also proves no key reaches a log.

mod support;

use std::time::Duration;
use support::fake_mollie::FakeMollie;
use support::{client, Gateway, GatewayBuilder};

/// A key of Mollie's shape, recorded for the log-secrets test.
fn key(prefix: &str) -> String {
    support::recorded_key(prefix, "clients")
}

fn sha256(key: &str) -> String {
    mollie_gateway::clients::sha256_hex(key)
}

struct Keys {
    billing: String,
    billing_rotated: String,
    reports: String,
    test: String,
}

/// m1 and m2 onboarded; billing may act for m1 (its default) with two keys, reports for m1
/// and m2, qa (a test key) for every merchant; m2 is live-only.
async fn gateway_with_clients(fake: &FakeMollie) -> (Gateway, Keys) {
    let keys = Keys {
        billing: key("live"),
        billing_rotated: key("live"),
        reports: key("live"),
        test: key("test"),
    };
    let toml = format!(
        "[clients.billing]\nkey_sha256 = [\"{}\", \"{}\"]\nmerchants = [\"m1\"]\n\
         default_merchant = \"m1\"\n\
         [clients.reports]\nkey_sha256 = [\"{}\"]\nmerchants = [\"m1\", \"m2\"]\n\
         [clients.qa]\nkey_sha256 = [\"{}\"]\nmerchants = [\"*\"]\n\
         [merchants.defaults.m2]\ntestmode = \"never\"\n",
        sha256(&keys.billing),
        sha256(&keys.billing_rotated),
        sha256(&keys.reports),
        sha256(&keys.test),
    );
    let mut gw = GatewayBuilder::new(fake)
        .env("LOG__FORMAT", "json")
        .toml(&toml)
        .prepare();
    gw.onboard(fake, "m1");
    gw.onboard(fake, "m2");
    gw.spawn();
    (gw, keys)
}

/// GET `path` with these headers; (status, X-Gateway-Error, body).
async fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut req = client().get(format!("{}{path}", gw.base_url()));
    for (n, v) in headers {
        req = req.header(*n, *v);
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

/// The `/readyz` answer as JSON.
async fn readyz(gw: &Gateway) -> serde_json::Value {
    let url = format!("{}/readyz", gw.admin_url());
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_a_valid_key_are_refused_before_any_token_call() {
    let fake = FakeMollie::start().await;
    let (gw, keys) = gateway_with_clients(&fake).await;
    let prefix = keys.billing[..20].to_string();
    let wrong = key("live");
    let cases: [&[(&str, &str)]; 4] = [
        &[("X-Merchant-Id", "m1")],
        &[("X-Merchant-Id", "m1"), ("Authorization", &bearer(&wrong))],
        &[("X-Merchant-Id", "m1"), ("Authorization", &bearer(&prefix))],
        &[("X-Merchant-Id", "m1"), ("X-Gateway-Key", &wrong)],
    ];
    for headers in cases {
        let (status, code, body) = get(&gw, "/v2/methods", headers).await;
        assert_eq!(
            (status, code.as_str()),
            (401, "caller_unauthenticated"),
            "{body}"
        );
        assert!(body.contains(r#""status":401"#), "{body}");
    }
    // A valid key for a merchant outside its list.
    let (status, code, body) = get(
        &gw,
        "/v2/methods",
        &[
            ("X-Merchant-Id", "m2"),
            ("Authorization", &bearer(&keys.billing)),
        ],
    )
    .await;
    assert_eq!((status, code.as_str()), (403, "caller_forbidden"), "{body}");
    assert!(body.contains("billing") && body.contains("m2"), "{body}");
    assert_eq!(
        fake.token_calls(),
        0,
        "a refused caller caused a token call"
    );
    assert_eq!(fake.api_calls_total(), 0);
    for (code, n) in [("caller_unauthenticated", 4.0), ("caller_forbidden", 1.0)] {
        let sample = format!("mollie_gateway_gateway_errors_total{{code=\"{code}\"}}");
        assert_eq!(gw.metric(&sample).await, n, "{code}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_callers_act_for_their_merchants_and_no_key_goes_upstream() {
    let fake = FakeMollie::start().await;
    let (gw, keys) = gateway_with_clients(&fake).await;
    let ok = [
        // The default merchant: no merchant header at all.
        ("m1", vec![("Authorization", bearer(&keys.billing))]),
        // Rotation: the second key of the same client.
        ("m1", vec![("Authorization", bearer(&keys.billing_rotated))]),
        // Two clients sharing m1; the key in the key header instead of Authorization.
        (
            "m1",
            vec![
                ("X-Merchant-Id", "m1".to_string()),
                ("X-Gateway-Key", keys.reports.clone()),
            ],
        ),
        (
            "m2",
            vec![
                ("X-Merchant-Id", "m2".to_string()),
                ("Authorization", bearer(&keys.reports)),
            ],
        ),
    ];
    for (merchant, headers) in &ok {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let (status, _, body) = get(&gw, "/v2/methods", &headers).await;
        assert_eq!(status, 200, "{merchant} {headers:?}: {body}");
    }
    let seen = fake.api_requests();
    let merchants: Vec<_> = seen.iter().map(|r| r.merchant.as_deref()).collect();
    assert_eq!(merchants, [Some("m1"), Some("m1"), Some("m1"), Some("m2")]);
    for req in &seen {
        assert!(req.header("x-gateway-key").is_none(), "{req:?}");
        assert!(req.header("x-merchant-id").is_none(), "{req:?}");
        assert!(req
            .header("authorization")
            .unwrap()
            .starts_with("Bearer access_"));
    }
    for (client, n) in [("billing", 2.0), ("reports", 2.0)] {
        let sample =
            format!("mollie_gateway_requests_total{{client=\"{client}\",status_class=\"2xx\"}}");
        assert_eq!(gw.metric_reaching(&sample, n).await, n, "{client}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = gw.log_text();
    let access: Vec<&str> = log.lines().filter(|l| l.contains("\"access\"")).collect();
    assert!(
        access.iter().any(|l| l.contains(r#""client":"billing""#)),
        "{access:?}"
    );
    assert!(
        access.iter().any(|l| l.contains(r#""client":"reports""#)),
        "{access:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_key_is_confined_to_test_data() {
    let fake = FakeMollie::start().await;
    let (gw, keys) = gateway_with_clients(&fake).await;
    let auth = bearer(&keys.test);
    let m1 = [("X-Merchant-Id", "m1"), ("Authorization", auth.as_str())];
    // testmode is added to a read...
    let (status, _, body) = get(&gw, "/v2/methods?limit=5", &m1).await;
    assert_eq!(status, 200, "{body}");
    let seen = fake.api_requests().pop().unwrap();
    assert_eq!(seen.query.as_deref(), Some("limit=5&testmode=true"));
    // ...and to a JSON create.
    let create = |body: &'static str| {
        client()
            .post(format!("{}/v2/payments", gw.base_url()))
            .header("X-Merchant-Id", "m1")
            .header("Authorization", auth.clone())
            .header("Content-Type", "application/json")
            .body(body)
            .send()
    };
    let resp = create(r#"{"amount":{"currency":"EUR","value":"1.00"}}"#)
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{resp:?}");
    let seen = fake.api_requests().pop().unwrap();
    let sent: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(sent["testmode"], true, "{sent}");

    // Live data is refused, whichever way it is asked for.
    let before = fake.api_calls_total();
    let (status, code, _) = get(&gw, "/v2/methods?testmode=false", &m1).await;
    assert_eq!((status, code.as_str()), (403, "caller_forbidden"));
    let m2 = [("X-Merchant-Id", "m2"), ("Authorization", auth.as_str())];
    let (status, code, body) = get(&gw, "/v2/methods", &m2).await;
    assert_eq!((status, code.as_str()), (403, "caller_forbidden"), "{body}");
    for body in [
        r#"{"testmode":false}"#,
        r#"{"testmode":true,"testmode":false}"#,
    ] {
        let resp = create(body).await.unwrap();
        assert_eq!(resp.status(), 403, "{body}");
    }
    assert_eq!(
        fake.api_calls_total(),
        before,
        "a live request went upstream"
    );
}

/// Polls (every 50 ms, at most 5 s) until GET /v2/methods with `auth` answers `status`.
async fn eventually(gw: &Gateway, auth: &str, status: u16) -> bool {
    for _ in 0..100 {
        let headers = [("X-Merchant-Id", "m1"), ("Authorization", auth)];
        if get(gw, "/v2/methods", &headers).await.0 == status {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_clients_and_keeps_the_old_ones_on_a_bad_config() {
    let fake = FakeMollie::start().await;
    let (gw, keys) = gateway_with_clients(&fake).await;
    // One keep-alive connection across both reloads.
    let http = client();
    let keep_alive = |key: String| {
        http.get(format!("{}/v2/methods", gw.base_url()))
            .header("X-Merchant-Id", "m1")
            .header("Authorization", bearer(&key))
            .send()
    };
    assert_eq!(
        keep_alive(keys.billing.clone()).await.unwrap().status(),
        200
    );

    // Rotation by reload: billing's first key is replaced by a new one.
    let new_key = key("live");
    let config = std::fs::read_to_string(&gw.config).unwrap();
    let rotated = config.replace(&sha256(&keys.billing), &sha256(&new_key));
    std::fs::write(&gw.config, &rotated).unwrap();
    gw.signal("HUP");
    assert!(
        eventually(&gw, &bearer(&new_key), 200).await,
        "new key refused"
    );
    assert!(
        eventually(&gw, &bearer(&keys.billing), 401).await,
        "old key kept"
    );
    assert_eq!(keep_alive(new_key.clone()).await.unwrap().status(), 200);

    // An invalid configuration keeps the running clients, and says why.
    std::fs::write(
        &gw.config,
        rotated.replace("merchants = [\"m1\"]", "merchants = 7"),
    )
    .unwrap();
    gw.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(keep_alive(new_key.clone()).await.unwrap().status(), 200);
    assert!(
        gw.log_text().contains("the configuration was not reloaded"),
        "{}",
        gw.log_text()
    );
    assert!(gw.pid().is_some() && gw.log_text().contains("reloaded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_client_keys_refuses_to_start_an_open_gateway() {
    let fake = FakeMollie::start().await;
    let gw = GatewayBuilder::new(&fake)
        .env("SERVER__REQUIRE_CLIENT_KEYS", "true")
        .prepare();
    let out = gw.command().arg("run").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.require_client_keys") && err.contains("clients new"),
        "{err}"
    );
    let out = gw.cli(&["check-config"]);
    assert!(out.status.success());
    // An open gateway is ready, and says it is open.
    let mut open = GatewayBuilder::new(&fake).prepare();
    open.spawn();
    let ready = readyz(&open).await;
    assert_eq!(ready["status"], "ready");
    assert!(ready["warning"].as_str().unwrap().contains("no [clients]"));
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(note.contains("no [clients.<name>] is configured"), "{note}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_has_no_open_warning_with_clients() {
    let fake = FakeMollie::start().await;
    let (gw, _keys) = gateway_with_clients(&fake).await;
    let ready = readyz(&gw).await;
    assert_eq!(ready["status"], "ready");
    assert!(ready.get("warning").is_none(), "{ready}");
}

#[test]
fn clients_new_prints_a_key_once_and_only_its_hash_for_the_config() {
    let out = std::process::Command::new(support::BIN)
        .args([
            "clients",
            "new",
            "billing",
            "--merchants",
            "m1,m2",
            "--test",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let key = text.lines().next().unwrap();
    assert!(key.starts_with("test_") && key.len() == 45, "{key}");
    assert_eq!(text.matches(key).count(), 1, "the key is printed once");
    let config = &text[key.len()..];
    assert!(config.contains("[clients.billing]"), "{text}");
    assert!(config.contains(&sha256(key)), "{text}");
    assert!(config.contains(r#"merchants = ["m1", "m2"]"#), "{text}");
}
