//! The TOML configuration file.
//!
//! Every key has a default, so an empty file is valid; an unknown key is an
//! error that names it (a typo must never silently fall back to a default
//! beside a production database). `systemd/walhook.toml` documents each key.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use percent_encoding::percent_decode_str;
use serde::{Deserialize, Deserializer};

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
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
}

impl Config {
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
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// A loopback address such as "127.0.0.1:9187"; unset: no listener.
    pub listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// libpq-style URL or key=value connection string.
    pub url: String,
    /// A file whose first line is the password (instead of the URL or PGPASSWORD).
    pub password_file: Option<PathBuf>,
    pub schema: String,
    pub slot: String,
    pub publication: String,
    pub application_name: String,
    #[serde(deserialize_with = "duration")]
    pub statement_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub lock_timeout: Duration,
    /// How often the confirmed position is sent to the server, whatever the
    /// pipeline is doing.
    #[serde(deserialize_with = "duration")]
    pub status_interval: Duration,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: "postgres://walhook@127.0.0.1:5432/postgres".into(),
            password_file: None,
            schema: "walhook".into(),
            slot: "walhook".into(),
            publication: "walhook".into(),
            application_name: "walhook".into(),
            statement_timeout: Duration::from_secs(30),
            lock_timeout: Duration::from_secs(5),
            status_interval: Duration::from_secs(1),
        }
    }
}

/// Which host tables `setup` publishes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    #[serde(deserialize_with = "duration")]
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

#[derive(Debug, Clone, PartialEq, Deserialize)]
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

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TableConfig {
    /// The entity name events use instead of the table's name.
    pub entity: Option<String>,
    /// Columns that never leave the server (publication column list).
    pub exclude_columns: Vec<String>,
}

/// How events of one hook are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryOrder {
    /// Events of one row keep commit order; rows go concurrently.
    Row,
    /// One strict commit order per hook.
    Webhook,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    pub max_consecutive_errors: u32,
    pub allow_http: bool,
    pub allow_private_targets: bool,
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Longest wait between two attempts of one event.
    #[serde(deserialize_with = "duration")]
    pub max_backoff: Duration,
    pub ordering: DeliveryOrder,
    /// Requests one hook may have in flight at once (rows spread over them).
    pub concurrency_per_webhook: usize,
    /// Bytes of request bodies in flight before walhook stops reading WAL.
    pub max_in_flight_bytes: u64,
    /// How long SIGTERM waits for in-flight deliveries.
    #[serde(deserialize_with = "duration")]
    pub shutdown_timeout: Duration,
    /// Events one hook may have queued before its new events are parked.
    pub backlog_limit: usize,
    /// How long a hook may go without delivering anything while it has
    /// queued events before its new events are parked.
    #[serde(deserialize_with = "duration")]
    pub backlog_max_age: Duration,
    /// Parked events older than this are dropped (counted and logged);
    /// "0s" keeps them until delivered or discarded.
    #[serde(deserialize_with = "duration")]
    pub parked_retention: Duration,
    /// Parked events one hook may have in `delivery`: a hook that reaches
    /// it is set to Stopped, so a dead target never fills the database.
    pub max_parked_events_per_webhook: u64,
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
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            max_consecutive_errors: 9,
            allow_http: false,
            allow_private_targets: false,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(15),
            max_backoff: Duration::from_secs(300),
            ordering: DeliveryOrder::Row,
            concurrency_per_webhook: 8,
            max_in_flight_bytes: 64 * 1024 * 1024,
            shutdown_timeout: Duration::from_secs(10),
            backlog_limit: 10_000,
            backlog_max_age: Duration::from_secs(300),
            parked_retention: Duration::from_secs(30 * 24 * 3600),
            max_parked_events_per_webhook: 1_000_000,
            max_body_bytes: 16 * 1024 * 1024,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
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

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
fn hours(n: u64) -> Duration {
    Duration::from_secs(n * 3600)
}

