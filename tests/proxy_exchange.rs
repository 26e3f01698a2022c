//! The proxy exchange at the byte level (issue 9): what the upstream receives for a request
//! body, a request target and a retry, and when the caller receives a response body. The
//! upstream is a [`RawUpstream`] that parses every byte itself, so a stray byte, a smuggled
//! request or a second arrival is visible; callers are raw sockets ([`Caller`]).
//! Limits, keep-alive and the request id are in `tests/proxy_limits.rs`, HTTP/2 in
//! `tests/proxy_h2.rs`.

mod support;

use std::time::{Duration, Instant};
use support::fake_mollie::FakeMollie;
use support::raw::{bearer, gateway, get, request, Caller, RawUpstream, Reply};

/// Bound of a step that should be quick.
const STEP: Duration = Duration::from_secs(5);

/// Short upstream read timeouts, so that a test failing on today's code fails in seconds.
const QUICK_UPSTREAM: (&str, &str) = ("UPSTREAM__READ_TIMEOUT_MS", "2000");

const CHUNKED_POST: &str = "POST /v2/payments HTTP/1.1\r\nHost: gateway.test\r\n\
                            X-Merchant-Id: m1\r\nTransfer-Encoding: chunked\r\n\r\n";

// ---- 1. no upstream desync through an empty body chunk -------------------------------------

/// m1 sends a chunked POST in `parts` (50 ms apart); then m2, on a new caller connection,
/// sends a GET. The upstream must have seen exactly one POST with `body` on its connection 0,
/// nothing else on it, and m2 must get its own answer on that same (pooled) connection.
async fn chunked_post_then_another_merchant(parts: &[&[u8]], body: &[u8]) {
    let fake = FakeMollie::start().await;
    let up = RawUpstream::echo().await;
    let gw = gateway(&fake, &up, &[QUICK_UPSTREAM]);

    let mut m1 = Caller::connect(&gw.listen).await;
    m1.send_parts(parts, Duration::from_millis(50))
        .await
        .unwrap();
    let first = m1.response().await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.json()["target"], "/v2/payments", "{first:?}");
    // Anything the gateway sends after the POST would land now.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut m2 = Caller::connect(&gw.listen).await;
    m2.send(get("/v2/methods", Some("m2"))).await.unwrap();
    let second = m2.try_response(false, STEP).await;

    let conn = up.conn(0);
    assert_eq!(
        conn.parse_error,
        None,
        "stray bytes upstream: {:?}",
        String::from_utf8_lossy(&conn.bytes)
    );
    let post = &conn.requests[0];
    assert_eq!(
        (post.method.as_str(), post.body.as_slice()),
        ("POST", body),
        "{conn:?}"
    );
    assert!(
        up.arrivals("/v2/smuggled").is_empty(),
        "a smuggled request arrived: {conn:?}"
    );
    let second = second.unwrap();
    assert_eq!(second.status, 200, "{second:?}");
    let echo = second.json();
    assert_eq!(
        echo["target"], "/v2/methods",
        "m2 got another request's answer: {echo}"
    );
    assert_eq!(echo["authorization"], bearer(&fake, "m2"), "{echo}");
    assert_eq!(
        (echo["conn"].as_u64(), echo["req"].as_u64()),
        (Some(0), Some(1)),
        "not the pooled connection: {echo}"
    );
    let conn = up.conn(0);
    assert_eq!(conn.requests.len(), 2, "{conn:?}");
    assert!(
        conn.stray().is_empty() && conn.parse_error.is_none(),
        "{conn:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_with_trailers_leaves_no_stray_bytes_upstream() {
    let whole = format!("{CHUNKED_POST}5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n");
    chunked_post_then_another_merchant(&[whole.as_bytes()], b"hello").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_size_line_split_across_reads_smuggles_no_request() {
    let smuggled = "GET /v2/smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(smuggled.len(), 0x26);
    let first = format!("{CHUNKED_POST}26");
    let rest = format!("\r\n{smuggled}\r\n0\r\n\r\n");
    chunked_post_then_another_merchant(&[first.as_bytes(), rest.as_bytes()], smuggled.as_bytes())
        .await;
}

// ---- 2. origin-form targets only -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_target_is_sent_upstream_in_origin_form() {
    let fake = FakeMollie::start().await;
    let up = RawUpstream::echo().await;
    let gw = gateway(&fake, &up, &[QUICK_UPSTREAM]);
    let mut caller = Caller::connect(&gw.listen).await;
    let head = request("GET", "http://evil.example/v2/methods?x=1", Some("m1"), &[]);
    caller
        .send(head.replace("Host: gateway.test", "Host: evil.example"))
        .await
        .unwrap();
    let resp = caller.response().await;
    assert_eq!(resp.status, 200, "{resp:?}");

    let bytes = up.conn(0).bytes;
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.starts_with("GET /v2/methods?x=1 HTTP/1.1\r\n"),
        "{text:?}"
    );
    assert!(!text.contains("evil.example"), "{text:?}");
}

