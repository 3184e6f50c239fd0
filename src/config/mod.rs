//! The TOML configuration file.
//!
//! Every key has a default, so an empty file is valid; an unknown key is an
//! error that names it (a typo must never silently fall back to a default
//! beside a production database). `systemd/walhook.toml` documents each key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub mod cluster;
mod connection;
pub mod secret_file;
pub mod show;
pub mod telemetry;
mod validate;

pub use self::cluster::ClusterConfig;
pub use self::connection::{Connection, Purpose, SslMode};
pub use self::telemetry::TelemetryConfig;

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub postgres: PostgresConfig,
    pub capture: CaptureConfig,
    pub events: EventsConfig,
    /// Per-table settings keyed by `"schema.table"`.
    pub tables: BTreeMap<String, TableConfig>,
    pub delivery: DeliveryConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    /// OpenTelemetry traces of deliveries; off by default.
    pub telemetry: TelemetryConfig,
    pub backfill: BackfillConfig,
    /// Cluster mode over NATS JetStream; absent: one process.
    pub cluster: Option<ClusterConfig>,
}

impl Config {
    /// What is wrong with who may read the password files the config
    /// names (see [`secret_file::exposure`]).
    pub fn password_file_problems(&self) -> Vec<String> {
        let p = &self.postgres;
        [
            ("postgres.password_file", &p.password_file),
            ("postgres.setup_password_file", &p.setup_password_file),
        ]
        .into_iter()
        .chain(self.cluster.iter().flat_map(|c| {
            [
                ("cluster.credentials_file", &c.credentials_file),
                ("cluster.nkey_seed_file", &c.nkey_seed_file),
            ]
        }))
        .filter_map(|(key, path)| secret_file::exposure(path.as_deref()?, key))
        .collect()
    }

    /// walhook's publications: the main one, and the insert-only one for
    /// tables without a replica identity (publishing their UPDATE or
    /// DELETE would make the host's statements fail).
    pub fn publications(&self) -> [String; 2] {
        [
            self.postgres.publication.clone(),
            self.keyless_publication(),
        ]
    }

    /// The insert-only publication for tables without an identity.
    pub fn keyless_publication(&self) -> String {
        format!("{}_keyless", self.postgres.publication)
    }
}

/// The optional Prometheus metrics and health listener.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// A loopback address such as "127.0.0.1:9187"; unset: no listener.
    pub listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// libpq-style URL or key=value connection string; empty: the PG*
    /// variables, then walhook@127.0.0.1:5432/postgres.
    pub url: String,
    /// A file whose first line is the password (instead of the URL or PGPASSWORD).
    pub password_file: Option<PathBuf>,
    /// The connection `setup`, `teardown` and `check`'s setup checks use,
    /// when they run as another role than the daemon; `url` when unset.
    pub setup_url: Option<String>,
    /// As `password_file`, for `setup_url`.
    pub setup_password_file: Option<PathBuf>,
    pub schema: String,
    pub slot: String,
    /// `setup` creates the slot with FAILOVER (PostgreSQL 17+), so
    /// standbys with `sync_replication_slots` keep a copy of it.
    pub failover_slot: bool,
    pub publication: String,
    pub application_name: String,
    #[serde(deserialize_with = "duration", serialize_with = "show_duration")]
    pub statement_timeout: Duration,
    #[serde(deserialize_with = "duration", serialize_with = "show_duration")]
    pub lock_timeout: Duration,
    /// How often the confirmed position is sent to the server, whatever the
    /// pipeline is doing.
    #[serde(deserialize_with = "duration", serialize_with = "show_duration")]
    pub status_interval: Duration,
    /// How long a connection to the server may stay silent while walhook
    /// waits on it (replication stream, or a statement's answer beyond
    /// `statement_timeout`) before it is presumed lost and reopened; also
    /// sets the sockets' keepalives and TCP_USER_TIMEOUT.
    #[serde(deserialize_with = "duration", serialize_with = "show_duration")]
    pub receive_timeout: Duration,
    /// How long opening a connection (TCP, TLS, authentication) may take.
    #[serde(deserialize_with = "duration", serialize_with = "show_duration")]
    pub connect_timeout: Duration,
    /// The shortest time between two writes of the settled position (with
    /// the statistics) to `slot_progress`: the host's WAL pays for each.
    #[serde(deserialize_with = "duration", serialize_with = "show_duration")]
    pub progress_interval: Duration,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: String::new(),
            password_file: None,
            setup_url: None,
            setup_password_file: None,
            schema: "walhook".into(),
            slot: "walhook".into(),
            failover_slot: false,
            publication: "walhook".into(),
            application_name: "walhook".into(),
            statement_timeout: Duration::from_secs(30),
            lock_timeout: Duration::from_secs(5),
            status_interval: Duration::from_secs(1),
            receive_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            progress_interval: Duration::from_millis(50),
        }
    }
}

