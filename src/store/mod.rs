//! Durable merchant credentials: the [`CredentialStore`] trait and its backends.
//!
//! Owns: what is kept across restarts, per merchant: the refresh token (losing it means the
//! merchant must authorize again), whether it was revoked, and when it last changed. Access
//! tokens are not stored: they live an hour and are re-fetched on demand.
//! Must not: hold a lock across `.await` in callers' paths, or ever write a partial record.
//! Backends: [`file::FileStore`] (embedded default); [`crypto`] seals their secret fields. Everything outside `store/` (token
//! manager, admin API, readiness) holds an `Arc<dyn CredentialStore>`, so a backend plugs in
//! here without touching them.

pub mod crypto;
pub mod file;

use crate::types::{MerchantId, RefreshToken};
use serde::Deserialize;

/// One merchant's durable credentials. Not `Serialize`: a backend writes the refresh token
/// through `expose()` itself (`file::Record`), so no other serialization can carry it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredMerchant {
    pub refresh_token: RefreshToken,
    /// Set when the token endpoint answered `invalid_grant`: no refresh is tried until a new
    /// authorization replaces the refresh token.
    #[serde(default)]
    pub revoked: bool,
    /// Set while the merchant is being removed and Mollie has not confirmed the revocation of
    /// its refresh token yet: the merchant is no longer served, the token is kept only to
    /// retry the revocation (`tokens/removal.rs`).
    #[serde(default)]
    pub removing: bool,
    /// Unix seconds of the last change.
    #[serde(default)]
    pub updated_at: u64,
}

impl StoredMerchant {
    pub fn new(refresh_token: RefreshToken) -> Self {
        StoredMerchant {
            refresh_token,
            revoked: false,
            removing: false,
            updated_at: unix_now(),
        }
    }
}

/// Wall-clock unix seconds (0 before 1970): the one clock of stored and shown timestamps.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("credential store {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("credential store {path} is not valid ({reason}); fix or move it: it is never overwritten while unreadable")]
    Corrupt { path: String, reason: String },
    /// A sealed record that cannot be opened (or sealed): the store refuses, never rewrites.
    #[error("credential store {path}: {source}; it is never overwritten while unreadable")]
    Crypto {
        path: String,
        #[source]
        source: crypto::CryptoError,
    },
    /// An operation this backend or its configuration cannot do (`store rekey` without keys).
    #[error("credential store: {0}")]
    Unsupported(String),
}

/// What may be shown of a stored merchant (admin listing): never its refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerchantSummary {
    pub id: MerchantId,
    pub revoked: bool,
    pub removing: bool,
    /// Unix seconds of the last change.
    pub updated_at: u64,
}

/// What the gateway, the CLI and the admin API need of a store. Every write is durable when
/// it returns `Ok` (and atomic: a crash leaves the old or the new state, never a mix).
#[async_trait::async_trait]
pub trait CredentialStore: Send + Sync {
    /// Every merchant.
    async fn load_all(&self) -> Result<Vec<(MerchantId, StoredMerchant)>, StoreError>;
    /// One merchant, as stored now (changes made by other processes included).
    async fn get(&self, id: &MerchantId) -> Result<Option<StoredMerchant>, StoreError>;
    /// Creates or replaces one merchant.
    async fn put(&self, id: &MerchantId, merchant: &StoredMerchant) -> Result<(), StoreError>;
    /// Replaces the refresh token of a merchant that still exists, clearing `revoked`;
    /// `Ok(false)` when the merchant was removed meanwhile (it is not re-created).
    async fn rotate(
        &self,
        id: &MerchantId,
        refresh_token: &RefreshToken,
    ) -> Result<bool, StoreError>;
    /// Marks a merchant revoked if its refresh token is still `refresh_token`.
    async fn mark_revoked(
        &self,
        id: &MerchantId,
        refresh_token: &RefreshToken,
    ) -> Result<(), StoreError>;
    /// Marks a merchant `removing` (kept only to retry its revocation at Mollie); returns the
    /// record as it is now, `None` when there was none. The default reads and replaces the
    /// record; a backend with a compare-and-set overrides it.
    async fn mark_removing(&self, id: &MerchantId) -> Result<Option<StoredMerchant>, StoreError> {
        let Some(mut m) = self.get(id).await? else {
            return Ok(None);
        };
        if !m.removing {
            m.removing = true;
            m.updated_at = unix_now();
            self.put(id, &m).await?;
        }
        Ok(Some(m))
    }
    /// Removes a merchant; `Ok(false)` when there was none.
    async fn remove(&self, id: &MerchantId) -> Result<bool, StoreError>;
    /// Readiness: the store can be read now (`/readyz` answers 503 with the error otherwise).
    /// The default reads everything; a backend with a cheaper probe (a `PING`) overrides it.
    async fn check(&self) -> Result<(), StoreError> {
        self.load_all().await.map(drop)
    }
    /// Re-encrypts every record under the newest key of `store.encryption_key_file`;
    /// returns how many records were re-encrypted.
    async fn rekey(&self) -> Result<usize, StoreError> {
        Err(StoreError::Unsupported(
            "this backend cannot re-encrypt its records".into(),
        ))
    }
    /// Every stored merchant without its secrets, sorted by id. The default reads
    /// [`load_all`](Self::load_all); a backend that can list without reading secrets
    /// overrides it.
    async fn list(&self) -> Result<Vec<MerchantSummary>, StoreError> {
        let mut all: Vec<MerchantSummary> = self
            .load_all()
            .await?
            .into_iter()
            .map(|(id, m)| MerchantSummary {
                id,
                revoked: m.revoked,
                removing: m.removing,
                updated_at: m.updated_at,
            })
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(all)
    }
}
