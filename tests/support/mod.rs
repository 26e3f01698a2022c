//! Shared test support: the fake Mollie (`fake_mollie`), free ports, and a launcher that runs
//! the real `mollie-gateway` binary against it on 127.0.0.1.
//!
//! Ports: a gateway listens on `127.0.0.1:0` and writes the addresses it bound to
//! `server.bound_addrs_file`, which [`Gateway::spawn`] reads back, so parallel tests never
//! race for a port. A test whose configuration must name the gateway's own address
//! (`{listen}`/`{admin}` in [`GatewayBuilder::toml`] or `env`) cannot wait for that: the harness
//! binds that listener itself and hands the socket over the way `run -u` takes sockets from an
//! old process (pingora's `Fds` over `server.upgrade_sock`), keeping its copy so that a
//! restarted gateway gets the same socket again.
#![allow(dead_code)]

pub mod fake_mollie;
pub mod raw;
pub mod redis;
pub mod tls;

use fake_mollie::FakeMollie;
use std::io::Read;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_mollie-gateway");

/// A port nothing listens on right now (bound to :0, then released): only for addresses the
/// gateway does not bind itself (e.g. a token endpoint that must refuse connections).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Where every test gateway writes its log, so that a test can scan them all for secrets.
pub fn log_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gateway-logs");
    std::fs::create_dir_all(&dir).expect("create log dir");
    dir
}

/// A running `mollie-gateway run` process and its files.
pub struct Gateway {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub store: PathBuf,
    pub log: PathBuf,
    /// The proxy and admin addresses: as configured until [`Gateway::spawn`], then as bound.
    pub listen: String,
    pub admin: String,
    /// The OAuth listener's bound address (`server.oauth_listen`), empty without one.
    pub oauth: String,
    env: Vec<(String, String)>,
    /// Where the gateway writes the addresses it bound.
    bound_file: PathBuf,
    /// Listeners the harness bound itself and hands over (`run -u`), with their fd keys.
    handed: Vec<(String, TcpListener)>,
}

/// Builds a gateway configuration around a fake Mollie; `env` overrides go on top.
pub struct GatewayBuilder {
    base_url: String,
    token_url: String,
    configured: bool,
    env: Vec<(String, String)>,
    /// Raw TOML appended to the generated config (after `[store]`).
    extra_toml: String,
}

impl GatewayBuilder {
    pub fn new(fake: &FakeMollie) -> Self {
        GatewayBuilder {
            base_url: fake.base_url(),
            token_url: fake.token_url(),
            configured: true,
            extra_toml: String::new(),
            env: vec![
                // Fast failures and recoveries for tests.
                ("OAUTH__TOKEN_TIMEOUT_MS".into(), "1000".into()),
                ("OAUTH__BACKOFF_MIN_MS".into(), "200".into()),
                ("OAUTH__BACKOFF_MAX_MS".into(), "1000".into()),
                ("SERVER__GRACE_PERIOD_SECS".into(), "0".into()),
                ("SERVER__GRACEFUL_SHUTDOWN_TIMEOUT_SECS".into(), "1".into()),
            ],
        }
    }

