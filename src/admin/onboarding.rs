//! OAuth onboarding on the admin listener (no admin token: the person clicking through is a
//! merchant, and the signed `state` ties the callback to a connect the gateway issued):
//!
//! - `GET /oauth/connect?merchant=ID`: 302 to `oauth.authorize_url` with `client_id`,
//!   `redirect_uri`, `scope`, `response_type=code`, `approval_prompt=auto` and a `state`;
//!   503 with a page naming the keys to set while the OAuth app is not configured.
//! - `GET /oauth/callback?code=…&state=…`: verifies the state, exchanges the code and stores
//!   the merchant; `?error=…&state=…` (the merchant declined) stores nothing.
//!
//! The `state` (in [`super::state`]) is signed with `oauth.state_secret` (empty: a random key
//! per process), names the merchant, expires after [`STATE_TTL_SECS`](super::state::STATE_TTL_SECS) and is accepted once
//! (across replicas with a shared store: [`CredentialStore::use_once`]).
//! Every answer, errors included (another method: 405, another `/oauth/…` path: 404), is a
//! small self-contained HTML [`Page`] for a browser; anything echoed in it is escaped.
//! Must not: log or show a code, a state or a token.

use super::state::{StateBook, StateError};
use crate::config::Settings;
use crate::store::{unix_now, CredentialStore};
use crate::tokens::TokenManager;
use crate::types::{MerchantId, Secret};
use axum::extract::{RawQuery, State};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::{HeaderValue, StatusCode};
use std::collections::HashMap;
use std::sync::Arc;

/// Callback query values longer than this are refused (codes and states are far shorter).
const MAX_PARAM_LEN: usize = 4096;

/// The `/oauth/…` pages.
pub struct Onboarding {
    tokens: TokenManager,
    /// Shared stores remember used states across replicas.
    store: Arc<dyn CredentialStore>,
    book: StateBook,
    client_id: String,
    redirect_uri: String,
    authorize_url: String,
    scopes: String,
    /// The `oauth.*` keys still to set; empty when onboarding can work.
    missing: Vec<&'static str>,
}

type Query = HashMap<String, String>;

