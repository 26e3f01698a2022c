//! Wiring: settings in, a ready pingora `Server` (or a token manager for the CLI) out.
//!
//! Owns: the translation of our settings into pingora's `ServerConf` (the only place that
//! knows pingora's configuration), and the asynchronous set-up done before pingora starts its
//! own runtimes (store load, first DNS resolution) on a short-lived runtime.
//! Must not: parse the command line (main.rs) or serve anything itself.

use crate::admin::{oauth_router, Admin, AdminApi, AdminService, Onboarding};
use crate::config::{Settings, StoreBackend};
use crate::listen::{BoundAddr, Listening, Socket};
use crate::metrics::Metrics;
use crate::oauth::{HttpTokenEndpoint, TokenEndpoint, TokenEndpointService};
use crate::proxy::{Gateway, Live, ProxyListener, Upstreams};
use crate::reload::{ConfigSource, ReloadService};
use crate::store::crypto::{Keyring, Sealing};
use crate::store::file::FileStore;
use crate::store::redis::{client as redis_client, RedisStore};
use crate::store::{CredentialStore, StoreError};
use crate::tokens::{
    RefresherService, RevokerService, StoreEventsService, TokenManager, TokenPolicy,
};
use crate::upstream::{Endpoint, ResolverService};
use pingora::connectors::http::Connector;
use pingora::listeners::tls::TlsSettings;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use std::path::Path;
use std::sync::{Arc, Mutex};
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
    /// For the CLI: opens the store and builds the token manager, whose token calls run on
    /// the caller's runtime (the CLI has one); no I/O beyond reading the store file.
    pub fn new(settings: Settings, conf: &ServerConf) -> Result<Parts, StartError> {
        Parts::build(settings, conf, |http| (http, ())).map(|(parts, ())| parts)
    }

    /// For the server: as [`Parts::new`], but every token call goes to the returned
    /// [`TokenEndpointService`] (register it: it is their one runtime, `oauth/home.rs`).
    pub fn with_token_home(
        settings: Settings,
        conf: &ServerConf,
    ) -> Result<(Parts, TokenEndpointService), StartError> {
        Parts::build(settings, conf, |http| {
            let (client, service) = TokenEndpointService::new(http);
            (Arc::new(client), service)
        })
    }

    /// `route` decides where token calls go, given the HTTP client (and may return a
    /// service that serves them).
    fn build<T>(
        settings: Settings,
        conf: &ServerConf,
        route: impl FnOnce(Arc<dyn TokenEndpoint>) -> (Arc<dyn TokenEndpoint>, T),
    ) -> Result<(Parts, T), StartError> {
        let upstream = Endpoint::parse(&settings.upstream.base_url)
            .map_err(|e| StartError(format!("upstream.base_url: {e}")))?;
        let token_endpoint = Endpoint::parse(&settings.upstream.token_url)
            .map_err(|e| StartError(format!("upstream.token_url: {e}")))?;
        let store = open_store(&settings)?;
        let metrics = Arc::new(Metrics::default());
        let connector = Connector::new(Some(
            pingora::connectors::ConnectorOptions::from_server_conf(conf),
        ));
        let (endpoint, routed) = route(Arc::new(HttpTokenEndpoint::new(
            &settings,
            token_endpoint.clone(),
            connector,
        )));
        let policy = TokenPolicy::from_settings(&settings).map_err(StartError)?;
        let tokens = TokenManager::new(endpoint, store.clone(), policy, metrics.clone());
        let parts = Parts {
            settings,
            upstream,
            token_endpoint,
            metrics,
            store,
            tokens,
        };
        Ok((parts, routed))
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
        match (self.tokens.load().await, self.settings.store.backend) {
            (Ok(n), _) => Ok(n),
            (Err(e), StoreBackend::File) => Err(StartError(format!("store.path: {e}"))),
            // Waiting does not fix a wrong password: refuse, naming the key (not the URL).
            (Err(e @ StoreError::Refused(_)), StoreBackend::Redis) => {
                Err(StartError(e.to_string()))
            }
            // Redis may come later: merchants are then read from it on first use.
            (Err(e), StoreBackend::Redis) => {
                tracing::error!(error = %e, "cannot load merchants from Redis at start-up; starting without them (/readyz says why)");
                Ok(0)
            }
        }
    }
}

