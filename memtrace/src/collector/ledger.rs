//! The ledger: what the kernel counted, moved into userspace at each drain (flip) of the
//! (memcg, file) map, with the cache found by measuring, the per-memcg overflow and the
//! writers' figures; and the pruning that keeps it as small as what is still cached.

use std::{collections::BTreeMap, sync::Arc};

use itertools::{EitherOrBoth, Itertools};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use memtrace_common::{CacheCounters, CacheKey, OverflowCounters, WriterKey, WriterStats};

use super::{
    naming::{record_identities, InodeIdentities, InodeIdentity},
    observations::{order, InReportOrder, Observations},
};
use crate::{
    loader::{runs::merge_writes, Drained, Tracer},
    model::{aggregate::OVERFLOW_INO, KernelStats, Observation, SeededCache},
};

/// What the kernel counted since start, per (memcg, file), kept in userspace between drains.
#[derive(Default)]
pub(super) struct Ledger {
    /// Every (memcg, file) drained from the kernel so far: its counters since memtrace
    /// started, and the drain (flip) in which they last changed.
    /// In report order, so a report's observations come out sorted.
    totals: BTreeMap<InReportOrder<CacheKey>, Tally>,
    /// Cache found by measuring (at start, or when traced counts could not explain it), in
    /// report order: joined with the traced keys in one pass.
    pub(super) seeds: BTreeMap<InReportOrder<CacheKey>, SeededCache>,
    /// Drains so far.
    flips: u64,
    /// Per memcg (hierarchy, cgroup id), runs the map had no room for (read at each drain).
    overflow: HashMap<(u32, u64), OverflowCounters>,
    /// Per memcg, pages taken out of its overflow by keys pruned since (see `prune`).
    overflow_taken: HashMap<(u32, u64), u64>,
    /// Each file's inode as the drains showed it last (see [`InodeIdentities`]).
    identities: Arc<HashMap<(u32, u64), InodeIdentity>>,
    /// Files to measure at the next snapshot.
    pub(super) pending_measure: std::collections::HashSet<(u32, u64)>,
    /// Map entries userspace failed to read, since start.
    map_read_errors: u64,
    /// The most keys a drained half held since the last report.
    entries_since_report: usize,
    /// What writers wrote up to the last drain, moved out of the kernel map; in report order,
    /// so they join a report's sorted observations in one pass.
    pub(super) writer_totals: BTreeMap<InReportOrder<WriterKey>, WriterStats>,
    /// Per key, the `max_deficit` of the entry being counted into that a measurement already
    /// answered.
    pub(super) deficits_handled: HashMap<CacheKey, u64>,
}

/// What a prune kept: the files and memcgs still reported, whose names must stay.
pub(super) struct Kept {
    pub(super) files: HashSet<(u32, u64)>,
    pub(super) cgroups: HashSet<(u32, u64)>,
}

/// Keys are pruned every this many drains...
const PRUNE_EVERY: u64 = 8;
/// ...once nothing of them is resident and they have not changed for this many drains.
const PRUNE_AFTER_IDLE_FLIPS: u64 = 4;

/// A key's counters since start, and the drain in which they last changed: 40 bytes, as there
/// may be a hundred thousand.
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    pages_added: u64,
    pages_removed: u64,
    pages_accessed: u64,
    /// The inode's kernel address, and its `i_generation` (32 bits in the kernel).
    inode: u64,
    generation: u32,
    /// Drains are counted in 64 bits; 32 of them last 136 years at one a second.
    changed_at: u32,
}

impl Tally {
    fn counters(&self) -> CacheCounters {
        CacheCounters {
            pages_added: self.pages_added,
            pages_removed: self.pages_removed,
            pages_accessed: self.pages_accessed,
            inode: self.inode,
            generation: u64::from(self.generation),
            ..CacheCounters::default()
        }
    }
}

/// Adds what an undrained half holds for a key to its totals.
fn add_counting(sum: &mut CacheCounters, entry: &CacheCounters) {
    sum.pages_added += entry.pages_added;
    sum.pages_removed += entry.pages_removed;
    sum.pages_accessed += entry.pages_accessed;
    sum.max_deficit = entry.max_deficit;
    if entry.inode != 0 {
        sum.inode = entry.inode;
        sum.generation = entry.generation;
    }
}

