//! The caller's side: a raw connection to the gateway's listener ([`Caller`]), the responses
//! it reads ([`RawResponse`]) and request heads to send.

use super::find;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response as the caller read it.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// The head as text (status line and headers).
    pub head: String,
    pub headers: Vec<(String, String)>,
    /// The decoded body.
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut named = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name));
        named.next().map(|(_, v)| v.as_str())
    }

    /// The body as JSON (panics with the response when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts a Mollie-shaped gateway error: status, `X-Gateway-Error` and `"status"`.
    pub fn assert_gateway_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.header("x-gateway-error"), Some(code), "{self:?}");
        assert_eq!(self.json()["status"], status, "{self:?}");
    }
}

/// Parses one response from the start of `buf`: `None` while more bytes are needed (or, at
/// `eof`, a body framed by the close is complete).
fn parse_response(
    buf: &[u8],
    to_head: bool,
    eof: bool,
) -> Option<Result<(RawResponse, usize), String>> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        let got = String::from_utf8_lossy(buf);
        return eof.then(|| Err(format!("the gateway closed the connection; got {got:?}")));
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = match status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
    {
        Some(code) => code.parse::<u16>().ok(),
        None => None,
    };
    let Some(status) = status else {
        return Some(Err(format!("bad status line: {head:?}")));
    };
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.to_string(), v.trim().to_string()))
        .collect();
    let mut resp = RawResponse {
        status,
        head,
        headers,
        body: Vec::new(),
    };
    let start = head_end + 4;
    let te = resp
        .header("transfer-encoding")
        .map(str::to_ascii_lowercase);
    let cl = resp
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok());
    if to_head || (100..200).contains(&status) || status == 204 || status == 304 {
        return Some(Ok((resp, start)));
    }
    if te.as_deref() == Some("chunked") {
        let mut pos = start;
        loop {
            let eol = find(&buf[pos..], b"\r\n")?;
            let line = String::from_utf8_lossy(&buf[pos..pos + eol]).into_owned();
            let Ok(size) = usize::from_str_radix(&line, 16) else {
                return Some(Err(format!("bad chunk size {line:?}")));
            };
            pos += eol + 2;
            if size == 0 {
                let end = find(&buf[pos..], b"\r\n")?;
                let end = if end == 0 {
                    2
                } else {
                    find(&buf[pos..], b"\r\n\r\n")? + 4
                };
                return Some(Ok((resp, pos + end)));
            }
            if buf.len() < pos + size + 2 {
                return None;
            }
            resp.body.extend_from_slice(&buf[pos..pos + size]);
            pos += size + 2;
        }
    }
    match cl {
        Some(len) if buf.len() >= start + len => {
            resp.body = buf[start..start + len].to_vec();
            Some(Ok((resp, start + len)))
        }
        Some(_) => eof.then(|| {
            Err(format!(
                "closed inside a body: {:?}",
                String::from_utf8_lossy(buf)
            ))
        }),
        None if eof => {
            resp.body = buf[start..].to_vec();
            Some(Ok((resp, buf.len())))
        }
        None => None,
    }
}

/// A raw connection to the gateway's listener.
pub struct Caller {
    stream: TcpStream,
    /// Received and not yet consumed by [`Caller::response`].
    pub buf: Vec<u8>,
    /// The gateway closed (or reset) the connection.
    pub closed: bool,
}

impl Caller {
    pub async fn connect(addr: &str) -> Caller {
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect to the gateway");
        stream.set_nodelay(true).unwrap();
        Caller {
            stream,
            buf: Vec::new(),
            closed: false,
        }
    }

    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) -> std::io::Result<()> {
        self.stream.write_all(bytes.as_ref()).await
    }

    /// Writes `parts` one by one, sleeping `gap` between them (separate TCP segments).
    pub async fn send_parts(&mut self, parts: &[&[u8]], gap: Duration) -> std::io::Result<()> {
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(gap).await;
            }
            self.stream.write_all(part).await?;
        }
        Ok(())
    }

    /// One read, until `deadline`; false on timeout or close.
    async fn fill(&mut self, deadline: tokio::time::Instant) -> bool {
        if self.closed {
            return false;
        }
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Ok(_) => {
                self.closed = true;
                false
            }
            Err(_) => false,
        }
    }

    /// Reads until `done(received)` holds; false if it does not within `within`.
    pub async fn read_until(&mut self, within: Duration, done: impl Fn(&[u8]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while !done(&self.buf) {
            if !self.fill(deadline).await {
                return done(&self.buf);
            }
        }
        true
    }

    /// The next response (to a request other than HEAD), within `within`.
    pub async fn try_response(
        &mut self,
        to_head: bool,
        within: Duration,
    ) -> Result<RawResponse, String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(parsed) = parse_response(&self.buf, to_head, self.closed) {
                let (resp, used) = parsed?;
                self.buf.drain(..used);
                return Ok(resp);
            }
            if self.closed {
                return Err("the gateway closed the connection without a response".into());
            }
            if !self.fill(deadline).await && !self.closed {
                let got = String::from_utf8_lossy(&self.buf);
                return Err(format!(
                    "no complete response within {within:?}; got {got:?}"
                ));
            }
        }
    }

    /// The next response, within 5 s (panics otherwise).
    pub async fn response(&mut self) -> RawResponse {
        self.try_response(false, Duration::from_secs(5))
            .await
            .unwrap()
    }

    /// Whether the gateway closes the connection within `within` (bytes that arrive meanwhile
    /// are kept in `buf`).
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while !self.closed && tokio::time::Instant::now() < deadline {
            self.fill(deadline).await;
        }
        self.closed
    }

    /// Writes one byte of `bytes` every `every` while reading; stops at the first byte
    /// received, at the close, or when all is written. Returns how long it went on.
    pub async fn trickle(&mut self, bytes: &[u8], every: Duration) -> Duration {
        let started = Instant::now();
        for b in bytes {
            if self.stream.write_all(&[*b]).await.is_err() {
                break;
            }
            let deadline = tokio::time::Instant::now() + every;
            if self.fill(deadline).await || self.closed {
                break;
            }
        }
        started.elapsed()
    }
}

/// A request head: `GET {target}` with `Host` and, when given, the merchant header.
pub fn get(target: &str, merchant: Option<&str>) -> String {
    request("GET", target, merchant, &[])
}

/// A request head (no body) with `Host`, the merchant header when given, and `extra` lines.
pub fn request(method: &str, target: &str, merchant: Option<&str>, extra: &[&str]) -> String {
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: gateway.test\r\n");
    if let Some(m) = merchant {
        head.push_str(&format!("X-Merchant-Id: {m}\r\n"));
    }
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head
}
