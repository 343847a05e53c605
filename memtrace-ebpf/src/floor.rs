//! Empty programs on the hooks memtrace uses, for `memtrace calibrate`: what attaching
//! anything to these hooks costs on this kernel, before any work is done. The benchmark
//! measures memtrace against this floor. Userspace attaches them by the same hook table and
//! the same fallback rules as the real programs, so the floor has exactly memtrace's hooks.

use aya_ebpf::{
    macros::{btf_tracepoint, fentry, fexit},
    programs::{BtfTracePointContext, FEntryContext, FExitContext},
};

#[btf_tracepoint(function = "mm_filemap_add_to_page_cache")]
pub(crate) fn floor_add(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "mm_filemap_delete_from_page_cache")]
pub(crate) fn floor_delete(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "cgroup_mkdir")]
pub(crate) fn floor_cgroup_mkdir(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "cgroup_rmdir")]
pub(crate) fn floor_cgroup_rmdir(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[fexit(function = "vfs_write")]
pub(crate) fn floor_vfs_write(_ctx: FExitContext) -> i32 {
    0
}

#[btf_tracepoint(function = "writeback_dirty_folio")]
pub(crate) fn floor_dirty(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[fentry(function = "folio_mark_accessed")]
pub(crate) fn floor_accessed(_ctx: FEntryContext) -> i32 {
    0
}
