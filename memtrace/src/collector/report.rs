//! Building a report: the kernel's counters drafted into cgroups of observations, then each
//! cgroup's files built (named, rated, measured) as it is handed on, so a report of a hundred
//! thousand files is never held whole.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use memtrace_common::{CacheCounters, CacheKey, WriterKey, WriterStats};
use rustc_hash::FxHashMap as HashMap;

use super::{
    dirty::DirtyMeter,
    naming::{name_cgroups, name_files, InodeIdentities},
    observations::{InReportOrder, Observations},
    CollectError, Collector,
};
use crate::{
    loader::{runs::merge_writes, Tracer},
    model::{
        aggregate::{draft, Drafts},
        apply_filter,
        filter::apply_cgroup_filter,
        CgroupStream, CgroupUsage, Filter, KernelStats, Observation, Report, SeededCache, Totals,
        WriteRates, SCHEMA_VERSION,
    },
    resolve::Resolvers,
};

impl Collector {
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
        let counting = self.drain(&mut stats);
        let (mut observations, inodes) = self.ledger.observe(counting, &self.shmem.devs);
        let gathered = began.elapsed();
        let live_writers = self.ledger.gather_writers(&self.tracer, &mut stats);
        let writers_read = began.elapsed();
        let mut to_measure: Vec<(u32, u64)> = self.ledger.pending_measure.drain().collect();
        to_measure.retain(|(dev, _)| !self.shmem.devs.contains(dev));
        let measuring = to_measure.len();
        let remeasured = self.measure_files(to_measure, &observations.list, &inodes);
        log::debug!(
            "snapshot: shmem {shmem_scanned:?}, gather {:?}, writers {:?}, measure {measuring} files {:?}",
            gathered - shmem_scanned,
            writers_read - gathered,
            began.elapsed() - writers_read
        );
        self.join_measured(&mut observations, remeasured);
        self.join_writers(&mut observations, live_writers);

        let read = began.elapsed();
        let (mut drafts, mut totals) = draft(observations.into_vec(), self.page_size);
        let drafted = began.elapsed();
        self.resolvers.refresh();
        let refreshed = began.elapsed();
        self.resolvers.paths.begin_report();
        name_cgroups(
            &mut self.resolvers,
            drafts.cgroups.iter_mut().map(|d| &mut d.usage),
        );
        if filter.path_prefix.is_none() {
            apply_cgroup_filter(&mut drafts.cgroups, &mut totals, filter);
        }
        log::debug!(
            "snapshot: read maps {read:?}, draft {:?}, mounts and runtimes read {:?}, cgroups named {:?}",
            drafted - read,
            refreshed - drafted,
            began.elapsed() - refreshed
        );
        Ok(ReportDraft {
            began,
            stats,
            totals,
            cgroups: drafts,
            inodes,
        })
    }

    /// Adds to `observations` what was measured rather than traced: the files measured again
    /// just now (`remeasured`; the observations carry their seeds as they were) and the
    /// tmpfs/shmem files.
    fn join_measured(&self, observations: &mut Observations, remeasured: Vec<CacheKey>) {
        for key in remeasured {
            if let Some(seeded) = self.ledger.seeds.get(&InReportOrder(key)) {
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
    }

    /// Joins each writer's figures to its (memcg, file).
    fn join_writers(
        &self,
        observations: &mut Observations,
        mut live_writers: HashMap<WriterKey, WriterStats>,
    ) {
        // Drained writers (with what they wrote since, still in the kernel), then writers seen
        // only since the last drain: read in place, not copied into one list.
        let mut cursor = 0;
        for (InReportOrder(writer), written) in &self.ledger.writer_totals {
            let mut written = *written;
            if let Some(more) = live_writers.remove(writer) {
                merge_writes(&mut written, &more);
            }
            observations.add_writer(writer, &written, Some(&mut cursor));
        }
        for (writer, written) in &live_writers {
            observations.add_writer(writer, written, None);
        }
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
    dirty: &'a mut DirtyMeter,
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
/// kept, and the next report is fast (one built in a heap that earlier reports left fragmented
/// takes up to twice as long; see docs/performance.md). The trim itself is under a millisecond.
pub(super) fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap pages.
    unsafe {
        libc::malloc_trim(0);
    }
}
