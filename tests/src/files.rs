//! Test files on a disk filesystem, with the kernel's own residency figures.

use std::{
    fs::{self, File},
    io,
    os::unix::{fs::MetadataExt, io::AsRawFd},
    path::{Path, PathBuf},
};

/// Where test files go: a disk filesystem (tmpfs pages fire no add tracepoint). The VM runs
/// the attribution suite once per filesystem by pointing `MEMTRACE_SCRATCH_ROOT` at each disk.
const SCRATCH_ROOT: &str = "/var/tmp/memtrace-tests";

fn scratch_root() -> PathBuf {
    std::env::var_os("MEMTRACE_SCRATCH_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(SCRATCH_ROOT))
}

/// A file's identity as memtrace reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileId {
    /// `MAJ:MIN` of its filesystem.
    pub dev: String,
    pub ino: u64,
}

impl FileId {
    /// The identity the kernel's page cache uses: the inode number and its superblock's device.
    /// That device is the mount's `MAJ:MIN` in mountinfo, which is not always stat's `st_dev`:
    /// btrfs reports each subvolume's own anonymous device to stat.
    pub fn of(path: &Path) -> Self {
        let meta = fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
        FileId {
            dev: superblock_dev(path),
            ino: meta.ino(),
        }
    }
}

/// `MAJ:MIN` of the superblock `path` is on, from the mount id statx gives and mountinfo.
pub fn superblock_dev(path: &Path) -> String {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: statx is plain integer data, valid when zeroed.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: statx reads a NUL-terminated path and writes into the struct we pass.
    let ret = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            0,
            libc::STATX_INO | libc::STATX_MNT_ID,
            &mut stx,
        )
    };
    assert_eq!(ret, 0, "statx {}", path.display());
    assert!(
        stx.stx_mask & libc::STATX_MNT_ID != 0,
        "statx gave no mount id for {}",
        path.display()
    );
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    mountinfo
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let id: u64 = fields.next()?.parse().ok()?;
            let dev = fields.nth(1)?;
            (id == stx.stx_mnt_id).then(|| dev.to_owned())
        })
        .unwrap_or_else(|| {
            panic!(
                "mount {} of {} not in mountinfo",
                stx.stx_mnt_id,
                path.display()
            )
        })
}

/// The filesystem type of `path` (statfs magic), named for messages.
pub fn filesystem_of(path: &Path) -> &'static str {
    match statfs_magic(path) {
        0xEF53 => "ext4",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x0102_1994 => "tmpfs",
        0x794C_7630 => "overlayfs",
        _ => "other",
    }
}

fn statfs_magic(dir: &Path) -> i64 {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: statfs is plain integer data, valid when zeroed.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs reads a NUL-terminated path and writes into the struct we pass.
    let ret = unsafe { libc::statfs(path.as_ptr(), &mut st) };
    assert_eq!(ret, 0, "statfs {}", dir.display());
    st.f_type as i64
}

