//! Asking the kernel which pages of a file are resident, and which memcg each is charged to.
//!
//! - `cachestat(2)` (Linux 6.5+): resident, dirty and writeback page counts of a file, cheap.
//! - `mincore(2)` over a mapping: residency per page, where cachestat is missing or the file is
//!   an overlay file (whose own mapping is empty: its pages belong to the layer's file).
//! - Exact memcg per page: map the file a chunk at a time, touch only pages mincore says are
//!   resident, look up their PFNs in `/proc/self/pagemap`, then each PFN's memcg in
//!   `/proc/kpagecgroup` and its flags in `/proc/kpageflags`.
//!
//! Reading must not change what it reads. A page touched through a mapping gets a young PTE;
//! tearing the mapping down would then mark the page accessed, and a second pass would promote
//! it to the active list (raising kubelet's working set). So each chunk is mapped with
//! `MADV_RANDOM` (a fault does no readahead, on 6.1 as on 6.18) and switched to
//! `MADV_SEQUENTIAL` right after the touch: the unmap skips `mark_page_accessed` for
//! `VM_SEQ_READ` mappings on every kernel (6.3+ also for `VM_RAND_READ`, `vma_has_recency`),
//! and MGLRU's walkers skip such mappings too. This is what the kernel's own
//! `tools/mm/page-types -f` does.
//!
//! A page can also vanish between mincore and the touch. Truncated away (a container rotating
//! its log), a touch through memory would kill memtrace with SIGBUS: the touch is a 1-byte
//! `write` from the mapping into a pipe instead, so the kernel does the access and the page
//! beyond the end is an `EFAULT`, not counted. Evicted but still within the file, the touch
//! reads it back in (no readahead: `MADV_RANDOM`), charged to memtrace's own cgroup: a window
//! of microseconds between mincore and the touch, the one disturbance left.

use std::{
    collections::HashMap,
    fs::File,
    io::{self, Read},
    os::unix::{
        fs::FileExt,
        io::{AsRawFd, FromRawFd},
    },
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
    // len 0: to the end of the file.
    cachestat_range(file, 0, 0)
}

/// Resident pages of `file`, without touching any: cachestat(2), or before Linux 6.5 mincore(2)
/// over mappings that are never read.
pub fn resident_pages(file: &File, page_size: usize) -> io::Result<u64> {
    if let Ok(stat) = cachestat(file) {
        return Ok(stat.cached);
    }
    let len = file.metadata()?.len();
    let chunk_bytes = (CHUNK_PAGES * page_size) as u64;
    let mut residency = vec![0u8; CHUNK_PAGES];
    let mut resident = 0;
    for offset in (0..len).step_by(chunk_bytes as usize) {
        let bytes = usize::try_from(chunk_bytes.min(len - offset)).unwrap_or(0);
        let mapping = Mapping::new(file, offset, bytes)?;
        // SAFETY: exactly our mapping; mincore writes one byte per page of it.
        let ret = unsafe { libc::mincore(mapping.addr, bytes, residency.as_mut_ptr()) };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
        resident += residency[..bytes.div_ceil(page_size)]
            .iter()
            .filter(|&&r| r & 1 != 0)
            .count() as u64;
    }
    Ok(resident)
}

