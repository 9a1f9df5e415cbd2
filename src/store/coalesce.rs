//! Merges a batch's plain charges of one counter into one update, exactly.
//!
//! Under load the Redis batcher sends the updates of many requests in one script call,
//! and many of them charge the same few hot counters (a tenant's, a route's, a global
//! limit). Each update costs Redis a command inside the script; merged, a hot counter
//! costs one `INCRBY` per call however many requests charged it.
//!
//! Only uncapped, non-refund charges of a fixed-window or idle count merge, and only when
//! every update of that key in the batch is one (same kind): such a charge always
//! counts, so applying `h1, h2, ..., hn` one after another leaves the sum and reports
//! `before + h1 + ... + h(j-1)` to the `j`-th, which is what [`Spread::values`] rebuilds
//! from the merged update's single `before`. A window's expiry is set by the charge that
//! creates the key, so the merged update keeps the first charge's TTL; an idle count's
//! expiry follows its last charge, so the merged update takes the last one's. A key that
//! also takes a capped charge, a refund, a read or a sliding or bucket update in the
//! batch is sent as it is, in order, so every decision is the one the sequence would give.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use super::{CounterKind, CounterUpdate};

/// How the values of the merged updates map back to the batch's updates.
#[derive(Debug)]
pub struct Spread(
    /// Per original update: the merged update carrying it and the hits of that update
    /// charged before it; `None` when nothing merged.
    Option<Vec<(usize, u64)>>,
);

impl Spread {
    /// The value each original update would have seen, from the merged updates' values.
    pub fn values(self, merged: Vec<u64>) -> Vec<u64> {
        match self.0 {
            None => merged,
            Some(origin) => origin
                .into_iter()
                .map(|(m, offset)| merged[m].saturating_add(offset))
                .collect(),
        }
    }
}

/// What merging may do with the updates of one key in the batch.
enum Group {
    /// Every update so far is a plain charge of this kind: `first` is the first's index.
    Mergeable {
        idle: bool,
        first: usize,
        count: usize,
    },
    /// Sent as they are.
    Kept,
}

/// `Some(idle)` when `u` is a charge that always counts (uncapped, above zero, not a
/// refund) of a fixed-window (`false`) or idle (`true`) count.
fn plain_charge(u: &CounterUpdate) -> Option<bool> {
    if u.refund || u.hits == 0 {
        return None;
    }
    match u.kind {
        CounterKind::Window { cap: None, .. } => Some(false),
        CounterKind::Idle { cap: None, .. } => Some(true),
        _ => None,
    }
}

/// Merges `updates` (see the module documentation); returns what to send and how to
/// spread its values back over the original updates.
pub fn coalesce(updates: Vec<CounterUpdate>) -> (Vec<CounterUpdate>, Spread) {
    let Some(leaders) = leaders(&updates) else {
        return (updates, Spread(None));
    };
    let mut merged: Vec<CounterUpdate> = Vec::with_capacity(updates.len());
    let mut origin = Vec::with_capacity(updates.len());
    // For a group's first update: where its merged update is now.
    let mut slot_of = vec![usize::MAX; updates.len()];
    for (j, update) in updates.into_iter().enumerate() {
        let leader = leaders[j];
        if leader != j {
            let target = &mut merged[slot_of[leader]];
            // Hits too large to add up start a new merged update (still in order).
            if let Some(sum) = target.hits.checked_add(update.hits) {
                origin.push((slot_of[leader], target.hits));
                target.hits = sum;
                if let CounterKind::Idle { .. } = update.kind {
                    target.kind = update.kind;
                }
                continue;
            }
        }
        slot_of[leader] = merged.len();
        origin.push((merged.len(), 0));
        merged.push(update);
    }
    (merged, Spread(Some(origin)))
}

