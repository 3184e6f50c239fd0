//! How many requests one hook may have in flight: fixed, or adapted to
//! what its target sustains.
//!
//! A remote target 50 ms away gets only 8 / 0.05 s = 160 requests a second
//! from a fixed 8 in flight, while a struggling one should get fewer, not
//! more. The adaptive limit follows Vector's adaptive request concurrency
//! (AIMD on observed round-trip times and back-pressure): once per
//! round-trip time it looks at the requests that finished, and
//!
//! - on back-pressure (429, 503, a timeout, a failed connection) it halves
//!   the limit at once, at most once per round trip;
//! - when the mean round-trip time rose clearly above the hook's usual one,
//!   or, while the limit held events back, above the target's unloaded one,
//!   it lowers the limit by a tenth;
//! - when the target kept its latency and the hook had more ready events
//!   than the limit allowed, it raises it: by one per answer while nothing
//!   has pushed back yet (slow start, as TCP's: the limit doubles each
//!   round trip, so a fresh hook reaches a distant target's rate in a few),
//!   then by one per round trip.
//!
//! The unloaded round trip is the lowest window mean, measured again as
//! BBR's PROBE_RTT does: 10 s after slow start, then every 10 s, the limit
//! drops to 4 until requests started after the drop, which waited in no
//! queue, have answered. Without it, queueing could not be told from the
//! target's own latency, and an unloaded time from before the target got
//! slower for good would hold its load down.
//!
//! Queueing is told from a target that got slower for good by how far
//! the fastest answer of a window is from the unloaded round trip. The
//! rules above never let queueing grow past SLOW_START_QUEUE_RATIO times
//! the unloaded round trip for long, so two windows in a row in which
//! even the fastest answer took more than that, and 10 ms more, had no
//! request that waited in no queue at the old latency: the target itself
//! got slower (a target at 0.3 ms now answering in 50 ms). The unloaded
//! and usual round trips then become what those windows saw and slow
//! start begins again from the limit as it is, as it would for a fresh
//! hook; waiting for a probe, and then growing by one per round trip,
//! held such a hook at a fifth of a fresh hook's rate for seconds.
//!
//! [`ConcurrencyLimit::restart`] starts a limit afresh, for a hook whose
//! target changed: answers to requests sent before it say nothing of the
//! new target and are not counted.
//!
//! Slow start grows per answer, not per window, because a window's decision
//! waits for an answer that comes after the window: on a distant target
//! the answers of one round trip arrive together, so a decision per window
//! came a round trip late, and the first doubling two.
//!
//! The limit stays between 1 and the configured ceiling. The controller is
//! plain data with the clock passed in, so its rules are unit-tested
//! without a network.

use std::time::{Duration, Instant};

/// Where an adaptive limit starts: a fixed limit's usual size.
const INITIAL: usize = 8;
/// A window's mean round trip this much above the usual one is rising
/// latency...
const RISE_RATIO: f64 = 1.5;
/// ...unless the rise is below this. On a target a millisecond away, a
/// few milliseconds more are mostly walhook's own queueing once its CPU is
/// busy (measured on loopback: 0.3 to 8 ms at a steady load): against the
/// usual round trip, which moves, that is noise. A target that really
/// struggles soon passes 5 ms, or pushes back. Queueing is judged against
/// the unloaded round trip instead (`QUEUE_FLOOR`).
const RISE_FLOOR: Duration = Duration::from_millis(5);
/// While the limit holds events back, a window's mean round trip is also
/// held against the target's unloaded one. The usual round trip cannot see queueing: it
/// follows the limit's own growth, one request per window, which never
/// raises the round trip by half at once. On a target a millisecond away
/// whose answers the CPU, not the network, paces, the limit then grew to
/// the hook's whole backlog (about 195 in flight on loopback nginx), where
/// 32 to 64 in flight delivered as much or more for less CPU per request:
/// each request beyond them only waits. More than `QUEUE_FLOOR` above the
/// unloaded round trip (and half again) is waiting in a queue, walhook's
/// own or the target's.
const QUEUE_FLOOR: Duration = Duration::from_millis(2);
/// In slow start the mean must be this many times the unloaded round trip
/// to be queueing: its windows open many connections at once, and a new
/// connection's first request takes up to three round trips (TCP's
/// handshake, TLS's, the request).
const SLOW_START_QUEUE_RATIO: f64 = 4.0;
/// How often the unloaded round trip is measured again, so that a target
/// whose latency rose for good is not held low for long. The lowest window
/// mean since stands for it in between: a target may get faster.
const PROBE_INTERVAL: Duration = Duration::from_secs(10);
/// Cuts for queueing in a row (0.9^7: below half the limit) before the
/// unloaded round trip is measured again at once: so many cuts that still
/// find a long round trip suggest the target got slower for good.
const QUEUEING_STREAK_PROBE: u32 = 7;
/// A window's fastest answer more than SLOW_START_QUEUE_RATIO times the
/// unloaded round trip and this much more is not queueing the rules let
/// build: its target got slower. The margin is for walhook's own queueing
/// on a busy machine (up to 8 ms measured on loopback at a steady load).
const STALE_FLOOR: Duration = Duration::from_millis(10);
/// Windows in a row whose fastest answer is that slow before the unloaded
/// round trip is taken as stale: one stall of walhook's process delays
/// every answer it then reads at once, but those answers land in one
/// window, and the next window's fresh requests are fast again.
const STALE_WINDOWS: u32 = 2;
/// The limit while it is measured: for a distant target, about two round
/// trips of 4 requests in flight in 10 s, some 1% of its throughput.
const PROBE_LIMIT: usize = 4;
/// A probe ends after this many windows even without an answer to time.
const PROBE_MAX_WINDOWS: u32 = 8;
/// The shortest and longest window between two decisions.
const MIN_WINDOW: Duration = Duration::from_millis(5);
const MAX_WINDOW: Duration = Duration::from_secs(1);
/// A window lasts this share of the usual round trip. Requests started
/// at a decision finish about one round trip later, all at once on a
/// steady target; a window of a full round trip would end just after
/// them half the time and wait for the next batch, so each step would
/// take two round trips instead of one.
const WINDOW_SHARE: f64 = 0.75;
/// Weight of the newest window in the usual round-trip time.
const BASELINE_WEIGHT: f64 = 0.2;

