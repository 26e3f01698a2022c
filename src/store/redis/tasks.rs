//! The store's background work on its home runtime: listening to `P events`, pushing the
//! fallback file back into Redis, and holding a refresh lock (renew, release).
//! Must not: end while the store lives (each loop ends with the home runtime), or log a secret.

use super::{Change, Record, Shared, LOCK_RELEASE, LOCK_RENEW, OP_TIMEOUT};
use crate::store::{CredentialStore, StoreEvent, StoredMerchant};
use crate::types::MerchantId;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// How long the listener waits before subscribing again after losing its connection.
pub const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(1);

/// Subscribes to `P events` and passes what it hears on; after every (re)subscription a
/// [`StoreEvent::Resync`], as pub/sub drops messages while disconnected.
pub(super) async fn listen(shared: Arc<Shared>) {
    let channel = shared.events_channel();
    loop {
        let connect = tokio::time::timeout(OP_TIMEOUT, shared.client.get_async_pubsub());
        if let Ok(Ok(mut pubsub)) = connect.await {
            let subscribed = tokio::time::timeout(OP_TIMEOUT, pubsub.subscribe(&channel));
            if let Ok(Ok(())) = subscribed.await {
                let _ = shared.events.send(StoreEvent::Resync);
                let mut messages = pubsub.on_message();
                while let Some(msg) = messages.next().await {
                    let payload: String = msg.get_payload().unwrap_or_default();
                    if let Some(event) = parse_event(&payload) {
                        let _ = shared.events.send(event);
                    }
                }
                tracing::warn!("lost the store's event subscription; subscribing again");
            }
        }
        tokio::time::sleep(RESUBSCRIBE_AFTER).await;
    }
}

fn parse_event(payload: &str) -> Option<StoreEvent> {
    let (what, id) = payload.split_once(' ')?;
    let id = MerchantId::parse(id).ok()?;
    match what {
        "changed" => Some(StoreEvent::Changed(id)),
        "removed" => Some(StoreEvent::Removed(id)),
        "token" => Some(StoreEvent::Token(id)),
        _ => None,
    }
}

/// How often a non-empty fallback file is offered to Redis again.
pub const FALLBACK_RETRY: Duration = Duration::from_secs(2);

/// Pushes the fallback file's entries into Redis whenever it has some (at start, after each
/// write to it, then every [`FALLBACK_RETRY`] until it is empty). Runs as long as the store.
pub(super) async fn push_back_loop(shared: Arc<Shared>) {
    loop {
        let left = match shared.fallback.load_all().await {
            Ok(all) if all.is_empty() => 0,
            Ok(all) => {
                let n = all.len();
                let bounded = tokio::time::timeout(OP_TIMEOUT * n as u32, push_back(&shared, all));
                bounded.await.unwrap_or(n)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read the fallback file");
                1
            }
        };
        if left == 0 {
            shared.fallback_written.notified().await;
        } else {
            tokio::time::sleep(FALLBACK_RETRY).await;
        }
    }
}

/// Writes each entry into Redis unless Redis holds a newer change of that merchant (then it is
/// a conflict, logged, and Redis wins); an entry is removed from the file once settled.
/// Returns how many are left.
async fn push_back(shared: &Shared, all: Vec<(MerchantId, StoredMerchant)>) -> usize {
    let mut left = 0;
    for (id, kept) in all {
        let settled = shared
            .modify(&id, |current| match current {
                Some(r) if r.merchant.updated_at > kept.updated_at => Change::Keep(false),
                Some(mut r) => {
                    r.merchant = kept.clone();
                    Change::Set(r, true)
                }
                // Redis lost it (or it was removed meanwhile): a live refresh token is not
                // dropped.
                None => Change::Set(
                    Record {
                        merchant: kept.clone(),
                        access: None,
                    },
                    true,
                ),
            })
            .await;
        match settled {
            Ok(pushed) => {
                if !pushed {
                    tracing::error!(merchant = %id, "fallback entry older than the record in Redis; Redis kept");
                }
                // Only the entry that was pushed: a newer one written meanwhile stays.
                let still = shared.fallback.get(&id).await.ok().flatten();
                if still.as_ref() != Some(&kept) {
                    continue;
                }
                if let Err(e) = shared.fallback.remove(&id).await {
                    tracing::error!(merchant = %id, error = %e, "cannot clear the fallback entry");
                }
                tracing::info!(merchant = %id, pushed, "fallback entry settled");
            }
            Err(_) => left += 1,
        }
    }
    left
}

/// Keeps the lock while `release` is pending (renewing every third of `ttl`), then deletes it
/// if this owner still holds it.
pub(super) async fn hold_lock(
    shared: Arc<Shared>,
    key: String,
    owner: String,
    ttl: Duration,
    mut release: oneshot::Receiver<()>,
) {
    let ttl_ms = ttl.as_millis() as u64;
    loop {
        tokio::select! {
            _ = &mut release => break,
            _ = tokio::time::sleep(ttl / 3) => {
                let Ok(mut c) = shared.conn().await else { continue };
                let renewed: Result<i64, _> =
                    LOCK_RENEW.key(&key).arg(&owner).arg(ttl_ms).invoke_async(&mut c).await;
                match renewed {
                    Ok(1) => {}
                    Ok(_) => {
                        tracing::warn!("refresh lock expired while held; another replica may refresh too");
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot renew the refresh lock"),
                }
            }
        }
    }
    if let Ok(mut c) = shared.conn().await {
        let released: Result<i64, _> = LOCK_RELEASE
            .key(&key)
            .arg(&owner)
            .invoke_async(&mut c)
            .await;
        if let Err(e) = released {
            tracing::warn!(error = %e, "cannot release the refresh lock; it expires by itself");
        }
    }
}
