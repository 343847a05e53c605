//! `cargo xtask bench`: what memtrace costs, measured as ratios of interleaved runs.
//!
//! Each round runs every workload with no tracer, with memtrace, and with a bpftrace script
//! aggregating the same tracepoints per (cgroup, dev, ino), in a rotating order so machine
//! noise lands on all three alike. Results go to target/bench/report.{md,json}.

use std::{
    fs,
    io::{BufRead, BufReader},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::{
    setup::{apt_install, run},
    workspace,
};

/// The bpftrace a user would otherwise reach for: the same two tracepoints, aggregated in the
/// kernel per (cgroup, dev, ino).
const BPFTRACE_SCRIPT: &str = "tracepoint:filemap:mm_filemap_add_to_page_cache { @added[cgroup, args->s_dev, args->i_ino] = count(); } \
tracepoint:filemap:mm_filemap_delete_from_page_cache { @removed[cgroup, args->s_dev, args->i_ino] = count(); }";

/// The hooks memtrace attaches on this kernel, as `memtrace calibrate` reports them (it
/// attaches its empty programs by memtrace's own hook table and fallback rules): the floors
/// are built from these, never from a list of our own.
struct Floor {
    /// (hook, kind): `tp_btf` or `fexit`.
    hooks: Vec<(String, String)>,
}

impl Floor {
    fn discover(memtrace: &Path) -> Result<Self> {
        let mut child = Command::new(memtrace)
            .arg("calibrate")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting memtrace calibrate")?;
        let stderr = child.stderr.take().context("calibrate stderr")?;
        let line = BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| {
                l.strip_prefix("memtrace calibrate: empty programs attached to ")
                    .map(str::to_owned)
            });
        // SAFETY: kill has no memory effects; the pid is our own child's.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let _ = child.wait();
        let line = line.context("memtrace calibrate did not say which hooks it attached")?;
        let hooks = line
            .split(", ")
            .filter_map(|h| {
                let (name, kind) = h.split_once(" (")?;
                Some((name.to_owned(), kind.trim_end_matches(')').to_owned()))
            })
            .collect::<Vec<_>>();
        if hooks.is_empty() {
            bail!("cannot read the hooks from `{line}`");
        }
        Ok(Self { hooks })
    }

    /// Empty bpftrace probes on the same hooks: what attaching anything there costs with
    /// classic tracepoints.
    fn bpftrace_script(&self) -> String {
        self.hooks
            .iter()
            .map(|(name, kind)| match kind.as_str() {
                "fexit" => format!("kretfunc:{name} {{ }}"),
                _ => format!("tracepoint:*:{name} {{ }}"),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

const WORK_DIR: &str = "/var/tmp/memtrace-bench";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tracer {
    None,
    Memtrace,
    Bpftrace,
    EmptyProbes,
    EmptyBtfProbes,
}

impl Tracer {
    fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Memtrace => "memtrace",
            Self::Bpftrace => "bpftrace",
            Self::EmptyProbes => "empty probes",
            Self::EmptyBtfProbes => "empty tp_btf",
        }
    }
}

pub(crate) struct BenchOptions {
    pub rounds: usize,
    pub seconds: f64,
    pub files: usize,
    pub cgroups: usize,
}

/// A running tracer, stopped on drop.
struct Running {
    child: Child,
    cpu_ticks_at_start: u64,
}

impl Running {
    fn cpu_ticks(&self) -> u64 {
        cpu_ticks(self.child.id())
    }

    fn peak_rss_kib(&self) -> u64 {
        fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: kill of our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which may contain spaces: utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no memory effects.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// Whether `pid` holds at least `count` BPF links (memtrace attaches its programs as links).
fn bpf_links(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains("bpf_link"))
                })
                .count()
        })
        .unwrap_or(0)
}

