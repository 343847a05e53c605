//! The wire schema: the report types that `--json` writes, and the value types they are made
//! of. This is the JSON contract (see the README); fields change only with `SCHEMA_VERSION`.

use std::sync::Arc;

use serde::Serialize;

/// Version of the JSON document; bumped only for incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

/// How a figure was attributed to its cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Provenance {
    /// Counted by the tracepoints as pages came and went: exact.
    #[default]
    Traced,
    /// Found at start; memcg read per page from /proc/kpagecgroup: exact.
    Exact,
    /// Found at start; charged to the memcg of a process that holds the file open.
    InferredOwner,
    /// Found at start; charged to the container whose overlay layer holds the file.
    InferredLocation,
}

impl Provenance {
    pub fn is_exact(self) -> bool {
        matches!(self, Self::Traced | Self::Exact)
    }
}

/// A task's command name as the kernel keeps it: 16 bytes, NUL-padded. Kept inline (a node
/// can have a writer entry per file) and serialized as text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Comm(pub [u8; 16]);

impl Comm {
    pub fn as_str(&self) -> std::borrow::Cow<'_, str> {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(self.0.len());
        String::from_utf8_lossy(&self.0[..end])
    }
}

impl std::fmt::Display for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.as_str())
    }
}

impl Serialize for Comm {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.as_str())
    }
}

impl PartialEq<&str> for Comm {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A process that wrote a file, as the writers map counts it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WriterUsage {
    pub pid: u32,
    pub comm: Comm,
    /// Bytes written (vfs_write) or bytes of pages dirtied (fallback): see `writes_source`.
    pub bytes: u64,
    /// write calls (vfs_write) or folios dirtied (fallback).
    pub calls: u64,
}

/// Kernel-side counters: what was seen and what could not be recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KernelStats {
    pub add_events: u64,
    pub delete_events: u64,
    /// Runs of events dropped because the (memcg, file) map and the per-memcg overflow map
    /// were both full: pages lost. Raise `--max-entries`.
    pub map_full: u64,
    /// Events dropped because a kernel pointer chain could not be read.
    pub read_failed: u64,
    /// Folios with no memcg, accounted under cgroup id 0.
    pub uncharged: u64,
    /// Cgroup mkdir/rmdir notices dropped (a full ring buffer): some names may be missing.
    pub cgroup_events_lost: u64,
    /// Writes not recorded because the writers map was full.
    pub writers_map_full: u64,
    /// Runs of events counted for their memcg alone because the (memcg, file) map was full:
    /// the files' detail is lost (they show as one "files not tracked one by one" entry per
    /// memcg), their pages are not.
    pub overflow_runs: u64,
    /// Drains made early because the half of the map being counted into was half full.
    pub early_flips: u64,
    /// File path notices dropped (a full ring buffer): some files may show no path.
    pub file_events_lost: u64,
    /// Entries in the (memcg, file) map now, and its capacity.
    pub map_entries: u64,
    pub map_capacity: u64,
    /// Map entries userspace failed to read in this snapshot.
    pub map_read_errors: u64,
    /// Runs of memtrace's programs the kernel skipped because the same program was already
    /// running on that CPU (`bpf_prog_info.recursion_misses`): their events are lost.
    pub missed_runs: u64,
}

impl KernelStats {
    /// Events that changed no count: a full map, an unreadable pointer chain, a run the kernel
    /// skipped, or an entry userspace could not read.
    pub fn events_lost(&self) -> u64 {
        self.map_full
            + self.read_failed
            + self.writers_map_full
            + self.map_read_errors
            + self.missed_runs
    }
}

