//! The record of one merchant as Redis holds it, and its bytes: the one place secrets are
//! serialized for Redis. Sealing at rest (`store/crypto.rs`) plugs into [`encode_record`] and
//! [`decode_record`], with the merchant id as associated data.
//! Must not: put a secret into `Debug` output or an error.

use crate::store::{SharedToken, StoreError, StoredMerchant};
use crate::types::{AccessToken, MerchantId, RefreshToken};
use serde::{Deserialize, Serialize};

/// One merchant's record in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub merchant: StoredMerchant,
    /// The access token last fetched by any replica.
    pub access: Option<SharedToken>,
}

#[derive(Serialize)]
struct WireOut<'a> {
    refresh_token: &'a str,
    revoked: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    removing: bool,
    updated_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    access: Option<WireTokenOut<'a>>,
}

#[derive(Serialize)]
struct WireTokenOut<'a> {
    token: &'a str,
    expires_at_ms: u64,
    lifetime_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireIn {
    refresh_token: RefreshToken,
    revoked: bool,
    #[serde(default)]
    removing: bool,
    updated_at: u64,
    #[serde(default)]
    access: Option<WireTokenIn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireTokenIn {
    token: AccessToken,
    expires_at_ms: u64,
    lifetime_ms: u64,
}

/// The record's bytes: the one place secrets are serialized for Redis (sealing at rest plugs
/// in here, with `id` as associated data).
pub fn encode_record(_id: &MerchantId, r: &Record) -> Vec<u8> {
    let m = &r.merchant;
    let wire = WireOut {
        refresh_token: m.refresh_token.expose(),
        revoked: m.revoked,
        removing: m.removing,
        updated_at: m.updated_at,
        access: r.access.as_ref().map(|a| WireTokenOut {
            token: a.access_token.expose(),
            expires_at_ms: a.expires_at_ms,
            lifetime_ms: a.lifetime_ms,
        }),
    };
    // Serializing strings and integers cannot fail.
    serde_json::to_vec(&wire).unwrap_or_default()
}

/// The inverse of [`encode_record`]; a record that does not parse is an error, never
/// overwritten.
pub fn decode_record(id: &MerchantId, bytes: &[u8]) -> Result<Record, StoreError> {
    let w: WireIn = serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        path: format!("redis record of merchant {id}"),
        reason: e.to_string(),
    })?;
    Ok(Record {
        merchant: StoredMerchant {
            refresh_token: w.refresh_token,
            revoked: w.revoked,
            removing: w.removing,
            updated_at: w.updated_at,
        },
        access: w.access.map(|a| SharedToken {
            access_token: a.token,
            expires_at_ms: a.expires_at_ms,
            lifetime_ms: a.lifetime_ms,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redis::RedisStore;

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
        let bytes = encode_record(&id, &r);
        assert_eq!(decode_record(&id, &bytes).unwrap(), r);
        let shown = format!("{r:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(matches!(
            decode_record(&id, b"{\"x\":1}"),
            Err(StoreError::Corrupt { .. })
        ));
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