impl Onboarding {
    /// `store` keeps used states across replicas ([`CredentialStore::use_once`]).
    pub fn new(
        settings: &Settings,
        tokens: TokenManager,
        store: Arc<dyn CredentialStore>,
    ) -> Result<Onboarding, String> {
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
            store,
            book: StateBook::from_secret(&o.state_secret)?,
            client_id: o.client_id.clone(),
            redirect_uri: o.redirect_uri.clone(),
            authorize_url: o.authorize_url.clone(),
            scopes: o.scopes.clone(),
            missing,
        })
    }

    /// `/oauth/connect`, `/oauth/callback`, and HTML 404/405 pages for the rest of `/oauth/…`.
    pub fn router(self) -> Router {
        let wrong_method = || async {
            Page::new(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")
                .line("Open this address in a browser (GET).")
        };
        let unknown = || async {
            Page::new(StatusCode::NOT_FOUND, "Not found")
                .line("Start at /oauth/connect?merchant=ID.")
        };
        Router::new()
            .route("/oauth/connect", get(connect).fallback(wrong_method))
            .route("/oauth/callback", get(callback).fallback(wrong_method))
            .route("/oauth/{*rest}", get(unknown).fallback(wrong_method))
            .with_state(Arc::new(self))
    }

    /// 503 with the keys to set, while the OAuth app is not configured.
    fn configured(&self) -> Result<(), Page> {
        if self.missing.is_empty() {
            return Ok(());
        }
        let mut page = Page::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Onboarding is not configured",
        )
        .line("The gateway's Mollie OAuth app is not configured yet. Set:");
        for key in &self.missing {
            page = page.line(format!("• {key}"));
        }
        page.retry_after = true;
        Err(page.line("Then restart the gateway and open this link again."))
    }

    /// 302 to Mollie's authorize page with a fresh state for `?merchant=`.
    fn connect(&self, query: &Query) -> Result<Page, Page> {
        self.configured()?;
        let merchant = match query.get("merchant").map(|m| MerchantId::parse(m)) {
            Some(Ok(m)) => m,
            None => {
                return Err(bad(
                    "Add ?merchant=ID: the id your services send in the merchant header.",
                ))
            }
            Some(Err(e)) => return Err(bad(format!("The merchant id {e}."))),
        };
        let state = self.book.issue(&merchant, unix_now()).map_err(|e| {
            tracing::error!(error = %e, "cannot issue an OAuth state");
            Page::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal error").line("Try again.")
        })?;
        let mut url = url::Url::parse(&self.authorize_url).map_err(|_| {
            Page::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "oauth.authorize_url is not a URL",
            )
        })?;
        url.query_pairs_mut()
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("scope", &self.scopes)
            .append_pair("response_type", "code")
            .append_pair("approval_prompt", "auto")
            .append_pair("state", &state);
        tracing::info!(merchant = %merchant, "OAuth onboarding: sent to Mollie's authorize page");
        let mut page = Page::new(StatusCode::FOUND, "Continue at Mollie").line(format!(
            "Merchant {merchant}: continue at Mollie to authorize the gateway."
        ));
        page.location = Some(url.into());
        Ok(page)
    }

    /// The callback's steps: the app is configured, the state is redeemed (it names the
    /// merchant), the merchant did not decline at Mollie, the code is exchanged and stored.
    /// `Err` is a page that ends the flow early.
    async fn callback(&self, query: &Query) -> Result<Page, Page> {
        self.configured()?;
        let merchant = self.redeem(query).await?;
        if let Some(error) = query.get("error") {
            return Err(declined(&merchant, error, query.get("error_description")));
        }
        let Some(code) = query.get("code").filter(|c| !c.is_empty()) else {
            return Err(bad("Mollie's answer has no code: start again."));
        };
        self.exchange(&merchant, &Secret::new(code.clone())).await
    }

    /// Verifies and uses up the `state`: the merchant it was issued for.
    async fn redeem(&self, query: &Query) -> Result<MerchantId, Page> {
        let Some(state) = query.get("state") else {
            return Err(bad(
                "The link has no state: start again at /oauth/connect?merchant=ID.",
            ));
        };
        let now = unix_now();
        // A shared store first (another replica may have used it), then this process's book.
        let used = match self.book.verify(state, now) {
            Ok((merchant, expires, nonce)) => match self.store.use_once(&nonce, expires).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(StateError::Replayed(merchant)),
                Err(e) => {
                    tracing::error!(merchant = %merchant, error = %e, "OAuth callback: cannot check the state in the store");
                    let mut page = Page::new(StatusCode::SERVICE_UNAVAILABLE, "Not connected")
                            .line("The gateway cannot reach its credential store right now; nothing was stored.")
                            .line("Open this link again in a minute.");
                    page.retry_after = true;
                    return Err(page);
                }
            },
            Err(e) => Err(e),
        };
        used.and_then(|()| self.book.redeem(state, now))
            .map_err(|e| {
                tracing::info!(error = %e, "OAuth callback refused");
                let again = match &e {
                    StateError::Invalid => "Start again at /oauth/connect?merchant=ID.".to_string(),
                    StateError::Expired(m) | StateError::Replayed(m) => {
                        format!("Start again at /oauth/connect?merchant={m}.")
                    }
                };
                bad(format!("{e}.")).line(again)
            })
    }

    /// Exchanges the code (grant `authorization_code`) and stores the merchant.
    async fn exchange(&self, merchant: &MerchantId, code: &Secret) -> Result<Page, Page> {
        let added = self
            .tokens
            .add_authorization_code(merchant, code, Some(&self.redirect_uri))
            .await;
        if let Err(e) = added {
            let e = e.to_gateway(merchant);
            tracing::warn!(merchant = %merchant, code = e.code(), "OAuth onboarding: code exchange failed");
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_GATEWAY);
            return Err(Page::new(status, "Not connected")
                .line(format!("{e}."))
                .line(format!(
                    "Start again at /oauth/connect?merchant={merchant}."
                )));
        }
        tracing::info!(merchant = %merchant, "OAuth onboarding: merchant connected");
        Ok(Page::new(StatusCode::OK, "Connected").line(format!(
            "Merchant {merchant} is connected: the gateway now calls Mollie on its behalf. \
             You can close this page."
        )))
    }
}

