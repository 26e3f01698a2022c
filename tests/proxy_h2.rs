//! Issue 9 over the HTTPS listener with HTTP/2: the request id, a streamed response body and
//! the body size limit. The client is pingora's own (as in `tests/tls_listener.rs`); the
//! upstream is a [`RawUpstream`].

mod support;

use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;
use std::time::{Duration, Instant};
use support::fake_mollie::FakeMollie;
use support::raw::{gateway, RawUpstream, Reply};
use support::tls::ListenerPki;
use support::Gateway;

/// Every network step of this file is bounded by this.
const STEP: Duration = Duration::from_secs(5);

/// A gateway with m1 and m2 serving HTTPS in front of `up`, and an HTTP/2 session to it.
async fn h2_gateway(
    fake: &FakeMollie,
    up: &RawUpstream,
    env: &[(&str, &str)],
) -> (Gateway, HttpSession, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let pki = ListenerPki::write(dir.path());
    let (cert, key) = (
        pki.cert_file.display().to_string(),
        pki.key_file.display().to_string(),
    );
    let mut env = env.to_vec();
    env.extend([
        ("SERVER__TLS_CERT", cert.as_str()),
        ("SERVER__TLS_KEY", key.as_str()),
    ]);
    let gw = gateway(fake, up, &env);

    let mut options = ConnectorOptions::new(4);
    options.ca_file = Some(pki.ca_file.display().to_string());
    let connector = Connector::new(Some(options));
    let addr = gw.listen.parse::<std::net::SocketAddr>().unwrap();
    let mut peer = HttpPeer::new(addr, true, "localhost".to_string());
    peer.options.alpn = ALPN::H2;
    peer.options.connection_timeout = Some(STEP);
    peer.options.total_connection_timeout = Some(STEP);
    peer.options.read_timeout = Some(STEP);
    let (session, _) = connector
        .get_http_session(&peer)
        .await
        .expect("an HTTP/2 session");
    assert!(matches!(session, HttpSession::H2(_)), "not HTTP/2");
    (gw, session, dir)
}

/// Sends a request of m1 (`body`: sent whole, `None`: no body) and reads the response head.
async fn send(
    s: &mut HttpSession,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> ResponseHeader {
    let mut req = RequestHeader::build(method, path.as_bytes(), None).unwrap();
    req.insert_header("Host", "localhost").unwrap();
    req.insert_header("X-Merchant-Id", "m1").unwrap();
    for (n, v) in headers {
        req.insert_header(n.to_string(), *v).unwrap();
    }
    s.write_request_header(Box::new(req)).await.unwrap();
    match body {
        // The gateway may answer (and reset the stream) before the body is taken.
        Some(body) => drop(
            s.write_request_body(Bytes::copy_from_slice(body), true)
                .await,
        ),
        None => s.finish_request_body().await.unwrap(),
    }
    tokio::time::timeout(STEP, s.read_response_header())
        .await
        .expect("response head timed out")
        .expect("response head");
    s.response_header().expect("a response").clone()
}

/// The rest of the response body.
async fn body(s: &mut HttpSession) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..1000 {
        let chunk = tokio::time::timeout(STEP, s.read_response_body()).await;
        match chunk.expect("body timed out").expect("body") {
            Some(chunk) => out.extend_from_slice(&chunk),
            None => break,
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_the_request_id_is_forwarded_and_echoed() {
    let fake = FakeMollie::start().await;
    let up = RawUpstream::echo().await;
    let (_gw, mut s, _dir) = h2_gateway(&fake, &up, &[]).await;
    let resp = send(
        &mut s,
        "GET",
        "/v2/methods",
        &[("X-Request-Id", "abc-123")],
        None,
    )
    .await;
    let echo = body(&mut s).await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&echo));
    assert_eq!(
        up.conn(0).requests[0].header_values("x-request-id"),
        ["abc-123"]
    );
    let id = resp.headers.get("x-request-id").map(|v| v.as_bytes());
    assert_eq!(id, Some(&b"abc-123"[..]), "{resp:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_a_paused_body_is_streamed() {
    let fake = FakeMollie::start().await;
    let first = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 30\r\n\r\n\
                 0123456789";
    let reply = Reply::paused(first, Duration::from_secs(3), "abcdefghijklmnopqrst");
    let up = RawUpstream::start(move |_| reply.clone()).await;
    let (_gw, mut s, _dir) = h2_gateway(&fake, &up, &[]).await;
    let sent = Instant::now();
    let resp = send(&mut s, "GET", "/v2/payments/tr_1", &[], None).await;
    assert_eq!(resp.status, 200);
    let mut early = Vec::new();
    while early.len() < 10 && sent.elapsed() < Duration::from_millis(1500) {
        let left = Duration::from_millis(1500).saturating_sub(sent.elapsed());
        match tokio::time::timeout(left, s.read_response_body()).await {
            Ok(Ok(Some(chunk))) => early.extend_from_slice(&chunk),
            _ => break,
        }
    }
    assert_eq!(early, b"0123456789", "after {:?}", sent.elapsed());
    assert_eq!(body(&mut s).await, b"abcdefghijklmnopqrst");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_a_content_length_above_the_limit_gets_413() {
    let fake = FakeMollie::start().await;
    let up = RawUpstream::echo().await;
    let (_gw, mut s, _dir) = h2_gateway(&fake, &up, &[("SERVER__MAX_BODY_BYTES", "1000")]).await;
    let big = vec![b'x'; 2000];
    let resp = send(
        &mut s,
        "POST",
        "/v2/payments",
        &[("Content-Length", "2000")],
        Some(&big),
    )
    .await;
    let error = body(&mut s).await;
    assert_eq!(resp.status, 413, "{}", String::from_utf8_lossy(&error));
    let code = resp.headers.get("x-gateway-error").map(|v| v.as_bytes());
    assert_eq!(code, Some(&b"body_too_large"[..]));
    let json: serde_json::Value = serde_json::from_slice(&error).unwrap();
    assert_eq!(json["status"], 413);
    assert_eq!(up.connections(), 0, "the upstream was contacted");
}
