//! Unit tests of the file store: round trip, mode, merging writers, corrupt files, and
//! sealing (plaintext sealed on write, a wrong key refused untouched, rekey).

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

fn sealing(lines: &str) -> Sealing {
    let ring = crate::store::crypto::Keyring::parse(lines).unwrap();
    Sealing::new(Some(Arc::new(ring)))
}

const K1: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const K2: &str = "k2:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

#[tokio::test]
async fn plaintext_is_sealed_on_write_and_a_wrong_key_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("creds.json");
    let plain = FileStore::open(&path).unwrap();
    plain
        .put(
            &id("m1"),
            &StoredMerchant::new(RefreshToken::new("tok-one")),
        )
        .await
        .unwrap();
    assert!(std::fs::read_to_string(&path).unwrap().contains("tok-one"));
    // A keyring reads the plaintext record and seals it on the next write.
    let sealed = FileStore::open_sealed(&path, sealing(K1)).unwrap();
    let m1 = sealed.get(&id("m1")).await.unwrap().unwrap();
    assert_eq!(m1.refresh_token.expose(), "tok-one");
    sealed
        .put(
            &id("m2"),
            &StoredMerchant::new(RefreshToken::new("tok-two")),
        )
        .await
        .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        !text.contains("tok-one") && !text.contains("tok-two"),
        "{text}"
    );
    assert!(text.contains("\"key_id\": \"k1\""), "{text}");
    // Without the key, or with another one, the store refuses and leaves the file alone.
    let err = FileStore::open(&path).err().unwrap().to_string();
    assert!(err.contains("store.encryption_key_file"), "{err}");
    let err = FileStore::open_sealed(&path, sealing(K2)).err().unwrap();
    assert!(matches!(err, StoreError::Crypto { .. }), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    // Rekey: every record under the newest key, still readable.
    let both = FileStore::open_sealed(&path, sealing(&format!("{K1}\n{K2}"))).unwrap();
    assert_eq!(both.rekey().await.unwrap(), 2);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        !text.contains("\"k1\"") && text.contains("\"k2\""),
        "{text}"
    );
    let k2_only = FileStore::open_sealed(&path, sealing(K2)).unwrap();
    let m2 = k2_only.get(&id("m2")).await.unwrap().unwrap();
    assert_eq!(m2.refresh_token.expose(), "tok-two");
    assert!(matches!(
        plain.rekey().await,
        Err(StoreError::Unsupported(_))
    ));
}

/// `get`, `list` and `removing` answer from the in-memory copy (no record copied), and see
/// what another process wrote since.
#[tokio::test]
async fn list_and_removing_read_the_current_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("creds.json");
    let store = FileStore::open(&path).unwrap();
    for m in ["m3", "m1", "m2"] {
        let stored = StoredMerchant::new(RefreshToken::new(format!("r-{m}")));
        store.put(&id(m), &stored).await.unwrap();
    }
    assert!(store.removing().await.unwrap().is_empty());
    // Another handle (another process, in effect) marks m2 for removal.
    let other = FileStore::open(&path).unwrap();
    let mut m2 = other.get(&id("m2")).await.unwrap().unwrap();
    m2.removing = true;
    m2.updated_at = 7;
    other.put(&id("m2"), &m2).await.unwrap();
    // `get` answers from the in-memory copy only while the file is unchanged.
    assert!(store.get(&id("m2")).await.unwrap().unwrap().removing);
    assert_eq!(store.removing().await.unwrap(), vec![id("m2")]);
    let listed = store.list().await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["m1", "m2", "m3"]);
    assert!(listed[1].removing && !listed[0].removing && !listed[2].removing);
    assert_eq!(listed[1].updated_at, 7);
    assert_eq!(
        listed[1].credential_kind,
        crate::store::CredentialKind::Oauth
    );
}
