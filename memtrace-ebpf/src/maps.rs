//! The maps and globals the programs share with userspace.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use memtrace_common::{
    CacheCounters, CacheKey, CensusCursor, CensusInode, CensusSuperblock, InodeName, KernelOffsets,
    OverflowCounters, OverflowKey, PendingCache, PendingWrite, Stat, WriterKey, WriterStats,
    CENSUS_INODES, CENSUS_SUPERBLOCKS, DEFAULT_CACHE_ENTRIES, OVERFLOW_ENTRIES, WRITER_ENTRIES,
};

/// Pages in and out per (memcg, file), in two halves: the programs count into the active one
/// while userspace empties the other and keeps the totals, so an entry lives one interval and
/// the maps hold only what changed lately, however many files come and go over weeks.
/// Userspace may resize both before load (`--max-entries`).
#[map(name = "PAGE_CACHE")]
pub(crate) static PAGE_CACHE: HashMap<CacheKey, CacheCounters> =
    HashMap::with_max_entries(DEFAULT_CACHE_ENTRIES, 0);

#[map(name = "PAGE_CACHE_B")]
pub(crate) static PAGE_CACHE_B: HashMap<CacheKey, CacheCounters> =
    HashMap::with_max_entries(DEFAULT_CACHE_ENTRIES, 0);

/// Per memory cgroup, the runs that found the half being counted into full: never flipped,
/// read whole at every report, so a burst of more new files than the map holds loses the
/// files' detail but no page.
#[map(name = "CACHE_OVERFLOW")]
pub(crate) static CACHE_OVERFLOW: HashMap<OverflowKey, OverflowCounters> =
    HashMap::with_max_entries(OVERFLOW_ENTRIES, 0);

/// Which half the programs count into: 0 is `PAGE_CACHE`, 1 is `PAGE_CACHE_B`. Userspace
/// flips it, waits for programs still running on the old half, then empties that half.
#[map(name = "ACTIVE_MAP")]
pub(crate) static ACTIVE_MAP: Array<u32> = Array::with_max_entries(1, 0);

/// Whether the programs count into `PAGE_CACHE_B` now.
#[inline(always)]
pub(crate) fn counting_into_b() -> bool {
    ACTIVE_MAP.get(0) == Some(&1)
}

/// Per CPU, the run of page-cache events not yet added to the map, one slot per half (see
/// `page_cache`). Userspace adds a half's slots to what it drains from that half.
#[map(name = "PENDING_CACHE")]
pub(crate) static PENDING_CACHE: PerCpuArray<PendingCache> = PerCpuArray::with_max_entries(2, 0);

/// Per CPU, the run of dirtied folios not yet added to `WRITERS` (the fallback's batching).
#[map(name = "PENDING_WRITE")]
pub(crate) static PENDING_WRITE: PerCpuArray<PendingWrite> = PerCpuArray::with_max_entries(1, 0);

/// Bytes written per (writer's memcg, file, process), in two halves that flip with the
/// page-cache map's (`ACTIVE_MAP`): userspace empties the half the programs left, so the map
/// bounds the writers of one interval, not every writer a long-lived process ever had.
#[map(name = "WRITERS")]
pub(crate) static WRITERS: HashMap<WriterKey, WriterStats> =
    HashMap::with_max_entries(WRITER_ENTRIES, 0);
#[map(name = "WRITERS_B")]
pub(crate) static WRITERS_B: HashMap<WriterKey, WriterStats> =
    HashMap::with_max_entries(WRITER_ENTRIES, 0);

/// One remembered memcg → cgroup identity, per cache slot.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct MemcgCacheEntry {
    pub memcg: u64,
    pub epoch: u64,
    pub cgroup_id: u64,
    pub hierarchy: u32,
    pub _pad: u32,
}

/// Slots of the per-CPU memcg identity cache.
pub(crate) const MEMCG_CACHE_SLOTS: u32 = 256;