/// Which host tables `setup` publishes.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptureConfig {
    /// `schema.table` patterns; `*` matches any run of characters.
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// Changes to a partition are published as changes to its partitioned
    /// table (events name the parent); false names the partition.
    pub publish_via_partition_root: bool,
    /// Let the running daemon add tables created later to the publication
    /// (as `setup` would), checking every `auto_add_interval`. Needs a run
    /// role that owns the tables; off by default.
    pub auto_add_tables: bool,
    #[serde(deserialize_with = "duration", serialize_with = "show_duration")]
    pub auto_add_interval: Duration,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            include: vec!["*.*".into()],
            exclude: Vec::new(),
            publish_via_partition_root: true,
            auto_add_tables: false,
            auto_add_interval: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    pub context_identifier: String,
    /// Columns read, in order, for ChangedByAssociateId.
    pub changed_by_columns: Vec<String>,
    /// Skip changes that carry a replication origin (rows this database
    /// received as a logical replication subscriber).
    pub skip_replicated: bool,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            context_identifier: "Default".into(),
            changed_by_columns: vec![
                "updated_associate_id".into(),
                "registered_associate_id".into(),
            ],
            skip_replicated: false,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TableConfig {
    /// The entity name events use instead of the table's name.
    pub entity: Option<String>,
    /// Columns that never leave the server (publication column list).
    pub exclude_columns: Vec<String>,
}

/// How events of one hook are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryOrder {
    /// Events of one row keep commit order; rows go concurrently.
    Row,
    /// One strict commit order per hook.
    Webhook,
}

/// Which HTTP version requests to targets use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HttpVersion {
    /// HTTP/2 when an https target offers it in the TLS handshake (ALPN),
    /// HTTP/1.1 otherwise and on http.
    #[default]
    Auto,
    /// HTTP/1.1 only, never HTTP/2.
    Http1,
    /// HTTP/2 only, with prior knowledge: also on http (h2c), for receivers
    /// known to speak it; a target that does not fails every attempt.
    Http2,
}

impl HttpVersion {
    /// The value as written in the file.
    pub fn name(self) -> &'static str {
        match self {
            HttpVersion::Auto => "auto",
            HttpVersion::Http1 => "http1",
            HttpVersion::Http2 => "http2",
        }
    }
}

/// Both a wrong word and a wrong type (`http_version = 2`) are refused
/// naming the key and the accepted values.
impl<'de> Deserialize<'de> for HttpVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<HttpVersion, D::Error> {
        struct Words;
        const CHOICES: &str = "\"auto\", \"http1\" or \"http2\" (auto: HTTP/2 where an \
                               https target offers it, else HTTP/1.1; http1: never HTTP/2; \
                               http2: HTTP/2 with prior knowledge, also on http)";
        impl serde::de::Visitor<'_> for Words {
            type Value = HttpVersion;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "for key delivery.http_version {CHOICES}")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<HttpVersion, E> {
                match text {
                    "auto" => Ok(HttpVersion::Auto),
                    "http1" => Ok(HttpVersion::Http1),
                    "http2" => Ok(HttpVersion::Http2),
                    _ => Err(E::custom(format!(
                        "key delivery.http_version: {text:?} is not {CHOICES}"
                    ))),
                }
            }
        }
        d.deserialize_str(Words)
    }
}

