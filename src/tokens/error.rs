//! Why no token could be had: [`TokenError`] and its typed causes.
//!
//! Owns: the token layer's failures, as values every waiter of a refresh can share (`Clone`).
//! Must not: know about HTTP. `error.rs` alone turns a `TokenError` into an answer (status,
//! code, `Retry-After`): `TokenError::to_gateway` is defined there. Texts are safe to show.

use crate::oauth::{self, OAuthError};
use crate::store::StoreError;
use std::sync::Arc;
use std::time::Duration;

/// Why no token could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("unknown merchant")]
    UnknownMerchant,
    #[error("authorization revoked")]
    Revoked,
    /// Transient; `retry_after` is the merchant's backoff.
    #[error("token endpoint unavailable: {cause}")]
    Unavailable {
        cause: Unavailable,
        retry_after: Duration,
    },
    #[error("token endpoint bad response: {0}")]
    BadResponse(BadAnswer),
    #[error("OAuth app misconfigured: {cause}")]
    Misconfigured {
        cause: Misconfigured,
        retry_after: Duration,
    },
    /// A rotated refresh token could not be stored (or the store could not be read).
    #[error("credential store: {0}")]
    Store(StoreFailure),
}

/// Why no token is to be had just now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    #[error(transparent)]
    Endpoint(#[from] oauth::Unavailable),
    /// A caller waited this long for someone else's refresh.
    #[error("no token within {} ms", .0.as_millis())]
    WaitedTooLong(Duration),
    #[error("the refresh task ended without a result")]
    RefreshLost,
    /// A new authorization was stored while a refresh with the old one ran.
    #[error("authorization replaced during refresh")]
    Replaced,
}

/// Why a token endpoint answer could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadAnswer {
    #[error(transparent)]
    Endpoint(#[from] oauth::BadResponse),
    /// `invalid_grant` where it cannot mean "revoked" (carries the server's description).
    #[error("invalid_grant: {0}")]
    InvalidGrant(String),
    #[error(
        "the authorization code was rejected (invalid_grant: {0}); codes are single-use and \
         expire quickly"
    )]
    CodeRejected(String),
    #[error("the code exchange returned no refresh_token")]
    NoRefreshToken,
    #[error("access token is not a header value")]
    AccessTokenNotHeader,
}

/// Why the gateway's OAuth app cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Misconfigured {
    #[error(
        "oauth.client_id and oauth.client_secret are not set (MOLLIE_GATEWAY__OAUTH__CLIENT_ID, \
         MOLLIE_GATEWAY__OAUTH__CLIENT_SECRET)"
    )]
    NotConfigured,
    /// The token endpoint said `invalid_client` (or `unauthorized_client`).
    #[error(transparent)]
    Rejected(#[from] oauth::ClientRejected),
}

/// A store failure, shared by every waiter of one refresh (`StoreError` is not `Clone`).
/// Two are equal when they are the same failure.
#[derive(Debug, Clone, thiserror::Error)]
#[error(transparent)]
pub struct StoreFailure(Arc<StoreError>);

impl PartialEq for StoreFailure {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for StoreFailure {}

impl From<StoreError> for TokenError {
    fn from(e: StoreError) -> Self {
        TokenError::Store(StoreFailure(Arc::new(e)))
    }
}

impl TokenError {
    /// What callers see when a token endpoint call failed (the backoff sets `retry_after`).
    /// `invalid_grant` is the caller's to interpret first (revoked, or a rejected code).
    pub fn from_endpoint(e: OAuthError) -> TokenError {
        let retry_after = Duration::from_secs(1);
        match e {
            OAuthError::Unavailable(cause) => TokenError::Unavailable {
                cause: cause.into(),
                retry_after,
            },
            OAuthError::InvalidClient(rejected) => TokenError::Misconfigured {
                cause: rejected.into(),
                retry_after,
            },
            OAuthError::NotConfigured => TokenError::Misconfigured {
                cause: Misconfigured::NotConfigured,
                retry_after,
            },
            OAuthError::BadResponse(bad) => TokenError::BadResponse(bad.into()),
            OAuthError::InvalidGrant(d) => TokenError::BadResponse(BadAnswer::InvalidGrant(d)),
        }
    }

    /// A transient failure of the token layer itself, to retry in a second.
    pub(super) fn unavailable(cause: Unavailable) -> TokenError {
        TokenError::Unavailable {
            cause,
            retry_after: Duration::from_secs(1),
        }
    }

    /// The same failure, retried after `d` (for the backoff's remaining time).
    pub(super) fn with_retry_after(&self, d: Duration) -> TokenError {
        let mut e = self.clone();
        if let TokenError::Unavailable { retry_after, .. }
        | TokenError::Misconfigured { retry_after, .. } = &mut e
        {
            *retry_after = d;
        }
        e
    }
}
