//! `memtrace run -- CMD`: trace while CMD runs, report when it ends.

use std::{
    fs::File,
    io::{self, BufWriter},
    os::unix::process::ExitStatusExt,
    process::ExitCode,
};

use anyhow::Context;
use tokio::process::Command;

use super::{drain_ticks, emit, load_options, maintain_ticks, seed_at_start, Shutdown};
use crate::{
    cli::{GlobalArgs, RunArgs},
    collector::Collector,
    view::Format,
};

pub async fn run(global: &GlobalArgs, args: RunArgs) -> anyhow::Result<ExitCode> {
    // Fail on an unwritable report file before the command runs, not after.
    let output_file = match &args.output_file {
        Some(path) => Some(
            File::create(path)
                .with_context(|| format!("cannot write the report to {}", path.display()))?,
        ),
        None => None,
    };
    let mut shutdown = Shutdown::install().context("cannot install signal handlers")?;
    let mut collector = Collector::start(&load_options(global))?;
    seed_at_start(&mut collector, args.seed);

    let (program, program_args) = args
        .command
        .split_first()
        .context("no command given after `--`")?;
    let mut child = Command::new(program)
        .args(program_args)
        .spawn()
        .with_context(|| {
            format!(
                "cannot run `{}`",
                crate::model::escape_control(&program.to_string_lossy())
            )
        })?;

    let mut drain = drain_ticks();
    let mut maintain = maintain_ticks();
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.context("waiting for the command")?,
            _ = drain.tick() => collector.drain_events(),
            _ = maintain.tick() => collector.maintain(),
            signal = shutdown.recv() => {
                // The terminal already sent Ctrl-C to the command; a signal sent to memtrace
                // alone is passed on, so the command ends and the report is still printed.
                if let Some(pid) = child.id() {
                    // SAFETY: kill has no memory effects; the pid is our own child's.
                    unsafe { libc::kill(pid as i32, signal) };
                }
            }
        }
    };

    let filter = args.output.to_filter();
    let format = args.output.format(Format::Json);
    let report = collector.snapshot_filtered(&filter)?;
    if let (Some(wanted), true) = (&filter.container, report.cgroups.is_empty()) {
        // The container may have come and gone with the command: say so rather than print
        // an empty report without a word.
        eprintln!("memtrace: no page cache was charged to a container matching `{wanted}`");
    }
    match output_file {
        Some(file) => emit(&mut BufWriter::new(file), &report, format, &args.output),
        None => emit(&mut io::stdout().lock(), &report, format, &args.output),
    }
    .context("cannot write the report")?;

    Ok(exit_code_of(status))
}

/// The command's own exit code; 128 + N when it died of signal N, as shells report it.
fn exit_code_of(status: std::process::ExitStatus) -> ExitCode {
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
