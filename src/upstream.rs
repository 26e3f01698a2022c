//! Where the gateway connects: a parsed [`Endpoint`] (scheme, host, port, path) whose host is
//! resolved asynchronously and re-resolved in the background.
//!
//! Owns: DNS for the Mollie API and token endpoint hosts. pingora's `HttpPeer::new` with a host
//! name resolves with a blocking call and panics when resolution fails, so peers are always
//! built from a `SocketAddr` taken here, with the host name kept for SNI and `Host`.
//! Must not: block, or panic when DNS fails: a failed lookup keeps the last good addresses,
//! and before the first success [`Endpoint::addr`] is `None` (callers answer 502/503).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tracing::Instrument;

/// How often resolved addresses are refreshed, and how soon after a failure we try again.
pub const RESOLVE_INTERVAL: Duration = Duration::from_secs(60);
pub const RESOLVE_RETRY: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// The path of the URL (`/oauth2/tokens`), without a trailing `/` for base URLs.
    pub path: String,
    /// `host` or `host:port` when the port is not the scheme's default: the `Host` header.
    pub authority: String,
    /// Resolved addresses. A std lock: held only to copy one address out, never across await.
    addrs: RwLock<Arc<Vec<SocketAddr>>>,
    /// Round-robin position over `addrs`.
    next: AtomicUsize,
}

impl Endpoint {
    /// Parses an `http://` or `https://` URL. An IP literal host needs no resolution.
    pub fn parse(raw: &str) -> Result<Arc<Endpoint>, String> {
        let url = url::Url::parse(raw).map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
        let tls = match url.scheme() {
            "https" => true,
            "http" => false,
            other => return Err(format!("{raw:?}: scheme {other} is not http or https")),
        };
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_string(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(format!("{raw:?} has no host")),
        };
        let port = url
            .port_or_known_default()
            .ok_or_else(|| format!("{raw:?} has no port"))?;
        let authority = match url.port() {
            Some(p) => match url.host() {
                Some(url::Host::Ipv6(_)) => format!("[{host}]:{p}"),
                _ => format!("{host}:{p}"),
            },
            None => host.clone(),
        };
        let path = url.path().trim_end_matches('/').to_string();
        let literal: Vec<SocketAddr> = host
            .parse::<std::net::IpAddr>()
            .map(|ip| vec![SocketAddr::new(ip, port)])
            .unwrap_or_default();
        Ok(Arc::new(Endpoint {
            tls,
            host,
            port,
            path,
            authority,
            addrs: RwLock::new(Arc::new(literal)),
            next: AtomicUsize::new(0),
        }))
    }

    /// One resolved address, rotating over all of them; `None` until DNS first succeeds.
    pub fn addr(&self) -> Option<SocketAddr> {
        let addrs = self.addrs.read().unwrap_or_else(|p| p.into_inner());
        if addrs.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % addrs.len();
        Some(addrs[i])
    }

    /// True once the host has resolved at least once (an IP literal always has): a failed
    /// re-resolution keeps the last good addresses, so this never turns false again.
    pub fn has_resolved(&self) -> bool {
        !self
            .addrs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// True when the host is an IP literal (nothing to resolve).
    pub fn is_literal(&self) -> bool {
        self.host.parse::<std::net::IpAddr>().is_ok()
    }

    /// Resolves the host now (asynchronously); on failure the old addresses stay.
    pub async fn resolve(&self) -> Result<usize, String> {
        if self.is_literal() {
            return Ok(1);
        }
        let found: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("cannot resolve {}: {e}", self.host))?
            .collect();
        if found.is_empty() {
            return Err(format!("{} resolved to no address", self.host));
        }
        let n = found.len();
        *self.addrs.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(found);
        Ok(n)
    }
}

/// Re-resolves endpoints until shutdown: every [`RESOLVE_INTERVAL`], or [`RESOLVE_RETRY`]
/// after a failure.
pub struct ResolverService {
    pub endpoints: Vec<Arc<Endpoint>>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for ResolverService {
    async fn start(&self, shutdown: pingora::server::ShutdownWatch) {
        // `.instrument`, not `span.enter()`: an entered guard held across `.await` would tag
        // whatever else runs on this thread meanwhile.
        self.run(shutdown)
            .instrument(tracing::info_span!("resolver"))
            .await
    }
}

impl ResolverService {
    async fn run(&self, mut shutdown: pingora::server::ShutdownWatch) {
        if self.endpoints.iter().all(|e| e.is_literal()) {
            return;
        }
        loop {
            let mut wait = RESOLVE_INTERVAL;
            for ep in self.endpoints.iter().filter(|e| !e.is_literal()) {
                if let Err(e) = ep.resolve().await {
                    tracing::warn!(host = %ep.host, error = %e, "DNS refresh failed; keeping the last addresses");
                    wait = RESOLVE_RETRY;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let e = Endpoint::parse("https://api.mollie.com").unwrap();
        assert!(e.tls);
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("api.mollie.com", 443, "")
        );
        assert_eq!(e.authority, "api.mollie.com");
        assert_eq!(e.addr(), None);
        assert!(!e.has_resolved());
        let t = Endpoint::parse("http://127.0.0.1:8081/oauth2/tokens").unwrap();
        assert_eq!(t.path, "/oauth2/tokens");
        assert_eq!(t.authority, "127.0.0.1:8081");
        assert_eq!(t.addr(), Some("127.0.0.1:8081".parse().unwrap()));
        assert!(t.has_resolved(), "an IP literal needs no DNS");
        assert!(Endpoint::parse("ftp://x").is_err());
    }

    #[tokio::test]
    async fn resolves_names_and_survives_failure() {
        let e = Endpoint::parse("http://localhost:1234").unwrap();
        e.resolve().await.unwrap();
        assert_eq!(e.addr().unwrap().port(), 1234);
        assert!(e.has_resolved());
        let bad = Endpoint::parse("http://no-such-host.invalid").unwrap();
        assert!(bad.resolve().await.is_err());
        assert_eq!(bad.addr(), None);
        assert!(!bad.has_resolved());
    }
}
