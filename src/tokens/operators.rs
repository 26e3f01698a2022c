//! What operators do to merchants (CLI, admin API, onboarding): store a refresh token or
//! exchange an authorization code, remove, force a refresh, and read every merchant's state.

use super::{BadAnswer, Outcome, RefreshResult, Slot, TokenError, TokenManager};
use crate::oauth::{Grant, OAuthError};
use crate::store::{CredentialKind, StaticCredential, StoredMerchant};
use crate::types::{MerchantId, RefreshToken, Secret};
use tokio::time::Instant;

/// What an operator may see of a merchant (never a token).
#[derive(Debug, Clone, serde::Serialize)]
pub struct MerchantStatus {
    pub id: MerchantId,
    /// `oauth`, `api_key` or `org_token`.
    pub credential_kind: CredentialKind,
    /// `active`, `revoked`, `refreshing` or `backoff`; `removing` (store only) while the
    /// revocation at Mollie of a removed merchant is retried.
    pub state: &'static str,
    /// Unix seconds when the cached access token expires, if there is one.
    pub access_token_expires_at: Option<u64>,
    pub last_refresh_at: Option<u64>,
    pub last_refresh_outcome: Option<&'static str>,
}

impl TokenManager {
    /// Refreshes now (admin request), bypassing the backoff; the current token stays in use
    /// until the new one arrives. Joins a refresh already in flight.
    pub async fn refresh_now(&self, merchant: &MerchantId) -> RefreshResult {
        let rx = {
            let Some(mut slot) = self.inner.slots.get_mut(merchant) else {
                return Err(TokenError::UnknownMerchant);
            };
            if slot.revoked {
                return Err(TokenError::Revoked);
            }
            // A static credential is never refreshed: it is what there is.
            if let Some(token) = slot.token.as_ref().filter(|t| t.is_static()) {
                return Ok(token.clone());
            }
            if let Some(failing) = slot.failing.as_mut() {
                failing.until = None;
            }
            match &slot.inflight {
                Some(inflight) => inflight.result.clone(),
                None => self.start_refresh(&mut slot, merchant, Instant::now()),
            }
        };
        self.wait(rx).await
    }

    /// One merchant's state, if it is known.
    pub fn status(&self, merchant: &MerchantId) -> Option<MerchantStatus> {
        self.statuses_of(
            self.inner
                .slots
                .get(merchant)
                .map(|e| (e.key().clone(), e))
                .into_iter(),
        )
        .pop()
    }

    /// Stores a merchant's refresh token (a new authorization) and replaces its cache slot.
    pub async fn add_refresh_token(
        &self,
        merchant: &MerchantId,
        refresh_token: RefreshToken,
    ) -> Result<(), TokenError> {
        let stored = StoredMerchant::new(refresh_token);
        let put = self.inner.store.put(merchant, &stored).await;
        self.count_store("save", put.is_ok());
        put?;
        self.inner.slots.insert(merchant.clone(), Slot::new(stored));
        self.inner
            .metrics
            .merchants
            .set(self.inner.slots.len() as i64);
        Ok(())
    }

    /// Stores a merchant with a static credential (an API key or an organization token) and
    /// replaces its cache slot: used as the Bearer from now on, never refreshed.
    pub async fn add_static(
        &self,
        merchant: &MerchantId,
        credential: StaticCredential,
    ) -> Result<(), TokenError> {
        let stored = StoredMerchant::with_static(credential);
        let put = self.inner.store.put(merchant, &stored).await;
        self.count_store("save", put.is_ok());
        put?;
        self.inner.slots.insert(merchant.clone(), Slot::new(stored));
        self.inner
            .metrics
            .merchants
            .set(self.inner.slots.len() as i64);
        Ok(())
    }

    /// Exchanges an authorization code (grant `authorization_code`), stores the refresh token
    /// and caches the access token.
    pub async fn add_authorization_code(
        &self,
        merchant: &MerchantId,
        code: &Secret,
        redirect_uri: Option<&str>,
    ) -> Result<(), TokenError> {
        let issued = Instant::now();
        let grant = Grant::AuthorizationCode { code, redirect_uri };
        let set = self.call_endpoint(grant).await.map_err(|e| match e {
            OAuthError::InvalidGrant(d) => TokenError::BadResponse(BadAnswer::CodeRejected(d)),
            other => TokenError::from_endpoint(other),
        })?;
        let refresh_token = set
            .refresh_token
            .clone()
            .ok_or(TokenError::BadResponse(BadAnswer::NoRefreshToken))?;
        self.add_refresh_token(merchant, refresh_token).await?;
        let token = self.make_token(set.access_token, set.expires_in, issued)?;
        let Some(mut slot) = self.inner.slots.get_mut(merchant) else {
            return Ok(());
        };
        slot.token = Some(token.clone());
        slot.last_refresh = Outcome::Ok.now();
        let key = slot.key().clone();
        drop(slot);
        self.schedule(token.times.background_at, token.id, key);
        Ok(())
    }

    /// Removes a merchant from the store and the cache.
    pub async fn remove(&self, merchant: &MerchantId) -> Result<bool, TokenError> {
        let removed = self.inner.store.remove(merchant).await;
        self.count_store("remove", removed.is_ok());
        let removed = removed?;
        self.inner.slots.remove(merchant);
        self.inner
            .metrics
            .merchants
            .set(self.inner.slots.len() as i64);
        Ok(removed)
    }

    /// Every cached merchant's state, sorted by id.
    pub fn statuses(&self) -> Vec<MerchantStatus> {
        let mut all = self.statuses_of(self.inner.slots.iter().map(|e| (e.key().clone(), e)));
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    fn statuses_of<'a, G: std::ops::Deref<Target = Slot> + 'a>(
        &self,
        slots: impl Iterator<Item = (MerchantId, G)>,
    ) -> Vec<MerchantStatus> {
        let now = Instant::now();
        slots
            .map(|(id, s)| {
                let state = if s.revoked {
                    "revoked"
                } else if s.inflight.is_some() {
                    "refreshing"
                } else if s.in_backoff(now) {
                    "backoff"
                } else {
                    "active"
                };
                let kind = s.token.as_ref().map_or(CredentialKind::Oauth, |t| t.kind);
                let oauth_token = s.token.as_ref().filter(|t| !t.is_static());
                MerchantStatus {
                    id,
                    credential_kind: kind,
                    state,
                    access_token_expires_at: oauth_token.map(|t| t.expires_at_ms / 1000),
                    last_refresh_at: s.last_refresh.map(|(at, _)| at),
                    last_refresh_outcome: s.last_refresh.map(|(_, o)| o.as_str()),
                }
            })
            .collect()
    }
}
