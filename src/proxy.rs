//! The pingora `ProxyHttp` implementation: one merchant's request in, the same request with
//! that merchant's access token out, the response streamed back.
//!
//! Each hook does one job, in the phase where it belongs:
//! - `request_filter`: reject a bad merchant header and fetch the token *before* anything is
//!   sent upstream (errors are rendered here, nothing is forwarded);
//! - `upstream_peer`: the configured upstream only, from resolved addresses (never the
//!   caller's `Host` or absolute-form target);
//! - `upstream_request_filter`: the rewrite (runs again on a replay, with the new token);
//! - `upstream_response_filter`: a 401 invalidates the used token, refreshes, and asks
//!   pingora to retry (its retry buffer keeps up to 64 KiB of body); `error_while_proxy`
//!   keeps that retry allowed for non-idempotent methods;
//! - `fail_to_proxy`: renders every error through `error.rs`;
//! - `logging`: metrics and the one access-log line.

use crate::config::{Settings, TestMode};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::rewrite::{with_body_defaults, with_query_testmode, LinkRewriter};
use crate::tokens::{CachedToken, TokenManager};
use crate::types::{MerchantId, MerchantIdError};
use crate::upstream::Endpoint;
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{
    ACCEPT_ENCODING, AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HOST,
    TRANSFER_ENCODING,
};
use http::{HeaderName, HeaderValue, Method, StatusCode, Uri};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Request bodies up to this size may get defaults added: pingora's retry buffer, which
/// also keeps them for a 401 replay.
pub const MAX_REWRITE_BODY: usize = 64 * 1024;

/// Reads a whole request body of `length` bytes into pingora's retry buffer.
async fn read_body(session: &mut Session, length: usize) -> Result<Bytes> {
    session.enable_retry_buffering();
    let mut body = Vec::with_capacity(length);
    while let Some(chunk) = session.read_request_body().await? {
        body.extend_from_slice(&chunk);
        if body.len() > length {
            return Error::e_explain(
                ErrorType::InvalidHTTPHeader,
                "body longer than Content-Length",
            );
        }
    }
    Ok(Bytes::from(body))
}

/// Idle pooled upstream connections are closed after this long.
pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Gateway {
    tokens: TokenManager,
    upstream: Arc<Endpoint>,
    /// `Host` for upstream requests, built once.
    upstream_host: HeaderValue,
    merchant_header: HeaderName,
    connect_timeout: Duration,
    read_timeout: Duration,
    metrics: Arc<Metrics>,
    /// `[merchants.defaults.<id>]`: test mode and profile per merchant.
    defaults: HashMap<MerchantId, Defaults>,
    /// (upstream base, public base) when `upstream.public_base_url` is set.
    links: Option<(String, String)>,
}

/// One merchant's request defaults, resolved from the settings once.
struct Defaults {
    testmode: TestMode,
    profile_id: Option<Arc<str>>,
}

impl Gateway {
    pub fn new(
        tokens: TokenManager,
        upstream: Arc<Endpoint>,
        settings: &Settings,
        metrics: Arc<Metrics>,
    ) -> Result<Gateway, String> {
        let merchant_header = settings.merchants.header.as_str();
        let mut defaults = HashMap::new();
        for (id, d) in &settings.merchants.defaults {
            let id = MerchantId::parse(id).map_err(|e| format!("merchant id {id:?} {e}"))?;
            let profile_id = Some(d.profile_id.as_str())
                .filter(|p| !p.is_empty())
                .map(Arc::from);
            defaults.insert(
                id,
                Defaults {
                    testmode: d.testmode,
                    profile_id,
                },
            );
        }
        let public = settings.upstream.public_base_url.trim_end_matches('/');
        let links = (!public.is_empty()).then(|| {
            (
                settings.upstream.base_url.trim_end_matches('/').to_string(),
                public.to_string(),
            )
        });
        Ok(Gateway {
            defaults,
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
        })
    }

