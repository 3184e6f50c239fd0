//! walhook-sink: a webhook target for walhook-perf's sections.
//!
//! It answers every request with 200, optionally after a delay (a slow
//! target; `PUT /delay` with a number of milliseconds as the body changes
//! it, for a target that slows down while walhook sends), counts what it
//! answered, and can log one line per delivery:
//! `arrival_unix_micros event_id [field ...]`, where each field is a value of
//! the body's `FieldValues` named with `--field`. `GET /stats` gives the
//! counters as `name value` lines, for the harness to poll, with the times
//! (Unix microseconds) the first delivery arrived and the latest was
//! answered, so the harness times a burst without polling's granularity.
//!
//! It speaks HTTP/1.1 and HTTP/2 (cleartext with prior knowledge, or over TLS
//! through ALPN). Each request waits on a timer, never on a thread, so a
//! delay holds only its own request: HTTP/1.1 allows one request at a time
//! per connection, HTTP/2 streams of one connection wait side by side, and
//! any number of connections are served at once.

use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use clap::Parser;
use tokio::net::TcpListener;
use walhook_lab::tls::{HandshakeFailed, ServerTls, TlsListener};

/// The largest body accepted: walhook's own bound (`delivery.max_body_bytes`)
/// is at most 16 MiB by default.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// The most `--field` options: each costs a lookup per request.
const MAX_FIELDS: usize = 16;

#[derive(Parser, Debug)]
#[command(
    name = "walhook-sink",
    about = "A counting webhook target for walhook's benchmark"
)]
struct Args {
    /// Address to listen on; port 0 picks a free one. The address bound is
    /// printed on stdout as `listening on ADDR`.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Milliseconds each answer waits (0 to 60000).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    delay_ms: u64,
    /// Append one line per answered delivery to this file:
    /// `arrival_unix_micros event_id [field ...]`.
    #[arg(long)]
    log: Option<PathBuf>,
    /// A key of the body's `FieldValues` whose value each log line carries,
    /// in the order given (repeatable). A delivery without it is rejected.
    #[arg(long = "field", value_parser = field_name)]
    fields: Vec<String>,
    /// Serve HTTPS with this PEM certificate (chain); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

fn field_name(name: &str) -> Result<String, String> {
    if name.is_empty() || name.len() > 63 || name.chars().any(|c| c.is_whitespace()) {
        return Err(format!(
            "'{name}' is not a column name (1 to 63 characters, no spaces)"
        ));
    }
    Ok(name.to_owned())
}

/// What every request handler shares.
struct Sink {
    /// Milliseconds each answer waits.
    delay_ms: AtomicU64,
    log: Option<Mutex<File>>,
    fields: Vec<String>,
    /// Deliveries answered 200 (and logged, with --log).
    requests: AtomicU64,
    /// Requests answered 400: not a walhook delivery, or without a field.
    rejected: AtomicU64,
    /// Deliveries answered 500 because their log line could not be written.
    log_errors: AtomicU64,
    /// Deliveries received and not yet answered.
    in_flight: AtomicU64,
    /// When the first delivery arrived (Unix microseconds; 0: none yet).
    first_arrival_us: AtomicU64,
    /// When the latest delivery counted in `requests` was answered.
    last_answer_us: AtomicU64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.fields.len() > MAX_FIELDS {
        bail!(
            "at most {MAX_FIELDS} --field options (got {})",
            args.fields.len()
        );
    }
    if !args.fields.is_empty() && args.log.is_none() {
        bail!("--field needs --log: the fields only go to the log");
    }
    let log = match &args.log {
        None => None,
        Some(path) => Some(Mutex::new(
            File::options()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("--log {}: cannot open for appending", path.display()))?,
        )),
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_config(cert, key)?),
        _ => None,
    };
    let sink = Arc::new(Sink {
        delay_ms: AtomicU64::new(args.delay_ms),
        log,
        fields: args.fields,
        requests: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        log_errors: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        first_arrival_us: AtomicU64::new(0),
        last_answer_us: AtomicU64::new(0),
    });
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}: cannot bind", args.listen))?;
    let local = listener.local_addr()?;
    let app = axum::Router::new()
        .fallback(receive)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(sink);
    println!(
        "listening on {local} ({}, delay {} ms)",
        if tls.is_some() { "https" } else { "http" },
        args.delay_ms
    );
    match tls {
        None => axum::serve(listener, app).await?,
        Some(tls) => {
            // Handshakes run in their own tasks, so a client that stalls
            // one never holds up the next; failures are only reported.
            let failed: HandshakeFailed = Arc::new(|peer, failure| {
                eprintln!("walhook-sink: TLS handshake with {peer}: {failure}")
            });
            axum::serve(TlsListener::new(listener, &tls, failed)?, app).await?
        }
    }
    Ok(())
}

