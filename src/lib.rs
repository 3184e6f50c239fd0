//! walhook: committed PostgreSQL row changes become signed webhook POSTs.
//!
//! The modules follow the data flow, one stage each:
//!
//! ```text
//! source -> pgoutput -> events -> registry -> delivery -> checkpoint
//!                                                  \
//!                                                   store (every SQL statement)
//! ```
//!
//! - [`source`] reads the logical replication stream from the slot;
//! - [`pgoutput`] decodes its messages into exact types;
//! - [`events`] turns row changes into [`ChangeEvent`](events::ChangeEvent)s;
//! - [`registry`] holds the `webhook` rows and matches events to them;
//! - [`delivery`] signs and POSTs, retries, parks and replays;
//! - [`checkpoint`] decides which LSN may be confirmed to the server;
//! - [`backfill`] is a second source of events beside the stream: existing
//!   rows read in chunks between watermarks in the WAL;
//! - [`store`] owns every SQL statement: slot, snapshots, parked events,
//!   statistics, webhook rows, catalog and publications. Delivery reaches
//!   it only through [`delivery::DeliveryStore`].
//!
//! Around them: [`config`] (the TOML file), [`text`], [`errors`] (what a
//! failure means: reconnect or stop) and [`postgres`] (SQL sessions and
//! their TLS) are leaves every stage may use; [`metrics`] exports counters
//! and health. On top: [`setup`] (setup's plan and `check`), [`daemon`]
//! (`walhook run`: sessions, the pipeline, reload, leadership), [`admin`]
//! (the DBA's commands), [`cli`], [`package_files`] (its man pages and
//! completions) and [`demo`]. Imports only ever point
//! down this list: no stage imports one that uses it. The throwaway
//! PostgreSQL and the loopback HTTP receiver that `demo` and the tests use
//! live in the `walhook-lab` crate (`lab/`), outside the daemon's library.

pub mod config;
pub mod errors;
pub mod metrics;
pub mod postgres;
pub mod text;

pub mod backfill;
pub mod checkpoint;
pub mod delivery;
pub mod events;
pub mod pgoutput;
pub mod registry;
pub mod source;
pub mod store;

pub mod admin;
pub mod cli;
pub mod daemon;
pub mod demo;
pub mod package_files;
pub mod setup;
