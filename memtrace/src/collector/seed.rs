//! Page cache that was resident before memtrace started.
//!
//! The tracepoints only see pages come and go; cache that piled up over days before memtrace
//! ran is found here, once, at start: in files open or mapped by any process, in every
//! container's writable and image layers, and in the usual log directories. Each figure says
//! how it was attributed: `exact` (the memcg read from the pages themselves) or inferred (by the
//! process holding the file, or by the container whose layer holds it).

use std::{
    collections::{HashMap, HashSet},
    fs::{self, File},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use memtrace_common::CacheKey;

use super::residency::{cachestat, PageOwnerReader};
use crate::{
    model::{Provenance, SeedSummary},
    resolve::{
        open::{open_proc_link, open_regular},
        paths::SeenName,
        procs::open_file_links,
    },
};

/// Cache found at start for one (memcg, file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seed {
    pub pages: u64,
    /// Of those, pages on the active LRU list (when /proc/kpageflags could tell).
    pub active_pages: u64,
    pub provenance: Provenance,
}

/// Where to look, and how much to spend.
#[derive(Clone, Debug)]
pub struct SeedOptions {
    pub max_files: usize,
    pub time_budget: Duration,
    /// Directories walked besides open files and overlay layers.
    pub extra_dirs: Vec<PathBuf>,
}

impl Default for SeedOptions {
    fn default() -> Self {
        Self {
            max_files: 200_000,
            time_budget: Duration::from_secs(20),
            extra_dirs: ["/var/log", "/var/lib/docker/containers", "/tmp", "/var/tmp"]
                .into_iter()
                .map(PathBuf::from)
                .collect(),
        }
    }
}

/// A file to look at, and who may own it if the pages cannot say.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub path: PathBuf,
    /// A process holding it open or mapped.
    pub holder_pid: Option<u32>,
    /// The memcg of the container whose layer holds it: (hierarchy, cgroup id).
    pub location_memcg: Option<(u32, u64)>,
}

/// Open and mapped files of every process, from /proc.
pub fn open_files() -> Vec<Candidate> {
    open_file_links()
        .into_iter()
        .map(|(pid, path)| Candidate {
            path,
            holder_pid: Some(pid),
            location_memcg: None,
        })
        .collect()
}

/// Regular files below `root`, up to `limit`, staying on `root`'s filesystem: a walk of
/// /var/tmp must not wander into a container's overlay mount and name the layer's files by
/// their merged path.
pub fn files_below(
    root: &Path,
    limit: usize,
    location_memcg: Option<(u32, u64)>,
) -> Vec<Candidate> {
    let mut found = Vec::new();
    let Ok(root_meta) = fs::metadata(root) else {
        return found;
    };
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                if entry.metadata().is_ok_and(|m| m.dev() == root_meta.dev()) {
                    pending.push(entry.path());
                }
            } else if kind.is_file() {
                found.push(Candidate {
                    path: entry.path(),
                    holder_pid: None,
                    location_memcg,
                });
                if found.len() >= limit {
                    return found;
                }
            }
        }
    }
    found
}

/// Kernel `s_dev` encoding of a userspace (major, minor).
pub fn kernel_dev(major: u32, minor: u32) -> u32 {
    (major << 20) | (minor & 0xf_ffff)
}

/// Opens a candidate without following a container's symlinks, blocking on a FIFO or taking a
/// non-regular file (see `open`): /proc links by what the process holds, walked paths as they are.
fn open_candidate(candidate: &Candidate) -> Option<File> {
    let opened = if candidate.holder_pid.is_some() {
        open_proc_link(&candidate.path)
    } else {
        open_regular(&candidate.path, None)
    };
    opened.map_err(|err| log::debug!("not scanned: {err}")).ok()
}

const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;

fn is_overlay(file: &File) -> bool {
    use std::os::unix::io::AsRawFd;
    // SAFETY: statfs is plain integer data, valid when zeroed.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs writes into the struct we pass, which outlives the call.
    let ret = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    ret == 0 && st.f_type as i64 == OVERLAYFS_SUPER_MAGIC
}

/// The name a candidate gives its file: a host path, or what /proc/<pid>/fd says.
fn name_of(candidate: &Candidate) -> SeenName {
    if candidate.holder_pid.is_none() {
        return SeenName {
            path: candidate.path.clone(),
            on_host: true,
            deleted: false,
        };
    }
    let target = fs::read_link(&candidate.path).unwrap_or_default();
    let text = target.to_string_lossy();
    let (path, deleted) = match text.strip_suffix(" (deleted)") {
        Some(stripped) => (PathBuf::from(stripped), true),
        None => (target.clone(), false),
    };
    // A process in another mount namespace names files by its own root: only a path that
    // exists on the host is a host path.
    let on_host = !deleted && path.exists();
    SeenName {
        path,
        on_host,
        deleted,
    }
}

