//! The proxy: one merchant's request in, the same request with that merchant's access token
//! out, the response streamed back.
//!
//! It is a pingora-core [`HttpServerApp`] behind [`ProxyListener`] (connection cap, head
//! deadline, the HTTP/1 keep-alive loop), not a pingora-proxy `ProxyHttp`: the gateway does one
//! fixed thing per request, and pingora-proxy's general machinery cost twice the CPU of this
//! whole path (`benches/README.md`). Owning the exchange means owning its correctness, so the
//! steps of [`Gateway::serve`] are, in order:
//! 1. the head: only origin-form targets go upstream (absolute-form is normalised;
//!    authority-form, `CONNECT`, `TRACE` and `*` are refused), ambiguous framing gets 400
//!    ([`headers::check_framing`]), a `Content-Length` above `server.max_body_bytes` gets 413;
//!    every request gets an id ([`headers::request_id`]);
//! 2. exactly one valid merchant header, and its token (a cache hit, or one shared refresh);
//! 3. the body's preliminaries: `100 Continue`, and the defaults of [`defaults`] (which may
//!    read a small JSON body to rewrite it);
//! 4. the exchange ([`exchange`]): the upstream head built once, the attempts and the policy
//!    between them (401 replay, one retry on a fresh connection), over [`pool`];
//! 5. the response streamed back ([`response`]), hop-by-hop headers dropped, HAL links
//!    rewritten when `upstream.public_base_url` is set;
//! 6. metrics and the one access-log line.
//!
//! Every error the gateway answers itself keeps the caller's connection when the request body
//! was read, absent, or small enough to drain (64 KiB); otherwise, and after an error that
//! left an `Expect: 100-continue` unanswered, the connection closes.

mod caller;
mod defaults;
mod exchange;
pub mod fast;
pub mod headers;
mod listener;
mod pool;
mod response;

pub use defaults::{Defaults, MAX_REWRITE_BODY};
pub use headers::rewrite_upstream_headers;
pub use listener::ProxyListener;
pub use pool::{Upstreams, UPSTREAM_IDLE_TIMEOUT};

use crate::access_log;
use crate::clients::{Client, Clients};
use crate::config::Settings;
use crate::error::{self, GatewayError};
use crate::metrics::Metrics;
use crate::rewrite::{with_query_testmode, LinkRewriter};
use crate::tokens::{CachedToken, TokenManager};
use crate::types::MerchantId;
use crate::upstream::Endpoint;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use defaults::{Plan, PlanError};
use exchange::{History, Next};
use headers::{expects_continue, is_ruby_sdk, strip_hop_by_hop, REQUEST_ID};
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::v1::client::HttpSession as Upstream;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use response::Streamed;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// At most this much of a 401 answer's body is read to keep its connection for reuse, and at
/// most this much of an unread request body is drained to keep the caller's connection after
/// the gateway's own error.
const MAX_DISCARD: usize = 64 * 1024;

pub struct Gateway {
    tokens: TokenManager,
    upstream: Arc<Endpoint>,
    /// `Host` for upstream requests, built once.
    upstream_host: HeaderValue,
    merchant_header: HeaderName,
    connect_timeout: Duration,
    read_timeout: Duration,
    /// `server.header_timeout_ms`, also the bound for draining a body after an error.
    header_timeout: Duration,
    /// `server.max_body_bytes`.
    max_body_bytes: u64,
    metrics: Arc<Metrics>,
    /// `server.client_key_header`: removed upstream like `Authorization`.
    client_key_header: HeaderName,
    /// What SIGHUP reloads.
    live: Arc<Live>,
    /// (upstream base, public base) when `upstream.public_base_url` is set.
    links: Option<(String, String)>,
    /// Pooled upstream connections (`upstream.keepalive_pool_size`, `ca_file`).
    upstreams: Upstreams,
    /// `server.fast_path`, unless HAL links are rewritten (which only the slow path does).
    fast_path: bool,
    /// Set when pingora starts shutting the service down: idle keep-alive connections close.
    shutting_down: AtomicBool,
    shutdown: Notify,
}

/// The part of the configuration a reload (SIGHUP) replaces while requests run: the clients
/// and the merchants' request defaults. Each request loads them once.
pub struct Live {
    pub clients: ArcSwap<Clients>,
    pub defaults: ArcSwap<Defaults>,
}

impl Live {
    /// From validated settings.
    pub fn from_settings(settings: &Settings, metrics: &Metrics) -> Result<Live, String> {
        Ok(Live {
            clients: ArcSwap::from_pointee(Clients::from_settings(&settings.clients, metrics)?),
            defaults: ArcSwap::from_pointee(Defaults::from_settings(settings)?),
        })
    }
}