/// A drained entry's counts added to a tally, as of drain `flips`.
fn add_drained(tally: &mut Tally, entry: &CacheCounters, flips: u32) {
    tally.pages_added += entry.pages_added;
    tally.pages_removed += entry.pages_removed;
    tally.pages_accessed += entry.pages_accessed;
    if entry.inode != 0 {
        tally.inode = entry.inode;
        // `i_generation` is 32 bits: the kernel's value survives the cut whole.
        tally.generation = entry.generation as u32;
    }
    tally.changed_at = flips;
}

/// Adds `items` to `map`: merged into the entries it has, made `new` for keys it lacks. Many
/// new keys at once (a burst of new files) are built into the map whole: inserted one by one
/// in the order a drain gives them, the map's nodes stay a third empty on average (half, in
/// order), some 10 MiB at 100,000 files.
fn upsert<K: Ord, I, V>(
    map: &mut BTreeMap<K, V>,
    items: impl IntoIterator<Item = (K, I)>,
    mut new: impl FnMut(I) -> V,
    mut merge: impl FnMut(&mut V, I),
) {
    let mut fresh = Vec::new();
    for (key, item) in items {
        match map.get_mut(&key) {
            Some(into) => merge(into, item),
            None => fresh.push((key, new(item))),
        }
    }
    if fresh.len() > BULK_FROM.max(map.len() / 8) {
        let mut built: BTreeMap<K, V> = fresh.into_iter().collect();
        map.append(&mut built);
    } else {
        map.extend(fresh);
    }
}

/// New keys in one drain from which they are built into the map whole (see [`upsert`]).
const BULK_FROM: usize = 1024;

impl Ledger {
    /// Empties the half of the kernel map left at the previous flip into the totals and queues
    /// files whose old cache is seen leaving. Returns the files that the half shows holding
    /// cache, with their `i_generation`, to be named before a report needs them.
    ///
    /// A drain between reports (`early`: a burst taken in as it comes) does not advance the
    /// clock pruning goes by, so a file is forgotten only after reports have shown it idle.
    pub(super) fn empty_drained_half(
        &mut self,
        tracer: &mut Tracer,
        early: bool,
    ) -> Vec<(u32, u64, u32)> {
        let mut errors = 0;
        let began = std::time::Instant::now();
        let Drained {
            cache: drained,
            writers,
        } = tracer.flip_and_drain(&mut errors);
        let emptied = began.elapsed();
        upsert(
            &mut self.writer_totals,
            writers
                .into_iter()
                .map(|(key, written)| (InReportOrder(key), written)),
            |written| written,
            |into, written| merge_writes(into, &written),
        );
        self.entries_since_report = self.entries_since_report.max(drained.len());
        if !early {
            self.flips += 1;
        }
        // Read before deciding what to measure: a removal the overflow explains is not
        // measured, and a stale overflow would not explain this drain's removals.
        self.overflow = tracer
            .read_overflow(&mut errors)
            .into_iter()
            .map(|(key, counters)| ((key.hierarchy, key.cgroup_id), counters))
            .collect();
        let mut taken = None;
        for &(key, entry) in &drained {
            let handled = self.deficits_handled.remove(&key).unwrap_or(0);
            // Removals a measurement already answered are in its seed: only the rest count.
            if entry.max_deficit.saturating_sub(handled) > self.known_resident(&key)
                && !self.overflow_holds(
                    &key,
                    taken.get_or_insert_with(|| self.taken_from_overflow()),
                )
            {
                self.pending_measure.insert((key.dev, key.ino));
            }
        }
        let flips = self.flips as u32;
        upsert(
            &mut self.totals,
            drained
                .iter()
                .map(|(key, entry)| (InReportOrder(*key), entry)),
            |entry| {
                let mut tally = Tally::default();
                add_drained(&mut tally, entry, flips);
                tally
            },
            |tally, entry| add_drained(tally, entry, flips),
        );
        record_identities(Arc::make_mut(&mut self.identities), &drained);
        self.map_read_errors += errors;
        log::debug!(
            "drain: {} keys emptied in {emptied:?}, tallied in {:?}",
            drained.len(),
            began.elapsed() - emptied
        );
        drained
            .iter()
            .filter(|(_, entry)| entry.inode != 0 && entry.pages_added > entry.pages_removed)
            // `i_generation` is 32 bits: the kernel's value survives the cut whole.
            .map(|(key, entry)| (key.dev, key.ino, entry.generation as u32))
            .collect()
    }

