//! A TLS front for the fake Mollie: a test CA, a `localhost` leaf certificate signed by it, and
//! a listener that terminates TLS (recording the SNI each client sent) and pipes the bytes to a
//! plain backend. Lets tests prove the gateway speaks verified TLS with SNI upstream.
//! [`ListenerPki`]: the certificate files for the gateway's own HTTPS listener.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

pub struct TlsFront {
    pub port: u16,
    /// PEM of the CA that signed the front's certificate.
    pub ca_file: PathBuf,
    /// Server names the clients asked for (SNI), one per handshake.
    pub sni: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl TlsFront {
    /// Serves TLS for `localhost` on 127.0.0.1 (and ::1 where free) in front of `backend`.
    pub async fn start(backend: SocketAddr) -> TlsFront {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "mollie-gateway test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let v4 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = v4.local_addr().unwrap().port();
        let sni = Arc::new(Mutex::new(Vec::new()));
        let mut listeners = vec![v4];
        // `localhost` may resolve to ::1 first; serve there too when the port is free.
        if let Ok(v6) = tokio::net::TcpListener::bind(("::1", port)).await {
            listeners.push(v6);
        }
        for listener in listeners {
            let (acceptor, sni) = (acceptor.clone(), sni.clone());
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let (acceptor, sni) = (acceptor.clone(), sni.clone());
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let name = tls.get_ref().1.server_name().unwrap_or("").to_string();
                        sni.lock().unwrap().push(name);
                        if let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await {
                            let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                        }
                    });
                }
            });
        }
        TlsFront {
            port,
            ca_file,
            sni,
            _dir: dir,
        }
    }

    pub fn base_url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }
}

/// A test CA and a `localhost` / 127.0.0.1 leaf it signed, as PEM files, for the gateway's
/// own HTTPS listener (`server.tls_cert` / `server.tls_key`).
pub struct ListenerPki {
    /// The CA certificate, for a client's root store.
    pub ca_der: rustls::pki_types::CertificateDer<'static>,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl ListenerPki {
    pub fn write(dir: &std::path::Path) -> ListenerPki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "mollie-gateway listener test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let leaf = CertificateParams::new(names)
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let pki = ListenerPki {
            ca_der: ca.der().clone(),
            ca_file: dir.join("ca.pem"),
            cert_file: dir.join("gateway.crt"),
            key_file: dir.join("gateway.key"),
        };
        std::fs::write(&pki.ca_file, ca.pem()).unwrap();
        std::fs::write(&pki.cert_file, leaf.pem()).unwrap();
        std::fs::write(&pki.key_file, leaf_key.serialize_pem()).unwrap();
        pki
    }
}