/// The keyring of `store.encryption_key_file`, or plaintext (warned) without one.
fn sealing(settings: &Settings) -> Result<Sealing, StartError> {
    let file = &settings.store.encryption_key_file;
    if file.is_empty() {
        if let Some(warning) = settings.plaintext_store_warning() {
            tracing::warn!("{warning}");
        }
        return Ok(Sealing::default());
    }
    let keyring = Keyring::load(Path::new(file)).map_err(|e| StartError(e.to_string()))?;
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(file).map_or(0, |m| m.permissions().mode());
    if mode & 0o077 != 0 {
        tracing::warn!(
            key_file = %file,
            mode = format!("{:o}", mode & 0o777),
            "store.encryption_key_file is readable by other users: make it 0400 or 0600"
        );
    }
    tracing::info!(
        key_id = keyring.current_id(),
        "credentials at rest are encrypted"
    );
    Ok(Sealing::new(Some(Arc::new(keyring))))
}

/// The backend `store.backend` names. Opening Redis does not connect: an unreachable Redis
/// does not stop the start (readiness reports it).
pub fn open_store(settings: &Settings) -> Result<Arc<dyn CredentialStore>, StartError> {
    let s = &settings.store;
    Ok(match s.backend {
        StoreBackend::File => Arc::new(
            FileStore::open_sealed(&s.path, sealing(settings)?)
                .map_err(|e| StartError(format!("store.path: {e}")))?,
        ),
        StoreBackend::Redis => {
            let ca = Some(Path::new(&s.redis_ca_file)).filter(|_| !s.redis_ca_file.is_empty());
            let client = redis_client(&s.redis_url, ca).map_err(|e| StartError(e.to_string()))?;
            Arc::new(
                RedisStore::open_client(
                    client,
                    &s.key_prefix,
                    &s.fallback_path,
                    sealing(settings)?,
                )
                .map_err(|e| StartError(format!("store: {e}")))?,
            )
        }
    })
}

/// A store named on the command line (`store migrate`): `file:PATH`, `file` (`store.path`), a
/// `redis://`, `rediss://` or `redis+unix://` URL, or `redis` (`store.redis_url`: keeps a
/// password out of `ps`). The other `store.*` keys (key prefix, CA file, fallback path, key
/// file) come from the configuration. Errors never show a URL (it may hold a password).
pub fn open_store_named(
    settings: &Settings,
    spec: &str,
) -> Result<Arc<dyn CredentialStore>, StartError> {
    let s = &settings.store;
    if spec == "file" || spec.starts_with("file:") {
        let path = spec
            .strip_prefix("file:")
            .map_or(s.path.clone(), Into::into);
        if path.as_os_str().is_empty() {
            return Err(StartError("file: needs a path (file:PATH)".into()));
        }
        let store = FileStore::open_sealed(&path, sealing(settings)?)
            .map_err(|e| StartError(format!("{}: {e}", path.display())))?;
        return Ok(Arc::new(store));
    }
    let url = if spec == "redis" { &s.redis_url } else { spec };
    let scheme = url.split_once("://").map(|(scheme, _)| scheme);
    if !matches!(scheme, Some("redis" | "rediss" | "redis+unix" | "unix")) {
        return Err(StartError(
            "a store is file:PATH, file (store.path), redis (store.redis_url), or a redis://, \
             rediss:// or redis+unix:// URL"
                .into(),
        ));
    }
    let ca = Some(Path::new(&s.redis_ca_file))
        .filter(|_| !s.redis_ca_file.is_empty() && scheme == Some("rediss"));
    let client = redis_client(url, ca).map_err(|e| StartError(e.to_string()))?;
    let store =
        RedisStore::open_client(client, &s.key_prefix, &s.fallback_path, sealing(settings)?)
            .map_err(|e| StartError(format!("store: {e}")))?;
    Ok(Arc::new(store))
}