async fn receive(
    State(sink): State<Arc<Sink>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if uri.path() == "/stats" && method == Method::GET {
        return sink.stats().into_response();
    }
    if uri.path() == "/delay" && method == Method::PUT {
        return match std::str::from_utf8(&body)
            .ok()
            .and_then(|b| b.trim().parse::<u64>().ok())
            .filter(|ms| *ms <= 60_000)
        {
            Some(ms) => {
                sink.delay_ms.store(ms, Ordering::Relaxed);
                (StatusCode::OK, format!("delay {ms} ms\n")).into_response()
            }
            None => (
                StatusCode::BAD_REQUEST,
                "walhook-sink: PUT /delay takes milliseconds (0 to 60000)\n",
            )
                .into_response(),
        };
    }
    let arrival = unix_micros();
    let line = match sink.log_line(arrival, &headers, &body) {
        Ok(line) => line,
        Err(why) => {
            sink.rejected.fetch_add(1, Ordering::Relaxed);
            return (StatusCode::BAD_REQUEST, format!("walhook-sink: {why}\n")).into_response();
        }
    };
    let _ = sink.first_arrival_us.compare_exchange(
        0,
        arrival as u64,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    sink.in_flight.fetch_add(1, Ordering::Relaxed);
    let delay = sink.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    sink.in_flight.fetch_sub(1, Ordering::Relaxed);
    if let Some(log) = &sink.log {
        // One write per line on an append-only file: a line is whole in the
        // file before its delivery is counted, so a reader that saw the
        // count finds every line.
        let written = log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_all(line.as_bytes());
        if let Err(e) = written {
            sink.log_errors.fetch_add(1, Ordering::Relaxed);
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("walhook-sink: the log line could not be written: {e}\n"),
            )
                .into_response();
        }
    }
    // Before the count, so a reader that saw the count sees this time.
    sink.last_answer_us
        .fetch_max(unix_micros() as u64, Ordering::Relaxed);
    sink.requests.fetch_add(1, Ordering::Release);
    StatusCode::OK.into_response()
}

fn unix_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros()
}

impl Sink {
    fn stats(&self) -> String {
        format!(
            "requests {}\nrejected {}\nlog_errors {}\nin_flight {}\n\
             first_arrival_us {}\nlast_answer_us {}\n",
            self.requests.load(Ordering::Acquire),
            self.rejected.load(Ordering::Relaxed),
            self.log_errors.load(Ordering::Relaxed),
            self.in_flight.load(Ordering::Relaxed),
            self.first_arrival_us.load(Ordering::Relaxed),
            self.last_answer_us.load(Ordering::Relaxed),
        )
    }

    /// The log line of one delivery, or why it is not a walhook delivery.
    fn log_line(&self, arrival: u128, headers: &HeaderMap, body: &[u8]) -> Result<String, String> {
        let header_id = match headers.get("x-superoffice-eventid") {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .map_err(|_| "header X-SuperOffice-EventId is not text".to_owned())?,
            ),
        };
        // The body is parsed only when something must come from it.
        let parsed = if header_id.is_none() || !self.fields.is_empty() {
            let value: serde_json::Value =
                serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
            Some(value)
        } else {
            None
        };
        let event_id = match (header_id, &parsed) {
            (Some(id), _) => id.to_owned(),
            (None, Some(body)) => body
                .get("EventId")
                .and_then(|v| v.as_str())
                .ok_or("neither header X-SuperOffice-EventId nor a body field EventId")?
                .to_owned(),
            (None, None) => unreachable!("the body is parsed when the header is missing"),
        };
        if !is_uuid(&event_id) {
            return Err(format!("EventId '{}' is not a UUID", truncated(&event_id)));
        }
        let mut line = format!("{arrival} {event_id}");
        if let (false, Some(body)) = (self.fields.is_empty(), &parsed) {
            let values = body
                .get("FieldValues")
                .and_then(|v| v.as_object())
                .ok_or("the body has no FieldValues object")?;
            for name in &self.fields {
                let value = values
                    .get(name)
                    .ok_or_else(|| format!("FieldValues has no '{name}'"))?;
                line.push(' ');
                line.push_str(&field_text(value));
            }
        }
        line.push('\n');
        Ok(line)
    }
}

