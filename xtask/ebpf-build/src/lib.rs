//! Compiles (and lints) the kernel crate for the BPF target. memtrace's build script and
//! `cargo xtask` both depend on this crate, so the object is built one way everywhere.
//!
//! Uses only std, to keep the build script light.

use std::{
    env,
    ffi::OsString,
    fmt, fs,
    path::{Path, PathBuf},
    process::Command,
};

/// The target triple of the kernel object (little-endian hosts only: x86-64 and arm64).
pub const BPF_TARGET: &str = "bpfel-unknown-none";
/// Name of the kernel crate's binary target.
const EBPF_BIN: &str = "memtrace";

#[derive(Debug)]
pub enum EbpfBuildError {
    /// A tool the build needs is not installed.
    Missing {
        what: &'static str,
        fix: &'static str,
    },
    /// cargo ran and failed.
    Failed(String),
    Io(String, std::io::Error),
}

impl fmt::Display for EbpfBuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing { what, fix } => write!(f, "{what} is not installed: {fix}"),
            Self::Failed(why) => write!(f, "building the eBPF object failed: {why}"),
            Self::Io(what, err) => write!(f, "{what}: {err}"),
        }
    }
}

impl std::error::Error for EbpfBuildError {}

/// Finds `name` on PATH or in cargo's bin directory (where `cargo install` puts bpf-linker
/// even when that directory is not on a sudo PATH).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Builds `<workspace>/memtrace-ebpf` in release mode into `target_dir` and returns the object.
///
/// Stable rustc builds `core` for the BPF target with `RUSTC_BOOTSTRAP=1 -Z build-std=core`, so
/// no nightly toolchain is needed.
pub fn build_ebpf(workspace: &Path, target_dir: &Path) -> Result<PathBuf, EbpfBuildError> {
    let linker = find_tool("bpf-linker").ok_or(EbpfBuildError::Missing {
        what: "bpf-linker",
        fix: "run `cargo xtask setup` (installs rust-src, LLVM 22 and bpf-linker)",
    })?;
    let mut cmd = kernel_cargo("build", workspace, target_dir);
    // BTF in the object lets the loader and the verifier name types; --btf asks the linker to
    // emit it.
    cmd.env(
        "CARGO_ENCODED_RUSTFLAGS",
        "-Cdebuginfo=2\x1f-Clink-arg=--btf",
    )
    .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", &linker);
    // bpf-linker loads libLLVM at run time.
    if let Some(path) = env::var_os("PATH") {
        let mut paths: Vec<PathBuf> = env::split_paths(&path).collect();
        if let Some(dir) = linker.parent() {
            paths.push(dir.to_path_buf());
        }
        if let Ok(joined) = env::join_paths(paths) {
            cmd.env("PATH", joined);
        }
    }
    run(&mut cmd, "build")?;
    let object = target_dir.join(BPF_TARGET).join("release").join(EBPF_BIN);
    fs::metadata(&object)
        .map_err(|e| EbpfBuildError::Io(format!("expected object {}", object.display()), e))?;
    Ok(object)
}

/// Runs clippy on the kernel crate for the BPF target, warnings denied.
pub fn clippy_ebpf(workspace: &Path, target_dir: &Path) -> Result<(), EbpfBuildError> {
    let mut cmd = kernel_cargo("clippy", workspace, target_dir);
    cmd.args(["--", "-D", "warnings"]);
    run(&mut cmd, "clippy")
}

/// `cargo SUBCOMMAND` on the kernel crate for the BPF target, with `core` built from source.
fn kernel_cargo(subcommand: &str, workspace: &Path, target_dir: &Path) -> Command {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let manifest = workspace.join("memtrace-ebpf/Cargo.toml");
    let mut cmd = Command::new(cargo);
    cmd.args([subcommand, "--release", "--locked", "--target", BPF_TARGET])
        .args(["-Z", "build-std=core"])
        // The kernel object's profile: the workspace's release profile is the host's, so the
        // BPF build's own settings come on its command line (one codegen unit and LTO, so the
        // object is one program set; abort on panic, as no_std must; full debug info, which
        // bpf-linker turns into BTF).
        .args([
            "--config",
            "profile.release.lto=true",
            "--config",
            "profile.release.panic=\"abort\"",
            "--config",
            "profile.release.codegen-units=1",
            "--config",
            "profile.release.debug=2",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .env("RUSTC_BOOTSTRAP", "1");
    // A parent cargo (build script) leaks settings that must not reach the BPF build.
    for key in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
    ] {
        cmd.env_remove(key);
    }
    cmd
}

fn run(cmd: &mut Command, what: &str) -> Result<(), EbpfBuildError> {
    let status = cmd
        .status()
        .map_err(|e| EbpfBuildError::Io(format!("running {cmd:?}"), e))?;
    if !status.success() {
        return Err(EbpfBuildError::Failed(format!(
            "`cargo {what}` of memtrace-ebpf exited with {status}; if rust-src or bpf-linker is missing, run `cargo xtask setup`"
        )));
    }
    Ok(())
}
