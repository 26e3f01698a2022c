//! The upstream over TLS: SNI sent, certificate verified against the configured CA, and an
//! untrusted certificate refused (502, nothing accepted by the gateway).

mod support;

use support::fake_mollie::FakeMollie;
use support::tls::TlsFront;
use support::{client, GatewayBuilder};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_with_sni_and_a_verified_certificate() {
    let fake = FakeMollie::start().await;
    let front = TlsFront::start(fake.addr()).await;
    let mut gw = GatewayBuilder::new(&fake)
        .env("UPSTREAM__BASE_URL", front.base_url())
        .env("UPSTREAM__CA_FILE", front.ca_file.display().to_string())
        .prepare();
    gw.onboard(&fake, "m1");
    gw.spawn();

    let resp = client()
        .get(format!("{}/v2/echo/tls", gw.base_url()))
        .header("X-Merchant-Id", "m1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = fake.api_requests();
    assert_eq!(
        seen.last().unwrap().header("host"),
        Some(format!("localhost:{}", front.port).as_str())
    );
    let sni = front.sni.lock().unwrap().clone();
    assert!(
        !sni.is_empty() && sni.iter().all(|s| s == "localhost"),
        "{sni:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_upstream_certificate_is_refused() {
    let fake = FakeMollie::start().await;
    let front = TlsFront::start(fake.addr()).await;
    // No ca_file: the test CA is not among the system's roots.
    let mut gw = GatewayBuilder::new(&fake)
        .env("UPSTREAM__BASE_URL", front.base_url())
        .prepare();
    gw.onboard(&fake, "m1");
    gw.spawn();

    let resp = client()
        .get(format!("{}/v2/echo/tls", gw.base_url()))
        .header("X-Merchant-Id", "m1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-gateway-error"], "upstream_unavailable");
    assert_eq!(
        fake.api_calls_total(),
        0,
        "nothing may pass an unverified TLS session"
    );
}

/// A pooled TLS 1.3 connection is reused: the session tickets the server sends after the
/// handshake arrive while the connection is idle, and the check at checkout reads them
/// through TLS instead of taking them for stray data and throwing the connection away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_tls_connection_is_reused_despite_session_tickets() {
    let fake = FakeMollie::start().await;
    let front = TlsFront::start(fake.addr()).await;
    let mut gw = GatewayBuilder::new(&fake)
        .env("UPSTREAM__BASE_URL", front.base_url())
        .env("UPSTREAM__CA_FILE", front.ca_file.display().to_string())
        .env("SERVER__THREADS", "1")
        .prepare();
    gw.onboard(&fake, "m1");
    gw.spawn();
    for i in 0..5 {
        let resp = client()
            .get(format!("{}/v2/echo/tls{i}", gw.base_url()))
            .header("X-Merchant-Id", "m1")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        // Idle long enough for the tickets to arrive before the next checkout.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let handshakes = front.sni.lock().unwrap().len();
    assert_eq!(
        handshakes, 1,
        "one TLS connection for five sequential requests"
    );
}