/// One file's page cache charged to one cgroup.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FileUsage {
    /// The path a process sees: inside its container for overlay files, else the host path.
    /// `null` when no name could be found.
    pub path: Option<Arc<str>>,
    /// The file on the host (for a container's files, the file in its overlay layer).
    pub host_path: Option<Arc<str>>,
    /// Only when the name is not UTF-8: its exact bytes in hex (`path` then shows each invalid
    /// sequence as U+FFFD).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_hex: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_path_hex: Option<Arc<str>>,
    /// Only when false: just the end of the path is known (`path` starts with `…/`).
    #[serde(skip_serializing_if = "is_true")]
    pub path_complete: bool,
    /// Unlinked while its pages stay cached (a rotated log still held open).
    pub deleted: bool,
    /// `upper` (a container's writable layer) or `lower` (an image layer) for overlay files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<Layer>,
    /// Device of the file's filesystem, `MAJ:MIN` as in /proc/self/mountinfo.
    pub dev: Dev,
    pub ino: u64,
    /// Resident bytes: cache found at start (if any) plus pages added since, minus pages
    /// removed since; never below 0.
    pub cached_bytes: u64,
    /// Traced since start.
    pub added_bytes: u64,
    pub removed_bytes: u64,
    /// Bytes of pages a read found in the cache or had just read in, traced since start
    /// (`folio_mark_accessed`; 0 where the kernel refuses fentry, see the report's hooks).
    /// Hits are what of it was not added.
    pub accessed_bytes: u64,
    /// Resident bytes found when memtrace started (0 when none or not scanned).
    pub seeded_bytes: u64,
    /// Of the seeded bytes, those on the active LRU list (count toward the working set).
    pub seeded_active_bytes: u64,
    /// How `cached_bytes` was attributed to this cgroup.
    pub provenance: Provenance,
    /// Written by processes of this cgroup since start (see the report's `writes_source`).
    pub written_bytes: u64,
    pub write_calls: u64,
    /// Bytes per second written since the previous report (null in the first one).
    pub write_rate_bytes_per_second: Option<f64>,
    /// Largest first.
    pub writers: Vec<WriterUsage>,
    /// From cachestat(2) on the file (null when it could not be measured).
    pub dirty_bytes: Option<u64>,
    pub writeback_bytes: Option<u64>,
    /// `tmpfs` for tmpfs and shmem files (memfds, SysV segments): no tracepoint sees their
    /// pages, so `cached_bytes` is measured at each report (`added`/`removed` stay 0), and it
    /// is not reclaimable without swap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fs: Option<&'static str>,
    /// `i_generation` of the file counted here (0: unknown): a later file with the same inode
    /// number has another, and the name found for the number is that later file's.
    #[serde(skip)]
    pub generation: u32,
}

fn is_true(value: &bool) -> bool {
    *value
}

/// Page cache charged to one memory cgroup.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CgroupUsage {
    /// Cgroup id: the inode number of its directory in its hierarchy.
    pub id: u64,
    /// `cgroup_root.hierarchy_id`: 0 is cgroup v2, otherwise the v1 memory hierarchy.
    pub hierarchy: u32,
    /// Path inside its hierarchy, starting with `/`; `null` when the id could not be named.
    pub path: Option<String>,
    /// The cgroup directory is gone; its cache is still charged to it.
    pub removed: bool,
    /// The container this cgroup belongs to, when it is one.
    pub container: Option<Container>,
    /// The systemd unit, for cgroups that are not containers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    pub cached_bytes: u64,
    pub added_bytes: u64,
    pub removed_bytes: u64,
    /// As the files' `accessed_bytes`.
    pub accessed_bytes: u64,
    /// Added − removed: may be negative when cache that predates tracing is dropped.
    pub net_bytes: i64,
    pub file_count: usize,
    pub files: Vec<FileUsage>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub cached_bytes: u64,
    pub added_bytes: u64,
    pub removed_bytes: u64,
    pub cgroups: usize,
    pub files: usize,
}

/// A snapshot of everything memtrace attributes. `C` holds the cgroups: a list, or a
/// [`CgroupStream`] that builds them one at a time as they are written.
#[derive(Clone, Debug, Serialize)]
pub struct Report<C = Vec<CgroupUsage>> {
    pub schema_version: u32,
    /// Seconds since the Unix epoch when the snapshot was taken.
    pub timestamp: f64,
    /// Seconds since the programs were attached.
    pub traced_seconds: f64,
    /// Seconds this snapshot took to build (read the maps, name, filter, measure dirty). A
    /// report written as it is built (`watch --json`) counts up to its first cgroup.
    pub snapshot_seconds: f64,
    pub page_size: u64,
    pub hooks: Vec<Hook>,
    /// Where `files[].written_bytes` come from: `vfs_write` (exact bytes) or `dirtied_pages`
    /// (the fallback where fentry/fexit is refused); null when neither hook is attached.
    pub writes_source: Option<WritesSource>,
    /// Where `files[].dirty_bytes` come from: `cachestat` (null before Linux 6.5).
    pub dirty_source: Option<&'static str>,
    pub stats: KernelStats,
    /// The scan for cache that predates memtrace, when one ran (`--no-seed` skips it).
    pub seed: Option<SeedSummary>,
    /// The tmpfs/shmem files, found and measured at each report (no tracepoint sees them).
    pub shmem: ShmemSummary,
    pub totals: Totals,
    pub cgroups: C,
}

