//! Builds the kernel programs and leaves the object in OUT_DIR for `include_bytes!`, so
//! `cargo build -p memtrace` is the only build anyone runs.

use std::{env, fs, path::PathBuf};

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest_dir
        .parent()
        .expect("memtrace sits in the workspace")
        .to_path_buf();
    for watched in [
        "memtrace-ebpf/src",
        "memtrace-ebpf/Cargo.toml",
        "Cargo.lock",
        "memtrace-common/src",
        "xtask/ebpf-build/src",
    ] {
        println!(
            "cargo::rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    // A target dir of its own: the parent cargo holds the lock on the workspace's.
    let target_dir = out_dir.join("ebpf-target");
    match memtrace_ebpf_build::build_ebpf(&workspace, &target_dir) {
        Ok(object) => {
            fs::copy(&object, out_dir.join("memtrace.bpf.o")).expect("copy the eBPF object");
        }
        Err(err) => {
            println!("cargo::error={err}");
            std::process::exit(1);
        }
    }
}
