//! Project tasks: `cargo xtask <task>`. Each installs what it needs first.

mod bench;
mod damon;
mod engines;
mod setup;
mod soak;
mod test_run;
mod vm;

use std::{
    env,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use setup::{ensure, run, Needs};
use test_run::{run_tests, Tally};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchain pieces and test tools a fresh machine lacks.
    Setup,
    /// Build the kernel object alone and print where it is.
    BuildEbpf,
    /// Build target/release/memtrace (kernel object embedded).
    Build,
    /// Build memtrace and run it as root with ARGS (sudo when not root).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Overhead of memtrace against no tracer and against bpftrace, as interleaved runs.
    Bench(bench::BenchOptions),
    /// memtrace serve under file and cgroup churn for an hour (not part of CI).
    Soak(soak::SoakOptions),
    /// The integration suite on Debian's 6.1 and 6.12 kernels under qemu.
    VmTest {
        /// Only this kernel series (`6.1`, `6.12`).
        #[arg(long)]
        only: Option<String>,
        #[command(flatten)]
        selection: vm::Selection,
    },
    /// Lint, then run every test: unit and integration, on the real kernel, as root.
    Test {
        /// Extra arguments for `cargo test` (a test name filter, `--nocapture`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

pub(crate) fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace());
    cmd
}

fn build_release() -> Result<PathBuf> {
    ensure(Needs::Build)?;
    run(cargo().args(["build", "--release", "--locked", "-p", "memtrace"]))?;
    Ok(workspace().join("target/release/memtrace"))
}

fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn try_main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => ensure(Needs::Test),
        Task::BuildEbpf => {
            ensure(Needs::Build)?;
            let target_dir = workspace().join("target/ebpf");
            let object = memtrace_ebpf_build::build_ebpf(&workspace(), &target_dir)?;
            println!("{}", object.display());
            Ok(())
        }
        Task::Build => {
            let binary = build_release()?;
            println!("{}", binary.display());
            Ok(())
        }
        Task::Run { args } => {
            let binary = build_release()?;
            let mut cmd = if is_root() {
                Command::new(&binary)
            } else {
                eprintln!(
                    "xtask: memtrace loads eBPF programs, which needs root: running it with sudo"
                );
                let mut sudo = Command::new("sudo");
                sudo.arg(&binary);
                sudo
            };
            Err(cmd.args(args).exec()).context("cannot exec memtrace")
        }
        Task::Test { args } => test(&args),
        Task::Bench(options) => bench::run_as_root(&options),
        Task::Soak(options) => soak::run_as_root(&options),
        Task::VmTest { only, selection } => {
            ensure(Needs::Build)?;
            let tally = vm::vm_test(only.as_deref(), &selection)?;
            println!("vm tests: {} passed, {} failed", tally.passed, tally.failed);
            Ok(())
        }
    }
}

fn test(args: &[String]) -> Result<()> {
    if !is_root() {
        bail!(
            "the tests load eBPF programs and create memory cgroups, which needs root: run `sudo -E cargo xtask test`"
        );
    }
    ensure(Needs::Test)?;
    // Every member, the kernel crate included.
    run(cargo().args(["fmt", "--all", "--", "--check"]))
        .context("code is not formatted: run `cargo fmt --all`")?;
    memtrace_ebpf_build::clippy_ebpf(&workspace(), &workspace().join("target/ebpf"))?;
    // The host crates; the kernel crate was linted for its own target above.
    run(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "memtrace-ebpf",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo().args(["build", "--locked", "-p", "memtrace"]))?;
    let binary = workspace().join("target/debug/memtrace");
    // Some tests write gigabytes and fail at once when there is no room: the figure in the
    // log says whether that is why.
    if let Some(free) = free_bytes(Path::new("/var/tmp")) {
        eprintln!(
            "xtask: {:.1} GiB free in /var/tmp for the tests' files",
            free as f64 / (1u64 << 30) as f64
        );
    }
    let _reclaim_paused = damon::pause();
    let _engines = engines::start(&workspace().join("target/engines"))?;
    let tally = run_tests(
        cargo()
            .args(["test", "--workspace", "--exclude", "memtrace-ebpf"])
            .args(["--locked", "--no-fail-fast", "--"])
            .args(args)
            .env("MEMTRACE_BIN", &binary),
        test_run::HOST_TESTS_DEADLINE,
    )?;
    // Then the same suite on other kernels, under qemu; a failure there fails the run too.
    let vm = vm::vm_test(None, &vm::Selection::default());
    let (vm_passed, vm_failed) = match &vm {
        Ok(t) => (t.passed, t.failed),
        Err(err) => {
            eprintln!("xtask: {err:#}");
            (0, 1)
        }
    };
    println!(
        "host: {} passed, {} failed, {} ignored; vm: {vm_passed} passed, {vm_failed} failed",
        tally.passed, tally.failed, tally.ignored
    );
    // One closing line for the whole run: cargo ends with the last crate's line, which may be
    // a crate without tests.
    println!(
        "tests: {} passed, {} failed",
        tally.passed + vm_passed,
        tally.failed + vm_failed
    );
    if tally.failed > 0 || !tally.success || vm.is_err() {
        bail!("tests failed");
    }
    if tally.passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

/// Bytes free to an unprivileged writer on `dir`'s filesystem.
fn free_bytes(dir: &Path) -> Option<u64> {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs is plain integer data, valid when zeroed.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs reads a NUL-terminated path and writes into the struct we pass.
    (unsafe { libc::statvfs(path.as_ptr(), &mut st) } == 0).then(|| st.f_bavail * st.f_frsize)
}
