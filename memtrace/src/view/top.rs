//! `memtrace top`: the live view. This module holds the view's state and draws it; it reads
//! nothing from the kernel or the filesystem (the command feeds it reports and node figures),
//! so rendering is tested on ratatui's test backend.

use std::collections::{HashMap, VecDeque};

use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style, Stylize},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Paragraph, Row, Sparkline, Table, TableState, Wrap},
    Frame,
};

use crate::model::{
    escape_control, explain::CacheState, filter::mentions, human_bytes, CgroupUsage, KernelStats,
    NodeMemory, Rates, Report,
};

/// How long a cgroup's cached bytes are remembered for its sparkline.
const HISTORY: usize = 120;

/// The column the cgroup list is sorted by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortKey {
    #[default]
    Cached,
    Growth,
    Dirty,
    Written,
}

impl SortKey {
    fn next(self) -> Self {
        match self {
            Self::Cached => Self::Growth,
            Self::Growth => Self::Dirty,
            Self::Dirty => Self::Written,
            Self::Written => Self::Cached,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Cached => "cached",
            Self::Growth => "growth",
            Self::Dirty => "dirty",
            Self::Written => "written",
        }
    }
}

/// What the screen shows.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    Cgroups,
    /// The files of one cgroup (hierarchy, id).
    Files(u32, u64),
    /// An explanation of one cgroup, as lines.
    Explain(Vec<String>),
}

/// One cgroup as a row: figures, and per-second rates against the previous report.
#[derive(Clone, Debug)]
struct CgroupRow {
    hierarchy: u32,
    id: u64,
    who: String,
    path: String,
    cached: u64,
    growth: f64,
    dirty: Option<u64>,
    written_rate: f64,
    files: usize,
    state: Option<CacheState>,
}

/// A key press, as the view understands it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Up,
    Down,
    Enter,
    Esc,
    Char(char),
    Backspace,
}

/// What the command should do after a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    None,
    Quit,
    /// Explain the cgroup (hierarchy, id).
    Explain(u32, u64),
    Faster,
    Slower,
}

/// Everything the view keeps between frames.
#[derive(Debug, Default)]
pub struct TopState {
    pub sort: SortKey,
    pub reverse: bool,
    pub filter: String,
    /// Typing a filter (after `/`).
    pub editing: Option<String>,
    pub selected: usize,
    pub mode: Option<Mode>,
    pub paused: bool,
    pub interval_ms: u64,
    pub node: NodeMemory,
    /// Progress of the scan at start, shown until the first report.
    pub status: String,
    report: Option<Report>,
    /// The rates since the report before (computed by the model, from two samples).
    rates: Option<Rates>,
    history: HashMap<(u32, u64), VecDeque<u64>>,
    /// What memory.stat says of each cgroup on screen (the command reads it for the cgroups
    /// shown only; see [`Self::cgroups_on_screen`]).
    judged: HashMap<(u32, u64), Judgement>,
}

/// A cgroup's memory.stat as `top` shows it: whether its cache is harmless, crowding it or
/// beside a risk, and its dirty bytes (the kernel's, with its children's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Judgement {
    pub state: CacheState,
    pub dirty: u64,
}

impl TopState {
    /// What decides which files are on screen: the mode, the filter and whether one is being
    /// typed. A key that changes it calls for a refresh at once.
    pub fn view(&self) -> (Option<Mode>, String, bool) {
        (
            self.mode.clone(),
            self.filter.clone(),
            self.editing.is_some(),
        )
    }

    pub fn new(interval_ms: u64) -> Self {
        Self {
            interval_ms,
            mode: Some(Mode::Cgroups),
            ..Self::default()
        }
    }

    /// Takes a new report, with its rates since the report before (none for the first).
    pub fn update(&mut self, report: Report, rates: Option<Rates>) {
        self.rates = rates;
        for c in &report.cgroups {
            let history = self.history.entry((c.hierarchy, c.id)).or_default();
            history.push_back(c.cached_bytes);
            if history.len() > HISTORY {
                history.pop_front();
            }
        }
        let live: std::collections::HashSet<(u32, u64)> =
            report.cgroups.iter().map(|c| (c.hierarchy, c.id)).collect();
        self.history.retain(|k, _| live.contains(k));
        self.report = Some(report);
    }

