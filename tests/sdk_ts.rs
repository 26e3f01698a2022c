//! Mollie's TypeScript SDK (mollie-api-typescript, Speakeasy-generated, pinned in
//! `scripts/setup`) works through the gateway with only the README's changes: server URL,
//! dummy key, an `HTTPClient` whose `beforeRequest` hook adds the merchant header. It uses the
//! runtime's `fetch`, so plain `http://` works. Runs `tests/sdk/ts_sdk_check.js` with `node`.

mod sdk;
mod support;

use std::process::Command;
use std::time::Duration;
use support::GatewayBuilder;

fn script(args: &[&str]) -> Command {
    let modules = sdk::target_dir("sdk-ts").join("node_modules");
    assert!(
        modules.join("mollie-api-typescript").exists(),
        "{} has no mollie-api-typescript: run scripts/setup --test (it needs node and npm)",
        modules.display()
    );
    let mut cmd = Command::new("node");
    cmd.arg(sdk::script("ts_sdk_check.js"))
        .args(args)
        .env("NODE_PATH", &modules);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ts_sdk_creates_fetches_pages_iterates_and_lists_per_merchant() {
    let fake = sdk::fake_with_resources().await;
    let gw = sdk::sdk_gateway(&fake, "http://{listen}", GatewayBuilder::new(&fake));

    let cmd = script(&["flow", &gw.base_url()]);
    let (ok, output) = sdk::run_bounded(cmd, Duration::from_secs(30)).await;
    assert!(
        ok,
        "ts_sdk_check.js flow failed:\n{output}\n--- gateway log ---\n{}",
        gw.log_text()
    );
    assert!(output.contains("\"ok\":true"), "{output}");
    sdk::assert_fake_view(&fake);
    sdk::assert_sdk_globals_reached_mollie(&fake);
    // Second pages were fetched through the gateway, from the rewritten `next` links.
    assert!(
        fake.api_requests().iter().any(|r| r.path == "/v2/payments"
            && r.query.as_deref().is_some_and(|q| q.contains("from=tr_"))),
        "no request followed a `next` link"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ts_sdk_retries_a_503_after_retry_after_and_surfaces_a_lasting_one() {
    let (fake, gw, unconfigured) = sdk::retry_gateways().await;
    let cmd = script(&["retry", &gw.base_url(), &unconfigured.base_url()]);
    let (ok, output) = sdk::run_with_token_endpoint_recovering(&fake, &gw, cmd).await;
    assert!(
        ok,
        "ts_sdk_check.js retry failed:\n{output}\n--- gateway log ---\n{}\n\
         --- unconfigured gateway log ---\n{}",
        gw.log_text(),
        unconfigured.log_text()
    );
    assert!(output.contains("\"ok\":true"), "{output}");
    sdk::assert_retry_view(&fake);
}
