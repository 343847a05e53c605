//! Reads the kernel maps into a `Report`, on whatever schedule the caller keeps.

mod dirty;
mod naming;
mod remeasure;
pub mod residency;
pub mod seed;
pub mod shmem;

use std::{
    collections::BTreeMap,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use std::os::unix::fs::MetadataExt;

use itertools::{EitherOrBoth, Itertools};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use memtrace_common::{
    CacheCounters, CacheKey, CgroupEvent, OverflowCounters, Stat, WriterKey, WriterStats,
};

use self::{
    naming::{name_cgroups, name_files, record_identities, InodeIdentities, InodeIdentity},
    seed::SeedOptions,
    shmem::ShmemScanner,
};
use crate::{
    loader::{read_all, runs::merge_writes, LoadError, LoadOptions, Tracer},
    model::{
        aggregate::{draft, Drafts, OVERFLOW_INO},
        apply_filter,
        filter::apply_cgroup_filter,
        CgroupStream, CgroupUsage, Comm, Filter, KernelStats, Observation, Report, SeedSummary,
        SeededCache, Totals, WriteRates, WriterUsage, SCHEMA_VERSION,
    },
    resolve::{cgroups::memcg_path_of, Resolvers},
};

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("cannot read the kernel's event counters")]
    Stats(#[source] aya::maps::MapError),
}

