//! walhook: committed PostgreSQL row changes become signed webhook POSTs.
//!
//! The modules follow the data flow, one stage each:
//!
//! ```text
//! source -> pgoutput -> events -> registry -> delivery -> checkpoint -> store
//! ```
//!
//! `source` reads the logical replication stream, `pgoutput` decodes its
//! messages, `events` turns row changes into `ChangeEvent`s, `registry` holds
//! the `webhook` rows and matches events to them, `delivery` signs and POSTs,
//! `checkpoint` decides which LSN may be confirmed to the server, and `store`
//! writes usage statistics and parked events. `config`, `cli`, `setup`,
//! `daemon` and `demo` wire it together. The throwaway PostgreSQL and the
//! loopback HTTP receiver that `demo` and the tests use live in the
//! `walhook-lab` crate (`lab/`), outside the daemon's library.

pub mod checkpoint;
pub mod delivery;
pub mod events;
pub mod pgoutput;
pub mod registry;
pub mod source;
pub mod store;

pub mod admin;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod metrics;
pub mod postgres;
pub mod setup;
