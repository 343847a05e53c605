//! The attribution model: page cache per memory cgroup and per file, built from raw kernel
//! counters. Pure data, no I/O: views render it, tests check it.

pub mod explain;

use std::{collections::HashMap, sync::Arc};

use memtrace_common::{CacheCounters, CacheKey};
use serde::Serialize;

use crate::{
    loader::{Hook, WritesSource},
    resolve::{containers::Container, paths::Layer},
};

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

/// Cache that was resident before tracing began, as found at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeededCache {
    pub pages: u64,
    /// Of those, pages on the active LRU list.
    pub active_pages: u64,
    pub provenance: Provenance,
    /// The kernel counters of the same key when the file was measured: traced changes are
    /// counted from here on, so nothing is counted twice.
    pub baseline: CacheCounters,
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

/// What is known of one (memcg, file): traced counters, seeded cache if found at start, and
/// the processes of that memcg that wrote the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub key: CacheKey,
    pub counters: CacheCounters,
    /// Boxed: most observations have none, and there can be hundreds of thousands.
    pub seeded: Option<Box<SeededCache>>,
    pub writers: Vec<WriterUsage>,
}

impl Observation {
    pub fn traced(key: CacheKey, counters: CacheCounters) -> Self {
        Self {
            writers: Vec::new(),
            key,
            counters,
            seeded: None,
        }
    }

    /// Resident pages: seeded + traced since the seed (or since start), never below zero.
    pub fn resident_pages(&self) -> u64 {
        let (base, start) = match self.seeded.as_deref() {
            Some(seed) => (seed.pages, seed.baseline),
            None => (0, CacheCounters::default()),
        };
        let added = self.counters.pages_added.saturating_sub(start.pages_added);
        let removed = self
            .counters
            .pages_removed
            .saturating_sub(start.pages_removed);
        (base + added).saturating_sub(removed)
    }
}

/// Kernel-side counters: what was seen and what could not be recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KernelStats {
    pub add_events: u64,
    pub delete_events: u64,
    /// Events dropped because the (memcg, file) map was full: raise `--max-entries`.
    pub map_full: u64,
    /// Events dropped because a kernel pointer chain could not be read.
    pub read_failed: u64,
    /// Folios with no memcg, accounted under cgroup id 0.
    pub uncharged: u64,
    /// Cgroup mkdir/rmdir notices dropped (a full ring buffer): some names may be missing.
    pub cgroup_events_lost: u64,
    /// Writes not recorded because the writers map was full.
    pub writers_map_full: u64,
    /// File path notices dropped (a full ring buffer): some files may show no path.
    pub file_events_lost: u64,
    /// Entries in the (memcg, file) map now, and its capacity.
    pub map_entries: u64,
    pub map_capacity: u64,
    /// Map entries userspace failed to read in this snapshot.
    pub map_read_errors: u64,
}

/// One file's page cache charged to one cgroup.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FileUsage {
    /// The path a process sees: inside its container for overlay files, else the host path.
    /// `null` when no name could be found.
    pub path: Option<Arc<str>>,
    /// The file on the host (for a container's files, the file in its overlay layer).
    pub host_path: Option<Arc<str>>,
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

/// A snapshot of everything memtrace attributes.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub schema_version: u32,
    /// Seconds since the Unix epoch when the snapshot was taken.
    pub timestamp: f64,
    /// Seconds since the programs were attached.
    pub traced_seconds: f64,
    /// Seconds this snapshot took to build (read the maps, name, filter, measure dirty).
    pub snapshot_seconds: f64,
    pub page_size: u64,
    pub hooks: Vec<Hook>,
    /// Where `files[].written_bytes` come from: `vfs_write` (exact bytes) or `dirtied_pages`
    /// (the fallback where fentry/fexit is refused); null when neither hook is attached.
    pub writes_source: Option<WritesSource>,
    /// Where `files[].dirty_bytes` come from: `cachestat` (null before Linux 6.5).
    pub dirty_source: Option<&'static str>,
    pub stats: KernelStats,
    pub totals: Totals,
    pub cgroups: Vec<CgroupUsage>,
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
        serializer.collect_str(self)
    }
}

impl PartialEq<&str> for Dev {
    fn eq(&self, other: &&str) -> bool {
        other.split_once(':').is_some_and(|(major, minor)| {
            major.parse() == Ok(self.major()) && minor.parse() == Ok(self.minor())
        })
    }
}

