//! Command-line interface.

use std::{ffi::OsString, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use memtrace_common::DEFAULT_CACHE_ENTRIES;

use crate::{model::Filter, view::Format};

/// Which files hold page cache, charged to which memory cgroup.
///
/// memtrace attaches eBPF programs to the kernel's page-cache tracepoints and counts every
/// folio added and removed per (charged memory cgroup, file). Needs root.
#[derive(Debug, Parser)]
#[command(name = "memtrace", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do; `watch` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Capacity of the kernel's (memcg, file) map; events past it are counted as lost.
    #[arg(long, global = true, default_value_t = DEFAULT_CACHE_ENTRIES, value_parser = clap::value_parser!(u32).range(1024..))]
    pub max_entries: u32,
    /// More diagnostics on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Count cache hits per file (fentry on folio_mark_accessed, where the kernel allows it).
    /// Off by default: attaching it under load crashed emulated test VMs.
    #[arg(long, global = true)]
    pub count_hits: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Trace while a command runs, then print the attribution; exits with the command's status.
    Run(RunArgs),
    /// Print the attribution every interval until Ctrl-C.
    Watch(WatchArgs),
    /// The live view: cgroups by page cache, drill into files, explain (default on a terminal).
    Top(TopArgs),
    /// Serve Prometheus metrics (`/metrics`, `/healthz`) until stopped: the node agent.
    Serve(ServeArgs),
    /// Check this machine: kernel, BTF, cgroup layout, hooks, privileges.
    Doctor(DoctorArgs),
    /// Where did this container's memory go: page cache by file, reconciled with memory.stat,
    /// including cache that existed before memtrace started.
    Explain(ExplainArgs),
    /// Attach empty programs to memtrace's tracepoints until Ctrl-C: the cost floor that
    /// `cargo xtask bench` measures memtrace against.
    #[command(hide = true)]
    Calibrate,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// A container name or id, a cgroup path (`/kubepods.slice/...`), or a pid.
    pub target: String,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// How long to watch for growth after the scan: `2s`, `10s`.
    #[arg(long, default_value = "2s", value_parser = parse_interval)]
    pub duration: Duration,
    /// Files listed.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
}

#[derive(Debug, Args, Default)]
pub struct OutputArgs {
    /// JSON instead of a table (one document per line when streaming).
    #[arg(long)]
    pub json: bool,
    /// Also list cgroups and files whose traced cache is back to zero (table).
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// What to show: the filters of `watch` and `run`.
#[derive(Debug, Args, Default, Clone)]
pub struct FilterArgs {
    /// Only this container: its name, id, or an id prefix (4+ characters).
    #[arg(long, value_name = "NAME|ID")]
    pub container: Option<String>,
    /// Only this cgroup and those below it, by path inside the hierarchy (`/kubepods.slice`).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,
    /// Only files whose path (as the container sees it, or on the host) starts with P.
    #[arg(long, value_name = "P")]
    pub path_prefix: Option<String>,
    /// The N largest cgroups, and the N largest files in each (the table shows 10 files
    /// per cgroup unless told).
    #[arg(long, value_name = "N")]
    pub top: Option<usize>,
}

/// Files and cgroups a table lists when `--top` is not given.
pub const TABLE_TOP: usize = 10;

impl OutputArgs {
    /// The format asked for: a table unless `--json`, which writes `machine` (one document,
    /// or one per line when streaming).
    pub fn format(&self, machine: Format) -> Format {
        if self.json {
            machine
        } else {
            Format::Table
        }
    }

