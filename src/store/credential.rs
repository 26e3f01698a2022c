//! What a merchant is stored with: a refresh token (OAuth, the default), or a static
//! credential (an API key or an organization access token) that is never refreshed.
//!
//! Owns: the [`CredentialKind`] shown to operators, the shape check of a static credential
//! ([`StaticCredential::parse`]), and the sealing of a record's credential field
//! ([`SecretFields`]): each kind has its own field name (`refresh_token`, `api_key`,
//! `org_token`) and its own [`Field`], so a value moved to another field does not decrypt. A
//! record without `api_key` and `org_token` is an OAuth record (every record written before
//! static credentials existed).
//! Must not: quote a credential in an error.

use super::crypto::{CryptoError, Field, Sealing, StoredSecret};
use super::StoredMerchant;
use crate::types::{MerchantId, RefreshToken, StaticToken};
use serde::{Deserialize, Serialize};

/// How a merchant authenticates at Mollie (`credential_kind` in listings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// A refresh token: access tokens fetched and refreshed by the gateway.
    #[default]
    Oauth,
    /// A `live_…`/`test_…` API key: fixes mode and profile.
    ApiKey,
    /// An organization access token (`access_…`).
    OrgToken,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Oauth => "oauth",
            CredentialKind::ApiKey => "api_key",
            CredentialKind::OrgToken => "org_token",
        }
    }
}

/// A static credential and its kind (never [`CredentialKind::Oauth`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticCredential {
    kind: CredentialKind,
    token: StaticToken,
}

impl StaticCredential {
    /// Checks the credential's shape: an API key is `live_`/`test_` and 30 or more word
    /// characters, an organization token `access_` and word characters. The error names the
    /// expected shape, never the value.
    pub fn parse(kind: CredentialKind, value: &str) -> Result<StaticCredential, String> {
        let word = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        let ok = match kind {
            CredentialKind::ApiKey => ["live_", "test_"].iter().any(|p| {
                value
                    .strip_prefix(p)
                    .is_some_and(|rest| rest.len() >= 30 && word(rest))
            }),
            CredentialKind::OrgToken => value
                .strip_prefix("access_")
                .is_some_and(|rest| !rest.is_empty() && word(rest)),
            CredentialKind::Oauth => return Err("an OAuth merchant has a refresh token".into()),
        };
        if !ok {
            return Err(match kind {
                CredentialKind::ApiKey => {
                    "an API key is `live_` or `test_` followed by 30 or more letters, digits or `_`"
                }
                _ => "an organization access token is `access_` followed by letters, digits or `_`",
            }
            .into());
        }
        Ok(StaticCredential {
            kind,
            token: StaticToken::new(value),
        })
    }

    pub fn kind(&self) -> CredentialKind {
        self.kind
    }

    pub fn token(&self) -> &StaticToken {
        &self.token
    }

    /// A `live_` API key: live data only (a `test_` caller key may not use it).
    pub fn is_live_api_key(&self) -> bool {
        self.kind == CredentialKind::ApiKey && self.token.expose().starts_with("live_")
    }
}

/// A record's credential field as stored (one of the three is set), sealed or not. Each
/// backend's record carries these three optional fields under these names.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SecretFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<StoredSecret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<StoredSecret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_token: Option<StoredSecret>,
}

impl SecretFields {
    /// The merchant's credential, sealed under its own field name.
    pub fn seal(
        sealing: &Sealing,
        id: &MerchantId,
        m: &StoredMerchant,
    ) -> Result<SecretFields, CryptoError> {
        let mut out = SecretFields::default();
        match &m.static_credential {
            None => {
                let sealed = sealing.seal(id, Field::RefreshToken, m.refresh_token.expose())?;
                out.refresh_token = Some(sealed);
            }
            Some(c) => {
                let (field, slot) = match c.kind {
                    CredentialKind::OrgToken => (Field::OrgToken, &mut out.org_token),
                    _ => (Field::ApiKey, &mut out.api_key),
                };
                *slot = Some(sealing.seal(id, field, c.token.expose())?);
            }
        }
        Ok(out)
    }

