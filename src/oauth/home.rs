//! The home of token traffic in the server: one runtime for every token endpoint call.
//!
//! Why: pingora's pooled connections belong to the runtime that made them, and token calls
//! start on three (the proxy's, for requests that find no usable token or get a 401; the
//! admin listener's, for onboarding and forced refreshes; the refresher's). So the server
//! hands the HTTP client ([`HttpTokenEndpoint`](super::HttpTokenEndpoint)) to the
//! [`TokenEndpointService`], a pingora background service with its own runtime (one thread),
//! and gives the token manager a [`TokenClient`]: each call goes through a bounded channel
//! with a oneshot for its answer, and runs as a task on the service's runtime. The CLI has one
//! short-lived runtime and no pingora server: it uses the HTTP client directly (`app::Parts`).
//!
//! Shutdown: the service does not stop when pingora announces a shutdown. pingora keeps every
//! service's runtime running through `server.grace_period_secs` (the proxy drains then) and
//! only afterwards shuts the runtimes down, within `graceful_shutdown_timeout_secs`; so the
//! token endpoint stays reachable for as long as any request can still be served
//! (`tests/lifecycle.rs`). When its runtime goes, queued and running calls end with
//! [`Unavailable::ServiceStopped`].
//!
//! Owns: the channel and the call tasks. Must not: stop before its runtime does, or hold a
//! token call's secrets beyond the call (a call owns its grant and drops it when answered).

use super::error::{OAuthError, Unavailable};
use super::{Grant, OwnedGrant, Revocation, Revoked, TokenEndpoint, TokenSet};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

/// Calls waiting for the service; senders wait when it is full (backpressure, not loss).
pub const QUEUE_DEPTH: usize = 1024;

/// One token call on its way to the service.
struct Call {
    work: Work,
    /// The caller's span (the refresh and its merchant), so the call logs under it.
    span: tracing::Span,
}

/// What a call does, and where its answer goes.
enum Work {
    Exchange(OwnedGrant, oneshot::Sender<Result<TokenSet, OAuthError>>),
    Revoke(Revocation, oneshot::Sender<Result<Revoked, OAuthError>>),
}

impl Work {
    fn label(&self) -> &'static str {
        match self {
            Work::Exchange(grant, _) => grant.as_grant().label(),
            Work::Revoke(..) => "revocation",
        }
    }
}

/// The token manager's side: a [`TokenEndpoint`] that sends each call to the service.
#[derive(Clone)]
pub struct TokenClient {
    calls: mpsc::Sender<Call>,
}

#[async_trait::async_trait]
impl TokenEndpoint for TokenClient {
    async fn exchange(&self, grant: Grant<'_>) -> Result<TokenSet, OAuthError> {
        let (answer, answered) = oneshot::channel();
        self.send(Work::Exchange(grant.to_owned(), answer)).await?;
        answered.await.unwrap_or_else(|_| Err(stopped()))
    }

    async fn revoke(&self, revocation: &Revocation) -> Result<Revoked, OAuthError> {
        let (answer, answered) = oneshot::channel();
        self.send(Work::Revoke(revocation.clone(), answer)).await?;
        answered.await.unwrap_or_else(|_| Err(stopped()))
    }
}

impl TokenClient {
    async fn send(&self, work: Work) -> Result<(), OAuthError> {
        let call = Call {
            work,
            span: tracing::Span::current(),
        };
        self.calls.send(call).await.map_err(|_| stopped())
    }
}

fn stopped() -> OAuthError {
    OAuthError::Unavailable(Unavailable::ServiceStopped)
}

/// The service's side: owns the real endpoint and runs every call on its own runtime.
pub struct TokenEndpointService {
    endpoint: Arc<dyn TokenEndpoint>,
    /// Taken when the service starts (pingora's `start` has `&self`). A std mutex: locked
    /// once, never across `.await`.
    calls: Mutex<Option<mpsc::Receiver<Call>>>,
    /// Calls received so far (logged at shutdown).
    received: AtomicU64,
}

impl TokenEndpointService {
    /// The service around `endpoint`, and the client that feeds it.
    pub fn new(endpoint: Arc<dyn TokenEndpoint>) -> (TokenClient, TokenEndpointService) {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let service = TokenEndpointService {
            endpoint,
            calls: Mutex::new(Some(rx)),
            received: AtomicU64::new(0),
        };
        (TokenClient { calls: tx }, service)
    }

    /// Runs each call as its own task on this runtime, so a slow call never delays another.
    fn spawn_call(&self, call: Call) {
        self.received.fetch_add(1, Ordering::Relaxed);
        let endpoint = self.endpoint.clone();
        let Call { work, span } = call;
        let span = tracing::info_span!(parent: &span, "token_call", grant = work.label());
        // The caller may have given up (its task was cancelled): its answer is dropped.
        tokio::spawn(
            async move {
                match work {
                    Work::Exchange(grant, answer) => {
                        let _ = answer.send(endpoint.exchange(grant.as_grant()).await);
                    }
                    Work::Revoke(revocation, answer) => {
                        let _ = answer.send(endpoint.revoke(&revocation).await);
                    }
                }
            }
            .instrument(span),
        );
    }
}

#[async_trait::async_trait]
impl BackgroundService for TokenEndpointService {
    /// Serves calls until every client is gone or the runtime shuts down; a shutdown
    /// announcement is logged, not obeyed (see the module text).
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let taken = self.calls.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(mut calls) = taken else {
            tracing::error!("token endpoint service started twice");
            return;
        };
        let mut announced = false;
        loop {
            tokio::select! {
                call = calls.recv() => match call {
                    Some(call) => self.spawn_call(call),
                    None => return,
                },
                changed = shutdown.changed(), if !announced => {
                    announced = true;
                    if changed.is_err() {
                        continue; // no server to announce anything: serve on
                    }
                    tracing::info!(
                        calls = self.received.load(Ordering::Relaxed),
                        "token endpoint service: shutdown announced; serving token calls until the runtimes stop"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "home_tests.rs"]
mod tests;
