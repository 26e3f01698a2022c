//! The Mollie token endpoint client (`POST /oauth2/tokens`): both grants, client
//! authentication, response and error parsing.
//!
//! Owns: the wire format of token calls. Client id and secret go as HTTP Basic; the grant as a
//! form body (or JSON, `oauth.token_body`). Success bodies are parsed as JSON whatever their
//! `Content-Type` (Mollie's spec says `text/html`); a missing `expires_in` means 3600 s; error
//! bodies are RFC 6749 JSON. Must not: log or return a token or the secret in an error text
//! (only error codes, statuses and lengths), or retry a call itself (a token request is not
//! idempotent once refresh tokens rotate: callers back off instead).

use crate::config::{Settings, TokenBody};
use crate::types::{AccessToken, RefreshToken, Secret};
use crate::upstream::Endpoint;
use base64::Engine;
use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// A token answer larger than this is not a token answer.
pub const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;
/// Mollie's documented lifetime, assumed when `expires_in` is missing.
pub const DEFAULT_EXPIRES_IN: Duration = Duration::from_secs(3600);

/// What to exchange at the token endpoint.
#[derive(Debug, Clone, Copy)]
pub enum Grant<'a> {
    RefreshToken(&'a RefreshToken),
    AuthorizationCode {
        code: &'a Secret,
        redirect_uri: Option<&'a str>,
    },
}

impl Grant<'_> {
    /// The `grant` label of `token_refreshes_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Grant::RefreshToken(_) => "refresh_token",
            Grant::AuthorizationCode { .. } => "authorization_code",
        }
    }

    fn params(&self) -> Vec<(&'static str, &str)> {
        match self {
            Grant::RefreshToken(t) => {
                vec![
                    ("grant_type", "refresh_token"),
                    ("refresh_token", t.expose()),
                ]
            }
            Grant::AuthorizationCode { code, redirect_uri } => {
                let mut p = vec![
                    ("grant_type", "authorization_code"),
                    ("code", code.expose()),
                ];
                if let Some(uri) = redirect_uri {
                    p.push(("redirect_uri", uri));
                }
                p
            }
        }
    }
}

/// A successful token answer.
#[derive(Debug, Clone)]
pub struct TokenSet {
    pub access_token: AccessToken,
    /// Present when the endpoint sent one (Mollie echoes it; it may rotate).
    pub refresh_token: Option<RefreshToken>,
    pub expires_in: Duration,
}

/// Why a token call failed. Texts are safe to log and to show (no secrets).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    /// Transient: connect failure, timeout, 5xx, 429. Back off and retry later.
    #[error("token endpoint unavailable: {0}")]
    Unavailable(String),
    /// The refresh token (or code) is dead: the merchant must authorize again.
    #[error("invalid_grant: {0}")]
    InvalidGrant(String),
    /// The endpoint rejected the gateway's client id/secret: a configuration problem.
    #[error("invalid_client: the token endpoint rejected oauth.client_id/client_secret ({0})")]
    InvalidClient(String),
    /// No OAuth app configured: nothing was sent.
    #[error("oauth.client_id and oauth.client_secret are not configured")]
    NotConfigured,
    /// Anything else we cannot use: non-JSON, no `access_token`, another RFC 6749 error.
    #[error("unusable token endpoint answer: {0}")]
    BadResponse(String),
}

/// The token endpoint, behind a trait so the token manager can be unit-tested without HTTP.
#[async_trait::async_trait]
pub trait TokenEndpoint: Send + Sync {
    async fn exchange(&self, grant: Grant<'_>) -> Result<TokenSet, OAuthError>;
}

#[derive(Deserialize)]
struct SuccessBody {
    access_token: Option<String>,
    refresh_token: Option<String>,
    expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// Interprets a token endpoint answer. Pure, so it is unit-tested on every shape.
pub fn parse_token_response(status: u16, body: &[u8]) -> Result<TokenSet, OAuthError> {
    if (200..300).contains(&status) {
        let parsed: SuccessBody = serde_json::from_slice(body).map_err(|_| {
            OAuthError::BadResponse(format!(
                "status {status} with a body that is not JSON ({} bytes)",
                body.len()
            ))
        })?;
        let access = parsed
            .access_token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| OAuthError::BadResponse("JSON without access_token".into()))?;
        if access.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
            return Err(OAuthError::BadResponse(
                "access_token has characters that cannot go in a header".into(),
            ));
        }
        let expires_in = match parsed.expires_in {
            None | Some(serde_json::Value::Null) => DEFAULT_EXPIRES_IN,
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .filter(|s| *s > 0)
                .map(Duration::from_secs)
                .ok_or_else(|| {
                    OAuthError::BadResponse("expires_in is not a positive number".into())
                })?,
        };
        return Ok(TokenSet {
            access_token: AccessToken::new(access),
            refresh_token: parsed
                .refresh_token
                .filter(|t| !t.is_empty())
                .map(RefreshToken::new),
            expires_in,
        });
    }
    if status >= 500 || status == 429 {
        return Err(OAuthError::Unavailable(format!("status {status}")));
    }
    let parsed: ErrorBody = serde_json::from_slice(body).map_err(|_| {
        OAuthError::BadResponse(format!(
            "status {status} with a body that is not RFC 6749 JSON"
        ))
    })?;
    // The description is the server's prose; keep it short and printable in our messages.
    let desc: String = parsed
        .error_description
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    match parsed.error.as_str() {
        "invalid_grant" => Err(OAuthError::InvalidGrant(desc)),
        "invalid_client" | "unauthorized_client" => Err(OAuthError::InvalidClient(format!(
            "status {status}, {}",
            parsed.error
        ))),
        other => Err(OAuthError::BadResponse(format!(
            "status {status}, error {:?}",
            other.chars().take(64).collect::<String>()
        ))),
    }
}

