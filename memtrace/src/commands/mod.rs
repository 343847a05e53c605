//! The subcommands: each wires the collector to a view.

pub mod doctor;
pub mod explain;
pub mod run;
pub mod watch;

use std::io::{self, Write};

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::{
    cli::{GlobalArgs, OutputArgs},
    loader::LoadOptions,
    model::Report,
    view::{json, table},
};

pub(crate) fn load_options(global: &GlobalArgs) -> LoadOptions {
    LoadOptions {
        max_entries: global.max_entries,
    }
}

/// Renders `report` as the user asked.
pub(crate) fn emit(out: &mut impl Write, report: &Report, output: &OutputArgs) -> io::Result<()> {
    if output.json {
        json::write_line(out, report)
    } else {
        let top = output.filter.top.unwrap_or(crate::cli::TABLE_TOP);
        let options = table::TableOptions {
            files_per_cgroup: top,
            max_cgroups: top,
            show_idle: output.all,
        };
        table::write(out, report, options)
    }
}

/// How often the kernel's notice rings are emptied between reports.
pub(crate) fn drain_ticks() -> tokio::time::Interval {
    let mut ticks = tokio::time::interval(std::time::Duration::from_millis(200));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks
}

/// SIGINT and SIGTERM, which end tracing cleanly (the programs detach when dropped).
pub(crate) struct Shutdown {
    interrupt: Signal,
    terminate: Signal,
}

impl Shutdown {
    pub(crate) fn install() -> io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for either signal and returns its number.
    pub(crate) async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.interrupt.recv() => libc::SIGINT,
            _ = self.terminate.recv() => libc::SIGTERM,
        }
    }
}

/// `memtrace calibrate`: empty programs attached until SIGINT/SIGTERM.
pub async fn calibrate() -> anyhow::Result<std::process::ExitCode> {
    let mut shutdown = Shutdown::install()?;
    let floor = crate::loader::Floor::load()?;
    eprintln!(
        "memtrace calibrate: empty programs attached to {}",
        floor.hooks.join(", ")
    );
    shutdown.recv().await;
    Ok(std::process::ExitCode::SUCCESS)
}
