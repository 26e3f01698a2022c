//! The checks behind the fuzz targets (`fuzz/fuzz_targets/*.rs`), shared with the replay of
//! their corpora on stable (`tests/fuzz_corpus.rs` includes this file with `#[path]`).
//!
//! Each check takes the fuzzer's bytes, runs one piece of the gateway on them and panics when
//! an invariant does not hold: libFuzzer records the panic as a crash, `cargo test` as a
//! failure naming the corpus file.
//! Must not: use a crate the gateway's own tests lack (mollie_gateway, pingora, http, tokio,
//! serde_json, form_urlencoded), nor keep state between inputs.

use http::header::{AUTHORIZATION, CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, Version};
use mollie_gateway::proxy::fast::request::{self as fast, head_len, line_slots, Outbound};
use mollie_gateway::proxy::headers::{
    check_framing, check_target, content_length, request_id, request_id_of,
    rewrite_upstream_headers, REQUEST_ID,
};
use mollie_gateway::rewrite::{
    asks_for_live, with_body_defaults, with_query_testmode, LinkRewriter,
};
use mollie_gateway::types::{MerchantId, MerchantIdError, MAX_MERCHANT_ID_LEN};
use pingora::http::RequestHeader;
use pingora::protocols::http::v1::client::http_req_header_to_wire;
use pingora::protocols::http::v1::server::HttpSession;
use std::collections::HashMap;
use std::io::Cursor;

/// A target's check: panics when an invariant does not hold for this input.
pub type Check = fn(&[u8]);

/// Every target by name: the directory of its corpus under `fuzz/corpus/`, and its check.
pub const TARGETS: [(&str, Check); 9] = [
    ("merchant_header", merchant_header),
    ("upstream_head", upstream_head),
    ("fast_path", fast_path),
    ("link_rewriter", link_rewriter),
    ("body_defaults", body_defaults),
    ("config", config),
    ("token_response", token_response),
    ("oauth_state", oauth_state),
    ("store_file", store_file),
];

/// `MerchantId::parse_bytes` on any bytes: the error (or id) the rule of `types.rs` gives, and
/// an accepted id round-trips through `as_str`, `Display`, `parse` and serde unchanged.
pub fn merchant_header(data: &[u8]) {
    let expected = if data.is_empty() {
        Err(MerchantIdError::Empty)
    } else if data.len() > MAX_MERCHANT_ID_LEN {
        Err(MerchantIdError::TooLong)
    } else if !data.iter().all(|b| (0x21..=0x7e).contains(b)) {
        Err(MerchantIdError::NotPrintable)
    } else {
        Ok(())
    };
    match (MerchantId::parse_bytes(data), expected) {
        (Ok(id), Ok(())) => {
            assert_eq!(id.as_str().as_bytes(), data);
            assert_eq!(id.to_string(), id.as_str());
            assert_eq!(MerchantId::parse(id.as_str()).as_ref(), Ok(&id));
            let json = serde_json::to_string(&id).expect("an id serializes");
            let back: MerchantId = serde_json::from_str(&json).expect("an id deserializes");
            assert_eq!(back, id);
        }
        (Err(got), Err(want)) => assert_eq!(got, want, "{data:?}"),
        (got, want) => panic!("{data:?}: parsed as {got:?}, expected {want:?}"),
    }
    // The serde path (store files, admin API) agrees with the header path.
    let text = String::from_utf8_lossy(data);
    let from_json = serde_json::from_value::<MerchantId>(serde_json::Value::from(&*text));
    assert_eq!(
        from_json.is_ok(),
        MerchantId::parse(&text).is_ok(),
        "{text:?}"
    );
}

const MERCHANT_HEADER: HeaderName = HeaderName::from_static("x-merchant-id");
const CLIENT_KEY_HEADER: HeaderName = HeaderName::from_static("x-gateway-key");
const BEARER: &str = "Bearer access_fuzz";
const UPSTREAM_HOST: &str = "api.mollie.com";

/// Headers that never go upstream whatever the caller's `Connection` says (RFC 9110 §7.6.1),
/// besides every `proxy-*` header; `expect` because the gateway answers `100 Continue` itself.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "http2-settings",
    "expect",
];

