//! `memtrace doctor`: what this machine offers memtrace, and what to fix.

use std::{path::Path, process::ExitCode};

use crate::{
    cli::{DoctorArgs, GlobalArgs},
    loader::{
        btf::{KernelBtf, VMLINUX_BTF},
        error_chain, preflight, Need, ProgramKind, Tracer, HOOKS,
    },
    model::doctor::{Check, DoctorReport},
    resolve::cgroups::Hierarchies,
    view::{self, json},
};

use super::{load_options, write_out};

fn check(name: impl Into<String>, ok: bool, detail: impl Into<String>, required: bool) -> Check {
    Check::new(name, ok, detail, required)
}

pub fn doctor(global: &GlobalArgs, args: &DoctorArgs) -> anyhow::Result<ExitCode> {
    let mut checks = Vec::new();
    check_kernel_and_privileges(&mut checks);
    check_btf(&mut checks);
    checks.push(check_cgroups());
    if checks.iter().all(|c| c.ok || !c.required) {
        checks.push(check_load(global));
    }
    let report = DoctorReport::new(checks);
    let healthy = report.healthy;
    if args.json {
        write_out(|out| json::write_line(out, &report))?;
    } else {
        write_out(|out| view::doctor::write(out, &report))?;
    }
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The kernel's version, the privileges to load programs, and each capability.
fn check_kernel_and_privileges(checks: &mut Vec<Check>) {
    let release = preflight::kernel_release();
    checks.push(match preflight::check_kernel_version() {
        Ok(()) => check("kernel", true, format!("Linux {release}"), true),
        Err(err) => check("kernel", false, err.to_string(), true),
    });
    checks.push(match preflight::check_privileges() {
        Ok(()) => check("privileges", true, "can load eBPF programs", true),
        Err(err) => check("privileges", false, err.to_string(), true),
    });
    for capability in preflight::CAPABILITIES {
        let held = preflight::holds(capability);
        checks.push(check(
            format!("capability {}", capability.name),
            held,
            capability.purpose,
            capability.required && preflight::missing_capabilities().contains(&capability.name),
        ));
    }
}

/// BTF, the struct offsets read from it, and each tracepoint the hooks use.
fn check_btf(checks: &mut Vec<Check>) {
    let btf = if Path::new(VMLINUX_BTF).exists() {
        match KernelBtf::from_sys_fs() {
            Ok(btf) => {
                checks.push(check("btf", true, VMLINUX_BTF, true));
                Some(btf)
            }
            Err(err) => {
                checks.push(check("btf", false, format!("{err}"), true));
                None
            }
        }
    } else {
        checks.push(check(
            "btf",
            false,
            preflight::PreflightError::NoBtf.to_string(),
            true,
        ));
        None
    };
    if let Some(btf) = &btf {
        checks.push(match btf.kernel_offsets() {
            Ok(offsets) => check("struct offsets", true, format!("{offsets:?}"), true),
            Err(err) => check("struct offsets", false, error_chain(&err), true),
        });
        let tracepoints = HOOKS.iter().filter(|h| h.kind == ProgramKind::TpBtf);
        for (tracepoint, required) in tracepoints.map(|h| (h.target, h.need == Need::Required)) {
            let present = btf.has_tracepoint(tracepoint);
            let detail = if present {
                "declared in BTF"
            } else {
                "absent from this kernel"
            };
            checks.push(check(
                format!("tracepoint {tracepoint}"),
                present,
                detail,
                required,
            ));
        }
    }
}

/// The cgroup layout: where the memory controller is mounted.
fn check_cgroups() -> Check {
    let hierarchies = Hierarchies::discover();
    let layout = match (
        &hierarchies.memory_hierarchy,
        &hierarchies.v1_memory,
        &hierarchies.unified,
    ) {
        (Some(0), _, Some(v2)) => Some(format!(
            "cgroup v2, memory controller at {}",
            v2.mount_point.display()
        )),
        (Some(id), Some(v1), _) => Some(format!(
            "cgroup v1 memory controller (hierarchy {id}) at {}{}",
            v1.mount_point.display(),
            hierarchies
                .unified
                .as_ref()
                .map(|u| format!("; cgroup2 at {} (hybrid)", u.mount_point.display()))
                .unwrap_or_default()
        )),
        _ => None,
    };
    match layout {
        Some(layout) => check("cgroups", true, layout, true),
        None => check(
            "cgroups",
            false,
            "no mounted memory controller found in /proc/cgroups and mountinfo; page cache is attributed by cgroup id only",
            false,
        ),
    }
}

/// Loads and attaches the programs for real: which hooks attach here.
fn check_load(global: &GlobalArgs) -> Check {
    match Tracer::load(&load_options(global)) {
        Ok(tracer) => {
            let hooks: Vec<String> = tracer
                .hooks
                .iter()
                .map(|h| {
                    format!(
                        "{} ({}, {})",
                        h.name,
                        h.kind,
                        if h.attached {
                            "attached"
                        } else {
                            "NOT attached"
                        }
                    )
                })
                .collect();
            check("load and attach", true, hooks.join("; "), true)
        }
        Err(err) => check("load and attach", false, error_chain(&err), true),
    }
}
