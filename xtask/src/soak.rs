//! `cargo xtask soak`: memtrace serve under an hour (by default) of file and cgroup churn, as a
//! node agent lives for weeks: a million distinct files over thousands of cgroups made and
//! removed, scraped every round. Reports RSS over time, lost events by reason, map use and
//! overflow, and the agreement of a fresh cgroup with memory.stat at checkpoints every ten
//! minutes and at the end; fails on any lost page, RSS still growing over the last third, a
//! checkpoint off by more than a folio, a scrape slower than its budget, or a series missing.
//! Not part of CI (it takes an hour).

use std::{
    fmt::Write as _,
    fs,
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{setup::run, workspace};

/// `cargo xtask soak`: its options.
#[derive(clap::Args)]
pub(crate) struct SoakOptions {
    /// Minutes to run.
    #[arg(long, default_value_t = 60)]
    pub(crate) minutes: u64,
    /// Distinct files made and removed over the run.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) files: u64,
    /// Cgroups made and removed over the run.
    #[arg(long, default_value_t = 3_000)]
    pub(crate) cgroups: u64,
    /// Port memtrace serve listens on (loopback); it also names the run's directory and
    /// cgroups, so two soaks can run side by side.
    #[arg(long, default_value_t = 19_463)]
    pub(crate) port: u16,
}

/// Runs the soak as root, after installing what the build needs.
pub(crate) fn run_as_root(options: &SoakOptions) -> Result<()> {
    if !crate::is_root() {
        bail!("the soak loads eBPF programs and creates cgroups: run it as root");
    }
    crate::setup::ensure(crate::setup::Needs::Build)?;
    soak(options)
}

fn scrape(addr: &str) -> Result<String> {
    let mut stream = TcpStream::connect(addr).context("connect to memtrace serve")?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}

/// The sum of every sample of series `name` (with or without labels); an error when the scrape
/// has none, rather than a silent 0.
fn sum_of(text: &str, name: &str) -> Result<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    if values.is_empty() {
        bail!("the scrape has no `{name}` series");
    }
    Ok(values.iter().sum())
}

/// `memtrace_lost_events_total` by reason, the non-zero ones, as `reason=N, ...`.
fn lost_by_reason(text: &str) -> String {
    let reasons: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("memtrace_lost_events_total{"))
        .filter_map(|l| {
            let reason = l.split("reason=\"").nth(1)?.split('"').next()?;
            let value = l.rsplit(' ').next()?.parse::<f64>().ok()?;
            (value > 0.0).then(|| format!("{reason}={value:.0}"))
        })
        .collect();
    if reasons.is_empty() {
        "none".to_owned()
    } else {
        reasons.join(", ")
    }
}

/// Longest a scrape may take at this size before the soak fails.
const SCRAPE_BUDGET: Duration = Duration::from_secs(2);
/// Minutes between checkpoints (a fresh cgroup compared with memory.stat).
const CHECKPOINT_EVERY: u64 = 10;
/// RSS may grow by this much over the last third of the run before it counts as growing.
const RSS_SLACK: f64 = 0.05;

