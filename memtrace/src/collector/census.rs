//! The cache that predates memtrace, counted by the kernel itself (see `census` in the kernel
//! crate): every page of every inode of every superblock, per memcg, with nothing opened or
//! mapped. Counts are bracketed by the traced counters, as every measurement is: a (memcg,
//! file) whose counters moved during the census is counted again alone, in a window of
//! microseconds.

use std::{
    collections::{BTreeMap, HashSet},
    time::Instant,
};

use memtrace_common::{CacheCounters, CacheKey, CensusInode, CensusPages};
use rustc_hash::FxHashMap as HashMap;

use super::{naming::InodeIdentity, observations::InReportOrder, Collector};
use crate::{
    loader::census::{Census, PagesWalk},
    model::{Provenance, SeedMethod, SeedSummary, SeededCache},
};

/// `s_magic` of tmpfs and shmem: their files are measured by the shmem scanner, every report.
const TMPFS_MAGIC: u64 = 0x0102_1994;
/// Times a file whose counters move while it is counted is counted again; after that its
/// count is taken within the movement seen (see `settle`).
const RECOUNTS: usize = 3;

/// A file the census found holding pages.
#[derive(Clone, Copy)]
struct Found {
    dev: u32,
    inode: CensusInode,
}

/// What one census found: pages per (memcg, file) of the files walked whole. Kept in flat
/// vectors (a hundred thousand files are some 6 MB here, where hash maps took three times
/// that at the census's peak), sorted by file once counting is done ([`Self::finish`]).
#[derive(Default)]
struct Counted {
    /// Each counted file's pages per memcg; a file's entries are together.
    pages: Vec<(CacheKey, CensusPages)>,
    /// Files whose every page was visited: their memcgs without an entry hold none.
    complete: Vec<Found>,
    lost_pages: u64,
    partial_files: usize,
}

impl Counted {
    fn count(&mut self, census: &Census, found: Found) {
        let counted_before = self.pages.len();
        let pages = &mut self.pages;
        let mut add = |key: CacheKey, counts: CensusPages| match pages.last_mut() {
            // One memcg's folios over several runs of the walk: one entry (the key names the
            // file, so an entry of another file never matches).
            Some((last, sum)) if *last == key => {
                sum.pages += counts.pages;
                sum.dirty += counts.dirty;
                sum.writeback += counts.writeback;
                sum.active += counts.active;
            }
            _ => pages.push((key, counts)),
        };
        match census.pages(&found.inode, found.dev, &mut add) {
            Ok(PagesWalk::Complete { lost_pages }) => {
                self.lost_pages += lost_pages;
                self.complete.push(found);
                return;
            }
            Ok(PagesWalk::Stale) => {}
            Ok(PagesWalk::Partial) => self.partial_files += 1,
            Err(err) => {
                log::debug!("census of {}:{} failed: {err}", found.dev, found.inode.ino);
                self.partial_files += 1;
            }
        }
        // Not walked whole: none of its counts stand.
        self.pages.truncate(counted_before);
    }

    /// Sorts by file, and sums a file's entries of one memcg (folios of memcgs interleaved).
    fn finish(&mut self) {
        self.pages.sort_unstable_by_key(|(key, _)| by_file(key));
        self.pages.dedup_by(|(key, counts), (kept_key, kept)| {
            let same = key == kept_key;
            if same {
                kept.pages += counts.pages;
                kept.dirty += counts.dirty;
                kept.writeback += counts.writeback;
                kept.active += counts.active;
            }
            same
        });
        self.complete
            .sort_unstable_by_key(|found| (found.dev, found.inode.ino));
    }

    /// What the census counted for `key` (nothing: no page). After [`Self::finish`].
    fn pages_of(&self, key: &CacheKey) -> CensusPages {
        self.pages
            .binary_search_by_key(&by_file(key), |(k, _)| by_file(k))
            .map_or_else(|_| CensusPages::default(), |at| self.pages[at].1)
    }

