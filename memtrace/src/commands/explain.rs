//! `memtrace explain TARGET`: one screen that says where a container's memory went.

use std::{fs, os::unix::fs::MetadataExt, process::ExitCode, time::Instant};

use anyhow::Context;

use super::{drain_ticks, load_options, maintain_ticks, write_out, Shutdown};
use crate::{
    cli::{ExplainArgs, GlobalArgs},
    collector::{seed::SeedOptions, Collector},
    model::{
        explain::{add_holders, files_of_target, Explanation, Target},
        Rates, Sample, SCHEMA_VERSION, UNIFIED_HIERARCHY,
    },
    resolve::{memstat::read_memory, procs::writers_in},
    view::{self, json},
};

pub async fn explain(global: &GlobalArgs, args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let mut shutdown = Shutdown::install().context("cannot install signal handlers")?;
    let mut collector = Collector::start(&load_options(global))?;
    let target = collector.resolvers.find_target(&args.target)?;
    let cgroup_dir = collector
        .resolvers
        .cgroups
        .hierarchies
        .directory_of(target.hierarchy, &target.cgroup_path);
    let cgroup_id = cgroup_dir
        .as_deref()
        .and_then(|d| fs::metadata(d).ok())
        .map_or(0, |m| m.ino());

    let seed = collector.seed(&SeedOptions::default());
    let first = collector.snapshot()?;
    let first = Sample::of(&first.cgroups, Instant::now());
    let window = Instant::now();
    let mut drain = drain_ticks();
    let mut maintain = maintain_ticks();
    let deadline = tokio::time::sleep(args.duration);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            _ = drain.tick() => collector.drain_events(),
            _ = maintain.tick() => collector.maintain()?,
            _ = shutdown.recv() => break,
        }
    }
    let second = collector.snapshot()?;
    let observed = window.elapsed().as_secs_f64();
    let rates = Rates::between(&first, &Sample::of(&second.cgroups, Instant::now()));

    let memory = cgroup_dir
        .as_deref()
        .and_then(|dir| read_memory(dir, target.hierarchy == UNIFIED_HIERARCHY).ok());
    let mut files = files_of_target(
        &second,
        rates.as_ref(),
        target.hierarchy,
        &target.cgroup_path,
    );
    let attributed_bytes = files.iter().map(|f| f.cached_bytes).sum();
    let attributed_exact_bytes = files
        .iter()
        .filter(|f| f.provenance.is_exact())
        .map(|f| f.cached_bytes)
        .sum();
    files.truncate(args.top);
    if let Some(dir) = cgroup_dir.as_deref() {
        add_holders(&mut files, &writers_in(dir));
    }

    let mut explanation = Explanation {
        schema_version: SCHEMA_VERSION,
        target: Target {
            query: args.target.clone(),
            kind: target.kind,
            cgroup_id,
            hierarchy: target.hierarchy,
            cgroup_path: target.cgroup_path,
            container: target.container,
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

    if args.json {
        write_out(|out| json::write_line(out, &explanation))?;
    } else {
        write_out(|out| view::explain::write(out, &explanation))?;
    }
    Ok(ExitCode::SUCCESS)
}
