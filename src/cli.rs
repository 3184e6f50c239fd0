//! The command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Exit codes, as documented in the README.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// A runtime failure: database, stream or delivery setup.
    pub const FAILURE: u8 = 1;
    /// The config file or the command line is invalid.
    pub const CONFIG: u8 = 2;
    /// `check` found a problem.
    pub const CHECK_FAILED: u8 = 3;
}

/// The config file used when -c is not given (if it exists).
pub const DEFAULT_CONFIG: &str = "/etc/walhook/walhook.toml";

#[derive(Debug, Parser)]
#[command(
    name = "walhook",
    version,
    about = "PostgreSQL row changes as signed webhook POSTs"
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
    /// A self-contained demonstration with a throwaway PostgreSQL.
    Demo,
}
