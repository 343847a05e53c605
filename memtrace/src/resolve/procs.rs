//! Processes and the files they hold, from /proc.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use crate::model::explain::Writer;

/// Every open and mapped file of every process: (pid, `/proc/<pid>/fd/N` or
/// `/proc/<pid>/map_files/RANGE`). The entries are magic links to the files themselves.
pub fn open_file_links() -> Vec<(u32, PathBuf)> {
    let mut found = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return found;
    };
    for proc in procs.flatten() {
        let Some(pid) = proc
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        for sub in ["fd", "map_files"] {
            let Ok(entries) = fs::read_dir(proc.path().join(sub)) else {
                continue;
            };
            found.extend(entries.flatten().map(|entry| (pid, entry.path())));
        }
    }
    found
}

/// Open-for-writing files of the processes in a cgroup (and below), by the path each process
/// sees: path → writers.
pub fn writers_in(cgroup_dir: &Path) -> HashMap<String, Vec<Writer>> {
    let mut pids = Vec::new();
    let mut pending = vec![cgroup_dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            pending.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    let mut writers: HashMap<String, Vec<Writer>> = HashMap::new();
    for pid in pids {
        let comm = fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            let path = target
                .strip_suffix(" (deleted)")
                .unwrap_or(&target)
                .to_owned();
            let info = fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .unwrap_or_default();
            let flags = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| u32::from_str_radix(f.trim(), 8).ok());
            let writable =
                flags.is_some_and(|flags| flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32);
            if writable && path.starts_with('/') {
                let entry = writers.entry(path).or_default();
                let writer = Writer {
                    pid,
                    comm: comm.clone(),
                    append: flags.is_some_and(|flags| flags & libc::O_APPEND as u32 != 0),
                };
                if !entry.contains(&writer) {
                    entry.push(writer);
                }
            }
        }
    }
    writers
}
