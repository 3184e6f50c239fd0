//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::registry::WebhookState;

/// Exit codes, as documented in the README.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// A runtime failure: database, stream or delivery setup; a refused or
    /// failed `webhook test`; a webhook_id that does not exist; a teardown
    /// that was refused (slot in use) or not confirmed.
    pub const FAILURE: u8 = 1;
    /// The config file or the command line is invalid (including a
    /// `webhook add` that validation refuses: nothing is written).
    pub const CONFIG: u8 = 2;
    /// `check` found a problem.
    pub const CHECK_FAILED: u8 = 3;
    /// `status`: the replication slot does not exist or the server
    /// invalidated it (wal_status `lost`): changes are not being captured,
    /// or some were lost.
    pub const SLOT_LOST: u8 = 4;
}

/// The config file used when -c is not given (if it exists).
pub const DEFAULT_CONFIG: &str = "/etc/walhook/walhook.toml";

#[derive(Debug, Parser)]
#[command(
    name = "walhook",
    version,
    about = "PostgreSQL row changes as signed webhook POSTs",
    // `--help` and the DESCRIPTION of walhook(1).
    long_about = "PostgreSQL row changes as signed webhook POSTs.\n\n\
        walhook reads a database's logical replication stream (pgoutput), \
        turns every committed row change into an event, matches it against \
        the rows of its webhook table and delivers a signed HTTP POST to each \
        matching target, with retries, parking and statistics. `setup` \
        creates its schema, publications and replication slot; `run` is the \
        daemon, normally started by systemd as walhook.service; the other \
        commands are for the DBA. A committed change is never lost: the slot's \
        position is confirmed only once every event before it was settled."
)]
pub struct Cli {
    /// The TOML config file [default: /etc/walhook/walhook.toml if it exists]
    #[arg(short, long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: stream changes and deliver them.
    Run,
    /// Create or update walhook's schema, publication and slot (idempotent).
    Setup {
        /// Print the SQL instead of running it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Pre-flight checks; exits non-zero when one fails.
    Check,
    /// Slot lag, attachment and health, and per-hook statistics and parked
    /// events. Exits 4 when the slot is missing or lost.
    Status {
        /// Print one JSON document instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// List, add, change, test and remove rows of the webhook table.
    Webhook {
        #[command(subcommand)]
        command: WebhookCommand,
    },
    /// Redeliver parked events now, in order.
    Replay {
        /// Only the events parked for this webhook_id.
        #[arg(long, value_name = "ID")]
        webhook: Option<i32>,
    },
    /// Parked events one by one: list, show, redeliver, discard.
    #[command(after_help = "Examples:\n  \
        walhook parked list\n  \
        walhook parked list --webhook 7 --json\n  \
        walhook parked show 5f0c4a8e-8d4e-5b7e-9a51-3c1f2b0d9e11\n  \
        walhook parked redeliver 5f0c4a8e-8d4e-5b7e-9a51-3c1f2b0d9e11\n  \
        walhook parked discard 5f0c4a8e-8d4e-5b7e-9a51-3c1f2b0d9e11\n  \
        walhook parked discard --webhook 7 --before 2024-06-01T00:00:00Z\n  \
        walhook parked discard --webhook 7 --before 3days")]
    Parked {
        #[command(subcommand)]
        command: ParkedCommand,
    },
    /// Drop the replication slot and publications (and with --drop-schema
    /// walhook's schema) so no WAL is held after uninstalling.
    Teardown {
        /// Also drop walhook's schema with everything in it (CASCADE): the
        /// webhook rows, statistics and parked events.
        #[arg(long)]
        drop_schema: bool,
        /// Do not ask for confirmation (required when stdin is not a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Send the rows that already exist in tables to named hooks, as
    /// `<entity>.created` events with a `Backfill` field, consistent with
    /// the live stream; the running daemon does the work. `backfill list`
    /// and `backfill cancel ID` manage them.
    Backfill(BackfillArgs),
    /// The configuration: `show` prints the effective one, `check FILE`
    /// validates a file without connecting to PostgreSQL.
    #[command(after_help = "Examples:\n  \
        walhook -c /etc/walhook/crm.toml config show\n  \
        walhook config check crm.toml")]
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// A self-contained demonstration with a throwaway PostgreSQL.
    Demo,
    /// Write the man pages and shell completions under DIR (the Debian
    /// package's build step, pkg/build-deb.sh).
    #[command(hide = true)]
    PackageFiles {
        /// Created if missing; files already there are replaced.
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Every row of the webhook table (secrets and header values are never
    /// printed).
    List {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add a hook after validating it as the daemon would; prints the new
    /// webhook_id on stdout.
    Add(AddArgs),
    /// Change a hook's state. Going back to active (1) from TooManyErrors
    /// delivers its parked events first, in order.
    SetState {
        /// The webhook_id.
        id: i32,
        /// 0-3, or unknown, active, stopped, toomanyerrors (any case).
        #[arg(value_parser = parse_state)]
        state: WebhookState,
    },
    /// Send the `test` event to a hook now, from this process; exits 0 on
    /// a 2xx answer, 1 otherwise.
    Test {
        /// The webhook_id.
        id: i32,
    },
    /// Give a hook a new signing secret; the old one keeps signing
    /// (webhook-signature carries both) until the grace period ends.
    #[command(after_help = "Examples:\n  \
        walhook webhook rotate-secret 7                      # a generated whsec_ secret, printed once\n  \
        walhook webhook rotate-secret 7 --secret-file /etc/walhook/hook7.secret --grace 2h")]
    RotateSecret {
        /// The webhook_id.
        id: i32,
        /// A file whose first line is the new secret (- reads standard
        /// input); without it a whsec_ secret of 32 random bytes is
        /// generated and printed.
        #[arg(long, value_name = "FILE")]
        secret_file: Option<PathBuf>,
        /// How long the old secret keeps signing: 0 to 30 days, e.g. 90m,
        /// 2h, 7d.
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_grace)]
        grace: std::time::Duration,
    },
    /// Limit a hook to at most N requests a second or a minute, or lift
    /// the limit; the running walhook applies it at once.
    #[command(after_help = "Examples:\n  \
        walhook webhook throttle 7 --rate 10/s\n  \
        walhook webhook throttle 7 --rate 300/min\n  \
        walhook webhook throttle 7 --rate off")]
    Throttle {
        /// The webhook_id.
        id: i32,
        /// N/s, N/min (1/min to 100000/s), or off.
        #[arg(long, value_parser = parse_rate)]
        rate: Rate,
    },
    /// Stop sending to a hook but keep its events: they are parked until
    /// `resume`. (State 2, Stopped, drops them instead.)
    #[command(after_help = "Example:\n  walhook webhook pause 7")]
    Pause {
        /// The webhook_id.
        id: i32,
    },
    /// Send to a paused hook again: its parked events first, in commit
    /// order, then the new ones.
    #[command(after_help = "Example:\n  walhook webhook resume 7")]
    Resume {
        /// The webhook_id.
        id: i32,
    },
    /// Send a hook only the rows a SQL condition over new.<column> and
    /// old.<column> holds true for (README: the condition subset), or
    /// clear it; the running walhook applies it from this commit on.
    #[command(after_help = "Examples:\n  \
        walhook webhook condition 7 --where \"new.status = 'won' and old.status is distinct from 'won'\"\n  \
        walhook webhook condition 7 --where \"new.amount >= 1000 and new.country in ('NO', 'SE')\"\n  \
        walhook webhook condition 7 --clear")]
    Condition {
        /// The webhook_id.
        id: i32,
        /// The condition, as in a WHERE clause.
        #[arg(
            long = "where",
            value_name = "SQL",
            conflicts_with = "clear",
            required_unless_present = "clear"
        )]
        condition: Option<String>,
        /// Remove the condition: the hook gets every event its `events` select.
        #[arg(long)]
        clear: bool,
    },
    /// Limit the columns a hook's events carry (FieldValues, Changes,
    /// MissingColumns); the key's columns always stay.
    #[command(after_help = "Examples:\n  \
        walhook webhook columns 7 --only name,email\n  \
        walhook webhook columns 7 --except ssn\n  \
        walhook webhook columns 7 --clear")]
    Columns {
        /// The webhook_id.
        id: i32,
        /// Only these columns (comma-separated).
        #[arg(long, value_name = "A,B", group = "columns_choice")]
        only: Option<String>,
        /// Every column but these (comma-separated).
        #[arg(long, value_name = "A,B", group = "columns_choice")]
        except: Option<String>,
        /// Every column again.
        #[arg(long, group = "columns_choice")]
        clear: bool,
    },
    /// Delete a hook's row. Its statistics (webhook_usage) and parked events
    /// (delivery) are kept unless --purge is given.
    Remove {
        /// The webhook_id.
        id: i32,
        /// Also delete the hook's webhook_usage row and its parked events.
        #[arg(long)]
        purge: bool,
    },
    /// A hook's delivery attempts from the failure log (delivery_attempt;
    /// failed ones unless delivery.attempt_log = "all"), oldest first.
    #[command(after_help = "Examples:\n  \
        walhook webhook attempts 7\n  \
        walhook webhook attempts 7 --since 2h\n  \
        walhook webhook attempts 7 --since 2026-01-31T03:00:00Z --json")]
    Attempts {
        /// The webhook_id.
        id: i32,
        /// Only attempts from this time on: an RFC 3339 time, or how long
        /// ago (90m, 2h, 7d).
        #[arg(long, value_name = "T", value_parser = parse_since)]
        since: Option<std::time::SystemTime>,
        /// At most this many, the newest.
        #[arg(long, value_name = "N", default_value_t = 100,
              value_parser = clap::value_parser!(i64).range(1..=100_000))]
        limit: i64,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `--since`: an RFC 3339 time, or a duration back from now.
