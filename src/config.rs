//! Typed settings: `conf/gateway.toml` (or the embedded defaults) overlaid with environment
//! variables `MOLLIE_GATEWAY__SECTION__KEY`, strictly checked.
//!
//! Owns: the shape of the configuration (DESIGN.md §3), its `DEFAULT_*` values, and
//! [`Settings::validate`], which reports every problem it finds at once, naming each key.
//! Must not: know pingora's types (main.rs turns settings into a `ServerConf`), or read the
//! process environment directly: callers pass the environment in, so tests never `set_var`.

mod validate;

use crate::types::Secret;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_CONFIG_PATH: &str = "conf/gateway.toml";
pub const ENV_PREFIX: &str = "MOLLIE_GATEWAY";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
pub const DEFAULT_THREADS: usize = 2;
pub const DEFAULT_GRACE_PERIOD_SECS: u64 = 5;
pub const DEFAULT_HEADER_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// pingora's own bound of a request head (`MAX_HEADER_SIZE`): `server.max_header_bytes` at most.
pub const MAX_HEADER_BYTES_LIMIT: usize = 1024 * 1024 - 1;
pub const DEFAULT_CLIENT_KEY_HEADER: &str = "X-Gateway-Key";
pub const DEFAULT_UPGRADE_SOCK: &str = "/tmp/mollie-gateway-upgrade.sock";
pub const DEFAULT_PID_FILE: &str = "/tmp/mollie-gateway.pid";
pub const DEFAULT_BASE_URL: &str = "https://api.mollie.com";
pub const DEFAULT_TOKEN_URL: &str = "https://api.mollie.com/oauth2/tokens";
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 2_000;
pub const DEFAULT_READ_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_KEEPALIVE_POOL_SIZE: usize = 128;
pub const DEFAULT_AUTHORIZE_URL: &str = "https://my.mollie.com/oauth2/authorize";
pub const DEFAULT_SCOPES: &str = "payments.read payments.write organizations.read";
pub const DEFAULT_REFRESH_BEFORE_EXPIRY_SECS: u64 = 300;
pub const DEFAULT_TOKEN_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_BACKOFF_MIN_MS: u64 = 1_000;
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 60_000;
pub const DEFAULT_MERCHANT_HEADER: &str = "X-Merchant-Id";
pub const DEFAULT_STORE_PATH: &str = "data/credentials.json";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const DEFAULT_KEY_PREFIX: &str = "mollie-gateway:";
pub const DEFAULT_FALLBACK_PATH: &str = "data/fallback.json";

/// Every problem found in a configuration, each naming its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration:\n  - {}", problems.join("\n  - "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl ConfigError {
    fn one(problem: impl Into<String>) -> Self {
        ConfigError {
            problems: vec![problem.into()],
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub server: ServerSettings,
    pub upstream: UpstreamSettings,
    pub oauth: OAuthSettings,
    pub merchants: MerchantSettings,
    /// `[clients.<name>]`: the callers allowed to act for merchants; none = open.
    pub clients: BTreeMap<String, ClientSettings>,
    pub store: StoreSettings,
    pub admin: AdminSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// The proxy listener callers use as their Mollie base URL.
    pub listen: String,
    /// Optional PEM certificate and key: serve the proxy over HTTPS.
    pub tls_cert: String,
    pub tls_key: String,
    /// Metrics, health, admin API (and the OAuth pages unless `oauth_listen` is set).
    pub admin_listen: String,
    /// Optional: `/oauth/connect` and `/oauth/callback` on their own listener (facing
    /// merchants' browsers; TLS like the proxy when `tls_cert` is set), and only there.
    pub oauth_listen: String,
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// On SIGTERM: seconds to keep serving before draining (pingora's default is 300).
    pub grace_period_secs: u64,
    /// Then at most this long to finish in-flight requests.
    pub graceful_shutdown_timeout_secs: u64,
    /// Unix socket over which `run -u` (graceful upgrade) takes over the listening sockets.
    pub upgrade_sock: String,
    /// pingora's pid file (written when daemonized).
    pub pid_file: String,
    /// When set, the addresses the listeners actually bound (`server.listen = "ip:port"`
    /// lines) are written here once all are bound: how to learn a port-0 listener's port.
    pub bound_addrs_file: String,
    /// The whole request head must arrive within this, counted from its first byte (else 408).
    /// The idle wait between keep-alive requests is not part of it.
    pub header_timeout_ms: u64,
    /// Open caller connections at most; a connection beyond gets 503 and is closed.
    pub max_connections: usize,
    /// Largest request body forwarded; larger ones get 413 (Mollie's requests are far smaller).
    pub max_body_bytes: u64,
    /// Largest request head (request line and headers) read; a larger one gets 431 and the
    /// connection closes. Bounds what each connection makes the gateway hold before a request.
    pub max_header_bytes: usize,
    /// Where callers that cannot set `Authorization` put their gateway key (removed upstream).
    pub client_key_header: String,
    /// Refuse to start without any `[clients]` (true in `conf/production.toml`).
    pub require_client_keys: bool,
    /// Serve the request shape SDKs send on the strict HTTP/1 fast path (`src/proxy/fast.rs`);
    /// `false` serves every request through pingora's session.
    pub fast_path: bool,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: DEFAULT_LISTEN.into(),
            tls_cert: String::new(),
            tls_key: String::new(),
            admin_listen: DEFAULT_ADMIN_LISTEN.into(),
            oauth_listen: String::new(),
            threads: DEFAULT_THREADS,
            grace_period_secs: DEFAULT_GRACE_PERIOD_SECS,
            graceful_shutdown_timeout_secs: DEFAULT_GRACE_PERIOD_SECS,
            upgrade_sock: DEFAULT_UPGRADE_SOCK.into(),
            pid_file: DEFAULT_PID_FILE.into(),
            bound_addrs_file: String::new(),
            header_timeout_ms: DEFAULT_HEADER_TIMEOUT_MS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            client_key_header: DEFAULT_CLIENT_KEY_HEADER.into(),
            require_client_keys: false,
            fast_path: true,
        }
    }
}