/// Per-request state, for the exchange, the metrics and the access log.
struct RequestCtx {
    started: Instant,
    /// The caller's sane `X-Request-Id`, or a generated one.
    request_id: HeaderValue,
    merchant: Option<MerchantId>,
    /// The authenticated client (`None`: open gateway, or not authenticated).
    client: Option<Arc<Client>>,
    /// `100 Continue` was sent.
    continued: bool,
    /// Reading the caller's body failed (malformed, too large): its connection cannot be
    /// reused, whatever is answered.
    body_failed: bool,
    /// The first upstream attempt started: the gateway-added latency ends here.
    upstream_started: Option<Instant>,
    upstream_status: Option<u16>,
    replay_outcome: Option<&'static str>,
    error_code: Option<&'static str>,
}

impl RequestCtx {
    fn new(request_id: HeaderValue) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            request_id,
            merchant: None,
            client: None,
            continued: false,
            body_failed: false,
            upstream_started: None,
            upstream_status: None,
            replay_outcome: None,
            error_code: None,
        }
    }
}

/// What every attempt of one request sends, built once.
struct Outbound {
    peer: HttpPeer,
    /// The upstream head, with the first attempt's token.
    head: RequestHeader,
    plan: Plan,
}

/// Why an upstream exchange ended before a response head arrived.
enum Failure {
    /// The caller's side failed (gone, or a malformed body).
    Downstream(Box<Error>),
    /// The upstream failed; `reused`: on a pooled connection.
    Upstream { error: Box<Error>, reused: bool },
    /// Something the gateway itself refuses.
    Gateway(GatewayError),
}

impl Gateway {
    pub fn new(
        tokens: TokenManager,
        upstream: Arc<Endpoint>,
        settings: &Settings,
        metrics: Arc<Metrics>,
        upstreams: Upstreams,
        live: Arc<Live>,
    ) -> Result<Gateway, String> {
        let merchant_header = settings.merchants.header.as_str();
        let public = settings.upstream.public_base_url.trim_end_matches('/');
        let links = (!public.is_empty()).then(|| {
            (
                settings.upstream.base_url.trim_end_matches('/').to_string(),
                public.to_string(),
            )
        });
        let key_header = settings.server.client_key_header.as_str();
        Ok(Gateway {
            fast_path: settings.server.fast_path && links.is_none(),
            client_key_header: HeaderName::from_bytes(key_header.as_bytes())
                .map_err(|_| format!("{key_header} is not a header name"))?,
            live,
            links,
            tokens,
            upstream_host: HeaderValue::from_str(&upstream.authority)
                .map_err(|_| format!("{} is not a valid Host header", upstream.authority))?,
            upstream,
            merchant_header: HeaderName::from_bytes(merchant_header.as_bytes())
                .map_err(|_| format!("{merchant_header} is not a header name"))?,
            connect_timeout: settings.upstream.connect_timeout(),
            read_timeout: settings.upstream.read_timeout(),
            header_timeout: settings.server.header_timeout(),
            max_body_bytes: settings.server.max_body_bytes,
            metrics,
            upstreams,
            shutting_down: AtomicBool::new(false),
            shutdown: Notify::new(),
        })
    }

    /// Serves one request whose head has been read, then logs it; the connection back when
    /// it can carry another request.
    async fn handle(&self, mut s: ServerSession) -> Option<ReusedHttpStream> {
        let mut ctx = RequestCtx::new(headers::request_id(s.req_header()));
        let complete = self.serve(&mut s, &mut ctx).await;
        self.log(&s, &ctx);
        if !complete {
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&s);
        match s.finish().await {
            Ok(Some(stream)) => Some(ReusedHttpStream::from_reusable_stream(stream, settings)),
            _ => None,
        }
    }