/// Form or JSON body for a grant.
fn encode_body(grant: &Grant<'_>, format: TokenBody) -> (Bytes, &'static str) {
    let params = grant.params();
    match format {
        TokenBody::Form => {
            let mut ser = form_urlencoded::Serializer::new(String::new());
            for (k, v) in params {
                ser.append_pair(k, v);
            }
            (
                Bytes::from(ser.finish()),
                "application/x-www-form-urlencoded",
            )
        }
        TokenBody::Json => {
            let map: serde_json::Map<String, serde_json::Value> = params
                .into_iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::from(v)))
                .collect();
            (
                Bytes::from(serde_json::Value::Object(map).to_string()),
                "application/json",
            )
        }
    }
}

/// The real client: pingora's pooled HTTP connector (TLS with SNI for https).
pub struct HttpTokenEndpoint {
    connector: Connector,
    endpoint: Arc<Endpoint>,
    /// `Basic base64(client_id:client_secret)`; empty when no app is configured.
    basic: Secret,
    format: TokenBody,
    timeout: Duration,
    connect_timeout: Duration,
}

impl HttpTokenEndpoint {
    pub fn new(settings: &Settings, endpoint: Arc<Endpoint>, connector: Connector) -> Self {
        let basic = if settings.oauth.is_configured() {
            let raw = format!(
                "{}:{}",
                settings.oauth.client_id,
                settings.oauth.client_secret.expose()
            );
            Secret::new(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            ))
        } else {
            Secret::default()
        };
        HttpTokenEndpoint {
            connector,
            endpoint,
            basic,
            format: settings.oauth.token_body,
            timeout: settings.oauth.token_timeout(),
            connect_timeout: settings.upstream.connect_timeout(),
        }
    }

    async fn call(&self, body: Bytes, content_type: &str) -> Result<TokenSet, OAuthError> {
        let unavailable = |what: &str, e: Box<pingora::Error>| {
            OAuthError::Unavailable(format!("{what}: {}", e.etype().as_str()))
        };
        let addr = self.endpoint.addr().ok_or_else(|| {
            OAuthError::Unavailable(format!("{} is not resolved (DNS)", self.endpoint.host))
        })?;
        let mut peer = HttpPeer::new(addr, self.endpoint.tls, self.endpoint.host.clone());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.timeout);
        peer.options.write_timeout = Some(self.timeout);
        let (mut session, _reused) = self
            .connector
            .get_http_session(&peer)
            .await
            .map_err(|e| unavailable("connect", e))?;
        let path = if self.endpoint.path.is_empty() {
            "/"
        } else {
            self.endpoint.path.as_str()
        };
        let mut req = RequestHeader::build("POST", path.as_bytes(), Some(6))
            .map_err(|e| OAuthError::BadResponse(format!("request: {}", e.etype().as_str())))?;
        let headers = [
            ("Host", self.endpoint.authority.as_str()),
            ("Authorization", self.basic.expose()),
            ("Content-Type", content_type),
            ("Accept", "application/json"),
            (
                "User-Agent",
                concat!("mollie-gateway/", env!("CARGO_PKG_VERSION")),
            ),
        ];
        for (name, value) in headers {
            req.insert_header(name, value)
                .map_err(|_| OAuthError::BadResponse(format!("header {name} is not valid")))?;
        }
        req.insert_header("Content-Length", body.len().to_string())
            .map_err(|_| OAuthError::BadResponse("content length".into()))?;
        session
            .write_request_header(Box::new(req))
            .await
            .map_err(|e| unavailable("send", e))?;
        session
            .write_request_body(body, true)
            .await
            .map_err(|e| unavailable("send body", e))?;
        session
            .finish_request_body()
            .await
            .map_err(|e| unavailable("send body", e))?;
        session
            .read_response_header()
            .await
            .map_err(|e| unavailable("read answer", e))?;
        let status = session
            .response_header()
            .map(|h| h.status.as_u16())
            .ok_or_else(|| OAuthError::Unavailable("no response header".into()))?;
        let mut answer = Vec::new();
        while let Some(chunk) = session
            .read_response_body()
            .await
            .map_err(|e| unavailable("read answer", e))?
        {
            if answer.len() + chunk.len() > MAX_TOKEN_RESPONSE_BYTES {
                return Err(OAuthError::BadResponse(format!(
                    "answer larger than {MAX_TOKEN_RESPONSE_BYTES} bytes"
                )));
            }
            answer.extend_from_slice(&chunk);
        }
        if session.response_done() {
            self.connector
                .release_http_session(session, &peer, Some(Duration::from_secs(60)))
                .await;
        }
        parse_token_response(status, &answer)
    }
}

