//! The admin API under `/admin/` on the admin listener, behind `Authorization: Bearer
//! <admin.token>` (a layer over every `/admin/…` path, known or not, compared in constant
//! time). With `admin.token` empty every `/admin/…` path answers 404, as if the API did not
//! exist. The endpoints are listed in [`crate::admin`].
//!
//! Bodies: at most [`MAX_BODY_BYTES`] (axum's body limit), read within [`BODY_TIMEOUT`], and
//! parsed as JSON whatever their `Content-Type` ([`AnyJson`]): `curl -d` sends
//! `application/x-www-form-urlencoded`, and the README's examples must keep working.
//! Errors are [`AdminError`]s.
//! Must not: echo a token, a code or the admin token in a body or a log line.

use super::error::AdminError;
use crate::config::Settings;
use crate::error::GatewayError;
use crate::store::{CredentialKind, CredentialStore, StaticCredential};
use crate::tokens::{MerchantStatus, TokenError, TokenManager};
use crate::types::{MerchantId, RefreshToken, Secret, StaticToken};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use ring::digest::{digest, SHA256};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// The largest request body the admin API accepts (`PUT /admin/merchants/{id}`).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The whole deadline for reading a request body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

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

type Api = State<Arc<AdminApi>>;

/// The body of `PUT /admin/merchants/{id}` (its `Debug` prints the secrets as `***`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutMerchant {
    refresh_token: Option<RefreshToken>,
    authorization_code: Option<Secret>,
    redirect_uri: Option<String>,
    /// A static API key (`live_…`/`test_…`), used as it is.
    api_key: Option<StaticToken>,
    /// A static organization access token (`access_…`), used as it is.
    org_token: Option<StaticToken>,
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

    /// Every `/admin…` route, behind the bearer layer; every path 404 when disabled.
    pub fn router(self) -> Router {
        let Some(digest) = self.token_digest else {
            let disabled = || async { AdminError::NotFound("the admin API is disabled".into()) };
            return Router::new()
                .route("/admin", any(disabled))
                .route("/admin/{*rest}", any(disabled));
        };
        let unknown = || async {
            AdminError::NotFound("no such admin endpoint (see GET /admin/merchants)".into())
        };
        Router::new()
            .route(
                "/admin/merchants",
                get(list).fallback(AdminError::allow("GET")),
            )
            .route(
                "/admin/merchants/{id}",
                get(one)
                    .put(put)
                    .delete(delete)
                    .fallback(AdminError::allow("GET, PUT, DELETE")),
            )
            .route(
                "/admin/merchants/{id}/refresh",
                post(refresh).fallback(AdminError::allow("POST")),
            )
            .route("/admin", any(unknown))
            .route("/admin/{*rest}", any(unknown))
            .route_layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .route_layer(middleware::from_fn_with_state(Arc::new(digest), bearer))
            .with_state(Arc::new(self))
    }

    async fn status(&self, id: &MerchantId) -> Result<MerchantStatus, AdminError> {
        if let Some(status) = self.tokens.status(id) {
            return Ok(status);
        }
        match self.store.get(id).await {
            Ok(Some(m)) => Ok(stored_status(
                id.clone(),
                m.credential_kind(),
                m.revoked,
                m.removing,
            )),
            Ok(None) => Err(not_found(id)),
            Err(e) => Err(GatewayError::StoreUnavailable(e.to_string()).into()),
        }
    }
}

/// The bearer-auth layer: exactly one `Authorization: Bearer <admin.token>` header (scheme
/// case-insensitive), or 401 before the request reaches a handler.
async fn bearer(
    State(expected): State<Arc<[u8; 32]>>,
    req: Request,
    next: Next,
) -> Result<Response, AdminError> {
    let mut values = req.headers().get_all(http::header::AUTHORIZATION).iter();
    let token = match (values.next(), values.next()) {
        (Some(value), None) => {
            let value = value.as_bytes();
            value
                .get(..7)
                .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
                .and_then(|_| value.get(7..))
        }
        _ => None,
    };
    match token {
        Some(token) if bool::from(sha256(token).ct_eq(&*expected)) => Ok(next.run(req).await),
        _ => {
            // The path only: the header's value is never logged.
            tracing::warn!(method = %req.method(), path = req.uri().path(), outcome = "admin_unauthorized", "admin request refused: missing or wrong bearer token");
            Err(AdminError::Unauthorized)
        }
    }
}

