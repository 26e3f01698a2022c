//! What an OAuth request needs that an API-key caller never sends, and links that keep SDKs on
//! the gateway (DESIGN.md §5).
//!
//! Owns: adding `testmode=true` to a query string, adding `testmode`/`profileId` to the top
//! level of a JSON body, and [`LinkRewriter`], a streaming rewriter of HAL `href` values from
//! the upstream base URL to the public one.
//! Must not: overwrite anything the caller sent, touch a body that is not a JSON object, or
//! hold more than a few bytes back from a streamed response.
//!
//! Bodies are edited as text (an insertion after the object's opening brace), not re-encoded,
//! so the caller's bytes, key order and number formatting reach Mollie unchanged.

use bytes::{Bytes, BytesMut};
use http::Uri;
use serde::de::IgnoredAny;
use std::borrow::Cow;
use std::collections::HashMap;

/// True when the query string already names `key` (`key=…` or a bare `key`).
fn query_has(query: &str, key: &str) -> bool {
    form_urlencoded::parse(query.as_bytes()).any(|(k, _)| k == key)
}

/// The URI with `testmode=true` appended, unless the caller sent `testmode` already.
pub fn with_query_testmode(uri: &Uri) -> Option<Uri> {
    let path = uri.path();
    let target = match uri.query() {
        Some(q) if query_has(q, "testmode") => return None,
        Some("") | None => format!("{path}?testmode=true"),
        Some(q) => format!("{path}?{q}&testmode=true"),
    };
    target.parse().ok()
}

/// Whether a request asks for live data: a `testmode` query parameter, or top-level JSON body
/// key, that is anything but `true`. A body that is not a JSON object with unique top-level
/// keys counts as asking (it cannot be shown not to).
pub fn asks_for_live(query: Option<&str>, body: Option<&[u8]>) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe {
        testmode: Option<serde_json::Value>,
    }
    let in_query = query.is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "testmode" && v != "true")
    });
    let in_body = body.is_some_and(|b| match serde_json::from_slice::<Probe>(b) {
        Ok(p) => p
            .testmode
            .is_some_and(|v| v != serde_json::Value::Bool(true)),
        Err(_) => true,
    });
    in_query || in_body
}

/// The JSON object `body` with `"testmode":true` and/or `"profileId":"…"` added at its top
/// level where absent. `None` when nothing is to be added or the body is not a JSON object.
pub fn with_body_defaults(body: &[u8], testmode: bool, profile_id: Option<&str>) -> Option<Bytes> {
    // The top-level keys only: values are checked for validity but never built.
    let object: HashMap<Cow<'_, str>, IgnoredAny> = serde_json::from_slice(body).ok()?;
    let mut insert = String::new();
    if testmode && !object.contains_key("testmode") {
        insert.push_str("\"testmode\":true");
    }
    if let Some(profile) = profile_id.filter(|_| !object.contains_key("profileId")) {
        if !insert.is_empty() {
            insert.push(',');
        }
        insert.push_str("\"profileId\":");
        insert.push_str(&serde_json::Value::from(profile).to_string());
    }
    if insert.is_empty() {
        return None;
    }
    // A valid JSON object starts, after optional white space, with `{`.
    let brace = body.iter().position(|b| *b == b'{')?;
    let mut out = BytesMut::with_capacity(body.len() + insert.len() + 1);
    out.extend_from_slice(&body[..=brace]);
    out.extend_from_slice(insert.as_bytes());
    if !object.is_empty() {
        out.extend_from_slice(b",");
    }
    out.extend_from_slice(&body[brace + 1..]);
    Some(out.freeze())
}

/// The most white space tolerated around `:` in `"href" : "…"` before giving up the match.
const MAX_WHITESPACE: usize = 16;
const KEY: &[u8] = b"\"href\"";

