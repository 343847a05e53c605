//! Page-cache insertions and removals, aggregated per (charged memcg, file).

use aya_ebpf::{
    bindings::BPF_NOEXIST, macros::btf_tracepoint, maps::HashMap, programs::BtfTracePointContext,
};
use memtrace_common::{CacheCounters, CacheKey, Stat};

use crate::{
    cgroups::{memcg_identity, MemcgIdentity},
    kernel::{atomic_add, load, load_ptr, ReadFailed},
    maps::{count, counting_into_b, offsets, PAGE_CACHE, PAGE_CACHE_B},
};

/// The low bits of `folio.memcg_data` are flags (kmem/objcg); the rest is the memcg pointer.
const MEMCG_DATA_FLAGS_MASK: u64 = 7;

/// A folio was inserted into a file's page cache (after its memcg charge succeeded).
#[btf_tracepoint(function = "mm_filemap_add_to_page_cache")]
pub(crate) fn filemap_add(ctx: BtfTracePointContext) -> i32 {
    count(Stat::AddEvents);
    on_folio(&ctx, Direction::Added);
    0
}

/// A folio is leaving a file's page cache; its memcg is still attached at this point.
#[btf_tracepoint(function = "mm_filemap_delete_from_page_cache")]
pub(crate) fn filemap_delete(ctx: BtfTracePointContext) -> i32 {
    count(Stat::DeleteEvents);
    on_folio(&ctx, Direction::Removed);
    0
}

#[derive(Clone, Copy)]
enum Direction {
    Added,
    Removed,
}

#[inline(always)]
fn on_folio(ctx: &BtfTracePointContext, direction: Direction) {
    let folio: u64 = ctx.arg(0);
    match folio_key(folio) {
        Ok((key, pages, inode)) => {
            let generation = u64::from(load::<u32>(inode, offsets().inode_generation));
            let identity = Identity { inode, generation };
            // One call per half, so the verifier sees one map at each helper call.
            if counting_into_b() {
                account(&PAGE_CACHE_B, &key, pages, identity, direction)
            } else {
                account(&PAGE_CACHE, &key, pages, identity, direction)
            }
        }
        Err(ReadFailed) => count(Stat::ReadFailed),
    }
}

/// Who is charged for this folio, which file it caches, how many pages it spans, and the inode.
#[inline(always)]
fn folio_key(folio: u64) -> Result<(CacheKey, u64, u64), ReadFailed> {
    let off = offsets();
    // The folio is a typed tracepoint argument: every load down to the superblock is a plain,
    // verifier-checked load.
    let mapping = load_ptr(folio, off.folio_mapping)?;
    let inode = load_ptr(mapping, off.mapping_host)?;
    let ino: u64 = load(inode, off.inode_ino);
    let sb = load_ptr(inode, off.inode_sb)?;
    let dev: u32 = load(sb, off.sb_dev);

    // The charge lives on the folio, not on the current task: reclaim and writeback run in
    // kernel threads that were never charged for these pages.
    let memcg = load::<u64>(folio, off.folio_memcg_data) & !MEMCG_DATA_FLAGS_MASK;
    let MemcgIdentity {
        cgroup_id,
        hierarchy,
    } = if memcg == 0 {
        count(Stat::Uncharged);
        MemcgIdentity {
            cgroup_id: 0,
            hierarchy: 0,
        }
    } else {
        memcg_identity(memcg)?
    };

    let flags: u64 = load(folio, off.folio_flags);
    let pages = if flags & (1u64 << (off.pg_head_bit & 63)) != 0 {
        let order: u8 = load(folio, off.folio_order);
        1u64 << (order & 31)
    } else {
        1
    };

    Ok((
        CacheKey {
            cgroup_id,
            ino,
            dev,
            hierarchy,
        },
        pages,
        inode,
    ))
}

/// Which incarnation of the file an event is for.
#[derive(Clone, Copy)]
struct Identity {
    inode: u64,
    generation: u64,
}

#[inline(always)]
fn account(
    map: &HashMap<CacheKey, CacheCounters>,
    key: &CacheKey,
    pages: u64,
    identity: Identity,
    direction: Direction,
) {
    if let Some(counters) = map.get_ptr_mut(key) {
        bump(counters, pages, identity, direction);
        return;
    }
    // The inode's address lets userspace ask for the file's path later (`name_inode`).
    let mut fresh = CacheCounters {
        inode: identity.inode,
        generation: identity.generation,
        ..CacheCounters::default()
    };
    match direction {
        Direction::Added => fresh.pages_added = pages,
        Direction::Removed => {
            // The first event of this entry is a removal: these pages predate the entry.
            fresh.pages_removed = pages;
            fresh.max_deficit = pages;
        }
    }
    if map.insert(key, fresh, BPF_NOEXIST as u64).is_ok() {
        return;
    }
    // Either another CPU inserted the key first (then add to its entry) or the map is full.
    match map.get_ptr_mut(key) {
        Some(counters) => bump(counters, pages, identity, direction),
        None => count(Stat::MapFull),
    }
}

#[inline(always)]
fn bump(counters: *mut CacheCounters, pages: u64, identity: Identity, direction: Direction) {
    // SAFETY: the pointer comes from a map lookup and stays valid for this program run.
    unsafe {
        match direction {
            Direction::Added => {
                atomic_add(&raw mut (*counters).pages_added, pages);
                // A new file under a reused inode number: remember the new incarnation (a
                // plain store; racing writers store the same values).
                if (*counters).generation != identity.generation
                    || (*counters).inode != identity.inode
                {
                    (*counters).inode = identity.inode;
                    (*counters).generation = identity.generation;
                }
            }
            Direction::Removed => {
                atomic_add(&raw mut (*counters).pages_removed, pages);
                // More removed than added: cache older than this entry is leaving. Userspace
                // weighs it against what it knew was resident (racing updates may undercount
                // the maximum by a folio; it only decides whether to measure).
                let deficit = (*counters)
                    .pages_removed
                    .saturating_sub((*counters).pages_added);
                if deficit > (*counters).max_deficit {
                    (*counters).max_deficit = deficit;
                }
            }
        }
    }
}
