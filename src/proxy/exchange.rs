//! One request's exchange with the upstream: the attempts and the policy between them.
//!
//! The policy ([`next`]) is a pure function of what the attempts so far came to, unit-tested
//! transition by transition:
//! - an answer other than 401 is streamed to the caller;
//! - a 401 to the first attempt, with the whole body at hand (a body up to 64 KiB is kept),
//!   is replayed once with a fresh token; a 401 to the replay, or one whose body is no longer
//!   at hand, is streamed to the caller; so is a 401 for a merchant stored with a static
//!   credential (an API key or organization token: nothing to refresh, never replayed);
//! - a failure pingora marks retryable (the upstream closed or reset a *pooled* connection
//!   before any response byte: `Error::retry()`) is retried once on a new connection, for an
//!   idempotent request whose body is at hand; a POST is never sent twice;
//! - every other failure (a timeout, a refused connection, a broken response) is answered
//!   502/504 and never resent.
//!
//! The attempt itself ([`Gateway::attempt`]) writes the upstream head built once per request,
//! then the body exactly as the caller framed it: empty chunks from pingora's chunked parser
//! (trailers, a chunk-size line split across reads) are skipped, since an empty chunk written
//! upstream is the terminating `0\r\n\r\n`. A caller body that turns out malformed or too
//! large drops the upstream connection without that terminator, so the upstream never
//! processes a truncated body as complete.

use super::{Failure, Gateway, Outbound, RequestCtx};
use crate::error::GatewayError;
use crate::proxy::defaults::Plan;
use crate::tokens::CachedToken;
use crate::types::MerchantId;
use http::header::AUTHORIZATION;
use http::StatusCode;
use pingora::prelude::*;
use pingora::protocols::http::v1::client::HttpSession;
use pingora::protocols::http::ServerSession;

/// What one upstream attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// A final response head arrived with this status.
    Answered(StatusCode),
    /// No response head; `retryable`: pingora's `Error::retry()` for it.
    Failed { retryable: bool },
}

/// What the request allows, as of the last attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// RFC 9110 §9.2.2: GET, HEAD, PUT, DELETE, OPTIONS, TRACE.
    pub idempotent: bool,
    /// The whole body can be sent again (none, or kept in the 64 KiB retry buffer).
    pub body_at_hand: bool,
    /// The merchant's credential is static: a 401 is passed back, never replayed.
    pub static_credential: bool,
}

/// The attempts so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct History {
    /// A 401 was answered by refreshing the token and sending the request again.
    pub replayed: bool,
    /// A dead pooled connection was answered by sending the request on a new one.
    pub retried: bool,
}

/// What happens after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The response goes to the caller; `replay` is the `replays_total` outcome, if any.
    Stream { replay: Option<&'static str> },
    /// Invalidate the token, refresh, and send the request again.
    Replay401,
    /// Send the request again on a new connection.
    RetryOnFreshConnection,
    /// Answer the caller with the failure.
    Fail,
}

/// The attempt policy (see the module text).
pub fn next(history: History, request: Request, attempt: Attempt) -> Next {
    match attempt {
        Attempt::Answered(StatusCode::UNAUTHORIZED) if request.static_credential => Next::Stream {
            replay: Some("static_credential"),
        },
        Attempt::Answered(StatusCode::UNAUTHORIZED) if history.replayed => Next::Stream {
            replay: Some("rejected_again"),
        },
        Attempt::Answered(StatusCode::UNAUTHORIZED) if !request.body_at_hand => Next::Stream {
            replay: Some("body_too_large"),
        },
        Attempt::Answered(StatusCode::UNAUTHORIZED) => Next::Replay401,
        Attempt::Answered(_) => Next::Stream {
            replay: history.replayed.then_some("replayed"),
        },
        Attempt::Failed { retryable: true }
            if !history.retried && request.idempotent && request.body_at_hand =>
        {
            Next::RetryOnFreshConnection
        }
        Attempt::Failed { .. } => Next::Fail,
    }
}

impl Gateway {
    /// What comes after an attempt (`result`: the answer and its status, or the failure):
    /// an upstream 401 is counted and the token it was sent with invalidated (only that
    /// token: a newer one from a concurrent refresh stays), then [`next`] decides. A failure
    /// of the gateway's own comes back as it is.
    pub(super) fn judge<T>(
        &self,
        merchant: &MerchantId,
        token: &CachedToken,
        history: History,
        request: Request,
        result: Result<(T, StatusCode), Failure>,
    ) -> Result<(Next, Result<T, Box<Error>>), Failure> {
        let (attempt, answered) = match result {
            Ok((up, status)) => (Attempt::Answered(status), Ok(up)),
            Err(Failure::Upstream { mut error, reused }) => {
                error.retry.decide_reuse(reused);
                let retryable = error.retry();
                (Attempt::Failed { retryable }, Err(error))
            }
            Err(f) => return Err(f),
        };
        if attempt == Attempt::Answered(StatusCode::UNAUTHORIZED) {
            self.metrics.upstream_401.inc();
            if !history.replayed && !token.is_static() {
                self.tokens.invalidate(merchant, token.id);
            }
        }
        Ok((next(history, request, attempt), answered))
    }

