//! The timing rules of the token lifecycle (DESIGN.md §4), as pure functions and checked
//! values: when a token becomes stale and unusable, when the background refresher should act
//! (jittered), and how long a merchant backs off after a failed refresh.

use std::time::Duration;
use tokio::time::Instant;

/// The most a token may be used after its proactive window opened, whatever its lifetime.
pub const MAX_STALE_MARGIN: Duration = Duration::from_secs(30);

/// Exponential backoff with equal jitter, built by a checked constructor.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Result<Backoff, String> {
        if min.is_zero() {
            return Err("backoff minimum must be above zero".into());
        }
        if max < min {
            return Err("backoff maximum must not be below the minimum".into());
        }
        Ok(Backoff { min, max })
    }

    /// The delay after `failures` consecutive failures (1 = first): `min * 2^(failures-1)`
    /// capped at `max`, of which the upper half is scaled by `unit` (a random number in 0..1).
    pub fn delay(&self, failures: u32, unit: f64) -> Duration {
        let exp = failures.saturating_sub(1).min(32);
        let base = self.min.saturating_mul(1u32 << exp.min(31)).min(self.max);
        let half = base / 2;
        half + half.mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// When a token issued at `issued` (the moment its request was sent) for `lifetime` becomes
/// stale, unusable, and due for a background refresh (`jitter_unit` in 0..1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenTimes {
    pub refresh_at: Instant,
    pub usable_until: Instant,
    pub background_at: Instant,
}

pub fn token_times(
    issued: Instant,
    lifetime: Duration,
    window: Duration,
    jitter_unit: f64,
) -> TokenTimes {
    let window = window.min(lifetime / 2);
    let refresh_at = issued + (lifetime - window);
    let margin = (window / 2).min(MAX_STALE_MARGIN);
    let jitter = (window / 2).mul_f64(jitter_unit.clamp(0.0, 1.0));
    TokenTimes {
        refresh_at,
        usable_until: issued + (lifetime - margin),
        background_at: refresh_at - jitter,
    }
}

/// How tokens are refreshed (from `[oauth]`).
#[derive(Debug, Clone, Copy)]
pub struct TokenPolicy {
    pub refresh_before_expiry: Duration,
    /// How long a caller waits for someone else's refresh before answering 503.
    pub waiter_timeout: Duration,
    /// A refresh older than this no longer blocks a new one (a stuck leader).
    pub stuck_leader_after: Duration,
    /// The store's refresh lock (several replicas): above the token call's whole deadline,
    /// and renewed while the refresh runs; a holder that died blocks the others this long.
    pub store_lock_ttl: Duration,
    pub backoff: Backoff,
}

impl TokenPolicy {
    pub fn from_settings(s: &crate::config::Settings) -> Result<TokenPolicy, String> {
        let token_timeout = s.oauth.token_timeout();
        Ok(TokenPolicy {
            refresh_before_expiry: Duration::from_secs(s.oauth.refresh_before_expiry_secs),
            waiter_timeout: token_timeout + Duration::from_secs(1),
            stuck_leader_after: token_timeout * 2 + Duration::from_secs(5),
            store_lock_ttl: token_timeout + Duration::from_secs(1),
            backoff: Backoff::new(
                Duration::from_millis(s.oauth.backoff_min_ms),
                Duration::from_millis(s.oauth.backoff_max_ms),
            )?,
        })
    }
}
