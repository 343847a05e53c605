//! The Prometheus/OpenMetrics exposition of a report: `memtrace serve`'s `/metrics`.
//!
//! A scrape is first gathered into a [`Scrape`]: a compact table (each cgroup's labels once,
//! each file series as its escaped path and figures) filled cgroup by cgroup while the
//! report is built, so the report is never held whole. The table is then written family by
//! family (the format wants a family's samples together) in chunks, so the text is never held
//! whole either: memory follows the table, some 150 bytes a file series.
//!
//! Cardinality is bounded: the largest `top_files` files of each cgroup get their own series,
//! the rest of the cgroup's files are summed into one series with an empty `path`, and past
//! `max_series` no more series are added (memtrace says how many were left out).

use std::{
    collections::HashMap,
    fmt::Display,
    io::{self, Write},
};

use crate::model::{
    aggregate::subtree_sums, CgroupUsage, KernelStats, MemoryFigures, ProgramStats,
};

/// Which text format a scrape is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpositionFormat {
    /// OpenMetrics 1.0, what Prometheus asks for.
    OpenMetrics,
    /// Prometheus' classic text format (0.0.4), for clients that do not ask for OpenMetrics
    /// (`curl`, `promtool check metrics`): a counter's HELP and TYPE name its `_total`
    /// samples, and there is no `# UNIT` or `# EOF`.
    Classic,
}

