//! walhook: committed PostgreSQL row changes become signed webhook POSTs.
//!
//! The modules follow the data flow, one stage each, and imports only point
//! down:
//!
//! ```text
//! source -> pgoutput -> events -> registry -> delivery -> checkpoint
//!                                                  \
//!                                                   store (every SQL statement)
//! ```
//!
//! ARCHITECTURE.md, at the top of the repository, walks one change through
//! the stages, draws a hook's states and says where each kind of change
//! goes. The leaves any stage may use come first below, then the stages,
//! then what runs them.

pub mod config;
pub mod errors;
pub mod metrics;
pub mod postgres;
pub mod telemetry;
pub mod text;

pub mod backfill;
pub mod checkpoint;
pub mod cluster;
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
