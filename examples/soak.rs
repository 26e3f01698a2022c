//! The soak of `benches/soak.sh` (issue 13): a real gateway process in front of the test
//! suite's fake Mollie (`tests/support/fake_mollie.rs`, included here), 50 merchants on
//! 2-second tokens with rotating refresh tokens, steady mixed load (GET and POST with JSON
//! bodies), the token endpoint failing on a schedule (500s, hangs past `oauth.token_timeout_ms`,
//! slow answers), one merchant whose refresh token is dead (`invalid_grant`), and upstream 401s
//! injected (a merchant's access tokens invalidated at the fake every 2 s).
//!
//! Checks (exit 1 when one fails): no gateway-caused error while the token endpoint is
//! healthy; every error during an outage a 503 with `Retry-After`; the dead merchant only ever
//! 401 `authorization_revoked`, after one token call; every answer the merchant asked for;
//! no duplicate refresh; failed token calls per merchant per outage bounded by the backoff;
//! RSS, open fds and threads flat after the warm-up. Writes `report.txt` and `samples.csv`
//! (one row per second) to `--out`; `benches/soak.sh` draws `soak.png` from the CSV.
//!
//! ```sh
//! cargo run --example soak -- --gateway target/debug/mollie-gateway --secs 60 --out /tmp/soak
//! ```

#[path = "../tests/support/fake_mollie.rs"]
mod fake_mollie;

use fake_mollie::{FakeMollie, TokenMode};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MERCHANTS: usize = 50;
/// The merchant whose refresh token is dead at the fake.
const DEAD: usize = MERCHANTS;
const LIFETIME_SECS: u64 = 2;
const TOKEN_TIMEOUT_MS: u64 = 1000;
const BACKOFF_MIN_MS: u64 = 500;
const BACKOFF_MAX_MS: u64 = 2000;
/// Before an outage, a request may already wait for a refresh that meets it; after it, a
/// merchant may still back off (a hung call's timeout, then up to the longest backoff).
const OUTAGE_LEAD: Duration = Duration::from_secs(2);
const OUTAGE_TAIL: Duration = Duration::from_millis(TOKEN_TIMEOUT_MS + BACKOFF_MAX_MS + 1000);
const WARM_UP: Duration = Duration::from_secs(10);
/// Two refreshes of one merchant closer than this, without an injected 401 between them,
/// are a duplicate (a 2-s token is used for at least 0.5 s before its refresh)
/// (0.5 s at the gateway; measured at the fake, whose clock may lag the gateway's on a busy
/// machine, so with a margin.)
const DUPLICATE_WITHIN: Duration = Duration::from_millis(250);

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn merchant(i: usize) -> String {
    format!("m{i:02}")
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    Http500,
    Hang,
    Slow,
}

impl Fault {
    /// Slow answers (400 ms, within the timeout) are not an outage: no caller may see them.
    fn is_outage(self) -> bool {
        !matches!(self, Fault::Slow)
    }
}

struct Phase {
    fault: Fault,
    start: Duration,
    end: Duration,
}

/// Each 60-s cycle: 12-17 s the token endpoint answers 500, 27-32 s it hangs, 42-50 s it
/// answers after 400 ms; healthy otherwise. The first 10 s are the warm-up.
fn schedule(total: Duration) -> Vec<Phase> {
    let mut phases = Vec::new();
    let mut cycle = Duration::ZERO;
    while cycle + Duration::from_secs(60) <= total.max(Duration::from_secs(60)) {
        for (fault, a, b) in [
            (Fault::Http500, 12, 17),
            (Fault::Hang, 27, 32),
            (Fault::Slow, 42, 50),
        ] {
            phases.push(Phase {
                fault,
                start: cycle + Duration::from_secs(a),
                end: cycle + Duration::from_secs(b),
            });
        }
        cycle += Duration::from_secs(60);
    }
    phases
}

/// One proxied request as the load driver saw it.
struct Outcome {
    sent: Duration,
    done: Duration,
    merchant: usize,
    /// 0: no answer (connection error or timeout).
    status: u16,
    gateway_error: String,
    retry_after: bool,
    /// A 200 whose echo named another merchant.
    wrong_merchant: bool,
}

