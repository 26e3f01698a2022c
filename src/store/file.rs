//! The embedded default store: one JSON file, replaced atomically on every change.
//!
//! Durability: a change is written to a temporary file beside the target (mode 0600), fsynced,
//! renamed over the target, and the directory is fsynced; a `kill -9` at any instant leaves the
//! old file or the new one. Concurrency: every change re-reads the file under an exclusive
//! `flock` on `<path>.lock`, so the CLI and a running gateway can both write without losing
//! each other's changes. Reads use an in-memory copy, reloaded when the file's modification
//! time or size changes. A file that exists but cannot be parsed is an error and is never
//! overwritten.
//!
//! Secrets at rest: with `store.encryption_key_file`, every write seals every record's secret
//! fields under the newest key ([`super::crypto`], file `version` 2); plaintext records
//! (version 1, and the format without a key file) are read and sealed by the next write. A
//! sealed record that does not open (no key, unknown key, wrong key, moved to another
//! merchant id) is an error like a corrupt file: the store refuses and never rewrites it.
//!
//! File I/O runs on tokio's blocking pool, except the `stat` with which `get` finds the file
//! unchanged (it then answers from the in-memory copy on the calling thread).

use super::credential::SecretFields;
use super::crypto::{Sealing, StoredSecret};
use super::{unix_now, CredentialStore, StoreError, StoredMerchant};
use crate::types::{MerchantId, RefreshToken};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Version 1: secret fields in plaintext (written without a key file, and by older releases).
const PLAIN_VERSION: u32 = 1;
/// Version 2: secret fields sealed ([`super::crypto`]); older releases refuse it by version.
const SEALED_VERSION: u32 = 2;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    version: u32,
    merchants: BTreeMap<MerchantId, Record>,
}

/// A merchant as written to the file: the one place its secret fields are serialized,
/// sealed by [`Record::seal`] and opened by [`Record::open`] (either format is read). Its
/// credential is one of `refresh_token`, `api_key`, `org_token` ([`SecretFields`]).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<StoredSecret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    api_key: Option<StoredSecret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    org_token: Option<StoredSecret>,
    #[serde(default)]
    revoked: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    removing: bool,
    #[serde(default)]
    updated_at: u64,
}

impl Record {
    fn seal(
        sealing: &Sealing,
        id: &MerchantId,
        m: &StoredMerchant,
    ) -> Result<Self, super::crypto::CryptoError> {
        let f = SecretFields::seal(sealing, id, m)?;
        Ok(Record {
            refresh_token: f.refresh_token,
            api_key: f.api_key,
            org_token: f.org_token,
            revoked: m.revoked,
            removing: m.removing,
            updated_at: m.updated_at,
        })
    }

    fn fields(&self) -> SecretFields {
        SecretFields {
            refresh_token: self.refresh_token.clone(),
            api_key: self.api_key.clone(),
            org_token: self.org_token.clone(),
        }
    }

    fn open(
        &self,
        sealing: &Sealing,
        id: &MerchantId,
    ) -> Result<StoredMerchant, super::crypto::CryptoError> {
        let (refresh_token, static_credential) = self.fields().open(sealing, id)?;
        Ok(StoredMerchant {
            refresh_token,
            static_credential,
            revoked: self.revoked,
            removing: self.removing,
            updated_at: self.updated_at,
        })
    }
}

/// (modification time, length) of the file the cache was read from.
type Stamp = Option<(SystemTime, u64)>;

pub struct FileStore {
    path: PathBuf,
    /// Seals secret fields on every write (plaintext without a key file).
    sealing: Sealing,
    /// The last contents read or written, and the file stamp they belong to. A std mutex:
    /// held only while copying, never across `.await` (all I/O runs in `spawn_blocking`).
    cache: Mutex<(Stamp, Arc<BTreeMap<MerchantId, StoredMerchant>>)>,
}

impl FileStore {
    /// Opens the store, reading the file now so that an unreadable or corrupt file stops the
    /// start-up with a clear error. A missing file is an empty store, created on first write.
    /// Without a key file: records are written in plaintext.
    pub fn open(path: impl Into<PathBuf>) -> Result<Arc<FileStore>, StoreError> {
        FileStore::open_sealed(path, Sealing::default())
    }

