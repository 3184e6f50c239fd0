//! A loopback HTTP receiver that records every request.
//!
//! `walhook demo` shows deliveries with it, and the integration tests use it
//! as a real target (real sockets, real HTTP, or HTTPS with the certificate
//! a test gives it), answering with whatever status the test chooses.
//!
//! It speaks HTTP/1.1 and HTTP/2: over TLS the version is agreed by ALPN
//! (see [`ServerTls`]); on plain TCP a client that opens with the HTTP/2
//! preface (prior knowledge, h2c) is served HTTP/2, any other HTTP/1.1.
//! Each request records its version and the connection it came on.
//!
//! A slow receiver delays each answer in the request's own task, outside
//! any lock, so requests in flight at once are delayed concurrently and a
//! later request with a shorter delay is answered first (overtakes).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, Version};
use axum::serve::IncomingStream;
use tokio::sync::Notify;

use crate::tls::{Failures, ServerTls, TlsListener};

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When the request had arrived (before any delay).
    pub arrived: Instant,
    /// When it was answered (after the delay): the order of
    /// [`Receiver::requests`].
    pub at: Instant,
    /// The status the receiver answered with.
    pub status: u16,
    /// The DER certificate the client presented over HTTPS, if any.
    pub client_certificate: Option<Vec<u8>>,
    /// The HTTP version it came in.
    pub version: Version,
    /// The connection it came on: the same number for requests on one
    /// connection, never the same for two connections in this process.
    pub connection: u64,
}

impl ReceivedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Decides the status of each request: given the request and how many
/// requests to the same path came before it.
pub type Responder = dyn Fn(&ReceivedRequest, usize) -> u16 + Send + Sync;

/// Decides how long the answer to a request takes.
pub type Delay = dyn Fn(&ReceivedRequest) -> Duration + Send + Sync;

struct Shared {
    requests: Mutex<Vec<ReceivedRequest>>,
    responder: Box<Responder>,
    notify: Notify,
    /// How long each answer takes (a slow target), slept in the
    /// request's task, outside every lock.
    delay: Box<Delay>,
    /// Keep every request (false: only count them, for big workloads).
    keep: bool,
    count: std::sync::atomic::AtomicU64,
    /// Requests per path so far, for the responder.
    per_path: Mutex<std::collections::HashMap<String, usize>>,
}

pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
    /// Serving HTTPS (then URLs name `localhost`, the name a test
    /// certificate carries).
    https: bool,
    /// TLS handshakes that failed (HTTPS only).
    failures: Arc<Failures>,
}

/// Who sent a request: what the handler learns about the connection.
#[derive(Clone)]
struct Peer {
    client_certificate: Option<Vec<u8>>,
    connection: u64,
}

/// Numbers connections across every receiver of the process (axum asks
/// for a connection's `Peer` once, when it is accepted).
static CONNECTIONS: AtomicU64 = AtomicU64::new(0);

fn next_connection() -> u64 {
    CONNECTIONS.fetch_add(1, Ordering::Relaxed) + 1
}

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for Peer {
    fn connect_info(_: IncomingStream<'_, tokio::net::TcpListener>) -> Peer {
        Peer {
            client_certificate: None,
            connection: next_connection(),
        }
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Peer {
        let (_, session) = stream.io().get_ref();
        Peer {
            client_certificate: session
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|cert| cert.to_vec()),
            connection: next_connection(),
        }
    }
}

impl Receiver {
    /// A receiver answering 200 to everything.
    pub async fn start() -> anyhow::Result<Receiver> {
        Receiver::start_with(|_, _| 200).await
    }

    pub async fn start_with(
        respond: impl Fn(&ReceivedRequest, usize) -> u16 + Send + Sync + 'static,
    ) -> anyhow::Result<Receiver> {
        Receiver::start_full(respond, Duration::ZERO, true).await
    }

    /// A receiver answering 200 that only counts requests: memory stays
    /// flat however many arrive.
    pub async fn start_counting() -> anyhow::Result<Receiver> {
        Receiver::start_full(|_, _| 200, Duration::ZERO, false).await
    }

    /// Requests received so far.
    pub fn count(&self) -> u64 {
        self.shared.count.load(Ordering::Acquire)
    }

    /// How many connections the requests so far came on.
    pub fn connections_used(&self) -> usize {
        let mut connections: Vec<u64> = self.requests().iter().map(|r| r.connection).collect();
        connections.sort_unstable();
        connections.dedup();
        connections.len()
    }

    /// A receiver answering 200 after `delay`, without blocking a thread.
    pub async fn start_slow(delay: Duration) -> anyhow::Result<Receiver> {
        Receiver::start_full(|_, _| 200, delay, true).await
    }

    /// A receiver answering 200 after the delay `delay` gives each
    /// request. Requests are delayed concurrently (each in its own task,
    /// outside any lock), so one that arrived later with a shorter delay
    /// is answered first.
    pub async fn start_delaying(
        delay: impl Fn(&ReceivedRequest) -> Duration + Send + Sync + 'static,
    ) -> anyhow::Result<Receiver> {
        Receiver::start_serving(
            |_, _| 200,
            Box::new(delay),
            true,
            None,
            Ipv4Addr::LOCALHOST.into(),
        )
        .await
    }

