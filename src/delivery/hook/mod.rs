//! A hook's own state and rules: its runtime state and transitions, its
//! `webhook_control` settings, its concurrency limit, the order rules of
//! its events, and its call statistics.

pub mod concurrency;
pub mod order;
mod runtime;
pub mod settings;
pub mod usage;

pub use self::runtime::{
    epoch_millis, Admission, HookRuntime, HookWithKey, ParkReason, ParkSize, ParkedBound,
    ParkedLimits, RequestInFlight, Reservation,
};

#[cfg(test)]
mod tests;