/// Rewrites `"href": "<from>…"` to `"href": "<to>…"` in a JSON byte stream split anywhere.
/// Both plain (`https://api.mollie.com/`) and slash-escaped (`https:\/\/api.mollie.com\/`)
/// spellings are recognised and replaced in the same spelling. It searches for the rare
/// `"href"` with `memchr`'s substring search and holds back only a possible match cut by a
/// chunk boundary (at most the pattern's length).
pub struct LinkRewriter {
    from: [Vec<u8>; 2],
    to: [Vec<u8>; 2],
    finder: memchr::memmem::Finder<'static>,
    /// The tail of the previous chunk that may begin a match.
    pending: Vec<u8>,
}

enum Match {
    No,
    /// The data ends before the match is decided.
    Partial,
    /// `from[k]` starts at this offset from the `"href"`.
    Full(usize, usize),
}

impl LinkRewriter {
    /// `from` and `to` are base URLs (`https://api.mollie.com`); a trailing `/` is implied so
    /// that `https://api.mollie.com.example/` never matches.
    pub fn new(from: &str, to: &str) -> LinkRewriter {
        let slash = |s: &str| format!("{}/", s.trim_end_matches('/'));
        let escape = |s: String| s.replace('/', "\\/");
        let (from, to) = (slash(from), slash(to));
        LinkRewriter {
            from: [from.clone().into_bytes(), escape(from).into_bytes()],
            to: [to.clone().into_bytes(), escape(to).into_bytes()],
            finder: memchr::memmem::Finder::new(KEY),
            pending: Vec::new(),
        }
    }

