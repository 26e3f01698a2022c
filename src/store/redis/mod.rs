//! The store of several replicas: one Redis shared by all of them (`store.backend = "redis"`).
//!
//! Owns: the record layout, the compare-and-set writes, the cross-replica refresh lock, and
//! the fallback file of rotations Redis would not take.
//! Must not: write blindly (every write is a Lua compare-and-set on the record's `version`),
//! put a secret in a key name, a log line or an error (the URL may hold a password, so it is
//! never shown), or hang a caller (every operation is bounded by [`OP_TIMEOUT`]).
//!
//! Secrets at rest: with `store.encryption_key_file`, [`encode_record`] seals the credential
//! and the shared access token (`store::crypto`, the merchant id as associated data), the
//! fallback file is sealed like the file store, and `store rekey` re-writes every record
//! through the compare-and-set. A record that does not open refuses that merchant only.
//!
//! Layout, under `store.key_prefix` (`P`):
//! - `P merchant:<id>`: a hash `{version, data}`; `data` is the record from [`encode_record`]
//!   (refresh token, state, `updated_at`, and the current access token with its expiry).
//! - `P merchants`: the set of merchant ids (listing without a scan).
//! - `P version`: a counter; every write takes its new `version` from it, so a version is
//!   never reused, even after a remove and a new authorization (no ABA).
//! - `P lock:<id>`: the refresh lock, `SET NX PX` with a random owner, renewed and released
//!   only by owner-checked scripts.
//! - `P once:<sha256>`: a used OAuth `state` nonce, until the state expires
//!   ([`CredentialStore::use_once`]).
//! - `P events`: pub/sub channel, `changed <id>` / `removed <id>` after a put, a revocation or
//!   a removal, `token <id>` after a newer access token was shared
//!   ([`CredentialStore::events`]).
//!
//! Every call runs on the store's own one-thread runtime (its "home"): the connection's
//! driver task lives there, so callers on pingora's several runtimes share one connection
//! that outlives none of them. A background task on the same runtime pushes the fallback file
//! back into Redis, another listens on `P events` (`tasks.rs`); the record's bytes are made in
//! `record.rs`. `rediss://` is TLS through rustls (the system's trust store, or
//! `store.redis_ca_file`).

mod record;
mod tasks;
pub use record::{decode_record, encode_record, Record};
pub use tasks::{FALLBACK_RETRY, RESUBSCRIBE_AFTER};

use super::crypto::Sealing;
use super::file::FileStore;
use super::{CredentialStore, SharedToken, StoreError, StoreEvent, StoreLock, StoredMerchant};
use crate::types::{MerchantId, RefreshToken};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tasks::{hold_lock, listen, push_back_loop};
use tokio::sync::{broadcast, oneshot, Notify, OnceCell};
use tracing::Instrument;

/// The most one store operation may take, connecting included.
pub const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// Records read per round trip by a full load (pipelined `HMGET`s).
const LOAD_BATCH: usize = 500;
/// How often a write re-reads and retries when another writer got there first.
const CAS_ATTEMPTS: u32 = 5;

/// `KEYS`: record, index, version counter. `ARGV`: expected version (`0`: absent), data, id.
/// Public so that a test can run it against a real Redis.
pub const CAS_SET_LUA: &str = r"local v = redis.call('HGET', KEYS[1], 'version') or '0'
    if v ~= ARGV[1] then return 0 end
    local n = redis.call('INCR', KEYS[3])
    redis.call('HSET', KEYS[1], 'version', n, 'data', ARGV[2])
    redis.call('SADD', KEYS[2], ARGV[3])
    return 1";

static CAS_SET: LazyLock<Script> = LazyLock::new(|| Script::new(CAS_SET_LUA));

/// `KEYS`: record, index. `ARGV`: expected version, id.
static CAS_DEL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local v = redis.call('HGET', KEYS[1], 'version') or '0'
        if v ~= ARGV[1] then return 0 end
        redis.call('DEL', KEYS[1])
        redis.call('SREM', KEYS[2], ARGV[2])
        return 1",
    )
});

/// `KEYS`: lock. `ARGV`: owner, ttl ms. Extends the lock only while this owner holds it.
static LOCK_RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
            return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
        return 0",
    )
});

