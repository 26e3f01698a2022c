#![allow(dead_code)]
//! In-process fake of Mollie's OAuth token endpoint (`POST /oauth2/tokens`) and
//! its v2 API (`ANY /v2/*`), for the integration tests.
//!
//! Self-contained: depends only on dev/regular dependencies of the crate
//! (axum, tokio, serde_json, base64, fastrand).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use base64::Engine as _;

/// Payments, methods and `/v2/headers` (see that file).
#[path = "fake_resources.rs"]
pub mod fake_resources;

pub const CLIENT_ID: &str = "app_fakeclient";
pub const CLIENT_SECRET: &str = "fake_client_secret_s3cr3t";

/// Mollie's exact 401 body for the v2 API.
pub const UNAUTHORIZED_BODY: &str = r#"{"status":401,"title":"Unauthorized Request","detail":"Missing authentication, or failed to authenticate","_links":{"documentation":{"href":"https://docs.mollie.com/overview/authentication","type":"text/html"}}}"#;

/// Default lifetime (seconds) of issued access tokens.
pub const DEFAULT_TOKEN_LIFETIME: u64 = 3600;

const SCOPE: &str = "payments.read payments.write";

/// How the token endpoint behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenMode {
    #[default]
    Normal,
    /// 503 with an HTML body.
    ServerError,
    /// 500 with an HTML body.
    InternalError,
    /// Never answers (sleeps one hour).
    Hang,
    /// 200 with body `<html>oops</html>`.
    NotJson,
    /// 200 `{"token_type":"bearer","expires_in":3600}`.
    NoAccessToken,
    /// 401 `{"error":"invalid_client",...}`.
    InvalidClient,
}

/// One token-endpoint request as received.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub grant_type: String,
    pub basic_auth_ok: bool,
    pub content_type: String,
    pub params: HashMap<String, String>,
}

/// Where a refresh token presented in a refresh grant stands in its merchant's rotation
/// chain when the fake answers it ([`FakeMollie::presentations`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented {
    /// The merchant's newest refresh token.
    Latest,
    /// The one it replaced, whose successor was never used (valid under the grace rule).
    Predecessor,
    /// Any earlier one of that merchant (always `invalid_grant`).
    Older,
    /// Never issued, or the merchant was revoked (`invalid_grant`).
    Unknown,
}

/// One refresh grant answered by the fake (not counted in a failure mode).
#[derive(Debug, Clone)]
pub struct Presentation {
    pub merchant: String,
    pub presented: Presented,
    /// The grant was answered with new tokens (else `invalid_grant`).
    pub accepted: bool,
    /// When the fake received it and when it answered it.
    pub received: Instant,
    pub at: Instant,
}

/// One `DELETE /oauth2/tokens` (revocation) as received.
#[derive(Debug, Clone)]
pub struct RevocationRequest {
    pub basic_auth_ok: bool,
    pub content_type: String,
    pub params: HashMap<String, String>,
}

/// One `/v2` request as received.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Lowercase names; repeated names kept (grouped per name, as hyper's `HeaderMap` yields them).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// `None` if the request was rejected with 401.
    pub merchant: Option<String>,
}

impl ApiRequest {
    /// All values of a header (name compared case-insensitively).
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// First value of a header (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).into_iter().next()
    }
}

/// Handle to a running fake Mollie. Cheap to clone.
#[derive(Clone)]
pub struct FakeMollie {
    inner: Arc<Inner>,
}

struct Inner {
    addr: SocketAddr,
    state: Mutex<FakeState>,
    token_calls: AtomicUsize,
    api_calls_total: AtomicUsize,
    api_401s: AtomicUsize,
    /// Refresh tokens presented that were no longer (or never) valid.
    dead_refresh_tokens: AtomicUsize,
    resources: fake_resources::Resources,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Default)]
struct Merchant {
    /// The single currently valid refresh token (None once revoked).
    refresh_token: Option<String>,
    /// With the grace rule: the refresh token `refresh_token` replaced, still valid until
    /// `refresh_token` is first used.
    previous_refresh: Option<String>,
    token_calls: usize,
    api_calls: usize,
    issued: usize,
    current_access: Option<String>,
}

struct AccessToken {
    merchant: String,
    issued_at: Instant,
    lifetime: Duration,
    invalidated: bool,
}

