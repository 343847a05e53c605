//! The Prometheus/OpenMetrics exposition of a report: `memtrace serve`'s `/metrics`.
//!
//! Built with `prometheus-client`'s registry and text encoder. Cardinality is bounded: the
//! largest `top_files` files of each cgroup get their own series, the rest of the cgroup's
//! files are summed into one series with an empty `path`, and past `max_series` no more
//! series are added (memtrace says how many were left out).

use std::{collections::HashMap, sync::atomic::AtomicU64};

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};

use crate::model::{CgroupUsage, MemoryFigures, ProgramStats, Report};

/// What a scrape shows besides the report.
pub struct MetricsInput<'a> {
    pub report: &'a Report,
    /// memory.stat of each reported cgroup, by (hierarchy, id).
    pub memory: &'a HashMap<(u32, u64), MemoryFigures>,
    /// Run time of memtrace's programs, where the kernel's BPF stats are on.
    pub programs: &'a [ProgramStats],
    pub top_files: usize,
    pub max_series: usize,
}

/// Who a cgroup is: `cgroup` (its path, or `id:N` when it has none), container, container
/// id, pod and namespace (empty where they do not apply).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CgroupLabels {
    cgroup: String,
    /// The cgroup's id: it tells apart a removed cgroup from a new one made at its path,
    /// while the series of each keep their labels when their cgroup goes.
    cgroup_id: String,
    container: String,
    container_id: String,
    pod: String,
    namespace: String,
}

