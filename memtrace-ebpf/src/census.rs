//! The census: every page-cache page of every file, counted per memcg, once, when asked.
//!
//! The tracepoints see pages come and go from the moment memtrace attaches; cache that piled up
//! before lives in files nobody may hold open, anywhere. The kernel already lists what it
//! has: every superblock on one list (`super_blocks`, reached from the caller's root
//! filesystem through `s_list`), every inode of a superblock on `s_inodes`, and every page of
//! an inode in its mapping's xarray, each folio carrying its memcg. Three programs walk those,
//! run by userspace with `BPF_PROG_RUN` (never attached), each a bounded batch that returns a
//! cursor, so no run holds the CPU for long:
//!
//! - `census_superblocks`: superblocks after a cursor.
//! - `census_inodes`: a superblock's inodes that hold pages, after a cursor inode.
//! - `census_pages`: one inode's folios from a page index on, summed per memcg.
//!
//! Each run says how it ended in `CensusCursor::status` (aya's raw-tracepoint wrapper returns
//! 0 whatever the program returns).
//!
//! A test run holds `rcu_read_lock`, under which inodes and xarray nodes are not freed; every
//! read is `bpf_probe_read_kernel`, so a list changing under the walk can end it early (the
//! cursor says so and userspace walks again) but never fault. Nothing is opened, mapped,
//! touched or locked: reading `struct page` does not age a page.

use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_get_current_task, generated::bpf_loop},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use memtrace_common::{
    census_status::{DONE, MORE, READ_FAILED, RESTART, STALE},
    CensusCursor, CensusInode, CensusPages, CensusSuperblock, CENSUS_INODES, CENSUS_LIST_STEPS,
    CENSUS_SLOT_STEPS, CENSUS_SUPERBLOCKS,
};

use crate::{
    cgroups::memcg_identity,
    kernel::{read, read_ptr, ReadFailed},
    maps::{offset, CENSUS_CURSOR, CENSUS_INODE_LIST, CENSUS_SBS},
};

/// The low bits of `folio.memcg_data` are flags; the rest is the memcg pointer.
const MEMCG_DATA_FLAGS_MASK: u64 = 7;
/// Slots per xarray node (`XA_CHUNK_SHIFT` 6).
const XA_CHUNK_SHIFT: u64 = 6;
const XA_CHUNK_SLOTS: u64 = 1 << XA_CHUNK_SHIFT;
/// Levels an xarray of a 64-bit index space can have.
const XA_MAX_LEVELS: u32 = 11;
/// Steps `census_superblocks` takes along `s_list` per run (invalid entries, such as the
/// list's head, take a step but no answer slot).
const SUPERBLOCK_STEPS: u32 = CENSUS_SUPERBLOCKS * 2;

/// Args: the superblock to start after (0: the caller's root filesystem's, reported first) and
/// the one the walk began at (where the circular list ends). Fills `CENSUS_SBS`.
#[raw_tracepoint(tracepoint = "memtrace_census_superblocks")]
pub(crate) fn census_superblocks(ctx: RawTracePointContext) -> i32 {
    let after: u64 = ctx.arg(0);
    let origin: u64 = ctx.arg(1);
    let Some(cursor) = CENSUS_CURSOR.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: the map value is ours for this run (userspace runs the census alone).
    let cursor = unsafe { &mut *cursor };
    *cursor = CensusCursor::default();
    cursor.status = walk_superblocks(cursor, after, origin).unwrap_or(READ_FAILED);
    0
}

#[inline(always)]
fn walk_superblocks(cursor: &mut CensusCursor, after: u64, origin: u64) -> Result<u32, ReadFailed> {
    let mut sb = after;
    if sb == 0 {
        sb = root_superblock()?;
        record_superblock(cursor, sb);
    }
    let list = offset!(sb_list) as u64;
    for _ in 0..SUPERBLOCK_STEPS {
        let next = read_ptr(sb, offset!(sb_list))? - list;
        cursor.next = next;
        if next == origin || next == sb {
            return Ok(DONE);
        }
        sb = next;
        record_superblock(cursor, sb);
        if cursor.found >= CENSUS_SUPERBLOCKS {
            return Ok(MORE);
        }
    }
    Ok(MORE)
}