/// Groups (memcg, file) observations into cgroups with their files, largest first. Names are
/// left empty for the resolvers.
pub fn aggregate(observations: Vec<Observation>, page_size: u64) -> (Vec<CgroupUsage>, Totals) {
    // Sized exactly up front: with 100,000 files, doubling growth would hold twice the room.
    let mut per_cgroup: HashMap<(u32, u64), usize> = HashMap::new();
    for observation in &observations {
        *per_cgroup
            .entry((observation.key.hierarchy, observation.key.cgroup_id))
            .or_default() += 1;
    }
    let mut by_cgroup: HashMap<(u32, u64), Vec<FileUsage>> = per_cgroup
        .into_iter()
        .map(|(cgroup, files)| (cgroup, Vec::with_capacity(files)))
        .collect();
    for observation in observations {
        let cached_bytes = observation.resident_pages().saturating_mul(page_size);
        let Observation {
            key,
            counters,
            seeded,
            mut writers,
        } = observation;
        writers.sort_by_key(|w| std::cmp::Reverse(w.bytes));
        let added = counters.pages_added.saturating_mul(page_size);
        let removed = counters.pages_removed.saturating_mul(page_size);
        by_cgroup
            .entry((key.hierarchy, key.cgroup_id))
            .or_default()
            .push(FileUsage {
                path: None,
                host_path: None,
                deleted: false,
                layer: None,
                dev: Dev(key.dev),
                ino: key.ino,
                cached_bytes,
                added_bytes: added,
                removed_bytes: removed,
                seeded_bytes: seeded.as_deref().map_or(0, |s| s.pages * page_size),
                seeded_active_bytes: seeded.as_deref().map_or(0, |s| s.active_pages * page_size),
                provenance: seeded
                    .as_deref()
                    .map_or(Provenance::Traced, |s| s.provenance),
                written_bytes: writers.iter().map(|w| w.bytes).sum(),
                write_calls: writers.iter().map(|w| w.calls).sum(),
                write_rate_bytes_per_second: None,
                writers,
                dirty_bytes: None,
                writeback_bytes: None,
            });
    }

    let mut totals = Totals::default();
    let mut cgroups: Vec<CgroupUsage> = by_cgroup
        .into_iter()
        .map(|((hierarchy, id), mut files)| {
            files.sort_by(|a, b| {
                b.cached_bytes
                    .cmp(&a.cached_bytes)
                    .then(b.added_bytes.cmp(&a.added_bytes))
                    .then(b.written_bytes.cmp(&a.written_bytes))
            });
            let cached_bytes = files.iter().map(|f| f.cached_bytes).sum();
            let added_bytes: u64 = files.iter().map(|f| f.added_bytes).sum();
            let removed_bytes: u64 = files.iter().map(|f| f.removed_bytes).sum();
            totals.cached_bytes += cached_bytes;
            totals.added_bytes += added_bytes;
            totals.removed_bytes += removed_bytes;
            totals.files += files.len();
            CgroupUsage {
                id,
                hierarchy,
                path: None,
                removed: false,
                container: None,
                unit: None,
                cached_bytes,
                added_bytes,
                removed_bytes,
                net_bytes: added_bytes as i64 - removed_bytes as i64,
                file_count: files.len(),
                files,
            }
        })
        .collect();
    cgroups.sort_by(|a, b| {
        b.cached_bytes
            .cmp(&a.cached_bytes)
            .then(b.added_bytes.cmp(&a.added_bytes))
            .then(a.id.cmp(&b.id))
    });
    totals.cgroups = cgroups.len();
    (cgroups, totals)
}

/// What to keep of a report.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// A container name, id, or id prefix.
    pub container: Option<String>,
    /// A cgroup path or a parent of it.
    pub cgroup: Option<String>,
    /// Files whose path (container view) or host path starts with this.
    pub path_prefix: Option<String>,
    /// The N largest cgroups, and the N largest files in each.
    pub top: Option<usize>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.container.is_none()
            && self.cgroup.is_none()
            && self.path_prefix.is_none()
            && self.top.is_none()
    }
}

/// Whether `container` is the one the user named: by name, full id, or an id prefix.
pub fn container_matches(container: &Container, wanted: &str) -> bool {
    container.name.as_deref() == Some(wanted)
        || container.id == wanted
        || (wanted.len() >= 4 && container.id.starts_with(wanted))
}

