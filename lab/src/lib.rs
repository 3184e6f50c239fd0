//! The lab: what `walhook demo` and walhook's tests run against.
//!
//! [`cluster`] is a throwaway PostgreSQL built from the system's binaries,
//! [`receiver`] a loopback HTTP (or, with [`tls`], HTTPS) receiver that
//! records every request, and [`h2_target`] an HTTP/2 target that refuses
//! streams as busy servers do. They exist to show and to test walhook
//! against a real server and real HTTP; the daemon itself never uses them.
//! [`nats`] starts throwaway NATS servers (one, or a cluster of three)
//! for cluster mode. [`otlp`] is an OpenTelemetry collector that keeps
//! the spans it is sent. With the `ca` feature, [`ca`] makes the test
//! certificates.

#[cfg(feature = "ca")]
pub mod ca;
pub mod cluster;
pub mod h2_target;
pub mod nats;
pub mod otlp;
pub mod partition;
pub mod receiver;
pub mod tls;
