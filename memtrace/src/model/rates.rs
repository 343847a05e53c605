//! Per-second change of each file between two samples of the model, computed from the two
//! samples alone (as `below` computes its models from a sample and the last one).

use std::{collections::HashMap, hash::BuildHasher, time::Instant};

use super::schema::{CgroupUsage, Dev};

/// A file under one cgroup: (hierarchy, cgroup id, device, inode).
pub type FileKey = (u32, u64, Dev, u64);

/// A file's figures at the moment of a sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileFigures {
    pub cached_bytes: u64,
    pub written_bytes: u64,
}

/// What the files of a report held at one moment: enough to rate a later report against.
#[derive(Clone, Debug)]
pub struct Sample {
    pub at: Instant,
    pub files: HashMap<FileKey, FileFigures>,
}

impl Sample {
    /// The figures of every file listed in `cgroups`, taken `at`.
    pub fn of(cgroups: &[CgroupUsage], at: Instant) -> Self {
        let files = cgroups
            .iter()
            .flat_map(|c| {
                c.files.iter().map(move |f| {
                    (
                        (c.hierarchy, c.id, f.dev, f.ino),
                        FileFigures {
                            cached_bytes: f.cached_bytes,
                            written_bytes: f.written_bytes,
                        },
                    )
                })
            })
            .collect();
        Self { at, files }
    }
}

/// Per-second change of a file between two samples.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FileRates {
    /// Bytes written per second (never negative: counters only grow).
    pub written: f64,
    /// Change of resident bytes per second (negative when cache left).
    pub cached: f64,
}

/// Rates of every file of the later sample. A file absent from the earlier one counts from
/// zero (it appeared in between).
#[derive(Clone, Debug)]
pub struct Rates {
    pub seconds: f64,
    files: HashMap<FileKey, FileRates>,
}

impl Rates {
    /// `None` when no time passed between the samples.
    pub fn between(last: &Sample, now: &Sample) -> Option<Self> {
        let seconds = now.at.saturating_duration_since(last.at).as_secs_f64();
        if seconds <= 0.0 {
            return None;
        }
        let files = now
            .files
            .iter()
            .map(|(key, figures)| {
                let before = last.files.get(key).copied().unwrap_or_default();
                let rates = FileRates {
                    written: figures.written_bytes.saturating_sub(before.written_bytes) as f64
                        / seconds,
                    cached: (figures.cached_bytes as f64 - before.cached_bytes as f64) / seconds,
                };
                (*key, rates)
            })
            .collect();
        Some(Self { seconds, files })
    }

    pub fn of(&self, key: &FileKey) -> Option<FileRates> {
        self.files.get(key).copied()
    }
}

/// Write rates report after report, in one pass per report: each written file's bytes are
/// rated against the previous report's and remembered for the next (`Sample` and `Rates`
/// would build two maps of every file for the same answer). A report is rated cgroup by
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
                    Some(file.written_bytes.saturating_sub(before) as f64 / seconds);
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
                        FileFigures {
                            cached_bytes,
                            written_bytes,
                        },
                    )
                })
                .collect(),
        }
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
                cached: 100.0
            }
        );
        assert_eq!(of(2).cached, -200.0, "cache that left is negative growth");
        assert_eq!(
            of(3),
            FileRates {
                written: 4.0,
                cached: 20.0
            },
            "new files count from 0"
        );
        assert!(Rates::between(&now, &now).is_none(), "no time, no rate");
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