/// Loaded programs plus the userspace state that names what they count.
pub struct Collector {
    tracer: Tracer,
    pub resolvers: Resolvers,
    started: Instant,
    page_size: u64,
    /// Cache found by measuring (at start, or when traced counts could not explain it), in
    /// report order: joined with the traced keys in one pass.
    seeds: BTreeMap<InReportOrder<CacheKey>, SeededCache>,
    pub seed_summary: Option<SeedSummary>,
    /// The previous snapshot's written bytes, for rates.
    write_rates: WriteRates,
    /// Every (memcg, file) drained from the kernel so far: its counters since memtrace
    /// started, and the drain (flip) in which they last changed.
    /// In report order, so a report's observations come out sorted.
    totals: BTreeMap<InReportOrder<CacheKey>, Tally>,
    /// Drains so far.
    flips: u64,
    /// Drains made because the half being counted into was filling, not for a report.
    early_flips: u64,
    /// Per memcg (hierarchy, cgroup id), runs the map had no room for (read at each drain).
    overflow: HashMap<(u32, u64), OverflowCounters>,
    /// Per memcg, pages taken out of its overflow by keys pruned since (see `prune`).
    overflow_taken: HashMap<(u32, u64), u64>,
    /// Each file's inode as the drains showed it last (see [`InodeIdentities`]).
    identities: std::sync::Arc<HashMap<(u32, u64), InodeIdentity>>,
    /// Files to measure at the next snapshot.
    pending_measure: std::collections::HashSet<(u32, u64)>,
    /// Map entries userspace failed to read, since start.
    map_read_errors: u64,
    /// Writers that have exited, moved out of the kernel map; in report order, so they join a
    /// report's sorted observations in one pass.
    writer_totals: BTreeMap<InReportOrder<WriterKey>, WriterStats>,
    /// Per key, the `max_deficit` of the entry being counted into that a measurement already
    /// answered.
    deficits_handled: HashMap<CacheKey, u64>,
    /// tmpfs/shmem files, measured instead of traced.
    shmem: ShmemScanner,
    /// Dirty and writeback bytes, measured for files that changed.
    dirty: dirty::DirtyMeter,
}

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
            seeds: BTreeMap::new(),
            seed_summary: None,
            write_rates: WriteRates::default(),
            totals: BTreeMap::new(),
            flips: 0,
            early_flips: 0,
            overflow: HashMap::default(),
            overflow_taken: HashMap::default(),
            identities: Default::default(),
            pending_measure: std::collections::HashSet::new(),
            map_read_errors: 0,
            writer_totals: BTreeMap::new(),
            deficits_handled: HashMap::default(),
            shmem: ShmemScanner::default(),
            dirty: dirty::DirtyMeter::default(),
        })
    }

    pub fn tracer(&self) -> &Tracer {
        &self.tracer
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
        if self.tracer.counting_half_keys() > u64::from(self.tracer.max_entries / 2) {
            self.early_flips += 1;
            if let Err(err) = self.maintain() {
                log::warn!("cannot drain the filling (memcg, file) map: {err}");
            }
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
            file_events_lost: sums[Stat::FileEventsLost as usize],
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
            .tracer
            .read_counting(&mut self.map_read_errors)
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
            .tracer
            .read_counting(&mut self.map_read_errors)
            .into_iter()
            .collect();
        let pages_of = |entries: &HashMap<CacheKey, CacheCounters>, key: &CacheKey| {
            entries.get(key).copied().unwrap_or_default().pages()
        };
        for (key, seed) in scan.seeds {
            if pages_of(&before, &key) != pages_of(&counting, &key) {
                // Measured again, bracketed, at the first report.
                self.pending_measure.insert((key.dev, key.ino));
                continue;
            }
            let baseline = self.combined(&key, counting.get(&key));
            self.seeds.insert(
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
    pub fn maintain(&mut self) -> Result<(), CollectError> {
        let mut stats = self.kernel_stats()?;
        self.drain(&mut stats);
        Ok(())
    }

    /// Everything memtrace attributes now.
    pub fn snapshot(&mut self) -> Result<Report, CollectError> {
        self.snapshot_filtered(&Filter::default())
    }

    /// Reads every (memcg, file) entry, names what it can, keeps what `filter` asks for.
    pub fn snapshot_filtered(&mut self, filter: &Filter) -> Result<Report, CollectError> {
        let draft = self.draft(filter)?;
        let dirty_source = self.start_files();
        let mut finisher = self.finisher(&draft.inodes);
        let mut totals = draft.totals;
        let cgroups = if filter.path_prefix.is_some() {
            // Every file needs its name before the filter can keep or drop it.
            let mut cgroups: Vec<CgroupUsage> = draft.cgroups.into_usages().collect();
            apply_filter(&mut cgroups, &mut totals, filter, |shown| {
                for cgroup in shown {
                    finisher.name(cgroup);
                }
            });
            for cgroup in &mut cgroups {
                finisher.measure(cgroup);
            }
            cgroups
        } else {
            draft
                .cgroups
                .into_usages()
                .map(|cgroup| finisher.finish(cgroup))
                .collect()
        };
        self.finish_files();
        let header = self.header(draft.began, draft.stats, dirty_source, totals);
        Ok(header.with_cgroups(cgroups))
    }

    /// Builds a report and hands it to `write` as it is built: each cgroup's files are built,
    /// named and measured while `write` serializes the cgroups before it, on a thread of its
    /// own, so the whole report is never held at once and the two halves of the work overlap.
    /// Returns what `write` returned.
    pub fn write_snapshot(
        &mut self,
        filter: &Filter,
        write: impl FnOnce(&Report<()>, CgroupStream<'_>) -> std::io::Result<()> + Send,
    ) -> Result<std::io::Result<()>, CollectError> {
        if filter.path_prefix.is_some() {
            let mut report = self.snapshot_filtered(filter)?;
            let cgroups = std::mem::take(&mut report.cgroups);
            return Ok(write(
                &report.with_cgroups(()),
                CgroupStream::new(cgroups.into_iter()),
            ));
        }
        let draft = self.draft(filter)?;
        let dirty_source = self.start_files();
        let header = self.header(draft.began, draft.stats, dirty_source, draft.totals);
        let mut finisher = self.finisher(&draft.inodes);
        let cgroups = draft.cgroups.into_usages();
        let written = std::thread::scope(|scope| {
            let (built, to_write) = std::sync::mpsc::sync_channel(CGROUPS_IN_FLIGHT);
            // Written cgroups come back to be freed here, where they were allocated: glibc
            // frees across threads slowly and leaves the heap fragmented.
            let (written, to_free) = std::sync::mpsc::channel();
            let writer = std::thread::Builder::new()
                .name("report-writer".into())
                .spawn_scoped(scope, move || {
                    let stream = CgroupStream::new(to_write.into_iter())
                        .after_each(move |cgroup| drop(written.send(cgroup)));
                    write(&header, stream)
                });
            let writer = match writer {
                Ok(writer) => writer,
                Err(err) => return Err(err),
            };
            for cgroup in cgroups {
                // The writer stops taking cgroups only when it failed (a closed pipe): its
                // error is what this report returns.
                if built.send(finisher.finish(cgroup)).is_err() {
                    break;
                }
                to_free.try_iter().for_each(drop);
            }
            drop(built);
            let result = writer
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the report writer panicked")));
            to_free.try_iter().for_each(drop);
            result
        });
        self.finish_files();
        log::debug!("snapshot built and written in {:?}", draft.began.elapsed());
        Ok(written)
    }

    /// Begins a report's pass over its files (write rates, dirty bytes). Returns the source of
    /// its dirty figures.
    fn start_files(&mut self) -> Option<&'static str> {
        self.write_rates.start(Instant::now());
        self.dirty.start()
    }

    /// What builds the report's cgroups' files, one cgroup at a time.
    fn finisher<'a>(&'a mut self, inodes: &'a InodeIdentities) -> Finisher<'a> {
        Finisher {
            resolvers: &mut self.resolvers,
            tracer: &self.tracer,
            write_rates: &mut self.write_rates,
            dirty: &mut self.dirty,
            inodes,
            page_size: self.page_size,
        }
    }

    /// Ends the pass [`Self::start_files`] began.
    fn finish_files(&mut self) {
        self.write_rates.finish();
        self.dirty.finish();
        trim_heap();
    }

    /// The report's figures before its cgroups are built.
    fn header(
        &self,
        began: Instant,
        stats: KernelStats,
        dirty_source: Option<&'static str>,
        totals: Totals,
    ) -> Report<()> {
        Report {
            schema_version: SCHEMA_VERSION,
            timestamp: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            traced_seconds: self.started.elapsed().as_secs_f64(),
            snapshot_seconds: began.elapsed().as_secs_f64(),
            page_size: self.page_size,
            hooks: self.tracer.hooks.clone(),
            writes_source: self.tracer.writes_source,
            dirty_source,
            stats,
            seed: self.seed_summary.clone(),
            shmem: self.shmem.summary.clone(),
            totals,
            cgroups: (),
        }
    }

    /// Reads the kernel's counters into cgroups with their files as observations: summed,
    /// sorted, cgroups named, and cut by `filter` unless it filters by path (which needs
    /// every file's name first).
    fn draft(&mut self, filter: &Filter) -> Result<ReportDraft, CollectError> {
        let began = Instant::now();
        self.tracer.bump_memcg_epoch();
        self.drain_events();
        let mut stats = self.kernel_stats()?;
        // Before the counters are read: the files of the shmem filesystems found are left
        // out of them.
        if self.shmem.due() {
            self.scan_shmem();
        }
        let shmem_scanned = began.elapsed();
        let (mut observations, inodes) = self.gather(&mut stats);
        let gathered = began.elapsed();
        let mut live_writers = self.gather_writers(&mut stats);
        let writers_read = began.elapsed();
        let mut to_measure: Vec<(u32, u64)> = self.pending_measure.drain().collect();
        to_measure.retain(|(dev, _)| !self.shmem.devs.contains(dev));
        let measuring = to_measure.len();
        let remeasured = self.measure_files(to_measure, &observations.list, &inodes);
        log::debug!(
            "snapshot: shmem {shmem_scanned:?}, gather {:?}, writers {:?}, measure {measuring} files {:?}",
            gathered - shmem_scanned,
            writers_read - gathered,
            began.elapsed() - writers_read
        );
        // The observations carry the seeds as they were; these were measured just now.
        for key in remeasured {
            if let Some(seeded) = self.seeds.get(&InReportOrder(key)) {
                observations
                    .get_or_insert_with(key, || Observation::seeded_only(key, seeded))
                    .seeded = Some(Box::new(*seeded));
            }
        }
        for (key, measured) in &self.shmem.files {
            observations.insert(Observation {
                key: *key,
                counters: CacheCounters::default(),
                seeded: Some(Box::new(SeededCache {
                    pages: measured.pages,
                    active_pages: measured.active_pages,
                    provenance: measured.provenance,
                    baseline: CacheCounters::default(),
                })),
                writers: Vec::new(),
                shmem: true,
            });
        }
        // Exited writers (with anything a run of theirs added since), then live ones: read in
        // place, not copied into one list.
        let mut cursor = 0;
        for (InReportOrder(writer), written) in &self.writer_totals {
            let mut written = *written;
            if let Some(more) = live_writers.remove(writer) {
                merge_writes(&mut written, &more);
            }
            observations.add_writer(writer, &written, Some(&mut cursor));
        }
        for (writer, written) in &live_writers {
            observations.add_writer(writer, written, None);
        }

        let read = began.elapsed();
        let (mut drafts, mut totals) = draft(observations.into_vec(), self.page_size);
        let drafted = began.elapsed();
        self.resolvers.refresh();
        self.resolvers.paths.begin_report();
        name_cgroups(
            &mut self.resolvers,
            drafts.cgroups.iter_mut().map(|d| &mut d.usage),
        );
        if filter.path_prefix.is_none() {
            apply_cgroup_filter(&mut drafts.cgroups, &mut totals, filter);
        }
        log::debug!(
            "snapshot: read maps {read:?}, draft {:?}, name cgroups {:?}",
            drafted - read,
            began.elapsed() - drafted
        );
        Ok(ReportDraft {
            began,
            stats,
            totals,
            cgroups: drafts,
            inodes,
        })
    }
}

/// A report up to its cgroups' files, which are still observations.
struct ReportDraft {
    began: Instant,
    stats: KernelStats,
    totals: Totals,
    cgroups: Drafts,
    inodes: InodeIdentities,
}

/// Builds one cgroup's files at a time: names them, rates their writes, measures their dirty
/// pages.
struct Finisher<'a> {
    resolvers: &'a mut Resolvers,
    tracer: &'a Tracer,
    write_rates: &'a mut WriteRates,
    dirty: &'a mut dirty::DirtyMeter,
    inodes: &'a InodeIdentities,
    page_size: u64,
}

/// Cgroups built ahead of the one being written: enough to keep the writer busy, few enough
/// that a report of a hundred thousand files is never held whole.
const CGROUPS_IN_FLIGHT: usize = 4;

impl Finisher<'_> {
    fn finish(&mut self, mut cgroup: CgroupUsage) -> CgroupUsage {
        self.name(&mut cgroup);
        self.measure(&mut cgroup);
        cgroup
    }

    fn name(&mut self, cgroup: &mut CgroupUsage) {
        name_files(self.resolvers, cgroup, self.tracer, self.inodes);
    }

    /// Write rates and dirty bytes, which need the files' names.
    fn measure(&mut self, cgroup: &mut CgroupUsage) {
        self.write_rates.rate(cgroup);
        self.dirty.measure(cgroup, self.page_size);
    }
}

/// Gives the heap's free pages back, after a report and after pruning: RSS follows what is
/// kept, and the next report is fast. Measured at 100,000 files: a report built in a heap the
/// reports before left fragmented took twice as long (240-290 ms, not 100-130); the trim itself
/// takes under a millisecond.
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Adds what an undrained half holds for a key to its totals.
fn add_counting(sum: &mut CacheCounters, entry: &CacheCounters) {
    sum.pages_added += entry.pages_added;
    sum.pages_removed += entry.pages_removed;
    sum.max_deficit = entry.max_deficit;
    if entry.inode != 0 {
        sum.inode = entry.inode;
        sum.generation = entry.generation;
    }
}

/// One observation per key, in a vector sorted by key: a hash map of whole observations would
/// hold a hundred thousand of them in room for twice as many, and an index beside the vector
/// would cost as much again. The traced keys, each once, are pushed first and sorted
/// ([`Self::seal`]); the few keys added after (seeds, shmem files, writers of files cached
/// elsewhere) go at the end with a small index of their own.
struct Observations {
    list: Vec<Observation>,
    /// `list[..sorted]` is sorted by [`order`].
    sorted: usize,
    /// Where the keys after `sorted` are.
    added: HashMap<CacheKey, usize>,
}

/// The order of [`Observations`]: by cgroup, then file, as the report groups them.
fn order(key: &CacheKey) -> (u32, u64, u32, u64) {
    (key.hierarchy, key.cgroup_id, key.dev, key.ino)
}

/// A key that sorts as a report groups: by cgroup, then file (then writer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct InReportOrder<K>(K);

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
    fn with_capacity(capacity: usize) -> Self {
        Self {
            list: Vec::with_capacity(capacity),
            sorted: 0,
            added: HashMap::default(),
        }
    }

    /// Adds the observation of a key not yet added (before [`Self::seal`]).
    fn push_unique(&mut self, observation: Observation) {
        self.list.push(observation);
    }

    /// Sorts what was pushed; lookups and additions may follow.
    fn seal(&mut self) {
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
    fn insert(&mut self, observation: Observation) {
        match self.position(&observation.key) {
            Some(at) => self.list[at] = observation,
            None => {
                self.added.insert(observation.key, self.list.len());
                self.list.push(observation);
            }
        }
    }

    fn get_or_insert_with(
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
    fn add_writer(
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

    fn into_vec(self) -> Vec<Observation> {
        self.list
    }
}

/// Most files measured again in one snapshot because their pre-existing cache is leaving.
const REMEASURE_LIMIT: usize = 256;
/// Keys are pruned every this many drains...
const PRUNE_EVERY: u64 = 8;
/// ...once nothing of them is resident and they have not changed for this many drains.
const PRUNE_AFTER_IDLE_FLIPS: u64 = 4;

/// A key's counters since start, and the drain in which they last changed: 32 bytes, as there
/// may be a hundred thousand.
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    pages_added: u64,
    pages_removed: u64,
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
            inode: self.inode,
            generation: u64::from(self.generation),
            ..CacheCounters::default()
        }
    }
}

