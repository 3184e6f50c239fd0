//! walhook-post: POSTs one body over and over with walhook's HTTP stack,
//! for walhook-perf's wrk section.
//!
//! wrk measures what the machine allows a minimal client written in C.
//! This measures what the HTTP library walhook delivers with allows, used
//! as walhook uses it on an HTTP/1.1 target: hyper's HTTP/1.1 connections
//! (keep-alive, no Nagle delay) in lanes, one task per runtime worker,
//! each keeping its share of the requests in flight and driving its own
//! connections, as a walhook hook's delivery lanes do; with nothing else
//! per request (no decoding, no body to build, no signature, no
//! bookkeeping). The gap between this and walhook is walhook's own work;
//! the gap between this and wrk is the library's.
//!
//! `--http2` speaks cleartext HTTP/2 with prior knowledge instead, over
//! hyper's pooled client as walhook does, to compare the two versions'
//! cost on an h2c target (the bench does not).
//!
//! Prints one line when done:
//! `requests N seconds S cpu_seconds C failed F`, where C is this process's
//! user and system CPU time over the run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use futures_util::stream::{FuturesUnordered, StreamExt};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use nix::sys::resource::{getrusage, UsageWho};

/// walhook's allocator, so the two are compared on the same one.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "walhook-post",
    about = "POSTs a body over and over with walhook's HTTP client stack"
)]
struct Args {
    /// An http:// URL (plain HTTP/1.1, as the benchmark's nginx serves).
    url: Uri,
    /// The request body.
    #[arg(long)]
    body_file: PathBuf,
    /// A request header, `Name: value` (repeatable).
    #[arg(long = "header", value_parser = header)]
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Requests in flight at once (1 to 4096).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    concurrency: u32,
    /// How long to run (1 to 3600).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    seconds: u64,
    /// Cleartext HTTP/2 with prior knowledge instead of HTTP/1.1.
    #[arg(long)]
    http2: bool,
}

fn header(s: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("'{s}' is not 'Name: value'"))?;
    let name = HeaderName::try_from(name.trim()).map_err(|e| format!("'{name}': {e}"))?;
    let value = HeaderValue::try_from(value.trim()).map_err(|e| format!("'{value}': {e}"))?;
    Ok((name, value))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.url.scheme_str() != Some("http") {
        bail!("{}: only http:// URLs are measured", args.url);
    }
    let body = Bytes::from(
        std::fs::read(&args.body_file)
            .with_context(|| format!("reading {}", args.body_file.display()))?,
    );
    let mut headers = HeaderMap::new();
    for (name, value) in args.headers {
        headers.append(name, value);
    }
    // The same runtime walhook runs on: one worker per core.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let cpu_before = cpu_seconds()?;
    let length = Duration::from_secs(args.seconds);
    let concurrency = args.concurrency as usize;
    let (requests, failed, elapsed) = if args.http2 {
        runtime.block_on(run_http2(args.url, headers, body, concurrency, length))?
    } else {
        let lanes = runtime.metrics().num_workers().clamp(1, concurrency);
        runtime.block_on(run_lanes(
            args.url,
            headers,
            body,
            concurrency,
            lanes,
            length,
        ))?
    };
    let cpu = cpu_seconds()? - cpu_before;
    println!(
        "requests {requests} seconds {:.3} cpu_seconds {cpu:.3} failed {failed}",
        elapsed.as_secs_f64()
    );
    Ok(())
}

/// Keeps `concurrency` POSTs in flight for `length` over HTTP/1.1, spread
/// over `lanes` tasks: the requests answered 2xx, the others, and the
/// time taken.
async fn run_lanes(
    url: Uri,
    headers: HeaderMap,
    body: Bytes,
    concurrency: usize,
    lanes: usize,
    length: Duration,
) -> anyhow::Result<(u64, u64, Duration)> {
    let start = Instant::now();
    let end = start + length;
    let tasks: Vec<_> = (0..lanes)
        .map(|i| {
            // The remainder goes to the first lanes.
            let share = concurrency / lanes + usize::from(i < concurrency % lanes);
            tokio::spawn(run_lane(
                url.clone(),
                headers.clone(),
                body.clone(),
                share,
                end,
            ))
        })
        .collect();
    let (mut answered, mut failed) = (0, 0);
    for task in tasks {
        let (a, f) = task.await.context("a lane panicked")??;
        answered += a;
        failed += f;
    }
    Ok((answered, failed, start.elapsed()))
}