fn start(
    tracer: Tracer,
    memtrace: &Path,
    interval: &str,
    floor: &Floor,
) -> Result<Option<Running>> {
    let child = match tracer {
        Tracer::None => return Ok(None),
        Tracer::Memtrace => {
            let args = ["watch", "--json", "--interval", interval];
            return start_memtrace_with(memtrace, &args, Stdio::null(), 5).map(Some);
        }
        Tracer::EmptyBtfProbes => {
            let links = floor.hooks.len();
            return start_memtrace_with(memtrace, &["calibrate"], Stdio::null(), links).map(Some);
        }
        Tracer::Bpftrace | Tracer::EmptyProbes => {
            let script = if tracer == Tracer::Bpftrace {
                BPFTRACE_SCRIPT.to_owned()
            } else {
                floor.bpftrace_script()
            };
            let mut child = Command::new("bpftrace")
                .args(["-e", script.as_str()])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("starting bpftrace")?;
            let stdout = child.stdout.take().context("bpftrace stdout")?;
            let (ready_tx, ready_rx) = mpsc::channel();
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if line.starts_with("Attaching") {
                        let _ = ready_tx.send(());
                    }
                }
            });
            ready_rx
                .recv_timeout(Duration::from_secs(60))
                .context("bpftrace did not attach")?;
            // "Attaching" is printed before the last probe is in: give it a moment.
            thread::sleep(Duration::from_millis(300));
            child
        }
    };
    let cpu_ticks_at_start = cpu_ticks(child.id());
    Ok(Some(Running {
        child,
        cpu_ticks_at_start,
    }))
}