/// `KEYS`: lock. `ARGV`: owner. Deletes the lock only while this owner holds it.
static LOCK_RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
            return redis.call('DEL', KEYS[1]) end
        return 0",
    )
});

fn redis_err(e: redis::RedisError) -> StoreError {
    if refuses_credentials(&e) {
        StoreError::Refused(e.to_string())
    } else {
        StoreError::Redis(e.to_string())
    }
}

/// A wrong password or user (`WRONGPASS`), a password missing (`NOAUTH`), or an ACL user not
/// allowed the store's commands (`NOPERM`): fixed by the operator, not by waiting.
pub fn refuses_credentials(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
}

/// The Redis client of `url` (`store.redis_url`); for `rediss://`, `ca_file`
/// (`store.redis_ca_file`, PEM) holds the certificates trusted instead of the system's. Does not
/// connect. Errors name the key, never the URL (it may hold a password).
pub fn client(url: &str, ca_file: Option<&Path>) -> Result<redis::Client, StoreError> {
    let parse =
        |e: redis::RedisError| StoreError::Redis(format!("store.redis_url does not parse: {e}"));
    let Some(ca_file) = ca_file else {
        return redis::Client::open(url).map_err(parse);
    };
    let info = redis::IntoConnectionInfo::into_connection_info(url).map_err(parse)?;
    if !matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
        return Err(StoreError::Redis(
            "store.redis_ca_file is set but store.redis_url is not a rediss:// URL".into(),
        ));
    }
    let shown = ca_file.display();
    let pem = std::fs::read(ca_file).map_err(|e| {
        StoreError::Redis(format!("store.redis_ca_file {shown} cannot be read: {e}"))
    })?;
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(StoreError::Redis(format!(
            "store.redis_ca_file {shown} holds no PEM certificate"
        )));
    }
    let certs = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    };
    redis::Client::build_with_tls(info, certs)
        .map_err(|e| StoreError::Redis(format!("store.redis_ca_file {shown} is not usable: {e}")))
}

/// What a read-modify-write decides, given the current record.
enum Change<T> {
    Keep(T),
    Set(Record, T),
    Delete(T),
}

/// The connection and key names, shared with the tasks on the home runtime.
struct Shared {
    client: redis::Client,
    /// Made on first use (start-up does not need Redis up), then reconnects by itself.
    conn: OnceCell<ConnectionManager>,
    prefix: String,
    /// Where a rotated refresh token goes when Redis would not take it
    /// (`store.fallback_path`); pushed back by [`push_back_loop`].
    fallback: Arc<FileStore>,
    /// Signalled when the fallback file gained an entry.
    fallback_written: Notify,
    /// What `P events` announced, for [`CredentialStore::events`].
    events: broadcast::Sender<StoreEvent>,
    /// Seals the records' secrets (plaintext without `store.encryption_key_file`).
    sealing: Sealing,
    /// Records that do not parse, by merchant, with the version seen: each is logged once
    /// (not on every full reload), again only when it changes.
    unreadable: std::sync::Mutex<std::collections::HashMap<MerchantId, u64>>,
}