    /// What the halves still counting hold now; files whose old cache is seen leaving are
    /// queued for measuring. Fills the map's figures of `stats`.
    pub(super) fn read_counting(
        &mut self,
        tracer: &Tracer,
        stats: &mut KernelStats,
    ) -> Vec<(CacheKey, CacheCounters)> {
        let mut errors = 0;
        let counting = tracer.read_counting(&mut errors);
        self.map_read_errors += errors;
        stats.map_read_errors = self.map_read_errors;
        // A drained half held a whole interval's keys (or the part of a burst drained early):
        // the most any held since the last report is the map's real use.
        stats.map_entries = self.entries_since_report.max(counting.len()) as u64;
        self.entries_since_report = 0;
        let mut taken = None;
        for (key, entry) in &counting {
            let handled = self.deficits_handled.get(key).copied().unwrap_or(0);
            if entry.max_deficit.saturating_sub(handled) > self.known_resident(key)
                && !self
                    .overflow_holds(key, taken.get_or_insert_with(|| self.taken_from_overflow()))
            {
                self.pending_measure.insert((key.dev, key.ino));
            }
        }
        counting
    }

    /// What the halves being counted into hold now, counting failed reads; nothing queued,
    /// no figures filled.
    pub(super) fn peek_counting(&mut self, tracer: &Tracer) -> Vec<(CacheKey, CacheCounters)> {
        tracer.read_counting(&mut self.map_read_errors)
    }

    /// Each file's inode as the drains showed it last, for naming files between reports.
    pub(super) fn drained_identities(&self) -> InodeIdentities {
        InodeIdentities {
            drained: Arc::clone(&self.identities),
            counting: HashMap::default(),
        }
    }

    /// Where a file's inode is, as the census found it, for a file the drains have not shown.
    pub(super) fn remember_inode(&mut self, file: (u32, u64), identity: InodeIdentity) {
        Arc::make_mut(&mut self.identities)
            .entry(file)
            .or_insert(identity);
    }

    /// Every key's counters since start (the totals plus `counting`, what the half still
    /// counting holds), as sorted observations, and each file's inode as last seen.
    pub(super) fn observe(
        &self,
        counting: Vec<(CacheKey, CacheCounters)>,
        shmem_devs: &std::collections::HashSet<u32>,
    ) -> (Observations, InodeIdentities) {
        // Each file's inode as last seen: the drains' (kept up to date by each drain), then
        // the half still counting, newer than any.
        let mut counting_identities = HashMap::default();
        record_identities(&mut counting_identities, &counting);
        let identities = InodeIdentities {
            drained: Arc::clone(&self.identities),
            counting: counting_identities,
        };
        // Every key's totals plus what the undrained halves add, built as one list (the
        // undrained halves hold few keys; the totals may hold a hundred thousand). Only
        // removals of shmem pages are traced: their files are measured instead.
        let mut counting: HashMap<CacheKey, CacheCounters> = counting.into_iter().collect();
        let mut observations =
            Observations::with_capacity(self.totals.len() + counting.len() + self.seeds.len());
        // Keys only the undrained halves hold (their counters are all there is) are merged in
        // order with the totals', so the list comes out sorted.
        let totals = &self.totals;
        let mut only_counting: Vec<(CacheKey, CacheCounters)> = Vec::new();
        counting.retain(|key, entry| {
            let known = totals.contains_key(&InReportOrder(*key));
            if !known {
                only_counting.push((*key, *entry));
            }
            known
        });
        only_counting.sort_unstable_by_key(|(key, _)| order(key));
        let summed = totals.iter().map(|(InReportOrder(key), tally)| {
            let mut sum = tally.counters();
            if let Some(entry) = counting.get(key) {
                add_counting(&mut sum, entry);
            }
            (*key, sum)
        });
        let traced = summed.merge_by(only_counting, |x, y| order(&x.0) <= order(&y.0));
        // Then the seeds, in the same order: one pass, not a lookup per key.
        let seeds = self
            .seeds
            .iter()
            .map(|(InReportOrder(key), seeded)| (*key, seeded));
        for joined in traced.merge_join_by(seeds, |x, y| order(&x.0).cmp(&order(&y.0))) {
            let observation = match joined {
                EitherOrBoth::Left((key, counters)) => Observation::traced(key, counters),
                EitherOrBoth::Both((key, counters), (_, seeded)) => Observation {
                    seeded: Some(Box::new(*seeded)),
                    ..Observation::traced(key, counters)
                },
                EitherOrBoth::Right((key, seeded)) => Observation::seeded_only(key, seeded),
            };
            if !shmem_devs.contains(&observation.key.dev) {
                observations.push_unique(observation);
            }
        }
        observations.seal();
        self.add_overflow(&mut observations);
        (observations, identities)
    }

