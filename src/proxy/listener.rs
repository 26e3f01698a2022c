//! The proxy listener's connections: a cap on how many are open, and a deadline for each
//! request head.
//!
//! pingora's own `HttpServerApp` loop bounds a request head only per read (60 s, so a byte a
//! minute holds a connection forever) and accepts any number of connections. This
//! [`ServerApp`] owns the HTTP/1 keep-alive loop instead:
//! - between requests, the connection waits idle for the first byte of the next head, up to
//!   [`KEEPALIVE_IDLE`] or until the service shuts down, then closes quietly;
//! - from that first byte, the whole head must arrive within `server.header_timeout_ms`,
//!   else the caller gets 408 `request_timeout` and the connection closes;
//! - the head is read here up to its end, at most `server.max_header_bytes` (pingora's own
//!   bound is 1 MiB), else the caller gets 431 `header_too_large` and the connection closes;
//!   pingora then parses it from that buffer;
//! - beyond `server.max_connections` open connections, a new one gets 503 `overloaded` with
//!   `Retry-After` and is closed.
//!
//! HTTP/2 connections (TLS with ALPN `h2`) count against the cap and are handed to pingora's
//! HTTP/2 server; their heads are bounded by the h2 stack. TLS handshakes happen before a
//! connection reaches this code, under pingora's own fixed handshake timeout.

use super::fast::request::head_len;
use super::fast::Served;
use super::Gateway;
use crate::access_log;
use crate::error::GatewayError;
use crate::metrics::{Metrics, Refusal};
use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long an idle keep-alive connection waits for its next request (pingora's default).
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);

/// After refusing a connection, how long its unread input is drained before closing, so the
/// refusal is not lost to a reset (a "lingering close", as nginx does).
const LINGER: Duration = Duration::from_secs(1);

/// The first read of a request head.
const HEAD_BUF: usize = 4096;

pub struct ProxyListener {
    gateway: Arc<Gateway>,
    /// Open connections, checked and counted together (`fetch_add`) so the cap holds under
    /// concurrent accepts; mirrored in the `connections_open` gauge.
    open: AtomicUsize,
    max_connections: usize,
    header_timeout: Duration,
    max_header_bytes: usize,
    metrics: Arc<Metrics>,
}

/// Why a request head was not read whole.
enum HeadCut {
    /// The caller closed (or the read failed).
    Closed,
    /// Over `server.max_header_bytes`.
    TooLarge,
}

/// One counted open connection; uncounted when dropped.
struct Open<'a>(&'a ProxyListener);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.connections_open.dec();
    }
}

impl ProxyListener {
    pub fn new(
        gateway: Arc<Gateway>,
        max_connections: usize,
        header_timeout: Duration,
        max_header_bytes: usize,
    ) -> Self {
        let metrics = gateway.metrics.clone();
        ProxyListener {
            gateway,
            open: AtomicUsize::new(0),
            max_connections,
            header_timeout,
            max_header_bytes,
            metrics,
        }
    }

