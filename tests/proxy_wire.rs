//! What the proxy does on the wire that pingora-proxy used to do for it: `Expect:
//! 100-continue`, a request head that cannot be parsed, and a pooled upstream connection that
//! the upstream has closed.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::fake_mollie::FakeMollie;
use support::{client, start_with_m1, GatewayBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads from `s` until `needle` has arrived (or 5 s pass); returns everything read.
async fn read_until(s: &mut TcpStream, needle: &str) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(&out).contains(needle) {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_by_the_gateway_and_not_forwarded() {
    let fake = FakeMollie::start().await;
    let gw = start_with_m1(&fake, &[]);
    let body = r#"{"amount":{"currency":"EUR","value":"10.00"}}"#;
    let mut s = TcpStream::connect(&gw.listen).await.unwrap();
    let head = format!(
        "POST /v2/echo/continue HTTP/1.1\r\nHost: x\r\nX-Merchant-Id: m1\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // The body is held back until the gateway says to go on.
    let interim = read_until(&mut s, "\r\n\r\n").await;
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim:?}");
    s.write_all(body.as_bytes()).await.unwrap();
    let answer = read_until(&mut s, "x-fake-mollie").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");

    let seen = fake.api_requests().pop().expect("the fake saw the request");
    assert!(seen.header("expect").is_none(), "Expect was forwarded");
    assert_eq!(String::from_utf8_lossy(&seen.body), body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unparsable_request_head_gets_a_counted_mollie_shaped_400() {
    let fake = FakeMollie::start().await;
    let gw = start_with_m1(&fake, &[]);
    let mut s = TcpStream::connect(&gw.listen).await.unwrap();
    // A DEL byte in a header value: pingora's parser refuses the whole head.
    s.write_all(b"GET /v2/methods HTTP/1.1\r\nHost: x\r\nX-Merchant-Id: m\x7f1\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let answer = String::from_utf8_lossy(&out);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("x-gateway-error: bad_request"), "{answer:?}");
    assert!(answer.contains(r#""status":400"#), "{answer:?}");
    assert_eq!(fake.api_calls_total(), 0);
    let sample = r#"mollie_gateway_gateway_errors_total{code="bad_request"}"#;
    assert_eq!(gw.metric(sample).await, 1.0);
}

/// An upstream that answers the first request on each connection and, on its second, closes
/// the connection without answering: what a pooled connection the upstream closed looks like.
async fn closing_upstream() -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (connections, answered) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (c, a) = (connections.clone(), answered.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let a = a.clone();
            tokio::spawn(async move {
                let first = read_until(&mut s, "\r\n\r\n").await;
                if first.is_empty() {
                    return;
                }
                let body = r#"{"resource":"method"}"#;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/hal+json\r\n\
                     Content-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(answer.as_bytes()).await.unwrap();
                a.fetch_add(1, Ordering::SeqCst);
                let _second = read_until(&mut s, "\r\n\r\n").await;
                // Dropped: closed without an answer.
            });
        }
    });
    (format!("http://{addr}"), connections, answered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pooled_connection_is_retried_only_for_idempotent_requests() {
    let fake = FakeMollie::start().await;
    let (upstream, connections, answered) = closing_upstream().await;
    let mut gw = GatewayBuilder::new(&fake)
        .env("UPSTREAM__BASE_URL", upstream)
        .prepare();
    gw.onboard(&fake, "m1");
    gw.spawn();
    let http = client();
    let send = |method: reqwest::Method| {
        http.request(method, format!("{}/v2/methods", gw.base_url()))
            .header("X-Merchant-Id", "m1")
            .header("Content-Type", "application/json")
            .body("{}")
            .send()
    };

    // 1: a new connection, answered and pooled.
    assert_eq!(send(reqwest::Method::GET).await.unwrap().status(), 200);
    // 2: the pooled connection is closed under it: retried once on a new connection.
    let second = send(reqwest::Method::GET).await.unwrap();
    assert_eq!(second.status(), 200);
    // Read to its end, so that the POST follows on the same caller connection, after the
    // gateway has pooled the upstream connection (not on a new one, racing with that).
    second.text().await.unwrap();
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    assert_eq!(answered.load(Ordering::SeqCst), 2);
    // 3: a POST is never sent twice: the caller gets 502 upstream_unavailable.
    let post = send(reqwest::Method::POST).await.unwrap();
    assert_eq!(post.status(), 502);
    assert_eq!(post.headers()["x-gateway-error"], "upstream_unavailable");
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}
