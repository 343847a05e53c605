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

/// Adds `value` to a u64 that other CPUs may update at the same time.
///
/// # Safety
/// `target` must point into a map value that stays valid for this program run.
#[inline(always)]
pub unsafe fn atomic_add(target: *mut u64, value: u64) {
    // BPF's core has no atomic read-modify-write types; the intrinsic lowers to BPF_ATOMIC add.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            target, value,
        )
    };
}
