//! Byte-level test tools for the proxy exchange (issue 9).
//!
//! [`RawUpstream`] stands in for the Mollie API on 127.0.0.1: it records every byte of every
//! connection (numbered from 0 in accept order), parses HTTP/1.1 requests itself and strictly
//! (a stray or malformed byte becomes that connection's `parse_error`, answered with a 400 and
//! a close, never skipped), and answers each request as a script says ([`Reply`]).
//! [`Caller`] is a raw client of the gateway's listener: split writes, strict response
//! parsing, every read bounded in time (in `raw/caller.rs`).

use super::fake_mollie::FakeMollie;
use super::{Gateway, GatewayBuilder};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};

mod caller;
#[allow(unused_imports)] // not every test file uses them all
pub use caller::{get, request, Caller, RawResponse};

/// How long [`Reply::Endless`] and [`Reply::Hang`] go on at most.
const SCRIPT_BOUND: Duration = Duration::from_secs(30);
/// The longest request head [`RawUpstream`] accepts.
const MAX_HEAD: usize = 64 * 1024;

/// One request as the upstream parsed it (or the part of it that has arrived).
#[derive(Debug, Clone, Default)]
pub struct RawRequest {
    pub method: String,
    pub target: String,
    /// Names as sent, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub chunked: bool,
    pub trailers: Vec<(String, String)>,
    /// The whole request arrived (for a chunked body: the last chunk and the empty line).
    pub complete: bool,
}

impl RawRequest {
    /// All values of a header (name compared case-insensitively).
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        let named = |(n, _): &&(String, String)| n.eq_ignore_ascii_case(name);
        self.headers
            .iter()
            .filter(named)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).into_iter().next()
    }
}

/// Everything one upstream connection received.
#[derive(Debug, Clone)]
pub struct RawConn {
    pub bytes: Vec<u8>,
    /// Complete requests, in order.
    pub requests: Vec<RawRequest>,
    /// A request whose head has arrived but not all of its body.
    pub pending: Option<RawRequest>,
    /// Bytes that are part of a complete request.
    pub consumed: usize,
    pub parse_error: Option<String>,
    /// When the gateway closed (or reset) the connection.
    pub closed_by_peer: Option<Instant>,
}

impl RawConn {
    /// Request heads received: complete requests and the pending one.
    pub fn heads(&self) -> impl Iterator<Item = &RawRequest> {
        self.requests.iter().chain(self.pending.as_ref())
    }

    /// Received bytes that belong to no complete request.
    pub fn stray(&self) -> &[u8] {
        &self.bytes[self.consumed..]
    }
}

/// Which request a [`Reply`] is for.
pub struct Arrival<'a> {
    /// The connection's number (0 = first accepted).
    pub conn: usize,
    /// The request's number on its connection (0 = first).
    pub index: usize,
    pub request: &'a RawRequest,
}

/// What the upstream does with one complete request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 `application/json` echoing method, target, `authorization`, `x-request-id`,
    /// `body_len`, `conn` and `req` (the numbers of [`Arrival`]); kept alive.
    Echo,
    /// Writes each part in turn with `gap` between them, e.g. a head and 10 body bytes, a
    /// pause, the rest ([`Reply::paused`]).
    Parts(Vec<Vec<u8>>, Duration),
    /// A 200 whose body never ends: `tick N\n` every 100 ms (for at most 30 s), chunked or
    /// under a `Content-Length` of 1 GB.
    Endless { chunked: bool },
    /// No answer (for at most 30 s, then the connection is closed).
    Hang,
    /// Closes the connection without answering.
    Close,
    /// These bytes, as they are; kept alive.
    Raw(Vec<u8>),
    /// These bytes, then the connection closed (e.g. a response broken off mid-body).
    Cut(Vec<u8>),
}

impl Reply {
    pub fn paused(first: &str, pause: Duration, rest: &str) -> Reply {
        Reply::Parts(vec![first.into(), rest.into()], pause)
    }
}

type Script = Arc<dyn Fn(&Arrival) -> Reply + Send + Sync>;
type Conns = Arc<Mutex<Vec<RawConn>>>;

/// A recording, scriptable stand-in for the Mollie API.
pub struct RawUpstream {
    addr: SocketAddr,
    conns: Conns,
    accept: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    /// Answers every request with [`Reply::Echo`].
    pub async fn echo() -> RawUpstream {
        RawUpstream::start(|_| Reply::Echo).await
    }

