//! Reads the kernel maps into a `Report`, on whatever schedule the caller keeps.

mod census;
mod dirty;
mod ledger;
mod naming;
mod observations;
mod remeasure;
mod report;
pub mod residency;
pub mod seed;
pub mod shmem;

pub use dirty::Focus;

use std::{os::unix::fs::MetadataExt, time::Instant};

use rustc_hash::FxHashMap as HashMap;

use memtrace_common::{CacheCounters, CacheKey, CgroupEvent, Stat};

use self::{
    ledger::Ledger, observations::InReportOrder, report::trim_heap, seed::SeedOptions,
    shmem::ShmemScanner,
};
use crate::{
    loader::{LoadError, LoadOptions, Tracer},
    model::{KernelStats, SeedSummary, SeededCache, WriteRates},
    resolve::{cgroups::memcg_path_of, FoundTarget, Resolvers, TargetError},
};

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("cannot read the kernel's event counters")]
    Stats(#[source] aya::maps::MapError),
}

/// Loaded programs plus the userspace state that names what they count.
pub struct Collector {
    tracer: Tracer,
    resolvers: Resolvers,
    started: Instant,
    page_size: u64,
    /// What the kernel counted, moved into userspace, with the cache found by measuring.
    ledger: Ledger,
    seed_summary: Option<SeedSummary>,
    /// The previous snapshot's written bytes, for rates.
    write_rates: WriteRates,
    /// Drains made because the half being counted into was filling, not for a report.
    early_flips: u64,
    /// Whether files drained between reports are named then (see [`Self::name_files_ahead`]).
    naming_ahead: bool,
    /// tmpfs/shmem files, measured instead of traced.
    shmem: ShmemScanner,
    /// Dirty and writeback bytes, measured for files that changed.
    dirty: dirty::DirtyMeter,
}

/// New keys in the half being counted into, at a 200 ms check, from which a burst is taken in
/// before the next report (see [`Collector::take_in_burst`]): about 20,000 new files a second.
const BURST_KEYS: u64 = 4096;

impl Collector {
    /// Loads and attaches the programs, then learns the cgroups, mounts and containers that
    /// exist now.
    pub fn start(options: &LoadOptions) -> Result<Self, LoadError> {
        let tracer = Tracer::load(options)?;
        let started = Instant::now();
        // Loading parsed the kernel's BTF (tens of MiB, now freed): hand that memory back, so it
        // does not sit under every later snapshot's peak.
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only releases free heap pages.
        unsafe {
            libc::malloc_trim(0);
        }
        Ok(Self {
            tracer,
            resolvers: Resolvers::new(),
            started,
            page_size: page_size(),
            ledger: Ledger::default(),
            seed_summary: None,
            write_rates: WriteRates::default(),
            early_flips: 0,
            naming_ahead: false,
            shmem: ShmemScanner::default(),
            dirty: dirty::DirtyMeter::default(),
        })
    }

    pub fn tracer(&self) -> &Tracer {
        &self.tracer
    }

    /// What names things: cgroups, containers, memory.stat, targets the user names.
    pub fn resolvers(&self) -> &Resolvers {
        &self.resolvers
    }

    /// Measures the dirty bytes of every file of `focus` and the cgroups below it in each
    /// report, not only what the per-report budget allows: the files a command shows.
    pub fn measure_dirty_of(&mut self, focus: Focus) {
        self.dirty.focus_on(focus);
    }

    /// Names the files drained between reports (a burst taken in as it comes) right away, for
    /// a command whose reports name every file: its next report then has little naming left.
    /// Off, such files are named when a report shows them, as any other.
    pub fn name_files_ahead(&mut self, on: bool) {
        self.naming_ahead = on;
    }

    /// Finds what the user named (a pid, a cgroup path, a container) among what runs now.
    pub fn find_target(&mut self, query: &str) -> Result<FoundTarget, TargetError> {
        self.resolvers.find_target(query)
    }