/// cachestat(2) over `len` bytes from `off`.
fn cachestat_range(file: &File, off: u64, len: u64) -> io::Result<CacheStat> {
    let range = CachestatRange { off, len };
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

/// A read-only shared mapping of part of a file, unmapped on drop.
struct Mapping {
    addr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(file: &File, offset: u64, len: usize) -> io::Result<Self> {
        let offset = libc::off_t::try_from(offset)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: a fresh mapping of a file we hold open; nothing else aliases it.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { addr, len })
    }

    /// Sets the mapping's access pattern (`MADV_RANDOM`, `MADV_SEQUENTIAL`): flags on the
    /// mapping only, no page is touched.
    fn advise(&self, advice: libc::c_int) -> io::Result<()> {
        // SAFETY: exactly our own mapping.
        if unsafe { libc::madvise(self.addr, self.len, advice) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

/// A pipe the kernel copies single bytes into from our mappings: a page that is gone makes the
/// write fail with EFAULT, where a load would raise SIGBUS.
struct TouchPipe {
    read: File,
    write: File,
    pending: usize,
}

impl TouchPipe {
    fn new() -> io::Result<Self> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two fds into the array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh fds we own.
        let (read, write) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        Ok(Self {
            read,
            write,
            pending: 0,
        })
    }

    /// Makes the kernel read one byte at `addr`; false when the page is gone.
    fn touch(&mut self, addr: usize) -> bool {
        loop {
            // SAFETY: the kernel reads one byte at `addr` with fault handling (copy_from_user):
            // an unmapped or truncated page is an EFAULT, not a signal.
            let ret = unsafe { libc::write(self.write.as_raw_fd(), addr as *const _, 1) };
            if ret == 1 {
                self.pending += 1;
                if self.pending >= 32 * 1024 {
                    self.drain();
                }
                return true;
            }
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EAGAIN) => self.drain(),
                Some(libc::EINTR) => {}
                _ => return false,
            }
        }
    }

    fn drain(&mut self) {
        let mut buf = [0u8; 8192];
        while (&self.read).read(&mut buf).is_ok_and(|n| n > 0) {}
        self.pending = 0;
    }
}

/// Bits of /proc/kpageflags (include/uapi/linux/kernel-page-flags.h).
const KPF_DIRTY: u64 = 4;
const KPF_ACTIVE: u64 = 6;
const KPF_WRITEBACK: u64 = 8;
const KPF_COMPOUND_HEAD: u64 = 15;
const KPF_COMPOUND_TAIL: u64 = 16;

/// Farthest a tail page can sit from its head: a 1 GiB hugetlb folio of 4 KiB pages.
const MAX_FOLIO_PAGES: u64 = 1 << 18;

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
    /// Pages mincore listed that were gone before their frame could be read (truncated or
    /// evicted meanwhile): not counted as resident.
    pub vanished: u64,
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

    /// Whether exact ownership is available: kpagecgroup is readable and pagemap shows page
    /// frame numbers (only to CAP_SYS_ADMIN).
    pub fn exact(&self) -> bool {
        self.kpagecgroup.is_some() && crate::loader::preflight::holds_named("CAP_SYS_ADMIN")
    }

    /// Whether the kernel tells this process the truth about `file`'s residency: mincore(2)
    /// and cachestat(2) report a file's real page cache only to its owner, a process that may
    /// write it, or CAP_FOWNER; to others every page looks resident.
    pub fn residency_is_honest(file: &File) -> bool {
        use std::os::unix::fs::MetadataExt;
        if crate::loader::preflight::holds_named("CAP_FOWNER") {
            return true;
        }
        // SAFETY: geteuid has no memory effects.
        let euid = unsafe { libc::geteuid() };
        file.metadata().is_ok_and(|m| m.uid() == euid)
    }

    /// Whether per-page flags (active, dirty, writeback) are readable.
    pub fn has_page_flags(&self) -> bool {
        self.kpageflags.is_some()
    }

    /// Residency and ownership of every page of `file`, leaving each page as it was.
    pub fn owners(&self, file: &File) -> io::Result<PageOwners> {
        let len = file.metadata()?.len();
        let mut owners = PageOwners::default();
        if len == 0 {
            return Ok(owners);
        }
        let mut touch = TouchPipe::new()?;
        let chunk_bytes = (CHUNK_PAGES * self.page_size) as u64;
        let mut residency = vec![0u8; CHUNK_PAGES];
        let mut frames = vec![0u8; CHUNK_PAGES * 8];
        let mut folios = FolioHeads::new(self.kpageflags.as_ref());
        for offset in cached_chunks(file, len, chunk_bytes) {
            let bytes = usize::try_from(chunk_bytes.min(len - offset)).unwrap_or(0);
            let count = bytes.div_ceil(self.page_size);
            let mapping = Mapping::new(file, offset, bytes)?;
            mapping.advise(libc::MADV_RANDOM)?;
            if owners.identity.is_none() {
                owners.identity = mapped_identity(mapping.addr as usize);
            }
            let start = mapping.addr as usize;
            // SAFETY: [start, start+bytes) is our mapping; mincore writes `count` bytes.
            let ret =
                unsafe { libc::mincore(start as *mut libc::c_void, bytes, residency.as_mut_ptr()) };
            if ret != 0 {
                return Err(io::Error::last_os_error());
            }
            let mut resident: Vec<usize> = (0..count).filter(|&i| residency[i] & 1 != 0).collect();
            let Some(kpagecgroup) = &self.kpagecgroup else {
                owners.resident += resident.len() as u64;
                owners.unowned += resident.len() as u64;
                continue;
            };
            if resident.is_empty() {
                continue;
            }
            // Puts each resident page in our page table so pagemap can name its frame; a page
            // that is gone by now (truncated, evicted) is not counted at all.
            let listed = resident.len();
            resident.retain(|&i| touch.touch(start + i * self.page_size));
            owners.vanished += (listed - resident.len()) as u64;
            owners.resident += resident.len() as u64;
            // Before anything else: the unmap must see VM_SEQ_READ to leave the pages unaged.
            mapping.advise(libc::MADV_SEQUENTIAL)?;
            self.pagemap.read_exact_at(
                &mut frames[..count * 8],
                (start / self.page_size * 8) as u64,
            )?;
            for &i in &resident {
                let entry =
                    u64::from_ne_bytes(frames[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
                let present = entry >> 63 & 1 == 1;
                let pfn = entry & ((1u64 << 55) - 1);
                let frame = (present && pfn != 0)
                    .then(|| folios.owner(kpagecgroup, pfn))
                    .flatten();
                let Some(FolioOwner { memcg, flags, .. }) = frame else {
                    owners.unowned += 1;
                    continue;
                };
                *owners.by_cgroup.entry(memcg).or_default() += 1;
                if let Some(flags) = flags {
                    owners.active += flags >> KPF_ACTIVE & 1;
                    owners.dirty += flags >> KPF_DIRTY & 1;
                    owners.writeback += flags >> KPF_WRITEBACK & 1;
                }
            }
        }
        Ok(owners)
    }
}

/// A page frame's memcg (cgroup inode) and kpageflags, as its folio's head page holds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FolioOwner {
    /// The last frame resolved to this head: the next frame up is in the same folio when it is
    /// a tail page.
    last_pfn: u64,
    memcg: u64,
    flags: Option<u64>,
}

