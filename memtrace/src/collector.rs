//! Reads the kernel maps into a `Report`, on whatever schedule the caller keeps.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use aya::maps::{MapData, RingBuf};
use memtrace_common::{CacheCounters, CacheKey, CgroupEvent, Stat};

use crate::{
    loader::{LoadError, LoadOptions, Tracer},
    model::{aggregate, KernelStats, Report, SCHEMA_VERSION},
    resolve::cgroups::{CgroupTable, Hierarchies},
};

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("cannot read the kernel's event counters")]
    Stats(#[source] aya::maps::MapError),
}

/// Loaded programs plus the userspace state that names what they count.
pub struct Collector {
    tracer: Tracer,
    pub cgroups: CgroupTable,
    started: Instant,
    page_size: u64,
}

impl Collector {
    /// Loads and attaches the programs, then learns the cgroups that exist now.
    pub fn start(options: &LoadOptions) -> Result<Self, LoadError> {
        let tracer = Tracer::load(options)?;
        let started = Instant::now();
        let cgroups = CgroupTable::new(Hierarchies::discover());
        Ok(Self {
            tracer,
            cgroups,
            started,
            page_size: page_size(),
        })
    }

    pub fn tracer(&self) -> &Tracer {
        &self.tracer
    }

    /// The cgroup notice ring buffer, for callers that wait on it; `None` once taken.
    pub fn take_cgroup_events(&mut self) -> Option<RingBuf<MapData>> {
        self.tracer.cgroup_events.take()
    }

    /// Applies pending cgroup notices from `events` (the ring buffer taken, or still held).
    pub fn drain_cgroup_events(&mut self, events: Option<&mut RingBuf<MapData>>) {
        let events = match events {
            Some(events) => events,
            None => match self.tracer.cgroup_events.as_mut() {
                Some(events) => events,
                None => return,
            },
        };
        while let Some(item) = events.next() {
            if item.len() < size_of::<CgroupEvent>() {
                continue;
            }
            // SAFETY: the kernel wrote a whole CgroupEvent; read_unaligned copes with alignment.
            let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<CgroupEvent>()) };
            self.cgroups.apply(&event);
        }
    }

    /// Sums the per-CPU kernel counters.
    pub fn kernel_stats(&self) -> Result<KernelStats, CollectError> {
        let mut sums = [0u64; Stat::COUNT as usize];
        for stat in Stat::ALL {
            let per_cpu = self
                .tracer
                .stats
                .get(&(stat as u32), 0)
                .map_err(CollectError::Stats)?;
            sums[stat as usize] = per_cpu.iter().sum();
        }
        Ok(KernelStats {
            add_events: sums[Stat::AddEvents as usize],
            delete_events: sums[Stat::DeleteEvents as usize],
            map_full: sums[Stat::MapFull as usize],
            read_failed: sums[Stat::ReadFailed as usize],
            uncharged: sums[Stat::Uncharged as usize],
            cgroup_events_lost: sums[Stat::CgroupEventsLost as usize],
            map_entries: 0,
            map_capacity: u64::from(self.tracer.max_entries),
            map_read_errors: 0,
        })
    }

    /// Reads every (memcg, file) entry and builds the attribution.
    pub fn snapshot(&mut self) -> Result<Report, CollectError> {
        self.drain_cgroup_events(None);
        let mut stats = self.kernel_stats()?;
        let mut entries: Vec<(CacheKey, CacheCounters)> = Vec::new();
        for entry in self.tracer.page_cache.iter() {
            match entry {
                Ok(entry) => entries.push(entry),
                Err(_) => stats.map_read_errors += 1,
            }
        }
        stats.map_entries = entries.len() as u64;

        self.cgroups.begin_lookups();
        let cgroups = &mut self.cgroups;
        let (cgroups, totals) = aggregate(entries, self.page_size, |hierarchy, id| {
            cgroups.lookup(hierarchy, id).cloned()
        });
        Ok(Report {
            schema_version: SCHEMA_VERSION,
            timestamp: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            traced_seconds: self.started.elapsed().as_secs_f64(),
            page_size: self.page_size,
            hooks: self.tracer.hooks.clone(),
            stats,
            totals,
            cgroups,
        })
    }
}

/// The kernel's base page size; the programs count in pages.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}