/// One sample of the gateway process, once a second.
struct Sample {
    t: Duration,
    rss_kib: u64,
    fds: usize,
    /// Of `fds`: sockets (callers, upstream and token endpoint connections, listeners).
    sockets: usize,
    /// Of `fds`: the store's lock file, open once per store write queued on its `flock`.
    store_lock: usize,
    threads: usize,
}

fn proc_sample(pid: u32, t: Duration) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
    };
    let (mut fds, mut sockets, mut store_lock) = (0, 0, 0);
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        fds += 1;
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        let target = target.to_string_lossy();
        if target.starts_with("socket:") {
            sockets += 1;
        } else if target.ends_with(".lock") {
            store_lock += 1;
        }
    }
    Some(Sample {
        t,
        rss_kib: field("VmRSS:")?,
        fds,
        sockets,
        store_lock,
        threads: field("Threads:")? as usize,
    })
}

/// The gateway's open fds by kind (sockets and pipes by kind, files by path).
fn fd_kinds(pid: u32) -> std::collections::BTreeMap<String, usize> {
    let mut kinds = std::collections::BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return kinds;
    };
    for entry in dir.flatten() {
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        let target = target.to_string_lossy();
        let kind = match target.split_once(":[") {
            Some((kind, _)) => kind.to_string(),
            None => target.into_owned(),
        };
        *kinds.entry(kind).or_default() += 1;
    }
    kinds
}