impl<C> Report<C> {
    /// The same report with other cgroups.
    pub fn with_cgroups<D>(self, cgroups: D) -> Report<D> {
        Report {
            schema_version: self.schema_version,
            timestamp: self.timestamp,
            traced_seconds: self.traced_seconds,
            snapshot_seconds: self.snapshot_seconds,
            page_size: self.page_size,
            hooks: self.hooks,
            writes_source: self.writes_source,
            dirty_source: self.dirty_source,
            stats: self.stats,
            seed: self.seed,
            shmem: self.shmem,
            totals: self.totals,
            cgroups,
        }
    }
}

/// Cgroups built as they are written, so a report of a hundred thousand files never holds
/// them all at once (see `view::report_json`). Taken by value: a stream is written once.
pub struct CgroupStream<'a> {
    cgroups: Box<dyn Iterator<Item = CgroupUsage> + 'a>,
    /// Given each cgroup once it is written (by default, dropped).
    after_each: Box<dyn FnMut(CgroupUsage) + 'a>,
}

impl<'a> CgroupStream<'a> {
    pub fn new(cgroups: impl Iterator<Item = CgroupUsage> + 'a) -> Self {
        Self {
            cgroups: Box::new(cgroups),
            after_each: Box::new(drop),
        }
    }

    /// Hands each cgroup to `after_each` once it is written, instead of dropping it.
    pub fn after_each(self, after_each: impl FnMut(CgroupUsage) + 'a) -> Self {
        Self {
            after_each: Box::new(after_each),
            ..self
        }
    }

    /// The cgroups, and what to hand each once it is written.
    #[allow(clippy::type_complexity)]
    pub fn into_parts(
        self,
    ) -> (
        Box<dyn Iterator<Item = CgroupUsage> + 'a>,
        Box<dyn FnMut(CgroupUsage) + 'a>,
    ) {
        (self.cgroups, self.after_each)
    }
}

/// A kernel device number (`s_dev`: `MAJOR << 20 | MINOR`), shown and serialized as `MAJ:MIN`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dev(pub u32);

impl Dev {
    pub fn major(self) -> u32 {
        self.0 >> 20
    }

    pub fn minor(self) -> u32 {
        self.0 & 0xf_ffff
    }
}

impl std::fmt::Display for Dev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.major(), self.minor())
    }
}

impl Serialize for Dev {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Once for every file of a report: digits without the formatting machinery.
        let (mut major, mut minor) = (itoa::Buffer::new(), itoa::Buffer::new());
        let (major, minor) = (major.format(self.major()), minor.format(self.minor()));
        // At most 4 + 1 + 7 bytes: a 12-bit major and a 20-bit minor.
        let mut text = [0u8; 16];
        let colon = major.len();
        let end = colon + 1 + minor.len();
        text[..colon].copy_from_slice(major.as_bytes());
        text[colon] = b':';
        text[colon + 1..end].copy_from_slice(minor.as_bytes());
        serializer.serialize_str(std::str::from_utf8(&text[..end]).unwrap_or_default())
    }
}

impl PartialEq<&str> for Dev {
    fn eq(&self, other: &&str) -> bool {
        other.split_once(':').is_some_and(|(major, minor)| {
            major.parse() == Ok(self.major()) && minor.parse() == Ok(self.minor())
        })
    }
}

/// Node-wide page-cache figures from /proc/meminfo, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NodeMemory {
    /// /proc/meminfo's `Cached` plus `Buffers`: every page of every file's mapping, block
    /// devices' included, as memtrace counts them (swap cache aside).
    pub cached: u64,
    pub shmem: u64,
    pub dirty: u64,
}

/// How long one of memtrace's kernel programs has run, from the kernel's BPF stats
/// (`kernel.bpf_stats_enabled=1`; zero otherwise).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProgramStats {
    pub name: String,
    pub run_time_ns: u64,
    pub run_count: u64,
}

/// `cgroup_root.hierarchy_id` of the unified (v2) hierarchy.
pub const UNIFIED_HIERARCHY: u32 = 0;