    /// Answers each complete request as `script` says (it runs under the recorder's lock: it
    /// must not call back into this `RawUpstream`).
    pub async fn start(script: impl Fn(&Arrival) -> Reply + Send + Sync + 'static) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let conns: Conns = Arc::default();
        let script: Script = Arc::new(script);
        let shared = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let n = {
                    let mut all = shared.lock().unwrap();
                    all.push(RawConn {
                        bytes: Vec::new(),
                        requests: Vec::new(),
                        pending: None,
                        consumed: 0,
                        parse_error: None,
                        closed_by_peer: None,
                    });
                    all.len() - 1
                };
                tokio::spawn(serve(stream, n, shared.clone(), script.clone()));
            }
        });
        RawUpstream {
            addr,
            conns,
            accept,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn connections(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    pub fn conn(&self, n: usize) -> RawConn {
        self.conns.lock().unwrap()[n].clone()
    }

    pub fn conns(&self) -> Vec<RawConn> {
        self.conns.lock().unwrap().clone()
    }

    /// Every request head (complete or pending) with this target, with its connection number.
    pub fn arrivals(&self, target: &str) -> Vec<(usize, RawRequest)> {
        let conns = self.conns();
        let mut out = Vec::new();
        for (n, c) in conns.iter().enumerate() {
            out.extend(
                c.heads()
                    .filter(|r| r.target == target)
                    .map(|r| (n, r.clone())),
            );
        }
        out
    }

    /// Every connection that received a request head, once the gateway has closed each of them
    /// (waited for up to 3 s): none ends with a chunked terminator or holds a complete POST,
    /// i.e. a body cut off upstream, never processed as complete. Returns their numbers.
    pub async fn assert_cut_off(&self) -> Vec<usize> {
        tokio::time::sleep(Duration::from_millis(100)).await; // a head sent just before
        let used: Vec<usize> = (0..self.connections())
            .filter(|n| self.conn(*n).heads().count() > 0)
            .collect();
        let closed = self
            .wait_until(Duration::from_secs(3), |c| {
                used.iter().all(|n| c[*n].closed_by_peer.is_some())
            })
            .await;
        assert!(
            closed,
            "an upstream connection that got the head is still open: {:?}",
            self.conns()
        );
        for n in &used {
            let conn = self.conn(*n);
            // After the head (whose last header value may itself end in `0`).
            let head_end = conn
                .bytes
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(0, |p| p + 4);
            assert!(
                !conn.bytes[head_end..].ends_with(b"0\r\n\r\n"),
                "terminated upstream: {conn:?}"
            );
            assert!(
                conn.requests.iter().all(|r| r.method != "POST"),
                "a complete POST upstream: {conn:?}"
            );
        }
        used
    }

    /// Polls (every 20 ms, at most `within`) until `done` holds for the connections.
    pub async fn wait_until(&self, within: Duration, done: impl Fn(&[RawConn]) -> bool) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if done(&self.conns.lock().unwrap()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// One upstream connection: a reader that records and parses, a writer that answers.
async fn serve(stream: TcpStream, n: usize, conns: Conns, script: Script) {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Reply)>();
    let (close, peer_gone) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let (close_r, gone_w) = (close.clone(), peer_gone.clone());
    let state = conns.clone();
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 16 * 1024];
        let stop = close_r.notified();
        tokio::pin!(stop);
        loop {
            let read = tokio::select! {
                r = rd.read(&mut buf) => r,
                _ = &mut stop => return,
            };
            let mut all = state.lock().unwrap();
            let c = &mut all[n];
            let Ok(len @ 1..) = read else {
                c.closed_by_peer = Some(Instant::now());
                gone_w.notify_one();
                return;
            };
            c.bytes.extend_from_slice(&buf[..len]);
            while c.parse_error.is_none() {
                match parse_request(&c.bytes[c.consumed..]) {
                    Parsed::Done(req, used) => {
                        c.consumed += used;
                        c.pending = None;
                        let index = c.requests.len();
                        let arrival = Arrival {
                            conn: n,
                            index,
                            request: &req,
                        };
                        let _ = tx.send((index, script(&arrival)));
                        c.requests.push(req);
                    }
                    Parsed::Partial(head) => {
                        c.pending = head;
                        break;
                    }
                    Parsed::Bad(e) => {
                        c.parse_error = Some(e);
                        let bad = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\
                                   Connection: close\r\n\r\n";
                        let _ = tx.send((0, Reply::Raw(bad.into())));
                        let _ = tx.send((0, Reply::Close));
                    }
                }
            }
        }
    });
    while let Some((index, reply)) = rx.recv().await {
        let ok = match reply {
            Reply::Echo => {
                let req = conns.lock().unwrap()[n].requests[index].clone();
                wr.write_all(&echo(&req, n, index)).await.is_ok()
            }
            Reply::Raw(bytes) => wr.write_all(&bytes).await.is_ok(),
            Reply::Cut(bytes) => {
                let _ = wr.write_all(&bytes).await;
                false
            }
            Reply::Parts(parts, gap) => {
                let mut ok = true;
                for (i, part) in parts.iter().enumerate() {
                    if i > 0 {
                        tokio::time::sleep(gap).await;
                    }
                    ok = ok && wr.write_all(part).await.is_ok();
                }
                ok
            }
            Reply::Endless { chunked } => {
                let framing = match chunked {
                    true => "Transfer-Encoding: chunked",
                    false => "Content-Length: 1000000000",
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
                );
                let mut ok = wr.write_all(head.as_bytes()).await.is_ok();
                let started = Instant::now();
                let mut tick = 0;
                while ok && started.elapsed() < SCRIPT_BOUND {
                    let chunk = format!("tick {tick}\n");
                    let framed = match chunked {
                        true => format!("{:x}\r\n{chunk}\r\n", chunk.len()),
                        false => chunk,
                    };
                    ok = wr.write_all(framed.as_bytes()).await.is_ok();
                    tick += 1;
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        _ = peer_gone.notified() => break,
                    }
                }
                false
            }
            Reply::Hang => {
                let _ = tokio::time::timeout(SCRIPT_BOUND, peer_gone.notified()).await;
                false
            }
            Reply::Close => false,
        };
        if !ok {
            break;
        }
    }
    // Closed by us: the reader stops too, and the socket closes with both halves.
    close.notify_one();
    drop(wr);
    let _ = reader.await;
}

