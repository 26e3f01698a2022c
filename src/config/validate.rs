//! Validation of [`Settings`]: every value checked, every problem reported at once, each
//! naming its key. One method per section; `oauth.client_secret_file` and `admin.token_file`
//! are resolved here too.
//! Must not: read the process environment, or stop at the first problem.

use super::{
    ClientSettings, ConfigError, MerchantSettings, OAuthSettings, ServerSettings, Settings,
    StoreBackend, StoreSettings, UpstreamSettings,
};
use crate::types::{MerchantId, Secret};
use std::net::SocketAddr;

/// Problems found so far.
type Problems = Vec<String>;

impl Settings {
    /// Checks every value and resolves the secret files; reports all problems.
    pub fn validate(mut self) -> Result<Self, ConfigError> {
        let mut p = Problems::new();
        self.server.validate(&mut p);
        self.upstream.validate(&mut p);
        self.oauth.validate(&mut p);
        self.merchants.validate(&mut p);
        for (name, client) in &self.clients {
            client.validate(name, &mut p);
        }
        check_key_header(
            &mut p,
            &self.server.client_key_header,
            &self.merchants.header,
        );
        self.store.validate(&mut p);
        if self.store.backend == StoreBackend::Redis && self.oauth.state_secret.is_empty() {
            p.push(
                "oauth.state_secret (MOLLIE_GATEWAY__OAUTH__STATE_SECRET) or \
                 oauth.state_secret_file is required with store.backend = \"redis\": every \
                 replica must verify the OAuth states the others issued (the same value on all)"
                    .into(),
            );
        }
        let admin = &mut self.admin;
        resolve_secret_file(
            &mut p,
            ("admin.token", &mut admin.token),
            ("admin.token_file", &admin.token_file),
        );
        if p.is_empty() {
            Ok(self)
        } else {
            Err(ConfigError { problems: p })
        }
    }
}

impl ServerSettings {
    fn validate(&self, p: &mut Problems) {
        check_addr(p, "server.listen", &self.listen);
        check_addr(p, "server.admin_listen", &self.admin_listen);
        if self.listen == self.admin_listen && !any_port(&self.listen) {
            p.push("server.admin_listen must differ from server.listen".into());
        }
        if !self.oauth_listen.is_empty() {
            check_addr(p, "server.oauth_listen", &self.oauth_listen);
            let taken = [&self.listen, &self.admin_listen].contains(&&self.oauth_listen);
            if taken && !any_port(&self.oauth_listen) {
                p.push(
                    "server.oauth_listen must differ from server.listen and admin_listen".into(),
                );
            }
        }
        match (self.tls_cert.is_empty(), self.tls_key.is_empty()) {
            (true, true) => {}
            (false, false) => {
                check_readable(p, "server.tls_cert", &self.tls_cert);
                check_readable(p, "server.tls_key", &self.tls_key);
            }
            _ => p.push("server.tls_cert and server.tls_key must be set together".into()),
        }
        check_range(p, "server.threads", self.threads as u64, 1, 256);
        check_range(
            p,
            "server.max_connections",
            self.max_connections as u64,
            1,
            10_000_000,
        );
        check_range(p, "server.max_body_bytes", self.max_body_bytes, 1, u64::MAX);
        check_range(
            p,
            "server.max_header_bytes",
            self.max_header_bytes as u64,
            1024,
            crate::config::MAX_HEADER_BYTES_LIMIT as u64,
        );
        check_ms(p, "server.header_timeout_ms", self.header_timeout_ms);
    }
}

impl UpstreamSettings {
    fn validate(&self, p: &mut Problems) {
        if !self.ca_file.is_empty() {
            check_readable(p, "upstream.ca_file", &self.ca_file);
        }
        check_url(p, "upstream.base_url", &self.base_url, false);
        check_url(p, "upstream.token_url", &self.token_url, false);
        check_url(p, "upstream.public_base_url", &self.public_base_url, true);
        check_ms(p, "upstream.connect_timeout_ms", self.connect_timeout_ms);
        check_ms(p, "upstream.read_timeout_ms", self.read_timeout_ms);
    }
}

