//! What can be checked of `docker/` without Docker: Prometheus' config through
//! `promtool check config`; the Grafana dashboard's JSON, its PromQL (through
//! `promtool check rules`) and that every `mollie_gateway_*` metric it plots exists in a live
//! gateway's `/metrics`; the Dockerfile's HEALTHCHECK command, run against a live gateway; and
//! compose.yml structurally, line by line (no YAML parser is a dependency).
//!
//! Try it: `cargo test --test docker_files`.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::fake_mollie::FakeMollie;
use support::{client, GatewayBuilder};

fn docker(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docker")
        .join(file)
}

fn read(file: &str) -> String {
    std::fs::read_to_string(docker(file)).unwrap_or_else(|e| panic!("docker/{file}: {e}"))
}

/// Runs promtool; panics with instructions when it is missing (never skips silently).
fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}). Run scripts/setup, which installs Debian's \
             `prometheus` package (it ships /usr/bin/promtool)"
            )
        });
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), printed)
}

#[test]
fn prometheus_config_passes_promtool() {
    let path = docker("prometheus.yml");
    let (ok, printed) = promtool(&["check", "config", path.to_str().unwrap()]);
    assert!(
        ok,
        "promtool check config docker/prometheus.yml:\n{printed}"
    );
    // It scrapes the compose service `gateway` on the admin port the image listens on.
    assert!(read("prometheus.yml").contains(r#"targets: ["gateway:9090"]"#));
    assert!(read("Dockerfile").contains("MOLLIE_GATEWAY__SERVER__ADMIN_LISTEN=0.0.0.0:9090"));
}

/// Every `expr` in the dashboard, wherever it is nested.
fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// The metric families an expression names (`_bucket`, `_sum`, `_count` stripped).
fn families_in(expr: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("mollie_gateway_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        found.insert(family.to_string());
        rest = &tail[end..];
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_plots_only_metrics_the_gateway_exports() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("grafana/dashboard.json")).expect("dashboard.json is JSON");
    assert_eq!(dashboard["uid"], "mollie-gateway");
    let panels = dashboard["panels"].as_array().expect("panels");
    for p in panels {
        // The data source provisioned in grafana/provisioning/datasources/prometheus.yml.
        assert_eq!(p["datasource"]["uid"], "prometheus", "{}", p["title"]);
    }
    assert!(read("grafana/provisioning/datasources/prometheus.yml").contains("uid: prometheus"));
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    assert!(all.len() >= 10, "{all:?}");

    // The PromQL parses: promtool checks it as recording rules ($__rate_interval is Grafana's).
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("dashboard-rules.yml");
    let mut yaml = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in all.iter().enumerate() {
        let e = e.replace("$__rate_interval", "5m");
        yaml.push_str(&format!(
            "      - record: dashboard:expr{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        ));
    }
    std::fs::write(&rules, yaml).unwrap();
    let (ok, printed) = promtool(&["check", "rules", rules.to_str().unwrap()]);
    assert!(ok, "dashboard PromQL:\n{printed}");

    // Requests, latency (gateway-added and total), refreshes, replays and errors are plotted.
    let joined = all.join("\n");
    for needle in [
        "mollie_gateway_requests_total",
        r#"histogram_quantile(0.99, sum by (le) (rate(mollie_gateway_request_duration_seconds_bucket{part="gateway"}"#,
        r#"histogram_quantile(0.99, sum by (le) (rate(mollie_gateway_request_duration_seconds_bucket{part="total"}"#,
        "mollie_gateway_token_refreshes_total",
        "mollie_gateway_replays_total",
        "mollie_gateway_gateway_errors_total",
    ] {
        assert!(joined.contains(needle), "dashboard lacks {needle}");
    }

    // Every family it names exists in a live gateway's /metrics (after one gateway error).
    let fake = FakeMollie::start().await;
    let mut gw = GatewayBuilder::new(&fake).start();
    let r = client()
        .get(format!("{}/v2/payments", gw.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let mut text = String::new();
    for _ in 0..100 {
        text = gw.metrics().await;
        if text.contains("mollie_gateway_gateway_errors_total{") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let exported: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let used: BTreeSet<String> = all.iter().flat_map(|e| families_in(e)).collect();
    assert!(used.len() >= 8, "{used:?}");
    for family in &used {
        assert!(
            exported.contains(family.as_str()),
            "dashboard plots {family}, which /metrics does not export: {exported:?}"
        );
    }

    // The image's HEALTHCHECK command, pointed at this gateway's admin port, succeeds; and
    // fails against a port nothing listens on.
    let dockerfile = read("Dockerfile");
    let check = healthcheck_command(&dockerfile);
    let admin_port = gw.admin.rsplit(':').next().unwrap().to_string();
    let run = |port: &str| {
        let args = check[1..]
            .iter()
            .map(|a| a.replace("/9090", &format!("/{port}")));
        Command::new(&check[0])
            .args(args)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    assert!(
        run(&admin_port),
        "HEALTHCHECK fails against a live gateway: {check:?}"
    );
    // free_port(): a port where nothing listens, not one the gateway binds.
    assert!(
        !run(&support::free_port().to_string()),
        "HEALTHCHECK passes with nothing there"
    );
    assert!(gw.terminate().is_some_and(|s| s.success()));
}

/// The exec-form `HEALTHCHECK … CMD [...]` of the Dockerfile, continuation lines joined.
fn healthcheck_command(dockerfile: &str) -> Vec<String> {
    let joined = dockerfile.replace("\\\n", " ");
    let line = joined
        .lines()
        .find(|l| l.starts_with("HEALTHCHECK"))
        .expect("a HEALTHCHECK");
    let json = &line[line.find("CMD [").expect("exec-form CMD") + 4..];
    let cmd: Vec<String> = serde_json::from_str(json.trim()).expect("CMD is a JSON array");
    assert!(cmd.concat().contains("/healthz"), "{cmd:?}");
    cmd
}

#[test]
fn dockerfile_builds_locked_and_runs_unprivileged() {
    let d = read("Dockerfile");
    let from: Vec<&str> = d.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(from.len(), 2, "multi-stage: {from:?}");
    assert!(from[0].starts_with("FROM rust:1.") && from[0].contains("-bookworm AS builder"));
    assert_eq!(from[1], "FROM debian:bookworm-slim");
    // The builder image is at least the crate's rust-version.
    let image_minor: u32 = from[0]["FROM rust:1.".len()..]
        .split('-')
        .next()
        .and_then(|m| m.parse().ok())
        .expect("rust:1.NN");
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let msrv_minor: u32 = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \"1."))
        .and_then(|v| v.split(['.', '"']).next())
        .and_then(|m| m.parse().ok())
        .expect("rust-version");
    assert!(
        image_minor >= msrv_minor,
        "rust:1.{image_minor} < 1.{msrv_minor}"
    );
    for needle in [
        "install -y --no-install-recommends cmake",
        "cargo build --release --locked",
        "--no-install-recommends ca-certificates",
        "USER mollie-gateway",
        "EXPOSE 8080 9090",
        "VOLUME /var/lib/mollie-gateway",
        "MOLLIE_GATEWAY__SERVER__LISTEN=0.0.0.0:8080",
        "MOLLIE_GATEWAY__STORE__PATH=/var/lib/mollie-gateway/credentials.json",
        "COPY conf/production.toml",
        "HEALTHCHECK",
    ] {
        assert!(d.contains(needle), "Dockerfile lacks {needle:?}");
    }
    assert!(Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("conf/production.toml")
        .exists());
    let ignore = read("Dockerfile.dockerignore");
    assert!(
        ignore.lines().any(|l| l == "target"),
        "the build context must skip target/"
    );
}

/// The lines of one top-level section's child block (`  name:` and everything indented
/// deeper), e.g. `block(compose, "services", "gateway")`.
fn block<'a>(text: &'a str, section: &str, name: &str) -> Vec<&'a str> {
    let mut in_section = false;
    let mut lines = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if !line.starts_with(' ') && !line.trim().is_empty() && !line.starts_with('#') {
            in_section = line == format!("{section}:");
            inside = false;
            continue;
        }
        if !in_section {
            continue;
        }
        if line.starts_with("  ") && !line.starts_with("   ") {
            inside = line == format!("  {name}:");
            continue;
        }
        if inside {
            lines.push(line.trim());
        }
    }
    lines
}

#[test]
fn compose_has_gateway_prometheus_and_grafana() {
    let compose = read("compose.yml");
    assert!(!compose.contains('\t'), "YAML must not use tabs");
    let gateway = block(&compose, "services", "gateway");
    for needle in [
        "dockerfile: docker/Dockerfile",
        "context: ..",
        "- \"127.0.0.1:8080:8080\"   # proxy",
        "- gateway-data:/var/lib/mollie-gateway",
        "MOLLIE_GATEWAY__OAUTH__CLIENT_SECRET: ${MOLLIE_GATEWAY__OAUTH__CLIENT_SECRET:-}",
    ] {
        assert!(
            gateway.contains(&needle),
            "gateway lacks {needle:?}: {gateway:?}"
        );
    }
    assert!(gateway.iter().any(|l| l.contains(":9090:9090")));
    let prometheus = block(&compose, "services", "prometheus");
    assert!(prometheus.contains(&"- ./prometheus.yml:/etc/prometheus/prometheus.yml:ro"));
    assert!(
        prometheus.contains(&"- gateway"),
        "depends_on gateway: {prometheus:?}"
    );
    let grafana = block(&compose, "services", "grafana");
    assert!(grafana.contains(&"- ./grafana/provisioning:/etc/grafana/provisioning:ro"));
    assert!(grafana
        .contains(&"- ./grafana/dashboard.json:/etc/grafana/dashboards/mollie-gateway.json:ro"));
    // Where the mounts point, the provisioning looks.
    assert!(read("grafana/provisioning/dashboards/mollie-gateway.yml")
        .contains("path: /etc/grafana/dashboards"));
    assert!(read("grafana/provisioning/datasources/prometheus.yml")
        .contains("url: http://prometheus:9090"));
    // Every named volume a service uses is declared.
    for v in ["gateway-data", "prometheus-data", "grafana-data"] {
        assert!(
            compose.contains(&format!("\n  {v}:")),
            "volume {v} not declared"
        );
    }
    // Every file the compose file mounts exists.
    for line in compose.lines() {
        if let Some(src) = line.trim().strip_prefix("- ./") {
            let src = src.split(':').next().unwrap();
            assert!(docker(src).exists(), "compose.yml mounts missing ./{src}");
        }
    }
}

/// The lines under one top-level line of `text` (e.g. `x-replica: &replica`), trimmed.
fn top_block<'a>(text: &'a str, header: &str) -> Vec<&'a str> {
    let mut inside = false;
    let mut lines = Vec::new();
    for line in text.lines() {
        if !line.starts_with(' ') && !line.trim().is_empty() && !line.starts_with('#') {
            inside = line == header;
        } else if inside && !line.trim().is_empty() {
            lines.push(line.trim());
        }
    }
    lines
}

/// `${NAME:-default}` as compose resolves it, from `operator` (what an operator exported).
fn resolve(value: &str, operator: &[(&str, &str)]) -> String {
    let value = value.trim_matches('"');
    let Some(inner) = value.strip_prefix("${").and_then(|v| v.strip_suffix('}')) else {
        return value.to_string();
    };
    let (name, default) = inner.split_once(":-").unwrap_or((inner, ""));
    let exported = operator.iter().find(|(k, _)| *k == name);
    exported.map_or(default, |(_, v)| v).to_string()
}

#[test]
fn compose_runs_two_replicas_on_one_redis_in_a_profile() {
    let compose = read("compose.yml");
    let common = top_block(&compose, "x-replica: &replica");
    for needle in [
        "profiles: [\"replicas\"]",
        "dockerfile: docker/Dockerfile",
        "MOLLIE_GATEWAY__STORE__BACKEND: redis",
        "MOLLIE_GATEWAY__STORE__FALLBACK_PATH: /var/lib/mollie-gateway/fallback.json",
        "- redis",
    ] {
        assert!(
            common.contains(&needle),
            "x-replica lacks {needle:?}: {common:?}"
        );
    }
    let redis = block(&compose, "services", "redis");
    assert!(redis.contains(&"profiles: [\"replicas\"]"), "{redis:?}");
    assert!(redis
        .iter()
        .any(|l| l.contains("\"--appendfsync\", \"always\"")));
    assert!(redis.contains(&"- redis-data:/data"));
    // The single gateway keeps its ports and its file store, outside the profile.
    let gateway = block(&compose, "services", "gateway");
    assert!(!gateway.iter().any(|l| l.starts_with("profiles:")));
    assert!(!gateway.iter().any(|l| l.contains("STORE__BACKEND")));
    // Each replica: the shared part, its own volume (fallback file) and host ports.
    let mut host_ports: Vec<&str> = gateway
        .iter()
        .filter_map(|l| l.strip_prefix("- \"127.0.0.1:"))
        .collect();
    for name in ["replica-1", "replica-2"] {
        let r = block(&compose, "services", name);
        assert!(r.contains(&"<<: *replica"), "{name}: {r:?}");
        let volume = format!("{name}-data");
        assert!(r.contains(&format!("- {volume}:/var/lib/mollie-gateway").as_str()));
        assert!(
            compose.contains(&format!("\n  {volume}:")),
            "{volume} not declared"
        );
        let ports: Vec<&str> = r
            .iter()
            .filter_map(|l| l.strip_prefix("- \"127.0.0.1:"))
            .collect();
        assert_eq!(ports.len(), 2, "{name}: proxy and admin: {r:?}");
        host_ports.extend(ports);
    }
    host_ports
        .iter_mut()
        .for_each(|p| *p = p.split(':').next().unwrap());
    let distinct: BTreeSet<&&str> = host_ports.iter().collect();
    assert_eq!(
        distinct.len(),
        host_ports.len(),
        "a host port twice: {host_ports:?}"
    );
    assert!(compose.contains("\n  redis-data:"));
    // Prometheus scrapes each replica's admin listener.
    let prometheus = read("prometheus.yml");
    for target in ["\"replica-1:9090\"", "\"replica-2:9090\""] {
        assert!(prometheus.contains(target), "prometheus.yml lacks {target}");
    }

    // The replicas' environment on the image's configuration passes `check-config`, for an
    // operator who exported the secrets (and no client keys: the trial setting).
    let operator = [
        ("MOLLIE_GATEWAY__OAUTH__CLIENT_ID", "app_compose"),
        (
            "MOLLIE_GATEWAY__OAUTH__CLIENT_SECRET",
            "compose-client-secret",
        ),
        (
            "MOLLIE_GATEWAY__OAUTH__STATE_SECRET",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ),
        (
            "MOLLIE_GATEWAY__ADMIN__TOKEN",
            "compose-admin-token-0123456789",
        ),
        ("MOLLIE_GATEWAY__SERVER__REQUIRE_CLIENT_KEYS", "false"),
    ];
    let env: Vec<(&str, String)> = common
        .iter()
        .filter_map(|l| l.split_once(": "))
        .filter(|(k, _)| k.starts_with("MOLLIE_GATEWAY__"))
        .map(|(k, v)| (k, resolve(v, &operator)))
        .collect();
    assert!(env.len() >= 10, "{env:?}");
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/production.toml");
    let out = Command::new(support::BIN)
        .arg("--config")
        .arg(&conf)
        .arg("check-config")
        .env_remove("RUST_LOG")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run mollie-gateway check-config");
    let printed = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "check-config: {stderr}");
    assert!(printed.contains("backend = \"redis\""), "{printed}");
    assert!(
        printed.contains("redis_url = \"redis://redis:6379/0\""),
        "{printed}"
    );
}