    /// Takes the judgement of the cgroups on screen.
    pub fn set_judged(&mut self, judged: HashMap<(u32, u64), Judgement>) {
        self.judged = judged;
    }

    /// The cgroups (hierarchy, id, path) the list shows in `height` rows of screen, in order:
    /// what is worth reading memory.stat for. Sorted by dirty bytes, every cgroup: the order
    /// itself needs them all.
    pub fn cgroups_on_screen(&self, height: usize) -> Vec<(u32, u64, String)> {
        let rows = self.rows();
        let height = if self.sort == SortKey::Dirty {
            rows.len()
        } else {
            height
        };
        let first = (self.selected + 1).saturating_sub(height);
        rows.into_iter()
            .skip(first)
            .take(height)
            .map(|r| (r.hierarchy, r.id, r.path))
            .collect()
    }

    fn rows(&self) -> Vec<CgroupRow> {
        let Some(report) = &self.report else {
            return Vec::new();
        };
        let filter = self.filter.to_lowercase();
        let mut rows: Vec<CgroupRow> = report
            .cgroups
            .iter()
            .filter(|c| c.cached_bytes > 0 || written(c) > 0)
            .filter(|c| filter.is_empty() || mentions(c, &filter))
            .map(|c| {
                let rates = self
                    .rates
                    .as_ref()
                    .and_then(|r| r.of_cgroup(&(c.hierarchy, c.id)))
                    .unwrap_or_default();
                let judged = self.judged.get(&(c.hierarchy, c.id));
                CgroupRow {
                    hierarchy: c.hierarchy,
                    id: c.id,
                    who: who(c),
                    path: c.path.clone().unwrap_or_else(|| format!("(id {})", c.id)),
                    cached: c.cached_bytes,
                    growth: rates.cached,
                    dirty: judged.map(|j| j.dirty),
                    written_rate: rates.written,
                    files: c.file_count,
                    state: judged.map(|j| j.state),
                }
            })
            .collect();
        rows.sort_by(|a, b| {
            let order = match self.sort {
                SortKey::Cached => a.cached.cmp(&b.cached),
                SortKey::Growth => a.growth.total_cmp(&b.growth),
                SortKey::Dirty => a.dirty.unwrap_or(0).cmp(&b.dirty.unwrap_or(0)),
                SortKey::Written => a.written_rate.total_cmp(&b.written_rate),
            };
            let order = order.then(a.id.cmp(&b.id));
            if self.reverse {
                order
            } else {
                order.reverse()
            }
        });
        rows
    }

    fn files_of(&self, hierarchy: u32, id: u64) -> Option<&CgroupUsage> {
        self.report
            .as_ref()?
            .cgroups
            .iter()
            .find(|c| c.hierarchy == hierarchy && c.id == id)
    }

    /// The cgroup under the cursor.
    pub fn selected_cgroup(&self) -> Option<(u32, u64)> {
        self.rows().get(self.selected).map(|r| (r.hierarchy, r.id))
    }

    /// Applies a key.
    pub fn key(&mut self, key: Key) -> Action {
        if let Some(text) = &mut self.editing {
            match key {
                Key::Enter => {
                    self.filter = std::mem::take(text);
                    self.editing = None;
                    self.selected = 0;
                }
                Key::Esc => self.editing = None,
                Key::Backspace => {
                    text.pop();
                }
                Key::Char(c) => text.push(c),
                _ => {}
            }
            return Action::None;
        }
        let count = self.rows().len();
        match key {
            Key::Char('q') => return Action::Quit,
            Key::Up | Key::Char('k') => self.selected = self.selected.saturating_sub(1),
            Key::Down | Key::Char('j') => {
                self.selected = (self.selected + 1).min(count.saturating_sub(1));
            }
            Key::Char('s') => self.sort = self.sort.next(),
            Key::Char('r') => self.reverse = !self.reverse,
            Key::Char('/') => self.editing = Some(String::new()),
            Key::Char('p') => self.paused = !self.paused,
            Key::Char('+') => return Action::Slower,
            Key::Char('-') => return Action::Faster,
            Key::Enter => {
                if let Some((h, id)) = self.selected_cgroup() {
                    self.mode = Some(Mode::Files(h, id));
                }
            }
            Key::Char('e') => {
                if let Some((h, id)) = self.selected_cgroup() {
                    return Action::Explain(h, id);
                }
            }
            Key::Esc => {
                if self.mode != Some(Mode::Cgroups) {
                    self.mode = Some(Mode::Cgroups);
                } else {
                    self.filter.clear();
                }
            }
            _ => {}
        }
        Action::None
    }

