//! Checks that run before anything is loaded, each naming what is missing and how to fix it.

use std::{fs, path::Path};

use super::btf::VMLINUX_BTF;

/// Oldest kernel whose page-cache tracepoints pass a `struct folio`.
pub const MIN_KERNEL: (u32, u32) = (6, 1);

/// A capability memtrace uses, and what it is for.
#[derive(Clone, Copy, Debug)]
pub struct Capability {
    pub name: &'static str,
    bit: u32,
    /// What memtrace does with it, and what degrades without it.
    pub purpose: &'static str,
    /// memtrace cannot run without it.
    pub required: bool,
}

const CAP_SYS_ADMIN: u32 = 21;

/// Every capability memtrace uses: the least a node agent needs (see deploy/).
pub const CAPABILITIES: &[Capability] = &[
    Capability {
        name: "CAP_BPF",
        bit: 39,
        purpose: "create maps and load programs",
        required: true,
    },
    Capability {
        name: "CAP_PERFMON",
        bit: 38,
        purpose: "tracing programs (tp_btf, fexit) that read kernel structures",
        required: true,
    },
    Capability {
        name: "CAP_DAC_READ_SEARCH",
        bit: 2,
        purpose: "open containers' files and /proc/kpagecgroup, /proc/kpageflags; without it, files it cannot read are not measured",
        required: false,
    },
    Capability {
        name: "CAP_FOWNER",
        bit: 3,
        purpose: "honest residency: mincore(2) and cachestat(2) only report a file's real cache to its owner, a writer or CAP_FOWNER (others see every page as resident); without it, files it does not own are not measured",
        required: false,
    },
    Capability {
        name: "CAP_SYS_PTRACE",
        bit: 19,
        purpose: "read other users' /proc/<pid>/fd and map_files (open files, writers); without it, only its own user's",
        required: false,
    },
    Capability {
        name: "CAP_SYS_ADMIN",
        bit: CAP_SYS_ADMIN,
        purpose: "page frame numbers in /proc/self/pagemap, for the exact memcg of cache found at start; without it that cache is attributed by inference (provenance inferred_*)",
        required: false,
    },
];

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("memtrace must run as root or with CAP_BPF and CAP_PERFMON to load eBPF programs (missing: {}); run it with sudo, or grant them (setpriv --ambient-caps, setcap on the binary, or a container's capabilities)", missing.join(", "))]
    NotPrivileged { missing: Vec<&'static str> },
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

/// Effective capabilities of this process, by capget(2): one syscall, cheap enough to ask
/// for each file measured (reading /proc/self/status was most of the cost of checking).
fn effective_caps() -> u64 {
    /// `_LINUX_CAPABILITY_VERSION_3`: 64 capability bits in two 32-bit halves.
    const VERSION_3: u32 = 0x2008_0522;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget writes two `Data` for version 3 into a buffer of exactly that size.
    let ret = unsafe { libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) };
    if ret != 0 {
        return 0;
    }
    u64::from(data[0].effective) | u64::from(data[1].effective) << 32
}

/// Whether this process holds `capability` now.
pub fn holds(capability: &Capability) -> bool {
    effective_caps() & (1u64 << capability.bit) != 0
}

/// Whether this process holds the capability called `name` (`CAP_FOWNER`).
pub fn holds_named(name: &str) -> bool {
    CAPABILITIES
        .iter()
        .find(|c| c.name == name)
        .is_some_and(holds)
}

/// The required capabilities this process lacks. CAP_SYS_ADMIN still grants what CAP_BPF and
/// CAP_PERFMON do, for kernels and policies from before they existed.
pub fn missing_capabilities() -> Vec<&'static str> {
    if effective_caps() & (1u64 << CAP_SYS_ADMIN) != 0 {
        return Vec::new();
    }
    CAPABILITIES
        .iter()
        .filter(|c| c.required && !holds(c))
        .map(|c| c.name)
        .collect()
}

pub fn check_privileges() -> Result<(), PreflightError> {
    let missing = missing_capabilities();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PreflightError::NotPrivileged { missing })
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
