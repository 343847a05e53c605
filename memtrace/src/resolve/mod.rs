//! Turning kernel identities (cgroup ids, device and inode numbers) into names a person
//! recognizes: cgroup paths, containers and pods, file paths inside and outside containers.

pub mod cgroups;
pub mod containers;
pub mod memstat;
pub mod mounts;
pub mod open;
#[cfg(test)]
mod parser_props;
pub mod paths;
pub mod procs;

use std::os::unix::fs::MetadataExt;

use memtrace_common::CgroupEvent;

use self::{
    cgroups::{memcg_path_of, CgroupTable, Hierarchies},
    containers::{identify, RuntimeState},
    paths::PathTable,
};
use crate::model::{explain::TargetKind, Container, MemoryFigures, UNIFIED_HIERARCHY};

/// A memory cgroup the user named, found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundTarget {
    pub kind: TargetKind,
    /// Hierarchy of the memory controller (0: v2).
    pub hierarchy: u32,
    /// The memory cgroup's path inside its hierarchy.
    pub cgroup_path: String,
    pub container: Option<Container>,
}

/// Why a target could not be found; each says what would have worked.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("no process {0} (or its memory cgroup cannot be read)")]
    NoProcess(u32),
    #[error("no memory cgroup at {0}")]
    NoCgroup(String),
    #[error(
        "`{query}` is not a pid, a cgroup path or a container running here; containers: {known}"
    )]
    Unknown { query: String, known: String },
    #[error("`{query}` matches {} containers ({}); give a longer id", ids.len(), ids.join(", "))]
    Ambiguous { query: String, ids: Vec<String> },
}

/// Everything that names things, kept across snapshots.
pub struct Resolvers {
    pub cgroups: CgroupTable,
    pub paths: PathTable,
    pub runtime: RuntimeState,
    /// Each container seen running, by its memory cgroup (hierarchy, id): once an engine
    /// removes a container its state and its cgroup directory are gone, while the cache it
    /// left stays charged to its memcg and is still its.
    seen_containers: std::collections::HashMap<(u32, u64), Container>,
}

impl Resolvers {
    pub fn new() -> Self {
        let mut resolvers = Self {
            cgroups: CgroupTable::new(Hierarchies::discover()),
            paths: PathTable::new(),
            runtime: RuntimeState::scan(),
            seen_containers: std::collections::HashMap::new(),
        };
        resolvers.remember_containers();
        resolvers
    }

    /// Remembers the containers runtime state shows now, by memory cgroup id.
    fn remember_containers(&mut self) {
        let Some(hierarchy) = self.cgroups.hierarchies.memory_hierarchy else {
            return;
        };
        let Some(mount) = self.cgroups.hierarchies.mount_of(hierarchy) else {
            return;
        };
        for (dir, container) in self.runtime.by_cgroup() {
            if !dir.starts_with(&mount.mount_point) {
                continue;
            }
            if let Ok(meta) = std::fs::metadata(dir) {
                use std::os::unix::fs::MetadataExt;
                self.seen_containers
                    .insert((hierarchy, meta.ino()), container.clone());
            }
        }
    }

    /// The container behind cgroup (hierarchy, id) at `path`: as runtime state and the path
    /// say now, or, once the cgroup is removed, as it was seen running.
    pub fn container_of_cgroup(
        &mut self,
        hierarchy: u32,
        id: u64,
        path: &str,
        removed: bool,
    ) -> Option<Container> {
        let now = self.container_of(hierarchy, path);
        match now {
            Some(container) if container.verified || !removed => {
                self.seen_containers
                    .insert((hierarchy, id), container.clone());
                Some(container)
            }
            now => self.seen_containers.get(&(hierarchy, id)).cloned().or(now),
        }
    }

    /// Forgets removed cgroups, and the containers they held, that `keep` does not ask for.
    pub fn forget_removed_cgroups(&mut self, mut keep: impl FnMut(u32, u64) -> bool) {
        self.cgroups.forget_removed(&mut keep);
        let cgroups = &self.cgroups;
        self.seen_containers
            .retain(|&(hierarchy, id), _| keep(hierarchy, id) || cgroups.is_live(hierarchy, id));
    }

    pub fn on_cgroup_event(&mut self, event: &CgroupEvent) {
        self.cgroups.apply(event);
    }

    /// Re-reads what changes as containers come and go: mounts and runtime state.
    pub fn refresh(&mut self) {
        self.paths.refresh_mounts();
        self.runtime = RuntimeState::scan();
        self.remember_containers();
        self.cgroups.begin_lookups();
    }

    /// memory.stat and usage of the memory cgroup at `path` in `hierarchy`; `None` when its
    /// directory is gone or cannot be read.
    pub fn memory_of(&self, hierarchy: u32, path: &str) -> Option<MemoryFigures> {
        let dir = self.cgroups.hierarchies.directory_of(hierarchy, path)?;
        memstat::read_memory(&dir, hierarchy == UNIFIED_HIERARCHY).ok()
    }

