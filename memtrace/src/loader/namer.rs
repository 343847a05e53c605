//! Asking the kernel for a file's path: `name_inode`, run on demand with `BPF_PROG_RUN`,
//! answers in `NAME_BUF`. The map is created mappable and mapped here, so an answer is read in
//! place: a lookup would be a second call a file, copying 8 KiB of text to read a few dozen
//! bytes (together 3 µs of the 4.4 µs a file took; a burst of 100,000 new files is named in
//! the reports that follow it).

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
    sync::Mutex,
};

use aya::{
    maps::{Array, IterableMap, MapData},
    programs::ProgramFd,
};
use memtrace_common::InodeName;

use super::prog_run;

/// The program that walks a file's dentries when asked, and where it answers.
pub(super) struct Namer {
    program: ProgramFd,
    answer: Answer,
    /// One run and its reading at a time: every run writes the one answer slot.
    running: Mutex<()>,
}

/// Where `name_inode`'s answer is read.
enum Answer {
    /// `NAME_BUF`'s value, mapped read-only into memtrace's memory.
    Mapped(MappedAnswer),
    /// Copied out by a lookup, where the mapping was refused.
    Copied(Array<MapData, InodeName>),
}

impl Namer {
    pub(super) fn new(program: ProgramFd, answer: Array<MapData, InodeName>) -> Self {
        let answer = match MappedAnswer::map(&answer) {
            Ok(mapped) => Answer::Mapped(mapped),
            Err(err) => {
                log::debug!("NAME_BUF not mapped ({err}): names are copied out by lookups");
                Answer::Copied(answer)
            }
        };
        Self {
            program,
            answer,
            running: Mutex::new(()),
        }
    }

    /// Runs `name_inode` for the inode at `inode`, and hands its answer to `read` if the inode
    /// is still (dev, ino).
    pub(super) fn name<R>(
        &self,
        inode: u64,
        dev: u32,
        ino: u64,
        read: impl FnOnce(&InodeName) -> R,
    ) -> Option<R> {
        // A poisoned lock only means a reader panicked: the slot is rewritten by each run.
        let _running = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match prog_run::run_raw_tracepoint(&self.program, &[inode, u64::from(dev), ino]) {
            Ok(0) => {}
            Ok(_) => return None,
            Err(err) => {
                log::debug!("name_inode failed: {err}");
                return None;
            }
        }
        match &self.answer {
            // SAFETY: the program wrote the slot during the run that just returned, and only a
            // run (which the lock held here excludes) writes it.
            Answer::Mapped(mapped) => Some(read(unsafe { mapped.ptr.as_ref() })),
            Answer::Copied(map) => map.get(&0, 0).ok().map(|name| read(&name)),
        }
    }
}

/// A read-only shared mapping of a one-entry `BPF_F_MMAPABLE` array: its value at offset 0.
struct MappedAnswer {
    ptr: NonNull<InodeName>,
    len: usize,
}

// SAFETY: the mapping is only read, under `Namer::running`, between runs that write it.
unsafe impl Send for MappedAnswer {}
// SAFETY: as above.
unsafe impl Sync for MappedAnswer {}

impl MappedAnswer {
    fn map(array: &Array<MapData, InodeName>) -> io::Result<Self> {
        let fd = IterableMap::map(array).fd().as_fd().as_raw_fd();
        // SAFETY: sysconf has no memory effects.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .ok()
            .filter(|&p| p > 0)
            .unwrap_or(4096);
        let len = size_of::<InodeName>().div_ceil(page) * page;
        // SAFETY: a fresh read-only shared mapping of the map's values; the kernel refuses it
        // (MAP_FAILED) unless the map was created mappable and is at least `len` long.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if at == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(at.cast::<InodeName>()).ok_or_else(|| io::Error::other("null"))?;
        Ok(Self { ptr, len })
    }
}

impl Drop for MappedAnswer {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `map` made; nothing reads it after this.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
