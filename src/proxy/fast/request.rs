//! The request shape the fast path takes, and the upstream head it writes for it.
//!
//! [`parse`] accepts only what every SDK sends and nothing it would have to interpret:
//! HTTP/1.1; `GET`, `POST`, `PATCH` or `DELETE`; an origin-form target of URI characters
//! (no `#`, no byte http's `Uri` would rewrite); every line ended by CRLF; at most
//! [`MAX_LINES`] header lines; at most one `Host` (without `@`); at most one
//! `Content-Length` of plain digits; `Connection` at most once and only `keep-alive` or
//! `close`; no `Transfer-Encoding`, `TE`, `Trailer`, `Upgrade`, `Expect`, `Keep-Alive`,
//! `HTTP2-Settings` or `Proxy-*` header. Anything else is `None`: pingora's session
//! serves it, from the same bytes, with every rule of the slow path. No request is refused
//! here, so the two paths cannot disagree on what is an error.
//!
//! [`upstream_head`] replays, on the borrowed lines, the edits the slow path makes to pingora's
//! `RequestHeader` (`headers::rewrite_upstream_headers`, then `Gateway::outbound`), in the same
//! order, so the upstream receives the same bytes from either path
//! (`fuzz/fuzz_targets/fast_path.rs` checks it).

use super::lines::Lines;
use http::Method;
use std::mem::MaybeUninit;

/// Header lines the fast path parses; a request with more goes to the slow path (SDKs send
/// about ten; the array is part of every request's state).
pub const MAX_LINES: usize = 32;

/// A request the fast path serves, borrowing its head.
pub struct Simple<'a> {
    pub method: Method,
    /// Origin-form, as sent.
    pub target: &'a [u8],
    /// Every header line, in order.
    pub headers: &'a [httparse::Header<'a>],
    /// `Content-Length`.
    pub length: Option<u64>,
    /// The caller sent `Connection: close`.
    pub close: bool,
}

impl<'a> Simple<'a> {
    /// Every value of `name`, in order.
    pub fn values<'s>(&'s self, name: &'s [u8]) -> impl Iterator<Item = &'a [u8]> + 's {
        self.headers
            .iter()
            .filter(move |h| h.name.as_bytes().eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// The first value of `name`.
    pub fn first(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.values(name).next()
    }

    /// The path, without the query (for the access log).
    pub fn path(&self) -> &'a str {
        let end = memchr::memchr(b'?', self.target).unwrap_or(self.target.len());
        // `parse` admits ASCII targets only.
        std::str::from_utf8(&self.target[..end]).unwrap_or("/")
    }

    /// The query, if any.
    pub fn query(&self) -> Option<&'a str> {
        let at = memchr::memchr(b'?', self.target)?;
        std::str::from_utf8(&self.target[at + 1..]).ok()
    }
}

/// A byte http's `Uri` keeps as it is in an origin-form target (RFC 3986 unreserved,
/// sub-delims, `:`, `@`, `/`, `?`, `%`).
fn is_target_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

/// Headers that send a request to the slow path.
const SLOW_HEADERS: [&[u8]; 7] = [
    b"transfer-encoding",
    b"te",
    b"trailer",
    b"upgrade",
    b"expect",
    b"keep-alive",
    b"http2-settings",
];

/// Room for the header lines of one head (not zeroed: httparse fills what it parses).
pub type LineSlots<'a> = [MaybeUninit<httparse::Header<'a>>; MAX_LINES];

pub fn line_slots<'a>() -> LineSlots<'a> {
    [const { MaybeUninit::uninit() }; MAX_LINES]
}

/// The request in `head` (exactly one head, through its empty line) if it has the fast path's
/// shape (see the module text); `lines` holds its header lines.
pub fn parse<'a>(head: &'a [u8], lines: &'a mut LineSlots<'a>) -> Option<Simple<'a>> {
    if memchr::memchr_iter(b'\n', head).any(|i| i == 0 || head[i - 1] != b'\r') {
        return None;
    }
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(head, lines) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        _ => return None,
    }
    let method = match req.method? {
        "GET" => Method::GET,
        "POST" => Method::POST,
        "PATCH" => Method::PATCH,
        "DELETE" => Method::DELETE,
        _ => return None,
    };
    let target = req.path?.as_bytes();
    if req.version != Some(1)
        || !target.starts_with(b"/")
        || !target.iter().copied().all(is_target_byte)
    {
        return None;
    }
    let headers: &'a [httparse::Header<'a>] = req.headers;
    let (mut length, mut close) = (None, false);
    let (mut hosts, mut connections) = (0, 0);
    for h in headers {
        let name = h.name.as_bytes();
        if name.len() >= 6 && name[..6].eq_ignore_ascii_case(b"proxy-")
            || SLOW_HEADERS.iter().any(|s| name.eq_ignore_ascii_case(s))
        {
            return None;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            let digits = h.value;
            if length.is_some()
                || digits.is_empty()
                || digits.len() > 18
                || !digits.iter().all(u8::is_ascii_digit)
            {
                return None;
            }
            length = std::str::from_utf8(digits).ok()?.parse::<u64>().ok();
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            if hosts > 1 || h.value.contains(&b'@') {
                return None;
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            connections += 1;
            close = h.value.eq_ignore_ascii_case(b"close");
            if connections > 1 || !(close || h.value.eq_ignore_ascii_case(b"keep-alive")) {
                return None;
            }
        }
    }
    Some(Simple {
        method,
        target,
        headers,
        length,
        close,
    })
}

