//! The connection to PostgreSQL: the URL or key=value string, PG*
//! variables, `password_file` and `~/.pgpass`, resolved once.

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use percent_encoding::percent_decode_str;

use super::PostgresConfig;

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
    /// `postgres.receive_timeout`: silence after which a connection is
    /// presumed lost.
    pub receive_timeout: Duration,
    pub connect_timeout: Duration,
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

/// Which of the two connections of `[postgres]` to resolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `url` and `password_file`: the daemon and the DBA's commands.
    Run,
    /// `setup_url` and `setup_password_file` (or, when `setup_url` is not
    /// set, those of `Run`): `setup`, `teardown` and `check`'s setup checks.
    Setup,
}

impl Connection {
    pub(super) fn from_config(pg: &PostgresConfig, purpose: Purpose) -> anyhow::Result<Connection> {
        match (purpose, &pg.setup_url) {
            (Purpose::Setup, Some(url)) => Connection::from_parts(
                pg,
                url,
                pg.setup_password_file.as_ref(),
                "postgres.setup_url",
                "postgres.setup_password_file",
            ),
            _ => Connection::from_parts(
                pg,
                &pg.url,
                pg.password_file.as_ref(),
                "postgres.url",
                "postgres.password_file",
            ),
        }
    }

    /// A connection from one URL and its password file; `url_key` and
    /// `password_key` name them in errors.
    fn from_parts(
        pg: &PostgresConfig,
        url: &str,
        password_file: Option<&PathBuf>,
        url_key: &str,
        password_key: &str,
    ) -> anyhow::Result<Connection> {
        // tokio-postgres knows only three sslmodes and no sslrootcert;
        // walhook reads those two itself.
        let stripped = without_params(url, &["sslmode", "sslrootcert"]);
        let parsed: tokio_postgres::Config = stripped.parse().with_context(|| {
            format!("key {url_key} is not a valid PostgreSQL URL or connection string")
        })?;
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        // No URL at all (the default): everything from the PG* variables,
        // then walhook's own defaults, walhook@127.0.0.1:5432/postgres.
        // A URL that leaves parts out gets libpq's defaults for them.
        let unset = url.trim().is_empty();
        let (default_host, default_user) = if unset {
            ("127.0.0.1", Some("walhook"))
        } else {
            ("localhost", None)
        };
        let host = match parsed.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => env("PGHOST").unwrap_or_else(|| default_host.into()),
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
            .unwrap_or_else(|| default_user.unwrap_or("postgres").into());
        let dbname = parsed
            .get_dbname()
            .map(str::to_owned)
            .or_else(|| env("PGDATABASE"))
            .unwrap_or_else(|| {
                if unset {
                    "postgres".into()
                } else {
                    user.clone()
                }
            });
        let password = match (password_file, parsed.get_password()) {
            (Some(file), _) => {
                let text = std::fs::read_to_string(file).with_context(|| {
                    format!("key {password_key}: cannot read {}", file.display())
                })?;
                Some(text.lines().next().unwrap_or("").to_owned())
            }
            (None, Some(p)) => Some(String::from_utf8_lossy(p).into_owned()),
            (None, None) => env("PGPASSWORD").or_else(|| pgpass(&host, port, &dbname, &user)),
        };
        let sslmode = match url_param(url, "sslmode")
            .or_else(|| env("PGSSLMODE"))
            .as_deref()
        {
            None | Some("prefer") | Some("allow") => SslMode::Prefer,
            Some("disable") => SslMode::Disable,
            Some("require") => SslMode::Require,
            Some("verify-ca") => SslMode::VerifyCa,
            Some("verify-full") => SslMode::VerifyFull,
            Some(other) => bail!("key {url_key}: unknown sslmode {other:?}"),
        };
        let sslrootcert = url_param(url, "sslrootcert")
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
            receive_timeout: pg.receive_timeout,
            connect_timeout: pg.connect_timeout,
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
            .connect_timeout(self.connect_timeout)
            .options(format!(
                "-c statement_timeout={} -c lock_timeout={} -c synchronous_commit=on",
                self.statement_timeout.as_millis(),
                self.lock_timeout.as_millis()
            ));
        let tcp = self.tcp_settings();
        c.keepalives(true)
            .keepalives_idle(tcp.keepalive_idle)
            .keepalives_interval(tcp.keepalive_interval)
            .keepalives_retries(tcp.keepalive_retries)
            .tcp_user_timeout(tcp.user_timeout);
        if let Some(p) = &self.password {
            c.password(p);
        }
        c
    }

    /// How long a statement's answer may take before the session is
    /// presumed lost: what the server itself allows it (statement_timeout)
    /// plus the network's share (receive_timeout).
    pub fn answer_timeout(&self) -> Duration {
        self.statement_timeout + self.receive_timeout
    }
}

impl Connection {
    /// Keepalives and TCP_USER_TIMEOUT for every socket to the server,
    /// from `receive_timeout`: a peer that vanished while nothing was being
    /// sent (keepalives: idle a third of it, then three probes a sixth
    /// apart) or while something was (unacknowledged data) ends the
    /// connection within it, not after the kernel's 15 minutes of
    /// retransmissions, or never while idle.
    pub fn tcp_settings(&self) -> TcpSettings {
        let idle = (self.receive_timeout / 3).max(Duration::from_secs(1));
        TcpSettings {
            keepalive_idle: idle,
            keepalive_interval: (self.receive_timeout / 6).max(Duration::from_secs(1)),
            keepalive_retries: 3,
            user_timeout: self.receive_timeout,
        }
    }
}

/// Socket settings that notice a vanished server (see
/// [`Connection::tcp_settings`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSettings {
    pub keepalive_idle: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_retries: u32,
    pub user_timeout: Duration,
}

/// The password for a connection from `$PGPASSFILE` or `~/.pgpass`, as
/// libpq reads it: `host:port:database:user:password`, `*` matching
/// anything, `\:` and `\\` escaped. A missing file means no password.
pub(super) fn pgpass(host: &str, port: u16, dbname: &str, user: &str) -> Option<String> {
    let path = std::env::var_os("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pgpass")))?;
    let text = std::fs::read_to_string(path).ok()?;
    pgpass_lookup(&text, host, port, dbname, user)
}

pub(super) fn pgpass_lookup(
    text: &str,
    host: &str,
    port: u16,
    dbname: &str,
    user: &str,
) -> Option<String> {
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
pub(super) struct Params<'a> {
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
pub(super) fn without_params(url: &str, keys: &[&str]) -> String {
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
pub(super) fn url_param(url: &str, key: &str) -> Option<String> {
    let params = Params::of(url);
    params
        .items
        .iter()
        .filter_map(|item| params.pair(item))
        .find(|(name, _)| name == key)
        .map(|(_, value)| value.into_owned())
}
