//! OAuth onboarding on the admin listener (no admin token: the person clicking through is a
//! merchant, and the signed `state` ties the callback to a connect the gateway issued):
//!
//! - `GET /oauth/connect?merchant=ID`: 302 to `oauth.authorize_url` with `client_id`,
//!   `redirect_uri`, `scope`, `response_type=code`, `approval_prompt=auto` and a `state`;
//!   503 with a page naming the keys to set while the OAuth app is not configured.
//! - `GET /oauth/callback?code=…&state=…`: verifies the state, exchanges the code and stores
//!   the merchant; `?error=…&state=…` (the merchant declined) stores nothing.
//!
//! The `state` (in [`state`]) is signed with `oauth.state_secret` (empty: a random key per
//! process), names the merchant, expires [`STATE_TTL_SECS`] after the connect and is accepted
//! once. Every answer is a small self-contained HTML page; anything echoed in it is escaped.
//! Must not: log or show a code, a state or a token.

mod state;

pub use state::{StateBook, StateError, STATE_TTL_SECS};

use crate::admin::{discard_body, reply};
use crate::config::Settings;
use crate::tokens::TokenManager;
use crate::types::{MerchantId, Secret};
use http::{Response, StatusCode};
use pingora::protocols::http::ServerSession;
use std::collections::HashMap;

/// Callback query values longer than this are refused (codes and states are far shorter).
const MAX_PARAM_LEN: usize = 4096;

/// The `/oauth/…` pages.
pub struct Onboarding {
    tokens: TokenManager,
    book: StateBook,
    client_id: String,
    redirect_uri: String,
    authorize_url: String,
    scopes: String,
    /// The `oauth.*` keys still to set; empty when onboarding can work.
    missing: Vec<&'static str>,
}

fn unix_now() -> u64 {
    crate::store::unix_now()
}

impl Onboarding {
    pub fn new(settings: &Settings, tokens: TokenManager) -> Result<Onboarding, String> {
        let o = &settings.oauth;
        let mut missing = Vec::new();
        if o.client_id.is_empty() {
            missing.push("oauth.client_id (MOLLIE_GATEWAY__OAUTH__CLIENT_ID)");
        }
        if o.client_secret.is_empty() {
            missing.push(
                "oauth.client_secret (MOLLIE_GATEWAY__OAUTH__CLIENT_SECRET) or oauth.client_secret_file",
            );
        }
        if o.redirect_uri.is_empty() {
            missing.push("oauth.redirect_uri (MOLLIE_GATEWAY__OAUTH__REDIRECT_URI)");
        }
        Ok(Onboarding {
            tokens,
            book: StateBook::from_secret(&o.state_secret)?,
            client_id: o.client_id.clone(),
            redirect_uri: o.redirect_uri.clone(),
            authorize_url: o.authorize_url.clone(),
            scopes: o.scopes.clone(),
            missing,
        })
    }

    /// Answers one `/oauth/…` request.
    pub async fn handle(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        discard_body(session).await;
        let req = session.req_header();
        let path = req.uri.path().to_string();
        let query = parse_query(req.uri.query().unwrap_or(""));
        if req.method != http::Method::GET {
            return page(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method not allowed",
                &["Open this address in a browser (GET)."],
            );
        }
        match path.as_str() {
            "/oauth/connect" => self.connect(&query),
            "/oauth/callback" => self.callback(&query).await,
            _ => page(
                StatusCode::NOT_FOUND,
                "Not found",
                &["Start at /oauth/connect?merchant=ID."],
            ),
        }
    }