struct Code {
    merchant: String,
    redirect_uri: Option<String>,
    used: bool,
}

struct FakeState {
    merchants: HashMap<String, Merchant>,
    /// Every refresh token ever handed out -> merchant (for attribution).
    refresh_owner: HashMap<String, String>,
    codes: HashMap<String, Code>,
    access: HashMap<String, AccessToken>,
    lifetime_secs: u64,
    omit_expires_in: bool,
    rotate: bool,
    /// Rotation's grace rule (see [`FakeMollie::set_rotation_grace`]).
    grace: bool,
    presentations: Vec<Presentation>,
    /// Woken after every refresh grant answered with new tokens.
    answered: Arc<tokio::sync::Notify>,
    mode: TokenMode,
    delay: Duration,
    content_type: String,
    token_requests: Vec<TokenRequest>,
    api_requests: Vec<ApiRequest>,
    revocations: Vec<RevocationRequest>,
    /// Revocations answer 503 (recorded all the same).
    fail_revocations: bool,
    /// Every secret issued is appended here (see [`secrets_dir`]); empty = not recorded.
    secrets_file: PathBuf,
    /// Keep every token and API request (off for a long run: see [`FakeMollie::lean`]).
    record_requests: bool,
}

impl FakeState {
    fn new() -> Self {
        FakeState {
            merchants: HashMap::new(),
            refresh_owner: HashMap::new(),
            codes: HashMap::new(),
            access: HashMap::new(),
            lifetime_secs: DEFAULT_TOKEN_LIFETIME,
            omit_expires_in: false,
            rotate: false,
            grace: false,
            presentations: Vec::new(),
            answered: Arc::new(tokio::sync::Notify::new()),
            mode: TokenMode::Normal,
            delay: Duration::ZERO,
            content_type: "text/html; charset=utf-8".to_string(),
            token_requests: Vec::new(),
            api_requests: Vec::new(),
            revocations: Vec::new(),
            fail_revocations: false,
            secrets_file: PathBuf::new(),
            record_requests: true,
        }
    }

    /// Appends an issued access token, refresh token or code to `secrets_file`.
    fn record_secret(&self, secret: &str) {
        use std::io::Write;
        if self.secrets_file.as_os_str().is_empty() {
            return;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.secrets_file)
            .and_then(|mut f| writeln!(f, "{secret}"))
            .expect("record an issued secret");
    }

    fn set_refresh(&mut self, merchant: &str, refresh_token: &str) {
        self.record_secret(refresh_token);
        self.refresh_owner
            .insert(refresh_token.to_string(), merchant.to_string());
        let m = self.merchants.entry(merchant.to_string()).or_default();
        m.refresh_token = Some(refresh_token.to_string());
        m.previous_refresh = None;
    }

    fn refresh_valid_for(&self, refresh_token: &str) -> Option<String> {
        match self.presented(refresh_token) {
            (Some(m), Presented::Latest | Presented::Predecessor) => Some(m),
            _ => None,
        }
    }

    /// Whose `refresh_token` is and where it stands in that merchant's rotation chain.
    fn presented(&self, refresh_token: &str) -> (Option<String>, Presented) {
        let Some(owner) = self.refresh_owner.get(refresh_token) else {
            return (None, Presented::Unknown);
        };
        let Some(m) = self.merchants.get(owner) else {
            return (Some(owner.clone()), Presented::Unknown);
        };
        let kind = if m.refresh_token.is_none() {
            Presented::Unknown
        } else if m.refresh_token.as_deref() == Some(refresh_token) {
            Presented::Latest
        } else if self.grace && m.previous_refresh.as_deref() == Some(refresh_token) {
            Presented::Predecessor
        } else {
            Presented::Older
        };
        (Some(owner.clone()), kind)
    }

    /// Rotates `merchant`'s refresh token after a refresh grant that presented `used`:
    /// with the grace rule, the token it replaces stays valid until the new one is used.
    fn rotate_after(&mut self, merchant: &str, used: &str) -> String {
        let new_rt = format!("refresh_{merchant}_{}", rand_alnum(16));
        self.record_secret(&new_rt);
        self.refresh_owner
            .insert(new_rt.clone(), merchant.to_string());
        let m = self.merchants.entry(merchant.to_string()).or_default();
        // Presenting the newest token uses it: its predecessor dies. Presenting the
        // predecessor (its successor never used) keeps the predecessor as the one in grace.
        if m.refresh_token.as_deref() == Some(used) {
            m.previous_refresh = m.refresh_token.take();
        }
        m.refresh_token = Some(new_rt.clone());
        new_rt
    }

