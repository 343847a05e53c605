//! Cgroup ids → paths, for the hierarchy the memory controller lives in.
//!
//! A memcg is named by the inode number of its cgroup directory. The table is filled by walking
//! the mounted hierarchies and by the kernel's mkdir/rmdir notices, and it never forgets: a
//! removed cgroup's page cache outlives its directory.

use std::{
    collections::{HashMap, HashSet},
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use memtrace_common::{CgroupEvent, CgroupEventKind};
use serde::Serialize;

use super::mounts::{read_mountinfo, Mount};
use crate::model::UNIFIED_HIERARCHY;

/// Where each cgroup hierarchy that can hold memcgs is mounted.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Hierarchies {
    /// Hierarchy id of the memory controller: 0 when it is on cgroup v2.
    pub memory_hierarchy: Option<u32>,
    /// Mount of the v1 memory hierarchy, if the controller is on v1.
    pub v1_memory: Option<MountedHierarchy>,
    /// Mount of the unified (v2) hierarchy.
    pub unified: Option<MountedHierarchy>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MountedHierarchy {
    pub mount_point: PathBuf,
    /// The cgroup that is mounted there (not `/` inside a cgroup namespace).
    pub root: PathBuf,
}

impl Hierarchies {
    pub fn discover() -> Self {
        let mounts = read_mountinfo(None).unwrap_or_default();
        let cgroups = fs::read_to_string("/proc/cgroups").unwrap_or_default();
        Self::from_parts(&mounts, &cgroups)
    }

    pub fn from_parts(mounts: &[Mount], proc_cgroups: &str) -> Self {
        let memory_hierarchy = proc_cgroups.lines().find_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next()? == "memory").then_some(())?;
            let hierarchy: u32 = fields.next()?.parse().ok()?;
            let enabled = fields.nth(1).is_none_or(|e| e == "1");
            enabled.then_some(hierarchy)
        });
        let mounted = |m: &Mount| MountedHierarchy {
            mount_point: m.mount_point.clone(),
            root: m.root.clone(),
        };
        let v1_memory = mounts
            .iter()
            .find(|m| m.fs_type == "cgroup" && m.has_super_option("memory"))
            .map(mounted);
        let unified = mounts.iter().find(|m| m.fs_type == "cgroup2").map(mounted);
        Self {
            memory_hierarchy,
            v1_memory,
            unified,
        }
    }

    /// Mount of hierarchy `id`, if it is one memcgs can live in.
    pub fn mount_of(&self, hierarchy: u32) -> Option<&MountedHierarchy> {
        if hierarchy == UNIFIED_HIERARCHY {
            self.unified.as_ref()
        } else if Some(hierarchy) == self.memory_hierarchy {
            self.v1_memory.as_ref()
        } else {
            None
        }
    }

    /// The host directory of a cgroup path, for reading its memory.stat.
    pub fn directory_of(&self, hierarchy: u32, path: &str) -> Option<PathBuf> {
        let mount = self.mount_of(hierarchy)?;
        let relative = Path::new(path).strip_prefix(&mount.root).ok()?;
        Some(mount.mount_point.join(relative))
    }
}

/// The memory cgroup path of a process, from /proc/<pid>/cgroup, in hierarchy
/// `memory_hierarchy` (0: v2).
pub fn memcg_path_of(pid: u32, memory_hierarchy: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let id: u32 = parts.next()?.parse().ok()?;
        let controllers = parts.next()?;
        let path = parts.next()?;
        let matches = if memory_hierarchy == UNIFIED_HIERARCHY {
            id == 0 && controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == "memory")
        };
        matches.then(|| path.to_owned())
    })
}

/// What memtrace knows of one cgroup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CgroupName {
    /// Path inside its hierarchy, starting with `/`.
    pub path: String,
    /// The directory is gone (its page cache may still be charged to it).
    pub removed: bool,
}

