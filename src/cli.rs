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
    /// Delete a hook's row. Its statistics (webhook_usage) and parked events
    /// (delivery) are kept unless --purge is given.
    Remove {
        /// The webhook_id.
        id: i32,
        /// Also delete the hook's webhook_usage row and its parked events.
        #[arg(long)]
        purge: bool,
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
    /// Comma-separated events, e.g. "contact.*, person.created, *.deleted".
    #[arg(long)]
    pub events: String,
    /// The target URL (https:// unless delivery.allow_http is set).
    #[arg(long)]
    pub url: String,
    /// The signing secret. It shows in the process list and shell history:
    /// prefer --secret-file.
    #[arg(long, conflicts_with = "secret_file")]
    pub secret: Option<String>,
    /// A file whose first line is the signing secret.
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