impl Shared {
    async fn conn(&self) -> Result<ConnectionManager, StoreError> {
        let init = || async {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(Duration::from_secs(2)))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(2));
            ConnectionManager::new_with_config(self.client.clone(), config).await
        };
        self.conn
            .get_or_try_init(init)
            .await
            .cloned()
            .map_err(redis_err)
    }

    fn record_key(&self, id: &MerchantId) -> String {
        format!("{}merchant:{id}", self.prefix)
    }

    fn lock_key(&self, id: &MerchantId) -> String {
        format!("{}lock:{id}", self.prefix)
    }

    fn events_channel(&self) -> String {
        format!("{}events", self.prefix)
    }

    /// Tells the other replicas (`changed <id>` / `removed <id>`); a lost announcement only
    /// delays them until their next read of the store.
    async fn announce(&self, what: &str, id: &MerchantId) {
        let Ok(mut c) = self.conn().await else {
            return;
        };
        let sent: Result<i64, _> = redis::cmd("PUBLISH")
            .arg(self.events_channel())
            .arg(format!("{what} {id}"))
            .query_async(&mut c)
            .await;
        if let Err(e) = sent {
            tracing::warn!(merchant = %id, error = %e, "cannot announce a change to other replicas");
        }
    }

    fn index_key(&self) -> String {
        format!("{}merchants", self.prefix)
    }

    /// The record and its version (0 when absent).
    async fn read(&self, id: &MerchantId) -> Result<(u64, Option<Record>), StoreError> {
        let mut c = self.conn().await?;
        let (version, data): (Option<u64>, Option<Vec<u8>>) = redis::cmd("HMGET")
            .arg(self.record_key(id))
            .arg("version")
            .arg("data")
            .query_async(&mut c)
            .await
            .map_err(redis_err)?;
        match (version, data) {
            (Some(v), Some(d)) => Ok((v, Some(self.decode(id, v, &d)?))),
            _ => Ok((0, None)),
        }
    }

    /// [`decode_record`], logging a record that does not parse once per version. Such a record
    /// is never written over: every write reads (and so fails) first.
    fn decode(&self, id: &MerchantId, version: u64, data: &[u8]) -> Result<Record, StoreError> {
        let decoded = decode_record(&self.sealing, id, data);
        let mut unreadable = self.unreadable.lock().unwrap_or_else(|p| p.into_inner());
        match &decoded {
            Ok(_) => {
                if unreadable.remove(id).is_some() {
                    tracing::info!(merchant = %id, "the record in Redis is readable again");
                }
            }
            Err(e) => {
                if unreadable.insert(id.clone(), version) != Some(version) {
                    tracing::error!(merchant = %id, version, error = %e, "unreadable record in Redis: the merchant answers 503 store_unavailable until it is fixed or removed; it is never overwritten");
                }
            }
        }
        decoded
    }

    /// Writes (or deletes, with `None`) the record if its version is still `expected`.
    async fn cas(
        &self,
        id: &MerchantId,
        expected: u64,
        new: Option<&Record>,
    ) -> Result<bool, StoreError> {
        let data = new
            .map(|r| encode_record(&self.sealing, id, r))
            .transpose()?;
        let mut c = self.conn().await?;
        let done: i64 = match data {
            Some(data) => CAS_SET
                .key(self.record_key(id))
                .key(self.index_key())
                .key(format!("{}version", self.prefix))
                .arg(expected)
                .arg(data)
                .arg(id.as_str())
                .invoke_async(&mut c)
                .await
                .map_err(redis_err)?,
            None => CAS_DEL
                .key(self.record_key(id))
                .key(self.index_key())
                .arg(expected)
                .arg(id.as_str())
                .invoke_async(&mut c)
                .await
                .map_err(redis_err)?,
        };
        Ok(done == 1)
    }

    /// Read, decide, compare-and-set; again while another writer got there first.
    async fn modify<T>(
        &self,
        id: &MerchantId,
        mut decide: impl FnMut(Option<Record>) -> Change<T>,
    ) -> Result<T, StoreError> {
        for _ in 0..CAS_ATTEMPTS {
            let (version, current) = self.read(id).await?;
            let (new, out) = match decide(current) {
                Change::Keep(out) => return Ok(out),
                Change::Set(r, out) => (Some(r), out),
                Change::Delete(out) => (None, out),
            };
            if self.cas(id, version, new.as_ref()).await? {
                return Ok(out);
            }
        }
        Err(StoreError::Redis(format!(
            "merchant {id}: {CAS_ATTEMPTS} writes in a row lost to other writers"
        )))
    }

    async fn load_all(&self) -> Result<Vec<(MerchantId, StoredMerchant)>, StoreError> {
        let mut c = self.conn().await?;
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.index_key())
            .query_async(&mut c)
            .await
            .map_err(redis_err)?;
        let ids: Vec<MerchantId> = ids
            .iter()
            .filter_map(|raw| MerchantId::parse(raw).ok())
            .collect();
        let mut all = Vec::with_capacity(ids.len());
        // One round trip per batch, not per merchant.
        for batch in ids.chunks(LOAD_BATCH) {
            let mut pipe = redis::pipe();
            for id in batch {
                pipe.cmd("HMGET")
                    .arg(self.record_key(id))
                    .arg("version")
                    .arg("data");
            }
            type Row = (Option<u64>, Option<Vec<u8>>);
            let rows: Vec<Row> = pipe.query_async(&mut c).await.map_err(redis_err)?;
            for (id, row) in batch.iter().zip(rows) {
                let (Some(version), Some(data)) = row else {
                    continue; // removed meanwhile
                };
                // An unreadable record is logged (once) and left out: that merchant answers
                // 503 store_unavailable when asked for (`get` fails the same way).
                if let Ok(r) = self.decode(id, version, &data) {
                    all.push((id.clone(), r.merchant));
                }
            }
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }
}

