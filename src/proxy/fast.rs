//! The strict HTTP/1 fast path: the request shape every SDK sends, served on the raw
//! connections without pingora's sessions (`benches/README.md`, issue 14 lever 6).
//!
//! pingora's HTTP/1 sessions store every head twice (`http::HeaderMap` and a case map), the
//! upstream session keeps its own copy of the request head, and a response head is parsed into
//! one map, cloned, edited and serialized again. For a request of the shape [`request::parse`]
//! accepts, this path works on the bytes instead: the caller's head is parsed once with
//! httparse (pingora's own parser) into borrowed lines, the upstream head is written from those
//! lines, and the upstream's response head is parsed once and written for the caller from its
//! lines. Every request of another shape, and every HTTP/2 stream, is served by pingora's
//! session from the same bytes ([`Served::Slow`]); a TLS caller's bytes go to pingora the same
//! way (the listener hands pingora its buffer as a pipelined prefix, so nothing needs to be
//! rewound).
//!
//! Every rule of the slow path holds, in the same order: the listener's head deadline, size
//! bound and connection cap (the head is read before either path starts); origin-form targets
//! only; a body of at most [`FAST_BODY`] bytes under `server.max_body_bytes` (a larger one
//! goes to the slow path); the caller and merchant checks ([`super::caller`]); the token
//! ([`crate::tokens`]); the defaults ([`super::defaults`]); the attempt policy
//! ([`super::exchange::next`]: one 401 replay, one retry of an idempotent request on a new
//! connection); the upstream head with the bytes the slow path writes
//! (`fuzz/fuzz_targets/fast_path.rs` feeds both paths the same bytes and requires the same
//! verdict and the same bytes upstream); the caller's response head as the slow path writes
//! it ([`response::caller_head`]); metrics and the access log.
//!
//! What differs, by design: the body (at most 64 KiB) is read whole before the upstream is
//! called, as nginx buffers request bodies, so a 401 replay or a retry always has it; a
//! body slower than `server.header_timeout_ms` gets 408 `request_timeout`; a caller that
//! leaves while the upstream is answering is noticed when the answer is written, not before;
//! and an upstream response with ambiguous framing gets 502 (see [`response`]).

mod lines;
pub mod request;
mod response;

use super::caller;
use super::defaults::{is_json, Facts, Plan, PlanError, Planned};
use super::exchange::{History, Next, Request};
use super::headers::{request_id_of, REQUEST_ID};
use super::{Failure, Gateway, RequestCtx};
use crate::error::{self, GatewayError};
use crate::rewrite::with_query_testmode;
use crate::tokens::{CachedToken, Lookup, TokenError};
use crate::types::MerchantId;
use bytes::{Buf, Bytes, BytesMut};
use http::{StatusCode, Uri};
use pingora::prelude::*;
use pingora::protocols::http::date::get_cached_date;
use pingora::protocols::Stream;
use pingora::upstreams::peer::Peer;
use pingora::ErrorType::{
    ConnectionClosed, InvalidHTTPHeader, ReadError, ReadTimedout, WriteError,
};
use request::{Outbound, Simple};
use response::{Body, ForCaller, Parsed, Step};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The largest request body the fast path takes (the slow path's retry buffer).
pub const FAST_BODY: u64 = 64 * 1024;

/// An upstream read.
const READ_BUF: usize = 8 * 1024;

/// How a request given to the fast path ended, for the listener's keep-alive loop.
pub enum Served {
    /// Not of the fast path's shape: pingora's session serves it from these bytes (its head
    /// and whatever followed).
    Slow(BytesMut),
    /// Answered; the connection carries on with these bytes (the start of the next head).
    Next(BytesMut),
    /// Answered, or the caller left: the connection closes.
    Close,
}

/// The caller's connection during one request.
struct Caller<'s> {
    stream: &'s mut Stream,
    /// What the caller sent after the head (the body, then anything beyond it).
    buf: BytesMut,
    /// The connection carries another request after this one.
    keepalive: bool,
}

