//! Reads the kernel maps into a `Report`, on whatever schedule the caller keeps.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use memtrace_common::{CacheCounters, CacheKey, CgroupEvent, FileEvent, Stat};

use crate::{
    loader::{LoadError, LoadOptions, Tracer},
    model::{aggregate, apply_filter, Filter, KernelStats, Report, SCHEMA_VERSION},
    resolve::Resolvers,
};

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("cannot read the kernel's event counters")]
    Stats(#[source] aya::maps::MapError),
}

/// Loaded programs plus the userspace state that names what they count.
pub struct Collector {
    tracer: Tracer,
    pub resolvers: Resolvers,
    started: Instant,
    page_size: u64,
}

impl Collector {
    /// Loads and attaches the programs, then learns the cgroups, mounts and containers that
    /// exist now.
    pub fn start(options: &LoadOptions) -> Result<Self, LoadError> {
        let tracer = Tracer::load(options)?;
        let started = Instant::now();
        Ok(Self {
            tracer,
            resolvers: Resolvers::new(),
            started,
            page_size: page_size(),
        })
    }

    pub fn tracer(&self) -> &Tracer {
        &self.tracer
    }

    /// Applies pending notices from the kernel: cgroups made and removed, files first seen.
    /// Call it often enough that the ring buffers do not fill (the commands do, every 200 ms).
    pub fn drain_events(&mut self) {
        while let Some(item) = self.tracer.cgroup_events.next() {
            if let Some(event) = read_event::<CgroupEvent>(&item) {
                self.resolvers.on_cgroup_event(&event);
            }
        }
        while let Some(item) = self.tracer.file_events.next() {
            if let Some(event) = read_event::<FileEvent>(&item) {
                self.resolvers.on_file_event(&event);
            }
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
            file_events_lost: sums[Stat::FileEventsLost as usize],
            map_entries: 0,
            map_capacity: u64::from(self.tracer.max_entries),
            map_read_errors: 0,
        })
    }

    /// Everything memtrace attributes now.
    pub fn snapshot(&mut self) -> Result<Report, CollectError> {
        self.snapshot_filtered(&Filter::default())
    }

    /// Reads every (memcg, file) entry, names what it can, keeps what `filter` asks for.
    pub fn snapshot_filtered(&mut self, filter: &Filter) -> Result<Report, CollectError> {
        self.drain_events();
        let mut stats = self.kernel_stats()?;
        let mut entries: Vec<(CacheKey, CacheCounters)> = Vec::new();
        for entry in self.tracer.page_cache.iter() {
            match entry {
                Ok(entry) => entries.push(entry),
                Err(_) => stats.map_read_errors += 1,
            }
        }
        stats.map_entries = entries.len() as u64;

        let (mut cgroups, mut totals) = aggregate(entries, self.page_size);
        self.resolvers.refresh();
        self.resolvers.annotate(&mut cgroups);
        apply_filter(&mut cgroups, &mut totals, filter);
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

/// Copies a kernel-written event out of a ring buffer record.
fn read_event<T: Copy>(record: &[u8]) -> Option<T> {
    if record.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: the kernel wrote a whole T (checked length); every bit pattern is valid for these
    // plain-data types, and read_unaligned copes with the record's alignment.
    Some(unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<T>()) })
}

/// The kernel's base page size; the programs count in pages.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}