    /// Applies pending notices from the kernel: cgroups made and removed; and drains the
    /// (memcg, file) map early when the half being counted into is half full, so a burst of
    /// new files between reports fits. Call it often enough that the ring buffers do not fill
    /// (the commands do, every 200 ms).
    pub fn drain_events(&mut self) {
        while let Some(item) = self.tracer.cgroup_events.next() {
            if let Some(event) = read_event::<CgroupEvent>(&item) {
                self.resolvers.on_cgroup_event(&event);
            }
        }
        let counting = self.tracer.counting_half_keys();
        if counting > u64::from(self.tracer.max_entries / 2) {
            self.early_flips += 1;
            self.maintain();
        } else if counting >= BURST_KEYS {
            self.take_in_burst();
        }
    }

    /// Sums the per-CPU kernel counters.
    pub fn kernel_stats(&self) -> Result<KernelStats, CollectError> {
        let mut sums = [0u64; Stat::COUNT as usize];
        for stat in Stat::ALL {
            let per_cpu = self
                .tracer
                .stats
                .get(&(stat as u32), 0)
                .map_err(CollectError::Stats)?;
            sums[stat as usize] = per_cpu.iter().sum();
        }
        let (add_events, delete_events) = self.tracer.page_events();
        Ok(KernelStats {
            add_events,
            delete_events,
            map_full: sums[Stat::MapFull as usize],
            read_failed: sums[Stat::ReadFailed as usize],
            uncharged: sums[Stat::Uncharged as usize],
            cgroup_events_lost: sums[Stat::CgroupEventsLost as usize],
            // Files are named on demand: no notice of them can be lost. The field stays in
            // the JSON contract, where fields are only ever added.
            file_events_lost: 0,
            writers_map_full: sums[Stat::WritersMapFull as usize],
            overflow_runs: sums[Stat::Overflowed as usize],
            early_flips: self.early_flips,
            map_entries: 0,
            map_capacity: u64::from(self.tracer.max_entries),
            map_read_errors: 0,
            missed_runs: self.tracer.missed_runs(),
        })
    }

    /// Finds the page cache that was resident before start (see `seed`) and adds it to every
    /// later report. Call once, after `start`: the programs are attached first, so pages that
    /// arrive during the scan are counted once, by the kernel counters read per file.
    pub fn seed(&mut self, options: &SeedOptions) -> SeedSummary {
        self.drain_events();
        self.resolvers.refresh();
        if let Some(summary) = self.census() {
            self.seed_summary = Some(summary.clone());
            return summary;
        }
        let hierarchies = self.resolvers.cgroups.hierarchies.clone();
        let memory_hierarchy = hierarchies.memory_hierarchy.unwrap_or(0);
        let memcg_id = |path: &str| {
            let dir = hierarchies.directory_of(memory_hierarchy, path)?;
            std::fs::metadata(dir).ok().map(|m| m.ino())
        };

        let mut candidates = Vec::new();
        for (layer_root, memcg_dir) in self.resolvers.overlay_layers() {
            let location = memcg_dir
                .and_then(|dir| std::fs::metadata(dir).ok())
                .map(|m| (memory_hierarchy, m.ino()));
            candidates.extend(seed::files_below(&layer_root, options.max_files, location));
        }
        for dir in &options.extra_dirs {
            candidates.extend(seed::files_below(dir, options.max_files, None));
        }
        candidates.extend(seed::open_files());

        // What the kernel counted before the scan: a file whose counters moved while it was
        // scanned may or may not have those pages in its measurement.
        let before: HashMap<CacheKey, CacheCounters> = self
            .ledger
            .peek_counting(&self.tracer)
            .into_iter()
            .collect();
        let scan = seed::scan(
            candidates,
            options,
            memory_hierarchy,
            self.page_size,
            |pid| memcg_path_of(pid, memory_hierarchy).and_then(|path| memcg_id(&path)),
        );
        let summary = scan.summary;
        for ((dev, ino), name) in scan.names {
            self.resolvers.paths.remember(dev, ino, name);
        }
        // What the kernel counted up to now, read once for every seeded key.
        let counting: HashMap<CacheKey, CacheCounters> = self
            .ledger
            .peek_counting(&self.tracer)
            .into_iter()
            .collect();
        let pages_of = |entries: &HashMap<CacheKey, CacheCounters>, key: &CacheKey| {
            entries.get(key).copied().unwrap_or_default().pages()
        };
        for (key, seed) in scan.seeds {
            if pages_of(&before, &key) != pages_of(&counting, &key) {
                // Measured again, bracketed, at the first report.
                self.ledger.pending_measure.insert((key.dev, key.ino));
                continue;
            }
            let baseline = self.ledger.combined(&key, counting.get(&key));
            self.ledger.seeds.insert(
                InReportOrder(key),
                SeededCache {
                    pages: seed.pages,
                    active_pages: seed.active_pages,
                    provenance: seed.provenance,
                    baseline,
                },
            );
        }
        self.seed_summary = Some(summary.clone());
        summary
    }

