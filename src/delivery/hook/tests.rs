//! The hook's state table, driven through its transitions directly: no
//! queue, no network, no database.

use std::sync::Arc;
use std::time::Duration;

use super::concurrency::{ConcurrencyLimit, Signal};
use super::settings::HookSettings;
use super::{Admission, HookRuntime, ParkReason, ParkSize, ParkedBound, ParkedLimits, Reservation};
use crate::delivery::ParkedSize;
use crate::events::WebhookRow;
use crate::registry::{Webhook, WebhookState};

pub(super) fn hook(state: WebhookState) -> Arc<Webhook> {
    hook_at(state, "http://127.0.0.1:9/")
}

fn hook_at(state: WebhookState, url: &str) -> Arc<Webhook> {
    let row = [
        ("webhook_id", "7"),
        ("name", "h"),
        ("events", "*"),
        ("target_url", url),
        ("type", "webhook"),
        ("state", &(state as i16).to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), Some(v.to_owned())))
    .collect();
    Arc::new(Webhook::from_row(&WebhookRow(row)).expect("a valid hook"))
}

fn live() -> HookRuntime {
    HookRuntime::new(hook(WebhookState::Active), ConcurrencyLimit::fixed(4), None)
}

fn paused() -> Arc<HookSettings> {
    Arc::new(HookSettings {
        paused: true,
        ..HookSettings::default()
    })
}

#[tokio::test]
async fn a_live_hook_queues_and_parks_only_when_behind_or_paused() {
    let runtime = live();
    assert_eq!(runtime.admit(false).await, (Admission::Queue, false));
    assert_eq!(runtime.parking().await, None);
    // Behind: parks for its backlog from now on, and the caller starts the
    // replayer once.
    assert_eq!(
        runtime.admit(true).await,
        (Admission::Park(ParkReason::Backlog), true)
    );
    assert_eq!(
        runtime.admit(false).await,
        (Admission::Park(ParkReason::Backlog), false)
    );
    assert!(runtime.is_parking_now());

    let runtime = live();
    assert!(!runtime.is_parking_now());
    runtime.set_settings(paused());
    assert_eq!(
        runtime.admit(false).await,
        (Admission::Park(ParkReason::Paused), false)
    );
}

#[tokio::test]
async fn a_pause_names_itself_over_an_earlier_reason() {
    let runtime = HookRuntime::new(
        hook(WebhookState::Active),
        ConcurrencyLimit::fixed(4),
        Some(ParkReason::Backlog),
    );
    runtime.set_settings(paused());
    assert_eq!(
        runtime.admit(false).await,
        (Admission::Park(ParkReason::Paused), false)
    );
    assert_eq!(runtime.parking().await, Some(ParkReason::Backlog));
}

#[tokio::test]
async fn a_hook_never_goes_live_while_an_event_is_on_its_way_to_the_table() {
    let runtime = live();
    let (admission, _) = runtime.admit(true).await;
    assert_eq!(admission, Admission::Park(ParkReason::Backlog));
    // The event admitted for parking is not written yet.
    let went_live = runtime
        .go_live_if_caught_up(async { Ok(0) })
        .await
        .expect("counted");
    assert!(!went_live);
    runtime.park_settled();
    let went_live = runtime
        .go_live_if_caught_up(async { Ok(0) })
        .await
        .expect("counted");
    assert!(went_live);
    assert_eq!(runtime.parking().await, None);
}

#[tokio::test]
async fn a_hook_with_parked_events_or_queued_ones_stays_parking() {
    let runtime = live();
    runtime.park(ParkReason::TooManyErrors).await;
    let still_parked = runtime.go_live_if_caught_up(async { Ok(3) }).await;
    assert!(!still_parked.expect("counted"));
    runtime.queued();
    assert!(!runtime
        .go_live_if_caught_up(async { Ok(0) })
        .await
        .expect("counted"));
    runtime.dequeued();
    assert!(runtime
        .go_live_if_caught_up(async { Ok(0) })
        .await
        .expect("counted"));
}