/// `head` is answered `status` `bad_request` without any upstream request or token lookup.
async fn refused_before_any_token_lookup(head: &str, status: u16) {
    let fake = FakeMollie::start().await;
    let up = RawUpstream::echo().await;
    let gw = gateway(&fake, &up, &[QUICK_UPSTREAM]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let tokens = fake.token_calls();

    let mut caller = Caller::connect(&gw.listen).await;
    caller.send(head).await.unwrap();
    let resp = caller.response().await;
    resp.assert_gateway_error(status, "bad_request");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let heads: usize = up.conns().iter().map(|c| c.heads().count()).sum();
    assert_eq!(heads, 0, "reached the upstream: {:?}", up.conns());
    assert_eq!(fake.token_calls(), tokens, "a token was fetched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_with_an_authority_form_target_gets_405() {
    let head =
        "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nX-Merchant-Id: m1\r\n\r\n";
    refused_before_any_token_lookup(head, 405).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_gets_405() {
    refused_before_any_token_lookup(&request("TRACE", "/v2/methods", Some("m1"), &[]), 405).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_asterisk_target_gets_400() {
    refused_before_any_token_lookup(&request("OPTIONS", "*", Some("m1"), &[]), 400).await;
}

// ---- 3. streamed responses -----------------------------------------------------------------

/// The upstream sends `first` (a head and the body bytes `0123456789`), pauses 3 s, sends
/// `rest`: the caller has the head and those bytes within 1.5 s, and the whole body after.
async fn the_first_bytes_arrive_before_the_pause(first: &str, rest: &str) {
    let fake = FakeMollie::start().await;
    let reply = Reply::paused(first, Duration::from_secs(3), rest);
    let up = RawUpstream::start(move |_| reply.clone()).await;
    let gw = gateway(&fake, &up, &[]);
    let mut caller = Caller::connect(&gw.listen).await;
    caller
        .send(get("/v2/payments/tr_1", Some("m1")))
        .await
        .unwrap();
    let sent = Instant::now();
    let early = caller
        .read_until(Duration::from_millis(1500), |b| {
            let text = String::from_utf8_lossy(b);
            text.split_once("\r\n\r\n")
                .is_some_and(|(_, body)| body.contains("0123456789"))
        })
        .await;
    let got = String::from_utf8_lossy(&caller.buf).into_owned();
    assert!(
        early,
        "after {:?} the caller had only {got:?}",
        sent.elapsed()
    );
    assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
    let resp = caller.response().await;
    assert_eq!(resp.text(), "0123456789abcdefghijklmnopqrst");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_content_length_body_is_streamed() {
    let first = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 30\r\n\r\n\
                 0123456789";
    the_first_bytes_arrive_before_the_pause(first, "abcdefghijklmnopqrst").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_chunked_body_is_streamed() {
    let first = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                 Transfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n";
    the_first_bytes_arrive_before_the_pause(first, "14\r\nabcdefghijklmnopqrst\r\n0\r\n\r\n").await;
}

/// A `Content-Length` body that never ends (the framing pingora does not flush by itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_never_ending_body_is_streamed_and_dropped_when_the_caller_leaves() {
    let fake = FakeMollie::start().await;
    let up = RawUpstream::start(|_| Reply::Endless { chunked: false }).await;
    let gw = gateway(&fake, &up, &[]);
    let mut caller = Caller::connect(&gw.listen).await;
    caller.send(get("/v2/payments", Some("m1"))).await.unwrap();
    let streamed = caller
        .read_until(Duration::from_millis(1500), |b| {
            String::from_utf8_lossy(b).contains("tick 1")
        })
        .await;
    assert!(
        streamed,
        "the caller had only {:?}",
        String::from_utf8_lossy(&caller.buf)
    );

    drop(caller);
    let left = Instant::now();
    let closed = up
        .wait_until(Duration::from_secs(3), |c| c[0].closed_by_peer.is_some())
        .await;
    assert!(
        closed,
        "the upstream connection is still open {:?} after the caller left",
        left.elapsed()
    );
}

// ---- 4. a malformed chunked body -----------------------------------------------------------

/// A chunked POST whose head, then each of `body` (100 ms apart), is written separately: the
/// caller gets a Mollie-shaped 400; an upstream connection that got the head is closed
/// without the terminating chunk and never used again.
async fn a_malformed_chunked_body_gets_400(body: &[&[u8]]) {
    let fake = FakeMollie::start().await;
    let up = RawUpstream::echo().await;
    let gw = gateway(&fake, &up, &[QUICK_UPSTREAM]);
    let mut caller = Caller::connect(&gw.listen).await;
    caller.send(CHUNKED_POST).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = caller.send_parts(body, Duration::from_millis(100)).await;
    let resp = caller.try_response(false, STEP).await.unwrap();
    resp.assert_gateway_error(400, "bad_request");
    let used = up.assert_cut_off().await;
    let mut next = Caller::connect(&gw.listen).await;
    next.send(get("/v2/methods", Some("m1"))).await.unwrap();
    let resp = next.response().await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let conn = resp.json()["conn"].as_u64().unwrap() as usize;
    assert!(!used.contains(&conn), "connection {conn} was used again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_hex_chunk_size_gets_400() {
    a_malformed_chunked_body_gets_400(&[b"5\r\nhello\r\n", b"g\r\nhello\r\n0\r\n\r\n"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negative_chunk_size_gets_400() {
    a_malformed_chunked_body_gets_400(&[b"5\r\nhello\r\n", b"-5\r\nhello\r\n0\r\n\r\n"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_size_of_21_hex_digits_gets_400() {
    let huge: &[u8] = b"100000000000000000000\r\nhello\r\n0\r\n\r\n";
    a_malformed_chunked_body_gets_400(&[b"5\r\nhello\r\n", huge]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_with_lf_only_lines_gets_400() {
    a_malformed_chunked_body_gets_400(&[b"5\nhello\n0\n\n"]).await;
}

// ---- 6. the retry policy -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_timeout_on_a_pooled_connection_is_not_resent() {
    let fake = FakeMollie::start().await;
    let up = RawUpstream::start(|a| match a.request.target.as_str() {
        "/v2/methods/second" => Reply::Hang,
        _ => Reply::Echo,
    })
    .await;
    let gw = gateway(&fake, &up, &[("UPSTREAM__READ_TIMEOUT_MS", "500")]);
    let mut caller = Caller::connect(&gw.listen).await;
    caller
        .send(get("/v2/methods/first", Some("m1")))
        .await
        .unwrap();
    assert_eq!(caller.response().await.status, 200);
    caller
        .send(get("/v2/methods/second", Some("m1")))
        .await
        .unwrap();
    let resp = caller.response().await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let arrivals = up.arrivals("/v2/methods/second");
    assert_eq!(
        arrivals.first().map(|a| a.0),
        Some(0),
        "not sent on the pooled connection"
    );
    assert_eq!(arrivals.len(), 1, "sent upstream {} times", arrivals.len());
    resp.assert_gateway_error(504, "upstream_timeout");
}

// ---- 8. HEAD, 204 and 304 keep their framing -----------------------------------------------

/// With the link rewriter on, the upstream answers `method` with `answer` (no body): the
/// caller gets no body and no chunking, and its next request on the connection works.
async fn bodyless_answer_keeps_its_framing(
    method: &str,
    answer: &str,
) -> support::raw::RawResponse {
    let fake = FakeMollie::start().await;
    let answer = answer.to_string();
    let up = RawUpstream::start(move |a| match a.request.target.as_str() {
        "/v2/payments/tr_1" => Reply::Raw(answer.clone().into_bytes()),
        _ => Reply::Echo,
    })
    .await;
    let gw = gateway(
        &fake,
        &up,
        &[("UPSTREAM__PUBLIC_BASE_URL", "http://gateway.test")],
    );
    let mut caller = Caller::connect(&gw.listen).await;
    caller
        .send(request(method, "/v2/payments/tr_1", Some("m1"), &[]))
        .await
        .unwrap();
    let resp = caller.try_response(true, STEP).await.unwrap();
    assert_eq!(resp.header("transfer-encoding"), None, "{resp:?}");
    let extra = caller
        .read_until(Duration::from_millis(300), |b| !b.is_empty())
        .await;
    assert!(
        !extra,
        "bytes after a {method} answer: {:?}",
        String::from_utf8_lossy(&caller.buf)
    );
    caller.send(get("/v2/methods", Some("m1"))).await.unwrap();
    let next = caller.try_response(false, STEP).await;
    assert_eq!(
        next.map(|r| r.status),
        Ok(200),
        "the next request on the connection"
    );
    resp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_answer_keeps_its_content_length() {
    let answer =
        "HTTP/1.1 200 OK\r\nContent-Type: application/hal+json\r\nContent-Length: 123\r\n\r\n";
    let resp = bodyless_answer_keeps_its_framing("HEAD", answer).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-length"), Some("123"), "{resp:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_204_answer_gets_no_body() {
    let answer = "HTTP/1.1 204 No Content\r\nContent-Type: application/json\r\n\r\n";
    let resp = bodyless_answer_keeps_its_framing("DELETE", answer).await;
    assert_eq!(resp.status, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_304_answer_gets_no_body() {
    let answer = "HTTP/1.1 304 Not Modified\r\nContent-Type: application/json\r\n\
                  Content-Length: 123\r\n\r\n";
    let resp = bodyless_answer_keeps_its_framing("GET", answer).await;
    assert_eq!(resp.status, 304);
}

// ---- the recording upstream itself ---------------------------------------------------------

/// A self-test of [`RawUpstream`] (no gateway): what the tests above rely on it to see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raw_upstream_sees_stray_bytes_and_partial_bodies() {
    let up = RawUpstream::echo().await;
    let addr = up.base_url().replace("http://", "");
    let chunked = "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
    let cases: [(String, Option<&str>); 4] = [
        (format!("{chunked}5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"), None),
        (
            format!("{chunked}5\r\nhello\r\n0\r\n\r\n0\r\n\r\n"),
            Some("bad request line \"0\""),
        ),
        (
            format!("{chunked}5\nhello\n0\n\n"),
            Some("bad chunk size line \"5\\nhello\\n0\\n\\n\""),
        ),
        (format!("{chunked}5\r\nhel"), None),
    ];
    for (n, (bytes, error)) in cases.iter().enumerate() {
        let mut caller = Caller::connect(&addr).await;
        caller.send(bytes).await.unwrap();
        let seen = |c: &[support::raw::RawConn]| c.len() > n && c[n].bytes.len() == bytes.len();
        assert!(up.wait_until(STEP, seen).await);
        let conn = up.conn(n);
        assert_eq!(conn.parse_error.as_deref(), *error, "{bytes:?}");
        if n == 0 {
            let req = &conn.requests[0];
            assert_eq!(
                (req.body.as_slice(), req.trailers.len()),
                (&b"hello"[..], 1)
            );
            assert!(conn.stray().is_empty() && caller.response().await.status == 200);
        }
        if n == 3 {
            assert_eq!(
                conn.pending.as_ref().map(|r| r.body.as_slice()),
                Some(&b"hel"[..])
            );
            drop(caller);
            assert!(up.wait_until(STEP, |c| c[3].closed_by_peer.is_some()).await);
        }
    }
}
