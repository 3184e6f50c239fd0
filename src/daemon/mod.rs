//! `walhook run`: the daemon, wired from the stages below it.
//!
//! A [`Session`](session::Session) connects, waits for leadership
//! ([`leader`]), and streams: its [`Pipeline`](pipeline::Pipeline) reads
//! the stream in order (source -> pgoutput -> events -> registry) and
//! hands jobs to delivery; a timer confirms what the checkpoint allows; a
//! usage writer stores statistics; SIGHUP applies a re-read config
//! ([`reload`]). A lost connection ends the session and a new one starts
//! after a pause; a lost slot or anything a DBA must fix ends the daemon
//! (see [`crate::errors`]).

mod bus;
mod leader;
mod log_limit;
mod open_files;
mod pipeline;
mod reload;
mod session;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use self::session::Session;
use crate::config::Config;
use crate::errors::Fault;
use crate::metrics::{Health, Metrics};
use crate::store::Store;
use crate::telemetry::Telemetry;
use crate::text::human_duration;

/// What outlives one session: the signals, metrics and health.
pub(crate) struct Process {
    /// Turns true on SIGTERM/SIGINT.
    shutdown: watch::Receiver<bool>,
    /// The newest valid config; a change is a SIGHUP reload.
    reload: watch::Receiver<Arc<Config>>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// The slot and the position the last session settled: the next
    /// session resumes from it when the slot's position is behind (a
    /// server crash rewound it, or the last status update never reached
    /// the server), even if recording it failed.
    settled: Option<(String, crate::pgoutput::Lsn)>,
    /// Statistics not yet written: what a session could not write (its SQL
    /// session was lost) the next one writes.
    usage: crate::delivery::UsageBook,
    /// Spans of deliveries (`[telemetry]`), for every session.
    telemetry: Telemetry,
    /// Cluster mode: where the leader's capture publishes its jobs.
    bus: Option<(async_nats::jetstream::Context, crate::config::ClusterConfig)>,
}

/// Longest pause between two sessions after lost connections.
const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(30);

/// Run the daemon until `shutdown` turns true or a failure needs an
/// operator. `on_ready` is called once streaming.
pub async fn run(
    config: Config,
    shutdown: watch::Receiver<bool>,
    on_ready: impl FnOnce(),
) -> anyhow::Result<()> {
    let (_keep, reload) = watch::channel(Arc::new(config.clone()));
    run_with_reload(config, shutdown, reload, on_ready).await
}

/// [`run`], with `reload` delivering re-read configs (SIGHUP): delivery
/// tuning, table mappings and events settings apply at once; other changes
/// are logged as needing a restart.
pub async fn run_with_reload(
    config: Config,
    shutdown: watch::Receiver<bool>,
    reload: watch::Receiver<Arc<Config>>,
    on_ready: impl FnOnce(),
) -> anyhow::Result<()> {
    open_files::raise_and_report(config.delivery.concurrency_ceiling());
    for problem in config.password_file_problems() {
        tracing::warn!("{problem}");
    }
    // A bad endpoint fails the start, naming the key, rather than
    // running with traces silently gone.
    let telemetry = Telemetry::start(&config.telemetry)?;
    let mut config = Arc::new(config);
    let mut process = Process {
        shutdown,
        reload,
        metrics: Arc::new(Metrics::default()),
        health: Arc::new(Health::default()),
        settled: None,
        usage: crate::delivery::UsageBook::default(),
        telemetry: telemetry.clone(),
        bus: None,
    };
    process.reload.mark_unchanged();
    // An idle stream hears from the server at least every half
    // receive_timeout (walhook asks it to answer then): silence past three
    // quarters of it is a connection in trouble.
    process
        .health
        .set_silence_limit(config.postgres.receive_timeout * 3 / 4);
    if let Some(listen) = config.metrics.listen {
        let (metrics, health) = (Arc::clone(&process.metrics), Arc::clone(&process.health));
        // Fails fast (a taken port, a bad address) rather than running blind.
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("key metrics.listen: cannot listen on {listen}"))?;
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(listener, metrics, health).await {
                tracing::error!("metrics listener: {e:#}");
            }
        });
    }
    tokio::spawn(crate::metrics::watchdog(Arc::clone(&process.health)));
    let ended = serve(&mut config, &mut process, on_ready).await;
    // The spans of the last deliveries are exported before the exit.
    telemetry.shutdown().await;
    ended
}

