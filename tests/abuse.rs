//! The protocol abuse suite (issue 13, point 2): real listeners of the gateway (a child
//! process), raw-socket callers ([`Caller`]) and an upstream that records and strictly parses
//! every byte ([`RawUpstream`]). Each abuse is answered with a clear Mollie-shaped status or
//! bounded, and the upstream never receives a byte the gateway did not frame: after each case
//! it holds nothing new, or exactly one well-formed request.
//!
//! Run: `cargo test --test abuse`. The cases of the issue tested elsewhere:
//! - bad chunk sizes (non-hex, negative, 21 hex digits, LF-only lines), a chunk-size line split
//!   across reads, trailers, absolute-form, `CONNECT`, `TRACE` and `*` targets, a never-ending
//!   response: `tests/proxy_exchange.rs`;
//! - slow headers (408 while other callers are served, 50 slowloris connections), the
//!   connection cap, `Content-Length` or a chunked body above `server.max_body_bytes` (413),
//!   keep-alive after the gateway's own errors: `tests/proxy_limits.rs`;
//! - an unparsable request line: `tests/proxy_wire.rs`; `Content-Length: 5, 5`, every `Proxy-*`
//!   header, a `Connection` value with a non-ASCII byte: unit cases in `src/proxy/headers.rs`
//!   and the fuzz corpora (`tests/fuzz_corpus.rs`).

mod support;

use std::time::{Duration, Instant};
use support::fake_mollie::FakeMollie;
use support::raw::{gateway, get, request, Caller, RawRequest, RawResponse, RawUpstream, Reply};
use support::Gateway;

/// Bound of a step that should be quick.
const STEP: Duration = Duration::from_secs(5);

/// Short upstream read timeouts, so that a case failing on today's code fails in seconds.
const QUICK_UPSTREAM: (&str, &str) = ("UPSTREAM__READ_TIMEOUT_MS", "1000");

