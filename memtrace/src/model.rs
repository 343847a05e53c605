//! The attribution model: page cache per memory cgroup and per file, built from raw kernel
//! counters. Pure data, no I/O: views render it, tests check it.

use std::collections::HashMap;

use memtrace_common::{CacheCounters, CacheKey};
use serde::Serialize;

use crate::{loader::Hook, resolve::cgroups::CgroupName};

/// Version of the JSON document; bumped only for incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

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
    /// Entries in the (memcg, file) map now, and its capacity.
    pub map_entries: u64,
    pub map_capacity: u64,
    /// Map entries userspace failed to read in this snapshot.
    pub map_read_errors: u64,
}

impl KernelStats {
    /// Events or entries that were lost somewhere, for a warning line.
    pub fn lost(&self) -> u64 {
        self.map_full + self.read_failed + self.cgroup_events_lost + self.map_read_errors
    }
}

/// One file's page cache charged to one cgroup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileUsage {
    /// Device of the file's filesystem, `MAJ:MIN` as in /proc/self/mountinfo.
    pub dev: String,
    pub ino: u64,
    /// Resident bytes traced since start: added − removed, never below 0.
    pub cached_bytes: u64,
    pub added_bytes: u64,
    pub removed_bytes: u64,
}

/// Page cache charged to one memory cgroup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CgroupUsage {
    /// Cgroup id: the inode number of its directory in its hierarchy.
    pub id: u64,
    /// `cgroup_root.hierarchy_id`: 0 is cgroup v2, otherwise the v1 memory hierarchy.
    pub hierarchy: u32,
    /// Path inside its hierarchy, starting with `/`; `null` when the id could not be named.
    pub path: Option<String>,
    /// The cgroup directory is gone; its cache is still charged to it.
    pub removed: bool,
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
    pub page_size: u64,
    pub hooks: Vec<Hook>,
    pub stats: KernelStats,
    pub totals: Totals,
    pub cgroups: Vec<CgroupUsage>,
}

/// Encodes a kernel `s_dev` (`MAJOR << 20 | MINOR`) as `MAJ:MIN`.
pub fn format_dev(dev: u32) -> String {
    format!("{}:{}", dev >> 20, dev & 0xf_ffff)
}

/// Groups raw (memcg, file) counters into cgroups with their files, largest first.
pub fn aggregate(
    entries: impl IntoIterator<Item = (CacheKey, CacheCounters)>,
    page_size: u64,
    mut name_of: impl FnMut(u32, u64) -> Option<CgroupName>,
) -> (Vec<CgroupUsage>, Totals) {
    let mut by_cgroup: HashMap<(u32, u64), Vec<FileUsage>> = HashMap::new();
    for (key, counters) in entries {
        let added = counters.pages_added.saturating_mul(page_size);
        let removed = counters.pages_removed.saturating_mul(page_size);
        by_cgroup
            .entry((key.hierarchy, key.cgroup_id))
            .or_default()
            .push(FileUsage {
                dev: format_dev(key.dev),
                ino: key.ino,
                cached_bytes: added.saturating_sub(removed),
                added_bytes: added,
                removed_bytes: removed,
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
            });
            let cached_bytes = files.iter().map(|f| f.cached_bytes).sum();
            let added_bytes: u64 = files.iter().map(|f| f.added_bytes).sum();
            let removed_bytes: u64 = files.iter().map(|f| f.removed_bytes).sum();
            let name = name_of(hierarchy, id);
            totals.cached_bytes += cached_bytes;
            totals.added_bytes += added_bytes;
            totals.removed_bytes += removed_bytes;
            totals.files += files.len();
            CgroupUsage {
                id,
                hierarchy,
                path: name.as_ref().map(|n| n.path.clone()),
                removed: name.is_some_and(|n| n.removed),
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
        let (cgroups, totals) = aggregate(entries, 4096, |_, id| {
            Some(CgroupName {
                path: format!("/cg{id}"),
                removed: id == 20,
            })
        });
        assert_eq!(cgroups.len(), 2);
        assert_eq!(cgroups[0].id, 20, "largest cgroup first");
        assert!(cgroups[0].removed);
        assert_eq!(cgroups[1].path.as_deref(), Some("/cg10"));
        assert_eq!(cgroups[1].cached_bytes, 300 * 4096);
        assert_eq!(cgroups[1].files[0].ino, 2, "largest file first");
        assert_eq!(cgroups[1].files[0].cached_bytes, 200 * 4096);
        assert_eq!(cgroups[1].files[0].dev, "254:3");
        assert_eq!(totals.files, 3);
        assert_eq!(totals.cached_bytes, 1300 * 4096);
    }

    #[test]
    fn cache_dropped_that_predates_tracing_never_goes_negative() {
        let (cgroups, _) = aggregate(vec![(key(1, 1), counters(2, 10))], 4096, |_, _| None);
        assert_eq!(cgroups[0].files[0].cached_bytes, 0);
        assert_eq!(cgroups[0].net_bytes, -8 * 4096);
        assert_eq!(cgroups[0].path, None);
    }

    #[test]
    fn formats_kernel_dev_numbers() {
        assert_eq!(format_dev((8 << 20) | 17), "8:17");
        assert_eq!(format_dev(0x2d), "0:45");
    }
}