/// The sessions of one process, or of one instance of a cluster with the
/// shards it delivers beside them.
async fn serve(
    config: &mut Arc<Config>,
    process: &mut Process,
    on_ready: impl FnOnce(),
) -> anyhow::Result<()> {
    let Some(cluster) = config.cluster.clone() else {
        return sessions(config, process, on_ready).await;
    };
    // Cluster mode: this instance delivers its shards whether or not it
    // leads the capture; a failed delivery node ends the process as a lost
    // slot would, through the sessions' shutdown.
    let mut bus = bus::Bus::start(
        config,
        &cluster,
        Arc::clone(&process.metrics),
        process.telemetry.clone(),
    )
    .await?;
    process.bus = Some((bus.js.clone(), bus.cluster.clone()));
    let mut signal = process.shutdown.clone();
    let (stop, stopped) = watch::channel(false);
    process.shutdown = stopped;
    let node_failure = tokio::spawn({
        async move {
            let failure = async {
                tokio::select! {
                    e = bus.failed() => Some(e),
                    _ = signal.wait_for(|s| *s) => None,
                }
            }
            .await;
            let _ = stop.send(true);
            (bus, failure)
        }
    });
    let result = sessions(config, process, on_ready).await;
    // The capture has stopped publishing: now the delivery node.
    let (bus, failure) = node_failure
        .await
        .map_err(|e| anyhow::anyhow!("cluster delivery watch panicked: {e}"))?;
    let stopped = bus.stop().await;
    match (result, failure) {
        (Err(e), _) => Err(e),
        (Ok(()), Some(e)) => Err(e.context("cluster delivery failed")),
        (Ok(()), None) => stopped,
    }
}

/// Sessions, one after another, until shutdown or a failure that needs an
/// operator.
async fn sessions(
    config: &mut Arc<Config>,
    process: &mut Process,
    on_ready: impl FnOnce(),
) -> anyhow::Result<()> {
    let mut on_ready = Some(on_ready);
    let mut pause = Duration::from_secs(1);
    loop {
        let outcome = match Session::start(Arc::clone(config), process).await {
            Ok(None) => return Ok(()),
            Ok(Some(session)) => {
                process.health.set_streaming(true);
                if let Some(ready) = on_ready.take() {
                    ready();
                }
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status("streaming")]);
                pause = Duration::from_secs(1);
                session.run(process, config).await
            }
            Err(e) => Err(e),
        };
        let Err(e) = outcome else {
            return Ok(());
        };
        match Fault::of(&e) {
            Fault::LostConnection => {
                process.health.set_streaming(false);
                tracing::warn!(
                    "connection to PostgreSQL lost: {e:#}; reconnecting in {}",
                    human_duration(pause)
                );
                let _ = sd_notify::notify(
                    false,
                    &[sd_notify::NotifyState::Status("reconnecting to PostgreSQL")],
                );
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = process.shutdown.changed() => return Ok(()),
                }
                pause = (pause * 2).min(MAX_RECONNECT_PAUSE);
            }
            Fault::SlotLost => {
                process.health.set_slot_lost();
                return Err(e);
            }
            Fault::NeedsOperator => return Err(slot_lost_or(e, config).await),
        }
    }
}

/// A failure the stream reports as a refusal may be the server having
/// invalidated the slot under it: ask the slot, and report that if so.
async fn slot_lost_or(e: anyhow::Error, config: &Config) -> anyhow::Error {
    let Ok(conn) = config.connection() else {
        return e;
    };
    let Ok(store) = Store::connect(&conn, &config.postgres.schema).await else {
        return e;
    };
    match store.slot_position(&config.postgres.slot).await {
        Err(lost) if Fault::of(&lost) == Fault::SlotLost => lost.context(format!("{e:#}")),
        _ => e,
    }
}
