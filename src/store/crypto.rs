//! Credentials at rest: AES-256-GCM over each secret field of a stored record.
//!
//! Owns: the [`Keyring`] read from `store.encryption_key_file` (one `key_id:base64(32 bytes)`
//! a line; the last line encrypts, every line decrypts), and the sealing of one field
//! ([`Sealing::seal`] / [`Sealing::open`]) into a [`StoredSecret`], which a backend writes in
//! place of the plaintext. Each encryption draws a fresh random 96-bit nonce (ring's
//! `SystemRandom`, never a counter) stored beside the ciphertext; the associated data binds
//! the merchant id, the `key_id` and the field name, so a record copied to another merchant,
//! or a value moved to another field, does not decrypt.
//! Must not: let key material or plaintext reach `Debug`, `Display`, an error or a log line
//! (errors name the merchant, the field, the key id and the line number, nothing else).

use crate::types::MerchantId;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// The configuration key named by every error about keys.
pub const KEY_SETTING: &str = "store.encryption_key_file";

/// A secret field of a stored record. Its name is part of the associated data; adding a
/// secret field means adding a variant (never renaming one: old records would not open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    RefreshToken,
    /// A static API key (`store::credential`).
    ApiKey,
    /// A static organization access token.
    OrgToken,
    /// The access token a replica shared with the others (Redis).
    AccessToken,
}

impl Field {
    pub fn as_str(self) -> &'static str {
        match self {
            Field::RefreshToken => "refresh_token",
            Field::ApiKey => "api_key",
            Field::OrgToken => "org_token",
            Field::AccessToken => "access_token",
        }
    }
}

/// One key of the keyring. `key` is never printed.
struct Key {
    id: String,
    key: LessSafeKey,
}

/// The keys of `store.encryption_key_file`: the last one encrypts, every one decrypts.
pub struct Keyring {
    /// In file order; never empty.
    keys: Vec<Key>,
    /// The nonce source: a fresh random nonce per encryption.
    rng: SystemRandom,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("Keyring")
            .field("key_ids", &ids)
            .field("keys", &"***")
            .finish()
    }
}

/// A key file that cannot be used; names the line, never its content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{KEY_SETTING} {path}{}: {reason}", line.map(|n| format!(" line {n}")).unwrap_or_default())]
pub struct KeyFileError {
    pub path: String,
    /// 1-based line number, when one line is at fault.
    pub line: Option<usize>,
    pub reason: String,
}

impl Keyring {
    /// Reads and parses a key file (see the module doc for the format; blank lines and lines
    /// starting with `#` are skipped).
    pub fn load(path: &Path) -> Result<Keyring, KeyFileError> {
        let err = |line, reason: String| KeyFileError {
            path: path.display().to_string(),
            line,
            reason,
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| err(None, format!("cannot be read: {e}")))?;
        Keyring::parse(&text).map_err(|(line, reason)| err(line, reason))
    }

    /// Parses key file text; errors are (line number, reason).
    pub fn parse(text: &str) -> Result<Keyring, (Option<usize>, String)> {
        let mut keys: Vec<Key> = Vec::new();
        for (n, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = parse_line(line).map_err(|reason| (Some(n), reason))?;
            if keys.iter().any(|k| k.id == key.id) {
                return Err((Some(n), format!("key id {:?} appears twice", key.id)));
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Err((
                None,
                "holds no key (one `key_id:base64 of 32 bytes` a line)".into(),
            ));
        }
        Ok(Keyring {
            keys,
            rng: SystemRandom::new(),
        })
    }

    /// The id of the key that encrypts (the last line).
    pub fn current_id(&self) -> &str {
        &self.current().id
    }

    fn current(&self) -> &Key {
        self.keys.last().expect("a keyring is never empty")
    }

    fn find(&self, id: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.id == id)
    }
}

/// One line: `key_id:base64`. The reason never quotes the key material.
fn parse_line(line: &str) -> Result<Key, String> {
    let (id, b64) = line
        .split_once(':')
        .ok_or("is not `key_id:base64 of 32 bytes`")?;
    let id = id.trim();
    let id_ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !id_ok {
        return Err("the key id must be 1 to 64 letters, digits, `_`, `.` or `-`".into());
    }
    let bytes = B64
        .decode(b64.trim())
        .map_err(|_| "the key is not valid base64")?;
    let unbound = UnboundKey::new(&AES_256_GCM, &bytes)
        .map_err(|_| format!("the key is {} bytes, not 32", bytes.len()))?;
    Ok(Key {
        id: id.to_string(),
        key: LessSafeKey::new(unbound),
    })
}

/// A secret field as stored: plaintext (today's format, and the format without a key file),
/// or sealed. `Debug` never shows either.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StoredSecret {
    Plain(String),
    Sealed(Sealed),
}

impl fmt::Debug for StoredSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoredSecret::Plain(_) => f.write_str("Plain(***)"),
            StoredSecret::Sealed(s) => write!(f, "Sealed(key_id={}, ***)", s.key_id),
        }
    }
}

