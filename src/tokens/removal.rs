//! Removing a merchant: stop serving it at once, revoke its authorization at Mollie
//! (`DELETE /oauth2/tokens`, its access token too when one is cached), then forget it.
//!
//! When Mollie cannot be reached (or answers 5xx) the record stays in the store marked
//! `removing`, with its refresh token, and the [`RevokerService`] retries the revocation with
//! the refresh backoff (`oauth.backoff_min_ms`…`backoff_max_ms`) until Mollie confirms (2xx,
//! or `invalid_grant`/`invalid_token`: the token is already dead); then the record goes.
//! Every attempt counts in `revocations_total{outcome}`.
//!
//! Must not: serve a merchant that is being removed (the cache slot goes first, and every
//! store read treats a `removing` record as absent), log a token, or hold a guard across
//! `.await`.

use super::TokenManager;
use crate::oauth::{OAuthError, Revocation, Revoked, TokenKind};
use crate::store::StoredMerchant;
use crate::types::{MerchantId, RefreshToken, Secret};
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

/// How often the [`RevokerService`] also reads the store for `removing` records left by
/// another process (a CLI removal whose revocation failed).
pub const REMOVING_RESCAN: Duration = Duration::from_secs(30);

/// How a revocation ended: the `outcome` label of `revocations_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationOutcome {
    /// Mollie confirmed (2xx).
    Revoked,
    /// Mollie said the token was already dead.
    AlreadyInvalid,
    /// Mollie could not be reached or failed: retried later.
    Failed,
    /// `keep_authorization`: nothing sent.
    Skipped,
    /// No OAuth app configured: nothing can be sent; the merchant is forgotten anyway.
    NotConfigured,
    /// A static credential (API key, organization token): not an OAuth token, so nothing is
    /// revoked; the merchant is forgotten at once.
    StaticCredential,
}

impl RevocationOutcome {
    pub const ALL: [RevocationOutcome; 6] = [
        RevocationOutcome::Revoked,
        RevocationOutcome::AlreadyInvalid,
        RevocationOutcome::Failed,
        RevocationOutcome::Skipped,
        RevocationOutcome::NotConfigured,
        RevocationOutcome::StaticCredential,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RevocationOutcome::Revoked => "revoked",
            RevocationOutcome::AlreadyInvalid => "already_invalid",
            RevocationOutcome::Failed => "failed",
            RevocationOutcome::Skipped => "skipped",
            RevocationOutcome::NotConfigured => "not_configured",
            RevocationOutcome::StaticCredential => "static_credential",
        }
    }

    /// The authorization is dead at Mollie.
    pub fn revoked_at_mollie(self) -> bool {
        matches!(
            self,
            RevocationOutcome::Revoked | RevocationOutcome::AlreadyInvalid
        )
    }
}

/// The answer to a removal of a merchant that existed.
#[derive(Debug, Clone)]
pub struct Removal {
    pub outcome: RevocationOutcome,
    /// Why the revocation failed (safe to show: no token).
    pub error: Option<String>,
}

/// A pending revocation retry: when, and how many attempts failed so far.
pub(super) type Pending = (Instant, u32);

impl TokenManager {
    /// Removes a merchant: with `revoke`, its authorization is revoked at Mollie first (see
    /// the module text). `Ok(None)` when the merchant was unknown.
    pub async fn remove_merchant(
        &self,
        merchant: &MerchantId,
        revoke: bool,
    ) -> Result<Option<Removal>, super::TokenError> {
        let fixed = revoke && self.holds_static(merchant).await?;
        if !revoke || fixed {
            let outcome = match fixed {
                true => RevocationOutcome::StaticCredential,
                false => RevocationOutcome::Skipped,
            };
            let known = self.inner.slots.contains_key(merchant);
            let removed = self.remove(merchant).await? || known;
            return Ok(removed.then(|| self.removed(outcome, None)));
        }
        // Marked first: from then on no store read brings the merchant back into the cache.
        let marked = self.inner.store.mark_removing(merchant).await;
        self.count_store("save", marked.is_ok());
        let stored = marked?;
        let (cached_refresh, access) = self.forget_slot(merchant);
        let Some(refresh_token) = stored.map(|s| s.refresh_token).or(cached_refresh) else {
            return Ok(None);
        };
        if let Some(access) = access {
            self.revoke_access_token(access).await;
        }
        let result = self.revoke_refresh_token(&refresh_token).await;
        let outcome = self.settle(merchant, &result, 0).await?;
        Ok(Some(
            self.removed(outcome, result.err().map(|e| e.to_string())),
        ))
    }

