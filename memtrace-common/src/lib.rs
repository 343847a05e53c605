//! Types shared by memtrace's kernel programs and its userspace.
//!
//! Everything here is `#[repr(C)]`, padding-free and plain data: it crosses the map boundary as
//! raw bytes, so both sides must agree on the layout to the byte.
#![no_std]

/// Names of the maps and globals in the kernel object, so both sides spell them alike.
pub mod names {
    pub const CACHE_MAP: &str = "PAGE_CACHE";
    pub const CACHE_MAP_B: &str = "PAGE_CACHE_B";
    pub const ACTIVE_MAP: &str = "ACTIVE_MAP";
    pub const STATS_MAP: &str = "STATS";
    pub const CGROUP_EVENTS: &str = "CGROUP_EVENTS";
    pub const NAME_BUF: &str = "NAME_BUF";
    pub const PROG_NAME_INODE: &str = "name_inode";
    pub const PROG_CENSUS_SUPERBLOCKS: &str = "census_superblocks";
    pub const PROG_CENSUS_INODES: &str = "census_inodes";
    pub const PROG_CENSUS_PAGES: &str = "census_pages";
    pub const CENSUS_CURSOR: &str = "CENSUS_CURSOR";
    pub const CENSUS_SBS: &str = "CENSUS_SBS";
    pub const CENSUS_INODE_LIST: &str = "CENSUS_INODE_LIST";
    pub const WRITERS_MAP: &str = "WRITERS";
    pub const WRITERS_MAP_B: &str = "WRITERS_B";
    pub const PENDING_CACHE: &str = "PENDING_CACHE";
    pub const CACHE_OVERFLOW: &str = "CACHE_OVERFLOW";
    pub const PENDING_WRITE: &str = "PENDING_WRITE";
    pub const MEMCG_EPOCH: &str = "MEMCG_EPOCH";
    pub const PROG_VFS_WRITE: &str = "vfs_write_exit";
    pub const PROG_DIRTY_FOLIO: &str = "dirty_folio";
    pub const OFFSETS_GLOBAL: &str = "OFFSETS";
    pub const PROG_FILEMAP_ADD: &str = "filemap_add";
    pub const PROG_FILEMAP_DELETE: &str = "filemap_delete";
    pub const PROG_FOLIO_ACCESSED: &str = "folio_accessed";
    pub const FLOOR_FOLIO_ACCESSED: &str = "floor_accessed";
    pub const PROG_CGROUP_MKDIR: &str = "cgroup_mkdir";
    pub const PROG_CGROUP_RMDIR: &str = "cgroup_rmdir";
    pub const FLOOR_FILEMAP_ADD: &str = "floor_add";
    pub const FLOOR_FILEMAP_DELETE: &str = "floor_delete";
    pub const FLOOR_CGROUP_MKDIR: &str = "floor_cgroup_mkdir";
    pub const FLOOR_CGROUP_RMDIR: &str = "floor_cgroup_rmdir";
    pub const FLOOR_VFS_WRITE: &str = "floor_vfs_write";
    pub const FLOOR_DIRTY_FOLIO: &str = "floor_dirty";
}

/// Default capacity of the page-cache map: one entry per (memory cgroup, file) pair.
pub const DEFAULT_CACHE_ENTRIES: u32 = 262_144;
/// Capacity of the per-memcg overflow map: one entry per memory cgroup whose runs found the
/// (memcg, file) map full.
pub const OVERFLOW_ENTRIES: u32 = 16_384;

/// Key of the overflow map: a memory cgroup, as in `CacheKey`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OverflowKey {
    pub cgroup_id: u64,
    pub hierarchy: u32,
    pub _pad: u32,
}

/// Pages in and out of a memory cgroup's files that found no room in the (memcg, file) map:
/// counted for the cgroup, not the file, so the burst's detail is coarser but no page is lost.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OverflowCounters {
    pub pages_added: u64,
    pub pages_removed: u64,
    /// Runs counted here.
    pub runs: u64,
}
/// Capacity of the writers map: one entry per (writer's memcg, file, process).
pub const WRITER_ENTRIES: u32 = 65_536;
/// Bytes of a task's command name (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;
/// Longest cgroup path the kernel side copies; longer paths are cut and flagged.
pub const CGROUP_PATH_LEN: usize = 256;