    /// The steps of one request (see the module text); true when its response was written
    /// completely.
    async fn serve(&self, s: &mut ServerSession, ctx: &mut RequestCtx) -> bool {
        if let Err(e) = self.check_head(s) {
            return self.respond(s, ctx, e).await;
        }
        let caller = caller::identify(
            &self.live.clients.load(),
            caller::presented_key(s.req_header(), &self.client_key_header),
            &self.client_key_header,
        );
        let caller = match caller {
            Ok(caller) => caller,
            Err(e) => return self.respond(s, ctx, e).await,
        };
        ctx.client = caller.client.clone();
        let values = s.req_header().headers.get_all(&self.merchant_header);
        let merchant = match caller.merchant(
            values.iter().map(HeaderValue::as_bytes),
            &self.merchant_header,
        ) {
            Ok(m) => m,
            Err(e) => return self.respond(s, ctx, e).await,
        };
        ctx.merchant = Some(merchant.clone());
        let token = match self.tokens.get(&merchant).await {
            Ok(token) => token,
            Err(e) => return self.respond(s, ctx, e.to_gateway(&merchant)).await,
        };
        if expects_continue(s.req_header()) && !s.is_body_empty() {
            if s.write_continue_response().await.is_err() {
                return false;
            }
            ctx.continued = true;
        }
        s.enable_retry_buffering();
        let defaults = self.live.defaults.load_full();
        let plan = match defaults.plan(s, &merchant, caller.key, &token).await {
            Ok(plan) => plan,
            Err(PlanError::Body(e)) => return self.fail(s, ctx, Failure::Downstream(e)).await,
            Err(PlanError::Forbidden(why)) => {
                return self
                    .respond(s, ctx, GatewayError::CallerForbidden(why))
                    .await
            }
        };
        let out = match self.outbound(s, ctx, &token, plan) {
            Ok(out) => out,
            Err(f) => return self.fail(s, ctx, f).await,
        };
        self.exchange(s, ctx, &merchant, token, &out).await
    }

    /// What the gateway refuses before looking at the merchant: a target that is not
    /// origin-form (or absolute-form, normalised later), ambiguous framing
    /// ([`headers::check_framing`]), a body above the limit.
    fn check_head(&self, s: &ServerSession) -> Result<(), GatewayError> {
        let req = s.req_header();
        headers::check_target(req)?;
        let raw = s.as_http1().map(|h1| h1.get_headers_raw_bytes());
        headers::check_framing(req, raw.as_deref())?;
        match headers::content_length(req) {
            Some(n) if n > self.max_body_bytes => {
                Err(GatewayError::BodyTooLarge(self.max_body_bytes))
            }
            _ => Ok(()),
        }
    }

