//! Parking: a hook's events go to the `delivery` table instead of its
//! target, so the slot can move on. The policy (when a hook parks, the
//! bound on what it may park), the writer (batches, off the reader's
//! path) and the replayer (parked events delivered in commit order, then
//! back to live).

mod policy;
mod replayer;
mod writer;

pub(in crate::delivery) use self::policy::past_bound;
pub use self::policy::{parked_bytes_warning, parked_limit_warning, PARKED_WARN_PERCENT};
pub(in crate::delivery) use self::replayer::run_replayer;
pub(in crate::delivery) use self::writer::{park_until_done, ParkQueue};
