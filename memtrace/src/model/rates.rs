//! Per-second change of each file between two samples of the model, computed from the two
//! samples alone (as `below` computes its models from a sample and the last one).

use std::{collections::HashMap, hash::BuildHasher, time::Instant};

use super::schema::{CgroupUsage, Dev};

/// A file under one cgroup: (hierarchy, cgroup id, device, inode).
pub type FileKey = (u32, u64, Dev, u64);
/// A cgroup: (hierarchy, cgroup id).
pub type CgroupKey = (u32, u64);

/// A file's or a cgroup's figures at the moment of a sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Figures {
    pub cached_bytes: u64,
    pub written_bytes: u64,
    /// Pages the kernel added and removed since memtrace started, in bytes.
    pub added_bytes: u64,
    pub removed_bytes: u64,
    /// Bytes of pages reads found or brought in, since memtrace started.
    pub accessed_bytes: u64,
}

impl Figures {
    /// Per-second change from `before` to these figures over `seconds`.
    fn since(&self, before: &Figures, seconds: f64) -> FileRates {
        let added = self.added_bytes.saturating_sub(before.added_bytes);
        let removed = self.removed_bytes.saturating_sub(before.removed_bytes);
        let written = self.written_bytes.saturating_sub(before.written_bytes);
        FileRates {
            written: per_second(before.written_bytes, self.written_bytes, seconds).max(0.0),
            cached: per_second(before.cached_bytes, self.cached_bytes, seconds),
            // Pages that came in while others of the same file were evicted, beyond what was
            // written: read again after eviction (a working set that does not fit).
            reread: added.min(removed).saturating_sub(written) as f64 / seconds,
            hit_ratio: hit_ratio(
                self.accessed_bytes.saturating_sub(before.accessed_bytes),
                added,
            ),
        }
    }
}

/// Of the pages reads touched, the share they found in the cache: every page read in was
/// added (and touched), so hits are at least the touched pages that were not added (writes
/// add pages too, so this is a floor). `None` when nothing was touched.
pub fn hit_ratio(accessed: u64, added: u64) -> Option<f64> {
    (accessed > 0).then(|| accessed.saturating_sub(added) as f64 / accessed as f64)
}

/// Change from `before` to `now` per second: the one rate every view shows.
pub fn per_second(before: u64, now: u64, seconds: f64) -> f64 {
    (now as f64 - before as f64) / seconds
}

/// What the cgroups and files of a report held at one moment: enough to rate a later report
/// against.
#[derive(Clone, Debug)]
pub struct Sample {
    pub at: Instant,
    pub files: HashMap<FileKey, Figures>,
    /// Each cgroup's cache, and the bytes written to its listed files.
    pub cgroups: HashMap<CgroupKey, Figures>,
}

impl Sample {
    /// The figures of every cgroup in `cgroups` and every file listed, taken `at`.
    pub fn of(cgroups: &[CgroupUsage], at: Instant) -> Self {
        let files = cgroups
            .iter()
            .flat_map(|c| {
                c.files.iter().map(move |f| {
                    (
                        (c.hierarchy, c.id, f.dev, f.ino),
                        Figures {
                            cached_bytes: f.cached_bytes,
                            written_bytes: f.written_bytes,
                            added_bytes: f.added_bytes,
                            removed_bytes: f.removed_bytes,
                            accessed_bytes: f.accessed_bytes,
                        },
                    )
                })
            })
            .collect();
        let cgroups = cgroups
            .iter()
            .map(|c| {
                let figures = Figures {
                    cached_bytes: c.cached_bytes,
                    written_bytes: c.files.iter().map(|f| f.written_bytes).sum(),
                    added_bytes: c.added_bytes,
                    removed_bytes: c.removed_bytes,
                    accessed_bytes: c.accessed_bytes,
                };
                ((c.hierarchy, c.id), figures)
            })
            .collect();
        Self { at, files, cgroups }
    }
}

/// Per-second change of a file or a cgroup between two samples.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FileRates {
    /// Bytes written per second (never negative: counters only grow).
    pub written: f64,
    /// Change of resident bytes per second (negative when cache left).
    pub cached: f64,
    /// Bytes read into the cache again per second after being evicted.
    pub reread: f64,
    /// Share of the pages reads touched that they found cached (see [`hit_ratio`]); `None`
    /// when none was touched, or hits are not counted here.
    pub hit_ratio: Option<f64>,
}

/// Rates of every file and cgroup of the later sample. One absent from the earlier sample
/// counts from zero (it appeared in between).
#[derive(Clone, Debug)]
pub struct Rates {
    pub seconds: f64,
    files: HashMap<FileKey, FileRates>,
    cgroups: HashMap<CgroupKey, FileRates>,
}