    /// Sets `MOLLIE_GATEWAY__<key>` (key like `OAUTH__TOKEN_TIMEOUT_MS`).
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.into()));
        self
    }

    pub fn token_url(mut self, url: impl Into<String>) -> Self {
        self.token_url = url.into();
        self
    }

    /// Appends raw TOML to the config, e.g. `[merchants.defaults.m1]` tables. In it and in
    /// `env` values, `{listen}` and `{admin}` become the gateway's own addresses.
    pub fn toml(mut self, extra: &str) -> Self {
        self.extra_toml.push_str(extra);
        self.extra_toml.push('\n');
        self
    }

    /// No OAuth app configured (client id and secret left empty).
    pub fn unconfigured(mut self) -> Self {
        self.configured = false;
        self
    }

    /// Writes the config and the store directory; does not start anything.
    pub fn prepare(mut self) -> Gateway {
        // The Redis store requires oauth.state_secret (replicas verify each other's states).
        let redis = self
            .env
            .iter()
            .any(|(k, v)| k == "STORE__BACKEND" && v == "redis");
        let secret = self
            .env
            .iter()
            .any(|(k, _)| k.starts_with("OAUTH__STATE_SECRET"));
        if redis && !secret {
            self = self.env(
                "OAUTH__STATE_SECRET",
                "state-secret-shared-by-test-replicas",
            );
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mut handed = Vec::new();
        let listen = self.listen_addr("{listen}", &mut handed);
        let admin = self.listen_addr("{admin}", &mut handed);
        let store = dir.path().join("data/credentials.json");
        // Each gateway its own (`store.fallback_path` is relative to the working directory).
        let fallback = dir.path().join("data/fallback.json");
        let (id, secret) = if self.configured {
            (fake_mollie::CLIENT_ID, fake_mollie::CLIENT_SECRET)
        } else {
            ("", "")
        };
        let config = dir.path().join("gateway.toml");
        let bound_file = dir.path().join("bound-addrs.toml");
        // Own upgrade socket and pid file, so that parallel gateways never share them.
        let upgrade_sock = dir.path().join("upgrade.sock").display().to_string();
        let pid_file = dir.path().join("gateway.pid").display().to_string();
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\nthreads = 2\n\
                 upgrade_sock = {upgrade_sock:?}\npid_file = {pid_file:?}\n\
                 bound_addrs_file = {:?}\n\
                 [upstream]\nbase_url = \"{}\"\ntoken_url = \"{}\"\n\
                 [oauth]\nclient_id = \"{id}\"\nclient_secret = \"{secret}\"\n\
                 [store]\npath = {:?}\nfallback_path = {:?}\n{}",
                bound_file.display().to_string(),
                self.base_url,
                self.token_url,
                store.display().to_string(),
                fallback.display().to_string(),
                self.extra_toml
                    .replace("{listen}", &listen)
                    .replace("{admin}", &admin),
            ),
        )
        .expect("write config");
        let name = dir.path().file_name().unwrap_or_default().to_string_lossy();
        let name = name.trim_start_matches('.');
        let log = log_dir().join(format!("gateway-{}-{name}.log", std::process::id()));
        let env = self
            .env
            .into_iter()
            .map(|(k, v)| {
                let v = v.replace("{listen}", &listen).replace("{admin}", &admin);
                (format!("MOLLIE_GATEWAY__{k}"), v)
            })
            .collect();
        Gateway {
            child: None,
            dir,
            config,
            store,
            log,
            listen,
            admin,
            oauth: String::new(),
            env,
            bound_file,
            handed,
        }
    }

    /// `127.0.0.1:0`, unless the configuration names this listener's address (`placeholder`):
    /// then a socket bound here, to be handed over.
    fn listen_addr(&self, placeholder: &str, handed: &mut Vec<(String, TcpListener)>) -> String {
        let named = self.extra_toml.contains(placeholder)
            || self.env.iter().any(|(_, v)| v.contains(placeholder));
        if !named {
            return "127.0.0.1:0".to_string();
        }
        let socket = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        // The gateway's accept loop is asynchronous: the socket must not block.
        socket.set_nonblocking(true).expect("non-blocking");
        let addr = socket.local_addr().expect("local addr").to_string();
        handed.push((addr.clone(), socket));
        addr
    }

    /// Prepares and starts the gateway, waiting until it is ready.
    pub fn start(self) -> Gateway {
        let mut gw = self.prepare();
        gw.spawn();
        gw
    }
}

