//! Upstream connections: new ones from pingora's [`TransportConnector`] (connect, TLS with
//! SNI, timeouts), idle ones kept here, with an HTTP/1.1 client session on each.
//!
//! Owns: when a connection may be pooled. One goes back to the pool only after a complete
//! exchange ([`Upstreams::release`]); every other path drops the session, which closes the
//! connection, so a connection in an unknown state (a body cut short, a response not read to
//! its end) never carries another merchant's request.
//!
//! The idle pool is the gateway's own, not pingora's: pingora spawns a task per released
//! connection to watch it while idle and asks the kernel for the peer address (`getpeername`)
//! at every checkout, which together cost about 6 % of a proxied request
//! (`benches/README.md`). Here each worker thread keeps a LIFO of idle connections per
//! upstream (the most recently used one is the warmest; another thread's is taken when the
//! own has none), a connection is checked when it is
//! taken (a non-blocking read through the TLS layer, as pingora's `test_reusable_stream`
//! does, so a TLS 1.3 session ticket is not mistaken for stray data; tokio answers it without
//! a system call unless the socket became readable, i.e. closed or sent something), and a
//! sweeper thread closes connections idle longer than [`UPSTREAM_IDLE_TIMEOUT`]. At most
//! `upstream.keepalive_pool_size` idle connections are kept in the whole process.

use futures_util::FutureExt;
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::prelude::*;
use pingora::protocols::http::v1::client::HttpSession;
use pingora::protocols::Stream;
use pingora::upstreams::peer::Peer;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once, Weak};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// Idle pooled upstream connections are closed after this long.
pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Upstreams {
    transport: TransportConnector,
    idle: Arc<IdlePool>,
}

impl Upstreams {
    /// `options` carry `upstream.keepalive_pool_size` and `upstream.ca_file`.
    pub fn new(options: Option<ConnectorOptions>) -> Upstreams {
        let max_idle = options.as_ref().map_or(128, |o| o.keepalive_pool_size);
        Upstreams {
            transport: TransportConnector::new(options),
            idle: IdlePool::new(max_idle, UPSTREAM_IDLE_TIMEOUT),
        }
    }

    /// An idle pooled connection when there is a live one, else a new one; `true` when pooled.
    pub async fn checkout(&self, peer: &HttpPeer) -> Result<(HttpSession, bool)> {
        if let Some(stream) = self.idle.take(peer.reuse_hash()) {
            return Ok((session(stream, peer), true));
        }
        Ok((self.connect(peer).await?, false))
    }

    /// Always a new connection: the one retry after a pooled connection turned out dead.
    pub async fn connect(&self, peer: &HttpPeer) -> Result<HttpSession> {
        let stream = self.transport.new_stream(peer).await?;
        Ok(session(stream, peer))
    }

    /// The fast path's connection (no pingora client session on it): an idle pooled one to
    /// `peer` (whose `reuse_hash` is `key`) when there is a live one, else (or when `fresh`) a
    /// new one; `true` when pooled.
    pub async fn stream(&self, peer: &HttpPeer, key: u64, fresh: bool) -> Result<(Stream, bool)> {
        if !fresh {
            if let Some(stream) = self.idle.take(key) {
                return Ok((stream, true));
            }
        }
        Ok((self.transport.new_stream(peer).await?, false))
    }

    /// Pools a fast-path connection (to the peer whose `reuse_hash` is `key`) whose exchange
    /// completed and whose upstream allows another request on it.
    pub fn release_stream(&self, stream: Stream, key: u64) {
        self.idle.put(key, stream);
    }

    /// Pools the connection of a completed exchange when both sides allow keep-alive;
    /// otherwise closes it.
    pub async fn release(&self, mut session: HttpSession, peer: &HttpPeer) {
        session.respect_keepalive();
        if let Some(stream) = session.reuse().await {
            self.idle.put(peer.reuse_hash(), stream);
        }
    }
}

