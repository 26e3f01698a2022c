//! Admin hardening through a real gateway: `admin.token_file` (and `check-config` masking
//! it), an audit log line for every admin action without a secret, and the OAuth pages on
//! their own listener (`server.oauth_listen`) and only there.

mod support;

use support::fake_mollie::FakeMollie;
use support::{client, Gateway, GatewayBuilder};

const ADMIN_TOKEN: &str = "admin-token-from-a-file-0123456789";

/// (status, body) of an admin-listener request with the bearer token.
async fn admin(gw: &Gateway, method: &str, path: &str, body: Option<String>) -> (u16, String) {
    let mut req = client()
        .request(method.parse().unwrap(), format!("{}{path}", gw.admin_url()))
        .header("Authorization", format!("Bearer {ADMIN_TOKEN}"));
    if let Some(b) = body {
        req = req.body(b);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_file_enables_the_admin_api_and_is_masked() {
    let fake = FakeMollie::start().await;
    let secrets = tempfile::tempdir().unwrap();
    let file = secrets.path().join("admin-token");
    std::fs::write(&file, format!("{ADMIN_TOKEN}\n")).unwrap();
    let path = file.display().to_string();
    let gw = GatewayBuilder::new(&fake)
        .env("ADMIN__TOKEN_FILE", &path)
        .start();
    assert_eq!(admin(&gw, "GET", "/admin/merchants", None).await.0, 200);
    let wrong = client()
        .get(format!("{}/admin/merchants", gw.admin_url()))
        .header("Authorization", "Bearer nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    // Scrapers and probes need no token.
    for open in ["/metrics", "/healthz", "/readyz"] {
        let resp = client()
            .get(format!("{}{open}", gw.admin_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{open}");
    }

    let out = gw.cli(&["check-config"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("token = \"***\""), "{stdout}");
    assert!(stdout.contains(&path), "{stdout}");
    assert!(!stdout.contains(ADMIN_TOKEN), "{stdout}");
    assert!(!gw.log_text().contains(ADMIN_TOKEN));

    // Exactly one source.
    let mut both = gw.command();
    both.env(
        "MOLLIE_GATEWAY__ADMIN__TOKEN",
        "another-admin-token-9876543210",
    );
    let out = both.arg("check-config").output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("set only one of admin.token and admin.token_file"),
        "{stderr}"
    );
    assert!(!stderr.contains("another-admin-token"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_actions_are_logged_without_secrets() {
    let fake = FakeMollie::start().await;
    let gw = GatewayBuilder::new(&fake)
        .env("ADMIN__TOKEN", ADMIN_TOKEN)
        .start();
    let refresh = fake.add_merchant("m1");
    let body = serde_json::json!({ "refresh_token": refresh }).to_string();
    assert_eq!(
        admin(&gw, "PUT", "/admin/merchants/m1", Some(body)).await.0,
        200
    );
    let refreshed = admin(&gw, "POST", "/admin/merchants/m1/refresh", None).await;
    assert_eq!(refreshed.0, 200, "{}", refreshed.1);
    let access = fake.current_access_token("m1").unwrap();
    let unknown = admin(&gw, "POST", "/admin/merchants/m9/refresh", None).await;
    assert_eq!(unknown.0, 404);
    assert_eq!(
        admin(&gw, "DELETE", "/admin/merchants/m1", None).await.0,
        200
    );

    let log = gw.log_text();
    let audit: Vec<&str> = log.lines().filter(|l| l.contains("admin action")).collect();
    for (action, merchant, outcome) in [
        ("add_refresh_token", "m1", "ok"),
        ("refresh", "m1", "ok"),
        ("refresh", "m9", "admin_not_found"),
        ("remove", "m1", "ok"),
    ] {
        assert!(
            audit
                .iter()
                .any(|l| l.contains(action) && l.contains(merchant) && l.contains(outcome)),
            "no audit line for {action} {merchant} {outcome}:\n{}",
            audit.join("\n")
        );
    }
    assert!(log.contains("revoked"), "the removal's revocation outcome");
    for secret in [refresh.as_str(), access.as_str(), ADMIN_TOKEN] {
        assert!(!log.contains(secret), "a secret in the log:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_pages_have_their_own_listener() {
    let fake = FakeMollie::start().await;
    let redirect = "https://gateway.example/oauth/callback";
    let gw = GatewayBuilder::new(&fake)
        .env("ADMIN__TOKEN", ADMIN_TOKEN)
        .env("SERVER__OAUTH_LISTEN", "127.0.0.1:0")
        .env("OAUTH__REDIRECT_URI", redirect)
        .start();
    assert!(!gw.oauth.is_empty(), "no server.oauth_listen bound");
    let no_redirects = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let oauth = |path: &str| format!("http://{}{path}", gw.oauth);

    let connect = no_redirects
        .get(oauth("/oauth/connect?merchant=m1"))
        .send()
        .await
        .unwrap();
    assert_eq!(connect.status().as_u16(), 302);
    let location = connect.headers()["location"].to_str().unwrap().to_string();
    let url = url::Url::parse(&location).unwrap();
    let state = url
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    let code = fake.issue_code("m1", Some(redirect));
    let callback = no_redirects
        .get(oauth(&format!("/oauth/callback?code={code}&state={state}")))
        .send()
        .await
        .unwrap();
    assert_eq!(callback.status().as_u16(), 200);
    let (status, body) = admin(&gw, "GET", "/admin/merchants/m1", None).await;
    assert_eq!(status, 200, "{body}");

    // Only there: the admin listener has no OAuth pages, the OAuth listener nothing else.
    let on_admin = no_redirects
        .get(format!("{}/oauth/connect?merchant=m1", gw.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(on_admin.status().as_u16(), 404);
    for path in ["/admin/merchants", "/metrics", "/healthz", "/readyz"] {
        let resp = no_redirects
            .get(oauth(path))
            .header("Authorization", format!("Bearer {ADMIN_TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 404, "{path}");
    }
}
