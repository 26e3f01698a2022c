//! `/metrics` of a gateway that has served traffic, refreshed, replayed after a 401 and
//! answered errors itself, checked by Prometheus' own linter (`promtool check metrics`, from
//! Debian's `prometheus` package, installed by `scripts/setup`) and sample by sample: values,
//! a HELP line for every family, histogram buckets, and no merchant id or secret anywhere.
//!
//! Try it: `cargo test --test metrics_promtool`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::fake_mollie::{self, FakeMollie};
use support::{client, metric_value, GatewayBuilder};

const MERCHANT: &str = "merchant-promtool-7";
const UNKNOWN: &str = "merchant-nobody-3";

/// Runs `promtool check metrics` on `text`; returns (exit ok, everything it printed).
/// Panics with instructions when promtool is missing: this test must not skip silently.
fn promtool_check_metrics(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}). Run scripts/setup, which installs Debian's \
                 `prometheus` package (it ships /usr/bin/promtool)"
            )
        });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool output");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), printed)
}

/// `# TYPE` of every family, and the families that have a non-empty `# HELP`.
fn families(text: &str) -> (BTreeMap<String, String>, BTreeSet<String>) {
    let mut types = BTreeMap::new();
    let mut helped = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            types.insert(name.to_string(), kind.to_string());
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, help)) = rest.split_once(' ') {
                if !help.trim().is_empty() {
                    helped.insert(name.to_string());
                }
            }
        }
    }
    (types, helped)
}

/// The family a sample belongs to (`_bucket`, `_sum`, `_count` of a histogram stripped).
fn family_of<'a>(sample_name: &'a str, types: &BTreeMap<String, String>) -> &'a str {
    if types.contains_key(sample_name) {
        return sample_name;
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = sample_name.strip_suffix(suffix) {
            if types.get(base).is_some_and(|t| t == "histogram") {
                return base;
            }
        }
    }
    panic!("sample {sample_name} belongs to no declared family");
}

