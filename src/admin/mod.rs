//! The admin listener (`server.admin_listen`): one axum router, served by its own pingora
//! service so that it stays responsive under proxy load and takes part in `run -u`.
//!
//! | method | path | auth | does |
//! |---|---|---|---|
//! | `GET` | `/metrics` | none | Prometheus text format of every gateway metric |
//! | `GET` | `/healthz` | none | 200 while the process serves |
//! | `GET` | `/readyz` | none | 200 `{"status":"ready"}` when the credential store reads (and its merchants were loaded once), the upstream and token endpoint hosts have resolved at least once and the proxy listener accepts; 200 `{"status":"degraded","reason":…}` while a shared store (Redis) is unreachable after that; else 503 `{"status":"not ready","reason":…}` |
//! | `GET` | `/admin/merchants` | bearer `admin.token` | every merchant's state (never a token) |
//! | `GET` | `/admin/merchants/{id}` | bearer `admin.token` | one merchant's state |
//! | `PUT` | `/admin/merchants/{id}` | bearer `admin.token` | store a refresh token, exchange an authorization code, or store a static `api_key` / `org_token` |
//! | `DELETE` | `/admin/merchants/{id}` | bearer `admin.token` | forget a merchant |
//! | `POST` | `/admin/merchants/{id}/refresh` | bearer `admin.token` | refresh its access token now |
//! | `GET` | `/oauth/connect?merchant=ID` | none (the signed `state` protects the flow) | 302 to Mollie's authorize page |
//! | `GET` | `/oauth/callback?code=…&state=…` | none (the signed `state`) | verify, exchange the code, store the merchant |
//!
//! With `server.oauth_listen` set, the two `/oauth/…` pages are served only on that listener
//! ([`oauth_router`]: nothing else there, TLS like the proxy when `server.tls_cert` is set),
//! and the admin listener answers them 404: merchants' browsers reach the OAuth pages while
//! metrics and the admin API stay on a private address.
//!
//! `HEAD` is answered wherever `GET` is. Every other answer the listener makes is an
//! [`AdminError`], in Mollie's error shape with `X-Gateway-Error`: an unknown path 404
//! `admin_not_found`, another method 405 `admin_method_not_allowed` with `Allow`, any
//! rejected input 400 `admin_bad_request`; under `/admin/` the bearer check comes first
//! (401 `admin_unauthorized`), and with `admin.token` empty every `/admin/…` path is 404. The
//! `/oauth/…` pages face a browser and answer HTML, errors included.
//!
//! Layout: [`api`] (`/admin/…`), [`onboarding`] (`/oauth/…`) and its signed [`state`],
//! [`error`] (the one error type), [`serve`] (pingora service → hyper, lingering body reads);
//! this module builds the router and answers `/metrics`, `/healthz` and `/readyz`.
//! Must not: expose a token or secret, or share a runtime with the proxy. Bind the listener
//! to a private address: metrics and health need no credentials.

pub mod api;
pub mod error;
pub mod onboarding;
pub mod serve;
pub mod state;

pub use api::AdminApi;
pub use error::AdminError;
pub use onboarding::Onboarding;
pub use serve::AdminService;

use crate::listen::BoundAddr;
use crate::metrics::Metrics;
use crate::proxy::Live;
use crate::store::CredentialStore;
use crate::tokens::TokenManager;
use crate::upstream::Endpoint;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{middleware, Router};
use http::{HeaderValue, StatusCode};
use std::sync::Arc;
use std::time::Duration;

/// How long `/readyz` waits for the proxy listener to accept a probe connection.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Everything the admin listener serves.
pub struct Admin {
    pub metrics: Arc<Metrics>,
    /// Read by `/readyz` ([`CredentialStore::check`]).
    pub store: Arc<dyn CredentialStore>,
    /// The proxy listener's bound address, probed by `/readyz`.
    pub proxy_addr: BoundAddr,
    /// The upstream and token endpoints with their config keys: `/readyz` wants each host
    /// resolved at least once.
    pub endpoints: Vec<(&'static str, Arc<Endpoint>)>,
    /// `/readyz`: loaded once? (and loads, while not); the server's token manager.
    pub tokens: Option<TokenManager>,
    /// `/admin/…`, behind `admin.token`.
    pub api: AdminApi,
    /// `/oauth/connect` and `/oauth/callback`; `None` when they have their own listener
    /// (`server.oauth_listen`, [`oauth_router`]).
    pub onboarding: Option<Onboarding>,
    /// The running clients (reloaded on SIGHUP): `/readyz` says when none is configured.
    pub live: Arc<Live>,
}

/// What `/metrics`, `/healthz` and `/readyz` read.
struct Health {
    metrics: Arc<Metrics>,
    store: Arc<dyn CredentialStore>,
    proxy_addr: BoundAddr,
    endpoints: Vec<(&'static str, Arc<Endpoint>)>,
    live: Arc<Live>,
    /// `None`: readiness is the store's check alone (no degraded state).
    tokens: Option<TokenManager>,
}

impl Admin {
    /// The whole admin router; every response gets `Cache-Control: no-store`.
    pub fn router(self) -> Router {
        let health = Arc::new(Health {
            metrics: self.metrics,
            store: self.store,
            proxy_addr: self.proxy_addr,
            endpoints: self.endpoints,
            live: self.live,
            tokens: self.tokens,
        });
        let only_get = || AdminError::allow("GET");
        let mut router = Router::new()
            .route("/metrics", get(metrics).fallback(only_get()))
            .route("/healthz", get(healthz).fallback(only_get()))
            .route("/readyz", get(readyz).fallback(only_get()))
            .with_state(health)
            .merge(self.api.router());
        if let Some(onboarding) = self.onboarding {
            router = router.merge(onboarding.router());
        }
        router
            .fallback(|| async {
                AdminError::NotFound("no such endpoint on the admin listener".into())
            })
            .layer(middleware::from_fn(serve::drain_unread))
            .layer(middleware::map_response(no_store))
    }

