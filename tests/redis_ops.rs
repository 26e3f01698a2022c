//! Operating the Redis store (`store.backend = "redis"`) on a real `redis-server`: start-up
//! checks (a Redis that refuses the credentials), TLS (`rediss://`), OAuth states single-use
//! across replicas, and `store migrate`.

mod support;

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::fake_mollie::FakeMollie;
use support::redis::Redis;
use support::{Gateway, GatewayBuilder};

fn on_redis(fake: &FakeMollie, url: &str) -> Gateway {
    GatewayBuilder::new(fake)
        .env("STORE__BACKEND", "redis")
        .env("STORE__REDIS_URL", url)
        .env("STORE__KEY_PREFIX", "gw:")
        .prepare()
}

/// `run`, which must exit by itself within 15 s: its exit code and standard error.
fn run_refused(gw: &Gateway) -> (Option<i32>, String) {
    let mut child = gw
        .command()
        .arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mollie-gateway");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the gateway started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    (status.code(), err)
}

#[tokio::test]
async fn a_redis_that_refuses_the_credentials_stops_the_start_naming_the_key() {
    let redis = Redis::start_with(&[
        "--requirepass",
        "Default-Pa55",
        "--user",
        "gw",
        "on",
        ">Gw-Pa55",
        "~*",
        "&*",
        "+@all",
    ]);
    let fake = FakeMollie::start().await;
    let sock = redis.socket.display().to_string();
    for (case, url) in [
        (
            "wrong password",
            format!("redis+unix://{sock}?pass=Wr0ng-Pa55"),
        ),
        ("no password", format!("redis+unix://{sock}")),
        (
            "unknown ACL user",
            format!("redis+unix://{sock}?user=nobody&pass=Wr0ng-Pa55"),
        ),
        (
            "ACL user, wrong password",
            format!("redis+unix://{sock}?user=gw&pass=Wr0ng-Pa55"),
        ),
    ] {
        let gw = on_redis(&fake, &url);
        let (code, err) = run_refused(&gw);
        assert_eq!(code, Some(1), "{case}: {err}");
        assert!(err.contains("store.redis_url"), "{case}: {err}");
        assert!(
            err.contains("refused the user or password"),
            "{case}: {err}"
        );
        assert!(
            !err.contains("Wr0ng-Pa55"),
            "{case}: the password shown: {err}"
        );
        assert!(!gw.log_text().contains("Wr0ng-Pa55"), "{case}");
    }
    // The ACL user with its password: starts and is ready.
    let mut gw = on_redis(&fake, &format!("redis+unix://{sock}?user=gw&pass=Gw-Pa55"));
    gw.spawn();
    let mut gw = on_redis(&fake, &format!("redis+unix://{sock}?pass=Default-Pa55"));
    gw.spawn();
    drop(redis);
}

#[tokio::test]
async fn a_redis_url_that_does_not_parse_stops_the_start_naming_the_key() {
    let fake = FakeMollie::start().await;
    let gw = on_redis(&fake, "redis://u:Wr0ng-Pa55@h:6379/notadb");
    let (code, err) = run_refused(&gw);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("store.redis_url does not parse"), "{err}");
    assert!(!err.contains("Wr0ng-Pa55"), "{err}");
}
