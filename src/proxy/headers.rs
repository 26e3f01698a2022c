//! The header work of a proxied request, as plain functions (no I/O), so that
//! `benches/hot_path.rs` measures exactly what a request does.
//!
//! Upstream requests: the merchant header goes, the merchant's `Authorization` and the
//! upstream's `Host` come, hop-by-hop headers (RFC 9110 §7.6.1), every `Proxy-*` header and
//! `Expect` are dropped (the gateway answers `100 Continue` itself), and the framing is made
//! explicit for HTTP/1.1 (one `Content-Length`, or `Transfer-Encoding: chunked`).
//! Responses: hop-by-hop headers are dropped; the caller's framing is pingora's business.
//! Also here: which request targets are forwarded at all ([`check_target`]) and the request
//! id ([`request_id`]).

use crate::error::GatewayError;
use http::header::{
    AUTHORIZATION, CONNECTION, CONTENT_LENGTH, EXPECT, HOST, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderName, HeaderValue, Method, Uri, Version};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;

/// The request id header: taken from the caller when sane, forwarded, echoed, logged.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest caller request id kept (longer ones are replaced by a generated one).
pub const MAX_REQUEST_ID: usize = 128;

/// Never forwarded, in either direction, besides those a `Connection` header names.
const HOP_BY_HOP: [&str; 5] = [
    "keep-alive",
    "proxy-connection",
    "http2-settings",
    "te",
    "trailer",
];

/// The headers named by `Connection` that may be removed (never the framing headers, which
/// pingora manages itself).
fn connection_named(headers: &http::HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(CONNECTION)
        .iter()
        // Bytes, not `to_str`: a value with one non-ASCII byte still names its other headers.
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive"))
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        .filter(|n| *n != CONTENT_LENGTH && *n != TRANSFER_ENCODING && *n != HOST)
        .collect()
}

/// A request or response head, for the hop-by-hop removal both directions share.
trait Head {
    fn headers(&self) -> &http::HeaderMap;
    fn remove(&mut self, name: &str);
}

impl Head for RequestHeader {
    fn headers(&self) -> &http::HeaderMap {
        &self.headers
    }
    fn remove(&mut self, name: &str) {
        self.remove_header(name);
    }
}

impl Head for ResponseHeader {
    fn headers(&self) -> &http::HeaderMap {
        &self.headers
    }
    fn remove(&mut self, name: &str) {
        self.remove_header(name);
    }
}

/// Drops `Connection`, the headers it names and the other hop-by-hop headers.
fn drop_hop_by_hop(head: &mut impl Head) {
    if head.headers().contains_key(CONNECTION) {
        for name in connection_named(head.headers()) {
            head.remove(name.as_str());
        }
        head.remove(CONNECTION.as_str());
    }
    for name in HOP_BY_HOP {
        if head.headers().contains_key(name) {
            head.remove(name);
        }
    }
    for name in proxy_named(head.headers()) {
        head.remove(name.as_str());
    }
}

/// Every `Proxy-*` header: meant for a proxy on the caller's (or Mollie's) side, its
/// credentials included, never forwarded (`Proxy-Authorization`, `Proxy-Authenticate`, …).
/// Allocates nothing when there is none.
fn proxy_named(headers: &http::HeaderMap) -> Vec<HeaderName> {
    headers
        .keys()
        .filter(|n| n.as_str().starts_with("proxy-"))
        .cloned()
        .collect()
}

/// The rewrite every upstream request gets, on every attempt (see the module text).
/// `has_body`: the caller's request has a body (decides the upstream framing).
pub fn rewrite_upstream_headers(
    req: &mut RequestHeader,
    merchant_header: &HeaderName,
    bearer: &HeaderValue,
    host: &HeaderValue,
    has_body: bool,
) -> Result<()> {
    drop_hop_by_hop(req);
    for name in [&UPGRADE, &EXPECT] {
        if req.headers.contains_key(name) {
            req.remove_header(name);
        }
    }
    req.remove_header(merchant_header);
    req.insert_header(AUTHORIZATION, bearer.clone())?;
    req.insert_header(HOST, host.clone())?;
    req.set_version(Version::HTTP_11);
    if !req.raw_path().starts_with(b"/") || req.uri.authority().is_some() {
        // Absolute-form (pingora keeps it verbatim in `raw_path()`, with only its path and
        // query in `uri`), or an HTTP/2 request: sent as origin-form, its authority ignored.
        // `check_target` has refused every other form before.
        let origin_form = req
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .filter(|pq| pq.starts_with('/'))
            .unwrap_or("/");
        let uri: Uri = origin_form
            .parse()
            .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "bad request target"))?;
        req.set_uri(uri);
    }
    // The caller's chunking is undone by pingora; say how the body is framed upstream.
    if req.headers.contains_key(TRANSFER_ENCODING) {
        // Chunked wins over any Content-Length (RFC 9112 §6.3): re-framed as chunked below.
        req.remove_header(&TRANSFER_ENCODING);
        req.remove_header(&CONTENT_LENGTH);
    } else {
        collapse_content_length(req)?;
    }
    if has_body && !req.headers.contains_key(CONTENT_LENGTH) {
        req.insert_header(TRANSFER_ENCODING, "chunked")?;
    }
    Ok(())
}