    /// The file (dev, ino) if it was counted whole. After [`Self::finish`].
    fn found(&self, dev: u32, ino: u64) -> Option<Found> {
        self.complete
            .binary_search_by_key(&(dev, ino), |found| (found.dev, found.inode.ino))
            .ok()
            .map(|at| self.complete[at])
    }
}

/// A key's place in file order: a file's memcgs together.
fn by_file(key: &CacheKey) -> (u32, u64, CacheKey) {
    (key.dev, key.ino, *key)
}

impl Collector {
    /// Counts every page-cache page now (but tmpfs's, which the shmem scanner measures) per
    /// (memcg, file) and records it as the cache found at start. `None` where the kernel has
    /// no census programs.
    pub(super) fn census(&mut self) -> Option<SeedSummary> {
        let started = Instant::now();
        let census = self.tracer.census()?;
        let superblocks = match census.superblocks() {
            Ok(superblocks) => superblocks,
            Err(err) => {
                log::warn!("census: {err}; walking directories instead");
                return None;
            }
        };
        let before: HashMap<CacheKey, CacheCounters> = self
            .ledger
            .peek_counting(&self.tracer)
            .into_iter()
            .collect();
        let mut files: Vec<Found> = Vec::new();
        let mut incomplete_superblocks = 0;
        for sb in superblocks.iter().filter(|sb| sb.magic != TMPFS_MAGIC) {
            let mut seen = HashSet::new();
            let walk = census.inodes(sb.sb, |batch| {
                files.extend(
                    batch
                        .iter()
                        .filter(|inode| seen.insert(inode.inode))
                        .map(|&inode| Found { dev: sb.dev, inode }),
                );
            });
            if !walk.is_ok_and(|walk| walk.complete) {
                incomplete_superblocks += 1;
            }
        }
        let files_examined = files.len();
        let mut counted = Counted::default();
        for found in files {
            counted.count(census, found);
        }
        counted.finish();
        let after: HashMap<CacheKey, CacheCounters> = self
            .ledger
            .peek_counting(&self.tracer)
            .into_iter()
            .collect();
        let summary = SeedSummary {
            method: SeedMethod::Census,
            files_examined,
            files_cached: counted.complete.len(),
            cached_bytes: counted.pages.iter().map(|(_, c)| c.pages).sum::<u64>() * self.page_size,
            exact: true,
            unattributed_bytes: counted.lost_pages * self.page_size,
            truncated: incomplete_superblocks > 0,
            not_measurable: counted.partial_files,
            seconds: 0.0,
        };
        self.record_census(counted, &before, &after);
        log::info!(
            "census: {} superblocks, {} files with cache, {} MiB, {} superblocks not walked whole, in {:.2} s",
            superblocks.len(),
            summary.files_cached,
            summary.cached_bytes >> 20,
            incomplete_superblocks,
            started.elapsed().as_secs_f64()
        );
        Some(SeedSummary {
            seconds: started.elapsed().as_secs_f64(),
            ..summary
        })
    }

