//! Asking the kernel which pages of a file are resident, and which memcg each is charged to.
//!
//! - `cachestat(2)` (Linux 6.5+): resident, dirty and writeback page counts of a file, cheap.
//! - `mincore(2)` over a mapping: residency per page, where cachestat is missing or the file is
//!   an overlay file (whose own mapping is empty: its pages belong to the layer's file).
//! - Exact memcg per page: map the file, touch only pages mincore says are resident (so nothing
//!   is read in), look up their PFNs in `/proc/self/pagemap`, then each PFN's memcg in
//!   `/proc/kpagecgroup`. Side effect: the touched pages get the accessed bit in memtrace's own
//!   page table for the moment they are mapped, which reclaim may count as one reference. Each
//!   chunk is unmapped right after it is read.

use std::{
    collections::HashMap,
    fs::File,
    io,
    os::unix::{fs::FileExt, io::AsRawFd},
};

/// cachestat(2) figures, in pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStat {
    pub cached: u64,
    pub dirty: u64,
    pub writeback: u64,
    pub evicted: u64,
    pub recently_evicted: u64,
}

/// cachestat's number in the unified syscall table, the same on every architecture but alpha
/// (libc does not export it for x86-64 glibc yet).
const SYS_CACHESTAT: libc::c_long = 451;

#[repr(C)]
struct CachestatRange {
    off: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct RawCachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// cachestat(2) over the whole file; `Unsupported` before Linux 6.5.
pub fn cachestat(file: &File) -> io::Result<CacheStat> {
    let range = CachestatRange { off: 0, len: 0 }; // len 0: to the end of the file
    let mut raw = RawCachestat::default();
    // SAFETY: the kernel reads `range` and writes `raw`, both live for the call.
    let ret = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const CachestatRange,
            &mut raw as *mut RawCachestat,
            0u32,
        )
    };
    if ret != 0 {
        let err = io::Error::last_os_error();
        return Err(if err.raw_os_error() == Some(libc::ENOSYS) {
            io::Error::new(io::ErrorKind::Unsupported, "cachestat(2) needs Linux 6.5+")
        } else {
            err
        });
    }
    Ok(CacheStat {
        cached: raw.nr_cache,
        dirty: raw.nr_dirty,
        writeback: raw.nr_writeback,
        evicted: raw.nr_evicted,
        recently_evicted: raw.nr_recently_evicted,
    })
}

/// A read-only shared mapping of a whole file, unmapped on drop.
struct Mapping {
    addr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(file: &File, len: usize) -> io::Result<Self> {
        // SAFETY: a fresh mapping of a file we hold open; nothing else aliases it.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { addr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

/// Bits of /proc/kpageflags (include/uapi/linux/kernel-page-flags.h).
const KPF_DIRTY: u64 = 4;
const KPF_ACTIVE: u64 = 6;
const KPF_WRITEBACK: u64 = 8;

/// Pages per chunk: mapped, read and released together.
const CHUNK_PAGES: usize = 512;

/// Who owns a file's resident pages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageOwners {
    /// Resident pages per memcg inode (cgroup id), from /proc/kpagecgroup.
    pub by_cgroup: HashMap<u64, u64>,
    /// Resident pages (mincore).
    pub resident: u64,
    /// Resident pages whose memcg could not be read (no kpagecgroup, or evicted mid-scan).
    pub unowned: u64,
    /// Resident pages on the active LRU list (they count toward kubelet's working set), from
    /// /proc/kpageflags.
    pub active: u64,
    /// Resident pages marked dirty, and under writeback, from /proc/kpageflags.
    pub dirty: u64,
    pub writeback: u64,
    /// The file's real identity, from the mapping: (major, minor, inode). For an overlay file
    /// this is the layer's file, whose pages these are.
    pub identity: Option<(u32, u32, u64)>,
}

/// Reads per-page memcg ownership: needs root (PFNs are hidden from others).
pub struct PageOwnerReader {
    pagemap: File,
    kpagecgroup: Option<File>,
    kpageflags: Option<File>,
    page_size: usize,
}

impl PageOwnerReader {
    pub fn open() -> io::Result<Self> {
        let pagemap = File::open("/proc/self/pagemap")?;
        // Without CONFIG_PROC_PAGE_MONITOR or root there is no kpagecgroup: residency still
        // works, ownership is then inferred by the caller.
        let kpagecgroup = File::open("/proc/kpagecgroup").ok();
        let kpageflags = File::open("/proc/kpageflags").ok();
        // SAFETY: sysconf has no memory effects.
        let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        Ok(Self {
            pagemap,
            kpagecgroup,
            kpageflags,
            page_size,
        })
    }

    /// Whether exact ownership is available.
    pub fn exact(&self) -> bool {
        self.kpagecgroup.is_some()
    }

