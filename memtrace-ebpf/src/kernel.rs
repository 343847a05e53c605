//! Reading kernel structs through offsets resolved at load time.
//!
//! Two ways, chosen by where the pointer came from:
//! - `load`: a plain load through a pointer the verifier knows the BTF type of (a tp_btf or
//!   fexit argument, or a pointer field loaded from one). The verifier checks the offset
//!   against the type and turns it into a fault-safe PROBE_MEM load: about a nanosecond.
//! - `read`: `bpf_probe_read_kernel`, for pointers the verifier sees as plain numbers (a memcg
//!   pointer decoded from `folio.memcg_data`, a dentry found from its alias node). A helper
//!   call each: tens of nanoseconds, so kept off the hot path.

use aya_ebpf::helpers::bpf_probe_read_kernel;

/// A kernel address read failed, or a pointer on the way was NULL.
pub(crate) struct ReadFailed;

/// Reads a `T` at `base + offset` with `bpf_probe_read_kernel`.
#[inline(always)]
pub(crate) fn read<T>(base: u64, offset: u32) -> Result<T, ReadFailed> {
    // SAFETY: bpf_probe_read_kernel tolerates any address; a bad one returns an error.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }.map_err(|_| ReadFailed)
}

/// Reads a pointer at `base + offset` with `bpf_probe_read_kernel`; NULL is an error.
#[inline(always)]
pub(crate) fn read_ptr(base: u64, offset: u32) -> Result<u64, ReadFailed> {
    match read::<u64>(base, offset)? {
        0 => Err(ReadFailed),
        ptr => Ok(ptr),
    }
}

/// Loads a `T` at `base + offset` through a BTF-typed pointer (see the module doc).
#[inline(always)]
pub(crate) fn load<T: Copy>(base: u64, offset: u32) -> T {
    // SAFETY: `base` is a BTF-typed kernel pointer; the verifier checks `offset` against its
    // type and makes the load fault-safe.
    unsafe { core::ptr::read_volatile((base + offset as u64) as *const T) }
}

/// Loads a pointer field through a BTF-typed pointer; NULL is an error.
#[inline(always)]
pub(crate) fn load_ptr(base: u64, offset: u32) -> Result<u64, ReadFailed> {
    match load::<u64>(base, offset) {
        0 => Err(ReadFailed),
        ptr => Ok(ptr),
    }
}

/// Adds `value` to a u64 that other CPUs may update at the same time.
///
/// # Safety
/// `target` must point into a map value that stays valid for this program run.
#[inline(always)]
pub(crate) unsafe fn atomic_add(target: *mut u64, value: u64) {
    // BPF's core has no atomic read-modify-write types; the intrinsic lowers to BPF_ATOMIC add.
    // SAFETY: the caller promises `target` is a live, aligned u64 in a map value.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            target, value,
        )
    };
}

/// Starts replacing a per-CPU slot that userspace may be copying: bumps the slot's last word
/// (`ends`) before any other store. Returns the value `end_change` must copy into the first.
#[inline(always)]
pub(crate) fn begin_change(ends: &mut u64) -> u64 {
    let changing = ends.wrapping_add(1);
    // SAFETY: `ends` is a valid, exclusive reference.
    unsafe { core::ptr::write_volatile(ends, changing) };
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    changing
}

/// Ends the change `begin_change` started: the slot's first word (`begins`) catches up last,
/// so a copy that saw part of the change sees the two words differ.
#[inline(always)]
pub(crate) fn end_change(begins: &mut u64, changing: u64) {
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    // SAFETY: `begins` is a valid, exclusive reference.
    unsafe { core::ptr::write_volatile(begins, changing) };
}
