//! Empty programs on the hooks memtrace uses, for `memtrace calibrate`: what attaching
//! anything to these tracepoints costs on this kernel, before any work is done. The benchmark
//! measures memtrace against this floor.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

#[btf_tracepoint(function = "mm_filemap_add_to_page_cache")]
pub fn floor_add(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "mm_filemap_delete_from_page_cache")]
pub fn floor_delete(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "writeback_dirty_folio")]
pub fn floor_dirty(_ctx: BtfTracePointContext) -> i32 {
    0
}
