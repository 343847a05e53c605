//! The runs of events the programs keep per CPU before adding them to the maps (see
//! `PendingCache` and `PendingWrite`): read beside the maps, merged into their entries.

use rustc_hash::FxHashMap as HashMap;

use memtrace_common::{
    CacheCounters, CacheKey, PendingCache, PendingWrite, WriterKey, WriterStats,
};

/// Adds `later`'s counts to `into`, as if its events came after `into`'s.
pub(crate) fn merge(into: &mut CacheCounters, later: &CacheCounters) {
    // `later`'s own largest excess counts from where `into` left off (the programs fold runs
    // into entries the same way).
    if let Some(deficit) = into.deficit_after_run(later.max_deficit) {
        into.max_deficit = deficit;
    }
    into.pages_added += later.pages_added;
    into.pages_removed += later.pages_removed;
    into.pages_accessed += later.pages_accessed;
    if later.inode != 0 && (later.pages_added > 0 || into.inode == 0) {
        into.inode = later.inode;
        into.generation = later.generation;
    }
}

/// One entry per key: map entries first, then the runs, in the order given.
pub(crate) fn merge_entries(
    entries: impl IntoIterator<Item = (CacheKey, CacheCounters)>,
) -> Vec<(CacheKey, CacheCounters)> {
    let mut merged: HashMap<CacheKey, CacheCounters> = HashMap::default();
    for (key, counters) in entries {
        match merged.entry(key) {
            std::collections::hash_map::Entry::Occupied(mut entry) => {
                merge(entry.get_mut(), &counters)
            }
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert(counters);
            }
        }
    }
    merged.into_iter().collect()
}

/// The runs of one half that hold events, as map entries.
pub(crate) fn cache_runs(
    slots: &[PendingCache],
) -> impl Iterator<Item = (CacheKey, CacheCounters)> + '_ {
    slots
        .iter()
        .filter(|run| run.is_whole())
        .filter(|run| run.inode != 0 && (run.pages_added > 0 || run.pages_removed > 0))
        .map(|run| (run.key, run.counters()))
}

/// The writers' runs that hold writes, as map entries.
pub(crate) fn write_runs(
    slots: &[PendingWrite],
) -> impl Iterator<Item = (WriterKey, WriterStats)> + '_ {
    slots
        .iter()
        .filter(|run| run.is_whole())
        .filter(|run| run.inode != 0 && run.stats.calls > 0)
        .map(|run| (run.key, run.stats))
}

/// Adds a writer's figures to another's for the same key (the name is the first one's).
pub(crate) fn merge_writes(into: &mut WriterStats, more: &WriterStats) {
    into.bytes += more.bytes;
    into.calls += more.calls;
    if into.comm == [0; 16] {
        into.comm = more.comm;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(added: u64, removed: u64, max_deficit: u64) -> CacheCounters {
        CacheCounters {
            pages_added: added,
            pages_removed: removed,
            inode: 1,
            max_deficit,
            generation: 0,
            pages_accessed: 0,
        }
    }

    #[test]
    fn a_run_that_removes_more_than_the_entry_held_raises_the_deficit() {
        // The entry added 10 and removed 2; the run then removed 12 more: 4 past what was added.
        let mut entry = counters(10, 2, 0);
        merge(&mut entry, &counters(0, 12, 12));
        assert_eq!((entry.pages_added, entry.pages_removed), (10, 14));
        assert_eq!(entry.max_deficit, 4);
    }

    #[test]
    fn a_run_within_what_the_entry_held_keeps_the_deficit() {
        let mut entry = counters(10, 0, 0);
        merge(&mut entry, &counters(5, 8, 3));
        assert_eq!(entry.max_deficit, 0);
        assert_eq!((entry.pages_added, entry.pages_removed), (15, 8));
    }

    #[test]
    fn entries_of_one_key_are_summed_once() {
        let key = CacheKey {
            cgroup_id: 7,
            ino: 9,
            dev: 1,
            hierarchy: 0,
        };
        let merged = merge_entries([(key, counters(4, 0, 0)), (key, counters(2, 1, 0))]);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].1.pages_added, 6);
        assert_eq!(merged[0].1.pages_removed, 1);
    }
}
