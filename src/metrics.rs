//! Every Prometheus metric of the gateway, in one struct on an injected registry.
//!
//! Owns: names, help texts, label sets and buckets (DESIGN.md §3, prefix `mollie_gateway_`).
//! Label handles that the hot path uses are resolved once here, so a request does no label
//! lookup. Must not: label anything with a secret, or (by default) with a merchant id.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// 100 µs to 30 s, roughly ×2.5 per step.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// The `outcome` values of `replays_total` (README "401 replay").
pub const REPLAY_OUTCOMES: [&str; 5] = [
    "replayed",
    "rejected_again",
    "body_too_large",
    "refresh_failed",
    "static_credential",
];
/// The `grant` and `outcome` values of `token_refreshes_total`.
pub const REFRESH_GRANTS: [&str; 2] = ["refresh_token", "authorization_code"];
pub const REFRESH_OUTCOMES: [&str; 5] = [
    "ok",
    "invalid_grant",
    "unavailable",
    "bad_response",
    "misconfigured",
];
/// The `outcome` values of `revocations_total` (`tokens::RevocationOutcome`).
pub const REVOCATION_OUTCOMES: [&str; 5] = [
    "revoked",
    "already_invalid",
    "failed",
    "skipped",
    "not_configured",
];
/// The `op` and `outcome` values of `store_operations_total`.
/// `lock`: the store's refresh lock (Redis); `fallback`: a rotated refresh token the store
/// would not take, kept in `store.fallback_path` instead.
pub const STORE_OPS: [&str; 4] = ["load", "save", "remove", "lock"];
pub const STORE_OUTCOMES: [&str; 3] = ["ok", "error", "fallback"];
/// The `reason` values of `connections_refused_total`.
pub const REFUSAL_REASONS: [&str; 3] = ["max_connections", "header_timeout", "header_too_large"];

pub struct Metrics {
    pub registry: Registry,
    /// `requests_total`, labelled by client and status class.
    requests: IntCounterVec,
    /// The handles of requests without a client (open gateway, or refused before one was
    /// known): `client="-"`.
    anonymous: RequestCounters,
    pub request_duration_total: Histogram,
    pub request_duration_gateway: Histogram,
    pub upstream_401: IntCounter,
    pub replays: IntCounterVec,
    pub token_refreshes: IntCounterVec,
    pub token_refresh_duration: Histogram,
    pub token_cache_hits: IntCounter,
    pub token_cache_misses: IntCounter,
    pub merchants: IntGauge,
    pub gateway_errors: IntCounterVec,
    pub store_operations: IntCounterVec,
    /// `revocations_total{outcome}`: removals and their revocation at Mollie.
    pub revocations: IntCounterVec,
    /// 1 while the credential store answered its last operation or readiness probe, else 0.
    pub store_up: IntGauge,
    /// Open caller connections on the proxy listener.
    pub connections_open: IntGauge,
    /// `reason` handles of `connections_refused_total`, in [`REFUSAL_REASONS`] order.
    refused: [IntCounter; 3],
    /// `http1_requests_total{path="fast"}` and `{path="slow"}`: which HTTP/1 path served a
    /// request head.
    pub http1_fast: IntCounter,
    pub http1_slow: IntCounter,
}

/// One client's `requests_total` series, indexed by the status' first digit (0 = no response).
#[derive(Clone)]
pub struct RequestCounters([IntCounter; 6]);

impl RequestCounters {
    fn new(requests: &IntCounterVec, client: &str) -> RequestCounters {
        RequestCounters(
            ["0xx", "1xx", "2xx", "3xx", "4xx", "5xx"]
                .map(|class| requests.with_label_values(&[client, class])),
        )
    }

    /// Counts one finished request by its status (0 when nothing was sent).
    pub fn observe(&self, status: u16) {
        self.0[usize::from(status / 100).min(5)].inc();
    }
}

/// Why the proxy listener refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `server.max_connections` connections were already open.
    MaxConnections = 0,
    /// The request head did not arrive within `server.header_timeout_ms`.
    HeaderTimeout = 1,
    /// The request head grew past `server.max_header_bytes` (431).
    HeaderTooLarge = 2,
}

