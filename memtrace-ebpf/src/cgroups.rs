//! Memory cgroup identity, and cgroup lifecycle notices for userspace's id → path table.

use aya_ebpf::{
    helpers::bpf_probe_read_kernel_str_bytes, macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use memtrace_common::{CgroupEvent, CgroupEventKind, Stat};

use crate::{
    kernel::{read, read_ptr, ReadFailed},
    maps::{count, offsets, CGROUP_EVENTS},
};

pub struct MemcgIdentity {
    pub cgroup_id: u64,
    pub hierarchy: u32,
}

/// `memcg->css.cgroup->kn->id` and `->root->hierarchy_id`.
#[inline(always)]
pub fn memcg_identity(memcg: u64) -> Result<MemcgIdentity, ReadFailed> {
    let cgroup = read_ptr(memcg, offsets().memcg_cgroup)?;
    cgroup_identity(cgroup)
}

/// The memcg of the current task: `current->cgroups->subsys[memory_cgrp_id]->cgroup`. On v2
/// that css is the nearest ancestor with memory enabled, which is the task's memcg.
#[inline(always)]
pub fn current_memcg_identity() -> Result<MemcgIdentity, ReadFailed> {
    let off = offsets();
    // SAFETY: the helper returns the current task pointer; it is only read through probes.
    let task = unsafe { aya_ebpf::helpers::bpf_get_current_task() };
    let css_set = read_ptr(task, off.task_cgroups)?;
    let css = read_ptr(css_set, off.css_set_memory)?;
    let cgroup = read_ptr(css, off.css_cgroup)?;
    cgroup_identity(cgroup)
}

#[inline(always)]
fn cgroup_identity(cgroup: u64) -> Result<MemcgIdentity, ReadFailed> {
    let off = offsets();
    let kn = read_ptr(cgroup, off.cgroup_kn)?;
    let cgroup_id: u64 = read(kn, off.kernfs_id)?;
    let root = read_ptr(cgroup, off.cgroup_root)?;
    let hierarchy: i32 = read(root, off.root_hierarchy_id)?;
    Ok(MemcgIdentity {
        cgroup_id,
        hierarchy: hierarchy as u32,
    })
}

#[btf_tracepoint(function = "cgroup_mkdir")]
pub fn cgroup_mkdir(ctx: BtfTracePointContext) -> i32 {
    notify(&ctx, CgroupEventKind::Created);
    0
}

#[btf_tracepoint(function = "cgroup_rmdir")]
pub fn cgroup_rmdir(ctx: BtfTracePointContext) -> i32 {
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
