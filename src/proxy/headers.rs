//! The header work of a proxied request, as plain functions (no I/O), so that
//! `benches/hot_path.rs` measures exactly what a request does.
//!
//! Upstream requests: the merchant header goes, the merchant's `Authorization` and the
//! upstream's `Host` come, hop-by-hop headers (RFC 9110 §7.6.1) and `Expect` are dropped (the
//! gateway answers `100 Continue` itself), and the framing is made explicit for HTTP/1.1.
//! Responses: hop-by-hop headers are dropped; the caller's framing is pingora's business.

use http::header::{
    AUTHORIZATION, CONNECTION, CONTENT_LENGTH, EXPECT, HOST, PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderName, HeaderValue, StatusCode, Uri, Version};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;

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
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.eq_ignore_ascii_case("close") && !t.eq_ignore_ascii_case("keep-alive"))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .filter(|n| *n != CONTENT_LENGTH && *n != TRANSFER_ENCODING && *n != HOST)
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
    if req.headers.contains_key(CONNECTION) {
        for name in connection_named(&req.headers) {
            req.remove_header(&name);
        }
        req.remove_header(&CONNECTION);
    }
    for name in HOP_BY_HOP {
        if req.headers.contains_key(name) {
            req.remove_header(name);
        }
    }
    for name in [&PROXY_AUTHENTICATE, &PROXY_AUTHORIZATION, &UPGRADE, &EXPECT] {
        if req.headers.contains_key(name) {
            req.remove_header(name);
        }
    }
    req.remove_header(merchant_header);
    req.insert_header(AUTHORIZATION, bearer.clone())?;
    req.insert_header(HOST, host.clone())?;
    req.set_version(Version::HTTP_11);
    if req.uri.authority().is_some() || req.uri.scheme().is_some() {
        // Absolute-form target (or an HTTP/2 request): keep only path and query.
        let origin_form = req
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
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
    }
    if has_body && !req.headers.contains_key(CONTENT_LENGTH) {
        req.insert_header(TRANSFER_ENCODING, "chunked")?;
    }
    Ok(())
}

/// Drops the hop-by-hop headers of an upstream response (and those its `Connection` names).
pub fn strip_hop_by_hop(resp: &mut ResponseHeader) {
    if resp.headers.contains_key(CONNECTION) {
        for name in connection_named(&resp.headers) {
            resp.remove_header(&name);
        }
        resp.remove_header(&CONNECTION);
    }
    for name in HOP_BY_HOP {
        if resp.headers.contains_key(name) {
            resp.remove_header(name);
        }
    }
    if resp.status != StatusCode::SWITCHING_PROTOCOLS && resp.headers.contains_key(UPGRADE) {
        resp.remove_header(&UPGRADE);
    }
}

/// The Ruby SDK's `User-Agent` always carries ` Ruby/<version>`.
pub fn is_ruby_sdk(req: &RequestHeader) -> bool {
    req.headers
        .get(http::header::USER_AGENT)
        .is_some_and(|ua| memchr::memmem::find(ua.as_bytes(), b" Ruby/").is_some())
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
    fn response_hop_by_hop_headers_are_dropped() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        for (n, v) in [
            ("connection", "X-Hop-Resp"),
            ("x-hop-resp", "s"),
            ("keep-alive", "timeout=9"),
            ("proxy-connection", "keep-alive"),
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
