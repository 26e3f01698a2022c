//! Shared by the SDK compatibility tests (`tests/sdk_python.rs`, `tests/sdk_node.rs`,
//! `tests/sdk_python_new.rs`, `tests/sdk_ts.rs`): the fake Mollie with realistic resources, a
//! gateway in front of it configured as the README's "Using it from Mollie's SDKs" says, and a
//! bounded runner for the SDK scripts.
#![allow(dead_code)]

use crate::support::fake_mollie::{FakeMollie, TokenMode};
use crate::support::{Gateway, GatewayBuilder};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The SDKs' working directories, made by `scripts/setup`.
pub fn target_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(name)
}

pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk")
        .join(name)
}

/// Fake Mollie serving payments and methods: m1 has ideal + creditcard, m2 bancontact.
pub async fn fake_with_resources() -> FakeMollie {
    let fake = FakeMollie::start().await;
    fake.resources().enable();
    fake.resources().set_methods("m1", &["ideal", "creditcard"]);
    fake.resources().set_methods("m2", &["bancontact"]);
    fake
}

/// A gateway for merchants m1 and m2 (profiles `pfl_m1`, `pfl_m2`, testmode from the key) whose
/// HAL links point back at itself (`public` is the base URL with `{listen}` for its address).
pub fn sdk_gateway(fake: &FakeMollie, public: &str, builder: GatewayBuilder) -> Gateway {
    let mut gw = builder
        .env("UPSTREAM__PUBLIC_BASE_URL", public)
        .toml(
            "[merchants.defaults.m1]\nprofile_id = \"pfl_m1\"\n\
             [merchants.defaults.m2]\nprofile_id = \"pfl_m2\"\n",
        )
        .prepare();
    for id in ["m1", "m2"] {
        let rt = fake.add_merchant(id);
        let out = gw.cli(&["merchants", "add", id, "--refresh-token", &rt]);
        assert!(out.status.success(), "{out:?}");
    }
    gw.spawn();
    gw
}

/// Runs `cmd` to completion, killing it after `limit`; returns (success, stdout + stderr).
pub async fn run_bounded(mut cmd: Command, limit: Duration) -> (bool, String) {
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "ALL_PROXY",
    ] {
        cmd.env_remove(var);
    }
    // The Speakeasy SDKs (mollie-api-py, mollie-api-typescript) take defaults from these.
    for var in [
        "CLIENT_API_KEY",
        "CLIENT_ADVANCED_ACCESS_TOKEN",
        "CLIENT_O_AUTH",
        "CLIENT_PROFILE_ID",
        "CLIENT_TESTMODE",
        "CLIENT_CUSTOM_USER_AGENT",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("NO_PROXY", "127.0.0.1,localhost")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().expect("start the SDK script");
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for the SDK script") {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = child.wait_with_output().expect("SDK script output");
        let text = format!(
            "{}{}{}",
            if status.is_none() {
                format!("(killed after {limit:?})\n")
            } else {
                String::new()
            },
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (status.is_some_and(|s| s.success()), text)
    })
    .await
    .expect("runner task")
}