/// Builds the whole server: proxy and admin services plus background services. The caller
/// runs it.
pub fn build_server(
    settings: Settings,
    source: ConfigSource,
    upgrade: bool,
) -> Result<Server, StartError> {
    let conf = server_conf(&settings);
    let listening = Listening::new(&settings.server.bound_addrs_file, upgrade);
    let proxy_socket = bind(&listening, "server.listen", &settings.server.listen)?;
    let admin_socket = bind(
        &listening,
        "server.admin_listen",
        &settings.server.admin_listen,
    )?;
    let oauth_socket = match settings.server.oauth_listen.as_str() {
        "" => None,
        addr => Some(bind(&listening, "server.oauth_listen", addr)?),
    };
    let (parts, token_home) = Parts::with_token_home(settings, &conf)?;
    let merchants = set_up(&parts)?;
    let mut server = Server::new_with_opt_and_conf(
        Opt {
            upgrade,
            ..Opt::default()
        },
        conf,
    );
    server.bootstrap();
    let live = Arc::new(Live::from_settings(&parts.settings, &parts.metrics).map_err(StartError)?);
    let proxy = proxy_service(&parts, &server.configuration, proxy_socket.fd_key(), &live)?;
    let onboarding = Onboarding::new(&parts.settings, parts.tokens.clone(), parts.store.clone())
        .map_err(StartError)?;
    let (admin_pages, oauth) = match oauth_socket {
        None => (Some(onboarding), None),
        Some(socket) => {
            let service = oauth_service(&parts.settings, socket.fd_key(), onboarding)?;
            (None, Some(socket.serve(service)))
        }
    };
    let admin = admin_service(
        &parts,
        admin_socket.fd_key(),
        proxy_socket.bound_addr(),
        admin_pages,
        live.clone(),
    )?;
    server.add_service(proxy_socket.serve(proxy));
    server.add_service(admin_socket.serve(admin));
    if let Some(oauth) = oauth {
        server.add_service(oauth);
    }
    add_background_services(&mut server, &parts, token_home);
    server.add_service(background_service(
        "reload",
        ReloadService {
            source,
            live,
            metrics: parts.metrics.clone(),
            running: Mutex::new(parts.settings.clone()),
        },
    ));
    let s = &parts.settings;
    tracing::info!(
        listen = %s.server.listen,
        upstream = %s.upstream.base_url,
        store = %s.store.path.display(),
        backend = ?s.store.backend,
        merchants,
        "mollie-gateway starting"
    );
    Ok(server)
}

/// Binds a listener now, with a clear start-up error for an address already in use instead of
/// pingora's panic (after `run -u` the old process hands the socket over instead).
fn bind(listening: &Listening, key: &'static str, addr: &str) -> Result<Socket, StartError> {
    listening
        .bind(key, addr)
        .map_err(|e| StartError(format!("{key} {addr}: cannot listen: {e}")))
}

/// The store load and first DNS resolution, on a short-lived runtime before pingora starts
/// its own; warns when the OAuth app is not configured. Returns the number of merchants.
fn set_up(parts: &Parts) -> Result<usize, StartError> {
    let setup = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StartError(format!("cannot start a runtime: {e}")))?;
    let merchants = setup.block_on(parts.prepare())?;
    if let Some(hint) = parts.settings.oauth_setup_hint() {
        tracing::warn!("{hint}; until then proxied requests are answered 503 oauth_misconfigured");
    }
    let s = &parts.settings;
    if let Some(open) = s.open_gateway_warning() {
        if s.server.require_client_keys {
            return Err(StartError(format!(
                "server.require_client_keys is true, but {open}"
            )));
        }
        tracing::warn!("{open}");
    }
    Ok(merchants)
}