/// The upstream of one request: its peer, the peer's pool key, and a connection made ready
/// before the first attempt ([`Gateway::token_and_connection`]), with whether it came from
/// the pool.
struct Early<'g> {
    gateway: &'g Gateway,
    peer: HttpPeer,
    key: u64,
    stream: Option<(Stream, bool)>,
}

impl Drop for Early<'_> {
    /// A new connection the request did not use goes to the pool. One taken from the pool is
    /// closed instead: it has been idle since its first release for longer than the pool
    /// knows, and would restart its idle time there.
    fn drop(&mut self) {
        if let Some((stream, false)) = self.stream.take() {
            self.gateway.upstreams.release_stream(stream, self.key);
        }
    }
}

/// One upstream attempt's connection, with the response head at the start of `buf`, and the
/// caller's head for it in `out`.
struct Answer {
    stream: Stream,
    buf: BytesMut,
    head: response::Head,
    out: Vec<u8>,
}

impl Gateway {
    /// Serves the request whose head is the first `head_len` bytes of `buf` when it has the fast
    /// path's shape; [`Served::Slow`] (with `buf` whole) otherwise.
    pub(super) async fn serve_fast(
        &self,
        stream: &mut Stream,
        mut buf: BytesMut,
        head_len: usize,
        shutting_down: bool,
    ) -> Served {
        let head = buf.split_to(head_len).freeze();
        let mut lines = request::line_slots();
        let simple = request::parse(&head, &mut lines).filter(|r| {
            let length = r.length.unwrap_or(0);
            length <= FAST_BODY && length <= self.max_body_bytes
        });
        let Some(req) = simple else {
            self.metrics.http1_slow.inc();
            let mut whole = BytesMut::from(&head[..]);
            whole.extend_from_slice(&buf);
            return Served::Slow(whole);
        };
        self.metrics.http1_fast.inc();
        let mut ctx = RequestCtx::new(request_id_of(req.values(REQUEST_ID.as_str().as_bytes())));
        let mut caller = Caller {
            stream,
            buf,
            keepalive: !req.close && !shutting_down,
        };
        let status = self.fast_request(&req, &mut caller, &mut ctx).await;
        self.log_request(req.method.as_str(), req.path(), status, &ctx);
        match caller.keepalive {
            true => Served::Next(caller.buf),
            false => Served::Close,
        }
    }

