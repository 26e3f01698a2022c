//! The upstream response on its way to the caller: streamed chunk by chunk as it arrives.
//!
//! Owns: the response body loop. Each upstream read is written to the caller at once; when
//! the next upstream read is not ready at once, what was written is flushed first (pingora's
//! HTTP/1 session flushes a `Content-Length` body only when it is complete), so the caller
//! never waits on an upstream pause for bytes the gateway already has, while a head and a body
//! that arrive together still leave in one write. While the upstream pauses, the caller's side
//! is watched: a caller that leaves ends the exchange, and the upstream connection is dropped.
//! A response the upstream breaks off is broken off to the caller too (no terminating chunk),
//! never turned into a well-formed truncated one.

use crate::rewrite::LinkRewriter;
use bytes::Bytes;
use pingora::prelude::*;
use pingora::protocols::http::v1::client::HttpSession;
use pingora::protocols::http::{HttpTask, ServerSession};
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::Poll;

/// How streaming a response body ended.
pub enum Streamed {
    /// Every byte reached the caller's session and the response is finished.
    Complete,
    /// The caller went away (or began another request before this response ended).
    CallerGone,
    /// The upstream failed mid-body.
    UpstreamBroken(Box<Error>),
}

/// Streams the upstream body to the caller, whose response head was just written (buffered).
pub async fn stream_body(
    s: &mut ServerSession,
    up: &mut HttpSession,
    mut links: Option<LinkRewriter>,
) -> Streamed {
    let http1 = s.as_http1().is_some();
    // Bytes handed to the caller's session that may still sit in its write buffer.
    let mut unflushed = true;
    let mut watch_caller = true;
    loop {
        let read = {
            let mut read = pin!(up.read_body_bytes());
            match poll_once(read.as_mut()).await {
                Poll::Ready(read) => read,
                Poll::Pending => {
                    if http1 && unflushed {
                        if flush(s).await.is_err() {
                            return Streamed::CallerGone;
                        }
                        unflushed = false;
                    }
                    if !watch_caller {
                        read.await
                    } else {
                        let raced = tokio::select! {
                            read = read.as_mut() => Ok(read),
                            gone = s.read_body_or_idle(true) => Err(gone),
                        };
                        match raced {
                            Ok(read) => read,
                            Err(Err(e)) if e.etype() == &ErrorType::ConnectError => {
                                // The caller sent the start of its next request early
                                // (pipelining): finish this response, then close.
                                s.set_keepalive(None);
                                watch_caller = false;
                                read.await
                            }
                            Err(_) => return Streamed::CallerGone,
                        }
                    }
                }
            }
        };
        let chunk = match read {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => return Streamed::UpstreamBroken(e),
        };
        if chunk.is_empty() {
            continue;
        }
        let chunk = match links.as_mut() {
            Some(l) => {
                let mut out = Vec::with_capacity(chunk.len() + 64);
                l.feed(&chunk, &mut out);
                Bytes::from(out)
            }
            None => chunk,
        };
        if s.write_response_body(chunk, false).await.is_err() {
            return Streamed::CallerGone;
        }
        unflushed = true;
    }
    let tail = match links.as_mut() {
        Some(l) => {
            let mut out = Vec::new();
            l.finish(&mut out);
            Bytes::from(out)
        }
        None => Bytes::new(),
    };
    match s.write_response_body(tail, true).await {
        Ok(()) => Streamed::Complete,
        Err(_) => Streamed::CallerGone,
    }
}

/// Polls `f` once: its output if it is ready now, `Pending` otherwise (`f` stays usable).
async fn poll_once<F: Future + Unpin>(mut f: F) -> Poll<F::Output> {
    poll_fn(|cx| Poll::Ready(std::pin::Pin::new(&mut f).poll(cx))).await
}

/// The marker error of [`flush`].
const FLUSHED: ErrorType = ErrorType::Custom("flushed");

/// Sends what the caller's HTTP/1 session has buffered. pingora flushes a `Content-Length`
/// body only once it is complete; its one public path that flushes mid-body is a `Failed`
/// task, which writes the buffered body, flushes the stream and hands the error back as it
/// was: here a marker, which means success.
async fn flush(s: &mut ServerSession) -> Result<()> {
    let tasks = vec![
        HttpTask::Body(None, false),
        HttpTask::Failed(Error::new(FLUSHED)),
    ];
    match s.response_duplex_vec(tasks).await {
        Err(e) if e.etype() == &FLUSHED => Ok(()),
        Err(e) => Err(e),
        Ok(_) => Ok(()),
    }
}
