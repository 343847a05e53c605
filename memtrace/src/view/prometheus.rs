//! The Prometheus/OpenMetrics exposition of a report: `memtrace serve`'s `/metrics`.
//!
//! Built with `prometheus-client`'s registry and text encoder. Cardinality is bounded: the
//! largest `top_files` files of each cgroup get their own series, the rest of the cgroup's
//! files are summed into one series with an empty `path`, and past `max_series` no more
//! series are added (memtrace says how many were left out).

use std::collections::HashMap;

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};

use crate::model::{CgroupUsage, Container, MemoryFigures, ProgramStats, Report};

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

type Labels = Vec<(&'static str, String)>;

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

/// Who a cgroup is, as labels: `cgroup` (its path, or `id:N` when it has none), container,
/// container id, pod and namespace (empty where they do not apply).
fn cgroup_labels(cgroup: &CgroupUsage) -> Labels {
    // A removed cgroup's path can be taken again by a new cgroup while the old one's cache
    // lingers: the removed one is told apart, so no two series share labels.
    let path = match (&cgroup.path, cgroup.removed) {
        (Some(path), false) => path.clone(),
        (Some(path), true) => format!("{path} (removed, id {})", cgroup.id),
        (None, _) => format!("id:{}", cgroup.id),
    };
    let container = cgroup.container.as_ref();
    let pod = container.and_then(|c| c.pod.as_ref());
    vec![
        ("cgroup", escape(&path)),
        (
            "container",
            escape(container.and_then(|c| c.name.as_deref()).unwrap_or("")),
        ),
        (
            "container_id",
            escape(container.map_or("", |c: &Container| &c.id)),
        ),
        (
            "pod",
            escape(pod.and_then(|p| p.name.as_deref()).unwrap_or("")),
        ),
        (
            "namespace",
            escape(pod.and_then(|p| p.namespace.as_deref()).unwrap_or("")),
        ),
    ]
}

/// Series families, registered once per scrape.
struct Families {
    cgroup_cache: Family<Labels, Gauge>,
    file_cache: Family<Labels, Gauge>,
    file_dirty: Family<Labels, Gauge>,
    file_writeback: Family<Labels, Gauge>,
    file_written: Family<Labels, Counter>,
    stat_page_cache: Family<Labels, Gauge>,
    stat_active: Family<Labels, Gauge>,
    stat_inactive: Family<Labels, Gauge>,
    stat_shmem: Family<Labels, Gauge>,
    coverage: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
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

/// The exposition text for one scrape.
pub fn render(input: &MetricsInput<'_>) -> String {
    let report = input.report;
    let mut registry = Registry::with_prefix("memtrace");
    let families = Families {
        cgroup_cache: Family::default(),
        file_cache: Family::default(),
        file_dirty: Family::default(),
        file_writeback: Family::default(),
        file_written: Family::default(),
        stat_page_cache: Family::default(),
        stat_active: Family::default(),
        stat_inactive: Family::default(),
        stat_shmem: Family::default(),
        coverage: Family::default(),
    };
    let mut budget = Budget {
        left: input.max_series,
        dropped: 0,
    };

    // Attribution summed over each cgroup's subtree, to compare with memory.stat's
    // hierarchical page cache.
    let mut subtree: HashMap<(u32, &str), u64> = HashMap::new();
    for cgroup in report.cgroups.iter().filter(|c| !c.removed) {
        let Some(path) = cgroup.path.as_deref() else {
            continue;
        };
        let mut ancestor = path;
        loop {
            *subtree.entry((cgroup.hierarchy, ancestor)).or_default() += cgroup.cached_bytes;
            match ancestor.rfind('/') {
                Some(0) if ancestor != "/" => ancestor = "/",
                Some(i) if i > 0 => ancestor = &ancestor[..i],
                _ => break,
            }
        }
    }

    for cgroup in &report.cgroups {
        if !budget.take(1) {
            continue;
        }
        let labels = cgroup_labels(cgroup);
        families
            .cgroup_cache
            .get_or_create(&labels)
            .set(cgroup.cached_bytes as i64);
        if let Some(memory) = input.memory.get(&(cgroup.hierarchy, cgroup.id)) {
            if budget.take(5) {
                for (family, value) in [
                    (&families.stat_page_cache, memory.page_cache_bytes),
                    (&families.stat_active, memory.active_file_bytes),
                    (&families.stat_inactive, memory.inactive_file_bytes),
                    (&families.stat_shmem, memory.shmem_bytes),
                ] {
                    family.get_or_create(&labels).set(value as i64);
                }
                let attributed = cgroup
                    .path
                    .as_deref()
                    .and_then(|p| subtree.get(&(cgroup.hierarchy, p)))
                    .copied()
                    .unwrap_or(cgroup.cached_bytes);
                if memory.page_cache_bytes > 0 {
                    families
                        .coverage
                        .get_or_create(&labels)
                        .set(attributed as f64 / memory.page_cache_bytes as f64);
                }
            }
        }
        file_series(&families, cgroup, &labels, input.top_files, &mut budget);
    }

    registry.register_with_unit(
        "cgroup_page_cache",
        "Page cache memtrace attributes to the memory cgroup (its own pages, not its children's)",
        Unit::Bytes,
        families.cgroup_cache,
    );
    registry.register_with_unit(
        "file_page_cache",
        "Page cache of a file charged to the cgroup; the cgroup's other files summed under path=\"\"",
        Unit::Bytes,
        families.file_cache,
    );
    registry.register_with_unit(
        "file_dirty",
        "Dirty bytes of the file (cachestat), where measured",
        Unit::Bytes,
        families.file_dirty,
    );
    registry.register_with_unit(
        "file_writeback",
        "Bytes of the file under writeback (cachestat), where measured",
        Unit::Bytes,
        families.file_writeback,
    );
    registry.register_with_unit(
        "file_written",
        "Bytes the cgroup's processes wrote to the file since memtrace started",
        Unit::Bytes,
        families.file_written,
    );
    registry.register_with_unit(
        "cgroup_memory_page_cache",
        "memory.stat page cache of the cgroup and its children (v2 file, v1 total_cache)",
        Unit::Bytes,
        families.stat_page_cache,
    );
    registry.register_with_unit(
        "cgroup_memory_active_file",
        "memory.stat active_file of the cgroup and its children",
        Unit::Bytes,
        families.stat_active,
    );
    registry.register_with_unit(
        "cgroup_memory_inactive_file",
        "memory.stat inactive_file of the cgroup and its children",
        Unit::Bytes,
        families.stat_inactive,
    );
    registry.register_with_unit(
        "cgroup_memory_shmem",
        "memory.stat shmem of the cgroup and its children",
        Unit::Bytes,
        families.stat_shmem,
    );
    registry.register(
        "cgroup_coverage_ratio",
        "Page cache memtrace attributes to the cgroup and its children / memory.stat page cache",
        families.coverage,
    );
    self_metrics(&mut registry, input, budget.dropped);

    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut text, &registry);
    text
}

/// The cgroup's largest files, each a series; the rest summed under an empty path.
fn file_series(
    families: &Families,
    cgroup: &CgroupUsage,
    cgroup_labels: &Labels,
    top_files: usize,
    budget: &mut Budget,
) {
    let labels_of = |path: &str, layer: &str| -> Labels {
        let mut labels: Labels = cgroup_labels
            .iter()
            .filter(|(k, _)| *k != "container_id")
            .cloned()
            .collect();
        labels.push(("path", escape(path)));
        labels.push(("layer", layer.to_owned()));
        labels
    };
    // Two files can show the same path (a deleted log and its successor): their series add.
    let mut cached: HashMap<Labels, (u64, Option<u64>, Option<u64>, u64)> = HashMap::new();
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
        let entry = cached.entry(labels_of(&path, &layer)).or_default();
        entry.0 += file.cached_bytes;
        entry.1 = add_known(entry.1, file.dirty_bytes);
        entry.2 = add_known(entry.2, file.writeback_bytes);
        entry.3 += file.written_bytes;
        shown_bytes += file.cached_bytes;
    }
    for (labels, (bytes, dirty, writeback, written)) in cached {
        if !budget.take(1) {
            continue;
        }
        families.file_cache.get_or_create(&labels).set(bytes as i64);
        if let Some(dirty) = dirty {
            if budget.take(1) {
                families.file_dirty.get_or_create(&labels).set(dirty as i64);
            }
        }
        if let Some(writeback) = writeback {
            if budget.take(1) {
                families
                    .file_writeback
                    .get_or_create(&labels)
                    .set(writeback as i64);
            }
        }
        if written > 0 && budget.take(1) {
            families.file_written.get_or_create(&labels).inc_by(written);
        }
    }
    let rest = cgroup.cached_bytes.saturating_sub(shown_bytes);
    if rest > 0 && budget.take(1) {
        families
            .file_cache
            .get_or_create(&labels_of("", ""))
            .set(rest as i64);
    }
}