/// One lane: `in_flight` connections, each with a request in flight until
/// `end`, all driven by this task.
async fn run_lane(
    url: Uri,
    headers: HeaderMap,
    body: Bytes,
    in_flight: usize,
    end: Instant,
) -> anyhow::Result<(u64, u64)> {
    let Some(host) = url.host() else {
        bail!("{url}: no host");
    };
    let port = url.port_u16().unwrap_or(80);
    let host_header = HeaderValue::try_from(match port {
        80 => host.to_owned(),
        _ => format!("{host}:{port}"),
    })?;
    let path = url
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse::<Uri>()?;
    let mut connections = FuturesUnordered::new();
    let mut senders = Vec::with_capacity(in_flight);
    for _ in 0..in_flight {
        let stream = tokio::net::TcpStream::connect((host, port))
            .await
            .with_context(|| format!("connecting to {host}:{port}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await?;
        senders.push(sender);
        connections.push(connection);
    }
    let post = |mut sender: http1::SendRequest<Full<Bytes>>| {
        let mut request = Request::new(Full::new(body.clone()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = path.clone();
        *request.headers_mut() = headers.clone();
        request
            .headers_mut()
            .insert(http::header::HOST, host_header.clone());
        async move {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let ok = response.status().is_success();
            // Read to the end, so the connection is ready again.
            response.into_body().collect().await?;
            Ok::<_, anyhow::Error>((sender, ok))
        }
    };
    let mut running: FuturesUnordered<_> = senders.into_iter().map(post).collect();
    let (mut answered, mut failed) = (0u64, 0u64);
    loop {
        tokio::select! {
            done = running.next() => match done {
                Some(Ok((sender, ok))) => {
                    if ok { answered += 1 } else { failed += 1 }
                    if Instant::now() < end {
                        running.push(post(sender));
                    }
                }
                Some(Err(e)) => bail!("a request failed: {e:#}"),
                None => break,
            },
            // A connection ends when its sender is dropped, or on an error.
            Some(ended) = connections.next() => {
                if let Err(e) = ended {
                    bail!("a connection failed: {e}");
                }
            }
        }
    }
    Ok((answered, failed))
}

/// Keeps `concurrency` POSTs in flight for `length` over cleartext HTTP/2
/// and hyper's pooled client: the requests answered 2xx, the others, and
/// the time taken.
async fn run_http2(
    url: Uri,
    headers: HeaderMap,
    body: Bytes,
    concurrency: usize,
    length: Duration,
) -> anyhow::Result<(u64, u64, Duration)> {
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_max_idle_per_host(concurrency)
        .http2_only(true)
        .build(tcp);
    let post = || {
        let mut request = Request::new(Full::new(body.clone()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = url.clone();
        *request.headers_mut() = headers.clone();
        let sent = client.request(request);
        async move {
            let response = sent.await?;
            let ok = response.status().is_success();
            // Read to the end, so the connection goes back to the pool.
            response.into_body().collect().await?;
            Ok::<bool, anyhow::Error>(ok)
        }
    };
    let start = Instant::now();
    let end = start + length;
    let mut in_flight: FuturesUnordered<_> = (0..concurrency).map(|_| post()).collect();
    let (mut answered, mut failed) = (0u64, 0u64);
    while let Some(done) = in_flight.next().await {
        match done {
            Ok(true) => answered += 1,
            Ok(false) => failed += 1,
            Err(e) => bail!("a request failed: {e:#}"),
        }
        if Instant::now() < end {
            in_flight.push(post());
        }
    }
    Ok((answered, failed, start.elapsed()))
}

/// This process's user and system CPU time so far.
fn cpu_seconds() -> anyhow::Result<f64> {
    let usage = getrusage(UsageWho::RUSAGE_SELF).context("getrusage")?;
    let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Ok(seconds(usage.user_time()) + seconds(usage.system_time()))
}