/// Human name of a cgroup hierarchy for output.
pub fn describe_hierarchy(hierarchy: u32) -> &'static str {
    if hierarchy == UNIFIED_HIERARCHY {
        "v2"
    } else {
        "v1 memory"
    }
}

/// Which overlay layer a file lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    /// A container's writable layer (`upperdir`).
    Upper,
    /// An image layer (`lowerdir`), shared by every container of the image.
    Lower,
}

/// One kernel hook and whether it is attached.
#[derive(Clone, Debug, Serialize)]
pub struct Hook {
    pub name: &'static str,
    /// `tp_btf` or `fexit`.
    pub kind: &'static str,
    pub attached: bool,
    pub purpose: &'static str,
    /// Why it is not attached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Where per-file write figures come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WritesSource {
    /// fexit on vfs_write: bytes written, exactly.
    VfsWrite,
    /// writeback_dirty_folio: bytes of pages turned dirty (rewrites of a dirty page are not
    /// counted again).
    DirtiedPages,
}

/// A container, as far as the node's files tell.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Container {
    pub runtime: Runtime,
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<Pod>,
    /// Root filesystem on the host (an overlay mount point, usually).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<String>,
    /// True when a runtime's own state (runc's state.json under a root-owned runtime
    /// directory) names this cgroup; false when only the cgroup's name claims a container,
    /// which any process allowed to make cgroups can do.
    pub verified: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Pod {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub uid: String,
    /// Kubernetes QoS class: `guaranteed`, `burstable` or `besteffort`.
    pub qos: String,
}

/// The container runtime that made a container, as recognized from its cgroup or state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub enum Runtime {
    #[serde(rename = "containerd")]
    Containerd,
    #[serde(rename = "cri-o")]
    CriO,
    /// CRI-O's monitor process, in a cgroup of its own.
    #[serde(rename = "cri-o-conmon")]
    CriOConmon,
    #[serde(rename = "docker")]
    Docker,
    #[serde(rename = "podman")]
    Podman,
    /// podman's monitor process, in a cgroup of its own.
    #[serde(rename = "podman-conmon")]
    PodmanConmon,
    /// runc (or crun) alone, or an engine not recognized otherwise.
    #[default]
    #[serde(rename = "runc")]
    Runc,
    /// A Kubernetes container whose engine the cgroupfs driver's path does not say.
    #[serde(rename = "kubernetes")]
    Kubernetes,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Containerd => "containerd",
            Self::CriO => "cri-o",
            Self::CriOConmon => "cri-o-conmon",
            Self::Docker => "docker",
            Self::Podman => "podman",
            Self::PodmanConmon => "podman-conmon",
            Self::Runc => "runc",
            Self::Kubernetes => "kubernetes",
        }
    }
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Runtime {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Container {
    /// Whether this is the container the user named: by name, full id, or an id prefix.
    pub fn matches(&self, wanted: &str) -> bool {
        self.name.as_deref() == Some(wanted)
            || self.id == wanted
            || (wanted.len() >= 4 && self.id.starts_with(wanted))
    }
}

/// The kernel's figures for one memory cgroup (and its descendants), in bytes.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MemoryFigures {
    /// `memory.current` (v2) or `memory.usage_in_bytes` (v1).
    pub usage_bytes: u64,
    /// `anon` (v2) or `rss` (v1).
    pub anon_bytes: u64,
    /// Page cache: `file` (v2) or `cache` (v1). Includes shmem.
    pub page_cache_bytes: u64,
    pub shmem_bytes: u64,
    /// `file_mapped` (v2) or `mapped_file` (v1).
    pub mapped_file_bytes: u64,
    /// `file_dirty` (v2) or `dirty` (v1).
    pub dirty_bytes: u64,
    /// `file_writeback` (v2) or `writeback` (v1).
    pub writeback_bytes: u64,
    pub active_file_bytes: u64,
    pub inactive_file_bytes: u64,
    /// Kernel memory: `kernel` (v2), or what usage leaves after anon and page cache (v1).
    pub kernel_bytes: u64,
    /// kubelet's working set: usage − inactive_file.
    pub working_set_bytes: u64,
    /// File pages read in again soon after the kernel evicted them (`workingset_refault_file`,
    /// hierarchical on v1), since the cgroup was made: cache that does not fit.
    pub refault_file_bytes: u64,
    /// Limits, limit events and pressure.
    pub pressure: MemoryPressure,
    /// Which files these came from.
    pub source: String,
}