    fn invalidate_access(&mut self, merchant: &str) {
        for t in self.access.values_mut() {
            if t.merchant == merchant {
                t.invalidated = true;
            }
        }
    }

    fn merchant_for_access(&self, token: &str) -> Option<String> {
        let t = self.access.get(token)?;
        (!t.invalidated && t.issued_at.elapsed() < t.lifetime).then(|| t.merchant.clone())
    }

    /// Issues a new access token for `merchant` and builds the 200 response.
    fn issue(&mut self, merchant: &str, refresh_token: &str) -> Response {
        let lifetime_secs = if self.omit_expires_in {
            DEFAULT_TOKEN_LIFETIME
        } else {
            self.lifetime_secs
        };
        let m = self.merchants.entry(merchant.to_string()).or_default();
        m.issued += 1;
        let token = format!("access_{merchant}_{}_{}", m.issued, rand_alnum(12));
        m.current_access = Some(token.clone());
        self.record_secret(&token);
        self.access.insert(
            token.clone(),
            AccessToken {
                merchant: merchant.to_string(),
                issued_at: Instant::now(),
                lifetime: Duration::from_secs(lifetime_secs),
                invalidated: false,
            },
        );
        let mut body = serde_json::json!({
            "access_token": token,
            "refresh_token": refresh_token,
            "token_type": "bearer",
            "scope": SCOPE,
        });
        if !self.omit_expires_in {
            body["expires_in"] = serde_json::json!(self.lifetime_secs);
        }
        respond(StatusCode::OK, &self.content_type, body.to_string())
    }
}

/// Where every fake records the secrets it issues, one file per fake (`<pid>-<port>.txt`, one
/// secret per line), so that `tests/zz_log_secrets.rs` can check that no gateway log holds one.
/// (Outside tests, e.g. the soak's `examples/soak.rs`: under the system's temporary directory.)
pub fn secrets_dir() -> PathBuf {
    let tmp = option_env!("CARGO_TARGET_TMPDIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = tmp.join("fake-secrets");
    std::fs::create_dir_all(&dir).expect("create fake-secrets dir");
    dir
}

fn rand_alnum(n: usize) -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(n)
        .collect()
}

fn respond(status: StatusCode, content_type: &str, body: impl Into<Body>) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(body.into())
        .expect("valid response")
}

fn oauth_error(status: StatusCode, error: &str, description: Option<&str>) -> Response {
    let mut body = serde_json::json!({ "error": error });
    if let Some(d) = description {
        body["error_description"] = serde_json::json!(d);
    }
    respond(status, "application/json", body.to_string())
}

fn invalid_grant(description: &str) -> Response {
    oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", Some(description))
}

fn invalid_request() -> Response {
    oauth_error(StatusCode::BAD_REQUEST, "invalid_request", None)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `application/x-www-form-urlencoded` (also used for query strings).
pub fn parse_form(raw: &[u8]) -> Option<HashMap<String, String>> {
    let s = std::str::from_utf8(raw).ok()?;
    Some(
        s.split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect(),
    )
}

fn parse_json_params(raw: &[u8]) -> Option<HashMap<String, String>> {
    let v: serde_json::Value = serde_json::from_slice(raw).ok()?;
    let obj = v.as_object()?;
    Some(
        obj.iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect(),
    )
}

fn basic_auth_ok(headers: &HeaderMap) -> bool {
    let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, cred)) = v.trim().split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(cred.trim()) else {
        return false;
    };
    let Ok(decoded) = String::from_utf8(decoded) else {
        return false;
    };
    decoded.split_once(':') == Some((CLIENT_ID, CLIENT_SECRET))
}

fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

