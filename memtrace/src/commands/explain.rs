//! `memtrace explain TARGET`: one screen that says where a container's memory went.

use std::{collections::HashMap, fs, io, path::Path, process::ExitCode, time::Instant};

use anyhow::{anyhow, Context};

use super::{drain_ticks, load_options, Shutdown};
use crate::{
    cli::{ExplainArgs, GlobalArgs},
    collector::{seed::SeedOptions, Collector},
    model::{
        explain::{ExplainedFile, Explanation, Target, Writer},
        under, Dev, Report, SCHEMA_VERSION,
    },
    resolve::{cgroups::UNIFIED_HIERARCHY, memstat::read_memory},
    view,
};

pub async fn explain(global: &GlobalArgs, args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let mut shutdown = Shutdown::install().context("cannot install signal handlers")?;
    let mut collector = Collector::start(&load_options(global))?;
    let (kind, hierarchy, cgroup_path, container) = collector
        .resolvers
        .find_target(&args.target)
        .map_err(|e| anyhow!(e))?;
    let cgroup_dir = collector
        .resolvers
        .cgroups
        .hierarchies
        .directory_of(hierarchy, &cgroup_path);
    let cgroup_id = cgroup_dir
        .as_deref()
        .and_then(|d| fs::metadata(d).ok())
        .map_or(0, |m| std::os::unix::fs::MetadataExt::ino(&m));

    let seed = collector.seed(&SeedOptions::default());
    let first = collector.snapshot()?;
    let window = Instant::now();
    let mut drain = drain_ticks();
    let deadline = tokio::time::sleep(args.duration);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            _ = drain.tick() => collector.drain_events(),
            _ = shutdown.recv() => break,
        }
    }
    let second = collector.snapshot()?;
    let observed = window.elapsed().as_secs_f64();

    let memory = match &cgroup_dir {
        Some(dir) => read_memory(dir, hierarchy == UNIFIED_HIERARCHY).ok(),
        None => None,
    };
    let writers = cgroup_dir.as_deref().map(writers_in).unwrap_or_default();
    let mut files = target_files(&second, &first, hierarchy, &cgroup_path, observed);
    let attributed_bytes = files.iter().map(|f| f.cached_bytes).sum();
    let attributed_exact_bytes = files
        .iter()
        .filter(|f| f.provenance.is_exact())
        .map(|f| f.cached_bytes)
        .sum();
    files.truncate(args.top);
    for file in &mut files {
        // Processes holding the file open for writing now (they may have written before
        // memtrace started), after those the tracer saw write.
        let holders = [&file.path, &file.host_path]
            .into_iter()
            .flatten()
            .filter_map(|p| writers.get(&**p))
            .flatten();
        for holder in holders {
            if !file.writers.iter().any(|w| w.pid == holder.pid) {
                file.writers.push(holder.clone());
            }
        }
    }

    let mut explanation = Explanation {
        schema_version: SCHEMA_VERSION,
        target: Target {
            query: args.target.clone(),
            kind,
            cgroup_id,
            hierarchy,
            cgroup_path,
            container,
        },
        memory,
        attributed_bytes,
        attributed_exact_bytes,
        coverage: None,
        unattributed_bytes: 0,
        files,
        seed: Some(seed),
        observed_seconds: observed,
        stats: second.stats.clone(),
        verdict: Vec::new(),
    };
    explanation.conclude();

    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &explanation)?;
        io::Write::write_all(&mut out, b"\n")?;
    } else {
        view::explain::write(&mut out, &explanation)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Files charged to the target cgroup or below it, largest first, with their growth.
fn target_files(
    now: &Report,
    before: &Report,
    hierarchy: u32,
    path: &str,
    seconds: f64,
) -> Vec<ExplainedFile> {
    let earlier: HashMap<(u64, Dev, u64), u64> = before
        .cgroups
        .iter()
        .flat_map(|c| {
            c.files
                .iter()
                .map(move |f| ((c.id, f.dev, f.ino), f.cached_bytes))
        })
        .collect();
    let mut files: Vec<ExplainedFile> = now
        .cgroups
        .iter()
        .filter(|c| c.hierarchy == hierarchy && c.path.as_deref().is_some_and(|p| under(p, path)))
        .flat_map(|c| {
            c.files.iter().filter(|f| f.cached_bytes > 0).map(|f| {
                let was = earlier.get(&(c.id, f.dev, f.ino)).copied().unwrap_or(0);
                ExplainedFile {
                    path: f.path.clone(),
                    host_path: f.host_path.clone(),
                    cached_bytes: f.cached_bytes,
                    dirty_bytes: f.dirty_bytes,
                    writeback_bytes: f.writeback_bytes,
                    seeded_active_bytes: f.seeded_active_bytes,
                    seeded_bytes: f.seeded_bytes,
                    provenance: f.provenance,
                    deleted: f.deleted,
                    layer: f.layer,
                    growth_bytes_per_second: if seconds > 0.0 {
                        (f.cached_bytes as f64 - was as f64) / seconds
                    } else {
                        0.0
                    },
                    writers: f
                        .writers
                        .iter()
                        .map(|w| Writer {
                            pid: w.pid,
                            comm: w.comm.to_string(),
                        })
                        .collect(),
                    cgroup_path: c.path.clone(),
                }
            })
        })
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.cached_bytes));
    files
}

/// Open-for-writing files of the processes in a cgroup (and below), by the path each process
/// sees: path → writers.
fn writers_in(cgroup_dir: &Path) -> HashMap<String, Vec<Writer>> {
    let mut pids = Vec::new();
    let mut pending = vec![cgroup_dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            pending.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    let mut writers: HashMap<String, Vec<Writer>> = HashMap::new();
    for pid in pids {
        let comm = fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            let path = target
                .strip_suffix(" (deleted)")
                .unwrap_or(&target)
                .to_owned();
            let info = fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .unwrap_or_default();
            let writable = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
                .is_some_and(|flags| flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32);
            if writable && path.starts_with('/') {
                let entry = writers.entry(path).or_default();
                let writer = Writer {
                    pid,
                    comm: comm.clone(),
                };
                if !entry.contains(&writer) {
                    entry.push(writer);
                }
            }
        }
    }
    writers
}
