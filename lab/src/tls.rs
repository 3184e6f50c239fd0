//! TLS for the receiver: a server certificate, optionally a CA whose client
//! certificates it requires, the HTTP versions it offers by ALPN, and a
//! listener that does the handshakes.
//!
//! Handshakes run in their own tasks, so a client that stalls or fails one
//! never holds up the next; every failure is kept, for tests that expect
//! one (a client without the certificate the receiver requires).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How a receiver serves TLS: its certificate chain and key, whether
/// clients must present a certificate, and the HTTP versions it offers
/// (h2 and http/1.1 unless [`http1_only`](Self::http1_only)).
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
}

impl ServerTls {
    /// Serve `cert_pem` (the certificate, then any intermediates) with
    /// `key_pem`; clients need no certificate.
    pub fn new(cert_pem: &str, key_pem: &str) -> anyhow::Result<ServerTls> {
        ServerTls::build(cert_pem, key_pem, None)
    }

    /// As [`new`](Self::new), and every client must present a certificate
    /// issued by a CA in `client_ca_pem`: a handshake without one fails.
    pub fn requiring_client_certificates(
        cert_pem: &str,
        key_pem: &str,
        client_ca_pem: &str,
    ) -> anyhow::Result<ServerTls> {
        ServerTls::build(cert_pem, key_pem, Some(client_ca_pem))
    }

    fn build(
        cert_pem: &str,
        key_pem: &str,
        client_ca_pem: Option<&str>,
    ) -> anyhow::Result<ServerTls> {
        // The ring provider is named, so no process-wide default is needed.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = certificates(cert_pem).context("the receiver's certificate")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("the receiver's private key: {e}"))?;
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?;
        let builder = match client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(pem) => {
                let mut roots = RootCertStore::empty();
                for cert in certificates(pem).context("the client CA")? {
                    roots.add(cert)?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ServerTls {
            config: Arc::new(config),
        })
    }

    /// The same, offering only http/1.1 by ALPN: a target that does not
    /// speak HTTP/2 (a client that offers only h2 is refused in the
    /// handshake).
    pub fn http1_only(self) -> ServerTls {
        let mut config = (*self.config).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        ServerTls {
            config: Arc::new(config),
        }
    }
}

fn certificates(pem: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("not valid PEM: {e}"))?;
    if certs.is_empty() {
        bail!("no PEM certificate");
    }
    Ok(certs)
}

/// Handshake failures seen so far, and a wake-up for those waiting on one.
#[derive(Default)]
pub(crate) struct Failures {
    pub(crate) list: Mutex<Vec<String>>,
    pub(crate) notify: Notify,
}

/// A listener whose connections arrive with their TLS handshake done.
/// Told of each failed TLS handshake: the peer and what went wrong.
pub type HandshakeFailed = Arc<dyn Fn(SocketAddr, String) + Send + Sync>;

pub struct TlsListener {
    local: SocketAddr,
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    acceptor_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// `failed` hears of every handshake that failed or timed out, with
    /// the peer's address.
    pub fn new(
        listener: TcpListener,
        tls: &ServerTls,
        failed: HandshakeFailed,
    ) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(Arc::clone(&tls.config));
        let (sender, accepted) = mpsc::channel(64);
        let acceptor_task = tokio::spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let acceptor = acceptor.clone();
                let sender = sender.clone();
                let failed = Arc::clone(&failed);
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await;
                    match handshake {
                        Ok(Ok(stream)) => {
                            let _ = sender.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => failed(peer, format!("{e}")),
                        Err(_) => failed(peer, "handshake timed out".to_owned()),
                    }
                });
            }
        });
        Ok(TlsListener {
            local,
            accepted,
            acceptor_task,
        })
    }
}

impl Failures {
    pub(crate) fn record(&self, failure: String) {
        self.list
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(failure);
        self.notify.notify_waiters();
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(connection) => connection,
            // The acceptor is gone: no connection will come again.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