/// How many requests one hook may have in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concurrency {
    /// Grows while the target keeps its latency, shrinks when it slows
    /// down or pushes back, up to `max_concurrency_per_webhook`.
    Adaptive,
    Fixed(usize),
}

impl<'de> Deserialize<'de> for Concurrency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Concurrency;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "delivery.concurrency_per_webhook to be \"adaptive\" or a number of requests",
                )
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Concurrency, E> {
                // Out-of-range numbers are refused by validation, naming
                // the range.
                Ok(Concurrency::Fixed(usize::try_from(n).unwrap_or(0)))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Concurrency, E> {
                Ok(Concurrency::Fixed(usize::try_from(n).unwrap_or(usize::MAX)))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Concurrency, E> {
                match s {
                    "adaptive" => Ok(Concurrency::Adaptive),
                    other => Err(E::custom(format!(
                        "expected delivery.concurrency_per_webhook to be \"adaptive\" or a number \
                         of requests, got {other:?}"
                    ))),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    pub max_consecutive_errors: u32,
    pub allow_http: bool,
    pub allow_private_targets: bool,
    /// Non-public networks targets may be in while `allow_private_targets`
    /// is false. Cloud metadata addresses are allowed only by an entry
    /// naming the address alone (/32 or /128), never by a wider one.
    #[serde(deserialize_with = "networks", serialize_with = "show_networks")]
    pub allowed_private_networks: Vec<ipnet::IpNet>,
    #[serde(deserialize_with = "duration", serialize_with = "show_duration")]
    pub connect_timeout: Duration,
    #[serde(deserialize_with = "duration", serialize_with = "show_duration")]
    pub timeout: Duration,
    /// Longest wait between two attempts of one event.
    #[serde(deserialize_with = "duration", serialize_with = "show_duration")]
    pub max_backoff: Duration,
    pub ordering: DeliveryOrder,
    /// Requests one hook may have in flight at once (rows spread over
    /// them): "adaptive" (the default) follows what the target sustains,
    /// a number fixes it.
    pub concurrency_per_webhook: Concurrency,
    /// The most requests an adaptive hook may have in flight.
    pub max_concurrency_per_webhook: usize,
    /// Requests in flight over all hooks together beyond each hook's
    /// first, which every hook may always send.
    pub max_shared_in_flight: usize,
    /// HTTP/2 or HTTP/1.1 to targets.
    pub http_version: HttpVersion,
    /// Bytes of request bodies in flight before walhook stops reading WAL.
    pub max_in_flight_bytes: u64,
    /// How long SIGTERM waits for in-flight deliveries.
    #[serde(deserialize_with = "duration", serialize_with = "show_duration")]
    pub shutdown_timeout: Duration,
    /// Events one hook may have queued before its new events are parked.
    pub backlog_limit: usize,
    /// How long a hook may go without delivering anything while it has
    /// queued events before its new events are parked.
    #[serde(deserialize_with = "duration", serialize_with = "show_duration")]
    pub backlog_max_age: Duration,
    /// Parked events older than this are dropped (counted and logged);
    /// "0s" keeps them until delivered or discarded.
    #[serde(deserialize_with = "duration", serialize_with = "show_duration")]
    pub parked_retention: Duration,
    /// Parked events one hook may have in `delivery`: a hook that reaches
    /// it is set to Stopped, so a dead target never fills the database.
    pub max_parked_events_per_webhook: u64,
    /// Bytes of parked events one hook may have in `delivery` (bodies
    /// without their Properties, which are stored once per version and
    /// counted once): a hook that reaches it is set to Stopped, as at the
    /// event bound.
    pub max_parked_bytes_per_webhook: u64,
    /// The largest request body: an event that would be larger is sent
    /// with its largest values left out and named in `MissingColumns`.
    pub max_body_bytes: usize,
    /// A PEM file of CA certificates trusted for HTTPS targets besides the
    /// system's.
    pub ca_file: Option<PathBuf>,
    /// A PEM certificate (chain) presented to targets that ask for one;
    /// set together with `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    /// The PEM private key of `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
    /// Which attempts `delivery_attempt` keeps (`walhook webhook attempts`).
    pub attempt_log: AttemptLogMode,
    /// Attempts older than this leave `delivery_attempt`.
    #[serde(deserialize_with = "duration", serialize_with = "show_duration")]
    pub attempt_log_retention: Duration,
    /// The newest attempts per hook `delivery_attempt` keeps.
    pub attempt_log_max_rows_per_webhook: u64,
}

/// Which delivery attempts are written to `delivery_attempt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttemptLogMode {
    /// Failed, throttled and 410 attempts: why a hook fails, at the cost
    /// of a row per failure only.
    Failures,
    /// Every attempt, delivered ones too: a row per delivery.
    All,
    /// None.
    Off,
}

impl DeliveryConfig {
    /// The most requests one hook may have in flight: the fixed number, or
    /// the adaptive limit's ceiling. Over HTTP/1.1, also its connections.
    pub fn concurrency_ceiling(&self) -> usize {
        match self.concurrency_per_webhook {
            Concurrency::Fixed(n) => n,
            Concurrency::Adaptive => self.max_concurrency_per_webhook,
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            max_consecutive_errors: 9,
            allow_http: false,
            allow_private_targets: false,
            allowed_private_networks: Vec::new(),
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(15),
            max_backoff: Duration::from_secs(300),
            ordering: DeliveryOrder::Row,
            concurrency_per_webhook: Concurrency::Adaptive,
            max_concurrency_per_webhook: 512,
            max_shared_in_flight: 512,
            http_version: HttpVersion::Auto,
            max_in_flight_bytes: 8 * 1024 * 1024,
            shutdown_timeout: Duration::from_secs(10),
            backlog_limit: 10_000,
            backlog_max_age: Duration::from_secs(300),
            parked_retention: Duration::from_secs(30 * 24 * 3600),
            max_parked_events_per_webhook: 1_000_000,
            max_parked_bytes_per_webhook: 10 * 1024 * 1024 * 1024,
            max_body_bytes: 16 * 1024 * 1024,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            attempt_log: AttemptLogMode::Failures,
            attempt_log_retention: Duration::from_secs(7 * 24 * 3600),
            attempt_log_max_rows_per_webhook: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter such as `info` or `walhook=debug`; RUST_LOG wins.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// `walhook backfill`: how the daemon reads existing rows.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackfillConfig {
    /// Rows per chunk (one SELECT between two watermarks), 1..=MAX_CHUNK_ROWS;
    /// halved for the rest of a table whenever a chunk hits the timeout.
    pub chunk_rows: usize,
    /// The most rows a second all backfills together read; 0: no limit.
    pub max_rows_per_second: u64,
    /// statement_timeout of one chunk's SELECT.
    #[serde(deserialize_with = "duration", serialize_with = "show_duration")]
    pub statement_timeout: Duration,
}

/// The largest `backfill.chunk_rows`: a chunk is held in memory until its
/// high watermark is read.
pub const MAX_CHUNK_ROWS: usize = 100_000;

impl Default for BackfillConfig {
    fn default() -> Self {
        BackfillConfig {
            chunk_rows: 1000,
            max_rows_per_second: 5000,
            statement_timeout: Duration::from_secs(10),
        }
    }
}

/// The most requests one hook may have in flight: over HTTP/1.1 each is a
/// connection to the target.
pub const MAX_CONCURRENCY: usize = 4096;
/// The most of `delivery.max_shared_in_flight`: tokio's semaphore holds
/// far more, but past this the bound no longer bounds memory.
pub const MAX_SHARED_IN_FLIGHT: usize = 65_536;
/// Bounds of `delivery.max_body_bytes`: parked bodies are stored as text,
/// and PostgreSQL refuses any message over 1 GiB.
pub const MIN_BODY_BYTES: usize = 64 * 1024;
pub const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;
/// The most `delivery.max_parked_bytes_per_webhook` may be: 64 TiB.
pub const MAX_PARKED_BYTES: u64 = 1 << 46;

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {text:?} ({e}); write it like \"5s\" or \"250ms\""
        ))
    })
}