    /// The steps of one request (see the module text); the status written (0: none).
    async fn fast_request(
        &self,
        req: &Simple<'_>,
        caller: &mut Caller<'_>,
        ctx: &mut RequestCtx,
    ) -> u16 {
        let length = req.length.unwrap_or(0) as usize;
        let body = match self.read_body(caller, length).await {
            Ok(body) => body,
            Err(None) => {
                caller.keepalive = false;
                return 0;
            }
            Err(Some(e)) => {
                caller.keepalive = false;
                return self.answer(caller, ctx, e).await;
            }
        };
        // Bytes beyond the body (a pipelined request): answered, then the connection closes,
        // as on the slow path, which never serves a pipelined request.
        if !caller.buf.is_empty() {
            caller.keepalive = false;
        }
        let clients = self.live.clients.load();
        let key_header = self.client_key_header.as_str().as_bytes();
        let key = caller::key_of(req.first(key_header), req.first(b"authorization"));
        let who = match caller::identify(&clients, key, &self.client_key_header) {
            Ok(who) => who,
            Err(e) => return self.answer(caller, ctx, e).await,
        };
        ctx.client = who.client.clone();
        let values = req.values(self.merchant_header.as_str().as_bytes());
        let merchant = match who.merchant(values, &self.merchant_header) {
            Ok(m) => m,
            Err(e) => return self.answer(caller, ctx, e).await,
        };
        ctx.merchant = Some(merchant.clone());
        let (token, early) = self.token_and_connection(&merchant).await;
        let token = match token {
            Ok(token) => token,
            Err(e) => return self.answer(caller, ctx, e.to_gateway(&merchant)).await,
        };
        let facts = Facts {
            method: &req.method,
            query: req.query(),
            length: req.length,
            chunked: false,
            json: req.first(b"content-type").is_some_and(is_json),
        };
        let defaults = self.live.defaults.load();
        let planned = defaults.plan_head(&facts, &merchant, who.key, &token);
        let plan = match planned.and_then(|p| match p {
            Planned::Done(plan) => Ok(plan),
            Planned::WithBody(edit) => edit.apply(body.clone()),
        }) {
            Ok(plan) => plan,
            Err(PlanError::Forbidden(why)) => {
                return self
                    .answer(caller, ctx, GatewayError::CallerForbidden(why))
                    .await
            }
            Err(PlanError::Body(e)) => {
                let e = GatewayError::Internal(e.to_string());
                return self.answer(caller, ctx, e).await;
            }
        };
        let target = plan
            .query_testmode
            .then(|| Uri::try_from(req.target).ok())
            .flatten()
            .and_then(|uri| with_query_testmode(&uri));
        let body = plan.body.clone().unwrap_or(body);
        let request_id = ctx.request_id.clone();
        let wire = Wire {
            req,
            target: target
                .as_ref()
                .map(|t| t.path_and_query().map_or("/", |p| p.as_str())),
            plan: &plan,
            body: &body,
            request_id: request_id.as_bytes(),
        };
        self.fast_exchange(caller, ctx, &merchant, token, &wire, early)
            .await
    }

    /// The merchant's token. When a refresh is to be waited for, an upstream connection is
    /// made ready meanwhile (from the pool, or connected), so that a request on an expired
    /// token waits for the slower of the two, not for both in turn: in a refresh storm the
    /// connections of every waiting request are open when the token arrives.
    async fn token_and_connection(
        &self,
        merchant: &MerchantId,
    ) -> (Result<Arc<CachedToken>, TokenError>, Option<Early<'_>>) {
        match self.tokens.lookup(merchant) {
            Lookup::Fresh(token) => (Ok(token), None),
            Lookup::Other => (self.tokens.get(merchant).await, None),
            Lookup::Refresh => {
                let Ok(peer) = self.peer() else {
                    return (self.tokens.get(merchant).await, None);
                };
                let key = peer.reuse_hash();
                // A failure is not an answer yet: the first attempt connects again, and fails
                // or retries as it would have.
                let connect = async { self.upstreams.stream(&peer, key, false).await.ok() };
                let (token, stream) = tokio::join!(self.tokens.get(merchant), connect);
                let early = Early {
                    gateway: self,
                    peer,
                    key,
                    stream,
                };
                (token, Some(early))
            }
        }
    }

    /// Reads the request body of `length` bytes from the caller, within
    /// `server.header_timeout_ms`. `Err(None)`: the caller left (nobody to answer).
    async fn read_body(
        &self,
        caller: &mut Caller<'_>,
        length: usize,
    ) -> Result<Bytes, Option<GatewayError>> {
        if caller.buf.len() < length {
            let read = async {
                while caller.buf.len() < length {
                    caller.buf.reserve(length - caller.buf.len());
                    match caller.stream.read_buf(&mut caller.buf).await {
                        Ok(n) if n > 0 => {}
                        _ => return false,
                    }
                }
                true
            };
            match tokio::time::timeout(self.header_timeout, read).await {
                Ok(true) => {}
                Ok(false) => return Err(None),
                Err(_) => {
                    let ms = self.header_timeout.as_millis() as u64;
                    return Err(Some(GatewayError::RequestTimeout(ms)));
                }
            }
        }
        Ok(caller.buf.split_to(length).freeze())
    }