async fn connect(State(o): State<Arc<Onboarding>>, RawQuery(q): RawQuery) -> Page {
    let query = parse_query(q.as_deref().unwrap_or(""));
    o.connect(&query).unwrap_or_else(|page| page)
}

async fn callback(State(o): State<Arc<Onboarding>>, RawQuery(q): RawQuery) -> Page {
    let query = parse_query(q.as_deref().unwrap_or(""));
    o.callback(&query).await.unwrap_or_else(|page| page)
}

/// The merchant declined at Mollie (`?error=…`): 200 for `access_denied`, 400 otherwise;
/// nothing is stored.
fn declined(merchant: &MerchantId, error: &str, description: Option<&String>) -> Page {
    // Mollie sends an RFC 6749 error code; anything else is not echoed as given.
    let simple = error.len() <= 64
        && error
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let error = if simple { error } else { "unrecognized error" };
    tracing::info!(merchant = %merchant, error = %error, "OAuth onboarding: not authorized");
    let status = if error == "access_denied" {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    let mut page = Page::new(status, "Not connected").line(format!(
        "Merchant {merchant} did not authorize the gateway ({error}); nothing was stored."
    ));
    if let Some(d) = description {
        page = page.line(format!("Mollie said: {d}"));
    }
    page.line(format!(
        "To try again, open /oauth/connect?merchant={merchant}."
    ))
}

/// The query's parameters; a repeated or over-long one counts as absent.
fn parse_query(query: &str) -> Query {
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

fn bad(line: impl Into<String>) -> Page {
    Page::new(StatusCode::BAD_REQUEST, "Not connected").line(line)
}

/// One small self-contained HTML page: a title and lines of text, all escaped when rendered.
pub struct Page {
    status: StatusCode,
    title: &'static str,
    lines: Vec<String>,
    /// The redirect of `/oauth/connect`.
    location: Option<String>,
    /// `Retry-After: 60` (onboarding not configured yet).
    retry_after: bool,
}

impl Page {
    fn new(status: StatusCode, title: &'static str) -> Page {
        Page {
            status,
            title,
            lines: Vec::new(),
            location: None,
            retry_after: false,
        }
    }

    fn line(mut self, line: impl Into<String>) -> Page {
        self.lines.push(line.into());
        self
    }
}

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        let headers = [
            (
                "Content-Security-Policy",
                "default-src 'none'; style-src 'unsafe-inline'",
            ),
            ("Referrer-Policy", "no-referrer"),
            ("X-Frame-Options", "DENY"),
        ];
        let mut resp = (self.status, headers, Html(html(self.title, &self.lines))).into_response();
        let h = resp.headers_mut();
        if let Some(location) = self.location.and_then(|l| HeaderValue::try_from(l).ok()) {
            h.insert(http::header::LOCATION, location);
        }
        if self.retry_after {
            h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("60"));
        }
        resp
    }
}

fn html(title: &str, lines: &[String]) -> String {
    let title = escape_html(title);
    let body: String = lines
        .iter()
        .map(|l| format!("<p>{}</p>", escape_html(l)))
        .collect();
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{title} · mollie-gateway</title><style>body{{font-family:system-ui,sans-serif;\
         max-width:40rem;margin:3rem auto;padding:0 1rem;line-height:1.5;color:#222}}\
         h1{{font-size:1.4rem}}</style></head><body><h1>{title}</h1>{body}</body></html>"
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_escape_what_they_echo() {
        let html = html("<t>", &["<script>alert('x')</script> & \"q\"".to_string()]);
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
