//! The wire: walhook's HTTP client (hyper over rustls), the connections a
//! hook's lanes drive themselves, the first contact with an origin, the
//! resolver and the policy that keep targets public, and TLS.

pub mod client;
mod connections;
mod origins;
mod resolver;
pub mod target_policy;
pub mod timings;
pub mod tls;

pub use self::client::{http_client, read_body_prefix, HttpClient, ReadError, SendError};
pub use self::connections::{Sender, TaskConnections};
pub use self::target_policy::{check_target, is_public, TargetRefused};
