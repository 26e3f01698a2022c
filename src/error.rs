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
    #[error("internal error ({0})")]
    Internal(String),
}

impl GatewayError {
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::MerchantHeader { .. } | GatewayError::BadRequest(_) => 400,
            GatewayError::Internal(_) => 500,
            GatewayError::UnknownMerchant(_) | GatewayError::AuthorizationRevoked(_) => 401,
            GatewayError::TokenEndpointUnavailable { .. }
            | GatewayError::OAuthMisconfigured { .. }
            | GatewayError::StoreUnavailable(_) => 503,
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
            GatewayError::BadRequest(_) => "bad_request",
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
            GatewayError::StoreUnavailable(_) => Some(1),
            _ => None,
        }
    }

    /// The body: Mollie's error shape with the gateway's own detail.
    pub fn body(&self) -> Bytes {
        let status = self.status();
        let value = json!({
            "status": status,
            "title": title(status),
            "detail": format!("mollie-gateway: {self}"),
            "_links": {"documentation": {"href": ERROR_DOCS_URL, "type": "text/html"}},
        });
        Bytes::from(value.to_string())
    }

    /// The full response: status, Mollie's content type, `X-Gateway-Error`, `Retry-After`.
    pub fn response(&self) -> (ResponseHeader, Bytes) {
        let body = self.body();
        let mut header = error_header(self.status(), self.code(), body.len());
        if let Some(secs) = self.retry_after_secs() {
            // Inserting a header into a header we just built cannot fail for these values.
            let _ = header.insert_header("Retry-After", secs.to_string());
        }
        (header, body)
    }
}

/// Mollie's titles for the statuses the gateway answers.
pub fn title(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
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
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["status"], 401);
        assert_eq!(v["title"], "Unauthorized Request");
        assert!(v["detail"].as_str().unwrap().contains("m1"));
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
        ] {
            assert_eq!(e.status(), 503);
            let (h, _) = e.response();
            assert!(h.headers.get("retry-after").is_some(), "{}", e.code());
            assert_eq!(h.headers.get("x-gateway-error").unwrap(), e.code());
        }
    }
}