impl ExpositionFormat {
    /// The format a request's `Accept` header asks for.
    pub fn accepted(accept: Option<&str>) -> Self {
        if accept.is_some_and(|accept| accept.contains("application/openmetrics-text")) {
            Self::OpenMetrics
        } else {
            Self::Classic
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Classic => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// Series a cgroup's memory.stat adds: usage, page cache, active, inactive, shmem, coverage,
/// limit, high, limit hits, OOM kills, refaults, two stall ratios.
const MEMORY_SERIES: usize = 13;

/// A cgroup's figures and labels, as a scrape shows them.
struct CgroupSeries {
    /// `cgroup="…",cgroup_id="…",container="…",container_id="…",pod="…",namespace="…"`,
    /// escaped.
    labels: String,
    /// Where `container_id` ends in `labels`: file series carry the labels before it and
    /// after it (see [`Self::file_labels`]).
    container_id: (usize, usize),
    hierarchy: u32,
    path: Option<String>,
    removed: bool,
    /// Whether the series budget left room for its removed flag.
    removed_shown: bool,
    cached: u64,
    /// Whether the series budget left room for its memory.stat series.
    memory_budgeted: bool,
    memory: Option<MemoryFigures>,
    coverage: Option<f64>,
}

impl CgroupSeries {
    fn of(cgroup: &CgroupUsage) -> Self {
        let path = match &cgroup.path {
            Some(path) => path.clone(),
            None => format!("id:{}", cgroup.id),
        };
        let container = cgroup.container.as_ref();
        let pod = container.and_then(|c| c.pod.as_ref());
        let mut labels = String::new();
        push_label(&mut labels, "cgroup", &path);
        push_label(&mut labels, "cgroup_id", &cgroup.id.to_string());
        push_label(
            &mut labels,
            "container",
            container.and_then(|c| c.name.as_deref()).unwrap_or(""),
        );
        let start = labels.len();
        push_label(&mut labels, "container_id", container.map_or("", |c| &c.id));
        let end = labels.len();
        push_label(
            &mut labels,
            "pod",
            pod.and_then(|p| p.name.as_deref()).unwrap_or(""),
        );
        push_label(
            &mut labels,
            "namespace",
            pod.and_then(|p| p.namespace.as_deref()).unwrap_or(""),
        );
        Self {
            labels,
            container_id: (start, end),
            hierarchy: cgroup.hierarchy,
            path: cgroup.path.clone(),
            removed: cgroup.removed,
            removed_shown: false,
            cached: cgroup.cached_bytes,
            memory_budgeted: false,
            memory: None,
            coverage: None,
        }
    }

    /// The labels a file series of this cgroup starts with: all but `container_id`.
    fn file_labels(&self) -> (&str, &str) {
        let (start, end) = self.container_id;
        (&self.labels[..start], &self.labels[end..])
    }
}

/// Which of a file's optional series the budget took.
mod took {
    pub(super) const ADDED_REMOVED: u8 = 1;
    pub(super) const DIRTY: u8 = 2;
    pub(super) const WRITEBACK: u8 = 4;
    pub(super) const WRITTEN: u8 = 8;
    pub(super) const ACCESSED: u8 = 16;
}

/// A file of a cgroup, or the cgroup's other files summed (empty path).
#[derive(Default)]
struct FileSeries {
    cgroup: u32,
    /// `path="…",layer="…"`, escaped.
    labels: Box<str>,
    cached: u64,
    dirty: Option<u64>,
    writeback: Option<u64>,
    written: u64,
    added: u64,
    removed: u64,
    accessed: u64,
    took: u8,
}

/// One scrape, gathered cgroup by cgroup ([`Self::add_cgroup`]), given memory.stat
/// ([`Self::add_memory`]) and memtrace's own figures ([`Self::set_own`]), then written
/// ([`Self::write`]).
pub struct Scrape {
    top_files: usize,
    max_series: usize,
    left: usize,
    dropped: u64,
    cgroups: Vec<CgroupSeries>,
    files: Vec<FileSeries>,
    stats: KernelStats,
    snapshot_seconds: f64,
    programs: Vec<ProgramStats>,
}

impl Scrape {
    pub fn new(top_files: usize, max_series: usize) -> Self {
        Self {
            top_files,
            max_series,
            left: max_series,
            dropped: 0,
            cgroups: Vec::new(),
            files: Vec::new(),
            stats: KernelStats::default(),
            snapshot_seconds: 0.0,
            programs: Vec::new(),
        }
    }

    /// Counts `series` against the cap: false (and counted as dropped) past it.
    fn take(&mut self, series: usize) -> bool {
        if self.left >= series {
            self.left -= series;
            true
        } else {
            self.dropped += series as u64;
            false
        }
    }

    /// Adds a cgroup's series: its cache, whether it is gone, room for its memory.stat, and
    /// its largest files (the rest summed under an empty path).
    pub fn add_cgroup(&mut self, cgroup: &CgroupUsage) {
        if !self.take(1) {
            return;
        }
        let mut series = CgroupSeries::of(cgroup);
        if cgroup.removed {
            // Its removed flag; a removed cgroup's directory is gone (or another's now), so
            // it has no memory.stat.
            series.removed_shown = self.take(1);
        } else if cgroup.path.is_some() {
            series.memory_budgeted = self.take(MEMORY_SERIES);
        }
        let index = self.cgroups.len() as u32;
        self.cgroups.push(series);

        // Two files can show the same path (a deleted log and its successor): their series add.
        let first = self.files.len();
        let mut at: HashMap<Box<str>, usize> = HashMap::new();
        let mut shown_bytes = 0u64;
        for file in cgroup
            .files
            .iter()
            .filter(|f| f.cached_bytes > 0)
            .take(self.top_files)
        {
            let path = match &file.path {
                Some(path) if file.deleted => format!("{path} (deleted)"),
                Some(path) => path.to_string(),
                None => format!("dev {} ino {}", file.dev, file.ino),
            };
            let layer = match file.layer {
                Some(layer) => format!("{layer:?}").to_lowercase(),
                None => String::new(),
            };
            let mut labels = String::new();
            push_label(&mut labels, "path", &path);
            push_label(&mut labels, "layer", &layer);
            let labels = labels.into_boxed_str();
            let slot = *at.entry(labels.clone()).or_insert_with(|| {
                self.files.push(FileSeries {
                    cgroup: index,
                    labels,
                    ..FileSeries::default()
                });
                self.files.len() - 1
            });
            let entry = &mut self.files[slot];
            entry.cached += file.cached_bytes;
            entry.dirty = add_known(entry.dirty, file.dirty_bytes);
            entry.writeback = add_known(entry.writeback, file.writeback_bytes);
            entry.written += file.written_bytes;
            entry.added += file.added_bytes;
            entry.removed += file.removed_bytes;
            entry.accessed += file.accessed_bytes;
            shown_bytes += file.cached_bytes;
        }
        // The budget, file by file, in the order they were first seen.
        let mut kept = first;
        for slot in first..self.files.len() {
            if !self.take(1) {
                continue;
            }
            let file = &self.files[slot];
            let wants = [
                (took::ADDED_REMOVED, 2, true),
                (took::DIRTY, 1, file.dirty.is_some()),
                (took::WRITEBACK, 1, file.writeback.is_some()),
                (took::WRITTEN, 1, file.written > 0),
                (took::ACCESSED, 1, file.accessed > 0),
            ];
            let mut took = 0;
            for (flag, series, wanted) in wants {
                if wanted && self.take(series) {
                    took |= flag;
                }
            }
            self.files[slot].took = took;
            self.files.swap(kept, slot);
            kept += 1;
        }
        self.files.truncate(kept);
        let rest = cgroup.cached_bytes.saturating_sub(shown_bytes);
        if rest > 0 && self.take(1) {
            let mut labels = String::new();
            push_label(&mut labels, "path", "");
            push_label(&mut labels, "layer", "");
            self.files.push(FileSeries {
                cgroup: index,
                labels: labels.into_boxed_str(),
                cached: rest,
                ..FileSeries::default()
            });
        }
    }

    /// The (hierarchy, path) of each cgroup whose memory.stat the scrape has room for.
    pub fn memory_wanted(&self) -> impl Iterator<Item = (u32, &str)> {
        self.cgroups
            .iter()
            .filter(|c| c.memory_budgeted)
            .filter_map(|c| Some((c.hierarchy, c.path.as_deref()?)))
    }

    /// Gives each cgroup its memory.stat (`memory_of`), and how much of it memtrace
    /// attributes (memory.stat counts a cgroup's descendants: compared with the attribution of
    /// the whole subtree).
    pub fn add_memory(&mut self, mut memory_of: impl FnMut(u32, &str) -> Option<MemoryFigures>) {
        let subtree: HashMap<(u32, String), u64> = subtree_sums(
            self.cgroups
                .iter()
                .filter(|c| !c.removed)
                .filter_map(|c| Some((c.hierarchy, c.path.as_deref()?, c.cached))),
        )
        .into_iter()
        .map(|((hierarchy, path), bytes)| ((hierarchy, path.to_owned()), bytes))
        .collect();
        for cgroup in self.cgroups.iter_mut().filter(|c| c.memory_budgeted) {
            let Some(path) = cgroup.path.as_deref() else {
                continue;
            };
            let Some(memory) = memory_of(cgroup.hierarchy, path) else {
                continue;
            };
            let attributed = subtree
                .get(&(cgroup.hierarchy, path.to_owned()))
                .copied()
                .unwrap_or(cgroup.cached);
            cgroup.coverage = memory.coverage_of(attributed);
            cgroup.memory = Some(memory);
        }
    }

    /// memtrace's own figures: the kernel's counters, the snapshot's time, program run time.
    pub fn set_own(
        &mut self,
        stats: KernelStats,
        snapshot_seconds: f64,
        programs: Vec<ProgramStats>,
    ) {
        self.stats = stats;
        self.snapshot_seconds = snapshot_seconds;
        self.programs = programs;
    }

    /// Writes the exposition, family by family.
    pub fn write(&self, out: &mut impl Write, format: ExpositionFormat) -> io::Result<()> {
        let mut w = Families::new(out, format);
        self.write_cgroup_families(&mut w)?;
        self.write_file_families(&mut w)?;
        self.write_own_families(&mut w)?;
        if format == ExpositionFormat::OpenMetrics {
            w.out.write_all(b"# EOF\n")?;
        }
        Ok(())
    }

    fn write_cgroup_families<W: Write>(&self, w: &mut Families<'_, W>) -> io::Result<()> {
        let cgroups = &self.cgroups;
        w.family(
            &CGROUP_PAGE_CACHE,
            cgroups.iter().map(|c| (c.labels.as_str(), Some(c.cached))),
        )?;
        w.family(
            &CGROUP_REMOVED,
            cgroups
                .iter()
                .map(|c| (c.labels.as_str(), c.removed_shown.then_some(1u64))),
        )?;
        let memory = |pick: fn(&MemoryFigures) -> Option<u64>| {
            cgroups
                .iter()
                .map(move |c| (c.labels.as_str(), c.memory.as_ref().and_then(pick)))
        };
        w.family(&MEMORY_LIMIT, memory(|m| m.pressure.limit_bytes))?;
        w.family(&MEMORY_HIGH, memory(|m| m.pressure.high_bytes))?;
        w.family(&MEMORY_LIMIT_HITS, memory(|m| Some(m.pressure.limit_hits)))?;
        w.family(&MEMORY_OOM_KILLS, memory(|m| Some(m.pressure.oom_kills)))?;
        w.family(&MEMORY_REFAULTS, memory(|m| Some(m.refault_file_bytes)))?;
        let ratio = |pick: fn(&MemoryFigures) -> Option<f64>| {
            cgroups.iter().map(move |c| {
                (
                    c.labels.as_str(),
                    c.memory
                        .as_ref()
                        .and_then(pick)
                        .map(|percent| percent / 100.0),
                )
            })
        };
        w.family(&MEMORY_STALL_SOME, ratio(|m| m.pressure.some_avg10))?;
        w.family(&MEMORY_STALL_FULL, ratio(|m| m.pressure.full_avg10))?;
        w.family(&MEMORY_USAGE, memory(|m| Some(m.usage_bytes)))?;
        w.family(&MEMORY_PAGE_CACHE, memory(|m| Some(m.page_cache_bytes)))?;
        w.family(&MEMORY_ACTIVE_FILE, memory(|m| Some(m.active_file_bytes)))?;
        w.family(
            &MEMORY_INACTIVE_FILE,
            memory(|m| Some(m.inactive_file_bytes)),
        )?;
        w.family(&MEMORY_SHMEM, memory(|m| Some(m.shmem_bytes)))?;
        w.family(
            &COVERAGE,
            cgroups.iter().map(|c| (c.labels.as_str(), c.coverage)),
        )
    }

    fn write_file_families<W: Write>(&self, w: &mut Families<'_, W>) -> io::Result<()> {
        for (family, value) in [
            (
                &FILE_PAGE_CACHE,
                (|f: &FileSeries| Some(f.cached)) as fn(&FileSeries) -> Option<u64>,
            ),
            (&FILE_DIRTY, |f| {
                f.dirty.filter(|_| f.took & took::DIRTY != 0)
            }),
            (&FILE_WRITEBACK, |f| {
                f.writeback.filter(|_| f.took & took::WRITEBACK != 0)
            }),
            (&FILE_WRITTEN, |f| {
                (f.took & took::WRITTEN != 0).then_some(f.written)
            }),
            (&FILE_ADDED, |f| {
                (f.took & took::ADDED_REMOVED != 0).then_some(f.added)
            }),
            (&FILE_REMOVED, |f| {
                (f.took & took::ADDED_REMOVED != 0).then_some(f.removed)
            }),
            (&FILE_ACCESSED, |f| {
                (f.took & took::ACCESSED != 0).then_some(f.accessed)
            }),
        ] {
            w.header(family)?;
            for file in &self.files {
                let Some(value) = value(file) else {
                    continue;
                };
                let (before, after) = self.cgroups[file.cgroup as usize].file_labels();
                w.sample(&[before, after, ",", &file.labels], value)?;
            }
        }
        Ok(())
    }

    fn write_own_families<W: Write>(&self, w: &mut Families<'_, W>) -> io::Result<()> {
        let stats = &self.stats;
        let hooks = [
            ("mm_filemap_add_to_page_cache", stats.add_events),
            ("mm_filemap_delete_from_page_cache", stats.delete_events),
        ];
        w.labelled(&EVENTS, "hook", hooks.iter().map(|&(hook, n)| (hook, n)))?;
        let reasons = [
            ("map_full", stats.map_full),
            ("read_failed", stats.read_failed),
            ("writers_map_full", stats.writers_map_full),
            ("cgroup_events_lost", stats.cgroup_events_lost),
            ("map_read_errors", stats.map_read_errors),
            ("missed_runs", stats.missed_runs),
        ];
        w.labelled(&LOST_EVENTS, "reason", reasons.iter().map(|&(r, n)| (r, n)))?;
        w.single(&MAP_ENTRIES, stats.map_entries)?;
        w.single(&OVERFLOW_RUNS, stats.overflow_runs)?;
        w.single(&EARLY_FLIPS, stats.early_flips)?;
        w.single(&MAP_CAPACITY, stats.map_capacity)?;
        w.single(&SERIES_LIMIT, self.max_series as u64)?;
        w.single(&SERIES_DROPPED, self.dropped)?;
        w.single(&SNAPSHOT_DURATION, self.snapshot_seconds)?;
        w.labelled(
            &PROGRAM_RUN_TIME,
            "program",
            self.programs
                .iter()
                .map(|p| (p.name.as_str(), p.run_time_ns as f64 / 1e9)),
        )?;
        w.labelled(
            &PROGRAM_RUNS,
            "program",
            self.programs.iter().map(|p| (p.name.as_str(), p.run_count)),
        )?;
        w.labelled(
            &BUILD_INFO,
            "version",
            [(env!("CARGO_PKG_VERSION"), 1u64)].into_iter(),
        )
    }

    /// The whole exposition as text (tests, and small scrapes).
    pub fn to_text(&self, format: ExpositionFormat) -> String {
        let mut out = Vec::new();
        // Writing into a Vec cannot fail.
        let _ = self.write(&mut out, format);
        String::from_utf8(out).unwrap_or_default()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gauge,
    Counter,
}

/// A metric family: `memtrace_<name>[_<unit>]`, its help and its type.
struct Family {
    name: &'static str,
    unit: Option<&'static str>,
    kind: Kind,
    help: &'static str,
}

const fn gauge(name: &'static str, unit: Option<&'static str>, help: &'static str) -> Family {
    Family {
        name,
        unit,
        kind: Kind::Gauge,
        help,
    }
}

const fn counter(name: &'static str, unit: Option<&'static str>, help: &'static str) -> Family {
    Family {
        name,
        unit,
        kind: Kind::Counter,
        help,
    }
}

const BYTES: Option<&str> = Some("bytes");
const SECONDS: Option<&str> = Some("seconds");

const CGROUP_PAGE_CACHE: Family = gauge(
    "cgroup_page_cache",
    BYTES,
    "Page cache memtrace attributes to the memory cgroup (its own pages, not its children's)",
);
const FILE_PAGE_CACHE: Family = gauge("file_page_cache", BYTES, "Page cache of a file charged to the cgroup; the cgroup's other files summed under an empty path");
const FILE_DIRTY: Family = gauge(
    "file_dirty",
    BYTES,
    "Dirty bytes of the file (cachestat), where measured",
);
const FILE_WRITEBACK: Family = gauge(
    "file_writeback",
    BYTES,
    "Bytes of the file under writeback (cachestat), where measured",
);
const FILE_WRITTEN: Family = counter(
    "file_written",
    BYTES,
    "Bytes the cgroup's processes wrote to the file since memtrace started",
);
const FILE_ADDED: Family = counter("file_added", BYTES, "Bytes the kernel added to the file's page cache for the cgroup since memtrace started (rate() is churn)");
const FILE_REMOVED: Family = counter(
    "file_removed",
    BYTES,
    "Bytes the kernel removed from the file's page cache for the cgroup since memtrace started",
);
const FILE_ACCESSED: Family = counter("file_accessed", BYTES, "Bytes of the file's pages that reads of the cgroup's found cached or brought in, since memtrace started (with --count-hits, where the kernel allows fentry on folio_mark_accessed); 1 - rate(added)/rate(accessed) is at least the hit ratio");
const CGROUP_REMOVED: Family = gauge(
    "cgroup_removed",
    None,
    "1 for a memory cgroup that is gone while its cache is still charged to it",
);
const MEMORY_LIMIT: Family = gauge(
    "cgroup_memory_limit",
    BYTES,
    "The cgroup's hard memory limit (v2 memory.max, v1 hierarchical limit); absent when unlimited",
);
const MEMORY_HIGH: Family = gauge(
    "cgroup_memory_high",
    BYTES,
    "Where reclaim and throttling begin (v2 memory.high, v1 soft limit); absent when unlimited",
);
const MEMORY_LIMIT_HITS: Family = counter(
    "cgroup_memory_limit_hits",
    None,
    "Times the cgroup's usage reached its limit (v2 memory.events max, v1 failcnt)",
);
const MEMORY_OOM_KILLS: Family = counter(
    "cgroup_memory_oom_kills",
    None,
    "Processes the OOM killer killed in the cgroup",
);
const MEMORY_REFAULTS: Family = counter(
    "cgroup_memory_refault_file",
    BYTES,
    "File pages read in again soon after eviction (memory.stat workingset_refault_file)",
);
const MEMORY_STALL_SOME: Family = gauge(
    "cgroup_memory_stall_some_ratio",
    None,
    "Share of the last 10 s some tasks of the cgroup stalled on memory (v2 memory.pressure)",
);
const MEMORY_STALL_FULL: Family = gauge(
    "cgroup_memory_stall_full_ratio",
    None,
    "Share of the last 10 s all tasks of the cgroup stalled on memory (v2 memory.pressure)",
);
const MEMORY_USAGE: Family = gauge(
    "cgroup_memory_usage",
    BYTES,
    "The cgroup's memory usage with its children's (v2 memory.current, v1 usage_in_bytes)",
);
const MEMORY_PAGE_CACHE: Family = gauge(
    "cgroup_memory_page_cache",
    BYTES,
    "memory.stat page cache of the cgroup and its children (v2 file, v1 total_cache)",
);
const MEMORY_ACTIVE_FILE: Family = gauge(
    "cgroup_memory_active_file",
    BYTES,
    "memory.stat active_file of the cgroup and its children",
);
const MEMORY_INACTIVE_FILE: Family = gauge(
    "cgroup_memory_inactive_file",
    BYTES,
    "memory.stat inactive_file of the cgroup and its children",
);
const MEMORY_SHMEM: Family = gauge(
    "cgroup_memory_shmem",
    BYTES,
    "memory.stat shmem of the cgroup and its children",
);
const COVERAGE: Family = gauge(
    "cgroup_coverage_ratio",
    None,
    "Page cache memtrace attributes to the cgroup and its children / memory.stat page cache",
);
const EVENTS: Family = counter(
    "events",
    None,
    "Page-cache events the kernel programs saw, by hook",
);
const LOST_EVENTS: Family = counter(
    "lost_events",
    None,
    "Events memtrace could not count, by reason",
);
const MAP_ENTRIES: Family = gauge("map_entries", None, "Entries in the (memcg, file) map");
const OVERFLOW_RUNS: Family = counter("overflow_runs", None, "Runs of events counted per memory cgroup, not per file, because the (memcg, file) map was full: detail lost, no page");
const EARLY_FLIPS: Family = counter(
    "early_flips",
    None,
    "Drains of the (memcg, file) map made early because the half being counted into was half full",
);
const MAP_CAPACITY: Family = gauge("map_capacity", None, "Capacity of the (memcg, file) map");
const SERIES_LIMIT: Family = gauge(
    "series_limit",
    None,
    "Most series a scrape exposes (--metrics-max-series)",
);
const SERIES_DROPPED: Family = gauge(
    "series_dropped",
    None,
    "Series left out of this scrape because the limit was reached",
);
const SNAPSHOT_DURATION: Family = gauge(
    "snapshot_duration",
    SECONDS,
    "Time the snapshot behind this scrape took",
);
const PROGRAM_RUN_TIME: Family = counter(
    "program_run_time",
    SECONDS,
    "Time memtrace's kernel programs ran (kernel.bpf_stats_enabled=1)",
);
const PROGRAM_RUNS: Family = counter("program_runs", None, "Runs of memtrace's kernel programs");
const BUILD_INFO: Family = gauge("build_info", None, "memtrace's version");

/// Writes families in one format.
struct Families<'a, W: Write> {
    out: &'a mut W,
    format: ExpositionFormat,
    /// The samples' name and `{` of the family being written, rendered once per family:
    /// a scrape of 100,000 files writes it hundreds of thousands of times.
    prefix: Vec<u8>,
}

impl<'a, W: Write> Families<'a, W> {
    fn new(out: &'a mut W, format: ExpositionFormat) -> Self {
        Self {
            out,
            format,
            prefix: Vec::new(),
        }
    }

    /// `# HELP`, `# TYPE` (and in OpenMetrics `# UNIT`) of a family; its samples follow.
    fn header(&mut self, family: &Family) -> io::Result<()> {
        let name = FamilyName(family);
        let (kind, total) = match family.kind {
            Kind::Gauge => ("gauge", ""),
            Kind::Counter => ("counter", "_total"),
        };
        match self.format {
            ExpositionFormat::OpenMetrics => {
                writeln!(self.out, "# HELP {name} {}", family.help)?;
                writeln!(self.out, "# TYPE {name} {kind}")?;
                if let Some(unit) = family.unit {
                    writeln!(self.out, "# UNIT {name} {unit}")?;
                }
            }
            ExpositionFormat::Classic => {
                writeln!(self.out, "# HELP {name}{total} {}", family.help)?;
                writeln!(self.out, "# TYPE {name}{total} {kind}")?;
            }
        }
        self.prefix = format!("{name}{total}").into_bytes();
        Ok(())
    }

    /// One sample of the family whose header came last, its labels `parts` joined (none: no
    /// braces).
    fn sample(&mut self, parts: &[&str], value: impl SampleValue) -> io::Result<()> {
        self.out.write_all(&self.prefix)?;
        if !parts.is_empty() {
            self.out.write_all(b"{")?;
            for part in parts {
                self.out.write_all(part.as_bytes())?;
            }
            self.out.write_all(b"}")?;
        }
        self.out.write_all(b" ")?;
        value.write_to(self.out)?;
        self.out.write_all(b"\n")
    }

    /// A family of samples labelled by (already escaped) label sets; `None` is no sample.
    fn family<V: SampleValue>(
        &mut self,
        family: &Family,
        samples: impl Iterator<Item = (impl AsRef<str>, Option<V>)>,
    ) -> io::Result<()> {
        self.header(family)?;
        for (labels, value) in samples {
            if let Some(value) = value {
                self.sample(&[labels.as_ref()], value)?;
            }
        }
        Ok(())
    }

    /// A family of samples with one label, `label`.
    fn labelled<V: SampleValue>(
        &mut self,
        family: &Family,
        label: &str,
        samples: impl Iterator<Item = (impl AsRef<str>, V)>,
    ) -> io::Result<()> {
        self.family(
            family,
            samples.map(|(value_of_label, value)| {
                let mut labels = String::new();
                push_label(&mut labels, label, value_of_label.as_ref());
                (labels, Some(value))
            }),
        )
    }

    /// A family of one sample without labels.
    fn single(&mut self, family: &Family, value: impl SampleValue) -> io::Result<()> {
        self.header(family)?;
        self.sample(&[], value)
    }
}

/// A sample's value as text.
trait SampleValue {
    fn write_to(&self, out: &mut impl Write) -> io::Result<()>;
}

impl SampleValue for u64 {
    fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        out.write_all(itoa::Buffer::new().format(*self).as_bytes())
    }
}

impl SampleValue for f64 {
    fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        write!(out, "{self}")
    }
}

/// `memtrace_<name>[_<unit>]`.
struct FamilyName<'a>(&'a Family);