    /// Draws the whole screen.
    pub fn draw(&self, frame: &mut Frame<'_>) {
        let [header, body, footer] = Layout::vertical([
            Constraint::Length(3),
            Constraint::Min(3),
            Constraint::Length(1),
        ])
        .areas(frame.area());
        self.draw_header(frame, header);
        match self.mode.as_ref().unwrap_or(&Mode::Cgroups) {
            Mode::Cgroups => self.draw_cgroups(frame, body),
            Mode::Files(h, id) => self.draw_files(frame, body, *h, *id),
            Mode::Explain(lines) => {
                let text: Vec<Line> = lines
                    .iter()
                    .map(|l| Line::from(escape_control(l).into_owned()))
                    .collect();
                frame.render_widget(
                    Paragraph::new(text)
                        .wrap(Wrap { trim: false })
                        .block(Block::default().borders(Borders::ALL).title(" explain ")),
                    body,
                );
            }
        }
        let keys = match (&self.editing, &self.mode) {
            (Some(text), _) => format!("filter: {}_   Enter apply  Esc cancel", escape_control(text)),
            (None, Some(Mode::Cgroups)) => format!(
                "q quit  ↑↓/jk move  Enter files  e explain  s sort:{}  r reverse  / filter  p {}  +/- {}ms",
                self.sort.label(),
                if self.paused { "resume" } else { "pause" },
                self.interval_ms
            ),
            _ => "Esc back  q quit".to_owned(),
        };
        frame.render_widget(Paragraph::new(keys).reversed(), footer);
    }

    fn draw_header(&self, frame: &mut Frame<'_>, area: Rect) {
        let (attributed, stats) = match &self.report {
            Some(r) => (r.totals.cached_bytes, Some(&r.stats)),
            None => (0, None),
        };
        let coverage = if self.node.cached > 0 {
            format!(
                "{:.0}%",
                attributed as f64 * 100.0 / self.node.cached as f64
            )
        } else {
            "-".to_owned()
        };
        let lost = stats.map_or(0, KernelStats::events_lost);
        let hooks = self.report.as_ref().map_or(String::new(), |r| {
            r.hooks
                .iter()
                .filter(|h| h.attached)
                .map(|h| h.name)
                .collect::<Vec<_>>()
                .join(" ")
        });
        let lines = vec![
            Line::from(vec![
                Span::styled(
                    "memtrace top",
                    Style::default().add_modifier(Modifier::BOLD),
                ),
                Span::raw(format!(
                    "  node: page cache {}  Shmem {}  Dirty {}  attributed {} ({coverage})",
                    human_bytes(self.node.cached),
                    human_bytes(self.node.shmem),
                    human_bytes(self.node.dirty),
                    human_bytes(attributed),
                )),
                Span::raw(if self.paused { "  [paused]" } else { "" }),
            ]),
            Line::from(format!(
                "lost events {lost}  filter {}  hooks: {hooks}",
                if self.filter.is_empty() {
                    "-".to_owned()
                } else {
                    escape_control(&self.filter).into_owned()
                }
            )),
            Line::from(self.status.clone()),
        ];
        frame.render_widget(Paragraph::new(lines), area);
    }

