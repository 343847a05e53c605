//! The agent and the live view at high cardinality: 100,000 cached files over 1,000 cgroups
//! (made once, before memtrace starts, so the census finds them), with `serve` exporting every
//! file (100,000 series) and `top` refreshing, each against `watch --json` on the same files in
//! interleaved rounds.

use std::{
    fs,
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::{
    bench_cgroup_root, median, percentile, remove_cgroups, start_memtrace_with, start_watch,
    steady_state, sync_and_drop_caches, workload, BenchOptions,
};

/// Where the bench's `serve` listens.
const LISTEN: &str = "127.0.0.1:19478";
/// Scrapes per run; the first (names every file for the first time) counts in the p95 only.
const SCRAPES: usize = 7;
/// Refreshes of `top` per run.
const REFRESHES: usize = 10;

#[derive(Clone, Copy, Serialize)]
pub(super) struct AgentAtCardinality {
    pub files: usize,
    pub cgroups: usize,
    pub series_limit: usize,
    /// `watch --json` on the same files: median end to end of its steady reports.
    pub watch_end_to_end_ms: f64,
    pub watch_peak_rss_mib: f64,
    /// A scrape from request to last byte, median of the second to the last, and p95 of all.
    pub scrape_ms: f64,
    pub scrape_p95_ms: f64,
    pub scrape_bytes: f64,
    pub serve_peak_rss_mib: f64,
    /// Time a `top` refresh took (report, judgement of the cgroups on screen, drawing), median
    /// and p95 of every refresh, the first included.
    pub top_refresh_ms: f64,
    pub top_refresh_p95_ms: f64,
    pub top_peak_rss_mib: f64,
}

/// Makes the files, then runs `watch --json`, `serve` and `top` over them in interleaved
/// rounds.
pub(super) fn agent_at_cardinality(
    options: &BenchOptions,
    memtrace: &Path,
    churn: &Path,
    work: &Path,
) -> Result<AgentAtCardinality> {
    crate::setup::apt_install(&["tmux"])?;
    let cgroup_root = bench_cgroup_root("memtrace-bench-agent");
    let dir = work.join("agent");
    fs::create_dir_all(&dir)?;
    fs::create_dir_all(&cgroup_root)?;
    workload(
        churn,
        &[
            "many-files",
            &dir.to_string_lossy(),
            &cgroup_root.to_string_lossy(),
            &options.files.to_string(),
            &options.cgroups.to_string(),
        ],
    )?;
    // Written back, so the files hold still between runs.
    // SAFETY: sync has no memory effects.
    unsafe { libc::sync() };
    let series_limit = options.files;
    let per_cgroup = options.files.div_ceil(options.cgroups.max(1));
    let (mut watch, mut serve, mut top) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..options.rounds_many {
        for i in 0..3 {
            match (i + round) % 3 {
                0 => watch.push(watch_run(options, memtrace)?),
                1 => serve.push(serve_run(memtrace, per_cgroup, series_limit)?),
                _ => top.push(top_run(memtrace, &dir)?),
            }
        }
    }
    let _ = fs::remove_dir_all(&dir);
    remove_cgroups(&cgroup_root);
    sync_and_drop_caches();
    let pooled =
        |runs: &[Run]| -> Vec<f64> { runs.iter().flat_map(|r| r.times_ms.clone()).collect() };
    let steady = |runs: &[Run]| -> Vec<f64> {
        runs.iter()
            .flat_map(|r| r.times_ms.iter().skip(1).copied())
            .collect()
    };
    let rss = |runs: &[Run]| median(runs.iter().map(|r| r.peak_rss_mib).collect());
    Ok(AgentAtCardinality {
        files: options.files,
        cgroups: options.cgroups,
        series_limit,
        watch_end_to_end_ms: median(pooled(&watch)),
        watch_peak_rss_mib: rss(&watch),
        scrape_ms: median(steady(&serve)),
        scrape_p95_ms: percentile(pooled(&serve), 0.95),
        scrape_bytes: median(serve.iter().map(|r| r.bytes).collect()),
        serve_peak_rss_mib: rss(&serve),
        top_refresh_ms: median(pooled(&top)),
        top_refresh_p95_ms: percentile(pooled(&top), 0.95),
        top_peak_rss_mib: rss(&top),
    })
}

/// One run's timings, its peak RSS, and (for serve) the size of a scrape.
struct Run {
    times_ms: Vec<f64>,
    peak_rss_mib: f64,
    bytes: f64,
}

fn watch_run(options: &BenchOptions, memtrace: &Path) -> Result<Run> {
    let (running, reports) = start_watch(memtrace, &["watch", "--json", "--interval", "1s"])?;
    let run = steady_state(options, "all", running, &reports)?;
    eprintln!(
        "bench agent: watch --json end to end {:.0} ms, peak RSS {:.1} MiB",
        run.end_to_end_ms, run.peak_rss_mib
    );
    Ok(Run {
        times_ms: vec![run.end_to_end_ms],
        peak_rss_mib: run.peak_rss_mib,
        bytes: f64::NAN,
    })
}

fn serve_run(memtrace: &Path, per_cgroup: usize, series_limit: usize) -> Result<Run> {
    let running = start_memtrace_with(
        memtrace,
        &[
            "serve",
            "--listen",
            LISTEN,
            "--metrics-top-files",
            &per_cgroup.to_string(),
            "--metrics-max-series",
            &series_limit.to_string(),
        ],
        Stdio::null(),
        5,
    )?;
    let started = Instant::now();
    while get("/healthz").is_err() {
        if started.elapsed() > Duration::from_secs(120) {
            bail!("memtrace serve never answered on {LISTEN}");
        }
        thread::sleep(Duration::from_millis(100));
    }
    let mut times_ms = Vec::new();
    let mut bytes = 0;
    for _ in 0..SCRAPES {
        let began = Instant::now();
        bytes = get("/metrics")?;
        times_ms.push(began.elapsed().as_secs_f64() * 1000.0);
        thread::sleep(Duration::from_millis(500));
    }
    let peak_rss_mib = running.peak_rss_kib() as f64 / 1024.0;
    eprintln!(
        "bench agent: serve scrapes {times_ms:.0?} ms, {:.1} MiB of text, peak RSS {peak_rss_mib:.1} MiB",
        bytes as f64 / f64::from(1 << 20)
    );
    drop(running);
    Ok(Run {
        times_ms,
        peak_rss_mib,
        bytes: bytes as f64,
    })
}

/// GETs `path` from the bench's serve as Prometheus does (OpenMetrics); the body's length.
fn get(path: &str) -> Result<usize> {
    let mut stream = TcpStream::connect(LISTEN)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {LISTEN}\r\nAccept: application/openmetrics-text; version=1.0.0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    if !response.starts_with(b"HTTP/1.1 200") {
        bail!(
            "GET {path}: {}",
            String::from_utf8_lossy(&response[..response.len().min(200)])
        );
    }
    Ok(response.len())
}

/// `memtrace -v top` in a tmux terminal of its own: each refresh's time, from its log.
fn top_run(memtrace: &Path, dir: &Path) -> Result<Run> {
    let log = dir.join("top.log");
    let socket = format!("memtrace-bench-{}", std::process::id());
    let tmux = |args: &[&str]| -> Result<String> {
        let out = Command::new("tmux")
            .args(["-L", &socket])
            .args(args)
            .output()
            .context("tmux")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let _ = fs::remove_file(&log);
    tmux(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "160",
        "-y",
        "50",
        &format!(
            "exec {} -v top --interval 1s 2> {}",
            memtrace.display(),
            log.display()
        ),
    ])?;
    let pid: u32 = tmux(&["list-panes", "-t", "top", "-F", "#{pane_pid}"])?
        .trim()
        .parse()
        .context("top's pid")?;
    let started = Instant::now();
    let refreshes = loop {
        let text = fs::read_to_string(&log).unwrap_or_default();
        let times: Vec<f64> = text
            .lines()
            .filter_map(|l| l.split("top: refresh in ").nth(1))
            .filter_map(|rest| rest.trim_end_matches(" ms").trim().parse().ok())
            .collect();
        if times.len() >= REFRESHES {
            break times;
        }
        if started.elapsed() > Duration::from_secs(180) {
            let _ = tmux(&["kill-server"]);
            bail!("top refreshed {} times in 180 s: {text}", times.len());
        }
        thread::sleep(Duration::from_millis(200));
    };
    let peak_rss_mib = super::census::vm_hwm_kib(pid as libc::pid_t).unwrap_or(0) as f64 / 1024.0;
    let _ = tmux(&["send-keys", "-t", "top", "q"]);
    thread::sleep(Duration::from_millis(500));
    let _ = tmux(&["kill-server"]);
    eprintln!("bench agent: top refreshes {refreshes:.0?} ms, peak RSS {peak_rss_mib:.1} MiB");
    Ok(Run {
        times_ms: refreshes,
        peak_rss_mib,
        bytes: f64::NAN,
    })
}