impl OAuthSettings {
    fn validate(&mut self, p: &mut Problems) {
        check_url(p, "oauth.authorize_url", &self.authorize_url, false);
        check_url(p, "oauth.redirect_uri", &self.redirect_uri, true);
        check_ms(p, "oauth.token_timeout_ms", self.token_timeout_ms);
        check_ms(p, "oauth.backoff_min_ms", self.backoff_min_ms);
        if self.backoff_max_ms < self.backoff_min_ms || self.backoff_max_ms > 3_600_000 {
            p.push(format!(
                "oauth.backoff_max_ms must be between oauth.backoff_min_ms ({}) and 3600000, not {}",
                self.backoff_min_ms, self.backoff_max_ms
            ));
        }
        self.resolve_client_secret(p);
        if self.client_id.is_empty() && !self.client_secret.is_empty() {
            p.push(
                "oauth.client_id is missing while a client secret is set: set oauth.client_id \
                 (MOLLIE_GATEWAY__OAUTH__CLIENT_ID) to your Mollie app's id (app_…)"
                    .into(),
            );
        }
    }

    fn resolve_client_secret(&mut self, p: &mut Problems) {
        resolve_secret_file(
            p,
            ("oauth.client_secret", &mut self.client_secret),
            ("oauth.client_secret_file", &self.client_secret_file),
        );
        resolve_secret_file(
            p,
            ("oauth.state_secret", &mut self.state_secret),
            ("oauth.state_secret_file", &self.state_secret_file),
        );
    }
}

/// A secret that may come from a file instead (`(key, value)`, `(file key, path)`): exactly
/// one source; the file's contents, trimmed, must not be empty. Problems name keys and the
/// path, never the contents.
fn resolve_secret_file(p: &mut Problems, secret: (&str, &mut Secret), file: (&str, &str)) {
    let ((key, value), (file_key, path)) = (secret, file);
    if path.is_empty() {
        return;
    }
    if !value.is_empty() {
        p.push(format!("set only one of {key} and {file_key}"));
        return;
    }
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => *value = Secret::new(text.trim()),
        Ok(_) => p.push(format!("{file_key} {path} is empty")),
        Err(e) => p.push(format!("{file_key} {path} cannot be read: {e}")),
    }
}

impl MerchantSettings {
    fn validate(&self, p: &mut Problems) {
        if http::HeaderName::from_bytes(self.header.as_bytes()).is_err() {
            p.push(format!(
                "merchants.header {:?} is not a valid HTTP header name",
                self.header
            ));
        } else if self.header.eq_ignore_ascii_case("authorization")
            || self.header.eq_ignore_ascii_case("host")
        {
            p.push("merchants.header may not be Authorization or Host".into());
        }
        for id in self.defaults.keys() {
            if let Err(e) = MerchantId::parse(id) {
                p.push(format!("[merchants.defaults.{id}]: merchant id {e}"));
            }
        }
    }
}

impl ClientSettings {
    fn validate(&self, name: &str, p: &mut Problems) {
        let key = format!("[clients.{name}]");
        let name_ok = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok {
            p.push(format!(
                "{key}: a client name is 1 to 64 letters, digits, `_` or `-` (it is a metric label)"
            ));
        }
        if self.key_sha256.is_empty() {
            p.push(format!(
                "{key}: key_sha256 is empty; `mollie-gateway clients new {name}` makes a key"
            ));
        }
        for hash in &self.key_sha256 {
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                p.push(format!(
                    "{key}: key_sha256 entries are 64 hex digits (the SHA-256 of a key, never the \
                     key itself)"
                ));
            }
        }
        if self.merchants.is_empty() {
            p.push(format!(
                "{key}: merchants is empty (list ids, or [\"*\"] for all)"
            ));
        }
        for id in self.merchants.iter().filter(|m| *m != "*") {
            if let Err(e) = MerchantId::parse(id) {
                p.push(format!("{key}: merchant id {id:?} {e}"));
            }
        }
        let default = self.default_merchant.as_str();
        let allowed = self.merchants.iter().any(|m| m == "*" || m == default);
        if !default.is_empty() && !allowed {
            p.push(format!(
                "{key}: default_merchant {default:?} is not in its merchants"
            ));
        }
    }
}

