//! The official Python SDK (mollie-api-python, pinned in `scripts/setup`) works through the
//! gateway with only the README's changes: base URL, dummy key, merchant header on its
//! `requests` session. Runs `tests/sdk/python_sdk_check.py` in `target/sdk-venv`.

mod sdk;
mod support;

use std::process::Command;
use std::time::Duration;
use support::GatewayBuilder;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_creates_fetches_pages_and_lists_per_merchant() {
    let python = sdk::target_dir("sdk-venv").join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup (it installs mollie-api-python into target/sdk-venv)",
        python.display()
    );
    let fake = sdk::fake_with_resources().await;
    let gw = sdk::sdk_gateway(&fake, "http://{listen}", GatewayBuilder::new(&fake));

    let mut cmd = Command::new(&python);
    cmd.arg(sdk::script("python_sdk_check.py"))
        .arg(gw.base_url())
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let (ok, output) = sdk::run_bounded(cmd, Duration::from_secs(30)).await;
    assert!(
        ok,
        "python_sdk_check.py failed:\n{output}\n--- gateway log ---\n{}",
        gw.log_text()
    );
    assert!(output.contains("\"ok\": true"), "{output}");
    sdk::assert_fake_view(&fake);
    // The second page was fetched through the gateway, from the rewritten `next` link.
    assert!(
        fake.api_requests().iter().any(|r| r.path == "/v2/payments"
            && r.query.as_deref().is_some_and(|q| q.contains("from=tr_"))),
        "no request followed a `next` link"
    );
}