/// Whether `path` is `prefix` or lies below it, component-wise.
pub fn under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty()
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Keeps what `filter` asks for. Totals describe what the filters keep, before the `top` cut
/// (which only limits what is listed). A cgroup's own figures stay whole even when only some of
/// its files are listed.
///
/// `name_files` fills in file paths; it is called only for the files that can still be
/// shown: with a path filter every file needs a name, otherwise the `top` cut comes first.
pub fn apply_filter(
    cgroups: &mut Vec<CgroupUsage>,
    totals: &mut Totals,
    filter: &Filter,
    mut name_files: impl FnMut(&mut [CgroupUsage]),
) {
    filter_cgroups(cgroups, filter);
    if filter.path_prefix.is_some() {
        name_files(cgroups);
        filter_paths(cgroups, filter);
    }
    if !filter.is_empty() {
        *totals = totals_of(cgroups);
    }
    if let Some(top) = filter.top {
        keep_top(cgroups, top);
    }
    if filter.path_prefix.is_none() {
        name_files(cgroups);
    }
}

/// Keeps the cgroups `filter` names by container or cgroup path (needs cgroup names only).
fn filter_cgroups(cgroups: &mut Vec<CgroupUsage>, filter: &Filter) {
    cgroups.retain(|c| {
        let container_ok = filter.container.as_deref().is_none_or(|wanted| {
            c.container
                .as_ref()
                .is_some_and(|container| container_matches(container, wanted))
        });
        let cgroup_ok = filter
            .cgroup
            .as_deref()
            .is_none_or(|prefix| c.path.as_deref().is_some_and(|p| under(p, prefix)));
        container_ok && cgroup_ok
    });
}

/// Keeps the files under `filter.path_prefix` (needs file names), and the cgroups with any.
fn filter_paths(cgroups: &mut Vec<CgroupUsage>, filter: &Filter) {
    let Some(prefix) = filter.path_prefix.as_deref() else {
        return;
    };
    for cgroup in cgroups.iter_mut() {
        cgroup.files.retain(|f| {
            [&f.path, &f.host_path]
                .into_iter()
                .flatten()
                .any(|p| under(p, prefix))
        });
    }
    cgroups.retain(|c| !c.files.is_empty());
}

/// Keeps the `top` largest cgroups and the `top` largest files in each (they are sorted).
fn keep_top(cgroups: &mut Vec<CgroupUsage>, top: usize) {
    cgroups.truncate(top);
    for cgroup in cgroups.iter_mut() {
        cgroup.files.truncate(top);
    }
}