    /// Counts a new connection, unless `max_connections` are open already.
    fn admit(&self) -> Option<Open<'_>> {
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        self.metrics.connections_open.inc();
        let open = Open(self);
        (before < self.max_connections).then_some(open)
    }

    /// The HTTP/1 keep-alive loop (see the module text).
    async fn serve_http1(&self, mut stream: Stream, shutdown: &ShutdownWatch) {
        let mut settings = None;
        // Bytes of the next request the fast path read already.
        let mut next = BytesMut::new();
        loop {
            let head = match std::mem::take(&mut next) {
                started if !started.is_empty() => Some(started),
                _ => self.await_head(&mut stream).await,
            };
            let Some(mut head) = head else {
                return;
            };
            let deadline = tokio::time::Instant::now() + self.header_timeout;
            match tokio::time::timeout_at(deadline, self.read_head(&mut stream, &mut head)).await {
                Err(_) => return self.refuse(stream, Refusal::HeaderTimeout).await,
                Ok(Err(HeadCut::Closed)) => return,
                Ok(Err(HeadCut::TooLarge)) => {
                    return self.refuse(stream, Refusal::HeaderTooLarge).await
                }
                Ok(Ok(len)) if self.gateway.fast_path => {
                    let shutting_down = *shutdown.borrow();
                    match self
                        .gateway
                        .serve_fast(&mut stream, head, len, shutting_down)
                        .await
                    {
                        Served::Next(rest) => {
                            next = rest;
                            settings = None;
                            continue;
                        }
                        Served::Close => return,
                        Served::Slow(whole) => head = whole,
                    }
                }
                Ok(Ok(_)) => self.metrics.http1_slow.inc(),
            }
            let mut session = ServerSession::new_http1(stream);
            match settings.take() {
                Some(s) => pingora::apps::HttpPersistentSettings::apply_to_session(s, &mut session),
                None => session.set_keepalive(Some(KEEPALIVE_IDLE.as_secs())),
            }
            // No pipelined prefix can be set already: pipelining is off, so pingora never
            // hands a connection back with bytes of a next request.
            session.set_pipelined_prefix(head);
            // The head is whole in the prefix, so pingora reads nothing more, as a rule.
            let read = tokio::time::timeout_at(deadline, session.read_request()).await;
            match read {
                Err(_) => {
                    return self
                        .refuse(into_stream(session), Refusal::HeaderTimeout)
                        .await
                }
                Ok(Err(e)) => return self.gateway.bad_request_head(session, e).await,
                Ok(Ok(false)) => return,
                Ok(Ok(true)) => {}
            }
            if *shutdown.borrow() {
                session.set_keepalive(None);
            }
            let Some(reused) = self.gateway.handle(session).await else {
                return;
            };
            let (next, next_settings) = reused.consume();
            stream = next;
            settings = next_settings;
        }
    }

    /// Waits for the first bytes of a request head: `None` when the caller closes, stays idle
    /// for [`KEEPALIVE_IDLE`], or the service shuts down meanwhile.
    async fn await_head(&self, stream: &mut Stream) -> Option<BytesMut> {
        let mut buf = BytesMut::with_capacity(HEAD_BUF);
        let read = tokio::select! {
            biased;
            read = tokio::time::timeout(KEEPALIVE_IDLE, stream.read_buf(&mut buf)) => read,
            _ = self.gateway.await_shutdown() => return None,
        };
        matches!(read, Ok(Ok(n)) if n > 0).then_some(buf)
    }

    /// Reads into `buf` (which holds the first bytes) until the end of the request head, an
    /// empty line, is in it, within `server.max_header_bytes`; the head's length.
    async fn read_head(&self, stream: &mut Stream, buf: &mut BytesMut) -> Result<usize, HeadCut> {
        loop {
            match head_len(buf) {
                Some(len) if len <= self.max_header_bytes => return Ok(len),
                Some(_) => return Err(HeadCut::TooLarge),
                None if buf.len() > self.max_header_bytes => return Err(HeadCut::TooLarge),
                None => {}
            }
            buf.reserve(HEAD_BUF);
            match stream.read_buf(buf).await {
                Ok(n) if n > 0 => {}
                _ => return Err(HeadCut::Closed),
            }
        }
    }

    /// Answers a refused HTTP/1 connection (503, 408 or 431) and closes it.
    async fn refuse(&self, mut stream: Stream, why: Refusal) {
        self.metrics.refused(why);
        let error = match why {
            Refusal::MaxConnections => GatewayError::Overloaded(self.max_connections),
            Refusal::HeaderTimeout => {
                GatewayError::RequestTimeout(self.header_timeout.as_millis() as u64)
            }
            Refusal::HeaderTooLarge => GatewayError::HeaderTooLarge(format!(
                "over {} bytes, server.max_header_bytes",
                self.max_header_bytes
            )),
        };
        self.metrics.observe_request(error.status());
        self.metrics
            .gateway_errors
            .with_label_values(&[error.code()])
            .inc();
        access_log::log(&access_log::Line {
            status: error.status(),
            error: error.code(),
            ..Default::default()
        });
        let answer = error_bytes(&error);
        let written = async {
            stream.write_all(&answer).await?;
            stream.flush().await?;
            stream.shutdown().await
        };
        if tokio::time::timeout(LINGER, written).await.is_err() {
            return;
        }
        // Lingering close: read what the caller still sends, briefly, before closing.
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(LINGER, async {
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}

/// The stream under an HTTP/1 session (whose head could not be read).
fn into_stream(session: ServerSession) -> Stream {
    match session {
        ServerSession::H1(s) => s.into_inner(),
        _ => unreachable!("serve_http1 makes HTTP/1 sessions only"),
    }
}

/// A complete HTTP/1.1 error response with `Connection: close`, for a connection that has no
/// parsed request to answer through pingora's session.
fn error_bytes(error: &GatewayError) -> Vec<u8> {
    let (header, body) = error.response(None);
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\n",
            header.status.as_u16(),
            header.status.canonical_reason().unwrap_or("")
        )
        .as_bytes(),
    );
    for (name, value) in header.headers.iter() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.extend_from_slice(&body);
    out
}

#[async_trait]
impl ServerApp for ProxyListener {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Some(_open) = self.admit() else {
            if !matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
                self.refuse(stream, Refusal::MaxConnections).await;
            } else {
                self.metrics.refused(Refusal::MaxConnections);
            }
            return None;
        };
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            // pingora's HTTP/2 server, each stream through `Gateway::process_new_http`.
            return ServerApp::process_new(&self.gateway, stream, shutdown).await;
        }
        self.serve_http1(stream, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        self.gateway.http_cleanup().await;
    }
}
