//! The subcommands: each wires the collector to a view.

pub mod doctor;
pub mod explain;
pub mod run;
pub mod serve;
pub mod top;
pub mod watch;

use std::io::{self, IsTerminal, Write};

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::{
    cli::{GlobalArgs, OutputArgs, SeedArgs, TABLE_TOP},
    collector::{seed::SeedOptions, Collector},
    loader::LoadOptions,
    model::{human_bytes, Report},
    view::{self, table::TableOptions, Format},
};

pub(crate) fn load_options(global: &GlobalArgs) -> LoadOptions {
    LoadOptions {
        max_entries: global.max_entries,
        count_hits: global.count_hits,
    }
}

/// Renders `report` in `format`, with the table cut the user asked for.
pub(crate) fn emit(
    out: &mut impl Write,
    report: &Report,
    format: Format,
    output: &OutputArgs,
) -> io::Result<()> {
    let top = output.filter.top.unwrap_or(TABLE_TOP);
    let options = TableOptions {
        files_per_cgroup: top,
        max_cgroups: top,
        show_idle: output.all,
    };
    view::write_report(out, report, format, options)
}

/// Writes to stdout through `write`; a reader that went away (`| head`) is not an error.
pub(crate) fn write_out(
    write: impl FnOnce(&mut io::StdoutLock<'static>) -> io::Result<()>,
) -> io::Result<()> {
    match write(&mut io::stdout().lock()) {
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        result => result,
    }
}

/// Scans for page cache that predates memtrace (unless `--no-seed`), with progress on stderr
/// when a person is watching it.
pub(crate) fn seed_at_start(collector: &mut Collector, seed: SeedArgs) {
    if seed.no_seed {
        return;
    }
    let interactive = io::stderr().is_terminal();
    if interactive {
        eprint!("memtrace: looking for page cache that predates memtrace...");
    }
    let summary = collector.seed(&SeedOptions::default());
    if interactive {
        eprintln!(
            "\rmemtrace: found {} in {} files of {} examined ({:.1}s){}",
            human_bytes(summary.cached_bytes),
            summary.files_cached,
            summary.files_examined,
            summary.seconds,
            if summary.truncated {
                "; stopped at its limit"
            } else {
                ""
            }
        );
    }
}

/// How often the kernel's notice rings are emptied between reports.
pub(crate) fn drain_ticks() -> tokio::time::Interval {
    let mut ticks = tokio::time::interval(std::time::Duration::from_millis(200));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks
}

/// How often commands that report rarely move the kernel's counts into userspace.
pub(crate) fn maintain_ticks() -> tokio::time::Interval {
    let period = std::time::Duration::from_secs(5);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks
}

/// SIGINT and SIGTERM, which end tracing cleanly (the programs detach when dropped).
pub(crate) struct Shutdown {
    signals: Signals,
}

impl Shutdown {
    /// Also arms the watchdog that bounds how long the clean end may take.
    pub(crate) fn install() -> io::Result<Self> {
        arm_watchdog()?;
        Ok(Self {
            signals: Signals::install()?,
        })
    }

    /// Waits for either signal and returns its number.
    pub(crate) async fn recv(&mut self) -> i32 {
        self.signals.recv().await
    }
}

/// How long memtrace may take to end once told to: its final report is best effort.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Ends the process if it is still running `SHUTDOWN_GRACE` after SIGINT or SIGTERM, or at once
/// on a second one. The clean path runs on the main thread, which can block for good in a
/// write to a reader that stopped reading (a pipeline being stopped); this thread cannot.
/// The programs detach when the kernel closes the process's descriptors.
fn arm_watchdog() -> io::Result<()> {
    static ARMED: std::sync::Once = std::sync::Once::new();
    let mut result = Ok(());
    ARMED.call_once(|| {
        // Its own runtime: the main one is the thread that may be blocked.
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(err) => {
                result = Err(err);
                return;
            }
        };
        let spawned = std::thread::Builder::new()
            .name("shutdown-watchdog".into())
            .spawn(move || {
                runtime.block_on(async {
                    let Ok(mut signals) = Signals::install() else {
                        return;
                    };
                    let first = signals.recv().await;
                    let second = tokio::select! {
                        signal = signals.recv() => Some(signal),
                        () = tokio::time::sleep(SHUTDOWN_GRACE) => None,
                    };
                    let (signal, why) = match second {
                        Some(signal) => (signal, "a second signal".to_owned()),
                        None => (first, format!("{SHUTDOWN_GRACE:?} after the signal")),
                    };
                    eprintln!("memtrace: still running {why} (stdout blocked?); exiting without the final report");
                    // SAFETY: _exit ends the process at once, touching no locks that a blocked
                    // thread may hold (stdout's among them).
                    unsafe { libc::_exit(128 + signal) };
                });
            });
        if let Err(err) = spawned {
            result = Err(err);
        }
    });
    result
}

/// SIGINT and SIGTERM, as they come.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn install() -> io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    async fn recv(&mut self) -> i32 {
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
        floor
            .hooks
            .iter()
            .map(|h| format!("{} ({})", h.name, h.kind))
            .collect::<Vec<_>>()
            .join(", ")
    );
    shutdown.recv().await;
    Ok(std::process::ExitCode::SUCCESS)
}
