//! The strict HTTP/1 fast path (`src/proxy/fast.rs`) at the byte level: the same requests
//! through a gateway with the fast path and one without (`server.fast_path = false`) reach the
//! recording upstream as the same bytes and get the same answer heads; keep-alive across
//! merchants with heads split across writes; the upstream's framing (chunked with trailers,
//! until close, informational answers, ambiguous framing); a slow body; and the request
//! shapes that must go to the slow path.

mod support;

use std::time::Duration;
use support::fake_mollie::{FakeMollie, TokenMode};
use support::raw::{bearer, gateway, Caller, RawRequest, RawUpstream, Reply};
use support::{Gateway, GatewayBuilder};

/// Bound of a step that should be quick.
const STEP: Duration = Duration::from_secs(5);

/// A gateway with merchants `a` and `b` (each authorized at the fake for this gateway alone:
/// a second authorization of one merchant revokes the first): `a` gets testmode added, `b` a
/// profile id on creates, so both of the defaults' rewrites are exercised.
fn gateway_with(fake: &FakeMollie, up: &RawUpstream, fast: bool, [a, b]: [&str; 2]) -> Gateway {
    let defaults = format!(
        "[merchants.defaults.{a}]\ntestmode = \"always\"\n\
         [merchants.defaults.{b}]\nprofile_id = \"pfl_fastpath1\"\n"
    );
    let mut gw = GatewayBuilder::new(fake)
        .env("UPSTREAM__BASE_URL", up.base_url())
        .env("SERVER__FAST_PATH", fast.to_string())
        .toml(&defaults)
        .prepare();
    gw.onboard(fake, a);
    gw.onboard(fake, b);
    gw.spawn();
    gw
}

/// Requests of the shape SDKs send, each with its own request id (else a random one).
fn sdk_requests() -> Vec<String> {
    let body = r#"{"amount":{"currency":"EUR","value":"10.00"},"description":"fast"}"#;
    vec![
        "GET /v2/payments?limit=5&from=tr_1 HTTP/1.1\r\nHost: gw.test\r\n\
         User-Agent: Mollie/4.0 Python/3.11\r\n\
         Authorization: Bearer test_dummydummydummydummydummydummy\r\nX-Merchant-Id: m1\r\n\
         Accept: application/json\r\nX-Request-Id: r-1\r\naccept: text/plain\r\n\r\n"
            .into(),
        format!(
            "POST /v2/payments HTTP/1.1\r\ncontent-type: application/json\r\n\
             X-Merchant-Id: m2\r\nconnection: keep-alive\r\ncontent-length: {}\r\n\
             x-request-id: r-2\r\nhost: gw.test\r\n\r\n{body}",
            body.len()
        ),
        format!(
            "POST /v2/payments HTTP/1.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nX-Merchant-Id: m1\r\nX-Request-Id: r-3\r\n\r\n{body}",
            body.len()
        ),
        "DELETE /v2/payments/tr_1 HTTP/1.1\r\nX-Request-Id: r-4\r\nHost: gw.test\r\n\
         x-merchant-id: m2\r\nConnection: close\r\n\r\n"
            .into(),
        "PATCH /v2/payments/tr_1 HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 0\r\n\
         X-Merchant-Id: m2\r\nX-Request-Id: r-5\r\n\r\n"
            .into(),
    ]
}

/// What the upstream received, with the token masked (which token each merchant gets is
/// checked by the keep-alive test below).
fn normalized(req: &RawRequest) -> String {
    let mut out = format!("{} {}\n", req.method, req.target);
    for (name, value) in &req.headers {
        let value = match name.eq_ignore_ascii_case("authorization") {
            true if value.starts_with("Bearer access_") => "Bearer <token>",
            _ => value,
        };
        out.push_str(&format!("{name}: {value}\n"));
    }
    out + &String::from_utf8_lossy(&req.body)
}

