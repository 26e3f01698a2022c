//! The errors the gateway answers itself, and the one place that turns them into responses.
//!
//! Owns: [`GatewayError`], its status code, its stable `X-Gateway-Error` code (DESIGN.md §3)
//! and the Mollie-shaped JSON body, so that callers' Mollie SDKs show the message.
//! Must not: log (the access log line in `proxy.rs` records the code), or put a secret in a
//! body: every detail below is built from constants, merchant ids and error classes only.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use serde_json::json;

/// Where callers can read about the gateway's own errors.
pub const ERROR_DOCS_URL: &str = "https://docs.mollie.com/reference/handling-errors";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The merchant header is missing, empty, repeated or malformed; the text says which.
    #[error("the {header} header {problem}")]
    MerchantHeader { header: String, problem: String },
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
            GatewayError::Internal(_) => 500,
            GatewayError::UnknownMerchant(_) | GatewayError::AuthorizationRevoked(_) => 401,
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