/// The store's own runtime thread; it ends when the store is dropped.
struct Home {
    handle: tokio::runtime::Handle,
    /// Dropped with the store: the thread's `block_on` returns and the runtime ends.
    _stop: oneshot::Sender<()>,
}

impl Home {
    fn start() -> Result<Home, StoreError> {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("redis-store".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => {
                        let _ = handle_tx.send(Ok(rt.handle().clone()));
                        rt.block_on(async move {
                            let _ = stopped.await;
                        });
                    }
                    Err(e) => {
                        let _ = handle_tx.send(Err(e.to_string()));
                    }
                }
            });
        let fail = |e: String| StoreError::Redis(format!("cannot start the store's runtime: {e}"));
        spawned.map_err(|e| fail(e.to_string()))?;
        let handle = handle_rx.recv().map_err(|e| fail(e.to_string()))?;
        Ok(Home {
            handle: handle.map_err(fail)?,
            _stop: stop,
        })
    }
}

pub struct RedisStore {
    shared: Arc<Shared>,
    home: Home,
}

impl RedisStore {
    /// Parses the URL and opens the fallback file; does not connect (Redis may come later).
    pub fn open(url: &str, prefix: &str, fallback: &Path) -> Result<Arc<RedisStore>, StoreError> {
        RedisStore::open_sealed(url, prefix, fallback, Sealing::default())
    }

    /// As [`open`](Self::open), sealing with `sealing` (see [`open_client`](Self::open_client)).
    pub fn open_sealed(
        url: &str,
        prefix: &str,
        fallback: &Path,
        sealing: Sealing,
    ) -> Result<Arc<RedisStore>, StoreError> {
        RedisStore::open_client(client(url, None)?, prefix, fallback, sealing)
    }

    /// As [`open`](Self::open), with a client from [`client`] (a `rediss://` URL may trust its
    /// own CA), sealing every record (and the fallback file) it writes with `sealing`'s newest
    /// key; sealed records that do not open are errors, never rewritten.
    pub fn open_client(
        client: redis::Client,
        prefix: &str,
        fallback: &Path,
        sealing: Sealing,
    ) -> Result<Arc<RedisStore>, StoreError> {
        let shared = Arc::new(Shared {
            client,
            conn: OnceCell::new(),
            prefix: prefix.to_string(),
            fallback: FileStore::open_sealed(fallback, sealing.clone())?,
            fallback_written: Notify::new(),
            events: broadcast::channel(1024).0,
            sealing,
            unreadable: Default::default(),
        });
        let home = Home::start()?;
        let span = tracing::info_span!("fallback push-back");
        home.handle
            .spawn(push_back_loop(shared.clone()).instrument(span));
        let span = tracing::info_span!("store events");
        home.handle.spawn(listen(shared.clone()).instrument(span));
        Ok(Arc::new(RedisStore { shared, home }))
    }

    /// Runs `work` on the home runtime, bounded by [`OP_TIMEOUT`].
    async fn run<T, F>(
        &self,
        op: &'static str,
        work: impl FnOnce(Arc<Shared>) -> F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let work = work(self.shared.clone());
        let bounded = async move {
            tokio::time::timeout(OP_TIMEOUT, work)
                .await
                .unwrap_or_else(|_| Err(StoreError::Redis(format!("{op}: no answer in time"))))
        };
        self.home
            .handle
            .spawn(bounded)
            .await
            .unwrap_or_else(|e| Err(StoreError::Redis(format!("{op}: task failed: {e}"))))
    }

