//! The proxy: one merchant's request in, the same request with that merchant's access token
//! out, the response streamed back.
//!
//! It is a pingora-core [`HttpServerApp`] over pingora's pooled upstream [`Connector`], not a
//! pingora-proxy `ProxyHttp`: the gateway does one fixed thing per request, and
//! pingora-proxy's general machinery (a boxed future per hook, the request header cloned and
//! re-validated, downstream and upstream halves joined over channels) cost twice the CPU of
//! this whole path (`benches/README.md`). The steps, in order:
//! 1. exactly one valid merchant header, and its token (a cache hit, or one shared refresh);
//!    errors are answered here and nothing is sent upstream;
//! 2. the defaults of [`defaults`] (which may read a small JSON body to rewrite it);
//! 3. the upstream request, rewritten by [`headers`], to the configured upstream only (from
//!    resolved addresses, never the caller's `Host` or absolute-form target);
//! 4. an upstream 401 invalidates the used token, refreshes, and replays the request once with
//!    the body kept in pingora's retry buffer (64 KiB); a pooled connection that turns out to
//!    be closed is retried once on a new one for idempotent requests, as pingora-proxy does;
//! 5. the response streamed back, hop-by-hop headers dropped, HAL links rewritten when
//!    `upstream.public_base_url` is set;
//! 6. metrics and the one access-log line.

mod defaults;
pub mod headers;

pub use defaults::MAX_REWRITE_BODY;
pub use headers::rewrite_upstream_headers;

use crate::config::Settings;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::rewrite::{with_query_testmode, LinkRewriter};
use crate::tokens::{CachedToken, TokenManager};
use crate::types::{MerchantId, MerchantIdError};
use crate::upstream::Endpoint;
use async_trait::async_trait;
use bytes::Bytes;
use defaults::{Defaults, Plan};
use headers::{expects_continue, is_ruby_sdk, strip_hop_by_hop};
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, StatusCode};
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::client::HttpSession as ClientSession;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Idle pooled upstream connections are closed after this long.
pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// At most this much of a 401 answer's body is read to keep its connection for reuse.
const MAX_DISCARD: usize = 64 * 1024;

pub struct Gateway {
    tokens: TokenManager,
    upstream: Arc<Endpoint>,
    /// `Host` for upstream requests, built once.
    upstream_host: HeaderValue,
    merchant_header: HeaderName,
    connect_timeout: Duration,
    read_timeout: Duration,
    metrics: Arc<Metrics>,
    defaults: Defaults,
    /// (upstream base, public base) when `upstream.public_base_url` is set.
    links: Option<(String, String)>,
    /// pingora's pooled upstream connections (`upstream.keepalive_pool_size`, `ca_file`).
    connector: Connector,
    /// Set when pingora starts shutting the service down: idle keep-alive connections close.
    shutting_down: AtomicBool,
    shutdown: Notify,
}

/// Per-request state, for the metrics and the access log.
struct RequestCtx {
    started: Instant,
    merchant: Option<MerchantId>,
    /// The first upstream attempt started: the gateway-added latency ends here.
    upstream_started: Option<Instant>,
    upstream_status: Option<u16>,
    replay_outcome: Option<&'static str>,
    error_code: Option<&'static str>,
}

/// Why an upstream exchange ended before a response header arrived.
enum Failure {
    /// The caller's side failed (gone, or a malformed body).
    Downstream(Box<Error>),
    /// The upstream failed; `reused`: on a pooled connection.
    Upstream { error: Box<Error>, reused: bool },
    /// Something the gateway itself refuses.
    Gateway(GatewayError),
}

/// An upstream exchange whose response header has been read.
struct Upstream {
    session: ClientSession,
    peer: HttpPeer,
}

