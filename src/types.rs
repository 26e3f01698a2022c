//! Parsed newtypes shared by every module: [`MerchantId`], [`AccessToken`], [`RefreshToken`]
//! and [`Secret`].
//!
//! Parse, don't validate: a `MerchantId` that exists is valid, and the token and secret types
//! keep their text private, printing `***` in `Debug`/`Display` so that no log line, error body
//! or `{:?}` of a struct can leak one. Only [`Secret::expose`] and friends hand the text out, and
//! every caller of those is a place where the secret really must leave the process (an HTTP
//! header, the credential store file). Serializing never hands it out either: the two token
//! types have no `Serialize` (the store writes `expose()` explicitly), and `Secret` serializes
//! masked (`***`) for the printed configuration.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::sync::Arc;

/// The longest merchant id the gateway accepts, in bytes.
pub const MAX_MERCHANT_ID_LEN: usize = 128;

/// Why a merchant id was refused; the text is safe to show to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MerchantIdError {
    #[error("is empty")]
    Empty,
    #[error("is longer than {MAX_MERCHANT_ID_LEN} bytes")]
    TooLong,
    #[error("contains a character that is not printable ASCII (allowed: '!' to '~')")]
    NotPrintable,
}

/// A merchant's id as named by callers (`X-Merchant-Id`), the admin API and the CLI:
/// 1 to 128 bytes of printable ASCII without spaces.
///
/// Stored as `Arc<str>` because it is cloned into the cache, the refresh schedule and each
/// request's context: a clone is a reference-count increment, not an allocation.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MerchantId(Arc<str>);

impl MerchantId {
    /// Checks raw header bytes; the hot path calls this once per request.
    pub fn parse_bytes(raw: &[u8]) -> Result<Self, MerchantIdError> {
        if raw.is_empty() {
            return Err(MerchantIdError::Empty);
        }
        if raw.len() > MAX_MERCHANT_ID_LEN {
            return Err(MerchantIdError::TooLong);
        }
        if !raw.iter().all(|b| (0x21..=0x7e).contains(b)) {
            return Err(MerchantIdError::NotPrintable);
        }
        // Every byte is ASCII, so this cannot fail; map the impossible error rather than panic.
        std::str::from_utf8(raw)
            .map(|s| MerchantId(Arc::from(s)))
            .map_err(|_| MerchantIdError::NotPrintable)
    }

    pub fn parse(raw: &str) -> Result<Self, MerchantIdError> {
        Self::parse_bytes(raw.as_bytes())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for MerchantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for MerchantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for MerchantId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for MerchantId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        MerchantId::parse(&raw).map_err(|e| serde::de::Error::custom(format!("merchant id {e}")))
    }
}

/// Declares a string newtype whose text never appears in `Debug` or `Display`. It has no
/// `Serialize`: whoever must write the text out (the credential store) calls `expose()`.
macro_rules! secret_string {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Default)]
        pub struct $name(String);

        impl $name {
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }
            /// The secret text itself: only for the places where it must leave the process.
            pub fn expose(&self) -> &str {
                &self.0
            }
            pub fn is_empty(&self) -> bool {
                self.0.is_empty()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(***)"))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("***")
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d).map(Self)
            }
        }
    };
}

secret_string!(
    /// A Mollie OAuth access token (`access_…`), valid for about an hour.
    AccessToken
);
secret_string!(
    /// A Mollie OAuth refresh token (`refresh_…`): losing one means the merchant must
    /// authorize the app again.
    RefreshToken
);
secret_string!(
    /// Any other secret: the OAuth client secret, the admin token.
    Secret
);
secret_string!(
    /// A static Mollie credential a merchant is stored with instead of a refresh token: an
    /// API key (`live_…`/`test_…`) or an organization access token (`access_…`). Never
    /// refreshed, never revoked by the gateway.
    StaticToken
);

/// Masked: a set secret serializes as `***`, an unset one as `""`, so that printing the
/// configuration (`check-config`) shows which secrets are set and never what they are.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "***" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merchant_ids_are_checked() {
        assert!(MerchantId::parse("org_12345").is_ok());
        assert_eq!(MerchantId::parse(""), Err(MerchantIdError::Empty));
        assert_eq!(MerchantId::parse("a b"), Err(MerchantIdError::NotPrintable));
        assert_eq!(
            MerchantId::parse("tab\t"),
            Err(MerchantIdError::NotPrintable)
        );
        assert_eq!(MerchantId::parse("é"), Err(MerchantIdError::NotPrintable));
        let long = "m".repeat(MAX_MERCHANT_ID_LEN);
        assert!(MerchantId::parse(&long).is_ok());
        assert_eq!(
            MerchantId::parse(&format!("{long}x")),
            Err(MerchantIdError::TooLong)
        );
    }

    #[test]
    fn secrets_never_print() {
        let t = RefreshToken::new("refresh_supersecret");
        assert_eq!(format!("{t:?}"), "RefreshToken(***)");
        assert_eq!(format!("{t}"), "***");
        assert_eq!(t.expose(), "refresh_supersecret");
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?} {s}").contains("hunter2"));
    }

    #[test]
    fn serializing_never_yields_a_secret() {
        #[derive(Serialize)]
        struct Holder {
            set: Secret,
            unset: Secret,
        }
        let holder = Holder {
            set: Secret::new("hunter2"),
            unset: Secret::default(),
        };
        let json = serde_json::to_string(&holder).unwrap();
        assert_eq!(json, r#"{"set":"***","unset":""}"#);
        let toml = toml::to_string(&holder).unwrap();
        assert!(!toml.contains("hunter2"), "{toml}");
        // The token types cannot be serialized at all: this fails to compile (the two impls
        // below become ambiguous) as soon as either of them implements `Serialize`.
        trait AmbiguousIfSerialize<A> {
            fn check() {}
        }
        impl<T: ?Sized> AmbiguousIfSerialize<()> for T {}
        struct IsSerialize;
        impl<T: ?Sized + Serialize> AmbiguousIfSerialize<IsSerialize> for T {}
        <AccessToken as AmbiguousIfSerialize<_>>::check();
        <RefreshToken as AmbiguousIfSerialize<_>>::check();
    }
}
