//! The load bench's fake Mollie (`benches/load.sh`): a strict, fast API upstream and a token
//! endpoint, plus the generators for the credential store and nginx's `map`.
//!
//! The API answers `200` with a ~300-byte JSON body only when `Authorization` is exactly
//! `Bearer access_<m>_<suffix>` for the merchant `m` named in the query (`?m=<m>`) and the
//! merchant header is gone; anything else gets Mollie's `401`. So a proxy that puts the wrong
//! merchant's token on, or forgets to drop the header, can never look fast.
//!
//! Why hand-rolled HTTP/1.1 on one tokio thread rather than axum or nginx: it parses only what
//! it checks and allocates nothing per request, so the upstream costs a few µs of CPU per
//! request and is never what limits the proxies in front of it (`load.sh` prints its CPU per
//! request beside theirs). It understands keep-alive and `Content-Length` bodies, no more.
//!
//! ```sh
//! cargo run --release --example bench_upstream -- serve --api 127.0.0.1:18081 --tokens 127.0.0.1:18082
//! cargo run --release --example bench_upstream -- store --merchants 1000 --out /tmp/creds.json
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const USAGE: &str = "usage: bench_upstream serve --api ADDR --tokens ADDR [--suffix S] \
[--token-delay-ms N] [--short-lifetime-secs N] [--ports-file PATH]
       bench_upstream store --merchants N [--storm K] --out PATH
       bench_upstream nginx-map --merchants N [--suffix S]";

/// Merchant `i` (1-based): `m000001`. Storm merchants (one short-lived token each): `s000001`.
fn merchant(prefix: char, i: usize) -> String {
    format!("{prefix}{i:06}")
}

/// A ~300-byte Mollie-like answer (a `methods` list entry).
const OK_BODY: &[u8] = br#"{"resource":"method","id":"ideal","description":"iDEAL","minimumAmount":{"value":"0.01","currency":"EUR"},"maximumAmount":{"value":"50000.00","currency":"EUR"},"image":{"size1x":"https://www.mollie.com/external/icons/payment-methods/ideal.png"},"status":"activated","_links":{"self":{"href":"https://api.mollie.com/v2/methods/ideal","type":"application/hal+json"}}}"#;
const UNAUTHORIZED_BODY: &[u8] = br#"{"status":401,"title":"Unauthorized Request","detail":"Missing authentication, or failed to authenticate","_links":{"documentation":{"href":"https://docs.mollie.com/overview/authentication","type":"text/html"}}}"#;

#[derive(Default)]
struct Stats {
    api_ok: AtomicU64,
    api_401: AtomicU64,
    token_calls: AtomicU64,
    /// Server-side duration of the last token call (the configured delay plus parsing).
    token_last_us: AtomicU64,
    /// When each merchant's token calls came (µs since start), for `GET /_expiries`.
    token_log: std::sync::Mutex<std::collections::HashMap<String, Vec<u64>>>,
}

struct Config {
    suffix: String,
    token_delay: Duration,
    short_lifetime: u64,
    stats: Stats,
    started: Instant,
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn num(args: &[String], name: &str, default: u64) -> u64 {
    arg(args, name).map_or(default, |v| v.parse().expect("a number"))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let suffix = arg(&args, "--suffix").unwrap_or_else(|| "gatewaybench0123456789".into());
    match args.first().map(String::as_str) {
        Some("serve") => {
            let config = Arc::new(Config {
                suffix,
                token_delay: Duration::from_millis(num(&args, "--token-delay-ms", 0)),
                short_lifetime: num(&args, "--short-lifetime-secs", 2),
                stats: Stats::default(),
                started: Instant::now(),
            });
            let api = arg(&args, "--api").expect(USAGE);
            let tokens = arg(&args, "--tokens").expect(USAGE);
            serve(config, api, tokens, arg(&args, "--ports-file"));
        }
        Some("store") => {
            let n = num(&args, "--merchants", 1000) as usize;
            let storm = num(&args, "--storm", 1) as usize;
            let out = arg(&args, "--out").expect(USAGE);
            let mut merchants = serde_json::Map::new();
            let ids = (1..=n)
                .map(|i| merchant('m', i))
                .chain((1..=storm).map(|i| merchant('s', i)));
            for id in ids {
                let record = serde_json::json!({"refresh_token": format!("refresh_{id}"), "revoked": false, "updated_at": 0});
                merchants.insert(id, record);
            }
            let file = serde_json::json!({"version": 1, "merchants": merchants});
            std::fs::write(&out, serde_json::to_vec(&file).expect("json")).expect("write store");
        }
        Some("nginx-map") => {
            // `map $http_x_merchant_id $mollie_token { ... }` body lines.
            let n = num(&args, "--merchants", 1000) as usize;
            let mut out = String::new();
            for i in 1..=n {
                let m = merchant('m', i);
                out.push_str(&format!("    {m} \"Bearer access_{m}_{suffix}\";\n"));
            }
            print!("{out}");
        }
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}

/// Serves until killed. With `ports_file`, writes "API-port token-port" there once both
/// listen (bind to port 0 to let the kernel choose).
fn serve(config: Arc<Config>, api: String, tokens: String, ports_file: Option<String>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let api = listen(&api).expect("bind --api");
        let tokens = listen(&tokens).expect("bind --tokens");
        if let Some(path) = ports_file {
            let port = |l: &TcpListener| l.local_addr().expect("bound").port();
            let ports = format!("{} {}\n", port(&api), port(&tokens));
            let tmp = format!("{path}.tmp");
            std::fs::write(&tmp, ports).expect("write --ports-file");
            std::fs::rename(&tmp, &path).expect("write --ports-file");
        }
        let c = config.clone();
        tokio::spawn(accept(tokens, c, true));
        accept(api, config, false).await;
    });
}