/// What one finished attempt says about its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Answered (any status that is not back-pressure): a round-trip time.
    Answered(Duration),
    /// 429, 503, a timeout, a failed connection or an HTTP/2 request
    /// refused on every resend: the target is overloaded or unreachable.
    BackPressure,
}

/// The limit of one hook.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimit {
    limit: usize,
    /// None: fixed at `limit`.
    adaptive: Option<Adaptive>,
}

/// Where the measurement of the unloaded round trip stands.
#[derive(Debug, Clone, Copy)]
enum Probe {
    /// The next one is due at this time (None: once slow start ends).
    Due(Option<Instant>),
    /// The limit is PROBE_LIMIT since `since`: answers to requests started
    /// after it waited in no queue, and they are timed here. `back` is the
    /// limit to go back to.
    Running {
        back: usize,
        since: Instant,
        windows: u32,
        rtt_sum: Duration,
        samples: u32,
    },
}

impl Probe {
    /// Due an interval after `now`.
    fn next_after(now: Instant) -> Probe {
        Probe::Due(Some(now + PROBE_INTERVAL))
    }
}

#[derive(Debug, Clone)]
struct Adaptive {
    ceiling: usize,
    slow_start: bool,
    /// The hook's usual round-trip time (moving average of window means).
    baseline: Option<Duration>,
    /// The round trip with nothing queued: the lowest window mean since
    /// the last probe measured it.
    unloaded: Option<Duration>,
    probe: Probe,
    /// Windows in a row judged queueing.
    queueing_streak: u32,
    /// Windows in a row whose fastest answer was far above the unloaded
    /// round trip (see STALE_WINDOWS).
    stale_streak: u32,
    /// Answers to requests sent before this are not counted: the limit was
    /// started afresh for a new target then ([`ConcurrencyLimit::restart`]).
    counts_from: Option<Instant>,
    window_start: Option<Instant>,
    rtt_sum: Duration,
    /// The fastest answer of this window.
    rtt_min: Option<Duration>,
    samples: u32,
    /// The limit was already cut in this window: one cut per round trip,
    /// so a burst of failures from one moment does not count many times.
    cut: bool,
    /// The hook had ready events the limit held back during this window.
    held_back: bool,
    /// Of the events held back when the queue last looked, those no
    /// answer has let start yet: slow start grows only on answers that
    /// find events waiting, not for a burst that has drained. A count, not
    /// a flag, because the answers reach the limit from the hook's lanes
    /// in batches before the queue looks again.
    waiting: usize,
    /// The limit when this window began: slow start at most doubles it
    /// within a window, so a target answering faster than the shortest
    /// window is still checked for rising latency at every doubling.
    window_base: usize,
}

impl ConcurrencyLimit {
    pub fn fixed(limit: usize) -> ConcurrencyLimit {
        ConcurrencyLimit {
            limit: limit.max(1),
            adaptive: None,
        }
    }

    pub fn adaptive(ceiling: usize) -> ConcurrencyLimit {
        let ceiling = ceiling.max(1);
        ConcurrencyLimit {
            limit: INITIAL.min(ceiling),
            adaptive: Some(Adaptive {
                ceiling,
                slow_start: true,
                baseline: None,
                unloaded: None,
                probe: Probe::Due(None),
                queueing_streak: 0,
                stale_streak: 0,
                counts_from: None,
                window_start: None,
                rtt_sum: Duration::ZERO,
                rtt_min: None,
                samples: 0,
                cut: false,
                held_back: false,
                waiting: 0,
                window_base: INITIAL.min(ceiling),
            }),
        }
    }

