//! An HTTP/2 target (cleartext, prior knowledge) that refuses streams the
//! way busy servers do, for the tests of what walhook does then.
//!
//! nginx ends each h2 connection after `keepalive_requests` (1,000 by
//! default): it sends a GOAWAY naming the last stream it will answer and
//! refuses the streams the client opened past it. A server at its stream
//! limit resets new streams with REFUSED_STREAM. RFC 9113 (8.7) says
//! neither kind of refused stream was processed.
//!
//! It is written on the h2 crate rather than hyper's server because
//! hyper only ends a connection with the graceful two-step GOAWAY, which
//! almost never refuses a stream.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use http::{Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// How the target refuses streams.
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    /// Each connection answers this many streams, then sends a GOAWAY
    /// (NO_ERROR) naming the last of them and closes, as nginx does.
    GoAwayAfter(u64),
    /// Every n-th request is reset with REFUSED_STREAM, but never one sent
    /// again (the same `X-SuperOffice-EventId`) after a refusal: whether a
    /// resend would land on a multiple of n is left to no chance.
    RefuseEvery(u64),
    /// Every stream is reset with REFUSED_STREAM.
    RefuseAll,
}

/// A running target; stops when dropped.
pub struct H2Target {
    addr: SocketAddr,
    counts: Arc<Counts>,
    server: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Counts {
    /// The EventIds of the requests refused so far.
    refused_ids: Mutex<HashSet<Vec<u8>>>,
    /// Requests seen for the first time, for `RefuseEvery`.
    new_requests: AtomicU64,
    /// The bodies of the requests answered 200, in order.
    answered: Mutex<Vec<Bytes>>,
    refused: AtomicU64,
    go_aways: AtomicU64,
    connections: AtomicU64,
}

impl H2Target {
    pub async fn start(refusal: Refusal) -> anyhow::Result<H2Target> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Counts::default());
        let shared = Arc::clone(&counts);
        let server = tokio::spawn(async move {
            // Owned here, so stopping the target stops its connections.
            let mut connections = JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                while connections.try_join_next().is_some() {}
                let _ = tcp.set_nodelay(true);
                shared.connections.fetch_add(1, Ordering::AcqRel);
                let counts = Arc::clone(&shared);
                connections.spawn(async move {
                    if let Err(e) = serve(tcp, refusal, &counts).await {
                        tracing::debug!("h2 target: connection ended: {e}");
                    }
                });
            }
        });
        Ok(H2Target {
            addr,
            counts,
            server,
        })
    }

    /// The address it listens on (on 127.0.0.1).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The bodies of the requests answered 200 so far.
    pub fn answered(&self) -> Vec<Bytes> {
        self.counts
            .answered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Streams reset with REFUSED_STREAM so far.
    pub fn refused(&self) -> u64 {
        self.counts.refused.load(Ordering::Acquire)
    }

    /// GOAWAYs sent so far.
    pub fn go_aways(&self) -> u64 {
        self.counts.go_aways.load(Ordering::Acquire)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.counts.connections.load(Ordering::Acquire)
    }
}

impl Drop for H2Target {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Serves one connection: its answers run beside the connection, which
/// must be polled for their bodies to arrive.
async fn serve(tcp: TcpStream, refusal: Refusal, counts: &Counts) -> anyhow::Result<()> {
    let mut connection = h2::server::handshake(Lingering(Some(tcp))).await?;
    let mut answers = FuturesUnordered::new();
    let mut streams = 0u64;
    let mut closing = false;
    loop {
        tokio::select! {
            next = connection.accept() => {
                let Some(next) = next else { return Ok(()) };
                let (request, mut respond) = next?;
                streams += 1;
                match refusal {
                    Refusal::RefuseAll => refuse(&request, &mut respond, counts),
                    Refusal::RefuseEvery(n) => {
                        let id = event_id(&request);
                        let resend = counts.lock_refused_ids().contains(&id);
                        let new = !resend
                            && (counts.new_requests.fetch_add(1, Ordering::AcqRel) + 1)
                                .is_multiple_of(n);
                        if new {
                            refuse(&request, &mut respond, counts);
                        } else {
                            answers.push(answer(request, respond, counts));
                        }
                    }
                    Refusal::GoAwayAfter(n) => {
                        answers.push(answer(request, respond, counts));
                        closing |= streams >= n;
                    }
                }
            }
            Some(answered) = answers.next(), if !answers.is_empty() => answered?,
        }
        if !(closing && answers.is_empty()) {
            continue;
        }
        // Every stream received so far is answered. Polling once more
        // writes the answers out and takes any stream already received,
        // which must be answered first: the GOAWAY names the last stream
        // received as the last one processed.
        match connection.accept().now_or_never() {
            Some(Some(next)) => {
                let (request, respond) = next?;
                answers.push(answer(request, respond, counts));
            }
            Some(None) => return Ok(()),
            None => {
                // Requests that arrive meanwhile stay unread, past the last
                // stream processed, as at a busy server: refused by the
                // GOAWAY every time, not only when one happens to be in
                // flight at that very moment.
                tokio::time::sleep(Duration::from_millis(5)).await;
                connection.abrupt_shutdown(Reason::NO_ERROR);
                counts.go_aways.fetch_add(1, Ordering::AcqRel);
                // Streams past the GOAWAY are refused by h2 itself; this
                // writes the GOAWAY and closes.
                while connection.accept().await.is_some() {}
                return Ok(());
            }
        }
    }
}

/// The connection's socket, read and discarded for a while after h2 is done
/// with it, as nginx's lingering close does: a socket closed with the
/// client's requests past the GOAWAY still unread is reset by the kernel,
/// and the reset can reach the client before the GOAWAY does.
struct Lingering(Option<TcpStream>);

impl Lingering {
    fn tcp(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(
            self.0
                .as_mut()
                .expect("a Lingering socket is taken only on drop"),
        )
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(mut tcp) = self.0.take() else { return };
        tokio::spawn(async move {
            let mut discard = [0u8; 4096];
            let _ = tokio::time::timeout(LINGER, async {
                while matches!(tcp.read(&mut discard).await, Ok(n) if n > 0) {}
            })
            .await;
        });
    }
}

/// How long a closed connection's socket is still read.
const LINGER: Duration = Duration::from_secs(2);

impl AsyncRead for Lingering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.tcp().poll_read(cx, buf)
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.tcp().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.tcp().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.tcp().poll_shutdown(cx)
    }
}

impl Counts {
    fn lock_refused_ids(&self) -> std::sync::MutexGuard<'_, HashSet<Vec<u8>>> {
        self.refused_ids.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The request's `X-SuperOffice-EventId` (empty without one).
fn event_id(request: &Request<RecvStream>) -> Vec<u8> {
    request
        .headers()
        .get("x-superoffice-eventid")
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_default()
}

/// Resets the stream with REFUSED_STREAM, before reading any of it.
fn refuse(request: &Request<RecvStream>, respond: &mut SendResponse<Bytes>, counts: &Counts) {
    respond.send_reset(Reason::REFUSED_STREAM);
    counts.lock_refused_ids().insert(event_id(request));
    counts.refused.fetch_add(1, Ordering::AcqRel);
}

/// Reads the whole body, records it and answers 200.
async fn answer(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    counts: &Counts,
) -> anyhow::Result<()> {
    let mut body = request.into_body();
    let mut read = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        read.extend_from_slice(&chunk);
    }
    counts
        .answered
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Bytes::from(read));
    let mut response = Response::new(());
    *response.status_mut() = StatusCode::OK;
    respond.send_response(response, true)?;
    Ok(())
}
