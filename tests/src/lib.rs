//! Helpers for memtrace's integration tests: real memory cgroups, real files on a disk
//! filesystem, processes placed in cgroups, and the kernel's own figures to compare with.
//!
//! Everything here needs root. Nothing is skipped: a missing privilege or kernel feature fails
//! the test with a message saying what is missing.

pub mod cgroup;
pub mod container;
pub mod engines;
pub mod files;
pub mod http;
pub mod serve;
pub mod tmux;

use std::{path::PathBuf, process::Command};

use memtrace::{
    collector::Collector,
    loader::LoadOptions,
    model::{CgroupUsage, FileUsage, Report},
};

/// One MiB.
pub const MIB: u64 = 1 << 20;

/// A child process killed (and reaped) when dropped: a reader or writer a test runs
/// alongside memtrace.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether the tests run in one of `cargo xtask vm-test`'s guests, whose kernels allow what
/// this host refuses (fentry and fexit): a test that needs them must find them there.
pub fn in_test_vm() -> bool {
    std::env::var_os("MEMTRACE_TEST_VM").is_some()
}

/// Fails loudly when not root: these tests load eBPF programs and create cgroups.
pub fn require_root() {
    // SAFETY: geteuid has no memory effects.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "memtrace's integration tests need root (eBPF programs, memory cgroups): run `sudo -E cargo xtask test`"
    );
}

/// Loads memtrace's programs into the running kernel, in process.
pub fn start_tracer() -> Collector {
    start_tracer_with(&LoadOptions::default())
}

/// Like `start_tracer`, with load options (a smaller map, for instance).
pub fn start_tracer_with(options: &LoadOptions) -> Collector {
    require_root();
    Collector::start(options)
        .unwrap_or_else(|err| panic!("memtrace failed to load: {:#}", anyhow::Error::from(err)))
}

/// The memtrace binary built for these tests (`cargo xtask test` sets MEMTRACE_BIN).
pub fn memtrace_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("MEMTRACE_BIN") {
        return PathBuf::from(bin);
    }
    // Next to the test binary's deps/ directory: target/<profile>/memtrace.
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("memtrace"));
    match bin {
        Some(bin) if bin.exists() => bin,
        _ => panic!("memtrace binary not found: build it first (`cargo xtask test` does) or set MEMTRACE_BIN"),
    }
}

/// `memtrace ARGS` as a command.
pub fn memtrace(args: &[&str]) -> Command {
    let mut cmd = Command::new(memtrace_bin());
    cmd.args(args);
    cmd
}

/// The cgroup with this id in a report.
pub fn cgroup_in(report: &Report, id: u64) -> Option<&CgroupUsage> {
    report.cgroups.iter().find(|c| c.id == id)
}

/// The file with this identity under a cgroup.
pub fn file_in<'a>(cgroup: &'a CgroupUsage, file: &files::FileId) -> Option<&'a FileUsage> {
    cgroup
        .files
        .iter()
        .find(|f| f.ino == file.ino && f.dev == file.dev.as_str())
}

/// Cached bytes memtrace charges `file` to cgroup `id` (0 when absent).
pub fn cached(report: &Report, id: u64, file: &files::FileId) -> u64 {
    cgroup_in(report, id)
        .and_then(|c| file_in(c, file))
        .map_or(0, |f| f.cached_bytes)
}

/// What a report says of one file under every cgroup, and the kernel event counters: printed
/// before an assertion so a failure shows where the file's pages went.
pub fn describe_file(report: &Report, file: &files::FileId) -> String {
    let mut lines = vec![format!("kernel stats: {:?}", report.stats)];
    for cgroup in &report.cgroups {
        if let Some(usage) = file_in(cgroup, file) {
            lines.push(format!(
                "cgroup {} ({:?}): {} B cached, {} B written",
                cgroup.id, cgroup.path, usage.cached_bytes, usage.written_bytes
            ));
        }
    }
    lines.join("\n")
}

/// Asserts `actual` is within `tolerance` bytes of `expected`, with a readable message.
#[track_caller]
pub fn assert_near(what: &str, actual: u64, expected: u64, tolerance: u64) {
    let diff = actual.abs_diff(expected);
    assert!(
        diff <= tolerance,
        "{what}: got {actual} bytes ({:.2} MiB), expected {expected} ({:.2} MiB) ± {tolerance}",
        actual as f64 / MIB as f64,
        expected as f64 / MIB as f64
    );
}

/// `memtrace explain TARGET --json`, asserted to succeed, as JSON.
pub fn explain_json(target: &str) -> serde_json::Value {
    explain_json_over(target, "200ms")
}

/// `memtrace explain TARGET --json --duration WINDOW`, asserted to succeed, as JSON.
pub fn explain_json_over(target: &str, window: &str) -> serde_json::Value {
    let out = output_within(
        memtrace(&[
            "explain",
            target,
            "--json",
            "--duration",
            window,
            "--top",
            "50",
        ])
        .stderr(std::process::Stdio::inherit()),
        std::time::Duration::from_secs(180),
    );
    assert!(
        out.status.success(),
        "memtrace explain {target} exited with {}",
        out.status
    );
    serde_json::from_slice(&out.stdout).expect("explain --json is JSON")
}

/// Runs `cmd` to its end and returns its output; a command still running after `limit` (blocked
/// on a FIFO, say) is killed and the test fails, instead of hanging the run.
pub fn output_within(cmd: &mut Command, limit: std::time::Duration) -> std::process::Output {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let out = child.wait_with_output();
        let _ = done.send(());
        out
    });
    if finished.recv_timeout(limit).is_err() {
        // SAFETY: kill has no memory effects; the pid is our child's, not yet reaped.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        panic!("{cmd:?} still running after {limit:?}: killed");
    }
    waiter
        .join()
        .expect("the waiting thread")
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

/// `memtrace watch --json --count 1 --container NAME`, as a user runs it, asserted to succeed
/// and to report that one cgroup: its JSON.
pub fn watch_container_json(name: &str) -> serde_json::Value {
    let out = memtrace(&["watch", "--json", "--count", "1", "--container", name])
        .output()
        .expect("run memtrace watch");
    assert!(out.status.success(), "watch --container {name}: {out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    let cgroups = report["cgroups"].as_array().expect("cgroups");
    assert_eq!(cgroups.len(), 1, "only the container's cgroup: {report}");
    cgroups[0].clone()
}