    /// The attempts and the policy between them, then the response (as `Gateway::exchange`).
    async fn fast_exchange(
        &self,
        caller: &mut Caller<'_>,
        ctx: &mut RequestCtx,
        merchant: &MerchantId,
        mut token: Arc<CachedToken>,
        wire: &Wire<'_, '_>,
        early: Option<Early<'_>>,
    ) -> u16 {
        let mut early = match early {
            Some(early) => early,
            None => match self.peer() {
                Ok(peer) => Early {
                    gateway: self,
                    key: peer.reuse_hash(),
                    peer,
                    stream: None,
                },
                Err(f) => return self.fast_fail(caller, ctx, f).await,
            },
        };
        ctx.upstream_started = Some(Instant::now());
        let key = early.key;
        let mut bytes = Vec::with_capacity(512 + wire.body.len());
        wire.write(self, &token, &mut bytes);
        let mut history = History::default();
        let date = get_cached_date();
        let for_caller = ForCaller {
            request_id: wire.request_id,
            date: date.as_bytes(),
            keepalive: caller.keepalive,
        };
        loop {
            // A pooled connection taken before a refresh is checked again: the upstream may
            // have closed it while the token was fetched.
            let ready = match early.stream.take() {
                Some((mut stream, true)) => {
                    super::pool::is_quiet(&mut stream).then_some((stream, true))
                }
                ready => ready,
            };
            let result = self
                .fast_attempt(
                    &early.peer,
                    key,
                    ready,
                    &bytes,
                    history.retried,
                    &for_caller,
                )
                .await
                .map(|a| {
                    let status = StatusCode::from_u16(a.head.status);
                    (a, status.unwrap_or(StatusCode::BAD_GATEWAY))
                });
            let request = Request {
                static_credential: token.is_static(),
                idempotent: wire.req.method.is_idempotent(),
                body_at_hand: true,
            };
            let (next, answered) = match self.judge(merchant, &token, history, request, result) {
                Ok(judged) => judged,
                Err(f) => return self.fast_fail(caller, ctx, f).await,
            };
            match (next, answered) {
                (Next::RetryOnFreshConnection, _) => {
                    tracing::debug!(
                        "a pooled upstream connection was closed; retrying on a new one"
                    );
                    history.retried = true;
                }
                (Next::Replay401, Ok(answer)) => match self.tokens.get(merchant).await {
                    Ok(fresh) => {
                        self.fast_discard(answer, key).await;
                        token = fresh;
                        bytes.clear();
                        wire.write(self, &token, &mut bytes);
                        history.replayed = true;
                    }
                    Err(e) => {
                        ctx.replay_outcome = Some("refresh_failed");
                        return self.answer(caller, ctx, e.to_gateway(merchant)).await;
                    }
                },
                (next, Ok(answer)) => {
                    if let Next::Stream { replay } = next {
                        ctx.replay_outcome = replay;
                    }
                    return self.relay(caller, ctx, answer, key).await;
                }
                (_, Err(error)) => {
                    let f = Failure::Upstream {
                        error,
                        reused: false,
                    };
                    return self.fast_fail(caller, ctx, f).await;
                }
            }
        }
    }

    /// One attempt: a connection (pooled, or new when `fresh`), the request, and the final
    /// response head, all within `upstream.read_timeout_ms`; the caller's head is built as the
    /// response head is parsed.
    async fn fast_attempt(
        &self,
        peer: &HttpPeer,
        key: u64,
        ready: Option<(Stream, bool)>,
        bytes: &[u8],
        fresh: bool,
        caller: &ForCaller<'_>,
    ) -> Result<Answer, Failure> {
        let (mut stream, reused) = match ready {
            Some(ready) => ready,
            None => self
                .upstreams
                .stream(peer, key, fresh)
                .await
                .map_err(|error| Failure::Upstream {
                    error,
                    reused: false,
                })?,
        };
        let mut buf = BytesMut::with_capacity(READ_BUF);
        let mut out = Vec::with_capacity(1024);
        let exchange = exchange_head(&mut stream, bytes, &mut buf, caller, &mut out);
        let head = match tokio::time::timeout(self.read_timeout, exchange).await {
            Ok(Ok(head)) => head,
            Ok(Err(mut error)) => {
                // Before any response byte, a failure on a pooled connection may be retried.
                if buf.is_empty() && error.etype() != &InvalidHTTPHeader {
                    error.retry = pingora::RetryType::ReusedOnly;
                }
                return Err(Failure::Upstream { error, reused });
            }
            Err(_) => {
                let error = Error::explain(ReadTimedout, "the upstream did not answer in time");
                return Err(Failure::Upstream { error, reused });
            }
        };
        Ok(Answer {
            stream,
            buf,
            head,
            out,
        })
    }