/// memcg pointer → (cgroup id, hierarchy), per CPU: the walk from a memcg to its cgroup id
/// takes five helper calls, and nearly every event names a memcg seen just before.
#[map(name = "MEMCG_CACHE")]
pub(crate) static MEMCG_CACHE: PerCpuArray<MemcgCacheEntry> =
    PerCpuArray::with_max_entries(MEMCG_CACHE_SLOTS, 0);

/// Bumped on every cgroup creation (by `cgroup_mkdir`) and by userspace at each snapshot: a
/// memcg address can only be reused by a memcg created later, so a cache entry from an older
/// epoch is checked again before use.
#[map(name = "MEMCG_EPOCH")]
pub(crate) static MEMCG_EPOCH: Array<u64> = Array::with_max_entries(1, 0);

/// Per-CPU event and loss counters, indexed by `Stat`.
#[map(name = "STATS")]
pub(crate) static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Stat::COUNT, 0);

/// Cgroup creation and removal notices (rare: one per mkdir/rmdir).
#[map(name = "CGROUP_EVENTS")]
pub(crate) static CGROUP_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// `name_inode`'s answer, read by userspace right after each run, in place: the map is
/// mappable.
#[map(name = "NAME_BUF")]
pub(crate) static NAME_BUF: Array<InodeName> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Where the last census run stopped (see `census`).
#[map(name = "CENSUS_CURSOR")]
pub(crate) static CENSUS_CURSOR: Array<CensusCursor> = Array::with_max_entries(1, 0);

/// `census_superblocks`'s answer.
#[map(name = "CENSUS_SBS")]
pub(crate) static CENSUS_SBS: Array<CensusSuperblock> =
    Array::with_max_entries(CENSUS_SUPERBLOCKS, 0);

/// `census_inodes`'s answer.
#[map(name = "CENSUS_INODE_LIST")]
pub(crate) static CENSUS_INODE_LIST: Array<CensusInode> = Array::with_max_entries(CENSUS_INODES, 0);

/// Struct offsets of the running kernel, written by the loader before load. Read-only once
/// loaded, so the verifier sees constants.
#[unsafe(no_mangle)]
pub(crate) static OFFSETS: KernelOffsets = KernelOffsets {
    folio_flags: 0,
    folio_mapping: 0,
    folio_memcg_data: 0,
    folio_order: 0,
    pg_head_bit: 0,
    mapping_host: 0,
    inode_ino: 0,
    inode_sb: 0,
    sb_dev: 0,
    memcg_cgroup: 0,
    cgroup_kn: 0,
    cgroup_root: 0,
    kernfs_id: 0,
    root_hierarchy_id: 0,
    inode_mode: 0,
    inode_nlink: 0,
    inode_rdev: 0,
    inode_dentry: 0,
    dentry_alias: 0,
    dentry_parent: 0,
    dentry_name: 0,
    file_inode: 0,
    task_cgroups: 0,
    css_set_memory: 0,
    css_cgroup: 0,
    inode_generation: 0,
    task_tgid: 0,
    task_fs: 0,
    fs_root_dentry: 0,
    dentry_sb: 0,
    sb_list: 0,
    sb_root: 0,
    sb_magic: 0,
    sb_inodes: 0,
    inode_sb_list: 0,
    inode_pages: 0,
    inode_nrpages: 0,
    xa_node_shift: 0,
    xa_node_offset: 0,
    xa_node_parent: 0,
    xa_node_slots: 0,
    pg_dirty_bit: 0,
    pg_writeback_bit: 0,
    pg_active_bit: 0,
};

/// One offset as the loader set it. The volatile read stops the compiler from folding the zero
/// initialiser into the code; reading the one field, not the whole struct, keeps it to one
/// load per use.
macro_rules! offset {
    ($field:ident) => {
        // SAFETY: OFFSETS is a plain static; the volatile read only defeats constant folding.
        unsafe { core::ptr::read_volatile(&raw const $crate::maps::OFFSETS.$field) }
    };
}
pub(crate) use offset;

#[inline(always)]
pub(crate) fn count(stat: Stat) {
    if let Some(slot) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}
