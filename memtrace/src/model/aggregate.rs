//! From raw kernel counters to cgroups and their files: seeded cache plus traced changes,
//! grouped, summed and sorted. Names are left empty for the resolvers.

use std::{collections::HashMap, ops::Range};

use memtrace_common::{CacheCounters, CacheKey};

use super::schema::{CgroupUsage, Dev, FileUsage, Provenance, Report, Totals, WriterUsage};

impl Report {
    /// Cache attributed to each cgroup and everything below it, by (hierarchy, path): what
    /// compares with memory.stat, which counts a cgroup's descendants too. Removed cgroups
    /// are left out (their cache is no longer under the path they had).
    pub fn subtree_cached_bytes(&self) -> HashMap<(u32, &str), u64> {
        subtree_sums(
            self.cgroups
                .iter()
                .filter(|c| !c.removed)
                .filter_map(|c| Some((c.hierarchy, c.path.as_deref()?, c.cached_bytes))),
        )
    }
}

/// Each (hierarchy, path)'s bytes summed with those of every path below it: cgroups as
/// memory.stat counts them.
pub fn subtree_sums<'a>(
    cgroups: impl Iterator<Item = (u32, &'a str, u64)>,
) -> HashMap<(u32, &'a str), u64> {
    let mut subtree: HashMap<(u32, &str), u64> = HashMap::new();
    for (hierarchy, path, bytes) in cgroups {
        let mut ancestor = path;
        loop {
            *subtree.entry((hierarchy, ancestor)).or_default() += bytes;
            match ancestor.rfind('/') {
                Some(0) if ancestor != "/" => ancestor = "/",
                Some(i) if i > 0 => ancestor = &ancestor[..i],
                _ => break,
            }
        }
    }
    subtree
}

/// Cache that was resident before tracing began, as found at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeededCache {
    pub pages: u64,
    /// Of those, pages on the active LRU list.
    pub active_pages: u64,
    pub provenance: Provenance,
    /// The kernel counters of the same key when the file was measured: traced changes are
    /// counted from here on, so nothing is counted twice.
    pub baseline: CacheCounters,
}

/// What is known of one (memcg, file): traced counters, seeded cache if found at start, and
/// the processes of that memcg that wrote the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub key: CacheKey,
    pub counters: CacheCounters,
    /// Boxed: most observations have none, and there can be hundreds of thousands.
    pub seeded: Option<Box<SeededCache>>,
    pub writers: Vec<WriterUsage>,
    /// A tmpfs/shmem file: `seeded` holds its measurement at this report, not a seed, and
    /// `counters` are zero (no tracepoint sees its pages arrive).
    pub shmem: bool,
}

impl Observation {
    pub fn traced(key: CacheKey, counters: CacheCounters) -> Self {
        Self {
            writers: Vec::new(),
            key,
            counters,
            seeded: None,
            shmem: false,
        }
    }

    /// A key only a measurement knows: its counters are those the seed started from.
    pub fn seeded_only(key: CacheKey, seeded: &SeededCache) -> Self {
        Self {
            counters: seeded.baseline,
            seeded: Some(Box::new(*seeded)),
            ..Self::traced(key, CacheCounters::default())
        }
    }

    /// Whether this stands for a memcg's files not tracked one by one.
    pub fn is_overflow(&self) -> bool {
        is_overflow_file(self.key.dev, self.key.ino)
    }

    /// Pages this adds to its cgroup's total: its resident pages; for the overflow, its net,
    /// which is below zero when removals found the map full for files whose additions it
    /// had room for (those files' rows then show pages that are gone; the total does not).
    pub fn cgroup_share(&self) -> i64 {
        if self.is_overflow() {
            self.counters.pages_added as i64 - self.counters.pages_removed as i64
        } else {
            self.resident_pages() as i64
        }
    }

    /// Resident pages: seeded + traced since the seed (or since start), never below zero.
    pub fn resident_pages(&self) -> u64 {
        let (base, start) = match self.seeded.as_deref() {
            Some(seed) => (seed.pages, seed.baseline),
            None => (0, CacheCounters::default()),
        };
        let added = self.counters.pages_added.saturating_sub(start.pages_added);
        let removed = self
            .counters
            .pages_removed
            .saturating_sub(start.pages_removed);
        (base + added).saturating_sub(removed)
    }
}

/// The inode number (on device 0) of a memcg's files not tracked one by one: their runs found
/// the (memcg, file) map full and were counted for the memcg alone.
pub const OVERFLOW_INO: u64 = u64::MAX;

