//! `store migrate`: every merchant of one store copied into another (file ⇄ Redis), through
//! the [`CredentialStore`] trait on both sides, so each side seals its records as it always
//! does (a sealed file is opened with its keys and the target seals under its own).
//!
//! Owns: the per-merchant decision (copy, unchanged, conflict) and the counts.
//! Must not: write to the source, overwrite a newer record of the target, or stop reporting
//! at the first failure (every merchant that could not be copied is named).

use super::{CredentialStore, StoreError, StoredMerchant};
use crate::types::MerchantId;

/// What one migration did.
#[derive(Debug, Default)]
pub struct Migration {
    /// Written to the target: absent there, or older there.
    pub copied: Vec<MerchantId>,
    /// Already the same in the target.
    pub unchanged: usize,
    /// Kept as they are in the target: changed later there (or at the same second, differently).
    pub conflicts: Vec<MerchantId>,
    /// Could not be read or written in the target; the source still holds them.
    pub failed: Vec<(MerchantId, StoreError)>,
}

impl Migration {
    /// `copied N, unchanged N, conflicts N, failed N`.
    pub fn counts(&self) -> String {
        format!(
            "copied {}, unchanged {}, conflicts {}, failed {}",
            self.copied.len(),
            self.unchanged,
            self.conflicts.len(),
            self.failed.len()
        )
    }
}

/// What to do with `source`'s record, given the target's.
fn decide(source: &StoredMerchant, target: Option<&StoredMerchant>) -> Decision {
    match target {
        None => Decision::Copy,
        Some(t) if t == source => Decision::Unchanged,
        Some(t) if t.updated_at < source.updated_at => Decision::Copy,
        Some(_) => Decision::Conflict,
    }
}

enum Decision {
    Copy,
    Unchanged,
    Conflict,
}

/// Copies every merchant of `from` into `to`; fails only when `from` cannot be read.
pub async fn migrate(
    from: &dyn CredentialStore,
    to: &dyn CredentialStore,
) -> Result<Migration, StoreError> {
    let mut done = Migration::default();
    let all = from.load_all().await?;
    // Left out of the load because they do not parse: named, never silently dropped.
    for id in from.unreadable() {
        let reason = "the source record does not parse; not copied".to_string();
        let path = format!("merchant {id}");
        done.failed.push((id, StoreError::Corrupt { path, reason }));
    }
    for (id, merchant) in all {
        let target = match to.get(&id).await {
            Ok(t) => t,
            Err(e) => {
                done.failed.push((id, e));
                continue;
            }
        };
        match decide(&merchant, target.as_ref()) {
            Decision::Unchanged => done.unchanged += 1,
            Decision::Conflict => done.conflicts.push(id),
            Decision::Copy => match to.put(&id, &merchant).await {
                Ok(()) => done.copied.push(id),
                Err(e) => done.failed.push((id, e)),
            },
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::file::FileStore;
    use crate::types::RefreshToken;

    fn merchant(token: &str, updated_at: u64) -> StoredMerchant {
        StoredMerchant {
            updated_at,
            ..StoredMerchant::new(RefreshToken::new(token))
        }
    }

    fn id(s: &str) -> MerchantId {
        MerchantId::parse(s).unwrap()
    }

    #[tokio::test]
    async fn copies_once_and_keeps_a_newer_target_record() {
        let dir = tempfile::tempdir().unwrap();
        let from = FileStore::open(dir.path().join("from.json")).unwrap();
        let to = FileStore::open(dir.path().join("to.json")).unwrap();
        from.put(&id("m1"), &merchant("r1", 100)).await.unwrap();
        let revoked = StoredMerchant {
            revoked: true,
            ..merchant("r2", 100)
        };
        from.put(&id("m2"), &revoked).await.unwrap();
        from.put(&id("m3"), &merchant("r3", 100)).await.unwrap();
        from.put(&id("m4"), &merchant("r4-new", 200)).await.unwrap();
        // In the target already: m3 newer (kept), m4 older (replaced).
        to.put(&id("m3"), &merchant("r3-newer", 150)).await.unwrap();
        to.put(&id("m4"), &merchant("r4-old", 150)).await.unwrap();

        let first = migrate(&from, &to).await.unwrap();
        assert_eq!(first.copied, vec![id("m1"), id("m2"), id("m4")]);
        assert_eq!(first.conflicts, vec![id("m3")]);
        assert_eq!(first.unchanged, 0);
        assert_eq!(to.get(&id("m2")).await.unwrap(), Some(revoked));
        assert_eq!(
            to.get(&id("m3")).await.unwrap(),
            Some(merchant("r3-newer", 150))
        );
        assert_eq!(
            to.get(&id("m4")).await.unwrap(),
            Some(merchant("r4-new", 200))
        );
        // Again: nothing to do but the same conflict.
        let again = migrate(&from, &to).await.unwrap();
        assert!(again.copied.is_empty());
        assert_eq!(again.unchanged, 3);
        assert_eq!(again.conflicts, vec![id("m3")]);
        assert_eq!(
            again.counts(),
            "copied 0, unchanged 3, conflicts 1, failed 0"
        );
        // The source is untouched.
        assert_eq!(
            from.get(&id("m3")).await.unwrap(),
            Some(merchant("r3", 100))
        );
    }
}