/// A file of a cgroup: its path as the container sees it (`""` for the cgroup's other files
/// summed), and `upper` or `lower` for overlay layers.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FileLabels {
    cgroup: String,
    cgroup_id: String,
    container: String,
    pod: String,
    namespace: String,
    path: String,
    layer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabel {
    hook: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProgramLabel {
    program: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

type GaugeF64 = Gauge<f64, AtomicU64>;
type CounterF64 = Counter<f64, AtomicU64>;

/// OpenMetrics label value escaping (`\`, `"` and newline); prometheus-client writes values
/// as given. Names that are not UTF-8 reach here lossy (U+FFFD), as label values must be text.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

impl CgroupLabels {
    fn of(cgroup: &CgroupUsage) -> Self {
        let path = match &cgroup.path {
            Some(path) => path.clone(),
            None => format!("id:{}", cgroup.id),
        };
        let container = cgroup.container.as_ref();
        let pod = container.and_then(|c| c.pod.as_ref());
        Self {
            cgroup: escape(&path),
            cgroup_id: cgroup.id.to_string(),
            container: escape(container.and_then(|c| c.name.as_deref()).unwrap_or("")),
            container_id: escape(container.map_or("", |c| &c.id)),
            pod: escape(pod.and_then(|p| p.name.as_deref()).unwrap_or("")),
            namespace: escape(pod.and_then(|p| p.namespace.as_deref()).unwrap_or("")),
        }
    }

    fn file(&self, path: &str, layer: &str) -> FileLabels {
        FileLabels {
            cgroup: self.cgroup.clone(),
            cgroup_id: self.cgroup_id.clone(),
            container: self.container.clone(),
            pod: self.pod.clone(),
            namespace: self.namespace.clone(),
            path: escape(path),
            layer: layer.to_owned(),
        }
    }
}

/// Every series memtrace serves, registered once. Each scrape clears the per-cgroup and
/// per-file families and fills them from a fresh report, so a cgroup or file that is gone
/// leaves no stale series; memtrace's own totals are brought up to the report's.
pub struct Metrics {
    registry: Registry,
    cgroup_cache: Family<CgroupLabels, Gauge>,
    file_cache: Family<FileLabels, Gauge>,
    file_dirty: Family<FileLabels, Gauge>,
    file_writeback: Family<FileLabels, Gauge>,
    file_written: Family<FileLabels, Counter>,
    file_added: Family<FileLabels, Counter>,
    file_removed: Family<FileLabels, Counter>,
    file_accessed: Family<FileLabels, Counter>,
    cgroup_removed: Family<CgroupLabels, Gauge>,
    stat_usage: Family<CgroupLabels, Gauge>,
    stat_page_cache: Family<CgroupLabels, Gauge>,
    stat_active: Family<CgroupLabels, Gauge>,
    stat_inactive: Family<CgroupLabels, Gauge>,
    stat_shmem: Family<CgroupLabels, Gauge>,
    coverage: Family<CgroupLabels, GaugeF64>,
    limit: Family<CgroupLabels, Gauge>,
    high: Family<CgroupLabels, Gauge>,
    limit_hits: Family<CgroupLabels, Counter>,
    oom_kills: Family<CgroupLabels, Counter>,
    refaults: Family<CgroupLabels, Counter>,
    stall_some: Family<CgroupLabels, GaugeF64>,
    stall_full: Family<CgroupLabels, GaugeF64>,
    events: Family<HookLabel, Counter>,
    lost: Family<ReasonLabel, Counter>,
    map_entries: Gauge,
    map_capacity: Gauge,
    overflow_runs: Counter,
    early_flips: Counter,
    series_limit: Gauge,
    series_dropped: Gauge,
    snapshot_seconds: GaugeF64,
    program_run_time: Family<ProgramLabel, CounterF64>,
    program_runs: Family<ProgramLabel, Counter>,
}

/// Counts series against the cap.
struct Budget {
    left: usize,
    dropped: u64,
}

impl Budget {
    fn take(&mut self, series: usize) -> bool {
        if self.left >= series {
            self.left -= series;
            true
        } else {
            self.dropped += series as u64;
            false
        }
    }
}

/// Brings a counter up to `total` (the kernel's and memtrace's counters only grow).
fn count_to(counter: &Counter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut metrics = Self {
            registry: Registry::with_prefix("memtrace"),
            cgroup_cache: Family::default(),
            file_cache: Family::default(),
            file_dirty: Family::default(),
            file_writeback: Family::default(),
            file_written: Family::default(),
            file_added: Family::default(),
            file_accessed: Family::default(),
            file_removed: Family::default(),
            cgroup_removed: Family::default(),
            stat_usage: Family::default(),
            stat_page_cache: Family::default(),
            stat_active: Family::default(),
            stat_inactive: Family::default(),
            stat_shmem: Family::default(),
            coverage: Family::default(),
            limit: Family::default(),
            high: Family::default(),
            limit_hits: Family::default(),
            oom_kills: Family::default(),
            refaults: Family::default(),
            stall_some: Family::default(),
            stall_full: Family::default(),
            events: Family::default(),
            lost: Family::default(),
            map_entries: Gauge::default(),
            map_capacity: Gauge::default(),
            overflow_runs: Counter::default(),
            early_flips: Counter::default(),
            series_limit: Gauge::default(),
            series_dropped: Gauge::default(),
            snapshot_seconds: GaugeF64::default(),
            program_run_time: Family::default(),
            program_runs: Family::default(),
        };
        metrics.register();
        metrics
    }

    fn register(&mut self) {
        let r = &mut self.registry;
        r.register_with_unit(
            "cgroup_page_cache",
            "Page cache memtrace attributes to the memory cgroup (its own pages, not its children's)",
            Unit::Bytes,
            self.cgroup_cache.clone(),
        );
        r.register_with_unit(
            "file_page_cache",
            "Page cache of a file charged to the cgroup; the cgroup's other files summed under path=\"\"",
            Unit::Bytes,
            self.file_cache.clone(),
        );
        r.register_with_unit(
            "file_dirty",
            "Dirty bytes of the file (cachestat), where measured",
            Unit::Bytes,
            self.file_dirty.clone(),
        );
        r.register_with_unit(
            "file_writeback",
            "Bytes of the file under writeback (cachestat), where measured",
            Unit::Bytes,
            self.file_writeback.clone(),
        );
        r.register_with_unit(
            "file_written",
            "Bytes the cgroup's processes wrote to the file since memtrace started",
            Unit::Bytes,
            self.file_written.clone(),
        );
        r.register_with_unit(
            "file_added",
            "Bytes the kernel added to the file's page cache for the cgroup since memtrace started (rate() is churn)",
            Unit::Bytes,
            self.file_added.clone(),
        );
        r.register_with_unit(
            "file_removed",
            "Bytes the kernel removed from the file's page cache for the cgroup since memtrace started",
            Unit::Bytes,
            self.file_removed.clone(),
        );
        r.register_with_unit(
            "file_accessed",
            "Bytes of the file's pages that reads of the cgroup's found cached or brought in, since memtrace started (where the kernel allows fentry on folio_mark_accessed); 1 - rate(added)/rate(accessed) is at least the hit ratio",
            Unit::Bytes,
            self.file_accessed.clone(),
        );
        r.register(
            "cgroup_removed",
            "1 for a memory cgroup that is gone while its cache is still charged to it",
            self.cgroup_removed.clone(),
        );
        r.register_with_unit(
            "cgroup_memory_limit",
            "The cgroup's hard memory limit (v2 memory.max, v1 hierarchical limit); absent when unlimited",
            Unit::Bytes,
            self.limit.clone(),
        );
        r.register_with_unit(
            "cgroup_memory_high",
            "Where reclaim and throttling begin (v2 memory.high, v1 soft limit); absent when unlimited",
            Unit::Bytes,
            self.high.clone(),
        );
        r.register(
            "cgroup_memory_limit_hits",
            "Times the cgroup's usage reached its limit (v2 memory.events max, v1 failcnt)",
            self.limit_hits.clone(),
        );
        r.register(
            "cgroup_memory_oom_kills",
            "Processes the OOM killer killed in the cgroup",
            self.oom_kills.clone(),
        );
        r.register_with_unit(
            "cgroup_memory_refault_file",
            "File pages read in again soon after eviction (memory.stat workingset_refault_file)",
            Unit::Bytes,
            self.refaults.clone(),
        );
        r.register(
            "cgroup_memory_stall_some_ratio",
            "Share of the last 10 s some tasks of the cgroup stalled on memory (v2 memory.pressure)",
            self.stall_some.clone(),
        );
        r.register(
            "cgroup_memory_stall_full_ratio",
            "Share of the last 10 s all tasks of the cgroup stalled on memory (v2 memory.pressure)",
            self.stall_full.clone(),
        );
        r.register_with_unit(
            "cgroup_memory_usage",
            "The cgroup's memory usage with its children's (v2 memory.current, v1 usage_in_bytes)",
            Unit::Bytes,
            self.stat_usage.clone(),
        );
        r.register_with_unit(
            "cgroup_memory_page_cache",
            "memory.stat page cache of the cgroup and its children (v2 file, v1 total_cache)",
            Unit::Bytes,
            self.stat_page_cache.clone(),
        );
        r.register_with_unit(
            "cgroup_memory_active_file",
            "memory.stat active_file of the cgroup and its children",
            Unit::Bytes,
            self.stat_active.clone(),
        );
        r.register_with_unit(
            "cgroup_memory_inactive_file",
            "memory.stat inactive_file of the cgroup and its children",
            Unit::Bytes,
            self.stat_inactive.clone(),
        );
        r.register_with_unit(
            "cgroup_memory_shmem",
            "memory.stat shmem of the cgroup and its children",
            Unit::Bytes,
            self.stat_shmem.clone(),
        );
        r.register(
            "cgroup_coverage_ratio",
            "Page cache memtrace attributes to the cgroup and its children / memory.stat page cache",
            self.coverage.clone(),
        );
        r.register(
            "events",
            "Page-cache events the kernel programs saw, by hook",
            self.events.clone(),
        );
        r.register(
            "lost_events",
            "Events memtrace could not count, by reason",
            self.lost.clone(),
        );
        r.register(
            "map_entries",
            "Entries in the (memcg, file) map",
            self.map_entries.clone(),
        );
        r.register(
            "overflow_runs",
            "Runs of events counted per memory cgroup, not per file, because the (memcg, file) map was full: detail lost, no page",
            self.overflow_runs.clone(),
        );
        r.register(
            "early_flips",
            "Drains of the (memcg, file) map made early because the half being counted into was half full",
            self.early_flips.clone(),
        );
        r.register(
            "map_capacity",
            "Capacity of the (memcg, file) map",
            self.map_capacity.clone(),
        );
        r.register(
            "series_limit",
            "Most series a scrape exposes (--metrics-max-series)",
            self.series_limit.clone(),
        );
        r.register(
            "series_dropped",
            "Series left out of this scrape because the limit was reached",
            self.series_dropped.clone(),
        );
        r.register_with_unit(
            "snapshot_duration",
            "Time the snapshot behind this scrape took",
            Unit::Seconds,
            self.snapshot_seconds.clone(),
        );
        r.register_with_unit(
            "program_run_time",
            "Time memtrace's kernel programs ran (kernel.bpf_stats_enabled=1)",
            Unit::Seconds,
            self.program_run_time.clone(),
        );
        r.register(
            "program_runs",
            "Runs of memtrace's kernel programs",
            self.program_runs.clone(),
        );
        let build: Family<VersionLabel, Gauge> = Family::default();
        build
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        r.register("build_info", "memtrace's version", build);
    }

    /// The exposition text for one scrape.
    pub fn render(&self, input: &MetricsInput<'_>) -> String {
        for family in [
            &self.cgroup_cache,
            &self.stat_usage,
            &self.stat_page_cache,
            &self.stat_active,
            &self.stat_inactive,
            &self.stat_shmem,
        ] {
            family.clear();
        }
        for family in [&self.limit, &self.high, &self.cgroup_removed] {
            family.clear();
        }
        for family in [&self.coverage, &self.stall_some, &self.stall_full] {
            family.clear();
        }
        for family in [&self.limit_hits, &self.oom_kills, &self.refaults] {
            family.clear();
        }
        for family in [&self.file_cache, &self.file_dirty, &self.file_writeback] {
            family.clear();
        }
        for family in [
            &self.file_written,
            &self.file_added,
            &self.file_removed,
            &self.file_accessed,
        ] {
            family.clear();
        }

        let report = input.report;
        let mut budget = Budget {
            left: input.max_series,
            dropped: 0,
        };
        let subtree = report.subtree_cached_bytes();
        for cgroup in &report.cgroups {
            if !budget.take(1) {
                continue;
            }
            let labels = CgroupLabels::of(cgroup);
            self.cgroup_cache
                .get_or_create(&labels)
                .set(cgroup.cached_bytes as i64);
            if cgroup.removed && budget.take(1) {
                self.cgroup_removed.get_or_create(&labels).set(1);
            }
            if let Some(memory) = input.memory.get(&(cgroup.hierarchy, cgroup.id)) {
                if budget.take(MEMORY_SERIES) {
                    self.memory_series(cgroup, &labels, memory, &subtree);
                }
            }
            self.file_series(cgroup, &labels, input.top_files, &mut budget);
        }
        self.self_series(input, budget.dropped);

        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }

    /// memory.stat of the cgroup, and how much of its page cache memtrace attributes.
    fn memory_series(
        &self,
        cgroup: &CgroupUsage,
        labels: &CgroupLabels,
        memory: &MemoryFigures,
        subtree: &HashMap<(u32, &str), u64>,
    ) {
        for (family, value) in [
            (&self.stat_usage, memory.usage_bytes),
            (&self.stat_page_cache, memory.page_cache_bytes),
            (&self.stat_active, memory.active_file_bytes),
            (&self.stat_inactive, memory.inactive_file_bytes),
            (&self.stat_shmem, memory.shmem_bytes),
        ] {
            family.get_or_create(labels).set(value as i64);
        }
        // memory.stat is hierarchical: compared with the attribution of the whole subtree.
        let attributed = cgroup
            .path
            .as_deref()
            .and_then(|p| subtree.get(&(cgroup.hierarchy, p)))
            .copied()
            .unwrap_or(cgroup.cached_bytes);
        if let Some(coverage) = memory.coverage_of(attributed) {
            self.coverage.get_or_create(labels).set(coverage);
        }
        let p = &memory.pressure;
        if let Some(limit) = p.limit_bytes {
            self.limit.get_or_create(labels).set(limit as i64);
        }
        if let Some(high) = p.high_bytes {
            self.high.get_or_create(labels).set(high as i64);
        }
        self.limit_hits.get_or_create(labels).inc_by(p.limit_hits);
        self.oom_kills.get_or_create(labels).inc_by(p.oom_kills);
        self.refaults
            .get_or_create(labels)
            .inc_by(memory.refault_file_bytes);
        if let Some(some) = p.some_avg10 {
            self.stall_some.get_or_create(labels).set(some / 100.0);
        }
        if let Some(full) = p.full_avg10 {
            self.stall_full.get_or_create(labels).set(full / 100.0);
        }
    }

    /// The cgroup's largest files, each a series; the rest summed under an empty path.
    fn file_series(
        &self,
        cgroup: &CgroupUsage,
        cgroup_labels: &CgroupLabels,
        top_files: usize,
        budget: &mut Budget,
    ) {
        // Two files can show the same path (a deleted log and its successor): their series add.
        let mut cached: HashMap<FileLabels, FileFigures> = HashMap::new();
        let mut shown_bytes = 0u64;
        for file in cgroup
            .files
            .iter()
            .filter(|f| f.cached_bytes > 0)
            .take(top_files)
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
            let entry = cached.entry(cgroup_labels.file(&path, &layer)).or_default();
            entry.cached += file.cached_bytes;
            entry.dirty = add_known(entry.dirty, file.dirty_bytes);
            entry.writeback = add_known(entry.writeback, file.writeback_bytes);
            entry.written += file.written_bytes;
            entry.added += file.added_bytes;
            entry.removed += file.removed_bytes;
            entry.accessed += file.accessed_bytes;
            shown_bytes += file.cached_bytes;
        }
        for (labels, figures) in cached {
            let FileFigures {
                cached: bytes,
                dirty,
                writeback,
                written,
                added,
                removed,
                accessed,
            } = figures;
            if !budget.take(1) {
                continue;
            }
            self.file_cache.get_or_create(&labels).set(bytes as i64);
            if budget.take(2) {
                self.file_added.get_or_create(&labels).inc_by(added);
                self.file_removed.get_or_create(&labels).inc_by(removed);
            }
            if let Some(dirty) = dirty {
                if budget.take(1) {
                    self.file_dirty.get_or_create(&labels).set(dirty as i64);
                }
            }
            if let Some(writeback) = writeback {
                if budget.take(1) {
                    self.file_writeback
                        .get_or_create(&labels)
                        .set(writeback as i64);
                }
            }
            if written > 0 && budget.take(1) {
                self.file_written.get_or_create(&labels).inc_by(written);
            }
            if accessed > 0 && budget.take(1) {
                self.file_accessed.get_or_create(&labels).inc_by(accessed);
            }
        }
        let rest = cgroup.cached_bytes.saturating_sub(shown_bytes);
        if rest > 0 && budget.take(1) {
            self.file_cache
                .get_or_create(&cgroup_labels.file("", ""))
                .set(rest as i64);
        }
    }

    /// memtrace's own health: events, losses, map use, snapshot time, program run time.
    fn self_series(&self, input: &MetricsInput<'_>, dropped_series: u64) {
        let stats = &input.report.stats;
        for (hook, count) in [
            ("mm_filemap_add_to_page_cache", stats.add_events),
            ("mm_filemap_delete_from_page_cache", stats.delete_events),
        ] {
            let label = HookLabel {
                hook: hook.to_owned(),
            };
            count_to(&self.events.get_or_create(&label), count);
        }
        for (reason, count) in [
            ("map_full", stats.map_full),
            ("read_failed", stats.read_failed),
            ("writers_map_full", stats.writers_map_full),
            ("cgroup_events_lost", stats.cgroup_events_lost),
            ("map_read_errors", stats.map_read_errors),
            ("missed_runs", stats.missed_runs),
        ] {
            let label = ReasonLabel {
                reason: reason.to_owned(),
            };
            count_to(&self.lost.get_or_create(&label), count);
        }
        self.map_entries.set(stats.map_entries as i64);
        self.map_capacity.set(stats.map_capacity as i64);
        count_to(&self.overflow_runs, stats.overflow_runs);
        count_to(&self.early_flips, stats.early_flips);
        self.series_limit.set(input.max_series as i64);
        self.series_dropped.set(dropped_series as i64);
        self.snapshot_seconds.set(input.report.snapshot_seconds);
        for program in input.programs {
            let label = ProgramLabel {
                program: program.name.clone(),
            };
            let run_time = self.program_run_time.get_or_create(&label);
            let seconds = program.run_time_ns as f64 / 1e9;
            run_time.inc_by((seconds - run_time.get()).max(0.0));
            count_to(&self.program_runs.get_or_create(&label), program.run_count);
        }
    }
}

