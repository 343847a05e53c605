//! Kernel counters for unit tests: keys on one device, counters with only pages set.

use memtrace_common::{CacheCounters, CacheKey};

use super::Observation;

pub(crate) fn key(cgroup_id: u64, ino: u64) -> CacheKey {
    CacheKey {
        cgroup_id,
        ino,
        dev: (254 << 20) | 3,
        hierarchy: 4,
    }
}

pub(crate) fn counters(pages_added: u64, pages_removed: u64) -> CacheCounters {
    CacheCounters {
        pages_added,
        pages_removed,
        ..CacheCounters::default()
    }
}

pub(crate) fn traced(entries: Vec<(CacheKey, CacheCounters)>) -> Vec<Observation> {
    entries
        .into_iter()
        .map(|(k, c)| Observation::traced(k, c))
        .collect()
}