/// The most requests one hook may have in flight: each is a lane task and
/// a connection.
pub const MAX_CONCURRENCY: usize = 1024;
/// Bounds of `delivery.max_body_bytes`: parked bodies are stored as text,
/// and PostgreSQL refuses any message over 1 GiB.
pub const MIN_BODY_BYTES: usize = 64 * 1024;
pub const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {text:?} ({e}); write it like \"5s\" or \"250ms\""
        ))
    })
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

    fn validate(&self) -> anyhow::Result<()> {
        // walhook's own suffix: the insert-only publication is
        // `<publication>_keyless`, and every name must fit PostgreSQL's
        // 63-byte identifiers with it.
        let keyless_suffix = "_keyless".len();
        for (key, value, max) in [
            ("postgres.schema", &self.postgres.schema, 63),
            ("postgres.slot", &self.postgres.slot, 63),
            (
                "postgres.publication",
                &self.postgres.publication,
                63 - keyless_suffix,
            ),
        ] {
            // Slot and publication names travel inside replication commands,
            // so they are held to PostgreSQL's unquoted-identifier shape.
            if value.is_empty()
                || value.len() > max
                || !value
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                || value.starts_with(|c: char| c.is_ascii_digit())
            {
                let why = if key == "postgres.publication" {
                    " (walhook adds \"_keyless\" for a second publication, and names are at most 63 bytes)"
                } else {
                    ""
                };
                bail!(
                    "key {key}: {value:?} must be 1-{max} characters of a-z, 0-9 and _, not \
                     starting with a digit{why}"
                );
            }
        }
        if self.postgres.application_name.len() > 63 {
            bail!("key postgres.application_name: at most 63 bytes");
        }
        let d = &self.delivery;
        let p = &self.postgres;
        for (key, value, min, max) in [
            (
                "postgres.statement_timeout",
                p.statement_timeout,
                ms(1),
                hours(24),
            ),
            ("postgres.lock_timeout", p.lock_timeout, ms(1), hours(24)),
            (
                "postgres.status_interval",
                p.status_interval,
                ms(100),
                secs(60),
            ),
            (
                "capture.auto_add_interval",
                self.capture.auto_add_interval,
                secs(1),
                hours(24),
            ),
            (
                "delivery.connect_timeout",
                d.connect_timeout,
                ms(100),
                secs(300),
            ),
            ("delivery.timeout", d.timeout, ms(100), secs(3600)),
            ("delivery.max_backoff", d.max_backoff, ms(100), hours(24)),
            (
                "delivery.shutdown_timeout",
                d.shutdown_timeout,
                ms(0),
                secs(600),
            ),
            (
                "delivery.backlog_max_age",
                d.backlog_max_age,
                secs(1),
                hours(24 * 7),
            ),
        ] {
            if value < min || value > max {
                bail!(
                    "key {key}: {} is out of range: it must be from {} to {}",
                    humantime::format_duration(value),
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                );
            }
        }
        if !d.parked_retention.is_zero() && d.parked_retention < secs(60) {
            bail!(
                "key delivery.parked_retention: {} is too short: \"0s\" keeps parked events until \
                 they are delivered, otherwise at least 1m",
                humantime::format_duration(d.parked_retention)
            );
        }
        for (key, value, min, max) in [
            (
                "delivery.max_consecutive_errors",
                u64::from(d.max_consecutive_errors),
                1,
                1_000_000_000,
            ),
            (
                "delivery.concurrency_per_webhook",
                d.concurrency_per_webhook as u64,
                1,
                MAX_CONCURRENCY as u64,
            ),
            (
                "delivery.backlog_limit",
                d.backlog_limit as u64,
                1,
                1_000_000_000,
            ),
            (
                "delivery.max_parked_events_per_webhook",
                d.max_parked_events_per_webhook,
                1,
                1_000_000_000,
            ),
            (
                "delivery.max_in_flight_bytes",
                d.max_in_flight_bytes,
                64 * 1024,
                u64::from(u32::MAX),
            ),
            (
                "delivery.max_body_bytes",
                d.max_body_bytes as u64,
                MIN_BODY_BYTES as u64,
                MAX_BODY_BYTES as u64,
            ),
        ] {
            if value < min || value > max {
                bail!("key {key}: {value} is out of range: it must be from {min} to {max}");
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            bail!(
                "key log.level: {:?} is not a valid level or filter ({e}); write e.g. \"info\" \
                 or \"warn,walhook=debug\"",
                self.log.level
            );
        }
        if let Some(addr) = self.metrics.listen {
            if !addr.ip().is_loopback() {
                bail!("key metrics.listen: {addr} is not a loopback address; metrics and health are served on loopback only (127.0.0.1 or [::1])");
            }
        }
        match (
            &self.delivery.client_cert_file,
            &self.delivery.client_key_file,
        ) {
            (Some(cert), None) => bail!(
                "key delivery.client_key_file is missing: delivery.client_cert_file ({}) needs \
                 its private key; set both or neither",
                cert.display()
            ),
            (None, Some(key)) => bail!(
                "key delivery.client_cert_file is missing: delivery.client_key_file ({}) is \
                 the key of a certificate; set both or neither",
                key.display()
            ),
            _ => {}
        }
        for (name, table) in &self.tables {
            if name.split_once('.').is_none() {
                bail!("[tables.{name:?}]: the key must be \"schema.table\"");
            }
            if let Some(entity) = &table.entity {
                if entity.is_empty() || entity.contains([',', ' ', '*']) {
                    bail!("[tables.{name:?}] entity {entity:?} must be non-empty without ',', ' ' or '*'");
                }
            }
        }
        for pattern in self.capture.include.iter().chain(&self.capture.exclude) {
            if pattern.split_once('.').is_none() {
                bail!("key capture.include/exclude: pattern {pattern:?} must be \"schema.table\" (use * as a wildcard)");
            }
        }
        Ok(())
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
        Connection::from_config(&self.postgres)
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

/// TLS mode to PostgreSQL, as libpq's sslmode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// Everything needed to open a session, resolved once.
#[derive(Clone)]
pub struct Connection {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
    pub application_name: String,
    pub statement_timeout: Duration,
    pub lock_timeout: Duration,
}

impl std::fmt::Debug for Connection {
    // The password never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}@{}:{}/{}",
            self.user, self.host, self.port, self.dbname
        )
    }
}

