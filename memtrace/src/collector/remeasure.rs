//! Measuring a file again when the traced counts cannot explain its cache: pages older than
//! what memtrace counted are leaving, so the counters alone would floor at zero.

use memtrace_common::{CacheCounters, CacheKey};

use super::{
    naming::{ask_kernel, InodeIdentities},
    observations::InReportOrder,
    residency, Collector,
};
use crate::{
    model::{Observation, Provenance, SeededCache},
    resolve::open::open_regular,
};

/// Most files measured again in one snapshot because their pre-existing cache is leaving.
const REMEASURE_LIMIT: usize = 256;

impl Collector {
    /// Measures `files` per memcg now: their cache older than what memtrace counted is
    /// leaving, so the counters alone would floor at zero. Traced changes count from here on,
    /// so every file shown holds what the kernel holds. A file that changed while measured is
    /// measured again at the next report.
    pub(super) fn measure_files(
        &mut self,
        mut files: Vec<(u32, u64)>,
        observed: &[Observation],
        inodes: &InodeIdentities,
    ) -> Vec<CacheKey> {
        let mut seeded = Vec::new();
        if files.is_empty() {
            return seeded;
        }
        files.sort_unstable();
        files.dedup();
        if files.len() > REMEASURE_LIMIT {
            log::debug!(
                "{} files lost pre-existing cache; measuring {REMEASURE_LIMIT} now, the rest next time",
                files.len()
            );
            self.ledger
                .pending_measure
                .extend(files.drain(REMEASURE_LIMIT..));
        }
        // Needed only where the census is not: without either, nothing can be measured.
        let reader = residency::PageOwnerReader::open().ok();
        if reader.is_none() && self.tracer.census().is_none() {
            return seeded;
        }
        let memory_hierarchy = self
            .resolvers
            .cgroups
            .hierarchies
            .memory_hierarchy
            .unwrap_or(0);
        for (dev, ino) in files {
            self.measure_file(
                reader.as_ref(),
                (dev, ino),
                observed,
                inodes,
                memory_hierarchy,
                &mut seeded,
            );
        }
        seeded
    }

