//! Dirty and writeback bytes of resident files, measured on their host path: by cachestat(2)
//! (Linux 6.5+), else from each page's flags in /proc/kpageflags (root; slower, so it is the
//! fallback).
//!
//! A file becomes dirty by being written, and what memtrace traces shows that: its counters or
//! its writers' bytes change. So a file is measured again only when its figures changed since
//! the last report, when it was dirty or under writeback then, or on its turn in a slow sweep
//! (writes through a shared mapping show in no counter until writeback); every other file keeps
//! its last measurement. Measuring is budgeted in time per report, the files being written
//! first: at 100,000 new files (100,000 opens), the first reports would otherwise spend most of
//! their time here.

use std::time::{Duration, Instant};

use rustc_hash::FxHashMap as HashMap;

use super::residency;
use crate::{
    model::{filter::under, host_path_of, CgroupUsage, FileUsage},
    resolve::open::open_regular,
};

/// Time a report may spend measuring, by why files are due: a file is measured only while the
/// report's measuring so far is under its class's budget (files changed since their last
/// measurement get the most; see [`Due`]). What is left over keeps its last figures and stays
/// due for the next report. At about 4 µs a file (open, cachestat, close) 10 ms is some
/// 2,500 files.
const CHANGED_BUDGET: Duration = Duration::from_millis(10);
const TOUCHED_BUDGET: Duration = Duration::from_millis(8);
const SWEEP_BUDGET: Duration = Duration::from_millis(5);
/// An unchanged, clean file is measured again every this many reports.
const SWEEP_REPORTS: u64 = 64;

/// What a file showed when it was last measured: 24 bytes, as there may be a hundred
/// thousand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Measured {
    /// A hash of the figures that change when the file is written or its cache moves.
    signature: u64,
    dirty_pages: u32,
    writeback_pages: u32,
    /// The report that last showed the file: [`COUNTED_AT_START`] for the census's count,
    /// which no report has shown yet.
    seen: u64,
}

/// `seen` of a count the census made before the first report (reports are numbered from 1).
const COUNTED_AT_START: u64 = 0;

/// Why a file is measured in this report, in the order they are measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    /// Its figures changed since it was last measured, or it was dirty or under writeback then.
    Changed,
    /// Never measured, and written, read or evicted since memtrace started.
    Touched,
    /// Its turn in the sweep, or never measured and untouched since memtrace started (cache
    /// found at start).
    Sweep,
}

impl Due {
    /// How long the report's measuring may have taken for a file of this class to be measured.
    fn budget(self) -> Duration {
        match self {
            Self::Changed => CHANGED_BUDGET,
            Self::Touched => TOUCHED_BUDGET,
            Self::Sweep => SWEEP_BUDGET,
        }
    }
}

/// Remembers each file's last measurement between reports, keyed by a hash of (cgroup, dev,
/// ino) (a collision at worst shows one file's last figures for another until its sweep). A
/// report is measured cgroup by cgroup ([`Self::start`], [`Self::measure`], [`Self::finish`]),
/// so it can be written as it is built.
#[derive(Default)]
pub(super) struct DirtyMeter {
    last: HashMap<u64, Measured>,
    reports: u64,
    /// What measures dirty pages here, found once: `None` before the first report.
    source: Option<Source>,
    /// Time this report spent measuring, and files it measured.
    spent: Duration,
    measured: usize,
    /// The cgroups a command asked about (explain's target): their files are measured
    /// whatever the budget, up to [`FOCUS_FILES`] a report.
    focus: Option<Focus>,
    focused: usize,
}

/// Files of the focused cgroups measured a report beyond the budget: the files a screen lists,
/// with room to spare.
const FOCUS_FILES: usize = 512;

/// A cgroup and the cgroups below it, in one hierarchy.
#[derive(Clone, Debug)]
pub struct Focus {
    pub hierarchy: u32,
    pub path: String,
}

impl Focus {
    fn covers(&self, cgroup: &CgroupUsage) -> bool {
        cgroup.hierarchy == self.hierarchy
            && cgroup
                .path
                .as_deref()
                .is_some_and(|path| under(path, &self.path))
    }
}

enum Source {
    Cachestat,
    PageFlags(residency::PageOwnerReader),
    Nothing,
}

impl Source {
    fn find() -> Self {
        // Any regular file tells whether the kernel has cachestat(2).
        let has_cachestat = std::fs::File::open("/proc/self/exe").is_ok_and(|exe| {
            !matches!(residency::cachestat(&exe), Err(err) if err.kind() == std::io::ErrorKind::Unsupported)
        });
        if has_cachestat {
            return Self::Cachestat;
        }
        match residency::PageOwnerReader::open() {
            Ok(reader) if reader.has_page_flags() => Self::PageFlags(reader),
            _ => Self::Nothing,
        }
    }

    fn name(&self) -> Option<&'static str> {
        match self {
            Self::Cachestat => Some("cachestat"),
            Self::PageFlags(_) => Some("kpageflags"),
            Self::Nothing => None,
        }
    }

    /// (dirty, writeback) pages of `file`.
    fn measure(&self, file: &std::fs::File) -> Option<(u64, u64)> {
        match self {
            Self::Cachestat => residency::cachestat(file)
                .ok()
                .map(|stat| (stat.dirty, stat.writeback)),
            Self::PageFlags(reader) => reader
                .owners(file)
                .ok()
                .map(|owners| (owners.dirty, owners.writeback)),
            Self::Nothing => None,
        }
    }
}

fn signature(file: &FileUsage) -> u64 {
    hash(&(
        file.cached_bytes,
        file.added_bytes,
        file.removed_bytes,
        file.written_bytes,
    ))
}

fn hash(value: &impl std::hash::Hash) -> u64 {
    use std::hash::BuildHasher;
    rustc_hash::FxBuildHasher.hash_one(value)
}