/// How close a memory cgroup is to its limits, and how hard the kernel works to keep it
/// there. Limits are `null` when unlimited; what a cgroup version does not have is `null`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MemoryPressure {
    /// The hard limit: v2 `memory.max`, v1 `hierarchical_memory_limit` (the lowest limit on
    /// the way to the root).
    pub limit_bytes: Option<u64>,
    /// Where reclaim and throttling begin: v2 `memory.high`, v1 `soft_limit_in_bytes`.
    pub high_bytes: Option<u64>,
    /// Times usage reached the hard limit: v2 `memory.events` max, v1 `failcnt`.
    pub limit_hits: u64,
    /// Times usage went over `memory.high` and was throttled (v2).
    pub high_events: Option<u64>,
    /// Processes the OOM killer killed in the cgroup: `memory.events` oom_kill, v1
    /// `memory.oom_control` oom_kill.
    pub oom_kills: u64,
    /// Share of the last 10 s in which some (or all) tasks stalled on memory (v2
    /// `memory.pressure` avg10, percent).
    pub some_avg10: Option<f64>,
    pub full_avg10: Option<f64>,
}

impl MemoryFigures {
    /// Bytes the kernel cannot reclaim without swap or writeback first: anonymous memory,
    /// shmem (in the page cache, counted apart), dirty and writeback pages, and kernel memory.
    pub fn unreclaimable_bytes(&self) -> u64 {
        self.anon_bytes
            + self.shmem_bytes
            + self.dirty_bytes
            + self.writeback_bytes
            + self.kernel_bytes
    }
}

impl MemoryFigures {
    /// `attributed` bytes over memory.stat's page cache; `None` when there is none.
    pub fn coverage_of(&self, attributed: u64) -> Option<f64> {
        (self.page_cache_bytes > 0).then(|| attributed as f64 / self.page_cache_bytes as f64)
    }
}

/// What the last tmpfs/shmem scan found (see `collector::shmem`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ShmemSummary {
    /// tmpfs superblocks walked (each once, whichever namespaces mount it).
    pub mounts: usize,
    pub files_examined: usize,
    pub files_cached: usize,
    pub cached_bytes: u64,
    /// Files whose pages were read for their memcg this scan (the rest kept their split).
    pub owner_walks: usize,
    pub not_measurable: usize,
    /// Resident bytes whose memcg could be neither read nor inferred.
    pub unattributed_bytes: u64,
    /// The scan stopped at its file or time limit.
    pub truncated: bool,
    pub seconds: f64,
}

/// How the cache that predates memtrace was found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SeedMethod {
    /// The kernel's own lists: every inode of every superblock, every page counted with its
    /// memcg (the census). Complete.
    #[default]
    Census,
    /// Where the kernel refused the census: open and mapped files, container layers and log
    /// directories, walked and measured. Misses files read and closed elsewhere.
    Walk,
}

/// What the scan did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SeedSummary {
    pub method: SeedMethod,
    /// Files looked at: inodes holding pages (census) or files found by the walk.
    pub files_examined: usize,
    pub files_cached: usize,
    pub cached_bytes: u64,
    pub exact: bool,
    /// Resident pages whose memcg could be neither read nor inferred.
    pub unattributed_bytes: u64,
    /// The scan stopped at its file or time limit.
    pub truncated: bool,
    /// Files whose residency the kernel would not tell truthfully (no CAP_FOWNER and not
    /// the owner): not measured.
    pub not_measurable: usize,
    pub seconds: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_kernel_dev_numbers() {
        assert_eq!(Dev((8 << 20) | 17).to_string(), "8:17");
        assert_eq!(Dev(0x2d).to_string(), "0:45");
    }

    #[test]
    fn a_device_serializes_as_major_colon_minor_to_the_largest_numbers() {
        for (dev, text) in [
            (Dev((254 << 20) | 3), "\"254:3\""),
            (Dev(0), "\"0:0\""),
            (Dev(u32::MAX), "\"4095:1048575\""),
        ] {
            assert_eq!(serde_json::to_string(&dev).unwrap(), text);
            assert_eq!(format!("\"{dev}\""), text);
        }
    }
}