impl ServerSettings {
    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamSettings {
    pub base_url: String,
    pub token_url: String,
    pub connect_timeout_ms: u64,
    pub read_timeout_ms: u64,
    /// Idle upstream connections kept per process.
    pub keepalive_pool_size: usize,
    pub public_base_url: String,
    /// Extra CA certificates (PEM) to trust for the upstream and token endpoint.
    pub ca_file: String,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            base_url: DEFAULT_BASE_URL.into(),
            token_url: DEFAULT_TOKEN_URL.into(),
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            read_timeout_ms: DEFAULT_READ_TIMEOUT_MS,
            keepalive_pool_size: DEFAULT_KEEPALIVE_POOL_SIZE,
            public_base_url: String::new(),
            ca_file: String::new(),
        }
    }
}

impl UpstreamSettings {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn read_timeout(&self) -> Duration {
        Duration::from_millis(self.read_timeout_ms)
    }
}

/// How the token request body is encoded. Mollie documents form encoding; JSON is accepted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenBody {
    #[default]
    Form,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OAuthSettings {
    pub client_id: String,
    pub client_secret: Secret,
    pub client_secret_file: String,
    pub redirect_uri: String,
    pub authorize_url: String,
    pub scopes: String,
    /// Proactive refresh window, capped at half a token's lifetime.
    pub refresh_before_expiry_secs: u64,
    /// Whole deadline of one token endpoint call (connect, send, answer).
    pub token_timeout_ms: u64,
    pub token_body: TokenBody,
    /// Per-merchant backoff after a failed refresh: first delay and cap (jittered).
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// Refresh tokens in the background before requests need them.
    pub background_refresh: bool,
    /// HMAC key signing the OAuth `state` of `/oauth/connect`; empty = random per process
    /// (then a callback must reach the process that issued its state). Required with the
    /// Redis store (every replica verifies the states the others issued).
    pub state_secret: Secret,
    /// A file holding `state_secret` (a mounted secret) instead; set only one of the two.
    pub state_secret_file: String,
}

impl Default for OAuthSettings {
    fn default() -> Self {
        OAuthSettings {
            client_id: String::new(),
            client_secret: Secret::default(),
            client_secret_file: String::new(),
            redirect_uri: String::new(),
            authorize_url: DEFAULT_AUTHORIZE_URL.into(),
            scopes: DEFAULT_SCOPES.into(),
            refresh_before_expiry_secs: DEFAULT_REFRESH_BEFORE_EXPIRY_SECS,
            token_timeout_ms: DEFAULT_TOKEN_TIMEOUT_MS,
            token_body: TokenBody::Form,
            backoff_min_ms: DEFAULT_BACKOFF_MIN_MS,
            backoff_max_ms: DEFAULT_BACKOFF_MAX_MS,
            background_refresh: true,
            state_secret: Secret::default(),
            state_secret_file: String::new(),
        }
    }
}

