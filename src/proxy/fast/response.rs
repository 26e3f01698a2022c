//! The upstream's response on the fast path: its head read and checked, the caller's head
//! written as the slow path writes it, and its body framing decoded step by step.
//!
//! The upstream must frame its response unambiguously (RFC 9112 §6.3): a body-less status,
//! one `Transfer-Encoding: chunked`, consistent `Content-Length`s, or neither (the body ends
//! when the upstream closes, and the caller's connection closes after it). Anything else
//! (both headers, another coding, differing lengths, a folded line, a `101`) is refused as a
//! broken upstream (502): the request has been sent, so there is no slow path to fall back to.
//! A chunked body is re-chunked for the caller with its trailers dropped, as the slow path
//! does.

use super::lines::Lines;
use crate::proxy::headers::REQUEST_ID;
use bytes::{Buf, Bytes, BytesMut};
use std::mem::MaybeUninit;

/// Longest upstream response head accepted (pingora's bound for requests is 1 MiB; Mollie's
/// heads are under 1 KiB).
pub const MAX_HEAD: usize = 64 * 1024;

/// Header lines of an upstream response head at most (more: 502).
const MAX_RESPONSE_LINES: usize = 128;

/// Longest chunk-size line, and most trailer bytes, accepted.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

/// How the response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (`204`, `304`).
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes.
    UntilClose,
}

/// A final response head from the upstream.
pub struct Head {
    pub status: u16,
    /// Its length in the upstream buffer.
    pub len: usize,
    pub framing: Framing,
    /// The upstream allows another request on the connection.
    pub reusable: bool,
    /// The caller's head says `Connection: keep-alive`.
    pub keepalive: bool,
}

/// What the upstream sent: a final head, an informational one to skip (`len`), or not enough.
pub enum Parsed {
    Final(Head),
    Informational(usize),
    Partial,
}

fn malformed(why: &'static str) -> &'static str {
    why
}

/// What the caller's head carries besides the upstream's lines.
pub struct ForCaller<'a> {
    pub request_id: &'a [u8],
    pub date: &'a [u8],
    /// The caller's connection carries on (unless the body is framed by the close).
    pub keepalive: bool,
}

/// Reads the response head at the start of `buf`; for a final head, the caller's head is
/// appended to `out` ([`caller_head`]).
pub fn parse_head(
    buf: &[u8],
    caller: &ForCaller<'_>,
    out: &mut Vec<u8>,
) -> Result<Parsed, &'static str> {
    let mut slots = [const { MaybeUninit::uninit() }; MAX_RESPONSE_LINES];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
    let len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(malformed("the response head is too large"))
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(_) => return Err(malformed("the response head is malformed")),
    };
    let status = resp.code.unwrap_or(0);
    if status == 101 {
        return Err(malformed("the upstream switched protocols unasked"));
    }
    if (100..200).contains(&status) {
        return Ok(Parsed::Informational(len));
    }
    let framing = framing(status, resp.headers)?;
    let close = resp.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("connection")
            && h.value
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
    });
    let keepalive = caller.keepalive && framing != Framing::UntilClose;
    caller_head(&resp, caller, keepalive, out);
    Ok(Parsed::Final(Head {
        status,
        len,
        framing,
        reusable: resp.version == Some(1) && !close && framing != Framing::UntilClose,
        keepalive,
    }))
}

fn framing(status: u16, headers: &[httparse::Header<'_>]) -> Result<Framing, &'static str> {
    if status == 204 || status == 304 {
        return Ok(Framing::Empty);
    }
    let (mut chunked, mut length) = (None, None::<u64>);
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked.is_some() || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(malformed("a Transfer-Encoding other than `chunked` alone"));
            }
            chunked = Some(());
        } else if h.name.eq_ignore_ascii_case("content-length") {
            for part in h.value.split(|b| *b == b',') {
                let digits = part.trim_ascii();
                let n = (!digits.is_empty() && digits.len() <= 18)
                    .then(|| std::str::from_utf8(digits).ok()?.parse::<u64>().ok())
                    .flatten()
                    .filter(|_| digits.iter().all(u8::is_ascii_digit))
                    .ok_or(malformed("an invalid Content-Length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(malformed("differing Content-Lengths"));
                }
                length = Some(n);
            }
        }
    }
    match (chunked, length) {
        (Some(()), Some(_)) => Err(malformed("both Content-Length and Transfer-Encoding")),
        (Some(()), None) => Ok(Framing::Chunked),
        (None, Some(n)) => Ok(Framing::Length(n)),
        (None, None) => Ok(Framing::UntilClose),
    }
}

