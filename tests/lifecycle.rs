//! Process lifecycle of the real binary: SIGTERM drains in-flight requests and exits 0 with
//! its background services stopped; a graceful upgrade (`run -u`, then SIGQUIT to the old
//! process) hands the listening sockets over without a failed request; the token endpoint
//! service (every token call's runtime) serves through the grace period.
//!
//! Try it: `cargo test --test lifecycle`.

mod support;

use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::fake_mollie::FakeMollie;
use support::{client, log_dir, metric_value, start_with_m1, Gateway, GatewayBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Polls (bounded) until `cond` holds.
async fn eventually(within: Duration, cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_0() {
    let fake = FakeMollie::start().await;
    // On SIGTERM pingora stops accepting at once, keeps running in-flight requests for the
    // grace period, then shuts its runtimes down, which cancels whatever still runs (tokio's
    // shutdown timeout only waits for blocking tasks). So the grace period must cover the
    // 1.5 s request; the shutdown timeout (1 s from the builder) plays no part.
    let mut gw = start_with_m1(&fake, &[("SERVER__GRACE_PERIOD_SECS", "3")]);
    let url = gw.base_url();
    let slow = tokio::spawn(async move {
        let r = client()
            .get(format!("{url}/v2/slow?ms=1500"))
            .header("X-Merchant-Id", "m1")
            .send()
            .await?;
        let status = r.status().as_u16();
        r.text().await.map(|body| (status, body))
    });
    // The fake records the request before it starts sleeping.
    let arrived = eventually(Duration::from_secs(5), || {
        fake.api_requests().iter().any(|r| r.path == "/v2/slow")
    })
    .await;
    assert!(arrived, "the slow request never reached the fake");

    gw.signal("TERM");
    let sent = Instant::now();
    // The listener closes at once: new connections are refused while the request drains.
    let listen = gw.listen.clone();
    let refused = eventually(Duration::from_secs(1), || {
        std::net::TcpStream::connect(&listen).is_err()
    })
    .await;
    assert!(refused, "still accepting after SIGTERM");
    assert!(
        !slow.is_finished(),
        "the slow request ended before the drain"
    );
    let (status, body) = slow
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("in-flight request failed: {e}\n{}", gw.log_text()));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"merchant\":\"m1\""), "{body}");

    let exit = tokio::task::block_in_place(|| gw.wait_exit(Duration::from_secs(15)));
    let exit = exit.unwrap_or_else(|| panic!("still running 15 s after SIGTERM"));
    assert!(
        exit.success(),
        "exit status {exit}; log:\n{}",
        gw.log_text()
    );
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(8),
        "{took:?}"
    );
    let log = gw.log_text();
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("refresher stopped"), "{log}");
}

/// The new process (`run -u`), killed if the test ends early.
struct Upgraded(Child);

impl Drop for Upgraded {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_upgrade_hands_over_sockets_without_a_failed_request() {
    let fake = FakeMollie::start().await;
    // A grace period, so that a request the old process accepted just before it stops
    // accepting still completes (as in production, where it is 5 s).
    let mut old = start_with_m1(&fake, &[("SERVER__GRACE_PERIOD_SECS", "2")]);