struct Gateway {
    child: Child,
    admin: String,
    listen: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_gateway(bin: &Path, out: &Path, fake: &FakeMollie) -> Gateway {
    let dir = out.join("gateway");
    std::fs::create_dir_all(&dir).expect("gateway dir");
    let store = dir.join("credentials.json");
    let mut merchants = serde_json::Map::new();
    for i in 1..=MERCHANTS {
        let id = merchant(i);
        let refresh = fake.add_merchant(&id);
        merchants.insert(
            id,
            serde_json::json!({"refresh_token": refresh, "revoked": false, "updated_at": 0}),
        );
    }
    fake.revoke(&merchant(DEAD));
    let file = serde_json::json!({"version": 1, "merchants": merchants});
    std::fs::write(&store, file.to_string()).expect("write store");
    let bound = dir.join("bound-addrs.toml");
    let _ = std::fs::remove_file(&bound);
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nthreads = 2\n\
             upgrade_sock = {:?}\npid_file = {:?}\nbound_addrs_file = {:?}\n\
             grace_period_secs = 0\ngraceful_shutdown_timeout_secs = 1\n\
             [upstream]\nbase_url = \"{}\"\ntoken_url = \"{}\"\n\
             [oauth]\nclient_id = \"{}\"\nclient_secret = \"{}\"\n\
             token_timeout_ms = {TOKEN_TIMEOUT_MS}\nbackoff_min_ms = {BACKOFF_MIN_MS}\n\
             backoff_max_ms = {BACKOFF_MAX_MS}\n\
             [store]\npath = {:?}\n[log]\nlevel = \"warn\"\n",
            dir.join("upgrade.sock").display().to_string(),
            dir.join("gateway.pid").display().to_string(),
            bound.display().to_string(),
            fake.base_url(),
            fake.token_url(),
            fake_mollie::CLIENT_ID,
            fake_mollie::CLIENT_SECRET,
            store.display().to_string(),
        ),
    )
    .expect("write config");
    let log = std::fs::File::create(out.join("gateway.log")).expect("gateway log");
    let child = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    let mut gw = Gateway {
        child,
        admin: String::new(),
        listen: String::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while gw.admin.is_empty() {
        assert!(
            Instant::now() < deadline,
            "gateway: no bound addresses in 30 s"
        );
        if let Some(status) = gw.child.try_wait().expect("gateway status") {
            panic!("gateway exited at start ({status}); see gateway.log");
        }
        if let Ok(text) = std::fs::read_to_string(&bound) {
            for line in text.lines() {
                let Some((key, value)) = line.split_once(" = ") else {
                    continue;
                };
                let addr = value.trim_matches('"').to_string();
                match key {
                    "server.listen" => gw.listen = addr,
                    "server.admin_listen" => gw.admin = addr,
                    _ => {}
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    gw
}

async fn wait_ready(http: &reqwest::Client, admin: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = http.get(format!("http://{admin}/readyz")).send().await;
        if ok.is_ok_and(|r| r.status() == 200) {
            return;
        }
        assert!(Instant::now() < deadline, "gateway not ready in 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One request of the mixed load: 60 % GET with a query, 40 % POST with a JSON body of
/// 100 B to 4 KiB.
async fn one_request(http: &reqwest::Client, base: &str, m: usize, t0: Instant) -> Outcome {
    let id = merchant(m);
    let sent = t0.elapsed();
    let req = if fastrand::u8(0..10) < 6 {
        http.get(format!(
            "{base}/v2/payments/tr_{}?limit=25",
            fastrand::u32(..)
        ))
    } else {
        let description = "x".repeat(fastrand::usize(100..4096));
        let body = serde_json::json!({
            "amount": {"currency": "EUR", "value": "10.00"},
            "description": description,
            "redirectUrl": "https://example.org/return",
        });
        http.post(format!("{base}/v2/payments")).json(&body)
    };
    let answer = req.header("X-Merchant-Id", &id).send().await;
    let mut outcome = Outcome {
        sent,
        done: Duration::ZERO,
        merchant: m,
        status: 0,
        gateway_error: String::new(),
        retry_after: false,
        wrong_merchant: false,
    };
    if let Ok(resp) = answer {
        outcome.status = resp.status().as_u16();
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        outcome.gateway_error = header("x-gateway-error").unwrap_or_default();
        outcome.retry_after = header("retry-after").is_some_and(|v| v.parse::<u64>().is_ok());
        let body = resp.bytes().await;
        if outcome.status == 200 {
            let echoed = body
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["merchant"].as_str().map(str::to_string));
            outcome.wrong_merchant = echoed.as_deref() != Some(id.as_str());
        }
    }
    outcome.done = t0.elapsed();
    outcome
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bin = PathBuf::from(arg(&args, "--gateway", "target/debug/mollie-gateway"));
    let secs: u64 = arg(&args, "--secs", "600").parse().expect("--secs");
    let out = PathBuf::from(arg(&args, "--out", "target/soak"));
    let rate: f64 = arg(&args, "--rate", "100").parse().expect("--rate");
    let conns: usize = arg(&args, "--conns", "32").parse().expect("--conns");
    // How slow the slow answers are (within the 1-s timeout: no caller may notice them).
    let slow_ms: u64 = arg(&args, "--slow-ms", "400").parse().expect("--slow-ms");
    // Rotating refresh tokens: every refresh is then an fsync'd store write.
    let rotate = arg(&args, "--rotate", "0") == "1";
    assert!(
        secs >= 60,
        "--secs: at least 60 (one cycle of the fault schedule)"
    );
    std::fs::create_dir_all(&out).expect("out dir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let passed = runtime.block_on(soak(
        &bin,
        Duration::from_secs(secs),
        &out,
        rate,
        conns,
        Duration::from_millis(slow_ms),
        rotate,
    ));
    runtime.shutdown_timeout(Duration::from_secs(1));
    std::process::exit(if passed { 0 } else { 1 });
}

async fn soak(
    bin: &Path,
    total: Duration,
    out: &Path,
    rate: f64,
    conns: usize,
    slow: Duration,
    rotate: bool,
) -> bool {
    let fake = FakeMollie::start().await;
    fake.lean();
    fake.set_token_lifetime(LIFETIME_SECS);
    fake.set_rotate_refresh_tokens(rotate);
    fake.set_rotation_grace(true);
    let gw = tokio::task::block_in_place(|| start_gateway(bin, out, &fake));
    let pid = gw.child.id();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    wait_ready(&http, &gw.admin).await;
    let base = format!("http://{}", gw.listen);
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let phases = schedule(total);

    // The token endpoint's schedule, and per outage the token calls per merchant around it.
    let schedule_task = {
        let fake = fake.clone();
        let windows: Vec<(Fault, Duration, Duration)> =
            phases.iter().map(|p| (p.fault, p.start, p.end)).collect();
        tokio::spawn(async move {
            let mut calls = Vec::new();
            let snapshot = |fake: &FakeMollie| -> Vec<usize> {
                (1..=MERCHANTS)
                    .map(|i| fake.token_calls_for(&merchant(i)))
                    .collect()
            };
            for (fault, start, end) in windows {
                tokio::time::sleep_until((t0 + start).into()).await;
                let before = snapshot(&fake);
                match fault {
                    Fault::Http500 => fake.set_token_mode(TokenMode::InternalError),
                    Fault::Hang => fake.set_token_mode(TokenMode::Hang),
                    Fault::Slow => fake.set_token_delay(slow),
                }
                tokio::time::sleep_until((t0 + end).into()).await;
                fake.set_token_mode(TokenMode::Normal);
                fake.set_token_delay(Duration::ZERO);
                tokio::time::sleep(OUTAGE_TAIL).await;
                let after = snapshot(&fake);
                calls.push((fault, start, end, before, after));
            }
            calls
        })
    };

    // Upstream 401s: every 2 s one live merchant's access tokens die at the fake.
    let injected: Arc<Mutex<Vec<(usize, Duration)>>> = Arc::default();
    let inject_task = {
        let (fake, stop, injected) = (fake.clone(), stop.clone(), injected.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let m = fastrand::usize(1..DEAD);
                injected.lock().unwrap().push((m, t0.elapsed()));
                fake.expire_tokens(&merchant(m));
            }
        })
    };

    // The gateway process, once a second.
    let sampler = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut samples, mut kinds) = (Vec::new(), Vec::new());
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                if let Some(s) = proc_sample(pid, t0.elapsed()) {
                    samples.push(s);
                }
                if kinds.is_empty() && t0.elapsed() >= WARM_UP {
                    kinds.push((t0.elapsed(), fd_kinds(pid)));
                }
            }
            kinds.push((t0.elapsed(), fd_kinds(pid)));
            (samples, kinds)
        })
    };

    // The load: `conns` clients, each paced to rate / conns requests a second.
    let mut load = tokio::task::JoinSet::new();
    let every = Duration::from_secs_f64(conns as f64 / rate);
    for _ in 0..conns {
        let (http, base, stop) = (http.clone(), base.clone(), stop.clone());
        load.spawn(async move {
            let mut outcomes = Vec::new();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tokio::time::sleep(Duration::from_millis(fastrand::u64(
                0..every.as_millis() as u64,
            )))
            .await;
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                let m = fastrand::usize(1..=MERCHANTS);
                outcomes.push(one_request(&http, &base, m, t0).await);
            }
            outcomes
        });
    }
    tokio::time::sleep_until((t0 + total).into()).await;
    stop.store(true, Ordering::SeqCst);
    let mut outcomes = Vec::new();
    while let Some(done) = load.join_next().await {
        outcomes.extend(done.expect("load task"));
    }
    let (samples, fd_kinds) = sampler.await.expect("sampler");
    inject_task.abort();
    let calls = schedule_task.await.expect("schedule");
    let metrics = http
        .get(format!("http://{}/metrics", gw.admin))
        .send()
        .await
        .ok();
    let metrics = match metrics {
        Some(r) => r.text().await.unwrap_or_default(),
        None => String::new(),
    };
    let alive = tokio::task::block_in_place(|| {
        let mut gw = gw;
        let alive = gw.child.try_wait().ok().flatten().is_none();
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        drop(gw);
        alive
    });
    let injected = injected.lock().unwrap().clone();
    let analysis = Analysis {
        total,
        phases: &phases,
        outcomes: &outcomes,
        samples: &samples,
        presentations: &fake.presentations(),
        injected: &injected,
        calls: &calls,
        dead_calls: fake.token_calls_for(&merchant(DEAD)),
        metrics: &metrics,
        alive,
        conns,
        rotate,
        fd_kinds: &fd_kinds,
        t0,
    };
    analysis.report(out)
}

