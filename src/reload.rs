//! SIGHUP: the callers (`[clients]`) and the merchants' request defaults
//! (`[merchants.defaults]`) reloaded from the same configuration source, while every
//! connection keeps being served (each request reads them once, see `proxy::Live`).
//!
//! Owns: the reload service. A configuration that does not load or validate leaves the running
//! one in place and logs every problem. Other settings (listeners, upstream, OAuth app, store)
//! need a restart or a graceful upgrade (`run -u`); a reload says so when they changed.
//! Must not: log a secret (problems name keys, never values of secrets).

use crate::config::{self, Settings, Source};
use crate::metrics::Metrics;
use crate::proxy::Live;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::signal::unix::{signal, SignalKind};
use tracing::Instrument;

/// Where the running configuration came from, to read it again.
pub struct ConfigSource {
    pub source: Source,
    /// The `MOLLIE_GATEWAY__…` environment at start-up (a process's environment does not change).
    pub env: HashMap<String, String>,
}

impl ConfigSource {
    /// Loads and validates the configuration again.
    pub fn load(&self) -> Result<Settings, config::ConfigError> {
        let path = match &self.source {
            Source::File(p) => Some(p.as_path()),
            Source::EmbeddedDefaults => None,
        };
        config::load(path, &self.env).map(|(settings, _)| settings)
    }
}

/// Reloads [`Live`] on every SIGHUP until shutdown.
pub struct ReloadService {
    pub source: ConfigSource,
    pub live: Arc<Live>,
    pub metrics: Arc<Metrics>,
    /// The settings in force, to tell what a reload cannot change (std `Mutex`: only the
    /// synchronous `reload` locks it, never across an `.await`).
    pub running: Mutex<Settings>,
}

impl ReloadService {
    /// One reload; the error says why the running configuration was kept.
    pub fn reload(&self) -> Result<usize, String> {
        let settings = self.source.load().map_err(|e| e.to_string())?;
        let fresh = Live::from_settings(&settings, &self.metrics)?;
        self.live.clients.store(fresh.clients.load_full());
        self.live.defaults.store(fresh.defaults.load_full());
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let mut others = settings.clone();
        others.clients = running.clients.clone();
        others.merchants.defaults = running.merchants.defaults.clone();
        if others.to_masked_toml() != running.to_masked_toml() {
            tracing::warn!(
                "the configuration changed beyond [clients] and [merchants.defaults]; those \
                 changes take effect at the next restart or `run -u`"
            );
        }
        let clients = settings.clients.len();
        *running = settings;
        Ok(clients)
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let span = tracing::info_span!("reload");
        async {
            let mut hangups = match signal(SignalKind::hangup()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot watch SIGHUP; no reloads");
                    return;
                }
            };
            loop {
                tokio::select! {
                    _ = hangups.recv() => match self.reload() {
                        Ok(clients) => tracing::info!(
                            clients,
                            "SIGHUP: [clients] and [merchants.defaults] reloaded"
                        ),
                        Err(problems) => tracing::error!(
                            %problems,
                            "SIGHUP: the configuration was not reloaded; the running one stays"
                        ),
                    },
                    _ = shutdown.changed() => return,
                }
            }
        }
        .instrument(span)
        .await
    }
}