const PREFIX: &str = "mollie_gateway_";

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(format!("{PREFIX}{name}"), help), labels)
        .expect("metric definition is valid");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(format!("{PREFIX}{name}"), help).expect("metric definition is valid");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(format!("{PREFIX}{name}"), help).expect("metric definition is valid");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

/// `request_duration_seconds`: one name (the DESIGN.md contract), two series told apart by
/// `part`, returned as [total, gateway].
fn durations(r: &Registry) -> [Histogram; 2] {
    let duration = HistogramVec::new(
        HistogramOpts::new(
            format!("{PREFIX}request_duration_seconds"),
            "Request duration in seconds: part=\"total\" from request to response end, \
             part=\"gateway\" the time the gateway added before the upstream request \
             started (validation, token lookup, waiting for a refresh).",
        )
        .buckets(LATENCY_BUCKETS.to_vec()),
        &["part"],
    )
    .expect("metric definition is valid");
    r.register(Box::new(duration.clone()))
        .expect("metric registered once");
    ["total", "gateway"].map(|part| duration.with_label_values(&[part]))
}

fn histogram(r: &Registry, name: &str, help: &str) -> Histogram {
    let opts =
        HistogramOpts::new(format!("{PREFIX}{name}"), help).buckets(LATENCY_BUCKETS.to_vec());
    let h = Histogram::with_opts(opts).expect("metric definition is valid");
    r.register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

impl Metrics {
    /// Registers every metric on `registry`. Panics only if the same registry is used twice,
    /// which is a programming error caught by every test.
    pub fn new(registry: Registry) -> Metrics {
        let r = &registry;
        let requests = counter_vec(
            r,
            "requests_total",
            "Proxied requests by calling client ([clients.<name>]; - = none) and response \
             status class (1xx..5xx; 0xx = no response sent).",
            &["client", "status_class"],
        );
        let anonymous = RequestCounters::new(&requests, "-");
        let [request_duration_total, request_duration_gateway] = durations(r);
        let refused = counter_vec(
            r,
            "connections_refused_total",
            "Caller connections the proxy listener refused, by reason (max_connections: 503 at \
             server.max_connections; header_timeout: 408 for a request head slower than \
             server.header_timeout_ms; header_too_large: 431 for a request head over \
             server.max_header_bytes).",
            &["reason"],
        );
        let http1 = counter_vec(
            r,
            "http1_requests_total",
            "HTTP/1 request heads by the path that served them (fast: the strict fast path; \
             slow: pingora's session, for every other request shape).",
            &["path"],
        );
        let metrics = Metrics {
            http1_fast: http1.with_label_values(&["fast"]),
            http1_slow: http1.with_label_values(&["slow"]),
            requests,
            anonymous,
            request_duration_total,
            request_duration_gateway,
            upstream_401: counter(
                r,
                "upstream_401_total",
                "401 answers from the Mollie API (each triggers at most one refresh + replay).",
            ),
            replays: counter_vec(
                r,
                "replays_total",
                "What became of each upstream 401, by outcome (replayed, rejected_again, \
                 body_too_large, refresh_failed, static_credential: passed back, never replayed).",
                &["outcome"],
            ),
            token_refreshes: counter_vec(
                r,
                "token_refreshes_total",
                "Token endpoint calls by grant (refresh_token, authorization_code) and outcome.",
                &["grant", "outcome"],
            ),
            token_refresh_duration: histogram(
                r,
                "token_refresh_duration_seconds",
                "Duration of token endpoint calls in seconds.",
            ),
            token_cache_hits: counter(
                r,
                "token_cache_hits_total",
                "Requests served with a cached access token.",
            ),
            token_cache_misses: counter(
                r,
                "token_cache_misses_total",
                "Requests that found no usable cached token and waited for a refresh.",
            ),
            merchants: gauge(r, "merchants", "Merchants with stored credentials."),
            gateway_errors: counter_vec(
                r,
                "gateway_errors_total",
                "Errors the gateway answered itself, by X-Gateway-Error code.",
                &["code"],
            ),
            store_operations: counter_vec(
                r,
                "store_operations_total",
                "Credential store operations by op (load, save, remove, lock) and outcome (ok, error, \
                 fallback: a rotated refresh token kept in store.fallback_path).",
                &["op", "outcome"],
            ),
            revocations: counter_vec(
                r,
                "revocations_total",
                "Revocations at Mollie of removed merchants' authorizations, by outcome \
                 (revoked, already_invalid, failed: retried later, skipped: \
                 keep_authorization, not_configured: no OAuth app).",
                &["outcome"],
            ),
            store_up: gauge(
                r,
                "store_up",
                "1 while the credential store answered its last operation or readiness probe.",
            ),
            connections_open: gauge(
                r,
                "connections_open",
                "Open caller connections on the proxy listener.",
            ),
            refused: REFUSAL_REASONS.map(|reason| refused.with_label_values(&[reason])),
            registry,
        };
        metrics.start_closed_label_sets_at_zero();
        metrics
    }

    /// Closed label sets start at 0: scraped (with their HELP) before the first event, so
    /// that `rate()` and `increase()` also see the first increment.
    fn start_closed_label_sets_at_zero(&self) {
        for outcome in REPLAY_OUTCOMES {
            self.replays.with_label_values(&[outcome]);
        }
        for grant in REFRESH_GRANTS {
            for outcome in REFRESH_OUTCOMES {
                self.token_refreshes.with_label_values(&[grant, outcome]);
            }
        }
        for outcome in REVOCATION_OUTCOMES {
            self.revocations.with_label_values(&[outcome]);
        }
        for op in STORE_OPS {
            for outcome in STORE_OUTCOMES {
                self.store_operations.with_label_values(&[op, outcome]);
            }
        }
    }

    /// Counts one finished request without a client by its status (0 when nothing was sent).
    pub fn observe_request(&self, status: u16) {
        self.anonymous.observe(status);
    }

    /// The `requests_total` handles of one client, resolved once (when clients are loaded).
    pub fn requests_for(&self, client: &str) -> RequestCounters {
        RequestCounters::new(&self.requests, client)
    }

    /// Counts one refused connection.
    pub fn refused(&self, why: Refusal) {
        self.refused[why as usize].inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode_utf8(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(Registry::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_with_prefix_and_classes() {
        let m = Metrics::default();
        m.observe_request(201);
        m.observe_request(503);
        m.observe_request(0);
        m.replays.with_label_values(&["replayed"]).inc();
        m.requests_for("billing").observe(204);
        let text = m.render();
        for sample in [
            "mollie_gateway_requests_total{client=\"-\",status_class=\"2xx\"} 1",
            "mollie_gateway_requests_total{client=\"-\",status_class=\"5xx\"} 1",
            "mollie_gateway_requests_total{client=\"-\",status_class=\"0xx\"} 1",
            "mollie_gateway_requests_total{client=\"billing\",status_class=\"2xx\"} 1",
        ] {
            assert!(text.contains(sample), "{sample} missing in\n{text}");
        }
        assert!(text.contains("mollie_gateway_replays_total{outcome=\"replayed\"} 1"));
    }

    #[test]
    fn closed_label_sets_start_at_zero() {
        let text = Metrics::default().render();
        for sample in [
            "mollie_gateway_replays_total{outcome=\"rejected_again\"} 0",
            "mollie_gateway_token_refreshes_total{grant=\"refresh_token\",outcome=\"ok\"} 0",
            "mollie_gateway_token_refreshes_total{grant=\"authorization_code\",outcome=\"misconfigured\"} 0",
            "mollie_gateway_store_operations_total{op=\"remove\",outcome=\"error\"} 0",
            "mollie_gateway_connections_refused_total{reason=\"header_timeout\"} 0",
            "mollie_gateway_connections_open 0",
            "mollie_gateway_http1_requests_total{path=\"fast\"} 0",
            "mollie_gateway_revocations_total{outcome=\"failed\"} 0",
        ] {
            assert!(text.contains(sample), "{sample} missing in\n{text}");
        }
    }
}
