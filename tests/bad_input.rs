//! Bad input and bad surroundings: malformed merchant headers, unknown merchants, a broken
//! token endpoint, a missing OAuth app and invalid configurations. The gateway must answer in
//! Mollie's error shape (or refuse to start, naming the key), forward nothing, and never leak
//! a secret.

mod support;

use reqwest::header::{HeaderMap, HeaderValue};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::fake_mollie::{FakeMollie, TokenMode, CLIENT_SECRET};
use support::{client, free_port, Gateway, GatewayBuilder};

const MERCHANT_HEADER_ERRORS: &str =
    "mollie_gateway_gateway_errors_total{code=\"merchant_header\"}";

/// Stores `id` with `refresh` through the CLI.
fn onboard(gw: &Gateway, id: &str, refresh: &str) {
    let out = gw.cli(&["merchants", "add", id, "--refresh-token", refresh]);
    assert!(
        out.status.success(),
        "merchants add {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One answer of the gateway, fully read.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }

    fn detail(&self) -> String {
        self.json()["detail"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Headers and body as one text, for secret scans.
    fn everything(&self) -> String {
        let mut s = format!("{}\n", self.status);
        for (n, v) in &self.headers {
            s.push_str(&format!("{n}: {}\n", String::from_utf8_lossy(v.as_bytes())));
        }
        s.push_str(&self.body);
        s
    }

    /// A gateway error: status, `X-Gateway-Error`, Mollie's content type and body shape.
    fn assert_gateway_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{code}: {}", self.everything());
        assert_eq!(
            self.header("x-gateway-error"),
            Some(code),
            "{}",
            self.everything()
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/hal+json"),
            "{}",
            self.everything()
        );
        let v = self.json();
        assert_eq!(v["status"], status, "{}", self.body);
        assert!(
            v["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{}",
            self.body
        );
        assert!(
            v["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{}",
            self.body
        );
        assert!(
            v["_links"]["documentation"]["href"].as_str().is_some(),
            "{}",
            self.body
        );
        if status == 503 {
            let secs: u64 = self
                .header("retry-after")
                .unwrap_or_else(|| panic!("503 without Retry-After: {}", self.everything()))
                .parse()
                .expect("Retry-After is a number of seconds");
            assert!(secs >= 1, "{}", self.everything());
        }
    }
}

/// GET /v2/echo through the gateway with the given headers.
async fn get(gw: &Gateway, headers: &[(&str, HeaderValue)]) -> Answer {
    let mut req = client().get(format!("{}/v2/echo/payments", gw.base_url()));
    for (name, value) in headers {
        req = req.header(*name, value.clone());
    }
    let resp = req.send().await.expect("gateway answers");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().await.expect("body");
    Answer {
        status,
        headers,
        body,
    }
}

async fn get_as(gw: &Gateway, merchant: &str) -> Answer {
    get(
        gw,
        &[("X-Merchant-Id", HeaderValue::from_str(merchant).unwrap())],
    )
    .await
}

/// Polls a counter until it reaches `want` (bounded: 3 s).
async fn wait_metric(gw: &Gateway, sample: &str, want: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let v = gw.metric(sample).await;
        if v >= want || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Exit code, stdout and stderr of a command that must exit by itself within `limit`.
struct Exit {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

fn run_to_exit(mut cmd: Command, limit: Duration) -> Exit {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mollie-gateway");
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut s);
            }
            s
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = started.elapsed();
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let Some(status) = status else {
        panic!(
            "still running after {limit:?} (it should have refused to start); stderr:\n{stderr}"
        );
    };
    Exit {
        code: status.code(),
        stdout,
        stderr,
        took,
    }
}

/// `run` must refuse to start, quickly, with stderr naming every key in `keys`.
fn assert_refuses(gw: &Gateway, code: Option<i32>, keys: &[&str]) -> Exit {
    let mut cmd = gw.command();
    cmd.arg("run");
    let exit = run_to_exit(cmd, Duration::from_secs(10));
    assert_ne!(exit.code, Some(0), "started: {}", exit.stderr);
    assert!(exit.code.is_some(), "killed by a signal: {}", exit.stderr);
    if code.is_some() {
        assert_eq!(exit.code, code, "{}", exit.stderr);
    }
    for key in keys {
        assert!(
            exit.stderr.contains(key),
            "stderr does not name {key}:\n{}",
            exit.stderr
        );
    }
    assert!(exit.took < Duration::from_secs(5), "took {:?}", exit.took);
    exit
}

/// What is sent, the headers, and a word the detail must contain.
type HeaderCase = (&'static str, Vec<(&'static str, HeaderValue)>, &'static str);

#[tokio::test]
async fn malformed_merchant_headers_are_refused_before_anything_is_forwarded() {
    let fake = FakeMollie::start().await;
    let long = "m".repeat(128);
    let refresh = fake.add_merchant("m1");
    let refresh_long = fake.add_merchant(&long);
    let mut gw = GatewayBuilder::new(&fake).prepare();
    onboard(&gw, "m1", &refresh);
    onboard(&gw, &long, &refresh_long);
    gw.spawn();

    let m1 = HeaderValue::from_static("m1");
    let cases: Vec<HeaderCase> = vec![
        ("missing", vec![], "missing"),
        (
            "empty",
            vec![("X-Merchant-Id", HeaderValue::from_static(""))],
            "empty",
        ),
        (
            "repeated",
            vec![("X-Merchant-Id", m1.clone()), ("X-Merchant-Id", m1.clone())],
            "repeated",
        ),
        (
            "129 bytes",
            vec![(
                "X-Merchant-Id",
                HeaderValue::from_str(&format!("{long}m")).unwrap(),
            )],
            "longer than 128",
        ),
        (
            "tab inside",
            vec![("X-Merchant-Id", HeaderValue::from_bytes(b"m\t1").unwrap())],
            "printable",
        ),
        (
            "space inside",
            vec![("X-Merchant-Id", HeaderValue::from_static("m 1"))],
            "printable",
        ),
        (
            "non-ASCII",
            vec![(
                "X-Merchant-Id",
                HeaderValue::from_bytes(b"m\xc3\xa91").unwrap(),
            )],
            "printable",
        ),
        (
            "other header only",
            vec![("X-Tenant", m1.clone())],
            "missing",
        ),
    ];
    for (what, headers, problem) in &cases {
        let a = get(&gw, headers).await;
        a.assert_gateway_error(400, "merchant_header");
        assert_eq!(a.json()["title"], "Bad Request", "{what}");
        let detail = a.detail();
        assert!(
            detail.to_ascii_lowercase().contains("x-merchant-id"),
            "{what}: detail does not name the header: {detail}"
        );
        assert!(detail.contains(problem), "{what}: {detail}");
    }

    // A DEL byte (0x7f) cannot be sent through reqwest: raw HTTP/1.1. pingora's parser refuses
    // the request itself (a bare 400, not the gateway's Mollie-shaped one); nothing forwarded.
    let raw = raw_request(
        &gw.listen,
        b"GET /v2/echo/payments HTTP/1.1\r\nHost: gw\r\nX-Merchant-Id: m\x7f1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 400"), "DEL byte: {raw}");

    assert_eq!(fake.api_calls_total(), 0, "a bad header reached the API");
    assert_eq!(fake.token_calls(), 0, "a bad header caused a token call");
    let counted = wait_metric(&gw, MERCHANT_HEADER_ERRORS, cases.len() as f64).await;
    assert!(counted >= cases.len() as f64, "metric {counted}");

    // Exactly 128 bytes is a valid id.
    let a = get_as(&gw, &long).await;
    assert_eq!(a.status, 200, "{}", a.everything());
    assert_eq!(a.json()["merchant"], long.as_str());
    assert_eq!(fake.api_calls_for(&long), 1);
}

async fn raw_request(addr: &str, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_custom_merchant_header_name_is_the_only_one_read() {
    let fake = FakeMollie::start().await;
    let refresh = fake.add_merchant("m1");
    let mut gw = GatewayBuilder::new(&fake)
        .env("MERCHANTS__HEADER", "X-Tenant")
        .prepare();
    onboard(&gw, "m1", &refresh);
    gw.spawn();

    // The default header no longer names a merchant.
    let a = get_as(&gw, "m1").await;
    a.assert_gateway_error(400, "merchant_header");
    assert!(
        a.detail().to_ascii_lowercase().contains("x-tenant"),
        "{}",
        a.body
    );
    assert!(a.detail().contains("missing"), "{}", a.body);
    let a = get(&gw, &[("X-Tenant", HeaderValue::from_static("m 1"))]).await;
    a.assert_gateway_error(400, "merchant_header");
    assert!(
        a.detail().to_ascii_lowercase().contains("x-tenant"),
        "{}",
        a.body
    );
    let a = get(
        &gw,
        &[
            ("X-Tenant", HeaderValue::from_static("m1")),
            ("X-Tenant", HeaderValue::from_static("m2")),
        ],
    )
    .await;
    a.assert_gateway_error(400, "merchant_header");
    assert_eq!(fake.api_calls_total(), 0);
    assert_eq!(fake.token_calls(), 0);

    let a = get(&gw, &[("X-Tenant", HeaderValue::from_static("m1"))]).await;
    assert_eq!(a.status, 200, "{}", a.everything());
    assert_eq!(a.json()["merchant"], "m1");
    let seen = fake.api_requests();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].header("x-tenant").is_none(),
        "the merchant header was forwarded"
    );
}

#[tokio::test]
async fn an_unknown_merchant_is_401_and_nothing_is_forwarded() {
    let fake = FakeMollie::start().await;
    let refresh = fake.add_merchant("m1");
    let mut gw = GatewayBuilder::new(&fake).prepare();
    onboard(&gw, "m1", &refresh);
    gw.spawn();

    for _ in 0..2 {
        let a = get_as(&gw, "m2").await;
        a.assert_gateway_error(401, "unknown_merchant");
        assert_eq!(a.json()["title"], "Unauthorized Request");
        assert!(a.detail().contains("m2"), "{}", a.body);
    }
    assert_eq!(fake.api_calls_total(), 0);
    assert_eq!(fake.token_calls(), 0);
    // The known one still works (the 401s are not a broken gateway).
    assert_eq!(get_as(&gw, "m1").await.status, 200);
}

#[tokio::test]
async fn a_token_endpoint_nobody_listens_on_is_503_with_retry_after() {
    let fake = FakeMollie::start().await;
    let refresh = fake.add_merchant("m1");
    // free_port(): a token endpoint that refuses connections, not an address the gateway binds.
    let mut gw = GatewayBuilder::new(&fake)
        .token_url(format!("http://127.0.0.1:{}/oauth2/tokens", free_port()))
        .prepare();
    onboard(&gw, "m1", &refresh);
    gw.spawn();

    let a = get_as(&gw, "m1").await;
    a.assert_gateway_error(503, "token_endpoint_unavailable");
    let all = a.everything();
    assert!(!all.contains(CLIENT_SECRET), "{all}");
    assert!(!all.contains(&refresh), "{all}");
    assert_eq!(fake.api_calls_total(), 0);
}

#[tokio::test]
async fn token_endpoint_failures_map_to_their_codes_and_nothing_is_forwarded() {
    let fake = FakeMollie::start().await;
    let cases = [
        (
            "srv",
            TokenMode::ServerError,
            503,
            "token_endpoint_unavailable",
        ),
        (
            "notjson",
            TokenMode::NotJson,
            502,
            "token_endpoint_bad_response",
        ),
        (
            "noaccess",
            TokenMode::NoAccessToken,
            502,
            "token_endpoint_bad_response",
        ),
        (
            "client",
            TokenMode::InvalidClient,
            503,
            "oauth_misconfigured",
        ),
        ("hang", TokenMode::Hang, 503, "token_endpoint_unavailable"),
    ];
    let mut gw = GatewayBuilder::new(&fake)
        .env("OAUTH__TOKEN_TIMEOUT_MS", "500")
        .prepare();
    let mut refresh = Vec::new();
    for (id, ..) in &cases {
        let r = fake.add_merchant(id);
        onboard(&gw, id, &r);
        refresh.push(r);
    }
    gw.spawn();

    // One merchant per mode: backoff is per merchant, so each sees its own first failure.
    for (i, (id, mode, status, code)) in cases.iter().enumerate() {
        fake.set_token_mode(*mode);
        let before = fake.token_calls_for(id);
        let started = Instant::now();
        let a = get_as(&gw, id).await;
        let took = started.elapsed();
        a.assert_gateway_error(*status, code);
        assert!(took < Duration::from_secs(3), "{mode:?} took {took:?}");
        assert!(fake.token_calls_for(id) > before, "{mode:?}: no token call");
        assert_eq!(fake.api_calls_total(), 0, "{mode:?}: forwarded");
        let all = a.everything();
        assert!(!all.contains(CLIENT_SECRET), "{mode:?}: {all}");
        assert!(!all.contains(&refresh[i]), "{mode:?}: {all}");
    }
}

#[tokio::test]
async fn without_an_oauth_app_the_gateway_starts_and_explains_what_to_set() {
    let fake = FakeMollie::start().await;
    let refresh = fake.add_merchant("m1");
    let mut gw = GatewayBuilder::new(&fake).unconfigured().prepare();
    onboard(&gw, "m1", &refresh);
    gw.spawn(); // panics unless /readyz answers 200

    let a = get_as(&gw, "m1").await;
    a.assert_gateway_error(503, "oauth_misconfigured");
    assert!(a.detail().contains("oauth.client_id"), "{}", a.body);
    assert_eq!(fake.token_calls(), 0, "a token call without credentials");
    assert_eq!(fake.api_calls_total(), 0);

    let log = gw.log_text();
    assert!(log.contains("oauth.client_id"), "{log}");
    assert!(
        log.contains("MOLLIE_GATEWAY__OAUTH__CLIENT_SECRET"),
        "{log}"
    );
}

#[tokio::test]
async fn configuration_errors_refuse_to_start_naming_every_key() {
    let fake = FakeMollie::start().await;

    let secret = "cfg-secret-3a9f";
    let gw = GatewayBuilder::new(&fake)
        .unconfigured()
        .env("OAUTH__CLIENT_SECRET", secret)
        .prepare();
    let exit = assert_refuses(&gw, Some(2), &["oauth.client_id"]);
    assert!(!exit.stderr.contains(secret), "{}", exit.stderr);
    assert!(!exit.stdout.contains(secret), "{}", exit.stdout);

    let gw = GatewayBuilder::new(&fake)
        .env("UPSTREAM__BASE_URL", "not a url")
        .prepare();
    assert_refuses(&gw, Some(2), &["upstream.base_url"]);

    let gw = GatewayBuilder::new(&fake)
        .env("SERVER__LISEN", "x")
        .prepare();
    assert_refuses(&gw, Some(2), &["lisen"]);

    // Several problems: all of them in one run.
    let gw = GatewayBuilder::new(&fake)
        .env("UPSTREAM__BASE_URL", "not a url")
        .env("SERVER__THREADS", "0")
        .prepare();
    assert_refuses(&gw, Some(2), &["upstream.base_url", "server.threads"]);

    // check-config refuses the same way.
    let out = gw.cli(&["check-config"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("upstream.base_url") && stderr.contains("server.threads"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_unreadable_store_refuses_to_start_and_is_never_overwritten() {
    let fake = FakeMollie::start().await;

    // A directory where the file should be.
    let gw = GatewayBuilder::new(&fake).prepare();
    let dir = gw.dir.path().display().to_string();
    let gw = GatewayBuilder::new(&fake).env("STORE__PATH", dir).prepare();
    assert_refuses(&gw, None, &["store.path"]);

    // A file that is not JSON.
    let refresh = fake.add_merchant("m1");
    let gw = GatewayBuilder::new(&fake).prepare();
    std::fs::create_dir_all(gw.store.parent().unwrap()).unwrap();
    let garbage: &[u8] = b"{\"version\":1,\"merchants\":{\"m1\":{\"refresh_token\":\"refr";
    std::fs::write(&gw.store, garbage).unwrap();
    assert_refuses(&gw, None, &["store.path"]);
    assert_eq!(
        std::fs::read(&gw.store).unwrap(),
        garbage,
        "the store was rewritten"
    );

    // The CLI does not overwrite it either.
    let out = gw.cli(&["merchants", "add", "m1", "--refresh-token", &refresh]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("store.path"));
    assert_eq!(
        std::fs::read(&gw.store).unwrap(),
        garbage,
        "the store was rewritten"
    );
}

#[tokio::test]
async fn a_listen_address_in_use_is_named() {
    let fake = FakeMollie::start().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let gw = GatewayBuilder::new(&fake)
        .env("SERVER__LISTEN", addr.clone())
        .prepare();
    let exit = assert_refuses(&gw, None, &["server.listen"]);
    assert!(exit.stderr.contains(&addr), "{}", exit.stderr);
    drop(taken);
}

#[tokio::test]
async fn gateway_errors_never_carry_a_secret() {
    let fake = FakeMollie::start().await;
    let ids = ["ok", "revoked", "srv", "client"];
    let mut gw = GatewayBuilder::new(&fake).prepare();
    let mut refresh = Vec::new();
    for id in ids {
        let r = fake.add_merchant(id);
        onboard(&gw, id, &r);
        refresh.push(r);
    }
    gw.spawn();

    // Access tokens exist (for "ok"), so there is something to leak.
    assert_eq!(get_as(&gw, "ok").await.status, 200);
    fake.revoke("revoked");

    let mut answers = Vec::new();
    answers.push(get(&gw, &[]).await);
    answers.push(get_as(&gw, "nobody").await);
    answers.push(get_as(&gw, "revoked").await);
    fake.set_token_mode(TokenMode::ServerError);
    answers.push(get_as(&gw, "srv").await);
    // The cached token is rejected upstream and the refresh after the 401 fails.
    fake.expire_tokens("ok");
    answers.push(get_as(&gw, "ok").await);
    fake.set_token_mode(TokenMode::InvalidClient);
    answers.push(get_as(&gw, "client").await);

    let codes: Vec<Option<&str>> = answers
        .iter()
        .map(|a| a.header("x-gateway-error"))
        .collect();
    assert_eq!(
        codes,
        vec![
            Some("merchant_header"),
            Some("unknown_merchant"),
            Some("authorization_revoked"),
            Some("token_endpoint_unavailable"),
            Some("token_endpoint_unavailable"),
            Some("oauth_misconfigured"),
        ]
    );
    let mut secrets: Vec<String> = vec![CLIENT_SECRET.to_string()];
    secrets.extend(refresh.iter().cloned());
    for id in ids {
        secrets.extend(fake.current_access_token(id));
        secrets.extend(fake.current_refresh_token(id));
    }
    for r in fake.token_requests() {
        secrets.extend(r.params.get("refresh_token").cloned());
    }
    assert!(secrets.len() > ids.len() + 1);
    for a in &answers {
        let all = a.everything();
        for s in &secrets {
            assert!(
                !all.contains(s.as_str()),
                "a secret in an error response: {all}"
            );
        }
    }
    let log = gw.log_text();
    for s in &secrets {
        assert!(!log.contains(s.as_str()), "a secret in the log");
    }
}
