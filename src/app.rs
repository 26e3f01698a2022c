//! Wiring: settings in, a ready pingora `Server` (or a token manager for the CLI) out.
//!
//! Owns: the translation of our settings into pingora's `ServerConf` (the only place that
//! knows pingora's configuration), and the asynchronous set-up done before pingora starts its
//! own runtimes (store load, first DNS resolution) on a short-lived runtime.
//! Must not: parse the command line (main.rs) or serve anything itself.

use crate::admin::{Admin, AdminApi, Onboarding};
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::oauth::HttpTokenEndpoint;
use crate::proxy::{Gateway, ProxyListener, Upstreams};
use crate::store::file::FileStore;
use crate::store::CredentialStore;
use crate::tokens::{RefresherService, TokenManager, TokenPolicy};
use crate::upstream::{Endpoint, ResolverService};
use pingora::connectors::http::Connector;
use pingora::listeners::tls::TlsSettings;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use std::sync::Arc;
use std::time::Duration;

/// How long start-up waits for the first DNS answer before going on without it.
pub const INITIAL_RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A start-up failure, for `main` to print. Never contains a secret.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

/// pingora's server configuration, from ours.
pub fn server_conf(s: &Settings) -> ServerConf {
    ServerConf {
        threads: s.server.threads,
        grace_period_seconds: Some(s.server.grace_period_secs),
        graceful_shutdown_timeout_seconds: Some(s.server.graceful_shutdown_timeout_secs),
        upstream_keepalive_pool_size: s.upstream.keepalive_pool_size,
        ca_file: Some(s.upstream.ca_file.clone()).filter(|f| !f.is_empty()),
        upgrade_sock: s.server.upgrade_sock.clone(),
        pid_file: s.server.pid_file.clone(),
        ..ServerConf::default()
    }
}

/// What the server and the CLI share: endpoints, metrics, store and token manager.
pub struct Parts {
    pub settings: Settings,
    pub upstream: Arc<Endpoint>,
    pub token_endpoint: Arc<Endpoint>,
    pub metrics: Arc<Metrics>,
    pub store: Arc<dyn CredentialStore>,
    pub tokens: TokenManager,
}

impl Parts {
    /// Opens the store and builds the token manager; no I/O beyond reading the store file.
    pub fn new(settings: Settings, conf: &ServerConf) -> Result<Parts, StartError> {
        let upstream = Endpoint::parse(&settings.upstream.base_url)
            .map_err(|e| StartError(format!("upstream.base_url: {e}")))?;
        let token_endpoint = Endpoint::parse(&settings.upstream.token_url)
            .map_err(|e| StartError(format!("upstream.token_url: {e}")))?;
        let store: Arc<dyn CredentialStore> = Arc::new(
            FileStore::open(&settings.store.path)
                .map_err(|e| StartError(format!("store.path: {e}")))?,
        );
        let metrics = Arc::new(Metrics::default());
        let connector = Connector::new(Some(
            pingora::connectors::ConnectorOptions::from_server_conf(conf),
        ));
        let endpoint = Arc::new(HttpTokenEndpoint::new(
            &settings,
            token_endpoint.clone(),
            connector,
        ));
        let policy = TokenPolicy::from_settings(&settings).map_err(StartError)?;
        let tokens = TokenManager::new(endpoint, store.clone(), policy, metrics.clone());
        Ok(Parts {
            settings,
            upstream,
            token_endpoint,
            metrics,
            store,
            tokens,
        })
    }

    /// First DNS resolution of both endpoints (bounded; failures are logged, not fatal:
    /// the resolver service keeps trying) and the store load.
    pub async fn prepare(&self) -> Result<usize, StartError> {
        for (key, ep) in [
            ("upstream.base_url", &self.upstream),
            ("upstream.token_url", &self.token_endpoint),
        ] {
            match tokio::time::timeout(INITIAL_RESOLVE_TIMEOUT, ep.resolve()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(key, error = %e, "DNS failed at start-up; retrying in the background")
                }
                Err(_) => {
                    tracing::warn!(key, host = %ep.host, "DNS timed out at start-up; retrying in the background")
                }
            }
        }
        self.tokens
            .load()
            .await
            .map_err(|e| StartError(format!("store.path: {e}")))
    }
}

