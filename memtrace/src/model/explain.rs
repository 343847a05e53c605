//! The answer to "where did this container's memory go": the kernel's figures for one memory
//! cgroup, reconciled with what memtrace attributes, and a verdict in plain language.

use std::{collections::HashMap, sync::Arc};

use serde::Serialize;

use super::{
    filter::under,
    format::human_bytes,
    rates::Rates,
    schema::{Container, KernelStats, Layer, MemoryFigures, Provenance, Report, SeedSummary},
};

/// What kind of thing the user named.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Container,
    Cgroup,
    Pid,
}

/// What was asked about, and what it turned out to be.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    /// As the user gave it.
    pub query: String,
    pub kind: TargetKind,
    pub cgroup_id: u64,
    pub hierarchy: u32,
    pub cgroup_path: String,
    pub container: Option<Container>,
}

/// A process with the file open for writing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Writer {
    pub pid: u32,
    pub comm: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ExplainedFile {
    pub path: Option<Arc<str>>,
    pub host_path: Option<Arc<str>>,
    pub cached_bytes: u64,
    /// `tmpfs` for tmpfs/shmem files (measured, and not reclaimable without swap).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fs: Option<&'static str>,
    /// From cachestat(2) on the file, when it can still be opened.
    pub dirty_bytes: Option<u64>,
    pub writeback_bytes: Option<u64>,
    /// Of the cache found at start, bytes on the active LRU (count toward the working set).
    pub seeded_active_bytes: u64,
    pub seeded_bytes: u64,
    pub provenance: Provenance,
    pub deleted: bool,
    pub layer: Option<Layer>,
    /// Change of `cached_bytes` over the observation window.
    pub growth_bytes_per_second: f64,
    pub writers: Vec<Writer>,
    /// The cgroup it is charged to (the target or one below it).
    pub cgroup_path: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    pub schema_version: u32,
    pub target: Target,
    /// memory.stat and usage; `null` when the cgroup's files could not be read.
    pub memory: Option<MemoryFigures>,
    /// Page cache memtrace attributes to the target, by file.
    pub attributed_bytes: u64,
    /// Of that, attributed exactly (traced, or memcg read from the pages).
    pub attributed_exact_bytes: u64,
    /// attributed / memory.stat page cache.
    pub coverage: Option<f64>,
    /// memory.stat page cache that no file accounts for.
    pub unattributed_bytes: u64,
    /// Sorted by `cached_bytes`, largest first.
    pub files: Vec<ExplainedFile>,
    pub seed: Option<SeedSummary>,
    pub observed_seconds: f64,
    pub stats: KernelStats,
    /// Plain-language lines: what holds the memory and what to do about it.
    pub verdict: Vec<String>,
}

/// The files charged to cgroup `path` (in `hierarchy`) or below it in `report`, largest first,
/// with their growth from `rates` (none when there is no earlier sample).
pub fn files_of_target(
    report: &Report,
    rates: Option<&Rates>,
    hierarchy: u32,
    path: &str,
) -> Vec<ExplainedFile> {
    let mut files: Vec<ExplainedFile> = report
        .cgroups
        .iter()
        .filter(|c| c.hierarchy == hierarchy && c.path.as_deref().is_some_and(|p| under(p, path)))
        .flat_map(|c| {
            c.files
                .iter()
                .filter(|f| f.cached_bytes > 0)
                .map(|f| ExplainedFile {
                    path: f.path.clone(),
                    host_path: f.host_path.clone(),
                    cached_bytes: f.cached_bytes,
                    fs: f.fs,
                    dirty_bytes: f.dirty_bytes,
                    writeback_bytes: f.writeback_bytes,
                    seeded_active_bytes: f.seeded_active_bytes,
                    seeded_bytes: f.seeded_bytes,
                    provenance: f.provenance,
                    deleted: f.deleted,
                    layer: f.layer,
                    growth_bytes_per_second: rates
                        .and_then(|r| r.of(&(c.hierarchy, c.id, f.dev, f.ino)))
                        .map_or(0.0, |r| r.cached),
                    writers: f
                        .writers
                        .iter()
                        .map(|w| Writer {
                            pid: w.pid,
                            comm: w.comm.to_string(),
                        })
                        .collect(),
                    cgroup_path: c.path.clone(),
                })
        })
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.cached_bytes));
    files
}

