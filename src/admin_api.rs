//! The admin API under `/admin/` on the admin listener, behind `Authorization: Bearer
//! <admin.token>` (compared in constant time). With `admin.token` empty every `/admin/…` path
//! answers 404, as if the API did not exist.
//!
//! - `GET /admin/merchants`: JSON list of every merchant (cached or only stored): `id`,
//!   `state` (`active`, `revoked`, `refreshing`, `backoff`), `access_token_expires_at`,
//!   `last_refresh_at` (unix seconds), `last_refresh_outcome`. Never a token.
//! - `GET /admin/merchants/{id}`: one of those.
//! - `PUT /admin/merchants/{id}`: `{"refresh_token": "…"}`, or `{"authorization_code": "…",
//!   "redirect_uri": "…"}` (redirect URI optional, default `oauth.redirect_uri`; the code is
//!   exchanged at once). Answers the merchant's new state.
//! - `DELETE /admin/merchants/{id}`: removes it from the store and the cache.
//! - `POST /admin/merchants/{id}/refresh`: refreshes its access token now.
//!
//! Errors are Mollie-shaped (`error::error_header`) with `X-Gateway-Error`: `admin_bad_request`
//! (400), `admin_unauthorized` (401), `admin_not_found` (404), `admin_method_not_allowed`
//! (405), and the token errors' own codes (`TokenError::to_gateway`).
//! Must not: echo a token, a code or the admin token in a body or a log line.

use crate::admin::{discard_body, json, read_body, BodyError, MAX_BODY_BYTES};
use crate::config::Settings;
use crate::error::{error_header, title, GatewayError, ERROR_DOCS_URL};
use crate::store::CredentialStore;
use crate::tokens::{MerchantStatus, TokenError, TokenManager};
use crate::types::{MerchantId, RefreshToken, Secret};
use http::{Method, Response, StatusCode};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use ring::digest::{digest, SHA256};
use serde::Deserialize;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// What the admin API needs: the token manager, the store (for merchants the cache has not
/// loaded yet) and the admin token's digest.
pub struct AdminApi {
    tokens: TokenManager,
    store: Arc<dyn CredentialStore>,
    /// SHA-256 of `admin.token`: comparing digests hides the token's length too.
    /// `None`: the API is disabled.
    token_digest: Option<[u8; 32]>,
    /// `oauth.redirect_uri`, sent with an exchanged code when the request names none.
    default_redirect_uri: Option<String>,
}

/// An answer other than success.
#[derive(Debug)]
enum Failure {
    BadRequest(String),
    Unauthorized,
    NotFound(String),
    MethodNotAllowed(&'static str),
    /// A token or store error, answered with the proxy's own code for it.
    Gateway(GatewayError),
}

fn token_failure(id: &MerchantId, e: TokenError) -> Failure {
    Failure::Gateway(e.to_gateway(id))
}

/// The body of `PUT /admin/merchants/{id}` (its `Debug` prints the secrets as `***`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutMerchant {
    refresh_token: Option<RefreshToken>,
    authorization_code: Option<Secret>,
    redirect_uri: Option<String>,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

impl AdminApi {
    pub fn new(settings: &Settings, tokens: TokenManager, store: Arc<dyn CredentialStore>) -> Self {
        let token = &settings.admin.token;
        AdminApi {
            tokens,
            store,
            token_digest: (!token.is_empty()).then(|| sha256(token.expose().as_bytes())),
            default_redirect_uri: Some(settings.oauth.redirect_uri.clone())
                .filter(|u| !u.is_empty()),
        }
    }

    /// Answers one `/admin/…` request.
    pub async fn handle(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let Some(expected) = &self.token_digest else {
            discard_body(session).await;
            return failure(Failure::NotFound("the admin API is disabled".into()));
        };
        if !authorized(session, expected) {
            discard_body(session).await;
            return failure(Failure::Unauthorized);
        }
        let body = match read_body(session, MAX_BODY_BYTES).await {
            Ok(body) => body,
            Err(BodyError::TooLarge) => {
                return failure(Failure::BadRequest(format!(
                    "the body is larger than {MAX_BODY_BYTES} bytes"
                )))
            }
            Err(BodyError::Unreadable(e)) => {
                return failure(Failure::BadRequest(format!(
                    "the body could not be read ({e})"
                )))
            }
        };
        let req = session.req_header();
        let method = req.method.clone();
        let path = req.uri.path().to_string();
        match self.route(&method, &path, &body).await {
            Ok((status, value)) => json(status, value),
            Err(f) => failure(f),
        }
    }