/// Builds the whole server: proxy service plus background services. The caller runs it.
pub fn build_server(settings: Settings, upgrade: bool) -> Result<Server, StartError> {
    let conf = server_conf(&settings);
    let listen = settings.server.listen.clone();
    check_bindable("server.listen", &listen, upgrade)?;
    check_bindable(
        "server.admin_listen",
        &settings.server.admin_listen,
        upgrade,
    )?;
    let parts = Parts::new(settings, &conf)?;
    let setup = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StartError(format!("cannot start a runtime: {e}")))?;
    let merchants = setup.block_on(parts.prepare())?;
    drop(setup);
    let s = &parts.settings;
    if let Some(hint) = s.oauth_setup_hint() {
        tracing::warn!("{hint}; until then proxied requests are answered 503 oauth_misconfigured");
    }

    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    let upstreams = Upstreams::new(Some(
        pingora::connectors::ConnectorOptions::from_server_conf(&server.configuration),
    ));
    let gateway = Gateway::new(
        parts.tokens.clone(),
        parts.upstream.clone(),
        s,
        parts.metrics.clone(),
        upstreams,
    )
    .map_err(StartError)?;
    let listener = ProxyListener::new(
        Arc::new(gateway),
        s.server.max_connections,
        s.server.header_timeout(),
    );
    let mut proxy = Service::new("mollie-gateway proxy".to_string(), listener);
    if s.server.tls_cert.is_empty() {
        proxy.add_tcp(&listen);
    } else {
        // HTTPS with HTTP/2 and HTTP/1.1 offered through ALPN.
        let mut tls = TlsSettings::intermediate(&s.server.tls_cert, &s.server.tls_key)
            .map_err(|e| StartError(format!("server.tls_cert/tls_key: {e}")))?;
        tls.enable_h2();
        proxy.add_tls_with_settings(&listen, None, tls);
    }
    server.add_service(proxy);
    let admin = Admin {
        metrics: parts.metrics.clone(),
        store: parts.store.clone(),
        proxy_addr: listen
            .parse()
            .map_err(|_| StartError(format!("server.listen {listen} is not ip:port")))?,
        endpoints: vec![
            ("upstream.base_url", parts.upstream.clone()),
            ("upstream.token_url", parts.token_endpoint.clone()),
        ],
        api: AdminApi::new(s, parts.tokens.clone(), parts.store.clone()),
        onboarding: Onboarding::new(s, parts.tokens.clone()).map_err(StartError)?,
    };
    let mut admin = Service::new("mollie-gateway admin".to_string(), admin.into_service());
    admin.add_tcp(&s.server.admin_listen);
    server.add_service(admin);
    server.add_service(background_service(
        "resolver",
        ResolverService {
            endpoints: vec![parts.upstream.clone(), parts.token_endpoint.clone()],
        },
    ));
    if s.oauth.background_refresh {
        server.add_service(background_service(
            "refresher",
            RefresherService {
                tokens: parts.tokens.clone(),
            },
        ));
    }
    tracing::info!(
        listen = %listen,
        upstream = %s.upstream.base_url,
        store = %s.store.path.display(),
        merchants,
        "mollie-gateway starting"
    );
    Ok(server)
}

/// A clear start-up error for a listen address already in use, instead of pingora's panic.
fn check_bindable(key: &str, addr: &str, upgrade: bool) -> Result<(), StartError> {
    if upgrade {
        return Ok(()); // the old process holds the socket and hands it over
    }
    std::net::TcpListener::bind(addr)
        .map(drop)
        .map_err(|e| StartError(format!("{key} {addr}: cannot listen: {e}")))
}