#[tokio::test]
async fn a_trip_is_said_once_and_cleared_by_activation_with_its_errors() {
    let runtime = live();
    assert_eq!(runtime.record_failure(), 1);
    assert_eq!(runtime.record_failure(), 2);
    assert!(runtime.trip());
    assert!(!runtime.trip(), "the second trip is not news");
    assert!(runtime.must_stop_sending());
    runtime.park(ParkReason::TooManyErrors).await;
    // Activation clears the trip and the count, and says there is
    // something to replay.
    assert!(runtime.activate().await);
    assert!(!runtime.is_tripped());
    assert_eq!(runtime.record_failure(), 1);
}

#[tokio::test]
async fn a_410_drops_until_activation() {
    let runtime = live();
    assert!(runtime.mark_gone());
    assert!(!runtime.mark_gone());
    assert!(runtime.is_gone());
    assert!(!runtime.may_replay());
    assert!(!runtime.activate().await, "nothing was parked");
    assert!(!runtime.is_gone());
}

#[tokio::test]
async fn the_parked_limit_stops_the_hook_until_activation() {
    let runtime = live();
    runtime.stop_at_parked_limit();
    assert!(runtime.is_stopped());
    runtime.activate().await;
    assert!(!runtime.is_stopped());
}

#[tokio::test]
async fn a_removed_hook_is_stopped_until_its_row_comes_back() {
    let runtime = live();
    runtime.remove();
    assert!(runtime.is_stopped());
    runtime.row_changed(hook(WebhookState::Active));
    assert!(!runtime.is_stopped());
    runtime.row_changed(hook(WebhookState::Stopped));
    assert!(runtime.is_stopped(), "Stopped takes no events");
}

/// A hook whose adaptive limit slow start grew by `answers` past INITIAL
/// (8), delivering to `url`.
fn grown(url: &str, answers: usize) -> HookRuntime {
    let runtime = HookRuntime::new(
        hook_at(WebhookState::Active, url),
        ConcurrencyLimit::adaptive(512),
        None,
    );
    runtime.held_back(1_000);
    for _ in 0..answers {
        runtime.record_attempt(Signal::Answered(Duration::ZERO));
    }
    assert_eq!(runtime.concurrency_limit(), 8 + answers);
    runtime
}

#[test]
fn a_target_at_another_origin_gets_a_new_hooks_concurrency_limit() {
    // A new path on the same origin (the default port spelled out or not)
    // keeps what the limit learned of its servers.
    let runtime = grown("http://example.com/hook", 3);
    runtime.row_changed(hook_at(
        WebhookState::Active,
        "http://example.com:80/v2/hook",
    ));
    assert_eq!(runtime.concurrency_limit(), 11);
    // Another host, port or scheme starts it afresh.
    for moved in [
        "http://example.net/hook",
        "http://example.com:8080/hook",
        "https://example.com/hook",
    ] {
        let runtime = grown("http://example.com/hook", 3);
        runtime.set_current(hook_at(WebhookState::Active, moved));
        assert_eq!(runtime.concurrency_limit(), 8, "{moved}");
    }
    // An answer to a request sent to the old target does not count toward
    // the new one's limit; one sent after the change does.
    let runtime = grown("http://example.com/hook", 3);
    runtime.row_changed(hook_at(WebhookState::Active, "http://example.net/hook"));
    runtime.held_back(1_000);
    runtime.record_attempt(Signal::Answered(Duration::from_secs(1)));
    assert_eq!(runtime.concurrency_limit(), 8);
    runtime.record_attempt(Signal::Answered(Duration::ZERO));
    assert_eq!(runtime.concurrency_limit(), 9);
}