/// What the fake saw must match what the SDKs were told: each merchant's three payments carry
/// its own profile, in test mode; every request was authorized with a token the fake issued (so
/// no dummy key reached Mollie, not even one spelled `access_…`) and no merchant header.
pub fn assert_fake_view(fake: &FakeMollie) {
    for (m, profile) in [("m1", "pfl_m1"), ("m2", "pfl_m2")] {
        let payments = fake.resources().payments(m);
        assert_eq!(payments.len(), 3, "{m}: {payments:?}");
        for p in &payments {
            assert_eq!(p["profileId"], profile);
            assert_eq!(p["mode"], "test");
            assert!(p["description"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{m} ")));
        }
    }
    for req in fake.api_requests() {
        assert!(req.header("x-merchant-id").is_none(), "{req:?}");
        assert!(
            req.merchant.is_some(),
            "not authorized with a fake token: {req:?}"
        );
        let auth = req.header("authorization").unwrap_or("");
        assert!(
            auth.starts_with("Bearer access_"),
            "{} {}: {auth}",
            req.method,
            req.path
        );
    }
}

/// The Speakeasy SDKs' own `testmode`/`profileId` (set with an `access_…` dummy key, listing
/// with `limit=10`) reached Mollie as the SDK sent them: the gateway adds no `profileId` to a
/// query, nor `testmode` for a key that is not `test_…`.
pub fn assert_sdk_globals_reached_mollie(fake: &FakeMollie) {
    let requests = fake.api_requests();
    for m in ["m1", "m2"] {
        let want = format!("limit=10&profileId=pfl_{m}&testmode=true");
        assert!(
            requests
                .iter()
                .any(|r| r.path == "/v2/payments" && r.query.as_deref() == Some(want.as_str())),
            "no GET /v2/payments?{want}"
        );
    }
}

/// The gateways for the retry checks of the Speakeasy SDKs (`retry` mode of their scripts):
/// - `gw`, as [`sdk_gateway`] makes it, whose token endpoint answers 503 (the fake is in
///   [`TokenMode::ServerError`] until [`run_with_token_endpoint_recovering`] turns it back), with
///   a backoff of 2-4 s so that its `Retry-After` (2-4) is longer than any first backoff the SDKs
///   pick themselves (at most 1.5 s): a retry that long after the 503 honoured the header;
/// - `unconfigured`, without an OAuth app (503 `oauth_misconfigured`, `Retry-After: 1`, on
///   every request), knowing m1 with a refresh token it can never use.
pub async fn retry_gateways() -> (FakeMollie, Gateway, Gateway) {
    let fake = fake_with_resources().await;
    let builder = GatewayBuilder::new(&fake)
        .env("OAUTH__BACKOFF_MIN_MS", "4000")
        .env("OAUTH__BACKOFF_MAX_MS", "4000");
    let gw = sdk_gateway(&fake, "http://{listen}", builder);
    fake.set_token_mode(TokenMode::ServerError);
    let mut unconfigured = GatewayBuilder::new(&fake).unconfigured().prepare();
    let out = unconfigured.cli(&["merchants", "add", "m1", "--refresh-token", "rt_never_used"]);
    assert!(out.status.success(), "{out:?}");
    unconfigured.spawn();
    (fake, gw, unconfigured)
}

/// Runs an SDK script's `retry` mode (bounded), turning the fake's token endpoint back on once
/// `gw` has answered its first 503 `token_endpoint_unavailable`, so that the SDK's retry after
/// `Retry-After` succeeds.
pub async fn run_with_token_endpoint_recovering(
    fake: &FakeMollie,
    gw: &Gateway,
    cmd: Command,
) -> (bool, String) {
    const SAMPLE: &str = "mollie_gateway_gateway_errors_total{code=\"token_endpoint_unavailable\"}";
    let recover = async {
        let deadline = Instant::now() + Duration::from_secs(20);
        while gw.metric(SAMPLE).await < 1.0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        fake.set_token_mode(TokenMode::Normal);
    };
    let (result, ()) = tokio::join!(run_bounded(cmd, Duration::from_secs(45)), recover);
    result
}

/// After a `retry` run: m1 has exactly the one payment of the retried create (its profile, test
/// mode), made with one API call on the second token (the first refresh got the 503); the
/// misconfigured gateway never reached Mollie, nor did a dummy key or the merchant header.
pub fn assert_retry_view(fake: &FakeMollie) {
    let payments = fake.resources().payments("m1");
    assert_eq!(payments.len(), 1, "{payments:?}");
    assert_eq!(payments[0]["profileId"], "pfl_m1");
    assert_eq!(payments[0]["mode"], "test");
    assert_eq!(
        fake.token_calls_for("m1"),
        2,
        "one failed refresh, one good one"
    );
    let requests = fake.api_requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(
        (requests[0].method.as_str(), requests[0].path.as_str()),
        ("POST", "/v2/payments")
    );
    assert!(requests[0].header("x-merchant-id").is_none());
    assert!(requests[0]
        .header("authorization")
        .is_some_and(|a| a.starts_with("Bearer access_m1_")));
}