impl Gateway {
    pub fn new(
        tokens: TokenManager,
        upstream: Arc<Endpoint>,
        settings: &Settings,
        metrics: Arc<Metrics>,
        connector: Connector,
    ) -> Result<Gateway, String> {
        let merchant_header = settings.merchants.header.as_str();
        let public = settings.upstream.public_base_url.trim_end_matches('/');
        let links = (!public.is_empty()).then(|| {
            (
                settings.upstream.base_url.trim_end_matches('/').to_string(),
                public.to_string(),
            )
        });
        Ok(Gateway {
            defaults: Defaults::from_settings(settings)?,
            links,
            tokens,
            upstream_host: HeaderValue::from_str(&upstream.authority)
                .map_err(|_| format!("{} is not a valid Host header", upstream.authority))?,
            upstream,
            merchant_header: HeaderName::from_bytes(merchant_header.as_bytes())
                .map_err(|_| format!("{merchant_header} is not a header name"))?,
            connect_timeout: settings.upstream.connect_timeout(),
            read_timeout: settings.upstream.read_timeout(),
            metrics,
            connector,
            shutting_down: AtomicBool::new(false),
            shutdown: Notify::new(),
        })
    }

    /// The merchant named by the request: exactly one valid header.
    fn merchant(&self, req: &RequestHeader) -> Result<MerchantId, GatewayError> {
        let mut values = req.headers.get_all(&self.merchant_header).iter();
        let problem = match (values.next(), values.next()) {
            (None, _) => "is missing".to_string(),
            (Some(_), Some(_)) => "is repeated; send it once".to_string(),
            (Some(v), None) => match MerchantId::parse_bytes(v.as_bytes()) {
                Ok(id) => return Ok(id),
                Err(MerchantIdError::Empty) => "is empty".to_string(),
                Err(e) => e.to_string(),
            },
        };
        Err(GatewayError::MerchantHeader {
            header: self.merchant_header.to_string(),
            problem,
        })
    }

    /// Serves one request; true when its response was written completely.
    async fn serve(&self, s: &mut ServerSession, ctx: &mut RequestCtx) -> bool {
        let merchant = match self.merchant(s.req_header()) {
            Ok(m) => m,
            Err(e) => return self.respond(s, ctx, e).await,
        };
        ctx.merchant = Some(merchant.clone());
        let mut token = match self.tokens.get(&merchant).await {
            Ok(token) => token,
            Err(e) => return self.respond(s, ctx, e.to_gateway(&merchant)).await,
        };
        if expects_continue(s.req_header())
            && !s.is_body_empty()
            && s.write_continue_response().await.is_err()
        {
            return false;
        }
        s.enable_retry_buffering();
        let plan = match self.defaults.plan(s, &merchant).await {
            Ok(plan) => plan,
            Err(e) => return self.fail(s, ctx, Failure::Downstream(e)).await,
        };
        ctx.upstream_started = Some(Instant::now());
        let (mut replayed, mut retried) = (false, false);
        loop {
            let again = replayed || retried;
            let up = match self.send(s, &plan, &token, again).await {
                Ok(up) => up,
                Err(Failure::Upstream { reused: true, .. })
                    if !retried && self.may_resend(s, &plan) =>
                {
                    // A pooled connection the upstream had already closed.
                    retried = true;
                    continue;
                }
                Err(f) => return self.fail(s, ctx, f).await,
            };
            let status = up.session.response_header().map(|r| r.status);
            if status != Some(StatusCode::UNAUTHORIZED) {
                return self.stream_response(s, ctx, up).await;
            }
            self.metrics.upstream_401.inc();
            if replayed {
                ctx.replay_outcome = Some("rejected_again");
                return self.stream_response(s, ctx, up).await;
            }
            self.tokens.invalidate(&merchant, token.id);
            if plan.body.is_none() && s.retry_buffer_truncated() {
                // Cannot replay: the caller gets this 401; the next request gets a fresh token.
                ctx.replay_outcome = Some("body_too_large");
                return self.stream_response(s, ctx, up).await;
            }
            match self.tokens.get(&merchant).await {
                Ok(fresh) => {
                    self.discard(up).await;
                    token = fresh;
                    replayed = true;
                    ctx.replay_outcome = Some("replayed");
                }
                Err(e) => {
                    ctx.replay_outcome = Some("refresh_failed");
                    return self.respond(s, ctx, e.to_gateway(&merchant)).await;
                }
            }
        }
    }

