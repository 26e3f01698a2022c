//! The real token endpoint client: pingora's pooled HTTP connector (TLS with SNI for https).
//!
//! Owns: one token call on the wire (`POST` for a grant, `DELETE` for a revocation) (peer, request head and body, answer within
//! [`MAX_TOKEN_RESPONSE_BYTES`], connection back to the pool), bounded by
//! `oauth.token_timeout_ms`. Must not: be used from more than one runtime (its pooled
//! connections belong to the runtime that made them: the server calls it only from the
//! [`TokenEndpointService`](super::TokenEndpointService), the CLI from its one runtime).
//!
//! The `HttpPeer` built here repeats the proxy's (`proxy::Gateway`): an address from
//! [`Endpoint`], its SNI and timeouts.

use super::error::{BadResponse, OAuthError, Phase, Unavailable};
use super::MAX_TOKEN_RESPONSE_BYTES;
use super::{encode_body, parse_revocation_response, parse_token_response};
use super::{Grant, Revocation, Revoked, TokenEndpoint, TokenSet};
use crate::config::{Settings, TokenBody};
use crate::types::Secret;
use crate::upstream::Endpoint;
use base64::Engine;
use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use std::sync::Arc;
use std::time::Duration;

/// How long an idle token endpoint connection stays in the pool.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct HttpTokenEndpoint {
    connector: Connector,
    endpoint: Arc<Endpoint>,
    /// `Basic base64(client_id:client_secret)`; empty when no app is configured.
    basic: Secret,
    format: TokenBody,
    timeout: Duration,
    connect_timeout: Duration,
}

#[async_trait::async_trait]
impl TokenEndpoint for HttpTokenEndpoint {
    async fn exchange(&self, grant: Grant<'_>) -> Result<TokenSet, OAuthError> {
        if self.basic.is_empty() {
            return Err(OAuthError::NotConfigured);
        }
        let (body, content_type) = encode_body(&grant, self.format);
        let (status, answer) = self.call_within("POST", body, content_type).await?;
        parse_token_response(status, &answer)
    }

    /// Always a form body: the one format Mollie documents for revocations.
    async fn revoke(&self, revocation: &Revocation) -> Result<Revoked, OAuthError> {
        if self.basic.is_empty() {
            return Err(OAuthError::NotConfigured);
        }
        let form = "application/x-www-form-urlencoded";
        let (status, answer) = self.call_within("DELETE", revocation.form(), form).await?;
        parse_revocation_response(status, &answer)
    }
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

    /// [`call`](Self::call) within `oauth.token_timeout_ms`.
    async fn call_within(
        &self,
        method: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<(u16, Vec<u8>), OAuthError> {
        match tokio::time::timeout(self.timeout, self.call(method, body, content_type)).await {
            Ok(result) => result,
            Err(_) => Err(OAuthError::Unavailable(Unavailable::Timeout(self.timeout))),
        }
    }

    /// One call: build the request, connect (or reuse), send, read the answer, give the
    /// connection back when the answer was read whole; returns status and body.
    async fn call(
        &self,
        method: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<(u16, Vec<u8>), OAuthError> {
        let req = self.request_header(method, content_type, body.len())?;
        let peer = self.peer()?;
        let (mut session, _reused) = self
            .connector
            .get_http_session(&peer)
            .await
            .map_err(Unavailable::io(Phase::Connect))?;
        send(&mut session, req, body).await?;
        let (status, answer) = read_answer(&mut session).await?;
        if session.response_done() {
            self.connector
                .release_http_session(session, &peer, Some(IDLE_TIMEOUT))
                .await;
        }
        Ok((status, answer))
    }

    /// The token host's resolved address, its SNI and the call's timeouts.
    fn peer(&self) -> Result<HttpPeer, OAuthError> {
        let addr = self.endpoint.addr().ok_or_else(|| {
            OAuthError::Unavailable(Unavailable::NotResolved {
                host: self.endpoint.host.clone(),
            })
        })?;
        let mut peer = HttpPeer::new(addr, self.endpoint.tls, self.endpoint.host.clone());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.timeout);
        peer.options.write_timeout = Some(self.timeout);
        Ok(peer)
    }

    fn request_header(
        &self,
        method: &str,
        content_type: &str,
        len: usize,
    ) -> Result<RequestHeader, OAuthError> {
        let path = match self.endpoint.path.as_str() {
            "" => "/",
            path => path,
        };
        let mut req = RequestHeader::build(method, path.as_bytes(), Some(6))
            .map_err(|_| OAuthError::BadResponse(BadResponse::RequestHeader(":path")))?;
        let len = len.to_string();
        let headers = [
            ("Host", self.endpoint.authority.as_str()),
            ("Authorization", self.basic.expose()),
            ("Content-Type", content_type),
            ("Content-Length", len.as_str()),
            ("Accept", "application/json"),
            (
                "User-Agent",
                concat!("mollie-gateway/", env!("CARGO_PKG_VERSION")),
            ),
        ];
        for (name, value) in headers {
            req.insert_header(name, value)
                .map_err(|_| OAuthError::BadResponse(BadResponse::RequestHeader(name)))?;
        }
        Ok(req)
    }
}

/// Writes the request head and the whole body.
async fn send(
    session: &mut HttpSession,
    req: RequestHeader,
    body: Bytes,
) -> Result<(), OAuthError> {
    session
        .write_request_header(Box::new(req))
        .await
        .map_err(Unavailable::io(Phase::Send))?;
    session
        .write_request_body(body, true)
        .await
        .map_err(Unavailable::io(Phase::SendBody))?;
    session
        .finish_request_body()
        .await
        .map_err(Unavailable::io(Phase::SendBody))?;
    Ok(())
}

/// Reads the answer's status and body, refusing bodies above [`MAX_TOKEN_RESPONSE_BYTES`].
async fn read_answer(session: &mut HttpSession) -> Result<(u16, Vec<u8>), OAuthError> {
    session
        .read_response_header()
        .await
        .map_err(Unavailable::io(Phase::ReadAnswer))?;
    let status = session
        .response_header()
        .map(|h| h.status.as_u16())
        .ok_or(OAuthError::Unavailable(Unavailable::NoResponseHeader))?;
    let mut answer = Vec::new();
    while let Some(chunk) = session
        .read_response_body()
        .await
        .map_err(Unavailable::io(Phase::ReadAnswer))?
    {
        if answer.len() + chunk.len() > MAX_TOKEN_RESPONSE_BYTES {
            return Err(OAuthError::BadResponse(BadResponse::TooLarge));
        }
        answer.extend_from_slice(&chunk);
    }
    Ok((status, answer))
}