    /// The cgroup id (its directory's inode) of `path` in `hierarchy`, if it exists.
    pub fn cgroup_id_of(&self, hierarchy: u32, path: &str) -> Option<u64> {
        let dir = self.cgroups.hierarchies.directory_of(hierarchy, path)?;
        std::fs::metadata(dir).ok().map(|m| m.ino())
    }

    /// The containers running here, by name (or short id), for error messages.
    pub fn container_list(&self) -> String {
        let mut names: Vec<String> = self
            .known_containers()
            .iter()
            .map(|c| {
                c.name
                    .clone()
                    .unwrap_or_else(|| c.id.chars().take(12).collect())
            })
            .collect();
        names.sort();
        if names.is_empty() {
            "(none found)".to_owned()
        } else {
            names.join(", ")
        }
    }

    /// Every container visible now: from runtime state and from cgroup paths.
    pub fn known_containers(&self) -> Vec<Container> {
        let mut found: Vec<Container> = self.runtime.containers().cloned().collect();
        for (hierarchy, _, name) in self.cgroups.known() {
            let dir = self.cgroups.hierarchies.directory_of(hierarchy, &name.path);
            if let Some(container) = identify(&name.path, dir.as_deref(), &self.runtime) {
                if !found.iter().any(|c| c.id == container.id) {
                    found.push(container);
                }
            }
        }
        found
    }

    /// Finds what `query` names: a pid, a cgroup path, or a container name or id.
    pub fn find_target(&mut self, query: &str) -> Result<FoundTarget, TargetError> {
        let hierarchy = self.cgroups.hierarchies.memory_hierarchy.unwrap_or(0);
        let found = |kind, cgroup_path: String, container| FoundTarget {
            kind,
            hierarchy,
            cgroup_path,
            container,
        };
        if let Ok(pid) = query.parse::<u32>() {
            let path = memcg_path_of(pid, hierarchy).ok_or(TargetError::NoProcess(pid))?;
            let container = self.container_of(hierarchy, &path);
            return Ok(found(TargetKind::Pid, path, container));
        }
        if query.starts_with('/') {
            let exists = self
                .cgroups
                .hierarchies
                .directory_of(hierarchy, query)
                .is_some_and(|dir| dir.is_dir());
            if !exists {
                return Err(TargetError::NoCgroup(query.to_owned()));
            }
            let container = self.container_of(hierarchy, query);
            return Ok(found(TargetKind::Cgroup, query.to_owned(), container));
        }
        let mut matches: Vec<(String, Container)> = Vec::new();
        for (h, _, name) in self.cgroups.known() {
            if h != hierarchy || name.removed {
                continue;
            }
            let dir = self.cgroups.hierarchies.directory_of(h, &name.path);
            if let Some(container) = identify(&name.path, dir.as_deref(), &self.runtime) {
                if container.matches(query) {
                    matches.push((name.path.clone(), container));
                }
            }
        }
        // Conmon and pod-level cgroups also carry ids: the container's own cgroup is the
        // shortest match only when paths nest; otherwise more than one is ambiguous.
        matches.sort_by_key(|(path, _)| path.len());
        match matches.len() {
            0 => Err(TargetError::Unknown {
                query: query.to_owned(),
                known: self.container_list(),
            }),
            1 => {
                let (path, container) = matches.remove(0);
                Ok(found(TargetKind::Container, path, Some(container)))
            }
            _ => Err(TargetError::Ambiguous {
                query: query.to_owned(),
                ids: matches
                    .iter()
                    .map(|(_, c)| c.id.chars().take(12).collect())
                    .collect(),
            }),
        }
    }

    /// The container behind cgroup `path`, if it is one.
    pub fn container_of(&self, hierarchy: u32, path: &str) -> Option<Container> {
        let dir = self.cgroups.hierarchies.directory_of(hierarchy, path);
        identify(path, dir.as_deref(), &self.runtime)
    }

    /// Every overlay layer directory on the node (writable and image layers), with the memory
    /// cgroup directory of the container running on it, when runtime state says.
    pub fn overlay_layers(&self) -> Vec<(std::path::PathBuf, Option<std::path::PathBuf>)> {
        let mut layers = Vec::new();
        for overlay in self.paths.overlays() {
            let memcg_dir = self.runtime.memcg_dir_of_rootfs(&overlay.mount_point);
            for dir in overlay.upper.iter().chain(&overlay.lowers) {
                if !layers.iter().any(|(d, _)| d == dir) {
                    layers.push((dir.clone(), memcg_dir.clone()));
                }
            }
        }
        layers
    }
}

impl Default for Resolvers {
    fn default() -> Self {
        Self::new()
    }
}
