use std::sync::Arc;

use tokio::sync::oneshot;

use super::*;
use crate::store::backfill::ShapeColumn;

fn shape() -> TableShape {
    TableShape {
        oid: 1,
        namespace: "public".into(),
        name: "item".into(),
        replica_identity: b'd',
        columns: vec![ShapeColumn {
            name: "id".into(),
            type_oid: 23,
            type_modifier: -1,
            type_name: "integer".into(),
            is_identity: true,
        }],
        key: vec![0],
        primary_key: vec!["id".into()],
        rows_estimate: None,
        reader: "walhook".into(),
    }
}

struct Announced {
    dispatched: oneshot::Receiver<usize>,
    settled: oneshot::Receiver<()>,
}

fn announce(board: &Board, backfill: i64, chunk: u64, hooks: &[i32]) -> Announced {
    let (dispatched_tx, dispatched) = oneshot::channel();
    let (settled_tx, settled) = oneshot::channel();
    board.announce(
        backfill,
        chunk,
        &shape(),
        hooks,
        ChunkSignals {
            dispatched: dispatched_tx,
            settled: settled_tx,
        },
    );
    board.fill(
        chunk,
        Chunk {
            backfill_id: backfill,
            table: Arc::new(shape()),
            webhook_ids: hooks.to_vec(),
            rows: vec![vec![Some("1".into())], vec![Some("2".into())]],
        },
    );
    Announced {
        dispatched,
        settled,
    }
}

fn mark(board: &Board, backfill: i64, chunk: u64, mark: Mark) -> Watermark {
    Watermark {
        run: board.run(),
        backfill,
        chunk,
        mark,
    }
}

#[test]
fn a_watermark_survives_the_wal_and_other_prefixes_are_not_ours() {
    let board = Board::new();
    let low = mark(&board, 7, 3, Mark::Low);
    let json = low.to_json();
    assert_eq!(
        Watermark::from_message("walhook", json.as_bytes(), Lsn(1)).unwrap(),
        Some(low)
    );
    assert_eq!(
        Watermark::from_message("someone-else", b"{not json", Lsn(1)).unwrap(),
        None
    );
    let err = Watermark::from_message("walhook", b"hello", Lsn(0x16B3748)).unwrap_err();
    assert!(err.to_string().contains("0/16B3748"), "{err}");
    assert!(Watermark::from_message("walhook", &[b' '; 2000], Lsn(1)).is_err());
}

#[test]
fn a_live_change_between_the_watermarks_wins_for_the_hooks_it_reached() {
    let board = Board::new();
    let mut r = Reconciler::new(Arc::clone(&board));
    let _signals = announce(&board, 1, 1, &[10, 11]);
    assert!(r.watermark(&mark(&board, 1, 1, Mark::Low)).is_none());
    r.live_event("public.item", "k1", None, false, 10);
    r.live_event("public.other", "k2", None, false, 11);
    r.live_event("public.item", "k3", Some("k2"), false, 11);
    r.live_event("public.item", "k4", None, false, 99);
    let closed = r
        .watermark(&mark(&board, 1, 1, Mark::High))
        .expect("the chunk at its high watermark");
    assert!(!closed.sends(10, "k1"));
    assert!(closed.sends(11, "k1"), "hook 11 was not sent the change");
    assert!(!closed.sends(11, "k2"), "the old key of a key change");
    assert!(!closed.sends(11, "k3"));
    assert!(closed.sends(10, "k4"));
    assert_eq!(closed.chunk.rows.len(), 2);
}

#[test]
fn changes_outside_the_window_and_a_truncate_inside_it() {
    let board = Board::new();
    let mut r = Reconciler::new(Arc::clone(&board));
    let _signals = announce(&board, 1, 1, &[10, 11]);
    r.live_event("public.item", "k1", None, false, 10);
    r.watermark(&mark(&board, 1, 1, Mark::Low));
    r.live_event("public.item", "", None, true, 11);
    let closed = r.watermark(&mark(&board, 1, 1, Mark::High)).unwrap();
    assert!(closed.sends(10, "k1"), "a change before the low watermark");
    assert!(!closed.sends(11, "k5"), "truncated for hook 11");
    r.live_event("public.item", "k1", None, false, 10);
    assert!(r.window.is_none());
}

