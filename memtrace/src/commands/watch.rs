//! `memtrace watch`: a report every interval until Ctrl-C.

use std::{
    io::{self, IsTerminal, Write},
    process::ExitCode,
    time::Duration,
};

use anyhow::Context;
use tokio::time::MissedTickBehavior;

use super::{emit, load_options, Shutdown};
use crate::{
    cli::{GlobalArgs, WatchArgs},
    collector::Collector,
};

const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);

pub async fn watch(global: &GlobalArgs, args: WatchArgs) -> anyhow::Result<ExitCode> {
    let mut shutdown = Shutdown::install().context("cannot install signal handlers")?;
    let mut collector = Collector::start(&load_options(global))?;
    let period = args.interval.unwrap_or(DEFAULT_INTERVAL);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let redraw = !args.output.json && io::stdout().is_terminal();
    let mut printed = 0u64;

    loop {
        let last = tokio::select! {
            _ = ticks.tick() => false,
            _ = shutdown.recv() => true,
        };
        let report = collector.snapshot()?;
        let mut out = io::stdout().lock();
        if redraw && !last {
            // Clear the screen and home the cursor, so the table redraws in place.
            write!(out, "\x1b[2J\x1b[H")?;
        }
        emit(&mut out, &report, &args.output).context("cannot write to stdout")?;
        printed += 1;
        if last || args.count.is_some_and(|n| printed >= n) {
            return Ok(ExitCode::SUCCESS);
        }
    }
}