    /// Adds, per memcg with runs the map had no room for, one observation for its files not
    /// tracked one by one ([`OVERFLOW_INO`]). Removals its files show that memtrace never saw
    /// added (and no measurement explains) came out of it: they are taken from it, not lost.
    fn add_overflow(&self, observations: &mut Observations) {
        if self.overflow.is_empty() {
            return;
        }
        let mut unexplained: HashMap<(u32, u64), u64> = HashMap::default();
        for observation in &observations.list {
            let cgroup = (observation.key.hierarchy, observation.key.cgroup_id);
            if observation.seeded.is_none() && self.overflow.contains_key(&cgroup) {
                let counters = &observation.counters;
                *unexplained.entry(cgroup).or_default() +=
                    counters.pages_removed.saturating_sub(counters.pages_added);
            }
        }
        for (&(hierarchy, cgroup_id), overflow) in &self.overflow {
            let key = CacheKey {
                cgroup_id,
                ino: OVERFLOW_INO,
                dev: 0,
                hierarchy,
            };
            let cgroup = (hierarchy, cgroup_id);
            let taken = unexplained.get(&cgroup).copied().unwrap_or(0)
                + self.overflow_taken.get(&cgroup).copied().unwrap_or(0);
            observations.insert(Observation::traced(
                key,
                CacheCounters {
                    pages_added: overflow.pages_added,
                    pages_removed: overflow.pages_removed + taken,
                    ..CacheCounters::default()
                },
            ));
        }
    }

    /// What writers wrote since the last drain: the writers map's undrained halves, and the
    /// fallback's runs not yet added to them (what was drained is in `writer_totals`).
    pub(super) fn gather_writers(
        &mut self,
        tracer: &Tracer,
        stats: &mut KernelStats,
    ) -> HashMap<WriterKey, WriterStats> {
        // The map before the runs: a run added to the map in between is missed once, rather
        // than counted twice.
        let mapped = tracer.read_writers(&mut stats.map_read_errors);
        let runs = tracer.writer_runs();
        let mut entries: HashMap<WriterKey, WriterStats> = HashMap::default();
        for (key, value) in mapped.into_iter().chain(runs) {
            entries
                .entry(key)
                .and_modify(|into| merge_writes(into, &value))
                .or_insert(value);
        }
        entries
    }

    /// A key's counters since start: the totals plus `counting`, what the halves not yet
    /// drained hold for it.
    pub(super) fn combined(
        &self,
        key: &CacheKey,
        counting: Option<&CacheCounters>,
    ) -> CacheCounters {
        let mut sum = self
            .totals
            .get(&InReportOrder(*key))
            .map(Tally::counters)
            .unwrap_or_default();
        if let Some(entry) = counting {
            sum.pages_added += entry.pages_added;
            sum.pages_removed += entry.pages_removed;
            sum.pages_accessed += entry.pages_accessed;
        }
        sum
    }

    /// Whether `key`'s memcg's overflow may still hold pages (its files' runs that found the
    /// map full): a file of it that loses pages memtrace never saw added lost them from there,
    /// and measuring it would leave them counted in the overflow too.
    ///
    /// The overflow's own net cannot tell: removals of pages whose additions the map had room
    /// for land in it too, when they find the map full. What bounds it is what it added,
    /// less the removals already taken from it (`taken`, per memcg); past that, a removal
    /// memtrace never saw added is of cache older than memtrace, which measuring finds.
    fn overflow_holds(&self, key: &CacheKey, taken: &HashMap<(u32, u64), u64>) -> bool {
        let cgroup = (key.hierarchy, key.cgroup_id);
        self.overflow
            .get(&cgroup)
            .is_some_and(|o| o.pages_added > taken.get(&cgroup).copied().unwrap_or(0))
    }