    fn draw_cgroups(&self, frame: &mut Frame<'_>, area: Rect) {
        let rows = self.rows();
        let selected = self.selected.min(rows.len().saturating_sub(1));
        let [table_area, spark_area] =
            Layout::vertical([Constraint::Min(3), Constraint::Length(3)]).areas(area);
        let header = Row::new([
            "CACHED", "GROWTH/s", "DIRTY", "WRITE/s", "FILES", "STATE", "CGROUP",
        ])
        .style(Style::default().add_modifier(Modifier::BOLD));
        let body: Vec<Row> = rows
            .iter()
            .map(|r| {
                let label = if r.who.is_empty() {
                    r.path.clone()
                } else {
                    format!("{}  {}", r.who, r.path)
                };
                Row::new(vec![
                    Cell::from(human_bytes(r.cached)),
                    Cell::from(signed_rate(r.growth)),
                    Cell::from(r.dirty.map_or("-".to_owned(), human_bytes)),
                    Cell::from(human_bytes(r.written_rate as u64)),
                    Cell::from(r.files.to_string()),
                    Cell::from(r.state.map_or("-", CacheState::label)),
                    Cell::from(escape_control(&label).into_owned()),
                ])
            })
            .collect();
        let table = Table::new(
            body,
            [
                Constraint::Length(10),
                Constraint::Length(11),
                Constraint::Length(10),
                Constraint::Length(10),
                Constraint::Length(6),
                Constraint::Length(8),
                Constraint::Min(10),
            ],
        )
        .header(header)
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
        .block(Block::default().borders(Borders::TOP).title(format!(
            " cgroups by {}{} ",
            self.sort.label(),
            if self.reverse { " (reversed)" } else { "" }
        )));
        let mut state = TableState::default().with_selected(Some(selected));
        frame.render_stateful_widget(table, table_area, &mut state);
        if let Some(r) = rows.get(selected) {
            let data: Vec<u64> = self
                .history
                .get(&(r.hierarchy, r.id))
                .map(|h| h.iter().copied().collect())
                .unwrap_or_default();
            frame.render_widget(
                Sparkline::default()
                    .block(
                        Block::default()
                            .borders(Borders::TOP)
                            .title(" cached, last minutes "),
                    )
                    .data(&data),
                spark_area,
            );
        }
    }

    fn draw_files(&self, frame: &mut Frame<'_>, area: Rect, hierarchy: u32, id: u64) {
        let Some(cgroup) = self.files_of(hierarchy, id) else {
            frame.render_widget(Paragraph::new("this cgroup is gone"), area);
            return;
        };
        let rows: Vec<Row> = cgroup
            .files
            .iter()
            .filter(|f| f.cached_bytes > 0 || f.written_bytes > 0)
            .map(|f| {
                let mut name = f
                    .path
                    .as_deref()
                    .map_or_else(|| format!("dev {} ino {}", f.dev, f.ino), str::to_owned);
                if f.deleted {
                    name += " [deleted]";
                }
                if let Some(fs) = f.fs {
                    name += &format!(" [{fs}]");
                }
                if let (Some(layer), Some(host)) = (f.layer, f.host_path.as_deref()) {
                    name += &format!("  ({} layer {host})", format!("{layer:?}").to_lowercase());
                }
                let writer = f
                    .writers
                    .first()
                    .map(|w| format!("{} ({})", w.comm, w.pid))
                    .unwrap_or_default();
                Row::new(vec![
                    Cell::from(human_bytes(f.cached_bytes)),
                    Cell::from(f.dirty_bytes.map_or("-".to_owned(), human_bytes)),
                    Cell::from(
                        f.write_rate_bytes_per_second
                            .map_or("-".to_owned(), |r| human_bytes(r as u64)),
                    ),
                    Cell::from(escape_control(&writer).into_owned()),
                    Cell::from(escape_control(&name).into_owned()),
                ])
            })
            .collect();
        let title = format!(
            " files of {} ",
            escape_control(cgroup.path.as_deref().unwrap_or("(unnamed cgroup)"))
        );
        let table = Table::new(
            rows,
            [
                Constraint::Length(10),
                Constraint::Length(10),
                Constraint::Length(10),
                Constraint::Length(16),
                Constraint::Min(10),
            ],
        )
        .header(
            Row::new(["CACHED", "DIRTY", "WRITE/s", "WRITER", "FILE"])
                .style(Style::default().add_modifier(Modifier::BOLD)),
        )
        .block(Block::default().borders(Borders::TOP).title(title));
        frame.render_widget(table, area);
    }
}

fn written(c: &CgroupUsage) -> u64 {
    c.files.iter().map(|f| f.written_bytes).sum()
}

fn who(c: &CgroupUsage) -> String {
    match (&c.container, &c.unit) {
        (Some(container), _) => {
            let name = container
                .name
                .clone()
                .unwrap_or_else(|| container.id.chars().take(12).collect());
            match container.pod.as_ref().and_then(|p| p.name.as_ref()) {
                Some(pod) => format!("{name} (pod {pod}, {})", container.runtime),
                None => format!("{name} ({})", container.runtime),
            }
        }
        (None, Some(unit)) => unit.clone(),
        (None, None) => String::new(),
    }
}

