//! The proxy listener's limits and bookkeeping (issue 9, points 5, 7 and 9): the deadline for
//! a request head, the cap on open connections, the body size limit, which gateway errors keep
//! the caller's connection, and the request id. Raw sockets on both sides ([`Caller`],
//! [`RawUpstream`]); the exchange itself is in `tests/proxy_exchange.rs`.

mod support;

use std::time::{Duration, Instant};
use support::fake_mollie::FakeMollie;
use support::raw::{gateway, get, request, Caller, RawResponse, RawUpstream};
use support::{Gateway, GatewayBuilder};

/// Bound of a step that should be quick.
const STEP: Duration = Duration::from_secs(5);

const HEAD_TIMEOUT: (&str, &str) = ("SERVER__HEADER_TIMEOUT_MS", "1000");

/// What a slow caller sends of a head after its request line, one byte every 200 ms (4 s;
/// the head never ends).
const SLOW_REST: &[u8] = b"X-Slow: aaaaaaaaaaaa";

/// Starts a request head and sends [`SLOW_REST`] one byte every 200 ms until the gateway
/// answers or closes; returns the response if the connection was then closed, and the time
/// from the first byte to the answer.
async fn slow_head(gw: &Gateway) -> (Result<RawResponse, String>, Duration) {
    let mut caller = Caller::connect(&gw.listen).await;
    caller.send("GET /v2/methods HTTP/1.1\r\n").await.unwrap();
    let first_byte = Instant::now();
    caller.trickle(SLOW_REST, Duration::from_millis(200)).await;
    let resp = caller.try_response(false, Duration::from_millis(500)).await;
    let took = first_byte.elapsed();
    let closed = caller.closed_within(Duration::from_secs(1)).await;
    let resp = resp.and_then(|r| match closed {
        true => Ok(r),
        false => Err(format!("not closed after {r:?}")),
    });
    (resp, took)
}

/// A normal GET of m1 on a new connection, within `within`.
async fn normal_get(gw: &Gateway, within: Duration) -> Result<RawResponse, String> {
    let mut caller = Caller::connect(&gw.listen).await;
    caller
        .send(get("/v2/methods", Some("m1")))
        .await
        .map_err(|e| e.to_string())?;
    caller.try_response(false, within).await
}