    /// Whether per-page flags (active, dirty, writeback) are readable.
    pub fn has_page_flags(&self) -> bool {
        self.kpageflags.is_some()
    }

    /// Residency and ownership of every page of `file`.
    pub fn owners(&self, file: &File) -> io::Result<PageOwners> {
        let len = usize::try_from(file.metadata()?.len()).unwrap_or(usize::MAX);
        let mut owners = PageOwners::default();
        if len == 0 {
            return Ok(owners);
        }
        let mapping = Mapping::new(file, len)?;
        owners.identity = mapped_identity(mapping.addr as usize);
        let pages = len.div_ceil(self.page_size);
        let mut residency = vec![0u8; CHUNK_PAGES];
        let mut frames = vec![0u8; CHUNK_PAGES * 8];
        for first in (0..pages).step_by(CHUNK_PAGES) {
            let count = CHUNK_PAGES.min(pages - first);
            let start = mapping.addr as usize + first * self.page_size;
            let bytes = (count * self.page_size).min(len - first * self.page_size);
            // SAFETY: [start, start+bytes) lies inside our mapping; mincore writes `count` bytes.
            let ret =
                unsafe { libc::mincore(start as *mut libc::c_void, bytes, residency.as_mut_ptr()) };
            if ret != 0 {
                return Err(io::Error::last_os_error());
            }
            let resident: Vec<usize> = (0..count).filter(|&i| residency[i] & 1 != 0).collect();
            owners.resident += resident.len() as u64;
            if resident.is_empty() {
                continue;
            }
            let Some(kpagecgroup) = &self.kpagecgroup else {
                owners.unowned += resident.len() as u64;
                continue;
            };
            for &i in &resident {
                // Map the resident page into our page table so pagemap can name its frame.
                // SAFETY: inside our read-only mapping; the page is resident, so no I/O.
                unsafe { std::ptr::read_volatile((start + i * self.page_size) as *const u8) };
            }
            self.pagemap.read_exact_at(
                &mut frames[..count * 8],
                (start / self.page_size * 8) as u64,
            )?;
            for &i in &resident {
                let entry =
                    u64::from_ne_bytes(frames[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
                let present = entry >> 63 & 1 == 1;
                let pfn = entry & ((1u64 << 55) - 1);
                let mut memcg = [0u8; 8];
                if present && pfn != 0 && kpagecgroup.read_exact_at(&mut memcg, pfn * 8).is_ok() {
                    *owners
                        .by_cgroup
                        .entry(u64::from_ne_bytes(memcg))
                        .or_default() += 1;
                    let mut flags = [0u8; 8];
                    if let Some(kpageflags) = &self.kpageflags {
                        if kpageflags.read_exact_at(&mut flags, pfn * 8).is_ok() {
                            let flags = u64::from_ne_bytes(flags);
                            owners.active += flags >> KPF_ACTIVE & 1;
                            owners.dirty += flags >> KPF_DIRTY & 1;
                            owners.writeback += flags >> KPF_WRITEBACK & 1;
                        }
                    }
                } else {
                    owners.unowned += 1;
                }
            }
            // Drop our page-table entries for the chunk (the page cache itself is untouched).
            // SAFETY: a range of our own mapping.
            unsafe { libc::madvise(start as *mut libc::c_void, bytes, libc::MADV_DONTNEED) };
        }
        Ok(owners)
    }
}

/// (major, minor, inode) of the file mapped at `addr`, from /proc/self/maps.
fn mapped_identity(addr: usize) -> Option<(u32, u32, u64)> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let wanted = format!("{addr:x}-");
    let line = maps.lines().find(|l| l.starts_with(&wanted))?;
    let mut fields = line.split_whitespace().skip(3);
    let (major, minor) = fields.next()?.split_once(':')?;
    let ino = fields.next()?.parse().ok()?;
    Some((
        u32::from_str_radix(major, 16).ok()?,
        u32::from_str_radix(minor, 16).ok()?,
        ino,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{io::Write, os::unix::fs::MetadataExt};

    #[test]
    fn mapping_names_the_real_file() {
        let path = std::env::temp_dir().join(format!("memtrace-residency-{}", std::process::id()));
        let mut file = File::create(&path).unwrap();
        file.write_all(&vec![1u8; 64 * 1024]).unwrap();
        file.sync_all().unwrap();
        let file = File::open(&path).unwrap();
        let meta = file.metadata().unwrap();
        let mapping = Mapping::new(&file, 64 * 1024).unwrap();
        let identity = mapped_identity(mapping.addr as usize).unwrap();
        assert_eq!(
            identity,
            (libc::major(meta.dev()), libc::minor(meta.dev()), meta.ino())
        );
        drop(mapping);
        std::fs::remove_file(path).unwrap();
    }
}