    /// Measures one file and records what each of its memcgs holds as seeded cache; the keys
    /// recorded go to `seeded`. A file that cannot be opened or measured keeps what memtrace
    /// had; one that changed while measured is queued for the next report.
    fn measure_file(
        &mut self,
        reader: Option<&residency::PageOwnerReader>,
        (dev, ino): (u32, u64),
        observed: &[Observation],
        inodes: &InodeIdentities,
        memory_hierarchy: u32,
        seeded: &mut Vec<CacheKey>,
    ) {
        let tracer = &self.tracer;
        let generation = inodes
            .get(&(dev, ino))
            .map_or(0, |i| u64::from(i.generation));
        let resolved = self.resolvers.paths.resolve(dev, ino, generation, || {
            ask_kernel(tracer, inodes, dev, ino)
        });
        let keys: Vec<(CacheKey, CacheCounters)> = observed
            .iter()
            .filter(|o| o.key.dev == dev && o.key.ino == ino)
            .map(|o| (o.key, o.counters))
            .collect();
        // The deficits this measurement answers are marked answered only once it has answered
        // them (or is queued again): a file that could not be opened or read this time is
        // left for the next drain to find again, not forgotten.
        let answered = |ledger: &mut super::ledger::Ledger| {
            for (key, counters) in &keys {
                ledger.deficits_handled.insert(*key, counters.max_deficit);
            }
        };
        // The census counts the file's pages where they are, by the inode's address: nothing
        // opened or mapped, and files that cannot be opened (unnamed, deleted, in another
        // mount namespace) measured all the same. Without it, the file is opened by its path
        // and its pages' owners read through a mapping.
        let identity = inodes.get(&(dev, ino)).copied();
        let census = self.tracer.census().zip(identity);
        let file = if census.is_some() {
            None
        } else {
            let opened = resolved
                .host()
                .filter(|_| !resolved.deleted)
                .and_then(|path| open_regular(&path, Some(ino)).ok())
                .filter(residency::PageOwnerReader::residency_is_honest);
            if opened.is_none() {
                log::debug!("file {dev}:{ino} cannot be opened to be measured again now");
                return;
            }
            opened
        };
        // The measurement is bracketed by the kernel's counters for the file: pages that
        // came or went while it ran may or may not be in it, so it counts only if none did.
        let mut file_keys: Vec<CacheKey> = keys.iter().map(|(key, _)| *key).collect();
        let before = self.tracer.counting_for(&file_keys);
        let measured = match (census, &file) {
            (Some((census, identity)), _) => count_by_census(census, dev, ino, identity),
            (None, Some(file)) => reader.and_then(|reader| {
                reader.owners(file).ok().map(|owners| Measured {
                    by_cgroup: owners.by_cgroup,
                    resident: owners.resident,
                    active: owners.active,
                    exact: reader.exact(),
                })
            }),
            (None, None) => None,
        };
        let Some(measured) = measured else {
            log::debug!("file {dev}:{ino} could not be measured now");
            return;
        };
        // Without page frame numbers (no CAP_SYS_ADMIN) the pages cannot say whose they
        // are: a file charged to one cgroup gets its resident pages, by inference; a
        // file shared by several keeps what memtrace had.
        let (by_cgroup, provenance) = if measured.exact {
            (measured.by_cgroup.clone(), Provenance::Exact)
        } else if let [(key, _)] = keys.as_slice() {
            (
                std::iter::once((key.cgroup_id, measured.resident)).collect(),
                Provenance::InferredOwner,
            )
        } else {
            // Never measurable here: what memtrace had stays, and the deficit is answered.
            answered(&mut self.ledger);
            return;
        };
        // Cgroups the measurement found that no counter named held nothing traced when
        // the report began.
        for &cgroup_id in by_cgroup.keys() {
            let key = CacheKey {
                cgroup_id,
                ino,
                dev,
                hierarchy: memory_hierarchy,
            };
            if !file_keys.contains(&key) {
                file_keys.push(key);
            }
        }
        let after = self.tracer.counting_for(&file_keys);
        let steady = match (&before, &after) {
            (Some(before), Some(after)) => after.iter().enumerate().all(|(at, now)| {
                let then = before.get(at).copied().unwrap_or_default();
                then.pages() == now.pages()
            }),
            _ => false,
        };
        let Some(after) = after.filter(|_| steady) else {
            log::debug!("file {dev}:{ino} changed while measured; measuring it at the next report");
            self.ledger.pending_measure.insert((dev, ino));
            return;
        };
        let active_share = |pages: u64| {
            (measured.active * pages)
                .checked_div(measured.resident)
                .unwrap_or(0)
        };
        answered(&mut self.ledger);
        for (key, counting) in file_keys.iter().zip(&after) {
            let pages = by_cgroup.get(&key.cgroup_id).copied().unwrap_or(0);
            seeded.push(*key);
            self.ledger.seeds.insert(
                InReportOrder(*key),
                SeededCache {
                    pages,
                    active_pages: active_share(pages),
                    provenance,
                    // The counters as the measurement saw them: what they add from here
                    // on comes on top of it.
                    baseline: self.ledger.combined(key, Some(counting)),
                },
            );
        }
    }
}

/// A file's resident pages per memcg (cgroup id), however measured.
struct Measured {
    by_cgroup: std::collections::HashMap<u64, u64>,
    resident: u64,
    active: u64,
    /// Whether the memcg of each page was read (not inferred).
    exact: bool,
}

/// Counts the file at `identity`'s inode with the census; `None` when the walk did not
/// finish (the inode gone, or a read failed while the file changed).
fn count_by_census(
    census: &crate::loader::census::Census,
    dev: u32,
    ino: u64,
    identity: super::naming::InodeIdentity,
) -> Option<Measured> {
    let inode = memtrace_common::CensusInode {
        inode: identity.inode,
        ino,
        nrpages: 0,
        generation: identity.generation,
        _pad: 0,
    };
    let mut measured = Measured {
        by_cgroup: std::collections::HashMap::new(),
        resident: 0,
        active: 0,
        exact: true,
    };
    let mut add = |key: CacheKey, pages: memtrace_common::CensusPages| {
        *measured.by_cgroup.entry(key.cgroup_id).or_default() += pages.pages;
        measured.resident += pages.pages;
        measured.active += pages.active;
    };
    match census.pages(&inode, dev, &mut add) {
        Ok(crate::loader::census::PagesWalk::Complete { lost_pages: 0 }) => Some(measured),
        _ => None,
    }
}