fn totals_of(cgroups: &[CgroupUsage]) -> Totals {
    Totals {
        cached_bytes: cgroups.iter().map(|c| c.cached_bytes).sum(),
        added_bytes: cgroups.iter().map(|c| c.added_bytes).sum(),
        removed_bytes: cgroups.iter().map(|c| c.removed_bytes).sum(),
        cgroups: cgroups.len(),
        files: cgroups.iter().map(|c| c.file_count).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(cgroup_id: u64, ino: u64) -> CacheKey {
        CacheKey {
            cgroup_id,
            ino,
            dev: (254 << 20) | 3,
            hierarchy: 4,
        }
    }

    fn traced(entries: Vec<(CacheKey, CacheCounters)>) -> Vec<Observation> {
        entries
            .into_iter()
            .map(|(k, c)| Observation::traced(k, c))
            .collect()
    }

    #[test]
    fn seeded_cache_plus_traced_changes_is_never_double_counted() {
        let seed = SeededCache {
            pages: 100,
            active_pages: 40,
            provenance: Provenance::Exact,
            // 30 pages were added (and traced) before the file was measured: they are inside
            // the 100 already.
            baseline: counters(30, 0),
        };
        let observation = Observation {
            key: key(5, 9),
            counters: counters(50, 70),
            seeded: Some(Box::new(seed)),
            writers: Vec::new(),
        };
        // 100 seeded + (50 − 30) added since − (70 − 0) removed since = 50.
        assert_eq!(observation.resident_pages(), 50);
        let (cgroups, _) = aggregate(vec![observation.clone()], 4096);
        let file = &cgroups[0].files[0];
        assert_eq!(file.cached_bytes, 50 * 4096);
        assert_eq!(file.seeded_bytes, 100 * 4096);
        assert_eq!(file.seeded_active_bytes, 40 * 4096);
        assert_eq!(file.provenance, Provenance::Exact);
        let evicted = Observation {
            counters: counters(30, 500),
            ..observation
        };
        assert_eq!(evicted.resident_pages(), 0, "never below zero");
    }

    fn counters(added: u64, removed: u64) -> CacheCounters {
        CacheCounters {
            pages_added: added,
            pages_removed: removed,
        }
    }

    #[test]
    fn groups_files_under_cgroups_and_sorts_by_cache() {
        let entries = vec![
            (key(10, 1), counters(100, 0)),
            (key(10, 2), counters(300, 100)),
            (key(20, 3), counters(1000, 0)),
        ];
        let (cgroups, totals) = aggregate(traced(entries), 4096);
        assert_eq!(cgroups.len(), 2);
        assert_eq!(cgroups[0].id, 20, "largest cgroup first");
        assert_eq!(cgroups[1].path, None, "names are the resolvers' job");
        assert_eq!(cgroups[1].cached_bytes, 300 * 4096);
        assert_eq!(cgroups[1].files[0].ino, 2, "largest file first");
        assert_eq!(cgroups[1].files[0].cached_bytes, 200 * 4096);
        assert_eq!(cgroups[1].files[0].dev, "254:3");
        assert_eq!(totals.files, 3);
        assert_eq!(totals.cached_bytes, 1300 * 4096);
    }

    #[test]
    fn cache_dropped_that_predates_tracing_never_goes_negative() {
        let (cgroups, _) = aggregate(traced(vec![(key(1, 1), counters(2, 10))]), 4096);
        assert_eq!(cgroups[0].files[0].cached_bytes, 0);
        assert_eq!(cgroups[0].net_bytes, -8 * 4096);
        assert_eq!(cgroups[0].path, None);
    }

    fn named(mut cgroups: Vec<CgroupUsage>) -> Vec<CgroupUsage> {
        for c in &mut cgroups {
            c.path = Some(format!("/apps/cg{}", c.id));
            c.container = Some(Container {
                runtime: "runc".into(),
                id: format!("abcdef{}", c.id),
                name: Some(format!("web-{}", c.id)),
                ..Container::default()
            });
            for f in &mut c.files {
                f.path = Some(format!("/tmp/f{}.log", f.ino).into());
                f.host_path = Some(format!("/var/lib/upper/tmp/f{}.log", f.ino).into());
            }
        }
        cgroups
    }

    #[test]
    fn filters_by_container_cgroup_path_and_top() {
        let entries = vec![
            (key(10, 1), counters(100, 0)),
            (key(10, 2), counters(300, 0)),
            (key(20, 3), counters(1000, 0)),
        ];
        let (all, all_totals) = aggregate(traced(entries), 4096);
        let all = named(all);
        let run = |filter: Filter| {
            let (mut cgroups, mut totals) = (all.clone(), all_totals.clone());
            apply_filter(&mut cgroups, &mut totals, &filter, |_| {});
            (cgroups, totals)
        };

        let (c, t) = run(Filter {
            container: Some("web-10".into()),
            ..Filter::default()
        });
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].id, 10);
        assert_eq!(t.cached_bytes, 400 * 4096);
        assert_eq!(
            run(Filter {
                container: Some("abcdef20".into()),
                ..Filter::default()
            })
            .0[0]
                .id,
            20
        );
        assert_eq!(
            run(Filter {
                container: Some("abcd".into()),
                ..Filter::default()
            })
            .0
            .len(),
            2,
            "id prefix"
        );
        assert!(run(Filter {
            container: Some("nope".into()),
            ..Filter::default()
        })
        .0
        .is_empty());

        assert_eq!(
            run(Filter {
                cgroup: Some("/apps".into()),
                ..Filter::default()
            })
            .0
            .len(),
            2
        );
        assert_eq!(
            run(Filter {
                cgroup: Some("/apps/cg1".into()),
                ..Filter::default()
            })
            .0
            .len(),
            0,
            "component-wise"
        );

        let (c, _) = run(Filter {
            path_prefix: Some("/tmp/f2.log".into()),
            ..Filter::default()
        });
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].files.len(), 1);
        assert_eq!(c[0].cached_bytes, 400 * 4096, "cgroup figures stay whole");
        assert_eq!(
            run(Filter {
                path_prefix: Some("/var/lib/upper".into()),
                ..Filter::default()
            })
            .0
            .len(),
            2,
            "host path matches"
        );

        let (c, t) = run(Filter {
            top: Some(1),
            ..Filter::default()
        });
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].id, 20);
        assert_eq!(c[0].files.len(), 1);
        assert_eq!(
            t.cgroups, 2,
            "totals describe what the filters keep, not the top cut"
        );
    }

    #[test]
    fn formats_kernel_dev_numbers() {
        assert_eq!(Dev((8 << 20) | 17).to_string(), "8:17");
        assert_eq!(Dev(0x2d).to_string(), "0:45");
    }
}
