//! Durable merchant credentials: the [`CredentialStore`] trait and its backends.
//!
//! Owns: what is kept across restarts, per merchant: the refresh token (losing it means the
//! merchant must authorize again) or a static credential ([`credential`]), whether it was
//! revoked, and when it last changed. Access
//! tokens are not stored: they live an hour and are re-fetched on demand.
//! Must not: hold a lock across `.await` in callers' paths, or ever write a partial record.
//! Backends: [`file::FileStore`] (embedded default), [`redis::RedisStore`] (several replicas:
//! shared records, the shared access token, a cross-replica refresh lock); [`crypto`] seals
//! their secret fields. Everything outside `store/` (token
//! manager, admin API, readiness) holds an `Arc<dyn CredentialStore>`, so a backend plugs in
//! here without touching them.

pub mod credential;
pub mod crypto;
pub mod file;
pub mod migrate;
pub mod redis;

use crate::types::{AccessToken, MerchantId, RefreshToken};
pub use credential::{CredentialKind, StaticCredential};
use serde::Deserialize;
use std::time::Duration;

/// One merchant's durable credentials. Not `Serialize`: a backend writes the refresh token
/// through `expose()` itself (`file::Record`), so no other serialization can carry it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredMerchant {
    /// Empty for a merchant stored with a static credential.
    pub refresh_token: RefreshToken,
    /// An API key or organization token used as it is, instead of OAuth (`None`: OAuth).
    #[serde(skip)]
    pub static_credential: Option<StaticCredential>,
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
            static_credential: None,
            revoked: false,
            removing: false,
            updated_at: unix_now(),
        }
    }

    /// A merchant stored with a static credential (never refreshed).
    pub fn with_static(credential: StaticCredential) -> Self {
        StoredMerchant {
            static_credential: Some(credential),
            ..StoredMerchant::new(RefreshToken::default())
        }
    }

    pub fn credential_kind(&self) -> CredentialKind {
        self.static_credential
            .as_ref()
            .map_or(CredentialKind::Oauth, |c| c.kind())
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
    /// Redis unreachable, slow or answering an error. Never carries the URL (it may hold a
    /// password).
    #[error("credential store (redis): {0}")]
    Redis(String),
    /// Redis refused this gateway's credentials (`WRONGPASS`, `NOAUTH`, `NOPERM`): a
    /// configuration error, not an outage (start-up refuses). Never carries the password.
    #[error(
        "credential store (redis): Redis refused the user, password or permissions of store.redis_url: {0}"
    )]
    Refused(String),
    /// A compare-and-set kept losing to other writers; what it wanted to write was kept in
    /// the fallback file (`store.fallback_path`).
    #[error("credential store (redis): merchant {id} kept changing under this write; the change was kept in {kept_in}")]
    Conflict { id: MerchantId, kept_in: String },
}

/// A change another process made, as a shared store announces it (Redis pub/sub).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// The merchant's record changed (onboarded, re-authorized, revoked): re-read it.
    Changed(MerchantId),
    /// The merchant was removed.
    Removed(MerchantId),
    /// A newer access token was shared ([`CredentialStore::shared_token`]).
    Token(MerchantId),
    /// Announcements may have been missed (a (re)connect): re-read everything.
    Resync,
}

/// An access token shared between replicas: the one another replica fetched serves all.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedToken {
    pub access_token: AccessToken,
    /// Wall-clock expiry, unix milliseconds.
    pub expires_at_ms: u64,
    /// The lifetime it was issued with (its refresh window is computed from it).
    pub lifetime_ms: u64,
}

impl std::fmt::Debug for SharedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedToken")
            .field("access_token", &"***")
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

/// A held per-merchant refresh lock. Dropping it releases the lock (for Redis: a task stops
/// renewing it and deletes it through an owner-checked script).
pub struct StoreLock {
    /// Dropped with the lock: tells the renewing task (if any) to release and stop.
    _release: Option<tokio::sync::oneshot::Sender<()>>,
}

impl StoreLock {
    /// A lock that only this process needed (the file store: local single flight suffices).
    pub fn local() -> StoreLock {
        StoreLock { _release: None }
    }

    /// A lock released when `release` is dropped.
    pub fn released_by(release: tokio::sync::oneshot::Sender<()>) -> StoreLock {
        StoreLock {
            _release: Some(release),
        }
    }
}

/// Unix milliseconds now (0 before 1970).
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What may be shown of a stored merchant (admin listing): never its refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerchantSummary {
    pub id: MerchantId,
    pub credential_kind: CredentialKind,
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
    /// Shared by several replicas: while it is unreachable, a replica that loaded it once keeps
    /// serving its cached tokens (`/readyz` says `degraded`, 200). Default: no (a local file
    /// that cannot be read makes the replica not ready).
    fn shared(&self) -> bool {
        false
    }
    /// Changes other processes announce; `None` when the store announces nothing (a file).
    fn events(&self) -> Option<tokio::sync::broadcast::Receiver<StoreEvent>> {
        None
    }
    /// Takes the merchant's refresh lock for `ttl` (renewed while held): `Ok(None)` when
    /// another process holds it. The default (one process) always succeeds: the token
    /// manager's local single flight is the only lock needed.
    async fn lock(
        &self,
        _id: &MerchantId,
        _ttl: Duration,
    ) -> Result<Option<StoreLock>, StoreError> {
        Ok(Some(StoreLock::local()))
    }
    /// The access token another process stored for the merchant, if any. Default: none.
    async fn shared_token(&self, _id: &MerchantId) -> Result<Option<SharedToken>, StoreError> {
        Ok(None)
    }
    /// Shares a new access token with the other processes. Default: nothing to share with.
    async fn save_access_token(
        &self,
        _id: &MerchantId,
        _token: &SharedToken,
    ) -> Result<(), StoreError> {
        Ok(())
    }
    /// Merchants whose records could not be parsed by the last reads (left out of
    /// [`load_all`](Self::load_all), answered with an error by [`get`](Self::get)). Default:
    /// none (the file store refuses the whole file instead).
    fn unreadable(&self) -> Vec<MerchantId> {
        Vec::new()
    }
    /// Uses up a one-time value (the nonce of an OAuth `state`) until `expires_at` (unix
    /// seconds): `Ok(true)` the first time across every process sharing the store, `Ok(false)`
    /// after. Default (one process): `Ok(true)`, the caller's own memory is the record.
    async fn use_once(&self, _nonce: &str, _expires_at: u64) -> Result<bool, StoreError> {
        Ok(true)
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
                credential_kind: m.credential_kind(),
                id,
                revoked: m.revoked,
                removing: m.removing,
                updated_at: m.updated_at,
            })
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(all)
    }

    /// The ids of the merchants being removed (`removing`), sorted. The token manager asks
    /// every [`REMOVING_RESCAN`](crate::tokens::REMOVING_RESCAN): the default goes through
    /// [`list`](Self::list), so a backend that holds its records in memory overrides it
    /// rather than copying every record each time (100,000 merchants: tens of MiB of garbage
    /// every 30 s, which the allocator kept resident, `benches/README.md`).
    async fn removing(&self) -> Result<Vec<MerchantId>, StoreError> {
        let all = self.list().await?;
        Ok(all
            .into_iter()
            .filter(|m| m.removing)
            .map(|m| m.id)
            .collect())
    }
}
