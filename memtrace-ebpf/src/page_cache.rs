//! Page-cache insertions and removals, aggregated per (charged memcg, file).
//!
//! Each CPU keeps the run of consecutive events for one key in a slot of its own
//! (`PENDING_CACHE`) and adds it to the shared map only when an event for another key comes:
//! a file written, read or truncated page by page costs a few loads per page, not a hash
//! lookup and atomic adds on a shared line. Userspace reads the slots with the map.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::{btf_tracepoint, fentry},
    maps::HashMap,
    programs::{BtfTracePointContext, FEntryContext},
};
use memtrace_common::{CacheCounters, CacheKey, OverflowCounters, OverflowKey, PendingCache, Stat};

use crate::{
    cgroups::{current_epoch, memcg_identity, memcg_identity_uncached, MemcgIdentity},
    kernel::{atomic_add, begin_change, end_change, load, load_ptr, read, ReadFailed},
    maps::{count, offset, CACHE_OVERFLOW, PAGE_CACHE, PAGE_CACHE_B, PENDING_CACHE},
};

/// The low bits of `folio.memcg_data` are flags (kmem/objcg); the rest is the memcg pointer.
const MEMCG_DATA_FLAGS_MASK: u64 = 7;

/// A folio was inserted into a file's page cache (after its memcg charge succeeded).
#[btf_tracepoint(function = "mm_filemap_add_to_page_cache")]
pub(crate) fn filemap_add(ctx: BtfTracePointContext) -> i32 {
    on_folio(&ctx, Direction::Added);
    0
}

/// A folio is leaving a file's page cache; its memcg is still attached at this point.
#[btf_tracepoint(function = "mm_filemap_delete_from_page_cache")]
pub(crate) fn filemap_delete(ctx: BtfTracePointContext) -> i32 {
    on_folio(&ctx, Direction::Removed);
    0
}

/// A folio of the page cache was marked accessed: a read found it there (a hit) or had just
/// read it in (a miss, also counted as added). fentry, so only where function tracing is
/// allowed; the hit ratio is said to be unknown elsewhere.
///
/// fentry programs run with preemption on (migration off), unlike the tracepoint programs: this
/// one must not touch the per-CPU runs or the memcg cache, which a tracepoint program on the
/// same CPU could find half written. It adds to the map entry itself, atomically.
#[fentry(function = "folio_mark_accessed")]
pub(crate) fn folio_accessed(ctx: FEntryContext) -> i32 {
    let folio: u64 = ctx.arg(0);
    // Anonymous and swap-cache folios are marked accessed too: only a file's page cache
    // (a plain `address_space` pointer, none of the low flag bits) is counted. Read as a
    // number: the verifier forbids bit tests on a typed pointer.
    let Ok(mapping) = read::<u64>(folio, offset!(folio_mapping)) else {
        return 0;
    };
    if mapping == 0 || mapping & 3 != 0 {
        return 0;
    }
    let Ok(folio) = read_folio(folio) else {
        return 0;
    };
    let Ok(MemcgIdentity {
        cgroup_id,
        hierarchy,
    }) = memcg_identity_uncached(folio.memcg)
    else {
        return 0;
    };
    let key = CacheKey {
        cgroup_id,
        ino: folio.ino,
        dev: load(folio.sb, offset!(sb_dev)),
        hierarchy,
    };
    if active_half() == 1 {
        add_accessed(&PAGE_CACHE_B, &key, &folio, Stat::KeysInsertedB);
    } else {
        add_accessed(&PAGE_CACHE, &key, &folio, Stat::KeysInsertedA);
    }
    0
}