    /// The upstream peer and head, built once for every attempt of this request.
    fn outbound(
        &self,
        s: &mut ServerSession,
        ctx: &RequestCtx,
        token: &CachedToken,
        plan: Plan,
    ) -> Result<Outbound, Failure> {
        let peer = self.peer()?;
        let mut head = s.req_header().clone();
        let has_body = plan.body.is_some() || !s.is_body_empty();
        let internal = |e: Box<Error>| Failure::Gateway(GatewayError::Internal(e.to_string()));
        rewrite_upstream_headers(
            &mut head,
            &self.merchant_header,
            &token.bearer,
            &self.upstream_host,
            has_body,
        )
        .map_err(|e| Failure::Gateway(GatewayError::BadRequest(e.to_string())))?;
        head.remove_header(&self.client_key_header);
        if plan.query_testmode {
            if let Some(uri) = with_query_testmode(&head.uri) {
                head.set_uri(uri);
            }
        }
        if let Some(body) = &plan.body {
            head.insert_header(CONTENT_LENGTH, body.len())
                .map_err(internal)?;
        }
        if self.links.is_some() {
            // Links are rewritten in plain JSON: ask for it rather than inflate and deflate.
            head.insert_header(ACCEPT_ENCODING, "identity")
                .map_err(internal)?;
        }
        head.insert_header(REQUEST_ID, ctx.request_id.clone())
            .map_err(internal)?;
        Ok(Outbound { peer, head, plan })
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

    /// The attempts and the policy between them ([`exchange::next`]), then the response.
    async fn exchange(
        &self,
        s: &mut ServerSession,
        ctx: &mut RequestCtx,
        merchant: &MerchantId,
        mut token: Arc<CachedToken>,
        out: &Outbound,
    ) -> bool {
        ctx.upstream_started = Some(Instant::now());
        let idempotent = s.req_header().method.is_idempotent();
        let mut history = History::default();
        loop {
            let result = self.attempt(s, ctx, out, &token, history).await.map(|up| {
                let status = up.get_status().unwrap_or(StatusCode::BAD_GATEWAY);
                (up, status)
            });
            let request = exchange::Request {
                static_credential: token.is_static(),
                idempotent,
                body_at_hand: out.plan.body.is_some() || !s.retry_buffer_truncated(),
            };
            let (next, answered) = match self.judge(merchant, &token, history, request, result) {
                Ok(judged) => judged,
                Err(f) => return self.fail(s, ctx, f).await,
            };
            match (next, answered) {
                (Next::RetryOnFreshConnection, _) => {
                    tracing::debug!(
                        "a pooled upstream connection was closed; retrying on a new one"
                    );
                    history.retried = true;
                }
                (Next::Replay401, Ok(up)) => match self.tokens.get(merchant).await {
                    Ok(fresh) => {
                        self.discard(up, &out.peer).await;
                        token = fresh;
                        history.replayed = true;
                    }
                    Err(e) => {
                        ctx.replay_outcome = Some("refresh_failed");
                        return self.respond(s, ctx, e.to_gateway(merchant)).await;
                    }
                },
                (next, Ok(up)) => {
                    if let Next::Stream { replay } = next {
                        ctx.replay_outcome = replay;
                    }
                    return self.stream_response(s, ctx, up, &out.peer).await;
                }
                (_, Err(error)) => {
                    let f = Failure::Upstream {
                        error,
                        reused: false,
                    };
                    return self.fail(s, ctx, f).await;
                }
            }
        }
    }

    /// Streams the upstream response to the caller; true when written completely.
    async fn stream_response(
        &self,
        s: &mut ServerSession,
        ctx: &mut RequestCtx,
        mut up: Upstream,
        peer: &HttpPeer,
    ) -> bool {
        let Some(header) = up.resp_header() else {
            return false;
        };
        let mut resp = Box::new(header.clone());
        ctx.upstream_status = Some(resp.status.as_u16());
        strip_hop_by_hop(&mut resp);
        // The request id, unless the upstream answered with its own (passed on as it is).
        if !resp.headers.contains_key(REQUEST_ID)
            && resp
                .insert_header(REQUEST_ID, ctx.request_id.clone())
                .is_err()
        {
            return false;
        }
        let links = self.link_rewriter(s.req_header(), &mut resp);
        if s.write_response_header(resp).await.is_err() {
            return false; // the caller is gone
        }
        match response::stream_body(s, &mut up, links).await {
            Streamed::Complete => {
                self.upstreams.release(up, peer).await;
                true
            }
            // The upstream connection is dropped, unread: closed, never pooled.
            Streamed::CallerGone => false,
            Streamed::UpstreamBroken(e) => {
                // Too late for an error answer: the caller sees the response broken off.
                tracing::warn!(error = %e, "upstream failed during the response body");
                ctx.error_code = Some("upstream_unavailable");
                false
            }
        }
    }

    /// A rewriter for this response's HAL links, when it needs one (and the framing changed
    /// to chunked, since the length changes). Never for a response without a body (HEAD,
    /// 204, 304), whose `Content-Length` describes a body that is not sent.
    fn link_rewriter(
        &self,
        req: &RequestHeader,
        resp: &mut ResponseHeader,
    ) -> Option<LinkRewriter> {
        let (from, to) = self.links.as_ref()?;
        if req.method == Method::HEAD
            || resp.status == StatusCode::NO_CONTENT
            || resp.status == StatusCode::NOT_MODIFIED
        {
            return None;
        }
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

    /// Drops a 401 answer before the replay, pooling its connection when the body is small.
    async fn discard(&self, mut up: Upstream, peer: &HttpPeer) {
        let mut read = 0;
        while let Ok(Some(chunk)) = up.read_body_bytes().await {
            read += chunk.len();
            if read > MAX_DISCARD {
                return;
            }
        }
        self.upstreams.release(up, peer).await;
    }

    /// Answers a failed exchange; true when an answer was written completely.
    async fn fail(&self, s: &mut ServerSession, ctx: &mut RequestCtx, f: Failure) -> bool {
        let error = match f {
            Failure::Gateway(e) => e,
            Failure::Upstream { error, .. } => {
                tracing::warn!(error = %error, "upstream request failed");
                error::upstream_failure(&error)
            }
            Failure::Downstream(error) => match error::caller_body_failure(&error) {
                Some(answer) => {
                    ctx.body_failed = true;
                    answer
                }
                None => {
                    tracing::debug!(error = %error, "the caller went away");
                    return false;
                }
            },
        };
        self.respond(s, ctx, error).await
    }

    /// Answers the caller with a gateway error; true when the answer was written. The
    /// connection is kept only when the request body is settled ([`Gateway::settle_body`]).
    async fn respond(
        &self,
        s: &mut ServerSession,
        ctx: &mut RequestCtx,
        error: GatewayError,
    ) -> bool {
        if !self.settle_body(s, ctx).await {
            s.set_keepalive(None);
        }
        let (header, body) = error.response(ctx.request_id.to_str().ok());
        ctx.error_code = Some(error.code());
        let written = match s.write_response_header(Box::new(header)).await {
            Ok(()) => s.write_response_body(body, true).await,
            Err(e) => Err(e),
        };
        if let Err(e) = &written {
            tracing::debug!(error = %e, "cannot send error response; caller gone");
        }
        written.is_ok()
    }

    /// Whether the caller's connection can carry another request after an answer that may not
    /// have read the request body: the body is done, or at most [`MAX_DISCARD`] more bytes,
    /// drained now (within the head deadline). Never after a failed body, nor when the caller
    /// is still waiting for a `100 Continue` it will not get.
    async fn settle_body(&self, s: &mut ServerSession, ctx: &RequestCtx) -> bool {
        if ctx.body_failed || (expects_continue(s.req_header()) && !ctx.continued) {
            return false;
        }
        if s.as_http1().is_none() || s.is_body_done() {
            return true; // an HTTP/2 stream ends on its own
        }
        let read = s.body_bytes_read() as u64;
        let length = headers::content_length(s.req_header());
        if length.is_some_and(|n| n.saturating_sub(read) > MAX_DISCARD as u64) {
            return false;
        }
        let start = s.body_bytes_read();
        let drain = async {
            while let Ok(Some(_)) = s.read_request_body().await {
                if s.body_bytes_read() - start > MAX_DISCARD {
                    return false;
                }
            }
            s.is_body_done()
        };
        tokio::time::timeout(self.header_timeout, drain)
            .await
            .unwrap_or(false)
    }

    /// Metrics and the access-log line of a request served through pingora's session.
    fn log(&self, s: &ServerSession, ctx: &RequestCtx) {
        let status = s.response_written().map(|r| r.status.as_u16()).unwrap_or(0);
        let req = s.req_header();
        self.log_request(req.method.as_str(), req.uri.path(), status, ctx);
    }

    /// Metrics and the access-log line; `status` 0 when no response was sent.
    fn log_request(&self, method: &str, path: &str, status: u16, ctx: &RequestCtx) {
        let m = &self.metrics;
        match &ctx.client {
            Some(client) => client.requests.observe(status),
            None => m.observe_request(status),
        }
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
        access_log::log(&access_log::Line {
            method,
            path,
            status,
            merchant: ctx.merchant.as_ref().map(MerchantId::as_str).unwrap_or("-"),
            client: ctx.client.as_ref().map(|c| &*c.name).unwrap_or("-"),
            request_id: ctx.request_id.to_str().unwrap_or("-"),
            upstream_status: ctx.upstream_status.unwrap_or(0),
            duration_us: total.as_micros() as u64,
            gateway_us: gateway.map(|g| g.as_micros() as u64).unwrap_or(0),
            replayed: ctx.replay_outcome == Some("replayed"),
            error: ctx.error_code.unwrap_or("-"),
        });
    }

    /// A request head pingora could not parse: a Mollie-shaped 400, counted, then close.
    async fn bad_request_head(&self, mut s: ServerSession, e: Box<Error>) {
        if !matches!(e.etype(), ErrorType::InvalidHTTPHeader) {
            tracing::debug!(error = %e, "cannot read a request; caller gone");
            return;
        }
        let error = head_error(&e);
        let (header, body) = error.response(None);
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

/// The answer to a request head pingora refused: 431 `header_too_large` for one over its
/// limits (1 MiB, [`MAX_HEADER_LINES`] lines), else 400 `bad_request`.
fn head_error(e: &Error) -> GatewayError {
    let too_many = e
        .cause
        .as_ref()
        .and_then(|c| c.downcast_ref::<httparse::Error>())
        .is_some_and(|c| *c == httparse::Error::TooManyHeaders);
    // pingora's only words for a head over 1 MiB (pingora-core `read_request`).
    let too_long = e
        .context
        .as_ref()
        .is_some_and(|c| c.as_str().starts_with("Request header larger than"));
    match (too_many, too_long) {
        (true, _) => GatewayError::HeaderTooLarge(format!("over {MAX_HEADER_LINES} lines")),
        (_, true) => GatewayError::HeaderTooLarge("over 1 MiB".into()),
        _ => GatewayError::BadRequest("the request head is malformed".into()),
    }
}

/// pingora's limit of header lines in a request head (`MAX_HEADERS`, not public).
const MAX_HEADER_LINES: usize = 256;

/// pingora's HTTP/2 server hands each stream here ([`ProxyListener`] serves HTTP/1 itself).
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
        self.handle(session).await
    }

    async fn http_cleanup(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.shutdown.notify_waiters();
    }
}
