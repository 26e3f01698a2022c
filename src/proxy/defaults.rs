//! Per-merchant request defaults (DESIGN.md §5): `testmode` when the merchant's mode says so,
//! `profileId` on creates. Resolved from the settings once; planned per request. A merchant
//! stored with an API key gets none (the key fixes mode and profile).

use crate::config::{Settings, TestMode};
use crate::proxy::headers::content_length;
use crate::rewrite::{asks_for_live, with_body_defaults};
use crate::store::CredentialKind;
use crate::tokens::CachedToken;
use crate::types::MerchantId;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, TRANSFER_ENCODING};
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
    pub async fn plan(
        &self,
        session: &mut ServerSession,
        merchant: &MerchantId,
        key: KeyMode,
        token: &CachedToken,
    ) -> Result<Plan, PlanError> {
        let req = session.req_header();
        let facts = Facts {
            method: &req.method,
            query: req.uri.query(),
            length: content_length(req),
            chunked: req.headers.contains_key(TRANSFER_ENCODING),
            json: req
                .headers
                .get(CONTENT_TYPE)
                .is_some_and(|v| is_json(v.as_bytes())),
        };
        match self.plan_head(&facts, merchant, key, token)? {
            Planned::Done(plan) => Ok(plan),
            Planned::WithBody(edit) => {
                let body = read_body(session, edit.length)
                    .await
                    .map_err(PlanError::Body)?;
                edit.apply(body)
            }
        }
    }

    /// What the head alone decides (see [`Defaults::plan`]). A confined caller (a client's
    /// `test_` key) gets test data only: testmode is forced, and a request for live data, or
    /// one whose body cannot be kept in test mode, is refused.
    pub fn plan_head<'d>(
        &'d self,
        req: &Facts<'_>,
        merchant: &MerchantId,
        key: KeyMode,
        token: &CachedToken,
    ) -> Result<Planned<'d>, PlanError> {
        if token.kind == CredentialKind::ApiKey {
            // An API key fixes mode and profile: no testmode or profileId is added, and a
            // test key may not spend a live one.
            if key.confined && token.live_api_key {
                return Err(PlanError::Forbidden(format!(
                    "a test key acts on test data only, and merchant {merchant} is stored with \
                     a live API key"
                )));
            }
            return Ok(Planned::Done(Plan::default()));
        }
        let d = self.0.get(merchant);
        let testmode = match (d.map(|d| d.testmode).unwrap_or_default(), key.confined) {
            (TestMode::Never, true) => {
                return Err(PlanError::Forbidden(format!(
                    "a test key acts on test data only, and merchant {merchant} is configured \
                     for live data (testmode = \"never\")"
                )))
            }
            (_, true) | (TestMode::Always, false) => true,
            (TestMode::Never, false) => false,
            (TestMode::FromKey, false) => key.test,
        };
        if key.confined && asks_for_live(req.query, None) {
            return Err(live_refused());
        }
        let method = req.method;
        let profile = d
            .and_then(|d| d.profile_id.as_deref())
            .filter(|_| method == Method::POST);
        if !testmode && profile.is_none() {
            return Ok(Planned::Done(Plan::default()));
        }
        let length = req.length.and_then(|n| usize::try_from(n).ok());
        let has_body_method =
            method == Method::POST || method == Method::PATCH || method == Method::DELETE;
        let bodiless = matches!((length, req.chunked), (None | Some(0), false));
        let query_only = testmode && (method == Method::GET || method == Method::DELETE);
        match (length, req.chunked) {
            _ if bodiless && (query_only || key.confined) => Ok(Planned::Done(Plan {
                query_testmode: testmode,
                body: None,
            })),
            (Some(n), false) if req.json && n > 0 && n <= MAX_REWRITE_BODY && has_body_method => {
                Ok(Planned::WithBody(BodyEdit {
                    length: n,
                    testmode,
                    profile,
                    confined: key.confined,
                }))
            }
            _ if key.confined => Err(PlanError::Forbidden(
                "a test key acts on test data only, and the gateway keeps a request in test \
                 mode only with a JSON body of at most 64 KiB"
                    .into(),
            )),
            // No body to add to, not JSON, too large, or chunked: forwarded untouched.
            _ => Ok(Planned::Done(Plan::default())),
        }
    }
}

/// What [`Defaults::plan_head`] looks at in a request head.
pub struct Facts<'a> {
    pub method: &'a Method,
    pub query: Option<&'a str>,
    /// `Content-Length`, as the body is framed by.
    pub length: Option<u64>,
    pub chunked: bool,
    /// `Content-Type: application/json…`.
    pub json: bool,
}

/// A `Content-Type` the defaults may add to.
pub fn is_json(content_type: &[u8]) -> bool {
    content_type.starts_with(b"application/json")
}

/// What the head decided: the plan, or the defaults to add to the whole body once it is read.
pub enum Planned<'d> {
    Done(Plan),
    WithBody(BodyEdit<'d>),
}

/// Defaults to add to a JSON body of `length` bytes.
pub struct BodyEdit<'d> {
    pub length: usize,
    testmode: bool,
    profile: Option<&'d str>,
    confined: bool,
}

impl BodyEdit<'_> {
    /// The plan for the whole `body`: refused when a confined caller asks for live data in it.
    pub fn apply(&self, body: Bytes) -> Result<Plan, PlanError> {
        if self.confined && asks_for_live(None, Some(&body)) {
            return Err(live_refused());
        }
        let body = with_body_defaults(&body, self.testmode, self.profile).unwrap_or(body);
        Ok(Plan {
            query_testmode: false,
            body: Some(body),
        })
    }
}

/// What the caller's key says about test mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyMode {
    /// The caller's key (its gateway key, or the dummy API key of an open gateway) is a
    /// `test_` key: `testmode = "from_key"` adds testmode.
    pub test: bool,
    /// A client's `test_` key: test data only, whatever the merchant's defaults say.
    pub confined: bool,
}

/// Why a request cannot be planned.
pub enum PlanError {
    /// The caller's body could not be read.
    Body(Box<Error>),
    /// A confined caller asked for live data, or for what cannot be kept in test mode.
    Forbidden(String),
}

fn live_refused() -> PlanError {
    PlanError::Forbidden(
        "a test key acts on test data only; this request asks for live data (testmode)".into(),
    )
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
