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
    cgroups::{
        css_identity, current_epoch, current_memory_css, current_task, memory_css, MemcgIdentity,
    },
    kernel::{atomic_add, begin_change, end_change, load, load_ptr, ReadFailed},
    maps::{count, counting_into_b, offset, PENDING_WRITE, WRITERS, WRITERS_B},
    page_cache::folio_pages,
};

const S_IFMT: u16 = 0o170000;
const S_IFREG: u16 = 0o100000;

/// `ssize_t vfs_write(struct file *, const char __user *, size_t, loff_t *)`, after it ran.
#[fexit(function = "vfs_write")]
pub(crate) fn vfs_write_exit(ctx: FExitContext) -> i32 {
    let file: u64 = ctx.arg(0);
    let written: i64 = ctx.arg(4);
    if written > 0 {
        if let Ok(inode) = load_ptr(file, offset!(file_inode)) {
            record(inode, written as u64);
        }
    }
    0
}

/// A clean folio became dirty (`writeback_dirty_folio(folio, mapping)`). Consecutive folios
/// of one writer in one file are summed in this CPU's `PENDING_WRITE` slot and added to the
/// map when another writer or file comes, so a file written page by page costs a few loads
/// per page.
#[btf_tracepoint(function = "writeback_dirty_folio")]
pub(crate) fn dirty_folio(ctx: BtfTracePointContext) -> i32 {
    let folio: u64 = ctx.arg(0);
    let mapping: u64 = ctx.arg(1);
    // The verifier types `mapping` as maybe-NULL and forbids arithmetic on it until checked.
    if mapping == 0 {
        return 0;
    }
    let Ok(inode) = load_ptr(mapping, offset!(mapping_host)) else {
        return 0;
    };
    let pages = folio_pages(folio);
    let Some(run) = PENDING_WRITE.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot; tracepoint programs run with preemption off, so nothing else
    // touches it until this run ends.
    let run = unsafe { &mut *run };
    let task = current_task();
    let Ok(css) = memory_css(task) else {
        count(Stat::ReadFailed);
        return 0;
    };
    // A load, where `bpf_get_current_pid_tgid` would be a helper call.
    let tgid: u32 = load(task, offset!(task_tgid));
    let ino: u64 = load(inode, offset!(inode_ino));
    let epoch = current_epoch();
    let same_run = run.inode == inode
        && run.css == css
        && run.key.tgid == tgid
        && run.key.ino == ino
        && run.epoch == epoch;
    if !same_run {
        let key = match writer_key(inode, css_identity(css), tgid) {
            Ok(Some(key)) => key,
            // Not a regular file (a block device's cache): not a write to report.
            Ok(None) => return 0,
            Err(ReadFailed) => {
                count(Stat::ReadFailed);
                return 0;
            }
        };
        if run.inode != 0 {
            add(&run.key, run.stats.bytes, run.stats.calls, run.stats.comm);
        }
        let changing = begin_change(&mut run.ends);
        run.key = key;
        run.inode = inode;
        run.css = css;
        run.epoch = epoch;
        run.stats = WriterStats {
            bytes: 0,
            calls: 0,
            comm: bpf_get_current_comm().unwrap_or([0; 16]),
        };
        end_change(&mut run.begins, changing);
    }
    run.stats.bytes += pages * 4096;
    run.stats.calls += 1;
    0
}

#[inline(always)]
fn record(inode: u64, bytes: u64) {
    let key = current_memory_css().and_then(|css| {
        writer_key(
            inode,
            css_identity(css),
            (bpf_get_current_pid_tgid() >> 32) as u32,
        )
    });
    match key {
        // The name is taken when the process first writes the file: a helper call per write
        // would cost more than the rest of the program.
        Ok(Some(key)) => add_with(&key, bytes, 1, || bpf_get_current_comm().unwrap_or([0; 16])),
        Ok(None) => {}
        Err(ReadFailed) => count(Stat::ReadFailed),
    }
}

/// The writer's key for a regular file; `None` for pipes, sockets, terminals and block
/// devices, whose writes are not a file's page cache.
#[inline(always)]
fn writer_key(
    inode: u64,
    writer: Result<MemcgIdentity, ReadFailed>,
    tgid: u32,
) -> Result<Option<WriterKey>, ReadFailed> {
    let mode: u16 = load(inode, offset!(inode_mode));
    if mode & S_IFMT != S_IFREG {
        return Ok(None);
    }
    let ino: u64 = load(inode, offset!(inode_ino));
    let sb = load_ptr(inode, offset!(inode_sb))?;
    let dev: u32 = load(sb, offset!(sb_dev));
    let MemcgIdentity {
        cgroup_id,
        hierarchy,
    } = writer?;
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
fn add(key: &WriterKey, bytes: u64, calls: u64, comm: [u8; 16]) {
    add_with(key, bytes, calls, || comm)
}

#[inline(always)]
fn add_with(key: &WriterKey, bytes: u64, calls: u64, comm: impl FnOnce() -> [u8; 16]) {
    let writers = if counting_into_b() {
        &WRITERS_B
    } else {
        &WRITERS
    };
    if let Some(stats) = writers.get_ptr_mut(key) {
        // SAFETY: a live map value; concurrent writers of one file add atomically.
        unsafe {
            atomic_add(&raw mut (*stats).bytes, bytes);
            atomic_add(&raw mut (*stats).calls, calls);
        }
        return;
    }
    let fresh = WriterStats {
        bytes,
        calls,
        comm: comm(),
    };
    if writers.insert(key, fresh, BPF_NOEXIST as u64).is_err() {
        match writers.get_ptr_mut(key) {
            // SAFETY: as above.
            Some(stats) => unsafe {
                atomic_add(&raw mut (*stats).bytes, bytes);
                atomic_add(&raw mut (*stats).calls, calls);
            },
            None => count(Stat::WritersMapFull),
        }
    }
}
