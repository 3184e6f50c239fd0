//! The test harness: a throwaway PostgreSQL, walhook's real binary, and a
//! real loopback receiver. Nothing is mocked. One file per job:
//!
//! - [`harness`]: the cluster, the config and `walhook setup`;
//! - [`daemon`]: running walhook, the daemon and its commands;
//! - [`waits`]: waiting on the slot, the WAL and the daemon's log;
//! - [`hooks`]: registering hooks and reading their statistics;
//! - [`signatures`]: the receivers' signature checks, from the specs;
//! - [`json`]: JSON compared as PostgreSQL's values are;
//! - [`host`]: free ports, memory measurements and the metrics page.
//!
//! The test CA is the lab's ([`walhook_lab::ca`]).

mod daemon;
mod harness;
mod hooks;
mod host;
mod json;
mod signatures;
mod waits;

pub use self::daemon::{stdout, stop_child, text, walhook_async, walhook_with};
pub use self::harness::Harness;
pub use self::host::{free_port, metrics_text, peak_rss_kib};
pub use self::json::{decimal, same_json};
pub use self::signatures::{expected_superoffice_signature, verify_standard_webhooks};
pub use self::waits::parse_lsn;
pub use walhook_lab::ca::Ca;

/// walhook's binary, as cargo built it for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_walhook");