/// AES-256-GCM output: the key that sealed it, the random nonce, ciphertext + tag (base64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sealed {
    pub key_id: String,
    pub nonce: String,
    pub ciphertext: String,
}

/// Why a stored secret cannot be opened or sealed; names the merchant, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("the {field} of merchant {merchant} is encrypted (key id {key_id}) but {KEY_SETTING} is not set: set it to the key file holding {key_id}")]
    NoKeyring {
        merchant: String,
        field: &'static str,
        key_id: String,
    },
    #[error("the {field} of merchant {merchant} is encrypted with key id {key_id}, which {KEY_SETTING} does not hold")]
    UnknownKey {
        merchant: String,
        field: &'static str,
        key_id: String,
    },
    #[error("the {field} of merchant {merchant} does not decrypt with key id {key_id}: a wrong key, or a record altered or copied from another merchant id")]
    Open {
        merchant: String,
        field: &'static str,
        key_id: String,
    },
    #[error("the {field} of merchant {merchant} is not a valid sealed value ({reason})")]
    Malformed {
        merchant: String,
        field: &'static str,
        reason: &'static str,
    },
    #[error("the system's random number generator failed")]
    Random,
}

/// How a backend stores secret fields: sealed with a keyring, or plaintext without one.
#[derive(Debug, Clone, Default)]
pub struct Sealing(Option<Arc<Keyring>>);

impl Sealing {
    pub fn new(keyring: Option<Arc<Keyring>>) -> Self {
        Sealing(keyring)
    }

    pub fn keyring(&self) -> Option<&Keyring> {
        self.0.as_deref()
    }

    /// Seals `value` under the newest key with a fresh nonce; plaintext without a keyring.
    pub fn seal(
        &self,
        merchant: &MerchantId,
        field: Field,
        value: &str,
    ) -> Result<StoredSecret, CryptoError> {
        let Some(ring) = self.keyring() else {
            return Ok(StoredSecret::Plain(value.to_string()));
        };
        let key = ring.current();
        let mut nonce = [0u8; NONCE_LEN];
        ring.rng.fill(&mut nonce).map_err(|_| CryptoError::Random)?;
        let mut data = value.as_bytes().to_vec();
        let ad = associated_data(merchant, &key.id, field);
        key.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&ad),
                &mut data,
            )
            .map_err(|_| CryptoError::Random)?;
        Ok(StoredSecret::Sealed(Sealed {
            key_id: key.id.clone(),
            nonce: B64.encode(nonce),
            ciphertext: B64.encode(data),
        }))
    }

    /// The plaintext of a stored field (a plaintext field is returned as is).
    pub fn open(
        &self,
        merchant: &MerchantId,
        field: Field,
        stored: &StoredSecret,
    ) -> Result<String, CryptoError> {
        let sealed = match stored {
            StoredSecret::Plain(v) => return Ok(v.clone()),
            StoredSecret::Sealed(s) => s,
        };
        let who = || (merchant.to_string(), field.as_str(), sealed.key_id.clone());
        let Some(ring) = self.keyring() else {
            let (merchant, field, key_id) = who();
            return Err(CryptoError::NoKeyring {
                merchant,
                field,
                key_id,
            });
        };
        let Some(key) = ring.find(&sealed.key_id) else {
            let (merchant, field, key_id) = who();
            return Err(CryptoError::UnknownKey {
                merchant,
                field,
                key_id,
            });
        };
        let malformed = |reason| CryptoError::Malformed {
            merchant: merchant.to_string(),
            field: field.as_str(),
            reason,
        };
        let nonce = B64
            .decode(&sealed.nonce)
            .ok()
            .and_then(|n| Nonce::try_assume_unique_for_key(&n).ok())
            .ok_or_else(|| malformed("the nonce is not 12 base64 bytes"))?;
        let mut data = B64
            .decode(&sealed.ciphertext)
            .map_err(|_| malformed("the ciphertext is not base64"))?;
        let ad = associated_data(merchant, &key.id, field);
        let plain = key
            .key
            .open_in_place(nonce, Aad::from(&ad), &mut data)
            .map_err(|_| {
                let (merchant, field, key_id) = who();
                CryptoError::Open {
                    merchant,
                    field,
                    key_id,
                }
            })?;
        String::from_utf8(plain.to_vec()).map_err(|_| malformed("the plaintext is not UTF-8"))
    }
}

/// Merchant id, key id and field name, NUL-separated (none of them can hold a NUL), behind a
/// format label so that the binding can change without ambiguity.
fn associated_data(merchant: &MerchantId, key_id: &str, field: Field) -> Vec<u8> {
    format!(
        "mollie-gateway/sealed/v1\0{}\0{key_id}\0{}",
        merchant.as_str(),
        field.as_str()
    )
    .into_bytes()
}

#[cfg(test)]
#[path = "crypto_tests.rs"]
mod tests;
