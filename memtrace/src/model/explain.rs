//! The answer to "where did this container's memory go": the kernel's figures for one memory
//! cgroup, reconciled with what memtrace attributes, and a verdict in plain language.

use std::{collections::HashMap, sync::Arc};

use serde::Serialize;

use super::{
    filter::under,
    format::human_bytes,
    rates::{per_second, Rates},
    schema::{
        Container, KernelStats, Layer, MemoryFigures, Provenance, Report, SeedMethod, SeedSummary,
    },
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
    /// Open with `O_APPEND`: it only ever adds to the end, as loggers do. False for a writer
    /// the tracer saw, whose open flags are not known.
    pub append: bool,
}

/// Whether a cgroup's page cache is a problem, from the kernel's figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheState {
    /// Reclaimable, and nothing is reclaiming it: cache that costs nothing until memory is
    /// wanted.
    Harmless,
    /// The kernel is reclaiming the cgroup: file pages read again after eviction, the limit
    /// reached, throttling at `memory.high`, or stalls on memory.
    Crowding,
    /// Near its limit with memory reclaim cannot free (anonymous, shmem, dirty, kernel): an
    /// OOM kill ahead.
    Risk,
}

impl CacheState {
    pub fn label(self) -> &'static str {
        match self {
            Self::Harmless => "harmless",
            Self::Crowding => "crowding",
            Self::Risk => "risk",
        }
    }
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
    /// Bytes read into the cache again after eviction, per second over the window.
    pub reread_bytes_per_second: f64,
    /// Share of the pages reads touched over the window that were already cached; `null`
    /// when no read touched the file, or where the kernel refuses the hook that counts them.
    pub hit_ratio: Option<f64>,
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
    /// Whether cache hits are counted here (fentry on `folio_mark_accessed`; refused where
    /// function tracing is locked down).
    pub hits_counted: bool,
    /// Of the pages reads of the target cgroup's files touched over the window, the share
    /// found cached; `null` when none was touched or hits are not counted.
    pub hit_ratio: Option<f64>,
    pub seed: Option<SeedSummary>,
    pub observed_seconds: f64,
    /// File pages refaulted per second over the window (memory.stat's
    /// `workingset_refault_file`); `null` without two readings.
    pub refault_bytes_per_second: Option<f64>,
    /// Whether the cache is a problem; `null` when memory.stat could not be read.
    pub state: Option<CacheState>,
    pub stats: KernelStats,
    /// Plain-language lines: what holds the memory and what to do about it.
    pub verdict: Vec<String>,
}