    /// The refresh token (empty for a static credential) and the static credential, if any.
    pub fn open(
        &self,
        sealing: &Sealing,
        id: &MerchantId,
    ) -> Result<(RefreshToken, Option<StaticCredential>), CryptoError> {
        let open_static = |kind, field, stored| {
            let token = StaticToken::new(sealing.open(id, field, stored)?);
            Ok((
                RefreshToken::default(),
                Some(StaticCredential { kind, token }),
            ))
        };
        match (&self.refresh_token, &self.api_key, &self.org_token) {
            (Some(rt), None, None) => {
                let token = sealing.open(id, Field::RefreshToken, rt)?;
                Ok((RefreshToken::new(token), None))
            }
            (None, Some(key), None) => open_static(CredentialKind::ApiKey, Field::ApiKey, key),
            (None, None, Some(tok)) => open_static(CredentialKind::OrgToken, Field::OrgToken, tok),
            _ => Err(CryptoError::Malformed {
                merchant: id.to_string(),
                field: "credential",
                reason: "a record holds exactly one of refresh_token, api_key and org_token",
            }),
        }
    }

    /// Whether the credential is stored in plaintext.
    pub fn is_plain(&self) -> bool {
        [&self.refresh_token, &self.api_key, &self.org_token]
            .iter()
            .any(|f| matches!(f, Some(StoredSecret::Plain(_))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_checked_without_quoting_the_value() {
        let key = format!("live_{}", "a".repeat(30));
        assert!(StaticCredential::parse(CredentialKind::ApiKey, &key).is_ok());
        let test = format!("test_{}", "B9_".repeat(10));
        let c = StaticCredential::parse(CredentialKind::ApiKey, &test).unwrap();
        assert!(!c.is_live_api_key());
        for bad in [
            "live_short",
            "access_abc",
            "live_aaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x",
        ] {
            let e = StaticCredential::parse(CredentialKind::ApiKey, bad).unwrap_err();
            assert!(!e.contains(bad) && e.contains("API key"), "{e}");
        }
        assert!(StaticCredential::parse(CredentialKind::OrgToken, "access_Ab12_x").is_ok());
        for bad in ["access_", "access_a b", &key] {
            let e = StaticCredential::parse(CredentialKind::OrgToken, bad).unwrap_err();
            assert!(e.contains("organization access token"), "{e}");
        }
        assert!(format!("{c:?}").contains("***") && !format!("{c:?}").contains("B9_"));
    }

    #[test]
    fn a_static_credential_is_sealed_under_its_own_field() {
        use crate::store::crypto::Keyring;
        let ring = Keyring::parse("k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n").unwrap();
        let sealing = Sealing::new(Some(std::sync::Arc::new(ring)));
        let id = MerchantId::parse("m1").unwrap();
        let key = format!("test_{}", "x".repeat(32));
        let c = StaticCredential::parse(CredentialKind::ApiKey, &key).unwrap();
        let stored = StoredMerchant::with_static(c.clone());
        let fields = SecretFields::seal(&sealing, &id, &stored).unwrap();
        assert!(fields.refresh_token.is_none() && fields.org_token.is_none());
        assert!(!fields.is_plain());
        let (rt, opened) = fields.open(&sealing, &id).unwrap();
        assert!(rt.is_empty());
        assert_eq!(opened, Some(c));
        // The same sealed value under another field name does not open.
        let moved = SecretFields {
            org_token: fields.api_key.clone(),
            ..SecretFields::default()
        };
        assert!(matches!(
            moved.open(&sealing, &id),
            Err(CryptoError::Open { .. })
        ));
        // Two credentials, or none: refused.
        let both = SecretFields {
            refresh_token: Some(StoredSecret::Plain("refresh_x".into())),
            api_key: fields.api_key,
            org_token: None,
        };
        assert!(matches!(
            both.open(&sealing, &id),
            Err(CryptoError::Malformed { .. })
        ));
        assert!(SecretFields::default().open(&sealing, &id).is_err());
    }
}