    /// Works out what this request needs added (DESIGN.md §5): `testmode` when the merchant's
    /// mode says so, `profileId` on creates. A JSON body that needs it is read now (up to the
    /// 64 KiB retry buffer), so its rewritten length is known before the header goes upstream;
    /// pingora then sends it from the retry buffer through `request_body_filter`.
    async fn plan_defaults(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        merchant: &MerchantId,
    ) -> Result<()> {
        let d = self.defaults.get(merchant);
        let req = session.req_header();
        let testmode = match d.map(|d| d.testmode).unwrap_or_default() {
            TestMode::Always => true,
            TestMode::Never => false,
            TestMode::FromKey => req
                .headers
                .get(AUTHORIZATION)
                .is_some_and(|v| v.as_bytes().starts_with(b"Bearer test_")),
        };
        let method = req.method.clone();
        let profile = d
            .and_then(|d| d.profile_id.clone())
            .filter(|_| method == Method::POST);
        if !testmode && profile.is_none() {
            return Ok(());
        }
        let length = req
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let chunked = req.headers.contains_key(TRANSFER_ENCODING);
        let json = req
            .headers
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        let has_body_method =
            method == Method::POST || method == Method::PATCH || method == Method::DELETE;
        match (length, chunked) {
            (None | Some(0), false)
                if testmode && (method == Method::GET || method == Method::DELETE) =>
            {
                ctx.query_testmode = true;
            }
            (Some(n), false) if json && n > 0 && n <= MAX_REWRITE_BODY && has_body_method => {
                let body = read_body(session, n).await?;
                ctx.body = with_body_defaults(&body, testmode, profile.as_deref());
            }
            // No body to add to, not JSON, too large, or chunked: forwarded untouched.
            _ => {}
        }
        Ok(())
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

    /// Answers the caller with a gateway error; the request goes no further.
    async fn respond(&self, session: &mut Session, ctx: &mut RequestCtx, error: GatewayError) {
        let (header, body) = error.response();
        ctx.error_code = Some(error.code());
        // The unread request body makes the connection unusable for another request.
        session.set_keepalive(None);
        let written = match session.write_response_header(Box::new(header), false).await {
            Ok(()) => session.write_response_body(Some(body), true).await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            tracing::debug!(error = %e, "cannot send error response; caller gone");
        }
    }
}

/// Per-request state shared by the hooks.
pub struct RequestCtx {
    started: Instant,
    merchant: Option<MerchantId>,
    /// The token put on the current attempt (replaced before a replay).
    token: Option<Arc<CachedToken>>,
    /// Set when the first upstream attempt starts: the gateway-added latency ends there.
    upstream_started: Option<Instant>,
    upstream_status: Option<u16>,
    /// An upstream 401 was answered by a refresh; the next error is our replay request.
    replay_pending: bool,
    replay_outcome: Option<&'static str>,
    /// A gateway error to render in `fail_to_proxy` (set when a refresh after a 401 fails).
    error: Option<GatewayError>,
    error_code: Option<&'static str>,
    /// Add `testmode=true` to the query string.
    query_testmode: bool,
    /// The rewritten request body (testmode/profileId added), sent instead of the original.
    body: Option<Bytes>,
    /// Rewrites HAL links in this response.
    links: Option<LinkRewriter>,
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            merchant: None,
            token: None,
            upstream_started: None,
            upstream_status: None,
            replay_pending: false,
            replay_outcome: None,
            error: None,
            error_code: None,
            query_testmode: false,
            body: None,
            links: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let merchant = match self.merchant(session.req_header()) {
            Ok(m) => m,
            Err(e) => {
                self.respond(session, ctx, e).await;
                return Ok(true);
            }
        };
        let token = self.tokens.get(&merchant).await;
        ctx.merchant = Some(merchant);
        match token {
            Ok(token) => {
                ctx.token = Some(token);
                let merchant = ctx.merchant.clone().expect("set above");
                self.plan_defaults(session, ctx, &merchant).await?;
                Ok(false)
            }
            Err(e) => {
                let error = e.to_gateway(ctx.merchant.as_ref().expect("set above"));
                self.respond(session, ctx, error).await;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        ctx.upstream_started.get_or_insert_with(Instant::now);
        let addr = self.upstream.addr().ok_or_else(|| {
            Error::explain(
                ErrorType::ConnectNoRoute,
                format!("{} is not resolved (DNS)", self.upstream.host),
            )
            .into_up()
        })?;
        // SNI only means something over TLS: a plain-HTTP upstream costs no String per request.
        let sni = if self.upstream.tls {
            self.upstream.host.clone()
        } else {
            String::new()
        };
        let mut peer = HttpPeer::new(addr, self.upstream.tls, sni);
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.read_timeout);
        peer.options.idle_timeout = Some(UPSTREAM_IDLE_TIMEOUT);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let token = ctx
            .token
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no token in context"))?;
        rewrite_upstream_headers(
            req,
            &self.merchant_header,
            &token.bearer,
            &self.upstream_host,
        )?;
        if ctx.query_testmode {
            if let Some(uri) = with_query_testmode(&req.uri) {
                req.set_uri(uri);
            }
        }
        if let Some(body) = &ctx.body {
            req.insert_header(CONTENT_LENGTH, body.len().to_string())?;
        }
        if self.links.is_some() {
            // Links are rewritten in plain JSON: ask for it rather than inflate and deflate.
            req.insert_header(ACCEPT_ENCODING, "identity")?;
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(rewritten) = &ctx.body {
            // The original arrives from the retry buffer; send the rewritten one instead.
            *body = end_of_stream.then(|| rewritten.clone());
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some((from, to)) = &self.links else {
            return Ok(());
        };
        if is_ruby_sdk(session.req_header()) {
            // mollie-api-ruby keeps only the path of `https://api.mollie.com/…` hrefs (so it
            // stays on the gateway by itself) and misreads any other href as a resource name.
            return Ok(());
        }
        let is_json = resp.headers.get(CONTENT_TYPE).is_some_and(|v| {
            let v = v.as_bytes();
            v.starts_with(b"application/hal+json") || v.starts_with(b"application/json")
        });
        let encoded = resp
            .headers
            .get(CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        if is_json && !encoded {
            ctx.links = Some(LinkRewriter::new(from, to));
            resp.remove_header(&CONTENT_LENGTH);
            resp.insert_header(TRANSFER_ENCODING, "chunked")?;
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if let Some(links) = ctx.links.as_mut() {
            let mut out = Vec::with_capacity(body.as_ref().map_or(0, |b| b.len()) + 64);
            if let Some(chunk) = body.as_ref() {
                links.feed(chunk, &mut out);
            }
            if end_of_stream {
                links.finish(&mut out);
            }
            *body = Some(Bytes::from(out));
        }
        Ok(None)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.upstream_status = Some(resp.status.as_u16());
        strip_hop_by_hop(resp);
        if resp.status != StatusCode::UNAUTHORIZED {
            return Ok(());
        }
        self.metrics.upstream_401.inc();
        if ctx.replay_outcome.is_some() {
            ctx.replay_outcome = Some("rejected_again");
            return Ok(());
        }
        let (Some(merchant), Some(used)) = (ctx.merchant.clone(), ctx.token.as_ref()) else {
            return Ok(());
        };
        self.tokens.invalidate(&merchant, used.id);
        if session.retry_buffer_truncated() {
            // Cannot replay: the caller gets this 401; the next request gets a fresh token.
            ctx.replay_outcome = Some("body_too_large");
            return Ok(());
        }
        match self.tokens.get(&merchant).await {
            Ok(fresh) => {
                ctx.token = Some(fresh);
                ctx.replay_outcome = Some("replayed");
                ctx.replay_pending = true;
                let mut e = Error::explain(
                    ErrorType::HTTPStatus(401),
                    "upstream answered 401; replaying with a refreshed token",
                );
                e.set_retry(true);
                Err(e)
            }
            Err(e) => {
                ctx.replay_outcome = Some("refresh_failed");
                ctx.error = Some(e.to_gateway(&merchant));
                Err(Error::explain(
                    ErrorType::HTTPStatus(401),
                    "upstream answered 401 and the refresh failed",
                ))
            }
        }
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if std::mem::take(&mut ctx.replay_pending) {
            // Our own replay request: allowed for any method, body kept by pingora.
            e.set_retry(true);
        } else if !session.req_header().method.is_idempotent() || session.retry_buffer_truncated() {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        ctx: &RequestCtx,
        _e: &Error,
        _context: ProxyWarnLogContext,
    ) -> bool {
        // Our own replay after a 401 is expected, counted and in the access log line.
        ctx.replay_outcome == Some("replayed")
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, _e: &Error) -> bool {
        // A failed refresh after a 401 is logged by the token manager and the access log.
        // (pingora calls this after `fail_to_proxy`, so `ctx.error` is already taken.)
        ctx.replay_outcome == Some("refresh_failed")
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let error = match ctx.error.take() {
            Some(error) => Some(error),
            None => classify(e),
        };
        let Some(error) = error else {
            // The caller's connection is gone: nothing to answer.
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        let status = error.status();
        self.respond(session, ctx, error).await;
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
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
        let req = session.req_header();
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
}

/// The rewrite every upstream request gets, on every attempt: the merchant header dropped,
/// the merchant's `Authorization` and the upstream's `Host` put on, and an absolute-form target
/// cut to origin form (the upstream is ours to choose). A plain function so that
/// `benches/hot_path.rs` measures exactly what `upstream_request_filter` does.
pub fn rewrite_upstream_headers(
    req: &mut RequestHeader,
    merchant_header: &HeaderName,
    bearer: &HeaderValue,
    host: &HeaderValue,
) -> Result<()> {
    req.remove_header(merchant_header);
    req.insert_header(AUTHORIZATION, bearer.clone())?;
    req.insert_header(HOST, host.clone())?;
    if req.uri.authority().is_some() {
        // Absolute-form target: keep only path and query.
        let origin_form = req
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        let uri: Uri = origin_form
            .parse()
            .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "bad request target"))?;
        req.set_uri(uri);
    }
    Ok(())
}

/// The Ruby SDK's `User-Agent` always carries ` Ruby/<version>`.
fn is_ruby_sdk(req: &RequestHeader) -> bool {
    req.headers
        .get(http::header::USER_AGENT)
        .is_some_and(|ua| ua.as_bytes().windows(6).any(|w| w == b" Ruby/"))
}

/// Hop-by-hop response headers (RFC 9110 §7.6.1) are the upstream connection's business, not
/// the caller's: drop those named in `Connection` and the standard ones. pingora frames the
/// caller's response itself (`Connection`, `Transfer-Encoding` stay under its control).
fn strip_hop_by_hop(resp: &mut ResponseHeader) {
    const STANDARD: [&str; 5] = ["keep-alive", "proxy-connection", "te", "trailer", "upgrade"];
    let named: Vec<HeaderName> = resp
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.eq_ignore_ascii_case("close") && !t.eq_ignore_ascii_case("keep-alive"))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .filter(|n| *n != CONTENT_LENGTH && *n != TRANSFER_ENCODING)
        .collect();
    for name in named {
        resp.remove_header(&name);
    }
    let switching = resp.status == StatusCode::SWITCHING_PROTOCOLS;
    for name in STANDARD {
        if !(switching && name == "upgrade") && resp.headers.contains_key(name) {
            resp.remove_header(name);
        }
    }
}

/// Maps a pingora error to the gateway's answer; `None` when the caller is gone.
fn classify(e: &Error) -> Option<GatewayError> {
    use ErrorType::*;
    let what = e.etype().as_str().to_string();
    match e.esource() {
        ErrorSource::Upstream => Some(match e.etype() {
            ConnectTimedout | ReadTimedout | WriteTimedout => GatewayError::UpstreamTimeout(what),
            _ => GatewayError::UpstreamUnavailable(what),
        }),
        ErrorSource::Downstream => match e.etype() {
            WriteError | ReadError | ConnectionClosed => None,
            _ => Some(GatewayError::BadRequest(what)),
        },
        ErrorSource::Internal | ErrorSource::Unset => Some(GatewayError::Internal(what)),
    }
}