    async fn route(
        &self,
        method: &Method,
        path: &str,
        body: &[u8],
    ) -> Result<(StatusCode, serde_json::Value), Failure> {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match segments.as_slice() {
            ["admin", "merchants"] => match *method {
                Method::GET => Ok((StatusCode::OK, to_json(&self.list().await?))),
                _ => Err(Failure::MethodNotAllowed("GET")),
            },
            ["admin", "merchants", id] => {
                let allowed = "GET, PUT, DELETE";
                if ![Method::GET, Method::PUT, Method::DELETE].contains(method) {
                    return Err(Failure::MethodNotAllowed(allowed));
                }
                let id = merchant_from_path(id)?;
                match *method {
                    Method::GET => Ok((StatusCode::OK, to_json(&self.one(&id).await?))),
                    Method::PUT => self.put(&id, body).await,
                    _ => self.delete(&id).await,
                }
            }
            ["admin", "merchants", id, "refresh"] => {
                if method != Method::POST {
                    return Err(Failure::MethodNotAllowed("POST"));
                }
                let id = merchant_from_path(id)?;
                self.refresh(&id).await
            }
            _ => Err(Failure::NotFound(
                "no such admin endpoint (see GET /admin/merchants)".into(),
            )),
        }
    }

    /// The cache's view, plus merchants only the store knows (added by the CLI or another
    /// process and not used here yet).
    async fn list(&self) -> Result<Vec<MerchantStatus>, Failure> {
        let mut all = self.tokens.statuses();
        let stored = self
            .store
            .list()
            .await
            .map_err(|e| Failure::Gateway(GatewayError::StoreUnavailable(e.to_string())))?;
        for m in stored {
            if all.iter().all(|s| s.id != m.id) {
                all.push(stored_status(m.id, m.revoked));
            }
        }
        all.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(all)
    }

    async fn one(&self, id: &MerchantId) -> Result<MerchantStatus, Failure> {
        if let Some(status) = self.tokens.status(id) {
            return Ok(status);
        }
        match self.store.get(id).await {
            Ok(Some(m)) => Ok(stored_status(id.clone(), m.revoked)),
            Ok(None) => Err(not_found(id)),
            Err(e) => Err(Failure::Gateway(GatewayError::StoreUnavailable(
                e.to_string(),
            ))),
        }
    }

    async fn put(
        &self,
        id: &MerchantId,
        body: &[u8],
    ) -> Result<(StatusCode, serde_json::Value), Failure> {
        let put: PutMerchant = serde_json::from_slice(body).map_err(body_error)?;
        let redirect_uri = put.redirect_uri.filter(|u| !u.is_empty());
        match (put.refresh_token, put.authorization_code) {
            (Some(token), None) => {
                if token.is_empty() {
                    return Err(Failure::BadRequest("refresh_token is empty".into()));
                }
                if redirect_uri.is_some() {
                    return Err(Failure::BadRequest(
                        "redirect_uri goes only with authorization_code".into(),
                    ));
                }
                self.tokens
                    .add_refresh_token(id, token)
                    .await
                    .map_err(|e| token_failure(id, e))?;
                tracing::info!(merchant = %id, "admin: refresh token stored");
            }
            (None, Some(code)) => {
                if code.is_empty() {
                    return Err(Failure::BadRequest("authorization_code is empty".into()));
                }
                if let Some(uri) = &redirect_uri {
                    check_redirect_uri(uri)?;
                }
                let uri = redirect_uri.or_else(|| self.default_redirect_uri.clone());
                self.tokens
                    .add_authorization_code(id, &code, uri.as_deref())
                    .await
                    .map_err(|e| token_failure(id, e))?;
                tracing::info!(merchant = %id, "admin: authorization code exchanged and stored");
            }
            _ => {
                return Err(Failure::BadRequest(
                    "give exactly one of refresh_token and authorization_code".into(),
                ))
            }
        }
        Ok((StatusCode::OK, to_json(&self.one(id).await?)))
    }

    async fn delete(&self, id: &MerchantId) -> Result<(StatusCode, serde_json::Value), Failure> {
        let known = self.tokens.status(id).is_some();
        let removed = self
            .tokens
            .remove(id)
            .await
            .map_err(|e| token_failure(id, e))?;
        if !removed && !known {
            return Err(not_found(id));
        }
        tracing::info!(merchant = %id, "admin: merchant removed");
        Ok((
            StatusCode::OK,
            serde_json::json!({"id": id, "removed": true}),
        ))
    }

