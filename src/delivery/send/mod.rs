//! Sending one event: an attempt (the POST and what its answer means) and
//! the retries around it, until it is delivered, the target answers 410,
//! or the hook trips.

mod attempt;
pub mod attempt_log;
mod retry;

pub use self::attempt::{
    attempt, Attempt, DeliveryOutcome, FailureCause, FailureKind, TraceHeaders, GONE_ERROR,
};
pub use self::attempt_log::{AttemptLog, AttemptStore, AttemptTableMissing, LoggedAttempt};
pub use self::retry::backoff;
pub(in crate::delivery) use self::retry::{deliver, From, Outgoing, SendResult};