impl DirtyMeter {
    /// Begins a report. Returns the source of its dirty figures, or `None` when there is none.
    pub(super) fn start(&mut self) -> Option<&'static str> {
        self.reports += 1;
        self.spent = Duration::ZERO;
        self.measured = 0;
        self.focused = 0;
        self.source.get_or_insert_with(Source::find).name()
    }

    /// Measures the files of `focus` (and its descendants) in every report, beyond the budget.
    pub(super) fn focus_on(&mut self, focus: Focus) {
        self.focus = Some(focus);
    }

    /// Takes the census's count of a file's dirty and writeback pages in one memcg as its
    /// measurement: exact, and made with nothing opened. The first report shows it if the file
    /// was neither written nor read into since; otherwise the file is measured again.
    pub(super) fn counted_at_start(
        &mut self,
        cgroup_id: u64,
        dev: u32,
        ino: u64,
        dirty_pages: u64,
        writeback_pages: u64,
    ) {
        self.last.insert(
            hash(&(cgroup_id, dev, ino)),
            Measured {
                // No report's figures hash to this in practice: the file is due when touched.
                signature: 0,
                dirty_pages: u32::try_from(dirty_pages).unwrap_or(u32::MAX),
                writeback_pages: u32::try_from(writeback_pages).unwrap_or(u32::MAX),
                seen: COUNTED_AT_START,
            },
        );
    }

    /// Fills in the dirty and writeback bytes of every resident file of one cgroup of the
    /// report begun last.
    pub(super) fn measure(&mut self, cgroup: &mut CgroupUsage, page_size: u64) {
        let report = self.reports;
        let sweep = report % SWEEP_REPORTS;
        let focused = self
            .focus
            .as_ref()
            .is_some_and(|focus| focus.covers(cgroup));
        let mut due: Vec<(Due, u64, &mut FileUsage)> = Vec::new();
        for file in cgroup.files.iter_mut() {
            if file.cached_bytes == 0 {
                continue;
            }
            let key = hash(&(cgroup.id, file.dev.0, file.ino));
            if let Some(counted) = self
                .last
                .get_mut(&key)
                .filter(|m| m.seen == COUNTED_AT_START)
            {
                if file.added_bytes == 0 && file.written_bytes == 0 {
                    // Untouched since the census counted it: that count is this report's.
                    file.dirty_bytes = Some(u64::from(counted.dirty_pages) * page_size);
                    file.writeback_bytes = Some(u64::from(counted.writeback_pages) * page_size);
                    counted.signature = signature(file);
                    counted.seen = report;
                    continue;
                }
            }
            if file.host_path.is_none() || file.deleted {
                continue;
            }
            let why = match self.last.get_mut(&key) {
                None if file.added_bytes == 0 && file.written_bytes == 0 => Due::Sweep,
                None => Due::Touched,
                Some(before)
                    if before.signature != signature(file)
                        || before.dirty_pages != 0
                        || before.writeback_pages != 0 =>
                {
                    Due::Changed
                }
                Some(_) if file.ino % SWEEP_REPORTS == sweep => Due::Sweep,
                Some(before) => {
                    file.dirty_bytes = Some(0);
                    file.writeback_bytes = Some(0);
                    before.seen = report;
                    continue;
                }
            };
            due.push((why, key, file));
        }
        // Files being written first, then new ones, then the sweep; the largest first in each.
        due.sort_by_key(|(why, _, f)| (*why, std::cmp::Reverse(f.cached_bytes)));
        let Some(source) = &self.source else {
            return;
        };
        for (why, key, file) in due {
            let beyond_budget = focused && self.focused < FOCUS_FILES;
            if beyond_budget {
                self.focused += 1;
            }
            if self.spent >= why.budget() && !beyond_budget {
                // Not measured this time: the last figures stand (none for a file never
                // measured), and the file stays due (its signature is the old one).
                if let Some(before) = self.last.get_mut(&key) {
                    file.dirty_bytes = Some(u64::from(before.dirty_pages) * page_size);
                    file.writeback_bytes = Some(u64::from(before.writeback_pages) * page_size);
                    before.seen = report;
                }
                continue;
            }
            let Some(path) = file.host_path.as_deref() else {
                continue;
            };
            let began = Instant::now();
            let measured = measure_file(source, file, path);
            if !beyond_budget {
                self.spent += began.elapsed();
            }
            let Some((dirty, writeback)) = measured else {
                continue;
            };
            self.measured += 1;
            file.dirty_bytes = Some(dirty * page_size);
            file.writeback_bytes = Some(writeback * page_size);
            self.last.insert(
                key,
                Measured {
                    signature: signature(file),
                    dirty_pages: u32::try_from(dirty).unwrap_or(u32::MAX),
                    writeback_pages: u32::try_from(writeback).unwrap_or(u32::MAX),
                    seen: report,
                },
            );
        }
    }

    /// Ends the report begun last: files it did not show are forgotten.
    pub(super) fn finish(&mut self) {
        let report = self.reports;
        self.last.retain(|_, m| m.seen == report);
        log::debug!(
            "dirty bytes: {} files measured in {:?}",
            self.measured,
            self.spent
        );
    }
}

/// (dirty, writeback) pages of the file a report names, opened at its host path: only the
/// file we were told about (a path now holding a symlink, a FIFO or another file measures
/// nothing).
fn measure_file(source: &Source, file: &FileUsage, path: &str) -> Option<(u64, u64)> {
    let path = host_path_of(path, file.host_path_hex.as_deref());
    match open_regular(&path, Some(file.ino)) {
        Ok(handle) => source.measure(&handle),
        Err(err) => {
            log::debug!("dirty bytes not measured: {err}");
            None
        }
    }
}
