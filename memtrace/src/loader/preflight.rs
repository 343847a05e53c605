//! Checks that run before anything is loaded, each naming what is missing and how to fix it.

use std::{fs, path::Path};

use super::btf::VMLINUX_BTF;

/// Oldest kernel whose page-cache tracepoints pass a `struct folio`.
pub const MIN_KERNEL: (u32, u32) = (6, 1);

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("memtrace must run as root (or with CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN) to load eBPF programs; run it with sudo")]
    NotPrivileged,
    #[error("this kernel has no BTF at {VMLINUX_BTF}; memtrace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (all major distributions since 2021 ship one)")]
    NoBtf,
    #[error("kernel {found} is too old: memtrace needs Linux {}.{} or newer (its page-cache tracepoints pass folios from then on)", MIN_KERNEL.0, MIN_KERNEL.1)]
    KernelTooOld { found: String },
}

/// The running kernel's release string, e.g. `6.18.44-fc-v669`.
pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Parses `major.minor` from a release string.
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Effective capabilities of this process, from /proc/self/status.
fn effective_caps() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0)
}

pub fn is_privileged() -> bool {
    let caps = effective_caps();
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

pub fn check_privileges() -> Result<(), PreflightError> {
    if is_privileged() {
        Ok(())
    } else {
        Err(PreflightError::NotPrivileged)
    }
}

pub fn check_btf() -> Result<(), PreflightError> {
    if Path::new(VMLINUX_BTF).exists() {
        Ok(())
    } else {
        Err(PreflightError::NoBtf)
    }
}

pub fn check_kernel_version() -> Result<(), PreflightError> {
    let release = kernel_release();
    match parse_release(&release) {
        Some(version) if version >= MIN_KERNEL => Ok(()),
        // An unparsable release is left to the BTF checks, which name the missing piece.
        None => Ok(()),
        Some(_) => Err(PreflightError::KernelTooOld { found: release }),
    }
}

/// Raises RLIMIT_MEMLOCK for kernels that still charge BPF maps to it (before 5.11). Newer
/// kernels charge the memcg instead, so failing here (no CAP_SYS_RESOURCE) is not fatal.
pub fn raise_memlock_rlimit() -> bool {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid struct and has no other effect on memory.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
    if ret != 0 {
        log::debug!(
            "setrlimit(RLIMIT_MEMLOCK) failed ({}); fine on kernels 5.11+, which charge BPF memory to the memcg",
            std::io::Error::last_os_error()
        );
    }
    ret == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_release_strings() {
        assert_eq!(parse_release("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_release("6.1.0-50-amd64"), Some((6, 1)));
        assert_eq!(parse_release("5.15.0"), Some((5, 15)));
        assert_eq!(parse_release("garbage"), None);
    }
}