    /// A rotated refresh token Redis did not take: kept in the fallback file, never dropped.
    async fn keep_in_fallback(
        &self,
        id: &MerchantId,
        token: &RefreshToken,
        cause: StoreError,
    ) -> StoreError {
        let fallback = &self.shared.fallback;
        let kept = fallback.put(id, &StoredMerchant::new(token.clone())).await;
        let kept_in = fallback.path().display().to_string();
        match kept {
            Ok(()) => {
                self.shared.fallback_written.notify_one();
                tracing::error!(merchant = %id, error = %cause, fallback = %kept_in, "rotated refresh token not stored in Redis; kept in the fallback file");
                StoreError::Conflict {
                    id: id.clone(),
                    kept_in,
                }
            }
            Err(e) => {
                tracing::error!(merchant = %id, error = %cause, fallback_error = %e, "rotated refresh token stored neither in Redis nor in the fallback file");
                cause
            }
        }
    }
}

#[async_trait::async_trait]
impl CredentialStore for Arc<RedisStore> {
    async fn load_all(&self) -> Result<Vec<(MerchantId, StoredMerchant)>, StoreError> {
        self.run("load", |s| async move { s.load_all().await })
            .await
    }

    async fn get(&self, id: &MerchantId) -> Result<Option<StoredMerchant>, StoreError> {
        let id = id.clone();
        let read = self
            .run("get", |s| async move { s.read(&id).await })
            .await?;
        Ok(read.1.map(|r| r.merchant))
    }

    async fn put(&self, id: &MerchantId, merchant: &StoredMerchant) -> Result<(), StoreError> {
        let (id, merchant) = (id.clone(), merchant.clone());
        self.run("put", |s| async move {
            // A new authorization: the old access token is not carried over.
            s.modify(&id, |_| {
                let r = Record {
                    merchant: merchant.clone(),
                    access: None,
                };
                Change::Set(r, ())
            })
            .await?;
            s.announce("changed", &id).await;
            Ok(())
        })
        .await
    }

    async fn rotate(
        &self,
        id: &MerchantId,
        refresh_token: &RefreshToken,
    ) -> Result<bool, StoreError> {
        let (key, token) = (id.clone(), refresh_token.clone());
        let done = self
            .run("rotate", |s| async move {
                s.modify(&key, |current| match current {
                    Some(mut r) => {
                        r.merchant.refresh_token = token.clone();
                        r.merchant.revoked = false;
                        r.merchant.updated_at = super::unix_now();
                        Change::Set(r, true)
                    }
                    None => Change::Keep(false),
                })
                .await
            })
            .await;
        match done {
            Err(e @ (StoreError::Corrupt { .. } | StoreError::Crypto { .. })) => Err(e),
            Err(e) => Err(self.keep_in_fallback(id, refresh_token, e).await),
            ok => ok,
        }
    }

    async fn mark_revoked(
        &self,
        id: &MerchantId,
        refresh_token: &RefreshToken,
    ) -> Result<(), StoreError> {
        let (id, token) = (id.clone(), refresh_token.clone());
        self.run("revoke", |s| async move {
            let changed = s
                .modify(&id, |current| match current {
                    Some(mut r) if r.merchant.refresh_token == token && !r.merchant.revoked => {
                        r.merchant.revoked = true;
                        r.merchant.updated_at = super::unix_now();
                        r.access = None;
                        Change::Set(r, true)
                    }
                    _ => Change::Keep(false),
                })
                .await?;
            if changed {
                s.announce("changed", &id).await;
            }
            Ok(())
        })
        .await
    }

    async fn remove(&self, id: &MerchantId) -> Result<bool, StoreError> {
        let id = id.clone();
        self.run("remove", |s| async move {
            let removed = s
                .modify(&id, |current| match current {
                    Some(_) => Change::Delete(true),
                    None => Change::Keep(false),
                })
                .await?;
            if removed {
                s.announce("removed", &id).await;
            }
            Ok(removed)
        })
        .await
    }

    /// A `PING`.
    async fn check(&self) -> Result<(), StoreError> {
        self.run("check", |s| async move {
            let mut c = s.conn().await?;
            redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .map(drop)
                .map_err(redis_err)
        })
        .await
    }

