//! The listening sockets of the proxy and admin listeners: bound by the gateway itself and
//! handed to pingora, so that a listener configured on port 0 gets a free port and the address
//! it actually bound is known. It is logged (`listening`), given to `/readyz`, and written to
//! `server.bound_addrs_file` once every listener is bound (tests start gateways on
//! `127.0.0.1:0` and read that file back).
//!
//! How: pingora 0.9 binds listeners itself and tells their local address only under
//! `cfg(test)`. But before binding, a pingora listener looks its address string up in the
//! server's table of listening fds (`ListenFds`), the table `run -u` fills with the old
//! process's sockets, and uses a socket found there as it is. So [`Listening::bind`] binds at
//! start-up (a clear error when the address is taken), and [`Listener`] wraps the pingora
//! service: just before that service builds its listeners, the socket goes into the table
//! under the service's address key ([`Socket::fd_key`]) or, after `run -u`, the inherited one
//! is found there; `getsockname` on it gives the address. The table is also what pingora sends
//! the next process on SIGQUIT, so graceful upgrades work as before.
//!
//! Must not: let pingora bind a listener itself (its address would stay unknown), or hold a
//! lock across an await.

use async_trait::async_trait;
use nix::sys::socket::{getsockname, SockaddrStorage};
use pingora::server::{ListenFds, RuntimeOpts, ShutdownWatch};
use pingora::services::{ServiceReadyNotifier, ServiceWithDependents};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{IntoRawFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// One listener's actual address, known once its service has started.
#[derive(Clone, Debug, Default)]
pub struct BoundAddr(Arc<OnceLock<SocketAddr>>);

impl BoundAddr {
    pub fn get(&self) -> Option<SocketAddr> {
        self.0.get().copied()
    }

    /// An address known from the start (tests).
    pub fn known(addr: SocketAddr) -> BoundAddr {
        let bound = BoundAddr::default();
        let _ = bound.0.set(addr);
        bound
    }
}

/// Every listener of the process and where their addresses are written.
#[derive(Clone)]
pub struct Listening(Arc<Registry>);

struct Registry {
    /// `server.bound_addrs_file`; `None` when empty.
    file: Option<PathBuf>,
    /// `run -u`: the old process hands the sockets over, nothing is bound at start-up.
    upgrade: bool,
    /// (config key, address) of each listener, in the order they were bound. A std mutex:
    /// only held to register, or to write the file, never across an await.
    listeners: Mutex<Vec<(&'static str, BoundAddr)>>,
}

impl Listening {
    pub fn new(bound_addrs_file: &str, upgrade: bool) -> Listening {
        Listening(Arc::new(Registry {
            file: Some(PathBuf::from(bound_addrs_file)).filter(|_| !bound_addrs_file.is_empty()),
            upgrade,
            listeners: Mutex::new(Vec::new()),
        }))
    }

    /// Binds `addr` (the value of config `key`) now, unless `run -u` will hand it over.
    pub fn bind(&self, key: &'static str, addr: &str) -> std::io::Result<Socket> {
        let bound = match self.0.upgrade {
            true => None,
            false => Some(TcpListener::bind(addr)?),
        };
        let addr_handle = BoundAddr::default();
        let mut listeners = self.0.listeners.lock().unwrap_or_else(|p| p.into_inner());
        listeners.push((key, addr_handle.clone()));
        Ok(Socket {
            key,
            addr: addr.to_string(),
            fd_key: fd_key(key, addr),
            bound,
            bound_addr: addr_handle,
            listening: self.clone(),
        })
    }

    /// Once every listener is bound, writes `key = "ip:port"` lines to the file (atomically:
    /// a reader never sees half of it). The lock makes two listeners finishing at once write
    /// in turn.
    fn write_when_complete(&self) {
        let Some(path) = &self.0.file else { return };
        let listeners = self.0.listeners.lock().unwrap_or_else(|p| p.into_inner());
        let mut text = String::new();
        for (key, addr) in listeners.iter() {
            let Some(addr) = addr.get() else { return };
            text.push_str(&format!("{key} = \"{addr}\"\n"));
        }
        let tmp = path.with_extension("tmp");
        if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path)) {
            tracing::warn!(file = %path.display(), error = %e, "cannot write server.bound_addrs_file");
        }
    }
}

/// The key of a listener in pingora's fd table: its address, as pingora itself would use (so
/// `run -u` after a version that let pingora bind finds its sockets), plus the config key on
/// port 0, where several listeners may share one address string such as `127.0.0.1:0`.
fn fd_key(key: &str, addr: &str) -> String {
    match addr.parse::<SocketAddr>() {
        Ok(a) if a.port() == 0 => format!("{addr}#{key}"),
        _ => addr.to_string(),
    }
}

/// One listener's socket, from start-up until its service starts.
pub struct Socket {
    /// The config key (`server.listen`), for logs and the file.
    key: &'static str,
    /// The configured address, bound late after `run -u` when the old process had no socket
    /// for it.
    addr: String,
    fd_key: String,
    /// Bound at start-up; `None` after `run -u`.
    bound: Option<TcpListener>,
    bound_addr: BoundAddr,
    listening: Listening,
}

impl Socket {
    /// The address to give the pingora service (`add_tcp`, `add_tls_with_settings`).
    pub fn fd_key(&self) -> &str {
        &self.fd_key
    }

