//! `memtrace watch`: a report every interval until Ctrl-C.

use std::{
    io::{self, IsTerminal, Write},
    process::ExitCode,
    time::Duration,
};

use anyhow::{bail, Context};
use tokio::time::MissedTickBehavior;

use super::{drain_ticks, emit, load_options, maintain_ticks, seed_at_start, Shutdown};
use crate::{
    cli::{GlobalArgs, WatchArgs},
    collector::Collector,
    view::{report_json, Format},
};

const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);

pub async fn watch(global: &GlobalArgs, args: WatchArgs) -> anyhow::Result<ExitCode> {
    let mut shutdown = Shutdown::install().context("cannot install signal handlers")?;
    let mut collector = Collector::start(&load_options(global))?;
    seed_at_start(&mut collector, args.seed);
    let filter = args.output.to_filter();
    collector.name_files_ahead(filter.names_every_file());
    if let Some(wanted) = &filter.container {
        let known = collector.resolvers().known_containers();
        if !known.iter().any(|c| c.matches(wanted)) {
            bail!(
                "no container matches `{wanted}`; give a name, an id or an id prefix of one running here: {}",
                collector.resolvers().container_list()
            );
        }
    }

    let period = args.interval.unwrap_or(DEFAULT_INTERVAL);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut drain = drain_ticks();
    let mut maintain = maintain_ticks();
    let format = args.output.format(Format::Ndjson);
    if format.is_machine() {
        widen_pipe(&io::stdout());
    }
    let redraw = format == Format::Table && io::stdout().is_terminal();
    let mut printed = 0u64;

    loop {
        let last = tokio::select! {
            _ = ticks.tick() => false,
            _ = drain.tick() => {
                collector.drain_events();
                continue;
            }
            _ = maintain.tick() => {
                collector.maintain();
                continue;
            }
            _ = shutdown.recv() => true,
        };
        let written = if format.is_machine() {
            // Written as it is built: a hundred thousand files are never held at once.
            collector.write_snapshot(&filter, |header, cgroups| {
                report_json::write_line(&mut io::stdout().lock(), header, cgroups)
            })?
        } else {
            let mut out = io::stdout().lock();
            let report = collector.snapshot_filtered(&filter)?;
            if redraw && !last {
                // Clear the screen and home the cursor, so the table redraws in place.
                write!(out, "\x1b[2J\x1b[H")?;
            }
            let writing = std::time::Instant::now();
            let written = emit(&mut out, &report, format, &args.output);
            log::debug!(
                "report built in {:.1} ms, written in {:.1} ms",
                report.snapshot_seconds * 1000.0,
                writing.elapsed().as_secs_f64() * 1000.0
            );
            written
        };
        match written {
            Ok(()) => {}
            // The reader went away (`memtrace watch --json | head -1`): that ends the watch.
            Err(err) if err.kind() == io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
            Err(err) => return Err(anyhow::Error::new(err).context("cannot write to stdout")),
        }
        printed += 1;
        if last || args.count.is_some_and(|n| printed >= n) {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// Most a pipe holds when memtrace asks (Linux's default limit for everyone but root).
const PIPE_BYTES: libc::c_int = 1 << 20;

/// A report of a hundred thousand files is tens of megabytes: through a pipe's default 64 KiB,
/// writer and reader take turns over five hundred times a report. A wider pipe lets each
/// run longer. Not a pipe, or not allowed: nothing changes.
fn widen_pipe(out: &impl std::os::fd::AsRawFd) {
    let fd = out.as_raw_fd();
    // SAFETY: fstat and fcntl on our own stdout, with a stat buffer that outlives the call.
    unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut stat) != 0 || stat.st_mode & libc::S_IFMT != libc::S_IFIFO {
            return;
        }
        if libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE_BYTES) < 0 {
            log::debug!(
                "stdout pipe left at its size: {}",
                io::Error::last_os_error()
            );
        }
    }
}
