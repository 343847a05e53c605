//! The observations of one report: one per (memcg, file), in a vector sorted as the report
//! groups them.

use memtrace_common::{CacheCounters, CacheKey, WriterKey, WriterStats};
use rustc_hash::FxHashMap as HashMap;

use crate::model::{Comm, Observation, WriterUsage};

/// One observation per key, in a vector sorted by key: a hash map of whole observations would
/// hold a hundred thousand of them in room for twice as many, and an index beside the vector
/// would cost as much again. The traced keys, each once, are pushed first and sorted
/// ([`Self::seal`]); the few keys added after (seeds, shmem files, writers of files cached
/// elsewhere) go at the end with a small index of their own.
pub(super) struct Observations {
    pub(super) list: Vec<Observation>,
    /// `list[..sorted]` is sorted by [`order`].
    sorted: usize,
    /// Where the keys after `sorted` are.
    added: HashMap<CacheKey, usize>,
}

/// The order of [`Observations`]: by cgroup, then file, as the report groups them.
pub(super) fn order(key: &CacheKey) -> (u32, u64, u32, u64) {
    (key.hierarchy, key.cgroup_id, key.dev, key.ino)
}

/// A key that sorts as a report groups: by cgroup, then file (then writer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct InReportOrder<K>(pub(super) K);

impl Ord for InReportOrder<CacheKey> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        order(&self.0).cmp(&order(&other.0))
    }
}

impl PartialOrd for InReportOrder<CacheKey> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for InReportOrder<WriterKey> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let writer_order = |w: &WriterKey| (w.hierarchy, w.cgroup_id, w.dev, w.ino, w.tgid);
        writer_order(&self.0).cmp(&writer_order(&other.0))
    }
}

impl PartialOrd for InReportOrder<WriterKey> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Observations {
    pub(super) fn with_capacity(capacity: usize) -> Self {
        Self {
            list: Vec::with_capacity(capacity),
            sorted: 0,
            added: HashMap::default(),
        }
    }

    /// Adds the observation of a key not yet added (before [`Self::seal`]).
    pub(super) fn push_unique(&mut self, observation: Observation) {
        self.list.push(observation);
    }

    /// Sorts what was pushed; lookups and additions may follow.
    pub(super) fn seal(&mut self) {
        self.list.sort_unstable_by_key(|o| order(&o.key));
        self.sorted = self.list.len();
        self.added.clear();
    }

    fn position(&self, key: &CacheKey) -> Option<usize> {
        self.list[..self.sorted]
            .binary_search_by_key(&order(key), |o| order(&o.key))
            .ok()
            .or_else(|| self.added.get(key).copied())
    }

    /// Adds `observation`, replacing the one of its key if there is one.
    pub(super) fn insert(&mut self, observation: Observation) {
        match self.position(&observation.key) {
            Some(at) => self.list[at] = observation,
            None => {
                self.added.insert(observation.key, self.list.len());
                self.list.push(observation);
            }
        }
    }

    pub(super) fn get_or_insert_with(
        &mut self,
        key: CacheKey,
        make: impl FnOnce() -> Observation,
    ) -> &mut Observation {
        let at = match self.position(&key) {
            Some(at) => at,
            None => {
                self.added.insert(key, self.list.len());
                self.list.push(make());
                self.list.len() - 1
            }
        };
        &mut self.list[at]
    }

    /// Adds what a process of a cgroup wrote to a file to that (cgroup, file). Writers given
    /// in report order with a `cursor` are joined in one pass over the sorted keys.
    pub(super) fn add_writer(
        &mut self,
        writer: &WriterKey,
        written: &WriterStats,
        cursor: Option<&mut usize>,
    ) {
        let key = CacheKey {
            cgroup_id: writer.cgroup_id,
            ino: writer.ino,
            dev: writer.dev,
            hierarchy: writer.hierarchy,
        };
        let found = match cursor {
            Some(at) => {
                let sorted = &self.list[..self.sorted];
                while *at < sorted.len() && order(&sorted[*at].key) < order(&key) {
                    *at += 1;
                }
                (*at < sorted.len() && sorted[*at].key == key).then_some(*at)
            }
            None => None,
        };
        // A file this cgroup writes but whose cache is charged elsewhere still gets a row
        // here: the writer is worth knowing.
        let observation = match found {
            Some(at) => &mut self.list[at],
            None => {
                self.get_or_insert_with(key, || Observation::traced(key, CacheCounters::default()))
            }
        };
        // Most files have one writer: no room for four.
        observation.writers.reserve_exact(1);
        observation.writers.push(WriterUsage {
            pid: writer.tgid,
            comm: Comm(written.comm),
            bytes: written.bytes,
            calls: written.calls,
        });
    }

    pub(super) fn into_vec(self) -> Vec<Observation> {
        self.list
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::{counters, key};

    #[test]
    fn observations_find_pushed_and_added_keys_and_keep_one_per_key() {
        let mut observations = Observations::with_capacity(4);
        for (cgroup, ino) in [(9, 1), (2, 7), (5, 3), (2, 1)] {
            observations.push_unique(Observation::traced(key(cgroup, ino), counters(ino, 0)));
        }
        observations.seal();
        // Found among the pushed ones, in whatever order they came.
        observations
            .get_or_insert_with(key(5, 3), || unreachable!("key (5, 3) was pushed"))
            .writers
            .push(WriterUsage {
                pid: 1,
                comm: Comm([0; 16]),
                bytes: 10,
                calls: 1,
            });
        // New keys go at the end, once.
        observations
            .get_or_insert_with(key(3, 3), || Observation::traced(key(3, 3), counters(1, 0)));
        observations.get_or_insert_with(key(3, 3), || unreachable!("key (3, 3) was added"));
        observations.insert(Observation::traced(key(2, 7), counters(70, 0)));
        // Writers in report order join in one pass; one of a file cached elsewhere adds it.
        let written = WriterStats {
            bytes: 5,
            calls: 1,
            comm: [0; 16],
        };
        let mut cursor = 0;
        for (cgroup, ino) in [(2, 1), (4, 4), (9, 1)] {
            let writer = WriterKey {
                cgroup_id: cgroup,
                ino,
                dev: key(0, 0).dev,
                hierarchy: key(0, 0).hierarchy,
                tgid: 77,
                _pad: 0,
            };
            observations.add_writer(&writer, &written, Some(&mut cursor));
        }
        let list = observations.into_vec();
        assert_eq!(list.len(), 6);
        let of = |cgroup, ino| list.iter().find(|o| o.key == key(cgroup, ino)).unwrap();
        assert_eq!(of(2, 1).writers.len(), 1);
        assert_eq!(of(9, 1).writers.len(), 1);
        assert_eq!(of(4, 4).writers.len(), 1);
        assert_eq!(
            of(4, 4).counters.pages_added,
            0,
            "a writer's file cached elsewhere"
        );
        assert_eq!(of(5, 3).writers.len(), 1);
        assert_eq!(of(2, 7).counters.pages_added, 70, "insert replaces");
        assert_eq!(of(3, 3).counters.pages_added, 1);
    }
}