/// The proxy listener (`server.listen`), plain or HTTPS with h2 and HTTP/1.1 through ALPN.
fn proxy_service(
    parts: &Parts,
    conf: &ServerConf,
    listen: &str,
    live: &Arc<Live>,
) -> Result<Service<ProxyListener>, StartError> {
    let s = &parts.settings;
    let upstreams = Upstreams::new(Some(
        pingora::connectors::ConnectorOptions::from_server_conf(conf),
    ));
    let gateway = Gateway::new(
        parts.tokens.clone(),
        parts.upstream.clone(),
        s,
        parts.metrics.clone(),
        upstreams,
        live.clone(),
    )
    .map_err(StartError)?;
    let listener = ProxyListener::new(
        Arc::new(gateway),
        s.server.max_connections,
        s.server.header_timeout(),
        s.server.max_header_bytes,
    );
    let mut proxy = Service::new("mollie-gateway proxy".to_string(), listener);
    if s.server.tls_cert.is_empty() {
        proxy.add_tcp(listen);
    } else {
        let mut tls = tls_settings(s)?;
        tls.enable_h2();
        proxy.add_tls_with_settings(listen, None, tls);
    }
    Ok(proxy)
}

fn tls_settings(s: &Settings) -> Result<TlsSettings, StartError> {
    TlsSettings::intermediate(&s.server.tls_cert, &s.server.tls_key)
        .map_err(|e| StartError(format!("server.tls_cert/tls_key: {e}")))
}

/// The OAuth listener (`server.oauth_listen`): `/oauth/connect` and `/oauth/callback` only,
/// over HTTPS (HTTP/1.1) when `server.tls_cert` is set, like the proxy listener.
fn oauth_service(
    s: &Settings,
    listen: &str,
    onboarding: Onboarding,
) -> Result<Service<AdminService>, StartError> {
    let app = AdminService::new(oauth_router(onboarding));
    let mut oauth = Service::new("mollie-gateway oauth".to_string(), app);
    if s.server.tls_cert.is_empty() {
        oauth.add_tcp(listen);
    } else {
        oauth.add_tls_with_settings(listen, None, tls_settings(s)?);
    }
    Ok(oauth)
}

/// The admin listener (`server.admin_listen`); `/readyz` probes the proxy's bound address.
/// It serves the OAuth pages too unless they have their own listener (`onboarding` `None`).
fn admin_service(
    parts: &Parts,
    listen: &str,
    proxy_addr: BoundAddr,
    onboarding: Option<Onboarding>,
    live: Arc<Live>,
) -> Result<Service<AdminService>, StartError> {
    let s = &parts.settings;
    let admin = Admin {
        metrics: parts.metrics.clone(),
        store: parts.store.clone(),
        proxy_addr,
        endpoints: vec![
            ("upstream.base_url", parts.upstream.clone()),
            ("upstream.token_url", parts.token_endpoint.clone()),
        ],
        tokens: Some(parts.tokens.clone()),
        api: AdminApi::new(s, parts.tokens.clone(), parts.store.clone()),
        onboarding,
        live,
    };
    let mut admin = Service::new("mollie-gateway admin".to_string(), admin.into_service());
    admin.add_tcp(listen);
    Ok(admin)
}

/// The DNS resolver, the token endpoint's home, the revoker and, unless disabled, the
/// background refresher.
fn add_background_services(server: &mut Server, parts: &Parts, token_home: TokenEndpointService) {
    server.add_service(background_service(
        "resolver",
        ResolverService {
            endpoints: vec![parts.upstream.clone(), parts.token_endpoint.clone()],
        },
    ));
    // Every token call runs here; it outlives the grace period (oauth/home.rs).
    server.add_service(background_service("token endpoint", token_home));
    // Retries revocations at Mollie of removed merchants (tokens/removal.rs).
    server.add_service(background_service(
        "revoker",
        RevokerService {
            tokens: parts.tokens.clone(),
        },
    ));
    // Other replicas' changes (Redis); ends at once for the file store.
    server.add_service(background_service(
        "store events",
        StoreEventsService {
            tokens: parts.tokens.clone(),
        },
    ));
    if parts.settings.oauth.background_refresh {
        server.add_service(background_service(
            "refresher",
            RefresherService {
                tokens: parts.tokens.clone(),
            },
        ));
    }
}
