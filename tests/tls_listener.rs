//! The HTTPS proxy listener (`server.tls_cert`/`tls_key`): a client that trusts the test CA
//! negotiates HTTP/2 when it offers `h2`, HTTP/1.1 when it offers only that (or nothing), and
//! both carry a proxied request to the fake Mollie. The OAuth listener (`server.oauth_listen`)
//! serves its pages over HTTPS with the same certificate. The HTTP/2 round trip uses pingora's own
//! client (already a dependency), so no new crate is needed.

mod support;

use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;
use std::sync::Arc;
use std::time::Duration;
use support::fake_mollie::FakeMollie;
use support::tls::ListenerPki;
use support::{Gateway, GatewayBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::ServerName;

/// Every network step of this file is bounded by this.
const STEP: Duration = Duration::from_secs(10);

/// A gateway serving HTTPS with the test leaf, merchant m1 onboarded.
fn tls_gateway(fake: &FakeMollie, pki: &ListenerPki) -> Gateway {
    let refresh = fake.add_merchant("m1");
    let mut gw = GatewayBuilder::new(fake)
        .env("SERVER__TLS_CERT", pki.cert_file.display().to_string())
        .env("SERVER__TLS_KEY", pki.key_file.display().to_string())
        .prepare();
    let out = gw.cli(&["merchants", "add", "m1", "--refresh-token", &refresh]);
    assert!(out.status.success(), "{out:?}");
    gw.spawn(); // readiness is probed on the plain-HTTP admin listener
    gw
}

/// TLS to the gateway's proxy listener, trusting only the test CA, offering `alpn`.
async fn handshake(
    gw: &Gateway,
    pki: &ListenerPki,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    handshake_with(&gw.listen, pki, alpn).await
}

/// TLS to `addr`, trusting only the test CA, offering `alpn`.
async fn handshake_with(
    addr: &str,
    pki: &ListenerPki,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::time::timeout(STEP, tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(STEP, connector.connect(name, tcp))
        .await
        .expect("TLS handshake timed out")
        .expect("TLS handshake with a certificate from the test CA")
}

/// Sends one raw HTTP/1.1 request (`Connection: close`) and returns the whole response text.
async fn http1_round_trip<S>(stream: &mut S, path: &str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nX-Merchant-Id: m1\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    // The server may close without close_notify once the response is complete: keep what came.
    let _ = tokio::time::timeout(STEP, stream.read_to_end(&mut buf))
        .await
        .expect("response timed out");
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_offers_h2_and_http11_and_http11_round_trips() {
    let fake = FakeMollie::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = ListenerPki::write(dir.path());
    let gw = tls_gateway(&fake, &pki);

    let tls = handshake(&gw, &pki, &[b"h2", b"http/1.1"]).await;
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "offering h2 and http/1.1 must negotiate h2"
    );
    drop(tls);

    for offer in [&[&b"http/1.1"[..]][..], &[][..]] {
        let mut tls = handshake(&gw, &pki, offer).await;
        let negotiated = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        if offer.is_empty() {
            assert_eq!(negotiated, None, "no ALPN offered, none chosen");
        } else {
            assert_eq!(negotiated.as_deref(), Some(&b"http/1.1"[..]));
        }
        let resp = http1_round_trip(&mut tls, "/v2/echo/tls-http11").await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(resp.contains("\"path\":\"/v2/echo/tls-http11\""), "{resp}");
    }
    let seen = fake.api_requests();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|r| r.merchant.as_deref() == Some("m1")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_request_is_proxied() {
    let fake = FakeMollie::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = ListenerPki::write(dir.path());
    let gw = tls_gateway(&fake, &pki);

    let mut options = ConnectorOptions::new(4);
    options.ca_file = Some(pki.ca_file.display().to_string());
    let connector = Connector::new(Some(options));
    let mut peer = HttpPeer::new(
        gw.listen.parse::<std::net::SocketAddr>().unwrap(),
        true,
        "localhost".to_string(),
    );
    peer.options.alpn = ALPN::H2;
    peer.options.connection_timeout = Some(STEP);
    peer.options.total_connection_timeout = Some(STEP);
    peer.options.read_timeout = Some(STEP);
    let (mut session, _reused) = connector
        .get_http_session(&peer)
        .await
        .expect("HTTP/2 session to the gateway");
    assert!(
        matches!(session, HttpSession::H2(_)),
        "the gateway must speak HTTP/2 when only h2 is offered"
    );

    let mut req = RequestHeader::build("GET", b"/v2/echo/tls-h2?x=1", None).unwrap();
    req.insert_header("Host", "localhost").unwrap();
    req.insert_header("X-Merchant-Id", "m1").unwrap();
    req.insert_header("Idempotency-Key", "h2-key").unwrap();
    session.write_request_header(Box::new(req)).await.unwrap();
    session.finish_request_body().await.unwrap();
    tokio::time::timeout(STEP, session.read_response_header())
        .await
        .expect("response header timed out")
        .expect("response header");
    let status = session.response_header().expect("response").status;
    let mut body = Vec::new();
    for _ in 0..1000 {
        match tokio::time::timeout(STEP, session.read_response_body())
            .await
            .expect("body timed out")
            .expect("body")
        {
            Some(chunk) => body.extend_from_slice(&chunk),
            None => break,
        }
    }
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["path"], "/v2/echo/tls-h2");
    assert_eq!(echo["query"], "x=1");
    assert_eq!(echo["merchant"], "m1");
    assert_eq!(echo["headers"]["idempotency-key"], "h2-key");
    assert!(echo["headers"].get("x-merchant-id").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oauth_listener_serves_https_like_the_proxy() {
    let fake = FakeMollie::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = ListenerPki::write(dir.path());
    let gw = GatewayBuilder::new(&fake)
        .env("SERVER__TLS_CERT", pki.cert_file.display().to_string())
        .env("SERVER__TLS_KEY", pki.key_file.display().to_string())
        .env("SERVER__OAUTH_LISTEN", "127.0.0.1:0")
        .env("OAUTH__REDIRECT_URI", "https://localhost/oauth/callback")
        .start();
    let mut tls = handshake_with(&gw.oauth, &pki, &[b"http/1.1"]).await;
    let resp = http1_round_trip(&mut tls, "/oauth/connect?merchant=m1").await;
    assert!(resp.starts_with("HTTP/1.1 302"), "{resp}");
    let mut tls = handshake_with(&gw.oauth, &pki, &[b"http/1.1"]).await;
    let resp = http1_round_trip(&mut tls, "/metrics").await;
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
}