#[test]
fn an_earlier_runs_watermarks_are_ignored() {
    let board = Board::new();
    let mut r = Reconciler::new(Arc::clone(&board));
    let _signals = announce(&board, 1, 1, &[10]);
    let mut old = mark(&board, 1, 1, Mark::Low);
    old.run = Uuid::new_v4();
    assert!(r.watermark(&old).is_none());
    assert!(r.window.is_none());
    old.mark = Mark::High;
    assert!(r.watermark(&old).is_none());
    // This run's chunk is still there for its own watermarks.
    r.watermark(&mark(&board, 1, 1, Mark::Low));
    assert!(r.watermark(&mark(&board, 1, 1, Mark::High)).is_some());
}

#[tokio::test]
async fn a_chunk_is_settled_once_the_position_passes_its_high_watermark() {
    let board = Board::new();
    let mut r = Reconciler::new(Arc::clone(&board));
    let mut signals = announce(&board, 1, 1, &[10]);
    r.watermark(&mark(&board, 1, 1, Mark::Low));
    let closed = r.watermark(&mark(&board, 1, 1, Mark::High)).unwrap();
    r.dispatched(closed, 2);
    assert_eq!((&mut signals.dispatched).await.unwrap(), 2);
    r.committed(Lsn(500));
    r.settle(Lsn(499));
    assert!(signals.settled.try_recv().is_err());
    r.settle(Lsn(500));
    signals.settled.await.unwrap();
}

/// Backfill EventIds against vectors computed outside walhook (Python's
/// `uuid.uuid5` in the backfill namespace over
/// `{system identifier}/backfill/{backfill_id}/{row key}/{webhook_id}`, the
/// row key spelled as events spell it: `schema.table`, 0x1F, the key's
/// values as JSON, comma-separated):
/// a chunk read again after an upgrade must carry the ids it had, or
/// receivers get every backfilled row twice under different ids.
#[test]
fn event_ids_match_fixed_vectors() {
    const SYSTEM: &str = "7312345678901234567";
    assert_eq!(
        event_id(SYSTEM, 1, "public.item\u{1f}1", 10).to_string(),
        "b974f112-f6a5-5dcc-816a-06f686568ff4"
    );
    assert_eq!(
        event_id(SYSTEM, 42, "crm.contacts\u{1f}1,\"x\"", 3).to_string(),
        "5ff50654-59be-54ea-b593-74e46fcb78c7"
    );
}

#[test]
fn event_ids_are_stable_per_backfill_row_and_hook() {
    let a = event_id("sys", 1, "public.item\u{1f}1", 10);
    assert_eq!(a, event_id("sys", 1, "public.item\u{1f}1", 10));
    assert_ne!(a, event_id("sys", 2, "public.item\u{1f}1", 10));
    assert_ne!(a, event_id("sys", 1, "public.item\u{1f}2", 10));
    assert_ne!(a, event_id("sys", 1, "public.item\u{1f}1", 11));
}

#[test]
fn a_recorded_table_name_resolves_back_to_that_table() {
    let named = |namespace: &str, name: &str| TableShape {
        namespace: namespace.into(),
        name: name.into(),
        ..shape()
    };
    assert_eq!(named("public", "item").reference(), "public.item");
    assert_eq!(named("public", "Item").reference(), "public.\"Item\"");
    assert_eq!(named("public", "a.b").reference(), "public.\"a.b\"");
    assert_eq!(named("Crm", "x\"y").reference(), "\"Crm\".\"x\"\"y\"");
    assert_eq!(named("s", "1st").reference(), "s.\"1st\"");
}