impl Display for FamilyName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "memtrace_{}", self.0.name)?;
        if let Some(unit) = self.0.unit {
            write!(f, "_{unit}")?;
        }
        Ok(())
    }
}

/// Appends `name="value"` (comma-separated from what is before), the value escaped as label
/// values must be (`\`, `"` and newline). Names that are not UTF-8 reach here lossy (U+FFFD),
/// as label values must be text.
fn push_label(labels: &mut String, name: &str, value: &str) {
    if !labels.is_empty() {
        labels.push(',');
    }
    labels.push_str(name);
    labels.push_str("=\"");
    for c in value.chars() {
        match c {
            '\\' => labels.push_str("\\\\"),
            '"' => labels.push_str("\\\""),
            '\n' => labels.push_str("\\n"),
            c => labels.push(c),
        }
    }
    labels.push('"');
}

fn add_known(sum: Option<u64>, value: Option<u64>) -> Option<u64> {
    match (sum, value) {
        (Some(a), Some(b)) => Some(a + b),
        (None, value) => value,
        (sum, None) => sum,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model::Report, view::golden_tests::fixed_report};

    fn scrape(report: &Report, top_files: usize, max_series: usize) -> Scrape {
        let mut scrape = Scrape::new(top_files, max_series);
        for cgroup in &report.cgroups {
            scrape.add_cgroup(cgroup);
        }
        scrape.add_memory(|_, _| None);
        scrape.set_own(report.stats.clone(), report.snapshot_seconds, Vec::new());
        scrape
    }

    #[test]
    fn exposition_has_the_documented_series_and_escapes_labels() {
        let mut report = fixed_report();
        report.cgroups[0].files[0].path = Some("/tmp/a \"quoted\" \\ new\nline.log".into());
        let text = scrape(&report, 1, 10_000).to_text(ExpositionFormat::OpenMetrics);
        assert!(
            text.contains("# TYPE memtrace_cgroup_page_cache_bytes gauge"),
            "{text}"
        );
        assert!(
            text.contains(r#"path="/tmp/a \"quoted\" \\ new\nline.log""#),
            "escaped: {text}"
        );
        // The newline in the path stays escaped: every line is a comment or a whole sample
        // (`memtrace_name{labels} value`), and none is empty.
        for line in text.lines() {
            assert!(!line.is_empty(), "an empty line in:\n{text}");
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
            assert!(series.starts_with("memtrace_"), "not a sample: {line}");
            assert!(value.parse::<f64>().is_ok(), "not a value: {line}");
        }
        assert!(text.contains(r#"memtrace_file_page_cache_bytes{cgroup="/kubepods/burstable/pod5d1c/3f4b1c2d9e8a7b6c",cgroup_id="100",container="spring",pod="spring-0",namespace="shop",path="",layer=""}"#), "the rest summed: {text}");
        assert!(text.ends_with("# EOF\n"));
        let limited = scrape(&report, 20, 2).to_text(ExpositionFormat::OpenMetrics);
        assert!(limited.contains("memtrace_series_dropped "), "{limited}");
        assert!(!limited.contains("memtrace_series_dropped 0"), "{limited}");
    }

    #[test]
    fn every_family_is_one_contiguous_group_with_its_header_first() {
        let report = fixed_report();
        for format in [ExpositionFormat::OpenMetrics, ExpositionFormat::Classic] {
            let text = scrape(&report, 20, 10_000).to_text(format);
            let mut seen = std::collections::HashSet::new();
            let mut current = String::new();
            for line in text.lines() {
                if let Some(rest) = line.strip_prefix("# TYPE ") {
                    let name = rest.split_once(' ').unwrap().0.to_owned();
                    assert!(seen.insert(name.clone()), "{name} declared twice:\n{text}");
                    current = name;
                } else if !line.starts_with('#') {
                    let series = line.split(['{', ' ']).next().unwrap();
                    let family = series.strip_suffix("_total").unwrap_or(series);
                    let current = current.strip_suffix("_total").unwrap_or(&current);
                    assert_eq!(family, current, "a sample outside its family: {line}");
                }
            }
        }
    }

    #[test]
    fn the_classic_text_names_counters_by_their_samples_and_has_no_openmetrics_lines() {
        let text = scrape(&fixed_report(), 20, 10_000).to_text(ExpositionFormat::Classic);
        assert!(
            text.contains("# HELP memtrace_events_total Page-cache events"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE memtrace_events_total counter"),
            "{text}"
        );
        assert!(text.contains("# TYPE memtrace_map_entries gauge"), "{text}");
        assert!(!text.contains("# UNIT"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        let open = scrape(&fixed_report(), 20, 10_000).to_text(ExpositionFormat::OpenMetrics);
        assert!(open.contains("# TYPE memtrace_events counter"), "{open}");
        assert!(
            open.contains("# UNIT memtrace_file_written_bytes bytes"),
            "{open}"
        );
        let samples = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(samples(&text), samples(&open), "the same samples in both");
    }

    #[test]
    fn a_scrape_after_a_cgroup_is_gone_has_no_series_of_it() {
        let mut report = fixed_report();
        report.stats.add_events = 100;
        let first = scrape(&report, 20, 10_000).to_text(ExpositionFormat::OpenMetrics);
        assert!(first.contains("nginx.service"), "{first}");
        // The fixture's nginx cgroup is removed: same labels as when it lived, and flagged.
        assert!(
            first.contains(r#"memtrace_cgroup_page_cache_bytes{cgroup="/system.slice/nginx.service",cgroup_id="200","#),
            "{first}"
        );
        assert!(
            first.contains(
                r#"memtrace_cgroup_removed{cgroup="/system.slice/nginx.service",cgroup_id="200","#
            ),
            "{first}"
        );
        report
            .cgroups
            .retain(|c| c.unit.as_deref() != Some("nginx.service"));
        report.stats.add_events = 150;
        let second = scrape(&report, 20, 10_000).to_text(ExpositionFormat::OpenMetrics);
        assert!(
            !second.contains("nginx.service"),
            "a stale series:\n{second}"
        );
        assert!(
            second.contains(r#"memtrace_events_total{hook="mm_filemap_add_to_page_cache"} 150"#),
            "{second}"
        );
    }
}
