//! `explain` as text: one screen.

use std::io::{self, Write};

use crate::model::{
    escape_control,
    explain::{ExplainedFile, Explanation},
    human_bytes, MemoryFigures, SeedMethod,
};

pub fn write(out: &mut impl Write, e: &Explanation) -> io::Result<()> {
    let t = &e.target;
    let label = match &t.container {
        Some(c) => format!(
            "container {} ({} {})",
            c.name.as_deref().unwrap_or(&c.id),
            c.runtime,
            c.id.chars().take(12).collect::<String>()
        ),
        None => format!("cgroup {}", t.cgroup_path),
    };
    // Names come from containers and files: escaped, as everything else from outside.
    writeln!(out, "memtrace explain: {}", escape_control(&label))?;
    writeln!(
        out,
        "  memory cgroup {} (id {})",
        escape_control(&t.cgroup_path),
        t.cgroup_id
    )?;
    if let Some(m) = &e.memory {
        write_memory(out, m)?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "  attributed to files: {} ({} exact){}",
        human_bytes(e.attributed_bytes),
        human_bytes(e.attributed_exact_bytes),
        e.coverage
            .map(|c| format!(", {:.1}% of the page cache", c * 100.0))
            .unwrap_or_default()
    )?;
    match (e.hits_counted, e.hit_ratio) {
        (false, _) => writeln!(
            out,
            "  cache hits: not counted (off unless --count-hits, and only where the kernel allows fentry)"
        )?,
        (true, Some(ratio)) => writeln!(
            out,
            "  cache hits: reads found {:.1}% of the pages they touched cached over the window",
            ratio * 100.0
        )?,
        (true, None) => writeln!(
            out,
            "  cache hits: no read touched its files over the window"
        )?,
    }
    writeln!(
        out,
        "  {:>10} {:>9} {:>11}  {:<10} FILE",
        "CACHED", "DIRTY", "GROWTH/s", "SOURCE"
    )?;
    for f in &e.files {
        write_file_row(out, f)?;
    }
    writeln!(out)?;
    for line in &e.verdict {
        writeln!(out, "  {}", escape_control(line))?;
    }
    if let Some(seed) = &e.seed {
        let (how, memcg) = match seed.method {
            SeedMethod::Census => ("the kernel's census of every file", "memcg read per page"),
            SeedMethod::Walk if seed.exact => {
                ("open files, layers and logs walked", "memcg read per page")
            }
            SeedMethod::Walk => (
                "open files, layers and logs walked",
                "memcg inferred: no /proc/kpagecgroup",
            ),
        };
        writeln!(
            out,
            "\n  cache at start ({how}): {} files examined, {} cached, {} found in {:.1}s ({memcg}){}",
            seed.files_examined,
            seed.files_cached,
            human_bytes(seed.cached_bytes),
            seed.seconds,
            if seed.truncated {
                "; stopped at its limit"
            } else {
                ""
            }
        )?;
    }
    out.flush()
}

/// The kernel's figures: usage, working set, and what makes them up.
fn write_memory(out: &mut impl Write, m: &MemoryFigures) -> io::Result<()> {
    writeln!(out)?;
    writeln!(
        out,
        "  usage          {:>10}   working set (usage - inactive_file) {}",
        human_bytes(m.usage_bytes),
        human_bytes(m.working_set_bytes)
    )?;
    writeln!(out, "    anonymous    {:>10}", human_bytes(m.anon_bytes))?;
    writeln!(
        out,
        "    page cache   {:>10}   active {} / inactive {}; dirty {}, writeback {}, shmem {}",
        human_bytes(m.page_cache_bytes),
        human_bytes(m.active_file_bytes),
        human_bytes(m.inactive_file_bytes),
        human_bytes(m.dirty_bytes),
        human_bytes(m.writeback_bytes),
        human_bytes(m.shmem_bytes)
    )?;
    writeln!(out, "    kernel       {:>10}", human_bytes(m.kernel_bytes))?;
    Ok(())
}

/// One file: bytes, dirty, growth, provenance, name and what else is known of it.
fn write_file_row(out: &mut impl Write, f: &ExplainedFile) -> io::Result<()> {
    let name = f
        .path
        .as_deref()
        .or(f.host_path.as_deref())
        .unwrap_or("(unnamed)");
    let mut notes = Vec::new();
    if let Some(fs) = f.fs {
        notes.push(fs.to_owned());
    }
    if f.deleted {
        notes.push("deleted".to_owned());
    }
    if let Some(ratio) = f.hit_ratio {
        notes.push(format!("reads hit {:.0}%", ratio * 100.0));
    }
    if let Some(w) = f.writers.first() {
        notes.push(format!("writer {} pid {}", w.comm, w.pid));
    }
    if let (Some(host), Some(_)) = (&f.host_path, f.layer) {
        notes.push(format!("host {host}"));
    }
    let growth = if f.growth_bytes_per_second.abs() >= 1.0 {
        format!(
            "{}{}",
            if f.growth_bytes_per_second < 0.0 {
                "-"
            } else {
                "+"
            },
            human_bytes(f.growth_bytes_per_second.abs() as u64)
        )
    } else {
        "0".to_owned()
    };
    writeln!(
        out,
        "  {:>10} {:>9} {:>11}  {:<10} {}{}",
        human_bytes(f.cached_bytes),
        f.dirty_bytes
            .map(human_bytes)
            .unwrap_or_else(|| "?".to_owned()),
        growth,
        format!("{:?}", f.provenance).to_lowercase(),
        escape_control(name),
        if notes.is_empty() {
            String::new()
        } else {
            escape_control(&format!("  ({})", notes.join("; "))).into_owned()
        }
    )?;
    Ok(())
}
