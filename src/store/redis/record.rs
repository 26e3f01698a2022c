//! The record of one merchant as Redis holds it, and its bytes: the one place secrets are
//! serialized for Redis. Sealed at rest (`store/crypto.rs`) like the file store's records:
//! the credential (`refresh_token`, `api_key` or `org_token`, [`SecretFields`]) and the
//! shared access token, each with the merchant id, key id and field name as associated
//! data. A plaintext record (written without a key file, or before Redis records were
//! sealed) is still read, and sealed by its next write (or by `store rekey`).
//! Must not: put a secret into `Debug` output or an error.

use crate::store::credential::SecretFields;
use crate::store::crypto::{CryptoError, Field, Sealing, StoredSecret};
use crate::store::{SharedToken, StoreError, StoredMerchant};
use crate::types::{AccessToken, MerchantId};
use serde::{Deserialize, Serialize};

/// One merchant's record in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub merchant: StoredMerchant,
    /// The access token last fetched by any replica.
    pub access: Option<SharedToken>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<StoredSecret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    api_key: Option<StoredSecret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    org_token: Option<StoredSecret>,
    revoked: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    removing: bool,
    updated_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    access: Option<WireToken>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireToken {
    token: StoredSecret,
    expires_at_ms: u64,
    lifetime_ms: u64,
}

fn crypto_err(id: &MerchantId, source: CryptoError) -> StoreError {
    StoreError::Crypto {
        path: format!("redis record of merchant {id}"),
        source,
    }
}

/// The record's bytes, its secrets sealed with `sealing` (plaintext without a key file).
pub fn encode_record(
    sealing: &Sealing,
    id: &MerchantId,
    r: &Record,
) -> Result<Vec<u8>, StoreError> {
    let m = &r.merchant;
    let f = SecretFields::seal(sealing, id, m).map_err(|e| crypto_err(id, e))?;
    let access = match &r.access {
        Some(a) => Some(WireToken {
            token: sealing
                .seal(id, Field::AccessToken, a.access_token.expose())
                .map_err(|e| crypto_err(id, e))?,
            expires_at_ms: a.expires_at_ms,
            lifetime_ms: a.lifetime_ms,
        }),
        None => None,
    };
    let wire = Wire {
        refresh_token: f.refresh_token,
        api_key: f.api_key,
        org_token: f.org_token,
        revoked: m.revoked,
        removing: m.removing,
        updated_at: m.updated_at,
        access,
    };
    serde_json::to_vec(&wire).map_err(|e| StoreError::Corrupt {
        path: format!("redis record of merchant {id}"),
        reason: e.to_string(),
    })
}

/// The inverse of [`encode_record`]; a record that does not parse or does not open is an
/// error, never overwritten.
pub fn decode_record(
    sealing: &Sealing,
    id: &MerchantId,
    bytes: &[u8],
) -> Result<Record, StoreError> {
    let w: Wire = serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        path: format!("redis record of merchant {id}"),
        reason: e.to_string(),
    })?;
    let fields = SecretFields {
        refresh_token: w.refresh_token,
        api_key: w.api_key,
        org_token: w.org_token,
    };
    let (refresh_token, static_credential) =
        fields.open(sealing, id).map_err(|e| crypto_err(id, e))?;
    let access = match w.access {
        Some(a) => Some(SharedToken {
            access_token: AccessToken::new(
                sealing
                    .open(id, Field::AccessToken, &a.token)
                    .map_err(|e| crypto_err(id, e))?,
            ),
            expires_at_ms: a.expires_at_ms,
            lifetime_ms: a.lifetime_ms,
        }),
        None => None,
    };
    Ok(Record {
        merchant: StoredMerchant {
            refresh_token,
            static_credential,
            revoked: w.revoked,
            removing: w.removing,
            updated_at: w.updated_at,
        },
        access,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redis::RedisStore;
    use crate::types::RefreshToken;

    #[test]
    fn record_round_trips_and_hides_secrets_in_debug() {
        let id = MerchantId::parse("m1").unwrap();
        let r = Record {
            merchant: StoredMerchant::new(RefreshToken::new("refresh_secret")),
            access: Some(SharedToken {
                access_token: AccessToken::new("access_secret"),
                expires_at_ms: 5,
                lifetime_ms: 3_600_000,
            }),
        };
        let plain = Sealing::default();
        let bytes = encode_record(&plain, &id, &r).unwrap();
        assert_eq!(decode_record(&plain, &id, &bytes).unwrap(), r);
        let shown = format!("{r:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(matches!(
            decode_record(&plain, &id, b"{\"x\":1}"),
            Err(StoreError::Corrupt { .. })
        ));
        // Today's plaintext format is still read.
        let old = br#"{"refresh_token":"refresh_secret","revoked":false,"updated_at":3}"#;
        let read = decode_record(&plain, &id, old).unwrap();
        assert_eq!(read.merchant.refresh_token.expose(), "refresh_secret");
        assert_eq!(
            read.merchant.credential_kind(),
            crate::store::CredentialKind::Oauth
        );
    }

    #[test]
    fn sealed_records_hide_every_secret_and_bind_the_merchant() {
        use crate::store::crypto::Keyring;
        use crate::store::{CredentialKind, StaticCredential};
        let ring = Keyring::parse("k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n").unwrap();
        let sealing = Sealing::new(Some(std::sync::Arc::new(ring)));
        let id = MerchantId::parse("m1").unwrap();
        let r = Record {
            merchant: StoredMerchant::new(RefreshToken::new("refresh_secret")),
            access: Some(SharedToken {
                access_token: AccessToken::new("access_secret"),
                expires_at_ms: 5,
                lifetime_ms: 3_600_000,
            }),
        };
        let bytes = encode_record(&sealing, &id, &r).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("secret"));
        assert_eq!(decode_record(&sealing, &id, &bytes).unwrap(), r);
        let other = MerchantId::parse("m2").unwrap();
        let err = decode_record(&sealing, &other, &bytes).unwrap_err();
        assert!(matches!(err, StoreError::Crypto { .. }), "{err}");
        assert!(err.to_string().contains("merchant m2"), "{err}");
        let key = format!("live_{}", "k".repeat(30));
        let c = StaticCredential::parse(CredentialKind::ApiKey, &key).unwrap();
        let r = Record {
            merchant: StoredMerchant::with_static(c),
            access: None,
        };
        let bytes = encode_record(&sealing, &id, &r).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains(&key));
        assert_eq!(decode_record(&sealing, &id, &bytes).unwrap(), r);
    }

    #[test]
    fn a_url_that_does_not_parse_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = RedisStore::open("nope://", "p:", &dir.path().join("f.json"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("store.redis_url"), "{err}");
    }
}