    /// Seeds every (memcg, file) of the files counted whole. One whose traced counters moved
    /// during the census is counted again alone (see `settle`).
    fn record_census(
        &mut self,
        counted: Counted,
        before: &HashMap<CacheKey, CacheCounters>,
        after: &HashMap<CacheKey, CacheCounters>,
    ) {
        // Every key of a counted file: the memcgs the census found, and those the traced
        // counters name (a file's pages in a memcg may all have gone: it holds none now).
        let mut keys: Vec<CacheKey> = counted
            .pages
            .iter()
            .map(|(key, _)| *key)
            .chain(
                after
                    .keys()
                    .filter(|key| counted.found(key.dev, key.ino).is_some())
                    .copied(),
            )
            .collect();
        keys.sort_unstable_by_key(by_file);
        keys.dedup();
        let pages_of = |map: &HashMap<CacheKey, CacheCounters>, key: &CacheKey| {
            map.get(key).copied().unwrap_or_default().pages()
        };
        let mut seeds = Vec::with_capacity(keys.len());
        for file_keys in keys.chunk_by(|a, b| (a.dev, a.ino) == (b.dev, b.ino)) {
            let Some(found) = counted.found(file_keys[0].dev, file_keys[0].ino) else {
                continue;
            };
            self.ledger.remember_inode(
                (found.dev, found.inode.ino),
                InodeIdentity {
                    inode: found.inode.inode,
                    generation: found.inode.generation,
                },
            );
            let steady = file_keys
                .iter()
                .all(|key| pages_of(before, key) == pages_of(after, key));
            if steady {
                for key in file_keys {
                    let seed = self.seed_of(*key, counted.pages_of(key), after.get(key).copied());
                    seeds.push(seed);
                }
            } else {
                for (key, counts, counting) in settle(&self.tracer, found, file_keys.to_vec()) {
                    let seed = self.seed_of(key, counts, Some(counting));
                    seeds.push(seed);
                }
            }
        }
        // Built whole from sorted seeds, the map's nodes are full; inserted one by one in
        // file order they were left half full (5 MiB more at 100,000 files).
        let mut seeds: BTreeMap<_, _> = seeds.into_iter().collect();
        self.ledger.seeds.append(&mut seeds);
    }

    /// What `key` held, `counts`, as a seed against its counters when counted (`counting`:
    /// the half still counting's, drained totals aside); its dirty pages are its first dirty
    /// measurement.
    fn seed_of(
        &mut self,
        key: CacheKey,
        counts: CensusPages,
        counting: Option<CacheCounters>,
    ) -> (InReportOrder<CacheKey>, SeededCache) {
        self.dirty.counted_at_start(
            key.cgroup_id,
            key.dev,
            key.ino,
            counts.dirty,
            counts.writeback,
        );
        let baseline = self.ledger.combined(&key, counting.as_ref());
        (
            InReportOrder(key),
            SeededCache {
                pages: counts.pages,
                active_pages: counts.active,
                provenance: Provenance::Exact,
                baseline,
            },
        )
    }
}

/// Counts a file whose traced counters moved during the census again, bracketed by its own
/// counters, until they hold still around a count. A file that never holds still (a reader
/// thrashing it) is taken within what moved: the count is set against the middle of the
/// counters before and after it, so it is off by at most half the pages that came or went
/// during one walk of the file. Returns each key's count and the counters it stands against.
fn settle(
    tracer: &crate::loader::Tracer,
    found: Found,
    mut keys: Vec<CacheKey>,
) -> Vec<(CacheKey, CensusPages, CacheCounters)> {
    let Some(census) = tracer.census() else {
        return Vec::new();
    };
    for attempt in 1..=RECOUNTS {
        let Some(before) = tracer.counting_for(&keys) else {
            continue;
        };
        let mut counted = Counted::default();
        counted.count(census, found);
        counted.finish();
        if counted.complete.is_empty() {
            return Vec::new();
        }
        for (key, _) in &counted.pages {
            if !keys.contains(key) {
                keys.push(*key);
            }
        }
        let Some(after) = tracer.counting_for(&keys) else {
            continue;
        };
        let then = |at: usize| before.get(at).copied().unwrap_or_default();
        let moved = (0..keys.len()).any(|at| then(at).pages() != after[at].pages());
        if moved && attempt < RECOUNTS {
            continue;
        }
        if moved {
            log::debug!(
                "census: {}:{} kept changing while counted; taken within what moved",
                found.dev,
                found.inode.ino
            );
        }
        return keys
            .iter()
            .enumerate()
            .map(|(at, key)| {
                let middle = CacheCounters {
                    pages_added: then(at).pages_added.midpoint(after[at].pages_added),
                    pages_removed: then(at).pages_removed.midpoint(after[at].pages_removed),
                    ..after[at]
                };
                (*key, counted.pages_of(key), middle)
            })
            .collect();
    }
    Vec::new()
}