/// The superblock of the calling task's root directory: a way onto the list of all of them.
#[inline(always)]
fn root_superblock() -> Result<u64, ReadFailed> {
    // SAFETY: the helper has no preconditions.
    let task = unsafe { bpf_get_current_task() };
    let fs = read_ptr(task, offset!(task_fs))?;
    let root = read_ptr(fs, offset!(fs_root_dentry))?;
    read_ptr(root, offset!(dentry_sb))
}

/// Records `sb` if it is a superblock: the list's head, a plain `list_head` in kernel data, is
/// not, and its root dentry would not point back at it.
#[inline(always)]
fn record_superblock(cursor: &mut CensusCursor, sb: u64) {
    let is_superblock = read_ptr(sb, offset!(sb_root))
        .and_then(|root| read_ptr(root, offset!(dentry_sb)))
        .is_ok_and(|back| back == sb);
    if !is_superblock || cursor.found >= CENSUS_SUPERBLOCKS {
        return;
    }
    let Some(slot) = CENSUS_SBS.get_ptr_mut(cursor.found) else {
        return;
    };
    let entry = CensusSuperblock {
        sb,
        magic: read::<u64>(sb, offset!(sb_magic)).unwrap_or(0),
        dev: read::<u32>(sb, offset!(sb_dev)).unwrap_or(0),
        _pad: 0,
    };
    // SAFETY: an array map value, ours for this run.
    unsafe { *slot = entry };
    cursor.found += 1;
}

/// Args: the superblock, and the inode to start after (0: the list's head). Fills
/// `CENSUS_INODE_LIST` with the inodes whose own mapping holds pages.
#[raw_tracepoint(tracepoint = "memtrace_census_inodes")]
pub(crate) fn census_inodes(ctx: RawTracePointContext) -> i32 {
    let sb: u64 = ctx.arg(0);
    let after: u64 = ctx.arg(1);
    let Some(cursor) = CENSUS_CURSOR.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: as in `census_superblocks`.
    let cursor = unsafe { &mut *cursor };
    *cursor = CensusCursor::default();
    cursor.status = walk_inodes(cursor, sb, after).unwrap_or(READ_FAILED);
    0
}

/// `walk_inodes`'s state.
#[repr(C)]
struct InodeWalk {
    head: u64,
    node: u64,
    status: u32,
    found: u32,
}

#[inline(always)]
fn walk_inodes(cursor: &mut CensusCursor, sb: u64, after: u64) -> Result<u32, ReadFailed> {
    let link = offset!(inode_sb_list) as u64;
    let head = sb + offset!(sb_inodes) as u64;
    let mut node = head;
    if after != 0 {
        // The cursor inode may have been evicted since the last run: it must still be this
        // superblock's, and still linked (its successor points back at it).
        node = after + link;
        let owner = read_ptr(after, offset!(inode_sb))?;
        let next = read_ptr(node, 0)?;
        let back = read_ptr(next, 8)?;
        if owner != sb || back != node || next == node {
            return Ok(RESTART);
        }
    }
    let mut walk = InodeWalk {
        head,
        node,
        status: MORE,
        found: 0,
    };
    // A callback per step: the verifier checks its body once (a bounded loop of this many
    // steps would be checked step by step, and the answer slot it writes keeps the steps from
    // looking alike).
    // SAFETY: the callback is a BPF subprogram taking `walk`, which outlives the call.
    unsafe {
        bpf_loop(
            CENSUS_LIST_STEPS,
            inode_step as *mut c_void,
            (&raw mut walk).cast(),
            0,
        )
    };
    cursor.found = walk.found;
    cursor.next = walk.node - link;
    Ok(walk.status)
}

/// One step along the inode list, as `bpf_loop`'s callback; 1 stops the loop.
#[inline(never)]
extern "C" fn inode_step(_index: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: `walk_inodes` passes its `InodeWalk`.
    let walk = unsafe { &mut *ctx.cast::<InodeWalk>() };
    let Ok(next) = read_ptr(walk.node, 0) else {
        walk.status = READ_FAILED;
        return 1;
    };
    if next == walk.head {
        walk.status = DONE;
        return 1;
    }
    if next == walk.node {
        // Unlinked under us (`list_del_init` points it at itself).
        walk.status = RESTART;
        return 1;
    }
    walk.node = next;
    let inode = next - offset!(inode_sb_list) as u64;
    let pages = read::<u64>(inode, offset!(inode_nrpages)).unwrap_or(0);
    if pages != 0 && record_inode(walk.found, inode, pages) {
        walk.found += 1;
        if walk.found >= CENSUS_INODES {
            return 1;
        }
    }
    0
}

