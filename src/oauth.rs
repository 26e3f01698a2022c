//! The Mollie token endpoint client (`POST /oauth2/tokens`): both grants, revocation
//! (`DELETE /oauth2/tokens`), client authentication, response and error parsing, and where
//! token calls run.
//!
//! Owns: the wire format of token calls. Client id and secret go as HTTP Basic; the grant as a
//! form body (or JSON, `oauth.token_body`). Success bodies are parsed as JSON whatever their
//! `Content-Type` (Mollie's spec says `text/html`); a missing `expires_in` means 3600 s; error
//! bodies are RFC 6749 JSON. Must not: log or return a token or the secret in an error (errors
//! are typed where they arise and carry statuses, error codes, lengths and pingora error kinds
//! only), or retry a call itself (a token request is not idempotent once refresh tokens rotate:
//! callers back off instead).
//!
//! Layout: this file (grants, answers, [`OAuthError`], the [`TokenEndpoint`] trait, parsing),
//! `error` (the typed causes), `http` ([`HttpTokenEndpoint`], pingora's pooled client), `home`
//! ([`TokenEndpointService`]: the one runtime every token call of the server runs on).

use crate::config::TokenBody;
use crate::types::{AccessToken, RefreshToken, Secret};
use bytes::Bytes;
use serde::Deserialize;
use std::time::Duration;

mod error;
mod home;
mod http;
pub use error::{BadResponse, ClientRejected, OAuthError, Phase, Unavailable};
pub use home::{TokenClient, TokenEndpointService};
pub use http::HttpTokenEndpoint;

/// A token answer larger than this is not a token answer.
pub const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;
/// The longest `expires_in` taken (a year; Mollie's tokens live an hour): a larger one is a bad
/// answer, not a lifetime whose clock arithmetic would overflow (found by the fuzzer).
pub const MAX_EXPIRES_IN_SECS: u64 = 365 * 24 * 3600;

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

    /// An owned copy, to send to another task.
    pub fn to_owned(&self) -> OwnedGrant {
        match *self {
            Grant::RefreshToken(t) => OwnedGrant::RefreshToken(t.clone()),
            Grant::AuthorizationCode { code, redirect_uri } => OwnedGrant::AuthorizationCode {
                code: code.clone(),
                redirect_uri: redirect_uri.map(str::to_string),
            },
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

/// A [`Grant`] that owns its secrets (`Debug` prints them as `***`).
#[derive(Debug, Clone)]
pub enum OwnedGrant {
    RefreshToken(RefreshToken),
    AuthorizationCode {
        code: Secret,
        redirect_uri: Option<String>,
    },
}

impl OwnedGrant {
    pub fn as_grant(&self) -> Grant<'_> {
        match self {
            OwnedGrant::RefreshToken(t) => Grant::RefreshToken(t),
            OwnedGrant::AuthorizationCode { code, redirect_uri } => Grant::AuthorizationCode {
                code,
                redirect_uri: redirect_uri.as_deref(),
            },
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

/// Which token a revocation names (its `token_type_hint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    RefreshToken,
    AccessToken,
}

impl TokenKind {
    pub fn hint(self) -> &'static str {
        match self {
            TokenKind::RefreshToken => "refresh_token",
            TokenKind::AccessToken => "access_token",
        }
    }
}

/// One token to revoke at Mollie (`Debug` prints the token as `***`).
#[derive(Debug, Clone)]
pub struct Revocation {
    pub kind: TokenKind,
    pub token: Secret,
}

impl Revocation {
    /// The form body Mollie documents: `token_type_hint=…&token=…`.
    fn form(&self) -> Bytes {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        ser.append_pair("token_type_hint", self.kind.hint());
        ser.append_pair("token", self.token.expose());
        Bytes::from(ser.finish())
    }
}

/// What the token endpoint said to a revocation that did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// 2xx: revoked now.
    Confirmed,
    /// 400 `invalid_grant`/`invalid_token`: the token was already dead.
    AlreadyInvalid,
}

/// The token endpoint, behind a trait so the token manager can be unit-tested without HTTP
/// and so that the server can route every call to one runtime ([`TokenClient`]).
#[async_trait::async_trait]
pub trait TokenEndpoint: Send + Sync {
    async fn exchange(&self, grant: Grant<'_>) -> Result<TokenSet, OAuthError>;
    /// `DELETE /oauth2/tokens` for one token. The default (test doubles) sends nothing.
    async fn revoke(&self, _revocation: &Revocation) -> Result<Revoked, OAuthError> {
        Err(OAuthError::NotConfigured)
    }
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
        return parse_success(status, body).map_err(OAuthError::BadResponse);
    }
    if status >= 500 || status == 429 {
        return Err(OAuthError::Unavailable(Unavailable::Status(status)));
    }
    Err(parse_error(status, body))
}

/// Interprets a revocation answer: any 2xx confirms; `invalid_grant` or `invalid_token`
/// means the token was already dead; 5xx and 429 are transient.
pub fn parse_revocation_response(status: u16, body: &[u8]) -> Result<Revoked, OAuthError> {
    if (200..300).contains(&status) {
        return Ok(Revoked::Confirmed);
    }
    if status >= 500 || status == 429 {
        return Err(OAuthError::Unavailable(Unavailable::Status(status)));
    }
    match parse_error(status, body) {
        OAuthError::InvalidGrant(_) => Ok(Revoked::AlreadyInvalid),
        OAuthError::BadResponse(BadResponse::OtherError { error, .. })
            if error == "invalid_token" =>
        {
            Ok(Revoked::AlreadyInvalid)
        }
        other => Err(other),
    }
}

/// A 2xx answer: JSON with a header-safe `access_token`, and a positive `expires_in` if any.
fn parse_success(status: u16, body: &[u8]) -> Result<TokenSet, BadResponse> {
    let parsed: SuccessBody = serde_json::from_slice(body).map_err(|_| BadResponse::NotJson {
        status,
        len: body.len(),
    })?;
    let access = parsed
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or(BadResponse::NoAccessToken)?;
    if access.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
        return Err(BadResponse::AccessTokenNotHeaderSafe);
    }
    let expires_in = match parsed.expires_in {
        None | Some(serde_json::Value::Null) => DEFAULT_EXPIRES_IN,
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .filter(|s| (1..=MAX_EXPIRES_IN_SECS).contains(s))
            .map(Duration::from_secs)
            .ok_or(BadResponse::ExpiresInNotPositive)?,
    };
    Ok(TokenSet {
        access_token: AccessToken::new(access),
        refresh_token: parsed
            .refresh_token
            .filter(|t| !t.is_empty())
            .map(RefreshToken::new),
        expires_in,
    })
}

