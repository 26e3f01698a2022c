//! Who is calling, and for which merchant: step 2 of a request, before any token is looked up.
//!
//! The caller's key is its SDK's API key (`Authorization: Bearer <key>`), or, for callers that
//! cannot change that header, the value of `server.client_key_header`; both headers are
//! removed before the request goes upstream. With `[clients]` configured the key must be one
//! of theirs (401 `caller_unauthenticated` otherwise) and the merchant (the merchant header,
//! or the client's `default_merchant`) one it may act for (403 `caller_forbidden`). With no
//! client configured the gateway is open: any caller, any merchant, as before.

use super::defaults::KeyMode;
use crate::clients::{Client, Clients};
use crate::error::GatewayError;
use crate::types::{MerchantId, MerchantIdError};
use http::header::AUTHORIZATION;
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use std::sync::Arc;

/// The caller of one request.
pub struct Caller {
    /// The authenticated client; `None` on an open gateway.
    pub client: Option<Arc<Client>>,
    pub key: KeyMode,
}

/// The caller's key: the key header when present, else a Bearer `Authorization`.
pub fn presented_key<'a>(req: &'a RequestHeader, key_header: &HeaderName) -> Option<&'a [u8]> {
    key_of(
        req.headers.get(key_header).map(HeaderValue::as_bytes),
        req.headers.get(AUTHORIZATION).map(HeaderValue::as_bytes),
    )
}

/// The caller's key from the first values of the key header and of `Authorization`.
pub fn key_of<'a>(
    key_header: Option<&'a [u8]>,
    authorization: Option<&'a [u8]>,
) -> Option<&'a [u8]> {
    if key_header.is_some() {
        return key_header;
    }
    let auth = authorization?;
    let (scheme, key) = auth.split_at(auth.len().min(7));
    scheme.eq_ignore_ascii_case(b"bearer ").then_some(key)
}

/// Authenticates the caller against `clients` (anyone, when none is configured).
pub fn identify(
    clients: &Clients,
    key: Option<&[u8]>,
    key_header: &HeaderName,
) -> Result<Caller, GatewayError> {
    let test = key.is_some_and(|k| k.starts_with(b"test_"));
    if clients.is_open() {
        return Ok(Caller {
            client: None,
            key: KeyMode {
                test,
                confined: false,
            },
        });
    }
    let unauthenticated = || GatewayError::CallerUnauthenticated(key_header.to_string());
    let client = clients
        .authenticate(key.ok_or_else(unauthenticated)?)
        .ok_or_else(unauthenticated)?;
    Ok(Caller {
        client: Some(client),
        key: KeyMode {
            test,
            confined: test,
        },
    })
}

impl Caller {
    /// The merchant this request acts for: exactly one valid merchant header (`values`: its
    /// values), or the client's default merchant when the header is absent; then one the
    /// client may act for.
    pub fn merchant<'a>(
        &self,
        mut values: impl Iterator<Item = &'a [u8]>,
        header: &HeaderName,
    ) -> Result<MerchantId, GatewayError> {
        let default = self
            .client
            .as_ref()
            .and_then(|c| c.default_merchant.as_ref());
        let problem = match (values.next(), values.next(), default) {
            (None, _, Some(default)) => return self.allowed(default.clone()),
            (None, _, None) => "is missing".to_string(),
            (Some(_), Some(_), _) => "is repeated; send it once".to_string(),
            (Some(v), None, _) => match MerchantId::parse_bytes(v) {
                Ok(id) => return self.allowed(id),
                Err(MerchantIdError::Empty) => "is empty".to_string(),
                Err(e) => e.to_string(),
            },
        };
        Err(GatewayError::MerchantHeader {
            header: header.to_string(),
            problem,
        })
    }

    fn allowed(&self, merchant: MerchantId) -> Result<MerchantId, GatewayError> {
        match &self.client {
            Some(client) if !client.may_act_for(&merchant) => Err(GatewayError::CallerForbidden(
                format!("client {} may not act for merchant {merchant}", client.name),
            )),
            _ => Ok(merchant),
        }
    }
}
