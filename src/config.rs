//! Typed settings: `conf/gateway.toml` (or the embedded defaults) overlaid with environment
//! variables `MOLLIE_GATEWAY__SECTION__KEY`, strictly checked.
//!
//! Owns: the shape of the configuration (DESIGN.md §3), its `DEFAULT_*` values, and
//! [`Settings::validate`], which reports every problem it finds at once, naming each key.
//! Must not: know pingora's types (main.rs turns settings into a `ServerConf`), or read the
//! process environment directly: callers pass the environment in, so tests never `set_var`.

use crate::types::{MerchantId, Secret};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
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
    /// Metrics, health, admin API and OAuth callback.
    pub admin_listen: String,
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
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: DEFAULT_LISTEN.into(),
            tls_cert: String::new(),
            tls_key: String::new(),
            admin_listen: DEFAULT_ADMIN_LISTEN.into(),
            threads: DEFAULT_THREADS,
            grace_period_secs: DEFAULT_GRACE_PERIOD_SECS,
            graceful_shutdown_timeout_secs: DEFAULT_GRACE_PERIOD_SECS,
            upgrade_sock: DEFAULT_UPGRADE_SOCK.into(),
            pid_file: DEFAULT_PID_FILE.into(),
            bound_addrs_file: String::new(),
            header_timeout_ms: DEFAULT_HEADER_TIMEOUT_MS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
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
    /// (then a callback must reach the process that issued its state).
    pub state_secret: Secret,
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
    pub redis_url: String,
    pub key_prefix: String,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            backend: StoreBackend::File,
            path: PathBuf::from(DEFAULT_STORE_PATH),
            redis_url: DEFAULT_REDIS_URL.into(),
            key_prefix: DEFAULT_KEY_PREFIX.into(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Bearer token for `/admin/*`; empty disables the admin API.
    pub token: Secret,
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
    section(&raw, "store", &mut settings.store, &mut problems);
    section(&raw, "admin", &mut settings.admin, &mut problems);
    section(&raw, "log", &mut settings.log, &mut problems);
    if !problems.is_empty() {
        return Err(ConfigError { problems });
    }
    settings.validate()
}

