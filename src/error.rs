//! The errors the gateway answers itself, and the one place that turns them into responses.
//!
//! Owns: [`GatewayError`], its status code, its stable `X-Gateway-Error` code (DESIGN.md §3)
//! and the Mollie-shaped JSON body, so that callers' Mollie SDKs show the message; and the
//! mapping of the other layers' typed errors onto it: [`TokenError::to_gateway`] (defined here,
//! not in `tokens`, which knows nothing of HTTP).
//! Must not: log (the access log line in `proxy.rs` records the code), or put a secret in a
//! body: every detail below is built from constants, merchant ids and error classes only.

use crate::tokens::TokenError;
use crate::types::MerchantId;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use serde_json::json;
use std::time::Duration;

/// Where callers can read about the gateway's own errors.
pub const ERROR_DOCS_URL: &str = "https://docs.mollie.com/reference/handling-errors";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The merchant header is missing, empty, repeated or malformed; the text says which.
    #[error("the {header} header {problem}")]
    MerchantHeader { header: String, problem: String },
    #[error("no valid gateway key: send your client's key as the API key (Authorization: Bearer …) or in {0}")]
    CallerUnauthenticated(String),
    /// The caller's key may not act for that merchant, or not on live data.
    #[error("{0}")]
    CallerForbidden(String),
    #[error("no credentials are stored for merchant {0}; onboard it first")]
    UnknownMerchant(String),
    #[error(
        "merchant {0} revoked the gateway's authorization (invalid_grant); it must connect again"
    )]
    AuthorizationRevoked(String),
    #[error(
        "the Mollie token endpoint is unavailable ({reason}); retry after {retry_after_secs} s"
    )]
    TokenEndpointUnavailable {
        reason: String,
        retry_after_secs: u64,
    },
    #[error("the Mollie token endpoint answered something the gateway cannot use ({0})")]
    TokenEndpointBadResponse(String),
    #[error("the gateway's OAuth app is misconfigured: {reason}")]
    OAuthMisconfigured {
        reason: String,
        retry_after_secs: u64,
    },
    #[error("the credential store failed ({0}); the refreshed credentials were not used")]
    StoreUnavailable(String),
    #[error("the Mollie API could not be reached ({0})")]
    UpstreamUnavailable(String),
    #[error("the Mollie API did not answer in time ({0})")]
    UpstreamTimeout(String),
    #[error("the request could not be read ({0})")]
    BadRequest(String),
    /// CONNECT, TRACE or an authority-form target: the gateway forwards only origin-form
    /// requests to the Mollie API.
    #[error("{0} is not forwarded; send an origin-form request (`GET /v2/...`)")]
    MethodNotAllowed(String),
    #[error("the request head did not arrive within {0} ms")]
    RequestTimeout(u64),
    #[error("the request body is larger than the gateway's limit of {0} bytes")]
    BodyTooLarge(u64),
    /// The request head is over pingora's limits (1 MiB, 256 header lines).
    #[error("the request head is too large ({0})")]
    HeaderTooLarge(String),
    #[error("the gateway has {0} open connections, its limit; retry on a new connection")]
    Overloaded(usize),
    #[error("internal error ({0})")]
    Internal(String),
}