impl OAuthSettings {
    /// True when the OAuth app is configured (client id and a secret from any source).
    pub fn is_configured(&self) -> bool {
        !self.client_id.is_empty() && !self.client_secret.is_empty()
    }
    pub fn token_timeout(&self) -> Duration {
        Duration::from_millis(self.token_timeout_ms)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MerchantSettings {
    /// The internal header that names the merchant.
    pub header: String,
    /// Per-merchant request defaults (`[merchants.defaults.<id>]`).
    pub defaults: BTreeMap<String, MerchantDefaults>,
}

impl Default for MerchantSettings {
    fn default() -> Self {
        MerchantSettings {
            header: DEFAULT_MERCHANT_HEADER.into(),
            defaults: BTreeMap::new(),
        }
    }
}

/// When requests get `testmode=true` added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TestMode {
    /// When the caller's dropped `Authorization` was a `test_…` key.
    #[default]
    FromKey,
    Always,
    Never,
}

/// What a legacy API-key caller never sends but OAuth requests need.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MerchantDefaults {
    /// Added as `profileId` to POST bodies that lack one (`pfl_…`).
    pub profile_id: String,
    pub testmode: TestMode,
}

/// One calling service (`[clients.<name>]`, DESIGN.md §8).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientSettings {
    /// Hex SHA-256 of each accepted key (several: rotation without downtime). Never the key.
    pub key_sha256: Vec<String>,
    /// Merchant ids this client may act for, or `["*"]` for all.
    pub merchants: Vec<String>,
    /// Used when a request names no merchant; must be allowed by `merchants`.
    pub default_merchant: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    #[default]
    File,
    Redis,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    pub backend: StoreBackend,
    pub path: PathBuf,
    /// Redis backend: `redis://[user:password@]host:port[/db]`, `rediss://…` (TLS) or
    /// `redis+unix:///path`.
    pub redis_url: String,
    /// Redis backend, `rediss://`: PEM certificates trusted for Redis's TLS certificate instead
    /// of the system's trust store (a private CA); empty = the system's.
    pub redis_ca_file: String,
    /// Redis backend: every key starts with it (several gateways may share one Redis).
    pub key_prefix: String,
    /// AES-256-GCM keys for the records' secrets, one `key_id:base64(32 bytes)` a line, the
    /// last encrypts (`store::crypto`); empty = plaintext, warned. A path: never the keys.
    pub encryption_key_file: String,
    /// Redis backend: rotated refresh tokens that Redis would not take are kept here.
    pub fallback_path: PathBuf,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            backend: StoreBackend::File,
            path: PathBuf::from(DEFAULT_STORE_PATH),
            redis_url: DEFAULT_REDIS_URL.into(),
            redis_ca_file: String::new(),
            key_prefix: DEFAULT_KEY_PREFIX.into(),
            encryption_key_file: String::new(),
            fallback_path: PathBuf::from(DEFAULT_FALLBACK_PATH),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Bearer token for `/admin/*`; empty disables the admin API.
    pub token: Secret,
    /// A file holding the bearer token (a mounted secret) instead of `token`; read once at
    /// start-up, surrounding whitespace trimmed. Set only one of the two.
    pub token_file: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A tracing filter (`info`, `mollie_gateway=debug,pingora=warn`); `RUST_LOG` wins.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Where the settings came from, for `check-config` and the start-up log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    /// The default path did not exist: built-in defaults (plus environment) are in force.
    EmbeddedDefaults,
}

/// Loads settings: `path` (or [`DEFAULT_CONFIG_PATH`], which may be absent), then `env`
/// (`MOLLIE_GATEWAY__SECTION__KEY` variables), then validation.
pub fn load(
    path: Option<&Path>,
    env: &HashMap<String, String>,
) -> Result<(Settings, Source), ConfigError> {
    let (text, source) = match path {
        Some(p) => (read_config_file(p)?, Source::File(p.to_path_buf())),
        None => {
            let p = Path::new(DEFAULT_CONFIG_PATH);
            if p.exists() {
                (read_config_file(p)?, Source::File(p.to_path_buf()))
            } else {
                (String::new(), Source::EmbeddedDefaults)
            }
        }
    };
    let settings = parse(&text, env)?;
    Ok((settings, source))
}