/// Key of the page-cache map: which memory cgroup a file's pages are charged to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey {
    /// `kernfs_node.id` of the charged memcg's cgroup: the inode of its directory.
    pub cgroup_id: u64,
    /// `i_ino` of the file.
    pub ino: u64,
    /// `s_dev` of the file's superblock, in the kernel's `MAJOR << 20 | MINOR` encoding.
    pub dev: u32,
    /// `cgroup_root.hierarchy_id` of the charged memcg: 0 is cgroup v2, else a v1 hierarchy.
    /// Ids of different hierarchies may collide, so this is part of the identity.
    pub hierarchy: u32,
}

/// Value of the page-cache map: page counts since the programs were attached.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheCounters {
    /// Pages (4 KiB units on x86-64) inserted into the page cache.
    pub pages_added: u64,
    /// Pages removed from the page cache (truncate, invalidate, reclaim).
    pub pages_removed: u64,
    /// Kernel address of the file's inode at the last insertion: userspace hands it back to
    /// the `name_inode` program to learn the file's path (checked there against dev and ino).
    pub inode: u64,
    /// Largest excess of removed over added pages this entry saw: pages cached before the
    /// entry began (or before tracing) were dropped. Userspace compares it with what it knew
    /// was resident and measures the file again when it is more.
    pub max_deficit: u64,
    /// `inode.i_generation` at the last insertion: a reused inode number has another.
    pub generation: u64,
    /// Pages marked accessed (`folio_mark_accessed`: a read that found, or had just read
    /// in, the page): with `pages_added`, the cache hits. Where fentry is refused, 0.
    pub pages_accessed: u64,
}

impl CacheCounters {
    /// Pages added and removed: what a measurement is bracketed by (a change in either means
    /// pages came or went meanwhile).
    #[inline(always)]
    pub fn pages(&self) -> (u64, u64) {
        (self.pages_added, self.pages_removed)
    }

    /// The new `max_deficit` once a run whose own largest excess of removals is `run_peak`
    /// follows these counters, if it raises it: the excess before the run plus the run's peak.
    /// The programs fold runs into map entries with it, and userspace merges entries with it.
    #[inline(always)]
    pub fn deficit_after_run(&self, run_peak: u64) -> Option<u64> {
        if run_peak == 0 {
            return None;
        }
        let before = self.pages_removed.wrapping_sub(self.pages_added) as i64;
        let deficit = before.saturating_add(run_peak as i64);
        (deficit > self.max_deficit as i64).then_some(deficit as u64)
    }
}

/// A run of consecutive page-cache events for one (memcg, file) on one CPU, not yet added to
/// the map: the programs add to the map only when the next event is for another key, so a
/// stream of pages of one file costs no hash lookup per page. One slot per CPU per map half.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingCache {
    /// Equal to `ends` whenever the run is whole: a program starting a run bumps `ends`
    /// first and copies it here last, and userspace copies a slot from the first byte to the
    /// last, so a slot read while its run was being replaced shows two different values and is
    /// skipped rather than read as a key made of two runs' halves.
    pub begins: u64,
    pub key: CacheKey,
    /// Kernel addresses the programs compare to tell an event of this run at a glance: the
    /// memcg (from `folio.memcg_data`), the inode and its superblock. 0 in `inode`: no run.
    pub memcg: u64,
    pub inode: u64,
    pub sb: u64,
    /// `inode.i_generation` of the run's file.
    pub generation: u64,
    /// `MEMCG_EPOCH` when the run began: a memcg address is trusted only within one epoch.
    pub epoch: u64,
    pub pages_added: u64,
    pub pages_removed: u64,
    /// Largest excess of removed over added pages at any point of the run (`max_deficit`
    /// for the run alone); never below 0.
    pub peak_excess: u64,
    /// Events this CPU counted into this half, over all runs (only userspace resets them).
    pub add_events: u64,
    pub delete_events: u64,
    /// See `begins`.
    pub ends: u64,
}

