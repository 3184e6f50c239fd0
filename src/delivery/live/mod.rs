//! Live delivery: a hook's queue (which of its events may start, by the
//! order rules and its concurrency limit) and its lanes (the tasks that
//! run them over connections they drive).

mod lanes;
mod queue;
mod shared;

pub(in crate::delivery) use self::queue::{run_queue, Queued};
pub(in crate::delivery) use self::shared::SharedInFlight;