/// What the gateway must do with one abusive request.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// Refused with this status and `X-Gateway-Error` code; nothing reaches the upstream.
    Refused(u16, &'static str),
    /// Exactly one well-formed POST with this body reaches the upstream, answered 200.
    Forwarded(&'static [u8]),
    /// As [`Want::Forwarded`], with this request target upstream.
    ForwardedTo(&'static str, &'static [u8]),
}

/// A POST head of m1 with `lines` (each without its CRLF) and the end of the head.
fn post(lines: &[&str]) -> String {
    request("POST", "/v2/payments", Some("m1"), lines)
}

/// A chunked body of `hello`.
const HELLO_CHUNKED: &str = "5\r\nhello\r\n0\r\n\r\n";

/// Every request head the upstream received, in order; none with a parse error or a stray
/// byte after it.
fn upstream_heads(up: &RawUpstream) -> Vec<RawRequest> {
    let conns = up.conns();
    for c in &conns {
        assert!(
            c.parse_error.is_none() && c.stray().is_empty(),
            "bytes upstream the gateway did not frame: {:?}",
            String::from_utf8_lossy(&c.bytes)
        );
    }
    conns.iter().flat_map(|c| c.heads().cloned()).collect()
}

/// Checks `cond`, else returns the error `format!`s.
macro_rules! check {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// Sends `bytes` on a new connection and checks the answer and the upstream against `want`.
async fn case(gw: &Gateway, up: &RawUpstream, bytes: &[u8], want: Want) -> Result<(), String> {
    let before = upstream_heads(up).len();
    let mut caller = Caller::connect(&gw.listen).await;
    let _ = caller.send(bytes).await; // the gateway may close before reading it all
    let resp = caller.try_response(false, STEP).await?;
    tokio::time::sleep(Duration::from_millis(150)).await; // anything sent upstream meanwhile
    let heads = upstream_heads(up);
    let new = &heads[before..];
    match want {
        Want::Refused(status, code) => {
            let got = (resp.status, resp.header("x-gateway-error"));
            check!(got == (status, Some(code)), "answered {resp:?}");
            check!(resp.json()["status"] == status, "{resp:?}");
            check!(new.is_empty(), "reached the upstream: {new:?}");
        }
        Want::Forwarded(body) => forwarded(resp, new, "/v2/payments", body)?,
        Want::ForwardedTo(target, body) => forwarded(resp, new, target, body)?,
    }
    Ok(())
}

/// The gateway answered `resp` (the upstream's echo) and `new` reached the upstream: one
/// complete, well-framed POST of `body` to `target`.
fn forwarded(
    resp: RawResponse,
    new: &[RawRequest],
    target: &str,
    body: &[u8],
) -> Result<(), String> {
    check!(resp.status == 200, "answered {resp:?}");
    check!(new.len() == 1, "upstream got {new:?}");
    let req = &new[0];
    let got = (
        req.method.as_str(),
        req.target.as_str(),
        req.body.as_slice(),
    );
    check!(
        req.complete && got == ("POST", target, body),
        "upstream got {req:?}"
    );
    let (cl, te) = (
        req.header_values("content-length"),
        req.header_values("transfer-encoding"),
    );
    check!(
        (cl.len() == 1 && te.is_empty()) || (cl.is_empty() && te == ["chunked"]),
        "framing upstream: {cl:?} {te:?}"
    );
    Ok(())
}

/// Runs every case against one gateway; fails with every case that went wrong.
async fn run_cases(cases: &[(&str, String, Want)]) {
    let fake = FakeMollie::start().await;
    let up = RawUpstream::echo().await;
    let gw = gateway(&fake, &up, &[QUICK_UPSTREAM]);
    let mut failed = Vec::new();
    for (name, bytes, want) in cases {
        let started = Instant::now();
        if let Err(e) = case(&gw, &up, bytes.as_bytes(), *want).await {
            failed.push(format!("{name} (want {want:?}): {e}"));
        }
        assert!(
            started.elapsed() < STEP,
            "{name} took {:?}",
            started.elapsed()
        );
    }
    assert!(
        failed.is_empty(),
        "{} case(s) failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

// ---- framing: Content-Length and Transfer-Encoding ----------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_abuse() {
    use Want::*;
    let bad = Refused(400, "bad_request");
    run_cases(&[
        (
            "CL + TE",
            post(&["Content-Length: 5", "Transfer-Encoding: chunked"]) + HELLO_CHUNKED,
            bad,
        ),
        (
            "TE + CL",
            post(&["Transfer-Encoding: chunked", "Content-Length: 21"]) + HELLO_CHUNKED,
            bad,
        ),
        (
            "two different CLs",
            post(&["Content-Length: 5", "Content-Length: 6"]) + "hello!",
            bad,
        ),
        (
            "two different CLs in one line",
            post(&["Content-Length: 5, 6"]) + "hello!",
            bad,
        ),
        (
            "two equal CLs",
            post(&["Content-Length: 5", "Content-Length: 5"]) + "hello",
            Forwarded(b"hello"),
        ),
        ("a signed CL", post(&["Content-Length: +5"]) + "hello", bad),
        ("a hex CL", post(&["Content-Length: 0x5"]) + "hello", bad),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obfuscated_transfer_encodings() {
    use Want::*;
    let bad = Refused(400, "bad_request");
    let te = |value: &str| post(&[&format!("Transfer-Encoding:{value}")]) + HELLO_CHUNKED;
    run_cases(&[
        ("chunked", te(" chunked"), Forwarded(b"hello")),
        ("Chunked", te(" Chunked"), Forwarded(b"hello")),
        ("OWS around chunked", te("  chunked\t"), Forwarded(b"hello")),
        ("chunked, identity", te(" chunked, identity"), bad),
        ("identity", te(" identity"), bad),
        ("xchunked", te(" xchunked"), bad),
        ("gzip, chunked", te(" gzip, chunked"), bad),
        ("chunked, chunked", te(" chunked, chunked"), bad),
        (
            "two TE lines",
            post(&["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"]) + HELLO_CHUNKED,
            bad,
        ),
        (
            "TE in a folded line",
            post(&["X-Fold: a", " Transfer-Encoding: chunked"]) + HELLO_CHUNKED,
            bad,
        ),
        (
            "TE value folded",
            post(&["Transfer-Encoding: identity", " chunked"]) + HELLO_CHUNKED,
            bad,
        ),
        (
            "space before the colon",
            post(&["Transfer-Encoding : chunked"]) + HELLO_CHUNKED,
            bad,
        ),
        (
            "a vertical tab",
            post(&["Transfer-Encoding:\x0bchunked"]) + HELLO_CHUNKED,
            bad,
        ),
        (
            "HTTP/1.0 with TE",
            post(&["Transfer-Encoding: chunked"]).replace("HTTP/1.1", "HTTP/1.0") + HELLO_CHUNKED,
            bad,
        ),
    ])
    .await;
}

// ---- header bytes: CR, LF, NUL, size, count ------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_bytes_in_a_head() {
    use Want::*;
    let bad = Refused(400, "bad_request");
    // A POST of m1 (`line` is the request line) with `lines` and a 5-byte body.
    let raw = |line: &str, lines: &str| format!("{line}{lines}Content-Length: 5\r\n\r\nhello");
    let line = "POST /v2/payments HTTP/1.1\r\nHost: gateway.test\r\nX-Merchant-Id: m1\r\n";
    let with = |lines: &str| raw(line, lines);
    run_cases(&[
        ("NUL in a value", with("X-A: a\0b\r\n"), bad),
        ("NUL in a name", with("X\0A: b\r\n"), bad),
        ("CR in a value", with("X-A: a\rb\r\n"), bad),
        ("CR in a name", with("X\rA: b\r\n"), bad),
        ("CR before the colon", with("X-A\r: b\r\n"), bad),
        ("a bare LF ending a header line", with("X-A: a\n"), bad),
        (
            "a bare LF before the merchant header",
            raw(
                "POST /v2/payments HTTP/1.1\r\nHost: gateway.test\r\nX-A: a\n",
                "X-Merchant-Id: m1\r\n",
            ),
            bad,
        ),
        (
            "a bare LF ending the request line",
            raw(&line.replacen("\r\n", "\n", 1), ""),
            bad,
        ),
        (
            "bare LFs only",
            raw(&line.replace("\r\n", "\n"), "").replace("\r\n", "\n"),
            bad,
        ),
        // pingora percent-encodes bytes not allowed in a target (`escape_illegal_request_line`).
        (
            "NUL in the target",
            raw(&line.replace("payments", "pay\0ments"), ""),
            ForwardedTo("/v2/pay%00ments", b"hello"),
        ),
        (
            "a tab in a value",
            with("X-A: a\tb\r\n"),
            Forwarded(b"hello"),
        ),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_get_431() {
    use Want::*;
    let big = Refused(431, "header_too_large");
    let line = format!("X-Big: {}", "a".repeat(1024 * 1024));
    let many: Vec<String> = (0..10_000).map(|i| format!("X-H{i}: v")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let limit: Vec<String> = (0..200).map(|i| format!("X-H{i}: v")).collect();
    let limit: Vec<&str> = limit.iter().map(String::as_str).collect();
    let over: Vec<String> = (0..300).map(|i| format!("X-H{i}: v")).collect();
    let over: Vec<&str> = over.iter().map(String::as_str).collect();
    let long = format!("X-Long: {}", "a".repeat(60_000));
    let longer = format!("X-Long: {}", "a".repeat(66_000));
    run_cases(&[
        ("a 1 MB header line", post(&[&line]), big),
        ("10,000 headers", get_with(&many), big),
        (
            "300 short headers (pingora's limit: 256)",
            get_with(&over),
            big,
        ),
        (
            "a 66 KB head (server.max_header_bytes)",
            post(&[&longer]),
            big,
        ),
        (
            "200 headers",
            post(&[&limit[..], &["Content-Length: 5"]].concat()) + "hello",
            Forwarded(b"hello"),
        ),
        (
            "a 60 KB header line",
            post(&[&long, "Content-Length: 5"]) + "hello",
            Forwarded(b"hello"),
        ),
    ])
    .await;
}

/// A GET of m1 with `lines`.
fn get_with(lines: &[&str]) -> String {
    request("GET", "/v2/methods", Some("m1"), lines)
}

// ---- a request hidden in a body ------------------------------------------------------------

/// A POST of m1 whose `Content-Length` (5) ends before the bytes sent: `hello`, then a whole
/// second request (with `hidden_lines`) in the same write. The upstream gets the POST with
/// exactly `hello` and nothing else; the caller gets its answer, then the connection closes:
/// the gateway does not serve pipelined requests (a legitimate client waits for each answer),
/// so the second one is never answered nor forwarded, whoever it claims to be.
async fn a_hidden_request_is_dropped(hidden_lines: &[&str]) {
    let fake = FakeMollie::start().await;
    let up = RawUpstream::echo().await;
    let gw = gateway(&fake, &up, &[QUICK_UPSTREAM]);
    let hidden = request("GET", "/v2/smuggled", None, hidden_lines);
    let mut caller = Caller::connect(&gw.listen).await;
    caller
        .send(post(&["Content-Length: 5"]) + "hello" + &hidden)
        .await
        .unwrap();
    let first = caller.response().await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.json()["body_len"], 5, "{first:?}");
    assert!(
        caller.closed_within(Duration::from_secs(2)).await,
        "kept open"
    );
    assert!(
        caller.buf.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&caller.buf)
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    let heads = upstream_heads(&up);
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert_eq!(
        (heads[0].target.as_str(), heads[0].body.as_slice()),
        ("/v2/payments", &b"hello"[..]),
        "{heads:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_hidden_in_a_body_is_not_served() {
    a_hidden_request_is_dropped(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_hidden_in_a_body_is_not_served_for_another_merchant() {
    a_hidden_request_is_dropped(&["X-Merchant-Id: m2"]).await;
}

// ---- an upstream that breaks off its response ----------------------------------------------

/// A head and 10 of the 100 body bytes a `Content-Length` announces.
const CL_PART: &str = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                       Content-Length: 100\r\n\r\n0123456789";
/// A chunked head and one chunk, without the terminating chunk.
const CHUNKED_PART: &str = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                            Transfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n";

/// m1 gets `/v2/methods` (the upstream connection is pooled), then `/v2/payments/tr_1` on the
/// same caller connection, which the upstream answers with `reply` (a response broken off:
/// cut, or stalled past the read timeout). The caller sees the response broken off (the
/// connection closed before the announced length, or without the terminating chunk), never
/// a well-formed truncated one; the upstream connection is closed, and the next request goes
/// on a new one.
async fn a_broken_response_is_broken_off(reply: Reply, env: &[(&str, &str)]) {
    let cut = matches!(reply, Reply::Cut(_));
    let fake = FakeMollie::start().await;
    let up = RawUpstream::start(move |a| match a.request.target.as_str() {
        "/v2/payments/tr_1" => reply.clone(),
        _ => Reply::Echo,
    })
    .await;
    let gw = gateway(&fake, &up, env);
    let mut caller = Caller::connect(&gw.listen).await;
    caller.send(get("/v2/methods", Some("m1"))).await.unwrap();
    assert_eq!(caller.response().await.json()["conn"], 0);
    caller
        .send(get("/v2/payments/tr_1", Some("m1")))
        .await
        .unwrap();
    let broken = caller.try_response(false, STEP).await;
    let got = String::from_utf8_lossy(&caller.buf).into_owned();
    assert!(broken.is_err(), "a well-formed response: {broken:?}");
    assert!(caller.closed, "not closed: {got:?}");
    assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
    assert!(
        got.contains("0123456789"),
        "the bytes before the break: {got:?}"
    );
    assert!(!got.ends_with("0\r\n\r\n"), "a terminating chunk: {got:?}");
    let arrivals = up.arrivals("/v2/payments/tr_1");
    assert_eq!(arrivals.len(), 1, "sent upstream again: {arrivals:?}");
    assert_eq!(arrivals[0].0, 0, "not on the pooled connection");
    if !cut {
        let closed = up.wait_until(STEP, |c| c[0].closed_by_peer.is_some()).await;
        assert!(closed, "the stalled upstream connection is still open");
    }

    let mut next = Caller::connect(&gw.listen).await;
    next.send(get("/v2/methods", Some("m1"))).await.unwrap();
    let resp = next.response().await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(
        resp.json()["conn"],
        1,
        "the broken connection was used again"
    );
}

const LINKS: (&str, &str) = ("UPSTREAM__PUBLIC_BASE_URL", "http://gateway.test");
const STALL: (&str, &str) = ("UPSTREAM__READ_TIMEOUT_MS", "500");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_closing_inside_a_content_length_body() {
    a_broken_response_is_broken_off(Reply::Cut(CL_PART.into()), &[QUICK_UPSTREAM]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_closing_inside_a_chunked_body() {
    a_broken_response_is_broken_off(Reply::Cut(CHUNKED_PART.into()), &[QUICK_UPSTREAM]).await;
}

/// With the link rewriter on, the caller's framing is chunked whatever the upstream's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_closing_inside_a_rewritten_body() {
    a_broken_response_is_broken_off(Reply::Cut(CL_PART.into()), &[QUICK_UPSTREAM, LINKS]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_stalling_inside_a_content_length_body() {
    a_broken_response_is_broken_off(Reply::Raw(CL_PART.into()), &[STALL]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_stalling_inside_a_chunked_body() {
    a_broken_response_is_broken_off(Reply::Raw(CHUNKED_PART.into()), &[STALL, LINKS]).await;
}

// ---- a 100 MB streamed body ----------------------------------------------------------------

/// One request as [`Sink`] read it.
#[derive(Debug, Clone)]
struct Sunk {
    framing: String,
    body_len: u64,
    /// The body ended as framed (hyper's strict reader), not broken off.
    complete: bool,
}

/// An upstream that reads request bodies as they arrive and only counts them (hyper's server,
/// strict about framing), so a 100 MB body costs it no memory; answers 200 with `body_len`.
/// ([`RawUpstream`] keeps and re-parses every byte, which a 100 MB body makes quadratic.)
struct Sink {
    addr: std::net::SocketAddr,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Sunk>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Sink {
    async fn start() -> Sink {
        use hyper::body::Incoming;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = std::sync::Arc::<std::sync::Mutex<Vec<Sunk>>>::default();
        let shared = seen.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = shared.clone();
                let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let h = req.headers();
                        let framing = match h.get("content-length") {
                            Some(cl) => format!("content-length: {}", cl.to_str().unwrap()),
                            None => format!("transfer-encoding: {:?}", h.get("transfer-encoding")),
                        };
                        let mut body = req.into_body();
                        let mut body_len = 0u64;
                        let mut complete = true;
                        while let Some(frame) = std::future::poll_fn(|cx| {
                            http_body::Body::poll_frame(std::pin::Pin::new(&mut body), cx)
                        })
                        .await
                        {
                            match frame.map(|f| f.into_data()) {
                                Ok(Ok(data)) => body_len += data.len() as u64,
                                Ok(Err(_)) => {} // trailers
                                Err(_) => {
                                    complete = false;
                                    break;
                                }
                            }
                        }
                        seen.lock().unwrap().push(Sunk {
                            framing,
                            body_len,
                            complete,
                        });
                        let json = format!("{{\"body_len\":{body_len}}}");
                        hyper::Response::builder()
                            .header("content-type", "application/json")
                            .body(json)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        Sink { addr, seen, accept }
    }

    fn seen(&self) -> Vec<Sunk> {
        self.seen.lock().unwrap().clone()
    }
}

/// The resident set of process `pid` in KiB (`VmRSS` of `/proc/<pid>/status`).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The largest RSS of `pid` sampled every 20 ms while `work` runs.
async fn peak_rss_during<T>(pid: u32, work: impl std::future::Future<Output = T>) -> (T, u64) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let sampler = tokio::spawn(async move {
        let mut peak = rss_kib(pid);
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            peak = peak.max(rss_kib(pid));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        peak.max(rss_kib(pid))
    });
    let out = work.await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    (out, sampler.await.unwrap())
}

const MB100: usize = 100 * 1024 * 1024;
const PIECE: usize = 64 * 1024;
/// How much the gateway's RSS may grow while it streams 100 MB.
const RSS_GROWTH_KIB: u64 = 32 * 1024;
/// Bound of a 100 MB transfer.
const TRANSFER: Duration = Duration::from_secs(30);

/// Sends a POST of m1 with a 100 MB body (`chunked`, or under `Content-Length`) in 64 KiB
/// writes; returns the answer (or the error) and the gateway's baseline and peak RSS (KiB).
async fn send_100_mb(
    gw: &Gateway,
    chunked: bool,
    label: &str,
) -> (Result<RawResponse, String>, u64, u64) {
    let pid = gw.pid().expect("the gateway runs as a child process");
    // Warm up (token, upstream connection), then the baseline.
    let mut warm = Caller::connect(&gw.listen).await;
    warm.send(post(&["Content-Length: 2"]) + "{}")
        .await
        .unwrap();
    warm.response().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let baseline = rss_kib(pid);
    let mut caller = Caller::connect(&gw.listen).await;
    let framing = match chunked {
        true => "Transfer-Encoding: chunked".to_string(),
        false => format!("Content-Length: {MB100}"),
    };
    let work = async {
        caller.send(post(&[&framing])).await.unwrap();
        let data = vec![b'x'; PIECE];
        let mut piece = data.clone();
        if chunked {
            piece = format!("{PIECE:x}\r\n").into_bytes();
            piece.extend_from_slice(&data);
            piece.extend_from_slice(b"\r\n");
        }
        for _ in 0..MB100 / PIECE {
            if caller.send(&piece).await.is_err() {
                break; // refused meanwhile
            }
        }
        if chunked {
            let _ = caller.send("0\r\n\r\n").await;
        }
        caller.try_response(false, STEP).await
    };
    let started = Instant::now();
    let (resp, peak) = peak_rss_during(pid, tokio::time::timeout(TRANSFER, work)).await;
    let resp = resp.unwrap_or_else(|_| panic!("not done within {TRANSFER:?}"));
    eprintln!(
        "100 MB {} ({label}): {:?}, gateway RSS {baseline} KiB before, peak {peak} KiB",
        if chunked { "chunked" } else { "Content-Length" },
        started.elapsed()
    );
    (resp, baseline, peak)
}

/// With `server.max_body_bytes` above 100 MB, the body is streamed to the upstream as it
/// arrives: all of it arrives, framed as the caller framed it, and the gateway's RSS grows by
/// less than [`RSS_GROWTH_KIB`].
async fn a_100_mb_body_is_streamed(chunked: bool) {
    let fake = FakeMollie::start().await;
    let sink = Sink::start().await;
    let mut gw = support::GatewayBuilder::new(&fake)
        .env("UPSTREAM__BASE_URL", format!("http://{}", sink.addr))
        .env("SERVER__MAX_BODY_BYTES", (200 * 1024 * 1024).to_string())
        .prepare();
    gw.onboard(&fake, "m1");
    gw.spawn();
    let (resp, baseline, peak) = send_100_mb(&gw, chunked, "streamed").await;
    let resp = resp.unwrap();
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.json()["body_len"], MB100, "{resp:?}");
    let seen = sink.seen();
    let big = &seen[1];
    assert_eq!(
        (big.body_len, big.complete),
        (MB100 as u64, true),
        "{seen:?}"
    );
    let framing = match chunked {
        true => "transfer-encoding: Some(\"chunked\")".to_string(),
        false => format!("content-length: {MB100}"),
    };
    assert_eq!(big.framing, framing);
    assert!(
        peak.saturating_sub(baseline) < RSS_GROWTH_KIB,
        "RSS grew from {baseline} KiB to {peak} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_content_length_body_is_streamed_in_bounded_memory() {
    a_100_mb_body_is_streamed(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_chunked_body_is_streamed_in_bounded_memory() {
    a_100_mb_body_is_streamed(true).await;
}

/// With the default `server.max_body_bytes` (10 MiB), a 100 MB chunked body is cut off where
/// it crosses the limit: 413 (or the connection closed under the caller's writes), the
/// upstream's request broken off, never complete, and the RSS bounded as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_chunked_body_over_the_limit_is_cut_off_in_bounded_memory() {
    let fake = FakeMollie::start().await;
    let sink = Sink::start().await;
    let mut gw = support::GatewayBuilder::new(&fake)
        .env("UPSTREAM__BASE_URL", format!("http://{}", sink.addr))
        .prepare();
    gw.onboard(&fake, "m1");
    gw.spawn();
    let (resp, baseline, peak) = send_100_mb(&gw, true, "over the limit").await;
    match resp {
        Ok(resp) => resp.assert_gateway_error(413, "body_too_large"),
        Err(e) => assert!(e.contains("closed"), "{e}"),
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = sink.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(!seen[1].complete, "a complete body upstream: {seen:?}");
    assert!(seen[1].body_len <= 10 * 1024 * 1024, "{seen:?}");
    assert!(
        peak.saturating_sub(baseline) < RSS_GROWTH_KIB,
        "RSS grew from {baseline} KiB to {peak} KiB"
    );
}

// ---- many large heads at once --------------------------------------------------------------

/// Callers on [`HEADS`] connections each send 1,000,000 bytes of one header line and never end
/// their heads: each gets 431 as soon as its head passes `server.max_header_bytes` (64 KiB),
/// so a connection makes the gateway hold at most that much head (pingora alone would read up
/// to 1 MiB and hold it until the head deadline). The gateway's RSS meanwhile is printed.
/// Connections in [`many_large_unfinished_heads_get_431_at_the_head_limit`].
const HEADS: usize = 150;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_large_unfinished_heads_get_431_at_the_head_limit() {
    let fake = FakeMollie::start().await;
    let up = RawUpstream::echo().await;
    let gw = gateway(&fake, &up, &[]);
    let pid = gw.pid().unwrap();
    let baseline = rss_kib(pid);
    let line = format!(
        "GET /v2/methods HTTP/1.1\r\nX-Big: {}",
        "a".repeat(1_000_000)
    );
    let mut callers = Vec::new();
    let (_, peak) = peak_rss_during(pid, async {
        for _ in 0..HEADS {
            let mut caller = Caller::connect(&gw.listen).await;
            let _ = caller.send(&line).await;
            callers.push(caller);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    })
    .await;
    eprintln!("{HEADS} unfinished 1 MB heads: gateway RSS {baseline} KiB before, peak {peak} KiB");
    for caller in &mut callers {
        let resp = caller.try_response(false, STEP).await;
        let status = resp.as_ref().map(|r| r.status);
        assert_eq!(status, Ok(431), "{resp:?}");
    }
    assert!(upstream_heads(&up).is_empty());
}
