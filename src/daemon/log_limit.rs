//! A warning that may come from anyone's input, logged at most once a
//! period: a role emitting a stream of malformed messages under walhook's
//! prefix must not flood the log (or the disk under it).

use std::time::{Duration, Instant};

/// At most one line per `period`; the lines held back are counted and
/// reported with the next one that goes out.
pub struct LogLimit {
    period: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl LogLimit {
    pub fn new(period: Duration) -> LogLimit {
        LogLimit {
            period,
            last: None,
            held_back: 0,
        }
    }

    /// `Some(n)` when this occurrence is to be logged, `n` being how many
    /// were held back since the last one that was; `None` to hold it back.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < self.period => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_period_with_the_count_held_back() {
        let mut limit = LogLimit::new(Duration::from_secs(60));
        let t = Instant::now();
        assert_eq!(limit.admit(t), Some(0));
        for s in 1..=59 {
            assert_eq!(limit.admit(t + Duration::from_secs(s)), None);
        }
        assert_eq!(limit.admit(t + Duration::from_secs(60)), Some(59));
        assert_eq!(limit.admit(t + Duration::from_secs(61)), None);
    }
}