impl Gateway {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.listen)
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// A command for this gateway's binary and config (CLI subcommands).
    pub fn command(&self) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--config").arg(&self.config);
        c.env_remove("RUST_LOG");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Registers `id` at the fake and stores its refresh token with `merchants add` (the CLI,
    /// as an operator would); returns the refresh token.
    pub fn onboard(&self, fake: &FakeMollie, id: &str) -> String {
        let refresh = fake.add_merchant(id);
        let out = self.cli(&["merchants", "add", id, "--refresh-token", &refresh]);
        assert!(out.status.success(), "merchants add {id}: {out:?}");
        refresh
    }

    /// Runs a CLI subcommand to completion.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command()
            .args(args)
            .output()
            .expect("run mollie-gateway")
    }

    /// Starts `run` (`run -u` when the harness hands sockets over) and waits (bounded) for the
    /// bound addresses, then until `/readyz` answers 200.
    pub fn spawn(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        self.start(deadline);
        self.wait_ready(deadline);
    }

    /// Starts `run` and waits (bounded) for the bound addresses only, not for `/readyz`.
    pub fn spawn_unready(&mut self) {
        self.start(Instant::now() + Duration::from_secs(20));
    }

    fn start(&mut self, deadline: Instant) {
        let _ = std::fs::remove_file(&self.bound_file); // a previous run's
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let mut cmd = self.command();
        cmd.arg("run");
        if !self.handed.is_empty() {
            cmd.arg("-u");
        }
        let child = cmd
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn mollie-gateway");
        self.child = Some(child);
        if !self.handed.is_empty() {
            self.hand_over(deadline);
        }
        self.read_bound_addrs(deadline);
    }

    /// Sends the harness's sockets to `run -u`, as an old gateway process would on SIGQUIT.
    fn hand_over(&mut self, deadline: Instant) {
        let sock = self.dir.path().join("upgrade.sock");
        self.wait_for("upgrade socket", deadline, || sock.exists().then_some(()));
        let mut fds = pingora::server::Fds::new();
        for (key, socket) in &self.handed {
            fds.add(key.clone(), socket.as_raw_fd());
        }
        let path = sock.to_str().expect("utf-8 path");
        if let Err(e) = fds.send_to_sock(path) {
            panic!("handing sockets over: {e}; log:\n{}", self.log_text());
        }
    }

    /// Waits for `server.bound_addrs_file` and takes the addresses from it.
    fn read_bound_addrs(&mut self, deadline: Instant) {
        let file = self.bound_file.clone();
        let text = self.wait_for("bound addresses", deadline, || {
            std::fs::read_to_string(&file).ok()
        });
        for line in text.lines() {
            let Some((key, value)) = line.split_once(" = ") else {
                continue;
            };
            let addr = value.trim_matches('"').to_string();
            match key {
                "server.listen" => self.listen = addr,
                "server.admin_listen" => self.admin = addr,
                "server.oauth_listen" => self.oauth = addr,
                _ => {}
            }
        }
    }

    fn wait_ready(&mut self, deadline: Instant) {
        let admin = self.admin.clone();
        self.wait_for("/readyz", deadline, || readyz(&admin).then_some(()));
    }

    /// Polls `probe` until it gives a value, panicking with the log if the gateway exits
    /// first or `deadline` passes.
    fn wait_for<T>(
        &mut self,
        what: &str,
        deadline: Instant,
        mut probe: impl FnMut() -> Option<T>,
    ) -> T {
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("gateway exited early ({status}); log:\n{}", self.log_text());
            }
            if let Some(value) = probe() {
                return value;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("gateway: no {what} in 20 s; log:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// kill -9: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal (`"QUIT"`, `"TERM"`, …) to the running gateway; no wait.
    pub fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args([&format!("-{sig}"), &pid.to_string()])
                .status();
        }
    }

    /// Waits (bounded) for the gateway to exit on its own; `None` if it is still running.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.as_mut()?.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGTERM and wait (bounded) for the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        c.wait().ok()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The log once it holds `needle` (at most 3 s), else as it is: access lines are written
    /// out every 100 ms (README "Logs").
    pub async fn log_eventually(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        loop {
            let log = self.log_text();
            if log.contains(needle) || std::time::Instant::now() > deadline {
                return log;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// A proxied GET for `merchant` (the fake echoes it): (status, `X-Gateway-Error` or "").
    pub async fn proxied(&self, merchant: &str) -> (u16, String) {
        let resp = client()
            .get(format!("{}/v2/echo/check", self.base_url()))
            .header("X-Merchant-Id", merchant)
            .send()
            .await
            .unwrap();
        let code = resp
            .headers()
            .get("x-gateway-error")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (resp.status().as_u16(), code)
    }

    /// The current `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.admin_url()))
            .await
            .expect("scrape /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// The value of one sample line (`name{labels}`) in `/metrics`, 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics().await, sample)
    }

    /// The value of `sample` once it reaches `want` (at most 3 s), else its last value: a
    /// request is counted after its response was written, so just after the caller read it
    /// the count may still be one short.
    pub async fn metric_reaching(&self, sample: &str, want: f64) -> f64 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        loop {
            let value = self.metric(sample).await;
            if value == want || std::time::Instant::now() > deadline {
                return value;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// Registers m1 at the fake and starts a gateway that knows it (with `env` overrides).
pub fn start_with_m1(fake: &FakeMollie, env: &[(&str, &str)]) -> Gateway {
    let mut builder = GatewayBuilder::new(fake);
    for (k, v) in env {
        builder = builder.env(k, *v);
    }
    let mut gw = builder.prepare();
    gw.onboard(fake, "m1");
    gw.spawn();
    gw
}

/// The value of `sample` (exact name and label text) in a Prometheus text exposition.
pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

fn readyz(admin: &str) -> bool {
    use std::io::Write;
    let Ok(mut s) = std::net::TcpStream::connect(admin) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.1 200")
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An HTTP client for tests: no proxy, no pooling surprises across tests.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// Reads the credential store file as JSON.
pub fn read_store(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("read store")).expect("store is JSON")
}

/// A caller key of Mollie's shape (`prefix` + 40 alphanumerics), recorded in the fake's secrets
/// directory (file `<stem>-<pid>.txt`) so that `zz_log_secrets` looks for it in every log.
pub fn recorded_key(prefix: &str, stem: &str) -> String {
    let key = format!(
        "{prefix}_{}",
        std::iter::repeat_with(fastrand::alphanumeric)
            .take(40)
            .collect::<String>()
    );
    let file = fake_mollie::secrets_dir().join(format!("{stem}-{}.txt", std::process::id()));
    let mut all = std::fs::read_to_string(&file).unwrap_or_default();
    all.push_str(&key);
    all.push('\n');
    std::fs::write(file, all).unwrap();
    key
}