    /// The admin listener's pingora application.
    pub fn into_service(self) -> AdminService {
        AdminService::new(self.router())
    }
}

/// The OAuth listener's router (`server.oauth_listen`): the two `/oauth/…` pages and nothing
/// else (no metrics, health or admin API); every response gets `Cache-Control: no-store`.
pub fn oauth_router(onboarding: Onboarding) -> Router {
    onboarding
        .router()
        .fallback(|| async { AdminError::NotFound("no such page".into()) })
        .layer(middleware::from_fn(serve::drain_unread))
        .layer(middleware::map_response(no_store))
}

async fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .entry(http::header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

async fn metrics(State(h): State<Arc<Health>>) -> Response {
    let content_type = [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")];
    (content_type, h.metrics.render()).into_response()
}

async fn healthz() -> Response {
    json(StatusCode::OK, serde_json::json!({"status": "ok"}))
}

async fn readyz(State(h): State<Arc<Health>>) -> Response {
    let degraded = match h.store_state().await {
        Ok(degraded) => degraded,
        Err(reason) => return not_ready(reason),
    };
    let (status, mut body) = match (h.readiness().await, degraded) {
        (Ok(()), None) => (StatusCode::OK, serde_json::json!({"status": "ready"})),
        (Ok(()), Some(reason)) => (
            StatusCode::OK,
            serde_json::json!({"status": "degraded", "reason": reason}),
        ),
        (Err(reason), _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "not ready", "reason": reason}),
        ),
    };
    if h.live.clients.load().is_open() {
        // Ready all the same (the embedded default serves at once), but said.
        body["warning"] = "no [clients] configured: any caller may act for every merchant".into();
    }
    json(status, body)
}

fn not_ready(reason: String) -> Response {
    json(
        StatusCode::SERVICE_UNAVAILABLE,
        serde_json::json!({"status": "not ready", "reason": reason}),
    )
}

fn json(status: StatusCode, value: serde_json::Value) -> Response {
    let content_type = [(http::header::CONTENT_TYPE, "application/json")];
    (status, content_type, value.to_string()).into_response()
}

impl Health {
    /// The store: `Ok(None)` fine, `Ok(Some(reason))` degraded (a shared store unreachable
    /// after the merchants were loaded once: cached tokens serve), `Err` not ready. While the
    /// merchants were never loaded (Redis down at start-up), each probe tries to load them.
    async fn store_state(&self) -> Result<Option<String>, String> {
        let checked = self.store.check().await.map_err(|e| e.to_string());
        self.metrics.store_up.set(i64::from(checked.is_ok()));
        let Some(tokens) = &self.tokens else {
            return checked.map(|()| None);
        };
        if !tokens.loaded() {
            checked?;
            let loaded = tokens.load().await;
            return loaded
                .map(|_| None)
                .map_err(|e| format!("loading merchants: {e}"));
        }
        match checked {
            Err(reason) if self.store.shared() => Ok(Some(reason)),
            other => other.map(|()| None),
        }
    }

    /// Ready: both endpoint hosts have resolved, the proxy accepts (the store: `store_state`).
    async fn readiness(&self) -> Result<(), String> {
        if let Some((key, ep)) = self.endpoints.iter().find(|(_, ep)| !ep.has_resolved()) {
            return Err(format!(
                "{key}: host {} has not resolved yet (retried every {} s)",
                ep.host,
                crate::upstream::RESOLVE_RETRY.as_secs()
            ));
        }
        let Some(proxy_addr) = self.proxy_addr.get() else {
            return Err("proxy listener not bound yet".into());
        };
        let probe = tokio::net::TcpStream::connect(proxy_addr);
        match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("proxy listener {proxy_addr} not accepting: {e}")),
            Err(_) => Err(format!("proxy listener {proxy_addr} not accepting in time")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::file::FileStore;

    #[tokio::test]
    async fn readiness_wants_every_host_resolved_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path().join("creds.json")).unwrap();
        let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let literal = Endpoint::parse("http://127.0.0.1:1/oauth2/tokens").unwrap();
        let mut health = Health {
            metrics: Arc::new(Metrics::default()),
            store: Arc::new(store),
            proxy_addr: BoundAddr::known(proxy.local_addr().unwrap()),
            endpoints: vec![("upstream.token_url", literal)],
            live: Arc::new(Live::from_settings(&Default::default(), &Metrics::default()).unwrap()),
            tokens: None,
        };
        assert_eq!(health.readiness().await, Ok(()));

        let unresolved = Endpoint::parse("http://no-such-host.invalid").unwrap();
        health.endpoints.push(("upstream.base_url", unresolved));
        let reason = health.readiness().await.unwrap_err();
        assert!(
            reason.starts_with("upstream.base_url: host no-such-host.invalid"),
            "{reason}"
        );
    }
}