/// Drops the hop-by-hop headers of an upstream response (and those its `Connection` names),
/// and every `Proxy-*` header.
pub fn strip_hop_by_hop(resp: &mut ResponseHeader) {
    drop_hop_by_hop(resp);
    // The gateway never asks for an upgrade (it drops the caller's `Upgrade`), so no response
    // it forwards switches protocols.
    if resp.headers.contains_key(UPGRADE) {
        resp.remove_header(&UPGRADE);
    }
}

/// Whether the request target may go upstream (RFC 9112 §3.2): origin-form as it is, and
/// absolute-form, which [`rewrite_upstream_headers`] turns into origin-form. `CONNECT`,
/// `TRACE` and authority-form get 405, asterisk-form (`OPTIONS *`) 400. Checked on the bytes
/// that would be sent (`raw_path()`), not on `uri.authority()`, which every HTTP/2 request has.
pub fn check_target(req: &RequestHeader) -> Result<(), GatewayError> {
    if req.method == Method::CONNECT || req.method == Method::TRACE {
        return Err(GatewayError::MethodNotAllowed(req.method.to_string()));
    }
    let raw = req.raw_path();
    if raw.starts_with(b"/") || is_absolute_form(raw) {
        Ok(())
    } else if raw == b"*" {
        Err(GatewayError::BadRequest(
            "the asterisk-form target `*` is not forwarded".into(),
        ))
    } else {
        Err(GatewayError::MethodNotAllowed(
            "an authority-form request target".into(),
        ))
    }
}

/// The request's framing as the gateway accepts it (RFC 9112 §6), beyond what pingora checks
/// (differing `Content-Length`s, a final coding other than `chunked`, `Transfer-Encoding` in
/// HTTP/1.0): `Transfer-Encoding` only as the one coding `chunked` (`gzip, chunked` or
/// `chunked, chunked` would reach the upstream with a coding removed), never together with
/// `Content-Length`, and no line of the head ended by a bare LF (a proxy in front that does
/// not split there would read other headers than the gateway). `raw_head`: the HTTP/1 head
/// as received (pingora drops a `Content-Length` it overrides by `Transfer-Encoding`).
pub fn check_framing(req: &RequestHeader, raw_head: Option<&[u8]>) -> Result<(), GatewayError> {
    let mut codings = req
        .headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','));
    if let Some(first) = codings.next() {
        if !first.trim_ascii().eq_ignore_ascii_case(b"chunked") || codings.next().is_some() {
            return Err(GatewayError::BadRequest(
                "a Transfer-Encoding other than `chunked` alone".into(),
            ));
        }
    }
    let Some(raw) = raw_head else {
        return Ok(());
    };
    if memchr::memchr_iter(b'\n', raw).any(|i| i == 0 || raw[i - 1] != b'\r') {
        return Err(GatewayError::BadRequest(
            "a line of the request head ends in a bare LF".into(),
        ));
    }
    let named = |name: &[u8]| {
        raw.split(|b| *b == b'\n').skip(1).any(|line| {
            line.len() > name.len()
                && line[name.len()] == b':'
                && line[..name.len()].eq_ignore_ascii_case(name)
        })
    };
    if named(b"content-length") && named(b"transfer-encoding") {
        return Err(GatewayError::BadRequest(
            "both Content-Length and Transfer-Encoding".into(),
        ));
    }
    Ok(())
}

/// `scheme://…` with an RFC 3986 scheme.
fn is_absolute_form(raw: &[u8]) -> bool {
    let Some(end) = memchr::memmem::find(raw, b"://") else {
        return false;
    };
    let scheme = &raw[..end];
    scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
}

