//! Cluster mode: several `walhook run` instances with one config share the
//! delivery work over NATS JetStream (`[cluster]`, README "Scaling out").
//!
//! What lives here and nowhere else: the connection to NATS
//! ([`connect`]), the jobs' stream and its limits ([`stream`]), which
//! instance delivers which shard ([`leases`]), and what `walhook check`
//! learns from the servers ([`probe`]). Nothing in the
//! single-process path imports this module: without `[cluster]` walhook
//! never opens a NATS connection.

pub mod connect;
pub mod leases;
pub mod probe;
pub mod stream;

pub use self::connect::connect;

/// What `walhook run` says when the config has `[cluster]`: the pieces
/// above (config, check, the stream's limits, shard leases) are in place,
/// but the capture does not publish to the stream yet, so a run refuses
/// rather than pretend to share work it would not share.
pub const RUN_NOT_YET: &str = "[cluster] is set, but `walhook run` does not run in cluster mode \
     yet (`walhook check` already reports the NATS servers and the stream): remove the \
     [cluster] section to run as one process";
