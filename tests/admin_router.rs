//! The admin listener's router through a real gateway process: every answer it makes itself is
//! in Mollie's error shape with `X-Gateway-Error` (404 for an unknown path, 405 with `Allow`
//! for another method, 400 for every input an extractor rejects), while the `/oauth/…` pages
//! stay HTML; and a `PUT` body is JSON whatever its `Content-Type`, as the README's `curl -d`
//! examples send it.
//!
//! Try it: `cargo test --test admin_router`.

mod support;

use std::io::{Read, Write};
use support::fake_mollie::FakeMollie;
use support::{client, Gateway, GatewayBuilder};

const ADMIN_TOKEN: &str = "admin-token-for-router-tests-0123456789";

fn gateway(fake: &FakeMollie) -> Gateway {
    GatewayBuilder::new(fake)
        .env("ADMIN__TOKEN", ADMIN_TOKEN)
        .start()
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// A gateway error in Mollie's shape with this status and code.
    fn assert_error(&self, status: u16, code: &str) -> serde_json::Value {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.header("x-gateway-error"), code, "{}", self.body);
        assert_eq!(self.header("content-type"), "application/hal+json");
        assert_eq!(self.header("content-length"), self.body.len().to_string());
        assert_eq!(self.header("cache-control"), "no-store");
        let v: serde_json::Value = serde_json::from_str(&self.body).unwrap();
        assert_eq!(v["status"], status);
        assert!(v["title"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(v["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("mollie-gateway: ")));
        assert_eq!(
            v["_links"]["documentation"]["href"],
            "https://docs.mollie.com/reference/handling-errors"
        );
        v
    }
}

/// One request with exactly these headers (reqwest adds only `Host`, `Accept` and framing).
async fn send(
    gw: &Gateway,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Answer {
    let url = format!("{}{path}", gw.admin_url());
    let mut req = client().request(method.parse().unwrap(), url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    Answer {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.text().await.unwrap(),
    }
}

fn bearer() -> String {
    format!("Bearer {ADMIN_TOKEN}")
}

#[tokio::test]
async fn unknown_paths_and_other_methods_are_mollie_shaped() {
    let fake = FakeMollie::start().await;
    let gw = gateway(&fake);
    for path in ["/nope", "/metrics/x", "/healthz/", "/oauth", "/"] {
        send(&gw, "GET", path, &[], None)
            .await
            .assert_error(404, "admin_not_found");
    }
    for path in ["/metrics", "/healthz", "/readyz"] {
        for method in ["POST", "PUT", "DELETE", "PATCH"] {
            let a = send(&gw, method, path, &[], Some("x")).await;
            a.assert_error(405, "admin_method_not_allowed");
            assert_eq!(a.header("allow"), "GET", "{method} {path}");
        }
        assert_eq!(send(&gw, "HEAD", path, &[], None).await.status, 200);
    }

    let auth = bearer();
    let auth = [("Authorization", auth.as_str())];
    for (method, path, allow) in [
        ("PUT", "/admin/merchants", "GET"),
        ("PATCH", "/admin/merchants/m1", "GET, PUT, DELETE"),
        ("POST", "/admin/merchants/m1", "GET, PUT, DELETE"),
        ("GET", "/admin/merchants/m1/refresh", "POST"),
    ] {
        let a = send(&gw, method, path, &auth, None).await;
        let v = a.assert_error(405, "admin_method_not_allowed");
        assert_eq!(a.header("allow"), allow, "{method} {path}");
        assert_eq!(v["title"], "Method Not Allowed");
        // The bearer check comes first.
        send(&gw, method, path, &[], None)
            .await
            .assert_error(401, "admin_unauthorized");
    }
    for path in [
        "/admin",
        "/admin/",
        "/admin/merchants/m1/other",
        "/admin/x/y/z",
    ] {
        send(&gw, "GET", path, &auth, None)
            .await
            .assert_error(404, "admin_not_found");
    }

    // The browser pages stay HTML, errors included.
    for (method, path, status) in [
        ("GET", "/oauth/nope", 404),
        ("POST", "/oauth/connect", 405),
        ("DELETE", "/oauth/callback", 405),
    ] {
        let a = send(&gw, method, path, &[], None).await;
        assert_eq!(a.status, status, "{method} {path}");
        assert!(a.header("content-type").starts_with("text/html"));
        assert_eq!(a.header("x-gateway-error"), "");
    }
}

#[tokio::test]
async fn every_rejected_input_is_a_400_in_mollies_shape() {
    let fake = FakeMollie::start().await;
    let gw = gateway(&fake);
    let auth = bearer();
    let json = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    // Where axum's `Json` would answer 422 (wrong types) or 400 (syntax), and its body limit
    // 413 (declared length over 64 KiB).
    let big = format!(r#"{{"refresh_token":"{}"}}"#, "r".repeat(64 * 1024));
    for body in [
        r#"{"refresh_token":12}"#,
        "{\"refresh_token\":",
        big.as_str(),
    ] {
        send(&gw, "PUT", "/admin/merchants/m1", &json, Some(body))
            .await
            .assert_error(400, "admin_bad_request");
    }
    // A path segment that is not UTF-8 once decoded (axum's `Path` rejection), or has a bad
    // %-escape.
    for (method, path) in [
        ("GET", "/admin/merchants/%FF"),
        ("POST", "/admin/merchants/%C3%28/refresh"),
        ("DELETE", "/admin/merchants/a%2"),
    ] {
        let a = send(&gw, method, path, &json, None).await;
        let v = a.assert_error(400, "admin_bad_request");
        assert!(v["detail"].as_str().unwrap().contains("merchant id"), "{v}");
    }
    // A chunked body over the limit (no length declared up front); the answer arrives.
    let mut chunked = format!(
        "PUT /admin/merchants/m1 HTTP/1.1\r\nHost: admin\r\nAuthorization: {auth}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..20 {
        chunked.extend_from_slice(format!("{:x}\r\n{}\r\n", 8192, "a".repeat(8192)).as_bytes());
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let raw = raw_exchange(&gw, &chunked);
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    assert!(raw.contains("x-gateway-error: admin_bad_request"), "{raw}");
    assert!(raw.contains("larger than 65536 bytes"), "{raw}");

    assert!(fake.token_requests().is_empty());
}

#[tokio::test]
async fn a_put_body_is_json_whatever_its_content_type() {
    let fake = FakeMollie::start().await;
    let gw = gateway(&fake);
    let auth = bearer();
    for (i, content_type) in [
        Some("application/x-www-form-urlencoded"), // `curl -d`
        Some("text/plain"),
        Some("application/json; charset=utf-8"),
        None,
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("m{i}");
        let refresh = fake.add_merchant(&id);
        let mut headers = vec![("Authorization", auth.as_str())];
        headers.extend(content_type.map(|c| ("Content-Type", c)));
        let body = format!(r#"{{"refresh_token": "{refresh}"}}"#);
        let a = send(
            &gw,
            "PUT",
            &format!("/admin/merchants/{id}"),
            &headers,
            Some(&body),
        )
        .await;
        assert_eq!(a.status, 200, "{content_type:?}: {}", a.body);
        assert_eq!(a.header("content-type"), "application/json");
        assert!(!a.body.contains(&refresh));
    }
}

/// Writes `request` on a new connection and reads the whole answer (the request says
/// `Connection: close`).
fn raw_exchange(gw: &Gateway, request: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(&gw.admin).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out)
        .to_lowercase()
        .replacen("http/1.1", "HTTP/1.1", 1)
}
