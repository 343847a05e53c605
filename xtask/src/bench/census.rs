//! The census at start on a node with a million inodes: how long until the first report holds
//! every file's cache, what it costs memtrace (CPU, peak RSS), and what it moved on the LRU
//! lists (nothing: the census touches no page).

use std::{
    fs::{self, File},
    io::Write,
    path::Path,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

use super::median;

/// Inodes made for the run, and how many of them hold a 4 KiB page.
const INODES: usize = 1_000_000;
const CACHED_EVERY: usize = 10;
const PER_DIRECTORY: usize = 10_000;
/// Runs of `memtrace watch --count 1`; the figures are their medians.
const RUNS: usize = 3;

#[derive(Clone, Serialize)]
pub(super) struct CensusAtStart {
    pub inodes: usize,
    pub cached_files: usize,
    /// From memtrace's start to its first report's last byte (load, census, report).
    pub first_report_seconds: f64,
    /// The census alone, as the report's `seed.seconds` says.
    pub census_seconds: f64,
    pub cpu_seconds: f64,
    pub peak_rss_mib: f64,
    /// The first report's attributed cache against the node's page cache (Cached + Buffers)
    /// read right after it.
    pub coverage: f64,
    /// /proc/meminfo's Active(file) and Inactive(file) after the run minus before, MiB: what
    /// the census moved between the LRU lists (noise from the rest of the node included).
    pub active_file_moved_mib: f64,
    pub inactive_file_moved_mib: f64,
}

/// Makes the inodes, runs `memtrace watch --json --count 1` `RUNS` times over them, removes
/// them.
pub(super) fn census_at_start(memtrace: &Path, work: &Path) -> Result<CensusAtStart> {
    let dir = work.join("census");
    let cached_files = make_inodes(&dir)?;
    let mut runs = Vec::new();
    for run in 0..RUNS {
        let figures = one_run(memtrace)?;
        eprintln!(
            "bench census run {run}: first report {:.2} s (census {:.2} s), CPU {:.2} s, peak RSS {:.1} MiB, coverage {:.1}%",
            figures.first_report_seconds,
            figures.census_seconds,
            figures.cpu_seconds,
            figures.peak_rss_mib,
            figures.coverage * 100.0
        );
        runs.push(figures);
    }
    let _ = fs::remove_dir_all(&dir);
    let of = |figure: fn(&CensusAtStart) -> f64| median(runs.iter().map(figure).collect());
    Ok(CensusAtStart {
        inodes: INODES,
        cached_files,
        first_report_seconds: of(|r| r.first_report_seconds),
        census_seconds: of(|r| r.census_seconds),
        cpu_seconds: of(|r| r.cpu_seconds),
        peak_rss_mib: of(|r| r.peak_rss_mib),
        coverage: of(|r| r.coverage),
        active_file_moved_mib: of(|r| r.active_file_moved_mib),
        inactive_file_moved_mib: of(|r| r.inactive_file_moved_mib),
    })
}

/// A million files, every tenth holding 4 KiB: the inodes stay in the inode cache, so the
/// census walks all of them. Returns how many hold a page.
fn make_inodes(dir: &Path) -> Result<usize> {
    let _ = fs::remove_dir_all(dir);
    let page = [0x5au8; 4096];
    let mut cached = 0;
    for i in 0..INODES {
        let sub = dir.join(format!("d{}", i / PER_DIRECTORY));
        if i % PER_DIRECTORY == 0 {
            fs::create_dir_all(&sub).with_context(|| format!("mkdir {}", sub.display()))?;
        }
        let mut file = File::create(sub.join(format!("f{i}")))?;
        if i % CACHED_EVERY == 0 {
            file.write_all(&page)?;
            cached += 1;
        }
    }
    // Written back, so what the census counts holds still between runs.
    // SAFETY: sync has no memory effects.
    unsafe { libc::sync() };
    Ok(cached)
}

fn one_run(memtrace: &Path) -> Result<CensusAtStart> {
    let before = meminfo()?;
    let started = Instant::now();
    let child = Command::new(memtrace)
        .args(["watch", "--json", "--count", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting memtrace")?;
    let pid = child.id() as libc::pid_t;
    // The peak RSS is sampled from /proc while it runs: wait4's ru_maxrss would carry the
    // forking parent's size over the exec.
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = Arc::clone(&done);
        thread::spawn(move || {
            let mut peak_kib = 0u64;
            while !done.load(Ordering::Relaxed) {
                peak_kib = peak_kib.max(vm_hwm_kib(pid).unwrap_or(0));
                thread::sleep(Duration::from_millis(10));
            }
            peak_kib
        })
    };
    let mut stdout = Vec::new();
    let mut out = child.stdout.context("memtrace stdout")?;
    std::io::Read::read_to_end(&mut out, &mut stdout)?;
    let first_report_seconds = started.elapsed().as_secs_f64();
    // Its stdout closed: it is exiting. One last sample before it is reaped.
    thread::sleep(Duration::from_millis(10));
    done.store(true, Ordering::Relaxed);
    let peak_kib = sampler.join().unwrap_or(0);
    let after = meminfo()?;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, writing into locals that outlive the call.
    if unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } != pid {
        bail!("waiting for memtrace: {}", std::io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("memtrace watch --count 1 failed ({status:#x})");
    }
    let report: Value = serde_json::from_slice(&stdout).context("memtrace's report")?;
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let attributed = report["totals"]["cached_bytes"].as_f64().unwrap_or(0.0);
    let mib = |bytes: i64| bytes as f64 / f64::from(1 << 20);
    Ok(CensusAtStart {
        inodes: INODES,
        cached_files: 0,
        first_report_seconds,
        census_seconds: report["seed"]["seconds"].as_f64().unwrap_or(f64::NAN),
        cpu_seconds: seconds(usage.ru_utime) + seconds(usage.ru_stime),
        peak_rss_mib: peak_kib as f64 / 1024.0,
        coverage: attributed / after.page_cache as f64,
        active_file_moved_mib: mib(after.active_file as i64 - before.active_file as i64),
        inactive_file_moved_mib: mib(after.inactive_file as i64 - before.inactive_file as i64),
    })
}

/// `VmHWM` of a live process, KiB.
pub(super) fn vm_hwm_kib(pid: libc::pid_t) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

struct Meminfo {
    page_cache: u64,
    active_file: u64,
    inactive_file: u64,
}

fn meminfo() -> Result<Meminfo> {
    let text = fs::read_to_string("/proc/meminfo")?;
    let kib = |key: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Ok(Meminfo {
        page_cache: kib("Cached:") + kib("Buffers:"),
        active_file: kib("Active(file):"),
        inactive_file: kib("Inactive(file):"),
    })
}