fn echo(req: &RawRequest, conn: usize, index: usize) -> Vec<u8> {
    let body = serde_json::json!({
        "method": req.method,
        "target": req.target,
        "authorization": req.header("authorization"),
        "request_id": req.header("x-request-id"),
        "body_len": req.body.len(),
        "conn": conn,
        "req": index,
    })
    .to_string();
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

enum Parsed {
    /// A complete request and the bytes it took.
    Done(RawRequest, usize),
    /// More bytes are needed; the head when it has arrived.
    Partial(Option<RawRequest>),
    Bad(String),
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A bare LF (one not after a CR) anywhere in `bytes`.
fn bare_lf(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .enumerate()
        .any(|(i, b)| *b == b'\n' && (i == 0 || bytes[i - 1] != b'\r'))
}

fn parse_request_line(line: &[u8]) -> Result<(String, String), String> {
    let text = String::from_utf8_lossy(line);
    let parts: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(format!("bad request line {text:?}"));
    };
    let method_ok = !method.is_empty() && method.iter().all(|b| is_tchar(*b));
    let target_ok = !target.is_empty() && target.iter().all(|b| (0x21..=0x7e).contains(b));
    if !method_ok || !target_ok || version != b"HTTP/1.1" {
        return Err(format!("bad request line {text:?}"));
    }
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok((s(method), s(target)))
}

/// `name: value` lines (no folding, no white space before the colon, no control bytes).
fn parse_fields(lines: &[u8]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let bad = || format!("bad field line {:?}", String::from_utf8_lossy(line));
        let colon = line.iter().position(|b| *b == b':').ok_or_else(bad)?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|b| is_tchar(*b)) {
            return Err(bad());
        }
        if value
            .iter()
            .any(|b| (*b < 0x20 && *b != b'\t') || *b == 0x7f)
        {
            return Err(bad());
        }
        let value = String::from_utf8_lossy(value)
            .trim_matches([' ', '\t'])
            .to_string();
        out.push((String::from_utf8_lossy(name).into_owned(), value));
    }
    Ok(out)
}

