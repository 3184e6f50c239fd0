use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio::sync::watch;

use walhook::cli::{exit, Cli, Command, DEFAULT_CONFIG};
use walhook::config::{Config, LogFormat};
use walhook::{admin, daemon, demo};

/// glibc's allocator spent about a sixth of the daemon's CPU in its slow
/// paths (`_int_malloc`, `unlink_chunk`) on the per-request allocations of
/// the HTTP client, and grows per-thread arenas that are slow to shrink;
/// mimalloc is faster on this many small, short-lived allocations and
/// returns memory sooner.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Stack of each runtime thread: see where the runtime is built.
const THREAD_STACK_BYTES: usize = 32 * 1024 * 1024;

/// mimalloc's options that walhook sets unless its environment does.
#[cfg(all(target_os = "linux", not(feature = "system-allocator")))]
mod allocator_options {
    /// How long mimalloc keeps freed memory before giving it back (its default
    /// is 10 ms). Request data is made on one thread and freed on another at
    /// tens of thousands a second; at the start of a backlog the default kept
    /// 20-30 MiB of freed memory (peak RSS 73-86 MiB in the benchmark's parked
    /// and replay runs, 48-59 MiB with 2 ms, for about 9% fewer requests a
    /// second to nginx on loopback). MIMALLOC_PURGE_DELAY still overrides it.
    const ALLOCATOR_PURGE_DELAY_MS: std::ffi::c_long = 2;
    /// mimalloc's number for the `purge_delay` option (the same in its v2 and
    /// v3), which libmimalloc-sys names no constant for.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

    /// mimalloc's number for the `arena_eager_commit` option (v3), and the
    /// value that commits arena memory only as it is used. Its default commits
    /// the whole arena up front on Linux, where overcommit makes that free;
    /// but then memory it purges stayed in RSS: 1,000 hooks all matching
    /// peaked at 152 MiB with it and 124-125 MiB without (1.5 million
    /// requests to nginx), at some 13% more CPU per request (62 us against
    /// 55 us, on a busy 2-core machine). MIMALLOC_ARENA_EAGER_COMMIT still
    /// overrides it.
    const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    const ARENA_COMMIT_ON_DEMAND: std::ffi::c_long = 0;

    /// mimalloc's options that walhook sets unless its environment does. The
    /// arena is reserved at the first allocation, which may come before
    /// `main`, so this runs from `.init_array`, before Rust's start-up.
    extern "C" fn set_allocator_options() {
        extern "C" {
            fn getenv(name: *const std::ffi::c_char) -> *mut std::ffi::c_char;
        }
        let options = [
            (
                c"MIMALLOC_PURGE_DELAY",
                MI_OPTION_PURGE_DELAY,
                ALLOCATOR_PURGE_DELAY_MS,
            ),
            (
                c"MIMALLOC_ARENA_EAGER_COMMIT",
                MI_OPTION_ARENA_EAGER_COMMIT,
                ARENA_COMMIT_ON_DEMAND,
            ),
        ];
        for (variable, option, value) in options {
            // SAFETY: getenv reads the environment, complete before any
            // constructor runs; mi_option_set stores a plain integer.
            unsafe {
                if getenv(variable.as_ptr()).is_null() {
                    libmimalloc_sys::mi_option_set(option, value);
                }
            }
        }
    }

    /// Runs [`set_allocator_options`] as the process loads.
    #[used]
    #[link_section = ".init_array"]
    static SET_ALLOCATOR_OPTIONS: extern "C" fn() = set_allocator_options;
}

fn main() -> ExitCode {
    // pgwire-replication, tokio-postgres-rustls and the HTTP client all use rustls; with more than one
    // provider compiled in, rustls needs the process to choose one.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let cli = Cli::parse();
    // Needs no config: the package is built on machines without one (or
    // with a broken one).
    if let Command::PackageFiles { dir } = &cli.command {
        return ExitCode::from(write_package_files(dir));
    }
    // Reads the file itself: it reports an invalid one, and says where
    // each value came from.
    if let Command::Config { command } = &cli.command {
        return ExitCode::from(match config_path(&cli) {
            Ok(path) => walhook::admin::config(path.as_deref(), command),
            Err(e) => {
                eprintln!("walhook: {e:#}");
                exit::CONFIG
            }
        });
    }
    let (mut config, instance) = match load_config(&cli).and_then(|config| {
        let instance = walhook::setup::instance_from_env()?;
        Ok((config, instance))
    }) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("walhook: {e:#}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    // `check` and `status` say which instance (walhook@NAME) they speak for.
    let instance = instance.map(|name| {
        walhook::setup::instance_line(&name, config_path(&cli).ok().flatten().as_deref())
    });
    // The demo narrates on stdout; the daemon it runs says only what went
    // wrong, so its log lines do not interleave with the story (RUST_LOG
    // still shows everything).
    if matches!(cli.command, Command::Demo) {
        config.log.level = "warn".into();
    }
    let log_filter = init_logging(&config);

    // Values nested as deep as PostgreSQL allows (jsonb of ~15,000 levels,
    // more with a raised max_stack_depth) are serialised and dropped
    // recursively: the threads get stacks for that. It is address space;
    // only what is touched is memory.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(THREAD_STACK_BYTES)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("walhook: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let reloader = Reloader {
        path: cli.config.clone(),
        log_filter,
    };
    // On a runtime thread, not main's: those threads have the stacks sized
    // above, and block_on would run the whole command on main's.
    let code = runtime.block_on(async {
        tokio::spawn(dispatch(cli.command, config, reloader, instance))
            .await
            .unwrap_or_else(|e| {
                eprintln!("walhook: {e}");
                exit::FAILURE
            })
    });
    // Background tasks (idle HTTP connections, SQL sessions) must not hold
    // the exit up.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    ExitCode::from(code)
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    match config_path(cli)? {
        Some(path) => Config::load(&path),
        None => Ok(Config::default()),
    }
}