impl Rates {
    /// `None` when no time passed between the samples.
    pub fn between(last: &Sample, now: &Sample) -> Option<Self> {
        let seconds = now.at.saturating_duration_since(last.at).as_secs_f64();
        if seconds <= 0.0 {
            return None;
        }
        fn rate_all<K: Copy + Eq + std::hash::Hash>(
            last: &HashMap<K, Figures>,
            now: &HashMap<K, Figures>,
            seconds: f64,
        ) -> HashMap<K, FileRates> {
            now.iter()
                .map(|(key, figures)| {
                    let before = last.get(key).copied().unwrap_or_default();
                    (*key, figures.since(&before, seconds))
                })
                .collect()
        }
        Some(Self {
            seconds,
            files: rate_all(&last.files, &now.files, seconds),
            cgroups: rate_all(&last.cgroups, &now.cgroups, seconds),
        })
    }

    pub fn of(&self, key: &FileKey) -> Option<FileRates> {
        self.files.get(key).copied()
    }

    pub fn of_cgroup(&self, key: &CgroupKey) -> Option<FileRates> {
        self.cgroups.get(key).copied()
    }
}

/// Write rates report after report, in one pass per report: each written file's bytes are
/// rated ([`per_second`]) against the previous report's and remembered for the next (`Sample`
/// and `Rates` would build two maps of every file of a streamed report for the same answer). A report is rated cgroup by
/// cgroup ([`Self::start`], [`Self::rate`]), so it can be written as it is built.
#[derive(Debug, Default)]
pub struct WriteRates {
    /// The report being rated: when it was taken, and its written files so far, each under a
    /// hash of its [`FileKey`] (16 bytes a file, not 40: a collision at worst rates one file
    /// against another's bytes for one report).
    current: Option<(Instant, FxHashMap<u64, u64>)>,
    /// The report before it, and the seconds between the two (`None` in the first report).
    previous: FxHashMap<u64, u64>,
    seconds: Option<f64>,
}

type FxHashMap<K, V> = rustc_hash::FxHashMap<K, V>;

impl WriteRates {
    /// Fills `write_rate_bytes_per_second` of every written file in `cgroups`, taken `at`
    /// (left null in the first report). A file absent from the previous report counts from
    /// zero.
    pub fn apply(&mut self, cgroups: &mut [CgroupUsage], at: Instant) {
        self.start(at);
        for cgroup in cgroups {
            self.rate(cgroup);
        }
        self.finish();
    }

    /// Begins the report taken `at`: the one rated so far becomes the reference.
    pub fn start(&mut self, at: Instant) {
        let (then, files) = match self.current.take() {
            Some((then, files)) => (Some(then), files),
            None => (None, FxHashMap::default()),
        };
        self.seconds = then
            .map(|then| at.saturating_duration_since(then).as_secs_f64())
            .filter(|s| *s > 0.0);
        // The map of two reports ago is emptied and filled again: no new table each report.
        let mut recycled = std::mem::replace(&mut self.previous, files);
        recycled.clear();
        recycled.shrink_to(self.previous.len());
        recycled.reserve(self.previous.len());
        self.current = Some((at, recycled));
    }

    /// Rates the written files of one cgroup of the report begun last.
    pub fn rate(&mut self, cgroup: &mut CgroupUsage) {
        let Some((_, now)) = &mut self.current else {
            return;
        };
        let (hierarchy, id) = (cgroup.hierarchy, cgroup.id);
        for file in cgroup.files.iter_mut().filter(|f| f.written_bytes > 0) {
            let key: FileKey = (hierarchy, id, file.dev, file.ino);
            let key = rustc_hash::FxBuildHasher.hash_one(key);
            if let Some(seconds) = self.seconds {
                let before = self.previous.get(&key).copied().unwrap_or(0);
                file.write_rate_bytes_per_second =
                    Some(per_second(before, file.written_bytes, seconds).max(0.0));
            }
            now.insert(key, file.written_bytes);
        }
    }