/// The same exposition in Prometheus' classic text format (0.0.4), for clients that do not ask
/// for OpenMetrics (`curl`, `promtool check metrics`): a counter's HELP and TYPE name its
/// `_total` samples, and there is no `# UNIT` or `# EOF`.
pub fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Series a cgroup's memory.stat adds: usage, page cache, active, inactive, shmem, coverage,
/// limit, high, limit hits, OOM kills, refaults, two stall ratios.
const MEMORY_SERIES: usize = 13;

/// What the files shown under one label set add up to.
#[derive(Default)]
struct FileFigures {
    cached: u64,
    dirty: Option<u64>,
    writeback: Option<u64>,
    written: u64,
    added: u64,
    removed: u64,
    accessed: u64,
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
    use crate::view::golden_tests::fixed_report;

    #[test]
    fn exposition_has_the_documented_series_and_escapes_labels() {
        let mut report = fixed_report();
        report.cgroups[0].files[0].path = Some("/tmp/a \"quoted\" \\ new\nline.log".into());
        let memory = HashMap::new();
        let text = Metrics::new().render(&MetricsInput {
            report: &report,
            memory: &memory,
            programs: &[],
            top_files: 1,
            max_series: 10_000,
        });
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
        let limited = Metrics::new().render(&MetricsInput {
            report: &report,
            memory: &memory,
            programs: &[],
            top_files: 20,
            max_series: 2,
        });
        assert!(limited.contains("memtrace_series_dropped "), "{limited}");
        assert!(!limited.contains("memtrace_series_dropped 0"), "{limited}");
    }