/// The hook that counts cache hits.
pub const HITS_HOOK: &str = "folio_mark_accessed";

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
                    reread_bytes_per_second: rates
                        .and_then(|r| r.of(&(c.hierarchy, c.id, f.dev, f.ino)))
                        .map_or(0.0, |r| r.reread),
                    hit_ratio: rates
                        .and_then(|r| r.of(&(c.hierarchy, c.id, f.dev, f.ino)))
                        .and_then(|r| r.hit_ratio),
                    writers: f
                        .writers
                        .iter()
                        .map(|w| Writer {
                            pid: w.pid,
                            comm: w.comm.to_string(),
                            append: false,
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
            match file.writers.iter_mut().find(|w| w.pid == holder.pid) {
                // The tracer saw it write; its open file says how.
                Some(traced) => traced.append |= holder.append,
                None => file.writers.push(holder.clone()),
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
    /// memory.stat at the window's start, for the refault rate.
    pub memory_before: Option<MemoryFigures>,
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
        let refault_bytes_per_second = match (&evidence.memory_before, &evidence.memory) {
            (Some(before), Some(now)) if evidence.observed_seconds > 0.0 => Some(
                per_second(
                    before.refault_file_bytes,
                    now.refault_file_bytes,
                    evidence.observed_seconds,
                )
                .max(0.0),
            ),
            _ => None,
        };
        let hits_counted = evidence
            .report
            .hooks
            .iter()
            .any(|h| h.name == HITS_HOOK && h.attached);
        let hit_ratio = evidence
            .rates
            .and_then(|r| r.of_cgroup(&(target.hierarchy, target.cgroup_id)))
            .and_then(|r| r.hit_ratio)
            .filter(|_| hits_counted);
        let mut explanation = Self {
            schema_version: super::SCHEMA_VERSION,
            target,
            memory: evidence.memory,
            attributed_bytes,
            attributed_exact_bytes,
            coverage: None,
            unattributed_bytes: 0,
            files,
            hits_counted,
            hit_ratio,
            seed: evidence.seed,
            observed_seconds: evidence.observed_seconds,
            refault_bytes_per_second,
            state: None,
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
            self.state = Some(state_of(memory, self.refault_bytes_per_second));
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

/// File pages refaulted per second above which a cgroup counts as short of memory for what
/// it reads: 16 pages a second is noise, a thrashing reader does thousands.
const CROWDING_REFAULTS_PER_SECOND: f64 = 64.0 * 1024.0;
/// Share of the limit at which reclaim runs all the time.
const AT_LIMIT: f64 = 0.95;
/// Share of the limit that, held by memory reclaim cannot free, puts an OOM kill ahead.
const UNRECLAIMABLE_RISK: f64 = 0.90;
/// PSI `some avg10` (percent) above which tasks of the cgroup visibly stall on memory.
const STALLING_PERCENT: f64 = 1.0;

/// Whether the cgroup's cache is harmless, crowding it, or beside a risk, from the kernel's
/// figures and the refault rate over the window.
pub fn state_of(memory: &MemoryFigures, refaults_per_second: Option<f64>) -> CacheState {
    let p = &memory.pressure;
    let share_of =
        |limit: Option<u64>, bytes: u64| limit.filter(|&l| l > 0).map(|l| bytes as f64 / l as f64);
    if share_of(p.limit_bytes, memory.unreclaimable_bytes())
        .is_some_and(|s| s >= UNRECLAIMABLE_RISK)
    {
        return CacheState::Risk;
    }
    let at_limit = share_of(p.limit_bytes, memory.usage_bytes).is_some_and(|s| s >= AT_LIMIT)
        || share_of(p.high_bytes, memory.usage_bytes).is_some_and(|s| s >= 1.0);
    let refaulting = refaults_per_second.is_some_and(|r| r >= CROWDING_REFAULTS_PER_SECOND);
    let stalling = p.some_avg10.is_some_and(|s| s >= STALLING_PERCENT);
    if at_limit || refaulting || stalling {
        CacheState::Crowding
    } else {
        CacheState::Harmless
    }
}

/// The limits, events and pressure worth a line: only what is known and set.
fn pressure_line(e: &Explanation, memory: &MemoryFigures) -> Option<String> {
    let p = &memory.pressure;
    let mut parts = Vec::new();
    if let Some(limit) = p.limit_bytes {
        parts.push(format!(
            "limit {} (usage at {:.0}%)",
            human_bytes(limit),
            percent(memory.usage_bytes, limit)
        ));
    }
    if let Some(high) = p.high_bytes {
        parts.push(format!("high/soft limit {}", human_bytes(high)));
    }
    if p.limit_hits > 0 {
        parts.push(format!("reached the limit {} times", p.limit_hits));
    }
    if let Some(high_events) = p.high_events.filter(|&n| n > 0) {
        parts.push(format!("throttled at memory.high {high_events} times"));
    }
    if p.oom_kills > 0 {
        parts.push(format!("{} OOM kills", p.oom_kills));
    }
    if let Some(rate) = e.refault_bytes_per_second.filter(|&r| r > 0.0) {
        parts.push(format!(
            "{}/s of file pages read again after eviction (refaults)",
            human_bytes(rate as u64)
        ));
    }
    if let Some(some) = p.some_avg10.filter(|&s| s > 0.0) {
        parts.push(format!(
            "stalled on memory {some:.1}% of the last 10 s (full {:.1}%)",
            p.full_avg10.unwrap_or(0.0)
        ));
    }
    (!parts.is_empty()).then(|| format!("Limits and pressure: {}.", parts.join("; ")))
}

/// What the state means, in a line.
fn state_line(e: &Explanation, memory: &MemoryFigures, state: CacheState) -> String {
    match state {
        CacheState::Harmless => "Verdict: harmless. The page cache is reclaimable and nothing is reclaiming it: the kernel gives it up when memory is wanted.".to_owned(),
        CacheState::Crowding => {
            let why = match e.refault_bytes_per_second {
                Some(rate) if rate >= CROWDING_REFAULTS_PER_SECOND => format!(
                    "{}/s of file pages are read again right after eviction",
                    human_bytes(rate as u64)
                ),
                _ => "it is at its limit".to_owned(),
            };
            format!("Verdict: crowding. The kernel is reclaiming this cgroup ({why}): its cache competes with its own work for memory.")
        }
        CacheState::Risk => format!(
            "Verdict: risk. {} of its limit {} cannot be reclaimed ({} anonymous, {} shmem, {} dirty or under writeback, {} kernel): an OOM kill is ahead if it grows.",
            human_bytes(memory.unreclaimable_bytes()),
            human_bytes(memory.pressure.limit_bytes.unwrap_or(0)),
            human_bytes(memory.anon_bytes),
            human_bytes(memory.shmem_bytes),
            human_bytes(memory.dirty_bytes + memory.writeback_bytes),
            human_bytes(memory.kernel_bytes),
        ),
    }
}

/// Re-reads per second from which a file counts as one whose working set does not fit.
const REREAD_FILE_PER_SECOND: f64 = 4096.0;

/// What to do about the largest file, chosen by what memtrace saw of it: how it is written
/// and read, where it lives, not only its name.
fn advice(top: &ExplainedFile, name: &str, state: Option<CacheState>) -> String {
    let appended = top.writers.iter().any(|w| w.append);
    let named_like_a_log = name.ends_with(".log") || name.contains("/log");
    let shared_memory =
        name.starts_with("[shared anonymous memory") || name.starts_with("[SysV shm");
    if shared_memory {
        "No fix for the file: it is the program's shared memory (a database's shared buffers, say), sized by the program's own setting; it counts toward the limit and cannot be reclaimed without swap.".to_owned()
    } else if top.fs == Some("tmpfs") {
        "Fix: delete what the program no longer needs from the tmpfs, or cap it (a Kubernetes emptyDir's sizeLimit, tmpfs size=); its pages stay until the file is deleted or truncated, and count toward the limit.".to_owned()
    } else if top.deleted {
        let holder = top.writers.first().map_or("the process".to_owned(), |w| {
            format!("{} (pid {})", w.comm, w.pid)
        });
        format!("Fix: restart or signal {holder} holding the deleted file; closing it frees the cache (logrotate copytruncate or a reopen on SIGHUP avoids this).")
    } else if appended
        || (named_like_a_log
            && top.reread_bytes_per_second < REREAD_FILE_PER_SECOND
            && !top.writers.is_empty())
    {
        "Fix: lower the log level, rotate and cap the log, or log to stdout or a volume with its own limits; `fadvise(DONTNEED)` or truncating a rotated log frees its cache.".to_owned()
    } else if top.reread_bytes_per_second >= REREAD_FILE_PER_SECOND {
        format!(
            "Fix: {name} is read again after eviction at {}/s: its working set does not fit in the cgroup's memory. Raise the memory limit to hold it, or make the reads touch less of it (an index, a smaller data set).",
            human_bytes(top.reread_bytes_per_second as u64)
        )
    } else if top.layer == Some(Layer::Lower) {
        "No fix needed for the file itself: it is in an image layer, shared by every container of the image and charged to the first that read it.".to_owned()
    } else if top.dirty_bytes.is_some_and(|d| d > top.cached_bytes / 2) {
        "Fix: most of it waits on writeback; it becomes reclaimable once written. If it stays dirty, the device is slow for the write rate: write less, or flush earlier (`fsync`, a lower vm.dirty_bytes).".to_owned()
    } else {
        match state {
            Some(CacheState::Crowding) => "Fix: the cgroup is short of memory for the data it reads: raise its limit, or reduce what it keeps hot.".to_owned(),
            Some(CacheState::Risk) => "Fix: raise the limit, or reduce the memory reclaim cannot free; this file's cache is reclaimable and is not the risk.".to_owned(),
            _ => format!("No fix needed: {name} is cache the kernel reclaims when memory is wanted; it costs nothing until then."),
        }
    }
}

/// What the largest file is, where it lives, who writes it and how it changes, in a line.
/// `cache` is the page cache it is a share of.
fn top_file_line(top: &ExplainedFile, name: &str, cache: u64) -> String {
    let mut line = format!(
        "{name} holds {} ({:.0}% of the page cache)",
        human_bytes(top.cached_bytes),
        percent(top.cached_bytes, cache)
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
    if top.reread_bytes_per_second >= REREAD_FILE_PER_SECOND {
        line += &format!(
            ", read again after eviction at {}/s",
            human_bytes(top.reread_bytes_per_second as u64)
        );
    }
    line + "."
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
    lines.extend(pressure_line(e, memory));
    if let Some(state) = e.state {
        lines.push(state_line(e, memory, state));
    }
    let Some(top) = e.files.first().filter(|f| f.cached_bytes > 0) else {
        lines.push("No file holds page cache charged here.".to_owned());
        return lines;
    };
    let name = top
        .path
        .as_deref()
        .or(top.host_path.as_deref())
        .unwrap_or("an unnamed file");
    lines.push(top_file_line(top, name, cache.max(e.attributed_bytes)));
    let on_tmpfs = top.fs == Some("tmpfs");
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
    lines.push(advice(top, name, e.state));
    if let Some(coverage) = e.coverage {
        if coverage < 0.9 {
            let why = match e.seed.as_ref().map(|s| s.method) {
                Some(SeedMethod::Census) => "pages no file's mapping holds, such as tmpfs files the shmem scan did not reach and swap cache, or pages that came and went while the census counted",
                Some(SeedMethod::Walk) => "files not open and outside container layers and log directories (this kernel refused the census that finds every file), or tmpfs files past the scan's limits",
                None => "cache that predates memtrace: --no-seed skipped the census that finds it",
            };
            lines.push(format!(
                "memtrace accounts for {:.0}% of the page cache; the rest ({}) is in {why}.",
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
    use crate::model::MemoryPressure;

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
            hits_counted: true,
            hit_ratio: None,
            seed: None,
            observed_seconds: 2.0,
            refault_bytes_per_second: None,
            state: None,
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
            reread_bytes_per_second: 0.0,
            hit_ratio: None,
            writers: vec![Writer {
                pid: 42,
                comm: "java".into(),
                append: true,
            }],
            cgroup_path: Some("/pods/spring".into()),
        }
    }

    /// A database's relation file: written in place (no O_APPEND), not named like a log.
    fn relation_file(bytes: u64) -> ExplainedFile {
        ExplainedFile {
            path: Some("/var/lib/postgresql/15/main/base/16384/16397".into()),
            host_path: None,
            layer: None,
            growth_bytes_per_second: 0.0,
            writers: vec![Writer {
                pid: 7,
                comm: "postgres".into(),
                append: false,
            }],
            ..log_file(bytes)
        }
    }

    fn limited(limit: u64, usage: u64, anon: u64, cache: u64) -> MemoryFigures {
        MemoryFigures {
            usage_bytes: usage,
            anon_bytes: anon,
            page_cache_bytes: cache,
            inactive_file_bytes: cache,
            pressure: MemoryPressure {
                limit_bytes: Some(limit),
                ..MemoryPressure::default()
            },
            ..MemoryFigures::default()
        }
    }

    #[test]
    fn a_log_is_known_by_its_appending_writer_whatever_its_name() {
        let mut log = log_file(64 << 20);
        log.path = Some("/data/events".into());
        let text = explanation(vec![log], limited(1 << 30, 100 << 20, 0, 64 << 20))
            .verdict
            .join("\n");
        assert!(text.contains("Fix: lower the log level"), "{text}");
    }

    #[test]
    fn a_database_file_gets_no_log_advice_and_far_from_its_limit_is_harmless() {
        let e = explanation(
            vec![relation_file(256 << 20)],
            limited(4 << 30, 300 << 20, 40 << 20, 256 << 20),
        );
        let text = e.verdict.join("\n");
        assert_eq!(e.state, Some(CacheState::Harmless), "{text}");
        assert!(!text.contains("log level"), "{text}");
        assert!(text.contains("Verdict: harmless"), "{text}");
        assert!(text.contains("No fix needed"), "{text}");
        assert!(text.contains("limit 4.0 GiB (usage at 7%)"), "{text}");
    }

    #[test]
    fn a_file_read_again_after_eviction_at_the_limit_is_crowding_and_told_why() {
        let mut data = relation_file(200 << 20);
        data.reread_bytes_per_second = 50.0 * 1024.0 * 1024.0;
        let mut e = explanation(
            vec![data],
            limited(256 << 20, 250 << 20, 20 << 20, 220 << 20),
        );
        e.refault_bytes_per_second = Some(48.0 * 1024.0 * 1024.0);
        e.conclude();
        let text = e.verdict.join("\n");
        assert_eq!(e.state, Some(CacheState::Crowding), "{text}");
        assert!(
            text.contains("48.0 MiB/s of file pages are read again"),
            "{text}"
        );
        assert!(
            text.contains("read again after eviction at 50.0 MiB/s"),
            "{text}"
        );
        assert!(text.contains("working set does not fit"), "{text}");
    }

    #[test]
    fn shmem_near_the_limit_is_a_risk_of_oom() {
        let mut memory = limited(256 << 20, 250 << 20, 10 << 20, 236 << 20);
        memory.shmem_bytes = 236 << 20;
        let mut cache = log_file(236 << 20);
        cache.fs = Some("tmpfs");
        cache.writers.clear();
        let e = explanation(vec![cache], memory);
        let text = e.verdict.join("\n");
        assert_eq!(e.state, Some(CacheState::Risk), "{text}");
        assert!(text.contains("an OOM kill is ahead"), "{text}");
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