    /// Whether the merchant is stored with a static credential (nothing to revoke).
    async fn holds_static(&self, merchant: &MerchantId) -> Result<bool, super::TokenError> {
        if let Some(slot) = self.inner.slots.get(merchant) {
            return Ok(slot.token.as_ref().is_some_and(|t| t.is_static()));
        }
        let found = self.inner.store.get(merchant).await;
        self.count_store("load", found.is_ok());
        Ok(found?.is_some_and(|m| m.static_credential.is_some()))
    }

    fn removed(&self, outcome: RevocationOutcome, error: Option<String>) -> Removal {
        self.inner
            .metrics
            .revocations
            .with_label_values(&[outcome.label()])
            .inc();
        Removal { outcome, error }
    }

    /// Takes the merchant out of the cache: from now on it is not served. Returns its cached
    /// refresh token and the raw access token, if any.
    fn forget_slot(&self, merchant: &MerchantId) -> (Option<RefreshToken>, Option<Secret>) {
        let Some((_, slot)) = self.inner.slots.remove(merchant) else {
            return (None, None);
        };
        self.inner
            .metrics
            .merchants
            .set(self.inner.slots.len() as i64);
        let access = slot.token.as_ref().and_then(|t| {
            let value = t.bearer.to_str().ok()?;
            value.strip_prefix("Bearer ").map(Secret::new)
        });
        (Some(slot.refresh_token), access)
    }

    /// Best effort: the refresh token's revocation is what ends the authorization.
    async fn revoke_access_token(&self, token: Secret) {
        let revocation = Revocation {
            kind: TokenKind::AccessToken,
            token,
        };
        if let Err(e) = self.inner.endpoint.revoke(&revocation).await {
            tracing::warn!(error = %e, "cannot revoke the cached access token (it expires within the hour)");
        }
    }

    async fn revoke_refresh_token(&self, token: &RefreshToken) -> Result<Revoked, OAuthError> {
        let revocation = Revocation {
            kind: TokenKind::RefreshToken,
            token: Secret::new(token.expose()),
        };
        self.inner.endpoint.revoke(&revocation).await
    }

    /// After a revocation attempt: forget the merchant when the authorization is dead (or
    /// cannot ever be revoked), else schedule the next attempt after `failures` failures.
    async fn settle(
        &self,
        merchant: &MerchantId,
        result: &Result<Revoked, OAuthError>,
        failures: u32,
    ) -> Result<RevocationOutcome, super::TokenError> {
        let outcome = match result {
            Ok(Revoked::Confirmed) => RevocationOutcome::Revoked,
            Ok(Revoked::AlreadyInvalid) => RevocationOutcome::AlreadyInvalid,
            Err(OAuthError::NotConfigured) => RevocationOutcome::NotConfigured,
            Err(e) => {
                let delay = self.retry_later(merchant, failures + 1);
                tracing::warn!(merchant = %merchant, error = %e, retry_in_ms = delay.as_millis() as u64,
                    "revocation at Mollie failed; the merchant is no longer served and stays `removing` until it succeeds");
                return Ok(RevocationOutcome::Failed);
            }
        };
        if outcome == RevocationOutcome::NotConfigured {
            tracing::warn!(merchant = %merchant, "no OAuth app configured: the authorization stays alive at Mollie");
        }
        self.forget_pending(merchant);
        let removed = self.inner.store.remove(merchant).await;
        self.count_store("remove", removed.is_ok());
        removed?;
        Ok(outcome)
    }