    #[test]
    fn the_classic_text_names_counters_by_their_samples_and_drops_openmetrics_lines() {
        let text = classic_text(
            "# HELP memtrace_events Page-cache events.\n# TYPE memtrace_events counter\nmemtrace_events_total{hook=\"a\"} 3\n# HELP memtrace_map_entries Entries.\n# TYPE memtrace_map_entries gauge\n# UNIT memtrace_x_bytes bytes\nmemtrace_map_entries 5\n# EOF\n",
        );
        assert_eq!(
            text,
            "# HELP memtrace_events_total Page-cache events.\n# TYPE memtrace_events_total counter\nmemtrace_events_total{hook=\"a\"} 3\n# HELP memtrace_map_entries Entries.\n# TYPE memtrace_map_entries gauge\nmemtrace_map_entries 5\n"
        );
    }

    #[test]
    fn a_scrape_after_a_cgroup_is_gone_has_no_series_of_it_and_counters_only_grow() {
        let metrics = Metrics::new();
        let memory = HashMap::new();
        let mut report = fixed_report();
        report.stats.add_events = 100;
        let scrape = |report: &Report| {
            metrics.render(&MetricsInput {
                report,
                memory: &memory,
                programs: &[],
                top_files: 20,
                max_series: 10_000,
            })
        };
        let first = scrape(&report);
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
        let second = scrape(&report);
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
