//! Realistic Mollie resources inside the fake's `/v2` API, for tests that drive the official
//! SDKs through the gateway: payments (create, get, cursor-paginated list), methods, and
//! `/v2/headers` (answers with response headers the test asks for).
//!
//! Off until a test calls [`Resources::enable`] (other tests rely on `/v2/payments/...`
//! echoing), except `/v2/headers`, which is always served. State is per merchant, like
//! Mollie's: one merchant never sees another's payments (404, as for an unknown id).
//!
//! Behaves like Mollie with an OAuth token where it matters to an SDK:
//! - HAL `_links` are absolute URLs on the fake's own base URL (Mollie writes
//!   `https://api.mollie.com/v2/...`), so an SDK follows them unless the gateway rewrites them;
//! - lists are newest first, `from` (inclusive) and `limit` page through them, with
//!   `_links.next`/`previous` (null at the ends), the query (`testmode`) kept in the links;
//! - `POST /v2/payments` requires `amount`, `description` and a `profileId` (422 otherwise);
//!   `testmode: true` makes a test payment;
//! - reads see test payments only with `testmode=true` in the query, live ones only without.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use axum::body::Body;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

const HAL: &str = "application/hal+json";
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 250;

#[derive(Default)]
pub struct Resources {
    enabled: AtomicBool,
    /// Never held across an await: the handlers are synchronous.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Payments per merchant, oldest first.
    payments: HashMap<String, Vec<Value>>,
    /// Method ids per merchant; merchants not named here get `ideal` and `creditcard`.
    methods: HashMap<String, Vec<String>>,
    /// At most this many payments per page, whatever `limit` asks (to make SDKs that pick
    /// their own page size, like Node's `iterate()`, follow `next` links).
    page_cap: Option<usize>,
}

/// One request, as the fake's API handler saw it after authentication.
pub struct Call<'a> {
    /// `http://127.0.0.1:PORT`, the fake's own base URL.
    pub base: &'a str,
    pub merchant: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub body: &'a [u8],
}