/// A value as one space-free word: plain strings as they are, anything else
/// (and strings with spaces or control characters) as JSON text.
fn field_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s)
            if !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            s.clone()
        }
        other => {
            let text = other.to_string();
            if text.chars().any(char::is_whitespace) {
                // JSON escapes control characters in strings but keeps
                // spaces; a space would split the line into more words.
                text.replace(' ', "\\u0020")
            } else {
                text
            }
        }
    }
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn truncated(s: &str) -> String {
    s.chars().take(64).collect()
}

/// The lab's TLS server configuration, offering HTTP/2 and HTTP/1.1
/// through ALPN, from the two files.
fn tls_config(cert: &PathBuf, key: &PathBuf) -> anyhow::Result<ServerTls> {
    let read = |flag: &str, path: &PathBuf| {
        std::fs::read_to_string(path).with_context(|| format!("{flag} {}", path.display()))
    };
    let (cert_pem, key_pem) = (read("--tls-cert", cert)?, read("--tls-key", key)?);
    ServerTls::new(&cert_pem, &key_pem).with_context(|| {
        format!(
            "--tls-cert {} and --tls-key {} do not make a certificate and its key",
            cert.display(),
            key.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(fields: &[&str]) -> Sink {
        Sink {
            delay_ms: AtomicU64::new(0),
            log: None,
            fields: fields.iter().map(|f| f.to_string()).collect(),
            requests: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            log_errors: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            first_arrival_us: AtomicU64::new(0),
            last_answer_us: AtomicU64::new(0),
        }
    }

    const ID: &str = "0b6f1d7e-5c1a-5f0e-9a3b-1c2d3e4f5a6b";

    #[test]
    fn a_line_carries_the_header_event_id_and_the_named_fields() {
        let mut headers = HeaderMap::new();
        headers.insert("x-superoffice-eventid", ID.parse().unwrap());
        let body = br#"{"EventId":"ignored","FieldValues":{"id":42,"ts":"2024-01-01T08:00:00.123456+00:00","label":"a b"}}"#;
        let line = sink(&["id", "ts", "label"])
            .log_line(7, &headers, body)
            .unwrap();
        assert_eq!(
            line,
            format!("7 {ID} 42 2024-01-01T08:00:00.123456+00:00 \"a\\u0020b\"\n")
        );
    }

    #[test]
    fn the_body_event_id_serves_when_the_header_is_missing() {
        let body = format!(r#"{{"EventId":"{ID}"}}"#);
        let line = sink(&[])
            .log_line(1, &HeaderMap::new(), body.as_bytes())
            .unwrap();
        assert_eq!(line, format!("1 {ID}\n"));
    }

    #[test]
    fn what_is_not_a_delivery_is_rejected_with_the_reason() {
        let none = sink(&[]).log_line(1, &HeaderMap::new(), b"not json");
        assert!(none.unwrap_err().contains("not JSON"));
        let bad_id = sink(&[]).log_line(1, &HeaderMap::new(), br#"{"EventId":"x y"}"#);
        assert!(bad_id.unwrap_err().contains("not a UUID"));
        let body = format!(r#"{{"EventId":"{ID}","FieldValues":{{"id":1}}}}"#);
        let missing = sink(&["ts"]).log_line(1, &HeaderMap::new(), body.as_bytes());
        assert!(missing.unwrap_err().contains("no 'ts'"));
    }
}
