//! The OAuth `state` of the onboarding flow: signed, expiring, single-use.
//!
//! `state` = base64url(payload) "." base64url(HMAC-SHA256(key, base64url(payload))); the
//! payload is JSON `{"m": merchant id, "e": expiry (unix seconds), "n": random nonce}`.
//! Time is a parameter of every call, so expiry is testable without waiting.
//! Must not: accept a state twice, or compare signatures other than in constant time
//! (`ring::hmac::verify`).

use crate::types::{MerchantId, Secret};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use dashmap::DashMap;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// How long a `state` from `/oauth/connect` stays valid.
pub const STATE_TTL_SECS: u64 = 600;

/// Why a `state` was refused; the texts are shown to the person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error(
        "the link is not a valid authorization request of this gateway (bad or tampered state)"
    )]
    Invalid,
    #[error("the authorization request expired; start again")]
    Expired(MerchantId),
    #[error("the authorization request was already used; start again")]
    Replayed(MerchantId),
}

#[derive(Serialize, Deserialize)]
struct Payload {
    /// Merchant id.
    m: String,
    /// Expiry, unix seconds.
    e: u64,
    /// Nonce, base64url.
    n: String,
}

/// Issues and redeems signed, expiring, single-use `state` values. Time is a parameter, so
/// expiry is testable without waiting.
pub struct StateBook {
    key: hmac::Key,
    rng: SystemRandom,
    /// Nonces already redeemed → their expiry; pruned of expired ones on insert.
    used: DashMap<String, u64>,
}

impl StateBook {
    pub fn new(secret: &[u8]) -> StateBook {
        StateBook {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            rng: SystemRandom::new(),
            used: DashMap::new(),
        }
    }

    /// A book keyed by `oauth.state_secret`, or by a random key when it is empty.
    pub fn from_secret(secret: &Secret) -> Result<StateBook, String> {
        if !secret.is_empty() {
            return Ok(StateBook::new(secret.expose().as_bytes()));
        }
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| "no system randomness for the OAuth state key".to_string())?;
        tracing::warn!(
            "oauth.state_secret is empty: OAuth states are signed with a random per-process \
             key, so a callback must reach this process before it restarts"
        );
        Ok(StateBook::new(&key))
    }

    /// A fresh state for `merchant`, valid until `now + STATE_TTL_SECS`.
    pub fn issue(&self, merchant: &MerchantId, now: u64) -> Result<String, String> {
        let mut nonce = [0u8; 16];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| "no system randomness".to_string())?;
        let payload = Payload {
            m: merchant.to_string(),
            e: now + STATE_TTL_SECS,
            n: B64.encode(nonce),
        };
        let payload = B64.encode(serde_json::to_vec(&payload).map_err(|e| e.to_string())?);
        let tag = hmac::sign(&self.key, payload.as_bytes());
        Ok(format!("{payload}.{}", B64.encode(tag.as_ref())))
    }

    /// Checks signature and expiry without using the state up.
    pub fn verify(&self, state: &str, now: u64) -> Result<(MerchantId, u64, String), StateError> {
        let (payload, tag) = state.split_once('.').ok_or(StateError::Invalid)?;
        let tag = B64.decode(tag).map_err(|_| StateError::Invalid)?;
        hmac::verify(&self.key, payload.as_bytes(), &tag).map_err(|_| StateError::Invalid)?;
        let raw = B64.decode(payload).map_err(|_| StateError::Invalid)?;
        let p: Payload = serde_json::from_slice(&raw).map_err(|_| StateError::Invalid)?;
        let merchant = MerchantId::parse(&p.m).map_err(|_| StateError::Invalid)?;
        if now >= p.e {
            return Err(StateError::Expired(merchant));
        }
        Ok((merchant, p.e, p.n))
    }

    /// Verifies and uses up a state: a second redemption is refused.
    pub fn redeem(&self, state: &str, now: u64) -> Result<MerchantId, StateError> {
        let (merchant, expires, nonce) = self.verify(state, now)?;
        self.used.retain(|_, exp| *exp > now);
        if self.used.insert(nonce, expires).is_some() {
            return Err(StateError::Replayed(merchant));
        }
        Ok(merchant)
    }

    /// How many used nonces are remembered.
    pub fn used_len(&self) -> usize {
        self.used.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str) -> MerchantId {
        MerchantId::parse(id).unwrap()
    }

    #[test]
    fn a_state_round_trips_once() {
        let book = StateBook::new(b"k");
        let state = book.issue(&m("m1"), 1_000).unwrap();
        assert_eq!(book.redeem(&state, 1_001), Ok(m("m1")));
        assert_eq!(
            book.redeem(&state, 1_002),
            Err(StateError::Replayed(m("m1")))
        );
    }

    #[test]
    fn a_state_expires_after_ten_minutes() {
        let book = StateBook::new(b"k");
        let state = book.issue(&m("m1"), 1_000).unwrap();
        assert!(book.verify(&state, 1_000 + STATE_TTL_SECS - 1).is_ok());
        assert_eq!(
            book.redeem(&state, 1_000 + STATE_TTL_SECS),
            Err(StateError::Expired(m("m1")))
        );
    }

    #[test]
    fn tampered_or_foreign_states_are_invalid() {
        let book = StateBook::new(b"k");
        let state = book.issue(&m("m1"), 1_000).unwrap();
        let (payload, tag) = state.split_once('.').unwrap();
        // Another merchant in the payload, the old signature.
        let forged = B64.encode(r#"{"m":"m2","e":9999999999,"n":"x"}"#);
        for bad in [
            format!("{forged}.{tag}"),
            format!("{payload}.{}", B64.encode([0u8; 32])),
            format!("{payload}x.{tag}"),
            payload.to_string(),
            String::new(),
            "..".into(),
        ] {
            assert_eq!(book.verify(&bad, 1_001), Err(StateError::Invalid), "{bad}");
        }
        // Another key.
        assert_eq!(
            StateBook::new(b"other").verify(&state, 1_001),
            Err(StateError::Invalid)
        );
    }

    #[test]
    fn used_nonces_are_pruned_when_they_expire() {
        let book = StateBook::new(b"k");
        for _ in 0..3 {
            let s = book.issue(&m("m1"), 1_000).unwrap();
            book.redeem(&s, 1_000).unwrap();
        }
        assert_eq!(book.used_len(), 3);
        let later = 1_000 + STATE_TTL_SECS + 5;
        let s = book.issue(&m("m1"), later).unwrap();
        book.redeem(&s, later).unwrap();
        assert_eq!(book.used_len(), 1);
    }
}
