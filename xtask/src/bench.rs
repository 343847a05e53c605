//! `cargo xtask bench`: what memtrace costs, measured as ratios of interleaved runs.
//!
//! Each round runs every workload with no tracer, with memtrace, with a bpftrace script
//! aggregating the same tracepoints per (cgroup, dev, ino), and with two floors (empty programs
//! on memtrace's own hooks), in a rotating order so machine noise lands on all alike. Then one
//! run per workload with the kernel's BPF stats on says where memtrace's nanoseconds go, per
//! program, beside the floor's. The many-files workload interleaves the same way, with
//! memtrace's output read as it comes. Results go to target/bench/report.{md,json} and the
//! Performance table in docs/performance.md; a missed goal fails the command after the report is written.

use std::{
    collections::HashMap,
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
use serde::Serialize;
use serde_json::{json, Value};

mod agent;
mod census;

use crate::{setup::apt_install, workspace};

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

/// `cargo xtask bench`: its options.
#[derive(clap::Args)]
pub(crate) struct BenchOptions {
    /// Interleaved rounds per workload.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Interleaved rounds of the many-files workload.
    #[arg(long, default_value_t = 3)]
    pub rounds_many: usize,
    /// Seconds per run.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Files in the many-files workload.
    #[arg(long, default_value_t = 100_000)]
    pub files: usize,
    /// Cgroups the files are spread over.
    #[arg(long, default_value_t = 1_000)]
    pub cgroups: usize,
    /// Only the many-files workload, printed as JSON (docs/performance.md is not rewritten).
    #[arg(long)]
    pub only_many_files: bool,
    /// Only the census at start on a million inodes, printed as JSON (docs/performance.md is
    /// not rewritten).
    #[arg(long)]
    pub only_census: bool,
    /// Only `serve` and `top` at 100,000 files against `watch --json`, printed as JSON
    /// (docs/performance.md is not rewritten).
    #[arg(long)]
    pub only_agent: bool,
}

/// Runs the benchmark as root, after installing what the build needs.
pub(crate) fn run_as_root(options: &BenchOptions) -> Result<()> {
    if !crate::is_root() {
        bail!("the benchmark loads eBPF programs and creates cgroups: run `sudo -E cargo xtask bench`");
    }
    crate::setup::ensure(crate::setup::Needs::Build)?;
    bench(options)
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
        // SIGINT ends memtrace and bpftrace cleanly; bpftrace can miss one that arrives while
        // it attaches (a bench once waited on it for nine minutes), so it is sent again each
        // second, and after ten the tracer is killed.
        for _ in 0..10 {
            // SAFETY: kill of our own child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
            for _ in 0..10 {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
        eprintln!(
            "xtask: tracer {} ignored SIGINT for 10 s: killed",
            self.child.id()
        );
        let _ = self.child.kill();
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
            return start_watch(memtrace, &args).map(|(running, _)| Some(running));
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
    let result: Value = serde_json::from_slice(&out.stdout).context("page-churn output")?;
    match result["pages_per_second"].as_f64() {
        Some(rate) if rate.is_finite() && rate > 0.0 => Ok(result),
        _ => bail!("page-churn {args:?} reported no rate: {result}"),
    }
}

/// A median that must exist: a rate that could not be measured is an error, not 0.
fn measured(what: &str, values: Vec<f64>) -> Result<f64> {
    let value = median(values.into_iter().filter(|v| v.is_finite()).collect());
    if value.is_nan() {
        bail!("{what} could not be measured");
    }
    Ok(value)
}

/// The `q` quantile of `values` (nearest rank); NaN when empty.
fn percentile(mut values: Vec<f64>, q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
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

/// The page-churn workloads: name, and bytes per write (0 for reads).
const WORKLOADS: &[(&str, u64)] = &[("churn", 4096), ("churn-1m", 1 << 20), ("read-churn", 0)];

impl Floor {
    /// Kernel program runs per page a workload causes on these hooks: one add and one delete,
    /// plus the writer hook: fexit on `vfs_write` runs once per write call, the fallback
    /// (`writeback_dirty_folio`) once per page dirtied.
    fn events_per_page(&self, write_bytes: u64) -> f64 {
        let has = |name: &str| self.hooks.iter().any(|(n, _)| n == name);
        let writer = if write_bytes == 0 {
            0.0
        } else if has("vfs_write") {
            4096.0 / write_bytes as f64
        } else if has("writeback_dirty_folio") {
            1.0
        } else {
            0.0
        };
        2.0 + writer
    }

    fn describe(&self) -> String {
        self.hooks
            .iter()
            .map(|(name, kind)| format!("{name} ({kind})"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The goals a run is judged against, each named once.
mod goal {
    /// 4 KiB churn with memtrace, against no tracer.
    pub(super) const CHURN_4K_THROUGHPUT: f64 = 0.95;
    /// 4 KiB churn: what memtrace's programs cost a page over empty programs on the same hooks,
    /// in the BPF stats.
    pub(super) const CHURN_4K_OVER_FLOOR_NS: f64 = 15.0;
    /// The other churn workloads (1 MiB writes, reads), against no tracer.
    pub(super) const OTHER_CHURN_THROUGHPUT: f64 = 0.98;
    /// memtrace's userspace while `watch` reports on a churning node.
    pub(super) const WATCHING_CPU_PERCENT: f64 = 1.0;
    /// 100,000 files over 1,000 cgroups, against no tracer.
    pub(super) const MANY_FILES_THROUGHPUT: f64 = 0.93;
    /// `watch --json` at 100,000 files.
    pub(super) const JSON_PEAK_RSS_MIB: f64 = 64.0;
    pub(super) const JSON_END_TO_END_MS: f64 = 100.0;
    /// Every report, the first two after a burst of 100,000 new files included.
    pub(super) const JSON_END_TO_END_P95_MS: f64 = 150.0;
    /// The census at start on a million inodes: the first report's share of the node's page
    /// cache, and how long until it is printed.
    pub(super) const CENSUS_COVERAGE: f64 = 0.97;
    pub(super) const CENSUS_FIRST_REPORT_SECONDS: f64 = 10.0;
    /// `serve` exporting 100,000 series: a scrape against a `watch --json` report of the same
    /// files, and its peak RSS (the exposition streamed, not held).
    pub(super) const SCRAPE_VS_WATCH: f64 = 1.5;
    pub(super) const SERVE_PEAK_RSS_MIB: f64 = 64.0;
    /// `top` at 100,000 files: every refresh, the first included.
    pub(super) const TOP_REFRESH_P95_MS: f64 = 100.0;
    pub(super) const TOP_PEAK_RSS_MIB: f64 = 64.0;
}

/// One goal, and whether this run met it.
struct Goal {
    what: String,
    measured: String,
    met: bool,
}

impl Goal {
    fn at_least(what: &str, value: f64, target: f64, shown: String) -> Self {
        Self {
            what: format!("{what} ≥ {}", percent_or_plain(target)),
            measured: shown,
            met: value >= target,
        }
    }

    fn at_most(what: &str, value: f64, target: f64, unit: &str) -> Self {
        Self {
            what: format!("{what} ≤ {target} {unit}"),
            measured: format!("{value:.1} {unit}"),
            met: value <= target,
        }
    }
}

fn percent_or_plain(value: f64) -> String {
    if value <= 1.0 {
        format!("{:.0}%", value * 100.0)
    } else {
        format!("{value}")
    }
}

/// One tracer's figures on one workload, medians of the interleaved rounds.
#[derive(Serialize)]
struct TracerResult {
    pages_per_second: f64,
    throughput_ratio: f64,
    ns_added_per_program_run: f64,
    ns_over_floor_per_program_run: f64,
    cpu_fraction_of_one_core: Option<f64>,
}

/// One churn workload: no tracer's rate, and each tracer's figures against it.
#[derive(Serialize)]
struct WorkloadResult {
    none_pages_per_second: f64,
    program_runs_per_page: f64,
    /// The empty tp_btf programs' throughput against no tracer: what no program could beat.
    floor_ratio: f64,
    tracers: Vec<(&'static str, TracerResult)>,
}

impl WorkloadResult {
    fn tracer(&self, tracer: Tracer) -> Option<&TracerResult> {
        self.tracers
            .iter()
            .find(|(name, _)| *name == tracer.name())
            .map(|(_, result)| result)
    }
}

/// One program's cost on one workload, from the kernel's BPF stats.
#[derive(Serialize)]
struct ProgramCost {
    workload: &'static str,
    program: String,
    runs_per_page: f64,
    ns_per_run: f64,
    floor_ns_per_run: Option<f64>,
}

/// A many-files mode's figures in steady state, medians of its rounds.
#[derive(Clone, Copy, Serialize)]
struct ModeSummary {
    snapshot_ms: f64,
    end_to_end_ms: f64,
    /// p95 and max of end to end over every report from the first holding every file, the
    /// first two after the burst included (all rounds pooled).
    end_to_end_p95_ms: f64,
    end_to_end_max_ms: f64,
    cpu_share: f64,
    peak_rss_mib: f64,
}

#[derive(Serialize)]
struct ManyFiles {
    files: usize,
    cgroups: usize,
    rounds: usize,
    none_files_per_second: f64,
    memtrace_files_per_second: f64,
    throughput_ratio: f64,
    unnamed_files: u64,
    /// `watch` with the ten largest files of each cgroup named.
    table_mode: ModeSummary,
    /// `watch --json`, every file named.
    json_all_mode: ModeSummary,
}

#[derive(Serialize)]
struct Machine {
    kernel: String,
    cpus: usize,
    hooks: String,
    rounds: usize,
    seconds_per_run: f64,
}

/// Everything a run measured: written to target/bench/report.json.
#[derive(Serialize)]
struct BenchResults {
    workloads: Vec<(&'static str, WorkloadResult)>,
    watching_cpu_fraction_of_one_core: f64,
    programs: Vec<ProgramCost>,
    many_files: ManyFiles,
    census: census::CensusAtStart,
    agent: agent::AgentAtCardinality,
    machine: Machine,
}

/// What the benchmark runs with: the binaries, their hooks, a scratch directory.
struct Setup {
    memtrace: PathBuf,
    churn: PathBuf,
    floor: Floor,
    work: PathBuf,
}

impl Setup {
    fn dir(&self) -> String {
        self.work.to_string_lossy().into_owned()
    }
}

fn bench(options: &BenchOptions) -> Result<()> {
    // Proactive reclaim paging out the workloads' cache at random would be noise.
    let _reclaim_paused = crate::damon::pause();
    let setup = prepare()?;
    if options.only_census {
        let census = census::census_at_start(&setup.memtrace, &setup.work)?;
        println!("{}", serde_json::to_string_pretty(&census)?);
        return Ok(());
    }
    if options.only_agent {
        let agent =
            agent::agent_at_cardinality(options, &setup.memtrace, &setup.churn, &setup.work)?;
        println!("{}", serde_json::to_string_pretty(&agent)?);
        return Ok(());
    }
    if options.only_many_files {
        let many = many_files(options, &setup.memtrace, &setup.churn, &setup.work)?;
        println!("{}", serde_json::to_string_pretty(&many)?);
        return Ok(());
    }
    // Where the time goes first: its run counts are what the per-run costs divide by.
    let programs = program_costs(&setup, &options.seconds.to_string())?;
    let mut workloads = Vec::new();
    for &(name, write_bytes) in WORKLOADS {
        workloads.push((
            name,
            churn_workload(options, &setup, &programs, name, write_bytes)?,
        ));
    }
    let watching = watching_cpu(&setup.memtrace, &setup.churn, &setup.dir())?;
    let many_files = many_files(options, &setup.memtrace, &setup.churn, &setup.work)?;
    let census = census::census_at_start(&setup.memtrace, &setup.work)?;
    let agent = agent::agent_at_cardinality(options, &setup.memtrace, &setup.churn, &setup.work)?;
    let results = BenchResults {
        workloads,
        watching_cpu_fraction_of_one_core: watching,
        programs,
        many_files,
        census,
        agent,
        machine: Machine {
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            cpus: thread::available_parallelism().map_or(0, |n| n.get()),
            hooks: setup.floor.describe(),
            rounds: options.rounds,
            seconds_per_run: options.seconds,
        },
    };
    let goals = judge(&results);
    let markdown = render_markdown(options, &results, &goals);

    let out_dir = workspace().join("target/bench");
    fs::create_dir_all(&out_dir)?;
    fs::write(
        out_dir.join("report.json"),
        serde_json::to_vec_pretty(&results)?,
    )?;
    fs::write(out_dir.join("report.md"), &markdown)?;
    write_into_performance_doc(&markdown)?;
    println!("{markdown}");
    println!("written to {} and docs/performance.md", out_dir.display());
    let _ = fs::remove_dir_all(&setup.work);
    let missed: Vec<&str> = goals
        .iter()
        .filter(|g| !g.met)
        .map(|g| g.what.as_str())
        .collect();
    if !missed.is_empty() {
        bail!("goals missed: {}", missed.join("; "));
    }
    Ok(())
}

/// Installs bpftrace, builds memtrace and the workload in release, finds memtrace's hooks,
/// and starts from dropped caches in an empty scratch directory.
fn prepare() -> Result<Setup> {
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
    let (memtrace, churn) = crate::soak::build_release()?;
    let floor = Floor::discover(&memtrace)?;
    eprintln!("xtask: memtrace's hooks here: {}", floor.describe());
    let work = PathBuf::from(WORK_DIR);
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    // Every figure starts from the same node: whatever earlier work left cached (a test run's
    // forty thousand files) would otherwise be in every report memtrace makes meanwhile. The
    // many-files runs measure memtrace with a hundred thousand files cached.
    sync_and_drop_caches();
    Ok(Setup {
        memtrace,
        churn,
        floor,
        work,
    })
}

/// Every tracer in the rotation, no tracer first.
const TRACERS: [Tracer; 5] = [
    Tracer::None,
    Tracer::Memtrace,
    Tracer::Bpftrace,
    Tracer::EmptyProbes,
    Tracer::EmptyBtfProbes,
];

/// One churn workload under every tracer, in interleaved rounds, and each tracer's figures
/// against no tracer (paired ratios: each round's run against the same round's baseline).
fn churn_workload(
    options: &BenchOptions,
    setup: &Setup,
    programs: &[ProgramCost],
    name: &'static str,
    write_bytes: u64,
) -> Result<WorkloadResult> {
    // Program runs per page as the kernel counted them (large folios make fewer than the
    // hooks' one per page), else as the hooks imply.
    let counted: f64 = programs
        .iter()
        .filter(|row| row.workload == name && row.program != "name_inode")
        .map(|row| row.runs_per_page)
        .sum();
    let events_per_page = if counted > 0.0 {
        counted
    } else {
        setup.floor.events_per_page(write_bytes)
    };
    let (dir, seconds) = (setup.dir(), options.seconds.to_string());
    let mut samples: Vec<Vec<Sample>> = Vec::new();
    for round in 0..options.rounds {
        let mut this_round = Vec::new();
        for i in 0..TRACERS.len() {
            let tracer = TRACERS[(i + round) % TRACERS.len()];
            let running = start(tracer, &setup.memtrace, "2s", &setup.floor)?;
            let began = Instant::now();
            let result = workload(&setup.churn, &[name, &dir, &seconds])?;
            let wall = began.elapsed().as_secs_f64();
            let tracer_cpu = running
                .as_ref()
                .filter(|_| tracer == Tracer::Memtrace)
                .map(|r| (r.cpu_ticks() - r.cpu_ticks_at_start) as f64 / ticks_per_second() / wall);
            drop(running);
            let pages_per_second = result["pages_per_second"].as_f64().unwrap_or(f64::NAN);
            eprintln!(
                "bench {name} round {round} {:>12}: {pages_per_second:.0} pages/s",
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
    let none_pages_per_second = measured(
        &format!("{name} without a tracer"),
        samples.iter().map(|r| rate(r, Tracer::None)).collect(),
    )?;
    let mut tracers = Vec::new();
    for &tracer in &TRACERS[1..] {
        let what = format!("{name} with {}", tracer.name());
        let throughput_ratio = measured(
            &what,
            samples
                .iter()
                .map(|r| rate(r, tracer) / rate(r, Tracer::None))
                .collect(),
        )?;
        let per_run_ns = |against: Tracer| {
            measured(
                &what,
                samples
                    .iter()
                    .map(|r| {
                        (1.0 / rate(r, tracer) - 1.0 / rate(r, against)) / events_per_page * 1e9
                    })
                    .collect(),
            )
        };
        let cpu = median(
            samples
                .iter()
                .flatten()
                .filter(|s| s.tracer == tracer)
                .filter_map(|s| s.tracer_cpu)
                .collect(),
        );
        tracers.push((
            tracer.name(),
            TracerResult {
                pages_per_second: measured(
                    &what,
                    samples.iter().map(|r| rate(r, tracer)).collect(),
                )?,
                throughput_ratio,
                ns_added_per_program_run: per_run_ns(Tracer::None)?,
                ns_over_floor_per_program_run: per_run_ns(Tracer::EmptyBtfProbes)?,
                cpu_fraction_of_one_core: (!cpu.is_nan()).then_some(cpu),
            },
        ));
    }
    Ok(WorkloadResult {
        none_pages_per_second,
        program_runs_per_page: events_per_page,
        floor_ratio: median(
            samples
                .iter()
                .map(|r| rate(r, Tracer::EmptyBtfProbes) / rate(r, Tracer::None))
                .collect(),
        ),
        tracers,
    })
}

/// What memtrace's attached programs cost a page of `workload` over the empty programs on the
/// same hooks, from the kernel's BPF stats (which do not move with the machine's noise as
/// throughput does): each program's runs per page times its nanoseconds over its floor's.
/// Programs run on demand (naming, the census) are not per page. NaN where a program had no
/// floor to compare with.
fn over_floor_per_page(programs: &[ProgramCost], workload: &str) -> f64 {
    programs
        .iter()
        .filter(|row| row.workload == workload && row.runs_per_page >= 0.01)
        .map(|row| {
            row.floor_ns_per_run.map_or(f64::NAN, |floor| {
                row.runs_per_page * (row.ns_per_run - floor)
            })
        })
        .sum()
}

/// The goals, each against what this run measured.
fn judge(results: &BenchResults) -> Vec<Goal> {
    let mut goals = Vec::new();
    for (name, workload) in &results.workloads {
        let Some(memtrace) = workload.tracer(Tracer::Memtrace) else {
            continue;
        };
        let ratio = memtrace.throughput_ratio;
        let shown = format!(
            "{:.1}% (floor {:.1}%)",
            ratio * 100.0,
            workload.floor_ratio * 100.0
        );
        if *name == "churn" {
            goals.push(Goal::at_least(
                "4 KiB churn throughput",
                ratio,
                goal::CHURN_4K_THROUGHPUT,
                shown,
            ));
            goals.push(Goal::at_most(
                "4 KiB churn: memtrace's programs over the empty ones, per page (BPF stats)",
                over_floor_per_page(&results.programs, name),
                goal::CHURN_4K_OVER_FLOOR_NS,
                "ns",
            ));
        } else {
            goals.push(Goal::at_least(
                &format!("{name} throughput"),
                ratio,
                goal::OTHER_CHURN_THROUGHPUT,
                shown,
            ));
        }
    }
    goals.push(Goal::at_most(
        "userspace CPU while watching a churning node",
        results.watching_cpu_fraction_of_one_core * 100.0,
        goal::WATCHING_CPU_PERCENT,
        "% of a core",
    ));
    let many = &results.many_files;
    goals.push(Goal::at_least(
        "many files throughput",
        many.throughput_ratio,
        goal::MANY_FILES_THROUGHPUT,
        format!("{:.1}%", many.throughput_ratio * 100.0),
    ));
    goals.push(Goal {
        what: "many files: every file with cache named".into(),
        measured: format!("{} unnamed", many.unnamed_files),
        met: many.unnamed_files == 0,
    });
    goals.push(Goal::at_most(
        "`watch --json` at 100,000 files: peak RSS",
        many.json_all_mode.peak_rss_mib,
        goal::JSON_PEAK_RSS_MIB,
        "MiB",
    ));
    goals.push(Goal::at_most(
        "`watch --json` at 100,000 files: snapshot end to end, serialization included",
        many.json_all_mode.end_to_end_ms,
        goal::JSON_END_TO_END_MS,
        "ms",
    ));
    goals.push(Goal::at_most(
        "`watch --json` at 100,000 files: p95 end to end from the first report after the burst",
        many.json_all_mode.end_to_end_p95_ms,
        goal::JSON_END_TO_END_P95_MS,
        "ms",
    ));
    let census = &results.census;
    goals.push(Goal::at_least(
        "census at start on a million inodes: the first report's coverage of the node's page cache",
        census.coverage,
        goal::CENSUS_COVERAGE,
        format!("{:.1}%", census.coverage * 100.0),
    ));
    goals.push(Goal::at_most(
        "census at start on a million inodes: time to the first report",
        census.first_report_seconds,
        goal::CENSUS_FIRST_REPORT_SECONDS,
        "s",
    ));
    let agent = &results.agent;
    goals.push(Goal::at_most(
        "`serve` at 100,000 series: a scrape against a `watch --json` report",
        agent.scrape_ms / agent.watch_end_to_end_ms,
        goal::SCRAPE_VS_WATCH,
        "×",
    ));
    goals.push(Goal::at_most(
        "`serve` at 100,000 series: peak RSS",
        agent.serve_peak_rss_mib,
        goal::SERVE_PEAK_RSS_MIB,
        "MiB",
    ));
    goals.push(Goal::at_most(
        "`top` at 100,000 files: p95 of every refresh, the first included",
        agent.top_refresh_p95_ms,
        goal::TOP_REFRESH_P95_MS,
        "ms",
    ));
    goals.push(Goal::at_most(
        "`top` at 100,000 files: peak RSS",
        agent.top_peak_rss_mib,
        goal::TOP_PEAK_RSS_MIB,
        "MiB",
    ));
    goals
}

/// The Performance table: the run's header, the churn table, the BPF stats, the many-files
/// table and the goals.
fn render_markdown(options: &BenchOptions, results: &BenchResults, goals: &[Goal]) -> String {
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let machine = &results.machine;
    let mut markdown = format!(
        "Run of {date} on Linux {} ({} CPUs), {} rounds × {} s per workload. memtrace's hooks here: {}. The floor (*empty tp_btf*) is `memtrace calibrate`: empty programs on exactly those hooks.\n\n",
        machine.kernel, machine.cpus, options.rounds, options.seconds, machine.hooks
    );
    markdown += "| workload | tracer | pages/s (median) | throughput vs none | ns added per program run | over the tp_btf floor | memtrace CPU (1 core) |\n|---|---|---:|---:|---:|---:|---:|\n";
    for (name, workload) in &results.workloads {
        // Below one program run per page (large folios, 1 MiB writes) throughput noise swamps
        // a per-run figure: the BPF stats table gives those.
        let resolvable = workload.program_runs_per_page >= 1.0;
        for (tracer, r) in &workload.tracers {
            let over_floor = if *tracer == Tracer::EmptyBtfProbes.name() || !resolvable {
                "-".to_owned()
            } else {
                format!("{:.1}", r.ns_over_floor_per_program_run)
            };
            let added = if resolvable {
                format!("{:.1}", r.ns_added_per_program_run)
            } else {
                "-".to_owned()
            };
            let cpu = r
                .cpu_fraction_of_one_core
                .map_or("-".to_owned(), |cpu| format!("{:.2}%", cpu * 100.0));
            markdown += &format!(
                "| {name} | {tracer} | {:.0} | {:.1}% | {added} | {over_floor} | {cpu} |\n",
                r.pages_per_second,
                r.throughput_ratio * 100.0,
            );
        }
        markdown += &format!(
            "| {name} | none | {:.0} | 100% | - | - | - |\n",
            workload.none_pages_per_second
        );
    }
    markdown += &format!(
        "\nmemtrace's own CPU while `watch` (2 s interval) reports on a node churning 4 KiB writes for {WATCHING_SECONDS} s: {:.2}% of one core.\n",
        results.watching_cpu_fraction_of_one_core * 100.0
    );
    markdown += "\nWhere the time goes, from the kernel's BPF stats (one run per workload with `kernel.bpf_stats_enabled=1`, which adds its own few ns per run to both columns):\n\n| workload | program | runs per page | ns per run | empty floor program's ns per run |\n|---|---|---:|---:|---:|\n";
    for row in &results.programs {
        markdown += &format!(
            "| {} | {} | {:.3} | {:.1} | {} |\n",
            row.workload,
            row.program,
            row.runs_per_page,
            row.ns_per_run,
            row.floor_ns_per_run
                .map_or("-".to_owned(), |v| format!("{v:.1}")),
        );
    }
    let many = &results.many_files;
    let (table, json) = (&many.table_mode, &many.json_all_mode);
    markdown += &format!(
        "\n| many files ({} files, {} cgroups, {} interleaved rounds) | value |\n|---|---:|\n| files/s without tracer | {:.0} |\n| files/s with memtrace | {:.0} ({:.1}%) |\n| files with cache left unnamed, `watch --json` | {} |\n| snapshot drafted, `watch` (maps read, cgroups summed and named; files are built as they are written; 10 largest named; steady state: median of the third to the seventh report holding every file) | {:.0} ms |\n| memtrace's CPU, `watch` at 1 s, steady state | {:.1}% of a core |\n| peak RSS, `watch` | {:.1} MiB |\n| snapshot drafted, `watch --json` (every file named; steady state) | {:.0} ms |\n| snapshot end to end, `watch --json`: from the snapshot's start to its last byte read by the consumer (median, as above) | {:.0} ms |\n| the same, p95 and max over every report from the first holding every file (the burst's first two included) | {:.0} ms, {:.0} ms |\n| memtrace's CPU, `watch --json` at 1 s, steady state | {:.1}% of a core |\n| peak RSS, `watch --json` | {:.1} MiB |\n",
        many.files,
        many.cgroups,
        many.rounds,
        many.none_files_per_second,
        many.memtrace_files_per_second,
        many.throughput_ratio * 100.0,
        many.unnamed_files,
        table.snapshot_ms,
        table.cpu_share * 100.0,
        table.peak_rss_mib,
        json.snapshot_ms,
        json.end_to_end_ms,
        json.end_to_end_p95_ms,
        json.end_to_end_max_ms,
        json.cpu_share * 100.0,
        json.peak_rss_mib,
    );
    let census = &results.census;
    markdown += &format!(
        "\n| census at start ({} inodes, {} holding 4 KiB; `watch --json --count 1`, median of 3) | value |\n|---|---:|\n| from start to the first report's last byte | {:.2} s |\n| the census alone | {:.2} s |\n| memtrace's CPU | {:.2} s |\n| peak RSS | {:.1} MiB |\n| the first report's share of the node's page cache (Cached + Buffers) | {:.1}% |\n| Active(file), Inactive(file) moved over the run (the whole node's) | {:+.1} MiB, {:+.1} MiB |\n",
        census.inodes,
        census.cached_files,
        census.first_report_seconds,
        census.census_seconds,
        census.cpu_seconds,
        census.peak_rss_mib,
        census.coverage * 100.0,
        census.active_file_moved_mib,
        census.inactive_file_moved_mib,
    );
    let agent = &results.agent;
    markdown += &format!(
        "\n| `serve` and `top` at {} files over {} cgroups (made before memtrace starts; interleaved with `watch --json` on the same files) | value |\n|---|---:|\n| `watch --json` end to end (median of steady reports) | {:.0} ms |\n| `watch --json` peak RSS | {:.1} MiB |\n| `serve` scrape, every file exported (limit {} series): request to last byte, median (p95) | {:.0} ms ({:.0} ms) |\n| size of a scrape | {:.1} MiB |\n| `serve` peak RSS | {:.1} MiB |\n| `top` refresh (report, judgement of the cgroups on screen, drawing), median (p95), the first included | {:.0} ms ({:.0} ms) |\n| `top` peak RSS | {:.1} MiB |\n",
        agent.files,
        agent.cgroups,
        agent.watch_end_to_end_ms,
        agent.watch_peak_rss_mib,
        agent.series_limit,
        agent.scrape_ms,
        agent.scrape_p95_ms,
        agent.scrape_bytes / f64::from(1 << 20),
        agent.serve_peak_rss_mib,
        agent.top_refresh_ms,
        agent.top_refresh_p95_ms,
        agent.top_peak_rss_mib,
    );
    markdown += "\n| goal | measured | met |\n|---|---|---|\n";
    for goal in goals {
        markdown += &format!(
            "| {} | {} | {} |\n",
            goal.what,
            goal.measured,
            if goal.met { "yes" } else { "**no**" }
        );
    }
    markdown
}

/// Long enough for ten reports: a 3 s run holds one or two, and its CPU figure is noise.
const WATCHING_SECONDS: u64 = 20;

/// memtrace's CPU (utime + stime, all threads) as a fraction of one core, measured from its
/// first report over a long churn.
fn watching_cpu(memtrace: &Path, churn: &Path, dir: &str) -> Result<f64> {
    let (running, _reports) = start_watch(memtrace, &["watch", "--json", "--interval", "2s"])?;
    let began = Instant::now();
    workload(churn, &["churn", dir, &WATCHING_SECONDS.to_string()])?;
    let wall = began.elapsed().as_secs_f64();
    let cpu = (running.cpu_ticks() - running.cpu_ticks_at_start) as f64 / ticks_per_second() / wall;
    Ok(cpu)
}

const TABLE_BEGIN: &str = "<!-- bench:begin (written by cargo xtask bench) -->";
const TABLE_END: &str = "<!-- bench:end -->";

/// Replaces the generated table in docs/performance.md with this run's.
fn write_into_performance_doc(markdown: &str) -> Result<()> {
    let path = workspace().join("docs/performance.md");
    let text = fs::read_to_string(&path)?;
    let (Some(begin), Some(end)) = (text.find(TABLE_BEGIN), text.find(TABLE_END)) else {
        bail!("docs/performance.md has no {TABLE_BEGIN} ... {TABLE_END} section to write into");
    };
    let updated = format!(
        "{}{TABLE_BEGIN}\n\n{markdown}\n{}",
        &text[..begin],
        &text[end..]
    );
    fs::write(&path, updated)?;
    Ok(())
}

/// memtrace's programs and the empty programs of `memtrace calibrate` on the same hooks.
const FLOOR_OF: &[(&str, &str)] = &[
    ("filemap_add", "floor_add"),
    ("filemap_delete", "floor_delete"),
    ("dirty_folio", "floor_dirty"),
    ("vfs_write_exit", "floor_vfs_write"),
    ("folio_accessed", "floor_accessed"),
    ("cgroup_mkdir", "floor_cgroup_mkdir"),
    ("cgroup_rmdir", "floor_cgroup_rmdir"),
];

/// One run per workload with the kernel's BPF stats on, for memtrace and for the floor: each
/// program's runs per page and nanoseconds per run, as bpftool reads them.
fn program_costs(setup: &Setup, seconds: &str) -> Result<Vec<ProgramCost>> {
    let (memtrace, churn, floor) = (&setup.memtrace, &setup.churn, &setup.floor);
    let dir = &setup.dir();
    let stats = Path::new("/proc/sys/kernel/bpf_stats_enabled");
    let before = fs::read_to_string(stats).unwrap_or_else(|_| "0".into());
    fs::write(stats, "1").context("enabling kernel.bpf_stats_enabled")?;
    let measure = || -> Result<Vec<ProgramCost>> {
        let mut rows = Vec::new();
        for &(name, _) in WORKLOADS {
            let mut costs: Vec<HashMap<String, (f64, f64)>> = Vec::new();
            for tracer in [Tracer::Memtrace, Tracer::EmptyBtfProbes] {
                let running = start(tracer, memtrace, "2s", floor)?.context("a tracer")?;
                let pid = running.child.id();
                let first = programs_of(pid)?;
                let result = workload(churn, &[name, dir, seconds])?;
                let last = programs_of(pid)?;
                drop(running);
                let pages = result["pages"].as_f64().unwrap_or(f64::NAN);
                let mut by_hook = HashMap::new();
                for (id, (prog, time, count)) in &last {
                    let (_, time0, count0) = first.get(id).cloned().unwrap_or_default();
                    let runs = count.saturating_sub(count0) as f64;
                    if runs == 0.0 {
                        continue;
                    }
                    let ns = time.saturating_sub(time0) as f64 / runs;
                    by_hook.insert(prog.clone(), (runs / pages, ns));
                }
                costs.push(by_hook);
            }
            let floor_costs = &costs[1];
            for (program, (per_page, ns)) in &costs[0] {
                // The floor's program on the same hook (bpftool shows names cut to 15 bytes).
                let floor_ns = FLOOR_OF
                    .iter()
                    .find(|(ours, _)| program == ours)
                    .and_then(|(_, floor)| {
                        floor_costs
                            .iter()
                            .find(|(name, _)| floor.starts_with(name.as_str()))
                    })
                    .map(|(_, (_, ns))| *ns);
                rows.push(ProgramCost {
                    workload: name,
                    program: program.clone(),
                    runs_per_page: *per_page,
                    ns_per_run: *ns,
                    floor_ns_per_run: floor_ns,
                });
            }
        }
        Ok(rows)
    };
    let rows = measure();
    let _ = fs::write(stats, before.trim());
    rows
}

/// The BPF programs `pid` holds, by id: (name, run_time_ns, run_cnt), from `bpftool prog show`.
fn programs_of(pid: u32) -> Result<HashMap<u64, (String, u64, u64)>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("bpftool (cargo xtask setup installs it)")?;
    let all: Value = serde_json::from_slice(&out.stdout).context("bpftool prog show --json")?;
    // Which programs the process holds: the prog_id of each bpf-prog descriptor (Debian's
    // bpftool does not list holders itself).
    let held: std::collections::HashSet<u64> = fs::read_dir(format!("/proc/{pid}/fd"))?
        .flatten()
        .filter(|e| fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains("bpf-prog")))
        .filter_map(|e| {
            let info = fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                e.file_name().to_string_lossy()
            ))
            .ok()?;
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect();
    let mut found = HashMap::new();
    for prog in all.as_array().into_iter().flatten() {
        if !prog["id"].as_u64().is_some_and(|id| held.contains(&id)) {
            continue;
        }
        found.insert(
            prog["id"].as_u64().unwrap_or(0),
            (
                prog["name"].as_str().unwrap_or("?").to_owned(),
                prog["run_time_ns"].as_u64().unwrap_or(0),
                prog["run_cnt"].as_u64().unwrap_or(0),
            ),
        );
    }
    Ok(found)
}

/// 100,000 small files across 1,000 cgroups, in interleaved rounds (no tracer, `watch` with
/// the ten largest named, `watch --json` naming every file): throughput, then memtrace's
/// snapshot latency and peak RSS with all of them tracked. memtrace's output is read as it
/// comes, as a real consumer would, so a blocked writer cannot flatter it.
fn many_files(
    options: &BenchOptions,
    memtrace: &Path,
    churn: &Path,
    work: &Path,
) -> Result<ManyFiles> {
    let cgroup_root = bench_cgroup_root("memtrace-bench");
    let modes: [Option<&str>; 3] = [None, Some("top"), Some("all")];
    let mut none_rates = Vec::new();
    let mut traced_rates = Vec::new();
    let mut by_mode: HashMap<&str, Vec<ModeRun>> = HashMap::new();
    let mut run = 0;
    for round in 0..options.rounds_many {
        for i in 0..modes.len() {
            let mode = modes[(i + round) % modes.len()];
            // Each run starts from dropped caches: thousands of dying memcgs left by the
            // previous run slow cgroup work down for everyone, which would bias the order.
            sync_and_drop_caches();
            let dir = work.join(format!("many-{run}"));
            fs::create_dir_all(&dir)?;
            let cgroups = cgroup_root.join(format!("run-{run}"));
            fs::create_dir_all(&cgroups)?;
            run += 1;
            let reports = match mode {
                None => None,
                Some(mode) => {
                    let mut args = vec!["watch", "--json", "--interval", "1s"];
                    if mode == "top" {
                        args.extend(["--top", "10"]);
                    }
                    Some(start_watch(memtrace, &args)?)
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
            let rate = result["pages_per_second"].as_f64().unwrap_or(f64::NAN);
            eprintln!(
                "bench many-files round {round} {:>4}: {rate:.0} files/s",
                mode.unwrap_or("none")
            );
            if let (Some(mode), Some((running, rx))) = (mode, reports) {
                traced_rates.push(rate);
                let run = steady_state(options, mode, running, &rx)?;
                by_mode.entry(mode).or_default().push(run);
            } else {
                none_rates.push(rate);
            }
            let _ = fs::remove_dir_all(&dir);
            remove_cgroups(&cgroups);
        }
    }
    let _ = fs::remove_dir(&cgroup_root);
    sync_and_drop_caches();
    let none = measured("many files without a tracer", none_rates)?;
    let traced = measured("many files with memtrace", traced_rates)?;
    let summary = |mode: &str| -> Result<ModeSummary> {
        let runs = by_mode.get(mode).cloned().unwrap_or_default();
        let of = |what: &str, figure: fn(&ModeRun) -> f64| {
            measured(&format!("{mode} {what}"), runs.iter().map(figure).collect())
        };
        let tail: Vec<f64> = runs
            .iter()
            .flat_map(|r| r.tail_ms.iter().copied())
            .filter(|v| v.is_finite())
            .collect();
        if tail.is_empty() {
            bail!("{mode}: no report held every file");
        }
        Ok(ModeSummary {
            snapshot_ms: of("snapshot", |r| r.snapshot_ms)?,
            end_to_end_ms: of("snapshot end to end", |r| r.end_to_end_ms)?,
            end_to_end_p95_ms: percentile(tail.clone(), 0.95),
            end_to_end_max_ms: tail.iter().copied().fold(f64::NAN, f64::max),
            cpu_share: of("CPU", |r| r.cpu_share)?,
            peak_rss_mib: of("RSS", |r| r.peak_rss_mib)?,
        })
    };
    let unnamed: u64 = by_mode
        .get("all")
        .map(|runs| runs.iter().map(|r| r.unnamed).max().unwrap_or(0))
        .unwrap_or(u64::MAX);
    Ok(ManyFiles {
        files: options.files,
        cgroups: options.cgroups,
        rounds: options.rounds_many,
        none_files_per_second: none,
        memtrace_files_per_second: traced,
        throughput_ratio: traced / none,
        unnamed_files: unnamed,
        table_mode: summary("top")?,
        json_all_mode: summary("all")?,
    })
}

/// Reads a traced many-files run's reports as they come and takes its steady-state figures.
fn steady_state(
    options: &BenchOptions,
    mode: &str,
    running: Running,
    rx: &mpsc::Receiver<Arrival>,
) -> Result<ModeRun> {
    // Steady state: the reports from the third that holds every file (the first
    // two still take in the burst of their creation) to the STEADY_REPORTS-th,
    // their medians; the last is the one checked for names. memtrace's CPU is
    // taken from the first full report to the last.
    let (mut seen, mut full, mut found) = (0, 0, None);
    let mut first_full: Option<(Instant, u64)> = None;
    let (mut snapshots_ms, mut ends_to_end_ms) = (Vec::new(), Vec::new());
    // The tail: every report from the first that holds every file, the two that still take in
    // the burst included.
    let mut tail_ms = Vec::new();
    let mut cpu_per_second = f64::NAN;
    while let Ok((line, arrived)) = rx.recv_timeout(Duration::from_secs(30)) {
        // Only the report's own figures while memtrace runs: a whole report of
        // 100,000 files parsed into a DOM here is a second of this 2-CPU machine's
        // time, taken from the memtrace it measures. The report kept is parsed
        // whole after the run.
        let mut report = report_figures(&line)?;
        // The snapshot began `snapshot_seconds` before its timestamp; the consumer
        // had all of it when its last byte arrived.
        let began = report["timestamp"].as_f64().unwrap_or(f64::NAN)
            - report["snapshot_seconds"].as_f64().unwrap_or(f64::NAN);
        let arrived = arrived
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(f64::NAN, |d| d.as_secs_f64());
        report["end_to_end_ms"] = json!((arrived - began) * 1000.0);
        let files = report["totals"]["files"].as_u64().unwrap_or(0);
        seen += 1;
        if files >= options.files as u64 {
            full += 1;
            tail_ms.push(report["end_to_end_ms"].as_f64().unwrap_or(f64::NAN));
            let (now, ticks) = (Instant::now(), running.cpu_ticks());
            let (then, before) = *first_full.get_or_insert((now, ticks));
            if full >= 3 {
                snapshots_ms.push(report["snapshot_seconds"].as_f64().unwrap_or(f64::NAN) * 1000.0);
                ends_to_end_ms.push(report["end_to_end_ms"].as_f64().unwrap_or(f64::NAN));
            }
            if full >= STEADY_REPORTS {
                cpu_per_second = (ticks - before) as f64
                    / ticks_per_second()
                    / now.duration_since(then).as_secs_f64();
                found = Some(line);
                break;
            }
        }
        if seen > 60 {
            break;
        }
    }
    let peak_rss_mib = running.peak_rss_kib() as f64 / 1024.0;
    drop(running);
    let line =
        found.with_context(|| format!("memtrace never reported the {} files", options.files))?;
    let snapshot_ms = median(snapshots_ms);
    // Only `--json` without --top names every file; `top` names ten.
    let unnamed = if mode == "all" {
        unnamed_files(&serde_json::from_str(&line)?)
    } else {
        0
    };
    let end_to_end_ms = median(ends_to_end_ms);
    Ok(ModeRun {
        snapshot_ms,
        end_to_end_ms,
        tail_ms,
        cpu_share: cpu_per_second,
        peak_rss_mib,
        unnamed,
    })
}

/// One traced many-files run's figures.
#[derive(Clone)]
struct ModeRun {
    snapshot_ms: f64,
    end_to_end_ms: f64,
    /// End to end, every report from the first that holds every file.
    tail_ms: Vec<f64>,
    cpu_share: f64,
    peak_rss_mib: f64,
    unnamed: u64,
}

/// Reports holding every file that a many-files run reads: the third to the seventh are
/// measured.
const STEADY_REPORTS: usize = 7;

/// A `watch --json` report's own figures (everything before its cgroups, which come last),
/// parsed without the cgroups.
fn report_figures(line: &str) -> Result<Value> {
    // The only `cgroups` whose value is a list (`totals.cgroups` is a count).
    const CGROUPS: &str = ",\"cgroups\":[";
    let end = line
        .find(CGROUPS)
        .context("a report line without its cgroups")?;
    Ok(serde_json::from_str(&format!(
        "{}{}]}}",
        &line[..end],
        CGROUPS
    ))?)
}

/// Files of the bench's cgroups that hold cache but carry no name in `report`.
fn unnamed_files(report: &Value) -> u64 {
    report["cgroups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| {
            c["path"]
                .as_str()
                .is_some_and(|p| p.contains("memtrace-bench"))
        })
        .flat_map(|c| c["files"].as_array().into_iter().flatten())
        .filter(|f| f["cached_bytes"].as_u64().unwrap_or(0) > 0 && f["path"].is_null())
        .count() as u64
}

fn sync_and_drop_caches() {
    // SAFETY: sync has no memory effects.
    unsafe { libc::sync() };
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
}

/// The consumer's read size: memtrace widens its stdout pipe to 1 MiB.
const PIPE_READ_BYTES: usize = 1 << 20;

/// A report line and when its last byte was read.
type Arrival = (String, std::time::SystemTime);

/// Starts `memtrace watch ...` and waits for its first report, so what it does once at start
/// (loading, the scan for cache that predates it) is over before a workload runs: the bench
/// measures memtrace as the agent it is, running for weeks. Its reports are read as they come
/// (a full pipe would block it) and handed over on the returned channel, which may be dropped.
fn start_watch(memtrace: &Path, args: &[&str]) -> Result<(Running, mpsc::Receiver<Arrival>)> {
    let mut running = start_memtrace_with(memtrace, args, Stdio::piped(), 5)?;
    let stdout = running.child.stdout.take().context("memtrace stdout")?;
    let (tx, rx) = mpsc::channel::<Arrival>();
    thread::spawn(move || {
        // Read as a log shipper reads a pipe: as much as it holds per call (`BufReader`'s
        // default 8 KiB would take thousands of calls per report of 100,000 files), into a
        // buffer kept from line to line; a report arrived when its last byte was read.
        let mut reader = BufReader::with_capacity(PIPE_READ_BYTES, stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let arrived = std::time::SystemTime::now();
            // Nobody listening any more: keep reading all the same.
            let _ = tx.send((String::from_utf8_lossy(&line).into_owned(), arrived));
        }
    });
    rx.recv_timeout(Duration::from_secs(120))
        .context("memtrace watch printed no first report")?;
    running.cpu_ticks_at_start = running.cpu_ticks();
    Ok((running, rx))
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

/// Where the bench makes its cgroups `name`: under cgroup v1's memory controller when it is
/// mounted, else in the unified hierarchy.
fn bench_cgroup_root(name: &str) -> PathBuf {
    let memory_root = Path::new("/sys/fs/cgroup/memory");
    if memory_root.join("cgroup.procs").exists() {
        memory_root.join(name)
    } else {
        Path::new("/sys/fs/cgroup").join(name)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_and_the_max_is_the_tail() {
        let reports = vec![80.0, 300.0, 70.0, 75.0, 72.0, 71.0, 74.0, 180.0, 73.0, 76.0];
        assert_eq!(percentile(reports.clone(), 0.95), 300.0);
        assert_eq!(percentile(reports.clone(), 0.5), 74.0);
        assert!(percentile(Vec::new(), 0.95).is_nan());
        assert_eq!(median(reports), 74.5);
    }
}