    /// Every record re-written through its compare-and-set (sealed under the newest key),
    /// then the fallback file. A record that does not open stops the rekey untouched.
    async fn rekey(&self) -> Result<usize, StoreError> {
        if self.shared.sealing.keyring().is_none() {
            return Err(StoreError::Unsupported(format!(
                "store rekey needs {} (the keys to re-encrypt with)",
                super::crypto::KEY_SETTING
            )));
        }
        let ids = self
            .run("rekey", |s| async move {
                let mut c = s.conn().await?;
                redis::cmd("SMEMBERS")
                    .arg(s.index_key())
                    .query_async::<Vec<String>>(&mut c)
                    .await
                    .map_err(redis_err)
            })
            .await?;
        let mut count = 0;
        for raw in ids {
            let Ok(id) = MerchantId::parse(&raw) else {
                continue;
            };
            // One bounded operation per record: a large store is not one long call.
            let done = self
                .run("rekey", |s| async move {
                    s.modify(&id, |current| match current {
                        Some(r) => Change::Set(r, true),
                        None => Change::Keep(false),
                    })
                    .await
                })
                .await?;
            count += usize::from(done);
        }
        let fallback = &self.shared.fallback;
        if !fallback.load_all().await?.is_empty() {
            count += fallback.rekey().await?;
        }
        Ok(count)
    }

    fn shared(&self) -> bool {
        true
    }

    fn unreadable(&self) -> Vec<MerchantId> {
        let unreadable = self.shared.unreadable.lock();
        let mut ids: Vec<MerchantId> = unreadable
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        ids.sort();
        ids
    }

    fn events(&self) -> Option<broadcast::Receiver<StoreEvent>> {
        Some(self.shared.events.subscribe())
    }

    async fn lock(&self, id: &MerchantId, ttl: Duration) -> Result<Option<StoreLock>, StoreError> {
        let owner = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let key = self.shared.lock_key(id);
        let (k, o) = (key.clone(), owner.clone());
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let taken = self
            .run("lock", |s| async move {
                let mut c = s.conn().await?;
                let set: Option<String> = redis::cmd("SET")
                    .arg(&k)
                    .arg(&o)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async(&mut c)
                    .await
                    .map_err(redis_err)?;
                Ok(set.is_some())
            })
            .await?;
        if !taken {
            return Ok(None);
        }
        let (release, released) = oneshot::channel();
        let span = tracing::info_span!("refresh lock", merchant = %id);
        let hold = hold_lock(self.shared.clone(), key, owner, ttl, released);
        self.home.handle.spawn(hold.instrument(span));
        Ok(Some(StoreLock::released_by(release)))
    }

    async fn shared_token(&self, id: &MerchantId) -> Result<Option<SharedToken>, StoreError> {
        let id = id.clone();
        let read = self
            .run("get", |s| async move { s.read(&id).await })
            .await?;
        Ok(read.1.and_then(|r| r.access))
    }

    /// `SET <prefix>once:<sha256(nonce)> 1 NX PX <until expires_at>`: the first replica wins.
    /// The key holds a hash of the nonce, not the nonce.
    async fn use_once(&self, nonce: &str, expires_at: u64) -> Result<bool, StoreError> {
        let digest = ring::digest::digest(&ring::digest::SHA256, nonce.as_bytes());
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let key = format!("{}once:{hex}", self.shared.prefix);
        let ttl_ms = (expires_at * 1000)
            .saturating_sub(super::unix_now_ms())
            .max(1);
        self.run("once", |s| async move {
            let mut c = s.conn().await?;
            let set: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .query_async(&mut c)
                .await
                .map_err(redis_err)?;
            Ok(set.is_some())
        })
        .await
    }

    /// Kept only if it expires later than the token already shared.
    async fn save_access_token(
        &self,
        id: &MerchantId,
        token: &SharedToken,
    ) -> Result<(), StoreError> {
        let (id, token) = (id.clone(), token.clone());
        self.run("share", |s| async move {
            let shared = s
                .modify(&id, |current| match current {
                    Some(mut r)
                        if r.access
                            .as_ref()
                            .is_none_or(|a| a.expires_at_ms < token.expires_at_ms) =>
                    {
                        r.access = Some(token.clone());
                        Change::Set(r, true)
                    }
                    _ => Change::Keep(false),
                })
                .await?;
            if shared {
                s.announce("token", &id).await;
            }
            Ok(())
        })
        .await
    }
}
