//! Who writes which file: bytes per (writer's memcg, file, process).
//!
//! Preferred: fexit on `vfs_write`, which sees every byte written through write(2) and friends.
//! Kernels that refuse fentry/fexit (function tracing locked down) get the fallback: the
//! `writeback_dirty_folio` BTF tracepoint, which sees folios turning dirty, with the writer as
//! the current task. Userspace attaches one or the other and says which.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::{btf_tracepoint, fexit},
    programs::{BtfTracePointContext, FExitContext},
};
use memtrace_common::{Stat, WriterKey, WriterStats};

use crate::{
    cgroups::{current_memcg_identity, MemcgIdentity},
    kernel::{atomic_add, load, load_ptr, ReadFailed},
    maps::{count, offsets, WRITERS},
};

const S_IFMT: u16 = 0o170000;
const S_IFREG: u16 = 0o100000;

/// `ssize_t vfs_write(struct file *, const char __user *, size_t, loff_t *)`, after it ran.
#[fexit(function = "vfs_write")]
pub(crate) fn vfs_write_exit(ctx: FExitContext) -> i32 {
    let file: u64 = ctx.arg(0);
    let written: i64 = ctx.arg(4);
    if written > 0 {
        let off = offsets();
        if let Ok(inode) = load_ptr(file, off.file_inode) {
            record(inode, written as u64);
        }
    }
    0
}

/// A clean folio became dirty (`writeback_dirty_folio(folio, mapping)`).
#[btf_tracepoint(function = "writeback_dirty_folio")]
pub(crate) fn dirty_folio(ctx: BtfTracePointContext) -> i32 {
    let folio: u64 = ctx.arg(0);
    let mapping: u64 = ctx.arg(1);
    // The verifier types `mapping` as maybe-NULL and forbids arithmetic on it until checked.
    if mapping == 0 {
        return 0;
    }
    let off = offsets();
    let Ok(inode) = load_ptr(mapping, off.mapping_host) else {
        return 0;
    };
    let flags: u64 = load(folio, off.folio_flags);
    let pages = if flags & (1u64 << (off.pg_head_bit & 63)) != 0 {
        1u64 << (load::<u8>(folio, off.folio_order) & 31)
    } else {
        1
    };
    record(inode, pages * 4096);
    0
}

#[inline(always)]
fn record(inode: u64, bytes: u64) {
    match writer_key(inode) {
        Ok(Some(key)) => add(&key, bytes),
        Ok(None) => {}
        Err(ReadFailed) => count(Stat::ReadFailed),
    }
}

/// The writer's key for a regular file; `None` for pipes, sockets and terminals, which are not
/// page cache.
#[inline(always)]
fn writer_key(inode: u64) -> Result<Option<WriterKey>, ReadFailed> {
    let off = offsets();
    let mode: u16 = load(inode, off.inode_mode);
    if mode & S_IFMT != S_IFREG {
        return Ok(None);
    }
    let ino: u64 = load(inode, off.inode_ino);
    let sb = load_ptr(inode, off.inode_sb)?;
    let dev: u32 = load(sb, off.sb_dev);
    let MemcgIdentity {
        cgroup_id,
        hierarchy,
    } = current_memcg_identity()?;
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    Ok(Some(WriterKey {
        cgroup_id,
        ino,
        dev,
        hierarchy,
        tgid,
        _pad: 0,
    }))
}

#[inline(always)]
fn add(key: &WriterKey, bytes: u64) {
    if let Some(stats) = WRITERS.get_ptr_mut(key) {
        // SAFETY: a live map value; concurrent writers of one file add atomically.
        // The name is taken when the process first writes the file: a helper call per write
        // would cost more than the rest of the program.
        unsafe {
            atomic_add(&raw mut (*stats).bytes, bytes);
            atomic_add(&raw mut (*stats).calls, 1);
        }
        return;
    }
    let fresh = WriterStats {
        bytes,
        calls: 1,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    if WRITERS.insert(key, fresh, BPF_NOEXIST as u64).is_err() {
        match WRITERS.get_ptr_mut(key) {
            // SAFETY: as above.
            Some(stats) => unsafe {
                atomic_add(&raw mut (*stats).bytes, bytes);
                atomic_add(&raw mut (*stats).calls, 1);
            },
            None => count(Stat::WritersMapFull),
        }
    }
}
