//! Cluster mode: several `walhook run` instances with one config share the
//! delivery work over NATS JetStream (`[cluster]`, README "Scaling out").
//!
//! The capture's leader publishes each matched job to its hook's shard
//! ([`publish`]), and its checkpoint moves as JetStream stores them; every
//! instance ([`node`]) holds leases on some shards ([`leases`]), consumes
//! their jobs ([`consume`]) and delivers them with the single-process
//! delivery ([`deliver`]). Also here: the connection to NATS
//! ([`connect`]), the jobs' stream, its consumers and limits ([`stream`]),
//! a job's form on the bus ([`message`]), and what `walhook check` learns
//! from the servers ([`probe`]). Nothing in the single-process path
//! imports this module: without `[cluster]` walhook never opens a NATS
//! connection.

pub mod connect;
pub mod consume;
pub mod deliver;
pub mod leases;
pub mod message;
pub mod node;
pub mod probe;
pub mod publish;
pub mod stream;

pub use self::connect::connect;