/// Whether (dev, ino) stands for a memcg's files not tracked one by one.
pub fn is_overflow_file(dev: u32, ino: u64) -> bool {
    (dev, ino) == (0, OVERFLOW_INO)
}

/// A cgroup's figures, with its files still as observations: all a report needs to sum, sort
/// and cut before any file is built, named or measured, so that a report can be built and
/// written one cgroup at a time.
#[derive(Clone, Debug)]
pub struct CgroupDraft {
    /// Names are left empty for the resolvers; `files` is empty until it is built.
    pub usage: CgroupUsage,
    /// Its files in [`Drafts::observations`], largest first.
    files: Range<usize>,
}

impl CgroupDraft {
    /// Keeps the first (largest) `n` files.
    pub fn truncate_files(&mut self, n: usize) {
        self.files.end = self.files.end.min(self.files.start.saturating_add(n));
    }
}

/// Every cgroup's draft, over one list of observations grouped by cgroup: grouping in place
/// holds a hundred thousand observations once, not twice.
#[derive(Clone, Debug)]
pub struct Drafts {
    observations: Vec<Observation>,
    /// Largest first.
    pub cgroups: Vec<CgroupDraft>,
    page_size: u64,
}

impl Drafts {
    /// Each cgroup with its files built, in order; names left empty.
    pub fn into_usages(self) -> impl Iterator<Item = CgroupUsage> {
        let Self {
            mut observations,
            cgroups,
            page_size,
        } = self;
        cgroups.into_iter().map(move |draft| {
            let files = observations[draft.files]
                .iter_mut()
                .map(|observation| file_usage(observation, page_size))
                .collect();
            CgroupUsage {
                files,
                ..draft.usage
            }
        })
    }
}

/// Groups (memcg, file) observations into cgroups with their files, largest first. Names are
/// left empty for the resolvers.
pub fn aggregate(observations: Vec<Observation>, page_size: u64) -> (Vec<CgroupUsage>, Totals) {
    let (drafts, totals) = draft(observations, page_size);
    (drafts.into_usages().collect(), totals)
}

/// Groups (memcg, file) observations into cgroups, sums and sorts them, largest first, and
/// leaves the files as observations.
pub fn draft(mut observations: Vec<Observation>, page_size: u64) -> (Drafts, Totals) {
    // By cgroup, in place (the collector's list comes sorted by key, which this finds in one
    // pass)...
    observations.sort_unstable_by_key(|o| (o.key.hierarchy, o.key.cgroup_id));
    let mut totals = Totals::default();
    let mut cgroups = Vec::new();
    let mut start = 0;
    while start < observations.len() {
        let (hierarchy, id) = (
            observations[start].key.hierarchy,
            observations[start].key.cgroup_id,
        );
        let len = observations[start..]
            .iter()
            .take_while(|o| o.key.hierarchy == hierarchy && o.key.cgroup_id == id)
            .count();
        // ...then each cgroup's files in the order their figures give: cached, then added,
        // then written bytes.
        let files = &mut observations[start..start + len];
        files.sort_by_cached_key(|o| {
            std::cmp::Reverse((
                o.resident_pages().saturating_mul(page_size),
                o.counters.pages_added.saturating_mul(page_size),
                o.writers.iter().map(|w| w.bytes).sum::<u64>(),
            ))
        });
        let files = &*files;
        let sum = |f: fn(&Observation) -> u64| -> u64 {
            files.iter().map(|o| f(o).saturating_mul(page_size)).sum()
        };
        let cached_bytes = (files
            .iter()
            .map(Observation::cgroup_share)
            .sum::<i64>()
            .max(0) as u64)
            .saturating_mul(page_size);
        let added_bytes = sum(|o| o.counters.pages_added);
        let removed_bytes = sum(|o| o.counters.pages_removed);
        let accessed_bytes = sum(|o| o.counters.pages_accessed);
        totals.cached_bytes += cached_bytes;
        totals.added_bytes += added_bytes;
        totals.removed_bytes += removed_bytes;
        totals.files += len;
        let usage = CgroupUsage {
            id,
            hierarchy,
            path: None,
            removed: false,
            container: None,
            unit: None,
            cached_bytes,
            added_bytes,
            removed_bytes,
            accessed_bytes,
            net_bytes: added_bytes as i64 - removed_bytes as i64,
            file_count: len,
            files: Vec::new(),
        };
        cgroups.push(CgroupDraft {
            usage,
            files: start..start + len,
        });
        start += len;
    }
    cgroups.sort_by(|a, b| {
        let (a, b) = (&a.usage, &b.usage);
        b.cached_bytes
            .cmp(&a.cached_bytes)
            .then(b.added_bytes.cmp(&a.added_bytes))
            .then(a.id.cmp(&b.id))
    });
    totals.cgroups = cgroups.len();
    let drafts = Drafts {
        observations,
        cgroups,
        page_size,
    };
    (drafts, totals)
}