#[tokio::test]
async fn one_replayer_at_a_time_and_it_goes_on_when_reactivated_meanwhile() {
    let runtime = live();
    assert!(runtime.claim_replayer());
    assert!(!runtime.claim_replayer(), "one runs already");
    // Live again: the ending replayer stops.
    assert!(!runtime.replayer_ending().await);
    assert!(runtime.claim_replayer());
    // Still parking and Active: it goes on, holding the claim.
    runtime.park(ParkReason::Backlog).await;
    assert!(runtime.replayer_ending().await);
    assert!(!runtime.claim_replayer());
}

/// Events of `body` bytes without Properties.
fn plain(n: usize, body: i64) -> Vec<ParkSize> {
    vec![
        ParkSize {
            body,
            properties: None,
        };
        n
    ]
}

#[tokio::test]
async fn parking_reserves_room_under_the_limit_once_counted_from_the_table() {
    let runtime = live();
    let limits = ParkedLimits {
        events: 10,
        bytes: i64::MAX,
    };
    assert_eq!(
        runtime.reserve_parked(&plain(5, 1), limits),
        Reservation::default(),
        "not counted yet"
    );
    assert_eq!(runtime.parked(), -1);
    runtime.set_parked(ParkedSize {
        events: 2,
        bytes: 2,
    });
    assert_eq!(
        runtime.reserve_parked(&plain(5, 1), limits).counted.len(),
        5
    );
    // Only the room left under the limit, however much is wanted; the
    // hook is then at its bound.
    let last = runtime.reserve_parked(&plain(5, 1), limits);
    assert_eq!(
        (last.counted.len(), last.full),
        (3, Some(ParkedBound::Events))
    );
    assert!(runtime
        .reserve_parked(&plain(1, 1), limits)
        .counted
        .is_empty());
    assert_eq!((runtime.parked(), runtime.parked_bytes()), (10, 10));
    runtime.parked_removed(20, 20);
    assert_eq!((runtime.parked(), runtime.parked_bytes()), (0, 0));
}

#[tokio::test]
async fn the_byte_bound_grants_events_in_order_while_they_fit_and_counts_properties_once_per_version(
) {
    let runtime = live();
    runtime.set_parked(ParkedSize::default());
    let limits = ParkedLimits {
        events: 1000,
        bytes: 10_000,
    };
    let with = |digest: u8, body: i64| ParkSize {
        body,
        properties: Some(([digest; 32], 3000)),
    };
    // The first event of a version counts its Properties, the next of the
    // same version only its body; a new version counts them again.
    let reserved = runtime.reserve_parked(
        &[with(1, 100), with(1, 100), with(2, 100), with(2, 100)],
        limits,
    );
    assert_eq!(reserved.counted, [3100, 100, 3100, 100]);
    assert_eq!(reserved.full, None);
    assert_eq!(runtime.parked_bytes(), 6400);
    // 3600 bytes are left: a large event does not fit and the hook is
    // full, though a smaller one after it would (order: no event parks
    // after one that was dropped).
    let reserved = runtime.reserve_parked(&[with(2, 3000), with(3, 4000), with(2, 10)], limits);
    assert_eq!(reserved.counted, [3000]);
    assert_eq!(reserved.full, Some(ParkedBound::Bytes));
    assert_eq!((runtime.parked(), runtime.parked_bytes()), (5, 9400));
    // Delivered: what they counted is free again.
    runtime.parked_removed(2, 3200);
    assert_eq!((runtime.parked(), runtime.parked_bytes()), (3, 6200));
    assert_eq!(
        runtime.reserve_parked(&[with(2, 3000)], limits).counted,
        [3000]
    );
}

#[tokio::test]
async fn waits_end_at_a_change_they_must_look_at() {
    let runtime = Arc::new(live());
    let waiting = {
        let runtime = Arc::clone(&runtime);
        tokio::spawn(async move { runtime.changed().await })
    };
    // Let the waiter register before the change.
    tokio::task::yield_now().await;
    while !waiting.is_finished() {
        runtime.trip();
        tokio::task::yield_now().await;
    }
    waiting.await.expect("the wait ended");
}
