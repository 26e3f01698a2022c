//! Header transparency, both ways: every end-to-end header of the caller reaches Mollie and
//! every end-to-end header of Mollie reaches the caller, byte for byte, repeats and order kept —
//! except `Authorization` and the merchant header (replaced/removed on the way in) and the
//! hop-by-hop headers (RFC 9110 §7.6.1: `Connection`, `Keep-Alive`, `TE`, `Transfer-Encoding`,
//! `Upgrade`, `Proxy-Connection`, and every header named in `Connection`), which belong to one
//! connection and are not forwarded. Raw HTTP/1.1 on both sides, so no client library adds,
//! merges or hides anything.

mod support;

use std::time::Duration;
use support::fake_mollie::FakeMollie;
use support::{Gateway, GatewayBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIVE_KEY: &str = "Bearer live_gatewaygatewaygatewaygatewayga";

/// Hop-by-hop names that must never cross the gateway (plus the ones a test nominates).
const HOP_BY_HOP: [&str; 4] = ["keep-alive", "te", "upgrade", "proxy-connection"];

struct RawResponse {
    status_line: String,
    /// Lowercase names, in arrival order, repeats kept.
    headers: Vec<(String, String)>,
}

impl RawResponse {
    fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Writes `request` to `addr` as is and reads the answer until the peer closes (bounded).
async fn raw(addr: &str, request: &[u8]) -> RawResponse {
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut buf))
        .await
        .expect("response timed out")
        .expect("read response");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("").to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    RawResponse {
        status_line,
        headers,
    }
}

async fn gateway_with_m1(fake: &FakeMollie) -> Gateway {
    let refresh = fake.add_merchant("m1");
    let mut gw = GatewayBuilder::new(fake).prepare();
    let out = gw.cli(&["merchants", "add", "m1", "--refresh-token", &refresh]);
    assert!(out.status.success(), "{out:?}");
    gw.spawn();
    gw
}

/// The end-to-end request headers of the tests below, in order (`X-Custom` twice).
const END_TO_END_IN: [(&str, &str); 11] = [
    ("Idempotency-Key", "idem-7f3c2a91-Key"),
    ("Content-Type", "application/json"),
    ("Accept", "application/hal+json"),
    ("Accept-Language", "nl-NL,nl;q=0.9"),
    ("User-Agent", "Mollie/4.0.0 Python/3.11.7 OpenSSL/3.0.2"),
    ("X-Mollie-Client-Info", "Linux 6.1 x86_64"),
    ("X-Custom", "one"),
    ("X-Custom", "two"),
    ("X-Spaces", "a  b ;q=\"c, d\""),
    ("Cookie", "session=abc; theme=dark"),
    ("Cache-Control", "no-cache"),
];