impl GatewayError {
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::MerchantHeader { .. } | GatewayError::BadRequest(_) => 400,
            GatewayError::MethodNotAllowed(_) => 405,
            GatewayError::RequestTimeout(_) => 408,
            GatewayError::BodyTooLarge(_) => 413,
            GatewayError::HeaderTooLarge(_) => 431,
            GatewayError::Internal(_) => 500,
            GatewayError::UnknownMerchant(_)
            | GatewayError::AuthorizationRevoked(_)
            | GatewayError::CallerUnauthenticated(_) => 401,
            GatewayError::CallerForbidden(_) => 403,
            GatewayError::TokenEndpointUnavailable { .. }
            | GatewayError::OAuthMisconfigured { .. }
            | GatewayError::StoreUnavailable(_)
            | GatewayError::Overloaded(_) => 503,
            GatewayError::TokenEndpointBadResponse(_) | GatewayError::UpstreamUnavailable(_) => 502,
            GatewayError::UpstreamTimeout(_) => 504,
        }
    }

    /// The stable code in `X-Gateway-Error` and the `gateway_errors_total{code}` label.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::MerchantHeader { .. } => "merchant_header",
            GatewayError::UnknownMerchant(_) => "unknown_merchant",
            GatewayError::CallerUnauthenticated(_) => "caller_unauthenticated",
            GatewayError::CallerForbidden(_) => "caller_forbidden",
            GatewayError::AuthorizationRevoked(_) => "authorization_revoked",
            GatewayError::TokenEndpointUnavailable { .. } => "token_endpoint_unavailable",
            GatewayError::TokenEndpointBadResponse(_) => "token_endpoint_bad_response",
            GatewayError::OAuthMisconfigured { .. } => "oauth_misconfigured",
            GatewayError::StoreUnavailable(_) => "store_unavailable",
            GatewayError::UpstreamUnavailable(_) => "upstream_unavailable",
            GatewayError::UpstreamTimeout(_) => "upstream_timeout",
            GatewayError::BadRequest(_) | GatewayError::MethodNotAllowed(_) => "bad_request",
            GatewayError::RequestTimeout(_) => "request_timeout",
            GatewayError::BodyTooLarge(_) => "body_too_large",
            GatewayError::HeaderTooLarge(_) => "header_too_large",
            GatewayError::Overloaded(_) => "overloaded",
            GatewayError::Internal(_) => "internal_error",
        }
    }

    /// Seconds for `Retry-After`; every 503 carries one.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            GatewayError::TokenEndpointUnavailable {
                retry_after_secs, ..
            }
            | GatewayError::OAuthMisconfigured {
                retry_after_secs, ..
            } => Some((*retry_after_secs).max(1)),
            GatewayError::StoreUnavailable(_) | GatewayError::Overloaded(_) => Some(1),
            _ => None,
        }
    }

    /// The body: Mollie's error shape with the gateway's own detail, which names the request
    /// id (when there is one) so that an operator finds the request in the access log.
    pub fn body(&self, request_id: Option<&str>) -> Bytes {
        let status = self.status();
        let detail = match request_id {
            Some(id) => format!("mollie-gateway: {self} (request id {id})"),
            None => format!("mollie-gateway: {self}"),
        };
        mollie_body(status, &detail)
    }

    /// The full response: status, Mollie's content type, `X-Gateway-Error`, `Retry-After`,
    /// and `X-Request-Id` when the request has one.
    pub fn response(&self, request_id: Option<&str>) -> (ResponseHeader, Bytes) {
        let body = self.body(request_id);
        let mut header = error_header(self.status(), self.code(), body.len());
        // Inserting into a header we just built cannot fail for these values.
        if let Some(secs) = self.retry_after_secs() {
            let _ = header.insert_header("Retry-After", secs.to_string());
        }
        if let Some(id) = request_id {
            let _ = header.insert_header("X-Request-Id", id);
        }
        (header, body)
    }
}

/// The answer to a proxied request whose upstream exchange failed before a response head:
/// 504 when a connect, read or write timed out, 502 otherwise.
pub fn upstream_failure(e: &pingora::Error) -> GatewayError {
    use pingora::ErrorType::{ConnectTimedout, ReadTimedout, WriteTimedout};
    let what = e.etype().as_str().to_string();
    match e.etype() {
        ConnectTimedout | ReadTimedout | WriteTimedout => GatewayError::UpstreamTimeout(what),
        _ => GatewayError::UpstreamUnavailable(what),
    }
}

/// The answer to a caller whose request body could not be read: 400 for a malformed body (an
/// invalid chunk, more bytes than `Content-Length`), `None` when the caller went away or
/// stalled (nobody to answer).
pub fn caller_body_failure(e: &pingora::Error) -> Option<GatewayError> {
    use pingora::ErrorType::{ConnectionClosed, ReadError, ReadTimedout};
    match e.etype() {
        ConnectionClosed | ReadError | ReadTimedout => None,
        other => Some(GatewayError::BadRequest(format!(
            "the request body is malformed: {}",
            other.as_str()
        ))),
    }
}

impl TokenError {
    /// What the gateway answers when no token could be had for `merchant`: the status, the
    /// code and, for the transient failures, `Retry-After` (the backoff, in whole seconds).
    pub fn to_gateway(&self, merchant: &MerchantId) -> GatewayError {
        let secs = |d: &Duration| d.as_secs() + u64::from(d.subsec_nanos() > 0);
        match self {
            TokenError::UnknownMerchant => GatewayError::UnknownMerchant(merchant.to_string()),
            TokenError::Revoked => GatewayError::AuthorizationRevoked(merchant.to_string()),
            TokenError::Unavailable { cause, retry_after } => {
                GatewayError::TokenEndpointUnavailable {
                    reason: cause.to_string(),
                    retry_after_secs: secs(retry_after),
                }
            }
            TokenError::BadResponse(bad) => GatewayError::TokenEndpointBadResponse(bad.to_string()),
            TokenError::Misconfigured { cause, retry_after } => GatewayError::OAuthMisconfigured {
                reason: cause.to_string(),
                retry_after_secs: secs(retry_after),
            },
            TokenError::Store(e) => GatewayError::StoreUnavailable(e.to_string()),
        }
    }
}

