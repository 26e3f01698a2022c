//! Why a token call failed, typed where it happens: [`OAuthError`] and its causes.
//!
//! Must not: carry a token, a code, the client secret or a response body. Causes hold
//! statuses, RFC 6749 error codes, lengths, pingora error kinds and the server's short
//! `error_description`, so every `Display` here is safe to log and to show a caller.

use super::MAX_TOKEN_RESPONSE_BYTES;
use std::fmt;
use std::time::Duration;

/// Why a token call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    /// Transient: back off and retry later.
    #[error("token endpoint unavailable: {0}")]
    Unavailable(Unavailable),
    /// The refresh token (or code) is dead: the merchant must authorize again. Carries the
    /// server's `error_description` (control characters dropped, at most 200 characters).
    #[error("invalid_grant: {0}")]
    InvalidGrant(String),
    /// The endpoint rejected the gateway's client id/secret: a configuration problem.
    #[error("invalid_client: the token endpoint rejected oauth.client_id/client_secret ({0})")]
    InvalidClient(ClientRejected),
    /// No OAuth app configured: nothing was sent.
    #[error("oauth.client_id and oauth.client_secret are not configured")]
    NotConfigured,
    /// An answer the gateway cannot use.
    #[error("unusable token endpoint answer: {0}")]
    BadResponse(BadResponse),
}

/// Why the token endpoint cannot be used just now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    /// The token host has no resolved address yet.
    #[error("{host} is not resolved (DNS)")]
    NotResolved { host: String },
    /// pingora failed in one phase of the call; only the error's kind is kept.
    #[error("{phase}: {}", kind.as_str())]
    Io {
        phase: Phase,
        kind: pingora::ErrorType,
    },
    #[error("no response header")]
    NoResponseHeader,
    /// A 5xx or 429 answer.
    #[error("status {0}")]
    Status(u16),
    /// The whole call took longer than `oauth.token_timeout_ms`.
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// The token endpoint service is gone: the process is stopping.
    #[error("the token endpoint service has stopped")]
    ServiceStopped,
}

impl Unavailable {
    /// Keeps the kind of a pingora error, dropping its context.
    pub fn io(phase: Phase) -> impl FnOnce(Box<pingora::Error>) -> OAuthError {
        move |e| {
            OAuthError::Unavailable(Unavailable::Io {
                phase,
                kind: e.etype().clone(),
            })
        }
    }
}

/// The phase of a token call in which an I/O error happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Connect,
    Send,
    SendBody,
    ReadAnswer,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Connect => "connect",
            Phase::Send => "send",
            Phase::SendBody => "send body",
            Phase::ReadAnswer => "read answer",
        })
    }
}

/// The token endpoint refused the gateway's own client credentials: the status, and which
/// RFC 6749 error said so (`invalid_client` or `unauthorized_client`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("status {status}, {error}")]
pub struct ClientRejected {
    pub status: u16,
    pub error: &'static str,
}

/// What made an answer (or, rarely, our own request) unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadResponse {
    #[error("status {status} with a body that is not JSON ({len} bytes)")]
    NotJson { status: u16, len: usize },
    #[error("JSON without access_token")]
    NoAccessToken,
    #[error("access_token has characters that cannot go in a header")]
    AccessTokenNotHeaderSafe,
    #[error("expires_in is not a positive number of seconds up to a year")]
    ExpiresInNotPositive,
    /// A 4xx answer whose body is not an RFC 6749 error.
    #[error("status {0} with a body that is not RFC 6749 JSON")]
    NotOAuthError(u16),
    /// Another RFC 6749 error (its code, cut to 64 characters), e.g. `invalid_scope`.
    #[error("status {status}, error {error:?}")]
    OtherError { status: u16, error: String },
    #[error("answer larger than {MAX_TOKEN_RESPONSE_BYTES} bytes")]
    TooLarge,
    /// The request could not be built: this header's value is not a valid header value.
    #[error("header {0} is not valid")]
    RequestHeader(&'static str),
}