#[async_trait::async_trait]
impl TokenEndpoint for HttpTokenEndpoint {
    async fn exchange(&self, grant: Grant<'_>) -> Result<TokenSet, OAuthError> {
        if self.basic.is_empty() {
            return Err(OAuthError::NotConfigured);
        }
        let (body, content_type) = encode_body(&grant, self.format);
        match tokio::time::timeout(self.timeout, self.call(body, content_type)).await {
            Ok(result) => result,
            Err(_) => Err(OAuthError::Unavailable(format!(
                "no answer within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_parsed_whatever_the_content_type() {
        let t = parse_token_response(
            200,
            br#"{"access_token":"access_x","refresh_token":"refresh_y","expires_in":3600,"token_type":"bearer","scope":"payments.read"}"#,
        )
        .unwrap();
        assert_eq!(t.access_token.expose(), "access_x");
        assert_eq!(t.refresh_token.unwrap().expose(), "refresh_y");
        assert_eq!(t.expires_in, Duration::from_secs(3600));
    }

    #[test]
    fn missing_expires_in_is_an_hour() {
        let t = parse_token_response(200, br#"{"access_token":"a"}"#).unwrap();
        assert_eq!(t.expires_in, DEFAULT_EXPIRES_IN);
        assert!(t.refresh_token.is_none());
        let t = parse_token_response(200, br#"{"access_token":"a","expires_in":"120"}"#).unwrap();
        assert_eq!(t.expires_in, Duration::from_secs(120));
    }

    #[test]
    fn bad_answers_are_classified() {
        use OAuthError::*;
        type Case = (u16, &'static [u8], fn(&OAuthError) -> bool);
        let cases: [Case; 9] = [
            (200, b"<html>oops</html>", |e| matches!(e, BadResponse(_))),
            (200, br#"{"token_type":"bearer"}"#, |e| {
                matches!(e, BadResponse(_))
            }),
            (200, br#"{"access_token":"a b"}"#, |e| {
                matches!(e, BadResponse(_))
            }),
            (200, br#"{"access_token":"a","expires_in":-5}"#, |e| {
                matches!(e, BadResponse(_))
            }),
            (503, b"<html>down</html>", |e| matches!(e, Unavailable(_))),
            (429, b"", |e| matches!(e, Unavailable(_))),
            (
                400,
                br#"{"error":"invalid_grant","error_description":"gone"}"#,
                |e| matches!(e, InvalidGrant(d) if d == "gone"),
            ),
            (401, br#"{"error":"invalid_client"}"#, |e| {
                matches!(e, InvalidClient(_))
            }),
            (400, br#"{"error":"invalid_scope"}"#, |e| {
                matches!(e, BadResponse(_))
            }),
        ];
        for (status, body, check) in cases {
            let e = parse_token_response(status, body).unwrap_err();
            assert!(
                check(&e),
                "{status} {:?} gave {e:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn bodies_are_encoded() {
        let rt = RefreshToken::new("refresh_a+b&c");
        let (form, ct) = encode_body(&Grant::RefreshToken(&rt), TokenBody::Form);
        assert_eq!(ct, "application/x-www-form-urlencoded");
        assert_eq!(
            &form[..],
            b"grant_type=refresh_token&refresh_token=refresh_a%2Bb%26c"
        );
        let code = Secret::new("code_1");
        let grant = Grant::AuthorizationCode {
            code: &code,
            redirect_uri: Some("https://x/cb"),
        };
        let (json, ct) = encode_body(&grant, TokenBody::Json);
        assert_eq!(ct, "application/json");
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["grant_type"], "authorization_code");
        assert_eq!(v["redirect_uri"], "https://x/cb");
    }

    #[test]
    fn errors_never_echo_the_body() {
        let e = parse_token_response(200, b"access_token=leaked").unwrap_err();
        assert!(!e.to_string().contains("leaked"));
    }
}