impl PendingCache {
    /// Whether the slot was read whole (see `begins`).
    pub fn is_whole(&self) -> bool {
        self.begins == self.ends
    }

    /// The run as map counters.
    pub fn counters(&self) -> CacheCounters {
        CacheCounters {
            pages_added: self.pages_added,
            pages_removed: self.pages_removed,
            inode: self.inode,
            max_deficit: self.peak_excess,
            generation: self.generation,
            // Counted straight into the map entries (`folio_accessed`), never in runs.
            pages_accessed: 0,
        }
    }
}

/// A run of consecutive dirtied folios by one writer in one file on one CPU (the
/// `writeback_dirty_folio` fallback), not yet added to the writers map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingWrite {
    /// As `PendingCache::begins`.
    pub begins: u64,
    pub key: WriterKey,
    /// The file's inode and the writer's memory css: compared to tell an event of this run.
    /// 0 in `inode`: no run.
    pub inode: u64,
    pub css: u64,
    pub epoch: u64,
    pub stats: WriterStats,
    /// As `PendingCache::ends`.
    pub ends: u64,
}

impl PendingWrite {
    /// Whether the slot was read whole (see `PendingCache::begins`).
    pub fn is_whole(&self) -> bool {
        self.begins == self.ends
    }
}

/// Key of the writers map: a process writing a file, under its own memory cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct WriterKey {
    /// The writer's memcg (not the page's: the first writer may not be the one charged).
    pub cgroup_id: u64,
    pub ino: u64,
    pub dev: u32,
    pub hierarchy: u32,
    /// Thread-group id: the process.
    pub tgid: u32,
    pub _pad: u32,
}

/// Value of the writers map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Bytes written through `vfs_write` (fexit), or bytes of folios dirtied (fallback).
    pub bytes: u64,
    /// `vfs_write` calls, or folios dirtied.
    pub calls: u64,
    /// The process's command name at its last write.
    pub comm: [u8; COMM_LEN],
}

/// Indices into the per-CPU `STATS` array: what the kernel side saw, dropped or could not read.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Keys inserted into `PAGE_CACHE` (the first half), since load: userspace flips early
    /// when the half being counted into fills.
    KeysInsertedA = 0,
    /// Keys inserted into `PAGE_CACHE_B`, since load.
    KeysInsertedB = 1,
    /// Runs lost because both the page-cache map and the overflow map were full: pages lost.
    MapFull = 2,
    /// Events lost because a kernel read failed (a torn or freed pointer chain).
    ReadFailed = 3,
    /// Folios without a memcg (memcg disabled, or not charged): keyed under cgroup id 0.
    Uncharged = 4,
    /// Cgroup creation/removal notices lost because the ring buffer was full.
    CgroupEventsLost = 5,
    /// Writes not recorded because the writers map was full.
    WritersMapFull = 6,
    /// Runs counted per memory cgroup in the overflow map (the page-cache map was full): the
    /// file's detail is lost, its pages are not.
    Overflowed = 7,
}

impl Stat {
    pub const COUNT: u32 = 8;
    pub const ALL: [Stat; Self::COUNT as usize] = [
        Stat::KeysInsertedA,
        Stat::KeysInsertedB,
        Stat::MapFull,
        Stat::ReadFailed,
        Stat::Uncharged,
        Stat::CgroupEventsLost,
        Stat::WritersMapFull,
        Stat::Overflowed,
    ];
}

