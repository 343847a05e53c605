//! memtrace's kernel programs.
//!
//! They count page-cache folios in and out per (charged memory cgroup, file), in kernel maps that
//! userspace reads on its own schedule. Nothing per page leaves the kernel.
#![no_std]
#![no_main]
// BPF's core has no atomic read-modify-write types; the intrinsic lowers to BPF_ATOMIC add.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod census;
mod cgroups;
mod floor;
mod kernel;
mod maps;
mod page_cache;
mod paths;
mod writers;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; this only satisfies no_std.
    loop {}
}

/// GPL-compatible, as the kernel requires of programs calling GPL-only helpers
/// (`bpf_probe_read_kernel`); see LICENSE.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