pub fn parse_since(text: &str) -> Result<std::time::SystemTime, String> {
    if let Ok(ago) = humantime::parse_duration(text) {
        return std::time::SystemTime::now()
            .checked_sub(ago)
            .ok_or_else(|| format!("{text} ago is before any time walhook can name"));
    }
    humantime::parse_rfc3339_weak(text).map_err(|_| {
        format!(
            "{text:?} is neither a time (2026-01-31T03:00:00Z) nor a duration ago (90m, 2h, 7d)"
        )
    })
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration as TOML: the file's values and
    /// every default, each with where it came from (`# file`, `# default`),
    /// how the connections resolve with the PG* variables, and passwords
    /// as `***`.
    Show,
    /// Validate a config file (default: -c, else /etc/walhook/walhook.toml)
    /// without touching the database: every key and its range, the
    /// connection strings, who may read the password and TLS key files.
    /// Exits 2 when the file is invalid, 3 when a check fails.
    Check {
        /// The file to check.
        file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ParkedCommand {
    /// Parked events per hook: how many, the oldest, and why they were
    /// parked.
    List {
        /// Only this webhook_id.
        #[arg(long, value_name = "ID")]
        webhook: Option<i32>,
        /// With --webhook: the events themselves, oldest first (in commit
        /// order), each with its EventId, reason and row key.
        #[arg(long, requires = "webhook")]
        events: bool,
        /// With --events: at most this many.
        #[arg(long, value_name = "N", default_value_t = 100, requires = "events")]
        limit: i64,
        /// With --events: after skipping this many (the next page).
        #[arg(long, value_name = "N", default_value_t = 0, requires = "events")]
        skip: i64,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One parked event: its body, attempts and last error.
    Show {
        /// The EventId (as in the body and the webhook-id header).
        event_id: uuid::Uuid,
        /// Print one JSON document instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Send one parked event now, from this process, with the hook's
    /// current URL, secret and headers; removed when the target answers
    /// 2xx. Refused while an earlier event of the same row is parked.
    /// Exits 0 when delivered, 1 otherwise.
    Redeliver {
        /// The EventId.
        event_id: uuid::Uuid,
    },
    /// Delete parked events undelivered: one, or a hook's (optionally
    /// only those parked before a time). Counted and logged.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["event_id", "webhook"])))]
    Discard {
        /// The EventId of the one event to discard.
        event_id: Option<uuid::Uuid>,
        /// Discard this webhook_id's parked events.
        #[arg(long, value_name = "ID")]
        webhook: Option<i32>,
        /// With --webhook: only events parked before TIME, an RFC 3339 time
        /// (2024-06-01T12:00:00Z) or an age (2h, 3days).
        #[arg(long, value_name = "TIME", requires = "webhook")]
        before: Option<String>,
    },
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BackfillArgs {
    #[command(subcommand)]
    pub command: Option<BackfillCommand>,
    /// A webhook_id to send the rows to; may be repeated.
    #[arg(
        long = "webhook",
        value_name = "ID",
        required_unless_present = "all_hooks"
    )]
    pub webhooks: Vec<i32>,
    /// Every hook of the webhook table instead of --webhook (each gets
    /// every row, whatever its events).
    #[arg(long, conflicts_with = "webhooks")]
    pub all_hooks: bool,
    /// Only the rows this SQL condition holds for, e.g. "created > '2024-01-01'".
    #[arg(long = "where", value_name = "SQL")]
    pub where_sql: Option<String>,
    /// Register and return at once (without it, a terminal shows progress
    /// until every backfill ended).
    #[arg(long)]
    pub detach: bool,
    /// Tables as SQL names them (schema.table); partitioned tables by their root.
    #[arg(value_name = "TABLE", required = true)]
    pub tables: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum BackfillCommand {
    /// Every backfill and its progress.
    List {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop a backfill: no further chunk is read; rows already sent stay sent.
    Cancel {
        /// The backfill_id.
        id: i64,
    },
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// The hook's name (sent as WebhookName).
    #[arg(long)]
    pub name: String,
    /// Comma-separated events, e.g. "contact.*, person.created, *.deleted";
    /// "contact.changed(name,email)" only when one of those columns changed.
    #[arg(long)]
    pub events: String,
    /// The target URL (https:// unless delivery.allow_http is set).
    #[arg(long)]
    pub url: String,
    /// The signing secret. It shows in the process list and shell history:
    /// prefer --secret-file (- reads it from standard input).
    #[arg(long, conflicts_with = "secret_file")]
    pub secret: Option<String>,
    /// A file whose first line is the signing secret; - reads standard
    /// input.
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// An extra request header NAME=VALUE; may be repeated.
    #[arg(long = "header", value_name = "NAME=VALUE")]
    pub headers: Vec<String>,
    /// A JSON object, sent as Properties in every body.
    #[arg(long, value_name = "JSON")]
    pub properties: Option<String>,
    /// The initial state: 0-3 or a name
    #[arg(long, value_parser = parse_state, default_value = "active")]
    pub state: WebhookState,
}

/// `walhook webhook throttle --rate`: requests a minute, or no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    PerMinute(u32),
    Off,
}

/// The most `--rate` allows, a minute: 100,000 a second.
pub const MAX_RATE_PER_MINUTE: u32 = 6_000_000;

/// `N/s`, `N/min` or `off`.
pub fn parse_rate(text: &str) -> Result<Rate, String> {
    let folded = text.trim().to_ascii_lowercase();
    if folded == "off" || folded == "none" {
        return Ok(Rate::Off);
    }
    let bad = || format!("rate {text:?} is not N/s, N/min or off (e.g. 10/s, 300/min)");
    let (n, per) = folded.split_once('/').ok_or_else(bad)?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    let factor = match per.trim() {
        "s" | "sec" | "second" => 60,
        "m" | "min" | "minute" => 1,
        _ => return Err(bad()),
    };
    match n.checked_mul(factor) {
        Some(per_minute) if (1..=MAX_RATE_PER_MINUTE).contains(&per_minute) => {
            Ok(Rate::PerMinute(per_minute))
        }
        _ => Err(format!(
            "rate {text:?} is out of range: 1/min to 100000/s, or off"
        )),
    }
}

/// The longest grace period of a secret rotation.
pub const MAX_GRACE: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// `--grace`: a duration such as `90m`, `2h`, `7d`, or `0`.
pub fn parse_grace(text: &str) -> Result<std::time::Duration, String> {
    let grace = if text.trim() == "0" {
        std::time::Duration::ZERO
    } else {
        humantime::parse_duration(text.trim())
            .map_err(|e| format!("grace {text:?} is not a duration such as 90m, 2h or 7d: {e}"))?
    };
    if grace > MAX_GRACE {
        return Err(format!("grace {text:?} is longer than 30 days"));
    }
    Ok(grace)
}

/// A webhook state given as 0-3 or as its name, in any case (`-` and `_`
/// ignored, so `too-many-errors` works too).
pub fn parse_state(text: &str) -> Result<WebhookState, String> {
    let folded: String = text
        .chars()
        .filter(|c| !matches!(c, '-' | '_' | ' '))
        .collect::<String>()
        .to_ascii_lowercase();
    let state = match folded.as_str() {
        "0" | "unknown" => WebhookState::Unknown,
        "1" | "active" => WebhookState::Active,
        "2" | "stopped" => WebhookState::Stopped,
        "3" | "toomanyerrors" => WebhookState::TooManyErrors,
        _ => {
            return Err(format!(
                "state {text:?} is not 0-3 or one of unknown, active, stopped, toomanyerrors"
            ))
        }
    };
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_grace_periods_parse_within_their_bounds() {
        assert_eq!(parse_rate("10/s"), Ok(Rate::PerMinute(600)));
        assert_eq!(parse_rate(" 300 / Min "), Ok(Rate::PerMinute(300)));
        assert_eq!(parse_rate("OFF"), Ok(Rate::Off));
        assert_eq!(
            parse_rate("100000/s"),
            Ok(Rate::PerMinute(MAX_RATE_PER_MINUTE))
        );
        for bad in [
            "0/s",
            "100001/s",
            "4294967295/s",
            "-1/s",
            "1.5/s",
            "10",
            "10/h",
            "",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_grace("0"), Ok(std::time::Duration::ZERO));
        assert_eq!(parse_grace("2h"), Ok(std::time::Duration::from_secs(7200)));
        assert_eq!(parse_grace("30d"), Ok(MAX_GRACE));
        for bad in ["31d", "soon", "-1h", ""] {
            assert!(parse_grace(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_default_is_shown_once_in_help() {
        use clap::CommandFactory;
        let mut cli = Cli::command();
        let help = cli
            .find_subcommand_mut("webhook")
            .and_then(|w| w.find_subcommand_mut("add"))
            .expect("webhook add")
            .render_help()
            .to_string();
        assert_eq!(help.matches("[default: active]").count(), 1, "{help}");
    }

    #[test]
    fn backfill_takes_tables_or_a_subcommand() {
        let cli = Cli::try_parse_from([
            "walhook",
            "backfill",
            "--webhook",
            "3",
            "--webhook",
            "4",
            "--where",
            "id > 5",
            "crm.contact",
            "crm.person",
        ])
        .unwrap();
        match cli.command {
            Command::Backfill(b) => {
                assert_eq!(b.webhooks, [3, 4]);
                assert_eq!(b.tables, ["crm.contact", "crm.person"]);
                assert_eq!(b.where_sql.as_deref(), Some("id > 5"));
                assert!(b.command.is_none());
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["walhook", "backfill", "cancel", "7"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Backfill(BackfillArgs {
                command: Some(BackfillCommand::Cancel { id: 7 }),
                ..
            })
        ));
        // Hooks must be named, or all of them asked for explicitly.
        assert!(Cli::try_parse_from(["walhook", "backfill", "crm.contact"]).is_err());
        assert!(Cli::try_parse_from(["walhook", "backfill", "--all-hooks", "crm.contact"]).is_ok());
        assert!(Cli::try_parse_from(["walhook", "backfill", "--webhook", "1"]).is_err());
    }

    #[test]
    fn states_parse_by_number_and_name() {
        assert_eq!(parse_state("2"), Ok(WebhookState::Stopped));
        assert_eq!(parse_state("Stopped"), Ok(WebhookState::Stopped));
        assert_eq!(
            parse_state("TooManyErrors"),
            Ok(WebhookState::TooManyErrors)
        );
        assert_eq!(
            parse_state("too-many-errors"),
            Ok(WebhookState::TooManyErrors)
        );
        assert_eq!(parse_state("ACTIVE"), Ok(WebhookState::Active));
        assert_eq!(parse_state("0"), Ok(WebhookState::Unknown));
        assert!(parse_state("4").unwrap_err().contains("\"4\""));
        assert!(parse_state("paused").is_err());
    }

    #[test]
    fn command_line_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "walhook",
            "webhook",
            "add",
            "--name",
            "n",
            "--events",
            "*",
            "--url",
            "https://x.example/",
            "--header",
            "A=b",
            "--header",
            "C=d",
            "--state",
            "stopped",
        ])
        .unwrap();
        match cli.command {
            Command::Webhook {
                command: WebhookCommand::Add(a),
            } => {
                assert_eq!(a.headers, ["A=b", "C=d"]);
                assert_eq!(a.state, WebhookState::Stopped);
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from([
            "walhook",
            "webhook",
            "add",
            "--name",
            "n",
            "--events",
            "*",
            "--url",
            "u",
            "--secret",
            "s",
            "--secret-file",
            "f",
        ])
        .is_err());
    }
}