/// Per update, the index of the first update of its merge group (itself when it is not
/// merged); `None` when no two updates merge.
fn leaders(updates: &[CounterUpdate]) -> Option<Vec<usize>> {
    let mut groups: HashMap<&str, Group, foldhash::fast::RandomState> =
        HashMap::with_capacity_and_hasher(updates.len(), Default::default());
    let mut any = false;
    for (j, u) in updates.iter().enumerate() {
        let charge = plain_charge(u);
        match groups.entry(&u.key) {
            Entry::Vacant(entry) => {
                entry.insert(match charge {
                    Some(idle) => Group::Mergeable {
                        idle,
                        first: j,
                        count: 1,
                    },
                    None => Group::Kept,
                });
            }
            Entry::Occupied(mut entry) => match (entry.get_mut(), charge) {
                (Group::Mergeable { idle, count, .. }, Some(this)) if *idle == this => {
                    *count += 1;
                    any = true;
                }
                (group, _) => *group = Group::Kept,
            },
        }
        // A sliding window reads its previous window's counter too.
        if let CounterKind::Sliding { previous_key, .. } = &u.kind {
            groups.insert(previous_key, Group::Kept);
        }
    }
    if !any {
        return None;
    }
    let leaders = updates
        .iter()
        .enumerate()
        .map(|(j, u)| match groups[u.key.as_str()] {
            Group::Mergeable { first, count, .. } if count > 1 => first,
            _ => j,
        })
        .collect();
    Some(leaders)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies `updates` one after another to plain integers, as the script does for
    /// plain charges, reads and caps: the reference the merged batch must reproduce.
    fn sequential(updates: &[CounterUpdate], counts: &mut HashMap<String, u64>) -> Vec<u64> {
        updates
            .iter()
            .map(|u| {
                let count = counts.entry(u.key.clone()).or_default();
                let before = *count;
                let cap = match u.kind {
                    CounterKind::Window { cap, .. } | CounterKind::Idle { cap, .. } => cap,
                    _ => unreachable!("only counts here"),
                };
                if u.refund {
                    *count -= u.hits.min(*count);
                } else if cap.is_none_or(|cap| before + u.hits <= cap) {
                    *count += u.hits;
                }
                before
            })
            .collect()
    }

    fn merged_values(updates: &[CounterUpdate]) -> (Vec<CounterUpdate>, Vec<u64>) {
        let (merged, spread) = coalesce(updates.to_vec());
        let values = sequential(&merged, &mut HashMap::new());
        (merged, spread.values(values))
    }

    #[test]
    fn charges_of_one_key_become_one_update_and_each_sees_its_value_before() {
        let updates = vec![
            CounterUpdate::window("a", 1, 60),
            CounterUpdate::window("b", 2, 60),
            CounterUpdate::window("a", 3, 59),
            CounterUpdate::window("a", 5, 59),
        ];
        let (merged, values) = merged_values(&updates);
        assert_eq!(
            merged,
            vec![
                CounterUpdate::window("a", 9, 60),
                CounterUpdate::window("b", 2, 60)
            ],
            "the window keeps the first charge's TTL"
        );
        assert_eq!(values, vec![0, 0, 1, 4]);
        assert_eq!(values, sequential(&updates, &mut HashMap::new()));
    }

    #[test]
    fn an_idle_count_takes_the_last_charges_expiry() {
        let updates = vec![
            CounterUpdate::idle("s", 1, 30),
            CounterUpdate::idle("s", 1, 45),
        ];
        let (merged, values) = merged_values(&updates);
        assert_eq!(merged, vec![CounterUpdate::idle("s", 2, 45)]);
        assert_eq!(values, vec![0, 1]);
    }

    #[test]
    fn a_key_with_a_cap_refund_read_or_other_kind_in_the_batch_is_sent_as_it_is() {
        let cases = [
            CounterUpdate::window("a", 1, 60).capped(2),
            CounterUpdate::window("a", 1, 60).refunding(),
            CounterUpdate::window("a", 0, 60),
            CounterUpdate::idle("a", 1, 60),
        ];
        for odd in cases {
            let updates = vec![
                CounterUpdate::window("a", 1, 60),
                odd.clone(),
                CounterUpdate::window("a", 1, 60),
                CounterUpdate::window("b", 1, 60),
                CounterUpdate::window("b", 1, 60),
            ];
            let (merged, spread) = coalesce(updates.clone());
            assert_eq!(merged[..3], updates[..3], "with {odd:?}");
            assert_eq!(merged[3], CounterUpdate::window("b", 2, 60));
            let values = spread.values(sequential(&merged, &mut HashMap::new()));
            assert_eq!(values, sequential(&updates, &mut HashMap::new()));
        }
    }

    #[test]
    fn a_sliding_windows_previous_key_is_never_merged() {
        let sliding = CounterUpdate {
            key: "now".into(),
            hits: 1,
            refund: false,
            kind: CounterKind::Sliding {
                previous_key: "before".into(),
                previous_weight_ppm: 500_000,
                ttl_secs: 120,
                limit: 10,
            },
        };
        let updates = vec![
            CounterUpdate::window("before", 1, 60),
            sliding,
            CounterUpdate::window("before", 1, 60),
        ];
        let (merged, _) = coalesce(updates.clone());
        assert_eq!(merged, updates);
    }

    #[test]
    fn nothing_to_merge_leaves_the_batch_and_its_values_untouched() {
        let updates = vec![
            CounterUpdate::window("a", 1, 60),
            CounterUpdate::window("b", 1, 60),
        ];
        let (merged, spread) = coalesce(updates.clone());
        assert_eq!(merged, updates);
        assert_eq!(spread.values(vec![7, 8]), vec![7, 8]);
    }

    #[test]
    fn hits_too_large_to_add_start_a_new_merged_update_in_order() {
        let updates = vec![
            CounterUpdate::window("a", u64::MAX - 1, 60),
            CounterUpdate::window("a", 1, 60),
            CounterUpdate::window("a", 2, 60),
            CounterUpdate::window("a", 3, 60),
        ];
        let (merged, spread) = coalesce(updates);
        assert_eq!(
            merged,
            vec![
                CounterUpdate::window("a", u64::MAX, 60),
                CounterUpdate::window("a", 5, 60)
            ]
        );
        assert_eq!(spread.values(vec![0, 100]), vec![0, u64::MAX - 1, 100, 102]);
    }
}