// ---- 5. the head deadline and the connection cap -------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_head_gets_408_and_is_closed() {
    let fake = FakeMollie::start().await;
    let up = RawUpstream::echo().await;
    let gw = gateway(&fake, &up, &[HEAD_TIMEOUT]);
    let normal = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        normal_get(&gw, Duration::from_secs(1)).await
    };
    let ((slow, took), normal) = tokio::join!(slow_head(&gw), normal);
    assert_eq!(
        normal.map(|r| r.status),
        Ok(200),
        "the normal caller meanwhile"
    );
    slow.unwrap().assert_gateway_error(408, "request_timeout");
    assert!(
        took < Duration::from_millis(2500),
        "answered {took:?} after the first byte"
    );
    let refused = r#"mollie_gateway_connections_refused_total{reason="header_timeout"}"#;
    assert_eq!(gw.metric(refused).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_do_not_starve_a_normal_caller() {
    let fake = FakeMollie::start().await;
    let up = RawUpstream::echo().await;
    let gw = std::sync::Arc::new(gateway(&fake, &up, &[HEAD_TIMEOUT]));
    let slow: Vec<_> = (0..50)
        .map(|_| {
            let gw = gw.clone();
            tokio::spawn(async move { slow_head(&gw).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let served = Instant::now();
    let normal = normal_get(&gw, Duration::from_secs(3)).await;
    assert_eq!(
        normal.map(|r| r.status),
        Ok(200),
        "after {:?}",
        served.elapsed()
    );
    for task in slow {
        let (resp, took) = task.await.unwrap();
        resp.unwrap().assert_gateway_error(408, "request_timeout");
        assert!(
            took < Duration::from_secs(3),
            "a slow head was kept {took:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_not_answered_408() {
    let fake = FakeMollie::start().await;
    let up = RawUpstream::echo().await;
    let gw = gateway(&fake, &up, &[HEAD_TIMEOUT]);
    let mut used = Caller::connect(&gw.listen).await;
    used.send(get("/v2/methods", Some("m1"))).await.unwrap();
    assert_eq!(used.response().await.status, 200);
    let mut fresh = Caller::connect(&gw.listen).await;

    for caller in [&mut used, &mut fresh] {
        let closed = caller.closed_within(Duration::from_millis(1800)).await;
        assert!(
            caller.buf.is_empty(),
            "{:?}",
            String::from_utf8_lossy(&caller.buf)
        );
        if !closed {
            caller.send(get("/v2/methods", Some("m1"))).await.unwrap();
            assert_eq!(caller.response().await.status, 200);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_refuses_an_extra_connection_with_503() {
    let fake = FakeMollie::start().await;
    let up = RawUpstream::echo().await;
    let gw = gateway(&fake, &up, &[("SERVER__MAX_CONNECTIONS", "3")]);
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut caller = Caller::connect(&gw.listen).await;
        caller.send(get("/v2/methods", Some("m1"))).await.unwrap();
        assert_eq!(caller.response().await.status, 200);
        held.push(caller);
    }

    let mut extra = Caller::connect(&gw.listen).await;
    // The gateway may answer at once, or once a request arrives.
    if !extra
        .read_until(Duration::from_millis(300), |b| !b.is_empty())
        .await
    {
        let _ = extra.send(get("/v2/methods", Some("m1"))).await;
    }
    let refused = extra.try_response(false, STEP).await.unwrap();
    refused.assert_gateway_error(503, "overloaded");
    assert!(refused.header("retry-after").is_some(), "{refused:?}");
    assert!(
        extra.closed_within(Duration::from_secs(2)).await,
        "the refused connection stays open"
    );
    let open = "mollie_gateway_connections_open";
    assert_eq!(gauge_settles(&gw, open, 3.0).await, 3.0);
    let counter = r#"mollie_gateway_connections_refused_total{reason="max_connections"}"#;
    assert_eq!(gw.metric(counter).await, 1.0);

    drop(held.pop());
    assert_eq!(gauge_settles(&gw, open, 2.0).await, 2.0);
    let next = normal_get(&gw, STEP).await;
    assert_eq!(
        next.map(|r| r.status),
        Ok(200),
        "a new connection once one closed"
    );
}

/// Polls the `sample` (every 50 ms, at most 2 s) until it is `value`; returns the last value.
async fn gauge_settles(gw: &Gateway, sample: &str, value: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let now = gw.metric(sample).await;
        if now == value || Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- 9. body size --------------------------------------------------------------------------

const SMALL_BODIES: (&str, &str) = ("SERVER__MAX_BODY_BYTES", "1000");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_length_above_the_limit_gets_413_without_the_upstream() {
    let fake = FakeMollie::start().await;
    let up = RawUpstream::echo().await;
    let gw = gateway(&fake, &up, &[SMALL_BODIES]);
    let mut caller = Caller::connect(&gw.listen).await;
    let head = request(
        "POST",
        "/v2/payments",
        Some("m1"),
        &["Content-Length: 2000"],
    );
    let _ = caller.send(head + &"x".repeat(2000)).await;
    let resp = caller.try_response(false, STEP).await.unwrap();
    resp.assert_gateway_error(413, "body_too_large");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        up.connections(),
        0,
        "the upstream was contacted: {:?}",
        up.conns()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_crossing_the_limit_is_cut_without_its_last_chunk() {
    let fake = FakeMollie::start().await;
    let up = RawUpstream::echo().await;
    let gw = gateway(
        &fake,
        &up,
        &[SMALL_BODIES, ("UPSTREAM__READ_TIMEOUT_MS", "2000")],
    );
    let mut caller = Caller::connect(&gw.listen).await;
    let head = request(
        "POST",
        "/v2/payments",
        Some("m1"),
        &["Transfer-Encoding: chunked"],
    );
    let chunk = format!("12c\r\n{}\r\n", "x".repeat(300));
    let mut parts: Vec<&[u8]> = vec![head.as_bytes()];
    parts.extend(std::iter::repeat_n(chunk.as_bytes(), 5));
    parts.push(b"0\r\n\r\n");
    let _ = caller.send_parts(&parts, Duration::from_millis(100)).await;
    match caller.try_response(false, STEP).await {
        Ok(resp) => resp.assert_gateway_error(413, "body_too_large"),
        Err(e) => assert!(caller.closed, "neither an answer nor a close: {e}"),
    }
    up.assert_cut_off().await;
}

// ---- 7. keep-alive after the gateway's own errors ------------------------------------------

/// Sends each request on one connection and expects its (status, code); the connection must
/// carry them all.
async fn answered_on_one_connection(gw: &Gateway, exchanges: &[(String, u16, Option<&str>)]) {
    let mut caller = Caller::connect(&gw.listen).await;
    for (i, (req, status, code)) in exchanges.iter().enumerate() {
        caller.send(req).await.unwrap();
        let resp = caller.try_response(false, STEP).await;
        let resp = resp.unwrap_or_else(|e| panic!("request {i} on the same connection: {e}"));
        assert_eq!(
            (resp.status, resp.header("x-gateway-error")),
            (*status, *code),
            "{resp:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_and_a_401_of_the_gateway_keep_the_connection() {
    let fake = FakeMollie::start().await;
    let up = RawUpstream::echo().await;
    let gw = gateway(&fake, &up, &[]);
    let exchanges = [
        (get("/v2/methods", None), 400, Some("merchant_header")),
        (
            get("/v2/methods", Some("nobody")),
            401,
            Some("unknown_merchant"),
        ),
        (get("/v2/methods", Some("m1")), 200, None),
    ];
    answered_on_one_connection(&gw, &exchanges).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_of_the_gateway_keeps_the_connection() {
    let fake = FakeMollie::start().await;
    let up = RawUpstream::echo().await;
    let mut gw = GatewayBuilder::new(&fake)
        .unconfigured()
        .env("UPSTREAM__BASE_URL", up.base_url())
        .prepare();
    gw.onboard(&fake, "m1");
    gw.spawn();
    let request = get("/v2/methods", Some("m1"));
    let exchanges = [
        (request.clone(), 503, Some("oauth_misconfigured")),
        (request, 503, Some("oauth_misconfigured")),
    ];
    answered_on_one_connection(&gw, &exchanges).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_error_after_a_small_body_keeps_the_connection() {
    let fake = FakeMollie::start().await;
    let up = RawUpstream::echo().await;
    let gw = gateway(&fake, &up, &[]);
    let post =
        request("POST", "/v2/payments", None, &["Content-Length: 20"]) + "0123456789abcdefghij";
    let exchanges = [
        (post, 400, Some("merchant_header")),
        (get("/v2/methods", Some("m1")), 200, None),
    ];
    answered_on_one_connection(&gw, &exchanges).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_error_before_a_large_body_closes_the_connection() {
    let fake = FakeMollie::start().await;
    let up = RawUpstream::echo().await;
    let gw = gateway(&fake, &up, &[]);
    let mut caller = Caller::connect(&gw.listen).await;
    let head = request("POST", "/v2/payments", None, &["Content-Length: 1000000"]);
    let _ = caller.send(head + &"x".repeat(10_000)).await;
    let resp = caller.try_response(false, STEP).await.unwrap();
    resp.assert_gateway_error(400, "merchant_header");
    assert!(
        caller.closed_within(Duration::from_secs(3)).await,
        "kept open with 990000 body bytes unread"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_error_instead_of_100_continue_closes_the_connection() {
    let fake = FakeMollie::start().await;
    let up = RawUpstream::echo().await;
    let gw = gateway(&fake, &up, &[]);
    let mut caller = Caller::connect(&gw.listen).await;
    let extra = ["Content-Length: 20", "Expect: 100-continue"];
    caller
        .send(request("POST", "/v2/payments", None, &extra))
        .await
        .unwrap();
    let resp = caller.try_response(false, STEP).await.unwrap();
    resp.assert_gateway_error(400, "merchant_header");
    assert!(
        caller.closed_within(Duration::from_secs(3)).await,
        "kept open with the body unsent"
    );
}

// ---- 9. the request id ---------------------------------------------------------------------

/// A sane generated id: 1 to 128 bytes, each 0x21..=0x7E.
fn assert_sane_id(id: Option<&str>) -> String {
    let id = id.expect("no X-Request-Id on the response");
    let sane = (1..=128).contains(&id.len()) && id.bytes().all(|b| (0x21..=0x7e).contains(&b));
    assert!(sane, "{id:?}");
    id.to_string()
}

/// Waits (at most 3 s) for an access-log line (JSON, target `access`) that contains `id`.
async fn assert_in_access_log(gw: &Gateway, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let log = gw.log_text();
        let found = log.lines().any(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            v["target"] == "access" && line.contains(id)
        });
        if found {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no access line with {id:?}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const JSON_LOG: (&str, &str) = ("LOG__FORMAT", "json");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sane_request_id_is_forwarded_echoed_and_logged() {
    let fake = FakeMollie::start().await;
    let up = RawUpstream::echo().await;
    let gw = gateway(&fake, &up, &[JSON_LOG]);
    let mut caller = Caller::connect(&gw.listen).await;
    let head = request("GET", "/v2/methods", Some("m1"), &["X-Request-Id: abc-123"]);
    caller.send(head).await.unwrap();
    let resp = caller.response().await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(
        up.conn(0).requests[0].header_values("x-request-id"),
        ["abc-123"]
    );
    assert_eq!(resp.header("x-request-id"), Some("abc-123"), "{resp:?}");
    assert_in_access_log(&gw, "abc-123").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_insane_request_id_is_replaced() {
    let fake = FakeMollie::start().await;
    let up = RawUpstream::echo().await;
    let gw = gateway(&fake, &up, &[JSON_LOG]);
    let long = format!("X-Request-Id: {}", "a".repeat(129));
    let cases: [&[&str]; 4] = [
        &[],
        &[&long],
        &["X-Request-Id: abc def"],
        &["X-Request-Id: caf\u{e9}"],
    ];
    let mut caller = Caller::connect(&gw.listen).await;
    for (i, extra) in cases.iter().enumerate() {
        caller
            .send(request("GET", "/v2/methods", Some("m1"), extra))
            .await
            .unwrap();
        let resp = caller.response().await;
        assert_eq!(resp.status, 200, "{resp:?}");
        let id = assert_sane_id(resp.header("x-request-id"));
        let sent = extra.first().map(|l| &l["X-Request-Id: ".len()..]);
        assert_ne!(Some(id.as_str()), sent);
        let forwarded = up
            .conns()
            .iter()
            .flat_map(|c| c.requests.clone())
            .any(|r| r.header_values("x-request-id") == [id.as_str()]);
        assert!(
            forwarded,
            "request {i}: {id:?} not forwarded: {:?}",
            up.conns()
        );
        assert_in_access_log(&gw, &id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_id_is_in_the_detail_of_a_gateway_error() {
    let fake = FakeMollie::start().await;
    let up = RawUpstream::echo().await;
    let gw = gateway(&fake, &up, &[]);
    for extra in [&["X-Request-Id: abc-123"][..], &[]] {
        let mut caller = Caller::connect(&gw.listen).await;
        caller
            .send(request("GET", "/v2/methods", None, extra))
            .await
            .unwrap();
        let resp = caller.response().await;
        resp.assert_gateway_error(400, "merchant_header");
        let id = assert_sane_id(resp.header("x-request-id"));
        if !extra.is_empty() {
            assert_eq!(id, "abc-123");
        }
        let detail = resp.json()["detail"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(detail.contains(&id), "{id:?} not in {detail:?}");
    }
}