    /// Whether a request may go upstream again after a failed attempt: idempotent, and its
    /// whole body still at hand.
    fn may_resend(&self, s: &ServerSession, plan: &Plan) -> bool {
        s.req_header().method.is_idempotent()
            && (plan.body.is_some() || !s.retry_buffer_truncated())
    }

    fn peer(&self) -> Result<HttpPeer, Failure> {
        let addr = self.upstream.addr().ok_or_else(|| Failure::Upstream {
            error: Error::explain(
                ErrorType::ConnectNoRoute,
                format!("{} is not resolved (DNS)", self.upstream.host),
            ),
            reused: false,
        })?;
        // SNI only means something over TLS: a plain-HTTP upstream costs no String.
        let sni = if self.upstream.tls {
            self.upstream.host.clone()
        } else {
            String::new()
        };
        let mut peer = HttpPeer::new(addr, self.upstream.tls, sni);
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.read_timeout);
        peer.options.write_timeout = Some(self.read_timeout);
        peer.options.idle_timeout = Some(UPSTREAM_IDLE_TIMEOUT);
        Ok(peer)
    }

    /// One upstream attempt: the rewritten header, the body, the response header.
    /// `again`: a replay, whose body so far comes from the retry buffer.
    async fn send(
        &self,
        s: &mut ServerSession,
        plan: &Plan,
        token: &CachedToken,
        again: bool,
    ) -> Result<Upstream, Failure> {
        let peer = self.peer()?;
        let (mut session, reused) =
            self.connector
                .get_http_session(&peer)
                .await
                .map_err(|error| Failure::Upstream {
                    error,
                    reused: false,
                })?;
        let up = |error| Failure::Upstream { error, reused };
        session.set_read_timeout(peer.options.read_timeout);
        session.set_write_timeout(peer.options.write_timeout);

        let mut req = Box::new(s.req_header().clone());
        let has_body = plan.body.is_some() || !s.is_body_empty();
        rewrite_upstream_headers(
            &mut req,
            &self.merchant_header,
            &token.bearer,
            &self.upstream_host,
            has_body,
        )
        .map_err(|e| Failure::Gateway(GatewayError::BadRequest(e.to_string())))?;
        let internal = |e: Box<Error>| Failure::Gateway(GatewayError::Internal(e.to_string()));
        if plan.query_testmode {
            if let Some(uri) = with_query_testmode(&req.uri) {
                req.set_uri(uri);
            }
        }
        if let Some(body) = &plan.body {
            req.insert_header(CONTENT_LENGTH, body.len())
                .map_err(internal)?;
        }
        if self.links.is_some() {
            // Links are rewritten in plain JSON: ask for it rather than inflate and deflate.
            req.insert_header(ACCEPT_ENCODING, "identity")
                .map_err(internal)?;
        }
        session.write_request_header(req).await.map_err(up)?;

        if let Some(body) = &plan.body {
            if !body.is_empty() {
                session
                    .write_request_body(body.clone(), true)
                    .await
                    .map_err(up)?;
            }
        } else {
            if again {
                if let Some(sent) = s.get_retry_buffer().filter(|b| !b.is_empty()) {
                    session.write_request_body(sent, false).await.map_err(up)?;
                }
            }
            while let Some(chunk) = s.read_request_body().await.map_err(Failure::Downstream)? {
                session.write_request_body(chunk, false).await.map_err(up)?;
            }
        }
        session.finish_request_body().await.map_err(up)?;
        loop {
            session.read_response_header().await.map_err(up)?;
            // Informational answers (`103 Early Hints`) are not passed on.
            match session.response_header().map(|r| r.status.as_u16()) {
                Some(100..=199) => continue,
                _ => break,
            }
        }
        Ok(Upstream { session, peer })
    }

    /// Streams the upstream response to the caller; true when written completely.
    async fn stream_response(
        &self,
        s: &mut ServerSession,
        ctx: &mut RequestCtx,
        mut up: Upstream,
    ) -> bool {
        let Some(header) = up.session.response_header() else {
            return false;
        };
        let mut resp = Box::new(header.clone());
        ctx.upstream_status = Some(resp.status.as_u16());
        strip_hop_by_hop(&mut resp);
        let mut links = self.link_rewriter(s.req_header(), &mut resp);
        if s.write_response_header(resp).await.is_err() {
            return false; // the caller is gone
        }
        loop {
            let chunk = match up.session.read_response_body().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => {
                    // Too late for an error answer: the caller sees the connection close.
                    tracing::warn!(error = %e, "upstream failed during the response body");
                    ctx.error_code = Some("upstream_unavailable");
                    return false;
                }
            };
            let chunk = match links.as_mut() {
                Some(l) => {
                    let mut out = Vec::with_capacity(chunk.len() + 64);
                    l.feed(&chunk, &mut out);
                    Bytes::from(out)
                }
                None => chunk,
            };
            if s.write_response_body(chunk, false).await.is_err() {
                return false;
            }
        }
        self.release(up).await;
        let tail = match links.as_mut() {
            Some(l) => {
                let mut out = Vec::new();
                l.finish(&mut out);
                Bytes::from(out)
            }
            None => Bytes::new(),
        };
        s.write_response_body(tail, true).await.is_ok()
    }

    /// A rewriter for this response's HAL links, when they need one (and the framing changed
    /// to chunked, since the length changes).
    fn link_rewriter(
        &self,
        req: &RequestHeader,
        resp: &mut ResponseHeader,
    ) -> Option<LinkRewriter> {
        let (from, to) = self.links.as_ref()?;
        if is_ruby_sdk(req) {
            // mollie-api-ruby keeps only the path of `https://api.mollie.com/…` hrefs (so it
            // stays on the gateway by itself) and misreads any other href as a resource name.
            return None;
        }
        let is_json = resp.headers.get(CONTENT_TYPE).is_some_and(|v| {
            let v = v.as_bytes();
            v.starts_with(b"application/hal+json") || v.starts_with(b"application/json")
        });
        let encoded = resp
            .headers
            .get(CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        if !is_json || encoded {
            return None;
        }
        resp.remove_header(&CONTENT_LENGTH);
        resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")
            .ok()?;
        Some(LinkRewriter::new(from, to))
    }

    /// Returns a finished upstream connection to the pool (or closes it).
    async fn release(&self, mut up: Upstream) {
        if up.session.response_done() {
            self.connector
                .release_http_session(up.session, &up.peer, Some(UPSTREAM_IDLE_TIMEOUT))
                .await;
        }
    }

    /// Drops a 401 answer before the replay, keeping its connection when the body is small.
    async fn discard(&self, mut up: Upstream) {
        let mut read = 0;
        while let Ok(Some(chunk)) = up.session.read_response_body().await {
            read += chunk.len();
            if read > MAX_DISCARD {
                return;
            }
        }
        self.release(up).await;
    }

    /// Answers a failed exchange; true when an answer was written completely.
    async fn fail(&self, s: &mut ServerSession, ctx: &mut RequestCtx, f: Failure) -> bool {
        let error = match f {
            Failure::Gateway(e) => e,
            Failure::Upstream { error, .. } => {
                tracing::warn!(error = %error, "upstream request failed");
                let what = error.etype().as_str().to_string();
                match error.etype() {
                    ErrorType::ConnectTimedout
                    | ErrorType::ReadTimedout
                    | ErrorType::WriteTimedout => GatewayError::UpstreamTimeout(what),
                    _ => GatewayError::UpstreamUnavailable(what),
                }
            }
            Failure::Downstream(error) => match error.etype() {
                ErrorType::InvalidHTTPHeader => {
                    GatewayError::BadRequest(error.etype().as_str().to_string())
                }
                _ => {
                    tracing::debug!(error = %error, "the caller went away");
                    return false;
                }
            },
        };
        self.respond(s, ctx, error).await
    }

    /// Answers the caller with a gateway error and closes the connection afterwards (the
    /// request body may be unread). True when the answer was written.
    async fn respond(
        &self,
        s: &mut ServerSession,
        ctx: &mut RequestCtx,
        error: GatewayError,
    ) -> bool {
        let (header, body) = error.response();
        ctx.error_code = Some(error.code());
        s.set_keepalive(None);
        let written = match s.write_response_header(Box::new(header)).await {
            Ok(()) => s.write_response_body(body, true).await,
            Err(e) => Err(e),
        };
        if let Err(e) = &written {
            tracing::debug!(error = %e, "cannot send error response; caller gone");
        }
        written.is_ok()
    }

    /// Metrics and the access-log line.
    fn log(&self, s: &ServerSession, ctx: &RequestCtx) {
        let status = s.response_written().map(|r| r.status.as_u16()).unwrap_or(0);
        let m = &self.metrics;
        m.observe_request(status);
        let total = ctx.started.elapsed();
        m.request_duration_total.observe(total.as_secs_f64());
        let gateway = ctx.upstream_started.map(|t| t.duration_since(ctx.started));
        if let Some(g) = gateway {
            m.request_duration_gateway.observe(g.as_secs_f64());
        }
        if let Some(outcome) = ctx.replay_outcome {
            m.replays.with_label_values(&[outcome]).inc();
        }
        if let Some(code) = ctx.error_code {
            m.gateway_errors.with_label_values(&[code]).inc();
        }
        let req = s.req_header();
        tracing::info!(
            target: "access",
            method = %req.method,
            path = req.uri.path(),
            status,
            merchant = ctx.merchant.as_ref().map(MerchantId::as_str).unwrap_or("-"),
            upstream_status = ctx.upstream_status.unwrap_or(0),
            duration_us = total.as_micros() as u64,
            gateway_us = gateway.map(|g| g.as_micros() as u64).unwrap_or(0),
            replayed = ctx.replay_outcome == Some("replayed"),
            error = ctx.error_code.unwrap_or("-"),
        );
    }

    /// A request head pingora could not parse: a Mollie-shaped 400, counted, then close.
    async fn bad_request_head(&self, mut s: ServerSession, e: Box<Error>) {
        if !matches!(e.etype(), ErrorType::InvalidHTTPHeader) {
            tracing::debug!(error = %e, "cannot read a request; caller gone");
            return;
        }
        let error = GatewayError::BadRequest("the request head is malformed".to_string());
        let (header, body) = error.response();
        self.metrics.observe_request(400);
        self.metrics
            .gateway_errors
            .with_label_values(&[error.code()])
            .inc();
        tracing::info!(target: "access", method = "-", path = "-", status = 400u16, error = error.code());
        s.set_keepalive(None);
        if s.write_response_header(Box::new(header)).await.is_ok() {
            let _ = s.write_response_body(body, true).await;
        }
    }

    /// Resolves once pingora has begun shutting the service down.
    async fn await_shutdown(&self) {
        let notified = self.shutdown.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.shutting_down.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }
}

#[async_trait]
impl HttpServerApp for Gateway {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let read = tokio::select! {
            biased;
            read = session.read_request() => read,
            // An idle keep-alive connection is closed when the service shuts down.
            _ = self.await_shutdown() => return None,
        };
        match read {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                self.bad_request_head(session, e).await;
                return None;
            }
        }
        if *shutdown.borrow() {
            session.set_keepalive(None);
        }
        let mut ctx = RequestCtx {
            started: Instant::now(),
            merchant: None,
            upstream_started: None,
            upstream_status: None,
            replay_outcome: None,
            error_code: None,
        };
        let complete = self.serve(&mut session, &mut ctx).await;
        self.log(&session, &ctx);
        if !complete {
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(Some(stream)) => Some(ReusedHttpStream::from_reusable_stream(stream, settings)),
            _ => None,
        }
    }

    async fn http_cleanup(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.shutdown.notify_waiters();
    }
}