/// The `{id}` path segment, percent-decoded, as a merchant id. A malformed `%`-escape is
/// refused (axum's decoding would keep it as text).
struct MerchantPath(MerchantId);

impl<S: Send + Sync> FromRequestParts<S> for MerchantPath {
    type Rejection = AdminError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &S,
    ) -> Result<Self, AdminError> {
        if has_bad_escape(parts.uri.path()) {
            return Err(AdminError::BadRequest(
                "the merchant id in the path has a bad %-escape".into(),
            ));
        }
        let Path(raw) = Path::<String>::from_request_parts(parts, state).await?;
        MerchantId::parse(&raw)
            .map(MerchantPath)
            .map_err(|e| AdminError::BadRequest(format!("the merchant id in the path {e}")))
    }
}

fn has_bad_escape(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    bytes.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            && !bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    })
}

/// A JSON body, whatever its `Content-Type`, within the body limit and [`BODY_TIMEOUT`].
struct AnyJson<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for AnyJson<T> {
    type Rejection = AdminError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AdminError> {
        let bytes = tokio::time::timeout(BODY_TIMEOUT, Bytes::from_request(req, state))
            .await
            .map_err(|_| AdminError::BadRequest("the body did not arrive in time".into()))??;
        serde_json::from_slice(&bytes)
            .map(AnyJson)
            .map_err(body_error)
    }
}