fn request_head(method: &str, path: &str, framing: &str, hop_by_hop: bool) -> String {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: gateway.internal\r\nX-Merchant-Id: m1\r\n\
         Authorization: {LIVE_KEY}\r\n{framing}"
    );
    for (n, v) in END_TO_END_IN {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if hop_by_hop {
        head.push_str(
            "Connection: close, X-Hop-Req\r\nX-Hop-Req: hop-secret\r\nKeep-Alive: timeout=5\r\n\
             TE: trailers\r\nProxy-Connection: keep-alive\r\nUpgrade: foo/1\r\n",
        );
    } else {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    head
}

/// What the fake received: everything end-to-end, in order; nothing hop-by-hop.
fn assert_forwarded(fake: &FakeMollie, body: &str) {
    let seen = fake.api_requests().pop().expect("the fake saw the request");
    let token = fake.current_access_token("m1").unwrap();
    let names: Vec<&str> = seen.headers.iter().map(|(n, _)| n.as_str()).collect();
    for (n, v) in END_TO_END_IN.iter().filter(|(n, _)| *n != "X-Custom") {
        assert_eq!(seen.header_values(n), vec![*v], "{n} (fake saw {names:?})");
    }
    assert_eq!(seen.header_values("x-custom"), vec!["one", "two"]);
    assert_eq!(
        seen.header_values("authorization"),
        vec![format!("Bearer {token}")]
    );
    assert!(seen.header("x-merchant-id").is_none());
    for name in HOP_BY_HOP.iter().chain(&["x-hop-req"]) {
        assert!(
            seen.header(name).is_none(),
            "hop-by-hop {name} was forwarded: {:?}",
            seen.header(name)
        );
    }
    for v in seen.header_values("connection") {
        assert!(!v.to_ascii_lowercase().contains("x-hop-req"), "{v}");
    }
    assert_eq!(String::from_utf8_lossy(&seen.body), body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_headers_pass_through_except_auth_merchant_and_hop_by_hop() {
    let fake = FakeMollie::start().await;
    let gw = gateway_with_m1(&fake).await;

    // Content-Length framing, with every hop-by-hop header a caller could send.
    let body = r#"{"amount":{"currency":"EUR","value":"10.00"}}"#;
    let framing = format!("Content-Length: {}\r\n", body.len());
    let req = request_head("POST", "/v2/echo/headers-in", &framing, true) + body;
    let resp = raw(&gw.listen, req.as_bytes()).await;
    assert!(
        resp.status_line.starts_with("HTTP/1.1 200"),
        "{}",
        resp.status_line
    );
    assert_forwarded(&fake, body);

    // Chunked framing from the caller: the body arrives whole, however it is re-framed.
    let framing = "Transfer-Encoding: chunked\r\n";
    let (a, b) = body.split_at(10);
    let req = request_head("POST", "/v2/echo/headers-in", framing, false)
        + &format!("{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n", a.len(), b.len());
    let resp = raw(&gw.listen, req.as_bytes()).await;
    assert!(
        resp.status_line.starts_with("HTTP/1.1 200"),
        "{}",
        resp.status_line
    );
    assert_forwarded(&fake, body);
}

/// Response headers the fake is asked to send: end-to-end ones, then hop-by-hop ones.
const END_TO_END_OUT: [(&str, &str); 8] = [
    ("Idempotent-Replayed", "true"),
    ("X-Request-Id", "req_4b2f 9c"),
    ("X-Multi", "a"),
    ("X-Multi", "b"),
    ("Retry-After", "7"),
    ("Set-Cookie", "mollie=1; Path=/; HttpOnly"),
    ("Link", "<https://docs.mollie.com/reference>; rel=\"help\""),
    ("Cache-Control", "no-store, max-age=0"),
];
const HOP_BY_HOP_OUT: [(&str, &str); 5] = [
    ("Connection", "X-Hop-Resp"),
    ("X-Hop-Resp", "hop-secret"),
    ("Keep-Alive", "timeout=9"),
    ("Proxy-Connection", "keep-alive"),
    ("Upgrade", "foo/1"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_headers_pass_through_except_hop_by_hop() {
    let fake = FakeMollie::start().await;
    let gw = gateway_with_m1(&fake).await;

    let query: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(
            END_TO_END_OUT
                .iter()
                .chain(&HOP_BY_HOP_OUT)
                .map(|(n, v)| ("set", format!("{n}:{v}"))),
        )
        .finish();
    let path = format!("/v2/headers?{query}");
    let get = |auth: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nX-Merchant-Id: m1\r\nAuthorization: {auth}\r\n\
             Connection: close\r\n\r\n"
        )
    };
    let via_gateway = raw(&gw.listen, get(LIVE_KEY).as_bytes()).await;
    assert!(
        via_gateway.status_line.starts_with("HTTP/1.1 200"),
        "{}",
        via_gateway.status_line
    );

    // The fake itself really sends all of them (else the checks below prove nothing).
    let token = fake.current_access_token("m1").unwrap();
    let direct = raw(
        &fake.addr().to_string(),
        get(&format!("Bearer {token}")).as_bytes(),
    )
    .await;
    for (n, v) in END_TO_END_OUT.iter().chain(&HOP_BY_HOP_OUT) {
        let lower = n.to_ascii_lowercase();
        // (hyper may append `close` to the fake's `Connection`.)
        assert!(
            direct.values(&lower).iter().any(|x| x.starts_with(v)),
            "the fake did not send {n}: {v} ({:?})",
            direct.headers
        );
    }

    for (n, _) in END_TO_END_OUT {
        let lower = n.to_ascii_lowercase();
        let expected: Vec<&str> = END_TO_END_OUT
            .iter()
            .filter(|(m, _)| m.eq_ignore_ascii_case(n))
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(via_gateway.values(&lower), expected, "{n}");
    }
    assert_eq!(
        via_gateway.values("content-type"),
        vec!["application/hal+json"]
    );
    for name in ["x-hop-resp", "keep-alive", "proxy-connection", "upgrade"] {
        assert!(
            via_gateway.values(name).is_empty(),
            "hop-by-hop {name} reached the caller: {:?}",
            via_gateway.values(name)
        );
    }
    for v in via_gateway.values("connection") {
        assert!(!v.to_ascii_lowercase().contains("x-hop-resp"), "{v}");
    }
}