impl Connection {
    fn from_config(pg: &PostgresConfig) -> anyhow::Result<Connection> {
        // tokio-postgres knows only three sslmodes and no sslrootcert;
        // walhook reads those two itself.
        let stripped = without_params(&pg.url, &["sslmode", "sslrootcert"]);
        let parsed: tokio_postgres::Config = stripped.parse().with_context(|| {
            "key postgres.url is not a valid PostgreSQL URL or connection string"
        })?;
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let host = match parsed.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => env("PGHOST").unwrap_or_else(|| "localhost".into()),
        };
        let port = match parsed.get_ports().first() {
            Some(p) => *p,
            None => match env("PGPORT") {
                Some(p) => p
                    .parse()
                    .with_context(|| format!("PGPORT={p:?} is not a port number"))?,
                None => 5432,
            },
        };
        let user = parsed
            .get_user()
            .map(str::to_owned)
            .or_else(|| env("PGUSER"))
            .unwrap_or_else(|| "postgres".into());
        let dbname = parsed
            .get_dbname()
            .map(str::to_owned)
            .or_else(|| env("PGDATABASE"))
            .unwrap_or_else(|| user.clone());
        let password = match (&pg.password_file, parsed.get_password()) {
            (Some(file), _) => {
                let text = std::fs::read_to_string(file).with_context(|| {
                    format!("key postgres.password_file: cannot read {}", file.display())
                })?;
                Some(text.lines().next().unwrap_or("").to_owned())
            }
            (None, Some(p)) => Some(String::from_utf8_lossy(p).into_owned()),
            (None, None) => env("PGPASSWORD").or_else(|| pgpass(&host, port, &dbname, &user)),
        };
        let sslmode = match url_param(&pg.url, "sslmode")
            .or_else(|| env("PGSSLMODE"))
            .as_deref()
        {
            None | Some("prefer") | Some("allow") => SslMode::Prefer,
            Some("disable") => SslMode::Disable,
            Some("require") => SslMode::Require,
            Some("verify-ca") => SslMode::VerifyCa,
            Some("verify-full") => SslMode::VerifyFull,
            Some(other) => bail!("key postgres.url: unknown sslmode {other:?}"),
        };
        let sslrootcert = url_param(&pg.url, "sslrootcert")
            .or_else(|| env("PGSSLROOTCERT"))
            .map(PathBuf::from);
        Ok(Connection {
            host,
            port,
            user,
            password,
            dbname,
            sslmode,
            sslrootcert,
            application_name: pg.application_name.clone(),
            statement_timeout: pg.statement_timeout,
            lock_timeout: pg.lock_timeout,
        })
    }

    /// A tokio-postgres config for ordinary SQL sessions.
    pub fn sql_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name(&self.application_name)
            .connect_timeout(Duration::from_secs(10))
            .options(format!(
                "-c statement_timeout={} -c lock_timeout={} -c synchronous_commit=on",
                self.statement_timeout.as_millis(),
                self.lock_timeout.as_millis()
            ));
        if let Some(p) = &self.password {
            c.password(p);
        }
        c
    }
}

