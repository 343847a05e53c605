//! Installs what a fresh machine lacks, idempotently: each piece is checked first and installed
//! only when missing, with a line saying what and why.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use memtrace_ebpf_build::find_tool;

use crate::is_root;

/// LLVM major version bpf-linker is built against (rustc 1.95 ships LLVM 22).
const LLVM_MAJOR: u32 = 22;
const BPF_LINKER_VERSION: &str = "0.13.0";

/// What a caller needs installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Needs {
    /// Building the eBPF object and memtrace.
    Build,
    /// Building plus what the integration tests drive: runc, busybox, bpftool.
    Test,
}

pub(crate) fn ensure(needs: Needs) -> Result<()> {
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    if needs == Needs::Test {
        let mut packages = Vec::new();
        for (tool, package, why) in [
            ("runc", "runc", "integration tests run real OCI containers"),
            (
                "busybox",
                "busybox-static",
                "container root filesystems for the tests",
            ),
            (
                "bpftool",
                "bpftool",
                "tests compare resolved struct offsets with bpftool's BTF dump",
            ),
            (
                "javac",
                "default-jdk-headless",
                "the explain test replays a JVM logging in a container",
            ),
            (
                "tmux",
                "tmux",
                "the live view is tested in a real pseudo-terminal",
            ),
            (
                "prometheus",
                "prometheus",
                "a real Prometheus server scrapes memtrace serve in the tests",
            ),
            (
                "containerd",
                "containerd",
                "containers run by containerd (`ctr`) are named in the tests",
            ),
            (
                "dockerd",
                "docker.io",
                "Docker containers are named in the tests",
            ),
            (
                "podman",
                "podman",
                "podman containers are named in the tests",
            ),
            (
                "protoc",
                "protobuf-compiler",
                "the tests' CRI client is built from Kubernetes' protobuf definitions",
            ),
        ] {
            let in_system_dirs = ["/bin", "/usr/sbin", "/sbin"]
                .iter()
                .any(|dir| Path::new(dir).join(tool).exists());
            if find_tool(tool).is_none() && !in_system_dirs {
                eprintln!("xtask: installing {package}: {why}");
                packages.push(package);
            }
        }
        // Not on PATH: Debian keeps each PostgreSQL major version's programs apart.
        if !Path::new("/usr/lib/postgresql/15/bin/pgbench").exists() {
            eprintln!(
                "xtask: installing postgresql-15: a real database workload (pgbench) is traced in the tests"
            );
            packages.push("postgresql-15");
        }
        apt_install(&packages)?;
    }
    Ok(())
}

fn ensure_rust_src() -> Result<()> {
    let sysroot = output(Command::new("rustc").args(["--print", "sysroot"]))?;
    let library = Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library/core");
    if library.exists() {
        return Ok(());
    }
    eprintln!("xtask: installing rust-src: the BPF target builds `core` from source");
    run(Command::new("rustup")
        .stdout(std::io::stderr())
        .args(["component", "add", "rust-src"]))
}

fn ensure_bpf_linker() -> Result<()> {
    if find_tool("bpf-linker").is_some() {
        return Ok(());
    }
    let prefix = format!("/usr/lib/llvm-{LLVM_MAJOR}");
    if !Path::new(&prefix).join("lib/libLLVM.so").exists() {
        eprintln!(
            "xtask: installing llvm-{LLVM_MAJOR}-dev: bpf-linker links against LLVM {LLVM_MAJOR}"
        );
        apt_install(&[&format!("llvm-{LLVM_MAJOR}-dev")])?;
    }
    eprintln!("xtask: installing bpf-linker {BPF_LINKER_VERSION} (about a minute): it links the eBPF object");
    run(Command::new("cargo")
        .stdout(std::io::stderr())
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{LLVM_MAJOR}"),
        ])
        .env("LLVM_PREFIX", &prefix))
}

/// Installs Debian packages (after one `apt-get update`); nothing when the list is empty.
pub(crate) fn apt_install(packages: &[&str]) -> Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    let sudo: &[&str] = if is_root() { &[] } else { &["sudo"] };
    let apt = |args: &[&str]| {
        let mut all: Vec<&str> = sudo.to_vec();
        all.push("apt-get");
        all.extend_from_slice(args);
        let mut cmd = Command::new(all[0]);
        // stdout belongs to memtrace (`cargo xtask run -- watch --json | jq`).
        cmd.args(&all[1..])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(std::io::stderr());
        cmd
    };
    run(&mut apt(&["update", "-qq"]))?;
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend_from_slice(packages);
    run(&mut apt(&install)).with_context(|| format!("installing {}", packages.join(" ")))
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
