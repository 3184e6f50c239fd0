use std::collections::BTreeSet;

use super::{assignment, shard_of};

fn ids(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn every_hook_has_one_shard_in_range() {
    for id in [i32::MIN, -7, -1, 0, 1, 15, 16, 17, i32::MAX] {
        assert!(shard_of(id, 16) < 16, "{id}");
    }
    assert_eq!(shard_of(17, 16), 1);
    assert_eq!(shard_of(-1, 16), 15);
    assert_eq!(shard_of(5, 1), 0);
}

#[test]
fn every_shard_goes_to_one_live_instance() {
    let live = ids(&["a", "b", "c"]);
    let map = assignment(&live, 64);
    assert_eq!(map.len(), 64);
    for owner in map.values() {
        assert!(live.contains(owner));
    }
    // Spread: no instance is left out of 64 shards.
    let owners: BTreeSet<&String> = map.values().collect();
    assert_eq!(owners.len(), 3);
}

/// An instance joining takes only shards for itself; the others keep
/// theirs. One leaving gives away only its own.
#[test]
fn a_join_or_a_leave_moves_only_the_shards_it_must() {
    let before = assignment(&ids(&["a", "b"]), 256);
    let after = assignment(&ids(&["a", "b", "c"]), 256);
    for (shard, owner) in &after {
        if owner != "c" {
            assert_eq!(&before[shard], owner, "shard {shard} moved between a and b");
        }
    }
    let left = assignment(&ids(&["a", "c"]), 256);
    for (shard, owner) in &after {
        if owner != "b" {
            assert_eq!(
                &left[shard], owner,
                "shard {shard} moved though its owner stayed"
            );
        }
    }
}

#[test]
fn no_instances_no_assignment() {
    assert!(assignment(&BTreeSet::new(), 8).is_empty());
}