    /// Finds and measures the tmpfs/shmem files (see `shmem`), and names the new ones.
    fn scan_shmem(&mut self) {
        self.resolvers.refresh();
        let hierarchies = self.resolvers.cgroups.hierarchies.clone();
        let memory_hierarchy = hierarchies.memory_hierarchy.unwrap_or(0);
        let names = self.shmem.scan(memory_hierarchy, self.page_size, |pid| {
            let path = memcg_path_of(pid, memory_hierarchy)?;
            let dir = hierarchies.directory_of(memory_hierarchy, &path)?;
            std::fs::metadata(dir).ok().map(|m| m.ino())
        });
        for ((dev, ino), name) in names {
            self.resolvers.paths.remember(dev, ino, name);
        }
    }

    /// Moves what the kernel counted into userspace totals and forgets idle keys, without
    /// building a report: commands that report rarely (`serve` between scrapes, `run` while
    /// its command runs) call it every few seconds so the kernel map never fills.
    pub fn maintain(&mut self) {
        let arrived = self.empty_drained_half();
        self.name_ahead(arrived);
    }

    /// Takes in a burst of new files between reports: the half left at the previous flip is
    /// drained now (and its new files named, where reports name every file), a part at a
    /// time, rather than all of it in the report that follows (naming is most of what a new
    /// file costs a report).
    fn take_in_burst(&mut self) {
        let arrived = self.ledger.empty_drained_half(&mut self.tracer, true);
        log::debug!("burst: {} files drained early", arrived.len());
        self.name_ahead(arrived);
    }

    /// Names files that have no name yet, ahead of the report that will show them.
    fn name_ahead(&mut self, arrived: Vec<(u32, u64, u32)>) {
        if !self.naming_ahead || arrived.is_empty() {
            return;
        }
        let inodes = self.ledger.drained_identities();
        let tracer = &self.tracer;
        let paths = &mut self.resolvers.paths;
        paths.begin_naming_ahead();
        for (dev, ino, generation) in arrived {
            if self.shmem.devs.contains(&dev) {
                continue;
            }
            paths.name_ahead(dev, ino, u64::from(generation), || {
                naming::ask_kernel(tracer, &inodes, dev, ino)
            });
        }
    }

    /// Moves the half of the kernel map left at the previous flip into the ledger, and returns
    /// what the halves still counting hold. Every few drains the ledger forgets what holds
    /// nothing, and the resolvers forget those names.
    fn drain(&mut self, stats: &mut KernelStats) -> Vec<(CacheKey, CacheCounters)> {
        self.empty_drained_half();
        self.ledger.read_counting(&self.tracer, stats)
    }

    /// Moves the half of the kernel map left at the previous flip into the ledger and prunes
    /// when due. Returns the files the half brought holding cache.
    fn empty_drained_half(&mut self) -> Vec<(u32, u64, u32)> {
        let arrived = self.ledger.empty_drained_half(&mut self.tracer, false);
        if self.ledger.prune_due() {
            let kept = self.ledger.prune(self.shmem.files.keys());
            self.resolvers
                .paths
                .retain(|dev, ino| kept.files.contains(&(dev, ino)));
            self.resolvers
                .forget_removed_cgroups(|hierarchy, id| kept.cgroups.contains(&(hierarchy, id)));
            trim_heap();
        }
        arrived
    }
}

/// Copies a kernel-written event out of a ring buffer record.
fn read_event<T: aya::Pod>(record: &[u8]) -> Option<T> {
    if record.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: the kernel wrote a whole T (checked length); `Pod` promises every bit pattern is
    // a valid T, and read_unaligned copes with the record's alignment.
    Some(unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<T>()) })
}

/// The kernel's base page size; the programs count in pages.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}