/// Adds the processes holding each file open for writing now (they may have written before
/// memtrace started), after those the tracer saw write. `holders` maps a path, as a process
/// sees it, to its writers.
pub fn add_holders(files: &mut [ExplainedFile], holders: &HashMap<String, Vec<Writer>>) {
    for file in files {
        let found = [&file.path, &file.host_path]
            .into_iter()
            .flatten()
            .filter_map(|p| holders.get(&**p))
            .flatten();
        for holder in found {
            if !file.writers.iter().any(|w| w.pid == holder.pid) {
                file.writers.push(holder.clone());
            }
        }
    }
}

/// What an explanation reads besides its target: a report, the kernel's figures, and what
/// else is known of the files.
pub struct Evidence<'a> {
    pub report: &'a Report,
    /// Growth of each file since an earlier report, when there is one.
    pub rates: Option<&'a Rates>,
    /// The target's memory.stat; `None` when it could not be read.
    pub memory: Option<MemoryFigures>,
    /// Processes holding files open for writing now, by path (see [`add_holders`]).
    pub holders: Option<&'a HashMap<String, Vec<Writer>>>,
    pub seed: Option<SeedSummary>,
    pub observed_seconds: f64,
    /// Files listed, largest first; the attributed sums count every file.
    pub top: usize,
}

impl Explanation {
    /// The explanation of `target` from `evidence`: its files, the sums, coverage against
    /// memory.stat, and the verdict.
    pub fn new(target: Target, evidence: Evidence<'_>) -> Self {
        let mut files = files_of_target(
            evidence.report,
            evidence.rates,
            target.hierarchy,
            &target.cgroup_path,
        );
        let attributed_bytes = files.iter().map(|f| f.cached_bytes).sum();
        let attributed_exact_bytes = files
            .iter()
            .filter(|f| f.provenance.is_exact())
            .map(|f| f.cached_bytes)
            .sum();
        files.truncate(evidence.top);
        if let Some(holders) = evidence.holders {
            add_holders(&mut files, holders);
        }
        let mut explanation = Self {
            schema_version: super::SCHEMA_VERSION,
            target,
            memory: evidence.memory,
            attributed_bytes,
            attributed_exact_bytes,
            coverage: None,
            unattributed_bytes: 0,
            files,
            seed: evidence.seed,
            observed_seconds: evidence.observed_seconds,
            stats: evidence.report.stats.clone(),
            verdict: Vec::new(),
        };
        explanation.conclude();
        explanation
    }