fn session(stream: Stream, peer: &HttpPeer) -> HttpSession {
    let mut session = HttpSession::new_with_options(stream, peer);
    session.read_timeout = peer.options.read_timeout;
    session.write_timeout = peer.options.write_timeout;
    session
}

/// The idle connections of one [`Upstreams`]: a shard per worker thread, found through a
/// thread-local, and the list of every shard for the sweeper.
struct IdlePool {
    id: u64,
    max_idle: usize,
    idle_timeout: Duration,
    /// Idle connections in all shards.
    count: AtomicUsize,
    shards: Mutex<Vec<Arc<Shard>>>,
    /// Started with the first release (after pingora's fork, if it forks).
    sweeper: Once,
}

/// One thread's idle connections, oldest first.
#[derive(Default)]
struct Shard(Mutex<VecDeque<Idle>>);

struct Idle {
    /// The peer's `reuse_hash`: which upstream (address, TLS, SNI, …) the connection is to.
    key: u64,
    since: Instant,
    stream: Stream,
}

static NEXT_POOL_ID: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's shard of each pool (usually one pool per process).
    static LOCAL: RefCell<Vec<(u64, Arc<Shard>)>> = const { RefCell::new(Vec::new()) };
}

impl IdlePool {
    fn new(max_idle: usize, idle_timeout: Duration) -> Arc<IdlePool> {
        Arc::new(IdlePool {
            id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
            max_idle,
            idle_timeout,
            count: AtomicUsize::new(0),
            shards: Mutex::new(Vec::new()),
            sweeper: Once::new(),
        })
    }

    fn local(&self) -> Arc<Shard> {
        LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            if let Some((_, shard)) = local.iter().find(|(id, _)| *id == self.id) {
                return shard.clone();
            }
            let shard = Arc::new(Shard::default());
            lock(&self.shards).push(shard.clone());
            local.push((self.id, shard.clone()));
            shard
        })
    }

    /// The most recently released live connection to `key` on this thread, else on another
    /// thread (a task may have moved, or released it elsewhere).
    fn take(&self, key: u64) -> Option<Stream> {
        if self.count.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let local = self.local();
        if let Some(stream) = self.take_from(&local, key) {
            return Some(stream);
        }
        let shards: Vec<_> = lock(&self.shards).clone();
        shards
            .iter()
            .filter(|shard| !Arc::ptr_eq(shard, &local))
            .find_map(|shard| self.take_from(shard, key))
    }

    fn take_from(&self, shard: &Shard, key: u64) -> Option<Stream> {
        loop {
            let idle = {
                let mut idle = lock(&shard.0);
                let at = idle.iter().rposition(|c| c.key == key)?;
                idle.remove(at)?
            };
            self.count.fetch_sub(1, Ordering::Relaxed);
            let mut stream = idle.stream;
            if idle.since.elapsed() < self.idle_timeout && is_quiet(&mut stream) {
                return Some(stream);
            }
            // Closed by the upstream, sent something unasked, or idle too long: dropped.
        }
    }

    fn put(self: &Arc<Self>, key: u64, stream: Stream) {
        self.sweeper
            .call_once(|| spawn_sweeper(Arc::downgrade(self), self.idle_timeout));
        if self.count.fetch_add(1, Ordering::Relaxed) >= self.max_idle {
            self.count.fetch_sub(1, Ordering::Relaxed);
            return; // full: closed
        }
        let idle = Idle {
            key,
            since: Instant::now(),
            stream,
        };
        lock(&self.local().0).push_back(idle);
    }

    /// Closes every connection idle for longer than the timeout.
    fn sweep(&self) {
        let shards: Vec<_> = lock(&self.shards).clone();
        for shard in shards {
            let expired: Vec<Idle> = {
                let mut idle = lock(&shard.0);
                let keep = idle
                    .iter()
                    .position(|c| c.since.elapsed() < self.idle_timeout)
                    .unwrap_or(idle.len());
                idle.drain(..keep).collect()
            };
            self.count.fetch_sub(expired.len(), Ordering::Relaxed);
            drop(expired); // closed outside the lock
        }
    }
}