/// Byte offsets of the kernel struct members the programs follow, resolved from the running
/// kernel's BTF at start-up and written into the object as a read-only global.
///
/// Rust-built BPF gets no CO-RE relocations, so nothing about these layouts is compiled in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `folio.flags` (the first word of the page flags).
    pub folio_flags: u32,
    /// `folio.mapping`.
    pub folio_mapping: u32,
    /// `folio.memcg_data`.
    pub folio_memcg_data: u32,
    /// The byte that holds a large folio's order: `_flags_1` (6.6+, low byte) or `_folio_order`.
    pub folio_order: u32,
    /// Bit number of `PG_head` in the page flags: set on large folios.
    pub pg_head_bit: u32,
    /// `address_space.host`.
    pub mapping_host: u32,
    /// `inode.i_ino`.
    pub inode_ino: u32,
    /// `inode.i_sb`.
    pub inode_sb: u32,
    /// `super_block.s_dev`.
    pub sb_dev: u32,
    /// `mem_cgroup.css` + `cgroup_subsys_state.cgroup`.
    pub memcg_cgroup: u32,
    /// `cgroup.kn`.
    pub cgroup_kn: u32,
    /// `cgroup.root`.
    pub cgroup_root: u32,
    /// `kernfs_node.id`.
    pub kernfs_id: u32,
    /// `cgroup_root.hierarchy_id`.
    pub root_hierarchy_id: u32,
    /// `inode.i_mode`.
    pub inode_mode: u32,
    /// `inode.i_nlink`.
    pub inode_nlink: u32,
    /// `inode.i_rdev`.
    pub inode_rdev: u32,
    /// `inode.i_dentry` (an hlist_head: its first word points at a dentry's alias node).
    pub inode_dentry: u32,
    /// `dentry.d_u.d_alias`: subtracted from the alias node to get the dentry.
    pub dentry_alias: u32,
    /// `dentry.d_parent`.
    pub dentry_parent: u32,
    /// `dentry.d_name.name`.
    pub dentry_name: u32,
    /// `file.f_inode`.
    pub file_inode: u32,
    /// `task_struct.cgroups`.
    pub task_cgroups: u32,
    /// `css_set.subsys[memory_cgrp_id]`.
    pub css_set_memory: u32,
    /// `cgroup_subsys_state.cgroup`.
    pub css_cgroup: u32,
    /// `inode.i_generation`: tells a new file from an old one that had the same inode number.
    pub inode_generation: u32,
    /// `task_struct.tgid`: the process, read where the helper call would cost more.
    pub task_tgid: u32,
    // The census (see `census` in the kernel crate); 0 where the kernel lacks one of them.
    /// `task_struct.fs`.
    pub task_fs: u32,
    /// `fs_struct.root.dentry`.
    pub fs_root_dentry: u32,
    /// `dentry.d_sb`.
    pub dentry_sb: u32,
    /// `super_block.s_list`: every superblock, on one list.
    pub sb_list: u32,
    /// `super_block.s_root`.
    pub sb_root: u32,
    /// `super_block.s_magic`.
    pub sb_magic: u32,
    /// `super_block.s_inodes`: every inode of the superblock, on one list.
    pub sb_inodes: u32,
    /// `inode.i_sb_list`.
    pub inode_sb_list: u32,
    /// `inode.i_data.i_pages.xa_head`: the root of the inode's own page cache.
    pub inode_pages: u32,
    /// `inode.i_data.nrpages`.
    pub inode_nrpages: u32,
    /// `xa_node.shift`.
    pub xa_node_shift: u32,
    /// `xa_node.offset`: the node's slot in its parent.
    pub xa_node_offset: u32,
    /// `xa_node.parent`.
    pub xa_node_parent: u32,
    /// `xa_node.slots`.
    pub xa_node_slots: u32,
    /// Bit numbers of `PG_dirty`, `PG_writeback` and `PG_active` in the page flags.
    pub pg_dirty_bit: u32,
    pub pg_writeback_bit: u32,
    pub pg_active_bit: u32,
}

