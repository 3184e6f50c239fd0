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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
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
        headers: impl Fn() -> HeaderMap,
        body: Bytes,
        deadline: Instant,
    ) -> Result<Response<Incoming>, SendError> {
        match self {
            // The version the connector offers by ALPN decides, not the
            // configuration as reloaded since.
            Sender::Task(own) if speaks_http1_only(url, own.pool.http_version()) => {
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
    /// The most idle connections kept: a connection coming back past it
    /// is closed. Set by the hook's queue to what the hook may have in
    /// flight, so a hook that held many shared requests gives their
    /// connections back as soon as it holds fewer, rather than after
    /// the idle timeout.
    idle_cap: Arc<AtomicUsize>,
    // Held only within one poll of the owning task: never contended.
    state: Mutex<State>,
}

struct State {
    /// The last target, prepared: a hook has one.
    target: Option<Target>,
    /// Counts the target's changes of origin: a connection made before the
    /// last one leads elsewhere.
    origin_generation: u64,
    /// Connections that are not sending, in the order they came back; one
    /// whose last answer is still being read is not ready yet.
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
    /// The `origin_generation` it was made in.
    generation: u64,
}

impl Idle {
    /// Closed by the target, or idle longer than the pool keeps one.
    fn spent(&self, now: Instant) -> bool {
        self.sender.is_closed() || now - self.since >= POOL_IDLE_TIMEOUT
    }
}

impl TaskConnections {
    pub fn new(pool: HttpClient) -> TaskConnections {
        TaskConnections {
            pool,
            idle_cap: Arc::new(AtomicUsize::new(usize::MAX)),
            state: Mutex::new(State {
                target: None,
                origin_generation: 0,
                idle: VecDeque::new(),
                open: FuturesUnordered::new(),
                driver: None,
                sweep: Box::pin(tokio::time::sleep(POOL_IDLE_TIMEOUT)),
            }),
        }
    }

    /// Keep at most `cap` idle connections, read at each return.
    pub fn with_idle_cap(mut self, cap: Arc<AtomicUsize>) -> TaskConnections {
        self.idle_cap = cap;
        self
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves every connection's bytes; never ends. Also closes connections
    /// idle for longer than the pool keeps them (looked for every half of
    /// that time, so within one and a half times it).
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
            // The hook may send fewer at once than before (it gave shared
            // requests back): the oldest idle ones beyond that close now,
            // not after the idle timeout, so connections follow what is
            // in flight. 1,000 hooks kept some 1,800 open for 1,500
            // requests in flight, at about 26 KiB each.
            let cap = self.idle_cap.load(Ordering::Relaxed);
            if state.idle.len() > cap {
                let excess = state.idle.len() - cap;
                state.idle.drain(..excess);
            }
            if state.sweep.as_mut().poll(cx).is_ready() {
                let now = Instant::now();
                state.idle.retain(|i| !i.spent(now));
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
            let (uri, generation, mut request) = self.request(url, headers(), body)?;
            loop {
                let (mut sender, reused) = match self.checkout(generation) {
                    Some(sender) => (sender, true),
                    None => (self.connect(uri.clone()).await?, false),
                };
                match sender.try_send_request(request).await {
                    Ok(response) => {
                        self.checkin(sender, generation);
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

    /// The request, the URI to connect to and the generation of its
    /// origin.
    fn request(
        &self,
        url: &url::Url,
        mut headers: HeaderMap,
        body: Bytes,
    ) -> Result<(Uri, u64, Request<Full<Bytes>>), SendError> {
        let mut state = self.state();
        let state = &mut *state;
        let target = match &state.target {
            Some(t) if t.url == url.as_str() => t,
            _ => {
                let target = Target::of(url)?;
                if state
                    .target
                    .as_ref()
                    .is_some_and(|t| t.origin != target.origin)
                {
                    // The hook's URL changed host: its idle connections,
                    // and those in use now, lead elsewhere.
                    state.origin_generation += 1;
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
        let generation = state.origin_generation;
        Ok((target.uri.clone(), generation, request))
    }

    /// The idle connection that came back last and is ready for a request
    /// to the origin of `generation`; closed ones, those idle too long and
    /// those to another origin are dropped on the way. The last one back
    /// first, as hyper's pool does: after a burst, a steady trickle keeps
    /// one connection busy and lets the others age out, where taking the
    /// oldest first would keep them all open.
    fn checkout(&self, generation: u64) -> Option<http1::SendRequest<Full<Bytes>>> {
        let mut state = self.state();
        let now = Instant::now();
        let mut at = state.idle.len();
        while at > 0 {
            at -= 1;
            let idle = &state.idle[at];
            if idle.generation != generation || idle.spent(now) {
                state.idle.remove(at);
            } else if idle.sender.is_ready() {
                return state.idle.remove(at).map(|idle| idle.sender);
            }
            // Else its last answer is still being read.
        }
        None
    }

    /// The connection goes back to the idle ones as soon as its answer has
    /// headers: it is ready again once the answer's body is read (one left
    /// unread closes it). One to an origin the target has left is closed.
    fn checkin(&self, sender: http1::SendRequest<Full<Bytes>>, generation: u64) {
        let mut state = self.state();
        // Past the cap the sender is dropped: the connection reads the
        // rest of its answer, then closes.
        if generation == state.origin_generation
            && state.idle.len() < self.idle_cap.load(Ordering::Relaxed)
        {
            state.idle.push_back(Idle {
                sender,
                since: Instant::now(),
                generation,
            });
        }
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

    /// A loopback HTTP/1.1 target that counts the connections it accepted,
    /// the requests it received and answered (200, empty body, after
    /// `delay`), and the answers on each connection. With
    /// `close_after_answer` it closes each connection after its first
    /// answer, as a target whose idle timeout ran out does.
    #[derive(Clone, Default)]
    struct Counted {
        accepted: Arc<AtomicUsize>,
        received: Arc<AtomicUsize>,
        answered: Arc<AtomicUsize>,
        closed: Arc<AtomicUsize>,
        per_connection: Arc<std::sync::Mutex<Vec<usize>>>,
        delay: Arc<std::sync::Mutex<std::time::Duration>>,
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
                    let connection = c.accepted.fetch_add(1, Ordering::AcqRel);
                    c.per_connection.lock().unwrap().push(0);
                    let c = c.clone();
                    tokio::spawn(async move {
                        let mut socket = BufReader::new(socket);
                        while answer_one(&mut socket, &c).await {
                            c.answered.fetch_add(1, Ordering::AcqRel);
                            c.per_connection.lock().unwrap()[connection] += 1;
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
    async fn answer_one(socket: &mut BufReader<tokio::net::TcpStream>, c: &Counted) -> bool {
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
        c.received.fetch_add(1, Ordering::AcqRel);
        let delay = *c.delay.lock().unwrap();
        tokio::time::sleep(delay).await;
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

    /// The hook's URL moves to another host while a request to the old one
    /// waits for its answer: that request's connection, back afterwards,
    /// must not carry a request to the new host.
    #[tokio::test]
    async fn a_connection_in_use_when_the_host_changes_never_carries_the_new_hosts_requests() {
        let (old, old_url) = Counted::start(false).await;
        let (new, new_url) = Counted::start(false).await;
        *old.delay.lock().unwrap() = std::time::Duration::from_millis(200);
        let connections = connections();
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let to_old = connections.post(&old_url, HeaderMap::new, Bytes::new(), deadline);
        let then_to_new = async {
            while old.received.load(Ordering::Acquire) == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            connections
                .post(&new_url, HeaderMap::new, Bytes::new(), deadline)
                .await
        };
        let (to_old, to_new) = tokio::select! {
            both = async { tokio::join!(to_old, then_to_new) } => both,
            _ = connections.drive() => unreachable!(),
        };
        assert_eq!(to_old.expect("an answer").status(), 200);
        assert_eq!(to_new.expect("an answer").status(), 200);
        assert_eq!(post(&connections, &new_url).await, 200);
        assert_eq!(old.answered.load(Ordering::Acquire), 1);
        assert_eq!(new.answered.load(Ordering::Acquire), 2);
    }

    /// After a burst opened several connections, requests one at a time go
    /// over the one that came back last, so the others can age out.
    #[tokio::test]
    async fn after_a_burst_a_trickle_keeps_to_one_connection() {
        let (target, url) = Counted::start(false).await;
        *target.delay.lock().unwrap() = std::time::Duration::from_millis(50);
        let connections = connections();
        let burst = async {
            tokio::join!(
                post(&connections, &url),
                post(&connections, &url),
                post(&connections, &url)
            )
        };
        let ok = http::StatusCode::OK;
        assert_eq!(burst.await, (ok, ok, ok));
        assert_eq!(target.accepted.load(Ordering::Acquire), 3);
        *target.delay.lock().unwrap() = std::time::Duration::ZERO;
        for _ in 0..6 {
            assert_eq!(post(&connections, &url).await, 200);
        }
        let mut answers = target.per_connection.lock().unwrap().clone();
        answers.sort_unstable();
        assert_eq!(answers, [1, 1, 7]);
    }

    #[test]
    fn only_targets_that_cannot_answer_in_http2_go_over_lane_connections() {
        let http: url::Url = "http://example.com/hook".parse().unwrap();
        let https: url::Url = "https://example.com/hook".parse().unwrap();
        for (url, version, lane) in [
            (&http, HttpVersion::Auto, true),
            (&http, HttpVersion::Http1, true),
            (&http, HttpVersion::Http2, false),
            (&https, HttpVersion::Auto, false),
            (&https, HttpVersion::Http1, true),
            (&https, HttpVersion::Http2, false),
        ] {
            assert_eq!(speaks_http1_only(url, version), lane, "{url} {version:?}");
        }
    }
}