    /// Rewrites one chunk into `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if self.pending.is_empty() {
            let keep = self.rewrite(input, out);
            self.pending.extend_from_slice(&input[keep..]);
        } else {
            let mut data = std::mem::take(&mut self.pending);
            data.extend_from_slice(input);
            let keep = self.rewrite(&data, out);
            data.drain(..keep);
            self.pending = data;
        }
    }

    /// Ends the stream: whatever is held back goes out unchanged.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.pending);
    }

    /// Rewrites `data` into `out` up to the returned offset; the rest may begin a match.
    fn rewrite(&self, data: &[u8], out: &mut Vec<u8>) -> usize {
        let mut pos = 0;
        while let Some(found) = self.finder.find(&data[pos..]) {
            let at = pos + found;
            out.extend_from_slice(&data[pos..at]);
            match self.classify(&data[at..]) {
                Match::Full(k, offset) => {
                    out.extend_from_slice(&data[at..at + offset]);
                    out.extend_from_slice(&self.to[k]);
                    pos = at + offset + self.from[k].len();
                }
                Match::Partial => return at,
                Match::No => {
                    out.extend_from_slice(&data[at..at + KEY.len()]);
                    pos = at + KEY.len();
                }
            }
        }
        // A `"href"` cut by the end of the chunk: hold back the longest suffix that begins it.
        let tail = &data[pos..];
        let held = (1..KEY.len().min(tail.len() + 1))
            .rev()
            .find(|n| tail.ends_with(&KEY[..*n]))
            .unwrap_or(0);
        let end = data.len() - held;
        out.extend_from_slice(&data[pos..end]);
        end
    }

    /// Matches `"href"` WS* `:` WS* `"` FROM at the start of `p`.
    fn classify(&self, p: &[u8]) -> Match {
        let mut i = KEY.len();
        let mut spaces = 0;
        let mut colon = false;
        loop {
            let Some(b) = p.get(i) else {
                return Match::Partial;
            };
            match b {
                b' ' | b'\t' | b'\n' | b'\r' => spaces += 1,
                b':' if !colon => colon = true,
                b'"' if colon => break,
                _ => return Match::No,
            }
            if spaces > MAX_WHITESPACE {
                return Match::No;
            }
            i += 1;
        }
        let value = &p[i + 1..];
        let mut partial = false;
        for (k, from) in self.from.iter().enumerate() {
            if value.len() >= from.len() {
                if value[..from.len()] == from[..] {
                    return Match::Full(k, i + 1);
                }
            } else if from.starts_with(value) {
                partial = true;
            }
        }
        if partial {
            Match::Partial
        } else {
            Match::No
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_testmode_true_or_none_keeps_a_request_in_test_data() {
        assert!(!asks_for_live(None, None));
        assert!(!asks_for_live(
            Some("limit=5&testmode=true"),
            Some(br#"{"a":1}"#)
        ));
        assert!(!asks_for_live(
            None,
            Some(br#"{"testmode":true,"b":{"testmode":false}}"#)
        ));
        assert!(asks_for_live(Some("testmode=false"), None));
        assert!(asks_for_live(Some("testmode=true&testmode=0"), None));
        assert!(asks_for_live(None, Some(br#"{"testmode":false}"#)));
        assert!(asks_for_live(None, Some(br#"{"testmode":"true"}"#)));
        // Duplicate keys (the upstream may take the last), or no JSON object at all.
        assert!(asks_for_live(
            None,
            Some(br#"{"testmode":true,"testmode":false}"#)
        ));
        assert!(asks_for_live(None, Some(b"[1]")));
    }

    #[test]
    fn query_testmode_added_unless_present() {
        let u: Uri = "/v2/payments?limit=5".parse().unwrap();
        assert_eq!(
            with_query_testmode(&u).unwrap(),
            "/v2/payments?limit=5&testmode=true"
        );
        let u: Uri = "/v2/methods".parse().unwrap();
        assert_eq!(
            with_query_testmode(&u).unwrap(),
            "/v2/methods?testmode=true"
        );
        let u: Uri = "/v2/methods?testmode=false".parse().unwrap();
        assert!(with_query_testmode(&u).is_none());
    }

    #[test]
    fn body_defaults_are_inserted_without_touching_the_rest() {
        let body = br#" {"amount": {"value": "10.00", "currency": "EUR"}, "n": 1.50}"#;
        let out = with_body_defaults(body, true, Some("pfl_1")).unwrap();
        assert_eq!(
            &out[..],
            br#" {"testmode":true,"profileId":"pfl_1","amount": {"value": "10.00", "currency": "EUR"}, "n": 1.50}"#
        );
        let out = with_body_defaults(b"{}", true, None).unwrap();
        assert_eq!(&out[..], br#"{"testmode":true}"#);
        // The caller's own values win.
        let body = br#"{"testmode":false,"profileId":"pfl_mine"}"#;
        assert!(with_body_defaults(body, true, Some("pfl_1")).is_none());
        // Not a JSON object: untouched.
        assert!(with_body_defaults(b"[1,2]", true, None).is_none());
        assert!(with_body_defaults(b"amount=10", true, None).is_none());
    }

    fn rewrite_in_chunks(input: &[u8], size: usize) -> Vec<u8> {
        let mut r = LinkRewriter::new("https://api.mollie.com", "http://gw.internal:8080");
        let mut out = Vec::new();
        for chunk in input.chunks(size) {
            r.feed(chunk, &mut out);
        }
        r.finish(&mut out);
        out
    }

    #[test]
    fn links_are_rewritten_across_every_chunk_boundary() {
        let input = br#"{"_links":{"self":{"href":"https://api.mollie.com/v2/payments/tr_1","type":"application/hal+json"},"checkout":{"href":"https://www.mollie.com/checkout/x"},"next":{"href" : "https:\/\/api.mollie.com\/v2\/payments?from=tr_2"},"evil":{"href":"https://api.mollie.com.example/x"}},"description":"\"href\":\"https://api.mollie.com/ in text"}"#;
        let expected = br#"{"_links":{"self":{"href":"http://gw.internal:8080/v2/payments/tr_1","type":"application/hal+json"},"checkout":{"href":"https://www.mollie.com/checkout/x"},"next":{"href" : "http:\/\/gw.internal:8080\/v2\/payments?from=tr_2"},"evil":{"href":"https://api.mollie.com.example/x"}},"description":"\"href\":\"https://api.mollie.com/ in text"}"#;
        for size in 1..=input.len() {
            let out = rewrite_in_chunks(input, size);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(expected),
                "chunk size {size}"
            );
        }
    }

    #[test]
    fn an_unfinished_match_is_flushed_unchanged() {
        let input = br#"{"href":"https://api.mol"#;
        assert_eq!(rewrite_in_chunks(input, 3), input.to_vec());
    }
}
