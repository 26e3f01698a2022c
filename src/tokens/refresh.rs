//! One refresh of one merchant's access token, in its own task: check the store, call the
//! token endpoint, store a rotated refresh token (durable first), then install the new token,
//! or record the failure (backoff, revocation) in the merchant's slot.
//!
//! Where it runs: the task runs on the runtime that started the refresh (the proxy's, the
//! admin listener's or the refresher's; pingora keeps each until its grace period ends); the
//! token endpoint call inside it goes to the one runtime of token traffic
//! (`oauth::TokenEndpointService` in the server). Must not: hold a slot guard across `.await`,
//! or install an access token whose rotated refresh token is not stored.

use super::shared::{unix_ms, Turn};
use super::{
    CachedToken, Failing, Inflight, Outcome, RefreshResult, Slot, TokenError, TokenManager,
    Unavailable,
};
use crate::oauth::{Grant, OAuthError, TokenSet};
use crate::store::StoreError;
use crate::tokens::{token_times, BadAnswer};
use crate::types::{AccessToken, MerchantId, RefreshToken};
use dashmap::mapref::one::RefMut;
use http::HeaderValue;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

impl TokenManager {
    /// Starts the one refresh of this merchant in its own task; returns where its result
    /// appears. Called with the slot's guard held (spawning does not block).
    pub(super) fn start_refresh(
        &self,
        slot: &mut Slot,
        merchant: &MerchantId,
        now: Instant,
    ) -> watch::Receiver<Option<RefreshResult>> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        slot.inflight = Some(Box::new(Inflight {
            id,
            started: now,
            result: rx.clone(),
        }));
        let this = self.clone();
        let merchant = merchant.clone();
        let refresh_token = slot.refresh_token.clone();
        // What this refresh replaces: as of now, not as of when its task runs (another
        // replica's token may be installed meanwhile, and is then the one to use).
        let seen_ms = slot.seen_expiry_ms;
        let span = tracing::info_span!("refresh", merchant = %merchant);
        tokio::spawn(
            async move {
                let result = this.refresh(&merchant, refresh_token, id, seen_ms).await;
                let _ = tx.send(Some(result));
            }
            .instrument(span),
        );
        rx
    }

    /// One refresh, the steps in order.
    async fn refresh(
        &self,
        merchant: &MerchantId,
        cached: RefreshToken,
        id: u64,
        seen_ms: u64,
    ) -> RefreshResult {
        // Held (several replicas: the store's lock) until this refresh ends.
        let _lock = match self.take_turn(merchant, seen_ms).await {
            Ok(Turn::Refresh(lock)) => lock,
            Ok(Turn::Use(token)) => return self.succeed(merchant, id, token),
            Err(e) => return Err(self.fail(merchant, id, e)),
        };
        let used = self.refresh_token_to_use(merchant, cached, id).await?;
        let issued = Instant::now();
        let answer = self.call_endpoint(Grant::RefreshToken(&used)).await;
        let took = issued.elapsed().as_secs_f64();
        self.inner.metrics.token_refresh_duration.observe(took);
        let set = match answer {
            Ok(set) => set,
            Err(OAuthError::InvalidGrant(_)) => {
                return Err(self.record_revocation(merchant, id, &used).await)
            }
            Err(e) => {
                tracing::warn!(error = %e, "refresh failed");
                return Err(self.fail(merchant, id, TokenError::from_endpoint(e)));
            }
        };
        if let Some(rotated) = set.refresh_token.filter(|t| *t != used) {
            self.keep_rotated(merchant, id, rotated).await?;
        }
        let access = set.access_token.clone();
        let token = self
            .make_token(set.access_token, set.expires_in, issued)
            .map_err(|e| self.fail(merchant, id, e))?;
        self.share(merchant, access, &token, set.expires_in).await;
        self.succeed(merchant, id, token)
    }

    /// The store is the truth: the merchant may have been removed, or re-authorized, by
    /// another process (CLI, admin API, another replica) since it was cached. An unreadable
    /// store does not stop the refresh: the cached refresh token is used.
    async fn refresh_token_to_use(
        &self,
        merchant: &MerchantId,
        cached: RefreshToken,
        id: u64,
    ) -> Result<RefreshToken, TokenError> {
        match self.inner.store.get(merchant).await {
            Ok(None) | Ok(Some(crate::store::StoredMerchant { removing: true, .. })) => {
                tracing::info!("merchant removed from the store; dropping it");
                self.inner.slots.remove(merchant);
                let merchants = self.inner.slots.len() as i64;
                self.inner.metrics.merchants.set(merchants);
                Err(TokenError::UnknownMerchant)
            }
            Ok(Some(stored)) if stored.static_credential.is_some() => {
                // Replaced by a static credential: used as it is from now on.
                self.inner
                    .slots
                    .insert(merchant.clone(), super::Slot::new(stored));
                Err(TokenError::unavailable(Unavailable::Replaced))
            }
            Ok(Some(stored)) if stored.refresh_token != cached => {
                if let Some(mut slot) = self.inner.slots.get_mut(merchant) {
                    slot.refresh_token = stored.refresh_token.clone();
                    slot.revoked = stored.revoked;
                }
                if stored.revoked {
                    return Err(self.fail_revoked(merchant, id, &stored.refresh_token));
                }
                Ok(stored.refresh_token)
            }
            Ok(Some(_)) => Ok(cached),
            Err(e) => {
                self.count_store("load", false);
                tracing::warn!(error = %e, "cannot read the store before refreshing; using the cached refresh token");
                Ok(cached)
            }
        }
    }

    /// Calls the token endpoint; counts `token_refreshes_total{grant, outcome}`.
    pub(super) async fn call_endpoint(&self, grant: Grant<'_>) -> Result<TokenSet, OAuthError> {
        let answer = self.inner.endpoint.exchange(grant).await;
        let outcome = match &answer {
            Ok(_) => "ok",
            Err(OAuthError::InvalidGrant(_)) => "invalid_grant",
            Err(OAuthError::InvalidClient(_)) | Err(OAuthError::NotConfigured) => "misconfigured",
            Err(OAuthError::Unavailable(_)) => "unavailable",
            Err(OAuthError::BadResponse(_)) => "bad_response",
        };
        self.inner
            .metrics
            .token_refreshes
            .with_label_values(&[grant.label(), outcome])
            .inc();
        answer
    }

    /// `invalid_grant`: the merchant must authorize again. Recorded in the store (if it still
    /// holds that refresh token), then in the slot.
    async fn record_revocation(
        &self,
        merchant: &MerchantId,
        id: u64,
        used: &RefreshToken,
    ) -> TokenError {
        tracing::warn!("refresh token rejected (invalid_grant): merchant must authorize again");
        let stored = self.inner.store.mark_revoked(merchant, used).await;
        self.count_store("save", stored.is_ok());
        if let Err(e) = stored {
            tracing::error!(error = %e, "cannot record the revocation in the store");
        }
        self.fail_revoked(merchant, id, used)
    }

    /// Durable first: a rotated refresh token that is not stored is a lost merchant. When the
    /// store fails (and the token did not reach its fallback file either), the token is kept in
    /// memory (the next refresh uses it) and this one fails.
    async fn keep_rotated(
        &self,
        merchant: &MerchantId,
        id: u64,
        rotated: RefreshToken,
    ) -> Result<(), TokenError> {
        let saved = self.inner.store.rotate(merchant, &rotated).await;
        match &saved {
            Err(StoreError::Conflict { .. }) => self.count_store_outcome("save", "fallback"),
            other => self.count_store("save", other.is_ok()),
        }
        // Kept in the fallback file (on disk, pushed to the store later; logged there): as
        // durable as a store write, so the new access token serves.
        let saved = match saved {
            Err(StoreError::Conflict { .. }) => Ok(true),
            other => other,
        };
        if let Ok(false) = saved {
            tracing::info!("merchant was removed during its refresh; dropping it");
            self.inner.slots.remove(merchant);
            return Err(TokenError::UnknownMerchant);
        }
        if let Some(mut slot) = self.inner.slots.get_mut(merchant) {
            slot.refresh_token = rotated;
        }
        saved.map(drop).map_err(|e| {
            tracing::error!(error = %e, "cannot store the rotated refresh token; keeping it in memory and failing this refresh");
            self.fail(merchant, id, e.into())
        })
    }

    /// The cached form of a new access token, with its lifetime's moments.
    pub(super) fn make_token(
        &self,
        access: AccessToken,
        lifetime: Duration,
        issued: Instant,
    ) -> RefreshResult {
        let mut bearer = HeaderValue::try_from(format!("Bearer {}", access.expose()))
            .map_err(|_| TokenError::BadResponse(BadAnswer::AccessTokenNotHeader))?;
        bearer.set_sensitive(true);
        Ok(Arc::new(CachedToken {
            bearer,
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            times: token_times(
                issued,
                lifetime,
                self.inner.policy.refresh_before_expiry,
                fastrand::f64(),
            ),
            expires_at_ms: unix_ms(SystemTime::now() + lifetime.saturating_sub(issued.elapsed())),
            kind: crate::store::CredentialKind::Oauth,
            live_api_key: false,
        }))
    }

    /// The slot of refresh `id` as it ends (if the merchant is still cached), taken out of
    /// `inflight` unless a newer refresh replaced it there.
    fn end_inflight(&self, merchant: &MerchantId, id: u64) -> Option<RefMut<'_, MerchantId, Slot>> {
        let mut slot = self.inner.slots.get_mut(merchant)?;
        if slot.inflight.as_ref().is_some_and(|i| i.id == id) {
            slot.inflight = None;
        }
        Some(slot)
    }

    /// Installs a new token (a late, stuck leader never replaces a newer one) and schedules
    /// its background refresh.
    fn succeed(&self, merchant: &MerchantId, id: u64, token: Arc<CachedToken>) -> RefreshResult {
        let Some(mut slot) = self.end_inflight(merchant, id) else {
            return Err(TokenError::UnknownMerchant);
        };
        if slot.token.as_ref().is_none_or(|t| t.id < token.id) {
            slot.token = Some(token.clone());
        }
        slot.seen_expiry_ms = slot.seen_expiry_ms.max(token.expires_at_ms);
        slot.failing = None;
        slot.last_refresh = Outcome::Ok.now();
        let key = slot.key().clone();
        drop(slot);
        self.schedule(token.times.background_at, token.id, key);
        Ok(token)
    }

    /// The expiry of the newest token the merchant's slot held (0: none).
    pub(super) fn seen_expiry_ms(&self, merchant: &MerchantId) -> u64 {
        let slot = self.inner.slots.get(merchant);
        slot.map(|s| s.seen_expiry_ms).unwrap_or(0)
    }

    /// Records a failed refresh: the merchant backs off (jittered, growing), callers get
    /// `e` until then, and, with a token still cached, the refresher retries when it ends.
    fn fail(&self, merchant: &MerchantId, id: u64, e: TokenError) -> TokenError {
        let Some(mut slot) = self.end_inflight(merchant, id) else {
            return TokenError::UnknownMerchant;
        };
        let failures = slot.failing.as_ref().map_or(0, |f| f.count);
        let failures = failures.saturating_add(1);
        let delay = self.inner.policy.backoff.delay(failures, fastrand::f64());
        let now = Instant::now();
        let e = e.with_retry_after(delay);
        slot.failing = Some(Box::new(Failing {
            count: failures,
            until: Some(now + delay),
            error: e.clone(),
        }));
        slot.last_refresh = Outcome::Failed.now();
        let retry = slot.token.as_ref().map(|t| (t.id, slot.key().clone()));
        drop(slot);
        if let Some((token_id, key)) = retry {
            self.schedule(now + delay, token_id, key);
        }
        e
    }

    /// `invalid_grant` for `dead`: the merchant is revoked, unless a new authorization
    /// replaced that refresh token meanwhile (then callers retry, with the new one).
    fn fail_revoked(&self, merchant: &MerchantId, id: u64, dead: &RefreshToken) -> TokenError {
        let Some(mut slot) = self.end_inflight(merchant, id) else {
            return TokenError::UnknownMerchant;
        };
        if *dead != slot.refresh_token {
            return TokenError::unavailable(Unavailable::Replaced);
        }
        slot.revoked = true;
        slot.token = None;
        slot.last_refresh = Outcome::InvalidGrant.now();
        TokenError::Revoked
    }
}