async fn token_handler(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let parsed = if content_type.to_ascii_lowercase().contains("json") {
        parse_json_params(&body)
    } else {
        parse_form(&body)
    };
    let params_ok = parsed.is_some();
    let params = parsed.unwrap_or_default();
    let auth_ok = basic_auth_ok(&headers);
    let grant_type = params.get("grant_type").cloned().unwrap_or_default();

    inner.token_calls.fetch_add(1, Ordering::SeqCst);
    let received = Instant::now();
    let (delay, mode) = {
        let mut st = inner.lock();
        let merchant = match grant_type.as_str() {
            "refresh_token" => params
                .get("refresh_token")
                .and_then(|t| st.refresh_owner.get(t))
                .cloned(),
            "authorization_code" => params
                .get("code")
                .and_then(|c| st.codes.get(c))
                .map(|c| c.merchant.clone()),
            _ => None,
        };
        if let Some(m) = merchant {
            st.merchants.entry(m).or_default().token_calls += 1;
        }
        if st.record_requests {
            st.token_requests.push(TokenRequest {
                grant_type: grant_type.clone(),
                basic_auth_ok: auth_ok,
                content_type: content_type.clone(),
                params: params.clone(),
            });
        }
        (st.delay, st.mode)
    };

    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    match mode {
        TokenMode::Normal => {}
        TokenMode::ServerError => {
            return respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/html; charset=utf-8",
                "<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>",
            )
        }
        TokenMode::InternalError => {
            return respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/html; charset=utf-8",
                "<html><body><h1>500 Internal Server Error</h1></body></html>",
            )
        }
        TokenMode::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return respond(StatusCode::GATEWAY_TIMEOUT, "text/plain", "hung");
        }
        TokenMode::NotJson => {
            return respond(
                StatusCode::OK,
                "text/html; charset=utf-8",
                "<html>oops</html>",
            )
        }
        TokenMode::NoAccessToken => {
            let ct = inner.lock().content_type.clone();
            return respond(
                StatusCode::OK,
                &ct,
                r#"{"token_type":"bearer","expires_in":3600}"#,
            );
        }
        TokenMode::InvalidClient => {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                Some("Client authentication failed"),
            )
        }
    }

    if !auth_ok {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            Some("Client authentication failed"),
        );
    }
    if !params_ok || grant_type.is_empty() {
        return invalid_request();
    }

    let mut st = inner.lock();
    match grant_type.as_str() {
        "refresh_token" => {
            let Some(rt) = params.get("refresh_token") else {
                return invalid_request();
            };
            let (owner, presented) = st.presented(rt);
            let accepted = matches!(presented, Presented::Latest | Presented::Predecessor);
            st.presentations.push(Presentation {
                merchant: owner.clone().unwrap_or_default(),
                presented,
                accepted,
                received,
                at: Instant::now(),
            });
            let (Some(merchant), true) = (owner, accepted) else {
                inner.dead_refresh_tokens.fetch_add(1, Ordering::SeqCst);
                return invalid_grant("The refresh token is invalid");
            };
            let rt = if st.rotate {
                st.rotate_after(&merchant, rt)
            } else {
                rt.clone()
            };
            let answer = st.issue(&merchant, &rt);
            st.answered.notify_waiters();
            answer
        }
        "authorization_code" => {
            let Some(code) = params.get("code") else {
                return invalid_request();
            };
            let given_redirect = params.get("redirect_uri");
            let merchant = match st.codes.get_mut(code) {
                None => return invalid_grant("The authorization code is invalid"),
                Some(c) if c.used => {
                    return invalid_grant("The authorization code has already been used")
                }
                Some(c) => {
                    if let Some(expected) = &c.redirect_uri {
                        if given_redirect != Some(expected) {
                            return invalid_grant("The redirect_uri does not match");
                        }
                    }
                    c.used = true;
                    c.merchant.clone()
                }
            };
            let rt = format!("refresh_{merchant}_{}", rand_alnum(16));
            st.set_refresh(&merchant, &rt);
            st.issue(&merchant, &rt)
        }
        _ => oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", None),
    }
}

/// `DELETE /oauth2/tokens`: Basic auth, a form with `token_type_hint` and `token`. A known
/// refresh token is revoked with its merchant's access tokens; an access token alone is
/// invalidated; an unknown token is answered 204 too (RFC 7009).
async fn revoke_handler(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let params = parse_form(&body).unwrap_or_default();
    let auth_ok = basic_auth_ok(&headers);
    let mut st = inner.lock();
    st.revocations.push(RevocationRequest {
        basic_auth_ok: auth_ok,
        content_type,
        params: params.clone(),
    });
    if st.fail_revocations {
        return respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/html; charset=utf-8",
            "<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>",
        );
    }
    if !auth_ok {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", None);
    }
    let (Some(hint), Some(token)) = (params.get("token_type_hint"), params.get("token")) else {
        return invalid_request();
    };
    match hint.as_str() {
        "refresh_token" => {
            if let Some(merchant) = st.refresh_valid_for(token) {
                if let Some(m) = st.merchants.get_mut(&merchant) {
                    m.refresh_token = None;
                    m.previous_refresh = None;
                }
                st.invalidate_access(&merchant);
            }
        }
        "access_token" => {
            if let Some(t) = st.access.get_mut(token) {
                t.invalidated = true;
            }
        }
        _ => return invalid_request(),
    }
    respond(StatusCode::NO_CONTENT, "text/plain", "")
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    parse_form(query?.as_bytes())?.remove(name)
}