    fn not_configured(&self) -> Response<Vec<u8>> {
        let keys: Vec<String> = self.missing.iter().map(|k| format!("• {k}")).collect();
        let mut lines = vec!["The gateway's Mollie OAuth app is not configured yet. Set:"];
        lines.extend(keys.iter().map(String::as_str));
        lines.push("Then restart the gateway and open this link again.");
        let mut resp = page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Onboarding is not configured",
            &lines,
        );
        resp.headers_mut()
            .insert("Retry-After", http::HeaderValue::from_static("60"));
        resp
    }

    fn connect(&self, query: &HashMap<String, String>) -> Response<Vec<u8>> {
        if !self.missing.is_empty() {
            return self.not_configured();
        }
        let merchant = match query.get("merchant").map(|m| MerchantId::parse(m)) {
            Some(Ok(m)) => m,
            None => {
                return bad("Add ?merchant=ID: the id your services send in the merchant header.")
            }
            Some(Err(e)) => return bad(&format!("The merchant id {e}.")),
        };
        let state = match self.book.issue(&merchant, unix_now()) {
            Ok(state) => state,
            Err(e) => {
                tracing::error!(error = %e, "cannot issue an OAuth state");
                return page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal error",
                    &["Try again."],
                );
            }
        };
        let Ok(mut url) = url::Url::parse(&self.authorize_url) else {
            return page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "oauth.authorize_url is not a URL",
                &[],
            );
        };
        url.query_pairs_mut()
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("scope", &self.scopes)
            .append_pair("response_type", "code")
            .append_pair("approval_prompt", "auto")
            .append_pair("state", &state);
        tracing::info!(merchant = %merchant, "OAuth onboarding: sent to Mollie's authorize page");
        let mut resp = page(
            StatusCode::FOUND,
            "Continue at Mollie",
            &[&format!(
                "Merchant {merchant}: continue at Mollie to authorize the gateway."
            )],
        );
        if let Ok(location) = http::HeaderValue::from_str(url.as_str()) {
            resp.headers_mut().insert(http::header::LOCATION, location);
        }
        resp
    }

    async fn callback(&self, query: &HashMap<String, String>) -> Response<Vec<u8>> {
        if !self.missing.is_empty() {
            return self.not_configured();
        }
        let Some(state) = query.get("state") else {
            return bad("The link has no state: start again at /oauth/connect?merchant=ID.");
        };
        let merchant = match self.book.redeem(state, unix_now()) {
            Ok(m) => m,
            Err(e) => {
                tracing::info!(error = %e, "OAuth callback refused");
                let again = match &e {
                    StateError::Invalid => "Start again at /oauth/connect?merchant=ID.".to_string(),
                    StateError::Expired(m) | StateError::Replayed(m) => {
                        format!("Start again at /oauth/connect?merchant={m}.")
                    }
                };
                return page(
                    StatusCode::BAD_REQUEST,
                    "Not connected",
                    &[&format!("{e}."), &again],
                );
            }
        };
        if let Some(error) = query.get("error") {
            // Mollie sends an RFC 6749 error code; anything else is not echoed as given.
            let simple = error.len() <= 64
                && error
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_');
            let error = if simple {
                error.as_str()
            } else {
                "unrecognized error"
            };
            tracing::info!(merchant = %merchant, error = %error, "OAuth onboarding: not authorized");
            let mut lines = vec![format!(
                "Merchant {merchant} did not authorize the gateway ({error}); nothing was stored."
            )];
            if let Some(d) = query.get("error_description") {
                lines.push(format!("Mollie said: {d}"));
            }
            lines.push(format!(
                "To try again, open /oauth/connect?merchant={merchant}."
            ));
            let status = if error == "access_denied" {
                StatusCode::OK
            } else {
                StatusCode::BAD_REQUEST
            };
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            return page(status, "Not connected", &lines);
        }
        let Some(code) = query.get("code").filter(|c| !c.is_empty()) else {
            return bad("Mollie's answer has no code: start again.");
        };
        let code = Secret::new(code.clone());
        match self
            .tokens
            .add_authorization_code(&merchant, &code, Some(&self.redirect_uri))
            .await
        {
            Ok(()) => {
                tracing::info!(merchant = %merchant, "OAuth onboarding: merchant connected");
                page(
                    StatusCode::OK,
                    "Connected",
                    &[&format!(
                        "Merchant {merchant} is connected: the gateway now calls Mollie on its behalf. You can close this page."
                    )],
                )
            }
            Err(e) => {
                let e = e.to_gateway(&merchant);
                tracing::warn!(merchant = %merchant, code = e.code(), "OAuth onboarding: code exchange failed");
                let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_GATEWAY);
                page(
                    status,
                    "Not connected",
                    &[
                        &format!("{e}."),
                        &format!("Start again at /oauth/connect?merchant={merchant}."),
                    ],
                )
            }
        }
    }
}

/// The query's parameters; a repeated or over-long one counts as absent.
fn parse_query(query: &str) -> HashMap<String, String> {
    let mut seen: HashMap<String, Option<String>> = HashMap::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let v = (v.len() <= MAX_PARAM_LEN).then(|| v.into_owned());
        seen.entry(k.into_owned())
            .and_modify(|old| *old = None)
            .or_insert(v);
    }
    seen.into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect()
}

fn bad(line: &str) -> Response<Vec<u8>> {
    page(StatusCode::BAD_REQUEST, "Not connected", &[line])
}

/// Escapes text for HTML element content and attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A small self-contained HTML page; `title` and every line are escaped.
fn page(status: StatusCode, title: &str, lines: &[&str]) -> Response<Vec<u8>> {
    let title = escape_html(title);
    let body: String = lines
        .iter()
        .map(|l| format!("<p>{}</p>", escape_html(l)))
        .collect();
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{title} · mollie-gateway</title><style>body{{font-family:system-ui,sans-serif;\
         max-width:40rem;margin:3rem auto;padding:0 1rem;line-height:1.5;color:#222}}\
         h1{{font-size:1.4rem}}</style></head><body><h1>{title}</h1>{body}</body></html>"
    );
    let mut resp = reply(status, "text/html; charset=utf-8", html.into_bytes());
    let h = resp.headers_mut();
    h.insert(
        "Content-Security-Policy",
        http::HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    h.insert(
        "Referrer-Policy",
        http::HeaderValue::from_static("no-referrer"),
    );
    h.insert("X-Frame-Options", http::HeaderValue::from_static("DENY"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_escape_what_they_echo() {
        let resp = page(
            StatusCode::OK,
            "<t>",
            &["<script>alert('x')</script> & \"q\""],
        );
        let html = String::from_utf8(resp.into_body()).unwrap();
        assert!(!html.contains("<script>"));
        assert!(
            html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;")
        );
        assert!(html.contains("<h1>&lt;t&gt;</h1>"));
    }

    #[test]
    fn repeated_parameters_count_as_absent() {
        let q = parse_query("state=a&state=b&code=c%20d");
        assert_eq!(q.get("state"), None);
        assert_eq!(q.get("code").map(String::as_str), Some("c d"));
    }
}