/// The config file: -c, else the instance's (WALHOOK_INSTANCE, as
/// walhook@.service sets it, so `check` run with it set reads the same file
/// as the daemon), else the default one if it exists.
fn config_path(cli: &Cli) -> anyhow::Result<Option<std::path::PathBuf>> {
    if let Some(path) = &cli.config {
        return Ok(Some(path.clone()));
    }
    if let Some(name) = walhook::setup::instance_from_env()? {
        return Ok(Some(walhook::setup::instance_config(&name)));
    }
    let default = std::path::Path::new(DEFAULT_CONFIG);
    Ok(default.exists().then(|| default.to_owned()))
}

/// `walhook package-files DIR`: prints each file written.
fn write_package_files(dir: &std::path::Path) -> u8 {
    match walhook::package_files::write_all(dir) {
        Ok(files) => {
            for file in files {
                println!("{}", file.display());
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("walhook: {e}");
            exit::FAILURE
        }
    }
}

/// Changes the log filter when SIGHUP brings a new `log.level`.
type LogFilterHandle = Box<dyn Fn(&str) -> anyhow::Result<()> + Send + Sync>;

fn init_logging(config: &Config) -> LogFilterHandle {
    use tracing_subscriber::EnvFilter;
    // RUST_LOG, when set, wins over the config file (and over reloads).
    let from_env = std::env::var("RUST_LOG").is_ok();
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // journald stamps each line itself.
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    use tracing_subscriber::prelude::*;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    // Whatever the filter says, other crates log at most at info: below
    // that, the SQL client logs statement parameters (hook secrets,
    // header values) and the HTTP stack logs request headers (signatures).
    let no_secrets = tracing_subscriber::filter::filter_fn(|meta| {
        meta.target().starts_with("walhook") || *meta.level() <= tracing::Level::INFO
    });
    let registry = tracing_subscriber::registry().with(filter).with(no_secrets);
    let _ = match (config.log.format, under_journald) {
        (LogFormat::Json, _) => registry.with(lines.json()).try_init(),
        (LogFormat::Text, true) => registry.with(lines.without_time()).try_init(),
        (LogFormat::Text, false) => registry.with(lines).try_init(),
    };
    Box::new(move |level: &str| {
        if from_env {
            return Ok(());
        }
        let filter = EnvFilter::try_new(level)
            .with_context(|| format!("key log.level: {level:?} is not a valid filter"))?;
        handle.reload(filter)?;
        Ok(())
    })
}

/// Re-reads the config file on SIGHUP.
struct Reloader {
    path: Option<std::path::PathBuf>,
    log_filter: LogFilterHandle,
}

async fn dispatch(
    command: Command,
    config: Config,
    reloader: Reloader,
    instance: Option<String>,
) -> u8 {
    if let (Some(line), Command::Check | Command::Status { json: false }) = (&instance, &command) {
        println!("{line}");
    }
    let (result, logged) = match command {
        Command::Run => (run(config, reloader).await.map(|()| exit::OK), true),
        Command::Setup { dry_run } => (
            admin::setup(&config, dry_run).await.map(|()| exit::OK),
            true,
        ),
        Command::Check => return admin::check(&config).await,
        Command::Demo => (demo::run().await.map(|()| exit::OK), true),
        Command::PackageFiles { dir } => return write_package_files(&dir),
        // Handled in main, before the config is loaded.
        Command::Config { .. } => return exit::FAILURE,
        Command::Status { json } => (admin::status(&config, json).await, false),
        Command::Webhook { command } => (admin::webhook(&config, command).await, false),
        Command::Backfill(args) => (admin::backfill(&config, args).await, false),
        Command::Teardown { drop_schema, yes } => {
            (admin::teardown(&config, drop_schema, yes).await, false)
        }
        Command::Parked { command } => (admin::parked(&config, command).await, false),
        Command::Replay { webhook } => (
            admin::replay(&config, webhook).await.map(|()| exit::OK),
            false,
        ),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // Once: the daemon's commands say it in the log (stderr, or
            // the journal), the DBA's commands print it.
            if logged {
                tracing::error!("{e:#}");
            } else {
                eprintln!("walhook: {e:#}");
            }
            if e.downcast_ref::<admin::Invalid>().is_some() {
                exit::CONFIG
            } else {
                exit::FAILURE
            }
        }
    }
}

async fn run(config: Config, reloader: Reloader) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_stop_signal().await;
        tracing::info!("stop signal received");
        let _ = stop_tx.send(true);
    });
    let (reload_tx, reload_rx) = watch::channel(std::sync::Arc::new(config.clone()));
    tokio::spawn(reload_on_sighup(reloader, reload_tx));
    daemon::run_with_reload(config, stop_rx, reload_rx, || {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    })
    .await
}

/// SIGHUP: re-read the config; an invalid file keeps the old one and says
/// why.
async fn reload_on_sighup(reloader: Reloader, reload: watch::Sender<std::sync::Arc<Config>>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; config reloads are off");
        return;
    };
    while hup.recv().await.is_some() {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
        let cli_like = Cli {
            config: reloader.path.clone(),
            command: Command::Run,
        };
        match load_config(&cli_like) {
            Ok(new) => {
                if let Err(e) = (reloader.log_filter)(&new.log.level) {
                    tracing::error!("config reload: {e:#}; keeping the old log level");
                }
                let _ = reload.send(std::sync::Arc::new(new));
            }
            Err(e) => tracing::error!("config reload failed, keeping the old config: {e:#}"),
        }
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    }
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