/// A JSON error without echoing values (a misplaced token would be one): field names and
/// positions only.
fn body_error(e: serde_json::Error) -> AdminError {
    let text = e.to_string();
    let named_field = ["unknown field", "missing field", "duplicate field"]
        .iter()
        .any(|p| text.starts_with(p));
    AdminError::BadRequest(if named_field {
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

/// 200 with a JSON body.
fn ok_json<T: serde::Serialize>(value: &T) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec());
    ([(http::header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `GET /admin/merchants`: the cache's view, plus merchants only the store knows (added by
/// the CLI or another process and not used here yet).
async fn list(State(api): Api) -> Result<Response, AdminError> {
    let mut all = api.tokens.statuses();
    let stored = api
        .store
        .list()
        .await
        .map_err(|e| GatewayError::StoreUnavailable(e.to_string()))?;
    for m in stored {
        if all.iter().all(|s| s.id != m.id) {
            all.push(stored_status(
                m.id,
                m.credential_kind,
                m.revoked,
                m.removing,
            ));
        }
    }
    all.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(ok_json(&all))
}

/// `GET /admin/merchants/{id}`.
async fn one(State(api): Api, MerchantPath(id): MerchantPath) -> Result<Response, AdminError> {
    Ok(ok_json(&api.status(&id).await?))
}

/// `PUT /admin/merchants/{id}`: a refresh token, or a code exchanged at once.
async fn put(
    State(api): Api,
    MerchantPath(id): MerchantPath,
    body: Result<AnyJson<PutMerchant>, AdminError>,
) -> Result<Response, AdminError> {
    let action = match &body {
        Ok(AnyJson(PutMerchant {
            authorization_code: Some(_),
            ..
        })) => "add_code",
        Ok(AnyJson(PutMerchant {
            api_key: Some(_), ..
        })) => "add_api_key",
        Ok(AnyJson(PutMerchant {
            org_token: Some(_), ..
        })) => "add_org_token",
        _ => "add_refresh_token",
    };
    let result = match body {
        Ok(AnyJson(body)) => put_merchant(&api, &id, body).await,
        Err(e) => Err(e),
    };
    audit(&id, action, None, result)
}

/// Stores what a `PUT` body gives and answers the merchant's state.
async fn put_merchant(
    api: &AdminApi,
    id: &MerchantId,
    put: PutMerchant,
) -> Result<Response, AdminError> {
    let redirect_uri = put.redirect_uri.filter(|u| !u.is_empty());
    let bad = |d: &str| Err(AdminError::BadRequest(d.into()));
    let given = [
        put.refresh_token.is_some(),
        put.authorization_code.is_some(),
        put.api_key.is_some(),
        put.org_token.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return bad("give exactly one of refresh_token, authorization_code, api_key and org_token");
    }
    let fixed = match (put.api_key, put.org_token) {
        (Some(key), _) => Some((CredentialKind::ApiKey, key)),
        (_, Some(token)) => Some((CredentialKind::OrgToken, token)),
        _ => None,
    };
    if let Some((kind, value)) = fixed {
        if redirect_uri.is_some() {
            return bad("redirect_uri goes only with authorization_code");
        }
        let credential = StaticCredential::parse(kind, value.expose())
            .map_err(|e| AdminError::BadRequest(format!("{}: {e}", kind.as_str())))?;
        let added = api.tokens.add_static(id, credential).await;
        added.map_err(|e| token_error(id, e))?;
        return Ok(ok_json(&api.status(id).await?));
    }
    match (put.refresh_token, put.authorization_code) {
        (Some(token), None) => {
            if token.is_empty() {
                return bad("refresh_token is empty");
            }
            if redirect_uri.is_some() {
                return bad("redirect_uri goes only with authorization_code");
            }
            let added = api.tokens.add_refresh_token(id, token).await;
            added.map_err(|e| token_error(id, e))?;
        }
        (None, Some(code)) => {
            if code.is_empty() {
                return bad("authorization_code is empty");
            }
            if let Some(uri) = &redirect_uri {
                check_redirect_uri(uri)?;
            }
            let uri = redirect_uri.or_else(|| api.default_redirect_uri.clone());
            let added = api.tokens.add_authorization_code(id, &code, uri.as_deref());
            added.await.map_err(|e| token_error(id, e))?;
        }
        _ => {
            return bad(
                "give exactly one of refresh_token, authorization_code, api_key and org_token",
            )
        }
    }
    Ok(ok_json(&api.status(id).await?))
}

/// `?keep_authorization=true|false` of `DELETE /admin/merchants/{id}` (the only parameter).
struct KeepAuthorization(bool);

impl<S: Send + Sync> FromRequestParts<S> for KeepAuthorization {
    type Rejection = AdminError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _: &S,
    ) -> Result<Self, AdminError> {
        let query = parts.uri.query().unwrap_or("");
        let mut keep = false;
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            keep = match (name.as_ref(), value.as_ref()) {
                ("keep_authorization", "true") => true,
                ("keep_authorization", "false") => false,
                _ => {
                    return Err(AdminError::BadRequest(
                        "the only query parameter is keep_authorization=true|false".into(),
                    ))
                }
            };
        }
        Ok(KeepAuthorization(keep))
    }
}

/// `DELETE /admin/merchants/{id}`: revoke at Mollie (unless `?keep_authorization=true`),
/// then forget; when Mollie cannot be reached the merchant is no longer served and the
/// revocation is retried (`revoked_at_mollie: false`).
async fn delete(
    State(api): Api,
    MerchantPath(id): MerchantPath,
    keep: Result<KeepAuthorization, AdminError>,
) -> Result<Response, AdminError> {
    let removal = match keep {
        Ok(KeepAuthorization(keep)) => api.tokens.remove_merchant(&id, !keep).await,
        Err(e) => return audit(&id, "remove", None, Err(e)),
    };
    let removal = match removal {
        Ok(Some(removal)) => removal,
        Ok(None) => return audit(&id, "remove", None, Err(not_found(&id))),
        Err(e) => return audit(&id, "remove", None, Err(token_error(&id, e))),
    };
    let body = serde_json::json!({
        "id": id,
        "removed": true,
        "revoked_at_mollie": removal.outcome.revoked_at_mollie(),
    });
    audit(
        &id,
        "remove",
        Some(removal.outcome.label()),
        Ok(ok_json(&body)),
    )
}

/// `POST /admin/merchants/{id}/refresh`: one token endpoint call now.
async fn refresh(State(api): Api, MerchantPath(id): MerchantPath) -> Result<Response, AdminError> {
    let result = match api.tokens.refresh_now(&id).await {
        // Not cached yet: `get` loads it from the store and, holding no token, refreshes.
        Err(TokenError::UnknownMerchant) => api.tokens.get(&id).await.map(drop),
        other => other.map(drop),
    };
    let answer = match result {
        Ok(()) => api.status(&id).await.map(|s| ok_json(&s)),
        Err(TokenError::UnknownMerchant) => Err(not_found(&id)),
        Err(e) => Err(token_error(&id, e)),
    };
    audit(&id, "refresh", None, answer)
}

/// Logs one admin action (`add_refresh_token`, `add_code`, `remove`, `refresh`) with its
/// merchant, its outcome (`ok` or the error's code), and for a removal the revocation's
/// outcome: an audit trail that never holds a secret (error details are typed and token-free).
fn audit(
    id: &MerchantId,
    action: &'static str,
    revocation: Option<&'static str>,
    result: Result<Response, AdminError>,
) -> Result<Response, AdminError> {
    let revocation = revocation.unwrap_or("-");
    match &result {
        Ok(_) => tracing::info!(merchant = %id, action, outcome = "ok", revocation, "admin action"),
        Err(e) => tracing::warn!(
            merchant = %id,
            action,
            outcome = e.code(),
            status = e.status(),
            revocation,
            "admin action failed"
        ),
    }
    result
}

fn stored_status(
    id: MerchantId,
    credential_kind: CredentialKind,
    revoked: bool,
    removing: bool,
) -> MerchantStatus {
    let state = match (removing, revoked) {
        (true, _) => "removing",
        (false, true) => "revoked",
        (false, false) => "active",
    };
    MerchantStatus {
        id,
        credential_kind,
        state,
        access_token_expires_at: None,
        last_refresh_at: None,
        last_refresh_outcome: None,
    }
}

fn token_error(id: &MerchantId, e: TokenError) -> AdminError {
    AdminError::Gateway(e.to_gateway(id))
}

fn not_found(id: &MerchantId) -> AdminError {
    AdminError::NotFound(format!("no merchant {id} is stored"))
}

fn check_redirect_uri(uri: &str) -> Result<(), AdminError> {
    match url::Url::parse(uri) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Ok(()),
        _ => Err(AdminError::BadRequest(
            "redirect_uri must be an http:// or https:// URL".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_escapes_are_found() {
        assert!(!has_bad_escape("/admin/merchants/m%2F1"));
        assert!(!has_bad_escape("/admin/merchants/plain"));
        assert!(has_bad_escape("/admin/merchants/bad%2"));
        assert!(has_bad_escape("/admin/merchants/bad%zz/refresh"));
    }

    #[test]
    fn json_errors_never_echo_values() {
        let e = serde_json::from_slice::<PutMerchant>(br#""refresh_secretvalue""#).unwrap_err();
        let AdminError::BadRequest(d) = body_error(e) else {
            panic!()
        };
        assert!(!d.contains("secretvalue"), "{d}");
        let e = serde_json::from_slice::<PutMerchant>(br#"{"refresh_tokn":"x"}"#).unwrap_err();
        let AdminError::BadRequest(d) = body_error(e) else {
            panic!()
        };
        assert!(d.contains("unknown field `refresh_tokn`"), "{d}");
    }
}