#[inline(always)]
fn record_inode(at: u32, inode: u64, nrpages: u64) -> bool {
    let Some(slot) = CENSUS_INODE_LIST.get_ptr_mut(at) else {
        return false;
    };
    let entry = CensusInode {
        inode,
        ino: read::<u64>(inode, offset!(inode_ino)).unwrap_or(0),
        nrpages,
        generation: read::<u32>(inode, offset!(inode_generation)).unwrap_or(0),
        _pad: 0,
    };
    // SAFETY: an array map value, ours for this run.
    unsafe { *slot = entry };
    true
}

/// Args: the inode's address, its dev and ino (checked, as `name_inode` does), and the page
/// index to start from. Counts the folios from there that are charged to one memcg, up to
/// the first charged to another (or `CENSUS_SLOT_STEPS` slots): `CensusCursor` says which
/// memcg, how many pages, and the index to continue from. One memcg a run keeps the loop
/// body small, so the verifier sees it converge, and every identity walk out of it.
#[raw_tracepoint(tracepoint = "memtrace_census_pages")]
pub(crate) fn census_pages(ctx: RawTracePointContext) -> i32 {
    let inode: u64 = ctx.arg(0);
    let dev: u64 = ctx.arg(1);
    let ino: u64 = ctx.arg(2);
    let start: u64 = ctx.arg(3);
    let Some(cursor) = CENSUS_CURSOR.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: as in `census_superblocks`.
    let cursor = unsafe { &mut *cursor };
    *cursor = CensusCursor::default();
    let same = read::<u64>(inode, offset!(inode_ino)).is_ok_and(|i| i == ino)
        && read_ptr(inode, offset!(inode_sb))
            .and_then(|sb| read::<u32>(sb, offset!(sb_dev)))
            .is_ok_and(|d| u64::from(d) == dev);
    if !same {
        cursor.status = STALE;
        return 0;
    }
    let mut walk = PageWalk {
        node: 0,
        shift: 0,
        base: 0,
        at: 0,
        memcg: 0,
        status: MORE,
        counting: 0,
        pages: CensusPages::default(),
    };
    cursor.status = walk_pages(&mut walk, inode, start).unwrap_or(READ_FAILED);
    cursor.next = walk.base.wrapping_add(walk.at << (walk.shift & 63));
    if walk.counting != 0 {
        match memcg_identity(walk.memcg) {
            Ok(identity) => {
                cursor.cgroup_id = identity.cgroup_id;
                cursor.hierarchy = identity.hierarchy;
                cursor.pages = walk.pages;
            }
            Err(ReadFailed) => cursor.lost_pages = walk.pages.pages as u32,
        }
    }
    0
}

#[inline(always)]
fn bit(number: u32) -> u64 {
    1u64 << (number & 63)
}

/// An xarray entry that points at a node (an internal entry above the small internal values:
/// sibling and retry markers).
#[inline(always)]
fn is_node(entry: u64) -> bool {
    entry & 3 == 2 && entry > 4096
}

/// An entry that points at a folio (value entries, shadows of evicted pages, have bit 0 set).
#[inline(always)]
fn is_folio(entry: u64) -> bool {
    entry != 0 && entry & 3 == 0
}

/// A node's shift, checked: a multiple of `XA_CHUNK_SHIFT` within a 64-bit index.
#[inline(always)]
fn shift_of(node: u64) -> Result<u64, ReadFailed> {
    let shift = u64::from(read::<u8>(node, offset!(xa_node_shift))?);
    if shift % XA_CHUNK_SHIFT != 0 || shift > 60 {
        return Err(ReadFailed);
    }
    Ok(shift)
}

#[inline(always)]
fn slot(node: u64, offset: u64) -> Result<u64, ReadFailed> {
    read::<u64>(
        node + offset!(xa_node_slots) as u64,
        ((offset & (XA_CHUNK_SLOTS - 1)) * 8) as u32,
    )
}

