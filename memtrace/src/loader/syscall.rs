//! The bpf(2) system call, for the commands aya does not wrap (batch reads, program test runs,
//! program info fields it does not expose).

use std::io;

/// Calls bpf(2) with `command` and its attribute block `attr`; a negative return is the
/// thread's errno.
///
/// # Safety
/// `A` must be the kernel's attribute layout for `command`, and every buffer `attr` points at
/// must be valid for what the kernel reads and writes during the call.
pub(super) unsafe fn bpf<A>(command: libc::c_long, attr: &mut A) -> io::Result<libc::c_long> {
    // SAFETY: the caller promises the layout and the buffers; the size passed is `A`'s.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr as *mut A,
            size_of::<A>() as u32,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}