    /// As [`FileStore::open`], sealing every record written with `sealing`'s newest key. A
    /// sealed record that does not open stops the start-up (the file is left untouched).
    pub fn open_sealed(
        path: impl Into<PathBuf>,
        sealing: Sealing,
    ) -> Result<Arc<FileStore>, StoreError> {
        let store = FileStore {
            path: path.into(),
            sealing,
            cache: Mutex::new((None, Arc::new(BTreeMap::new()))),
        };
        store.refresh_cache()?;
        if store.sealing.keyring().is_some() {
            store.warn_plaintext();
        }
        Ok(Arc::new(store))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io_err(&self, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }

    fn stamp(&self) -> Result<Stamp, StoreError> {
        match std::fs::metadata(&self.path) {
            Ok(m) => Ok(Some((m.modified().map_err(|e| self.io_err(e))?, m.len()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io_err(e)),
        }
    }

    fn read_file(&self) -> Result<BTreeMap<MerchantId, StoredMerchant>, StoreError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(self.io_err(e)),
        };
        let corrupt = |reason: String| StoreError::Corrupt {
            path: self.path.display().to_string(),
            reason,
        };
        let parsed: FileFormat =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if parsed.version != PLAIN_VERSION && parsed.version != SEALED_VERSION {
            return Err(corrupt(format!(
                "format version {} is not {PLAIN_VERSION} or {SEALED_VERSION}",
                parsed.version
            )));
        }
        parsed
            .merchants
            .into_iter()
            .map(|(id, record)| {
                let m = record
                    .open(&self.sealing, &id)
                    .map_err(|e| self.crypto_err(e))?;
                Ok((id, m))
            })
            .collect()
    }

    /// With a key file: says how many records are still in plaintext (sealed by the next
    /// write, or by `store rekey`).
    fn warn_plaintext(&self) {
        let Ok(bytes) = std::fs::read(&self.path) else {
            return;
        };
        let Ok(parsed) = serde_json::from_slice::<FileFormat>(&bytes) else {
            return;
        };
        let plain = parsed
            .merchants
            .values()
            .filter(|r| r.fields().is_plain())
            .count();
        if plain > 0 {
            tracing::warn!(
                records = plain,
                path = %self.path.display(),
                "credential records still in plaintext: sealed by the next write, or run \
                 `mollie-gateway store rekey`"
            );
        }
    }

    fn crypto_err(&self, source: super::crypto::CryptoError) -> StoreError {
        StoreError::Crypto {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// The in-memory copy, if the file has not changed since it was read: one `stat`, no
    /// read. `None` when it changed, or the `stat` failed ([`Self::refresh_cache`] says why).
    fn current_cache(&self) -> Option<Arc<BTreeMap<MerchantId, StoredMerchant>>> {
        let stamp = self.stamp().ok()?;
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        (cache.0 == stamp && stamp.is_some()).then(|| cache.1.clone())
    }

    /// Reloads the in-memory copy if the file changed since it was read.
    fn refresh_cache(&self) -> Result<Arc<BTreeMap<MerchantId, StoredMerchant>>, StoreError> {
        let stamp = self.stamp()?;
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.0 == stamp && stamp.is_some() {
                return Ok(cache.1.clone());
            }
        }
        let map = Arc::new(self.read_file()?);
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = (stamp, map.clone());
        Ok(map)
    }

    /// Read-modify-write under the lock file. `change` returns what to report, and whether
    /// anything changed (nothing is written otherwise).
    fn modify<T>(
        &self,
        change: impl FnOnce(&mut BTreeMap<MerchantId, StoredMerchant>) -> (T, bool),
    ) -> Result<T, StoreError> {
        if let Some(dir) = self.parent_dir() {
            std::fs::create_dir_all(dir).map_err(|e| self.io_err(e))?;
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.lock_path())
            .map_err(|e| self.io_err(e))?;
        lock.lock().map_err(|e| self.io_err(e))?;
        let mut map = self.read_file()?;
        let (result, changed) = change(&mut map);
        if changed {
            self.write_atomically(&map)?;
            let stamp = self.stamp()?;
            *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = (stamp, Arc::new(map));
        }
        drop(lock); // closing the file releases the flock
        Ok(result)
    }

    fn parent_dir(&self) -> Option<&Path> {
        self.path.parent().filter(|p| !p.as_os_str().is_empty())
    }

    fn lock_path(&self) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(".lock");
        p.into()
    }

    fn write_atomically(
        &self,
        map: &BTreeMap<MerchantId, StoredMerchant>,
    ) -> Result<(), StoreError> {
        #[derive(Serialize)]
        struct Out<'a> {
            version: u32,
            merchants: BTreeMap<&'a MerchantId, Record>,
        }
        let merchants = map
            .iter()
            .map(|(id, m)| Ok((id, Record::seal(&self.sealing, id, m)?)))
            .collect::<Result<_, _>>()
            .map_err(|e| self.crypto_err(e))?;
        let version = match self.sealing.keyring() {
            Some(_) => SEALED_VERSION,
            None => PLAIN_VERSION,
        };
        let mut bytes = serde_json::to_vec_pretty(&Out { version, merchants })
            .map_err(|e| self.io_err(std::io::Error::other(e)))?;
        bytes.push(b'\n');
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(format!(".tmp.{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let result = (|| {
            let mut f = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, &self.path)?;
            let dir = self.parent_dir().unwrap_or(Path::new("."));
            File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(|e| self.io_err(e))
    }
}

/// What [`CredentialStore::list`] shows of a merchant (the map is sorted by id already).
fn summary(id: &MerchantId, m: &StoredMerchant) -> super::MerchantSummary {
    super::MerchantSummary {
        id: id.clone(),
        credential_kind: m.credential_kind(),
        revoked: m.revoked,
        removing: m.removing,
        updated_at: m.updated_at,
    }
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    store: &Arc<FileStore>,
    work: impl FnOnce(&FileStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || work(&store))
        .await
        .unwrap_or_else(|e| {
            Err(StoreError::Io {
                path: String::new(),
                source: std::io::Error::other(format!("store task failed: {e}")),
            })
        })
}

/// The trait is implemented on `Arc<FileStore>` so each call can move a handle into the
/// blocking pool.
#[async_trait::async_trait]
impl CredentialStore for Arc<FileStore> {
    async fn load_all(&self) -> Result<Vec<(MerchantId, StoredMerchant)>, StoreError> {
        blocking(self, |s| {
            let map = s.refresh_cache()?;
            let all = map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            // The file's bytes and its parse were freed on this (blocking-pool) thread.
            crate::memory::release_freed();
            Ok(all)
        })
        .await
    }

