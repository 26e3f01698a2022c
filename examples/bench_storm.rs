//! The refresh-storm client of `benches/load.sh storm`: N concurrent requests for one merchant
//! whose token has just expired, against a running gateway and `bench_upstream serve`.
//!
//! Per N: one priming request (a token is issued now), N connections opened, a wait until that
//! token is past `usable_until` (the storm merchants' tokens live `--short-lifetime-secs`, 2 s
//! by default: usable for 1.5 s), then all N requests at once. Reported: token endpoint calls
//! during the storm (must be 1), statuses, p50/p99/max latency, the token endpoint's own
//! latency, and the same N again on the now-cached token (the cost of N concurrent requests
//! without any refresh, the baseline in the same run), and the CPU this client spent during
//! the storm burst (it shares the machine with the gateway: its own part of the latency).
//!
//! ```sh
//! cargo run --release --example bench_storm -- --gateway 127.0.0.1:8080 --stats 127.0.0.1:18082 --n 1,100,1000
//! ```

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// No request of the storm may take longer than this.
const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let gateway = arg(&args, "--gateway", "127.0.0.1:8080");
    let stats = arg(&args, "--stats", "127.0.0.1:18082");
    let merchant = arg(&args, "--merchant", "s000001");
    let expire_wait =
        Duration::from_millis(arg(&args, "--expire-wait-ms", "1800").parse().unwrap());
    let ns: Vec<usize> = arg(&args, "--n", "1,100,1000")
        .split(',')
        .map(|n| n.parse().expect("--n takes numbers"))
        .collect();
    let request = format!(
        "GET /v2/methods?m={merchant} HTTP/1.1\r\nHost: gateway\r\nX-Merchant-Id: {merchant}\r\n\
         Authorization: Bearer live_gatewaygatewaygatewaygatewayga\r\nConnection: close\r\n\r\n"
    );
    println!("| N | token calls | 2xx | p50 ms | p99 ms | max ms | token endpoint ms | p99 − token ms | same N, cached token: p50 / p99 ms | client CPU ms in the storm |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for n in ns {
        let status = one(&gateway, &request).await;
        assert_eq!(status, 200, "priming request failed: is the gateway up?");
        let primed = Instant::now();
        let conns = connect(&gateway, n).await;
        tokio::time::sleep_until((primed + expire_wait).into()).await;
        let before = token_stats(&stats).await;
        let cpu0 = client_cpu_ms();
        let storm = burst(conns, &request).await;
        let client_ms = client_cpu_ms() - cpu0;
        let after = token_stats(&stats).await;
        let warm = burst(connect(&gateway, n).await, &request).await;
        let token_ms = after.1 as f64 / 1000.0;
        println!(
            "| {n} | {} | {} | {:.1} | {:.1} | {:.1} | {token_ms:.1} | {:.1} | {:.1} / {:.1} | {client_ms:.1} |",
            after.0 - before.0,
            storm.ok,
            storm.pct(0.50),
            storm.pct(0.99),
            storm.pct(1.0),
            storm.pct(0.99) - token_ms,
            warm.pct(0.50),
            warm.pct(0.99),
        );
    }
}

/// CPU time this process has used, in ms.
fn client_cpu_ms() -> f64 {
    use nix::time::{clock_gettime, ClockId};
    let t = clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID).expect("process CPU clock");
    t.tv_sec() as f64 * 1000.0 + t.tv_nsec() as f64 / 1e6
}

/// Latencies (ms, sorted) and the number of 2xx answers of one burst.
struct Burst {
    ms: Vec<f64>,
    ok: usize,
}

impl Burst {
    fn pct(&self, p: f64) -> f64 {
        if self.ms.is_empty() {
            return f64::NAN;
        }
        let i = ((self.ms.len() as f64 * p).ceil() as usize).clamp(1, self.ms.len()) - 1;
        self.ms[i]
    }
}

async fn connect(addr: &str, n: usize) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let s = TcpStream::connect(addr)
            .await
            .expect("connect to the gateway");
        s.set_nodelay(true).expect("nodelay");
        conns.push(s);
    }
    conns
}

/// Sends one request on every connection at once; waits (bounded) for every answer.
async fn burst(conns: Vec<TcpStream>, request: &str) -> Burst {
    let mut tasks = tokio::task::JoinSet::new();
    for mut s in conns {
        let request = request.to_string();
        tasks.spawn(async move {
            let t0 = Instant::now();
            let status = exchange(&mut s, &request).await;
            (status, t0.elapsed().as_secs_f64() * 1000.0)
        });
    }
    let mut out = Burst {
        ms: Vec::new(),
        ok: 0,
    };
    while let Some(done) = tasks.join_next().await {
        let (status, ms) = done.expect("request task");
        out.ok += usize::from((200..300).contains(&status));
        out.ms.push(ms);
    }
    out.ms.sort_by(f64::total_cmp);
    out
}

/// One request on a new connection; its status.
async fn one(addr: &str, request: &str) -> u16 {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    exchange(&mut s, request).await
}

/// Writes `request` (with `Connection: close`) and reads the answer to EOF; its status, or 0.
async fn exchange(s: &mut TcpStream, request: &str) -> u16 {
    let work = async {
        s.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::with_capacity(1024);
        s.read_to_end(&mut answer).await.ok()?;
        std::str::from_utf8(answer.get(9..12)?).ok()?.parse().ok()
    };
    tokio::time::timeout(REQUEST_DEADLINE, work)
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}

/// (token endpoint calls so far, last call's server-side duration in µs).
async fn token_stats(addr: &str) -> (u64, u64) {
    let mut s = TcpStream::connect(addr)
        .await
        .expect("connect to bench_upstream");
    s.write_all(b"GET /_stats HTTP/1.1\r\nHost: stats\r\nConnection: close\r\n\r\n")
        .await
        .expect("stats request");
    let mut answer = String::new();
    tokio::time::timeout(REQUEST_DEADLINE, s.read_to_string(&mut answer))
        .await
        .expect("stats in time")
        .expect("stats answer");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("{}");
    let v: serde_json::Value = serde_json::from_str(body).expect("stats JSON");
    (
        v["token_calls"].as_u64().unwrap_or(0),
        v["token_last_us"].as_u64().unwrap_or(0),
    )
}