    /// One upstream attempt: a connection (pooled, or new after a dead pooled one), the head
    /// with `token`, the body, and the final response head.
    pub(super) async fn attempt(
        &self,
        s: &mut ServerSession,
        ctx: &mut RequestCtx,
        out: &Outbound,
        token: &CachedToken,
        history: History,
    ) -> Result<HttpSession, Failure> {
        let connected = if history.retried {
            self.upstreams
                .connect(&out.peer)
                .await
                .map(|up| (up, false))
        } else {
            self.upstreams.checkout(&out.peer).await
        };
        let (mut up, reused) = connected.map_err(|error| Failure::Upstream {
            error,
            reused: false,
        })?;
        let failed = |error| Failure::Upstream { error, reused };
        let mut req = Box::new(out.head.clone());
        if history.replayed {
            req.insert_header(AUTHORIZATION, token.bearer.clone())
                .map_err(|e| Failure::Gateway(GatewayError::Internal(e.to_string())))?;
        }
        up.write_request_header(req).await.map_err(failed)?;
        let again = history.replayed || history.retried;
        self.forward_body(s, ctx, &mut up, &out.plan, again)
            .await
            .map_err(|f| match f {
                Failure::Upstream { error, .. } => failed(error),
                other => other,
            })?;
        up.finish_body().await.map_err(failed)?;
        loop {
            up.read_response().await.map_err(failed)?;
            match up.get_status() {
                // The gateway never asks for an upgrade: a 101 is not HTTP any more.
                Some(StatusCode::SWITCHING_PROTOCOLS) => {
                    return Err(Failure::Upstream {
                        error: Error::explain(
                            ErrorType::InvalidHTTPHeader,
                            "the upstream switched protocols unasked",
                        ),
                        reused: false,
                    })
                }
                // Informational answers (`103 Early Hints`) are not passed on.
                Some(status) if status.is_informational() => continue,
                _ => return Ok(up),
            }
        }
    }

    /// The request body, to the upstream as the caller framed it. `again`: a replay or retry,
    /// which first sends what the retry buffer kept of the body read so far.
    async fn forward_body(
        &self,
        s: &mut ServerSession,
        ctx: &mut RequestCtx,
        up: &mut HttpSession,
        plan: &Plan,
        again: bool,
    ) -> Result<(), Failure> {
        let failed = |error| Failure::Upstream {
            error,
            reused: false,
        };
        if let Some(body) = &plan.body {
            if !body.is_empty() {
                up.write_body(body).await.map_err(failed)?;
            }
            return Ok(());
        }
        if again {
            if let Some(sent) = s.get_retry_buffer().filter(|b| !b.is_empty()) {
                up.write_body(&sent).await.map_err(failed)?;
            }
        }
        loop {
            let chunk = match s.read_request_body().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => return Ok(()),
                Err(e) => {
                    ctx.body_failed = true;
                    return Err(Failure::Downstream(e));
                }
            };
            if chunk.is_empty() {
                // Written upstream, an empty chunk would end the body there (see module text).
                continue;
            }
            if s.body_bytes_read() as u64 > self.max_body_bytes {
                ctx.body_failed = true;
                return Err(Failure::Gateway(GatewayError::BodyTooLarge(
                    self.max_body_bytes,
                )));
            }
            up.write_body(&chunk).await.map_err(failed)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn request(idempotent: bool, body_at_hand: bool) -> Request {
        Request {
            idempotent,
            body_at_hand,
            static_credential: false,
        }
    }

    #[test]
    fn a_401_for_a_static_credential_is_passed_back() {
        for request in [IDEMPOTENT, POST, BIG_BODY] {
            let request = Request {
                static_credential: true,
                ..request
            };
            assert_eq!(
                next(FIRST, request, answered(401)),
                Next::Stream {
                    replay: Some("static_credential")
                }
            );
        }
    }
    const fn history(replayed: bool, retried: bool) -> History {
        History { replayed, retried }
    }
    const IDEMPOTENT: Request = request(true, true);
    const POST: Request = request(false, true);
    const BIG_BODY: Request = request(true, false);
    const FIRST: History = history(false, false);
    const REPLAYED: History = history(true, false);
    const RETRIED: History = history(false, true);

    fn answered(status: u16) -> Attempt {
        Attempt::Answered(StatusCode::from_u16(status).unwrap())
    }

    #[test]
    fn answers_other_than_401_are_streamed() {
        for status in [200, 201, 204, 404, 422, 500, 503] {
            for request in [IDEMPOTENT, POST, BIG_BODY] {
                assert_eq!(
                    next(FIRST, request, answered(status)),
                    Next::Stream { replay: None }
                );
            }
            assert_eq!(
                next(REPLAYED, POST, answered(status)),
                Next::Stream {
                    replay: Some("replayed")
                }
            );
        }
    }

    #[test]
    fn a_first_401_is_replayed_once_when_the_body_is_at_hand() {
        assert_eq!(next(FIRST, POST, answered(401)), Next::Replay401);
        assert_eq!(next(RETRIED, IDEMPOTENT, answered(401)), Next::Replay401);
        assert_eq!(
            next(REPLAYED, POST, answered(401)),
            Next::Stream {
                replay: Some("rejected_again")
            }
        );
        assert_eq!(
            next(FIRST, BIG_BODY, answered(401)),
            Next::Stream {
                replay: Some("body_too_large")
            }
        );
    }

    #[test]
    fn only_a_retryable_failure_of_an_idempotent_request_is_retried_once() {
        let retryable = Attempt::Failed { retryable: true };
        let final_failure = Attempt::Failed { retryable: false };
        assert_eq!(
            next(FIRST, IDEMPOTENT, retryable),
            Next::RetryOnFreshConnection
        );
        assert_eq!(
            next(REPLAYED, IDEMPOTENT, retryable),
            Next::RetryOnFreshConnection
        );
        // Never twice, never a POST, never without the whole body, never a timeout.
        assert_eq!(next(RETRIED, IDEMPOTENT, retryable), Next::Fail);
        assert_eq!(next(FIRST, POST, retryable), Next::Fail);
        assert_eq!(next(FIRST, BIG_BODY, retryable), Next::Fail);
        assert_eq!(next(FIRST, IDEMPOTENT, final_failure), Next::Fail);
    }
}