const SECTIONS: [&str; 7] = [
    "server",
    "upstream",
    "oauth",
    "merchants",
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
    /// Checks every value and resolves `oauth.client_secret_file`; reports all problems.
    pub fn validate(mut self) -> Result<Self, ConfigError> {
        let mut p = Vec::new();
        check_addr(&mut p, "server.listen", &self.server.listen);
        check_addr(&mut p, "server.admin_listen", &self.server.admin_listen);
        if self.server.listen == self.server.admin_listen && !any_port(&self.server.listen) {
            p.push("server.admin_listen must differ from server.listen".into());
        }
        match (
            self.server.tls_cert.is_empty(),
            self.server.tls_key.is_empty(),
        ) {
            (true, true) => {}
            (false, false) => {
                check_readable(&mut p, "server.tls_cert", &self.server.tls_cert);
                check_readable(&mut p, "server.tls_key", &self.server.tls_key);
            }
            _ => p.push("server.tls_cert and server.tls_key must be set together".into()),
        }
        if self.server.threads == 0 || self.server.threads > 256 {
            p.push(format!(
                "server.threads must be 1 to 256, not {}",
                self.server.threads
            ));
        }
        if self.server.max_connections == 0 || self.server.max_connections > 10_000_000 {
            p.push(format!(
                "server.max_connections must be 1 to 10000000, not {}",
                self.server.max_connections
            ));
        }
        if self.server.max_body_bytes == 0 {
            p.push("server.max_body_bytes must be at least 1".into());
        }
        if !self.upstream.ca_file.is_empty() {
            check_readable(&mut p, "upstream.ca_file", &self.upstream.ca_file);
        }
        check_url(&mut p, "upstream.base_url", &self.upstream.base_url, false);
        check_url(
            &mut p,
            "upstream.token_url",
            &self.upstream.token_url,
            false,
        );
        check_url(
            &mut p,
            "upstream.public_base_url",
            &self.upstream.public_base_url,
            true,
        );
        check_url(
            &mut p,
            "oauth.authorize_url",
            &self.oauth.authorize_url,
            false,
        );
        check_url(&mut p, "oauth.redirect_uri", &self.oauth.redirect_uri, true);
        for (key, ms) in [
            (
                "upstream.connect_timeout_ms",
                self.upstream.connect_timeout_ms,
            ),
            ("upstream.read_timeout_ms", self.upstream.read_timeout_ms),
            ("oauth.token_timeout_ms", self.oauth.token_timeout_ms),
            ("server.header_timeout_ms", self.server.header_timeout_ms),
            ("oauth.backoff_min_ms", self.oauth.backoff_min_ms),
        ] {
            if ms == 0 || ms > 600_000 {
                p.push(format!("{key} must be 1 to 600000 (ms), not {ms}"));
            }
        }
        if self.oauth.backoff_max_ms < self.oauth.backoff_min_ms
            || self.oauth.backoff_max_ms > 3_600_000
        {
            p.push(format!(
                "oauth.backoff_max_ms must be between oauth.backoff_min_ms ({}) and 3600000, not {}",
                self.oauth.backoff_min_ms, self.oauth.backoff_max_ms
            ));
        }
        self.resolve_client_secret(&mut p);
        if self.oauth.client_id.is_empty() && !self.oauth.client_secret.is_empty() {
            p.push(
                "oauth.client_id is missing while a client secret is set: set oauth.client_id \
                 (MOLLIE_GATEWAY__OAUTH__CLIENT_ID) to your Mollie app's id (app_…)"
                    .into(),
            );
        }
        if http::HeaderName::from_bytes(self.merchants.header.as_bytes()).is_err() {
            p.push(format!(
                "merchants.header {:?} is not a valid HTTP header name",
                self.merchants.header
            ));
        } else if self.merchants.header.eq_ignore_ascii_case("authorization")
            || self.merchants.header.eq_ignore_ascii_case("host")
        {
            p.push("merchants.header may not be Authorization or Host".into());
        }
        for id in self.merchants.defaults.keys() {
            if let Err(e) = MerchantId::parse(id) {
                p.push(format!("[merchants.defaults.{id}]: merchant id {e}"));
            }
        }
        if self.store.path.as_os_str().is_empty() {
            p.push("store.path must not be empty".into());
        }
        if self.store.backend == StoreBackend::Redis {
            p.push(
                "store.backend = \"redis\" is not available in this version; use \"file\"".into(),
            );
        }
        if p.is_empty() {
            Ok(self)
        } else {
            Err(ConfigError { problems: p })
        }
    }

    fn resolve_client_secret(&mut self, p: &mut Vec<String>) {
        if self.oauth.client_secret_file.is_empty() {
            return;
        }
        if !self.oauth.client_secret.is_empty() {
            p.push("set only one of oauth.client_secret and oauth.client_secret_file".into());
            return;
        }
        match std::fs::read_to_string(&self.oauth.client_secret_file) {
            Ok(text) if !text.trim().is_empty() => {
                self.oauth.client_secret = Secret::new(text.trim());
            }
            Ok(_) => p.push(format!(
                "oauth.client_secret_file {} is empty",
                self.oauth.client_secret_file
            )),
            Err(e) => p.push(format!(
                "oauth.client_secret_file {} cannot be read: {e}",
                self.oauth.client_secret_file
            )),
        }
    }

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
        s
    }

    /// The effective configuration as TOML, secrets masked (`check-config`).
    pub fn to_masked_toml(&self) -> String {
        toml::to_string_pretty(&self.masked())
            .unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
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

fn check_addr(p: &mut Vec<String>, key: &str, value: &str) {
    if value.parse::<SocketAddr>().is_err() {
        p.push(format!(
            "{key} {value:?} is not an ip:port address (e.g. 127.0.0.1:8080)"
        ));
    }
}

/// Port 0: the system picks a free port at each start, so two listeners may both ask for it.
fn any_port(addr: &str) -> bool {
    addr.parse::<SocketAddr>().is_ok_and(|a| a.port() == 0)
}

fn check_readable(p: &mut Vec<String>, key: &str, path: &str) {
    if let Err(e) = std::fs::metadata(path) {
        p.push(format!("{key} {path} cannot be read: {e}"));
    }
}

fn check_url(p: &mut Vec<String>, key: &str, value: &str, optional: bool) {
    if value.is_empty() {
        if !optional {
            p.push(format!("{key} must be set"));
        }
        return;
    }
    match url::Url::parse(value) {
        Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host_str().is_some() => {}
        Ok(u) => p.push(format!(
            "{key} {value:?} must be an http:// or https:// URL with a host, not {}:",
            u.scheme()
        )),
        Err(e) => p.push(format!("{key} {value:?} is not a URL: {e}")),
    }
}

/// Whether an id is usable as a merchant id (CLI and admin input go through this).
pub fn merchant_id(raw: &str) -> Result<MerchantId, String> {
    MerchantId::parse(raw).map_err(|e| format!("merchant id {raw:?} {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_text_gives_defaults() {
        let s = parse("", &HashMap::new()).unwrap();
        assert_eq!(s.server.listen, DEFAULT_LISTEN);
        assert_eq!(s.upstream.base_url, DEFAULT_BASE_URL);
        assert_eq!(s.merchants.header, DEFAULT_MERCHANT_HEADER);
        assert!(!s.oauth.is_configured());
        assert!(s.oauth_setup_hint().unwrap().contains("oauth.client_id"));
    }

    #[test]
    fn env_overrides_file() {
        let s = parse(
            "[oauth]\nclient_id = \"app_file\"\ntoken_timeout_ms = 100\n",
            &env(&[
                ("MOLLIE_GATEWAY__OAUTH__CLIENT_ID", "app_env"),
                ("MOLLIE_GATEWAY__OAUTH__CLIENT_SECRET", "12345"),
                ("MOLLIE_GATEWAY__UPSTREAM__READ_TIMEOUT_MS", "1500"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(s.oauth.client_id, "app_env");
        assert_eq!(s.oauth.client_secret.expose(), "12345");
        assert_eq!(s.oauth.token_timeout_ms, 100);
        assert_eq!(s.upstream.read_timeout_ms, 1500);
    }

    #[test]
    fn unknown_keys_and_sections_are_rejected_all_at_once() {
        let err = parse(
            "[server]\nlisen = \"x\"\n[oauth]\nclient_idd = \"a\"\n[bogus]\na = 1\n",
            &HashMap::new(),
        )
        .unwrap_err();
        let all = err.problems.join("\n");
        assert_eq!(err.problems.len(), 3, "{all}");
        assert!(all.contains("lisen"), "{all}");
        assert!(all.contains("client_idd"), "{all}");
        assert!(all.contains("[bogus]"), "{all}");
    }

    #[test]
    fn every_semantic_problem_is_reported() {
        let err = parse(
            "[server]\nlisten = \"nope\"\nthreads = 0\n[upstream]\nbase_url = \"ftp://x\"\n\
             [oauth]\nclient_secret = \"s\"\n",
            &HashMap::new(),
        )
        .unwrap_err();
        let all = err.problems.join("\n");
        assert!(all.contains("server.listen"), "{all}");
        assert!(all.contains("server.threads"), "{all}");
        assert!(all.contains("upstream.base_url"), "{all}");
        assert!(all.contains("oauth.client_id is missing"), "{all}");
    }

    #[test]
    fn listeners_may_share_port_0_but_no_other_address() {
        let both = |addr: &str| {
            let server = format!("[server]\nlisten = \"{addr}\"\nadmin_listen = \"{addr}\"\n");
            parse(&server, &HashMap::new()).map(|s| s.server.listen)
        };
        assert_eq!(both("127.0.0.1:0").unwrap(), "127.0.0.1:0");
        let err = both("127.0.0.1:8080").unwrap_err().problems.join("\n");
        assert!(err.contains("server.admin_listen must differ"), "{err}");
    }

    #[test]
    fn secret_file_is_read_and_masked() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        std::fs::write(&f, "s3cr3t-from-file\n").unwrap();
        let s = parse(
            &format!(
                "[oauth]\nclient_id = \"app_x\"\nclient_secret_file = {:?}\n",
                f.display().to_string()
            ),
            &HashMap::new(),
        )
        .unwrap();
        assert_eq!(s.oauth.client_secret.expose(), "s3cr3t-from-file");
        let shown = s.to_masked_toml();
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("client_secret = \"***\""), "{shown}");
        assert!(!format!("{s:?}").contains("s3cr3t"));
    }

    #[test]
    fn missing_secret_file_is_named() {
        let err = parse(
            "[oauth]\nclient_id = \"a\"\nclient_secret_file = \"/nonexistent/s\"\n",
            &HashMap::new(),
        )
        .unwrap_err();
        assert!(err.problems[0].contains("oauth.client_secret_file"));
    }

    #[test]
    fn every_file_in_conf_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                load(Some(&path), &HashMap::new())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                n += 1;
            }
        }
        assert!(n >= 1);
    }
}