/// Never forwarded to the caller, besides those `Connection` names (as `headers::HOP_BY_HOP`).
const HOP_BY_HOP: [&[u8]; 5] = [
    b"keep-alive",
    b"proxy-connection",
    b"http2-settings",
    b"te",
    b"trailer",
];

/// The caller's response head for the upstream's `resp`, appended to `out`: the edits of
/// `headers::strip_hop_by_hop`, the request id unless the upstream sent one, then `Date` and
/// `Connection` as pingora's session sets them.
fn caller_head(
    resp: &httparse::Response<'_, '_>,
    caller: &ForCaller<'_>,
    keepalive: bool,
    out: &mut Vec<u8>,
) {
    let mut lines = Lines::with_capacity(resp.headers.len() + 3);
    for h in resp.headers.iter() {
        lines.append(h.name.as_bytes(), h.value);
    }
    if lines.contains(b"connection") {
        let named: Vec<&[u8]> = resp
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .flat_map(|h| h.value.split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|t| {
                !t.eq_ignore_ascii_case(b"close")
                    && !t.eq_ignore_ascii_case(b"keep-alive")
                    && http::HeaderName::from_bytes(t).is_ok_and(|n| {
                        n != http::header::CONTENT_LENGTH
                            && n != http::header::TRANSFER_ENCODING
                            && n != http::header::HOST
                    })
            })
            .collect();
        for name in named {
            lines.remove(name);
        }
        lines.remove(b"connection");
    }
    for name in HOP_BY_HOP {
        lines.remove(name);
    }
    let proxy: Vec<&[u8]> = lines
        .iter()
        .map(|l| l.0)
        .filter(|n| n.len() >= 6 && n[..6].eq_ignore_ascii_case(b"proxy-"))
        .collect();
    for name in dedup_names(proxy) {
        lines.remove(name);
    }
    lines.remove(b"upgrade");
    if !lines.contains(REQUEST_ID.as_str().as_bytes()) {
        lines.insert(b"x-request-id", caller.request_id);
    }
    lines.insert(b"Date", caller.date);
    lines.insert(
        b"Connection",
        if keepalive { b"keep-alive" } else { b"close" },
    );
    out.extend_from_slice(b"HTTP/1.1 ");
    let mut code = itoa::Buffer::new();
    out.extend_from_slice(code.format(resp.code.unwrap_or(502)).as_bytes());
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    lines.write_to(out);
    out.extend_from_slice(b"\r\n");
}

/// A response head in HTTP/1.1 wire form (status line, lines, empty line), as pingora's
/// session writes it.
pub fn write_head(head: &pingora::http::ResponseHeader, out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(head.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.get_reason_phrase().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    head.header_to_h1_wire(out);
    out.extend_from_slice(b"\r\n");
}

/// Names in first-seen order, each once (case-insensitively): the keys of a `HeaderMap`.
fn dedup_names(names: Vec<&[u8]>) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = Vec::with_capacity(names.len());
    for n in names {
        if !out.iter().any(|o| o.eq_ignore_ascii_case(n)) {
            out.push(n);
        }
    }
    out
}

/// One step of decoding a response body from the bytes read so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Data(Bytes),
    /// More bytes are needed from the upstream.
    More,
    /// The body is complete.
    Done,
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers(usize),
}

/// The body decoder.
pub struct Body {
    framing: Framing,
    /// Bytes left of a `Content-Length` body.
    left: u64,
    chunk: Chunk,
    /// The upstream closed (only the end of an [`Framing::UntilClose`] body).
    closed: bool,
    /// Re-chunked for the caller.
    chunked: bool,
}

impl Body {
    pub fn new(framing: Framing) -> Body {
        Body {
            framing,
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            chunk: Chunk::Size,
            closed: false,
            chunked: framing == Framing::Chunked,
        }
    }