impl Resources {
    /// Serve payments and methods from now on.
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::SeqCst);
    }

    /// The payment methods `merchant` sees in `GET /v2/methods`.
    pub fn set_methods(&self, merchant: &str, ids: &[&str]) {
        self.lock().methods.insert(
            merchant.to_string(),
            ids.iter().map(|s| s.to_string()).collect(),
        );
    }

    /// Caps page sizes at `cap` (the links still carry the caller's `limit`).
    pub fn set_page_cap(&self, cap: usize) {
        self.lock().page_cap = Some(cap);
    }

    /// Every payment of `merchant`, oldest first.
    pub fn payments(&self, merchant: &str) -> Vec<Value> {
        self.lock()
            .payments
            .get(merchant)
            .cloned()
            .unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The answer for `call`, or `None` to let the fake's other routes (echo) answer.
    pub fn handle(&self, call: &Call<'_>) -> Option<Response> {
        let params = query_pairs(call.query);
        if call.path == "/v2/headers" {
            return Some(headers_response(&params));
        }
        if !self.enabled.load(Ordering::SeqCst) {
            return None;
        }
        let testmode = params.iter().any(|(k, v)| k == "testmode" && v == "true");
        match (call.method, call.path) {
            ("POST", "/v2/payments") => Some(self.create_payment(call)),
            ("GET", "/v2/payments") => Some(self.list_payments(call, &params, testmode)),
            ("GET", "/v2/methods") => Some(self.list_methods(call)),
            ("GET", p) => {
                let id = p.strip_prefix("/v2/payments/")?;
                Some(self.get_payment(call.merchant, id, testmode))
            }
            _ => None,
        }
    }

    fn create_payment(&self, call: &Call<'_>) -> Response {
        let Ok(Value::Object(input)) = serde_json::from_slice::<Value>(call.body) else {
            return error(
                400,
                "Bad Request",
                "The request body is not a JSON object",
                None,
            );
        };
        let amount = &input.get("amount").cloned().unwrap_or(Value::Null);
        if !(amount["value"].is_string() && amount["currency"].is_string()) {
            return error(
                422,
                "Unprocessable Entity",
                "The amount is invalid",
                Some("amount"),
            );
        }
        let Some(description) = input.get("description").and_then(Value::as_str) else {
            return error(
                422,
                "Unprocessable Entity",
                "The description is invalid",
                Some("description"),
            );
        };
        // With an OAuth token Mollie needs the profile (an API key implies it).
        let Some(profile) = input.get("profileId").and_then(Value::as_str) else {
            return error(
                422,
                "Unprocessable Entity",
                "The profile id is invalid",
                Some("profileId"),
            );
        };
        let test = input.get("testmode") == Some(&Value::Bool(true));
        let id = format!("tr_{}", alnum(10));
        let payment = json!({
            "resource": "payment",
            "id": id,
            "mode": if test { "test" } else { "live" },
            "createdAt": "2024-03-20T09:13:37+00:00",
            "amount": amount,
            "description": description,
            "method": input.get("method").cloned().unwrap_or(Value::Null),
            "metadata": input.get("metadata").cloned().unwrap_or(Value::Null),
            "status": "open",
            "isCancelable": false,
            "expiresAt": "2024-03-20T09:28:37+00:00",
            "profileId": profile,
            "sequenceType": "oneoff",
            "redirectUrl": input.get("redirectUrl").cloned().unwrap_or(Value::Null),
            "webhookUrl": input.get("webhookUrl").cloned().unwrap_or(Value::Null),
            "_links": {
                "self": {"href": format!("{}/v2/payments/{id}", call.base), "type": HAL},
                "checkout": {
                    "href": format!("https://www.mollie.com/checkout/select-method/{}", &id[3..]),
                    "type": "text/html"
                },
                "dashboard": {
                    "href": format!("https://my.mollie.com/dashboard/org_fake/payments/{id}"),
                    "type": "text/html"
                },
                "documentation": {
                    "href": "https://docs.mollie.com/reference/create-payment",
                    "type": "text/html"
                }
            }
        });
        self.lock()
            .payments
            .entry(call.merchant.to_string())
            .or_default()
            .push(payment.clone());
        respond(201, payment)
    }

    fn get_payment(&self, merchant: &str, id: &str, testmode: bool) -> Response {
        let st = self.lock();
        let found = st
            .payments
            .get(merchant)
            .and_then(|ps| ps.iter().find(|p| p["id"] == id))
            .filter(|p| (p["mode"] == "test") == testmode);
        match found {
            Some(p) => respond(200, p.clone()),
            None => error(
                404,
                "Not Found",
                &format!("No payment exists with token {id}."),
                None,
            ),
        }
    }

    fn list_payments(
        &self,
        call: &Call<'_>,
        params: &[(String, String)],
        testmode: bool,
    ) -> Response {
        let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let limit = match param("limit").map(str::parse::<usize>) {
            None => DEFAULT_LIMIT,
            Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => n,
            Some(_) => return error(400, "Bad Request", "Invalid limit", Some("limit")),
        };
        // Newest first, in the requested mode only.
        let (all, cap): (Vec<Value>, usize) = {
            let st = self.lock();
            let ps = st.payments.get(call.merchant).cloned().unwrap_or_default();
            let all = ps
                .into_iter()
                .rev()
                .filter(|p| (p["mode"] == "test") == testmode)
                .collect();
            (all, st.page_cap.unwrap_or(limit).min(limit))
        };
        let start = match param("from") {
            None => 0,
            Some(from) => match all.iter().position(|p| p["id"] == from) {
                Some(i) => i,
                None => {
                    return error(
                        400,
                        "Bad Request",
                        &format!("Invalid cursor: {from}"),
                        Some("from"),
                    )
                }
            },
        };
        let page: Vec<Value> = all.iter().skip(start).take(cap).cloned().collect();
        let link = |from: Option<&Value>| -> Value {
            let mut q = Vec::new();
            if let Some(id) = from.and_then(|p| p["id"].as_str()) {
                q.push(format!("from={id}"));
            }
            q.push(format!("limit={limit}"));
            if testmode {
                q.push("testmode=true".to_string());
            }
            json!({"href": format!("{}/v2/payments?{}", call.base, q.join("&")), "type": HAL})
        };
        let next = all.get(start + cap).map(|p| link(Some(p)));
        let previous = (start > 0).then(|| link(all.get(start.saturating_sub(cap))));
        respond(
            200,
            json!({
                "count": page.len(),
                "_embedded": {"payments": page},
                "_links": {
                    "self": link(all.get(start).filter(|_| param("from").is_some())),
                    "previous": previous,
                    "next": next,
                    "documentation": {
                        "href": "https://docs.mollie.com/reference/list-payments",
                        "type": "text/html"
                    }
                }
            }),
        )
    }

    fn list_methods(&self, call: &Call<'_>) -> Response {
        let ids = self
            .lock()
            .methods
            .get(call.merchant)
            .cloned()
            .unwrap_or_else(|| vec!["ideal".into(), "creditcard".into()]);
        let methods: Vec<Value> = ids
            .iter()
            .map(|id| {
                let icon = format!("https://www.mollie.com/external/icons/payment-methods/{id}");
                json!({
                    "resource": "method",
                    "id": id,
                    "description": method_description(id),
                    "minimumAmount": {"value": "0.01", "currency": "EUR"},
                    "maximumAmount": {"value": "50000.00", "currency": "EUR"},
                    "image": {
                        "size1x": format!("{icon}.png"),
                        "size2x": format!("{icon}%402x.png"),
                        "svg": format!("{icon}.svg")
                    },
                    "status": "activated",
                    "_links": {
                        "self": {"href": format!("{}/v2/methods/{id}", call.base), "type": HAL}
                    }
                })
            })
            .collect();
        respond(
            200,
            json!({
                "count": methods.len(),
                "_embedded": {"methods": methods},
                "_links": {
                    "self": {"href": format!("{}/v2/methods", call.base), "type": HAL},
                    "documentation": {
                        "href": "https://docs.mollie.com/reference/list-methods",
                        "type": "text/html"
                    }
                }
            }),
        )
    }
}

