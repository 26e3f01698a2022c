//! No secret ever reaches a gateway log.
//!
//! Named `zz_` to run last: `cargo test` runs the integration test binaries one after another
//! in name order, so by then every other test has left its gateway logs in
//! `target/tmp/gateway-logs/` (`support::log_dir()`) and every fake Mollie has recorded the
//! access tokens, refresh tokens and authorization codes it issued in
//! `target/tmp/fake-secrets/` (`fake_mollie::secrets_dir()`). This test first produces its
//! own traffic (JSON log format: refreshes, a rotated refresh token, a 401 replay, a revoked
//! merchant, token endpoint failures, bad input), checks the JSON access lines, then scans
//! every log for every secret and the OAuth client secret.
//!
//! Try it: `cargo test --test zz_log_secrets` (alone it checks its own traffic; after the whole
//! suite, `scripts/test`, it checks every gateway log of the run).

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::fake_mollie::{self, FakeMollie, TokenMode};
use support::{client, log_dir, GatewayBuilder};

/// The caller's dummy API key: dropped by the gateway, never logged (a real key in some setups).
const CALLER_KEY: &str = "test_gatewaygatewaygatewaygatewayga";

/// Fields every access line carries (see `logging` in src/proxy.rs).
const ACCESS_FIELDS: [&str; 9] = [
    "method",
    "path",
    "status",
    "merchant",
    "upstream_status",
    "duration_us",
    "gateway_us",
    "replayed",
    "error",
];

/// What [`own_traffic`] left behind.
struct Traffic {
    log: PathBuf,
    /// The secrets its fake issued.
    secrets: Vec<String>,
    /// The fields of every access line.
    access: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// Runs traffic that makes the gateway handle every kind of secret, in JSON log format.
async fn own_traffic() -> Traffic {
    let fake = FakeMollie::start().await;
    fake.set_rotate_refresh_tokens(true);
    let m1 = fake.add_merchant("m1");
    let m2 = fake.add_merchant("m2");
    let mut gw = GatewayBuilder::new(&fake)
        .env("LOG__FORMAT", "json")
        .prepare();
    for (id, token) in [("m1", &m1), ("m2", &m2)] {
        let out = gw.cli(&["merchants", "add", id, "--refresh-token", token]);
        assert!(out.status.success(), "merchants add: {out:?}");
    }
    gw.spawn();
    let c = client();
    let get = |merchant: Option<&'static str>, path: &str| {
        let mut req = c.get(format!("{}{path}", gw.base_url()));
        if let Some(m) = merchant {
            req = req.header("X-Merchant-Id", m);
        }
        req.header("Authorization", format!("Bearer {CALLER_KEY}"))
            .send()
    };
    let status = |r: Result<reqwest::Response, reqwest::Error>| r.unwrap().status().as_u16();

    assert_eq!(status(get(Some("m1"), "/v2/payments?limit=5").await), 200); // refresh (rotated)
    assert_eq!(status(get(Some("m1"), "/v2/payments").await), 200); // cached
    fake.expire_tokens("m1");
    assert_eq!(status(get(Some("m1"), "/v2/methods").await), 200); // 401 → refresh → replay
    fake.revoke("m2");
    assert_eq!(status(get(Some("m2"), "/v2/payments").await), 401); // invalid_grant
    assert_eq!(status(get(Some("nobody"), "/v2/payments").await), 401); // unknown merchant
    assert_eq!(status(get(None, "/v2/payments").await), 400); // no merchant header
    fake.expire_tokens("m1");
    fake.set_token_mode(TokenMode::NotJson);
    assert_eq!(status(get(Some("m1"), "/v2/payments").await), 502); // 401, bad token answer
    fake.set_token_mode(TokenMode::ServerError);
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the backoff
    assert_eq!(status(get(Some("m1"), "/v2/payments").await), 503);
    fake.set_token_mode(TokenMode::InvalidClient);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(status(get(Some("m1"), "/v2/payments").await), 503);
    let exit = tokio::task::block_in_place(|| gw.terminate());
    assert!(exit.is_some_and(|s| s.success()), "{exit:?}");

    let text = gw.log_text();
    let mut access = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        if v["target"] == "access" {
            let fields = v["fields"].as_object().expect("fields").clone();
            for f in ACCESS_FIELDS {
                assert!(fields.contains_key(f), "access line without {f}: {line}");
            }
            access.push(fields);
        }
    }
    let secrets_file = fake_mollie::secrets_dir().join(format!(
        "{}-{}.txt",
        std::process::id(),
        fake.addr().port()
    ));
    let secrets = std::fs::read_to_string(secrets_file).expect("own fake's secrets");
    Traffic {
        log: gw.log.clone(),
        secrets: secrets.lines().map(String::from).collect(),
        access,
    }
}

