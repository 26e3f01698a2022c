//! Shared by the SDK compatibility tests (`tests/sdk_python.rs`, `tests/sdk_node.rs`): the
//! fake Mollie with realistic resources, a gateway in front of it configured as the README's
//! "Using it from Mollie's SDKs" says, and a bounded runner for the SDK scripts.
#![allow(dead_code)]

use crate::support::fake_mollie::FakeMollie;
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
/// its own profile, in test mode; every request was authorized with that merchant's token and
/// no merchant header or dummy key reached Mollie.
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
        let auth = req.header("authorization").unwrap_or("");
        assert!(
            auth.starts_with("Bearer access_"),
            "{} {}: {auth}",
            req.method,
            req.path
        );
    }
}