/// A listener with a 4096-connection accept queue (tokio's `bind` gives 1024): a refresh storm
/// of 1,000 requests opens most of its upstream connections at once.
fn listen(addr: &str) -> std::io::Result<TcpListener> {
    let addr: std::net::SocketAddr = addr.parse().map_err(std::io::Error::other)?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

async fn accept(listener: TcpListener, config: Arc<Config>, tokens: bool) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, config.clone(), tokens));
    }
}

/// One parsed request: what the handlers look at, borrowed from the read buffer.
struct Request<'a> {
    method: &'a [u8],
    target: &'a [u8],
    authorization: Option<&'a [u8]>,
    merchant_header: bool,
    close: bool,
    body: &'a [u8],
}

/// Serves one keep-alive connection; returns when the peer closes or sends garbage.
async fn connection(mut stream: TcpStream, config: Arc<Config>, tokens: bool) {
    let mut buf = vec![0u8; 16 * 1024];
    let (mut start, mut end) = (0usize, 0usize);
    let mut out = Vec::with_capacity(1024);
    loop {
        // Parse as many complete requests as the buffer holds (pipelining-safe).
        while let Some((req, used)) = parse(&buf[start..end]) {
            out.clear();
            let close = req.close;
            if tokens {
                token_answer(&config, &req, &mut out).await;
            } else {
                api_answer(&config, &req, &mut out);
            }
            start += used;
            if stream.write_all(&out).await.is_err() || close {
                return;
            }
        }
        if start == end {
            (start, end) = (0, 0);
        } else if end == buf.len() {
            if start == 0 {
                return; // a request larger than the buffer: not ours to serve
            }
            buf.copy_within(start..end, 0);
            (start, end) = (0, end - start);
        }
        match stream.read(&mut buf[end..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => end += n,
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A complete request at the start of `data`, and its length; `None` if more is needed.
fn parse(data: &[u8]) -> Option<(Request<'_>, usize)> {
    let head_end = find(data, b"\r\n\r\n")? + 4;
    let mut lines = data[..head_end - 4].split(|&b| b == b'\n');
    let mut first = lines.next()?.split(|&b| b == b' ');
    let (method, target) = (first.next()?, first.next()?);
    let mut req = Request {
        method,
        target,
        authorization: None,
        merchant_header: false,
        close: false,
        body: &[],
    };
    let mut length = 0usize;
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"authorization") {
            req.authorization = Some(value);
        } else if name.eq_ignore_ascii_case(b"x-merchant-id") {
            req.merchant_header = true;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            length = std::str::from_utf8(value).ok()?.parse().ok()?;
        } else if name.eq_ignore_ascii_case(b"connection") {
            req.close = value.eq_ignore_ascii_case(b"close");
        }
    }
    if data.len() < head_end + length {
        return None;
    }
    req.body = &data[head_end..head_end + length];
    Some((req, head_end + length))
}

/// `GET /_expiries?gap_ms=G` (and the log is cleared): each merchant's token calls grouped into
/// expiries, a call less than `G` after the first call of the current group counting for that
/// same expiry (with background refresh off a token is replaced half its lifetime after it was
/// issued, so `G` = a quarter of the lifetime separates expiries from duplicate calls for one).
fn expiries(log: std::collections::HashMap<String, Vec<u64>>, gap_us: u64) -> String {
    let (mut calls, mut expiries, mut max) = (0usize, 0usize, 0usize);
    for mut times in log.values().cloned() {
        times.sort_unstable();
        let mut group: Option<(u64, usize)> = None;
        for t in times {
            calls += 1;
            group = match group {
                Some((first, n)) if t - first < gap_us => Some((first, n + 1)),
                _ => {
                    expiries += 1;
                    Some((t, 1))
                }
            };
            max = max.max(group.map_or(0, |g| g.1));
        }
    }
    format!(
        r#"{{"merchants":{},"calls":{calls},"expiries":{expiries},"max_calls_per_expiry":{max}}}"#,
        log.len()
    )
}

/// The value of query parameter `name` in a request target.
fn query_param<'a>(target: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let q = &target[target.iter().position(|&b| b == b'?')? + 1..];
    q.split(|&b| b == b'&').find_map(|pair| {
        let eq = pair.iter().position(|&b| b == b'=')?;
        (&pair[..eq] == name).then(|| &pair[eq + 1..])
    })
}

/// `Bearer access_<m>_<suffix>`, compared piece by piece (no allocation).
fn is_token_of(auth: &[u8], m: &[u8], suffix: &str) -> bool {
    let Some(rest) = auth.strip_prefix(b"Bearer access_") else {
        return false;
    };
    let Some(rest) = rest.strip_prefix(m) else {
        return false;
    };
    rest.strip_prefix(b"_") == Some(suffix.as_bytes())
}

fn respond(out: &mut Vec<u8>, status: &str, body: &[u8]) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: application/hal+json\r\nContent-Length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}