/// A directory for one test, removed when dropped.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir = scratch_root().join(format!("{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        assert_not_tmpfs(&dir);
        Self { dir }
    }

    /// A scratch directory for a test that writes `bytes` to disk, failing loudly at once when
    /// its filesystem has not that much free (with a margin): a write failing half-way would
    /// fail the test for a reason its message does not say.
    pub fn with_room(name: &str, bytes: u64) -> Self {
        let scratch = Self::new(name);
        let needed = bytes + bytes / 16;
        let free = free_bytes(&scratch.dir);
        assert!(
            free >= needed,
            "{} has {:.1} GiB free; this test writes {:.1} GiB there and needs {:.1} GiB: free disk space (or MEMTRACE_SCRATCH_ROOT names another scratch root)",
            scratch.dir.display(),
            free as f64 / (1u64 << 30) as f64,
            bytes as f64 / (1u64 << 30) as f64,
            needed as f64 / (1u64 << 30) as f64,
        );
        scratch
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Bytes an unprivileged writer could still write under `dir` (root may write a little more).
pub fn free_bytes(dir: &Path) -> u64 {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: statvfs is plain integer data, valid when zeroed.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs reads a NUL-terminated path and writes into the struct we pass.
    let ret = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
    assert_eq!(ret, 0, "statvfs {}", dir.display());
    st.f_bavail * st.f_frsize
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn assert_not_tmpfs(dir: &Path) {
    assert_ne!(
        filesystem_of(dir),
        "tmpfs",
        "{} is on tmpfs, whose pages bypass the page-cache tracepoints; tests need a disk filesystem",
        dir.display()
    );
}

/// `dd` writing `mib` MiB of zeros to `path` (buffered, like a logger).
pub fn dd_write(path: &Path, mib: u64) -> std::process::Command {
    let mut cmd = std::process::Command::new("dd");
    cmd.arg("if=/dev/zero")
        .arg(format!("of={}", path.display()))
        .args(["bs=1M", &format!("count={mib}"), "status=none"]);
    cmd
}

/// `dd` reading `path` to /dev/null.
pub fn dd_read(path: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new("dd");
    cmd.arg(format!("if={}", path.display()))
        .args(["of=/dev/null", "bs=1M", "status=none"]);
    cmd
}

/// Writes `mib` MiB to `path` from this process, flushes it to disk and evicts its pages, so a
/// later reader finds it uncached.
pub fn make_uncached_file(path: &Path, mib: u64) {
    let data = vec![0x5au8; (mib << 20) as usize];
    fs::write(path, &data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    let file = File::open(path).expect("open");
    file.sync_all().expect("fsync");
    drop_cache(&file).expect("fadvise");
    assert_eq!(
        resident_bytes(&file).expect("mincore"),
        0,
        "{} still cached after DONTNEED",
        path.display()
    );
}

/// Drops a file's clean pages from the page cache.
pub fn drop_cache(file: &File) -> io::Result<()> {
    // SAFETY: plain syscall on an fd we own.
    let ret = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(ret))
    }
}

/// Resident bytes of a file, by mincore(2) over a read-only mapping: the kernel's own answer.
pub fn resident_bytes(file: &File) -> io::Result<u64> {
    let len = file.metadata()?.len() as usize;
    if len == 0 {
        return Ok(0);
    }
    // SAFETY: a fresh read-only shared mapping of our file, unmapped before returning; mincore
    // writes one byte per page into a vector of exactly that size.
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let page = libc::sysconf(libc::_SC_PAGESIZE) as usize;
        let pages = len.div_ceil(page);
        let mut vec = vec![0u8; pages];
        let ret = libc::mincore(addr, len, vec.as_mut_ptr());
        let err = io::Error::last_os_error();
        libc::munmap(addr, len);
        if ret != 0 {
            return Err(err);
        }
        Ok(vec.iter().filter(|&&b| b & 1 != 0).count() as u64 * page as u64)
    }
}

/// A file's cached bytes by cachestat(2), the kernel's own count (Linux 6.5+).
pub fn cachestat_bytes(path: &Path) -> u64 {
    let (cache, _) = cachestat(path)
        .unwrap_or_else(|err| panic!("cachestat(2) on {} (Linux 6.5+): {err}", path.display()));
    cache
}

/// A file's dirty bytes by cachestat(2); `None` before Linux 6.5, which has no cachestat.
pub fn cachestat_dirty_bytes(path: &Path) -> Option<u64> {
    match cachestat(path) {
        Ok((_, dirty)) => Some(dirty),
        Err(err) if err.raw_os_error() == Some(libc::ENOSYS) => None,
        Err(err) => panic!("cachestat(2) on {}: {err}", path.display()),
    }
}

/// cachestat(2) over the whole file: (cached, dirty) bytes, by a raw system call (the oracle
/// must not be memtrace's own wrapper).
fn cachestat(path: &Path) -> io::Result<(u64, u64)> {
    /// `struct cachestat_range` and `struct cachestat` of the kernel's uapi.
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        cache: u64,
        dirty: u64,
        writeback: u64,
        evicted: u64,
        recently_evicted: u64,
    }
    const SYS_CACHESTAT: libc::c_long = 451;
    let file = File::open(path)?;
    // Length 0: to the end of the file.
    let range = Range { off: 0, len: 0 };
    let mut stat = Stat::default();
    // SAFETY: cachestat reads `range` and writes `stat`, both ours and alive for the call.
    let ret = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const Range,
            &mut stat as *mut Stat,
            0,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sysconf has no memory effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    Ok((stat.cache * page, stat.dirty * page))
}