fn signed_rate(rate: f64) -> String {
    if rate.abs() < 1.0 {
        "0".to_owned()
    } else if rate < 0.0 {
        format!("-{}", human_bytes(rate.abs() as u64))
    } else {
        format!("+{}", human_bytes(rate as u64))
    }
}

#[cfg(test)]
mod tests {
    use ratatui::{backend::TestBackend, Terminal};

    use super::*;
    use crate::view::golden_tests::fixed_report;

    fn screen(state: &TopState, width: u16, height: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|f| state.draw(f)).unwrap();
        let buffer = terminal.backend().buffer().clone();
        (0..height)
            .map(|y| {
                (0..width)
                    .map(|x| buffer[(x, y)].symbol().to_owned())
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn state() -> TopState {
        let mut state = TopState::new(2000);
        state.node = NodeMemory {
            cached: 200 << 20,
            shmem: 1 << 20,
            dirty: 8192,
        };
        state.update(fixed_report(), None);
        state
    }

    #[test]
    fn lists_cgroups_largest_first_with_their_columns() {
        let text = screen(&state(), 120, 24);
        for column in [
            "CACHED", "GROWTH/s", "DIRTY", "WRITE/s", "FILES", "STATE", "CGROUP",
        ] {
            assert!(text.contains(column), "{column}:\n{text}");
        }
        let spring = text.find("spring (pod spring-0, containerd)").expect(&text);
        let nginx = text.find("nginx.service").expect(&text);
        assert!(spring < nginx, "largest first:\n{text}");
        assert!(text.contains("92.0 MiB"), "{text}");
        assert!(text.contains("page cache 200.0 MiB"), "{text}");
    }

    #[test]
    fn the_state_column_shows_the_judgement_of_the_cgroups_on_screen() {
        let mut state = state();
        let shown = state.cgroups_on_screen(1);
        assert_eq!(shown.len(), 1, "one row of screen, one cgroup");
        let (hierarchy, id, _) = shown[0].clone();
        assert!(!screen(&state, 120, 24).contains("crowding"));
        state.set_judged(HashMap::from([(
            (hierarchy, id),
            Judgement {
                state: CacheState::Crowding,
                dirty: 3 << 20,
            },
        )]));
        let text = screen(&state, 120, 24);
        let row = text
            .lines()
            .find(|line| line.contains("crowding"))
            .unwrap_or_else(|| panic!("the judged cgroup's row:\n{text}"));
        assert!(
            row.contains("spring (pod"),
            "the largest cgroup is judged: {row}"
        );
    }

    #[test]
    fn sorts_reverses_and_filters() {
        let mut state = state();
        state.key(Key::Char('r'));
        let text = screen(&state, 120, 24);
        assert!(
            text.find("nginx.service").unwrap() < text.find("spring (pod").unwrap(),
            "reversed:\n{text}"
        );
        state.key(Key::Char('s'));
        assert_eq!(state.sort, SortKey::Growth);
        for c in "/nginx".chars() {
            state.key(Key::Char(c));
        }
        state.key(Key::Enter);
        let text = screen(&state, 120, 24);
        assert!(text.contains("nginx.service"), "{text}");
        assert!(!text.contains("spring (pod"), "filtered out:\n{text}");
    }

    #[test]
    fn enter_shows_the_files_and_esc_goes_back() {
        let mut state = state();
        state.key(Key::Enter);
        let text = screen(&state, 120, 24);
        assert!(text.contains("/tmp/spring.log"), "{text}");
        assert!(text.contains("java (4242)"), "{text}");
        state.key(Key::Esc);
        assert_eq!(state.mode, Some(Mode::Cgroups));
        assert_eq!(state.key(Key::Char('q')), Action::Quit);
    }

    #[test]
    fn names_are_escaped_and_a_narrow_terminal_still_draws() {
        let mut report = fixed_report();
        report.cgroups[0].path = Some("/evil\n\u{1b}[31mcg".into());
        let mut state = TopState::new(2000);
        state.update(report, None);
        let text = screen(&state, 140, 24);
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(text.contains("/evil\\n\\x1b[31mcg"), "{text}");
        let narrow = screen(&state, 80, 24);
        assert!(!narrow.contains('\u{1b}'), "{narrow}");
        assert!(narrow.contains("92.0 MiB"), "rows fit at 80x24:\n{narrow}");
        assert!(
            narrow.contains("q quit"),
            "the footer fits at 80x24:\n{narrow}"
        );
    }
}