async fn api_handler(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    if !(path == "/v2" || path.starts_with("/v2/")) {
        return respond(StatusCode::NOT_FOUND, "text/plain", "not found");
    }
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    inner.api_calls_total.fetch_add(1, Ordering::SeqCst);

    let query = parts.uri.query().map(str::to_string);
    let method = parts.method.as_str().to_string();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let bearer = bearer_token(&parts.headers);

    let merchant = {
        let mut st = inner.lock();
        let merchant = bearer.and_then(|t| st.merchant_for_access(&t));
        if let Some(m) = &merchant {
            st.merchants.entry(m.clone()).or_default().api_calls += 1;
        }
        if st.record_requests {
            st.api_requests.push(ApiRequest {
                method: method.clone(),
                path: path.clone(),
                query: query.clone(),
                headers: headers.clone(),
                body: body.to_vec(),
                merchant: merchant.clone(),
            });
        }
        merchant
    };
    let Some(merchant) = merchant else {
        inner.api_401s.fetch_add(1, Ordering::SeqCst);
        return respond(
            StatusCode::UNAUTHORIZED,
            "application/hal+json",
            UNAUTHORIZED_BODY,
        );
    };
    let base = format!("http://{}", inner.addr);
    let call = fake_resources::Call {
        base: &base,
        merchant: &merchant,
        method: &method,
        path: &path,
        query: query.as_deref(),
        body: &body,
    };
    if let Some(resp) = inner.resources.handle(&call) {
        return resp;
    }

    if let Some(code) = path.strip_prefix("/v2/status/") {
        let code = code.trim_end_matches('/');
        return match code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(status) => respond(
                status,
                "application/hal+json",
                serde_json::json!({"status": status.as_u16(), "title": "fake", "detail": "as asked"})
                    .to_string(),
            ),
            None => respond(
                StatusCode::BAD_REQUEST,
                "application/hal+json",
                r#"{"status":400,"title":"fake","detail":"bad status code"}"#,
            ),
        };
    }
    if path == "/v2/raw" {
        // Answers `body` verbatim with Content-Type `ct` (default application/hal+json).
        let body = query_param(query.as_deref(), "body").unwrap_or_default();
        let ct = query_param(query.as_deref(), "ct")
            .unwrap_or_else(|| "application/hal+json".to_string());
        return respond(StatusCode::OK, &ct, body);
    }
    if path == "/v2/large" {
        let n: usize = query_param(query.as_deref(), "bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        return respond(StatusCode::OK, "application/octet-stream", vec![b'a'; n]);
    }
    if path == "/v2/slow" {
        let ms: u64 = query_param(query.as_deref(), "ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    // Echo (default for every other path).
    let mut hmap = serde_json::Map::new();
    for (n, v) in &headers {
        match hmap.get_mut(n) {
            Some(serde_json::Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(v);
            }
            _ => {
                hmap.insert(n.clone(), serde_json::Value::String(v.clone()));
            }
        }
    }
    let echo = serde_json::json!({
        "merchant": merchant,
        "method": method,
        "path": path,
        "query": query,
        "body": String::from_utf8_lossy(&body),
        "headers": hmap,
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/hal+json")
        .header("x-fake-mollie", "echo")
        .body(Body::from(echo.to_string()))
        .expect("valid response")
}

impl FakeMollie {
    /// Binds 127.0.0.1:0 and serves on the current tokio runtime.
    pub async fn start() -> FakeMollie {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake mollie");
        let addr = listener.local_addr().expect("local addr");
        let inner = Arc::new(Inner {
            addr,
            state: Mutex::new(FakeState {
                secrets_file: secrets_dir().join(format!(
                    "{}-{}.txt",
                    std::process::id(),
                    addr.port()
                )),
                ..FakeState::new()
            }),
            token_calls: AtomicUsize::new(0),
            api_calls_total: AtomicUsize::new(0),
            api_401s: AtomicUsize::new(0),
            dead_refresh_tokens: AtomicUsize::new(0),
            resources: Default::default(),
        });
        let app = Router::new()
            .route("/oauth2/tokens", post(token_handler).delete(revoke_handler))
            .fallback(api_handler)
            .with_state(inner.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeMollie { inner }
    }

    /// Realistic payments and methods (off until enabled) and `/v2/headers`.
    pub fn resources(&self) -> &fake_resources::Resources {
        &self.inner.resources
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    pub fn token_url(&self) -> String {
        format!("{}/oauth2/tokens", self.base_url())
    }

    /// Registers a merchant (or gives it a new refresh token); returns the refresh token.
    pub fn add_merchant(&self, id: &str) -> String {
        let rt = format!("refresh_{id}_{}", rand_alnum(16));
        self.add_merchant_with(id, &rt);
        rt
    }

    /// Issues a static credential for `merchant` (an API key `live_…`/`test_…` when `prefix`
    /// says so, or an organization token `access_…`): the API accepts it as the Bearer until
    /// [`FakeMollie::revoke_static`]; no token endpoint call is involved. Recorded as a
    /// secret.
    pub fn issue_static(&self, merchant: &str, prefix: &str) -> String {
        let key = format!("{prefix}_{}", rand_alnum(36));
        let mut st = self.inner.lock();
        st.record_secret(&key);
        st.access.insert(
            key.clone(),
            AccessToken {
                merchant: merchant.to_string(),
                issued_at: Instant::now(),
                lifetime: Duration::from_secs(100 * 365 * 86_400),
                invalidated: false,
            },
        );
        key
    }

    /// The API answers 401 to this static credential from now on (a key revoked in the
    /// dashboard).
    pub fn revoke_static(&self, key: &str) {
        if let Some(t) = self.inner.lock().access.get_mut(key) {
            t.invalidated = true;
        }
    }

    /// Registers a merchant with the given refresh token (replacing any previous one).
    pub fn add_merchant_with(&self, id: &str, refresh_token: &str) {
        self.inner.lock().set_refresh(id, refresh_token);
    }

    /// A single-use authorization code for `merchant`. Exchanging it registers the
    /// merchant (or replaces its refresh token) and returns fresh tokens.
    pub fn issue_code(&self, merchant: &str, redirect_uri: Option<&str>) -> String {
        let code = format!("code_{}", rand_alnum(20));
        let mut st = self.inner.lock();
        st.record_secret(&code);
        st.codes.insert(
            code.clone(),
            Code {
                merchant: merchant.to_string(),
                redirect_uri: redirect_uri.map(str::to_string),
                used: false,
            },
        );
        code
    }

    /// For a long run (the soak): issued secrets are no longer appended to the file in
    /// [`secrets_dir`], and token and API requests are no longer kept ([`Self::token_requests`],
    /// [`Self::api_requests`] stay empty); counters and [`Self::presentations`] go on.
    pub fn lean(&self) {
        let mut st = self.inner.lock();
        st.secrets_file = PathBuf::new();
        st.record_requests = false;
    }

    /// `expires_in` of new tokens, also enforced by the API (default 3600).
    pub fn set_token_lifetime(&self, secs: u64) {
        self.inner.lock().lifetime_secs = secs;
    }

    /// Leave `expires_in` out of token responses (such tokens live 3600 s).
    pub fn set_omit_expires_in(&self, omit: bool) {
        self.inner.lock().omit_expires_in = omit;
    }

    /// Invalidates every access token issued so far for `merchant`.
    pub fn expire_tokens(&self, merchant: &str) {
        self.inner.lock().invalidate_access(merchant);
    }

    /// Invalidates the merchant's refresh token and all its access tokens.
    pub fn revoke(&self, merchant: &str) {
        let mut st = self.inner.lock();
        if let Some(m) = st.merchants.get_mut(merchant) {
            m.refresh_token = None;
            m.previous_refresh = None;
        }
        st.invalidate_access(merchant);
    }

    /// When true, each refresh returns a new refresh token and the old one stops working.
    pub fn set_rotate_refresh_tokens(&self, rotate: bool) {
        self.inner.lock().rotate = rotate;
    }

    /// Rotation's grace rule, as OAuth servers that rotate refresh tokens have it: a
    /// rotated-out refresh token stays valid until its successor is first used, so a client
    /// that crashed between the answer and saving the new token can refresh with the old one.
    /// Off: the old token dies at once.
    pub fn set_rotation_grace(&self, grace: bool) {
        self.inner.lock().grace = grace;
    }

    /// Every refresh grant answered (outside the failure modes), in order: whose token it
    /// was, where it stood in the merchant's rotation chain, whether it was accepted.
    pub fn presentations(&self) -> Vec<Presentation> {
        self.inner.lock().presentations.clone()
    }

    /// How many refresh grants were answered so far (see [`FakeMollie::presentations`]).
    pub fn presentations_len(&self) -> usize {
        self.inner.lock().presentations.len()
    }

    /// Woken (`notify_waiters`) each time a refresh grant is answered with new tokens, just
    /// before the answer is sent.
    pub fn answered(&self) -> Arc<tokio::sync::Notify> {
        self.inner.lock().answered.clone()
    }

    pub fn set_token_mode(&self, mode: TokenMode) {
        self.inner.lock().mode = mode;
    }

    /// Delay before answering each token request.
    pub fn set_token_delay(&self, delay: Duration) {
        self.inner.lock().delay = delay;
    }

    /// Content-Type of successful token responses (default `text/html; charset=utf-8`).
    pub fn set_token_content_type(&self, content_type: &str) {
        self.inner.lock().content_type = content_type.to_string();
    }

    /// All token endpoint requests.
    pub fn token_calls(&self) -> usize {
        self.inner.token_calls.load(Ordering::SeqCst)
    }

    /// Token endpoint requests attributed to `merchant` (by refresh token or code).
    pub fn token_calls_for(&self, merchant: &str) -> usize {
        self.inner
            .lock()
            .merchants
            .get(merchant)
            .map_or(0, |m| m.token_calls)
    }

    /// `/v2` requests that passed authentication as `merchant`.
    pub fn api_calls_for(&self, merchant: &str) -> usize {
        self.inner
            .lock()
            .merchants
            .get(merchant)
            .map_or(0, |m| m.api_calls)
    }

    /// `/v2` requests rejected with 401.
    pub fn api_401s(&self) -> usize {
        self.inner.api_401s.load(Ordering::SeqCst)
    }

    /// Refresh grants answered `invalid_grant` (a dead or unknown refresh token presented).
    pub fn dead_refresh_tokens(&self) -> usize {
        self.inner.dead_refresh_tokens.load(Ordering::SeqCst)
    }

    /// All `/v2` requests, authorized or not.
    pub fn api_calls_total(&self) -> usize {
        self.inner.api_calls_total.load(Ordering::SeqCst)
    }

    /// Every `DELETE /oauth2/tokens` received.
    pub fn revocations(&self) -> Vec<RevocationRequest> {
        self.inner.lock().revocations.clone()
    }

    /// When true, revocations answer 503 (and revoke nothing).
    pub fn set_fail_revocations(&self, fail: bool) {
        self.inner.lock().fail_revocations = fail;
    }

    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.inner.lock().token_requests.clone()
    }

    pub fn api_requests(&self) -> Vec<ApiRequest> {
        self.inner.lock().api_requests.clone()
    }

    /// The latest access token issued for `merchant` (even if since invalidated).
    pub fn current_access_token(&self, merchant: &str) -> Option<String> {
        self.inner
            .lock()
            .merchants
            .get(merchant)
            .and_then(|m| m.current_access.clone())
    }

    /// The refresh token the merchant's current one replaced by rotation (None after a new
    /// authorization or a revocation); valid only under the grace rule, until its successor
    /// is first used.
    pub fn previous_refresh_token(&self, merchant: &str) -> Option<String> {
        self.inner
            .lock()
            .merchants
            .get(merchant)
            .and_then(|m| m.previous_refresh.clone())
    }

    /// The merchant's currently valid refresh token (None if unknown or revoked).
    pub fn current_refresh_token(&self, merchant: &str) -> Option<String> {
        self.inner
            .lock()
            .merchants
            .get(merchant)
            .and_then(|m| m.refresh_token.clone())
    }
}