thread_local! {
    /// One runtime per thread for pingora's (async) head parser, built once.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
}

/// The request head as the gateway's HTTP/1 listener gets it (pingora's own parser and
/// checks), and whether pingora frames a body after it; `None` when pingora refuses it.
fn read_head(data: &[u8]) -> Option<(RequestHeader, bool)> {
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let mut session = HttpSession::new(Box::new(Cursor::new(data.to_vec())));
            match session.read_request().await {
                Ok(Some(_)) => {}
                _ => return None,
            }
            let has_body = !session.is_body_empty();
            Some((session.req_header().clone(), has_body))
        })
    })
}

/// The length pingora frames a body by (`content_length_parse_all` in pingora-core, private
/// there): every `Content-Length` value, comma lists included, the same digits.
fn framed_length(headers: &HeaderMap) -> Option<u64> {
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for part in value.to_str().ok()?.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let n: u64 = part.parse().ok()?;
            match length {
                Some(l) if l != n => return None,
                _ => length = Some(n),
            }
        }
    }
    length
}

fn is_sane_id(id: &[u8]) -> bool {
    (1..=128).contains(&id.len()) && id.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// An arbitrary caller request (head, maybe a body) through pingora's parser and the head
/// rewrite the gateway does before sending it upstream (`proxy.rs`, `outbound`: the pure steps
/// of `proxy/headers.rs`, then the caller-key header removed and the request id set).
///
/// Invariants: the request id is one sane token (the caller's when it sent one); the gateway's
/// `content_length` is pingora's framing; CONNECT and TRACE never pass `check_target`; and
/// upstream: exactly one `Authorization` (ours) and one `Host` (ours); no merchant or
/// caller-key header; no hop-by-hop header, nor one the caller's `Connection` named; an
/// origin-form HTTP/1.1 target; never both `Content-Length` and `Transfer-Encoding`,
/// `Transfer-Encoding: chunked` exactly when there is a body and no length, one length equal to
/// the one pingora reads the body by; and the head pingora writes parses back as exactly itself.
pub fn upstream_head(data: &[u8]) {
    let Some((req, has_body)) = read_head(data) else {
        return;
    };
    let id = request_id(&req);
    assert!(is_sane_id(id.as_bytes()), "request id {id:?}");
    let mut ids = req.headers.get_all(REQUEST_ID).iter();
    if let (Some(theirs), None) = (ids.next(), ids.next()) {
        if is_sane_id(theirs.as_bytes()) {
            assert_eq!(&id, theirs, "the caller's sane request id is kept");
        }
    }

    let chunked = req.headers.contains_key(TRANSFER_ENCODING);
    let framed = if chunked {
        None
    } else {
        framed_length(&req.headers)
    };
    assert_eq!(
        content_length(&req),
        framed,
        "the gateway's Content-Length is not the one pingora frames the body by: {:?}",
        req.headers
            .get_all(CONTENT_LENGTH)
            .iter()
            .collect::<Vec<_>>()
    );
    assert_eq!(has_body, chunked || framed.is_some_and(|n| n > 0));

    let target = check_target(&req);
    if req.method == Method::CONNECT || req.method == Method::TRACE {
        assert!(target.is_err(), "{} passed check_target", req.method);
    }
    if target.is_err() {
        return;
    }
    let mut head = req.clone();
    let bearer = HeaderValue::from_static(BEARER);
    let host = HeaderValue::from_static(UPSTREAM_HOST);
    if rewrite_upstream_headers(&mut head, &MERCHANT_HEADER, &bearer, &host, has_body).is_err() {
        return; // answered 400 by the gateway
    }
    head.remove_header(&CLIENT_KEY_HEADER);
    head.insert_header(REQUEST_ID, id.clone())
        .expect("a request id header");
    check_upstream_head(&req, &head, has_body, framed);
}

/// The fast path against the slow path on the same bytes (`proxy/fast.rs`): every request
/// head the fast path takes (`fast::parse`) pingora's parser takes too, with the same body
/// length, and the slow path's checks pass it (`check_target`, `check_framing`); the upstream
/// head the fast path writes (`fast::upstream_head`) is byte for byte the one the slow path
/// writes (`rewrite_upstream_headers`, the caller-key header removed, `testmode` added to the
/// query, a rewritten body's length, the request id, pingora's serializer); the request id
/// is the same. Which of the defaults' edits apply is taken from the input's length. A head
/// the fast path does not take is the slow path's alone: nothing to compare.
pub fn fast_path(data: &[u8]) {
    let Some(len) = head_len(data) else {
        return;
    };
    let head = &data[..len];
    let mut lines = line_slots();
    let Some(simple) = fast::parse(head, &mut lines) else {
        return;
    };
    let Some((req, has_body)) = read_head(data) else {
        panic!("the fast path took a head pingora refuses");
    };
    check_target(&req).expect("the fast path took a target the slow path refuses");
    check_framing(&req, Some(head)).expect("the fast path took framing the slow path refuses");
    assert_eq!(simple.length, content_length(&req), "the body's length");
    assert_eq!(has_body, simple.length.is_some_and(|n| n > 0));

    let id = request_id(&req);
    let fast_id = request_id_of(simple.values(REQUEST_ID.as_str().as_bytes()));
    let mut theirs = req.headers.get_all(REQUEST_ID).iter();
    if let (Some(theirs), None) = (theirs.next(), theirs.next()) {
        if is_sane_id(theirs.as_bytes()) {
            assert_eq!((&id, &fast_id), (theirs, theirs), "the caller's request id");
        }
    }
    let testmode = !data.len().is_multiple_of(2);
    // The defaults rewrite only a body that has a length (`Defaults::plan_head`).
    let rewritten = data.len().is_multiple_of(3) && simple.length.is_some_and(|n| n > 0);

    let mut slow = req.clone();
    let bearer = HeaderValue::from_static(BEARER);
    let host = HeaderValue::from_static(UPSTREAM_HOST);
    rewrite_upstream_headers(&mut slow, &MERCHANT_HEADER, &bearer, &host, has_body)
        .expect("the slow path's rewrite of a head the fast path took");
    slow.remove_header(&CLIENT_KEY_HEADER);
    if testmode {
        if let Some(uri) = with_query_testmode(&slow.uri) {
            slow.set_uri(uri);
        }
    }
    if rewritten {
        slow.insert_header(CONTENT_LENGTH, 42).expect("a length");
    }
    slow.insert_header(REQUEST_ID, id.clone()).expect("an id");
    let slow = http_req_header_to_wire(&slow).expect("a head pingora can write");

    let target = testmode
        .then(|| Uri::try_from(simple.target).ok())
        .flatten()
        .and_then(|uri| with_query_testmode(&uri));
    let o = Outbound {
        merchant_header: b"x-merchant-id",
        client_key_header: b"x-gateway-key",
        bearer: BEARER.as_bytes(),
        host: UPSTREAM_HOST.as_bytes(),
        request_id: id.as_bytes(),
        target: target
            .as_ref()
            .map(|t| t.path_and_query().map_or("/", |p| p.as_str()).as_bytes()),
        length: rewritten.then_some(&b"42"[..]),
    };
    let mut fast = Vec::new();
    fast::upstream_head(&simple, &o, &mut fast);
    assert_eq!(
        String::from_utf8_lossy(&fast),
        String::from_utf8_lossy(&slow),
        "the upstream head: fast path (left) and slow path (right)"
    );
}

fn check_upstream_head(
    caller: &RequestHeader,
    head: &RequestHeader,
    has_body: bool,
    framed: Option<u64>,
) {
    let all = |name: &HeaderName| head.headers.get_all(name).iter().collect::<Vec<_>>();
    assert_eq!(all(&AUTHORIZATION), [BEARER], "Authorization upstream");
    assert_eq!(all(&HOST), [UPSTREAM_HOST], "Host upstream");
    assert!(!head.headers.contains_key(MERCHANT_HEADER));
    assert!(!head.headers.contains_key(CLIENT_KEY_HEADER));
    for name in head.headers.keys() {
        let n = name.as_str();
        assert!(
            !HOP_BY_HOP.contains(&n) && !n.starts_with("proxy-"),
            "hop-by-hop header {n} upstream"
        );
    }
    // Whatever the caller's Connection names goes too, but for the headers the gateway sets
    // itself (framing, Host, Authorization, the request id).
    let ours = [
        CONTENT_LENGTH,
        TRANSFER_ENCODING,
        HOST,
        AUTHORIZATION,
        REQUEST_ID,
    ];
    for value in caller.headers.get_all(CONNECTION) {
        for token in value.as_bytes().split(|b| *b == b',') {
            let Ok(name) = HeaderName::from_bytes(token.trim_ascii()) else {
                continue;
            };
            if !ours.contains(&name) {
                assert!(
                    !head.headers.contains_key(&name),
                    "{name} named by Connection {value:?} went upstream"
                );
            }
        }
    }

    let path = head.raw_path();
    assert!(
        path.starts_with(b"/"),
        "target {:?}",
        path.escape_ascii().to_string()
    );
    assert_eq!(head.version, Version::HTTP_11);

    let lengths = all(&CONTENT_LENGTH);
    let encodings = all(&TRANSFER_ENCODING);
    assert!(
        lengths.is_empty() || encodings.is_empty(),
        "Content-Length {lengths:?} and Transfer-Encoding {encodings:?}"
    );
    if encodings.is_empty() {
        assert!(!has_body || !lengths.is_empty(), "a body with no framing");
    } else {
        assert!(has_body, "Transfer-Encoding without a body");
        assert_eq!(encodings, ["chunked"]);
    }
    if !lengths.is_empty() {
        assert_eq!(lengths.len(), 1, "Content-Length {lengths:?}");
        let sent = lengths[0]
            .to_str()
            .ok()
            .filter(|v| v.bytes().all(|b| b.is_ascii_digit()));
        let sent = sent.and_then(|v| v.parse::<u64>().ok());
        assert_eq!(
            sent, framed,
            "Content-Length {lengths:?}, body framed as {framed:?}"
        );
        assert_eq!(has_body, framed.is_some_and(|n| n > 0));
    }

    // The bytes pingora's client writes upstream read back as the same request, and nothing else.
    let wire = http_req_header_to_wire(head).expect("pingora can write the upstream head");
    let Some((reparsed, _)) = read_head(&wire) else {
        panic!(
            "the upstream head does not parse: {:?}",
            wire.escape_ascii().to_string()
        );
    };
    assert_eq!(reparsed.method, head.method);
    assert_eq!(reparsed.raw_path(), head.raw_path());
    let pairs = |h: &RequestHeader| {
        let mut v: Vec<_> = h
            .headers
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        v.sort_by(|a, b| (a.0.as_str(), a.1.as_bytes()).cmp(&(b.0.as_str(), b.1.as_bytes())));
        v
    };
    assert_eq!(
        pairs(&reparsed),
        pairs(head),
        "the upstream head changes on the wire"
    );
}

/// The base URLs the link rewriter is tried with (picked by the input's first byte).
const LINK_BASES: [(&str, &str); 3] = [
    ("https://api.mollie.com", "http://gw.internal:8080"),
    ("https://api.mollie.com/", "https://gateway.example/mollie"),
    ("http://a", "http://a/b"),
];

/// `LinkRewriter` fed the whole body at once, one byte at a time, and in chunks of the lengths
/// the input chooses: the same output every time. Input: a control byte (bits 6-7: the base
/// URLs; bits 0-3: how many chunk lengths follow, one byte each), then the body.
pub fn link_rewriter(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let (from, to) = LINK_BASES[usize::from(control >> 6) % LINK_BASES.len()];
    let (lengths, body) = rest.split_at(usize::from(control & 0x0f).min(rest.len()));
    let run = |chunks: &mut dyn Iterator<Item = &[u8]>| {
        let mut rewriter = LinkRewriter::new(from, to);
        let mut out = Vec::new();
        for chunk in chunks {
            rewriter.feed(chunk, &mut out);
        }
        rewriter.finish(&mut out);
        out
    };
    let whole = run(&mut std::iter::once(body));
    let mut pos = 0;
    let mut chunks = Vec::new();
    for &n in lengths {
        let end = (pos + usize::from(n)).min(body.len());
        chunks.push(&body[pos..end]); // empty chunks included
        pos = end;
    }
    chunks.push(&body[pos..]);
    let chunked = run(&mut chunks.into_iter());
    assert_eq!(
        chunked.escape_ascii().to_string(),
        whole.escape_ascii().to_string(),
        "chunks {lengths:?}"
    );
    let bytewise = run(&mut body.chunks(1));
    assert_eq!(bytewise, whole, "one byte at a time");
    if !body.windows(6).any(|w| w == b"\"href\"") {
        assert_eq!(whole, body, "no \"href\", yet the body changed");
    }
}

/// The profile ids the body defaults are tried with (picked by the input's first byte).
const PROFILES: [Option<&str>; 3] = [None, Some("pfl_QkEhN94Ba"), Some("pfl_\"q\\\u{2028}é")];

/// `with_body_defaults` and `asks_for_live` on any body; with bit 7 of the first byte set,
/// `with_query_testmode` on the rest as a request target instead (see [`query_testmode`]).
/// Input: a control byte (bit 0: testmode; bits 1-2: the profile id), then the body.
///
/// A JSON object in: JSON out, every top-level key of the caller with its value unchanged and
/// the caller's bytes kept (only an insertion after the opening brace), `testmode`/`profileId`
/// added exactly when asked for and absent, and `asks_for_live` unchanged by the rewrite.
pub fn body_defaults(data: &[u8]) {
    let Some((&control, body)) = data.split_first() else {
        return;
    };
    if control & 0x80 != 0 {
        return query_testmode(body);
    }
    let testmode = control & 1 != 0;
    let profile = PROFILES[usize::from((control >> 1) & 3) % PROFILES.len()];
    let live = asks_for_live(None, Some(body));
    let out = with_body_defaults(body, testmode, profile);
    let Ok(serde_json::Value::Object(before)) = serde_json::from_slice(body) else {
        // Not a JSON object serde_json can hold (or beyond its number range): whatever came
        // out must still be valid JSON.
        if let Some(out) = &out {
            let valid = serde_json::from_slice::<serde::de::IgnoredAny>(out);
            assert!(valid.is_ok(), "invalid JSON out: {}", out.escape_ascii());
        }
        return;
    };
    let add_testmode = testmode && !before.contains_key("testmode");
    let add_profile = profile.is_some() && !before.contains_key("profileId");
    let Some(out) = out else {
        assert!(!add_testmode && !add_profile, "nothing added to {before:?}");
        return;
    };
    assert!(add_testmode || add_profile, "a body rewritten for nothing");
    let after: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&out)
        .unwrap_or_else(|e| panic!("invalid JSON out ({e}): {}", out.escape_ascii()));
    for (key, value) in &before {
        assert_eq!(after.get(key), Some(value), "the caller's {key:?} changed");
    }
    let added: Vec<&String> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    let expected = usize::from(add_testmode) + usize::from(add_profile);
    assert_eq!(added.len(), expected, "keys added: {added:?}");
    if add_testmode {
        assert_eq!(after["testmode"], serde_json::Value::Bool(true));
    }
    if let (true, Some(p)) = (add_profile, profile) {
        assert_eq!(after["profileId"], p);
    }
    let brace = body
        .iter()
        .position(|b| *b == b'{')
        .expect("an object has a brace");
    assert_eq!(out[..=brace], body[..=brace], "bytes before the brace");
    assert!(
        out.ends_with(&body[brace + 1..]),
        "the caller's bytes after the brace"
    );
    assert_eq!(
        asks_for_live(None, Some(&out)),
        live,
        "asks_for_live changed"
    );
}

