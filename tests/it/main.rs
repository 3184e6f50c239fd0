//! walhook's integration tests, as one test binary: each module below was
//! its own binary linking the whole crate; one link is enough. Fixtures stay
//! in tests/fixtures. Run one module with e.g.
//! `cargo test --release --test it delivery::`.

mod common;

mod admin;
mod attempt_log;
mod backfill;
mod cluster;
mod condition_oracle;
mod conditions;
mod config_commands;
mod crash;
mod delivery;
mod errors;
mod failover;
mod filters;
mod hostile;
mod http2;
mod https;
mod instances;
mod large;
mod operations;
mod parked_bounds;
mod parked_commands;
mod parked_storage;
mod pgoutput_fixtures;
mod pipeline;
mod publication;
mod registry_changes;
mod roles;
mod secrets;
mod settings;
mod shapes;
mod silent_network;
mod slot_bounds;
mod target_guard;
mod telemetry;
mod tls;
mod types;
