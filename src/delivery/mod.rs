//! Delivery: signed POSTs to the hooks, with retries, parking and order.
//!
//! Each hook has its own queue (a task): events of one row keep commit
//! order while other rows go concurrently, as many at once as the hook's
//! concurrency limit allows (adapted to what its target sustains, or
//! fixed), and a slow hook only ever waits on itself. Request bodies in
//! flight are bounded by a byte budget: when it is spent the reader waits,
//! which stops reading WAL (back-pressure) instead of growing.
//!
//! # A hook's delivery states
//!
//! Apart from its `webhook.state` (the DBA's word), each hook the
//! dispatcher has seen is in one of these states, held by its
//! [`HookControl`]:
//!
//! | state     | new events go to        | left by                                        |
//! |-----------|-------------------------|------------------------------------------------|
//! | live      | its queue               | too many errors (tripped), a backlog past its bound (parking), 410 (gone) |
//! | parking   | `delivery` (parked)     | the replayer catching up (live)                |
//! | replaying | `delivery`, behind the parked ones | all parked delivered and queue empty (live); a failure (parking) |
//! | tripped   | `delivery`              | the hook set Active again (replaying)          |
//! | gone      | dropped (410: Stopped)  | the hook set Active again (replaying or live)  |
//! | paused    | `delivery` (parked, reason `paused`) | `walhook webhook resume` (replaying) |
//!
//! Paused is the parking state held by the hook's `webhook_control` row
//! (`paused_at` set) rather than by its target: nothing is sent, not even
//! retries or parked events, until the row is cleared; then the replayer
//! delivers what was parked, in commit order, and the hook goes live.
//! Unlike Stopped (2), which drops, a pause keeps every event.
//!
//! Parking: a hook whose target keeps failing (`max_consecutive_errors`,
//! which also sets `webhook.state` 3) or whose backlog passes its bound is
//! switched to parking: its events go to the `delivery` table so the slot
//! can move on, and a replayer delivers them in commit order once the hook
//! is Active and its queue is empty. While a hook has parked events, its
//! new events are parked behind them, so a row's events never overtake
//! each other.
//!
//! Everything delivery stores goes through the [`DeliveryStore`]
//! interface, which the store implements for PostgreSQL.

pub mod client;
mod concurrency;
mod connections;
mod dispatcher;
mod hook;
pub mod http;
mod order;
mod origins;
mod park_writer;
mod parked;
mod parking;
mod queue;
mod replay;
pub mod request;
mod resolver;
mod retry;
pub mod settings;
pub mod signing;
pub mod target_policy;
pub mod tls;
pub mod usage;

use std::sync::Arc;

use bytes::Bytes;
use uuid::Uuid;

pub use self::client::{http_client, HttpClient};
pub use self::connections::Sender;
pub use self::dispatcher::Dispatcher;
pub use self::hook::{HookControl, ParkReason};
pub use self::http::{attempt, Attempt, DeliveryOutcome};
pub use self::parked::{DeliveryStore, ParkedBody, ParkedEvent, ParkedRow, Position};
pub use self::parking::{parked_limit_warning, PARKED_WARN_PERCENT};
pub use self::retry::backoff;
pub use self::settings::HookSettings;
pub use self::signing::SigningKey;
pub use self::target_policy::{check_target, is_public, TargetRefused};
pub use self::usage::{UsageBook, UsageDelta};
use crate::checkpoint::Ticket;
use crate::config::{DeliveryConfig, Live};
use crate::pgoutput::Lsn;
use crate::registry::Webhook;

/// How an event must be ordered against others of the same hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderScope {
    /// After earlier events with the same key.
    Key,
    /// Also after earlier events of a second key (an UPDATE that changed
    /// the row's key orders after both the old and the new key).
    AlsoAfter(String),
    /// After every earlier event of the hook, and before every later one
    /// (TRUNCATE is a barrier for its table).
    Barrier,
}

/// One event addressed to one hook.
pub struct Job {
    pub hook: Arc<Webhook>,
    pub event: String,
    pub event_id: Uuid,
    pub ordering_key: String,
    pub scope: OrderScope,
    pub body: Bytes,
    /// Where the event's body parts shared by its hooks are found: a
    /// parked event stores them once per change, however many hooks park
    /// it.
    pub shared: request::SharedParts,
    /// Where the event stands in commit order, kept when it is parked.
    pub commit_lsn: Lsn,
    pub change_index: u32,
    pub ticket: Ticket,
}

/// Everything a hook's queue or its replayer needs.
#[derive(Clone)]
pub struct DeliveryContext {
    pub http: HttpClient,
    /// Delivery settings; SIGHUP may replace them.
    pub config: Live<DeliveryConfig>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub usage: UsageBook,
    pub store: Arc<dyn DeliveryStore>,
}

#[cfg(test)]
mod tests;