/// Reads a page's owner from the head of its folio.
///
/// `/proc/kpagecgroup` and `/proc/kpageflags` read the page they are asked about, and before
/// the kernel read them through the folio, a tail page of a large folio reads as charged to no
/// memcg and off the LRU lists: on 6.1, most of a file XFS read in 1 MiB folios would look
/// uncharged. A tail frame is part of the compound page that holds the frame just below it, so
/// consecutive frames share one lookup; only a folio's first frame seen costs a search down for
/// its head.
struct FolioHeads<'a> {
    kpageflags: Option<&'a File>,
    current: Option<FolioOwner>,
}

impl<'a> FolioHeads<'a> {
    fn new(kpageflags: Option<&'a File>) -> Self {
        Self {
            kpageflags,
            current: None,
        }
    }

    /// The owner of frame `pfn`; `None` when its memcg cannot be read (or its folio's head
    /// cannot be found: split or freed meanwhile).
    fn owner(&mut self, kpagecgroup: &File, pfn: u64) -> Option<FolioOwner> {
        let Some(kpageflags) = self.kpageflags else {
            // No flags: no telling a tail from a head; the page's own answer is all there is.
            return Some(FolioOwner {
                last_pfn: pfn,
                memcg: read_u64_at(kpagecgroup, pfn)?,
                flags: None,
            });
        };
        let flags = read_u64_at(kpageflags, pfn)?;
        if flags >> KPF_COMPOUND_TAIL & 1 == 0 {
            let owner = FolioOwner {
                last_pfn: pfn,
                memcg: read_u64_at(kpagecgroup, pfn)?,
                flags: Some(flags),
            };
            self.current = (flags >> KPF_COMPOUND_HEAD & 1 == 1).then_some(owner);
            return Some(owner);
        }
        let owner = match self.current {
            Some(current) if current.last_pfn + 1 == pfn => current,
            _ => {
                let head = find_head(kpageflags, pfn)?;
                FolioOwner {
                    last_pfn: pfn,
                    memcg: read_u64_at(kpagecgroup, head)?,
                    flags: Some(read_u64_at(kpageflags, head)?),
                }
            }
        };
        self.current = Some(FolioOwner {
            last_pfn: pfn,
            ..owner
        });
        Some(owner)
    }
}

