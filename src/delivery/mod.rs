//! Delivery: signed POSTs to the hooks, with retries, parking and order.
//!
//! An event the registry matched comes in through the [`intake`], which
//! makes one [`Job`] per hook; the [`Dispatcher`] routes each job to its
//! hook's queue ([`live`]) or to [`parking`]. A queue starts events as
//! the order rules and the hook's concurrency limit allow, in lanes that
//! [`send`] them over the wire ([`http`]) as built by [`request`]; a
//! hook's runtime state and rules live in [`hook`]. Request bodies queued
//! or in flight are bounded by a byte budget: when it is spent the reader
//! waits, which stops reading WAL (back-pressure) instead of growing.
//! ARCHITECTURE.md draws the path; [`hook`] holds the state table.
//!
//! Everything delivery stores goes through the [`DeliveryStore`]
//! interface, which the store implements for PostgreSQL.

mod context;
mod dispatcher;
pub mod hook;
pub mod http;
pub mod intake;
mod job;
mod live;
pub mod parking;
pub mod request;
pub mod send;
mod storage;

pub use self::context::DeliveryContext;
pub use self::dispatcher::Dispatcher;
pub use self::hook::order::OrderScope;
pub use self::hook::settings::HookSettings;
pub use self::hook::usage::{UsageBook, UsageDelta};
pub use self::hook::ParkReason;
pub use self::http::{
    check_target, http_client, is_public, tls, HttpClient, Sender, TargetRefused,
};
pub use self::intake::{fit_event, EventIntake};
pub use self::job::Job;
pub use self::parking::{parked_bytes_warning, parked_limit_warning, PARKED_WARN_PERCENT};
pub use self::request::signing;
pub use self::request::SigningKey;
pub use self::send::{attempt, backoff, Attempt, DeliveryOutcome, TraceHeaders, GONE_ERROR};
pub use self::send::{AttemptLog, AttemptStore, AttemptTableMissing, LoggedAttempt};
pub use self::storage::{
    DeliveryStore, ParkedBody, ParkedEvent, ParkedRow, ParkedSize, Payload, Position,
};

#[cfg(test)]
mod tests;