/// `with_query_testmode` on a request target: `None` only when the query names `testmode`
/// already; otherwise the same path, the caller's query kept in front, and no longer asking
/// for live data.
pub fn query_testmode(data: &[u8]) {
    let Ok(uri) = Uri::try_from(data) else {
        return;
    };
    if !uri.path().starts_with('/') {
        return; // the gateway only has origin-form targets by then
    }
    let named = uri
        .query()
        .is_some_and(|q| form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "testmode"));
    match with_query_testmode(&uri) {
        None => assert!(named, "testmode not added to {uri}"),
        Some(new) => {
            assert!(!named, "testmode added twice to {uri}");
            assert_eq!(new.path(), uri.path());
            let query = new.query().unwrap_or_default();
            assert!(
                query.starts_with(uri.query().unwrap_or_default()),
                "{uri} → {new}"
            );
            assert!(
                !asks_for_live(new.query(), None),
                "{uri} → {new} asks for live data"
            );
        }
    }
}

/// `config::parse` on any text: an error or settings, never a panic; settings print masked.
/// Input: TOML, optionally a NUL byte and `SECTION__KEY=value` lines for the environment
/// (prefixed with `MOLLIE_GATEWAY__` here).
pub fn config(data: &[u8]) {
    let (toml, env) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let text = String::from_utf8_lossy(toml);
    let env: HashMap<String, String> = String::from_utf8_lossy(env)
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (format!("MOLLIE_GATEWAY__{k}"), v.to_string()))
        .collect();
    if let Ok(settings) = mollie_gateway::config::parse(&text, &env) {
        let _ = settings.to_masked_toml();
        let _ = settings.open_gateway_warning();
        let _ = settings.oauth_setup_hint();
    }
}