    /// Per memcg with an overflow, the removals taken from it so far: those of its files
    /// memtrace never saw added (and no measurement explains), and those of pruned keys. The
    /// same sum `add_overflow` makes, over the drained keys alone.
    fn taken_from_overflow(&self) -> HashMap<(u32, u64), u64> {
        let mut taken = self.overflow_taken.clone();
        if self.overflow.is_empty() {
            return taken;
        }
        for (InReportOrder(key), tally) in &self.totals {
            let cgroup = (key.hierarchy, key.cgroup_id);
            if self.overflow.contains_key(&cgroup) && !self.seeds.contains_key(&InReportOrder(*key))
            {
                *taken.entry(cgroup).or_default() +=
                    tally.pages_removed.saturating_sub(tally.pages_added);
            }
        }
        taken
    }

    /// Pages memtrace knew were resident for `key` from what was drained (and seeded).
    fn known_resident(&self, key: &CacheKey) -> u64 {
        let counters = self
            .totals
            .get(&InReportOrder(*key))
            .map(Tally::counters)
            .unwrap_or_default();
        Observation {
            shmem: false,
            key: *key,
            counters,
            seeded: self.seeds.get(&InReportOrder(*key)).map(|s| Box::new(*s)),
            writers: Vec::new(),
        }
        .resident_pages()
    }

    /// Whether this drain is one that prunes.
    pub(super) fn prune_due(&self) -> bool {
        self.flips.is_multiple_of(PRUNE_EVERY)
    }

    /// Forgets keys with nothing resident that have not changed for a while, so memory stays
    /// flat however many files come and go; their seeds go with them. Returns what is still
    /// reported (with `measured`, the files measured instead of traced), whose names must stay.
    pub(super) fn prune<'a>(&mut self, measured: impl Iterator<Item = &'a CacheKey>) -> Kept {
        let measured: Vec<CacheKey> = measured.copied().collect();
        let flips = self.flips;
        let idle: Vec<CacheKey> = self
            .totals
            .iter()
            .filter(|(InReportOrder(key), tally)| {
                flips.saturating_sub(u64::from(tally.changed_at)) >= PRUNE_AFTER_IDLE_FLIPS
                    && self.known_resident(key) == 0
            })
            .map(|(InReportOrder(key), _)| *key)
            .collect();
        for key in &idle {
            let tally = self.totals.remove(&InReportOrder(*key));
            let seeded = self.seeds.remove(&InReportOrder(*key));
            self.deficits_handled.remove(key);
            // Removals it showed that no addition or measurement explains came out of its
            // memcg's overflow (see `add_overflow`): kept there once the key is gone.
            let cgroup = (key.hierarchy, key.cgroup_id);
            if let (Some(tally), None, true) = (tally, seeded, self.overflow.contains_key(&cgroup))
            {
                *self.overflow_taken.entry(cgroup).or_default() +=
                    tally.pages_removed.saturating_sub(tally.pages_added);
            }
        }
        // What is still reported, by file and by cgroup. Files measured instead of traced
        // (tmpfs/shmem) have no kernel counters: their names stay while they are measured.
        let mut files: HashSet<(u32, u64)> = HashSet::default();
        let mut cgroups: HashSet<(u32, u64)> = HashSet::default();
        files.reserve(self.totals.len());
        for key in self
            .totals
            .keys()
            .map(|k| &k.0)
            .chain(self.seeds.keys().map(|k| &k.0))
            .chain(&measured)
        {
            files.insert((key.dev, key.ino));
            cgroups.insert((key.hierarchy, key.cgroup_id));
        }
        Arc::make_mut(&mut self.identities).retain(|file, _| files.contains(file));
        // Writers of files that are gone from every cgroup go too.
        self.writer_totals
            .retain(|key, _| files.contains(&(key.0.dev, key.0.ino)));
        Kept { files, cgroups }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsert_merges_known_keys_and_adds_new_ones_one_by_one_or_in_bulk() {
        let mut map: BTreeMap<u32, u64> = (0..10).map(|k| (k * 2, 1)).collect();
        // A few new keys: inserted.
        upsert(&mut map, [(2, 5), (3, 7)], |v| v, |into, v| *into += v);
        assert_eq!((map[&2], map[&3], map.len()), (6, 7, 11));
        // A burst of new keys, some known: built in whole, known ones merged.
        upsert(
            &mut map,
            (0..5_000).map(|k| (k * 3 + 100, 1)).chain([(4, 10)]),
            |v| v,
            |into, v| *into += v,
        );
        assert_eq!(map[&4], 11);
        assert_eq!(map.len(), 11 + 5_000);
        assert!(map.keys().zip(map.keys().skip(1)).all(|(a, b)| a < b));
        assert_eq!(map[&(4_999 * 3 + 100)], 1);
    }
}