    /// Streams the answer to the caller (its connection pooled again under `key`); the status
    /// written.
    async fn relay(
        &self,
        caller: &mut Caller<'_>,
        ctx: &mut RequestCtx,
        answer: Answer,
        key: u64,
    ) -> u16 {
        let Answer {
            mut stream,
            mut buf,
            head,
            mut out,
        } = answer;
        ctx.upstream_status = Some(head.status);
        caller.keepalive = head.keepalive;
        buf.advance(head.len);
        let mut body = Body::new(head.framing);
        let broken = |ctx: &mut RequestCtx, why: &str| {
            tracing::warn!(error = why, "upstream failed during the response body");
            ctx.error_code = Some("upstream_unavailable");
        };
        loop {
            match body.step(&mut buf) {
                Ok(Step::Data(data)) => body.encode(&data, &mut out),
                Ok(Step::Done) => break,
                Ok(Step::More) => {
                    if !out.is_empty() {
                        if send(caller.stream, &out).await.is_err() {
                            caller.keepalive = false;
                            return head.status;
                        }
                        out.clear();
                    }
                    buf.reserve(READ_BUF);
                    let read = tokio::time::timeout(self.read_timeout, stream.read_buf(&mut buf));
                    let eof = match read.await {
                        Ok(Ok(0)) => body.eof(),
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(_)) => Err("reading the response body failed"),
                        Err(_) => Err("the response body timed out"),
                    };
                    if let Err(why) = eof {
                        // The caller sees the response broken off, never a truncated whole.
                        broken(ctx, why);
                        caller.keepalive = false;
                        return head.status;
                    }
                }
                Err(why) => {
                    broken(ctx, why);
                    caller.keepalive = false;
                    return head.status;
                }
            }
        }
        body.finish(&mut out);
        if send(caller.stream, &out).await.is_err() {
            caller.keepalive = false;
            return head.status;
        }
        if head.reusable && buf.is_empty() {
            self.upstreams.release_stream(stream, key);
        }
        head.status
    }

    /// Drops a 401 answer before the replay, pooling its connection when its body is small.
    async fn fast_discard(&self, answer: Answer, key: u64) {
        let Answer {
            mut stream,
            mut buf,
            head,
            ..
        } = answer;
        buf.advance(head.len);
        let mut body = Body::new(head.framing);
        let mut read = 0;
        loop {
            match body.step(&mut buf) {
                Ok(Step::Data(data)) => {
                    read += data.len();
                    if read > super::MAX_DISCARD {
                        return;
                    }
                }
                Ok(Step::Done) => break,
                Ok(Step::More) => {
                    buf.reserve(READ_BUF);
                    let read = tokio::time::timeout(self.read_timeout, stream.read_buf(&mut buf));
                    match read.await {
                        Ok(Ok(0)) if body.eof().is_ok() => {}
                        Ok(Ok(n)) if n > 0 => {}
                        _ => return,
                    }
                }
                Err(_) => return,
            }
        }
        if head.reusable && buf.is_empty() {
            self.upstreams.release_stream(stream, key);
        }
    }

    /// Answers a failed exchange (as `Gateway::fail`).
    async fn fast_fail(&self, caller: &mut Caller<'_>, ctx: &mut RequestCtx, f: Failure) -> u16 {
        let error = match f {
            Failure::Gateway(e) => e,
            Failure::Upstream { error, .. } => {
                tracing::warn!(error = %error, "upstream request failed");
                error::upstream_failure(&error)
            }
            // The body was read before the exchange: nothing fails on the caller's side.
            Failure::Downstream(error) => GatewayError::Internal(error.to_string()),
        };
        self.answer(caller, ctx, error).await
    }

    /// Answers the caller with a gateway error; the status written (0: the caller is gone).
    async fn answer(
        &self,
        caller: &mut Caller<'_>,
        ctx: &mut RequestCtx,
        error: GatewayError,
    ) -> u16 {
        let (mut header, body) = error.response(ctx.request_id.to_str().ok());
        ctx.error_code = Some(error.code());
        let connection = if caller.keepalive {
            "keep-alive"
        } else {
            "close"
        };
        let date = get_cached_date();
        let written = header
            .insert_header(http::header::DATE, date)
            .and_then(|_| header.insert_header(http::header::CONNECTION, connection));
        let mut out = Vec::with_capacity(256 + body.len());
        response::write_head(&header, &mut out);
        out.extend_from_slice(&body);
        if written.is_err() || send(caller.stream, &out).await.is_err() {
            caller.keepalive = false;
            return 0;
        }
        header.status.as_u16()
    }
}

