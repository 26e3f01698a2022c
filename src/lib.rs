//! mollie-gateway: a pingora reverse proxy in front of the Mollie API that puts each
//! merchant's self-refreshing Mollie Connect access token on every request.
//!
//! # Layout
//! - [`config`]: typed settings from `conf/gateway.toml` + `MOLLIE_GATEWAY__…` env, validated
//!   (`config/validate.rs`, one method per section).
//! - [`types`]: `MerchantId` and the secret newtypes (`***` in every `Debug`).
//! - [`clients`]: callers' gateway keys (hashes only) and merchant allowlists.
//! - [`error`]: the gateway's own errors → status, `X-Gateway-Error`, Mollie-shaped body.
//! - [`upstream`]: upstream/token endpoint URLs and their asynchronous DNS.
//! - [`oauth`]: the token endpoint client (both grants; `oauth/http.rs`, `oauth/error.rs`) and
//!   its service (`oauth/home.rs`), the one runtime every token call of the server runs on.
//! - [`tokens`]: the token cache, single-flight refresh (`tokens/refresh.rs`; across replicas
//!   through the store's lock), errors, policy, backoff, operator actions, removal, the
//!   background refresher, other replicas' announced changes.
//! - [`store`]: durable credentials (`CredentialStore`; file and Redis backends; `crypto`
//!   seals secrets at rest).
//! - [`rewrite`]: testmode/profileId defaults and the streaming HAL link rewriter.
//! - [`proxy`]: the proxy (a pingora-core `HttpServerApp`) and its parts: `listener` (connection
//!   cap, head deadline, the HTTP/1 keep-alive loop), `caller` (gateway keys, the merchant),
//!   `defaults` (testmode/profileId), `headers` (pure head rewrites, origin-form targets,
//!   request ids), `exchange` (the attempt policy: 401 replay, one retry on a fresh
//!   connection), `pool` (upstream connections), `response` (streaming to the caller).
//! - [`access_log`]: the access log's lines, formatted by hand and written buffered.
//! - [`reload`]: SIGHUP reloads `[clients]` and `[merchants.defaults]`.
//! - [`metrics`]: every Prometheus metric on an injected registry.
//! - [`admin`]: the admin listener, an axum router (`/metrics`, `/healthz`, `/readyz`):
//!   - [`admin::api`]: `/admin/merchants…`, behind `admin.token`;
//!   - [`admin::onboarding`]: `/oauth/connect` and `/oauth/callback`, with
//!     [`admin::state`], the signed OAuth `state`;
//!   - [`admin::error`]: `AdminError`, the one admin error type (Mollie-shaped);
//!   - [`admin::serve`]: the pingora service that hands each connection to hyper.
//! - [`listen`]: the listening sockets, bound by the gateway and handed to pingora, so that
//!   port 0 works and the bound addresses are known (`server.bound_addrs_file`).
//! - [`app`]: building the pingora server from settings (used by `main.rs`).

pub mod access_log;
pub mod admin;
pub mod app;
pub mod clients;
pub mod config;
pub mod error;
pub mod listen;
pub mod memory;
pub mod metrics;
pub mod oauth;
pub mod proxy;
pub mod reload;
pub mod rewrite;
pub mod store;
pub mod tokens;
pub mod types;
pub mod upstream;