fn api_answer(config: &Config, req: &Request<'_>, out: &mut Vec<u8>) {
    let ok = !req.merchant_header
        && match (query_param(req.target, b"m"), req.authorization) {
            (Some(m), Some(auth)) => is_token_of(auth, m, &config.suffix),
            _ => false,
        };
    if ok {
        config.stats.api_ok.fetch_add(1, Ordering::Relaxed);
        respond(out, "200 OK", OK_BODY);
    } else {
        config.stats.api_401.fetch_add(1, Ordering::Relaxed);
        respond(out, "401 Unauthorized", UNAUTHORIZED_BODY);
    }
}

/// `POST /oauth2/tokens` (refresh grant; `refresh_<m>` → `access_<m>_<suffix>`, one hour, or
/// `--short-lifetime-secs` for storm merchants `s…`), `GET /_stats` and `GET /_expiries`.
async fn token_answer(config: &Config, req: &Request<'_>, out: &mut Vec<u8>) {
    let s = &config.stats;
    if req.method == b"GET" && req.target == b"/_stats" {
        let body = format!(
            r#"{{"api_ok":{},"api_401":{},"token_calls":{},"token_last_us":{}}}"#,
            s.api_ok.load(Ordering::Relaxed),
            s.api_401.load(Ordering::Relaxed),
            s.token_calls.load(Ordering::Relaxed),
            s.token_last_us.load(Ordering::Relaxed),
        );
        return respond(out, "200 OK", body.as_bytes());
    }
    if req.method == b"GET" && req.target.starts_with(b"/_expiries") {
        let gap_ms = query_param(req.target, b"gap_ms")
            .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
            .unwrap_or(1000u64);
        let log = std::mem::take(&mut *s.token_log.lock().unwrap_or_else(|e| e.into_inner()));
        return respond(out, "200 OK", expiries(log, gap_ms * 1000).as_bytes());
    }
    let started = Instant::now();
    s.token_calls.fetch_add(1, Ordering::Relaxed);
    if !config.token_delay.is_zero() {
        tokio::time::sleep(config.token_delay).await;
    }
    let refresh = form_urlencoded::parse(req.body)
        .find(|(k, _)| k == "refresh_token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let body = match refresh.strip_prefix("refresh_") {
        Some(m) if !m.is_empty() => {
            let at = config.started.elapsed().as_micros() as u64;
            let mut log = s.token_log.lock().unwrap_or_else(|e| e.into_inner());
            log.entry(m.to_string()).or_default().push(at);
            drop(log);
            let lifetime = if m.starts_with('s') {
                config.short_lifetime
            } else {
                3600
            };
            format!(
                r#"{{"access_token":"access_{m}_{}","token_type":"bearer","expires_in":{lifetime},"scope":"payments.read"}}"#,
                config.suffix
            )
        }
        _ => String::new(),
    };
    if body.is_empty() {
        respond(
            out,
            "400 Bad Request",
            br#"{"error":"invalid_grant","error_description":"unknown refresh token"}"#,
        );
    } else {
        respond(out, "200 OK", body.as_bytes());
    }
    s.token_last_us
        .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
}
