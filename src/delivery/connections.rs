//! A delivery lane's own HTTP/1.1 connections, driven by the lane's task.
//!
//! HTTP/1.1 answers one request at a time per connection, so a hook has a
//! connection per request in flight. hyper's pooled client runs each
//! connection as a task of its own: a request crosses from the sending task
//! to the connection's and its answer back, two task switches (often a
//! thread woken) per request. Here the task that sends polls its
//! connections itself ([`TaskConnections::drive`], a branch of its loop),
//! so an answer wakes the one task that waits for it. A hook's queue runs
//! its events in lanes, one such task per runtime worker at most, so a busy
//! hook still has every core (see `queue`).
//!
//! Only targets known to speak HTTP/1.1 are sent this way: plain `http`
//! unless `delivery.http_version` is `http2`, and `https` when it is
//! `http1`. The others may speak HTTP/2, whose single multiplexed
//! connection per host the shared pool ([`HttpClient`]) keeps. Connections
//! are made by the pool's connector: the same resolver and its target
//! policy, connect timeout and TLS settings.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Poll, Waker};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use http::header::{HeaderMap, HeaderValue, HOST};
use http::uri::{Authority, Scheme};
use http::{Method, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::client::{HttpClient, SendError, POOL_IDLE_TIMEOUT};
use crate::config::HttpVersion;

type Connection = http1::Connection<super::client::Stream, Full<Bytes>>;

/// What a request goes out on.
#[derive(Clone, Copy)]
pub enum Sender<'a> {
    /// The shared pool: commands and replays, which send from tasks that
    /// do not drive connections.
    Pool(&'a HttpClient),
    /// A hook queue's own connections for HTTP/1.1 targets, the shared
    /// pool for the others.
    Task(&'a TaskConnections),
}

impl Sender<'_> {
    /// POST `body` to `url`; see [`HttpClient::post`].
    pub async fn post(
        self,
        url: &url::Url,
        version: HttpVersion,
        headers: impl Fn() -> HeaderMap,
        body: Bytes,
        deadline: Instant,
    ) -> Result<Response<Incoming>, SendError> {
        match self {
            Sender::Task(own) if speaks_http1_only(url, version) => {
                own.post(url, headers, body, deadline).await
            }
            Sender::Task(own) => own.pool.post(url, headers, body, deadline).await,
            Sender::Pool(pool) => pool.post(url, headers, body, deadline).await,
        }
    }
}

/// The target is known to answer in HTTP/1.1 before any connection says
/// so: HTTP/2 is neither asked for (`http2`) nor offered to a TLS target
/// (`auto` offers it by ALPN).
fn speaks_http1_only(url: &url::Url, version: HttpVersion) -> bool {
    match url.scheme() {
        "http" => version != HttpVersion::Http2,
        "https" => version == HttpVersion::Http1,
        _ => false,
    }
}

/// One task's HTTP/1.1 connections. The task must poll
/// [`drive`](Self::drive) beside the requests it awaits: nothing else moves
/// their bytes.
pub struct TaskConnections {
    pool: HttpClient,
    // Held only within one poll of the owning task: never contended.
    state: Mutex<State>,
}

struct State {
    /// The last target, prepared: a hook has one.
    target: Option<Target>,
    /// Connections that are not sending, oldest return first; one whose
    /// last answer is still being read is not ready yet.
    idle: VecDeque<Idle>,
    /// Every open connection's I/O, polled by `drive`.
    open: FuturesUnordered<Pin<Box<Connection>>>,
    /// The driving task, woken when a connection is opened.
    driver: Option<Waker>,
    /// When idle connections are next looked at for their age.
    sweep: Pin<Box<Sleep>>,
}

/// A target URL as requests to it need it, made once per URL rather than
/// per request.
struct Target {
    url: String,
    /// For the connector: scheme, host and port.
    uri: Uri,
    /// Where idle connections lead: a new URL elsewhere closes them.
    origin: (Scheme, Authority),
    /// The request line's origin form (`/path?query`).
    path: Uri,
    host: HeaderValue,
}

struct Idle {
    sender: http1::SendRequest<Full<Bytes>>,
    since: Instant,
}

impl TaskConnections {
    pub fn new(pool: HttpClient) -> TaskConnections {
        TaskConnections {
            pool,
            state: Mutex::new(State {
                target: None,
                idle: VecDeque::new(),
                open: FuturesUnordered::new(),
                driver: None,
                sweep: Box::pin(tokio::time::sleep(POOL_IDLE_TIMEOUT)),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves every connection's bytes; never ends. Also closes connections
    /// idle for longer than the pool keeps them.
    pub fn drive(&self) -> impl Future<Output = Infallible> + '_ {
        poll_fn(move |cx| {
            let mut state = self.state();
            if !state
                .driver
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                state.driver = Some(cx.waker().clone());
            }
            // A connection ends when its target closes it or its sender is
            // dropped; a request on it has its error already.
            while let Poll::Ready(Some(ended)) = state.open.poll_next_unpin(cx) {
                if let Err(e) = ended {
                    tracing::debug!("HTTP/1.1 connection ended: {e}");
                }
            }
            if state.sweep.as_mut().poll(cx).is_ready() {
                let now = Instant::now();
                state
                    .idle
                    .retain(|i| !i.sender.is_closed() && now - i.since < POOL_IDLE_TIMEOUT);
                state.sweep.as_mut().reset(now + POOL_IDLE_TIMEOUT / 2);
                // Registers the timer's waker.
                let _ = state.sweep.as_mut().poll(cx);
            }
            Poll::Pending
        })
    }

    /// POST over an idle connection to the target, or a new one. A request
    /// that an idle connection closed before it was written is sent on
    /// another: it never reached the target.
    async fn post(
        &self,
        url: &url::Url,
        headers: impl Fn() -> HeaderMap,
        body: Bytes,
        deadline: Instant,
    ) -> Result<Response<Incoming>, SendError> {
        let exchange = async {
            let (uri, mut request) = self.request(url, headers(), body)?;
            loop {
                let (mut sender, reused) = match self.checkout(url) {
                    Some(sender) => (sender, true),
                    None => (self.connect(uri.clone()).await?, false),
                };
                match sender.try_send_request(request).await {
                    Ok(response) => {
                        self.checkin(sender);
                        return Ok(response);
                    }
                    Err(mut e) => match e.take_message() {
                        Some(unsent) if reused => request = unsent,
                        _ => return Err(SendError::Http(e.into_error())),
                    },
                }
            }
        };
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(sent) => sent,
            Err(_) => Err(SendError::TimedOut),
        }
    }

    /// The request, and the URI to connect to.
    fn request(
        &self,
        url: &url::Url,
        mut headers: HeaderMap,
        body: Bytes,
    ) -> Result<(Uri, Request<Full<Bytes>>), SendError> {
        let mut state = self.state();
        let target = match &state.target {
            Some(t) if t.url == url.as_str() => t,
            _ => {
                let target = Target::of(url)?;
                if state
                    .target
                    .as_ref()
                    .is_some_and(|t| t.origin != target.origin)
                {
                    // The hook's URL changed host: its idle connections
                    // lead elsewhere.
                    state.idle.clear();
                }
                state.target.insert(target)
            }
        };
        headers.insert(HOST, target.host.clone());
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = target.path.clone();
        *request.headers_mut() = headers;
        Ok((target.uri.clone(), request))
    }

    /// An idle connection that is ready for a request; closed ones and
    /// those idle too long are dropped on the way.
    fn checkout(&self, url: &url::Url) -> Option<http1::SendRequest<Full<Bytes>>> {
        let mut state = self.state();
        if state.target.as_ref().is_none_or(|t| t.url != url.as_str()) {
            return None;
        }
        let now = Instant::now();
        for _ in 0..state.idle.len() {
            let idle = state.idle.pop_front()?;
            if idle.sender.is_closed() || now - idle.since >= POOL_IDLE_TIMEOUT {
                continue;
            }
            if idle.sender.is_ready() {
                return Some(idle.sender);
            }
            // Its last answer is still being read.
            state.idle.push_back(idle);
        }
        None
    }

    /// The connection goes back to the idle ones as soon as its answer has
    /// headers: it is ready again once the answer's body is read (one left
    /// unread closes it).
    fn checkin(&self, sender: http1::SendRequest<Full<Bytes>>) {
        self.state().idle.push_back(Idle {
            sender,
            since: Instant::now(),
        });
    }

    async fn connect(&self, uri: Uri) -> Result<http1::SendRequest<Full<Bytes>>, SendError> {
        let mut connector = self.pool.connector();
        poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(SendError::Connect)?;
        let io = connector.call(uri).await.map_err(SendError::Connect)?;
        let (sender, connection) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(SendError::Http)?;
        let state = self.state();
        state.open.push(Box::pin(connection));
        // The driver polls it from now on; until then its first request
        // would wait unwritten.
        if let Some(driver) = &state.driver {
            driver.wake_by_ref();
        }
        Ok(sender)
    }
}

impl Target {
    fn of(url: &url::Url) -> Result<Target, SendError> {
        let uri: Uri = url.as_str().parse()?;
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(SendError::NotAbsolute);
        };
        let host = authority.host();
        // As hyper's pooled client writes it: the port only when it is
        // not the scheme's own.
        let host = match (scheme.as_str(), uri.port_u16()) {
            ("http", Some(80)) | ("https", Some(443)) | (_, None) => host.to_owned(),
            (_, Some(port)) => format!("{host}:{port}"),
        };
        let path = match uri.path_and_query() {
            Some(p) if p.as_str() != "/" => Uri::from(p.clone()),
            _ => Uri::from_static("/"),
        };
        Ok(Target {
            url: url.as_str().to_owned(),
            origin: (scheme.clone(), authority.clone()),
            host: HeaderValue::from_str(&host).map_err(|_| SendError::NotAbsolute)?,
            path,
            uri,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    use super::*;
    use crate::config::DeliveryConfig;
    use crate::delivery::http_client;

    /// A loopback HTTP/1.1 target that counts the connections it accepted
    /// and the requests it answered (200, empty body). With
    /// `close_after_answer` it closes each connection after its first
    /// answer, as a target whose idle timeout ran out does.
    #[derive(Clone, Default)]
    struct Counted {
        accepted: Arc<AtomicUsize>,
        answered: Arc<AtomicUsize>,
        closed: Arc<AtomicUsize>,
    }

    impl Counted {
        async fn start(close_after_answer: bool) -> (Counted, url::Url) {
            let counted = Counted::default();
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/hook?x=1", listener.local_addr().unwrap());
            let c = counted.clone();
            tokio::spawn(async move {
                loop {
                    let (socket, _) = listener.accept().await.unwrap();
                    c.accepted.fetch_add(1, Ordering::AcqRel);
                    let c = c.clone();
                    tokio::spawn(async move {
                        let mut socket = BufReader::new(socket);
                        while answer_one(&mut socket).await {
                            c.answered.fetch_add(1, Ordering::AcqRel);
                            if close_after_answer {
                                // Later, as an idle timeout would: the
                                // client has read the answer by then.
                                tokio::time::sleep(std::time::Duration::from_millis(30)).await;
                                break;
                            }
                        }
                        drop(socket);
                        c.closed.fetch_add(1, Ordering::AcqRel);
                    });
                }
            });
            (counted, url.parse().unwrap())
        }
    }

    /// Reads one request (head and Content-Length body) and answers 200;
    /// false at the end of the connection or on a request it cannot read.
    async fn answer_one(socket: &mut BufReader<tokio::net::TcpStream>) -> bool {
        let mut length = 0;
        let mut request_line = String::new();
        loop {
            let mut line = String::new();
            match socket.read_line(&mut line).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
            if request_line.is_empty() {
                request_line = line.clone();
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        assert_eq!(request_line, "POST /hook?x=1 HTTP/1.1\r\n");
        let mut body = vec![0; length];
        if socket.read_exact(&mut body).await.is_err() {
            return false;
        }
        socket
            .get_mut()
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .is_ok()
    }

    fn connections() -> TaskConnections {
        let config = DeliveryConfig {
            allow_http: true,
            allow_private_targets: true,
            ..DeliveryConfig::default()
        };
        TaskConnections::new(http_client(&config).unwrap())
    }

    /// One POST, driving the connections meanwhile as a lane does.
    async fn post(connections: &TaskConnections, url: &url::Url) -> http::StatusCode {
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let sent = connections.post(url, HeaderMap::new, Bytes::from_static(b"{}"), deadline);
        let response = tokio::select! {
            sent = sent => sent.expect("an answer"),
            _ = connections.drive() => unreachable!(),
        };
        response.status()
    }

    /// Drives the connections until `done`.
    async fn drive_until(connections: &TaskConnections, what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_millis(5)) => {}
                _ = connections.drive() => unreachable!(),
            }
        }
    }

    #[tokio::test]
    async fn requests_one_after_another_share_one_connection() {
        let (target, url) = Counted::start(false).await;
        let connections = connections();
        for _ in 0..5 {
            assert_eq!(post(&connections, &url).await, 200);
        }
        assert_eq!(target.answered.load(Ordering::Acquire), 5);
        assert_eq!(target.accepted.load(Ordering::Acquire), 1);
    }

    /// The target closes each connection after one answer. Whether the
    /// lane noticed the close while idle or finds it only when it sends,
    /// the next request goes out on a new connection, unharmed.
    #[tokio::test]
    async fn a_connection_the_target_closed_while_idle_is_not_sent_on() {
        for noticed in [true, false] {
            let (target, url) = Counted::start(true).await;
            let connections = connections();
            for n in 1..=3 {
                assert_eq!(post(&connections, &url).await, 200, "request {n}");
                let closed = || target.closed.load(Ordering::Acquire) == n;
                if noticed {
                    drive_until(&connections, "the target to close", closed).await;
                } else {
                    // Not driven meanwhile: the connection looks idle and
                    // ready until the request is handed to it.
                    while !closed() {
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    }
                }
            }
            assert_eq!(target.answered.load(Ordering::Acquire), 3);
            assert_eq!(target.accepted.load(Ordering::Acquire), 3);
        }
    }

    #[tokio::test]
    async fn a_new_target_host_never_gets_the_old_ones_connections() {
        let (first, first_url) = Counted::start(false).await;
        let (second, second_url) = Counted::start(false).await;
        let connections = connections();
        assert_eq!(post(&connections, &first_url).await, 200);
        assert_eq!(post(&connections, &second_url).await, 200);
        assert_eq!(first.answered.load(Ordering::Acquire), 1);
        assert_eq!(second.answered.load(Ordering::Acquire), 1);
        assert_eq!(second.accepted.load(Ordering::Acquire), 1);
        // The first host's idle connection was closed with the change.
        drive_until(&connections, "the first host's connection to close", || {
            first.closed.load(Ordering::Acquire) == 1
        })
        .await;
    }
}