    /// Where the bound address appears once the service has started.
    pub fn bound_addr(&self) -> BoundAddr {
        self.bound_addr.clone()
    }

    /// Wraps the service that listens on [`Self::fd_key`].
    pub fn serve<S: ServiceWithDependents>(self, service: S) -> Listener<S> {
        Listener {
            inner: service,
            socket: self,
        }
    }

    /// Puts the socket into pingora's fd table (or finds the inherited one), then records the
    /// address. Exits the process if the socket cannot be had: a gateway without a listener
    /// it was configured with would only look alive.
    fn hand_over(&mut self, fds: &ListenFds) {
        let fd = match self.fd_in(fds) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::error!(listener = self.key, addr = %self.addr, error = %e, "cannot listen");
                std::process::exit(1);
            }
        };
        match local_addr(fd) {
            Ok(addr) => {
                let _ = self.bound_addr.0.set(addr);
                tracing::info!(listener = self.key, %addr, "listening");
                self.listening.write_when_complete();
            }
            Err(e) => tracing::warn!(listener = self.key, error = %e, "bound address unknown"),
        }
    }

    fn fd_in(&mut self, fds: &ListenFds) -> std::io::Result<RawFd> {
        let mut table = fds.lock();
        if let Some(fd) = table.get(&self.fd_key) {
            return Ok(*fd); // handed over by the old process (`run -u`)
        }
        let listener = match self.bound.take() {
            Some(l) => l,
            None => TcpListener::bind(&self.addr)?, // `run -u`, but the old process had none
        };
        // pingora's accept loop is asynchronous: the socket must not block.
        listener.set_nonblocking(true)?;
        let fd = listener.into_raw_fd(); // pingora owns it from here
        table.add(self.fd_key.clone(), fd);
        Ok(fd)
    }
}

fn local_addr(fd: RawFd) -> std::io::Result<SocketAddr> {
    let ss: SockaddrStorage = getsockname(fd)?;
    if let Some(v4) = ss.as_sockaddr_in() {
        return Ok((*v4).into());
    }
    ss.as_sockaddr_in6()
        .map(|v6| (*v6).into())
        .ok_or_else(|| std::io::Error::other("not an IP socket"))
}

/// A pingora service whose listener uses the [`Socket`] bound for it.
pub struct Listener<S> {
    inner: S,
    socket: Socket,
}

#[async_trait]
impl<S: ServiceWithDependents> ServiceWithDependents for Listener<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
        ready_notifier: ServiceReadyNotifier,
    ) {
        if let Some(fds) = &fds {
            self.socket.hand_over(fds);
        }
        self.inner
            .start_service(fds, shutdown, listeners_per_fd, ready_notifier)
            .await
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        self.inner.threads()
    }

    fn runtime_opts_override(&self, global: &RuntimeOpts) -> Option<RuntimeOpts> {
        self.inner.runtime_opts_override(global)
    }

    fn on_startup_delay(&self, time_waited: Duration) {
        self.inner.on_startup_delay(time_waited)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.inner.listen_addresses()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::server::Fds;

    #[test]
    fn port_0_listeners_get_their_own_fd_keys() {
        assert_eq!(fd_key("server.listen", "127.0.0.1:8080"), "127.0.0.1:8080");
        assert_ne!(
            fd_key("server.listen", "127.0.0.1:0"),
            fd_key("server.admin_listen", "127.0.0.1:0")
        );
        // pingora sends the keys space-separated to the next process (`run -u`).
        assert!(!fd_key("server.listen", "[::1]:0").contains(' '));
    }

    #[test]
    fn port_0_is_bound_and_written_once_every_listener_is_known() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bound.toml");
        let listening = Listening::new(file.to_str().unwrap(), false);
        let mut proxy = listening.bind("server.listen", "127.0.0.1:0").unwrap();
        let mut admin = listening
            .bind("server.admin_listen", "127.0.0.1:0")
            .unwrap();
        let fds: ListenFds = Arc::new(Fds::new().into());
        proxy.hand_over(&fds);
        assert!(!file.exists(), "written before every listener was bound");
        admin.hand_over(&fds);
        let (p, a) = (
            proxy.bound_addr().get().unwrap(),
            admin.bound_addr().get().unwrap(),
        );
        assert!(p.port() != 0 && a.port() != 0 && p != a);
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(
            text,
            format!("server.listen = \"{p}\"\nserver.admin_listen = \"{a}\"\n")
        );
        assert_eq!(
            fds.lock()
                .get(proxy.fd_key())
                .copied()
                .map(local_addr)
                .unwrap()
                .unwrap(),
            p
        );
        std::net::TcpStream::connect(p).expect("the socket listens");
    }

    #[test]
    fn after_run_u_the_inherited_socket_is_used() {
        let old = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = old.local_addr().unwrap();
        let fds: ListenFds = Arc::new(Fds::new().into());
        fds.lock().add(addr.to_string(), old.into_raw_fd());
        let listening = Listening::new("", true);
        let mut socket = listening.bind("server.listen", &addr.to_string()).unwrap();
        socket.hand_over(&fds); // binding again would fail: the address is taken
        assert_eq!(socket.bound_addr().get(), Some(addr));
    }
}
