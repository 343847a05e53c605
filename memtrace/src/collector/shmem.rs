//! tmpfs and shmem: memory no page-cache tracepoint sees.
//!
//! A page added to a tmpfs file, a memfd, a SysV segment or a shared anonymous mapping goes
//! through shmem's own insert, which fires no `mm_filemap_add_to_page_cache`; only its
//! removal is traced. So these files are found and measured instead, at most every
//! `RESCAN_EVERY`: every tmpfs mount of every mount namespace (a container's `/dev/shm`, a
//! Kubernetes memory `emptyDir`), and every shmem file a process holds open or mapped
//! (memfds, SysV segments, deleted tmpfs files). A file's owner split (which memcg holds its
//! pages, read per page) is reused while its resident page count holds, so a quiet node pays
//! a directory walk and one cachestat per file, not a page walk.
//!
//! Everything here is opened as the hostile-input rules require: no symlink is followed below
//! a mount point (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV`),
//! nothing is opened before `fstat` on an `O_PATH` descriptor says it is a regular file (so a
//! device node or FIFO in a container's tmpfs is never opened), and nothing is read or mapped
//! but pages `mincore` lists as resident.

use std::{
    collections::{HashMap, HashSet},
    ffi::{CString, OsStr},
    fs::{self, File},
    io,
    os::unix::{
        ffi::OsStrExt,
        fs::MetadataExt,
        io::{AsRawFd, FromRawFd},
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use memtrace_common::CacheKey;

use super::residency::{resident_pages, PageOwnerReader};
use crate::{
    model::{Provenance, ShmemSummary},
    resolve::{
        mounts::read_mountinfo,
        open::{self, open_proc_link, OpenError},
        paths::SeenName,
        procs::open_file_links,
    },
};

/// tmpfs's `statfs` magic, which memfds and SysV segments (on the kernel's internal shm
/// mount) share.
const TMPFS_MAGIC: i64 = 0x0102_1994;
/// How often the files are found and measured again.
pub const RESCAN_EVERY: Duration = Duration::from_secs(2);
/// A file's owner split is read again from its pages after this long, even if its size held.
const REMEASURE_OWNERS_AFTER: Duration = Duration::from_secs(30);
/// Most files one scan looks at, and the time it may take: past either, the scan stops and says
/// so, and the files it did not reach keep their last measurement (a file never measured waits
/// for a later scan, which reaches further: files measured before cost one cachestat).
const MAX_FILES: usize = 20_000;
const TIME_BUDGET: Duration = Duration::from_millis(250);

/// One (memcg, shmem file)'s resident memory, measured now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShmemPages {
    pub pages: u64,
    pub active_pages: u64,
    pub provenance: Provenance,
}

/// A file's last measurement: its resident pages, and how they split over memcgs.
struct Measured {
    resident: u64,
    at: Instant,
    split: Vec<(u64, ShmemPages)>,
}

/// Finds and measures tmpfs/shmem files; keeps the last result between scans.
#[derive(Default)]
pub struct ShmemScanner {
    last_scan: Option<Instant>,
    measured: HashMap<(u32, u64), Measured>,
    /// Kernel devices of every shmem superblock seen: the tracepoints' counters for these are
    /// removals only, and are replaced by the measurements.
    pub devs: HashSet<u32>,
    /// (memcg, file) → pages, from the last scan.
    pub files: HashMap<CacheKey, ShmemPages>,
    pub summary: ShmemSummary,
}

/// A shmem file found, with who it was found through.
struct Found {
    file: File,
    name: SeenName,
    /// The process whose namespace or descriptors led here: its memcg is the fallback owner.
    pid: u32,
}

impl ShmemScanner {
    pub fn due(&self) -> bool {
        self.last_scan.is_none_or(|at| at.elapsed() >= RESCAN_EVERY)
    }

    /// Finds and measures every shmem file; returns names for the files first found now.
    /// `memcg_of_pid` is the fallback owner when pages cannot name their memcg.
    pub fn scan(
        &mut self,
        memory_hierarchy: u32,
        page_size: u64,
        memcg_of_pid: impl FnMut(u32) -> Option<u64>,
    ) -> Vec<((u32, u64), SeenName)> {
        let started = Instant::now();
        self.last_scan = Some(started);
        let Ok(reader) = PageOwnerReader::open() else {
            return Vec::new();
        };
        let mut measurer = Measurer {
            reader,
            memory_hierarchy,
            page_size,
            started,
            memcg_of_pid,
            previous: std::mem::take(&mut self.measured),
            measured: HashMap::new(),
            files: HashMap::new(),
            seen: HashSet::new(),
            names: Vec::new(),
            summary: ShmemSummary::default(),
        };
        find(&mut self.devs, &mut measurer);
        if measurer.summary.truncated {
            for (id, last) in std::mem::take(&mut measurer.previous) {
                measurer.keep(id, last);
            }
        }
        let Measurer {
            measured,
            files,
            names,
            mut summary,
            ..
        } = measurer;
        self.measured = measured;
        self.files = files;
        summary.seconds = started.elapsed().as_secs_f64();
        self.summary = summary;
        names
    }
}

/// Measures each file as it is found (so one is open at a time), reusing a file's last owner
/// split while its resident page count holds.
struct Measurer<F> {
    reader: PageOwnerReader,
    memory_hierarchy: u32,
    page_size: u64,
    started: Instant,
    memcg_of_pid: F,
    previous: HashMap<(u32, u64), Measured>,
    measured: HashMap<(u32, u64), Measured>,
    files: HashMap<CacheKey, ShmemPages>,
    seen: HashSet<(u32, u64)>,
    names: Vec<((u32, u64), SeenName)>,
    summary: ShmemSummary,
}

impl<F: FnMut(u32) -> Option<u64>> Measurer<F> {
    /// Whether finding must stop: too many files, or its time is up.
    fn spent(&mut self) -> bool {
        let spent =
            self.summary.files_examined >= MAX_FILES || self.started.elapsed() > TIME_BUDGET;
        self.summary.truncated |= spent;
        spent
    }

    fn visit(&mut self, devs: &mut HashSet<u32>, Found { file, name, pid }: Found) {
        let Ok(meta) = file.metadata() else { return };
        // tmpfs has no device of its own: stat's device is the superblock's, as the kernel's
        // counters key it.
        let dev = super::seed::kernel_dev(libc::major(meta.dev()), libc::minor(meta.dev()));
        let id = (dev, meta.ino());
        if !self.seen.insert(id) {
            return;
        }
        devs.insert(dev);
        self.summary.files_examined += 1;
        let last = self.previous.remove(&id);
        let known = last.is_some();
        if !PageOwnerReader::residency_is_honest(&file) {
            self.summary.not_measurable += 1;
            return;
        }
        let Ok(resident) = resident_pages(&file, self.page_size as usize) else {
            return;
        };
        if resident == 0 {
            return;
        }
        let measurement = match last {
            Some(last)
                if last.resident == resident && last.at.elapsed() < REMEASURE_OWNERS_AFTER =>
            {
                last
            }
            _ => match self.owners(&file, pid, resident) {
                Some(measurement) => measurement,
                None => return,
            },
        };
        self.keep(id, measurement);
        // A file already named keeps its name: naming it again would re-check it each scan.
        if !known {
            self.names.push((id, name));
        }
    }

    /// Reads which memcg holds each resident page.
    fn owners(&mut self, file: &File, pid: u32, resident: u64) -> Option<Measured> {
        let owners = self.reader.owners(file).ok()?;
        self.summary.owner_walks += 1;
        let mut split: Vec<(u64, ShmemPages)> = owners
            .by_cgroup
            .iter()
            .filter(|&(&memcg, _)| memcg != 0)
            .map(|(&memcg, &pages)| {
                let active = (owners.active * pages)
                    .checked_div(owners.resident)
                    .unwrap_or(0);
                (
                    memcg,
                    ShmemPages {
                        pages,
                        active_pages: active,
                        provenance: Provenance::Exact,
                    },
                )
            })
            .collect();
        let owned: u64 = split.iter().map(|(_, p)| p.pages).sum();
        let rest = owners.resident.saturating_sub(owned);
        if rest > 0 {
            match (self.memcg_of_pid)(pid) {
                Some(memcg) => split.push((
                    memcg,
                    ShmemPages {
                        pages: rest,
                        active_pages: 0,
                        provenance: Provenance::InferredOwner,
                    },
                )),
                None => self.summary.unattributed_bytes += rest * self.page_size,
            }
        }
        Some(Measured {
            resident,
            at: Instant::now(),
            split,
        })
    }

    fn keep(&mut self, id: (u32, u64), measurement: Measured) {
        for (memcg, pages) in &measurement.split {
            add_pages(&mut self.files, self.memory_hierarchy, id, *memcg, pages);
            self.summary.cached_bytes += pages.pages * self.page_size;
        }
        self.summary.files_cached += 1;
        self.measured.insert(id, measurement);
    }
}

/// tmpfs mounts of every mount namespace, walked once per superblock; then shmem files held
/// open or mapped by processes. Each file found goes to the measurer at once.
fn find<F: FnMut(u32) -> Option<u64>>(devs: &mut HashSet<u32>, measurer: &mut Measurer<F>) {
    let mut walked: HashSet<(u32, u32)> = HashSet::new();
    for pid in one_pid_per_mount_namespace() {
        let Ok(mounts) = read_mountinfo(Some(pid)) else {
            continue;
        };
        for mount in mounts.iter().filter(|m| m.fs_type == "tmpfs") {
            devs.insert(super::seed::kernel_dev(mount.major, mount.minor));
            if walked.insert((mount.major, mount.minor)) {
                walk_tmpfs(pid, &mount.mount_point, &mut |found| {
                    measurer.visit(devs, found);
                    !measurer.spent()
                });
            }
        }
    }
    measurer.summary.mounts = walked.len();
    let own_pid = std::process::id();
    for (pid, link) in open_file_links() {
        if pid == own_pid {
            continue;
        }
        if measurer.spent() {
            break;
        }
        let Ok(target) = fs::read_link(&link) else {
            continue;
        };
        // memfds, SysV segments and shared anonymous memory live on the kernel's internal shm
        // mount, which no mountinfo lists: known by their names, checked by statfs.
        let text = target.as_os_str().as_bytes();
        let internal = [&b"/memfd:"[..], b"/SYSV", b"/dev/zero (deleted)"]
            .iter()
            .any(|prefix| text.starts_with(prefix));
        let on_tmpfs = internal
            || fs::metadata(&link).is_ok_and(|m| {
                devs.contains(&super::seed::kernel_dev(
                    libc::major(m.dev()),
                    libc::minor(m.dev()),
                ))
            });
        if !on_tmpfs {
            continue;
        }
        let Ok(file) = open_proc_link(&link) else {
            continue;
        };
        if !is_tmpfs(&file) {
            continue;
        }
        let name = name_of_link(&target, pid);
        measurer.visit(devs, Found { file, name, pid });
    }
}

fn add_pages(
    files: &mut HashMap<CacheKey, ShmemPages>,
    hierarchy: u32,
    (dev, ino): (u32, u64),
    memcg: u64,
    pages: &ShmemPages,
) {
    let key = CacheKey {
        cgroup_id: memcg,
        ino,
        dev,
        hierarchy,
    };
    let entry = files.entry(key).or_insert(ShmemPages {
        pages: 0,
        active_pages: 0,
        provenance: pages.provenance,
    });
    entry.pages += pages.pages;
    entry.active_pages += pages.active_pages;
}

/// The name /proc gives a shmem file: memfds and SysV segments are always "deleted" (they
/// never had a name in a directory), so that is not said of them. Shared anonymous memory and
/// SysV segments are named for what they are and who holds them (`/dev/zero` and `/SYSV...`
/// would mean nothing to a reader).
fn name_of_link(target: &Path, pid: u32) -> SeenName {
    let text = target.as_os_str().as_bytes();
    let holder = || {
        let comm = fs::read(format!("/proc/{pid}/comm")).unwrap_or_default();
        let comm = String::from_utf8_lossy(comm.trim_ascii_end()).into_owned();
        format!("{comm}, pid {pid}")
    };
    let internal = if text == b"/dev/zero (deleted)" {
        Some(format!("[shared anonymous memory of {}]", holder()))
    } else if let Some(key) = text.strip_prefix(b"/SYSV") {
        let key = key.strip_suffix(b" (deleted)").unwrap_or(key);
        Some(format!(
            "[SysV shm key 0x{} of {}]",
            String::from_utf8_lossy(key),
            holder()
        ))
    } else {
        None
    };
    if let Some(name) = internal {
        return SeenName {
            path: PathBuf::from(name),
            on_host: false,
            deleted: false,
        };
    }
    let memfd = text.starts_with(b"/memfd:");
    let (path, deleted) = match text.strip_suffix(b" (deleted)") {
        Some(stripped) => (PathBuf::from(OsStr::from_bytes(stripped)), !memfd),
        None => (target.to_path_buf(), false),
    };
    SeenName {
        path,
        on_host: false,
        deleted,
    }
}

fn is_tmpfs(file: &File) -> bool {
    // SAFETY: statfs is plain integer data, valid when zeroed.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs writes into the struct we pass, which outlives the call.
    let ret = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    ret == 0 && st.f_type as i64 == TMPFS_MAGIC
}

/// The first process of each mount namespace (by the namespace's inode).
fn one_pid_per_mount_namespace() -> Vec<u32> {
    let mut namespaces = HashSet::new();
    let mut pids = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return pids;
    };
    let mut all: Vec<u32> = procs
        .flatten()
        .filter_map(|p| p.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect();
    all.sort_unstable();
    for pid in all {
        if let Ok(ns) = fs::metadata(format!("/proc/{pid}/ns/mnt")) {
            if namespaces.insert(ns.ino()) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Walks the tmpfs mounted at `mount_point` in `pid`'s mount namespace (as that process sees
/// it, through /proc/<pid>/root), staying on that filesystem; hands each regular file to
/// `visit`, and stops when it returns false.
fn walk_tmpfs(pid: u32, mount_point: &Path, visit: &mut dyn FnMut(Found) -> bool) {
    let Ok(root) = open_path(None, Path::new(&format!("/proc/{pid}/root")), 0) else {
        return;
    };
    let relative = mount_point.strip_prefix("/").unwrap_or(mount_point);
    // RESOLVE_IN_ROOT: `..` and absolute symlinks cannot leave the process's root; none is
    // followed anyway.
    let top = if relative.as_os_str().is_empty() {
        root
    } else {
        match open_path(Some(&root), relative, libc::RESOLVE_IN_ROOT) {
            Ok(top) => top,
            Err(_) => return,
        }
    };
    let Ok(top_meta) = top.metadata() else { return };
    if !top_meta.is_dir() || !is_tmpfs(&top) {
        return;
    }
    let on_host = is_own_mount_namespace(pid);
    let mut pending = vec![PathBuf::new()];
    while let Some(dir) = pending.pop() {
        let Ok(handle) = open_beneath(&top, &dir, libc::O_RDONLY | libc::O_DIRECTORY) else {
            continue;
        };
        let Ok(entries) = fs::read_dir(format!("/proc/self/fd/{}", handle.as_raw_fd())) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let child = dir.join(entry.file_name());
            if kind.is_dir() {
                pending.push(child);
            } else if kind.is_file() {
                if let Ok(file) = open_file_beneath(&top, &child) {
                    let found = Found {
                        file,
                        name: SeenName {
                            path: mount_point.join(&child),
                            // Only the host's own namespace names host paths.
                            on_host,
                            deleted: false,
                        },
                        pid,
                    };
                    if !visit(found) {
                        return;
                    }
                }
            }
        }
    }
}

fn is_own_mount_namespace(pid: u32) -> bool {
    match (
        fs::metadata(format!("/proc/{pid}/ns/mnt")),
        fs::metadata("/proc/self/ns/mnt"),
    ) {
        (Ok(theirs), Ok(ours)) => theirs.ino() == ours.ino(),
        _ => false,
    }
}

/// Opens the regular file `relative` below `top` without opening anything else: an `O_PATH`
/// handle is checked by `fstat` first, and only a regular file is then opened for reading
/// (through our own descriptor, so it is the same inode).
fn open_file_beneath(top: &File, relative: &Path) -> Result<File, OpenError> {
    let fail = |source| OpenError::Io {
        path: relative.display().to_string(),
        source,
    };
    let handle = open_beneath(top, relative, libc::O_PATH).map_err(fail)?;
    let meta = handle.metadata().map_err(fail)?;
    if !meta.is_file() {
        return Err(OpenError::NotRegular {
            path: relative.display().to_string(),
            kind: "special file",
        });
    }
    open_proc_link(Path::new(&format!("/proc/self/fd/{}", handle.as_raw_fd())))
}

/// `openat2` below `top`: no symlink, no magic link, no other filesystem, no escape.
fn open_beneath(top: &File, relative: &Path, flags: libc::c_int) -> io::Result<File> {
    let path = if relative.as_os_str().is_empty() {
        Path::new(".")
    } else {
        relative
    };
    openat2(
        Some(top),
        path,
        flags | libc::O_NOFOLLOW,
        libc::RESOLVE_BENEATH
            | libc::RESOLVE_NO_SYMLINKS
            | libc::RESOLVE_NO_MAGICLINKS
            | libc::RESOLVE_NO_XDEV,
    )
}

/// An `O_PATH` handle on `path` (from `dir`, or absolute), with `resolve` added to
/// `RESOLVE_NO_SYMLINKS`; the /proc/<pid>/root magic link itself is followed when `dir` is
/// None, which is the point of opening it.
fn open_path(dir: Option<&File>, path: &Path, resolve: u64) -> io::Result<File> {
    if dir.is_none() {
        let c_path = CString::new(path.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: a NUL-terminated path; the returned fd is owned by the File below.
        let fd = unsafe {
            libc::open(
                c_path.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        return Ok(unsafe { File::from_raw_fd(fd) });
    }
    openat2(
        dir,
        path,
        libc::O_PATH | libc::O_DIRECTORY,
        resolve | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    )
}

/// `open::openat2` with the flags every untrusted open here takes.
fn openat2(dir: Option<&File>, path: &Path, flags: libc::c_int, resolve: u64) -> io::Result<File> {
    // openat2 refuses O_PATH with any flag but O_DIRECTORY, O_NOFOLLOW and O_CLOEXEC.
    let extra = if flags & libc::O_PATH != 0 {
        libc::O_CLOEXEC
    } else {
        libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY
    };
    open::openat2(dir, path, flags | extra, resolve)
}