    /// The upstream closed its side: the end of an until-close body, else an error.
    pub fn eof(&mut self) -> Result<(), &'static str> {
        match self.framing {
            Framing::UntilClose => {
                self.closed = true;
                Ok(())
            }
            _ => Err("the upstream closed the connection mid-body"),
        }
    }

    /// The next piece of the body out of `buf` (consumed as it is decoded).
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, &'static str> {
        match self.framing {
            Framing::Empty => Ok(Step::Done),
            Framing::Length(_) => {
                if self.left == 0 {
                    return Ok(Step::Done);
                }
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let take = buf
                    .len()
                    .min(usize::try_from(self.left).unwrap_or(usize::MAX));
                self.left -= take as u64;
                Ok(Step::Data(buf.split_to(take).freeze()))
            }
            Framing::UntilClose => {
                if !buf.is_empty() {
                    Ok(Step::Data(buf.split().freeze()))
                } else if self.closed {
                    Ok(Step::Done)
                } else {
                    Ok(Step::More)
                }
            }
            Framing::Chunked => self.chunked(buf),
        }
    }

    fn chunked(&mut self, buf: &mut BytesMut) -> Result<Step, &'static str> {
        loop {
            match self.chunk {
                Chunk::Size => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((n, size))) => {
                        buf.advance(n);
                        self.chunk = if size == 0 {
                            Chunk::Trailers(0)
                        } else {
                            Chunk::Data(size)
                        };
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                        return Err("a chunk-size line is too long")
                    }
                    Ok(httparse::Status::Partial) => return Ok(Step::More),
                    Err(_) => return Err("an invalid chunk size"),
                },
                Chunk::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let take = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let left = left - take as u64;
                    self.chunk = if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    };
                    return Ok(Step::Data(buf.split_to(take).freeze()));
                }
                Chunk::DataEnd => match buf.get(..2) {
                    None if buf.first().is_some_and(|b| *b != b'\r') => {
                        return Err("a chunk not ended by CRLF")
                    }
                    None => return Ok(Step::More),
                    Some(b"\r\n") => {
                        buf.advance(2);
                        self.chunk = Chunk::Size;
                    }
                    Some(_) => return Err("a chunk not ended by CRLF"),
                },
                Chunk::Trailers(seen) => {
                    let Some(lf) = memchr::memchr(b'\n', buf) else {
                        if seen + buf.len() > MAX_TRAILERS {
                            return Err("the trailers are too large");
                        }
                        return Ok(Step::More);
                    };
                    if lf == 0 || buf[lf - 1] != b'\r' {
                        return Err("a trailer line not ended by CRLF");
                    }
                    let line = lf + 1;
                    buf.advance(line);
                    if line == 2 {
                        self.framing = Framing::Empty;
                        return Ok(Step::Done);
                    }
                    self.chunk = Chunk::Trailers(seen + line);
                }
            }
        }
    }

    /// The caller's framing of one piece of body data, appended to `out`.
    pub fn encode(&self, data: &[u8], out: &mut Vec<u8>) {
        if self.chunked {
            out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(data);
        }
    }

    /// The caller's end of the body (the last chunk), appended to `out`.
    pub fn finish(&self, out: &mut Vec<u8>) {
        if self.chunked {
            out.extend_from_slice(b"0\r\n\r\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(framing: Framing, input: &[&[u8]]) -> Result<Vec<u8>, &'static str> {
        let mut body = Body::new(framing);
        let mut buf = BytesMut::new();
        let mut parts = input.iter();
        let mut data = Vec::new();
        loop {
            match body.step(&mut buf)? {
                Step::Data(d) => data.extend_from_slice(&d),
                Step::Done => return Ok(data),
                Step::More => match parts.next() {
                    Some(p) => buf.extend_from_slice(p),
                    None => body.eof()?,
                },
            }
        }
    }

    #[test]
    fn chunked_bodies_split_anywhere_decode_whole() {
        let wire: &[u8] = b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-T: 1\r\n\r\n";
        for cut in 0..wire.len() {
            let (a, b) = wire.split_at(cut);
            assert_eq!(decode(Framing::Chunked, &[a, b]).unwrap(), b"hello world");
        }
        assert!(decode(Framing::Chunked, &[b"5\r\nhelloX\r\n0\r\n\r\n"]).is_err());
        assert!(decode(Framing::Chunked, &[b"zz\r\n"]).is_err());
        assert!(decode(Framing::Chunked, &[b"5\r\nhel"]).is_err());
    }

    #[test]
    fn lengths_and_close_delimited_bodies() {
        assert_eq!(
            decode(Framing::Length(5), &[b"he", b"llo"]).unwrap(),
            b"hello"
        );
        assert!(decode(Framing::Length(5), &[b"he"]).is_err());
        assert_eq!(decode(Framing::UntilClose, &[b"a", b"b"]).unwrap(), b"ab");
        assert_eq!(decode(Framing::Empty, &[b"x"]).unwrap(), b"");
    }

    #[test]
    fn framing_is_unambiguous_or_refused() {
        let head = |h: &str| {
            let caller = ForCaller {
                request_id: b"r",
                date: b"d",
                keepalive: true,
            };
            parse_head(
                format!("HTTP/1.1 200 OK\r\n{h}\r\n").as_bytes(),
                &caller,
                &mut Vec::new(),
            )
        };
        let framing = |h: &str| match head(h) {
            Ok(Parsed::Final(f)) => Ok(f.framing),
            Ok(_) => panic!("not final"),
            Err(e) => Err(e),
        };
        assert_eq!(framing("Content-Length: 5\r\n"), Ok(Framing::Length(5)));
        assert_eq!(
            framing("Content-Length: 5\r\nContent-Length: 5, 5\r\n"),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            framing("Transfer-Encoding: chunked\r\n"),
            Ok(Framing::Chunked)
        );
        assert_eq!(framing(""), Ok(Framing::UntilClose));
        for bad in [
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: gzip, chunked\r\n",
            "Content-Length: 5\r\nContent-Length: 6\r\n",
            "Content-Length: -1\r\n",
            "X: a\r\n b\r\n",
        ] {
            assert!(framing(bad).is_err(), "{bad}");
        }
        let caller = ForCaller {
            request_id: b"r",
            date: b"d",
            keepalive: true,
        };
        let hints = b"HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1 200";
        assert!(matches!(
            parse_head(hints, &caller, &mut Vec::new()),
            Ok(Parsed::Informational(37))
        ));
        let switching = b"HTTP/1.1 101 Switching Protocols\r\n\r\n";
        assert!(parse_head(switching, &caller, &mut Vec::new()).is_err());
    }

    /// The caller's head as the slow path writes it: pingora's parse of the upstream head,
    /// `strip_hop_by_hop`, the request id, then `Date` and `Connection`.
    fn slow_caller_head(upstream: &[u8], keepalive: bool) -> String {
        use pingora::http::ResponseHeader;
        let mut parsed = [httparse::EMPTY_HEADER; MAX_RESPONSE_LINES];
        let mut resp = httparse::Response::new(&mut parsed);
        resp.parse(upstream).unwrap();
        let mut head = ResponseHeader::build(resp.code.unwrap(), None).unwrap();
        for h in resp.headers.iter() {
            head.append_header(h.name.to_string(), h.value).unwrap();
        }
        crate::proxy::headers::strip_hop_by_hop(&mut head);
        if !head.headers.contains_key(REQUEST_ID) {
            head.insert_header(REQUEST_ID, "rid").unwrap();
        }
        head.insert_header(http::header::DATE, "D").unwrap();
        let connection = if keepalive { "keep-alive" } else { "close" };
        head.insert_header(http::header::CONNECTION, connection)
            .unwrap();
        let mut out = format!(
            "HTTP/1.1 {} {}\r\n",
            resp.code.unwrap(),
            resp.reason.unwrap()
        );
        let mut lines = Vec::new();
        head.header_to_h1_wire(&mut lines);
        out.push_str(&String::from_utf8(lines).unwrap());
        out + "\r\n"
    }

    #[test]
    fn the_caller_head_is_the_slow_paths() {
        for (upstream, keepalive) in [
            (&b"HTTP/1.1 200 OK\r\nConnection: x-a, close\r\nX-A: 1\r\nContent-Type: j\r\nKeep-Alive: 5\r\nProxy-Foo: p\r\nContent-Length: 2\r\n\r\n"[..], true),
            (b"HTTP/1.1 404 Not Here\r\nDate: old\r\nX-Request-Id: up\r\nTransfer-Encoding: chunked\r\nproxy-a: 1\r\nUpgrade: x\r\nPROXY-A: 2\r\nproxy-b: 3\r\nTE: x\r\n\r\n", false),
            (b"HTTP/1.1 201 Created\r\nSet-Cookie: a\r\nVary: x\r\nset-cookie: b\r\nConnection: keep-alive, Content-Length, vary\r\nContent-Length: 0\r\n\r\n", true),
        ] {
            let mut out = Vec::new();
            let caller = ForCaller {
                request_id: b"rid",
                date: b"D",
                keepalive,
            };
            assert!(matches!(
                parse_head(upstream, &caller, &mut out),
                Ok(Parsed::Final(_))
            ));
            assert_eq!(String::from_utf8(out).unwrap(), slow_caller_head(upstream, keepalive));
        }
    }
}
