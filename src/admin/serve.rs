//! The admin listener's connections: a pingora service (so that `run -u` hands its listening
//! socket over with the proxy's, and SIGTERM stops it with the others) that hands every
//! accepted stream to hyper's HTTP/1 server, which runs the axum router.
//!
//! Owns: the connection loop (request-head deadline, keep-alive, graceful shutdown when
//! pingora's shutdown watch fires) and the lingering read of request bodies a handler left
//! unread ([`drain_unread`]), so an early answer (401, 404, a 400 for an over-large body) is
//! not lost to a reset.
//! Must not: route or answer anything itself, or share a runtime with the proxy.

use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use bytes::Bytes;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

/// How long a client has to send a whole request head (and an idle keep-alive connection
/// waits for the next one).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of a body the handler did not read is read and dropped after the answer, so the
/// answer is not lost to a reset; beyond it the connection is closed.
pub const DRAIN_LIMIT_BYTES: usize = 1024 * 1024;
/// How long that lingering read may take.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The admin listener as a pingora [`ServerApp`].
pub struct AdminService {
    router: Router,
}

impl AdminService {
    pub fn new(router: Router) -> Self {
        AdminService { router }
    }
}

#[async_trait::async_trait]
impl ServerApp for AdminService {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let service = TowerToHyperService::new(self.router.clone());
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEAD_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service);
        tokio::pin!(conn);
        let mut shutdown = shutdown.clone();
        if !*shutdown.borrow() {
            tokio::select! {
                done = conn.as_mut() => return log_end(done),
                _ = shutdown.changed() => {}
            }
        }
        // Shutting down: finish the request in flight, then close (idle: at once).
        conn.as_mut().graceful_shutdown();
        log_end(conn.await)
    }
}

fn log_end(done: Result<(), hyper::Error>) -> Option<Stream> {
    if let Err(e) = done {
        tracing::debug!(error = %e, "admin connection ended with an error");
    }
    None
}

/// Middleware: after the answer, reads what is left of the request body (bounded by
/// [`DRAIN_LIMIT_BYTES`] and [`DRAIN_TIMEOUT`]); past the bounds, `Connection: close`.
pub async fn drain_unread(req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let slot = Arc::new(Mutex::new(Some(body)));
    let req = Request::from_parts(parts, Body::new(Shared(slot.clone())));
    let mut resp = next.run(req).await;
    let rest = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(rest) = rest.filter(|b| !b.is_end_stream()) {
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, drain(rest)).await;
        if !matches!(drained, Ok(true)) {
            resp.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
    }
    resp
}

/// Reads and drops up to [`DRAIN_LIMIT_BYTES`]; true when the body ended within them.
async fn drain(mut body: Body) -> bool {
    let mut seen = 0usize;
    loop {
        match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            None => return true,
            Some(Ok(frame)) => {
                seen += frame.data_ref().map_or(0, Bytes::len);
                if seen > DRAIN_LIMIT_BYTES {
                    return false;
                }
            }
            Some(Err(_)) => return false,
        }
    }
}

/// The request body as the handler sees it, while [`drain_unread`] keeps the original: what
/// the handler does not read stays in the slot. A std mutex: held only within one poll.
struct Shared(Arc<Mutex<Option<Body>>>);

impl HttpBody for Shared {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        let slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref().map(|b| b.size_hint()).unwrap_or_default()
    }
}
