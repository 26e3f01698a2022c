//! The official Node SDK (@mollie/api-client, pinned in `scripts/setup`) works through the
//! gateway's HTTPS listener with the README's recipe (an `https.Agent` that adds the merchant
//! header and trusts the gateway's CA). Runs `tests/sdk/node_sdk_check.js` with `node`.

mod sdk;
mod support;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use std::process::Command;
use std::time::Duration;
use support::GatewayBuilder;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_sdk_creates_fetches_pages_iterates_and_lists_per_merchant() {
    let modules = sdk::target_dir("sdk-node").join("node_modules");
    assert!(
        modules.join("@mollie/api-client").exists(),
        "{} has no @mollie/api-client: run scripts/setup (it needs node and npm)",
        modules.display()
    );
    // The Node SDK accepts only https: a CA, a 127.0.0.1 leaf, and a TLS proxy listener.
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "mollie-gateway SDK test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let (ca_file, cert, key_file) = (
        dir.path().join("ca.pem"),
        dir.path().join("gw.crt"),
        dir.path().join("gw.key"),
    );
    std::fs::write(&ca_file, ca.pem()).unwrap();
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();

    let fake = sdk::fake_with_resources().await;
    // Node's iterate() asks for 128 per page; cap pages so it must follow `next` links.
    fake.resources().set_page_cap(2);
    let builder = GatewayBuilder::new(&fake)
        .env("SERVER__TLS_CERT", cert.display().to_string())
        .env("SERVER__TLS_KEY", key_file.display().to_string());
    let gw = sdk::sdk_gateway(&fake, "https://{listen}", builder);
    // Node takes a URL ending in /v2/.
    let endpoint = format!("https://{}/v2/", gw.listen);

    let mut cmd = Command::new("node");
    cmd.arg(sdk::script("node_sdk_check.js"))
        .arg(&endpoint)
        .arg(&ca_file)
        .env("NODE_PATH", &modules);
    let (ok, output) = sdk::run_bounded(cmd, Duration::from_secs(30)).await;
    assert!(
        ok,
        "node_sdk_check.js failed:\n{output}\n--- gateway log ---\n{}",
        gw.log_text()
    );
    assert!(output.contains("\"ok\":true"), "{output}");
    sdk::assert_fake_view(&fake);
}