/// A fresh cgroup writes and syncs a 32 MiB file; returns memtrace's figure for it and
/// memory.stat's, in bytes.
fn checkpoint(addr: &str, cgroup_root: &Path, work: &Path, name: &str) -> Result<(f64, f64)> {
    let fresh = cgroup_root.join(name);
    fs::create_dir_all(&fresh)?;
    let file = work.join(format!("{name}.log"));
    let status = Command::new("sh")
        .args(["-c", &format!(
            "echo $$ > {}/cgroup.procs && dd if=/dev/zero of={} bs=1M count=32 conv=fsync status=none",
            fresh.display(),
            file.display()
        )])
        .status()?;
    if !status.success() {
        bail!("writing the checkpoint file {} failed", file.display());
    }
    // memory.stat folds per-CPU counts within 2 s; a scrape after that sees both settled.
    thread::sleep(Duration::from_secs(3));
    let text = scrape(addr)?;
    // The cgroup's path in its hierarchy: the soak's root sits at the hierarchy's top.
    let root_name = cgroup_root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let path = format!("/{root_name}/{name}");
    let shown = text
        .lines()
        .filter(|l| l.starts_with("memtrace_cgroup_page_cache_bytes{"))
        .find(|l| l.contains(&format!("cgroup=\"{path}\"")))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .with_context(|| format!("the scrape has no page-cache series for {path}"))?;
    let stat = fs::read_to_string(fresh.join("memory.stat")).unwrap_or_default();
    let kernel: f64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("cache ").or_else(|| l.strip_prefix("file ")))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("{} has no page-cache figure", fresh.display()))?;
    let _ = fs::remove_file(&file);
    Ok((shown, kernel))
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn memory_root() -> PathBuf {
    let v1 = Path::new("/sys/fs/cgroup/memory");
    if v1.join("cgroup.procs").exists() {
        v1.to_path_buf()
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}

fn soak(options: &SoakOptions) -> Result<()> {
    let (memtrace, churn) = build_release()?;
    let work = PathBuf::from(format!("/var/tmp/memtrace-soak-{}", options.port));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let cgroup_root = memory_root().join(format!("memtrace-soak-{}", options.port));
    fs::create_dir_all(&cgroup_root)?;
    let addr = &format!("127.0.0.1:{}", options.port);
    let serve = Serving(
        Command::new(&memtrace)
            .args(["serve", "--no-seed", "--listen", addr])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start memtrace serve")?,
    );
    thread::sleep(Duration::from_secs(3));

    let rounds = options.minutes.max(1);
    let plan = Plan {
        files_per_round: options.files.div_ceil(rounds),
        cgroups_per_round: options.cgroups.div_ceil(rounds).max(1),
        addr,
        pid: serve.0.id(),
        cgroup_root: &cgroup_root,
        work: &work,
    };
    let started = Instant::now();
    let mut judge = Judge::default();
    for round in 0..rounds {
        let round_started = Instant::now();
        churn_round(&churn, &plan, round)?;
        judge.round(&plan, round)?;
        let spent = round_started.elapsed();
        if spent < Duration::from_secs(60) {
            thread::sleep(Duration::from_secs(60) - spent);
        }
    }
    let (shown, kernel) = judge.end(&plan)?;
    // Read while it runs: the kernel forgets a process's peak when it is reaped.
    let peak = rss_kib(plan.pid, "VmHWM:");
    drop(serve);
    if let Ok(entries) = fs::read_dir(&cgroup_root) {
        for entry in entries.flatten() {
            let _ = fs::remove_dir(entry.path());
        }
    }
    let _ = fs::remove_dir(&cgroup_root);
    let verdict = if judge.failures.is_empty() {
        "Verdict: PASS.".to_owned()
    } else {
        format!("Verdict: FAIL:\n- {}", judge.failures.join("\n- "))
    };
    let report = format!(
        "Soak: {} minutes, {} files over {} cgroups made and removed, memtrace serve scraped every minute.\n\n{}\nEnd: a fresh cgroup's 32 MiB file: memtrace {shown:.0} B, memory.stat {kernel:.0} B ({:+.2}%); lost events {:.0}; {:.0} s in all.{}\n\n{verdict}\n",
        rounds,
        plan.files_per_round * rounds,
        plan.cgroups_per_round * rounds,
        judge.table,
        if kernel > 0.0 { (shown - kernel) * 100.0 / kernel } else { f64::NAN },
        judge.lost,
        started.elapsed().as_secs_f64(),
        if peak > 0 { format!(" Peak RSS {:.1} MiB.", peak as f64 / 1024.0) } else { String::new() },
    );
    let out_dir = workspace().join("target/soak");
    fs::create_dir_all(&out_dir)?;
    fs::write(out_dir.join("report.md"), &report)?;
    eprintln!("{report}");
    if !judge.failures.is_empty() {
        bail!("the soak failed: {}", judge.failures.join("; "));
    }
    Ok(())
}

/// memtrace serve, stopped however the soak ends (a failed round included).
struct Serving(std::process::Child);

impl Drop for Serving {
    fn drop(&mut self) {
        // SAFETY: kill of our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// memtrace and the workload, built in release (the bench builds them the same way).
pub(crate) fn build_release() -> Result<(PathBuf, PathBuf)> {
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
    Ok((
        workspace().join("target/release/memtrace"),
        workspace().join("target/release/page-churn"),
    ))
}

/// What every round does, and where.
struct Plan<'a> {
    files_per_round: u64,
    cgroups_per_round: u64,
    addr: &'a str,
    /// memtrace serve's.
    pid: u32,
    cgroup_root: &'a Path,
    work: &'a Path,
}

/// One round's churn: new files over new cgroups, cached, then the files removed and the
/// cgroups with them (pages leave, memcgs die).
fn churn_round(churn: &Path, plan: &Plan<'_>, round: u64) -> Result<()> {
    let dir = plan.work.join(format!("r{round}"));
    let cgroups = plan.cgroup_root.join(format!("r{round}"));
    fs::create_dir_all(&dir)?;
    fs::create_dir_all(&cgroups)?;
    let out = Command::new(churn)
        .args(["many-files"])
        .arg(&dir)
        .arg(&cgroups)
        .args([
            plan.files_per_round.to_string(),
            plan.cgroups_per_round.to_string(),
        ])
        .output()
        .context("page-churn")?;
    if !out.status.success() {
        bail!(
            "page-churn failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fs::remove_dir_all(&dir)?;
    if let Ok(entries) = fs::read_dir(&cgroups) {
        for entry in entries.flatten() {
            let _ = fs::remove_dir(entry.path());
        }
    }
    let _ = fs::remove_dir(&cgroups);
    Ok(())
}

/// What the soak saw, round by round, and what it found wrong.
struct Judge {
    table: String,
    failures: Vec<String>,
    rss_by_round: Vec<u64>,
    lost: f64,
}

impl Default for Judge {
    fn default() -> Self {
        Self {
            table: String::from(
                "| minute | files so far | cgroups so far | RSS (MiB) | map entries | overflowed runs | early drains | lost events | scrape (s) | checkpoint |\n|---:|---:|---:|---:|---:|---:|---:|---|---:|---|\n",
            ),
            failures: Vec::new(),
            rss_by_round: Vec::new(),
            lost: 0.0,
        }
    }
}

impl Judge {
    /// Scrapes memtrace after a round and judges it: scrape time, lost events by reason, RSS,
    /// and at every checkpoint a fresh cgroup's file against memory.stat. Prints its row.
    fn round(&mut self, plan: &Plan<'_>, round: u64) -> Result<()> {
        let minute = round + 1;
        let scraping = Instant::now();
        let text = scrape(plan.addr)?;
        let scrape_time = scraping.elapsed();
        if scrape_time > SCRAPE_BUDGET {
            self.failures.push(format!(
                "minute {minute}: a scrape took {scrape_time:?} (budget {SCRAPE_BUDGET:?})"
            ));
        }
        self.lost = sum_of(&text, "memtrace_lost_events_total")?;
        let entries = sum_of(&text, "memtrace_map_entries")?;
        let overflowed = sum_of(&text, "memtrace_overflow_runs_total")?;
        let early = sum_of(&text, "memtrace_early_flips_total")?;
        let reasons = lost_by_reason(&text);
        if self.lost > 0.0 {
            self.failures
                .push(format!("minute {minute}: events lost ({reasons})"));
        }
        let rss = rss_kib(plan.pid, "VmRSS:");
        self.rss_by_round.push(rss);
        let check = if minute.is_multiple_of(CHECKPOINT_EVERY) {
            let (shown, kernel) =
                self.check(plan, &format!("check{minute}"), &format!("minute {minute}"))?;
            format!("{shown:.0} of {kernel:.0} B")
        } else {
            String::new()
        };
        let row = format!(
            "| {minute} | {} | {} | {:.1} | {entries:.0} | {overflowed:.0} | {early:.0} | {reasons} | {:.2} | {check} |",
            plan.files_per_round * minute,
            plan.cgroups_per_round * minute,
            rss as f64 / 1024.0,
            scrape_time.as_secs_f64(),
        );
        // Each row as it comes, so a run cut short still says what it saw.
        eprintln!("soak: {row}");
        let _ = writeln!(self.table, "{row}");
        Ok(())
    }

    /// A fresh cgroup's 32 MiB file against memory.stat; a difference over a folio fails.
    fn check(&mut self, plan: &Plan<'_>, name: &str, when: &str) -> Result<(f64, f64)> {
        let (shown, kernel) = checkpoint(plan.addr, plan.cgroup_root, plan.work, name)?;
        // Written in 1 MiB writes: folios of at most 2 MiB.
        if (shown - kernel).abs() > 2.0 * 1048576.0 {
            self.failures.push(format!(
                "{when}: a fresh cgroup's 32 MiB file: memtrace {shown:.0} B, memory.stat {kernel:.0} B"
            ));
        }
        Ok((shown, kernel))
    }

    /// Agreement at the end, as at each checkpoint, and RSS over the last third: still growing
    /// means something is kept that should not be.
    fn end(&mut self, plan: &Plan<'_>) -> Result<(f64, f64)> {
        let figures = self.check(plan, "final", "end")?;
        let third = self.rss_by_round.len() / 3;
        if third >= 1 {
            let from = self.rss_by_round[self.rss_by_round.len() - third - 1] as f64;
            let to = *self.rss_by_round.last().unwrap_or(&0) as f64;
            if to > from * (1.0 + RSS_SLACK) {
                self.failures.push(format!(
                    "RSS still growing over the last third: {:.1} to {:.1} MiB",
                    from / 1024.0,
                    to / 1024.0
                ));
            }
        }
        Ok(figures)
    }
}