/// The request's id: the caller's `X-Request-Id` when it is one sane token (1 to 128 visible
/// ASCII bytes), otherwise a new random one (32 hex digits).
pub fn request_id(req: &RequestHeader) -> HeaderValue {
    request_id_of(
        req.headers
            .get_all(REQUEST_ID)
            .iter()
            .map(HeaderValue::as_bytes),
    )
}

/// [`request_id`] from the values of `X-Request-Id`.
pub fn request_id_of<'a>(mut values: impl Iterator<Item = &'a [u8]>) -> HeaderValue {
    match (values.next(), values.next()) {
        (Some(id), None) if is_sane_id(id) => {
            HeaderValue::from_bytes(id).expect("visible ASCII is a valid header value")
        }
        _ => {
            let id = format!("{:032x}", fastrand::u128(..));
            HeaderValue::from_str(&id).expect("hex digits are a valid header value")
        }
    }
}

fn is_sane_id(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID).contains(&id.len()) && id.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// The Ruby SDK's `User-Agent` always carries ` Ruby/<version>`.
pub fn is_ruby_sdk(req: &RequestHeader) -> bool {
    req.headers
        .get(http::header::USER_AGENT)
        .is_some_and(|ua| memchr::memmem::find(ua.as_bytes(), b" Ruby/").is_some())
}

/// The request's `Content-Length` as pingora frames its body by: every value, in repeated
/// headers and comma lists (`5, 5`), the same digits (pingora refuses requests whose values
/// differ or are not digits before they get here). `None` without one.
pub fn content_length(req: &RequestHeader) -> Option<u64> {
    let mut length = None;
    for value in req.headers.get_all(CONTENT_LENGTH) {
        for part in value.as_bytes().split(|b| *b == b',') {
            let digits = part.trim_ascii();
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let n = std::str::from_utf8(digits).ok()?.parse().ok()?;
            if length.is_some_and(|l| l != n) {
                return None;
            }
            length = Some(n);
        }
    }
    length
}

/// A `Content-Length` the caller repeated (`5, 5`, or two identical lines, which pingora
/// accepts), sent upstream as the one value it framed the body by: servers such as nginx
/// refuse the repetition.
fn collapse_content_length(req: &mut RequestHeader) -> Result<()> {
    let mut values = req.headers.get_all(CONTENT_LENGTH).iter();
    let repeated = match (values.next(), values.next()) {
        (Some(one), None) => one.as_bytes().contains(&b','),
        (Some(_), Some(_)) => true,
        _ => false,
    };
    if repeated {
        match content_length(req) {
            Some(n) => req.insert_header(CONTENT_LENGTH, n)?,
            None => {
                return Err(Error::explain(
                    ErrorType::InvalidHTTPHeader,
                    "an ambiguous Content-Length",
                ))
            }
        }
    }
    Ok(())
}

