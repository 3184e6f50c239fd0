//! The HTTP client every delivery uses: timeouts, no redirects, TLS as
//! `tls` configures it, HTTP/2 or HTTP/1.1 as `delivery.http_version`
//! says, and `resolver`'s name resolution, which enforces the target
//! policy on every resolved address.
//!
//! It is hyper's pooled client with rustls, without a higher-level client
//! on top: walhook sends one kind of request (a POST of a ready body, never
//! redirected, no proxy, no cookies, no decompression), and the layers such
//! a client adds for the rest (a URL parsed again per request, a redirect
//! policy, boxed timeouts and body decoders) were a fifth of walhook's CPU
//! per delivery to a fast target.
//!
//! # Connections
//!
//! Over HTTP/2 the requests to one host share a connection. Under `auto`
//! the first request to an https origin connects alone and the rest of its
//! burst follows once it has a connection ([`origins`](super::origins)),
//! so a burst does not open a connection per request before the pool has
//! learned that one would do. Requests
//! beyond the target's limit of concurrent streams (often 100 to 250) wait
//! for a free stream within `delivery.timeout`. Over HTTP/1.1 each request
//! in flight holds a connection of its own.
//!
//! This pool runs each connection as a task of its own. A hook's queue
//! sends to targets known to speak HTTP/1.1 over connections its delivery
//! lanes drive themselves instead ([`connections`](super::connections)).

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderMap;
use http::{Method, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{capture_connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;

use super::origins::{Admission, Origins};
use super::resolver::PolicyResolver;
use super::target_policy::AddressPolicy;
use super::timings::{Phase, Timed};
use super::tls;
use crate::config::{DeliveryConfig, HttpVersion};

/// How long an idle connection is kept. Over HTTP/1.1 a hook keeps as
/// many connections as it has requests in flight: were fewer kept idle,
/// each wave of answers would close the rest and the next wave would open
/// them again (a handshake per request, which on a 50 ms target raised
/// the round trip to 75 ms and on loopback cost CPU per request). A burst
/// that left hundreds idle gives them back to the target after this long.
pub(in crate::delivery) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// How often an HTTP/2 connection is pinged, busy or idle, and how long
/// the answer may take: a connection that died without a word (a target
/// that vanished, a NAT that forgot it) would otherwise hold every request
/// multiplexed on it until `delivery.timeout`, and an idle one would be
/// handed the next burst. A dead one is closed within about 15 s and the
/// next request opens a new one.
const H2_PING_INTERVAL: Duration = Duration::from_secs(10);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(5);

type Connector = Timed<HttpsConnector<Timed<HttpConnector<PolicyResolver>>>>;

/// A connection the connector made: TCP, or TLS over it.
pub(in crate::delivery) type Stream =
    hyper_rustls::MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;

/// The client deliveries, replays and `walhook webhook test` send with.
/// Cloning shares the connection pool.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<Connector, Full<Bytes>>,
    /// What the pool connects with, for a hook queue's own connections
    /// ([`TaskConnections`](super::connections::TaskConnections)).
    connector: Connector,
    /// The `delivery.http_version` the connector's ALPN and the pool were
    /// built for (a reload does not change it).
    version: HttpVersion,
    /// Under `auto`: which https origins answered lately.
    origins: Arc<Origins>,
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("no response within delivery.timeout")]
    TimedOut,
    #[error("the target URL is not a valid HTTP URI")]
    Uri(#[from] http::uri::InvalidUri),
    #[error("the target URL has no scheme or host")]
    NotAbsolute,
    #[error(transparent)]
    Transport(#[from] hyper_util::client::legacy::Error),
    /// No connection to the target (a hook queue's own connections).
    #[error("client error (Connect)")]
    Connect(#[source] Box<dyn StdError + Send + Sync>),
    /// The exchange failed on a connection (a hook queue's own).
    #[error("client error (SendRequest)")]
    Http(#[source] hyper::Error),
    /// Refused unprocessed on the first try and on every resend.
    #[error(
        "the target refused the request unprocessed {tries} times in a row \
         (HTTP/2 GOAWAY or REFUSED_STREAM)"
    )]
    Refused {
        tries: u32,
        #[source]
        last: hyper_util::client::legacy::Error,
    },
}

/// How many times one request the target refused unprocessed is sent
/// again. A connection ending refuses a request at most once: the resend
/// opens one of the next connection's first streams, and servers answer
/// far more requests per connection than they allow at once (nginx: 1,000
/// and 128). More in a row is a target refusing everything, which gets a
/// failure.
const MAX_REFUSED_RESENDS: u32 = 3;

impl SendError {
    /// No answer in time, or a connection attempt that timed out.
    pub fn is_timeout(&self) -> bool {
        match self {
            SendError::TimedOut => true,
            SendError::Uri(_) | SendError::NotAbsolute | SendError::Refused { .. } => false,
            SendError::Transport(_) | SendError::Connect(_) | SendError::Http(_) => {
                chain(self).skip(1).any(|s| {
                    s.downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
                })
            }
        }
    }

    /// No connection (refused, unreachable, TLS handshake, DNS).
    pub fn is_connect(&self) -> bool {
        match self {
            SendError::Transport(e) => e.is_connect(),
            SendError::Connect(_) => true,
            _ => false,
        }
    }

    /// The target refused every try unprocessed: it is overloaded.
    pub fn is_refused(&self) -> bool {
        matches!(self, SendError::Refused { .. })
    }
}

/// The target refused the request before processing any of it, so sending
/// it again cannot duplicate it (RFC 9113, 8.7): an HTTP/2 stream above the
/// last one a graceful GOAWAY says it will answer, or one reset with
/// REFUSED_STREAM. nginx ends every h2 connection so after
/// `keepalive_requests` (1,000 by default) and refuses whatever was in
/// flight past it; servers at their stream limit refuse the streams over
/// it.
fn refused_unprocessed_by(e: &hyper_util::client::legacy::Error) -> Option<&h2::Error> {
    chain(e)
        .filter_map(|s| s.downcast_ref::<h2::Error>())
        .find(|e| refused_unprocessed(e))
}

/// Only the target's own GOAWAY and REFUSED_STREAM count (one walhook's
/// HTTP/2 layer sent says nothing about the target), and of GOAWAYs only
/// the graceful NO_ERROR: a GOAWAY with an error code also reaches only
/// unprocessed streams, but it says the target or the connection is in
/// trouble, which is a failure to count, not a routine to hide.
fn refused_unprocessed(e: &h2::Error) -> bool {
    e.is_remote()
        && match e.reason() {
            Some(h2::Reason::NO_ERROR) => e.is_go_away(),
            Some(h2::Reason::REFUSED_STREAM) => e.is_reset(),
            _ => false,
        }
}

/// `error` and its causes, outermost first.
fn chain<'a>(
    error: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(error), |e: &&'a (dyn StdError + 'static)| {
        (*e).source()
    })
}

