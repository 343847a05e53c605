//! What the kernel knows of a loaded program (`BPF_OBJ_GET_INFO_BY_FD`): here, the runs it
//! skipped. aya 0.14's `ProgramInfo` does not expose `recursion_misses`, so this is a raw
//! `bpf(2)` call, like `batch.rs`.

use std::io;

use aya_obj::generated::bpf_prog_info;

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// The `info` member of `union bpf_attr`.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// Runs of the program behind `fd` that the kernel skipped because the program was already
/// running on that CPU (Linux 5.12+; 0 before).
pub(crate) fn recursion_misses(fd: i32) -> io::Result<u64> {
    // SAFETY: bpf_prog_info is plain integer data, valid when zeroed.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoAttr {
        bpf_fd: fd as u32,
        info_len: size_of::<bpf_prog_info>() as u32,
        info: &raw mut info as u64,
    };
    // SAFETY: `InfoAttr` is the command's layout; the kernel writes at most `info_len` bytes
    // into `info` and the length into `attr`; both outlive the call.
    unsafe { super::syscall::bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }?;
    Ok(info.recursion_misses)
}