/// Superblocks one `census_superblocks` run reports at most.
pub const CENSUS_SUPERBLOCKS: u32 = 64;
/// Inodes with page cache one `census_inodes` run reports at most.
pub const CENSUS_INODES: u32 = 256;
/// Steps along a superblock's inode list one `census_inodes` run takes at most.
pub const CENSUS_LIST_STEPS: u32 = 2048;
/// Page-cache slots one `census_pages` run examines at most (one xarray node's worth): a
/// bounded loop, which the verifier follows slot by slot.
pub const CENSUS_SLOT_STEPS: u32 = 64;

/// `CensusCursor::status` values: how a census run ended.
pub mod census_status {
    /// More to come: run again from `CensusCursor::next`.
    pub const MORE: u32 = 0;
    /// The walk reached its end.
    pub const DONE: u32 = 1;
    /// The cursor's object left its list between runs: walk the list again from its head.
    pub const RESTART: u32 = 2;
    /// The inode at that address is no longer (dev, ino).
    pub const STALE: u32 = 3;
    /// A kernel read failed (a torn pointer chain); what was counted stays counted.
    pub const READ_FAILED: u32 = 4;
}

/// Where a census run stopped, and what it found.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CensusCursor {
    /// Where the next run starts: a superblock's or an inode's address, or a page index.
    pub next: u64,
    /// Entries written to the answer array.
    pub found: u32,
    /// Pages `census_pages` counted but could not tell the memcg of (a torn memcg chain).
    pub lost_pages: u32,
    /// `census_pages`: the memcg of the folios counted in `pages` (one run counts the folios
    /// of one memcg in a row, and stops where another's begin).
    pub cgroup_id: u64,
    pub hierarchy: u32,
    /// A `census_status` value: how the run ended (a raw tracepoint's return value does not
    /// reach `BPF_PROG_RUN`'s caller through aya's wrapper).
    pub status: u32,
    pub pages: CensusPages,
}

/// A superblock, as the census found it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CensusSuperblock {
    pub sb: u64,
    pub magic: u64,
    pub dev: u32,
    pub _pad: u32,
}

/// An inode whose own mapping holds pages.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CensusInode {
    pub inode: u64,
    pub ino: u64,
    pub nrpages: u64,
    pub generation: u32,
    pub _pad: u32,
}

/// Pages of one (memcg, file) as the census counted them, folio by folio.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CensusPages {
    pub pages: u64,
    pub dirty: u64,
    pub writeback: u64,
    pub active: u64,
}

/// What happened to a cgroup, as seen by the `cgroup:cgroup_mkdir`/`cgroup_rmdir` tracepoints.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupEventKind {
    Created = 1,
    Removed = 2,
}

/// A cgroup was created or removed: lets userspace name cgroups that are gone by the time it looks.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CgroupEvent {
    pub cgroup_id: u64,
    pub hierarchy: u32,
    /// A `CgroupEventKind` value.
    pub kind: u32,
    /// NUL-terminated path inside the hierarchy, as the tracepoint gives it.
    pub path: [u8; CGROUP_PATH_LEN],
}

/// `InodeName.flags`: the walk reached its depth limit before the filesystem root.
pub const PATH_TOO_DEEP: u32 = 1;
/// `InodeName.flags`: the inode had no cached dentry, so no path.
pub const PATH_NO_DENTRY: u32 = 2;
/// `InodeName.flags`: a kernel read failed partway through the walk.
pub const PATH_READ_FAILED: u32 = 4;
/// `InodeName.flags`: the path is longer than the buffer; the components near the root are
/// missing.
pub const PATH_TOO_LONG: u32 = 8;

/// Components the `name_inode` walk follows towards the root at most.
pub const NAME_MAX_DEPTH: u32 = 128;
/// Bytes of one component, NUL included (`NAME_MAX` + 1).
pub const NAME_COMPONENT_MAX: usize = 256;
/// Bytes of path text one walk keeps (a power of two: offsets are masked with it).
pub const NAME_TEXT_BYTES: usize = 8192;