/// Adds a folio's pages to `key`'s accessed count, making the entry if there is none.
#[inline(always)]
fn add_accessed(
    map: &HashMap<CacheKey, CacheCounters>,
    key: &CacheKey,
    folio: &Folio,
    inserted: Stat,
) {
    if map.get_ptr_mut(key).is_none() {
        let fresh = CacheCounters {
            inode: folio.inode,
            generation: folio.generation,
            ..CacheCounters::default()
        };
        // Racing CPUs: one insert wins, the others add to its entry below. A full map drops
        // the count: hits are a ratio, and the pages themselves are counted elsewhere.
        if map.insert(key, fresh, BPF_NOEXIST as u64).is_ok() {
            count(inserted);
        }
    }
    if let Some(counters) = map.get_ptr_mut(key) {
        // SAFETY: the pointer comes from a map lookup and stays valid for this run.
        unsafe { atomic_add(&raw mut (*counters).pages_accessed, folio.pages) };
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Added,
    Removed,
}

/// What the fast path reads of a folio: enough to tell whether it extends the current run.
struct Folio {
    memcg: u64,
    inode: u64,
    sb: u64,
    ino: u64,
    generation: u64,
    pages: u64,
}

#[inline(always)]
fn on_folio(ctx: &BtfTracePointContext, direction: Direction) {
    let Ok(folio) = read_folio(ctx.arg(0)) else {
        count(Stat::ReadFailed);
        return;
    };
    let half = active_half();
    let Some(run) = PENDING_CACHE.get_ptr_mut(half) else {
        return;
    };
    // SAFETY: this CPU's slot; tracepoint programs run with preemption off, so nothing else
    // touches it until this run ends (userspace only resets a half nobody counts into).
    let run = unsafe { &mut *run };
    match direction {
        Direction::Added => run.add_events += 1,
        Direction::Removed => run.delete_events += 1,
    }
    if folio.memcg == 0 {
        count(Stat::Uncharged);
    }
    let epoch = current_epoch();
    let same_run = run.inode == folio.inode
        && run.memcg == folio.memcg
        && run.sb == folio.sb
        && run.key.ino == folio.ino
        && run.generation == folio.generation
        && run.epoch == epoch;
    if !same_run && start_run(run, &folio, epoch, half).is_err() {
        count(Stat::ReadFailed);
        return;
    }
    match direction {
        Direction::Added => run.pages_added += folio.pages,
        Direction::Removed => {
            run.pages_removed += folio.pages;
            let excess = run.pages_removed.saturating_sub(run.pages_added);
            if excess > run.peak_excess {
                run.peak_excess = excess;
            }
        }
    }
}

/// Which half of the map the programs count into: 0 or 1.
#[inline(always)]
fn active_half() -> u32 {
    u32::from(crate::maps::counting_into_b())
}

#[inline(always)]
fn read_folio(folio: u64) -> Result<Folio, ReadFailed> {
    // The folio is a typed tracepoint argument: every load down to the superblock is a plain,
    // verifier-checked load.
    let mapping = load_ptr(folio, offset!(folio_mapping))?;
    let inode = load_ptr(mapping, offset!(mapping_host))?;
    let sb = load_ptr(inode, offset!(inode_sb))?;
    // The charge lives on the folio, not on the current task: reclaim and writeback run in
    // kernel threads that were never charged for these pages.
    let memcg = load::<u64>(folio, offset!(folio_memcg_data)) & !MEMCG_DATA_FLAGS_MASK;
    let pages = folio_pages(folio);
    Ok(Folio {
        memcg,
        inode,
        sb,
        ino: load(inode, offset!(inode_ino)),
        generation: u64::from(load::<u32>(inode, offset!(inode_generation))),
        pages,
    })
}

/// Pages a folio spans: 1, or 2^order for a large folio (its head has `PG_head` set).
#[inline(always)]
pub(crate) fn folio_pages(folio: u64) -> u64 {
    let flags: u64 = load(folio, offset!(folio_flags));
    if flags & (1u64 << (offset!(pg_head_bit) & 63)) != 0 {
        let order: u8 = load(folio, offset!(folio_order));
        1u64 << (order & 31)
    } else {
        1
    }
}

/// Ends the slot's run (adding it to the map) and starts one for `folio`'s key.
#[inline(always)]
fn start_run(
    run: &mut PendingCache,
    folio: &Folio,
    epoch: u64,
    half: u32,
) -> Result<(), ReadFailed> {
    let MemcgIdentity {
        cgroup_id,
        hierarchy,
    } = memcg_identity(folio.memcg)?;
    if run.inode != 0 {
        // One call per half, so the verifier sees one map at each helper call.
        if half == 1 {
            flush(&PAGE_CACHE_B, run, Stat::KeysInsertedB);
        } else {
            flush(&PAGE_CACHE, run, Stat::KeysInsertedA);
        }
    }
    let changing = begin_change(&mut run.ends);
    run.key = CacheKey {
        cgroup_id,
        ino: folio.ino,
        dev: load(folio.sb, offset!(sb_dev)),
        hierarchy,
    };
    run.memcg = folio.memcg;
    run.inode = folio.inode;
    run.sb = folio.sb;
    run.generation = folio.generation;
    run.epoch = epoch;
    run.pages_added = 0;
    run.pages_removed = 0;
    run.peak_excess = 0;
    end_change(&mut run.begins, changing);
    Ok(())
}

/// Adds a finished run to its entry in the map (counting a new key as `inserted`), or to its
/// memcg's overflow entry when the map is full.
#[inline(always)]
fn flush(map: &HashMap<CacheKey, CacheCounters>, run: &PendingCache, inserted: Stat) {
    if let Some(counters) = map.get_ptr_mut(run.key) {
        add_run(counters, run);
        return;
    }
    // The inode's address lets userspace ask for the file's path later (`name_inode`).
    let fresh = run_counters(run);
    if map.insert(run.key, fresh, BPF_NOEXIST as u64).is_ok() {
        count(inserted);
        return;
    }
    // Either another CPU inserted the key first (then add to its entry) or the map is full.
    match map.get_ptr_mut(run.key) {
        Some(counters) => add_run(counters, run),
        None => overflow(run),
    }
}

/// Counts a run the map had no room for under its memcg alone.
#[inline(always)]
fn overflow(run: &PendingCache) {
    let key = OverflowKey {
        cgroup_id: run.key.cgroup_id,
        hierarchy: run.key.hierarchy,
        _pad: 0,
    };
    if CACHE_OVERFLOW.get_ptr_mut(key).is_none() {
        // Racing CPUs: one insert wins, the others find its entry below.
        let _ = CACHE_OVERFLOW.insert(key, OverflowCounters::default(), BPF_NOEXIST as u64);
    }
    match CACHE_OVERFLOW.get_ptr_mut(key) {
        Some(counters) => {
            // SAFETY: the pointer comes from a map lookup and stays valid for this run.
            unsafe {
                atomic_add(&raw mut (*counters).pages_added, run.pages_added);
                atomic_add(&raw mut (*counters).pages_removed, run.pages_removed);
                atomic_add(&raw mut (*counters).runs, 1);
            }
            count(Stat::Overflowed);
        }
        None => count(Stat::MapFull),
    }
}

#[inline(always)]
fn run_counters(run: &PendingCache) -> CacheCounters {
    CacheCounters {
        pages_added: run.pages_added,
        pages_removed: run.pages_removed,
        inode: run.inode,
        // A run that begins with removals: these pages predate the entry.
        max_deficit: run.peak_excess,
        generation: run.generation,
        pages_accessed: 0,
    }
}

#[inline(always)]
fn add_run(counters: *mut CacheCounters, run: &PendingCache) {
    // SAFETY: the pointer comes from a map lookup and stays valid for this program run.
    unsafe {
        // Racing CPUs may make this off by a run; it only decides whether userspace
        // measures the file.
        let raised = (*counters).deficit_after_run(run.peak_excess);
        atomic_add(&raw mut (*counters).pages_added, run.pages_added);
        atomic_add(&raw mut (*counters).pages_removed, run.pages_removed);
        if let Some(deficit) = raised {
            (*counters).max_deficit = deficit;
        }
        // A new file under a reused inode number: remember the new incarnation (a plain
        // store; racing writers store the same values).
        if run.pages_added > 0
            && ((*counters).generation != run.generation || (*counters).inode != run.inode)
        {
            (*counters).inode = run.inode;
            (*counters).generation = run.generation;
        }
    }
}