fn method_description(id: &str) -> &str {
    match id {
        "ideal" => "iDEAL",
        "creditcard" => "Card",
        "bancontact" => "Bancontact",
        "paypal" => "PayPal",
        other => other,
    }
}

/// `GET /v2/headers?set=Name:value&set=…`: 200 with each `set` as a response header (repeats
/// kept, in order); the body lists the request headers (lowercase name → values).
fn headers_response(params: &[(String, String)]) -> Response {
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, HAL);
    for (_, spec) in params.iter().filter(|(k, _)| k == "set") {
        let (name, value) = spec.split_once(':').unwrap_or((spec, ""));
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value.trim_start()),
        ) else {
            return error(
                400,
                "Bad Request",
                &format!("bad header {spec:?}"),
                Some("set"),
            );
        };
        builder = builder.header(name, value);
    }
    builder
        .body(Body::from(json!({"resource": "headers"}).to_string()))
        .expect("valid response")
}

/// The query's pairs, percent-decoded, in order (repeated keys kept).
fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let mut map = super::parse_form(format!("x={s}").as_bytes()).unwrap_or_default();
    map.remove("x").unwrap_or_default()
}

fn alnum(n: usize) -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(n)
        .collect()
}

fn respond(status: u16, body: Value) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, HAL)
        .body(Body::from(body.to_string()))
        .expect("valid response")
}

/// Mollie's error shape.
fn error(status: u16, title: &str, detail: &str, field: Option<&str>) -> Response {
    let mut body = json!({
        "status": status,
        "title": title,
        "detail": detail,
        "_links": {"documentation": {
            "href": "https://docs.mollie.com/overview/handling-errors",
            "type": "text/html"
        }}
    });
    if let Some(f) = field {
        body["field"] = json!(f);
    }
    respond(status, body)
}
