//! Mollie's newer Python SDK (mollie-api-py, Speakeasy-generated, pinned in `scripts/setup`)
//! works through the gateway with only the README's changes: server URL, dummy key, merchant
//! header on the `httpx.Client` it is given. Runs `tests/sdk/python_new_sdk_check.py` in
//! `target/sdk-venv-py2` (its `mollie` module clashes with mollie-api-python's).

mod sdk;
mod support;

use std::process::Command;
use std::time::Duration;
use support::GatewayBuilder;

fn python() -> std::path::PathBuf {
    let python = sdk::target_dir("sdk-venv-py2").join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup --test (it installs mollie-api-py into \
         target/sdk-venv-py2)",
        python.display()
    );
    python
}

fn script(args: &[&str]) -> Command {
    let mut cmd = Command::new(python());
    cmd.arg(sdk::script("python_new_sdk_check.py"))
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_new_sdk_creates_fetches_pages_and_lists_per_merchant() {
    let fake = sdk::fake_with_resources().await;
    let gw = sdk::sdk_gateway(&fake, "http://{listen}", GatewayBuilder::new(&fake));

    let cmd = script(&["flow", &gw.base_url()]);
    let (ok, output) = sdk::run_bounded(cmd, Duration::from_secs(30)).await;
    assert!(
        ok,
        "python_new_sdk_check.py flow failed:\n{output}\n--- gateway log ---\n{}",
        gw.log_text()
    );
    assert!(output.contains("\"ok\": true"), "{output}");
    sdk::assert_fake_view(&fake);
    sdk::assert_sdk_globals_reached_mollie(&fake);
    // The second page was fetched through the gateway, from the rewritten `next` link.
    assert!(
        fake.api_requests().iter().any(|r| r.path == "/v2/payments"
            && r.query.as_deref().is_some_and(|q| q.contains("from=tr_"))),
        "no request followed a `next` link"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_new_sdk_retries_a_503_after_retry_after_and_surfaces_a_lasting_one() {
    let (fake, gw, unconfigured) = sdk::retry_gateways().await;
    let cmd = script(&["retry", &gw.base_url(), &unconfigured.base_url()]);
    let (ok, output) = sdk::run_with_token_endpoint_recovering(&fake, &gw, cmd).await;
    assert!(
        ok,
        "python_new_sdk_check.py retry failed:\n{output}\n--- gateway log ---\n{}\n\
         --- unconfigured gateway log ---\n{}",
        gw.log_text(),
        unconfigured.log_text()
    );
    assert!(output.contains("\"ok\": true"), "{output}");
    sdk::assert_retry_view(&fake);
}
