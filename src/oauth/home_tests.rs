//! The token endpoint service on its own runtime, fed by token managers on others: where
//! calls run (grants and revocations), that a shutdown announcement does not stop it, and what callers get once its
//! runtime is gone.

use super::*;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::store::file::FileStore;
use crate::store::{CredentialStore, StoredMerchant};
use crate::tokens::{TokenManager, TokenPolicy};
use crate::types::{AccessToken, MerchantId, RefreshToken, Secret};
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio::sync::watch;

/// Answers every call with a fresh token and records the thread it ran on.
#[derive(Default)]
struct Recorder {
    threads: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl TokenEndpoint for Recorder {
    async fn exchange(&self, _grant: Grant<'_>) -> Result<TokenSet, OAuthError> {
        let thread = std::thread::current().name().unwrap_or("?").to_string();
        self.threads.lock().unwrap().push(thread);
        Ok(TokenSet {
            access_token: AccessToken::new("access_x"),
            refresh_token: Some(RefreshToken::new("refresh_x")),
            expires_in: Duration::from_secs(3600),
        })
    }
    async fn revoke(&self, _revocation: &Revocation) -> Result<Revoked, OAuthError> {
        let thread = std::thread::current().name().unwrap_or("?").to_string();
        self.threads.lock().unwrap().push(thread);
        Ok(Revoked::Confirmed)
    }
}

/// A one-thread runtime whose thread is called `name`, like each pingora service's.
fn runtime(name: &str) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `f` as a task on `rt` (on its named thread, not the test's) and waits for it.
fn on<T: Send + 'static>(
    rt: &Runtime,
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    rt.block_on(rt.spawn(f)).unwrap()
}

fn id(s: &str) -> MerchantId {
    MerchantId::parse(s).unwrap()
}

/// A token manager whose endpoint is `client`, over a file store that knows m1.
fn manager(client: TokenClient, dir: &tempfile::TempDir, rt: &Runtime) -> TokenManager {
    let store = FileStore::open(dir.path().join("creds.json")).unwrap();
    let policy = TokenPolicy::from_settings(&Settings::default()).unwrap();
    let tm = TokenManager::new(
        Arc::new(client),
        Arc::new(store.clone()),
        policy,
        Arc::new(Metrics::default()),
    );
    let tm2 = tm.clone();
    on(rt, async move {
        let stored = StoredMerchant::new(RefreshToken::new("refresh_1"));
        store.put(&id("m1"), &stored).await.unwrap();
        tm2.load().await.unwrap();
    });
    tm
}

#[test]
fn proxy_and_admin_calls_run_on_the_home_runtime_even_after_shutdown_is_announced() {
    let recorder = Arc::new(Recorder::default());
    let (client, service) = TokenEndpointService::new(recorder.clone());
    let (home, proxy, admin) = (runtime("token-home"), runtime("proxy"), runtime("admin"));
    let (announce, shutdown) = watch::channel(false);
    let service = Arc::new(service);
    let served = service.clone();
    home.spawn(async move { served.start(shutdown).await });
    let dir = tempfile::tempdir().unwrap();
    let tm = manager(client, &dir, &proxy);

    // A proxied request that finds no token: the refresh starts on the proxy's runtime.
    let t = tm.clone();
    on(&proxy, async move { t.get(&id("m1")).await.map(drop) }).unwrap();
    // The admin API: a forced refresh and an onboarding by code.
    let t = tm.clone();
    on(&admin, async move {
        t.refresh_now(&id("m1")).await.map(drop)?;
        let code = Secret::new("code_1");
        t.add_authorization_code(&id("m2"), &code, None).await
    })
    .unwrap();
    // SIGTERM: pingora announces the shutdown; the proxy still serves during the grace period.
    announce.send(true).unwrap();
    let t = tm.clone();
    on(
        &proxy,
        async move { t.refresh_now(&id("m2")).await.map(drop) },
    )
    .unwrap();

    // A removal revokes the cached access token and the refresh token, there too.
    let t = tm.clone();
    let removal = on(
        &admin,
        async move { t.remove_merchant(&id("m1"), true).await },
    );
    let outcome = removal.unwrap().unwrap().outcome;
    assert_eq!(outcome, crate::tokens::RevocationOutcome::Revoked);

    let threads = recorder.threads.lock().unwrap().clone();
    assert_eq!(threads, ["token-home"; 6]);
    assert_eq!(service.received.load(Ordering::Relaxed), 6);
}

#[test]
fn once_the_home_runtime_is_gone_calls_fail_as_unavailable() {
    let (client, service) = TokenEndpointService::new(Arc::new(Recorder::default()));
    let home = runtime("token-home");
    let (_announce, shutdown) = watch::channel(false);
    home.spawn(async move { service.start(shutdown).await });
    let caller = runtime("proxy");
    let c = client.clone();
    let rt = RefreshToken::new("refresh_1");
    let ok = on(&caller, async move {
        c.exchange(Grant::RefreshToken(&rt)).await.map(drop)
    });
    assert_eq!(ok, Ok(()));
    home.shutdown_timeout(Duration::from_secs(1)); // pingora, after the grace period
    let rt = RefreshToken::new("refresh_1");
    let err = on(&caller, async move {
        client.exchange(Grant::RefreshToken(&rt)).await.map(drop)
    });
    assert_eq!(
        err,
        Err(OAuthError::Unavailable(Unavailable::ServiceStopped))
    );
}