    /// A receiver answering 200 to everything, listening on `ip` (such as
    /// `::1`, IPv6 loopback) rather than 127.0.0.1.
    pub async fn start_on(ip: IpAddr) -> anyhow::Result<Receiver> {
        Receiver::start_serving(|_, _| 200, Box::new(|_| Duration::ZERO), true, None, ip).await
    }

    /// A receiver answering 200 after `delay` over HTTPS, serving `tls`:
    /// a distant target, whose requests overlap.
    pub async fn start_https_slow(tls: ServerTls, delay: Duration) -> anyhow::Result<Receiver> {
        Receiver::start_serving(
            |_, _| 200,
            Box::new(move |_| delay),
            true,
            Some(tls),
            Ipv4Addr::LOCALHOST.into(),
        )
        .await
    }

    /// An HTTPS receiver answering 200 to everything, serving `tls`.
    pub async fn start_https(tls: ServerTls) -> anyhow::Result<Receiver> {
        Receiver::start_https_with(tls, |_, _| 200).await
    }

    /// An HTTPS receiver serving `tls`, answering what `respond` says.
    pub async fn start_https_with(
        tls: ServerTls,
        respond: impl Fn(&ReceivedRequest, usize) -> u16 + Send + Sync + 'static,
    ) -> anyhow::Result<Receiver> {
        Receiver::start_serving(
            respond,
            Box::new(|_| Duration::ZERO),
            true,
            Some(tls),
            Ipv4Addr::LOCALHOST.into(),
        )
        .await
    }

    async fn start_full(
        respond: impl Fn(&ReceivedRequest, usize) -> u16 + Send + Sync + 'static,
        delay: Duration,
        keep: bool,
    ) -> anyhow::Result<Receiver> {
        Receiver::start_serving(
            respond,
            Box::new(move |_| delay),
            keep,
            None,
            Ipv4Addr::LOCALHOST.into(),
        )
        .await
    }

    async fn start_serving(
        respond: impl Fn(&ReceivedRequest, usize) -> u16 + Send + Sync + 'static,
        delay: Box<Delay>,
        keep: bool,
        tls: Option<ServerTls>,
        ip: IpAddr,
    ) -> anyhow::Result<Receiver> {
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            responder: Box::new(respond),
            notify: Notify::new(),
            delay,
            keep,
            count: std::sync::atomic::AtomicU64::new(0),
            per_path: Mutex::new(std::collections::HashMap::new()),
        });
        let listener = tokio::net::TcpListener::bind((ip, 0)).await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new()
            .fallback(record)
            .with_state(Arc::clone(&shared))
            .into_make_service_with_connect_info::<Peer>();
        let failures = Arc::new(Failures::default());
        let https = tls.is_some();
        let server = match tls {
            None => tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }),
            Some(tls) => {
                let recorder = Arc::clone(&failures);
                let listener = TlsListener::new(
                    listener,
                    &tls,
                    Arc::new(move |_peer, failure| recorder.record(failure)),
                )?;
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app).await;
                })
            }
        };
        Ok(Receiver {
            addr,
            shared,
            server,
            https,
            failures,
        })
    }

    /// The URL of `path`: `http://127.0.0.1:PORT/path` (`http://[::1]:PORT`
    /// on IPv6 loopback), or for HTTPS `https://localhost:PORT/path` (the
    /// receiver listens on 127.0.0.1).
    pub fn url(&self, path: &str) -> String {
        if self.https {
            format!("https://localhost:{}{path}", self.addr.port())
        } else {
            format!("http://{}{path}", self.addr)
        }
    }

    /// The port the receiver listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// TLS handshakes that failed so far, as the server saw them.
    pub fn handshake_failures(&self) -> Vec<String> {
        self.failures
            .list
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Wait until at least one TLS handshake has failed, or `timeout`;
    /// returns the failures so far.
    pub async fn wait_handshake_failure(&self, timeout: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.failures.notify.notified();
            let failures = self.handshake_failures();
            if !failures.is_empty() || tokio::time::Instant::now() >= deadline {
                return failures;
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Requests to `path` so far.
    pub fn requests_to(&self, path: &str) -> Vec<ReceivedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Wait until `done` holds for the requests so far, or `timeout`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&[ReceivedRequest]) -> bool,
    ) -> Vec<ReceivedRequest> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.notify.notified();
            let requests = self.requests();
            if done(&requests) || tokio::time::Instant::now() >= deadline {
                return requests;
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn record(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    version: Version,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let arrived = Instant::now();
    let mut request = ReceivedRequest {
        path: uri.path().to_owned(),
        headers,
        body,
        arrived,
        at: arrived,
        status: 0,
        client_certificate: peer.client_certificate,
        version,
        connection: peer.connection,
    };
    // In this request's task, holding no lock: other requests go on.
    let delay = (shared.delay)(&request);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    request.at = Instant::now();
    shared.count.fetch_add(1, Ordering::AcqRel);
    if !shared.keep {
        return StatusCode::OK;
    }
    let status = {
        let mut requests = shared.requests.lock().unwrap_or_else(|e| e.into_inner());
        let before = {
            let mut per_path = shared.per_path.lock().unwrap_or_else(|e| e.into_inner());
            let count = per_path.entry(request.path.clone()).or_insert(0);
            *count += 1;
            *count - 1
        };
        request.status = (shared.responder)(&request, before);
        let status = request.status;
        requests.push(request);
        status
    };
    shared.notify.notify_waiters();
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}