/// A thread that sweeps the pool a few times per idle timeout, until the pool is dropped.
fn spawn_sweeper(pool: Weak<IdlePool>, idle_timeout: Duration) {
    let every = (idle_timeout / 4).max(Duration::from_millis(10));
    let _ = std::thread::Builder::new()
        .name("upstream-pool".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            match pool.upgrade() {
                Some(pool) => pool.sweep(),
                None => return,
            }
        });
}

/// True when an idle connection has nothing to read and is not closed: a read that would
/// block. Reads through the TLS layer, which consumes TLS 1.3 session tickets itself.
pub(super) fn is_quiet(stream: &mut Stream) -> bool {
    let mut buf = [0u8; 1];
    // `unconstrained`: tokio's budget could make a ready read look pending.
    tokio::task::unconstrained(stream.read(&mut buf))
        .now_or_never()
        .is_none()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::protocols::l4::stream::Stream as L4Stream;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair: the pool's side as a pingora stream, and the upstream's side.
    async fn pair(listener: &TcpListener) -> (Stream, TcpStream) {
        let ours = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (theirs, _) = listener.accept().await.unwrap();
        (Box::new(L4Stream::from(ours)), theirs)
    }

    /// True when the upstream's side sees its connection closed within a second.
    async fn closed(theirs: &mut TcpStream) -> bool {
        let mut b = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(1), theirs.read(&mut b)).await;
        matches!(read, Ok(Ok(0)) | Ok(Err(_)))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_last_released_connection_is_taken_first_and_only_for_its_upstream() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = IdlePool::new(8, Duration::from_secs(60));
        let (a, _ta) = pair(&listener).await;
        let (b, _tb) = pair(&listener).await;
        let (a_id, b_id) = (a.id(), b.id());
        pool.put(1, a);
        pool.put(1, b);
        assert!(pool.take(2).is_none(), "another upstream's connection");
        assert_eq!(pool.take(1).map(|s| s.id()), Some(b_id));
        assert_eq!(pool.take(1).map(|s| s.id()), Some(a_id));
        assert!(pool.take(1).is_none());
        assert_eq!(pool.count.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_released_on_another_thread_is_taken() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = IdlePool::new(8, Duration::from_secs(60));
        let (a, _ta) = pair(&listener).await;
        let a_id = a.id();
        let other = pool.clone();
        std::thread::spawn(move || other.put(1, a)).join().unwrap();
        assert_eq!(pool.take(1).map(|s| s.id()), Some(a_id));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_the_upstream_closed_or_wrote_to_is_not_taken() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = IdlePool::new(8, Duration::from_secs(60));
        let (quiet, _t1) = pair(&listener).await;
        let (closed_one, t2) = pair(&listener).await;
        let (chatty, mut t3) = pair(&listener).await;
        let quiet_id = quiet.id();
        pool.put(1, quiet);
        pool.put(1, closed_one);
        pool.put(1, chatty);
        drop(t2);
        t3.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await; // let the reactor see both
        assert_eq!(pool.take(1).map(|s| s.id()), Some(quiet_id));
        assert!(pool.take(1).is_none());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn at_most_max_idle_are_kept_and_idle_ones_are_swept() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = IdlePool::new(2, Duration::from_millis(100));
        let mut theirs = Vec::new();
        for _ in 0..3 {
            let (ours, t) = pair(&listener).await;
            pool.put(1, ours);
            theirs.push(t);
        }
        assert_eq!(pool.count.load(Ordering::Relaxed), 2);
        assert!(
            closed(&mut theirs[2]).await,
            "the third one is closed at once"
        );
        // The sweeper thread (every 25 ms here) closes the other two after 100 ms.
        assert!(closed(&mut theirs[0]).await && closed(&mut theirs[1]).await);
        assert_eq!(pool.count.load(Ordering::Relaxed), 0);
        assert!(pool.take(1).is_none());
    }
}