/// Remembers every cgroup id it has seen.
#[derive(Debug, Default)]
pub struct CgroupTable {
    pub hierarchies: Hierarchies,
    known: HashMap<(u32, u64), CgroupName>,
    /// Hierarchies walked since the last `begin_lookups`, so a burst of unknown ids walks once.
    walked: Vec<u32>,
    /// Ids a walk did not find: a memcg whose directory went before memtrace started, still
    /// holding cache. New cgroups arrive as mkdir notices, so these are not walked for again
    /// until [`UNFOUND_FOR`] has passed (a walk of a thousand cgroups is 20 ms of every report).
    unfound: HashSet<(u32, u64)>,
    unfound_since: Option<Instant>,
}

/// How long an id no walk found is not looked for again.
const UNFOUND_FOR: Duration = Duration::from_secs(60);

impl CgroupTable {
    pub fn new(hierarchies: Hierarchies) -> Self {
        let mut table = Self {
            hierarchies,
            ..Self::default()
        };
        for hierarchy in [Some(UNIFIED_HIERARCHY), table.hierarchies.memory_hierarchy]
            .into_iter()
            .flatten()
        {
            table.walk(hierarchy);
        }
        table
    }

    /// Starts a round of lookups: each hierarchy may be walked again once.
    pub fn begin_lookups(&mut self) {
        self.walked.clear();
        if self
            .unfound_since
            .is_some_and(|since| since.elapsed() >= UNFOUND_FOR)
        {
            self.unfound.clear();
            self.unfound_since = None;
        }
    }

    /// Name of cgroup `id`; walks its hierarchy once per round when the id is new.
    pub fn lookup(&mut self, hierarchy: u32, id: u64) -> Option<&CgroupName> {
        if id != 0
            && !self.known.contains_key(&(hierarchy, id))
            && !self.unfound.contains(&(hierarchy, id))
        {
            if !self.walked.contains(&hierarchy) {
                self.walk(hierarchy);
            }
            // Walked this round and not found: gone (see `unfound`).
            if !self.known.contains_key(&(hierarchy, id)) {
                self.unfound.insert((hierarchy, id));
                self.unfound_since.get_or_insert_with(Instant::now);
            }
        }
        self.known.get(&(hierarchy, id))
    }

    /// Forgets removed cgroups `keep` does not ask for (their cache is gone): the table stays
    /// as large as the live cgroups, however many come and go.
    pub fn forget_removed(&mut self, mut keep: impl FnMut(u32, u64) -> bool) {
        self.known
            .retain(|&(hierarchy, id), name| !name.removed || keep(hierarchy, id));
    }

    /// Whether cgroup (hierarchy, id) is known and not removed.
    pub fn is_live(&self, hierarchy: u32, id: u64) -> bool {
        self.known
            .get(&(hierarchy, id))
            .is_some_and(|name| !name.removed)
    }

    /// Every cgroup known so far: (hierarchy, id, name).
    pub fn known(&self) -> impl Iterator<Item = (u32, u64, &CgroupName)> {
        self.known.iter().map(|(&(h, id), name)| (h, id, name))
    }

    /// Applies a mkdir/rmdir notice from the kernel.
    pub fn apply(&mut self, event: &CgroupEvent) {
        let end = event
            .path
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(event.path.len());
        let path = String::from_utf8_lossy(&event.path[..end]).into_owned();
        let key = (event.hierarchy, event.cgroup_id);
        if event.kind == CgroupEventKind::Created as u32 {
            self.known.insert(
                key,
                CgroupName {
                    path,
                    removed: false,
                },
            );
        } else if event.kind == CgroupEventKind::Removed as u32 {
            let entry = self.known.entry(key).or_insert_with(|| CgroupName {
                path,
                removed: true,
            });
            entry.removed = true;
        }
    }