fn workload(churn: &Path, args: &[&str]) -> Result<Value> {
    let out = Command::new(churn)
        .args(args)
        .output()
        .context("running page-churn")?;
    if !out.status.success() {
        bail!(
            "page-churn {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("page-churn output")
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

struct Sample {
    tracer: Tracer,
    pages_per_second: f64,
    /// memtrace's own CPU time over the run, as a fraction of one core.
    tracer_cpu: Option<f64>,
}

pub(crate) fn bench(options: &BenchOptions) -> Result<()> {
    if !Path::new("/usr/bin/bpftrace").exists() && !Path::new("/usr/sbin/bpftrace").exists() {
        eprintln!("xtask: installing bpftrace: the benchmark compares memtrace with it");
        apt_install(&["bpftrace"])?;
    }
    if fs::read_dir("/sys/kernel/tracing")
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
    {
        // bpftrace resolves tracepoint formats through tracefs.
        let _ = Command::new("mount")
            .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
            .status();
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run(Command::new(&cargo).current_dir(workspace()).args([
        "build",
        "--release",
        "--locked",
        "-p",
        "memtrace",
        "-p",
        "memtrace-tests",
        "--bin",
        "memtrace",
        "--bin",
        "page-churn",
    ]))?;
    let memtrace = workspace().join("target/release/memtrace");
    let churn = workspace().join("target/release/page-churn");
    let floor = Floor::discover(&memtrace)?;
    eprintln!(
        "xtask: memtrace's hooks here: {}",
        floor
            .hooks
            .iter()
            .map(|(name, kind)| format!("{name} ({kind})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let work = PathBuf::from(WORK_DIR);
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let dir = work.to_string_lossy().into_owned();
    let seconds = options.seconds.to_string();

    let tracers = [
        Tracer::None,
        Tracer::Memtrace,
        Tracer::Bpftrace,
        Tracer::EmptyProbes,
        Tracer::EmptyBtfProbes,
    ];
    let mut results = serde_json::Map::new();
    let mut markdown = String::from(
        "| workload | tracer | pages/s (median) | throughput vs none | ns added per page event | tracer CPU (1 core) |\n|---|---|---:|---:|---:|---:|\n",
    );
    for (name, events_per_page) in [("churn", 2.0), ("read-churn", 2.0)] {
        let mut samples: Vec<Vec<Sample>> = Vec::new();
        for round in 0..options.rounds {
            let mut this_round = Vec::new();
            for i in 0..tracers.len() {
                let tracer = tracers[(i + round) % tracers.len()];
                let running = start(tracer, &memtrace, "2s", &floor)?;
                let began = Instant::now();
                let result = workload(&churn, &[name, &dir, &seconds])?;
                let wall = began.elapsed().as_secs_f64();
                let tracer_cpu = running
                    .as_ref()
                    .filter(|_| tracer == Tracer::Memtrace)
                    .map(|r| {
                        (r.cpu_ticks() - r.cpu_ticks_at_start) as f64 / ticks_per_second() / wall
                    });
                drop(running);
                let pages_per_second = result["pages_per_second"].as_f64().unwrap_or(0.0);
                eprintln!(
                    "bench {name} round {round} {:>8}: {pages_per_second:.0} pages/s",
                    tracer.name()
                );
                this_round.push(Sample {
                    tracer,
                    pages_per_second,
                    tracer_cpu,
                });
            }
            samples.push(this_round);
        }
        let rate = |round: &[Sample], t: Tracer| {
            round
                .iter()
                .find(|s| s.tracer == t)
                .map_or(f64::NAN, |s| s.pages_per_second)
        };
        let base = median(samples.iter().map(|r| rate(r, Tracer::None)).collect());
        let mut entry = serde_json::Map::new();
        entry.insert("none_pages_per_second".into(), json!(base));
        for tracer in [
            Tracer::Memtrace,
            Tracer::Bpftrace,
            Tracer::EmptyProbes,
            Tracer::EmptyBtfProbes,
        ] {
            // Paired ratios: each round's run against the same round's baseline.
            let ratio = median(
                samples
                    .iter()
                    .map(|r| rate(r, tracer) / rate(r, Tracer::None))
                    .collect(),
            );
            let added_ns = median(
                samples
                    .iter()
                    .map(|r| {
                        (1.0 / rate(r, tracer) - 1.0 / rate(r, Tracer::None)) / events_per_page
                            * 1e9
                    })
                    .collect(),
            );
            let cpu = median(
                samples
                    .iter()
                    .flatten()
                    .filter(|s| s.tracer == tracer)
                    .filter_map(|s| s.tracer_cpu)
                    .collect(),
            );
            let pages = median(samples.iter().map(|r| rate(r, tracer)).collect());
            entry.insert(
                tracer.name().into(),
                json!({ "pages_per_second": pages, "throughput_ratio": ratio, "ns_added_per_event": added_ns,
                        "cpu_fraction_of_one_core": if cpu.is_nan() { Value::Null } else { json!(cpu) } }),
            );
            markdown += &format!(
                "| {name} | {} | {pages:.0} | {:.1}% | {added_ns:.1} | {} |\n",
                tracer.name(),
                ratio * 100.0,
                if cpu.is_nan() {
                    "-".to_owned()
                } else {
                    format!("{:.2}%", cpu * 100.0)
                }
            );
        }
        markdown += &format!("| {name} | none | {base:.0} | 100% | - | - |\n");
        results.insert(name.into(), Value::Object(entry));
    }

    let many = many_files(options, &memtrace, &churn, &work)?;
    let mode = |name: &str, key: &str| many[name][key].as_f64().unwrap_or(f64::NAN);
    markdown += &format!(
        "\n| many files ({} files, {} cgroups) | value |\n|---|---:|\n| files/s without tracer | {:.0} |\n| files/s with memtrace | {:.0} ({:.1}%) |\n| snapshot latency, `watch` (10 largest named) | {:.0} ms |\n| peak RSS, `watch` | {:.1} MiB |\n| snapshot latency, `watch --json` (every file named) | {:.0} ms |\n| peak RSS, `watch --json` | {:.1} MiB |\n",
        options.files,
        options.cgroups,
        many["none_files_per_second"].as_f64().unwrap_or(0.0),
        many["memtrace_files_per_second"].as_f64().unwrap_or(0.0),
        many["throughput_ratio"].as_f64().unwrap_or(0.0) * 100.0,
        mode("table_mode", "snapshot_ms"),
        mode("table_mode", "peak_rss_mib"),
        mode("json_all_mode", "snapshot_ms"),
        mode("json_all_mode", "peak_rss_mib"),
    );
    results.insert("many_files".into(), many);
    results.insert(
        "machine".into(),
        json!({ "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
                "cpus": thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
                "rounds": options.rounds, "seconds_per_run": options.seconds }),
    );

    let out_dir = workspace().join("target/bench");
    fs::create_dir_all(&out_dir)?;
    fs::write(
        out_dir.join("report.json"),
        serde_json::to_vec_pretty(&Value::Object(results))?,
    )?;
    fs::write(out_dir.join("report.md"), &markdown)?;
    println!("{markdown}");
    println!("written to {}", out_dir.display());
    let _ = fs::remove_dir_all(&work);
    Ok(())
}

/// 100,000 small files across 1,000 cgroups: throughput with and without memtrace, then
/// memtrace's snapshot latency and peak RSS with all of them tracked, both as `watch` shows
/// them (the ten largest named) and as `watch --json` streams them (every file named).
fn many_files(options: &BenchOptions, memtrace: &Path, churn: &Path, work: &Path) -> Result<Value> {
    let memory_root = Path::new("/sys/fs/cgroup/memory");
    let cgroup_root = if memory_root.join("cgroup.procs").exists() {
        memory_root.join("memtrace-bench")
    } else {
        Path::new("/sys/fs/cgroup/memtrace-bench").to_path_buf()
    };
    let mut none_rates = Vec::new();
    let mut traced_rates = Vec::new();
    let mut modes = serde_json::Map::new();
    // Interleaved, and each run starts from dropped caches: thousands of dying memcgs left by
    // the previous run slow cgroup work down for everyone, which would bias the order.
    for (run, mode) in [(0, None), (1, Some("top")), (2, Some("all")), (3, None)] {
        sync_and_drop_caches();
        let dir = work.join(format!("many-{run}"));
        fs::create_dir_all(&dir)?;
        let cgroups = cgroup_root.join(format!("run-{run}"));
        fs::create_dir_all(&cgroups)?;
        let running = match mode {
            None => None,
            Some(mode) => {
                let mut args = vec!["watch", "--json", "--interval", "1s"];
                if mode == "top" {
                    args.extend(["--top", "10"]);
                }
                Some(start_memtrace_with(memtrace, &args, Stdio::piped(), 5)?)
            }
        };
        let result = workload(
            churn,
            &[
                "many-files",
                &dir.to_string_lossy(),
                &cgroups.to_string_lossy(),
                &options.files.to_string(),
                &options.cgroups.to_string(),
            ],
        )?;
        let rate = result["pages_per_second"].as_f64().unwrap_or(0.0);
        eprintln!(
            "bench many-files run {run} {}: {rate:.0} files/s",
            mode.unwrap_or("none")
        );
        if let (Some(mode), Some(mut running)) = (mode, running) {
            traced_rates.push(rate);
            // Reports come every second; the third after the files exist has them all named.
            let stdout = running.child.stdout.take().context("memtrace stdout")?;
            let mut lines = BufReader::new(stdout).lines();
            let (mut seen, mut snapshot_ms, mut files) = (0, f64::NAN, 0);
            while let Some(Ok(line)) = lines.next() {
                let report: Value = serde_json::from_str(&line)?;
                files = report["totals"]["files"].as_u64().unwrap_or(0);
                seen += 1;
                if files >= options.files as u64 && seen >= 3 {
                    snapshot_ms = report["snapshot_seconds"].as_f64().unwrap_or(f64::NAN) * 1000.0;
                    break;
                }
                if seen > 60 {
                    bail!("memtrace never reported the {} files", options.files);
                }
            }
            modes.insert(
                mode.into(),
                json!({ "snapshot_ms": snapshot_ms, "peak_rss_mib": running.peak_rss_kib() as f64 / 1024.0, "files_tracked": files }),
            );
            // Keep reading while it stops, so a report in flight does not block it.
            thread::spawn(move || lines.for_each(drop));
        } else {
            none_rates.push(rate);
        }
        let _ = fs::remove_dir_all(&dir);
        remove_cgroups(&cgroups);
    }
    let _ = fs::remove_dir(&cgroup_root);
    sync_and_drop_caches();
    let none = median(none_rates);
    let traced = median(traced_rates);
    Ok(json!({
        "files": options.files, "cgroups": options.cgroups,
        "none_files_per_second": none, "memtrace_files_per_second": traced,
        "throughput_ratio": traced / none,
        "table_mode": modes.get("top"), "json_all_mode": modes.get("all"),
    }))
}

fn sync_and_drop_caches() {
    // SAFETY: sync has no memory effects.
    unsafe { libc::sync() };
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
}

/// Starts memtrace and waits until its programs are attached. Its reports go to `stdout`:
/// null unless the caller reads them (a full pipe would block it).
fn start_memtrace_with(
    memtrace: &Path,
    args: &[&str],
    stdout: Stdio,
    links: usize,
) -> Result<Running> {
    let mut child = Command::new(memtrace)
        .args(args)
        .stdout(stdout)
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting memtrace")?;
    let pid = child.id();
    let started = Instant::now();
    while bpf_links(pid) < links {
        if child.try_wait()?.is_some() || started.elapsed() > Duration::from_secs(30) {
            bail!("memtrace did not attach its programs");
        }
        thread::sleep(Duration::from_millis(20));
    }
    let cpu_ticks_at_start = cpu_ticks(pid);
    Ok(Running {
        child,
        cpu_ticks_at_start,
    })
}

fn remove_cgroups(root: &Path) {
    if let Ok(entries) = fs::read_dir(root) {
        for entry in entries.flatten() {
            if entry.metadata().is_ok_and(|m| m.is_dir() && m.ino() != 0) {
                let _ = fs::remove_dir(entry.path());
            }
        }
    }
    let _ = fs::remove_dir(root);
}
