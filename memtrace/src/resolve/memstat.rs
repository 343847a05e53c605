//! A memory cgroup's own figures: memory.stat and usage, under v1 and v2 names alike.

use std::{collections::BTreeMap, fs, io, path::Path};

use crate::model::{MemoryFigures, NodeMemory};

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
        cached: kib("Cached:"),
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
    Ok(figures(
        &stat,
        usage,
        v2,
        &format!("{}/memory.stat", dir.display()),
    ))
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
        source: format!("{source} ({})", if v2 { "cgroup v2" } else { "cgroup v1" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