impl StoreSettings {
    fn validate(&self, p: &mut Problems) {
        if self.path.as_os_str().is_empty() {
            p.push("store.path must not be empty".into());
        }
        if self.backend == StoreBackend::Redis {
            self.validate_redis(p);
        }
        if !self.encryption_key_file.is_empty() {
            // Parsed, not only opened: a bad line is a configuration error naming its number.
            let path = std::path::Path::new(&self.encryption_key_file);
            if let Err(e) = crate::store::crypto::Keyring::load(path) {
                p.push(e.to_string());
            }
        }
    }

    fn validate_redis(&self, p: &mut Problems) {
        // The URL itself is never repeated: it may hold a password.
        match url::Url::parse(&self.redis_url) {
            Ok(u) if u.scheme() == "rediss" && u.fragment().is_some() => p.push(
                "store.redis_url: a rediss:// URL takes no #fragment (#insecure is not \
                 supported: trust a private CA with store.redis_ca_file)"
                    .into(),
            ),
            Ok(u) if ["redis", "rediss", "redis+unix", "unix"].contains(&u.scheme()) => {
                // What the redis crate itself makes of it (host, port, db, user, password,
                // the CA file).
                let ca = Some(&self.redis_ca_file).filter(|f| !f.is_empty());
                let ca = ca.map(std::path::Path::new);
                if let Err(e) = crate::store::redis::client(&self.redis_url, ca) {
                    p.push(e.to_string().replace("credential store (redis): ", ""));
                }
            }
            Ok(_) => {
                p.push("store.redis_url must be a redis://, rediss:// or redis+unix:// URL".into())
            }
            Err(e) => p.push(format!(
                "store.redis_url does not parse ({e}); it must be a redis://, rediss:// or \
                 redis+unix:// URL"
            )),
        }
        if self.key_prefix.is_empty() {
            p.push("store.key_prefix must not be empty with the redis backend".into());
        }
        if self.fallback_path.as_os_str().is_empty() {
            p.push("store.fallback_path must not be empty with the redis backend".into());
        }
    }
}

fn check_addr(p: &mut Problems, key: &str, value: &str) {
    if value.parse::<SocketAddr>().is_err() {
        p.push(format!(
            "{key} {value:?} is not an ip:port address (e.g. 127.0.0.1:8080)"
        ));
    }
}

fn check_key_header(p: &mut Problems, header: &str, merchant_header: &str) {
    if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
        p.push(format!(
            "server.client_key_header {header:?} is not a valid HTTP header name"
        ));
    } else if ["authorization", "host", merchant_header]
        .iter()
        .any(|h| header.eq_ignore_ascii_case(h))
    {
        p.push(
            "server.client_key_header may not be Authorization, Host or merchants.header".into(),
        );
    }
}

/// Port 0: the system picks a free port at each start, so two listeners may both ask for it.
fn any_port(addr: &str) -> bool {
    addr.parse::<SocketAddr>().is_ok_and(|a| a.port() == 0)
}

fn check_readable(p: &mut Problems, key: &str, path: &str) {
    if let Err(e) = std::fs::metadata(path) {
        p.push(format!("{key} {path} cannot be read: {e}"));
    }
}

fn check_range(p: &mut Problems, key: &str, value: u64, min: u64, max: u64) {
    if !(min..=max).contains(&value) {
        match max {
            u64::MAX => p.push(format!("{key} must be at least {min}, not {value}")),
            _ => p.push(format!("{key} must be {min} to {max}, not {value}")),
        }
    }
}

/// A duration in milliseconds: 1 ms to 10 minutes.
fn check_ms(p: &mut Problems, key: &str, ms: u64) {
    if ms == 0 || ms > 600_000 {
        p.push(format!("{key} must be 1 to 600000 (ms), not {ms}"));
    }
}

fn check_url(p: &mut Problems, key: &str, value: &str, optional: bool) {
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