/// The password for a connection from `$PGPASSFILE` or `~/.pgpass`, as
/// libpq reads it: `host:port:database:user:password`, `*` matching
/// anything, `\:` and `\\` escaped. A missing file means no password.
fn pgpass(host: &str, port: u16, dbname: &str, user: &str) -> Option<String> {
    let path = std::env::var_os("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pgpass")))?;
    let text = std::fs::read_to_string(path).ok()?;
    pgpass_lookup(&text, host, port, dbname, user)
}

fn pgpass_lookup(text: &str, host: &str, port: u16, dbname: &str, user: &str) -> Option<String> {
    let port = port.to_string();
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .find_map(|line| {
            let mut fields = Vec::with_capacity(5);
            let mut field = String::new();
            let mut chars = line.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => field.extend(chars.next()),
                    ':' if fields.len() < 4 => fields.push(std::mem::take(&mut field)),
                    c => field.push(c),
                }
            }
            fields.push(field);
            let [h, p, d, u, password] = <[String; 5]>::try_from(fields).ok()?;
            let matches = |pattern: &str, value: &str| pattern == "*" || pattern == value;
            (matches(&h, host) && matches(&p, &port) && matches(&d, dbname) && matches(&u, user))
                .then_some(password)
        })
}

/// The parameters of a connection string: the `&`-separated query of a URL
/// (`postgres://host/db?sslmode=require&...`), or the space-separated
/// `name=value` pairs of a key/value string (`host=db sslmode=require`).
///
/// Not `url::Url`: it refuses the multi-host URLs libpq and tokio-postgres
/// accept (`postgres://h1:5432,h2:5433/db`), and its `query_pairs` reads a
/// `+` as a space, which libpq does not.
struct Params<'a> {
    /// A URL without its query; empty for a key/value string.
    base: &'a str,
    /// The parameters as written (percent-encoded in a URL).
    items: Vec<&'a str>,
    url: bool,
}

