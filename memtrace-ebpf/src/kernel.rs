//! Reading kernel structs through offsets resolved at load time.

use aya_ebpf::helpers::bpf_probe_read_kernel;

/// A kernel address read failed: the pointer chain was torn or freed under us.
pub struct ReadFailed;

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
pub fn read<T>(base: u64, offset: u32) -> Result<T, ReadFailed> {
    // SAFETY: bpf_probe_read_kernel tolerates any address; a bad one returns an error.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }.map_err(|_| ReadFailed)
}

/// Reads a pointer at `base + offset` and fails on NULL, so callers never follow it.
#[inline(always)]
pub fn read_ptr(base: u64, offset: u32) -> Result<u64, ReadFailed> {
    match read::<u64>(base, offset)? {
        0 => Err(ReadFailed),
        ptr => Ok(ptr),
    }
}