impl Collector {
    /// Drains the kernel map ([`Self::drain`]) and returns every key's counters since start
    /// as observations ([`Self::observe`]).
    fn gather(&mut self, stats: &mut KernelStats) -> (Observations, InodeIdentities) {
        let counting = self.drain(stats);
        self.observe(counting)
    }

    /// Empties the half of the kernel map left at the previous flip into the totals, queues
    /// files whose old cache is seen leaving, and returns what the half still counting holds.
    fn drain(&mut self, stats: &mut KernelStats) -> Vec<(CacheKey, CacheCounters)> {
        let mut errors = 0;
        let drained = self.tracer.flip_and_drain(&mut errors);
        let drained_count = drained.len();
        self.flips += 1;
        for &(key, entry) in &drained {
            let handled = self.deficits_handled.remove(&key).unwrap_or(0);
            // Removals a measurement already answered are in its seed: only the rest count.
            if entry.max_deficit.saturating_sub(handled) > self.known_resident(&key)
                && !self.overflow_holds(&key)
            {
                self.pending_measure.insert((key.dev, key.ino));
            }
            let tally = self.totals.entry(InReportOrder(key)).or_default();
            tally.pages_added += entry.pages_added;
            tally.pages_removed += entry.pages_removed;
            if entry.inode != 0 {
                tally.inode = entry.inode;
                // `i_generation` is 32 bits: the kernel's value survives the cut whole.
                tally.generation = entry.generation as u32;
            }
            tally.changed_at = self.flips as u32;
        }
        record_identities(std::sync::Arc::make_mut(&mut self.identities), &drained);
        self.overflow = self
            .tracer
            .read_overflow(&mut errors)
            .into_iter()
            .map(|(key, counters)| ((key.hierarchy, key.cgroup_id), counters))
            .collect();
        let counting = self.tracer.read_counting(&mut errors);
        self.map_read_errors += errors;
        stats.map_read_errors = self.map_read_errors;
        // The half just drained held a whole interval's keys: that is the map's real use.
        stats.map_entries = drained_count.max(counting.len()) as u64;
        for (key, entry) in &counting {
            let handled = self.deficits_handled.get(key).copied().unwrap_or(0);
            if entry.max_deficit.saturating_sub(handled) > self.known_resident(key)
                && !self.overflow_holds(key)
            {
                self.pending_measure.insert((key.dev, key.ino));
            }
        }
        self.prune();
        counting
    }