/// A 4xx answer: an RFC 6749 error body.
fn parse_error(status: u16, body: &[u8]) -> OAuthError {
    let Ok(parsed) = serde_json::from_slice::<ErrorBody>(body) else {
        return OAuthError::BadResponse(BadResponse::NotOAuthError(status));
    };
    match parsed.error.as_str() {
        "invalid_grant" => {
            // The description is the server's prose: short and printable in our messages.
            let description = parsed
                .error_description
                .unwrap_or_default()
                .chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect();
            OAuthError::InvalidGrant(description)
        }
        "invalid_client" => OAuthError::InvalidClient(ClientRejected {
            status,
            error: "invalid_client",
        }),
        "unauthorized_client" => OAuthError::InvalidClient(ClientRejected {
            status,
            error: "unauthorized_client",
        }),
        other => OAuthError::BadResponse(BadResponse::OtherError {
            status,
            error: other.chars().take(64).collect(),
        }),
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
        let cases: [Case; 11] = [
            (
                200,
                br#"{"access_token":"a","expires_in":"00012475941756269203002"}"#,
                |e| matches!(e, BadResponse(_)),
            ),
            (200, br#"{"access_token":"a","expires_in":31536001}"#, |e| {
                matches!(e, BadResponse(_))
            }),
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
    fn revocations_are_encoded_and_classified() {
        let r = Revocation {
            kind: TokenKind::RefreshToken,
            token: Secret::new("refresh_a+b"),
        };
        assert_eq!(
            &r.form()[..],
            b"token_type_hint=refresh_token&token=refresh_a%2Bb"
        );
        assert!(!format!("{r:?}").contains("refresh_a"));
        let parse = parse_revocation_response;
        assert_eq!(parse(204, b""), Ok(Revoked::Confirmed));
        assert_eq!(parse(200, b"{}"), Ok(Revoked::Confirmed));
        let dead = br#"{"error":"invalid_token"}"#;
        assert_eq!(parse(400, dead), Ok(Revoked::AlreadyInvalid));
        let grant = br#"{"error":"invalid_grant"}"#;
        assert_eq!(parse(400, grant), Ok(Revoked::AlreadyInvalid));
        assert!(matches!(parse(503, b"x"), Err(OAuthError::Unavailable(_))));
        let client = br#"{"error":"invalid_client"}"#;
        assert!(matches!(
            parse(401, client),
            Err(OAuthError::InvalidClient(_))
        ));
    }

    #[test]
    fn errors_never_echo_the_body() {
        let e = parse_token_response(200, b"access_token=leaked").unwrap_err();
        assert!(!e.to_string().contains("leaked"));
    }
}