/// The answer head without its `Date` value and body length (the echo names the
/// upstream connection).
fn head_without_date(head: &str) -> String {
    let lines = head.split("\r\n").map(|l| match l.split_once(": ") {
        Some(("Date" | "Content-Length", _)) => l.split(':').next().unwrap(),
        _ => l,
    });
    lines.collect::<Vec<_>>().join("\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_paths_send_the_same_bytes_upstream_and_answer_the_same_heads() {
    let fake = FakeMollie::start().await;
    let up = RawUpstream::echo().await;
    let fast = gateway_with(&fake, &up, true, ["m1", "m2"]);
    let slow = gateway_with(&fake, &up, false, ["m3", "m4"]);

    for (i, request) in sdk_requests().iter().enumerate() {
        let mut heads = Vec::new();
        let mut sent = Vec::new();
        for (gw, rename) in [(&fast, None), (&slow, Some([("m1", "m3"), ("m2", "m4")]))] {
            let mut request = request.clone();
            for (from, to) in rename.into_iter().flatten() {
                request = request.replace(&format!(": {from}\r\n"), &format!(": {to}\r\n"));
            }
            let mut caller = Caller::connect(&gw.listen).await;
            caller.send(&request).await.unwrap();
            let answer = caller.response().await;
            assert_eq!(answer.status, 200, "request {i}: {answer:?}");
            heads.push(head_without_date(&answer.head));
            let id = format!("r-{}", i + 1);
            let arrived = up
                .conns()
                .iter()
                .flat_map(|c| c.requests.clone())
                .rfind(|r| r.header("x-request-id") == Some(id.as_str()))
                .expect("the upstream saw the request");
            sent.push(normalized(&arrived));
        }
        assert_eq!(sent[0], sent[1], "request {i} upstream: fast vs slow");
        assert_eq!(heads[0], heads[1], "request {i} answer head: fast vs slow");
    }
    let n = sdk_requests().len() as f64;
    let fast_count = r#"mollie_gateway_http1_requests_total{path="fast"}"#;
    let slow_count = r#"mollie_gateway_http1_requests_total{path="slow"}"#;
    assert_eq!(fast.metric(fast_count).await, n);
    assert_eq!(fast.metric(slow_count).await, 0.0);
    assert_eq!(slow.metric(fast_count).await, 0.0);
    assert_eq!(slow.metric(slow_count).await, n);
    // The defaults were applied (on both paths, as the equality above shows).
    let m1_get = up
        .conns()
        .iter()
        .flat_map(|c| c.requests.clone())
        .find(|r| r.header("x-request-id") == Some("r-1"))
        .unwrap();
    assert!(m1_get.target.ends_with("&testmode=true"), "{m1_get:?}");
    let m2_post = up
        .conns()
        .iter()
        .flat_map(|c| c.requests.clone())
        .find(|r| r.header("x-request-id") == Some("r-2"))
        .unwrap();
    assert!(String::from_utf8_lossy(&m2_post.body).contains("pfl_fastpath1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_keepalive_connection_alternates_merchants_with_heads_split_anywhere() {
    let fake = FakeMollie::start().await;
    let up = RawUpstream::echo().await;
    let gw = gateway(&fake, &up, &[]);
    let mut caller = Caller::connect(&gw.listen).await;
    let body = br#"{"a":1}"#;
    let requests: Vec<(String, &str)> = vec![
        (
            "GET /v2/methods HTTP/1.1\r\nHost: g\r\nX-Merchant-Id: m1\r\n\r\n".into(),
            "m1",
        ),
        (
            format!(
                "POST /v2/payments HTTP/1.1\r\nHost: g\r\nX-Merchant-Id: m2\r\n\
                 Content-Length: {}\r\n\r\n{}",
                body.len(),
                String::from_utf8_lossy(body)
            ),
            "m2",
        ),
        (
            "GET /v2/methods HTTP/1.1\r\nX-Merchant-Id: m1\r\nHost: g\r\n\r\n".into(),
            "m1",
        ),
    ];
    for (round, (request, merchant)) in requests.iter().enumerate() {
        // Split inside the request line, inside the merchant header, and before the body.
        let bytes = request.as_bytes();
        let cuts = [3, bytes.len() / 2, bytes.len() - 2];
        let parts = [
            &bytes[..cuts[0]],
            &bytes[cuts[0]..cuts[1]],
            &bytes[cuts[1]..cuts[2]],
            &bytes[cuts[2]..],
        ];
        caller
            .send_parts(&parts, Duration::from_millis(20))
            .await
            .unwrap();
        let answer = caller.response().await;
        assert_eq!(answer.status, 200, "round {round}: {answer:?}");
        assert_eq!(answer.header("connection"), Some("keep-alive"));
        assert_eq!(answer.json()["authorization"], bearer(&fake, merchant));
    }
    // One upstream connection carried all three, each framed exactly.
    assert_eq!(up.connections(), 1, "{:?}", up.conns());
    let conn = up.conn(0);
    assert_eq!(conn.requests.len(), 3);
    assert!(
        conn.stray().is_empty() && conn.parse_error.is_none(),
        "{conn:?}"
    );
    assert_eq!(conn.requests[1].body, body);
    assert_eq!(
        gw.metric(r#"mollie_gateway_http1_requests_total{path="fast"}"#)
            .await,
        3.0
    );
}

/// The answer `reply` gets from the gateway, on a connection that then must stay usable (or
/// closed, when `closes`).
async fn answered(reply: Reply, closes: bool) -> support::raw::RawResponse {
    let fake = FakeMollie::start().await;
    let up = RawUpstream::start(move |_| reply.clone()).await;
    let gw = gateway(&fake, &up, &[("UPSTREAM__READ_TIMEOUT_MS", "2000")]);
    let mut caller = Caller::connect(&gw.listen).await;
    caller
        .send("GET /v2/x HTTP/1.1\r\nHost: g\r\nX-Merchant-Id: m1\r\n\r\n")
        .await
        .unwrap();
    let answer = caller.response().await;
    assert_eq!(
        caller.closed_within(Duration::from_millis(300)).await,
        closes
    );
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_answer_is_rechunked_without_its_trailers_or_extensions() {
    let answer = answered(
        Reply::Parts(
            vec![
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                  Transfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n5;ext=1\r\n{\"a\":\r\n"
                    .to_vec(),
                b"2\r\n1}\r\n0\r\nX-T: secret\r\n\r\n".to_vec(),
            ],
            Duration::from_millis(50),
        ),
        false,
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), r#"{"a":1}"#);
    assert_eq!(answer.header("transfer-encoding"), Some("chunked"));
    assert!(answer.header("trailer").is_none(), "{answer:?}");
    assert!(!answer.head.contains("ext=") && !answer.head.contains("secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_framed_by_the_close_closes_the_callers_connection() {
    let answer = answered(
        Reply::Cut(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close".to_vec()),
        true,
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "until close");
    assert_eq!(answer.header("connection"), Some("close"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informational_answers_are_not_passed_on() {
    let answer = answered(
        Reply::Raw(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
              HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
                .to_vec(),
        ),
        false,
    )
    .await;
    assert_eq!(answer.status, 201);
    assert_eq!(answer.text(), "ok");
    assert!(answer.header("link").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_with_ambiguous_framing_gets_502() {
    let answer = answered(
        Reply::Raw(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n\
              2\r\nok\r\n0\r\n\r\n"
                .to_vec(),
        ),
        false,
    )
    .await;
    answer.assert_gateway_error(502, "upstream_unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_slower_than_the_head_deadline_gets_408_and_is_not_forwarded() {
    let fake = FakeMollie::start().await;
    let up = RawUpstream::echo().await;
    let gw = gateway(&fake, &up, &[("SERVER__HEADER_TIMEOUT_MS", "400")]);
    let mut caller = Caller::connect(&gw.listen).await;
    caller
        .send("POST /v2/payments HTTP/1.1\r\nHost: g\r\nX-Merchant-Id: m1\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .unwrap();
    let answer = caller.try_response(false, STEP).await.unwrap();
    answer.assert_gateway_error(408, "request_timeout");
    assert!(caller.closed_within(STEP).await);
    assert_eq!(up.connections(), 0, "{:?}", up.conns());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_request_shapes_are_served_by_the_slow_path() {
    let fake = FakeMollie::start().await;
    let up = RawUpstream::echo().await;
    let gw = gateway(&fake, &up, &[]);
    let shapes = [
        "GET /v2/methods HTTP/1.0\r\nX-Merchant-Id: m1\r\n\r\n",
        "HEAD /v2/methods HTTP/1.1\r\nHost: g\r\nX-Merchant-Id: m1\r\n\r\n",
        "POST /v2/payments HTTP/1.1\r\nHost: g\r\nX-Merchant-Id: m1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        "GET /v2/methods HTTP/1.1\r\nHost: g\r\nX-Merchant-Id: m1\r\nConnection: x-drop\r\nX-Drop: 1\r\n\r\n",
        "GET http://g/v2/methods HTTP/1.1\r\nHost: g\r\nX-Merchant-Id: m1\r\n\r\n",
    ];
    for shape in shapes {
        let mut caller = Caller::connect(&gw.listen).await;
        caller.send(shape).await.unwrap();
        let to_head = shape.starts_with("HEAD");
        let answer = caller.try_response(to_head, STEP).await.unwrap();
        assert_eq!(answer.status, 200, "{shape:?}: {answer:?}");
    }
    let n = shapes.len() as f64;
    assert_eq!(
        gw.metric(r#"mollie_gateway_http1_requests_total{path="slow"}"#)
            .await,
        n
    );
    assert_eq!(
        gw.metric(r#"mollie_gateway_http1_requests_total{path="fast"}"#)
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_connection_is_opened_while_the_token_is_refreshed() {
    let fake = FakeMollie::start().await;
    let up = RawUpstream::echo().await;
    let gw = gateway(&fake, &up, &[("OAUTH__TOKEN_TIMEOUT_MS", "5000")]);
    // The gateway starts with no access token: the first request waits for a refresh.
    fake.set_token_delay(Duration::from_secs(3));
    let calls = fake.token_calls();
    let mut caller = Caller::connect(&gw.listen).await;
    caller
        .send("GET /v2/methods HTTP/1.1\r\nHost: g\r\nX-Merchant-Id: m1\r\n\r\n")
        .await
        .unwrap();
    // Long before the token endpoint answers, the connection is open, nothing sent on it yet
    // (the request is written with the token).
    let opened = up
        .wait_until(Duration::from_millis(1500), |c| !c.is_empty())
        .await;
    assert!(opened, "no upstream connection during the refresh");
    assert!(up.conn(0).bytes.is_empty(), "{:?}", up.conns());
    let answer = caller.try_response(false, STEP).await.unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["authorization"], bearer(&fake, "m1"));
    assert_eq!(fake.token_calls() - calls, 1);
    // The request went on that connection.
    assert_eq!(up.connections(), 1, "{:?}", up.conns());
    assert_eq!(up.conn(0).requests.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_opened_for_a_refresh_that_fails_is_pooled_unused() {
    let fake = FakeMollie::start().await;
    let up = RawUpstream::echo().await;
    let gw = gateway(&fake, &up, &[]);
    fake.set_token_mode(TokenMode::ServerError);
    fake.set_token_delay(Duration::from_millis(300));
    let mut caller = Caller::connect(&gw.listen).await;
    caller
        .send("GET /v2/methods HTTP/1.1\r\nHost: g\r\nX-Merchant-Id: m1\r\n\r\n")
        .await
        .unwrap();
    let failed = caller.try_response(false, STEP).await.unwrap();
    assert!(failed.status >= 500, "{failed:?}");
    assert_eq!(up.connections(), 1, "{:?}", up.conns());
    assert!(up.conn(0).bytes.is_empty(), "{:?}", up.conns());
    // The next merchant's request (a refresh too) takes that connection from the pool.
    fake.set_token_mode(TokenMode::Normal);
    fake.set_token_delay(Duration::ZERO);
    caller
        .send("GET /v2/methods HTTP/1.1\r\nHost: g\r\nX-Merchant-Id: m2\r\n\r\n")
        .await
        .unwrap();
    let answer = caller.try_response(false, STEP).await.unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["authorization"], bearer(&fake, "m2"));
    assert_eq!(up.connections(), 1, "{:?}", up.conns());
    let conn = up.conn(0);
    assert_eq!(conn.requests.len(), 1);
    assert_eq!(
        conn.requests[0].header("authorization"),
        Some(&*bearer(&fake, "m2"))
    );
}