    /// Every key's counters since start (the totals plus `counting`, what the half still
    /// counting holds), as sorted observations, and each file's inode as last seen.
    fn observe(&self, counting: Vec<(CacheKey, CacheCounters)>) -> (Observations, InodeIdentities) {
        // Each file's inode as last seen: the drains' (kept up to date by each drain), then
        // the half still counting, newer than any.
        let mut counting_identities = HashMap::default();
        record_identities(&mut counting_identities, &counting);
        let identities = InodeIdentities {
            drained: std::sync::Arc::clone(&self.identities),
            counting: counting_identities,
        };
        // Every key's totals plus what the undrained halves add, built as one list (the
        // undrained halves hold few keys; the totals may hold a hundred thousand). Only
        // removals of shmem pages are traced: their files are measured instead.
        let mut counting: HashMap<CacheKey, CacheCounters> = counting.into_iter().collect();
        let shmem_devs = &self.shmem.devs;
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

    /// Live writers' figures since start (the exited ones' are in `writer_totals`). Entries of
    /// processes that have exited cannot grow any more: they move from the kernel map into
    /// userspace, so the map holds only live writers, however many come and go.
    fn gather_writers(&mut self, stats: &mut KernelStats) -> HashMap<WriterKey, WriterStats> {
        // The map before the runs: a run added to the map in between is missed once, rather
        // than counted twice.
        let mapped = read_all(&self.tracer.writers, &mut stats.map_read_errors);
        let runs = self.tracer.writer_runs();
        let mut entries: HashMap<WriterKey, WriterStats> = HashMap::default();
        let add = |entries: &mut HashMap<WriterKey, WriterStats>, key, value: WriterStats| {
            entries
                .entry(key)
                .and_modify(|into| merge_writes(into, &value))
                .or_insert(value);
        };
        for (key, value) in mapped {
            // SAFETY: kill with signal 0 only checks that the process exists.
            let exited = unsafe { libc::kill(key.tgid as i32, 0) } != 0
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
            if exited && self.tracer.writers.remove(&key).is_ok() {
                // A run of its still on some CPU reaches the map later and moves then.
                self.writer_totals
                    .entry(InReportOrder(key))
                    .and_modify(|into| merge_writes(into, &value))
                    .or_insert(value);
            } else {
                add(&mut entries, key, value);
            }
        }
        for (key, value) in runs {
            add(&mut entries, key, value);
        }
        entries
    }

    /// A key's counters since start: the totals plus `counting`, what the halves not yet
    /// drained hold for it.
    fn combined(&self, key: &CacheKey, counting: Option<&CacheCounters>) -> CacheCounters {
        let mut sum = self
            .totals
            .get(&InReportOrder(*key))
            .map(Tally::counters)
            .unwrap_or_default();
        if let Some(entry) = counting {
            sum.pages_added += entry.pages_added;
            sum.pages_removed += entry.pages_removed;
        }
        sum
    }

    /// Whether `key`'s memcg has pages in the overflow (its files' runs that found the map
    /// full): a file of it that loses pages memtrace never saw added lost them from there,
    /// and measuring it would count them twice.
    fn overflow_holds(&self, key: &CacheKey) -> bool {
        self.overflow
            .get(&(key.hierarchy, key.cgroup_id))
            .is_some_and(|o| o.pages_added > o.pages_removed)
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

    /// Forgets keys with nothing resident that have not changed for a while, so memory stays
    /// flat however many files come and go; their names and seeds go with them.
    fn prune(&mut self) {
        if !self.flips.is_multiple_of(PRUNE_EVERY) {
            return;
        }
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
        // What is still reported, by file and by cgroup. tmpfs/shmem files have no kernel
        // counters: their names stay while they are measured.
        let mut files: HashSet<(u32, u64)> = HashSet::default();
        let mut cgroups: HashSet<(u32, u64)> = HashSet::default();
        files.reserve(self.totals.len());
        for key in self
            .totals
            .keys()
            .map(|k| &k.0)
            .chain(self.seeds.keys().map(|k| &k.0))
            .chain(self.shmem.files.keys())
        {
            files.insert((key.dev, key.ino));
            cgroups.insert((key.hierarchy, key.cgroup_id));
        }
        std::sync::Arc::make_mut(&mut self.identities).retain(|file, _| files.contains(file));
        // Exited writers of files that are gone from every cgroup go too.
        self.writer_totals
            .retain(|key, _| files.contains(&(key.0.dev, key.0.ino)));
        self.resolvers
            .paths
            .retain(|dev, ino| files.contains(&(dev, ino)));
        self.resolvers
            .forget_removed_cgroups(|hierarchy, id| cgroups.contains(&(hierarchy, id)));
        trim_heap();
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