/// The head frame of the compound page that holds tail frame `tail`: the nearest frame below
/// it marked head, with only tail frames between. Read a block of flags at a time.
fn find_head(kpageflags: &File, tail: u64) -> Option<u64> {
    const BLOCK: u64 = 512;
    let mut buf = vec![0u8; BLOCK as usize * 8];
    let lowest = tail.saturating_sub(MAX_FOLIO_PAGES);
    let mut end = tail;
    while end > lowest {
        let start = end.saturating_sub(BLOCK).max(lowest);
        let bytes = &mut buf[..((end - start) * 8) as usize];
        kpageflags.read_exact_at(bytes, start * 8).ok()?;
        for (i, word) in bytes.chunks_exact(8).enumerate().rev() {
            let flags = u64::from_ne_bytes(word.try_into().expect("8 bytes"));
            if flags >> KPF_COMPOUND_HEAD & 1 == 1 {
                return Some(start + i as u64);
            }
            if flags >> KPF_COMPOUND_TAIL & 1 == 0 {
                return None;
            }
        }
        end = start;
    }
    None
}

/// The u64 at index `index` of a /proc/kpage* file.
fn read_u64_at(file: &File, index: u64) -> Option<u64> {
    let mut word = [0u8; 8];
    file.read_exact_at(&mut word, index * 8).ok()?;
    Some(u64::from_ne_bytes(word))
}

/// Offsets of the chunks of `file` that hold any cache. With cachestat(2), empty halves are
/// skipped by bisection, so a huge sparse file with one cached page costs a few dozen calls;
/// without it (before Linux 6.5) every chunk is looked at.
fn cached_chunks(file: &File, len: u64, chunk: u64) -> Vec<u64> {
    let whole = len.div_ceil(chunk) * chunk;
    if cachestat_range(file, 0, whole).is_err() {
        return (0..len).step_by(chunk as usize).collect();
    }
    let mut found = Vec::new();
    let mut pending = vec![(0u64, whole)];
    while let Some((offset, size)) = pending.pop() {
        match cachestat_range(file, offset, size) {
            Ok(stat) if stat.cached == 0 => {}
            _ if size <= chunk => {
                if offset < len {
                    found.push(offset);
                }
            }
            _ => {
                // Halves on chunk boundaries; the later half first, so offsets come out sorted.
                let half = (size / chunk).div_ceil(2) * chunk;
                pending.push((offset + half, size - half));
                pending.push((offset, half));
            }
        }
    }
    found
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
        let mapping = Mapping::new(&file, 0, 64 * 1024).unwrap();
        let identity = mapped_identity(mapping.addr as usize).unwrap();
        assert_eq!(
            identity,
            (libc::major(meta.dev()), libc::minor(meta.dev()), meta.ino())
        );
        drop(mapping);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_page_truncated_away_under_the_touch_is_a_failed_touch_not_a_signal() {
        let path = std::env::temp_dir().join(format!("memtrace-touch-{}", std::process::id()));
        let mut file = File::create(&path).unwrap();
        file.write_all(&vec![7u8; 16 * 4096]).unwrap();
        let reader = File::open(&path).unwrap();
        let mapping = Mapping::new(&reader, 0, 16 * 4096).unwrap();
        let mut pipe = TouchPipe::new().unwrap();
        let last_page = mapping.addr as usize + 15 * 4096;
        assert!(pipe.touch(last_page), "a page of the file is touched");
        // A container rotating its log: the file shrinks while the scan holds its mapping.
        // A plain load from that page now would raise SIGBUS and end the process; the touch
        // must report the page gone instead.
        file.set_len(4096).unwrap();
        assert!(
            !pipe.touch(last_page),
            "a page truncated away is not touched"
        );
        assert!(
            pipe.touch(mapping.addr as usize),
            "the page still in the file is"
        );
        drop(mapping);
        std::fs::remove_file(path).unwrap();
    }
}