impl HttpClient {
    /// A handle on the connector the pool connects with.
    pub(in crate::delivery) fn connector(&self) -> Connector {
        self.connector.clone()
    }

    /// The HTTP version setting this client was built with.
    pub(in crate::delivery) fn http_version(&self) -> HttpVersion {
        self.version
    }

    /// POST `body` to `url` with the headers `headers` makes. `deadline`
    /// bounds the whole exchange up to the response headers, resends
    /// included; the caller bounds reading the body with it too.
    ///
    /// A request the target refused unprocessed is sent again at once (on a
    /// new connection after a GOAWAY), up to [`MAX_REFUSED_RESENDS`] times:
    /// that is no duplicate, and no failure of the target. The headers are
    /// made again for a resend rather than copied for every request.
    pub async fn post(
        &self,
        url: &url::Url,
        headers: impl Fn() -> HeaderMap,
        body: Bytes,
        deadline: Instant,
    ) -> Result<Response<Incoming>, SendError> {
        let uri: Uri = url.as_str().parse()?;
        let mut admission = match uri.authority() {
            Some(origin) if self.version == HttpVersion::Auto && url.scheme() == "https" => {
                match self.origins.admit(origin.as_str(), deadline).await {
                    Some(admission) => Some(admission),
                    None => return Err(SendError::TimedOut),
                }
            }
            _ => None,
        };
        let mut tries = 0;
        loop {
            tries += 1;
            let mut request = Request::new(Full::new(body.clone()));
            *request.method_mut() = Method::POST;
            *request.uri_mut() = uri.clone();
            *request.headers_mut() = headers();
            let exchange = async {
                match admission.as_mut().filter(|a| a.is_first()) {
                    Some(first) => self.send_first(request, first).await,
                    None => self.inner.request(request).await,
                }
            };
            let sent = match tokio::time::timeout_at(deadline, exchange).await {
                Ok(sent) => sent,
                Err(_) => return Err(SendError::TimedOut),
            };
            match sent {
                Ok(response) => {
                    if let Some(admission) = &mut admission {
                        admission.heard();
                    }
                    return Ok(response);
                }
                Err(e) => match refused_unprocessed_by(&e) {
                    Some(_) if tries > MAX_REFUSED_RESENDS => {
                        return Err(SendError::Refused { tries, last: e });
                    }
                    Some(refusal) => tracing::debug!(
                        "{}:{}: the target refused the request unprocessed ({refusal}); \
                         sending it again",
                        url.host_str().unwrap_or_default(),
                        url.port_or_known_default().unwrap_or_default()
                    ),
                    None => return Err(e.into()),
                },
            }
        }
    }

