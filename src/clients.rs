//! Callers: which services may act for which merchants (`[clients.<name>]`, DESIGN.md §8).
//!
//! Owns: the configured clients (each with the SHA-256 hashes of its gateway keys, its
//! merchant allowlist and an optional default merchant), authenticating a presented key in
//! constant time, and minting new keys (`mollie-gateway clients new`).
//! Must not: keep, log or print a key other than the one it mints, or know HTTP (the proxy
//! takes the key from the request and answers refusals).
//!
//! A gateway key has the shape of a Mollie API key (`live_`/`test_` + 40 letters and digits),
//! so that every SDK's own key check accepts it in its key setting.

use crate::config::ClientSettings;
use crate::metrics::{Metrics, RequestCounters};
use crate::types::MerchantId;
use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Letters and digits after the `live_`/`test_` prefix of a minted key.
pub const KEY_CHARS: usize = 40;

/// The configured clients; empty = the gateway is open (any caller, any merchant).
#[derive(Default)]
pub struct Clients {
    clients: Vec<Arc<Client>>,
}

/// One calling service.
pub struct Client {
    /// `[clients.<name>]`: in the access log and the `client` metric label.
    pub name: Arc<str>,
    /// SHA-256 of each accepted key.
    hashes: Vec<[u8; 32]>,
    merchants: Allowed,
    /// Used when a request names no merchant.
    pub default_merchant: Option<MerchantId>,
    /// Its `requests_total{client}` series, resolved once.
    pub requests: RequestCounters,
}

enum Allowed {
    All,
    Only(HashSet<MerchantId>),
}

impl Clients {
    /// The clients of validated settings (`config::validate` reported every problem before).
    pub fn from_settings(
        settings: &BTreeMap<String, ClientSettings>,
        metrics: &Metrics,
    ) -> Result<Clients, String> {
        let clients = settings
            .iter()
            .map(|(name, c)| Client::from_settings(name, c, metrics).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(Clients { clients })
    }

    /// No client configured: every caller may act for every merchant.
    pub fn is_open(&self) -> bool {
        self.clients.is_empty()
    }

    /// The client one of whose keys is `key`. Every configured hash is compared, in constant
    /// time, whatever matches, so the time taken tells nothing about the keys.
    pub fn authenticate(&self, key: &[u8]) -> Option<Arc<Client>> {
        let presented = digest(&SHA256, key);
        let mut found = None;
        for client in &self.clients {
            for hash in &client.hashes {
                if bool::from(hash.ct_eq(presented.as_ref())) {
                    found = Some(client.clone());
                }
            }
        }
        found
    }
}

impl Client {
    fn from_settings(name: &str, c: &ClientSettings, metrics: &Metrics) -> Result<Client, String> {
        let hashes = c
            .key_sha256
            .iter()
            .map(|h| parse_sha256(h).ok_or_else(|| format!("[clients.{name}]: bad key_sha256")))
            .collect::<Result<_, _>>()?;
        let merchants = if c.merchants.iter().any(|m| m == "*") {
            Allowed::All
        } else {
            let ids = c.merchants.iter().map(|m| MerchantId::parse(m));
            Allowed::Only(
                ids.collect::<Result<_, _>>()
                    .map_err(|e| format!("[clients.{name}]: merchant id {e}"))?,
            )
        };
        let default_merchant = match c.default_merchant.as_str() {
            "" => None,
            id => Some(
                MerchantId::parse(id)
                    .map_err(|e| format!("[clients.{name}]: default_merchant {e}"))?,
            ),
        };
        Ok(Client {
            name: Arc::from(name),
            hashes,
            merchants,
            default_merchant,
            requests: metrics.requests_for(name),
        })
    }

    /// Whether this client may act for `merchant`.
    pub fn may_act_for(&self, merchant: &MerchantId) -> bool {
        match &self.merchants {
            Allowed::All => true,
            Allowed::Only(ids) => ids.contains(merchant),
        }
    }
}

/// 64 hex digits → 32 bytes.
pub fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// Lower-case hex SHA-256 of a key, as `key_sha256` holds it.
pub fn sha256_hex(key: &str) -> String {
    digest(&SHA256, key.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new random key: `test_…` or `live_…` and [`KEY_CHARS`] letters and digits from the
/// system's CSPRNG (rejection-sampled, so every character is equally likely).
pub fn new_key(test: bool) -> Result<String, ring::error::Unspecified> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let rng = SystemRandom::new();
    let mut key = String::from(if test { "test_" } else { "live_" });
    let mut buf = [0u8; 64];
    while key.len() < 5 + KEY_CHARS {
        rng.fill(&mut buf)?;
        for b in buf {
            // 248 = 4 × 62: bytes above it would favour the first characters.
            if b < 248 && key.len() < 5 + KEY_CHARS {
                key.push(ALPHABET[usize::from(b) % ALPHABET.len()] as char);
            }
        }
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clients(entries: &[(&str, &str, &[&str], &str)]) -> Clients {
        let map = entries
            .iter()
            .map(|(name, key, merchants, default)| {
                let c = ClientSettings {
                    key_sha256: vec![sha256_hex(key)],
                    merchants: merchants.iter().map(|m| m.to_string()).collect(),
                    default_merchant: default.to_string(),
                };
                (name.to_string(), c)
            })
            .collect();
        Clients::from_settings(&map, &Metrics::default()).unwrap()
    }

    #[test]
    fn a_key_authenticates_its_client_only() {
        let k1 = new_key(false).unwrap();
        let k2 = new_key(true).unwrap();
        let all = clients(&[("billing", &k1, &["m1"], "m1"), ("ops", &k2, &["*"], "")]);
        assert!(!all.is_open());
        let billing = all.authenticate(k1.as_bytes()).unwrap();
        assert_eq!(&*billing.name, "billing");
        assert_eq!(billing.default_merchant.as_ref().unwrap().as_str(), "m1");
        let m1 = MerchantId::parse("m1").unwrap();
        let m2 = MerchantId::parse("m2").unwrap();
        assert!(billing.may_act_for(&m1) && !billing.may_act_for(&m2));
        let ops = all.authenticate(k2.as_bytes()).unwrap();
        assert!(ops.may_act_for(&m2));
        assert!(all.authenticate(&k1.as_bytes()[..20]).is_none());
        assert!(all.authenticate(b"").is_none());
        assert!(Clients::default().is_open());
    }

    #[test]
    fn minted_keys_have_the_shape_of_mollie_keys() {
        let live = new_key(false).unwrap();
        let test = new_key(true).unwrap();
        assert!(live.starts_with("live_") && test.starts_with("test_"));
        for key in [&live, &test] {
            assert_eq!(key.len(), 5 + KEY_CHARS);
            assert!(key[5..].bytes().all(|b| b.is_ascii_alphanumeric()), "{key}");
        }
        assert_ne!(live[5..], test[5..]);
        let hex = sha256_hex(&live);
        assert_eq!(
            parse_sha256(&hex).unwrap().as_slice(),
            digest(&SHA256, live.as_bytes()).as_ref()
        );
        assert!(parse_sha256("zz").is_none() && parse_sha256(&"g".repeat(64)).is_none());
    }
}
