//! A real `redis-server` per test, on a unix socket in its own temporary directory (no port
//! to race for), killed when dropped. `scripts/setup --test` installs it.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    child: Option<Child>,
    /// Every write on disk before it is answered (`appendfsync always`): a `kill -9` loses
    /// nothing, as in a production Redis with AOF.
    persistent: bool,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// More `redis-server` arguments (`--requirepass`, `--user`, `--tls-port`, …).
    extra: Vec<String>,
}

impl Redis {
    /// Starts one and waits (bounded, 10 s) until it answers `PING`.
    pub fn start() -> Redis {
        Redis::start_with_options(false, &[])
    }

    /// Starts one with more `redis-server` arguments (`--requirepass`, `--user`, TLS).
    pub fn start_with(extra: &[&str]) -> Redis {
        Redis::start_with_options(false, extra)
    }

    /// One that keeps its data across [`Redis::kill`] and [`Redis::restart`].
    pub fn start_persistent() -> Redis {
        Redis::start_with_options(true, &[])
    }

    fn start_with_options(persistent: bool, extra: &[&str]) -> Redis {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("redis.sock");
        let mut redis = Redis {
            child: None,
            persistent,
            dir,
            socket,
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let aof: &[&str] = if self.persistent {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--appendonly", "no"]
        };
        let child = Command::new("redis-server")
            .args(["--port", "0", "--save", ""])
            .args(aof)
            .arg("--unixsocket")
            .arg(&self.socket)
            .args(["--unixsocketperm", "700"])
            .args(&self.extra)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found: run scripts/setup --test");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9 (its data is gone, unless started with [`Redis::start_persistent`]).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same socket (empty, unless persistent).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// `redis+unix://` URL of this server.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    fn answers(&self) -> bool {
        let Ok(mut s) = UnixStream::connect(&self.socket) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        // `-NOAUTH`: up, with a password required (`--requirepass`).
        s.write_all(b"PING\r\n").is_ok()
            && s.read_exact(&mut buf).is_ok()
            && (&buf == b"+PONG\r\n" || &buf == b"-NOAUTH")
    }

    /// Sends one command as a RESP array (arguments may hold spaces and newlines).
    pub fn call(&self, args: &[&str]) -> String {
        let mut line = format!("*{}\r\n", args.len());
        for a in args {
            line.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        let mut s = UnixStream::connect(&self.socket).expect("connect to redis");
        s.set_read_timeout(Some(Duration::from_millis(500))).ok();
        s.write_all(line.as_bytes()).expect("write");
        let mut buf = vec![0u8; 64 * 1024];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// Sends one inline command and returns the raw answer (tests only: small answers).
    pub fn command(&self, line: &str) -> String {
        let mut s = UnixStream::connect(&self.socket).expect("connect to redis");
        s.set_read_timeout(Some(Duration::from_millis(500))).ok();
        s.write_all(format!("{line}\r\n").as_bytes())
            .expect("write");
        let mut buf = vec![0u8; 64 * 1024];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
