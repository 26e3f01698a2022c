//! Per-merchant request defaults (DESIGN.md §5): `testmode` when the merchant's mode says so,
//! `profileId` on creates. Resolved from the settings once; planned per request.

use crate::config::{Settings, TestMode};
use crate::proxy::headers::content_length;
use crate::rewrite::with_body_defaults;
use crate::types::MerchantId;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, TRANSFER_ENCODING};
use http::Method;
use pingora::prelude::*;
use pingora::protocols::http::ServerSession;
use std::collections::HashMap;
use std::sync::Arc;

/// Request bodies up to this size may get defaults added; the same limit as the body kept
/// for a 401 replay (pingora's retry buffer).
pub const MAX_REWRITE_BODY: usize = 64 * 1024;

/// One merchant's request defaults.
struct MerchantDefaults {
    testmode: TestMode,
    profile_id: Option<Arc<str>>,
}

/// `[merchants.defaults.<id>]`, by merchant.
pub struct Defaults(HashMap<MerchantId, MerchantDefaults>);

/// What one request needs added.
#[derive(Default)]
pub struct Plan {
    /// Add `testmode=true` to the query string.
    pub query_testmode: bool,
    /// The whole body, already read from the caller (with the defaults added where they
    /// apply): sent, with its own `Content-Length`, instead of streaming the caller's.
    pub body: Option<Bytes>,
}

impl Defaults {
    pub fn from_settings(settings: &Settings) -> Result<Defaults, String> {
        let mut map = HashMap::new();
        for (id, d) in &settings.merchants.defaults {
            let id = MerchantId::parse(id).map_err(|e| format!("merchant id {id:?} {e}"))?;
            let profile_id = Some(d.profile_id.as_str())
                .filter(|p| !p.is_empty())
                .map(Arc::from);
            map.insert(
                id,
                MerchantDefaults {
                    testmode: d.testmode,
                    profile_id,
                },
            );
        }
        Ok(Defaults(map))
    }

    /// Works out what this request needs added. A JSON body that needs it is read now (up to
    /// [`MAX_REWRITE_BODY`]), so its new length is known before the header goes upstream.
    pub async fn plan(&self, session: &mut ServerSession, merchant: &MerchantId) -> Result<Plan> {
        let d = self.0.get(merchant);
        let req = session.req_header();
        let testmode = match d.map(|d| d.testmode).unwrap_or_default() {
            TestMode::Always => true,
            TestMode::Never => false,
            TestMode::FromKey => req
                .headers
                .get(AUTHORIZATION)
                .is_some_and(|v| v.as_bytes().starts_with(b"Bearer test_")),
        };
        let method = &req.method;
        let profile = d
            .and_then(|d| d.profile_id.as_deref())
            .filter(|_| method == Method::POST);
        if !testmode && profile.is_none() {
            return Ok(Plan::default());
        }
        let length = content_length(req).and_then(|n| usize::try_from(n).ok());
        let chunked = req.headers.contains_key(TRANSFER_ENCODING);
        let json = req
            .headers
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        let has_body_method =
            method == Method::POST || method == Method::PATCH || method == Method::DELETE;
        let query_only = testmode && (method == Method::GET || method == Method::DELETE);
        match (length, chunked) {
            (None | Some(0), false) if query_only => Ok(Plan {
                query_testmode: true,
                body: None,
            }),
            (Some(n), false) if json && n > 0 && n <= MAX_REWRITE_BODY && has_body_method => {
                let body = read_body(session, n).await?;
                let body = with_body_defaults(&body, testmode, profile).unwrap_or(body);
                Ok(Plan {
                    query_testmode: false,
                    body: Some(body),
                })
            }
            // No body to add to, not JSON, too large, or chunked: forwarded untouched.
            _ => Ok(Plan::default()),
        }
    }
}

/// Reads a whole request body of `length` bytes (also into the retry buffer, for a replay of
/// an untouched body).
async fn read_body(session: &mut ServerSession, length: usize) -> Result<Bytes> {
    let mut body = Vec::with_capacity(length);
    while let Some(chunk) = session.read_request_body().await? {
        body.extend_from_slice(&chunk);
        if body.len() > length {
            return Error::e_explain(
                ErrorType::InvalidHTTPHeader,
                "body longer than Content-Length",
            );
        }
    }
    Ok(Bytes::from(body))
}