/// A duration as the file writes it ("30s", "1m 30s"), for `config show`.
fn show_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

/// The networks as the file writes them.
fn show_networks<S: Serializer>(networks: &[ipnet::IpNet], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(networks.iter().map(|n| n.to_string()))
}

impl Serialize for HttpVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl Serialize for Concurrency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Concurrency::Adaptive => s.serialize_str("adaptive"),
            Concurrency::Fixed(n) => s.serialize_u64(*n as u64),
        }
    }
}

/// `delivery.allowed_private_networks`: each entry a network in CIDR
/// notation. The error names the key, the entry and what is wrong with it.
fn networks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    struct Networks;
    impl<'de> serde::de::Visitor<'de> for Networks {
        type Value = Vec<ipnet::IpNet>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            // Named here so that a wrong type names the key too.
            f.write_str(
                "key delivery.allowed_private_networks to be a list of networks, such as \
                 [\"10.20.0.0/16\", \"fd00::/8\"]",
            )
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut networks = Vec::new();
            let key = "key delivery.allowed_private_networks";
            while let Some(entry) = seq
                .next_element::<String>()
                .map_err(|e| serde::de::Error::custom(format!("{key}: {e}")))?
            {
                let network = validate::network_entry(&entry).map_err(|why| {
                    serde::de::Error::custom(format!("{key}: entry {entry:?} {why}"))
                })?;
                networks.push(network);
            }
            Ok(networks)
        }
    }
    d.deserialize_seq(Networks)
}