/// Mollie's error shape: `{"status", "title", "detail", "_links": {"documentation": …}}`.
/// The one place it is written, for the proxy's errors and the admin API's.
pub fn mollie_body(status: u16, detail: &str) -> Bytes {
    let value = json!({
        "status": status,
        "title": title(status),
        "detail": detail,
        "_links": {"documentation": {"href": ERROR_DOCS_URL, "type": "text/html"}},
    });
    Bytes::from(value.to_string())
}

/// Mollie's titles for the statuses the gateway answers.
pub fn title(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Request Entity Too Large",
        431 => "Request Header Fields Too Large",
        422 => "Unprocessable Entity",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Internal Server Error",
    }
}

/// A response header for an error body of `len` bytes.
pub fn error_header(status: u16, code: &str, len: usize) -> ResponseHeader {
    let mut header = ResponseHeader::build(status, Some(4)).unwrap_or_else(|_| {
        // `build` only fails on an invalid status code; every status above is valid.
        ResponseHeader::build(500, Some(4)).expect("500 is a valid status")
    });
    let _ = header.insert_header("Content-Type", "application/hal+json");
    let _ = header.insert_header("Content-Length", len.to_string());
    let _ = header.insert_header("X-Gateway-Error", code.to_string());
    let _ = header.insert_header("Cache-Control", "no-store");
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_mollies_shape() {
        let e = GatewayError::AuthorizationRevoked("m1".into());
        let v: serde_json::Value = serde_json::from_slice(&e.body(Some("req-7"))).unwrap();
        assert_eq!(v["status"], 401);
        assert_eq!(v["title"], "Unauthorized Request");
        let detail = v["detail"].as_str().unwrap();
        assert!(detail.contains("m1"), "{detail}");
        assert!(detail.ends_with("(request id req-7)"), "{detail}");
        assert_eq!(v["_links"]["documentation"]["type"], "text/html");
    }

    #[test]
    fn token_errors_keep_their_codes_and_retry_after() {
        use crate::tokens::{Misconfigured, Unavailable};
        let m1 = MerchantId::parse("m1").unwrap();
        let unavailable = TokenError::Unavailable {
            cause: Unavailable::WaitedTooLong(Duration::from_millis(6000)),
            retry_after: Duration::from_millis(1500),
        };
        let e = unavailable.to_gateway(&m1);
        assert_eq!((e.status(), e.code()), (503, "token_endpoint_unavailable"));
        assert_eq!(e.retry_after_secs(), Some(2));
        assert!(e.to_string().contains("no token within 6000 ms"), "{e}");
        let misconfigured = TokenError::Misconfigured {
            cause: Misconfigured::NotConfigured,
            retry_after: Duration::from_secs(1),
        };
        let e = misconfigured.to_gateway(&m1);
        assert_eq!((e.status(), e.code()), (503, "oauth_misconfigured"));
        assert!(
            e.to_string().contains("MOLLIE_GATEWAY__OAUTH__CLIENT_ID"),
            "{e}"
        );
        let e = TokenError::Revoked.to_gateway(&m1);
        assert_eq!((e.status(), e.code()), (401, "authorization_revoked"));
        assert!(e.to_string().contains("m1"));
    }

    #[test]
    fn every_503_has_retry_after() {
        for e in [
            GatewayError::TokenEndpointUnavailable {
                reason: "x".into(),
                retry_after_secs: 0,
            },
            GatewayError::OAuthMisconfigured {
                reason: "x".into(),
                retry_after_secs: 30,
            },
            GatewayError::StoreUnavailable("disk".into()),
            GatewayError::Overloaded(10),
        ] {
            assert_eq!(e.status(), 503);
            let (h, _) = e.response(None);
            assert!(h.headers.get("retry-after").is_some(), "{}", e.code());
            assert_eq!(h.headers.get("x-gateway-error").unwrap(), e.code());
        }
    }
}
