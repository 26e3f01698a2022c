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
//! Blocking file I/O runs on tokio's blocking pool.

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

const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    version: u32,
    merchants: BTreeMap<MerchantId, StoredMerchant>,
}

/// A merchant as written to the file (the fields of [`StoredMerchant`], which is read back
/// directly): the one place the refresh token is serialized, through `expose()`.
#[derive(Serialize)]
struct Record<'a> {
    refresh_token: &'a str,
    revoked: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    removing: bool,
    updated_at: u64,
}

impl<'a> Record<'a> {
    fn of(m: &'a StoredMerchant) -> Self {
        Record {
            refresh_token: m.refresh_token.expose(),
            revoked: m.revoked,
            removing: m.removing,
            updated_at: m.updated_at,
        }
    }
}

/// (modification time, length) of the file the cache was read from.
type Stamp = Option<(SystemTime, u64)>;

pub struct FileStore {
    path: PathBuf,
    /// The last contents read or written, and the file stamp they belong to. A std mutex:
    /// held only while copying, never across `.await` (all I/O runs in `spawn_blocking`).
    cache: Mutex<(Stamp, Arc<BTreeMap<MerchantId, StoredMerchant>>)>,
}

impl FileStore {
    /// Opens the store, reading the file now so that an unreadable or corrupt file stops the
    /// start-up with a clear error. A missing file is an empty store, created on first write.
    pub fn open(path: impl Into<PathBuf>) -> Result<Arc<FileStore>, StoreError> {
        let store = FileStore {
            path: path.into(),
            cache: Mutex::new((None, Arc::new(BTreeMap::new()))),
        };
        store.refresh_cache()?;
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
        let parsed: FileFormat =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path: self.path.display().to_string(),
                reason: e.to_string(),
            })?;
        if parsed.version != FORMAT_VERSION {
            return Err(StoreError::Corrupt {
                path: self.path.display().to_string(),
                reason: format!("format version {} is not {FORMAT_VERSION}", parsed.version),
            });
        }
        Ok(parsed.merchants)
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
            merchants: BTreeMap<&'a MerchantId, Record<'a>>,
        }
        let merchants = map.iter().map(|(id, m)| (id, Record::of(m))).collect();
        let mut bytes = serde_json::to_vec_pretty(&Out {
            version: FORMAT_VERSION,
            merchants,
        })
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
            Ok(map.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        })
        .await
    }

    async fn get(&self, id: &MerchantId) -> Result<Option<StoredMerchant>, StoreError> {
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

    /// The file (if it exists) can be read and parsed now.
    async fn check(&self) -> Result<(), StoreError> {
        blocking(self, |s| s.refresh_cache().map(drop)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn id(s: &str) -> MerchantId {
        MerchantId::parse(s).unwrap()
    }

    #[tokio::test]
    async fn round_trip_mode_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/creds.json");
        let store = FileStore::open(&path).unwrap();
        assert!(store.load_all().await.unwrap().is_empty());
        store
            .put(&id("m1"), &StoredMerchant::new(RefreshToken::new("r1")))
            .await
            .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(store
            .rotate(&id("m1"), &RefreshToken::new("r2"))
            .await
            .unwrap());
        assert!(!store
            .rotate(&id("gone"), &RefreshToken::new("x"))
            .await
            .unwrap());
        // A second handle (another process, in effect) sees the change.
        let other = FileStore::open(&path).unwrap();
        let m1 = other.get(&id("m1")).await.unwrap().unwrap();
        assert_eq!(m1.refresh_token.expose(), "r2");
        // Writes through either handle are merged, not lost.
        other
            .put(&id("m2"), &StoredMerchant::new(RefreshToken::new("q")))
            .await
            .unwrap();
        store
            .mark_revoked(&id("m1"), &RefreshToken::new("old"))
            .await
            .unwrap();
        assert!(!store.get(&id("m1")).await.unwrap().unwrap().revoked);
        store
            .mark_revoked(&id("m1"), &RefreshToken::new("r2"))
            .await
            .unwrap();
        let all = FileStore::open(&path).unwrap().load_all().await.unwrap();
        assert_eq!(all.len(), 2);
        assert!(all[0].1.revoked);
        let listed = store.list().await.unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!((listed[0].id.as_str(), listed[0].revoked), ("m1", true));
        assert!(store.remove(&id("m2")).await.unwrap());
        assert!(!store.remove(&id("m2")).await.unwrap());
        store.check().await.unwrap();
    }

    #[tokio::test]
    async fn corrupt_file_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creds.json");
        std::fs::write(&path, "{not json").unwrap();
        let err = FileStore::open(&path).err().unwrap();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{not json");
        // A store that was fine and is corrupted later fails its readiness check.
        let ok = dir.path().join("ok.json");
        let store = FileStore::open(&ok).unwrap();
        store.check().await.unwrap();
        std::fs::write(&ok, "{half").unwrap();
        assert!(matches!(
            store.check().await,
            Err(StoreError::Corrupt { .. })
        ));
    }
}