    /// Start an adaptive limit afresh at `now`, as a new hook's, for a hook
    /// whose target changed: what it learned of the old target (its round
    /// trips, the limit it reached, that it pushed back) says nothing of
    /// the new one. Answers to requests sent before now are not counted.
    /// A fixed limit stays.
    pub fn restart(&mut self, now: Instant) {
        if let Some(a) = &self.adaptive {
            let mut fresh = ConcurrencyLimit::adaptive(a.ceiling);
            if let Some(f) = &mut fresh.adaptive {
                f.counts_from = Some(now);
            }
            *self = fresh;
        }
    }

    /// Requests that may be in flight now.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The hook's queue looked at its waiting events: `held_back` of them
    /// (at most) could have started but for the limit, 0 when none.
    pub fn looked(&mut self, held_back: usize) {
        if let Some(a) = &mut self.adaptive {
            a.held_back |= held_back > 0;
            a.waiting = held_back;
        }
    }

    /// Growing by one per answer until the target first pushes back or
    /// slows.
    pub fn in_slow_start(&self) -> bool {
        self.adaptive.as_ref().is_some_and(|a| a.slow_start)
    }

    /// One attempt finished at `now`.
    pub fn record(&mut self, now: Instant, signal: Signal) {
        let Some(a) = &mut self.adaptive else {
            return;
        };
        if let (Some(from), Signal::Answered(rtt)) = (a.counts_from, signal) {
            if now.checked_sub(rtt).is_none_or(|sent| sent < from) {
                // Sent to the old target: its place still goes to a
                // waiting event.
                a.waiting = a.waiting.saturating_sub(1);
                return;
            }
        }
        // One decision per round trip: the effect of the last change is
        // seen before the next. The answer that ends a window opens the
        // next one: on a distant target it is the first of a batch that
        // should all count toward the next doubling.
        let window = a
            .baseline
            .map_or(MIN_WINDOW, |usual| usual.mul_f64(WINDOW_SHARE))
            .clamp(MIN_WINDOW, MAX_WINDOW);
        if a.window_start
            .is_some_and(|start| now.duration_since(start) >= window)
        {
            self.limit = a.decide(now, self.limit);
        }
        if a.window_start.is_none() {
            a.window_start = Some(now);
            a.window_base = self.limit;
        }
        match signal {
            Signal::Answered(rtt) => {
                a.rtt_sum += rtt;
                a.rtt_min = Some(a.rtt_min.map_or(rtt, |min| min.min(rtt)));
                a.samples += 1;
                if let Probe::Running {
                    since,
                    rtt_sum,
                    samples,
                    ..
                } = &mut a.probe
                {
                    if now.checked_sub(rtt).is_some_and(|sent| sent >= *since) {
                        *rtt_sum += rtt;
                        *samples += 1;
                    }
                }
                // Back-pressure and rising latency end slow start, so
                // this never grows a limit the target pushed back on.
                if a.slow_start && a.waiting > 0 && self.limit < 2 * a.window_base {
                    self.limit = (self.limit + 1).min(a.ceiling);
                }
                // Its request's place goes to one of them.
                a.waiting = a.waiting.saturating_sub(1);
            }
            Signal::BackPressure => {
                // Back-pressure cuts at once, once per window.
                if !a.cut {
                    a.cut = true;
                    a.slow_start = false;
                    // A probe in progress ends: half of what it would go
                    // back to.
                    let from = match a.probe {
                        Probe::Running { back, .. } => back,
                        Probe::Due(_) => self.limit,
                    };
                    a.probe = Probe::next_after(now);
                    self.limit = (from / 2).max(1);
                }
            }
        }
    }
}