/// Parses one request from the start of `buf`, strictly (RFC 9112, no leniency).
fn parse_request(buf: &[u8]) -> Parsed {
    if buf.is_empty() {
        return Parsed::Partial(None);
    }
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        if bare_lf(buf) {
            return Parsed::Bad("bare LF in a request head".into());
        }
        if let Some(eol) = find(buf, b"\r\n") {
            if let Err(e) = parse_request_line(&buf[..eol]) {
                return Parsed::Bad(e);
            }
        }
        if buf.len() > MAX_HEAD {
            return Parsed::Bad("request head too long".into());
        }
        return Parsed::Partial(None);
    };
    let head = &buf[..head_end + 2];
    if bare_lf(head) {
        return Parsed::Bad("bare LF in a request head".into());
    }
    let eol = find(head, b"\r\n").unwrap_or(head.len());
    let (method, target) = match parse_request_line(&head[..eol]) {
        Ok(line) => line,
        Err(e) => return Parsed::Bad(e),
    };
    let headers = match parse_fields(&head[eol + 2..]) {
        Ok(h) => h,
        Err(e) => return Parsed::Bad(e),
    };
    let mut req = RawRequest {
        method,
        target,
        headers,
        ..RawRequest::default()
    };
    let start = head_end + 4;
    let (te, cl) = (
        req.header_values("transfer-encoding"),
        req.header_values("content-length"),
    );
    match (&te[..], &cl[..]) {
        ([], []) => {
            req.complete = true;
            Parsed::Done(req, start)
        }
        ([], [len]) => {
            let Some(len) = len
                .parse::<usize>()
                .ok()
                .filter(|_| len.bytes().all(|b| b.is_ascii_digit()))
            else {
                return Parsed::Bad(format!("bad Content-Length {len:?}"));
            };
            let body = &buf[start..buf.len().min(start + len)];
            req.body = body.to_vec();
            req.complete = body.len() == len;
            match req.complete {
                true => Parsed::Done(req, start + len),
                false => Parsed::Partial(Some(req)),
            }
        }
        ([te], []) if te.eq_ignore_ascii_case("chunked") => {
            req.chunked = true;
            parse_chunked(req, buf, start)
        }
        _ => Parsed::Bad(format!(
            "bad framing: Transfer-Encoding {te:?}, Content-Length {cl:?}"
        )),
    }
}

/// The chunked body of `req` from `buf[pos..]`.
fn parse_chunked(mut req: RawRequest, buf: &[u8], mut pos: usize) -> Parsed {
    loop {
        let rest = &buf[pos..];
        let Some(eol) = find(rest, b"\r\n") else {
            let line = &rest[..rest.len().min(18)];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if rest.len() > 17 || bare_lf(rest) || !line.iter().all(u8::is_ascii_hexdigit) {
                return Parsed::Bad(format!(
                    "bad chunk size line {:?}",
                    String::from_utf8_lossy(line)
                ));
            }
            return Parsed::Partial(Some(req));
        };
        let line = &rest[..eol];
        let size = std::str::from_utf8(line)
            .ok()
            .filter(|l| (1..=16).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|l| usize::from_str_radix(l, 16).ok());
        let Some(size) = size else {
            return Parsed::Bad(format!(
                "bad chunk size line {:?}",
                String::from_utf8_lossy(line)
            ));
        };
        pos += eol + 2;
        if size == 0 {
            let rest = &buf[pos..];
            if rest.starts_with(b"\r\n") {
                req.complete = true;
                return Parsed::Done(req, pos + 2);
            }
            let Some(end) = find(rest, b"\r\n\r\n") else {
                if bare_lf(rest) {
                    return Parsed::Bad("bare LF in trailers".into());
                }
                return Parsed::Partial(Some(req));
            };
            if bare_lf(&rest[..end + 2]) {
                return Parsed::Bad("bare LF in trailers".into());
            }
            match parse_fields(&rest[..end + 2]) {
                Ok(trailers) => req.trailers = trailers,
                Err(e) => return Parsed::Bad(e),
            }
            req.complete = true;
            return Parsed::Done(req, pos + end + 4);
        }
        let data = &buf[pos..buf.len().min(pos + size)];
        req.body.extend_from_slice(data);
        if data.len() < size {
            return Parsed::Partial(Some(req));
        }
        let after = &buf[pos + size..buf.len().min(pos + size + 2)];
        if !b"\r\n".starts_with(after) {
            return Parsed::Bad("chunk data not followed by CRLF".into());
        }
        if after.len() < 2 {
            return Parsed::Partial(Some(req));
        }
        pos += size + 2;
    }
}

/// A gateway in front of `upstream` (tokens from `fake`), merchants m1 and m2 onboarded,
/// with `env` overrides.
pub fn gateway(fake: &FakeMollie, upstream: &RawUpstream, env: &[(&str, &str)]) -> Gateway {
    let mut builder = GatewayBuilder::new(fake).env("UPSTREAM__BASE_URL", upstream.base_url());
    for (k, v) in env {
        builder = builder.env(k, *v);
    }
    let mut gw = builder.prepare();
    gw.onboard(fake, "m1");
    gw.onboard(fake, "m2");
    gw.spawn();
    gw
}

/// `Bearer <current access token of merchant>`.
pub fn bearer(fake: &FakeMollie, merchant: &str) -> String {
    let token = fake
        .current_access_token(merchant)
        .expect("a token was issued");
    format!("Bearer {token}")
}
