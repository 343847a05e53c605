//! The human table: cgroups by resident page cache, each with its largest files.

use std::io::{self, Write};

use crate::model::{
    describe_hierarchy, escape_control, human_bytes, human_count, CgroupUsage, FileUsage, Layer,
    Report, WritesSource,
};

/// How much of the report a table shows.
#[derive(Clone, Copy, Debug)]
pub struct TableOptions {
    /// Files listed under each cgroup.
    pub files_per_cgroup: usize,
    /// Cgroups listed.
    pub max_cgroups: usize,
    /// Show cgroups and files whose traced cache is back to zero.
    pub show_idle: bool,
}

pub fn write(out: &mut impl Write, report: &Report, options: TableOptions) -> io::Result<()> {
    let stats = &report.stats;
    writeln!(
        out,
        "memtrace: traced {:.1}s, {} in {} cgroups / {} files; page-cache events +{} -{}",
        report.traced_seconds,
        human_bytes(report.totals.cached_bytes),
        report.totals.cgroups,
        report.totals.files,
        human_count(stats.add_events),
        human_count(stats.delete_events),
    )?;
    let counts_lost = stats.events_lost();
    if counts_lost > 0 {
        writeln!(
            out,
            "WARNING: {counts_lost} events not counted (map full {}, unreadable {}, writers map full {}, map read errors {}, program runs the kernel skipped {}); raise --max-entries if a map is full",
            stats.map_full, stats.read_failed, stats.writers_map_full, stats.map_read_errors, stats.missed_runs
        )?;
    }
    if stats.overflow_runs > 0 {
        writeln!(
            out,
            "NOTE: {} runs of events counted per cgroup, not per file, because the (memcg, file) map was full ({} early drains): no page lost, some files' detail is; raise --max-entries to keep it",
            stats.overflow_runs, stats.early_flips
        )?;
    }
    if stats.file_events_lost + stats.cgroup_events_lost > 0 {
        writeln!(
            out,
            "note: names not captured for {} new files and {} cgroups (notice ring full); their bytes are counted, they show by device and inode",
            stats.file_events_lost, stats.cgroup_events_lost
        )?;
    }
    let writes = match report.writes_source {
        Some(WritesSource::VfsWrite) => "written bytes from vfs_write (fexit)",
        Some(WritesSource::DirtiedPages) => {
            "written bytes = pages dirtied (writeback_dirty_folio; fexit on vfs_write is refused here)"
        }
        None => "written bytes unavailable (no write hook attached)",
    };
    let dirty = match report.dirty_source {
        Some(source) => format!("dirty from {source}"),
        None => "dirty unavailable (cachestat needs Linux 6.5+)".to_owned(),
    };
    writeln!(out, "{writes}; {dirty}")?;
    let columns = ["CACHED", "DIRTY", "WRITTEN", "ADDED", "REMOVED"];
    writeln!(
        out,
        "{:>10} {:>10} {:>10} {:>10} {:>10}  CGROUP / FILE",
        columns[0], columns[1], columns[2], columns[3], columns[4]
    )?;

    let visible = report
        .cgroups
        .iter()
        .filter(|c| options.show_idle || c.cached_bytes > 0)
        .take(options.max_cgroups);
    for cgroup in visible {
        let dirty = cgroup
            .files
            .iter()
            .filter_map(|f| f.dirty_bytes)
            .reduce(|a, b| a + b);
        let written: u64 = cgroup.files.iter().map(|f| f.written_bytes).sum();
        writeln!(
            out,
            "{:>10} {:>10} {:>10} {:>10} {:>10}  {}",
            human_bytes(cgroup.cached_bytes),
            dirty.map_or_else(|| "-".to_owned(), human_bytes),
            human_bytes(written),
            human_bytes(cgroup.added_bytes),
            human_bytes(cgroup.removed_bytes),
            escape_control(&cgroup_label(cgroup)),
        )?;
        let files = cgroup
            .files
            .iter()
            .filter(|f| options.show_idle || f.cached_bytes > 0);
        let mut shown = 0;
        for file in files.clone().take(options.files_per_cgroup) {
            shown += 1;
            writeln!(
                out,
                "{:>10} {:>10} {:>10} {:>10} {:>10}    {}",
                human_bytes(file.cached_bytes),
                file.dirty_bytes.map_or_else(|| "-".to_owned(), human_bytes),
                human_bytes(file.written_bytes),
                human_bytes(file.added_bytes),
                human_bytes(file.removed_bytes),
                escape_control(&file_label(file)),
            )?;
        }
        let hidden = cgroup.file_count.saturating_sub(shown);
        if hidden > 0 {
            writeln!(out, "{:>56}    ... {hidden} more files", "")?;
        }
    }
    out.flush()
}

/// `container web (runc 3f4b1c2d9e8a) pod default/web-0  /kubepods/...  (id 42, v1 memory)`
fn cgroup_label(cgroup: &CgroupUsage) -> String {
    let mut label = String::new();
    if let Some(c) = &cgroup.container {
        let short_id: String = c.id.chars().take(12).collect();
        match &c.name {
            Some(name) if *name != c.id => {
                label += &format!("container {name} ({} {short_id})", c.runtime)
            }
            _ => label += &format!("container {short_id} ({})", c.runtime),
        }
        if let Some(pod) = &c.pod {
            match (&pod.namespace, &pod.name) {
                (Some(ns), Some(name)) => label += &format!(" pod {ns}/{name}"),
                _ => label += &format!(" pod {}", pod.uid),
            }
        }
        label += "  ";
    } else if let Some(unit) = &cgroup.unit {
        label += &format!("{unit}  ");
    }
    label += cgroup.path.as_deref().unwrap_or("(unknown cgroup)");
    if cgroup.removed {
        label += " [removed]";
    }
    label += &format!(
        "  (id {}, {})",
        cgroup.id,
        describe_hierarchy(cgroup.hierarchy)
    );
    label
}

/// `/tmp/spring.log [deleted]  (upper layer /var/lib/.../tmp/spring.log)`
fn file_label(file: &FileUsage) -> String {
    let mut label = match &file.path {
        Some(path) => path.to_string(),
        None => format!("dev {} ino {}", file.dev, file.ino),
    };
    if file.deleted {
        label += " [deleted]";
    }
    if let Some(fs) = file.fs {
        label += &format!(" [{fs}]");
    }
    if let Some(writer) = file.writers.first() {
        label += &format!("  [writer {} pid {}", writer.comm, writer.pid);
        if let Some(rate) = file.write_rate_bytes_per_second.filter(|r| *r > 0.0) {
            label += &format!(", {}/s", human_bytes(rate as u64));
        }
        label += "]";
    }
    match (file.layer, &file.host_path) {
        (Some(Layer::Upper), Some(host)) => label += &format!("  (container layer {host})"),
        (Some(Layer::Lower), Some(host)) => label += &format!("  (image layer {host})"),
        _ => {}
    }
    label
}
