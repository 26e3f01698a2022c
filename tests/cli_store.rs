//! The `merchants` and `check-config` commands and the credential store file: onboarding by
//! refresh token or authorization code, listing, removal, file format and mode, persistence
//! across restarts and `kill -9`, and changes picked up by a running gateway.

mod support;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::fake_mollie::{FakeMollie, CLIENT_SECRET};
use support::{client, read_store, Gateway, GatewayBuilder};

/// Runs a CLI command to completion (bounded: 20 s), feeding `stdin` if given.
fn run(mut cmd: Command, stdin: Option<&str>) -> Output {
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mollie-gateway");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(text.as_bytes()).expect("write stdin");
    } // dropped: EOF
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("CLI command still running after 20 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

fn cli(gw: &Gateway, args: &[&str]) -> Output {
    let mut cmd = gw.command();
    cmd.args(args);
    run(cmd, None)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn assert_ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Exit status is not success; returns stderr.
#[track_caller]
fn assert_fails(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "succeeded\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

fn onboard(gw: &Gateway, id: &str, refresh: &str) {
    assert_ok(&cli(
        gw,
        &["merchants", "add", id, "--refresh-token", refresh],
    ));
}

/// The merchant ids in `merchants list` output (first column, header skipped).
fn listed(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

async fn get_as(gw: &Gateway, merchant: &str) -> reqwest::Response {
    client()
        .get(format!("{}/v2/echo/payments", gw.base_url()))
        .header("X-Merchant-Id", merchant)
        .send()
        .await
        .expect("gateway answers")
}

fn stored_refresh(gw: &Gateway, id: &str) -> Option<String> {
    read_store(&gw.store)["merchants"][id]["refresh_token"]
        .as_str()
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merchants_add_list_remove() {
    let fake = FakeMollie::start().await;
    let gw = GatewayBuilder::new(&fake).prepare();
    let t1 = "refresh_cli_t1_9f8e7d6c5b4a";
    let t2 = "refresh_cli_t2_from_stdin_0a1b2c";

    let out = cli(&gw, &["merchants", "add", "m1", "--refresh-token", t1]);
    let stdout = assert_ok(&out);
    assert!(stdout.contains("m1"), "{stdout}");
    assert!(!stdout.contains(t1) && !text(&out.stderr).contains(t1));
    assert_eq!(stored_refresh(&gw, "m1").as_deref(), Some(t1));

    // `-` reads the token from standard input (trailing newline trimmed).
    let mut cmd = gw.command();
    cmd.args(["merchants", "add", "m2", "--refresh-token", "-"]);
    assert_ok(&run(cmd, Some(&format!("{t2}\n"))));
    assert_eq!(stored_refresh(&gw, "m2").as_deref(), Some(t2));
    // Empty standard input is refused.
    let mut cmd = gw.command();
    cmd.args(["merchants", "add", "m3", "--refresh-token", "-"]);
    let stderr = assert_fails(&run(cmd, Some("\n")));
    assert!(stderr.contains("empty"), "{stderr}");

    let out = cli(&gw, &["merchants", "list"]);
    let stdout = assert_ok(&out);
    assert_eq!(listed(&stdout), ["m1", "m2"], "{stdout}");
    for line in stdout.lines().skip(1) {
        assert!(line.contains("active"), "{stdout}");
    }
    for secret in [t1, t2] {
        assert!(!stdout.contains(secret), "list shows a token: {stdout}");
        assert!(!text(&out.stderr).contains(secret));
    }

    let stdout = assert_ok(&cli(&gw, &["merchants", "remove", "m1"]));
    assert!(stdout.contains("m1"), "{stdout}");
    let stdout = assert_ok(&cli(&gw, &["merchants", "list"]));
    assert_eq!(listed(&stdout), ["m2"], "{stdout}");
    assert!(read_store(&gw.store)["merchants"].get("m1").is_none());
    let stderr = assert_fails(&cli(&gw, &["merchants", "remove", "m1"]));
    assert!(stderr.contains("no merchant m1"), "{stderr}");

    // Invalid ids are refused, naming the problem; nothing is stored.
    let long = "m".repeat(129);
    for (bad, problem) in [("a b", "printable"), (long.as_str(), "longer than 128")] {
        let stderr = assert_fails(&cli(&gw, &["merchants", "add", bad, "--refresh-token", t1]));
        assert!(stderr.contains("merchant id"), "{stderr}");
        assert!(stderr.contains(problem), "{stderr}");
        assert!(!stderr.contains(t1), "{stderr}");
    }
    let stored = read_store(&gw.store);
    let ids: Vec<&String> = stored["merchants"].as_object().unwrap().keys().collect();
    assert_eq!(ids, ["m2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merchants_add_with_an_authorization_code_exchanges_it() {
    let fake = FakeMollie::start().await;
    let mut gw = GatewayBuilder::new(&fake).prepare();
    let redirect = "https://shop.example/mollie/callback";
    let code = fake.issue_code("m1", Some(redirect));

    let out = cli(
        &gw,
        &[
            "merchants",
            "add",
            "m1",
            "--code",
            &code,
            "--redirect-uri",
            redirect,
        ],
    );
    let stdout = assert_ok(&out);
    assert!(stdout.contains("m1"), "{stdout}");

    let reqs = fake.token_requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].grant_type, "authorization_code");
    assert!(
        reqs[0].basic_auth_ok,
        "client credentials not sent as Basic"
    );
    assert_eq!(reqs[0].params.get("code"), Some(&code));
    assert_eq!(
        reqs[0].params.get("redirect_uri").map(String::as_str),
        Some(redirect)
    );
    let current = fake
        .current_refresh_token("m1")
        .expect("the fake issued a refresh token");
    assert_eq!(stored_refresh(&gw, "m1"), Some(current.clone()));
    assert!(!stdout.contains(&current) && !text(&out.stderr).contains(&current));

    gw.spawn();
    let resp = get_as(&gw, "m1").await;
    assert_eq!(resp.status(), 200);
    let echo: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(echo["merchant"], "m1");

    // A used code and an unknown code: refused with invalid_grant; nothing stored.
    let before = std::fs::read(&gw.store).unwrap();
    for bad in [code.as_str(), "code_never_issued"] {
        let out = cli(
            &gw,
            &[
                "merchants",
                "add",
                "m2",
                "--code",
                bad,
                "--redirect-uri",
                redirect,
            ],
        );
        let stderr = assert_fails(&out);
        assert!(stderr.contains("invalid_grant"), "{stderr}");
        assert!(read_store(&gw.store)["merchants"].get("m2").is_none());
    }
    assert_eq!(
        std::fs::read(&gw.store).unwrap(),
        before,
        "the store changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_file_is_private_versioned_json() {
    let fake = FakeMollie::start().await;
    fake.set_rotate_refresh_tokens(true);
    let refresh = fake.add_merchant("m1");
    let mut gw = GatewayBuilder::new(&fake).prepare();
    onboard(&gw, "m1", &refresh);

    let check = |gw: &Gateway| {
        let mode = std::fs::metadata(&gw.store).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "store mode {mode:o}");
        let v = read_store(&gw.store);
        assert_eq!(v["version"], 1, "{v}");
        let merchants = v["merchants"].as_object().expect("merchants is an object");
        assert_eq!(merchants.len(), 1, "{v}");
        let m1 = &merchants["m1"];
        assert!(m1["refresh_token"].is_string(), "{v}");
        assert_eq!(m1["revoked"], false, "{v}");
        assert!(
            m1["updated_at"].as_u64().is_some_and(|t| t > 1_600_000_000),
            "{v}"
        );
        m1["refresh_token"].as_str().unwrap().to_string()
    };
    assert_eq!(check(&gw), refresh);

    // A rotation written by the running gateway keeps the mode and the format.
    gw.spawn();
    assert_eq!(get_as(&gw, "m1").await.status(), 200);
    let current = fake.current_refresh_token("m1").unwrap();
    assert_ne!(current, refresh, "the fake did not rotate");
    assert_eq!(check(&gw), current);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merchants_survive_a_kill_9_and_restart() {
    let fake = FakeMollie::start().await;
    let refresh = fake.add_merchant("m1");
    let mut gw = GatewayBuilder::new(&fake).prepare();
    onboard(&gw, "m1", &refresh);
    gw.spawn();
    assert_eq!(get_as(&gw, "m1").await.status(), 200);
    let calls = fake.token_calls_for("m1");

    gw.kill9();
    gw.spawn();
    let resp = get_as(&gw, "m1").await;
    assert_eq!(resp.status(), 200);
    let echo: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(echo["merchant"], "m1");
    // Access tokens are not persisted: the new process refreshed with the stored token.
    assert_eq!(fake.token_calls_for("m1"), calls + 1);
    assert_eq!(fake.api_calls_for("m1"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merchants_added_while_running_are_served_without_restart() {
    let fake = FakeMollie::start().await;
    let mut gw = GatewayBuilder::new(&fake).start();
    let r2 = fake.add_merchant("m2");
    let r3 = fake.add_merchant("m3");

    let resp = get_as(&gw, "m2").await;
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["x-gateway-error"], "unknown_merchant");

    onboard(&gw, "m2", &r2);
    let resp = get_as(&gw, "m2").await;
    assert_eq!(resp.status(), 200, "m2 added while running is not served");
    // A second change to an existing file is seen too.
    onboard(&gw, "m3", &r3);
    assert_eq!(get_as(&gw, "m3").await.status(), 200);
    assert_eq!(get_as(&gw, "m2").await.status(), 200);
    assert_eq!(fake.api_calls_for("m2"), 2);
    assert_eq!(fake.api_calls_for("m3"), 1);
    gw.kill9();
}

/// `kill -9` at random moments while refresh tokens rotate: the store always parses, keeps
/// the merchant, and holds the current refresh token, or (only when the kill fell between the
/// token endpoint's answer and the save) the one sent in the last token request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_rotations_never_corrupts_or_loses_the_store() {
    const ROUNDS: usize = 5;
    let fake = FakeMollie::start().await;
    fake.set_rotate_refresh_tokens(true);
    let refresh = fake.add_merchant("m1");
    let mut gw = GatewayBuilder::new(&fake).prepare();
    onboard(&gw, "m1", &refresh);

    let mut lost_in_flight = 0;
    let mut served = 0;
    for round in 0..ROUNDS {
        gw.spawn();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let worker = {
            let (url, fake, stop) = (gw.base_url(), fake.clone(), stop.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .no_proxy()
                    .timeout(Duration::from_secs(3))
                    .build()
                    .unwrap();
                let mut ok = 0;
                for _ in 0..2_000 {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    match http
                        .get(format!("{url}/v2/echo/x"))
                        .header("X-Merchant-Id", "m1")
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 200 => ok += 1,
                        Ok(_) => {}
                        Err(_) => break, // the gateway is gone
                    }
                    // Every next request meets a 401 upstream: refresh, rotate, replay.
                    fake.expire_tokens("m1");
                }
                ok
            })
        };
        tokio::time::sleep(Duration::from_millis(fastrand::u64(50..=400))).await;
        gw.kill9();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        served += tokio::time::timeout(Duration::from_secs(10), worker)
            .await
            .expect("request loop ended")
            .expect("request loop");
        // Let the fake finish any request the kill cut off.
        tokio::time::sleep(Duration::from_millis(50)).await;

        let bytes = std::fs::read(&gw.store).expect("store exists");
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "round {round}: store is not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        });
        assert_eq!(v["version"], 1);
        let stored = v["merchants"]["m1"]["refresh_token"]
            .as_str()
            .unwrap_or_else(|| panic!("round {round}: m1 lost: {v}"))
            .to_string();
        assert_eq!(v["merchants"]["m1"]["revoked"], false, "round {round}: {v}");
        let current = fake.current_refresh_token("m1").expect("fake knows m1");
        if stored == current {
            continue;
        }
        let last_sent = fake
            .token_requests()
            .last()
            .and_then(|r| r.params.get("refresh_token").cloned());
        assert_eq!(
            Some(&stored),
            last_sent.as_ref(),
            "round {round}: the store holds neither the current refresh token nor the one \
             in flight (an older rotation was lost)"
        );
        // The in-flight rotation was lost (kill between the answer and the save): the
        // merchant authorizes again, as an operator would have it do.
        lost_in_flight += 1;
        let code = fake.issue_code("m1", None);
        assert_ok(&cli(&gw, &["merchants", "add", "m1", "--code", &code]));
    }
    eprintln!(
        "kill -9 rounds: {ROUNDS}, rotations: {}, requests served: {served}, \
         rounds that lost the in-flight rotation: {lost_in_flight}",
        fake.token_requests().len()
    );
    assert!(
        fake.token_requests().len() > ROUNDS,
        "too few rotations to mean anything"
    );
    assert!(served > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_prints_the_effective_configuration_with_secrets_masked() {
    let fake = FakeMollie::start().await;
    let gw = GatewayBuilder::new(&fake)
        .env("OAUTH__CLIENT_SECRET", "supersecret-xyz")
        .env("ADMIN__TOKEN", "admintok-xyz")
        .env("OAUTH__TOKEN_TIMEOUT_MS", "1234")
        .prepare();
    let out = cli(&gw, &["check-config"]);
    let stdout = assert_ok(&out);
    let stderr = text(&out.stderr);
    assert!(stdout.contains("client_secret = \"***\""), "{stdout}");
    assert!(stdout.contains("token = \"***\""), "{stdout}");
    // The environment overrides the file, and the rest is printed too.
    assert!(stdout.contains("token_timeout_ms = 1234"), "{stdout}");
    assert!(stdout.contains(&gw.listen), "{stdout}");
    for secret in ["supersecret-xyz", "admintok-xyz", CLIENT_SECRET] {
        assert!(!stdout.contains(secret), "{stdout}");
        assert!(!stderr.contains(secret), "{stderr}");
    }
    // What was printed is a configuration the gateway accepts.
    let toml_text: String = stdout
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let parsed: toml::Value = toml::from_str(&toml_text).expect("check-config prints TOML");
    assert_eq!(
        parsed["oauth"]["client_id"].as_str(),
        Some(support::fake_mollie::CLIENT_ID)
    );
}