    /// From the in-memory copy, without cloning a secret.
    async fn list(&self) -> Result<Vec<super::MerchantSummary>, StoreError> {
        blocking(self, |s| {
            let map = s.refresh_cache()?;
            Ok(map.iter().map(|(id, m)| summary(id, m)).collect())
        })
        .await
    }

    /// From the in-memory copy: no record is copied (this runs every 30 s).
    async fn removing(&self) -> Result<Vec<MerchantId>, StoreError> {
        blocking(self, |s| {
            let map = s.refresh_cache()?;
            Ok(map
                .iter()
                .filter(|(_, m)| m.removing)
                .map(|(id, _)| id.clone())
                .collect())
        })
        .await
    }

    /// Every refresh reads its merchant's record. While the file is unchanged (a `stat` of a
    /// local file: microseconds) the record is copied from the in-memory copy on the calling
    /// thread; only a changed file is read on the blocking pool. Through the pool, a burst of
    /// refreshes (100,000 merchants' first requests) grew it to over a hundred threads
    /// (`benches/README.md`, Scale).
    async fn get(&self, id: &MerchantId) -> Result<Option<StoredMerchant>, StoreError> {
        if let Some(map) = self.current_cache() {
            return Ok(map.get(id).cloned());
        }
        let id = id.clone();
        blocking(self, move |s| Ok(s.refresh_cache()?.get(&id).cloned())).await
    }

    async fn put(&self, id: &MerchantId, merchant: &StoredMerchant) -> Result<(), StoreError> {
        let (id, merchant) = (id.clone(), merchant.clone());
        blocking(self, move |s| {
            s.modify(|map| {
                map.insert(id, merchant);
                ((), true)
            })
        })
        .await
    }

    async fn rotate(
        &self,
        id: &MerchantId,
        refresh_token: &RefreshToken,
    ) -> Result<bool, StoreError> {
        let (id, token) = (id.clone(), refresh_token.clone());
        blocking(self, move |s| {
            s.modify(|map| match map.get_mut(&id) {
                Some(m) => {
                    m.refresh_token = token;
                    m.revoked = false;
                    m.updated_at = unix_now();
                    (true, true)
                }
                None => (false, false),
            })
        })
        .await
    }

    async fn mark_revoked(
        &self,
        id: &MerchantId,
        refresh_token: &RefreshToken,
    ) -> Result<(), StoreError> {
        let (id, token) = (id.clone(), refresh_token.clone());
        blocking(self, move |s| {
            s.modify(|map| match map.get_mut(&id) {
                Some(m) if m.refresh_token == token && !m.revoked => {
                    m.revoked = true;
                    m.updated_at = unix_now();
                    ((), true)
                }
                _ => ((), false),
            })
        })
        .await
    }

    async fn remove(&self, id: &MerchantId) -> Result<bool, StoreError> {
        let id = id.clone();
        blocking(self, move |s| {
            s.modify(|map| {
                let removed = map.remove(&id).is_some();
                (removed, removed)
            })
        })
        .await
    }

    /// Every write seals every record afresh under the newest key: a forced write.
    async fn rekey(&self) -> Result<usize, StoreError> {
        if self.sealing.keyring().is_none() {
            return Err(StoreError::Unsupported(format!(
                "store rekey needs {} (the keys to re-encrypt with)",
                super::crypto::KEY_SETTING
            )));
        }
        blocking(self, |s| s.modify(|map| (map.len(), true))).await
    }

    /// The file (if it exists) can be read and parsed now.
    async fn check(&self) -> Result<(), StoreError> {
        blocking(self, |s| s.refresh_cache().map(drop)).await
    }
}

#[cfg(test)]
#[path = "file_tests.rs"]
mod tests;
