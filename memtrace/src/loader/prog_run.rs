//! Running a loaded program on demand (`BPF_PROG_RUN`, Linux 5.10+ for raw tracepoints): how
//! userspace asks the kernel for a file's path. aya 0.14 has no API for it, so this is a raw
//! `bpf(2)` call, like `batch.rs`.

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
};

use aya::programs::ProgramFd;

const BPF_PROG_RUN: libc::c_long = 10;

/// The `test` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// Runs raw-tracepoint program `program` once with `args` as its arguments; returns what the
/// program returned.
pub(crate) fn run_raw_tracepoint(program: &ProgramFd, args: &[u64]) -> io::Result<u32> {
    let mut attr = TestRunAttr {
        prog_fd: program.as_fd().as_raw_fd() as u32,
        ctx_size_in: size_of_val(args) as u32,
        ctx_in: args.as_ptr() as u64,
        ..TestRunAttr::default()
    };
    // SAFETY: `TestRunAttr` is the command's layout; the kernel reads `args` (size given) and
    // writes `retval` into `attr`; both outlive the call.
    unsafe { super::syscall::bpf(BPF_PROG_RUN, &mut attr) }?;
    Ok(attr.retval)
}