    /// Fills coverage and the verdict from the figures.
    pub fn conclude(&mut self) {
        if let Some(memory) = &self.memory {
            let cache = memory.page_cache_bytes;
            self.coverage = memory.coverage_of(self.attributed_bytes);
            self.unattributed_bytes = cache.saturating_sub(self.attributed_bytes);
        }
        self.verdict = verdict(self);
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn verdict(e: &Explanation) -> Vec<String> {
    let mut lines = Vec::new();
    let who = match &e.target.container {
        Some(c) => format!("container {}", c.name.as_deref().unwrap_or(&c.id)),
        None => format!("cgroup {}", e.target.cgroup_path),
    };
    let Some(memory) = &e.memory else {
        lines.push(format!(
            "memory.stat of {who} could not be read; figures below are memtrace's alone."
        ));
        return lines;
    };
    let cache = memory.page_cache_bytes;
    lines.push(format!(
        "{who} uses {}: {} anonymous ({:.0}%), {} page cache ({:.0}%), {} kernel.",
        human_bytes(memory.usage_bytes),
        human_bytes(memory.anon_bytes),
        percent(memory.anon_bytes, memory.usage_bytes),
        human_bytes(cache),
        percent(cache, memory.usage_bytes),
        human_bytes(memory.kernel_bytes),
    ));
    let Some(top) = e.files.first().filter(|f| f.cached_bytes > 0) else {
        lines.push("No file holds page cache charged here.".to_owned());
        return lines;
    };
    let name = top
        .path
        .as_deref()
        .or(top.host_path.as_deref())
        .unwrap_or("an unnamed file");
    let mut line = format!(
        "{name} holds {} ({:.0}% of the page cache)",
        human_bytes(top.cached_bytes),
        percent(top.cached_bytes, cache.max(e.attributed_bytes))
    );
    let on_tmpfs = top.fs == Some("tmpfs");
    if on_tmpfs {
        line += ", on tmpfs (shmem)";
    } else if top.layer == Some(Layer::Upper) {
        line += ", in the container's writable layer";
    }
    if top.deleted {
        line +=
            "; it is DELETED but still held open, so its cache stays until the holder closes it";
    }
    if let Some(writer) = top.writers.first() {
        line += &format!("; written by {} (pid {})", writer.comm, writer.pid);
    }
    if top.growth_bytes_per_second > 1024.0 {
        line += &format!(
            ", growing {}/s",
            human_bytes(top.growth_bytes_per_second as u64)
        );
    }
    lines.push(line + ".");
    lines.push(format!(
        "Page cache is reclaimable, but active pages count toward kubelet's working set ({} of {}); {} of it is active, {} inactive.",
        human_bytes(memory.working_set_bytes),
        human_bytes(memory.usage_bytes),
        human_bytes(memory.active_file_bytes),
        human_bytes(memory.inactive_file_bytes),
    ));
    // Worth a line when it matters: a top file on tmpfs, or a twentieth of the cache.
    if on_tmpfs || memory.shmem_bytes > cache / 20 {
        lines.push(format!(
            "{} of the page cache is shmem (tmpfs, memory emptyDir volumes, /dev/shm, memfds): the kernel cannot reclaim it without swap.",
            human_bytes(memory.shmem_bytes)
        ));
    }
    if memory.dirty_bytes + memory.writeback_bytes > 0 {
        lines.push(format!(
            "{} is dirty and {} under writeback: it cannot be reclaimed until written to disk.",
            human_bytes(memory.dirty_bytes),
            human_bytes(memory.writeback_bytes)
        ));
    }
    let looks_like_log = name.ends_with(".log") || name.contains("/log");
    lines.push(if on_tmpfs {
        "Fix: delete what the program no longer needs from the tmpfs, or cap it (a Kubernetes emptyDir's sizeLimit, tmpfs size=); its pages stay until the file is deleted or truncated.".to_owned()
    } else if top.deleted {
        "Fix: restart or signal the process holding the deleted file (logrotate copytruncate or a reopen on SIGHUP avoids this).".to_owned()
    } else if looks_like_log {
        "Fix: lower the log level, rotate and cap the log, or log to stdout or a volume with its own limits; `fadvise(DONTNEED)` or truncating a rotated log frees its cache.".to_owned()
    } else {
        "Fix: if this file need not stay cached, read it with O_DIRECT or drop it with fadvise(DONTNEED) after use; set a memory limit so the kernel reclaims it under pressure.".to_owned()
    });
    if let Some(coverage) = e.coverage {
        if coverage < 0.9 {
            lines.push(format!(
                "memtrace accounts for {:.0}% of the page cache; the rest ({}) is in files it did not find (files not open and outside container layers and log directories, or tmpfs files past the scan's limits).",
                coverage * 100.0,
                human_bytes(e.unattributed_bytes)
            ));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explanation(files: Vec<ExplainedFile>, memory: MemoryFigures) -> Explanation {
        let attributed = files.iter().map(|f| f.cached_bytes).sum();
        let mut e = Explanation {
            schema_version: 1,
            target: Target {
                query: "spring".into(),
                kind: TargetKind::Container,
                cgroup_id: 7,
                hierarchy: 4,
                cgroup_path: "/pods/spring".into(),
                container: Some(Container {
                    runtime: crate::model::Runtime::Runc,
                    id: "spring".into(),
                    name: Some("spring".into()),
                    ..Container::default()
                }),
            },
            memory: Some(memory),
            attributed_bytes: attributed,
            attributed_exact_bytes: attributed,
            coverage: None,
            unattributed_bytes: 0,
            files,
            seed: None,
            observed_seconds: 2.0,
            stats: KernelStats::default(),
            verdict: Vec::new(),
        };
        e.conclude();
        e
    }

    fn log_file(bytes: u64) -> ExplainedFile {
        ExplainedFile {
            path: Some("/tmp/spring.log".into()),
            host_path: Some("/var/lib/x/diff/tmp/spring.log".into()),
            cached_bytes: bytes,
            fs: None,
            dirty_bytes: Some(0),
            writeback_bytes: Some(0),
            seeded_active_bytes: 0,
            seeded_bytes: bytes,
            provenance: Provenance::Exact,
            deleted: false,
            layer: Some(Layer::Upper),
            growth_bytes_per_second: 2.0 * 1024.0 * 1024.0,
            writers: vec![Writer {
                pid: 42,
                comm: "java".into(),
            }],
            cgroup_path: Some("/pods/spring".into()),
        }
    }

    #[test]
    fn verdict_names_the_file_and_the_fix() {
        let memory = MemoryFigures {
            usage_bytes: 1400 << 20,
            anon_bytes: 600 << 20,
            page_cache_bytes: 800 << 20,
            inactive_file_bytes: 700 << 20,
            active_file_bytes: 100 << 20,
            working_set_bytes: 700 << 20,
            ..MemoryFigures::default()
        };
        let e = explanation(vec![log_file(780 << 20)], memory);
        let text = e.verdict.join("\n");
        assert!(text.contains("container spring uses 1.4 GiB"), "{text}");
        assert!(
            text.contains("/tmp/spring.log holds 780.0 MiB (98% of the page cache)"),
            "{text}"
        );
        assert!(
            text.contains("writable layer") && text.contains("java (pid 42)"),
            "{text}"
        );
        assert!(text.contains("growing 2.0 MiB/s"), "{text}");
        assert!(text.contains("Fix: lower the log level"), "{text}");
        assert!((e.coverage.unwrap() - 0.975).abs() < 1e-9);
        assert_eq!(e.unattributed_bytes, 20 << 20);
    }

    #[test]
    fn verdict_flags_deleted_files_and_low_coverage() {
        let memory = MemoryFigures {
            usage_bytes: 100 << 20,
            page_cache_bytes: 100 << 20,
            ..MemoryFigures::default()
        };
        let mut deleted = log_file(40 << 20);
        deleted.deleted = true;
        let text = explanation(vec![deleted], memory).verdict.join("\n");
        assert!(text.contains("DELETED but still held open"), "{text}");
        assert!(text.contains("Fix: restart or signal"), "{text}");
        assert!(
            text.contains("accounts for 40% of the page cache"),
            "{text}"
        );
    }

    #[test]
    fn verdict_says_tmpfs_is_not_reclaimable_and_how_to_cap_it() {
        let memory = MemoryFigures {
            usage_bytes: 100 << 20,
            page_cache_bytes: 64 << 20,
            shmem_bytes: 64 << 20,
            ..MemoryFigures::default()
        };
        let mut cache = log_file(64 << 20);
        cache.path = Some("/cache/data.bin".into());
        cache.fs = Some("tmpfs");
        let text = explanation(vec![cache], memory).verdict.join("\n");
        assert!(text.contains("/cache/data.bin holds 64.0 MiB"), "{text}");
        assert!(text.contains("on tmpfs (shmem)"), "{text}");
        assert!(text.contains("cannot reclaim it without swap"), "{text}");
        assert!(text.contains("sizeLimit"), "{text}");
        assert!(!text.contains("writable layer"), "{text}");
    }
}