/// `name_inode`'s answer: a file's identity and its path from the root of its filesystem (not
/// from a mount), found by walking its dentries when userspace asks. Components are stored leaf
/// first, each followed by a NUL, as the kernel keeps them (any bytes but `/` and NUL).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct InodeName {
    pub ino: u64,
    pub dev: u32,
    /// `i_mode`: file type and permissions.
    pub mode: u32,
    /// `i_rdev`: for block-device inodes, the device whose metadata they cache.
    pub rdev: u32,
    /// `i_nlink`: 0 means unlinked.
    pub nlink: u32,
    /// Components in `text`.
    pub depth: u32,
    /// `PATH_*` bits.
    pub flags: u32,
    /// Bytes of `text` used.
    pub used: u32,
    /// 0 when filled in; otherwise the inode at that address is no longer (dev, ino).
    pub status: u32,
    /// Room for one more component past `NAME_TEXT_BYTES`, so every copy is in bounds.
    pub text: [u8; NAME_TEXT_BYTES + NAME_COMPONENT_MAX],
}

#[cfg(feature = "user")]
mod pod {
    // Each type below is repr(C) and Copy, has no padding (sizes asserted below) and only
    // integer fields, so every bit pattern is a valid value.
    // SAFETY: plain integer data without padding, as said above.
    unsafe impl aya::Pod for super::CacheKey {}
    // SAFETY: plain integer data without padding, as said above.
    unsafe impl aya::Pod for super::CacheCounters {}
    // SAFETY: plain integer data without padding, as said above.
    unsafe impl aya::Pod for super::KernelOffsets {}
    // SAFETY: plain integer data without padding, as said above.
    unsafe impl aya::Pod for super::CensusCursor {}
    // SAFETY: plain integer data without padding, as said above.
    unsafe impl aya::Pod for super::CensusSuperblock {}
    // SAFETY: plain integer data without padding, as said above.
    unsafe impl aya::Pod for super::CensusInode {}
    // SAFETY: plain integer data without padding, as said above.
    unsafe impl aya::Pod for super::CensusPages {}
    // SAFETY: plain integer data without padding, as said above.
    unsafe impl aya::Pod for super::WriterKey {}
    // SAFETY: plain integer data without padding, as said above.
    unsafe impl aya::Pod for super::WriterStats {}
    // SAFETY: plain integer data without padding, as said above.
    unsafe impl aya::Pod for super::CgroupEvent {}
    // SAFETY: plain integer data without padding, as said above.
    unsafe impl aya::Pod for super::InodeName {}
    // SAFETY: plain integer data without padding, as said above.
    unsafe impl aya::Pod for super::PendingCache {}
    // SAFETY: plain integer data without padding, as said above.
    unsafe impl aya::Pod for super::PendingWrite {}
    // SAFETY: plain integer data without padding, as said above.
    unsafe impl aya::Pod for super::OverflowKey {}
    // SAFETY: plain integer data without padding, as said above.
    unsafe impl aya::Pod for super::OverflowCounters {}

    // No padding: each size is the sum of its fields.
    const _: () = assert!(size_of::<super::CgroupEvent>() == 8 + 4 + 4 + super::CGROUP_PATH_LEN);
    const _: () = assert!(
        size_of::<super::InodeName>()
            == 8 + 8 * 4 + super::NAME_TEXT_BYTES + super::NAME_COMPONENT_MAX
    );
    const _: () = assert!(size_of::<super::CacheCounters>() == 48);
    const _: () = assert!(size_of::<super::PendingCache>() == 24 + 12 * 8);
    const _: () = assert!(size_of::<super::PendingWrite>() == 32 + 5 * 8 + 16 + 16);
    const _: () = assert!(size_of::<super::CensusCursor>() == 8 + 4 + 4 + 8 + 4 + 4 + 4 * 8);
    const _: () = assert!(size_of::<super::CensusSuperblock>() == 8 + 8 + 4 + 4);
    const _: () = assert!(size_of::<super::CensusInode>() == 3 * 8 + 4 + 4);
    const _: () = assert!(size_of::<super::CensusPages>() == 4 * 8);
    const _: () = assert!(size_of::<super::KernelOffsets>() == 44 * 4);
}