impl<'a> Params<'a> {
    fn of(conn: &'a str) -> Params<'a> {
        if !conn.contains("://") {
            let items = conn.split(' ').collect();
            return Params {
                base: "",
                items,
                url: false,
            };
        }
        let (base, items) = match conn.split_once('?') {
            Some((base, query)) => (base, query.split('&').collect()),
            None => (conn, Vec::new()),
        };
        Params {
            base,
            items,
            url: true,
        }
    }

    /// A parameter's name and value. In a URL both are percent-decoded as
    /// libpq and tokio-postgres decode them: `%XX` only, a `+` stays a `+`
    /// (unlike an HTML form's `application/x-www-form-urlencoded`).
    fn pair(&self, item: &'a str) -> Option<(Cow<'a, str>, Cow<'a, str>)> {
        let (name, value) = item.split_once('=')?;
        if !self.url {
            return Some((name.into(), value.into()));
        }
        let decode = |text: &'a str| percent_decode_str(text).decode_utf8_lossy();
        Some((decode(name), decode(value)))
    }
}

/// The connection string without the given parameters; the others stay as
/// written.
fn without_params(url: &str, keys: &[&str]) -> String {
    let params = Params::of(url);
    let kept: Vec<&str> = params
        .items
        .iter()
        .copied()
        .filter(|item| {
            !params
                .pair(item)
                .is_some_and(|(name, _)| keys.contains(&&*name))
        })
        .collect();
    match (params.url, kept.is_empty()) {
        (false, _) => kept.join(" "),
        (true, true) => params.base.to_owned(),
        (true, false) => format!("{}?{}", params.base, kept.join("&")),
    }
}

/// A parameter of a connection string, decoded (tokio-postgres accepts but
/// does not expose sslrootcert, and folds sslmode to 3 values).
fn url_param(url: &str, key: &str) -> Option<String> {
    let params = Params::of(url);
    params
        .items
        .iter()
        .filter_map(|item| params.pair(item))
        .find(|(name, _)| name == key)
        .map(|(_, value)| value.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.postgres.slot, "walhook");
        assert_eq!(c.delivery.max_consecutive_errors, 9);
        assert_eq!(c.events.context_identifier, "Default");
        assert!(!c.delivery.allow_http);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("[delivery]\nmax_consecutive_error = 3\n").unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("max_consecutive_error"), "{text}");
    }

    #[test]
    fn tables_map_entities() {
        let c = Config::parse(
            "[tables.\"crm.contacts\"]\nentity = \"contact\"\nexclude_columns = [\"password_hash\"]\n",
        )
        .unwrap();
        assert_eq!(c.entity_for("crm", "contacts"), "contact");
        assert_eq!(c.entity_for("crm", "other"), "other");
    }

    #[test]
    fn durations_parse_and_fail_clearly() {
        let c = Config::parse("[delivery]\ntimeout = \"250ms\"\n").unwrap();
        assert_eq!(c.delivery.timeout, Duration::from_millis(250));
        let err = Config::parse("[delivery]\ntimeout = \"soon\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("soon"));
    }

    /// The documented example behaves like an empty file, and its
    /// commented-out HTTPS keys parse once uncommented.
    #[test]
    fn the_example_config_is_the_defaults() {
        let example = include_str!("../systemd/walhook.toml");
        assert_eq!(Config::parse(example).unwrap(), Config::default());
        let uncommented = example
            .lines()
            .map(|line| {
                for key in ["ca_file", "client_cert_file", "client_key_file"] {
                    if let Some(rest) = line.strip_prefix(&format!("# {key} = ")) {
                        return format!("{key} = {rest}\n");
                    }
                }
                format!("{line}\n")
            })
            .collect::<String>();
        let d = Config::parse(&uncommented).unwrap().delivery;
        assert!(d.ca_file.is_some() && d.client_cert_file.is_some() && d.client_key_file.is_some());
    }

    #[test]
    fn client_certificate_needs_both_files() {
        let both = Config::parse(
            "[delivery]\nclient_cert_file = \"/etc/walhook/client.pem\"\n\
             client_key_file = \"/etc/walhook/client.key\"\nca_file = \"/etc/walhook/ca.pem\"\n",
        )
        .unwrap();
        assert_eq!(
            both.delivery.client_key_file.as_deref(),
            Some(Path::new("/etc/walhook/client.key"))
        );
        assert_eq!(
            both.delivery.ca_file.as_deref(),
            Some(Path::new("/etc/walhook/ca.pem"))
        );
        let err = Config::parse("[delivery]\nclient_cert_file = \"/etc/walhook/client.pem\"\n")
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("key delivery.client_key_file is missing"),
            "{err:#}"
        );
        let err = Config::parse("[delivery]\nclient_key_file = \"/etc/walhook/client.key\"\n")
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("key delivery.client_cert_file is missing"),
            "{err:#}"
        );
    }

    #[test]
    fn bad_slot_name_is_refused() {
        let err = Config::parse("[postgres]\nslot = \"My Slot\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("postgres.slot"));
    }

    #[test]
    fn globs() {
        assert!(glob_match("*.*", "public.contact"));
        assert!(glob_match("crm.*", "crm.contact"));
        assert!(!glob_match("crm.*", "public.contact"));
        assert!(glob_match("public.c*t", "public.contact"));
    }

    #[test]
    fn pgpass_lines() {
        let text =
            "# comment\nother:5432:*:bob:x\ndb.example:*:crm:alice:p\\:w\\\\d\n*:*:*:*:fallback\n";
        assert_eq!(
            pgpass_lookup(text, "db.example", 6543, "crm", "alice").as_deref(),
            Some("p:w\\d")
        );
        assert_eq!(
            pgpass_lookup(text, "h", 1, "d", "u").as_deref(),
            Some("fallback")
        );
        assert_eq!(
            pgpass_lookup("other:5432:*:bob:x\n", "h", 1, "d", "u"),
            None
        );
    }

    #[test]
    fn connection_from_url() {
        let c = Config::parse(
            "[postgres]\nurl = \"postgres://alice:pw@db.example:6543/crm?sslmode=verify-full\"\n",
        )
        .unwrap();
        let conn = c.connection().unwrap();
        assert_eq!(conn.host, "db.example");
        assert_eq!(conn.port, 6543);
        assert_eq!(conn.user, "alice");
        assert_eq!(conn.password.as_deref(), Some("pw"));
        assert_eq!(conn.dbname, "crm");
        assert_eq!(conn.sslmode, SslMode::VerifyFull);
        assert!(!format!("{conn:?}").contains("pw"));
    }

    fn connection(url: &str) -> Connection {
        Config::parse(&format!("[postgres]\nurl = {url:?}\n"))
            .unwrap()
            .connection()
            .unwrap()
    }

    /// A user name and password percent-encoded in the URL, with the
    /// characters that would otherwise end them.
    #[test]
    fn percent_encoded_credentials() {
        let conn = connection("postgres://al%40ice:p%40ss%3Aw%2Frd%3Fx+y%25@db.example/crm");
        assert_eq!(conn.user, "al@ice");
        assert_eq!(conn.password.as_deref(), Some("p@ss:w/rd?x+y%"));
        assert_eq!(conn.host, "db.example");
        assert_eq!(conn.dbname, "crm");
    }

    #[test]
    fn several_url_params() {
        let url = "postgres://alice@db.example/crm?application_name=x&sslmode=verify-ca\
                   &sslrootcert=%2Fetc%2Fwalhook%2Fca%20bundle+1.pem&connect_timeout=5";
        assert_eq!(url_param(url, "sslmode").as_deref(), Some("verify-ca"));
        assert_eq!(
            url_param(url, "sslrootcert").as_deref(),
            Some("/etc/walhook/ca bundle+1.pem")
        );
        assert_eq!(url_param(url, "application_name").as_deref(), Some("x"));
        assert_eq!(url_param(url, "host"), None);
        assert_eq!(
            without_params(url, &["sslmode", "sslrootcert"]),
            "postgres://alice@db.example/crm?application_name=x&connect_timeout=5"
        );
        let conn = connection(url);
        assert_eq!(conn.sslmode, SslMode::VerifyCa);
        assert_eq!(
            conn.sslrootcert.as_deref(),
            Some(Path::new("/etc/walhook/ca bundle+1.pem"))
        );

        // Names are percent-decoded too, as tokio-postgres decodes them.
        let url = "postgres://u@h/d?ssl%6Dode=disable";
        assert_eq!(url_param(url, "sslmode").as_deref(), Some("disable"));
        assert_eq!(without_params(url, &["sslmode"]), "postgres://u@h/d");

        let url = "postgres://u@h/d";
        assert_eq!(url_param(url, "sslmode"), None);
        assert_eq!(without_params(url, &["sslmode"]), url);
    }

    #[test]
    fn key_value_params() {
        let conn =
            "host=db.example user=u sslmode=verify-full sslrootcert=/etc/ca%20x.pem dbname=crm";
        assert_eq!(url_param(conn, "sslmode").as_deref(), Some("verify-full"));
        // No percent-decoding outside a URL, as in libpq.
        assert_eq!(
            url_param(conn, "sslrootcert").as_deref(),
            Some("/etc/ca%20x.pem")
        );
        assert_eq!(
            without_params(conn, &["sslmode", "sslrootcert"]),
            "host=db.example user=u dbname=crm"
        );
    }
}

