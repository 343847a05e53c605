//! `memtrace top`: the live view, fed by the same collector as every other command.

use std::{
    collections::HashMap,
    io,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context;
use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::DefaultTerminal;

use super::{load_options, Shutdown};
use crate::{
    cli::{GlobalArgs, TopArgs},
    collector::{seed::SeedOptions, Collector},
    model::{
        explain::{state_of, Evidence, Explanation, Target, TargetKind},
        human_bytes,
        rates::per_second,
        Filter, Rates, Sample,
    },
    resolve::memstat::read_node_memory,
    view::top::{Action, Judgement, Key, Mode, TopState},
};

/// Files named per cgroup for the drill-in view.
const FILES_SHOWN: usize = 50;
/// Files listed under an explanation.
const EXPLAINED_FILES: usize = 10;
/// Screen rows that are not the cgroup list's: header, footer, sparkline, borders, column
/// names.
const ROWS_NOT_LISTED: u16 = 9;

pub async fn top(global: &GlobalArgs, args: TopArgs) -> anyhow::Result<ExitCode> {
    let mut shutdown = Shutdown::install().context("cannot install signal handlers")?;
    // Loaded before the screen is taken, so a refusal prints as usual.
    let collector = Collector::start(&load_options(global))?;
    // ratatui::init installs a panic hook that restores the terminal first.
    let mut terminal = ratatui::init();
    let result = run(&mut terminal, collector, &args, &mut shutdown).await;
    ratatui::restore();
    result
}

async fn run(
    terminal: &mut DefaultTerminal,
    mut collector: Collector,
    args: &TopArgs,
    shutdown: &mut Shutdown,
) -> anyhow::Result<ExitCode> {
    let mut state = TopState::new(args.interval.as_millis() as u64);
    state.node = read_node_memory();
    if !args.seed.no_seed {
        state.status = "scanning for page cache that predates memtrace...".to_owned();
        terminal.draw(|f| state.draw(f))?;
        let summary = collector.seed(&SeedOptions::default());
        state.status = format!(
            "found at start: {} in {} files ({:.1}s)",
            human_bytes(summary.cached_bytes),
            summary.files_cached,
            summary.seconds
        );
    }
    let mut last_sample: Option<Sample> = None;
    let mut judge = Judge::default();
    let mut next = Instant::now();
    loop {
        let mut refreshing = None;
        if !state.paused && Instant::now() >= next {
            refreshing = Some(Instant::now());
            let report = collector.snapshot_filtered(&files_on_screen(&state))?;
            state.node = read_node_memory();
            let sample = Sample::of(&report.cgroups, Instant::now());
            let rates = last_sample
                .as_ref()
                .and_then(|last| Rates::between(last, &sample));
            last_sample = Some(sample);
            state.update(report, rates);
            let height = terminal.size()?.height.saturating_sub(ROWS_NOT_LISTED);
            let shown = state.cgroups_on_screen(usize::from(height));
            state.set_judged(judge.judge(&collector, &shown));
            next = Instant::now() + Duration::from_millis(state.interval_ms);
        }
        terminal.draw(|f| state.draw(f))?;
        if let Some(began) = refreshing {
            log::info!(
                "top: refresh in {:.1} ms",
                began.elapsed().as_secs_f64() * 1000.0
            );
        }
        tokio::select! {
            _ = shutdown.recv() => return Ok(ExitCode::SUCCESS),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        collector.drain_events();
        while event::poll(Duration::ZERO)? {
            let Event::Key(press) = event::read()? else {
                continue;
            };
            if press.kind != KeyEventKind::Press {
                continue;
            }
            let key = match press.code {
                KeyCode::Char('c') if press.modifiers.contains(KeyModifiers::CONTROL) => {
                    return Ok(ExitCode::SUCCESS)
                }
                KeyCode::Up => Key::Up,
                KeyCode::Down => Key::Down,
                KeyCode::Enter => Key::Enter,
                KeyCode::Esc => Key::Esc,
                KeyCode::Backspace => Key::Backspace,
                KeyCode::Char(c) => Key::Char(c),
                _ => continue,
            };
            let showing = state.view();
            let action = state.key(key);
            if showing != state.view() {
                // What is on screen changed: name its files now, not at the next interval.
                next = Instant::now();
            }
            match action {
                Action::None => {}
                Action::Quit => return Ok(ExitCode::SUCCESS),
                Action::Faster => state.interval_ms = (state.interval_ms / 2).max(250),
                Action::Slower => state.interval_ms = (state.interval_ms * 2).min(60_000),
                Action::Explain(hierarchy, id) => {
                    state.mode = Some(Mode::Explain(explain(&mut collector, hierarchy, id)?));
                }
            }
        }
    }
}

/// What a refresh names: the files of the cgroup whose files are on screen, or every
/// cgroup's largest while a free-text filter (which matches file paths too) is typed; else no
/// file at all. A hundred thousand files are named and measured only where they are shown.
fn files_on_screen(state: &TopState) -> Filter {
    let filtering = !state.filter.is_empty() || state.editing.is_some();
    match state.mode {
        Some(Mode::Files(hierarchy, id)) if !filtering => Filter {
            files_per_cgroup: Some(FILES_SHOWN),
            files_of: Some((hierarchy, id)),
            ..Filter::default()
        },
        _ if filtering => Filter {
            files_per_cgroup: Some(FILES_SHOWN),
            ..Filter::default()
        },
        _ => Filter {
            files_per_cgroup: Some(0),
            ..Filter::default()
        },
    }
}

/// Judges the cgroups on screen as `explain` does: memory.stat read for those alone, and
/// refaults rated between refreshes.
#[derive(Default)]
struct Judge {
    /// Each judged cgroup's refaulted file bytes when last read, and when.
    refaults: HashMap<(u32, u64), (u64, Instant)>,
}

impl Judge {
    fn judge(
        &mut self,
        collector: &Collector,
        shown: &[(u32, u64, String)],
    ) -> HashMap<(u32, u64), Judgement> {
        let now = Instant::now();
        let mut refaults = HashMap::with_capacity(shown.len());
        let states = shown
            .iter()
            .filter_map(|(hierarchy, id, path)| {
                let memory = collector.resolvers().memory_of(*hierarchy, path)?;
                let key = (*hierarchy, *id);
                let rate = self.refaults.get(&key).and_then(|&(before, then)| {
                    let seconds = now.duration_since(then).as_secs_f64();
                    (seconds > 0.0)
                        .then(|| per_second(before, memory.refault_file_bytes, seconds).max(0.0))
                });
                refaults.insert(key, (memory.refault_file_bytes, now));
                let judgement = Judgement {
                    state: state_of(&memory, rate),
                    dirty: memory.dirty_bytes,
                };
                Some((key, judgement))
            })
            .collect();
        self.refaults = refaults;
        states
    }
}

/// The verdict and largest files for one cgroup, from a fresh snapshot and its memory.stat.
fn explain(collector: &mut Collector, hierarchy: u32, id: u64) -> io::Result<Vec<String>> {
    let report = collector
        .snapshot_filtered(&Filter {
            files_per_cgroup: Some(EXPLAINED_FILES),
            ..Filter::default()
        })
        .map_err(io::Error::other)?;
    let Some(cgroup) = report
        .cgroups
        .iter()
        .find(|c| c.hierarchy == hierarchy && c.id == id)
    else {
        return Ok(vec!["this cgroup is gone".to_owned()]);
    };
    let path = cgroup.path.clone().unwrap_or_default();
    let explanation = Explanation::new(
        Target {
            query: path.clone(),
            kind: TargetKind::Cgroup,
            cgroup_id: id,
            hierarchy,
            cgroup_path: path.clone(),
            container: cgroup.container.clone(),
        },
        Evidence {
            report: &report,
            rates: None,
            memory: collector.resolvers().memory_of(hierarchy, &path),
            memory_before: None,
            holders: None,
            seed: None,
            observed_seconds: 0.0,
            top: EXPLAINED_FILES,
        },
    );
    let mut lines = explanation.verdict.clone();
    lines.push(String::new());
    for file in &explanation.files {
        lines.push(format!(
            "{:>10}  {}",
            human_bytes(file.cached_bytes),
            file.path.as_deref().unwrap_or("(unnamed)")
        ));
    }
    Ok(lines)
}