    // Traffic throughout, one new connection per request, until told to stop (bounded).
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (url, stop) = (format!("{}/v2/payments", old.base_url()), stop.clone());
        tokio::spawn(async move {
            let c = reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let (mut ok, mut failures) = (0usize, Vec::new());
            let deadline = Instant::now() + Duration::from_secs(25);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                match c.get(&url).header("X-Merchant-Id", "m1").send().await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) => failures.push(format!("status {}", r.status())),
                    Err(e) => failures.push(format!("{e:?}")),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (ok, failures)
        })
    };

    // 1. The new process, same configuration, with -u: it waits on server.upgrade_sock.
    let new_log = log_dir().join(format!(
        "gateway-{}-{}-upgraded.log",
        std::process::id(),
        old.listen.rsplit(':').next().unwrap()
    ));
    let log_file = std::fs::File::create(&new_log).unwrap();
    let mut new = Upgraded(
        old.command()
            .args(["run", "-u"])
            .env("RUST_LOG", "info")
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn run -u"),
    );
    let sock = old.dir.path().join("upgrade.sock");
    let waiting = eventually(Duration::from_secs(10), || sock.exists()).await;
    let new_log_text = || std::fs::read_to_string(&new_log).unwrap_or_default();
    assert!(waiting, "run -u never opened {sock:?}:\n{}", new_log_text());

    // 2. SIGQUIT the old one: it sends its listening sockets, keeps accepting for 5 s beside
    //    the new one, then stops accepting and drains for its grace period.
    old.signal("QUIT");
    let exit = tokio::task::block_in_place(|| old.wait_exit(Duration::from_secs(15)));
    let exit = exit.unwrap_or_else(|| panic!("old process still running 15 s after SIGQUIT"));
    assert!(exit.success(), "old exit {exit}:\n{}", old.log_text());
    assert!(
        new.0.try_wait().unwrap().is_none(),
        "new process exited:\n{}",
        new_log_text()
    );

    // 3. Only the new process is left, on the same addresses.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let (ok, failures) = traffic.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    assert!(ok >= 50, "only {ok} requests");
    let r = client()
        .get(format!("{}/v2/payments", old.base_url()))
        .header("X-Merchant-Id", "m1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let served = metric_value(
        &old.metrics().await, // the admin address now belongs to the new process
        r#"mollie_gateway_requests_total{client="-",status_class="2xx"}"#,
    );
    assert!(served >= 1.0, "the new process served nothing");

    let old_log = old.log_text();
    assert!(old_log.contains("SIGQUIT received"), "{old_log}");
    assert!(old_log.contains("listener sockets sent"), "{old_log}");
    assert!(
        new_log_text().contains("Bootstrap done"),
        "{}",
        new_log_text()
    );
    // Configured on port 0, the new process reports the addresses it was handed.
    for (key, addr) in [
        ("server.listen", &old.listen),
        ("server.admin_listen", &old.admin),
    ] {
        let line = format!("listening listener=\"{key}\" addr={addr}");
        assert!(
            new_log_text().contains(&line),
            "{line}:\n{}",
            new_log_text()
        );
    }

    let _ = std::process::Command::new("kill")
        .args(["-TERM", &new.0.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut status = None;
    while status.is_none() && Instant::now() < deadline {
        status = new.0.try_wait().unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

/// The admin token of the token-home test.
const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";

/// One admin request with the admin token; asserts a 200.
async fn admin_ok(gw: &Gateway, method: &str, path: &str, body: Option<serde_json::Value>) {
    let mut req = client()
        .request(method.parse().unwrap(), format!("{}{path}", gw.admin_url()))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let status = req.send().await.unwrap().status();
    assert_eq!(status, 200, "{method} {path}");
}

/// Three token calls: a proxied request's (m1's first token, the proxy's runtime), a forced
/// refresh and a code exchange (m2) through the admin API (the admin listener's runtime).
/// Also stores m3 without a token call.
async fn token_calls_from_proxy_and_admin(gw: &Gateway, fake: &FakeMollie) {
    let r = client()
        .get(format!("{}/v2/payments", gw.base_url()))
        .header("X-Merchant-Id", "m1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    admin_ok(gw, "POST", "/admin/merchants/m1/refresh", None).await;
    let redirect = format!("{}/oauth/callback", gw.admin_url());
    let code = fake.issue_code("m2", Some(&redirect));
    let put = serde_json::json!({ "authorization_code": code });
    admin_ok(gw, "PUT", "/admin/merchants/m2", Some(put)).await;
    let put = serde_json::json!({ "refresh_token": fake.add_merchant("m3") });
    admin_ok(gw, "PUT", "/admin/merchants/m3", Some(put)).await;
    assert_eq!(fake.token_calls(), 3);
}

/// The one runtime of token traffic (`oauth/home.rs`): token calls started by proxied
/// requests and by the admin API all run on the token endpoint service, and a request still
/// served during the grace period can refresh through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_and_admin_token_calls_share_one_home_that_outlives_the_grace_period() {
    let fake = FakeMollie::start().await;
    let mut gw = GatewayBuilder::new(&fake)
        .env("ADMIN__TOKEN", ADMIN_TOKEN)
        .env("OAUTH__REDIRECT_URI", "http://{admin}/oauth/callback")
        .env("SERVER__GRACE_PERIOD_SECS", "3")
        .prepare();
    gw.onboard(&fake, "m1");
    gw.spawn();
    token_calls_from_proxy_and_admin(&gw, &fake).await;

    // A request for m3 whose head is still arriving when SIGTERM comes.
    let mut raw = tokio::net::TcpStream::connect(&gw.listen).await.unwrap();
    raw.write_all(b"GET /v2/payments HTTP/1.1\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.signal("TERM");
    let announced = |l: &str| l.contains("token endpoint service: shutdown announced");
    let seen = eventually(Duration::from_secs(5), || {
        gw.log_text().lines().any(announced)
    })
    .await;
    assert!(seen, "{}", gw.log_text());
    // The service counted the three calls: all of them ran on its runtime.
    let log = gw.log_text();
    let line = log.lines().find(|l| announced(l)).unwrap_or_default();
    assert!(line.contains("calls=3"), "{line}");

    // The rest of the head: m3's first token, fetched during the grace period.
    assert_eq!(fake.token_calls_for("m3"), 0);
    let rest = b"Host: gw\r\nX-Merchant-Id: m3\r\nConnection: close\r\n\r\n";
    raw.write_all(rest).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut answer));
    read.await.expect("no answer within 5 s").unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}\n{log}");
    assert_eq!(fake.token_calls_for("m3"), 1);

    let exit = tokio::task::block_in_place(|| gw.wait_exit(Duration::from_secs(15)));
    let exit = exit.unwrap_or_else(|| panic!("still running 15 s after SIGTERM"));
    assert!(exit.success(), "exit {exit}; log:\n{}", gw.log_text());
}
