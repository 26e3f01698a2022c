//! The admin listener (`server.admin_listen`), its own pingora service so that it stays
//! responsive under proxy load.
//!
//! Endpoints (no authentication; bind it to a private address):
//! - `GET /metrics`: Prometheus text format of every gateway metric.
//! - `GET /healthz`: 200 while the process serves.
//! - `GET /readyz`: 200 when the credential store is readable and the proxy listener accepts
//!   connections, 503 (with the reason) otherwise.
//!
//! Must not: expose a token or secret, or share a runtime with the proxy.

use crate::metrics::Metrics;
use crate::store::file::FileStore;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;
use std::time::Duration;

pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub store: Arc<FileStore>,
    /// The proxy listener, probed by `/readyz`.
    pub proxy_addr: std::net::SocketAddr,
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("Content-Type", content_type)
        .header("Content-Length", body.len())
        .header("Cache-Control", "no-store")
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Vec<u8>> {
    reply(status, "application/json", value.to_string().into_bytes())
}

impl Admin {
    async fn readiness(&self) -> Result<(), String> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.check_readable())
            .await
            .map_err(|e| format!("store check failed: {e}"))?
            .map_err(|e| e.to_string())?;
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
        let get = req.method == http::Method::GET;
        match (get, req.uri.path()) {
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