    /// The filter to snapshot with. A table shows the ten largest unless told otherwise, so
    /// only those are named; JSON gets everything the filters keep.
    pub fn to_filter(&self) -> Filter {
        let mut filter = self.filter.to_filter();
        if !self.json && filter.top.is_none() {
            filter.top = Some(TABLE_TOP);
        }
        filter
    }
}

impl FilterArgs {
    pub fn to_filter(&self) -> Filter {
        Filter {
            container: self.container.clone(),
            cgroup: self.cgroup.clone(),
            path_prefix: self.path_prefix.clone(),
            top: self.top,
            files_per_cgroup: None,
            files_of: None,
        }
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub seed: SeedArgs,
    /// Write the report to FILE instead of stdout.
    #[arg(
        long = "output",
        short = 'o',
        visible_alias = "output-file",
        value_name = "FILE"
    )]
    pub output_file: Option<PathBuf>,
    /// The command to run, after `--` (any bytes: arguments need not be UTF-8).
    #[arg(required = true, last = true, value_name = "CMD", value_parser = clap::value_parser!(OsString))]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args, Default)]
pub struct WatchArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    /// Time between reports: `2s`, `500ms`, `1m`.
    #[arg(long, short = 'i', default_value = "2s", value_parser = parse_interval)]
    pub interval: Option<Duration>,
    #[command(flatten)]
    pub seed: SeedArgs,
    /// Stop after this many reports (1 or more).
    #[arg(long, short = 'n', value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
}

/// Where `serve` listens unless told: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9463";

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to serve `/metrics` and `/healthz` on (`0.0.0.0:9463` for every interface).
    #[arg(long, default_value = DEFAULT_LISTEN, value_name = "ADDR")]
    pub listen: std::net::SocketAddr,
    /// Files of each cgroup with a series of their own; the rest are summed into one.
    #[arg(long, default_value_t = 20)]
    pub metrics_top_files: usize,
    /// Most series one scrape exposes; past it, series are left out and counted.
    #[arg(long, default_value_t = 10_000)]
    pub metrics_max_series: usize,
    /// How long a removed cgroup keeps its series (its cache may outlive it).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub removed_grace: Duration,
    #[command(flatten)]
    pub seed: SeedArgs,
}

#[derive(Debug, Args, Clone)]
pub struct TopArgs {
    /// Time between refreshes (`+`/`-` change it while running).
    #[arg(long, short = 'i', default_value = "2s", value_parser = parse_interval)]
    pub interval: Duration,
    #[command(flatten)]
    pub seed: SeedArgs,
}

impl Default for TopArgs {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(2),
            seed: SeedArgs::default(),
        }
    }
}

/// Whether to scan for cache that predates memtrace before the first report.
#[derive(Debug, Args, Default, Clone, Copy)]
pub struct SeedArgs {
    /// Skip the scan for page cache that existed before memtrace started.
    #[arg(long)]
    pub no_seed: bool,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration like 5m or 30s: {e}"))
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration like 2s or 500ms: {e}"))?;
    if interval < Duration::from_millis(100) {
        return Err(format!("interval {text} is too short: use 100ms or more"));
    }
    // Far beyond any use, and far from what a clock can add without overflowing.
    if interval > Duration::from_secs(7 * 24 * 3600) {
        return Err(format!("interval {text} is too long: use a week or less"));
    }
    Ok(interval)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_takes_the_command_after_dashes() {
        let cli = Cli::parse_from(["memtrace", "run", "--json", "--", "dd", "if=/dev/zero"]);
        let Some(Command::Run(run)) = cli.command else {
            panic!("expected run")
        };
        assert!(run.output.json);
        assert_eq!(run.command, ["dd", "if=/dev/zero"]);
        let long = Cli::parse_from(["memtrace", "run", "--output", "r.txt", "--", "true"]);
        let Some(Command::Run(run)) = long.command else {
            panic!("expected run")
        };
        assert_eq!(run.output_file, Some(PathBuf::from("r.txt")));
    }

    #[test]
    fn rejects_bad_intervals() {
        assert!(Cli::try_parse_from(["memtrace", "watch", "--interval", "soon"]).is_err());
        assert!(Cli::try_parse_from(["memtrace", "watch", "--interval", "1ms"]).is_err());
        let huge = Cli::try_parse_from(["memtrace", "watch", "--interval", "10000000000y"]);
        assert!(huge.is_err(), "an interval no clock can add is refused");
        assert!(Cli::try_parse_from(["memtrace", "watch", "--count", "0"]).is_err());
        let cli = Cli::parse_from(["memtrace", "watch", "-i", "500ms"]);
        let Some(Command::Watch(w)) = cli.command else {
            panic!("expected watch")
        };
        assert_eq!(w.interval, Some(Duration::from_millis(500)));
    }
}
