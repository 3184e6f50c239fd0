//! The lab: what `walhook demo` and walhook's tests run against.
//!
//! [`cluster`] is a throwaway PostgreSQL built from the system's binaries,
//! [`receiver`] a loopback HTTP (or, with [`tls`], HTTPS) receiver that
//! records every request. Both exist to show and to test walhook against a
//! real server and real HTTP; the daemon itself never uses them.

pub mod cluster;
pub mod receiver;
pub mod tls;
