//! `memtrace explain TARGET`: one screen that says where a container's memory went.

use std::{process::ExitCode, time::Instant};

use anyhow::Context;

use super::{drain_ticks, load_options, maintain_ticks, write_out, Shutdown};
use crate::{
    cli::{ExplainArgs, GlobalArgs},
    collector::{seed::SeedOptions, Collector, Focus},
    model::{
        explain::{Evidence, Explanation, Target},
        Rates, Sample,
    },
    resolve::procs::writers_in,
    view::{self, json},
};

pub async fn explain(global: &GlobalArgs, args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let mut shutdown = Shutdown::install().context("cannot install signal handlers")?;
    let mut collector = Collector::start(&load_options(global))?;
    let target = collector.find_target(&args.target)?;
    let resolvers = collector.resolvers();
    let cgroup_id = resolvers
        .cgroup_id_of(target.hierarchy, &target.cgroup_path)
        .unwrap_or(0);
    let cgroup_dir = resolvers
        .cgroups
        .hierarchies
        .directory_of(target.hierarchy, &target.cgroup_path);

    // The files explain lists are measured whatever the node's other files cost.
    collector.measure_dirty_of(Focus {
        hierarchy: target.hierarchy,
        path: target.cgroup_path.clone(),
    });
    let seed = collector.seed(&SeedOptions::default());
    let first = collector.snapshot()?;
    let memory_before = collector
        .resolvers()
        .memory_of(target.hierarchy, &target.cgroup_path);
    let first = Sample::of(&first.cgroups, Instant::now());
    let window = Instant::now();
    log::info!("explain: watching {} for {:?}", args.target, args.duration);
    let mut drain = drain_ticks();
    let mut maintain = maintain_ticks();
    let deadline = tokio::time::sleep(args.duration);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            _ = drain.tick() => collector.drain_events(),
            _ = maintain.tick() => collector.maintain(),
            _ = shutdown.recv() => break,
        }
    }
    let second = collector.snapshot()?;
    let observed = window.elapsed().as_secs_f64();
    let rates = Rates::between(&first, &Sample::of(&second.cgroups, Instant::now()));

    let memory = collector
        .resolvers()
        .memory_of(target.hierarchy, &target.cgroup_path);
    let holders = cgroup_dir.as_deref().map(writers_in);
    let explanation = Explanation::new(
        Target {
            query: args.target.clone(),
            kind: target.kind,
            cgroup_id,
            hierarchy: target.hierarchy,
            cgroup_path: target.cgroup_path,
            container: target.container,
        },
        Evidence {
            report: &second,
            rates: rates.as_ref(),
            memory,
            memory_before,
            holders: holders.as_ref(),
            seed: Some(seed),
            observed_seconds: observed,
            top: args.top,
        },
    );

    if args.json {
        write_out(|out| json::write_line(out, &explanation))?;
    } else {
        write_out(|out| view::explain::write(out, &explanation))?;
    }
    Ok(ExitCode::SUCCESS)
}