/// One observation as the file the report lists; names left empty.
fn file_usage(observation: &mut Observation, page_size: u64) -> FileUsage {
    let cached_bytes = observation.resident_pages().saturating_mul(page_size);
    let (key, counters, shmem) = (observation.key, observation.counters, observation.shmem);
    // Each observation is built once: what it owns moves into the file.
    let seeded = observation.seeded.take();
    let mut writers = std::mem::take(&mut observation.writers);
    writers.sort_by_key(|w| std::cmp::Reverse(w.bytes));
    let seed = seeded.as_deref().filter(|_| !shmem);
    FileUsage {
        path: None,
        host_path: None,
        path_hex: None,
        host_path_hex: None,
        path_complete: true,
        deleted: false,
        layer: None,
        dev: Dev(key.dev),
        ino: key.ino,
        cached_bytes,
        added_bytes: counters.pages_added.saturating_mul(page_size),
        removed_bytes: counters.pages_removed.saturating_mul(page_size),
        accessed_bytes: counters.pages_accessed.saturating_mul(page_size),
        seeded_bytes: seed.map_or(0, |s| s.pages * page_size),
        seeded_active_bytes: seed.map_or(0, |s| s.active_pages * page_size),
        provenance: seeded
            .as_deref()
            .map_or(Provenance::Traced, |s| s.provenance),
        written_bytes: writers.iter().map(|w| w.bytes).sum(),
        write_calls: writers.iter().map(|w| w.calls).sum(),
        write_rate_bytes_per_second: None,
        writers,
        dirty_bytes: None,
        writeback_bytes: None,
        fs: shmem.then_some("tmpfs"),
        // The kernel's `i_generation` is 32 bits: the value survives the cut whole.
        generation: counters.generation as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::{counters, key, traced};

    #[test]
    fn seeded_cache_plus_traced_changes_is_never_double_counted() {
        let seed = SeededCache {
            pages: 100,
            active_pages: 40,
            provenance: Provenance::Exact,
            // 30 pages were added (and traced) before the file was measured: they are inside
            // the 100 already.
            baseline: counters(30, 0),
        };
        let observation = Observation {
            shmem: false,
            key: key(5, 9),
            counters: counters(50, 70),
            seeded: Some(Box::new(seed)),
            writers: Vec::new(),
        };
        // 100 seeded + (50 − 30) added since − (70 − 0) removed since = 50.
        assert_eq!(observation.resident_pages(), 50);
        let (cgroups, _) = aggregate(vec![observation.clone()], 4096);
        let file = &cgroups[0].files[0];
        assert_eq!(file.cached_bytes, 50 * 4096);
        assert_eq!(file.seeded_bytes, 100 * 4096);
        assert_eq!(file.seeded_active_bytes, 40 * 4096);
        assert_eq!(file.provenance, Provenance::Exact);
        let evicted = Observation {
            shmem: false,
            counters: counters(30, 500),
            ..observation
        };
        assert_eq!(evicted.resident_pages(), 0, "never below zero");
    }

    #[test]
    fn groups_files_under_cgroups_and_sorts_by_cache() {
        let entries = vec![
            (key(10, 1), counters(100, 0)),
            (key(10, 2), counters(300, 100)),
            (key(20, 3), counters(1000, 0)),
        ];
        let (cgroups, totals) = aggregate(traced(entries), 4096);
        assert_eq!(cgroups.len(), 2);
        assert_eq!(cgroups[0].id, 20, "largest cgroup first");
        assert_eq!(cgroups[1].path, None, "names are the resolvers' job");
        assert_eq!(cgroups[1].cached_bytes, 300 * 4096);
        assert_eq!(cgroups[1].files[0].ino, 2, "largest file first");
        assert_eq!(cgroups[1].files[0].cached_bytes, 200 * 4096);
        assert_eq!(cgroups[1].files[0].dev, "254:3");
        assert_eq!(totals.files, 3);
        assert_eq!(totals.cached_bytes, 1300 * 4096);
    }

    #[test]
    fn cache_dropped_that_predates_tracing_never_goes_negative() {
        let (cgroups, _) = aggregate(traced(vec![(key(1, 1), counters(2, 10))]), 4096);
        assert_eq!(cgroups[0].files[0].cached_bytes, 0);
        assert_eq!(cgroups[0].net_bytes, -8 * 4096);
        assert_eq!(cgroups[0].path, None);
    }
}