/// Every secret the fakes of this and earlier test runs issued, the client secret and the
/// caller's key.
fn issued_secrets() -> Vec<String> {
    let mut secrets = vec![
        fake_mollie::CLIENT_SECRET.to_string(),
        CALLER_KEY.to_string(),
    ];
    for entry in std::fs::read_dir(fake_mollie::secrets_dir()).expect("read fake-secrets") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("secrets file");
        secrets.extend(
            text.lines()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from),
        );
    }
    secrets.sort();
    secrets.dedup();
    secrets
}

/// The secrets found in `haystack`. Indexed by each secret's last 8 bytes (their random
/// part), so that thousands of secrets over megabytes of logs take one pass.
fn find_secrets<'a>(haystack: &[u8], secrets: &'a [String]) -> Vec<&'a str> {
    const K: usize = 8;
    let mut by_tail: HashMap<&[u8], Vec<&str>> = HashMap::new();
    let mut found = Vec::new();
    for s in secrets {
        if s.len() < K {
            let hit = haystack.windows(s.len()).any(|w| w == s.as_bytes());
            if hit {
                found.push(s.as_str());
            }
        } else {
            by_tail
                .entry(&s.as_bytes()[s.len() - K..])
                .or_default()
                .push(s);
        }
    }
    for end in K..=haystack.len() {
        if let Some(candidates) = by_tail.get(&haystack[end - K..end]) {
            for s in candidates {
                if haystack[..end].ends_with(s.as_bytes()) && !found.contains(s) {
                    found.push(s);
                }
            }
        }
    }
    found
}

fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read log dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_issued_secret_in_any_gateway_log() {
    let Traffic {
        log: own_log,
        secrets: own_secrets,
        access,
    } = own_traffic().await;

    // The JSON access lines tell what happened, without a secret.
    let line = |status: u64, merchant: &str| {
        access
            .iter()
            .find(|f| f["status"] == status && f["merchant"] == merchant)
            .unwrap_or_else(|| panic!("no access line {status} {merchant}: {access:?}"))
    };
    let replayed = access
        .iter()
        .find(|f| f["path"] == "/v2/methods")
        .expect("access line of the replay");
    assert_eq!(replayed["replayed"], true, "{replayed:?}");
    assert_eq!(replayed["status"], 200);
    assert_eq!(replayed["upstream_status"], 200);
    assert_eq!(replayed["method"], "GET");
    assert!(replayed["duration_us"].as_u64().is_some_and(|d| d > 0));
    assert!(replayed["gateway_us"].as_u64().is_some());
    assert_eq!(line(401, "m2")["error"], "authorization_revoked");
    assert_eq!(line(401, "nobody")["error"], "unknown_merchant");
    assert_eq!(line(400, "-")["error"], "merchant_header");
    assert_eq!(line(502, "m1")["error"], "token_endpoint_bad_response");
    assert_eq!(line(200, "m1")["replayed"], false);
    assert!(
        access
            .iter()
            .all(|f| f["path"].as_str().is_some_and(|p| !p.contains('?'))),
        "query strings are not logged: {access:?}"
    );

    // Then every gateway log of the run, against every issued secret.
    // Two refresh tokens registered, a rotated one, and access tokens.
    assert!(
        own_secrets.len() >= 5,
        "too few secrets recorded, the check would be vacuous: {own_secrets:?}"
    );
    let secrets = issued_secrets();
    assert!(own_secrets.iter().all(|s| secrets.contains(s)));
    let files = log_files(&log_dir());
    assert!(
        files.contains(&own_log),
        "own log {own_log:?} not in {files:?}"
    );
    let mut leaks = Vec::new();
    let mut bytes = 0;
    for file in &files {
        let text = std::fs::read(file).expect("read log");
        bytes += text.len();
        for s in find_secrets(&text, &secrets) {
            leaks.push(format!("{}: {s}", file.display()));
        }
    }
    assert!(
        bytes > 0,
        "the logs are empty: the check would pass vacuously"
    );
    // The scan itself finds what is there (a merchant id every log of ours names).
    let own = std::fs::read(&own_log).unwrap();
    assert_eq!(find_secrets(&own, &["\"merchant\":\"m2\"".into()]).len(), 1);
    assert!(
        leaks.is_empty(),
        "{} secrets in gateway logs ({} files, {} secrets checked):\n{}",
        leaks.len(),
        files.len(),
        secrets.len(),
        leaks.join("\n")
    );
    eprintln!(
        "checked {} secrets against {} gateway logs ({bytes} bytes)",
        secrets.len(),
        files.len()
    );
}