/// The length of the request head at the start of `buf` (through its empty line), once it is
/// there. An LF, an optional CR and an LF end it: pingora's parser (httparse) takes a bare LF
/// for a line end too; the gateway then refuses such a head (`headers::check_framing`).
pub fn head_len(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(lf) = memchr::memchr(b'\n', &buf[from..]) {
        let at = from + lf + 1;
        match buf.get(at..) {
            Some([b'\n', ..]) => return Some(at + 1),
            Some([b'\r', b'\n', ..]) => return Some(at + 2),
            _ => from = at,
        }
    }
    None
}

/// What the upstream head carries besides the caller's lines.
pub struct Outbound<'a> {
    /// `merchants.header`, removed.
    pub merchant_header: &'a [u8],
    /// `server.client_key_header`, removed.
    pub client_key_header: &'a [u8],
    /// `Bearer <token>`.
    pub bearer: &'a [u8],
    /// The upstream's `Host`.
    pub host: &'a [u8],
    pub request_id: &'a [u8],
    /// The target with `testmode=true` added, when the defaults add it.
    pub target: Option<&'a [u8]>,
    /// The `Content-Length` of a body the defaults rewrote.
    pub length: Option<&'a [u8]>,
}

/// The upstream request head for `req` (see the module text), appended to `out`.
pub fn upstream_head(req: &Simple<'_>, o: &Outbound<'_>, out: &mut Vec<u8>) {
    let mut lines = Lines::with_capacity(req.headers.len() + 3);
    for h in req.headers {
        lines.append(h.name.as_bytes(), h.value);
    }
    // `rewrite_upstream_headers`: hop-by-hop (here only `Connection` can be present) …
    lines.remove(b"connection");
    // … the merchant header, the token, the upstream's host …
    lines.remove(o.merchant_header);
    lines.insert(b"authorization", o.bearer);
    lines.insert(b"Host", o.host);
    // … then `Gateway::outbound`: the caller's key header, the body's new length, the id.
    lines.remove(o.client_key_header);
    if let Some(length) = o.length {
        lines.insert(b"Content-Length", length);
    }
    lines.insert(b"x-request-id", o.request_id);
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(o.target.unwrap_or(req.target));
    out.extend_from_slice(b" HTTP/1.1\r\n");
    lines.write_to(out);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn simple(head: &[u8]) -> bool {
        let mut lines = line_slots();
        parse(head, &mut lines).is_some()
    }

    #[test]
    fn what_sdks_send_is_taken() {
        assert!(simple(b"GET /v2/payments?limit=5 HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer live_x\r\nX-Merchant-Id: m1\r\n\r\n"));
        assert!(simple(b"POST /v2/payments HTTP/1.1\r\nhost: g\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\n"));
        assert!(simple(
            b"DELETE /v2/payments/tr_1 HTTP/1.1\r\nConnection: close\r\n\r\n"
        ));
    }

    #[test]
    fn anything_else_goes_to_the_slow_path() {
        for head in [
            &b"GET /a HTTP/1.0\r\n\r\n"[..],
            b"HEAD /a HTTP/1.1\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\n\r\n",
            b"GET http://h/a HTTP/1.1\r\n\r\n",
            b"GET /a#f HTTP/1.1\r\n\r\n",
            b"GET /a\"b HTTP/1.1\r\n\r\n",
            b"GET /a HTTP/1.1\nHost: h\r\n\r\n",
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST /a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            b"POST /a HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\n",
            b"POST /a HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            b"POST /a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            b"GET /a HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
            b"GET /a HTTP/1.1\r\nConnection: x-secret\r\n\r\n",
            b"GET /a HTTP/1.1\r\nConnection: close\r\nConnection: close\r\n\r\n",
            b"GET /a HTTP/1.1\r\nProxy-Authorization: x\r\n\r\n",
            b"GET /a HTTP/1.1\r\nTE: trailers\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: u@h\r\n\r\n",
            b"GET /a HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
        ] {
            assert!(!simple(head), "{}", String::from_utf8_lossy(head));
        }
        let many: String = (0..=MAX_LINES).map(|i| format!("X-{i}: v\r\n")).collect();
        assert!(!simple(format!("GET /a HTTP/1.1\r\n{many}\r\n").as_bytes()));
    }

    #[test]
    fn a_head_ends_at_its_empty_line() {
        assert_eq!(head_len(b"GET / HTTP/1.1\r\nHost: h\r\n\r\nbody"), Some(27));
        assert_eq!(head_len(b"GET / HTTP/1.1\nHost: h\n\nbody"), Some(24));
        assert_eq!(head_len(b"GET / HTTP/1.1\r\nHost: h\n\r\n"), Some(26));
        assert_eq!(head_len(b"GET / HTTP/1.1\r\nHost: h\r\n\r"), None);
        assert_eq!(head_len(b"GET / HTTP/1.1\r\nHost: h\r\n"), None);
        assert_eq!(head_len(b""), None);
    }
}