/// `walk_pages`'s state: the slot `at` of
/// `node` (whose slots are `shift` bits of index apart and begin at index `base`), and the
/// folios of `memcg` counted so far (`counting` once there is one).
#[repr(C)]
struct PageWalk {
    node: u64,
    shift: u64,
    base: u64,
    at: u64,
    memcg: u64,
    status: u32,
    counting: u32,
    pages: CensusPages,
}

/// Walks the inode's xarray from page index `start`, in index order: down to `start` from the
/// root, then slot by slot, into nodes and back up through `parent`. A large folio is counted
/// at its first slot; the sibling markers after it are internal values, passed over.
#[inline(always)]
fn walk_pages(walk: &mut PageWalk, inode: u64, start: u64) -> Result<u32, ReadFailed> {
    let head = read::<u64>(inode, offset!(inode_pages))?;
    if !is_node(head) {
        // Empty, or a single folio at index 0.
        if start == 0 && is_folio(head) {
            walk.count(head)?;
        }
        return Ok(DONE);
    }
    let mut node = head - 2;
    let mut shift = shift_of(node)?;
    if start >> shift >= XA_CHUNK_SLOTS {
        return Ok(DONE);
    }
    let mut base: u64 = 0;
    let mut at = (start >> shift) & (XA_CHUNK_SLOTS - 1);
    for _ in 0..XA_MAX_LEVELS {
        if shift == 0 {
            break;
        }
        let entry = slot(node, at)?;
        if !is_node(entry) {
            break;
        }
        base += at << shift;
        node = entry - 2;
        shift = shift_of(node)?;
        at = (start >> shift) & (XA_CHUNK_SLOTS - 1);
    }
    walk.node = node;
    walk.shift = shift;
    walk.base = base;
    walk.at = at;
    for _ in 0..CENSUS_SLOT_STEPS {
        match walk.step() {
            Ok(true) => {}
            Ok(false) => break,
            Err(ReadFailed) => {
                walk.status = READ_FAILED;
                break;
            }
        }
    }
    Ok(walk.status)
}

impl PageWalk {
    /// Visits one slot, or moves up when the node is done; false to stop (the end of the
    /// array, or a folio of another memcg, left for the next run).
    #[inline(always)]
    fn step(&mut self) -> Result<bool, ReadFailed> {
        if self.at >= XA_CHUNK_SLOTS {
            let parent = read::<u64>(self.node, offset!(xa_node_parent))?;
            if parent == 0 {
                self.status = DONE;
                return Ok(false);
            }
            let in_parent = u64::from(read::<u8>(self.node, offset!(xa_node_offset))?);
            let parent_shift = shift_of(parent)?;
            self.base = self.base.wrapping_sub(in_parent << parent_shift);
            self.node = parent;
            self.shift = parent_shift;
            self.at = in_parent + 1;
            return Ok(true);
        }
        let entry = slot(self.node, self.at)?;
        if is_node(entry) && self.shift > 0 {
            self.base += self.at << self.shift;
            self.node = entry - 2;
            self.shift = shift_of(self.node)?;
            self.at = 0;
            return Ok(true);
        }
        if is_folio(entry) && !self.count(entry)? {
            return Ok(false);
        }
        self.at += 1;
        Ok(true)
    }

    /// Counts a folio if it is charged to the memcg being counted (or is the first); false
    /// if it belongs to another.
    #[inline(always)]
    fn count(&mut self, folio: u64) -> Result<bool, ReadFailed> {
        let flags: u64 = read(folio, offset!(folio_flags))?;
        let memcg = read::<u64>(folio, offset!(folio_memcg_data))? & !MEMCG_DATA_FLAGS_MASK;
        if self.counting != 0 && memcg != self.memcg {
            return Ok(false);
        }
        self.memcg = memcg;
        self.counting = 1;
        let pages = if flags & bit(offset!(pg_head_bit)) != 0 {
            1u64 << (read::<u8>(folio, offset!(folio_order))? & 31)
        } else {
            1
        };
        self.pages.pages += pages;
        self.pages.dirty += pages * ((flags >> (offset!(pg_dirty_bit) & 63)) & 1);
        self.pages.writeback += pages * ((flags >> (offset!(pg_writeback_bit) & 63)) & 1);
        self.pages.active += pages * ((flags >> (offset!(pg_active_bit) & 63)) & 1);
        Ok(true)
    }
}