#[cfg(test)]
mod validation_tests {
    use super::*;

    fn refused(toml: &str) -> String {
        match Config::parse(toml) {
            Ok(_) => panic!("accepted: {toml}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn every_value_that_would_break_later_is_refused_naming_its_key() {
        for (toml, key) in [
            ("[delivery]\nconcurrency_per_webhook = 10000000", "delivery.concurrency_per_webhook"),
            ("[delivery]\nconcurrency_per_webhook = 0", "delivery.concurrency_per_webhook"),
            ("[delivery]\ntimeout = \"0s\"", "delivery.timeout"),
            ("[delivery]\nconnect_timeout = \"0s\"", "delivery.connect_timeout"),
            ("[delivery]\nmax_in_flight_bytes = 5000000000", "delivery.max_in_flight_bytes"),
            ("[delivery]\nmax_body_bytes = 2000000000", "delivery.max_body_bytes"),
            ("[delivery]\nmax_consecutive_errors = 0", "delivery.max_consecutive_errors"),
            ("[delivery]\nparked_retention = \"1s\"", "delivery.parked_retention"),
            (
                "[delivery]\nmax_parked_events_per_webhook = 0",
                "delivery.max_parked_events_per_webhook",
            ),
            ("[postgres]\nstatus_interval = \"0s\"", "postgres.status_interval"),
            ("[log]\nlevel = \"(((\"", "log.level"),
            ("[log]\nlevel = \"info,walhook=loud\"", "log.level"),
            (
                "[postgres]\npublication = \"p23456789012345678901234567890123456789012345678901234567\"",
                "postgres.publication",
            ),
        ] {
            let error = refused(toml);
            assert!(error.contains(key), "{toml}: {error}");
        }
    }

    #[test]
    fn values_at_the_edges_of_their_ranges_are_accepted() {
        let config = Config::parse(
            "[postgres]\npublication = \"p234567890123456789012345678901234567890123456789012345\"\n\
             [delivery]\nconcurrency_per_webhook = 1024\nmax_in_flight_bytes = 4294967295\n\
             parked_retention = \"0s\"\ntimeout = \"100ms\"\n[log]\nlevel = \"warn,walhook=debug\"",
        )
        .unwrap();
        assert_eq!(config.keyless_publication().len(), 63);
    }
}
