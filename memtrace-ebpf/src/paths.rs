//! A file's path, found when userspace asks for it.
//!
//! `bpf_d_path` is not allowed in tracepoints, so this walks `inode → dentry → d_parent`. It
//! stays off the hot path, where a burst of new files would outrun any fixed-size record of
//! names: the page-cache programs only remember the inode's address in the map entry, and
//! userspace runs `name_inode` (never attached: run with `BPF_PROG_RUN`) for the files it
//! shows. The walk is long enough for any real path (128 components, 8 KiB of text) and copies
//! every name whole, whatever its bytes.

use aya_ebpf::{
    helpers::generated::bpf_probe_read_kernel_str, macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use memtrace_common::{
    InodeName, NAME_COMPONENT_MAX, NAME_MAX_DEPTH, NAME_TEXT_BYTES, PATH_NO_DENTRY,
    PATH_READ_FAILED, PATH_TOO_DEEP, PATH_TOO_LONG,
};

use crate::{
    kernel::{read, read_ptr},
    maps::{offset, NAME_BUF},
};

/// The inode at that address is not (dev, ino) any more.
const STALE: u32 = 1;
/// The answer buffer is missing (cannot happen with a well-built object).
const NO_BUFFER: u32 = 2;

/// Args: the inode's address, its dev and its ino, as the page-cache map recorded them.
/// Fills `NAME_BUF[0]`; returns 0, or why not.
#[raw_tracepoint(tracepoint = "memtrace_name_inode")]
pub(crate) fn name_inode(ctx: RawTracePointContext) -> i32 {
    let inode: u64 = ctx.arg(0);
    let dev: u64 = ctx.arg(1);
    let ino: u64 = ctx.arg(2);
    let Some(name) = NAME_BUF.get_ptr_mut(0) else {
        return NO_BUFFER as i32;
    };
    // SAFETY: the map value is ours for this run (userspace runs this program alone) and big
    // enough for an InodeName.
    let status = unsafe { fill(&mut *name, inode, dev as u32, ino) };
    // SAFETY: as above.
    unsafe { (*name).status = status };
    status as i32
}

#[inline(always)]
fn fill(name: &mut InodeName, inode: u64, dev: u32, ino: u64) -> u32 {
    // The address came from userspace and the inode may be gone: check it is still the file.
    let same = read::<u64>(inode, offset!(inode_ino)).is_ok_and(|i| i == ino)
        && read_ptr(inode, offset!(inode_sb))
            .and_then(|sb| read::<u32>(sb, offset!(sb_dev)))
            .is_ok_and(|d| d == dev);
    if !same {
        return STALE;
    }
    name.ino = ino;
    name.dev = dev;
    name.mode = u32::from(read::<u16>(inode, offset!(inode_mode)).unwrap_or(0));
    name.nlink = read::<u32>(inode, offset!(inode_nlink)).unwrap_or(0);
    name.rdev = read::<u32>(inode, offset!(inode_rdev)).unwrap_or(0);
    let (depth, used, flags) = walk(name, inode);
    name.depth = depth;
    name.used = used;
    name.flags = flags;
    0
}

/// Copies component names leaf first, each NUL-terminated; returns how many, the bytes used
/// and the `PATH_*` flags.
#[inline(always)]
fn walk(name: &mut InodeName, inode: u64) -> (u32, u32, u32) {
    let Ok(alias) = read_ptr(inode, offset!(inode_dentry)) else {
        return (0, 0, PATH_NO_DENTRY);
    };
    let mut dentry = alias - offset!(dentry_alias) as u64;
    let mut used: u32 = 0;
    for depth in 0..NAME_MAX_DEPTH {
        let Ok(parent) = read_ptr(dentry, offset!(dentry_parent)) else {
            return (depth, used, PATH_READ_FAILED);
        };
        if parent == dentry {
            // The filesystem root is its own parent.
            return (depth, used, 0);
        }
        let Ok(component) = read_ptr(dentry, offset!(dentry_name)) else {
            return (depth, used, PATH_READ_FAILED);
        };
        if used as usize >= NAME_TEXT_BYTES {
            return (depth, used, PATH_TOO_LONG);
        }
        // Masked so the verifier sees the copy stay inside the buffer's spare room.
        let at = (used as usize) & (NAME_TEXT_BYTES - 1);
        // SAFETY: `at + NAME_COMPONENT_MAX` is within `text`; the helper bounds the copy and
        // tolerates bad source addresses.
        let copied = unsafe {
            bpf_probe_read_kernel_str(
                name.text.as_mut_ptr().add(at).cast(),
                NAME_COMPONENT_MAX as u32,
                component as *const _,
            )
        };
        if copied <= 0 {
            return (depth, used, PATH_READ_FAILED);
        }
        used += copied as u32;
        dentry = parent;
    }
    (NAME_MAX_DEPTH, used, PATH_TOO_DEEP)
}
