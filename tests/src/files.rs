//! Test files on a disk filesystem, with the kernel's own residency figures.

use std::{
    fs::{self, File},
    io,
    os::unix::{fs::MetadataExt, io::AsRawFd},
    path::{Path, PathBuf},
};

/// Where test files go: a disk filesystem (tmpfs pages fire no add tracepoint).
const SCRATCH_ROOT: &str = "/var/tmp/memtrace-tests";

/// A file's identity as memtrace reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileId {
    /// `MAJ:MIN` of its filesystem.
    pub dev: String,
    pub ino: u64,
}

impl FileId {
    pub fn of(path: &Path) -> Self {
        let meta = fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
        let dev = meta.dev();
        FileId {
            dev: format!("{}:{}", libc::major(dev), libc::minor(dev)),
            ino: meta.ino(),
        }
    }
}

/// A directory for one test, removed when dropped.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir = Path::new(SCRATCH_ROOT).join(format!("{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        assert_not_tmpfs(&dir);
        Self { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn assert_not_tmpfs(dir: &Path) {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: statfs is plain integer data, valid when zeroed.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs reads a NUL-terminated path and writes into the struct we pass.
    let ret = unsafe { libc::statfs(path.as_ptr(), &mut st) };
    assert_eq!(ret, 0, "statfs {}", dir.display());
    assert_ne!(
        st.f_type,
        libc::TMPFS_MAGIC,
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

/// Bytes of `path` in the page cache, as cachestat(2) counts them (the kernel's own figure).
pub fn cachestat_bytes(path: &Path) -> u64 {
    let file = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    memtrace::collector::residency::cachestat(&file)
        .expect("cachestat (Linux 6.5+)")
        .cached
        * memtrace::collector::page_size()
}