/// What a scan found: cache per (memcg, file), names per file, and a summary.
#[derive(Debug, Default)]
pub struct ScanResult {
    pub seeds: HashMap<CacheKey, Seed>,
    /// (kernel dev, ino) → a name for the file.
    pub names: HashMap<(u32, u64), SeenName>,
    pub summary: SeedSummary,
}

/// Measures every candidate and attributes its resident pages.
///
/// `memcg_of_pid` and the candidates' `location_memcg` are the fallbacks when pages cannot
/// name their memcg. Seeds are keyed as the kernel maps key them. Host paths (layer and
/// directory walks) should come before /proc candidates, so files get host names.
pub fn scan(
    candidates: Vec<Candidate>,
    options: &SeedOptions,
    memory_hierarchy: u32,
    page_size: u64,
    mut memcg_of_pid: impl FnMut(u32) -> Option<u64>,
) -> ScanResult {
    let started = Instant::now();
    let mut result = ScanResult::default();
    let (seeds, summary, names) = (&mut result.seeds, &mut result.summary, &mut result.names);
    summary.method = crate::model::SeedMethod::Walk;
    let Ok(reader) = PageOwnerReader::open() else {
        return result;
    };
    summary.exact = reader.exact();
    let mut seen_paths: HashSet<(u64, u64)> = HashSet::new();
    let mut seen_files: HashSet<(u32, u64)> = HashSet::new();

    for candidate in candidates {
        if summary.files_examined >= options.max_files || started.elapsed() > options.time_budget {
            summary.truncated = true;
            break;
        }
        let Some(file) = open_candidate(&candidate) else {
            continue;
        };
        let Ok(meta) = file.metadata() else {
            continue;
        };
        if meta.len() == 0 || !seen_paths.insert((meta.dev(), meta.ino())) {
            continue;
        }
        summary.files_examined += 1;
        if !PageOwnerReader::residency_is_honest(&file) {
            summary.not_measurable += 1;
            continue;
        }
        // An overlay file's pages belong to its layer's file, and a mapping of it is shown
        // under the overlay's device and inode: such files are measured through the layer
        // walks, which come first, under their real identity.
        if is_overlay(&file) {
            continue;
        }
        // cachestat is the cheap first look.
        if cachestat(&file).is_ok_and(|stat| stat.cached == 0) {
            continue;
        }
        let Ok(owners) = reader.owners(&file) else {
            continue;
        };
        if owners.resident == 0 {
            continue;
        }
        let Some((major, minor, ino)) = owners.identity else {
            continue;
        };
        let dev = kernel_dev(major, minor);
        if !seen_files.insert((dev, ino)) {
            continue;
        }
        summary.files_cached += 1;
        summary.cached_bytes += owners.resident * page_size;
        names.insert((dev, ino), name_of(&candidate));
        let key = |cgroup_id| CacheKey {
            cgroup_id,
            ino,
            dev,
            hierarchy: memory_hierarchy,
        };
        // Active pages are spread over owners in proportion (usually there is one owner).
        let active_share = |pages: u64| {
            (owners.active * pages)
                .checked_div(owners.resident)
                .unwrap_or(0)
        };
        for (&cgroup_id, &pages) in &owners.by_cgroup {
            let seed = seeds.entry(key(cgroup_id)).or_insert(Seed {
                pages: 0,
                active_pages: 0,
                provenance: Provenance::Exact,
            });
            seed.pages += pages;
            seed.active_pages += active_share(pages);
        }
        if owners.unowned > 0 {
            let inferred = candidate
                .holder_pid
                .and_then(&mut memcg_of_pid)
                .map(|id| (id, Provenance::InferredOwner))
                .or_else(|| {
                    candidate
                        .location_memcg
                        .map(|(_, id)| (id, Provenance::InferredLocation))
                });
            match inferred {
                Some((cgroup_id, provenance)) => {
                    let seed = seeds.entry(key(cgroup_id)).or_insert(Seed {
                        pages: 0,
                        active_pages: 0,
                        provenance,
                    });
                    seed.pages += owners.unowned;
                }
                None => summary.unattributed_bytes += owners.unowned * page_size,
            }
        }
    }
    summary.seconds = started.elapsed().as_secs_f64();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_kernel_dev() {
        assert_eq!(kernel_dev(254, 0), 254 << 20);
        assert_eq!(kernel_dev(8, 17), (8 << 20) | 17);
    }
}