    fn retry_later(&self, merchant: &MerchantId, failures: u32) -> Duration {
        let delay = self.inner.policy.backoff.delay(failures, fastrand::f64());
        self.pending()
            .insert(merchant.clone(), (Instant::now() + delay, failures));
        self.inner.removals_changed.notify_one();
        delay
    }

    fn forget_pending(&self, merchant: &MerchantId) {
        self.pending().remove(merchant);
    }

    fn pending(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<MerchantId, Pending>> {
        self.inner
            .removals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// A `removing` record found in the store: retried now unless already pending.
    pub(super) fn resume_removal(&self, merchant: &MerchantId) {
        let mut pending = self.pending();
        if !pending.contains_key(merchant) {
            pending.insert(merchant.clone(), (Instant::now(), 0));
            drop(pending);
            self.inner.removals_changed.notify_one();
        }
    }

    /// Retries the revocations that are due; returns when the next one is.
    async fn retry_due_removals(&self, now: Instant) -> Option<Instant> {
        let due: Vec<(MerchantId, u32)> = {
            let pending = self.pending();
            pending
                .iter()
                .filter(|(_, (at, _))| *at <= now)
                .map(|(id, (_, failures))| (id.clone(), *failures))
                .collect()
        };
        for (merchant, failures) in due {
            let span = tracing::info_span!("revocation", merchant = %merchant);
            self.retry_removal(&merchant, failures)
                .instrument(span)
                .await;
        }
        self.pending().values().map(|(at, _)| *at).min()
    }

    async fn retry_removal(&self, merchant: &MerchantId, failures: u32) {
        let stored = self.inner.store.get(merchant).await;
        self.count_store("load", stored.is_ok());
        let token = match stored {
            Ok(Some(StoredMerchant {
                removing: true,
                refresh_token,
                ..
            })) => refresh_token,
            Ok(_) => return self.forget_pending(merchant), // removed or re-authorized meanwhile
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the store to retry a revocation");
                self.retry_later(merchant, failures + 1);
                return;
            }
        };
        let result = self.revoke_refresh_token(&token).await;
        match self.settle(merchant, &result, failures).await {
            Ok(outcome) => {
                self.removed(outcome, None);
                if outcome != RevocationOutcome::Failed {
                    tracing::info!(
                        outcome = outcome.label(),
                        "revocation retried: merchant forgotten"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "revoked at Mollie, but cannot remove the record yet");
                self.retry_later(merchant, failures + 1);
            }
        }
    }

    /// Reads the store for `removing` records (another process may have left some) and
    /// stops serving them.
    async fn rescan_removing(&self) {
        let Ok(removing) = self.inner.store.removing().await else {
            return;
        };
        for id in removing {
            if self.inner.slots.remove(&id).is_some() {
                let merchants = self.inner.slots.len() as i64;
                self.inner.metrics.merchants.set(merchants);
            }
            self.resume_removal(&id);
        }
    }
}

/// Retries pending revocations when they are due (sleeping until then, and re-reading the
/// store every [`REMOVING_RESCAN`]); stops on shutdown.
pub struct RevokerService {
    pub tokens: TokenManager,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for RevokerService {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let span = tracing::info_span!("revoker");
        async {
            let mut rescan_at = Instant::now();
            loop {
                let now = Instant::now();
                if now >= rescan_at {
                    self.tokens.rescan_removing().await;
                    rescan_at = now + REMOVING_RESCAN;
                }
                let next = self.tokens.retry_due_removals(now).await;
                let wake = next.map_or(rescan_at, |at| at.min(rescan_at));
                tokio::select! {
                    _ = tokio::time::sleep_until(wake) => {}
                    _ = self.tokens.inner.removals_changed.notified() => {}
                    _ = shutdown.changed() => {
                        tracing::info!("revoker stopped");
                        return;
                    }
                }
            }
        }
        .instrument(span)
        .await
    }
}