type OutageCalls = (Fault, Duration, Duration, Vec<usize>, Vec<usize>);

struct Analysis<'a> {
    total: Duration,
    phases: &'a [Phase],
    outcomes: &'a [Outcome],
    samples: &'a [Sample],
    presentations: &'a [fake_mollie::Presentation],
    injected: &'a [(usize, Duration)],
    calls: &'a [OutageCalls],
    dead_calls: usize,
    metrics: &'a str,
    alive: bool,
    conns: usize,
    rotate: bool,
    fd_kinds: &'a [(Duration, std::collections::BTreeMap<String, usize>)],
    t0: Instant,
}

impl Analysis<'_> {
    fn in_outage(&self, t: Duration) -> bool {
        self.phases
            .iter()
            .any(|p| p.fault.is_outage() && t + OUTAGE_LEAD >= p.start && t <= p.end + OUTAGE_TAIL)
    }

    /// Writes the report and the CSV; true when every check passed.
    fn report(&self, out: &Path) -> bool {
        let mut r = String::new();
        let mut failed = Vec::new();
        let mut check = |r: &mut String, ok: bool, what: String| {
            let _ = writeln!(r, "[{}] {what}", if ok { "ok" } else { "FAIL" });
            if !ok {
                failed.push(what);
            }
        };
        let secs = self.total.as_secs_f64();
        let _ = writeln!(
            r,
            "soak: {:.0} s, {} merchants on {LIFETIME_SECS}-s tokens ({}), m{DEAD} dead at the \
             fake; token_timeout_ms {TOKEN_TIMEOUT_MS}, backoff {BACKOFF_MIN_MS}-{BACKOFF_MAX_MS} ms",
            secs,
            MERCHANTS,
            if self.rotate {
                "refresh tokens rotating (grace rule): a store write per refresh"
            } else {
                "refresh tokens not rotating"
            }
        );
        for p in self.phases {
            let _ = writeln!(
                r,
                "  fault {:?} {:.0}-{:.0} s",
                p.fault,
                p.start.as_secs_f64(),
                p.end.as_secs_f64()
            );
        }
        let n = self.outcomes.len();
        let _ = writeln!(
            r,
            "requests: {n} ({:.1}/s), upstream 401s injected: {}",
            n as f64 / secs,
            self.injected.len()
        );

        // Callers.
        let (mut healthy_errors, mut outage_errors, mut outage_bad) = (0, 0, 0);
        let (mut dead_ok, mut dead_bad, mut wrong, mut passed_401) = (0, 0, 0, 0);
        let mut codes: HashMap<String, usize> = HashMap::new();
        for o in self.outcomes {
            if o.wrong_merchant {
                wrong += 1;
            }
            if o.merchant == DEAD {
                if o.status == 401 && o.gateway_error == "authorization_revoked" {
                    dead_ok += 1;
                } else {
                    dead_bad += 1;
                }
                continue;
            }
            if o.status == 200 {
                continue;
            }
            if o.status == 401 && o.gateway_error.is_empty() {
                // Mollie's own 401, passed on after the one replay met a 401 too (the
                // injection killed the replay's token as well).
                passed_401 += 1;
                continue;
            }
            *codes
                .entry(format!("{} {}", o.status, o.gateway_error))
                .or_default() += 1;
            if self.in_outage(o.sent) || self.in_outage(o.done) {
                outage_errors += 1;
                if !(o.status == 503 && o.retry_after) {
                    outage_bad += 1;
                }
            } else {
                healthy_errors += 1;
            }
        }
        let mut codes: Vec<_> = codes.into_iter().collect();
        codes.sort();
        let _ = writeln!(
            r,
            "errors by status and X-Gateway-Error (live merchants): {codes:?}"
        );
        check(
            &mut r,
            healthy_errors == 0,
            format!("gateway-caused errors while the token endpoint is healthy: {healthy_errors}"),
        );
        check(
            &mut r,
            outage_bad == 0,
            format!(
                "errors during outages: {outage_errors}, not a 503 with Retry-After: {outage_bad}"
            ),
        );
        check(
            &mut r,
            dead_bad == 0 && dead_ok > 0 && self.dead_calls == 1,
            format!(
                "m{DEAD} (invalid_grant): {dead_ok} × 401 authorization_revoked, {dead_bad} other \
                 answers, {} token call(s)",
                self.dead_calls
            ),
        );
        check(
            &mut r,
            passed_401 <= self.injected.len(),
            format!(
                "upstream 401s passed on after a replay met one too: {passed_401} (at most one \
                 per injection: {})",
                self.injected.len()
            ),
        );
        check(
            &mut r,
            wrong == 0,
            format!("answers naming another merchant: {wrong}"),
        );

        // Token calls.
        let mut per_merchant: HashMap<&str, Vec<Duration>> = HashMap::new();
        for p in self.presentations.iter().filter(|p| p.accepted) {
            per_merchant
                .entry(p.merchant.as_str())
                .or_default()
                .push(p.received.saturating_duration_since(self.t0));
        }
        let mut duplicates = 0;
        let mut examples = Vec::new();
        for (m, times) in &per_merchant {
            let idx: usize = m[1..].parse().unwrap_or(0);
            for w in times.windows(2) {
                let (a, b) = (w[0], w[1]);
                let injected_between = self
                    .injected
                    .iter()
                    .any(|(i, t)| *i == idx && *t + Duration::from_millis(50) >= a && *t <= b);
                if b.saturating_sub(a) < DUPLICATE_WITHIN && !injected_between {
                    duplicates += 1;
                    if examples.len() < 8 {
                        examples.push(format!(
                            "{m} at {:.3} s and {:.3} s",
                            a.as_secs_f64(),
                            b.as_secs_f64()
                        ));
                    }
                }
            }
        }
        let live = MERCHANTS - 1;
        let ok_calls: usize = per_merchant.values().map(Vec::len).sum();
        let lifetimes = secs / LIFETIME_SECS as f64;
        let _ = writeln!(
            r,
            "token calls answered: {ok_calls}, per live merchant per {LIFETIME_SECS}-s token \
             lifetime: {:.2} (a 2-s token is served 0.5-1 s before its background refresh, \
             README \"Tokens\", so 2-4; plus one per injected 401: {:.2})",
            ok_calls as f64 / live as f64 / lifetimes,
            self.injected.len() as f64 / live as f64 / lifetimes
        );
        check(
            &mut r,
            duplicates == 0,
            format!(
                "duplicate refreshes (two within {} ms without an injected 401): {duplicates} \
                 {examples:?}",
                DUPLICATE_WITHIN.as_millis()
            ),
        );
        for (fault, start, end, before, after) in self.calls {
            if !fault.is_outage() {
                continue;
            }
            let window = (*end + OUTAGE_TAIL).saturating_sub(*start);
            let bound = 2 + (window.as_millis() as u64 / (BACKOFF_MIN_MS / 2)) as usize;
            let deltas: Vec<usize> = (0..live)
                .map(|i| after[i].saturating_sub(before[i]))
                .collect();
            let max = deltas.iter().copied().max().unwrap_or(0);
            let mean = deltas.iter().sum::<usize>() as f64 / live as f64;
            check(
                &mut r,
                max <= bound,
                format!(
                    "{fault:?} {:.0}-{:.0} s: token calls per merchant in it and its tail: \
                     mean {mean:.1}, max {max} (bound {bound})",
                    start.as_secs_f64(),
                    end.as_secs_f64()
                ),
            );
        }

        // The process.
        check(&mut r, self.alive, "gateway alive at the end".to_string());
        let after_warm: Vec<&Sample> = self.samples.iter().filter(|s| s.t >= WARM_UP).collect();
        let fifth = (self.total.saturating_sub(WARM_UP)).as_secs_f64() / 5.0;
        let early: Vec<&Sample> = after_warm
            .iter()
            .copied()
            .filter(|s| s.t.as_secs_f64() < WARM_UP.as_secs_f64() + fifth)
            .collect();
        let late: Vec<&Sample> = after_warm
            .iter()
            .copied()
            .filter(|s| s.t.as_secs_f64() >= secs - fifth)
            .collect();
        let mean = |v: &[&Sample], f: fn(&Sample) -> f64| {
            v.iter().map(|s| f(s)).sum::<f64>() / v.len().max(1) as f64
        };
        let max = |v: &[&Sample], f: fn(&Sample) -> f64| v.iter().map(|s| f(s)).fold(0.0, f64::max);
        let rss = |s: &Sample| s.rss_kib as f64 / 1024.0;
        let files = |s: &Sample| (s.fds - s.sockets - s.store_lock) as f64;
        let store_lock = |s: &Sample| s.store_lock as f64;
        let sockets = |s: &Sample| s.sockets as f64;
        let threads = |s: &Sample| s.threads as f64;
        let (rss_early, rss_late) = (mean(&early, rss), mean(&late, rss));
        let rss_first = self.samples.first().map(rss).unwrap_or(0.0);
        check(
            &mut r,
            rss_late <= rss_early * 1.10 + 4.0,
            format!(
                "RSS MiB: {rss_first:.1} at start, {rss_early:.1} after the warm-up (mean of \
                 the first fifth), {rss_late:.1} at the end (mean of the last fifth), max \
                 {:.1}; flat = end ≤ warm × 1.1 + 4",
                max(&after_warm, rss)
            ),
        );
        let min = |v: &[&Sample], f: fn(&Sample) -> f64| {
            v.iter().map(|s| f(s)).fold(f64::INFINITY, f64::min)
        };
        check(
            &mut r,
            min(&late, files) <= min(&early, files) + 2.0,
            format!(
                "open fds other than sockets and the store's lock file (transient ones: store \
                 reads and writes): floor {} after the warm-up, {} at the end (max {}); flat = \
                 end floor ≤ warm floor + 2",
                min(&early, files),
                min(&late, files),
                max(&after_warm, files)
            ),
        );
        let _ = writeln!(
            r,
            "store writes queued on the lock file (one fd and one blocking thread each): max {}, \
             mean {:.1} after the warm-up",
            max(&after_warm, store_lock),
            mean(&after_warm, store_lock)
        );
        // Sockets follow the connections: the callers', upstream ones (in flight, one per
        // caller, and up to `upstream.keepalive_pool_size` = 128 idle), the token endpoint's
        // (one per refreshing merchant), listeners. They move in plateaus with the idle
        // upstream pool (a burst after an outage fills it), so they are checked against
        // that bound, not against the warm-up.
        let socket_bound = (2 * self.conns + 128 + MERCHANTS + 16) as f64;
        check(
            &mut r,
            max(&after_warm, sockets) <= socket_bound,
            format!(
                "sockets: {}-{} after the warm-up, {}-{} in the last fifth; bounded = max ≤ \
                 {socket_bound} (2 per load connection, 128 idle upstream, 1 per merchant, 16)",
                min(&early, sockets),
                max(&early, sockets),
                min(&late, sockets),
                max(&late, sockets)
            ),
        );
        check(
            &mut r,
            max(&late, threads) <= max(&early, threads) + 8.0,
            format!(
                "threads (/proc/<pid>/task; the gateway exports no task count): max {} after \
                 the warm-up, {} at the end; flat = end ≤ warm + 8 (tokio's blocking pool \
                 grows and shrinks with store reads and writes)",
                max(&early, threads),
                max(&late, threads)
            ),
        );
        for (t, kinds) in self.fd_kinds {
            let _ = writeln!(r, "  fds at {:.0} s: {kinds:?}", t.as_secs_f64());
        }
        let _ = writeln!(r, "gateway metrics at the end:");
        for line in self.metrics.lines().filter(|l| {
            !l.starts_with('#')
                && (l.starts_with("mollie_gateway_gateway_errors_total")
                    || l.starts_with("mollie_gateway_token_refreshes_total")
                    || l.starts_with("mollie_gateway_replays_total")
                    || l.starts_with("mollie_gateway_upstream_401_total")
                    || l.starts_with("mollie_gateway_requests_total"))
        }) {
            let _ = writeln!(r, "  {line}");
        }
        let _ = writeln!(
            r,
            "{}",
            if failed.is_empty() {
                "PASS".to_string()
            } else {
                format!("FAIL: {} check(s)", failed.len())
            }
        );
        print!("{r}");
        std::fs::write(out.join("report.txt"), &r).expect("write report");
        std::fs::write(out.join("samples.csv"), self.csv()).expect("write csv");
        failed.is_empty()
    }

    /// One row per second: t, RSS MiB, fds, threads, answers, 2xx, 503 with Retry-After,
    /// other errors (live merchants), and whether the token endpoint is down.
    fn csv(&self) -> String {
        let secs = self.total.as_secs() as usize + 1;
        let mut rows = vec![[0usize; 4]; secs];
        for o in self.outcomes {
            let s = (o.done.as_secs() as usize).min(secs - 1);
            rows[s][0] += 1;
            if o.status == 200 {
                rows[s][1] += 1;
            } else if o.merchant != DEAD {
                if o.status == 503 && o.retry_after {
                    rows[s][2] += 1;
                } else {
                    rows[s][3] += 1;
                }
            }
        }
        let mut csv = String::from(
            "t,rss_mib,fds,sockets,store_lock,threads,req,ok,e503,other_errors,outage\n",
        );
        for s in self.samples {
            let i = (s.t.as_secs() as usize).min(secs - 1);
            let down = self
                .phases
                .iter()
                .any(|p| p.fault.is_outage() && s.t >= p.start && s.t < p.end);
            let _ = writeln!(
                csv,
                "{},{:.2},{},{},{},{},{},{},{},{},{}",
                s.t.as_secs(),
                s.rss_kib as f64 / 1024.0,
                s.fds,
                s.sockets,
                s.store_lock,
                s.threads,
                rows[i][0],
                rows[i][1],
                rows[i][2],
                rows[i][3],
                u8::from(down)
            );
        }
        csv
    }
}
