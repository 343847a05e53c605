//! A memory cgroup's own figures: memory.stat and usage, under v1 and v2 names alike.

use std::{collections::BTreeMap, fs, io, path::Path};

use crate::model::{MemoryFigures, MemoryPressure, NodeMemory};

/// v1 reports "no limit" as the largest page-aligned `i64`.
const V1_UNLIMITED: u64 = 0x7FFF_FFFF_FFFF_F000;

/// The node's page cache, shmem and dirty bytes, from /proc/meminfo.
pub fn read_node_memory() -> NodeMemory {
    let text = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    NodeMemory {
        cached: kib("Cached:") + kib("Buffers:"),
        shmem: kib("Shmem:"),
        dirty: kib("Dirty:"),
    }
}

/// Reads the figures of the memory cgroup directory `dir`.
pub fn read_memory(dir: &Path, v2: bool) -> io::Result<MemoryFigures> {
    let stat = parse_stat(&fs::read_to_string(dir.join("memory.stat"))?);
    let usage_file = if v2 {
        "memory.current"
    } else {
        "memory.usage_in_bytes"
    };
    let usage: u64 = fs::read_to_string(dir.join(usage_file))?
        .trim()
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{usage_file}: {e}")))?;
    let mut figures = figures(&stat, usage, v2, &format!("{}/memory.stat", dir.display()));
    figures.pressure = read_pressure(dir, &stat, v2);
    Ok(figures)
}

/// Limits, limit events and pressure of the memory cgroup directory `dir`; what cannot be
/// read stays unknown (`None`) or 0.
pub fn read_pressure(dir: &Path, stat: &BTreeMap<String, u64>, v2: bool) -> MemoryPressure {
    let read = |name: &str| fs::read_to_string(dir.join(name)).ok();
    if v2 {
        let events = read("memory.events")
            .map(|t| parse_stat(&t))
            .unwrap_or_default();
        let (some_avg10, full_avg10) = read("memory.pressure")
            .map(|t| parse_psi(&t))
            .unwrap_or((None, None));
        MemoryPressure {
            limit_bytes: read("memory.max").and_then(|t| parse_limit(&t)),
            high_bytes: read("memory.high").and_then(|t| parse_limit(&t)),
            limit_hits: events.get("max").copied().unwrap_or(0),
            high_events: events.get("high").copied(),
            oom_kills: events.get("oom_kill").copied().unwrap_or(0),
            some_avg10,
            full_avg10,
        }
    } else {
        let oom = read("memory.oom_control")
            .map(|t| parse_stat(&t))
            .unwrap_or_default();
        MemoryPressure {
            limit_bytes: stat
                .get("hierarchical_memory_limit")
                .copied()
                .or_else(|| read("memory.limit_in_bytes").and_then(|t| parse_limit(&t)))
                .filter(|&limit| limit < V1_UNLIMITED),
            high_bytes: read("memory.soft_limit_in_bytes").and_then(|t| parse_limit(&t)),
            limit_hits: read("memory.failcnt")
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(0),
            high_events: None,
            oom_kills: oom.get("oom_kill").copied().unwrap_or(0),
            some_avg10: None,
            full_avg10: None,
        }
    }
}

/// A limit file's value: `max` (v2) and v1's largest value mean none.
fn parse_limit(text: &str) -> Option<u64> {
    text.trim()
        .parse::<u64>()
        .ok()
        .filter(|&limit| limit < V1_UNLIMITED)
}

/// `some avg10=` and `full avg10=` of a PSI file (`memory.pressure`).
fn parse_psi(text: &str) -> (Option<f64>, Option<f64>) {
    let avg10 = |kind: &str| {
        text.lines()
            .find(|l| l.starts_with(kind))?
            .split_whitespace()
            .find_map(|field| field.strip_prefix("avg10="))?
            .parse()
            .ok()
    };
    (avg10("some"), avg10("full"))
}

pub fn parse_stat(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Normalizes v1 and v2 names. On v1 the hierarchical `total_*` keys are used, to match
/// `usage_in_bytes`, which counts descendants too.
pub fn figures(stat: &BTreeMap<String, u64>, usage: u64, v2: bool, source: &str) -> MemoryFigures {
    let get = |v2_key: &str, v1_key: &str| -> u64 {
        if v2 {
            stat.get(v2_key).copied().unwrap_or(0)
        } else {
            stat.get(&format!("total_{v1_key}"))
                .or_else(|| stat.get(v1_key))
                .copied()
                .unwrap_or(0)
        }
    };
    let anon = get("anon", "rss");
    let page_cache = get("file", "cache");
    let inactive_file = get("inactive_file", "inactive_file");
    let kernel = if v2 {
        stat.get("kernel")
            .copied()
            .unwrap_or_else(|| usage.saturating_sub(anon + page_cache))
    } else {
        usage.saturating_sub(anon + page_cache)
    };
    MemoryFigures {
        usage_bytes: usage,
        anon_bytes: anon,
        page_cache_bytes: page_cache,
        shmem_bytes: get("shmem", "shmem"),
        mapped_file_bytes: get("file_mapped", "mapped_file"),
        dirty_bytes: get("file_dirty", "dirty"),
        writeback_bytes: get("file_writeback", "writeback"),
        active_file_bytes: get("active_file", "active_file"),
        inactive_file_bytes: inactive_file,
        kernel_bytes: kernel,
        working_set_bytes: usage.saturating_sub(inactive_file),
        refault_file_bytes: get("workingset_refault_file", "workingset_refault_file") * page_size(),
        pressure: MemoryPressure::default(),
        source: format!("{source} ({})", if v2 { "cgroup v2" } else { "cgroup v1" }),
    }
}

/// memory.stat counts refaults in pages.
fn page_size() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_events_and_pressure_of_either_version() {
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None, "v1's no limit");
        assert_eq!(parse_limit("268435456\n"), Some(256 << 20));
        let psi = "some avg10=12.50 avg60=3.00 avg300=0.50 total=123\nfull avg10=1.25 avg60=0.00 avg300=0.00 total=4\n";
        assert_eq!(parse_psi(psi), (Some(12.5), Some(1.25)));
        assert_eq!(parse_psi(""), (None, None));
    }

    #[test]
    fn v1_names_prefer_hierarchical_totals() {
        let stat = parse_stat("cache 100\nrss 50\ntotal_cache 300\ntotal_rss 60\ntotal_inactive_file 200\ntotal_active_file 100\ntotal_dirty 7\nshmem 1\n");
        let f = figures(&stat, 1000, false, "x");
        assert_eq!(f.page_cache_bytes, 300);
        assert_eq!(f.anon_bytes, 60);
        assert_eq!(f.dirty_bytes, 7);
        assert_eq!(f.shmem_bytes, 1, "falls back to the local key");
        assert_eq!(f.kernel_bytes, 1000 - 360);
        assert_eq!(f.working_set_bytes, 800);
    }

    #[test]
    fn v2_names() {
        let stat = parse_stat("anon 10\nfile 500\nkernel 30\nfile_dirty 4\nfile_writeback 2\ninactive_file 400\nactive_file 100\nshmem 9\nfile_mapped 3\n");
        let f = figures(&stat, 600, true, "x");
        assert_eq!(
            (f.anon_bytes, f.page_cache_bytes, f.kernel_bytes),
            (10, 500, 30)
        );
        assert_eq!(
            (f.dirty_bytes, f.writeback_bytes, f.mapped_file_bytes),
            (4, 2, 3)
        );
        assert_eq!(f.working_set_bytes, 200);
    }
}