    /// Ends the report begun last. The one before it is kept, emptied, for the next report's
    /// figures.
    pub fn finish(&mut self) {
        self.previous.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn sample(at: Instant, files: &[(u64, u64, u64)]) -> Sample {
        Sample {
            at,
            files: files
                .iter()
                .map(|&(ino, cached_bytes, written_bytes)| {
                    (
                        (4, 7, Dev(1), ino),
                        Figures {
                            cached_bytes,
                            written_bytes,
                            ..Figures::default()
                        },
                    )
                })
                .collect(),
            cgroups: HashMap::from([(
                (4, 7),
                Figures {
                    cached_bytes: files.iter().map(|f| f.1).sum(),
                    written_bytes: files.iter().map(|f| f.2).sum(),
                    ..Figures::default()
                },
            )]),
        }
    }

    #[test]
    fn the_hit_ratio_is_what_reads_touched_but_did_not_add() {
        // Ten passes over 100 pages: the first read them in (added and touched), nine hit.
        assert_eq!(hit_ratio(1000, 100), Some(0.9));
        assert_eq!(
            hit_ratio(100, 100),
            Some(0.0),
            "a single cold read hits nothing"
        );
        assert_eq!(
            hit_ratio(50, 400),
            Some(0.0),
            "pages written in are not misses below 0"
        );
        assert_eq!(hit_ratio(0, 100), None, "no read, no ratio");
    }

    #[test]
    fn rates_are_the_change_over_the_time_between_samples() {
        let t0 = Instant::now();
        let last = sample(t0, &[(1, 100, 1000), (2, 500, 0)]);
        let now = sample(
            t0 + Duration::from_secs(2),
            &[(1, 300, 5000), (2, 100, 0), (3, 40, 8)],
        );
        let rates = Rates::between(&last, &now).unwrap();
        assert_eq!(rates.seconds, 2.0);
        let of = |ino| rates.of(&(4, 7, Dev(1), ino)).unwrap();
        assert_eq!(
            of(1),
            FileRates {
                written: 2000.0,
                cached: 100.0,
                reread: 0.0,
                hit_ratio: None,
            }
        );
        assert_eq!(of(2).cached, -200.0, "cache that left is negative growth");
        assert_eq!(
            of(3),
            FileRates {
                written: 4.0,
                cached: 20.0,
                reread: 0.0,
                hit_ratio: None,
            },
            "new files count from 0"
        );
        assert_eq!(
            rates.of_cgroup(&(4, 7)),
            Some(FileRates {
                written: 2004.0,
                cached: -80.0,
                reread: 0.0,
                hit_ratio: None,
            }),
            "a cgroup's rates are its own figures' change"
        );
        assert!(Rates::between(&now, &now).is_none(), "no time, no rate");
    }

    #[test]
    fn rereads_are_pages_added_back_while_others_were_evicted_beyond_what_was_written() {
        let t0 = Instant::now();
        let at = |at, added_bytes, removed_bytes, written_bytes| Sample {
            at,
            files: HashMap::from([(
                (4, 7, Dev(1), 1),
                Figures {
                    added_bytes,
                    removed_bytes,
                    written_bytes,
                    ..Figures::default()
                },
            )]),
            cgroups: HashMap::new(),
        };
        let rate = |last: &Sample, now: &Sample| {
            Rates::between(last, now)
                .unwrap()
                .of(&(4, 7, Dev(1), 1))
                .unwrap()
                .reread
        };
        let t1 = t0 + Duration::from_secs(2);
        // A reader cycling through a file larger than its memory: as much comes in as leaves.
        assert_eq!(rate(&at(t0, 100, 0, 0), &at(t1, 900, 700, 0)), 350.0);
        // An appending writer: pages come in, none leave.
        assert_eq!(rate(&at(t0, 100, 0, 100), &at(t1, 900, 0, 900)), 0.0);
        // A file rewritten in place: what comes back was written, not read.
        assert_eq!(rate(&at(t0, 0, 0, 0), &at(t1, 800, 800, 800)), 0.0);
    }

    #[test]
    fn write_rates_are_null_at_first_then_bytes_written_per_second() {
        use crate::model::{
            aggregate,
            fixtures::{counters, key, traced},
        };
        let observations = traced(vec![
            (key(7, 1), counters(1, 0)),
            (key(7, 2), counters(1, 0)),
        ]);
        let (mut cgroups, _) = aggregate(observations, 4096);
        let write = |cgroups: &mut [CgroupUsage], ino: u64, bytes: u64| {
            for file in cgroups[0].files.iter_mut().filter(|f| f.ino == ino) {
                file.written_bytes = bytes;
            }
        };
        let rate = |cgroups: &[CgroupUsage], ino: u64| {
            cgroups[0]
                .files
                .iter()
                .find(|f| f.ino == ino)
                .and_then(|f| f.write_rate_bytes_per_second)
        };
        let mut rates = WriteRates::default();
        let t0 = Instant::now();
        write(&mut cgroups, 1, 1000);
        rates.apply(&mut cgroups, t0);
        assert_eq!(rate(&cgroups, 1), None, "no rate in the first report");

        write(&mut cgroups, 1, 5000);
        write(&mut cgroups, 2, 8);
        rates.apply(&mut cgroups, t0 + Duration::from_secs(2));
        assert_eq!(rate(&cgroups, 1), Some(2000.0));
        assert_eq!(
            rate(&cgroups, 2),
            Some(4.0),
            "a newly written file counts from 0"
        );
    }
}