/// Polls `/metrics` (bounded, 3 s) until `done` holds; metrics are updated in the `logging`
/// hook, just after the response went out.
async fn metrics_when(gw: &support::Gateway, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let text = gw.metrics().await;
        if done(&text) || Instant::now() >= deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_real_traffic_pass_promtool() {
    let fake = FakeMollie::start().await;
    let refresh_token = fake.add_merchant(MERCHANT);
    let mut gw = GatewayBuilder::new(&fake).prepare();
    let out = gw.cli(&[
        "merchants",
        "add",
        MERCHANT,
        "--refresh-token",
        &refresh_token,
    ]);
    assert!(out.status.success(), "merchants add: {out:?}");
    gw.spawn();

    let c = client();
    let url = format!("{}/v2/payments", gw.base_url());
    let get = |merchant: Option<&str>| {
        let mut req = c.get(&url);
        if let Some(m) = merchant {
            req = req.header("X-Merchant-Id", m);
        }
        req.send()
    };
    // 200s (the first one refreshes: no access token yet).
    for _ in 0..3 {
        assert_eq!(get(Some(MERCHANT)).await.unwrap().status(), 200);
    }
    // A 401 from the API: refresh, replay, 200.
    fake.expire_tokens(MERCHANT);
    assert_eq!(get(Some(MERCHANT)).await.unwrap().status(), 200);
    assert_eq!(fake.api_401s(), 1);
    // Errors the gateway answers itself.
    assert_eq!(get(Some(UNKNOWN)).await.unwrap().status(), 401);
    assert_eq!(get(None).await.unwrap().status(), 400);

    let text = metrics_when(&gw, |t| {
        metric_value(
            t,
            r#"mollie_gateway_requests_total{client="-",status_class="4xx"}"#,
        ) == 2.0
            && metric_value(
                t,
                r#"mollie_gateway_requests_total{client="-",status_class="2xx"}"#,
            ) == 4.0
    })
    .await;

    // Prometheus' linter: exit 0 and nothing to complain about.
    let (ok, printed) = promtool_check_metrics(&text);
    assert!(
        ok && printed.trim().is_empty(),
        "promtool check metrics failed:\n{printed}\n--- metrics ---\n{text}"
    );

    let v = |sample: &str| metric_value(&text, sample);
    assert_eq!(
        v(r#"mollie_gateway_requests_total{client="-",status_class="2xx"}"#),
        4.0
    );
    assert_eq!(
        v(r#"mollie_gateway_requests_total{client="-",status_class="4xx"}"#),
        2.0
    );
    assert_eq!(
        v(r#"mollie_gateway_requests_total{client="-",status_class="5xx"}"#),
        0.0
    );
    assert_eq!(
        v(r#"mollie_gateway_replays_total{outcome="replayed"}"#),
        1.0
    );
    assert_eq!(
        v(r#"mollie_gateway_replays_total{outcome="rejected_again"}"#),
        0.0
    );
    assert_eq!(v("mollie_gateway_upstream_401_total"), 1.0);
    // The first request's refresh and the replay's.
    let refreshed =
        v(r#"mollie_gateway_token_refreshes_total{grant="refresh_token",outcome="ok"}"#);
    assert!(refreshed >= 2.0, "refreshes ok: {refreshed}\n{text}");
    assert!(v("mollie_gateway_token_refresh_duration_seconds_count") >= 2.0);
    assert_eq!(
        v(r#"mollie_gateway_gateway_errors_total{code="unknown_merchant"}"#),
        1.0
    );
    assert_eq!(
        v(r#"mollie_gateway_gateway_errors_total{code="merchant_header"}"#),
        1.0
    );
    assert_eq!(v("mollie_gateway_merchants"), 1.0);
    assert!(v(r#"mollie_gateway_store_operations_total{op="load",outcome="ok"}"#) >= 1.0);

    // Histograms: every bucket of both parts, cumulative, +Inf = count.
    for part in ["gateway", "total"] {
        let buckets: Vec<f64> = text
            .lines()
            .filter(|l| {
                l.starts_with(&format!(
                    "mollie_gateway_request_duration_seconds_bucket{{part=\"{part}\","
                ))
            })
            .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
            .collect();
        assert_eq!(
            buckets.len(),
            mollie_gateway::metrics::LATENCY_BUCKETS.len() + 1,
            "{part} buckets:\n{text}"
        );
        assert!(
            buckets.windows(2).all(|w| w[0] <= w[1]),
            "{part}: {buckets:?}"
        );
        let count = v(&format!(
            "mollie_gateway_request_duration_seconds_count{{part=\"{part}\"}}"
        ));
        assert_eq!(buckets.last().copied(), Some(count), "{part}");
    }
    // Gateway-added time exists for the 4 requests that reached the API; total for all 6.
    assert_eq!(
        v(r#"mollie_gateway_request_duration_seconds_count{part="gateway"}"#),
        4.0
    );
    assert_eq!(
        v(r#"mollie_gateway_request_duration_seconds_count{part="total"}"#),
        6.0
    );

    // Every family is ours, declared, and explained.
    let (types, helped) = families(&text);
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = line.split(['{', ' ']).next().expect("sample name");
        assert!(
            name.starts_with("mollie_gateway_"),
            "foreign metric: {line}"
        );
        let family = family_of(name, &types);
        assert!(helped.contains(family), "no HELP for {family}");
    }
    assert!(types.len() >= 11, "families: {types:?}");

    // No label value (indeed no byte of the exposition) names a merchant or holds a secret.
    let issued = std::fs::read_to_string(fake_mollie::secrets_dir().join(format!(
        "{}-{}.txt",
        std::process::id(),
        fake.addr().port()
    )))
    .expect("the fake's secrets file");
    let mut forbidden: Vec<&str> = issued.lines().filter(|l| !l.is_empty()).collect();
    assert!(forbidden.len() >= 3, "issued: {forbidden:?}");
    forbidden.extend([MERCHANT, UNKNOWN, fake_mollie::CLIENT_SECRET]);
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let labels = line
            .split_once('{')
            .and_then(|(_, rest)| rest.rsplit_once('}'))
            .map_or("", |(labels, _)| labels);
        for f in &forbidden {
            assert!(!labels.contains(f), "label holds {f:?}: {line}");
        }
    }
    for f in &forbidden {
        assert!(!text.contains(f), "/metrics holds {f:?}");
    }

    assert!(gw.terminate().is_some_and(|s| s.success()));
}