/// Writes the request and reads the final response head into `buf` (the caller's head for it
/// into `out`).
async fn exchange_head(
    stream: &mut Stream,
    bytes: &[u8],
    buf: &mut BytesMut,
    caller: &ForCaller<'_>,
    out: &mut Vec<u8>,
) -> Result<response::Head, Box<Error>> {
    stream
        .write_all(bytes)
        .await
        .or_err(WriteError, "writing the request")?;
    stream
        .flush()
        .await
        .or_err(WriteError, "writing the request")?;
    loop {
        let n = stream
            .read_buf(buf)
            .await
            .or_err(ReadError, "reading the response head")?;
        if n == 0 {
            return Error::e_explain(ConnectionClosed, "the upstream closed before answering");
        }
        loop {
            match response::parse_head(buf, caller, out) {
                Ok(Parsed::Partial) => break,
                Ok(Parsed::Informational(len)) => buf.advance(len),
                Ok(Parsed::Final(head)) => return Ok(head),
                Err(why) => return Error::e_explain(InvalidHTTPHeader, why),
            }
        }
        buf.reserve(READ_BUF);
    }
}

/// Writes and flushes `bytes` to the caller.
async fn send(stream: &mut Stream, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// What every attempt of one request writes upstream, but the token.
struct Wire<'r, 'a> {
    req: &'r Simple<'a>,
    /// The target with `testmode=true`, when the defaults add it.
    target: Option<&'r str>,
    plan: &'r Plan,
    /// The body sent: the caller's, or the one the defaults rewrote.
    body: &'r Bytes,
    request_id: &'r [u8],
}

impl Wire<'_, '_> {
    /// The upstream request with `token`: head then body, into `out`.
    fn write(&self, gateway: &Gateway, token: &CachedToken, out: &mut Vec<u8>) {
        let mut length = itoa::Buffer::new();
        let o = Outbound {
            merchant_header: gateway.merchant_header.as_str().as_bytes(),
            client_key_header: gateway.client_key_header.as_str().as_bytes(),
            bearer: token.bearer.as_bytes(),
            host: gateway.upstream_host.as_bytes(),
            request_id: self.request_id,
            target: self.target.map(str::as_bytes),
            length: self
                .plan
                .body
                .as_ref()
                .map(|b| length.format(b.len()).as_bytes()),
        };
        request::upstream_head(self.req, &o, out);
        out.extend_from_slice(self.body);
    }
}
