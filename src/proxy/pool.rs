//! Upstream connections: pingora's [`TransportConnector`] (connect, TLS with SNI, timeouts and
//! its idle pool) with an HTTP/1.1 client session on each.
//!
//! Owns: when a connection may be pooled. One goes back to the pool only after a complete
//! exchange ([`Upstreams::release`]); every other path drops the session, which closes the
//! connection, so a connection in an unknown state (a body cut short, a response not read to
//! its end) never carries another merchant's request.

use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::prelude::*;
use pingora::protocols::http::v1::client::HttpSession;
use pingora::protocols::Stream;
use pingora::upstreams::peer::Peer;
use std::time::Duration;

/// Idle pooled upstream connections are closed after this long.
pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Upstreams {
    transport: TransportConnector,
}

impl Upstreams {
    /// `options` carry `upstream.keepalive_pool_size` and `upstream.ca_file`.
    pub fn new(options: Option<ConnectorOptions>) -> Upstreams {
        Upstreams {
            transport: TransportConnector::new(options),
        }
    }

    /// An idle pooled connection when there is one, else a new one; `true` when pooled.
    pub async fn checkout(&self, peer: &HttpPeer) -> Result<(HttpSession, bool)> {
        let (stream, reused) = self.transport.get_stream(peer).await?;
        Ok((session(stream, peer), reused))
    }

    /// Always a new connection: the one retry after a pooled connection turned out dead.
    pub async fn connect(&self, peer: &HttpPeer) -> Result<HttpSession> {
        let stream = self.transport.new_stream(peer).await?;
        Ok(session(stream, peer))
    }

    /// Pools the connection of a completed exchange when both sides allow keep-alive;
    /// otherwise closes it.
    pub async fn release(&self, mut session: HttpSession, peer: &HttpPeer) {
        session.respect_keepalive();
        if let Some(stream) = session.reuse().await {
            self.transport
                .release_stream(stream, peer.reuse_hash(), Some(UPSTREAM_IDLE_TIMEOUT));
        }
    }
}

fn session(stream: Stream, peer: &HttpPeer) -> HttpSession {
    let mut session = HttpSession::new_with_options(stream, peer);
    session.read_timeout = peer.options.read_timeout;
    session.write_timeout = peer.options.write_timeout;
    session
}
