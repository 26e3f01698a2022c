//! [`AdminError`]: every error the admin listener answers (except the `/oauth/…` pages, which
//! are HTML for a browser), turned into a response in one place.
//!
//! Owns: the admin codes of DESIGN.md §3 (`admin_bad_request`, `admin_unauthorized`,
//! `admin_not_found`, `admin_method_not_allowed`) and the mapping of every axum extractor
//! rejection to `admin_bad_request`; token and store failures keep the proxy's own codes
//! ([`GatewayError`]). The body is Mollie's error shape (`error::mollie_body`) with
//! `Content-Type: application/hal+json` and `X-Gateway-Error` (`error::error_header`).
//! Must not: echo a request value that could be a secret (a token in the wrong field): details
//! name fields and positions, never values.

use crate::error::{error_header, mollie_body, GatewayError};
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::response::{IntoResponse, Response};
use http::StatusCode;

/// An admin answer other than success.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// 400 `admin_bad_request`: the text says what is wrong with the request.
    #[error("{0}")]
    BadRequest(String),
    /// 401 `admin_unauthorized`, with `WWW-Authenticate: Bearer`.
    #[error("send Authorization: Bearer <admin.token>")]
    Unauthorized,
    /// 404 `admin_not_found`: an unknown path or merchant, or the API is disabled.
    #[error("{0}")]
    NotFound(String),
    /// 405 `admin_method_not_allowed`, with `Allow` set to the methods given.
    #[error("this endpoint allows {0}")]
    MethodNotAllowed(&'static str),
    /// A token or store error, answered with the proxy's own code for it.
    #[error(transparent)]
    Gateway(#[from] GatewayError),
}

impl AdminError {
    pub fn status(&self) -> u16 {
        match self {
            AdminError::BadRequest(_) => 400,
            AdminError::Unauthorized => 401,
            AdminError::NotFound(_) => 404,
            AdminError::MethodNotAllowed(_) => 405,
            AdminError::Gateway(e) => e.status(),
        }
    }

    /// The `X-Gateway-Error` code.
    pub fn code(&self) -> &'static str {
        match self {
            AdminError::BadRequest(_) => "admin_bad_request",
            AdminError::Unauthorized => "admin_unauthorized",
            AdminError::NotFound(_) => "admin_not_found",
            AdminError::MethodNotAllowed(_) => "admin_method_not_allowed",
            AdminError::Gateway(e) => e.code(),
        }
    }

    /// A handler for a route's other methods: 405 with `Allow: methods`.
    pub fn allow(
        methods: &'static str,
    ) -> impl FnOnce() -> std::future::Ready<AdminError> + Clone + Send + Sync + 'static {
        move || std::future::ready(AdminError::MethodNotAllowed(methods))
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        if let AdminError::Gateway(e) = &self {
            let (header, body) = e.response(None);
            return (header.status, header.headers.clone(), body).into_response();
        }
        let status = self.status();
        let body = mollie_body(status, &format!("mollie-gateway: {self}"));
        let header = error_header(status, self.code(), body.len());
        let mut resp = (header.status, header.headers.clone(), body).into_response();
        let headers = resp.headers_mut();
        match self {
            AdminError::Unauthorized => {
                headers.insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer realm=\"mollie-gateway admin\""),
                );
            }
            AdminError::MethodNotAllowed(methods) => {
                headers.insert(http::header::ALLOW, http::HeaderValue::from_static(methods));
            }
            _ => {}
        }
        resp
    }
}

/// A body the handler could not read: too large (axum's 413), cut off or timed out.
impl From<BytesRejection> for AdminError {
    fn from(r: BytesRejection) -> Self {
        AdminError::BadRequest(match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => format!(
                "the body is larger than {} bytes",
                super::api::MAX_BODY_BYTES
            ),
            _ => "the body could not be read".to_string(),
        })
    }
}

/// A path parameter axum could not decode (not UTF-8 once percent-decoded).
impl From<PathRejection> for AdminError {
    fn from(_: PathRejection) -> Self {
        AdminError::BadRequest("the merchant id in the path is not valid UTF-8".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parts(e: AdminError) -> (http::response::Parts, serde_json::Value) {
        let (parts, body) = e.into_response().into_parts();
        let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        assert_eq!(
            parts.headers["content-length"],
            body.len().to_string().as_str()
        );
        (parts, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn errors_have_mollies_shape() {
        let (p, v) = parts(AdminError::MethodNotAllowed("GET")).await;
        assert_eq!(p.status, 405);
        assert_eq!(p.headers["allow"], "GET");
        assert_eq!(p.headers["x-gateway-error"], "admin_method_not_allowed");
        assert_eq!(p.headers["content-type"], "application/hal+json");
        assert_eq!(v["title"], "Method Not Allowed");
        assert_eq!(v["detail"], "mollie-gateway: this endpoint allows GET");
        assert_eq!(v["_links"]["documentation"]["type"], "text/html");

        let (p, _) = parts(AdminError::Unauthorized).await;
        assert!(p.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
        let (p, v) = parts(GatewayError::StoreUnavailable("disk".into()).into()).await;
        assert_eq!(p.status, 503);
        assert_eq!(p.headers["x-gateway-error"], "store_unavailable");
        assert!(p.headers.contains_key("retry-after"));
        assert_eq!(v["status"], 503);
    }
}