    async fn refresh(&self, id: &MerchantId) -> Result<(StatusCode, serde_json::Value), Failure> {
        let result = match self.tokens.refresh_now(id).await {
            // Not cached yet: `get` loads it from the store and, holding no token, refreshes.
            Err(TokenError::UnknownMerchant) => self.tokens.get(id).await.map(drop),
            other => other.map(drop),
        };
        match result {
            Ok(()) => {
                tracing::info!(merchant = %id, "admin: token refreshed");
                Ok((StatusCode::OK, to_json(&self.one(id).await?)))
            }
            Err(TokenError::UnknownMerchant) => Err(not_found(id)),
            Err(e) => Err(token_failure(id, e)),
        }
    }
}

fn stored_status(id: MerchantId, revoked: bool) -> MerchantStatus {
    MerchantStatus {
        id,
        state: if revoked { "revoked" } else { "active" },
        access_token_expires_at: None,
        last_refresh_at: None,
        last_refresh_outcome: None,
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

fn not_found(id: &MerchantId) -> Failure {
    Failure::NotFound(format!("no merchant {id} is stored"))
}

/// Exactly one `Authorization: Bearer <admin.token>` header (scheme case-insensitive).
fn authorized(session: &ServerSession, expected: &[u8; 32]) -> bool {
    let mut values = session
        .req_header()
        .headers
        .get_all(http::header::AUTHORIZATION)
        .iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let value = value.as_bytes();
    let Some(token) = value
        .get(..7)
        .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
        .and_then(|_| value.get(7..))
    else {
        return false;
    };
    bool::from(sha256(token).ct_eq(expected))
}

/// The `{id}` path segment, percent-decoded, as a merchant id.
fn merchant_from_path(raw: &str) -> Result<MerchantId, Failure> {
    let decoded = percent_decode(raw).ok_or_else(|| {
        Failure::BadRequest("the merchant id in the path has a bad %-escape".into())
    })?;
    MerchantId::parse(&decoded)
        .map_err(|e| Failure::BadRequest(format!("the merchant id in the path {e}")))
}

fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn check_redirect_uri(uri: &str) -> Result<(), Failure> {
    match url::Url::parse(uri) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Ok(()),
        _ => Err(Failure::BadRequest(
            "redirect_uri must be an http:// or https:// URL".into(),
        )),
    }
}

/// A JSON error without echoing values (a misplaced token would be one): field names and
/// positions only.
fn body_error(e: serde_json::Error) -> Failure {
    let text = e.to_string();
    let named_field = ["unknown field", "missing field", "duplicate field"]
        .iter()
        .any(|p| text.starts_with(p));
    Failure::BadRequest(if named_field {
        format!("the body is not what PUT expects: {text}")
    } else {
        format!(
            "the body must be a JSON object with refresh_token, or authorization_code and \
             an optional redirect_uri, all strings (error at line {} column {})",
            e.line(),
            e.column()
        )
    })
}

/// The Mollie-shaped error response for a failure.
fn failure(f: Failure) -> Response<Vec<u8>> {
    let mut allow = None;
    let (status, code, detail) = match f {
        Failure::Gateway(e) => {
            let (header, body) = e.response(None);
            return into_response(header, body.to_vec());
        }
        Failure::BadRequest(d) => (400, "admin_bad_request", d),
        Failure::Unauthorized => (
            401,
            "admin_unauthorized",
            "send Authorization: Bearer <admin.token>".to_string(),
        ),
        Failure::NotFound(d) => (404, "admin_not_found", d),
        Failure::MethodNotAllowed(methods) => {
            allow = Some(methods);
            (
                405,
                "admin_method_not_allowed",
                format!("this endpoint allows {methods}"),
            )
        }
    };
    let body = serde_json::json!({
        "status": status,
        "title": title(status),
        "detail": format!("mollie-gateway: {detail}"),
        "_links": {"documentation": {"href": ERROR_DOCS_URL, "type": "text/html"}},
    })
    .to_string()
    .into_bytes();
    let mut header = error_header(status, code, body.len());
    if status == 401 {
        let _ = header.insert_header("WWW-Authenticate", "Bearer realm=\"mollie-gateway admin\"");
    }
    if let Some(methods) = allow {
        let _ = header.insert_header("Allow", methods);
    }
    into_response(header, body)
}

fn into_response(header: ResponseHeader, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut resp = Response::new(body);
    *resp.status_mut() = header.status;
    *resp.headers_mut() = header.headers.clone();
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("m%2F1").as_deref(), Some("m/1"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("bad%zz"), None);
    }

    #[test]
    fn json_errors_never_echo_values() {
        let e = serde_json::from_slice::<PutMerchant>(br#""refresh_secretvalue""#).unwrap_err();
        let Failure::BadRequest(d) = body_error(e) else {
            panic!()
        };
        assert!(!d.contains("secretvalue"), "{d}");
        let e = serde_json::from_slice::<PutMerchant>(br#"{"refresh_tokn":"x"}"#).unwrap_err();
        let Failure::BadRequest(d) = body_error(e) else {
            panic!()
        };
        assert!(d.contains("unknown field `refresh_tokn`"), "{d}");
    }

    #[test]
    fn errors_have_mollies_shape() {
        let resp = failure(Failure::MethodNotAllowed("GET"));
        assert_eq!(resp.status(), 405);
        assert_eq!(resp.headers()["allow"], "GET");
        assert_eq!(
            resp.headers()["x-gateway-error"],
            "admin_method_not_allowed"
        );
        let v: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(v["title"], "Method Not Allowed");
        assert_eq!(
            resp.headers()["content-length"],
            resp.body().len().to_string()
        );
    }
}
