//! A file's path, captured once when a (memcg, file) pair is first seen.
//!
//! `bpf_d_path` is not allowed in tracepoints, so this walks `inode → dentry → d_parent` with a
//! bounded loop. It yields the path from the filesystem's root (userspace maps it onto mounts)
//! and nothing when no dentry is cached.

use aya_ebpf::helpers::bpf_probe_read_kernel_str_bytes;
use memtrace_common::{
    FileEvent, Stat, PATH_DEPTH, PATH_NO_DENTRY, PATH_READ_FAILED, PATH_TOO_DEEP,
};

use crate::{
    kernel::{load, read_ptr},
    maps::{count, offsets, FILE_EVENTS},
};

#[inline(always)]
pub(crate) fn report_file(inode: u64, dev: u32, ino: u64) {
    let Some(mut entry) = FILE_EVENTS.reserve::<FileEvent>(0) else {
        count(Stat::FileEventsLost);
        return;
    };
    let event = entry.as_mut_ptr();
    let off = offsets();
    // SAFETY: the reservation is sized for a FileEvent and exclusively ours until submit.
    unsafe {
        (*event).ino = ino;
        (*event).dev = dev;
        (*event).mode = u32::from(load::<u16>(inode, off.inode_mode));
        (*event).nlink = load::<u32>(inode, off.inode_nlink);
        (*event).rdev = load::<u32>(inode, off.inode_rdev);
        let (depth, flags) = walk(inode, &mut (*event).names);
        (*event).depth = depth;
        (*event).flags = flags;
    }
    entry.submit(0);
}

/// Copies component names leaf first; returns how many and the `PATH_*` flags.
#[inline(always)]
fn walk(inode: u64, names: &mut [[u8; memtrace_common::NAME_LEN]; PATH_DEPTH]) -> (u32, u32) {
    let off = offsets();
    let Ok(alias) = read_ptr(inode, off.inode_dentry) else {
        return (0, PATH_NO_DENTRY);
    };
    let mut dentry = alias - off.dentry_alias as u64;
    for (depth, slot) in names.iter_mut().enumerate() {
        let Ok(parent) = read_ptr(dentry, off.dentry_parent) else {
            return (depth as u32, PATH_READ_FAILED);
        };
        if parent == dentry {
            // The filesystem root is its own parent.
            return (depth as u32, 0);
        }
        let Ok(name) = read_ptr(dentry, off.dentry_name) else {
            return (depth as u32, PATH_READ_FAILED);
        };
        // SAFETY: the helper bounds the copy by the slot and tolerates bad addresses.
        if unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, slot) }.is_err() {
            slot[0] = 0;
        }
        dentry = parent;
    }
    (PATH_DEPTH as u32, PATH_TOO_DEEP)
}