/// `oauth::parse_token_response` on any status and body, then what the token manager does with
/// a success (`tokens.rs`, `make_token`: the bearer header value, `token_times`, the expiry as
/// wall-clock time). Input: two bytes of status (mapped to 100-599), then the body.
///
/// Invariants: never a panic, here or in the token manager's arithmetic; a success only for a
/// 2xx, with a non-empty access token that fits in a header and a positive lifetime; a 5xx or
/// 429 is `Unavailable`; `InvalidGrant` never for a 2xx; no token of a 2xx body in an error.
pub fn token_response(data: &[u8]) {
    use mollie_gateway::oauth::{parse_token_response, OAuthError};
    use std::time::{Duration, SystemTime};
    use tokio::time::Instant;
    let Some((status, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let status = 100 + u16::from_be_bytes(*status) % 500;
    let success = (200..300).contains(&status);
    match parse_token_response(status, body) {
        Ok(set) => {
            assert!(success, "a token from a {status}");
            let access = set.access_token.expose();
            assert!(!access.is_empty());
            assert!(
                access.bytes().all(|b| (0x21..=0x7e).contains(&b)),
                "{access:?}"
            );
            assert!(HeaderValue::try_from(format!("Bearer {access}")).is_ok());
            assert!(set.refresh_token.as_ref().is_none_or(|r| !r.is_empty()));
            assert!(set.expires_in > Duration::ZERO);
            // What `TokenManager::make_token` computes from the answer.
            let now = Instant::now();
            assert!(
                now.checked_add(set.expires_in).is_some()
                    && SystemTime::now().checked_add(set.expires_in).is_some(),
                "expires_in {:?} overflows the token manager's clock arithmetic",
                set.expires_in
            );
            let window = Duration::from_secs(300);
            let times = mollie_gateway::tokens::token_times(now, set.expires_in, window, 0.5);
            assert!(times.usable_until > now);
        }
        Err(e) => {
            if status >= 500 || status == 429 {
                assert!(matches!(e, OAuthError::Unavailable(_)), "{status}: {e:?}");
            }
            if success {
                assert!(!matches!(e, OAuthError::InvalidGrant(_)), "{e:?}");
                if let Ok(serde_json::Value::Object(o)) = serde_json::from_slice(body) {
                    for key in ["access_token", "refresh_token"] {
                        assert_no_token_in_error(status, &o, key);
                    }
                }
            }
        }
    }
}

/// No token of a 2xx answer in the error it gives: the same answer with `key`'s value replaced
/// by a stand-in of the same shape (every ASCII letter or digit changed, nothing else) gives
/// the same error text. (A substring test gave false alarms: a refresh token `s_token` is in
/// the text "JSON without access_token".)
fn assert_no_token_in_error(
    status: u16,
    answer: &serde_json::Map<String, serde_json::Value>,
    key: &str,
) {
    use mollie_gateway::oauth::parse_token_response;
    let Some(token) = answer.get(key).and_then(|v| v.as_str()) else {
        return;
    };
    let stand_in: String = token
        .chars()
        .map(|c| match c {
            'Q' => 'R',
            c if c.is_ascii_alphanumeric() => 'Q',
            c => c,
        })
        .collect();
    let mut other = answer.clone();
    other.insert(key.to_string(), serde_json::Value::String(stand_in));
    let text = |o: &serde_json::Map<String, serde_json::Value>| {
        let body = serde_json::to_vec(o).expect("a JSON object serializes");
        parse_token_response(status, &body)
            .err()
            .map(|e| e.to_string())
    };
    let (original, replaced) = (text(answer), text(&other));
    assert_eq!(original, replaced, "{key} changes the error text");
}

/// The OAuth `state` (`admin::state::StateBook`): with bit 0 of the first byte clear, the rest
/// as a state someone sent (never accepted: it is not signed with our key); set, the next
/// byte is the length of a merchant id taken from the input, a genuine state is issued for it,
/// verified, expired, and changed at the positions (and to the ASCII bytes) the remaining
/// byte pairs say: any change is refused, and a state redeems once only.
pub fn oauth_state(data: &[u8]) {
    use mollie_gateway::admin::state::{StateBook, StateError, STATE_TTL_SECS};
    const NOW: u64 = 1_700_000_000;
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let book = StateBook::new(b"fuzz-oauth-state-secret");
    if control & 1 == 0 {
        let state = String::from_utf8_lossy(rest);
        assert_eq!(
            book.verify(&state, NOW),
            Err(StateError::Invalid),
            "forged state"
        );
        assert_eq!(book.redeem(&state, NOW), Err(StateError::Invalid));
        return;
    }
    let Some((&len, rest)) = rest.split_first() else {
        return;
    };
    let (id, edits) = rest.split_at(usize::from(len).min(rest.len()));
    let Ok(merchant) = MerchantId::parse_bytes(id) else {
        return;
    };
    let state = book.issue(&merchant, NOW).expect("a state");
    let (m, expires, _) = book.verify(&state, NOW).expect("our own state verifies");
    assert_eq!((m, expires), (merchant.clone(), NOW + STATE_TTL_SECS));
    assert_eq!(
        book.verify(&state, NOW + STATE_TTL_SECS),
        Err(StateError::Expired(merchant.clone()))
    );
    let mut changed = state.clone().into_bytes();
    for edit in edits.chunks_exact(2) {
        let at = usize::from(edit[0]) * changed.len() / 256;
        changed[at] = edit[1] & 0x7f; // stays ASCII, so stays a str
    }
    let changed = String::from_utf8(changed).expect("ASCII");
    for tampered in [
        changed,
        format!("{state}A"),
        state[..state.len() - 1].to_string(),
    ] {
        if tampered != state {
            assert_eq!(
                book.verify(&tampered, NOW),
                Err(StateError::Invalid),
                "{state} changed to {tampered} still verifies"
            );
        }
    }
    assert_eq!(book.redeem(&state, NOW), Ok(merchant.clone()));
    assert_eq!(
        book.redeem(&state, NOW + 1),
        Err(StateError::Replayed(merchant))
    );
}

/// The file store loader (`store::file::FileStore::open`, then `load_all`) on any file
/// contents: never a panic; a store that opens lists exactly the merchants of the file.
pub fn store_file(data: &[u8]) {
    use mollie_gateway::store::file::FileStore;
    use mollie_gateway::store::CredentialStore;
    let dir = std::env::temp_dir().join(format!(
        "mollie-gateway-fuzz-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let path = dir.join("credentials.json");
    std::fs::write(&path, data).expect("a temporary store file");
    if let Ok(store) = FileStore::open(&path) {
        let all = RUNTIME
            .with(|rt| rt.block_on(store.load_all()))
            .expect("an opened store lists its merchants");
        let file: serde_json::Value = serde_json::from_slice(data).expect("it parsed as JSON");
        let names = file["merchants"]
            .as_object()
            .map(|m| m.keys().cloned().collect::<std::collections::BTreeSet<_>>())
            .unwrap_or_default();
        let ids: std::collections::BTreeSet<String> =
            all.iter().map(|(id, _)| id.to_string()).collect();
        assert_eq!(ids, names);
    }
    let _ = std::fs::remove_file(&path);
}
