//! Memory cgroup identity, and cgroup lifecycle notices for userspace's id → path table.

use aya_ebpf::{
    helpers::{bpf_get_current_task_btf, bpf_probe_read_kernel_str_bytes},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use memtrace_common::{CgroupEvent, CgroupEventKind, Stat};

use crate::{
    kernel::{atomic_add, load, load_ptr, read, read_ptr, ReadFailed},
    maps::{
        count, offset, MemcgCacheEntry, CGROUP_EVENTS, MEMCG_CACHE, MEMCG_CACHE_SLOTS, MEMCG_EPOCH,
    },
};

pub(crate) struct MemcgIdentity {
    pub cgroup_id: u64,
    pub hierarchy: u32,
}

impl MemcgIdentity {
    /// Pages charged to no memcg (memcg disabled, or the root's before it is set up).
    const UNCHARGED: Self = Self {
        cgroup_id: 0,
        hierarchy: 0,
    };
}

/// `memcg->css.cgroup->kn->id` and `->root->hierarchy_id`, for a memcg pointer decoded from
/// `folio.memcg_data` (a plain number to the verifier, so every read is a helper call). A
/// per-CPU cache keyed by the pointer makes the usual case free of helper calls; entries from
/// an older epoch (see `MEMCG_EPOCH`) are walked again, so a reused address is never trusted.
/// A null memcg is [`MemcgIdentity::UNCHARGED`].
#[inline(always)]
pub(crate) fn memcg_identity(memcg: u64) -> Result<MemcgIdentity, ReadFailed> {
    if memcg == 0 {
        return Ok(MemcgIdentity::UNCHARGED);
    }
    let epoch = current_epoch();
    let slot = ((memcg >> 10) ^ (memcg >> 20)) as u32 % MEMCG_CACHE_SLOTS;
    let cached = MEMCG_CACHE.get_ptr_mut(slot);
    if let Some(entry) = cached {
        // SAFETY: a per-CPU slot, only this CPU touches it while the program runs.
        let entry = unsafe { &*entry };
        if entry.memcg == memcg && entry.epoch == epoch {
            return Ok(MemcgIdentity {
                cgroup_id: entry.cgroup_id,
                hierarchy: entry.hierarchy,
            });
        }
    }
    let MemcgIdentity {
        cgroup_id,
        hierarchy,
    } = memcg_identity_uncached(memcg)?;
    if let Some(entry) = cached {
        // SAFETY: as above.
        unsafe {
            *entry = MemcgCacheEntry {
                memcg,
                epoch,
                cgroup_id,
                hierarchy,
                _pad: 0,
            }
        };
    }
    Ok(MemcgIdentity {
        cgroup_id,
        hierarchy,
    })
}

/// `memcg_identity` without the per-CPU cache: for programs that may be preempted (fentry),
/// which must not write a slot a tracepoint program on the same CPU may be reading.
#[inline(always)]
pub(crate) fn memcg_identity_uncached(memcg: u64) -> Result<MemcgIdentity, ReadFailed> {
    if memcg == 0 {
        return Ok(MemcgIdentity::UNCHARGED);
    }
    let cgroup = read_ptr(memcg, offset!(memcg_cgroup))?;
    let kn = read_ptr(cgroup, offset!(cgroup_kn))?;
    let cgroup_id: u64 = read(kn, offset!(kernfs_id))?;
    let root = read_ptr(cgroup, offset!(cgroup_root))?;
    let hierarchy: i32 = read(root, offset!(root_hierarchy_id))?;
    Ok(MemcgIdentity {
        cgroup_id,
        hierarchy: hierarchy as u32,
    })
}

#[inline(always)]
pub(crate) fn current_epoch() -> u64 {
    MEMCG_EPOCH.get(0).copied().unwrap_or(0)
}

/// The memory css of the current task: `current->cgroups->subsys[memory_cgrp_id]`. On v2 that
/// css is the nearest ancestor with memory enabled, which is the task's memcg. The task pointer
/// is BTF-typed, so the walk is plain loads.
#[inline(always)]
pub(crate) fn current_memory_css() -> Result<u64, ReadFailed> {
    memory_css(current_task())
}

/// The current task, as a BTF-typed pointer.
#[inline(always)]
pub(crate) fn current_task() -> u64 {
    // SAFETY: the helper returns the current task as a BTF-typed pointer.
    unsafe { bpf_get_current_task_btf() as u64 }
}

/// The memory css of `task` (BTF-typed), as `current_memory_css`.
#[inline(always)]
pub(crate) fn memory_css(task: u64) -> Result<u64, ReadFailed> {
    let css_set = load_ptr(task, offset!(task_cgroups))?;
    load_ptr(css_set, offset!(css_set_memory))
}

/// Identity of the cgroup of a memory css from `current_memory_css`.
#[inline(always)]
pub(crate) fn css_identity(css: u64) -> Result<MemcgIdentity, ReadFailed> {
    let cgroup = load_ptr(css, offset!(css_cgroup))?;
    cgroup_identity(cgroup)
}

/// Identity of a cgroup reached through BTF-typed pointers.
#[inline(always)]
fn cgroup_identity(cgroup: u64) -> Result<MemcgIdentity, ReadFailed> {
    let kn = load_ptr(cgroup, offset!(cgroup_kn))?;
    let cgroup_id: u64 = load(kn, offset!(kernfs_id));
    let root = load_ptr(cgroup, offset!(cgroup_root))?;
    let hierarchy: i32 = load(root, offset!(root_hierarchy_id));
    Ok(MemcgIdentity {
        cgroup_id,
        hierarchy: hierarchy as u32,
    })
}

#[btf_tracepoint(function = "cgroup_mkdir")]
pub(crate) fn cgroup_mkdir(ctx: BtfTracePointContext) -> i32 {
    // A new memcg may sit where a freed one was: cached identities must be checked again.
    if let Some(epoch) = MEMCG_EPOCH.get_ptr_mut(0) {
        // SAFETY: a live array slot; CPUs bump it concurrently, hence the atomic add.
        unsafe { atomic_add(epoch, 1) };
    }
    notify(&ctx, CgroupEventKind::Created);
    0
}

#[btf_tracepoint(function = "cgroup_rmdir")]
pub(crate) fn cgroup_rmdir(ctx: BtfTracePointContext) -> i32 {
    notify(&ctx, CgroupEventKind::Removed);
    0
}

#[inline(always)]
fn notify(ctx: &BtfTracePointContext, kind: CgroupEventKind) {
    let cgroup: u64 = ctx.arg(0);
    let path: *const u8 = ctx.arg(1);
    let Ok(MemcgIdentity {
        cgroup_id,
        hierarchy,
    }) = cgroup_identity(cgroup)
    else {
        count(Stat::ReadFailed);
        return;
    };
    let Some(mut entry) = CGROUP_EVENTS.reserve::<CgroupEvent>(0) else {
        count(Stat::CgroupEventsLost);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: the reservation is sized for a CgroupEvent and exclusively ours until submit.
    unsafe {
        (*event).cgroup_id = cgroup_id;
        (*event).hierarchy = hierarchy;
        (*event).kind = kind as u32;
        let dest = &mut (*event).path;
        if bpf_probe_read_kernel_str_bytes(path, dest).is_err() {
            dest[0] = 0;
        }
    }
    entry.submit(0);
}