fn add_known(sum: Option<u64>, value: Option<u64>) -> Option<u64> {
    match (sum, value) {
        (Some(a), Some(b)) => Some(a + b),
        (None, value) => value,
        (sum, None) => sum,
    }
}

/// memtrace's own health: events, losses, map use, snapshot time, program run time.
fn self_metrics(registry: &mut Registry, input: &MetricsInput<'_>, dropped_series: u64) {
    let report = input.report;
    let stats = &report.stats;
    let events: Family<Vec<(&'static str, String)>, Counter> = Family::default();
    for (hook, count) in [
        ("mm_filemap_add_to_page_cache", stats.add_events),
        ("mm_filemap_delete_from_page_cache", stats.delete_events),
    ] {
        events
            .get_or_create(&vec![("hook", hook.to_owned())])
            .inc_by(count);
    }
    registry.register(
        "events",
        "Page-cache events the kernel programs saw, by hook",
        events,
    );
    let lost: Family<Vec<(&'static str, String)>, Counter> = Family::default();
    for (reason, count) in [
        ("map_full", stats.map_full),
        ("read_failed", stats.read_failed),
        ("writers_map_full", stats.writers_map_full),
        ("cgroup_events_lost", stats.cgroup_events_lost),
        ("map_read_errors", stats.map_read_errors),
        ("missed_runs", stats.missed_runs),
    ] {
        lost.get_or_create(&vec![("reason", reason.to_owned())])
            .inc_by(count);
    }
    registry.register(
        "lost_events",
        "Events memtrace could not count, by reason",
        lost,
    );
    let gauge = |value: u64| {
        let g: Gauge = Gauge::default();
        g.set(value as i64);
        g
    };
    registry.register(
        "map_entries",
        "Entries in the (memcg, file) map",
        gauge(stats.map_entries),
    );
    let counter = |value: u64| {
        let c: Counter = Counter::default();
        c.inc_by(value);
        c
    };
    registry.register(
        "overflow_runs",
        "Runs of events counted per memory cgroup, not per file, because the (memcg, file) map was full: detail lost, no page",
        counter(stats.overflow_runs),
    );
    registry.register(
        "early_flips",
        "Drains of the (memcg, file) map made early because the half being counted into was half full",
        counter(stats.early_flips),
    );
    registry.register(
        "map_capacity",
        "Capacity of the (memcg, file) map",
        gauge(stats.map_capacity),
    );
    registry.register(
        "series_limit",
        "Most series a scrape exposes (--metrics-max-series)",
        gauge(input.max_series as u64),
    );
    registry.register(
        "series_dropped",
        "Series left out of this scrape because the limit was reached",
        gauge(dropped_series),
    );
    let seconds: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
    seconds.set(report.snapshot_seconds);
    registry.register_with_unit(
        "snapshot_duration",
        "Time the snapshot behind this scrape took",
        Unit::Seconds,
        seconds,
    );
    if !input.programs.is_empty() {
        let run_time: Family<
            Vec<(&'static str, String)>,
            Counter<f64, std::sync::atomic::AtomicU64>,
        > = Family::default();
        let runs: Family<Vec<(&'static str, String)>, Counter> = Family::default();
        for program in input.programs {
            let labels = vec![("program", program.name.clone())];
            run_time
                .get_or_create(&labels)
                .inc_by(program.run_time_ns as f64 / 1e9);
            runs.get_or_create(&labels).inc_by(program.run_count);
        }
        registry.register_with_unit(
            "program_run_time",
            "Time memtrace's kernel programs ran (kernel.bpf_stats_enabled=1)",
            Unit::Seconds,
            run_time,
        );
        registry.register("program_runs", "Runs of memtrace's kernel programs", runs);
    }
    let build: Family<Vec<(&'static str, String)>, Gauge> = Family::default();
    build
        .get_or_create(&vec![("version", env!("CARGO_PKG_VERSION").to_owned())])
        .set(1);
    registry.register("build_info", "memtrace's version", build);
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
        let text = render(&MetricsInput {
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
        assert!(text.contains(r#"memtrace_file_page_cache_bytes{cgroup="/kubepods/burstable/pod5d1c/3f4b1c2d9e8a7b6c",container="spring",pod="spring-0",namespace="shop",path="",layer=""}"#), "the rest summed: {text}");
        assert!(text.ends_with("# EOF\n"));
        let limited = render(&MetricsInput {
            report: &report,
            memory: &memory,
            programs: &[],
            top_files: 20,
            max_series: 2,
        });
        assert!(limited.contains("memtrace_series_dropped "), "{limited}");
        assert!(!limited.contains("memtrace_series_dropped 0"), "{limited}");
    }
}