impl Adaptive {
    /// End the window at `now`: the new limit.
    fn decide(&mut self, now: Instant, limit: usize) -> usize {
        let mean = (self.samples > 0).then(|| self.rtt_sum / self.samples);
        // A probe times its own requests; outside one, a window without a
        // fast answer says the unloaded round trip is stale.
        let stale = match (self.rtt_min, self.unloaded, self.probe) {
            (Some(fastest), Some(unloaded), Probe::Due(_)) if far_above(fastest, unloaded) => {
                Some(fastest)
            }
            _ => None,
        };
        if let (Some(fastest), Some(mean)) = (stale, mean) {
            self.stale_streak += 1;
            if self.stale_streak >= STALE_WINDOWS {
                self.stale_streak = 0;
                self.queueing_streak = 0;
                // Grow as a fresh hook does, from the limit as it is; the
                // old usual round trip would take the new latency for a
                // rise.
                self.unloaded = Some(fastest);
                self.baseline = Some(mean);
                self.slow_start = true;
                // As a fresh hook's: measured 10 s after slow start.
                self.probe = Probe::Due(None);
            }
            // Neither cut nor grown: the round trips were judged against
            // a stale unloaded one (or a stall, which the next window
            // tells).
            self.end_window();
            return limit.clamp(1, self.ceiling);
        }
        self.stale_streak = 0;
        let above_usual = match (mean, self.baseline) {
            (Some(mean), Some(usual)) => {
                mean > usual.mul_f64(RISE_RATIO) && mean - usual > RISE_FLOOR
            }
            _ => false,
        };
        // Only while the limit held events back: otherwise it queued
        // nothing, and the lowest of many one-answer windows is biased low.
        let queueing = match (mean, self.unloaded, self.probe) {
            (Some(mean), Some(unloaded), Probe::Due(_)) if self.held_back => {
                let ratio = if self.slow_start {
                    SLOW_START_QUEUE_RATIO
                } else {
                    RISE_RATIO
                };
                mean > unloaded.mul_f64(ratio) && mean - unloaded > QUEUE_FLOOR
            }
            _ => false,
        };
        if let Some(mean) = mean {
            self.unloaded = Some(self.unloaded.map_or(mean, |unloaded| unloaded.min(mean)));
        }
        self.queueing_streak = if queueing {
            self.queueing_streak + 1
        } else {
            0
        };
        if self.queueing_streak >= QUEUEING_STREAK_PROBE {
            self.queueing_streak = 0;
            self.probe = Probe::Due(Some(now));
        }
        let rising = above_usual || queueing;
        let probing = matches!(self.probe, Probe::Running { .. });
        let next = match self.probe {
            Probe::Running {
                back,
                rtt_sum,
                samples,
                ..
            } if samples > 0 => {
                self.end_probe(now, Some(rtt_sum / samples));
                back
            }
            Probe::Running { back, windows, .. } if windows + 1 >= PROBE_MAX_WINDOWS => {
                self.end_probe(now, None);
                back
            }
            Probe::Running {
                ref mut windows, ..
            } => {
                *windows += 1;
                limit
            }
            Probe::Due(None) if !self.slow_start => {
                self.probe = Probe::next_after(now);
                self.next_limit(limit, rising)
            }
            Probe::Due(Some(at)) if now >= at && limit > PROBE_LIMIT => {
                self.probe = Probe::Running {
                    back: self.next_limit(limit, rising),
                    since: now,
                    windows: 0,
                    rtt_sum: Duration::ZERO,
                    samples: 0,
                };
                PROBE_LIMIT
            }
            Probe::Due(Some(at)) if now >= at => {
                // As low as a probe already: this window was one.
                self.end_probe(now, mean);
                self.next_limit(limit, above_usual)
            }
            Probe::Due(_) => self.next_limit(limit, rising),
        };
        // A probe's windows say nothing of the usual round trip.
        if let (Some(mean), false) = (mean, probing) {
            self.baseline = Some(match self.baseline {
                None => mean,
                Some(usual) => usual.mul_f64(1.0 - BASELINE_WEIGHT) + mean.mul_f64(BASELINE_WEIGHT),
            });
        }
        self.end_window();
        next.clamp(1, self.ceiling)
    }

    /// The next window starts afresh.
    fn end_window(&mut self) {
        self.window_start = None;
        self.rtt_sum = Duration::ZERO;
        self.rtt_min = None;
        self.samples = 0;
        self.cut = false;
        self.held_back = false;
    }

    /// A probe ended at `now`, having timed `unloaded` (None: no answer it
    /// could time); the next is due an interval later. (A probe cannot
    /// find the target far slower than the windows before it did: their
    /// fastest answers would have said so first.)
    fn end_probe(&mut self, now: Instant, unloaded: Option<Duration>) {
        if unloaded.is_some() {
            self.unloaded = unloaded;
        }
        self.probe = Probe::next_after(now);
    }

    /// The limit after a window outside a probe.
    fn next_limit(&mut self, limit: usize, rising: bool) -> usize {
        if self.cut {
            limit
        } else if rising {
            self.slow_start = false;
            limit - limit.div_ceil(10)
        } else if self.held_back && self.samples > 0 && !self.slow_start {
            limit + 1
        } else {
            limit
        }
    }
}