    fn walk(&mut self, hierarchy: u32) {
        self.walked.push(hierarchy);
        let Some(mount) = self.hierarchies.mount_of(hierarchy).cloned() else {
            return;
        };
        let mut pending = vec![(mount.mount_point.clone(), mount.root.clone())];
        while let Some((dir, cgroup_path)) = pending.pop() {
            let Ok(meta) = fs::metadata(&dir) else {
                continue;
            };
            let path = cgroup_path.to_string_lossy().into_owned();
            self.known.insert(
                (hierarchy, meta.ino()),
                CgroupName {
                    path,
                    removed: false,
                },
            );
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    pending.push((entry.path(), cgroup_path.join(entry.file_name())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::mounts::parse_mountinfo;

    #[test]
    fn reads_memcg_paths_for_v1_and_v2() {
        // Our own process: some memory cgroup path is always there on a memcg kernel.
        let me = std::process::id();
        let text = fs::read_to_string(format!("/proc/{me}/cgroup")).unwrap();
        let v1 = text.lines().any(|l| {
            l.split(':')
                .nth(1)
                .is_some_and(|c| c.split(',').any(|c| c == "memory"))
        });
        let found = memcg_path_of(me, if v1 { 4 } else { 0 });
        assert!(found.is_some_and(|p| p.starts_with('/')));
    }

    const HYBRID_MOUNTS: &str = "\
35 22 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 22 0:32 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
37 22 0:33 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
";
    const HYBRID_CGROUPS: &str = "\
#subsys_name\thierarchy\tnum_cgroups\tenabled
cpu\t1\t1\t1
memory\t4\t12\t1
";

    #[test]
    fn finds_v1_memory_hierarchy() {
        let h = Hierarchies::from_parts(&parse_mountinfo(HYBRID_MOUNTS), HYBRID_CGROUPS);
        assert_eq!(h.memory_hierarchy, Some(4));
        assert_eq!(
            h.mount_of(4).unwrap().mount_point,
            PathBuf::from("/sys/fs/cgroup/memory")
        );
        assert_eq!(
            h.mount_of(0).unwrap().mount_point,
            PathBuf::from("/sys/fs/cgroup/unified")
        );
        assert!(h.mount_of(1).is_none(), "cpu hierarchy holds no memcgs");
        assert_eq!(
            h.directory_of(4, "/a/b"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/a/b"))
        );
    }

    #[test]
    fn finds_unified_memory() {
        let mounts = parse_mountinfo("30 22 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n");
        let h = Hierarchies::from_parts(&mounts, "memory\t0\t80\t1\n");
        assert_eq!(h.memory_hierarchy, Some(0));
        assert_eq!(
            h.mount_of(0).unwrap().mount_point,
            PathBuf::from("/sys/fs/cgroup")
        );
    }

    /// A directory tree standing in for the memory hierarchy (hierarchy 4), mounted at `root`.
    fn table_over(root: &Path) -> CgroupTable {
        let mounts = format!(
            "35 22 0:31 / {} rw,relatime - cgroup cgroup rw,memory\n",
            root.display()
        );
        CgroupTable::new(Hierarchies::from_parts(
            &parse_mountinfo(&mounts),
            HYBRID_CGROUPS,
        ))
    }

    #[test]
    fn an_id_no_walk_finds_is_not_walked_for_again_but_a_new_cgroup_is() {
        let root = std::env::temp_dir().join(format!("memtrace-cgroups-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("a/b")).unwrap();
        let ino = |dir: &str| fs::metadata(root.join(dir)).unwrap().ino();
        let mut table = table_over(&root);
        assert_eq!(table.lookup(4, ino("a/b")).unwrap().path, "/a/b");

        // A charged memcg whose directory is gone: walked for once, then not again.
        table.begin_lookups();
        assert!(table.lookup(4, u64::MAX - 1).is_none());
        fs::create_dir(root.join("later")).unwrap();
        table.begin_lookups();
        assert!(table.lookup(4, u64::MAX - 1).is_none());
        assert!(
            !table.known.contains_key(&(4, ino("later"))),
            "the gone memcg made a second walk"
        );
        // A cgroup made since (its notice lost) is a new id: it is walked for and found.
        assert_eq!(table.lookup(4, ino("later")).unwrap().path, "/later");
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn remembers_removed_cgroups() {
        let mut table = CgroupTable::default();
        let mut event = CgroupEvent {
            cgroup_id: 77,
            hierarchy: 4,
            kind: CgroupEventKind::Created as u32,
            path: [0; memtrace_common::CGROUP_PATH_LEN],
        };
        event.path[..6].copy_from_slice(b"/a/b/c");
        table.apply(&event);
        event.kind = CgroupEventKind::Removed as u32;
        table.apply(&event);
        table.walked.push(4);
        let name = table.lookup(4, 77).unwrap();
        assert_eq!(name.path, "/a/b/c");
        assert!(name.removed);
    }
}