    /// Sends the request that goes first to its origin, and lets the
    /// others go as soon as it has a connection: by then the pool knows the
    /// version and holds an h2 connection for them to share.
    async fn send_first(
        &self,
        mut request: Request<Full<Bytes>>,
        first: &mut Admission,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        let mut connection = capture_connection(&mut request);
        let exchange = self.inner.request(request);
        tokio::pin!(exchange);
        tokio::select! {
            biased;
            sent = &mut exchange => sent,
            // `None` only once the request failed without a connection,
            // which the exchange then says.
            connected = async { connection.wait_for_connection_metadata().await.is_some() } => {
                if connected {
                    first.heard();
                }
                exchange.await
            }
        }
    }
}

/// Reads at most `limit` bytes of `body` before `deadline`. What is left
/// unread is discarded with the connection when the body is dropped.
pub async fn read_body_prefix(
    body: &mut Incoming,
    limit: usize,
    deadline: Instant,
) -> Result<Vec<u8>, ReadError> {
    let mut read = Vec::new();
    // Most answers have no body: nothing to wait for, no timer to set.
    if hyper::body::Body::is_end_stream(body) {
        return Ok(read);
    }
    while read.len() < limit {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(chunk) = frame.into_data() {
                    let room = limit - read.len();
                    read.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(ReadError::Failed(e, read)),
            Err(_) => return Err(ReadError::TimedOut(read)),
        }
    }
    Ok(read)
}

/// A body that could not be read to its end; each holds what was read.
#[derive(Debug)]
pub enum ReadError {
    Failed(hyper::Error, Vec<u8>),
    TimedOut(Vec<u8>),
}

impl ReadError {
    /// What was read before it failed.
    pub fn into_read(self) -> Vec<u8> {
        match self {
            ReadError::Failed(_, read) | ReadError::TimedOut(read) => read,
        }
    }
}

/// Builds the HTTP client used for every target. Errors name the TLS key
/// and file at fault (`delivery.ca_file`, `client_cert_file`,
/// `client_key_file`).
pub fn http_client(config: &DeliveryConfig) -> anyhow::Result<HttpClient> {
    let (tls, trust) = tls::client_config(config)?;
    tracing::debug!("HTTPS targets: trusting {trust}");
    if let Some(problem) = config
        .client_key_file
        .as_deref()
        .and_then(tls::key_file_exposure)
    {
        tracing::warn!("{problem}");
    }
    tracing::debug!(
        "HTTP version to targets: {} (delivery.http_version)",
        config.http_version.name()
    );
    let mut tcp = HttpConnector::new_with_resolver(PolicyResolver::new(
        AddressPolicy::new(config),
        config.connect_timeout,
    ));
    // https URLs are handed on to the TLS layer below.
    tcp.enforce_http(false);
    tcp.set_connect_timeout(Some(config.connect_timeout));
    // A request is written whole at once; waiting to coalesce it with a
    // later one only adds latency.
    tcp.set_nodelay(true);
    // The TLS configuration's ALPN, set by `tls` from
    // `delivery.http_version`, is kept as it is: the target's choice
    // decides h2 or HTTP/1.1 under `auto`.
    // Each layer reports its time to the attempt that connects, for its
    // trace span (timings.rs).
    let connector = Timed::new(
        HttpsConnector::from((Timed::new(tcp, Phase::Tcp), Arc::new(tls))),
        Phase::Whole,
    );
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_max_idle_per_host(config.concurrency_ceiling())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        // The flow-control window follows the measured bandwidth-delay
        // product, so large bodies to a distant target are not held to the
        // 64 KiB default window per round trip.
        .http2_adaptive_window(true)
        .http2_keep_alive_interval(H2_PING_INTERVAL)
        .http2_keep_alive_timeout(H2_PING_TIMEOUT)
        .http2_keep_alive_while_idle(true);
    // `auto` and `http1` need nothing here: the ALPN offered decides over
    // TLS, and plain http stays HTTP/1.1 unless HTTP/2 is asked for.
    if config.http_version == HttpVersion::Http2 {
        builder.http2_only(true);
    }
    Ok(HttpClient {
        inner: builder.build(connector.clone()),
        connector,
        version: config.http_version,
        origins: Arc::new(Origins::new(POOL_IDLE_TIMEOUT)),
    })
}