/// How a file's resident pages sit in folios, from the kernel's own page flags
/// (/proc/self/pagemap, then /proc/kpageflags): independent of memtrace.
#[derive(Debug, Default, Clone, Copy)]
pub struct FolioCensus {
    /// Resident pages found mapped.
    pub pages: u64,
    /// Folios of more than one page (compound heads).
    pub large_folios: u64,
    /// Pages inside those large folios.
    pub pages_in_large_folios: u64,
    /// Pages of the largest folio seen (1 when every folio is a single page).
    pub largest_folio_pages: u64,
}

impl FolioCensus {
    /// Bytes of the largest folio seen: what "within one folio" means for this file.
    pub fn largest_folio_bytes(&self) -> u64 {
        self.largest_folio_pages.max(1) * 4096
    }
}

/// "Within one folio" for the file at `path`: its largest resident folio now (kpageflags), at
/// least a page. A file in small folios is compared to the page.
pub fn one_folio_of(path: &Path) -> u64 {
    let file = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    folio_census(&file)
        .unwrap_or_else(|e| panic!("folio census of {}: {e}", path.display()))
        .largest_folio_bytes()
}

/// Counts the large folios holding `file`'s resident pages. It maps the file and reads one byte
/// of each resident page (already cached, so nothing is read in), then looks up each page's
/// frame and its flags. Needs root (frame numbers are hidden otherwise).
pub fn folio_census(file: &File) -> io::Result<FolioCensus> {
    use std::os::unix::fs::FileExt;
    const PRESENT: u64 = 1 << 63;
    const PFN_MASK: u64 = (1 << 55) - 1;
    const KPF_COMPOUND_HEAD: u64 = 1 << 15;
    const KPF_COMPOUND_TAIL: u64 = 1 << 16;
    let len = file.metadata()?.len() as usize;
    let mut census = FolioCensus::default();
    if len == 0 {
        return Ok(census);
    }
    let page = 4096usize;
    let pagemap = File::open("/proc/self/pagemap")?;
    let kpageflags = File::open("/proc/kpageflags")?;
    // SAFETY: a fresh read-only shared mapping of our file, unmapped before returning; mincore
    // writes one byte per page into a vector of exactly that size, and only pages it reports
    // resident are read, within the mapping.
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let pages = len.div_ceil(page);
        let mut resident = vec![0u8; pages];
        let mut result = Ok(());
        // Pages of the folio being walked so far (a head starts one, its tails follow).
        let mut run = 0u64;
        if libc::mincore(addr, len, resident.as_mut_ptr()) != 0 {
            result = Err(io::Error::last_os_error());
        }
        for (index, _) in resident.iter().enumerate().filter(|(_, r)| *r & 1 != 0) {
            if result.is_err() {
                break;
            }
            let at = (addr as usize) + index * page;
            std::ptr::read_volatile(at as *const u8);
            let mut entry = [0u8; 8];
            if let Err(e) = pagemap.read_exact_at(&mut entry, (at / page * 8) as u64) {
                result = Err(e);
                break;
            }
            let entry = u64::from_ne_bytes(entry);
            if entry & PRESENT == 0 {
                continue;
            }
            let pfn = entry & PFN_MASK;
            if pfn == 0 {
                result = Err(io::Error::other("pagemap hides frame numbers: run as root"));
                break;
            }
            let mut flags = [0u8; 8];
            if let Err(e) = kpageflags.read_exact_at(&mut flags, pfn * 8) {
                result = Err(e);
                break;
            }
            let flags = u64::from_ne_bytes(flags);
            census.pages += 1;
            if flags & KPF_COMPOUND_HEAD != 0 {
                census.large_folios += 1;
                run = 1;
            } else if flags & KPF_COMPOUND_TAIL != 0 {
                run += 1;
            } else {
                run = 1;
            }
            census.largest_folio_pages = census.largest_folio_pages.max(run);
            if flags & (KPF_COMPOUND_HEAD | KPF_COMPOUND_TAIL) != 0 {
                census.pages_in_large_folios += 1;
            }
        }
        libc::munmap(addr, len);
        result.map(|()| census)
    }
}

/// Resident bytes of a file as util-linux `fincore` says (an oracle independent of memtrace).
pub fn fincore_bytes(path: &Path) -> u64 {
    let out = std::process::Command::new("fincore")
        .args(["-b", "-n", "-o", "RES"])
        .arg(path)
        .output()
        .expect("fincore (util-linux)");
    assert!(out.status.success(), "fincore {}: {out:?}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("fincore {}: {out:?}", path.display()))
}