/// The caller asked for `100 Continue` before sending its body.
pub fn expects_continue(req: &RequestHeader) -> bool {
    req.headers
        .get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(raw: &[(&str, &str)]) -> RequestHeader {
        let mut req =
            RequestHeader::build("POST", b"http://evil.example/v2/payments?a=1", None).unwrap();
        for (n, v) in raw {
            req.append_header(n.to_string(), *v).unwrap();
        }
        req
    }

    #[test]
    fn upstream_request_loses_hop_by_hop_merchant_and_caller_key() {
        let mut req = header(&[
            ("x-merchant-id", "m1"),
            ("authorization", "Bearer live_dummy"),
            ("connection", "keep-alive, X-Hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("expect", "100-continue"),
            ("transfer-encoding", "chunked"),
            ("content-length", "99"),
            ("x-end", "kept"),
        ]);
        let name = HeaderName::from_static("x-merchant-id");
        let bearer = HeaderValue::from_static("Bearer access_1");
        let host = HeaderValue::from_static("api.mollie.com");
        rewrite_upstream_headers(&mut req, &name, &bearer, &host, true).unwrap();
        let names: Vec<&str> = req.headers.keys().map(|n| n.as_str()).collect();
        for gone in [
            "x-merchant-id",
            "connection",
            "x-hop",
            "keep-alive",
            "te",
            "upgrade",
            "expect",
        ] {
            assert!(!names.contains(&gone), "{gone} in {names:?}");
        }
        assert_eq!(req.headers["authorization"], "Bearer access_1");
        assert_eq!(req.headers["host"], "api.mollie.com");
        assert_eq!(req.headers["x-end"], "kept");
        assert_eq!(req.headers["transfer-encoding"], "chunked");
        assert!(!req.headers.contains_key(CONTENT_LENGTH));
        assert_eq!(req.uri.to_string(), "/v2/payments?a=1");
    }

    #[test]
    fn a_bodyless_request_gets_no_framing_and_content_length_wins() {
        let name = HeaderName::from_static("x-merchant-id");
        let bearer = HeaderValue::from_static("Bearer a");
        let host = HeaderValue::from_static("h");
        let mut get = header(&[]);
        rewrite_upstream_headers(&mut get, &name, &bearer, &host, false).unwrap();
        assert!(!get.headers.contains_key(TRANSFER_ENCODING));
        let mut post = header(&[("content-length", "2")]);
        rewrite_upstream_headers(&mut post, &name, &bearer, &host, true).unwrap();
        assert!(!post.headers.contains_key(TRANSFER_ENCODING));
        assert_eq!(post.headers["content-length"], "2");
    }

    #[test]
    fn a_repeated_content_length_is_read_as_pingora_frames_it_and_sent_once() {
        // Found by the upstream_head fuzz target: pingora accepts `5, 5` and identical repeated
        // lines; the gateway read no length (no size limit, no body defaults) and sent both.
        let name = HeaderName::from_static("x-merchant-id");
        let bearer = HeaderValue::from_static("Bearer a");
        let host = HeaderValue::from_static("h");
        for values in [&["5, 5"][..], &["5", "5"], &["5 ,5", "05"]] {
            let mut req = header(&[]);
            for v in values {
                req.append_header("content-length", *v).unwrap();
            }
            assert_eq!(content_length(&req), Some(5), "{values:?}");
            rewrite_upstream_headers(&mut req, &name, &bearer, &host, true).unwrap();
            let sent: Vec<_> = req.headers.get_all(CONTENT_LENGTH).iter().collect();
            assert_eq!(sent, ["5"], "{values:?}");
            assert!(!req.headers.contains_key(TRANSFER_ENCODING));
        }
        for bad in ["+5", "5, 6", "5,", "0x5", "-1", "18446744073709551616"] {
            let req = header(&[("content-length", bad)]);
            assert_eq!(content_length(&req), None, "{bad}");
        }
    }

    #[test]
    fn no_proxy_header_goes_upstream() {
        // Found by the upstream_head fuzz target: only three `Proxy-*` names were dropped.
        let mut req = header(&[
            ("proxy-authorization", "Basic eDp5"),
            ("Proxy-Conecotnin", "keep-alive"),
            ("proxy-authentication-info", "x"),
            ("proxyish", "kept"),
        ]);
        let name = HeaderName::from_static("x-merchant-id");
        let bearer = HeaderValue::from_static("Bearer a");
        let host = HeaderValue::from_static("h");
        rewrite_upstream_headers(&mut req, &name, &bearer, &host, false).unwrap();
        let names: Vec<&str> = req.headers.keys().map(|n| n.as_str()).collect();
        assert!(!names.iter().any(|n| n.starts_with("proxy-")), "{names:?}");
        assert_eq!(req.headers["proxyish"], "kept");
    }

    #[test]
    fn connection_names_count_in_a_value_with_a_non_ascii_byte() {
        // Found by the upstream_head fuzz target: such a value was skipped whole.
        let mut req = header(&[("x-hop", "1")]);
        let value = HeaderValue::from_bytes(b"close, \xff\xbd, X-Hop").unwrap();
        req.append_header("connection", value).unwrap();
        let name = HeaderName::from_static("x-merchant-id");
        let bearer = HeaderValue::from_static("Bearer a");
        let host = HeaderValue::from_static("h");
        rewrite_upstream_headers(&mut req, &name, &bearer, &host, false).unwrap();
        assert!(!req.headers.contains_key("x-hop"));
        assert!(!req.headers.contains_key(CONNECTION));
    }

    #[test]
    fn only_chunked_alone_and_never_with_content_length_or_bare_lf() {
        for ok in [&["chunked"][..], &["Chunked"], &[" chunked\t"]] {
            let req = header(
                &ok.iter()
                    .map(|v| ("transfer-encoding", *v))
                    .collect::<Vec<_>>(),
            );
            assert_eq!(check_framing(&req, None), Ok(()), "{ok:?}");
        }
        for bad in [
            &["gzip, chunked"][..],
            &["chunked, chunked"],
            &["chunked", "chunked"],
            &["chunked,"],
            &["identity"],
        ] {
            let req = header(
                &bad.iter()
                    .map(|v| ("transfer-encoding", *v))
                    .collect::<Vec<_>>(),
            );
            assert_eq!(
                check_framing(&req, None).unwrap_err().status(),
                400,
                "{bad:?}"
            );
        }
        let req = header(&[]);
        let raw = |head: &str| check_framing(&req, Some(head.as_bytes())).map_err(|e| e.status());
        assert_eq!(raw("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"), Ok(()));
        assert_eq!(
            raw("POST / HTTP/1.1\r\nX-Transfer-Encoding: a\r\ncontent-length: 5\r\n\r\n"),
            Ok(())
        );
        assert_eq!(
            raw("POST / HTTP/1.1\r\ncontent-length: 5\r\nTRANSFER-ENCODING: chunked\r\n\r\n"),
            Err(400)
        );
        assert_eq!(raw("POST / HTTP/1.1\nHost: h\r\n\r\n"), Err(400));
        assert_eq!(raw("POST / HTTP/1.1\r\nHost: h\n\r\n"), Err(400));
    }

    fn target(method: &str, raw: &[u8]) -> RequestHeader {
        RequestHeader::build(method, raw, None).unwrap()
    }

    #[test]
    fn absolute_form_is_sent_as_origin_form_with_its_query() {
        let name = HeaderName::from_static("x-merchant-id");
        let bearer = HeaderValue::from_static("Bearer a");
        let host = HeaderValue::from_static("api.mollie.com");
        for (raw, sent) in [
            (
                &b"http://evil.example/v2/methods?x=1"[..],
                &b"/v2/methods?x=1"[..],
            ),
            (b"https://evil.example:8443/v2/a/b", b"/v2/a/b"),
            (b"http://evil.example", b"/"),
            (b"/v2/payments?limit=5", b"/v2/payments?limit=5"),
        ] {
            let mut req = target("GET", raw);
            check_target(&req).unwrap();
            rewrite_upstream_headers(&mut req, &name, &bearer, &host, false).unwrap();
            // What pingora's client writes into the request line:
            assert_eq!(req.raw_path(), sent, "{}", String::from_utf8_lossy(raw));
            assert_eq!(req.headers["host"], "api.mollie.com");
        }
    }

    #[test]
    fn connect_trace_authority_and_asterisk_forms_are_refused() {
        for (method, raw, status) in [
            ("CONNECT", &b"evil.example:443"[..], 405),
            ("TRACE", b"/v2/methods", 405),
            ("GET", b"evil.example:443", 405),
            ("OPTIONS", b"*", 400),
        ] {
            let err = check_target(&target(method, raw)).unwrap_err();
            assert_eq!(err.status(), status, "{method} {raw:?}");
            assert_eq!(err.code(), "bad_request");
        }
    }

    #[test]
    fn a_sane_request_id_is_kept_and_any_other_replaced() {
        let with = |v: &[u8]| {
            let mut req = target("GET", b"/v2/methods");
            req.append_header("x-request-id", HeaderValue::from_bytes(v).unwrap())
                .unwrap();
            request_id(&req)
        };
        assert_eq!(with(b"abc-123"), "abc-123");
        let long = [b'a'; MAX_REQUEST_ID + 1];
        for bad in [&long[..], b"has space", b"tab\there", b"\x80\xff"] {
            let id = with(bad);
            assert_ne!(id.as_bytes(), bad);
            assert_eq!(id.len(), 32, "{id:?}");
        }
        let generated = request_id(&target("GET", b"/v2/methods"));
        assert!(generated.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_ne!(generated, request_id(&target("GET", b"/v2/methods")));
    }

    #[test]
    fn response_hop_by_hop_headers_are_dropped() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        for (n, v) in [
            ("connection", "X-Hop-Resp"),
            ("x-hop-resp", "s"),
            ("keep-alive", "timeout=9"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authenticate", "Basic"),
            ("upgrade", "foo/1"),
            ("content-length", "5"),
            ("x-request-id", "r"),
        ] {
            resp.append_header(n, v).unwrap();
        }
        strip_hop_by_hop(&mut resp);
        let names: Vec<&str> = resp.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["content-length", "x-request-id"]);
    }
}
