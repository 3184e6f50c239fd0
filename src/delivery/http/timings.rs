//! How long the connection an attempt opened took to make, phase by
//! phase (name lookup, TCP, TLS), for the attempt's trace span.
//!
//! The connector's layers are hyper's and rustls', so the phases are
//! timed by wrapping them ([`Timed`]) and by the resolver, and reported
//! to the attempt through a task-local it sets ([`measured`]). A
//! connection made in a task of its own (the pool finishing one the
//! attempt no longer needed) reports to nobody.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use tokio::time::Instant;

tokio::task_local! {
    static PHASES: Cell<Phases>;
}

/// What the layers reported: each the time from its own start.
#[derive(Debug, Clone, Copy, Default)]
struct Phases {
    dns: Option<Duration>,
    /// Name lookup and TCP connect.
    tcp: Option<Duration>,
    /// Everything: lookup, TCP and TLS.
    whole: Option<Duration>,
}

/// The phases of the connection an attempt made; all `None` when it sent
/// over one it found open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectTimings {
    pub dns: Option<Duration>,
    pub connect: Option<Duration>,
    pub tls: Option<Duration>,
}

impl ConnectTimings {
    /// Time spent making the connection.
    pub fn total(&self) -> Duration {
        self.dns.unwrap_or_default()
            + self.connect.unwrap_or_default()
            + self.tls.unwrap_or_default()
    }
}

/// Runs `attempt`, timing the connection it makes, if any.
pub async fn measured<F: Future>(attempt: F) -> (F::Output, ConnectTimings) {
    PHASES
        .scope(Cell::new(Phases::default()), async {
            let output = attempt.await;
            let phases = PHASES.with(Cell::get);
            (output, timings(phases))
        })
        .await
}

fn timings(phases: Phases) -> ConnectTimings {
    let Some(tcp) = phases.tcp else {
        return ConnectTimings::default();
    };
    let dns = phases.dns;
    ConnectTimings {
        dns,
        connect: Some(tcp.saturating_sub(dns.unwrap_or_default())),
        // A plain-http connection passes through the TLS layer at once.
        tls: phases
            .whole
            .map(|whole| whole.saturating_sub(tcp))
            .filter(|tls| *tls >= Duration::from_micros(1)),
    }
}

/// Which phase a layer ends.
#[derive(Debug, Clone, Copy)]
pub(super) enum Phase {
    Dns,
    Tcp,
    Whole,
}

/// Reports `took` for `phase` to the attempt running in this task.
pub(super) fn record(phase: Phase, took: Duration) {
    let _ = PHASES.try_with(|cell| {
        let mut phases = cell.get();
        match phase {
            Phase::Dns => phases.dns = Some(took),
            Phase::Tcp => phases.tcp = Some(took),
            Phase::Whole => phases.whole = Some(took),
        }
        cell.set(phases);
    });
}

/// A connector layer whose connections report how long they took.
#[derive(Debug, Clone)]
pub(in crate::delivery) struct Timed<S> {
    inner: S,
    phase: Phase,
}

impl<S> Timed<S> {
    pub(super) fn new(inner: S, phase: Phase) -> Timed<S> {
        Timed { inner, phase }
    }
}

impl<S> tower_service::Service<Uri> for Timed<S>
where
    S: tower_service::Service<Uri>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let started = Instant::now();
        let phase = self.phase;
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            let connected = connecting.await;
            if connected.is_ok() {
                record(phase, started.elapsed());
            }
            connected
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn phases_reach_the_attempt_that_made_the_connection() {
        let ((), timings) = measured(async {
            record(Phase::Dns, Duration::from_millis(2));
            record(Phase::Tcp, Duration::from_millis(5));
            record(Phase::Whole, Duration::from_millis(12));
        })
        .await;
        assert_eq!(
            timings,
            ConnectTimings {
                dns: Some(Duration::from_millis(2)),
                connect: Some(Duration::from_millis(3)),
                tls: Some(Duration::from_millis(7)),
            }
        );
        // Elsewhere (another task, or no attempt at all) nothing is kept.
        record(Phase::Tcp, Duration::from_millis(1));
        let ((), reused) = measured(async {}).await;
        assert_eq!(reused, ConnectTimings::default());
    }
}
