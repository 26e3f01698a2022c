//! The admin listener (`server.admin_listen`), its own pingora service so that it stays
//! responsive under proxy load.
//!
//! Endpoints:
//!
//! | method and path | auth | does |
//! |---|---|---|
//! | `GET /metrics` | none | Prometheus text format of every gateway metric |
//! | `GET /healthz` | none | 200 while the process serves |
//! | `GET /readyz` | none | 200 when the credential store is readable and the proxy listener accepts connections, 503 (with the reason) otherwise |
//! | `GET /admin/merchants` | bearer `admin.token` | every merchant's state (never a token) |
//! | `GET /admin/merchants/{id}` | bearer `admin.token` | one merchant's state |
//! | `PUT /admin/merchants/{id}` | bearer `admin.token` | store a refresh token, or exchange an authorization code |
//! | `DELETE /admin/merchants/{id}` | bearer `admin.token` | forget a merchant |
//! | `POST /admin/merchants/{id}/refresh` | bearer `admin.token` | refresh its access token now |
//! | `GET /oauth/connect?merchant=ID` | none (the signed `state` protects the flow) | 302 to Mollie's authorize page |
//! | `GET /oauth/callback?code=…&state=…` | none (the signed `state`) | verify, exchange the code, store the merchant |
//!
//! With `admin.token` empty every `/admin/…` path answers 404. The `/admin/…` API lives in
//! [`crate::admin_api`], the `/oauth/…` pages in [`crate::onboarding`]; this module routes
//! and owns the helpers they share (bounded body reading, responses with `Content-Length`,
//! which pingora's `ServeHttp` does not add).
//!
//! Must not: expose a token or secret, or share a runtime with the proxy. Bind the listener
//! to a private address: metrics and health need no credentials.

use crate::admin_api::AdminApi;
use crate::metrics::Metrics;
use crate::onboarding::Onboarding;
use crate::store::CredentialStore;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;
use std::time::Duration;

/// The largest request body the admin listener accepts (`PUT /admin/merchants/{id}`).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How much of an over-large or unwanted body is read and discarded before answering, so the
/// answer is not lost to a connection reset; beyond it the connection is closed.
const DRAIN_LIMIT_BYTES: usize = 1024 * 1024;
/// The whole deadline for reading a request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub store: Arc<dyn CredentialStore>,
    /// The proxy listener, probed by `/readyz`.
    pub proxy_addr: std::net::SocketAddr,
    /// `/admin/…`, behind `admin.token`.
    pub api: AdminApi,
    /// `/oauth/connect` and `/oauth/callback`.
    pub onboarding: Onboarding,
}

/// A complete response with `Content-Length` and `Cache-Control: no-store`.
pub(crate) fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("Content-Type", content_type)
        .header("Content-Length", body.len())
        .header("Cache-Control", "no-store")
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

pub(crate) fn json(status: StatusCode, value: serde_json::Value) -> Response<Vec<u8>> {
    reply(status, "application/json", value.to_string().into_bytes())
}

/// Why a request body was not read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BodyError {
    TooLarge,
    Unreadable(String),
}

/// Reads the request body, at most `limit` bytes kept, in a loop bounded in bytes and time.
/// An over-large body is read on (and dropped) up to 1 MiB, so that the 400 reaches the
/// caller; past that the connection is closed after the answer.
pub(crate) async fn read_body(
    session: &mut ServerSession,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let mut too_large = declared.is_some_and(|n| n > limit as u64);
    let mut body = Vec::new();
    let mut seen = 0usize;
    let read = async {
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    seen = seen.saturating_add(chunk.len());
                    too_large |= seen > limit;
                    if !too_large {
                        body.extend_from_slice(&chunk);
                    } else if seen > DRAIN_LIMIT_BYTES {
                        return Ok(false);
                    }
                }
                Ok(None) => return Ok(true),
                Err(e) => return Err(BodyError::Unreadable(e.etype().as_str().to_string())),
            }
        }
    };
    let finished = match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(finished)) => finished,
        Ok(Err(e)) => {
            session.set_keepalive(None);
            return Err(e);
        }
        Err(_) => {
            session.set_keepalive(None);
            return Err(BodyError::Unreadable("timed out".into()));
        }
    };
    if !finished {
        session.set_keepalive(None);
    }
    if too_large {
        return Err(BodyError::TooLarge);
    }
    Ok(body)
}

/// Reads and drops whatever body came with a request that is answered without it.
pub(crate) async fn discard_body(session: &mut ServerSession) {
    let _ = read_body(session, 0).await;
}

impl Admin {
    async fn readiness(&self) -> Result<(), String> {
        self.store.check().await.map_err(|e| e.to_string())?;
        let probe = tokio::net::TcpStream::connect(self.proxy_addr);
        match tokio::time::timeout(Duration::from_secs(1), probe).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!(
                "proxy listener {} not accepting: {e}",
                self.proxy_addr
            )),
            Err(_) => Err(format!(
                "proxy listener {} not accepting in time",
                self.proxy_addr
            )),
        }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let path = req.uri.path();
        if path == "/admin" || path.starts_with("/admin/") {
            return self.api.handle(session).await;
        }
        if path.starts_with("/oauth/") {
            return self.onboarding.handle(session).await;
        }
        let get = req.method == http::Method::GET;
        match (get, path) {
            (true, "/metrics") => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.metrics.render().into_bytes(),
            ),
            (true, "/healthz") => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
            (true, "/readyz") => match self.readiness().await {
                Ok(()) => json(StatusCode::OK, serde_json::json!({"status": "ready"})),
                Err(reason) => json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"status": "not ready", "reason": reason}),
                ),
            },
            (false, "/metrics" | "/healthz" | "/readyz") => json(
                StatusCode::METHOD_NOT_ALLOWED,
                serde_json::json!({"status": 405, "title": "Method Not Allowed"}),
            ),
            _ => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"status": 404, "title": "Not Found"}),
            ),
        }
    }
}