/// Whether `rtt` is farther above `unloaded` than any queueing the rules
/// let build (see STALE_FLOOR).
fn far_above(rtt: Duration, unloaded: Duration) -> bool {
    rtt > unloaded.mul_f64(SLOW_START_QUEUE_RATIO) + STALE_FLOOR
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backlog larger than any limit the tests reach.
    const EVENTS_WAITING: usize = 10_000;

    /// Drive `limit` through `windows` windows of one round trip each, with
    /// every request answered after `rtt` and more events ready than the
    /// limit allows: as in a hook's queue, each answer lets the queue look
    /// again and find events held back.
    fn busy_windows(limit: &mut ConcurrencyLimit, at: &mut Instant, rtt: Duration, windows: u32) {
        for _ in 0..windows {
            limit.looked(EVENTS_WAITING);
            let n = limit.limit();
            for _ in 0..n {
                *at += rtt / n as u32;
                limit.record(*at, Signal::Answered(rtt));
                limit.looked(EVENTS_WAITING);
            }
            *at += rtt;
            limit.record(*at, Signal::Answered(rtt));
        }
    }

    #[test]
    fn a_fixed_limit_never_moves() {
        let mut limit = ConcurrencyLimit::fixed(8);
        let mut at = Instant::now();
        busy_windows(&mut limit, &mut at, Duration::from_millis(50), 20);
        limit.record(at, Signal::BackPressure);
        assert_eq!(limit.limit(), 8);
        assert_eq!(ConcurrencyLimit::fixed(0).limit(), 1);
    }

    #[test]
    fn a_distant_steady_target_is_reached_in_a_few_round_trips() {
        let mut limit = ConcurrencyLimit::adaptive(512);
        let mut at = Instant::now();
        assert_eq!(limit.limit(), INITIAL);
        // 8 -> 512 by doubling takes 6 windows.
        busy_windows(&mut limit, &mut at, Duration::from_millis(50), 6);
        assert_eq!(limit.limit(), 512);
    }

    /// A target that answers far faster than the shortest window still
    /// gets at most twice the limit per window, so rising latency is
    /// looked for at every doubling.
    #[test]
    fn slow_start_at_most_doubles_within_a_window() {
        let mut limit = ConcurrencyLimit::adaptive(512);
        let mut at = Instant::now();
        for _ in 0..1000 {
            limit.looked(EVENTS_WAITING);
            at += Duration::from_micros(2);
            limit.record(at, Signal::Answered(Duration::from_micros(300)));
        }
        // 2 ms: well inside the first window (MIN_WINDOW).
        assert_eq!(limit.limit(), 2 * INITIAL);
    }

    /// Slow start grows only on answers that find events waiting: a burst
    /// of 9 events at a limit of 8 is one more, not a limit grown by every
    /// answer after the burst drained.
    #[test]
    fn slow_start_grows_only_while_events_wait() {
        let mut limit = ConcurrencyLimit::adaptive(512);
        let mut at = Instant::now();
        limit.looked(1);
        for _ in 0..9 {
            at += Duration::from_millis(1);
            limit.record(at, Signal::Answered(Duration::from_millis(50)));
        }
        assert_eq!(limit.limit(), INITIAL + 1);
    }

    /// A steady distant target answers each batch at once, one round trip
    /// after the batch started, with a little jitter: the limit doubles
    /// with every batch, the first included. So it does whether the queue
    /// looks again after every answer or once per batch (its lanes record
    /// a batch of answers first): while a backlog waits, each answer
    /// grows the limit.
    #[test]
    fn slow_start_doubles_once_per_round_trip_on_batched_answers() {
        for look_per_answer in [true, false] {
            let rtt = Duration::from_millis(50);
            let mut limit = ConcurrencyLimit::adaptive(512);
            let mut at = Instant::now();
            let mut batches = 0;
            while limit.limit() < 512 {
                assert!(
                    batches < 10,
                    "still at {} after {batches} batches (look per answer: {look_per_answer})",
                    limit.limit()
                );
                limit.looked(EVENTS_WAITING);
                let n = limit.limit();
                // Answers land together (a timer's tick), just before a
                // full round trip after the last decision.
                for i in 0..n {
                    limit.record(
                        at + Duration::from_nanos(100 * i as u64),
                        Signal::Answered(rtt),
                    );
                    if look_per_answer {
                        limit.looked(EVENTS_WAITING);
                    }
                }
                at += rtt - Duration::from_micros(100);
                batches += 1;
            }
            // 8 -> 512 is six doublings, one per batch from the first.
            assert_eq!(batches, 6, "look per answer: {look_per_answer}");
        }
    }

    #[test]
    fn the_limit_grows_only_while_events_are_held_back() {
        let mut limit = ConcurrencyLimit::adaptive(512);
        let mut at = Instant::now();
        for _ in 0..20 {
            at += Duration::from_millis(60);
            limit.record(at, Signal::Answered(Duration::from_millis(50)));
        }
        assert_eq!(limit.limit(), INITIAL);
    }

    #[test]
    fn back_pressure_halves_and_ends_slow_start() {
        let mut limit = ConcurrencyLimit::adaptive(512);
        let mut at = Instant::now();
        busy_windows(&mut limit, &mut at, Duration::from_millis(10), 4);
        let before = limit.limit();
        assert!(before > INITIAL, "{before}");
        // A burst of failures from one moment cuts once.
        for _ in 0..5 {
            limit.record(at, Signal::BackPressure);
        }
        assert_eq!(limit.limit(), before / 2);
        // The window of the cut ends without growth; after it the limit
        // grows by one per decision, one every 3/4 of a round trip, where
        // slow start would have doubled it in a round trip.
        at += Duration::from_millis(10);
        limit.record(at, Signal::Answered(Duration::from_millis(10)));
        assert_eq!(limit.limit(), before / 2);
        busy_windows(&mut limit, &mut at, Duration::from_millis(10), 3);
        let grown = limit.limit() - before / 2;
        assert!((3..=6).contains(&grown), "grew by {grown} in 3 round trips");
    }

    #[test]
    fn a_target_that_keeps_failing_gets_one_request_at_a_time() {
        let mut limit = ConcurrencyLimit::adaptive(512);
        let mut at = Instant::now();
        for _ in 0..20 {
            at += Duration::from_millis(100);
            limit.looked(EVENTS_WAITING);
            limit.record(at, Signal::BackPressure);
        }
        assert_eq!(limit.limit(), 1);
    }

    #[test]
    fn rising_latency_lowers_the_limit() {
        let mut limit = ConcurrencyLimit::adaptive(512);
        let mut at = Instant::now();
        busy_windows(&mut limit, &mut at, Duration::from_millis(20), 5);
        let before = limit.limit();
        // The target slows down to four times its usual latency.
        busy_windows(&mut limit, &mut at, Duration::from_millis(80), 1);
        assert!(limit.limit() < before, "{} !< {before}", limit.limit());
        // A small rise on a fast target is noise, not a reason.
        let mut fast = ConcurrencyLimit::adaptive(512);
        busy_windows(&mut fast, &mut at, Duration::from_micros(300), 5);
        let before = fast.limit();
        busy_windows(&mut fast, &mut at, Duration::from_micros(900), 1);
        assert!(fast.limit() >= before, "{} < {before}", fast.limit());
    }

    /// A target a millisecond away whose answers the CPU paces, at most
    /// `per_second` a second: each request beyond what keeps it busy only
    /// waits, so the round trip grows with the limit, a little per window.
    fn cpu_paced(limit: usize, per_second: u32) -> Duration {
        Duration::from_micros(300) + Duration::from_secs(1) * limit as u32 / per_second
    }

    /// An adaptive limit whose slow start a back-pressure signal ended, as
    /// it would, after `windows` more busy windows of `rtt`; and the clock.
    fn past_slow_start(rtt: Duration, windows: u32) -> (ConcurrencyLimit, Instant) {
        let mut limit = ConcurrencyLimit::adaptive(512);
        let mut at = Instant::now();
        busy_windows(&mut limit, &mut at, rtt, 4);
        limit.record(at, Signal::BackPressure);
        busy_windows(&mut limit, &mut at, rtt, windows);
        (limit, at)
    }

    /// A fresh adaptive limit after `windows` busy windows on a CPU-paced
    /// target, and the clock.
    fn paced_for(windows: u32, per_second: u32) -> (ConcurrencyLimit, Instant) {
        let mut limit = ConcurrencyLimit::adaptive(512);
        let mut at = Instant::now();
        for _ in 0..windows {
            let rtt = cpu_paced(limit.limit(), per_second);
            busy_windows(&mut limit, &mut at, rtt, 1);
        }
        (limit, at)
    }

    /// Such a target is not given the hook's whole backlog: once the
    /// round trip is mostly waiting, the limit stops growing (a moving
    /// average of the round trip follows its slow rise and never would),
    /// and it stays where the target is kept busy, probes aside.
    #[test]
    fn queueing_on_a_fast_target_stops_the_growth() {
        let (mut limit, mut at) = paced_for(100, 24_000);
        assert!(!limit.in_slow_start());
        let (mut highest, mut lowest, mut probes) = (0, usize::MAX, 0);
        let start = at;
        while at.duration_since(start) < 3 * PROBE_INTERVAL {
            let before = limit.limit();
            let rtt = cpu_paced(before, 24_000);
            busy_windows(&mut limit, &mut at, rtt, 1);
            if limit.limit() == PROBE_LIMIT {
                probes += usize::from(before != PROBE_LIMIT);
            } else {
                highest = highest.max(limit.limit());
                lowest = lowest.min(limit.limit());
            }
        }
        // 2 ms above the unloaded round trip is 55 in flight; 24 keep the
        // target busy.
        assert!(highest <= 64, "grew to {highest}");
        assert!(lowest >= 24, "fell to {lowest}");
        assert!(probes >= 3, "{probes} probes in {:?}", 3 * PROBE_INTERVAL);
    }

    /// A target that takes 100,000 requests a second still queues at 512
    /// in flight (5 ms, against 0.3 ms unloaded): slow start ends there,
    /// though the moving average lags behind its doublings.
    #[test]
    fn queueing_ends_slow_start() {
        let (limit, _) = paced_for(200, 100_000);
        assert!(!limit.in_slow_start());
        assert!(limit.limit() < 400, "{}", limit.limit());
    }

    /// Every PROBE_INTERVAL the limit drops to PROBE_LIMIT until requests
    /// started after the drop answer, then goes back to where it was.
    #[test]
    fn the_unloaded_round_trip_is_measured_every_interval() {
        let mut limit = ConcurrencyLimit::adaptive(512);
        let mut at = Instant::now();
        let rtt = Duration::from_millis(20);
        busy_windows(&mut limit, &mut at, rtt, 3);
        limit.record(at, Signal::BackPressure);
        let start = at;
        // The limit after every answer.
        let mut seen = Vec::new();
        while at.duration_since(start) < PROBE_INTERVAL * 5 / 2 {
            let n = limit.limit();
            for _ in 0..n {
                limit.looked(EVENTS_WAITING);
                at += rtt / n as u32;
                limit.record(at, Signal::Answered(rtt));
                seen.push(limit.limit());
            }
        }
        let mut probes = 0;
        for (i, pair) in seen.windows(2).enumerate() {
            if pair[0] > PROBE_LIMIT && pair[1] == PROBE_LIMIT {
                probes += 1;
                // Low until the requests sent before the drop have
                // answered (at most the old limit's worth) and one sent
                // after it has: 4 more at 4 in flight. Then back: to the
                // limit before it, or one more.
                let low = seen[i + 1..]
                    .iter()
                    .take_while(|&&l| l == PROBE_LIMIT)
                    .count();
                assert!(
                    (PROBE_LIMIT..=pair[0] + 3 * PROBE_LIMIT).contains(&low),
                    "{low}: {seen:?}"
                );
                let back = seen.get(i + 1 + low).copied();
                assert!(
                    back == Some(pair[0]) || back == Some(pair[0] + 1),
                    "{} -> {back:?}: {seen:?}",
                    pair[0]
                );
            }
        }
        assert_eq!(probes, 2, "{seen:?}");
    }

    /// A probe times only requests sent after its drop: answers to those
    /// sent before, which waited in the old queue, do not count.
    #[test]
    fn a_probe_times_only_requests_sent_after_the_drop() {
        let (mut limit, mut at) = past_slow_start(Duration::from_millis(5), 10);
        // Then every answer comes 20 ms after its request, which waited
        // in a queue, until a probe drops the limit.
        let queued = Duration::from_millis(20);
        while limit.limit() != PROBE_LIMIT {
            at += Duration::from_micros(200);
            limit.looked(EVENTS_WAITING);
            limit.record(at, Signal::Answered(queued));
        }
        let drop = at;
        // The requests sent before the drop keep answering after 20 ms;
        // those sent after it answer after 5 ms.
        for i in 1..=150u32 {
            at += Duration::from_micros(200);
            let fresh = at.duration_since(drop) >= Duration::from_millis(5) && i % 25 == 0;
            let rtt = if fresh {
                Duration::from_millis(5)
            } else {
                queued
            };
            limit.record(at, Signal::Answered(rtt));
        }
        assert_ne!(limit.limit(), PROBE_LIMIT, "the probe did not end");
        let unloaded = limit.adaptive.as_ref().and_then(|a| a.unloaded);
        assert_eq!(unloaded, Some(Duration::from_millis(5)));
    }

    /// A target whose latency rose for good gets its load back: cuts that
    /// still find a long round trip have the unloaded one measured again
    /// at once, not at the next interval.
    #[test]
    fn a_target_slower_for_good_gets_its_load_back() {
        let (mut limit, mut at) = past_slow_start(Duration::from_millis(5), 100);
        let before = limit.limit();
        // From now on the target always answers after 20 ms.
        let slower = at;
        let mut lowest = before;
        while at.duration_since(slower) < PROBE_INTERVAL / 2 {
            busy_windows(&mut limit, &mut at, Duration::from_millis(20), 1);
            // A probe's own PROBE_LIMIT aside.
            if limit.limit() > PROBE_LIMIT {
                lowest = lowest.min(limit.limit());
            }
        }
        assert!(
            lowest < before && lowest >= before / 4,
            "{lowest}, from {before}"
        );
        // Within half an interval it grows again, one per window.
        assert!(
            limit.limit() >= before + 100,
            "{} after {:?} at 20 ms, from {before} and down to {lowest}",
            limit.limit(),
            at.duration_since(slower)
        );
    }

    /// A target `latency` away that serves `per_second` requests a second:
    /// up to `latency * per_second` in flight it keeps its latency, each
    /// request beyond them waits its turn.
    fn distant_paced(latency: Duration, limit: usize, per_second: u32) -> Duration {
        latency.max(Duration::from_secs(1) * limit as u32 / per_second)
    }

    /// Busy windows against a target 50 ms away serving 6,000 requests a
    /// second until `limit` keeps it busy (300 in flight): how many it
    /// took, then as many more again; the limit then.
    fn windows_to_keep_busy(limit: &mut ConcurrencyLimit, at: &mut Instant) -> (u32, usize) {
        let (latency, per_second) = (Duration::from_millis(50), 6_000);
        let busy = 300;
        let mut windows = 0;
        while limit.limit() < busy {
            assert!(
                windows < 200,
                "still at {} after 200 windows",
                limit.limit()
            );
            let rtt = distant_paced(latency, limit.limit(), per_second);
            busy_windows(limit, at, rtt, 1);
            windows += 1;
        }
        for _ in 0..windows {
            let rtt = distant_paced(latency, limit.limit(), per_second);
            busy_windows(limit, at, rtt, 1);
        }
        (windows, limit.limit())
    }

    /// A hook that delivered to a target 0.3 ms away whose target then
    /// answers in 50 ms for good (a slower upstream, peak hours) gets the
    /// load a fresh hook gets within a round trip or two of the fresh one,
    /// instead of being held against the old unloaded round trip.
    #[test]
    fn a_target_far_slower_for_good_is_loaded_as_by_a_fresh_hook() {
        let (fresh_windows, fresh_after) =
            windows_to_keep_busy(&mut ConcurrencyLimit::adaptive(512), &mut Instant::now());
        // Seasoned on the fast target: past slow start, queueing judged
        // against 0.3 ms, a probe or two behind it.
        let (mut seasoned, mut at) = paced_for(100, 24_000);
        let start = at;
        while at.duration_since(start) < PROBE_INTERVAL * 3 / 2 {
            let rtt = cpu_paced(seasoned.limit(), 24_000);
            busy_windows(&mut seasoned, &mut at, rtt, 1);
        }
        assert!(!seasoned.in_slow_start());
        let (windows, after) = windows_to_keep_busy(&mut seasoned, &mut at);
        assert!(
            windows <= fresh_windows + 2,
            "{windows} windows to keep the target busy, a fresh hook {fresh_windows}"
        );
        assert!(
            after >= fresh_after * 9 / 10,
            "{after} in flight after {} windows, a fresh hook {fresh_after}",
            2 * windows
        );
    }

    /// A stall of walhook's own process delays every answer it then reads
    /// at once: one window of slow answers, then fast ones again. That is
    /// not a slower target: the unloaded round trip stays.
    #[test]
    fn one_stall_is_not_a_slower_target() {
        let (mut limit, mut at) = paced_for(100, 24_000);
        let unloaded = |l: &ConcurrencyLimit| l.adaptive.as_ref().and_then(|a| a.unloaded);
        let before = unloaded(&limit);
        assert!(
            before.is_some_and(|u| u < Duration::from_millis(1)),
            "{before:?}"
        );
        // 40 ms without reading, then what answered meanwhile, read at once.
        at += Duration::from_millis(40);
        for i in 0..limit.limit() as u32 {
            limit.record(
                at + Duration::from_micros(u64::from(i)),
                Signal::Answered(Duration::from_millis(40)),
            );
        }
        for _ in 0..20 {
            let rtt = cpu_paced(limit.limit(), 24_000);
            busy_windows(&mut limit, &mut at, rtt, 1);
        }
        assert!(!limit.in_slow_start());
        assert_eq!(unloaded(&limit), before);
        assert!(limit.limit() <= 64, "{}", limit.limit());
    }

    /// A limit started afresh (its hook's target changed) is a new hook's:
    /// slow start from INITIAL, nothing of the old target kept, and the
    /// answers to requests sent before the restart do not count.
    #[test]
    fn a_restarted_limit_starts_as_a_fresh_one() {
        let (mut limit, mut at) = past_slow_start(Duration::from_micros(300), 50);
        assert!(!limit.in_slow_start());
        limit.restart(at);
        assert_eq!(limit.limit(), INITIAL);
        assert!(limit.in_slow_start());
        let a = limit.adaptive.as_ref().expect("adaptive");
        assert_eq!((a.baseline, a.unloaded), (None, None));
        // Requests sent before it answer fast; they neither grow the
        // limit nor set the unloaded round trip.
        limit.looked(EVENTS_WAITING);
        for i in 1..=20 {
            let now = at + Duration::from_micros(100 * i);
            limit.record(now, Signal::Answered(Duration::from_millis(3)));
            limit.looked(EVENTS_WAITING);
        }
        assert_eq!(limit.limit(), INITIAL);
        // The new target, 50 ms away, is then reached as by a fresh hook
        // (from the first request sent after the restart).
        at += Duration::from_millis(50);
        busy_windows(&mut limit, &mut at, Duration::from_millis(50), 6);
        assert_eq!(limit.limit(), 512);
        let unloaded = limit.adaptive.as_ref().and_then(|a| a.unloaded);
        assert_eq!(unloaded, Some(Duration::from_millis(50)));

        let mut fixed = ConcurrencyLimit::fixed(3);
        fixed.restart(at);
        assert_eq!(fixed.limit(), 3);
    }

    #[test]
    fn the_limit_stays_within_its_ceiling() {
        let mut limit = ConcurrencyLimit::adaptive(20);
        let mut at = Instant::now();
        busy_windows(&mut limit, &mut at, Duration::from_millis(5), 30);
        assert_eq!(limit.limit(), 20);
        assert_eq!(ConcurrencyLimit::adaptive(3).limit(), 3);
    }
}
