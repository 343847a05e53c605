use std::process::ExitCode;

use clap::Parser;
use memtrace::{
    cli::{Cli, Command, TopArgs, WatchArgs},
    commands,
};

fn main() -> ExitCode {
    keep_large_blocks_apart();
    let cli = Cli::parse();
    let level = match cli.global.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("memtrace: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        // On a terminal the live view; piped, the watch table.
        let default = || {
            if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                Command::Top(TopArgs::default())
            } else {
                Command::Watch(WatchArgs::default())
            }
        };
        match cli.command.unwrap_or_else(default) {
            Command::Run(args) => commands::run::run(&cli.global, args).await,
            Command::Watch(args) => commands::watch::watch(&cli.global, args).await,
            Command::Top(args) => commands::top::top(&cli.global, args).await,
            Command::Serve(args) => commands::serve::serve(&cli.global, args).await,
            Command::Doctor(args) => commands::doctor::doctor(&cli.global, &args),
            Command::Explain(args) => commands::explain::explain(&cli.global, args).await,
            Command::Calibrate => commands::calibrate().await,
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("memtrace: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// glibc raises its mmap threshold to the size of any large block freed, so after the first
/// report each report's large, short-lived tables (a hundred thousand files' observations)
/// land in the brk heap, whose freed middle it cannot give back: peak RSS then carries every
/// report's leftovers, a quarter more than memtrace ever holds. A fixed threshold keeps blocks
/// of 1 MiB and more in mappings of their own, returned the moment they are freed.
fn keep_large_blocks_apart() {
    // SAFETY: mallopt only tunes the allocator; nothing is allocated yet.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20) };
}