impl Config {
    /// Read and validate a config file; errors name the file and the key.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("config file {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let config: Config = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// The entity name for a table: the configured one, else the table name.
    pub fn entity_for<'a>(&'a self, schema: &str, table: &'a str) -> &'a str {
        self.tables
            .get(&format!("{schema}.{table}"))
            .and_then(|t| t.entity.as_deref())
            .unwrap_or(table)
    }

    /// Whether `setup` should publish `schema.table`.
    pub fn captures(&self, schema: &str, table: &str) -> bool {
        let name = format!("{schema}.{table}");
        self.capture.include.iter().any(|p| glob_match(p, &name))
            && !self.capture.exclude.iter().any(|p| glob_match(p, &name))
    }

    /// Connection settings from the URL, PG* variables and password_file.
    pub fn connection(&self) -> anyhow::Result<Connection> {
        Connection::from_config(&self.postgres, Purpose::Run)
    }

    /// The connection of `setup`, `teardown` and `check`'s setup checks:
    /// `setup_url` when set, else the same as [`connection`](Self::connection).
    pub fn setup_connection(&self) -> anyhow::Result<Connection> {
        Connection::from_config(&self.postgres, Purpose::Setup)
    }

    /// Whether setup runs as its own connection (`setup_url` is set).
    pub fn has_setup_url(&self) -> bool {
        self.postgres.setup_url.is_some()
    }
}

/// A setting that SIGHUP may replace while tasks keep reading it.
#[derive(Debug)]
pub struct Live<T>(std::sync::Arc<std::sync::RwLock<std::sync::Arc<T>>>);

impl<T> Clone for Live<T> {
    fn clone(&self) -> Self {
        Live(std::sync::Arc::clone(&self.0))
    }
}

impl<T> Live<T> {
    pub fn new(value: T) -> Live<T> {
        Live(std::sync::Arc::new(std::sync::RwLock::new(
            std::sync::Arc::new(value),
        )))
    }

    /// The current value (cheap: an Arc clone).
    pub fn get(&self) -> std::sync::Arc<T> {
        std::sync::Arc::clone(&self.0.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn set(&self, value: T) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = std::sync::Arc::new(value);
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some((b'*', rest)) => (0..=t.len()).any(|i| go(rest, &t[i..])),
            Some((c, rest)) => t.first() == Some(c) && go(rest, &t[1..]),
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

#[cfg(test)]
mod tests;