fn read_config_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError::one(format!("cannot read config file {}: {e}", path.display())))
}

/// Parses TOML text overlaid with the environment map, and validates the result.
pub fn parse(toml_text: &str, env: &HashMap<String, String>) -> Result<Settings, ConfigError> {
    let env: HashMap<String, String> = env
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let raw = config::Config::builder()
        .add_source(config::File::from_str(toml_text, config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .source(Some(env)),
        )
        .build()
        .map_err(|e| ConfigError::one(e.to_string()))?;
    let table = raw
        .clone()
        .try_deserialize::<HashMap<String, config::Value>>()
        .map_err(|e| ConfigError::one(e.to_string()))?;

    // Each section on its own, so that a problem in one does not hide the others.
    let mut problems = Vec::new();
    for key in table.keys() {
        if !SECTIONS.contains(&key.as_str()) {
            problems.push(format!(
                "unknown section [{key}] (known: {})",
                SECTIONS.join(", ")
            ));
        }
    }
    let mut settings = Settings::default();
    section(&raw, "server", &mut settings.server, &mut problems);
    section(&raw, "upstream", &mut settings.upstream, &mut problems);
    section(&raw, "oauth", &mut settings.oauth, &mut problems);
    section(&raw, "merchants", &mut settings.merchants, &mut problems);
    section(&raw, "clients", &mut settings.clients, &mut problems);
    section(&raw, "store", &mut settings.store, &mut problems);
    section(&raw, "admin", &mut settings.admin, &mut problems);
    section(&raw, "log", &mut settings.log, &mut problems);
    if !problems.is_empty() {
        return Err(ConfigError { problems });
    }
    settings.validate()
}

const SECTIONS: [&str; 8] = [
    "server",
    "upstream",
    "oauth",
    "merchants",
    "clients",
    "store",
    "admin",
    "log",
];

fn section<T: serde::de::DeserializeOwned>(
    raw: &config::Config,
    name: &str,
    slot: &mut T,
    problems: &mut Vec<String>,
) {
    match raw.get::<T>(name) {
        Ok(value) => *slot = value,
        Err(config::ConfigError::NotFound(_)) => {}
        Err(e) => problems.push(format!("[{name}]: {e}")),
    }
}

impl Settings {
    /// A copy safe to print: every secret that is set reads `***`.
    pub fn masked(&self) -> Settings {
        let mut s = self.clone();
        for secret in [
            &mut s.oauth.client_secret,
            &mut s.oauth.state_secret,
            &mut s.admin.token,
        ] {
            if !secret.is_empty() {
                *secret = Secret::new("***");
            }
        }
        if let Ok(mut url) = url::Url::parse(&s.store.redis_url) {
            if url.password().is_some() && url.set_password(Some("***")).is_ok() {
                s.store.redis_url = url.to_string();
            }
        }
        s
    }

    /// The effective configuration as TOML, secrets masked (`check-config`).
    pub fn to_masked_toml(&self) -> String {
        toml::to_string_pretty(&self.masked())
            .unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }

    /// Said at start-up, by `check-config` and `/readyz` while no `[clients]` are configured.
    pub fn open_gateway_warning(&self) -> Option<String> {
        self.clients.is_empty().then(|| {
            "no [clients.<name>] is configured: any caller that reaches the proxy listener may \
             act for every merchant (make a client key with `mollie-gateway clients new NAME`)"
                .to_string()
        })
    }

    /// Said at start-up and by `check-config` while the store keeps secrets in plaintext.
    pub fn plaintext_store_warning(&self) -> Option<String> {
        self.store.encryption_key_file.is_empty().then(|| {
            "store.encryption_key_file is not set: refresh tokens are stored in plaintext \
             (see \"Credentials at rest\" in the README)"
                .to_string()
        })
    }

    /// What an operator still has to configure before merchants can be served, if anything.
    pub fn oauth_setup_hint(&self) -> Option<String> {
        if self.oauth.is_configured() {
            return None;
        }
        Some(
            "the OAuth app is not configured: set oauth.client_id (MOLLIE_GATEWAY__OAUTH__CLIENT_ID) \
             and oauth.client_secret (MOLLIE_GATEWAY__OAUTH__CLIENT_SECRET or \
             oauth.client_secret_file) to your Mollie Connect app's credentials"
                .into(),
        )
    }
}

#[cfg(test)]
mod tests;
